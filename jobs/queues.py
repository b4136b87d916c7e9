"""Redis connection and the RQ queues every job runs on."""

from __future__ import annotations

from typing import Any

import redis

#: The queues of hoardfs, in the order a default worker serves them.
QUEUES = ("ingest", "io", "sql", "maintenance")


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5)


def redis_status(url: str) -> dict[str, Any]:
    """A JSON-able status of the Redis at `url`; never raises for a down server."""
    try:
        r = connect(url)
        info = r.info("server")
        return {"ok": True, "redis_version": info.get("redis_version"), "db_keys": r.dbsize()}
    except redis.RedisError as e:
        return {"ok": False, "error": str(e).splitlines()[0]}
