"""The output contract of zones 3B, 3C and 3D: one way for a job to write an output that no
reader can mistake for complete before it is.

    with seal.output(cfg, "3C", "stage-42", job="stage:42", kind="stage", expected_bytes=n) as out:
        out.write("a/b.jpg", data)                 # or write under out.tmp, then out.declare(rel, size, sha)
    # sealed: <zone>/stage-42/{a/b.jpg, _MANIFEST.json, _JOB.json, _SEALED}

Order (docs/design.md, "Zones and reservations"): reserve `expected_bytes` (hoardfs.fsd.outputs.zones) →
write into `<zone>/.tmp/<id>/` → verify every file's size and sha256 against what the producer
declared, fsync each file and directory → `_MANIFEST.json` (every file, size, sha256) →
rename to `<zone>/<id>/` → `_JOB.json` (the job, times, expected and actual bytes and files,
the manifest's sha256) → an empty `_SEALED` last → release the reservation. Each file is
written tmp → fsync → rename → fsync the directory, so a crash leaves either no `_SEALED` (the
output is incomplete, and `hoard zones` says so) or a complete output.

On failure the reservation is released, the partial output removed (or kept for a look, with
`ssd.keep_failed_outputs`), and the error names the output and the cause.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, fsync_dir, json_bytes, read_in_zone
from hoardfs.base.modes import own_dir, refuse_unless_own
from hoardfs.base.paths import display, hostile_reason
from hoardfs.fsd.core import formats
from hoardfs.fsd.outputs import zones

FORMAT = formats.OUTPUT
MANIFEST_FORMAT = formats.OUTPUT_MANIFEST
MANIFEST, JOB, SEALED = "_MANIFEST.json", "_JOB.json", zones.SEALED
RESERVED_NAMES = (MANIFEST, JOB, SEALED)


class SealRefused(HoardError):
    """What the producer wrote is not what it declared: the output is not sealed."""

    exit_code = ExitCode.DATA


class OutputIncomplete(HoardError):
    """An output without `_SEALED` (or whose manifest does not match) read as if complete."""

    exit_code = ExitCode.DATA


class OutputFailed(HoardError):
    """A job's output failed; the message names the output and the cause."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


#: directories fsynced at once by `fsync_dirs`: each fsync waits for the SSD's cache flush, and
#: side by side they share the file system's journal commits and flushes (a stage of 10,000
#: files under 256 directories spent 0.3–0.5 s fsyncing them one by one)
FSYNC_THREADS = 8


def fsync_dirs(paths: list[str]) -> None:
    """fsync every directory of `paths`, FSYNC_THREADS at a time; the first error is raised,
    after every call ended."""
    if len(paths) <= 1:
        for p in paths:
            fsync_dir(Path(p))
        return
    with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, len(paths)), thread_name_prefix="fsync-dir") as pool:
        for _ in pool.map(lambda p: fsync_dir(Path(p)), paths):
            pass


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        os.fsync(f.fileno())  # the bytes the manifest vouches for are on the SSD before the rename
    return n, h.hexdigest()


