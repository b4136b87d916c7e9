"""The background replicator: bring every sealed shard up to its class's replica target.

`write_ack` replicas exist when a write is acknowledged; the rest (`copy_of_raw`,
`copy_of_generated`) are copied here, whole shards at a time, rate-limited so foreground
IO is not starved. A copy goes to `<disk>/tmp/`, is fsynced, verified record by record
(xxh3-128), renamed into `shards/`, and only then added to the index. Replicas on
draining disks do not count toward the target, so retiring a disk re-homes its shards.
Source reads use POSIX_FADV_DONTNEED so replication does not evict hot data.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.placement import Need, NoSpace, simulate, space_report
from hoardfs.fsd.io.replica import (
    NoSource,
    TargetError,
    assemble_onto,
    check_replica,
    copy_from_any,
    discard_copy,
    repair_replica,
)

if TYPE_CHECKING:
    from hoardfs.fsd.core.index import ShardMeta
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)


def replication_lag(store: Store, shards: Iterable[ShardMeta] | None = None) -> dict:
    """Shards and bytes below their class target (sealed shards; open ones are at write_ack),
    and the shards at risk: fewer readable replicas than write_ack (one more loss away from
    data loss, or lost already). `shards`: the index's, when the caller read them already."""
    below = bytes_ = 0
    at_risk = []
    for meta in store.index.iter_shards() if shards is None else shards:
        if meta.sealed and store.copies_of(meta) < store.target(meta.klass):
            below += 1
            bytes_ += meta.size
        readable = sum(1 for u in meta.replicas if store.usable(u))
        if readable < store.cfg.store.write_ack:
            at_risk.append({"shard": meta.hex, "readable_replicas": readable})
    return {"shards_below_target": below, "bytes_below_target": bytes_, "at_risk": at_risk}


@dataclass
class ReplicationReport:
    copied_shards: int = 0
    copied_bytes: int = 0
    remaining_shards: int = 0
    errors: int = 0
    repaired: int = 0  # replicas re-copied from a good one after a reader reported them bad
    no_room: int = 0  # shards that cannot get their missing replicas on distinct disks now
    no_room_detail: str = ""
    seconds: float = 0.0


def replicate_once(store: Store, budget_s: float = 60.0, rate_mb_s: float | None = 100.0,
                   wait_s: float = 0.0, progress: Callable[[int, int], None] | None = None,
                   only: set[bytes] | None = None) -> ReplicationReport:
    """Repair the replicas readers reported bad, then copy shards below target until done or
    `budget_s` is spent. Holds the maintenance lock (one of gc/replicate/rebuild at a time).
    `progress(copied_bytes, bytes_to_copy)` before each copy and after the last. `only`: these
    shard ids alone (a job topping up what it is about to rely on, e.g. ingest's finish)."""
    with store.maintenance("replicate", wait_s=wait_s):
        return _replicate(store, budget_s, rate_mb_s, progress, only)


def _replicate(store: Store, budget_s: float, rate_mb_s: float | None,
               progress: Callable[[int, int], None] | None = None, only: set[bytes] | None = None) -> ReplicationReport:
    rep = ReplicationReport()
    t0 = time.monotonic()
    rep.repaired = repair_reported(store)
    todo = [m for m in store.index.iter_shards()
            if m.sealed and (only is None or m.shard_id in only)
            and store.copies_of(m) < store.target(m.klass)]
    todo.sort(key=lambda m: m.created)
    cands = store.candidates()
    _, unplaced = simulate(cands, [Need(m.size, store.target(m.klass) - store.copies_of(m),
                                        frozenset(m.replicas), m.hex) for m in todo])
    if unplaced:  # said once, up front, instead of a warning (and a failed copy) per shard
        rep.no_room = len(unplaced)
        rep.no_room_detail = space_report(cands, unplaced)
        log.warning("replication: %s; those shards wait until there is room", rep.no_room_detail)
        skip = {n.what for n in unplaced}
        todo = [m for m in todo if m.hex not in skip]
        rep.remaining_shards += len(skip)
    total = sum(m.size * (store.target(m.klass) - store.copies_of(m)) for m in todo)
    for meta in todo:
        if progress:
            progress(rep.copied_bytes, total)
        if time.monotonic() - t0 > budget_s:
            rep.remaining_shards += 1
            continue
        while store.copies_of(meta) < store.target(meta.klass):
            try:
                n = _copy_one(store, meta, rate_mb_s)
            except ShardGone:
                break
            except NoSpace as e:
                log.warning("replication of shard %s postponed: %s", meta.hex, e.message)
                rep.errors += 1
                rep.remaining_shards += 1
                break
            if n is None:
                rep.errors += 1
                rep.remaining_shards += 1
                break
            rep.copied_shards += 1
            rep.copied_bytes += n
    if progress:  # after the last copy too (the loop reports before each)
        progress(rep.copied_bytes, total)
    rep.seconds = time.monotonic() - t0
    return rep


def _copy_one(store: Store, meta: ShardMeta, rate_mb_s: float | None) -> int | None:
    sources = store.sources(meta)
    first = next(sources, None)
    if first is None:
        log.warning("shard %s has no readable replica to copy from", meta.hex)
        return None
    [target] = store.place(1, meta.size, exclude=set(meta.replicas), why_excluded="holds a copy already")
    try:
        n = copy_from_any(store, itertools.chain([first], sources), target, meta, "replicate", rate_mb_s)
    except TargetError as e:  # the disk copied to failed, not the source: the next run places elsewhere
        store.disk_error(target, "replicate", e.err, meta.hex)
        return None
    except NoSource as e:
        log.warning("%s", e)
        return None

    def add(m: ShardMeta) -> dict[str, int]:
        if target.uuid in m.replicas:
            return {}
        m.replicas.append(target.uuid)
        return {target.uuid: n}

    fresh = store.index.update_shard(meta.shard_id, add)
    if fresh is None:  # gc retired the shard while it was copied: the copy must not resurrect it
        discard_copy(target, meta.hex, "gc retired it while it was copied")
        raise ShardGone(meta.hex)
    meta.replicas = fresh.replicas
    return n


class ShardGone(Exception):
    """The shard left the index (gc retired it) while it was being worked on."""


def repair_reported(store: Store) -> int:
    """Consume the repair queue: each replica a reader found bad (EIO, wrong bytes) is checked
    and, if it really is bad, replaced by a verified copy of a good replica. An entry whose
    disk is failed or missing stays queued (rebuild handles that disk)."""
    fixed = 0
    # disks with files first: a copy assembled onto one of them is then the whole source an S3
    # disk's bad replica is repaired from in the same run
    for sid, uuid, why in sorted(store.index.pending_repairs(),
                                 key=lambda r: not (r[1] in store.disks and has_files(store.disks[r[1]]))):
        meta = store.index.get_shard(sid)
        disk = store.disks.get(uuid)
        if meta is None or uuid not in meta.replicas:
            store.index.clear_repair(sid, uuid)  # retired by gc, or the replica was dropped already
            continue
        if disk is None or not store.usable(uuid, for_write=True):
            continue
        try:
            check_replica(disk, meta)
            store.index.clear_repair(sid, uuid)  # a transient error: the copy is fine
            continue
        except (OSError, fmt.ShardFormatError):
            pass
        reason = why.get("reason", "")
        # (no whole copy anywhere — each replica bad somewhere — one assembled record by record)
        fixed += (repair_replica(store, meta, disk, store.sources(meta, avoid={uuid}), reason)
                  or assemble_onto(store, meta, disk, reason))
    return fixed
