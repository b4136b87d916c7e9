"""The `hoard` command line against real PostgreSQL and Redis: health, init, worker, errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.fsd.outputs import seal
from hoardfs.jobs.queues import fetch_job, rq_queue
from tests.helpers import use_schema, worker_reachable_home

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

SKELETON = ["init", "disks", "put", "get", "ingest", "stage", "export", "verify", "rebuild", "gc",
            "index", "health", "mount", "worker", "gui", "db"]


def hoard(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("HOARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "hoardfs", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=120)


def test_help_lists_every_command() -> None:
    """`hoard --help` names every command."""
    res = hoard("--help")
    assert res.returncode == 0
    for name in SKELETON:
        assert f" {name} " in res.stdout, name


def test_usage_error_exits_2() -> None:
    res = hoard("health", "--no-such-flag")
    assert res.returncode == 2
    assert "No such option" in res.stderr


CTRL_C_WHILE_LOADING = """
import builtins, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
load = builtins.__import__
def importing(name, *args, **kw):
    if name == "typer":  # the CLI's modules are loading: the user presses Ctrl-C now
        os.kill(os.getpid(), signal.SIGINT)
    return load(name, *args, **kw)
builtins.__import__ = importing
sys.argv = ["hoard", "health"]
from hoardfs.cli.entry import main
main()
"""


def test_ctrl_c_while_the_cli_loads_is_an_interrupt_not_a_traceback() -> None:
    """Ctrl-C in the first second of a cold start (the CLI still importing its modules) ends
    `hoard` as one later does: "hoard: interrupted", exit 130, no traceback."""
    res = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_LOADING], capture_output=True, text=True, timeout=60)
    assert res.returncode == 130, res.stderr
    assert res.stderr == "hoard: interrupted\n"


def test_init_then_health_json_is_ok(hoard_home: Path) -> None:
    """init creates disks and zones; health --json reports everything ok against real servers."""
    cfg = str(hoard_home / "hoard.toml")
    first = hoard("--config", cfg, "init")
    assert first.returncode == 0, first.stderr
    assert hoard("--config", cfg, "init").returncode == 0  # idempotent
    for z in ("3A", "3B", "3C", "3D"):
        assert (hoard_home / "ssd" / z).is_dir()
    migrated = hoard("--config", cfg, "db", "migrate")
    assert migrated.returncode == 0 and "schema version" in migrated.stdout, migrated.stderr
    res = hoard("--config", cfg, "health", "--json")
    report = json.loads(res.stdout)
    # the one thing a fresh install lacks: a backup (health says so, exit 4)
    assert res.returncode == 4 and report["problems"] == [
        "database: no backup was ever taken; run `hoard db backup` and enable hoard-backup.timer (systemd/) so one "
        "is taken every night"], res.stdout + res.stderr
    assert report["database"]["ok"] and report["database"]["database"].endswith("_test")
    assert report["redis"]["ok"]
    assert [d["label"] for d in report["disks"]] == ["hdd1", "hdd2", "hdd3", "hdd4"]
    assert [d["total_bytes"] for d in report["disks"]] == [int(g * 1024**3) for g in (4, 3, 2, 1.5)]
    assert set(report["zones"]) == {"3A", "3B", "3C", "3D"}


def test_health_names_what_is_wrong(hoard_home: Path, tmp_path: Path) -> None:
    """A missing disk, a full zone and a dead database each get a problem line; exit 4."""
    cfg = hoard_home / "hoard.toml"
    assert hoard("--config", str(cfg), "init").returncode == 0
    shutil.rmtree(hoard_home / "disks" / "hdd3")
    (hoard_home / "ssd" / "3C" / "big").write_bytes(os.urandom(1024) * (1024 * 1024 * 96 // 100 // 1024) * 1024)
    text = cfg.read_text().replace("database_url = ", f"database_url = 'postgresql:///x?host={tmp_path}/nowhere'\n#")
    cfg.write_text(text)
    res = hoard("--config", str(cfg), "health")
    assert res.returncode == 4
    assert "disk hdd3:" in res.stderr and "does not exist" in res.stderr
    assert "zone 3C:" in res.stderr and "(emergency)" in res.stderr
    assert "database:" in res.stderr and "hoard services up" in res.stderr
    js = json.loads(hoard("--config", str(cfg), "health", "--json").stdout)
    assert js["ok"] is False and js["database"]["ok"] is False and len(js["problems"]) == 3, js["problems"]


def test_services_and_db_status_fail_when_down(hoard_home: Path, tmp_path: Path) -> None:
    """`db status` against an unreachable server exits 3 with one line; it prints readable
    lines (not a dict) when the server is up."""
    cfg = hoard_home / "hoard.toml"
    up = hoard("--config", str(cfg), "db", "status")
    assert up.returncode == 0 and up.stdout.startswith("database:") and "{" not in up.stdout, up.stdout
    cfg.write_text(cfg.read_text().replace("database_url = ", f"database_url = 'postgresql:///x?host={tmp_path}/no'\n#"))
    down = hoard("--config", str(cfg), "db", "status")
    assert down.returncode == 3 and "the database is unreachable" in down.stderr and "Traceback" not in down.stderr


def test_worker_runs_a_real_job(hoard_home: Path, redis_conn) -> None:
    """`hoard worker --burst` takes a hoardfs job from a real Redis queue and finishes it
    (a job naming anything else is refused: tests/test_worker_guard.py)."""
    cfg = hoard_home / "hoard.toml"
    assert hoard("--config", str(cfg), "init").returncode == 0
    from hoardfs.base import config
    from hoardfs.jobs import jobkey

    job = rq_queue("maintenance", redis_conn, jobkey.of(config.load(cfg))).enqueue(  # signed, as the server queues
        "hoardfs.jobs.store_jobs.replicate", str(cfg.resolve()), 60, None)
    res = hoard("--config", str(cfg), "worker", "--queues", "maintenance", "--burst")
    assert res.returncode == 0, res.stderr
    done = fetch_job(job.id, redis_conn)
    assert done.get_status() == "finished"
    assert done.return_value()["copied_shards"] == 0


def test_worker_rejects_unknown_queue(hoard_home: Path) -> None:
    res = hoard("--config", str(hoard_home / "hoard.toml"), "worker", "--queues", "ingest,bogus", "--burst")
    assert res.returncode == 2
    assert "unknown queue(s) bogus; allowed: ingest, io, sql, maintenance" in res.stderr


def test_demo_end_to_end(hoard_home: Path, pg) -> None:
    with worker_reachable_home(hoard_home) as home:  # the built-in actions' workers run as nobody under root
        _demo_end_to_end(home, pg)


def _demo_end_to_end(hoard_home: Path, pg) -> None:
    """`hoard demo` on a fresh home: sample batches stored, replicated, read back verified, in the
    database (a fresh schema), the built-in actions' children in SQL, `hoard info`, the asset
    browser's data and the mount; health, check and verify exit 0; a second run changes nothing."""
    cfg = use_schema(hoard_home, pg)
    with open(cfg, "a") as fh:  # as the embedded default has it: the sample's sources → formats
        fh.write('[sources]\ngallery = "gallery_dl"\nforum = "csv_manifest"\n')
    assert hoard("--config", cfg, "init").returncode == 0
    first = hoard("--config", cfg, "demo")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count(": done;") == 3
    read_back = next(ln for ln in first.stdout.splitlines() if ln.startswith("6. read back"))
    good, total = read_back.split()[3].split("/")
    assert good == total and int(total) > 250
    for kind, zone, oid in (("stage", "3C", "demo-ytdlp-s7-b000"), ("export", "3D", "demo-images")):
        assert any(ln.startswith(f"{'8' if kind == 'stage' else '9'}. {kind}") for ln in first.stdout.splitlines())
        seal.check_sealed(hoard_home / "ssd" / zone / oid, verify=True)
    # the demo said 3A was emptied and left `_derived` and truth.json there, and
    # `hoard health` exited 4 right after it (no backup yet): it takes its first backup
    zone3a = hoard_home / "ssd" / "3A"  # (its `.tmp`, where HTTP uploads are staged, is `hoard init`'s: empty)
    assert sorted(p.name for p in zone3a.iterdir()) == [".tmp"] and not any((zone3a / ".tmp").iterdir())
    assert any(ln.startswith("13. backup") and "verified" in ln for ln in first.stdout.splitlines()), first.stdout
    _demo_dataset_built(hoard_home, first.stdout)
    thumb = _demo_actions_made(hoard_home, cfg, pg, first.stdout)
    for command in ("health", "check", "verify"):
        res = hoard("--config", cfg, command)
        assert res.returncode == 0, command + res.stdout + res.stderr
    before = _row_counts(pg)
    second = hoard("--config", cfg, "demo")
    assert second.returncode == 0 and "ingested by an earlier run" in second.stdout
    assert "0 shard copies made" in second.stdout
    assert "sealed in" in second.stdout  # the outputs are reported again, not made twice
    assert second.stdout.count("done by an earlier run") == 2 and "GPU gate" not in second.stdout, second.stdout
    assert "12. dataset  demo-variants@1" in second.stdout and "unchanged since version 1" in second.stdout
    assert _row_counts(pg) == before
    if os.path.exists("/dev/fuse"):  # the children in the mount: by-hash/, their bytes by their sha256
        from tests.test_mount import mounted

        mnt = hoard_home / "mnt"
        with mounted(cfg, mnt):
            path = mnt / thumb["mount_paths"][0]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == thumb["sha256"]


