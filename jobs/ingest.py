"""UA_1 on RQ: a scraped batch in zone 3A → store + database → a 3B package → gone from 3A.

    submit(cfg, batch_dir, source)   # validate, record state, enqueue step 1
    run_step(config_path, batch_id, step)   # an RQ job; on success it enqueues the next step

Steps and their queues (each idempotent by batch id, so a retry or a crash resumes):

    scan     ingest       screen + parse (adapter), quarantine rejects, save the records (no file
                          accepted: the batch fails and nothing moves)
    store    io           put the good files into S01 (dedup, write_ack replicas)
    apply    sql          one write-intent `ingest:<batch>` (S05); a schema proposal for a new source
    package  io           tar parts + manifest in 3B/<batch>/; manifest also stored in S01
    finish   maintenance  check every file is stored, empty 3A/<batch>, event + report

A batch whose signal cannot be taken (an unreadable or empty `_READY`, an unknown source, an
id ingested before) is refused by name; `hoard ingest` sets its `_READY` aside as
`_READY.rejected` with a `_REASON.txt`, and `hoard health` lists it until a person acts.

State lives in `<ssd.root>/state/ingest/<batch>.json` (status, steps done, report), written
atomically after every step; `hoard ingest --status BATCH` and `hoard health` read it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import enum
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from rq import SimpleWorker
from rq.exceptions import NoSuchJobError, StopRequested
from rq.worker import WorkerStatus

from adapters import (Asset, File, Record, Reject, UnknownSource, adapter_for, canonical_source, display,
                      parse_batch, quarantine)
from adapters.intent import build_intent, small_raw
from fsd.base import config as config_mod
from fsd.base.config import Settings
from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import atomic_write, flocked, fsync_dir, read_in_zone
from fsd.base.paths import NAME_PATTERN
from fsd.base.units import fmt_bytes
from fsd.outputs import zones
from fsd.outputs.manifest import naming_lock
from fsd.io.replicate import replicate_once
from fsd.store import Store
from jobs import runlog
from jobs.guard import SERIALIZER, GuardedWorker, HoardJob
from jobs.queues import (CONDITIONS, QUEUES, condition_line, connect, enqueue_once, fetch_job, is_condition, rq_queue,
                         running, unserved_queues)
from sql.apply import apply_write_intent
from sql.migrate import migrate
from sql.schema_decider import propose_if_new

log = logging.getLogger(__name__)

STEPS = ("scan", "store", "apply", "package", "finish")
QUEUE_OF = {"scan": "ingest", "store": "io", "apply": "sql", "package": "io", "finish": "maintenance"}
#: RQ timeout per step (a 20,000-item batch with large videos takes minutes, not hours)
STEP_TIMEOUT_S = 6 * 3600
#: what a package in 3B reserves per file beyond its bytes (tar header, manifest line)
PACKAGE_OVERHEAD_PER_FILE = 1024
BATCH_ID = re.compile(NAME_PATTERN)
SIGNAL = "_READY"


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DONE_WITH_REJECTS = "done with rejects"
    FAILED = "failed"


class IngestError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass
class BatchState:
    batch_id: str
    source: str
    status: str = Status.QUEUED.value
    step: str = "scan"
    done: list[str] = field(default_factory=list)
    signalled: str = field(default_factory=lambda: _now())
    updated: str = field(default_factory=lambda: _now())
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    #: when `hoard delete --batch` dropped it (its status is then history, not a problem)
    deleted: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in (Status.DONE.value, Status.DONE_WITH_REJECTS.value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- state files -------------------------------------------------------------------------

def state_dir(cfg: Settings) -> Path:
    d = cfg.ssd.root / "state" / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_state(cfg: Settings, batch_id: str) -> BatchState | None:
    path = state_dir(cfg) / f"{batch_id}.json"
    if not path.exists():
        return None
    return BatchState(**json.loads(path.read_bytes()))


def save_state(cfg: Settings, st: BatchState) -> None:
    st.updated = _now()
    atomic_write(state_dir(cfg) / f"{st.batch_id}.json", json.dumps(asdict(st), indent=1).encode())


def _work(cfg: Settings, batch_id: str, what: str) -> Path:
    return state_dir(cfg) / f"{batch_id}.{what}.json"


def all_states(cfg: Settings) -> list[BatchState]:
    out = []
    for p in sorted(state_dir(cfg).glob("*.json")):
        if p.name.count(".") == 1:  # <batch>.json, not <batch>.<work>.json
            try:
                out.append(BatchState(**json.loads(p.read_bytes())))
            except (ValueError, TypeError):
                continue
    return out


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


def forget_deleted(cfg: Settings, batch_id: str) -> str:
    """After `hoard delete --batch` committed (database and store): its ingest record says
    deleted, and its 3B package (what UA_1 packaged for cold storage) is removed — a package
    of a batch the store dropped restores nothing anyone asked to keep. Returns one line
    saying what happened to the package."""
    st = load_state(cfg, batch_id)
    if st is not None and st.deleted is None:
        st.deleted = _now()
        save_state(cfg, st)
    package = cfg.ssd.zone_path("3B") / batch_id
    try:
        freed = zones.clean(cfg, batch_id, "3B")["freed_bytes"]
    except zones.NoSuchOutput:
        return f"no 3B package {package} (moved to cold storage or never made)"
    except HoardError as e:  # a package step still writing it: name it, the deletion stands
        return f"3B package {package} kept: {e.message}; `hoard zones clean {batch_id}` removes it later"
    return f"3B package {package} removed ({fmt_bytes(freed)})"


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
            job_id = _job_id(st.batch_id, st.step)
            try:
                job_status = fetch_job(job_id, conn).get_status(refresh=True)
            except NoSuchJobError:
                job_status = None
            if job_status == "started" and running(conn, job_id):
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


# -- submitting --------------------------------------------------------------------------

#: where `hoard ingest` sets aside a signal it cannot take, and why (docs/adapters.md)
REJECTED_SIGNAL = "_READY.rejected"
REASON_FILE = "_REASON.txt"


class SignalRefused(IngestError):
    """This batch's signal cannot be taken as it is: an unreadable or empty `_READY`, an
    unknown source in it, or a batch id that was ingested before. `hoard ingest` sets the
    signal aside and goes on with the other batches."""

    exit_code = ExitCode.DATA


def submit(cfg: Settings, batch_dir: Path, source: str | None, redis_conn=None, *, queue: bool = True) -> BatchState:
    """Check the batch and its source, record it, enqueue its next step; idempotent.

    With `queue=False` nothing goes to Redis: the caller runs the steps itself (`run_here`).
    A finished batch whose directory is gone is returned as it is; one whose directory is
    back (a new drop under the same id) is refused — it would otherwise never be ingested."""
    batch_dir = _batch_dir(cfg, batch_dir)
    batch_id = batch_dir.name
    if source is not None:
        source = canonical_source(source, cfg.sources)  # UnknownSource: a bad command line
    st = load_state(cfg, batch_id)
    if st is not None and st.finished:
        if batch_dir.exists():
            raise SignalRefused(_reused_id(cfg, st))
        return st
    if st is not None and st.step != "scan" and source in (None, st.source):
        source = st.source  # resuming after the scan: the directory may already be gone
    else:
        if not batch_dir.is_dir():
            raise IngestError(f"no batch directory {batch_dir}")
        source = source or read_signal(cfg, batch_dir)
        for name in (REJECTED_SIGNAL, REASON_FILE):  # a new signal supersedes one set aside
            (batch_dir / name).unlink(missing_ok=True)
    adapter_for(source, cfg.sources)  # a [sources] entry naming a format that does not exist
    before = copy.deepcopy(st)
    if st is None or st.source != source:
        st = BatchState(batch_id, source)
    st.status, st.error = Status.QUEUED.value, None
    save_state(cfg, st)
    if not queue:
        return st
    try:
        enqueue(cfg, st, redis_conn)
    except BaseException:
        # nothing waits in Redis, so the state must not say "queued" (that would stall for ever)
        if before is None:
            (state_dir(cfg) / f"{batch_id}.json").unlink(missing_ok=True)
        else:
            save_state(cfg, before)
        raise
    return st


def _batch_dir(cfg: Settings, batch_dir: Path) -> Path:
    zone3a = cfg.ssd.zone_path("3A").resolve()
    batch_dir = Path(batch_dir).resolve()
    if batch_dir.parent != zone3a:
        raise IngestError(f"{batch_dir} is not a batch directory of zone 3A ({zone3a}/<batch_id>); "
                          "move the batch there first — ingest takes it from the SSD, the scraper's landing zone")
    if not BATCH_ID.match(batch_dir.name):
        raise IngestError(f"batch directory name {batch_dir.name!r} is not a batch id (letters, digits, `.`, `_`, "
                          "`-`, at most 128, starting with a letter or digit); rename the directory")
    return batch_dir


def _reused_id(cfg: Settings, st: BatchState) -> str:
    """Why a batch dropped again under a finished batch's id is refused, and the new name to give it.

    Refused, not renamed for the person: the id is how they find the batch in reports, the
    mount and the database, so they choose it (docs/adapters.md, "Re-used batch ids")."""
    zone3a = cfg.ssd.zone_path("3A")
    free = next(f"{st.batch_id}.{n}" for n in itertools.count(2)
                if load_state(cfg, f"{st.batch_id}.{n}") is None and not (zone3a / f"{st.batch_id}.{n}").exists())
    when = str(st.report.get("finished_at") or st.updated)[:10]
    return (f"batch {st.batch_id} was already ingested on {when} ({st.status}), so this new drop under the same "
            f"id is not ingested; rename the directory (e.g. `mv {zone3a / st.batch_id} {zone3a / free}`) and "
            "ingest it under the new id")


def read_signal(cfg: Settings, batch_dir: Path) -> str:
    """The source a batch's `_READY` names, as it is recorded (an alias resolved)."""
    sig = batch_dir / SIGNAL
    if not sig.exists():
        raise IngestError(f"{batch_dir} has no {SIGNAL} file; name the source with --source or write it into "
                          f"{sig}")
    try:
        words = read_in_zone(sig, 4096).decode(errors="replace").split()
    except OSError as e:
        raise SignalRefused(f"{sig} cannot be read ({e.strerror or e}); write it again as a file holding the "
                            f"source name (e.g. `echo ytdlp > {sig}`)") from None
    if not words:
        raise SignalRefused(f"{sig} is empty; write the batch's source name into it (e.g. `echo ytdlp > {sig}`)")
    try:
        return canonical_source(words[0], cfg.sources)
    except UnknownSource as e:
        raise SignalRefused(f"{sig}: {e.message}") from None


