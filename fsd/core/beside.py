"""What a disk keeps beside its shards: the `Beside` interface, and `LocalBeside`, its files on
an HDD's root.

Every disk keeps, beside its shards, what `hoard index rebuild` or a person needs with only the
disks left (docs/design.md, "Beside the shards"):

- small named files, read whole and replaced atomically and durably: the batch and view
  pointers (`batches/<name>.json`, `views/<name>.json`), the db-dump pointer
  (`.hoard-db-dump.json`), the marker a forgotten disk carries (`.hoard-forgotten.json`);
- the **marks log** (hoardfs.fsd.core.marks: its lines and their checks), appended by every writer
  inside its index transaction and now and then replaced by a snapshot of the index's marks,
  with the lines appended meanwhile kept after it;
- the index copies (`index-copy/`, `hoard index backup`);
- a folder for work in progress (`tmp/`) and one for what was set aside (`orphans/`), both
  swept by the orphan sweep.

Callers (hoardfs.fsd.io.copies, hoardfs.fsd.io.integrity, hoardfs.fsd.maintenance) reach them only through a disk's
`beside` (tests/test_layering.py): `LocalBeside` keeps them as the files the store always wrote
under the disk's root (a store made before this interface opens unchanged);
`hoardfs.fsd.core.s3files.S3Beside` keeps them as objects in the disk's bucket.

Names are relative (`batches/x.json`); the marks log has no name here — it is "the" log
(`marks/marks.log` on a local disk). `wrote` lists, for the caller's `on_disk`, the device each
file went to (a disk that dropped off and came back during a write took it beside itself, not
on it: `landed` tells); a backend without devices leaves it empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import xxhash

from hoardfs.base.files import atomic_write, create_new, fsync_dir
from hoardfs.base.modes import FILE, rewrite_mode
from hoardfs.fsd.core import marks, pointers
from hoardfs.fsd.core.diskid import ORPHANS_DIR as ORPHANS
from hoardfs.fsd.core.diskid import TMP_DIR as TMP
from hoardfs.fsd.core.layout import MARKS_DIR, MARKS_LOG
from hoardfs.fsd.core.spill import Spill

#: the marks log's name among the files (the one a local disk writes)
MARKS_NAME = f"{MARKS_DIR}/{MARKS_LOG}"
#: where `hoard index backup` puts its copy of the index
INDEX_COPY = "index-copy"
#: the bytes before a judged length whose hash is kept (`marks_tip`): the last record or two
#: judged (more would also catch rot in them — `hoard verify` reads every byte for that)
TIP = 256
#: the name of gc's space reservation in tmp/ (removed by the orphan sweep whatever its age)
GC_RESERVE = "gc-reserve"


class Beside(Protocol):
    """What a disk keeps beside its shards (module docstring)."""

    #: where it is, for messages: a folder, or s3://bucket
    where: str

    def shown(self, name: str) -> str: ...  # a file's place, for a message
    # the bytes of a small file: FileNotFoundError when there is none, OSError when it does not
    # read (EINVAL: not a regular file), ValueError when larger than pointers.POINTER_MAX
    def read(self, name: str, ident: list[int] | None = None) -> bytes: ...  # `ident`: gets identity()'s of what was read
    def identity(self, name: str) -> list[int] | None: ...  # a local file's (device, inode, size, mtime, ctime); else None
    def write(self, name: str, body: bytes, wrote: list[int]) -> None: ...  # atomic, durable
    # the stems of the files `folder/*<suffix>`, sorted; OSError when the folder does not list
    def names(self, folder: str, suffix: str) -> list[str]: ...
    def planted(self, name: str) -> bool: ...  # something not a file of ours at that name
    def in_the_way(self, name: str) -> str: ...  # what a writer cannot replace there, or ""
    def landed(self, wrote: list[int]) -> bool: ...  # every file `wrote` lists is on this disk

    # the marks log
    def marks_where(self) -> str: ...
    def marks_append(self, body: bytes, wrote: list[int]) -> None: ...  # durable when it returns
    # the log's first non-blank line and its last line (None, None: no log, or an empty one)
    def marks_ends(self) -> tuple[bytes | None, bytes | None]: ...
    def marks_size(self) -> int: ...  # what it takes (0: none): a snapshot replaces it when large
    # whether reading the log costs so many requests that the next writable open should replace
    # it by a snapshot without waiting for gc (a local file: never — one read is one file)
    def marks_crowded(self) -> bool: ...
    def marks_read(self, planted: list[str] | None = None, label: str = "", spill: Spill | None = None,
                   src: int = 0, cutoff: int | None = None) -> marks.DiskLog: ...
    def marks_read_tail(self, label: str, spill: Spill, src: int, cutoff: int, start: int, lines: int,
                        checked: bool) -> marks.DiskLog: ...
    # (identity of the log or None, the other logs beside it, its length or -1), for a judgement
    # remembered of the log's prefix (hoardfs.fsd.io.judged); None: none is remembered, it is read whole
    def marks_files(self) -> tuple[list[int] | None, dict[str, list[int]], int]: ...
    def marks_tip(self, judged: int, file: list[int] | None) -> str: ...
    # a snapshot: `cut` notes the log now, `snapshot` writes one (not yet in force), `swap` puts
    # it in force with what the log took since the cut after it; `discard` drops one not swapped
    def marks_cut(self) -> Any: ...
    def marks_snapshot(self, chunks: Iterable[bytes], wrote: list[int]) -> None: ...
    def marks_swap(self, cut: Any, wrote: list[int]) -> None: ...
    def marks_discard(self) -> None: ...
    def marks_leftover(self) -> bool: ...  # a killed snapshot's file is there

    # a copy of the index: `fill(folder)` writes its files into a local folder, kept on the disk
    def put_index_copy(self, fill: Callable[[Path], None]) -> None: ...
    # the stamp.json of the copy kept (None: none), and its files fetched into a new local folder
    def index_copy_stamp(self) -> bytes | None: ...
    def get_index_copy(self, into: Path) -> None: ...
    # the orphan sweep: tmp/ files older than `grace_s` (and gc's reservation) removed — how many;
    # with `repair`, what was set aside longer ago removed — (where, bytes) of each
    def sweep(self, now: float, grace_s: float, repair: bool) -> tuple[int, list[tuple[str, int]]]: ...


class LocalBeside:
    """The files beside a local disk's shards, under its root (the layout of docs/design.md)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def __repr__(self) -> str:
        return f"LocalBeside({self.root})"

    def _log(self) -> Path:
        return marks.log_path(self.root)

    # -- small files -----------------------------------------------------------------------

    def shown(self, name: str) -> str:
        return pointers.shown(self.root / name)

    def read(self, name: str, ident: list[int] | None = None) -> bytes:
        return pointers.read(self.root / name, ident)

    def identity(self, name: str) -> list[int] | None:
        try:
            st = os.lstat(self.root / name)
        except OSError:
            return None
        return pointers.identity(st) if stat.S_ISREG(st.st_mode) else None

    def write(self, name: str, body: bytes, wrote: list[int]) -> None:
        path = self.root / name
        if path.parent != self.root:  # (never the root itself: a disk whose root is gone takes nothing)
            path.parent.mkdir(exist_ok=True)
        atomic_write(path, body, prepare=lambda fd: wrote.append(os.fstat(fd).st_dev))

    def names(self, folder: str, suffix: str) -> list[str]:
        return sorted(p.stem for p in (self.root / folder).glob(f"*{suffix}"))

    def planted(self, name: str) -> bool:
        return pointers.planted(self.root / name)

    def in_the_way(self, name: str) -> str:
        """A directory at the name, or something that is not a directory at its folder's."""
        path = self.root / name
        if os.path.isdir(path) and not os.path.islink(path):
            return f"a directory stands at {pointers.shown(path)},"
        if os.path.lexists(path.parent) and not os.path.isdir(path.parent):
            return f"{pointers.shown(path.parent)} is not a directory,"
        return ""

    def landed(self, wrote: list[int]) -> bool:
        return all(dev == os.stat(self.root).st_dev for dev in wrote)

    # -- the marks log ---------------------------------------------------------------------

    def marks_where(self) -> str:
        return str(self._log())

    def _log_made(self) -> Path:
        """The log's path, its folder made (and made durable) if it is new."""
        path = self._log()
        if not path.parent.is_dir():
            path.parent.mkdir()
            fsync_dir(self.root)
        return path

    def marks_append(self, body: bytes, wrote: list[int]) -> None:
        path = self._log_made()
        # O_APPEND: records of concurrent processes interleave whole (one write each)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, FILE)
        try:
            marks.regular(fd, path)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            wrote.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)

    def marks_ends(self) -> tuple[bytes | None, bytes | None]:
        return marks.ends(self.root)

    def marks_size(self) -> int:
        try:
            return os.stat(self._log()).st_size
        except OSError:
            return 0

    def marks_crowded(self) -> bool:
        return False

    def marks_read(self, planted: list[str] | None = None, label: str = "", spill: Spill | None = None,
                   src: int = 0, cutoff: int | None = None) -> marks.DiskLog:
        return marks.read_log(self.root / MARKS_DIR, planted, label, spill, src, cutoff)

    def marks_read_tail(self, label: str, spill: Spill, src: int, cutoff: int, start: int, lines: int,
                        checked: bool) -> marks.DiskLog:
        return marks.read_tail(self._log(), label, spill, src, cutoff, start, lines, checked)

    def marks_files(self) -> tuple[list[int] | None, dict[str, list[int]], int]:
        """The log's (device, inode) (None: no log), every other `*.log` beside it as name →
        (device, inode, size, mtime_ns), and the log's size (-1: none) — a reading of the tail
        trusts those to be what the last reading read."""
        folder = self.root / MARKS_DIR
        own = None
        others: dict[str, list[int]] = {}
        try:
            names = sorted(p.name for p in folder.glob("*.log"))
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(folder / name)
            except OSError:
                continue
            if name == MARKS_LOG:
                own = [st.st_dev, st.st_ino]
            else:
                others[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        try:
            size = os.lstat(self._log()).st_size
        except OSError:
            size = -1
        return own, others, size

    def marks_tip(self, judged: int, file: list[int] | None) -> str:
        """A hash of the `TIP` bytes of the log before byte `judged` (and of that length), when
        the log is still the file `file` (device, inode) — "" when it is not, or cannot be
        read. One small read: a log cut behind the store's back and grown again past `judged`
        holds other records there (the stamps and objects of the appends that regrew it)."""
        try:
            fd = os.open(self._log(), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return ""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or [st.st_dev, st.st_ino] != file or st.st_size < judged:
                return ""
            start = max(0, judged - TIP)
            data = os.pread(fd, judged - start, start)
            return xxhash.xxh3_64_hexdigest(str(judged).encode() + b" " + data) if len(data) == judged - start else ""
        except OSError:
            return ""
        finally:
            os.close(fd)

    def _snap_tmp(self) -> Path:
        """Where a snapshot is written beside the log (not a `*.log`: no reader takes it for one)."""
        path = self._log()
        return path.with_name(f".{path.name}.tmp")

    def marks_cut(self) -> tuple[int, int]:
        """(inode, size) of the log; (0, 0) when there is none (or none to be had: writing the
        snapshot says why)."""
        try:
            st = os.stat(self._log())
            return st.st_ino, st.st_size
        except OSError:
            return 0, 0

    def marks_snapshot(self, chunks: Iterable[bytes], wrote: list[int]) -> None:
        path = self._log_made()
        # (create_new removes a killed snapshot's file: one snapshot at a time)
        with create_new(self._snap_tmp(), rewrite_mode(path)) as f:
            for piece in chunks:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
            wrote.append(os.fstat(f.fileno()).st_dev)

    def marks_swap(self, cut: tuple[int, int], wrote: list[int]) -> None:
        """What the log took since `cut` goes after the snapshot, which then replaces the log
        (OSError ESTALE when the log was replaced meanwhile)."""
        path, tmp = self._log(), self._snap_tmp()
        ino, size = cut
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            tail = b""
        else:
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    tail = b""  # (something planted there: replaced, as ever, by the snapshot)
                elif ino and (st.st_ino != ino or st.st_size < size):
                    raise OSError(errno.ESTALE, "the log was replaced while its snapshot was written", str(path))
                else:
                    tail = _read_from(fd, size if ino else 0, st.st_size)
            finally:
                os.close(fd)
        with open(tmp, "ab") as f:
            f.write(tail)  # (each append began with a newline: whole lines, the torn rest of one too)
            f.flush()
            os.fsync(f.fileno())
            wrote.append(os.fstat(f.fileno()).st_dev)
        os.rename(tmp, path)
        fsync_dir(path.parent)

    def marks_discard(self) -> None:
        with contextlib.suppress(OSError):
            self._snap_tmp().unlink()

    def marks_leftover(self) -> bool:
        return self._snap_tmp().is_file()

    # -- the index copy, the sweep ---------------------------------------------------------

    def put_index_copy(self, fill: Callable[[Path], None]) -> None:
        """Written to `index-copy.tmp`, fsynced, then swapped in by rename, so a crash leaves
        the previous copy intact."""
        tmp, final, old = self.root / f"{INDEX_COPY}.tmp", self.root / INDEX_COPY, self.root / f"{INDEX_COPY}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)

    def index_copy_stamp(self) -> bytes | None:
        try:
            return (self.root / INDEX_COPY / "stamp.json").read_bytes()
        except FileNotFoundError:
            return None

    def get_index_copy(self, into: Path) -> None:
        shutil.copytree(self.root / INDEX_COPY, into)

    def sweep(self, now: float, grace_s: float, repair: bool) -> tuple[int, list[tuple[str, int]]]:
        removed, deleted = 0, []
        tmp = self.root / TMP
        for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
            try:
                st = p.stat()  # (as is_file: a link to a file is judged by it, and the link removed)
            except OSError:
                continue  # gone since the listing (an S3 disk's seal unlinks its staging file here, unlocked)
            if stat.S_ISREG(st.st_mode) and (now - st.st_mtime >= grace_s or p.name == GC_RESERVE):
                p.unlink(missing_ok=True)  # nothing names a file in tmp/; under the lock no job uses it
                removed += 1
        aside = self.root / ORPHANS
        if repair and aside.is_dir():
            for p in sorted(aside.iterdir()):
                st = p.lstat()  # (a link planted in shards/ and set aside is removed, not its target)
                if stat.S_ISDIR(st.st_mode):
                    continue  # a directory planted in shards/: not ours to delete with what it holds
                if now - st.st_mtime >= grace_s:
                    p.unlink()
                    deleted.append((str(p), st.st_size))
        return removed, deleted


def _read_from(fd: int, start: int, end: int) -> bytes:
    out = bytearray()
    while start + len(out) < end:
        got = os.pread(fd, end - start - len(out), start + len(out))
        if not got:
            break
        out += got
    return bytes(out)

