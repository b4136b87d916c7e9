"""AC2–AC4 runs end to end with simple test workers (python scripts writing files): stage into
3C, run, parse, store the children (class generated), ONE write-intent, finish cleaning 3C —
and the faults a run must survive: kill -9 of the runner at every step, a worker exiting
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

from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.state import load_state
from tests.helpers import ACTION_CONTRACT, GATE, worker_contract, write_contract
from tests.test_action_runs import action_home, counts, hoard, kill_at
from tests.test_ingest_faults import set_url

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

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
        events = conn.execute("SELECT status FROM action_event WHERE batch_id = %s AND status = 'done'",
                              [rid]).fetchall()
        endings = conn.execute("SELECT count(*) FROM action_event WHERE batch_id = %s AND status <> 'done'",
                               [rid]).fetchone()[0]
    assert len(children) == n and {loc.split("/", 1)[1].split("/")[0] for _, loc in children} == {"thumbs"}
    assert rel is not None and edges == n and results == [("ok", 0.5)] * n and events == [("done",)]
    assert after["node"] - base["node"] == n and after["action_event"] - base["action_event"] == 1 + endings
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
    assert counts(cfg)["node"] == base["node"]
    assert ending_events(cfg, rid) == [("failed", load_state(cfg, rid).error)]  # the error line, once
    assert "exited with status 3" in load_state(cfg, rid).error
    worker_contract(cfg, batch, exit=0)  # the worker fixed (the contract's version unchanged: the same run)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]  # the success added none


def ending_events(cfg: config.Settings, rid: str) -> list[tuple[str, str]]:
    """The failed/cancelled action_event rows of a run: (status, detail's error), oldest first."""
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT status, detail->>'error' FROM action_event WHERE batch_id = %s AND status "
                            "<> 'done' ORDER BY event_id", [rid]).fetchall()


def test_worker_that_never_finishes_is_killed_at_its_timeout(hoard_home: Path, pg, redis_conn) -> None:
    """A worker past run_spec.timeout_s is killed; the run fails at `run` saying so; nothing in SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=84, items=3)
    worker_contract(cfg, batch, sleep=600, timeout_s=1)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "did not finish within 1 s" in res.stdout + res.stderr
    assert counts(cfg) == {**base, **{k: counts(cfg)[k] for k in ("action", "action_batch", "batch_member",
                                                                 "applied_intent", "action_event")}}
    (rid,) = [r["run"] for r in api.runs(cfg)]
    ((status, error),) = ending_events(cfg, rid)
    assert status == "failed" and "did not finish within 1 s" in error


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
        assert conn.execute("SELECT status FROM action_event WHERE batch_id LIKE 'thumbs-%'").fetchall() == [
            ("failed",)]
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
    from hoardfs.jobs.actions import run_here, steps

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
    runner = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "action", "run", "thumbs",
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
    assert counts(cfg)["action_event"] == base["action_event"] + 1
    assert ending_events(cfg, rid) == [("cancelled", "cancelled at step run")]


def test_external_done_marker_with_outputs_missing_fails_at_parse(hoard_home: Path, pg, redis_conn) -> None:
    """An external worker writes `_DONE` but none of the declared outputs (no results file):
    the run fails at parse naming the problem; nothing in SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=88, items=3)
    worker_contract(cfg, batch, run_spec='kind = "external"\ntimeout_s = 3600')
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    from hoardfs.jobs.actions import run_here, steps
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
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM action_event WHERE batch_id = %s AND status = 'done'",
                            [rid]).fetchone() == (0,)


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


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan whose reaper has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:].split()[0] != b"Z"


