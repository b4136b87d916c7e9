"""`hoard gui` slice 3, the scheduler: launch forms (ingest, stage/export, maintenance from the
jobs' typed parameters, validated before anything is queued), the runs list with its filters
and the failed view, the run page (steps, report with each rejected file and its reason,
traceback, why it waits), retry and cancel — real RQ (SimpleWorker in burst), PostgreSQL, store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nicegui import run, ui
from rq import Queue

from hoardfs.jobs import launch
from tests.gui_fixtures import BATCH, gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)


def _work(cfg_path: Path) -> None:
    """`hoard worker --burst`: a real worker process runs what is queued, then quits."""
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr


async def _refreshed() -> None:
    from hoardfs.gui.context import ctx

    await run.io_bound(ctx().cache.refresh)


def _cfg(gui_home: Path):
    from hoardfs.base import config

    return config.load(gui_home)


WITH_BATCH = pytest.mark.parametrize("gui_home", [{"_batch": True}], indirect=True)


@WITH_BATCH
async def test_the_run_page_of_a_deleted_batch_says_it_was_deleted(user, gui_home: Path) -> None:
    """After `hoard delete --batch B`, `/runs/ingest/B` showed the ingest as done and
    nothing more (health, `ingest --status` and the batch list said it was deleted)."""
    from hoardfs.gui.context import ctx

    launch.launch_ingest(ctx().cfg, BATCH, None)
    await run.io_bound(_work, gui_home)
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(gui_home), "delete", "--batch", BATCH, "--yes"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    await _refreshed()
    await sign_in(user, "otto")
    await user.open(f"/runs/ingest/{BATCH}")
    await user.should_see(marker="run-deleted")
    await user.should_see("batch deleted")


@WITH_BATCH
async def test_operator_launches_an_ingest_and_watches_it(user, gui_home: Path) -> None:
    """Launch → the run page says it waits (no worker on its queue) → a worker runs it →
    done with rejects: counts, the rejected file with its reason, a step timeline."""
    batch_id = BATCH
    await sign_in(user, "otto")
    await user.open("/launch")
    await user.should_see(batch_id)
    user.find(marker="launch-ingest").click()
    await user.should_see("waits on the ingest queue, which no worker serves", retries=50)
    await run.io_bound(_work, gui_home)
    await _refreshed()  # what the background timer does every gui.refresh_s
    await user.open(f"/runs/ingest/{batch_id}")
    await user.should_see("done with rejects")
    for text in ("maintenance: ingest gallery-s3-b000: finish", "started 20", "ended 20", "files accepted", "took ",
                 "2 rejected files", "broken.png.json", "scan: done", "finish: done", "(queue maintenance)"):
        await user.should_see(text)
    await user.open("/runs?kind=ingest")
    await user.should_see(batch_id)
    await user.open("/runs?kind=export")
    await user.should_see("0 runs")
    await user.open("/runs?status=done%20with%20rejects&source=gallery")
    await user.should_see(batch_id)
    await user.open("/runs?since=2000-01-01&until=2000-01-02")
    await user.should_see("0 runs")


@WITH_BATCH
async def test_a_viewer_cannot_launch_retry_or_cancel(user) -> None:
    await sign_in(user, "vera")
    await user.open("/launch")
    await user.should_see("you can look at the forms but not launch")
    await user.should_not_see(marker="launch-ingest")
    await user.should_not_see(marker="launch-replicate")
    from hoardfs.gui.context import ctx
    from hoardfs.jobs import launch

    launch.launch_ingest(ctx().cfg, BATCH, None)
    await user.open(f"/runs/ingest/{BATCH}")
    await user.should_see("queued")
    await user.should_not_see(marker="run-retry")
    await user.should_not_see(marker="run-cancel")


async def test_maintenance_forms_validate_before_queueing(user, gui_home: Path) -> None:
    """A bad value is refused by name and nothing reaches the queue; a good one queues a job
    whose run page shows its parameters; a worker runs it to done."""
    import redis

    await sign_in(user, "otto")
    await user.open("/launch")
    user.find(marker="verify-sample").type("500")
    user.find(marker="launch-verify").click()
    await user.should_see("verify: sample: Input should be less than or equal to 100", retries=30)
    user.find(marker="launch-rebuild").click()
    await user.should_see("rebuild: disk: Field required", retries=30)
    user.find(marker="rebuild-disk").type("nosuch")
    user.find(marker="launch-rebuild").click()
    await user.should_see("rebuild: disk: no disk 'nosuch' in hoard.toml", retries=30)
    conn = redis.Redis.from_url(_cfg(gui_home).redis_url)
    assert Queue("maintenance", connection=conn).count == 0
    cfg = _cfg(gui_home)
    first = cfg.disks[0].label
    for kind, params, why in (("verify", {"disk": "<img src=x onerror=alert(1)>"}, "verify: disk: no disk"),
                              ("rebuild", {"disk": first, "onto": "nosuch"}, "rebuild: onto: no disk 'nosuch'"),
                              ("rebuild", {"disk": first, "onto": first}, "cannot be rebuilt onto itself")):
        with pytest.raises(launch.LaunchError, match=why):  # what the form calls: no free text reaches a job
            launch.launch_maintenance(cfg, kind, params, conn=conn)
    assert Queue("maintenance", connection=conn).count == 0
    user.find(marker="replicate-budget_s").clear().type("30")
    user.find(marker="launch-replicate").click()
    await user.should_see("budget_s=30", retries=50)
    assert Queue("maintenance", connection=conn).count == 1
    await run.io_bound(_work, gui_home)
    await _refreshed()
    await user.open("/runs?kind=replicate")
    await user.should_see("1 runs")
    await user.should_see("done")
    await user.open("/storage")  # the last maintenance run of each kind
    await user.should_see("replicate: done")
    await user.should_see("gc: none from here")


async def test_cancel_and_retry_a_maintenance_run(user, gui_home: Path) -> None:
    from hoardfs.gui.context import ctx
    from hoardfs.jobs import launch

    job_id = launch.launch_maintenance(ctx().cfg, "verify", {"sample": 50}, "otto")
    await sign_in(user, "otto")
    await user.open(f"/runs/verify/{job_id}")
    await user.should_see("no worker serves the maintenance queue")
    user.find(marker="run-cancel").click()
    await user.should_see("taken off its queue", retries=30)
    await user.should_see("canceled", retries=50)
    user.find(marker="run-retry").click()
    await user.should_see(kind=ui.badge, content="queued", retries=50)  # the new run's page
    await user.should_see("sample=50.0")
    await run.io_bound(ctx().cache.refresh)
    runs = [r for r in ctx().cache.snapshot.runs if r.kind == "verify"]
    assert sorted(r.status for r in runs) == ["canceled", "queued"]


@WITH_BATCH
# `hoard worker` logs a job ending on a condition in one line (hoardfs.jobs.queues.HoardWorker); the
# traceback stays in RQ's failed registry, which the run page shows
@pytest.mark.expect_log(r"\(ingest [^)]*: scan\) failed: batch directory .* is gone", level="ERROR")
async def test_failed_ingest_shows_its_traceback_and_the_failed_view(user) -> None:
    """A batch that fails (its directory vanished before the scan) is in the failed view with
    its error and its job's traceback; a later success of another run does not hide it."""
    import shutil

    from hoardfs.gui.context import ctx
    from hoardfs.jobs import launch

    batch_id = BATCH
    cfg = ctx().cfg
    launch.launch_ingest(cfg, batch_id, None)
    shutil.rmtree(cfg.ssd.zone_path("3A") / batch_id)
    await run.io_bound(_work, cfg.source)
    await run.io_bound(ctx().cache.refresh)
    await sign_in(user, "otto")
    await user.open("/runs?view=failed")
    await user.should_see(batch_id)
    await user.open(f"/runs/ingest/{batch_id}")
    await user.should_see("failed")
    await user.should_see("is gone")
    await user.should_see("Traceback (of its last job)")
    await user.should_see(f"batch {batch_id} failed at scan")  # the banner