def set_signal_aside(batch_dir: Path, reason: str) -> str:
    """Rename a refused `_READY` to `_READY.rejected` beside a `_REASON.txt`, so the timer's
    `--ready` does not refuse it again every 30 s while `hoard health` keeps showing it.
    Returns the sentence to add to the reason: how to signal the batch again."""
    os.replace(batch_dir / SIGNAL, batch_dir / REJECTED_SIGNAL)
    atomic_write(batch_dir / REASON_FILE, f"{_now()}\t{reason}\n".encode())
    return (f"its signal was set aside as {batch_dir / REJECTED_SIGNAL} (reason in {REASON_FILE}); once fixed, "
            f"write {SIGNAL} again")


def ready_batches(cfg: Settings) -> list[Path]:
    """Batch directories of 3A with a `_READY` signal that were never queued, or whose id was
    ingested before (submit refuses those by name). A failed one waits for a person's
    `--resume`, so a timer does not retry it in a loop."""
    out = []
    for d in _signalled_dirs(cfg):
        if (d / SIGNAL).exists():
            st = load_state(cfg, d.name)
            if st is None or st.finished:
                out.append(d)
    return out


def refused_batches(cfg: Settings) -> list[dict[str, str]]:
    """3A batches whose signal no step will take until a person acts: a signal set aside
    (`_READY.rejected`), or a `_READY` that `--ready` would refuse (checked the same way)."""
    out = []
    for d in _signalled_dirs(cfg):
        if (d / SIGNAL).exists():
            st = load_state(cfg, d.name)
            try:
                if st is not None and st.finished:
                    raise SignalRefused(_reused_id(cfg, st))
                if st is None:
                    read_signal(cfg, d)
            except SignalRefused as e:
                out.append({"batch_id": d.name, "reason": e.message})
        elif (d / REJECTED_SIGNAL).exists():
            try:
                why = read_in_zone(d / REASON_FILE, 4096).decode(errors="replace").strip().split("\t", 1)[-1]
            except OSError:
                why = "its signal was refused"
            out.append({"batch_id": d.name, "reason": f"{why}; {d / REJECTED_SIGNAL} waits: once fixed, "
                                                      f"write {SIGNAL} again"})
    return out


