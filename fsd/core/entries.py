"""The index's entries and how they are encoded: where an object is (`ObjectLoc`, the `objects`
table's 29-byte value), a shard's metadata (`ShardMeta`, JSON), the JSON entries of disks,
batches, views and retired shards — each checked as it is read, so a damaged entry is one
clear `IndexDamaged` naming it, never a traceback — and the index's errors.
`hoardfs.fsd.core.index.Index` reads and writes them; its tables are listed there.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lmdb

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.diskid import DiskRecord

_OBJ = struct.Struct("<12sQQB")


class ObjectLoc(NamedTuple):
    """Where an object's record is: its shard, the payload's offset there and its length. A
    named tuple, not a dataclass: a batch read looks up tens of thousands at once, and a tuple
    is made in half the time of a frozen dataclass's instance (the plan's lookups:
    docs/benchmarks.md, "The S3 backend against SeaweedFS")."""

    shard_id: bytes
    offset: int
    length: int
    flags: int = 0

    @classmethod
    def unpack(cls, raw: bytes, sha: bytes | None = None) -> ObjectLoc:
        """From an `objects` table value (of object `sha`, named if the value is malformed)."""
        try:
            return cls._make(_OBJ.unpack(raw))
        except struct.error:
            raise IndexDamaged(f"the index entry of object {sha.hex() if sha else '?'} is malformed "
                               f"({len(raw)} bytes, an entry has {_OBJ.size})") from None

    def pack(self) -> bytes:
        """The `objects` table value."""
        return _OBJ.pack(self.shard_id, self.offset, self.length, self.flags)


@dataclass
class ShardMeta:
    shard_id: bytes
    klass: str
    size: int = 0
    sealed: bool = False
    replicas: list[str] = field(default_factory=list)  # disk uuids holding a complete copy
    records: int = 0
    created: float = field(default_factory=time.time)
    verified: float | None = None

    @property
    def hex(self) -> str:
        return self.shard_id.hex()

    def to_json(self) -> bytes:
        return json.dumps({"class": self.klass, "size": self.size, "sealed": self.sealed,
                           "replicas": self.replicas, "records": self.records,
                           "created": self.created, "verified": self.verified}).encode()

    @classmethod
    def from_json(cls, sid: bytes, raw: bytes) -> ShardMeta:
        try:
            d = json.loads(raw)
            meta = cls(sid, d["class"], d["size"], d["sealed"], d["replicas"], d["records"], d["created"],
                       d["verified"])
        except (ValueError, TypeError, KeyError) as e:
            raise IndexDamaged(f"the index entry of shard {sid.hex()} is malformed ({type(e).__name__}: {e})") from None
        # JSON of the wrong types decodes, then every reader traced back on it (`replicas: null`)
        wrong = [name for name, ok in (
            ("class", isinstance(meta.klass, str)), ("size", _is_int(meta.size)), ("records", _is_int(meta.records)),
            ("replicas", isinstance(meta.replicas, list) and all(isinstance(u, str) for u in meta.replicas)),
            ("created", _is_num(meta.created)), ("verified", meta.verified is None or _is_num(meta.verified)))
            if not ok]
        if wrong:
            raise IndexDamaged(f"the index entry of shard {sid.hex()} is malformed ({', '.join(wrong)} of the wrong "
                               "type)")
        return meta


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def json_entry(what: str, raw: bytes) -> dict[str, Any]:
    """A table value that holds a JSON object (a disk, batch, view or retired shard: `what`
    names it); IndexDamaged if it is not one."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise IndexDamaged(f"the index entry of {what} is malformed ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise IndexDamaged(f"the index entry of {what} is malformed (a JSON {type(doc).__name__}, not an object)")
    return doc


def named_entry(kind: str, name: str, raw: bytes) -> dict[str, Any]:
    """A `batches` or `views` entry (`kind` "batch" or "view"): a JSON object naming its
    manifest object; IndexDamaged if it is not one (every reader takes `info["manifest"]`)."""
    doc = json_entry(f"{kind} {name}", raw)
    sha = doc.get("manifest")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise IndexDamaged(f"the index entry of {kind} {name} is malformed (no manifest sha256)")
    return doc


def _disk(key: bytes) -> str:
    """How a `disks` table entry is named in IndexDamaged's message."""
    return f"disk {bytes(key).decode(errors='replace')}"


def disk_record(key: bytes, raw: bytes) -> DiskRecord:
    """A `disks` table entry; IndexDamaged if it does not decode."""
    what = _disk(key)
    json_entry(what, raw)
    try:
        rec = DiskRecord.from_json(raw)
    except (ValueError, TypeError, KeyError) as e:
        raise IndexDamaged(f"the index entry of {what} is malformed ({type(e).__name__}: {e})") from None
    if not _is_int(rec.used_bytes) or not all(isinstance(v, str) for v in (rec.uuid, rec.label, rec.path)):
        raise IndexDamaged(f"the index entry of {what} is malformed (a field of the wrong type)")
    return rec


class IndexDamaged(HoardError):
    """An index entry that does not decode: the SSD corrupted it, or a tool wrote it. The
    shards are the truth (every record carries its sha256 and size): a rebuild recreates it."""

    exit_code = ExitCode.DATA

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what}: the index is damaged; `hoard index rebuild` recreates it from the shards "
                         "(`hoard check` lists every damaged entry)", ExitCode.DATA)

    @property
    def finding(self) -> str:
        """The line `hoard check` prints for it."""
        return f"{self.what}: `hoard index rebuild` recreates the index from the shards"


class IndexUnavailable(HoardError):
    """The LMDB index cannot be written (SSD full, read-only, I/O error)."""

    exit_code = ExitCode.UNAVAILABLE


def index_error(path: Path | str, e: lmdb.Error) -> IndexUnavailable:
    """One line for an LMDB failure, naming the index and what to do."""
    text = str(e)
    try:  # LMDB reports a short write on a full filesystem as EIO: look at the free space too
        st = os.statvfs(path)
        full = st.f_bavail * st.f_frsize < 4 << 20
    except OSError:
        full = False
    if isinstance(e, lmdb.MapFullError) or "No space left" in text or "ENOSPC" in text or full:
        err = IndexUnavailable(f"the index at {path} cannot grow: the SSD is full ({text.strip()}); free space "
                               "on the SSD (zones 3A–3D, old `index.old-*` copies) and run this again",
                               ExitCode.NO_SPACE)
        return err
    return IndexUnavailable(f"the index at {path} failed: {text.strip()}; check the SSD (`dmesg`, `df`) and run "
                            "this again; `hoard index restore` or `hoard index rebuild` if it stays broken")