async def test_export_form_refuses_a_bad_request(user) -> None:
    """The selector starts empty and an empty one is refused (it would select every node); a
    bad id, bad JSON, an unknown key and a selection of no node are each refused in one line
    before anything is queued."""
    from hoardfs.gui.context import ctx
    from hoardfs.jobs import launch

    await sign_in(user, "otto")
    await user.open("/launch")
    assert user.find(marker="output-selector").elements.pop().value == ""
    user.find(marker="output-id").type("bad id with spaces")
    user.find(marker="launch-output").click()
    await user.should_see("write a selector (docs/selectors.md)", retries=30)
    for text in ('{"sources": []}', "{}"):
        user.find(marker="output-selector").clear().type(text)
        user.find(marker="launch-output").click()
        await user.should_see("an empty one would select every node", retries=30)
    user.find(marker="output-selector").clear().type('{"batches": ["no-such-batch"]}')
    user.find(marker="launch-output").click()
    await user.should_see("output id 'bad id with spaces': 1-128 of", retries=30)
    user.find(marker="output-id").clear().type("ok-id")
    user.find(marker="launch-output").click()
    await user.should_see("the selector selects no node; nothing was queued", retries=30)
    user.find(marker="output-selector").clear().type('{"colour": ["red"]}')
    user.find(marker="launch-output").click()
    await user.should_see("selector rejected", retries=30)
    user.find(marker="output-selector").clear().type("{not json")
    user.find(marker="launch-output").click()
    await user.should_see("the selector is not JSON", retries=30)
    assert [r.id for r in launch.runs(ctx().cfg) if r.id in ("ok-id", "bad id with spaces")] == []


