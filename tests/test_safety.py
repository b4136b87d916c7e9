"""Regression tests that try to lose acknowledged objects (issue W2-S): recovery with a corrupt
replica, delete racing ingest, gc racing put, lost shard-metadata updates, the store locks,
the SSD identity, the repair queue. Real files on directory disks; races in real processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fsd.core import shardfmt as fmt
from fsd.base import config
from fsd.base.errors import HoardError
from fsd.maintenance.deletion import drop_batch
from fsd.maintenance.gc import gc
from fsd.core.index import Index
from fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_store import check_store

REPO = Path(__file__).resolve().parent.parent

DIE_BEFORE_SEAL = """
import os, sys
from fsd.base import config
from fsd.store import Store
from fsd.io.writer import ShardWriter
ShardWriter.seal = lambda self: os._exit(9)  # the process dies after its last commit, before sealing
paths = open(sys.argv[2]).read().split()
store = Store.open(config.load(sys.argv[1]))
store.put_many(paths)
"""


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _died_before_seal(tmp_path: Path, disks: int, n: int, seed: int, hi: int):
    """A store whose writer committed `n` files into one shard and died before sealing it:
    (config, the files, the open shard's metadata, the index's objects)."""
    cfg = config.load(dir_disks_config(tmp_path, disks, shard_size_mb=64))
    Store.open(cfg, init=True).close()
    files = make_files(tmp_path / "in", n, seed=seed, lo=2000, hi=hi)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    child = _run_child(DIE_BEFORE_SEAL, str(cfg.source), str(listing))
    assert child.returncode == 9, child.stderr
    idx = Index(cfg.index_dir)
    [meta] = [m for m in idx.iter_shards() if not m.sealed]
    objects = dict(idx.iter_objects())
    idx.close()
    return cfg, files, meta, objects


def _register(store: Store, batch_id: str, shas: list[str]) -> None:
    body = json.dumps({"batch_id": batch_id, "files": [{"path": f"f{i}", "sha256": h, "size": 0}
                                                       for i, h in enumerate(shas)]}).encode()
    put = store.put_bytes(body)
    store.register_batch(batch_id, {"source": "test", "manifest": put.sha256, "files": len(shas), "bytes": 0})


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"set aside to .*verified records end at", level="WARNING")
def test_recovery_keeps_the_healthy_replica(tmp_path: Path) -> None:
    """200 committed files, the writer dies before sealing, one bit flips on the second replica:
    recovery keeps the good replica whole (all 200 readable), sets the bad one aside (renamed,
    not cut) and the replicator brings the shard back to its target."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 3, 200, 11, 20000)
    assert len(objects) == 200 and len(meta.replicas) == 2
    with Store.open(cfg, writable=False) as store:
        second = store.disks[meta.replicas[1]]
        victim = second.find(meta.hex)
        victim_bytes = victim.stat().st_size
    locs = sorted(loc.offset for loc in objects.values())
    _flip_byte(victim, locs[48] + 10)  # inside the payload of the 49th record
    with Store.open(cfg) as store:  # a writer: recovery runs
        fresh = store.index.get_shard(meta.shard_id)
        assert fresh.sealed and fresh.replicas == [meta.replicas[0]]
        for f in files:
            data = f.read_bytes()
            assert store.get(hashlib.sha256(data).hexdigest()) == data
        aside = list((second.root / "orphans").iterdir())
        assert len(aside) == 1 and aside[0].stat().st_size == victim_bytes  # renamed whole, not cut
        assert not victim.exists()
        from fsd.io.replicate import replicate_once

        replicate_once(store, rate_mb_s=None)
        assert len(store.index.get_shard(meta.shard_id).replicas) == 2
        assert check_store(store) == 200
    with Store.open(cfg) as store:
        assert not [e for e in store.index.recent_events(50) if e["kind"] == "recovered_shard"][1:]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"no replica holds all .* indexed bytes", level="ERROR")
