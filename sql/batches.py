"""Actions, action batches and pipelines: typed functions over an explicit connection.

A batch collects the nodes one action works on; once sealed it refuses new members (a
trigger in the schema enforces it for every writer). A pipeline is an ordered list of
actions; `batch_stage` records, per batch, the last stage done for all its members, and
only ever moves forward one stage at a time.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import psycopg

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.rows import one


class BatchError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    action_id: int
    created_at: dt.datetime
    sealed_at: dt.datetime | None
    members: int


def define_action(conn: psycopg.Connection, action_id: int, name: str, kind: str, description: str = "") -> None:
    """Register an action (idempotent; the same id with another name is refused)."""
    row = conn.execute("INSERT INTO action (action_id, name, kind, description) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (action_id) DO NOTHING RETURNING action_id",
                       [action_id, name, kind, description]).fetchone()
    if row is None:
        have = one(conn.execute("SELECT name FROM action WHERE action_id = %s", [action_id]))[0]
        if have != name:
            raise BatchError(f"action {action_id} is already {have!r}, not {name!r}")


def register_action(conn: psycopg.Connection, name: str, kind: str, description: str = "") -> int:
    """The integer id of action `name` (an ActionContract's `action_id`), registering it on first
    use as the number after the largest one; idempotent by name. The kind and the description
    follow the contract (a contract whose type moved from AC2 to AC3 is now a `gpu` action)."""
    with conn.transaction():
        # two first runs of the same (or another) new action at once: one number each, never a clash
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('hoardfs.register_action'))")
        row = conn.execute("SELECT action_id, kind, description FROM action WHERE name = %s", [name]).fetchone()
        if row is not None:
            if (row[1], row[2]) != (kind, description):
                conn.execute("UPDATE action SET kind = %s, description = %s WHERE action_id = %s",
                             [kind, description, row[0]])
            return int(row[0])
        return int(one(conn.execute(
            "INSERT INTO action (action_id, name, kind, description) "
            "SELECT coalesce(max(action_id), 0) + 1, %s, %s, %s FROM action RETURNING action_id",
            [name, kind, description]))[0])


def create_batch(conn: psycopg.Connection, batch_id: str, action_id: int = 0) -> BatchInfo:
    conn.execute("INSERT INTO action_batch (batch_id, action_id) VALUES (%s, %s) ON CONFLICT (batch_id) DO NOTHING",
                 [batch_id, action_id])
    info = get_batch(conn, batch_id)
    if info.action_id != action_id:
        raise BatchError(f"batch {batch_id} belongs to action {info.action_id}, not {action_id}")
    return info


def get_batch(conn: psycopg.Connection, batch_id: str) -> BatchInfo:
    row = conn.execute("SELECT b.batch_id, b.action_id, b.created_at, b.sealed_at, "
                       "(SELECT count(*) FROM batch_member m WHERE m.batch_id = b.batch_id) "
                       "FROM action_batch b WHERE b.batch_id = %s", [batch_id]).fetchone()
    if row is None:
        raise BatchError(f"no batch {batch_id!r}")
    return BatchInfo(*row)


def add_nodes(conn: psycopg.Connection, batch_id: str, sha256s: list[str]) -> int:
    """Add nodes (by sha256) to an open batch; returns how many were new members."""
    shas = [bytes.fromhex(s) for s in sha256s]
    with conn.transaction():
        info = get_batch(conn, batch_id)
        if info.sealed_at is not None:
            raise BatchError(f"batch {batch_id} was sealed at {info.sealed_at:%Y-%m-%d %H:%M:%S}; "
                             "it takes no new members — create a new batch")
        found = one(conn.execute("SELECT count(*) FROM node WHERE sha256 = ANY(%s)", [shas]))[0]
        if found != len(set(shas)):
            raise BatchError(f"{len(set(shas)) - found} of the nodes are not in the database")
        cur = conn.execute("INSERT INTO batch_member (batch_id, node_id) SELECT %s, node_id FROM node "
                           "WHERE sha256 = ANY(%s) ON CONFLICT DO NOTHING", [batch_id, shas])
        return cur.rowcount


def seal_batch(conn: psycopg.Connection, batch_id: str) -> dt.datetime:
    """Seal (idempotent): returns the seal time, the first one if it was sealed before."""
    conn.execute("UPDATE action_batch SET sealed_at = now() WHERE batch_id = %s AND sealed_at IS NULL", [batch_id])
    sealed = get_batch(conn, batch_id).sealed_at
    assert sealed is not None  # set by the UPDATE above, or before it
    return sealed


def record_event(conn: psycopg.Connection, batch_id: str, action_id: int, status: str,
                 started_at: dt.datetime, ended_at: dt.datetime | None = None,
                 detail: dict[str, Any] | None = None) -> int:
    get_batch(conn, batch_id)
    return one(conn.execute("INSERT INTO action_event (batch_id, action_id, status, started_at, ended_at, detail) "
                        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING event_id",
                        [batch_id, action_id, status, started_at, ended_at, json.dumps(detail or {})]))[0]


def define_pipeline(conn: psycopg.Connection, name: str, action_ids: list[int]) -> int:
    """Create a pipeline of stages (idempotent for the same stages)."""
    with conn.transaction():
        pid = one(conn.execute("INSERT INTO pipeline (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name "
                           "RETURNING pipeline_id", [name]))[0]
        have = [r[0] for r in conn.execute("SELECT action_id FROM pipeline_stage WHERE pipeline_id = %s "
                                           "ORDER BY position", [pid]).fetchall()]
        if have and have != action_ids:
            raise BatchError(f"pipeline {name!r} already has stages {have}")
        if not have:
            for pos, a in enumerate(action_ids):
                conn.execute("INSERT INTO pipeline_stage VALUES (%s, %s, %s)", [pid, pos, a])
    return pid


def stage_done(conn: psycopg.Connection, batch_id: str, pipeline: str, position: int) -> None:
    """Record that stage `position` is done for all members; stages complete in order."""
    with conn.transaction():
        row = conn.execute("SELECT pipeline_id, (SELECT count(*) FROM pipeline_stage s WHERE s.pipeline_id = p.pipeline_id) "
                           "FROM pipeline p WHERE name = %s", [pipeline]).fetchone()
        if row is None:
            raise BatchError(f"no pipeline {pipeline!r}")
        pid, stages = row
        if not 0 <= position < stages:
            raise BatchError(f"pipeline {pipeline!r} has stages 0..{stages - 1}, not {position}")
        get_batch(conn, batch_id)
        conn.execute("INSERT INTO batch_stage (batch_id, pipeline_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     [batch_id, pid])
        done = one(conn.execute("SELECT done_position FROM batch_stage WHERE batch_id = %s AND pipeline_id = %s "
                            "FOR UPDATE", [batch_id, pid]))[0]
        if position <= done:
            return  # already recorded: idempotent
        if position != done + 1:
            raise BatchError(f"batch {batch_id}: stage {position} cannot be done before stage {done + 1}")
        conn.execute("UPDATE batch_stage SET done_position = %s, updated_at = now() WHERE batch_id = %s "
                     "AND pipeline_id = %s", [position, batch_id, pid])


def current_stage(conn: psycopg.Connection, batch_id: str, pipeline: str) -> int | None:
    """The next stage to run for the batch (None when every stage is done)."""
    row = conn.execute("SELECT coalesce(bs.done_position, -1), (SELECT count(*) FROM pipeline_stage s "
                       "WHERE s.pipeline_id = p.pipeline_id) FROM pipeline p LEFT JOIN batch_stage bs "
                       "ON bs.pipeline_id = p.pipeline_id AND bs.batch_id = %s WHERE p.name = %s",
                       [batch_id, pipeline]).fetchone()
    if row is None:
        raise BatchError(f"no pipeline {pipeline!r}")
    nxt = row[0] + 1
    return nxt if nxt < row[1] else None


def pipeline_stages(conn: psycopg.Connection, pipeline: str) -> list[str] | None:
    """The action names of a pipeline's stages, in order (None: no such pipeline)."""
    if conn.execute("SELECT 1 FROM pipeline WHERE name = %s", [pipeline]).fetchone() is None:
        return None
    return [r[0] for r in conn.execute(
        "SELECT a.name FROM pipeline p JOIN pipeline_stage s USING (pipeline_id) JOIN action a USING (action_id) "
        "WHERE p.name = %s ORDER BY s.position", [pipeline]).fetchall()]


def pipeline_names(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM pipeline ORDER BY name").fetchall()]


def enter_pipeline(conn: psycopg.Connection, batch_id: str, pipeline: str) -> None:
    """Put a batch in a pipeline, no stage done yet (idempotent; a batch may be in several)."""
    get_batch(conn, batch_id)
    conn.execute("INSERT INTO batch_stage (batch_id, pipeline_id) SELECT %s, pipeline_id FROM pipeline "
                 "WHERE name = %s ON CONFLICT DO NOTHING", [batch_id, pipeline])


def pipeline_batches(conn: psycopg.Connection, pipeline: str) -> list[tuple[str, int]]:
    """(batch id, the last stage done for all its members; -1 = none) of each batch in the pipeline."""
    return [(r[0], int(r[1])) for r in conn.execute(
        "SELECT bs.batch_id, bs.done_position FROM batch_stage bs JOIN pipeline p USING (pipeline_id) "
        "WHERE p.name = %s ORDER BY bs.batch_id", [pipeline]).fetchall()]
