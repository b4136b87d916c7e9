"""Zone accounting: what each SSD zone holds, what running jobs have reserved, what may go.

A zone's usage is the bytes allocated below it plus the part of every open reservation not
written yet. A job reserves its `expected_bytes` before it writes a byte (`reserve`) and
releases the reservation when its output is sealed or it failed (`release`):

* a new reservation that would take the zone past the deny threshold (`ssd.thresholds.deny`,
  90 %) is refused with one line naming the zone, how full it is, what the job needs and the
  biggest sealed outputs `hoard zones clean ID` could remove;
* past the emergency threshold (95 %) no new reservation is taken at all; jobs that hold one
  finish (`grow` lets them overshoot their estimate up to that threshold, no further);
* a quota is a promise the SSD's file system may not keep (zones share it, and other files
  fill it): a reservation the file system's free space cannot hold is refused too, naming
  the zone, its path, the free bytes and the need; a zone's `free_bytes` is the smaller of
  its quota's room and the file system's, and `hoard health` names a zone whose file system
  is nearly out of what its quota promises.

Reservations are files, `<ssd.root>/state/reservations/<zone>/<id>.json` (written atomically,
fsynced), so they survive a crash: each names its job, pid, the pid's start time, host, the
process space its pid belongs to (`hoardfs.base.proc.process_space`: name, machine id, boot id,
pid namespace) and creation time. One whose process is gone is stale — reclaimed by the next
`reserve` in its zone or `hoard zones clean`, and reported (`owner_gone`: as a seal's claim on
an S3 disk is judged). Every change to a zone's
reservations happens under an flock on `<ssd.root>/locks/zone-<zone>.lock`, held while the
zone is measured, so two processes never both get the last room.

`<zone>/<id>/` is one output (docs/design.md, "Zones and reservations"): sealed when it holds
`_SEALED` (the output contract, `hoardfs.fsd.outputs.seal`) — or, in 3B, `<id>.manifest.json` (a UA_1
package's own seal) — running while a live reservation names it, incomplete otherwise.

One module for all of zone accounting, though past 500 lines: reservations, usage, the
free-space check and `clean` read and write the same reservation files under the same zone
and space locks, and that locking holds only as a whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hoardfs.base.config import ZONES, Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, flocked, fsync_dir, read_in_zone
from hoardfs.base.paths import NAME_PATTERN
from hoardfs.base.proc import alive_since, earlier_boot, pid_start, process_space
from hoardfs.base.units import fmt_bytes

log = logging.getLogger(__name__)

#: the zones whose directories are job outputs (3A holds scraped input, not outputs)
OUTPUT_ZONES = ("3B", "3C", "3D")
#: the file a sealed output holds (hoardfs.fsd.outputs.seal writes it last)
SEALED = "_SEALED"
#: where an output is written before it is sealed: `<zone>/.tmp/<id>/`
TMP = ".tmp"
#: where an output removed "aside" waits for its deletion: `<zone>/.trash/<id>.<ns>/` (`clean(...,
#: aside=True)`, then `empty_trash`). A rename inside the zone's file system, so its bytes stay
#: counted as the zone's used bytes (`du` of the zone) until they are gone; never an output
#: (`outputs` skips dot names), so never a problem of `hoard health`.
TRASH = ".trash"
MiB, GiB = 1 << 20, 1 << 30
#: `hoard health` names a zone whose file system has less free space than this share of the
#: room its quota still promises. Zones share the SSD's file system and their quotas usually
#: add up to more than it holds (not every zone is full at once): flagging every zone whose
#: room exceeds the free space would flag a sound set-up for ever. Below 10 % the zone is as
#: good as full while its quota says otherwise; a single job too big for the file system is
#: refused by `reserve` anyway, in one line.
FS_SHORT_SHARE = 0.10


class ZoneFull(HoardError):
    """A reservation refused: the zone would pass its deny threshold, or is past emergency."""

    exit_code = ExitCode.NO_SPACE


class NoSuchOutput(HoardError):
    """`hoard zones clean ID` of an id no zone holds."""

    exit_code = ExitCode.DATA


class ZoneBusy(HoardError):
    """An output or reservation another live process holds."""

    exit_code = ExitCode.UNAVAILABLE


@dataclass
class Reservation:
    zone: str
    id: str  # the output it is for: `<zone>/<id>/` (and `<zone>/.tmp/<id>/`)
    job: str
    bytes: int
    pid: int
    pid_start: int | None  # the pid's start time (/proc/<pid>/stat): a reused pid is not the owner
    host: str
    created: str
    created_ns: int
    #: where `pid` names a process (hoardfs.base.proc.process_space); "" in a file written before it
    #: was recorded (then judged by `host` alone, as it was)
    space: str = ""
    #: set when read: its process is gone (`owner_gone`; another machine's or pid namespace's
    #: pid cannot be checked: live)
    stale: bool = field(default=False, compare=False)
    #: set when read: bytes already written to its output (they count as used, not reserved)
    written: int = field(default=0, compare=False)

    @property
    def outstanding(self) -> int:
        """The part still to be written: what the reservation adds to the zone's usage."""
        return 0 if self.stale else max(0, self.bytes - self.written)

    def describe(self) -> str:
        return f"job {self.job} (pid {self.pid} on {self.host}, since {self.created})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"outstanding": self.outstanding,
                               "age_s": round(max(0, time.time_ns() - self.created_ns) / 1e9, 1)}


