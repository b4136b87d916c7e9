"""The database's side of `hoard check` (the store's side is fsd.maintenance.check)."""

from __future__ import annotations

import psycopg


def store_vs_database(conn: psycopg.Connection, objects: set[bytes]) -> tuple[list[bytes], int]:
    """The physical nodes (not deleted) whose sha256 the store does not hold, and how many of
    the store's objects are no node at all (manifests, dumps, files stored by hand)."""
    nodes = {bytes(r[0]) for r in conn.execute(
        "SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) WHERE NOT pc.is_deleted")}
    known = {bytes(r[0]) for r in conn.execute("SELECT sha256 FROM node WHERE is_physical")}
    return sorted(nodes - objects), len(objects - known)
