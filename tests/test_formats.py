"""Formats and upgrades (fsd/core/formats.py): an index of the previous format is migrated and
every object reads back; a migration killed half-way is migrated again by the next open; an
index a later hoardfs wrote is refused for writing with one line, and not one byte changes;
what was live before a migration is live after it (gc and an index rebuild free nothing)."""

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
from hoardfs.fsd.core import formats
from hoardfs.fsd.core.records import ObjectNotFound
from hoardfs.fsd.maintenance.deletion import hide, release
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.reindex import rebuild_index
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files, missing

REPO = Path(__file__).resolve().parents[1]
#: the last commit whose index carries no format: the previous release, run as is
PREVIOUS = "aa56867"


def _batch(store: Store, batch_id: str, results) -> None:
    body = json.dumps({"format": formats.BATCH_MANIFEST, "batch_id": batch_id, "files": [
        {"path": Path(r.path).name, "sha256": r.sha256, "size": r.size} for r in results]}).encode()
    put = store.put_bytes(body)
    store.register_batch(batch_id, {"source": "test", "manifest": put.sha256, "files": len(results),
                                    "bytes": sum(r.size for r in results)})


def _store(tmp_path: Path, batches: int = 2) -> tuple[Path, dict[str, list[str]]]:
    """A store with batches, a view, roots, a hidden object, a pin and a tombstoned object;
    returns its config and the sha256s of each kind."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    files = make_files(tmp_path / "in", 24 + batches * 3)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(files)
        for b in range(batches):
            _batch(store, f"b{b:03d}", res[24 + 3 * b:27 + 3 * b])
        define_view_rows(store, "v1", [(f"dir/{i}.bin", r.sha256) for i, r in enumerate(res[:6])])
        store.index.mark(store.index.rooted, [bytes.fromhex(r.sha256) for r in res[6:12]], "put")
        hide(store, [bytes.fromhex(res[12].sha256)], "hidden")
        store.pin("ingest-b999", [r.sha256 for r in res[13:16]], "a running ingest")
        release(store, [bytes.fromhex(r.sha256) for r in res[16:24]], "released")
    kinds = {"live": [r.sha256 for r in res[:16] + res[24:]], "released": [r.sha256 for r in res[16:24]]}
    return cfg_path, kinds


def _as_previous_format(index_dir: Path) -> None:
    """Make an index what the releases before the `format` key wrote: no key, each disk's last-seen
    time inside its record (the release that kept it there), no `pointers` table and none of
    its stamps (the releases before it)."""
    env = lmdb.open(str(index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        meta, disks = env.open_db(b"meta", txn=txn), env.open_db(b"disks", txn=txn)
        txn.drop(env.open_db(b"pointers", txn=txn), delete=True)
        seen = {}
        for k, v in list(txn.cursor(db=meta)):
            k = bytes(k)
            if k.startswith(b"disk_seen:"):
                seen[k[10:]] = float(v)
            if k == formats.INDEX_KEY.encode() or k.startswith((b"disk_seen:", b"pointers_")):
                txn.delete(k, db=meta)
        for k, v in list(txn.cursor(db=disks)):
            rec = json.loads(v)
            rec["seen"] = seen.get(bytes(k), 0.0)
            txn.put(k, json.dumps(rec).encode(), db=disks)
    env.close()


def _raw(index_dir: Path, table: bytes) -> dict[bytes, bytes]:
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            try:
                db = env.open_db(table, txn=txn, create=False)
            except lmdb.NotFoundError:
                return {}
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}
    finally:
        env.close()


def _reads_back(store: Store, shas: list[str]) -> None:
    for sha in shas:
        assert hashlib.sha256(store.get(sha)).hexdigest() == sha


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes (LMDB's lock file aside: a reader's slot, no data)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def _hoard(*args: str, env: dict[str, str] | None = None, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    full.pop("HOARD_CONFIG", None)
    if pythonpath is not None:
        full["PYTHONPATH"] = str(pythonpath)
    # (the previous release's code, at `pythonpath`, is the `fsd` package of its own layout)
    module = "fsd" if pythonpath is not None else "hoardfs"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full,
                          cwd=pythonpath or REPO, timeout=300)


def _put_killed_in_migration(cfg_path: Path, kill: str) -> Path:
    """Make the store's index the previous format and `hoard put` a new file into it, killed
    (SIGKILL) after the write transaction `kill` names (HOARD_LMDB_KILL_AFTER, one pointer a
    transaction); the file it was putting."""
    _as_previous_format(config.load(cfg_path).index_dir)
    extra = cfg_path.parent / "extra.bin"
    extra.write_bytes(b"written after the upgrade")
    killed = _hoard("--config", str(cfg_path), "put", str(extra),
                    env={"HOARD_LMDB_TXN_ENTRIES": "68", "HOARD_LMDB_KILL_AFTER": kill})
    assert killed.returncode == -9, (kill, killed.stdout, killed.stderr)
    return extra


@pytest.mark.services  # (runs `hoard` in a process)
def test_previous_format_is_migrated_and_every_object_reads_back(tmp_path: Path) -> None:
    """An index without a format (disk records holding `seen`, no pointers table) opened for
    writing is format 2 after, its pointers name every batch and view, no disk record carries
    `seen`, and every object reads back."""
    cfg_path, kinds = _store(tmp_path)
    cfg = config.load(cfg_path)
    _as_previous_format(cfg.index_dir)
    with Store.open(cfg, writable=False) as store:  # a read-only open reads it as it is, changing nothing
        assert store.index.format == formats.INDEX_UNVERSIONED
        _reads_back(store, kinds["live"])
    assert formats.INDEX_KEY.encode() not in _raw(cfg.index_dir, b"meta")
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX
        _reads_back(store, kinds["live"])
        assert sorted(store.index.pointer_bodies()[1]) == ["batches/b000.json", "batches/b001.json", "views/v1.json"]
    assert _raw(cfg.index_dir, b"meta")[formats.INDEX_KEY.encode()] == str(formats.INDEX).encode()
    assert not any("seen" in json.loads(v) for v in _raw(cfg.index_dir, b"disks").values())
    assert len([k for k in _raw(cfg.index_dir, b"meta") if k.startswith(b"disk_seen:")]) == 3
    check = _hoard("--config", str(cfg_path), "check", "--json", "--no-database")
    assert json.loads(check.stdout)["formats"]["index"] == {"found": formats.INDEX, "known": formats.INDEX, "state": "ok"}, check.stderr


@pytest.mark.services  # (runs `hoard` in a process)
def test_a_migration_killed_half_way_is_done_by_the_next_open(tmp_path: Path) -> None:
    """`hoard put` killed after the first of the pointer migration's transactions (one pointer
    each) leaves an index without its format; the next writable open migrates it whole."""
    cfg_path, kinds = _store(tmp_path, batches=6)
    cfg = config.load(cfg_path)
    extra = _put_killed_in_migration(cfg_path, "hoardfs.fsd.core.pointers:align_pointers:2")
    half = _raw(cfg.index_dir, b"pointers")
    assert 0 < len(half) < 7 and formats.INDEX_KEY.encode() not in _raw(cfg.index_dir, b"meta")
    done = _hoard("--config", str(cfg_path), "put", str(extra), env={"HOARD_LMDB_TXN_ENTRIES": "68"})
    assert done.returncode == 0, done.stderr
    assert _raw(cfg.index_dir, b"meta")[formats.INDEX_KEY.encode()] == str(formats.INDEX).encode()
    assert len(_raw(cfg.index_dir, b"pointers")) == 7
    with Store.open(cfg) as store:
        _reads_back(store, kinds["live"] + [hashlib.sha256(extra.read_bytes()).hexdigest()])
        for disk in store.disks.values():  # the disks took every pointer the index names
            assert sorted(p.name for p in (disk.root / "batches").glob("*.json")) == [f"b{b:03d}.json" for b in range(6)]


@pytest.mark.services  # (runs `hoard` in a process)
def test_a_newer_index_is_refused_for_writing_and_no_byte_changes(tmp_path: Path) -> None:
    """An index a later hoardfs wrote (this format + 1): `hoard put` says so in one line naming the
    index, both versions and the upgrade, and exits 3; `hoard get` still reads; not one byte
    of the SSD or the disks changes."""
    cfg_path, kinds = _store(tmp_path)
    cfg = config.load(cfg_path)
    newer = formats.INDEX + 1
    env = lmdb.open(str(cfg.index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        txn.put(formats.INDEX_KEY.encode(), str(newer).encode(), db=env.open_db(b"meta", txn=txn))
    env.close()
    before = _files(tmp_path)
    new = tmp_path / "new.bin"
    new.write_bytes(b"not to be written")
    put = _hoard("--config", str(cfg_path), "put", str(new))
    assert put.returncode == 3, put.stderr
    line = put.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"the index at {cfg.index_dir} is format {newer}, newer than this hoardfs knows ({formats.INDEX})" in line
    assert "upgrade hoardfs" in line and "Upgrade" in line
    migrate = _hoard("--config", str(cfg_path), "index", "migrate")
    assert migrate.returncode == 3 and migrate.stderr.strip().endswith(line.split("hoard: error: ")[-1])
    out = tmp_path.parent / f"{tmp_path.name}-got.bin"  # (outside the tree compared)
    got = _hoard("--config", str(cfg_path), "get", kinds["live"][0], "-o", str(out))
    assert got.returncode == 0, got.stderr  # reads go on
    assert hashlib.sha256(out.read_bytes()).hexdigest() == kinds["live"][0]
    new.unlink()
    assert _files(tmp_path) == before
    check = _hoard("--config", str(cfg_path), "check", "--json", "--no-database")
    assert check.returncode == 5 and json.loads(check.stdout)["formats"]["index"]["state"] == "newer"
    assert any(f"is format {newer}, newer than" in p for p in json.loads(check.stdout)["problems"])


@pytest.mark.services  # (runs `hoard` in a process)
def test_a_newer_disk_identity_refuses_writes(tmp_path: Path) -> None:
    """A disk whose identity a later hoardfs wrote (`format` 2): `hoard put` refuses naming the
    disk, nothing changes; `hoard check` names it as a problem."""
    cfg_path, kinds = _store(tmp_path)
    ident = tmp_path / "d1" / ".hoard-disk.json"
    ident.write_text(json.dumps({**json.loads(ident.read_text()), "format": formats.IDENTITY + 1}))
    before = _files(tmp_path)
    put = _hoard("--config", str(cfg_path), "put", str(tmp_path / "in" / sorted(os.listdir(tmp_path / "in"))[0]))
    assert put.returncode == 3 and "the identity of disk d1 is format 2, newer than this hoardfs knows (1)" \
        in put.stderr, put.stderr
    assert _files(tmp_path) == before
    check = _hoard("--config", str(cfg_path), "check", "--json", "--no-database")
    found = json.loads(check.stdout)
    assert check.returncode == 5 and found["formats"]["identities"]["disk d1"] == 2
    assert found["counts"] == {"newer format": 1}


def test_newer_shard_and_manifest_are_named(tmp_path: Path) -> None:
    """A shard header and a manifest of a later version are refused by their readers with the
    upgrade's line, not taken for damage."""
    from hoardfs.fsd.core import shardfmt
    from hoardfs.fsd.outputs.manifest import iter_files

    header = bytearray(shardfmt.encode_shard_header(shardfmt.ShardHeader(b"\1" * 12, shardfmt.CLASS_RAW)))
    header[8:10] = (shardfmt.VERSION + 1).to_bytes(2, "little")
    with pytest.raises(shardfmt.UnsupportedVersion, match="upgrade hoardfs"):
        shardfmt.decode_shard_header(bytes(header))
    doc = json.dumps({"format": "hoardfs-view-4", "root": "00" * 32}).encode()
    with pytest.raises(formats.NewerFormat, match="is format 4, newer than this hoardfs knows \\(3\\)"):
        list(iter_files(lambda sha: doc, "ab" * 32))


