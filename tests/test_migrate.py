"""Migrations on a real PostgreSQL: apply, idempotent, upgrade with data, every column commented."""

from __future__ import annotations

import hashlib
import re

import psycopg
import pytest

from hoardfs.sql.migrate import available, current_version, migrate


def test_migrate_from_empty_is_idempotent(pg: psycopg.Connection) -> None:
    """All migrations apply in order; a second run applies nothing."""
    versions = [m.version for m in available()]
    assert migrate(pg) == versions
    assert current_version(pg) == versions[-1]
    assert migrate(pg) == []


def test_upgrade_keeps_data(pg: psycopg.Connection) -> None:
    """A database at version 1 with nodes, metadata and edges upgrades to the latest intact."""
    migrate(pg, target=1)
    assert current_version(pg) == 1
    pg.execute("INSERT INTO source (name) VALUES ('ytdlp')")
    for i in range(3):
        pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)",
                   [hashlib.sha256(bytes([i])).digest()])
    pg.execute("INSERT INTO edge SELECT a.node_id, b.node_id, 1 FROM node a, node b WHERE a.node_id < b.node_id")
    pg.execute("INSERT INTO common_metadata (node_id, source_id, title) SELECT node_id, 1, 'x' FROM node")
    with pytest.raises(psycopg.errors.UndefinedTable):
        pg.execute("SELECT 1 FROM action_batch")
    migrate(pg)
    assert current_version(pg) == available()[-1].version
    assert pg.execute("SELECT count(*) FROM edge").fetchone() == (3,)
    assert pg.execute("SELECT count(*) FROM common_metadata WHERE title = 'x'").fetchone() == (3,)
    pg.execute("INSERT INTO action_batch (batch_id, action_id) VALUES ('b1', 0)")


def _described_columns() -> set[tuple[str, str]]:
    """(table, column) of every column whose definition in a migration carries a `--` comment:
    the migrations promise those are mirrored with COMMENT ON."""
    described, table = set(), None
    for m in available():
        for line in m.path.read_text().splitlines():
            if start := re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", line):
                table = start.group(1)
            elif table and line.startswith(")"):
                table = None
            elif table and (col := re.match(r"\s+([a-z_][a-z0-9_]*)\s+\S.*--", line)):
                if col.group(1) not in {"primary", "unique", "check", "foreign", "constraint"}:
                    described.add((table, col.group(1)))
    return described


def test_every_table_and_column_is_commented(pg: psycopg.Connection) -> None:
    """COMMENT ON mirrors the schema's comments: every table has one, and so does every column
    the migrations describe with a `--` comment (the columns a reader of psql's \\d+ needs)."""
    migrate(pg)
    tables = pg.execute("""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname <> 'schema_version'
          AND obj_description(c.oid, 'pg_class') IS NULL""").fetchall()
    assert tables == []
    commented = set(pg.execute("""
        SELECT c.relname, a.attname FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
          AND col_description(c.oid, a.attnum) IS NOT NULL""").fetchall())
    described = _described_columns()
    assert len(described) >= 15, "the migration parser found too few described columns"
    assert sorted(described - commented) == []


def test_sealed_batch_refuses_members(pg: psycopg.Connection) -> None:
    """The database itself refuses a member for a sealed batch."""
    migrate(pg)
    pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)", [b"\x01" * 32])
    pg.execute("INSERT INTO action_batch (batch_id, action_id, sealed_at) VALUES ('b1', 0, now())")
    with pytest.raises(psycopg.errors.CheckViolation, match="batch b1 is sealed"):
        pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'b1', node_id FROM node")
