"""Sealing shards whose writer died (kill -9, power loss) before it could seal them.

What the index acknowledges is the rule: an open shard's metadata carries `size`, the end
of the last group that was fsynced on every replica and committed (the writer updates it
in the same LMDB transaction that indexes the group). Every replica must hold valid
records up to there. Recovery, for each open shard whose lock is free (its writer died):

1. re-reads the shard's metadata *under the shard lock* (never a stale snapshot);
2. scans each reachable replica for its prefix of verified records (a `.shard` replica —
   renamed before the crash — gives its footer instead);
3. **keeps every replica whose verified prefix reaches the indexed end**; a replica that
   does not (a torn or corrupted copy) is *renamed aside* to `<disk>/orphans/` — never
   truncated, never deleted: its later records may still be good, and only a person or
   `hoard verify --orphans --repair` decides;
4. seals the kept replicas at the shortest verified end among them (≥ the indexed end, so
   nothing acknowledged is cut): truncate the torn tail, footer, fdatasync, rename;
5. indexes the records of that prefix that were not indexed yet (their bytes are
   verified, so keeping them is safe, and a re-run of the batch stores nothing twice), and
   sets the shard's replicas, size and sealed flag in the same transaction.

If no replica reaches the indexed end, nothing is changed: the shard stays open, an event
names it and `hoard health` reports it — its good records remain readable by offset. A
write error while sealing a replica goes through `Store.disk_error` (EIO fails the disk)
and that replica is left out.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import ObjectLoc
from hoardfs.fsd.io.writer import _unlock, try_lock

if TYPE_CHECKING:
    from pathlib import Path

    from hoardfs.fsd.core.backend import Disk
    from hoardfs.fsd.core.index import ShardMeta
    from hoardfs.fsd.store import Store

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
            fresh = store.index.get_shard(meta.shard_id)  # under the lock: what the writer last committed
            if fresh is not None and not fresh.sealed and _recover(store, fresh):
                done.append(meta.hex)
        finally:
            _unlock(lock_path, fd)
    return done


def _valid_prefix(disk: Disk, shard_hex: str) -> list[fmt.RecordInfo] | None:
    """The replica's verified records from the start; None when not even its header is there
    (a power cut before the first fsync leaves a file of zeros, or an empty one)."""
    size = disk.size(shard_hex)
    try:
        header = fmt.decode_shard_header(disk.read_at(shard_hex, 0, fmt.SHARD_HEADER_SIZE))
    except fmt.ShardFormatError as e:
        fmt.refuse_newer(e, f"{shard_hex} on {disk.label}")  # (never cut or sealed by this version)
        return None
    if header.shard_id.hex() != shard_hex:
        return None
    out = []
    try:
        for rec in fmt.scan_records(lambda off, n: disk.read_at(shard_hex, off, n), size, sealed=False):
            out.append(rec)
    except fmt.ShardFormatError as e:
        fmt.refuse_newer(e, f"{shard_hex} on {disk.label}")
        log.info("shard %s on %s: verified records end after %d records (%s)", shard_hex, disk.label, len(out), e)
    return out


def _sealed_records(disk: Disk, shard_hex: str) -> list[fmt.RecordInfo] | None:
    """The footer's records if this replica was already renamed to .shard with a good footer.
    A `.shard` whose footer does not decode (bit rot; an index rebuild indexed its verified
    records as an open copy's) is renamed back to `.open`: None, and it is recovered as one —
    its records are checked one by one and its footer written again."""
    if disk.state(shard_hex) != "sealed":
        return None
    try:
        records = fmt.decode_footer(lambda off, n: disk.read_at(shard_hex, off, n), disk.size(shard_hex))
        if records is not None:
            return records
        raise fmt.FooterMismatch("no seal at its end")
    except fmt.FooterMismatch as e:
        log.warning("shard %s on %s: its footer does not decode (%s); recovered as an open copy", shard_hex,
                    disk.label, e)
    if not disk.unseal(shard_hex):  # never renamed over: a person sorts out two files of one shard
        raise fmt.ShardFormatError(f"shard {shard_hex} on {disk.label} has a damaged footer and an open file "
                                   "of the shard lies beside it")
    return None


def _end(records: list[fmt.RecordInfo] | None) -> int:
    if records is None:
        return 0  # no valid header: holds nothing
    return records[-1].end if records else fmt.SHARD_HEADER_SIZE


def set_aside(disk: Disk, shard_hex: str, why: str, src: Path | None = None) -> str:
    """Move a replica file (`src`, by default the shard's file on `disk`) out of the shards
    into the disk's orphans (`LocalDisk.set_aside`: a rename, no byte lost), with a log line."""
    dest = disk.set_aside(shard_hex, src)
    log.warning("shard %s on %s set aside to %s: %s", shard_hex, disk.label, dest, why)
    return str(dest)


def _recover(store: Store, meta: ShardMeta) -> bool:
    # the end of what the index acknowledges; 0 when no group was ever committed (the writer
    # sets `size` only in a commit's transaction), so a replica without even a header is fine
    indexed_end = meta.size if meta.size > fmt.SHARD_HEADER_SIZE else 0
    found: dict[str, tuple[list[fmt.RecordInfo] | None, bool]] = {}  # uuid → (verified records, already sealed)
    absent = unreachable = 0
    for uuid in meta.replicas:
        disk = store.disks.get(uuid)
        if disk is None or not store.usable(uuid):
            unreachable += 1
            continue
        try:  # (the stat too: a rotted inode answers EBADMSG to it, and recovery must go on)
            if disk.state(meta.hex) is None:
                absent += 1  # the writer died before it created this replica's file
                continue
            done = _sealed_records(disk, meta.hex)
            found[uuid] = (done, True) if done is not None else (_valid_prefix(disk, meta.hex), False)
        except (OSError, fmt.ShardFormatError) as e:
            store.disk_error(disk, "recovery", e, meta.hex)
    if not found and absent == len(meta.replicas) and indexed_end == 0:
        store.index.drop_shard(meta.shard_id)  # nothing was ever written, so nothing was indexed
        return True
    if not found:
        log.info("open shard %s: no replica reachable, left for when its disks are back", meta.hex)
        return False
    good = {u: r for u, (r, _s) in found.items() if _end(r) >= indexed_end}
    if not good:
        best = max(_end(r) for r, _s in found.values())
        store.index.record_event("recovery_incomplete", shard=meta.hex, indexed_end=indexed_end, best_end=best,
                                 detail=f"no replica holds the {indexed_end} indexed bytes (best {best}); "
                                        "left open, nothing cut")
        log.error("open shard %s: no replica holds all %d indexed bytes (the longest verified copy ends at %d); "
                  "left open and untouched — run `hoard verify --orphans` and see `hoard health`",
                  meta.hex, indexed_end, best)
        return False
    sealed_ones = [r for u, (r, s) in found.items() if s and u in good]
    # the kept replicas must end up identical: a replica sealed before the crash fixes the end,
    # else the shortest verified end among the good ones (every good one holds those bytes)
    records = sealed_ones[0] if sealed_ones else min(good.values(), key=_end)
    if not records and indexed_end == 0:
        # nothing was ever committed and no replica holds a verified record: nothing to keep
        for uuid in found:
            try:
                store.disks[uuid].delete(meta.hex)
            except FileNotFoundError:
                pass
            except OSError as e:  # its disk dropped off: the index keeps naming the file until next time
                log.warning("empty open shard %s: cannot delete it on %s (%s); left for the next recovery",
                            meta.hex, store.disks[uuid].label, e)
                return False
        store.index.drop_shard(meta.shard_id)
        return True
    assert records is not None  # a replica without a header ends at 0: good only when nothing was indexed
    end = _end(records)
    for uuid, (recs, sealed) in found.items():
        if uuid in good and (_end(recs) >= end if not sealed else _end(recs) == end):
            continue
        good.pop(uuid, None)
        disk = store.disks[uuid]
        why = (f"its verified records end at {_end(recs)}, the index acknowledges {indexed_end} bytes"
               if _end(recs) < indexed_end else f"it differs from the other sealed replica (ends at {_end(recs)})")
        try:
            set_aside(disk, meta.hex, why)
        except OSError as e:
            store.disk_error(disk, "recovery", e, meta.hex)
    footer = fmt.encode_footer(records, end)
    kept = []
    for uuid in good:
        disk = store.disks[uuid]
        try:
            if not found[uuid][1]:
                sink = disk.reopen(meta.hex)
                try:
                    sink.truncate(end)  # only the unverified tail after `end` (≥ the indexed end)
                    sink.write(footer)
                    sink.sync()
                finally:
                    sink.close()
                disk.seal(meta.hex)
            kept.append(uuid)
        except OSError as e:
            store.disk_error(disk, "recovery", e, meta.hex)
    if not kept:
        log.error("open shard %s: no replica could be sealed; left open", meta.hex)
        return False
    size = end + len(footer)

    def seal(m: ShardMeta) -> dict[str, int]:
        m.replicas, m.sealed, m.size, m.records = kept, True, size, len(records)
        return {u: size for u in kept}

    store.index.add_objects([(r.sha256, ObjectLoc(meta.shard_id, r.offset, r.length)) for r in records],
                            update=(meta.shard_id, seal))
    store.index.record_event("recovered_shard", shard=meta.hex, records=len(records), replicas=len(kept),
                             set_aside=len(found) - len(kept), pid=os.getpid())
    return True
