"""The `held` table (fsd/core/held.py): `hoard delete --batch` and gc learn which
manifests name an object from the index, not by reading every manifest — the work is the
batch's, not the store's. What it must never do is free an object a registered manifest still
names: deleting one of two batches that share objects, killing the deletion or gc at any of
their write transactions, rebuilding the index from the disks and migrating an index from
before the table all leave every shared object readable, `hoard check` clean, and the table
exactly what a fresh fill from the manifests makes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats, held
from hoardfs.fsd.core.txnlog import KILL_VAR
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.reindex import rebuild_index
from hoardfs.fsd.outputs.manifest import batch_manifest, iter_files
from hoardfs.fsd.outputs.views import define_view_rows, remove_view
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, freed, older_index, reads_back

# tier: the module's tests start hoard processes
pytestmark = pytest.mark.services

#: many write transactions for a few hundred objects (each a place to be killed)
SMALL = {"HOARD_LMDB_TXN_ENTRIES": "120"}


def _register(store: Store, batch_id: str, shas: list[bytes]) -> str:
    body = batch_manifest(batch_id, "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(shas)},
                          {f"f{i}": 0 for i in range(len(shas))}, [], [])
    manifest = store.put_bytes(body).sha256
    store.register_batch(batch_id, {"source": "t", "manifest": manifest, "files": len(shas), "bytes": 0})
    return manifest


def _objects(store: Store, n: int, seed: int) -> list[bytes]:
    """`n` distinct small objects (not roots: what a batch's ingest stores)."""
    datas = [hashlib.sha256(f"{seed}:{i}".encode()).digest() * (1 + i % 7) for i in range(n)]
    return [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]


def _table(index_dir: Path) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The `held` table and the pending records, as stored."""
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            rows = {bytes(k): bytes(v) for k, v in txn.cursor(db=env.open_db(b"held", txn=txn, create=False))}
            meta = {bytes(k): bytes(v) for k, v in txn.cursor(db=env.open_db(b"meta", txn=txn, create=False))
                    if bytes(k).startswith(held.PENDING)}
        return rows, meta
    finally:
        env.close()


def _fresh(store: Store) -> set[bytes]:
    """The `held` keys a fill from the registered manifests makes (computed, not written)."""
    out = set()
    for _kind, db in (("batch", store.index.iter_batches()), ("view", store.index.iter_views())):
        for _name, info in db:
            man = bytes.fromhex(info["manifest"])
            out |= {held.pair(sha, man) for sha in held.named_by(store.get, info["manifest"])}
    return out


def _shop(tmp_path: Path) -> tuple[Path, dict[str, list[bytes]]]:
    """Batches A and B sharing objects, a view V naming some of A's, roots among A's, a batch C
    apart; returns the config and the objects by kind."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        every = _objects(store, 470, 1)  # (in the same shards: gc copies the live ones out of them)
        a_only, shared, viewed, rooted, c = (every[:300], every[300:360], every[360:400], every[400:420],
                                             every[420:])
        _register(store, "A", a_only + shared + viewed + rooted)
        _register(store, "B", shared)
        _register(store, "C", c)
        define_view_rows(store, "V", [(f"v/{i}.bin", s.hex()) for i, s in enumerate(viewed)])
        store.index.mark(store.index.rooted, rooted, "hoard put")
    return cfg_path, {"a_only": a_only, "kept": shared + viewed + rooted + c, "shared": shared}


def _hoard(cfg_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full.pop("HOARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args], capture_output=True,
                          text=True, env=full, cwd=REPO, timeout=600)


def _drop(cfg_path: Path, batch_id: str, env: dict) -> subprocess.CompletedProcess[str]:
    """The store's side of `hoard delete --batch` in a process of its own."""
    code = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
            "from hoardfs.fsd.maintenance.deletion import drop_batch; "
            "s = Store.open(config.load(sys.argv[1])); print(drop_batch(s, sys.argv[2])); s.close()")
    return subprocess.run([sys.executable, "-c", code, str(cfg_path), batch_id], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO, timeout=600)


def _clean(cfg_path: Path) -> None:
    res = _hoard(cfg_path, "check", "--no-database", "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    cfg = config.load(cfg_path)
    with Store.open(cfg, writable=False) as store:
        fresh = _fresh(store)
    assert _table(cfg.index_dir) == (dict.fromkeys(fresh, b""), {})


def test_a_deletion_reads_its_batch_alone(store_factory) -> None:
    """`delete --batch` of one batch among twelve reads that batch's manifest and no other (the
    deletion before the table read all eleven others), and steps through `held` entries in
    proportion to its batch: a store ten times larger by batches adds no work."""
    store = store_factory(n_disks=2, caps=None)
    manifests = {f"b{k}": _register(store, f"b{k}", _objects(store, 30, 100 + k)) for k in range(1, 12)}
    shared = held.named_by(store.get, manifests["b1"])[:5]
    manifests["b0"] = _register(store, "b0", _objects(store, 30, 100) + shared)  # (5 of b1's files too)
    reads: dict[str, int] = {}
    get = store.get

    def counted(sha: str) -> bytes:
        if sha in manifests.values():
            reads[sha] = reads.get(sha, 0) + 1
        return get(sha)

    store.get = counted  # type: ignore[method-assign]  (counts what the deletion reads; reads go on)
    before = store.index.held_reads
    tombstoned, kept = drop_batch(store, "b0")
    assert reads == {manifests["b0"]: 1}
    assert store.index.held_reads - before <= 3 * 36  # (its 35 files and itself: a few steps each)
    assert (tombstoned, kept) == (31, 5)  # its 30 own files and its manifest; the 5 b1 names
    assert store.index.marked_among(store.index.deleted, set(shared)) == set()


def test_two_batches_holding_an_object_keep_it_through_deletion_and_gc(tmp_path: Path) -> None:
    """An object A and B both name, or a view or a root holds, survives A's deletion and the gc
    that frees A's own objects; B's deletion and gc free what B alone still held."""
    cfg_path, kinds = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        gc(store, threshold=1.0)
    reads_back(cfg_path, kinds["kept"])
    freed(cfg_path, kinds["a_only"])
    _clean(cfg_path)
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "B")
        gc(store, threshold=1.0)
    freed(cfg_path, kinds["shared"])
    reads_back(cfg_path, [s for s in kinds["kept"] if s not in set(kinds["shared"])])
    _clean(cfg_path)


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.marks:_mark:2", "hoardfs.fsd.core.pointers:keep_pointer:1",
                                  "hoardfs.fsd.core.held:unhold:1", "hoardfs.fsd.core.held:unhold:2"])
