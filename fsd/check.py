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
7. (with the database) every physical node that is not deleted is in the store;
8. the disks' marks logs (those an index rebuild reads: a failed disk's too) replay to
   exactly the index's marks;
9. (design.md's item 10) every batch and view has its pointer in the index, and every disk
   in service holds the index's pointers, byte for byte (a rebuild from any of them names the same batches and
   views, with the same definitions).

Replicas below their class target and orphan files are reported as notes, not failures
(`hoard replicate`, `hoard verify --orphans` deal with them).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from fsd import marks, pointers
from fsd import shardfmt as fmt
from fsd.base.files import size_or_zero
from fsd.disks import DiskState
from fsd.layout import BATCHES_DIR, VIEWS_DIR
from fsd.index import MARKS_NS, IndexDamaged, ObjectLoc, ShardMeta, disk_record, named_entry
from fsd.manifest import iter_files
from fsd.orphans import shard_files
from fsd.writer import writer_alive

if TYPE_CHECKING:
    from fsd.store import Store

#: at most this many lines per kind of disagreement (the counts are always complete)
SHOW = 20
T = TypeVar("T")
#: a shard file's name without its suffix: the shard id in lowercase hex
_SHARD_NAME = re.compile(r"(?:[0-9a-f]{2})+")
#: the next step of a stale entry: a chunk map or extension only describes bytes
_GC = "`hoard gc` clears it"
#: a mark (in the disks' marks logs too) of an object the index lost: a rebuild finds it again
_REBUILD = "`hoard index rebuild` finds the object again if a disk holds it"


@dataclass
class CheckReport:
    totals: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # kind of disagreement → how many
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= SHOW:
            self.problems.append(line)

    @property
    def ok(self) -> bool:
        return not self.counts


def check(store: Store, missing_in_db: Callable[[set[bytes]], tuple[list[bytes], int]] | None = None,
          wait_s: float = 60.0) -> CheckReport:
    """Reconcile index ↔ disks (↔ database: `missing_in_db(store_objects)` returns the physical
    nodes the store lacks and how many store objects the database does not know).

    Holds the maintenance lock (waiting up to `wait_s` for a gc, replicate, rebuild or verify
    --repair to finish, else refusing with its holder named): gc moves shards to `retired`,
    deletes their files and adjusts the disks' used bytes in steps, and a check reading between
    them reported "used bytes" and "missing replica" disagreements about a whole store."""
    with store.maintenance("check", wait_s=wait_s):
        return _check(store, missing_in_db)


@dataclass
class _Moment:
    """What the index said in one read transaction (steps 1 and 5 are judged inside it): a
    check beside a writer must not compare tables read at two moments — the shard table
    before a seal and the disk's used bytes after it (a false "used bytes"), or objects
    committed after the shard table was read (a false "dangling")."""
    shards: dict[bytes, ShardMeta]
    retired: list[ShardMeta]
    used: dict[str, int]  # disk uuid → used_bytes
    objects: set[bytes]
    pointing: Counter[bytes]
    named: list[tuple[str, str, dict]]


