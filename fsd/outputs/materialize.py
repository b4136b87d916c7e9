"""Copy objects out of the store into a directory tree (stage to 3C, export to 3D, copy mode).

The objects are read with the batch planner (fsd/io/planner.py): each record from the replica
that balances the disks, one reader per disk in shard/offset order, coalesced; a disk that
fails mid-way is replaced by the other replicas for what it had not delivered. Every file is
checked against its sha256 as it is written (the planner already checked each record's
xxh3), large objects are streamed piece by piece. A `syncfs` at the end makes the tree
durable (a batch sync: as durable as a sync per file, for the whole tree at once); while
the disks are read, a helper thread runs one every FLUSH_EVERY_S, so the SSD writes beside
the reads and the last one has little left (a large file's writeback is started as it is
written, a small one's left to those calls). The files are written by the planner's sink
threads, apart from the disks' readers.

Resumable: a file already in `dest` with the expected size and sha256, and no failed write of
it pending, is kept (a run killed half-way and run again reads only what is missing or
damaged). `dest` is a working directory (`<zone>/.tmp/<id>/…`): nothing here is complete
until the output contract seals it — this module never presents a tree as done.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import (
    SYNC_FILE_RANGE_WAIT_BEFORE,
    SYNC_FILE_RANGE_WRITE,
    same_inode,
    sync_file_range,
    syncfs_fd,
)
from hoardfs.base.modes import FILE
from hoardfs.fsd.core.records import DataError

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

CHUNK = 1 << 20


class _WriteFailed(Exception):
    """An SSD write error raised inside the planner's threads — a reader (a large object's
    sink) takes an OSError for a *read* error of its HDD (and marks it failed): carried out
    as another type."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Item:
    path: str  # relative, '/'-separated, already checked (datasets/layouts.py)
    sha256: str
    size: int
    sidecar: bytes | None = None  # written at path + ".json"


@dataclass(frozen=True)
class Assembled:
    """A file made of bytes known here and stored objects, each at its offset — a tar shard:
    its headers and padding are `fixed`, its members `objects` (offset, sha256, size); what
    neither covers up to `size` is zeros. Its bytes are known before any is read, so its
    objects are read with everything else, in the disks' order, and written where they go."""
    path: str
    size: int
    fixed: tuple[tuple[int, bytes], ...]
    objects: tuple[tuple[int, str, int], ...]


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
    phases: dict[str, float] = field(default_factory=dict)  # prepare / plan / read / sync / hash, seconds
    assembled: dict[str, str] = field(default_factory=dict)  # an Assembled file's path → its sha256


