"""What the last reading of every disk's marks log found, kept so that `hoard health` reads only
what the logs gained since (docs/design.md, "One judgement, three tools").

A marks log only grows between snapshots (each append adds whole lines at its end; a snapshot
replaces the file: tmp → rename, a new inode). So a log whose identity (device, inode) is the
one read last time and which is not shorter than the prefix judged then holds that prefix
unchanged — unless its bytes rotted, which only a reading of every byte finds: `hoard verify`
and `hoard check` read every log whole, `hoard health` reads the appended tail and reports for
the prefix what the last whole reading found (and when it was: `whole_at`).

The memory is one JSON file, `<ssd.root>/state/marks-judged.json` (MEMORY), rewritten
(tmp → fsync → rename) by every judgement — whole or tail — that read every disk's log
cleanly. It is trusted only for the same index (the inode of its data file: a rebuild or a
restore swaps it) whose marks stamp has not gone back, the same disks in the same states, the
same other `*.log` files beside each log, and each log its same file no shorter than judged
whose last bytes before that length are still the ones judged (Beside.marks_tip: a log cut shorter behind
the store's back and grown again by appends past that length is the same inode, longer — its
judged part is not what was judged; a log kept as objects, hoardfs.fsd.core.s3files, has no such
identity and is read whole every time); anything else — a memory that does not hold what this
version writes, field by field, included — and the logs are read whole again.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from hoardfs.base.files import PlantedLink, atomic_write, read_in_zone
from hoardfs.fsd.core import formats, marks

if TYPE_CHECKING:
    from hoardfs.fsd.core.beside import Beside
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)

#: the memory's file, under `ssd.root`
MEMORY = Path("state") / "marks-judged.json"
FORMAT = formats.JUDGED
#: the pointers found to be what the index names, by the identity of the file read (`Pointers`)
POINTERS = Path("state") / "pointers-judged.json"
#: health reads every pointer again once the last reading of all of them is this old
WHOLE_MAX_S = 3600.0
#: a pointer whose ctime is this close to its reading is not remembered (ns)
RACY_NS = 2_000_000_000


def memory_path(store: Store) -> Path:
    return store.cfg.ssd.root / MEMORY


def index_identity(store: Store) -> list[int] | None:
    """(device, inode) of the index's data file: a rebuild or a restore swaps in another one."""
    try:
        st = (store.cfg.index_dir / "data.mdb").stat()
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


@dataclass
class Remembered:
    """One disk's log as last judged: which file, how much of it, and what that part held."""

    state: str
    file: list[int] | None
    others: dict[str, list[int]]
    judged: int
    lines: int
    checked: bool
    log: dict[str, Any]  # the DiskLog facts of the judged part (`facts`)
    off: int = 0  # marks its log alone replayed differently from the index (a disk judged alone)
    tip: str = ""  # `tip` of the judged part ("": none taken — never fits)

    def fits(self, state: str, file: list[int] | None, others: dict[str, list[int]], size: int,
             beside: Beside | None = None) -> bool:
        """Whether the log is still the file judged, grown only by appends (`beside`: where the
        log is, whose bytes before the judged length must still be the ones judged:
        Beside.marks_tip). A log without a file identity (hoardfs.fsd.core.s3files) never fits: it is
        read whole."""
        return (self.state == state and self.file is not None and self.file == file and self.others == others
                and size >= self.judged and bool(self.tip)
                and (beside is None or beside.marks_tip(self.judged, self.file) == self.tip))


@dataclass
class Memory:
    index: list[int] | None
    cutoff: int  # the index's marks stamp the judgement compared against
    whole_at: float  # when every log was last read whole (check, verify, or health)
    whole_by: str
    disks: dict[str, Remembered]
    #: per-object findings: table → [index-only count, logs-only count] and their first shas (hex)
    counts: dict[str, list[int]] = field(default_factory=dict)
    lost: dict[str, list[list[str]]] = field(default_factory=dict)
    disputes: int = 0
    unknown: int = 0
    tail_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "index": self.index, "cutoff": self.cutoff, "whole_at": self.whole_at,
                "whole_by": self.whole_by, "tail_at": self.tail_at, "counts": self.counts, "lost": self.lost,
                "disputes": self.disputes, "unknown": self.unknown,
                "disks": {u: vars(r) for u, r in self.disks.items()}}


def load(store: Store) -> Memory | None:
    """The memory, or None (none yet, another format, unreadable, or any field not what this
    version writes — a bit flipped in it, a hand edit: the logs are read whole, and that
    reading writes it anew)."""
    try:
        doc = json.loads(_read(memory_path(store)))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not _sound(doc):
            return None
        return Memory(doc["index"], doc["cutoff"], float(doc["whole_at"]), doc["whole_by"],
                      {u: Remembered(**r) for u, r in doc["disks"].items()}, doc["counts"], doc["lost"],
                      doc["disputes"], doc["unknown"], float(doc.get("tail_at", 0.0)))
    except _UNREADABLE:
        return None


#: what reading a memory file may raise, each taken as nothing remembered: RecursionError for
#: JSON nested deeper than the decoder goes (200 KB of `[`), which must not make health say the
#: store cannot be opened and drop its whole integrity section
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError)

