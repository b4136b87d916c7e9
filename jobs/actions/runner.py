"""Running a run's steps: the RQ job `hoardfs.jobs.actions.run_step` (one step under the run's lock, a
heartbeat while it runs, then the next step queued), the poll of a waiting run (RQ's
scheduler: `enqueue_in`, no worker held meanwhile), and `hoard action run --here` (every step
in this process, Ctrl-C safe). Its interruption handling and one-line conditions are UA_1's
runner's too (`hoardfs.jobs.runs`: `interruptible`, `explain`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import flocked
from hoardfs.fsd.outputs import zones
from hoardfs.jobs import events, jobkey, runlog
from hoardfs.jobs.actions.remote import REMOTE_STEPS, cancel_remote
from hoardfs.jobs.actions.state import (
    HEARTBEAT_S,
    QUEUE_OF,
    STEP_TIMEOUT_S,
    WAITING,
    ActionError,
    Cancelled,
    RunRefused,
    RunState,
    Status,
    Waiting,
    beat,
    cancel_flag,
    check_runnable,
    here_lock_path,
    job_id,
    load_state,
    lock_path,
    resume_line,
    save_state,
    with_way_on,
)
from hoardfs.jobs.actions.steps import STEPS, cleanup_cancelled, record_ending, wait_a_little
from hoardfs.jobs.queues import (
    CONDITIONS,
    condition_exit_code,
    connect,
    enqueue_once,
    fetch_job,
    is_condition,
    rq_queue,
)
from hoardfs.jobs.runs import explain, interruptible

log = logging.getLogger(__name__)


def run_step(config_path: str | None, rid: str, step: str) -> dict[str, Any]:
    """RQ job: run one step of run `rid` (unless done or not its current one), save the state,
    enqueue the next step; a step that waits schedules its own poll instead."""
    cfg = config_mod.load(config_path)
    with flocked(lock_path(cfg, rid)):
        return _run_step_locked(cfg, rid, step)


@contextlib.contextmanager
def _heartbeat(cfg: Settings, rid: str) -> Iterator[None]:
    """`<run>.beat` touched every HEARTBEAT_S while the step runs (a thread: a step busy in one
    long call — a copy, a COPY — still beats); a process that dies stops beating."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                beat(cfg, rid)

    beat(cfg, rid)
    t = threading.Thread(target=loop, name=f"heartbeat-{rid}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _run_step_locked(cfg: Settings, rid: str, step: str, *, then_enqueue: bool = True) -> dict[str, Any]:
    with runlog.captured(cfg, "action", rid):
        return _run_step_logged(cfg, rid, step, then_enqueue=then_enqueue)


def _run_step_logged(cfg: Settings, rid: str, step: str, *, then_enqueue: bool = True) -> dict[str, Any]:
    try:
        st = load_state(cfg, rid)
    except RunRefused as e:  # files it did not write: nothing of them is run, nor written over
        log.warning("action %s, step %s: refused: %s", rid, step, e.message)
        raise
    if st is None:
        raise ActionError(f"no run {rid}; `hoard action runs` lists the runs")
    if st.status in (Status.DONE.value, Status.CANCELLED.value, Status.FAILED.value) or step != st.step:
        return st.report  # a stale duplicate job, a poll after a release, a run given up
    if cancel_flag(cfg, rid).exists():
        if "apply" not in st.done:
            _cancelled(cfg, st)
            return st.report
        cancel_flag(cfg, rid).unlink(missing_ok=True)  # too late: its results are applied; it finishes
    t0 = time.monotonic()
    try:
        if step not in st.done:
            check_runnable(cfg, st)  # what the step runs is the service's own contract, as it is now
        st.status = Status.RUNNING.value
        save_state(cfg, st)
        if step not in st.done:
            with _heartbeat(cfg, rid):
                (STEPS[step] if step in STEPS else REMOTE_STEPS[step])(cfg, st)  # (looked up now: tests replace one)
            st.done.append(step)
        st.seconds[step] = round(st.seconds.get(step, 0) + time.monotonic() - t0, 3)
    except Waiting as w:
        st.status = w.status
        st.seconds[step] = round(st.seconds.get(step, 0) + time.monotonic() - t0, 3)
        st.report["poll_s"] = w.poll_s  # saved: `--here` waits this long between two checks
        if w.status == Status.WAIT_GPU_READY.value and st.gate.get("event_of") != st.gate.get("since"):
            # the first wait at this gate only, not every poll (and once by its key whatever happens)
            events.emit(cfg, "gate_waiting", f"gate_waiting:{rid}:{st.attempt}:{st.gate.get('since')}", rid,
                        {"run": rid, "action": st.action, "since": st.gate.get("since"),
                         "release": f"hoard action release {rid}"})
            st.gate["event_of"] = st.gate.get("since")
        save_state(cfg, st)
        if then_enqueue:
            _schedule_poll(cfg, st, w.poll_s)
        return st.report
    except Cancelled:
        _cancelled(cfg, st)
        return st.report
    except BaseException as e:
        st.status = Status.FAILED.value
        st.error = (with_way_on(explain(e, cfg), rid) if isinstance(e, Exception) else
                    f"interrupted during step {step}; {resume_line(rid)} resumes it")
        st.exit_code = int(e.exit_code) if isinstance(e, HoardError) else int(ExitCode.UNAVAILABLE)
        st.seconds[step] = round(st.seconds.get(step, 0) + time.monotonic() - t0, 3)
        save_state(cfg, st)
        record_ending(cfg, st, Status.FAILED.value)
        raise
    nxt = st.steps.index(step) + 1
    if nxt < len(st.steps):
        st.step, st.status = st.steps[nxt], Status.QUEUED.value
        st.report.pop("enqueue_failed", None)
        save_state(cfg, st)
        if then_enqueue:
            _enqueue_next(cfg, st)
    else:
        st.status, st.error, st.exit_code = Status.DONE.value, None, 0
        save_state(cfg, st)
        events.emit(cfg, "run_finished", f"run_finished:{rid}", rid, _finished_detail(st))
        after_done(cfg, st, here=not then_enqueue)
    return st.report


def _finished_detail(st: RunState) -> dict[str, Any]:
    """What `run_finished` says of a run: its action, version, parameters (as `run_failed`'s detail
    has them) and figures."""
    rep = st.report
    return {"run": st.run_id, "action": st.action, "version": st.version, "params": st.params, "inputs": st.inputs,
            "started_at": st.created, "finished_at": rep.get("finished_at"),
            "database": rep.get("database"), "seconds": round(sum(st.seconds.values()), 3)}


#: the job that deletes what finished runs set aside in 3C's trash (one at a time, by its id)
TRASH_JOB = "actions-empty-trash"


def after_done(cfg: Settings, st: RunState, *, here: bool) -> None:
    """The run is recorded done: what its finish set aside in `3C/.trash` (and whatever a delete
    cut short left there) is deleted now — by the worker that ran the finish, after the state
    says done (`--wait` returns at once), or, under `--here`, by a queued maintenance job so the
    command returns without waiting for it (no Redis: here, now). A delete killed half-way is
    finished by the next one (the next run, `hoard zones clean`); the bytes count as 3C's
    meanwhile and no reservation is held."""
    if "3c_set_aside" not in st.report:
        return
    if here and cfg.redis_url:
        try:
            enqueue_once(connect(cfg.redis_url), "maintenance", "hoardfs.jobs.actions.empty_trash",
                         str(cfg.source) if cfg.source else None, job_id=TRASH_JOB, timeout=STEP_TIMEOUT_S,
                         description="actions: delete what finished runs set aside in 3C/.trash", key=jobkey.of(cfg))
            return
        except redis.RedisError as e:
            log.info("run %s: the trash is deleted here (Redis: %s)", st.run_id, first_line(e))
    try:
        empty_trash(str(cfg.source) if cfg.source else None, cfg)
    except OSError as e:  # the run is done; what is left is deleted by the next one
        log.warning("run %s: 3C/.trash could not be emptied (%s); the next run or `hoard zones clean` deletes "
                    "it", st.run_id, e)


def empty_trash(config_path: str | None, cfg: Settings | None = None) -> dict[str, Any]:
    """RQ job (maintenance): delete what finished action runs set aside in 3C's trash."""
    cfg = cfg or config_mod.load(config_path)
    res = zones.empty_trash(cfg, ["3C"])
    if res["entries"]:
        log.info("3C/.trash: deleted %d output(s) of finished action runs (%d bytes)", res["entries"],
                 res["freed_bytes"])
    return res


def _enqueue_next(cfg: Settings, st: RunState) -> None:
    """Queue the step the state now names. Redis down here (between two steps): one line in the
    log and in the state; the run stays queued at that step and `hoard action resume RUN`
    queues it once Redis is back (status and health name it meanwhile)."""

    try:
        enqueue(cfg, st)
    except redis.RedisError as e:
        st.report["enqueue_failed"] = f"Redis did not answer ({first_line(e)})"
        save_state(cfg, st)
        log.warning("run %s: step %s could not be queued: Redis at %s does not answer (%s); once it is back, "
                    "%s queues it", st.run_id, st.step, cfg.redis_url, first_line(e), resume_line(st.run_id))


def _cancelled(cfg: Settings, st: RunState) -> None:
    cleanup_cancelled(cfg, st)
    cancel_remote(cfg, st)
    st.status, st.error = Status.CANCELLED.value, f"cancelled at step {st.step}"
    save_state(cfg, st)
    record_ending(cfg, st, Status.CANCELLED.value)


def enqueue(cfg: Settings, st: RunState, redis_conn=None, suffix: str = "") -> str:
    assert cfg.redis_url
    return enqueue_once(redis_conn or connect(cfg.redis_url), QUEUE_OF[st.step], "hoardfs.jobs.actions.run_step",
                        str(cfg.source) if cfg.source else None, st.run_id, st.step,
                        job_id=job_id(st.run_id, st.step, suffix), timeout=STEP_TIMEOUT_S,
                        description=f"action {st.run_id}: {st.step}", key=jobkey.of(cfg))


def _schedule_poll(cfg: Settings, st: RunState, poll_s: float) -> None:
    """The waiting step runs again in `poll_s` through RQ's scheduler (which `hoard worker` runs):
    nothing holds a worker meanwhile."""
    assert cfg.redis_url
    conn = connect(cfg.redis_url)
    jid = job_id(st.run_id, st.step, "-poll")
    with contextlib.suppress(Exception):

        fetch_job(jid, conn).delete()
    rq_queue(QUEUE_OF[st.step], conn, jobkey.of(cfg)).enqueue_in(
        dt.timedelta(seconds=poll_s), "hoardfs.jobs.actions.run_step", str(cfg.source) if cfg.source else None, st.run_id,
        st.step, job_id=jid, job_timeout=STEP_TIMEOUT_S, result_ttl=3600, failure_ttl=30 * 86400,
        description=f"action {st.run_id}: {st.step} (poll)")


def run_here(cfg: Settings, rid: str, *, until_waiting: bool = False) -> ExitCode:
    """Run a submitted run's remaining steps in this process (`hoard action run --here`): no
    Redis; a waiting step (the gate, an external worker) is polled here in the foreground —
    or, `until_waiting`, ends the call (OK; the state says it waits: `hoard pipeline advance`
    and the demo release the gate, then call again). A condition ends the run failed with
    its one line (the exit code says why); a bug propagates; Ctrl-C stops the step at once,
    recorded as interrupted."""
    with interruptible(), flocked(here_lock_path(cfg, rid)):
        while True:
            st = load_state(cfg, rid)
            if st is None:
                raise ActionError(f"no run {rid}; `hoard action runs` lists the runs")
            if st.status == Status.DONE.value:
                return ExitCode.OK
            if st.status == Status.CANCELLED.value:
                return ExitCode.USAGE
            try:
                with flocked(lock_path(cfg, rid)):
                    _run_step_locked(cfg, rid, st.step, then_enqueue=False)
            except CONDITIONS as e:
                if not is_condition(e):
                    raise
                code = condition_exit_code(e)
                after = load_state(cfg, rid)
                if after is None or after.status != Status.FAILED.value:
                    raise HoardError(f"run {rid} at step {st.step}: {explain(e, cfg)}", code) from None
                return code
            after = load_state(cfg, rid)
            if after is not None and after.status in WAITING:
                if until_waiting:
                    return ExitCode.OK
                wait_a_little(after.report.get("poll_s", 5), lambda: cancel_flag(cfg, rid).exists()
                              or _released(cfg, rid))


def _released(cfg: Settings, rid: str) -> bool:
    st = load_state(cfg, rid)
    return st is not None and bool(st.gate.get("released")) and st.status in (Status.WAIT_GPU_READY.value,
                                                                              Status.WAITING_LABELS.value)
