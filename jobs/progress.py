"""Live progress of maintenance jobs (replicate, verify, rebuild, gc) for the GUI: the job's
figures (`hoardfs.base.progress`) published to Redis, and read back for the runs.

The job's hook only stores figures in memory; `reported` publishes them from a daemon thread
to the key `hoard:progress:<job id>` (JSON: done, total, rate, eta_s, state …) about once a
second, on its own connection with a short timeout and no retries. Redis down, paused or
slow: the figures go missing for that while, the job does not wait (`hoardfs.base.progress`
says how little the end of a job waits for its last figures). While the job runs the key
lives RUNNING_TTL_S past its last refresh, so a job killed outright leaves nothing stale for
long; the final figures stay FINAL_TTL_S.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hoardfs.base.progress import Progress, Snapshot, published

KEY = "hoard:progress:{}"
#: a publish waits at most this long for Redis (connect, then the reply)
TIMEOUT_S = 0.5
#: a running job's key lives this long past its last refresh (refreshed every second)
RUNNING_TTL_S = 120
#: the final figures stay this long (the run page shows them beside the report)
FINAL_TTL_S = 7 * 86400


class RedisSink:
    """Writes each snapshot to the job's key, on its own connection made on first use (in the
    publishing thread: the job's own connection is never shared with it)."""

    def __init__(self, url: str, job_id: str) -> None:
        self.url, self.key = url, KEY.format(job_id)
        self._conn: redis.Redis | None = None

    def __call__(self, snap: Snapshot) -> None:
        if self._conn is None:
            self._conn = redis.Redis.from_url(self.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                              retry=Retry(NoBackoff(), 0))
        self._conn.set(self.key, json.dumps(snap.as_dict() | {"at": time.time()}),
                       ex=RUNNING_TTL_S if snap.state == "running" else FINAL_TTL_S)


@contextlib.contextmanager
def reported(url: str, job_id: str, what: str, unit: str = "bytes") -> Iterator[Callable[[int, int | None], None]]:
    """The hook to hand the store's functions (`update(done, total)`), published for the GUI
    while the block runs, and its final figures when it ends (done or failed)."""
    tracker = Progress(what, unit=unit)
    with published(tracker, RedisSink(url, job_id)):
        yield tracker.update


def read(conn: redis.Redis, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The published figures of these jobs (one MGET), by job id; jobs without any left out."""
    if not job_ids:
        return {}
    out = {}
    for job_id, raw in zip(job_ids, conn.mget([KEY.format(j) for j in job_ids]), strict=True):
        if raw is not None:
            try:
                out[job_id] = json.loads(raw)
            except ValueError:
                continue  # not ours to explain: the run shows no figures
    return out

