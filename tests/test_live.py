"""The `live` table (fsd/core/live.py): gc plans from per-shard counts kept with every
change to the objects table, so `hoard gc --dry-run` and a gc's plan read the dead objects'
entries, not every object. What it must never do is lose an acknowledged object: a put, a
deletion or a gc killed at any of their write transactions leaves counts `hoard check` finds
exact and every kept object readable; a count that is wrong, or a footer that lacks a record,
only keeps a shard; the migration (killed too) and `hoard index recount` make the counts the one
pass over the objects makes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats, live
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import ObjectLoc
from hoardfs.fsd.core.txnlog import KILL_VAR
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.reindex import rebuild_index
from hoardfs.fsd.outputs.manifest import batch_manifest
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, freed, older_index, reads_back

# tier: the module's tests start hoard processes
pytestmark = pytest.mark.services

#: many write transactions for a few hundred objects (each a place to be killed)
SMALL = {"HOARD_LMDB_TXN_ENTRIES": "120"}


def _objects(store: Store, n: int, seed: int) -> list[bytes]:
    datas = [hashlib.sha256(f"{seed}:{i}".encode()).digest() * (1 + i % 7) for i in range(n)]
    return [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]


def _register(store: Store, batch_id: str, shas: list[bytes]) -> None:
    body = batch_manifest(batch_id, "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(shas)},
                          {f"f{i}": 0 for i in range(len(shas))}, [], [])
    store.register_batch(batch_id, {"source": "t", "manifest": store.put_bytes(body).sha256, "files": len(shas),
                                    "bytes": 0})


def _shop(tmp_path: Path) -> tuple[Path, list[bytes], list[bytes]]:
    """Batch A (to be deleted) and batch B (kept) in the same shards; returns A's and B's objects."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        every = _objects(store, 400, 1)
        a, b = every[:250], every[250:]
        _register(store, "A", a)
        _register(store, "B", b)
    return cfg_path, a, b


def _tables(index_dir: Path) -> tuple[dict[bytes, tuple[int, int]], dict[bytes, tuple[int, int]], bytes | None]:
    """(the `live` table as stored, the counts the objects table makes, the fill key)."""
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            table = {bytes(k): live.unpack(bytes(v)) for k, v in txn.cursor(db=env.open_db(b"live", txn=txn,
                                                                                             create=False))}
            fill = txn.get(live.FILL, db=env.open_db(b"meta", txn=txn, create=False))
            fill = None if fill is None else bytes(fill)
    finally:
        env.close()
    return table, _counted(index_dir, below=b"\xff" * 33), fill


def _counted(index_dir: Path, below: bytes) -> dict[bytes, tuple[int, int]]:
    """The counts of the objects whose sha256 is below `below`, as the objects table makes them."""
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            made: dict[bytes, tuple[int, int]] = {}
            for k, v in txn.cursor(db=env.open_db(b"objects", txn=txn, create=False)):
                if bytes(k) < below:
                    loc = ObjectLoc.unpack(bytes(v), bytes(k))
                    n, nbytes = made.get(loc.shard_id, (0, 0))
                    made[loc.shard_id] = (n + 1, nbytes + loc.length)
        return made
    finally:
        env.close()


def _exact(cfg_path: Path) -> dict[bytes, tuple[int, int]]:
    table, made, fill = _tables(config.load(cfg_path).index_dir)
    assert fill is None and table == made
    return table


