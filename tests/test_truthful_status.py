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


def _embedded_home(home: Path, pg) -> config.Settings:
    """`hoard_home` as the embedded default sees itself (an [embedded] section; its PostgreSQL
    and Redis the test's), copy_of_raw 3 over write_ack 2 (an ingest leaves its shards below
    target), the worker's replicate job every second."""
    from tests.test_ingest import ingest_home

    text = (home / "hoard.toml").read_text().replace(
        "[store]\n", "[store]\ncopy_of_raw = 3\ncopy_of_generated = 3\nwrite_ack = 2\n", 1)
    (home / "hoard.toml").write_text(text + '\n[embedded]\nroot = "var"\npostgres = false\nredis = false\n'
                                     "\n[worker]\nreplicate_every_s = 1\n")
    cfg = ingest_home(home, pg)
    assert cfg.embedded is not None and cfg.worker.replicate_every_s == 1
    return cfg


def _replicas(cfg: config.Settings) -> list[tuple[str, int, int]]:
    """(class, copies, target) of every sealed shard."""
    from hoardfs.fsd.store import Store

    with Store.open(cfg, writable=False) as store:
        return [(m.klass, store.copies_of(m), store.target(m.klass)) for m in store.index.iter_shards() if m.sealed]


def test_the_embedded_default_worker_replicates_by_itself(hoard_home: Path, pg, redis_conn) -> None:
    """An embedded setup with `hoard worker` running: a batch ingested through it ends with every
    sealed shard at its replica target (3) within a bounded wait — nobody typed `hoard
    replicate` — by the replicate job the worker queues, one at a time. A configuration without
    [embedded] (an install: its timer replicates) gets no such schedule."""
    import subprocess
    import sys
    import time

    from hoardfs.adapters.synth import Spec, generate
    from hoardfs.jobs import ingest as ua1
    from hoardfs.jobs.queues import fetch_job
    from hoardfs.jobs.replicator import REPLICATE_JOB, queue_replicate, scheduled

    cfg = _embedded_home(hoard_home, pg)
    worker = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "worker"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        zone3a = cfg.ssd.zone_path("3A")
        (batch,) = generate(zone3a, Spec(seed=652, batches=1, items_per_batch=12, sources=("gallery",),
                                         large_max_mb=1, ready_signal=True))
        ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = ua1.load_state(cfg, batch.batch_id)
            shards = _replicas(cfg)
            if st is not None and st.status == "done" and shards and all(c >= t for _, c, t in shards):
                break
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.5)
        assert st is not None and st.status == "done", (st.status, st.error) if st else None
        assert shards and {t for _, _, t in shards} == {3} and all(c >= 3 for _, c, _ in shards), shards
        job = fetch_job(REPLICATE_JOB, redis_conn)
        assert job.meta.get("by") == "hoard worker" and job.func_name == "hoardfs.jobs.maintenance.run"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    # one replicate job waits at a time, whoever queues it; an install (no [embedded]) queues none
    fetch_job(REPLICATE_JOB, redis_conn).delete()
    assert queue_replicate(cfg, redis_conn) is True and queue_replicate(cfg, redis_conn) is False
    assert scheduled(cfg, ["maintenance"]) and not scheduled(cfg, ["io"])
    install = config.load(cfg.source).model_copy(update={"embedded": None})
    assert not scheduled(install, ["maintenance"])


