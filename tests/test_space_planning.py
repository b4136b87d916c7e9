"""gc, replicate and rebuild place their copies on paper first — on *distinct* disks, not
in the sum of free space — and refuse (or report once) before writing anything."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.fsd.core.placement import Candidate, Need, NoSpace, simulate
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import GcNoSpace, gc
from hoardfs.fsd.maintenance.rebuild import rebuild
from tests.helpers import make_files


def test_simulate_needs_distinct_disks() -> None:
    """Plenty of space in total but on one disk: three copies of a shard do not fit."""
    cands = [Candidate("a", "a", 100), Candidate("b", "b", 5), Candidate("c", "c", 5)]
    taken, unplaced = simulate(cands, [Need(10, 3)])
    assert unplaced and taken == {}
    taken, unplaced = simulate(cands, [Need(5, 3), Need(10, 1, frozenset({"b"}))])
    assert not unplaced and taken == {"a": 15, "b": 5, "c": 5}


def _fill(store, tmp_path: Path, n: int, seed: int):
    res = store.put_many(make_files(tmp_path / f"in{seed}", n, seed=seed, lo=20_000, hi=30_000))
    body = json.dumps({"files": [{"path": str(i), "sha256": r.sha256, "size": r.size}
                                 for i, r in enumerate(res[::2])]}).encode()
    put = store.put_bytes(body)
    store.register_batch("b", {"source": "t", "manifest": put.sha256, "files": 1, "bytes": 1})
    return res


def _room(store, label: str, nbytes: int) -> None:
    """Leave `label` exactly `nbytes` of room (its capacity, as `disks[].capacity_gb` sets it)."""
    disk = next(d for d in store.disks.values() if d.label == label)
    disk.capacity_bytes = store._disk_record(disk.uuid).used_bytes + nbytes


def test_gc_refuses_up_front_when_copies_do_not_fit_on_distinct_disks(store_factory, tmp_path: Path) -> None:
    """copy_of_raw = 3 with one roomy and two nearly full disks: the summed free space would
    do, three distinct disks would not — gc refuses before writing, names every disk's room,
    and no disk is reported as failing."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=3)
    _fill(store, tmp_path, 60, 1)
    drop_batch(store, "b")
    for label in ("d2", "d3"):
        _room(store, label, (1 << 20) + 300_000)  # one shard of slack + less than the live copy
    before = {d.label: sorted(p.name for p in (d.root / "shards").rglob("*")) for d in store.disks.values()}
    with pytest.raises(GcNoSpace, match=r"cannot get their copies on distinct disks.*d2 .*d3 .*nothing was changed"):
        gc(store, threshold=1.0)
    assert {d.label: sorted(p.name for p in (d.root / "shards").rglob("*")) for d in store.disks.values()} == before
    assert not [e for e in store.index.recent_events(50) if e["kind"].endswith("_error")]
    assert not any((d.root / "tmp" / "gc-reserve").exists() for d in store.disks.values())


@pytest.mark.expect_log(r"replication: \d+ shards cannot get their copies on distinct disks", level="WARNING")
def test_replicate_reports_what_has_no_room_once(store_factory, tmp_path: Path) -> None:
    """Shards that cannot get their missing replica are reported once (one warning, counted
    in the report), the one that fits is copied; no disk is called faulty."""
    # one shard open at a time: the batch makes three full shards (open ones all on d1 and d2
    # would share its groups, each taking a few)
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=3, open_shards=1)
    _room(store, "d3", 0)  # everything lands on d1 and d2
    store.put_many(make_files(tmp_path / "a", 100, seed=2, lo=20_000, hi=30_000))
    assert len(list(store.index.iter_shards())) == 3
    _room(store, "d3", 1_100_000)  # room for the biggest shard only
    rep = replicate_once(store, rate_mb_s=None)
    assert rep.copied_shards == 1 and rep.no_room == 2 and rep.remaining_shards == 2
    assert "d3 " in rep.no_room_detail
    assert not [e for e in store.index.recent_events(50) if e["kind"].endswith("_error")]


def test_rebuild_refuses_before_marking_the_disk_failed(store_factory, tmp_path: Path) -> None:
    """A rebuild whose shards do not fit elsewhere is refused before it changes anything: the
    disk stays active."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=2)
    store.put_many(make_files(tmp_path / "a", 100, seed=4, lo=20_000, hi=30_000))
    # (placement is random: the disk to lose is one that holds shards, not always d1)
    held = Counter(store.disks[u].label for m in store.index.iter_shards() for u in m.replicas)
    lost = held.most_common(1)[0][0]
    for label in {"d1", "d2", "d3"} - {lost}:
        _room(store, label, 0)
    with pytest.raises(NoSpace, match="rebuild refused before it started.*was not marked failed"):
        rebuild(store, lost)
    assert {r.label: r.state.value for r in store.index.get_disks()}[lost] == "active"