def _signalled_dirs(cfg: Settings) -> list[Path]:
    zone3a = cfg.ssd.zone_path("3A")
    return [d for d in (sorted(zone3a.iterdir()) if zone3a.is_dir() else [])
            if d.is_dir() and not d.name.startswith("_") and ((d / SIGNAL).exists() or (d / REJECTED_SIGNAL).exists())]


def _job_id(batch_id: str, step: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", batch_id)
    return f"ingest-{safe}-{hashlib.sha1(batch_id.encode()).hexdigest()[:8]}-{step}"


def enqueue(cfg: Settings, st: BatchState, redis_conn=None) -> str:
    assert cfg.redis_url
    return enqueue_once(redis_conn or connect(cfg.redis_url), QUEUE_OF[st.step], "jobs.ingest.run_step",
                        str(cfg.source) if cfg.source else None, st.batch_id, st.step,
                        job_id=_job_id(st.batch_id, st.step), timeout=STEP_TIMEOUT_S,
                        description=f"ingest {st.batch_id}: {st.step}")


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
    with runlog.captured(cfg, "ingest", batch_id):  # the run page's log (jobs.runlog)
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
        st.error = (_explain(e, cfg) if isinstance(e, Exception) else
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
        save_state(cfg, st)
    return st.report


def _explain(e: Exception, cfg: Settings | None = None) -> str:
    """One line for the state file: what failed and what to do."""
    if isinstance(e, HoardError):
        return e.message
    if isinstance(e, (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError)):
        return f"{condition_line(e)}; start it, then `hoard ingest --resume`"
    if isinstance(e, OSError):
        where = Path(e.filename) if isinstance(e.filename, str) else None
        disk = next((d for d in (cfg.disks if cfg and where else []) if where.is_relative_to(d.path)), None)
        if disk is not None:  # the store meets a disk dying under it (EIO) before it has marked it failed
            return (f"disk {disk.label}: {e.strerror or e} ({e.filename}); `hoard health` shows its state: bring it "
                    f"back or replace it (`hoard disks replace {disk.label} …`), then `hoard ingest --resume`")
        return f"{condition_line(e)}; fix it, then `hoard ingest --resume`"
    return f"{type(e).__name__}: {e} (a bug; traceback in the worker log)"


# CONDITIONS (jobs.queues): under `run_here` a step meeting one ends the run with the one line
# `_explain` recorded in the batch's state.


def run_here(cfg: Settings, batch_id: str) -> ExitCode:
    """Run a submitted batch's remaining steps in this process (`hoard ingest --here`).

    No Redis and no RQ: the steps run one after the other under the batch lock, as a worker
    would run them (a worker's stale job for a step done here finds the state moved on and
    does nothing). A step that meets one of CONDITIONS is recorded as failed with its one-line
    reason and ends the run: the exit code says why (PostgreSQL or Redis down: 3); a re-run
    (`--resume BATCH --here`) goes on at that step. A bug propagates with its traceback.
    Ctrl-C or SIGTERM stops the step under way at once, recorded as interrupted, and raises
    KeyboardInterrupt; a second one while that is recorded is ignored."""
    with _interruptible():
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
                if isinstance(e, HoardError):
                    code = e.exit_code
                elif isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    code = ExitCode.NO_SPACE
                else:
                    code = ExitCode.UNAVAILABLE  # PostgreSQL, Redis or a disk
                after = load_state(cfg, batch_id)
                if after is None or after.status != Status.FAILED.value:  # not recorded (the SSD itself?)
                    raise HoardError(f"batch {batch_id} at step {st.step}: {_explain(e, cfg)}", code) from None
                return code


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM raise KeyboardInterrupt once inside; the process's handlers come back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    fired = False

    def interrupt(signum, frame) -> None:
        nonlocal fired
        if fired:
            return  # already stopping: a second Ctrl-C must not cut short the recording of the first
        fired = True
        raise KeyboardInterrupt

    for sig in saved:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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
    worker.config_path = cfg.source
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
    `hoard worker` it runs only hoardfs's own jobs (jobs.guard)."""

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


# -- steps --------------------------------------------------------------------------------

def _step_scan(cfg: Settings, st: BatchState) -> None:
    zone3a = cfg.ssd.zone_path("3A")
    root = zone3a / st.batch_id
    if not root.is_dir():
        raise IngestError(f"batch directory {root} is gone; if it was ingested before, `hoard ingest --status "
                          f"{st.batch_id}` says so — otherwise drop the batch again")
    adapter = adapter_for(st.source, cfg.sources)
    parsed, view = parse_batch(root, adapter, cfg.ingest.settle_s)
    for rel, why in _beyond_3b(cfg, root, {rel: view.files[rel] for rel in parsed.claimed}).items():
        parsed.reject(why, rel)  # its records are skipped by the intent: their node is not stored
        parsed.claimed.discard(rel)
    files = {rel: view.files[rel] for rel in sorted(parsed.claimed)}
    st.report.update({"format": adapter.format, "files_seen": len(view.files) + sum(
        len(r.paths) for r in parsed.rejects if r.paths and r.paths[0] not in view.files),
        "files_accepted": len(files), "records": len(parsed.records),
        "rejected": [{"path": display(p) if p else None, "reason": r.reason}
                     for r in parsed.rejects for p in (r.paths or [""])], "quarantine": None})
    if not files:
        _nothing_accepted(st, root, "accepted", st.report["rejected"])  # --status lists every reason
    quarantine(zone3a, st.batch_id, parsed.rejects)
    if parsed.rejects:
        st.report["quarantine"] = str(zone3a / "_quarantine" / st.batch_id)
    atomic_write(_work(cfg, st.batch_id, "records"),
                 json.dumps({"files": files, "records": [_rec_json(r) for r in parsed.records],
                             "identity": {rel: view.identity[rel] for rel in files if rel in view.identity}}).encode())


def _beyond_3b(cfg: Settings, root: Path, files: dict[str, int]) -> dict[str, str]:
    """Files too large for the batch's package ever to fit zone 3B (its quota up to the deny
    threshold), each → the reason: refused at scan, before the store step reads them. A sparse
    file (a scraper's preallocated or failed download: holes, no data) takes little of 3A but
    its apparent size is what the store reads and 3B must hold."""
    limit = int(zones.quota(cfg, "3B") * cfg.ssd.thresholds.deny)
    out = {}
    for rel, size in files.items():
        if size + PACKAGE_OVERHEAD_PER_FILE * (1 + 10) <= limit:  # one file: the package's `need`
            continue
        try:
            on_disk = os.lstat(root / rel).st_blocks * 512
        except OSError:
            on_disk = size
        sparse = f" (sparse: {fmt_bytes(on_disk)} on disk)" if on_disk < size // 2 else ""
        out[rel] = (f"{fmt_bytes(size)}{sparse} is more than zone 3B can ever hold for the batch's package "
                    f"({fmt_bytes(limit)}: ssd.zones.3B.quota_gb at the deny threshold); if the file is real, "
                    "raise the quota and drop it in a new batch")
    return out


def _nothing_accepted(st: BatchState, root: Path, what: str, rejected: list[dict[str, Any]]) -> None:
    """Fail a batch none of whose files got through, before they move: a wholly wrong
    `--source` then costs a re-run, not a batch scattered into quarantine and reported done."""
    example = f", e.g. {rejected[0]['path'] or '-'}: {rejected[0]['reason']}" if rejected else ""
    raise HoardError(f"no file of batch {st.batch_id} was {what} ({len(rejected)} rejected{example}); they stay "
                     f"in {root}. If the source is wrong, `hoard ingest {root} --source NAME`; otherwise fix the "
                     f"files, then `hoard ingest --resume {st.batch_id}`", ExitCode.DATA)


def _step_store(cfg: Settings, st: BatchState) -> None:
    work = json.loads(_work(cfg, st.batch_id, "records").read_bytes())
    root = cfg.ssd.zone_path("3A") / st.batch_id
    rels = list(work["files"])
    # each file must be the one the scan saw (device, inode, size, mtime): one swapped for a
    # link to a secret since was stored as root, and the world-readable shards gave it back
    # (the device is the batch directory's now, not the scan's: a reboot or a power cut may
    # number the SSD's filesystem anew, and a resume must still find its files; a link to
    # another filesystem stays refused)
    dev = os.stat(root).st_dev if work.get("identity") else 0
    expect = {str(root / r): (dev, *v[1:]) for r, v in work.get("identity", {}).items()}
    with Store.open(cfg) as store:
        results = store.put_many([root / r for r in rels], klass="raw", expect=expect)
        # referenced from now on, before the store lock is let go: a `hoard delete --batch`
        # of another batch holding the same files cannot let gc free them before this
        # batch's manifest is registered (the package step); the finish step unpins
        store.pin(f"ingest-{st.batch_id}", [r.sha256 for r in results if r.status != "rejected"],
                  f"ingest of {st.batch_id}")
    stored, late = {}, []
    new = existing = bytes_new = 0
    for rel, res in zip(rels, results):
        if res.status == "rejected":
            late.append((rel, res.reason))
            continue
        stored[rel] = (res.sha256, res.size)
        new += res.status == "new"
        existing += res.status == "existing"
        bytes_new += res.size if res.status == "new" else 0
    if not stored:
        _nothing_accepted(st, root, "stored", [{"path": display(rel), "reason": why} for rel, why in late])
    if late:
        quarantine(cfg.ssd.zone_path("3A"), st.batch_id, [Reject([rel], why) for rel, why in late])
        st.report["rejected"] += [{"path": display(rel), "reason": why} for rel, why in late]
    atomic_write(_work(cfg, st.batch_id, "stored"), json.dumps(stored).encode())
    st.report.update({"stored_new": new, "stored_existing": existing, "bytes_new": bytes_new,
                      "bytes_total": sum(size for _, size in stored.values())})


def _step_apply(cfg: Settings, st: BatchState) -> None:
    records = [_rec_load(r) for r in json.loads(_work(cfg, st.batch_id, "records").read_bytes())["records"]]
    stored = {k: tuple(v) for k, v in json.loads(_work(cfg, st.batch_id, "stored").read_bytes()).items()}
    intent, stats = build_intent(f"ingest:{st.batch_id}", st.batch_id, st.source, records, stored,
                                 dt.datetime.fromisoformat(st.signalled))
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        migrate(conn)
        res = apply_write_intent(conn, intent)
        prop = propose_if_new(conn, st.source, [r.specific for r in records[:128]])
    st.report.update({"metadata_rows": len(intent["metadata"]), "edges": stats.edges,
                      "virtual_assets": stats.virtual, "nodes": len(intent["nodes"]),
                      "records_skipped": stats.skipped_records, "database": res.counts,
                      "intent": res.key, "intent_was_applied_before": res.noop})
    if prop:
        st.report["schema_proposal"] = prop.proposal_id


def _step_package(cfg: Settings, st: BatchState) -> None:
    stored = {k: tuple(v) for k, v in json.loads(_work(cfg, st.batch_id, "stored").read_bytes()).items()}
    work = json.loads(_work(cfg, st.batch_id, "records").read_bytes())
    records = work["records"]
    root = cfg.ssd.zone_path("3A") / st.batch_id
    out = cfg.ssd.zone_path("3B") / st.batch_id
    manifest_path = out / f"{st.batch_id}.manifest.json"
    if not manifest_path.exists():
        # reserved before a byte is written, released once the manifest (the package's seal) is
        # there or the step failed; a worker killed meanwhile leaves a stale reservation that
        # the next reserve in 3B reclaims (fsd.outputs.zones)
        need = sum(size for _, size in stored.values()) + PACKAGE_OVERHEAD_PER_FILE * (len(stored) + 10)
        zones.reserve(cfg, "3B", st.batch_id, f"ingest:{st.batch_id}", need,
                      next_step=f"`hoard ingest --resume {st.batch_id}`; the batch stays stored and in 3A until then")
        try:
            parts = _write_parts(root, out, st.batch_id, stored, int(cfg.store.batch_size_gb * (1 << 30)),
                                 work.get("identity", {}))
            docs = sorted({r["doc"] for r in records if r.get("doc") and r["doc"] in stored})
            manifest = {
                "format": "hoardfs-batch-manifest-1", "batch_id": st.batch_id, "source": st.source,
                "signalled": st.signalled,
                "files": [{"path": rel, "sha256": sha, "size": size, "part": parts[rel]}
                          for rel, (sha, size) in sorted(stored.items())],
                "metadata_documents": [{"path": d, "sha256": stored[d][0]} for d in docs],
                "rejected": st.report.get("rejected", []),
                "intent": f"ingest:{st.batch_id}"}
            body = json.dumps(manifest, indent=1, sort_keys=True).encode()
            atomic_write(manifest_path, body)
        finally:
            zones.release(cfg, "3B", st.batch_id)
    else:  # a worker killed after the manifest, before the release, left its reservation
        zones.release_stale(cfg, "3B", st.batch_id)
    body = manifest_path.read_bytes()
    with Store.open(cfg) as store:
        put = store.put_bytes(body, klass="raw")
        with naming_lock(store):
            store.register_batch(st.batch_id, {"source": st.source, "manifest": put.sha256,
                                               "files": len(stored), "bytes": sum(s for _, s in stored.values()),
                                               "sealed": _now()})
            # a batch deleted since the store step may have tombstoned a file this one shares (the
            # pin kept it from gc): named by a registered batch now, it is live — not hidden
            for sha in store.index.marked_among(store.index.deleted, {bytes.fromhex(h) for h, _ in stored.values()}):
                store.index.lookup_keep(sha)
    parts_n = len({p.name for p in out.glob(f"{st.batch_id}.part*.tar")})
    st.report["package"] = {"path": str(out), "parts": parts_n, "manifest_sha256": put.sha256,
                            "bytes": sum(p.stat().st_size for p in out.iterdir())}


def _write_parts(root: Path, out: Path, batch_id: str, stored: dict[str, tuple[str, int]], part_bytes: int,
                 identity: dict[str, list[int]]) -> dict[str, int]:
    """Tar archives of at most `part_bytes` (a bigger file gets a part of its own), each
    written to a temporary name, fsynced and renamed; a part already complete is kept.
    Each file must still be the one the scan saw and the store step stored (`identity`: inode,
    size, mtime; the device is the batch directory's, as the store step compares): a file or
    directory of the batch swapped for a link since would put a root-only file in the package."""
    dev = os.stat(root).st_dev
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, int] = {}
    groups: list[list[str]] = [[]]
    size = 0
    for rel, (_, n) in sorted(stored.items()):
        if groups[-1] and size + n + 512 > part_bytes:
            groups.append([])
            size = 0
        groups[-1].append(rel)
        size += n + 1024
    for no, group in enumerate(groups, 1):
        final = out / f"{batch_id}.part{no:04d}.tar"
        for rel in group:
            parts[rel] = no
        if final.exists():
            continue
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in group:
                    with open(root / rel, "rb") as src:
                        fst = os.fstat(src.fileno())
                        seen = identity.get(rel)
                        if seen is not None and (dev, *seen[1:]) != (fst.st_dev, fst.st_ino, fst.st_size,
                                                                     fst.st_mtime_ns):
                            raise IngestError(
                                f"{display(rel)} in {root} is not the file the scan saw and the store step stored "
                                "(replaced or changed since, a link perhaps); its package is not made from it: put "
                                f"the file back as it was and `hoard ingest --resume {batch_id}`, or drop the batch")
                        info = tar.gettarinfo(arcname=rel, fileobj=src)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, src)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    fsync_dir(out)
    return parts


