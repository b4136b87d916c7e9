"""Incremental runs and provenance: an AC2 action's results are memoised per (action, version,
parameters, input sha256), so a run over a grown or shrunk selection stages and runs only the
inputs not done with that key ("N reused, M new"), `--rerun` runs them all, and a run whose
inputs are all done starts no worker. Every edge the action writes is of its own relationship
type (a name the ingest adapters use too stays theirs), and `hoard info` names the run that
made a node. The worker is tests/data/workers/one_child_per_input.py, a custom `local` worker
written before this code and never changed. Real PostgreSQL, Redis, store and files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psycopg
import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.sql import browse
from hoardfs.sql.deletion import drop_batch
from tests.helpers import write_contract
from tests.test_action_runs import hoard
from tests.test_ingest import ingest_all, ingest_home, ingest_sample

pytestmark = pytest.mark.services

WORKER = Path(__file__).parent / "data" / "workers" / "one_child_per_input.py"

#: the fixed worker as an AC2 action; its children are named with the relationship the
#: yt-dlp adapter (UA_1) registers too
CONTRACT = """action_type = "AC2"
version = 1

[input_selector]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "local"
command = [{python}, {worker}, "{{input_root}}", "{{output_root}}"]
timeout_s = 300
{root}

[output_parser]
unmatched = "ignore"