def _demo_dataset_built(home: Path, said: str) -> None:
    """The demo's dataset: version 1 of demo-variants, an ImageFolder of the actions'
    children by their `variant` label, sealed in 3D where the demo says it is."""
    line = next(ln for ln in said.splitlines() if ln.startswith("12. dataset"))
    root = home / "ssd" / "3D" / "demo-variants-v1"
    assert line.endswith(f"sealed in {root}") and "demo-variants@1" in line, line
    seal.check_sealed(root, verify=True)
    manifest = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert {m["class"] for m in manifest} == {"thumbnail", "canny"}
    assert all((root / m["path"]).is_file() and m["path"].startswith(f"{m['split']}/{m['class']}/") for m in manifest)
    assert max(Counter((m["split"], m["class"]) for m in manifest).values()) <= 20
    assert f"ls {root}" in said


def _row_counts(pg) -> dict[str, int]:
    return {t: pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("node", "edge", "label", "result_canny", "action_event", "physical_path")}


def _demo_actions_made(home: Path, cfg: str, pg, said: str) -> dict:
    """The demo's built-in actions: `thumbnail` and `canny` (released at its GPU gate
    as a user would) each made one child per image of the demo batches, linked to its image in
    PostgreSQL (edges, labels, result_canny), stored as class generated, shown by `hoard info`
    and by the asset browser's node page. Returns a thumbnail's `hoard info --json`."""
    from hoardfs.sql.browse import node

    lines = said.splitlines()
    assert any(ln.startswith("11. canny") and "waits at the GPU gate" in ln and "hoard action release canny-v1-" in ln
               for ln in lines), said
    images = pg.execute("SELECT count(DISTINCT n.node_id) FROM batch_member m JOIN node n USING (node_id) "
                        "JOIN physical_content pc USING (node_id) JOIN file_type ft ON ft.ext = pc.file_type "
                        "WHERE m.batch_id LIKE '%%-s7-b%%' AND ft.kind = 'image' AND NOT pc.in_black_list").fetchone()[0]
    assert images > 100
    for step, name, rel in (("10", "thumbnail", "thumbnail_of"), ("11", "canny", "edges_of")):
        assert any(ln.startswith(f"{step}. {name}") and f"{images} images → {images} children ({rel}" in ln
                   for ln in lines), said
        made = pg.execute("SELECT count(*), count(DISTINCT e.parent_id), bool_and(l.value IS NOT NULL) FROM edge e "
                          "JOIN relationship_type r USING (rel_id) LEFT JOIN label l ON l.node_id = e.child_id AND "
                          "l.key = 'variant' WHERE r.name = %s", [rel]).fetchone()
        assert made == (images, images, True), (name, made)
    ok = pg.execute("SELECT count(*) FROM result_canny WHERE status = 'ok' AND batch_id LIKE 'canny-v1-%%'").fetchone()
    assert ok == (images,)
    image, child = pg.execute(
        "SELECT encode(p.sha256, 'hex'), encode(c.sha256, 'hex') FROM edge e JOIN relationship_type r USING (rel_id) "
        "JOIN node p ON p.node_id = e.parent_id JOIN node c ON c.node_id = e.child_id WHERE r.name = 'thumbnail_of' "
        "ORDER BY 2 LIMIT 1").fetchone()
    info = hoard("--config", cfg, "info", child)
    assert info.returncode == 0 and f"parent:    {image} (thumbnail_of, made by thumbnail)" in info.stdout, info.stdout + info.stderr
    assert "labels:    variant=thumbnail" in info.stdout and "(generated)" in info.stdout, info.stdout
    doc = json.loads(hoard("--config", cfg, "info", child, "--json").stdout)
    assert doc["class"] == "generated" and len(doc["replicas"]) >= 1
    page = node(pg, image)  # what the asset browser's /node page shows of the image
    assert {(c["rel"], c["sha256"]) for c in page["children"] if c["rel"] == "thumbnail_of"} == {("thumbnail_of",
                                                                                                   child)}
    assert [c["rel"] for c in page["children"]].count("edges_of") == 1
    return doc
