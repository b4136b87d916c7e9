"""The store on directory disks: put/get, dedupe, big files, replication, planner, refusals."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.placement import NoSpace
from hoardfs.fsd.core.records import DataError, ObjectNotFound
from tests.helpers import flip_byte, make_files


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _shard_files(store) -> list[Path]:
    return sorted(p for d in store.disks.values() for p in (d.root / "shards").rglob("*") if p.is_file())


def check_store(store) -> int:
    """Consistency check (like S3QL's fsck at the end of each test): every indexed object reads
    back with its sha256 from every replica, and every sealed replica's footer matches its records."""
    n = 0
    for sha, loc in store.index.iter_objects():
        meta = store.index.get_shard(loc.shard_id)
        assert meta is not None and len(set(meta.replicas)) == len(meta.replicas)
        for disk in store.replica_order(meta):
            data = store._read_record(disk, meta.hex, loc.offset, loc.length, sha)
            assert hashlib.sha256(data).digest() == sha
        n += 1
    for meta in store.index.iter_shards():
        if meta.sealed:
            for disk in store.replica_order(meta):
                size = disk.size(meta.hex)
                read = lambda off, k, d=disk, h=meta.hex: d.read_at(h, off, k)  # noqa: E731
                assert len(list(fmt.scan_records(read, size, sealed=True))) == meta.records
    return n


def test_put_get_round_trip_and_dedupe(store_factory, tmp_path: Path) -> None:
    """New files are stored with write_ack replicas; the same content again is 'existing'."""
    store = store_factory()
    files = make_files(tmp_path / "in", 200)
    (tmp_path / "in" / "copy.bin").write_bytes(files[0].read_bytes())
    files.append(tmp_path / "in" / "copy.bin")
    res = store.put_many(files)
    assert Counter(r.status for r in res) == {"new": 200, "existing": 1}
    assert all(r.replicas == 2 and r.target == 2 for r in res)
    for f, r in zip(files, res, strict=True):
        assert r.sha256 == _sha(f) and store.get(r.sha256) == f.read_bytes()
    again = store.put_many(files)
    assert {r.status for r in again} == {"existing"}
    assert check_store(store) == 200
    assert not [p for p in _shard_files(store) if p.suffix == ".open"]


def test_big_file_gets_its_own_contiguous_shard(store_factory, tmp_path: Path) -> None:
    """A file larger than shard_size_mb is stored whole in a shard with one record."""
    store = store_factory(shard_size_mb=2)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 << 20))
    small = make_files(tmp_path / "in", 5)
    res = store.put_many([small[0], big, *small[1:]])
    assert [r.status for r in res] == ["new"] * 6
    loc = store.index.lookup(bytes.fromhex(res[1].sha256))
    meta = store.index.get_shard(loc.shard_id)
    assert meta.records == 1 and loc.offset == fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE
    assert store.get(res[1].sha256) == big.read_bytes()
    check_store(store)


def test_rejections_name_the_file(store_factory, tmp_path: Path) -> None:
    """A missing file, a directory and a dangling symlink are rejected, the rest stored."""
    store = store_factory()
    good = make_files(tmp_path / "in", 3)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    res = store.put_many([good[0], tmp_path / "missing", tmp_path / "in", tmp_path / "dangling", *good[1:]])
    assert [r.status for r in res] == ["new", "rejected", "rejected", "rejected", "new", "new"]
    assert res[1].path == str(tmp_path / "missing") and res[1].reason == "no such file"
    assert res[2].reason == "a directory, not a regular file: only regular files are stored"
    assert res[3].reason == "a dangling symlink (its target is gone)"
    assert store.index.count_objects() == 3


def test_file_changing_while_stored_is_rejected(store_factory, tmp_path: Path) -> None:
    """A large file rewritten during the copy is rejected and nothing of it is indexed."""
    store = store_factory(shard_size_mb=64)
    victim = tmp_path / "growing.bin"
    victim.write_bytes(os.urandom(48 << 20))
    stop = threading.Event()

    def scribble() -> None:
        with open(victim, "r+b") as f:
            i = 0
            while not stop.is_set():
                f.seek((i * 7919) % (48 << 20))
                f.write(os.urandom(16))
                f.flush()
                i += 1

    t = threading.Thread(target=scribble)
    t.start()
    try:
        [res] = store.put_many([victim])
    finally:
        stop.set()
        t.join()
    assert res.status == "rejected" and "changed while being" in res.reason
    assert store.index.count_objects() == 0
    assert all(p.stat().st_size == 0 or p.suffix == ".shard" for p in _shard_files(store))