def test_a_deletion_killed_anywhere_then_run_again_loses_nothing(tmp_path: Path, site: str) -> None:
    """`delete --batch A` killed (SIGKILL) after a transaction of its tombstones, of its
    unregistration or of the removal of its `held` entries: a gc right after frees nothing
    another batch, a view or a root holds; the deletion run again and gc free A's own objects,
    check is clean and the table is what a fill from the manifests makes."""
    cfg_path, kinds = _shop(tmp_path)
    res = _drop(cfg_path, "A", {**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, kinds["kept"])
    again = _drop(cfg_path, "A", SMALL)
    if again.returncode != 0:  # (gc finished what the killed run left: nothing left to do)
        assert "no ingested batch 'A'" in again.stderr, again.stderr[-2000:]
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, kinds["kept"])
    freed(cfg_path, kinds["a_only"])
    _clean(cfg_path)


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.held:unhold:1", "hoardfs.fsd.maintenance.gc:_swap:1",
                                  "hoardfs.fsd.maintenance.gc:_swap:3"])
def test_a_gc_killed_mid_way_then_run_again_loses_nothing(tmp_path: Path, site: str) -> None:
    """gc killed while it finishes the `held` entries a killed deletion left, or in its swap,
    then run again: every object another batch, a view or a root holds reads back, A's own are
    freed, check is clean."""
    cfg_path, kinds = _shop(tmp_path)
    res = _drop(cfg_path, "A", {**SMALL, KILL_VAR: "hoardfs.fsd.core.pointers:keep_pointer:1"})  # (entries left)
    assert res.returncode == -9, res.stderr[-2000:]
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env={**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    reads_back(cfg_path, kinds["kept"])
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, kinds["kept"])
    freed(cfg_path, kinds["a_only"])
    _clean(cfg_path)


