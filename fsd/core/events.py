"""The index's record of what happened and what is to be fixed: the `events` table (a
bounded log of what happened to disks and shards — a disk's state changed, a read or write
error, a shard recovered, a replica repaired) and the `repairs` table (a replica a reader or
verify found bad, queued until the replicator copies it again from a good replica).
`EventTables` is a part of `hoardfs.fsd.core.index.Index`, which opens the tables.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from typing import Any

#: events older than this, or beyond this many, are pruned (the newest are kept)
EVENTS_MAX_AGE_S = 90 * 86400
EVENTS_MAX = 100_000
#: a queued repair's fields `note_unmendable` adds (kept when the replica is queued again)
UNMENDABLE_KEYS = ("unmendable", "lost", "lost_count")
#: the records no replica holds whole that a queued repair keeps the sha256 of (the rest counted)
LOST_KEPT = 100
_seq = 0
_seq_lock = threading.Lock()


class EventTables:
    """The `events` and `repairs` tables of the index (see the module docstring)."""

    env: Any
    events: Any
    repairs: Any

    def record_event(self, kind: str, **detail: Any) -> None:
        global _seq
        with _seq_lock:
            _seq = (_seq + 1) & 0xFFFFFFFF
            key = struct.pack(">QII", time.time_ns(), os.getpid(), _seq)
        doc = {"time": time.time(), "kind": kind, **detail}
        with self.env.begin(write=True, db=self.events) as txn:
            txn.put(key, json.dumps(doc, default=str).encode())
            if _seq % 1000 == 0:
                self._prune_events(txn)

    def prune_events(self, max_age_s: float = EVENTS_MAX_AGE_S, max_count: int = EVENTS_MAX) -> int:
        """Drop events older than `max_age_s` and all but the newest `max_count`; returns how many."""
        with self.env.begin(write=True, db=self.events) as txn:
            return self._prune_events(txn, max_age_s, max_count)

    def _prune_events(self, txn: Any, max_age_s: float = EVENTS_MAX_AGE_S, max_count: int = EVENTS_MAX) -> int:
        excess = txn.stat(self.events)["entries"] - max_count
        oldest_kept = struct.pack(">Q", int((time.time() - max_age_s) * 1e9))
        cur = txn.cursor(db=self.events)
        n = 0
        if cur.first():
            while True:
                key = bytes(cur.key())
                if n >= excess and key[:8] >= oldest_kept:
                    break
                if not cur.delete():  # delete moves the cursor to the next entry
                    break
                n += 1
        return n

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        out = []
        with self.env.begin(db=self.events) as txn:
            cur = txn.cursor()
            if cur.last():
                for _, v in cur.iterprev():
                    out.append(json.loads(v))
                    if len(out) >= limit:
                        break
        return out

    def events_since(self, kind: str, since_s: float) -> list[tuple[int, dict[str, Any]]]:
        """(time in ns of its key, event) of each event of `kind` recorded since `since_s` (a
        time.time()), oldest first: read from that key on, not the whole table."""
        out = []
        with self.env.begin(db=self.events) as txn:
            cur = txn.cursor()
            if cur.set_range(struct.pack(">Q", max(0, int(since_s * 1e9)))):
                for k, v in cur:
                    doc = json.loads(v)
                    if doc.get("kind") == kind:
                        out.append((struct.unpack(">Q", bytes(k)[:8])[0], doc))
        return out

    def queue_repair(self, sid: bytes, disk_uuid: str, reason: str) -> None:
        """Queue the replica for repair; a finding that no copy of the shard can be assembled
        (`note_unmendable`) stays with it: a reader finding the replica bad again changes nothing
        about that — the next repair that fails writes it afresh, one that succeeds clears it."""
        key = sid + disk_uuid.encode()
        with self.env.begin(write=True, db=self.repairs) as txn:
            raw = txn.get(key)
            kept = {k: v for k, v in json.loads(raw).items() if k in UNMENDABLE_KEYS} if raw else {}
            txn.put(key, json.dumps({"reason": reason, "time": time.time(), **kept}).encode())

    def note_unmendable(self, sid: bytes, disk_uuid: str, why: str, lost: list[bytes]) -> None:
        """A queued repair of this replica found no copy of the shard to make: some record is
        whole in no replica (`why`; `lost`, the sha256 of each such record — up to LOST_KEPT).
        `hoard health` says so instead of sending the user to `hoard replicate` again, and names
        a batch or view whose manifest is among them (hoardfs.fsd.store.Store.status)."""
        key = sid + disk_uuid.encode()
        with self.env.begin(write=True, db=self.repairs) as txn:
            raw = txn.get(key)
            doc = json.loads(raw) if raw else {"reason": why, "time": time.time()}
            doc.update(unmendable=why, lost=[s.hex() for s in lost[:LOST_KEPT]], lost_count=len(lost))
            txn.put(key, json.dumps(doc).encode())

    def clear_repair(self, sid: bytes, disk_uuid: str) -> None:
        with self.env.begin(write=True, db=self.repairs) as txn:
            txn.delete(sid + disk_uuid.encode())

    def pending_repairs(self) -> list[tuple[bytes, str, dict]]:
        with self.env.begin(db=self.repairs) as txn:
            return [(bytes(k[:12]), bytes(k[12:]).decode(), json.loads(v)) for k, v in txn.cursor()]