@dataclass
class Output:
    cfg: Settings
    zone: str
    id: str
    job: str
    kind: str
    expected_bytes: int
    expected_files: int | None = None
    selector: Any = None
    layout: Any = None
    started: str = field(default_factory=_now)
    reservation: zones.Reservation | None = None
    declared: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: declared files the producer checked against their sha256 as it wrote them (and made
    #: durable with one syncfs): seal checks their size, not their bytes again
    verified: set[str] = field(default_factory=set)
    #: declared symbolic links: relative path → target (a view-mode output points into the mount)
    links: dict[str, str] = field(default_factory=dict)
    sealed: dict[str, Any] | None = None

    @property
    def tmp(self) -> Path:
        return self.cfg.ssd.zone_path(self.zone) / zones.TMP / self.id

    @property
    def final(self) -> Path:
        return self.cfg.ssd.zone_path(self.zone) / self.id

    def declare(self, rel: str, size: int, sha256: str, verified: bool = False) -> None:
        """What the producer says it wrote at `tmp/rel`; `seal` holds it to that. `verified`:
        the producer hashed exactly the bytes it wrote there and synced them (hoardfs.fsd.outputs.materialize),
        so seal checks the size only — hashing a 100 GB export a second time buys nothing."""
        why = hostile_reason(rel) or (f"{rel} is a name the output contract keeps for itself"
                                      if rel in RESERVED_NAMES else None)
        if why:
            raise SealRefused(f"output {self.zone}/{self.id}: {display(rel)} cannot be part of it: {why}")
        self.declared[rel] = (int(size), sha256.lower())
        if verified:
            self.verified.add(rel)
        else:
            self.verified.discard(rel)

    def link(self, rel: str, target: str) -> Path:
        """Make and declare a symbolic link `tmp/rel` → `target` (an absolute path: a view-mode
        output's entry into the mount). The manifest records it; nothing is copied."""
        why = hostile_reason(rel) or (f"{rel} is a name the output contract keeps for itself"
                                      if rel in RESERVED_NAMES else None)
        if why or not target.startswith("/"):
            raise SealRefused(f"output {self.zone}/{self.id}: a link {display(rel)} → {display(target)} cannot be "
                              f"part of it: {why or 'the target must be an absolute path'}")
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.symlink(target, path)
        self.links[rel] = target
        return path

    def write(self, rel: str, data: bytes) -> Path:
        """Write one small file into the output and declare it (producers of big files stream
        them under `tmp` themselves and `declare` what they computed)."""
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.declare(rel, len(data), hashlib.sha256(data).hexdigest())
        return path

    def seal(self) -> dict[str, Any]:
        """Verify, rename, write `_JOB.json` and `_SEALED`, release the reservation; the `_JOB`
        document. SealRefused (nothing renamed) when a file differs from its declaration."""
        files, walked, dirs = self._verify()
        body = json_bytes({"format": MANIFEST_FORMAT, "files": files}, sort_keys=True)
        atomic_write(self.tmp / MANIFEST, body)
        if self.final.exists():
            raise SealRefused(f"output {self.zone}/{self.id} exists already ({self.final}); not replaced — "
                              f"`hoard zones clean {self.id}` removes the old one")
        os.rename(self.tmp, self.final)
        fsync_dir(self.tmp.parent)
        fsync_dir(self.final.parent)
        doc = {"format": FORMAT, "zone": self.zone, "id": self.id, "job": self.job, "kind": self.kind,
               "selector": self.selector, "layout": self.layout, "started": self.started, "ended": _now(),
               "expected_bytes": self.expected_bytes, "actual_bytes": sum(f.get("size", 0) for f in files),
               "expected_files": self.expected_files, "actual_files": len([f for f in files if "link" not in f]),
               "manifest": MANIFEST, "manifest_sha256": hashlib.sha256(body).hexdigest()}
        _write_job(self.final, doc)
        atomic_write(self.final / SEALED, b"")
        # its bytes recorded now, from the verify's walk (a reservation does not walk it again):
        # what it counted, and the files and the top directory written since, as `du` counts them
        top = os.lstat(self.final)
        dirs[""] = [top.st_mtime_ns, top.st_size]
        zones.record_bytes(self.cfg, self.zone, top, walked + zones.charged(top) + sum(
            zones.charged(os.lstat(self.final / n)) for n in (MANIFEST, JOB, SEALED)), dirs)
        zones.release(self.cfg, self.zone, self.id)
        self.sealed = doc
        return doc

    def _verify(self) -> tuple[list[dict[str, Any]], int, dict[str, list[int]]]:
        """The manifest's entries, once every declared file and link is on disk as declared and
        every directory of the tree is fsynced; and from the same walk (an lstat per entry, once),
        what `zones.du` counts below `tmp` but `tmp` itself and a crashed seal's MANIFEST (the
        final one is written after), and each directory's (mtime_ns, size) by its path
        below `tmp`, taken before it is read — `zones.record_bytes`'s arguments."""
        tmp = str(self.tmp)
        cut = len(tmp) + 1
        on_disk: dict[str, os.stat_result] = {}  # relative path → lstat, everything but directories
        tops = [tmp]  # every directory of the tree, fsynced once the files check out
        dirs: dict[str, list[int]] = {}
        walked = 0
        for top in tops:  # (grows as it goes: each directory listed once, never through a link)
            try:
                listing = list(os.scandir(top))
            except FileNotFoundError:  # gone: every file declared in it is missing, below
                continue
            for e in listing:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:  # gone since the listing
                    continue
                rel = e.path[cut:]
                if rel == MANIFEST:
                    continue  # a crashed seal's: written anew below, counted once final
                if stat.S_ISDIR(st.st_mode):
                    dirs[rel] = [st.st_mtime_ns, st.st_size]
                    tops.append(e.path)
                else:
                    on_disk[rel] = st
                walked += zones.charged(st)
        where = f"output {self.zone}/{self.id} (job {self.job})"
        extra = sorted(on_disk.keys() - set(self.declared) - set(self.links))
        if extra:
            raise SealRefused(f"{where}: {len(extra)} file(s) the producer did not declare, e.g. "
                              f"{display(extra[0])}; not sealed")
        files = []
        base = tmp + "/"  # (joined as strings: a Path each cost more than the lstat)
        for rel, (size, sha) in sorted(self.declared.items()):
            at = base + rel
            # the walk's lstat: a regular file (not a link, whatever it points to), and its size
            seen = on_disk.get(rel)
            if seen is None or not stat.S_ISREG(seen.st_mode):
                raise SealRefused(f"{where}: {display(rel)} was declared but is not a regular file in {tmp}; "
                                  "not sealed")
            got_size, got_sha = (seen.st_size, sha) if rel in self.verified else sha256_file(Path(at))
            if got_size != size:
                raise SealRefused(f"{where}: {display(rel)} has {got_size} bytes, {size} were declared; not sealed")
            if got_sha != sha:
                raise SealRefused(f"{where}: {display(rel)} has sha256 {got_sha}, {sha} was declared; not sealed "
                                  "— the producer wrote something else than it computed")
            files.append({"path": rel, "size": size, "sha256": sha})
        for rel, target in sorted(self.links.items()):
            path = self.tmp / rel
            if not path.is_symlink() or os.readlink(path) != target:
                raise SealRefused(f"{where}: the link {display(rel)} → {display(target)} was declared but is not "
                                  "there; not sealed")
            files.append({"path": rel, "link": target})
        fsync_dirs(tops)
        return files, walked, dirs

    def prune(self, keep: set[str]) -> int:
        """Remove from `tmp` every file and link not in `keep` (relative paths), and the
        contract's own files a crashed seal left (`_MANIFEST.json`, its temporary): what a
        resumed producer's earlier attempt wrote that its plan no longer names. Returns how
        many were removed."""
        removed = 0
        for top, dirs, names in os.walk(self.tmp, topdown=False):
            for n in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                path = os.path.join(top, n)
                if os.path.relpath(path, self.tmp) not in keep:
                    os.unlink(path)
                    removed += 1
            if top != str(self.tmp) and not os.listdir(top):
                os.rmdir(top)
        return removed

    def fail(self, cause: BaseException, keep: bool = False) -> str:
        """Release the reservation and remove the partial output (kept with `keep` — a
        resumable producer's — or `ssd.keep_failed_outputs`); what happened to it, for the
        error message."""
        zones.release(self.cfg, self.zone, self.id)
        if keep or self.cfg.ssd.keep_failed_outputs:
            return f"its partial files are kept in {self.tmp} (`hoard zones clean {self.id}` removes them)"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.tmp)
            fsync_dir(self.tmp.parent)
        return "its partial files were removed"