def _step_finish(cfg: Settings, st: BatchState) -> None:
    # `finished_at` is saved once 3A is emptied: a finish run again after that (a crash or power
    # cut before the state said done) goes on from the event — the work files it reads before
    # are removed at its end, so a second run must not need them (chaos seed 306: exit 3 for ever)
    if "finished_at" not in st.report:
        stored = {k: tuple(v) for k, v in json.loads(_work(cfg, st.batch_id, "stored").read_bytes()).items()}
        zone3a = cfg.ssd.zone_path("3A")
        root = zone3a / st.batch_id
        with Store.open(cfg, writable=False) as store:
            short = [rel for rel, (sha, _) in stored.items() if _replicas(store, sha) < cfg.store.write_ack]
        if short:  # a disk failed or was replaced since the store step: copy them again first
            short = _top_up(cfg, stored, short)
        if short:
            raise HoardError(f"{len(short)} files of {st.batch_id} (e.g. {short[0]}) have fewer than "
                             f"{cfg.store.write_ack} readable replicas and no other disk could take a copy now; "
                             f"nothing was removed from 3A — see `hoard health` (a failed disk: `hoard disks replace`; "
                             f"then `hoard replicate`), then `hoard ingest --resume {st.batch_id}`", ExitCode.DATA)
        if root.exists():
            _empty_batch_dir(zone3a, st, stored)
        st.report["finished_at"] = _now()  # fixed before the event is written: a retry sends the same intent
        save_state(cfg, st)
    status = Status.DONE_WITH_REJECTS if st.report.get("rejected") else Status.DONE
    summary = {k: v for k, v in st.report.items() if k != "rejected"} | {
        "rejected": len(st.report.get("rejected", [])), "status": status.value}
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        apply_write_intent(conn, {"key": f"ingest:{st.batch_id}:event", "events": [{
            "batch_id": st.batch_id, "action": 0, "status": "done", "started_at": st.signalled,
            "ended_at": st.report["finished_at"], "detail": json.loads(json.dumps(summary, default=str))}]})
    st.status = status.value
    for what in ("records", "stored"):
        _work(cfg, st.batch_id, what).unlink(missing_ok=True)
    with Store.open(cfg, writable=False) as store:
        store.unpin(f"ingest-{st.batch_id}")  # the registered manifest references the files now


