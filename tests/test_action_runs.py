"""Runs of ActionContracts end to end (hoardfs.jobs.actions): the run key, AC1's rules → labels and
black list in one write-intent, `hoard action run|status|runs|cancel`, the same run again
changing nothing — on real PostgreSQL, Redis, the store and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from hoardfs.adapters.synth import Spec
from hoardfs.base import config
from hoardfs.jobs.actions import api, run_here
from hoardfs.jobs.actions.state import load_state
from tests.helpers import write_contract
from tests.test_ingest import ingest_sample

# tier: the module's tests start hoard processes and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: the tables a run writes to, counted before and after the same run again
TABLES = ("node", "physical_content", "physical_path", "edge", "label", "action", "action_batch", "batch_member",
          "action_event", "result_canny", "result_ocr_box", "applied_intent", "relationship_type")


def hoard(cfg_path: str | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=timeout)


def counts(cfg: config.Settings) -> dict[str, int]:
    with psycopg.connect(cfg.database_url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def black_listed(cfg: config.Settings) -> int:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT count(*) FROM physical_content WHERE in_black_list").fetchone()[0]


def action_home(home: Path, pg, redis_conn, seed: int = 71, items: int = 12) -> tuple[config.Settings, str]:
    """A home with one ingested gallery batch (its id returned) and an empty actions directory."""
    cfg, batches = ingest_sample(home, pg, redis_conn, Spec(seed=seed, batches=1, items_per_batch=items,
                                                             sources=("gallery",), large_max_mb=1,
                                                             ready_signal=True))
    cfg.actions_dir.mkdir(exist_ok=True)
    return cfg, batches[0].batch_id


AC1 = """action_type = "AC1"
version = 1

[input_selector]
batches = ["{batch}"]

[[rules]]
where = {{ file_types = ["png"] }}
label = {{ key = "quality", value = "checked" }}

