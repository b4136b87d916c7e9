"""`hoard worker` stops on one SIGTERM: idle, within STOP_CHECK_S, whatever the main thread was
doing when the signal came; and a job it had just taken off its queue runs first, never dropped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq.job import JobStatus
from rq.scheduler import RQScheduler
from rq.worker import WorkerStatus

from hoardfs.base.proc import pid_alive
from hoardfs.jobs.queues import SCHEDULER_REVIVE_S, SCHEDULER_STOP_S, STOP_CHECK_S, HoardWorker, fetch_job, rq_queue
from hoardfs.jobs.redis_server import PrivateRedis
from tests.conftest import write_home
from tests.helpers import wait_until

#: the lock the worker's scheduler takes for the `sql` queue (one scheduler per queue)
SQL_LOCK = RQScheduler.get_locking_key("sql")

#: a worker on the `sql` queue of the Redis at argv[1], in the modes named by argv[2] (comma-separated):
#: "signal-on-take": it sends itself SIGTERM the moment it has taken a job off the queue (RQ's
#: reorder_queues runs right after the dequeue), before it starts it; the others are told below
WORKER = textwrap.dedent("""
    import faulthandler, os, signal, sys
    import redis
    from hoardfs.jobs.queues import HoardWorker, rq_queue

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung stop shows where (_stopped); forks keep it
    MODES = set(sys.argv[2].split(","))

    class Worker(HoardWorker):
        def reorder_queues(self, reference_queue):
            if "signal-on-take" in MODES:
                os.kill(os.getpid(), signal.SIGTERM)
            super().reorder_queues(reference_queue)

    if "busy" in MODES:  # every job (past the guard) is its work horse writing its pid to the folder argv[3],
        import rq, time            # then waiting there for a file `done`
        from pathlib import Path

        class Worker(Worker):
            def execute_job(self, job, queue):
                return rq.Worker.execute_job(self, job, queue)

            def perform_job(self, job, queue, *rest):
                box = Path(sys.argv[3])
                (box / "horse.tmp").write_text(str(os.getpid()))
                (box / "horse.tmp").rename(box / "horse")
                while not (box / "done").exists():
                    time.sleep(0.1)
                return True

    if "short-replies" in MODES:  # a Redis that hangs is taken for one that does not answer after 3 s
        Worker.connection_timeout = 3

    if "scheduler-stuck" in MODES:  # its scheduler process ignores SIGTERM and never ends
        import time
        from rq.scheduler import RQScheduler

        def stuck(self):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        RQScheduler.work = stuck

    if "scheduler-crashes" in MODES:  # its scheduler process ends on an error of its own at once
        from rq.scheduler import RQScheduler

        def crash(self):
            raise ValueError("a scheduler's own error")
        RQScheduler.work = crash

    if "scheduler-ends" in MODES:  # its scheduler process ends at once, as one a lost Redis ended (exit 0)
        from rq.scheduler import RQScheduler
        RQScheduler.work = lambda self: None

    if "locks-refused" in MODES:  # Redis refuses the scheduler's lock once the worker has started (a failover
        from rq.scheduler import RQScheduler  # between a heartbeat and that ask)
        taken = RQScheduler.acquire_locks

        def acquire_locks(self, *args, _n=[], **kwargs):
            _n.append(1)
            if len(_n) > 1:
                raise redis.ReadOnlyError("You can't write against a read only replica.")
            return taken(self, *args, **kwargs)
        RQScheduler.acquire_locks = acquire_locks

    if "slow-unsubscribe" in MODES:  # the worker's main thread is set back (a loaded machine) right after it
        import time                   # asks Redis to end its command channel, before it stops the thread reading it
        from redis.client import PubSub

        def unsubscribe(self, *args, _unsubscribe=PubSub.unsubscribe):
            _unsubscribe(self, *args)
            time.sleep(0.5)
        PubSub.unsubscribe = unsubscribe

    conn = redis.Redis.from_url(sys.argv[1])
    try:
        Worker([rq_queue("sql", conn)], connection=conn, name="stopper",  # busy: its heartbeat every 1 s
               job_monitoring_interval=1 if "busy" in MODES else 30).work(with_scheduler=True)
    except (redis.ConnectionError, redis.TimeoutError) as e:  # (`hoard worker`: its one line, exit 3)
        print("worker ended:", type(e).__name__, flush=True)
        sys.exit(3)
