"""`hoard action resume RUN`: the one way on of every run that stopped — the run id
with the inputs and parameters it was recorded with, where `hoard action run NAME` again is that
run only with the same --nodes/--selector/--param. Every error line, `status`, `runs` and `hoard
health` name it. Real PostgreSQL, Redis, store and workers."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard
from tests.test_action_workers import assert_produced_once, inputs_of, worker_contract

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services


def _one_line(res) -> str:
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_failed_run_of_listed_nodes_resumes_by_its_id(hoard_home: Path, pg, redis_conn) -> None:
    """A run over --nodes (two of the batch's images) whose worker exits 3: its error line,
    `status`, `runs` and `hoard health` name `hoard action resume RUN` — `hoard action run thumbs`
    alone would be another run over every image. Fixed, `resume RUN --here` finishes exactly that
    run (its two inputs); `resume` again says "done already" and changes nothing."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=121, items=6)
    worker_contract(cfg, batch, exit=3)
    two = inputs_of(cfg, batch)[:2]
    listed = hoard_home / "two.txt"
    listed.write_text("\n".join(two) + "\n")
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--nodes", str(listed), "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    (rid,) = [r["run"] for r in api.runs(cfg)]
    line = _one_line(res)
    assert "exited with status 3" in line and f"`hoard action resume {rid}`" in line, line
    assert "hoard action run thumbs" not in line, line
    st = hoard(cfg.source, "action", "status", rid)
    assert st.returncode == 5 and f"`hoard action resume {rid}`" in st.stdout, st.stdout
    runs = hoard(cfg.source, "action", "runs")
    assert f"`hoard action resume {rid}`" in runs.stdout, runs.stdout
    health = json.loads(hoard(cfg.source, "health", "--json").stdout)
    problem = next(p for p in health["problems"] if f"action run {rid}" in p)
    assert f"`hoard action resume {rid}`" in problem, problem
    # `run` without the same --nodes is another run: the id differs
    assert api.prepare(cfg, "thumbs")[3] != rid
    worker_contract(cfg, batch, exit=0)  # the worker fixed (same version: the same run)
    res = hoard(cfg.source, "action", "resume", rid, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["run"], doc["status"], doc["inputs"]) == (rid, "done", 2)
    assert_produced_once(cfg, base, rid, 2)
    after = counts(cfg)
    again = hoard(cfg.source, "action", "resume", rid, "--here")
    assert again.returncode == 0 and "done already" in again.stdout, again.stdout + again.stderr
    assert counts(cfg) == after
    assert len(api.runs(cfg)) == 1


def test_resume_of_a_queued_run_whose_job_redis_lost_queues_it_again(hoard_home: Path, pg, redis_conn) -> None:
    """A queued run whose job Redis lost: `status` names `hoard action resume RUN`; that command
    queues it again (one line), a worker takes it to done; a running run is said running."""
    from hoardfs.base.files import flocked
    from hoardfs.jobs.actions.state import beat, lock_path, save_state, state_dir

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=122, items=3)
    worker_contract(cfg, batch)
    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    redis_conn.flushdb()
    st = hoard(cfg.source, "action", "status", rid)
    assert "not in Redis" in st.stdout and f"`hoard action resume {rid}` queues it" in st.stdout, st.stdout
    again = hoard(cfg.source, "action", "resume", rid)
    assert again.returncode == 0 and "was lost from Redis; queued again" in _one_line(again), again.stdout
    state = load_state(cfg, rid)
    assert state is not None
    state.status = "running"  # as while a worker runs its step (it holds the run's lock)
    save_state(cfg, state)
    with flocked(lock_path(cfg, rid)):
        beat(cfg, rid)
        busy = hoard(cfg.source, "action", "resume", rid, "--json")
        assert busy.returncode == 0 and json.loads(busy.stdout)["status"] == "running", busy.stdout + busy.stderr
        # a step that hangs (its heartbeat stale) and still holds the lock: one line, no waiting for ever
        old = time.time() - 600
        os.utime(state_dir(cfg) / f"{rid}.beat", (old, old))
        hung = hoard(cfg.source, "action", "resume", rid, "--here")
        line = _one_line(hung)
        assert hung.returncode == 3 and "still holds its lock" in line and f"`hoard action resume {rid}`" in line, line
    state.status = "queued"
    save_state(cfg, state)
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    assert load_state(cfg, rid).status == "done"


def test_unknown_run_is_one_line(hoard_home: Path, pg, redis_conn) -> None:
    """`resume` of a run id nobody recorded, or of no run id at all: one line naming where the
    runs are listed, exit 2."""
    cfg = config.load(hoard_home / "hoard.toml")
    for rid in ("thumbs-v1-000000000000", "not a run"):
        res = hoard(cfg.source, "action", "resume", rid, "--here")
        assert res.returncode == 2 and "`hoard action runs`" in _one_line(res), res.stdout + res.stderr


def test_stage_refused_for_a_full_3c_says_free_space_then_resume(hoard_home: Path, pg, redis_conn) -> None:
    """Zone 3C too small for the stage: the run fails at `stage` with one line saying to free
    space, then `hoard action resume RUN`; with room again, that command finishes it."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=123, items=4)
    worker_contract(cfg, batch)
    toml = cfg.source.read_text()
    small = toml.replace("[ssd.zones.3C]\nquota_gb = 1\n", "[ssd.zones.3C]\nquota_gb = 0.000001\n")
    assert small != toml
    cfg.source.write_text(small)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode != 0, res.stdout + res.stderr
    (rid,) = [r["run"] for r in api.runs(cfg)]
    line = _one_line(res)
    assert "failed at step stage" in line and "free space" in line, line
    assert line.rstrip().endswith(f"then `hoard action resume {rid}`"), line
    cfg.source.write_text(toml)
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["eio", "enospc"])
def test_output_not_made_durable_fails_the_run_step_in_one_line_then_resume(
        hoard_home: Path, pg, redis_conn, monkeypatch, err: int) -> None:
    """The run step's syncfs of the worker's output (a failing SSD: EIO; a full one) fails the
    step in one line that says the worker succeeded, what failed and the next step (exit 3 or
    6); the state names no worker left (the resume would take it for one a dead runner left,
    and stop it), and `hoard action resume RUN` runs the worker again and finishes the run."""
    from hoardfs.jobs.actions import steps
    from hoardfs.jobs.actions.runner import _run_step_locked
    from hoardfs.jobs.actions.state import ActionError

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=137, items=3)
    worker_contract(cfg, batch)
    base = counts(cfg)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    for step in ("plan", "stage"):
        _run_step_locked(cfg, rid, step, then_enqueue=False)

    def failing(fd: int, path: object) -> None:
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(steps, "syncfs_fd", failing)  # (the disk's answer; everything else is real)
    with pytest.raises(ActionError):
        _run_step_locked(cfg, rid, "run", then_enqueue=False)
    st = load_state(cfg, rid)
    assert (st.status, st.step, st.worker) == ("failed", "run", None), st
    assert st.report["run"]["exit_code"] == 0 and st.exit_code == (6 if err == errno.ENOSPC else 3), st
    assert "\n" not in st.error and "the worker succeeded, but its output in" in st.error, st.error
    assert os.strerror(err) in st.error and st.error.endswith(f"`hoard action resume {rid}` runs the worker again")
    assert ("free space in zone 3C" if err == errno.ENOSPC else "check the SSD") in st.error, st.error
    monkeypatch.undo()
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0 and "ended" not in res.stderr, res.stdout + res.stderr
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