def as_error(e: OSError, what: str) -> HoardError:
    """An SSD error while writing an output, as one line: a full file system is exit 6."""
    cause = f"{e.strerror or e} ({e.filename or 'no file named'})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HoardError(f"{what}: the SSD is full: {cause}; free space (`hoard zones`) and run the same command "
                          "again — what was written is kept", ExitCode.NO_SPACE)
    return HoardError(f"{what}: cannot write: {cause}; check the SSD (`dmesg`, `df`) and run the same command again",
                      ExitCode.UNAVAILABLE)


def _write_job(final: Path, doc: dict[str, Any]) -> None:
    atomic_write(final / JOB, json_bytes(doc, sort_keys=True))


def begin(cfg: Settings, zone: str, output_id: str, *, job: str, kind: str, expected_bytes: int,
          expected_files: int | None = None, selector: Any = None, layout: Any = None,
          next_step: str = "", resume: bool = False, reserve_bytes: int | None = None) -> Output:
    """Reserve the room (zones.ZoneFull if there is none) and make `<zone>/.tmp/<id>/`.
    `reserve_bytes`: what the files will occupy (zones.charge), when it is not
    `expected_bytes` (the files' own sizes, which `_JOB.json` compares with the actual ones).
    `resume`: what an earlier attempt left there is kept (a producer that checks what it
    finds, as hoardfs.fsd.outputs.materialize does, goes on from it); otherwise it is removed."""
    if zone not in zones.OUTPUT_ZONES:
        raise HoardError(f"zone {zone} holds no job outputs; outputs go to {', '.join(zones.OUTPUT_ZONES)}",
                         ExitCode.USAGE)
    out = Output(cfg, zone, output_id, job, kind, expected_bytes, expected_files, selector, layout)
    if os.path.lexists(out.final):
        # others write 3C: a link (or their own directory) planted at the output's name was taken
        # back to work below and the output written through it as root
        refuse_unless_own(out.final)
    if resume and out.final.is_dir() and not (out.final / SEALED).exists() and not out.tmp.exists():
        # a crash between the rename and `_SEALED`: the files are verified ones, back to work
        # in progress (nothing without `_SEALED` is read); the resumed seal writes it again
        _own_tmp(out)
        os.rename(out.final, out.tmp)
        fsync_dir(out.final.parent)
        fsync_dir(out.tmp.parent)
        for name in (JOB, SEALED):
            with contextlib.suppress(FileNotFoundError):
                (out.tmp / name).unlink()
    if out.final.exists():
        raise HoardError(f"output {zone}/{output_id} exists already ({out.final}); `hoard zones clean "
                         f"{output_id}` removes it, or choose another id", ExitCode.USAGE)
    # (a resumed attempt's files already in .tmp count as written against the reservation)
    out.reservation = zones.reserve(cfg, zone, output_id, job,
                                    expected_bytes if reserve_bytes is None else reserve_bytes, next_step)
    _own_tmp(out)
    if out.tmp.exists() and not resume:  # the leftover of an attempt whose job died (its reservation was stale)
        shutil.rmtree(out.tmp)
    out.tmp.mkdir(exist_ok=True)
    fsync_dir(out.tmp.parent)
    fsync_dir(out.tmp.parent.parent)  # `.tmp` itself may be new
    return out


