"""`hoard verify`: scrub replicas oldest-verified first, and repair bad ones from good ones.

Each replica is read whole (with POSIX_FADV_DONTNEED so a scrub does not evict hot data),
its footer and every record's xxh3-128 checked, and with `sha256=True` every payload's
sha256 too. A bad replica is replaced by a verified copy of a good one (tmp → fsync →
verify → rename, as the replicator copies). A shard whose replicas all check out gets its
`verified` time; `hoard health` shows the age of the oldest unverified shard.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.io import integrity
from hoardfs.fsd.io.replica import TargetError, assemble_onto, check_replica, repair_replica, reseal_unlisted

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from hoardfs.fsd.core.index import ShardMeta
    from hoardfs.fsd.store import Store


@dataclass
class VerifyReport:
    shards: int = 0
    replicas: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)  # "shard on disk: why"
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0
    in_scope: int = 0  # sealed shards the run could have chosen (before --sample)
    #: what is still bad, by kind: "replica file" (missing, unreadable, cut short — what `hoard
    #: check` sees too), "replica bytes" (bytes inside a whole file: only verify reads them),
    #: "marks log", "pointer" (hoardfs.fsd.io.integrity: judged as `hoard check` and `hoard health` do)
    kinds: dict[str, int] = field(default_factory=dict)
    #: replicas of the chosen shards on disks that cannot be read now (missing, failed), by
    #: disk label: not verified — said, so a clean run never hides them
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def unrepaired(self) -> int:
        return len(self.bad) - len(self.repaired)


def skipped_lines(store: Store, rep: VerifyReport) -> list[str]:
    """One line per disk whose replicas a verify could not read: how many, its state and why."""
    by_label = {r.label: r for r in store.records.values()}
    lines = []
    for label, n in sorted(rep.skipped.items()):
        rec = by_label.get(label)
        state = rec.state.value if rec else "unknown"
        why = f": {rec.reason}" if rec and rec.reason else ""
        lines.append(f"{n} replica(s) on disk {label}, which is {state}{why} — `hoard health` says what to do")
    return lines


def batch_shards(store: Store, batch_id: str) -> set[bytes]:
    """The shards holding an ingested batch's files (and its manifest)."""
    info = store.index.get_batch(batch_id)
    if info is None:
        raise HoardError(f"no ingested batch {batch_id!r}; `hoard ingest --status {batch_id}` says why",
                         ExitCode.USAGE)
    shas = [bytes.fromhex(info["manifest"])] + [
        bytes.fromhex(f["sha256"]) for f in json.loads(store.get(info["manifest"]))["files"]]
    return {loc.shard_id for loc in store.index.lookup_many(shas).values()}


def verify(store: Store, sample_pct: float = 100.0, disk_label: str | None = None, sha256: bool = False,
           repair: bool = False, budget_s: float | None = None, batch: str | None = None,
           progress: Callable[[int, int], None] | None = None, logs: bool = True) -> VerifyReport:
    """Check the chosen shards' replicas: the first `sample_pct` % (at least one) of the sealed
    shards in (verified, created) order — never verified first, then the oldest, so repeated
    samples cover the whole store. `disk_label` limits the run to replicas on that disk (an
    unknown label is refused). Checks one reader thread per disk (the disks work in
    parallel, each reading its replicas in order), then repair what is bad. `batch` limits
    the check to the shards holding that ingested batch. `logs=False` leaves the disks' marks
    logs and pointers unjudged (`hoard disks activate` brings them up right after). Repairing
    holds the maintenance lock."""
    if repair:
        with store.maintenance("verify --repair"):
            return _verify(store, sample_pct, disk_label, sha256, repair, budget_s, batch, progress, logs)
    return _verify(store, sample_pct, disk_label, sha256, repair, budget_s, batch, progress, logs)


