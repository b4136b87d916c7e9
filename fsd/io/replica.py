"""One replica of a sealed shard: copy it between disks, check it against the index.

The replicator, the scrubber, rebuild and lifecycle share these two steps; a copy is made
as every durable file is (tmp → fsync → verify → rename → fsync the directory), the verify
reading the copy back from the disk while it is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from hoardfs.base.files import SYNC_FILE_RANGE_ALL, SYNC_FILE_RANGE_WRITE, sync_file_range
from hoardfs.base.modes import FILE
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.disks import STREAM_PIECE, drop_cache, pread_full, verify_shard

if TYPE_CHECKING:
    from hoardfs.fsd.core.backend import Disk, LocalFiles
    from hoardfs.fsd.core.index import Index, ShardMeta
    from hoardfs.fsd.store import Store

COPY_CHUNK = 4 << 20
PAGE = 4096
log = logging.getLogger(__name__)


def check_replica(disk: Disk, meta: ShardMeta, sha256: bool = False) -> int:
    """Bytes checked; raises OSError or ShardFormatError on anything wrong."""
    size, count = disk.verify(meta.hex, sha256)
    if count != meta.records:
        raise fmt.FooterMismatch(f"{count} records, the index expects {meta.records}")
    return size



def repair_replica(store: Store, meta: ShardMeta, disk: Disk, sources, reason: str,
                   sha256: bool = False, check_sources: bool = True) -> bool:
    """Replace `disk`'s bad replica of `meta` by a verified copy of the first of `sources`
    that gives one (each checked whole first unless the caller just did); True when done (its
    queued repair cleared, a `repaired` event). A failing `disk` — writes, read-back, gone —
    is recorded against it and ends the attempt (another source would not help); a failing
    source is logged and the next one tried."""
    for src in sources:
        try:
            if check_sources:
                check_replica(src, meta)
            copy_shard(src, disk, meta.hex)
            check_replica(disk, meta, sha256)
        except TargetError as e:
            store.disk_error(disk, "repair", e.err, meta.hex)
            return False
        except (OSError, fmt.ShardFormatError) as e:
            log.warning("repair of shard %s on %s from %s failed: %s", meta.hex, disk.label, src.label, e)
            continue
        store.index.clear_repair(meta.shard_id, disk.uuid)
        store.index.record_event("repaired", disk=disk.label, shard=meta.hex, detail=reason)
        return True
    return False


def reseal_unlisted(store: Store, meta: ShardMeta, disk: Disk) -> int | None:
    """Repair a sealed replica whose body holds records its footer does not list (what a Ctrl-C
    between writing a record and noting it left behind, before the writer sealed at the record's
    end: every replica alike, so there is no good copy to repair from). The new file keeps the
    body up to the last record the footer lists or the index points at, and a footer listing
    every record kept; a trailing record nothing names (the interrupted file: its re-run stored
    it elsewhere) is dropped. Written tmp → fsync → verify → rename, the index's size and record
    count updated first. Returns the number of records dropped; None (nothing changed) when the
    replica is not of that kind — a listed record missing, a record that does not verify — or
    its disk keeps no files (an S3 disk: repaired from another replica, or not at all)."""
    if not has_files(disk):
        return None
    fd = disk.open_fd(meta.hex)
    try:
        size = os.fstat(fd).st_size

        def read(off: int, n: int) -> bytes:
            return pread_full(fd, n, off)

        try:
            listed = fmt.decode_footer(read, size) or []
            body = list(fmt.scan_records(read, size, sealed=True))
        except fmt.ShardFormatError:
            return None
        where = {(r.offset, r.sha256) for r in listed}
        if len(body) <= len(listed) or not where <= {(r.offset, r.sha256) for r in body}:
            return None
        locs = store.index.lookup_many([r.sha256 for r in body])
        named = [i for i, r in enumerate(body) if (r.offset, r.sha256) in where
                 or (r.sha256 in locs and locs[r.sha256].shard_id == meta.shard_id and locs[r.sha256].offset == r.offset)]
        kept = body[:named[-1] + 1] if named else []
        if not kept:
            return None
        end = kept[-1].end
        footer = fmt.encode_footer(kept, end)
        with _tmp_replica(disk, meta.hex) as (out, tmp):
            with _on_target():
                for off in range(0, end, COPY_CHUNK):
                    data = read(off, min(COPY_CHUNK, end - off))
                    os.write(out, data)  # (a short write on a regular file is an error: ENOSPC)
                os.write(out, footer)
                os.fsync(out)
            verify_shard(lambda off, n: pread_full(out, n, off), end + len(footer), tmp.name, shard_hex=meta.hex)
    finally:
        os.close(fd)
    new_size = end + len(footer)

    def shrink(m: ShardMeta) -> dict[str, int]:
        m.size, m.records = new_size, len(kept)
        return {u: new_size - size for u in m.replicas}

    if store.index.update_shard(meta.shard_id, shrink) is None:  # gc retired it meanwhile
        tmp.unlink(missing_ok=True)
        return None
    with _on_target():
        disk.install(meta.hex, tmp)
    meta.size, meta.records = new_size, len(kept)
    return len(body) - len(kept)


@contextlib.contextmanager
def _tmp_replica(disk: LocalFiles, shard_hex: str) -> Iterator[tuple[int, Path]]:
    """A new replica file in the making on `disk` (its tmp folder, checked to be the disk
    first), open read-write: (descriptor, path); closed after the block, removed if it raises."""
    tmp = disk.tmp_path(f"{shard_hex}.shard.tmp")
    with _on_target():
        disk.check()  # a vanished disk leaves an empty mount point: nothing may land on the root filesystem
        tmp.parent.mkdir(parents=True, exist_ok=True)
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE)
    try:
        yield out, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        os.close(out)


def copy_from_any(store: Store, sources: Iterable[Disk], dst: Disk, meta: ShardMeta, op: str,
                  rate_mb_s: float | None = None, stop: threading.Event | None = None) -> int:
    """A checked copy of `meta` on `dst` from the first of `sources` that gives one whole
    (`copy_shard`; a source that fails is reported and queued for repair); when none does,
    one assembled record by record from all of them (`copy_merged`). Returns the bytes
    copied; raises TargetError when `dst` fails (another source would not help), NoSource
    when no copy could be made (the text names what each replica said)."""
    tried: list[Disk] = []
    errors = []
    for src in sources:
        if any(src.uuid == t.uuid for t in tried):  # (a disk failed by this very copy comes back as a last resort)
            continue
        try:
            return copy_shard(src, dst, meta.hex, rate_mb_s, stop)
        except TargetError:
            raise
        except CopyStopped:
            raise
        except (OSError, fmt.ShardFormatError) as e:
            store.bad_replica(src, meta, op, e)  # queued: the replicator mends it
            errors.append(f"{src.label}: {getattr(e, 'strerror', None) or e}")
            tried.append(src)
    if len(tried) > 1:  # (each replica bad somewhere: maybe not at the same records)
        try:
            n = copy_merged(tried, dst, meta, store.index, stop)
        except fmt.ShardFormatError as e:
            errors.append(f"assembled from them: {e}")
        else:
            log.warning("shard %s: no replica is whole; a copy assembled record by record from %s written to %s",
                        meta.hex, ", ".join(d.label for d in tried), dst.label)
            return n
    raise NoSource(f"shard {meta.hex}: no replica could be copied ({'; '.join(errors) or 'none readable'})")


def assemble_onto(store: Store, meta: ShardMeta, disk: Disk, reason: str) -> bool:
    """Replace `disk`'s bad replica of `meta` by a copy assembled record by record from every
    replica that reads (`copy_merged`, the bad one included: it may hold records the others
    lost); True when done (its queued repair cleared, an `assembled` event). What every whole
    copy failed to mend: each replica bad somewhere. When no copy can be assembled because
    some record is whole in no replica, the queued repair keeps that finding (`Index.
    note_unmendable`: `hoard health` names it, and a batch whose manifest is such a record)."""
    sources = list(store.sources(meta))
    if len(sources) < 2 or not store.usable(disk.uuid, for_write=True) or not has_files(disk):
        return False  # (a copy is assembled onto a disk with files; an S3 replica is then copied from it whole)
    try:
        copy_merged(sources, disk, meta, store.index, why=reason)
    except TargetError as e:
        store.disk_error(disk, "repair", e.err, meta.hex)
        return False
    except (OSError, fmt.ShardFormatError) as e:
        log.warning("shard %s: no copy could be assembled from its replicas: %s", meta.hex, e)
        if isinstance(e, Unmendable):  # (so for every queued replica of the shard: no copy mends any of them)
            queued = {u for sid, u, _ in store.index.pending_repairs() if sid == meta.shard_id} | {disk.uuid}
            for u in sorted(queued):
                store.index.note_unmendable(meta.shard_id, u, str(e), [r.sha256 for r in e.lost])
        return False
    store.index.clear_repair(meta.shard_id, disk.uuid)
    return True


class NoSource(Exception):
    """No copy of one shard could be made (each replica's error in the text)."""


class Unmendable(fmt.PayloadChecksumMismatch):
    """No replica holds some record of the shard whole: no copy can be assembled. `lost`: every
    such record (the first is named in the text)."""

    def __init__(self, message: str, lost: list[fmt.RecordInfo]) -> None:
        super().__init__(message)
        self.lost = lost


class _Source:
    """One replica as an assembly reads it: `read(offset, n)` (a descriptor's pread, or ranged
    GETs off an S3 disk), its size, and whether its header names the shard — only then are its
    header and footer taken; its records are taken from any replica, each checked on its own."""

    def __init__(self, disk: Disk, meta: ShardMeta) -> None:
        self.disk, self.hex, self.fd = disk, meta.hex, None
        if has_files(disk):
            self.fd = disk.open_fd(meta.hex)
            try:
                self.size = os.fstat(self.fd).st_size
            except OSError:
                self.close()
                raise
        else:  # (an S3 disk: its sealed object, read with ranged GETs)
            self.size = disk.size(meta.hex)
        self.names = self.size == meta.size and _header_of(meta)(self.read_or_none(0, fmt.SHARD_HEADER_SIZE))

    def read(self, offset: int, n: int) -> bytes:
        """`n` bytes at `offset`; fewer past the replica's end (nothing is asked beyond it: an
        engine answers a range past an object's end with an error)."""
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if self.fd is not None:
            return pread_full(self.fd, n, offset)
        return self.disk.read_exact(self.hex, offset, n)

    def read_or_none(self, offset: int, n: int) -> bytes:
        try:
            return self.read(offset, n)
        except OSError:
            return b""

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_sources(sources: Iterable[Disk], meta: ShardMeta) -> list[_Source]:
    """Every replica of `meta` among `sources` that opens, of any size: a replica cut short
    still holds the records before its cut, one whose header rotted still holds its records."""
    out: list[_Source] = []
    try:
        for src in sources:
            try:
                out.append(_Source(src, meta))
            except OSError:
                continue
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def copy_merged(sources: Iterable[Disk], dst: Disk, meta: ShardMeta, index: Index,
                stop: threading.Event | None = None, why: str = "") -> int:
    """A whole copy on `dst` of a sealed shard no replica of which is whole, record by record:
    each record (its header and payload) from the first replica whose bytes there check —
    the record header's own check, the payload's xxh3-128 and its sha256 against the name the
    footer gives it — the shard header and footer from the first replica whose header names
    the shard (`_merge_footer`: a footer that agrees with the index). The replicas of a sealed
    shard are the same bytes (copies, or sealed alike by recovery), so each record's bytes sit
    at the same place in each: any replica gives its records — one whose 32-byte header rotted,
    one cut short (up to its cut), one on an S3 disk (ranged GETs) — since a record is taken
    only where its bytes check against the name this shard's footer gives it (a file that is
    another shard's — a cross-link — gives nothing that does not). A record is read and written
    in pieces (STREAM_PIECE), checked as a whole: any size, in bounded memory. Written tmp →
    fsync → checked whole (sha256 too) → named, as `copy_shard` does. Raises Unmendable naming
    every record no replica holds whole (nothing is named then), TargetError when `dst` fails;
    returns the bytes written, with an `assembled` event naming the replicas used (and `why`).

    What makes a shard mendable whose replicas rotted at different records: whole-shard copies
    alone could not mend it, though every object still reads."""
    if not has_files(dst):
        raise fmt.ShardFormatError(f"shard {meta.hex}: a copy assembled from its replicas goes onto a disk with "
                                   f"files only, not {dst.label}")
    srcs = _open_sources(sources, meta)
    try:
        records = _merge_footer([s for s in srcs if s.names], meta, index)
        lost: list[fmt.RecordInfo] = []
        used: list[str] = []
        with _tmp_replica(dst, meta.hex) as (out, tmp):
            head = _first_good([s for s in srcs if s.names], 0, fmt.SHARD_HEADER_SIZE, _header_of(meta))
            with _on_target():
                os.pwrite(out, head[1], 0)
            used.append(head[0].disk.label)
            for rec in records:
                if stop is not None and stop.is_set():
                    raise CopyStopped(f"shard {meta.hex}: the assembled copy was stopped")
                got = _copy_record(srcs, out, rec)
                if got is None:
                    lost.append(rec)
                elif got.disk.label not in used:
                    used.append(got.disk.label)
            if lost:
                more = f" nor {len(lost) - 1} other record(s)" if len(lost) > 1 else ""
                raise Unmendable(f"no replica holds the record at {lost[0].offset} whole{more} (read from "
                                 f"{', '.join(s.disk.label for s in srcs)}; object {lost[0].sha256.hex()})", lost)
            footer_at = records[-1].end if records else fmt.SHARD_HEADER_SIZE
            with _on_target():
                os.pwrite(out, fmt.encode_footer(records, footer_at), footer_at)
                os.fsync(out)
                drop_cache(out)  # (the check reads what the disk holds, not the pages just written)
            try:
                verify_shard(lambda off, n: pread_full(out, n, off), meta.size, tmp.name, sha256=True,
                             shard_hex=meta.hex)
            except OSError as e:
                raise TargetError(e) from e
            except fmt.ShardFormatError as e:  # every piece checked as it was read: the disk gave back others
                raise TargetError(OSError(errno.EIO, f"disk {dst.label} gave back other bytes than were written "
                                                     f"to it ({e})")) from e
        with _on_target():
            dst.check()
            dst.install(meta.hex, tmp)
        index.record_event("assembled", disk=dst.label, shard=meta.hex,
                           detail=f"from {', '.join(used)}" + (f" ({why})" if why else ""))
        return meta.size
    finally:
        for s in srcs:
            s.close()


def _merge_footer(srcs: list[_Source], meta: ShardMeta, index: Index) -> list[fmt.RecordInfo]:
    """The records of the first replica (of those whose header names the shard) whose footer
    checks, lists its whole body and as many records as the index counts, and agrees with the
    index: no record it lists is indexed elsewhere (another shard, another offset or length).
    The records are then checked against this list by their sha256, so a list that is not this
    shard's must never be taken."""
    said = []
    for s in srcs:
        try:
            recs = fmt.decode_footer(s.read, meta.size)
        except (OSError, fmt.ShardFormatError) as e:
            said.append(f"{s.disk.label}: {getattr(e, 'strerror', None) or e}")
            continue
        if recs is None or len(recs) != meta.records or not fmt.lists_whole_body(recs, meta.size):
            said.append(f"{s.disk.label}: no footer listing its {meta.records} records")
            continue
        locs = index.lookup_many([r.sha256 for r in recs])
        if any(r.sha256 in locs and (locs[r.sha256].shard_id, locs[r.sha256].offset, locs[r.sha256].length)
               != (meta.shard_id, r.offset, r.length) for r in recs):
            said.append(f"{s.disk.label}: its footer disagrees with the index")
            continue
        return sorted(recs, key=lambda r: r.offset)
    raise fmt.FooterMismatch(f"shard {meta.hex}: no replica's footer lists its records "
                             f"({'; '.join(said) or 'no replica of its size whose header names it could be opened'})")


def _header_of(meta: ShardMeta):
    def good(buf: bytes) -> bool:
        try:
            return fmt.decode_shard_header(buf).shard_id == meta.shard_id
        except fmt.ShardFormatError:
            return False
    return good


def _first_good(srcs: list[_Source], start: int, n: int, good) -> tuple[_Source, bytes]:
    """(replica, bytes [start, start+n)) of the first replica whose bytes there are `good`."""
    for s in srcs:
        buf = s.read_or_none(start, n)
        if len(buf) == n and good(buf):
            return s, buf
    raise fmt.BadMagic(f"no replica holds the shard header whole ({', '.join(s.disk.label for s in srcs)})")


def _copy_record(srcs: list[_Source], out: int, rec: fmt.RecordInfo) -> _Source | None:
    """Write the record `rec` (its header and payload) at its place in `out` from the first
    replica whose bytes check (the header's own check and its fields against `rec`, the
    payload's xxh3-128 and sha256), read and written in pieces; the replica used, or None when
    none holds it whole (what was written of it is overwritten by the next try, or never named)."""
    start = rec.offset - fmt.RECORD_HEADER_SIZE
    for s in srcs:
        if s.size < rec.end:
            continue  # (cut short before this record's end)
        try:
            first = s.read(start, min(STREAM_PIECE, rec.end - start))
            sha, length, digest, _flags = fmt.decode_record_header(first)
        except (OSError, fmt.ShardFormatError):
            continue
        if sha != rec.sha256 or length != rec.length:
            continue
        x, h = xxhash.xxh3_128(), hashlib.sha256()
        piece, at, whole = memoryview(first)[fmt.RECORD_HEADER_SIZE:], rec.offset, True
        with _on_target():
            os.pwrite(out, first[:fmt.RECORD_HEADER_SIZE], start)
        while True:
            x.update(piece)
            h.update(piece)
            with _on_target():
                os.pwrite(out, piece, at)
            at += len(piece)
            if at >= rec.end:
                break
            try:
                piece = memoryview(s.read(at, min(STREAM_PIECE, rec.end - at)))
            except OSError:
                whole = False
                break
            if not piece:
                whole = False
                break
        if whole and at == rec.end and x.digest() == digest and h.digest() == rec.sha256:
            return s
    return None


def discard_copy(disk: Disk, shard_hex: str, why: str) -> None:
    """Delete a replica just made that must not stay (the shard was retired or swapped while
    it was copied). A copy that cannot be deleted now (its disk dropped off) is named in the
    log and left for `hoard verify --orphans`, which finds files the index does not name."""
    try:
        disk.delete(shard_hex)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("shard %s on %s: %s, and the copy could not be deleted (%s): "
                    "`hoard verify --orphans --repair` removes it later", shard_hex, disk.label, why, e)


def copy_shard(src, dst, shard_hex: str, rate_mb_s: float | None = None,
               stop: threading.Event | None = None) -> int:
    """Copy a sealed shard between backends: tmp → write and check → fdatasync → rename →
    fsync the directory. The check reads the copy back from the disk (not the page cache)
    and checks its footer and every record (`verify_shard`) before it is named.

    Three streams overlap, so a copy runs at its slowest disk's speed rather than at the sum
    of three passes: a thread reads the source ahead; each piece written is pushed to the
    disk at once (sync_file_range) while the next is read; a second thread checks each piece
    the disk has taken — its pages dropped from the cache first — while later ones are
    written. The footer is copied first, since the check reads it before the records; a
    check that fails stops the copy there. (On one real disk the read-back shares the head
    with the writes; the lab throttles reads and writes apart: docs/benchmarks.md.)

    `stop` set ends the copy at its next piece (or rate-limit pause) with CopyStopped, which
    blames no disk; nothing is left behind.

    Onto or off a backend without files (an S3 disk) the copy goes through the contract
    instead (`_copy_through`)."""
    if not (has_files(src) and has_files(dst)):
        return _copy_through(src, dst, shard_hex, rate_mb_s, stop)
    size = src.size(shard_hex)
    tmp = dst.tmp_path(f"{shard_hex}.shard.tmp")
    fd_in = src.open_fd(shard_hex)
    try:
        with _on_target():
            dst.check()  # a vanished disk leaves an empty mount point: the copy would land on the root filesystem
            tmp.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE)
        try:
            _Copy(fd_in, fd, size, f"shard {shard_hex} on {src.label}", tmp.name, shard_hex).run(rate_mb_s, stop)
        except fmt.ShardFormatError as e:
            raise _whose_bytes(src, shard_hex, dst, e) from e
        finally:
            os.close(fd)
        drop_cache(fd_in)
    except BaseException:
        with contextlib.suppress(OSError):  # (a failing target may refuse this too: the next copy overwrites it)
            tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd_in)
    with _on_target():
        dst.check()  # it may have dropped off during the copy: the descriptor still wrote to it, the path would not
        dst.install(shard_hex, tmp)
    return size