# -- files and locks ----------------------------------------------------------------------

def reservations_dir(cfg: Settings, zone: str) -> Path:
    return cfg.ssd.root / "state" / "reservations" / zone


def _res_path(cfg: Settings, zone: str, output_id: str) -> Path:
    return reservations_dir(cfg, zone) / f"{output_id}.json"


@contextlib.contextmanager
def zone_lock(cfg: Settings, zone: str) -> Iterator[None]:
    """The zone's flock: whoever changes its reservations holds it while measuring the zone."""
    with flocked(_lock_path(cfg, f"zone-{zone}.lock")):
        yield


@contextlib.contextmanager
def space_lock(cfg: Settings) -> Iterator[None]:
    """Held (inside a zone's lock, never the other way round) while a reservation is checked
    against the free space of the file system all zones share, and saved: two jobs in two
    zones cannot both count on the same free bytes."""
    with flocked(_lock_path(cfg, "ssd-space.lock")):
        yield


def _lock_path(cfg: Settings, name: str) -> Path:
    locks = cfg.ssd.root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / name


def _check_id(zone: str, output_id: str) -> None:
    if zone not in ZONES:
        raise HoardError(f"no zone {zone!r}; zones are {', '.join(ZONES)}", ExitCode.USAGE)
    if not re.fullmatch(NAME_PATTERN, output_id) or output_id in (TMP, "_quarantine"):
        raise HoardError(f"{output_id!r} cannot name an output: use letters, digits and . _ - "
                         "(at most 128, starting with a letter or digit)", ExitCode.USAGE)


def charged(st: os.stat_result) -> int:
    """What a file counts against a quota: its allocated bytes, or its apparent size if that is
    larger — a sparse file (`truncate -s 6G` allocates 12 KB) holds what ingest reads, packages
    and stores, and counted only by its blocks it would slip past the 3A quota."""
    allocated = st.st_blocks * 512
    return max(allocated, st.st_size) if stat.S_ISREG(st.st_mode) else allocated


def du(path: os.PathLike[str] | str, dirs: dict[str, list[int]] | None = None) -> int:
    """Bytes below `path` as a quota counts them (`charged`), without following symlinks; 0
    for nothing there. A single file counts too. `dirs`: filled with every directory's
    (mtime_ns, size) by its path below `path` ("" for itself), each taken before the directory
    is read — a file added, removed or renamed in it after that changes them (`output_bytes`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    total = charged(st)
    root = os.fspath(path)
    stack = [root] if stat.S_ISDIR(st.st_mode) else []
    if dirs is not None and stack:
        dirs[""] = [st.st_mtime_ns, st.st_size]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total += charged(st)
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        if dirs is not None:
                            dirs[os.path.relpath(e.path, root)] = [st.st_mtime_ns, st.st_size]
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


#: a sealed output's recorded bytes are trusted this long, then it is walked again (a file
#: rewritten in place changes no directory: this bounds how long such an edit goes uncounted)
RECOUNT_S = 24 * 3600


def sizes_dir(cfg: Settings, zone: str) -> Path:
    """Where a zone's sealed outputs' bytes are recorded: one `<device>-<inode>.json` per output
    directory (an inode survives the rename into the trash)."""
    return cfg.ssd.root / "state" / "zone-bytes" / zone


def output_bytes(cfg: Settings, zone: str, p: os.PathLike[str] | str) -> int:
    """`du(p)` of an output directory (in the zone or its trash) — from its record while the
    output is sealed and not one of its directories changed since it was walked (a stat per
    directory, not per file), else walked (and recorded, if it is sealed). So a reservation
    costs what the zone's unsealed outputs and directories cost, not what its millions of
    sealed files do; a file added to a sealed output by hand changes its directory: the output
    is walked again and counted whole."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return du(p)
    record = sizes_dir(cfg, zone) / f"{st.st_dev}-{st.st_ino}.json"
    path = Path(p)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        doc = json.loads(record.read_bytes())
        got, dirs_was = doc["bytes"], doc["dirs"]
        # (a record from the future — the clock set back since — is as old as it can be: walked;
        # one that is not what `output_bytes` writes — damaged, edited — is walked too)
        if (isinstance(got, int) and got >= 0 and isinstance(dirs_was, dict) and "" in dirs_was
                and 0 <= time.time() - doc["at"] < RECOUNT_S and (path / SEALED).exists()
                and all(_same_dir(path / rel, was) for rel, was in dirs_was.items())):
            return got
    sealed = (path / SEALED).exists() or _seal_of(zone, path) is not None
    dirs: dict[str, list[int]] = {}
    total = du(p, dirs)
    if sealed and (path / SEALED).exists():  # (a 3B package sealed by its manifest is walked each time)
        record_bytes(cfg, zone, st, total, dirs)
    return total


