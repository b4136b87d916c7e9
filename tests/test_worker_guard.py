"""`hoard worker` runs only hoardfs's own jobs (jobs.guard): a job written into Redis by anyone
else — a pickle naming subprocess.check_call, a pickled `meta` that runs code when the job is
merely read, a JSON job naming os.system, a hoardfs job pointed at another configuration, a
garbled job hash — is refused with one log line, marked failed, and nothing of it runs; the
worker goes on and runs the real job queued behind them."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from jobs.guard import JOB_FUNCTIONS, SERIALIZER
from jobs.queues import fetch_job, rq_queue


class _RunsOnUnpickle:
    """A pickle that runs a shell command when loaded (what RQ's default serializer allows)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _raw_job(conn, queue: str, job_id: str, data: bytes, **fields: bytes | str) -> None:
    """A job written straight into Redis, the way any local user who reaches the socket can."""
    conn.hset(f"rq:job:{job_id}", mapping={"data": zlib.compress(data), "origin": queue, "status": "queued",
                                           "created_at": "2026-01-01T00:00:00.000000Z",
                                           "enqueued_at": "2026-01-01T00:00:00.000000Z",
                                           "description": f"hostile {job_id}", **fields})
    conn.sadd("rq:queues", f"rq:queue:{queue}")
    conn.rpush(f"rq:queue:{queue}", job_id)


def _hoard(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    return subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.expect_log(r"refused job h-(pickle|meta|json|config) on queue maintenance, not run", level="ERROR")
@pytest.mark.expect_log(r"job h-garbled: its Redis hash is not a job RQ can read", level="ERROR")
def test_hostile_jobs_are_refused_and_the_worker_goes_on(hoard_home: Path, redis_conn) -> None:
    """Hostile jobs on `maintenance` (pickled subprocess.check_call, pickled meta running
    os.system, JSON os.system, a hoardfs job naming another hoard.toml, a garbled hash) never
    run — no marker file — each is failed with one line naming it, and the replicate job
    queued after them finishes."""
    cfg = hoard_home / "hoard.toml"
    assert _hoard(cfg, "init").returncode == 0
    marks = {n: hoard_home / f"pwned-{n}" for n in ("pickle", "meta", "json", "config")}
    _raw_job(redis_conn, "maintenance", "h-pickle", pickle.dumps(
        ("subprocess.check_call", None, (["sh", "-c", f"id > {marks['pickle']}"],), {})))
    _raw_job(redis_conn, "maintenance", "h-meta", SERIALIZER.dumps(["jobs.store_jobs.replicate", None, [], {}]),
             meta=pickle.dumps(_RunsOnUnpickle(f"id > {marks['meta']}")))
    _raw_job(redis_conn, "maintenance", "h-json", SERIALIZER.dumps(["os.system", None, [f"id > {marks['json']}"], {}]))
    other = hoard_home / "other.toml"  # a hoardfs job against someone else's configuration
    other.write_text(cfg.read_text())
    _raw_job(redis_conn, "maintenance", "h-config", SERIALIZER.dumps(
        ["jobs.store_jobs.replicate", None, [str(other), 60, None], {}]))
    _raw_job(redis_conn, "maintenance", "h-garbled", SERIALIZER.dumps(["os.system", None, ["true"], {}]),
             created_at="not a date")
    legit = rq_queue("maintenance", redis_conn).enqueue("jobs.store_jobs.replicate", str(cfg.resolve()), 60, None)

    res = _hoard(cfg, "worker", "--queues", "maintenance", "--burst")

    assert res.returncode == 0, res.stderr
    assert not [p for p in marks.values() if p.exists()], res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for job_id in ("h-pickle", "h-meta", "h-json", "h-config"):
        refused = [ln for ln in res.stderr.splitlines() if f"refused job {job_id} " in ln]
        assert len(refused) == 1, res.stderr
        job = fetch_job(job_id, redis_conn)
        assert job.get_status(refresh=True) == "failed"
        assert "refused by the worker, not run" in job.latest_result().exc_string
    assert "not JSON" in next(ln for ln in res.stderr.splitlines() if "refused job h-pickle " in ln)
    assert "'os.system' is not a hoardfs job" in res.stderr
    assert "meta is not JSON" in next(ln for ln in res.stderr.splitlines() if "refused job h-meta " in ln)
    assert len([ln for ln in res.stderr.splitlines() if "job h-garbled: its Redis hash is not a job" in ln]) == 1
    assert "names configuration" in next(ln for ln in res.stderr.splitlines() if "refused job h-config " in ln)
    done = fetch_job(legit.id, redis_conn)
    assert done.get_status(refresh=True) == "finished", res.stderr
    assert "copied_shards" in done.return_value()


def test_every_job_hoardfs_enqueues_is_allowed() -> None:
    """JOB_FUNCTIONS names importable module-level functions, each taking `config_path` where
    the allow-list says; every function the code enqueues by name is on it."""
    import importlib
    import inspect
    import re

    for name, at in JOB_FUNCTIONS.items():
        module, _, attr = name.rpartition(".")
        fn = getattr(importlib.import_module(module), attr)
        assert list(inspect.signature(fn).parameters)[at] == "config_path", name
    repo = Path(__file__).resolve().parents[1]
    named = set()
    for f in [*(repo / "jobs").glob("*.py"), *(repo / "fsd").rglob("*.py"), *(repo / "gui").glob("*.py")]:
        named |= set(re.findall(r'"(jobs\.[a-z_]+\.[a-z_]+)"', f.read_text()))
    enqueued = {n for n in named if n.rsplit(".", 1)[1] in {"run_step", "run_job", "run", "replicate"}}
    assert enqueued and enqueued <= set(JOB_FUNCTIONS), enqueued - set(JOB_FUNCTIONS)
    assert json.loads(SERIALIZER.dumps({"a": [1]})) == {"a": [1]}


@pytest.mark.expect_log(r"Redis at 127.0.0.1:1 takes no password", level="WARNING")
def test_worker_names_a_redis_others_can_write_to(hoard_home: Path, tmp_path: Path) -> None:
    """`hoard worker` warns once, naming the server, when people outside the hoard group can queue
    jobs: a TCP Redis without a password, a socket with mode 0777; not for 0770 or a password."""
    import socket

    from jobs.guard import exposure

    sock = tmp_path / "r.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        os.chmod(sock, 0o777)
        assert "has mode 777: every local user can queue jobs" in exposure(f"unix://{sock}?db=0")
        os.chmod(sock, 0o770)
        assert exposure(f"unix://{sock}?db=0") == ""
    assert exposure("redis://:secret@127.0.0.1:6379/0") == ""
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "fsd", "--config", str(hoard_home / "hoard.toml"), "worker", "--burst"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**env, "HOARD_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert res.returncode == 3, res.stderr
    assert res.stderr.count("Redis at 127.0.0.1:1 takes no password: every local user can queue jobs") == 1, res.stderr
