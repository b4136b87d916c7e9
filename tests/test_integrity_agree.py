"""`hoard check`, `hoard verify` and `hoard health` judge the same facts the same way
(fsd/io/integrity.py): a disk's marks log and its batch and view pointers. Before, health said
nothing of a damaged marks log or pointer that check named, and verify read the marks logs
but no pointer. Each test damages one disk, asks all three, then follows the next
step they name and asks again."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import marks
from hoardfs.jobs.health import collect
from tests.helpers import make_files
from tests.test_cli_put import _hoard
from tests.test_cli_put import _store as _cli_store

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

def _health(cfg: Path) -> list[str]:
    """The store's and disks' problems `hoard health` reports (the database's backup is no matter here)."""
    return [p for p in collect(config.load(cfg))["problems"] if p.startswith(("store:", "disk "))]


def _three(cfg: Path) -> tuple[list[str], int, int]:
    """(health's store and disk problems, check's exit code, verify's exit code). Health is asked
    last: it reads only what the marks logs gained since the last judgement, and reports rot in
    the part judged before once check or verify read every byte (tests/test_health_marks_tail.py)."""
    check, verify = _hoard(cfg, "check").returncode, _hoard(cfg, "verify").returncode
    return _health(cfg), check, verify


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout + res.stderr


def _viewed(tmp_path: Path, files: int, seed: int, folder: str) -> Path:
    """A store of `files` put files, view v1 naming them under `folder`/, judged clean by all three."""
    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", files, seed=seed)))
    _ok(put)
    rows = tmp_path / "v.list"
    rows.write_text("".join(f"{line.split()[0]}  {folder}/f{i}.bin\n" for i, line in enumerate(put.stdout.splitlines())))
    _ok(_hoard(cfg, "view", "add", "v1", str(rows)))
    assert _three(cfg) == ([], 0, 0)
    return cfg


def test_a_damaged_marks_log_line_is_named_by_all_three_and_the_advice_clears_it(tmp_path: Path) -> None:
    cfg = _cli_store(tmp_path)
    _ok(_hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 3, seed=301))))
    assert _three(cfg) == ([], 0, 0)
    log = marks.log_path(tmp_path / "d1")
    data = bytearray(log.read_bytes())
    data[data.rfind(b" root ") + 10] ^= 0x01  # a hex digit of the last root's sha256: its check fails
    log.write_bytes(bytes(data))
    health, check, verify = _three(cfg)
    assert check == 5 and verify == 5, (check, verify)
    # the old code: health reported nothing
    assert any(p.startswith("disk d1: 1 damaged line(s) in its marks log") and "`hoard index rewrite-marks`" in p
               for p in health), health
    _ok(_hoard(cfg, "index", "rewrite-marks"))  # the next step health and check name
    assert _three(cfg) == ([], 0, 0)


def test_a_damaged_pointer_is_named_by_all_three_and_verify_repair_rewrites_it(tmp_path: Path) -> None:
    """One flipped byte in a view's pointer on one disk: check named it; verify (exit 0) and
    health said nothing."""
    cfg = _viewed(tmp_path, 2, 303, "dir")
    pointer = tmp_path / "d0" / "views" / "v1.json"
    data = bytearray(pointer.read_bytes())
    data[data.index(b'"manifest"') + 15] ^= 0x01  # a hex digit of the manifest: the checksum no longer matches
    pointer.write_bytes(bytes(data))
    health, check, verify = _three(cfg)
    assert (check, verify) == (5, 5), (check, verify)  # the old code: verify exit 0
    assert any(p.startswith("disk d0: its pointer of view v1 is damaged") and "`hoard index rewrite-pointers`" in p
               for p in health), health  # the old code: nothing
    fixed = _hoard(cfg, "verify", "--repair")
    _ok(fixed)
    assert "1 repaired" in fixed.stdout, fixed.stdout
    assert _three(cfg) == ([], 0, 0)


def test_used_bytes_off_names_a_next_step_that_clears_it(tmp_path: Path) -> None:
    """A disk's used bytes in the index off by 4 KiB: check named it ("the index counts … bytes
    used, its replicas add up to …") with no next step; now it names `hoard index rebuild`,
    which recounts them, and check passes after it."""
    from hoardfs.fsd.store import Store

    cfg = _cli_store(tmp_path)
    _ok(_hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 3, seed=304))))
    with Store.open(config.load(cfg)) as store:
        store.index.adjust_used({next(iter(store.records)): 4096})
    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr
    line = next(x for x in res.stderr.splitlines() if "the index counts" in x)
    assert "`hoard index rebuild`" in line, line  # the old code: no next step
    _ok(_hoard(cfg, "index", "rebuild"))
    _ok(_hoard(cfg, "check"))