def test_migration_loses_nothing_live(tmp_path: Path) -> None:
    """After migrating an index with batches, a view, roots, a hidden object and a pin, gc and
    then an index rebuild from the disks followed by gc free only the released objects."""
    cfg_path, kinds = _store(tmp_path)
    cfg = config.load(cfg_path)
    _as_previous_format(cfg.index_dir)
    with Store.open(cfg) as store:
        gc(store, threshold=1.0)
        _reads_back(store, kinds["live"])
    rebuild_index(cfg)
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX
        assert [n for n, _ in store.index.iter_views()] == ["v1"]
        assert [n for n, _ in store.index.iter_batches()] == ["b000", "b001"]
        gc(store, threshold=1.0)
        _reads_back(store, kinds["live"])
        for sha in kinds["released"]:
            with pytest.raises(ObjectNotFound):
                store.get(sha)


@pytest.mark.services  # (runs `hoard` in a process)
def test_previous_release_store_opens_migrated(tmp_path: Path) -> None:
    """A store the previous release wrote (its code run from `git archive`) is migrated by this
    one and every object reads back."""
    old = tmp_path / "old"
    old.mkdir()
    arch = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS, "fsd"], capture_output=True)
    if arch.returncode != 0:
        missing(f"THE PREVIOUS RELEASE {PREVIOUS} IS NOT IN THIS CLONE (a shallow clone?)")
    subprocess.run(["tar", "-x", "-C", str(old)], input=arch.stdout, check=True)
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    files = make_files(tmp_path / "in", 12)
    for args in (("init",), ("put", *map(str, files))):
        res = _hoard("--config", str(cfg_path), *args, pythonpath=old)
        assert res.returncode == 0, res.stderr
    cfg = config.load(cfg_path)
    assert formats.INDEX_KEY.encode() not in _raw(cfg.index_dir, b"meta")  # (the previous release wrote none)
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX
        _reads_back(store, [hashlib.sha256(f.read_bytes()).hexdigest() for f in files])


