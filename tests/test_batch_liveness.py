"""The database follows the store on deletion: a batch ingested after `hoard delete --batch` of a
batch holding the same files is selectable; a deletion racing an ingest's apply, either way
round (driven by holding the other side's transaction open, not by timing), leaves the done
batch's nodes live in the database and the store; `hoard check` names a node whose deletion
flags disagree with the store, and `hoard check --repair` mends it; a hidden node (type A)
stays hidden when a batch brings it again."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from hoardfs.adapters.intent import build_intent
from hoardfs.adapters.records import record_load
from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.fsd.core.held import iter_files
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs.ingest.state import work_path
from hoardfs.sql import deletion as db_del
from hoardfs.sql.apply import apply_write_intent
from tests.test_ingest import ingest_home

# tier: the module's tests start hoard processes
pytestmark = pytest.mark.services


def _hoard(cfg: config.Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _twins(cfg: config.Settings, home: Path, seed: int) -> tuple[str, str]:
    """Batch A (a synthetic gallery-dl batch) and batch B, a copy of it under another name, both
    in 3A with their _READY signal: the same files."""
    batch = generate(home / "gen", Spec(seed=seed, batches=1, items_per_batch=12, sources=("gallery",),
                                        large_max_mb=1, ready_signal=True))[0]
    zone = cfg.ssd.zone_path("3A")
    a, b = batch.batch_id, f"{batch.batch_id}-again"
    shutil.copytree(home / "gen" / a, zone / b)
    (home / "gen" / a).rename(zone / a)
    return a, b


def _steps(cfg: config.Settings, batch_id: str, *steps: str) -> None:
    """Run these ingest steps of a batch here, in order (submitting it first if it is new)."""
    if ua1.load_state(cfg, batch_id) is None:
        ua1.submit(cfg, cfg.ssd.zone_path("3A") / batch_id, "gallery", queue=False)
    for step in steps:
        ua1._run_step_locked(cfg, batch_id, step, then_enqueue=False)
    st = ua1.load_state(cfg, batch_id)
    assert st is not None and st.error is None, st


def _ingest(cfg: config.Settings, batch_id: str) -> None:
    _steps(cfg, batch_id, *ua1.STEPS)
    st = ua1.load_state(cfg, batch_id)
    assert st is not None and st.status == "done", st


def _files(cfg: config.Settings, batch_id: str) -> set[bytes]:
    """The distinct sha256s the store's manifest of the batch names."""
    with Store.open(cfg, writable=False) as store:
        info = store.index.get_batch(batch_id)
        assert info is not None, f"batch {batch_id} is not registered"
        return {sha for _path, sha, _size in iter_files(store.get, info["manifest"])}


def _selected(cfg: config.Settings, batch_id: str) -> set[bytes]:
    """What `hoard select --batch` returns."""
    res = _ok(_hoard(cfg, "select", "--batch", batch_id, "--json"))
    return {bytes.fromhex(json.loads(line)["sha256"]) for line in res.stdout.splitlines()}


def _shown(cfg: config.Settings, shas: set[bytes]) -> set[bytes]:
    """Which of `shas` the mount shows (not hidden, not tombstoned)."""
    with Store.open(cfg, writable=False) as store:
        return {s for s in shas if store.index.shown(s)}


def _deleted(pg: psycopg.Connection, shas: set[bytes]) -> set[bytes]:
    return {bytes(s) for (s,) in pg.execute("SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) "
                                            "WHERE pc.is_deleted AND n.sha256 = ANY(%s)", [list(shas)])}


