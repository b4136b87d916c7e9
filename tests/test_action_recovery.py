"""Action runs that lose something on the way and must still end: a run whose job Redis
lost (restarted without its data, an enqueue that failed after the state was saved), Redis down
between two steps, an ending event written by a process that died before saving the state,
PostgreSQL down when the ending is recorded, a cancel after a failure or after the store step.
Real PostgreSQL, Redis (a private one where it is stopped), store and workers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.core.layout import pin_path, pinned
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.state import load_state, read_work, save_state
from tests.test_action_runs import action_home, hoard
from tests.test_action_workers import GATE, assert_produced_once, ending_events, inputs_of, worker_contract
from tests.test_ingest_faults import set_url

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services


def test_queued_run_whose_job_redis_lost_is_named_and_queued_again(hoard_home: Path, pg, redis_conn) -> None:
    """A queued run whose step job Redis lost (flushed: a restart without persistence): `status`
    and `hoard health` name it with its step and the way on (`hoard action resume RUN`); `hoard action run` again
    queues it again (not just "queued"), and a worker takes it to done."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=101, items=3)
    worker_contract(cfg, batch)
    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    st = hoard(cfg.source, "action", "status", rid)
    assert "not in Redis" not in st.stdout, st.stdout  # its job is there
    redis_conn.flushdb()
    st = hoard(cfg.source, "action", "status", rid)
    assert st.returncode == 0 and f"run {rid}: queued at step plan" in st.stdout, st.stdout
    assert "the job of its next step (plan) is not in Redis" in st.stdout and f"`hoard action resume {rid}` queues it" \
        in st.stdout, st.stdout
    health = json.loads(hoard(cfg.source, "health", "--json").stdout)
    line = next(p for p in health["problems"] if f"action run {rid}" in p)
    assert "queued at plan" in line and "not in Redis" in line, line
    again = hoard(cfg.source, "action", "run", "thumbs")
    assert again.returncode == 0 and "was lost from Redis; queued again" in again.stdout, again.stdout
    assert "not in Redis" not in hoard(cfg.source, "action", "status", rid).stdout
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    assert load_state(cfg, rid).status == "done"


@pytest.mark.expect_log(r"not released within 600 s", level="ERROR")
def test_waiting_run_whose_poll_redis_lost_gets_it_back_and_times_out(hoard_home: Path, pg, redis_conn) -> None:
    """An AC3 run waiting at its gate whose scheduled poll Redis lost: status names it; `hoard
    action run` again schedules it anew, so its gate timeout fires (the run fails at gate with
    its one line) instead of the run waiting for ever."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=102, items=3)
    worker_contract(cfg, batch, type="AC3", gate=GATE.format(timeout=600))
    rid = json.loads(hoard(cfg.source, "action", "run", "thumbs", "--json").stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("WAIT_GPU_READY", "gate")
    assert api.job_lost(cfg, st) is False  # its poll is scheduled
    redis_conn.flushdb()
    out = hoard(cfg.source, "action", "status", rid).stdout
    assert "its poll (gate) is not in Redis" in out, out
    st = load_state(cfg, rid)
    st.gate["since"] = "2000-01-01T00:00:00+00:00"  # its timeout passed while nothing polled it
    save_state(cfg, st)
    again = hoard(cfg.source, "action", "run", "thumbs")
    assert again.returncode == 0 and "queued again" in again.stdout, again.stdout
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("failed", "gate") and "not released within 600 s" in st.error, st.error


@pytest.mark.expect_log(r"could not be queued: Redis", level="WARNING")
def test_redis_down_between_steps_one_line_then_resumes(hoard_home: Path, pg, redis_conn) -> None:
    """Queued mode, Redis stops between two steps (the step ran, the next one could not be
    queued): the run stays queued at the next step; `run --wait` says so in one line (exit 3),
    status names it; Redis back, `run --wait` with a worker finishes it exactly once."""
    from hoardfs.jobs.actions.runner import run_step
    from hoardfs.jobs.redis_server import PrivateRedis

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=103, items=3)
    worker_contract(cfg, batch)
    from tests.test_action_runs import counts

    base = counts(cfg)
    short = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    private = PrivateRedis(short / "data", short / "r.sock")
    private.start()
    worker = None
    try:
        set_url(cfg.source, "redis_url", f"unix://{short}/r.sock")
        cfg = config.load(cfg.source)
        rid = json.loads(hoard(cfg.source, "action", "run", "thumbs", "--json").stdout)["run"]
        private.stop()
        run_step(str(cfg.source), rid, "plan")  # a worker ran plan; queueing stage finds Redis gone
        st = load_state(cfg, rid)
        assert (st.status, st.step) == ("queued", "stage") and "Redis did not answer" in st.report["enqueue_failed"]
        res = hoard(cfg.source, "action", "run", "thumbs", "--wait")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 3 and len(lines) == 1, lines
        assert "does not answer" in lines[0] and f"`hoard action resume {rid}` goes on" in lines[0], lines
        out = hoard(cfg.source, "action", "status", rid).stdout
        assert "step stage could not be queued" in out or "not in Redis" in out, out
        private.start()
        worker = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "worker"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = hoard(cfg.source, "action", "run", "thumbs", "--wait")
        assert res.returncode == 0 and f"run {rid}: done" in res.stdout, res.stdout + res.stderr
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        private.stop()
    assert_produced_once(cfg, {**base, **{k: counts(cfg)[k] for k in ("action", "action_batch", "batch_member")}},
                         rid, len(inputs_of(cfg, batch)))


class Crash(BaseException):
    """The process dies here (what kill -9 does to the code after it)."""


def test_ending_event_written_then_crash_does_not_swallow_the_next_ending(hoard_home: Path, pg,
                                                                          redis_conn) -> None:
    """A failed run's event is written, then its process dies before the state says so; the same
    command again fails again: that second ending gets its own event (the old key counted endings
    from the state, so the second reused the first's key and was dropped)."""
    from hoardfs.jobs.actions import run_here, steps

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=104, items=3)
    worker_contract(cfg, batch, exit=3)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    real = steps.apply_write_intent

    def then_crash(conn, intent):
        res = real(conn, intent)
        if str(intent["key"]).startswith("action-end:"):
            raise Crash
        return res

    steps.apply_write_intent = then_crash
    try:
        with pytest.raises(Crash):
            run_here(cfg, rid)
    finally:
        steps.apply_write_intent = real
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 5 and "exited with status 3" in res.stdout + res.stderr, res.stdout + res.stderr
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed", "failed"]


