"""AC2–AC4 runs end to end with simple test workers (python scripts writing files): stage into
3C, run, parse, store the children (class generated), ONE write-intent, finish cleaning 3C —
and the faults of issue 35 item 8: kill -9 of the runner at every step, a worker exiting
non-zero, a timeout, `_DONE` with outputs missing, PostgreSQL down at apply, cancel while
running, the gate never released, more children than a4_scale. Real PostgreSQL, Redis, store
and files; the workers are real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from fsd.base import config
from fsd.store import Store
from jobs.actions import api
from jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard, kill_at, write_contract
from tests.test_ingest_faults import set_url

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: a worker: each staged input → thumbs/<sha>.txt (a child) and a line of edges.jsonl (a result);
#: CHILDREN children per input, then EXIT
WORKER = """
import json, os, sys, time
inp, out = sys.argv[1], sys.argv[2]
CHILDREN, EXIT, SLEEP = {children}, {exit}, {sleep}
os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)
with open(os.path.join(out, "edges.jsonl"), "w") as res:
    for d, _, files in os.walk(inp):
        for f in sorted(files):
            sha = f.split(".")[0]
            data = open(os.path.join(d, f), "rb").read()
            for k in range(CHILDREN):
                name = sha if k == 0 else f"{{sha}}_{{k}}"
                with open(os.path.join(out, "thumbs", name + ".txt"), "wb") as c:
                    c.write(b"thumb %d of " % k + data[:64][::-1])
            res.write(json.dumps({{"sha": sha, "status": "ok", "ratio": 0.5}}) + "\\n")
if SLEEP:
    stop = os.path.join(out, "..", "stop")
    end = time.time() + SLEEP
    while time.time() < end and not os.path.exists(stop):
        time.sleep(0.05)
sys.exit(EXIT)
"""

CONTRACT = """action_type = "{type}"
version = 1
a4_scale = 2

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
{run_spec}

{gate}
[[output_parser.children]]
glob = "thumbs/*.txt"
parent_match = "thumbs/(?P<input>[0-9a-f]{{64}})(_[0-9]+)?\\\\.txt"
parent_key = "sha256"
relationship = "thumb_of"

[[output_parser.results]]
name = "edges"
glob = "edges.jsonl"
format = "jsonl"
node_field = "sha"
node_key = "sha256"

[result_mapping.edges]
into = "result_canny"
columns = {{ status = "status", edge_ratio = "ratio" }}
"""


def worker_contract(cfg: config.Settings, batch: str, name: str = "thumbs", *, children: int = 1, exit: int = 0,
                    sleep: float = 0, timeout_s: int = 600, type: str = "AC2", gate: str = "",
                    run_spec: str | None = None) -> Path:
    script = cfg.actions_dir / f"{name}-worker.py"
    script.write_text(WORKER.format(children=children, exit=exit, sleep=sleep))
    spec = run_spec or (f'kind = "local"\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, '
                        f'"{{input_root}}", "{{output_root}}"]\ntimeout_s = {timeout_s}'
                        # as root, the worker would be actions.worker_user (nobody), who cannot enter
                        # pytest's root-only tmp_path: the test worker runs as root, allowed
                        + ('\nrun_as = "root"\nallow_root = true' if os.geteuid() == 0 else ''))
    return write_contract(cfg, name, CONTRACT.format(type=type, batch=batch, run_spec=spec, gate=gate))


def inputs_of(cfg: config.Settings, batch: str) -> list[str]:
    with psycopg.connect(cfg.database_url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT encode(n.sha256, 'hex') FROM batch_member m JOIN node n USING (node_id) JOIN physical_content "
            "pc USING (node_id) WHERE m.batch_id = %s AND pc.file_type = 'png' ORDER BY 1", [batch])]


def assert_produced_once(cfg: config.Settings, base: dict[str, int], rid: str, n: int) -> None:
    """What one run over n inputs writes, exactly once: n children (readable, class generated,
    located `action:<run>/…`), n edges of a type registered with the action, n result rows, one
    event; 3C cleaned."""
    after = counts(cfg)
    with psycopg.connect(cfg.database_url) as conn:
        children = conn.execute("SELECT encode(n.sha256, 'hex'), p.locator FROM physical_path p JOIN node n "
                                "USING (node_id) WHERE p.locator LIKE %s", [f"action:{rid}/%"]).fetchall()
        rel = conn.execute("SELECT a.name FROM relationship_type r JOIN action a USING (action_id) "
                           "WHERE r.name = 'thumb_of'").fetchone()
        edges = conn.execute("SELECT count(*) FROM edge JOIN relationship_type r USING (rel_id) "
                             "WHERE r.name = 'thumb_of'").fetchone()[0]
        results = conn.execute("SELECT status, edge_ratio FROM result_canny WHERE batch_id = %s", [rid]).fetchall()
        events = conn.execute("SELECT status FROM action_event WHERE batch_id = %s", [rid]).fetchall()
    assert len(children) == n and {loc.split("/", 1)[1].split("/")[0] for _, loc in children} == {"thumbs"}
    assert rel is not None and edges == n and results == [("ok", 0.5)] * n and events == [("done",)]
    assert after["node"] - base["node"] == n and after["action_event"] - base["action_event"] == 1
    with Store.open(cfg, writable=False) as store:
        for sha, _ in children:
            assert store.get(sha).startswith(b"thumb 0 of ")
    assert not (cfg.ssd.zone_path("3C") / rid).exists()


def test_ac2_end_to_end_then_done_already(hoard_home: Path, pg, redis_conn) -> None:
    """stage → run → parse → store → apply → finish through the CLI; the same again changes nothing."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=81, items=8)
    worker_contract(cfg, batch)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "done" and doc["done"] == ["plan", "stage", "run", "parse", "store", "apply", "finish"]
    n = len(inputs_of(cfg, batch))
    assert n > 0 and doc["inputs"] == n
    assert_produced_once(cfg, base, doc["run"], n)
    before = counts(cfg)
    again = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert again.returncode == 0 and "done already" in again.stdout
    assert counts(cfg) == before


