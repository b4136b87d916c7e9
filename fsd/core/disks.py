"""HDDs as shard backends: identity files, states, the local shard directory layout.

    <disk root>/.hoard-disk.json          identity: {"uuid", "label", "created", "format"}
    <disk root>/shards/<xx>/<id>.open     a shard being appended (no footer yet)
    <disk root>/shards/<xx>/<id>.shard    a sealed shard (immutable)
    <disk root>/tmp/                      replica copies in progress (renamed when complete)
    <disk root>/orphans/                  shard files set aside (nothing lost; swept after a grace period)

`<xx>` is the last two hex digits of the shard id (its random part) for an even fan-out.
A disk is used only if its root is a mount point (unless directory disks are allowed)
and its identity file names the uuid the index registered for that label: otherwise it is
`missing`, and nothing is written there — never onto the root filesystem under a
vanished mount.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path, PurePath
from typing import TypeVar

from hoardfs.base.files import fsync_dir, open_regular
from hoardfs.base.modes import FILE
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.beside import LocalBeside

# the identity and the records, re-exported: every caller imported them from here
from hoardfs.fsd.core.diskid import (
    IDENTITY as IDENTITY,
)
from hoardfs.fsd.core.diskid import (
    IDENTITY_COPY as IDENTITY_COPY,
)
from hoardfs.fsd.core.diskid import (
    IDENTITY_FORMAT as IDENTITY_FORMAT,
)
from hoardfs.fsd.core.diskid import (
    ORPHANS_DIR as ORPHANS_DIR,
)
from hoardfs.fsd.core.diskid import (
    SHARDS_DIR as SHARDS_DIR,
)
from hoardfs.fsd.core.diskid import (
    TMP_DIR as TMP_DIR,
)
from hoardfs.fsd.core.diskid import (
    DiskGone as DiskGone,
)
from hoardfs.fsd.core.diskid import (
    DiskRecord as DiskRecord,
)
from hoardfs.fsd.core.diskid import (
    DiskState as DiskState,
)
from hoardfs.fsd.core.diskid import (
    keep_identity_copy as keep_identity_copy,
)
from hoardfs.fsd.core.diskid import (
    new_identity as new_identity,
)
from hoardfs.fsd.core.diskid import (
    read_identity as read_identity,
)
from hoardfs.fsd.core.diskid import (
    restore_identity as restore_identity,
)
from hoardfs.fsd.core.diskid import (
    write_identity as write_identity,
)

#: one pread() asks for at most this much: Linux returns at most 0x7ffff000 bytes per call,
#: so every whole-record read loops (else an object over 2 GiB does not read)
READ_STEP = 1 << 30
#: pieces a streaming read hands out (bounded memory whatever the object's size)
STREAM_PIECE = 8 << 20
#: after this many bytes appended, a shard sink asks the kernel to start writing them back
WRITEBACK_STEP = 2 << 20
#: the suffixes of the shard layout above; no other module names them
#: (tests/test_layering.py::test_only_the_local_backend_reaches_shard_files)
SEALED, OPEN = ".shard", ".open"


def drop_cache(fd: int) -> None:
    """Drop a file's pages from the page cache (scrub, copies, hashing must not evict hot data)."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:  # pragma: no cover - filesystems without fadvise
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE):
            raise


def open_shard_file(path: Path) -> int:
    """A read-only descriptor of a shard file: only a regular file, opened without following a
    link or waiting on a FIFO (`open_regular`: a FIFO in a shard file's place would hang a
    rebuild); else OSError, a read error like another: the replica is reported and repaired."""
    return open_regular(path, "not a regular file (a FIFO, device or folder in a shard file's place)")


def verify_shard_file(path: Path, sha256: bool = False, shard_hex: str | None = None) -> tuple[int, int]:
    """(size, records) of a sealed shard file, after checking it (`verify_shard`). Raises
    OSError or ShardFormatError; leaves nothing of the file in the page cache."""
    fd = open_shard_file(path)
    try:
        size = os.fstat(fd).st_size
        count = verify_shard(lambda off, n: pread_full(fd, n, off), size, path.name, sha256, shard_hex)
        drop_cache(fd)
        return size, count
    finally:
        os.close(fd)


