"""`hoard gui`'s Actions pages: every contract (the actions directory's, the
built-ins, a bad file with its first problem), runs newest first, one contract described with
its launch form typed from its `params`, an action run's page (`/runs/action/RUN`: steps, the
error line, Release at the GPU gate, Cancel, children linking to their node pages, logs) —
on a real home: PostgreSQL, Redis, `hoard worker --burst` processes, the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis
from nicegui import run, ui

from hoardfs.gui.context import ctx
from hoardfs.jobs import launch
from hoardfs.jobs.actions import api as actions_api
from hoardfs.jobs.actions.state import load_state, read_work
from tests.gui_fixtures import BATCH, gui_home, sign_in, sign_out, user  # noqa: F401 - fixtures
from tests.helpers import GATE, worker_contract, write_contract

pytestmark = pytest.mark.timeout(400)

WITH_BATCH = pytest.mark.parametrize("gui_home", [{"_batch": True}], indirect=True)

AC1 = """action_type = "AC1"
version = 1
description = "Label the batch's PNGs as checked."

[input_selector]
batches = ["{batch}"]

[[rules]]
where = {{ file_types = ["png"] }}
label = {{ key = "quality", value = "checked" }}
"""

#: a contract whose text is hostile: a description and a parameter's help holding HTML and
#: Markdown, which the page must show as the characters they are
HOSTILE = """action_type = "AC2"
version = 3
description = "<img src=x onerror=alert(1)><b>bold</b> **strong** [link](javascript:alert(2))"