def _read_moment(store: Store, rep: CheckReport) -> _Moment:
    idx = store.index
    with idx.env.begin() as txn:
        shards = {m.shard_id: m for m in _decoded(rep, txn.cursor(db=idx.shards), ShardMeta.from_json)}
        retired = list(_decoded(rep, txn.cursor(db=idx.retired), ShardMeta.from_json))
        used = {r.uuid: r.used_bytes for r in _decoded(rep, txn.cursor(db=idx.disks), disk_record)}
        named = [(kind, name, info) for kind, db in (("batch", idx.batches), ("view", idx.views))
                 for name, info in _decoded(rep, txn.cursor(db=db), _named(kind))]
        pointing: Counter[bytes] = Counter()
        objects: set[bytes] = set()
        for k, v in txn.cursor(db=idx.objects):  # 1
            sha = bytes(k)
            objects.add(sha)  # a malformed entry still names an object: its marks are not stale
            if len(sha) != 32:  # no sha256: no read finds it, and it counts against its shard's records
                rep.add("malformed", IndexDamaged(f"the index has an object key of {len(sha)} bytes ({sha.hex()}), "
                                                  "a sha256 has 32").finding)
                continue
            try:
                loc = ObjectLoc.unpack(bytes(v), sha)
            except IndexDamaged as e:
                rep.add("malformed", e.finding)
                continue
            meta = shards.get(loc.shard_id)
            if meta is None:
                rep.add("dangling", f"object {sha.hex()} points at shard {loc.shard_id.hex()}, which the index does "
                                    "not know: `hoard index rebuild` finds it again if it is on a disk")
                continue
            pointing[loc.shard_id] += 1
            if meta.sealed and loc.offset + loc.length > meta.size:
                rep.add("out of bounds", f"object {sha.hex()} ends at {loc.offset + loc.length}, beyond its shard "
                                         f"{meta.hex} ({meta.size} bytes)")
        for name, db, fix in (("hidden", idx.hidden, _REBUILD), ("deleted", idx.deleted, _REBUILD),  # 5
                              ("root", idx.rooted, _REBUILD), ("chunk map", idx.chunks, _GC),
                              ("extension", idx.exts, _GC)):
            if db is None:  # a table an old index opened read-only does not have yet
                continue
            for k, _ in txn.cursor(db=db):
                if bytes(k) not in objects:
                    rep.add("stale mark", f"{name} entry for {bytes(k).hex()}, which is not in the store: {fix}")
    return _Moment(shards, retired, used, objects, pointing, named)


def _decoded(rep: CheckReport, cursor, decode: Callable[[bytes, bytes], T]) -> Iterator[T]:
    """The table's entries decoded; one that does not decode is a "malformed" disagreement."""
    for k, v in cursor:
        try:
            yield decode(bytes(k), bytes(v))
        except IndexDamaged as e:
            rep.add("malformed", e.finding)


def _named(kind: str) -> Callable[[bytes, bytes], tuple[str, dict]]:
    """The decoder of a `batches` (kind "batch") or `views` ("view") entry: (name, info)."""
    def decode(key: bytes, raw: bytes) -> tuple[str, dict]:
        name = key.decode(errors="replace")
        return name, named_entry(kind, name, raw)
    return decode


def _replica_size(store: Store, disk, meta: ShardMeta, uuid: str) -> int | None:
    """The size of `meta`'s replica file on `disk`; None when a live writer holds the shard
    (it indexes a new shard before it creates the files) or the index no longer names the
    replica (recovery dropped an empty shard). OSError when it is missing — looked for twice:
    a writer may have sealed it (`.open` renamed to `.shard`) between `find`'s two looks."""
    try:
        return disk.find(meta.hex).stat().st_size
    except FileNotFoundError:
        if not meta.sealed and writer_alive(store.lock_path(meta.hex)):
            return None
        now = store.index.get_shard(meta.shard_id)
        if now is None or uuid not in now.replicas:
            return None
        return disk.find(meta.hex).stat().st_size


