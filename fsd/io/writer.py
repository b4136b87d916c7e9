"""The write path: append records to an open shard on `write_ack` disks, fsync, then index.

Rules (docs/design.md, "Durability"):
- An index entry MUST only point at bytes that are fsynced on `write_ack` distinct disks:
  a group of records is written to every replica, fdatasync'ed on every replica, and only
  then committed to LMDB in one transaction. The fdatasync may run while the caller reads
  and appends the next group (`start_commit`, then `finish_commit` or `commit_ready`): a
  group is exactly the records queued before its fdatasync on each replica's lane (writes
  queued after it are not counted durable), and it is indexed only once every replica's
  fdatasync returned and every disk passed its probe.
- A failing replica (ENOSPC, EIO, a vanished disk) never leaves a half-indexed record: the
  uncommitted group is cut off every replica, the shard is sealed as it was at its last
  commit, and the group is written again into a new shard on other disks.
- A writer may keep several shards open at once (hoardfs.fsd.io.spread, `store.open_shards`):
  each is one ShardWriter with its own groups and fdatasyncs, so every rule here holds per
  shard; they share one writer thread per disk, and the disks left out after an error: a
  group of any of them is indexed on no such disk.
- A shard is sealed by writing its footer, fsyncing, renaming `.open` → `.shard` and
  fsyncing the directory, on every replica that takes it (one that fails is left out); a
  crash before that leaves an open shard that `recover_orphans` seals (truncating any torn
  tail) the next time a writer opens the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hoardfs.base.modes import FILE
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core import storelock
from hoardfs.fsd.core.index import ObjectLoc, ShardMeta

if TYPE_CHECKING:
    from collections.abc import Callable

    from hoardfs.fsd.core.backend import Disk
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)

#: bytes buffered in memory before they are handed to the replicas' writer threads
WRITE_CHUNK = 2 << 20
#: writes queued per shard before the writer waits for the disks to catch up
MAX_INFLIGHT = 16


def new_shard_id() -> bytes:
    """12 bytes: 6 of milliseconds since the epoch (so ids sort by age) and 6 random."""
    return int(time.time() * 1000).to_bytes(6, "big") + os.urandom(6)


class ReplicaFailed(Exception):
    def __init__(self, disk: Disk, err: OSError) -> None:
        super().__init__(f"disk {disk.label}: {err.strerror or err}")
        self.disk, self.err = disk, err


class LeftOut(ReplicaFailed):
    """A group on a disk this writer left out after an error in another of its open shards:
    cut and written again elsewhere like a failed replica's (the error was recorded then)."""

    def __init__(self, disk: Disk) -> None:
        super().__init__(disk, OSError(f"left out after an earlier write error on {disk.label}"))


@dataclass
class _Pending:
    sha: bytes
    loc: ObjectLoc
    payload: bytes | None  # None for streamed records (re-read from `source` on retry)
    source: Path | None = None
    digest: bytes = b""
    ext: str = ""  # the extension the object is shown with (Index.put_exts), indexed with it


@dataclass
class _Syncing:
    """A group whose fdatasync is queued on every replica's lane: the pending records that end
    at or before `end` (a prefix of `pending`), and each replica's future of that fdatasync."""

    end: int
    futures: list  # (disk, future)


@dataclass
class OpenShard:
    """One shard being appended on its replica disks by this process."""

    meta: ShardMeta
    disks: list[Disk]
    sinks: list
    lock_fd: int
    pos: int = 0  # bytes handed to the sinks or the buffer
    committed: int = 0  # bytes fsynced and indexed
    buf: bytearray = field(default_factory=bytearray)
    pending: list[_Pending] = field(default_factory=list)
    pending_set: set[bytes] = field(default_factory=set)
    #: committed records, for the footer, by payload offset: a commit adds its group in one
    #: `dict.update` — done again after a Ctrl-C between two of its steps, it adds nothing twice
    records: dict[int, fmt.RecordInfo] = field(default_factory=dict)
    inflight: list = field(default_factory=list)  # (disk, future) of queued replica writes
    syncing: _Syncing | None = None  # the group being fsynced while the next one is appended

    @property
    def hex(self) -> str:
        return self.meta.hex


