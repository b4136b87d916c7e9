"""Deletion (type A hide, type B drop a batch) and `hoard gc` compaction, on real files and lab disks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.records import ObjectNotFound
from hoardfs.fsd.maintenance.deletion import drop_batch, hide, release
from hoardfs.fsd.maintenance.gc import GcNoSpace, gc
from hoardfs.fsd.store import Store
from tests.helpers import make_files, write_config


def _register(store: Store, batch_id: str, results) -> None:
    """A batch manifest the way UA_1 writes one (files with path, sha256, size)."""
    body = json.dumps({"batch_id": batch_id, "files": [
        {"path": Path(r.path).name, "sha256": r.sha256, "size": r.size} for r in results]}).encode()
    put = store.put_bytes(body)
    store.register_batch(batch_id, {"source": "test", "manifest": put.sha256, "files": len(results),
                                    "bytes": sum(r.size for r in results)})


def _retired(store: Store) -> dict[bytes, dict]:
    with store.index.env.begin(db=store.index.retired) as txn:
        return {bytes(k): json.loads(v) for k, v in txn.cursor()}


def _shard_bytes(store: Store) -> int:
    return sum(p.stat().st_size for d in store.disks.values() for p in (d.root / "shards").rglob("*.shard"))


def _check_all(store: Store, results) -> None:
    for r in results:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256


def test_drop_batch_then_gc_frees_only_unshared(store_factory, tmp_path: Path) -> None:
    """Dropping batch A tombstones what only A holds; gc copies the live records, re-points the
    index and deletes the old shards: B (sharing some of A) reads back whole, A's own files are gone."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=2)
    a = store.put_many(make_files(tmp_path / "a", 60, seed=1))
    b = store.put_many(make_files(tmp_path / "b", 30, seed=2) + [Path(r.path) for r in a[:5]])
    _register(store, "batch-a", a)
    _register(store, "batch-b", b)
    before = _shard_bytes(store)
    dropped, shared = drop_batch(store, "batch-a")
    assert (dropped, shared) == (56, 5)  # 55 files + the manifest; 5 files B also names
    rep = gc(store, threshold=0.5)
    assert rep.compacted > 0 and rep.objects_dropped == 56 and rep.kept_back == 0
    _check_all(store, b)
    for r in a[5:]:
        with pytest.raises(ObjectNotFound):
            store.get(r.sha256)
    assert _shard_bytes(store) < before - 0.6 * sum(r.size for r in a[5:]) * 2
    assert store.index.marked(store.index.deleted) == set() and store.index.marked(store.index.retired) == set()
    assert store.index.get_batch("batch-a") is None
    # what an index rebuild finds on the disks: a removal record, newer than the old pointer
    assert all(json.loads((d.root / "batches" / "batch-a.json").read_text())["removed"] for d in store.disks.values())
    again = gc(store, threshold=0.5)
    assert again.compacted == 0 and again.bytes_freed == 0


