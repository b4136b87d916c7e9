"""What `hoard put` acknowledges is a root: no batch dropped, no gc, no index rebuild frees it;
only `hoard delete --object` releases it (then gc frees it unless something else needs it).

An object stored by `hoard put` once had no reference of its own, so dropping a batch that
happened to hold the same bytes tombstoned it and gc freed it.
"""

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
from hoardfs.fsd.maintenance.deletion import drop_batch, release
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.reindex import rebuild_index
from hoardfs.fsd.store import Store
from tests.helpers import make_files
from tests.test_cli_put import _hoard
from tests.test_cli_put import _store as _cli_store
from tests.test_gc import _register

REPO = Path(__file__).resolve().parent.parent
PUT = "hoard put"


def _reads_back(store: Store, sha: str) -> bool:
    try:
        return hashlib.sha256(store.get(sha)).hexdigest() == sha
    except ObjectNotFound:
        return False


@pytest.mark.parametrize("order", ["put first", "batch first", "dropped first"])
def test_put_object_survives_dropping_a_batch_with_the_same_content(store_factory, tmp_path: Path,
                                                                    order: str) -> None:
    """`hoard put x` acknowledges x; a batch holding the same bytes is ingested before or after
    and dropped (before or after the put); after gc, x still reads back and the batch's own
    files are freed."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=2)
    files = make_files(tmp_path / "a", 20, seed=1)
    if order == "put first":
        acked = store.put_many(files[:1], root=PUT)
        batch = store.put_many(files)
        _register(store, "batch-a", batch)
        drop_batch(store, "batch-a")
    else:
        batch = store.put_many(files)
        _register(store, "batch-a", batch)
        if order == "dropped first":
            drop_batch(store, "batch-a")
        acked = store.put_many(files[:1], root=PUT)
        assert acked[0].status == "existing"
        if order == "batch first":
            drop_batch(store, "batch-a")
    rep = gc(store, threshold=1.0)
    assert _reads_back(store, acked[0].sha256)
    assert rep.objects_dropped == 20  # the other 19 files and the manifest
    assert not any(_reads_back(store, r.sha256) for r in batch[1:])


def test_a_tombstone_set_on_a_root_is_cleared_by_gc(store_factory, tmp_path: Path) -> None:
    """The race `delete --batch` can lose against a concurrent `put` (its shared set computed
    before the put rooted the object): the tombstone lands on a root. gc's swap checks the
    roots in its own transaction: the object stays, its tombstone is cleared."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 10, seed=2)
    acked = store.put_many(files, root=PUT)
    shas = [bytes.fromhex(r.sha256) for r in acked]
    assert store.index.mark(store.index.deleted, shas, "as a racing delete --batch would") == 10
    gc(store, threshold=1.0)
    assert all(_reads_back(store, r.sha256) for r in acked)
    assert store.index.marked(store.index.deleted) == set()
    assert store.index.marked(store.index.rooted) == set(shas)


def test_release_then_gc_frees_only_what_nothing_else_needs(store_factory, tmp_path: Path) -> None:
    """`release` (hoard delete --object) takes the root off; gc frees the object — but not one
    a registered batch also names, and re-putting a released object roots it again."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 6, seed=3)
    acked = store.put_many(files, root=PUT)
    _register(store, "batch-b", acked[:2])  # a batch also uses the first two
    shas = [bytes.fromhex(r.sha256) for r in acked]
    assert release(store, shas[:4], "test") == (4, 4)
    again = store.put_many(files[3:4], root=PUT)  # wanted again: root and no tombstone
    assert again[0].status == "existing"
    gc(store, threshold=1.0)
    assert [_reads_back(store, r.sha256) for r in acked] == [True, True, False, True, True, True]
    assert store.index.marked(store.index.rooted) == set(shas[3:])


def test_release_of_an_unknown_object_changes_nothing(store_factory, tmp_path: Path) -> None:
    from hoardfs.base.errors import HoardError

    store = store_factory(n_disks=2, caps=None, shard_size_mb=1)
    acked = store.put_many(make_files(tmp_path / "a", 1, seed=4), root=PUT)
    with pytest.raises(HoardError, match=f"no object {'ab' * 32} in the store; nothing was released"):
        release(store, [bytes.fromhex(acked[0].sha256), b"\xab" * 32], "test")
    assert store.index.marked(store.index.rooted) == {bytes.fromhex(acked[0].sha256)}
    assert store.index.marked(store.index.deleted) == set()


def test_roots_and_releases_survive_an_index_rebuild(store_factory, tmp_path: Path) -> None:
    """Roots are in marks/marks.log on the HDDs: a rebuilt index has the roots the old one had
    (and not the released ones), so a batch dropped after the rebuild still cannot free a put."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1)
    files = make_files(tmp_path / "a", 8, seed=5)
    acked = store.put_many(files[:3], root=PUT)
    release(store, [bytes.fromhex(acked[2].sha256)], "test")
    batch = store.put_many(files)
    _register(store, "batch-a", batch)
    cfg = store.cfg
    store.close()
    rep = rebuild_index(cfg)
    assert (rep.rooted, rep.deleted) == (2, 0)  # the batch stored the released one again: no tombstone
    with Store.open(cfg) as store:
        assert store.index.marked(store.index.rooted) == {bytes.fromhex(r.sha256) for r in acked[:2]}
        drop_batch(store, "batch-a")
        gc(store, threshold=1.0)
        assert [_reads_back(store, r.sha256) for r in acked] == [True, True, False]
        assert not any(_reads_back(store, r.sha256) for r in batch[3:])


