"""Launching and watching runs: what the GUI's scheduler pages call (S02).

A *run* is one piece of work a person started: a UA_1 ingest of a batch (`hoardfs.jobs.ingest`, a
chain of step jobs), a stage or export (`hoardfs.jobs.outputs`), a maintenance job
(`hoardfs.jobs.maintenance`), a run of an action (UA_2, `hoardfs.jobs.actions.api`; kind "action"), or a
dataset build queued on `io` (UA_3, `hoardfs.jobs.datasets`; kind "dataset", its id the dataset's name).
`runs(cfg)` lists them all in one shape from the state files and RQ's registries; `launch_*`
validate a request completely before anything is queued; `cancel`, `retry` and `why_waiting`
act on or explain one run.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import typing
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.datasets.api import ZONE as DATASET_ZONE
from hoardfs.datasets.spec import DatasetSpec
from hoardfs.fsd.outputs import zones
from hoardfs.jobs import datasets as datasets_job
from hoardfs.jobs import ingest, jobkey, maintenance, outputs, reports, runlog
from hoardfs.jobs import progress as job_progress
from hoardfs.jobs.actions import api as actions_api
from hoardfs.jobs.actions import contract as contracts
from hoardfs.jobs.actions.state import QUEUE_OF as ACTION_QUEUE_OF
from hoardfs.jobs.actions.state import WAITING, RunRefused, check_id, load_state, log_path, read_work, refusal
from hoardfs.jobs.guard import SERIALIZER
from hoardfs.jobs.queues import connect, enqueue_once, fetch_job, redis_required, rq_queue, unserved_queues

MAINTENANCE_QUEUE = "maintenance"
PREFIX = "maint-"
KINDS = ("ingest", "stage", "export", "action", "dataset", *maintenance.JOBS)
#: a dataset build's RQ job is `dataset-<name>` (hoardfs.jobs.datasets.submit): one per name waits or runs
DATASET_PREFIX = "dataset-"
#: "done with errors": finished, but its report counts errors (a replicate that could not
#: copy a shard) — not a success; "refused": a stage/export refused before it started
#: (nothing written or reserved, its id free again)
STATUSES = ("queued", "running", "WAIT_GPU_READY", "waiting_external", "waiting_remote", "done", "done with rejects",
            "done with errors", "failed", "canceled", "refused")
#: what a person may do with a run in each status: cancel what waits or works, retry what failed
CANCELABLE = ("queued", "running")
RETRYABLE = ("failed", "canceled")


def _needs_redis(fn):
    """A Redis that does not answer, anywhere in `fn(cfg, …)`, becomes one HoardError naming
    it (exit 3), which the pages show as a message instead of a server error."""
    @functools.wraps(fn)
    def wrapper(cfg: Settings, *args, **kwargs):
        with redis_required(cfg.redis_url):
            return fn(cfg, *args, **kwargs)
    return wrapper


class LaunchError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass
class Run:
    kind: str
    id: str  # batch id, output id, or the maintenance job's id
    status: str  # one of STATUSES
    created: str  # ISO 8601, UTC
    updated: str
    source: str = ""
    error: str = ""
    queue: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    by: str = ""
    progress: dict[str, Any] | None = None  # a maintenance job's published figures (hoardfs.jobs.progress)
    seconds: float | None = None  # how long it worked (ingest: its steps' times; None while unknown)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- forms: the typed parameters of a maintenance job -----------------------------------------

def params_model(kind: str) -> type[BaseModel]:
    """A pydantic model of the job's parameters (all but config_path), from its signature."""
    fn = maintenance.JOBS[kind]
    hints = typing.get_type_hints(fn, include_extras=True)  # the module's annotations are strings
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in maintenance.NOT_PARAMS:
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints[name], default)
    return create_model(f"{kind.title().replace('-', '')}Params", __config__=ConfigDict(extra="forbid"), **fields)


def describe(kind: str) -> str:
    return inspect.getdoc(maintenance.JOBS[kind]) or ""


def _validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return params_model(kind)(**params).model_dump()
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"]) or kind
        raise LaunchError(f"{kind}: {where}: {first['msg']}") from None


# -- launching ---------------------------------------------------------------------------------

