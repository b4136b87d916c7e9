"""gc and deletion beside the writers try to lose acknowledged objects and fail: a delete
during an ingest, a put during gc's swap, an ingest racing delete and gc in real processes,
what the database references, a reader that looked up before a swap; index rebuild and gc
refused while a writer runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, make_files
from tests.test_store import check_store


def _register(store: Store, batch_id: str, shas: list[str]) -> None:
    body = json.dumps({"batch_id": batch_id, "files": [{"path": f"f{i}", "sha256": h, "size": 0}
                                                       for i, h in enumerate(shas)]}).encode()
    put = store.put_bytes(body)
    store.register_batch(batch_id, {"source": "test", "manifest": put.sha256, "files": len(shas), "bytes": 0})


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
    from hoardfs.fsd.maintenance import gc as gcmod

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
    done, kept, damaged, dropped = gcmod._swap(store, items, moved, set())
    assert kept >= 1 and not damaged
    gcmod._finish_retired(store)
    for r in again:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    check_store(store)


RACER_INGEST = """
import json, sys, hashlib
from pathlib import Path
from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.store import Store
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
from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.store import Store
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
from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.store import Store
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
            from hoardfs.fsd.core import storelock

            other = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "replicate"], cwd=REPO,
                                   capture_output=True, text=True)
            assert other.returncode == 3, other.stderr
            assert f"pid {os.getpid()}" in other.stderr and "maintenance.lock" in other.stderr
            assert storelock.holders(Path(store.cfg.index_dir.parent), storelock.MAINTENANCE) == []


def test_gc_keeps_what_the_database_references(store_factory, tmp_path: Path, pg) -> None:
    """A tombstoned object that a live database node still names is kept by gc (and its
    tombstone cleared); one whose node is deleted and held by no batch is freed."""
    from hoardfs.sql.deletion import referenced
    from hoardfs.sql.migrate import migrate

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
    from hoardfs.fsd.maintenance import gc as gcmod

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


def test_a_manifest_registered_or_repointed_between_plan_and_swap_keeps_its_files(store_factory, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """gc reads each manifest once for its plan and its swap (manifest.References). A batch
    registered after the plan, and a batch name pointed at another manifest after it, both
    naming objects still tombstoned: the swap reads the manifests it has not read and keeps
    the files; the next gc frees only what nothing names."""
    from hoardfs.fsd.maintenance import gc as gcmod

    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    res = store.put_many(make_files(tmp_path / "a", 30, seed=31))
    other = store.put_many(make_files(tmp_path / "x", 1, seed=32))
    _register(store, "A", [r.sha256 for r in res])
    _register(store, "L", [other[0].sha256])
    drop_batch(store, "A")
    copy_live = gcmod._copy_live

    def then_register(*args, **kwargs):
        got = copy_live(*args, **kwargs)
        _register(store, "N", [res[0].sha256])  # (its manifest is a new object: no tombstone is cleared)
        _register(store, "L", [res[1].sha256])
        return got

    monkeypatch.setattr(gcmod, "_copy_live", then_register)
    rep = gc(store, threshold=0.99)
    assert rep.kept_back >= 1
    monkeypatch.setattr(gcmod, "_copy_live", copy_live)
    gc(store, threshold=0.99)
    for r in res[:2] + other:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    assert not any(store.index.lookup(bytes.fromhex(r.sha256)) for r in res[2:])
    assert store.index.marked(store.index.deleted) == set()
    check_store(store)


@pytest.mark.parametrize("held", [True, False])
def test_gc_reads_each_manifest_once(store_factory, tmp_path: Path, monkeypatch, held: bool) -> None:
    """The work of gc's reference computation: no registered manifest is read — the `held` table
    answers (hoardfs.fsd.core.held; the gc before it read every one) —, and on an index not migrated to
    it yet, each once for the plan and the swap together (the gc before that read every manifest
    again under the exclusive lock)."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    if not held:
        store.index.format = formats.INDEX_HELD - 1  # (what an index not migrated yet is read as)
    for k in range(4):
        _register(store, f"b{k}", [r.sha256 for r in store.put_many(make_files(tmp_path / f"b{k}", 20, seed=40 + k))])
    drop_batch(store, "b3")
    manifests = {info["manifest"] for _name, info in store.index.iter_batches()}
    reads: dict[str, int] = {}
    get = store.get

    def counted(sha: str):
        if sha in manifests:
            reads[sha] = reads.get(sha, 0) + 1
        return get(sha)

    monkeypatch.setattr(store, "get", counted)
    rep = gc(store, threshold=0.99)
    assert rep.compacted >= 1 and rep.objects_dropped == 21  # the swap ran: b3's files and its manifest
    assert reads == ({} if held else dict.fromkeys(manifests, 1))