def test_replicator_reaches_the_class_target(store_factory, tmp_path: Path) -> None:
    """copy_of_raw=3: after replicate_once every shard has 3 replicas on distinct disks."""
    from hoardfs.fsd.io.replicate import replicate_once, replication_lag

    store = store_factory(copy_of_raw=3, copy_of_generated=2)
    files = make_files(tmp_path / "in", 300)
    store.put_many(files)
    lag = replication_lag(store)
    assert lag["shards_below_target"] > 0 and lag["bytes_below_target"] > 0
    gen = store.put_bytes(b"generated thing", klass="generated")
    rep = replicate_once(store, rate_mb_s=None)
    assert rep.copied_shards == lag["shards_below_target"]
    assert replication_lag(store) == {"shards_below_target": 0, "bytes_below_target": 0, "at_risk": []}
    for meta in store.index.iter_shards():
        assert len(set(meta.replicas)) == (3 if meta.klass == "raw" else 2)
    assert store.get(gen.sha256) == b"generated thing"
    check_store(store)


def test_placement_spreads_by_capacity(store_factory, tmp_path: Path) -> None:
    """Many shards land on every disk, the larger ones taking more."""
    store = store_factory(caps=(8, 4, 2, 1))
    store.put_many(make_files(tmp_path / "in", 1500, lo=20_000, hi=60_000))
    per_disk = Counter(u for m in store.index.iter_shards() for u in m.replicas)
    labels = {u: store.disks[u].label for u in per_disk}
    counts = {labels[u]: n for u, n in per_disk.items()}
    assert set(counts) == {"d1", "d2", "d3", "d4"}, counts
    assert counts["d1"] > counts["d3"] and counts["d1"] > counts["d4"], counts


def test_refuses_when_too_few_disks_can_take_a_shard(store_factory, tmp_path: Path) -> None:
    """With write_ack=2 and only one disk with room, the write is refused naming each disk."""
    store = store_factory(n_disks=3, caps=(4, 0.0005, 0.0005))
    with pytest.raises(NoSpace) as e:
        store.put_many(make_files(tmp_path / "in", 3))
    assert "need 2 disks" in e.value.message and "d1" in e.value.message and "d2 524 KiB free" in e.value.message
    assert store.index.count_objects() == 0


@pytest.mark.expect_log(r"disk d\d: read error on shard", level="WARNING")
def test_read_falls_back_from_a_corrupt_replica(store_factory, tmp_path: Path) -> None:
    """A flipped byte in one replica: get returns the right bytes from the other and queues a repair;
    with every replica damaged it raises DataError — never wrong bytes."""
    store = store_factory()
    [f] = make_files(tmp_path / "in", 1)
    [res] = store.put_many([f])
    loc = store.index.lookup(bytes.fromhex(res.sha256))
    meta = store.index.get_shard(loc.shard_id)
    first, second = (store.disks[u] for u in meta.replicas)
    for disk in (first,):
        path = disk.find(meta.hex)
        raw = bytearray(path.read_bytes())
        raw[loc.offset + 10] ^= 0x40
        path.write_bytes(raw)
        disk.forget(meta.hex)
    assert store.get(res.sha256) == f.read_bytes()
    repairs = store.index.pending_repairs()
    assert [(s, u) for s, u, _ in repairs] == [(meta.shard_id, first.uuid)]
    assert "checksum mismatch" in repairs[0][2]["reason"]
    path = second.find(meta.hex)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + 11] ^= 0x01
    path.write_bytes(raw)
    second.forget(meta.hex)
    with pytest.raises(DataError, match="no good replica"):
        store.get(res.sha256)
    with pytest.raises(ObjectNotFound):
        store.get("0" * 64)