def _check(store: Store, missing_in_db: Callable[[set[bytes]], tuple[list[bytes], int]] | None) -> CheckReport:
    rep = CheckReport()
    t0 = time.monotonic()
    m0 = _read_moment(store, rep)
    shards, objects, pointing = m0.shards, m0.objects, m0.pointing
    expect_used: Counter[str] = Counter()
    footer_shas: set[bytes] = set()
    for meta in shards.values():  # 2, 3
        if len(set(meta.replicas)) != len(meta.replicas):
            rep.add("replicas", f"shard {meta.hex} lists a disk twice: {meta.replicas}")
        for uuid in meta.replicas:
            rec = store.records.get(uuid)
            if rec is None:
                rep.add("replicas", f"shard {meta.hex} names disk {uuid}, which is not registered")
                continue
            if meta.sealed:
                expect_used[uuid] += meta.size
            disk = store.disks.get(uuid)
            if disk is None or rec.state in (DiskState.MISSING, DiskState.FAILED):
                continue  # health reports the disk; its files cannot be looked at now
            try:
                size = _replica_size(store, disk, meta, uuid)
            except OSError:
                rep.add("missing replica", f"shard {meta.hex}: its replica on {rec.label} is missing; "
                                           "`hoard replicate` makes a new one from the others")
                continue
            if meta.sealed and size is not None and size != meta.size:
                rep.add("replica size", f"shard {meta.hex} on {rec.label} is {size} bytes, the index says "
                                        f"{meta.size}: `hoard verify --repair` replaces a damaged replica")
        if not meta.sealed:
            continue
        recs, size = _footer(store, meta)
        if recs is None:
            rep.add("footer", f"shard {meta.hex}: no readable replica footer; `hoard verify` names the damage")
            continue
        body_end = recs[-1].end if recs else fmt.SHARD_HEADER_SIZE
        footer_at = size - len(recs) * fmt.FOOTER_ENTRY_SIZE - fmt.TRAILER_SIZE
        if footer_at != body_end:  # what `hoard verify` finds as "N records, the footer lists M"
            rep.add("footer", f"shard {meta.hex}: its body runs {footer_at - body_end} bytes past the last record its "
                              "footer lists (a record no footer names: a sealing cut short by Ctrl-C); "
                              "`hoard verify --repair` reseals it")
        footer_shas.update(r.sha256 for r in recs)
        if len(recs) != meta.records or pointing[meta.shard_id] > len(recs):
            rep.add("record count", f"shard {meta.hex}: footer lists {len(recs)} records, the index says "
                                    f"{meta.records} and maps {pointing[meta.shard_id]} objects there")
    for m in m0.retired:  # gc's retired shards still hold files until deleted
        for uuid in m.replicas:
            expect_used[uuid] += m.size
        rep.notes.append(f"shard {m.hex} is retired by gc, {len(m.replicas)} replica files left to delete "
                         "(the next `hoard gc` does it)")
    for sha in footer_shas - objects:
        rep.add("unindexed", f"object {sha.hex()} is in a shard footer but not in the index: "
                             "`hoard index rebuild` indexes it")
    named_then = {(m.hex, u) for m in (*shards.values(), *m0.retired) for u in m.replicas}
    for uuid, rec in store.records.items():  # 4
        if uuid not in store.disks or rec.state == DiskState.MISSING:
            continue
        used = m0.used.get(uuid, rec.used_bytes)
        if used != expect_used[uuid]:
            rep.add("used bytes", f"disk {rec.label}: the index counts {used} bytes used, its replicas add up to "
                                  f"{expect_used[uuid]}")
        if rec.state != DiskState.FAILED:
            unnamed = _unnamed_bytes(store, uuid, named_then)
            if unnamed:
                rep.notes.append(f"disk {rec.label}: {unnamed} bytes of shard files no index entry names "
                                 "(orphans); `hoard verify --orphans` sets them aside")
    _check_marks_logs(store, rep, objects)  # 8
    _check_pointers(store, rep, objects)  # 9
    for kind, name, info in m0.named:  # 6
        if bytes.fromhex(info["manifest"]) not in objects:
            rep.add("manifest", f"{kind} {name}: its manifest {info['manifest']} is not in the store")
            continue
        try:
            files = lost = 0
            example = ""
            # (a directory object or page of a view-2 manifest that is lost fails this read)
            for path, sha, _size in iter_files(store.get, info["manifest"]):
                files += 1
                if sha not in objects:
                    lost += 1
                    example = example or f"{path} {sha.hex()}"
        except Exception as e:  # noqa: BLE001 - a damaged manifest is a finding, not a crash
            rep.add("manifest", f"{kind} {name}: its manifest cannot be read ({e})")
            continue
        if lost:
            rep.add("manifest", f"{kind} {name}: {lost} of its {files} files are not in the store (e.g. {example})")
    below = sum(1 for m in shards.values() if m.sealed and store.readable_replicas(m) < store.target(m.klass))
    if below:
        rep.notes.append(f"{below} shards are below their replica target; `hoard replicate`")
    if missing_in_db is not None:  # 7
        lacking, unknown = missing_in_db(objects)
        for sha in lacking:
            rep.add("database", f"the database has physical node {sha.hex()}, the store does not: its bytes are "
                                "lost unless a 3B package holds them")
        if unknown:
            rep.notes.append(f"{unknown} stored objects are not nodes in the database (manifests, dumps, files "
                             "stored with `hoard put`)")
    per_disk = {store.records[u].label: n for u, n in expect_used.items() if u in store.records}
    rep.totals = {"objects": len(objects), "shards": len(shards), "sealed": sum(m.sealed for m in shards.values()),
                  "replicas": sum(len(m.replicas) for m in shards.values()), "bytes_per_disk": per_disk}
    rep.seconds = time.monotonic() - t0
    return rep


