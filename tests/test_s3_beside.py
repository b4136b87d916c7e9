"""What a disk keeps beside its shards (fsd/core/beside.py's `Beside`): one test body for a local
disk's files and for the objects of a bucket on each real S3 engine (fsd/core/s3files.py) — small
files, the marks log appended, read, snapshotted with appends in flight, bit rot found — then
the S3 log's format against the local one's bytes, and the engine gone mid-append."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hoardfs.fsd.core import marks, pointers, s3, s3files
from hoardfs.fsd.core.beside import MARKS_NAME
from hoardfs.fsd.core.disks import LocalDisk, write_identity
from tests.helpers import ENGINE_FIXTURES
from tests.test_s3_backend import BACKENDS, engine_env, s3_disk  # noqa: F401  # (engine_env: a fixture)

SHA = [bytes([i]) * 32 for i in range(1, 7)]


@pytest.fixture(params=BACKENDS)
def disk(request, tmp_path: Path, engine_env):
    """A local directory disk, or a fresh bucket on the session's engine."""
    if request.param == "local":
        return _local(tmp_path)
    engine = request.getfixturevalue(ENGINE_FIXTURES[request.param][0])
    engine_env(engine)
    return s3_disk(engine, tmp_path / "staging")


def _local(tmp_path: Path) -> LocalDisk:
    root = tmp_path / "hdd1"
    root.mkdir()
    return LocalDisk("hdd1", root, write_identity(root, "hdd1")["uuid"], require_mount=False)


def _append(disk, stamp: int, op: str, shas: list[bytes]) -> bytes:
    body = b"\n" + marks.records(stamp, op, shas)  # what hoardfs.fsd.io.copies.log_marks appends
    disk.beside.marks_append(body, [])
    return body


def _log_bytes(disk) -> bytes:
    """The log's bytes as a reader sees them (S3: the segments concatenated)."""
    if isinstance(disk, LocalDisk):
        return marks.log_path(disk.root).read_bytes()
    with disk.beside._log(None) as f:
        return f.read()


def _rot(disk, find: bytes, put: bytes) -> None:
    """Flip bytes of the log where no writer would: a file edited, an object replaced."""
    if isinstance(disk, LocalDisk):
        path = marks.log_path(disk.root)
        path.write_bytes(path.read_bytes().replace(find, put, 1))
        return
    for key, _ in disk.beside._segments():
        body = disk.client.get_object(Bucket=disk.bucket, Key=key)["Body"].read()
        if find in body:
            disk.client.put_object(Bucket=disk.bucket, Key=key, Body=body.replace(find, put, 1))
            return
    raise AssertionError("nothing to rot")


def test_small_files(disk) -> None:
    """A pointer is written whole, read back, listed by its folder; a missing one is
    FileNotFoundError; one written again replaces it; a name no batch can have is planted."""
    side = disk.beside
    body = pointers.encode({"manifest": "ab" * 32}, 7, "batches/b1.json")
    side.write("batches/b1.json", body, [])
    side.write(pointers.DB_DUMP, b'{"sha256": "00"}', [])
    assert side.read("batches/b1.json") == body
    assert side.names("batches", ".json") == ["b1"]
    assert side.names("views", ".json") == []
    with pytest.raises(FileNotFoundError):
        side.read("batches/nothing.json")
    side.write("batches/b1.json", b"{}", [])
    assert side.read("batches/b1.json") == b"{}"
    assert side.read(pointers.DB_DUMP) == b'{"sha256": "00"}'
    assert side.planted("batches/a b;rm.json") and not side.planted("batches/b1.json")
    assert side.in_the_way("batches/b1.json") == ""


def test_marks_log_appended_read_and_snapshotted(disk) -> None:
    """Appends read back as the records written, the ends tell the last stamp; a snapshot put in
    force keeps the appends made while it was written after it, and replays to the index's marks
    plus those; nothing of it is left over."""
    side = disk.beside
    assert side.marks_ends() == (None, None) and marks.judge_ends(*side.marks_ends()) == (0, False)
    _append(disk, 10, "root", SHA[:2])
    _append(disk, 11, "hide", SHA[2:3])
    _append(disk, 12, "unroot", SHA[:1])
    got = side.marks_read(label=disk.label)
    assert got.records == {(10, "root", SHA[0].hex()), (10, "root", SHA[1].hex()), (11, "hide", SHA[2].hex()),
                           (12, "unroot", SHA[0].hex())}
    assert not (got.damaged or got.other or got.legacy)
    assert marks.judge_ends(*side.marks_ends()) == (12, False)
    assert side.marks_size() > 0

    cut = side.marks_cut()
    side.marks_snapshot(marks.snapshot_chunks(13, {"rooted": [SHA[1]], "hidden": [SHA[2]]}), [])
    assert side.marks_leftover()
    _append(disk, 14, "root", SHA[3:4])  # a writer's append while the snapshot was written
    side.marks_swap(cut, [])
    assert not side.marks_leftover()
    got = side.marks_read(label=disk.label)
    assert got.resets == {13}
    assert {r for r in got.records if r[0] >= 13} == {(13, "root", SHA[1].hex()), (13, "hide", SHA[2].hex()),
                                                      (14, "root", SHA[3].hex())}
    assert marks.replay(got.records | {(13, marks.RESET, "0" * 64)}) == {
        "hidden": [SHA[2]], "deleted": [], "rooted": sorted([SHA[1], SHA[3]])}
    assert marks.judge_ends(*side.marks_ends()) == (14, False)


