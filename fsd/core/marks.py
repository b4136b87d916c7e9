"""The marks log on the HDDs: `<disk>/marks/marks.log`, what `hoard index rebuild` replays.

The index's marks (hidden, deleted, rooted — see fsd/core/index.py) live on the SSD; each change
is also appended, inside the index transaction that applies it, to every writable disk's
log as lines `<stamp_ns> <op> <sha256 hex> <check>` (ops: fsd.core.layout.MARK_OPS; `check` is
the xxh3-64 of the line's first three fields, so a flipped bit makes a line *damaged* —
named by `hoard check`/`verify` and never obeyed). Stamps come from Index._next_stamp:
strictly increasing across processes, whatever the wall clock does.

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
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from fsd.core.layout import MARK_OPS, MARKS_DIR, MARKS_LOG

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


def snapshot(stamp: int, tables: dict[str, list[bytes]]) -> bytes:
    """A whole log: the reset line, then every mark as its set-record, one stamp."""
    n = sum(len(tables.get(t, ())) for t in TABLES)
    return (line(stamp, RESET, _NO_SHA).encode()
            + b"".join(records(stamp, SET_OP[t], tables.get(t, ())) for t in TABLES)
            + line(stamp, END, f"{n:064x}").encode())


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
    hold), not records (torn, planted), legacy (no check), or a snapshot not honoured."""

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

    @property
    def begin(self) -> int:
        """The first stamp this log speaks for: its newest honoured snapshot, else its first record."""
        if self.resets:
            return max(self.resets)
        return min((r[0] for r in self.records), default=1 << 64)

    @property
    def end(self) -> int:
        return max((r[0] for r in self.records), default=-1)

    def covers(self, stamp: int) -> bool:
        return self.begin <= stamp <= self.end

    def upto(self, stamp: int) -> DiskLog:
        """The same log without its records stamped after `stamp`."""
        return DiskLog(self.label, {r for r in self.records if r[0] <= stamp}, {t for t in self.resets if t <= stamp},
                       self.damaged, self.other, self.legacy, self.broken_resets, self.damaged_lines, self.foreign)

    def after(self, stamp: int) -> int:
        """How many of its records are stamped after `stamp`."""
        return sum(1 for r in self.records if r[0] > stamp) + sum(1 for t in self.resets if t > stamp)


def read_log(folder: Path, planted: list[str] | None = None, label: str = "") -> DiskLog:
    """The records of `folder/*.log`. A `*.log` that is not a regular file, or a symbolic
    link to nothing, is skipped — named in `planted` — and the others are still read (it
    stopped the folder's read, and the real log went unread with it). Raises OSError if a
    log cannot be read."""
    out = DiskLog(label)
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
        resets: dict[int, int] = {}  # reset stamp → set-records seen with it
        ends: dict[int, int] = {}
        checked = False
        with f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                kind, rec = classify(raw)
                if rec is None:
                    if kind == DAMAGED and path.name != MARKS_LOG:
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
                    _take(rec, resets, ends, out.records)
                else:
                    checked = True
                    _take(rec, resets, ends, out.records)
        for stamp, n in resets.items():
            if ends.get(stamp) == n:
                out.resets.add(stamp)
            else:
                out.broken_resets += 1
    return out


def _take(rec: Record, resets: dict[int, int], ends: dict[int, int], into: set[Record]) -> None:
    if rec[1] == RESET:
        resets[rec[0]] = 0
    elif rec[1] == END:
        ends[rec[0]] = int(rec[2], 16)
    else:
        if rec[0] in resets:
            resets[rec[0]] += 1
        into.add(rec)


def read(folder: Path, into: set[Record], planted: list[str] | None = None) -> int:
    """Add the records of `folder/*.log` to `into` (honoured resets as RESET records);
    returns how many lines were not records (blank lines — each append starts with one — do
    not count; a reset whose end line does not agree does, and is not added)."""
    got = read_log(folder, planted)
    into |= got.records | {(s, RESET, _NO_SHA) for s in got.resets}
    return got.damaged + got.other + got.broken_resets


def last_stamp(disk_root: Path) -> int | None:
    """The stamp of the log's last complete record; 0 when there is no log (or it is
    empty); None when the last line is not a record (torn or damaged)."""
    return log_ends(disk_root)[0]


def tail_is_legacy(disk_root: Path) -> bool:
    """Whether the log's last line — or its first: a legacy log whose last line was torn took
    checked appends after its legacy lines — is a record without a check (written before lines
    had them): the log is rewritten by the next writable open."""
    return log_ends(disk_root)[1]


def log_ends(disk_root: Path) -> tuple[int | None, bool]:
    """(`last_stamp`, `tail_is_legacy`) from one open and read of the log's two ends (every
    writable open asks both of every disk: Store.catch_up_marks)."""
    ends = _ends(disk_root)
    tail = ends[1]
    rec = parse(tail) if tail is not None else None
    stamp = 0 if tail is None else (rec[0] if rec else None)
    return stamp, any(end is not None and classify(end)[0] == LEGACY for end in ends)


def _ends(disk_root: Path) -> tuple[bytes | None, bytes | None]:
    """The log's first non-blank line and its last line (None: no log, or an empty one)."""
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
    first = head.lstrip(b"\n")
    return first[:first.find(b"\n") + 1] or first, tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]


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
