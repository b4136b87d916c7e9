"""Sealing shards whose writer died (kill -9, power loss) before it could seal them.

An open shard's index entries point only at records fsynced on every replica, so each
replica holds at least those records. Records after them may be whole, torn, or present
on one replica only. Recovery keeps the longest prefix of verified records that every
reachable replica has, truncates each replica there, writes the footer, seals, and
indexes the prefix's records that were not indexed yet (their bytes are verified, so
keeping them is safe and a re-run of the batch then stores nothing twice).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from fsd import shardfmt as fmt
from fsd.index import ObjectLoc
from fsd.writer import _unlock, try_lock

if TYPE_CHECKING:
    from fsd.store import Store

log = logging.getLogger(__name__)


def recover_orphans(store: Store) -> list[str]:
    """Seal every unsealed shard whose writer is gone; return their ids."""
    done = []
    for meta in store.index.iter_shards():
        if meta.sealed:
            continue
        lock_path = store.lock_path(meta.hex)
        fd = try_lock(lock_path)
        if fd is None:
            continue  # a live writer holds it
        try:
            _recover(store, meta)
            done.append(meta.hex)
        finally:
            _unlock(lock_path, fd)
    return done


def _valid_prefix(disk, shard_hex: str) -> list[fmt.RecordInfo]:
    size = disk.size(shard_hex)
    out = []
    try:
        for rec in fmt.scan_records(lambda off, n: disk.read_at(shard_hex, off, n), size, sealed=False):
            out.append(rec)
    except fmt.ShardFormatError as e:
        log.info("shard %s on %s: torn tail after %d records (%s)", shard_hex, disk.label, len(out), e)
    return out


def _sealed_records(disk, shard_hex: str) -> list[fmt.RecordInfo] | None:
    """The footer's records if this replica was already renamed to .shard with a good footer."""
    path = disk.path(shard_hex, True)
    if not path.exists():
        return None
    return fmt.decode_footer(lambda off, n: disk.read_at(shard_hex, off, n), path.stat().st_size)


def _recover(store: Store, meta) -> None:
    prefixes: dict[str, list[fmt.RecordInfo]] = {}
    sealed: dict[str, list[fmt.RecordInfo]] = {}
    absent = 0
    for uuid in meta.replicas:
        disk = store.disks.get(uuid)
        if disk is None or not store.usable(uuid):
            continue
        try:
            disk.find(meta.hex)
        except FileNotFoundError:
            absent += 1  # the writer died before it created this replica's file
            continue
        try:
            done = _sealed_records(disk, meta.hex)
            if done is not None:
                sealed[uuid] = done  # crashed between the rename and the index update
            else:
                prefixes[uuid] = _valid_prefix(disk, meta.hex)
        except (OSError, fmt.ShardFormatError) as e:
            store.disk_error(disk, "recovery", e, meta.hex)
    if not prefixes and not sealed and absent == len(meta.replicas):
        store.index.drop_shard(meta.shard_id)  # nothing was ever written, so nothing was indexed
        return
    if not prefixes and not sealed:
        log.info("open shard %s: no replica reachable, left for `hoard index rebuild`", meta.hex)
        return
    if sealed:
        records = next(iter(sealed.values()))
        prefixes = {u: p for u, p in prefixes.items() if len(p) >= len(records)}
    else:
        records = next(iter(prefixes.values()))[:min(len(p) for p in prefixes.values())]
    if not records:
        for uuid in prefixes:
            store.disks[uuid].delete(meta.hex)
        store.index.drop_shard(meta.shard_id)
        return
    end = records[-1].end
    footer = fmt.encode_footer(records, end)
    for uuid in prefixes:
        disk = store.disks[uuid]
        sink = disk.reopen(meta.hex)
        try:
            sink.truncate(end)
            sink.write(footer)
            sink.sync()
        finally:
            sink.close()
        disk.seal(meta.hex)
    replicas = list(sealed) + list(prefixes)
    meta.replicas = replicas
    meta.sealed, meta.size, meta.records = True, end + len(footer), len(records)
    store.index.add_objects([(r.sha256, ObjectLoc(meta.shard_id, r.offset, r.length)) for r in records])
    store.index.put_shard(meta, {u: meta.size for u in replicas})
    store.index.record_event("recovered_shard", shard=meta.hex, records=len(records), pid=os.getpid())
