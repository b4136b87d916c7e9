"""Pipelines (hoardfs.jobs.actions.pipelines, `hoard pipeline define|show|advance`): ordered stages of
actions a batch goes through, each stage's run found again by its run key — on real
PostgreSQL, Redis, the store and worker processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard, write_contract
from tests.test_action_workers import GATE, assert_produced_once, inputs_of, worker_contract

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: an AC1 contract labelling the png files of a batch `key=value`
LABEL = """action_type = "AC1"
version = 1

[input_selector]
file_types = ["png"]

[[rules]]
where = {{ file_types = ["png"] }}
label = {{ key = "{key}", value = "{value}" }}
"""


def labelled(cfg: config.Settings, key: str, value: str) -> int:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT count(*) FROM label WHERE key = %s AND value = %s", [key, value]).fetchone()[0]


def pngs(cfg: config.Settings, batch: str) -> int:
    return len(inputs_of(cfg, batch))


def events(cfg: config.Settings, action: str) -> int:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT count(*) FROM action_event e JOIN action a USING (action_id) WHERE a.name = %s "
                            "AND e.status = 'done'", [action]).fetchone()[0]


def batch_stage(cfg: config.Settings) -> list[tuple[str, str, int]]:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT p.name, bs.batch_id, bs.done_position FROM batch_stage bs JOIN pipeline p "
                            "USING (pipeline_id) ORDER BY 1, 2").fetchall()


def test_two_ac1_stages_define_show_advance_here(hoard_home: Path, pg, redis_conn) -> None:
    """define registers the actions and the stages (the same again changes nothing); advance
    --here runs both stages over the batch's members and records each done; show says so;
    advance again changes nothing."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=91, items=6)
    write_contract(cfg, "checked", LABEL.format(key="quality", value="checked"))
    write_contract(cfg, "sorted", LABEL.format(key="bin", value="sorted"))
    res = hoard(cfg.source, "pipeline", "define", "clean", "checked", "sorted")
    assert res.returncode == 0 and res.stdout == "pipeline clean: checked → sorted\n", res.stdout + res.stderr
    again = hoard(cfg.source, "pipeline", "define", "clean", "checked", "sorted")
    assert again.returncode == 0 and "(defined already)" in again.stdout, again.stdout + again.stderr
    with psycopg.connect(cfg.database_url) as conn:
        stages = conn.execute("SELECT a.name, a.kind FROM pipeline p JOIN pipeline_stage s USING (pipeline_id) "
                              "JOIN action a USING (action_id) WHERE p.name = 'clean' ORDER BY s.position").fetchall()
    assert stages == [("checked", "cpu"), ("sorted", "cpu")]
    shown = json.loads(hoard(cfg.source, "pipeline", "show", "clean", "--json").stdout)
    assert shown == {"pipelines": [{"name": "clean", "stages": ["checked", "sorted"], "watch": None, "batches": []}]}

    res = hoard(cfg.source, "pipeline", "advance", "clean", batch, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (doc["done_position"], doc["last_done"], doc["next"]) == (1, "sorted", None)
    assert [r.split("-v1-")[0] for r in doc["submitted"]] == ["checked", "sorted"]
    n = pngs(cfg, batch)
    assert n > 0 and labelled(cfg, "quality", "checked") == n and labelled(cfg, "bin", "sorted") == n
    assert batch_stage(cfg) == [("clean", batch, 1)]
    text = hoard(cfg.source, "pipeline", "show")
    assert text.returncode == 0 and f"  {batch}: done 1. sorted; every stage done" in text.stdout, text.stdout
    before = counts(cfg)
    again = hoard(cfg.source, "pipeline", "advance", "clean", batch, "--here")
    assert again.returncode == 0 and "done 1. sorted; every stage done" in again.stdout, again.stdout + again.stderr
    assert counts(cfg) == before and batch_stage(cfg) == [("clean", batch, 1)]


def test_one_batch_in_two_pipelines_through_a_worker(hoard_home: Path, pg, redis_conn) -> None:
    """A batch in two pipelines that share their first stage: its run is one run (recorded done
    in the second pipeline without running again); queued stages are run by `hoard worker`
    and recorded by the next advance; show names each next run and its status."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=92, items=6)
    write_contract(cfg, "checked", LABEL.format(key="quality", value="checked"))
    write_contract(cfg, "sorted", LABEL.format(key="bin", value="sorted"))
    write_contract(cfg, "graded", LABEL.format(key="grade", value="a"))
    for name, stages in (("clean", ["checked", "sorted"]), ("grade", ["checked", "graded"])):
        assert hoard(cfg.source, "pipeline", "define", name, *stages).returncode == 0
    assert hoard(cfg.source, "pipeline", "advance", "clean", batch, "--here").returncode == 0
    res = hoard(cfg.source, "pipeline", "advance", "grade", batch, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["done_position"] == 0 and doc["next"]["action"] == "graded" and doc["next"]["status"] == "queued"
    rid = doc["next"]["run"]
    assert doc["submitted"] == [rid] and events(cfg, "checked") == 1  # stage 0 was the clean pipeline's run
    shown = json.loads(hoard(cfg.source, "pipeline", "show", "--json").stdout)["pipelines"]
    assert [(p["name"], [(b["batch"], b["last_done"], (b["next"] or {}).get("status")) for b in p["batches"]])
            for p in shown] == [("clean", [(batch, "sorted", None)]), ("grade", [(batch, "checked", "queued")])]
    # queued twice is one run: advance again before a worker ran it submits nothing new
    again = json.loads(hoard(cfg.source, "pipeline", "advance", "grade", batch, "--json").stdout)
    assert again["submitted"] == [] and again["next"]["run"] == rid
    assert labelled(cfg, "grade", "a") == 0
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    assert load_state(cfg, rid).status == "done" and labelled(cfg, "grade", "a") == pngs(cfg, batch)
    assert batch_stage(cfg) == [("clean", batch, 1), ("grade", batch, 0)]  # the worker ran it; advance records it
    done = hoard(cfg.source, "pipeline", "advance", "grade", batch)
    assert done.returncode == 0 and "done 1. graded; every stage done" in done.stdout, done.stdout + done.stderr
    assert batch_stage(cfg) == [("clean", batch, 1), ("grade", batch, 1)]
    assert events(cfg, "checked") == events(cfg, "graded") == events(cfg, "sorted") == 1


def test_ac1_then_ac2_worker_stage(hoard_home: Path, pg, redis_conn) -> None:
    """An AC1 stage, then an AC2 stage whose python worker writes a child per input and a
    result row: --here runs both; everything the AC2 run produces is there exactly once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=93, items=6)
    write_contract(cfg, "checked", LABEL.format(key="quality", value="checked"))
    worker_contract(cfg, batch)
    assert hoard(cfg.source, "pipeline", "define", "thumbs-of-checked", "checked", "thumbs").returncode == 0
    base = counts(cfg)
    res = hoard(cfg.source, "pipeline", "advance", "thumbs-of-checked", batch, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["done_position"] == 1 and doc["next"] is None
    rid = doc["submitted"][1]
    base["action_event"] += 1  # the AC1 stage's event (assert_produced_once counts the AC2 run's)
    assert_produced_once(cfg, base, rid, pngs(cfg, batch))


@pytest.mark.expect_log(r"the worker exited with status 3", level="WARNING", optional=True)  # (as the engine logs it)
def test_every_error_is_one_line_with_the_way_on(hoard_home: Path, pg, redis_conn) -> None:
    """No such pipeline, batch or action; other stages for a defined name; a stage's run that
    failed (then --retry resumes it once fixed); a run waiting at its gate (then released)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=94, items=4)
    write_contract(cfg, "checked", LABEL.format(key="quality", value="checked"))
    worker_contract(cfg, batch, exit=3)

    def fails(*args: str, code: int = 2) -> str:
        res = hoard(cfg.source, "pipeline", *args)
        # (a failing worker's attempts are logged as they happen, timestamped, before the one line)
        said = [ln for ln in res.stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", ln)]
        assert res.returncode == code and res.stdout == "" and len(said) == 1, (res.returncode, res.stdout, res.stderr)
        return said[0]

    assert "no action 'nosuch'" in fails("define", "p", "checked", "nosuch")
    assert "given twice" in fails("define", "p", "checked", "checked")
    assert "not a pipeline name" in fails("define", "../p", "checked")
    assert hoard(cfg.source, "pipeline", "define", "p", "checked", "thumbs").returncode == 0
    line = fails("define", "p", "thumbs")
    assert "pipeline p exists with stages checked → thumbs" in line and "`hoard pipeline define p-2 thumbs`" in line
    assert "no pipeline 'nosuch'; `hoard pipeline show` lists them" in fails("advance", "nosuch", batch)
    assert "no pipeline 'nosuch'" in fails("show", "nosuch")
    assert "no batch 'no-such-batch'" in fails("advance", "p", "no-such-batch")
    assert batch_stage(cfg) == []

    line = fails("advance", "p", batch, "--here", code=5)
    rid = load_state_of(cfg, "thumbs")
    assert f"pipeline p, batch {batch}: stage 1 (thumbs): run {rid} failed at step run" in line
    assert f"`hoard action status {rid}` says why" in line and f"`hoard pipeline advance p {batch} --retry`" in line
    assert batch_stage(cfg) == [("p", batch, 0)]
    fails("advance", "p", batch, "--here", code=5)  # without --retry: the same line, nothing run
    worker_contract(cfg, batch, exit=0)  # the worker is fixed
    res = hoard(cfg.source, "pipeline", "advance", "p", batch, "--here", "--retry")
    assert res.returncode == 0 and "every stage done" in res.stdout, res.stdout + res.stderr
    assert load_state(cfg, rid).status == "done" and batch_stage(cfg) == [("p", batch, 1)]

    worker_contract(cfg, batch, name="gpu", type="AC3", gate=GATE.format(timeout=3600))
    assert hoard(cfg.source, "pipeline", "define", "g", "checked", "gpu").returncode == 0
    line = fails("advance", "g", batch, "--here", code=3)
    gid = load_state_of(cfg, "gpu")
    assert load_state(cfg, gid).status == "WAIT_GPU_READY"
    assert (f"stage 1 (gpu): run {gid} waits at the GPU gate — `hoard action release {gid}`" in line
            and f"then `hoard pipeline advance g {batch}` again" in line), line
    assert hoard(cfg.source, "action", "release", gid).returncode == 0
    res = hoard(cfg.source, "pipeline", "advance", "g", batch, "--here")
    assert res.returncode == 0 and "done 1. gpu; every stage done" in res.stdout, res.stdout + res.stderr


def load_state_of(cfg: config.Settings, action: str) -> str:
    """The id of the one run of `action`."""
    runs = [p.stem for p in (cfg.ssd.root / "state" / "actions").glob(f"{action}-v*.json") if p.stem.count(".") == 0]
    assert len(runs) == 1, runs
    return runs[0]