def _waits_on_the_lock(pg: psycopg.Connection, other: threading.Thread | subprocess.Popen) -> bool:
    """Whether another session comes to wait on an advisory lock (the membership lock) before
    `other` ends; polled for up to 30 s."""
    done = (lambda: not other.is_alive()) if isinstance(other, threading.Thread) else (lambda: other.poll() is not None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not done():
        if pg.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND wait_event = 'advisory' AND datname = current_database()").fetchone():
            return True
        time.sleep(0.05)
    return False


def _second_connection(cfg: config.Settings) -> psycopg.Connection:
    assert cfg.database_url
    return psycopg.connect(cfg.database_url, autocommit=True)


def test_a_batch_ingested_again_after_its_twin_was_dropped_is_selectable(hoard_home: Path, pg) -> None:
    """Ingest A, `delete --batch A`, ingest B holding the same files: B's every node is
    selectable (the old apply left all of them `is_deleted`: select said 0), the mount shows
    them, and `hoard check` agrees."""
    cfg = ingest_home(hoard_home, pg)
    a, b = _twins(cfg, hoard_home, seed=71)
    _ingest(cfg, a)
    files = _files(cfg, a)
    _ok(_hoard(cfg, "delete", "--batch", a, "--yes"))
    assert _deleted(pg, files) == files and _selected(cfg, a) == set()
    _ingest(cfg, b)
    assert _files(cfg, b) == files
    assert _selected(cfg, b) == files  # the old code: set()
    assert _shown(cfg, files) == files
    _ok(_hoard(cfg, "check"))


def test_a_delete_between_the_store_and_apply_steps_leaves_the_batch_live(hoard_home: Path, pg) -> None:
    """`delete --batch A` lands after B stored the files A shares and before B's apply: B is
    done with every node selectable and every file shown by the mount (the old code: 0 nodes)."""
    cfg = ingest_home(hoard_home, pg)
    a, b = _twins(cfg, hoard_home, seed=72)
    _ingest(cfg, a)
    files = _files(cfg, a)
    _steps(cfg, b, "scan", "store")
    _ok(_hoard(cfg, "delete", "--batch", a, "--yes"))
    _steps(cfg, b, "apply", "package", "finish")
    assert _selected(cfg, b) == files  # the old code: set()
    assert _shown(cfg, files) == files
    _ok(_hoard(cfg, "check"))


def test_an_apply_waits_for_a_batch_deletion_in_flight_then_marks_its_nodes_live(hoard_home: Path, pg) -> None:
    """The deletion's database transaction has marked A's nodes deleted and not committed when
    B's apply step runs: the apply waits for it (the old one did not, and left every node of B
    deleted once the deletion committed), then marks them live; the deletion's store side and
    B's remaining steps leave the store showing them."""
    cfg = ingest_home(hoard_home, pg)
    a, b = _twins(cfg, hoard_home, seed=73)
    _ingest(cfg, a)
    files = _files(cfg, a)
    _steps(cfg, b, "scan", "store")
    with _second_connection(cfg) as deleting:
        with deleting.transaction():  # `hoard delete --batch A`'s database side, held open
            counts = db_del.drop_batch(deleting, a, "test")
            assert counts["nodes_marked_deleted"] == len(files)
            applying = threading.Thread(target=_steps, args=(cfg, b, "apply"))
            applying.start()
            waited = _waits_on_the_lock(pg, applying)
        applying.join(120)
        assert not applying.is_alive()
    assert _deleted(pg, files) == set()  # the old code: every one of them
    assert waited, "the apply did not wait for the deletion in flight"
    _ok(_hoard(cfg, "delete", "--batch", a, "--yes"))  # the rest of the deletion: its store side
    _steps(cfg, b, "package", "finish")
    assert _selected(cfg, b) == files
    assert _shown(cfg, files) == files
    _ok(_hoard(cfg, "check"))


@pytest.mark.parametrize("intent_of", ["ingest", "members"])
def test_a_batch_deletion_waits_for_an_apply_in_flight_and_keeps_what_it_holds(hoard_home: Path, pg,
                                                                                 intent_of: str) -> None:
    """B's apply has written its members of A's nodes and not committed when `hoard delete
    --batch A` runs: the deletion waits for it, then keeps them live. `ingest`: B's apply step's
    very intent (the old deletion waited too, by chance: on the metadata rows both write); then
    B's package step registers it and the store shows them. `members`: an intent of B's nodes
    and members alone — the old deletion saw no other batch holding the nodes and marked every
    one deleted."""
    cfg = ingest_home(hoard_home, pg)
    a, b = _twins(cfg, hoard_home, seed=74)
    _ingest(cfg, a)
    files = _files(cfg, a)
    _steps(cfg, b, "scan", "store")
    st = ua1.load_state(cfg, b)
    assert st is not None
    work = json.loads(work_path(cfg, b, "records").read_bytes())
    stored = {k: tuple(v) for k, v in json.loads(work_path(cfg, b, "stored").read_bytes()).items()}
    intent, _stats = build_intent(f"ingest:{b}", b, st.source, [record_load(r) for r in work["records"]], stored,
                                  dt.datetime.fromisoformat(st.signalled), labels=work.get("rendered"))
    if intent_of == "members":
        intent = {"key": f"members:{b}", "nodes": [n for n in intent["nodes"] if "physical" in n],
                  "batches": [{"batch_id": b, "action": 0, "members": sorted(h for h, _size in stored.values())}]}
    with _second_connection(cfg) as applying:
        with applying.transaction():  # the apply, held open
            apply_write_intent(applying, intent)
            deleting = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "delete",
                                         "--batch", a, "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, stdin=subprocess.DEVNULL)
            waited = _waits_on_the_lock(pg, deleting)
        out, err = deleting.communicate(timeout=120)
    assert deleting.returncode == 0, out + err
    assert _deleted(pg, files) == set()  # the old code, `members`: every one of them
    assert waited, "the deletion did not wait for the apply in flight"
    if intent_of == "ingest":
        _steps(cfg, b, "apply", "package", "finish")  # the apply step finds its intent applied
        assert _selected(cfg, b) == files
        assert _shown(cfg, files) == files
    _ok(_hoard(cfg, "check"))


def test_check_names_deletion_flags_the_store_contradicts_and_repair_mends_them(hoard_home: Path, pg) -> None:
    """Nodes a batch holds marked deleted in the database while the store shows them, and a node
    the store hides that the database does not: `hoard check` (exit 0 on the old code) names
    each with `hoard check --repair`, which sets the flags from the store; then check, verify
    and health report nothing."""
    from hoardfs.jobs.health import collect

    cfg = ingest_home(hoard_home, pg)
    a, _b = _twins(cfg, hoard_home, seed=75)
    _ingest(cfg, a)
    files = sorted(_files(cfg, a))
    wrong, hidden = files[:3], files[3]
    pg.execute("UPDATE physical_content pc SET is_deleted = true FROM node n WHERE n.node_id = pc.node_id "
               "AND n.sha256 = ANY(%s)", [wrong])
    with Store.open(cfg) as store:
        store.index.mark(store.index.hidden, [hidden], "hidden in the store alone")
    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr
    named = [line for line in res.stderr.splitlines() if line.startswith("disagrees: node ")]
    assert len(named) == 4, res.stderr
    for sha in wrong:
        line = next(x for x in named if sha.hex() in x)
        assert f"batch {a} holds it" in line and "marks it deleted" in line and "`hoard check --repair`" in line
    line = next(x for x in named if hidden.hex() in x)
    assert "the store hides it" in line and "`hoard check --repair` marks it hidden" in line
    fixed = _ok(_hoard(cfg, "check", "--repair"))
    assert "repaired: 4 nodes' deletion flags" in fixed.stdout, fixed.stdout
    assert _selected(cfg, a) == set(files) - {hidden}
    assert pg.execute("SELECT pc.is_hidden, pc.is_deleted FROM physical_content pc JOIN node n USING (node_id) "
                      "WHERE n.sha256 = %s", [hidden]).fetchone() == (True, True)
    _ok(_hoard(cfg, "check"))
    _ok(_hoard(cfg, "verify"))
    assert [p for p in collect(cfg)["problems"] if p.startswith(("store:", "disk "))] == []


def test_a_hidden_node_stays_hidden_when_another_batch_brings_it(hoard_home: Path, pg) -> None:
    """`hoard delete --node X` (type A) of a node of A, then batch B holding the same files: the
    apply marks B's nodes live but X stays hidden in the database, as the store keeps it hidden."""
    cfg = ingest_home(hoard_home, pg)
    a, b = _twins(cfg, hoard_home, seed=76)
    _ingest(cfg, a)
    files = _files(cfg, a)
    x = min(files)
    _ok(_hoard(cfg, "delete", "--node", x.hex()))
    _ok(_hoard(cfg, "delete", "--batch", a, "--yes"))
    _ingest(cfg, b)
    assert _selected(cfg, b) == files - {x}
    assert _shown(cfg, files) == files - {x}
    _ok(_hoard(cfg, "check"))