@pytest.mark.parametrize("step", ["stage", "run", "parse", "store", "apply", "finish"])
def test_ac2_killed_at_each_step_resumes_exactly_once(hoard_home: Path, pg, redis_conn, step: str) -> None:
    """kill -9 of the runner right after a step's work, then the same command: the same result as
    one clean run — no duplicate children, edges, results or events."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=82, items=6)
    worker_contract(cfg, batch)
    base = counts(cfg)
    kill_at(cfg, step, "thumbs")
    res = hoard(cfg.source, "action", "run", "thumbs", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert_produced_once(cfg, base, doc["run"], len(inputs_of(cfg, batch)))


def test_worker_exiting_non_zero_fails_keeps_output_then_resumes(hoard_home: Path, pg, redis_conn) -> None:
    """A worker that exits 3: the run fails at `run` with one line naming the status, the log and
    where the output is kept; nothing reaches SQL; fixed, the same command completes it."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=83, items=4)
    worker_contract(cfg, batch, exit=3)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 5 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "failed at step run" in lines[0] and "exited with status 3" in lines[0], lines
    (rid,) = [r["run"] for r in api.runs(cfg)]
    assert f"3C/{rid}/by_sha256/output" in lines[0] and (cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output").is_dir()
    assert counts(cfg)["action_event"] == base["action_event"] and counts(cfg)["node"] == base["node"]
    worker_contract(cfg, batch, exit=0)  # the worker fixed (the contract's version unchanged: the same run)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))


def test_worker_that_never_finishes_is_killed_at_its_timeout(hoard_home: Path, pg, redis_conn) -> None:
    """A worker past run_spec.timeout_s is killed; the run fails at `run` saying so; nothing in SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=84, items=3)
    worker_contract(cfg, batch, sleep=600, timeout_s=1)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "did not finish within 1 s" in res.stdout + res.stderr
    assert counts(cfg) == {**base, **{k: counts(cfg)[k] for k in ("action", "action_batch", "batch_member",
                                                                 "applied_intent")}}


def test_more_children_than_a4_scale_refused_before_anything_is_written(hoard_home: Path, pg, redis_conn) -> None:
    """3 children per input with a4_scale = 2: failed at parse, nothing stored or written to SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=85, items=4)
    worker_contract(cfg, batch, children=3)
    with Store.open(cfg, writable=False) as store:
        objects = store.index.count_objects()
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode != 0 and "failed at step parse" in res.stdout + res.stderr, res.stdout + res.stderr
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM physical_path WHERE locator LIKE 'action:%'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM action_event WHERE batch_id LIKE 'thumbs-%'").fetchone() == (0,)
    with Store.open(cfg, writable=False) as store:
        assert store.index.count_objects() == objects


