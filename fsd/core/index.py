"""The LMDB index on the SSD: a cache of what the shards on the HDDs hold.

Named databases (keys → values):

    objects  sha256 (32 B)        → shard_id (12 B) | payload offset u64 | length u64 | flags u8
    shards   shard_id (12 B)      → JSON {class, size, sealed, replicas: [disk uuid…], records, created, verified}
    disks    disk uuid (ascii)    → JSON DiskRecord
    events   time_ns u64 BE | seq → JSON {time, kind, disk, shard, detail}
    repairs  shard_id | disk uuid → JSON {reason, time}
    batches  batch id (ascii)     → JSON {source, manifest: sha256 hex, files, bytes, sealed}
    views    view name (ascii)    → JSON {manifest: sha256 hex, files, bytes, created}
    exts     sha256 (32 B)        → file extension seen when the object was stored (ascii, ≤ 10)
    chunks   sha256 (32 B)        → xxh3-128 of each 1 MiB piece (records.MAP_PIECE) of a large object (16 B each),
                                    so a reader can verify a piece without reading the whole object
    hidden   sha256 (32 B)        → JSON {time, reason}: deletion type A (the mount hides it, bytes stay)
    deleted  sha256 (32 B)        → JSON {time, reason}: deletion type B tombstone (gc frees the bytes)
    rooted   sha256 (32 B)        → JSON {time, reason}: a root — `hoard put` acknowledged it with no manifest
                                    naming it; gc keeps it until `hoard delete --object` releases it
    retired  shard_id (12 B)      → JSON ShardMeta: compacted by gc, replicas still to be deleted
    dropped  sha256[:8]           → sha256[8:16] (b"" when several): an object gc collected, so that
                                    the mount never lets a by-hash number name a later object
                                    with the same leading bits (Index.sole_owner)
    pointers `<folder>/<name>.json` → the exact bytes of the newest batch or view pointer written to the
                                    disks (fsd/core/pointers.py; removal records too), see Index.name_pointer
    meta     key (ascii)          → value: `ssd_uuid` (the SSD this index belongs to), `marks_*` (the marks
                                    log's stamps and each disk's progress, see Index.log_in), `pointers_*`
                                    (the pointers' stamps and each disk's progress, see Index.name_pointer),
                                    `disk_seen:<uuid>` (when a store open last found the disk at its
                                    path, see Index.disks_seen)

LMDB allows one writer at a time across processes (RQ workers, the mount daemon) and any
number of readers. Transactions are short and never span an `await` or disk IO on the
HDDs: callers do their IO first, then commit what it produced in one transaction — except
the marks log, whose records are appended to the HDDs inside the transaction that applies
them, so that its order is the index's (Store.log_marks, Store.snapshot_marks), and a batch
or view pointer, written inside the transaction that names it (Index.name_pointer).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from fsd.base.errors import ExitCode, HoardError
from fsd.core import pointers
from fsd.core.disks import DiskRecord
from fsd.core.layout import BATCHES_DIR, VIEWS_DIR

_OBJ = struct.Struct("<12sQQB")
MAP_SIZE = 1 << 40  # address space only; the file grows with use
#: `meta` keys of the marks log (Index.log_in): the last stamp (ns) given out, the stamp of the
#: last record, and per disk `marks_at:<uuid>` (its log is complete up to) and
#: `marks_failed:<uuid>` (when a snapshot last failed to reach it)
MARKS_NS = b"marks_ns"
MARKS_LAST = b"marks_last"


def _marks_at(uuid: str) -> bytes:
    return b"marks_at:" + uuid.encode()


def _marks_failed(uuid: str) -> bytes:
    return b"marks_failed:" + uuid.encode()


#: `meta` keys of the batch and view pointers (Index.name_pointer): the last stamp given out,
#: the stamp of the newest pointer, and per disk `pointers_at:<uuid>` (it holds every pointer up
#: to) and `pointers_failed:<uuid>` (when bringing its pointers up last failed)
POINTERS_NS = b"pointers_ns"
POINTERS_LAST = b"pointers_last"


def _pointers_of(what: str, uuid: str) -> bytes:
    """The `meta` key `pointers_<what>:<uuid>` (`what`: "at" or "failed")."""
    return f"pointers_{what}:{uuid}".encode()


def _disk_seen(uuid: str) -> bytes:
    """The `meta` key of when a store open last found disk `uuid` at its path with its identity
    (Unix time, `repr` of a float). Not in the disk's JSON record: see DiskRecord."""
    return b"disk_seen:" + uuid.encode()


#: events older than this, or beyond this many, are pruned (the newest are kept)
EVENTS_MAX_AGE_S = 90 * 86400
EVENTS_MAX = 100_000
_seq = 0
_seq_lock = threading.Lock()


#: the reason of a named put's provisional roots (`hoard put --name`): it roots what it stores
#: as every put does, then, once its manifest holds them, takes off the roots that are still
#: its own (Index.unmark_held); any other root of the same object replaces it (Index.mark)
HELD_UNTIL_NAMED = "held until its put is named: "


def _reason(doc: bytes | None) -> str:
    """The reason of a mark's JSON value ("" for none or one that does not read)."""
    if doc is None:
        return ""
    try:
        return str(json.loads(doc).get("reason", ""))
    except (ValueError, AttributeError):
        return ""