def _hoard(cfg_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full.pop("HOARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args], capture_output=True,
                          text=True, env=full, cwd=REPO, timeout=600)


def _run(cfg_path: Path, code: str, env: dict) -> subprocess.CompletedProcess[str]:
    """`code` (with `s`, the store opened writable) in a process of its own."""
    full = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store\n"
            "s = Store.open(config.load(sys.argv[1]))\n" + code + "\ns.close()")
    return subprocess.run([sys.executable, "-c", full, str(cfg_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO, timeout=600)


def _clean(cfg_path: Path) -> None:
    res = _hoard(cfg_path, "check", "--no-database", "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    _exact(cfg_path)


def test_the_counts_follow_puts_deletion_gc_rebuild_and_recount(tmp_path: Path) -> None:
    """After puts, a batch deleted and gc'd, an index rebuilt from the disks and a recount, the
    table is exactly what the objects table makes, and check is clean each time."""
    cfg_path, a, b = _shop(tmp_path)
    grown = _exact(cfg_path)
    assert sum(n for n, _ in grown.values()) == 402  # (and the two manifests)
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        rep = gc(store, threshold=1.0)
        assert rep.compacted and rep.objects_dropped >= 250
    _clean(cfg_path)
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    after = _exact(cfg_path)
    rebuild_index(config.load(cfg_path))
    assert _tables(config.load(cfg_path).index_dir)[0] == after
    with Store.open(config.load(cfg_path)) as store:
        assert store.index.format == formats.INDEX and store.index.live_ready()
    res = _hoard(cfg_path, "index", "recount", env=SMALL)
    counted = sum(n for n, _ in after.values())
    assert res.returncode == 0 and f"from {counted} objects" in res.stdout, res.stdout + res.stderr[-2000:]
    assert _exact(cfg_path) == after
    _clean(cfg_path)


class _Counting:
    """A proxy of an LMDB environment, its transactions and cursors that counts every entry of
    one table (`db`) read through them — the test's own measurement, not the code's."""

    def __init__(self, inner: Any, db: Any, tally: list[int]) -> None:
        self._inner, self._db, self._tally = inner, db, tally

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> Any:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    def __iter__(self) -> Any:
        for item in self._inner:
            self._tally[0] += 1
            yield item


class _Env(_Counting):
    def begin(self, db: Any = None, **kw: Any) -> Any:
        return _Txn(self._inner.begin(db=db, **kw), self._db, self._tally, db is self._db)


class _Txn(_Counting):
    def __init__(self, inner: Any, db: Any, tally: list[int], default: bool) -> None:
        super().__init__(inner, db, tally)
        self._default = default

    def _ours(self, db: Any) -> bool:
        return db is self._db or (db is None and self._default)

    def get(self, key: bytes, default: Any = None, db: Any = None) -> Any:
        if self._ours(db):
            self._tally[0] += 1
        return self._inner.get(key, default, db=db) if db is not None else self._inner.get(key, default)

    def cursor(self, db: Any = None) -> Any:
        cur = self._inner.cursor(db=db) if db is not None else self._inner.cursor()
        return _Cursor(cur, self._db, self._tally) if self._ours(db) else cur


class _Cursor(_Counting):
    def iternext(self, *a: Any, **kw: Any) -> Any:
        for item in self._inner.iternext(*a, **kw):
            self._tally[0] += 1
            yield item

    def set_range(self, key: bytes) -> bool:
        self._tally[0] += 1
        return self._inner.set_range(key)

    def first(self) -> bool:
        self._tally[0] += 1
        return self._inner.first()

    def next(self) -> bool:
        self._tally[0] += 1
        return self._inner.next()


def test_a_dry_run_reads_the_dead_objects_not_the_store(tmp_path: Path) -> None:
    """`hoard gc --dry-run` after a batch of 30 objects was deleted from a store of 2,030 reads
    the objects table for those 30 (one lookup each), not for the 2,000 others — and plans what
    the pass over every object plans."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        doomed = _objects(store, 30, 7)
        _register(store, "A", doomed)
        _objects(store, 2000, 8)
        drop_batch(store, "A")
        rep, reads = _dry_run_counted(store)
        assert rep.candidates >= 1
        assert 0 < reads <= 31, reads  # the 30 objects and the manifest (its tombstone)
        store.index.format = formats.INDEX_LIVE - 1  # (as an index not migrated yet, or the old code: the pass)
        by_pass, reads = _dry_run_counted(store)
        assert by_pass.plan == rep.plan
        assert reads >= 2030, reads  # (what the proxy sees of a pass)


def _dry_run_counted(store: Store) -> tuple[Any, int]:
    """`gc --dry-run`'s report, and how many entries of the objects table it read."""
    reads = [0]
    real = store.index.env._env
    store.index.env._env = _Env(real, store.index.objects, reads)
    try:
        return gc(store, threshold=0.999, dry_run=True), reads[0]
    finally:
        store.index.env._env = real


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.index:add_objects:1", "hoardfs.fsd.core.index:add_objects:3"])
def test_a_put_killed_at_its_commits_leaves_exact_counts(tmp_path: Path, site: str) -> None:
    """`put` killed (SIGKILL) right after one of its index commits: every object it committed reads
    back, check (which recounts) is clean, and a gc after a deletion loses nothing."""
    cfg_path, a, b = _shop(tmp_path)
    code = ("from hashlib import sha256\n"
            "for j in range(0, 300, 30): s.put_bytes_many([sha256(b'%d' % i).digest() * 40 for i in range(j, j + 30)])")
    res = _run(cfg_path, code, {**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    _clean(cfg_path)
    with Store.open(config.load(cfg_path)) as store:
        kept = [sha for i in range(300)
                if store.index.lookup(sha := hashlib.sha256(hashlib.sha256(b"%d" % i).digest() * 40).digest())]
        drop_batch(store, "A")
        gc(store, threshold=1.0)
    reads_back(cfg_path, b + kept)
    freed(cfg_path, a)
    _clean(cfg_path)


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.marks:_mark:1", "hoardfs.fsd.core.index:add_objects:1",
                                  "hoardfs.fsd.maintenance.gc:_swap:1", "hoardfs.fsd.maintenance.gc:_swap:2",
                                  "hoardfs.fsd.maintenance.gc:_swap:3", "hoardfs.fsd.maintenance.gc:_swap:4",
                                  "hoardfs.fsd.maintenance.gc:_finish_retired:1"])
def test_a_deletion_or_gc_killed_anywhere_loses_nothing(tmp_path: Path, site: str) -> None:
    """`delete --batch A` and the gc after it, killed after one of their write transactions (the
    tombstones, a commit of gc's copies, a swap's repoints — three of 56 objects — or its drops,
    a retired shard's deletion): the counts stay exact,
    B's objects read back; run again, A's are freed and check is clean."""
    cfg_path, a, b = _shop(tmp_path)
    steps = "from hoardfs.fsd.maintenance.deletion import drop_batch; from hoardfs.fsd.maintenance.gc import gc\n" \
            "drop_batch(s, 'A'); gc(s, threshold=1.0)"
    res = _run(cfg_path, steps, {**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    _exact(cfg_path)
    reads_back(cfg_path, b)
    again = _run(cfg_path, "from hoardfs.fsd.maintenance.deletion import drop_batch; drop_batch(s, 'A')", SMALL)
    assert again.returncode == 0 or "no ingested batch 'A'" in again.stderr, again.stderr[-2000:]
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    _clean(cfg_path)


def _cut_footer(store: Store, sid: bytes, sha: bytes) -> None:
    """Rewrite every replica of shard `sid` with a footer that no longer lists object `sha` (its
    bytes stay where they are): a footer that lacks a record."""
    meta = store.index.get_shard(sid)
    for disk in store.replica_order(meta):
        path = disk.find(meta.hex)
        data = path.read_bytes()
        recs = fmt.decode_footer(lambda off, n, d=data: d[off:off + n], len(data))
        assert recs is not None and any(r.sha256 == sha for r in recs)
        at = len(data) - len(recs) * fmt.FOOTER_ENTRY_SIZE - fmt.TRAILER_SIZE
        os.chmod(path, 0o644)
        path.write_bytes(data[:at] + fmt.encode_footer([r for r in recs if r.sha256 != sha], at))


@pytest.mark.expect_log(r"gc: shard [0-9a-f]+ left as it is this round: no replica's footer lists its whole body",
                        level="WARNING")
def test_a_footer_that_lacks_a_live_record_keeps_its_shard(tmp_path: Path) -> None:
    """A sealed shard whose footer (on every replica) lost the entry of one of B's objects: gc
    takes a shard's members from its footer only when it lists the whole body, so it leaves the
    shard as it is (behind that, its swap would see the count left above the dead ones and keep
    it). The object still reads (it is freed only with its shard); a gc that trusted the footer
    alone retired it and lost the object."""
    cfg_path, a, b = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        victim = b[0]
        sid = store.index.lookup(victim).shard_id
        _cut_footer(store, sid, victim)
        drop_batch(store, "A")
        rep = gc(store, threshold=1.0)
        assert hashlib.sha256(store.get(victim.hex())).digest() == victim
        assert rep.kept_damaged >= 1 and not rep.kept_back
        assert store.index.lookup(victim).shard_id == sid and store.index.get_shard(sid) is not None
    reads_back(cfg_path, b)


@pytest.mark.expect_log(r"gc: shard [0-9a-f]+ kept: the index counts \d+ objects in it", level="WARNING")
def test_a_wrong_count_only_keeps_or_compacts_and_check_names_it(tmp_path: Path) -> None:
    """A count raised in the table (and another lowered): check names both with `hoard index
    recount`; gc keeps the shard counted too high (nothing dropped from it), loses nothing; the
    recount mends the table, and the next gc frees A's objects."""
    cfg_path, a, b = _shop(tmp_path)
    cfg = config.load(cfg_path)
    with Store.open(cfg) as store:
        sids = sorted({store.index.lookup(sha).shard_id for sha in a + b})
        with store.index.env.begin(write=True) as txn:
            for sid, delta in zip(sids, (1, -1), strict=False):
                n, nbytes = live.unpack(txn.get(sid, db=store.index.live))
                txn.put(sid, live.pack(n + delta, nbytes), db=store.index.live)
        lines = [line for kind, line in check(store).lines() if kind == "live count"]
        assert len(lines) == min(2, len(sids)) and all("`hoard index recount`" in line for line in lines), lines
        drop_batch(store, "A")
        gc(store, threshold=1.0)
        assert store.index.get_shard(sids[0]) is not None  # counted one too many: kept
    reads_back(cfg_path, b)
    res = _hoard(cfg_path, "index", "recount")
    assert res.returncode == 0, res.stderr[-2000:]
    _exact(cfg_path)
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0")
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    _clean(cfg_path)


@pytest.mark.parametrize("kill", [None, "hoardfs.fsd.core.live:fill_live:1", "hoardfs.fsd.core.live:fill_live:3"])
def test_the_migration_fills_the_table_even_when_killed(tmp_path: Path, kill: str | None) -> None:
    """An index of format 3 (no table) is read as it is (gc's plan makes its pass); `hoard index
    migrate` — killed in its fill and run again — makes the table the store grew, byte for byte."""
    cfg_path, a, b = _shop(tmp_path)
    cfg = config.load(cfg_path)
    with Store.open(cfg) as store:
        drop_batch(store, "A")
    grown = _exact(cfg_path)
    older_index(cfg.index_dir, 3, "live")  # (as format 3 wrote it)
    with Store.open(cfg, writable=False) as store:
        assert store.index.format == 3 and not store.index.live_ready()
    if kill is not None:
        res = _hoard(cfg_path, "index", "migrate", env={**SMALL, KILL_VAR: kill})
        assert res.returncode == -9, res.stderr[-2000:]
        with Store.open(cfg, writable=False) as store:
            assert store.index.format == 3
        assert _tables(cfg.index_dir)[2] is not None  # (a fill under way: check does not judge it)
        res = _hoard(cfg_path, "check", "--no-database", "--json")
        assert res.returncode == 0, res.stdout[-2000:]
    res = _hoard(cfg_path, "index", "migrate", env=SMALL)
    assert res.returncode == 0 and "(migrated from format 3)" in res.stdout, res.stderr[-2000:]
    assert _exact(cfg_path) == grown
    assert json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"] == []
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0")
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    _clean(cfg_path)


def test_a_recount_killed_leaves_gc_planning_by_the_pass_until_run_again(tmp_path: Path) -> None:
    """`hoard index recount` killed in its pass: check notes the fill (no problem: nothing is
    wrong, the counts are only not complete), gc plans by a pass meanwhile and frees A's objects
    alone; the recount run again makes the counts exact."""
    cfg_path, a, b = _shop(tmp_path)
    res = _hoard(cfg_path, "index", "recount", env={**SMALL, KILL_VAR: "hoardfs.fsd.core.live:fill_live:2"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert _tables(config.load(cfg_path).index_dir)[2] is not None
    with Store.open(config.load(cfg_path)) as store:  # puts beside the stopped fill count below its mark only
        _objects(store, 200, 9)
    table, _made, fill = _tables(config.load(cfg_path).index_dir)
    assert fill and table == _counted(config.load(cfg_path).index_dir, below=fill)
    got = json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)
    assert got["problems"] == [] and any("`hoard index recount`" in n for n in got["notes"]), got
    with Store.open(config.load(cfg_path)) as store:
        assert not store.index.live_ready()
        drop_batch(store, "A")
        assert gc(store, threshold=1.0).compacted
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    assert _hoard(cfg_path, "index", "recount", env=SMALL).returncode == 0
    _clean(cfg_path)


@pytest.mark.expect_log(r"gc: shard [0-9a-f]+ left as it is this round: no replica's footer lists its whole body",
                        level="WARNING")
@pytest.mark.expect_log(r"verify error on shard [0-9a-f]+: .*: \d+ records, the footer lists \d+", level="WARNING")
def test_a_count_too_low_beside_a_footer_that_lacks_a_record_loses_nothing(tmp_path: Path) -> None:
    """A sealed shard whose footer (every replica's) lacks one of B's objects, and whose `live`
    count was lowered by one by hand (check names both): gc must not take that footer for the
    shard's members. The old code copied the listed ones, found the count down to the dead ones
    and retired the shard — the object's only bytes were deleted. The next steps check names
    (`hoard verify --repair` reseals the footer, `hoard index recount`) then let gc free A's."""
    cfg_path, a, b = _shop(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        victim = b[0]
        loc = store.index.lookup(victim)
        _cut_footer(store, loc.shard_id, victim)

        def cut(m: Any) -> dict[str, int]:  # (as if sealed so: the index records the files' size)
            m.size -= fmt.FOOTER_ENTRY_SIZE
            return {u: -fmt.FOOTER_ENTRY_SIZE for u in m.replicas}

        store.index.update_shard(loc.shard_id, cut)
        with store.index.env.begin(write=True) as txn:
            n, nbytes = live.unpack(txn.get(loc.shard_id, db=store.index.live))
            txn.put(loc.shard_id, live.pack(n - 1, nbytes - loc.length), db=store.index.live)
        found = {kind for kind, _ in check(store).lines()}
        assert {"live count", "record count"} <= found, found
        drop_batch(store, "A")
        gc(store, threshold=1.0)
        assert hashlib.sha256(store.get(victim.hex())).digest() == victim
    reads_back(cfg_path, b)
    res = _hoard(cfg_path, "verify", "--repair")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert _hoard(cfg_path, "index", "recount").returncode == 0
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0")
    assert res.returncode == 0, res.stderr[-2000:]
    reads_back(cfg_path, b)
    freed(cfg_path, a)
    _clean(cfg_path)