def test_database_down_at_apply_writes_nothing_then_resumes(hoard_home: Path, pg, redis_conn) -> None:
    """PostgreSQL unreachable at apply: exit 3, failed at apply with one line naming PostgreSQL,
    nothing of the run in SQL; back, the same command completes it once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=86, items=4)
    worker_contract(cfg, batch)
    base = counts(cfg)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    good = Path(cfg.source).read_text()
    from jobs.actions import run_here, steps

    real = steps.STEPS["store"]

    def then_down(c, st) -> None:  # the database stops once the children are stored
        real(c, st)
        set_url(cfg.source, "database_url", f"host={hoard_home}/no-pg dbname=nothing connect_timeout=2")
        c.database_url = config.load(cfg.source).database_url

    steps.STEPS["store"] = then_down
    try:
        assert run_here(cfg, rid) == 3
    finally:
        steps.STEPS["store"] = real
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("failed", "apply") and st.error.startswith("PostgreSQL unreachable")
    Path(cfg.source).write_text(good)
    cfg = config.load(cfg.source)
    assert counts(cfg)["action_event"] == base["action_event"]
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_produced_once(cfg, {**base, **{k: counts(cfg)[k] for k in ("action", "action_batch", "batch_member")}},
                         rid, len(inputs_of(cfg, batch)))


def test_cancel_while_running_stops_the_worker(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard action cancel RUN` while its worker runs: the worker is stopped, the run is
    cancelled, 3C cleaned, nothing applied."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=87, items=3)
    worker_contract(cfg, batch, sleep=600)
    base = counts(cfg)
    runner = subprocess.Popen([sys.executable, "-m", "fsd", "--config", str(cfg.source), "action", "run", "thumbs",
                               "--here"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        rid = None
        while time.monotonic() < deadline:  # until its worker runs
            runs = api.runs(cfg)
            if runs and runs[0]["step"] == "run" and runs[0]["status"] == "running":
                rid = runs[0]["run"]
                break
            time.sleep(0.1)
        assert rid is not None
        res = hoard(cfg.source, "action", "cancel", rid)
        assert res.returncode == 0, res.stderr
        runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    st = load_state(cfg, rid)
    assert st.status == "cancelled"
    assert not (cfg.ssd.zone_path("3C") / rid).exists()
    assert counts(cfg)["action_event"] == base["action_event"]


def test_external_done_marker_with_outputs_missing_fails_at_parse(hoard_home: Path, pg, redis_conn) -> None:
    """An external worker writes `_DONE` but none of the declared outputs (no results file):
    the run fails at parse naming the problem; nothing in SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=88, items=3)
    worker_contract(cfg, batch, run_spec='kind = "external"\ntimeout_s = 3600')
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    from jobs.actions import run_here, steps
    real = steps.STEPS["run"]

    def done_without_outputs(c, st) -> None:  # the remote worker: only its marker
        out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
        out.mkdir(parents=True, exist_ok=True)
        (out / "_DONE").write_text("")
        real(c, st)

    steps.STEPS["run"] = done_without_outputs
    try:
        code = run_here(cfg, rid)
    finally:
        steps.STEPS["run"] = real
    st = load_state(cfg, rid)
    assert code != 0 and (st.status, st.step) == ("failed", "parse"), (st.status, st.step, st.error)
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM action_event WHERE batch_id LIKE 'thumbs-%'").fetchone() == (0,)


GATE = "[gate]\ntimeout_s = {timeout}\npoll_s = 5\n"


def test_gate_never_released_fails_at_its_timeout(hoard_home: Path, pg, redis_conn) -> None:
    """An AC3 run whose gate nobody releases fails at `gate` once gate.timeout_s passed, one line."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=89, items=3)
    worker_contract(cfg, batch, type="AC3", gate=GATE.format(timeout=1))
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "failed at step gate" in res.stdout + res.stderr and "not released within 1 s" in res.stdout + res.stderr


def test_gate_waits_without_a_worker_until_released(hoard_home: Path, pg, redis_conn) -> None:
    """Queued AC3 run: `hoard worker --burst` (every queue, no --queues) runs it to the gate and
    ends — the run waits in WAIT_GPU_READY holding no worker; `hoard action release RUN` and
    another worker take it to done."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=90, items=3)
    worker_contract(cfg, batch, type="AC3", gate=GATE.format(timeout=3600))
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    assert "actions" in w.stderr  # the new queue is served without --queues
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("WAIT_GPU_READY", "gate")
    rel = hoard(cfg.source, "action", "release", rid)
    assert rel.returncode == 0, rel.stderr
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr
    assert load_state(cfg, rid).status == "done"
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
