"""Store jobs on a real Redis, run by an in-process SimpleWorker."""

from __future__ import annotations

from pathlib import Path

from rq import Queue, SimpleWorker

from fsd.base import config
from fsd.replicate import replication_lag
from fsd.store import Store
from tests.conftest import dir_disks_config, make_files


def test_replicate_job(tmp_path: Path, redis_conn) -> None:
    """jobs.store_jobs.replicate brings a copy_of_raw=3 store to target; a second run copies nothing."""
    cfg_path = str(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=3))
    with Store.open(config.load(cfg_path), init=True) as store:
        store.put_many(make_files(tmp_path / "in", 100))
    q = Queue("maintenance", connection=redis_conn)
    first = q.enqueue("jobs.store_jobs.replicate", cfg_path, 60, None)
    second = q.enqueue("jobs.store_jobs.replicate", cfg_path, 60, None, depends_on=first)
    SimpleWorker([q], connection=redis_conn).work(burst=True)
    assert first.get_status(refresh=True) == "finished" and second.get_status(refresh=True) == "finished"
    assert first.return_value()["copied_shards"] > 0
    assert second.return_value()["copied_shards"] == 0
    with Store.open(config.load(cfg_path), writable=False) as store:
        assert replication_lag(store)["shards_below_target"] == 0


def test_job_counts_per_queue_and_state(servers, redis_conn) -> None:
    """jobs.queues.job_counts: every hoardfs queue with every state, a queued and a failed job
    counted where they are (from RQ's registries, as the GUI and /metrics show them)."""
    from rq.job import Job, JobStatus

    from jobs.queues import JOB_STATES, QUEUES, job_counts

    Queue("io", connection=redis_conn).enqueue("builtins.print", "waits")
    failed = Job.create("builtins.print", args=("x",), connection=redis_conn, origin="maintenance")
    failed.save()
    failed.set_status(JobStatus.FAILED)
    Queue("maintenance", connection=redis_conn).failed_job_registry.add(failed, exc_string="boom")
    counts = job_counts(servers["redis_url"])
    assert set(counts) == set(QUEUES) and all(set(c) == set(JOB_STATES) for c in counts.values())
    assert counts["io"]["queued"] == 1 and counts["maintenance"]["failed"] == 1
    assert sum(n for c in counts.values() for n in c.values()) == 2
