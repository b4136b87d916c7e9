"""Truthful status: `hoard health` (and the GUI's overview, which reads the same document) warns
when action runs wait on a queue no worker serves and names `hoard worker`, and says nothing of
the kind when a worker serves it or nothing waits; `hoard action status RUN` names the next
command in every state (`--json`: `next`). Real PostgreSQL, Redis, RQ workers and processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from hoardfs.base import config
from hoardfs.jobs.health import collect
from hoardfs.jobs.queues import QUEUES, HoardWorker, rq_queue
from tests.helpers import GATE, worker_contract
from tests.test_action_runs import action_home, hoard

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services


def queue_warnings(cfg: config.Settings) -> list[str]:
    return [w for w in collect(cfg)["warnings"] if w.startswith("queue ")]


@contextmanager
def live_worker(conn: redis.Redis, queues: tuple[str, ...] = QUEUES) -> Iterator[None]:
    """A worker registered in Redis as RQ registers one (this process: alive), serving `queues`."""
    w = HoardWorker([rq_queue(q, conn) for q in queues], connection=conn)
    w.register_birth()
    try:
        yield
    finally:
        w.register_death()


def status(cfg: config.Settings, rid: str) -> tuple[dict, str]:
    """`hoard action status RUN --json`'s document, and the text `hoard action status RUN` prints."""
    doc = json.loads(hoard(cfg.source, "action", "status", rid, "--json").stdout)
    return doc, hoard(cfg.source, "action", "status", rid).stdout


def test_health_warns_of_runs_no_worker_will_start_and_status_names_the_next_command(
        hoard_home: Path, pg, redis_conn) -> None:
    """Nothing queued: no queue warning. A run queued with no worker alive: health warns, naming
    its queue, the run and `hoard worker`, and does not say "all good"; status's `next` is
    `hoard worker`. A live worker on the queue: no warning, no next command. At the gate:
    `hoard action release RUN`; released with no worker: `hoard worker` again; done: none.
    A failed run: `hoard action resume RUN`."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=651, items=3)
    worker_contract(cfg, batch, type="AC3", gate=GATE.format(timeout=3600))
    assert queue_warnings(cfg) == []

    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    queued = json.loads(res.stdout)
    rid = queued["run"]
    assert queued["status"] == "queued" and queued["next"] == "hoard worker"
    assert queue_warnings(cfg) == [f"queue sql: 1 action run waits on it ({rid}) and no worker serves it; start "
                                   "one: `hoard worker`"]
    health = hoard(cfg.source, "health")
    assert f"queue sql: 1 action run waits on it ({rid})" in health.stderr and "`hoard worker`" in health.stderr
    assert "all good" not in health.stdout, health.stdout
    doc, text = status(cfg, rid)
    assert doc["next"] == "hoard worker" and "  next: hoard worker" in text, text
    assert set(queued) - {"next"} <= set(doc)  # the keys it had, and `next`

    with live_worker(redis_conn, ("io", "maintenance")):  # others served, not sql: that queue alone
        assert queue_warnings(cfg) == [f"queue sql: 1 action run waits on it ({rid}) and no worker serves it; "
                                       "start one: `hoard worker --queues sql`"]
        assert status(cfg, rid)[0]["next"] == "hoard worker --queues sql"
    with live_worker(redis_conn):
        assert queue_warnings(cfg) == []
        doc, text = status(cfg, rid)
        assert doc["next"] is None and "next:" not in text

    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    doc, text = status(cfg, rid)
    assert doc["status"] == "WAIT_GPU_READY" and doc["next"] == f"hoard action release {rid}", doc
    assert f"  next: hoard action release {rid}" in text
    # its poll waits on the maintenance queue, which nothing serves
    assert queue_warnings(cfg) == [f"queue maintenance: 1 action run waits on it ({rid}) and no worker serves it; "
                                   "start one: `hoard worker`"]
    assert hoard(cfg.source, "action", "release", rid).returncode == 0
    assert status(cfg, rid)[0]["next"] == "hoard worker"  # released: a worker moves it on
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    doc, text = status(cfg, rid)
    assert doc["status"] == "done" and doc["next"] is None and "next:" not in text
    assert queue_warnings(cfg) == []

    worker_contract(cfg, batch, name="broken", exit=3)
    failed = hoard(cfg.source, "action", "run", "broken", "--here")
    assert failed.returncode == 5, failed.stdout + failed.stderr
    (frid,) = [r["run"] for r in json.loads(hoard(cfg.source, "action", "runs", "--json").stdout)["runs"]
               if r["action"] == "broken"]
    doc, text = status(cfg, frid)
    assert doc["status"] == "failed" and doc["next"] == f"hoard action resume {frid}"
    assert f"  next: hoard action resume {frid}" in text
