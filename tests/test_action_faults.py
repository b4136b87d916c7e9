"""Faults the chaos suite's action workload found (tests/chaos, docs/testing.md):

- a worker never outlives its runner: `kill -9` of `hoard action run --here` while its worker
  runs must end the worker too (the worker runs in a session of its own, so the kill of the
  runner's process group missed it, and it went on writing the output root a resumed run
  empties and reads);
- a run whose stage request was given up by `hoard zones clean RUN` (what `hoard health`
  offers for the stage of a run killed while it staged) still resumes: the same `hoard action
  run` completes it (it failed for ever with "no request recorded for output RUN")."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_action_runs import action_home, counts, hoard
from tests.test_action_workers import assert_produced_once, inputs_of, worker_contract

# tier: starts hoard processes and workers; PostgreSQL and Redis
pytestmark = pytest.mark.services


def _workers(script: Path) -> list[int]:
    """The live processes running `script` (a zombie has no command line)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if str(script).encode() in (d / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(d.name))
    return found


def test_kill9_of_the_runner_ends_its_worker(hoard_home: Path, pg, redis_conn) -> None:
    """The runner killed -9 while its worker sleeps (600 s, after writing its outputs): the
    worker is ended with it, not left running."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=86, items=3)
    worker_contract(cfg, batch, sleep=600)
    script = cfg.actions_dir / "thumbs-worker.py"
    runner = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "action", "run", "thumbs",
                               "--here"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    left: list[int] = []
    try:
        out = cfg.ssd.zone_path("3C")
        while not list(out.glob("*/by_sha256/output/edges.jsonl")) or not _workers(script):
            assert runner.poll() is None, f"the runner ended (exit {runner.returncode}) before its worker ran"
            select.select([], [], [], 0.05)
        (worker,) = _workers(script)
        fd = os.pidfd_open(worker)
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        # bounded wait, not a timing assertion: without the fix the worker sleeps its 600 s
        ended = bool(select.select([fd], [], [], 60)[0])
        os.close(fd)
        left = _workers(script)
        assert ended and not left, f"the worker {left} outlives its runner's kill -9"
    finally:
        for pid in left + ([] if runner.poll() is not None else [runner.pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


#: the runner killed -9 as its stage step begins (plan done: the stage request is recorded)
KILLED_IN_STAGE = """
import os, signal, sys
from hoardfs.base import config
from hoardfs.jobs.actions import api, run_here, steps
cfg = config.load(sys.argv[1])
steps.STEPS["stage"] = lambda cfg, st: os.kill(os.getpid(), signal.SIGKILL)
run_here(cfg, api.submit(cfg, "thumbs", queue=False).state.run_id)
"""


def test_a_run_resumes_after_its_stage_request_was_given_up(hoard_home: Path, pg, redis_conn) -> None:
    """Killed in its stage step, then `hoard zones clean RUN` (the way health offers to give an
    interrupted stage up): the same command stages again and completes the run exactly once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=87, items=4)
    worker_contract(cfg, batch)
    base = counts(cfg)
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_STAGE, str(cfg.source)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    (rid,) = [p.stem for p in (cfg.ssd.root / "state" / "actions").glob("thumbs-v1-*.json") if p.stem.count(".") == 0]
    clean = hoard(cfg.source, "zones", "clean", rid)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