""")


def _start(url: str, mode: str, *more: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, mode, *more], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # RQ's log: both streams


def _idle(conn: redis.Redis) -> bool:
    w = HoardWorker.find_by_key(HoardWorker.redis_worker_namespace_prefix + "stopper", connection=conn)
    return w is not None and w.get_state() == WorkerStatus.IDLE


def _in_its_wait(rd: PrivateRedis) -> bool:
    """Whether the one worker on `rd` is in its wait for a job, its scheduler up (its lock taken)."""
    conn = rd.client()
    return bool(conn.exists(SQL_LOCK)) and any(w.get_state() == WorkerStatus.IDLE for w in HoardWorker.all(connection=conn))


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to `proc`'s session (the worker, its scheduler, its work horse), if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _stopped(proc: subprocess.Popen, conn: redis.Redis, within: float) -> str:
    """Waits for `proc` to end by itself within `within` s, exit 0 and be gone from Redis: its log
    (RQ's: below ERROR on stdout, the rest on stderr; both here)."""
    try:
        log, _ = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGUSR1)  # every thread's stack, of the worker and its scheduler
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"the worker did not stop within {within} s; its stacks:\n{log}") from None
    finally:
        _kill(proc)
    assert proc.returncode == 0, log
    assert "stopper" not in {w.name for w in HoardWorker.all(connection=conn)}  # it said its death
    return log


def _hoard_worker_on_its_redis(tmp_path: Path, servers) -> tuple[PrivateRedis, subprocess.Popen]:
    """A private Redis under `tmp_path`, and `hoard worker --queues sql` on it (in a session of
    its own, its log on stdout)."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    home = write_home(tmp_path, {**servers, "redis_url": f"unix://{rd.socket}"})
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), "worker",
                             "--queues", "sql"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return rd, proc


def test_an_idle_worker_stops_on_one_sigterm(servers, redis_conn: redis.Redis) -> None:
    proc = _start(servers["redis_url"], "wait")
    wait_until(lambda: _idle(redis_conn))
    time.sleep(1)  # in its wait for a job (a blocking BLPOP)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the worker and its scheduler, as systemd or a shell stops them
    _stopped(proc, redis_conn, 10 * STOP_CHECK_S)
    assert time.monotonic() - t0 <= 3 * STOP_CHECK_S


def test_a_stop_never_waits_on_the_command_thread(servers, redis_conn: redis.Redis) -> None:
    """RQ's command thread (kill-horse, shutdown: its pubsub) reads with a 60 s timeout, and
    redis-py's stop() of that thread waits for it (from 8.2 on): when the end of the channel
    reached the thread before the stop did, `hoard worker` took up to a minute to stop."""
    proc = _start(servers["redis_url"], "slow-unsubscribe")
    wait_until(lambda: _idle(redis_conn))
    time.sleep(1)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    _stopped(proc, redis_conn, 10 * STOP_CHECK_S)
    assert time.monotonic() - t0 <= 3 * STOP_CHECK_S


def test_a_job_taken_as_the_stop_comes_is_run_not_dropped(servers, redis_conn: redis.Redis) -> None:
    """RQ raises StopRequested from the handler of an idle worker: between the dequeue and the
    job's start that left the job `queued` in no queue, run by no one, for good."""
    proc = _start(servers["redis_url"], "signal-on-take")
    wait_until(lambda: _idle(redis_conn))
    job = rq_queue("sql", redis_conn).enqueue("hoardfs.jobs.no_such_job", 1)  # refused: failed, with why
    _stopped(proc, redis_conn, 10 * STOP_CHECK_S)
    job = fetch_job(job.id, redis_conn)
    assert job.get_status() == JobStatus.FAILED and "refused by the worker" in (job.latest_result().exc_string or "")


