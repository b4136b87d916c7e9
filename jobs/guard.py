"""What a hoardfs worker agrees to run: the JSON serializer every queue, job and reader uses,
and the allow-list a job is checked against before anything of it is imported or called.

Anyone who can write to Redis can put a job on a queue, and RQ runs whatever a job names:
`func_name` is imported by dotted path and called with the job's arguments. With RQ's
default serializer the job's `data`, `meta` and `result` are pickles, and unpickling alone
runs code (a pickle names any callable) — in the worker, and in every process that merely
fetches the job (the GUI's run pages, rq-dashboard). So:

- every queue, fetch and worker of hoardfs uses SERIALIZER (JSON): reading a job decodes
  JSON, which names no code; a pickle written by someone else does not decode and is refused;
- a worker runs a job only when `refusal(job, …)` finds nothing wrong: its function one of
  JOB_FUNCTIONS, no instance, no callbacks or webhooks, and the configuration file it names the worker's
  own (a job naming another file would run a hoardfs job against someone else's disks and
  paths, as the worker's user) — or, for HOST_JOBS, none at all (run with the worker's
  own). A refused job is marked failed with the reason, one line in the worker's log, and
  nothing of it was imported or run;
- a job not of HOST_JOBS runs only when it is signed with the worker's store key and was not
  run to its end before (hoardfs.jobs.jobkey): a remote host reaches the same Redis with its password,
  but only the server's own code queues the server's jobs.

This is the second wall: the first is that only the `hoard` group can reach Redis at all (a
unix socket with mode 0770, or a password; docs/security.md).
"""

from __future__ import annotations

import os
from typing import Any

from rq import serializers as rq_serializers
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from hoardfs.base.errors import HoardError
from hoardfs.base.proc import process_space
from hoardfs.jobs import jobkey

#: the serializer of every hoardfs queue, job fetch and worker (never RQ's default, pickle)
SERIALIZER = JSONSerializer


# RQ falls back to pickle wherever a caller names no serializer — rq-dashboard's job page and
# delete route, an execution's job: `Job.fetch` decodes a job's `meta` as it reads it, so a
# pickled `meta` written into Redis ran its command in the GUI (root) when a viewer opened
# /rq/0/view/job/<id>. In a hoardfs process RQ's fallback is JSON: nothing is ever unpickled.
rq_serializers.PickleSerializer = SERIALIZER  # type: ignore[assignment]  # replaced on purpose: see above
if rq_serializers.resolve_serializer(None) is not SERIALIZER:  # an RQ that no longer falls back this way
    raise ImportError("hoardfs.jobs.guard: RQ's default serializer could not be made JSON; pin rq or update hoardfs.jobs.guard")


def _no_callback(job: Job) -> None:
    return None


# hoardfs sets no callbacks. RQ imports a job's callback by the name its Redis hash holds and
# calls it with the job — the worker's registry clean-up does for every abandoned job of
# `rq:wip:<queue>`, and so does every process that lists a queue's started jobs (the GUI's run
# pages, `hoard health`): `builtins.print` named there was called, so was any importable
# callable (an import alone runs a module's code). No job's callback is ever looked up.
for _name in ("success_callback", "failure_callback", "stopped_callback"):
    setattr(Job, _name, property(_no_callback))

#: the job functions a hoardfs worker runs → the position of their `config_path` argument
#: (positional, or the keyword of that name)
JOB_FUNCTIONS = {
    "hoardfs.jobs.ingest.run_step": 0,
    "hoardfs.jobs.actions.run_step": 0,
    "hoardfs.jobs.actions.empty_trash": 0,
    "hoardfs.jobs.actions.near_dups_of_batch": 0,
    "hoardfs.jobs.actions.pipelines_of_batch": 0,
    "hoardfs.jobs.outputs.run_job": 0,
    "hoardfs.jobs.datasets.run_job": 0,
    "hoardfs.jobs.datasets.materialize_job": 0,
    "hoardfs.jobs.maintenance.run": 1,
    "hoardfs.jobs.store_jobs.replicate": 0,
    "hoardfs.jobs.events.deliver": 0,
    "hoardfs.jobs.remote.run_output": 0,
    "hoardfs.jobs.actions.remote.run_action": 0,
}
#: the job functions that name no configuration (None) and run against the worker's own —
#: `hoard worker` sets HOARD_CONFIG to its file: a stage/export planned on the store's server
#: and run on another host (hoardfs.jobs.remote), whose hoard.toml is not the server's; an action run's
#: stage, worker and parse there (hoardfs.jobs.actions.remote)
HOST_JOBS = frozenset({"hoardfs.jobs.remote.run_output", "hoardfs.jobs.actions.remote.run_action"})
#: the one queue HOST_JOBS are taken from (hoardfs.jobs.remote.QUEUE): they carry no signature,
#: so one a host put on a server's queue (`io`, `maintenance`) is refused, never run there
HOST_QUEUE = "remote"