@pytest.mark.services  # (runs `hoard` in processes)
@pytest.mark.parametrize("kill", ["hoardfs.fsd.core.index:move_seen_out:1", "hoardfs.fsd.core.pointers:align_pointers:1",
                                  "hoardfs.fsd.core.pointers:align_pointers:3", "hoardfs.fsd.core.index:set_meta:1"])
def test_a_migration_killed_at_any_step_loses_nothing(tmp_path: Path, kill: str) -> None:
    """`hoard put` killed (SIGKILL) right after one of the migration's write transactions — the
    disks' last-seen times moved, some pointers filled, the version written — on an index with
    batches, a view, roots, a hidden object, a pin and released objects: the next writable open
    migrates it whole and gc frees only what was released; every live object reads back, and so
    it does after an index rebuild from the disks."""
    cfg_path, kinds = _store(tmp_path, batches=4)
    cfg = config.load(cfg_path)
    _put_killed_in_migration(cfg_path, kill)
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX
        gc(store, threshold=1.0)
        _reads_back(store, kinds["live"])
        assert sorted(store.index.pointer_bodies()[1]) == [*(f"batches/b{b:03d}.json" for b in range(4)), "views/v1.json"]
        for sha in kinds["released"]:
            with pytest.raises(ObjectNotFound):
                store.get(sha)
    assert _raw(cfg.index_dir, b"meta")[formats.INDEX_KEY.encode()] == str(formats.INDEX).encode()
    rebuild_index(cfg)
    with Store.open(cfg) as store:
        gc(store, threshold=1.0)
        _reads_back(store, kinds["live"])
        assert [n for n, _ in store.index.iter_batches()] == [f"b{b:03d}" for b in range(4)]