@dataclass(frozen=True, slots=True)
class ObjectLoc:
    shard_id: bytes
    offset: int
    length: int
    flags: int = 0

    @classmethod
    def unpack(cls, raw: bytes, sha: bytes | None = None) -> ObjectLoc:
        """From an `objects` table value (of object `sha`, named if the value is malformed)."""
        try:
            return cls(*_OBJ.unpack(raw))
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


def has_index(path: Path) -> bool:
    """Whether an LMDB index is at `path`: its data file, a regular file that is not empty (a
    zero-byte one is no index: LMDB would write a new, empty one into it)."""
    try:
        st = (path / "data.mdb").stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def open_existing(path: Path, wait_s: float = 2.0) -> Index:
    """The store's index at `path`, never a new one: an index rebuild or restore swaps the
    index in with two renames, and a command that opened it in between used to create an
    empty index there (the rebuild's rename then failed, and the store showed no objects).
    A missing index is waited for `wait_s` (the gap is a moment), then refused."""
    deadline = time.monotonic() + wait_s
    while not has_index(path):
        if time.monotonic() >= deadline:
            raise IndexUnavailable(f"there is no index at {path} (an index rebuild or restore is swapping it in, or "
                                   "it was removed): nothing was written; run this again, and if it stays, "
                                   "`hoard index restore` or `hoard index rebuild`")
        time.sleep(0.05)
    try:
        return Index(path, create=False)
    except lmdb.Error as e:
        raise index_error(path, e) from None


