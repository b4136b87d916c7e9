"""The embedded default's replicate job (hoardfs.jobs.replicator) is queued once however many
`hoard worker`s queue it at the same moment. Real Redis and RQ queues."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.jobs import jobkey
from hoardfs.jobs.queues import connect, rq_queue
from hoardfs.jobs.replicator import QUEUE, REPLICATE_JOB, queue_replicate

pytestmark = pytest.mark.services


def test_two_workers_queueing_the_replicate_job_at_once_queue_it_once(hoard_home: Path, pg, redis_conn) -> None:
    """Two workers' replicators (two threads, two connections) that look for the job at the same
    moment: one queues it, the other does not — the queue holds its id once, so it runs once —
    ten times over."""
    cfg = config.load(hoard_home / "hoard.toml")
    queue = rq_queue(QUEUE, redis_conn, jobkey.of(cfg))
    conns = [connect(cfg.redis_url) for _ in range(2)]
    for _ in range(10):
        queue.empty()
        redis_conn.delete(f"rq:job:{REPLICATE_JOB}")
        start = threading.Barrier(2)
        got: list[bool] = []

        def worker(conn, start: threading.Barrier = start, got: list[bool] = got) -> None:
            start.wait()
            got.append(queue_replicate(cfg, conn))

        threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == [False, True] and queue.get_job_ids().count(REPLICATE_JOB) == 1, (got,
                                                                                               queue.get_job_ids())
    queue.empty()
    redis_conn.delete(f"rq:job:{REPLICATE_JOB}")