[[rules]]
where = {{ file_types = ["png"], order = "sha256", limit = 2 }}
black_list = true
"""


def test_ac1_labels_and_black_list_once_then_done_already(hoard_home: Path, pg, redis_conn) -> None:
    """AC1 through the CLI (--here): each rule's inputs get the label or the black-list flag in
    one intent with the action_event; the same command again says "done already" and no SQL
    row count changes; status and runs show it done."""
    cfg, batch = action_home(hoard_home, pg, redis_conn)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    res = hoard(cfg.source, "action", "run", "check-quality", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    rid = doc["run"]
    assert doc["status"] == "done" and doc["done"] == ["plan", "apply", "finish"]
    with psycopg.connect(cfg.database_url) as conn:
        pngs = conn.execute("SELECT count(*) FROM batch_member m JOIN physical_content pc USING (node_id) "
                            "WHERE m.batch_id = %s AND pc.file_type = 'png'", [batch]).fetchone()[0]
        labelled = conn.execute("SELECT count(*) FROM label WHERE key = 'quality' AND value = 'checked' "
                                "AND origin = 'action:check-quality'").fetchone()[0]
        ev = conn.execute("SELECT e.status, a.name FROM action_event e JOIN action a USING (action_id) "
                          "WHERE e.batch_id = %s", [rid]).fetchall()
        members = conn.execute("SELECT count(*) FROM batch_member WHERE batch_id = %s", [rid]).fetchone()[0]
        sealed = conn.execute("SELECT sealed_at IS NOT NULL FROM action_batch WHERE batch_id = %s", [rid]).fetchone()
    assert pngs > 0 and labelled == pngs
    assert ev == [("done", "check-quality")] and members == doc["inputs"] and sealed == (True,)
    flagged = black_listed(cfg)
    assert flagged == doc["report"]["black_list_planned"] == 2
    before = counts(cfg)
    again = hoard(cfg.source, "action", "run", "check-quality", "--here")
    assert again.returncode == 0 and f"run {rid}: done already (nothing changed)" in again.stdout, again.stdout
    assert counts(cfg) == before and black_listed(cfg) == flagged
    st = hoard(cfg.source, "action", "status", rid)
    assert st.returncode == 0 and f"run {rid}: done at step finish" in st.stdout
    runs = json.loads(hoard(cfg.source, "action", "runs", "--json").stdout)["runs"]
    assert [(r["run"], r["status"]) for r in runs] == [(rid, "done")]


def test_selector_matching_nothing_is_refused_and_nothing_kept(hoard_home: Path, pg, redis_conn) -> None:
    """A --selector that narrows the inputs to nothing: one line, exit 5, no run recorded, no row written."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=72, items=4)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    sel = hoard_home / "none.json"
    sel.write_text(json.dumps({"sources": ["forum"]}))
    before = counts(cfg)
    res = hoard(cfg.source, "action", "run", "check-quality", "--selector", str(sel), "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "no node matches" in lines[0] and "nothing was kept" in lines[0], lines
    assert counts(cfg) == before
    assert api.runs(cfg) == [] and not list((cfg.ssd.root / "state" / "actions").glob("*.json"))


def test_nodes_replace_the_selector_and_key_the_run(hoard_home: Path, pg, redis_conn) -> None:
    """--nodes FILE runs on exactly the listed nodes (the contract's selector is not applied);
    another node list is another run; the Python API gives the same run id as the CLI."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=73, items=6)
    write_contract(cfg, "check-quality", AC1.format(batch="no-such-batch"))
    with psycopg.connect(cfg.database_url) as conn:
        shas = [r[0] for r in conn.execute("SELECT encode(n.sha256, 'hex') FROM batch_member m JOIN node n "
                                           "USING (node_id) WHERE m.batch_id = %s ORDER BY 1", [batch])]
    listed = hoard_home / "nodes.txt"
    listed.write_text("\n".join(shas[:2]) + "\n")
    res = hoard(cfg.source, "action", "run", "check-quality", "--nodes", str(listed), "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["inputs"] == 2
    sub = api.submit(cfg, "check-quality", nodes=shas[:2], queue=False)
    assert (sub.state.run_id, sub.how) == (doc["run"], "done already")
    other = api.submit(cfg, "check-quality", nodes=shas[:3], queue=False)
    assert other.state.run_id != doc["run"] and other.how == "new"
    assert run_here(cfg, other.state.run_id) == 0
    assert load_state(cfg, other.state.run_id).status == "done"


#: a runner that runs the steps of `api.submit(NAME)` here and is killed (SIGKILL, as by power
#: loss or the OOM killer) right after STEP's work, before its state says so: the worst moment
KILLED_AT = """
import os, signal, sys
from hoardfs.base import config
from hoardfs.jobs.actions import api, run_here, steps
cfg = config.load(sys.argv[1])
step, name = sys.argv[2], sys.argv[3]
real = steps.STEPS[step]
def killed(cfg, st):
    real(cfg, st)
    os.kill(os.getpid(), signal.SIGKILL)
steps.STEPS[step] = killed
run_here(cfg, api.submit(cfg, name, queue=False).state.run_id)
"""


def kill_at(cfg: config.Settings, step: str, name: str) -> None:
    res = subprocess.run([sys.executable, "-c", KILLED_AT, str(cfg.source), step, name], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == -9, res.stderr


@pytest.mark.parametrize("step", ["plan", "apply", "finish"])
def test_ac1_killed_at_each_step_resumes_exactly_once(hoard_home: Path, pg, redis_conn, step: str) -> None:
    """kill -9 of the runner right after a step's work: `status` says failed at once (the
    process is gone) with the way on; the same command resumes and the database holds what
    one clean run writes — one event, the labels once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=74, items=6)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    base = counts(cfg)
    kill_at(cfg, step, "check-quality")
    (rid,) = [r["run"] for r in api.runs(cfg)]
    st = hoard(cfg.source, "action", "status", rid)
    assert st.returncode == 5 and f"failed at step {step}" in st.stdout
    assert f"`hoard action resume {rid}` resumes it" in st.stdout, st.stdout
    res = hoard(cfg.source, "action", "run", "check-quality", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["status"] == "done"
    after = counts(cfg)
    with psycopg.connect(cfg.database_url) as conn:
        pngs = conn.execute("SELECT count(*) FROM batch_member m JOIN physical_content pc USING (node_id) "
                            "WHERE m.batch_id = %s AND pc.file_type = 'png'", [batch]).fetchone()[0]
    assert after["action_event"] - base["action_event"] == 1
    assert after["label"] - base["label"] == pngs and black_listed(cfg) == 2
    assert after["applied_intent"] - base["applied_intent"] == 2  # the batch's and the run's


def test_stale_heartbeat_is_failed_in_status_and_health(hoard_home: Path, pg, redis_conn) -> None:
    """A run "running" whose step holds its lock but wrote no heartbeat for over 120 s (a hung
    process, a host that stopped answering) is reported failed by status, runs and `hoard health`,
    with the way on."""
    import os
    import time

    from hoardfs.base.files import flocked
    from hoardfs.jobs.actions.state import lock_path, save_state, state_dir

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=75, items=4)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    st = api.submit(cfg, "check-quality", queue=False).state
    st.status = "running"
    save_state(cfg, st)
    beat = state_dir(cfg) / f"{st.run_id}.beat"
    beat.touch()
    old = time.time() - 200
    os.utime(beat, (old, old))
    with flocked(lock_path(cfg, st.run_id)):  # the hung step still holds its lock
        res = hoard(cfg.source, "action", "status", st.run_id)
        assert res.returncode == 5 and "failed at step plan" in res.stdout and "no heartbeat for 2" in res.stdout
        health = json.loads(hoard(cfg.source, "health", "--json").stdout)
        line = next(p for p in health["problems"] if f"action run {st.run_id}" in p)
        assert "failed at plan" in line and f"`hoard action resume {st.run_id}` resumes it" in line
