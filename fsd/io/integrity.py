"""The facts `hoard check`, `hoard verify` and `hoard health` judge alike: each disk's marks log
and batch and view pointers, what a killed process left half done (a registration's `held`
entries, an index rebuild's work folders) (docs/design.md, "One judgement, three tools").

Each tool calls `judge` on an open store and reports what it finds in its own words: check
as disagreements (exit 5), verify as bad (exit 5; `--repair` rewrites the logs and pointers
from the index, then judges again), health as problems (exit 4). A fact judged by three
copies of the rule drifted apart: health said nothing of a damaged marks log or pointer that
check and verify named, and verify read the marks logs but no pointer.

    found = judge(store)            # a Findings: problems (each naming its next step), counts, notes
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hoardfs.fsd.core import formats, marks, pointers, storelock
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.beside import MARKS_NAME
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.core.held import named
from hoardfs.fsd.core.index import MARKS_NS, IndexDamaged, named_entry
from hoardfs.fsd.core.layout import BATCHES_DIR, MARKS_LOG, VIEWS_DIR, index_leftovers, lock_root, naming_busy
from hoardfs.fsd.core.spill import Spill, spill_parent
from hoardfs.fsd.io import judged

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

#: at most this many lines per kind of finding (the counts are always complete)
SHOW = 20
T = TypeVar("T")
#: the kinds `judge` reports: a disk's marks log (or the logs against the index), a pointer, a
#: batch or view (un)registration a killed process left half done (its `held` entries), the work
#: folders a killed index rebuild or restore left on the SSD
KINDS = ("marks log", "pointer", "held", "leftover")
#: judged again when a marks-log snapshot lands between reading the index and the logs
RETRIES = 3
#: how long records stamped after the index's last stamp are given to commit (their writer
#: appended them inside its transaction, before the commit) before they are named
AHEAD_WAIT_S = 5.0


@dataclass
class Findings:
    """Problems (at most SHOW lines of each kind), how many of each kind, and notes."""
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # kind of finding → how many
    notes: list[str] = field(default_factory=list)
    problem_kinds: list[str] = field(default_factory=list)  # the kind of each line of `problems`
    #: the reading behind the marks findings (hoardfs.fsd.io.judged.age, and whether only tails were read)
    read: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= SHOW:
            self.problems.append(line)
            self.problem_kinds.append(kind)

    def add_many(self, kind: str, n: int) -> None:
        """`n` more findings of `kind` past the lines already added (counted, not shown)."""
        if n > 0:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def lines(self) -> list[tuple[str, str]]:
        """(kind, line) of each problem, then one line per kind with more than SHOW."""
        more = [(kind, f"{n - SHOW} more {kind} finding(s) like these") for kind, n in self.counts.items() if n > SHOW]
        return list(zip(self.problem_kinds, self.problems, strict=True)) + more

    @property
    def ok(self) -> bool:
        return not self.counts


def judge(store: Store, known: Callable[[bytes], bool] | None = None, into: Findings | None = None,
          by: str = "check", tail: bool = False) -> Findings:
    """The marks logs and pointers of `store` judged against its index (`known(sha)`: whether
    the store holds the object; default: the index has it now). A marks log a snapshot replaced
    while it was read (a writer's catch-up, gc's compaction: its newest reset is stamped after
    the index was read) is judged again, up to RETRIES times: that is a moment, not damage.

    Every judgement that reads each log cleanly is remembered (hoardfs.fsd.io.judged, `by` names the
    tool). `tail` (`hoard health`): a log that is the file judged last time, grown by appends
    only, is read from where that judgement stopped, and its judged part is reported as that
    judgement found it — `Findings.read` says how old the last whole reading is; a log
    replaced or cut, another index, a disk in another state: every log is read whole."""
    known = known or in_index(store)
    for attempt in range(RETRIES):
        found = Findings()
        moved = _marks_logs(store, found, known, by, tail)
        if not moved or attempt == RETRIES - 1:
            break
    _pointers(store, found, known, tail)
    _held_pending(store, found)
    _index_leftovers(store, found)
    if into is not None:
        for kind, n in found.counts.items():
            into.counts[kind] = into.counts.get(kind, 0) + n
        into.problems += found.problems
        into.problem_kinds += found.problem_kinds
        into.notes += found.notes
    return found


def _held_pending(store: Store, found: Findings) -> None:
    """A batch deletion, a view's removal or a registration that a killed process left half done
    (hoardfs.fsd.core.held: its pending record) — unless a process holds the naming lock now (that is
    the work under way). Nothing is lost meanwhile: what is not tombstoned yet is kept longer."""
    pending = store.index.pending_held()
    if not pending or naming_busy(store.cfg):
        return
    registered = {(kind, name): info["manifest"] for kind, name, info in named(store.index)}
    for manifest, doc in pending:
        kind, name = doc.get("kind", "?"), doc.get("name", "?")
        if doc.get("op") == "remove":
            what = f"{kind} {name}: {'deleted' if kind == 'batch' else 'removed or replaced'}, but a process was " \
                   "killed before it removed"
            redo = f" (or `hoard delete --batch {name}` again)" if kind == "batch" else ""
        elif registered.get((kind, name)) == manifest:  # defined again as it was: its entries were whole before
            found.add("held", f"{kind} {name}: defining it again as it was did not complete (it stays registered, "
                              f"its held entries whole) and left a pending record for manifest {manifest}; "
                              "`hoard gc` clears the record")
            continue
        else:
            what, redo = f"{kind} {name}: a registration that did not complete (it is not registered) left", ""
        found.add("held", f"{what} the held entries of manifest {manifest} (they keep objects, never free "
                          f"them); `hoard gc` removes them{redo}")


def _index_leftovers(store: Store, found: Findings) -> None:
    """The work folders a killed index rebuild or restore left beside the index (the new index
    it was building, its spill, the copy it read: `hoardfs.fsd.core.layout.index_leftovers`) — never
    while one runs. Nothing reads them; they only hold SSD space (as much as the index, and
    more), until the next writer's open removes them."""
    for p in index_leftovers(store.cfg):
        found.add("leftover", f"{p}: left by an index rebuild or restore that was killed (none runs now; nothing "
                              "reads it): the next writer removes it as it opens the store (`hoard index migrate` "
                              "is one that changes nothing else), or remove it")


