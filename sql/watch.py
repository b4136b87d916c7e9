"""Pipelines bound to a source and a selector (`pipeline_watch`, migration 019): each batch
ingested from that source whose members the selector matches goes through the pipeline
(hoardfs.jobs.actions.pipelines.watched_of_batch, queued by the ingest's finish step)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from hoardfs.sql.rows import one


def set_watch(conn: psycopg.Connection, pipeline: str, source: str | None, selector: dict[str, Any] | None) -> None:
    """Bind pipeline `pipeline` to `source` (None: every source) and `selector` (None: every
    batch); a pipeline has one binding, replaced by the next."""
    with conn.transaction():
        if source is not None:
            conn.execute("INSERT INTO source (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", [source])
        conn.execute(
            "INSERT INTO pipeline_watch (pipeline_id, source_id, selector) SELECT p.pipeline_id, "
            "(SELECT source_id FROM source WHERE name = %s), %s FROM pipeline p WHERE p.name = %s "
            "ON CONFLICT (pipeline_id) DO UPDATE SET source_id = EXCLUDED.source_id, selector = EXCLUDED.selector, "
            "since = now()", [source, json.dumps(selector) if selector is not None else None, pipeline])


def drop_watch(conn: psycopg.Connection, pipeline: str) -> bool:
    """Unbind pipeline `pipeline`; False when it was not bound."""
    return conn.execute("DELETE FROM pipeline_watch w USING pipeline p WHERE p.pipeline_id = w.pipeline_id "
                        "AND p.name = %s", [pipeline]).rowcount > 0


def watch_of(conn: psycopg.Connection, pipeline: str) -> dict[str, Any] | None:
    """Pipeline `pipeline`'s binding: {source (None: every), selector (None: every batch), since}."""
    row = conn.execute("SELECT s.name, w.selector, w.since FROM pipeline_watch w JOIN pipeline p USING (pipeline_id) "
                       "LEFT JOIN source s USING (source_id) WHERE p.name = %s", [pipeline]).fetchone()
    return None if row is None else {"source": row[0], "selector": row[1], "since": row[2].isoformat()}


def watching(conn: psycopg.Connection, batch_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(pipeline, selector) of each pipeline bound to the source of ingested batch `batch_id`
    (or to every source), by name."""
    return [(name, sel) for name, sel in conn.execute(
        "SELECT p.name, w.selector FROM pipeline_watch w JOIN pipeline p USING (pipeline_id) "
        "JOIN action_batch b ON b.batch_id = %s AND b.action_id = 0 "
        "WHERE w.source_id IS NULL OR w.source_id = b.source_id ORDER BY p.name", [batch_id]).fetchall()]


def any_watch(conn: psycopg.Connection) -> bool:
    """Is any pipeline bound (so that an ingest's finish queues the job that starts them)?"""
    return bool(one(conn.execute("SELECT EXISTS (SELECT 1 FROM pipeline_watch)"))[0])
