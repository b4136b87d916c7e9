"""Running the steps: the RQ job `hoardfs.jobs.ingest.run_step` (one step under the batch's lock, then
the next step queued), and `hoard ingest --here` (every step in this process, Ctrl-C safe)."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import psycopg
import redis
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import flocked
from hoardfs.jobs import jobkey, runlog
from hoardfs.jobs.guard import SERIALIZER, GuardedWorker, HoardJob
from hoardfs.jobs.ingest.signals import enqueue
from hoardfs.jobs.ingest.state import STEP_TIMEOUT_S, STEPS, IngestError, Status, load_state, save_state, state_dir
from hoardfs.jobs.ingest.steps import _STEPS
from hoardfs.jobs.queues import (
    CONDITIONS,
    QUEUES,
    condition_exit_code,
    condition_line,
    connect,
    enqueue_once,
    is_condition,
    rq_queue,
)
from hoardfs.jobs.runs import explain, interruptible
from hoardfs.sql import watch

log = logging.getLogger(__name__)


# -- the job -----------------------------------------------------------------------------

def run_step(config_path: str | None, batch_id: str, step: str) -> dict[str, Any]:
    """RQ job: run one step (unless done), save the state, enqueue the next step.

    A step that is not the batch's current one (a stale duplicate job) does nothing."""
    cfg = config_mod.load(config_path)
    with _batch_lock(cfg, batch_id):
        return _run_step_locked(cfg, batch_id, step)


@contextlib.contextmanager
def _batch_lock(cfg: Settings, batch_id: str):
    """One step of a batch at a time, across processes. RQ runs a job in a forked "work
    horse": a kill -9 of the worker leaves the horse running its step, and a resumed job
    must wait for it (then find the state moved on) rather than race it. The kernel drops
    the lock when its holder dies."""
    with flocked(state_dir(cfg) / f"{batch_id}.lock"):
        yield


def _run_step_locked(cfg: Settings, batch_id: str, step: str, *, then_enqueue: bool = True) -> dict[str, Any]:
    with runlog.captured(cfg, "ingest", batch_id):  # the run page's log (hoardfs.jobs.runlog)
        return _run_step_logged(cfg, batch_id, step, then_enqueue=then_enqueue)


def _run_step_logged(cfg: Settings, batch_id: str, step: str, *, then_enqueue: bool = True) -> dict[str, Any]:
    st = load_state(cfg, batch_id)
    if st is None:
        raise IngestError(f"no ingest state for batch {batch_id}; submit it with `hoard ingest`")
    if st.finished or step != st.step:
        return st.report
    t0 = time.monotonic()
    try:  # "running" is saved inside: a Ctrl-C right after it still marks the step interrupted
        st.status = Status.RUNNING.value
        save_state(cfg, st)
        if step not in st.done:
            _STEPS[step](cfg, st)
            st.done.append(step)
        st.seconds[step] = round(st.seconds.get(step, 0) + time.monotonic() - t0, 3)
    except BaseException as e:
        # an interruption too (Ctrl-C under `--here`, RQ's cold shutdown): a batch left
        # "running" with nobody running it would look busy for ever, while "failed" shows in
        # `hoard health` with the step and the way on
        st.status = Status.FAILED.value
        st.error = (explain(e, cfg) if isinstance(e, Exception) else
                    f"interrupted during step {step}; `hoard ingest --resume {batch_id}` runs it again")
        st.seconds[step] = round(st.seconds.get(step, 0) + time.monotonic() - t0, 3)
        save_state(cfg, st)
        raise
    nxt = STEPS.index(step) + 1
    if nxt < len(STEPS):
        st.step, st.status = STEPS[nxt], Status.QUEUED.value
        save_state(cfg, st)
        if then_enqueue:
            enqueue(cfg, st)
    else:
        if then_enqueue and cfg.ingest.near_dup_at_ingest:  # before "done" is saved: queued at least once
            queue_near_dups(cfg, batch_id)
        if then_enqueue:  # a pipeline bound to the batch's source starts on it (`hoard pipeline watch`)
            queue_watched(cfg, batch_id)
        save_state(cfg, st)
    return st.report


def queue_watched(cfg: Settings, batch_id: str) -> None:
    """Queue the job that moves an ingested batch along the pipelines bound to its source
    (`hoard pipeline watch`), by the job's name as `queue_near_dups` does — only when a pipeline
    is bound. PostgreSQL or Redis failing now costs the start, not the batch: said in one line
    with the command that makes it."""
    if not cfg.redis_url:
        return
    try:
        with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10) as conn:
            if not watch.any_watch(conn):
                return
        enqueue_once(connect(cfg.redis_url), "actions", "hoardfs.jobs.actions.pipelines_of_batch",
                     str(cfg.source) if cfg.source else None, batch_id, job_id=f"pipelines-{batch_id}",
                     timeout=STEP_TIMEOUT_S, description=f"watched pipelines over batch {batch_id}",
                     key=jobkey.of(cfg))
    except (psycopg.Error, redis.RedisError, OSError) as e:
        log.warning("batch %s: the pipelines watching its source not started (%s); `hoard pipeline advance NAME "
                    "%s` starts each", batch_id, condition_line(e), batch_id)


