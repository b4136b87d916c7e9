"""AC2 runs whose worker is a real `docker run` (run_spec.kind = "docker") against a real Docker
daemon (tests/dockerd.py: started for the session, the test image imported from a busybox root
filesystem): the children stored exactly once, the container as the worker user (never root),
the input mounted read-only, no network; and no container left after a timeout, a cancel, an
interrupted runner (SIGINT/SIGTERM) or a runner killed with -9 (removed when the run resumes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.execute import worker_identity
from hoardfs.jobs.actions.state import load_state
from tests.dockerd import IMAGE, Daemon
from tests.test_action_runs import action_home, counts, hoard, write_contract
from tests.test_action_workers import ending_events, inputs_of

# tier: the module's tests start a Docker daemon, hoard processes and containers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

CONTRACT = """action_type = "AC2"
version = 1

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "docker"
image = "{image}"
args = ["/worker.sh", "{{input_root}}", "{{output_root}}", "{{param:pause}}"]
timeout_s = {timeout}

[params.pause]
type = "int"
default = 0

[[output_parser.children]]
glob = "copies/*"
parent_match = "copies/(?P<input>[0-9a-f]{{64}})\\\\.[a-z]+"
parent_key = "sha256"
relationship = "docker_copy_of"

[[output_parser.results]]
name = "facts"
glob = "facts.jsonl"
format = "jsonl"
node_field = "sha"
node_key = "sha256"

[result_mapping.facts]
into = "labels"
columns = {{ key = "key", value = "value" }}
"""


def docker_contract(cfg: config.Settings, batch: str, *, image: str = IMAGE, timeout: int = 600) -> None:
    write_contract(cfg, "copies", CONTRACT.format(batch=batch, image=image, timeout=timeout))


def container(rid: str) -> str:
    return f"hoard-{rid}"


def labels(cfg: config.Settings, key: str) -> dict[str, str]:
    """sha256 hex → the value of label `key`."""
    with psycopg.connect(cfg.database_url) as conn:
        return dict(conn.execute("SELECT encode(n.sha256, 'hex'), l.value FROM label l JOIN node n USING (node_id) "
                                 "WHERE l.key = %s", [key]).fetchall())


def test_docker_worker_end_to_end_as_the_worker_user_read_only_no_network(hoard_home: Path, pg, redis_conn,
                                                                           docker: Daemon) -> None:
    """`hoard action run --here` of a docker contract: each input copied by the container is a
    child, stored once; the container ran as the worker user (not root), could not write its
    input, had no network but loopback; it is gone afterwards; the same command is done already."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=95, items=5)
    docker_contract(cfg, batch)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "copies", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    rid = doc["run"]
    assert doc["status"] == "done" and doc["done"] == ["plan", "stage", "run", "parse", "store", "apply", "finish"]
    shas = inputs_of(cfg, batch)
    assert len(shas) > 0 and doc["inputs"] == len(shas)
    with psycopg.connect(cfg.database_url) as conn:
        children = conn.execute(
            "SELECT encode(p.sha256, 'hex'), encode(c.sha256, 'hex') FROM edge e JOIN relationship_type r "
            "USING (rel_id) JOIN node p ON p.node_id = e.parent_id JOIN node c ON c.node_id = e.child_id "
            "WHERE r.name = 'docker_copy_of'").fetchall()
        located = conn.execute("SELECT count(*) FROM physical_path WHERE locator LIKE %s",
                               [f"action:{rid}/copies/%"]).fetchone()[0]
    assert sorted(p for p, _ in children) == sorted(shas) and located == len(shas)  # one child per input, once
    with Store.open(cfg, writable=False) as store:
        for parent, child in children:
            assert store.get(child) == b"copied in docker\n" + store.get(parent)
    worker = worker_identity(None, False, cfg.actions.worker_user)
    assert worker.uid != 0
    assert labels(cfg, "docker_uid") == {s: str(worker.uid) for s in shas}
    assert labels(cfg, "docker_input") == {s: "read-only" for s in shas}
    assert labels(cfg, "docker_network") == {s: "lo" for s in shas}
    assert docker.containers(container(rid)) == []
    assert not (cfg.ssd.zone_path("3C") / rid).exists()
    after = counts(cfg)
    assert after["action_event"] - base["action_event"] == 1
    again = hoard(cfg.source, "action", "run", "copies", "--here")
    assert again.returncode == 0 and "done already" in again.stdout, again.stdout + again.stderr
    assert counts(cfg) == after


