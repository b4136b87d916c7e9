"""Redis connection and the RQ queues every job runs on."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp
from rq.worker import BaseWorker, WorkerStatus

from hoardfs.base.errors import (
    WRITE_CONFLICT_STATES,
    ExitCode,
    HoardError,
    ServiceUnavailable,
    conflict_line,
    db_disk_full,
    db_disk_full_line,
    first_line,
    write_conflict,
)
from hoardfs.base.proc import pid_alive
from hoardfs.jobs.guard import SERIALIZER, GuardedWorker, HoardJob
from hoardfs.jobs.jobkey import JobKey

#: The queues of hoardfs, in the order a default worker serves them (`actions`: an action's
#: worker step, which may run for hours — its own queue, so stages and ingests are not stuck behind it;
#: `events`: webhook deliveries, short network calls, hoardfs.jobs.events)
QUEUES = ("ingest", "io", "sql", "maintenance", "actions", "events")
#: the states `job_counts` counts jobs in (RQ's queue and its registries; `abandoned`: started by a
#: worker that died, not yet failed or retried by a worker's maintenance), in its order
JOB_STATES = ("queued", "started", "abandoned", "deferred", "scheduled", "finished", "failed")

#: the exception types a job can meet that are not a bug — a service or a disk gone, a
#: person's error — when `is_condition` says so of the instance; the job records it in its
#: own state with the way on (`hoard ingest --status`, `--resume`)
CONDITIONS = (HoardError, psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)
#: OSErrors a disk, a file system or a person causes (EBADF, EINVAL and the like are bugs)
CONDITION_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENODEV, errno.ENXIO,
                              errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ENOTCONN, errno.ESTALE,
                              errno.EBUSY, errno.ETIMEDOUT, errno.EUCLEAN, errno.EBADMSG})


def is_condition(e: BaseException) -> bool:
    """Whether `e` is a condition (see CONDITIONS): PostgreSQL when it is unreachable, out of
    resources or shut down (SQLSTATE classes 08, 53, 57P), or when it stopped this transaction
    for another's writes to the same rows (a deadlock, a serialization failure: run again, it
    goes through); an OSError only with one of CONDITION_ERRNOS."""
    if isinstance(e, (HoardError, redis.ConnectionError, redis.TimeoutError)):
        return True
    if isinstance(e, psycopg.OperationalError):
        state = getattr(e, "sqlstate", None)
        return (state is None or state[:2] in ("08", "53") or state.startswith("57P")
                or state in WRITE_CONFLICT_STATES)
    return isinstance(e, OSError) and e.errno in CONDITION_ERRNOS


def condition_exit_code(e: BaseException) -> ExitCode:
    """The exit code a run ended by a condition exits with: a HoardError's own, no space (6),
    else a service or a disk unreachable (3)."""
    if isinstance(e, HoardError):
        return e.exit_code
    if write_conflict(e):
        return ExitCode.CONFLICT
    if db_disk_full(e):
        return ExitCode.NO_SPACE
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExitCode.NO_SPACE
    return ExitCode.UNAVAILABLE  # PostgreSQL, Redis or a disk


def condition_line(e: BaseException) -> str:
    """One line for a condition of CONDITIONS (what the worker's log says of it)."""
    if isinstance(e, HoardError):
        return e.message
    if write_conflict(e):
        return conflict_line(e)
    if db_disk_full(e):
        return db_disk_full_line(e)
    if isinstance(e, psycopg.OperationalError):
        return f"PostgreSQL unreachable ({first_line(e)})"
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis unreachable ({e})"
    if isinstance(e, OSError):
        return f"{e.strerror or e} ({e.filename or 'no file named'})"
    return f"{type(e).__name__}: {e}"


class SigningQueue(Queue):
    """An RQ queue whose every new job is signed with `job_key` (hoardfs.jobs.jobkey) as it is made —
    `enqueue`, `enqueue_in`, `enqueue_at` all make their jobs here."""

    job_key: JobKey | None = None

    def create_job(self, *args: Any, **kwargs: Any) -> Job:
        job = super().create_job(*args, **kwargs)
        if self.job_key is not None:
            self.job_key.sign(job)
        return job


def rq_queue(name: str, conn: redis.Redis, key: JobKey | None = None) -> Queue:
    """An RQ queue of hoardfs: JSON jobs (hoardfs.jobs.guard), never pickles. `key`: the store's job key
    (`hoardfs.jobs.jobkey.of(cfg)`), which signs every job queued through it — a worker of the server
    runs no other job but a host's (hoardfs.jobs.guard.HOST_JOBS); only a queue that is read needs none."""
    queue = SigningQueue(name, connection=conn, serializer=SERIALIZER)
    queue.job_key = key
    return queue


def fetch_job(job_id: str, conn: redis.Redis) -> Job:
    """Job.fetch with hoardfs's serializer: reading a job decodes JSON, never a pickle."""
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER)