[[output_parser.children]]
glob = "made/*.txt"
parent_match = "made/(?P<input>[0-9a-f]{{64}})\\\\.txt"
parent_key = "sha256"
relationship = "thumbnail_of"
"""


def memo_home(home: Path, pg, redis_conn) -> tuple[config.Settings, list[str]]:
    """Two ingested gallery batches (their ids) and the `made` action over their PNGs."""
    cfg, batches = ingest_sample(home, pg, redis_conn, Spec(seed=91, batches=2, items_per_batch=6,
                                                            sources=("gallery",), large_max_mb=1, ready_signal=True))
    cfg.actions_dir.mkdir(exist_ok=True)
    write_contract(cfg, "made", CONTRACT.format(
        python=json.dumps(sys.executable), worker=json.dumps(str(WORKER)),
        root='run_as = "root"\nallow_root = true' if os.geteuid() == 0 else ""))
    return cfg, [b.batch_id for b in batches]


def pngs(cfg: config.Settings, batch: str | None = None) -> set[str]:
    """The live, not black-listed PNG nodes (of `batch`)."""
    with psycopg.connect(cfg.database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT DISTINCT encode(n.sha256, 'hex') FROM batch_member m JOIN node n USING (node_id) "
            "JOIN physical_content pc USING (node_id) JOIN action_batch b USING (batch_id) WHERE pc.file_type = 'png' "
            "AND NOT pc.is_deleted AND NOT pc.in_black_list AND b.action_id = 0 AND (%s::text IS NULL OR m.batch_id = %s)",
            [batch, batch])}


def made_by_run(cfg: config.Settings, rid: str) -> set[str]:
    """The parents of the children run `rid` stored: the inputs its worker ran on."""
    with psycopg.connect(cfg.database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT encode(p.sha256, 'hex') FROM physical_path pp JOIN edge e ON e.child_id = pp.node_id "
            "JOIN node p ON p.node_id = e.parent_id WHERE pp.locator LIKE %s", [f"action:{rid}/%"])}


def run(cfg: config.Settings, *args: str) -> dict:
    res = hoard(cfg.source, "action", "run", "made", "--here", "--json", *args)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    return json.loads(res.stdout)


def selector(cfg: config.Settings, batch: str) -> str:
    path = cfg.source.parent / f"sel-{batch}.json"
    path.write_text(json.dumps({"batches": [batch]}))
    return str(path)


def test_grown_selection_runs_only_the_new_batch(hoard_home: Path, pg, redis_conn) -> None:
    """A run over batch 1, then over both batches: the second stages and runs only batch 2's
    inputs (inputs_new/inputs_reused exact), batch 1's results stay its first run's."""
    cfg, (b1, b2) = memo_home(hoard_home, pg, redis_conn)
    first = run(cfg, "--selector", selector(cfg, b1))
    assert first["status"] == "done"
    assert (first["report"]["inputs_new"], first["report"]["inputs_reused"]) == (len(pngs(cfg, b1)), 0)
    assert made_by_run(cfg, first["run"]) == pngs(cfg, b1)
    grown = run(cfg)
    new = pngs(cfg, b2) - pngs(cfg, b1)  # (a file in both batches is one node, done by the first run)
    assert new and grown["run"] != first["run"] and grown["status"] == "done"
    assert (grown["report"]["inputs_new"], grown["report"]["inputs_reused"]) == (len(new), len(pngs(cfg, b1)))
    assert grown["report"]["reused_from"] == {first["run"]: len(pngs(cfg, b1))}
    assert grown["report"]["stage"]["files"] == len(new)  # only the new inputs were staged
    assert made_by_run(cfg, grown["run"]) == new  # the worker saw only batch 2's
    assert made_by_run(cfg, first["run"]) == pngs(cfg, b1)
    text = hoard(cfg.source, "action", "status", grown["run"])
    assert f"{len(pngs(cfg, b1))} reused, {len(new)} new" in text.stdout, text.stdout
    with psycopg.connect(cfg.database_url) as conn:  # the first run's batch deleted: its inputs are not done
        drop_batch(conn, first["run"], "test")
        held = dict(conn.execute("SELECT run_id, count(*) FROM action_memo GROUP BY 1").fetchall())
    assert held == {grown["run"]: len(new)}


def live_children(cfg: config.Settings, rid: str) -> dict[str, str]:
    """{input sha256: child sha256} of the children run `rid` made that are not deleted."""
    with psycopg.connect(cfg.database_url) as conn:
        return dict(conn.execute(
            "SELECT encode(p.sha256, 'hex'), encode(c.sha256, 'hex') FROM physical_path pp "
            "JOIN edge e ON e.child_id = pp.node_id JOIN node p ON p.node_id = e.parent_id "
            "JOIN node c ON c.node_id = e.child_id JOIN physical_content pc ON pc.node_id = c.node_id "
            "WHERE pp.locator LIKE %s AND NOT pc.is_deleted", [f"action:{rid}/%"]).fetchall())


def test_an_input_whose_child_was_deleted_runs_again(hoard_home: Path, pg, redis_conn) -> None:
    """A run over batch 1, one of its children deleted (`hoard delete --node`), then a run over
    both batches: that child's input is not reused but run again, and the memo names that run."""
    cfg, (b1, b2) = memo_home(hoard_home, pg, redis_conn)
    first = run(cfg, "--selector", selector(cfg, b1))
    made = live_children(cfg, first["run"])
    assert first["status"] == "done" and set(made) == pngs(cfg, b1)
    victim = sorted(made)[0]
    gone = hoard(cfg.source, "delete", "--node", made[victim])
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert victim not in live_children(cfg, first["run"])
    grown = run(cfg)
    new = pngs(cfg, b2) - pngs(cfg, b1)
    assert grown["status"] == "done"
    assert (grown["report"]["inputs_new"], grown["report"]["inputs_reused"]) == (len(new) + 1, len(pngs(cfg, b1)) - 1)
    assert grown["report"]["reused_from"] == {first["run"]: len(pngs(cfg, b1)) - 1}
    assert made_by_run(cfg, grown["run"]) == new | {victim}  # the worker ran on it again
    with psycopg.connect(cfg.database_url) as conn:  # the memo names the run that made the live child
        (holder,) = conn.execute("SELECT m.run_id FROM action_memo m JOIN node n USING (node_id) WHERE n.sha256 = %s",
                                 [bytes.fromhex(victim)]).fetchone()
    assert holder == grown["run"]


