"""What `hoard health` and `hoard ingest --status` say of the batches: counts by status,
batches with rejects, refused signals, deleted batches, and batches nothing will move."""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq.exceptions import NoSuchJobError

from hoardfs.base.config import Settings
from hoardfs.jobs.ingest.signals import refused_batches
from hoardfs.jobs.ingest.state import QUEUE_OF, BatchState, Status, all_states, job_id
from hoardfs.jobs.queues import connect, fetch_job, running, unserved_queues

log = logging.getLogger(__name__)


def ingest_status(cfg: Settings) -> dict[str, Any]:
    """Counts per status and the batches that need a person (for `hoard health`)."""
    everything = all_states(cfg)
    states = [s for s in everything if s.deleted is None]
    counts: dict[str, int] = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    return {"batches": counts,
            "deleted": [s.batch_id for s in everything if s.deleted is not None],
            "failed": [{"batch_id": s.batch_id, "step": s.step, "error": s.error} for s in states
                       if s.status == Status.FAILED.value],
            "with_rejects": [s.batch_id for s in states if s.status == Status.DONE_WITH_REJECTS.value],
            "refused": refused_batches(cfg),
            "stalled": stalled_batches(cfg, [s for s in states if s.status in (Status.QUEUED.value,
                                                                              Status.RUNNING.value)])}


def stalled_batches(cfg: Settings, pending: list[BatchState]) -> list[dict[str, str]]:
    """Queued or running batches that nothing will move: their step's job is gone from Redis
    (restarted empty, flushed), was "started" by a worker that died, or waits on a queue no
    worker serves. Empty when Redis does not answer: health reports Redis itself."""
    if not pending or not cfg.redis_url:
        return []
    out = []
    try:
        conn = connect(cfg.redis_url)
        idle = set(unserved_queues(conn))
        for st in pending:
            step_job = job_id(st.batch_id, st.step)
            try:
                job_status = fetch_job(step_job, conn).get_status(refresh=True)
            except NoSuchJobError:
                job_status = None
            if job_status == "started" and running(conn, step_job):
                continue
            if job_status in ("queued", "scheduled", "deferred"):
                if QUEUE_OF[st.step] not in idle:
                    continue
                why = (f"waits on the {QUEUE_OF[st.step]} queue, which no worker serves; start one with "
                       f"`hoard worker`, or `hoard ingest --resume {st.batch_id} --here`")
            else:
                why = (f"no job runs its step (Redis lost it, or the worker running it died); "
                       f"`hoard ingest --resume {st.batch_id}` queues it again")
            out.append({"batch_id": st.batch_id, "reason": f"{st.status} at step {st.step} but {why}"})
    except redis.RedisError:
        return []
    return out