def _top_up(cfg: Settings, stored: dict[str, tuple[str, int]], short: list[str]) -> list[str]:
    """Copy the shards of `short` files to other disks until they have their replicas again
    (the maintenance lock is waited for a while: a gc or rebuild may hold it); the files
    still short afterwards."""
    with Store.open(cfg) as store:
        locs = [store.index.lookup(bytes.fromhex(stored[rel][0])) for rel in short]
        try:
            replicate_once(store, budget_s=3600, rate_mb_s=None, wait_s=60,
                           only={loc.shard_id for loc in locs if loc is not None})
        except HoardError as e:  # the lock stayed busy: said below, with the files still short
            log.warning("batch files short of replicas not copied now: %s", e.message)
        # counted on the disks' states as they are now: the wait and the copies take minutes, and a
        # disk another process failed meanwhile (the mount saw EIO) still counted as readable here
        store.refresh_disks()
        return [rel for rel in short if _replicas(store, stored[rel][0]) < cfg.store.write_ack]


def _replicas(store, sha_hex: str) -> int:
    loc = store.index.lookup(bytes.fromhex(sha_hex))
    meta = store.index.get_shard(loc.shard_id) if loc else None
    return store.readable_replicas(meta) if meta else 0


def _empty_batch_dir(zone3a: Path, st: BatchState, stored: dict[str, tuple[str, int]]) -> None:
    """Remove what was stored; anything else (a file that appeared after the scan) goes to
    quarantine, never to the void."""
    root = zone3a / st.batch_id
    extra = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if rel == SIGNAL:
                continue
            if rel in stored and os.path.getsize(root / rel) == stored[rel][1]:
                continue
            extra.append(rel)
    if extra:
        rej = [Reject([rel], "appeared or changed after the batch was scanned; drop it in a new batch")
               for rel in extra]
        quarantine(zone3a, st.batch_id, rej)
        st.report.setdefault("rejected", []).extend({"path": display(r), "reason": j.reason}
                                                    for r, j in zip(extra, rej))
    shutil.rmtree(root)
    fsync_dir(zone3a)


