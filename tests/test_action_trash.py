"""A done run's 3C directory is renamed aside, not deleted file by file inside the run (20,000
unlinks took 8–48 s in bench/action_overhead.py, and `hoard action run` returned only after
them): `finish` moves `3C/<run>` into `3C/.trash/` at once and releases its reservation; the
trash is deleted once the run is recorded done (by the worker, or a queued maintenance job under
`--here`). A delete killed half-way is finished later; meanwhile its bytes count as 3C's, no
reservation is held and `hoard health` reports nothing. Real PostgreSQL, Redis, store, workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard
from tests.test_action_workers import assert_produced_once, inputs_of, worker_contract

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: `hoardfs.jobs.actions.empty_trash` killed (SIGKILL, as by power loss) after its first few unlinks
KILLED_DELETE = """
import os, signal, sys
from hoardfs.jobs.actions import empty_trash
real, n = os.unlink, [0]
def unlink(*args, **kwargs):
    n[0] += 1
    if n[0] > 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
os.unlink = unlink
empty_trash(sys.argv[1])
"""


def _files(p: Path) -> int:
    return sum(1 for f in p.rglob("*") if f.is_file())


def _zone_3c(cfg: config.Settings) -> dict:
    res = hoard(cfg.source, "zones", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["zones"]["3C"]


def _3c_problems(cfg: config.Settings, rid: str) -> list[str]:
    health = json.loads(hoard(cfg.source, "health", "--json").stdout)
    return [p for p in health["problems"] if "3C" in p or rid in p or "trash" in p]


def test_finish_sets_3c_aside_and_a_killed_delete_is_finished_later(hoard_home: Path, pg, redis_conn) -> None:
    """`--here`: the run is done with `3C/<run>` renamed into `3C/.trash/` whole, no 3C
    reservation, and the delete queued as a maintenance job. A delete killed after a few unlinks
    leaves part of it: counted in 3C's used bytes, nothing in `hoard health`; the queued job (a
    worker) deletes the rest; then 3C holds nothing of the run."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=151, items=6)
    worker_contract(cfg, batch)
    base = counts(cfg)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
    trash = cfg.ssd.zone_path("3C") / ".trash"
    [entry] = list(trash.iterdir())
    assert entry.name.startswith(f"{rid}.") and load_state(cfg, rid).report["3c_set_aside"] == [entry.name]
    before = _files(entry)
    assert before > 4  # its staged inputs, the worker's outputs, the seal's files
    z = _zone_3c(cfg)
    assert z["reservations"] == [] and 0 < z["trash_bytes"] <= z["used_bytes"], z
    assert not _3c_problems(cfg, rid)

    killed = subprocess.run([sys.executable, "-c", KILLED_DELETE, str(cfg.source)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert entry.is_dir() and 0 < _files(entry) < before  # cut short half-way
    z = _zone_3c(cfg)
    assert z["reservations"] == [] and z["trash_bytes"] > 0 and z["outputs"] == [], z
    assert not _3c_problems(cfg, rid)
    assert hoard(cfg.source, "action", "status", rid).returncode == 0

    w = hoard(cfg.source, "worker", "--burst")  # the maintenance job queued by the run's end
    assert w.returncode == 0, w.stderr
    assert list(trash.iterdir()) == []
    z = _zone_3c(cfg)
    assert z["reservations"] == [] and z["trash_bytes"] == 0 and z["outputs"] == [], z
    assert not _3c_problems(cfg, rid)


def test_queued_run_deletes_its_trash_after_it_is_recorded_done(hoard_home: Path, pg, redis_conn) -> None:
    """A queued run: the worker that ran its finish deletes what it set aside once the state says
    done; a trash entry a killed delete left behind goes with it; `hoard zones clean` empties the
    trash too."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=152, items=4)
    worker_contract(cfg, batch)
    trash = cfg.ssd.zone_path("3C") / ".trash"
    left = trash / "thumbs-v1-000000000000.1"  # what a delete killed before this run left
    (left / "by_sha256" / "input").mkdir(parents=True)
    (left / "by_sha256" / "input" / "x.png").write_bytes(b"x" * 5000)
    res = hoard(cfg.source, "action", "run", "thumbs", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    assert hoard(cfg.source, "worker", "--burst").returncode == 0
    st = load_state(cfg, rid)
    assert st is not None and st.status == "done" and len(st.report["3c_set_aside"]) == 1, st
    assert list(trash.iterdir()) == [] and not (cfg.ssd.zone_path("3C") / rid).exists()
    # `hoard zones clean` of another output (an incomplete one here) empties the trash as well
    (left / "f").mkdir(parents=True)
    (left / "f" / "y").write_bytes(b"y")
    junk = cfg.ssd.zone_path("3C") / "junk"
    junk.mkdir()
    (junk / "a").write_bytes(b"a")
    cleaned = hoard(cfg.source, "zones", "clean", "junk")
    assert cleaned.returncode == 0 and "deleted 1 output(s) set aside" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert list(trash.iterdir()) == [] and not junk.exists()
