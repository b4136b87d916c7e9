"""The pyfuse3 operations: each a debug log, a guard, a helper; errno only here.

How the daemon uses trio: every handler runs on the one trio thread, and none of them
blocks it. Listings come from LMDB (short read transactions on the SSD, never held across
an `await`) and from manifest pages — a page not loaded yet is loaded in a worker thread
(`trio.to_thread`), the only await of lookup/opendir. Object bytes come from `Reader`,
whose per-disk queues fill buffers; a handler awaits a buffer only when it is not ready
yet (a trio Event set from the disk's thread), so a sequential reader costs no thread hop
per request; a small object whose pages the daemon read before is read from the kernel's
page cache right here (`preadv` with RWF_NOWAIT: it fails rather than wait for a disk).
Deletions, name changes, disks, `.hoard/health` and `statfs` figures are kept fresh by
`Watcher` in worker threads and answered from memory. The mount is read-only (EROFS);
`inbox` is a symlink into zone 3A, so writes there bypass FUSE altogether.

Files are opened in one of two ways (`NO_OPEN`, said in the log and `.hoard/health`): with
pyfuse3 built with hoardfs's patch (fsd/mount/pyfuse3-noopen.patch) the first OPEN is
answered ENOSYS, the kernel then opens files itself (no OPEN or RELEASE again, handle 0,
pages kept) and READ carries the inode — what a file being read needs is kept per inode in a
bounded LRU (`_Recent`). With pyfuse3 as released, each OPEN gets a handle as before.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from typing import NoReturn

import pyfuse3
import trio

from hoardfs.base import modes
from hoardfs.base.errors import HoardError
from hoardfs.fsd.core.records import ObjectNotFound
from hoardfs.fsd.mount.namespace import DERIVED, Namespace, Node
from hoardfs.fsd.mount.reader import SMALL_MAX, ObjectGone, Reader, ReadFailed, _Stream
from hoardfs.fsd.mount.watch import Watcher

log = logging.getLogger(__name__)

#: content never changes: the kernel may keep names and attributes (S3QL uses 3600 s too);
#: a view redefined or a file deleted is invalidated explicitly (`Watcher`)
ENTRY_TIMEOUT = 3600
#: directories that grow (batches/, sources/, views/, by-hash leaves) are re-checked this often
LISTING_TIMEOUT = 5
#: pyfuse3 hands read() the inode when the kernel opens files without OPEN (hoardfs's patch,
#: fsd/mount/pyfuse3-noopen.patch; the Makefile builds it): files are then opened by the kernel
#: alone. False with pyfuse3 as released — every open asks the daemon, as before the patch
NO_OPEN = bool(getattr(pyfuse3, "READ_GETS_INODE_WITHOUT_OPEN", False))
#: no-open: files being read whose state is kept (nothing releases it): small objects' verified
#: bytes up to RECENT_BYTES in all, large objects' read-ahead streams up to RECENT_STREAMS
#: (each holds up to 16 pieces of 1 MiB read ahead). An evicted small file read again is
#: fetched again — from the page cache mostly (reader.py); a stream's pieces are cancelled
RECENT_BYTES = 64 << 20
RECENT_STREAMS = 32
#: … and small files' entries at most (one whose read failed holds no bytes)
RECENT_FILES = 4096


def _object(n: Node) -> bytes:
    """The sha256 of a file's node (every file but .hoard/health is an object)."""
    assert n.sha is not None
    return n.sha


@dataclass
class _Open:
    node: Node
    lane: object = 0  # the reader's lane in each disk's queue (its pid)
    data: bytes | None = None  # small objects and .hoard/health: whole, verified (at the first read)
    stream: _Stream | None = None  # large objects: read-ahead state (from the first read)
    loading: trio.Event | None = None  # a small object's bytes being read for a first read


