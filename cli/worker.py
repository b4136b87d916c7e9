"""`hoard worker`: an RQ worker on the hoardfs queues."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import state
from hoardfs.jobs import jobkey
from hoardfs.jobs.guard import exposure
from hoardfs.jobs.queues import QUEUES, HoardWorker, connect, redis_required, rq_queue
from hoardfs.jobs.reaper import Reaper
from hoardfs.jobs.remote import QUEUE as REMOTE_QUEUE
from hoardfs.jobs.replicator import Replicator, scheduled


def worker(
    ctx: typer.Context,
    queues: Annotated[str | None, typer.Option("--queues", "-q", help="comma-separated queue names (default: every "
                                               "queue: " + ",".join(QUEUES) + "; on a host whose hoard.toml says "
                                               f"[worker] remote = true: {REMOTE_QUEUE})")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="quit when the queues are empty")] = False,
) -> None:
    """Run an RQ worker on the hoardfs queues, with RQ's scheduler (a waiting action run's poll
    is a scheduled job: nothing holds a worker while it waits). It heartbeats every
    `[worker] heartbeat_s`; on the store's server it also runs the reaper, which queues again
    a job whose worker went silent (docs/scale-out.md). In the embedded default (no
    hoard-replicate.timer) it queues the replicate job every `[worker] replicate_every_s`.
    SIGTERM or Ctrl-C: an idle worker stops within 3 s (a job it took meanwhile runs first), a
    busy one once its job is done, its Redis gone or not; a second signal kills the job at
    once. Its scheduler process is given 10 s to stop, then killed. An idle worker whose Redis
    stops answering (or leaves a reply 30 s late) retries it every 2 s, saying so once a
    minute, or ends; a signal stops one that retries too — either way with the line that names
    that Redis (exit 3), as does a busy one once its job is done; a Redis that refuses writes
    (a read-only replica) is said so the same way. A worker never exits 0 on an error. A scheduler that a lost Redis
    ended is started again once Redis is back: within 12 s, or at a busy worker's next
    heartbeat."""
    cfg = state(ctx).settings
    remote = cfg.worker.remote
    allowed = (REMOTE_QUEUE,) if remote else (*QUEUES, REMOTE_QUEUE)
    names = list(allowed[:1] if remote else QUEUES) if queues is None else [q.strip() for q in queues.split(",")
                                                                             if q.strip()]
    unknown = [q for q in names if q not in allowed]
    if unknown:
        why = " (this host's hoard.toml says [worker] remote = true: it serves remote jobs only)" if remote else ""
        raise HoardError(f"unknown queue(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}{why}", ExitCode.USAGE)
    assert cfg.redis_url
    if open_to := exposure(cfg.redis_url):
        logging.getLogger("hoardfs.jobs.guard").warning("%s", open_to)
    if cfg.source is not None:  # a job of hoardfs.jobs.guard.HOST_JOBS runs with this file (its work horse inherits it)
        os.environ["HOARD_CONFIG"] = str(cfg.source)
    beat = cfg.worker.heartbeat_s
    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        reaper = None if remote else Reaper(cfg.redis_url, beat, cfg.worker.reap_after_s)
        # the embedded default has no hoard-replicate.timer: its worker queues the replicate job
        replicator = Replicator(cfg) if scheduled(cfg, names) and not burst else None
        for thread in (reaper, replicator):
            if thread is not None:
                thread.start()
        try:
            HoardWorker([rq_queue(n, conn) for n in names], connection=conn, config_path=cfg.source,
                        job_key=jobkey.of(cfg), job_monitoring_interval=beat).work(burst=burst, with_scheduler=True)
        finally:
            for thread in (reaper, replicator):
                if thread is not None:
                    thread.stop()