@pytest.mark.services  # (runs `hoard` in processes)
def test_an_older_index_next_step_works(tmp_path: Path) -> None:
    """`hoard check` and `hoard health` on an index of the previous format say it is older (no
    problem) and name `hoard index migrate`; run, it migrates, and check then finds the index at
    this format."""
    cfg_path, kinds = _store(tmp_path)
    _as_previous_format(config.load(cfg_path).index_dir)
    check = _hoard("--config", str(cfg_path), "check", "--json", "--no-database")
    index = json.loads(check.stdout)["formats"]["index"]
    # an older index is no disagreement: not its empty pointers table either (the migration fills it), in
    # check and in health alike — both said "the index holds none as its pointer" for every batch and view
    assert check.returncode == 0 and index["state"] == "older" and index["found"] == formats.INDEX_UNVERSIONED, check
    health = json.loads(_hoard("--config", str(cfg_path), "health", "--json").stdout)
    assert health["formats"]["index"] == index and not [p for p in health["problems"] if "pointer" in p]
    [step] = [c for c in index["next"].split("`") if c.startswith("hoard ")]
    done = _hoard("--config", str(cfg_path), *step.split()[1:])
    assert done.returncode == 0 and done.stdout.strip() == f"index at format {formats.INDEX} (migrated from format 1)"
    again = _hoard("--config", str(cfg_path), *step.split()[1:])
    assert again.stdout.strip() == f"index at format {formats.INDEX} already"
    check = _hoard("--config", str(cfg_path), "check", "--json", "--no-database")
    assert check.returncode == 0 and json.loads(check.stdout)["formats"]["index"]["state"] == "ok"
    with Store.open(config.load(cfg_path), writable=False) as store:
        _reads_back(store, kinds["live"])


@pytest.mark.services  # (runs `hoard` in processes)
@pytest.mark.expect_log(r"the index stays at format 2", level="WARNING", optional=True)
def test_an_index_whose_held_step_cannot_read_a_manifest_keeps_the_steps_before(tmp_path: Path) -> None:
    """An index of format 1 with a registered manifest that cannot be read: the migration's steps
    to format 2 are done and the index says 2 — the step to 3 (the `held` table, which reads every
    manifest) waits for the repair. It stayed at 1 with the steps to 2 done, so check and health
    left its batch and view pointers unjudged, and every writable open did those steps again."""
    cfg_path, _kinds = _store(tmp_path)
    cfg = config.load(cfg_path)
    _as_previous_format(cfg.index_dir)
    env = lmdb.open(str(cfg.index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:  # (its manifest is in no shard: a lost object)
        txn.put(b"lost", json.dumps({"source": "t", "manifest": "ab" * 32, "files": 1, "bytes": 1}).encode(),
                db=env.open_db(b"batches", txn=txn))
    env.close()
    res = _hoard("--config", str(cfg_path), "index", "migrate")
    assert res.returncode == 5 and "stays at format 2" in res.stderr, res.stdout + res.stderr
    assert _raw(cfg.index_dir, b"meta")[formats.INDEX_KEY.encode()] == b"2"
    check = json.loads(_hoard("--config", str(cfg_path), "check", "--json", "--no-database").stdout)
    assert check["formats"]["index"]["found"] == 2
    assert [p for p in check["problems"] if p.startswith("batch lost: its manifest")], check["problems"]