@_needs_redis
def launch_maintenance(cfg: Settings, kind: str, params: dict[str, Any], by: str = "", conn=None) -> str:
    """Validate and queue a maintenance job; returns its id."""
    if kind not in maintenance.JOBS:
        raise LaunchError(f"no maintenance job {kind!r}; one of {', '.join(maintenance.JOBS)}")
    clean = _validate(kind, params)
    labels = [d.label for d in cfg.disks]
    for key in ("disk", "onto"):  # every parameter naming a disk names one of hoard.toml's
        if clean.get(key) not in (None, "") and clean[key] not in labels:
            raise LaunchError(f"{kind}: {key}: no disk {clean[key]!r} in hoard.toml; one of {', '.join(labels)}")
    if kind == "rebuild" and clean.get("onto") == clean["disk"]:
        raise LaunchError(f"rebuild: onto: a disk cannot be rebuilt onto itself ({clean['disk']})")
    job_id = f"{PREFIX}{kind}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    rq_queue(MAINTENANCE_QUEUE, conn or connect(cfg.redis_url), jobkey.of(cfg)).enqueue(
        maintenance.run, kind, str(cfg.source) if cfg.source else None, **clean, job_id=job_id,
        job_timeout=maintenance.JOB_TIMEOUT_S, result_ttl=30 * 86400, failure_ttl=365 * 86400,
        description=f"{kind} {' '.join(f'{k}={v}' for k, v in clean.items())}".strip(),
        meta={"kind": kind, "params": clean, "by": by})
    return job_id


def ingest_candidates(cfg: Settings) -> list[dict[str, str]]:
    """Batch directories in 3A not ingested yet, with the source their `_READY` names (if any)."""
    zone3a = cfg.ssd.zone_path("3A")
    out = []
    for d in sorted(zone3a.iterdir()) if zone3a.is_dir() else []:
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        try:
            st = ingest.load_state(cfg, d.name)
        except HoardError:  # a state file the service did not write, or a damaged one: its line on the run's page
            out.append({"batch_id": d.name, "source": "", "state": "refused"})
            continue
        if st is not None and st.finished:
            continue
        try:
            source = ingest.read_signal(cfg, d) if (d / ingest.SIGNAL).exists() else ""
        except HoardError:
            source = ""
        out.append({"batch_id": d.name, "source": source, "state": st.status if st else "new"})
    return out


def sources(cfg: Settings) -> list[str]:
    """The source names a batch may be ingested as: the configured ones and every format."""
    # deferred: the adapters' format list, only for the launch form
    from hoardfs.adapters import FORMATS

    return sorted(set(cfg.sources) | set(FORMATS))


@_needs_redis
def launch_ingest(cfg: Settings, batch_id: str, source: str | None, conn=None) -> ingest.BatchState:
    """UA_1 for a batch of 3A (as `hoard ingest 3A/<batch> [--source S]`)."""
    if not batch_id:
        raise LaunchError("ingest: pick a batch of zone 3A")
    return ingest.submit(cfg, cfg.ssd.zone_path("3A") / batch_id, source or None, conn)


@_needs_redis
def launch_output(cfg: Settings, kind: str, output_id: str, layout: str, selector: dict | None = None,
                  nodes: list[str] | None = None, dedup: str = "by_node", mode: str = "copy", conn=None) -> str:
    """A stage (3C) or export (3D), checked and recorded, then queued (as `hoard stage|export`)."""
    if kind not in outputs.ZONE_OF:
        raise LaunchError(f"{kind!r}: stage or export")
    spec = outputs.make_spec(kind, output_id, layout, selector, nodes, dedup, mode)
    st = outputs.submit(cfg, spec)
    if st.status != "done":
        enqueue_output(cfg, kind, output_id, conn)
    return output_id


@_needs_redis
def enqueue_output(cfg: Settings, kind: str, output_id: str, conn=None) -> str:
    """Queue the recorded request of an output, unless it already waits or runs (as `hoard
    stage|export` does)."""
    return enqueue_once(conn or connect(cfg.redis_url), outputs.QUEUE, "hoardfs.jobs.outputs.run_job",
                        str(cfg.source) if cfg.source else None, output_id, job_id=f"{kind}-{output_id}",
                        timeout=outputs.JOB_TIMEOUT_S, description=f"{kind} {output_id}", key=jobkey.of(cfg))


