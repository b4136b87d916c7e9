"""A reader of ordered runs (hoardfs.fsd.outputs.runs) reads a local disk's ranges into the one
buffer its thread keeps: every record handed out is its own bytes, checked; a replica cut short
or gone is read around; and the buffer a thread keeps stays bounded by the longest range records
are joined into, whatever the largest record — real stores on directory disks."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from hoardfs.fsd.io.planner import MAX_RANGE
from hoardfs.fsd.outputs import runs as runs_mod
from hoardfs.fsd.outputs.runs import Rec, Run, assign, read_run
from hoardfs.fsd.store import Store


def _run(store: Store, datas: list[bytes]) -> tuple[Run, dict[bytes, bytes]]:
    """`datas` put into the store (in one shard, offset order) and the run of their records;
    sha → bytes."""
    shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]
    locs = store.index.lookup_many(shas)
    assert len({locs[s].shard_id for s in shas}) == 1
    recs = sorted((Rec(s, locs[s].offset, locs[s].length) for s in shas), key=lambda r: r.offset)
    return Run(locs[shas[0]].shard_id, recs), dict(zip(shas, datas, strict=True))


def _fresh_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """This thread's range buffer forgotten (the test thread is a reader like any other)."""
    monkeypatch.setattr(runs_mod, "_scratch", threading.local())


def _read_once(store_factory, monkeypatch: pytest.MonkeyPatch,
               size: int) -> tuple[Store, Run, dict[bytes, bytes], str, Path]:
    """A fresh store with a run of three records of about `size` bytes, read once through a
    fresh buffer (every record right): (store, run, sha → bytes, its disk, its shard file)."""
    store = store_factory(shard_size_mb=128)
    _fresh_buffer(monkeypatch)
    run, want = _run(store, [os.urandom(size + i) for i in range(3)])
    uuid = assign(store, [run])[0]
    assert read_run(store, 0, run, uuid).payloads == want
    return store, run, want, uuid, Path(store.disks[uuid].find(run.shard_id.hex()))