def test_a_snapshot_not_put_in_force_is_dropped(disk) -> None:
    """A snapshot written and never swapped (a killed writer) is a leftover, not the log: the log
    reads as before, and discarding it leaves nothing."""
    side = disk.beside
    _append(disk, 20, "root", SHA[:1])
    side.marks_snapshot(marks.snapshot_chunks(21, {}), [])
    assert side.marks_read().records == {(20, "root", SHA[0].hex())}
    assert side.marks_leftover()
    side.marks_discard()
    assert not side.marks_leftover()
    assert side.marks_read().records == {(20, "root", SHA[0].hex())}


def test_bit_rot_in_the_marks_log_is_damage_never_obeyed(disk) -> None:
    """A digit flipped in a record of the log (a file's byte, an object's) makes that line
    damaged — counted, never replayed — whichever backend keeps it."""
    _append(disk, 30, "root", SHA[:1])
    _append(disk, 31, "delete", SHA[1:2])
    _rot(disk, f"31 delete {SHA[1].hex()}".encode(), f"31 delete {SHA[4].hex()}".encode())
    got = disk.beside.marks_read()
    assert got.damaged == 1 and got.damaged_lines == [4]
    assert got.records == {(30, "root", SHA[0].hex())}


@pytest.mark.services
def test_the_s3_log_holds_the_bytes_a_local_log_holds(tmp_path: Path, s3_engine, engine_env) -> None:
    """The same appends and snapshot give the same log bytes on a local disk and in a bucket,
    one segment object per append under `marks/log/<20-digit stamp>.<8 hex>` (fsd/core/s3files.py,
    docs/design.md) — and the local log is the file `marks/marks.log` it always was."""
    engine_env(s3_engine)
    local, bucket = _local(tmp_path), s3_disk(s3_engine, tmp_path / "staging")
    for disk in (local, bucket):
        _append(disk, 5, "root", SHA[:3])
        _append(disk, 6, "hide", SHA[3:4])
    assert _log_bytes(bucket) == _log_bytes(local) == (marks.log_path(local.root)).read_bytes()
    assert (local.root / MARKS_NAME).is_file()
    keys = [k for k, _ in bucket.beside._segments()]
    assert [re.fullmatch(r"marks/log/(\d{20})\.[0-9a-f]{8}", k).group(1) for k in keys] == [f"{5:020d}", f"{6:020d}"]
    for disk in (local, bucket):
        cut = disk.beside.marks_cut()
        disk.beside.marks_snapshot(marks.snapshot_chunks(7, {"rooted": SHA[:2]}), [])
        _append(disk, 8, "keep", SHA[5:6])
        disk.beside.marks_swap(cut, [])
    assert _log_bytes(bucket) == _log_bytes(local)
    assert [k.split("/")[-1][:20] for k, _ in bucket.beside._segments()] == [f"{7:020d}", f"{8:020d}"]


@pytest.mark.services
def test_engine_gone_mid_append_is_one_line_and_loses_nothing_acknowledged(tmp_path: Path, s3_engine_own,
                                                                        engine_env) -> None:
    """With the engine down an append raises EngineError (a DiskGone: the store stops using the
    disk) in one line naming the disk and the next step; every append acknowledged before is
    there once the engine is back, and appending goes on."""
    engine_env(s3_engine_own)
    disk = s3_disk(s3_engine_own, tmp_path / "staging")
    _append(disk, 40, "root", SHA[:2])
    s3_engine_own.stop()
    with pytest.raises(s3.EngineError) as e:
        _append(disk, 41, "root", SHA[2:3])
    assert "\n" not in e.value.message and "disk s3a" in e.value.message and "start it" in e.value.message
    s3_engine_own.start()
    assert {(40, "root", SHA[0].hex()), (40, "root", SHA[1].hex())} <= disk.beside.marks_read().records
    _append(disk, 42, "drop", SHA[:1])
    assert marks.judge_ends(*disk.beside.marks_ends()) == (42, False)


def test_segment_names_need_a_stamp() -> None:
    """An append that is no record line has no stamp to name its segment by: refused."""
    with pytest.raises(ValueError):
        s3files._stamp_of(b"\nnot a record\n")
    assert s3files._stamp_of(b"\n" + marks.records(99, "root", SHA[:1])) == 99


@pytest.mark.services
def test_the_ends_of_an_s3_log_are_read_without_its_snapshot(tmp_path: Path, s3_engine, engine_env) -> None:
    """Every marks transaction reads the ends of each writable disk's log inside its write
    transaction (Index.log_in: Store.marks_tails): a bucket's is a window at each end, as a local
    disk reads 4 KiB — not the snapshot segment whole, which holds every mark (~108 bytes each:
    a store whose objects are all roots GETs 100 MiB a transaction at a million objects)."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    side = disk.beside
    many = [i.to_bytes(32, "big") for i in range(3000)]  # a snapshot of ~330 kB
    cut = side.marks_cut()
    side.marks_snapshot(marks.snapshot_chunks(50, {"rooted": many}), [])
    side.marks_swap(cut, [])
    read: list[int] = []
    real = disk.client.get_object

    def counted(**kw):
        r = real(**kw)
        read.append(int(r["ContentLength"]))
        return r

    disk.client.get_object = counted
    assert marks.judge_ends(*side.marks_ends()) == (50, False)  # (its `end` line)
    _append(disk, 51, "hide", many[:1])
    assert marks.judge_ends(*side.marks_ends()) == (51, False)
    assert sum(read) <= 4 * s3files.ENDS, read  # old code: the whole snapshot, twice