def test_activate_does_not_call_a_log_it_brings_up_bad(tmp_path: Path) -> None:
    """`hoard disks activate` verifies the disk's replicas, then brings its marks log and
    pointers up to the index. With verify judging pointers too, a disk that missed a view while
    it was failed had "bad disk d1: lacks the pointer of view v1" printed, and "bad replicas are
    queued for repair"; a pointer is no replica, and activate brings it up the moment after."""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.store import Store

    cfg = _cli_store(tmp_path)
    _ok(_hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 3, seed=305))))
    with Store.open(config.load(cfg)) as store:
        store.set_disk_state("d1", DiskState.FAILED, "test: I/O errors")
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in2", 3, seed=306)))
    _ok(put)
    rows = tmp_path / "v.list"
    rows.write_text("".join(f"{line.split()[0]}  f{i}.bin\n" for i, line in enumerate(put.stdout.splitlines())))
    _ok(_hoard(cfg, "view", "add", "v1", str(rows)))  # its pointer goes to d0 and d2 only
    res = _hoard(cfg, "disks", "activate", "d1")
    _ok(res)
    assert "bad" not in res.stderr, res.stdout + res.stderr
    assert _three(cfg) == ([], 0, 0)


def test_stale_hidden_deleted_and_root_marks_are_cleared_by_the_rebuild_check_names(tmp_path: Path) -> None:
    """A hidden, a deleted and a root mark whose objects' index entries were lost (index
    damage): check names each as a stale mark with `hoard index rebuild` as its next step;
    following it clears them, brings the objects back (a disk holds them) with their marks,
    and check, verify and health report nothing."""
    from hoardfs.fsd.store import Store

    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", "--json", *map(str, make_files(tmp_path / "in", 4, seed=307)))
    _ok(put)
    import json
    shas = [bytes.fromhex(json.loads(line)["sha256"]) for line in put.stdout.splitlines()]
    with Store.open(config.load(cfg)) as store:
        idx = store.index
        assert idx.mark(idx.hidden, shas[:1], "test: hidden") == 1
        assert idx.mark(idx.deleted, shas[1:2], "test: released") == 1
        with idx.env.begin(write=True, db=idx.objects) as txn:  # the index loses three entries
            for sha in shas[:3]:
                txn.delete(sha)
    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr
    stale = [x for x in (res.stdout + res.stderr).splitlines() if "which is not in the store" in x
             and x.split()[1] in ("hidden", "deleted", "root")]
    assert sorted(x.split()[1] for x in stale) == ["deleted", "hidden", "root", "root", "root"], stale
    assert all("`hoard index rebuild`" in x for x in stale), stale
    _ok(_hoard(cfg, "index", "rebuild"))  # the next step check names
    assert _three(cfg) == ([], 0, 0)
    with Store.open(config.load(cfg)) as store:
        idx = store.index
        assert idx.marked_among(idx.hidden, set(shas)) == {shas[0]}
        assert idx.marked_among(idx.deleted, set(shas)) == {shas[1]}
        assert set(shas) <= idx.marked_among(idx.rooted, set(shas)) | {shas[1]}
    for sha in shas:
        _ok(_hoard(cfg, "get", sha.hex(), "-o", "/dev/null"))


def _pointers_read(cfg: Path) -> tuple[list[str], dict]:
    """Health's store and disk problems, and what its judgement of the pointers read."""
    report = collect(config.load(cfg))
    problems = [p for p in report["problems"] if p.startswith(("store:", "disk "))]
    read = report["store"]["integrity"]["read"]
    return problems, {k: read[k] for k in ("pointers_read", "pointers_remembered")}