def test_a_killed_deletion_is_judged_alike_and_named_with_its_next_step(tmp_path: Path) -> None:
    """The `held` entries a killed deletion left are one finding in `hoard check`, `hoard health`
    and `hoard verify` alike, naming the batch and `hoard gc`; run, it is gone from all three."""
    cfg_path, _kinds = _shop(tmp_path)
    res = _drop(cfg_path, "A", {**SMALL, KILL_VAR: "hoardfs.fsd.core.pointers:keep_pointer:1"})
    assert res.returncode == -9, res.stderr[-2000:]
    check = json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
    health = json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"]
    verify = _hoard(cfg_path, "verify", "--sample", "1")
    [line] = [p for p in check if "held entries" in p]
    assert [p for p in health if p.endswith(line)] and line in verify.stdout + verify.stderr, verify
    assert verify.returncode == 5
    assert "batch A" in line and "`hoard gc`" in line
    assert _hoard(cfg_path, "gc", "--no-database").returncode == 0
    _clean(cfg_path)
    assert not [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]


def _a_missing_and_a_stray_entry(store: Store, kinds: dict[str, list[bytes]]) -> None:
    """B's entry of a shared object deleted, and an entry of a manifest nothing registers added."""
    b = bytes.fromhex(store.index.get_batch("B")["manifest"])
    with store.index.env.begin(write=True, db=store.index.held) as txn:
        assert txn.delete(held.pair(kinds["shared"][0], b))
        txn.put(held.pair(kinds["a_only"][0], b"\x01" * 32), b"")


def test_a_missing_or_stray_entry_is_a_check_finding(tmp_path: Path) -> None:
    """`hoard check` names an object a registered manifest names without its `held` entry (a
    deletion could free it) and an entry of a manifest nothing registers."""
    from hoardfs.fsd.maintenance.check import check

    cfg_path, kinds = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        _a_missing_and_a_stray_entry(store, kinds)
        rep = check(store)
    lines = [line for kind, line in rep.lines() if kind == "held"]
    assert len(lines) == 2, rep.lines()
    assert "batch B: 1 objects its manifest names have no `held` entry" in lines[0]
    assert "neither registered nor being removed" in lines[1]


def test_rebuild_and_migration_make_the_table_the_store_grew(tmp_path: Path) -> None:
    """The table as registrations, a deletion, a view's replacement and removal left it is what
    `hoard index rebuild` makes from the disks, and what the migration of an index from before
    the table (format 2, no `held`) makes — byte for byte."""
    cfg_path, kinds = _shop(tmp_path)
    cfg = config.load(cfg_path)
    with Store.open(cfg) as store:
        drop_batch(store, "C")
        define_view_rows(store, "V", [(f"w/{i}.bin", s.hex()) for i, s in enumerate(kinds["shared"])])
        define_view_rows(store, "W", [("x.bin", kinds["a_only"][0].hex())])
        remove_view(store, "W")
    grown = _table(cfg.index_dir)
    assert grown[0] and not grown[1]
    with Store.open(cfg, writable=False) as store:
        assert set(grown[0]) == _fresh(store)
    rebuild_index(cfg)
    assert _table(cfg.index_dir) == grown
    with Store.open(cfg, writable=False) as store:
        assert store.index.format == formats.INDEX
    older_index(cfg.index_dir, 2, "held")  # the index format 2 wrote
    with Store.open(cfg, writable=False) as store:  # read as it is: the manifests answer
        assert store.index.format == 2 and not store.index.held_ready()
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX
    assert _table(cfg.index_dir) == grown
    _clean(cfg_path)


