"""The database's side of deletion (the store's side is fsd.deletion).

Type A marks nodes `is_deleted` (selectors skip them; metadata, edges and labels stay as
history). Type B drops one batch's references — its members and its `batch:<id>/…`
locators — and marks deleted the nodes no other batch still holds; the batch row stays,
with a `cancelled` event saying it was deleted.
"""

from __future__ import annotations

import json

import psycopg

from fsd.errors import ExitCode, HoardError


def hide_nodes(conn: psycopg.Connection, shas: list[bytes]) -> int:
    with conn.transaction():
        cur = conn.execute("UPDATE physical_content pc SET is_deleted = true FROM node n "
                           "WHERE n.node_id = pc.node_id AND n.sha256 = ANY(%s) AND NOT pc.is_deleted", [shas])
        return cur.rowcount


def drop_batch(conn: psycopg.Connection, batch_id: str, reason: str = "") -> dict[str, int]:
    """Idempotent: a second call finds nothing left to drop."""
    with conn.transaction():
        row = conn.execute("SELECT action_id FROM action_batch WHERE batch_id = %s FOR UPDATE", [batch_id]).fetchone()
        if row is None:
            raise HoardError(f"no batch {batch_id!r} in the database", ExitCode.USAGE)
        members = [r[0] for r in conn.execute("DELETE FROM batch_member WHERE batch_id = %s RETURNING node_id",
                                              [batch_id])]
        paths = conn.execute("DELETE FROM physical_path WHERE locator LIKE %s",
                             [f"batch:{batch_id.replace('%', '').replace('_', chr(92) + '_')}/%"]).rowcount
        hidden = conn.execute(
            "UPDATE physical_content pc SET is_deleted = true WHERE pc.node_id = ANY(%s) AND NOT pc.is_deleted "
            "AND NOT EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id)", [members]).rowcount
        if members:
            conn.execute("INSERT INTO action_event (batch_id, action_id, status, ended_at, detail) "
                         "VALUES (%s, %s, 'cancelled', now(), %s)",
                         [batch_id, row[0], json.dumps({"deleted": True, "reason": reason, "members": len(members),
                                                        "nodes_marked_deleted": hidden})])
    return {"members": len(members), "locators": paths, "nodes_marked_deleted": hidden}


def referenced(conn: psycopg.Connection, shas: set[bytes], chunk: int = 10_000) -> set[bytes]:
    """Which of these digests a row still needs — what `hoard gc` must keep although the store
    holds a tombstone for it: a physical node that is not deleted or that a batch still holds
    (type A keeps bytes), the full document (`raw_object`) of a metadata row describing a
    node that is not deleted (a virtual asset, or content still held), a database dump."""
    out: set[bytes] = set()
    todo = list(shas)
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        rows = conn.execute(
            "SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) WHERE n.sha256 = ANY(%(s)s) "
            "AND (NOT pc.is_deleted OR EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = n.node_id)) "
            "UNION SELECT cm.raw_object FROM common_metadata cm LEFT JOIN physical_content pc USING (node_id) "
            "WHERE cm.raw_object = ANY(%(s)s) AND (pc.node_id IS NULL OR NOT pc.is_deleted "
            "OR EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = cm.node_id)) "
            "UNION SELECT sha256 FROM backup_log WHERE sha256 = ANY(%(s)s)", {"s": part})
        out.update(bytes(r[0]) for r in rows)
    return out
