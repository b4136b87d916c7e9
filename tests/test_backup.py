"""Logical backup round trip on a real PostgreSQL and store: dump → stored + 3B copy → restore-verify."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import psycopg

from hoardfs.adapters.synth import Spec
from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.backup import dump_backup, verify_dump
from hoardfs.sql.migrate import available, migrate
from tests.helpers import dir_disks_config, make_files, use_schema
from tests.test_cli import hoard
from tests.test_ingest import ingest_sample


def test_dump_store_and_verify(tmp_path: Path, pg, servers) -> None:
    migrate(pg)
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    url = psycopg.conninfo.make_conninfo(servers["database_url"], options=f"-c search_path={schema}")
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1))
    with Store.open(cfg, init=True) as store:
        results = store.put_many(make_files(tmp_path / "in", 50))
        apply_write_intent(pg, {"key": "k", "nodes": [{"sha256": r.sha256, "physical": {"size": r.size}}
                                                      for r in results]})
        dump = dump_backup(url, store, cfg.ssd.zone_path("3B"))
        assert dump.row_counts["node"] == 50 and dump.row_counts["schema_version"] == len(available())
        assert dump.location.parent == cfg.ssd.zone_path("3B") / "db-dumps"
        assert hashlib.sha256(dump.location.read_bytes()).hexdigest() == dump.sha256
        assert hashlib.sha256(store.get(dump.sha256)).hexdigest() == dump.sha256  # in S01, replicated
        for d in store.disks.values():  # each HDD names the latest dump, for when the SSD is gone
            assert json.loads((d.root / ".hoard-db-dump.json").read_text())["sha256"] == dump.sha256

        pg.execute("INSERT INTO source (name) VALUES ('after_the_dump')")  # later writes do not matter
        ok = verify_dump(url, store)
        assert ok.ok, ok.detail
        assert pg.execute("SELECT verify_ok FROM backup_log WHERE backup_id = %s", [dump.backup_id]).fetchone() == (True,)

        # a node the store does not hold makes the verification fail, naming it
        pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)", [b"\x07" * 32])
        dump2 = dump_backup(url, store, cfg.ssd.zone_path("3B"))
        bad = verify_dump(url, store, sample=1000)
        assert not bad.ok and "1 of 51 sampled nodes are not in the store, e.g. 0707" in bad.detail
        assert bad.backup_id == dump2.backup_id
    leftovers = pg.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'hoard_verify_%'").fetchone()[0]
    assert leftovers == 0


def test_cli_backup_and_verify(hoard_home: Path, pg) -> None:
    """`hoard db backup` then `hoard db verify-backup` on the configured database; health shows it."""
    cfg = use_schema(hoard_home, pg)
    for args in (("init",), ("db", "migrate")):
        assert hoard("--config", cfg, *args).returncode == 0
    made = hoard("--config", cfg, "db", "backup")
    assert made.returncode == 0 and "copied to" in made.stdout, made.stderr
    checked = hoard("--config", cfg, "db", "verify-backup")
    assert checked.returncode == 0 and ": OK — restored" in checked.stdout, checked.stdout + checked.stderr
    last = json.loads(hoard("--config", cfg, "health", "--json").stdout)["database"]["last_backup"]
    assert last["kind"] == "dump" and last["verified"] is True
    full = hoard("--config", cfg, "db", "backup", "--type", "full")  # this config runs no server itself
    assert full.returncode == 2 and "backup --setup" in full.stderr
    setup = hoard("--config", cfg, "db", "backup", "--setup")
    assert setup.returncode == 0 and "archive_command" in setup.stdout


def test_restore_dump_with_confirmation(hoard_home: Path, pg) -> None:
    """`hoard db restore --from dump` asks for the database name; a wrong answer changes nothing;
    the right one brings back the dumped rows and keeps the backup log."""
    cfg = use_schema(hoard_home, pg)
    for args in (("init",), ("db", "migrate")):
        assert hoard("--config", cfg, *args).returncode == 0
    apply_write_intent(pg, {"key": "before", "nodes": [{"sha256": "aa" * 32, "physical": {"size": 1}}]})
    assert hoard("--config", cfg, "db", "backup").returncode == 0
    apply_write_intent(pg, {"key": "after", "nodes": [{"sha256": "bb" * 32, "physical": {"size": 2}}]})
    dbname = psycopg.conninfo.conninfo_to_dict(pg.info.dsn)["dbname"]
    wrong = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg, "db", "restore", "--from", "dump"],
                           input="nope\n", capture_output=True, text=True)
    assert wrong.returncode == 130 and "not confirmed" in wrong.stderr
    assert pg.execute("SELECT count(*) FROM node").fetchone() == (2,)
    right = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg, "db", "restore", "--from", "dump"],
                           input=f"{dbname}\n", capture_output=True, text=True)
    assert right.returncode == 0, right.stderr
    assert pg.execute("SELECT encode(sha256, 'hex') FROM node").fetchall() == [("aa" * 32,)]
    assert pg.execute("SELECT count(*) FROM backup_log").fetchone() == (1,)


def test_verify_backup_after_a_deleted_batch_was_collected(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard delete --batch X --yes; hoard gc; hoard db backup; hoard db verify-backup`
    said "FAILED — 29 of 200 sampled nodes are not in the store": the sample took deleted nodes
    whose bytes gc freed by design. Only nodes whose bytes the store must hold are sampled."""
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=43, batches=2, items_per_batch=20,
                                                                  large_max_mb=1, ready_signal=True,
                                                                  sources=("gallery",)))
    cli = ("--config", str(cfg.source))
    assert hoard(*cli, "delete", "--batch", batches[1].batch_id, "--yes").returncode == 0
    assert hoard(*cli, "gc", "--threshold", "1.0").returncode == 0
    gone = {i.sha256 for i in batches[1].items} - {i.sha256 for i in batches[0].items}
    assert hoard(*cli, "info", sorted(gone)[0]).returncode == 5  # freed, as designed
    assert hoard(*cli, "db", "backup").returncode == 0
    checked = hoard(*cli, "db", "verify-backup")
    assert checked.returncode == 0 and ": OK — restored" in checked.stdout, checked.stdout + checked.stderr
    last = json.loads(hoard(*cli, "health", "--json").stdout)["database"]["last_backup"]
    assert last["verified"] is True