[input_selector]
batches = ["{batch}"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "local"
command = ["true", "{{param:size}}", "{{param:ratio}}", "{{param:sharpen}}", "{{param:mode}}", "{{param:tag}}"]

[params.size]
type = "int"
default = 256
min = 16
max = 4096
help = "<script>alert(3)</script> the longer side"

[params.ratio]
type = "float"
default = 0.5
min = 0
max = 1

[params.sharpen]
type = "bool"
default = false

[params.mode]
type = "choice"
choices = ["fast", "best"]
default = "fast"

[params.tag]
type = "str"
help = "a required text"

[[output_parser.children]]
glob = "out/*.png"
"""


def _work(cfg_path: Path) -> None:
    """`hoard worker --burst`: a real worker process runs what is queued, then quits."""
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr


def _cfg(gui_home: Path):
    from hoardfs.base import config

    return config.load(gui_home)


async def _ingested(gui_home: Path):
    """The fixture batch ingested (by a real worker); the actions directory made."""
    cfg = _cfg(gui_home)
    await run.io_bound(launch.launch_ingest, cfg, BATCH, None)
    await run.io_bound(_work, gui_home)
    cfg.actions_dir.mkdir(exist_ok=True)
    return cfg


def _labelled(cfg) -> int:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT count(*) FROM label WHERE key = 'quality' AND value = 'checked' "
                            "AND origin = 'action:check-quality'").fetchone()[0]


@WITH_BATCH
async def test_operator_lists_launches_an_ac1_run_and_sees_it_done(user, gui_home: Path) -> None:
    """/actions lists the contracts (a bad file with its first problem, the built-ins); the form
    launches an AC1 run, recorded as the operator's, queued; a worker runs it: done, every step
    done, in /actions and /runs; the same launch again says "done already" and changes nothing."""
    cfg = await _ingested(gui_home)
    write_contract(cfg, "check-quality", AC1.format(batch=BATCH))
    (cfg.actions_dir / "broken.toml").write_text('action_id = "broken"\naction_type = "AC1"\nversion = 1\n'
                                                 'colour = "red"\n[input_selector]\n[[rules]]\nblack_list = true\n')
    await sign_in(user, "otto")
    await user.open("/actions")
    await user.should_see("check-quality", retries=50)
    await user.should_see("thumbnail")  # a built-in
    await user.should_see("resize-variants")
    await user.should_see("built-in")
    await user.should_see(marker="contract-problem")
    await user.should_see("colour")  # the bad file's first problem names its key
    await user.should_see("no run yet")

    user.find("check-quality").click()
    await user.should_see("Label the batch's PNGs as checked.")
    await user.should_see("AC1 (cpu)")
    await user.should_see("label quality=checked")  # its rule, as `hoard action show` says it
    user.find(marker="action-launch").click()
    await user.should_see(marker="run-status", retries=50)
    runs = await run.io_bound(launch.action_runs, cfg)
    assert len(runs) == 1 and runs[0]["by"] == "otto" and runs[0]["status"] == "queued"
    rid = runs[0]["run"]
    await user.should_see("queued")
    await user.should_see("plan: queued")
    await user.should_see("launched by otto")
    assert _labelled(cfg) == 0

    await run.io_bound(_work, gui_home)
    await user.open(f"/runs/action/{rid}")
    await user.should_see("finish: done", retries=50)
    for line in ("plan: done", "apply: done", "finish: done", "(queue sql)", "took ", "labels planned"):
        await user.should_see(line)
    await user.should_not_see(marker="run-cancel")  # a done run offers no cancel
    await user.should_not_see(marker="run-release")
    labelled = _labelled(cfg)
    assert labelled > 0

    await user.open("/actions")
    await user.should_see(rid, retries=50)
    await user.should_see(marker="action-runs")
    await run.io_bound(ctx().cache.refresh)  # what the background timer does every gui.refresh_s
    await user.open("/runs?kind=action")
    await user.should_see(rid, retries=50)

    await user.open("/actions/check-quality")
    await user.should_see(rid, retries=50)  # its runs
    user.find(marker="action-launch").click()
    await user.should_see(f"run {rid}: done already (nothing changed)", retries=50)
    await user.should_see(marker="action-done-already")
    assert _labelled(cfg) == labelled and len(await run.io_bound(launch.action_runs, cfg)) == 1


@WITH_BATCH
async def test_launch_form_errors_are_one_line_each_and_nothing_runs(user, gui_home: Path) -> None:
    """The form is typed from the contract's params (defaults filled); each bad entry is the
    one line `--param` parsing (or the selection) gives, and nothing is recorded."""
    cfg = _cfg(gui_home)
    cfg.actions_dir.mkdir(exist_ok=True)
    write_contract(cfg, "hostile", HOSTILE.format(batch=BATCH))
    await sign_in(user, "otto")
    await user.open("/actions/hostile")
    await user.should_see(marker="action-launch", retries=50)
    assert user.find(marker="param-size").elements.pop().value == 256  # defaults filled
    assert user.find(marker="param-mode").elements.pop().value == "fast"
    assert user.find(marker="param-sharpen").elements.pop().value is False
    user.find(marker="action-launch").click()  # tag: required, not given
    await user.should_see("--param tag", retries=50)
    await user.should_see(marker="action-message")

    user.find(marker="param-tag").type("v1")
    user.find(marker="param-size").clear().type("9999")
    user.find(marker="action-launch").click()
    await user.should_see("--param size: 9999 is outside the allowed range 16..4096", retries=50)

    user.find(marker="param-size").clear().type("64")
    user.find(marker="action-selector").type("{not json")
    user.find(marker="action-launch").click()
    await user.should_see("the selector is not JSON", retries=50)

    user.find(marker="action-selector").clear().type('{"kinds": ["image"]}')
    user.find(marker="action-nodes").type("ab" * 32)
    user.find(marker="action-launch").click()
    await user.should_see("give a selector", retries=50)

    user.find(marker="action-selector").clear()
    user.find(marker="action-nodes").clear().type("not-a-sha")
    user.find(marker="action-launch").click()
    await user.should_see("--nodes: 'not-a-sha' is not a sha256", retries=50)

    user.find(marker="action-nodes").clear()
    user.find(marker="action-selector").type('{"batches": ["no-such-batch"]}')
    user.find(marker="action-launch").click()
    await user.should_see("no node matches", retries=50)
    assert await run.io_bound(launch.action_runs, cfg) == []  # nothing recorded


@WITH_BATCH
async def test_hostile_contract_text_is_shown_as_text(user, gui_home: Path) -> None:
    """A contract's description and a parameter's help holding HTML and Markdown are shown as
    the characters they are — no element made from them, on the list or the contract's page."""
    cfg = _cfg(gui_home)
    cfg.actions_dir.mkdir(exist_ok=True)
    write_contract(cfg, "hostile", HOSTILE.format(batch=BATCH))
    await sign_in(user, "vera")
    for path in ("/actions", "/actions/hostile"):
        await user.open(path)
        await user.should_see("<img src=x onerror=alert(1)><b>bold</b> **strong** [link](javascript:alert(2))", retries=50)
        await user.should_not_see(kind=ui.html)
        await user.should_not_see(kind=ui.markdown)
        assert not any(e.tag in ("img", "b", "script") for e in user.client.elements.values())
    await user.should_see("<script>alert(3)</script> the longer side")
    await user.open("/runs/action/<b>x<b>")  # a hand-typed run id: its one line, as text
    await user.should_see("'<b>x<b>' is not a run id", retries=50)
    await user.open("/runs/action/nothing-v1-0123456789ab")
    await user.should_see("no action run 'nothing-v1-0123456789ab'", retries=50)
    await user.open("/actions/<i>nope<i>")
    await user.should_see(marker="contract-problem", retries=50)
    await user.should_see("is not an action id")
    assert not any(e.tag in ("b", "i") for e in user.client.elements.values())


@WITH_BATCH
async def test_release_then_cancel_and_a_viewer_sees_no_buttons(user, gui_home: Path) -> None:
    """An AC3 run with a gate: a worker runs it to WAIT_GPU_READY and ends; its page says so and
    offers Release and Cancel to an operator, none to a viewer; Release → another worker takes it to done, its children listed with links
    to their node pages. A second gated run (--rerun of one input, done already) is cancelled at the gate: cancelled, 3C cleaned."""
    cfg = await _ingested(gui_home)
    worker_contract(cfg, BATCH, type="AC3", gate=GATE.format(timeout=3600))
    sub = await run.io_bound(launch.launch_action, cfg, "thumbs", None, None, [], "otto")
    rid = sub.state.run_id
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "WAIT_GPU_READY"

    await sign_in(user, "vera")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-waiting", retries=50)  # the page reads the run off the event loop
    await user.should_see("WAIT_GPU_READY")
    await user.should_see("gate: waiting")
    await user.should_not_see(marker="run-release")
    await user.should_not_see(marker="run-cancel")
    await user.open("/actions/thumbs")
    await user.should_see("you can read the form but not launch", retries=50)
    await user.should_not_see(marker="action-launch")

    await sign_out(user)
    await sign_in(user, "otto")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-cancel", retries=50)
    user.find(marker="run-release").click()
    await user.should_see(f"run {rid}: gate released", retries=50)
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "done"
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-children", retries=50)
    await user.should_see("finish: done")
    inputs = load_state(cfg, rid).inputs
    await user.should_see(f"children: {inputs}")
    listed = [el for el in user.client.elements.values() if isinstance(el, ui.link)
              and str(el.props.get("href", "")).startswith("/node/")]
    assert len(listed) == inputs
    await user.should_see("thumbs/")
    user.find(f"inputs: {inputs}").click()  # the run's batch in the asset browser
    await user.should_see("assets on page 1")

    # a second run of it (other parameters: none; other inputs: one of them) cancelled at the gate;
    # --rerun, since that input is done already and a run with nothing new waits at no gate
    first = (await run.io_bound(_inputs, cfg, rid))[0]
    sub2 = await run.io_bound(_rerun, cfg, "thumbs", [first], "otto")
    rid2 = sub2.state.run_id
    assert rid2 != rid
    await run.io_bound(_work, gui_home)
    await user.open(f"/runs/action/{rid2}")
    await user.should_see(marker="run-waiting", retries=50)  # not the notification of the first run's release
    user.find(marker="run-cancel").click()
    await user.should_see(f"run {rid2}: cancelled", retries=50)
    st = load_state(cfg, rid2)
    assert st.status == "cancelled" and not (cfg.ssd.zone_path("3C") / rid2).exists()
    await user.should_see("cancelled at step gate")
    await user.should_not_see(marker="run-release")


def _inputs(cfg, rid: str) -> list[str]:
    return read_work(cfg, rid, "inputs")


def _rerun(cfg, name: str, nodes: list[str], by: str) -> actions_api.Submitted:
    """`hoard action run NAME --nodes FILE --rerun`, queued for `hoard worker`."""
    return actions_api.submit(cfg, name, nodes=nodes, given=[], redis_conn=redis.Redis.from_url(cfg.redis_url),
                              by=by, rerun=True)


@WITH_BATCH
async def test_pipelines_show_their_stages_as_actions(user, gui_home: Path) -> None:
    """A pipeline's stages are actions: /pipelines shows each stage's action name, linking its page."""
    cfg = await _ingested(gui_home)
    write_contract(cfg, "check-quality", AC1.format(batch=BATCH))
    await run.io_bound(launch.launch_action, cfg, "check-quality", None, None, [], "otto")
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        pid = conn.execute("INSERT INTO pipeline (name) VALUES ('curate') RETURNING pipeline_id").fetchone()[0]
        conn.execute("INSERT INTO pipeline_stage (pipeline_id, position, action_id) "
                     "SELECT %s, 0, action_id FROM action WHERE name = 'check-quality'", [pid])
    await sign_in(user, "vera")
    await user.open("/pipelines")
    await user.should_see("0. check-quality: 0 batches done", retries=50)
    user.find(marker="stage-0").click()
    await user.should_see("Label the batch's PNGs as checked.", retries=50)


@WITH_BATCH
async def test_release_of_a_run_waiting_for_its_labellers_imports_what_is_labelled(user, gui_home: Path,
                                                                                   label_studio) -> None:
    """An AC5 run (the built-in `label-studio`, a real Label Studio) waits in waiting_labels: its
    page says so, links its Label Studio project and offers an operator "Release: import what is
    labelled now"; one task labelled, Release → a worker imports that task's labels and the run
    is done, the others unlabelled."""
    from tests.labelstudio import point_at
    from tests.test_action_labelstudio import ACTION, drawn, post, run_tasks

    cfg = await _ingested(gui_home)
    point_at(gui_home, gui_home.parent, label_studio, cfg.ssd.zone_path("3C"))
    cfg = _cfg(gui_home)
    sub = await run.io_bound(launch.launch_action, cfg, ACTION, None, None, [], "otto")
    rid = sub.state.run_id
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "waiting_labels"
    tasks = await run.io_bound(run_tasks, label_studio, cfg, rid)
    assert len(tasks) > 1
    await run.io_bound(post, label_studio, tasks[0]["id"], drawn(1)[2:3])  # one labeller's choice

    await sign_in(user, "otto")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-waiting", retries=50)
    await user.should_see("waiting for the labellers")
    await user.should_see("labels: waiting")
    # its Label Studio project, a plain link (the project id of its report on Label Studio's URL)
    project = load_state(cfg, rid).report["label_studio"]["project"]
    [link] = user.find(marker="run-ls-project").elements
    assert link.props["href"] == f"{label_studio.url}/projects/{project}/data", link.props
    assert link.text == f"Label Studio project {project} (hoardfs labelling)"
    user.find(marker="run-release").click()
    await user.should_see(f"run {rid}: labels released", retries=50)
    await run.io_bound(_work, gui_home)
    st = load_state(cfg, rid)
    assert st.status == "done", st.error
    assert st.report["label_studio"]["finished"] == 1 and st.report["label_studio"]["released"] is True
    with psycopg.connect(cfg.database_url) as conn:
        labelled = conn.execute("SELECT count(DISTINCT node_id) FROM label WHERE key = 'class' AND value = 'keep' "
                                "AND origin = %s",
                                [f"action:{ACTION}"]).fetchone()[0]
    assert labelled == 1
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-status", retries=50)
    await user.should_not_see(marker="run-release")


@WITH_BATCH
@pytest.mark.expect_log(r"\(action [^)]*: run\) failed: run [^:]*: the worker exited with status 3", level="ERROR")
async def test_a_failed_run_names_and_offers_resume(user, gui_home: Path) -> None:
    """A run whose worker exits 3: its page shows the error line naming `hoard action resume RUN`
    and offers an operator Resume (none to a viewer); the worker fixed, Resume → a worker takes
    that same run to done."""
    cfg = await _ingested(gui_home)
    worker_contract(cfg, BATCH, exit=3)
    sub = await run.io_bound(launch.launch_action, cfg, "thumbs", None, None, [], "otto")
    rid = sub.state.run_id
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "failed"

    await sign_in(user, "vera")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-error", retries=50)
    await user.should_see(f"`hoard action resume {rid}`")
    await user.should_not_see(marker="run-resume")
    await sign_out(user)
    await sign_in(user, "otto")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-resume", retries=50)
    worker_contract(cfg, BATCH, exit=0)  # the worker fixed (same version: the same run)
    user.find(marker="run-resume").click()
    await user.should_see(f"run {rid}: resumed", retries=50)
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, rid).status == "done"
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-children", retries=50)
    await user.should_not_see(marker="run-resume")


