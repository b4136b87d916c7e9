"""Live progress of maintenance jobs: the hook only stores figures, a daemon thread publishes
them (Redis for the GUI, a bar or a line per 10 % for the CLI), the last figures always land
and a stalled Redis never slows the job — a real store, a real `hoard worker`, real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from nicegui import run

from hoardfs.base import config
from hoardfs.base.progress import Progress, published
from hoardfs.fsd.maintenance.deletion import release
from hoardfs.fsd.maintenance.rebuild import rebuild
from hoardfs.fsd.store import Store
from hoardfs.jobs import launch
from hoardfs.jobs.ingest import work_here
from hoardfs.jobs.progress import KEY
from hoardfs.jobs.queues import fetch_job
from hoardfs.sql.migrate import migrate
from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import dir_disks_config, make_files, use_schema
from tests.test_cli import hoard
from tests.test_gui_runs import (
    _work,  # a real `hoard worker --burst` (RQ's forking Worker: the job runs in a work horse)
)

pytestmark = pytest.mark.timeout(300)

#: bytes each replicate run copies (new shards of 4 MB below copy_of_raw = 3)
MB = 48
#: the replicate jobs' rate limit: MB / RATE ≈ 4 s of copying, long enough to watch
RATE = 12


def test_the_hook_never_waits_for_a_stuck_sink() -> None:
    """A sink that never returns (a Redis that stopped answering) costs the job nothing: a
    million updates take what they take without one, and the job's end does not wait for it."""
    def job(update) -> float:
        t0 = time.monotonic()
        for i in range(1_000_000):
            update(i, 1_000_000)
        return time.monotonic() - t0

    alone = job(Progress("alone").update)
    stuck = threading.Event()
    t0 = time.monotonic()
    with published(Progress("stuck"), lambda s: stuck.wait(60), every_s=0.01) as p:
        took = job(p.update)
    ended = time.monotonic() - t0
    stuck.set()
    assert took < alone * 3 + 0.5, (took, alone)
    assert ended < took + 0.2, (ended, took)  # no wait for the stuck sink at the end


def test_the_last_figures_always_land() -> None:
    """Updates between two publications are not lost at the end: the sink gets the final
    figures (state done, done == total) though the throttle would have skipped them; a block
    that raises ends them as failed."""
    seen = []
    with published(Progress("copy"), seen.append, every_s=30) as p:  # nothing is published on the way
        for i in range(1, 11):
            p.update(i * 100, 1000)
    assert [(s.done, s.total, s.state) for s in seen] == [(1000, 1000, "done")]
    assert seen[-1].fraction == 1.0 and seen[-1].eta_s == 0.0
    failed = []
    with pytest.raises(RuntimeError), published(Progress("copy"), failed.append, every_s=30) as p:
        p.update(5, 10)
        raise RuntimeError("disk gone")
    assert [(s.done, s.state) for s in failed] == [(5, "failed")]


def _home(hoard_home: Path) -> Path:
    cfg_path = hoard_home / "hoard.toml"
    cfg_path.write_text(cfg_path.read_text().replace("[store]\n", "[store]\ncopy_of_raw = 3\n"))
    assert hoard("--config", str(cfg_path), "init").returncode == 0
    return cfg_path