def _own_tmp(out: Output) -> None:
    """`<zone>/.tmp` as this service's directory: others write 3C too, and a link planted there
    would take the output (written as root) anywhere."""
    out.tmp.parent.parent.mkdir(parents=True, exist_ok=True)
    own_dir(out.tmp.parent)


@contextlib.contextmanager
def output(cfg: Settings, zone: str, output_id: str, **kw: Any) -> Iterator[Output]:
    """`begin`, yield the output to the producer, `seal` it when the block ends (unless the
    producer sealed it); on any failure `fail` it and raise OutputFailed naming the cause
    (an interruption is re-raised as it is, after the clean-up)."""
    out = begin(cfg, zone, output_id, **kw)
    try:
        yield out
        if out.sealed is None:
            out.seal()
    except (HoardError, OSError) as e:
        what = out.fail(e)
        err = e if isinstance(e, HoardError) else as_error(e, f"output {zone}/{output_id}")
        raise OutputFailed(f"output {zone}/{output_id} of {out.job} failed: {err.message}; {what}",
                           err.exit_code) from e
    except BaseException as e:  # a bug or an interruption: cleaned up, then raised as it is (traceback)
        out.fail(e)
        raise


def check_sealed(path: Path, verify: bool = False) -> dict[str, Any]:
    """The `_JOB` document of a complete output; OutputIncomplete for anything else. With
    `verify`, every file is hashed again against the manifest."""
    name = f"{path.parent.name}/{path.name}"
    if not (path / SEALED).is_file():
        raise OutputIncomplete(f"output {name} is not sealed (no {SEALED}): it is incomplete and must not be "
                               f"read; `hoard zones clean {path.name}` removes it")
    try:
        # never through a link, a fifo or a device: 3C is written by a trainer's group too
        doc = json.loads(read_in_zone(path / JOB, 1 << 30))
        body = read_in_zone(path / MANIFEST, 1 << 30)
    except (OSError, ValueError) as e:
        raise OutputIncomplete(f"output {name}: {JOB} or {MANIFEST} unreadable ({e})") from None
    if hashlib.sha256(body).hexdigest() != doc.get("manifest_sha256"):
        raise OutputIncomplete(f"output {name}: {MANIFEST} does not match the sha256 {JOB} names")
    if verify:
        for f in json.loads(body)["files"]:
            p = path / f["path"]
            if "link" in f:
                if not p.is_symlink() or os.readlink(p) != f["link"]:
                    raise OutputIncomplete(f"output {name}: the link {display(f['path'])} differs from its manifest "
                                           "entry")
                continue
            got = sha256_file(p) if p.is_file() and not p.is_symlink() else (None, None)
            if got != (f["size"], f["sha256"]):
                raise OutputIncomplete(f"output {name}: {display(f['path'])} differs from its manifest entry")
    return doc