def test_batch_read_plan_covers_everything_coalesced(store_factory, tmp_path: Path) -> None:
    """The planner reads every object once, in (shard, offset) order per disk, in few reads."""
    from hoardfs.fsd.io.planner import make_plan

    store = store_factory(shard_size_mb=4)
    files = make_files(tmp_path / "in", 400)
    res = store.put_many(files)
    shas = [r.sha256 for r in res]
    plan = make_plan(store, [bytes.fromhex(h) for h in shas])
    planned = [w.sha for rs in plan.ranges.values() for r in rs for w in r.records]
    assert sorted(planned) == sorted(bytes.fromhex(h) for h in shas)
    for ranges in plan.ranges.values():
        keys = [(r.shard_hex, w.offset) for r in ranges for w in r.records]
        assert keys == sorted(keys)
    assert sum(len(r) for r in plan.ranges.values()) < len(shas) / 10
    assert plan.bound_s >= plan.ideal_s > 0
    got: dict[bytes, bytes] = {}
    lock = threading.Lock()

    def sink(sha: bytes, payload: memoryview) -> None:
        with lock:
            got[sha] = bytes(payload)

    plan2, stats = store.read_batch(shas, sink)
    assert stats.objects == len(shas) and stats.fallbacks == 0
    assert all(hashlib.sha256(v).digest() == k for k, v in got.items()) and len(got) == len(shas)



@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_a_sink_error_in_a_batch_read_is_raised_not_blamed_on_the_disk_read(store_factory, tmp_path: Path,
                                                                           err: int) -> None:
    """The sink (an export writing to a zone) fails: its error is raised as it is, and the disk
    the objects came from is not blamed — before, the sink's EIO marked the healthy source
    disk failed, its ENOSPC was recorded as the source's read error and retried elsewhere."""
    store = store_factory(shard_size_mb=4)
    shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 100))]
    calls = []

    def sink(sha: bytes, payload: memoryview) -> None:
        calls.append(sha)
        if len(calls) == 30:
            raise OSError(err, os.strerror(err), str(tmp_path / "3D" / "export"))

    with pytest.raises(OSError) as got:
        store.read_batch(shas, sink)
    assert got.value.errno == err
    assert {r.state.value for r in store.records.values()} == {"active"}
    assert not [e for e in store.index.recent_events(50) if e["kind"].endswith("_error")]
    assert not list(store.index.pending_repairs())  # nothing queued for repair either


def _ranges_by_record_order(records: list, gap: int, max_range: int) -> list[tuple]:
    """The planner's per-disk step before the piece-wise sort: the disk's records sorted one by
    one by (shard, offset), then coalesced — the reference the piece-wise sort must equal."""
    out: list[list] = []
    for shard_hex, w in sorted(records, key=lambda x: (x[0], x[1].offset)):
        last = out[-1] if out else None
        if last and last[0] == shard_hex and w.start - last[2] <= gap and w.end - last[1] <= max_range:
            last[2] = max(last[2], w.end)
            last[3].append(w.sha)
        else:
            out.append([shard_hex, w.start, w.end, [w.sha]])
    return [tuple(r) for r in out]


@pytest.fixture(scope="module")
def planner_store(tmp_path_factory):
    """Three disks, two replicas a shard, 1 MiB shards of 600 objects of 2-20 KB (read only)."""
    from hoardfs.base import config
    from hoardfs.fsd.store import Store
    from tests.helpers import write_config

    root = tmp_path_factory.mktemp("planner")
    disks = [(f"d{i}", root / "disks" / f"d{i}", None) for i in (1, 2, 3)]
    for _, p, _ in disks:
        p.mkdir(parents=True)
    store = Store.open(config.load(write_config(root, disks, shard_size_mb=1, copy_of_raw=2, write_ack=2)), init=True)
    res = store.put_many(make_files(root / "in", 600, seed=51, lo=2000, hi=20_000))
    yield store, [bytes.fromhex(r.sha256) for r in res]
    store.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_plan_orders_each_disks_records_as_sorting_them_one_by_one_did(planner_store, data) -> None:
    """Whatever is asked (a subset, duplicate sha256s, shards cut into many pieces spread over
    several disks, records over MAX_RANGE, any bandwidths and gaps): each disk's reads are
    exactly what sorting its records by (shard, offset) and coalescing them gave before the
    pieces were sorted instead, and every object found is read once."""
    from hoardfs.fsd.io import planner

    store, shas = planner_store
    asked = data.draw(st.lists(st.sampled_from(shas), max_size=300))
    knobs = {"PIECE_BYTES": data.draw(st.integers(1, 2 << 20)), "GAP_BYTES": data.draw(st.integers(0, 64 << 10)),
             "MAX_RANGE": data.draw(st.integers(1, 64 << 10))}
    bw = {u: data.draw(st.floats(1e6, 1e9)) for u in store.disks}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in knobs.items():
            mp.setattr(planner, name, value)
        plan = planner.make_plan(store, asked, bw)
    for ranges in plan.ranges.values():
        got = [(r.shard_hex, r.start, r.end, [w.sha for w in r.records]) for r in ranges]
        records = [(r.shard_hex, w) for r in ranges for w in r.records]
        assert got == _ranges_by_record_order(records, knobs["GAP_BYTES"], knobs["MAX_RANGE"])
    read = [w.sha for rs in plan.ranges.values() for r in rs for w in r.records] + [w.sha for w in plan.large]
    assert sorted(read) == sorted(set(asked)) and not plan.missing
    assert sorted(w.sha for ws in plan.large_by_disk.values() for w in ws) == sorted(w.sha for w in plan.large)


