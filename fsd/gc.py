"""`hoard gc`: free the space of deleted objects by compacting shards.

A sealed shard's *live ratio* is the payload of the records the index still points at —
minus those tombstoned by a type-B delete — over the shard's size. Shards below the
threshold are compacted, in this order (docs/design.md, "gc order"):

1. **plan + reserve**: live bytes × replica target must fit in the disks' free space
   (with one shard of slack per disk); the space is claimed with `fallocate`d reservation
   files (`<disk>/tmp/gc-reserve`) so a concurrent ingest cannot take it; else refuse.
2. **copy**: live records are read (verified) and appended to new shards by an ordinary
   writer (fsync on `write_ack` disks), sealed, then replicated to the target.
3. **swap** (one LMDB transaction): every live object that still points at an old shard
   is pointed at its new copy; objects still tombstoned are dropped with their marks;
   the old shard moves from `shards` to `retired`. An object whose tombstone was cleared
   meanwhile (stored again) but was not copied keeps its old shard alive: that shard is
   not retired this round.
4. **delete**: the retired shards' replica files are removed, then the `retired` entry.

A crash before 3 leaves unreferenced new shards (garbage for the next gc); after 3, the
next run finishes step 4 first. Nothing the index points at is ever deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from fsd.errors import ExitCode, HoardError
from fsd.index import ObjectLoc, ShardMeta
from fsd.store import Store

log = logging.getLogger(__name__)

RESERVE_NAME = "gc-reserve"


class GcNoSpace(HoardError):
    exit_code = ExitCode.NO_SPACE


@dataclass
class GcReport:
    candidates: int = 0
    compacted: int = 0
    kept_back: int = 0  # an object was stored again meanwhile: retried next run
    live_bytes_copied: int = 0
    objects_dropped: int = 0
    replicas_deleted: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0
    plan: list[dict] = field(default_factory=list)


def live_bytes(store: Store) -> tuple[dict[bytes, int], dict[bytes, list[bytes]], set[bytes]]:
    """Per shard: live payload bytes and the live shas; plus the tombstoned shas."""
    dead = store.index.marked(store.index.deleted)
    live: dict[bytes, int] = {}
    members: dict[bytes, list[bytes]] = {}
    for sha, loc in store.index.iter_objects():
        if sha in dead:
            members.setdefault(loc.shard_id, [])
            continue
        live[loc.shard_id] = live.get(loc.shard_id, 0) + loc.length
        members.setdefault(loc.shard_id, []).append(sha)
    return live, members, dead


def plan(store: Store, threshold: float) -> list[tuple[ShardMeta, int, list[bytes]]]:
    live, members, _ = live_bytes(store)
    out = []
    for meta in store.index.iter_shards():
        if not meta.sealed or meta.size <= 0:
            continue
        got = live.get(meta.shard_id, 0)
        if got / meta.size < threshold:
            out.append((meta, got, members.get(meta.shard_id, [])))
    return out


def gc(store: Store, threshold: float = 0.5, dry_run: bool = False) -> GcReport:
    t0 = time.monotonic()
    rep = GcReport()
    rep.replicas_deleted, rep.bytes_freed = _finish_retired(store)  # a crashed run's step 4
    todo = plan(store, threshold)
    rep.candidates = len(todo)
    rep.plan = [{"shard": m.hex, "size": m.size, "live": live, "ratio": round(live / m.size, 3)}
                for m, live, _ in todo]
    if dry_run or not todo:
        rep.seconds = time.monotonic() - t0
        return rep
    by_class: dict[str, list] = {}
    for item in todo:
        by_class.setdefault(item[0].klass, []).append(item)
    for klass, items in by_class.items():
        need = sum(live for _, live, _ in items) * store.target(klass)
        reservations = _reserve(store, need)
        try:
            moved = _copy_live(store, klass, items, reservations)
        finally:
            _release(reservations)
        rep.live_bytes_copied += sum(live for _, live, _ in items)
        done, kept, dropped = _swap(store, items, moved)
        rep.compacted += done
        rep.kept_back += kept
        rep.objects_dropped += dropped
    deleted, freed = _finish_retired(store)
    rep.replicas_deleted += deleted
    rep.bytes_freed += freed
    rep.seconds = time.monotonic() - t0
    return rep


# -- 1. reserve ------------------------------------------------------------------------------

def _reserve(store: Store, need: int) -> list[str]:
    usable = [(u, d) for u, d in store.disks.items() if store.usable(u, for_write=True)]
    free = {u: d.free_bytes(store._disk_record(u).used_bytes) for u, d in usable}
    slack = store.shard_bytes
    have = sum(max(0, f - slack) for f in free.values())
    if need > have:
        raise GcNoSpace(f"gc needs {need / 1e9:.2f} GB free on the disks to copy the live records before it can "
                        f"free anything, the disks have {have / 1e9:.2f} GB (after {slack / 1e6:.0f} MB slack each); "
                        "raise --threshold less (fewer shards), add a disk, or delete more first")
    paths = []
    try:
        for u, d in usable:  # each disk reserves its share of the need, by free space
            share = int(need * max(0, free[u] - slack) / have) if have else 0
            if share <= 0:
                continue
            path = d.root / "tmp" / RESERVE_NAME
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, share)
            finally:
                os.close(fd)
            paths.append(str(path))
    except OSError as e:
        _release(paths)
        raise GcNoSpace(f"gc could not reserve {need / 1e9:.2f} GB ({e.strerror}); free space first") from None
    return paths


def _release(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


# -- 2. copy ---------------------------------------------------------------------------------

def _copy_live(store: Store, klass: str, items, reservations: list[str]) -> dict[bytes, ObjectLoc]:
    """Append every live record of the candidates to new shards; return sha → new location."""
    from fsd.replicate import replicate_once
    from fsd.writer import ShardWriter

    _release(reservations)  # handed to the writer now, right before it needs the space
    writer = ShardWriter(store, klass)
    writer.log_written = True
    moved: dict[bytes, ObjectLoc] = {}
    try:
        with store.lock:
            for meta, _live, shas in items:
                for sha in shas:
                    data = store.get(sha.hex())  # verified, from any good replica
                    writer.append(sha, data)
                    if writer.shard and len(writer.shard.pending) >= 256:
                        writer.commit()
                        moved.update(writer.drain_written())
                writer.commit()
                moved.update(writer.drain_written())
            writer.seal()
    finally:
        writer.close()
    new_shards = {loc.shard_id for loc in moved.values()}
    for _ in range(3):  # bring the copies to the replica target before the old ones go
        replicate_once(store, budget_s=3600, rate_mb_s=None)
        short = [s for s in new_shards if len((store.index.get_shard(s) or ShardMeta(s, klass)).replicas)
                 < store.target(klass)]
        if not short:
            break
    else:
        raise HoardError(f"gc: {len(short)} new shards stay below {store.target(klass)} replicas; nothing was "
                         "deleted — see `hoard health`", ExitCode.UNAVAILABLE)
    return moved


# -- 3. swap ---------------------------------------------------------------------------------

def _swap(store: Store, items, moved: dict[bytes, ObjectLoc]) -> tuple[int, int, int]:
    idx = store.index
    done = kept = dropped = 0
    sids = {meta.shard_id for meta, _, _ in items}
    with idx.env.begin(write=True) as txn:
        pointing: dict[bytes, list[bytes]] = {sid: [] for sid in sids}
        for k, v in txn.cursor(db=idx.objects):  # who points at the candidates, now, inside the txn
            sid = bytes(v[:12])
            if sid in pointing:
                pointing[sid].append(bytes(k))
        for meta, _live, _shas in items:
            sid = meta.shard_id
            old = pointing[sid]
            if any(sha not in moved and txn.get(sha, db=idx.deleted) is None for sha in old):
                kept += 1  # stored again after its delete, not copied: keep the shard this round
                continue
            for sha in old:
                if sha in moved:
                    txn.put(sha, _pack(moved[sha]), db=idx.objects)
                else:
                    txn.delete(sha, db=idx.objects)
                    for db in (idx.deleted, idx.hidden, idx.exts, idx.chunks):
                        txn.delete(sha, db=db)
                    dropped += 1
            current = txn.get(sid, db=idx.shards)
            if current is not None:
                txn.put(sid, current, db=idx.retired)
                txn.delete(sid, db=idx.shards)
            done += 1
    return done, kept, dropped


def _pack(loc: ObjectLoc) -> bytes:
    from fsd.index import _OBJ

    return _OBJ.pack(loc.shard_id, loc.offset, loc.length, loc.flags)


# -- 4. delete --------------------------------------------------------------------------------

def _finish_retired(store: Store) -> tuple[int, int]:
    import json

    idx = store.index
    with idx.env.begin(db=idx.retired) as txn:
        retired = [(bytes(k), json.loads(v)) for k, v in txn.cursor()]
    deleted = freed = 0
    for sid, doc in retired:
        meta = ShardMeta.from_json(sid, json.dumps(doc).encode())
        remaining = []
        for uuid in meta.replicas:
            disk = store.disks.get(uuid)
            if disk is None or not store.usable(uuid):
                remaining.append(uuid)  # a missing disk keeps its copy until it is back or replaced
                continue
            try:
                size = disk.size(meta.hex)
                disk.delete(meta.hex)
                deleted += 1
                freed += size
                idx.adjust_used({uuid: -size})
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("gc: cannot delete shard %s on %s: %s", meta.hex, disk.label, e)
                remaining.append(uuid)
        with idx.env.begin(write=True) as txn:
            if remaining:
                meta.replicas = remaining
                txn.put(sid, meta.to_json(), db=idx.retired)
            else:
                txn.delete(sid, db=idx.retired)
                txn.delete(sid, db=idx.shards)
    return deleted, freed