#: the longest `hoard worker`'s wait for a job blocks at a time (s): how long an idle worker takes to
#: stop; also the longest it sleeps between tries of a Redis that does not answer
STOP_CHECK_S = 2
#: how long `hoard worker` waits for a reply of Redis before it takes Redis for one that does not
#: answer (RQ's own: its longest wait for a job plus 10 s, 415 s by default)
REDIS_REPLY_S = 30
#: how often, at most, `hoard worker` says again that its Redis does not answer (it tries every STOP_CHECK_S)
RETRY_LOG_S = 60
#: how long `hoard worker`'s stop waits for its scheduler process after SIGTERM before it kills it
SCHEDULER_STOP_S = 10
#: how often, at most, `hoard worker` tries to start again a scheduler process that ended (RQ: every 10 minutes)
SCHEDULER_REVIVE_S = 10
#: how often the worker's command thread (RQ's pubsub thread: kill-horse, shutdown) looks whether
#: it is to end (RQ: 60 s; redis-py's stop() waits for the thread, so a stop waited as long)
COMMANDS_WAKE_S = 1.0
#: the signals that stop a worker and its scheduler
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class _OncePer:
    """Called: true at most once in `every` seconds (a line said again only that often)."""

    def __init__(self, every: float) -> None:
        self.every, self.last = every, -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every:
            return False
        self.last = now
        return True


class _StopWhileUnreachable(Exception):
    """Ends an idle worker's wait on a Redis that does not answer once a stop was asked: RQ's
    wait retries such a Redis for good and never looks at a stop request."""


