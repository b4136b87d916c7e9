"""`hoard check`: do the index, the shards on the disks and the database agree?

Like restic's `check` and git-annex's `fsck`, it reads what each side says and names every
disagreement; it changes nothing. The invariants (docs/design.md, "What `hoard check`
verifies"):

1. every object entry points at a shard the index knows, inside the shard's bytes;
2. a shard's replicas are registered disks, each listed once, and each replica file exists
   on its disk with the size the index records (sealed shards);
3. a sealed shard's footer lists exactly `records` records; the objects the index maps to
   it are among them, and every object a footer names is in the index;
4. each disk's `used_bytes` equals the size of the replica files the index puts there;
5. deletion marks, roots, chunk maps and extensions name objects that exist;
6. every batch and view manifest is stored, and every file it names is in the index;
7. (with the database) every physical node that is not deleted is in the store, and every
   node's deletion flags follow the store (design.md's item 14: `hoardfs.sql.check.liveness`; `hoard
   check --repair` sets them from the store);
8. the disks' marks logs (those an index rebuild reads: a failed disk's too) replay to
   exactly the index's marks;
9. (design.md's item 10) every batch and view has its pointer in the index, and every disk
   in service holds the index's pointers, byte for byte (a rebuild from any of them names the same batches and
   views, with the same definitions);
10. (design.md's item 11) no disk's drive says by its SMART that it is failing
   (`hoardfs.fsd.core.smart.judge`, as `hoard health` judges it: a drive losing sectors is a note);
11. (design.md's item 12) the `held` table names, for every object a registered manifest names,
   that manifest, and nothing else (hoardfs.fsd.core.held; read with item 6's manifests). A batch
   deletion or registration a killed process left half done is judged with the marks logs and
   pointers (hoardfs.fsd.io.integrity: `held`), as health and verify judge it; so are the work folders
   a killed index rebuild or restore left on the SSD (`leftover`).
12. (design.md's item 13) the `live` table counts, for each shard, the objects the index points
   at there and their payload bytes (hoardfs.fsd.core.live; from item 1's pass, in its read transaction).

Replicas below their class target and orphan files are reported as notes, not failures
(`hoard replicate`, `hoard verify --orphans` deal with them).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hoardfs.base.files import size_or_zero
from hoardfs.fsd.core import formats
from hoardfs.fsd.core import held as held_mod
from hoardfs.fsd.core import live as live_mod
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.disks import DiskState, corrupt_fs, fsck_step, shard_of
from hoardfs.fsd.core.index import IndexDamaged, ObjectLoc, ShardMeta, disk_record
from hoardfs.fsd.io import attach, integrity
from hoardfs.fsd.io.writer import writer_alive
from hoardfs.fsd.maintenance.health import smart_of_store
from hoardfs.fsd.outputs import unreadable
from hoardfs.fsd.outputs.manifest import iter_files

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

#: the next step of a disagreement inside the index (it is rebuilt from the shards on the disks)
REBUILD = "`hoard index rebuild` recreates the index from the disks"

#: a shard file's name without its suffix: the shard id in lowercase hex
_SHARD_NAME = re.compile(r"(?:[0-9a-f]{2})+")
#: the next step of a stale entry: a chunk map or extension only describes bytes
_GC = "`hoard gc` clears it"
#: a mark (in the disks' marks logs too) of an object the index lost: a rebuild finds it again
_REBUILD = "`hoard index rebuild` finds the object again if a disk holds it"


@dataclass
class CheckReport(integrity.Findings):
    """The disagreements (`problems`, at most integrity.SHOW lines of each kind; `counts`: kind →
    how many), notes, totals."""
    totals: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: every on-disk format found and known (hoardfs.fsd.core.formats.survey, as `hoard health` shows it)
    formats: dict = field(default_factory=dict)


#: what `check` asks the database: given a function that lists the store's objects (sha256s in
#: byte order), the physical nodes the store lacks and how many store objects are no node
MissingInDb = Callable[[Callable[[], Iterator[bytes]]], tuple[list[bytes], int]]
#: what `check` asks the database of deletion: given what the index says of an object
#: (`IndexMarks`), a line for each node whose deletion flags disagree with it
LivenessInDb = Callable[["IndexMarks"], Iterable[str]]


class IndexMarks:
    """What the index says of an object, for the database's side of check (hoardfs.sql.check.StoreMarks):
    point lookups, and the hidden marks in byte order from one read transaction."""

    def __init__(self, store: Store) -> None:
        self.idx = store.index

    def holds(self, sha: bytes) -> bool:
        return self.idx.lookup(sha) is not None

    def hides(self, sha: bytes) -> bool:
        return self.idx.is_marked(self.idx.hidden, sha)

    def hidden(self) -> Iterator[bytes]:
        if self.idx.hidden is None:  # a table an old index opened read-only does not have
            return
        with self.idx.env.begin(db=self.idx.hidden) as txn:
            for k in txn.cursor().iternext(values=False):
                yield bytes(k)


def check(store: Store, missing_in_db: MissingInDb | None = None, wait_s: float = 60.0,
          liveness_in_db: LivenessInDb | None = None) -> CheckReport:
    """Reconcile index ↔ disks (↔ database: `missing_in_db(store_objects)` returns the physical
    nodes the store lacks and how many store objects the database does not know;
    `liveness_in_db(marks)` the nodes whose deletion flags disagree with the index's marks).

    Memory does not grow with the store (sets of every object would take 1.5 KB per
    object): whether an object is stored is asked of the index (objects are only ever added
    while the maintenance lock is held — gc, the one that drops them, takes it too), the
    footers are compared shard by shard, the database's nodes are merged with the index in
    order.

    Holds the maintenance lock (waiting up to `wait_s` for a gc, replicate, rebuild or verify
    --repair to finish, else refusing with its holder named): gc moves shards to `retired`,
    deletes their files and adjusts the disks' used bytes in steps, and a check reading between
    them reported "used bytes" and "missing replica" disagreements about a whole store."""
    with store.maintenance("check", wait_s=wait_s):
        return _check(store, missing_in_db, liveness_in_db)


def check_drives(store: Store, rep: CheckReport) -> None:
    """Item 10: each drive's own SMART (the cached reading while younger than an hour), judged
    as `hoard health` judges it: a drive that says it is failing is a disagreement with the
    store's promise of its copies; a warning is a note. Apart from `check` (it runs smartctl:
    `hoard check` calls both)."""
    _, problems, warnings = smart_of_store(store)
    for line in problems:
        rep.add("disk SMART", line)
    rep.notes += [f"warning: {line}" for line in warnings]


@dataclass
class _Moment:
    """What the index said in one read transaction (steps 1 and 5 are judged inside it): a
    check beside a writer must not compare tables read at two moments — the shard table
    before a seal and the disk's used bytes after it (a false "used bytes"), or objects
    committed after the shard table was read (a false "dangling")."""
    shards: dict[bytes, ShardMeta]
    retired: list[ShardMeta]
    used: dict[str, int]  # disk uuid → used_bytes
    objects: int  # how many
    pointing: Counter[bytes]
    named: list[tuple[str, str, dict]]


def _read_moment(store: Store, rep: CheckReport) -> _Moment:
    idx = store.index
    with idx.env.begin() as txn:
        shards = {m.shard_id: m for m in integrity.decoded(rep, txn.cursor(db=idx.shards), ShardMeta.from_json)}
        retired = list(integrity.decoded(rep, txn.cursor(db=idx.retired), ShardMeta.from_json))
        used = {r.uuid: r.used_bytes for r in integrity.decoded(rep, txn.cursor(db=idx.disks), disk_record)}
        named = [(kind, name, info) for kind, db in (("batch", idx.batches), ("view", idx.views))
                 for name, info in integrity.decoded(rep, txn.cursor(db=db), integrity.named_decoder(kind))]
        pointing: Counter[bytes] = Counter()
        counted: Counter[bytes] = Counter()  # the objects pointing at each shard, known or not (12)
        weight: Counter[bytes] = Counter()  # payload bytes of the objects pointing at each shard (12)
        objects = 0
        for k, v in txn.cursor(db=idx.objects):  # 1
            sha = bytes(k)
            objects += 1  # (a malformed entry still names an object: its marks are not stale)
            if len(sha) != 32:  # no sha256: no read finds it, and it counts against its shard's records
                rep.add("malformed", IndexDamaged(f"the index has an object key of {len(sha)} bytes ({sha.hex()}), "
                                                  "a sha256 has 32").finding)
                continue
            try:
                loc = ObjectLoc.unpack(bytes(v), sha)
            except IndexDamaged as e:
                rep.add("malformed", e.finding)
                continue
            weight[loc.shard_id] += loc.length
            counted[loc.shard_id] += 1
            meta = shards.get(loc.shard_id)
            if meta is None:
                rep.add("dangling", f"object {sha.hex()} points at shard {loc.shard_id.hex()}, which the index does "
                                    "not know: `hoard index rebuild` finds it again if it is on a disk")
                continue
            pointing[loc.shard_id] += 1
            if meta.sealed and loc.offset + loc.length > meta.size:
                rep.add("out of bounds", f"object {sha.hex()} ends at {loc.offset + loc.length}, beyond its shard "
                                         f"{meta.hex} ({meta.size} bytes): {REBUILD}")
        for name, db, fix in (("hidden", idx.hidden, _REBUILD), ("deleted", idx.deleted, _REBUILD),  # 5
                              ("root", idx.rooted, _REBUILD), ("chunk map", idx.chunks, _GC),
                              ("extension", idx.exts, _GC)):
            if db is None:  # a table an old index opened read-only does not have yet
                continue
            for k in txn.cursor(db=db).iternext(values=False):
                if txn.get(k, db=idx.objects) is None:
                    rep.add("stale mark", f"{name} entry for {bytes(k).hex()}, which is not in the store: {fix}")
        _live_counts(idx, txn, counted, weight, rep)  # 12
    return _Moment(shards, retired, used, objects, pointing, named)


#: the next step of a `live` count that differs from the objects pointing at its shard
RECOUNT = "`hoard index recount` counts them again (gc compacts more or less by it, it frees no live object)"


def _live_counts(idx: Any, txn: Any, counted: Counter[bytes], weight: Counter[bytes], rep: CheckReport) -> None:
    """Item 12: the `live` table counts, for each shard, the objects pointing at it and their
    bytes as the pass over `objects` (in the same read transaction) found them. Not judged on an
    index before format 4, nor while a fill counts (`hoard index recount`, a migration)."""
    if idx.live is None or idx.format < formats.INDEX_LIVE:
        return
    if txn.get(live_mod.FILL, db=idx.meta) is not None:
        rep.notes.append("the `live` counts are being filled, or a fill was stopped: gc plans by a pass over every "
                         "object until `hoard index recount` ends")
        return
    table = {bytes(k): bytes(v) for k, v in txn.cursor(db=idx.live)}
    for sid in sorted(set(table) | set(counted)):
        n, nbytes = live_mod.unpack(table.get(sid))
        if (n, nbytes) != (counted[sid], weight[sid]) or (sid in table and len(table[sid]) != 16):
            rep.add("live count", f"shard {sid.hex()}: the index counts {n} objects of {nbytes} bytes in it, "
                                  f"{counted[sid]} of {weight[sid]} bytes point at it: {RECOUNT}")


def _replica_size(store: Store, disk, meta: ShardMeta, uuid: str) -> int | None:
    """The size of `meta`'s replica file on `disk`; None when a live writer holds the shard
    (it indexes a new shard before it creates the files) or the index no longer names the
    replica (recovery dropped an empty shard). OSError when it is missing — looked for twice:
    a writer may have sealed it (`.open` renamed to `.shard`) between `find`'s two looks."""
    try:
        return disk.size(meta.hex)
    except FileNotFoundError:
        if not meta.sealed and writer_alive(store.lock_path(meta.hex)):
            return None
        now = store.index.get_shard(meta.shard_id)
        if now is None or uuid not in now.replicas:
            return None
        return disk.size(meta.hex)