def in_index(store: Store, renew: int = 10_000) -> Callable[[bytes], bool]:
    """`known(sha)`: whether the index holds the object now — looked up in a read transaction
    begun again every `renew` lookups (a reader held for a whole check would keep the pages
    writers free from being reused)."""
    idx = store.index
    state: list = [None, 0]

    def known(sha: bytes) -> bool:
        if state[0] is None or state[1] >= renew:
            if state[0] is not None:
                state[0].abort()
            state[0], state[1] = idx.env.begin(db=idx.objects), 0
        state[1] += 1
        return state[0].get(sha) is not None
    return known


def decoded(rep: Findings, cursor, decode: Callable[[bytes, bytes], T]) -> Iterator[T]:
    """The table's entries decoded; one that does not decode is a "malformed" disagreement."""
    for k, v in cursor:
        try:
            yield decode(bytes(k), bytes(v))
        except IndexDamaged as e:
            rep.add("malformed", e.finding)


def named_decoder(kind: str) -> Callable[[bytes, bytes], tuple[str, dict]]:
    """The decoder of a `batches` (kind "batch") or `views` ("view") entry: (name, info)."""
    def decode(key: bytes, raw: bytes) -> tuple[str, dict]:
        name = key.decode(errors="replace")
        return name, named_entry(kind, name, raw)
    return decode