async def test_runs_list_pages_on_the_server(user) -> None:
    """60 maintenance runs: 25 a page, links to the next and previous pages."""
    from hoardfs.gui.context import ctx
    from hoardfs.jobs import launch

    for _ in range(60):
        launch.launch_maintenance(ctx().cfg, "replicate", {}, "otto")
    await run.io_bound(ctx().cache.refresh)
    await sign_in(user, "vera")
    await user.open("/runs")
    await user.should_see("60 runs, page 1 of 3")
    await user.should_see("older →")
    await user.open("/runs?page=3")
    await user.should_see("60 runs, page 3 of 3")
    await user.should_see("← newer")
    assert len(user.find(kind=ui.link, content="maint-replicate").elements) == 10


def test_an_output_recorded_while_redis_was_down_says_so(gui_home: Path, redis_conn) -> None:
    """Launched while Redis did not answer, an export is recorded but not queued: the launch
    says Redis in one line, and its run page says why it waits, not "no worker"."""
    from hoardfs.base import config
    from hoardfs.base.errors import HoardError
    from hoardfs.jobs import outputs

    cfg = config.load(gui_home)
    down = cfg.model_copy(update={"redis_url": "unix:///nonexistent/redis.sock?db=0"})
    with pytest.raises(HoardError, match=r"Redis at unix:///nonexistent/redis.sock\?db=0 does not answer"):
        launch.launch_output(down, "export", "rd1", "by_sha256", {"sources": ["gallery"]})
    assert outputs.load_state(cfg, "rd1").status == "queued"
    why = launch.why_waiting(cfg, "export", "rd1", "queued", redis_conn)
    assert any("recorded but not on the io queue" in r for r in why), why