@pytest.mark.expect_log(r"disk d\d: read error on shard .*payload checksum mismatch", level="WARNING")
def test_recovery_cuts_nothing_when_no_replica_is_whole(tmp_path: Path) -> None:
    """Both replicas damaged (at different records): nothing is truncated or moved, the shard
    stays open, the event names it, and the intact records stay readable by offset."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 2, 100, 12, 8000)
    offsets = sorted(loc.offset for loc in objects.values())
    paths = [tmp_path / f"d{i}" / "shards" / meta.hex[-2:] / f"{meta.hex}.open" for i in range(2)]
    sizes = [p.stat().st_size for p in paths]
    _flip_byte(paths[0], offsets[10] + 5)
    _flip_byte(paths[1], offsets[70] + 5)
    with Store.open(cfg) as store:
        assert not store.index.get_shard(meta.shard_id).sealed
        assert [p.stat().st_size for p in paths] == sizes
        assert any(e["kind"] == "recovery_incomplete" for e in store.index.recent_events(20))
        good = [f.read_bytes() for f in files]
        assert all(store.get(hashlib.sha256(d).hexdigest()) == d for d in good)  # each from a good copy
        status = store.status()
        assert status["open_without_writer"] == [meta.hex]
        assert status["recovery_incomplete"][0]["shard"] == meta.hex
    from jobs.health import collect

    problems = [p for p in collect(cfg)["problems"] if p.startswith("store:")]
    assert any("open shards have no writer left" in p for p in problems), problems
    assert any("replicas were found bad" in p for p in problems), problems


def test_delete_during_ingest_keeps_the_pinned_objects(store_factory, tmp_path: Path) -> None:
    """Batch C stores X ("existing": batch A has it) and pins it; A is deleted before C's
    manifest exists; gc must keep X — and still keeps it once C's manifest replaced the pin."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 40, seed=13)
    a = store.put_many(files)
    _register(store, "A", [r.sha256 for r in a])
    c = store.put_many(files[:5])  # batch C's store step
    assert {r.status for r in c} == {"existing"}
    store.pin("ingest-C", [r.sha256 for r in c], "ingest of C")
    tombstoned, _shared = drop_batch(store, "A")
    assert tombstoned == 41
    rep = gc(store, threshold=0.99)
    assert rep.objects_dropped == 36  # A's other files and its manifest
    for r in c:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    _register(store, "C", [r.sha256 for r in c])  # the package step
    store.unpin("ingest-C")
    gc(store, threshold=0.99)
    assert all(hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256 for r in c)
    assert check_store(store) == 5 + 1 + 0  # C's files and C's manifest


def test_put_during_gc_swap_keeps_the_object(store_factory, tmp_path: Path) -> None:
    """An object tombstoned when gc planned, stored again before the swap: the swap sees the
    cleared tombstone in its own transaction and keeps the shard; put's "existing" holds."""
    from fsd.maintenance import gc as gcmod

    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 30, seed=14)
    res = store.put_many(files)
    _register(store, "A", [r.sha256 for r in res])
    drop_batch(store, "A")
    dead = store.index.marked(store.index.deleted)
    items = gcmod.plan(store, 0.99, dead)
    moved, _ = gcmod._copy_live(store, items[0][0].klass, items, dead)
    again = store.put_many(files[:3])  # a writer acknowledges three of them again
    assert {r.status for r in again} == {"existing"}
    done, kept, dropped = gcmod._swap(store, items, moved, set())
    assert kept >= 1
    gcmod._finish_retired(store)
    for r in again:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    check_store(store)


