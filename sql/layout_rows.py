"""The fields a layout can use (datasets/layouts.py), for a set of physical nodes, in a
few set-based queries (no query per node)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import psycopg
from psycopg import sql

#: nodes per round trip
CHUNK = 50_000


#: the parts of a row beyond a node's own fields and locators, each a query of its own
PARTS = frozenset({"metadata", "labels", "batch_sources"})


def layout_rows(conn: psycopg.Connection, node_ids: Sequence[int], parts: Collection[str] = PARTS) -> list[dict]:
    """One dict per physical node, in the order of `node_ids`: node_id, sha256 (hex), size,
    file_type, locators (sorted), and of `parts` (all by default; a layout asks only for
    those its fields use — a query each): "metadata", source + common metadata (of the source
    whose name sorts first, when several described it), raw_metadata, specific (the source's
    own fields, flat `a.b` keys); "labels", {key: [values, sorted]}; "batch_sources", {ingest
    batch: its source} (the source of a file no metadata describes)."""
    rows: dict[int, dict] = {}
    for i in range(0, len(node_ids), CHUNK):
        ids = list(node_ids[i:i + CHUNK])
        for nid, sha, size, ftype, locs in conn.execute(
                "SELECT n.node_id, encode(n.sha256, 'hex'), pc.size, pc.file_type, "
                "       (SELECT array_agg(pp.locator ORDER BY pp.locator) FROM physical_path pp "
                "         WHERE pp.node_id = n.node_id) "
                "FROM node n JOIN physical_content pc USING (node_id) WHERE n.node_id = ANY(%s)", [ids]):
            rows[nid] = {"node_id": nid, "sha256": sha, "size": size, "file_type": ftype, "locators": locs or [],
                         "labels": {}, "batch_sources": {}}
        for nid, batch, source in () if "batch_sources" not in parts else conn.execute(
                "SELECT bm.node_id, ab.batch_id, s.name FROM batch_member bm JOIN action_batch ab USING (batch_id) "
                "JOIN source s ON s.source_id = ab.source_id WHERE bm.node_id = ANY(%s)", [ids]):
            if nid in rows:
                rows[nid]["batch_sources"][batch] = source
        for nid, source, title, author, user, views, dl, raw, specific in () if "metadata" not in parts else conn.execute(
                "SELECT DISTINCT ON (cm.node_id) cm.node_id, s.name, cm.title, cm.author, cm.user_name, "
                "       cm.view_count, cm.download_time, cm.raw_metadata, cm.specific "
                "FROM common_metadata cm JOIN source s USING (source_id) WHERE cm.node_id = ANY(%s) "
                "ORDER BY cm.node_id, s.name", [ids]):
            if nid in rows:
                rows[nid].update(source=source, title=title, author=author, user_name=user, view_count=views,
                                 download_time=dl, raw_metadata=raw, specific=specific)
        for nid, key, values in () if "labels" not in parts else conn.execute(
                "SELECT node_id, key, array_agg(value ORDER BY value) FROM label WHERE node_id = ANY(%s) "
                "GROUP BY node_id, key", [ids]):
            if nid in rows:
                rows[nid]["labels"][key] = values
    return [rows[n] for n in node_ids if n in rows]


def neighbour_ids(conn: psycopg.Connection, node_ids: Sequence[int], up: bool) -> dict[int, list[int]]:
    """node_id → the physical nodes one edge above it (`up`: its parents) or below it (its
    children), not deleted nor black-listed — as hoardfs.sql.selectors.neighbours leaves them
    out —, by node_id; a node with none is not a key."""
    near, far = ("child_id", "parent_id") if up else ("parent_id", "child_id")
    out: dict[int, list[int]] = {}
    for i in range(0, len(node_ids), CHUNK):
        for nid, other in conn.execute(
                sql.SQL("SELECT DISTINCT e.{near}, e.{far} FROM edge e JOIN physical_content pc ON pc.node_id = e.{far} "
                        "WHERE e.{near} = ANY(%s) AND NOT pc.in_black_list AND NOT pc.is_deleted ORDER BY 1, 2")
                .format(near=sql.Identifier(near), far=sql.Identifier(far)), [list(node_ids[i:i + CHUNK])]):
            out.setdefault(nid, []).append(other)
    return out