def _marks_logs(store: Store, rep: Findings, known: Callable[[bytes], bool], by: str, tail: bool) -> bool:
    """The logs an index rebuild would read (every attached disk's, a failed one's too) must
    replay to the index's marks together, as a rebuild decides them (marks.agree); each log
    the index counts as complete must do so alone (a log damaged or cut behind the index's
    back, or holding a record whose transaction never committed); a damaged line (its check
    does not hold) and a record stamped after anything the index gave out are named. Returns
    whether a log's newest snapshot is stamped after the index was read (judge again).

    The index's marks and the logs' records are spilled to disk and compared object by object
    (marks.settle): a store whose every object is a root has a log record per object on every
    disk, and sets of them all took ~1 KB per object. Reading tails (`tail`), only the records
    appended since the remembered judgement are spilled, and each object they name is looked
    up in the index (`settle`'s `held_of`), in the read transaction the cutoff came from."""
    before = judged.load(store) if tail else None
    if before is not None:
        try:
            return _read_and_judge(store, rep, known, by, before)
        except Irregular:
            pass
    return _read_and_judge(store, rep, known, by, None)


class Irregular(Exception):
    """A log's tail holds a line that is not a checked record (damaged, torn, a snapshot's):
    the tail alone cannot tell how its log replays — every log is read whole instead (rare:
    bit rot or a crash; the memory then holds what that reading found)."""


def _read_and_judge(store: Store, rep: Findings, known: Callable[[bytes], bool], by: str,
                    before: judged.Memory | None) -> bool:
    with Spill(spill_parent(store.cfg.ssd.root), marks.SPILLED) as spill, contextlib.ExitStack() as held:
        idx = store.index
        txn = held.enter_context(idx.env.begin())
        raw = txn.get(MARKS_NS, db=idx.meta) if idx.meta is not None else None
        cutoff = int(raw) if raw else (1 << 63)
        files = _files(store)
        if before is not None and not _still(store, before, cutoff, files):
            before = None
        held_of = None
        if before is None:
            # (then the transaction ends: a reader held while every log is read would keep the
            # pages writers free from being reused)
            _index_marks(txn, idx, spill)
            held.close()
        else:  # a tail's objects are looked up at the cutoff's moment, as the whole index is spilled
            tables = [getattr(idx, t) for t in marks.TABLES]

            def held_of(sha: bytes) -> marks.Marks:
                got = [db is not None and txn.get(sha, db=db) is not None for db in tables]
                return got[0], got[1], got[2]
        return _judge_marks(store, rep, known, spill, cutoff, files, before, held_of, by)


def _files(store: Store) -> dict[str, tuple[list[int] | None, dict[str, list[int]], int]]:
    """Per disk whose log is judged: its log's identity, the other logs beside it, its size."""
    out = {}
    for uuid, rec in store.records.items():
        disk = store.disks.get(uuid)
        if disk is None or rec.state == DiskState.MISSING:
            continue
        out[uuid] = disk.beside.marks_files()
    return out


def _still(store: Store, mem: judged.Memory, cutoff: int, files: dict) -> bool:
    """Whether the remembered judgement still speaks for every log's judged part (hoardfs.fsd.io.judged).
    Not when it found objects whose marks disagree (per table, a disk alone, disputes): the
    memory keeps how many, not which, and records appended since may settle some of them (a
    root the cut log lost, released since) — counted again, or no longer, as a whole reading
    counts them; such a store reads every log whole until the next step clears the finding."""
    found = (mem.disputes or any(n for c in mem.counts.values() for n in c)
             or any(r.off for r in mem.disks.values()))
    return (not found and mem.index == judged.index_identity(store) and cutoff >= mem.cutoff
            and set(mem.disks) == set(files)
            and all(mem.disks[u].fits(store.records[u].state.value, files[u][0], files[u][1], files[u][2],
                                      store.disks[u].beside) for u in files))