class HoardWorker(GuardedWorker, Worker):
    """`hoard worker`: RQ's worker, except that it runs only hoardfs's own jobs (hoardfs.jobs.guard: JSON,
    an allow-list checked before anything of a job is imported), and that a job ending on one of
    CONDITIONS (PostgreSQL stopped, a disk gone, a full zone) is one line in the log — what
    failed and the job — not a Python traceback for what is no bug; the job's state says how to
    go on, and RQ's failed job registry (rq-dashboard) keeps the whole traceback. Any other
    exception is a bug and is logged with its traceback as RQ does. `config_path`: the file the
    worker's configuration came from (a job naming another is refused); `job_key`: its store's
    job key (hoardfs.jobs.jobkey: a job not of HOST_JOBS runs only when signed with it)."""

    #: RQ's wait sleeps this long at the most between tries of a Redis that does not answer (RQ: 60 s)
    max_connection_wait_time = float(STOP_CHECK_S)

    def __init__(self, *args: Any, config_path: Any = None, job_key: JobKey | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("job_class", HoardJob)
        super().__init__(*args, **kwargs)
        self.config_path = config_path
        self.job_key = job_key
        self._waiting = False  # inside one of RQ's waits for a job (`_wait_once`)
        self._taken = False  # and that wait took a job off its queue
        self._unanswered: BaseException | None = None  # the Redis error a stop request ended a wait on
        self._revive_due = _OncePer(SCHEDULER_REVIVE_S)  # `_revive_scheduler`'s tries
        self._busy_said = _OncePer(RETRY_LOG_S)  # `_unwatched_heartbeat`'s line
        self._refused_said = _OncePer(RETRY_LOG_S)  # `_revive_scheduler`'s
        outage = [f for f in self.log.filters if isinstance(f, _OutageInOneLine)]
        if not outage:
            outage = [_OutageInOneLine()]
            self.log.addFilter(outage[0])
        self._outage = outage[0]

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's loop, except that it never ends as if stopped when it quit on an error: RQ logs
        the error ("…, quitting..."), breaks out and returns — `hoard worker` exited 0, and
        systemd's Restart=on-failure did not start it again. The error is raised instead."""
        self._outage.quit_on = None
        ran = super().work(*args, **kwargs)
        if self._outage.quit_on is not None:
            raise self._outage.quit_on
        return ran

    @property
    def connection_timeout(self) -> int:
        """RQ's socket timeout of the worker's connection: a Redis that hangs (stopped, or its
        host gone without a reset) is one that does not answer after REDIS_REPLY_S, which the
        wait retries and a stop request ends; the wait's blocking reads last STOP_CHECK_S."""
        return REDIS_REPLY_S

    @property
    def scheduler(self) -> RQScheduler | None:
        return self._scheduler

    @scheduler.setter
    def scheduler(self, made: RQScheduler | None) -> None:
        """RQ makes its RQScheduler in `_start_scheduler` and starts it there: made ours
        (_Scheduler, a subclass with no state of its own) the moment RQ keeps it."""
        if made is not None and type(made) is RQScheduler:
            made.__class__ = _Scheduler
        self._scheduler = made

    def _shutdown(self) -> None:
        """SIGTERM/SIGINT's warm shutdown. RQ stops an idle worker by raising StopRequested from
        the signal handler, wherever the main thread is: in the moment between taking a job off
        its queue and starting it, that drops the job (queued, in no list any more); inside a
        finalizer (`__del__`) Python drops the exception, as do the `except Exception` blocks
        around RQ's and redis-py's bookkeeping and logging — one such landing left an idle
        worker running for good. So an idle worker raises nothing: the request is remembered,
        and its wait for jobs ends within STOP_CHECK_S (`dequeue_job_and_maintain_ttl`), or at
        its next try of a Redis that does not answer (`heartbeat`); a job it took meanwhile
        runs first. A busy worker is RQ's: it stops once its job is done, and a second signal
        stops it cold."""
        self._stop_requested = True
        if self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()

    def set_shutdown_requested_date(self) -> None:
        """RQ's, from a busy worker's signal handler: the stop request's date written to the
        worker's record in Redis (for `rq info`). A Redis that does not answer must not raise out
        of the handler: that ended the worker's watch over its work horse at once, the job left
        running with no worker. The date goes unwritten; the stop stands, and comes when the job
        is done."""
        with contextlib.suppress(redis.RedisError):
            super().set_shutdown_requested_date()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's. Inside a wait for a job, before it took one, a heartbeat that finds Redis not
        answering after a stop request ends the wait: RQ's wait retries Redis (every
        STOP_CHECK_S at the most, each try begun with a heartbeat) and never looks at the
        request. Once the wait took a job, the error goes on as RQ's (the job is in RQ's
        intermediate list, which its maintenance looks after)."""
        try:
            super().heartbeat(timeout, pipeline)
        except redis.RedisError as e:
            if self.get_state() == WorkerStatus.BUSY:  # (RQ's watch over the horse: `_unwatched_heartbeat`)
                self._unwatched_heartbeat(e)
                return
            if self._waiting and self._stop_requested and not self._taken and isinstance(
                    e, (redis.ConnectionError, redis.TimeoutError)):
                raise _StopWhileUnreachable from e
            raise

    def reorder_queues(self, reference_queue: Queue) -> None:
        """RQ's, called as its wait takes a job off `reference_queue`: noted (`heartbeat`)."""
        self._taken = True
        super().reorder_queues(reference_queue)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's wait for the next job, in steps of at most STOP_CHECK_S blocking, ended by a stop
        request (`_shutdown`): None then, which ends the work loop."""
        if timeout is None:  # burst: one look, nothing blocks
            found = self._wait_once(timeout, max_idle_time)
            if found is None and self._stop_requested:
                self.log.info("Worker %s: stopping on request", self.name)
            return found
        until = None if max_idle_time is None else time.monotonic() + max_idle_time
        while not self._stop_requested:
            left = STOP_CHECK_S if until is None else math.ceil(until - time.monotonic())
            if left <= 0:
                return None
            found = self._wait_once(timeout, min(left, STOP_CHECK_S))
            if found is not None:
                return found
            self._revive_scheduler()
        self.log.info("Worker %s: stopping on request", self.name)
        return None

    def _wait_once(self, timeout: int | None, max_idle_time: int | None) -> Any:
        """One RQ wait for a job; None when a stop request ends it while Redis does not answer."""
        self._waiting, self._taken = True, False
        try:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        except _StopWhileUnreachable as stop:
            self._unanswered = stop.__cause__
            return None
        finally:
            self._waiting = False

    def maintain_heartbeats(self, *args: Any, **kwargs: Any) -> None:
        """RQ's, every `job_monitoring_interval` while a job runs; then `_revive_scheduler`. A
        Redis that does not answer raised out of RQ's watch over the work horse: the worker quit
        and left its job running with no one watching it (under systemd: killed with the unit,
        mid-job). The heartbeat goes unwritten instead, said once in RETRY_LOG_S; the worker
        watches on, and once the job is done its next ask of Redis says what is wrong."""
        try:
            super().maintain_heartbeats(*args, **kwargs)
        except redis.RedisError as e:
            self._unwatched_heartbeat(e)
            return
        self._revive_scheduler()

    def _unwatched_heartbeat(self, e: redis.RedisError) -> None:
        """A heartbeat of a busy worker that Redis did not take (gone, hung, or read-only after
        a failover): said once in RETRY_LOG_S; the worker watches its job on (and kills it at
        its timeout, where RQ's heartbeat before the kill raised and left it running)."""
        if self._busy_said():
            self.log.error("Worker %s: Redis did not take its heartbeat (%s); the running job goes on, watched",
                           self.name, first_line(e))

    def _revive_scheduler(self) -> None:
        """Starts the worker's scheduler process again once Redis answers, when it ended (a Redis
        that stopped answering ends it: _Scheduler). RQ does so only in its maintenance, every
        10 minutes: jobs put off meanwhile (`enqueue_in`: an action's next step, an event's next
        delivery) waited that long past their time. Tried every SCHEDULER_REVIVE_S at the most,
        from the worker's wait for a job and its watch over a running one; its lock, its own
        name's, is taken again at once (or the scheduler of another worker that took it goes on)."""
        proc = self.scheduler._process if self.scheduler is not None else None
        if proc is None or proc.exitcode is None or self._stop_requested:
            return
        if proc.exitcode > 0:  # it crashed on an error of its own (logged): left to RQ's maintenance, not a loop
            return
        if not self._revive_due():
            return
        try:
            if self.scheduler.acquire_locks() and not self._stop_requested:
                self.scheduler.start()
                self.log.info("Worker %s: its scheduler (pid %d) had ended; started it again (pid %d)",
                              self.name, proc.pid, self.scheduler._process.pid)
        except (redis.ConnectionError, redis.TimeoutError) as e:  # (tried again at the next turn)
            if self._stop_requested:  # a stop came while Redis did not answer: nothing more is asked of it
                self._unanswered = e
        except redis.RedisError as e:  # refused (read-only, out of memory, an ACL): a busy worker watches its job on
            if self._refused_said():
                self.log.error("Worker %s: Redis refused its scheduler's lock (%s); the scheduler starts when Redis "
                               "takes it", self.name, first_line(e))

    def subscribe(self) -> None:
        """RQ's, with the command thread waking every COMMANDS_WAKE_S instead of 60 s: RQ's
        teardown ends the channel, then stops the thread, and redis-py's stop() waits for it —
        a thread that saw the channel end first waited out its whole timeout."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        thread = self.pubsub.run_in_thread(sleep_time=COMMANDS_WAKE_S, daemon=True,
                                           exception_handler=self._pubsub_exception_handler)
        self.pubsub_thread = thread  # type: ignore[assignment]  # (RQ declares it None)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """RQ's, for an error of the command thread: a Redis that does not answer is tried
        again, hung (TimeoutError) as well as gone — RQ let the thread end on a timeout (a Redis
        back but hanging in the handshake), and the worker obeyed no command (shutdown,
        kill-horse) for good. Said as RQ says a lost one (once a minute: _OutageInOneLine)."""
        if isinstance(exc, redis.TimeoutError):  # (RQ's retry: its line, then 2 s asleep)
            exc = redis.ConnectionError(str(exc))
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def teardown(self) -> None:
        """RQ's, but for a worker whose wait ended on a Redis that does not answer: its
        scheduler stopped, nothing more asked of that Redis (each ask waits REDIS_REPLY_S for
        one that hangs; the worker's record expires by itself), and the Redis error raised —
        `hoard worker`'s one line."""
        if self._unanswered is None:
            super().teardown()
            return
        if self.scheduler is not None:
            self.stop_scheduler()
        raise self._unanswered

    def stop_scheduler(self) -> None:
        """RQ's: SIGTERM to the scheduler process, then a wait for it with no end. Its loop looks
        at its stop request once a second; one that does not end within SCHEDULER_STOP_S (stuck
        in a call to a Redis that stopped answering, or in a lock a thread of this process held
        when it was forked) is killed, so that the worker's stop never waits on it. What a
        killed scheduler was doing is safe to cut: it moves each due job from its registry into
        its queue in one Redis transaction (all or nothing). Its locks are released here (only
        while still its own): a next worker takes them at its start, where a lock left to expire
        would keep it without a scheduler until its maintenance, every 10 minutes. A scheduler
        already stopped (RQ calls this from a busy worker's signal handler, then again at the
        end) is not signalled again: its pid may be another process's by then."""
        proc = self.scheduler._process if self.scheduler is not None else None
        if proc is None or not proc.pid or proc.exitcode is not None:
            return
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.join(SCHEDULER_STOP_S)
        if proc.exitcode is None:
            self.log.warning("Worker %s: its scheduler (pid %d) did not stop within %d s of SIGTERM; killed it",
                             self.name, proc.pid, SCHEDULER_STOP_S)
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            if self._unanswered is None:  # (nothing is asked of a Redis that does not answer: `teardown`)
                # (called from a busy worker's signal handler too: a Redis gone leaves the lock to expire)
                with contextlib.suppress(redis.RedisError):
                    self.scheduler.release_locks()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        e = exc_info[1]
        if is_condition(e) and not self._exc_handlers:
            self.log.error("Worker %s: job %s (%s) failed: %s", self.name, job.id, job.description,
                           condition_line(e))
            return
        super().handle_exception(job, *exc_info)


class _OutageInOneLine(logging.Filter):
    """RQ's work loop logs any exception it quits on with its traceback ("found an unhandled
    exception, quitting..."): Redis stopping (or turning a read-only replica) is no bug — one line, the
    error's first line appended; `hoard worker` then says what to do (exit 3). RQ's wait says
    "could not connect to Redis instance" at each try (every STOP_CHECK_S): once in RETRY_LOG_S."""

    def __init__(self) -> None:
        super().__init__()
        self.retry_said = _OncePer(RETRY_LOG_S)
        self.quit_on: BaseException | None = None  # the error RQ's work loop quit on (HoardWorker.work)

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).endswith(", quitting..."):
            if "Redis connection timeout" in str(record.msg):
                self.quit_on = redis.TimeoutError("Redis connection timeout")
            elif record.exc_info and record.exc_info[1] is not None:
                self.quit_on = record.exc_info[1]
        if "could not connect to Redis instance" in str(record.msg):
            if not self.retry_said():
                return False
        e = record.exc_info[1] if record.exc_info else None
        if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)) or (
                isinstance(e, redis.ResponseError) and str(e).startswith("UNBLOCKED")):  # (its wait, cut by a failover)
            record.msg, record.args = f"{record.getMessage()} ({first_line(e)})", None
            record.exc_info = record.exc_text = None
        return True