def verify_shard(read, size: int, name: str, sha256: bool = False, shard_hex: str | None = None) -> int:
    """The record count of a sealed shard of `size` bytes read through `read(offset, n)`,
    after checking its footer, every record's xxh3-128 (and sha256 when asked) and that the
    footer lists exactly the records found — and, given `shard_hex`, that the header names
    that shard (no checksum covers the header's shard id, and `hoard index rebuild` refuses
    a file whose header and name differ). Reads the footer first, then the records in
    order. Raises OSError or ShardFormatError."""
    footer = fmt.decode_footer(read, size)
    if footer is None:
        raise fmt.FooterMismatch(f"{name} has no footer")
    count = 0
    for rec in fmt.scan_records(read, size, sealed=True):
        if sha256:
            h = hashlib.sha256()
            for off in range(rec.offset, rec.end, STREAM_PIECE):
                h.update(read(off, min(STREAM_PIECE, rec.end - off)))
            if h.digest() != rec.sha256:
                raise fmt.PayloadChecksumMismatch(f"sha256 of the record at {rec.offset} differs from its name")
        count += 1
    if count != len(footer):
        raise fmt.FooterMismatch(f"{name}: {count} records, the footer lists {len(footer)}")
    if shard_hex is not None:
        found = fmt.decode_shard_header(read(0, fmt.SHARD_HEADER_SIZE)).shard_id.hex()
        if found != shard_hex:
            raise fmt.ShardFormatError(f"{name}: the header names shard {found}, not {shard_hex}")
    return count


T = TypeVar("T")


def pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """`pread_full` into `buf`: the bytes at `offset` until `buf` is full or the file ends (as
    many preadv() calls as it takes); how many were read."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:got + READ_STEP]], offset + got)
        if not n:
            break
        got += n
    return got


#: a follower's read (`read_cached_into`) waits at most this long for a byte more of its range
#: to reach the page cache before it reads the rest itself
FOLLOW_WAIT_S = 1.0
#: how often it looks again meanwhile
FOLLOW_POLL_S = 0.002


#: libc's mmap, mincore and munmap through ctypes (`in_page_cache`), loaded at the first ask
_LIBC: tuple = ()


def _libc() -> tuple:
    global _LIBC
    if not _LIBC:
        import ctypes  # deferred: only a training loader's worker asks the page cache, and rarely the first time

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = (ctypes, libc)
    return _LIBC


#: mincore's byte a page → its resident bit alone (the other bits are reserved)
_RESIDENT = bytes(b & 1 for b in range(256))


#: parts of a range closer than this are asked of mincore together (the pages between them too:
#: a look is a system call, and a page's answer a byte)
CACHE_LOOK_JOIN = 256 << 10


def in_page_cache(fd: int, offset: int, length: int, parts: Sequence[tuple[int, int]] | None = None) -> bool:
    """Whether every page of the file's bytes offset..offset+length is in the page cache — or,
    given `parts` (offset, length) within them, every page of those, the pages between parts
    further apart than CACHE_LOOK_JOIN not asked (a version's run may span most of a shard) —
    asked with mincore(2) of a mapping nothing touches: no byte is read, and no read started (a
    `preadv2` RWF_NOWAIT look that misses starts one on some kernels). False where it cannot
    be told, and for a part not within the range."""
    if length <= 0:
        return True
    page = mmap.PAGESIZE
    start = offset - offset % page
    n = offset + length - start
    looks: list[list[int]] = []  # [first, end) byte offsets in the mapping, page-aligned first
    for a, k in sorted(parts) if parts is not None else [(offset, length)]:
        if k <= 0:
            continue
        if a < offset or a + k > offset + length:
            return False
        first, end = (a - start) // page * page, a + k - start
        if looks and first - looks[-1][1] <= CACHE_LOOK_JOIN:
            looks[-1][1] = max(looks[-1][1], end)
        else:
            looks.append([first, end])
    if not looks:
        return True
    with _mapped(fd, start, n) as addr:
        if addr is None:
            return False
        ctypes, libc = _libc()
        for first, end in looks:
            vec = (ctypes.c_ubyte * (-(-(end - first) // page)))()
            if libc.mincore(ctypes.c_void_p(addr + first), end - first, vec) != 0 or \
                    0 in bytes(vec).translate(_RESIDENT):
                return False
        return True


def pages_cached(fd: int, offset: int, length: int, points: Sequence[int]) -> int:
    """How many of the pages holding the file's bytes at `points` (offsets within offset..
    offset+length) the page cache holds — a page a point, asked as `in_page_cache` asks (0
    where it cannot be told)."""
    if length <= 0:
        return 0
    page = mmap.PAGESIZE
    start = offset - offset % page
    with _mapped(fd, start, offset + length - start) as addr:
        if addr is None:
            return 0
        ctypes, libc = _libc()
        vec = (ctypes.c_ubyte * 1)()
        got = 0
        for at in points:
            if offset <= at < offset + length and \
                    libc.mincore(ctypes.c_void_p(addr + (at - start) // page * page), page, vec) == 0:
                got += vec[0] & 1
        return got


@contextlib.contextmanager
def _mapped(fd: int, start: int, n: int) -> Iterator[int | None]:
    """The file's bytes start..start+n mapped (read-only, shared; nothing touched), unmapped
    after: the address, or None where it cannot be mapped."""
    ctypes, libc = _libc()
    addr = libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        yield None
        return
    try:
        yield addr
    finally:
        libc.munmap(addr, n)


def pread_cached_into(fd: int, buf: memoryview, offset: int, wait_s: float | None = None) -> tuple[int, bool]:
    """`pread_into`, taking only what the page cache holds (preadv2 RWF_NOWAIT) while another
    process reads the same bytes off the disk — looking again every FOLLOW_POLL_S until the
    range is all there: (how many bytes, whether they all came so). Where the kernel starts
    reading the missing pages of the piece on a look the page cache cannot answer, as any read
    does (6.18, where this was measured; pages in flight are waited for, not read again), the
    range arrives with no one else reading, a piece at a time. Kernels that do not: after
    `wait_s` without a byte more (default FOLLOW_WAIT_S), or where the file system takes no such
    reads (any error but EAGAIN), the rest is read as `pread_into` reads it."""
    got, last = 0, time.monotonic()
    wait_s = FOLLOW_WAIT_S if wait_s is None else wait_s
    nowait = getattr(os, "RWF_NOWAIT", None)
    while got < len(buf) and nowait is not None:
        try:
            n = os.preadv(fd, [buf[got:got + READ_STEP]], offset + got, nowait)
        except BlockingIOError:
            if time.monotonic() - last > wait_s:
                break
            time.sleep(FOLLOW_POLL_S)
            continue
        except OSError:  # (no such reads here — EOPNOTSUPP, EINVAL, ENOSYS — or a failing disk: read plainly)
            break
        if not n:
            return got, True
        got += n
        last = time.monotonic()
    if got == len(buf):
        return got, True
    return got + pread_into(fd, buf[got:], offset + got), False


def pread_full(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes at `offset` (fewer only at the end of the file), in as many pread()
    calls as it takes. The one read helper of the local backend: every read goes through it."""
    first = os.pread(fd, min(length, READ_STEP), offset)
    if len(first) == length or not first:
        return first
    parts, got = [first], len(first)
    while got < length:
        chunk = os.pread(fd, min(length - got, READ_STEP), offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def shard_files(root: Path) -> list[Path]:
    """The shard files (sealed and open) under a disk root, sorted — what index rebuild, the
    orphan sweep and `hoard check` look at file by file, planted ones included. Raises OSError
    when the folder does not list."""
    return sorted(p for p in (root / SHARDS_DIR).glob("*/*") if p.suffix in (SEALED, OPEN))


def object_name(bucket: str, shard_hex: str) -> PurePath:
    """The name an S3 disk's sealed shard object is read under by what takes shard files one by
    one (`shard_of` reads it: sealed) — index rebuild's listing of a bucket."""
    return PurePath(bucket, SHARDS_DIR, shard_hex[-2:], shard_hex + SEALED)


def shard_of(path: PurePath) -> tuple[str, bool]:
    """(shard hex as the file name spells it, sealed) of a file `shard_files` listed."""
    return path.stem, path.suffix == SEALED


def shard_files_under(root: Path) -> bool:
    """Whether a disk root holds any shard file (raises OSError when it does not list)."""
    shards = root / SHARDS_DIR
    return shards.is_dir() and any(f.suffix in (SEALED, OPEN) for d in shards.iterdir() if d.is_dir()
                                   for f in d.iterdir())


def probe(root: Path, expected_uuid: str | None, allow_directory: bool) -> tuple[DiskState, str]:
    """The state a disk root is in right now, and why if it is not usable."""
    if not root.is_dir():
        return DiskState.MISSING, f"{root} does not exist"
    if not allow_directory and not os.path.ismount(root):
        return DiskState.MISSING, f"{root} is not a mount point (disk not mounted?)"
    ident = read_identity(root)
    if ident is None:
        return DiskState.MISSING, f"{root} has no {IDENTITY} (not a hoardfs disk, or not initialised)"
    if ident.get("error"):
        return DiskState.FAILED, ident["error"]
    if expected_uuid is not None and ident.get("uuid") != expected_uuid:
        return DiskState.MISSING, f"{root} holds disk {ident.get('uuid')}, expected {expected_uuid} (another disk mounted there?)"
    return DiskState.ACTIVE, ""


class _FileSink:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.flushed = os.lseek(fd, 0, os.SEEK_CUR)  # bytes already handed to writeback

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        if end - self.flushed >= WRITEBACK_STEP:
            # start writeback now (DONTNEED on dirty pages queues them) so the commit's
            # fdatasync finds little left to do, and shard pages do not crowd out hot data
            os.posix_fadvise(self.fd, self.flushed, end - self.flushed, os.POSIX_FADV_DONTNEED)
            self.flushed = end

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        os.lseek(self.fd, size, os.SEEK_SET)
        self.flushed = min(self.flushed, size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):  # a read-only descriptor: nothing to lose
        os.close(fd)


class LocalDisk:
    """One HDD (or, for tests and the embedded default, a directory) holding shards."""

    #: reads one reader makes at once: one (a disk head seeks between concurrent reads)
    read_streams = 1
    #: a large object is read piece by piece (each a pread: no request to save)
    stream_large = False

    def __init__(self, label: str, root: Path, uuid: str, capacity_bytes: int | None = None,
                 require_mount: bool = True) -> None:
        self.label, self.root, self.uuid, self.capacity_bytes = label, root, uuid, capacity_bytes
        self.require_mount = require_mount
        self.where = str(root)
        self.beside = LocalBeside(root)  # the marks log, pointers, index copy, tmp/ and orphans/
        # (shard, read-ahead off: see read_exact) → [fd, readers using it now]; least recently
        # used first. Shared by every thread reading this disk (the planner's readers, the
        # mount's, a scrub's): an fd is closed only when no read is using it — closing one
        # under a reader makes its pread fail with EBADF, or, once the number is reused,
        # read another file's bytes, and either would mark a healthy replica bad.
        self._fds: OrderedDict[tuple[str, bool], list[int]] = OrderedDict()
        self._fds_lock = threading.Lock()

    def check(self) -> None:
        """Raise DiskGone unless this is still our disk: checked before any file is created or
        renamed, so nothing ever lands on the root filesystem under a vanished mount."""
        state, why = probe(self.root, self.uuid, allow_directory=not self.require_mount)
        if state != DiskState.ACTIVE:
            raise DiskGone(f"disk {self.label}: {why}")

    def __repr__(self) -> str:
        return f"LocalDisk({self.label})"

    def path(self, shard_hex: str, sealed: bool) -> Path:
        return self.root / SHARDS_DIR / shard_hex[-2:] / f"{shard_hex}{SEALED if sealed else OPEN}"

    def open_reader(self, shard_hex: str) -> int:
        """A read-only descriptor of the shard's file (`open_shard_file`) that the caller owns
        and closes: for a reader of many small pieces of one object, a pread each (a training
        loader's manifest lines). OSError when the file is not there or not a regular file."""
        return open_shard_file(self.find(shard_hex))

    def find(self, shard_hex: str) -> Path:
        sealed = self.path(shard_hex, True)
        if sealed.exists():
            return sealed
        open_ = self.path(shard_hex, False)
        if open_.exists():
            return open_
        raise FileNotFoundError(errno.ENOENT, f"shard {shard_hex} not on disk {self.label}", str(sealed))

    def state(self, shard_hex: str) -> str | None:
        """"sealed", "open" (still appended), or None: which file of the shard this disk holds
        (the sealed one when both are there, as `find` looks). Only a regular file (or a link to
        one) is a replica: a directory or a FIFO in its place is none — `hoard disks activate`
        listed it again, and a FIFO hung whoever opened it."""
        if self.path(shard_hex, True).is_file():
            return "sealed"
        return "open" if self.path(shard_hex, False).is_file() else None

    def shard_files(self) -> list[Path]:
        """The shard files on this disk (see `shard_files`); [] when it has no shards folder."""
        return shard_files(self.root) if (self.root / SHARDS_DIR).is_dir() else []

    def shard_objects(self) -> list[tuple[str, int, float]]:
        return []  # (every shard here is a file: shard_files)

    def shard_ids(self) -> list[tuple[str, bool]]:
        """(shard hex, sealed) of every shard file on this disk."""
        return [shard_of(p) for p in self.shard_files()]

    def verify(self, shard_hex: str, sha256: bool = False) -> tuple[int, int]:
        """(size, records) of this disk's sealed replica, after `verify_shard` checked it whole."""
        return verify_shard_file(self.find(shard_hex), sha256, shard_hex)

    def open_fd(self, shard_hex: str) -> int:
        """A read-only descriptor of the shard's file for a caller that keeps its own (the
        mount's reader, a copy's source); the caller closes it."""
        return open_shard_file(self.find(shard_hex))

    def unseal(self, shard_hex: str) -> bool:
        """sealed → open again (a sealed replica whose footer does not decode is recovered as an
        open one: its records checked one by one, its footer written again). False, and nothing
        renamed, when an open file of the shard is there too: a person sorts out two files."""
        sealed, open_ = self.path(shard_hex, True), self.path(shard_hex, False)
        if open_.exists():
            return False
        self.forget(shard_hex)
        os.rename(sealed, open_)
        fsync_dir(sealed.parent)
        return True

    def tmp_path(self, name: str) -> Path:
        """`<root>/tmp/<name>`: a copy in progress or gc's space reservation (the folder is made
        by the caller, on the disk it has just checked)."""
        return self.root / TMP_DIR / name

    def install(self, shard_hex: str, tmp: Path) -> None:
        """Name a complete, checked copy in `tmp` (from `tmp_path`) as the shard's sealed file,
        replacing one that is there; durable when it returns."""
        final = self.path(shard_hex, True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        self.forget(shard_hex)  # a cached descriptor would still read the file this one replaced

    def set_aside(self, shard_hex: str, src: Path | None = None) -> Path:
        """Move a shard file (`src`, by default the one `find` finds) into `<root>/orphans/`
        (a rename: no byte is lost); its mtime is set to now, so the orphan sweep's grace period
        starts from this moment (a symbolic link's own, not its target's). Returns where it went."""
        src = src or self.find(shard_hex)
        dest_dir = self.root / ORPHANS_DIR
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / f"{src.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        self.forget(shard_hex)
        os.rename(src, dest)
        os.utime(dest, follow_symlinks=not dest.is_symlink())
        fsync_dir(dest_dir)
        fsync_dir(src.parent)
        return dest

    def create(self, shard_hex: str) -> _FileSink:
        self.check()
        p = self.path(shard_hex, False)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE)
        fsync_dir(p.parent)
        return _FileSink(fd)

    def reopen(self, shard_hex: str) -> _FileSink:
        fd = os.open(self.path(shard_hex, False), os.O_WRONLY)
        os.lseek(fd, 0, os.SEEK_END)
        return _FileSink(fd)

    def seal(self, shard_hex: str) -> None:
        self.check()
        os.rename(self.path(shard_hex, False), self.path(shard_hex, True))
        fsync_dir(self.path(shard_hex, True).parent)
        self.forget(shard_hex)

    MAX_FDS = 256  # kept open per disk; more are opened while in use, then closed

    def _acquire(self, key: tuple[str, bool]) -> list[int]:
        """The shard's descriptor entry [fd, users] (opened once, kept among MAX_FDS), counted in
        use until `_release`."""
        with self._fds_lock:
            ent = self._fds.get(key)
            if ent is None:
                fd = open_shard_file(self.find(key[0]))
                if key[1]:  # exact reads
                    with contextlib.suppress(OSError):  # only a hint: the bytes are the same without it
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                ent = self._fds[key] = [fd, 1]  # in use before the trim: never its victim
                self._trim()
            else:
                self._fds.move_to_end(key)
                ent[1] += 1
        return ent

    def _release(self, key: tuple[str, bool], ent: list[int]) -> None:
        with self._fds_lock:
            ent[1] -= 1
            if ent[1] == 0 and self._fds.get(key) is not ent:  # dropped while this read used it
                _close(ent[0])

    def _pread(self, shard_hex: str, offset: int, length: int, exact: bool = False) -> bytes:
        return self._on_fd(shard_hex, exact, lambda fd: pread_full(fd, length, offset))

    def _on_fd(self, shard_hex: str, exact: bool, read: Callable[[int], T]) -> T:
        """`read(fd)` on the shard's shared descriptor (read-ahead off: `exact`), held for it."""
        with self.descriptor(shard_hex, exact) as fd:
            return read(fd)

    @contextlib.contextmanager
    def descriptor(self, shard_hex: str, exact: bool = True) -> Iterator[int]:
        """The shard's shared descriptor (read-ahead off: `exact`), held while the block runs:
        for a reader of many records of one shard in a row, one look-up for all of them.
        OSError (FileNotFoundError: no such shard file here) when it cannot be opened."""
        key = (shard_hex, exact)
        ent = self._acquire(key)
        try:
            yield ent[0]
        finally:
            self._release(key, ent)

    def _trim(self) -> None:
        """Close the least recently used idle descriptors beyond MAX_FDS (lock held)."""
        for key in [k for k, e in self._fds.items() if e[1] == 0][:max(0, len(self._fds) - self.MAX_FDS)]:
            _close(self._fds.pop(key)[0])

    def _drop(self, key: tuple[str, bool]) -> None:
        """Forget a descriptor (lock held): closed now if idle, else by its last reader."""
        ent = self._fds.pop(key, None)
        if ent is not None and ent[1] == 0:
            _close(ent[0])

    def read_at(self, shard_hex: str, offset: int, length: int) -> bytes:
        return self._pread(shard_hex, offset, length)

    def prefetch(self, shard_hex: str, offset: int, length: int) -> None:
        """Have the kernel start reading these bytes into the page cache and return at once
        (POSIX_FADV_WILLNEED on `read_exact`'s descriptor): a reader that knows its next range
        keeps the disk busy while it checks the last one. The kernel reads up to its read-ahead
        window of it; `read_exact` of the range then waits only for the rest. Only a hint:
        errors are ignored (the read that follows meets them)."""
        key = (shard_hex, True)
        try:
            ent = self._acquire(key)
        except OSError:
            return
        try:
            os.posix_fadvise(ent[0], offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            self._release(key, ent)

    def stream_at(self, shard_hex: str, offset: int, length: int, piece: int) -> Generator[bytes, None, None]:
        """The bytes in pieces, a pread each (the backend contract's; Store.iter_object reads a
        local disk's pieces itself, stream_large being False)."""
        for start in range(0, length, piece):
            yield self._pread(shard_hex, offset + start, min(piece, length - start))

    def read_exact(self, shard_hex: str, offset: int, length: int) -> bytes:
        """`read_at` with the kernel's read-ahead off: exactly these bytes come off the disk.
        For a reader that knows what it reads next (the batch planner: large ranges with gaps
        between them, each followed by another replica's share): read-ahead would read up to
        its window (2.5 MiB on the lab) past every range's end — bytes nobody asked for, which
        cost a throttled or busy disk as much as wanted ones (bench/planner_read.py: 10–20 %
        of a batch read's time)."""
        return self._pread(shard_hex, offset, length, exact=True)

    def read_exact_into(self, shard_hex: str, offset: int, buf: memoryview) -> int:
        """`read_exact` into the caller's `buf` (how many bytes: fewer only at the file's end):
        a reader of many ranges one after the other reuses one buffer, where a fresh `bytes`
        each range has the allocator carve and free ranges of up to MAX_RANGE over and over."""
        return self._on_fd(shard_hex, True, lambda fd: pread_into(fd, buf, offset))

    def read_record(self, shard_hex: str, offset: int, head: int, length: int) -> tuple[bytes, bytes]:
        """The `head` bytes before `offset` and the `length` at it — a record's header and its
        payload — each its own bytes: a reader that keeps the payload has it with no copy out
        of a buffer holding both (two reads, for a record the page cache holds)."""
        return self._on_fd(shard_hex, True, lambda fd: (pread_full(fd, head, offset - head),
                                                        pread_full(fd, length, offset)))

    def cached(self, shard_hex: str, offset: int, length: int,
               parts: Sequence[tuple[int, int]] | None = None) -> bool:
        """Whether the shard's bytes offset..offset+length — or those `parts` of them — are all
        in the page cache (`in_page_cache`: nothing read); False where the file cannot be asked."""
        try:
            return self._on_fd(shard_hex, True, lambda fd: in_page_cache(fd, offset, length, parts))
        except OSError:
            return False

    def cached_pages(self, shard_hex: str, offset: int, length: int, points: Sequence[int]) -> int:
        """How many of the pages at `points` of the shard's bytes offset..offset+length the page
        cache holds (`pages_cached`: nothing read); 0 where the file cannot be asked."""
        try:
            return self._on_fd(shard_hex, True, lambda fd: pages_cached(fd, offset, length, points))
        except OSError:
            return 0

    def read_cached_into(self, shard_hex: str, offset: int, buf: memoryview) -> tuple[int, bool]:
        """`read_exact_into` by a follower (`pread_cached_into`): the range taken from the page
        cache as another process reads it off the disk — two processes reading the same range
        at once split the disk's reads into twice as many of half the size (`runs.Follow`).
        (How many bytes, whether all came from the page cache.)"""
        return self._on_fd(shard_hex, True, lambda fd: pread_cached_into(fd, buf, offset))

    def size(self, shard_hex: str) -> int:
        return self.find(shard_hex).stat().st_size

    def delete(self, shard_hex: str) -> None:
        """Remove the shard's file durably: the directory is fsynced before this returns, so a
        caller that then forgets the shard in the index (gc, recovery) never leaves a file
        that a power cut brings back with nothing naming it. When there was no file, DiskGone
        says the disk is gone (a vanished mount looks empty) and FileNotFoundError that it
        was deleted before: a caller never counts a replica deleted that is still out there."""
        self.forget(shard_hex)
        removed = False
        for sealed in (True, False):
            with contextlib.suppress(FileNotFoundError):
                self.path(shard_hex, sealed).unlink()
                removed = True
        if removed:
            fsync_dir(self.path(shard_hex, True).parent)
            return
        self.check()
        raise FileNotFoundError(errno.ENOENT, f"no shard {shard_hex} on disk {self.label}")

    def forget(self, shard_hex: str) -> None:
        with self._fds_lock:
            for exact in (False, True):
                self._drop((shard_hex, exact))

    def close_all(self) -> None:
        with self._fds_lock:
            for key in list(self._fds):
                self._drop(key)

    def free_bytes(self, used_by_hoard: int) -> int:
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if self.capacity_bytes is not None:
            free = min(free, self.capacity_bytes - used_by_hoard)
        return max(0, free)

    def total_bytes(self) -> int:
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        return min(total, self.capacity_bytes) if self.capacity_bytes is not None else total


def corrupt_fs(err: OSError | Exception) -> bool:
    """Whether an error is a filesystem that finds its own records corrupt: ext4 answers EBADMSG
    for an inode or extent block whose checksum fails (bit rot under the shards), EUCLEAN for one
    that makes no sense. One file's damage, not a dying disk: the disk stays in service (a
    disk failed for it would leave service holding, perhaps, the one good copy of some
    object); `e2fsck -f` on its device mends the records."""
    return getattr(err, "errno", None) in (errno.EBADMSG, errno.EUCLEAN)


def fsck_step(label: str) -> str:
    """What mends a disk whose filesystem finds its own records corrupt (`corrupt_fs`)."""
    return (f"its filesystem finds its own records corrupt — unmount {label}, run `e2fsck -f` on its device, "
            "mount it again, then `hoard verify`")