class HoardJob(Job):
    """RQ's Job, except that a job hash RQ cannot read (a garbled field written by hand) is a
    job that does not exist — the worker goes on to the next — rather than an exception that
    ends the worker's loop ("found an unhandled exception, quitting")."""

    def restore(self, raw_data: Any) -> Any:
        try:
            return super().restore(raw_data)
        except NoSuchJobError:
            raise
        except Exception as e:
            why = f"job {self.id}: its Redis hash is not a job RQ can read ({type(e).__name__}: {e}); skipped"
            self.log.error("%s", why)
            raise NoSuchJobError(why) from None


def refusal(job: Job, config_path: str | os.PathLike[str] | None) -> str:
    """Why a worker whose configuration is `config_path` must not run `job`, or "" to run it.
    Reads only the job's decoded JSON: nothing the job names is imported."""
    if job.serializer is not SERIALIZER:
        return "not read with the JSON serializer"
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its payload is not JSON (a pickle written to Redis by hand?)"
    if getattr(job, "_unreadable_meta", None) is not None:
        return "its meta is not JSON (a pickle written to Redis by hand?)"
    if func_name not in JOB_FUNCTIONS:
        return f"function {str(func_name)[:200]!r} is not a hoardfs job (allowed: {', '.join(JOB_FUNCTIONS)})"
    if instance is not None or not isinstance(args, list) or not isinstance(kwargs, dict):
        return f"{func_name}: malformed payload (instance, args or kwargs)"
    callbacks = [n for n in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
                 if getattr(job, n, None)]
    if callbacks or job.webhooks:
        return f"{func_name}: names callbacks or webhooks; hoardfs jobs have none"
    at = JOB_FUNCTIONS[func_name]
    named = args[at] if len(args) > at else kwargs.get("config_path")
    if func_name in HOST_JOBS:
        return "" if named is None else f"{func_name}: names a configuration ({str(named)[:200]!r}); it runs with the worker's own"
    if not _same_file(named, config_path):
        return (f"{func_name}: names configuration {str(named)[:200]!r}, not this worker's "
                f"({str(config_path) if config_path else 'none given'})")
    return ""


def _same_file(named: Any, own: str | os.PathLike[str] | None) -> bool:
    """A job's configuration is the worker's own: the very file the worker loaded, or none when
    the worker has none either (Settings built in code: `hoard ingest --here`, tests)."""
    if named is None or own is None:
        return named is None and own is None
    if not isinstance(named, str):
        return False
    try:
        return os.path.samefile(named, own)
    except (OSError, ValueError):
        return False


#: what the worker's log line ends with when a job is refused by `refusal`
WALL = "only the hoard group may write to Redis (docs/security.md)"


