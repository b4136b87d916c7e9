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
    held     sha256[:12] || manifest sha256[:4] → b"": a registered batch or view manifest names the
                                    object (its files and its own objects), see hoardfs.fsd.core.held
    live     shard_id (12 B)      → u64 objects | u64 payload bytes: the objects entries pointing at the
                                    shard, kept with every change to `objects` (gc plans from it),
                                    see hoardfs.fsd.core.live
    pointers `<folder>/<name>.json` → the exact bytes of the newest batch or view pointer written to the
                                    disks (fsd/core/pointers.py; removal records too), see Index.name_pointer
    meta     key (ascii)          → value: `ssd_uuid` (the SSD this index belongs to), `marks_*` (the marks
                                    log's stamps and each disk's progress, see Index.log_in), `pointers_*`
                                    (the pointers' stamps and each disk's progress, see Index.name_pointer),
                                    `held_pending:<manifest>` (its `held` entries being added or
                                    removed, see hoardfs.fsd.core.held), `live_fill` (a fill of `live` under
                                    way, see hoardfs.fsd.core.live),
                                    `disk_seen:<uuid>` (when a store open last found the disk at its
                                    path, see Index.disks_seen), `format` (the index's format:
                                    hoardfs.fsd.core.formats, where every on-disk format is named)

LMDB allows one writer at a time across processes (RQ workers, the mount daemon) and any
number of readers. Transactions are short and never span an `await` or disk IO on the
HDDs: callers do their IO first, then commit what it produced in one transaction — except
the marks log, whose records are appended to the HDDs inside the transaction that applies
them, so that its order is the index's (Store.log_marks, Store.snapshot_marks), and a batch
or view pointer, written inside the transaction that names it (Index.name_pointer).

