"""The index's shard metadata, repair queue and events under concurrent updates: no update of
a shard is lost, the replicator does not bring back a shard gc retired, a replica a reader
found bad is repaired, old events are pruned."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import flip_byte, make_files


def test_shard_updates_are_not_lost(store_factory, tmp_path: Path) -> None:
    """Read-modify-write of shard metadata is one transaction: 4 threads × 50 updates of the
    same shard all land (the old get/put pattern lost most of them)."""
    store = store_factory(n_disks=2, caps=None)
    store.put_many(make_files(tmp_path / "in", 3, seed=17))
    [meta] = list(store.index.iter_shards())

    def bump(m) -> None:
        m.records += 1

    def worker() -> None:
        for _ in range(50):
            store.index.update_shard(meta.shard_id, bump)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.index.get_shard(meta.shard_id).records == meta.records + 200


def test_replicate_does_not_resurrect_a_retired_shard(store_factory, tmp_path: Path) -> None:
    """A shard gc retires while the replicator copies it: the copy is removed, the index does
    not get the shard back, and nothing is counted twice."""
    from hoardfs.fsd.io.replicate import ShardGone, _copy_one

    store = store_factory(n_disks=3, caps=None, copy_of_raw=3)
    store.put_many(make_files(tmp_path / "in", 5, seed=18))
    [meta] = list(store.index.iter_shards())
    used = {r.uuid: r.used_bytes for r in store.index.get_disks()}
    with store.index.env.begin(write=True) as txn:  # what gc's swap does to it meanwhile
        txn.put(meta.shard_id, txn.get(meta.shard_id, db=store.index.shards), db=store.index.retired)
        txn.delete(meta.shard_id, db=store.index.shards)
    with pytest.raises(ShardGone):
        _copy_one(store, meta, None)
    assert store.index.get_shard(meta.shard_id) is None
    third = next(u for u in store.disks if u not in meta.replicas)
    assert not store.disks[third].path(meta.hex, True).exists()
    assert {r.uuid: r.used_bytes for r in store.index.get_disks()} == used


@pytest.mark.expect_log(r"disk d\d: read error on shard", level="WARNING")
def test_the_replicator_repairs_what_readers_reported(store_factory, tmp_path: Path) -> None:
    """A reader finds a flipped byte, reads the other replica and queues a repair; the next
    `replicate` re-copies the bad replica from the good one and empties the queue."""
    from hoardfs.fsd.io.replica import check_replica
    from hoardfs.fsd.io.replicate import replicate_once

    store = store_factory(n_disks=2, caps=None)
    [res] = store.put_many(make_files(tmp_path / "in", 1, seed=19))
    store.put_many([])
    loc = store.index.lookup(bytes.fromhex(res.sha256))
    meta = store.index.get_shard(loc.shard_id)
    first = store.replica_order(meta)[0]
    flip_byte(first.find(meta.hex), loc.offset + 3)
    first.forget(meta.hex)
    assert hashlib.sha256(store.get(res.sha256)).hexdigest() == res.sha256
    assert [(sid, u) for sid, u, _ in store.index.pending_repairs()] == [(meta.shard_id, first.uuid)]
    rep = replicate_once(store, rate_mb_s=None)
    assert rep.repaired == 1 and store.index.pending_repairs() == []
    check_replica(first, store.index.get_shard(meta.shard_id))


def test_events_are_pruned(store_factory) -> None:
    """Events beyond the count limit (oldest first) and older than the age limit are dropped."""
    store = store_factory(n_disks=2, caps=None)
    for i in range(30):
        store.index.record_event("test", n=i)
    assert store.index.prune_events(max_count=10) >= 20
    kept = store.index.recent_events(100)
    assert [e["n"] for e in kept if e["kind"] == "test"] == list(range(29, 19, -1))
    time.sleep(0.01)
    assert store.index.prune_events(max_age_s=0.001) == len(kept)
