"""Copy mode (fsd/outputs/materialize.py): objects out of the store into a tree on the SSD, checked
file by file, resumable, completed from the other replicas when a disk dies mid-way, and an
SSD that fills up is the SSD's problem — never taken for a failing HDD."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import SYNC_FILE_RANGE_ALL, SYNC_FILE_RANGE_WRITE, sync_file_range
from hoardfs.fsd.io import planner
from hoardfs.fsd.outputs import materialize as materialize_mod
from hoardfs.fsd.outputs.materialize import Assembled, Item, materialize
from tests.helpers import make_files, missing
from tests.lab import DiskProfile, drop_caches
from tests.test_store_lab import _lab_store


def _items(results, files: list[Path]) -> list[Item]:
    return [Item(f"in/{i % 7}/{p.name}", r.sha256, r.size) for i, (p, r) in enumerate(zip(files, results, strict=True))]


def _check_tree(dest: Path, items: list[Item]) -> None:
    for it in items:
        assert hashlib.sha256((dest / it.path).read_bytes()).hexdigest() == it.sha256, it.path


def test_copy_checks_every_file_and_resumes(store_factory, tmp_path: Path) -> None:
    """60 small files, one of 40 MiB (streamed in pieces), the same content at two paths,
    sidecars; then a damaged, a truncated and a deleted file: the re-run writes only those."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=8)
    files = make_files(tmp_path / "src", 60, seed=31)
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(hashlib.sha256(b"x").digest() * (40 << 15))  # 40 MiB
    results = store.put_many([*files, big])
    items = _items(results[:60], files)
    items += [Item("large/big.bin", results[60].sha256, results[60].size, b'{"big": true}\n'),
              Item("large/again.bin", results[60].sha256, results[60].size),
              Item("dup/first.bin", results[0].sha256, results[0].size)]
    dest = tmp_path / "ssd" / "3D" / ".tmp" / "e1" / "flat"
    seen: list[int] = []
    rep = materialize(store, items, dest, progress=lambda done, total: seen.append(done))
    _check_tree(dest, items)
    assert (dest / "large/big.bin.json").read_bytes() == b'{"big": true}\n'
    assert (rep.files, rep.kept, rep.written) == (63, 0, 63) and rep.bytes == sum(it.size for it in items)
    assert seen and seen[-1] == rep.bytes
    (dest / items[3].path).write_bytes(b"damaged")
    with open(dest / items[4].path, "r+b") as f:
        f.truncate(10)
    (dest / items[5].path).unlink()
    again = materialize(store, items, dest)
    assert (again.kept, again.written) == (60, 3)
    _check_tree(dest, items)
    assert materialize(store, items, dest).written == 0