def _verify(store: Store, sample_pct: float, disk_label: str | None, sha256: bool, repair: bool,
            budget_s: float | None, batch: str | None,
            progress: Callable[[int, int], None] | None = None, logs: bool = True) -> VerifyReport:
    rep = VerifyReport()
    t0 = time.monotonic()
    only_disk = _disk_uuid(store, disk_label) if disk_label is not None else None
    only = batch_shards(store, batch) if batch else None
    metas = [m for m in store.index.iter_shards() if m.sealed and (only is None or m.shard_id in only)
             and (only_disk is None or only_disk in m.replicas)]
    metas.sort(key=lambda m: (m.verified or 0, m.created))  # never verified first, then the oldest
    rep.in_scope = len(metas)
    if sample_pct < 100 and metas:
        metas = metas[:max(1, math.ceil(len(metas) * sample_pct / 100))]
    work: dict[str, list[ShardMeta]] = {}
    for meta in metas:
        readable = set()
        for disk in store.replica_order(meta):
            readable.add(disk.uuid)
            if only_disk is None or disk.uuid == only_disk:
                work.setdefault(disk.uuid, []).append(meta)
        for uuid in meta.replicas:
            if uuid not in readable and (only_disk is None or uuid == only_disk):
                label = store.records[uuid].label if uuid in store.records else uuid
                rep.skipped[label] = rep.skipped.get(label, 0) + 1
    results: dict[bytes, dict[str, str | None]] = {}  # shard → disk uuid → None (good) or why
    file_or_bytes: dict[tuple[bytes, str], str] = {}  # (shard, disk uuid) → kind of what is bad
    lock = threading.Lock()
    total = sum(m.size for metas_ in work.values() for m in metas_)

    def scrub_disk(uuid: str) -> None:
        disk = store.disks[uuid]
        checked = 0
        for meta in work[uuid]:
            if budget_s is not None and checked and time.monotonic() - t0 > budget_s:
                break  # (at least one shard per disk, so a tiny budget still makes progress)
            try:
                n, why = check_replica(disk, meta, sha256), None
            except (OSError, fmt.ShardFormatError) as e:
                n, why = 0, getattr(e, "strerror", None) or str(e)
                store.bad_replica(disk, meta, "verify", e)  # queued: the replicator repairs it
                # the file (missing, unreadable, cut short: `hoard check` sees it too) or bytes in it
                file_or_bytes[(meta.shard_id, uuid)] = ("replica file" if isinstance(e, (OSError, fmt.TruncatedShard))
                                                        else "replica bytes")
            checked += 1
            with lock:
                results.setdefault(meta.shard_id, {})[uuid] = why
                rep.bytes += n
                rep.replicas += 1
                if progress:
                    progress(rep.bytes, total)

    with ThreadPoolExecutor(max_workers=max(1, len(work)), thread_name_prefix="scrub") as pool:
        list(pool.map(scrub_disk, list(work)))
    by_id = {m.shard_id: m for m in metas}
    for sid, per_disk in results.items():
        meta = by_id[sid]
        rep.shards += 1
        bad = [(store.disks[u], why) for u, why in per_disk.items() if why is not None]
        good = [store.disks[u] for u, why in per_disk.items() if why is None]
        for disk, why in bad:
            rep.bad.append(f"shard {meta.hex} on {disk.label}: {why}")
        if bad and repair:
            if not good:  # the run may have checked one disk only: look at the others now
                # (a failed but attached disk last: it may hold the one good copy)
                for d in store.sources(meta):
                    if d.uuid not in per_disk:
                        try:
                            check_replica(d, meta, sha256)
                            good.append(d)
                            break
                        except (OSError, fmt.ShardFormatError):
                            continue
            if not good:  # no good copy: a body holding records its footer does not list is resealed
                good = _reseal(store, meta, bad, rep)
                bad = [(d, why) for d, why in bad if d not in good]
            if not good:  # each replica bad somewhere: one assembled record by record onto a bad one's disk
                good = _assemble(store, meta, bad, rep)
                bad = [(d, why) for d, why in bad if d not in good]
            left = []  # a repair that failed (its disk's error recorded): the shard is not verified
            for disk, why in bad if good else []:
                if repair_replica(store, meta, disk, good, why, sha256, check_sources=False):
                    rep.repaired.append(f"shard {meta.hex} on {disk.label}")
                else:
                    left.append((disk, why))
            if good:
                bad = left
        for disk, _why in bad:
            kind = file_or_bytes.get((sid, disk.uuid), "replica bytes")
            rep.kinds[kind] = rep.kinds.get(kind, 0) + 1
        if not bad and good and len(per_disk) == len(store.replica_order(meta)):
            store.index.update_shard(meta.shard_id, _verified_at(time.time()))
    if batch is None and logs:
        _judge_logs_and_pointers(store, rep, only_disk, repair)
    rep.seconds = time.monotonic() - t0
    return rep


def _verified_at(when: float) -> Callable[[ShardMeta], None]:
    """The index update that stamps a shard verified at `when` (time.time())."""
    def stamp(m: ShardMeta) -> None:
        m.verified = when
    return stamp


