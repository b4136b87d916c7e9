"""One replica of a sealed shard: copy it between disks, check it against the index.

The replicator, the scrubber, rebuild and lifecycle share these two steps; a copy is made
as every durable file is (tmp → fsync → verify → rename → fsync the directory).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

from fsd import shardfmt as fmt
from fsd.base.files import fsync_dir
from fsd.disks import drop_cache, pread_full, verify_shard_file

if TYPE_CHECKING:
    from fsd.disks import LocalDisk
    from fsd.index import ShardMeta

COPY_CHUNK = 4 << 20
log = logging.getLogger(__name__)


def check_replica(disk: LocalDisk, meta: ShardMeta, sha256: bool = False) -> int:
    """Bytes checked; raises OSError or ShardFormatError on anything wrong."""
    size, count = verify_shard_file(disk.find(meta.hex), sha256)
    if count != meta.records:
        raise fmt.FooterMismatch(f"{count} records, the index expects {meta.records}")
    return size



def discard_copy(disk: LocalDisk, shard_hex: str, why: str) -> None:
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


def copy_shard(src, dst, shard_hex: str, rate_mb_s: float | None = None) -> int:
    """Copy a sealed shard between backends: tmp → fsync → verify → rename → fsync dir."""
    size = src.size(shard_hex)
    tmp_dir = dst.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{shard_hex}.shard.tmp"
    fd_in = os.open(src.find(shard_hex), os.O_RDONLY)
    t0 = time.monotonic()
    chunks: queue.Queue = queue.Queue(maxsize=4)

    def read_ahead() -> None:  # reading the source overlaps with writing the copy
        done = 0
        try:
            while done < size:
                chunk = pread_full(fd_in, min(COPY_CHUNK, size - done), done)
                if not chunk:
                    raise fmt.TruncatedShard(f"shard {shard_hex} on {src.label} ended at {done} of {size}")
                chunks.put(chunk)
                done += len(chunk)
            chunks.put(None)
        except BaseException as e:  # handed to the writer, which raises it
            chunks.put(e)

    reader = threading.Thread(target=read_ahead, name=f"copy-{src.label}", daemon=True)
    reader.start()
    try:
        with open(tmp, "wb", buffering=0) as out:
            done = 0
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                out.write(chunk)
                done += len(chunk)
                if rate_mb_s:
                    ahead = done / (rate_mb_s * 1e6) - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            os.fdatasync(out.fileno())
            drop_cache(out.fileno())  # the check below must read what is on the disk, not the page cache
        drop_cache(fd_in)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        while reader.is_alive():  # unblock and finish the reader before closing its fd
            try:
                chunks.get_nowait()
            except queue.Empty:
                reader.join(0.05)
        os.close(fd_in)
    try:
        verify_shard_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    final = dst.path(shard_hex, True)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    dst.forget(shard_hex)  # a cached descriptor would still read the file this one replaced
    return size
