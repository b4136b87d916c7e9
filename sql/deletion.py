"""The database's side of deletion (the store's side is hoardfs.fsd.maintenance.deletion).

Type A marks nodes `is_hidden` and `is_deleted` (selectors skip them; metadata, edges and
labels stay as history). Type B drops one batch's references — its members and its
`batch:<id>/…` locators — and marks deleted the nodes no other batch still holds; the batch row
stays, with a `cancelled` event saying it was deleted. What the batch's documents said about
nodes other batches also describe is replaced by the newest remaining description
(`metadata_version`). A write-intent naming a node of a dropped batch again marks it live
(sql/apply.py); a batch drop holds `MEMBERSHIP_LOCK` exclusively, so "no other batch holds it"
is never decided beside an apply that is adding a batch holding it.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql as pgsql

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.apply import VERSION_COLUMNS, hold_membership


def hide_nodes(conn: psycopg.Connection, shas: list[bytes]) -> int:
    with conn.transaction():
        cur = conn.execute("UPDATE physical_content pc SET is_deleted = true, is_hidden = true FROM node n "
                           "WHERE n.node_id = pc.node_id AND n.sha256 = ANY(%s) AND NOT pc.is_hidden", [shas])
        return cur.rowcount


def drop_batch(conn: psycopg.Connection, batch_id: str, reason: str = "") -> dict[str, int]:
    """Idempotent: a second call finds nothing left to drop."""
    with conn.transaction():
        hold_membership(conn, exclusive=True)  # no apply adds members or marks nodes live meanwhile
        row = conn.execute("SELECT action_id FROM action_batch WHERE batch_id = %s FOR UPDATE", [batch_id]).fetchone()
        if row is None:
            raise HoardError(f"no batch {batch_id!r} in the database", ExitCode.USAGE)
        members = [r[0] for r in conn.execute("DELETE FROM batch_member WHERE batch_id = %s RETURNING node_id",
                                              [batch_id])]
        paths = conn.execute("DELETE FROM physical_path WHERE locator LIKE %s",
                             [f"batch:{batch_id.replace('%', '').replace('_', chr(92) + '_')}/%"]).rowcount
        described = _forget_descriptions(conn, members)
        # an action run's batch: what its worker did is no longer kept, so its inputs are not
        # done (a later run of the action runs them again)
        conn.execute("DELETE FROM action_memo WHERE run_id = %s", [batch_id])
        hidden = conn.execute(
            "UPDATE physical_content pc SET is_deleted = true WHERE pc.node_id = ANY(%s) AND NOT pc.is_deleted "
            "AND NOT EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id)", [members]).rowcount
        if members:
            conn.execute("INSERT INTO action_event (batch_id, action_id, status, ended_at, detail) "
                         "VALUES (%s, %s, 'cancelled', now(), %s)",
                         [batch_id, row[0], json.dumps({"deleted": True, "reason": reason, "members": len(members),
                                                        "nodes_marked_deleted": hidden,
                                                        "metadata_recomputed": described})])
    return {"members": len(members), "locators": paths, "nodes_marked_deleted": hidden,
            "metadata_recomputed": described}


def _forget_descriptions(conn: psycopg.Connection, members: list[int]) -> int:
    """Drop what the deleted batch's documents said about nodes (its members no other batch
    holds are its documents) and recompute each affected common_metadata row from the
    remaining versions, newest download first as apply does; a row no other document
    describes goes. Returns how many common_metadata rows were replaced or removed."""
    conn.execute("CREATE TEMP TABLE tmp_gone_doc ON COMMIT DROP AS SELECT n.sha256 FROM node n "
                 "WHERE n.node_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM batch_member bm "
                 "WHERE bm.node_id = n.node_id)", [members])
    conn.execute("DELETE FROM metadata_version WHERE raw_object IN (SELECT sha256 FROM tmp_gone_doc)")
    cols = VERSION_COLUMNS.split(", ")
    replaced = conn.execute(f"""
        UPDATE common_metadata cm SET raw_object = v.raw_object, {', '.join(f'{c} = v.{c}' for c in cols)}
        FROM (SELECT DISTINCT ON (node_id, source_id) * FROM metadata_version mv
              WHERE (mv.node_id, mv.source_id) IN (SELECT node_id, source_id FROM common_metadata
                                                   WHERE raw_object IN (SELECT sha256 FROM tmp_gone_doc))
              ORDER BY node_id, source_id, download_time DESC NULLS LAST) v
        WHERE cm.node_id = v.node_id AND cm.source_id = v.source_id
          AND cm.raw_object IN (SELECT sha256 FROM tmp_gone_doc)""").rowcount
    removed = conn.execute("DELETE FROM common_metadata WHERE raw_object IN (SELECT sha256 FROM tmp_gone_doc)"
                           ).rowcount
    conn.execute("DROP TABLE tmp_gone_doc")
    return replaced + removed


def has_schema(conn: psycopg.Connection) -> bool:
    """Whether the database holds hoardfs's tables (a store's database may be empty: never migrated)."""
    row = conn.execute("SELECT to_regclass('node') IS NOT NULL").fetchone()
    return bool(row and row[0])


def referenced(conn: psycopg.Connection, shas: set[bytes], chunk: int = 10_000) -> set[bytes]:
    """Which of these digests a row still needs — what `hoard gc` must keep although the store
    holds a tombstone for it: a physical node that is not deleted or that a batch still holds
    (type A keeps bytes), the full document (`raw_object`) of a metadata row describing a
    node that is not deleted (a virtual asset, or content still held), a database dump, and a
    dataset version's own objects — its manifest.jsonl and dataset.json, whatever their nodes
    say (a batch of the same bytes dropped marks them deleted), and the JPEGs it converted
    (`dataset_object`): `hoard dataset materialize` makes the version again from them."""
    out: set[bytes] = set()
    todo = list(shas)
    # (a database not migrated to 021 yet has no dataset_object: its versions' manifests still count)
    converted = ("UNION SELECT sha256 FROM dataset_object WHERE sha256 = ANY(%(s)s) "
                 if conn.execute("SELECT to_regclass('dataset_object') IS NOT NULL").fetchone() == (True,) else "")
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        rows = conn.execute(
            "SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) WHERE n.sha256 = ANY(%(s)s) "
            "AND (NOT pc.is_deleted OR EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = n.node_id)) "
            "UNION SELECT cm.raw_object FROM common_metadata cm LEFT JOIN physical_content pc USING (node_id) "
            "WHERE cm.raw_object = ANY(%(s)s) AND (pc.node_id IS NULL OR NOT pc.is_deleted "
            "OR EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = cm.node_id)) "
            "UNION SELECT sha256 FROM backup_log WHERE sha256 = ANY(%(s)s) "
            "UNION SELECT manifest_sha256 FROM dataset_version WHERE manifest_sha256 = ANY(%(s)s) "
            "UNION SELECT doc_sha256 FROM dataset_version WHERE doc_sha256 = ANY(%(s)s) " + converted, {"s": part})
        out.update(bytes(r[0]) for r in rows)
    return out


def sample_held(conn: psycopg.Connection, schema: str, n: int) -> list[bytes]:
    """Up to n random physical nodes whose bytes the store must hold — what a backup's verify
    looks up: a node deleted that no batch holds is left out, since gc frees its bytes by
    design (the same rule as `referenced`)."""
    s = pgsql.Identifier(schema)
    return [bytes(r[0]) for r in conn.execute(pgsql.SQL(
        "SELECT n.sha256 FROM {s}.node n LEFT JOIN {s}.physical_content pc USING (node_id) WHERE n.is_physical "
        "AND (pc.node_id IS NULL OR NOT pc.is_deleted "
        "OR EXISTS (SELECT 1 FROM {s}.batch_member bm WHERE bm.node_id = n.node_id)) "
        "ORDER BY random() LIMIT %s").format(s=s), [n]).fetchall()]


def batch_known(conn: psycopg.Connection, batch_id: str) -> bool:
    """Whether the database has the batch (an ingest that never reached its apply step has not)."""
    return conn.execute("SELECT 1 FROM action_batch WHERE batch_id = %s", [batch_id]).fetchone() is not None


def batch_deleted(conn: psycopg.Connection, batch_id: str) -> bool:
    """Whether `hoard delete --batch` already dropped it (its event says so)."""
    return conn.execute("SELECT 1 FROM action_event WHERE batch_id = %s AND detail->>'deleted' = 'true'",
                        [batch_id]).fetchone() is not None
