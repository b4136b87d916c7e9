"""The reaper: a running job whose worker stopped heartbeating — its host died, lost power or
its network — is queued again (docs/scale-out.md, "Heartbeat and reaper").

RQ's own handling of such a job has two gaps (rq#944, rq#1571). A busy worker refreshes its
job's `last_heartbeat` and the job's entry in the queue's StartedJobRegistry (`rq:wip:<queue>`,
scored by when it expires: now + job_monitoring_interval + 60 s) every
job_monitoring_interval; when the host dies the entry expires, but only a worker's
maintenance (every 10 minutes, by a worker serving that very queue) looks at it, and then it
*fails* the job (AbandonedJobError) unless the job has retries left. A job on a queue that
only the dead host served is never looked at at all.

So every `hoard worker` of the store's server runs `Reaper` in a thread: each
`worker.heartbeat_s` it reads the started registry of every hoardfs queue (ZRANGE: no job is
loaded for the live ones), and for an entry whose job's `last_heartbeat` has not changed for
`worker.reap_after_s` by the reaper's own clock (kept in `hoard:reaper:beat:<job id>`: a beat
names the time of its worker's host, and one whose clock is behind looked silent while it beat)
— and whose worker is not a live process of this host (an in-process
SimpleWorker sends no heartbeat while it runs a job) — it takes the entry with one ZREM: only
the reaper whose ZREM removed it goes on, so two server workers never queue a job twice. The
job goes back on its queue (RQ's `Queue.enqueue_job`: status queued, at the front).
`reap_after_s` is below 60 s (config), so the reaper comes before RQ's expiry and RQ's
clean-up never fails such a job.

A job can also die *before* it starts: a worker serving one queue (a remote host serves
`remote` alone) takes a job with BLMOVE into the queue's intermediate list
(`rq:queue:<name>:intermediate`) and only then, in its work horse, moves it into the started
registry. A host that dies in between leaves the job in that list, where only a worker serving
that same queue looks (RQ's maintenance) — and fails it (`Job was stuck in intermediate
queue`). The reaper looks there too: a job id seen in the list, not started, on two passes
`reap_after_s` apart (the first sighting is kept in `hoard:reaper:intermediate:<job id>`, with
the job's enqueued_at: a job queued again since — started and ended meanwhile — is seen anew) is
taken with one LREM — again only the reaper whose LREM removed it goes on — and, still
`queued`, put back at the front of its queue.

Running it again must be harmless, and is for the jobs it takes: a stage or export resumes
or reports its sealed output (hoardfs.jobs.outputs, hoardfs.jobs.remote); the other hoardfs jobs resume from
their state files as after a kill -9 (their tests kill them at every step).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from typing import Any

import redis
from rq import Worker
from rq.executions import parse_composite_key
from rq.registry import StartedJobRegistry

from hoardfs.base.proc import pid_alive, process_space
from hoardfs.jobs.queues import QUEUES, connect, fetch_job, rq_queue
from hoardfs.jobs.remote import QUEUE as REMOTE_QUEUE

log = logging.getLogger(__name__)

#: every queue the reaper looks at
REAPED = (*QUEUES, REMOTE_QUEUE)


def reap(conn: redis.Redis, reap_after_s: float, now: dt.datetime | None = None) -> list[str]:
    """Queue again every started job whose last heartbeat is older than `reap_after_s`, and
    every job left unstarted in a queue's intermediate list that long; the ids of those this
    call took."""
    now = now or dt.datetime.now(dt.UTC)
    taken = []
    for name in REAPED:
        queue = rq_queue(name, conn)
        registry = StartedJobRegistry(queue=queue)
        for raw in conn.zrange(registry.key, 0, -1):
            entry = _text(raw)
            job_id, _execution = parse_composite_key(entry)
            quiet = _silent_for(conn, job_id, reap_after_s, now)
            if quiet is None or _runs_here(conn, job_id):
                continue
            if not conn.zrem(registry.key, entry):
                continue  # another reaper (or the job's end) took it first
            try:
                job = fetch_job(job_id, conn)
            except Exception as e:  # a job hash gone or unreadable: nothing to queue
                log.warning("reaper: job %s of queue %s had no heartbeat for %ss but cannot be read (%s); dropped "
                            "from the started jobs", job_id, name, reap_after_s, e)
                continue
            if not _queue_again(conn, queue, job, "started"):
                continue  # it ended meanwhile: its own end removed or will remove what is left
            conn.delete(BEAT.format(job_id))
            log.warning("reaper: job %s (%s) on queue %s: its worker %s sent no heartbeat for %.0f s (host down?); "
                        "queued again", job_id, job.description, name, job.worker_name or "?", quiet)
            taken.append(job_id)
        taken += _reap_intermediate(conn, queue, registry, reap_after_s, now)
    return taken


#: when the reaper first saw a started job's heartbeat as it is now (epoch seconds, by the reaper's
#: clock), and that heartbeat: `<seconds> <last_heartbeat>`
BEAT = "hoard:reaper:beat:{}"


def _silent_for(conn: redis.Redis, job_id: str, reap_after_s: float, now: dt.datetime) -> float | None:
    """How long, by this reaper's clock, the started job's heartbeat has not changed — when that
    is over `reap_after_s`; else None. A beat names the time of its worker's host: judged by the
    reaper's clock, every beat of a host whose clock is behind looked old, and its live jobs were
    taken (and run twice). A beat that changes is a live worker, whatever time it names."""
    beat = _text(conn.hget(f"rq:job:{job_id}", "last_heartbeat"))
    return _unchanged_for(conn, BEAT.format(job_id), beat, reap_after_s, now)


def _unchanged_for(conn: redis.Redis, key: str, value: str, reap_after_s: float, now: dt.datetime) -> float | None:
    """How long, by this reaper's clock, `value` has been what `key` last saw — when that is
    over `reap_after_s`; else None. The key keeps `<seconds> <value>` of the first sighting; a
    value that changed is seen anew now."""
    ttl, mark = int(reap_after_s * 4) + 60, f"{now.timestamp()} {value}"
    if conn.set(key, mark, nx=True, ex=ttl):
        return None  # first seen so
    at, _, was = _text(conn.get(key)).partition(" ")
    try:
        seen = float(at)
    except ValueError:
        return None  # (the key expired between the two calls: seen again next time)
    if was != value:
        conn.set(key, mark, ex=ttl)  # it changed since: seen anew now
        return None
    quiet = now.timestamp() - seen
    return quiet if quiet > reap_after_s else None


#: when the reaper first saw a job id in a queue's intermediate list (epoch seconds), and the
#: job's enqueued_at then: `<seconds> <enqueued_at>`
SEEN = "hoard:reaper:intermediate:{}"


def _reap_intermediate(conn: redis.Redis, queue: Any, registry: StartedJobRegistry, reap_after_s: float,
                       now: dt.datetime) -> list[str]:
    """Queue again every job left in `queue`'s intermediate list — taken by a worker that did
    not start it — for longer than `reap_after_s` (module docstring); the ids taken."""
    key, taken = queue.intermediate_queue_key, []
    for raw in conn.lrange(key, 0, -1):
        job_id = _text(raw)
        if job_id in registry:
            continue  # started: its heartbeat is what counts (above)
        # a sighting is of one time in the list: the job's enqueued_at (RQ sets it at every enqueue)
        # is kept beside it — a job seen there, started, ended and queued again, then taken by a
        # live worker as the reaper passes, is a new sighting, not one reap_after_s old
        seen_key = SEEN.format(job_id)
        taken_for = _unchanged_for(conn, seen_key, _text(conn.hget(f"rq:job:{job_id}", "enqueued_at")),
                                   reap_after_s, now)
        if taken_for is None:
            continue
        if not conn.lrem(key, 1, job_id):
            continue  # its worker started it, or another reaper took it, meanwhile
        conn.delete(seen_key)
        try:
            job = fetch_job(job_id, conn)
        except Exception as e:  # a job hash gone or unreadable: nothing to queue
            log.warning("reaper: job %s left unstarted on queue %s cannot be read (%s); dropped", job_id,
                        queue.name, e)
            continue
        if not _queue_again(conn, queue, job, "queued"):
            continue  # its worker started it after all (or it was cancelled): not queued twice
        log.warning("reaper: job %s (%s) on queue %s was taken by a worker that never started it (for %.0f s: "
                    "host down?); queued again", job_id, job.description, queue.name, taken_for)
        taken.append(job_id)
    return taken


def _queue_again(conn: redis.Redis, queue: Any, job: Any, status: str) -> bool:
    """Put `job` back at the front of `queue` if its status is still `status` when it is put
    back: read and written in one WATCHed transaction, so a job that ends (or starts) between
    the reaper's look and its write is left as it is, not run again. Whether it was put back."""
    with conn.pipeline() as pipe:
        try:
            pipe.watch(job.key)
            if _text(pipe.hget(job.key, "status")) != status:
                return False
            pipe.multi()
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        except redis.WatchError:
            return False
    return True


