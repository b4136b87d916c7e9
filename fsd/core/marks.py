"""The marks log on the HDDs: `<disk>/marks/marks.log`, what `hoard index rebuild` replays.

The index's marks (hidden, deleted, rooted — see fsd/core/index.py) live on the SSD; each change
is also appended, inside the index transaction that applies it, to every writable disk's
log as lines `<stamp_ns> <op> <sha256 hex> <check>` (ops: hoardfs.fsd.core.layout.MARK_OPS; `check` is
the xxh3-64 of the line's first three fields, so a flipped bit makes a line *damaged* —
named by `hoard check`/`verify` and never obeyed). Stamps come from Index._next_stamp:
strictly increasing across processes, whatever the wall clock does.

The index's side is `MarksTables` at the end of this module (the `hidden`, `deleted` and
`rooted` tables, the stamps and each disk's progress), a part of `hoardfs.fsd.core.index.Index`.

The index notes, in the transaction of each record, which disks took it (Index.log_in:
`marks_at:<disk>`). A disk that missed records (failed, unplugged, newly added, a failed or
short append) is brought up to the index by a **snapshot**: the log is
replaced (tmp → fsync → rename) by a `reset` line followed by one set-record per mark the
index holds, all with one stamp taken in a write transaction (Store.snapshot_marks). Replay
takes the newest `reset` found on any disk and applies only records from then on, in stamp
order — so a stale log on another disk cannot bring back a tombstone the index cleared, and
a disk that was seeded holds everything needed to rebuild the marks. Each append starts
with a newline, so the torn rest of a failed append is a line of its own (skipped), never
glued to the next record; a stamp of more than 19 digits is damage and skipped too. A
snapshot ends with an `end` line (its stamp, the number of records): a reset whose end
line does not agree — a flipped bit, a cut file — is not honoured.

**One disk's damage cannot flip a mark** (`agree`): a record that could free an object's
bytes (`delete`, `unroot`, `drop`) is obeyed only when two disks hold it, or when no other
disk's log covers its stamp (it was the only disk taking records then); a record that keeps
or hides (`root`, `keep`, `show`, `hide`) and a snapshot's set-records are obeyed from one
disk. A lone freeing record that another disk should hold and lacks is *disputed*: not
obeyed — an object is kept rather than lost — and named by `hoard check`.

The marks subsystem is one module (past 500 lines) by design: the log's format, its replay
and the index's tables it mirrors change together — a stamp or an op means the same in all
three; writing the logs to every disk is fsd/io/copies.py's.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import xxhash

from hoardfs.fsd.core.layout import MARK_OPS, MARKS_DIR, MARKS_LOG
from hoardfs.fsd.core.spill import Spill
from hoardfs.fsd.core.txnlog import chunked

#: the op of a snapshot's first line (its sha field is all zeros)
RESET = "reset"
#: the last line of a snapshot: its stamp is the reset's, its third field the number of
#: set-records between them (64 hex digits) — a reset is honoured only when its end line
#: agrees, so a flipped bit in a reset's stamp cannot make it "the newest" and hide records
END = "end"
_NO_SHA = "0" * 64
#: a sha256 as the store writes it: 64 lower-case hex digits
HEX64 = re.compile(rb"[0-9a-f]{64}")
#: a line's check: xxh3-64 of its first three fields (and the two spaces), 16 lower-case hex digits
HEX16 = re.compile(rb"[0-9a-f]{16}")
#: marks-log op → (index table, set it?); "drop" (gc freed the object) clears every table
EFFECT = {"hide": ("hidden", True), "show": ("hidden", False), "delete": ("deleted", True),
          "keep": ("deleted", False), "root": ("rooted", True), "unroot": ("rooted", False)}
TABLES = ("hidden", "deleted", "rooted")
#: each table's set-record, as a snapshot writes it
SET_OP = {table: op for op, (table, on) in EFFECT.items() if on}
#: the ops after which gc may free an object's bytes: one disk's word is not enough (`agree`)
FREEING = frozenset({"delete", "unroot", "drop"})

#: the size of one record line (stamp of 19 digits, the longest op, 64 hex digits, the check)
RECORD_BYTES = 19 + 1 + 6 + 1 + 64 + 1 + 16 + 1

Record = tuple[int, str, str]  # (stamp, op, sha256 hex)


def log_path(disk_root: Path) -> Path:
    return disk_root / MARKS_DIR / MARKS_LOG


def _check(head: str) -> str:
    return xxhash.xxh3_64_hexdigest(head.encode())


def line(stamp: int, op: str, sha_hex: str) -> str:
    """One record line as the store writes it, its check included."""
    head = f"{stamp} {op} {sha_hex}"
    return f"{head} {_check(head)}\n"


def records(stamp: int, op: str, shas: Iterable[bytes]) -> bytes:
    return "".join(line(stamp, op, sha.hex()) for sha in shas).encode()


def snapshot(stamp: int, tables: Mapping[str, Iterable[bytes]]) -> bytes:
    """A whole log: the reset line, then every mark as its set-record, one stamp."""
    return b"".join(snapshot_chunks(stamp, tables))


def snapshot_chunks(stamp: int, tables: Mapping[str, Iterable[bytes]], per: int = 10_000) -> Iterator[bytes]:
    """`snapshot` in pieces of `per` records, for a writer that streams it to a file: a store
    whose every object is a root has millions of marks (the whole log in memory took ~500
    bytes per mark)."""
    yield line(stamp, RESET, _NO_SHA).encode()
    n = 0
    for t in TABLES:
        batch: list[bytes] = []
        for sha in tables.get(t, ()):
            batch.append(sha)
            if len(batch) >= per:
                yield records(stamp, SET_OP[t], batch)
                n += len(batch)
                batch = []
        if batch:
            yield records(stamp, SET_OP[t], batch)
            n += len(batch)
    yield line(stamp, END, f"{n:064x}").encode()


#: what `classify` says of a line
OK, LEGACY, DAMAGED, OTHER = "record", "legacy", "damaged", "other"


def classify(raw: bytes) -> tuple[str, Record | None]:
    """(kind, record) of one line. OK: a record whose check holds. LEGACY: a record of the
    three-field format written before lines had checks (replayed as it is where no checked
    line precedes it in its log; the first writable open rewrites such logs). OTHER: the torn rest of an
    append (a crash during it: its transaction never committed) — a line that is a prefix of
    a well-formed one. DAMAGED: anything else — a line whose check does not hold (bit rot, an
    edit), a flipped space or digit, planted text: never obeyed, and named."""
    if not raw.endswith(b"\n"):
        return OTHER, None  # the file's last line, cut
    body = raw[:-1]
    parts = body.split(b" ")
    if len(parts) == 4 and HEX16.fullmatch(parts[3]):
        rec = _fields(parts[:3])
        if rec is not None and _check(body[:-17].decode("ascii")) == parts[3].decode():
            return OK, rec
        return DAMAGED, None
    if len(parts) == 3 and (rec := _fields(parts)) is not None:
        return LEGACY, rec
    return (OTHER if _torn(parts) else DAMAGED), None


#: an op's prefix, for telling a torn line from a damaged one
_OP_PREFIXES = frozenset(op[:i] for op in (*MARK_OPS, "reset", "end") for i in range(len(op) + 1))


def _torn(parts: list[bytes]) -> bool:
    """Whether the fields are a strict prefix of a record line: every field but the last
    whole, the last one begun (what a cut append leaves)."""
    if len(parts) > 4:
        return False
    whole = (lambda p: p.isdigit() and len(p) <= 19, lambda p: p.decode("ascii", "replace") in MARK_OPS + ("reset", "end"),
             lambda p: bool(HEX64.fullmatch(p)))
    begun = (lambda p: (p.isdigit() or not p) and len(p) <= 19,
             lambda p: p.decode("ascii", "replace") in _OP_PREFIXES,
             lambda p: len(p) <= 64 and bool(re.fullmatch(rb"[0-9a-f]*", p)),
             lambda p: len(p) < 16 and bool(re.fullmatch(rb"[0-9a-f]*", p)))
    *done, last = parts
    return all(whole[i](p) for i, p in enumerate(done)) and begun[len(done)](last)


def _fields(parts: list[bytes]) -> Record | None:
    """A decimal stamp of at most 19 digits, a known op and 64 lower-case hex digits."""
    if not parts[0].isdigit() or len(parts[0]) > 19 or not HEX64.fullmatch(parts[2]):
        return None
    op = parts[1].decode("ascii", "replace")
    if op not in MARK_OPS and op not in (RESET, END):
        return None
    return int(parts[0]), op, parts[2].decode("ascii")


def parse(raw: bytes) -> Record | None:
    """One line's record, or None when it is not one to replay (`classify`)."""
    kind, rec = classify(raw)
    return rec if kind in (OK, LEGACY) else None