def test_a_hidden_child_made_again_leaves_its_input_done(hoard_home: Path, pg, redis_conn) -> None:
    """A child hidden (`hoard delete --node`) makes its input run once more; the fixed worker
    makes the same bytes, which stay hidden — and the next run over that input reuses it rather
    than run the worker on it again, and again, at every run."""
    cfg, (b1, _b2) = memo_home(hoard_home, pg, redis_conn)
    first = run(cfg, "--selector", selector(cfg, b1))
    made = live_children(cfg, first["run"])
    victim = sorted(made)[0]
    assert hoard(cfg.source, "delete", "--node", made[victim]).returncode == 0
    again = run(cfg)  # (both batches: another run) — the hidden child's input runs once more
    assert victim in made_by_run(cfg, again["run"]) and victim not in live_children(cfg, again["run"])
    other = sorted(set(made) - {victim})[0]
    both, one = cfg.source.parent / "both.txt", cfg.source.parent / "one.txt"
    both.write_text(f"{victim}\n{other}\n")
    one.write_text(f"{victim}\n")
    third = run(cfg, "--nodes", str(both))  # another selection holding it: a third run
    assert third["run"] not in (first["run"], again["run"]) and third["status"] == "done"
    assert (third["report"]["inputs_new"], third["report"]["inputs_reused"]) == (0, 2), third["report"]
    assert third["report"]["reused_from"] == {again["run"]: 1, first["run"]: 1}
    assert not made_by_run(cfg, third["run"])  # the worker did not run
    forced = run(cfg, "--nodes", str(one), "--rerun")
    assert forced["report"]["inputs_new"] == 1 and victim in made_by_run(cfg, forced["run"])


