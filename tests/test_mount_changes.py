"""The mount while the store changes under it: a view redefined (new bytes, stable inode
numbers), by-hash numbers as objects come to share leading bits or are collected, a name
whose object was collected unseen, disks added and replaced, deletions past a collected view
manifest, an object deleted during a listing. Real FUSE mounts on directory disks."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.mount.ops import NO_OPEN
from hoardfs.fsd.outputs.views import define_view
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_mount import mounted

pytestmark = pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")


def _hoard(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=120)


def _until(cond, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_redefined_view_serves_new_bytes_and_inodes_are_stable(tmp_path: Path) -> None:
    """A path of a view read (kernel caches its name and pages), then the view redefined to
    point that path at another object: the mount serves the new bytes within seconds. A
    hidden object disappears even where the kernel had looked it up. Inode numbers are the
    same after a remount."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    files = make_files(tmp_path / "in", 6)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files)
        define_view(store, "train", "".join(f"{r.sha256}  cats/{k}.bin\n" for k, r in enumerate(res[:3])).encode())
        body = b"".join(f"{r.sha256}  pics/{Path(r.path).name}\n".encode() for r in res)
        define_view(store, "all", body)
    mnt = tmp_path / "mnt"
    cat0 = mnt / "views" / "train" / "cats" / "0.bin"
    with mounted(str(cfg_path), mnt):
        assert hashlib.sha256(cat0.read_bytes()).hexdigest() == res[0].sha256
        with open(cat0, "rb") as held:  # a reader inside the old view keeps reading the old object
            inodes = {p: os.stat(p).st_ino for p in (cat0, mnt / "views" / "all" / "pics",
                                                     mnt / "by-hash" / res[1].sha256[:2] / res[1].sha256[2:4])}
            with Store.open(cfg) as store:  # redefine while mounted: 0.bin is now object 5
                define_view(store, "train", f"{res[5].sha256}  cats/0.bin\n{res[4].sha256}  dogs/1.bin\n".encode())
            _until(lambda: _read(cat0) == files[5].read_bytes(), "the redefined path still serves the old bytes")
            assert sorted(os.listdir(mnt / "views" / "train")) == ["cats", "dogs"]
            assert os.listdir(mnt / "views" / "train" / "cats") == ["0.bin"]
            assert not (mnt / "views" / "train" / "cats" / "1.bin").exists()
            assert held.read() == files[0].read_bytes()
        # type-A deletion of an object the kernel had looked up: gone within seconds, bytes stay
        victim = mnt / "views" / "all" / "pics" / Path(res[2].path).name
        by_hash = mnt / "by-hash" / res[2].sha256[:2] / res[2].sha256[2:4]
        hashed = by_hash / next(n for n in os.listdir(by_hash) if n.startswith(res[2].sha256))
        assert victim.exists() and hashed.exists()
        with Store.open(cfg) as store:
            from hoardfs.fsd.maintenance.deletion import hide

            hide(store, [bytes.fromhex(res[2].sha256)], "test")
        _until(lambda: not victim.exists(), "a hidden object is still shown")
        # invalidated with it (the kernel would keep the name for an hour: ENTRY_TIMEOUT)
        _until(lambda: not hashed.exists(), "a hidden object is still shown in by-hash/", timeout=1.0)
        assert Path(res[2].path).name not in os.listdir(mnt / "views" / "all" / "pics")
    with mounted(str(cfg_path), mnt):
        for p, ino in inodes.items():
            if p != cat0:  # (0.bin is another object now: another inode)
                assert os.stat(p).st_ino == ino, p
        assert os.stat(cat0).st_ino != inodes[cat0]


def _requests(log: Path) -> Counter:
    """What `hoard mount --debug` was asked so far: every kernel request by opcode (libfuse's
    debug lines) and, as "fetch", every object the daemon read from the store for a READ."""
    text = log.read_bytes()
    return Counter(re.findall(rb"opcode: (\w+)", text)) + Counter(fetch=len(re.findall(rb"fsd\.mount\.ops: fetch \d+", text)))