def _copy_through(src, dst, shard_hex: str, rate_mb_s: float | None, stop: threading.Event | None) -> int:
    """copy_shard onto or off an S3 disk: the source read in COPY_CHUNK pieces (`read_exact`:
    ranged GETs off an S3 disk), appended to an open shard on `dst` (an S3 disk's staging
    folder) and synced, then sealed — on an S3 disk the upload, which a HEAD confirms holds the
    staged bytes' sha256 (hoardfs.fsd.core.s3) — and the sealed replica checked whole (`dst.verify`),
    before the caller names it. What `dst` holds of the shard already (a repair's bad replica, a
    killed copy's open file) is deleted first: the source, checked, holds what it should.
    Anything that fails leaves no replica named: the index still names only the source's."""
    size = src.size(shard_hex)
    stop = stop or threading.Event()
    with _on_target():
        dst.check()
        if dst.state(shard_hex) is not None:  # a repair's bad replica, or a killed copy's open file
            dst.delete(shard_hex)  # (a sealed shard has no writer; the source holds what this one should)
        sink = dst.create(shard_hex)
    t0 = time.monotonic()
    try:
        for off in range(0, size, COPY_CHUNK):
            if stop.is_set():
                raise CopyStopped(f"shard {shard_hex} on {src.label}: the copy was stopped")
            chunk = src.read_exact(shard_hex, off, min(COPY_CHUNK, size - off))
            if len(chunk) != min(COPY_CHUNK, size - off):
                raise fmt.TruncatedShard(f"shard {shard_hex} on {src.label} ended at {off + len(chunk)} of {size}")
            with _on_target():
                sink.write(chunk)
            if rate_mb_s:
                ahead = (off + len(chunk)) / (rate_mb_s * 1e6) - (time.monotonic() - t0)
                if ahead > 0 and stop.wait(ahead):
                    raise CopyStopped(f"shard {shard_hex} on {src.label}: the copy was stopped")
        with _on_target():
            sink.sync()
            sink.close()
            dst.seal(shard_hex)
        try:
            dst.verify(shard_hex)
        except fmt.ShardFormatError as e:
            raise _whose_bytes(src, shard_hex, dst, e) from e
        except OSError as e:
            raise TargetError(e) from e
    except BaseException:
        sink.close()
        with contextlib.suppress(OSError):  # (an engine that is down keeps it: named by no index entry)
            dst.delete(shard_hex)
        raise
    return size