def _unreadable(shard_hex: str, label: str, e: OSError) -> str:
    """The line of a replica whose file does not read, with what mends it."""
    head = f"shard {shard_hex}: its replica on {label} does not read ({e.strerror or e})"
    if corrupt_fs(e):
        return f"{head}: {fsck_step(label)}"
    return f"{head}: if the disk is dying, docs/operations.md \"A disk dies\" (`hoard health` names it once a read fails)"


def _check(store: Store, missing_in_db: MissingInDb | None, liveness_in_db: LivenessInDb | None = None
           ) -> CheckReport:
    rep = CheckReport()
    t0 = time.monotonic()
    rep.formats = attach.formats_found(store.cfg, store.index.format)
    for line in rep.formats["problems"]:
        rep.add("newer format", line)
    m0 = _read_moment(store, rep)
    shards, pointing = m0.shards, m0.pointing
    stored = integrity.in_index(store)
    expect_used: Counter[str] = Counter()
    unindexed: set[bytes] = set()  # (named once, when two footers list it)
    for meta in shards.values():  # 2, 3
        if len(set(meta.replicas)) != len(meta.replicas):
            rep.add("replicas", f"shard {meta.hex} lists a disk twice: {meta.replicas}: {REBUILD}")
        for uuid in meta.replicas:
            rec = store.records.get(uuid)
            if rec is None:
                rep.add("replicas", f"shard {meta.hex} names disk {uuid}, which is not registered: {REBUILD}")
                continue
            if meta.sealed:
                expect_used[uuid] += meta.size
            disk = store.disks.get(uuid)
            if disk is None or rec.state in (DiskState.MISSING, DiskState.FAILED):
                continue  # health reports the disk; its files cannot be looked at now
            try:
                size = _replica_size(store, disk, meta, uuid)
            except FileNotFoundError:
                rep.add("missing replica", f"shard {meta.hex}: its replica on {rec.label} is missing; "
                                           "`hoard replicate` makes a new one from the others")
                continue
            except OSError as e:  # not missing: the disk does not read it
                rep.add("unreadable replica", _unreadable(meta.hex, rec.label, e))
                continue
            if meta.sealed and size is not None and size != meta.size:
                rep.add("replica size", f"shard {meta.hex} on {rec.label} is {size} bytes, the index says "
                                        f"{meta.size}: `hoard verify --repair` replaces a damaged replica")
        if not meta.sealed:
            continue
        recs, size = integrity.first_footer(store, meta)
        if recs is None:
            rep.add("footer", f"shard {meta.hex}: no readable replica footer; `hoard verify` names the damage")
            continue
        body_end = recs[-1].end if recs else fmt.SHARD_HEADER_SIZE
        footer_at = size - len(recs) * fmt.FOOTER_ENTRY_SIZE - fmt.TRAILER_SIZE
        if footer_at != body_end:  # what `hoard verify` finds as "N records, the footer lists M"
            rep.add("footer", f"shard {meta.hex}: its body runs {footer_at - body_end} bytes past the last record its "
                              "footer lists (a record no footer names: a sealing cut short by Ctrl-C); "
                              "`hoard verify --repair` reseals it")
        for r in recs:
            if r.sha256 not in unindexed and not stored(r.sha256):
                unindexed.add(r.sha256)
                rep.add("unindexed", f"object {r.sha256.hex()} is in a shard footer but not in the index: "
                                     "`hoard index rebuild` indexes it")
        if len(recs) != meta.records or pointing[meta.shard_id] > len(recs):
            rep.add("record count", f"shard {meta.hex}: footer lists {len(recs)} records, the index says "
                                    f"{meta.records} and maps {pointing[meta.shard_id]} objects there: `hoard verify` "
                                    f"names a damaged replica; if none is, {REBUILD}")
    for m in m0.retired:  # gc's retired shards still hold files until deleted
        for uuid in m.replicas:
            expect_used[uuid] += m.size
        rep.notes.append(f"shard {m.hex} is retired by gc, {len(m.replicas)} replica files left to delete "
                         "(the next `hoard gc` does it)")
    named_then = {(m.hex, u) for m in (*shards.values(), *m0.retired) for u in m.replicas}
    for uuid, rec in store.records.items():  # 4
        if uuid not in store.disks or rec.state == DiskState.MISSING:
            continue
        used = m0.used.get(uuid, rec.used_bytes)
        if used != expect_used[uuid]:
            rep.add("used bytes", f"disk {rec.label}: the index counts {used} bytes used, its replicas add up to "
                                  f"{expect_used[uuid]}: {REBUILD} (and recounts each disk's used bytes)")
        if rec.state != DiskState.FAILED:
            unnamed = _unnamed_bytes(store, uuid, named_then)
            if unnamed:
                rep.notes.append(f"disk {rec.label}: {unnamed} bytes of shard files no index entry names "
                                 "(orphans); `hoard verify --orphans` sets them aside")
    integrity.judge(store, stored, into=rep)  # 8, 9: as verify and health judge them
    held = _Held(store) if store.index.held_ready() else None
    for kind, name, info in m0.named:  # 6
        if not stored(bytes.fromhex(info["manifest"])):
            way_out = f"hoard delete --batch {name}" if kind == "batch" else f"hoard view rm {name}"
            rep.add("manifest", f"{kind} {name}: its manifest {info['manifest']} is not in the store: `hoard index "
                                f"rebuild` finds it again if a disk holds it; else `{way_out}` unregisters it (its "
                                "files stay)")
            continue
        reading = unreadable.Reading(store)
        try:
            files = lost = 0
            example = ""
            own: list[bytes] = []
            man = bytes.fromhex(info["manifest"])
            # (a directory object or page of a view-2 manifest that is lost fails this read)
            for path, sha, _size in iter_files(reading, info["manifest"], own):
                files += 1
                if not stored(sha):
                    lost += 1
                    example = example or f"{path} {sha.hex()}"
                if held is not None:
                    held.look(sha, man)
            if held is not None:
                for sha in own:
                    held.look(sha, man)
        except Exception as e:  # a damaged manifest is a finding, not a crash
            # (with the step: a disk to bring back, or `hoard delete --batch` / `hoard view rm`)
            rep.add("manifest", unreadable.judge(store, kind, name, info["manifest"], e, reading.last).message)
            if held is not None:
                held.unjudged.add(man[:held_mod.MAN])  # (this finding is its; no count to hold it to)
            continue
        if lost:
            rep.add("manifest", f"{kind} {name}: {lost} of its {files} files are not in the store (e.g. {example})")
        if held is not None:
            held.judge(rep, f"{kind} {name}", man)
    if held is not None:  # 11
        held.stale(rep)
    below = sum(1 for m in shards.values() if m.sealed and store.copies_of(m, readable=True) < store.target(m.klass))
    if below:
        rep.notes.append(f"{below} shards are below their replica target; `hoard replicate`")
    if missing_in_db is not None:  # 7
        lacking, unknown = missing_in_db(lambda: _object_keys(store))
        for sha in lacking:
            rep.add("database", f"the database has physical node {sha.hex()}, the store does not: its bytes are "
                                "lost unless a 3B package holds them")
        if unknown:
            rep.notes.append(f"{unknown} stored objects are not nodes in the database (manifests, dumps, files "
                             "stored with `hoard put`, dataset versions' loader indexes and converted JPEGs)")
    if liveness_in_db is not None:  # 7: the deletion flags follow the store
        for line in liveness_in_db(IndexMarks(store)):
            rep.add("database", line)
    per_disk = {store.records[u].label: n for u, n in expect_used.items() if u in store.records}
    rep.totals = {"objects": m0.objects, "shards": len(shards), "sealed": sum(m.sealed for m in shards.values()),
                  "replicas": sum(len(m.replicas) for m in shards.values()), "bytes_per_disk": per_disk}
    rep.seconds = time.monotonic() - t0
    return rep