def test_large_records_are_balanced_over_the_disks_and_streamed_by_their_readers(store_factory, tmp_path: Path) -> None:
    """Records over MAX_RANGE count in the plan's per-disk load and bound, and each streams
    (verified pieces) from the disk the plan chose, inside that disk's reader, beside the
    other disks' readers — not one after another once everything else is read."""
    from hoardfs.fsd.io.planner import MAX_RANGE, make_plan
    store = store_factory(n_disks=4, shard_size_mb=40, copy_of_raw=2, write_ack=2)
    big = []
    for i in range(4):
        p = tmp_path / "in" / f"big{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(hashlib.sha256(str(i).encode()).digest() * ((MAX_RANGE + (1 << 20)) // 32))
        big.append(p)
    small = make_files(tmp_path / "small", 50)
    res = store.put_many(big + small)
    shas = [r.sha256 for r in res]
    plan = make_plan(store, [bytes.fromhex(h) for h in shas])
    assert len(plan.large) == 4 and sum(len(v) for v in plan.large_by_disk.values()) == 4
    assert len(plan.large_by_disk) >= 2, "the large records all went to one disk"
    for uuid, ws in plan.large_by_disk.items():
        assert plan.bytes_per_disk[uuid] >= sum(w.length for w in ws)
    assert plan.bound_s >= max(sum(w.length for w in ws) / plan.bandwidth[u] for u, ws in plan.large_by_disk.items())
    for chosen, ws in plan.large_by_disk.items():  # the other replica of each is damaged: read only if
        for w in ws:                                 # the plan's choice were ignored (a warning fails the test)
            meta = store.index.get_shard(store.index.lookup(w.sha).shard_id)
            for other in set(meta.replicas) - {chosen}:
                flip_byte(store.disks[other].find(meta.hex), w.offset + (1 << 20))
    got: dict[bytes, tuple[str, str]] = {}
    lock = threading.Lock()

    def large_sink(sha: bytes, pieces) -> None:
        h = hashlib.sha256()
        for piece in pieces:
            h.update(piece)
        with lock:
            got[sha] = (h.hexdigest(), threading.current_thread().name)

    _, stats = store.read_batch(shas, lambda sha, payload: None, large_sink)
    assert stats.objects == len(shas)
    assert {sha.hex(): digest for sha, (digest, _) in got.items()} == {r.sha256: r.sha256 for r in res[:4]}
    assert all(name.startswith("reader") for _, name in got.values())
    assert len({name for _, name in got.values()}) >= 2


@pytest.mark.expect_log(r"read error", level="WARNING")
def test_batch_read_survives_a_damaged_replica(store_factory, tmp_path: Path) -> None:
    """Ranges on a replica with a bad record fall back to other replicas; all bytes still right."""
    store = store_factory(shard_size_mb=4)
    files = make_files(tmp_path / "in", 200)
    res = store.put_many(files)
    from hoardfs.fsd.io.planner import execute, make_plan

    plan = make_plan(store, [bytes.fromhex(r.sha256) for r in res])
    for uuid, ranges in plan.ranges.items():  # damage the very replicas the plan reads from
        disk = store.disks[uuid]
        for shard_hex in {r.shard_hex for r in ranges}:
            path = disk.find(shard_hex)
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            path.write_bytes(raw)
        disk.close_all()
    got = {}
    stats = execute(store, plan, lambda s, p: got.__setitem__(s, bytes(p)))
    assert len(got) == 200 and all(hashlib.sha256(v).digest() == k for k, v in got.items())
    assert stats.fallbacks > 0