@pytest.mark.parametrize("kill", ["hoardfs.fsd.core.held:fill_held:2", "hoardfs.fsd.core.held:_sweep:1"])
def test_a_migration_killed_in_the_fill_is_redone_whole(tmp_path: Path, kill: str) -> None:
    """The migration to the table killed in its filling or its sweep of entries no manifest
    needs leaves the index at format 2 (the manifests are read meanwhile); the next writable
    open fills it whole, and the entry of a manifest nothing registers is gone."""
    cfg_path, kinds = _shop(tmp_path)
    cfg = config.load(cfg_path)
    grown = _table(cfg.index_dir)
    env = lmdb.open(str(cfg.index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:  # format 2, with a stale entry the fill must not keep
        txn.put(formats.INDEX_KEY.encode(), b"2", db=env.open_db(b"meta", txn=txn))
        txn.put(held.pair(b"\x02" * 32, b"\x03" * 32), b"", db=env.open_db(b"held", txn=txn))
    env.close()
    res = _hoard(cfg_path, "index", "migrate", env={**SMALL, KILL_VAR: kill})
    assert res.returncode == -9, res.stderr[-2000:]
    with Store.open(cfg, writable=False) as store:
        assert store.index.format == 2
    res = _hoard(cfg_path, "index", "migrate", env=SMALL)
    assert res.returncode == 0 and "(migrated from format 2)" in res.stdout, res.stderr[-2000:]
    assert _table(cfg.index_dir) == grown
    _clean(cfg_path)


def _define(cfg_path: Path, name: str, shas: list[bytes], env: dict | None = None
            ) -> subprocess.CompletedProcess[str]:
    """`name` defined as a view of `shas` by a process of its own (a `hoard view add` beside)."""
    code = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
            "from hoardfs.fsd.outputs.views import define_view_rows; "
            "s = Store.open(config.load(sys.argv[1])); "
            "define_view_rows(s, sys.argv[2], [(f'{i}.bin', h) for i, h in enumerate(sys.argv[3:])]); s.close()")
    res = subprocess.run([sys.executable, "-c", code, str(cfg_path), name, *(s.hex() for s in shas)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                         cwd=REPO, timeout=600)
    assert res.returncode in (0, -9), res.stderr[-2000:]
    return res


def test_a_view_defined_while_check_reads_the_manifests_is_no_finding(tmp_path: Path) -> None:
    """A view defined by another process while `hoard check` reads the registered manifests (after
    it listed them) is not a disagreement of the `held` table: check judges one moment, and a
    registration beside it — entries first, then the registration — is consistent at every one
    (it reported "manifest … has N `held` entries and names 0 objects" with `hoard index
    rebuild` as the next step)."""
    from hoardfs.fsd.maintenance.check import check

    cfg_path, kinds = _shop(tmp_path)
    with Store.open(config.load(cfg_path), writable=False) as store:
        last = store.index.get_batch("C")["manifest"]
        get = store.get

        def beside(sha: str) -> bytes:  # the view is defined when check reads batch C's manifest
            if sha == last and not beside.done:  # type: ignore[attr-defined]
                beside.done = True  # type: ignore[attr-defined]
                assert _define(cfg_path, "late", kinds["a_only"][:3]).returncode == 0
            return get(sha)

        beside.done = False  # type: ignore[attr-defined]
        store.get = beside  # type: ignore[method-assign]  (the reads go on; a process runs beside one)
        rep = check(store)
        assert beside.done  # type: ignore[attr-defined]
    assert [line for kind, line in rep.lines() if kind == "held"] == []
    _clean(cfg_path)


def test_the_next_step_of_a_missing_or_stray_entry_mends_the_table(tmp_path: Path) -> None:
    """What `hoard check` prints for an object without its `held` entry and for an entry nothing
    registers — `hoard index rebuild` — run as printed, makes the table what the manifests say:
    check is clean, and a deletion of A with its gc then keeps what B still names."""
    cfg_path, kinds = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        _a_missing_and_a_stray_entry(store, kinds)
    res = _hoard(cfg_path, "check", "--no-database", "--json")
    lines = [p for p in json.loads(res.stdout)["problems"] if "`held` entr" in p]
    assert len(lines) == 2 and all("`hoard index rebuild`" in p for p in lines), lines
    res = _hoard(cfg_path, "index", "rebuild")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _clean(cfg_path)
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        gc(store, threshold=1.0)
    reads_back(cfg_path, kinds["kept"])


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.held:hold:1", "hoardfs.fsd.core.held:hold:2", "hoardfs.fsd.core.pointers:keep_pointer:1",
                                  "hoardfs.fsd.core.marks:_mark:1", "hoardfs.fsd.core.held:unhold:1"])