def test_a_record_longer_than_the_longest_range_leaves_no_buffer_of_its_size(
        store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose ranges grow from small ones to one record longer than MAX_RANGE hands out
    every record whole and its own; the reader's kept buffer is the small records' range's
    (`scratch_size`), not one the size of that record held for the rest of the reader's life."""
    store = store_factory(shard_size_mb=128)
    _fresh_buffer(monkeypatch)
    big = MAX_RANGE + 5
    run, want = _run(store, [os.urandom(1000 + i) for i in range(3)] + [os.urandom(big)])
    got = read_run(store, 0, run, assign(store, [run])[0])
    assert got.fallbacks == 0 and got.payloads == want
    assert all(type(v) is bytes for v in got.payloads.values())
    assert len(runs_mod._scratch.buf) == runs_mod.SCRATCH_BYTES  # (three records of ~1 KB: the least)
    # and a run read after it reuses that buffer, its records right too
    run2, want2 = _run(store, [os.urandom(3000 + i) for i in range(4)])
    kept = runs_mod._scratch.buf
    got2 = read_run(store, 1, run2, assign(store, [run2])[0])
    assert got2.payloads == want2 and runs_mod._scratch.buf is kept


@pytest.mark.expect_log(r"loader: record .* does not check out", level="WARNING")
def test_a_replica_cut_short_inside_a_range_gives_its_missing_records_from_another(
        store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica's shard file cut inside the second record of a range (a short read into the
    reader's buffer, whose bytes past the cut are still the same range's, read whole before the
    cut) hands out the first record from it and the cut ones from another replica — nothing
    the file no longer holds is taken from the buffer."""
    store, run, want, uuid, path = _read_once(store_factory, monkeypatch, 20_000)
    os.truncate(path, run.records[1].offset + 100)
    store.disks[uuid].forget(run.shard_id.hex())
    got = read_run(store, 1, run, uuid)
    assert got.payloads == want and got.fallbacks == 2


def test_a_replica_gone_between_runs_is_read_around(store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard file gone from its disk (gc retired it) after the reader's buffer held a range of
    it: the next run of it hands out every record from another replica, its own bytes."""
    store, run, want, uuid, path = _read_once(store_factory, monkeypatch, 9000)
    Path(path).unlink()
    store.disks[uuid].forget(run.shard_id.hex())
    got = read_run(store, 1, run, uuid)
    assert got.payloads == want and got.fallbacks == 3 and got.nbytes == 0
    assert all(hashlib.sha256(v).digest() == k for k, v in got.payloads.items())


def test_the_buffer_kept_fits_the_ranges_read() -> None:
    """A reader keeps the power of two at or above its longest range, at least 1 MiB: runs of
    96 KiB keep 1 MiB, a range of just over 1 MiB 2 MiB, one of 8 MiB exactly 8 MiB."""
    size = runs_mod.scratch_size
    assert size(1) == size(96 << 10) == size(1 << 20) == runs_mod.SCRATCH_BYTES == 1 << 20
    assert size((1 << 20) + 1) == 2 << 20 and size(8 << 20) == 8 << 20 and size((8 << 20) + 1) == 16 << 20


def test_records_handed_out_as_views_stay_right_once_their_buffer_is_reused(
        store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read through one `Buffers` (a training loader's epoch): a run's records are views of its
    range buffer until the consumer copies them and releases the run; the buffer then serves
    the next run's range, the copies keep their bytes, and a view kept past `release` raises
    rather than show the next range's bytes. A run keeping part of its records (a worker's)
    hands out copies and gives its buffer back at once."""
    store = store_factory(shard_size_mb=128)
    _fresh_buffer(monkeypatch)
    pool = runs_mod.Buffers()
    run, want = _run(store, [os.urandom(60_000 + i) for i in range(3)])  # (more than half a buffer's 256 KiB)
    uuid = assign(store, [run])[0]
    got = read_run(store, 0, run, uuid, buffers=pool)
    assert all(type(v) is memoryview for v in got.payloads.values()) and len(got.buffers) == 1
    copies = {k: bytes(v) for k, v in got.payloads.items()}
    kept_view, buf = next(iter(got.payloads.values())), got.buffers[0]
    got.release()
    assert got.payloads == {} and [id(b) for b in pool._free] == [id(buf)]
    with pytest.raises(ValueError):
        bytes(kept_view)
    run2, want2 = _run(store, [os.urandom(60_000 + i) for i in range(3)])
    got2 = read_run(store, 1, run2, assign(store, [run2])[0], buffers=pool)
    assert [id(b) for b in got2.buffers] == [id(buf)] and pool._free == []  # (the same buffer, overwritten)
    assert {k: bytes(v) for k, v in got2.payloads.items()} == want2 and copies == want
    got2.release()
    part = Run(run.shard_id, run.records, keep=frozenset([run.records[1].sha]))
    got3 = read_run(store, 2, part, uuid, buffers=pool)
    assert got3.payloads == {run.records[1].sha: want[run.records[1].sha]}
    assert all(type(v) is bytes for v in got3.payloads.values()) and got3.buffers == [] and [id(b) for b in pool._free] == [id(buf)]


@pytest.mark.expect_log(r"loader: record .* does not check out", level="WARNING")
def test_a_rotten_record_in_a_pooled_range_is_read_from_another_replica(
        store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte in one record of a replica read into a pooled buffer: that record comes
    from the other replica, its own bytes; the others are views of the range, all right."""
    store, run, want, uuid, path = _read_once(store_factory, monkeypatch, 20_000)
    with open(path, "r+b") as f:
        f.seek(run.records[1].offset + 7)
        b = f.read(1)
        f.seek(run.records[1].offset + 7)
        f.write(bytes([b[0] ^ 0xFF]))
    store.disks[uuid].forget(run.shard_id.hex())
    got = read_run(store, 1, run, uuid, buffers=runs_mod.Buffers())
    assert got.fallbacks == 1 and type(got.payloads[run.records[1].sha]) is bytes
    assert {k: bytes(v) for k, v in got.payloads.items()} == want


def test_a_run_of_sparse_records_holds_no_more_than_its_records(store_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of 4 KiB each between 300 KiB of other objects (a small split among others): each is
    a range of its own, and the run read through one `Buffers` holds copies of its records, not a
    256 KiB buffer for each of them; every buffer goes back to the pool as it is read."""
    store = store_factory(shard_size_mb=128)
    _fresh_buffer(monkeypatch)
    datas = [os.urandom(4096 + i) if i % 2 == 0 else os.urandom(300 << 10) for i in range(64)]
    run, want = _run(store, datas)
    sparse = Run(run.shard_id, [r for r in run.records if r.length < 8192])
    assert len(sparse.records) == 32
    pool = runs_mod.Buffers()
    got = read_run(store, 0, sparse, assign(store, [sparse])[0], buffers=pool)
    assert got.buffers == [] and all(type(v) is bytes for v in got.payloads.values())
    assert got.payloads == {r.sha: want[r.sha] for r in sparse.records}
    assert len(pool._free) == 1 and pool._free_bytes == 256 << 10  # (one buffer, taken and given back 32 times)