@pytest.mark.expect_log(r"disk \w+: verify error on shard \w+: payload checksum mismatch", level="WARNING")
@pytest.mark.expect_log(r"\(verify [^)]*\) failed: 1 bad replicas remain", level="ERROR")
def test_a_run_keeps_its_own_log(gui_home: Path, redis_conn) -> None:
    """What a run logs while a worker runs it (a verify meeting a flipped bit) is kept as that
    run's log, which its page shows — warnings and errors first when it failed."""
    from hoardfs.base import config
    from hoardfs.fsd.store import Store
    from hoardfs.jobs import runlog
    from tests.helpers import make_files

    cfg = config.load(gui_home)
    with Store.open(cfg) as store:
        store.put_many(make_files(gui_home.parent / "in", 30))
    victim = sorted(Path(cfg.disks[0].path).glob("shards/*/*.shard")) or sorted(
        p for d in cfg.disks for p in Path(d.path).glob("shards/*/*.shard"))
    raw = bytearray(victim[0].read_bytes())
    raw[len(raw) // 3] ^= 0x10
    victim[0].write_bytes(raw)
    job_id = launch.launch_maintenance(cfg, "verify", {}, "otto", redis_conn)
    _work(gui_home)
    d = launch.detail(cfg, "verify", job_id, redis_conn)
    assert d["status"] == "failed", d["status"]
    assert d["log"] and d["log"][0]["level"] == "WARNING" and "payload checksum mismatch" in d["log"][0]["message"]
    assert runlog.path(cfg, "verify", job_id).exists()


def test_retry_needs_a_run_to_retry(gui_home: Path, redis_conn) -> None:
    """Retrying an export nobody launched (or one of the other kind) queues nothing."""
    from hoardfs.base import config

    cfg = config.load(gui_home)
    for kind in ("export", "stage"):
        with pytest.raises(launch.LaunchError, match=f"no {kind} 'nope' to retry"):
            launch.retry(cfg, kind, "nope", "otto", redis_conn)
    assert Queue("io", connection=redis_conn).count == 0


@pytest.mark.parametrize("gui_home", [{"refresh_s": 2}], indirect=True)
async def test_pages_end_quietly_while_the_app_stops(user) -> None:
    """While the app stops, NiceGUI's thread pool runs nothing (run.io_bound answers None
    without running the call): each page waiting on such a call ends quietly with what it built
    — never reading that None as an answer (the node page read it as the node) — a run page's
    refresh timer stops without an error, and hoardfs.gui.context.in_thread tells that None from a
    None the function returned."""
    import asyncio

    from hoardfs.gui.context import ctx

    job_id = launch.launch_maintenance(ctx().cfg, "verify", {}, "otto")
    await sign_in(user, "otto")
    await user.open(f"/runs/verify/{job_id}")
    await user.should_see("no worker serves the maintenance queue")
    run.thread_pool.shutdown(wait=True)  # as the app's stop leaves it: "cannot schedule new futures"
    try:
        for path in (f"/node/{'a' * 64}", "/batches", "/assets", "/storage", "/pipelines", f"/runs/verify/{job_id}",
                     "/actions", "/actions/thumbnail"):
            await user.open(path)  # a 200 page, no error logged: a TypeError on the None was a 500 and an error
        await asyncio.sleep(2.5)  # the run page's refresh timer (every 2 s) meets the stopped pool

        from hoardfs.gui.context import AppStopping, in_thread

        with pytest.raises(AppStopping):
            await in_thread(len, "abc")
    finally:
        run.reset()
    assert await in_thread(len, "abc") == 3 and await in_thread(dict.get, {}, "x") is None


def _two_holders_failed(cfg) -> None:
    """Files put, then both disks holding one shard failed and unplugged (a failed disk still
    attached is read as the last resort): that shard has no readable replica, so a replicate run
    ends with errors (a real report, not a made-up one)."""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.store import Store
    from tests.helpers import make_files

    with Store.open(cfg) as store:
        store.put_many(make_files(Path(cfg.source).parent / "in", 30))
    with Store.open(cfg) as store:
        pair = next(sorted(store.records[u].label for u in m.replicas) for m in store.index.iter_shards()
                    if len(m.replicas) == 2)
        for label in pair:
            store.set_disk_state(label, DiskState.FAILED, "I/O error during read (test)")
    for d in cfg.disks:
        if d.label in pair:
            d.path.rename(d.path.with_name(d.path.name + ".away"))
            d.path.mkdir()  # (the empty mount point it leaves)


@pytest.mark.expect_log(r"shard \w+ has no readable replica to copy from", level="WARNING")
async def test_a_run_whose_report_has_errors_is_not_green_and_a_done_run_offers_no_cancel(user, gui_home: Path) -> None:
    """A replicate whose report says errors 1 was a green "done" with raw keys
    (`intent_was_applied_before False`, `quarantine None`) and Retry/Cancel; now it is "done
    with errors", its report labelled figures with its duration, and it offers neither."""
    from hoardfs.gui.context import ctx

    cfg = ctx().cfg
    # in a child process: the GUI in this process opens the index in its background refresh,
    # and LMDB refuses a second open of one environment in one process
    code = ("import sys; from hoardfs.base import config; from tests.test_gui_runs import _two_holders_failed; "
            "_two_holders_failed(config.load(sys.argv[1]))")
    res = subprocess.run([sys.executable, "-c", code, str(gui_home)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    job_id = launch.launch_maintenance(cfg, "replicate", {}, "otto")
    await run.io_bound(_work, gui_home)
    await _refreshed()
    await sign_in(user, "otto")
    await user.open(f"/runs/replicate/{job_id}")
    await user.should_see(kind=ui.badge, content="done with errors")
    await user.should_see("copied shards")  # a label, not the key copied_shards
    await user.should_not_see("copied_shards")
    await user.should_see(marker="run-took")
    await user.should_not_see(marker="run-cancel")
    await user.should_not_see(marker="run-retry")
    runs = [r for r in ctx().cache.snapshot.runs if r.id == job_id]
    assert [r.status for r in runs] == ["done with errors"] and runs[0].seconds is not None, runs
    await user.open("/runs?status=done%20with%20errors")
    await user.should_see(job_id)


async def test_a_done_run_offers_no_retry_or_cancel_and_shows_its_duration(user, gui_home: Path) -> None:
    """A run that ended well offers no Cancel (nothing waits or runs) and no Retry."""
    from hoardfs.gui.context import ctx

    job_id = launch.launch_maintenance(ctx().cfg, "replicate", {}, "otto")
    await run.io_bound(_work, gui_home)
    await _refreshed()
    await sign_in(user, "otto")
    await user.open(f"/runs/replicate/{job_id}")
    await user.should_see(kind=ui.badge, content="done")
    await user.should_see("took ")
    await user.should_not_see(marker="run-cancel")
    await user.should_not_see(marker="run-retry")


async def test_a_maintenance_url_naming_another_job_says_so(user, gui_home: Path, redis_conn) -> None:
    """`/runs/replicate/<an id not starting with maint->` (another run's job) raised
    StopIteration in hoardfs.jobs.launch.detail and the page hung; now one line says there is no such run."""
    from hoardfs.gui.context import ctx

    cfg = ctx().cfg
    launch.launch_output(cfg, "export", "other1", "by_sha256", {"sources": ["gallery"]}, conn=redis_conn)
    with pytest.raises(launch.LaunchError, match="no replicate run 'export-other1'"):
        launch.detail(cfg, "replicate", "export-other1", redis_conn)
    await sign_in(user, "otto")
    await user.open("/runs/replicate/export-other1")
    await user.should_see("no replicate run 'export-other1'")


@pytest.mark.expect_log(r"shard \w+ has no readable replica to copy from", level="WARNING")
def test_replicate_exit_4_is_documented_and_says_what_to_do(gui_home: Path) -> None:
    """`hoard replicate` exited 4 (not in the README's table for it) with only raw
    WARNING lines; now 4 is the README's "shards remain below their target" and a line names
    the next step."""
    from hoardfs.base import config

    cfg = config.load(gui_home)
    _two_holders_failed(cfg)
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(gui_home), "replicate"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "could not be copied" in res.stderr and "`hoard health`" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| 4 |"))
    assert "`hoard replicate`" in row, row


def test_a_report_reads_as_labelled_figures() -> None:
    """The report keys the run page showed raw (`intent_was_applied_before False`,
    `quarantine None`) read as labels and words; sizes and times carry their units."""
    from hoardfs.jobs import reports

    shown = dict(reports.figures({"files_accepted": 120, "quarantine": None, "bytes_new": 3 << 20,
                                  "database": {"intent_was_applied_before": False}, "seconds": 75.2,
                                  "mib_s": 41.5, "rejected": [{"path": "a", "reason": "b"}]}))
    assert shown == {"files accepted": "120", "bytes new": "3.0 MiB (3,145,728 bytes)",
                     "database: intent was applied before": "no", "took": "1 min 15 s", "rate": "41.5 MiB/s"}
    assert reports.errors({"errors": 1}) == 1 and reports.errors({"errors": []}) == 0 and reports.errors(None) == 0