# -- listing -------------------------------------------------------------------------------------

_RQ_STATUS = {"queued": "queued", "deferred": "queued", "scheduled": "queued", "started": "running",
              "finished": "done", "failed": "failed", "stopped": "canceled", "canceled": "canceled"}


def _iso(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.isoformat(timespec="seconds")


#: hoardfs.jobs.outputs.describe's statuses as runs show them (an interrupted or vanished output
#: needs a person like a failed one; the reason says which)
_OUTPUT_STATUS = {"interrupted": "failed", "gone": "failed"}


def _maintenance_run(job: Job, kind: str | None = None, run_id: str | None = None, queue: str = MAINTENANCE_QUEUE
                     ) -> Run:
    """A maintenance job (or a dataset build's: `kind`, `run_id`, `queue` given) as a run: a
    finished one whose report counts errors is `done with errors` (the count is in its meta
    since the job ended, or read from its return value)."""
    status = _RQ_STATUS.get(str((job.get_status(refresh=True) or JobStatus.QUEUED).value), "queued")
    error = ""
    if status == "failed":
        res = job.latest_result()
        error = (res.exc_string or "").strip().splitlines()[-1] if res and res.exc_string else ""
    if status == "done":
        n = job.meta["errors"] if "errors" in job.meta else reports.errors(job.return_value())
        if n:
            status, error = "done with errors", f"its report counts {n} error(s); see the run's log"
    seconds = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
    return Run(kind or job.meta.get("kind", "?"), run_id or job.id, status, _iso(job.created_at),
               _iso(job.ended_at or job.started_at or job.enqueued_at), error=error, queue=queue,
               params=job.meta.get("params", {}), by=job.meta.get("by", ""), seconds=seconds)


def _with_progress(conn, found: list[Run]) -> list[Run]:
    figures = job_progress.read(conn, [r.id for r in found if r.status != "queued"])
    for r in found:
        p = figures.get(r.id)
        # "running" figures of a run that ended were left by a publisher killed with its job
        # (kill -9, the OOM killer): they are no one's live figures
        r.progress = None if p is not None and p.get("state") == "running" and r.status != "running" else p
    return found


def maintenance_runs(conn) -> list[Run]:
    q = rq_queue(MAINTENANCE_QUEUE, conn)
    ids = set(q.job_ids)
    for reg in (StartedJobRegistry(queue=q), FinishedJobRegistry(queue=q), FailedJobRegistry(queue=q),
                CanceledJobRegistry(queue=q)):
        ids.update(reg.get_job_ids(cleanup=False))  # a listing changes nothing: no failure callbacks, no moves
    jobs = Job.fetch_many(sorted(i for i in ids if i.startswith(PREFIX)), connection=conn, serializer=SERIALIZER)
    return _with_progress(conn, [_maintenance_run(job) for job in jobs if job is not None])


def dataset_runs(conn) -> list[Run]:
    """The dataset builds RQ keeps (queued, running, finished, failed, cancelled) on `io`."""
    q = rq_queue(datasets_job.QUEUE, conn)
    ids = set(q.job_ids)
    for reg in (StartedJobRegistry(queue=q), FinishedJobRegistry(queue=q), FailedJobRegistry(queue=q),
                CanceledJobRegistry(queue=q)):
        ids.update(reg.get_job_ids(cleanup=False))
    jobs = Job.fetch_many(sorted(i for i in ids if i.startswith(DATASET_PREFIX)), connection=conn,
                          serializer=SERIALIZER)
    return [_dataset_run(job) for job in jobs if job is not None]


#: the job function of a queued materialize (hoardfs.jobs.datasets.submit_materialize)
DATASET_MATERIALIZE = "hoardfs.jobs.datasets.materialize_job"


def _dataset_run(job: Job) -> Run:
    """A dataset's job as a run: its build (spec, mode, force) or a materialize of a version."""
    run = _maintenance_run(job, "dataset", job.id.removeprefix(DATASET_PREFIX), datasets_job.QUEUE)
    args = job.args or ()
    if job.func_name == DATASET_MATERIALIZE:
        run.params = {"materialize": args[1] if len(args) > 1 else ""}
    else:
        run.params = {"mode": args[2] if len(args) > 2 else "", "force": bool(args[3]) if len(args) > 3 else False}
    run.by = job.meta.get("by", "")
    return run


def _by(cfg: Settings, job_id: str, by: str) -> Job:
    job = fetch_job(job_id, connect(cfg.redis_url))
    if "by" not in job.meta:
        job.meta["by"] = by
        job.save_meta()
    return job


def launch_dataset(cfg: Settings, spec: DatasetSpec, by: str = "") -> str:
    """Queue a build of `spec` on `io` — `hoard dataset build
    SPEC` without --here — with who launched it in the job's meta; returns the run id (the
    dataset's name: its page is /runs/dataset/<name>). A build of that name already waiting
    or running is that one."""
    with redis_required(cfg.redis_url):
        job = _by(cfg, datasets_job.submit(cfg, spec), by)
    if job.func_name == DATASET_MATERIALIZE:
        raise LaunchError(f"dataset {spec.name}: a materialize of it waits or runs ({job.description}); launch the "
                          f"build once it ended (/runs/dataset/{spec.name})")
    return spec.name


def launch_dataset_materialize(cfg: Settings, ref: str, by: str = "") -> str:
    """Queue `hoard dataset materialize NAME@N` on `io`; the run id (the dataset's name).
    Refused in one line while another job of that dataset (a build, another version's
    materialize) waits or runs: one job per dataset at a time."""
    with redis_required(cfg.redis_url):
        job = _by(cfg, datasets_job.submit_materialize(cfg, ref), by)
    name = job.id.removeprefix(DATASET_PREFIX)
    if job.func_name != DATASET_MATERIALIZE or list(job.args[1:2]) != [ref]:
        raise LaunchError(f"dataset {name}: another job of it waits or runs ({job.description}); materialize "
                          f"{ref} once it ended (/runs/dataset/{name})")
    return name


@_needs_redis
def runs(cfg: Settings, conn=None) -> list[Run]:
    """Every run this installation knows, newest first (ingests and outputs from their state
    files; maintenance jobs from Redis, while RQ keeps them: 30 days done, a year failed)."""
    out = [Run("ingest", s.batch_id, s.status, s.signalled, s.updated, source=s.source, error=s.error or "",
               queue=ingest.QUEUE_OF.get(s.step, ""), seconds=sum(s.seconds.values()) if s.seconds else None)
           for s in ingest.all_states(cfg)]
    for p in sorted(outputs.state_dir(cfg).glob("*.json")):
        try:
            st = outputs.load_state(cfg, p.stem)
        except HoardError as e:  # a damaged state file: listed with what to do
            out.append(Run("export", p.stem, "failed", "", "", error=e.message, queue=outputs.QUEUE))
            continue
        if st is not None:
            shown, why = outputs.describe(cfg, st)
            out.append(Run(st.spec.get("kind", "export"), st.id, _OUTPUT_STATUS.get(shown, shown), st.updated,
                           st.updated, error=why or "", queue=outputs.QUEUE,
                           params={"layout": st.spec.get("layout", {}).get("name")},
                           seconds=st.report.get("seconds") if shown == "done" else None))
    out += [action_run(d) for d in actions_api.runs(cfg)]
    try:
        out += maintenance_runs(conn or connect(cfg.redis_url))
        out += dataset_runs(conn or connect(cfg.redis_url))
    except redis.RedisError:
        pass  # the health document reports Redis; the state files still list ingests and outputs
    out.sort(key=lambda r: r.created, reverse=True)
    return out


def failed_not_since_succeeded(all_runs: list[Run]) -> list[Run]:
    """Failed runs with no later successful run of the same thing (the same batch or output,
    or the same maintenance kind with the same parameters)."""
    def key(r: Run) -> tuple:
        return (r.kind, r.id) if r.kind in ("ingest", "stage", "export", "action", "dataset") else (
            r.kind, tuple(sorted(r.params.items())))

    ok_after: dict[tuple, str] = {}
    for r in all_runs:
        if r.status in ("done", "done with rejects"):
            ok_after[key(r)] = max(ok_after.get(key(r), ""), r.created)
    return [r for r in all_runs if r.status == "failed" and ok_after.get(key(r), "") <= r.created]


def select(all_runs: list[Run], kind: str = "", status: str = "", source: str = "", since: str = "",
           until: str = "", page: int = 1, per_page: int = 25) -> tuple[list[Run], int]:
    """One page of the runs matching the filters (dates `YYYY-MM-DD`, inclusive), and the total."""
    found = [r for r in all_runs if (not kind or r.kind == kind) and (not status or r.status == status)
             and (not source or r.source == source) and (not since or r.created[:10] >= since)
             and (not until or r.created[:10] <= until)]
    start = max(0, (page - 1) * per_page)
    return found[start:start + per_page], len(found)


# -- one run ---------------------------------------------------------------------------------

def _ingest_job(cfg: Settings, st: ingest.BatchState, conn) -> Job | None:
    try:
        return fetch_job(ingest.job_id(st.batch_id, st.step), conn)
    except NoSuchJobError:
        return None


def _job_of(cfg: Settings, kind: str, run_id: str, conn) -> Job | None:
    if kind == "ingest":
        st = ingest.load_state(cfg, run_id)
        return _ingest_job(cfg, st, conn) if st else None
    try:
        return fetch_job(run_id if kind in maintenance.JOBS else f"{kind}-{run_id}", conn)
    except (NoSuchJobError, ValueError):  # ValueError: not even a valid job id (a hand-typed URL)
        return None


@_needs_redis
def detail(cfg: Settings, kind: str, run_id: str, conn=None) -> dict[str, Any]:
    """Everything the run page shows: state, step times, report, the failed job's traceback."""
    conn = conn or connect(cfg.redis_url)
    out: dict[str, Any] = {"kind": kind, "id": run_id}
    if kind == "ingest":
        st = ingest.load_state(cfg, run_id)
        if st is None:
            raise LaunchError(f"no ingest of batch {run_id!r}")
        out.update(asdict(st), steps=[{"step": s, "queue": ingest.QUEUE_OF[s], "done": s in st.done,
                                       "current": s == st.step and not st.finished,
                                       "seconds": st.seconds.get(s)} for s in ingest.STEPS],
                   took=sum(st.seconds.values()) if st.seconds else None)
    elif kind in outputs.ZONE_OF:
        ost = outputs.load_state(cfg, run_id)
        if ost is None:
            raise LaunchError(f"no {kind} {run_id!r}")
        shown, why = outputs.describe(cfg, ost)
        out.update(asdict(ost), status=_OUTPUT_STATUS.get(shown, shown), error=why or "",
                   report=ost.report if shown == "done" else {},
                   took=ost.report.get("seconds") if shown == "done" else None)
    elif kind == "dataset":
        job = _job_of(cfg, kind, run_id, conn)
        if job is None:
            raise LaunchError(f"no dataset build {run_id!r} queued or kept (RQ keeps finished ones a day, failed "
                              "ones 30 days); `hoard dataset list` lists the versions built")
        run = _dataset_run(job)
        out.update(run.as_dict(), report=job.return_value() or {}, took=run.seconds)
    else:
        job = _job_of(cfg, kind, run_id, conn) if run_id.startswith(PREFIX) else None
        if job is None or job.meta.get("kind") != kind:  # a hand-typed URL: another job's id, or none
            raise LaunchError(f"no {kind} run {run_id!r} (RQ keeps finished ones 30 days)")
        run = _with_progress(conn, [_maintenance_run(job)])[0]
        out.update(run.as_dict(), report=job.return_value() or {}, took=run.seconds)
    job = _job_of(cfg, kind, run_id, conn)
    res = job.latest_result() if job is not None else None
    out["traceback"] = res.exc_string if res is not None and res.exc_string else ""
    out["job_id"] = job.id if job is not None else ""
    out["log"] = runlog.read(cfg, kind, run_id, failed=out.get("status") == "failed")
    out["job_status"] = str(job.get_status(refresh=True).value) if job is not None and job.get_status() else ""
    out["job_log"] = [] if job is None else [
        f"{what} {_iso(t).replace('T', ' ')}" for what, t in (("queued", job.enqueued_at), ("started", job.started_at),
                                                            ("ended", job.ended_at)) if t is not None
    ] + ([f"worker {job.worker_name}"] if job.worker_name else []) + [f"{job.origin}: {job.description}"]
    return out


@_needs_redis
def why_waiting(cfg: Settings, kind: str, run_id: str, status: str, conn=None) -> list[str]:
    """Why a queued run has not started: no worker on its queue, a zone past its deny mark."""
    if status not in ("queued", "running"):
        return []
    conn = conn or connect(cfg.redis_url)
    reasons = []
    if kind == "ingest":
        st = ingest.load_state(cfg, run_id)
        queue = ingest.QUEUE_OF[st.step] if st else "ingest"
        zone = "3B"  # the package step writes there
        reasons += [s["reason"] for s in ingest.stalled_batches(cfg, [st] if st else []) if s["batch_id"] == run_id]
    elif kind in outputs.ZONE_OF:
        queue, zone = outputs.QUEUE, outputs.ZONE_OF[kind]
        if status == "queued" and _job_of(cfg, kind, run_id, conn) is None:  # recorded, never queued (Redis was down)
            reasons.append(f"recorded but not on the {queue} queue (Redis did not answer when it was launched): "
                           f"launch the same request again, or `hoard {kind} {run_id} … --here`")
    elif kind == "dataset":
        queue, zone = datasets_job.QUEUE, DATASET_ZONE
    else:
        queue, zone = MAINTENANCE_QUEUE, ""
    if queue in unserved_queues(conn) and not any("no worker serves" in r for r in reasons):
        reasons.append(f"no worker serves the {queue} queue; start one with `hoard worker` (systemd: hoard-worker)")
    if zone:
        u = zones.zone_usage(cfg, zone)
        if u["level"] in ("deny", "emergency"):
            reasons.append(f"zone {zone} is {u['used_ratio']:.0%} full ({u['level']}); `hoard zones clean ID` "
                           "frees a sealed output")
    return reasons


@_needs_redis
def cancel(cfg: Settings, kind: str, run_id: str, conn=None) -> str:
    """Stop a running run's job or take a queued one off its queue; the run can be resumed."""
    conn = conn or connect(cfg.redis_url)
    job = _job_of(cfg, kind, run_id, conn)
    if job is None:
        raise LaunchError(f"{kind} {run_id}: no job waits or runs")
    status = job.get_status(refresh=True)
    if status == JobStatus.STARTED:
        try:
            send_stop_job_command(conn, job.id)
        except InvalidJobOperation as e:
            raise LaunchError(f"{kind} {run_id}: {e}") from None
        return "stop sent to its worker"
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        if kind == "ingest":
            st = ingest.load_state(cfg, run_id)
            if st is not None:
                st.status, st.error = ingest.Status.FAILED.value, "canceled by a person; resume to go on"
                ingest.save_state(cfg, st)
        return "taken off its queue"
    raise LaunchError(f"{kind} {run_id}: its job is {status}, nothing to cancel")


@_needs_redis
def retry(cfg: Settings, kind: str, run_id: str, by: str = "", conn=None) -> str:
    """Resume a failed or stopped run where it stopped (ingest, outputs) or run the same
    maintenance job again; returns the id of the run that goes on."""
    conn = conn or connect(cfg.redis_url)
    if kind == "ingest":
        launch_ingest(cfg, run_id, None, conn)
        return run_id
    if kind in outputs.ZONE_OF:
        st = outputs.load_state(cfg, run_id)
        if st is None or st.spec.get("kind") != kind:
            raise LaunchError(f"no {kind} {run_id!r} to retry; launch it first")
        if st.status == "refused":  # it never started: nothing to resume, and its id is free for any request
            raise LaunchError(f"{kind} {run_id} was refused before it started ({st.error}); nothing to retry — "
                              f"fix what it names and launch it again")
        enqueue_output(cfg, kind, run_id, conn)
        return run_id
    job = _job_of(cfg, kind, run_id, conn)
    if job is not None:
        _signed_here(cfg, kind, run_id, job)
    if kind == "dataset":  # the same spec, mode and force again (they travel in the job)
        if job is None:
            raise LaunchError(f"no dataset build {run_id!r} to retry; launch it again from /datasets/new")
        if job.func_name == DATASET_MATERIALIZE:
            return datasets_job.submit_materialize(cfg, job.args[1]).removeprefix(DATASET_PREFIX)
        spec = DatasetSpec.from_doc(job.args[1])
        return datasets_job.submit(cfg, spec, job.args[2], bool(job.args[3])).removeprefix(DATASET_PREFIX)
    if job is None:
        raise LaunchError(f"no maintenance run {run_id!r} to retry")
    if list(job.args or ())[:1] != [kind]:
        raise LaunchError(f"maintenance run {run_id} is not a {kind} run; nothing queued")
    # the parameters it was signed with (its arguments), not its meta: meta is outside the signature
    return launch_maintenance(cfg, kind, dict(job.kwargs), by, conn)


def _signed_here(cfg: Settings, kind: str, run_id: str, job: Job) -> None:
    """LaunchError (one line) unless `job` was queued by this server (its signature checks with
    the store's key, at any age): Retry queues its function and arguments again, signed anew, so
    what a remote host wrote into Redis — a run it made up, a run whose arguments it changed — is
    never signed by a Retry (hoardfs.jobs.jobkey)."""
    queue = datasets_job.QUEUE if kind == "dataset" else MAINTENANCE_QUEUE
    why = jobkey.of(cfg).check(job, queue, max_age_s=None)
    if why:
        raise LaunchError(f"{kind} run {run_id} was not queued by this server ({why}); nothing queued — launch it "
                          "anew from its form", ExitCode.DATA)


def batch_dir(cfg: Settings, batch_id: str) -> Path:
    return cfg.ssd.zone_path("3A") / batch_id


# -- actions (UA_2): what the Actions pages call -------------------------------------------------

#: an action run's status as the runs list says it (one word for a cancel, whatever the kind)
_ACTION_STATUS = {"cancelled": "canceled"}
#: what a person may do with an action run in each status (docs/actions.md, "Runs")
ACTION_CANCELABLE = ("queued", "running", *WAITING)
#: the newest bytes of a worker's log the run page shows
WORKER_LOG_TAIL = 64 << 10
#: the children a run page lists (each a link to its node page)
CHILDREN_SHOWN = 200


def action_children(doc: dict[str, Any]) -> int | None:
    """How many children a run stored (None: it creates none, or has not stored them yet)."""
    report = doc.get("report") or {}
    return report.get("children_stored", report.get("children"))


def action_run(doc: dict[str, Any]) -> Run:
    """An action run (`hoardfs.jobs.actions.api.status_doc`) as a row of the runs list."""
    status = _ACTION_STATUS.get(doc["status"], doc["status"])
    seconds = sum(doc["seconds"].values()) if doc.get("seconds") else None
    return Run("action", doc["run"], status, doc["created"], doc["updated"], source=doc["action"],
               error=doc.get("error") or "", queue=ACTION_QUEUE_OF.get(doc["step"], ""), params=doc["params"],
               by=doc.get("by", ""), seconds=seconds)


def action_contracts(cfg: Settings) -> list[dict[str, Any]]:
    """Every contract, as `hoard action list` lists them: the actions directory's, then the
    built-ins no file there shadows; a bad file with its first problem (`error`)."""
    out = []
    for e in contracts.list_all(cfg.actions_dir):
        d: dict[str, Any] = {"file": str(e.path), "builtin": e.builtin, "name": e.path.stem}
        if e.contract is not None:
            d |= contracts.summary(e.contract) | {"description": e.contract.description,
                                                  "gate": e.contract.gate is not None}
        else:
            d |= {"error": e.error, "problems": e.problems}
        out.append(d)
    return out


def action_contract(cfg: Settings, name: str) -> tuple[contracts.Contract, list[tuple[str, str]]]:
    """One contract and what `hoard action show NAME` says of it; ContractError (its lines)
    for an unknown name or a bad file."""
    path, builtin = contracts.find_any(cfg.actions_dir, name)
    c = contracts.load_file(path)
    return c, contracts.show_rows(c, path, builtin)


def _runs_newest_first(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: d["created"], reverse=True)


def action_runs(cfg: Settings, action: str | None = None) -> list[dict[str, Any]]:
    """Every action run (of `action`, if given), newest first: `status_doc` with `children`."""
    docs = [d for d in actions_api.runs(cfg) if action is None or d["action"] == action]
    return [d | {"children": action_children(d), "took": sum(d["seconds"].values()) if d["seconds"] else None}
            for d in _runs_newest_first(docs)]


@_needs_redis
def launch_action(cfg: Settings, name: str, selector: dict | None = None, nodes: list[str] | None = None,
                  given: list[str] | None = None, by: str = "", conn=None, remote: bool = False
                  ) -> actions_api.Submitted:
    """`hoard action run NAME [--selector|--nodes] [--param K=V]… [--remote]`, queued for `hoard
    worker`; `by`: who launched it; `remote`: its stage, worker and parse on a host of the
    `remote` queue. The same run again: "done already", "resumed", or what it does now."""
    if selector is not None and nodes is not None:
        raise LaunchError("give a selector (narrows the contract's input_selector) or a list of sha256 (replaces "
                          "it), not both")
    return actions_api.submit(cfg, name, selector=selector, nodes=nodes, given=given or [],
                              redis_conn=conn or connect(cfg.redis_url), by=by, remote=remote)


def remote_refusal(c: contracts.Contract) -> str:
    """Why action `c` cannot run on another host (`--remote`), or "" when it can."""
    from hoardfs.jobs.actions.remote import refusal  # deferred: the launch form asks; remote runs import boto3 later

    return refusal(c)


@_needs_redis
def release_action(cfg: Settings, rid: str, conn=None) -> str:
    """`hoard action release RUN`; what happened, in a few words."""
    st = actions_api.release(cfg, rid, conn or connect(cfg.redis_url))
    if "labels" in st.steps:
        return f"labels released: what is labelled now is imported ({st.status} at step {st.step})"
    return f"gate released ({st.status} at step {st.step})"


@_needs_redis
def resume_action(cfg: Settings, rid: str, conn=None) -> str:
    """`hoard action resume RUN` (queued for `hoard worker`); what happened, in a few words."""
    sub = actions_api.resume(cfg, rid, redis_conn=conn or connect(cfg.redis_url))
    return f"{sub.how} ({sub.state.status} at step {sub.state.step})"


def cancel_action(cfg: Settings, rid: str) -> str:
    """`hoard action cancel RUN`; what happened, in a few words."""
    st = actions_api.cancel(cfg, rid)
    return "cancelled" if st.status == "cancelled" else f"cancel asked; step {st.step} stops at its next check"


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    return text.split("\n", 1)[1] if size > limit and "\n" in text else text


def action_detail(cfg: Settings, rid: str) -> dict[str, Any]:
    """Everything an action run's page shows: `hoard action status RUN --json`, each step's
    state and seconds, the children it stored (up to CHILDREN_SHOWN), the gate, its run log and
    the newest WORKER_LOG_TAIL bytes of its worker's log."""
    try:
        st = load_state(cfg, check_id(rid))
    except RunRefused as e:  # files hoardfs did not write: the line, and nothing of what they say
        doc = actions_api.refused_doc(refusal(cfg, rid, e.message))
        return doc | {"steps_timeline": [], "children": None, "children_listed": [], "took": None,
                      "gate_contract": None, "log": "", "worker_log": ""}
    if st is None:
        raise LaunchError(f"no action run {rid!r}; the Actions page lists them")
    doc = actions_api.status_doc(cfg, st)
    shown = doc["status"]
    steps = []
    for s in st.steps:
        if s in st.done:
            state = "done"
        elif s == st.step:
            state = {"WAIT_GPU_READY": "waiting", "waiting_external": "waiting", "waiting_labels": "waiting",
                     "waiting_remote": "waiting"}.get(shown, shown)
        else:
            state = "to do"
        steps.append({"step": s, "queue": ACTION_QUEUE_OF.get(s, ""), "state": state, "seconds": st.seconds.get(s)})
    try:
        stored = read_work(cfg, rid, "stored")
    except (OSError, ValueError):
        stored = {}
    children = [{"path": p, "sha256": v[0], "size": v[1]} for p, v in sorted(stored.items())[:CHILDREN_SHOWN]]
    try:
        gate = read_work(cfg, rid, "contract").get("gate")
    except (OSError, ValueError):
        gate = None
    return doc | {"steps_timeline": steps, "children": action_children(doc), "children_listed": children,
                  "took": sum(st.seconds.values()) if st.seconds else None, "gate_contract": gate,
                  "log": runlog.read(cfg, "action", rid, failed=shown == "failed"),
                  "worker_log": _tail(log_path(cfg, rid), WORKER_LOG_TAIL)}