def _fill(cfg_path: Path, seed: int) -> None:
    """MB of new raw objects: 2 replicas each (write_ack), one short of copy_of_raw."""
    with Store.open(config.load(cfg_path)) as store:
        store.put_many(make_files(cfg_path.parent / f"in{seed}", MB // 2, seed=seed, lo=2 << 20, hi=(2 << 20) + 1))


class Watcher(threading.Thread):
    """Reads the job's progress key every 20 ms (GET only: a Redis paused for writes still answers)."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.conn = redis.Redis.from_url(url)
        self.key, self.seen, self.stop = KEY.format(job_id), [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            raw = self.conn.get(self.key)
            if raw is not None and (not self.seen or json.loads(raw) != self.seen[-1][1]):
                self.seen.append((time.monotonic(), json.loads(raw)))

    def mid_run(self) -> list[dict]:
        return [p for _, p in self.seen if p["state"] == "running" and 0 < p["done"] < p["total"]]


def _job_seconds(redis_conn, job_id: str) -> float:
    job = fetch_job(job_id, redis_conn)
    assert job.get_status() == "finished", job.get_status()
    return (job.ended_at - job.started_at).total_seconds()


def test_a_worker_publishes_progress_while_it_replicates(hoard_home: Path, redis_conn) -> None:
    """A replicate job run by a real worker on a real store publishes its figures while it
    copies (done < total seen, with a rate and an ETA), and its last figures (done == total,
    state done) outlive the job; the runs list carries them."""
    cfg_path = _home(hoard_home)
    _fill(cfg_path, seed=1)
    cfg = config.load(cfg_path)
    job_id = launch.launch_maintenance(cfg, "replicate", {"rate_mb_s": RATE}, by="test")
    watcher = Watcher(cfg.redis_url, job_id)
    watcher.start()
    _work(cfg_path)
    time.sleep(0.1)
    watcher.stop.set()
    watcher.join()
    mid = watcher.mid_run()
    assert mid, watcher.seen
    assert all(p["rate"] > 0 and p["eta_s"] is not None for p in mid), mid
    assert len(mid) >= 2, "published about once a second over ~4 s of copying"
    final = json.loads(redis_conn.get(KEY.format(job_id)))
    assert final["state"] == "done" and final["done"] == final["total"], final
    assert MB << 20 < final["total"] < (MB + 1) << 20, final  # the shards: the objects and their framing
    assert 0 < redis_conn.ttl(KEY.format(job_id)) <= 7 * 86400
    [r] = [r for r in launch.runs(cfg) if r.id == job_id]
    assert r.status == "done" and r.progress == final


#: how long the stalled-Redis test keeps Redis from taking writes (ms)
PAUSE_MS = 5000


def test_a_stalled_redis_does_not_slow_the_job(hoard_home: Path, redis_conn) -> None:
    """Redis paused for writes (CLIENT PAUSE 5000 WRITE) in the middle of a replicate job: no
    figure lands meanwhile, yet the job goes on copying through the pause (its first figures
    after it are shards further on), and it takes no longer than the same job with Redis
    answering, give or take less than half the pause (a hook that waited for Redis would add
    the whole pause; the margin is for the machine's own noise)."""
    cfg_path = _home(hoard_home)
    cfg = config.load(cfg_path)
    rate = RATE / 2  # ~8 s of copying: the 5 s pause falls inside it
    took = {}
    for run_, pause in (("baseline", False), ("paused", True)):
        _fill(cfg_path, seed={"baseline": 2, "paused": 3}[run_])
        job_id = launch.launch_maintenance(cfg, "replicate", {"rate_mb_s": rate}, by="test")
        watcher = Watcher(cfg.redis_url, job_id)
        watcher.start()
        paused: list[float] = []

        def pauser(watcher: Watcher = watcher, paused: list[float] = paused) -> None:
            deadline = time.monotonic() + 60
            while not watcher.mid_run() and time.monotonic() < deadline:
                time.sleep(0.01)
            redis_conn.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
            paused.append(time.monotonic())

        if pause:
            t = threading.Thread(target=pauser, daemon=True)
            t.start()
        _work(cfg_path)
        watcher.stop.set()
        watcher.join()
        took[run_] = _job_seconds(redis_conn, job_id)
        if pause:
            t.join()
            assert paused, "the job published nothing to pause against"
            start, end = paused[0], paused[0] + PAUSE_MS / 1000
            assert [at for at, _ in watcher.seen if start + 0.05 < at < end - 0.1] == [], \
                "a figure landed while Redis refused writes: the pause did not bite"
            before = max(p["done"] for at, p in watcher.seen if at <= start)
            after = min((p["done"] for at, p in watcher.seen if at >= end), default=None)
            assert after is not None and after - before >= 2 * (4 << 20), (before, after, watcher.seen)
    assert took["paused"] < took["baseline"] + PAUSE_MS / 2000, took
    assert took["baseline"] > MB / rate * 0.8, took  # the rate limit made it long enough to pause in


def _tty_run(args: list[str]) -> str:
    """Run `hoard` with stderr on a pseudo-terminal; what it drew there."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"} | {"TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, out[-2000:]
    return out.decode(errors="replace")


def test_cli_shows_a_line_per_ten_percent_or_a_bar(hoard_home: Path) -> None:
    """`hoard replicate` without a terminal: one plain line at each further 10 % (never two for
    one step), the last saying 100 % and finished; on a terminal: rich's bar with the rate."""
    cfg_path = _home(hoard_home)
    _fill(cfg_path, seed=4)
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "replicate", "--rate-mb-s",
                          str(RATE)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("replicating: ")]
    steps = [int(ln.split("(")[1].split("%")[0]) // 10 for ln in lines]
    assert len(lines) >= 3 and steps == sorted(set(steps)), res.stderr  # rising, one line per step
    assert "of 48.0 MiB" in lines[0] and "MiB/s" in lines[0] and "s left" in lines[0], lines
    assert lines[-1].startswith("replicating: 48.0 MiB of 48.0 MiB (100%") and lines[-1].endswith("finished)"), lines
    _fill(cfg_path, seed=5)
    drawn = _tty_run(["--config", str(cfg_path), "replicate", "--rate-mb-s", str(RATE)])
    assert "replicating" in drawn and "MiB/s" in drawn and "━" in drawn, drawn[-1500:]


def _texts(user, marker: str) -> list[str]:
    try:
        return [e.text for e in user.find(marker=marker).elements]
    except AssertionError:  # none on the page
        return []


async def test_run_page_and_storage_show_progress_while_it_runs(user, gui_home: Path, redis_conn) -> None:
    """While a replicate job runs in a real worker, its run page shows the figures (with an ETA)
    and so does /storage (from the snapshot); after it, the run page keeps the final figures.
    (Each page is opened once while the job runs: every open run page polls the job.)"""
    from hoardfs.gui.context import ctx
    from hoardfs.gui.state import STORE_LOCK

    cfg_path = gui_home
    cfg_path.write_text(cfg_path.read_text().replace("[store]\n", "[store]\ncopy_of_raw = 3\n"))
    ctx().cache.cfg = config.load(cfg_path)
    with STORE_LOCK:  # the app's background refresh opens the store too: one at a time
        _fill(cfg_path, seed=6)
    job_id = launch.launch_maintenance(config.load(cfg_path), "replicate", {"rate_mb_s": RATE / 3}, by="otto")
    await sign_in(user, "vera")
    watcher = Watcher(ctx().cfg.redis_url, job_id)
    watcher.start()
    working = asyncio.ensure_future(run.io_bound(_work, cfg_path))
    try:
        for _ in range(600):
            if watcher.mid_run() or working.done():
                break
            await asyncio.sleep(0.05)
        await user.open(f"/runs/replicate/{job_id}")
        await user.should_see(marker="run-status")  # the page renders after its io_bound reads
        on_run_page = _texts(user, "run-progress")
        await run.io_bound(ctx().cache.refresh)  # what the background timer does every gui.refresh_s
        await user.open("/storage")
        on_storage = _texts(user, "progress-replicate")
        still_running = not working.done()
    finally:
        await working
        watcher.stop.set()
    assert still_running, "the job ended before the pages were read: make it slower"
    assert any("bytes copied:" in t and " of 48.0 MiB" in t and "s left" in t for t in on_run_page), on_run_page
    assert any(" of 48.0 MiB" in t and "s left" in t for t in on_storage), on_storage
    await user.open(f"/runs/replicate/{job_id}")
    await user.should_see("bytes copied: 48.0 MiB of 48.0 MiB (100%)")
    await user.should_see("finished after")


def test_rebuild_reports_every_shard_it_deals_with(tmp_path: Path) -> None:
    """A rebuild whose lost disk shares shards with another missing disk cannot copy those
    (no healthy replica left): their bytes are dealt with too, so the last figures are total
    of total (they were left out, and such a rebuild ended "below 100 %")."""
    cfg_path = dir_disks_config(tmp_path, 4, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        store.put_many(make_files(tmp_path / "in", 200))
        label = {u: r.label for u, r in store.records.items()}
        d0 = next(u for u, name in label.items() if name == "d0")
        on_d0 = [m for m in store.index.iter_shards() if d0 in m.replicas and m.sealed]
        partners = Counter(u for m in on_d0 for u in m.replicas if u != d0)
        other = partners.most_common(1)[0][0]  # the disk sharing most of d0's shards
        both = [m for m in on_d0 if other in m.replicas]
    shutil.rmtree(tmp_path / label[other])  # gone too: the shards d0 shared with it have no source left
    shutil.rmtree(tmp_path / "d0")  # (d0 itself gone: a lost disk still attached is read as the last resort)
    calls = []
    with Store.open(config.load(cfg_path)) as store:
        rep = rebuild(store, "d0", progress=lambda done, total: calls.append((done, total)))
    total = sum(m.size for m in on_d0)
    assert len(rep.lost) == len(both) and calls and calls[-1] == (total, total), (rep.lost, calls[-3:], total)


def test_verify_and_gc_jobs_end_with_their_last_figures(hoard_home: Path, pg, redis_conn) -> None:
    """The other streaming jobs publish through the same path (hoardfs's in-process worker):
    a verify job and a gc job that compacts shards each leave done == total > 0, state done."""
    cfg_path = Path(use_schema(hoard_home, pg))
    assert hoard("--config", str(cfg_path), "init").returncode == 0
    migrate(pg)
    cfg = config.load(cfg_path)
    with Store.open(cfg) as store:
        results = store.put_many(make_files(hoard_home / "in", 60, lo=100_000, hi=200_000))
        release(store, [bytes.fromhex(r.sha256) for r in results[::2]], "test")  # half of each shard is dead
    ids = [launch.launch_maintenance(cfg, "verify", {"sha256": True}),
           launch.launch_maintenance(cfg, "gc", {"threshold": 0.9})]
    work_here(cfg, redis_conn)  # hoardfs's own in-process worker (hoardfs.jobs.guard: JSON jobs)
    for job_id, what in zip(ids, ("bytes checked", "live bytes copied"), strict=True):
        final = json.loads(redis_conn.get(KEY.format(job_id)))
        assert final["what"] == what and final["state"] == "done", final
        assert final["done"] == final["total"] > 0, final


@pytest.mark.expect_log(r"Work-horse terminated unexpectedly", level="WARNING")
@pytest.mark.expect_log(r"Work horse killed for job", level="WARNING", optional=True)
def test_a_killed_job_shows_no_live_figures(hoard_home: Path, redis_conn) -> None:
    """The work horse of a replicate job killed (kill -9, the OOM killer) mid-copy: RQ marks
    the run failed, and its last figures — state running, with a rate and an ETA — must not be
    shown beside it as if it still copied (they lived on for RUNNING_TTL_S, 2 minutes)."""
    cfg_path = _home(hoard_home)
    _fill(cfg_path, seed=7)
    cfg = config.load(cfg_path)
    job_id = launch.launch_maintenance(cfg, "replicate", {"rate_mb_s": RATE / 2}, by="test")
    watcher = Watcher(cfg.redis_url, job_id)
    watcher.start()
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    worker = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while not watcher.mid_run() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.mid_run(), watcher.seen
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        assert len(children) == 1, children  # RQ's work horse, running the job
        os.kill(int(children[0]), 9)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        watcher.stop.set()
    [r] = [r for r in launch.runs(cfg) if r.id == job_id]
    assert r.status == "failed", r
    assert redis_conn.exists(KEY.format(job_id))  # the dead publisher's last write, still there
    assert r.progress is None or r.progress["state"] != "running", r.progress