def queue_near_dups(cfg: Settings, batch_id: str) -> None:
    """Queue the near-dup-hash run over an ingested batch (`ingest.near_dup_at_ingest`), by the
    job's name: hoardfs.jobs.actions imports this package, so it cannot be imported here. A Redis that
    fails now costs the hashes, not the batch: said in one line with the command that makes them."""
    assert cfg.redis_url
    try:
        enqueue_once(connect(cfg.redis_url), "actions", "hoardfs.jobs.actions.near_dups_of_batch",
                     str(cfg.source) if cfg.source else None, batch_id, job_id=f"near-dups-{batch_id}",
                     timeout=STEP_TIMEOUT_S, description=f"near-dup-hash over batch {batch_id}", key=jobkey.of(cfg))
    except (redis.RedisError, OSError) as e:
        log.warning("batch %s: its near-dup-hash run not queued (%s); `hoard action run near-dup-hash --selector "
                    "'{\"batches\": [\"%s\"]}'` makes it", batch_id, condition_line(e), batch_id)


# CONDITIONS (hoardfs.jobs.queues): under `run_here` a step meeting one ends the run with the one line
# `explain` recorded in the batch's state.


def run_here(cfg: Settings, batch_id: str) -> ExitCode:
    """Run a submitted batch's remaining steps in this process (`hoard ingest --here`).

    No Redis and no RQ: the steps run one after the other under the batch lock, as a worker
    would run them (a worker's stale job for a step done here finds the state moved on and
    does nothing). A step that meets one of CONDITIONS is recorded as failed with its one-line
    reason and ends the run: the exit code says why (PostgreSQL or Redis down: 3); a re-run
    (`--resume BATCH --here`) goes on at that step. A bug propagates with its traceback.
    Ctrl-C or SIGTERM stops the step under way at once, recorded as interrupted, and raises
    KeyboardInterrupt; a second one while that is recorded is ignored."""
    with interruptible():
        while True:
            st = load_state(cfg, batch_id)
            if st is None:
                raise IngestError(f"no ingest state for batch {batch_id}; submit it with `hoard ingest`")
            if st.finished:
                return ExitCode.OK
            try:
                with _batch_lock(cfg, batch_id):
                    _run_step_locked(cfg, batch_id, st.step, then_enqueue=False)
            except CONDITIONS as e:
                if not is_condition(e):  # a bug: its traceback
                    raise
                code = condition_exit_code(e)
                after = load_state(cfg, batch_id)
                if after is None or after.status != Status.FAILED.value:  # not recorded (the SSD itself?)
                    raise HoardError(f"batch {batch_id} at step {st.step}: {explain(e, cfg)}", code) from None
                return code


def work_here(cfg: Settings, redis_conn=None) -> None:
    """Run queued hoardfs jobs in this process until the queues are empty, through RQ (the demo,
    the benchmark, tests of the worker path; `hoard ingest --here` uses `run_here`).

    Raises KeyboardInterrupt within moments of a Ctrl-C (or SIGTERM), the step under way cut
    short and recorded as interrupted; the process's own signal handlers are put back after."""
    assert cfg.redis_url
    conn = redis_conn or connect(cfg.redis_url)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = _HereWorker([rq_queue(q, conn) for q in QUEUES], connection=conn, serializer=SERIALIZER,
                         job_class=HoardJob)
    worker.config_path, worker.job_key = cfg.source, jobkey.of(cfg)
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if worker.interrupted:
        raise KeyboardInterrupt


class _HereWorker(GuardedWorker, SimpleWorker):
    """RQ's SimpleWorker answers Ctrl-C with a warm shutdown: the step under way (hours for a
    large batch) runs to its end, and RQ's handlers stay installed after `work()` returns, so
    a second Ctrl-C raised SystemExit — exit 0. Here Ctrl-C stops the step at once (steps are
    idempotent: `--resume` runs it again) and the caller puts its own handlers back. Like
    `hoard worker` it runs only hoardfs's own jobs (hoardfs.jobs.guard)."""

    interrupted = False

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._interrupt)
        signal.signal(signal.SIGTERM, self._interrupt)

    def _interrupt(self, signum, frame) -> None:
        if self.interrupted:
            return  # already stopping: a second Ctrl-C must not cut short the recording of the first
        self.interrupted = self._stop_requested = True
        if self.get_state() == WorkerStatus.BUSY:
            raise KeyboardInterrupt  # unwinds the job; run_step records it
        raise StopRequested  # between jobs: the work loop ends quietly

    def handle_exception(self, job, *exc_info) -> None:
        # a user error or an interruption is one line in the batch's state, which the CLI
        # prints; only a bug deserves RQ's traceback on the person's terminal
        if isinstance(exc_info[1], (HoardError, KeyboardInterrupt)):
            self.log.debug("job %s: %s", job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)