def test_assembled_files_get_their_objects_in_one_pass_and_are_made_anew(store_factory, tmp_path: Path) -> None:
    """Files made of fixed bytes and stored objects at offsets (a dataset's tar shards), beside
    plain items: every object read once in the planner's pass (one of 40 MiB streamed into its
    place, one placed twice and also an item), the gaps zeros, the report's sha256 that of the
    bytes on disk; a re-run makes them anew (a damaged one is put right, a kept item stays)."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=8)
    files = make_files(tmp_path / "src", 12, seed=33)
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(hashlib.sha256(b"y").digest() * (40 << 15))  # 40 MiB
    res = store.put_many([*files, big])
    blob = {r.sha256: p.read_bytes() for p, r in zip([*files, big], res, strict=True)}
    pieces = [(100, b"head"), (5000, b"middle")]
    objs, pos = [], 6000
    for r in [*res[:6], res[0]]:  # res[0] twice in one file
        objs.append((pos, r.sha256, r.size))
        pos += r.size + 7
    first = Assembled("tars/a.tar", pos + 512, tuple(pieces), tuple(objs))
    second = Assembled("tars/b.tar", res[12].size + 1024, ((0, b"B" * 512),), ((512, res[12].sha256, res[12].size),))
    items = [Item("plain/x.bin", res[0].sha256, res[0].size), Item("plain/y.bin", res[7].sha256, res[7].size)]
    dest = tmp_path / "out"

    def expected(a: Assembled) -> bytes:
        buf = bytearray(a.size)
        for off, data in a.fixed:
            buf[off:off + len(data)] = data
        for off, sha, size in a.objects:
            buf[off:off + size] = blob[sha]
        return bytes(buf)

    asked: list[list[str]] = []
    real = store.read_batch

    def read_batch(shas, *a, **k):
        asked.append(list(shas))
        return real(shas, *a, **k)

    store.read_batch = read_batch
    rep = materialize(store, items, dest, assembled=[first, second])
    assert len(asked) == 1 and sorted(asked[0]) == sorted({*(r.sha256 for r in res[:6]), res[7].sha256, res[12].sha256})
    for a in (first, second):
        data = (dest / a.path).read_bytes()
        assert data == expected(a), a.path
        assert rep.assembled[a.path] == hashlib.sha256(data).hexdigest()
    _check_tree(dest, items)
    assert rep.files == 4 and rep.bytes == sum(it.size for it in items) + sum(z for a in (first, second)
                                                                             for _, _, z in a.objects)
    with open(dest / first.path, "r+b") as f:
        f.seek(6001)
        f.write(b"rot")
    again = materialize(store, items, dest, assembled=[first, second])
    assert (dest / first.path).read_bytes() == expected(first) and again.kept == 2
    with pytest.raises(ValueError, match="outside"):
        materialize(store, [], tmp_path / "bad", assembled=[Assembled("x.tar", 10, ((8, b"abc"),), ())])


def test_a_symlink_planted_in_the_tree_is_replaced_not_followed(store_factory, tmp_path: Path) -> None:
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 2, seed=32)
    items = _items(store.put_many(files), files)
    dest = tmp_path / "out"
    (dest / Path(items[0].path).parent).mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (dest / items[0].path).symlink_to(victim)
    materialize(store, items, dest)
    assert victim.read_bytes() == b"keep me" and not (dest / items[0].path).is_symlink()
    _check_tree(dest, items)


@pytest.mark.lab
@pytest.mark.expect_log(r"disk m\d: read error", level="WARNING")
def test_a_disk_dying_mid_copy_is_replaced_by_the_other_replicas(lab_factory, tmp_path: Path, monkeypatch) -> None:
    """The disk most reads go to starts answering EIO once the first file is copied:
    the copy completes from the other replicas, every file checks, the disk is marked failed."""
    lab = lab_factory([DiskProfile(f"m{i}", 400, 500, 500, 5000) for i in (1, 2, 3)])
    store = _lab_store(lab, tmp_path, ["m1", "m2", "m3"], shard_size_mb=1, copy_of_raw=2)
    files = make_files(tmp_path / "src", 800, seed=33, lo=4000, hi=40000)
    items = _items(store.put_many(files), files)
    victim = max(store.disks, key=lambda u: sum(m.replicas[0] == u for m in store.index.iter_shards()))
    fired = threading.Event()
    # one range at a time in the sink threads' hands: the disks are still being read when the
    # first file is written (with room to run ahead they read these few MiB before it)
    monkeypatch.setattr(planner, "SINK_BUDGET", 1)

    def progress(done: int, total: int) -> None:
        if not fired.is_set():
            fired.set()
            lab.fail_eio(store.disks[victim].label)

    drop_caches()
    rep = materialize(store, items, tmp_path / "out", progress)
    assert fired.is_set()
    _check_tree(tmp_path / "out", items)
    assert rep.written == len(items)
    assert store.records[victim].state.value == "failed"


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_full_ssd_is_named_and_no_hdd_is_blamed(store_factory, tmp_path: Path) -> None:
    """The destination fills up: exit 6 naming it, and every HDD stays active (a write error
    inside the planner's reader threads must not pass for a read error of their disk)."""
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 40, seed=34, lo=20_000, hi=40_000)
    items = _items(store.put_many(files), files)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        missing(f"TMPFS MOUNT UNAVAILABLE (needs root): {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(HoardError) as e:
            materialize(store, items, small / "out")
        assert e.value.exit_code == ExitCode.NO_SPACE
        assert f"{small / 'out'}: the SSD is full" in e.value.message and "run the same command again" in e.value.message
        assert {r.state.value for r in store.records.values()} == {"active"}
        assert not [ev for ev in store.index.recent_events(100) if ev["kind"] in ("read_error", "disk_failed")]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.lab
@pytest.mark.expect_log(r".", optional=True)  # the kernel's ext4 errors, if any, are not ours
def test_an_ssd_failing_its_writes_mid_copy_is_never_a_finished_copy(lab_factory, store_factory,
                                                                       tmp_path: Path) -> None:
    """The destination's disk starts refusing writes after the first file: the written pages
    sit in the page cache and fail in writeback, seen by a background syncfs or the last one.
    materialize raises (naming the destination, exit 69) instead of returning a report, and no
    HDD is blamed."""
    lab = lab_factory([DiskProfile("ssd", 200, 500, 500, 5000)])
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 400, seed=35, lo=20_000, hi=60_000)
    items = _items(store.put_many(files), files)
    dest = lab.disks["ssd"].mountpoint / "3D" / ".tmp" / "e1"
    fired = threading.Event()

    def progress(done: int, total: int) -> None:
        if not fired.is_set():
            fired.set()
            lab.fail_writes("ssd")

    try:
        with pytest.raises(HoardError) as e:
            materialize(store, items, dest, progress)
        assert fired.is_set()
        assert e.value.exit_code in (ExitCode.UNAVAILABLE, ExitCode.NO_SPACE)
        assert str(dest) in e.value.message and "run the same command again" in e.value.message
        assert {r.state.value for r in store.records.values()} == {"active"}
    finally:
        subprocess.run(["chattr", "-i", str(lab.disks["ssd"].image)], check=False)


