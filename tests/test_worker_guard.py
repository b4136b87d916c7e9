"""`hoard worker` runs only hoardfs's own jobs (hoardfs.jobs.guard): a job written into Redis by anyone
else — a pickle naming subprocess.check_call, a pickled `meta` that runs code when the job is
merely read, a JSON job naming os.system, a hoardfs job pointed at another configuration, a
garbled job hash, a server job this server did not sign (hoardfs.jobs.jobkey) — is refused with one log
line, marked failed, and nothing of it runs; the worker goes on and runs the real job queued
behind them. A copy of a signed job runs only while the job it copies has not run to its end."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.jobs import jobkey
from hoardfs.jobs.guard import JOB_FUNCTIONS, SERIALIZER
from hoardfs.jobs.queues import fetch_job, rq_queue


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
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
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
    _raw_job(redis_conn, "maintenance", "h-meta", SERIALIZER.dumps(["hoardfs.jobs.store_jobs.replicate", None, [], {}]),
             meta=pickle.dumps(_RunsOnUnpickle(f"id > {marks['meta']}")))
    _raw_job(redis_conn, "maintenance", "h-json", SERIALIZER.dumps(["os.system", None, [f"id > {marks['json']}"], {}]))
    other = hoard_home / "other.toml"  # a hoardfs job against someone else's configuration
    other.write_text(cfg.read_text())
    _raw_job(redis_conn, "maintenance", "h-config", SERIALIZER.dumps(
        ["hoardfs.jobs.store_jobs.replicate", None, [str(other), 60, None], {}]))
    _raw_job(redis_conn, "maintenance", "h-garbled", SERIALIZER.dumps(["os.system", None, ["true"], {}]),
             created_at="not a date")
    key = jobkey.of(config.load(cfg))
    legit = rq_queue("maintenance", redis_conn, key).enqueue("hoardfs.jobs.store_jobs.replicate", str(cfg.resolve()), 60, None)

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


def _refused(stderr: str, job_id: str) -> str:
    """The one line of the worker's log refusing `job_id`."""
    lines = [ln for ln in stderr.splitlines() if f"refused job {job_id} " in ln]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.expect_log(r"refused job f-(unsigned|hostkey|changed|moved|renamed|old) on queue maintenance, not run",
                        level="ERROR")
def test_a_server_job_this_server_did_not_sign_is_refused(hoard_home: Path, redis_conn) -> None:
    """What a remote host can write with the server's Redis password — a `backup` job unsigned
    or signed with its own key, a signed job whose function and arguments it changed, one it
    moved onto another queue, one copied under another id, a job path hoardfs no longer has —
    is refused with one line each (`not signed by this server's key; only the server queues
    server jobs`), failed, and runs nothing: no backup in 3B; the job the server signed runs."""
    path = hoard_home / "hoard.toml"
    assert _hoard(path, "init").returncode == 0
    cfg = config.load(path)
    key, named = jobkey.of(cfg), str(path.resolve())
    assert (cfg.ssd.root / "state" / "jobs" / "key").stat().st_mode & 0o777 == 0o600  # `hoard init` made it
    host_key = jobkey.JobKey(hoard_home / "host" / "state" / "jobs")  # a host's own: not the server's
    backup = ("hoardfs.jobs.maintenance.run", "backup", named)
    rq_queue("maintenance", redis_conn).enqueue(*backup, job_id="f-unsigned")
    rq_queue("maintenance", redis_conn, host_key).enqueue(*backup, job_id="f-hostkey")
    rq_queue("maintenance", redis_conn, key).enqueue("hoardfs.jobs.store_jobs.replicate", named, 60, None, job_id="f-changed")
    redis_conn.hset("rq:job:f-changed", "data", zlib.compress(SERIALIZER.dumps([backup[0], None, list(backup[1:]), {}])))
    rq_queue("io", redis_conn, key).enqueue("hoardfs.jobs.store_jobs.replicate", named, 60, None, job_id="f-moved")
    redis_conn.lrem("rq:queue:io", 0, "f-moved")
    redis_conn.rpush("rq:queue:maintenance", "f-moved")
    redis_conn.hset("rq:job:f-renamed", mapping=redis_conn.hgetall("rq:job:f-moved"))
    redis_conn.rpush("rq:queue:maintenance", "f-renamed")
    _raw_job(redis_conn, "maintenance", "f-old", SERIALIZER.dumps(["hoardfs.jobs.ingest.run_batch", None, [named], {}]))
    legit = rq_queue("maintenance", redis_conn, key).enqueue("hoardfs.jobs.store_jobs.replicate", named, 60, None)

    res = _hoard(path, "worker", "--queues", "maintenance", "--burst")

    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    tail = "; only the server queues server jobs (docs/security.md)"
    for job_id in ("f-unsigned", "f-hostkey", "f-changed", "f-renamed"):
        assert _refused(res.stderr, job_id).endswith(f"not run: not signed by this server's key{tail}")
        assert fetch_job(job_id, redis_conn).get_status(refresh=True) == "failed"
    assert _refused(res.stderr, "f-moved").endswith(f"not run: signed for queue 'io', taken from 'maintenance'{tail}")
    assert "'hoardfs.jobs.ingest.run_batch' is not a hoardfs job" in _refused(res.stderr, "f-old")
    assert not any(cfg.ssd.zone_path("3B").iterdir()), "a backup ran"
    done = fetch_job(legit.id, redis_conn)
    assert done.get_status(refresh=True) == "finished", res.stderr