class _Scheduler(RQScheduler):
    """RQ's scheduler process, which ends on a Redis that does not answer with its traceback
    twice (RQ's log, then multiprocessing's on stderr): one line instead. It ends with its lock
    held (Redis took no release); the worker starts it again once Redis answers
    (HoardWorker._revive_scheduler), and takes the lock back, its own name's."""

    def start(self) -> Any:
        """RQ's fork of the scheduler process, with SIGINT and SIGTERM held back across it: one
        sent to the worker's process group meanwhile reached the child before it set its own
        handlers — it ran the worker's copy, ignored the stop, and was killed SCHEDULER_STOP_S
        later. The child takes them once its own handlers are set (`work`), the worker at once."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def work(self) -> None:
        self._install_signal_handlers()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            super().work()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.log.error("Scheduler (pid %d) stopped: Redis does not answer (%s)", os.getpid(), first_line(e))
        except redis.RedisError as e:  # (a read-only replica after a failover, a Redis that cannot persist)
            self.log.error("Scheduler (pid %d) stopped: Redis refused it (%s)", os.getpid(), first_line(e))


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5)


@contextlib.contextmanager
def redis_required(url: str) -> Iterator[None]:
    """Turn a Redis that does not answer, anywhere inside, into one line naming it (exit 3):
    a command that queues or runs jobs can do nothing useful without it."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        first = first_line(e)
        raise ServiceUnavailable(f"Redis at {url} does not answer ({first}); start it (`hoard services up` for the "
                                 "embedded one) or fix redis_url in hoard.toml, then run this again") from None
    except redis.ReadOnlyError as e:
        raise ServiceUnavailable(f"Redis at {url} refuses writes ({first_line(e)}): it is a read-only replica; point "
                                 "redis_url in hoard.toml at the primary, then run this again") from None


