"""The GPU gate's hook (AC3/AC4): a contract whose `gate.hook` says "not ready" (exit 1)
until the GPU host is up, then ready (exit 0). The run waits in WAIT_GPU_READY holding no worker
and moves on by itself once the hook says ready — nobody releases it; a hook that hangs is ended
and counts as not ready; past gate.timeout_s the run fails with one line; a runner killed at the
gate resumes exactly once. Real PostgreSQL, Redis, RQ workers (with their scheduler) and hooks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard, kill_at
from tests.test_action_workers import _alive, assert_produced_once, inputs_of, worker_contract

# tier: the module's tests start hoard processes, workers and hooks, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: the hook: records its pid; hangs while `hang` exists; ready once `ready` exists; else exit 1
HOOK = """#!/bin/sh
echo $$ > "{d}/hook.pid"
[ -e "{d}/hang" ] && exec sleep 600
[ -e "{d}/ready" ] && exit 0
exit 1
"""
HOOK_GATE = '[gate]\nhook = ["/bin/sh", "{hook}"]\ntimeout_s = {timeout}\npoll_s = {poll}\n'


def hooked(cfg, batch: str, home: Path, *, timeout: int = 3600, poll: int = 5) -> Path:
    """An AC3 contract `thumbs` whose gate asks the hook of `home` (see HOOK); returns `home`."""
    hook = home / "gate-hook.sh"
    hook.write_text(HOOK.format(d=home))
    worker_contract(cfg, batch, type="AC3", gate=HOOK_GATE.format(hook=hook, timeout=timeout, poll=poll))
    return home


def test_hook_not_ready_waits_without_a_worker_then_moves_on_by_itself(hoard_home: Path, pg, redis_conn) -> None:
    """Queued: `hoard worker --burst` takes the run to its gate, where the hook says not ready
    (exit 1), and ends — the run waits in WAIT_GPU_READY holding no worker. Once the hook says
    ready, a `hoard worker` (its scheduler runs the gate's poll) takes it to done: nobody
    released it, and its children are there exactly once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=131, items=3)
    d = hooked(cfg, batch, hoard_home)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr  # the worker ended: the waiting run holds none
    st = load_state(cfg, rid)
    assert st is not None and (st.status, st.step) == ("WAIT_GPU_READY", "gate"), (st.status, st.step, st.error)
    assert st.gate.get("hook_said") == "exit 1" and "released" not in st.gate, st.gate
    assert st.report.get("poll_s") == 5, st.report
    (d / "ready").touch()  # the GPU host is up
    worker = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "worker"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = load_state(cfg, rid)
            if st is not None and st.status in ("done", "failed", "cancelled"):
                break
            assert worker.poll() is None, "the worker stopped"
            time.sleep(0.5)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert st is not None and st.status == "done", (st.status, st.step, st.error)
    assert "the gate hook said ready" in st.report["gate"] and "released" not in st.gate, (st.report, st.gate)
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))


def test_hook_that_hangs_is_ended_and_the_gate_times_out_with_one_line(hoard_home: Path, pg, redis_conn) -> None:
    """A hook that never answers is ended after its limit (twice the poll, at most 60 s) and
    counts as not ready; past gate.timeout_s the run fails at `gate` with one line naming the
    hook, what it did, and `hoard action resume RUN`; no hook process is left."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=132, items=3)
    d = hooked(cfg, batch, hoard_home, timeout=1)
    (d / "hang").touch()
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 3, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    (rid,) = [r["run"] for r in api.runs(cfg)]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "failed at step gate" in lines[0] and "not released within 1 s" in lines[0], lines
    assert "gate-hook.sh did not say ready (last: killed after 10 s" in lines[0], lines
    assert f"`hoard action resume {rid}`" in lines[0], lines
    pid = int((d / "hook.pid").read_text())
    assert not _alive(pid)
    # the GPU host up, the hook answers: the same run goes on from its gate
    (d / "hang").unlink()
    (d / "ready").touch()
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_state(cfg, rid).status == "done"


def test_runner_killed_at_the_gate_resumes_exactly_once(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of the `--here` runner right after its gate step's work (the hook said ready):
    `hoard action resume RUN` asks the hook again and finishes the run exactly once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=133, items=3)
    d = hooked(cfg, batch, hoard_home)
    (d / "ready").touch()
    base = counts(cfg)
    kill_at(cfg, "gate", "thumbs")
    (rid,) = [r["run"] for r in api.runs(cfg)]
    st = load_state(cfg, rid)
    assert st is not None and st.step == "gate" and "gate" not in st.done
    res = hoard(cfg.source, "action", "resume", rid, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["status"] == "done"
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))


def test_waiting_state_holds_the_gates_poll(hoard_home: Path, pg, redis_conn) -> None:
    """The state of a run waiting at its gate records the gate's poll_s (what `--here` waits
    between two checks), not only the report returned to RQ after the state was saved."""
    from hoardfs.jobs.actions.runner import _run_step_locked

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=134, items=2)
    worker_contract(cfg, batch, type="AC3", gate="[gate]\ntimeout_s = 3600\npoll_s = 7\n")
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    for step in ("plan", "stage", "gate"):
        _run_step_locked(cfg, rid, step, then_enqueue=False)
    st = load_state(cfg, rid)
    assert st is not None and (st.status, st.step) == ("WAIT_GPU_READY", "gate")
    assert st.report.get("poll_s") == 7, st.report