# -- through the command line -------------------------------------------------------------------

@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_cli_put_info_delete_object_gc(tmp_path: Path) -> None:
    """`hoard put` → `hoard info` says it is kept → `hoard delete --object` → `hoard gc` frees
    it (`hoard info` exit 5); bad and unknown sha256s are refused naming them."""
    cfg = _cli_store(tmp_path)
    files = make_files(tmp_path / "in", 3, seed=6)
    put = _hoard(cfg, "put", *map(str, files))
    assert put.returncode == 0, put.stderr
    shas = [line.split()[0] for line in put.stdout.splitlines()]
    info = _hoard(cfg, "info", shas[0])
    assert "kept by `hoard put` (until `hoard delete --object`)" in info.stdout, info.stdout
    bad = _hoard(cfg, "delete", "--object", "xyz")
    assert bad.returncode == 2 and "'xyz' is not a sha256" in bad.stderr
    ghost = _hoard(cfg, "delete", "--object", shas[0], "--object", "cd" * 32)
    assert ghost.returncode == 5 and f"no object {'cd' * 32} in the store; nothing was released" in ghost.stderr
    both = _hoard(cfg, "delete", "--object", shas[0], "--node", shas[1])
    assert both.returncode == 2 and "name one of --batch" in both.stderr
    rel = _hoard(cfg, "delete", "--object", shas[0], "--object", shas[0].upper())  # named twice: counted once
    assert rel.returncode == 0 and "1 objects released from `hoard put`, 1 tombstoned" in rel.stdout, rel.stderr
    g = _hoard(cfg, "gc", "--no-database", "--threshold", "1.0")
    assert g.returncode == 0, g.stderr
    assert _hoard(cfg, "info", shas[0]).returncode == 5
    for sha in shas[1:]:
        got = _hoard(cfg, "get", sha, "-o", str(tmp_path / "out"))
        assert got.returncode == 0 and hashlib.sha256((tmp_path / "out").read_bytes()).hexdigest() == sha


def test_put_racing_delete_batch_and_gc_loses_nothing(hoard_home: Path, pg, tmp_path: Path) -> None:
    """A second process: `hoard put` of files a registered batch also holds runs while another
    process drops the batch and gcs, three rounds with new batches; every object `put --json`
    printed reads back afterwards, whatever the interleaving."""
    from hoardfs.sql.migrate import migrate
    from tests.helpers import use_schema

    migrate(pg)
    cfg = Path(use_schema(hoard_home, pg))
    for d in config.load(cfg).disks:
        d.path.mkdir(parents=True, exist_ok=True)
    Store.open(config.load(cfg), init=True).close()
    acked: set[str] = set()
    for rnd in range(3):
        files = make_files(tmp_path / f"r{rnd}", 120, seed=10 + rnd, lo=256, hi=8 * 1024)
        with Store.open(config.load(cfg)) as store:
            _register(store, f"batch-{rnd}", store.put_many(files))
        put = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", "--json",
                                *map(str, files[::2])], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        time.sleep(0.05 * rnd)  # a different interleaving each round
        dropped = _hoard(cfg, "delete", "--batch", f"batch-{rnd}", "--yes")
        assert dropped.returncode == 0, dropped.stderr
        collected = _hoard(cfg, "gc", "--threshold", "1.0", "--wait", "120")
        assert collected.returncode == 0, collected.stderr
        out, errs = put.communicate(timeout=120)
        assert put.returncode == 0, errs
        acked |= {json.loads(line)["sha256"] for line in out.splitlines()}
        assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    assert len(acked) == 180
    with Store.open(config.load(cfg), writable=False) as store:
        lost = [sha for sha in acked if not _reads_back(store, sha)]
    assert not lost, f"{len(lost)} acknowledged objects lost"
    assert _hoard(cfg, "check").returncode == 0


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_killed_put_has_rooted_everything_it_printed(tmp_path: Path) -> None:
    """kill -9 a `hoard put` after it printed some lines: each printed object is a root (a root
    is written before the line), so dropping a batch with the same files and gc keep them."""
    cfg = _cli_store(tmp_path)
    files = make_files(tmp_path / "in", 400, seed=20, lo=16 * 1024, hi=64 * 1024)
    with Store.open(config.load(cfg)) as store:
        _register(store, "batch-k", store.put_many(files[200:]))  # the second half is "existing" for put
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", "--json",
                             *map(str, files[150:] + files[:150])], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    printed = []
    assert proc.stdout is not None
    for line in proc.stdout:
        printed.append(json.loads(line)["sha256"])
        if len(printed) == 120:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    printed += [json.loads(line)["sha256"] for line in proc.stdout if line.endswith("\n")]
    proc.wait()
    assert len(printed) >= 120
    with Store.open(config.load(cfg)) as store:
        assert {bytes.fromhex(s) for s in printed} <= store.index.marked(store.index.rooted)
        drop_batch(store, "batch-k")
        gc(store, threshold=1.0)
        assert all(_reads_back(store, s) for s in printed)