def _unnamed_bytes(store: Store, uuid: str, named_then: set[tuple[str, str]]) -> int:
    """Bytes of shard files on the disk that no index entry names — neither at the check's
    moment nor now (a shard a writer opened since is not an orphan). Only a name a shard's id
    spells (lowercase hex) is looked up: `bytes.fromhex` also takes spaces and capitals, and a
    file " .shard" made an empty key the index refused (check failed, blaming the index), while
    a copy named in capitals, which no reader opens, was taken for the shard's replica."""
    total = 0
    for p in shard_files(store.disks[uuid]):
        if (p.stem, uuid) in named_then:
            continue
        try:
            now = store.index.get_shard(bytes.fromhex(p.stem)) if _SHARD_NAME.fullmatch(p.stem) else None
        except IndexDamaged:  # named already ("malformed"): its file is no orphan for that
            continue
        if now is None or uuid not in now.replicas:
            total += size_or_zero(p)
    return total


def _check_marks_logs(store: Store, rep: CheckReport, known: set[bytes]) -> None:
    """The logs an index rebuild would read (every attached disk's, a failed one's too) must
    replay to the index's marks together, as a rebuild decides them (marks.agree); each log
    the index counts as complete must do so alone (a log damaged or cut behind the index's
    back, or holding a record whose transaction never committed); a damaged line (its check
    does not hold) and a record stamped after anything the index gave out are named."""
    fix = "`hoard index rewrite-marks` writes the index's marks to every disk"
    # the index first, in one read transaction; then only log records up to its last stamp
    # count (a put committing while the logs are read is not a disagreement)
    held, cutoff = _index_marks(store)
    held = {t: shas & known for t, shas in held.items()}  # (objects stored since step 1 are not judged)
    last, at, _failed = store.index.marks_state()
    logs: list[marks.DiskLog] = []
    for uuid, rec in store.records.items():
        disk = store.disks.get(uuid)
        if disk is None or rec.state == DiskState.MISSING:
            continue
        planted: list[str] = []
        try:
            got = marks.read_log(marks.log_path(disk.root).parent, planted, rec.label)
        except OSError as e:
            if rec.state == DiskState.FAILED:
                rep.notes.append(f"disk {rec.label} (failed): its marks log cannot be read ({e})")
            else:
                rep.add("marks log", f"disk {rec.label}: its marks log cannot be read ({e}): {fix}")
            continue
        rep.notes += [f"disk {rec.label}: {p} (not a marks log: skipped by a rebuild; remove it)" for p in planted]
        rep.notes += [f"disk {rec.label}: {p}: {n} line(s) that are not records (not the store's log, which is "
                      f"{marks.log_path(disk.root).name}: a rebuild reads its records and skips the rest; remove it)"
                      for p, n in got.foreign.items()]
        if rec.state != DiskState.FAILED and (blocker := _in_the_way(marks.log_path(disk.root))):
            rep.add("marks log", f"disk {rec.label}: {blocker} where its marks log goes: remove it, then {fix}")
            continue  # (the comparisons below would only repeat it)
        # (a failed disk's log is read by a rebuild but rewritten by nothing: a note, its disk is the problem)
        name = rep.notes.append if rec.state == DiskState.FAILED else (lambda text: rep.add("marks log", text))
        if got.damaged:
            where = ", ".join(map(str, got.damaged_lines)) + (" …" if got.damaged > len(got.damaged_lines) else "")
            name(f"disk {rec.label}: {got.damaged} damaged line(s) in its marks log (line {where}: a check that "
                 f"does not hold — bit rot; a rebuild does not obey them): {fix}")
        ahead = got.after(_index_stamp(store))  # the index's stamp now: a put that committed meanwhile is no record ahead
        if ahead:
            name(f"disk {rec.label}: its marks log holds {ahead} record(s) stamped after anything the index gave out "
                 f"(a record whose transaction never committed, or damage): {fix}")
        if got.other or got.broken_resets:
            rep.notes.append(f"disk {rec.label}: {got.other + got.broken_resets} line(s) of its marks log are not "
                             "records (skipped by a rebuild; a torn line is a crash or a failed append)")
        own = got.upto(cutoff)
        logs.append(own)
        if rec.state == DiskState.ACTIVE and at.get(uuid, -1) < last:
            rep.add("marks log", f"disk {rec.label}: its marks log misses records the index holds (a failed append, "
                                 f"or it was out of service): the next writer rewrites it, or {fix}")
        elif rec.state == DiskState.ACTIVE:
            alone = marks.replay(own.records | {(t, marks.RESET, "0" * 64) for t in own.resets})
            off = sum(len(held[t] ^ {sha for sha in alone[t] if sha in known}) for t in marks.TABLES)
            if off:
                rep.add("marks log", f"disk {rec.label}: its marks log alone replays {off} mark(s) differently from "
                                     f"the index (damaged, cut, or a record that never committed): {fix}")
    agreed, disputed = marks.agree(logs)
    replayed = marks.replay(agreed)
    unknown = 0
    for table in marks.TABLES:
        logged = set(replayed[table])
        unknown += len({sha for sha in logged if sha not in known})
        logged = {sha for sha in logged if sha in known}
        for sha in sorted(held[table] - logged):
            rep.add("marks log", f"{table} mark of {sha.hex()} is in the index, but the disks' marks logs do not "
                                 f"replay it (an index rebuild would lose it): {fix}")
        for sha in sorted(logged - held[table]):
            rep.add("marks log", f"the disks' marks logs replay a {table} mark of {sha.hex()} that the index does "
                                 f"not hold (an index rebuild would set it): {fix}")
    if disputed:
        rep.notes.append(f"the marks logs hold {len(disputed)} record(s) that free an object on one disk alone, "
                         "which another disk lacks (a rebuild does not obey them)")
    if unknown:  # kept in the logs (snapshots carry them): disks absent at the last rebuild hold them
        rep.notes.append(f"the marks logs hold {unknown} mark(s) of objects the index does not know (on disks that "
                         "were absent when it was rebuilt?); they are kept: `hoard index rebuild` with every disk "
                         "present takes them in")


