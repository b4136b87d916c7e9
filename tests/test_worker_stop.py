"""`hoard worker` stops on one SIGTERM even when RQ's StopRequested is lost on its way (a
signal landing in a finalizer, where Python drops exceptions, or inside an `except Exception`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import redis
from rq.worker import WorkerStatus

from hoardfs.jobs.queues import STOP_CHECK_S, HoardWorker
from tests.helpers import wait_until

#: a HoardWorker whose every StopRequested is lost, as a signal landing in `__del__` loses it
LOSSY = textwrap.dedent("""
    import sys
    import redis
    from rq.exceptions import StopRequested
    from hoardfs.jobs.queues import HoardWorker, rq_queue

    class Lossy(HoardWorker):
        def _shutdown(self):
            try:
                super()._shutdown()
            except StopRequested:
                pass  # lost: the worker goes on unless the request was remembered

    conn = redis.Redis.from_url(sys.argv[1])
    Lossy([rq_queue("sql", conn)], connection=conn, name="lossy").work(with_scheduler=True)
""")


def _idle(conn: redis.Redis, name: str) -> bool:
    w = HoardWorker.find_by_key(HoardWorker.redis_worker_namespace_prefix + name, connection=conn)
    return w is not None and w.get_state() == WorkerStatus.IDLE


def test_an_idle_worker_whose_stop_exception_is_lost_still_stops(servers, redis_conn: redis.Redis) -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOSSY, servers["redis_url"]], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _idle(redis_conn, "lossy"))
        time.sleep(1)  # in its wait for a job (a blocking BLPOP)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # the worker and its scheduler, as systemd or a shell stops them
        _, err = proc.communicate(timeout=4 * STOP_CHECK_S)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 <= 2 * STOP_CHECK_S
        assert "lossy" not in {w.name for w in HoardWorker.all(connection=redis_conn)}  # it said its death
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