def _open_per_file(cmd: list[str]) -> list[str]:
    """A `mounted(wrap=)` that runs the mount daemon as it runs with pyfuse3 as released
    (without hoardfs's no-open patch: every open asks the daemon)."""
    code = ("import runpy; import hoardfs.fsd.mount.ops as o; o.NO_OPEN = False; "
            "runpy.run_module('hoardfs', run_name='__main__', alter_sys=True)")
    return [cmd[0], "-c", code] + cmd[3:]  # cmd: python -m hoardfs …


def _slurp(path: Path) -> bytes:
    """A file's bytes, unbuffered: Python's buffered open asks isatty() (an IOCTL round trip
    on a FUSE file, docs/mount.md); a loader reading with buffering=0 sends none."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


#: requests the kernel sends whenever it likes (memory pressure), not for a read
_UNASKED = (b"FORGET", b"BATCH_FORGET")


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.parametrize("no_open", [
    pytest.param(True, id="no-open", marks=pytest.mark.needs(
        NO_OPEN, "pyfuse3 without hoardfs's no-open patch in this venv: `make venv` builds it")),
    pytest.param(False, id="open-per-file")])
def test_a_warm_pass_fetches_nothing_and_a_changed_view_serves_new_bytes(tmp_path: Path, no_open: bool) -> None:
    """Objects never change, so the kernel keeps their names, attributes and pages: a second
    pass over the files of a view (small ones and a large one) sends no LOOKUP, GETATTR or
    READ, and the daemon fetches no object for it — the first pass fetched each once. With
    pyfuse3 built with hoardfs's patch (no-open) it sends no request at all: the mount's
    first OPEN is answered ENOSYS and the kernel opens files itself from then on; with
    pyfuse3 as released, OPEN and RELEASE still reach the daemon. A view redefined under that
    warm cache serves the new bytes within the names refresh, and a pass over the new view is
    warm again after its first."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    files = make_files(tmp_path / "in", 31) + make_files(tmp_path / "big", 1, seed=1, lo=9 << 20, hi=9 << 20)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files)
        names = [f"d/{k}.bin" for k in range(30)] + ["big.bin"]
        shown = res[:30] + res[31:]  # object 30: the one the redefined view shows at d/0.bin
        define_view(store, "train", "".join(f"{r.sha256}  {n}\n" for n, r in zip(names, shown, strict=True)).encode())
    mnt, log = tmp_path / "mnt", tmp_path / "mnt.log"
    paths = [mnt / "views" / "train" / n for n in names]
    want = [f.read_bytes() for f in files[:30] + files[31:]]

    def a_pass() -> Counter:
        before = _requests(log)
        assert [_slurp(p) for p in paths] == want
        if no_open:  # every request of the pass was answered before its read returned
            got = _requests(log) - before
        else:  # RELEASE is sent after close() returns: wait for all of this pass's
            got = _until(lambda: (_requests(log) - before)[b"RELEASE"] >= len(paths) and _requests(log) - before,
                         "the pass's RELEASEs did not arrive")
        for k in _UNASKED:
            got.pop(k, None)
        return got

    def a_warm_pass() -> Counter:
        # up to three: the caches are the machine's, and another process writing 3 to
        # drop_caches (the disk-lab tests and benchmarks do) empties them for every mount
        for _ in range(3):
            got = a_pass()
            if not any(got[k] for k in ("fetch", b"READ", b"LOOKUP", b"GETATTR")):
                break
        return got

    mode = (lambda cmd: cmd) if no_open else _open_per_file
    with mounted(str(cfg_path), mnt, wrap=lambda cmd: [*mode(cmd), "--debug"]):
        first, second = a_pass(), a_warm_pass()
        assert first["fetch"] == len(paths) and first[b"READ"] >= len(paths), first
        if no_open:
            assert first[b"OPEN"] == 1 and first[b"RELEASE"] == 0, first  # the first open only: ENOSYS
            assert second == Counter(), second  # not one request
        else:
            assert second[b"OPEN"] == len(paths), second
            assert {k: second[k] for k in ("fetch", b"READ", b"LOOKUP", b"GETATTR")} == \
                {"fetch": 0, b"READ": 0, b"LOOKUP": 0, b"GETATTR": 0}, second

        with Store.open(cfg) as store:  # d/0.bin now names object 30: the kernel's pages are of another file
            define_view(store, "train", "".join(f"{r.sha256}  {n}\n" for n, r in
                                                zip(names, [res[30], *shown[1:]], strict=True)).encode())
        want[0] = files[30].read_bytes()
        _until(lambda: _read(paths[0]) == want[0], "the redefined path still serves the old bytes")
        a_pass()
        again = a_warm_pass()
        assert {k: again[k] for k in ("fetch", b"READ")} == {"fetch": 0, b"READ": 0}, again
        if no_open:
            assert again == Counter(), again
    mode_line = (b"no-open" if no_open else b"open per file")
    assert b"files: " + mode_line in log.read_bytes()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.needs(NO_OPEN, "pyfuse3 without hoardfs's no-open patch in this venv: `make venv` builds it")