class _Held:
    """Item 11: the `held` table against the manifests (hoardfs.fsd.core.held). Every object a registered
    manifest names has its entry — one missing is an object a deletion or gc could free while
    the manifest names it; an entry of a manifest neither registered nor pending, or more
    entries of a manifest than it names objects, is one the table should not have (it only
    keeps objects: a leak). A lookup asks, in one read transaction (begun again every `renew`),
    whether the manifest is registered then: one unregistered meanwhile is not judged."""

    def __init__(self, store: Store, renew: int = 10_000) -> None:
        self.idx, self.renew = store.index, renew
        self.txn: Any = None
        self.live: set[bytes] = set()
        self.used = 0
        self.missing = 0
        self.example = ""
        self.named: Counter[bytes] = Counter()  # manifest prefix → objects it names (with repeats)
        self.unjudged: set[bytes] = set()  # manifests that cannot be read (named as such)

    def look(self, sha: bytes, man: bytes) -> None:
        if self.txn is None or self.used >= self.renew:
            if self.txn is not None:
                self.txn.abort()
            self.txn, self.used = self.idx.env.begin(), 0
            self.live = self.idx.registered_prefixes(self.txn)
        self.used += 1
        self.named[man[:held_mod.MAN]] += 1
        if man[:held_mod.MAN] in self.live and self.txn.get(held_mod.pair(sha, man), db=self.idx.held) is None:
            self.missing += 1
            self.example = self.example or sha.hex()

    def judge(self, rep: CheckReport, what: str, man: bytes) -> None:
        if self.missing:
            rep.add("held", f"{what}: {self.missing} objects its manifest names have no `held` entry (e.g. "
                            f"{self.example}): a deletion or gc could free them while it names them — {REBUILD} "
                            "(and the table with it)")
        self.missing, self.example = 0, ""

    def stale(self, rep: CheckReport) -> None:
        if self.txn is not None:
            self.txn.abort()
        counts: Counter[bytes] = Counter()
        with self.idx.env.begin() as txn:  # (one moment: the registrations, pending records and entries)
            live = self.idx.registered_prefixes(txn)
            pending = {bytes.fromhex(m)[:held_mod.MAN] for m, _ in self.idx.pending_held(txn)}
            for k in txn.cursor(db=self.idx.held).iternext(values=False):
                counts[bytes(k[held_mod.OBJ:])] += 1
        for man, n in sorted(counts.items()):
            if man not in live and man not in pending:
                rep.add("held", f"{n} `held` entries name manifest {man.hex()}…, which is neither registered nor "
                                f"being removed (they keep objects, never free them): {REBUILD}")
            # (a manifest registered after check listed them was not read: its count is not known;
            # one sharing its prefix with a manifest being added or removed has that one's too)
            elif man in live and man in self.named and n > self.named[man] and man not in self.unjudged \
                    and man not in pending:
                rep.add("held", f"manifest {man.hex()}… has {n} `held` entries and names {self.named[man]} objects "
                                f"(the rest keep objects it does not name): {REBUILD}")


