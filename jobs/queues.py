"""Redis connection and the RQ queues every job runs on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from fsd.base.errors import ServiceUnavailable

#: The queues of hoardfs, in the order a default worker serves them.
QUEUES = ("ingest", "io", "sql", "maintenance")


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5)


@contextlib.contextmanager
def redis_required(url: str) -> Iterator[None]:
    """Turn a Redis that does not answer, anywhere inside, into one line naming it (exit 3):
    a command that queues or runs jobs can do nothing useful without it."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ServiceUnavailable(f"Redis at {url} does not answer ({first}); start it (`hoard services up` for the "
                                 "embedded one) or fix redis_url in hoard.toml, then run this again") from None


def redis_status(url: str) -> dict[str, Any]:
    """A JSON-able status of the Redis at `url`; never raises for a down server."""
    try:
        r = connect(url)
        info = r.info("server")
        return {"ok": True, "redis_version": info.get("redis_version"), "db_keys": r.dbsize()}
    except redis.RedisError as e:
        return {"ok": False, "error": str(e).splitlines()[0]}
