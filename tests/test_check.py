"""`hoard check` (index ↔ disks ↔ database) and `hoard verify --orphans`, on real files:
each kind of damage injected for real and named; orphans set aside, never lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from hashlib import sha256
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.index import IndexDamaged
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.io.writer import _lock, _unlock
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.orphans import sweep
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files, use_schema

REPO = Path(__file__).resolve().parent.parent
OLD = time.time() - 3 * 86400


def _store(tmp_path: Path):
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=3))
    store = Store.open(cfg, init=True)
    res = store.put_many(make_files(tmp_path / "in", 120, seed=51))
    body = json.dumps({"files": [{"path": str(i), "sha256": r.sha256, "size": r.size}
                                 for i, r in enumerate(res[:60])]}).encode()
    store.register_batch("b", {"source": "t", "manifest": store.put_bytes(body).sha256, "files": 60, "bytes": 0})
    return store, res


def test_a_healthy_store_checks_clean(tmp_path: Path) -> None:
    """After puts, replicate and gc the index, the disks and the counters agree."""
    store, res = _store(tmp_path)
    try:
        assert check(store).ok, check(store).problems
        replicate_once(store, rate_mb_s=None)
        drop_batch(store, "b")
        gc(store, threshold=0.9)
        rep = check(store)
        assert rep.ok, rep.problems
        assert rep.totals["objects"] == 60 and rep.totals["replicas"] == 3 * rep.totals["shards"]
    finally:
        store.close()


def test_each_damage_is_named(tmp_path: Path, pg) -> None:
    """A missing replica file, a sealed replica that grew, an object missing from the index, a
    used-bytes counter that drifted and a database node without bytes are each named; the CLI
    exits 5."""
    from hoardfs.sql.migrate import migrate

    store, res = _store(tmp_path)
    metas = [m for m in store.index.iter_shards() if m.sealed]
    a, b = metas[0], metas[1]
    store.disks[a.replicas[0]].find(a.hex).unlink()
    with open(store.disks[b.replicas[0]].find(b.hex), "ab") as f:
        f.write(b"junk")
    victim = bytes.fromhex(res[100].sha256)
    with store.index.env.begin(write=True, db=store.index.objects) as txn:
        txn.delete(victim)
    store.index.adjust_used({a.replicas[1]: 4096})
    migrate(pg)
    ghost = os.urandom(32)
    (nid,) = pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true) RETURNING node_id",
                        [ghost]).fetchone()
    pg.execute("INSERT INTO physical_content (node_id, size) VALUES (%s, 1)", [nid])
    from hoardfs.sql.check import store_vs_database

    rep = check(store, lambda objs: store_vs_database(pg, objs))
    store.close()
    text = "\n".join(rep.problems)
    assert f"shard {a.hex}: its replica on" in text and "is missing" in text
    assert f"shard {b.hex} on" in text and "the index says" in text
    assert f"object {victim.hex()} is in a shard footer but not in the index" in text
    assert "the index counts" in text and "used" in text
    assert f"physical node {ghost.hex()}" in text
    assert set(rep.counts) >= {"missing replica", "replica size", "unindexed", "used bytes", "database"}
    cfg_path = use_schema(tmp_path, pg)
    cli = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg_path, "check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 5 and "disagrees: " in cli.stderr and "hoard: error:" in cli.stderr, cli.stderr


def test_a_truncated_replica_is_named_and_the_others_footer_is_read(tmp_path: Path) -> None:
    """A sealed replica cut short is a "replica size" disagreement — and only that: the shard's
    other replica still has its footer, so the record count and the footer's objects are
    checked against it (the first replica's missing seal made it "no readable replica
    footer", and an object missing from the index went unnamed)."""
    store, _res = _store(tmp_path)
    try:
        meta = next(m for m in store.index.iter_shards() if m.sealed)
        for disk in store.replica_order(meta)[:1]:
            with open(disk.find(meta.hex), "r+b") as f:
                f.truncate(meta.size // 2)
        victim = next(sha for sha, loc in store.index.iter_objects() if loc.shard_id == meta.shard_id)
        with store.index.env.begin(write=True, db=store.index.objects) as txn:
            txn.delete(victim)
        rep = check(store)
        assert rep.counts["replica size"] == 1 and rep.counts["unindexed"] == 1, rep.problems
        assert "footer" not in rep.counts and "record count" not in rep.counts, rep.problems
        assert f"object {victim.hex()} is in a shard footer but not in the index" in "\n".join(rep.problems)
    finally:
        store.close()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_malformed_index_entry_is_named_not_a_traceback(tmp_path: Path) -> None:
    """An objects-table value of the wrong length or a shard entry that is not JSON (an SSD
    that corrupted the index, a tool that wrote it): `hoard check` names each as "malformed"
    and goes on checking the rest, a read of that object fails in one line (exit 5) naming the
    rebuild, and the rebuild brings every object back."""
    store, res = _store(tmp_path)
    cfg = store.cfg
    victim, other = bytes.fromhex(res[3].sha256), bytes.fromhex(res[4].sha256)
    shard = store.index.lookup(other).shard_id
    with store.index.env.begin(write=True) as txn:
        txn.put(victim, b"short", db=store.index.objects)
        txn.put(shard, b"{not json", db=store.index.shards)
    # (a training loader's places of its samples: the same fields as a lookup, the bad one named)
    assert store.index.places_many([other, b"\0" * 32]) == [tuple(store.index.lookup(other)), None]
    with store.index.env.begin(write=True) as txn:  # (an empty value: not held, for both)
        txn.put(b"\1" * 32, b"", db=store.index.objects)
    assert store.index.places_many([b"\1" * 32]) == [None] and store.index.lookup_many([b"\1" * 32]) == {}
    with store.index.env.begin(write=True) as txn:
        txn.delete(b"\1" * 32, db=store.index.objects)
    with pytest.raises(IndexDamaged, match=f"the index entry of object {victim.hex()} is malformed"):
        store.index.places_many([other, victim])
    rep = check(store)
    store.close()
    text = "\n".join(rep.problems)
    assert rep.counts["malformed"] == 2, rep.problems
    assert f"the index entry of object {victim.hex()} is malformed (5 bytes" in text
    assert f"the index entry of shard {shard.hex()} is malformed" in text
    cli = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 5 and "malformed" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
    got = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "get", res[3].sha256],
                         cwd=REPO, capture_output=True, timeout=120)
    err = got.stderr.decode()
    assert got.returncode == 5 and "`hoard index rebuild`" in err and "Traceback" not in err, err
    rebuilt = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "index", "rebuild"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    with Store.open(cfg) as again:
        assert check(again).ok
        for r in res:
            assert sha256(again.get(r.sha256)).hexdigest() == r.sha256


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"a disk state the old index held is not kept", level="WARNING", optional=True)
@pytest.mark.parametrize("entry", ["disk record not JSON", "shard replicas null", "retired not JSON",
                                   "batch not JSON", "view a JSON list", "object key of 31 bytes"])
