"""Durable small-file writes: tmp → fsync → rename → fsync the directory.

What every package writes beside its data (identity files, pointers, job state, backups)
must either be there whole after a power cut or not at all (docs/design.md, durability rules).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.modes import FILE, PRIVATE, ensure_dir, rewrite_mode


def size_or_zero(path: str | os.PathLike[str]) -> int:
    """A file's size; 0 when it is gone or cannot be looked at (a size for progress and
    accounting, never for a decision about data)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def ssd_full(ssd_root: Path, what: str, cause: str) -> HoardError:
    """One line for a write the full SSD refused: the SSD and the next step, exit 6."""
    return HoardError(f"{what}: the SSD is full — {cause}; free space on the SSD at {ssd_root} (`hoard zones` "
                      "shows what holds it, `hoard zones clean ID` removes a finished output) and run this again",
                      ExitCode.NO_SPACE)


@contextlib.contextmanager
def ssd_space(ssd_root: Path, what: str, path: Path | str | None = None) -> Iterator[None]:
    """A full file system under a with-block that writes on the SSD (a lock's holder file, a
    spool: `path`, named when the error names no file) becomes `ssd_full`; other errors pass."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ssd_full(ssd_root, what, f"cannot write {e.filename or path or ssd_root} ({e.strerror})") from None


def same_inode(held: os.stat_result, now: os.stat_result | None) -> bool:
    """Whether `now` (a path's stat, None when the path is gone) is the file `held` (a held
    descriptor's fstat): the name still names what was opened, not a file swapped in since."""
    return now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def flocked(path: Path, wait: bool = True, transient: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be) for the with-block: one holder
    at a time across processes; the kernel drops it when the holder dies (kill -9 included).
    With `wait=False`, BlockingIOError at once when another process holds it. A lock file this
    user may only read (made by root: a command run as root beside the services) is locked
    through a read-only descriptor — flock needs no write access — instead of failing.

    `transient`: the lock file is removed as the block ends (while still held), so a short
    critical section leaves no file behind, whether it succeeds or fails. That is safe because
    every holder checks, once it has the lock, that `path` still names the file it locked — a
    waiter that got the lock of a removed file opens `path` again."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (it exists: creating it was not what was refused)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if not same_inode(mine, now):
                continue  # a transient holder removed it while this one waited: lock the new file
            try:
                yield
            finally:
                if transient:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            return
        finally:
            os.close(fd)


def syncfs(path: Path) -> None:
    """syncfs(2) on the filesystem holding `path`: everything written there is durable (one
    call for a whole tree of files, instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        syncfs_fd(fd, path)
    finally:
        os.close(fd)


def syncfs_fd(fd: int, path: Path | str = "") -> None:
    """syncfs(2) through an open descriptor: a writeback error on that filesystem since the
    descriptor was opened (or last reported through it) is raised once."""
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


_libc = ctypes.CDLL(None, use_errno=True)

SYNC_FILE_RANGE_WAIT_BEFORE = 1  # <linux/fs.h>: wait for writeback under way, report a failed one
SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages
SYNC_FILE_RANGE_WAIT_AFTER = 4  # wait until that writeback is done
#: all three: the range's pages are on the disk (not its metadata, not the drive's cache:
#: an fdatasync still makes a file durable)
SYNC_FILE_RANGE_ALL = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
_sync_file_range = getattr(_libc, "sync_file_range", None)  # not in Python's os
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> bool:
    """sync_file_range(2) on `length` bytes at `offset` (0: to the end of the file). False
    when the C library has no such call (nothing was done: the caller falls back to
    fdatasync); OSError when the kernel reports a failure (a writeback error included)."""
    if _sync_file_range is None:
        return False
    if _sync_file_range(fd, offset, length, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return True


#: the longest file name Linux file systems take, in bytes
NAME_MAX = 255

#: whether a file made with O_TMPFILE can be given a name (linkat through /proc/self/fd)
_PROC_FD = os.path.isdir("/proc/self/fd")


def writer_tmp(path: Path, suffix: str = "tmp") -> Path:
    """A temporary name beside `path` that is this writer's alone: `.<name>.<pid>-<random>.<suffix>`
    (the name cut short to keep within NAME_MAX, 255 bytes). One name shared by every writer
    let two at once publish a torn file: the second removed the first's temporary file and
    wrote a new one there, and the first then renamed the second's half-written file over
    `path`. The random part also keeps a planted link from being guessed."""
    tail = f".{os.getpid()}-{secrets.token_hex(4)}.{suffix}"
    head = os.fsencode(path.name)[: NAME_MAX - 1 - len(tail)]
    return path.with_name(f".{os.fsdecode(head)}{tail}")


def atomic_write(path: Path, data: bytes | Iterable[bytes], prepare: Callable[[int], None] | None = None) -> None:
    """A new file replaces `path` whole (`replacing`): a crash leaves the old file or the new
    one, two writers at once each publish a whole file (the last one wins). The new file is
    0640, or as strict as the file it replaces; `prepare(fd)` runs on it before it is synced
    and has a name (another mode or owner, say: by the descriptor, never by a path). `data`:
    the bytes, or pieces of them."""
    try:
        with replacing(path, rewrite_mode(path)) as f:
            for piece in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(piece)
            f.flush()
            if prepare is not None:
                prepare(f.fileno())
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None  # (a write or flush names no file)


#: the mode of a file of the service's own state (a run's state and work files): nobody else
#: reads or writes it, the `hoard` group included
OWN = 0o600


class NotOwn(HoardError):
    """A state file the service did not write (another account's, writable by others, a link,
    not a regular file): not read. One line naming the file and the next step."""

    exit_code = ExitCode.DATA


def write_owned(path: Path, data: bytes) -> None:
    """`atomic_write` of a file of the service's own state, 0600 from its first byte (set on the
    descriptor before it has a name): what `load_owned` reads back."""
    atomic_write(path, data, lambda fd: os.fchmod(fd, OWN))


def not_own(st: os.stat_result) -> str | None:
    """Why a file with status `st` is not one of the service's own state files (a clause), or
    None: a regular file owned by this process's user (or root, who may write anything
    anyway), writable by nobody else — its group and others cannot write it."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {st.st_uid}, not by this service's user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def load_owned(path: Path) -> bytes:
    """The bytes of `path`, a file of the service's own state (`write_owned`). A file another
    local account planted there (in a directory its group may write), one others may write,
    a symbolic link or anything but a regular file is not read: `NotOwn`, one line naming the
    file and that it is to be removed. FileNotFoundError when there is none; another OSError
    (a directory this user cannot read) as it comes. Opened without following a link, its
    directory walked without following another account's (`open_regular`), judged on the
    descriptor read (no swap between the check and the read)."""
    def refuse(why: str) -> NotOwn:
        return NotOwn(f"{path}: {why}: not written by hoardfs, so it is not read; remove it")

    try:
        fd = open_regular(path, walk=True)
    except PlantedLink as e:
        raise refuse(e.strerror or "a symbolic link on the way") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise refuse("a symbolic link") from None
        if e.errno == errno.EINVAL:
            raise refuse("not a regular file") from None
        raise
    try:
        why = not_own(os.fstat(fd))
        if why:
            raise refuse(why)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_OWN_DIRS: set[Path] = set()