def test_health_is_fresh_though_the_kernel_keeps_its_pages(tmp_path: Path) -> None:
    """With no-open the kernel keeps `.hoard/health`'s pages as any file's (no direct_io
    without an OPEN reply): the daemon invalidates them when the text changes, so a reader
    that read it once reads the new text — the same length or not — after the next round."""
    cfg_path, _, datas, shas, _ = _forty_small_objects(tmp_path)
    mnt = tmp_path / "mnt"
    health = mnt / ".hoard" / "health"
    with mounted(str(cfg_path), mnt, wrap=_health_every(0.3)):
        first = _until(lambda: (t := _slurp(health)) != b"starting\n" and t, "health never rendered")
        assert b"mount: no-open" in first, first
        for k in range(40):  # the read queues' lines count what was served
            assert _slurp(mnt / "by-hash" / shas[k][:2] / shas[k][2:4] / shas[k]) == datas[k]
        later = _until(lambda: (t := _slurp(health)) != first and t, "health's old text is still served")
        assert later.startswith(b"objects: 40") and later.count(b"\n") == first.count(b"\n"), later


def _health_every(seconds: float):
    """A `mounted(wrap=)` that renders `.hoard/health` every `seconds` (10 in a real mount)."""
    code = ("import runpy, sys; import hoardfs.fsd.mount.watch as w; w.HEALTH_S = float(sys.argv.pop(1)); "
            "runpy.run_module('hoardfs', run_name='__main__', alter_sys=True)")
    return lambda cmd: [cmd[0], "-c", code, str(seconds)] + cmd[3:]  # cmd: python -m hoardfs …