def test_every_table_s_malformed_entry_is_named_not_a_traceback(tmp_path: Path, entry: str) -> None:
    """As above for the other tables: a disk record that is not JSON traced back in every
    command (the store open reads them all) and made the advertised `hoard index rebuild` fail
    too; a shard entry of the wrong types (valid JSON) traced back in get, verify, check; a
    retired entry in gc; a batch or view in ls, info, view list and check; an object key that
    is no sha256 was only a "record count" mismatch. Each is one line (exit 5), and the
    rebuild brings the store back."""
    store, res = _store(tmp_path)
    cfg, idx = store.cfg, store.index
    some = bytes.fromhex(res[4].sha256)
    with idx.env.begin(write=True) as txn:
        if entry == "disk record not JSON":
            txn.put(next(iter(store.disks)).encode(), b"{bad", db=idx.disks)
        elif entry == "shard replicas null":
            sid = idx.lookup(some).shard_id
            doc = json.loads(txn.get(sid, db=idx.shards))
            txn.put(sid, json.dumps({**doc, "replicas": None}).encode(), db=idx.shards)
        elif entry == "retired not JSON":
            txn.put(b"\x01" * 12, b"{bad", db=idx.retired)
        elif entry == "batch not JSON":
            txn.put(b"b", b"{bad", db=idx.batches)
        elif entry == "view a JSON list":
            txn.put(b"v", b"[]", db=idx.views)
        else:
            txn.put(some[:31], idx.lookup(some).pack(), db=idx.objects)
    store.close()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                              capture_output=True, timeout=300)

    out = cli("check")
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 5 and "malformed" in err and "Traceback" not in err, err
    for args in (("get", res[4].sha256, "-o", os.devnull), ("info", res[4].sha256), ("ls",), ("view", "list"),
                 ("verify",), ("gc", "--no-database"), ("disks", "list")):
        got = cli(*args)
        err = got.stderr.decode(errors="replace")
        assert got.returncode in (0, 5) and "Traceback" not in err, (args, err)
    rebuilt = cli("index", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    with Store.open(cfg) as again:
        assert check(again).ok
        for r in res:
            assert sha256(again.get(r.sha256)).hexdigest() == r.sha256


def test_oddly_named_files_among_the_shards_are_orphans_not_a_failure(tmp_path: Path) -> None:
    """Files under `<disk>/shards/*/` whose names are no shard id are orphans (a note), never
    a check that fails: " .shard" made an empty index key (check refused, blaming the index),
    and a copy of a replica named in capitals — which no reader opens — was taken for the
    replica itself and not counted."""
    store, _res = _store(tmp_path)
    try:
        meta = next(m for m in store.index.iter_shards() if m.sealed)
        disk = store.disks[meta.replicas[0]]
        src = disk.find(meta.hex)
        upper = src.with_name(meta.hex.upper() + ".shard")
        shutil.copy(src, upper)
        odd = src.parent / " .shard"
        odd.write_bytes(b"not a shard")
        rep = check(store)
        assert rep.ok, rep.problems
        assert f"disk {disk.label}: {upper.stat().st_size + 11} bytes of shard files no index entry names" \
            in "\n".join(rep.notes), rep.notes
    finally:
        store.close()


def test_an_orphan_with_a_damaged_footer_is_kept_when_it_holds_unknown_objects(tmp_path: Path) -> None:
    """A stray `.shard` whose footer does not decode (bit rot) still holds its records, each
    checked on its own: when one is an object the index lacks (an index rebuilt while its only
    copy read as damaged), the sweep keeps it and says so. It took the file for unreadable,
    set it aside, and `--repair` deleted it — the only copy of those objects."""
    store, res = _store(tmp_path)
    try:
        disk = next(iter(store.disks.values()))
        other = next(m for m in store.index.iter_shards() if m.sealed)
        shards = disk.root / "shards" / "zz"
        shards.mkdir(parents=True, exist_ok=True)
        precious = shards / "0000000000000000000003zz.shard"
        data = bytearray(store.disks[other.replicas[0]].find(other.hex).read_bytes())
        data[-9] ^= 0xFF  # the footer's checksum
        precious.write_bytes(bytes(data))
        os.utime(precious, (OLD, OLD))
        some = next(sha for sha, loc in store.index.iter_objects() if loc.shard_id == other.shard_id)
        with store.index.env.begin(write=True, db=store.index.objects) as txn:  # its only index entry goes
            txn.delete(some)
        rep = sweep(store, repair=True, grace_s=0)
        assert precious.exists() and rep.set_aside == [] and rep.deleted == []
        assert any("hoard index rebuild" in u and some.hex() in u for u in rep.unindexed), rep.unindexed
    finally:
        store.close()


@pytest.mark.lab
def test_an_orphan_that_does_not_read_is_kept(lab_factory, tmp_path: Path) -> None:
    """A shard file no index entry names that answers EIO (a dying disk, or one that resets):
    the sweep took "unreadable" for "nothing in it", set it aside and `--repair` deleted it —
    the only copy of its objects when an index rebuild had left them out. It is kept and
    named (exit 5 from the CLI), where it is."""
    from tests.helpers import write_config
    from tests.lab import DiskProfile
    from tests.test_cli import hoard

    lab = lab_factory([DiskProfile(f"k{i}", 120, 500, 500, 5000) for i in (1, 2)], throttle=False)
    disks = [(label, lab.disks[label].mountpoint, None) for label in ("k1", "k2")]
    cfg_path = write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=1, copy_of_raw=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        store.put_bytes_many([os.urandom(50_000) for _ in range(30)])
        meta = next(m for m in store.index.iter_shards() if m.sealed)
        src = store.disks[meta.replicas[0]].find(meta.hex)
    stray = lab.disks["k1"].mountpoint / "shards" / "zz" / "0000000000000000000004zz.shard"
    stray.parent.mkdir()
    shutil.copy(src, stray)
    os.utime(stray, (OLD, OLD))
    lab.fail_eio_in("k1", stray)
    res = hoard("--config", str(cfg_path), "verify", "--orphans", "--repair", "--grace-h", "0")
    assert res.returncode == 5, res.stdout + res.stderr
    assert f"kept: {stray} does not read" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert stray.exists() and not list((lab.disks["k1"].mountpoint / "orphans").glob("*"))


@pytest.mark.expect_log(r"set aside to .*: no index entry names it", level="WARNING")
def test_orphans_are_set_aside_never_lost(tmp_path: Path) -> None:
    """A fresh stray file is left alone; an old one is moved aside and only `--repair` deletes
    it once it has been aside longer than the grace; a stray shard holding objects the index
    lacks is kept and reported; an open shard whose writer is alive is not touched."""
    store, res = _store(tmp_path)
    try:
        disk = next(iter(store.disks.values()))
        meta = next(m for m in store.index.iter_shards() if m.sealed)
        src = store.disks[meta.replicas[0]].find(meta.hex)
        shards = disk.root / "shards" / "zz"
        shards.mkdir(parents=True, exist_ok=True)
        fresh = shards / "0000000000000000000000zz.shard"
        shutil.copy(src, fresh)  # a copy of known objects, no index entry
        old = shards / "0000000000000000000001zz.shard"
        shutil.copy(src, old)
        os.utime(old, (OLD, OLD))
        live = shards / "0000000000000000000002zz.open"
        live.write_bytes(b"being written")
        os.utime(live, (OLD, OLD))
        lock = _lock(store.lock_path(live.stem))
        other = [m for m in store.index.iter_shards() if m.sealed and m.shard_id != meta.shard_id][0]
        precious = shards / "0000000000000000000003zz.shard"
        shutil.copy(store.disks[other.replicas[0]].find(other.hex), precious)
        os.utime(precious, (OLD, OLD))
        some = next(sha for sha, loc in store.index.iter_objects() if loc.shard_id == other.shard_id)
        with store.index.env.begin(write=True, db=store.index.objects) as txn:  # its only index entry goes
            txn.delete(some)
        rep = sweep(store)
        assert fresh.exists() and live.exists() and rep.too_young == 1 and rep.writer_alive == 1
        assert not old.exists() and len(rep.set_aside) == 1
        aside = Path(rep.set_aside[0])
        assert aside.parent == disk.root / "orphans" and aside.read_bytes() == src.read_bytes()
        assert precious.exists() and any("hoard index rebuild" in u and some.hex() in u for u in rep.unindexed)
        assert sweep(store, repair=True).deleted == []  # aside for less than the grace
        os.utime(aside, (OLD, OLD))
        assert sweep(store, repair=True).deleted == [str(aside)]
        _unlock(store.lock_path(live.stem), lock)
    finally:
        store.close()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_put_that_filled_the_disks_leaves_nothing_check_cannot_clear(tmp_path: Path) -> None:
    """`hoard put` of large files hits disks full (exit 6), `hoard delete --object`
    of what it stored, `hoard gc` → `hoard check` exit 5 "chunk map entry for <sha>, which is
    not in the store … 1 stale mark" with no next step. Now gc clears stale chunk maps, check
    names the command, and following its advice makes check exit 0."""
    cfg = dir_disks_config(tmp_path, 2, cap=0.04, shard_size_mb=1)  # 2 × 40 MB, two copies of raw
    Store.open(config.load(cfg), init=True).close()
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):  # 6 × 9 MB streamed objects (each with a chunk map): the disks fill on the 4th or 5th
        (src / f"f{i}.bin").write_bytes(os.urandom(9 << 20))
    put = _cli(cfg, "put", "--json", *sorted(map(str, src.iterdir())))
    assert put.returncode == 6, put.stdout + put.stderr
    stored = [json.loads(line)["sha256"] for line in put.stdout.splitlines()]
    assert stored and len(stored) < 6
    rel = _cli(cfg, "delete", *[a for sha in stored for a in ("--object", sha)])
    assert rel.returncode == 0, rel.stderr
    assert _cli(cfg, "gc", "--no-database", "--threshold", "1.0").returncode == 0
    checked = _cli(cfg, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a stale chunk map made otherwise (a put killed between its map and its record): check
    # names `hoard gc`, and after it check is clean
    with Store.open(config.load(cfg)) as store:
        store.index.put_chunks(b"\x42" * 32, b"\x00" * 16)
    stale = _cli(cfg, "check")
    assert stale.returncode == 5 and "chunk map entry for 4242" in stale.stdout + stale.stderr
    advice = stale.stdout + stale.stderr
    assert "`hoard gc`" in advice, advice
    assert _cli(cfg, "gc", "--no-database").returncode == 0
    assert _cli(cfg, "check").returncode == 0


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
