"""`hoard verify`: scrub replicas oldest-verified first, and repair bad ones from good ones.

Each replica is read whole (with POSIX_FADV_DONTNEED so a scrub does not evict hot data),
its footer and every record's xxh3-128 checked, and with `sha256=True` every payload's
sha256 too. A bad replica is replaced by a verified copy of a good one (tmp → fsync →
verify → rename, as the replicator copies). A shard whose replicas all check out gets its
`verified` time; `hoard health` shows the age of the oldest unverified shard.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fsd import shardfmt as fmt
from fsd.replicate import copy_shard

if TYPE_CHECKING:
    from fsd.disks import LocalDisk
    from fsd.index import ShardMeta
    from fsd.store import Store


@dataclass
class VerifyReport:
    shards: int = 0
    replicas: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)  # "shard on disk: why"
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unrepaired(self) -> int:
        return len(self.bad) - len(self.repaired)


def check_replica(disk: LocalDisk, meta: ShardMeta, sha256: bool = False) -> int:
    """Bytes checked; raises OSError or ShardFormatError on anything wrong."""
    path = disk.find(meta.hex)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        read = lambda off, n: os.pread(fd, n, off)  # noqa: E731
        count = 0
        for rec in fmt.scan_records(read, size, sealed=True):
            if sha256 and hashlib.sha256(read(rec.offset, rec.length)).digest() != rec.sha256:
                raise fmt.PayloadChecksumMismatch(f"sha256 of the record at {rec.offset} differs from its name")
            count += 1
        if count != meta.records:
            raise fmt.FooterMismatch(f"{count} records, the index expects {meta.records}")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return size
    finally:
        os.close(fd)


def verify(store: Store, sample_pct: float = 100.0, disk_label: str | None = None, sha256: bool = False,
           repair: bool = False, budget_s: float | None = None, seed: int | None = None) -> VerifyReport:
    rep = VerifyReport()
    t0 = time.monotonic()
    metas = [m for m in store.index.iter_shards() if m.sealed]
    metas.sort(key=lambda m: (m.verified or 0, m.created))  # never verified first, then the oldest
    if sample_pct < 100:
        rng = random.Random(seed)
        metas = [m for m in metas if rng.random() * 100 < sample_pct]
    for meta in metas:
        if budget_s is not None and rep.shards and time.monotonic() - t0 > budget_s:
            break  # (at least one shard per run, so a tiny budget still makes progress)
        rep.shards += 1
        good: list[LocalDisk] = []
        bad: list[tuple[LocalDisk, str]] = []
        for disk in store.replica_order(meta):
            if disk_label and disk.label != disk_label and not repair:
                continue
            try:
                rep.bytes += check_replica(disk, meta, sha256)
                good.append(disk)
            except (OSError, fmt.ShardFormatError) as e:
                why = getattr(e, "strerror", None) or str(e)
                bad.append((disk, why))
                rep.bad.append(f"shard {meta.hex} on {disk.label}: {why}")
                store.disk_error(disk, "verify", e, meta.hex)
            rep.replicas += 1
        if bad and repair and good:
            for disk, why in bad:
                copy_shard(good[0], disk, meta.hex)
                check_replica(disk, meta, sha256)
                rep.repaired.append(f"shard {meta.hex} on {disk.label}")
                store.index.record_event("repaired", disk=disk.label, shard=meta.hex, detail=why)
                store.index.clear_repair(meta.shard_id, disk.uuid)
            bad = []
        if not bad and good:
            fresh = store.index.get_shard(meta.shard_id)
            fresh.verified = time.time()
            store.index.put_shard(fresh)
    rep.seconds = time.monotonic() - t0
    return rep


def oldest_unverified_age(store: Store) -> float | None:
    """Seconds since the least recently verified sealed shard was verified (or created)."""
    ages = [m.verified or m.created for m in store.index.iter_shards() if m.sealed]
    return time.time() - min(ages) if ages else None