def _judge_marks(store: Store, rep: Findings, known: Callable[[bytes], bool], spill: Spill, cutoff: int,
                 files: dict, before: judged.Memory | None, held_of: Callable[[bytes], marks.Marks] | None,
                 by: str) -> bool:
    fix = "`hoard index rewrite-marks` writes the index's marks to every disk"
    # the index first (its cutoff, and its marks spilled or looked up); then only log records
    # up to its last stamp count (a put committing while the logs are read is not a disagreement)
    last, at, _failed = store.index.marks_state()
    logs: list[marks.DiskLog | None] = []  # by source number in the spill (None: a log not judged together)
    steps: list[tuple[str, Any]] = []  # the findings of each disk, in order; "alone" ones once replayed
    moved = False  # a log's newest snapshot came after the index's moment
    clean = True  # every log read, nothing planted or in the way: the judgement is remembered
    now = judged.Memory(judged.index_identity(store), cutoff, before.whole_at if before else time.time(),
                        before.whole_by if before else by, {}, tail_at=time.time() if before else 0.0)
    uuids: dict[int, str] = {}
    until: list[float] = []  # when the wait for records stamped ahead ends (`_ahead`: one per judgement)
    lines_read = 0  # lines of the disks' logs read this time (a tail's only)
    for uuid, rec in store.records.items():
        disk = store.disks.get(uuid)
        if disk is None or rec.state == DiskState.MISSING:
            continue
        planted: list[str] = []
        blocker = disk.beside.in_the_way(MARKS_NAME) if rec.state != DiskState.FAILED else ""
        src = len(logs)
        logs.append(None)  # (until it is read whole: a read that fails leaves records in the spill)
        old = before.disks[uuid] if before is not None else None
        try:
            if old is not None:
                gained = disk.beside.marks_read_tail(rec.label, spill, src, cutoff, old.judged, old.lines,
                                                     old.checked)
                if gained.damaged or gained.other or gained.legacy or gained.broken_resets or gained.resets:
                    raise Irregular(rec.label)
                got = judged.merged(old.log, gained)
            else:
                got = disk.beside.marks_read(planted, rec.label, None if blocker else spill, src, cutoff)
        except OSError as e:
            clean = False
            if rec.state == DiskState.FAILED:
                steps.append(("note", f"disk {rec.label} (failed): its marks log cannot be read ({e})"))
            else:
                steps.append(("add", f"disk {rec.label}: its marks log cannot be read ({e}): {fix}"))
            continue
        clean &= not planted and not blocker
        now.disks[uuid] = judged.Remembered(rec.state.value, files[uuid][0], files[uuid][1], got.judged,
                                            got.judged_lines, got.checked, judged.facts(got),
                                            tip=disk.beside.marks_tip(got.judged, files[uuid][0]))
        uuids[src] = uuid
        lines_read += got.judged_lines - (old.lines if old is not None else 0)
        steps += [("note", f"disk {rec.label}: {p} (not a marks log: skipped by a rebuild; remove it)") for p in planted]
        steps += [("note", f"disk {rec.label}: {p}: {n} line(s) that are not records (not the store's log, which is "
                           f"{MARKS_LOG}: a rebuild reads its records and skips the rest; "
                           "remove it)") for p, n in got.foreign.items()]
        if blocker:
            steps.append(("add", f"disk {rec.label}: {blocker} where its marks log goes: remove it, then {fix}"))
            continue  # (the comparisons below would only repeat it)
        # (a failed disk's log is read by a rebuild but rewritten by nothing: a note, its disk is the problem)
        name = "note" if rec.state == DiskState.FAILED else "add"
        if got.damaged:
            where = ", ".join(map(str, got.damaged_lines)) + (" …" if got.damaged > len(got.damaged_lines) else "")
            steps.append((name, f"disk {rec.label}: {got.damaged} damaged line(s) in its marks log (line {where}: a "
                                f"check that does not hold — bit rot; a rebuild does not obey them): {fix}"))
        ahead = _ahead(store, got, until)  # the index's stamp now: a put that committed meanwhile is no record ahead
        if ahead:
            steps.append((name, f"disk {rec.label}: its marks log holds {ahead} record(s) stamped after anything "
                                "the index gave out (a record whose transaction never committed, or damage): "
                                f"{fix}"))
        if got.other or got.broken_resets:
            steps.append(("note", f"disk {rec.label}: {got.other + got.broken_resets} line(s) of its marks log are "
                                  "not records (skipped by a rebuild; a torn line is a crash or a failed append)"))
        moved |= bool(got.resets) and max(got.resets) > cutoff
        logs[src] = got.upto(cutoff)
        if rec.state == DiskState.ACTIVE and at.get(uuid, -1) < last:
            steps.append(("add", f"disk {rec.label}: its marks log misses records the index holds (a failed append, "
                                 f"or it was out of service): the next writer rewrites it, or {fix}"))
        elif rec.state == DiskState.ACTIVE:
            steps.append(("alone", (src, rec.label)))
    disputes = marks.Disputes(keep=0)
    alone = [src for kind, arg in steps if kind == "alone" for src in (arg[0],)]
    off = {i: before.disks[uuids[i]].off if before is not None else 0 for i in alone}
    # per table: (the index's marks the logs do not replay, the logs' the index lacks): first SHOW, how many
    lost: dict[str, tuple[list[bytes], list[bytes]]] = {t: ([], []) for t in marks.TABLES}
    counts: dict[str, list[int]] = {t: [0, 0] for t in marks.TABLES}
    unknown = 0
    if before is not None:  # what the judged parts held, as the last judgement found it
        for t in marks.TABLES:
            counts[t] = list(before.counts.get(t, [0, 0]))
            for which in (0, 1):
                lost[t][which].extend(bytes.fromhex(h) for h in before.lost.get(t, [[], []])[which])
        disputes.count, unknown = before.disputes, before.unknown
    for sha, final, held, own in marks.settle(logs, spill, alone, disputes, held_of):
        if not (any(final) or any(held) or any(any(m) for m in own.values())):
            continue
        if not known(sha):
            unknown += sum(final)  # (an object the index does not know: its marks are not judged)
            continue
        for i, m in own.items():
            off[i] += sum(h != a for h, a in zip(held, m, strict=True))
        for t, h, logged in zip(marks.TABLES, held, final, strict=True):
            if h != logged:
                which = 0 if h else 1
                counts[t][which] += 1
                if len(lost[t][which]) < SHOW:
                    lost[t][which].append(sha)
    for kind, arg in steps:
        if kind == "note":
            rep.notes.append(arg)
        elif kind == "add":
            rep.add("marks log", arg)
        elif off[arg[0]]:
            rep.add("marks log", f"disk {arg[1]}: its marks log alone replays {off[arg[0]]} mark(s) differently from "
                                 f"the index (damaged, cut, or a record that never committed): {fix}")
    for table in marks.TABLES:
        for which, text in ((0, "{table} mark of {sha} is in the index, but the disks' marks logs do not replay it "
                                "(an index rebuild would lose it): {fix}"),
                            (1, "the disks' marks logs replay a {table} mark of {sha} that the index does not hold "
                                "(an index rebuild would set it): {fix}")):
            for sha in lost[table][which]:
                rep.add("marks log", text.format(table=table, sha=sha.hex(), fix=fix))
            rep.add_many("marks log", counts[table][which] - len(lost[table][which]))
    if disputes.count:
        rep.notes.append(f"the marks logs hold {disputes.count} record(s) that free an object on one disk alone, "
                         "which another disk lacks (a rebuild does not obey them)")
    if unknown:  # kept in the logs (snapshots carry them): disks absent at the last rebuild hold them
        rep.notes.append(f"the marks logs hold {unknown} mark(s) of objects the index does not know (on disks that "
                         "were absent when it was rebuilt?); they are kept: `hoard index rebuild` with every disk "
                         "present takes them in")
    for i, n in off.items():
        now.disks[uuids[i]].off = n
    now.counts, now.lost = counts, {t: [[sha.hex() for sha in lst] for lst in lost[t]] for t in marks.TABLES}
    now.disputes, now.unknown = disputes.count, unknown
    rep.read = judged.age(now) | {"tail": before is not None, "lines_read": lines_read}
    if clean and not moved:
        judged.save(store, now, before)
    elif not clean:
        judged.forget(store)
    return moved


