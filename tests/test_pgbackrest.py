"""pgBackRest on a private cluster of its own (not the one the tests run on): setup, full and
differential backups, restore-verify into a scratch cluster, and a real restore."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.cluster import PrivateCluster
from hoardfs.sql.deletion import hide_nodes
from hoardfs.sql.migrate import migrate
from hoardfs.sql.pgbackrest import BackRest
from tests.helpers import dir_disks_config, make_files, private_cluster

# tier: each test starts a private PostgreSQL cluster
pytestmark = [pytest.mark.needs(shutil.which("pgbackrest") is not None, "PGBACKREST MISSING: `make deps` installs it"),
              pytest.mark.services]


@pytest.fixture
def cluster(tmp_path: Path):
    c = private_cluster(tmp_path)
    c.start()
    yield c
    conf = c.link.resolve() / "pgbackrest" / "pgbackrest.conf"
    repo = next((ln.split("=", 1)[1] for ln in conf.read_text().splitlines() if ln.startswith("repo1-path=")),
                None) if conf.exists() else None
    c.destroy()
    if repo and repo.startswith("/var/lib/hoardfs/pgbackrest-"):  # where a private tmp dir forces it
        shutil.rmtree(repo, ignore_errors=True)


def _url(c: PrivateCluster) -> str:
    return psycopg.conninfo.make_conninfo(host=str(c.socket_dir.resolve()), user="hoard", dbname="postgres")


def test_full_diff_verify_restore(cluster: PrivateCluster, tmp_path: Path) -> None:
    """Setup is idempotent; full then diff are recorded; verify restores the newest into a
    scratch cluster and checks it; restoring the diff's own state brings back rows deleted
    after it, and restoring "latest" replays the archive up to the deletion."""
    url = _url(cluster)
    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    br = BackRest.for_cluster(cluster, [d.path for d in cfg.disks])
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    assert "stanza hoard checked" in br.setup(url, cluster)[-1]
    assert br.setup(url, cluster) == ["pgBackRest already set up"]  # a second run changes nothing
    with Store.open(cfg, init=True) as store, psycopg.connect(url, autocommit=True) as conn:
        res = store.put_many(make_files(tmp_path / "in", 20))
        apply_write_intent(conn, {"key": "k1", "nodes": [{"sha256": r.sha256, "physical": {"size": r.size}}
                                                         for r in res[:10]]})
        full = br.backup(url, "full")
        apply_write_intent(conn, {"key": "k2", "nodes": [{"sha256": r.sha256, "physical": {"size": r.size}}
                                                         for r in res[10:]]})
        diff = br.backup(url, "diff")
        assert (full["kind"], diff["kind"]) == ("full", "diff")
        kinds = [r[0] for r in conn.execute("SELECT kind FROM backup_log ORDER BY backup_id")]
        assert kinds == ["full", "diff"]
        result = br.verify_latest(url, store)
        assert result.ok, result.detail
        assert conn.execute("SELECT verify_ok FROM backup_log WHERE backup_id = %s",
                            [diff["backup_id"]]).fetchone() == (True,)
        conn.execute("DELETE FROM physical_content")
        conn.execute("DELETE FROM node")
    kept = br.restore(cluster, diff["label"])
    assert kept.exists()
    with psycopg.connect(url) as conn:
        got = {bytes(r[0]).hex() for r in conn.execute("SELECT sha256 FROM node")}
    assert got == {r.sha256 for r in res}
    shutil.rmtree(kept, ignore_errors=True)


def test_verify_reports_a_missing_object(cluster: PrivateCluster, tmp_path: Path) -> None:
    """A backup whose nodes name objects the store does not have fails verification, naming one."""
    url = _url(cluster)
    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    br = BackRest.for_cluster(cluster, [d.path for d in cfg.disks])
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        apply_write_intent(conn, {"key": "ghost", "nodes": [{"sha256": "ab" * 32, "physical": {"size": 1}}]})
    br.setup(url, cluster)
    br.backup(url, "full")
    with Store.open(cfg, init=True) as store:
        result = br.verify_latest(url, store)
    assert not result.ok and "not in the store" in result.detail and "abab" in result.detail
    assert os.path.isdir(cluster.data_dir)


def test_verify_skips_deleted_nodes_whose_bytes_were_freed(cluster: PrivateCluster, tmp_path: Path) -> None:
    """A node deleted (no batch holds it) whose bytes gc freed is not a missing object;
    the pgBackRest verify samples only nodes whose bytes the store must hold."""
    url = _url(cluster)
    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    br = BackRest.for_cluster(cluster, [d.path for d in cfg.disks])
    with Store.open(cfg, init=True) as store, psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        res = store.put_many(make_files(tmp_path / "in", 5))
        apply_write_intent(conn, {"key": "k", "nodes": [{"sha256": r.sha256, "physical": {"size": r.size}}
                                                        for r in res]
                                  + [{"sha256": "ab" * 32, "physical": {"size": 1}}]})
        assert hide_nodes(conn, [b"\xab" * 32]) == 1  # deleted; gc freed (here: never stored) its bytes
        br.setup(url, cluster)
        br.backup(url, "full")
        result = br.verify_latest(url, store, sample=1000)
    assert result.ok, result.detail