def _push_without_waiting(path: Path) -> None:
    """Start writeback of a file's dirty pages and return (SYNC_FILE_RANGE_WRITE only): an
    error it meets is recorded on the file for whoever checks first — not checked here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
    finally:
        os.close(fd)


def _wait_idle(device: str, timeout: float = 10.0) -> None:
    """Until the block device has no request in flight (the writeback pushed above is done)."""
    inflight = Path("/sys/block") / Path(device).name / "inflight"
    deadline = time.monotonic() + timeout
    while inflight.read_text().split() != ["0", "0"]:
        assert time.monotonic() < deadline, f"{device} still busy"
        time.sleep(0.01)
    time.sleep(0.1)


def _on_disk_sha256(path: Path) -> str:
    """The sha256 of what the disk holds for `path`, not of what the page cache holds (its
    clean pages are dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def _open_fds() -> list[str]:
    """What this process's descriptors point at."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the one listdir itself used
            pass
    return out


@pytest.mark.lab
@pytest.mark.expect_log(r".", optional=True)  # the kernel's ext4 errors, if any, are not ours
def test_a_kept_file_whose_writeback_failed_before_the_run_is_written_again(lab_factory, store_factory,
                                                                              tmp_path: Path) -> None:
    """A first attempt's files sit in the page cache with the right bytes, but their writeback
    failed (the SSD refused writes for a moment) and that error was reported to another syncfs
    (the first attempt's own, `sync -f`, another export's): the resumed run must not keep them
    as they read back, or the copy is complete on paper while the SSD holds zeros."""
    lab = lab_factory([DiskProfile("ssd", 200, 500, 500, 5000)])
    ssd = lab.disks["ssd"]
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 30, seed=36, lo=20_000, hi=60_000)
    items = [Item(it.path, it.sha256, it.size, b'{"n": %d}\n' % i if i % 2 else None)
             for i, it in enumerate(_items(store.put_many(files), files))]
    dest = ssd.mountpoint / "3D" / ".tmp" / "e1"
    for it in items:
        (dest / it.path).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sync", "-f", str(ssd.mountpoint)], check=True)  # the directories are on the disk
    canary = ssd.mountpoint / "canary"
    try:
        lab.fail_writes("ssd")
        planted = []  # what a first attempt killed before its syncfs left: the right bytes, not yet written back
        for it, src in zip(items, files, strict=True):
            (dest / it.path).write_bytes(src.read_bytes())
            planted.append(dest / it.path)
            if it.sidecar is not None:
                (dest / (it.path + ".json")).write_bytes(it.sidecar)
                planted.append(dest / (it.path + ".json"))
        canary.write_bytes(b"c" * 8192)
        for path in planted:
            _push_without_waiting(path)
        with open(canary, "rb") as f:  # the fault is on: the canary's writeback fails, checked on the canary only
            with pytest.raises(OSError):
                sync_file_range(f.fileno(), 0, 0, SYNC_FILE_RANGE_ALL)
        _wait_idle(ssd.device)
    finally:
        subprocess.run(["chattr", "-i", str(ssd.image)], check=False)
    # the SSD is back; someone else's syncfs is told of the error (and the kernel counts it as seen)
    assert subprocess.run(["sync", "-f", str(ssd.mountpoint)], capture_output=True).returncode != 0
    materialize(store, items, dest)
    want = {it.path: it.sha256 for it in items}
    want |= {it.path + ".json": hashlib.sha256(it.sidecar).hexdigest() for it in items if it.sidecar is not None}
    bad = [rel for rel, sha in want.items() if _on_disk_sha256(dest / rel) != sha]
    assert not bad, f"{len(bad)} of {len(want)} files are not on the SSD after a finished copy, e.g. {bad[0]}"


def test_a_resumed_tree_with_things_planted_in_it_is_put_right(store_factory, tmp_path: Path) -> None:
    """What a re-run finds where its files and directories go — a link to a directory outside
    in place of a parent directory, a file in place of one, a FIFO, a link to a directory, a
    link to an outside file with the right bytes, a file with the right size and other bytes,
    an empty directory where a file goes — is replaced: nothing outside `dest` is read as kept
    or written, and the tree checks."""
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 9, seed=37)
    results = store.put_many(files)
    names = ["a/x 1.bin", "a/y#é.bin", "b/c/z.bin", "d/fifo", "d/dirlink", "d/filelink", "d/wrong", "e/ok",
             "d/emptydir"]
    items = [Item(f"out/{n}", r.sha256, r.size, b"{}\n" if i % 3 == 0 else None)
             for i, (n, r) in enumerate(zip(names, results, strict=True))]
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x 1.bin").write_bytes(files[0].read_bytes())  # the right bytes, outside
    (dest / "out" / "d").mkdir(parents=True)
    (dest / "out" / "a").symlink_to(outside)  # a parent directory that is a link out of the tree
    (dest / "out" / "b").write_bytes(b"a file where a directory goes")
    os.mkfifo(dest / "out" / "d" / "fifo")
    (dest / "out" / "d" / "dirlink").symlink_to(outside)
    (dest / "out" / "d" / "filelink").symlink_to(outside / "x 1.bin")
    (dest / "out" / "d" / "wrong").write_bytes(bytes(results[6].size))
    (dest / "out" / "d" / "emptydir").mkdir()
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    rep = materialize(store, items, dest)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert rep.kept == 0 and rep.written == len(items)
    for rel in ("out/a", "out/b", "out/b/c", "out/d"):
        assert (dest / rel).is_dir() and not (dest / rel).is_symlink(), rel
    for it in items:
        assert (dest / it.path).is_file() and not (dest / it.path).is_symlink(), it.path
    _check_tree(dest, items)


def test_ctrl_c_mid_copy_leaves_no_thread_nor_descriptor_and_the_rerun_resumes(store_factory, tmp_path: Path,
                                                                               monkeypatch) -> None:
    """SIGINT to the main thread while the disks are read and the helper thread syncs every
    10 ms: KeyboardInterrupt comes out at once, no helper thread and no descriptor outlive
    the call, nothing more is written, and the same call again keeps what was written."""
    monkeypatch.setattr(materialize_mod, "FLUSH_EVERY_S", 0.01)
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 300, seed=38, lo=2000, hi=8000)
    items = _items(store.put_many(files), files)
    dest = tmp_path / "out"
    sent: list[float] = []

    def progress(done: int, total: int) -> None:
        time.sleep(0.003)
        if not sent and len(list(dest.rglob("*.bin"))) >= 50:
            sent.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what Ctrl-C does

    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # an in-process rq worker may have set its own
    try:
        with pytest.raises(KeyboardInterrupt):
            materialize(store, items, dest, progress)
    finally:
        signal.signal(signal.SIGINT, old)
    assert sent and time.monotonic() - sent[0] < 1.0
    assert not [t for t in threading.enumerate() if t.name == "ssd-flush"]
    assert not [fd for fd in _open_fds() if fd.startswith(str(dest))]
    written = sorted(dest.rglob("*.bin"))
    time.sleep(0.2)
    assert sorted(dest.rglob("*.bin")) == written and len(written) < len(items)
    rep = materialize(store, items, dest)
    assert rep.kept >= 50 and rep.kept + rep.written == len(items)
    _check_tree(dest, items)



@pytest.mark.lab
@pytest.mark.expect_log(r".", optional=True)  # the kernel's ext4 errors, if any, are not ours
@pytest.mark.parametrize("told", ["the helper thread", "another process"])
def test_a_write_error_another_syncfs_was_told_of_first_fails_the_copy(lab_factory, store_factory, tmp_path: Path,
                                                                       monkeypatch, told: str) -> None:
    """The SSD refuses writes for a moment mid-copy: a few files' writeback fails and, by the
    final syncfs, the SSD works again and another syncfs was told of the error first — the
    helper thread's (through the same descriptor, which is told only once) or another
    process's (`sync -f`, another export's helper; the kernel then counts the error as seen,
    and a descriptor opened after it never hears of it). materialize raises all the same.
    (The helper's first syncfs is 2 s in, after the fault: a journal commit during it would
    turn the file system read-only, and the error would come from a write instead.)"""
    monkeypatch.setattr(materialize_mod, "FLUSH_EVERY_S", 2.0 if told == "the helper thread" else 60.0)
    # every file's writeback started as it is written (as a large file's is), so the files
    # written during the fault fail theirs then, not at a later syncfs when the SSD works again
    monkeypatch.setattr(materialize_mod, "WRITEBACK_MIN", 0)
    lab = lab_factory([DiskProfile("ssd", 200, 500, 500, 5000)])
    ssd = lab.disks["ssd"]
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 120, seed=39, lo=20_000, hi=60_000)
    items = _items(store.put_many(files), files)
    dest = ssd.mountpoint / "3D" / ".tmp" / "e1"
    calls = [0]

    def progress(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] == 20:
            subprocess.run(["sync", "-f", str(ssd.mountpoint)], check=True)  # a journal commit now, not in the fault
            lab.fail_writes("ssd")
        elif calls[0] == 26:  # five files written (their writeback started) while the SSD refused
            try:
                _wait_idle(ssd.device)
            finally:
                subprocess.run(["chattr", "-i", str(ssd.image)], check=False)
            if told == "the helper thread":
                time.sleep(2.5)  # its first syncfs runs meanwhile, and is told
            else:
                assert subprocess.run(["sync", "-f", str(ssd.mountpoint)], capture_output=True).returncode != 0

    try:
        with pytest.raises(HoardError) as e:
            materialize(store, items, dest, progress)
        assert calls[0] == len(items), e.value.message  # the copy went on to the end: the error came from a syncfs
        assert e.value.exit_code == ExitCode.UNAVAILABLE and str(dest) in e.value.message
    finally:
        subprocess.run(["chattr", "-i", str(ssd.image)], check=False)


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): the two names swap atomically (`a` is never missing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def test_a_destination_replaced_mid_copy_is_never_a_finished_copy(store_factory, tmp_path: Path) -> None:
    """Someone moves the destination away mid-copy and puts an empty directory in its place:
    the files written before are no longer in `dest`, and the syncfs went through a
    descriptor of the old directory — materialize raises naming it instead of returning."""
    store = store_factory(n_disks=2, caps=None)
    files = make_files(tmp_path / "src", 60, seed=40)
    # all at the top
    items = [Item(p.name, r.sha256, r.size) for p, r in zip(files, store.put_many(files), strict=True)]
    dest = tmp_path / "out"
    (tmp_path / "moved").mkdir()
    calls = [0]

    def progress(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] == 10:  # in one step: a rename, then a mkdir, let another reader thread's
            _exchange(dest, tmp_path / "moved")  # write fail in between (ENOENT) — another error

    with pytest.raises(HoardError) as e:
        materialize(store, items, dest, progress)
    assert str(dest) in e.value.message and "run the same command again" in e.value.message
    assert "was moved or replaced while the copy ran" in e.value.message
    rep = materialize(store, items, dest)
    assert rep.written >= 10
    _check_tree(dest, items)


def _cached(path: Path, start: int, end: int) -> tuple[int, int]:
    """(pages of path[start:end] in the page cache, pages) — mincore(2) of a mapping of it (the
    mapping reads nothing)."""
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    first, last = start // page * page, end
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), last - first, offset=first, access=mmap.ACCESS_COPY)
        try:
            buf = ctypes.c_char.from_buffer(m)
            try:
                n = (last - first + page - 1) // page
                vec = ctypes.create_string_buffer(n)
                assert libc.mincore(ctypes.addressof(buf), last - first, vec) == 0, os.strerror(ctypes.get_errno())
                return sum(b & 1 for b in vec.raw), n
            finally:
                del buf
        finally:
            m.close()


def test_the_disks_read_what_a_copy_will_read_while_it_is_planned(store_factory, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """`planner.warming`: while its block runs, each disk reads the start of its share of the
    plan (in pieces, in the plan's order) into the page cache, so a copy planned meanwhile does
    not start on idle disks; once stopped it asks for nothing more, and no thread outlives it."""
    monkeypatch.setattr(planner, "WARM_PIECE", 64 << 10)  # several pieces a disk
    store = store_factory(n_disks=2, caps=None, shard_size_mb=1)  # several shards: both disks have a share
    results = store.put_many(make_files(tmp_path / "src", 120, seed=47, lo=16 << 10, hi=48 << 10))
    shas = [bytes.fromhex(r.sha256) for r in results]
    plan = planner.make_plan(store, shas)
    firsts = {uuid: ranges[0] for uuid, ranges in plan.ranges.items() if ranges}
    assert len(firsts) == 2
    for uuid, rng in firsts.items():  # nothing of it cached to begin with
        path = store.disks[uuid].find(rng.shard_hex)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert _cached(path, rng.start, rng.end)[0] == 0
    asked: list[tuple[str, int]] = []
    for disk in store.disks.values():
        real = disk.prefetch
        monkeypatch.setattr(disk, "prefetch", lambda h, off, n, real=real: (asked.append((h, off)), real(h, off, n)))
    with planner.warming(store, shas) as stop:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                _cached(store.disks[u].find(r.shard_hex), r.start, r.end)[0] >= 16 for u, r in firsts.items()):
            time.sleep(0.01)
        stop()
        time.sleep(0.1)
        after = len(asked)
    assert len(asked) == after  # nothing asked for once stopped
    for uuid, rng in firsts.items():  # each disk's first piece was read while the block ran
        got, pages = _cached(store.disks[uuid].find(rng.shard_hex), rng.start, min(rng.end, rng.start + (64 << 10)))
        assert got == pages, (store.disks[uuid].label, got, pages)
    starts = [off for h, off in asked]
    assert all(any(r.shard_hex == h and r.start <= off < r.end for rs in plan.ranges.values() for r in rs)
               for h, off in asked) and starts  # only what the plan reads
    assert not [t.name for t in threading.enumerate() if t.name.startswith("warm")]