def state_directory(path: Path) -> Path:
    """`path`, a directory of the service's state (`<ssd.root>/state/actions`, `…/ingest`,
    `…/outputs`), made if missing and given the mode of `state/` (0750: the service writes,
    its group reads; a group- or world-writable mode a person set is taken back) the first
    time a process asks for it, and again whenever it had to be made anew."""
    try:
        path.mkdir(parents=True)  # (the umask's modes; a file in its place: named here)
        _OWN_DIRS.discard(path)
    except FileExistsError:
        pass
    if path not in _OWN_DIRS:
        ensure_dir(path, PRIVATE)
        _OWN_DIRS.add(path)
    return path


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy a file of any size (streamed) as `atomic_write` writes one."""
    with open(src, "rb") as fin, replacing(dest, rewrite_mode(dest)) as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)
        fout.flush()
        os.fsync(fout.fileno())


@contextlib.contextmanager
def replacing(path: Path, mode: int, suffix: str = "tmp") -> Iterator[BinaryIO]:
    """A new file, open for writing with `mode`, that replaces `path` when the block ends
    without an error (the caller fsyncs what it wrote): renamed over `path`, the directory
    synced. It is made without a name (O_TMPFILE) and given this writer's own temporary name
    (`writer_tmp`) only once written, just before the rename: a writer killed part way (a
    power cut, SIGKILL, `timeout` around `hoard get -o`) leaves nothing behind — a named
    temporary file of each killed attempt stayed for good. Where the file system cannot make
    one (O_TMPFILE unsupported) the file is made at its temporary name from the start
    (`create_new`). A block that raises leaves `path` as it was and no temporary file."""
    dfd = open_dir(path.parent)  # every step in this one directory, reached through no planted link
    tmp: str | None = None
    try:
        f = _unnamed(dfd, mode)
        if f is None:
            tmp = writer_tmp(path, suffix).name
            f = create_new(tmp, mode, dir_fd=dfd)
        with f:
            yield f
            if tmp is None:
                named = writer_tmp(path, suffix).name
                # linkat of /proc/self/fd/N following it (open(2), O_TMPFILE); os.link calls
                # linkat only when given a directory's fd — link(2) would give EXDEV
                os.link(f"/proc/self/fd/{f.fileno()}", named, dst_dir_fd=dfd)
                tmp = named
        os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = None
        os.fsync(dfd)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)


def _unnamed(dir_fd: int, mode: int) -> BinaryIO | None:
    """A new file without a name in the directory open at `dir_fd`, open for writing with
    `mode`; None where the file system (or this machine: no /proc) cannot make one."""
    if not _PROC_FD:
        return None
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise
    os.fchmod(fd, mode)
    return open(fd, "wb")


def create_new(tmp: Path | str, mode: int, dir_fd: int | None = None) -> BinaryIO:
    """`tmp` new, empty and open for writing with `mode` whatever the umask. A leftover there
    (a crash's, or a link planted where hoardfs writes: the `_REASON.txt` of a batch directory
    in 3A is written as root in a directory the scraper owns) is removed, never followed or
    truncated — a link at `._REASON.txt.tmp` once had a root-only file overwritten. `dir_fd`:
    `tmp` is a name in the directory open there."""
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
            break
        except FileExistsError:  # made again between the unlink and the open: another writer
            continue
    else:
        raise FileExistsError(errno.EEXIST, "made again each time it was removed", str(tmp))
    os.fchmod(fd, mode)
    return open(fd, "wb")


def open_regular(path: Path, what: str = "not a regular file", walk: bool = False) -> int:
    """A read-only descriptor of the regular file at `path`, opened without following a link
    (OSError ELOOP) or waiting on a FIFO (O_NONBLOCK: it is opened, not waited on); anything
    but a regular file is closed again and refused with OSError EINVAL and `what`. `walk`:
    its directory reached by `open_dir` (no link another account planted on the way: a file
    in a directory others can change)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if walk:
        dfd = open_dir(path.parent)
        try:
            fd = os.open(path.name, flags, dir_fd=dfd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
        finally:
            os.close(dfd)
    else:
        fd = os.open(path, flags)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise OSError(errno.EINVAL, what, str(path))
    return fd


def read_in_zone(path: Path, limit: int = 64 << 10) -> bytes:
    """At most `limit` bytes of the regular file at `path`, in a directory others write (a
    batch of 3A: its `_READY`, `_REASON.txt`). A symbolic link there is never followed — a
    `_READY` linked to a root-only file had its first word shown as the 'unknown source' — and
    a fifo or device is not read (OSError naming what it is)."""
    try:
        fd = open_regular(path, walk=True)
    except OSError as e:
        if e.errno == errno.ELOOP and e.filename == str(path):  # (open_dir's own names the link on the way)
            raise OSError(errno.ELOOP, "a symbolic link, never followed there", str(path)) from None
        raise
    try:
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_nofollow(root_fd: int, rel: str, create: int | None = None) -> int:
    """A descriptor of the file `rel` (a checked relative path) under the directory `root_fd`,
    every directory on the way and the file opened without following a link (OSError ELOOP,
    "a symbolic link, never followed", for a link), and without blocking (a fifo is opened, not
    waited on: fstat says what it is). `create`: the file is made new for writing (O_EXCL:
    FileExistsError if anything is there) with this mode, and each directory on the way made
    (0750) where missing — a link planted where a directory goes is still never followed."""
    parts = rel.split("/")
    fd = root_fd
    try:
        for d in parts[:-1]:
            if create is not None:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d, 0o750, dir_fd=fd)
            try:
                nxt = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except NotADirectoryError:  # (a link there is ENOTDIR with O_DIRECTORY, as a file is)
                if stat.S_ISLNK(os.lstat(d, dir_fd=fd).st_mode):
                    raise OSError(errno.ELOOP, "a symbolic link, never followed", d) from None
                raise
            if fd != root_fd:
                os.close(fd)
            fd = nxt
        if create is not None:
            return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, create,
                           dir_fd=fd)
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