@pytest.mark.expect_log(r"read error", level="WARNING")
def test_a_record_rotted_mid_range_hands_on_each_object_once(store_factory, tmp_path: Path) -> None:
    """A range whose middle record is rotted: the records before it are handed on from that
    range (checked in the thread that read it), the rotted one and those after it from the
    other replica — each object exactly once, every byte right."""
    from hoardfs.fsd.io.planner import execute, make_plan

    store = store_factory(shard_size_mb=4)
    res = store.put_many(make_files(tmp_path / "in", 60))
    plan = make_plan(store, [bytes.fromhex(r.sha256) for r in res])
    uuid, ranges = next((u, rs) for u, rs in plan.ranges.items() if any(len(r.records) >= 5 for r in rs))
    rng = next(r for r in ranges if len(r.records) >= 5)
    bad = rng.records[len(rng.records) // 2]
    disk = store.disks[uuid]
    path = disk.find(rng.shard_hex)
    raw = bytearray(path.read_bytes())
    raw[bad.offset + bad.length // 2] ^= 0xFF  # the payload of one record: its xxh3 fails
    path.write_bytes(raw)
    disk.close_all()
    seen: Counter = Counter()
    right = set()

    def sink(sha: bytes, payload: memoryview) -> None:
        seen[sha] += 1
        if hashlib.sha256(payload).digest() == sha:
            right.add(sha)

    stats = execute(store, plan, sink)
    assert set(seen) == right == {bytes.fromhex(r.sha256) for r in res}
    assert max(seen.values()) == 1, "an object was handed on twice"
    assert stats.fallbacks == len(rng.records) - rng.records.index(bad)


def test_the_heap_frozen_for_a_plan_is_thawed_and_the_collector_never_stops() -> None:
    """`heap_frozen` (the batch plan's): the objects held before the block are frozen out of
    the collector's walks while it runs — the collector still running — and thawed after it,
    on an exception too, nested too; a Ctrl-C in the block leaves nothing switched off (the
    collector held off instead could stay off for good after a Ctrl-C)."""
    import gc

    from hoardfs.base.collect import heap_frozen

    held = [[i] for i in range(1000)]
    assert gc.get_freeze_count() == 0
    with heap_frozen():
        assert gc.isenabled() and gc.get_freeze_count() >= len(held)
        with heap_frozen():
            made = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == 0  # (the inner block's end thawed it all: time, not harm)
    assert gc.get_freeze_count() == 0 and gc.isenabled() and made
    for exc in (ValueError, KeyboardInterrupt):
        with pytest.raises(exc):
            with heap_frozen():
                raise exc()
        assert gc.get_freeze_count() == 0 and gc.isenabled()


def _slow_read(store_factory, tmp_path: Path, on_record) -> tuple[list, list]:
    """Read 400 objects from 4 disks through a sink that takes 10 ms a record and calls
    `on_record(n)` after the n-th; (records delivered, what execute raised)."""
    from hoardfs.fsd.io.planner import execute, make_plan

    store = store_factory(shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "in", 400, lo=8 << 10, hi=24 << 10))
    plan = make_plan(store, [bytes.fromhex(r.sha256) for r in res])
    assert len(plan.ranges) >= 3
    delivered: list[float] = []
    lock = threading.Lock()

    def sink(sha: bytes, payload: memoryview) -> None:
        time.sleep(0.01)
        with lock:
            delivered.append(time.monotonic())
            n = len(delivered)
        on_record(n)

    raised = []
    try:
        execute(store, plan, sink)
    except BaseException as e:  # the test looks at what came out
        raised.append((e, time.monotonic()))
    n_at_return = len(delivered)
    time.sleep(0.1)
    assert len(delivered) == n_at_return, "a reader called the sink after execute returned"
    return delivered, raised


def test_ctrl_c_stops_a_batch_read_within_a_record(store_factory, tmp_path: Path) -> None:
    """SIGINT to the main thread during `execute` stops every reader: KeyboardInterrupt comes
    out, and at most about one record per reader is delivered after it."""
    sent: list[float] = []
    seen: list[float] = []  # when the main thread ran the handler: how late the OS delivers it is not ours

    def on_record(n: int) -> None:
        if n == 20:
            sent.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what Ctrl-C does

    def handler(signum, frame) -> None:
        seen.append(time.monotonic())
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)  # an in-process rq worker may have set its own
    try:
        delivered, raised = _slow_read(store_factory, tmp_path, on_record)
    finally:
        signal.signal(signal.SIGINT, old)
    assert raised and isinstance(raised[0][0], KeyboardInterrupt)
    after = [t for t in delivered if t > seen[0]]
    assert len(after) <= 8, f"{len(after)} records delivered after the main thread got Ctrl-C"
    assert raised[0][1] - sent[0] < 0.5


