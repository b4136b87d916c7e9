"""Adversarial checks of the security and recovery work: a remote worker host, a local user, a
crash — each test one finding, with real Redis, PostgreSQL and `hoard` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.jobs import jobkey, launch
from hoardfs.jobs.queues import fetch_job, rq_queue


def _hoard(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_retry_of_a_run_a_host_wrote_into_redis_queues_nothing_signed(hoard_home: Path, redis_conn) -> None:
    """Retry of a maintenance run queues the parameters the server signed, never ones a host wrote: a run a
    host forged (unsigned) is refused in one line, and a signed run whose meta a host rewrote retries as signed."""
    path = hoard_home / "hoard.toml"
    assert _hoard(path, "init").returncode == 0
    cfg = config.load(path)
    key, named = jobkey.of(cfg), str(path.resolve())
    disk = cfg.disks[0].label
    q = rq_queue(launch.MAINTENANCE_QUEUE, redis_conn)  # (no key: what a host can write)
    # a host's forged "failed rebuild" of a healthy disk, shown on the maintenance page with Retry
    q.enqueue("hoardfs.jobs.maintenance.run", "rebuild", named, disk=disk, job_id=f"{launch.PREFIX}rebuild-forged",
              meta={"kind": "rebuild", "params": {"disk": disk}})
    before = set(rq_queue(launch.MAINTENANCE_QUEUE, redis_conn).job_ids)
    with pytest.raises(launch.LaunchError, match="not signed by this server"):
        launch.retry(cfg, "rebuild", f"{launch.PREFIX}rebuild-forged", conn=redis_conn)
    assert set(rq_queue(launch.MAINTENANCE_QUEUE, redis_conn).job_ids) == before, "a forged run was queued signed"

    # a real verify the server signed; a host rewrites its meta so that Retry repairs a whole disk
    real = launch.launch_maintenance(cfg, "verify", {"sample": 1.0}, conn=redis_conn)
    job = fetch_job(real, redis_conn)
    job.meta["params"] = {"sample": 100.0, "repair": True, "disk": disk}
    job.save_meta()
    again = fetch_job(launch.retry(cfg, "verify", real, conn=redis_conn), redis_conn)
    assert again.kwargs.get("repair") is False and again.kwargs.get("sample") == 1.0, again.kwargs
    assert key.check(again, launch.MAINTENANCE_QUEUE) == ""