def record_bytes(cfg: Settings, zone: str, st: os.stat_result, total: int, dirs: dict[str, list[int]]) -> None:
    """Record `total` (as `du` counts it) for the sealed output directory whose lstat is `st`,
    with `dirs` as `du(p, dirs)` fills it: each directory's (mtime_ns, size) taken before it
    was read — what `output_bytes` trusts until one of them changes. Best effort: an output
    not recorded is walked."""
    record = sizes_dir(cfg, zone) / f"{st.st_dev}-{st.st_ino}.json"
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record, json.dumps({"bytes": total, "dirs": dirs, "at": time.time()}).encode())


def _same_dir(path: Path, was: list[int]) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and [st.st_mtime_ns, st.st_size] == was


def _forget_bytes(cfg: Settings, zone: str, p: Path) -> None:
    """Drop the record of an output directory about to be removed (its inode may be reused)."""
    with contextlib.suppress(OSError):
        st = os.lstat(p)
        (sizes_dir(cfg, zone) / f"{st.st_dev}-{st.st_ino}.json").unlink()


def zone_bytes(cfg: Settings, zone: str) -> int:
    """`du` of the zone's directory, trash included, each sealed output counted by
    `output_bytes`: what the zone's quota counts."""
    zpath = cfg.ssd.zone_path(zone)
    if zone not in OUTPUT_ZONES:
        return du(zpath)
    try:
        total = charged(os.lstat(zpath))
        entries = list(os.scandir(zpath))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        try:
            whole = e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            if e.name == TRASH and e.is_dir(follow_symlinks=False):
                total += charged(e.stat(follow_symlinks=False))
                total += sum(output_bytes(cfg, zone, os.path.join(e.path, n)) for n in os.listdir(e.path))
            elif whole:
                total += output_bytes(cfg, zone, e.path)
            else:
                total += du(e.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


#: what one file adds to its directory: an ext4 entry is an 8-byte header and the name padded
#: to 4 bytes; an output's names are mostly a sha256 and an extension (~70 bytes)
DIRENT_BYTES = 80


def block_size(path: os.PathLike[str] | str) -> int:
    """The allocation unit of the file system holding `path` (statvfs f_frsize)."""
    st = os.statvfs(path)
    return st.f_frsize or st.f_bsize


def zone_block_size(where: os.PathLike[str] | str | tuple[Settings, str]) -> int:
    """`block_size` of a path, or of a (cfg, zone) pair's directory — measured at its nearest
    existing parent when it is not there yet."""
    path = Path(where[0].ssd.zone_path(where[1]) if isinstance(where, tuple) else where)
    while not path.exists() and path.parent != path:
        path = path.parent
    return block_size(path)


def charge(where: os.PathLike[str] | str | tuple[Settings, str], sizes: Iterable[int], dirs: int = 0) -> int:
    """The bytes a tree of files of these `sizes` will take on the file system of `where` (a
    path, or a (cfg, zone) pair: the zone's directory) as `du` counts them — what a job
    reserves (`reserve`), since a zone's usage is measured in allocated blocks. Each file is
    rounded up to the block size (152 files under 2 KB hold 46 KB and occupy 608 KB on 4 KiB
    blocks); `dirs`, the directories the tree makes, take a block each; the entries they hold
    DIRENT_BYTES a file. Sparse files and inline data (ext4 `inline_data`) take less: this
    errs on the side of the quota. A zone not there yet is measured at its nearest parent."""
    block = zone_block_size(where)
    files = total = 0
    for n in sizes:
        files += 1
        total += -(-int(n) // block) * block
    dirents = -(-files * DIRENT_BYTES // block) * block
    return total + dirs * block + dirents


def tree_dirs(paths: Iterable[str]) -> int:
    """The directories a tree of these relative file paths makes (every level, not only each
    file's parent: `a/b/c/f` makes a, a/b and a/b/c) — `charge`'s `dirs`."""
    dirs: set[str] = set()
    for p in paths:
        d = os.path.dirname(p)
        while d and d not in dirs:
            dirs.add(d)
            d = os.path.dirname(d)
    return len(dirs)


def fs_free(path: os.PathLike[str] | str) -> int:
    """Bytes an unprivileged writer may still allocate on the file system holding `path`
    (statvfs f_bavail × f_frsize): what any zone on it can really take."""
    st = os.statvfs(path)
    return st.f_bavail * (st.f_frsize or st.f_bsize)


#: this process's space (hoardfs.base.proc.process_space): read once, as a seal's claim reads it
_SPACE = process_space()


def owner_gone(r: Reservation) -> bool:
    """Whether the process that holds `r` has ended. Its pid is looked at only where it names a
    process — this space (machine, boot, pid namespace), with its start time: a host name alone
    is not that (a container or clone of the same name made a dead owner look alive, or a live
    one dead, and after a reboot the pid is another process's). A reservation made in an
    earlier boot of this machine is gone (none outlives a reboot) — made before this boot began:
    one of this name and machine id made since came from another kernel (a clone that kept the
    machine id, a gVisor or Kata sandbox sharing this SSD), and a running job's output was
    reclaimed under it. One from another machine or pid namespace cannot be checked and is
    live. A file without `space` (written before it was recorded) is judged by its host name,
    as it was."""
    if not r.space:
        return r.host == socket.gethostname() and not alive_since(r.pid, r.pid_start)
    if r.space != _SPACE:
        return earlier_boot(r.space, _SPACE, r.created_ns)
    return not alive_since(r.pid, r.pid_start)


def _mine(r: Reservation) -> bool:
    """Whether this process holds `r` (its pid, start time and space)."""
    here = r.space == _SPACE if r.space else r.host == socket.gethostname()
    return here and (r.pid, r.pid_start) == (os.getpid(), pid_start(os.getpid()))


def reservations(cfg: Settings, zone: str) -> list[Reservation]:
    """The zone's reservations, oldest first, each with `stale` and `written` filled in."""
    found = []
    zpath = cfg.ssd.zone_path(zone)
    fields = [k for k in Reservation.__dataclass_fields__ if k not in ("stale", "written")]
    for p in sorted(reservations_dir(cfg, zone).glob("*.json")):
        try:
            doc = json.loads(p.read_bytes())
            r = Reservation(**{k: doc[k] for k in fields if k in doc or k != "space"})
        except FileNotFoundError:  # released meanwhile (listing takes no lock)
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            # written atomically, so only a person's edit gets here: name it, never count it silently
            raise HoardError(f"reservation file {p} is unreadable ({e}); remove it if no job is writing "
                             f"{zpath / p.stem}", ExitCode.DATA) from None
        r.stale = owner_gone(r)
        r.written = du(zpath / TMP / r.id) + output_bytes(cfg, zone, zpath / r.id)
        found.append(r)
    return sorted(found, key=lambda r: r.created_ns)


def _save(cfg: Settings, r: Reservation) -> None:
    d = reservations_dir(cfg, r.zone)
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        fsync_dir(d.parent)
    doc = {k: v for k, v in asdict(r).items() if k not in ("stale", "written")}
    atomic_write(_res_path(cfg, r.zone, r.id), json.dumps(doc, sort_keys=True).encode())


def _drop(cfg: Settings, zone: str, output_id: str) -> bool:
    p = _res_path(cfg, zone, output_id)
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(p.parent)
    return True


def _reclaim(cfg: Settings, zone: str, rs: list[Reservation]) -> list[Reservation]:
    """Remove the stale ones of `rs` (the caller holds the zone lock); return the live ones."""
    live = []
    for r in rs:
        if r.stale and _sealed(cfg, zone, r.id):
            _drop(cfg, zone, r.id)
            log.info("zone %s: released the reservation of %s for %s: its process died after sealing the output",
                     zone, r.describe(), r.id)
        elif r.stale:
            _drop(cfg, zone, r.id)
            log.warning("zone %s: reclaimed the stale reservation of %s for %s (%s): its process is gone; "
                        "what it wrote stays until `hoard zones clean %s`", zone, r.describe(), r.id,
                        fmt_bytes(r.bytes), r.id)
        else:
            live.append(r)
    return live


# -- usage --------------------------------------------------------------------------------

def level(cfg: Settings, ratio: float) -> str:
    th = cfg.ssd.thresholds
    return ("emergency" if ratio >= th.emergency else "deny" if ratio >= th.deny
            else "warn" if ratio >= th.warn else "ok")


def quota(cfg: Settings, zone: str) -> int:
    return int(cfg.ssd.zones[zone].quota_gb * GiB)  # type: ignore[index]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def outputs(cfg: Settings, zone: str, rs: list[Reservation] | None = None) -> list[dict[str, Any]]:
    """The zone's outputs, biggest first: `<zone>/<id>/` and unsealed `<zone>/.tmp/<id>/`, each
    `sealed`, `running` (a live reservation names it) or `incomplete` (nothing will finish it)."""
    if zone not in OUTPUT_ZONES:
        return []
    zpath = cfg.ssd.zone_path(zone)
    live = {r.id: r for r in (reservations(cfg, zone) if rs is None else rs) if not r.stale}
    found: dict[str, dict[str, Any]] = {}
    now = time.time()
    for where in (zpath / TMP, zpath):
        try:
            entries = sorted(os.scandir(where), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if not e.is_dir(follow_symlinks=False) or e.name.startswith("."):
                continue
            p = Path(e.path)
            try:
                mtime = p.stat().st_mtime
            except FileNotFoundError:  # removed meanwhile (listing takes no lock)
                continue
            entry = found.setdefault(e.name, {"id": e.name, "zone": zone, "bytes": 0, "paths": []})
            entry["bytes"] += output_bytes(cfg, zone, p) if where == zpath else du(p)
            entry["paths"].append(str(p))
            seal = _seal_of(zone, p) if where == zpath else None
            if seal is not None:
                entry.update(state="sealed", kind=seal[0], sealed=_iso(seal[1]))
            elif entry.get("state") != "sealed":
                entry.update(state="running" if e.name in live else "incomplete", kind=None,
                             age_s=round(now - mtime, 1))
                if e.name in live:
                    entry["job"], entry["pid"] = live[e.name].job, live[e.name].pid
    return sorted(found.values(), key=lambda o: (-o["bytes"], o["id"]))


def _seal_of(zone: str, p: Path) -> tuple[str, float] | None:
    """(kind, sealed at) of a complete output directory, None if it is not complete."""
    with contextlib.suppress(FileNotFoundError):
        sealed = (p / SEALED).stat().st_mtime
        kind = "output"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            # 3C is written by a trainer's group too: never through a link, a fifo or a device,
            # at most 64 KB (a link to a root-only file showed its "kind"; a fifo hung health)
            kind = str(json.loads(read_in_zone(p / "_JOB.json")).get("kind") or kind)
        return kind, sealed
    if zone == "3B":
        # a UA_1 package's seal is its manifest, written last (tmp → fsync → rename)
        with contextlib.suppress(FileNotFoundError):
            return "ingest-package", (p / f"{p.name}.manifest.json").stat().st_mtime
        if p.name == "db-dumps":  # `hoard db backup` copies each dump whole (atomic_copy)
            return "db-dumps", max((m for f in p.iterdir() if (m := _mtime(f)) is not None), default=p.stat().st_mtime)
    return None


def _mtime(path: Path) -> float | None:
    """The entry's own mtime (a link's, never what it names); None when it went since it was
    listed (a dump's temporary name, renamed a moment later)."""
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return None


#: every zone's reservations as one `usage` call read them (or what reading them raised)
Read = dict[str, "list[Reservation] | HoardError"]


def _read_all(cfg: Settings) -> Read:
    read: Read = {}
    for z in ZONES:
        try:
            read[z] = reservations(cfg, z)
        except HoardError as e:
            read[z] = e
    return read


def _reservations(cfg: Settings, zone: str, read: Read | None) -> list[Reservation]:
    """`reservations(cfg, zone)`, or what `read` holds for it (raising what reading raised)."""
    if read is None:
        return reservations(cfg, zone)
    got = read[zone]
    if isinstance(got, HoardError):
        raise got
    return got


def zone_usage(cfg: Settings, zone: str, read: Read | None = None) -> dict[str, Any]:
    """One zone's figures for `hoard zones` and `hoard health` (never changes anything).
    `read`: every zone's reservations, read once by the caller (`usage`): each zone counts
    all zones' pending bytes, which would otherwise read every zone's files again."""
    zpath = cfg.ssd.zone_path(zone)
    q = quota(cfg, zone)
    present = zpath.is_dir()
    error = None
    try:
        rs = _reservations(cfg, zone, read) if present else []
    except HoardError as e:  # health reports, it does not crash: the zone is shown without them
        rs, error = [], e.message
    used = zone_bytes(cfg, zone) if present else 0
    reserved = sum(r.outstanding for r in rs)
    ratio = (used + reserved) / q
    room = max(0, q - used - reserved)
    fs = fs_free(zpath) if present else 0
    try:  # what running jobs in any zone reserved will come out of the shared file system too
        pending = pending_on_fs(cfg, zone, read=read)[0] if present else 0
    except HoardError:  # another zone's reservation file is damaged: its own usage names it
        pending = reserved
    fs_room = max(0, fs - pending)
    return {"path": str(zpath), "present": present, "quota_bytes": q, "used_bytes": used,
            "reserved_bytes": reserved, "fs_free_bytes": fs, "free_bytes": min(room, fs_room),
            "fs_short": present and fs_room < FS_SHORT_SHARE * room, "used_ratio": round(ratio, 4),
            "trash_bytes": trash_bytes(cfg, zone) if present and zone in OUTPUT_ZONES else 0,
            "level": level(cfg, ratio), "reservations": [r.to_json() for r in rs],
            "outputs": outputs(cfg, zone, rs) if present else [], "error": error}


def usage(cfg: Settings) -> dict[str, dict[str, Any]]:
    """Every zone's figures; each zone's reservation files are read once."""
    read = _read_all(cfg)
    return {z: zone_usage(cfg, z, read) for z in ZONES}


# -- reserving ----------------------------------------------------------------------------

def reserve(cfg: Settings, zone: str, output_id: str, job: str, nbytes: int, next_step: str = "",
            hold: int | None = None) -> Reservation:
    """Reserve `nbytes` in `zone` for `<zone>/<id>/` before writing it; ZoneFull if the zone
    would pass its deny threshold (or is past emergency), naming what could be removed and
    then `next_step`. Reserving an id this process already holds replaces the reservation; one
    a dead process held is reclaimed; one another live process holds is ZoneBusy. `hold`: the
    zone must have room for `nbytes` now, but only this much of it is held (the writer `grow`s
    it with `limit="deny"` as its bytes come: an HTTP upload, whose sender sets its pace)."""
    _check_id(zone, output_id)
    zpath = cfg.ssd.zone_path(zone)
    if not zpath.is_dir():  # the SSD not mounted: write nothing (no lock, no reservation) on the wrong disk
        raise HoardError(f"zone {zone}: {zpath} does not exist — the SSD is not mounted, or not initialised; "
                         "nothing was written; mount it, or run `hoard init`", ExitCode.UNAVAILABLE)
    with zone_lock(cfg, zone):
        rs = _reclaim(cfg, zone, reservations(cfg, zone))
        mine = next((r for r in rs if r.id == output_id), None)
        if mine is not None and not _mine(mine):
            raise ZoneBusy(f"zone {zone}: output {output_id} is reserved by {mine.describe()}; wait for it to "
                           "finish (or stop it: its reservation is then reclaimed)")
        others = [r for r in rs if r.id != output_id]
        used = zone_bytes(cfg, zone)
        reserved = sum(r.outstanding for r in others)
        written = du(zpath / TMP / output_id) + output_bytes(cfg, zone, zpath / output_id)
        need = max(0, nbytes - written)
        q, th = quota(cfg, zone), cfg.ssd.thresholds
        if (used + reserved) >= th.emergency * q or used + reserved + need > th.deny * q:
            raise ZoneFull(refusal(cfg, zone, job, need, used, reserved, others, next_step))
        now = time.time_ns()
        r = Reservation(zone=zone, id=output_id, job=job, bytes=nbytes if hold is None else min(hold, nbytes),
                        pid=os.getpid(),
                        pid_start=pid_start(os.getpid()), host=socket.gethostname(),
                        created=_iso(now / 1e9), created_ns=now, space=_SPACE, written=written)
        with space_lock(cfg):
            _check_fs(cfg, zone, output_id, job, need, next_step)
            _save(cfg, r)
        return r


def grow(cfg: Settings, r: Reservation, nbytes: int, limit: str = "emergency") -> Reservation:
    """A running job needs more than it reserved: allowed up to the emergency threshold (past
    deny, so work under way can finish), refused beyond it. `limit="deny"`: up to the deny
    threshold, as a new reservation (bytes `reserve` checked but did not `hold`)."""
    with zone_lock(cfg, r.zone):
        rs = [x for x in reservations(cfg, r.zone) if not x.stale and x.id != r.id]
        zpath = cfg.ssd.zone_path(r.zone)
        used, reserved = zone_bytes(cfg, r.zone), sum(x.outstanding for x in rs)
        written = du(zpath / TMP / r.id) + output_bytes(cfg, r.zone, zpath / r.id)
        q, th = quota(cfg, r.zone), cfg.ssd.thresholds
        if used + reserved + max(0, nbytes - written) > (th.deny if limit == "deny" else th.emergency) * q:
            raise ZoneFull(refusal(cfg, r.zone, r.job, max(0, nbytes - written), used, reserved, rs, "",
                                   limit="" if limit == "deny" else "emergency"))
        r.bytes = nbytes
        with space_lock(cfg):
            _check_fs(cfg, r.zone, r.id, r.job, max(0, nbytes - written), "")
            _save(cfg, r)
        return r


def pending_on_fs(cfg: Settings, zone: str, skip_id: str = "", read: Read | None = None) -> tuple[int, list[str]]:
    """Bytes the live reservations of every zone on `zone`'s file system have still to write
    (but `skip_id`'s in `zone`), and those zones: the SSD's zones share its free space.
    `read`: the reservations as already read (see `zone_usage`), else they are read now."""
    dev = os.stat(cfg.ssd.zone_path(zone)).st_dev
    total, where = 0, []
    for z in ZONES:
        try:
            if os.stat(cfg.ssd.zone_path(z)).st_dev != dev:
                continue
        except (FileNotFoundError, KeyError):
            continue
        try:
            rs = _reservations(cfg, z, read)
        except OSError as e:  # that zone's own usage names it; it holds nothing this one can count on
            log.warning("zone %s: its reservations cannot be read (%s)", z, e)
            continue
        n = sum(r.outstanding for r in rs if not r.stale and not (z == zone and r.id == skip_id))
        if n:
            total += n
            where.append(z)
    return total, where


def _check_fs(cfg: Settings, zone: str, output_id: str, job: str, need: int, next_step: str) -> None:
    """ZoneFull when the zone's file system cannot hold `need` beside the bytes other jobs —
    in any zone on that file system — reserved and have still to write, whatever the quota
    says. The caller holds `space_lock`."""
    if need <= 0:
        return
    zpath = cfg.ssd.zone_path(zone)
    free = fs_free(zpath)
    reserved, zones_ = pending_on_fs(cfg, zone, output_id)
    if need + reserved <= free:
        return
    held = (f" besides {fmt_bytes(reserved)} that running jobs reserved there (zone {', '.join(zones_)}) and have "
            "not written yet" if reserved else "")
    raise ZoneFull(f"zone {zone}: the file system holding {zpath} has {fmt_bytes(free)} free and {job} needs "
                   f"{fmt_bytes(need)}{held}, though the zone's quota has room; free space on that file system (the "
                   f"other zones and anything outside hoardfs share it) or lower ssd.zones.{zone}.quota_gb to what "
                   f"it can hold" + (f"; then {next_step}" if next_step else ""))


def _sealed(cfg: Settings, zone: str, output_id: str) -> bool:
    """The output is whole: `_SEALED`, or a 3B package's manifest (what `outputs` calls sealed)."""
    p = cfg.ssd.zone_path(zone) / output_id
    return p.is_dir() and _seal_of(zone, p) is not None


def release_stale(cfg: Settings, zone: str, output_id: str) -> bool:
    """A job run again that finds its output sealed: the reservation a killed run left (it
    died between the seal and the release) is dropped if its process is gone; True if it was."""
    with zone_lock(cfg, zone):
        mine = next((r for r in reservations(cfg, zone) if r.id == output_id), None)
        return mine is not None and mine.stale and _drop(cfg, zone, output_id)


def release(cfg: Settings, zone: str, output_id: str) -> bool:
    """Drop the reservation of `<zone>/<id>/` (its output sealed, or its job failed); True if
    there was one. Idempotent."""
    with zone_lock(cfg, zone):
        return _drop(cfg, zone, output_id)


def refusal(cfg: Settings, zone: str, job: str, need: int, used: int, reserved: int, rs: list[Reservation],
            next_step: str, limit: str = "") -> str:
    """The one line a refused reservation says: the zone, how full, what the job needs, what
    could go and what then."""
    q, th = quota(cfg, zone), cfg.ssd.thresholds
    pct = (used + reserved) / q
    held = f" + {fmt_bytes(reserved)} reserved by {len(rs)} running job{'s' if len(rs) != 1 else ''}" if rs else ""
    full = f"it is {pct:.0%} full ({fmt_bytes(used)} on disk{held}, of its {fmt_bytes(q)} quota)"
    if limit == "emergency" or (used + reserved) >= th.emergency * q:
        head = (f"zone {zone} is past its emergency threshold ({th.emergency:.0%}): only jobs already holding "
                f"a reservation may finish, and {job} needs {fmt_bytes(need)} more; {full}")
    else:
        room = max(0, int(th.deny * q) - used - reserved)
        head = (f"zone {zone} has room for {fmt_bytes(room)} below its deny threshold ({th.deny:.0%}) and {job} "
                f"needs {fmt_bytes(need)}; {full}")
    sealed = [o for o in outputs(cfg, zone, rs) if o["state"] == "sealed"][:3]
    if sealed:
        what = ("Biggest sealed outputs: " + ", ".join(f"{o['id']} ({fmt_bytes(o['bytes'])})" for o in sealed)
                + " — `hoard zones clean ID` removes one (copy away first what must be kept)")
    else:
        what = (f"Nothing in it is a sealed output `hoard zones clean` could remove; free space in "
                f"{cfg.ssd.zone_path(zone)}")
    return f"{head}. {what} (or raise ssd.zones.{zone}.quota_gb)" + (f"; then {next_step}" if next_step else "")


# -- cleaning -----------------------------------------------------------------------------

def clean(cfg: Settings, output_id: str, zone: str | None = None, aside: bool = False) -> dict[str, Any]:
    """Remove the output `output_id` (sealed, or incomplete with no live job) from its zone and
    release its reservation; refuse one a live process still writes, naming the pid. `aside`:
    rename its directories into `<zone>/.trash/` at once (atomic, whatever their size; their
    bytes still count as the zone's until `empty_trash` deletes them) instead of deleting them
    file by file here."""
    if zone is not None and zone not in OUTPUT_ZONES:
        raise HoardError(f"zone {zone} holds no job outputs (`hoard zones clean` works on "
                         f"{', '.join(OUTPUT_ZONES)})", ExitCode.USAGE)
    zones = [zone] if zone else list(OUTPUT_ZONES)
    for z in zones:
        _check_id(z, output_id)
    hits = [z for z in zones if any(p.is_dir() for p in _paths(cfg, z, output_id))
            or _res_path(cfg, z, output_id).exists()]
    if not hits:
        raise NoSuchOutput(f"no output {output_id} in zone{'s' if len(zones) > 1 else ''} {', '.join(zones)}; "
                           "`hoard zones` lists them")
    if len(hits) > 1:
        raise HoardError(f"output {output_id} is in zones {', '.join(hits)}; say which with --zone", ExitCode.USAGE)
    z = hits[0]
    with zone_lock(cfg, z):
        rs = reservations(cfg, z)
        mine = next((r for r in rs if r.id == output_id), None)
        if mine is not None and not mine.stale and mine.space and mine.space != _SPACE:
            # (its pid names a process of that space only: here "stop pid N" may name any other one)
            raise ZoneBusy(f"zone {z}: output {output_id} is reserved by {mine.describe()}, made in another machine, "
                           f"boot or pid namespace ({mine.space}; this process: {_SPACE}): its pid cannot be checked "
                           f"here; run `hoard zones clean {output_id}` where that job ran, or, if no job writes it "
                           f"any more, remove {_res_path(cfg, z, output_id)} and run this again")
        if mine is not None and not mine.stale:
            raise ZoneBusy(f"zone {z}: output {output_id} is still being written by {mine.describe()}; let it "
                           f"finish, or stop pid {mine.pid} first (its reservation is then stale and "
                           f"`hoard zones clean {output_id}` removes it)")
        state = next((o["state"] for o in outputs(cfg, z, rs) if o["id"] == output_id), "reservation only")
        view = _view_of(cfg.ssd.zone_path(z) / output_id)
        freed = 0
        trashed = []
        for p in _paths(cfg, z, output_id):
            if p.is_dir():
                if aside:
                    trashed.append(_to_trash(cfg, z, p))
                    continue
                freed += output_bytes(cfg, z, p)
                _forget_bytes(cfg, z, p)
                # unseal first: a crash half-way through the removal must not leave a "sealed" rest
                with contextlib.suppress(FileNotFoundError):
                    (p / SEALED).unlink()
                shutil.rmtree(p)
                fsync_dir(p.parent)
        if mine is not None:
            # its bytes are gone, or (aside) counted as the zone's used bytes in .trash
            _drop(cfg, z, output_id)
    res = {"zone": z, "id": output_id, "state": state, "freed_bytes": freed, "view": view,
           "stale_reservation": mine.to_json() if mine is not None else None}
    return res | ({"trashed": trashed} if aside else {})


def _to_trash(cfg: Settings, zone: str, p: Path) -> str:
    """Rename `p` (an output's directory in `zone`) into the zone's trash; its trash name."""
    trash = cfg.ssd.zone_path(zone) / TRASH
    if not trash.is_dir():
        trash.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(trash.parent)
    name = f"{p.name}.{time.time_ns()}"
    os.rename(p, trash / name)  # the same file system: atomic, one entry whatever it holds
    fsync_dir(p.parent)
    fsync_dir(trash)
    return name


def trash_bytes(cfg: Settings, zone: str) -> int:
    """What the zone's trash still holds (counted in its used bytes until deleted): its
    entries, not the directory itself."""
    trash = cfg.ssd.zone_path(zone) / TRASH
    try:
        return sum(output_bytes(cfg, zone, trash / name) for name in os.listdir(trash))
    except (FileNotFoundError, NotADirectoryError):
        return 0


def empty_trash(cfg: Settings, zones: Iterable[str] = OUTPUT_ZONES) -> dict[str, Any]:
    """Delete what `clean(..., aside=True)` put into each zone's trash. Idempotent and safe to run
    twice at once or after a delete that was killed half-way: what is gone already is skipped,
    what is left is deleted now. Returns {"entries": N, "freed_bytes": B}."""
    entries = freed = 0

    def gone_already(func: Any, path: str, exc: Any) -> None:
        if not isinstance(exc[1], FileNotFoundError):
            raise exc[1]

    for z in zones:
        trash = cfg.ssd.zone_path(z) / TRASH
        try:
            names = sorted(os.listdir(trash))
        except FileNotFoundError:
            continue
        for name in names:
            p = trash / name
            freed += output_bytes(cfg, z, p)
            _forget_bytes(cfg, z, p)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, onerror=gone_already)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            entries += 1
        if names:
            fsync_dir(trash)
    return {"entries": entries, "freed_bytes": freed}


def _view_of(final: Path) -> str | None:
    """The view a view-mode output published (its `_JOB.json`), which goes with it."""
    try:
        doc = json.loads((final / "_JOB.json").read_bytes())
    except (OSError, ValueError):
        return None
    sel = doc.get("selector")
    return sel.get("view") if isinstance(sel, dict) and isinstance(sel.get("view"), str) else None


def _paths(cfg: Settings, zone: str, output_id: str) -> list[Path]:
    zpath = cfg.ssd.zone_path(zone)
    return [zpath / output_id, zpath / TMP / output_id]