class _Recent:
    """No-open: the state of the files being read, per inode, least recently read first out."""

    def __init__(self, max_bytes: int = RECENT_BYTES, max_streams: int = RECENT_STREAMS,
                 max_files: int = RECENT_FILES) -> None:
        self.max_bytes, self.max_streams, self.max_files = max_bytes, max_streams, max_files
        self.small: OrderedDict[int, _Open] = OrderedDict()
        self.streams: OrderedDict[int, _Open] = OrderedDict()
        self.bytes = 0  # of the small objects' data held

    def __contains__(self, inode: int) -> bool:
        return inode in self.small or inode in self.streams

    def get(self, inode: int) -> _Open | None:
        for table in (self.small, self.streams):
            h = table.get(inode)
            if h is not None:
                table.move_to_end(inode)
                return h
        return None

    def drop(self, inode: int) -> None:
        """The kernel forgot `inode`: its number may come to name another file (a row's)."""
        h = self.small.pop(inode, None)
        if h is not None and h.data is not None:
            self.bytes -= len(h.data)
        h = self.streams.pop(inode, None)
        if h is not None:
            _close(h)

    def add(self, inode: int, h: _Open) -> None:
        """A file's first READ since it was last kept (the oldest go while there are too many)."""
        if h.node.size > SMALL_MAX:
            self.streams[inode] = h
            while len(self.streams) > self.max_streams:
                _close(self.streams.popitem(last=False)[1])
        else:
            self.small[inode] = h
            self._trim()

    def loaded(self, h: _Open) -> None:
        """A small object's bytes came (the oldest files' go while there are too many)."""
        assert h.data is not None
        if self.small.get(h.node.inode) is h:  # (else evicted while being read: only its READs hold it)
            self.bytes += len(h.data)
            self._trim()

    def _trim(self) -> None:
        while (self.bytes > self.max_bytes or len(self.small) > self.max_files) and len(self.small) > 1:
            _, old = self.small.popitem(last=False)
            if old.data is not None:
                self.bytes -= len(old.data)


def _close(h: _Open) -> None:
    """A large object's pieces read ahead for a file nobody reads now are not waited for."""
    if h.stream is not None:
        for fut in h.stream.pieces.values():
            fut.cancel()