def test_stored_again_after_delete_is_kept(store_factory, tmp_path: Path) -> None:
    """A tombstoned object that is stored again before gc runs is kept (its tombstone cleared)."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 40, seed=3)
    a = store.put_many(files)
    _register(store, "batch-a", a)
    drop_batch(store, "batch-a")
    again = store.put_many(files[:10])
    assert all(r.status == "existing" for r in again)
    gc(store, threshold=0.9)
    _check_all(store, a[:10])
    with pytest.raises(ObjectNotFound):
        store.get(a[20].sha256)


def test_gc_refuses_without_room(tmp_path: Path) -> None:
    """With too little free space to copy the live records first, gc refuses naming the sizes
    and changes nothing."""
    disks = [(f"d{i}", tmp_path / f"d{i}", 0.0035) for i in range(2)]
    for _, p, _ in disks:
        p.mkdir()
    cfg = config.load(write_config(tmp_path, disks, shard_size_mb=1, copy_of_raw=2))
    with Store.open(cfg, init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 100, seed=4, lo=20_000, hi=30_000))
        _register(store, "big", res[::2])  # every other file: each shard is half dead, half live
        drop_batch(store, "big")
        with pytest.raises(GcNoSpace, match=r"gc needs room for .* of copies .* cannot get their copies on distinct disks"):
            gc(store, threshold=0.9)
        assert len(store.index.marked(store.index.deleted)) == 51
        _check_all(store, res)
        assert not any((d.root / "tmp" / "gc-reserve").exists() for d in store.disks.values())


def test_type_a_hides_but_keeps_bytes(store_factory, tmp_path: Path) -> None:
    """Type A marks objects hidden; gc does not touch them and they still read back."""
    store = store_factory(n_disks=2, caps=None, shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "a", 10, seed=5))
    assert hide(store, [bytes.fromhex(res[0].sha256)], "test") == 1
    assert gc(store, threshold=0.99).objects_dropped == 0
    _check_all(store, res)


def test_kill_during_gc_then_rerun(lab_factory, tmp_path: Path) -> None:
    """kill -9 of `hoard gc` mid-way, then a second run: every live object reads back, the
    dropped ones are gone, and statvfs shows the space free again."""
    from tests.lab import LAB4

    lab = lab_factory(LAB4[:3])
    disks = [(k, d.mountpoint, None) for k, d in lab.disks.items()]
    cfg_path = write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=2, copy_of_raw=2, write_ack=2)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        files = make_files(tmp_path / "in", 900, seed=6, lo=30_000, hi=60_000)
        res = store.put_many(files)
        doomed, kept = [r for k, r in enumerate(res) if k % 3], res[::3]  # every shard is 1/3 live
        _register(store, "doomed", doomed)
        _register(store, "kept", kept)
        drop_batch(store, "doomed")
    free_before = sum(os.statvfs(d.mountpoint).f_bavail * os.statvfs(d.mountpoint).f_frsize
                      for d in lab.disks.values())
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg_path)]
    from tests.lab import drop_caches

    drop_caches()
    proc = subprocess.Popen(lab.wrap(hoard + ["gc", "--threshold", "0.9", "--no-database"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # kill while it copies live records: a new shard is open on some disk
    while not any(True for d in lab.disks.values() for _ in (d.mountpoint / "shards").rglob("*.open")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(hoard + ["gc", "--threshold", "0.9", "--json", "--no-database"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with Store.open(cfg, writable=False) as store:
        _check_all(store, kept)
        for r in doomed[:20]:
            with pytest.raises(ObjectNotFound):
                store.get(r.sha256)
        assert store.index.marked(store.index.retired) == set()
    free_after = sum(os.statvfs(d.mountpoint).f_bavail * os.statvfs(d.mountpoint).f_frsize
                     for d in lab.disks.values())
    assert free_after - free_before > 0.7 * sum(r.size for r in doomed) * 2
    assert not any((d.mountpoint / "tmp" / "gc-reserve").exists() for d in lab.disks.values())


def _swapped_not_deleted(store_factory, tmp_path: Path, seed: int, n_disks: int = 3):
    """A store where gc swapped the index to new shards for a dropped batch and stopped before
    deleting the old replicas (they are listed as retired); returns it and what was stored."""
    from hoardfs.fsd.maintenance import gc as gcmod

    store = store_factory(n_disks=n_disks, caps=None, shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "a", 80, seed=seed))
    _register(store, "a", res[::2])
    drop_batch(store, "a")
    dead = store.index.marked(store.index.deleted)
    items = gcmod.plan(store, 0.9, dead)
    gcmod._swap(store, items, gcmod._copy_live(store, items[0][0].klass, items, dead)[0], set())
    return store, res


def test_crash_between_swap_and_delete_is_finished_next_run(store_factory, tmp_path: Path) -> None:
    """If gc stops after the index swap but before deleting the old replicas, the next run
    deletes them first (the retired list), and nothing the index points at is touched."""
    store, res = _swapped_not_deleted(store_factory, tmp_path, seed=8)
    assert store.index.marked(store.index.retired)
    old_files = [d.root / "shards" for d in store.disks.values()]
    before = sum(1 for root in old_files for _ in root.rglob("*.shard"))
    rep = gc(store, threshold=0.9)
    assert rep.replicas_deleted > 0 and store.index.marked(store.index.retired) == set()
    assert sum(1 for root in old_files for _ in root.rglob("*.shard")) < before
    _check_all(store, res[1::2])



# the disk that drops off is one holding a retired replica: placement decides which
@pytest.mark.expect_log(r"gc: shard \w+ on (d\d) kept for later: .*disk \1: .* has no .hoard-disk.json.*",
                        level="WARNING")
def test_disk_vanishing_between_size_and_delete_keeps_its_retired_replica(store_factory, tmp_path: Path) -> None:
    """The disk drops off after gc read the replica's size and before the
    delete; an unlink on the empty mount point left behind finds nothing, and that must not
    count as deleted (the file came back with the disk as an orphan nobody named, its bytes
    still counted). The replica stays retired; the next gc with the disk back deletes it."""
    from hoardfs.fsd.maintenance import gc as gcmod
    from hoardfs.fsd.maintenance.check import check

    store, res = _swapped_not_deleted(store_factory, tmp_path, seed=9)
    d1 = next(d for d in store.disks.values() if any(d.uuid in doc["replicas"] for doc in _retired(store).values()))
    on_d1 = {sid.hex() for sid, doc in _retired(store).items() if d1.uuid in doc["replicas"]}
    away = d1.root.with_name(f"{d1.label}.away")
    real_size = d1.size

    def size_then_vanish(shard_hex: str) -> int:
        n = real_size(shard_hex)
        if not away.exists():
            d1.root.rename(away)  # the disk drops off right after its first size() …
            d1.root.mkdir()  # … leaving an empty mount point behind
        return n

    d1.size = size_then_vanish
    gcmod._finish_retired(store)
    d1.size = real_size
    left = {sid.hex() for sid, doc in _retired(store).items() if d1.uuid in doc["replicas"]}
    assert left == on_d1, "a replica on the vanished disk was counted as deleted"
    d1.root.rmdir()
    away.rename(d1.root)  # the disk is back
    gc(store, threshold=0.9)
    assert store.index.marked(store.index.retired) == set()
    assert not any(h in p.name for h in on_d1 for p in (d1.root / "shards").rglob("*"))
    report = check(store)
    assert report.ok, report.problems
    _check_all(store, res[1::2])


# the dying disk is whichever holds a retired replica (placement decides), not always d1
@pytest.mark.expect_log(r"gc: shard \w+ on d\d kept for later: .*", level="WARNING")
def test_forgetting_a_dead_disk_releases_its_retired_replicas(store_factory, tmp_path: Path) -> None:
    """A disk that died while gc still had old replicas on it to delete is
    rebuilt and forgotten; its retired replicas must go with it (before, they stayed in the
    retired list for ever and gc tried them on every run)."""
    from hoardfs.fsd.maintenance import gc as gcmod
    from hoardfs.fsd.maintenance.check import check
    from hoardfs.fsd.maintenance.lifecycle import forget
    from hoardfs.fsd.maintenance.rebuild import rebuild

    store, res = _swapped_not_deleted(store_factory, tmp_path, seed=9, n_disks=4)
    # a disk still holding a replica gc retired (which one depends on placement)
    d1 = next(d for d in store.disks.values() if any(d.uuid in doc["replicas"] for doc in _retired(store).values()))
    d1.root.rename(d1.root.with_name(f"{d1.label}.dead"))  # the disk dies
    gcmod._finish_retired(store)
    assert any(doc["replicas"] == [d1.uuid] for doc in _retired(store).values())
    rebuild(store, d1.label)
    # the rebuild moved every live shard off the dead disk: forget releases no live replica (it
    # returns how many it released), only the retired ones gc had left on it
    assert forget(store, d1.label) == 0
    assert not any(d1.uuid in doc["replicas"] for doc in _retired(store).values())
    gc(store, threshold=0.9)
    assert store.index.marked(store.index.retired) == set()
    report = check(store)
    assert report.ok, report.problems
    _check_all(store, res[1::2])

def test_delete_unknown_node_is_refused(hoard_home: Path, pg) -> None:
    """`hoard delete --node` of a sha256 the store does not hold exits 5 naming it and changes
    nothing (a known node given with it is not hidden either)."""
    from hoardfs.sql.migrate import migrate
    from tests.helpers import use_schema

    migrate(pg)
    cfg_path = use_schema(hoard_home, pg)
    for d in config.load(cfg_path).disks:
        d.path.mkdir(parents=True, exist_ok=True)
    with Store.open(config.load(cfg_path), init=True) as store:
        known = store.put_many(make_files(hoard_home / "in", 1))[0].sha256
    ghost = "ab" * 32
    r = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg_path, "delete", "--node", known, "--node", ghost],
                       capture_output=True, text=True)
    assert r.returncode == 5 and f"no object {ghost}" in r.stderr and known not in r.stderr
    with Store.open(config.load(cfg_path), writable=False) as store:
        assert store.index.marked(store.index.hidden) == set()


# the disk that drops off is one holding a retired replica: placement decides which
@pytest.mark.expect_log(r"gc: shard \w+ on (d\d) kept for later: .*disk \1: .* does not exist", level="WARNING")
def test_disk_vanishing_before_delete_keeps_its_retired_replica(store_factory, tmp_path: Path) -> None:
    """Found by the chaos suite: a disk that drops off between gc's swap and its deletes made
    the old replica look deleted already — the index kept counting its bytes and the file
    came back as an orphan with the disk. Now the replica stays retired until the disk is
    back; the next gc deletes it and `hoard check` finds the counts in agreement."""
    from hoardfs.fsd.maintenance import gc as gcmod
    from hoardfs.fsd.maintenance.check import check

    store, res = _swapped_not_deleted(store_factory, tmp_path, seed=9)
    d1 = next(d for d in store.disks.values() if any(d.uuid in doc["replicas"] for doc in _retired(store).values()))
    on_d1 = [sid.hex() for sid, doc in _retired(store).items() if d1.uuid in doc["replicas"]]
    away = d1.root.with_name(f"{d1.label}.away")
    d1.root.rename(away)  # the disk drops off
    gcmod._finish_retired(store)
    assert {sid.hex() for sid, doc in _retired(store).items() if doc["replicas"] == [d1.uuid]} == set(on_d1)
    away.rename(d1.root)  # and comes back
    gc(store, threshold=0.9)
    assert store.index.marked(store.index.retired) == set()
    report = check(store)
    assert report.ok, report.problems
    assert not any(h in p.name for h in on_d1 for p in (d1.root / "shards").rglob("*"))
    _check_all(store, res[1::2])


@pytest.mark.lab
@pytest.mark.expect_log(r"disk g2: write error|disk g2", level="WARNING")
def test_a_disk_vanishing_while_gc_copies_stops_it_with_nothing_lost(lab_factory, tmp_path: Path) -> None:
    """A disk gc writes its compacted shards to drops off mid-copy (lazy unmount): gc stops
    with a message naming the disk (it printed a traceback: chaos seed 388), every live object
    reads back, nothing is freed; with the disk back, gc runs to its end."""
    from hoardfs.base.errors import HoardError
    from tests.lab import DiskProfile

    lab = lab_factory([DiskProfile(f"g{i}", 300, 500, 500, 5000) for i in (1, 2)], throttle=False)
    disks = [(k, d.mountpoint, None) for k, d in lab.disks.items()]
    cfg = config.load(write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=2, copy_of_raw=2, write_ack=2))
    store = Store.open(cfg, init=True)
    res = store.put_many(make_files(tmp_path / "in", 300, seed=8, lo=20_000, hi=40_000))
    doomed, kept = [r for k, r in enumerate(res) if k % 3], res[::3]
    _register(store, "doomed", doomed)
    _register(store, "kept", kept)
    drop_batch(store, "doomed")
    before = _shard_bytes(store)
    gone = []

    def progress(copied: int, total: int) -> None:
        if not gone and copied > 200_000:  # a new shard is being written on both disks
            gone.append(lab.vanish("g2"))

    with pytest.raises(HoardError) as e:
        gc(store, threshold=0.9, progress=progress)
    assert gone and "disk g2" in e.value.message and "Nothing was freed" in e.value.message
    _check_all(store, kept)
    assert store.index.marked(store.index.retired) == set()
    store.close()
    lab.reappear("g2")  # (a vanished disk is not marked failed: back, it serves again)
    with Store.open(cfg) as store:
        rep = gc(store, threshold=0.9)
        assert rep.objects_dropped >= len(doomed)
        _check_all(store, kept)
        assert _shard_bytes(store) < before


def test_a_whole_shard_of_small_objects_is_not_compacted_again(store_factory, tmp_path: Path) -> None:
    """The live share is measured against what the records can hold, not the shard's size:
    each record's framing (its header and footer entry, 128 bytes) made a shard of 1 KiB
    objects ~89 % live with nothing deleted, and every `gc --threshold 0.95` rewrote it again."""
    store = store_factory(n_disks=2, caps=None, shard_size_mb=1)
    results = store.put_many(make_files(tmp_path / "in", 1500, seed=4, lo=1024, hi=2048))
    sealed = [m for m in store.index.iter_shards() if m.sealed]
    assert sealed
    assert gc(store, threshold=1.0).compacted == 0  # nothing is dead: nothing to gain
    victim = next(sha for sha, loc in store.index.iter_objects() if loc.shard_id == sealed[0].shard_id)
    release(store, [victim], "test")
    rep = gc(store, threshold=1.0)
    assert rep.compacted == 1 and rep.objects_dropped == 1
    with pytest.raises(ObjectNotFound):
        store.get(victim.hex())
    _check_all(store, [r for r in results if r.sha256 != victim.hex()])
