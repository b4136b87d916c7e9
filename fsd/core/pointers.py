"""Batch and view pointers: `<disk>/batches/<id>.json` and `<disk>/views/<name>.json`.

A batch's or a view's manifest is an object in the store; its pointer is what lets `hoard
index rebuild` name it again with nothing but the HDDs (docs/design.md, "Batch and view
pointers"). The index keeps the exact bytes of every pointer it wrote (`pointers` table,
removal records included), stamped by Index.name_pointer with a monotonic `pointer_ns`; a
disk that missed some is brought up to them by Store.catch_up_pointers. The index's side —
that table, the stamps, each disk's progress — is `PointerTables` at the end of this module,
a part of `hoardfs.fsd.core.index.Index`.

    body = encode({"manifest": sha, ...}, stamp)   # the file's bytes (JSON, with its checksum)
    doc = decode(read(path))                        # ValueError: not a pointer, or damaged
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import Any

from hoardfs.base.paths import NAME_PATTERN
from hoardfs.fsd.core import marks
from hoardfs.fsd.core.entries import IndexDamaged, named_entry
from hoardfs.fsd.core.layout import BATCHES_DIR, VIEWS_DIR
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES

#: the two folders, and what their entries are called in messages
KINDS = {BATCHES_DIR: "batch", VIEWS_DIR: "view"}
#: pointers at a disk's root, kept as the batches' and views' are: sql/backup.py's POINTER, the
#: newest database dump's object (`{sha256, size, taken_at, …}`), which names what to `hoard
#: get` once the SSD (index, database, zone 3B) is lost
DB_DUMP = ".hoard-db-dump.json"
ROOT_FILES = (DB_DUMP,)
#: a pointer is a few hundred bytes of JSON; a larger file is not one (read whole, a huge
#: sparse file planted there would end the rebuild with a MemoryError)
POINTER_MAX = 1 << 20
#: what a pointer carries besides the batch's or view's entry: its stamp, its checksum, and
#: its own path under the disk's root (under the checksum: a flipped bit in a file *name* —
#: b1.json → b3.json — must not make a rebuild register a batch nobody made)
STAMP, CHECK, KEY = "pointer_ns", "check", "key"


def rel(folder: str, name: str) -> str:
    """The pointer's path under a disk's root (and its key in the index's `pointers` table)."""
    return f"{folder}/{name}.json"


def split(key: str) -> tuple[str, str]:
    """(folder, name) of a `rel` path."""
    folder, _, file = key.partition("/")
    return folder, file[:-len(".json")]


def describe(key: str) -> str:
    """What the pointer at `key` names, for a message: "batch b1", "view v", or its file."""
    folder, name = split(key)
    return f"{KINDS[folder]} {name}" if folder in KINDS else f"the pointer {key}"


def _digest(doc: dict) -> str:
    """The checksum of a pointer's content (everything but the checksum itself): a flipped bit
    in a manifest's hex or in the stamp still parses as a pointer, and must not win a rebuild."""
    plain = json.dumps({k: v for k, v in doc.items() if k != CHECK}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(plain.encode()).hexdigest()[:32]


def encode(info: dict | None, stamp: int, key: str = "") -> bytes:
    """The pointer file's bytes: `info` (None: a removal record, `{"removed": true}`) with its
    stamp, its path `key` (`rel`) and checksum."""
    doc = {k: v for k, v in (info or {"removed": True}).items() if k not in (STAMP, CHECK, KEY)}
    doc[STAMP] = stamp
    if key:
        doc[KEY] = key
    doc[CHECK] = _digest(doc)
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def read(path: Path, ident: list[int] | None = None) -> bytes:
    """A pointer's bytes; OSError(EINVAL) if it is not a regular file (a FIFO planted there
    would block a rebuild for good, a directory is not a pointer), ValueError if it is larger
    than POINTER_MAX. `ident` gets the `identity` of the file read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        marks.regular(fd, path)
        if ident is not None:
            ident[:] = identity(os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            body = f.read(POINTER_MAX + 1)
    finally:
        os.close(fd)
    if len(body) > POINTER_MAX:
        raise ValueError(f"larger than {POINTER_MAX} bytes: not a pointer")
    return body


def identity(st: os.stat_result) -> list[int]:
    """A file's device, inode, size, mtime and ctime (ns): a pointer is replaced by a rename (a
    new inode), and a write in place moves its ctime — except a store through a shared map into
    a page already written, and rot under the file system, which leave all five as they were
    (hoardfs.fsd.io.judged.Pointers: what health re-reads hourly, and check and verify always)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def foreign_name(path: PurePath) -> bool:
    """Whether the file's name is none the store writes: not UTF-8 (no key of the index's
    `pointers` table: taken for a pointer, it would end every writable open with a traceback
    while a disk holding one is behind), or in batches/ or views/ a name no batch or view can
    have (hoardfs.base.paths.NAME_PATTERN: `..`, spaces, shell characters — a rebuild must not
    register such a file as a batch or view under a name `hoard view add` and ingest refuse)."""
    try:
        path.name.encode()
    except UnicodeEncodeError:
        return True
    # (a ROOT_FILES pointer sits at a disk's root, whatever that directory is called)
    return path.parent.name in KINDS and path.name not in ROOT_FILES and re.match(NAME_PATTERN, path.stem) is None


def shown(path: Path) -> str:
    """The path for a message: a name that is not UTF-8 with its odd bytes escaped (`\\udcff`),
    never written raw to a terminal or a log."""
    return str(path).encode("utf-8", "backslashreplace").decode()


def planted(path: Path) -> bool:
    """Whether something other than a regular file sits at a pointer's name (a directory, a
    FIFO, a link: not a pointer — a rebuild skips it, and it is left for a person to remove),
    or a file whose name is not UTF-8 (foreign_name)."""
    if foreign_name(path):
        return True
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def decode(body: bytes, key: str = "") -> dict:
    """A pointer's JSON object; ValueError unless it is one as `encode` writes it — a removal
    record, or (a batch's or view's: any `key` but a ROOT_FILES one) a manifest of 64 hex
    digits — with an integer `pointer_ns` and, when it has one, a checksum that matches (a
    pointer from before checksums has none)."""
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not a pointer's object")
    ns = doc.get(STAMP, 0)
    if not isinstance(ns, int) or isinstance(ns, bool):
        raise ValueError(f"pointer_ns is {ns!r}, not a time in nanoseconds")
    manifest = doc.get("sha256" if key in ROOT_FILES else "manifest")
    if not doc.get("removed") and not (isinstance(manifest, str) and marks.HEX64.fullmatch(manifest.encode())):
        raise ValueError(f"{'sha256' if key in ROOT_FILES else 'manifest'} is {manifest!r}, not a sha256 in hex")
    if CHECK in doc and doc[CHECK] != _digest(doc):
        raise ValueError("its checksum does not match its content (damaged)")
    if key and doc.get(KEY, key) != key:  # (a pointer from before the key: none to compare)
        raise ValueError(f"its content says it is {doc[KEY]!r}: a damaged or changed file name")
    return doc


def stamp_of(body: bytes) -> int:
    """The stamp of a pointer the index holds; one that does not decode (damage in the index,
    which `hoard check` names) counts as the newest: it is looked at again, never skipped."""
    try:
        return int(json.loads(body)[STAMP])
    except (ValueError, KeyError, TypeError):
        return 1 << 63


def entry(doc: dict) -> dict | None:
    """The batch's or view's entry a pointer names (None: a removal record)."""
    if doc.get("removed"):
        return None
    return {k: v for k, v in doc.items() if k not in (STAMP, CHECK, KEY)}


#: `meta` keys of the batch and view pointers (Index.name_pointer): the last stamp given out,
#: the stamp of the newest pointer, and per disk `pointers_at:<uuid>` (it holds every pointer up
#: to) and `pointers_failed:<uuid>` (when bringing its pointers up last failed)
POINTERS_NS = b"pointers_ns"
POINTERS_LAST = b"pointers_last"


def _pointers_of(what: str, uuid: str) -> bytes:
    """The `meta` key `pointers_<what>:<uuid>` (`what`: "at" or "failed")."""
    return f"pointers_{what}:{uuid}".encode()


class PointerTables:
    """The index's side of the pointers: the `pointers` table (the exact bytes of the newest
    pointer of each name written to the disks), their stamps, and each disk's progress in
    `meta`. A pointer is written inside the transaction that names it (`name_pointer`). A
    part of `hoardfs.fsd.core.index.Index`, which opens the tables."""

    env: Any
    meta: Any
    objects: Any
    batches: Any
    views: Any
    pointers: Any

    def _next_pointer_stamp(self, txn: Any, floor: int = 0) -> int:
        """A pointer's stamp (ns), inside a write transaction: the wall clock, but after the last
        one given (`meta` `pointers_ns`) and after `floor` — a clock set back must not make a
        redefinition older than the definition it replaces (a rebuild takes the newest)."""
        last = txn.get(POINTERS_NS, db=self.meta)
        stamp = max(time.time_ns(), int(last) + 1 if last else 0, floor + 1)
        txn.put(POINTERS_NS, str(stamp).encode(), db=self.meta)
        return stamp

    def name_pointer(self, folder: str, name: str, info: dict[str, Any] | None,
                     write: Callable[[str, bytes], list[str]], also: Callable[[Any], None] | None = None) -> bytes:
        """Register batch (`folder` BATCHES_DIR) or view (VIEWS_DIR) `name` — None unregisters
        it — in one write transaction: its stamped pointer goes to `write(rel, body)` (the store
        puts it on the disks in service and returns the uuids that took it; raising leaves the
        index unchanged), then the entry and the pointer's bytes are put, and each disk that
        took it and held every earlier pointer is noted complete up to its stamp (one that
        missed an earlier one stays behind: Store.catch_up_pointers); `also(txn)` writes what
        goes with the registration in its transaction. Returns the bytes."""
        db = self.batches if folder == BATCHES_DIR else self.views

        def entry(txn: Any) -> None:
            if also is not None:  # (first: it may read the entry this one replaces)
                also(txn)
            if info is None:
                txn.delete(name.encode(), db=db)
            else:
                txn.put(name.encode(), json.dumps(info, sort_keys=True).encode(), db=db)

        return self.keep_pointer(rel(folder, name), info, write, entry)

    def keep_pointer(self, key: str, info: dict[str, Any] | None, write: Callable[[str, bytes], list[str]],
                     also: Callable[[Any], None] | None = None) -> bytes:
        """name_pointer for any pointer (a ROOT_FILES one: no table names it); `also(txn)` puts
        what the pointer names, in the same transaction."""
        with self.env.begin(write=True) as txn:
            stamp = self._next_pointer_stamp(txn)
            body = encode(info, stamp, key)
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
                      if stamp_of(bytes(v)) > since}
            for key, seen in stale.items():
                if txn.get(key.encode(), db=self.pointers) is None:
                    stamp = self._next_pointer_stamp(txn, seen)
                    bodies[key] = encode(None, stamp, key)
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
        (Store.catch_up_pointers brings them). In write transactions of a bounded size, by name
        (a migration of millions of batches, hoardfs.fsd.core.formats): a process killed between two
        leaves the rest to the next call, which finds the done ones aligned. Returns how many
        changed."""
        n = 0
        per = max(1, (TXN_ENTRIES - SLACK) // 4)
        # the batches', then the views' names, then every pointer (those left: names no table holds)
        for folder, db in ((BATCHES_DIR, self.batches), (VIEWS_DIR, self.views), (None, self.pointers)):
            after = None
            while True:
                with self.env.begin(write=True) as txn:
                    cur = txn.cursor(db=db)
                    keys: list[bytes] = []
                    if cur.set_range(after or b""):
                        for k in cur.iternext(values=False):
                            if bytes(k) != after:
                                keys.append(bytes(k))
                                if len(keys) >= per:
                                    break
                    for k in keys:
                        name = k.decode(errors="replace")
                        n += self._align_pointer(txn, rel(folder, name) if folder else name)
                    if folder is None and not keys and txn.get(POINTERS_LAST, db=self.meta) is None:
                        txn.put(POINTERS_LAST, b"0", db=self.meta)
                if not keys:
                    break
                after = keys[-1]
        return n

    def _align_pointer(self, txn: Any, key: str) -> int:
        folder, name = split(key)
        if folder not in KINDS:
            return 0  # (a ROOT_FILES pointer: no table says what it should be)
        raw = txn.get(name.encode(), db=self.batches if folder == BATCHES_DIR else self.views)
        listed, info = False, None
        if raw is not None:
            try:
                info, listed = named_entry(KINDS[folder], name, bytes(raw)), True
            except IndexDamaged:
                pass  # `hoard check` names it ("malformed")
        body = txn.get(key.encode(), db=self.pointers)
        now, sound = None, False
        if body is not None:
            try:
                now, sound = entry(decode(bytes(body))), True
            except ValueError:  # damage in the index: the pointer is written again
                pass
        if not listed:
            if body is None:
                return 0
            keep = now is None or not txn.get(bytes.fromhex(now["manifest"]), db=self.objects)
            info = now if keep else None
        if sound and now == info:
            return 0
        stamp = self._next_pointer_stamp(txn)
        self._put_pointer(txn, key, encode(info, stamp, key), stamp, ())
        return 1

    def load_pointers(self, bodies: dict[str, bytes]) -> None:
        """After an index rebuild: the newest pointer of each name the disks (and an index copy)
        hold; later stamps follow the newest (no disk is known to hold them all)."""
        last = max((stamp_of(b) for b in bodies.values()), default=0)
        with self.env.begin(write=True) as txn:
            for key, body in bodies.items():
                txn.put(key.encode(), body, db=self.pointers)
            txn.put(POINTERS_NS, str(last).encode(), db=self.meta)
            txn.put(POINTERS_LAST, str(last).encode(), db=self.meta)