def _runs_here(conn: redis.Redis, job_id: str) -> bool:
    """Whether the job's worker is a live process of this host — its hostname, and the process
    space its `hoard worker` recorded (hoardfs.jobs.guard), this one's: RQ's SimpleWorker (in-process:
    `hoard demo`, the benchmarks) sends no heartbeat while it runs a job, and a process of
    this host is known alive without one."""
    name = _text(conn.hget(f"rq:job:{job_id}", "worker_name"))
    if not name:
        return False
    host, pid, space = (_text(v) for v in conn.hmget(Worker.redis_worker_namespace_prefix + name, "hostname",
                                                       "pid", "hoard_space"))
    if host != socket.gethostname() or (space and space != process_space()):
        return False  # another host, or one of this name (a cloned VM, a container): its pid says nothing here
    try:
        return pid_alive(int(pid or 0))
    except ValueError:
        return False


def _text(raw: Any) -> str:
    """A Redis answer (bytes, or nothing) as text."""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")


class Reaper(threading.Thread):
    """`reap` every `every_s` on a connection of its own until `stop()`; a Redis that does not
    answer is one warning per outage, and the reaper tries again."""

    def __init__(self, url: str, every_s: float, reap_after_s: float) -> None:
        super().__init__(name="hoard-reaper", daemon=True)
        self.url, self.every_s, self.reap_after_s = url, every_s, reap_after_s
        self._halt = threading.Event()

    def run(self) -> None:
        conn: Any = connect(self.url)
        down = False
        # Silence is judged only over time Redis was there to beat into: while it was down (or
        # before this reaper ran: a server restarted with its Redis) no worker could beat, and a
        # live one's next beat may come up to heartbeat_s — plus its reconnect — after Redis is
        # back. Reaping at once then took every remote job from its live worker (another host
        # made the output again); so the first reap waits reap_after_s, as after any outage.
        quiet_until = time.monotonic() + self.reap_after_s
        while not self._halt.wait(self.every_s):
            try:
                if down:
                    conn.ping()
                    log.info("reaper: Redis at %s answers again; no job is taken for %ss (its workers beat "
                             "again first)", self.url, self.reap_after_s)
                    quiet_until, down = time.monotonic() + self.reap_after_s, False
                elif time.monotonic() >= quiet_until:
                    reap(conn, self.reap_after_s)
            except redis.RedisError as e:
                if not down:
                    log.warning("reaper: Redis at %s does not answer (%s); trying again every %ss", self.url,
                                str(e).splitlines()[0] if str(e) else type(e).__name__, self.every_s)
                down = True

    def stop(self) -> None:
        self._halt.set()