RACER_INGEST = """
import json, sys, hashlib
from pathlib import Path
from fsd.base import config
from fsd.store import Store
cfg = config.load(sys.argv[1]); files = sys.argv[3:]; acks = open(sys.argv[2], "a")
for k in range(int(8)):
    with Store.open(cfg) as store:
        res = store.put_many(files)
        shas = [r.sha256 for r in res]
        store.pin(f"ingest-b{k}", shas, "race")
    with Store.open(cfg) as store:
        body = json.dumps({"files": [{"path": f"f{i}", "sha256": h, "size": 0} for i, h in enumerate(shas)]}).encode()
        put = store.put_bytes(body)
        store.register_batch(f"b{k}", {"source": "t", "manifest": put.sha256, "files": len(shas), "bytes": 0})
        store.unpin(f"ingest-b{k}")
    acks.write(f"b{k}\\n"); acks.flush(); os_fsync = __import__("os").fsync(acks.fileno())
"""

RACER_DELETE = """
import sys, time
from fsd.base import config
from fsd.maintenance.deletion import drop_batch
from fsd.maintenance.gc import gc
from fsd.store import Store
cfg = config.load(sys.argv[1])
deadline = time.monotonic() + 60
k = 0
while k < 7 and time.monotonic() < deadline:
    with Store.open(cfg) as store:
        if store.index.get_batch(f"b{k}") is None:
            time.sleep(0.01); continue
        drop_batch(store, f"b{k}")
        gc(store, threshold=0.99, wait_s=30)
    k += 1
print(k)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_ingest_racing_delete_and_gc_loses_nothing(tmp_path: Path) -> None:
    """One process ingests the same files as batch after batch (store, pin, manifest, unpin);
    another deletes each batch as soon as it appears and runs gc. Every file of the batch
    still registered at the end reads back."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    cfg = config.load(cfg_path)
    Store.open(cfg, init=True).close()
    files = [str(p) for p in make_files(tmp_path / "in", 60, seed=15)]
    acks = tmp_path / "acks.txt"
    ing = subprocess.Popen([sys.executable, "-c", RACER_INGEST, str(cfg_path), str(acks), *files], cwd=REPO,
                           stderr=subprocess.PIPE, text=True)
    dele = subprocess.Popen([sys.executable, "-c", RACER_DELETE, str(cfg_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, ierr = ing.communicate(timeout=180)
    dout, derr = dele.communicate(timeout=180)
    assert ing.returncode == 0, ierr
    assert dele.returncode == 0, derr
    assert int(dout.strip()) == 7
    with Store.open(cfg) as store:
        assert store.index.get_batch("b7") is not None
        for f in files:
            data = Path(f).read_bytes()
            assert store.get(hashlib.sha256(data).hexdigest()) == data
        check_store(store)


HOLD_STORE = """
import sys, time
from fsd.base import config
from fsd.store import Store
store = Store.open(config.load(sys.argv[1]), what="a test writer")
print("open", flush=True)
time.sleep(60)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_index_rebuild_and_gc_refused_while_a_writer_runs(tmp_path: Path) -> None:
    """`hoard index rebuild` refuses (exit 3) while another process holds the store, naming its
    pid and command; so does a second maintenance job while gc holds the maintenance lock."""
    from tests.test_cli import hoard

    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        store.put_many(make_files(tmp_path / "in", 20, seed=16))
    child = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(cfg_path)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        res = hoard("--config", str(cfg_path), "index", "rebuild")
        assert res.returncode == 3, res.stderr
        assert f"pid {child.pid}" in res.stderr and "a test writer" in res.stderr
        assert "Traceback" not in res.stderr
        res = hoard("--config", str(cfg_path), "index", "restore")
        assert res.returncode == 3 and f"pid {child.pid}" in res.stderr
    finally:
        child.kill()
        child.wait()
    res = hoard("--config", str(cfg_path), "index", "rebuild")
    assert res.returncode == 0, res.stderr
    with Store.open(config.load(cfg_path)) as store:
        with store.maintenance("gc"):
            from fsd.core import storelock

            other = subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg_path), "replicate"], cwd=REPO,
                                   capture_output=True, text=True)
            assert other.returncode == 3, other.stderr
            assert f"pid {os.getpid()}" in other.stderr and "maintenance.lock" in other.stderr
            assert storelock.holders(Path(store.cfg.index_dir.parent), storelock.MAINTENANCE) == []


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
    from fsd.io.replicate import ShardGone, _copy_one

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
    from fsd.io.replica import check_replica
    from fsd.io.replicate import replicate_once

    store = store_factory(n_disks=2, caps=None)
    [res] = store.put_many(make_files(tmp_path / "in", 1, seed=19))
    store.put_many([])
    loc = store.index.lookup(bytes.fromhex(res.sha256))
    meta = store.index.get_shard(loc.shard_id)
    first = store.replica_order(meta)[0]
    _flip_byte(first.find(meta.hex), loc.offset + 3)
    first.forget(meta.hex)
    assert hashlib.sha256(store.get(res.sha256)).hexdigest() == res.sha256
    assert [(sid, u) for sid, u, _ in store.index.pending_repairs()] == [(meta.shard_id, first.uuid)]
    rep = replicate_once(store, rate_mb_s=None)
    assert rep.repaired == 1 and store.index.pending_repairs() == []
    check_replica(first, store.index.get_shard(meta.shard_id))


def test_ssd_not_mounted_is_refused_before_any_write(tmp_path: Path) -> None:
    """No SSD identity and no index: the store refuses (exit 3) and creates nothing; an index
    belonging to another SSD is refused; a disk holding shards an empty index does not know is
    refused (a lost index must be restored or rebuilt, not silently started afresh)."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with pytest.raises(HoardError) as e:
        Store.open(cfg)
    assert e.value.exit_code == 3 and "not mounted" in e.value.message
    assert not cfg.ssd.root.exists()
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 5, seed=20))
    ident = cfg.ssd.root / ".hoard-ssd.json"
    doc = json.loads(ident.read_text())
    ident.write_text(json.dumps(doc | {"uuid": "another-ssd"}))
    with pytest.raises(HoardError) as e:
        Store.open(cfg)
    assert e.value.exit_code == 3 and "belongs to SSD" in e.value.message
    ident.write_text(json.dumps(doc))
    os.rename(cfg.index_dir, tmp_path / "lost-index")  # the SSD died; a new one is put in
    with pytest.raises(HoardError) as e:
        Store.open(cfg, init=True)
    assert "holds shards" in e.value.message and "hoard index rebuild" in e.value.message
    from fsd.maintenance.reindex import rebuild_index

    assert rebuild_index(cfg).objects == 5
    with Store.open(cfg) as store:
        assert check_store(store) == 5


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


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_sealed_record_is_never_cut_by_recovery_of_a_sealed_replica(tmp_path: Path) -> None:
    """A crash between the seal rename and the index update: the renamed replica's footer
    decides, the other (still open) replica is sealed to match, nothing is lost."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 2, 50, 21, 64000)
    records = [fmt.RecordInfo(sha, loc.offset, loc.length, b"") for sha, loc in
               sorted(objects.items(), key=lambda kv: kv[1].offset)]
    p0 = tmp_path / "d0" / "shards" / meta.hex[-2:] / f"{meta.hex}.open"
    if not p0.exists():
        p0 = tmp_path / "d1" / "shards" / meta.hex[-2:] / f"{meta.hex}.open"
    end = records[-1].end
    with open(p0, "r+b") as f:  # what the dead writer's seal had done on this replica
        f.truncate(end)
        f.seek(end)
        f.write(fmt.encode_footer(records, end))
    os.rename(p0, p0.with_suffix(".shard"))
    with Store.open(cfg) as store:
        assert store.index.get_shard(meta.shard_id).sealed
        assert len(store.index.get_shard(meta.shard_id).replicas) == 2
        assert check_store(store) == 50


def test_gc_keeps_what_the_database_references(store_factory, tmp_path: Path, pg) -> None:
    """A tombstoned object that a live database node still names is kept by gc (and its
    tombstone cleared); one whose node is deleted and held by no batch is freed."""
    from sql.deletion import referenced
    from sql.migrate import migrate

    migrate(pg)
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "in", 20, seed=22))
    _register(store, "A", [r.sha256 for r in res])
    drop_batch(store, "A")
    keep, free = bytes.fromhex(res[0].sha256), bytes.fromhex(res[1].sha256)
    for sha, deleted in ((keep, False), (free, True)):
        (node_id,) = pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true) "
                                "RETURNING node_id", [sha]).fetchone()
        pg.execute("INSERT INTO physical_content (node_id, size, is_deleted) VALUES (%s, 1, %s)", [node_id, deleted])
    rep = gc(store, threshold=0.99, roots=lambda shas: referenced(pg, shas))
    assert rep.objects_dropped == 20  # 19 files and the manifest
    assert hashlib.sha256(store.get(keep.hex())).digest() == keep
    assert store.index.lookup(free) is None
    assert store.index.marked(store.index.deleted) == set()


def test_a_reader_that_looked_up_before_a_gc_swap_still_reads(store_factory, tmp_path: Path) -> None:
    """A read whose lookup came just before gc re-pointed the object and deleted the old shard
    finds every replica file gone, looks the object up once more and reads the new copy —
    no error, no repair queued, no disk blamed."""
    from fsd.maintenance import gc as gcmod

    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "a", 30, seed=23))
    _register(store, "A", [r.sha256 for r in res[1:]])
    _register(store, "B", [res[0].sha256])
    drop_batch(store, "A")
    kept = bytes.fromhex(res[0].sha256)
    old = store.index.lookup(kept)
    calls = []

    def read(disk, meta, loc):
        if not calls:  # the gc happens between this reader's lookup and its read
            dead = store.index.marked(store.index.deleted)
            items = gcmod.plan(store, 0.99, dead)
            moved, _ = gcmod._copy_live(store, items[0][0].klass, items, dead)
            gcmod._swap(store, items, moved, set())
            gcmod._finish_retired(store)
        calls.append(loc)
        return store._read_record(disk, meta.hex, loc.offset, loc.length, kept)

    data = store.from_replicas(kept, read)
    assert hashlib.sha256(data).digest() == kept
    assert calls[0] == old and calls[-1] != old and store.index.lookup(kept) == calls[-1]
    assert store.index.pending_repairs() == []
    assert not [e for e in store.index.recent_events(50) if e["kind"].endswith("_error")]


def _store_on_a_small_ssd(lab_factory, tmp_path: Path, n: int, seed: int) -> tuple[Path, Path, list[str]]:
    """Two directory disks, the index on a 24 MB lab SSD, `n` files put by the CLI: (the
    config, the SSD's mount point, the digests the put reported)."""
    from tests.helpers import write_config
    from tests.lab import DiskProfile
    from tests.test_cli import hoard

    lab = lab_factory((DiskProfile("ssd", 24, 0, 0, 0),))
    disks = [(f"d{i}", tmp_path / f"d{i}", None) for i in range(2)]
    for _, p, _ in disks:
        p.mkdir()
    ssd = lab.disks["ssd"].mountpoint
    cfg_path = write_config(tmp_path, disks, ssd=ssd, shard_size_mb=1)
    Store.open(config.load(cfg_path), init=True).close()
    put = hoard("--config", str(cfg_path), "put", str(make_files(tmp_path / "a", n, seed=seed)[0].parent))
    assert put.returncode == 0, put.stderr
    return cfg_path, ssd, [line.split()[0] for line in put.stdout.splitlines()]


def _all_read_back(cfg_path: Path, stored: list[str]) -> None:
    with Store.open(config.load(cfg_path)) as store:
        for sha in stored:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        check_store(store)


def test_a_full_ssd_is_one_line_and_loses_nothing(lab_factory, tmp_path: Path) -> None:
    """The SSD under the index fills up during a put: one line saying the SSD is full (exit 6),
    no traceback, and every object the run reported as stored reads back afterwards."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 500, seed=24)
    filler = ssd / "filler"
    st = os.statvfs(filler.parent)
    with open(filler, "wb") as f:  # leave ~200 KB: the index soon cannot grow
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))
    make_files(tmp_path / "b", 4000, seed=25, lo=100, hi=400)
    res = hoard("--config", str(cfg_path), "put", str(tmp_path / "b"))
    assert res.returncode == 6, res.stdout[-500:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "the SSD is full" in res.stderr
    stored += [line.split()[0] for line in res.stdout.splitlines()]
    filler.unlink()
    assert len(stored) >= 500
    _all_read_back(cfg_path, stored)


def test_an_index_rebuild_on_a_full_ssd_is_one_line_and_changes_nothing(lab_factory, tmp_path: Path) -> None:
    """`hoard index rebuild` with no room left on the SSD for the new index: one line saying
    the SSD is full (exit 6), no traceback, and the index in use is the one from before."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 300, seed=26)
    filler = ssd / "filler"
    with open(filler, "wb") as f:  # every block the SSD has left
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    res = hoard("--config", str(cfg_path), "index", "rebuild")
    assert res.returncode == 6, res.stdout[-500:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "the SSD is full" in res.stderr, res.stderr
    assert not list(ssd.glob("**/*.rebuild")), "the half-built index was left behind"
    filler.unlink()
    assert len(stored) == 300
    _all_read_back(cfg_path, stored)


def _fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem under `path` up to `leave` bytes free (every block when 0); the filler."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if leave:
            st = os.statvfs(path)
            os.write(fd, b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        else:  # smaller and smaller writes, down to a byte: not even a part of a block is left
            chunk = 1 << 16
            while chunk:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    chunk //= 2
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def test_commands_on_a_full_ssd_are_one_line(lab_factory, tmp_path: Path) -> None:
    """With no block left on the SSD, every command that takes a store lock (its holder file)
    or spools on the SSD says so in one line (exit 6) naming the SSD and the next step; then,
    with space back, the same commands run and nothing was lost."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 60, seed=27)
    (tmp_path / "v.txt").write_text("".join(f"{sha}  f/{i}.bin\n" for i, sha in enumerate(stored)))
    filler = _fill(ssd)
    commands = [("gc", "--no-database", "--wait", "0"), ("replicate",), ("verify", "--repair"),
                ("view", "add", "v", str(tmp_path / "v.txt"))]
    for args in commands:
        res = hoard("--config", str(cfg_path), *args)
        assert res.returncode == 6, (args, res.stderr[-2000:])
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, (args, res.stderr)
        assert "the SSD is full" in lines[0] and str(ssd) in lines[0] and "`hoard zones`" in lines[0], lines
    filler.unlink()
    for args in commands:
        res = hoard("--config", str(cfg_path), *args)
        assert res.returncode == 0, (args, res.stderr[-2000:])
    _all_read_back(cfg_path, stored)


def test_view_add_whose_spool_fills_the_ssd_is_one_line(lab_factory, tmp_path: Path) -> None:
    """`hoard view add` with room for its lock but not for its spooled manifest: one line
    naming the SSD (exit 6), no traceback, no view defined and no spool left behind."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 20, seed=28)
    # rows of long paths: the spool outgrows the room left well before the manifest is read
    long = "d" * 200
    (tmp_path / "v.txt").write_text("".join(f"{stored[i % len(stored)]}  {long}/{j}/{i}.bin\n"
                                            for j in range(30) for i in range(400)))
    filler = _fill(ssd, leave=256 << 10)
    res = hoard("--config", str(cfg_path), "view", "add", "v", str(tmp_path / "v.txt"))
    filler.unlink()
    assert res.returncode == 6, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "the SSD is full" in lines[0] and str(ssd) in lines[0], res.stderr
    assert list((ssd / "state" / "tmp").glob("*")) == []
    listing = hoard("--config", str(cfg_path), "view", "list", "--json")
    assert json.loads(listing.stdout) == {}