def test_a_failing_sink_stops_the_other_readers(store_factory, tmp_path: Path) -> None:
    """A sink that raises in one reader stops the others too; its exception is what execute raises."""
    def on_record(n: int) -> None:
        if n == 20:
            raise RuntimeError("the SSD said no")

    delivered, raised = _slow_read(store_factory, tmp_path, on_record)
    assert raised and str(raised[0][0]) == "the SSD said no"
    assert len(delivered) <= 20 + 8, f"{len(delivered) - 20} records delivered after the sink failed"


def test_in_order_keeps_the_order_runs_calls_at_once_and_drops_the_rest_when_left() -> None:
    """`in_order` (the planner's reads off a disk with several streams): results in the calls'
    order whatever order they finish in, `streams` calls running at once, an exception raised
    in its call's place, and calls not yet started never run once the consumer leaves."""
    from hoardfs.fsd.io.planner import in_order

    together = threading.Barrier(3, timeout=10)  # the first three run at once, or it breaks
    started: list[int] = []

    def call(i: int):
        def run() -> int:
            started.append(i)
            if i < 3:
                together.wait()
                time.sleep(0.01 * (3 - i))  # the later ones finish first
            if i == 5:
                raise OSError(5, "the fifth read failed")
            return i
        return run

    got = in_order((call(i) for i in range(8)), 3)
    assert [next(got) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="the fifth read failed"):
        next(got)
    got.close()
    assert max(started) <= 5 + 3, started  # the window: at most `streams` calls beyond the one handed out
    assert [r for r in in_order((call(i) for i in (3, 4)), 1)] == [3, 4]  # one stream: the calls in turn


def test_cli_put_get(hoard_home: Path, tmp_path: Path) -> None:
    """`hoard put` prints sha256/status/replicas; `hoard get -o` writes the bytes back."""
    from tests.test_cli import hoard

    cfg = str(hoard_home / "hoard.toml")
    assert hoard("--config", cfg, "init").returncode == 0
    files = make_files(tmp_path / "in", 5)
    res = hoard("--config", cfg, "put", str(tmp_path / "in"), str(tmp_path / "missing"))
    assert res.returncode == 5
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 5 and all(" new " in ln and " 2/2 " in ln for ln in lines)
    assert f"rejected {tmp_path / 'missing'}" in res.stderr
    sha = lines[0].split()[0]
    out = tmp_path / "back.bin"
    assert hoard("--config", cfg, "get", sha, "-o", str(out)).returncode == 0
    assert _sha(out) == sha and out.read_bytes() == files[0].read_bytes()
    again = hoard("--config", cfg, "put", str(files[0]))
    assert again.returncode == 0 and " existing " in again.stdout
    bad = hoard("--config", cfg, "get", "abc")
    assert bad.returncode == 2 and "is not a sha256" in bad.stderr
    missing = hoard("--config", cfg, "get", "0" * 64)
    assert missing.returncode == 5 and "is not in the store" in missing.stderr