@pytest.mark.expect_log(r"refused job (r1|r2) on queue maintenance, not run: a copy of job", level="ERROR")
def test_a_copy_of_a_signed_job_runs_only_while_its_job_has_not_run_to_its_end(hoard_home: Path, redis_conn) -> None:
    """A host that queues again the id of a signed job that finished (RQ keeps it a day) has it
    refused in one line and not run again; a copy of one a worker of the server runs now is
    refused too; once that worker is gone without finishing it (the reaper queues such a job
    again), the job runs — once."""
    path = hoard_home / "hoard.toml"
    assert _hoard(path, "init").returncode == 0
    key, named = jobkey.of(config.load(path)), str(path.resolve())
    queue = rq_queue("maintenance", redis_conn, key)
    queue.enqueue("hoardfs.jobs.store_jobs.replicate", named, 60, None, job_id="r1")
    assert _hoard(path, "worker", "--queues", "maintenance", "--burst").returncode == 0
    assert fetch_job("r1", redis_conn).get_status(refresh=True) == "finished"
    assert len(fetch_job("r1", redis_conn).results()) == 1

    redis_conn.hset("rq:job:r1", "status", "queued")  # the host queues the finished job again
    redis_conn.rpush("rq:queue:maintenance", "r1")
    res = _hoard(path, "worker", "--queues", "maintenance", "--burst")
    assert res.returncode == 0, res.stderr
    assert "not run: a copy of job r1, which ran to its end" in _refused(res.stderr, "r1"), res.stderr
    assert len(fetch_job("r1", redis_conn).results()) == 1  # not run again

    r2 = queue.enqueue("hoardfs.jobs.store_jobs.replicate", named, 60, None, job_id="r2")  # a host's copy of it, queued...
    why, held = key.take(fetch_job("r2", redis_conn))  # ...while a worker of this server runs it
    assert why == "" and held is not None
    try:
        res = _hoard(path, "worker", "--queues", "maintenance", "--burst")
        assert "which a worker of this server runs now" in _refused(res.stderr, "r2"), res.stderr
        assert fetch_job("r2", redis_conn).results() == []
    finally:
        os.close(held)  # that worker dies without finishing it
    redis_conn.rpush("rq:queue:maintenance", "r2")  # (as the reaper queues it again)
    res = _hoard(path, "worker", "--queues", "maintenance", "--burst")
    assert res.returncode == 0 and "refused" not in res.stderr, res.stderr
    assert fetch_job(r2.id, redis_conn).get_status(refresh=True) == "finished"
    assert len(fetch_job("r2", redis_conn).results()) == 1


def test_a_key_that_is_not_the_services_alone_is_refused_in_one_line(tmp_path: Path) -> None:
    """The key is made 0600 once, whole; a key others may read, or an empty one, is refused in one
    line saying what to do — by the command that signs and by the worker that checks."""
    key = jobkey.JobKey(tmp_path / "state" / "jobs")
    assert key.secret() is None  # a worker makes none
    made = key.secret(make=True)
    assert made is not None and len(made) == 64 and key.secret(make=True) == made
    assert key.path.stat().st_mode & 0o777 == 0o600 and [p.name for p in key.dir.iterdir()] == ["key"]
    key.path.chmod(0o644)
    with pytest.raises(jobkey.JobKeyError, match=r"has mode 0644: .* `chmod 600 .*key`$"):
        key.secret(make=True)
    key.path.chmod(0o600)
    key.path.write_text("")
    with pytest.raises(jobkey.JobKeyError, match="holds no key .* remove it"):
        key.secret()


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
    for f in [*(repo / "jobs").glob("*.py"), *(repo / "fsd").rglob("*.py"), *(repo / "cli").rglob("*.py"),
              *(repo / "gui").glob("*.py")]:
        named |= set(re.findall(r'"(hoardfs\.jobs\.[a-z_]+\.[a-z_]+)"', f.read_text()))
    enqueued = {n for n in named if n.rsplit(".", 1)[1] in {"run_step", "run_job", "run", "replicate"}}
    assert enqueued and enqueued <= set(JOB_FUNCTIONS), enqueued - set(JOB_FUNCTIONS)
    assert json.loads(SERIALIZER.dumps({"a": [1]})) == {"a": [1]}


@pytest.mark.expect_log(r"Redis at 127.0.0.1:1 takes no password", level="WARNING")
def test_worker_names_a_redis_others_can_write_to(hoard_home: Path, tmp_path: Path) -> None:
    """`hoard worker` warns once, naming the server, when people outside the hoard group can queue
    jobs: a TCP Redis without a password, a socket with mode 0777; not for 0770 or a password."""
    import socket

    from hoardfs.jobs.guard import exposure

    sock = tmp_path / "r.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        os.chmod(sock, 0o777)
        assert "has mode 777: every local user can queue jobs" in exposure(f"unix://{sock}?db=0")
        os.chmod(sock, 0o770)
        assert exposure(f"unix://{sock}?db=0") == ""
    assert exposure("redis://:secret@127.0.0.1:6379/0") == ""
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(hoard_home / "hoard.toml"), "worker", "--burst"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**env, "HOARD_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert res.returncode == 3, res.stderr
    assert res.stderr.count("Redis at 127.0.0.1:1 takes no password: every local user can queue jobs") == 1, res.stderr
