"""`hoard index rebuild`: reconstruct the LMDB index from the disks alone (seed table 01B).

The shards are self-describing (docs/design.md): each disk's identity file names the disk,
each sealed shard's footer lists its records, an open shard's records are found by
scanning. The new index is built beside the old one and swapped in by rename; the old one
is kept as `<index>.old-<time>`. Run it with the store idle (no writer, no mount).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from fsd import shardfmt as fmt
from fsd import storelock
from fsd.base.config import Settings
from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import fsync_dir
from fsd.disks import DiskRecord, DiskState, drop_cache, pread_full, read_identity
from fsd.index import Index, ObjectLoc, ShardMeta
from fsd.layout import BATCHES_DIR, FORGOTTEN, MARK_OPS, MARKS_DIR, VIEWS_DIR, check_ssd, lock_root


@dataclass
class IndexRebuildReport:
    disks: int = 0
    shards: int = 0
    replicas: int = 0
    objects: int = 0
    open_shards: int = 0
    batches: int = 0
    hidden: int = 0  # type-A marks replayed from marks/
    deleted: int = 0  # type-B tombstones replayed from marks/
    rooted: int = 0  # roots (objects `hoard put` acknowledged) replayed from marks/
    damaged: list[str] = field(default_factory=list)  # replica files that could not be used
    skipped_disks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    return fd, (lambda off, n: pread_full(fd, n, off))


@contextlib.contextmanager
def _store_idle(cfg: Settings, what: str) -> Iterator[str]:
    """Both store locks held exclusively: no writer, worker or mount uses the index while it is
    swapped (objects acknowledged after the scan would vanish from the new index). Yields the
    SSD's uuid (a new SSD gets its identity: rebuilding onto it is how a lost SSD is replaced)."""
    ssd_uuid = check_ssd(cfg, init=True)
    with storelock.exclusive(lock_root(cfg), what), storelock.exclusive(lock_root(cfg), what, storelock.READERS):
        yield ssd_uuid