def _pointers(store: Store, rep: Findings, known: Callable[[bytes], bool], tail: bool = False) -> None:
    """The index's `pointers` table must name what its batches and views are; each disk in
    service (an index rebuild reads them, and one may be all that is left after the others
    are replaced) must hold those pointers. A pointer stamped after the table was read is a
    write in flight, not a disagreement. Every pointer read is judged; `tail` (`hoard
    health`): one whose file and index pointer are the ones the last judgement found agreeing
    (hoardfs.fsd.io.judged.Pointers) is not read again — a batch's pointer per disk, 500 at 10 M
    objects, would be health's one cost that grows with the store."""
    fix = "`hoard index rewrite-pointers` writes the index's batch and view pointers to every disk in service"
    if store.index.pointers is None:
        return
    if store.index.format < formats.INDEX_POINTERS:  # not a disagreement: the migration fills the table
        rep.notes.append(f"the index is format {store.index.format}: its batch and view pointers are judged once it "
                         "is migrated (any writable command, or `hoard index migrate`)")
        return
    idx = store.index
    with idx.env.begin() as txn:  # one moment: a batch named meanwhile is in both tables or in neither
        since, bodies = idx.pointer_bodies(txn)
        ignore = Findings()  # (a malformed entry is named by step 6 already)
        named = {pointers.rel(folder, name): info for folder, db in ((BATCHES_DIR, idx.batches), (VIEWS_DIR, idx.views))
                 for name, info in decoded(ignore, txn.cursor(db=db), named_decoder(pointers.KINDS[folder]))}
    for key in sorted(set(named) | {k for k in bodies if pointers.split(k)[0] in pointers.KINDS}):
        try:
            held = pointers.entry(pointers.decode(bodies[key], key)) if key in bodies else "none"
        except ValueError as e:
            held = f"a damaged one ({e})"
        if held == named.get(key):
            continue
        if held is None or isinstance(held, str):
            why = "a removal record" if held is None else held
        elif key not in named and not known(bytes.fromhex(held["manifest"])):
            rep.notes.append(f"{pointers.describe(key)}: its pointer names manifest {held['manifest']}, which "
                             "no disk held at the last index rebuild; kept, so a rebuild with that disk back names it")
            continue
        else:
            why = "another definition"
        rep.add("pointer", f"{pointers.describe(key)}: the index holds {why} as its pointer, so an index "
                           f"rebuild would not bring back what the index names now: {fix}")
    memory = judged.Pointers(store, recall=tail)
    for uuid, rec in store.records.items():
        disk = store.disks.get(uuid)
        if disk is None or not store.usable(uuid):
            continue
        lines = []
        for folder in pointers.KINDS:
            try:
                listed = {pointers.rel(folder, stem) for stem in disk.beside.names(folder, ".json")}
            except OSError as e:
                rep.add("pointer", f"disk {rec.label}: its {folder}/ cannot be listed ({e}): `hoard health`, then {fix}")
                continue
            lines += [_pointer_finding(disk, uuid, key, bodies.get(key), since, memory) for key in sorted(listed | {
                k for k in bodies if k.startswith(folder + "/")})]
        lines += [_pointer_finding(disk, uuid, key, bodies[key], since, memory) for key in pointers.ROOT_FILES if key in bodies]
        rep.notes += [f"disk {rec.label}: {line[1:]} (not a pointer: skipped by a rebuild; remove it)"
                      for line in lines if line.startswith("!")]
        lines = [line for line in lines if line and not line.startswith("!")]
        for line in lines[:SHOW]:
            rep.add("pointer", f"disk {rec.label}: {line}: {fix}")
        if len(lines) > SHOW:
            rep.add("pointer", f"disk {rec.label}: {len(lines) - SHOW} more pointers like these: {fix}")
    memory.save()
    rep.read |= memory.age()