#: the most of a memory file read (a larger one — planted, or a store far beyond 100 M objects —
#: is cut there: it no longer decodes, and nothing is remembered)
READ_MAX = 64 << 20


def _read(path: Path) -> bytes:
    """A memory file's bytes, never following a link or blocking on a FIFO planted at its name
    (`read_in_zone`: OSError, so nothing is remembered)."""
    return read_in_zone(path, READ_MAX)


def _int(v: Any, low: int | None = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def _num(v: Any) -> bool:
    """A finite number (NaN and Infinity are JSON to Python's json, and a 400-digit integer is no
    float: the one would raise past the loaders, the others make health's ages NaN)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _ints(v: Any, n: int | None = None, low: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(_int(x, low) for x in v)


def _hexes(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(h, str) and len(h) == 64 and _is_hex(h) for h in v)


def _is_hex(h: str) -> bool:
    try:
        bytes.fromhex(h)
    except ValueError:
        return False
    return True


def _sound(doc: dict[str, Any]) -> bool:
    """Whether every field of the memory `doc` is of the kind `to_json` writes."""
    disks, counts, lost = doc.get("disks"), doc.get("counts"), doc.get("lost")
    return ((doc.get("index") is None or _ints(doc.get("index"), 2)) and _int(doc.get("cutoff"), None)
            and _num(doc.get("whole_at")) and isinstance(doc.get("whole_by"), str) and _num(doc.get("tail_at", 0.0))
            and _int(doc.get("disputes")) and _int(doc.get("unknown"))
            and isinstance(counts, dict) and all(t in marks.TABLES and _ints(c, 2, 0) for t, c in counts.items())
            and isinstance(lost, dict) and all(t in marks.TABLES and isinstance(pair, list) and len(pair) == 2
                                               and all(_hexes(x) for x in pair) for t, pair in lost.items())
            and isinstance(disks, dict) and all(isinstance(r, dict) and _sound_disk(r) for r in disks.values()))


def _sound_disk(r: dict[str, Any]) -> bool:
    log_ = r.get("log")
    others = r.get("others")
    return (set(r) <= {f.name for f in fields(Remembered)} and isinstance(r.get("state"), str)
            and (r.get("file") is None or _ints(r.get("file"), 2)) and isinstance(others, dict)
            and all(_ints(v, 4, None) for v in others.values()) and _int(r.get("judged")) and _int(r.get("lines"))
            and isinstance(r.get("checked"), bool) and _int(r.get("off", 0)) and isinstance(r.get("tip", ""), str)
            and isinstance(log_, dict) and all(_int(log_.get(k)) for k in ("damaged", "other", "legacy", "broken_resets"))
            and _ints(log_.get("damaged_lines"), None, 0) and _int(log_.get("first"), None)
            and _int(log_.get("last"), None) and _ints(log_.get("resets"), None, None)
            and isinstance(log_.get("foreign"), dict) and all(_int(n) for n in log_["foreign"].values()))


def save(store: Store, mem: Memory, after: Memory | None) -> None:
    """Keep `mem`; a tail judgement (`after`: the memory it extended) does not replace a whole
    reading another process saved meanwhile. A reader that may not write the SSD's state keeps
    nothing (the next judgement reads the logs whole again)."""
    path = memory_path(store)
    try:
        if after is not None and (now := load(store)) is not None and now.whole_at != after.whole_at:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(mem.to_json()).encode())
    except OSError as e:
        _not_kept("the marks judgement", path, e)


def _not_kept(what: str, path: Path, e: OSError) -> None:
    """A memory that could not be written: quiet for a reader that may not write the SSD's
    state; a warning naming the file otherwise (a directory planted at its name makes every
    health read everything whole: the warning says why)."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
        # (ENOENT: the state directory went meanwhile; two healths saving at once each write a
        # temporary file of their own, hoardfs.base.files.writer_tmp)
        log.debug("cannot keep %s at %s: %s", what, path, e)
    elif isinstance(e, PlantedLink):  # (its words name the link and the next step)
        log.warning("cannot keep %s at %s: %s; every health reads it all again until it can", what, path, e.strerror)
    else:
        log.warning("cannot keep %s at %s (%s): every health reads it all again until it can — remove what is "
                    "at that name", what, path, e.strerror or e)


def forget(store: Store) -> None:
    """Drop the memory (a log that could not be read cleanly: the next judgement reads all whole)."""
    try:
        memory_path(store).unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("cannot drop %s: %s", memory_path(store), e)


#: the DiskLog facts a memory keeps of a judged prefix (its records are not kept: they agreed)
FACTS = ("damaged", "other", "legacy", "broken_resets", "damaged_lines", "foreign", "first", "last")


def facts(got: marks.DiskLog) -> dict[str, Any]:
    """What a judged prefix held, beside its records (which `settle` compared): the counts the
    findings name, and the span and snapshots of stamps that another log's records are
    compared with."""
    return {k: getattr(got, k) for k in FACTS} | {"resets": sorted(got.resets)}


def merged(old: dict[str, Any], tail: marks.DiskLog) -> marks.DiskLog:
    """The DiskLog of a whole log from what its judged prefix held (`facts`) and its tail, as
    a whole reading would have counted them (`late`: the tail's, the prefix stops before any)."""
    return marks.DiskLog(
        tail.label, set(), set(old["resets"]) | tail.resets, old["damaged"] + tail.damaged,
        old["other"] + tail.other, old["legacy"] + tail.legacy, old["broken_resets"] + tail.broken_resets,
        (old["damaged_lines"] + tail.damaged_lines)[:5], dict(old["foreign"]), True,
        min(old["first"], tail.first), max(old["last"], tail.last), list(tail.late),
        tail.judged, tail.judged_lines, tail.checked)


def age(mem: Memory | None, now: float | None = None) -> dict[str, Any]:
    """What `hoard health --json` says of the reading behind its marks findings."""
    if mem is None:
        return {}
    now = time.time() if now is None else now
    return {"whole_by": mem.whole_by, "whole_age_s": round(now - mem.whole_at, 1),
            "tail_age_s": round(now - mem.tail_at, 1) if mem.tail_at else None}


class Pointers:
    """The batch and view pointers on each disk that a judgement (any tool's) read and found to
    be what the index names (or a removal record the index does not name), by the identity of
    the file read — device, inode, size, mtime and ctime (`pointers.identity`) — and a digest
    of the index's pointer then. `hoard health` reads again only a pointer whose file or index
    pointer changed since: a rewrite is a new inode, a write through the file system moves its
    ctime — except one through a shared memory map of a page already written (the kernel stamps
    the first write only) and rot under the file system, which keep all five. So health reads
    every pointer again once the last reading of all of them (`whole_at`) is older than
    WHOLE_MAX_S, and `hoard check` and `hoard verify` read every one, every time (the marks
    logs' rule, above). A file whose ctime was within RACY_NS of its reading is not remembered
    (a second change in the same clock tick keeps its ctime: git's "racily clean"). Kept in
    `<ssd.root>/state/pointers-judged.json` for one index (its data file's identity); anything
    else found there is nothing remembered."""

    def __init__(self, store: Store, recall: bool) -> None:
        self.path = store.cfg.ssd.root / POINTERS
        self.index, self.started = index_identity(store), time.time()
        self.old: dict[str, dict[str, list]] = {}
        self.whole_at = self.started
        if recall:  # (check and verify read every pointer: they open no file of health's)
            whole_at, old = self._load()
            # (a reading "in the future" — written under a clock that was ahead, or Infinity —
            # would never age, and health would take a damaged pointer as judged until the next
            # check; one older than WHOLE_MAX_S, or ahead of this clock, is no reading)
            if 0 <= self.started - whole_at < WHOLE_MAX_S:
                self.old, self.whole_at = old, whole_at
        self.now: dict[str, dict[str, list]] = {}
        self.read = self.remembered = 0

    def _load(self) -> tuple[float, dict[str, dict[str, list]]]:
        try:
            doc = json.loads(_read(self.path))
            disks, whole_at = doc["disks"], doc["whole_at"]
            if doc.get("format") == 1 and doc.get("index") == self.index and _num(whole_at) and isinstance(
                    disks, dict) and all(
                    isinstance(keys, dict) and all(isinstance(v, list) and len(v) == 6 and _ints(v[:5], 5, None)
                                                   and isinstance(v[5], str) for v in keys.values())
                    for keys in disks.values()):
                return float(whole_at), disks
        except _UNREADABLE:
            pass
        return 0.0, {}

    @staticmethod
    def digest(want: bytes | None) -> str:
        return "none" if want is None else xxhash.xxh3_64_hexdigest(want)

    def fits(self, uuid: str, key: str, want: bytes | None, beside: Beside) -> bool:
        """Whether the disk's pointer at `key` is the file judged last time against this `want`."""
        got = self.old.get(uuid, {}).get(key)
        if got is None or got[5] != self.digest(want) or beside.identity(key) != got[:5]:
            return False
        self.now.setdefault(uuid, {})[key] = got
        self.remembered += 1
        return True

    def judged(self, uuid: str, key: str, want: bytes | None, ident: list[int]) -> None:
        """The file `ident` at `key` was read and found to be what the index names."""
        if ident and self.started * 1e9 - ident[4] > RACY_NS:
            self.now.setdefault(uuid, {})[key] = [*ident, self.digest(want)]

    def age(self) -> dict[str, Any]:
        """What `store.integrity.read` says of the pointers: how many were read and taken as
        judged, and how old the last reading of every one is."""
        return {"pointers_read": self.read, "pointers_remembered": self.remembered,
                "pointers_whole_age_s": round(self.started - self.whole_at, 1)}

    def save(self) -> None:
        """Keep what this judgement found, unless it is what was kept (a health refresh that
        read nothing new writes nothing); a reader that may not write the SSD keeps nothing."""
        if self.old and self.now == self.old:  # (no memory taken: this reading is a whole one, kept)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({"format": 1, "index": self.index, "whole_at": self.whole_at,
                                                "disks": self.now}).encode())
        except OSError as e:
            _not_kept("the pointers judged", self.path, e)