_STEPS = {"scan": _step_scan, "store": _step_store, "apply": _step_apply, "package": _step_package,
          "finish": _step_finish}


# -- records between steps ----------------------------------------------------------------

def _node_json(n: File | Asset) -> list[str]:
    return ["f", n.rel] if isinstance(n, File) else ["a", n.kind, n.id]


def _node_load(j: list[str]) -> File | Asset:
    return File(j[1]) if j[0] == "f" else Asset(j[1], j[2])


def _rec_json(r: Record) -> dict[str, Any]:
    d = {k: getattr(r, k) for k in ("doc", "title", "view_count", "author", "user", "specific")}
    d["raw"] = small_raw(r.raw) or {}  # the whole document is a stored file (raw_object)
    d.update(node=_node_json(r.node), edges=[[_node_json(p), _node_json(c), rel] for p, c, rel in r.edges],
             update_time=r.update_time.isoformat() if r.update_time else None,
             download_time=r.download_time.isoformat() if r.download_time else None)
    return json.loads(json.dumps(d, default=str))


def _rec_load(d: dict[str, Any]) -> Record:
    t = dt.datetime.fromisoformat
    return Record(_node_load(d["node"]), doc=d["doc"], raw=d["raw"], title=d["title"], view_count=d["view_count"],
                  update_time=t(d["update_time"]) if d["update_time"] else None,
                  download_time=t(d["download_time"]) if d["download_time"] else None, author=d["author"],
                  user=d["user"], specific=d["specific"],
                  edges=[(_node_load(p), _node_load(c), rel) for p, c, rel in d["edges"]])