class Index:
    def __init__(self, path: Path, readonly: bool = False, create: bool = True) -> None:
        """`create` makes the folder and the LMDB files when missing (`hoard init`, a rebuild's
        new index); without it, or `readonly`, a missing index is an `lmdb.Error`."""
        create = create and not readonly
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=24, readonly=readonly,
                             max_readers=512, lock=True, create=create)
        # RQ kills work horses with SIGKILL: their reader slots stay taken and pin old pages
        # (the file grows) until someone clears them
        self.env.reader_check()
        self.objects = self.env.open_db(b"objects", create=not readonly)
        self.shards = self.env.open_db(b"shards", create=not readonly)
        self.disks = self.env.open_db(b"disks", create=not readonly)
        self.events = self.env.open_db(b"events", create=not readonly)
        self.repairs = self.env.open_db(b"repairs", create=not readonly)
        self.batches = self.env.open_db(b"batches", create=not readonly)
        self.views = self.env.open_db(b"views", create=not readonly)
        self.exts = self.env.open_db(b"exts", create=not readonly)
        self.chunks = self.env.open_db(b"chunks", create=not readonly)
        self.hidden = self.env.open_db(b"hidden", create=not readonly)
        self.deleted = self.env.open_db(b"deleted", create=not readonly)
        self.retired = self.env.open_db(b"retired", create=not readonly)
        # a read-only look at an index from before these tables: they are absent (None)
        self.meta = self._optional_db(b"meta", readonly)
        self.rooted = self._optional_db(b"rooted", readonly)
        self.dropped = self._optional_db(b"dropped", readonly)
        self.pointers = self._optional_db(b"pointers", readonly)
        #: `(op, shas, stamp)` called inside the write transaction that sets or clears marks,
        #: before it commits (the store appends them to `marks/` on the HDDs, see
        #: Store.log_marks): the log's order is then the order the index applied them in
        self.mark_log: Callable[[str, list[bytes], int], list[str]] | None = None
        #: listings hand an entry that does not decode here and leave it out (see _listed)
        self.damaged: Callable[[IndexDamaged], None] | None = None
        self._stamp_floor = 0

    def close(self) -> None:
        self.env.close()

    # -- objects ---------------------------------------------------------------------
    def lookup(self, sha: bytes) -> ObjectLoc | None:
        with self.env.begin(db=self.objects) as txn:
            raw = txn.get(sha)
        return ObjectLoc.unpack(raw, sha) if raw else None

    def lookup_many(self, shas: Iterable[bytes]) -> dict[bytes, ObjectLoc]:
        out = {}
        with self.env.begin(db=self.objects) as txn:
            for sha in shas:
                raw = txn.get(sha)
                if raw:
                    out[sha] = ObjectLoc.unpack(raw, sha)
        return out

    def add_objects(self, entries: list[tuple[bytes, ObjectLoc]], shard: ShardMeta | None = None,
                    update: tuple[bytes, Callable[[ShardMeta], dict[str, int] | None]] | None = None) -> list[bool]:
        """Insert if absent, in one transaction with the shard's new metadata (`shard`, written
        as is by the writer that owns the open shard, or `update` = (shard id, fn) as in
        `update_shard`); True = new."""
        added = []
        with self.env.begin(write=True) as txn:
            for sha, loc in entries:
                added.append(txn.put(sha, loc.pack(),
                                     overwrite=False, db=self.objects))
            if shard is not None:
                txn.put(shard.shard_id, shard.to_json(), db=self.shards)
            if update is not None:
                self._update_shard(txn, *update)
        return added

    def _optional_db(self, name: bytes, readonly: bool) -> Any:
        try:
            return self.env.open_db(name, create=not readonly)
        except lmdb.NotFoundError:
            return None

    def lookup_keep(self, sha: bytes) -> ObjectLoc | None:
        """Where an object is, for a writer about to answer "existing": the lookup and the
        clearing of a type-B tombstone happen in one transaction, so gc — which drops only
        objects still tombstoned inside its own swap transaction — cannot drop the object
        after this returned it (storing an object again means it is wanted after all)."""
        with self.env.begin() as txn:
            raw = txn.get(sha, db=self.objects)
            marked = raw is not None and txn.get(sha, db=self.deleted) is not None
        if raw is None or not marked:
            return ObjectLoc.unpack(raw, sha) if raw else None
        with self.env.begin(write=True) as txn:
            raw = txn.get(sha, db=self.objects)
            if raw is None:
                return None  # gc dropped it between the two transactions: store it anew
            if txn.delete(sha, db=self.deleted):
                self.log_in(txn, "keep", [sha])
            return ObjectLoc.unpack(raw, sha)

    def count_objects(self) -> int:
        return self.count(self.objects)

    def count(self, db: Any) -> int:
        """Entries in one table (0 for a table an old index opened read-only does not have)."""
        if db is None:
            return 0
        with self.env.begin() as txn:
            return txn.stat(db)["entries"]

    def iter_objects(self) -> Iterator[tuple[bytes, ObjectLoc]]:
        with self.env.begin(db=self.objects) as txn:
            for k, v in txn.cursor():
                yield bytes(k), ObjectLoc.unpack(v, bytes(k))

    # -- batches (ingested, with their manifest object) and views (named manifests) ---------------
    def put_batch(self, batch_id: str, info: dict[str, Any] | None) -> None:
        self._put_json(self.batches, batch_id, info)

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        return self._get_json(self.batches, batch_id, "batch")

    def iter_batches(self) -> list[tuple[str, dict[str, Any]]]:
        return self._all_json(self.batches, "batch")

    def put_view(self, name: str, info: dict[str, Any] | None) -> None:
        """Name a view's manifest object; None removes the view."""
        self._put_json(self.views, name, info)

    def get_view(self, name: str) -> dict[str, Any] | None:
        return self._get_json(self.views, name, "view")

    def iter_views(self) -> list[tuple[str, dict[str, Any]]]:
        return self._all_json(self.views, "view")

    def _put_json(self, db: Any, key: str, info: dict[str, Any] | None) -> None:
        with self.env.begin(write=True, db=db) as txn:
            if info is None:
                txn.delete(key.encode())
            else:
                txn.put(key.encode(), json.dumps(info, sort_keys=True).encode())

    def _get_json(self, db: Any, key: str, kind: str) -> dict[str, Any] | None:
        with self.env.begin(db=db) as txn:
            raw = txn.get(key.encode())
        return named_entry(kind, key, raw) if raw else None

    def _all_json(self, db: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
        with self.env.begin(db=db) as txn:
            items = [(bytes(k).decode(errors="replace"), bytes(v)) for k, v in txn.cursor()]
        return list(self._listed(items, lambda k, v: (k, named_entry(kind, k, v))))

    def _listed(self, items: Iterable[tuple[Any, Any]], decode: Callable[[Any, Any], Any]) -> Iterator[Any]:
        """Decoded entries of a listing. One that does not decode raises IndexDamaged — or,
        where `self.damaged` is set (the mount), goes to it and is left out, so one damaged
        entry does not hide every good one beside it."""
        for k, v in items:
            try:
                yield decode(k, v)
            except IndexDamaged as e:
                if self.damaged is None:
                    raise
                self.damaged(e)

    # -- batch and view pointers: the bytes the disks hold of each name (fsd/core/pointers.py) --------
    def _next_pointer_stamp(self, txn: Any, floor: int = 0) -> int:
        """A pointer's stamp (ns), inside a write transaction: the wall clock, but after the last
        one given (`meta` `pointers_ns`) and after `floor` — a clock set back must not make a
        redefinition older than the definition it replaces (a rebuild takes the newest)."""
        last = txn.get(POINTERS_NS, db=self.meta)
        stamp = max(time.time_ns(), int(last) + 1 if last else 0, floor + 1)
        txn.put(POINTERS_NS, str(stamp).encode(), db=self.meta)
        return stamp

    def name_pointer(self, folder: str, name: str, info: dict[str, Any] | None,
                     write: Callable[[str, bytes], list[str]]) -> bytes:
        """Register batch (`folder` BATCHES_DIR) or view (VIEWS_DIR) `name` — None unregisters
        it — in one write transaction: its stamped pointer goes to `write(rel, body)` (the store
        puts it on the disks in service and returns the uuids that took it; raising leaves the
        index unchanged), then the entry and the pointer's bytes are put, and each disk that
        took it and held every earlier pointer is noted complete up to its stamp (one that
        missed an earlier one stays behind: Store.catch_up_pointers). Returns the bytes."""
        db = self.batches if folder == BATCHES_DIR else self.views

        def entry(txn: Any) -> None:
            if info is None:
                txn.delete(name.encode(), db=db)
            else:
                txn.put(name.encode(), json.dumps(info, sort_keys=True).encode(), db=db)

        return self.keep_pointer(pointers.rel(folder, name), info, write, entry)

    def keep_pointer(self, key: str, info: dict[str, Any] | None, write: Callable[[str, bytes], list[str]],
                     also: Callable[[Any], None] | None = None) -> bytes:
        """name_pointer for any pointer (a ROOT_FILES one: no table names it); `also(txn)` puts
        what the pointer names, in the same transaction."""
        with self.env.begin(write=True) as txn:
            stamp = self._next_pointer_stamp(txn)
            body = pointers.encode(info, stamp, key)
            took = write(key, body)
            if also is not None:
                also(txn)
            self._put_pointer(txn, key, body, stamp, took)
        return body

    def _put_pointer(self, txn: Any, key: str, body: bytes, stamp: int, took: Iterable[str]) -> None:
        raw = txn.get(POINTERS_LAST, db=self.meta)
        before = int(raw) if raw else 0
        txn.put(key.encode(), body, db=self.pointers)
        txn.put(POINTERS_LAST, str(stamp).encode(), db=self.meta)
        for uuid in took:  # only a disk that was complete stays complete
            at = txn.get(_pointers_of("at", uuid), db=self.meta)
            if at is not None and int(at) >= before:
                txn.put(_pointers_of("at", uuid), str(stamp).encode(), db=self.meta)

    def pointers_state(self) -> tuple[int | None, dict[str, int], dict[str, float]]:
        """(stamp of the newest pointer — None: the table was never filled, an index from before
        it (align_pointers) —, {disk uuid: holds every pointer up to}, {disk uuid: when bringing
        its pointers up last failed})."""
        if self.meta is None:
            return None, {}, {}
        at, failed = {}, {}
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(POINTERS_LAST)
            cur = txn.cursor()
            if cur.set_range(b"pointers_"):
                for k, v in cur:
                    k = bytes(k)
                    if not k.startswith(b"pointers_"):
                        break
                    if k.startswith(b"pointers_at:"):
                        at[k[12:].decode()] = int(v)
                    elif k.startswith(b"pointers_failed:"):
                        failed[k[16:].decode()] = float(v)
        return (int(raw) if raw else None), at, failed

    def pointer_bodies(self, txn: Any = None) -> tuple[int, dict[str, bytes]]:
        """(stamp of the newest pointer, {rel path: the pointer's bytes}), in one read
        transaction (`txn`, if given)."""
        if self.pointers is None:
            return 0, {}
        with contextlib.nullcontext(txn) if txn is not None else self.env.begin() as txn:
            raw = txn.get(POINTERS_LAST, db=self.meta)
            return int(raw) if raw else 0, {bytes(k).decode(): bytes(v) for k, v in txn.cursor(db=self.pointers)}

    def pointers_brought(self, uuid: str, since: int, stale: dict[str, int],
                         write: Callable[[dict[str, bytes]], bool]) -> bool:
        """Finish bringing disk `uuid`'s pointers up to the index, inside a write transaction (no
        pointer is named meanwhile): the pointers stamped after `since` (named while the caller
        wrote the older ones: its copy may have gone over a newer one) and a removal record for
        each `stale` name (a file on the disk the index has no pointer for; its stamp, when it
        reads, is the floor of the new one) go to `write({rel: bytes})`. If it returns True the
        disk holds every pointer; else the failure's time is noted (Store.pointers_behind)."""
        with self.env.begin(write=True) as txn:
            bodies = {bytes(k).decode(): bytes(v) for k, v in txn.cursor(db=self.pointers)
                      if pointers.stamp_of(bytes(v)) > since}
            for key, seen in stale.items():
                if txn.get(key.encode(), db=self.pointers) is None:
                    stamp = self._next_pointer_stamp(txn, seen)
                    bodies[key] = pointers.encode(None, stamp, key)
                    self._put_pointer(txn, key, bodies[key], stamp, ())
            ok = write(bodies)
            if ok:
                txn.put(_pointers_of("at", uuid), txn.get(POINTERS_LAST, db=self.meta) or b"0", db=self.meta)
                txn.delete(_pointers_of("failed", uuid), db=self.meta)
            else:
                txn.put(_pointers_of("failed", uuid), repr(time.time()).encode(), db=self.meta)
        return ok

    def align_pointers(self) -> int:
        """Make the `pointers` table name what `batches` and `views` hold: an entry without its
        pointer, or with a different one (an index from before the table), gets a new one; a
        pointer naming what the index does not hold gets a removal record — unless its manifest
        is no object the index knows (a rebuild left it out: its disk was absent; kept, so a
        rebuild with that disk back takes it). No disk is noted as holding the new pointers
        (Store.catch_up_pointers brings them). Returns how many changed."""
        n = 0
        with self.env.begin(write=True) as txn:
            have = {bytes(k).decode(): bytes(v) for k, v in txn.cursor(db=self.pointers)}
            want: dict[str, dict[str, Any] | None] = {}
            for folder, db in ((BATCHES_DIR, self.batches), (VIEWS_DIR, self.views)):
                for k, v in txn.cursor(db=db):
                    name = bytes(k).decode(errors="replace")
                    try:
                        want[pointers.rel(folder, name)] = named_entry(pointers.KINDS[folder], name, bytes(v))
                    except IndexDamaged:
                        continue  # `hoard check` names it ("malformed")
            for key, body in have.items():
                if pointers.split(key)[0] not in pointers.KINDS:
                    continue  # (a ROOT_FILES pointer: no table says what it should be)
                try:
                    now = pointers.entry(pointers.decode(body))
                except ValueError:  # damage in the index: the pointer is written again
                    have[key], now = b"", None
                if key not in want and now is not None and txn.get(bytes.fromhex(now["manifest"]), db=self.objects):
                    want[key] = None
                elif key not in want:
                    want[key] = now
            for key, info in want.items():
                if key in have and have[key] and pointers.entry(pointers.decode(have[key])) == info:
                    continue
                stamp = self._next_pointer_stamp(txn)
                self._put_pointer(txn, key, pointers.encode(info, stamp, key), stamp, ())
                n += 1
            if txn.get(POINTERS_LAST, db=self.meta) is None:
                txn.put(POINTERS_LAST, b"0", db=self.meta)
        return n

    def load_pointers(self, bodies: dict[str, bytes]) -> None:
        """After an index rebuild: the newest pointer of each name the disks (and an index copy)
        hold; later stamps follow the newest (no disk is known to hold them all)."""
        last = max((pointers.stamp_of(b) for b in bodies.values()), default=0)
        with self.env.begin(write=True) as txn:
            for key, body in bodies.items():
                txn.put(key.encode(), body, db=self.pointers)
            txn.put(POINTERS_NS, str(last).encode(), db=self.meta)
            txn.put(POINTERS_LAST, str(last).encode(), db=self.meta)

    # -- what readers want to know about an object: its extension, its chunk digests ------------
    def put_exts(self, exts: dict[bytes, str]) -> None:
        """Remember extensions (first one seen wins: the object's name never changes)."""
        with self.env.begin(write=True, db=self.exts) as txn:
            for sha, ext in exts.items():
                txn.put(sha, ext.encode(), overwrite=False)

    def get_ext(self, sha: bytes) -> str:
        with self.env.begin(db=self.exts) as txn:
            raw = txn.get(sha)
        return bytes(raw).decode() if raw else ""

    def put_chunks(self, sha: bytes, digests: bytes) -> None:
        with self.env.begin(write=True, db=self.chunks) as txn:
            txn.put(sha, digests, overwrite=False)

    def get_chunks(self, sha: bytes) -> bytes | None:
        with self.env.begin(db=self.chunks) as txn:
            raw = txn.get(sha)
        return bytes(raw) if raw else None

    def used_prefixes(self, prefix: bytes) -> list[int]:
        """Values of the byte after `prefix` that some object's sha256 has (non-empty by-hash dirs)."""
        out = []
        with self.env.begin(db=self.objects) as txn:
            cur = txn.cursor()
            nxt = 0
            while nxt < 256 and cur.set_range(prefix + bytes([nxt])):
                k = bytes(cur.key())
                if not k.startswith(prefix):
                    break
                out.append(k[len(prefix)])
                nxt = k[len(prefix)] + 1
        return out

    # -- deletion marks ------------------------------------------------------------------------
    def _ops(self, db: Any) -> tuple[str, str]:
        """The marks-log records that set and clear a mark of table `db`."""
        if db is self.hidden:
            return "hide", "show"
        if db is self.rooted:
            return "root", "unroot"
        return "delete", "keep"

    def mark(self, db: Any, shas: Iterable[bytes], reason: str) -> int:
        """Set a mark (hidden, deleted or rooted) on objects that exist; returns how many. A
        deletion mark set again is renewed (its reason and time); a root set again is left as
        it is and not logged (every `hoard put` of known files asks for it: no disk write)."""
        doc = json.dumps({"time": time.time(), "reason": reason}).encode()
        done = []
        renew = db is not self.rooted
        with self.env.begin(write=True) as txn:
            for sha in shas:
                if txn.get(sha, db=self.objects) is None:
                    continue
                # a named put's provisional root (HELD_UNTIL_NAMED) is taken over by any other
                # root, so the named put's `unmark_held` leaves it: it is that root's now
                held = "" if renew else _reason(txn.get(sha, db=db))
                over = renew or (held.startswith(HELD_UNTIL_NAMED) and held != reason)
                if txn.put(sha, doc, db=db, overwrite=over):
                    done.append(sha)
            if done:
                self.log_in(txn, self._ops(db)[0], done)
        return len(done)

    def unmark_held(self, shas: Iterable[bytes], reason: str) -> int:
        """Take the provisional roots `reason` (HELD_UNTIL_NAMED …) off `shas` where they are
        still that root — not where another put rooted the object since (see `mark`)."""
        with self.env.begin(write=True, db=self.rooted) as txn:
            done = [sha for sha in shas if _reason(txn.get(sha)) == reason and txn.delete(sha)]
            if done:
                self.log_in(txn, "unroot", done)
            return len(done)

    def unmark(self, db: Any, shas: Iterable[bytes]) -> int:
        with self.env.begin(write=True, db=db) as txn:
            done = [sha for sha in shas if txn.delete(sha)]
            if done:
                self.log_in(txn, self._ops(db)[1], done)
            return len(done)

    def _next_stamp(self, txn: Any) -> int:
        """The marks log's next time stamp (ns), inside a write transaction: the wall clock,
        but never at or before the last one (`meta` `marks_ns`) — a clock set back must not
        reorder the log that `hoard index rebuild` replays in stamp order. Write transactions
        are serialised across processes, so the stamps follow the order of the commits."""
        last = txn.get(MARKS_NS, db=self.meta)
        # (the floor: a stamp this process handed out in a transaction that then aborted is on
        # the disks already and must not be given again — Store.catch_up_marks does the same
        # across processes from the disks' logs)
        stamp = max(time.time_ns(), int(last) + 1 if last else 0, self._stamp_floor + 1)
        txn.put(MARKS_NS, str(stamp).encode(), db=self.meta)
        self._stamp_floor = stamp
        return stamp

    def raise_stamp(self, seen: int) -> None:
        """The disks' logs hold a record stamped `seen` (a transaction that appended it and
        then died): no later stamp may be at or before it."""
        with self.env.begin(write=True, db=self.meta) as txn:
            last = txn.get(MARKS_NS)
            if not last or int(last) < seen:
                txn.put(MARKS_NS, str(seen).encode())

    def log_in(self, txn: Any, op: str, shas: list[bytes]) -> None:
        """Hand marks-log records of this write transaction to `mark_log` (the store's disks)
        and note, in the same transaction, which disks took them: `marks_last` is the newest
        record's stamp, `marks_at:<disk uuid>` the stamp up to which that disk's log is
        complete. A disk that missed a record (not writable then, a failed or short append)
        keeps an older one: it is *behind* (Store.marks_behind) — known to the index, not
        guessed from the log's last line, so a later append cannot hide the hole."""
        if shas and self.mark_log:
            raw = txn.get(MARKS_LAST, db=self.meta)
            before = int(raw) if raw else 0
            stamp = self._next_stamp(txn)
            took = self.mark_log(op, shas, stamp)
            txn.put(MARKS_LAST, str(stamp).encode(), db=self.meta)
            for uuid in took:  # only a disk that was complete stays complete: a hole stays a hole
                at = txn.get(_marks_at(uuid), db=self.meta)
                if at is not None and int(at) >= before:
                    txn.put(_marks_at(uuid), str(stamp).encode(), db=self.meta)

    def marks_state(self) -> tuple[int, dict[str, int], dict[str, float]]:
        """(stamp of the last record, {disk uuid: complete up to}, {disk uuid: time its log
        last failed to take a snapshot})."""
        if self.meta is None:
            return 0, {}, {}
        last, at, failed = 0, {}, {}
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(MARKS_LAST)
            last = int(raw) if raw else 0
            cur = txn.cursor()
            if cur.set_range(b"marks_"):
                for k, v in cur:
                    k = bytes(k)
                    if k.startswith(b"marks_at:"):
                        at[k[9:].decode()] = int(v)
                    elif k.startswith(b"marks_failed:"):
                        failed[k[13:].decode()] = float(v)
                    elif not k.startswith(b"marks_"):
                        break
        return last, at, failed

    def set_marks_stamp(self, last: int) -> None:
        """After an index rebuild: the newest record replayed from the disks' logs (no disk is
        known complete: the first writer snapshots them all)."""
        with self.env.begin(write=True, db=self.meta) as txn:
            txn.put(MARKS_NS, str(last).encode())
            txn.put(MARKS_LAST, str(last).encode())

    def snapshot_marks(self, write: Callable[[int, dict[str, list[bytes]], dict[str, int]],
                                             tuple[list[str], list[str]]],
                       foreign: dict[str, list[bytes]] | None = None) -> int:
        """Call `write(stamp, {table: shas})` with every mark the index holds (hidden, deleted,
        rooted) inside a write transaction — no other process sets or clears a mark meanwhile,
        so what `write` puts on a disk is the whole state at `stamp`, and every later record
        has a later stamp; `write` also gets each disk's `marks_at` as of now (no commit can
        move it meanwhile). It returns (uuids written, uuids that failed): the first are
        complete up to `stamp`, the others are not tried again for a while. `foreign`: marks
        the disks' logs hold for objects this index does not know (their shards on disks that
        were absent when it was rebuilt) — carried into the snapshot, not dropped from the
        HDDs' history. Returns the stamp."""
        with self.env.begin(write=True) as txn:
            tables = {name: [bytes(k) for k, _ in txn.cursor(db=getattr(self, name))]
                      for name in ("hidden", "deleted", "rooted")}
            for name, shas in (foreign or {}).items():
                tables[name] += [sha for sha in shas if txn.get(sha, db=self.objects) is None]
            at = {}
            cur = txn.cursor(db=self.meta)
            if cur.set_range(b"marks_at:"):
                for k, v in cur:
                    if not bytes(k).startswith(b"marks_at:"):
                        break
                    at[bytes(k)[9:].decode()] = int(v)
            stamp = self._next_stamp(txn)
            written, failed = write(stamp, tables, at)
            for uuid in written:
                txn.put(_marks_at(uuid), str(stamp).encode(), db=self.meta)
                txn.delete(_marks_failed(uuid), db=self.meta)
            for uuid in failed:
                txn.put(_marks_failed(uuid), repr(time.time()).encode(), db=self.meta)
        return stamp

    def is_marked(self, db: Any, sha: bytes) -> bool:
        if db is None:  # a table an old index opened read-only does not have
            return False
        with self.env.begin(db=db) as txn:
            return txn.get(sha) is not None

    def marked_among(self, db: Any, shas: Iterable[bytes]) -> set[bytes]:
        """Which of `shas` carry the mark: point lookups in one read transaction (a batch's
        files against millions of roots costs what the batch costs, not a table scan)."""
        if db is None:  # a table an old index opened read-only does not have
            return set()
        with self.env.begin(db=db) as txn:
            return {sha for sha in shas if txn.get(sha) is not None}

    def marked(self, db: Any) -> set[bytes]:
        if db is None:  # a table an old index opened read-only does not have
            return set()
        with self.env.begin(db=db) as txn:
            return {bytes(k) for k, _ in txn.cursor()}

    def sole_owner(self, top: int, bits: int) -> tuple[bytes, ObjectLoc] | None:
        """The one object whose sha256 begins with the `bits` (≤ 64) bits `top`, and where it is;
        None if no stored object has them or another object shares them — a stored one, or one
        gc collected (`dropped`; the same object stored again is itself). The mount's by-hash
        inode numbers are those bits: a number the kernel may still hold for a collected object
        must not come to name a newcomer. One read transaction."""
        shift = 64 - bits
        start = (top << shift).to_bytes(8, "big")
        found = None
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.objects)
            if cur.set_range(start):
                for k, v in cur:
                    if int.from_bytes(k[:8], "big") >> shift != top:
                        break
                    if found is not None:
                        return None
                    found = (bytes(k), ObjectLoc.unpack(v, bytes(k)))
            if found is None or self.dropped is None:
                return found
            cur = txn.cursor(db=self.dropped)
            if cur.set_range(start):
                for k, v in cur:
                    if int.from_bytes(k, "big") >> shift != top:
                        break
                    if bytes(k) + bytes(v) != found[0][:16]:
                        return None
        return found

    def note_dropped(self, txn: Any, shas: Iterable[bytes]) -> None:
        """Inside gc's swap transaction: `shas` leave the index (`dropped`, see sole_owner). 16
        bytes of each are kept, not 32: a collected object costs ~30 bytes of the SSD for good."""
        for sha in shas:
            old = txn.get(sha[:8], db=self.dropped)
            if old is None or (old and old != sha[8:16]):  # (b"": two or more collected objects had these 64 bits)
                txn.put(sha[:8], sha[8:16] if old is None else b"", db=self.dropped)

    def objects_with_prefix(self, prefix: bytes, limit: int = 1 << 20) -> list[tuple[bytes, ObjectLoc]]:
        """Objects whose sha256 starts with `prefix`, in order (a by-hash directory)."""
        out: list[Any] = []
        with self.env.begin(db=self.objects) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    k = bytes(k)
                    if not k.startswith(prefix) or len(out) >= limit:
                        break
                    out.append((k, bytes(v)))
        return list(self._listed(out, lambda k, v: (k, ObjectLoc.unpack(v, k))))

    # -- shards ------------------------------------------------------------------------
    def get_shard(self, sid: bytes) -> ShardMeta | None:
        with self.env.begin(db=self.shards) as txn:
            raw = txn.get(sid)
        return ShardMeta.from_json(sid, raw) if raw else None

    def put_shard(self, meta: ShardMeta, disk_deltas: dict[str, int] | None = None) -> None:
        """Store shard metadata, adjusting disks' used_bytes in the same transaction."""
        with self.env.begin(write=True) as txn:
            txn.put(meta.shard_id, meta.to_json(), db=self.shards)
            self._adjust_used(txn, disk_deltas or {})

    def update_shard(self, sid: bytes, fn: Callable[[ShardMeta], dict[str, int] | None]) -> ShardMeta | None:
        """Read-modify-write one shard's metadata in one transaction: `fn(meta)` changes `meta`
        in place and returns the disks' used_bytes deltas (or None). Returns the stored meta,
        or None — without calling fn — when the shard is gone (gc retired it meanwhile): a
        caller must then not resurrect it. Never read metadata in one transaction and write
        it in another: a concurrent replicator or scrub would lose its update."""
        with self.env.begin(write=True) as txn:
            return self._update_shard(txn, sid, fn)

    def _update_shard(self, txn: Any, sid: bytes, fn: Callable[[ShardMeta], dict[str, int] | None]) -> ShardMeta | None:
        raw = txn.get(sid, db=self.shards)
        if raw is None:
            return None
        meta = ShardMeta.from_json(sid, raw)
        deltas = fn(meta)
        txn.put(sid, meta.to_json(), db=self.shards)
        self._adjust_used(txn, deltas or {})
        return meta

    def adjust_used(self, disk_deltas: dict[str, int]) -> None:
        with self.env.begin(write=True) as txn:
            self._adjust_used(txn, disk_deltas)

    def _adjust_used(self, txn: Any, disk_deltas: dict[str, int]) -> None:
        for uuid, delta in disk_deltas.items():
            raw = txn.get(uuid.encode(), db=self.disks)
            if raw:
                rec = disk_record(uuid.encode(), raw)
                rec.used_bytes = max(0, rec.used_bytes + delta)
                self._put_disk(txn, rec, raw)

    def drop_shard(self, sid: bytes) -> None:
        with self.env.begin(write=True, db=self.shards) as txn:
            txn.delete(sid)

    def iter_shards(self) -> Iterator[ShardMeta]:
        with self.env.begin(db=self.shards) as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        for k, v in items:
            yield ShardMeta.from_json(k, v)

    # -- disks -------------------------------------------------------------------------
    def get_disks(self) -> list[DiskRecord]:
        with self.env.begin(db=self.disks) as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        return list(self._listed(items, disk_record))

    def get_disk(self, uuid: str) -> DiskRecord | None:
        with self.env.begin(db=self.disks) as txn:
            raw = txn.get(uuid.encode())
        return disk_record(uuid.encode(), raw) if raw else None

    def put_disk(self, rec: DiskRecord) -> None:
        with self.env.begin(write=True) as txn:
            self._put_disk(txn, rec, txn.get(rec.uuid.encode(), db=self.disks))

    def _put_disk(self, txn: Any, rec: DiskRecord, before: bytes | None) -> None:
        """Write a disk's record over `before` (its stored JSON): a `seen` that one still carries
        (the version that kept it in the record wrote it) moves to its `meta` key."""
        if before:
            inside = json_entry(_disk(rec.uuid.encode()), before).get("seen")
            if inside:
                self._saw(txn, rec.uuid, float(inside))
        txn.put(rec.uuid.encode(), rec.to_json(), db=self.disks)

    def _saw(self, txn: Any, uuid: str, when: float) -> None:
        raw = txn.get(_disk_seen(uuid), db=self.meta)
        if raw is None or float(raw) < when:
            txn.put(_disk_seen(uuid), repr(when).encode(), db=self.meta)

    def saw_disk(self, uuid: str, when: float) -> None:
        """Note that disk `uuid` was found at its path at `when` (its `meta` key; its record is
        left as it is)."""
        with self.env.begin(write=True) as txn:
            self._saw(txn, uuid, when)

    def disks_seen(self) -> tuple[dict[str, float], list[str]]:
        """({disk uuid: when a store open last found it at its path}, the uuids whose record still
        carries that time inside — Index.move_seen_out takes it out). A disk never noted has no
        entry."""
        seen: dict[str, float] = {}
        inside = []
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.disks):
                when = json_entry(_disk(k), v).get("seen")
                if when is not None:
                    inside.append(bytes(k).decode())
                    if when:
                        seen[bytes(k).decode()] = float(when)
            if self.meta is not None:
                cur = txn.cursor(db=self.meta)
                if cur.set_range(b"disk_seen:"):
                    for k, v in cur:
                        k = bytes(k)
                        if not k.startswith(b"disk_seen:"):
                            break
                        uuid = k[10:].decode()
                        seen[uuid] = max(seen.get(uuid, 0.0), float(v))
        return seen, inside

    def move_seen_out(self) -> int:
        """Rewrite the disk records that still carry `seen` inside (written by the version that
        kept it there) without it, the time moved to its `meta` key: the previous release can
        read them again. Returns how many were rewritten."""
        moved = 0
        with self.env.begin(write=True) as txn:
            for k, v in list(txn.cursor(db=self.disks)):
                if "seen" in json_entry(_disk(k), v):
                    self._put_disk(txn, disk_record(k, v), bytes(v))
                    moved += 1
        return moved

    def release_retired(self, uuid: str) -> int:
        """Take a forgotten disk out of gc's retired list (its old replicas cannot be deleted
        any more, and nothing counts their bytes); returns how many were released."""
        released = 0
        with self.env.begin(write=True, db=self.retired) as txn:
            for sid, raw in list(txn.cursor()):
                meta = ShardMeta.from_json(bytes(sid), raw)  # a retired entry is its shard's entry
                if uuid not in meta.replicas:
                    continue
                released += 1
                meta.replicas.remove(uuid)
                if meta.replicas:
                    txn.put(sid, meta.to_json())
                else:
                    txn.delete(sid)
        return released

    def drop_disk(self, uuid: str) -> None:
        """Forget a disk (`hoard disks forget`); the caller has released its replicas first."""
        with self.env.begin(write=True) as txn:
            txn.delete(uuid.encode(), db=self.disks)
            txn.delete(_disk_seen(uuid), db=self.meta)

    def get_meta(self, key: str) -> str | None:
        if self.meta is None:
            return None
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(key.encode())
        return bytes(raw).decode() if raw else None

    def set_meta(self, key: str, value: str) -> None:
        with self.env.begin(write=True, db=self.meta) as txn:
            txn.put(key.encode(), value.encode())

    # -- events and repairs ---------------------------------------------------------------
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

    def queue_repair(self, sid: bytes, disk_uuid: str, reason: str) -> None:
        with self.env.begin(write=True, db=self.repairs) as txn:
            txn.put(sid + disk_uuid.encode(), json.dumps({"reason": reason, "time": time.time()}).encode())

    def clear_repair(self, sid: bytes, disk_uuid: str) -> None:
        with self.env.begin(write=True, db=self.repairs) as txn:
            txn.delete(sid + disk_uuid.encode())

    def pending_repairs(self) -> list[tuple[bytes, str, dict]]:
        with self.env.begin(db=self.repairs) as txn:
            return [(bytes(k[:12]), bytes(k[12:]).decode(), json.loads(v)) for k, v in txn.cursor()]