class ShardWriter:
    """Appends records for one class (raw or generated); used under the Store's write lock."""

    def __init__(self, store: Store, klass: str, lanes: dict[str, ThreadPoolExecutor] | None = None,
                 excluded: set[str] | None = None,
                 open_sets: Callable[[], list[frozenset[str]]] | None = None) -> None:
        """`lanes`, `excluded`: shared by the writers of one SpreadWriter; `open_sets`: the disk
        sets of its other open shards, which a new shard's placement spreads away from."""
        self.store, self.klass = store, klass
        self.shard: OpenShard | None = None
        # one thread per disk: a replica's writes stay in order, the disks work in parallel
        # and hashing the next files overlaps with writing the previous ones
        self.lanes: dict[str, ThreadPoolExecutor] = {} if lanes is None else lanes
        self.excluded: set[str] = set() if excluded is None else excluded  # disks that failed for this writer
        self.open_sets = open_sets
        self.committed_log: list[tuple[bytes, bool]] = []  # (sha, newly indexed) since last drain
        self.log_written = False  # gc turns this on: it re-points the index itself
        self.written_log: list[tuple[bytes, ObjectLoc]] = []  # (sha, where this writer put it)

    # -- opening and sealing -------------------------------------------------------------
    def _open(self, need: int) -> OpenShard:
        st = self.store
        while True:
            disks = st.place(st.cfg.store.write_ack, max(need, st.shard_bytes), self.excluded,
                             spread=self.open_sets() if self.open_sets else None)
            sid = new_shard_id()
            meta = ShardMeta(sid, self.klass, replicas=[d.uuid for d in disks])
            lock_fd = _lock(st.lock_path(sid.hex()))
            st.index.put_shard(meta)  # before any byte, so recovery can find an orphan
            header = fmt.encode_shard_header(fmt.ShardHeader(sid, fmt.CLASSES[self.klass]))
            # every replica created at once (each create fsyncs its directory), one lane per disk
            created = [(d, self._lane(d).submit(_create, d, sid.hex(), header)) for d in disks]
            sinks, failure = [], None
            for d, fut in created:
                try:
                    sinks.append(fut.result())
                except OSError as e:
                    failure = failure or ReplicaFailed(d, e)
            if failure:
                self._discard(meta, disks, sinks, lock_fd)
                self.disk_failed(failure)
                continue
            st.queue_changed(disks, +1)
            return OpenShard(meta, disks, sinks, lock_fd, pos=len(header), committed=len(header))

    def _discard(self, meta: ShardMeta, disks: list, sinks: list, lock_fd: int) -> None:
        for s in sinks:
            s.close()
        for d in disks:
            with contextlib.suppress(OSError):
                d.delete(meta.hex)
        self.store.index.drop_shard(meta.shard_id)
        _unlock(self.store.lock_path(meta.hex), lock_fd)

    def disk_failed(self, f: ReplicaFailed) -> None:
        self.excluded.add(f.disk.uuid)
        if not isinstance(f, LeftOut):
            self.store.disk_error(f.disk, "write", f.err)

    def seal(self) -> None:
        """Write the footer and make the current shard immutable."""
        sh = self.shard
        if sh is None:
            return
        self.shard = None
        self.store.queue_changed(sh.disks, -1)
        if not sh.records:
            self._discard(sh.meta, sh.disks, sh.sinks, sh.lock_fd)
            return
        # the body ends where its last committed record does, whatever `pos` or `committed` say:
        # bytes of a record a Ctrl-C cut off between writing it and noting it as pending (it is
        # in no group, so in no index entry) were sealed inside the body, one record more than
        # the footer listed, and `hoard verify` would call every replica bad
        records = [sh.records[off] for off in sorted(sh.records)]
        end = sh.committed = records[-1].end
        footer = fmt.encode_footer(records, end)
        # every replica's footer, after what is queued on it: one whose write fails (this one or
        # an earlier one: a failed or full disk) is left out and the shard sealed on the others,
        # as where a rename fails below — the records are committed and fsynced on them. (Left
        # open, the shard would stay locked, unreplicated and unreported while this process
        # lives: replication takes sealed shards, recovery those whose writer is gone.)
        sh.inflight += [(d, self._lane(d).submit(_seal_body, s, end, footer))
                        for d, s in zip(sh.disks, sh.sinks, strict=True)]
        failed = self._drain_each(sh)
        for d, e in failed.values():
            self.disk_failed(ReplicaFailed(d, e))
        for s in sh.sinks:
            s.close()
        if len(failed) == len(sh.disks):
            return  # left open and locked until this process ends; recovery seals it then
        survivors = []
        renames = [(d, self._lane(d).submit(d.seal, sh.hex)) for d in sh.disks if d.uuid not in failed]
        for d, fut in renames:
            try:
                fut.result()
                survivors.append(d)
            except OSError as e:  # gone between the footer and the rename: seal the others
                self.disk_failed(ReplicaFailed(d, e))
        if not survivors:
            return  # left open and locked until this process ends; recovery seals it then
        sh.meta.sealed = True
        sh.meta.size = end + len(footer)
        sh.meta.replicas = [d.uuid for d in survivors]
        self.store.index.put_shard(sh.meta, {d.uuid: sh.meta.size for d in survivors})
        _unlock(self.store.lock_path(sh.hex), sh.lock_fd)

    # -- appending -----------------------------------------------------------------------------
    def append(self, sha: bytes, payload: bytes, ext: str = "") -> ObjectLoc | None:
        """Queue one record (small or medium: held in memory until committed)."""
        if self.shard is not None and sha in self.shard.pending_set:
            return None  # already queued (a retry after a failed replica replayed it)
        size = fmt.RECORD_HEADER_SIZE + len(payload)
        sh = self._room_for(size)
        loc = ObjectLoc(sh.meta.shard_id, sh.pos + fmt.RECORD_HEADER_SIZE, len(payload))
        sh.buf += fmt.encode_record_header(sha, len(payload), fmt.xxh3(payload))
        sh.buf += payload
        sh.pos += size
        sh.pending.append(_Pending(sha, loc, payload, ext=ext))
        sh.pending_set.add(sha)
        if len(sh.buf) >= WRITE_CHUNK:
            self._write_buf(sh)
        return loc

    def _room_for(self, size: int) -> OpenShard:
        sh = self.shard
        if sh is not None and sh.pos + size > self.store.shard_bytes and sh.pos > fmt.SHARD_HEADER_SIZE:
            self.commit()
            self.seal()
            sh = None
        if sh is None:
            sh = self.shard = self._open(size + fmt.SHARD_HEADER_SIZE)
        return sh

    def append_stream(self, sha: bytes, digest: bytes, length: int, chunks,
                      source: Path | None = None, ext: str = "") -> ObjectLoc | None:
        """A big record written straight through from `chunks` (an iterable of bytes)."""
        if self.shard is not None and sha in self.shard.pending_set:
            return None
        size = fmt.RECORD_HEADER_SIZE + length
        sh = self._room_for(size)
        self._write_buf(sh)
        loc = ObjectLoc(sh.meta.shard_id, sh.pos + fmt.RECORD_HEADER_SIZE, length)
        hdr = fmt.encode_record_header(sha, length, digest)
        self._submit(sh, lambda s: s.write(hdr))
        for chunk in chunks:
            self._submit(sh, lambda s, c=chunk: s.write(c))
        self._drain(sh)
        sh.pos += size
        sh.pending.append(_Pending(sha, loc, None, source, digest, ext))
        sh.pending_set.add(sha)
        return loc

    def _write_buf(self, sh: OpenShard) -> None:
        if sh.buf:
            data, sh.buf = sh.buf, bytearray()
            self._submit(sh, lambda s: s.write(data))

    def _lane(self, disk: Disk) -> ThreadPoolExecutor:
        lane = self.lanes.get(disk.uuid)
        if lane is None:
            lane = self.lanes[disk.uuid] = ThreadPoolExecutor(1, thread_name_prefix=f"write-{disk.label}")
        return lane

    def _submit(self, sh: OpenShard, fn) -> None:
        """Queue fn(sink) on every replica's lane; wait when too much is queued."""
        sh.inflight += [(d, self._lane(d).submit(fn, s)) for d, s in zip(sh.disks, sh.sinks, strict=False)]
        if len(sh.inflight) >= MAX_INFLIGHT * len(sh.disks):
            # forget what is done (raising its error), then wait for the oldest writes only: a
            # group's fdatasync queued by start_commit is not waited for before MAX_INFLIGHT
            # more writes are queued behind it (waiting for everything here would end the overlap)
            self._reap(sh)
            while len(sh.inflight) >= MAX_INFLIGHT * len(sh.disks):
                d, fut = sh.inflight.pop(0)
                try:
                    fut.result()
                except OSError as e:
                    raise ReplicaFailed(d, e) from e

    def _reap(self, sh: OpenShard) -> None:
        """Forget the queued writes that are done; the first that failed becomes ReplicaFailed
        (a failed write is never forgotten silently: it is raised here or by `_drain`)."""
        failure = None
        keep = []
        for d, fut in sh.inflight:
            if not fut.done():
                keep.append((d, fut))
                continue
            e = fut.exception()
            if e is None:
                continue
            if not isinstance(e, OSError):
                raise e
            failure = failure or ReplicaFailed(d, e)
        if failure:
            raise failure
        sh.inflight = keep

    def _drain(self, sh: OpenShard, raise_errors: bool = True) -> None:
        """Wait for every queued write; the first OSError becomes ReplicaFailed."""
        failure = None
        for d, fut in sh.inflight:
            try:
                fut.result()
            except OSError as e:
                failure = failure or ReplicaFailed(d, e)
        sh.inflight.clear()
        if failure and raise_errors:
            raise failure

    def _drain_each(self, sh: OpenShard) -> dict[str, tuple[Disk, OSError]]:
        """Wait for every queued write; the first OSError of each replica, by disk uuid."""
        failed: dict[str, tuple[Disk, OSError]] = {}
        for d, fut in sh.inflight:
            try:
                fut.result()
            except OSError as e:
                failed.setdefault(d.uuid, (d, e))
        sh.inflight.clear()
        return failed

    def drain_committed(self) -> list[tuple[bytes, bool]]:
        out, self.committed_log = self.committed_log, []
        return out

    def drain_written(self) -> list[tuple[bytes, ObjectLoc]]:
        """Every record committed since the last call, with its location — also those whose
        sha256 the index already knew (gc copies live records and re-points the index itself)."""
        out, self.written_log = self.written_log, []
        return out

    def pending_shas(self) -> set[bytes]:
        return set(self.shard.pending_set) if self.shard else set()

    def commit(self) -> None:
        """fsync every replica, then index the pending records (see `drain_committed`)."""
        self.start_commit()
        self.finish_commit()

    def start_commit(self) -> None:
        """Queue an fdatasync of every replica behind the pending records' writes and return at
        once: the caller reads and appends the next files while the disks take this group.
        A group fsyncing already is finished (waited for and indexed) first: one at a time."""
        sh = self.shard
        if sh is None or not sh.pending:
            return
        end = sh.pending[-1].loc.offset + sh.pending[-1].loc.length
        if sh.syncing is not None:
            if sh.syncing.end == end:
                return  # nothing appended since its fdatasync was queued
            self.finish_commit()
        self._write_buf(sh)
        futures = [(d, self._lane(d).submit(_sync, s)) for d, s in zip(sh.disks, sh.sinks, strict=False)]
        sh.inflight += futures
        sh.syncing = _Syncing(end, futures)

    def commit_ready(self) -> bool:
        """Finish the group whose fdatasync `start_commit` queued if every replica's is done
        (without waiting); whether one was finished."""
        sh = self.shard
        if sh is None or sh.syncing is None or not all(f.done() for _, f in sh.syncing.futures):
            return False
        self.finish_commit()
        return True

    def finish_commit(self) -> None:
        """Wait for the queued fdatasync of every replica, probe the disks, then index the group
        it covers — only the records queued before it: later ones wait for the next commit."""
        sh = self.shard
        if sh is None or sh.syncing is None:
            return
        for _, fut in sh.syncing.futures:
            fut.exception()  # waits; its error, if any, is raised by _reap with the others
        # every write queued before a replica's fdatasync (its lane runs them in order) is done
        # now: one that failed (ENOSPC, EIO) left the group's bytes incomplete on that replica
        # whatever the fdatasync returned — an fdatasync after a failed write succeeds
        self._reap(sh)
        for d in sh.disks:  # bytes fsynced onto a disk that vanished meanwhile do not count
            try:
                d.check()
            except OSError as e:
                raise ReplicaFailed(d, e) from e
            # nor onto one a write of another open shard failed on (`excluded` is shared): an
            # error confined to that shard's file leaves this one's writes working, yet the
            # disk is out of service for this writer (EIO: failed) — nothing more is indexed there
            if d.uuid in self.excluded:
                raise LeftOut(d)
        # Each step below leaves a state that a second commit (Store.close after a Ctrl-C in the
        # middle of this one) completes without doubling anything: the group is the pending
        # records up to the fsynced end (none, once they are dropped), they are added by
        # offset, the index ignores objects it already holds, and the end is the group's last
        # record's (never `pos`: a record cut off before it was noted as pending is not ours)
        end = sh.syncing.end
        group = [p for p in sh.pending if p.loc.offset + p.loc.length <= end]
        if group:
            sh.meta.size = end
            sh.meta.records = len(sh.records.keys() | {p.loc.offset for p in group})
            added = self.store.index.add_objects([(p.sha, p.loc) for p in group], sh.meta,
                                                 exts={p.sha: p.ext for p in group if p.ext})
            sh.records.update({p.loc.offset: fmt.RecordInfo(p.sha, p.loc.offset, p.loc.length, b"") for p in group})
            sh.committed = end
            sh.pending = [p for p in sh.pending if p.loc.offset + p.loc.length > end]
            sh.pending_set.difference_update(p.sha for p in group)
            self.committed_log.extend((p.sha, a) for p, a in zip(group, added, strict=True))
            if self.log_written:
                self.written_log.extend((p.sha, p.loc) for p in group)
        sh.syncing = None

    def rollback(self) -> None:
        """Drop the uncommitted group (e.g. a source that changed while being copied)."""
        sh = self.shard
        if sh is None:
            return
        self._drain(sh, raise_errors=False)
        sh.syncing = None
        sh.pending.clear()
        sh.pending_set.clear()
        sh.buf.clear()
        for s in sh.sinks:
            s.truncate(sh.committed)
        sh.pos = sh.committed

    def abandon_group(self) -> list[_Pending]:
        """After a ReplicaFailed: cut the uncommitted group off, seal the rest, return the group."""
        sh = self.shard
        assert sh is not None
        self._drain(sh, raise_errors=False)
        sh.syncing = None  # not indexed: the whole uncommitted tail, its group included, goes again
        group = list(sh.pending)
        sh.pending.clear()
        sh.pending_set.clear()
        sh.buf.clear()
        for s in sh.sinks:
            with contextlib.suppress(OSError):
                s.truncate(sh.committed)
        sh.pos = sh.committed
        try:
            self.seal()
        except OSError:
            self.shard = None
        return group

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.shutdown(wait=True)


def _sync(sink) -> None:
    sink.sync()


def _seal_body(sink, end: int, footer: bytes) -> None:
    """A replica cut where its last committed record ends, the footer after it, fsynced."""
    sink.truncate(end)
    sink.write(footer)
    sink.sync()


def _create(disk: Disk, shard_hex: str, header: bytes):
    """A new replica file with the shard header written (run on the disk's lane)."""
    sink = disk.create(shard_hex)
    try:
        sink.write(header)
    except BaseException:
        sink.close()
        raise
    return sink


def _lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def try_lock(path: Path) -> int | None:
    """The lock of an open shard if its writer is gone (None while a live writer holds it)."""
    try:
        return _lock(path)
    except BlockingIOError:
        return None


def writer_alive(path: Path) -> bool:
    """Whether a live process holds an open shard's lock (without taking or removing it)."""
    return storelock.taken(path)


def _unlock(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)