def test_a_view_replaced_killed_anywhere_keeps_what_the_registered_one_names(tmp_path: Path, site: str) -> None:
    """View V redefined to name some of A's own files too, killed (SIGKILL) after any write
    transaction of its `held` entries, its registration, its tombstones or the removal of the old
    manifest's entries: check, health and verify say the same of what it left (with one next
    step), and after A's deletion and gc every object the view registered then names reads back."""
    cfg_path, kinds = _shop(tmp_path)
    now = kinds["a_only"][:5] + kinds["shared"][:5]
    res = _define(cfg_path, "V", now, {**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    check = [p for p in json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
             if "held" in p]
    health = [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    verify = _hoard(cfg_path, "verify", "--sample", "1")
    assert len(check) == len(health) <= 1 and all(h.endswith(c) for h, c in zip(health, check, strict=True))
    assert all(c in verify.stdout + verify.stderr and "`hoard gc`" in c for c in check), (check, verify.stdout)
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        gc(store, threshold=1.0)
        named = [sha for _p, sha, _s in iter_files(store.get, store.index.get_view("V")["manifest"])]
    reads_back(cfg_path, named + kinds["shared"])
    _clean(cfg_path)


def test_a_deletion_killed_beside_a_gc_that_frees_its_manifest_is_finished_by_the_next(tmp_path: Path) -> None:
    """`delete --batch A` run between a gc's finishing of the pending records and its plan, and
    killed after A's unregistration: that gc frees A's manifest with A's files, and A's pending
    record and `held` entries stay. The next `hoard gc` — the next step health, check and verify
    print — must remove them though the manifest no longer reads (it warned and kept them for
    good: the finding stayed, its next step did nothing)."""
    cfg_path, kinds = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        manifest = store.index.get_batch("A")["manifest"]
        marked = store.index.marked

        def beside(db):  # the deletion runs when gc first lists the tombstones (after its finish step)
            if not beside.done:  # type: ignore[attr-defined]
                beside.done = True  # type: ignore[attr-defined]
                res = _drop(cfg_path, "A", {**SMALL, KILL_VAR: "hoardfs.fsd.core.pointers:keep_pointer:1"})
                assert res.returncode == -9, res.stderr[-2000:]
            return marked(db)

        beside.done = False  # type: ignore[attr-defined]
        store.index.marked = beside  # type: ignore[method-assign]  (a process runs beside, the calls go on)
        gc(store, threshold=1.0)
        assert beside.done  # type: ignore[attr-defined]
    freed(cfg_path, [bytes.fromhex(manifest)] + kinds["a_only"])
    reads_back(cfg_path, kinds["kept"])
    [line] = [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    assert "`hoard gc`" in line
    res = _hoard(cfg_path, "gc", "--no-database")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    _clean(cfg_path)


@pytest.mark.expect_log(r"the index stays at format 2", level="WARNING", optional=True)
@pytest.mark.expect_log(r"the replaced view manifest c+d+.* cannot be read", level="WARNING", optional=True)
def test_a_batch_or_view_whose_manifest_is_lost_is_removed_as_check_and_migrate_say(tmp_path: Path) -> None:
    """A registered batch or view whose manifest is in no shard keeps the index at format 2 (the
    `held` fill cannot read it); `hoard index migrate` names `hoard delete --batch` / `hoard view
    rm` for it, and so does check now (it named no next step). That deletion refused (the
    manifest "not in the store"), so the index stayed at 2 for good: it now unregisters the batch
    and tombstones nothing (what it named is not known — kept, never lost), the migration then
    succeeds, and every object reads back."""
    cfg_path, kinds = _shop(tmp_path)
    cfg = config.load(cfg_path)
    env = lmdb.open(str(cfg.index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        txn.put(formats.INDEX_KEY.encode(), b"2", db=env.open_db(b"meta", txn=txn))
        txn.put(b"L", json.dumps({"source": "t", "manifest": "ab" * 32, "files": 1, "bytes": 1}).encode(),
                db=env.open_db(b"batches", txn=txn))
        txn.put(b"LV", json.dumps({"manifest": "cd" * 32, "files": 1, "bytes": 1, "created": "then"}).encode(),
                db=env.open_db(b"views", txn=txn))
    env.close()
    res = _hoard(cfg_path, "index", "migrate")
    assert res.returncode == 5 and "`hoard delete --batch L`" in res.stderr, res.stderr[-2000:]
    lines = [p for p in json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
             if "is not in the store" in p]
    assert len(lines) == 2 and "`hoard delete --batch L`" in lines[0] and "`hoard view rm LV`" in lines[1], lines
    res = _drop(cfg_path, "L", {})  # (the store's side of `hoard delete --batch L`)
    assert res.returncode == 0 and res.stdout.strip() == "(0, 0)", res.stderr[-2000:]
    res = _hoard(cfg_path, "view", "rm", "LV")
    assert res.returncode == 0, res.stderr[-2000:]
    res = _hoard(cfg_path, "index", "migrate")
    assert res.returncode == 0 and "(migrated from format 2)" in res.stdout, res.stderr[-2000:]
    reads_back(cfg_path, kinds["kept"] + kinds["a_only"])
    _clean(cfg_path)


def test_a_view_defined_again_as_it_was_killed_is_named_as_registered(tmp_path: Path) -> None:
    """View V defined again with the same files (the same manifest), killed after its first
    `held` transaction: check, health and verify say alike that V stays registered with its
    entries whole and that `hoard gc` clears the record — not "it is not registered"; gc does,
    and after A's deletion and gc every file V names reads back."""
    cfg_path, kinds = _shop(tmp_path)
    rows = kinds["a_only"][:4] + kinds["shared"][:4]
    assert _define(cfg_path, "V", rows).returncode == 0
    res = _define(cfg_path, "V", rows, {**SMALL, KILL_VAR: "hoardfs.fsd.core.held:hold:1"})
    assert res.returncode == -9, res.stderr[-2000:]
    check = [p for p in json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
             if "held" in p]
    health = [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    verify = _hoard(cfg_path, "verify", "--sample", "1")
    [line] = check
    assert [h for h in health if h.endswith(line)] and line in verify.stdout + verify.stderr
    assert "view V" in line and "stays registered" in line and "not registered" not in line and "`hoard gc`" in line
    assert _hoard(cfg_path, "gc", "--no-database").returncode == 0
    assert not [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        gc(store, threshold=1.0)
    reads_back(cfg_path, rows)
    _clean(cfg_path)


def test_the_registered_manifests_follow_an_entry_changed_under_the_parsed_cache(tmp_path: Path) -> None:
    """`registered_manifests` parses each batch or view entry once per process: an entry
    registered again for another manifest (a batch's manifest replaced, a view redefined) is
    seen at once, and a dropped one goes — a stale answer would let the sweep after a `held`
    fill, or check, treat a registered manifest's entries as unneeded."""
    cfg_path = dir_disks_config(tmp_path, 2)
    with Store.open(config.load(cfg_path), init=True) as store:
        idx = store.index
        first, second = hashlib.sha256(b"first").digest(), hashlib.sha256(b"second").digest()
        for table, name in ((idx.batches, b"b1"), (idx.views, b"v1")):
            for man in (first, second, first):
                with idx.env.begin(write=True) as txn:
                    txn.put(name, json.dumps({"manifest": man.hex()}).encode(), db=table)
                with idx.env.begin() as txn:
                    assert idx.registered_manifests(txn) == {man}
            with idx.env.begin(write=True) as txn:
                txn.delete(name, db=table)
        with idx.env.begin() as txn:
            assert idx.registered_manifests(txn) == set()


def test_the_sweep_reads_the_registrations_per_span_and_decides_at_each_write(tmp_path: Path, monkeypatch) -> None:
    """The pass over `held` (an index rebuild's sweep of entries no manifest needs, a format's
    migration, an unreadable manifest's removal) asks its `which` — the rebuild's reads every
    registered batch and view — once per span of keys it reads, not once per write transaction
    of keys visited (chunks x batches: the square of the store); and a key is changed only if
    the `which` of the write transaction changing it says so (a registration made after the
    read keeps its entries)."""
    cfg_path = dir_disks_config(tmp_path, 2)
    with Store.open(config.load(cfg_path), init=True) as store:
        idx = store.index
        keys = sorted(held.pair(hashlib.sha256(b"%d" % i).digest(), b"\x05" * 32) for i in range(2500))
        with idx.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"", db=idx.held)
        monkeypatch.setattr(held, "_SPAN", 1000)
        monkeypatch.setattr(held, "_PER", 600)
        asked: list[int] = []

        def nothing(txn):
            asked.append(1)
            return lambda k: None

        assert idx._sweep(nothing) == 0
        assert len(asked) == 3  # three spans read; no write transaction (the old pass asked per 600 keys)

        monkeypatch.setattr(held, "_SPAN", 10_000)
        kept = set(keys[::3])  # "registered since the read": the writers' moment keeps them
        calls: list[str] = []

        def moments(txn):
            calls.append("write" if calls and calls[-1] == "read" else "read")
            if calls[-1] == "read":
                return lambda k: b""  # the read: every key unneeded
            return lambda k: None if k in kept else b""

        assert idx._sweep(moments) == len(keys) - len(kept)
        assert calls == ["read", "write"] * 5  # a read stops at 600 keys to change: the write changes them
        with idx.env.begin() as txn:
            assert {bytes(k) for k in txn.cursor(db=idx.held).iternext(values=False)} == kept


@pytest.mark.parametrize("span,per", [(1, 1), (1, 5), (2, 1), (3, 2), (7, 3), (50, 50)])
def test_the_sweep_visits_every_key_once_whatever_the_span_and_the_write_bound(tmp_path: Path, monkeypatch,
                                                                              span: int, per: int) -> None:
    """The pass's cursor (`at`) neither skips nor repeats a key at a span's or a write's bound —
    keys exactly a span, the last key, keys replaced by ones that sort before or after the
    cursor (the migration's cut) — and an empty table ends at once."""
    cfg_path = dir_disks_config(tmp_path, 2)
    with Store.open(config.load(cfg_path), init=True) as store:
        idx = store.index
        monkeypatch.setattr(held, "_SPAN", span)
        monkeypatch.setattr(held, "_PER", per)
        assert idx._sweep(lambda txn: lambda k: b"") == 0  # empty
        long = held.LONG_OBJ + held.LONG_MAN
        keys = sorted(hashlib.sha256(b"%d" % i).digest()[:long if i % 3 else held.OBJ + held.MAN] for i in range(span * 4))
        with idx.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"", db=idx.held)
        cut = {k: k[:held.OBJ] + k[held.LONG_OBJ:held.LONG_OBJ + held.MAN] for k in keys if len(k) == long}
        assert idx.shorten_held() == len(cut)
        with idx.env.begin() as txn:
            assert {bytes(k) for k in txn.cursor(db=idx.held).iternext(values=False)} == \
                   {cut.get(k, k) for k in keys}
        seen: list[bytes] = []

        def count(txn):
            return lambda k: seen.append(k)  # (None: nothing changed)

        idx._sweep(count)
        assert sorted(seen) == seen and len(set(seen)) == len(seen) == len({cut.get(k, k) for k in keys})