def _drop_pages(path: Path) -> None:
    """The kernel's cached pages of one file dropped (clean pages: as memory pressure would)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _prefix_bits(bits: int, marks_s: float = 2.0):
    """A `mounted(wrap=)` that runs the mount daemon with by-hash numbers of `bits` leading
    sha256 bits (61 in a real mount: objects that share them are one in ~10^12 at 10^6) and
    its deletions refresh every `marks_s` seconds (2 in a real mount)."""
    code = ("import runpy, sys; import hoardfs.fsd.mount.namespace as n, hoardfs.fsd.mount.watch as w; "
            "n.Namespace.PREFIX_BITS = int(sys.argv.pop(1)); w.MARKS_S = float(sys.argv.pop(1)); "
            "runpy.run_module('hoardfs', run_name='__main__', alter_sys=True)")
    return lambda cmd: [cmd[0], "-c", code, str(bits), str(marks_s)] + cmd[3:]  # cmd: python -m hoardfs …


def _forty_small_objects(tmp_path: Path):
    """40 tiny objects stored on two directory disks: config path, settings, the bytes, their
    sha256s and each one's first byte (its by-hash number's leading bits when they are cut to 8)."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    datas = [b"object %03d\n" % i for i in range(40)]
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_bytes_many(datas)]
    return cfg_path, cfg, datas, shas, [int(s[:2], 16) for s in shas]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_by_hash_number_another_object_comes_to_share_is_looked_up_again(tmp_path: Path) -> None:
    """A by-hash file is numbered by its sha256's leading bits while no other object shares
    them. An object stored later with the same bits (forced here: 8 bits) makes that number
    name nothing: the next open of the cached name gets ESTALE inside the kernel, which looks
    the name up again and reads the right bytes under a number of its own (with no-open there
    is no OPEN: the kernel keeps the number, and what it or the daemon keeps of the file is
    its own bytes); the newcomer reads its own bytes; a reader that held the file open keeps
    reading it."""
    from tests.test_mount_inodes import sharing_bytes

    cfg_path, cfg, datas, shas, tops = _forty_small_objects(tmp_path)
    i = next(k for k, t in enumerate(tops) if tops.count(t) == 1)  # alone in its 8 bits
    mnt = tmp_path / "mnt"

    def path(sha: str) -> Path:
        return mnt / "by-hash" / sha[:2] / sha[2:4] / sha

    with mounted(str(cfg_path), mnt, wrap=_prefix_bits(8)):
        a = path(shas[i])
        assert a.read_bytes() == datas[i] and os.stat(a).st_ino >= 1 << 62
        with open(a, "rb") as held:
            with Store.open(cfg) as store:
                b_sha = store.put_bytes(sharing_bytes(bytes.fromhex(shas[i]), 8)).sha256
            assert b_sha[:2] == shas[i][:2]
            assert a.read_bytes() == datas[i]  # (the kernel's ESTALE retry: a lookup, then a row's number)
            if NO_OPEN:  # no OPEN to answer ESTALE: the kernel keeps the number (and its pages) until a READ
                assert os.stat(a).st_ino >= 1 << 62
                _drop_pages(a)
                assert a.read_bytes() == datas[i]  # (the daemon keeps what it read by inode: its own bytes)
            else:
                assert os.stat(a).st_ino < 1 << 62
            assert path(b_sha).read_bytes() == sharing_bytes(bytes.fromhex(shas[i]), 8)
            assert os.stat(path(b_sha)).st_ino != os.stat(a).st_ino
            assert held.read() == datas[i]
        for k in range(40):
            assert path(shas[k]).read_bytes() == datas[k]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_by_hash_number_never_names_an_object_stored_after_its_own_was_collected(tmp_path: Path) -> None:
    """A by-hash file's number whose object is deleted and collected (gc), after which an
    object with the same leading bits is stored (forced here: 8 bits; an attacker's 2^61
    tries at 61): the kernel still holds the number — a name it had looked up, the deletion
    not seen yet (gc ran within the 2 s of the deletions refresh: here it is slowed), or a
    file a process holds open, reopened through /proc — and an open of it must not read the
    newcomer's bytes (it read them: the number was taken to name whichever one object has
    its bits)."""
    from hoardfs.fsd.maintenance.gc import gc

    cfg_path, cfg, datas, shas, tops = _forty_small_objects(tmp_path)
    named, held = [k for k, t in enumerate(tops) if tops.count(t) == 1][:2]  # each alone in its 8 bits
    newcomers = {}
    for n in range(100000):  # same length, same 8 leading bits
        data = b"newbie%04d\n" % n
        top = hashlib.sha256(data).digest()[0]
        if top in (tops[named], tops[held]) and top not in newcomers:
            newcomers[top] = data
    mnt = tmp_path / "mnt"

    def path(sha: str) -> Path:
        return mnt / "by-hash" / sha[:2] / sha[2:4] / sha

    with mounted(str(cfg_path), mnt, wrap=_prefix_bits(8, marks_s=3600)):
        assert os.stat(path(shas[named])).st_ino >= 1 << 62  # the name is known to the kernel, no page read
        fd = os.open(path(shas[held]), os.O_RDONLY)
        try:
            with Store.open(cfg) as store:
                store.index.mark(store.index.deleted, [bytes.fromhex(shas[named]), bytes.fromhex(shas[held])], "test")
                assert gc(store, threshold=1.0).objects_dropped == 2
                for k in (named, held):
                    assert store.put_bytes(newcomers[tops[k]]).sha256[:2] == shas[k][:2]
            with pytest.raises(OSError):  # (ENOENT: collected)
                got = path(shas[named]).read_bytes()
                assert got != newcomers[tops[named]], "a collected object's name read the newcomer's bytes"
            assert not path(shas[named]).exists()  # its name looked up again (no-open: invalidated at the READ)
            with pytest.raises(OSError):  # (ESTALE: its number names nothing now)
                with open(f"/proc/self/fd/{fd}", "rb") as again:
                    got = again.read()
                assert got != newcomers[tops[held]], "a collected object's open file read the newcomer's bytes"
        finally:
            os.close(fd)
        for data in newcomers.values():
            sha = hashlib.sha256(data).hexdigest()
            assert path(sha).read_bytes() == data


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_name_whose_object_was_collected_unseen_is_gone_not_an_io_error(tmp_path: Path) -> None:
    """A name the kernel looked up (a file with a table row) whose object is deleted and
    collected before the mount's deletions refresh saw the tombstone (gc within its 2 s; here
    the refresh is slowed): the kernel still has the name, and opening it says the file is
    gone (ESTALE, then ENOENT when looked up again) — not EIO, and no disk error logged."""
    import errno

    from hoardfs.fsd.maintenance.gc import gc

    cfg_path, cfg, _, shas, tops = _forty_small_objects(tmp_path)
    k = next(i for i, t in enumerate(tops) if tops.count(t) > 1)  # shares its 8 bits: a table row
    mnt = tmp_path / "mnt"
    path = mnt / "by-hash" / shas[k][:2] / shas[k][2:4] / shas[k]
    with mounted(str(cfg_path), mnt, wrap=_prefix_bits(8, marks_s=3600)):
        assert os.stat(path).st_ino < 1 << 62  # a row's number, known to the kernel
        with Store.open(cfg) as store:
            store.index.mark(store.index.deleted, [bytes.fromhex(shas[k])], "test")
            assert gc(store, threshold=1.0).objects_dropped == 1
        with pytest.raises(OSError) as e:
            path.read_bytes()
        assert e.value.errno in (errno.ENOENT, errno.ESTALE), e.value
        assert not path.exists()
    log = (tmp_path / "mnt.log").read_text()
    assert "ERROR" not in log and "unreadable" not in log, log


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_disk_added_and_replaced_while_mounted_serves_reads(tmp_path: Path) -> None:
    """Both disks replaced while the mount runs (`hoard disks add` + `hoard disks replace`):
    once the old disks are gone, every file reads from the new ones."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    files = make_files(tmp_path / "in", 40)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files)
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt) as proc:
        assert (mnt / "by-hash" / res[0].sha256[:2]).is_dir()
        for old, new in (("d0", "d9"), ("d1", "d8")):
            (tmp_path / new).mkdir()
            r = _hoard(cfg_path, "disks", "add", str(tmp_path / new), "--label", new)
            assert r.returncode == 0, r.stderr
            r = _hoard(cfg_path, "disks", "replace", old, new, "--yes")
            assert r.returncode == 0, r.stderr
        for old in ("d0", "d1"):
            os.rename(tmp_path / old, tmp_path / f"{old}-gone")  # the old disks vanish
        time.sleep(3)  # the mount looks at the disks every 2 s
        for r in res:
            path = mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == r.sha256
        assert proc.poll() is None
    assert "disks now" in (tmp_path / "mnt.log").read_text()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"names of deleted objects under train/cats not invalidated", level="WARNING")
def test_deletions_invalidated_past_a_collected_view_manifest(tmp_path: Path) -> None:
    """A reader holds a file of a view that is then redefined and its old manifest collected
    (gc), and the daemon has dropped that manifest from its cache: the names under the old
    view can no longer be derived. Objects deleted after that are still invalidated
    everywhere else — the deletions refresh must not fail whole (it had already taken the
    objects as dead, so their names stayed in the kernel for an hour: ENTRY_TIMEOUT)."""
    from hoardfs.fsd.maintenance.deletion import hide
    from hoardfs.fsd.maintenance.gc import gc
    from hoardfs.fsd.mount.namespace import Namespace

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    files = make_files(tmp_path / "in", 6)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files)
        define_view(store, "train", f"{res[0].sha256}  cats/0.bin\n".encode())
        for k in range(Namespace.TREE_CACHE):  # enough views to push a manifest out of the daemon's cache
            define_view(store, f"f{k:02d}", f"{res[3].sha256}  x/{k}.bin\n".encode())
    mnt = tmp_path / "mnt"
    cat0 = mnt / "views" / "train" / "cats" / "0.bin"
    by_hash = mnt / "by-hash" / res[2].sha256[:2] / res[2].sha256[2:4]
    with mounted(str(cfg_path), mnt):
        hashed = by_hash / next(n for n in os.listdir(by_hash) if n.startswith(res[2].sha256))
        assert hashed.exists()
        with open(cat0, "rb") as held:  # keeps the old view's directory known to the kernel
            with Store.open(cfg) as store:
                define_view(store, "train", f"{res[5].sha256}  cats/0.bin\n".encode())
                gc(store, threshold=1.0)  # the replaced manifest is freed
            _until(lambda: _read(cat0) == files[5].read_bytes(), "the redefined path still serves the old bytes")
            for k in range(Namespace.TREE_CACHE):
                assert os.listdir(mnt / "views" / f"f{k:02d}") == ["x"]
            with Store.open(cfg) as store:
                hide(store, [bytes.fromhex(res[0].sha256), bytes.fromhex(res[2].sha256)], "test")
            _until(lambda: not hashed.exists(), "a hidden object is still shown in by-hash/", timeout=6.0)
            assert held.read() == files[0].read_bytes()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_object_deleted_during_a_listing_is_not_told_to_the_kernel(tmp_path: Path) -> None:
    """A directory listed in several readdir calls (a `find` or `ls` of a large directory)
    while one of its objects is deleted: the entries handed out after the deletion was seen
    do not include it — it was listed from a snapshot taken at opendir, and a name the
    kernel learns after the deletions refresh has passed is never invalidated (an hour of
    a deleted object shown and read: ENTRY_TIMEOUT)."""
    from hoardfs.fsd.maintenance.deletion import hide
    from hoardfs.fsd.outputs.views import define_view_rows

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_bytes_many([b"object %05d\n" % i for i in range(3000)])]
        define_view_rows(store, "v", [(f"d/f{i:05d}.txt", sha) for i, sha in enumerate(shas)])
    mnt = tmp_path / "mnt"
    d = mnt / "views" / "v" / "d"
    last = d / "f02999.txt"
    with mounted(str(cfg_path), mnt):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:  # getdents64 in 4 KiB steps, as a small reader does (glibc's readdir asks for up to 1 MiB)
            first = _getdents(fd)
            with Store.open(cfg) as store:
                hide(store, [bytes.fromhex(shas[2999])], "test")
            time.sleep(3)  # the deletions refresh (every 2 s) has seen it: the kernel knows no name of it
            rest = []
            while names := _getdents(fd):
                rest += names
        finally:
            os.close(fd)
        assert b"f00000.txt" in first and len(first) < 200
        assert len(first) + len(rest) == 2999 and b"f02999.txt" not in rest  # (listed after it was deleted)
        _until(lambda: not last.exists(), "an object deleted during a listing is still shown", timeout=6.0)


def _getdents(fd: int) -> list[bytes]:
    """The names one getdents64(2) call with a 4 KiB buffer returns."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(4096)
    n = libc.syscall(217, fd, buf, len(buf))  # SYS_getdents64 (x86-64)
    assert n >= 0, os.strerror(ctypes.get_errno())
    names, pos = [], 0
    while pos < n:
        reclen = int.from_bytes(buf.raw[pos + 16:pos + 18], "little")
        names.append(buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0])
        pos += reclen
    return names