@pytest.mark.expect_log(r"disk d\d: write error", level="WARNING")
@pytest.mark.expect_log(r"read from failed disk d\d, the last good replica", level="WARNING")  # (b2's manifest)
def test_a_pointer_write_error_on_one_disk_fails_that_disk_not_the_command(store_factory, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """A disk answering EIO to a batch pointer (before anything else noticed it dying): the
    other disks take the pointer, the disk is marked failed; with no disk left, one clear error."""
    import errno

    import hoardfs.fsd.core.beside as beside  # where a local disk's pointers are written
    from hoardfs.base.errors import HoardError

    store = store_factory(n_disks=3, caps=None)
    real = beside.atomic_write
    bad = {str(tmp_path / "disks" / "d2")}

    def flaky(path, data, **kw):
        if any(str(path).startswith(b + "/") for b in bad):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, data, **kw)

    manifests = [store.put_bytes(json.dumps({"format": "hoardfs-batch-manifest-1", "batch_id": b, "files": []})
                                 .encode()).sha256 for b in ("b1", "b2")]
    monkeypatch.setattr(beside, "atomic_write", flaky)
    store.register_batch("b1", {"manifest": manifests[0]})
    d2 = next(u for u, d in store.disks.items() if d.label == "d2")
    assert store.records[d2].state.value == "failed"
    assert all((tmp_path / "disks" / d / "batches" / "b1.json").is_file() for d in ("d1", "d3"))
    bad |= {str(tmp_path / "disks" / d) for d in ("d1", "d3")}
    with pytest.raises(HoardError, match="no disk took batches/b2.json"):
        store.register_batch("b2", {"manifest": manifests[1]})
    assert store.index.get_batch("b2") is None and store.index.get_batch("b1") is not None


def test_descriptor_cache_never_closes_a_descriptor_a_reader_is_using(tmp_path: Path) -> None:
    """One disk, many reader threads, far more shards than the disk keeps descriptors for: a
    descriptor closed under a reader made its pread fail (EBADF) or, once the number was
    reused by another open, return another shard's bytes — either would mark a healthy
    replica bad. Every read must return its own shard's bytes; nothing may leak."""
    from hoardfs.fsd.core.disks import LocalDisk

    disk = LocalDisk("d0", tmp_path, "u0", require_mount=False)
    shards = {}
    for i in range(300):  # more than MAX_FDS (256)
        hexid = hashlib.sha256(b"%d" % i).hexdigest()[:32]
        path = disk.path(hexid, True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(hexid.encode()).digest() * 512)  # 16 KiB, unique per shard
        shards[hexid] = path.read_bytes()
    before = len(os.listdir("/proc/self/fd"))
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                hexid = rng.choice(list(shards))
                off = rng.randrange(0, 16 << 10, 32)
                n = rng.randrange(1, 1024)
                read = disk.read_exact if rng.random() < 0.5 else disk.read_at
                got = read(hexid, off, n)
                assert got == shards[hexid][off:off + n], f"shard {hexid}: wrong bytes"
                if rng.random() < 0.01:
                    disk.forget(hexid)  # what seal, replace and delete do, while others read
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(disk._fds) <= disk.MAX_FDS
    disk.close_all()
    assert len(os.listdir("/proc/self/fd")) == before, "descriptors leaked"


def test_a_descriptor_just_opened_is_never_trimmed_under_its_read(tmp_path: Path) -> None:
    """With every cached descriptor busy, the one a read just opened is the only idle one: the
    trim must not close it under that read (EBADF, or another file's bytes)."""
    from hoardfs.fsd.core.disks import LocalDisk

    disk = LocalDisk("d0", tmp_path, "u0", require_mount=False)
    disk.MAX_FDS = 0  # every open trims
    before = len(os.listdir("/proc/self/fd"))
    for i in range(3):
        path = disk.path(f"{i:032x}", True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * 100)
    for i in range(3):
        assert disk.read_at(f"{i:032x}", 10, 5) == bytes([i]) * 5
        assert disk.read_exact(f"{i:032x}", 0, 3) == bytes([i]) * 3
    assert len(disk._fds) == 1  # the last one, idle: the next open trims it
    disk.close_all()
    assert len(os.listdir("/proc/self/fd")) == before


