"""The GUI's action run page tells a run as a person reads it: the command to type next, and the
report as lines of text (nested figures as `outer: inner`, sizes and durations in words), never
a dictionary's repr. A real home: PostgreSQL, Redis, `hoard worker --burst` processes, the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from nicegui import run

from hoardfs.jobs import launch
from hoardfs.jobs.actions.state import load_state
from tests.gui_fixtures import BATCH, gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import GATE, worker_contract
from tests.test_gui_actions import WITH_BATCH, _ingested, _work

pytestmark = pytest.mark.timeout(400)


@WITH_BATCH
async def test_run_page_names_the_next_command_and_reads_its_report_as_text(user, gui_home: Path) -> None:
    """At the gate the page names `hoard action release RUN` as next; done, it names none and its
    report reads as text lines — `stage: files`, `run: exit code`, `stage: bytes` in words —
    with no `{'` of a dictionary's repr anywhere on the page."""
    cfg = await _ingested(gui_home)
    worker_contract(cfg, BATCH, type="AC3", gate=GATE.format(timeout=3600))
    sub = await run.io_bound(launch.launch_action, cfg, "thumbs", None, None, [], "otto")
    rid = sub.state.run_id
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "WAIT_GPU_READY"

    await sign_in(user, "otto")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-next", retries=50)
    await user.should_see(f"next: `hoard action release {rid}`")
    user.find(marker="run-release").click()
    await user.should_see(f"run {rid}: gate released", retries=50)
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "done"

    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-report", retries=50)
    for line in ("stage: files", "stage: bytes", "run: exit code", "run: took", "children stored", "gate"):
        await user.should_see(line)
    await user.should_not_see(marker="run-next")
    await user.should_not_see("{'")
    await user.should_not_see("': ")