def test_health_reads_again_only_the_pointers_that_changed_and_names_them_as_check_does(tmp_path: Path) -> None:
    """`hoard health` does not read a pointer whose file and index pointer are the ones the last
    judgement found agreeing (a batch's pointer per disk was its one cost growing with the
    store); a pointer damaged in place (its mtime put back: the ctime moved), one
    replaced by an older one (a new inode), and a memory file that is garbage are each read
    again — health names what check names, and nothing is read twice once they are mended."""
    import os
    import time

    from hoardfs.fsd.io import judged

    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 3, seed=307)))
    _ok(put)
    rows = tmp_path / "v.list"
    shas = [line.split()[0] for line in put.stdout.splitlines()]
    for name in ("v1", "v2"):
        rows.write_text("".join(f"{sha}  {name}/f{i}.bin\n" for i, sha in enumerate(shas)))
        _ok(_hoard(cfg, "view", "add", name, str(rows)))
    time.sleep(judged.RACY_NS / 1e9 + 0.1)  # (a pointer written within RACY_NS of its reading is not remembered)
    assert _three(cfg) == ([], 0, 0)  # check and verify read every pointer
    problems, read = _pointers_read(cfg)
    assert problems == [] and read["pointers_read"] == 0 and read["pointers_remembered"] >= 6, read

    # damaged in place, its mtime put back: the ctime says it was written
    pointer = tmp_path / "d2" / "views" / "v2.json"
    st = pointer.stat()
    data = bytearray(pointer.read_bytes())
    data[data.index(b'"manifest"') + 15] ^= 0x01
    with open(pointer, "r+b") as f:
        f.write(bytes(data))
    os.utime(pointer, ns=(st.st_atime_ns, st.st_mtime_ns))
    problems, read = _pointers_read(cfg)
    assert read["pointers_read"] == 1, read
    assert any(p.startswith("disk d2: its pointer of view v2 is damaged") for p in problems), problems
    assert _hoard(cfg, "check").returncode == 5

    # replaced by the pointer of an older definition (a new inode): what check calls older
    older = (tmp_path / "d0" / "views" / "v1.json").read_bytes()
    rows.write_text("".join(f"{sha}  again/f{i}.bin\n" for i, sha in enumerate(shas)))
    _ok(_hoard(cfg, "view", "add", "v1", str(rows)))  # defined again
    _ok(_hoard(cfg, "verify", "--repair"))  # (the pointer damaged above, rewritten)
    assert _three(cfg) == ([], 0, 0)
    tmp = tmp_path / "d1" / "views" / ".old"
    tmp.write_bytes(older)
    tmp.rename(tmp_path / "d1" / "views" / "v1.json")
    problems, read = _pointers_read(cfg)
    assert read["pointers_read"] >= 1, read  # (and those written within RACY_NS of the last reading)
    assert any(p.startswith("disk d1: holds an older pointer of view v1") for p in problems), problems
    assert _hoard(cfg, "check").returncode == 5
    _ok(_hoard(cfg, "index", "rewrite-pointers"))  # the next step both name
    assert _three(cfg) == ([], 0, 0)

    # the memory is garbage: every pointer is read, nothing is named, the memory is written anew
    time.sleep(judged.RACY_NS / 1e9 + 0.1)  # (the pointer rewritten above is remembered from here on)
    memory = config.load(cfg).ssd.root / "state" / "pointers-judged.json"
    memory.write_bytes(b'{"format": 1, "index": [1, 2], "disks": {"x": {"views/v1.json": [1]}}}')
    problems, read = _pointers_read(cfg)
    assert problems == [] and read["pointers_read"] >= 6 and read["pointers_remembered"] == 0, read
    problems, read = _pointers_read(cfg)
    assert problems == [] and read["pointers_read"] == 0, read


def test_a_pointer_changed_through_a_shared_mapping_is_named_once_its_reading_ages_or_check_reads_it(
        tmp_path: Path, monkeypatch) -> None:
    """A write through a shared writable mapping of a pointer changes its bytes and keeps its
    device, inode, size, mtime and ctime (the kernel stamps the file at the page's first write
    fault only). Health, which remembered the file as agreeing, names it once the last reading
    of every pointer is older than WHOLE_MAX_S, and at once after check read it (before,
    health took it as judged for good while check named it damaged)."""
    import json
    import mmap
    import os
    import time

    from hoardfs.fsd.core import pointers
    from hoardfs.fsd.io import judged

    cfg = _viewed(tmp_path, 3, 311, "v1")
    time.sleep(judged.RACY_NS / 1e9 + 0.1)
    assert _pointers_read(cfg)[0] == []  # (every pointer remembered now: none written within RACY_NS)
    pointer = tmp_path / "d2" / "views" / "v1.json"
    memory = config.load(cfg).ssd.root / judged.POINTERS
    at = pointer.read_bytes().index(b'"manifest"') + 15
    # (a writeback between the two writes — a sync by another process — protects the page again:
    # the second write then stamps the file, and the premise is made again on a fresh attempt.
    # The window is kept short: this process's health remembers a file changed just before its
    # reading — RACY_NS 0 here — instead of sleeping 2 s with the page dirty; a sync every 0.4 s
    # elsewhere failed all five attempts with the sleep)
    monkeypatch.setattr(judged, "RACY_NS", 0)
    for _ in range(5):
        fd = os.open(pointer, os.O_RDWR)
        try:
            with mmap.mmap(fd, 0) as m:
                m[at] = m[at]  # the page's first write: the file's times move now; its bytes do not
                problems, read = _pointers_read(cfg)  # read again (its ctime moved), agreeing: remembered
                assert problems == [] and read["pointers_read"] == 1, read
                before = pointers.identity(os.stat(pointer))
                m[at] ^= 0x01  # a hex digit of the manifest: the pointer's checksum fails
                m.flush()
                if pointers.identity(os.stat(pointer)) == before:  # the premise: nothing in the stat moved
                    break
                m[at] ^= 0x01  # (written back between: the pointer made whole again, and again)
                m.flush()
        finally:
            os.close(fd)
    else:
        pytest.fail("each of 5 attempts had its page written back between its two writes")
    kept = json.loads(memory.read_bytes())
    # the last reading of every pointer an hour ago; or "ahead" of this clock — written under a
    # clock that was ahead, or Infinity — which never ages (before, health took the damaged
    # pointer as judged until the next check)
    for whole_at in (kept["whole_at"] - judged.WHOLE_MAX_S, time.time() + 365 * 86400, float("inf")):
        memory.write_bytes(json.dumps(kept | {"whole_at": whole_at}).encode())
        problems, read = _pointers_read(cfg)
        assert read["pointers_remembered"] == 0, (whole_at, read)
        assert any(p.startswith("disk d2: its pointer of view v1 is damaged") for p in problems), (whole_at, problems)
    check = _hoard(cfg, "check")
    assert check.returncode == 5 and "its pointer of view v1 is damaged" in check.stdout + check.stderr
    problems, read = _pointers_read(cfg)  # (check remembered none of it: health reads it again)
    assert any(p.startswith("disk d2: its pointer of view v1 is damaged") for p in problems), (problems, read)
    _ok(_hoard(cfg, "index", "rewrite-pointers"))
    assert _three(cfg) == ([], 0, 0)


