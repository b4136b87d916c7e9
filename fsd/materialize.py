"""Copy objects out of the store into a directory tree (stage to 3C, export to 3D, copy mode).

The objects are read with the batch planner (fsd/planner.py): each record from the replica
that balances the disks, one reader per disk in shard/offset order, coalesced; a disk that
fails mid-way is replaced by the other replicas for what it had not delivered. Every file is
checked against its sha256 as it is written (the planner already checked each record's
xxh3), large objects are streamed piece by piece. One `syncfs` at the end makes the tree
durable (a batch sync: as durable as a sync per file, for the whole tree at once).

Resumable: a file already in `dest` with the expected size and sha256 is kept (a run killed
half-way and run again reads only what is missing or damaged). `dest` is a working
directory (`<zone>/.tmp/<id>/…`): nothing here is complete until the output contract seals
it — this module never presents a tree as done.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import syncfs
from fsd.records import DataError

if TYPE_CHECKING:
    from fsd.store import Store

CHUNK = 1 << 20


class _WriteFailed(Exception):
    """An SSD write error raised inside the planner's reader threads, which take an OSError
    for a *read* error of their HDD (and mark it failed): carried out as another type."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Item:
    path: str  # relative, '/'-separated, already checked (datasets/layouts.py)
    sha256: str
    size: int
    sidecar: bytes | None = None  # written at path + ".json"


@dataclass
class MaterializeReport:
    files: int = 0
    bytes: int = 0
    kept: int = 0  # already there and verified (a resumed run)
    written: int = 0
    bytes_written: int = 0
    fallbacks: int = 0  # records read again from another replica after a disk error
    seconds: float = 0.0
    per_disk_seconds: dict[str, float] = field(default_factory=dict)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _intact(path: Path, size: int, sha: str) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == size and _sha256_of(path) == sha
    except OSError:
        return False


def _open_new(path: Path) -> int:
    """A file to write, replacing what is there; never follows a symlink at the last part."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now, without waiting: the SSD
    writes while the HDDs are still read, and the one syncfs at the end finds little left
    (left alone, the kernel holds gigabytes dirty until its background threshold, and the
    final sync writes them all while every disk reader is idle)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # a failure here is only a missed hint


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait
_sync_file_range = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)  # not in Python's os
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _write_file(path: Path, data: memoryview | bytes) -> None:
    try:
        fd = _open_new(path)
        try:
            _write_all(fd, data)
            _start_writeback(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _WriteFailed(e) from None


def materialize(store: Store, items: Iterable[Item], dest: Path,
                progress: Callable[[int, int], None] | None = None) -> MaterializeReport:
    """Write every item under `dest`; `progress(bytes_done, bytes_total)` from reader threads."""
    t0 = time.monotonic()
    rep = MaterializeReport()
    items = list(items)
    rep.files, rep.bytes = len(items), sum(it.size for it in items)
    todo: dict[str, list[Item]] = {}
    done_bytes = 0
    dirs: set[Path] = set()
    for it in items:
        target = dest / it.path
        dirs.add(target.parent)
        if it.sidecar is not None:
            car = target.with_name(target.name + ".json")
            if not (car.is_file() and car.read_bytes() == it.sidecar):
                dirs.add(car.parent)
        if _intact(target, it.size, it.sha256):
            rep.kept += 1
            done_bytes += it.size
        else:
            todo.setdefault(it.sha256, []).append(it)
    try:
        for d in sorted(dirs):
            d.mkdir(parents=True, exist_ok=True)
        for it in items:
            if it.sidecar is not None:
                car = dest / (it.path + ".json")
                if not (car.is_file() and car.read_bytes() == it.sidecar):
                    try:
                        _write_file(car, it.sidecar)
                    except _WriteFailed as w:
                        raise w.error from None
        if todo:
            lock = threading.Lock()
            done = [done_bytes]

            def advance(n: int) -> None:
                with lock:
                    done[0] += n
                    rep.written += 1
                    rep.bytes_written += n
                    if progress:
                        progress(done[0], rep.bytes)

            def sink(sha: bytes, payload: memoryview) -> None:
                hexsha = sha.hex()
                if hashlib.sha256(payload).hexdigest() != hexsha:
                    raise DataError(f"object {hexsha} read back with another sha256; nothing of it was written")
                for it in todo[hexsha]:
                    _write_file(dest / it.path, payload)
                    advance(it.size)

            def large_sink(sha: bytes, pieces: Iterator[bytes]) -> None:
                hexsha = sha.hex()
                first, *others = todo[hexsha]
                h = hashlib.sha256()
                try:
                    fd = _open_new(dest / first.path)
                except OSError as e:
                    raise _WriteFailed(e) from None
                try:
                    for piece in pieces:  # read errors here are the store's (iter_object fails over)
                        h.update(piece)
                        try:
                            _write_all(fd, piece)
                            _start_writeback(fd)
                        except OSError as e:
                            raise _WriteFailed(e) from None
                finally:
                    os.close(fd)
                if h.hexdigest() != hexsha:
                    (dest / first.path).unlink(missing_ok=True)
                    raise DataError(f"object {hexsha} read back with another sha256; nothing of it was kept")
                advance(first.size)
                for it in others:  # the same content at another path: copied on the SSD
                    try:
                        with open(dest / first.path, "rb") as src:
                            fd = _open_new(dest / it.path)
                            try:
                                while chunk := src.read(CHUNK):
                                    _write_all(fd, chunk)
                            finally:
                                os.close(fd)
                    except OSError as e:
                        raise _WriteFailed(e) from None
                    advance(it.size)

            try:
                _plan, stats = store.read_batch(sorted(todo), sink, large_sink)
            except _WriteFailed as w:
                raise w.error from None
            rep.fallbacks, rep.per_disk_seconds = stats.fallbacks, stats.per_disk_seconds
        syncfs(dest)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HoardError(f"{dest}: the SSD is full ({e.strerror}); what was written stays for a re-run — free "
                             "space (`hoard zones`) and run the same command again", ExitCode.NO_SPACE) from None
        raise HoardError(f"{dest}: cannot write {e.filename or ''} ({e.strerror or e}); what was written stays "
                         "for a re-run — check the SSD (`dmesg`, `df`) and run the same command again",
                         ExitCode.UNAVAILABLE) from None
    rep.seconds = time.monotonic() - t0
    return rep