def test_opening_the_store_reads_every_disks_identity_at_once(tmp_path: Path) -> None:
    """A store's open probes its disks at once, not one after another: each identity is a FIFO
    here, and its read waits until the test writes it — all four are found waiting together
    (one after another, the second is read only once the first was written: a loader's cold
    start on four throttled disks spent 0.7 s on them). Then each disk is active, as read."""
    from hoardfs.base import config
    from hoardfs.fsd.core.disks import IDENTITY, DiskState
    from hoardfs.fsd.store import Store
    from tests.helpers import dir_disks_config

    cfg_path = dir_disks_config(tmp_path, 4)
    with Store.open(config.load(cfg_path), init=True) as st:
        st.put_many(make_files(tmp_path / "in", 3))
    idents = {}
    for d in sorted(tmp_path.glob("d[0-9]")):
        idents[d] = (d / IDENTITY).read_bytes()
        (d / IDENTITY).unlink()
        os.mkfifo(d / IDENTITY)
    opened: dict = {}

    def open_store() -> None:
        try:
            with Store.open(config.load(cfg_path), writable=False) as st:
                opened["states"] = {rec.label: rec.state for rec in st.records.values()}
        except BaseException as e:  # (asserted below)
            opened["error"] = e

    t = threading.Thread(target=open_store, daemon=True)
    t.start()
    waiting: dict[Path, int] = {}
    deadline = time.monotonic() + 20
    while len(waiting) < len(idents) and time.monotonic() < deadline and t.is_alive():
        for d in idents:
            if d not in waiting:
                try:  # (ENXIO: nobody has it open to read yet)
                    waiting[d] = os.open(d / IDENTITY, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as e:
                    assert e.errno == errno.ENXIO, e
        time.sleep(0.01)
    at_once = len(waiting)
    for d, fd in waiting.items():
        os.write(fd, idents[d])
        os.close(fd)
    for d in idents:  # (read one after another: each of the rest fed as its read comes)
        if d not in waiting:
            fd = os.open(d / IDENTITY, os.O_WRONLY)
            os.write(fd, idents[d])
            os.close(fd)
    t.join(30)
    assert at_once == len(idents), f"only {at_once} of {len(idents)} identity reads were waiting at once"
    assert "error" not in opened, opened
    assert opened["states"] == {d.name: DiskState.ACTIVE for d in idents}


HUNG_OPEN = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung child shows where (the test's timeout)
from hoardfs.base import config
from hoardfs.fsd.store import Store
print("opening", flush=True)
try:
    with Store.open(config.load(sys.argv[1]), writable=sys.argv[2] == "writable"):
        print("opened", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.services  # (starts a process)
@pytest.mark.parametrize("mode", ["read-only", "writable"])
def test_a_ctrl_c_stops_an_open_whose_disk_identity_hangs(tmp_path: Path, mode: str) -> None:
    """A disk whose identity read never returns (a FIFO nobody writes, as a hung disk or mount):
    Ctrl-C stops the store's open at once, read-only or writable — the identities read all at
    once are read on threads neither the interrupt nor the interpreter's exit waits for (a
    pool's were joined by both: the process hung)."""
    import subprocess
    import sys

    from hoardfs.base import config
    from hoardfs.fsd.core.disks import IDENTITY
    from hoardfs.fsd.store import Store
    from tests.helpers import dir_disks_config
    from tests.terminal import as_foreground

    cfg_path = dir_disks_config(tmp_path, 3)
    with Store.open(config.load(cfg_path), init=True):
        pass
    (tmp_path / "d1" / IDENTITY).unlink()
    os.mkfifo(tmp_path / "d1" / IDENTITY)
    proc = subprocess.Popen([sys.executable, "-c", HUNG_OPEN, str(cfg_path), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground)  # (Ctrl-C's target)
    try:
        deadline = time.monotonic() + 60
        while not _waits_on_a_fifo(proc.pid):  # (its identity read is waiting for a writer)
            assert proc.poll() is None and time.monotonic() < deadline, "the open never read the identity"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack, on its stderr
            time.sleep(1)
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the open did not end within 20 s of SIGINT:\n{out}\n{err}") from None
    finally:
        proc.kill()
    assert "interrupted" in out and "opened" not in out, out + err


def _waits_on_a_fifo(pid: int) -> bool:
    """Whether a thread of process `pid` is opening a FIFO no one writes (its kernel wait)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            if (task / "wchan").read_text().strip() == "wait_for_partner":
                return True
    return False