def test_no_tool_hangs_on_a_fifo_where_health_keeps_its_pointers_memory(tmp_path: Path) -> None:
    """A FIFO planted at `state/pointers-judged.json`: check and verify do not open it (they
    read every pointer), health does not block on it (it remembers nothing) — before, each
    blocked for good."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    cfg = _cli_store(tmp_path)
    _ok(_hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 2, seed=313))))
    memory = config.load(cfg).ssd.root / "state" / "pointers-judged.json"
    memory.parent.mkdir(parents=True, exist_ok=True)
    memory.unlink(missing_ok=True)
    os.mkfifo(memory)
    for tool in ("check", "verify", "health"):
        try:
            res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), tool], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`hoard {tool}` blocked on the FIFO at {memory}")
        assert res.returncode in (0, 4, 5), res.stdout + res.stderr
        assert "Traceback" not in res.stderr, res.stderr


@pytest.mark.expect_log(r"^cannot keep the pointers judged at .*pointers-judged\.json \(Is a directory\): every "
                        r"health reads it all again until it can — remove what is at that name$", level="WARNING")
def test_a_memory_file_too_deep_for_json_or_a_directory_there_is_nothing_remembered(tmp_path: Path) -> None:
    """200 KB of `[` at either memory file: health judges as if nothing were remembered and
    agrees with check (before, json's RecursionError escaped, and health said the store could
    not be opened and dropped its integrity section). A directory planted at a memory's name:
    health still judges, and says why nothing is kept (the warning declared above)."""
    import json
    import shutil

    from hoardfs.fsd.io import judged

    cfg = _viewed(tmp_path, 3, 317, "v1")
    ssd = config.load(cfg).ssd.root
    _pointers_read(cfg)  # (both memories written)
    kept = {name: json.loads((ssd / name).read_bytes()) for name in (judged.POINTERS, judged.MEMORY)}
    # and numbers json reads that are no time (before, a 401-digit integer's OverflowError
    # escaped the loaders as the RecursionError had; NaN made health's ages NaN, not JSON)
    planted = [(name, b"[" * 200_000) for name in kept] + [
        (name, json.dumps(kept[name] | {field: v}).encode())
        for name, field in ((judged.POINTERS, "whole_at"), (judged.MEMORY, "whole_at"), (judged.MEMORY, "tail_at"))
        for v in (10 ** 400, float("nan"), float("-inf"))]
    for name, text in planted:
        (ssd / name).write_bytes(text)
        report = collect(config.load(cfg))
        problems = [p for p in report["problems"] if p.startswith(("store:", "disk "))]
        assert problems == [], (name, text[:60], problems)
        json.dumps(report, allow_nan=False)  # (health --json prints it: JSON, no NaN)
        if name == judged.POINTERS:
            assert report["store"]["integrity"]["read"]["pointers_remembered"] == 0, (text[:60], report)
    assert _three(cfg) == ([], 0, 0)
    (ssd / judged.POINTERS).unlink()
    (ssd / judged.POINTERS).mkdir()
    problems, read = _pointers_read(cfg)
    assert problems == [] and read["pointers_read"] > 0, (problems, read)
    shutil.rmtree(ssd / judged.POINTERS)