@WITH_BATCH
async def test_the_launch_form_offers_another_host_where_a_host_can_run_it(user, gui_home: Path) -> None:
    """An action a host can run (AC2–AC4 with a worker of its own) has "on another host" on its
    launch form (`hoard action run --remote`); launched so while its inputs are on no S3 disk,
    the form shows the one line the command gives and nothing is recorded or queued; unticked,
    the same form queues the run here. An AC1 form does not offer it."""
    cfg = await _ingested(gui_home)
    write_contract(cfg, "check-quality", AC1.format(batch=BATCH))
    worker_contract(cfg, BATCH)
    await sign_in(user, "otto")
    await user.open("/actions/check-quality")
    await user.should_see(marker="action-launch", retries=50)
    await user.should_not_see(marker="action-remote")

    await user.open("/actions/thumbs")
    await user.should_see(marker="action-remote", retries=50)
    user.find(marker="action-remote").click()
    user.find(marker="action-launch").click()
    await user.should_see("on no S3 disk", retries=50)
    line = user.find(marker="action-message").elements.pop().text
    assert "hoard replicate" in line and "\n" not in line, line
    assert await run.io_bound(launch.action_runs, cfg) == []  # nothing recorded …
    assert not redis.Redis.from_url(cfg.redis_url).exists("rq:queue:remote")  # … nor queued

    user.find(marker="action-remote").click()  # unticked: a run on this server
    user.find(marker="action-launch").click()
    await user.should_see(marker="run-status", retries=50)
    runs = await run.io_bound(launch.action_runs, cfg)
    assert len(runs) == 1 and "remote" not in runs[0]["steps"], runs
