"""`hoard rebuild`: re-create every replica a lost disk held, from the healthy replicas.

Shard-granular and resumable: each shard is copied (tmp → fsync → verify → rename) and only
then swapped into the index (the lost disk out, the new one in), so a kill -9 leaves at
most a temporary file that the next run overwrites; a copy that was renamed but not yet
indexed is verified and adopted instead of copied again. The lost disk is marked `failed`
first, so nothing reads from or writes to it meanwhile.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.core.placement import Need, NoSpace, simulate, space_report
from hoardfs.fsd.io.replica import NoSource, TargetError, check_replica, copy_from_any, discard_copy

if TYPE_CHECKING:
    from hoardfs.fsd.core.backend import Disk
    from hoardfs.fsd.core.index import ShardMeta
    from hoardfs.fsd.store import Store


@dataclass
class RebuildReport:
    shards: int = 0
    copied: int = 0
    adopted: int = 0
    bytes: int = 0
    lost: list[str] = field(default_factory=list)  # shards with no healthy replica left
    #: shards no replica could be copied from (each line names them and what each replica said);
    #: the lost disk's replica stays listed for them, and the rebuild went on with the others
    not_copied: list[str] = field(default_factory=list)
    seconds: float = 0.0


def shards_on(store: Store, uuid: str) -> list[ShardMeta]:
    return sorted((m for m in store.index.iter_shards() if uuid in m.replicas and m.sealed), key=lambda m: m.created)


def rebuild(store: Store, label: str, onto: str | None = None, rate_mb_s: float | None = None,
            progress: Callable[[int, int], None] | None = None, streams: int = 3) -> RebuildReport:
    """Copy every shard that had a replica on disk `label` to `onto` (or, without it, to other
    disks with room, never two replicas on one disk). `progress(done_bytes, total_bytes)`."""
    with store.maintenance(f"rebuild of {label}"):
        return _rebuild(store, label, onto, rate_mb_s, progress, streams)


def _rebuild(store: Store, label: str, onto: str | None, rate_mb_s: float | None,
             progress: Callable[[int, int], None] | None, streams: int) -> RebuildReport:
    rep = RebuildReport()
    t0 = time.monotonic()
    target: Disk | None = None
    if onto is not None:
        target = next((d for d in store.disks.values() if d.label == onto), None)
        if target is None or not store.usable(target.uuid, for_write=True):
            raise HoardError(f"disk {onto} is not an active disk; `hoard disks add PATH --label {onto}` first",
                             ExitCode.USAGE)
    lost_rec = next((r for r in store.index.get_disks() if r.label == label), None)
    if lost_rec is None:
        raise HoardError(f"no disk labelled {label}; `hoard disks list` shows them", ExitCode.USAGE)
    if target is not None and target.uuid == lost_rec.uuid:  # (it would drop every replica it holds)
        raise HoardError(f"disk {label} cannot be rebuilt onto itself; name another disk with --onto",
                         ExitCode.USAGE)
    bad = store.known_bad()  # replicas queued for repair: not copies to count on
    _check_room(store, lost_rec.uuid, target, bad)
    # the switch-over: no other writer may keep placing shards on the disk (they read disk
    # states when they open the store), so it happens while this process holds the store alone
    with store.exclusive(f"rebuild of {label}: marking it failed", wait_s=60):
        lost_uuid = store.set_disk_state(label, DiskState.FAILED, "being rebuilt onto other disks")
    todo = shards_on(store, lost_uuid)
    total = sum(m.size for m in todo)
    done = [0]
    lock = threading.Lock()
    stop = threading.Event()  # a stream failed or Ctrl-C: the copies under way end at their next piece

    def one(meta: ShardMeta) -> None:
        if stop.is_set():
            return
        try:
            handle(meta)
        except BaseException:
            stop.set()
            raise
        with lock:  # copied, adopted, dropped or lost: its bytes are dealt with
            done[0] += meta.size
            if progress:
                progress(done[0], total)

    def handle(meta: ShardMeta) -> None:
        with lock:
            rep.shards += 1
            if _done_already(store, meta, lost_uuid, bad):  # (`hoard replicate` ran first): no copy
                _swap(store, meta, lost_uuid, None)
                return
            # (a shard the target holds already needs its copy elsewhere: its one copy there
            # does not stand for two, or `disks replace d1 d2` would leave shards at one copy)
            onto_it = target if target is not None and target.uuid not in meta.replicas else None
            dst = onto_it or _adoptable(store, meta) or store.place(1, meta.size, exclude=set(meta.replicas),
                                                                    why_excluded="holds a copy already")[0]
        if _verified_copy_exists(dst, meta):
            with lock:
                rep.adopted += 1
        else:
            # (the lost disk itself last: failed, but it may still read what no other replica does)
            sources = store.sources(meta)
            first = next(sources, None)
            if first is None:
                with lock:
                    rep.lost.append(meta.hex)
                return
            try:
                _copy_from_any(store, itertools.chain([first], sources), dst, meta, rate_mb_s / streams if rate_mb_s else None, stop)
            except NoSource as e:  # one shard's: the others are still copied
                with lock:
                    rep.not_copied.append(str(e))
                return
            with lock:
                rep.copied += 1
                rep.bytes += meta.size
        with lock:
            _swap(store, meta, lost_uuid, dst.uuid)

    # a few copies at once, so slow source disks together keep the target disk busy
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="rebuild") as pool:
        futures = [pool.submit(one, m) for m in todo]
        try:
            for f in futures:
                f.result()
        except BaseException:  # (Ctrl-C) the shards not started return at once (see one())
            stop.set()
            raise
    rep.seconds = time.monotonic() - t0
    return rep


def _check_room(store: Store, lost: str, onto: Disk | None, bad: Set[tuple[bytes, str]]) -> None:
    """Refuse before anything changes when the lost disk's shards cannot all be placed (on
    `onto` — those it holds already on any other disk — or on distinct disks that do not
    hold them yet)."""
    anywhere = [c for c in store.candidates() if c.uuid != lost]
    todo = [m for m in shards_on(store, lost) if not _done_already(store, m, lost, bad)]

    def needs(ms: list[ShardMeta]) -> list[Need]:
        return [Need(m.size, 1, frozenset(m.replicas), m.hex) for m in ms]

    if onto is None:
        _, unplaced = simulate(anywhere, needs(todo))
    else:
        _, unplaced = simulate([c for c in anywhere if c.uuid == onto.uuid],
                               needs([m for m in todo if onto.uuid not in m.replicas]))
        _, elsewhere = simulate(anywhere, needs([m for m in todo if onto.uuid in m.replicas]))
        unplaced += elsewhere
    if unplaced:
        raise NoSpace(f"rebuild refused before it started: {space_report(anywhere, unplaced)}; add a disk "
                      f"(`hoard disks add`) or free space (`hoard gc`) first — disk {store.records[lost].label} "
                      "was not marked failed")


def _done_already(store: Store, meta: ShardMeta, lost: str, bad: Set[tuple[bytes, str]]) -> bool:
    """Whether the shard needs no copy to replace the lost disk's: it has its replica target
    without the lost copy, counting no replica known bad (`hoard replicate` made them while
    the disk was missing or draining). Its lost copy is then only dropped from the index.
    (A copy on the target disk is one copy, not the target.)"""
    return store.copies_of(meta, without=lost, bad=bad) >= store.target(meta.klass)


def _adoptable(store: Store, meta: ShardMeta):
    for d in store.disks.values():
        if d.uuid not in meta.replicas and store.usable(d.uuid, for_write=True) and _verified_copy_exists(d, meta):
            return d
    return None


def _verified_copy_exists(disk: Disk, meta: ShardMeta) -> bool:
    try:  # (the stat too: a rotted directory block or inode answers EBADMSG to it)
        if disk.state(meta.hex) != "sealed":
            return False
        check_replica(disk, meta)
        return True
    except (OSError, fmt.ShardFormatError):
        return False


def _copy_from_any(store: Store, sources: Iterable[Disk], dst, meta: ShardMeta, rate_mb_s: float | None,
                   stop: threading.Event | None = None) -> None:
    try:
        copy_from_any(store, sources, dst, meta, "rebuild", rate_mb_s, stop)
    except TargetError as e:  # another source would not help: the disk copied to failed
        store.disk_error(dst, "rebuild", e.err, meta.hex)
        raise HoardError(f"shard {meta.hex}: writing its copy onto disk {dst.label} failed ({e.strerror or e}); "
                         "nothing was lost (a copy is indexed only once it is checked) — see `hoard health`, "
                         "then run the rebuild again (with --onto, onto another disk)",
                         ExitCode.NO_SPACE if e.errno == errno.ENOSPC else ExitCode.UNAVAILABLE) from e
    except NoSource as e:
        raise NoSource(f"{e}; its replica on the lost disk stays listed, and every object of it that a replica "
                       "holds whole still reads — `hoard verify --sha256` names the damage") from None


def _swap(store: Store, meta: ShardMeta, lost: str, new: str | None) -> None:
    def swap(m: ShardMeta) -> dict[str, int]:
        deltas = {lost: -m.size} if lost in m.replicas else {}
        m.replicas = [u for u in m.replicas if u != lost]
        if new and new not in m.replicas:
            m.replicas.append(new)
            deltas[new] = m.size
        return deltas

    if store.index.update_shard(meta.shard_id, swap) is None and new:
        discard_copy(store.disks[new], meta.hex, "gc retired it while it was rebuilt")  # must not outlive it
