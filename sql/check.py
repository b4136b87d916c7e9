"""The database's side of `hoard check` (the store's side is fsd.maintenance.check)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import psycopg

#: rows fetched from the server at a time: the nodes are streamed, never all held (issue 37)
ROWS = 10_000


def store_vs_database(conn: psycopg.Connection, objects: Callable[[], Iterable[bytes]]) -> tuple[list[bytes], int]:
    """The physical nodes (not deleted) whose sha256 the store does not hold, and how many of
    the store's objects are no node at all (manifests, dumps, files stored by hand).
    `objects()` gives the store's sha256s in byte order (the index's order); the nodes come
    in the same order (bytea sorts byte by byte) and the two are merged — memory for a batch
    of rows, not a set of every node and every object (3 GB at 10 M)."""
    lacking = [sha for sha, in_store in _merge(
        _rows(conn, "SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) "
                    "WHERE NOT pc.is_deleted ORDER BY n.sha256"), objects()) if not in_store]
    unknown = sum(1 for _sha, is_node in _merge(objects(), _rows(conn, "SELECT sha256 FROM node WHERE is_physical "
                                                                        "ORDER BY sha256")) if not is_node)
    return lacking, unknown


def _rows(conn: psycopg.Connection, query: str) -> Iterator[bytes]:
    """The one column of `query`, fetched ROWS at a time through a server-side cursor."""
    with conn.transaction(), conn.cursor(name="hoard_check") as cur:
        cur.itersize = ROWS
        cur.execute(query)
        for (sha,) in cur:
            yield bytes(sha)


def _merge(left: Iterable[bytes], right: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each item of `left` (ascending) and whether `right` (ascending) holds it."""
    it = iter(right)
    cur = next(it, None)
    for sha in left:
        while cur is not None and cur < sha:
            cur = next(it, None)
        yield sha, cur == sha
