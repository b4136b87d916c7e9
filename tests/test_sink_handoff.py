"""The batch planner's sink threads (hoardfs.fsd.io.planner._Handoff): the disks read on while
the sink writes, within a byte budget, and a failure or a stop still ends the read at once."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from hoardfs.base.errors import HoardError
from hoardfs.fsd.io import planner
from hoardfs.fsd.io.planner import ReadRange, Wanted, execute, make_plan
from hoardfs.fsd.outputs.materialize import Item, materialize
from tests.helpers import make_files


def test_a_slow_sink_does_not_hold_up_the_disks_reads(store_factory, tmp_path: Path) -> None:
    """With a sink that takes 5 ms a record, every disk's reader is done long before the sink
    is: the readers hand their records on and read their next range meanwhile, and every
    record still reaches the sink once, checked, before execute returns."""
    store = store_factory(shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "in", 240, lo=8 << 10, hi=24 << 10))
    plan = make_plan(store, [bytes.fromhex(r.sha256) for r in res])
    got: dict[bytes, int] = {}
    lock = threading.Lock()

    def sink(sha: bytes, payload: memoryview) -> None:
        time.sleep(0.005)
        with lock:
            got[sha] = got.get(sha, 0) + 1 if hashlib.sha256(payload).digest() == sha else -1

    stats = execute(store, plan, sink)
    assert got == {bytes.fromhex(r.sha256): 1 for r in res}
    per_disk = {uuid: sum(len(r.records) for r in rs) for uuid, rs in plan.ranges.items()}
    labels = {uuid: store.disks[uuid].label for uuid in per_disk}
    for uuid, n in per_disk.items():  # the old readers called the sink themselves: n × 5 ms at least
        assert stats.per_disk_seconds[labels[uuid]] < n * 0.005 / 2, (labels[uuid], n, stats.per_disk_seconds)


def _ranges(n: int, size: int) -> list[ReadRange]:
    return [ReadRange("00" * 16, k * size, (k + 1) * size, [Wanted(bytes([k]) * 32, k * size + 64, size - 64)])
            for k in range(n)]


def test_the_sink_threads_hold_at_most_their_budget_and_a_stop_frees_a_waiting_reader() -> None:
    """Ranges are handed on only while the bytes held fit SINK_BUDGET (one range longer than
    it alone); a reader waiting for room gives up as soon as the read is stopped, and the
    records still queued then are dropped, not handed to the sink."""
    stop = threading.Event()
    gate = threading.Event()
    seen: list[bytes] = []
    peak = [0]

    def sink(sha: bytes, payload: memoryview) -> None:
        peak[0] = max(peak[0], handoff.held)
        gate.wait(5)
        seen.append(sha)

    handoff = planner._Handoff(sink, stop, lambda e: None, threads=2, budget=3000)
    ranges = _ranges(6, 1000)
    payload = memoryview(b"x" * 936)
    assert all(handoff.hand(r, [payload]) for r in ranges[:3])
    waited: list[tuple[bool, float]] = []

    def reader() -> None:
        t0 = time.monotonic()
        waited.append((handoff.hand(ranges[3], [payload]), time.monotonic() - t0))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    assert not waited, "a range was handed on past the budget"
    stop.set()
    t.join(1)
    assert waited and waited[0][0] is False and waited[0][1] < 0.5
    gate.set()
    handoff.close()
    assert len(seen) <= 2, "records queued before the stop were handed to the sink after it"
    assert peak[0] <= 3000 and handoff.held == 0
    big = planner._Handoff(lambda sha, p: None, threading.Event(), lambda e: None, threads=1, budget=100)
    assert big.hand(ranges[0], [payload]), "a range longer than the budget must go when nothing is held"
    big.close()


def test_a_write_failing_in_a_sink_thread_loses_nothing_and_says_one_line(store_factory, tmp_path: Path) -> None:
    """One file of a copy cannot be written (its path is taken by a directory that is not
    empty): the copy fails with one line naming it, the files written are whole and counted
    by their sha256 on a re-run, and the re-run after the obstacle is gone writes the rest."""
    store = store_factory(shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "in", 120, lo=8 << 10, hi=24 << 10))
    items = [Item(f"f/{k:03d}.bin", r.sha256, r.size) for k, r in enumerate(res)]
    dest = tmp_path / "out"
    (dest / "f" / "050.bin" / "keep").mkdir(parents=True)
    with pytest.raises(HoardError) as e:
        materialize(store, items, dest)
    assert "050.bin" in e.value.message and "\n" not in e.value.message
    for it in items:  # nothing half written: each file there is whole
        path = dest / it.path
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == it.sha256, it.path
    (dest / "f" / "050.bin" / "keep").rmdir()
    (dest / "f" / "050.bin").rmdir()
    rep = materialize(store, items, dest)
    assert rep.kept + rep.written == len(items) and rep.written >= 1
    assert all(hashlib.sha256((dest / it.path).read_bytes()).hexdigest() == it.sha256 for it in items)