def redis_status(url: str) -> dict[str, Any]:
    """A JSON-able status of the Redis at `url`; never raises for a down server."""
    try:
        r = connect(url)
        info = r.info("server")
        return {"ok": True, "redis_version": info.get("redis_version"), "db_keys": r.dbsize()}
    except redis.RedisError as e:
        return {"ok": False, "error": str(e).splitlines()[0]}


def job_counts(url: str) -> dict[str, dict[str, int]]:
    """Jobs per hoardfs queue and state (JOB_STATES): one round trip of LLEN, ZCARD and ZCOUNT on
    RQ's queue lists and registries — no job is loaded and nothing is changed, so it costs the
    same with 100,000 failed jobs as with none, and a reader (the GUI's snapshot) stays a reader.
    (RQ's `registry.count` runs the registry's cleanup first: for the started registry that
    fetches every expired entry's job, runs its failure callbacks and moves it to failed — a
    worker's maintenance, done by `hoard worker` — and for finished and failed it deletes the
    expired entries.) A registry entry whose expiry (its score) has passed is not counted as what
    it was: a finished or failed one is gone as far as RQ is concerned (its job's key expires with
    it); a started one is a job whose worker stopped refreshing it — it died — counted as
    `abandoned` until a worker's maintenance fails or retries it. Raises redis.RedisError when
    Redis does not answer."""
    conn = connect(url)
    now = current_timestamp()  # RQ's clock for expiry: an entry scored `now` or before has expired
    live = (f"({now}", "+inf")
    asked = []
    with conn.pipeline(transaction=False) as p:
        for name in QUEUES:
            q = rq_queue(name, conn)
            started = StartedJobRegistry(queue=q).key
            for state, (command, *args) in {
                    "queued": ("llen", q.key),
                    "started": ("zcount", started, *live),
                    "abandoned": ("zcount", started, "-inf", now),
                    "deferred": ("zcard", DeferredJobRegistry(queue=q).key),  # scored by creation: no expiry
                    "scheduled": ("zcard", ScheduledJobRegistry(queue=q).key),  # scored by when due: no expiry
                    "finished": ("zcount", FinishedJobRegistry(queue=q).key, *live),
                    "failed": ("zcount", FailedJobRegistry(queue=q).key, *live)}.items():
                getattr(p, str(command))(*args)
                asked.append((name, state))
        answers = p.execute()
    out: dict[str, dict[str, int]] = {name: {} for name in QUEUES}
    for (name, state), n in zip(asked, answers, strict=True):
        out[name][state] = n
    return out


