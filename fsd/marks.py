"""The marks log on the HDDs: `<disk>/marks/marks.log`, what `hoard index rebuild` replays.

The index's marks (hidden, deleted, rooted — see fsd/index.py) live on the SSD; each change
is also appended, inside the index transaction that applies it, to every writable disk's
log as lines `<stamp_ns> <op> <sha256 hex>` (ops: fsd.layout.MARK_OPS). Stamps come from
Index._next_stamp: strictly increasing across processes, whatever the wall clock does.

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
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from fsd.layout import MARK_OPS, MARKS_DIR, MARKS_LOG

#: the op of a snapshot's first line (its sha field is all zeros)
RESET = "reset"
#: the last line of a snapshot: its stamp is the reset's, its third field the number of
#: set-records between them (64 hex digits) — a reset is honoured only when its end line
#: agrees, so a flipped bit in a reset's stamp cannot make it "the newest" and hide records
END = "end"
_NO_SHA = "0" * 64
#: a sha256 as the store writes it: 64 lower-case hex digits
HEX64 = re.compile(rb"[0-9a-f]{64}")
#: marks-log op → (index table, set it?); "drop" (gc freed the object) clears every table
EFFECT = {"hide": ("hidden", True), "show": ("hidden", False), "delete": ("deleted", True),
          "keep": ("deleted", False), "root": ("rooted", True), "unroot": ("rooted", False)}
TABLES = ("hidden", "deleted", "rooted")
#: each table's set-record, as a snapshot writes it
SET_OP = {table: op for op, (table, on) in EFFECT.items() if on}

#: the size of one record line (stamp of 19 digits, the longest op, 64 hex digits)
RECORD_BYTES = 19 + 1 + 6 + 1 + 64 + 1

Record = tuple[int, str, str]  # (stamp, op, sha256 hex)


def log_path(disk_root: Path) -> Path:
    return disk_root / MARKS_DIR / MARKS_LOG


def records(stamp: int, op: str, shas: Iterable[bytes]) -> bytes:
    return "".join(f"{stamp} {op} {sha.hex()}\n" for sha in shas).encode()


def snapshot(stamp: int, tables: dict[str, list[bytes]]) -> bytes:
    """A whole log: the reset line, then every mark as its set-record, one stamp."""
    n = sum(len(tables.get(t, ())) for t in TABLES)
    return (f"{stamp} {RESET} {_NO_SHA}\n".encode()
            + b"".join(records(stamp, SET_OP[t], tables.get(t, ())) for t in TABLES)
            + f"{stamp} {END} {n:064x}\n".encode())


def parse(line: bytes) -> Record | None:
    """One complete line, or None: a torn last line (a crash during an append, whose
    transaction never committed) or damage — a record that is not exactly three fields, a
    decimal stamp of at most 19 digits, a known op and 64 lower-case hex digits is not
    replayed."""
    parts = line.split()
    if (len(parts) != 3 or not line.endswith(b"\n") or not parts[0].isdigit() or len(parts[0]) > 19
            or not HEX64.fullmatch(parts[2])):
        return None
    op = parts[1].decode("ascii", "replace")
    if op not in MARK_OPS and op not in (RESET, END):
        return None
    return int(parts[0]), op, parts[2].decode("ascii")


def regular(fd: int, path: Path) -> None:
    """OSError unless `fd` is a regular file (a FIFO or device planted as a log would block
    a reader, or swallow records)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))


def read(folder: Path, into: set[Record], planted: list[str] | None = None) -> int:
    """Add the records of `folder/*.log` to `into`; returns how many lines were not records
    (blank lines — each append starts with one — do not count; nor does a reset whose end
    line does not agree, which is not added). A `*.log` that is not a regular file, or a
    symbolic link to nothing, is skipped — named in `planted` — and the others are still read
    (it stopped the folder's read, and the real log went unread with it). Raises OSError if a
    log cannot be read."""
    bad = 0
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
        with f:
            for line in f:
                if not line.strip():
                    continue
                rec = parse(line)
                if rec is None:
                    bad += 1
                elif rec[1] == RESET:
                    resets[rec[0]] = 0
                elif rec[1] == END:
                    ends[rec[0]] = int(rec[2], 16)
                else:
                    if rec[0] in resets:
                        resets[rec[0]] += 1
                    into.add(rec)
        for stamp, n in resets.items():
            if ends.get(stamp) == n:
                into.add((stamp, RESET, _NO_SHA))
            else:
                bad += 1
    return bad


def last_stamp(disk_root: Path) -> int | None:
    """The stamp of the log's last complete record; 0 when there is no log (or it is
    empty); None when the last line is not a record (torn or damaged)."""
    try:
        fd = os.open(log_path(disk_root), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0
    try:
        regular(fd, log_path(disk_root))
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
    finally:
        os.close(fd)
    line = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
    rec = parse(line)
    return rec[0] if rec else None


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