def test_black_listing_one_runs_none_and_rerun_runs_all(hoard_home: Path, pg, redis_conn) -> None:
    """All inputs done, one black-listed: a new run (another key) that starts no worker and says
    so; the same selection with --rerun runs the worker on every input again."""
    cfg, (b1, _b2) = memo_home(hoard_home, pg, redis_conn)
    first = run(cfg)
    n = len(pngs(cfg))
    assert first["report"]["inputs_new"] == n and len(made_by_run(cfg, first["run"])) == n
    with psycopg.connect(cfg.database_url) as conn:
        edges = conn.execute("SELECT count(*) FROM edge").fetchone()[0]
    write_contract(cfg, "drop-one", f'action_type = "AC1"\nversion = 1\n\n[input_selector]\nbatches = ["{b1}"]\n\n'
                   '[[rules]]\nwhere = { file_types = ["png"], order = "sha256", limit = 1 }\nblack_list = true\n')
    res = hoard(cfg.source, "action", "run", "drop-one", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(pngs(cfg)) == n - 1
    shrunk = run(cfg)
    assert shrunk["run"] != first["run"] and shrunk["status"] == "done"
    assert (shrunk["report"]["inputs_new"], shrunk["report"]["inputs_reused"]) == (0, n - 1)
    assert "skipped" in shrunk["report"]["stage"] and "skipped" in shrunk["report"]["run"], shrunk["report"]
    assert not (cfg.ssd.root / "state" / "actions" / f"{shrunk['run']}.worker.log").exists()  # no worker started
    assert made_by_run(cfg, shrunk["run"]) == set()
    text = hoard(cfg.source, "action", "status", shrunk["run"])
    assert f"{n - 1} reused, 0 new" in text.stdout and "no worker started" in text.stdout
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM edge").fetchone()[0] == edges
    again = run(cfg, "--rerun")
    assert again["run"] not in (first["run"], shrunk["run"]) and again["status"] == "done"
    assert (again["report"]["inputs_new"], again["report"]["inputs_reused"]) == (n - 1, 0)
    assert made_by_run(cfg, again["run"]) == pngs(cfg)
    with psycopg.connect(cfg.database_url) as conn:  # the memo names the rerun now: its results are the newest
        holders = conn.execute("SELECT encode(n.sha256, 'hex'), m.run_id FROM action_memo m JOIN node n USING (node_id)"
                               ).fetchall()
    assert {h: r for h, r in holders if h in pngs(cfg)} == dict.fromkeys(pngs(cfg), again["run"])


def test_edges_are_the_actions_own_and_info_names_the_run(hoard_home: Path, pg, redis_conn) -> None:
    """The action's children named `thumbnail_of`, a name the yt-dlp adapter registers as the
    ingest's: its edges are of a type of the action's own (action_id its), the ingest's type is
    untouched, and `hoard info` of a child says "made by made v1, run R"."""
    cfg, _batches = memo_home(hoard_home, pg, redis_conn)
    doc = run(cfg)
    with psycopg.connect(cfg.database_url) as conn:
        types = conn.execute("SELECT a.name, count(e.*) FROM relationship_type r JOIN action a USING (action_id) "
                             "LEFT JOIN edge e USING (rel_id) WHERE r.name = 'thumbnail_of' GROUP BY 1 ORDER BY 1"
                             ).fetchall()
        child = conn.execute("SELECT encode(n.sha256, 'hex') FROM physical_path pp JOIN node n USING (node_id) "
                             "WHERE pp.locator LIKE %s LIMIT 1", [f"action:{doc['run']}/%"]).fetchone()[0]
    assert len(types) == 2 and dict(types)["made"] == len(pngs(cfg)), types  # (the ingest's is the other)
    assert all(count == 0 for name, count in types if name != "made"), types
    info = hoard(cfg.source, "info", child)
    assert info.returncode == 0, info.stdout + info.stderr
    assert f"made by:   made v1, run {doc['run']}" in info.stdout, info.stdout
    assert "(thumbnail_of, made by made)" in info.stdout, info.stdout
    facts = json.loads(hoard(cfg.source, "info", child, "--json").stdout)["database"]
    assert facts["made_by"] == [{"action": "made", "version": 1, "run": doc["run"]}]
    with psycopg.connect(cfg.database_url) as conn:  # what the node page shows
        assert browse.node(conn, child)["made_by"] == facts["made_by"]


#: a first stage: every PNG labelled (AC1)
SEEN = 'action_type = "AC1"\nversion = 1\n\n[input_selector]\nfile_types = ["png"]\n\n' \
       '[[rules]]\nwhere = { file_types = ["png"] }\nlabel = { key = "seen", value = "yes" }\n'


def test_pipeline_watching_a_source_starts_on_ingest(hoard_home: Path, pg, redis_conn) -> None:
    """A pipeline bound to source gallery (`hoard pipeline watch`) goes through both its stages
    over a gallery batch ingested after the binding — no `advance` — and not over one before."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    b1, b2 = generate(zone3a, Spec(seed=93, batches=2, items_per_batch=5, sources=("gallery",), large_max_mb=1,
                                   ready_signal=True))
    assert [s.status for s in ingest_all(cfg, redis_conn, [zone3a / b1.batch_id])] == ["done"]
    cfg.actions_dir.mkdir(exist_ok=True)
    write_contract(cfg, "seen", SEEN)
    write_contract(cfg, "made", CONTRACT.format(
        python=json.dumps(sys.executable), worker=json.dumps(str(WORKER)),
        root='run_as = "root"\nallow_root = true' if os.geteuid() == 0 else ""))
    res = hoard(cfg.source, "pipeline", "define", "auto", "seen", "made")
    assert res.returncode == 0, res.stdout + res.stderr
    res = hoard(cfg.source, "pipeline", "watch", "auto", "--source", "gallery")
    assert res.returncode == 0 and "starts on every new batch of source gallery" in res.stdout, res.stdout + res.stderr
    assert [s.status for s in ingest_all(cfg, redis_conn, [zone3a / b2.batch_id])] == ["done"]
    shown = json.loads(hoard(cfg.source, "pipeline", "show", "auto", "--json").stdout)["pipelines"][0]
    assert [(b["batch"], b["last_done"]) for b in shown["batches"]] == [(b2.batch_id, "made")], shown
    assert shown["watch"]["source"] == "gallery" and shown["watch"]["selector"] is None
    (made_run,) = [r["run"] for r in json.loads(hoard(cfg.source, "action", "runs", "--json").stdout)["runs"]
                   if r["action"] == "made" and r["status"] == "done"]
    assert made_by_run(cfg, made_run) == pngs(cfg, b2.batch_id)
    with psycopg.connect(cfg.database_url) as conn:
        seen = {r[0] for r in conn.execute("SELECT encode(n.sha256, 'hex') FROM label l JOIN node n USING (node_id) "
                                           "WHERE l.key = 'seen'")}
    assert seen == pngs(cfg, b2.batch_id)  # stage 0 ran over batch 2 only
    off = hoard(cfg.source, "pipeline", "watch", "auto", "--off")
    assert off.returncode == 0 and "watches no source now" in off.stdout, off.stdout + off.stderr