`Index` is the one class callers use. Its parts live with what they are about: the entries'
types and encoding in `hoardfs.fsd.core.entries`, the marks tables (`MarksTables`) beside the marks
log's format in `hoardfs.fsd.core.marks`, the pointers table (`PointerTables`) beside the pointers'
format in `hoardfs.fsd.core.pointers`, the events and repairs tables (`EventTables`) in
`hoardfs.fsd.core.events`.
"""

from __future__ import annotations

import heapq
import json
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb

from hoardfs.fsd.core import formats
from hoardfs.fsd.core.disks import DiskRecord
from hoardfs.fsd.core.entries import (
    _OBJ,
    IndexDamaged,
    IndexUnavailable,
    ObjectLoc,
    ShardMeta,
    _disk,
    disk_record,
    index_error,
    json_entry,
    named_entry,
)
from hoardfs.fsd.core.events import EventTables
from hoardfs.fsd.core.held import HeldTables
from hoardfs.fsd.core.live import LiveTables, Tally
from hoardfs.fsd.core.marks import HELD_UNTIL_NAMED, MARKS_NS, MarksTables
from hoardfs.fsd.core.pointers import PointerTables
from hoardfs.fsd.core.txnlog import Env, chunked

#: what callers take from here, kept where they live: the entries (hoardfs.fsd.core.entries), the
#: marks' and pointers' parts of the index (hoardfs.fsd.core.marks, hoardfs.fsd.core.pointers)
__all__ = ["HELD_UNTIL_NAMED", "MARKS_NS", "Index", "IndexDamaged", "IndexUnavailable", "ObjectLoc", "ShardMeta",
           "disk_record", "has_index", "index_error", "json_entry", "named_entry", "open_existing"]

MAP_SIZE = 1 << 40  # address space only; the file grows with use


def _disk_seen(uuid: str) -> bytes:
    """The `meta` key of when a store open last found disk `uuid` at its path with its identity
    (Unix time, `repr` of a float). Not in the disk's JSON record: see DiskRecord."""
    return b"disk_seen:" + uuid.encode()


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
    index in with two renames, and a command that opened it in between must not create an
    empty index there (the rebuild's rename would fail, and the store would show no objects).
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


class Index(MarksTables, PointerTables, EventTables, HeldTables, LiveTables):
    def __init__(self, path: Path, readonly: bool = False, create: bool = True) -> None:
        """`create` makes the folder and the LMDB files when missing (`hoard init`, a rebuild's
        new index); without it, or `readonly`, a missing index is an `lmdb.Error`."""
        create = create and not readonly
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.path = path
        new = create and not has_index(path)
        # every write transaction is timed and named (hoardfs.fsd.core.txnlog): none may stall the others
        self.env = Env(lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=24, readonly=readonly,
                                 max_readers=512, lock=True, create=create))
        # RQ kills work horses with SIGKILL: their reader slots stay taken and pin old pages
        # (the file grows) until someone clears them
        self.env.reader_check()
        self._info = self.env.info  # (LMDB's own: `generation`, asked once a sample a loader hands out)
        #: the index's format (hoardfs.fsd.core.formats), read before any table is created: an index a
        #: later hoardfs wrote takes no write at all — not even a table this version would add
        self.format = formats.INDEX if new else self._stored_format()
        if self.format > formats.INDEX:
            self.env.refused = formats.NewerFormat(f"the index at {path}", self.format, formats.INDEX)
            readonly = True  # (its tables are opened, never created)
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
        self.held = self._optional_db(b"held", readonly)
        self.live = self._optional_db(b"live", readonly)
        #: `(op, shas, stamp)` called inside the write transaction that sets or clears marks,
        #: before it commits (the store appends them to `marks/` on the HDDs, see
        #: Store.log_marks): the log's order is then the order the index applied them in
        self.mark_log: Callable[[str, list[bytes], int], list[str]] | None = None
        #: `()` → {disk uuid: the stamp its marks log ends with, None: unread}, called inside that write
        #: transaction before `mark_log` (Store.marks_tails): a log ending past what the index
        #: knows the disk took holds a dead transaction's records (see MarksTables.log_in)
        self.mark_tails: Callable[[], dict[str, int | None]] | None = None
        #: listings hand an entry that does not decode here and leave it out (see _listed)
        self.damaged: Callable[[IndexDamaged], None] | None = None
        self._stamp_floor = 0
        if new:
            self.set_meta(formats.INDEX_KEY, str(formats.INDEX))

    def _stored_format(self) -> int:
        try:
            meta = self.env.open_db(b"meta", create=False)
        except lmdb.NotFoundError:
            return formats.INDEX_UNVERSIONED
        with self.env.begin(db=meta) as txn:
            raw = txn.get(formats.INDEX_KEY.encode())
        return formats.parse_index_version(bytes(raw).decode(errors="replace")) if raw else formats.INDEX_UNVERSIONED

    def migrate(self, get: Callable[[str], bytes] | None = None) -> list[str]:
        """Bring an older index up to this hoardfs's format (hoardfs.fsd.core.formats.migrate_index);
        refuse a newer one. What a writable store open calls first, without `get` (the steps that
        read objects wait), and again with the store's `get` once its disks are attached."""
        if self.format > formats.INDEX:
            raise self.env.refused
        done = formats.migrate_index(self, self.format, get) if self.format < formats.INDEX else []
        self.format = formats.index_version(self)
        return done

    def close(self) -> None:
        self.env.close()

    # -- objects ---------------------------------------------------------------------
    def lookup(self, sha: bytes) -> ObjectLoc | None:
        with self.env.begin(db=self.objects) as txn:
            raw = txn.get(sha)
        return ObjectLoc.unpack(raw, sha) if raw else None

    def lookup_many(self, shas: Iterable[bytes]) -> dict[bytes, ObjectLoc]:
        """The objects of `shas` the index holds, each where it is (`places_many`, by sha256)."""
        asked = shas if isinstance(shas, Sequence) else list(shas)
        make = ObjectLoc._make
        return {sha: make(p) for sha, p in zip(asked, self.places_many(asked), strict=True) if p is not None}

    def places_many(self, shas: Sequence[bytes]) -> list[tuple[bytes, int, int, int] | None]:
        """Where each of `shas` is, in their order, as plain tuples (shard id, offset, length,
        flags; None: not held) — a training loader's start places 100,000 samples, and no
        ObjectLoc nor dict made for each takes half the time (`lookup_many` makes them)."""
        unpack = _OBJ.unpack
        out: list[tuple[bytes, int, int, int] | None] = []
        with self.env.begin(db=self.objects) as txn:
            get = txn.get
            for sha in shas:
                raw = get(sha)
                if not raw:  # (an empty value: not held, as `lookup` reads it)
                    out.append(None)
                    continue
                try:
                    out.append(unpack(raw))
                except struct.error:  # (IndexDamaged, naming the object)
                    ObjectLoc.unpack(raw, sha)
        return out

    def add_objects(self, entries: list[tuple[bytes, ObjectLoc]], shard: ShardMeta | None = None,
                    update: tuple[bytes, Callable[[ShardMeta], dict[str, int] | None]] | None = None,
                    exts: dict[bytes, str] | None = None) -> list[bool]:
        """Insert if absent, in one transaction with the shard's new metadata (`shard`, written
        as is by the writer that owns the open shard, or `update` = (shard id, fn) as in
        `update_shard`) and the objects' extensions (`exts`, as `put_exts`); True = new."""
        added = []
        with self.env.begin(write=True) as txn:
            tally = Tally(self, txn)
            for sha, loc in entries:
                new = txn.put(sha, loc.pack(), overwrite=False, db=self.objects)
                if new:
                    tally.add(sha, loc.shard_id, loc.length)
                added.append(new)
            tally.apply(txn)
            for sha, ext in (exts or {}).items():
                txn.put(sha, ext.encode(), overwrite=False, db=self.exts)
            if shard is not None:
                txn.put(shard.shard_id, shard.to_json(), db=self.shards)
            if update is not None:
                self._update_shard(txn, *update)
        return added

    def append_objects(self, entries: list[tuple[bytes, bytes]]) -> None:
        """An index rebuild's objects: (sha256, `objects` value) in ascending order, each after
        every key the table holds, appended in one transaction (LMDB's MDB_APPEND: no descent
        per key, every page written once and full) and counted into `live`. Raises
        IndexDamaged when one does not sort after the table (nothing of the transaction is
        written): a rebuild then stops before its swap."""
        with self.env.begin(write=True) as txn:
            tally = Tally(self, txn)
            for sha, raw in entries:
                sid, _offset, length, _flags = _OBJ.unpack(raw)
                tally.add(sha, sid, length)
            added = txn.cursor(db=self.objects).putmulti(entries, overwrite=False, append=True)[1]
            if added != len(entries):
                raise IndexDamaged(f"{len(entries) - added} of {len(entries)} objects entries were not appended "
                                   "(not after every key the table holds)")
            tally.apply(txn)

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

    # -- what readers want to know about an object: its extension, its chunk digests ------------
    def put_exts(self, exts: dict[bytes, str]) -> None:
        """Remember extensions (first one seen wins: the object's name never changes), in
        transactions of at most a chunk (a put of 20,000 files the store had: as many)."""
        for part in chunked(exts.items()):
            with self.env.begin(write=True, db=self.exts) as txn:
                for sha, ext in part:
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

    def has_prefix(self, prefix: bytes) -> bool:
        """Whether some object's sha256 starts with `prefix` (one by-hash directory, looked up:
        one cursor positioning, not the listing of `used_prefixes`)."""
        with self.env.begin(db=self.objects) as txn:
            cur = txn.cursor()
            return cur.set_range(prefix) and bytes(cur.key()).startswith(prefix)

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

    def with_bits(self, top: int, bits: int) -> list[bytes]:
        """The stored objects whose sha256 begins with the `bits` (≤ 64) bits `top`: the ones a
        by-hash number that names nothing now (`sole_owner`) may have named. One read transaction."""
        shift = 64 - bits
        out = []
        with self.env.begin(db=self.objects) as txn:
            cur = txn.cursor()
            if cur.set_range((top << shift).to_bytes(8, "big")):
                for k in cur.iternext(values=False):
                    if int.from_bytes(k[:8], "big") >> shift != top:
                        break
                    out.append(bytes(k))
        return out

    # -- what the mount shows (read-only) -------------------------------------------------------
    def shown(self, sha: bytes) -> bool:
        """Whether the mount shows object `sha`: not hidden, and not tombstoned unless it is a
        root (a racing `delete --batch` may tombstone what `hoard put` acknowledged: gc clears
        that). One read transaction: no set of marked objects is kept anywhere."""
        with self.env.begin() as txn:
            return self._shown_in(txn, sha)

    def _shown_in(self, txn: Any, sha: bytes) -> bool:
        """`shown` in the read transaction `txn`."""
        if txn.get(sha, db=self.hidden) is not None:
            return False
        return txn.get(sha, db=self.deleted) is None or (self.rooted is not None and
                                                         txn.get(sha, db=self.rooted) is not None)

    def generation(self) -> int:
        """The id of the index's last committed write transaction, any process's (LMDB's meta
        page, no transaction): equal to a `snapshot()` taken before, nothing was written since
        that snapshot. Never the starting point itself: a commit writes its meta page (synced
        to the disk) before the id read transactions start from, so this may name a write that
        a read transaction begun after it does not see."""
        return self._info()["last_txnid"]

    def snapshot(self) -> int:
        """The id of the last write a read transaction begun now sees: the starting point a
        later `generation()` is compared with (each read transaction begun after it sees this
        write or a later one)."""
        with self.env.begin() as txn:
            return int(txn.id())

    def live_many(self, shas: Sequence[bytes]) -> list[bool]:
        """For each of `shas`: whether the index holds the object and the mount shows it
        (`lookup` and `shown` of each, all from one read transaction). While nothing is hidden
        or tombstoned (both tables empty in that transaction), an object held is shown: one
        lookup each, not three (a training loader asks this of every record it reads)."""
        with self.env.begin() as txn:
            get = txn.get
            if len(shas) > 4 and not txn.stat(self.hidden)["entries"] and not txn.stat(self.deleted)["entries"]:
                return [get(sha, db=self.objects) is not None for sha in shas]
            return [get(sha, db=self.objects) is not None and self._shown_in(txn, sha) for sha in shas]

    def unshown_among(self, shas: Iterable[bytes]) -> set[bytes]:
        """Those of `shas` the mount does not show (`shown`), from one read transaction: the
        marks walked when there are fewer of them than `shas` (a dataset's 100,000 samples in a
        store with a few hidden: a walk of the few), each of `shas` asked otherwise."""
        want = shas if isinstance(shas, (set, frozenset)) else set(shas)
        with self.env.begin() as txn:
            marks = txn.stat(self.hidden)["entries"] + txn.stat(self.deleted)["entries"]
            if marks > len(want):
                return {sha for sha in want if not self._shown_in(txn, sha)}
            out = {bytes(k) for k in txn.cursor(db=self.hidden).iternext(values=False) if bytes(k) in want}
            for k in txn.cursor(db=self.deleted).iternext(values=False):
                sha = bytes(k)
                if sha in want and (self.rooted is None or txn.get(sha, db=self.rooted) is None):
                    out.add(sha)
            return out

    def iter_unshown(self) -> Iterator[bytes]:
        """Every object the mount does not show (`shown`), in sha256 order, from one read
        transaction held while iterated: the roots are asked about the tombstoned only."""
        with self.env.begin() as txn:
            hidden = (bytes(k) for k in txn.cursor(db=self.hidden).iternext(values=False))
            deleted = (k for k in (bytes(k) for k in txn.cursor(db=self.deleted).iternext(values=False))
                       if self.rooted is None or txn.get(k, db=self.rooted) is None)
            last = None
            for sha in heapq.merge(hidden, deleted):
                if sha != last:
                    yield sha
                    last = sha

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
            txn.delete(b"marks_snap:" + uuid.encode(), db=self.meta)  # (a snapshot's marker, Index.snapshot_marks)

    def get_meta(self, key: str) -> str | None:
        if self.meta is None:
            return None
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(key.encode())
        return bytes(raw).decode() if raw else None

    def set_meta(self, key: str, value: str) -> None:
        with self.env.begin(write=True, db=self.meta) as txn:
            txn.put(key.encode(), value.encode())