def test_collect_takes_what_an_external_worker_wrote_so_far_and_the_run_goes_on(
        hoard_home: Path, pg, redis_conn) -> None:
    """A run waiting for its external worker: status names `hoard action collect RUN`; collect
    stores and applies the children and result rows written so far (the run still waits, no
    done event), again changes nothing; once the worker is done the run ends with every child,
    edge and result row exactly once. A run at its GPU gate has nothing to collect: one line
    naming `hoard action release RUN`."""
    import psycopg

    from tests.test_action_workers import inputs_of

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=653, items=6)
    worker_contract(cfg, batch, run_spec='kind = "external"\ntimeout_s = 3600')
    rid = json.loads(hoard(cfg.source, "action", "run", "thumbs", "--json").stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    assert status(cfg, rid)[0]["next"] == "hoard worker"  # its poll waits on a queue nothing serves
    with live_worker(redis_conn):
        doc, text = status(cfg, rid)
    assert doc["status"] == "waiting_external" and doc["next"] == f"hoard action collect {rid}", doc
    shas = inputs_of(cfg, batch)
    assert len(shas) >= 3

    def rows() -> tuple[int, int, int, int]:
        with psycopg.connect(cfg.database_url) as conn:
            return (conn.execute("SELECT count(*) FROM physical_path WHERE locator LIKE %s", [f"action:{rid}/%"]).fetchone()[0],
                    conn.execute("SELECT count(*) FROM edge JOIN relationship_type r USING (rel_id) "
                                 "WHERE r.name = 'thumb_of'").fetchone()[0],
                    conn.execute("SELECT count(*) FROM result_canny WHERE batch_id = %s", [rid]).fetchone()[0],
                    conn.execute("SELECT count(*) FROM action_event WHERE batch_id = %s", [rid]).fetchone()[0])

    nothing = hoard(cfg.source, "action", "collect", rid)
    assert nothing.returncode == 0 and "collected 0 children" in nothing.stdout, nothing.stdout + nothing.stderr
    assert rows() == (0, 0, 0, 0)

    out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    for sha in shas[:2]:  # the external worker, part way: two thumbnails and one result line
        (out / "thumbs" / f"{sha}.txt").write_bytes(b"thumb of " + sha.encode())
    (out / "edges.jsonl").write_text(json.dumps({"sha": shas[0], "status": "ok", "ratio": 0.5}) + "\n")
    res = hoard(cfg.source, "action", "collect", rid, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    assert (got["children"], got["results"]) == (2, 1), got
    assert rows() == (2, 2, 1, 0)  # applied, and no ending: the run goes on
    doc, _ = status(cfg, rid)
    assert doc["status"] == "waiting_external" and doc["report"]["collected"]["times"] == 2
    again = hoard(cfg.source, "action", "collect", rid)
    assert again.returncode == 0 and "nothing new since the last collect" in again.stdout, again.stdout
    assert rows() == (2, 2, 1, 0)

    for sha in shas:  # the worker done: every thumbnail, every line, its marker
        (out / "thumbs" / f"{sha}.txt").write_bytes(b"thumb of " + sha.encode())
    (out / "edges.jsonl").write_text("".join(json.dumps({"sha": s, "status": "ok", "ratio": 0.5}) + "\n"
                                             for s in shas))
    (out / "_DONE").write_text("")
    fin = hoard(cfg.source, "action", "resume", rid, "--here")
    assert fin.returncode == 0, fin.stdout + fin.stderr
    assert rows() == (len(shas), len(shas), len(shas), 1)
    assert status(cfg, rid)[0]["status"] == "done"
    late = hoard(cfg.source, "action", "collect", rid)
    assert late.returncode == 2 and "is done" in late.stderr and "Traceback" not in late.stderr, late.stderr

    worker_contract(cfg, batch, name="gated", type="AC3", gate=GATE.format(timeout=3600))
    grid = json.loads(hoard(cfg.source, "action", "run", "gated", "--json").stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    assert status(cfg, grid)[0]["status"] == "WAIT_GPU_READY"
    gate = hoard(cfg.source, "action", "collect", grid)
    lines = [ln for ln in (gate.stdout + gate.stderr).splitlines() if ln.strip()]
    assert gate.returncode == 2 and len(lines) == 1 and f"`hoard action release {grid}`" in lines[0], lines


def test_collect_takes_the_labels_done_so_far_and_the_ac5_run_goes_on(hoard_home: Path, pg, redis_conn,
                                                                       label_studio) -> None:
    """An AC5 run waiting for its labellers with one task of several labelled: status names
    `hoard action collect RUN` (a worker alive); collect writes that task's labels and the run
    still waits for the others; once they are labelled it ends with every label, each once."""
    from hoardfs.jobs.actions.runner import run_step
    from tests.test_action_labelstudio import (
        burst,
        drawn,
        expected_rows,
        labels_in_sql,
        ls_home,
        post,
        queued_run,
        run_tasks,
    )

    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=654)
    rid = queued_run(cfg)
    burst(cfg)
    with live_worker(redis_conn):
        doc, text = status(cfg, rid)
    assert doc["status"] == "waiting_labels" and doc["next"] == f"hoard action collect {rid}", doc
    tasks = run_tasks(label_studio, cfg, rid)
    assert len(tasks) > 1
    first = drawn(0)
    expected = expected_rows(tasks[0]["data"]["hoard_sha256"], post(label_studio, tasks[0]["id"], first), first)
    res = hoard(cfg.source, "action", "collect", rid, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["labels"] > 0
    assert labels_in_sql(cfg) == expected
    assert status(cfg, rid)[0]["status"] == "waiting_labels"  # the run goes on waiting for the others
    for n, t in enumerate(tasks[1:], start=1):
        result = drawn(n)
        expected |= expected_rows(t["data"]["hoard_sha256"], post(label_studio, t["id"], result), result)
    run_step(str(cfg.source), rid, "labels")  # what the scheduled poll job runs
    burst(cfg)
    assert status(cfg, rid)[0]["status"] == "done"
    assert labels_in_sql(cfg) == expected
