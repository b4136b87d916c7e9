"""The `live` table: how many objects the index points at in each shard, and their payload bytes
— what gc's plan needs, without a pass over the objects table.

    live   shard_id (12 B)   →  u64 objects | u64 payload bytes   (big-endian; no entry: 0 and 0)
    meta   `live_fill`       →  the sha256 up to which a fill has counted (there while one runs)

gc plans from it: a shard's live bytes are its count less the lengths of the dead objects in it
(one lookup per dead object), so `hoard gc --dry-run` reads the shards table, this table and the
dead objects' entries — the work grows with the deletion and the shards, not with the objects.

Kept in the very write transaction that changes `objects` (`Tally`): Index.add_objects (a put's
commit, a recovery's seal, a rebuild's new index), gc's swap (a copy's repoint, a drop). A
process killed anywhere leaves the table as its last commit left `objects`.

*Filled* (`fill_live`: the migration to index format 4, `hoard index recount`) by one pass over
`objects` in bounded write transactions, each advancing `live_fill`: the first clears the table
and sets it to b"" (nothing counted). While it is there, a writer counts a change only for a
sha256 below it (the pass has counted that part; the rest it counts when it gets there) — so at
every commit the table is exact for the objects below `live_fill`, two fills at once share one
pass (each transaction reads where it is from the index), and a killed fill is redone whole by
the next (the index stays below format 4 until one finishes).

*What a wrong count can do*: only make gc compact more or less. gc decides what is live from the
index and the references at swap time, never from here; it takes a shard's members from a
footer only when that lists the replica's whole body (a record left out of it is no longer
trusted to a count that may be as wrong), and its swap retires a shard only when the members it
moved or dropped leave the count at 0, so a count too high keeps a shard. `hoard check`
recounts by its one pass and names a count that differs (next step: `hoard index recount`).
"""

from __future__ import annotations

import struct
from itertools import islice
from typing import Any

from hoardfs.fsd.core import formats
from hoardfs.fsd.core.entries import IndexDamaged, ObjectLoc
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES

__all__ = ["FILL", "LiveTables", "Tally", "pack", "unpack"]

#: `meta` key of a fill under way: the sha256 (or b"") below which the table counts `objects`
FILL = b"live_fill"
_VALUE = struct.Struct(">QQ")
#: objects entries counted per write transaction of a fill
_PER = TXN_ENTRIES - SLACK


def pack(n: int, nbytes: int) -> bytes:
    return _VALUE.pack(n, nbytes)


def unpack(raw: bytes | None) -> tuple[int, int]:
    """(objects, payload bytes) of a `live` value (0, 0 for none, or for one that is no pair:
    `hoard check` names it)."""
    if raw is None or len(raw) != _VALUE.size:
        return 0, 0
    n, nbytes = _VALUE.unpack(bytes(raw))
    return n, nbytes


class Tally:
    """The count changes of one write transaction that changes `objects`: `add` / `remove` each
    entry written or deleted, `entries` reads a shard's count as it will be, `apply` writes them
    (in that transaction, before it commits)."""

    def __init__(self, index: Any, txn: Any) -> None:
        self.db = index.live
        raw = None if index.meta is None else txn.get(FILL, db=index.meta)
        self.fill = None if raw is None else bytes(raw)
        #: whether the table is complete (an index before format 4 may have it, counted only since
        #: it was opened by this version: its migration fills it)
        self.known = self.db is not None and self.fill is None and index.format >= formats.INDEX_LIVE
        self.deltas: dict[bytes, list[int]] = {}

    def add(self, sha: bytes, sid: bytes, length: int, sign: int = 1) -> None:
        if self.db is None or (self.fill is not None and sha >= self.fill):
            return  # a fill counts it when its pass gets there
        d = self.deltas.setdefault(sid, [0, 0])
        d[0] += sign
        d[1] += sign * length

    def remove(self, sha: bytes, sid: bytes, length: int) -> None:
        self.add(sha, sid, length, -1)

    def entries(self, txn: Any, sid: bytes) -> int | None:
        """How many objects the index will point at in `sid` once this transaction commits (None
        while a fill runs or without the table: not known)."""
        if not self.known:
            return None
        return unpack(txn.get(sid, db=self.db))[0] + self.deltas.get(sid, [0, 0])[0]

    def apply(self, txn: Any) -> None:
        for sid, (dn, db) in self.deltas.items():
            if not dn and not db:
                continue
            n, nbytes = unpack(txn.get(sid, db=self.db))
            n, nbytes = max(0, n + dn), max(0, nbytes + db)  # (a wrong count stays one: check names it)
            if n or nbytes:
                txn.put(sid, pack(n, nbytes), db=self.db)
            else:
                txn.delete(sid, db=self.db)
        self.deltas.clear()


class LiveTables:
    """The index's side: the `live` table and its fill. A part of `hoardfs.fsd.core.index.Index`, which
    opens the tables."""

    env: Any
    meta: Any
    objects: Any
    live: Any

    def live_ready(self) -> bool:
        """Whether the counts are complete and may be planned from: format 4 or later, and no fill
        under way (a `hoard index recount` holds the maintenance lock, as gc does)."""
        if self.live is None or getattr(self, "format", 0) < formats.INDEX_LIVE:
            return False
        with self.env.begin() as txn:
            return txn.get(FILL, db=self.meta) is None

    def live_counts(self, txn: Any) -> dict[bytes, tuple[int, int]]:
        """Every shard's (objects, payload bytes), read in `txn` (one entry a shard: O(shards))."""
        return {bytes(k): unpack(bytes(v)) for k, v in txn.cursor(db=self.live)}

    def fill_live(self) -> int:
        """Count `objects` into `live` from scratch (see the module's docstring); returns how many
        object entries were counted. Bounded write transactions."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.live, delete=False)
            txn.put(FILL, b"", db=self.meta)
        n = 0
        while True:
            with self.env.begin(write=True) as txn:
                at = txn.get(FILL, db=self.meta)
                if at is None:  # another process's fill finished the pass
                    break
                cur = txn.cursor(db=self.objects)
                found = cur.set_range(bytes(at)) if at else cur.first()
                items = [(bytes(k), bytes(v)) for k, v in islice(cur.iternext(), _PER)] if found else []
                deltas: dict[bytes, list[int]] = {}
                for sha, raw in items:
                    if len(sha) != 32:  # (no sha256: check names it and counts it nowhere)
                        continue
                    try:
                        loc = ObjectLoc.unpack(raw, sha)
                    except IndexDamaged:  # (check names it; it is not counted there either)
                        continue
                    d = deltas.setdefault(loc.shard_id, [0, 0])
                    d[0] += 1
                    d[1] += loc.length
                for sid, (dn, db) in deltas.items():
                    have, nbytes = unpack(txn.get(sid, db=self.live))
                    txn.put(sid, pack(have + dn, nbytes + db), db=self.live)
                n += len(items)
                if len(items) < _PER:
                    txn.delete(FILL, db=self.meta)
                    break
                txn.put(FILL, items[-1][0] + b"\0", db=self.meta)
        return n
