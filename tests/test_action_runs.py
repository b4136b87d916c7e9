"""Runs of ActionContracts end to end (jobs.actions): the run key, AC1's rules → labels and
black list in one write-intent, `hoard action run|status|runs|cancel`, the same run again
changing nothing — on real PostgreSQL, Redis, the store and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from adapters.synth import Spec
from fsd.base import config
from jobs.actions import api, run_here
from jobs.actions.state import load_state
from tests.test_ingest import ingest_sample

# tier: the module's tests start hoard processes and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: the tables a run writes to, counted before and after the same run again
TABLES = ("node", "physical_content", "physical_path", "edge", "label", "action", "action_batch", "batch_member",
          "action_event", "result_canny", "result_ocr_box", "applied_intent", "relationship_type")


def hoard(cfg_path: str | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=timeout)


def counts(cfg: config.Settings) -> dict[str, int]:
    with psycopg.connect(cfg.database_url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608


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


def write_contract(cfg: config.Settings, name: str, body: str) -> Path:
    path = cfg.actions_dir / f"{name}.toml"
    path.write_text(f'action_id = "{name}"\n' + body)
    return path


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
    assert len(lines) == 1 and "match no node" in lines[0] and "nothing was kept" in lines[0], lines
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
