"""The database's side of `hoard check` (the store's side is hoardfs.fsd.maintenance.check): which
physical nodes the store lacks (`store_vs_database`), and whose deletion flags disagree with
what the store says of their objects (`liveness`, mended by `mend_liveness`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import psycopg

from hoardfs.sql.apply import hold_membership

#: rows fetched from the server at a time: the nodes are streamed, never all held, so memory
#: does not grow with the database
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
    for (sha, *_rest) in _tuples(conn, query):
        yield bytes(sha)


def _tuples(conn: psycopg.Connection, query: str) -> Iterator[tuple[Any, ...]]:
    """The rows of `query`, fetched ROWS at a time through a server-side cursor."""
    with conn.transaction(), conn.cursor(name="hoard_check") as cur:
        cur.itersize = ROWS
        cur.execute(query)
        yield from cur


class StoreMarks(Protocol):
    """What the store says of an object (hoardfs.fsd.maintenance.check.IndexMarks asks the index)."""

    def holds(self, sha: bytes) -> bool:
        """Whether the index has the object."""

    def hides(self, sha: bytes) -> bool:
        """Whether it carries a hidden mark (deletion type A)."""

    def hidden(self) -> Iterator[bytes]:
        """Every hidden object, in byte order."""


#: a batch the database has holding the node (the smallest id), as a subquery on `pc`
_A_BATCH = "(SELECT min(bm.batch_id) FROM batch_member bm WHERE bm.node_id = pc.node_id)"


@dataclass(frozen=True)
class Liveness:
    """A physical node whose deletion flags in the database disagree with the store: the
    database is the one to change (`mend_liveness`), since the flags follow the store."""
    sha256: bytes
    store_hides: bool  # what the store says: hidden (type A), or held and not hidden
    is_hidden: bool    # the database's flags
    is_deleted: bool
    batch: str | None  # a batch the database has holding it

    def line(self) -> str:
        h = self.sha256.hex()
        if self.store_hides:
            return (f"node {h}: the store hides it (`hoard delete --node`), the database does not mark it hidden"
                    + ("" if self.is_deleted else " and selectors still return it")
                    + "; `hoard check --repair` marks it hidden in the database")
        if self.batch is not None:
            told = (f"; `hoard check --repair` marks it live (or `hoard delete --node {h}` hides it in the store "
                    "too)" if self.is_hidden else "; `hoard check --repair` marks it live")
            return (f"node {h}: batch {self.batch} holds it and the store holds it"
                    + (" without hiding it" if self.is_hidden else "")
                    + ", but the database marks it deleted (selectors skip it)" + told)
        return (f"node {h}: the database marks it hidden (`hoard delete --node`), the store does not hide it; "
                f"`hoard check --repair` takes the mark off in the database (or `hoard delete --node {h}` hides "
                "it in the store too)")


    def mended(self) -> str:
        """What `mend_liveness` did to it."""
        h = self.sha256.hex()
        if self.store_hides:
            return f"node {h} marked hidden (and deleted) in the database, as the store hides it"
        if self.batch is not None:
            return f"node {h} marked live in the database: batch {self.batch} holds it and the store shows it"
        return f"node {h}: its hidden mark taken off in the database, as the store does not hide it"


def liveness(conn: psycopg.Connection, store: StoreMarks) -> Iterator[Liveness]:
    """The physical nodes whose deletion flags disagree with the store. The rule: a node the
    store hides is hidden and deleted (type A; storing it again does not undo it); a node the
    store holds without hiding it is not hidden, and not deleted while a batch holds it (type B
    marks deleted only nodes no batch holds, and gc keeps what a batch holds). A node the store
    does not hold is item 7's (`store_vs_database`); a node no batch holds may be deleted or not
    (a dropped batch's node that a view or `hoard put` keeps in the store). Reads the deleted
    nodes a batch holds or the database hides, and the store's hidden objects: the disagreeing
    few are asked of the store one by one, no set of every node or object is built."""
    for sha, is_hidden, batch in _tuples(conn, (
            f"SELECT n.sha256, pc.is_hidden, {_A_BATCH} FROM node n JOIN physical_content pc USING (node_id) "
            "WHERE pc.is_deleted AND (pc.is_hidden OR EXISTS (SELECT 1 FROM batch_member bm "
            "WHERE bm.node_id = pc.node_id)) ORDER BY n.sha256")):
        sha = bytes(sha)
        if store.holds(sha) and not store.hides(sha):
            yield Liveness(sha, False, is_hidden, True, batch)
    hidden = store.hidden()
    while part := list(islice(hidden, ROWS)):
        for sha, is_deleted, batch in conn.execute(
                f"SELECT n.sha256, pc.is_deleted, {_A_BATCH} FROM node n JOIN physical_content pc USING (node_id) "
                "WHERE n.sha256 = ANY(%s) AND NOT pc.is_hidden ORDER BY n.sha256", [part]).fetchall():
            yield Liveness(bytes(sha), True, False, is_deleted, batch)


def mend_liveness(conn: psycopg.Connection, store: StoreMarks) -> list[Liveness]:
    """`hoard check --repair`: set the deletion flags of every node `liveness` finds from the
    store — hidden and deleted where the store hides it; else not hidden, and not deleted while
    a batch holds it. One transaction holding MEMBERSHIP_LOCK exclusively: no batch deletion or
    apply changes what it judges meanwhile. Returns what it mended."""
    with conn.transaction():
        hold_membership(conn, exclusive=True)
        found = list(liveness(conn, store))
        live = [f.sha256 for f in found if not f.store_hides]
        hide = [f.sha256 for f in found if f.store_hides]
        if live:
            conn.execute("UPDATE physical_content pc SET is_hidden = false, is_deleted = pc.is_deleted "
                         "AND NOT EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id) FROM node n "
                         "WHERE n.node_id = pc.node_id AND n.sha256 = ANY(%s)", [live])
        if hide:
            conn.execute("UPDATE physical_content pc SET is_hidden = true, is_deleted = true FROM node n "
                         "WHERE n.node_id = pc.node_id AND n.sha256 = ANY(%s)", [hide])
    return found


def _merge(left: Iterable[bytes], right: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each item of `left` (ascending) and whether `right` (ascending) holds it."""
    it = iter(right)
    cur = next(it, None)
    for sha in left:
        while cur is not None and cur < sha:
            cur = next(it, None)
        yield sha, cur == sha