def _session(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != b"Z":
                found.append(int(d))
    return found


def _runner_at_worker(cfg: config.Settings) -> tuple[subprocess.Popen, str, int]:
    """`hoard action run thumbs --here` started and seen with its worker recorded in the state and
    the worker's forked process (its session's second) running."""
    runner = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "action", "run", "thumbs",
                               "--here"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = api.runs(cfg)
        if runs:
            st = load_state(cfg, runs[0]["run"])
            # the worker (ACTION_WORKER with a sleep) forks a process that outlives it: the runner is
            # killed only once that process is there, or the kill can come first and leave nothing
            if st is not None and st.worker and len(_session(st.worker["sid"])) >= 2:
                return runner, st.run_id, st.worker["sid"]
        assert runner.poll() is None, runner.communicate()
        time.sleep(0.1)
    runner.kill()
    raise AssertionError("the worker never started")


@pytest.mark.expect_log(r"a stopped runner left", level="WARNING")
def test_runner_killed_while_its_worker_runs_ends_that_worker_on_resume(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of the `--here` runner while its worker runs leaves the worker running in its own
    session; the same command again ends it first (TERM, then KILL) before it empties the output
    root and starts another, and the result is there exactly once."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=91, items=3)
    worker_contract(cfg, batch, sleep=600)
    base = counts(cfg)
    runner, rid, worker = _runner_at_worker(cfg)
    try:
        runner.kill()
        runner.wait(timeout=60)
        # the worker itself dies with its runner (PR_SET_PDEATHSIG); what it started in its
        # session does not: the kill -9 left that running
        left = _session(worker)
        assert left
        worker_contract(cfg, batch, sleep=0)  # the next attempt finishes at once
        res = hoard(cfg.source, "action", "run", "thumbs", "--here")
        assert res.returncode == 0, res.stdout + res.stderr
        assert not _session(worker)
        assert load_state(cfg, rid).worker is None
        assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
    finally:
        for pid in _session(worker):
            os.kill(pid, 9)


@pytest.mark.expect_log(r"a stopped runner left", level="WARNING")
def test_cancel_of_a_run_whose_runner_died_ends_its_worker(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of the runner while its worker runs, then `hoard action cancel RUN`: the worker
    left behind is ended, the run cancelled, 3C cleaned."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=92, items=3)
    worker_contract(cfg, batch, sleep=600)
    runner, rid, worker = _runner_at_worker(cfg)
    try:
        runner.kill()
        runner.wait(timeout=60)
        assert _session(worker)  # the worker's session outlives the runner (see above)
        res = hoard(cfg.source, "action", "cancel", rid)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not _session(worker)
        assert load_state(cfg, rid).status == "cancelled"
        assert not (cfg.ssd.zone_path("3C") / rid).exists()
        assert ending_events(cfg, rid) == [("cancelled", "cancelled at step run")]
    finally:
        for pid in _session(worker):
            os.kill(pid, 9)


#: a worker that writes, for each staged input, a child listing what it was given beside its
#: inputs: the files under {parents_root} and {children_root} (each by its content's sha256)
CONTEXT_WORKER = """
import hashlib, json, os, sys
inp, out, parents, children = sys.argv[1:5]
def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
def names(root):
    return sorted(digest(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
seen = {"parents": names(parents), "children": names(children)}
os.makedirs(os.path.join(out, "thumbs"))
for d, _, files in os.walk(inp):
    for f in files:
        sha = digest(os.path.join(d, f))
        with open(os.path.join(out, "thumbs", sha + ".txt"), "w") as c:
            json.dump({"input": sha, **seen}, c)
"""


def children_of(cfg: config.Settings, rid: str) -> list[str]:
    """sha256 of the children a run stored (located `action:<run>/…`)."""
    with psycopg.connect(cfg.database_url) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT encode(n.sha256, 'hex') FROM physical_path p JOIN node n USING (node_id) WHERE p.locator LIKE %s",
            [f"action:{rid}/%"]))


def thumbs_then_context(cfg: config.Settings, batch: str, file_types: list[str], *,
                        children: bool = True) -> tuple[list[str], list[str]]:
    """A first run (`thumbs`) makes a child of each PNG of `batch`; then the contract `context`
    (CONTEXT_WORKER) over the nodes of `file_types`, staging their parents (and `children`: their
    children). The PNGs and the thumbs, by sha256."""
    worker_contract(cfg, batch)
    first = hoard(cfg.source, "action", "run", "thumbs", "--here", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    pngs, thumbs = inputs_of(cfg, batch), children_of(cfg, json.loads(first.stdout)["run"])
    assert pngs and len(thumbs) == len(pngs)
    script = cfg.actions_dir / "context-worker.py"
    script.write_text(CONTEXT_WORKER)
    below = "{children_root}" if children else "{parents_root}"
    body = ACTION_CONTRACT.format(type="AC2", batch=batch, gate="", run_spec=(
        f'kind = "local"\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, "{{input_root}}", '
        f'"{{output_root}}", "{{parents_root}}", "{below}"]'
        + ('\nrun_as = "root"\nallow_root = true' if os.geteuid() == 0 else '')))
    body = body.replace(f'batches = ["{batch}"]\nfile_types = ["png"]', f"file_types = {json.dumps(file_types)}")
    body = body.replace('layout = "by_sha256"', 'layout = "by_sha256"\ninclude_parents = true'
                        + ("\ninclude_children = true" if children else ""))
    write_contract(cfg, "context", body.split("[[output_parser.results]]")[0])
    return pngs, thumbs


def given_context(cfg: config.Settings, rid: str) -> list[dict]:
    """What CONTEXT_WORKER saw of each input of run `rid` (its children's content)."""
    with Store.open(cfg, writable=False) as store:
        return [json.loads(store.get(sha)) for sha in children_of(cfg, rid)]


def test_stage_layout_include_parents_and_children(hoard_home: Path, pg, redis_conn) -> None:
    """stage_layout.include_parents / include_children stage each input's parents and children
    (one edge away) into `<layout>/parents/` and `<layout>/children/`, which the worker finds at
    {parents_root} and {children_root}: a first run makes a child of each PNG; a second, over the
    PNGs and those children together, is given the PNGs as parents and the children as children."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=93, items=4)
    pngs, thumbs = thumbs_then_context(cfg, batch, ["png", "txt"])
    res = hoard(cfg.source, "action", "run", "context", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    given = given_context(cfg, json.loads(res.stdout)["run"])
    assert sorted(g["input"] for g in given) == sorted(pngs + thumbs)
    for g in given:  # every PNG is a parent (of its thumb), every thumb a child (of its PNG), and no thumb a parent
        parents, children = ({n.split(".")[0] for n in g[k]} for k in ("parents", "children"))
        assert parents >= set(pngs) and children >= set(thumbs) and not parents & set(thumbs)


def test_context_is_fixed_by_the_plan_a_kill_after_it_does_not_change(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of the runner right after plan recorded the stage request (its state not yet
    saved), then a parent is deleted: the resumed run stages the parents the plan chose (less
    the deleted one) and is done — before, plan ran again, chose other parents, and the stage
    request it submitted under the run's id was refused as another request ('ids are
    immutable'): the run could not go on."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=95, items=4)
    pngs, thumbs = thumbs_then_context(cfg, batch, ["txt"], children=False)
    kill_at(cfg, "plan", "context")
    (rid,) = [r["run"] for r in api.runs(cfg) if r["action"] == "context"]
    gone = hoard(cfg.source, "delete", "--node", pngs[0])
    assert gone.returncode == 0, gone.stderr
    res = hoard(cfg.source, "action", "resume", rid, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    given = given_context(cfg, rid)
    assert sorted(g["input"] for g in given) == sorted(thumbs)
    for g in given:
        assert {n.split(".")[0] for n in g["parents"]} == set(pngs[1:])


def test_context_the_inputs_layout_cannot_place_is_laid_out_by_sha256(hoard_home: Path, pg, redis_conn) -> None:
    """Stage layout by_batch ({source}/{batch}/{orig_path}) with include_children: the children
    an action made have no batch, source or original path — they are staged under children/ by
    sha256 and the run is done (before: the stage failed, 'node N has no source; layout by_batch
    needs it … or narrow the selector', and every resume failed the same way: the children are
    fixed at plan)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=96, items=4)
    pngs, thumbs = thumbs_then_context(cfg, batch, ["png"])
    path = cfg.actions_dir / "context.toml"
    path.write_text(path.read_text().replace('layout = "by_sha256"', 'layout = "by_batch"'))
    res = hoard(cfg.source, "action", "run", "context", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    given = given_context(cfg, json.loads(res.stdout)["run"])
    assert sorted(g["input"] for g in given) == pngs
    assert all(g["children"] == sorted(thumbs) and g["parents"] == [] for g in given)


def test_a_context_root_without_its_stage_key_is_refused(hoard_home: Path, pg, redis_conn) -> None:
    """{parents_root} in a run spec without stage_layout.include_parents = true: `hoard action
    validate` and `run` refuse the contract with one line naming both, and nothing is run."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=94, items=3)
    path = worker_contract(cfg, batch)
    path.write_text(path.read_text().replace('"{output_root}"', '"{output_root}", "{parents_root}"'))
    base = counts(cfg)
    for cmd in (("action", "validate", str(path)), ("action", "run", "thumbs", "--here")):
        res = hoard(cfg.source, *cmd)
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 2 and any("{parents_root}" in ln and "include_parents" in ln for ln in lines), lines
    assert api.runs(cfg) == [] and counts(cfg) == base