def test_a_scheduler_that_does_not_stop_is_killed_and_the_worker_stops(servers, redis_conn: redis.Redis) -> None:
    """RQ waits for its scheduler process with no end: one stuck (SIGTERM ignored here; a Redis
    that stopped answering, a lock held at the fork in life) kept `hoard worker` from stopping."""
    redis_conn.delete(SQL_LOCK)  # (one left by any earlier worker would keep this one from forking a scheduler)
    proc = _start(servers["redis_url"], "scheduler-stuck")
    try:
        wait_until(lambda: _idle(redis_conn))
        (child,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # the worker alone: it stops its scheduler itself
        log = _stopped(proc, redis_conn, SCHEDULER_STOP_S + 10 * STOP_CHECK_S)
        assert time.monotonic() - t0 >= SCHEDULER_STOP_S - 1  # it was given its time first
        assert not pid_alive(child) and f"its scheduler (pid {child}) did not stop within" in log, log
        assert not redis_conn.exists(SQL_LOCK)  # released: the next worker's scheduler starts at once
    finally:
        redis_conn.delete(SQL_LOCK)


@pytest.mark.expect_log(r"could not connect to Redis instance", level="ERROR")
@pytest.mark.expect_log(r"Scheduler \(pid \d+\) stopped: Redis does not answer \(", level="ERROR")
def test_a_worker_whose_redis_is_gone_stops_on_sigterm(tmp_path: Path, servers) -> None:
    """RQ's wait for a job retries a Redis that does not answer for good, sleeping up to 60 s a
    try, and never looks at a stop request: `hoard worker` ignored SIGTERM."""
    rd, proc = _hoard_worker_on_its_redis(tmp_path, servers)
    try:
        wait_until(lambda: _in_its_wait(rd))
        time.sleep(0.5)  # (past its start's maintenance: Redis gone there ends it — RQ's, as at any step but the wait)
        rd.stop()
        time.sleep(8)  # a few of its tries (1, then 2 s apart), RQ's backoff grown past STOP_CHECK_S
        assert proc.poll() is None, proc.communicate()[0]  # still waiting for Redis, as RQ does
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=SCHEDULER_STOP_S + 10 * STOP_CHECK_S)
        took = time.monotonic() - t0
    finally:
        _kill(proc)
        rd.stop()
    assert proc.returncode == 3, log  # ServiceUnavailable: its one line, with the next step
    assert f"Redis at unix://{rd.socket} does not answer" in log and "Traceback" not in log, log
    assert "stopping on request" in log, log  # the stop ended the wait, not an error
    assert took <= SCHEDULER_STOP_S + 3 * STOP_CHECK_S, log
    assert log.count("could not connect to Redis instance") == 1, log  # said once, not at each try


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_worker_whose_redis_hangs_stops_on_sigterm(tmp_path: Path) -> None:
    """A Redis that hangs (stopped by SIGSTOP here; its host gone without a reset in life) is
    one that does not answer once a reply is REDIS_REPLY_S late (3 s here): the stop comes
    after that and the scheduler's time, and nothing more is asked of that Redis."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    server = int((rd.data_dir / "redis.pid").read_text())
    proc = _start(f"unix://{rd.socket}", "short-replies")
    try:
        wait_until(lambda: _in_its_wait(rd))
        time.sleep(0.5)
        os.kill(server, signal.SIGSTOP)
        time.sleep(1)  # the worker in its wait, for a reply that does not come
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        _kill(proc)
        os.kill(server, signal.SIGCONT)
        rd.stop()
    assert "stopping on request" in log and "worker ended: TimeoutError" in log, log
    assert took <= 3 + SCHEDULER_STOP_S + 2 * STOP_CHECK_S + 3, log


@contextlib.contextmanager
def _busy_while_redis_stopped(tmp_path: Path, modes: str, fault: str = "stopped") -> Iterator[tuple[subprocess.Popen, int]]:
    """A worker in `modes` (with "busy") on a private Redis, its work horse running a job (until
    `tmp_path/done`), then that Redis stopped (or made a read-only replica, as a failover
    does; or left as it is: `fault` "none"): (the worker, its horse's pid). Both are killed afterwards if they still run
    (the horse is in a session of its own: RQ's calls setsid)."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    proc = _start(f"unix://{rd.socket}", modes, str(tmp_path))
    horse = None
    try:
        wait_until(lambda: _in_its_wait(rd))
        rq_queue("sql", rd.client()).enqueue("hoardfs.jobs.any", 1)  # (the script's horse runs it until `done`)
        wait_until(lambda: (tmp_path / "horse").exists())
        horse = int((tmp_path / "horse").read_text())
        if fault == "read-only":
            rd.client().execute_command("REPLICAOF", "127.0.0.1", "1")  # (a primary that is not there)
        elif fault == "stopped":
            rd.stop()
        yield proc, horse
    finally:
        _kill(proc)
        if horse is not None and pid_alive(horse):
            os.kill(horse, signal.SIGKILL)
        rd.stop()


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_busy_worker_whose_redis_is_gone_stops_after_its_job(tmp_path: Path) -> None:
    """A busy worker whose Redis goes away watches its job to its end, and SIGTERM stops it
    then: RQ's watch raised out at the next heartbeat, and RQ's signal handler at the stop
    request (it writes the request's date to Redis) — either way the worker quit at once and
    left its work horse running the job with no worker."""
    with _busy_while_redis_stopped(tmp_path, "busy") as (proc, horse):
        time.sleep(3)  # heartbeats every 1 s, none of them written
        watching = [proc.poll() is None and pid_alive(horse)]
        os.kill(proc.pid, signal.SIGTERM)  # the worker alone, as `kill` or systemd's KillMode=mixed
        time.sleep(2 * STOP_CHECK_S)
        watching.append(proc.poll() is None and pid_alive(horse))
        (tmp_path / "done").touch()
        log, _ = proc.communicate(timeout=60)
        watching.append(not pid_alive(horse))  # (before the clean-up kills what is left)
    assert watching == [True, True, True], log  # the worker ended after its job, not before
    assert "warm shut down requested" in log and "worker ended: ConnectionError" in log, log
    assert log.count("Redis did not take its heartbeat") == 1, log  # (once a minute)
    assert "Traceback" not in log, log


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_scheduler_ended_by_a_redis_outage_starts_again_with_redis(tmp_path: Path) -> None:
    """A Redis that goes away ends the worker's scheduler process (one line); RQ starts it again
    only in its maintenance, every 10 minutes, and jobs put off (`enqueue_in`: an action's next
    step) waited that long. Here one is due 1 s after Redis is back and runs within seconds."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    proc = _start(f"unix://{rd.socket}", "wait")
    try:
        wait_until(lambda: _in_its_wait(rd))
        (scheduler,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        rd.stop()
        wait_until(lambda: not pid_alive(scheduler), timeout=30)  # ended on the lost Redis
        time.sleep(2 * STOP_CHECK_S)  # the worker waits for Redis
        rd.start()
        conn = rd.client()
        job = rq_queue("sql", conn).enqueue_in(timedelta(seconds=1), "hoardfs.jobs.no_such_job", 1)
        t0 = time.monotonic()
        wait_until(lambda: fetch_job(job.id, conn).get_status() == JobStatus.FAILED, timeout=60)
        took = time.monotonic() - t0
        assert "refused by the worker" in (fetch_job(job.id, conn).latest_result().exc_string or "")
        os.kill(proc.pid, signal.SIGTERM)
        log = _stopped(proc, conn, SCHEDULER_STOP_S + 10 * STOP_CHECK_S)
    finally:
        _kill(proc)
        rd.stop()
    assert f"its scheduler (pid {scheduler}) had ended; started it again" in log, log
    assert took <= 1 + SCHEDULER_REVIVE_S + 3 * STOP_CHECK_S + 5, log  # (RQ: up to 600 s)


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_busy_worker_whose_redis_is_gone_stops_after_its_job_past_a_stuck_scheduler(tmp_path: Path) -> None:
    """The stop's kill of a scheduler that does not stop releases its lock in Redis; from a busy
    worker's signal handler a Redis gone raised out of it, and the worker left its job."""
    with _busy_while_redis_stopped(tmp_path, "busy,scheduler-stuck") as (proc, horse):
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(SCHEDULER_STOP_S + 2 * STOP_CHECK_S)  # its scheduler given its time, then killed
        watching = proc.poll() is None and pid_alive(horse)
        (tmp_path / "done").touch()
        log, _ = proc.communicate(timeout=60)
        horse_ended = not pid_alive(horse)  # (before the clean-up kills what is left)
    assert watching and horse_ended, log
    assert "did not stop within" in log and "worker ended: ConnectionError" in log and "Traceback" not in log, log


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_scheduler_that_crashed_is_not_started_again_in_a_loop(tmp_path: Path) -> None:
    """A scheduler process that ended on an error of its own (not a lost Redis) would end again:
    started again every SCHEDULER_REVIVE_S, it filled the log with its tracebacks. It is left
    to RQ's maintenance (every 10 minutes)."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    proc = _start(f"unix://{rd.socket}", "scheduler-crashes")
    try:
        wait_until(lambda: _idle(rd.client()))
        time.sleep(2 * SCHEDULER_REVIVE_S + 2 * STOP_CHECK_S)
        os.kill(proc.pid, signal.SIGTERM)
        log = _stopped(proc, rd.client(), SCHEDULER_STOP_S + 10 * STOP_CHECK_S)
    finally:
        _kill(proc)
        rd.stop()
    assert log.count("a scheduler's own error") >= 1 and "started it again" not in log, log
    assert log.count("Scheduler for sql started") == 1, log


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_busy_worker_whose_redis_turns_read_only_watches_its_job(tmp_path: Path) -> None:
    """A Redis made a read-only replica (a failover) refuses the heartbeat with ReadOnlyError,
    which RQ's watch raised: the worker quit with a traceback and its job ran on unwatched."""
    with _busy_while_redis_stopped(tmp_path, "busy", fault="read-only") as (proc, horse):
        time.sleep(3)  # heartbeats every 1 s, each refused
        watching = proc.poll() is None and pid_alive(horse)
        redis.Redis(unix_socket_path=str(tmp_path / "run" / "redis.sock")).execute_command("REPLICAOF", "NO", "ONE")
        (tmp_path / "done").touch()
        wait_until(lambda: not pid_alive(horse))  # its job done, the worker on a writable Redis again
        time.sleep(1)
        alive_after = proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=60)
    assert watching and alive_after and proc.returncode == 0, log
    assert "Redis did not take its heartbeat (" in log and "read only replica" in log, log
    assert "Traceback" not in log, log


@pytest.mark.services  # (starts a private Redis and a worker)
def test_a_busy_worker_whose_scheduler_lock_is_refused_watches_its_job(tmp_path: Path) -> None:
    """The start of a scheduler that had ended, from a busy worker's watch, asks Redis for its
    lock; a refusal other than a lost connection (a read-only replica, an out-of-memory
    Redis) raised out of the watch, and the worker quit with its job running unwatched."""
    with _busy_while_redis_stopped(tmp_path, "busy,scheduler-ends,locks-refused", fault="none") as (proc, horse):
        time.sleep(3)  # heartbeats every 1 s, the first of them trying the scheduler's start
        watching = proc.poll() is None and pid_alive(horse)
        (tmp_path / "done").touch()
        wait_until(lambda: not pid_alive(horse))
        time.sleep(1)
        alive_after = proc.poll() is None
        if alive_after:
            os.kill(proc.pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=60)
    assert watching and alive_after and proc.returncode == 0, log
    assert log.count("Redis refused its scheduler's lock (You can't write against a read only replica.)") == 1, log
    assert "Traceback" not in log, log


@pytest.mark.services  # (starts a private Redis and a worker)
def test_the_command_thread_outlives_a_redis_that_hangs_as_it_returns(tmp_path: Path) -> None:
    """RQ's command thread (pubsub: shutdown, kill-horse) tries a lost Redis again, but ended
    on a timeout — a Redis back, then hanging in the thread's handshake — and the worker then
    obeyed no command for good. Here it is subscribed again once Redis answers, and a
    shutdown command stops it."""
    from rq.command import send_shutdown_command

    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    proc = _start(f"unix://{rd.socket}", "short-replies")  # (replies given up after 3 s)
    pid = None
    try:
        wait_until(lambda: _idle(rd.client()))
        rd.stop()
        time.sleep(3)
        rd.start()
        pid = int(rd.client().info("server")["process_id"])
        os.kill(pid, signal.SIGSTOP)  # back, then hanging: the thread's handshake times out
        time.sleep(8)
        os.kill(pid, signal.SIGCONT)
        conn = rd.client()
        wait_until(lambda: conn.pubsub_numsub("rq:pubsub:stopper") == [(b"rq:pubsub:stopper", 1)], timeout=30)
        send_shutdown_command(conn, "stopper")
        log = _stopped(proc, conn, 10 * STOP_CHECK_S)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _kill(proc)
        rd.stop()
    assert "pubsub thread exiting" not in log and "Traceback" not in log, log


@pytest.mark.parametrize("error", [redis.TimeoutError("Timeout reading from socket"),
                                   redis.ReadOnlyError("You can't write against a read only replica.")],
                         ids=["timeout", "read-only"])
@pytest.mark.expect_log(r"quitting\.\.\.", level="ERROR")
def test_a_worker_that_quits_on_an_error_raises_it(redis_conn: redis.Redis, error: redis.RedisError) -> None:
    """RQ's work loop logs an error it quits on and returns as from a stop: `hoard worker`
    exited 0 after a Redis loss, and systemd's Restart=on-failure never started it again."""

    class Quitting(HoardWorker):
        def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
            raise error

    worker = Quitting([rq_queue("sql", redis_conn)], connection=redis_conn, name="quitting")
    with pytest.raises(type(error)):
        worker.work(burst=True, with_scheduler=False)


@pytest.mark.expect_log(r"found an unhandled exception, quitting\.\.\. \(", level="ERROR")
@pytest.mark.expect_log(r"Scheduler \(pid \d+\) stopped: Redis refused it \(", level="ERROR")
def test_an_idle_worker_whose_redis_turns_read_only_says_so_in_one_line(tmp_path: Path, servers) -> None:
    """A Redis made a read-only replica under an idle worker: RQ's loop quits on the refused
    heartbeat with a traceback ("found an unhandled exception, quitting..."); one line instead,
    and `hoard worker`'s own (exit 3)."""
    rd, proc = _hoard_worker_on_its_redis(tmp_path, servers)
    try:
        wait_until(lambda: _in_its_wait(rd))
        rd.client().execute_command("REPLICAOF", "127.0.0.1", "1")
        log, _ = proc.communicate(timeout=60)
    finally:
        _kill(proc)
        rd.stop()
    assert proc.returncode == 3 and f"Redis at unix://{rd.socket} refuses writes (" in log, log
    assert "Traceback" not in log, log


def test_a_worker_on_a_read_only_redis_says_so_in_one_line(tmp_path: Path, servers) -> None:
    """A Redis made a read-only replica (a failover, redis_url left on the old primary)."""
    rd = PrivateRedis(tmp_path / "redis", tmp_path / "run" / "redis.sock")
    rd.start()
    try:
        rd.client().execute_command("REPLICAOF", "127.0.0.1", "1")
        home = write_home(tmp_path, {**servers, "redis_url": f"unix://{rd.socket}"})
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), "worker",
                              "--queues", "sql", "--burst"], capture_output=True, text=True, timeout=120)
    finally:
        rd.stop()
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"Redis at unix://{rd.socket} refuses writes (" in res.stderr and "point redis_url" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
