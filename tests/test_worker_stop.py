"""`hoard worker` stops on one SIGTERM: idle, within STOP_CHECK_S, whatever the main thread was
doing when the signal came; and a job it had just taken off its queue runs first, never dropped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import redis
from rq.job import JobStatus
from rq.worker import WorkerStatus

from hoardfs.jobs.queues import STOP_CHECK_S, HoardWorker, fetch_job, rq_queue
from tests.helpers import wait_until

#: a worker on the `sql` queue of the Redis at argv[1]; with argv[2] == "signal-on-take", it
#: sends itself SIGTERM the moment it has taken a job off the queue (RQ's reorder_queues runs
#: right after the dequeue), before it starts it
WORKER = textwrap.dedent("""
    import os, signal, sys
    import redis
    from hoardfs.jobs.queues import HoardWorker, rq_queue

    class Worker(HoardWorker):
        def reorder_queues(self, reference_queue):
            if sys.argv[2] == "signal-on-take":
                os.kill(os.getpid(), signal.SIGTERM)
            super().reorder_queues(reference_queue)

    conn = redis.Redis.from_url(sys.argv[1])
    Worker([rq_queue("sql", conn)], connection=conn, name="stopper").work(with_scheduler=True)
""")


def _start(url: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, mode], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _idle(conn: redis.Redis) -> bool:
    w = HoardWorker.find_by_key(HoardWorker.redis_worker_namespace_prefix + "stopper", connection=conn)
    return w is not None and w.get_state() == WorkerStatus.IDLE


def _stopped(proc: subprocess.Popen, conn: redis.Redis, within: float) -> None:
    try:
        _, err = proc.communicate(timeout=within)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopper" not in {w.name for w in HoardWorker.all(connection=conn)}  # it said its death


def test_an_idle_worker_stops_on_one_sigterm(servers, redis_conn: redis.Redis) -> None:
    proc = _start(servers["redis_url"], "wait")
    wait_until(lambda: _idle(redis_conn))
    time.sleep(1)  # in its wait for a job (a blocking BLPOP)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the worker and its scheduler, as systemd or a shell stops them
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
