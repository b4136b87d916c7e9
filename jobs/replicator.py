"""The embedded default's replicator: `hoard worker` queues the replicate job on a schedule.

In an install, `hoard-replicate.timer` runs `hoard replicate` every 15 minutes. The embedded
default (a hoard.toml with `[embedded]`, `hoard init --embedded`) has no timer, so shards below
their replica target stayed there — and the GUI said so on every page — until someone typed
`hoard replicate`. There, every `hoard worker` that serves the `maintenance` queue runs a
`Replicator` thread: every `[worker] replicate_every_s` (and once soon after it starts) it
queues `hoardfs.jobs.maintenance.run("replicate", …)` — the launch page's replicate job — on
the `maintenance` queue, as job REPLICATE_JOB.

Never two at once: the job has one id, and it is queued only when no job of that id waits or
runs on a live worker (however many workers run, whichever queues it first: one process looks
and queues at a time, `QUEUEING`); the replicate
itself holds the store's maintenance lock (one of gc, replicate, rebuild at a time). An
install (no `[embedded]`) gets no thread: its timer does the work, and both never run it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from hoardfs.base.config import Settings
from hoardfs.jobs import jobkey, maintenance
from hoardfs.jobs.queues import connect, pending, rq_queue

log = logging.getLogger(__name__)

#: the queue it runs on, and its job's id (the launch page lists it among the maintenance runs:
#: `maint-` is their prefix, hoardfs.jobs.launch.PREFIX)
QUEUE = "maintenance"
REPLICATE_JOB = "maint-replicate-scheduled"
#: the first job is queued this many seconds after the worker starts (its own work loop first)
FIRST_AFTER_S = 2.0


def scheduled(cfg: Settings, queues: list[str]) -> bool:
    """Whether a `hoard worker` of `cfg` serving `queues` runs the Replicator: the embedded
    default only, serving `maintenance`, with `[worker] replicate_every_s` above 0."""
    return cfg.embedded is not None and QUEUE in queues and cfg.worker.replicate_every_s > 0 and not cfg.worker.remote


#: held (SET NX, expiring) while one process looks for the job and queues it: two workers that
#: look at once would both find none and queue it twice — the id twice on the queue, the job run
#: twice
QUEUEING = "rq:hoard:replicate-queueing"
QUEUEING_TTL_S = 30


def queue_replicate(cfg: Settings, conn: redis.Redis) -> bool:
    """Queue the replicate job unless one waits or runs on a live worker, or another process is
    queueing it now; True when queued. A job of that id that ended (done, failed) or whose
    worker died is replaced."""
    if not conn.set(QUEUEING, "1", nx=True, ex=QUEUEING_TTL_S):
        return False
    try:
        return _queue_replicate(cfg, conn)
    finally:
        conn.delete(QUEUEING)


def _queue_replicate(cfg: Settings, conn: redis.Redis) -> bool:
    if pending(conn, REPLICATE_JOB):
        return False
    every = cfg.worker.replicate_every_s
    rq_queue(QUEUE, conn, jobkey.of(cfg)).enqueue(
        maintenance.run, "replicate", str(cfg.source) if cfg.source else None, job_id=REPLICATE_JOB,
        job_timeout=maintenance.JOB_TIMEOUT_S, result_ttl=7 * 86400, failure_ttl=30 * 86400,
        description=f"replicate (hoard worker, every {every:g} s: [worker] replicate_every_s)",
        meta={"kind": "replicate", "params": {}, "by": "hoard worker"})
    return True


class Replicator(threading.Thread):
    """`queue_replicate` soon after the start, then every `cfg.worker.replicate_every_s`, on a
    connection of its own until `stop()`; a Redis that does not answer is one warning per
    outage, and it tries again at the next turn."""

    def __init__(self, cfg: Settings) -> None:
        super().__init__(name="hoard-replicator", daemon=True)
        self.cfg = cfg
        self._halt = threading.Event()

    def run(self) -> None:
        assert self.cfg.redis_url
        conn: Any = connect(self.cfg.redis_url)
        down = False
        wait = FIRST_AFTER_S
        while not self._halt.wait(wait):
            wait = self.cfg.worker.replicate_every_s
            try:
                if queue_replicate(self.cfg, conn):
                    log.info("replicator: replicate job queued (every %gs: [worker] replicate_every_s)", wait)
                down = False
            except redis.RedisError as e:
                if not down:
                    log.warning("replicator: Redis at %s does not answer (%s); trying again in %gs",
                                self.cfg.redis_url, str(e).splitlines()[0] if str(e) else type(e).__name__, wait)
                down = True

    def stop(self) -> None:
        self._halt.set()