def _assemble(store: Store, meta: ShardMeta, bad: list, rep: VerifyReport) -> list:
    """Replace the first bad replica on a writable disk with files by a copy assembled record by
    record (`assemble_onto`; an S3 disk's is then repaired from it as from any good copy);
    returns [that disk] when done, else []."""
    for disk, why in sorted(bad, key=lambda b: not has_files(b[0])):
        if store.usable(disk.uuid, for_write=True):
            if not assemble_onto(store, meta, disk, why):
                return []
            rep.repaired.append(f"shard {meta.hex} on {disk.label} (assembled record by record from its replicas)")
            return [disk]
    return []


def _reseal(store: Store, meta: ShardMeta, bad: list, rep: VerifyReport) -> list:
    """Reseal the first bad replica whose body holds records its footer does not list (every
    replica of such a shard is alike: the others are then repaired from it, as from any good
    copy); returns [that disk] when done, else []."""
    for disk, why in bad:
        if "the footer lists" not in why:
            continue
        try:
            dropped = reseal_unlisted(store, meta, disk)
        except TargetError as e:
            store.disk_error(disk, "repair", e.err, meta.hex)
            continue
        except (OSError, fmt.ShardFormatError) as e:
            log.warning("reseal of shard %s on %s failed: %s", meta.hex, disk.label, e)
            continue
        if dropped is None:
            continue
        store.index.clear_repair(meta.shard_id, disk.uuid)
        store.index.record_event("repaired", disk=disk.label, shard=meta.hex,
                                 detail=f"resealed: {dropped} record(s) no footer or index entry named dropped")
        rep.repaired.append(f"shard {meta.hex} on {disk.label} (resealed: the footer now lists every record kept; "
                            f"{dropped} unnamed record(s) dropped)")
        return [disk]
    return []


def _judge_logs_and_pointers(store: Store, rep: VerifyReport, only_disk: str | None, repair: bool) -> None:
    """The disks' marks logs and batch and view pointers, judged as `hoard check` and `hoard
    health` judge them (hoardfs.fsd.io.integrity.judge): each finding is bad. `--repair` rewrites the logs
    from the index (a snapshot, as `hoard index rewrite-marks`) and the pointers (as `hoard
    index rewrite-pointers`), then judges again: what is left stays bad. `only_disk` keeps the
    findings about that disk."""
    label = store.records[only_disk].label if only_disk is not None else None

    def mine(found: integrity.Findings) -> list[tuple[str, str]]:
        return [(kind, line) for kind, line in found.lines() if label is None or line.startswith(f"disk {label}:")]

    before = mine(integrity.judge(store, by="verify"))
    if repair and before:
        chosen = [u for u in store.disks if store.usable(u) and (only_disk is None or u == only_disk)]
        if any(kind == "marks log" for kind, _ in before):
            store.snapshot_marks(chosen)
        if any(kind == "pointer" for kind, _ in before) and store.index.pointers is not None:
            store.index.align_pointers()
            store.catch_up_pointers(chosen)
        after = mine(integrity.judge(store, by="verify"))
        left = {line for _, line in after}
        rep.repaired += [f"{line} (rewritten from the index)" for _, line in before if line not in left]
        rep.bad += [line for _, line in before if line not in left]  # found, and repaired
        before = after
    for kind, line in before:
        rep.bad.append(line)
        rep.kinds[kind] = rep.kinds.get(kind, 0) + 1


def _disk_uuid(store: Store, label: str) -> str:
    for uuid, rec in store.records.items():
        if rec.label == label:
            return uuid
    raise HoardError(f"no disk labelled {label!r}; the disks are: {', '.join(sorted(r.label for r in store.records.values()))}",
                     ExitCode.USAGE)


def oldest_unverified_age(store: Store, shards: Iterable[ShardMeta] | None = None) -> float | None:
    """Seconds since the least recently verified sealed shard was verified (or created).
    `shards`: the index's, when the caller read them already."""
    ages = [m.verified or m.created for m in (store.index.iter_shards() if shards is None else shards) if m.sealed]
    return time.time() - min(ages) if ages else None


def oldest_unverified_by_disk(store: Store) -> dict[str, float | None]:
    """Per disk label: seconds since the least recently verified sealed shard with a replica
    there was verified (or created) — every replica on the disk was checked at least that
    recently (`verified` is set only when all of a shard's replicas passed). None: no shard."""
    oldest: dict[str, float] = {}
    for m in store.index.iter_shards():
        if m.sealed:
            t = m.verified or m.created
            for uuid in m.replicas:
                oldest[uuid] = min(oldest.get(uuid, t), t)
    now = time.time()
    return {rec.label: (now - oldest[uuid] if uuid in oldest else None) for uuid, rec in store.records.items()}