class GuardedWorker:
    """Mixin for an RQ worker class (before it in the bases): checks each dequeued job with
    `refusal` — and, unless it is one of HOST_JOBS, its signature and run record (hoardfs.jobs.jobkey) —
    before the worker forks or calls anything, and fails a refused one without running it (a
    copy of a job that ran, or runs now, is dropped and the job it copies left as it is).
    `config_path` is the file the worker's own configuration came from; `job_key` the key of its
    store (when None, that of the store `config_path` names)."""

    config_path: str | os.PathLike[str] | None = None
    job_key: jobkey.JobKey | None = None
    #: the run record of the job under way (hoardfs.jobs.jobkey.JobKey.take), inherited by the work horse
    _run_record: int | None = None

    def _key(self) -> jobkey.JobKey | None:
        if self.job_key is None and self.config_path is not None:
            from hoardfs.base import config as config_mod  # deferred: the configuration, once

            try:
                self.job_key = jobkey.of(config_mod.load(self.config_path))
            except HoardError:
                return None
        return self.job_key

    def signature_refusal(self, job: Job, queue: Queue) -> tuple[str, int | None, bool]:
        """(why `job`, allowed by `refusal`, must not run — "" to run it —, its run record to hold
        while it runs, whether to fail it): HOST_JOBS run with none (the host has no key)."""
        if job.func_name in HOST_JOBS:  # unsigned by design: so run only as a host's, from the hosts' queue
            if queue.name != HOST_QUEUE:
                return (f"{job.func_name} is a worker host's job, taken from {queue.name!r}: it runs only from "
                        f"{HOST_QUEUE!r}"), None, True
            return "", None, True
        key = self._key()
        if key is None:
            return "not signed by this server's key (this worker loads no configuration, so holds no key)", None, True
        why = key.check(job, queue.name)
        if why:
            return why, None, True
        try:
            why, record = key.take(job)
        except jobkey.JobKeyError as e:
            return e.message, None, True
        return why, record, False

    def serialize(self) -> dict[str, Any]:
        """RQ's worker record, with where this worker's pid means what it says (its host's boot
        and pid namespace: hoardfs.base.proc.process_space): the reaper tells a live worker of its own
        host from a dead one on a host of the same name (hoardfs.jobs.reaper)."""
        return {**super().serialize(), "hoard_space": process_space()}  # type: ignore[misc]

    def execute_job(self, job: Job, queue: Queue) -> None:
        why, tail, record, fail = refusal(job, self.config_path), WALL, None, True
        if not why:
            why, record, fail = self.signature_refusal(job, queue)
            tail = jobkey.TAIL
        if not why:
            self._run_record = record
            try:
                super().execute_job(job, queue)  # type: ignore[misc]
            finally:
                self._run_record = None
                if record is not None:
                    os.close(record)  # (the flock goes with the last descriptor: the work horse's ended)
            return
        self.log.error("Worker %s: refused job %s on queue %s, not run: %s; %s",  # type: ignore[attr-defined]
                       self.name, job.id, queue.name, why, tail)  # type: ignore[attr-defined]
        if fail:
            # nothing the job names may be reached on the way to failing it: no retry, no webhook
            job.retries_left, job.webhooks = None, []
            self.handle_job_failure(job, queue, exc_string=f"refused by the worker, not run: {why}")  # type: ignore[attr-defined]
        queue.intermediate_queue.remove(job.id)

    def handle_job_success(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """RQ records the job finished; then its run record says it ran to its end (in the work
        horse, which holds the record: a copy of the job queued again is not run)."""
        super().handle_job_success(job, *args, **kwargs)  # type: ignore[misc]
        if self._run_record is not None:
            jobkey.JobKey.ran(self._run_record)


def exposure(url: str) -> str:
    """What lets people outside the `hoard` group write jobs into the Redis at `url`, or "":
    a TCP Redis without a password (any local user, any host that reaches the port), a unix
    socket whose mode gives others access. `hoard worker` says it once at start."""
    from redis.connection import parse_url  # deferred: only the worker asks

    try:
        parts = parse_url(url)
    except ValueError:
        return ""  # a URL redis-py cannot parse fails loudly when the worker connects
    if "path" in parts:
        try:
            mode = os.stat(parts["path"]).st_mode
        except OSError:
            return ""
        if mode & 0o007:
            return (f"Redis socket {parts['path']} has mode {mode & 0o777:o}: every local user can queue jobs; "
                    "serve it with unixsocketperm 770 for the hoard group (docs/security.md)")
        return ""
    if not parts.get("password"):
        return (f"Redis at {parts.get('host')}:{parts.get('port')} takes no password: every local user can queue "
                "jobs; use a unix socket with mode 0770 or a password in redis_url (docs/security.md)")
    return ""