def _guarded(fn):
    """A bug in one handler must cost one request (EIO, logged with its traceback), not the
    whole mount: pyfuse3 ends its main loop on any exception that is not a FUSEError."""
    @functools.wraps(fn)
    async def handler(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("mount: %s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


class HoardOps(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, ns: Namespace, reader: Reader, watcher: Watcher, no_open: bool = NO_OPEN) -> None:
        super().__init__()
        self.ns, self.reader, self.watcher = ns, reader, watcher
        self.no_open = no_open
        self.handles: dict[int, _Open] = {}  # open per file: by handle
        self.recent = _Recent()  # no-open: by inode
        self.dir_handles: dict[int, tuple[Node, list]] = {}
        self.next_fh = 1
        #: who a node belongs to: the mounting user and the `hoard` group (its own without one)
        gid = modes.group_id()
        self.owner = (os.geteuid(), os.getegid() if gid is None else gid)

    # -- attributes ------------------------------------------------------------------------------
    def _attr(self, n: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.inode
        a.st_mode = n.mode
        a.st_nlink = 2 if stat.S_ISDIR(n.mode) else 1
        a.st_uid, a.st_gid = self.owner
        a.st_size = len(self.watcher.health_text()) if n.key == ("health",) else n.size
        a.st_blksize = 1 << 20
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = n.mtime_ns
        growing = stat.S_ISDIR(n.mode) and n.key[1] in ("root", "batches", "sources", "source", "views", "hash2")
        a.entry_timeout = LISTING_TIMEOUT if growing or n.key == ("health",) else ENTRY_TIMEOUT
        a.attr_timeout = 0 if n.key == ("health",) else a.entry_timeout
        a.generation = self.ns.generation(n)
        return a

    def _get(self, inode: int) -> Node:
        n = self.ns.nodes.get(inode)
        if n is None:  # a number kept in no table that names nothing now: the kernel looks the name up again
            raise pyfuse3.FUSEError(errno.ESTALE if inode >= DERIVED else errno.ENOENT)
        return n

    @_guarded
    async def getattr(self, inode, ctx=None):
        log.debug("getattr %d", inode)
        return self._attr(self._get(inode))

    @_guarded
    async def lookup(self, parent_inode, name, ctx=None):
        log.debug("lookup %d %r", parent_inode, name)
        parent = self._get(parent_inode)
        if not stat.S_ISDIR(parent.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = parent if name == b"." else await self._named(self.ns.lookup(parent, name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        # the parent's own number object: one int for all the names it holds, not one each
        node = self.ns.remember(node, parent.inode, name)
        if node.sha is not None and not self.ns.shown(parent.key, node.sha):  # deleted meanwhile: as readdir below
            self.ns.forget(node.inode, 1)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(node)

    @_guarded
    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.ns.forget(inode, count)
            if self.no_open and inode in self.recent and (inode >= DERIVED or self.ns.nodes.get(inode) is None):
                self.recent.drop(inode)

    @_guarded
    async def readlink(self, inode, ctx):
        n = self._get(inode)
        if n.key[0] != "link":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(n.key[1])

    @_guarded
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        total, free = self.watcher.space()  # measured in the background: a dying disk's statvfs may hang
        s.f_bsize = s.f_frsize = 1 << 20
        s.f_blocks, s.f_bfree, s.f_bavail = total >> 20, free >> 20, free >> 20
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- directories ---------------------------------------------------------------------------
    @_guarded
    async def opendir(self, inode, ctx):
        log.debug("opendir %d", inode)
        n = self._get(inode)
        if not stat.S_ISDIR(n.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = (n, await self._named(self.ns.children(n)))  # a snapshot: offsets stay stable
        return fh

    @_guarded
    async def readdir(self, fh, start_id, token):
        handle = self.dir_handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        parent, entries = handle
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            node = self.ns.remember(node, parent.inode, name)  # readdirplus: the kernel now knows it
            if node.sha is not None and not self.ns.shown(parent.key, node.sha):
                # deleted since opendir's snapshot: a name the deletions refresh did not see (it
                # looks only after it has taken the object as dead) would stay for ENTRY_TIMEOUT
                self.ns.forget(node.inode, 1)
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                self.ns.forget(node.inode, 1)  # it did not fit: not told after all
                return

    @_guarded
    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    # -- files ------------------------------------------------------------------------------------
    @_guarded
    async def open(self, inode, flags, ctx):
        log.debug("open %d", inode)
        n = self._get(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if stat.S_ISDIR(n.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if self.no_open:
            # the mount's first OPEN only: from now on the kernel opens files itself — file handle
            # 0, their pages kept (FOPEN_KEEP_CACHE), no RELEASE — and READ carries the inode. A
            # file whose object was collected is told at its first READ (ESTALE)
            raise pyfuse3.FUSEError(errno.ENOSYS)
        # the reader's own lane in each disk's queue: readers are served in turn
        h = _Open(n, lane=ctx.pid)
        if n.key == ("health",):
            h.data = self.watcher.health_text()
        elif self.ns.index.lookup(_object(n)) is None:
            # collected after the kernel was told its name: the kernel looks it up again
            log.info("mount: object %s is no longer in the store", _object(n).hex())
            raise pyfuse3.FUSEError(errno.ESTALE)
        # no byte is read here: with keep_cache a file read before is served from the kernel's
        # page cache, and an open then costs the daemon only this (an epoch over a dataset
        # whose pages are cached sends no READ); the first READ fetches the object
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = h
        # content never changes: the page cache may keep it; health is regenerated per open
        return pyfuse3.FileInfo(fh=fh, keep_cache=n.key != ("health",), direct_io=n.key == ("health",))

    @_guarded
    async def read(self, fh, off, size):
        h = await self._recent(fh) if self.no_open else self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if h.node.key == ("health",) and self.no_open:  # regenerated: its pages are invalidated as it changes
            return self.watcher.health_text()[off:off + size]
        try:
            if h.data is None and h.node.size <= SMALL_MAX:
                await self._load(h)
            if h.data is not None:
                return h.data[off:off + size]
            if h.stream is None:
                log.debug("fetch %d", h.node.inode)
                h.stream = self.reader.open_stream(_object(h.node), h.node.size, h.lane)
            return await self._verified(self.reader.read_stream(h.stream, off, size))
        except pyfuse3.FUSEError as e:
            if e.errno == errno.ESTALE and self.no_open:  # (collected: _verified)
                self.recent.drop(fh)
                await self._stale(fh, h.node.sha)
            raise

    async def _stale(self, inode: int, sha: bytes | None) -> NoReturn:
        """No-open: ESTALE for a READ of a file that is gone, once the kernel's names of it are
        invalidated — with no OPEN to answer ESTALE to (the kernel would look the name up again
        then), nothing else makes it drop a name it holds for ENTRY_TIMEOUT. A by-hash number's
        name may not be derivable (a collected object's): its attributes are invalidated, so the
        next stat (or open, with default_permissions) asks GETATTR, whose ESTALE makes the VFS
        look the name up again. Only the attributes: dropping the pages would wait for this
        READ's own. In a worker thread: naming a view's file may read a manifest page, and an
        invalidation waits for the kernel."""
        def invalidate() -> int:
            told = 0
            for parent, name in self.ns.names_of(inode, sha):
                try:
                    pyfuse3.invalidate_entry(parent, name)
                    told += 1
                except OSError as e:  # (ENOENT: the kernel forgot it meanwhile)
                    log.debug("invalidate %d %r: %s", parent, name, e)
            if inode >= DERIVED:
                try:
                    pyfuse3.invalidate_inode(inode, attr_only=True)
                except OSError as e:
                    log.debug("invalidate %d: %s", inode, e)
            return told

        told = await trio.to_thread.run_sync(invalidate)
        log.info("mount: inode %d is gone: %d kernel entries invalidated", inode, told)
        raise pyfuse3.FUSEError(errno.ESTALE)

    async def _recent(self, inode: int) -> _Open:
        """No-open: what a READ of `inode` reads from — kept since the file's last READ, or new.
        ESTALE for a number that names nothing now (the kernel held it open or cached its name
        before its object was collected, or another object came to share its bits)."""
        h = self.recent.get(inode)
        if h is None:
            n = self.ns.nodes.get(inode)
            if n is None:
                log.info("mount: inode %d names nothing now", inode)
                await self._stale(inode, None)
            if n.sha is None and n.key != ("health",):
                raise pyfuse3.FUSEError(errno.EISDIR)
            # READ has no context: each file its own lane in the disks' queues (in turn per file)
            h = _Open(n, lane=inode)
            self.recent.add(inode, h)
        return h

    async def _load(self, h: _Open) -> None:
        """A small object's bytes, whole and verified, into its handle — once, however many
        READs the kernel sends for it at once (a failed load is tried again by the next)."""
        while h.data is None:
            if h.loading is not None:
                await h.loading.wait()
                continue
            h.loading = loading = trio.Event()
            log.debug("fetch %d", h.node.inode)
            try:
                h.data = await self._verified(self.reader.read_small(_object(h.node), h.lane))
                if self.no_open:
                    self.recent.loaded(h)
            finally:
                h.loading = None
                loading.set()

    @_guarded
    async def release(self, fh):  # (open per file only: with no-open the kernel sends none)
        h = self.handles.pop(fh, None)
        if h is not None:
            _close(h)

    async def _named(self, coro):
        """A listing or lookup that may read a manifest page: a page gc freed (a view redefined
        under a reader inside it) is ESTALE, an unreadable one EIO — one log line each."""
        try:
            return await coro
        except ObjectNotFound as e:
            log.warning("mount: %s (a view redefined and collected while in use?)", e.message)
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except HoardError as e:
            log.error("mount: %s", e.message)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def _verified(self, coro):
        try:
            return await coro
        except ObjectGone as e:  # collected after the kernel was told its name: the kernel looks it up again
            log.info("mount: %s", e)
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except ReadFailed as e:
            log.error("mount: %s", e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # -- everything that would change the tree ------------------------------------------------
    async def _readonly(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = create = write = _readonly
    setxattr = removexattr = _readonly

