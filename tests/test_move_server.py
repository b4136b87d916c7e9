"""docs/operations.md "Move to a new server", as a test: a store and its database on one tree
(config A); the disks moved to other paths and a new, empty SSD (config B, no index); `hoard
index rebuild` under B; every object's bytes, the view and the batch read back; the database
restored into a new, empty one from the dump the disks name. (The system cluster's pgBackRest
path is the production install's; this test uses the dump every store keeps on its HDDs.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.outputs.manifest import iter_files
from hoardfs.fsd.store import Store
from hoardfs.sql.apply import apply_write_intent
from tests.helpers import make_files, write_config
from tests.test_cli import hoard

pytestmark = pytest.mark.services


def _listing(cfg_path: Path) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Each view's files (path, sha256) and the batch names, as the index says."""
    with Store.open(config.load(cfg_path), writable=False) as store:
        views = {name: [(p, sha.hex()) for p, sha, _ in iter_files(store.get, info["manifest"])]
                 for name, info in store.index.iter_views()}
        return views, [name for name, _ in store.index.iter_batches()]


def _ok(cfg: Path, *args: str) -> str:
    res = hoard("--config", str(cfg), *args)
    assert res.returncode == 0, f"hoard {' '.join(args)}: {res.stderr}"
    return res.stdout


def test_move_disks_to_a_new_server(tmp_path: Path, pg: psycopg.Connection, servers) -> None:
    """Everything reads back after the disks move to new paths, a new SSD and `hoard index
    rebuild`; the database comes back from the dump the disks name into an empty database."""
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    url_a = psycopg.conninfo.make_conninfo(servers["database_url"], options=f"-c search_path={schema}")
    old, new = tmp_path / "old", tmp_path / "new"
    disks_a = [(f"hdd{i}", old / "srv" / f"hdd{i}", None) for i in (1, 2, 3)]
    for _, path, _ in disks_a:
        path.mkdir(parents=True)
    cfg_a = write_config(old, disks_a, database_url=url_a, redis_url=servers["redis_url"], shard_size_mb=1)
    _ok(cfg_a, "init")
    _ok(cfg_a, "db", "migrate")
    files = make_files(tmp_path / "in", 30)
    _ok(cfg_a, "put", *map(str, files))
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    (tmp_path / "view.txt").write_text("".join(f"{sha}  cats/{i}.bin\n" for i, sha in enumerate(shas[:10])))
    _ok(cfg_a, "view", "add", "cats", str(tmp_path / "view.txt"))
    with Store.open(config.load(cfg_a)) as store:  # a batch, as UA_1 registers one
        body = json.dumps({"format": formats.BATCH_MANIFEST, "batch_id": "b1", "files": [
            {"path": f"f{i}", "sha256": sha, "size": files[i].stat().st_size} for i, sha in enumerate(shas[10:20])]})
        put = store.put_bytes(body.encode())
        store.register_batch("b1", {"source": "test", "manifest": put.sha256, "files": 10, "bytes": 0})
    apply_write_intent(pg, {"key": "move", "nodes": [{"sha256": sha, "physical": {"size": f.stat().st_size}}
                                                      for sha, f in zip(shas, files, strict=True)]})
    _ok(cfg_a, "db", "backup")
    views_a, batches_a = _listing(cfg_a)
    assert set(views_a) == {"cats"} and batches_a == ["b1"]

    # the move: the disks under new mount points, a new SSD with no index, a new empty database
    disks_b = [(label, new / "mnt" / f"disk-{label}", None) for label, _, _ in disks_a]
    for (_, src, _), (_, dst, _) in zip(disks_a, disks_b, strict=True):
        shutil.copytree(src, dst, symlinks=True)
    dbname = f"hoard_move_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(servers["database_url"], autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    try:
        url_b = psycopg.conninfo.make_conninfo(servers["database_url"], dbname=dbname,
                                               options=f"-c search_path={schema}")
        with psycopg.connect(url_b, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # (the dump restores the schema it was taken of)
        cfg_b = write_config(new, disks_b, database_url=url_b, redis_url=servers["redis_url"], shard_size_mb=1)
        shutil.rmtree(old)  # the old server is gone
        _ok(cfg_b, "db", "migrate")
        _ok(cfg_b, "index", "rebuild")
        assert _listing(cfg_b) == (views_a, batches_a)
        with Store.open(config.load(cfg_b), writable=False) as store:
            assert store.index.format == formats.INDEX
            for sha in shas:
                assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        restored = _ok(cfg_b, "db", "restore", "--from", "dump", "--yes")
        assert "the dump the disks name" in restored
        with psycopg.connect(url_b, autocommit=True) as conn:
            got = {r[0] for r in conn.execute("SELECT encode(sha256, 'hex') FROM node").fetchall()}
        assert got == set(shas)
        health = json.loads(hoard("--config", str(cfg_b), "health", "--json").stdout)
        assert health["formats"]["index"]["state"] == "ok" and health["formats"]["problems"] == []
        assert health["formats"]["identities"] == {"ssd": 1, "disk hdd1": 1, "disk hdd2": 1, "disk hdd3": 1}
    finally:
        with psycopg.connect(servers["database_url"], autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
