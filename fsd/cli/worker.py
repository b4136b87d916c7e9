"""`hoard worker`: an RQ worker on the hoardfs queues."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from fsd.base.errors import ExitCode, HoardError
from fsd.cli._common import state
from jobs.guard import exposure
from jobs.queues import QUEUES, HoardWorker, connect, redis_required, rq_queue


def worker(
    ctx: typer.Context,
    queues: Annotated[str | None, typer.Option("--queues", "-q", help="comma-separated queue names (default: every "
                                               "queue: " + ",".join(QUEUES) + ")")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="quit when the queues are empty")] = False,
) -> None:
    """Run an RQ worker on the hoardfs queues, with RQ's scheduler (a waiting action run's poll
    is a scheduled job: nothing holds a worker while it waits)."""
    names = list(QUEUES) if queues is None else [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise HoardError(f"unknown queue(s) {', '.join(unknown)}; allowed: {', '.join(QUEUES)}", ExitCode.USAGE)
    cfg = state(ctx).settings
    assert cfg.redis_url
    if open_to := exposure(cfg.redis_url):
        logging.getLogger("jobs.guard").warning("%s", open_to)
    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        HoardWorker([rq_queue(n, conn) for n in names], connection=conn, config_path=cfg.source).work(
            burst=burst, with_scheduler=True)
