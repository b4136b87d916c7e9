"""The embedded default's private PostgreSQL cluster and Redis: real servers, started and stopped."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from hoardfs.jobs.redis_server import PrivateRedis
from hoardfs.sql.cluster import ensure_database
from hoardfs.sql.health import database_status
from tests.helpers import private_cluster


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_private_redis_start_is_idempotent_and_stops(tmp_path: Path) -> None:
    """start twice → one server on the unix socket; stop → gone."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    try:
        assert rd.start() is True
        assert rd.start() is False
        c = rd.client()
        c.set("k", "v")
        assert c.get("k") == b"v"
        assert (tmp_path / "redis" / "appendonlydir").is_dir()
    finally:
        rd.stop()
    assert not rd.is_running()


def test_private_redis_refuses_overlong_socket_path(tmp_path: Path) -> None:
    from hoardfs.base.errors import HoardError

    with pytest.raises(HoardError, match="longer than 100 bytes"):
        PrivateRedis(tmp_path, tmp_path / ("x" * 120) / "redis.sock")


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_private_cluster_lifecycle(tmp_path: Path) -> None:
    """initdb + start in a private directory, create a database, stop, start again, destroy."""
    cluster = private_cluster(tmp_path)
    url = f"postgresql://hoard@/lifecycle?host={cluster.socket_dir}"
    try:
        assert cluster.start() is True
        assert cluster.start() is False
        assert ensure_database(url) is True
        assert ensure_database(url) is False
        status = database_status(url)
        assert status["ok"] and status["database"] == "lifecycle"
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        if os.geteuid() == 0:
            # /tmp/pytest-of-root is private, so the cluster must have moved to /var/lib/hoardfs
            assert cluster.link.is_symlink()
            assert str(cluster.data_dir).startswith("/var/lib/hoardfs/")
        assert cluster.stop() is True
        assert database_status(url)["ok"] is False
        assert cluster.start() is True
        assert database_status(url)["ok"] is True
    finally:
        real = cluster.link.resolve()
        cluster.destroy()
    assert not real.exists() and not cluster.link.exists()


def test_database_status_of_dead_server(tmp_path: Path) -> None:
    """A server that is not there gives ok=False and the libpq reason, not an exception."""
    status = database_status(f"postgresql:///x?host={tmp_path}")
    assert status["ok"] is False
    assert "No such file or directory" in status["error"] or "connection" in status["error"]