def regular(fd: int, path: Path) -> None:
    """OSError unless `fd` is a regular file (a FIFO or device planted as a log would block
    a reader, or swallow records)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))


@dataclass
class DiskLog:
    """What one disk's marks logs hold: the records to replay (a snapshot's `reset` only
    when its `end` line agrees), and how many lines were damaged (a check that does not
    hold), not records (torn, planted), legacy (no check), or a snapshot not honoured.

    Read with a `Spill` (`read_log`), its records are not kept here but spilled to disk —
    memory that does not grow with the log (`settle` replays them, object by object); then
    `first`/`last` are the stamps of its first and last record up to the read's `cutoff`, and
    `late` the stamps of those after it."""

    label: str = ""
    records: set[Record] = field(default_factory=set)
    resets: set[int] = field(default_factory=set)  # honoured snapshots' stamps
    damaged: int = 0
    other: int = 0
    legacy: int = 0
    broken_resets: int = 0
    damaged_lines: list[int] = field(default_factory=list)  # line numbers (1-based), the first few
    #: damaged lines in a `*.log` beside marks.log, per file: no rewrite from the index
    #: touches such a file (`hoard index rewrite-marks`, `verify --repair` said they fixed
    #: them, and the next check or verify named them again), so they are a note: remove it
    foreign: dict[str, int] = field(default_factory=dict)
    spilled: bool = False  # its records went to a Spill (first, last, late stand for them)
    first: int = 1 << 64
    last: int = -1
    late: list[int] = field(default_factory=list)
    #: of the store's own log (MARKS_LOG): bytes and lines of its judged prefix (`_read_lines`),
    #: and whether a checked record came in it — where a later reading of its tail starts
    judged: int = 0
    judged_lines: int = 0
    checked: bool = False

    @property
    def begin(self) -> int:
        """The first stamp this log speaks for: its newest honoured snapshot, else its first record."""
        if self.resets:
            return max(self.resets)
        if self.spilled:
            return self.first
        return min((r[0] for r in self.records), default=1 << 64)

    @property
    def end(self) -> int:
        if self.spilled:
            return max([self.last, *self.late])
        return max((r[0] for r in self.records), default=-1)

    def covers(self, stamp: int) -> bool:
        return self.begin <= stamp <= self.end

    def upto(self, stamp: int) -> DiskLog:
        """The same log without its records stamped after `stamp` (of a spilled log: `stamp` is
        its read's cutoff, whose later records were never spilled)."""
        if self.spilled:
            return DiskLog(self.label, set(), {t for t in self.resets if t <= stamp}, self.damaged, self.other,
                           self.legacy, self.broken_resets, self.damaged_lines, self.foreign, True, self.first,
                           self.last, [])
        return DiskLog(self.label, {r for r in self.records if r[0] <= stamp}, {t for t in self.resets if t <= stamp},
                       self.damaged, self.other, self.legacy, self.broken_resets, self.damaged_lines, self.foreign)

    def after(self, stamp: int) -> int:
        """How many of its records are stamped after `stamp` (of a spilled log: `stamp` at or
        after its read's cutoff)."""
        recs = self.late if self.spilled else [r[0] for r in self.records]
        return sum(1 for t in recs if t > stamp) + sum(1 for t in self.resets if t > stamp)


def read_log(folder: Path, planted: list[str] | None = None, label: str = "", spill: Spill | None = None,
             src: int = 0, cutoff: int | None = None) -> DiskLog:
    """The records of `folder/*.log`. A `*.log` that is not a regular file, or a symbolic
    link to nothing, is skipped — named in `planted` — and the others are still read (it
    stopped the folder's read, and the real log went unread with it). Raises OSError if a
    log cannot be read. With `spill`, the records go there as log number `src` (`settle`
    reads them back), those stamped after `cutoff` only counted (DiskLog.late)."""
    out = DiskLog(label, spilled=spill is not None)
    keep = _keeper(out, spill, src, cutoff)
    for path in sorted(folder.glob("*.log")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            if not os.path.islink(path):
                raise
            (planted if planted is not None else []).append(f"{path}: a symbolic link to nothing")
            continue
        try:
            regular(fd, path)
            f = os.fdopen(fd, "rb")
        except OSError as e:
            os.close(fd)
            if e.errno != errno.EINVAL:
                raise
            (planted if planted is not None else []).append(f"{path}: not a regular file")
            continue
        except BaseException:
            os.close(fd)
            raise
        with f:
            _read_lines(f, path, out, keep, cutoff)
    return out


def read_stream(f: Any, path: PurePath, label: str = "", spill: Spill | None = None, src: int = 0,
                cutoff: int | None = None, start: int = 0, lines: int = 0, checked: bool = False) -> DiskLog:
    """The records of one log read from `f` (a log a backend without files hands over whole,
    hoardfs.fsd.core.s3files; `path` names it: its name is MARKS_LOG), from byte `start` on as
    `read_tail` reads, or whole as `read_log` reads one file."""
    out = DiskLog(label, spilled=spill is not None)
    f.seek(start)
    _read_lines(f, path, out, _keeper(out, spill, src, cutoff), cutoff, start, lines, checked)
    return out


def read_tail(path: Path, label: str, spill: Spill, src: int, cutoff: int, start: int, lines: int,
              checked: bool) -> DiskLog:
    """The records of the log at `path` from byte `start` on (the end of a judged prefix,
    `DiskLog.judged`, which held `lines` lines; `checked`: a checked record came before it),
    read and spilled as `read_log` reads a whole log — what an append-only log gained since
    it was last judged. Raises OSError if it cannot be read (or is no regular file)."""
    out = DiskLog(label, spilled=True)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        regular(fd, path)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        f.seek(start)
        _read_lines(f, path, out, _keeper(out, spill, src, cutoff), cutoff, start, lines, checked)
    return out


def _read_lines(f: Any, path: PurePath, out: DiskLog, keep: Callable[[Record], None], cutoff: int | None,
                pos: int = 0, n: int = 0, checked: bool = False) -> None:
    """Classify every line of `f` (its first is line `n + 1`, at byte `pos`) into `out`. Of
    the store's own log (MARKS_LOG) it also notes the judged prefix (DiskLog.judged): up to the
    end of the last whole line before the first record stamped after `cutoff` or the first
    line not ended yet — an append still being written, or a record whose transaction has not
    committed, is judged by the next reading, from there on."""
    resets: dict[int, int] = {}  # reset stamp → set-records seen with it
    ends: dict[int, int] = {}
    own = path.name == MARKS_LOG
    top = (1 << 64) if cutoff is None else cutoff
    judging = own
    if own:
        out.judged, out.judged_lines = pos, n
    first = n + 1
    for n, raw in enumerate(f, first):
        pos += len(raw)
        kind, rec = classify(raw) if raw.strip() else (OTHER, None)
        if judging and (not raw.endswith(b"\n") or (rec is not None and rec[0] > top)):
            judging = False
        if not raw.strip():
            pass
        elif rec is None:
            if kind == DAMAGED and not own:
                out.foreign[str(path)] = out.foreign.get(str(path), 0) + 1
            elif kind == DAMAGED:
                out.damaged += 1
                if len(out.damaged_lines) < 5:
                    out.damaged_lines.append(n)
            else:
                out.other += 1
        elif kind == LEGACY and checked:
            # after a checked line, a three-field line is an append cut right after its
            # sha256 and completed by the next append's newline (never committed)
            out.other += 1
        elif kind == LEGACY:
            # the release before checks wrote it: replayed, even when checked appends
            # follow (its log was not rewritten: its last line was torn or damaged)
            out.legacy += 1
            _take(rec, resets, ends, keep)
        else:
            checked = True
            _take(rec, resets, ends, keep)
        if judging:
            out.judged, out.judged_lines, out.checked = pos, n, checked
    for stamp, k in resets.items():
        if ends.get(stamp) == k:
            out.resets.add(stamp)
        else:
            out.broken_resets += 1


def _take(rec: Record, resets: dict[int, int], ends: dict[int, int], keep: Callable[[Record], None]) -> None:
    if rec[1] == RESET:
        resets[rec[0]] = 0
    elif rec[1] == END:
        ends[rec[0]] = int(rec[2], 16)
    else:
        if rec[0] in resets:
            resets[rec[0]] += 1
        keep(rec)


def _keeper(out: DiskLog, spill: Spill | None, src: int, cutoff: int | None) -> Callable[[Record], None]:
    """Where `read_log` puts a record: the log's set, or the spill (see DiskLog)."""
    if spill is None:
        return out.records.add
    top = (1 << 64) if cutoff is None else cutoff

    def keep(rec: Record) -> None:
        stamp = rec[0]
        if stamp > top:
            out.late.append(stamp)
            return
        out.first = min(out.first, stamp)
        out.last = max(out.last, stamp)
        spill.add(bytes.fromhex(rec[2]) + stamp.to_bytes(8, "big") + bytes((CODES[rec[1]], src)))
    return keep


def read(folder: Path, into: set[Record], planted: list[str] | None = None) -> int:
    """Add the records of `folder/*.log` to `into` (honoured resets as RESET records);
    returns how many lines were not records (blank lines — each append starts with one — do
    not count; a reset whose end line does not agree does, and is not added)."""
    got = read_log(folder, planted)
    into |= got.records | {(s, RESET, _NO_SHA) for s in got.resets}
    return got.damaged + got.other + got.broken_resets


def last_stamp(disk_root: Path) -> int | None:
    """The stamp of the log's last complete record (before a torn last line: `ends_of`); 0
    when there is no log (or it is empty); None when the last line is not a record (damaged,
    or torn with no record before it)."""
    return log_ends(disk_root)[0]


def tail_is_legacy(disk_root: Path) -> bool:
    """Whether the log's last line — or its first: a legacy log whose last line was torn took
    checked appends after its legacy lines — is a record without a check (written before lines
    had them): the log is rewritten by the next writable open."""
    return log_ends(disk_root)[1]


def log_ends(disk_root: Path) -> tuple[int | None, bool]:
    """(`last_stamp`, `tail_is_legacy`) from one open and read of the log's two ends (every
    writable open asks both of every disk: Store.catch_up_marks)."""
    return judge_ends(*ends(disk_root))


def judge_ends(first: bytes | None, tail: bytes | None) -> tuple[int | None, bool]:
    """(`last_stamp`, `tail_is_legacy`) of a log whose first non-blank line and last line are
    these (None, None: no log, or an empty one) — whichever backend keeps it."""
    rec = parse(tail) if tail is not None else None
    stamp = 0 if tail is None else (rec[0] if rec else None)
    return stamp, any(end is not None and classify(end)[0] == LEGACY for end in (first, tail))


def ends(disk_root: Path) -> tuple[bytes | None, bytes | None]:
    """The first non-blank line and the last line of the log under a local disk's root (None:
    no log, or an empty one)."""
    try:
        fd = os.open(log_path(disk_root), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    try:
        regular(fd, log_path(disk_root))
        size = os.fstat(fd).st_size
        if size == 0:
            return None, None
        head = os.pread(fd, min(size, 4096), 0)
        tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
    finally:
        os.close(fd)
    return ends_of(head, tail)


def ends_of(head: bytes, tail: bytes) -> tuple[bytes | None, bytes | None]:
    """The first non-blank line of `head` (a log's first bytes) and the last line of `tail` (its
    last ones) — or, when that one is the torn rest of an append (`classify`: OTHER), that
    record made whole when the cut took its newline alone, else the checked record right
    before it in `tail`: a power cut that tore an append (its transaction never committed) left
    the records it wrote whole ahead of the index, and the next writer must see them
    (Store.catch_up_marks: `last_stamp`) and snapshot the log before it appends; None, None
    for an empty log."""
    if not head and not tail:
        return None, None
    first = head.lstrip(b"\n")
    last = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
    if last.strip() and classify(last)[0] == OTHER:
        last = _last_record(tail, last)
    return first[:first.find(b"\n") + 1] or first, last


def _last_record(tail: bytes, torn: bytes) -> bytes:
    """`ends_of`'s last line when the log's last line `torn` is the torn rest of an append:
    the record itself when the cut took its newline alone (the next append, which begins
    with a newline, would otherwise make it a whole line, obeyed), else the checked record
    right before it in `tail` — or `torn` when there is none."""
    if classify(torn + b"\n")[0] == OK:
        return torn + b"\n"
    # (the window's first line may begin mid-line: only lines a newline precedes in it)
    for line in reversed(tail[:len(tail) - len(torn)].split(b"\n")[1:]):
        if line.strip():
            return line + b"\n" if classify(line + b"\n")[0] == OK else torn
    return torn


def agree(logs: Iterable[DiskLog]) -> tuple[set[Record], list[tuple[Record, str]]]:
    """The records the disks' logs agree on, as a set `replay` takes, and the disputed ones
    with the label of the disk that alone holds each. The rule (docs/design.md "Deletion
    marks on the HDDs"): from the newest honoured snapshot on, a record is obeyed when two
    disks hold it, when it is a snapshot's set-record (the snapshot is vouched for by its
    `end` line), when it keeps or hides (a lone `root` ignored could let gc free what `hoard
    put` acknowledged), or when no other disk's log covers its stamp (that disk was the only
    one taking records). A lone freeing record (`delete`, `unroot`, `drop`) that another disk
    covering its stamp lacks is disputed: not obeyed."""
    logs = list(logs)
    since = max((max(lg.resets) for lg in logs if lg.resets), default=-1)
    holders: dict[Record, list[DiskLog]] = {}
    for lg in logs:
        for rec in lg.records:
            if rec[0] >= since:
                holders.setdefault(rec, []).append(lg)
    agreed: set[Record] = {(since, RESET, _NO_SHA)} if since >= 0 else set()
    disputed: list[tuple[Record, str]] = []
    for rec, held in holders.items():
        stamp, op, _ = rec
        if (len(held) >= 2 or op not in FREEING or any(stamp in lg.resets for lg in held)
                or not any(lg.covers(stamp) for lg in logs if lg is not held[0])):
            agreed.add(rec)
        else:
            disputed.append((rec, held[0].label))
    return agreed, sorted(disputed)


def replay(found: set[Record]) -> dict[str, list[bytes]]:
    """Per index table, the objects marked after applying the records in stamp order from
    the newest reset on (a later `keep` — the object was stored again —, `show`, `unroot`
    or `drop` — gc freed it — undoes an earlier mark)."""
    since = max((t for t, op, _ in found if op == RESET), default=-1)  # (read: only honoured resets)
    final: dict[str, set[str]] = {table: set() for table in TABLES}
    for t, op, sha in sorted(found):
        if t < since or op in (RESET, END):
            continue
        if op == "drop":
            for shas in final.values():
                shas.discard(sha)
            continue
        table, on = EFFECT[op]
        (final[table].add if on else final[table].discard)(sha)
    return {table: [bytes.fromhex(h) for h in sorted(shas)] for table, shas in final.items()}



#: a record's op as one byte in a spill: the codes follow the ops' names, the order `replay`
#: applies the records of one stamp in (it sorts (stamp, op, sha) tuples)
OPS = tuple(sorted(MARK_OPS))
CODES = {op: i for i, op in enumerate(OPS)}
#: a spilled record: sha256 (32) ‖ stamp (8, big-endian) ‖ op code ‖ source (a log's number
#: in `settle`'s list, or HELD: a mark the index holds, its table's number as the op code)
SPILLED = 42
HELD = 255


def hold(spill: Spill, table: str, sha: bytes) -> None:
    """Spill a mark the index holds (of `table`, one of TABLES), for `settle` to set beside the logs'."""
    spill.add(sha + bytes(8) + bytes((TABLES.index(table), HELD)))


@dataclass
class Disputes:
    """The records `settle` did not obey (see `agree`): how many, and the first `keep` of them in
    (stamp, op, sha) order with the label of the disk that alone holds each."""
    count: int = 0
    first: list[tuple[Record, str]] = field(default_factory=list)
    keep: int = 20

    def add(self, rec: Record, label: str) -> None:
        self.count += 1
        if not self.keep:
            return
        if len(self.first) < self.keep or (rec, label) < self.first[-1]:
            self.first.append((rec, label))
            self.first.sort()
            del self.first[self.keep:]


Marks = tuple[bool, bool, bool]  # in TABLES order


def settle(logs: Sequence[DiskLog | None], spill: Spill, alone: Iterable[int] = (),
           disputes: Disputes | None = None, held_of: Callable[[bytes], Marks] | None = None,
           ) -> Iterable[tuple[bytes, Marks, Marks, dict[int, Marks]]]:
    """`replay(agree(logs)[0])` object by object, from the logs' records spilled as `read_log`
    spills them (`logs[i]`'s as source i) — memory for one spill partition, not for every
    record. Yields (sha256, its marks as the disks agree, the marks the index holds as
    spilled by `hold`, {i: its marks as log i alone replays them} for each i in `alone`), in
    sha256 order, for every object a record or a held mark names; the records not obeyed go
    to `disputes`. A log given as None is left out (its records in the spill are not read).

    `held_of(sha)`: the marks the index holds, looked up for each object the records name
    (instead of spilled by `hold`), and the replay starts from them rather than from no mark —
    the records are a log's tail whose earlier part was judged to agree with the index, so a
    table no record of the tail touches is as the index holds it."""
    since = max((max(lg.resets) for lg in logs if lg is not None and lg.resets), default=-1)
    own_since = {i: max(lg.resets, default=-1) for i in alone if (lg := logs[i]) is not None}
    alone = list(own_since)
    spans = [(lg.begin, lg.end) if lg is not None else (1, 0) for lg in logs]
    sha = b""
    group: list[tuple[int, int, list[int]]] = []  # (stamp, op code, sources holding it) of one object
    held = [False, False, False]
    for e in spill.sorted():
        if e[:32] != sha:
            if sha:
                yield _settled(sha, group, held, logs, spans, since, own_since, alone, disputes, held_of)
            sha, group, held = e[:32], [], [False, False, False]
        src = e[41]
        if src == HELD:
            held[e[40]] = True
            continue
        if src >= len(logs) or logs[src] is None:
            continue
        stamp, code = int.from_bytes(e[32:40], "big"), e[40]
        if group and group[-1][0] == stamp and group[-1][1] == code:
            if src not in group[-1][2]:  # (a record twice in one log is one record)
                group[-1][2].append(src)
        else:
            group.append((stamp, code, [src]))
    if sha:
        yield _settled(sha, group, held, logs, spans, since, own_since, alone, disputes, held_of)


def _apply(state: list[bool], op: str) -> None:
    if op == "drop":
        state[0] = state[1] = state[2] = False
    else:
        table, on = EFFECT[op]
        state[TABLES.index(table)] = on


def _settled(sha: bytes, group: list[tuple[int, int, list[int]]], held: list[bool], logs: Sequence[Any],
             spans: list[tuple[int, int]], since: int, own_since: dict[int, int], alone: list[int],
             disputes: Disputes | None, held_of: Callable[[bytes], Marks] | None = None,
             ) -> tuple[bytes, Marks, Marks, dict[int, Marks]]:
    if held_of is not None:
        held = list(held_of(sha))
    start = held if held_of is not None else [False, False, False]
    final = list(start)
    own = {i: list(start) for i in alone}
    for stamp, code, srcs in group:
        op = OPS[code]
        for i in alone:
            if i in srcs and stamp >= own_since[i]:
                _apply(own[i], op)
        if stamp < since:
            continue
        if (len(srcs) >= 2 or op not in FREEING or any(stamp in logs[i].resets for i in srcs)
                or not any(b <= stamp <= e for j, (b, e) in enumerate(spans) if j != srcs[0])):
            _apply(final, op)
        elif disputes is not None:
            disputes.add((stamp, op, sha.hex()), logs[srcs[0]].label)
    return (sha, (final[0], final[1], final[2]), (held[0], held[1], held[2]),
            {i: (m[0], m[1], m[2]) for i, m in own.items()})


#: `meta` keys of the marks log (Index.log_in): the last stamp (ns) given out, the stamp of the
#: last record, and per disk `marks_at:<uuid>` (its log is complete up to) and
#: `marks_failed:<uuid>` (when a snapshot last failed to reach it)
MARKS_NS = b"marks_ns"
MARKS_LAST = b"marks_last"


def _still_complete(upto: int, before: int, tail: int | None) -> bool:
    """Whether a disk whose log is complete up to `upto` (its `marks_at`, or its snapshot
    marker's second stamp) stays complete with this transaction's append: it held every
    record up to the last one (`before`), and its log ended there — not past it (a dead
    writer's records), nor unread (None)."""
    return upto >= before and tail is not None and tail <= upto


def _marks_at(uuid: str) -> bytes:
    return b"marks_at:" + uuid.encode()


def _marks_failed(uuid: str) -> bytes:
    return b"marks_failed:" + uuid.encode()


def _marks_snap(uuid: str) -> bytes:
    """The marker of a snapshot being written to disk `uuid` (Index.snapshot_marks): "<its
    stamp> <the stamp up to which the disk took every record since>" (decimal, ascii)."""
    return b"marks_snap:" + uuid.encode()


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


class MarksTables:
    """The index's marks: the `hidden`, `deleted` and `rooted` tables, set and cleared in the
    write transaction that hands their records to the disks' logs (`log_in`), the log's
    stamps, and each disk's progress in `meta`. A part of `hoardfs.fsd.core.index.Index`, which opens
    the tables."""

    env: Any
    meta: Any
    objects: Any
    hidden: Any
    deleted: Any
    rooted: Any
    mark_log: Callable[[str, list[bytes], int], list[str]] | None
    mark_tails: Callable[[], dict[str, int | None]] | None
    _stamp_floor: int

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
        it is and not logged (every `hoard put` of known files asks for it: no disk write).
        Many objects are marked in write transactions of a bounded size (txnlog.chunked: an
        entry and a marks-log record each), so that no writer waits behind a whole batch's
        deletion: each transaction is whole, and every caller is safe when it stops between
        two — a batch stays registered (its manifest keeps its files) until all its tombstones
        are set, a root taken off and not yet tombstoned is only kept, and a re-run redoes the
        rest."""
        doc = json.dumps({"time": time.time(), "reason": reason}).encode()
        return sum(self._mark(db, part, doc, reason) for part in chunked(shas, 2))

    def _mark(self, db: Any, shas: list[bytes], doc: bytes, reason: str) -> int:
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
        still that root — not where another put rooted the object since (see `mark`); in
        transactions of a bounded size, as `mark`."""
        n = 0
        for part in chunked(shas, 2):
            with self.env.begin(write=True, db=self.rooted) as txn:
                done = [sha for sha in part if _reason(txn.get(sha)) == reason and txn.delete(sha)]
                if done:
                    self.log_in(txn, "unroot", done)
                n += len(done)
        return n

    def unmark(self, db: Any, shas: Iterable[bytes]) -> int:
        """Clear a mark, in transactions of a bounded size (see `mark`)."""
        n = 0
        for part in chunked(shas, 2):
            with self.env.begin(write=True, db=db) as txn:
                done = [sha for sha in part if txn.delete(sha)]
                if done:
                    self.log_in(txn, self._ops(db)[1], done)
                n += len(done)
        return n

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
        guessed from the log's last line, so a later append cannot hide the hole.

        So does a disk whose log, read before this append (`mark_tails`), ends past what the
        index knows it took: records of a writer that appended them and died before its
        commit, after this process opened the store (Store.catch_up_marks mends those at
        open). This append would bury them under a record the index did take — obeyed by an
        index rebuild, never seen again as ahead —; the disk behind (also one whose log's end
        did not read: None), the next writable open (`hoard replicate`) replaces its log by a
        snapshot, and this record's stamp is after theirs."""
        if shas and self.mark_log:
            raw = txn.get(MARKS_LAST, db=self.meta)
            before = int(raw) if raw else 0
            tails = self.mark_tails() if self.mark_tails else {}
            self._stamp_floor = max(self._stamp_floor, *(t for t in tails.values() if t is not None), 0)
            stamp = self._next_stamp(txn)
            took = self.mark_log(op, shas, stamp)
            self.env.count_writes(len(shas))  # (records written inside this transaction, on the HDDs)
            txn.put(MARKS_LAST, str(stamp).encode(), db=self.meta)
            for uuid in took:  # only a disk that was complete stays complete: a hole stays a hole
                tail = tails.get(uuid, 0)  # (None: its end did not read — not taken for complete)
                at = txn.get(_marks_at(uuid), db=self.meta)
                if at is not None and _still_complete(int(at), before, tail):
                    txn.put(_marks_at(uuid), str(stamp).encode(), db=self.meta)
                # the same for a snapshot being written (snapshot_marks): how far its disk
                # will be complete once the snapshot is renamed in (it takes the log's records
                # after its cut, a dead writer's too)
                snap = txn.get(_marks_snap(uuid), db=self.meta)
                if snap is not None:
                    snap_stamp, upto = snap.split()
                    if _still_complete(int(upto), before, tail):
                        txn.put(_marks_snap(uuid), snap_stamp + b" " + str(stamp).encode(), db=self.meta)

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

    def snapshot_marks(self, start: Callable[[int, dict[str, int]], dict[str, Any]],
                       write: Callable[[int, Callable[[], dict[str, Iterable[bytes]]], dict[str, Any]],
                                       tuple[list[str], list[str]]],
                       finish: Callable[[str], bool], foreign: dict[str, list[bytes]] | None = None) -> int:
        """A snapshot of the marks to the disks' logs, in three steps, no write transaction
        held while the marks are read and written (at millions of marks that takes seconds,
        every writer waiting):

        1. one short write transaction takes the stamp, calls `start(stamp, at)` (`at`: each
           disk's `marks_at`) which returns {uuid: cut} for the disks to write — the cut is
           what the caller needs to find later what was appended to the log after this
           transaction (its size now) —, sets each one's marker `marks_snap:<uuid>` = "stamp
           stamp" and opens a read transaction before it commits: that one sees the marks
           exactly as at `stamp` (no other writer can commit in between);
        2. `write(stamp, tables, cuts)`, no write transaction held, writes the snapshot beside
           each log (not over it) from that read transaction — `tables()` {table: shas} read
           as they are used, plus `foreign`: marks the disks' logs hold for objects this index
           does not know (their shards on disks absent when it was rebuilt), carried into the
           snapshot, not dropped from the HDDs' history. It returns (uuids written, uuids
           that failed); writers meanwhile append their records to the logs as ever, and
           `log_in` moves a disk's marker on while the disk takes every record;
        3. per disk written, one short write transaction calls `finish(uuid)`, which appends
           what the log took since the cut to the new file and renames it over the log (True;
           False: not done). The disk is then complete up to its marker's second stamp
           (`marks_at`); the marker goes.

        A process killed at any step leaves each log whole (the old one, or the new one with
        every later record) and the disk's `marks_at` where it was: the disk is still behind,
        and the next writer snapshots it again. A marker left behind is overwritten by the
        next snapshot of its disk (docs/design.md "Snapshots in three steps"). Callers run one
        snapshot at a time (Store.snapshot_marks holds a lock). Returns the stamp."""
        with self.env.begin(write=True) as txn:
            at = {}
            cur = txn.cursor(db=self.meta)
            if cur.set_range(b"marks_at:"):
                for k, v in cur:
                    if not bytes(k).startswith(b"marks_at:"):
                        break
                    at[bytes(k)[9:].decode()] = int(v)
            stamp = self._next_stamp(txn)
            cuts = start(stamp, at)
            for uuid in cuts:
                txn.put(_marks_snap(uuid), f"{stamp} {stamp}".encode(), db=self.meta)
            view = self.env.begin()  # (before the commit: the marks exactly as at `stamp`)
        try:
            def marks_of(name: str) -> Iterator[bytes]:
                for k in view.cursor(db=getattr(self, name)).iternext(values=False):
                    yield bytes(k)
                for sha in (foreign or {}).get(name, ()):
                    if view.get(sha, db=self.objects) is None:
                        yield sha

            def tables() -> dict[str, Iterable[bytes]]:
                return {name: marks_of(name) for name in ("hidden", "deleted", "rooted")}
            written, failed = write(stamp, tables, cuts) if cuts else ([], [])
        finally:
            view.abort()
        for uuid in cuts:
            with self.env.begin(write=True, db=self.meta) as txn:
                snap = txn.get(_marks_snap(uuid))
                upto = int(snap.split()[1]) if snap is not None and int(snap.split()[0]) == stamp else None
                if uuid in written and finish(uuid):
                    if upto is not None:
                        txn.put(_marks_at(uuid), str(upto).encode())
                    txn.delete(_marks_failed(uuid))
                elif uuid in failed:
                    txn.put(_marks_failed(uuid), repr(time.time()).encode())
                if upto is not None:
                    txn.delete(_marks_snap(uuid))
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
