"""Store jobs on a real Redis, run by an in-process SimpleWorker."""

from __future__ import annotations

from pathlib import Path

from rq import Queue, SimpleWorker

from hoardfs.base import config
from hoardfs.fsd.io.replicate import replication_lag
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files


def test_replicate_job(tmp_path: Path, redis_conn) -> None:
    """hoardfs.jobs.store_jobs.replicate brings a copy_of_raw=3 store to target; a second run copies nothing."""
    cfg_path = str(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=3))
    with Store.open(config.load(cfg_path), init=True) as store:
        store.put_many(make_files(tmp_path / "in", 100))
    q = Queue("maintenance", connection=redis_conn)
    first = q.enqueue("hoardfs.jobs.store_jobs.replicate", cfg_path, 60, None)
    second = q.enqueue("hoardfs.jobs.store_jobs.replicate", cfg_path, 60, None, depends_on=first)
    SimpleWorker([q], connection=redis_conn).work(burst=True)
    assert first.get_status(refresh=True) == "finished" and second.get_status(refresh=True) == "finished"
    assert first.return_value()["copied_shards"] > 0
    assert second.return_value()["copied_shards"] == 0
    with Store.open(config.load(cfg_path), writable=False) as store:
        assert replication_lag(store)["shards_below_target"] == 0


def test_job_counts_per_queue_and_state(servers, redis_conn) -> None:
    """hoardfs.jobs.queues.job_counts: every hoardfs queue with every state, a queued and a failed job
    counted where they are (from RQ's registries, as the GUI and /metrics show them)."""
    from rq.job import Job, JobStatus

    from hoardfs.jobs.queues import JOB_STATES, QUEUES, job_counts

    Queue("io", connection=redis_conn).enqueue("builtins.print", "waits")
    failed = Job.create("builtins.print", args=("x",), connection=redis_conn, origin="maintenance")
    failed.save()
    failed.set_status(JobStatus.FAILED)
    Queue("maintenance", connection=redis_conn).failed_job_registry.add(failed, exc_string="boom")
    counts = job_counts(servers["redis_url"])
    assert set(counts) == set(QUEUES) and all(set(c) == set(JOB_STATES) for c in counts.values())
    assert counts["io"]["queued"] == 1 and counts["maintenance"]["failed"] == 1
    assert sum(n for c in counts.values() for n in c.values()) == 2


def test_job_counts_skip_expired_entries_and_change_nothing(servers, redis_conn) -> None:
    """Registry entries past their expiry are not counted as what they were — a failed or a
    finished one is gone, a started one whose worker stopped refreshing it is `abandoned` — and
    counting reads counts only: Redis sees LLEN, ZCARD and ZCOUNT, no job is fetched, no entry
    removed (RQ's registry.count fetched the abandoned job, ran its failure callback and moved
    it to failed from the GUI's snapshot, with a WARNING)."""
    import time

    from rq.executions import Execution
    from rq.job import Job, JobStatus

    from hoardfs.jobs.queues import QUEUES, job_counts

    q = Queue("maintenance", connection=redis_conn)

    def job(status: JobStatus) -> Job:
        j = Job.create("builtins.print", args=("x",), connection=redis_conn, origin=q.name)
        j.save()
        j.set_status(status)
        return j

    for ttl in (1, 3600):  # one expires in a second
        q.failed_job_registry.add(job(JobStatus.FAILED), ttl=ttl, exc_string="boom")
        q.finished_job_registry.add(job(JobStatus.FINISHED), ttl=ttl)
        with redis_conn.pipeline() as p:  # what a worker writes when it starts a job (its heartbeat renews it)
            Execution.create(job(JobStatus.STARTED), ttl=ttl, pipeline=p, worker_name="gone")
            p.execute()
    time.sleep(2.1)  # the short ones expired: nothing renewed the started one (its worker "died")
    keys = [q.failed_job_registry.key, q.finished_job_registry.key, q.started_job_registry.key]
    before = [redis_conn.zcard(k) for k in keys]
    redis_conn.config_resetstat()
    counts = job_counts(servers["redis_url"])
    calls = {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in redis_conn.info("commandstats").items()}
    assert counts["maintenance"] == {"queued": 0, "started": 1, "abandoned": 1, "deferred": 0, "scheduled": 0,
                                     "finished": 1, "failed": 1}, counts
    assert [redis_conn.zcard(k) for k in keys] == before == [2, 2, 2]  # nothing removed or moved
    per_queue = {"llen": 1, "zcard": 2, "zcount": 4}
    assert {c: calls.get(c, 0) for c in per_queue} == {c: n * len(QUEUES) for c, n in per_queue.items()}, calls
    touching = {c: n for c, n in calls.items() if c.startswith(("hget", "hmget", "hexists", "zrange", "zrem", "zadd",
                                                                  "multi", "exec", "get", "mget", "del", "expire"))}
    assert not touching, calls  # no job read, no entry changed


def test_listing_maintenance_runs_changes_no_registry(servers, redis_conn) -> None:
    """hoardfs.jobs.launch.maintenance_runs (the GUI's runs list, each refresh) reads the registries
    without RQ's cleanup: an expired started entry (its worker died) stays for a worker's
    maintenance to fail or retry, expired finished/failed entries are not deleted by a look."""
    import time

    from rq.executions import Execution
    from rq.job import Job, JobStatus

    from hoardfs.jobs.launch import PREFIX, maintenance_runs

    q = Queue("maintenance", connection=redis_conn)

    def job(status: JobStatus) -> Job:
        j = Job.create("builtins.print", args=("x",), connection=redis_conn, origin=q.name,
                       id=f"{PREFIX}{status.value}-{time.monotonic_ns()}")
        j.save()
        j.set_status(status)
        return j

    q.failed_job_registry.add(job(JobStatus.FAILED), ttl=1, exc_string="boom")
    q.finished_job_registry.add(job(JobStatus.FINISHED), ttl=1)
    with redis_conn.pipeline() as p:
        Execution.create(job(JobStatus.STARTED), ttl=1, pipeline=p, worker_name="gone")
        p.execute()
    time.sleep(2.1)
    keys = [q.failed_job_registry.key, q.finished_job_registry.key, q.started_job_registry.key]
    before = [redis_conn.zcard(k) for k in keys]
    runs = maintenance_runs(redis_conn)
    assert [redis_conn.zcard(k) for k in keys] == before == [1, 1, 1]
    # the started job is still what RQ says it is (its failure callback did not run from a look)
    assert "running" in {r.status for r in runs}, runs
    assert not q.failed_job_registry.get_job_ids(cleanup=False) or before[0] == 1