def _pointer_finding(disk, uuid: str, key: str, want: bytes | None, since: int, memory: judged.Pointers) -> str:
    """What is wrong with the disk's pointer at `key` (the index holds `want`), or "" — read
    unless `memory` holds it as judged agreeing, that file, against this `want`."""
    what = pointers.describe(key)
    if want is None and disk.beside.planted(key):
        return f"!{disk.beside.shown(key)}"  # a note, not a disagreement (see _check_pointers)
    if memory.fits(uuid, key, want, disk.beside):
        return ""
    ident: list[int] = []
    try:
        memory.read += 1
        body = disk.beside.read(key, ident)
    except FileNotFoundError:
        return f"lacks the pointer of {what}" if want else ""
    except (OSError, ValueError) as e:
        if want is not None and (blocker := disk.beside.in_the_way(key)):
            # (a writer cannot replace it: the fix alone failed, again and again)
            return f"{blocker} where its pointer of {what} goes: remove it, then"
        return f"its pointer of {what} cannot be read ({getattr(e, 'strerror', None) or e})"
    if body == want:
        memory.judged(uuid, key, want, ident)
        return ""
    try:
        doc = pointers.decode(body, key)
    except ValueError as e:
        return f"its pointer of {what} is damaged ({e})"
    stamp = doc.get(pointers.STAMP, 0)
    if want is None and doc.get("removed") and stamp <= since:  # a removal
        memory.judged(uuid, key, want, ident)
        return ""
    if stamp > since:  # a definition committing now
        return ""
    if want is None:
        return f"holds a pointer of {what}, which the index does not name (an index rebuild would bring it back)"
    return (f"holds an older pointer of {what}" if stamp < pointers.stamp_of(want)
            else f"holds a different pointer of {what}")