def _check_pointers(store: Store, rep: CheckReport, objects: set[bytes]) -> None:
    """The index's `pointers` table must name what its batches and views are; each disk in
    service (an index rebuild reads them, and one may be all that is left after the others
    are replaced) must hold those pointers. A pointer stamped after the table was read is a
    write in flight, not a disagreement."""
    fix = "`hoard index rewrite-pointers` writes the index's batch and view pointers to every disk in service"
    if store.index.pointers is None:
        return
    idx = store.index
    with idx.env.begin() as txn:  # one moment: a batch named meanwhile is in both tables or in neither
        since, bodies = idx.pointer_bodies(txn)
        ignore = CheckReport()  # (a malformed entry is named by step 6 already)
        named = {pointers.rel(folder, name): info for folder, db in ((BATCHES_DIR, idx.batches), (VIEWS_DIR, idx.views))
                 for name, info in _decoded(ignore, txn.cursor(db=db), _named(pointers.KINDS[folder]))}
    for key in sorted(set(named) | {k for k in bodies if pointers.split(k)[0] in pointers.KINDS}):
        try:
            held = pointers.entry(pointers.decode(bodies[key], key)) if key in bodies else "none"
        except ValueError as e:
            held = f"a damaged one ({e})"
        if held == named.get(key):
            continue
        if held is None or isinstance(held, str):
            why = "a removal record" if held is None else held
        elif key not in named and bytes.fromhex(held["manifest"]) not in objects:
            rep.notes.append(f"{pointers.describe(key)}: its pointer names manifest {held['manifest']}, which "
                             "no disk held at the last index rebuild; kept, so a rebuild with that disk back names it")
            continue
        else:
            why = "another definition"
        rep.add("pointer", f"{pointers.describe(key)}: the index holds {why} as its pointer, so an index "
                           f"rebuild would not bring back what the index names now: {fix}")
    for uuid, rec in store.records.items():
        disk = store.disks.get(uuid)
        if disk is None or not store.usable(uuid):
            continue
        lines = []
        for folder in pointers.KINDS:
            try:
                listed = {pointers.rel(folder, p.stem) for p in (disk.root / folder).glob("*.json")}
            except OSError as e:
                rep.add("pointer", f"disk {rec.label}: its {folder}/ cannot be listed ({e}): `hoard health`, then {fix}")
                continue
            lines += [_pointer_finding(disk, key, bodies.get(key), since) for key in sorted(listed | {
                k for k in bodies if k.startswith(folder + "/")})]
        lines += [_pointer_finding(disk, key, bodies[key], since) for key in pointers.ROOT_FILES if key in bodies]
        rep.notes += [f"disk {rec.label}: {line[1:]} (not a pointer: skipped by a rebuild; remove it)"
                      for line in lines if line.startswith("!")]
        lines = [line for line in lines if line and not line.startswith("!")]
        for line in lines[:SHOW]:
            rep.add("pointer", f"disk {rec.label}: {line}: {fix}")
        if len(lines) > SHOW:
            rep.add("pointer", f"disk {rec.label}: {len(lines) - SHOW} more pointers like these: {fix}")