def _intact(path: Path, size: int, sha: str) -> bool:
    """`path` is a regular file (not a link, a FIFO or a directory) of `size` bytes hashing to
    `sha`, and no write of it failed unreported: what a resumed run may keep as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO there must not hang the run
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        h = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
        return h.hexdigest() == sha and _no_lost_writes(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _no_lost_writes(fd: int) -> bool:
    """False when the writeback of this file failed and no descriptor of it was told yet.
    Hashing a file checks the page cache, not the SSD: an earlier attempt's pages whose
    writeback failed stay cached, clean, with the right bytes, and never reach the SSD — and
    the final syncfs cannot tell once another syncfs (that attempt's, `sync -f`, another
    export's helper thread) was told of the error: the file system's error reaches the
    descriptors opened before it, and those opened after only while no syncfs was told.
    The file's own error reaches any descriptor of the file until one of them is told, and
    sync_file_range(WAIT_BEFORE) reads it without a write or a journal commit (an fdatasync
    each would cost a cache flush per kept file)."""
    try:
        if not sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE):
            os.fdatasync(fd)
    except OSError:
        return False
    return True


def _open_new(path: Path | str) -> int:
    """A file to write, replacing what is there; never follows a symlink at the last part.
    (Created first and removed only when something is in the way: a first run's files are
    all new, and an unlink each that finds nothing is 20,000 wasted calls.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        return os.open(path, flags, FILE)
    except FileExistsError:
        try:
            os.unlink(path)  # a file, a link, a FIFO (O_EXCL refuses them all)
        except IsADirectoryError:
            os.rmdir(path)  # an empty directory; one with something in it is not this run's to remove
        return os.open(path, flags, FILE)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing the file's dirty pages now, without waiting: the SSD
    writes while the HDDs are still read, and the one syncfs at the end finds little left
    (left alone, the kernel holds gigabytes dirty until its background threshold, and the
    final sync writes them all while every disk reader is idle)."""
    try:
        sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
    except OSError:
        pass  # only a missed hint: the final syncfs reports a failed write


#: a file shorter than this is left to the flusher's syncfs (`_Flusher`, every FLUSH_EVERY_S):
#: a sync_file_range of a small file cost more than its write — 10,000 images of 4–64 KiB took
#: 0.4–0.6 ms a file with one each and 0.13–0.16 ms without, the syncfs of them all included
WRITEBACK_MIN = 1 << 20


def _write_file(path: Path | str, data: memoryview | bytes) -> None:
    try:
        fd = _open_new(path)
        try:
            _write_all(fd, data)
            if len(data) >= WRITEBACK_MIN:
                _start_writeback(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _WriteFailed(e) from None


def _write_at(path: Path, offset: int, data: memoryview | bytes) -> None:
    """`data` into the existing file `path` at `offset` (an Assembled file's object)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            _pwrite_all(fd, data, offset)
            _start_writeback(fd, offset, len(data))
        finally:
            os.close(fd)
    except OSError as e:
        raise _WriteFailed(e) from None


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _prepare_assembled(path: Path, a: Assembled) -> None:
    """`a`'s file anew at `path`: its size, its fixed bytes; its objects' places left as
    zeros for the reads to fill (each within the file: checked, a wrong layout is a bug)."""
    for off, size in [(o, len(b)) for o, b in a.fixed] + [(o, z) for o, _, z in a.objects]:
        if off < 0 or off + size > a.size:
            raise ValueError(f"{a.path}: a piece at {off} of {size} bytes is outside its {a.size} bytes")
    fd = _open_new(path)
    try:
        os.ftruncate(fd, a.size)
        for off, data in a.fixed:
            _pwrite_all(fd, data, off)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    """The sha256 of the file at `path` (just written: read from the page cache)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, 4 * CHUNK):
            h.update(chunk)  # (hashlib lets go of the GIL: files hash on every core)
    finally:
        os.close(fd)
    return h.hexdigest()


def _present(dest: Path) -> tuple[set[str], set[str]]:
    """What is already under `dest`, relative: the paths of everything but directories, and
    the directories ("" for `dest`) — real ones only, a link to a directory is among the
    others (one walk: a first run's `dest` is empty, and 20,000 files each looked up alone
    cost a stat each)."""
    files: set[str] = set()
    dirs: set[str] = set()
    for root, subdirs, names in os.walk(dest):  # never into a link; nothing when dest does not exist
        rel = os.path.relpath(root, dest)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        dirs.add(prefix.rstrip("/"))
        files.update(prefix + n for n in names)
        files.update(prefix + d for d in subdirs if os.path.islink(os.path.join(root, d)))
    return files, dirs


def _make_dirs(dest: Path, wanted: set[str], real: set[str]) -> None:
    """Make each directory of `wanted` under `dest`, replacing what stands where one goes (a
    link — to a directory outside, say — a file, a FIFO): the files are written through
    these paths, and only their last part is opened without following a link. `real`: the
    directories `_present` found, grown as they are made."""
    for d in sorted(wanted):
        at = ""
        for part in d.split("/") if d else ():
            at = f"{at}/{part}" if at else part
            if at in real:
                continue
            path = dest / at
            try:
                os.mkdir(path)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)
                    os.mkdir(path)
            real.add(at)


class _Flusher:
    """syncfs of `dest` every FLUSH_EVERY_S while the disks are read, so the SSD's writeback
    and its journal commits run beside the reads and the final syncfs finds little left.
    One file descriptor serves every call and the final one: a writeback error is reported
    to each open file once, so an error one of these calls saw is kept and raised by
    `final()` (a new descriptor opened later would not see it)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        self.stop = threading.Event()
        self.error: OSError | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Flusher:
        self.thread = threading.Thread(target=self._run, name="ssd-flush", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _sync(self) -> None:
        try:
            syncfs_fd(self.fd, self.dest)
        except OSError as e:
            self.error = self.error or e

    def _run(self) -> None:
        while not self.stop.wait(FLUSH_EVERY_S):
            self._sync()

    def final(self) -> None:
        """One last syncfs (after the background calls stopped); raises the first error any
        of them saw, or HoardError when `dest` is no longer the directory the descriptor holds
        (moved away or replaced mid-copy: the files went by path, the syncs by descriptor)."""
        self._sync()
        if self.error is not None:
            raise self.error
        held = os.fstat(self.fd)
        try:
            now = os.stat(self.dest)
        except FileNotFoundError:
            now = None
        if not same_inode(held, now):
            raise HoardError(f"{self.dest} was moved or replaced while the copy ran: what was written went with it "
                             "and is not this copy; run the same command again (it writes the tree anew there)",
                             ExitCode.UNAVAILABLE)

    def close(self) -> None:
        os.close(self.fd)


FLUSH_EVERY_S = 0.25


def materialize(store: Store, items: Iterable[Item], dest: Path,
                progress: Callable[[int, int], None] | None = None,
                assembled: Sequence[Assembled] = ()) -> MaterializeReport:
    """Write every item and every `assembled` file under `dest`; `progress(bytes_done,
    bytes_total)` from the planner's threads. The objects of both are read in one pass of the batch
    planner (every disk at once, in its order), each written where it goes as it comes; an
    assembled file is written anew every time (a resumed attempt's may be half filled) and
    its sha256 is in the report (`assembled`), taken once it is durable."""
    t0 = time.monotonic()
    rep = MaterializeReport()
    items = list(items)
    rep.files = len(items) + len(assembled)
    rep.bytes = sum(it.size for it in items) + sum(z for a in assembled for _, _, z in a.objects)
    todo: dict[str, list[Item]] = {}
    places: dict[str, list[tuple[Path, int, int]]] = {}  # an assembled file's objects: (file, offset, size)
    done_bytes = 0
    flusher: _Flusher | None = None
    try:
        dest.mkdir(parents=True, exist_ok=True)
        # opened before anything in `dest` is looked at: a write error from here on is reported
        # to it; one from before is the file's own, which `_intact` checks
        flusher = _Flusher(dest)
        present, real_dirs = _present(dest)
        dirs: set[str] = set()
        cars: list[Item] = []  # sidecars to (re)write
        for it in items:
            dirs.add(it.path.rpartition("/")[0])
            if it.sidecar is not None:
                car, want = it.path + ".json", hashlib.sha256(it.sidecar).hexdigest()
                if not (car in present and _intact(dest / car, len(it.sidecar), want)):
                    cars.append(it)
            if it.path in present and _intact(dest / it.path, it.size, it.sha256):
                rep.kept += 1
                done_bytes += it.size
            else:
                todo.setdefault(it.sha256, []).append(it)
        dirs.update(a.path.rpartition("/")[0] for a in assembled)
        _make_dirs(dest, dirs, real_dirs)
        for a in assembled:
            _prepare_assembled(dest / a.path, a)
            for off, sha, size in a.objects:
                places.setdefault(sha, []).append((dest / a.path, off, size))
        for it in cars:
            assert it.sidecar is not None  # `cars` holds the items with one
            try:
                _write_file(dest / (it.path + ".json"), it.sidecar)
            except _WriteFailed as w:
                raise w.error from None
        if todo or places:
            lock = threading.Lock()
            done = [done_bytes]

            def advance(n: int) -> None:
                with lock:
                    done[0] += n
                    rep.written += 1
                    rep.bytes_written += n
                    if progress:
                        progress(done[0], rep.bytes)

            base = str(dest) + "/"

            def sink(sha: bytes, payload: memoryview) -> None:
                hexsha = sha.hex()
                if hashlib.sha256(payload).hexdigest() != hexsha:
                    raise DataError(f"object {hexsha} read back with another sha256; nothing of it was written")
                for it in todo.get(hexsha, ()):
                    _write_file(base + it.path, payload)  # (a string: a Path each costs more than the write)
                    advance(it.size)
                for path, off, size in places.get(hexsha, ()):
                    _write_at(path, off, payload)
                    advance(size)

            def large_sink(sha: bytes, pieces: Iterator[bytes]) -> None:
                hexsha = sha.hex()
                # where it goes: (file, offset, size, a new file of its own?)
                dests = [(dest / it.path, 0, it.size, True) for it in todo.get(hexsha, ())] + \
                    [(path, off, size, False) for path, off, size in places.get(hexsha, ())]
                (first, at, size, new), others = dests[0], dests[1:]
                h = hashlib.sha256()
                try:
                    fd = _open_new(first) if new else os.open(first, os.O_WRONLY | os.O_NOFOLLOW)
                except OSError as e:
                    raise _WriteFailed(e) from None
                try:
                    pos = at
                    for piece in pieces:  # read errors here are the store's (iter_object fails over)
                        h.update(piece)
                        try:
                            _pwrite_all(fd, piece, pos)
                            _start_writeback(fd, pos, len(piece))
                        except OSError as e:
                            raise _WriteFailed(e) from None
                        pos += len(piece)
                finally:
                    os.close(fd)
                if h.hexdigest() != hexsha:
                    if new:
                        first.unlink(missing_ok=True)
                    raise DataError(f"object {hexsha} read back with another sha256; nothing of it was kept")
                advance(size)
                for path, off, size, new in others:  # the same content at another place: copied on the SSD
                    try:
                        src = os.open(first, os.O_RDONLY | os.O_NOFOLLOW)
                        try:
                            fd = _open_new(path) if new else os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                            try:
                                for k in range(0, size, CHUNK):
                                    _pwrite_all(fd, os.pread(src, min(CHUNK, size - k), at + k), off + k)
                            finally:
                                os.close(fd)
                        finally:
                            os.close(src)
                    except OSError as e:
                        raise _WriteFailed(e) from None
                    advance(size)

            try:
                rep.phases["prepare"] = time.monotonic() - t0
                with flusher:
                    plan, stats = store.read_batch(sorted(todo.keys() | places.keys()), sink, large_sink)
            except _WriteFailed as w:
                raise w.error from None
            rep.fallbacks, rep.per_disk_seconds = stats.fallbacks, stats.per_disk_seconds
            rep.phases.update(plan=plan.seconds, read=stats.seconds)
        t_sync = time.monotonic()
        flusher.final()
        rep.phases["sync"] = time.monotonic() - t_sync
        if assembled:
            t_hash = time.monotonic()
            with ThreadPoolExecutor(max_workers=min(len(assembled), os.cpu_count() or 1)) as pool:
                digests = list(pool.map(_sha256_of, [dest / a.path for a in assembled]))
            rep.assembled = {a.path: d for a, d in zip(assembled, digests, strict=True)}
            rep.phases["hash"] = time.monotonic() - t_hash
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HoardError(f"{dest}: the SSD is full ({e.strerror}); what was written stays for a re-run — free "
                             "space (`hoard zones`) and run the same command again", ExitCode.NO_SPACE) from None
        raise HoardError(f"{dest}: cannot write {e.filename or ''} ({e.strerror or e}); what was written stays "
                         "for a re-run — check the SSD (`dmesg`, `df`) and run the same command again",
                         ExitCode.UNAVAILABLE) from None
    finally:
        if flusher is not None:
            flusher.close()
    rep.seconds = time.monotonic() - t0
    return rep