#: links followed on the way to one directory (the kernel's own bound, path_resolution(7))
_MAX_LINKS = 40
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class PlantedLink(OSError):
    """A symbolic link on the way to a directory that neither root nor this process owns:
    not followed (`open_dir`). errno ELOOP; `filename` the whole path asked for."""


def open_dir(path: Path | str) -> int:
    """A descriptor of the directory `path`, walked to one component at a time from `/` (or
    the working directory) without following a symbolic link unless root or this process owns
    it — on the model of the kernel's fs.protected_symlinks, which guards only sticky
    world-writable directories and also trusts the directory owner's links; here every
    directory is guarded and only root's and our own links are followed. A file hoardfs
    replaces as root in a directory another account can change (PostgreSQL's conf.d, owned by
    postgres; a scraper's batch directory in 3A) would otherwise be written wherever a link
    that account planted on the way points (`hoard install` writing a root-run setting into
    /etc): refused with `PlantedLink` naming the link and its owner. A link the administrator
    made (root's: /srv/ssd → /mnt/ssd1) is followed as before. Each link is looked at and read
    through one descriptor of it (O_PATH: no swap between the owner's check and its target);
    the directories on the way need search permission only, the last one read permission (as
    a plain open of it). Relies on fs.protected_hardlinks (Debian's default): otherwise a hard
    link to a root-owned symbolic link would pass for root's. Any error's `filename` is `path`."""
    text = os.fspath(path)
    todo = [c for c in text.split("/") if c not in ("", ".")]
    todo.reverse()  # (a stack: a followed link's components go on top)
    links, walked = 0, [""] if text.startswith("/") else ["."]
    fd = os.open("/" if text.startswith("/") else ".", _PATH_FLAGS | os.O_DIRECTORY)
    try:
        while todo:
            name = todo.pop()
            nxt = os.open(name, _PATH_FLAGS, dir_fd=fd)
            try:
                st = os.fstat(nxt)
                target = None
                if stat.S_ISLNK(st.st_mode):
                    where = "/".join([*walked, name]) or "/"
                    if st.st_uid not in (0, os.geteuid()):
                        on_the_way = "" if os.path.normpath(where) == os.path.normpath(text) else f" on the way to {text}"
                        raise PlantedLink(errno.ELOOP, f"{where}: a symbolic link owned by uid {st.st_uid}{on_the_way}, "
                                          "not followed (a link another account made could send this write "
                                          "anywhere) — put the real directory in its place, or a link root owns", text)
                    links += 1
                    if links > _MAX_LINKS:
                        raise OSError(errno.ELOOP, f"more than {_MAX_LINKS} links on the way to {text}", text)
                    target = os.readlink("", dir_fd=nxt)  # (the link looked at, not its name again)
                elif not stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), text)
            except BaseException:
                os.close(nxt)
                raise
            if target is not None:  # followed: its components next, from its directory or from /
                os.close(nxt)
                todo.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
                if target.startswith("/"):
                    top = os.open("/", _PATH_FLAGS | os.O_DIRECTORY)
                    os.close(fd)
                    fd, walked = top, [""]
                continue
            os.close(fd)
            fd = nxt
            walked = walked[:-1] if name == ".." and len(walked) > 1 else [*walked, name]
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    except PlantedLink:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, text) from None
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_bytes(doc: Any, sort_keys: bool = False) -> bytes:
    """`doc` (JSON data, or a dataclass of it) as indented JSON in UTF-8 — a state or a seal's
    manifest a person may read. orjson writes it (the json module indents in Python: a stage of
    100,000 files spent seconds there); what orjson refuses — a path with a surrogate escape
    (undecodable bytes), an integer past 64 bits — the json module writes, escaped."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | (orjson.OPT_SORT_KEYS if sort_keys else 0))
    except TypeError:  # (orjson.JSONEncodeError is one)
        if dataclasses.is_dataclass(doc) and not isinstance(doc, type):
            doc = dataclasses.asdict(doc)
        return json.dumps(doc, indent=1, sort_keys=sort_keys).encode()