def _object_keys(store: Store) -> Iterator[bytes]:
    """Every object's sha256 in the index, in byte order."""
    idx = store.index
    with idx.env.begin(db=idx.objects) as txn:
        for k in txn.cursor().iternext(values=False):
            yield bytes(k)


def _unnamed_bytes(store: Store, uuid: str, named_then: set[tuple[str, str]]) -> int:
    """Bytes of shard files on the disk that no index entry names — neither at the check's
    moment nor now (a shard a writer opened since is not an orphan). Only a name a shard's id
    spells (lowercase hex) is looked up: `bytes.fromhex` also takes spaces and capitals, and a
    file " .shard" made an empty key the index refused (check failed, blaming the index), while
    a copy named in capitals, which no reader opens, was taken for the shard's replica."""
    total = 0
    disk = store.disks[uuid]
    listed: list[tuple[str, Any]] = ([(shard_of(p)[0], p) for p in disk.shard_files()] if has_files(disk)
                                     else [(h, None) for h, _ in disk.shard_ids()])
    for shard_hex, p in listed:
        if (shard_hex, uuid) in named_then:
            continue
        try:
            now = store.index.get_shard(bytes.fromhex(shard_hex)) if _SHARD_NAME.fullmatch(shard_hex) else None
        except IndexDamaged:  # named already ("malformed"): its file is no orphan for that
            continue
        if now is None or uuid not in now.replicas:
            total += size_or_zero(p) if p is not None else _size_or_zero(disk, shard_hex)
    return total


def _size_or_zero(disk: Any, shard_hex: str) -> int:
    """The size of a shard a backend without files lists (0: gone since the listing)."""
    try:
        return int(disk.size(shard_hex))
    except FileNotFoundError:
        return 0