def _whose_bytes(src, shard_hex: str, dst, err: fmt.ShardFormatError) -> Exception:
    """The copy's check found wrong bytes: the source's (it holds them too: `err` stands) or
    the target's — a disk that gave back other bytes than it took, blamed as an I/O error
    (the source is then checked whole a second time, on this rare path only)."""
    try:
        src.verify(shard_hex)
    except (OSError, fmt.ShardFormatError):
        return err
    return TargetError(OSError(errno.EIO, f"disk {dst.label} gave back other bytes than were written "
                                          f"to it ({err})"))


class TargetError(OSError):
    """Writing the copy or reading it back failed: the fault of the disk copied to, not of
    the source (whose disk must not be marked failed for it). `err` is the original error."""

    def __init__(self, err: OSError) -> None:
        super().__init__(err.errno, err.strerror, err.filename)
        self.err = err


@contextlib.contextmanager
def _on_target():
    try:
        yield
    except TargetError:
        raise
    except OSError as e:
        raise TargetError(e) from e


class CopyStopped(Exception):
    """The caller asked the copy to stop (copy_shard's `stop`): no disk is at fault."""


class _FromSource(Exception):
    """An error reading the source, carried past the target's error handling."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


class _Stopped(Exception):
    """The copy failed elsewhere: the check stops waiting for pieces."""


class _Copy:
    """One shard copy's three streams (see copy_shard): the caller's thread writes, one
    thread reads the source ahead, one checks what the disk took."""

    def __init__(self, fd_in: int, fd: int, size: int, what: str, name: str, shard_hex: str) -> None:
        self.fd_in, self.fd, self.size, self.what, self.name = fd_in, fd, size, what, name
        self.shard_hex = shard_hex
        # the footer's pages first, then everything before them, in COPY_CHUNK pieces
        tail = fmt.footer_start(pread_full(fd_in, fmt.TRAILER_SIZE, max(0, size - fmt.TRAILER_SIZE)), size)
        self.tail = min(tail - tail % PAGE, size)
        footer = _split(self.tail, size)
        self.pieces, self.n_tail = footer + _split(0, self.tail), len(footer)
        self.settled = 0  # pieces on the disk and out of the page cache, in `pieces` order …
        self.prefix = 0  # … of which these bytes from offset 0 on
        self.cond = threading.Condition()
        self.aborted = False  # the copy failed: the check stops waiting
        self.check_error: BaseException | None = None
        self.chunks: queue.Queue = queue.Queue(maxsize=4)

    def run(self, rate_mb_s: float | None, stop: threading.Event | None = None) -> None:
        reader = threading.Thread(target=self._read_ahead, name="copy-read", daemon=True)
        checker = threading.Thread(target=self._check, name="copy-check", daemon=True)
        reader.start()
        checker.start()
        try:
            stop = stop or threading.Event()
            try:
                with _on_target():
                    self._write(rate_mb_s, stop)
                    if stop.is_set():  # (a copy stopped is discarded: no need to wait for its fsync)
                        raise CopyStopped(f"{self.what}: the copy was stopped")
                    os.fdatasync(self.fd)
            except _FromSource as e:
                raise e.err from None
        except BaseException:
            with self.cond:
                self.aborted = True
                self.cond.notify_all()
            raise
        finally:
            while reader.is_alive():  # unblock and finish the reader before its fd is closed
                try:
                    self.chunks.get_nowait()
                except queue.Empty:
                    reader.join(0.05)
            checker.join()
        if isinstance(self.check_error, OSError):  # reading the copy back
            raise TargetError(self.check_error) from self.check_error
        if self.check_error is not None:  # wrong bytes: the source's, or the copy's (a bad write)
            raise self.check_error
        with _on_target():
            drop_cache(self.fd)

    def _read_ahead(self) -> None:
        try:
            for off, n in self.pieces:
                chunk = pread_full(self.fd_in, n, off)
                if len(chunk) != n:
                    raise fmt.TruncatedShard(f"{self.what} ended at {off + len(chunk)} of {self.size}")
                self.chunks.put(chunk)
            self.chunks.put(None)
        except BaseException as e:  # handed to the writer, which raises it
            self.chunks.put(e)

    def _write(self, rate_mb_s: float | None, stop: threading.Event) -> None:
        t0, done, before = time.monotonic(), 0, None
        for off, n in self.pieces:
            if stop.is_set():
                raise CopyStopped(f"{self.what}: the copy was stopped")
            chunk = self.chunks.get()
            if isinstance(chunk, BaseException):
                raise _FromSource(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.pwrite(self.fd, view, off + n - len(view)):]
            sync_file_range(self.fd, off, n, SYNC_FILE_RANGE_WRITE)  # to the disk while the next is read
            if before is not None:
                self._settle(*before)
            before, done = (off, n), done + n
            if rate_mb_s:
                ahead = done / (rate_mb_s * 1e6) - (time.monotonic() - t0)
                if ahead > 0 and stop.wait(ahead):
                    raise CopyStopped(f"{self.what}: the copy was stopped")
        if before is not None:
            self._settle(*before)

    def _settle(self, off: int, n: int) -> None:
        """Wait until a piece is on the disk, drop its pages, hand it to the check."""
        if not sync_file_range(self.fd, off, n, SYNC_FILE_RANGE_ALL):
            os.fdatasync(self.fd)  # (no sync_file_range here: everything so far)
        os.posix_fadvise(self.fd, off, n, os.POSIX_FADV_DONTNEED)
        with self.cond:
            if self.settled >= self.n_tail:
                self.prefix += n
            self.settled += 1
            self.cond.notify_all()
            if self.check_error is not None:
                raise self.check_error

    def _check(self) -> None:
        try:
            verify_shard(self._read_settled, self.size, self.name, shard_hex=self.shard_hex)
        except _Stopped:
            pass
        except BaseException as e:
            with self.cond:
                self.check_error = e

    def _read_settled(self, off: int, n: int) -> bytes:
        end = min(off + n, self.size)
        with self.cond:
            while not self._settled(off, end):
                if self.aborted:
                    raise _Stopped
                self.cond.wait()
        return pread_full(self.fd, n, off)

    def _settled(self, off: int, end: int) -> bool:
        """Whether bytes [off, end) are on the disk (the footer's pieces come first)."""
        return self.settled >= self.n_tail and (end <= self.prefix or off >= self.tail or self.prefix == self.tail)


def _split(lo: int, hi: int) -> list[tuple[int, int]]:
    return [(off, min(COPY_CHUNK, hi - off)) for off in range(lo, hi, COPY_CHUNK)]
