"""Store and database maintenance as RQ jobs (queue `maintenance`): the same work as `hoard
replicate | verify | rebuild | gc | db backup | db verify-backup`, for the GUI's launch forms.

Each job is a module-level function `(config_path, typed parameters…) -> report dict`; the
parameters' annotations and defaults are the form (`hoardfs.jobs.launch.params_model` turns them
into a pydantic model that validates a request before it is queued). Every one is safe to
run again: replicate copies only what is below target, verify re-reads, rebuild and gc
resume from their own state, a backup is a new one, a verify-backup another check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

import psycopg
from pydantic import Field

from hoardfs.base import config
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.io.scrub import verify as _verify
from hoardfs.fsd.maintenance.gc import gc as _gc
from hoardfs.fsd.maintenance.rebuild import rebuild as _rebuild
from hoardfs.fsd.store import Store
from hoardfs.jobs import events, reports, runlog, store_jobs
from hoardfs.jobs import progress as job_progress
from hoardfs.sql.backup import dump_backup, verify_dump
from hoardfs.sql.deletion import referenced

#: maintenance jobs hold the store's maintenance lock for hours on a big store
JOB_TIMEOUT_S = 24 * 3600


Seconds = Annotated[float, Field(gt=0, le=7 * 86400)]
Hook = Callable[[int, int], None] | None  # hoardfs.base.progress.Progress.update: how far a job is
Rate = Annotated[float, Field(ge=0, le=100_000)]  # MB/s, 0 = no limit


def replicate(config_path: str | None, budget_s: Seconds = 300.0, rate_mb_s: Rate = 100.0, *,
              progress: Hook = None) -> dict[str, Any]:
    """Bring shards to their replica target (copy_of_raw / copy_of_generated) within budget_s."""
    return store_jobs.replicate(config_path, budget_s, rate_mb_s or None, progress)


def verify(config_path: str | None, sample: Annotated[float, Field(ge=0.01, le=100)] = 100.0,
           disk: str | None = None, sha256: bool = False, repair: bool = False,
           budget_s: Seconds | None = None, *, progress: Hook = None) -> dict[str, Any]:
    """Check replicas (xxh3-128, footers; sha256 too), least recently verified first; repair
    replaces bad replicas from good ones."""
    if not 0.01 <= sample <= 100:
        raise HoardError(f"sample {sample}: a percentage from 0.01 to 100", ExitCode.USAGE)
    with Store.open(config.load(config_path)) as store:
        rep = _verify(store, sample, disk, sha256, repair, budget_s, progress=progress)
    if rep.unrepaired:
        raise HoardError(f"{rep.unrepaired} bad replicas remain ({', '.join(rep.bad[:3])}); "
                         "run verify again with repair", ExitCode.DATA)
    return asdict(rep)


def rebuild(config_path: str | None, disk: str, onto: str | None = None, rate_mb_s: Rate = 0.0, *,
            progress: Hook = None) -> dict[str, Any]:
    """Re-create the replicas a lost disk held, from healthy replicas (the disk is marked failed)."""
    with Store.open(config.load(config_path)) as store:
        rep = _rebuild(store, disk, onto, rate_mb_s or None, progress)
    if rep.lost:
        raise HoardError(f"{len(rep.lost)} shards of disk {disk} have no healthy replica (e.g. {rep.lost[0]}); "
                         "restore them from the zone 3B packages", ExitCode.DATA)
    if rep.not_copied:
        raise HoardError(f"{len(rep.not_copied)} shards of disk {disk} could not be copied: {rep.not_copied[0]}",
                         ExitCode.DATA)
    return asdict(rep)


def gc(config_path: str | None, threshold: Annotated[float, Field(ge=0.01, le=1)] = 0.5,
       dry_run: bool = False, *, progress: Hook = None) -> dict[str, Any]:
    """Compact shards holding deleted objects and free their space; what a database row,
    manifest or running job references is kept."""
    if not 0.01 <= threshold <= 1:
        raise HoardError(f"threshold {threshold}: a live share from 0.01 to 1", ExitCode.USAGE)
    cfg = config.load(config_path)
    assert cfg.database_url
    with psycopg.connect(cfg.database_url) as conn, Store.open(cfg, what="gc job") as store:
        rep = _gc(store, threshold, dry_run, roots=lambda shas: referenced(conn, shas), wait_s=60.0,
                  progress=progress)
    return asdict(rep)


def backup(config_path: str | None, kind: Literal["dump"] = "dump") -> dict[str, Any]:
    """A pg_dump of the database, stored as an object and copied to zone 3B (`hoard db backup`;
    pgBackRest full/diff backups stay with the command and its timer)."""
    cfg = config.load(config_path)
    assert cfg.database_url
    with Store.open(cfg) as store:
        res = dump_backup(cfg.database_url, store, cfg.ssd.zone_path("3B"))
    return {k: (str(v) if not isinstance(v, (int, float, str, dict, list, type(None))) else v)
            for k, v in asdict(res).items()}


def verify_backup(config_path: str | None) -> dict[str, Any]:
    """Restore the latest dump into a scratch database and check it (`hoard db verify-backup`)."""
    cfg = config.load(config_path)
    assert cfg.database_url
    with Store.open(cfg, writable=False) as store:
        res = verify_dump(cfg.database_url, store)
    if not res.ok:
        raise HoardError(f"dump {res.backup_id} failed its restore check: {res.detail}", ExitCode.DATA)
    return {k: (str(v) if not isinstance(v, (int, float, str, dict, list, bool, type(None))) else v)
            for k, v in asdict(res).items()}


#: kind → job, in the order the launch page lists them
JOBS: dict[str, Callable[..., Any]] = {"replicate": replicate, "verify": verify, "rebuild": rebuild, "gc": gc, "backup": backup,
        "verify-backup": verify_backup}
#: the jobs that stream bytes and take a `progress` hook: what each reports
PROGRESS = {"replicate": "bytes copied", "verify": "bytes checked", "rebuild": "bytes rebuilt",
            "gc": "live bytes copied"}
#: parameters of a job function that are not the form's
NOT_PARAMS = ("config_path", "progress")


def run(kind: str, config_path: str | None, /, **params: Any) -> dict[str, Any]:
    """RQ job: the maintenance job `kind` with its parameters, its log kept for the run page
    (hoardfs.jobs.runlog, under the RQ job's id), and for the streaming ones (PROGRESS) its figures
    published while it runs (hoardfs.jobs.progress: never waited for). `kind` and `config_path` are
    positional only: a job's own parameter of either name (backup's `kind`) is one of `params`."""
    from rq import get_current_job  # deferred: only a worker runs this

    job = get_current_job()
    job_id = job.id if job is not None else kind
    cfg = config.load(config_path)
    with runlog.captured(cfg, kind, job_id):
        try:
            if kind not in PROGRESS or not cfg.redis_url:
                report = JOBS[kind](config_path, **params)
            else:
                with job_progress.reported(cfg.redis_url, job_id, PROGRESS[kind]) as hook:
                    report = JOBS[kind](config_path, **params, progress=hook)
        finally:  # a disk this job found dying is announced now (hoardfs.jobs.events), not at the next health
            events.relay_from_index(cfg)
    if job is not None:  # the runs list reads it without loading every report (hoardfs.jobs.launch)
        job.meta["errors"] = reports.errors(report)
        job.save_meta()
    return report
