"""`hoard index rebuild`: reconstruct the LMDB index from the disks alone (seed table 01B).

The shards are self-describing (docs/design.md): each disk's identity file names the disk,
each sealed shard's footer lists its records, an open shard's records are found by
scanning. The new index is built beside the old one and swapped in by rename; the old one
is kept as `<index>.old-<time>`. Run it with the store idle (no writer, no mount).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fsd import shardfmt as fmt
from fsd.config import Settings
from fsd.disks import DiskRecord, DiskState, read_identity
from fsd.index import Index, ObjectLoc, ShardMeta


@dataclass
class RebuildReport:
    disks: int = 0
    shards: int = 0
    replicas: int = 0
    objects: int = 0
    open_shards: int = 0
    damaged: list[str] = field(default_factory=list)  # replica files that could not be used
    skipped_disks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    return fd, (lambda off, n: os.pread(fd, n, off))


def rebuild_index(cfg: Settings) -> RebuildReport:
    rep = RebuildReport()
    t0 = time.monotonic()
    target = cfg.index_dir
    work = target.with_name(target.name + ".rebuild")
    shutil.rmtree(work, ignore_errors=True)
    index = Index(work)
    shards: dict[bytes, ShardMeta] = {}
    objects: dict[bytes, ObjectLoc] = {}
    try:
        for dc in cfg.disks:
            ident = read_identity(dc.path) if dc.path.is_dir() else None
            if not ident or not ident.get("uuid"):
                rep.skipped_disks.append(f"{dc.label}: no readable identity at {dc.path}")
                continue
            used = 0
            for path in sorted((dc.path / "shards").glob("*/*")):
                if path.suffix not in (".shard", ".open"):
                    continue
                try:
                    meta, records = _read_shard(path)
                except (OSError, fmt.ShardFormatError) as e:
                    rep.damaged.append(f"{path}: {e}")
                    continue
                known = shards.setdefault(meta.shard_id, meta)
                known.sealed = known.sealed and meta.sealed
                known.size = max(known.size, meta.size)
                known.records = max(known.records, meta.records)
                if ident["uuid"] not in known.replicas:
                    known.replicas.append(ident["uuid"])
                used += path.stat().st_size
                rep.replicas += 1
                rep.open_shards += not meta.sealed
                for r in records:
                    objects.setdefault(r.sha256, ObjectLoc(meta.shard_id, r.offset, r.length))
            index.put_disk(DiskRecord(ident["uuid"], dc.label, str(dc.path), DiskState.ACTIVE,
                                      ident.get("created", ""), used_bytes=used))
            rep.disks += 1
        for meta in shards.values():
            index.put_shard(meta)
        items = sorted(objects.items())
        for i in range(0, len(items), 50_000):
            index.add_objects(items[i:i + 50_000])
        rep.shards, rep.objects = len(shards), len(objects)
    finally:
        index.close()
    if target.exists():
        os.rename(target, target.with_name(f"{target.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.rename(work, target)
    rep.seconds = time.monotonic() - t0
    return rep


def _read_shard(path: Path) -> tuple[ShardMeta, list[fmt.RecordInfo]]:
    sealed = path.suffix == ".shard"
    fd, read = _reader(path)
    try:
        size = os.fstat(fd).st_size
        header = fmt.decode_shard_header(read(0, fmt.SHARD_HEADER_SIZE))
        if header.shard_id.hex() != path.stem:
            raise fmt.ShardFormatError(f"file name says {path.stem}, header says {header.shard_id.hex()}")
        if sealed:
            records = fmt.decode_footer(read, size)
            if records is None:
                raise fmt.FooterMismatch("sealed shard without a footer")
        else:  # the verified prefix; the next writer's recovery seals it
            records = []
            try:
                records.extend(fmt.scan_records(read, size, sealed=False))
            except fmt.ShardFormatError:
                pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    created = int.from_bytes(header.shard_id[:6], "big") / 1000
    meta = ShardMeta(header.shard_id, fmt.CLASS_NAMES[header.klass], size if sealed else 0, sealed, [],
                     len(records), created)
    return meta, records