def _set_aside(target: Path) -> None:
    """Rename the current index to `<name>.old-<time>` (a free name, even within one second)."""
    if not target.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = target.with_name(f"{target.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = target.with_name(f"{target.name}.old-{stamp}-{n}")
    os.rename(target, aside)


def rebuild_index(cfg: Settings, progress: Callable[[int, int], None] | None = None) -> IndexRebuildReport:
    """Build the index from the disks and swap it in; refuses while anything uses the store.
    `progress(bytes_read, bytes_to_read)` as shard files are read."""
    with _store_idle(cfg, "index rebuild") as ssd_uuid:
        return _rebuild_index(cfg, ssd_uuid, progress)


def _shard_files(root: Path) -> list[Path]:
    return [p for p in sorted((root / "shards").glob("*/*")) if p.suffix in (".shard", ".open")]


def _rebuild_index(cfg: Settings, ssd_uuid: str, progress: Callable[[int, int], None] | None = None
                   ) -> IndexRebuildReport:
    rep = IndexRebuildReport()
    t0 = time.monotonic()
    target = cfg.index_dir
    work = target.with_name(target.name + ".rebuild")
    shutil.rmtree(work, ignore_errors=True)
    index = Index(work)
    index.set_meta("ssd_uuid", ssd_uuid)
    shards: dict[bytes, ShardMeta] = {}
    objects: dict[bytes, ObjectLoc] = {}
    batches: dict[str, dict] = {}
    views: dict[str, dict] = {}
    files = {dc.label: _shard_files(dc.path) if dc.path.is_dir() else [] for dc in cfg.disks}
    total = sum(_size(p) for fs in files.values() for p in fs)
    done = 0
    marks: set[tuple[int, str, str]] = set()  # the same records are on every disk: one copy each
    kept_states = _old_disk_states(target)
    try:
        for dc in cfg.disks:
            ident = read_identity(dc.path) if dc.path.is_dir() else None
            if not ident or not ident.get("uuid"):
                rep.skipped_disks.append(f"{dc.label}: no readable identity at {dc.path}")
                continue
            if read_identity(dc.path, FORGOTTEN):  # its shards were re-homed; what is left there is stale
                rep.skipped_disks.append(f"{dc.label}: forgotten by `hoard disks forget`; remove it from the config")
                continue
            used = 0
            for path in files[dc.label]:
                if progress:
                    done += _size(path)
                    progress(done, total)
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
            for folder, found in ((BATCHES_DIR, batches), (VIEWS_DIR, views)):
                for pointer in sorted((dc.path / folder).glob("*.json")):
                    try:
                        doc = json.loads(pointer.read_bytes())
                    except (OSError, ValueError) as e:
                        rep.damaged.append(f"{pointer}: {e}")
                        continue
                    # the newest pointer wins: a disk that was failed or absent may hold an old one
                    if doc.get("pointer_ns", 0) >= found.get(pointer.stem, {}).get("pointer_ns", -1):
                        found[pointer.stem] = doc
            _read_marks(dc.path / MARKS_DIR, marks, rep)
            # a failed or draining disk stays so (a user's or rebuild's decision, as Store.open keeps it)
            state, reason = kept_states.get(ident["uuid"], (DiskState.ACTIVE, ""))
            index.put_disk(DiskRecord(ident["uuid"], dc.label, str(dc.path), state,
                                      ident.get("created", ""), used_bytes=used, reason=reason))
            rep.disks += 1
        for meta in shards.values():
            index.put_shard(meta)
        items = sorted(objects.items())
        for i in range(0, len(items), 50_000):
            index.add_objects(items[i:i + 50_000])
        for kind, found, put in (("batch", batches, index.put_batch), ("view", views, index.put_view)):
            for name, info in found.items():
                info.pop("pointer_ns", None)
                if info.get("removed"):
                    continue  # removed after (some disks held) an older pointer
                if bytes.fromhex(info["manifest"]) not in objects:
                    rep.damaged.append(f"{kind} {name}: its newest pointer names manifest {info['manifest']}, "
                                       "which no disk holds; not registered")
                    continue
                put(name, info)
        final = replay_marks(marks)
        for table in ("hidden", "deleted", "rooted"):
            setattr(rep, table, index.mark(getattr(index, table), final[table],
                                           "restored from marks/ by an index rebuild"))
        rep.shards, rep.objects = len(shards), len(objects)
        rep.batches = sum(1 for info in batches.values() if not info.get("removed"))
    finally:
        index.close()
    _set_aside(target)
    os.rename(work, target)
    rep.seconds = time.monotonic() - t0
    return rep


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _old_disk_states(target: Path) -> dict[str, tuple[DiskState, str]]:
    """uuid → (state, reason) of the disks the old index marked failed or draining; empty when
    there is no old index or it cannot be read (the SSD was lost: that is what rebuild is for)."""
    if not (target / "data.mdb").is_file():
        return {}
    try:
        old = Index(target, readonly=True)
    except lmdb.Error:
        return {}
    try:
        return {r.uuid: (r.state, r.reason) for r in old.get_disks()
                if r.state in (DiskState.FAILED, DiskState.DRAINING)}
    except lmdb.Error:
        return {}
    finally:
        old.close()


def _read_marks(folder: Path, into: set[tuple[int, str, str]], rep: IndexRebuildReport) -> None:
    """Parse `marks/*.log` lines `<time_ns> <op> <sha256 hex>`; a torn last line (a crash during
    an append) is skipped — its transaction never committed, see Store.log_marks."""
    for path in sorted(folder.glob("*.log")):
        try:
            with open(path, "rb") as f:
                for line in f:
                    parts = line.split()
                    if (len(parts) == 3 and line.endswith(b"\n") and parts[0].isdigit() and len(parts[2]) == 64
                            and (op := parts[1].decode("ascii", "replace")) in MARK_OPS):
                        into.add((int(parts[0]), op, parts[2].decode("ascii")))
        except OSError as e:
            rep.damaged.append(f"{path}: {e}")


#: marks-log op → (index table, set it?); "drop" (gc freed the object) clears every table
_MARK_EFFECT = {"hide": ("hidden", True), "show": ("hidden", False), "delete": ("deleted", True),
                "keep": ("deleted", False), "root": ("rooted", True), "unroot": ("rooted", False)}


def replay_marks(records: set[tuple[int, str, str]]) -> dict[str, list[bytes]]:
    """Per index table (hidden, deleted, rooted), the objects marked after applying the
    records in time order (a later `keep` — the object was stored again —, `show`, `unroot`
    or `drop` — gc freed it — undoes an earlier mark)."""
    final: dict[str, set[str]] = {table: set() for table, _ in _MARK_EFFECT.values()}
    for _t, op, sha in sorted(records):
        if op == "drop":
            for shas in final.values():
                shas.discard(sha)
            continue
        table, on = _MARK_EFFECT[op]
        (final[table].add if on else final[table].discard)(sha)
    return {table: [bytes.fromhex(h) for h in sorted(shas)] for table, shas in final.items()}


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
        drop_cache(fd)
    finally:
        os.close(fd)
    created = int.from_bytes(header.shard_id[:6], "big") / 1000
    meta = ShardMeta(header.shard_id, fmt.CLASS_NAMES[header.klass], size if sealed else 0, sealed, [],
                     len(records), created)
    return meta, records


INDEX_COPY = "index-copy"


def backup_index(store, copies: int = 2) -> list[str]:
    """Copy the LMDB index (compacted, consistent) to `copies` HDDs: `<disk>/index-copy/`.

    Written to `index-copy.tmp`, fsynced, then swapped in by rename, so a crash leaves the
    previous copy intact. Returns the labels of the disks that hold a fresh copy."""
    disks = sorted((d for u, d in store.disks.items() if store.usable(u, for_write=True)),
                   key=lambda d: -d.free_bytes(0))[:copies]
    done = []
    stamp = {"taken_at": time.time(), "objects": store.index.count_objects()}
    for d in disks:
        tmp, final, old = d.root / f"{INDEX_COPY}.tmp", d.root / INDEX_COPY, d.root / f"{INDEX_COPY}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        store.index.env.copy(str(tmp), compact=True)
        (tmp / "stamp.json").write_text(json.dumps(stamp))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(d.root)
        shutil.rmtree(old, ignore_errors=True)
        done.append(d.label)
    return done


def restore_index(cfg: Settings) -> tuple[str, dict]:
    """Put the newest index copy found on the disks in place of the (lost) index; refuses
    while anything uses the store."""
    with _store_idle(cfg, "index restore") as ssd_uuid:
        return _restore_index(cfg, ssd_uuid)


def _restore_index(cfg: Settings, ssd_uuid: str) -> tuple[str, dict]:
    found = []
    for dc in cfg.disks:
        stamp = dc.path / INDEX_COPY / "stamp.json"
        if stamp.is_file():
            found.append((json.loads(stamp.read_text()), dc))
    if not found:

        raise HoardError("no index copy on any disk; use `hoard index rebuild` (from the shards)", ExitCode.DATA)
    stamp, dc = max(found, key=lambda x: x[0]["taken_at"])
    target = cfg.index_dir
    work = target.with_name(target.name + ".restore")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(dc.path / INDEX_COPY, work)
    (work / "stamp.json").unlink()
    restored = Index(work)
    try:
        restored.set_meta("ssd_uuid", ssd_uuid)  # the copy now belongs to this SSD
    finally:
        restored.close()
    _set_aside(target)
    os.rename(work, target)
    return dc.label, stamp
