"""Job hashes are written by whoever reaches Redis: no callback a job names is called, and
rq-dashboard in the GUI never unpickles a job nor renders a result's text as markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gui_fixtures import gui_home, user  # noqa: F401 - fixtures


@pytest.mark.expect_log(r"StartedJobRegistry cleanup: h-cb Moved to FailedJobRegistry", level="WARNING")
def test_an_abandoned_job_runs_no_callback_it_names(hoard_home: Path, redis_conn) -> None:
    """hoardfs.jobs.guard refuses a dequeued job naming callbacks; but RQ's registry clean-up (the
    worker's, at start and every few minutes) fetched every job of `rq:wip:<queue>` whose
    time had passed and called its failure callback — imported by the name in the job hash,
    called with the job, nothing checked. A job hash written into Redis with
    `failure_callback_name` = `builtins.print` and an expired entry in `rq:wip:maintenance`
    had `hoard worker --burst` call print (any importable callable: a module's import runs its
    code, `asyncio.__main__` hangs the worker). No job's callback is ever called now."""
    import json
    import zlib

    from tests.test_worker_guard import _hoard

    cfg = hoard_home / "hoard.toml"
    assert _hoard(cfg, "init").returncode == 0
    data = json.dumps(["hoardfs.jobs.store_jobs.replicate", None, [str(cfg.resolve()), 60, None], {}]).encode()
    redis_conn.hset("rq:job:h-cb", mapping={
        "data": zlib.compress(data), "origin": "maintenance", "status": "started",
        "created_at": "2026-01-01T00:00:00.000000Z", "enqueued_at": "2026-01-01T00:00:00.000000Z",
        "started_at": "2026-01-01T00:00:00.000000Z", "description": "abandoned",
        "failure_callback_name": "builtins.print"})
    redis_conn.sadd("rq:queues", "rq:queue:maintenance")
    redis_conn.zadd("rq:wip:maintenance", {"h-cb:e1": 1})
    res = _hoard(cfg, "worker", "--queues", "maintenance", "--burst")
    assert "AbandonedJobError" not in res.stdout, res.stdout  # print(job, connection, AbandonedJobError, …)
    assert "callback" not in res.stderr.lower() or "refus" in res.stderr.lower(), res.stderr


@pytest.mark.timeout(120)
async def test_rq_dashboard_never_unpickles_a_job(user, redis_conn, tmp_path: Path) -> None:
    """The GUI reads jobs with the JSON serializer (hoardfs.jobs.guard); rq-dashboard's job page and its
    delete route did not: `Job.fetch(job_id, connection=…)` with RQ's default serializer, and
    RQ decodes a job's `meta` as it fetches it. A job hash with a pickled `meta` (written by
    whoever reaches Redis) ran its command in the GUI's process (root) when a signed-in viewer
    opened /rq/0/view/job/<id>."""
    import pickle
    import zlib

    from hoardfs.jobs.guard import SERIALIZER
    from tests.gui_fixtures import sign_in
    from tests.test_worker_guard import _RunsOnUnpickle

    marker = tmp_path / "pwned"
    redis_conn.hset("rq:job:h-view", mapping={
        "data": zlib.compress(SERIALIZER.dumps(["hoardfs.jobs.store_jobs.replicate", None, [], {}])), "origin": "maintenance",
        "status": "failed", "created_at": "2026-01-01T00:00:00.000000Z", "description": "hostile",
        "meta": pickle.dumps(_RunsOnUnpickle(f"id > {marker}"))})
    try:
        await sign_in(user, "vera")
        r = await user.http_client.get("/rq/0/view/job/h-view")
        assert not marker.exists()
        assert r.status_code in (200, 404), r.text
    finally:
        redis_conn.delete("rq:job:h-view")


async def test_rq_dashboard_escapes_the_keys_of_a_result_too(user, redis_conn) -> None:
    """rq-dashboard's job page writes `JSON.stringify(d.result)` into a `<pre>` unescaped, and
    `hoardfs.gui.rqdash` escaped the strings of its JSON but not the keys of an object: a result
    `{"<form action=/rq/requeue/ingest method=post><button>…": 1}` came out as a form on
    the GUI's own page (same origin: its POST passes the acting check), the issue's "also
    seen". Keys are escaped as values are now."""
    from rq.results import Result

    from hoardfs.jobs.queues import rq_queue
    from tests.gui_fixtures import sign_in

    evil = "<form action=/rq/requeue/ingest method=post><button>session expired: continue</button></form>"
    job = rq_queue("maintenance", redis_conn).enqueue("builtins.print", "x", description="plain")
    Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value={evil: 1, "nested": {evil: [evil]}})
    try:
        await sign_in(user, "vera")
        r = await user.http_client.get(f"/rq/0/data/job/{job.id}.json")
        assert r.status_code == 200, r.text
        assert "<form" not in r.text and "<button" not in r.text, r.text
        assert any(k.startswith("&lt;form action=/rq/requeue/ingest method=post&gt;") for k in r.json()["result"])
    finally:
        job.delete()
