"""`hoard action collect RUN` takes what a waiting run produced so far; the run's own apply takes
that back and writes its final outputs (jobs/actions/collect.py, steps.withdraw_collected): a
row collected from a file the worker had not finished does not outlive the run. A run being
cancelled is not collected, and `hoard action status` names a command that works for runs
driven by --here, being cancelled, or waiting for a remote host (jobs/actions/nextstep.py).
Real PostgreSQL, Redis and `hoard` processes; the external worker is this test writing its files."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.helpers import write_contract
from tests.test_action_runs import action_home, hoard
from tests.test_action_workers import inputs_of
from tests.test_truthful_status import live_worker

pytestmark = pytest.mark.services

CONTRACT = """action_type = "AC2"
version = 1

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "external"
timeout_s = 3600

[[output_parser.results]]
name = "edges"
glob = "edges.jsonl"
format = "jsonl"
node_field = "sha"
node_key = "sha256"

[result_mapping.edges]
into = "result_canny"
columns = {{ status = "status", edge_ratio = "ratio" }}
labels = [{{ key = "edge_class", value = "{{class}}" }}]
"""


def line(sha: str, ratio: float, klass: str) -> str:
    return json.dumps({"sha": sha, "status": "ok", "ratio": ratio, "class": klass}) + "\n"


def test_the_final_apply_wins_over_a_row_collected_from_a_half_written_file(hoard_home: Path, pg,
                                                                            redis_conn) -> None:
    """An external worker part way through its results file: collect takes the rows written so
    far, one of them a value the worker then corrects (a half-written line, `0.1` of `0.15`);
    when the run ends, each input holds exactly the final file's row and label — the collected
    value and label are gone, a label someone set by hand stays."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=657, items=3)
    write_contract(cfg, "edgy", CONTRACT.format(batch=batch))
    res = hoard(cfg.source, "action", "run", "edgy", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    shas = inputs_of(cfg, batch)
    out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
    out.mkdir(parents=True, exist_ok=True)
    # part way: the first line whole, the second cut short after "0.1" (of 0.15) and its class
    (out / "edges.jsonl").write_text(line(shas[0], 0.5, "sharp") + line(shas[1], 0.1, "soft"))
    got = hoard(cfg.source, "action", "collect", rid, "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    assert json.loads(got.stdout)["results"] == 2
    assert hoard(cfg.source, "label", "add", "edge_class=soft", shas[2]).returncode == 0  # a person's own

    def rows() -> tuple[list[tuple[str, float]], list[tuple[str, str, str]]]:
        with psycopg.connect(cfg.database_url) as conn:
            canny = conn.execute("SELECT encode(n.sha256, 'hex'), round(c.edge_ratio::numeric, 2)::float "
                                 "FROM result_canny c JOIN node n USING (node_id) WHERE c.batch_id = %s ORDER BY 1",
                                 [rid]).fetchall()
            labels = conn.execute("SELECT encode(n.sha256, 'hex'), l.value, l.origin FROM label l JOIN node n "
                                  "USING (node_id) WHERE l.key = 'edge_class' ORDER BY 1, 2").fetchall()
        return [(s, r) for s, r in canny], [(s, v, o) for s, v, o in labels]

    canny, labels = rows()
    assert dict(canny) == {shas[0]: 0.5, shas[1]: 0.1}
    assert (shas[1], "soft", "action:edgy") in labels

    (out / "edges.jsonl").write_text(line(shas[0], 0.5, "sharp") + line(shas[1], 0.15, "grainy")
                                     + line(shas[2], 0.25, "sharp"))
    (out / "_DONE").write_text("")
    fin = hoard(cfg.source, "action", "resume", rid, "--here")
    assert fin.returncode == 0, fin.stdout + fin.stderr
    canny, labels = rows()
    assert dict(canny) == {shas[0]: 0.5, shas[1]: 0.15, shas[2]: 0.25} and len(canny) == 3, canny
    mine = sorted((s, v) for s, v, o in labels if o == "action:edgy")
    assert mine == sorted([(shas[0], "sharp"), (shas[1], "grainy"), (shas[2], "sharp")]), labels
    assert [(s, v) for s, v, o in labels if o != "action:edgy"] == [(shas[2], "soft")], labels


def test_collect_of_a_run_being_cancelled_is_refused_and_writes_nothing(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard action cancel RUN` while a step of the waiting run holds its lock (its poll) only
    asks for the cancel; a collect after that takes nothing from the run: one line naming the
    cancel and the way on, no row written; status names `hoard action cancel RUN`, which ends it."""
    from hoardfs.base.files import flocked
    from hoardfs.jobs.actions.state import lock_path

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=659, items=2)
    write_contract(cfg, "edgy", CONTRACT.format(batch=batch))
    rid = json.loads(hoard(cfg.source, "action", "run", "edgy", "--json").stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    shas = inputs_of(cfg, batch)
    out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "edges.jsonl").write_text(line(shas[0], 0.5, "sharp"))
    with flocked(lock_path(cfg, rid)):  # as the run's poll holds it while it looks
        asked = hoard(cfg.source, "action", "cancel", rid)
    assert asked.returncode == 0 and "cancel asked" in asked.stdout, asked.stdout + asked.stderr
    got = hoard(cfg.source, "action", "collect", rid)
    lines = [ln for ln in (got.stdout + got.stderr).splitlines() if ln.strip()]
    assert got.returncode == 2 and len(lines) == 1, lines
    assert "cancel" in lines[0] and f"hoard action cancel {rid}" in lines[0] and "Traceback" not in lines[0], lines
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM result_canny WHERE batch_id = %s", [rid]).fetchone()[0] == 0
    with live_worker(redis_conn):  # its queue served: the next command is the cancel, not a collect
        doc = json.loads(hoard(cfg.source, "action", "status", rid, "--json").stdout)
    assert doc["next"] == f"hoard action cancel {rid}", doc
    done = hoard(cfg.source, "action", doc["next"].split()[2], rid)
    assert done.returncode == 0 and f"run {rid}: cancelled" in done.stdout, done.stdout + done.stderr


def test_status_of_a_run_driven_here_names_collect_not_a_worker(hoard_home: Path, pg, redis_conn) -> None:
    """An external run that `hoard action run --here` drives (it polls in the foreground, no
    worker anywhere): status names `hoard action collect RUN`, not `hoard worker` — the command
    it names works — and health warns of no queue."""
    import subprocess
    import sys
    import time

    from hoardfs.base import config
    from hoardfs.jobs.actions import api
    from tests.test_truthful_status import queue_warnings

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=661, items=2)
    write_contract(cfg, "edgy", CONTRACT.format(batch=batch))
    here = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "action", "run", "edgy",
                             "--here"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = api.runs(cfg)
            if runs and runs[0]["status"] == "waiting_external":
                break
            assert here.poll() is None, here.communicate()
            time.sleep(0.3)
        (rid,) = [r["run"] for r in api.runs(cfg)]
        doc = json.loads(hoard(cfg.source, "action", "status", rid, "--json").stdout)
        assert doc["status"] == "waiting_external" and doc["next"] == f"hoard action collect {rid}", doc
        assert queue_warnings(config.load(cfg.source)) == []
        res = hoard(cfg.source, *doc["next"].split()[1:])
        assert res.returncode == 0 and "collected 0 children" in res.stdout, res.stdout + res.stderr
    finally:
        here.terminate()
        try:
            here.wait(timeout=60)
        except subprocess.TimeoutExpired:
            here.kill()
            here.wait()


def test_a_remote_run_with_the_servers_worker_alive_names_a_remote_hosts_worker(hoard_home: Path, pg,
                                                                                 redis_conn) -> None:
    """A --remote run waiting for a host while the server's own `hoard worker` serves every
    queue but `remote`: the next command is a worker on a host whose hoard.toml says
    `[worker] remote = true` — not a bare `hoard worker`, which the server runs already and
    which would not serve `remote`."""
    from hoardfs.base import config
    from hoardfs.jobs.actions.nextstep import next_command
    from hoardfs.jobs.actions.state import load_state
    from hoardfs.jobs.queues import QUEUES
    from tests.test_remote_actions import _recorded

    cfg = config.load(hoard_home / "hoard.toml")
    rid = _recorded(cfg, "waiting_remote")
    st = load_state(cfg, rid)
    with live_worker(redis_conn, QUEUES):
        got = next_command(cfg, st, st.status, stalled=False, refused=None, conn=redis_conn)
    assert got is not None and got.startswith("hoard worker on a host") and "remote = true" in got, got
