"""`hoard verify --orphans`: shard files no index entry names, found and set aside — never lost.

A shard file is an orphan when neither the index's `shards` nor its `retired` table lists
that disk as holding a replica of it. Races and crashes leave them: a copy renamed into
`shards/` whose index update never came, a replica recovery set aside, a shard of a gc run
that died before its swap. The sweep, holding the maintenance lock (no replicate, rebuild or
gc is moving files meanwhile):

* leaves alone a file younger than the grace period (its writer may be about to index it)
  and an `.open` file whose writer holds its lock;
* never moves a file that holds an object the index does not know anywhere — after an
  index loss it may be the only copy: it is reported ("run `hoard index rebuild`");
* moves every other orphan aside to `<disk>/orphans/` (a rename: no byte is lost);
* removes stale files in `<disk>/tmp/` (copies in progress that never finished, a gc
  reservation whose gc died) — they are never named by the index;
* with `repair`, deletes what has been aside in `orphans/` for longer than the grace.

An S3 disk's sealed shards are objects (`shard_objects`: the bucket's listing, each with its
time) judged the same way and set aside to the bucket's `orphans/`; its open ones are files on
its staging folder (`shard_files`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import pread_full, shard_of
from hoardfs.fsd.core.index import ShardMeta
from hoardfs.fsd.io.recovery import set_aside
from hoardfs.fsd.io.writer import writer_alive
from hoardfs.fsd.maintenance.reindex import PLANTED

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

#: a file must be at least this old before the sweep touches it
DEFAULT_GRACE_S = 24 * 3600


@dataclass
class OrphanReport:
    found: int = 0
    bytes: int = 0
    set_aside: list[str] = field(default_factory=list)
    too_young: int = 0
    writer_alive: int = 0
    unindexed: list[str] = field(default_factory=list)  # orphans holding objects the index lacks: kept
    tmp_removed: int = 0
    deleted: list[str] = field(default_factory=list)  # with repair: aside for longer than the grace
    bytes_deleted: int = 0
    seconds: float = 0.0


def named_replicas(store: Store) -> set[tuple[str, str]]:
    """(shard hex, disk uuid) for every replica the index names, live or retired."""
    names = {(m.hex, u) for m in store.index.iter_shards() for u in m.replicas}
    with store.index.env.begin(db=store.index.retired) as txn:
        for k, v in txn.cursor():
            names |= {(bytes(k).hex(), u) for u in ShardMeta.from_json(bytes(k), bytes(v)).replicas}
    return names


def records_of(path) -> list[fmt.RecordInfo]:
    """The records a shard file holds (`records_in`); a FIFO planted there must not hang the sweep."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return records_in(lambda off, n: pread_full(fd, n, off), os.fstat(fd).st_size, shard_of(path)[1], str(path))
    finally:
        os.close(fd)


def records_in(read, size: int, sealed: bool, name: str) -> list[fmt.RecordInfo]:
    """The records a shard holds: its footer if sealed, else the verified prefix — also for a
    sealed one whose footer does not decode (its records are each checked on their own: taken
    for unreadable, it was set aside and deleted while it held objects the index lacked)."""
    if sealed:
        with contextlib.suppress(fmt.FooterMismatch):
            found = fmt.decode_footer(read, size)
            if found is not None:
                return found
    out: list[fmt.RecordInfo] = []
    try:
        out.extend(fmt.scan_records(read, size, sealed=False))
    except fmt.ShardFormatError as e:
        fmt.refuse_newer(e, name)  # (a later hoardfs's shard is not one to set aside)
    return out


def sweep(store: Store, repair: bool = False, grace_s: float = DEFAULT_GRACE_S) -> OrphanReport:
    with store.maintenance("verify --orphans"):
        return _sweep(store, repair, grace_s)


def _sweep_objects(store: Store, rep: OrphanReport, disk, uuid: str, named: set[tuple[str, str]], now: float,
                   grace_s: float) -> None:
    """The shards a disk keeps as objects (an S3 disk's bucket) that no index entry names,
    judged as files are: too young, or holding an object the index does not know (kept,
    reported), else set aside to the bucket's orphans/ (a server-side copy: no byte lost)."""
    for shard_hex, size, mtime in disk.shard_objects():
        if (shard_hex, uuid) in named:
            continue
        rep.found += 1
        rep.bytes += size
        if now - mtime < grace_s:
            rep.too_young += 1
            continue
        where = f"{disk.beside.where}/{shard_hex}"
        try:
            unknown = [r for r in records_in(lambda off, n, h=shard_hex: disk.read_exact(h, off, n), size, True, where)
                       if store.index.lookup(r.sha256) is None]
        except fmt.ShardFormatError:
            unknown = []  # not a shard: nothing in it can be read; set it aside
        except OSError as e:  # the engine gone meanwhile: nothing is decided on it
            rep.unindexed.append(f"{where} does not read ({e.strerror or e}): it is kept; run this again once "
                                 f"disk {disk.label} answers")
            continue
        if unknown:
            rep.unindexed.append(f"{where} holds {len(unknown)} objects the index does not know (e.g. "
                                 f"{unknown[0].sha256.hex()}): run `hoard index rebuild` — it is kept")
            continue
        rep.set_aside.append(set_aside(disk, shard_hex, "no index entry names it"))


def _sweep(store: Store, repair: bool, grace_s: float) -> OrphanReport:
    rep = OrphanReport()
    t0 = time.monotonic()
    now = time.time()
    named = named_replicas(store)
    for uuid, disk in store.disks.items():
        if not store.usable(uuid):
            continue
        _sweep_objects(store, rep, disk, uuid, named, now, grace_s)
        for path in disk.shard_files():
            shard_hex, sealed = shard_of(path)
            if (shard_hex, uuid) in named:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # a symbolic link to nothing (planted): an orphan to set aside
                if not os.path.islink(path):
                    continue  # gone since the listing
                st = path.lstat()
            rep.found += 1
            rep.bytes += st.st_size
            if now - st.st_mtime < grace_s:
                rep.too_young += 1
                continue
            if not sealed and writer_alive(store.lock_path(shard_hex)):
                rep.writer_alive += 1
                continue
            try:
                unknown = [r for r in records_of(path) if store.index.lookup(r.sha256) is None]
            except fmt.ShardFormatError:
                unknown = []  # not a shard: nothing in it can be read; set it aside
            except OSError as e:
                if isinstance(e, FileNotFoundError) and not os.path.islink(path):
                    continue  # gone since the listing
                if e.errno not in PLANTED and not os.path.islink(path):
                    # EIO: it may hold the only copy of objects, and read again after a reset
                    rep.unindexed.append(f"{path} does not read ({e.strerror or e}): it may hold objects no other "
                                         f"copy has — it is kept; check disk {disk.label} (`hoard health`, dmesg)")
                    continue
                unknown = []  # planted (a FIFO, a directory, a link to nothing): set it aside
            if unknown:
                rep.unindexed.append(f"{path} holds {len(unknown)} objects the index does not know (e.g. "
                                     f"{unknown[0].sha256.hex()}): run `hoard index rebuild` — it is kept")
                continue
            rep.set_aside.append(set_aside(disk, shard_hex, "no index entry names it", path))
        removed, deleted = disk.beside.sweep(now, grace_s, repair)
        rep.tmp_removed += removed
        rep.deleted += [where for where, _ in deleted]
        rep.bytes_deleted += sum(n for _, n in deleted)
    rep.seconds = time.monotonic() - t0
    return rep