def _pointer_finding(disk, key: str, want: bytes | None, since: int) -> str:
    """What is wrong with the disk's pointer at `key` (the index holds `want`), or ""."""
    what = pointers.describe(key)
    if want is None and pointers.planted(disk.root / key):
        return f"!{pointers.shown(disk.root / key)}"  # a note, not a disagreement (see _check_pointers)
    try:
        body = pointers.read(disk.root / key)
    except FileNotFoundError:
        return f"lacks the pointer of {what}" if want else ""
    except (OSError, ValueError) as e:
        if want is not None and (blocker := _in_the_way(disk.root / key)):
            # (a writer cannot replace it: the fix alone failed, again and again)
            return f"{blocker} where its pointer of {what} goes: remove it, then"
        return f"its pointer of {what} cannot be read ({getattr(e, 'strerror', None) or e})"
    if body == want:
        return ""
    try:
        doc = pointers.decode(body, key)
    except ValueError as e:
        return f"its pointer of {what} is damaged ({e})"
    stamp = doc.get(pointers.STAMP, 0)
    if stamp > since or (want is None and doc.get("removed")):  # a definition committing now; a removal
        return ""
    if want is None:
        return f"holds a pointer of {what}, which the index does not name (an index rebuild would bring it back)"
    return (f"holds an older pointer of {what}" if stamp < pointers.stamp_of(want)
            else f"holds a different pointer of {what}")


def _in_the_way(path) -> str:
    """What stands where a pointer or a marks log is to be written that a writer cannot replace — a directory
    at its name, or something that is not a directory at its folder's — or ""."""
    if os.path.isdir(path) and not os.path.islink(path):
        return f"a directory stands at {pointers.shown(path)},"
    if os.path.lexists(path.parent) and not os.path.isdir(path.parent):
        return f"{pointers.shown(path.parent)} is not a directory,"
    return ""


def _index_marks(store: Store) -> tuple[dict[str, set[bytes]], int]:
    """The index's marks and its last stamp, in one read transaction."""
    idx = store.index
    with idx.env.begin() as txn:
        held = {t: {bytes(k) for k, _ in txn.cursor(db=getattr(idx, t))} if getattr(idx, t) is not None else set()
                for t in marks.TABLES}
        raw = txn.get(MARKS_NS, db=idx.meta) if idx.meta is not None else None
    return held, int(raw) if raw else (1 << 63)


def _index_stamp(store: Store) -> int:
    """The newest marks-log stamp the index gave out (no index stamp: none counts as ahead)."""
    idx = store.index
    if idx.meta is None:
        return 1 << 63
    with idx.env.begin(db=idx.meta) as txn:
        raw = txn.get(MARKS_NS)
    return int(raw) if raw else (1 << 63)


def _footer(store: Store, meta) -> tuple[list[fmt.RecordInfo] | None, int]:
    """The footer (and file size) of the first replica whose footer reads and checks. A replica cut short has
    no seal at its end (`decode_footer` gives None, it does not raise): the next is read — the
    first one truncated made the whole shard "no readable replica footer", and its record
    count and unindexed objects went unchecked."""
    for disk in store.replica_order(meta):
        try:
            size = disk.size(meta.hex)
            recs = fmt.decode_footer(lambda off, n, d=disk: d.read_at(meta.hex, off, n), size)
        except (OSError, fmt.ShardFormatError):
            continue
        if recs is not None:
            return recs, size
    return None, 0