def _index_marks(txn: Any, idx: Any, spill: Spill) -> None:
    """Spill the index's marks (marks.hold), read in `txn` (the one its cutoff came from)."""
    for t in marks.TABLES:
        if getattr(idx, t) is not None:
            for k in txn.cursor(db=getattr(idx, t)).iternext(values=False):
                marks.hold(spill, t, bytes(k))


def _ahead(store: Store, got: marks.DiskLog, until: list[float]) -> int:
    """How many of the log's records are stamped after anything the index gave out, once the
    writers whose records they may be had AHEAD_WAIT_S to commit: a writer appends its records
    to every disk inside its write transaction, before the commit (docs/design.md, "Deletion
    marks on the HDDs") — a check beside a `hoard put` read 918 roots "ahead" that committed a
    moment later (tests/test_races.py). What is still ahead then never committed.

    One wait per judgement (`until`, shared by its disks: a writer's records are on every disk
    before its commit, so one wait covers them all), and none while no writer holds the store
    (`_writers_live`): a record a killed writer left is ahead for good, and waiting for it cost
    every `hoard check` AHEAD_WAIT_S per disk holding one."""
    n = got.after(_index_stamp(store))
    if n and not until:
        until.append(time.monotonic() + AHEAD_WAIT_S if _writers_live(store) else 0.0)
    while n and time.monotonic() < until[0]:
        time.sleep(0.05)
        n = got.after(_index_stamp(store))
    return n


def _writers_live(store: Store) -> bool:
    """Whether a writer may be inside a write transaction now: another process holds the store
    lock, or another Store of this process does (the caller's own writable store is not one)."""
    return storelock.held_by_others(lock_root(store.cfg), storelock.STORE, 1 if store.held == storelock.STORE else 0)


def _index_stamp(store: Store) -> int:
    """The newest marks-log stamp the index gave out (no index stamp: none counts as ahead)."""
    idx = store.index
    if idx.meta is None:
        return 1 << 63
    with idx.env.begin(db=idx.meta) as txn:
        raw = txn.get(MARKS_NS)
    return int(raw) if raw else (1 << 63)


def first_footer(store: Store, meta: Any, whole: bool = False) -> tuple[list[fmt.RecordInfo] | None, int]:
    """The footer (and file size) of the first replica whose footer reads and checks. A replica cut short has
    no seal at its end (`decode_footer` gives None, it does not raise): the next is read — the
    first one truncated made the whole shard "no readable replica footer", and its record
    count and unindexed objects went unchecked. `whole`: only a footer that lists its replica's
    whole body, on a replica of the size the index records (`fmt.lists_whole_body`: what gc
    takes for the shard's members). Replicas on failed but attached disks are read last
    (`Store.last_resort`): a shard whose replicas are all on such disks still has its footer."""
    for disk in store.sources(meta):
        try:
            size = disk.size(meta.hex)
            recs = fmt.decode_footer(lambda off, n, d=disk: d.read_at(meta.hex, off, n), size)
        except (OSError, fmt.ShardFormatError):
            continue
        if recs is not None and (not whole or (size == meta.size and fmt.lists_whole_body(recs, size))):
            return recs, size
    return None, 0
