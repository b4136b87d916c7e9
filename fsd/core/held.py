"""The `held` table: which registered manifests name each object.

`hoard delete --batch B` must know which of B's objects another batch or view still names, and
gc which tombstoned objects a manifest still names. That is written only in the manifests:
asked of them, both commands read every registered manifest — their time grew with the store,
not with the batch (docs/benchmarks.md). The index keeps the answer beside the registrations:

    held   object sha256[:12] || manifest sha256[:4]  →  b""   (one entry per object a manifest
                                                               names: its files and its own
                                                               objects, as `iter_files` yields them)
    meta   `held_pending:<manifest sha256 hex>`       →  JSON {"op": "add" | "remove",
                                                               "kind": "batch" | "view", "name"}

An object is *held* when some entry of its 12 bytes names the 4 bytes of a manifest registered
now (`batches` or `views`). *Reasons for the prefixes*: 16 B a key, not 64 (index format 5;
formats 3 and 4 wrote 16 + 8: the migration to 5 cuts their keys). A prefix shared can only
keep an object, never free one:

- two objects sharing 12 bytes (1 in 2^96 per pair: ~10^-13 in a store of 10^8) make one look
  held while the other is: it is kept (`hoard info` reads one manifest more and finds no path);
- two registered manifests sharing 4 bytes (not rare: ~1 % of stores with 10,000 batches, most
  with 100,000) share their entries: an entry of that prefix holds while either is registered.
  When one of them is deleted (`held_among`'s `skip`; an output's view that went releasing its
  files before its entries go: hoardfs.fsd.outputs.views.release_owned) or unregistered (`unhold`), what the
  others name is read from them (`_sharing`): the objects whose 12 bytes they name stay held
  and keep their entries, the rest are the departing manifest's alone — so its own objects are
  tombstoned and freed as without the sharing, not kept for as long as the other is registered.
  A sharer that cannot be read keeps every entry of the prefix (a leak, never a loss).

Invariant (what gc and deletion rely on): every object a registered manifest names has its
entry. Hence the order, always under `naming_lock` (hoardfs.fsd.outputs.manifest):

- registering M: `hold` writes a pending `add` record and M's entries, in bounded write
  transactions (txnlog.chunked); then the transaction that registers M (Index.name_pointer's
  `also`) deletes the record — M is registered only once all its entries are committed;
- unregistering M (a batch deleted — after its tombstones are set, asked of `held` leaving M
  out —, a view removed or replaced): the transaction that unregisters it writes a pending
  `remove` record; then `unhold` deletes M's entries in bounded transactions (each first checks
  the record is still `remove` and the manifests registered with M's prefix are the ones it
  read — M is not registered again) and the record last.

A process killed in between leaves entries of a manifest not registered — they hold nothing
(only registered manifests count) — and its pending record, which the next `hoard gc` or a
re-run `hoard delete --batch` finishes (hoardfs.fsd.outputs.holders.finish; a manifest that no longer
reads by a pass over the table: `unhold_unread`). `hoard check` compares the
table with the manifests; `hoard index rebuild` and the migration to index format 3 fill it
from the registered manifests (`fill_held`, these keys), the migration to 5 cuts the keys of
formats 3 and 4 (`shorten_held`). Never read by an index before format 5 (formats.INDEX_HELD):
its manifests are read, as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core import formats
from hoardfs.fsd.core.entries import named_entry
from hoardfs.fsd.core.spill import Spill
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES, chunked

__all__ = ["OBJ", "MAN", "LONG_OBJ", "LONG_MAN", "PENDING", "HeldTables", "ManifestNotRead", "iter_files",
           "iter_named", "named", "named_by", "pair"]

log = logging.getLogger(__name__)

#: bytes of the object's sha256 and of the manifest's sha256 in a `held` key
OBJ, MAN = 12, 4
#: the same in index formats 3 and 4 (formats.INDEX_HELD_LONG), whose keys the migration to 5 cuts
LONG_OBJ, LONG_MAN = 16, 8
#: `meta` key prefix of a manifest whose entries are being added or removed
PENDING = b"held_pending:"

Get = Callable[[str], bytes]


#: entries changed per write transaction by `HeldTables._sweep` (each may be replaced: two writes)
_PER = (TXN_ENTRIES - SLACK) // 2
#: entries `HeldTables._sweep` reads per read transaction (its `which` asked once per span)
_SPAN = 200_000
#: registered entries whose manifest `_manifest_of` keeps parsed (a cache, cleared when full)
_SEEN_MAX = 100_000
#: what reading a manifest may raise (it is lost, of a newer format, does not decode)
_UNREADABLE = (HoardError, OSError, ValueError, KeyError, TypeError)


class ManifestNotRead(HoardError):
    """A registered manifest `fill_held` could not read: which registration (`kind`, `name`),
    the error, and the object being read when it came (`asked`)."""

    exit_code = ExitCode.DATA

    def __init__(self, kind: str, name: str, manifest_hex: str, err: Exception, asked: str) -> None:
        why = err.message if isinstance(err, HoardError) else f"{type(err).__name__}: {err}"
        super().__init__(f"{kind} {name}: its manifest {manifest_hex} cannot be read ({why})")
        self.kind, self.name, self.manifest, self.err, self.asked = kind, name, manifest_hex, err, asked


def _distinct(keys: Iterable[bytes]) -> Iterator[bytes]:
    """`keys` (sorted) without repeats: MDB_APPEND takes each key only once, after the last."""
    last = None
    for k in keys:
        if k != last:
            yield k
            last = k


def pair(sha: bytes, manifest: bytes) -> bytes:
    """The `held` key of object `sha` named by manifest `manifest` (both sha256, 32 B)."""
    return sha[:OBJ] + manifest[:MAN]


# -- what a manifest names (the reading part of hoardfs.fsd.outputs.manifest, here so the index's
# migration and rebuild can fill `held` without the layers above) ---------------------------

def iter_files(get: Get, manifest_sha_hex: str, own: list[bytes] | None = None) -> Iterator[tuple[str, bytes, int]]:
    """(path, sha256, size) of every file a manifest names, any format; a view-2 manifest is
    walked one directory object at a time (in path order). `own` collects, in the same
    pass, the sha256 of every object the manifest itself is made of."""
    if own is not None:
        own.append(bytes.fromhex(manifest_sha_hex))
    doc = json.loads(get(manifest_sha_hex))
    formats.check_document(doc, f"the manifest {manifest_sha_hex}")
    if doc.get("format") not in formats.VIEW_TREES:
        for f in doc["files"]:  # (hand-made batch manifests may lack sizes: 0 then)
            yield f["path"], bytes.fromhex(f["sha256"]), int(f.get("size", 0))
        return
    yield from _walk(get, doc["root"], "", own)


def _walk(get: Get, dir_sha: str, prefix: str, own: list[bytes] | None) -> Iterator[tuple[str, bytes, int]]:
    doc = json.loads(get(dir_sha))
    formats.check_document(doc, f"the directory object {dir_sha}")
    pages = [p[1] for p in doc["pages"]] if "pages" in doc else []
    if own is not None:
        own += [bytes.fromhex(sha) for sha in (dir_sha, *pages)]
    for entries in (json.loads(get(p))["entries"] for p in pages) if pages else [doc["entries"]]:
        yield from _walk_entries(get, entries, prefix, own)


def _walk_entries(get: Get, entries: list, prefix: str, own: list[bytes] | None) -> Iterator[tuple[str, bytes, int]]:
    for e in entries:
        if e[1] == "f":
            yield prefix + e[0], bytes.fromhex(e[2]), e[3]
        elif e[1] == "d":
            yield from _walk(get, e[2], f"{prefix}{e[0]}/", own)
        else:  # "i": a directory inline
            yield from _walk_entries(get, e[2], f"{prefix}{e[0]}/", own)


def iter_named(get: Get, manifest_sha_hex: str) -> Iterator[bytes]:
    """Every object manifest names — its files, then its own objects —, streamed (an object named
    twice comes twice): what its `held` entries are made of, one directory object of a view in
    memory at a time. An object that is no manifest (not JSON, no `files`: none hoardfs wrote,
    whose bytes are its sha256's) names only itself; one that cannot be read, or of a newer
    format, raises (what it names is not known: nothing may be taken as unheld)."""
    own: list[bytes] = []
    try:
        for _path, sha, _size in iter_files(get, manifest_sha_hex, own):
            yield sha
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        yield bytes.fromhex(manifest_sha_hex)
        return
    yield from own


def named(index) -> Iterator[tuple[str, str, dict]]:
    """("batch" | "view", name, info) of every registered manifest."""
    for kind, entries in (("batch", index.iter_batches()), ("view", index.iter_views())):
        for name, info in entries:
            yield kind, name, info


def named_by(get: Get, manifest_sha_hex: str) -> list[bytes]:
    """`iter_named`, each object once, in memory (a batch's: what its deletion looks up)."""
    return list(dict.fromkeys(iter_named(get, manifest_sha_hex)))


class HeldTables:
    """The index's side: the `held` table and the pending records in `meta`. A part of
    `hoardfs.fsd.core.index.Index`, which opens the tables."""

    env: Any
    meta: Any
    held: Any
    batches: Any
    views: Any
    #: `held` entries read by `held_among` since the index was opened (a test counts the work)
    held_reads = 0

    def held_ready(self) -> bool:
        """Whether `held` is complete and of these keys (format 5 or later; else the manifests are read)."""
        return self.held is not None and getattr(self, "format", 0) >= formats.INDEX_HELD

    def registered_manifests(self, txn: Any) -> set[bytes]:
        """The sha256 of every registered batch and view manifest (a few hundred entries; 500
        batches at 10 M objects), as `txn` sees them. Callers ask once per chunk of a pass over
        `held` or the objects (the sweep after a fill, check), so each entry's JSON is parsed once
        per process (`_manifest_of`) and only the raw entries are read again: parsing them all
        per chunk cost chunks × batches — 11 samples per million objects of an index rebuild at
        1 M, 85 at 10 M (docs/benchmarks.md)."""
        return {self._manifest_of(kind, bytes(k), bytes(v))
                for kind, db in (("batch", self.batches), ("view", self.views)) for k, v in txn.cursor(db=db)}

    def _manifest_of(self, kind: str, key: bytes, raw: bytes) -> bytes:
        """The manifest sha256 a `batches` or `views` entry names, from a cache keyed by the
        entry's exact bytes (the same bytes always name the same manifest; a changed entry is a
        new key). IndexDamaged for a malformed entry, never cached."""
        seen: dict[tuple[str, bytes, bytes], bytes] = self.__dict__.setdefault("_manifests_seen", {})
        got = seen.get((kind, key, raw))
        if got is None:
            got = bytes.fromhex(named_entry(kind, key.decode(errors="replace"), raw)["manifest"])
            if len(seen) >= _SEEN_MAX:
                seen.clear()
            seen[(kind, key, raw)] = got
        return got

    def registered_prefixes(self, txn: Any) -> set[bytes]:
        """The MAN-byte prefixes of every registered batch and view manifest."""
        return {man[:MAN] for man in self.registered_manifests(txn)}

    def _sharers(self, txn: Any, manifest: bytes) -> frozenset[bytes]:
        """The registered manifests with `manifest`'s MAN bytes, itself included if registered."""
        return frozenset(m for m in self.registered_manifests(txn) if m[:MAN] == manifest[:MAN])

    def _sharing(self, manifest: bytes, get: Get | None) -> tuple[frozenset[bytes], set[bytes] | None]:
        """The other registered manifests with `manifest`'s MAN bytes (`_sharers`, itself left
        out), and the OBJ-byte prefixes of every object they name — read with `get`; None when
        there is no `get` or one of them cannot be read (then every entry of the prefix may be
        theirs). Almost always no sharer: nothing is read."""
        with self.env.begin() as txn:
            sharers = self._sharers(txn, manifest) - {manifest}
        if not sharers:
            return sharers, set()
        if get is None:
            return sharers, None
        try:
            return sharers, {sha[:OBJ] for m in sorted(sharers) for sha in iter_named(get, m.hex())}
        except _UNREADABLE as e:
            log.warning("manifest %s shares its first %d bytes with registered manifests it cannot read (%s): "
                        "the held entries of that prefix are kept", manifest.hex(), MAN, e)
            return sharers, None

    def held_among(self, among: Iterable[bytes], skip: bytes | None = None, get: Get | None = None) -> set[bytes]:
        """Which of `among` a registered manifest names now — other than manifest `skip` (a
        batch being deleted). An entry of `skip`'s prefix that another registered manifest
        shares holds when that one names an object of its 12 bytes (read with `get`; without
        it, or unreadable, every such entry holds). A cursor positioning per object, whatever
        the store holds."""
        sharers, theirs = self._sharing(skip, get) if skip is not None else (frozenset(), set())
        out = set()
        with self.env.begin() as txn:
            live = self.registered_prefixes(txn)
            mine = None
            if skip is not None and theirs is not None and self._sharers(txn, skip) - {skip} == sharers:
                mine = skip[:MAN]  # (else: registrations changed, or unreadable — the prefix holds)
                live.discard(mine)
            theirs = theirs or set()
            cur = txn.cursor(db=self.held)
            for sha in among:
                if any(man in live or (man == mine and sha[:OBJ] in theirs) for man in self._manifests_of(cur, sha)):
                    out.add(sha)
        return out

    def _manifests_of(self, cur: Any, sha: bytes) -> Iterator[bytes]:
        """The manifest prefixes of `sha`'s entries, read with `cur` (a `held` cursor) as far as
        the caller asks."""
        head = sha[:OBJ]
        if not cur.set_range(head):
            return
        for k in cur.iternext(values=False):
            self.held_reads += 1
            if k[:OBJ] != head:
                return
            yield bytes(k[OBJ:])

    def holders(self, sha: bytes) -> set[bytes] | None:
        """The 8-byte prefixes of the manifests `held` says name `sha` (registered or not: the
        caller matches them against its registrations) — None on an index before format 3, whose
        manifests must be asked. Complete for every registered manifest (the invariant above);
        a prefix shared with another object only adds a manifest to read."""
        if not self.held_ready():
            return None
        with self.env.begin() as txn:
            return set(self._manifests_of(txn.cursor(db=self.held), sha))

    def pending_held(self, txn: Any = None) -> list[tuple[str, dict[str, Any]]]:
        """(manifest sha256 hex, {op, kind, name}) of every manifest whose entries a process is
        adding or removing — or was, when it was killed —, read in `txn` when given (one moment
        with what the caller reads there)."""
        if self.meta is None:
            return []
        if txn is not None:
            return self._pending(txn)
        with self.env.begin() as txn:
            return self._pending(txn)

    def _pending(self, txn: Any) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        cur = txn.cursor(db=self.meta)
        if cur.set_range(PENDING):
            for k, v in cur:
                if not bytes(k).startswith(PENDING):
                    break
                out.append((bytes(k[len(PENDING):]).decode(), json.loads(bytes(v))))
        return out

    def set_pending_held(self, txn: Any, manifest_hex: str, op: str | None, kind: str = "", name: str = "") -> None:
        """Inside a write transaction: note (or, `op` None, clear) that manifest's entries are
        being added or removed."""
        key = PENDING + manifest_hex.encode()
        if op is None:
            txn.delete(key, db=self.meta)
        else:
            txn.put(key, json.dumps({"op": op, "kind": kind, "name": name}, sort_keys=True).encode(), db=self.meta)

    def registration(self, kind: str, name: str, manifest_hex: str | None) -> Callable[[Any], None]:
        """The `also` of the transaction that registers `name` as `manifest_hex` (None: unregisters
        it; Index.name_pointer): the new manifest's pending `add` record goes, and the manifest it
        replaces gets a pending `remove` record — in the registration's own transaction."""
        db = self.batches if kind == "batch" else self.views

        def also(txn: Any) -> None:
            if self.held is None:
                return
            raw = txn.get(name.encode(), db=db)
            old = named_entry(kind, name, bytes(raw))["manifest"] if raw else None
            if manifest_hex is not None:
                self.set_pending_held(txn, manifest_hex, None)
            if old is not None and old != manifest_hex:
                self.set_pending_held(txn, old, "remove", kind, name)

        return also

    def hold(self, manifest_hex: str, shas: Iterable[bytes], kind: str, name: str) -> int:
        """Add the entries of manifest (before the transaction that registers it, which clears
        the pending record: Index.name_pointer's `also`), in bounded write transactions; the first
        notes it pending. Returns how many entries were written."""
        man = bytes.fromhex(manifest_hex)
        n = 0
        with self.env.begin(write=True) as txn:
            self.set_pending_held(txn, manifest_hex, "add", kind, name)
        for part in chunked(shas):
            with self.env.begin(write=True, db=self.held) as txn:
                for sha in part:
                    n += txn.put(pair(sha, man), b"")
        return n

    def unhold(self, manifest_hex: str, shas: Iterable[bytes], op: str = "remove", get: Get | None = None) -> int:
        """Remove manifest's entries (`shas`: what it names), in bounded write transactions, each
        only while its pending record still says `op` and the registered manifests of its prefix
        are the ones `_sharing` found (registered again meanwhile: its entries stay) — and not
        the entries of an object whose 12 bytes a manifest sharing its prefix names (read with
        `get`; without it or unreadable, every entry stays); the record goes with the last.
        Returns how many entries were removed."""
        man = bytes.fromhex(manifest_hex)
        sharers, theirs = self._sharing(man, get)
        n = 0
        if theirs is not None:
            for part in chunked(shas):
                with self.env.begin(write=True) as txn:
                    if not self._going(txn, manifest_hex, op, sharers):
                        break
                    n += sum(1 for sha in part if sha[:OBJ] not in theirs and txn.delete(pair(sha, man), db=self.held))
        self._unpend(manifest_hex, op)
        return n

    def unhold_unread(self, manifest_hex: str, op: str = "remove", get: Get | None = None) -> int:
        """`unhold` for a manifest that cannot be read (a gc freed it beside a deletion killed
        after the unregistration; a disk gone): every entry with its 4 bytes, found by a pass over
        the table, under the same conditions — entries of a manifest not registered hold nothing,
        so none is needed. Returns how many entries were removed."""
        man = bytes.fromhex(manifest_hex)
        sharers, theirs = self._sharing(man, get)
        n = 0
        if theirs is not None:
            n = self._sweep(lambda txn: (lambda k: b"" if k[OBJ:] == man[:MAN] and k[:OBJ] not in theirs else None)
                            if self._going(txn, manifest_hex, op, sharers) else None)
        self._unpend(manifest_hex, op)
        return n

    def _going(self, txn: Any, manifest_hex: str, op: str, sharers: frozenset[bytes]) -> bool:
        """Whether the manifest's pending record still says `op` and the registered manifests of
        its prefix are still `sharers` (it registered again meanwhile, or another one of them:
        its entries stay)."""
        raw = txn.get(PENDING + manifest_hex.encode(), db=self.meta)
        return raw is not None and json.loads(bytes(raw)).get("op") == op and \
            self._sharers(txn, bytes.fromhex(manifest_hex)) == sharers

    def _unpend(self, manifest_hex: str, op: str) -> None:
        """The pending record goes, if it still says `op`."""
        key = PENDING + manifest_hex.encode()
        with self.env.begin(write=True) as txn:
            raw = txn.get(key, db=self.meta)
            if raw is not None and json.loads(bytes(raw)).get("op") == op:
                txn.delete(key, db=self.meta)

    def fill_held(self, get: Get, spills: Path | None = None) -> int:
        """Fill `held` from every registered manifest (read with `get`), then remove the entries
        of manifests neither registered nor pending: the migration to format 3 and an index
        rebuild's. Only adds what a registered manifest names and removes what no manifest could
        need, so two processes migrating at once cannot undo each other (each one's version is
        written after its own complete fill), and a killed one is redone whole. Bounded write
        transactions; a manifest that cannot be read raises (the index then stays below 3).

        The keys are written in key order: every manifest's entries are spilled first
        (hoardfs.fsd.core.spill: sorted runs on disk under `spills`, the system's temporary folder when
        None — memory for 1/256 of them), then put sorted, each transaction's run appended at
        the table's end (LMDB's MDB_APPEND) when it sorts after every key there — always, into
        an empty table. Put as the manifests name them, each key dirtied a page of its own once
        the table outgrew a transaction, and every commit wrote most of the tree: 48 % of a
        rebuild at 10 M objects, 1.76× its cost per object at 1 M."""
        whose: dict[bytes, tuple[str, str]] = {}  # manifest → (kind, name) of a registration naming it
        with self.env.begin() as txn:
            for kind, db in (("batch", self.batches), ("view", self.views)):
                for k, v in txn.cursor(db=db):
                    name = bytes(k).decode(errors="replace")
                    whose.setdefault(bytes.fromhex(named_entry(kind, name, bytes(v))["manifest"]), (kind, name))
        n = 0
        with Spill(spills, OBJ + MAN, prefix="held-") as runs:
            for man in sorted(whose):
                asked = [man.hex()]

                def reading(sha_hex: str, asked: list[str] = asked) -> bytes:
                    asked[0] = sha_hex
                    return get(sha_hex)

                try:
                    for sha in iter_named(reading, man.hex()):
                        runs.add(pair(sha, man))
                except formats.NewerFormat:
                    raise
                except _UNREADABLE as e:  # (which registration, so the step can be named: hoardfs.fsd.outputs.unreadable)
                    raise ManifestNotRead(*whose[man], man.hex(), e, asked[0]) from e
            for part in chunked(_distinct(runs.sorted())):
                with self.env.begin(write=True, db=self.held) as txn:
                    cur = txn.cursor()
                    last = bytes(cur.key()) if cur.last() else b""
                    added = 0
                    if part[0] > last:  # (the run sorts after the table: appended, its pages written full)
                        added = cur.putmulti([(k, b"") for k in part], append=True)[1]
                    if added != len(part):  # (a key LMDB did not append — none should be — is put)
                        added = sum(txn.put(k, b"") for k in part)
                    n += added
        return n + self._sweep(self._unneeded)

    def _unneeded(self, txn: Any) -> Callable[[bytes], bytes | None]:
        """The migration's sweep: entries of manifests neither registered nor pending go (and
        any key not OBJ + MAN bytes: one of formats 3 and 4 a killed fill of theirs left)."""
        keep = self.registered_prefixes(txn) | {bytes.fromhex(m)[:MAN] for m, _ in self._pending(txn)}
        return lambda k: b"" if k[OBJ:] not in keep else None

    def shorten_held(self) -> int:
        """The migration to format 5: every key of formats 3 and 4 (16 + 8 bytes) becomes its
        12 + 4 (two keys of one object prefix and manifest prefix become one entry: an entry is
        a fact, not a count). A process killed half-way leaves both kinds: the index stays at
        its format, whose table is not read (`held_ready`), and the next migration cuts the
        rest. Returns how many keys were cut."""
        long = LONG_OBJ + LONG_MAN
        return self._sweep(lambda txn: lambda k: k[:OBJ] + k[LONG_OBJ:LONG_OBJ + MAN] if len(k) == long else None)

    def _sweep(self, which: Callable[[Any], Callable[[bytes], bytes | None] | None]) -> int:
        """Pass over the table once: `which(txn)` gives `edit(key)` — None leaves the key, b""
        removes it, other bytes replace it with those — or None: stop. Returns how many keys
        were removed or replaced.

        The keys are read in read transactions of up to _SPAN keys, `which` asked once for
        each; the ones its `edit` would change (up to _PER: a read stops there) are changed in
        one write transaction, where `which` is asked again, at that transaction's own moment,
        and decides alone: a key is changed only if it is still there and that `edit` changes
        it (a registration made since the read keeps its entries). Asked per write transaction
        of _PER keys visited, `which` (the rebuild's sweep: every registered batch and view)
        would cost chunks x batches — the square of the store (docs/benchmarks.md)."""
        changed = 0
        at: bytes | None = b""
        while at is not None:
            changing: list[bytes] = []
            with self.env.begin() as txn:
                edit = which(txn)
                if edit is None:
                    break
                cur = txn.cursor(db=self.held)
                seen, last = 0, b""
                for k in (cur.iternext(values=False) if cur.set_range(at) else ()):
                    seen, last = seen + 1, bytes(k)
                    if edit(last) is not None:
                        changing.append(last)
                    if seen == _SPAN or len(changing) == _PER:
                        break
            at = last + b"\0" if seen == _SPAN or len(changing) == _PER else None
            if changing:
                with self.env.begin(write=True) as txn:
                    edit = which(txn)
                    if edit is None:
                        break
                    for k in changing:
                        new = edit(k)
                        if new is not None and txn.delete(k, db=self.held):
                            if new:
                                txn.put(new, b"", db=self.held)
                            changed += 1
        return changed