def test_docker_worker_past_its_timeout_is_removed(hoard_home: Path, pg, redis_conn, docker: Daemon) -> None:
    """A container that runs past timeout_s: the run fails at `run` saying so, and no container
    of the run is left (`docker ps -a`)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=96, items=3)
    docker_contract(cfg, batch, timeout=2)
    res = hoard(cfg.source, "action", "run", "copies", "--here", "--param", "pause=600")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "did not finish within 2 s" in res.stdout + res.stderr
    (rid,) = [r["run"] for r in api.runs(cfg)]
    assert docker.containers(container(rid)) == []
    assert [s for s, _ in ending_events(cfg, rid)] == ["failed"]


def _runner_at_container(cfg: config.Settings, docker: Daemon) -> tuple[subprocess.Popen, str]:
    """`hoard action run copies --here --param pause=600` started and seen with its container running."""
    runner = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "action", "run", "copies",
                               "--here", "--param", "pause=600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = api.runs(cfg)
        if runs:
            rid = runs[0]["run"]
            st = load_state(cfg, rid)
            if st is not None and st.worker:
                res = docker.run("ps", "--quiet", "--filter", f"name=^/{container(rid)}$", "--filter",
                                 "status=running")
                if res.stdout.strip():
                    return runner, rid
        if runner.poll() is not None:
            raise AssertionError(runner.communicate())
        time.sleep(0.2)
    runner.kill()
    raise AssertionError("the container never started")


def test_cancel_removes_the_container(hoard_home: Path, pg, redis_conn, docker: Daemon) -> None:
    """`hoard action cancel RUN` while the container runs: the run is cancelled and its container gone."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=97, items=3)
    docker_contract(cfg, batch)
    runner, rid = _runner_at_container(cfg, docker)
    try:
        res = hoard(cfg.source, "action", "cancel", rid)
        assert res.returncode == 0, res.stdout + res.stderr
        runner.wait(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert load_state(cfg, rid).status == "cancelled"
    assert docker.containers(container(rid)) == []
    assert ending_events(cfg, rid) == [("cancelled", "cancelled at step run")]


@pytest.mark.parametrize(("sig", "seed"), [(signal.SIGINT, 98), (signal.SIGTERM, 102)])
def test_interrupted_runner_removes_its_container(hoard_home: Path, pg, redis_conn, docker: Daemon,
                                                  sig: signal.Signals, seed: int) -> None:
    """Ctrl-C (or SIGTERM) of the `--here` runner while the container runs: the runner ends its
    docker client and removes the container before it exits — the client's end alone leaves the
    container running (its --rm removes it only once it exits)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=seed, items=3)
    docker_contract(cfg, batch)
    runner, rid = _runner_at_container(cfg, docker)
    try:
        runner.send_signal(sig)
        runner.wait(timeout=180)
        assert runner.returncode != 0
        assert load_state(cfg, rid).status == "failed"
        assert docker.containers(container(rid)) == []
    finally:  # what a failure left
        if runner.poll() is None:
            runner.kill()
        docker.run("rm", "--force", container(rid))


@pytest.mark.expect_log(r"a stopped runner left", level="WARNING", optional=True)  # or the client died with its runner
def test_runner_killed_its_container_is_removed_on_resume(hoard_home: Path, pg, redis_conn, docker: Daemon) -> None:
    """kill -9 of the runner while the container runs leaves the container (and its client)
    running; the same command again removes that container before it starts the next one — no
    name conflict, no second worker writing the same output — and the result is there once."""
    tag = "hoard-test-worker:resume"
    docker.import_image(tag)
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=99, items=3)
    docker_contract(cfg, batch, image=tag)
    base = counts(cfg)
    runner, rid = _runner_at_container(cfg, docker)
    try:
        runner.kill()
        runner.wait(timeout=60)
        assert docker.containers(container(rid)) != []  # the kill -9 left it running
        docker.import_image(tag, fast=True)  # the next attempt finishes at once
        res = hoard(cfg.source, "action", "run", "copies", "--here", "--param", "pause=600", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["run"] == rid
        assert docker.containers(container(rid)) == []
    finally:  # what a failure left
        docker.run("rm", "--force", container(rid))
    assert load_state(cfg, rid).worker is None
    shas = inputs_of(cfg, batch)
    assert labels(cfg, "docker_uid").keys() == set(shas)
    assert counts(cfg)["action_event"] - base["action_event"] == 1 + len(ending_events(cfg, rid))


@pytest.mark.expect_log(r"a stopped runner left", level="WARNING", optional=True)  # or the client died with its runner
def test_cancel_of_a_run_whose_runner_died_removes_its_container(hoard_home: Path, pg, redis_conn,
                                                                docker: Daemon) -> None:
    """kill -9 of the runner while the container runs, then `hoard action cancel RUN`: the
    container left behind is removed, the run cancelled, 3C cleaned."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=100, items=3)
    docker_contract(cfg, batch)
    runner, rid = _runner_at_container(cfg, docker)
    try:
        runner.kill()
        runner.wait(timeout=60)
        assert docker.containers(container(rid)) != []
        res = hoard(cfg.source, "action", "cancel", rid)
        assert res.returncode == 0, res.stdout + res.stderr
        assert docker.containers(container(rid)) == []
    finally:  # what a failure left
        docker.run("rm", "--force", container(rid))
    assert load_state(cfg, rid).status == "cancelled"
    assert not (cfg.ssd.zone_path("3C") / rid).exists()