def pending(conn: redis.Redis, job_id: str) -> bool:
    """Whether job `job_id` waits (queued, scheduled, deferred) or runs on a live worker; a job of
    that id that ended (done, failed) or was "started" by a worker that died is deleted, so the
    id can be queued again."""
    try:
        job = fetch_job(job_id, conn)
        status = job.get_status(refresh=True)
        if status in ("queued", "scheduled", "deferred") or (status == "started" and running(conn, job_id)):
            return True
        job.delete()
    except NoSuchJobError:
        pass
    return False


def enqueue_once(conn: redis.Redis, queue: str, func: str, *args: Any, job_id: str, timeout: int,
                 description: str, key: JobKey | None) -> str:
    """Enqueue `func(*args)` as job `job_id` on `queue`, signed with `key` (`rq_queue`; None only
    for a job no worker of the server runs), unless that job is already waiting or running on a
    live worker (enqueueing it again would run it twice). A job that finished, failed, or was
    "started" by a worker that died (kill -9, power loss) is replaced."""
    if pending(conn, job_id):
        return job_id
    rq_queue(queue, conn, key).enqueue(func, *args, job_id=job_id, job_timeout=timeout, result_ttl=86400,
                                       failure_ttl=30 * 86400, description=description)
    return job_id


def running(conn: redis.Redis, job_id: str) -> bool:
    """True if a live worker is executing `job_id` right now."""
    return any(w.get_current_job_id() == job_id and worker_alive(w) for w in Worker.all(connection=conn))


def unserved_queues(conn: redis.Redis, queues: tuple[str, ...] = QUEUES) -> list[str]:
    """The hoardfs queues (of `queues`) no live worker serves: a job queued there waits until one starts."""
    served = {q for w in Worker.all(connection=conn) if worker_alive(w) for q in w.queue_names()}
    return [q for q in queues if q not in served]


def worker_alive(worker: BaseWorker) -> bool:
    """A worker on this host is alive if its process is; one elsewhere while Redis keeps its
    key (RQ lets a silent worker's key expire after its TTL)."""
    if worker.hostname != socket.gethostname() or not worker.pid:
        return True
    return pid_alive(worker.pid)