def test_cancel_of_a_failed_run_is_not_a_second_ending(hoard_home: Path, pg, redis_conn) -> None:
    """A run that failed, then `hoard action cancel`: one line saying its failure stands, 3C
    cleaned, and no second event (the run ended once)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=105, items=3)
    worker_contract(cfg, batch, exit=3)
    assert hoard(cfg.source, "action", "run", "thumbs", "--here").returncode == 5
    (rid,) = [r["run"] for r in api.runs(cfg)]
    res = hoard(cfg.source, "action", "cancel", rid)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 0 and len(lines) == 1 and "had failed at step run" in lines[0], lines
    assert load_state(cfg, rid).status == "cancelled" and not (cfg.ssd.zone_path("3C") / rid).exists()
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]


def test_ending_event_skipped_with_postgresql_down_is_written_by_status(hoard_home: Path, pg,
                                                                         redis_conn) -> None:
    """PostgreSQL unreachable when a failed run records its ending: the event waits in the
    state (health says so); `hoard action status RUN` with PostgreSQL back writes it, once."""
    from hoardfs.jobs.actions import run_here, steps

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=106, items=3)
    worker_contract(cfg, batch, exit=3)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    good = cfg.database_url
    real = steps.STEPS["run"]

    def down_then_run(c, st) -> None:  # PostgreSQL stops while the worker runs
        c.database_url = f"host={hoard_home}/no-pg dbname=nothing connect_timeout=2"
        real(c, st)

    steps.STEPS["run"] = down_then_run
    try:
        assert run_here(cfg, rid) == 5
    finally:
        steps.STEPS["run"] = real
        cfg.database_url = good
    assert ending_events(cfg, rid) == []
    st = load_state(cfg, rid)
    assert st.status == "failed" and "not recorded in PostgreSQL yet" in st.report["ending_event"]
    health = json.loads(hoard(cfg.source, "health", "--json").stdout)
    assert any("ending event is not recorded" in p for p in health["problems"]), health["problems"]
    res = hoard(cfg.source, "action", "status", rid)
    assert res.returncode == 5, res.stdout
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]
    hoard(cfg.source, "action", "status", rid)
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]
    assert "ending_event" not in load_state(cfg, rid).report


def test_cancel_after_store_drops_the_pin_of_its_children(hoard_home: Path, pg, redis_conn) -> None:
    """A run cancelled after its store step: its children will never be applied, so the pin
    `action-<run>` that kept them from gc is dropped (before, they were pinned for ever)."""
    from hoardfs.jobs.actions.runner import _run_step_locked

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=107, items=3)
    worker_contract(cfg, batch)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    for step in ("plan", "stage", "run", "parse", "store"):
        _run_step_locked(cfg, rid, step, then_enqueue=False)
    children = {bytes.fromhex(sha) for sha, _size in read_work(cfg, rid, "stored").values()}
    assert children and children <= pinned(cfg)[0] and pin_path(cfg, f"action-{rid}").exists()
    res = hoard(cfg.source, "action", "cancel", rid)
    assert res.returncode == 0 and f"run {rid}: cancelled" in res.stdout, res.stdout + res.stderr
    assert not pin_path(cfg, f"action-{rid}").exists() and not children & pinned(cfg)[0]
    assert load_state(cfg, rid).status == "cancelled"
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM physical_path WHERE locator LIKE %s",
                            [f"action:{rid}/%"]).fetchone() == (0,)
