"""Storing files: read, hash, dedupe, append with retries on failing disks, report per file.

A file is read once if small (≤ STREAM_THRESHOLD) and checked not to have changed while
read (size and mtime before and after, bytes read = size). A large file is hashed in one
pass and copied in a second that hashes again: if the two differ, or its size or mtime
moved, it is rejected and nothing of it is indexed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import file_ext
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.records import (
    CHUNK,
    MAP_PIECE,
    STREAM_THRESHOLD,
    PutResult,
    SourceChanged,
    hash_file,
    read_upto,
)
from hoardfs.fsd.io.writer import ReplicaFailed, _Pending

if TYPE_CHECKING:
    from hoardfs.fsd.io.spread import SpreadWriter
    from hoardfs.fsd.store import Store

#: "existing" files (already stored) are acknowledged in runs: at most this many, or this
#: long after the first, wait for the next commit to root them with (one marks-log fsync)
KNOWN_BATCH = 256
KNOWN_WAIT_S = 1.0


#: why `put_many` refuses a file that is not the one its caller's scan saw (`expect`): the caller
#: says what to do (a batch: drop it in a new batch; an action: the resume runs its worker again)
UNLIKE_SCAN = ("not the file the scan saw (another device, inode, size or time: swapped or changed since); "
               "nothing of it was stored")


def put_files(store: Store, writer: SpreadWriter, paths: list[Path],
              on_result: Callable[[PutResult], None] | None = None,
              stop: threading.Event | None = None, root: str | None = None,
              expect: dict[str, tuple[int, int, int, int]] | None = None) -> list[PutResult]:
    """Store files; `on_result(res)` is called as soon as each file's outcome is final (a
    rejection at once; a new file when its group is committed; an "existing" at once, or
    with the next group when `root` is given).

    `root` (the reason, e.g. "hoard put"): every stored file — new or existing — becomes a
    root (Index.rooted) before it is reported, so nothing but `hoard delete --object` lets gc
    free it; the roots of a group are one index transaction and one marks-log append.

    `stop` (set by a Ctrl-C handler) ends the call at the next file boundary: what was
    appended is committed and reported, then KeyboardInterrupt is raised — so what was
    reported is exactly what was stored. Any other exception cuts the uncommitted group off.

    `expect` (an ingest's scan): path → (device, inode, size, mtime_ns); the file opened must
    be that one — a file swapped (for a link to a secret, say) since is rejected unread."""
    batch = _Batch(store, writer, on_result, root)
    batch.expect = expect or {}
    try:
        for path in paths:
            if stop is not None and stop.is_set():
                batch.finish()
                raise KeyboardInterrupt
            batch.add_file(path)
        return batch.finish()
    except KeyboardInterrupt:
        raise
    except BaseException:
        writer.rollback()
        raise


def put_payloads(store: Store, writer: SpreadWriter, items: list[tuple[str, bytes]]) -> list[PutResult]:
    batch = _Batch(store, writer)
    for name, data in items:
        res = PutResult(name)
        batch.results.append(res)
        batch.add_bytes(res, data)
    return batch.finish()


class _Batch:
    def __init__(self, store: Store, writer: SpreadWriter, on_result: Callable[[PutResult], None] | None = None,
                 root: str | None = None) -> None:
        self.store, self.writer, self.root = store, writer, root
        self.on_result = on_result or (lambda _res: None)
        self.target = store.target(writer.klass)
        self.results: list[PutResult] = []
        self.waiting: dict[bytes, list[PutResult]] = {}  # appended, not yet committed
        self.known: list[PutResult] = []  # "existing", acknowledged once rooted (see _ack)
        self.known_since = 0.0
        self.uncommitted = self.uncommitted_n = 0  # bytes and objects appended since the last commit
        self.expect: dict[str, tuple[int, int, int, int]] = {}

    # -- per file ---------------------------------------------------------------------------
    def add_file(self, path: Path) -> None:
        res = PutResult(str(path))
        self.results.append(res)
        self._add_file(res, path)
        if res.reason:  # final now; a stored file is reported by _known or at its group's commit
            self.on_result(res)
        self._ready()

    def _add_file(self, res: PutResult, path: Path) -> None:
        why = _not_storable(path)
        if why:
            res.reason = why
            return
        try:
            # O_NONBLOCK: a FIFO swapped in after the check must not block open() for ever
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            res.reason = f"cannot read it: {e.strerror}"
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                res.reason = "not a regular file"
                return
            if why := self._unlike_scan(path, st):
                res.reason = why
                return
            if st.st_size > STREAM_THRESHOLD:
                os.close(fd)
                fd = -1
                self._add_large(res, path)
                return
            data = read_upto(fd, st.st_size + 1)
            if _changed(st, os.fstat(fd)) or len(data) != st.st_size:
                res.reason = "it changed while being read; store it again when its writer is done"
                return
        except OSError as e:
            res.reason = f"cannot read it: {e.strerror}"
            return
        finally:
            if fd >= 0:
                os.close(fd)
        self.add_bytes(res, data, file_ext(str(path)))

    def add_bytes(self, res: PutResult, data: bytes, ext: str = "") -> None:
        """`ext`: the extension the object is shown with, indexed with it (first one seen wins)."""
        sha = hashlib.sha256(data).digest()
        res.sha256, res.size = sha.hex(), len(data)
        if len(data) > STREAM_THRESHOLD:  # a large object read back in pieces needs its chunk map
            view = memoryview(data)
            self.store.index.put_chunks(sha, b"".join(fmt.xxh3(view[i:i + MAP_PIECE])
                                                      for i in range(0, len(data), MAP_PIECE)))
        if self._known(res, sha):
            return
        self._retrying(lambda: self.writer.append(sha, data, ext))
        self.waiting[sha] = [res]
        self.uncommitted += len(data)
        self.uncommitted_n += 1
        if self.uncommitted >= self.writer.group_bytes or self.uncommitted_n >= self.store.group_objects:
            self._commit(wait=False)

    def _add_large(self, res: PutResult, path: Path) -> None:
        try:
            sha, digest, n, st, pieces = hash_file(path)
        except OSError as e:
            res.reason = f"cannot read it: {e.strerror}"
            return
        if why := self._unlike_scan(path, st):  # (the second pass must then find the same file: _changed)
            res.reason = why
            return
        res.sha256, res.size = sha.hex(), n
        self.store.index.put_chunks(sha, pieces)  # describes these bytes whether stored now or before
        if self._known(res, sha):
            return
        self._commit()  # the streamed record is a group of its own: a rollback touches nothing else
        try:
            self._retrying(lambda: self._stream(path, sha, digest, n, st))
        except SourceChanged as e:
            self.writer.rollback()
            res.reason = str(e)
            return
        except OSError as e:
            self.writer.rollback()
            res.reason = f"cannot read it: {e.strerror}"
            return
        self.waiting[sha] = [res]
        self._commit()
        if n + fmt.RECORD_HEADER_SIZE + fmt.SHARD_HEADER_SIZE > self.store.shard_bytes:
            self._retrying(self.writer.seal)  # a file bigger than a shard has its shard to itself

    def _stream(self, path: Path, sha: bytes, digest: bytes, n: int, st: os.stat_result) -> None:
        self.writer.append_stream(sha, digest, n, _verified_chunks(path, sha, n, st), source=path,
                                  ext=file_ext(str(path)))

    def _unlike_scan(self, path: Path, st: os.stat_result) -> str | None:
        want = self.expect.get(str(path))
        if want is None or (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == want:
            return None
        return UNLIKE_SCAN

    def _known(self, res: PutResult, sha: bytes) -> bool:
        if sha in self.waiting:
            self.waiting[sha].append(res)
            return True
        # stored again after a type-B delete: wanted after all (lookup + clearing the tombstone
        # are one transaction, see Index.lookup_keep)
        loc = self.store.index.lookup_keep(sha)
        if loc is None:
            return False
        meta = self.store.index.get_shard(loc.shard_id)
        res.status, res.target = "existing", self.target
        res.replicas = self.store.readable_replicas(meta) if meta else 0
        self._report_known(res)
        return True

    def _report_known(self, res: PutResult) -> None:
        """Report a file the index already held — here and only here. (A file this writer
        appended is reported by `_commit`, "existing" too when another writer committed the
        same bytes first; the caller once reported every "existing" it saw afterwards, so such
        a file was counted twice: 75 of 73 files for two overlapping puts.)"""
        if self.root is None:
            self.on_result(res)
            return
        self.known.append(res)  # acknowledged once its root is written (see _ack)
        self.known_since = self.known_since or time.monotonic()
        if len(self.known) >= KNOWN_BATCH or time.monotonic() - self.known_since > KNOWN_WAIT_S:
            self._ack([])

    # -- commits and retries -----------------------------------------------------------------
    def _commit(self, wait: bool = True) -> None:
        """Commit what is appended: wait for its fdatasync on every replica, or (`wait=False`,
        a full group in the middle of a batch) queue it and go on reading the next files while
        the disks take it — its files are reported once it is done (`_ready`, or the next
        commit, which finishes it first). Either way a file is reported only after its group
        was fsynced on every replica and indexed (ShardWriter.finish_commit), in whichever of
        the writer's open shards it went to (hoardfs.fsd.io.spread)."""
        self._retrying(self.writer.commit if wait else self.writer.start_commit)
        self.uncommitted = self.uncommitted_n = 0
        self._report_committed()

    def _ready(self) -> None:
        """Report the group being fsynced if every replica's fdatasync is done (never waits)."""
        self._retrying(self.writer.commit_ready)
        if self.writer.committed_log:
            self._report_committed()

    def _report_committed(self) -> None:
        replicas = self.store.cfg.store.write_ack
        done: list[PutResult] = []
        for sha, added in self.writer.drain_committed():
            for i, res in enumerate(self.waiting.pop(sha, [])):
                res.status = "new" if added and i == 0 else "existing"
                res.replicas, res.target = replicas, self.target
                done.append(res)
        self._ack(done)

    def _ack(self, done: list[PutResult]) -> None:
        """Report a committed group and the "existing" files seen since the last one — after
        rooting them all (one index transaction, one marks-log append per disk) when the
        caller asked for roots: a reported file is never one gc may free."""
        done, self.known, self.known_since = done + self.known, [], 0.0
        if self.root is not None and done:
            self.store.index.mark(self.store.index.rooted, [bytes.fromhex(r.sha256) for r in done], self.root)
        for res in done:
            self.on_result(res)

    def _retrying(self, fn: Callable[[], object]) -> None:
        """Run fn; when a replica fails, move the uncommitted group to other disks and retry."""
        # a failed disk fails each open shard on it once: every one is cut and written again
        for _ in range(len(self.store.disks) * len(self.writer.writers) + 1):
            try:
                fn()
                return
            except ReplicaFailed as f:
                self.writer.disk_failed(f)
                group = self.writer.abandon_group()
                self._retrying(functools.partial(self._replay, group))
        raise HoardError("writes keep failing on every disk; see `hoard health`", ExitCode.UNAVAILABLE)

    def _replay(self, group: list[_Pending]) -> None:
        have = self.writer.pending_shas()
        for p in group:
            if p.sha in have:
                continue
            if p.payload is not None:
                self.writer.append(p.sha, p.payload, p.ext)
            else:
                assert p.source is not None
                st = os.stat(p.source)
                self.writer.append_stream(p.sha, p.digest, p.loc.length,
                                          _verified_chunks(p.source, p.sha, p.loc.length, st), source=p.source,
                                          ext=p.ext)

    def finish(self) -> list[PutResult]:
        self._commit()
        self._retrying(self.writer.seal)
        return self.results


def _not_storable(path: Path) -> str | None:
    """Why `path` is not a regular file that can be stored (checked before it is opened: a
    FIFO would block open(), a device would never end), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a dangling symlink (its target is gone)" if os.path.islink(path) else "no such file"
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}.get(stat.S_IFMT(st.st_mode), "not a file")
    return f"{kind}, not a regular file: only regular files are stored"


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) != (b.st_size, b.st_mtime_ns, b.st_ino)


def _verified_chunks(path: Path, sha: bytes, n: int, st: os.stat_result) -> Iterator[bytes]:
    """The file's bytes in chunks; SourceChanged at the end if they are not what was hashed."""
    h = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            total += len(chunk)
            if total > n:
                raise SourceChanged("it grew while being stored; store it again when its writer is done")
            h.update(chunk)
            yield chunk
        st2 = os.fstat(f.fileno())
    if total != n or h.digest() != sha or _changed(st, st2):
        raise SourceChanged("it changed while being stored; store it again when its writer is done")
