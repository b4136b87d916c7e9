"""The shard backend interface: everything the store needs from a place that holds shards.

`hoardfs.fsd.core.disks.LocalDisk` implements it for an HDD mount point, `hoardfs.fsd.core.s3.S3Disk` for a
bucket on an S3-compatible engine (SeaweedFS, Ceph RGW; docs/scale-out.md): shards are
written once, sealed, then only read, copied or deleted whole — which maps onto an open
shard on a local staging folder, one multipart PUT at seal, GET with a Range header, and
DELETE. tests/test_s3_backend.py runs the same contract tests against both.

This is the contract: no module but `hoardfs.fsd.core.disks` reaches a disk's shard files through
`disk.root`, `disk.find` or `disk.path`, or names the shard layout (`shards/`, `.shard`,
`.open`) — tests/test_layering.py::test_only_the_local_backend_reaches_shard_files.

What a backend must also provide is what it keeps *beside* its shards — each disk's marks log,
the batch, view and db-dump pointers, the index copies, the forgotten-disk marker, a `tmp/` and an
`orphans/` folder for the sweep: a disk's `beside` (hoardfs.fsd.core.beside: `LocalBeside`, files under a
local disk's root; `hoardfs.fsd.core.s3files.S3Beside`, objects in the bucket), which every caller uses
(`Disk`). The identity is the backend's own (`check`). Index rebuild, the orphan sweep and
`hoard check` look at the shard files one by one (`shard_files`: planted, damaged or misnamed
ones included) and at the shards kept as objects (`shard_objects`: a bucket's listing). What
stays the local disk's alone is `LocalFiles` (`has_files`): descriptors for the mount and
copies, a copy's tmp file and its install, gc's fallocated reservation (`tmp_path`); a caller
that uses them goes through the contract for a disk without files.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Protocol, TypeGuard

from hoardfs.fsd.core.beside import Beside


class ShardSink(Protocol):
    """An open shard being appended on one backend."""

    def write(self, data: bytes | memoryview) -> None: ...
    def sync(self) -> None: ...  # durable on this backend when it returns
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class ShardBackend(Protocol):
    label: str
    uuid: str
    # how many reads one reader keeps in flight (the batch planner, a large object's pieces):
    # 1 for a disk head, several for an S3 engine (hoardfs.fsd.core.s3.READ_STREAMS)
    read_streams: int
    # whether a large object's pieces come off one streamed read (`stream_at`: S3, one GET for
    # the whole record) rather than a read per piece (a local disk, whose reads are cheap)
    stream_large: bool

    def create(self, shard_hex: str) -> ShardSink: ...
    def reopen(self, shard_hex: str) -> ShardSink: ...
    def seal(self, shard_hex: str) -> None: ...  # open → sealed, atomically
    # `length` bytes (fewer only at the end of the shard), however large: a local file needs
    # several pread() calls past 2 GiB (hoardfs.fsd.core.disks.pread_full), S3 a ranged GET; callers read
    # large records in pieces (Store.iter_object), never whole
    def read_at(self, shard_hex: str, offset: int, length: int) -> bytes: ...
    # the same bytes, fetched without speculating past them (a local file: read-ahead off; S3:
    # the same ranged GET) — the batch planner's reads, which know exactly what comes next
    def read_exact(self, shard_hex: str, offset: int, length: int) -> bytes: ...
    # `length` bytes at `offset` in pieces of `piece` bytes (the last shorter) as they arrive,
    # in order; raises OSError or ShardFormatError at the piece it could not read (the pieces
    # before it were whole). The caller checks each piece (Store.iter_object)
    def stream_at(self, shard_hex: str, offset: int, length: int, piece: int) -> Generator[bytes, None, None]: ...
    def size(self, shard_hex: str) -> int: ...
    # durable; FileNotFoundError when nothing was there, DiskGone when the backend is unreachable
    def delete(self, shard_hex: str) -> None: ...
    def free_bytes(self, used_by_hoard: int) -> int: ...
    # "sealed", "open" (still appended) or None: which state of the shard this backend holds
    # (a regular file's or object's: nothing else in the shard's place is a replica)
    def state(self, shard_hex: str) -> str | None: ...
    # (shard hex, sealed) of every shard held
    def shard_ids(self) -> list[tuple[str, bool]]: ...
    # (size, records) of a sealed shard after checking it whole (hoardfs.fsd.core.disks.verify_shard);
    # raises OSError or ShardFormatError
    def verify(self, shard_hex: str, sha256: bool = False) -> tuple[int, int]: ...
    # sealed → open again, for recovery to seal it anew; False when an open one is there too
    def unseal(self, shard_hex: str) -> bool: ...
    # the shard out of the way (never deleted): where it went
    def set_aside(self, shard_hex: str, src: Path | None = None) -> Path: ...


class Disk(ShardBackend, Protocol):
    """A disk as the store uses it: its shards, what it keeps beside them, its identity."""

    @property
    def beside(self) -> Beside: ...
    # where it is, for messages and to tell two configured disks apart: a path, endpoint/bucket
    @property
    def where(self) -> str: ...

    def check(self) -> None: ...  # DiskGone unless it is still this disk (mounted, its identity)
    def total_bytes(self) -> int: ...  # the space it has for hoard (an S3 disk: what was granted)
    def forget(self, shard_hex: str) -> None: ...  # drop what is cached of the shard (descriptors)
    def close_all(self) -> None: ...
    # the shard files it keeps on local storage (planted, damaged or misnamed ones included): a
    # local disk's all, an S3 disk's open ones on its staging folder — the orphan sweep's look
    def shard_files(self) -> list[Path]: ...
    # (shard hex, size, modified time) of each shard it keeps as an object (an S3 disk's sealed
    # ones, from its bucket's listing); [] on a local disk, whose shards are all files
    def shard_objects(self) -> list[tuple[str, int, float]]: ...


class LocalFiles(Disk, Protocol):
    """What the local disk gives beyond the contract, for the callers that work on its files
    (named in the module docstring): copies with a read-back check, the mount's own
    descriptors, gc's reservation."""

    root: Path

    # a read-only descriptor of the shard's file (the mount's reader, a copy's source)
    def open_fd(self, shard_hex: str) -> int: ...
    # <root>/tmp/<name>: a copy in progress, gc's reservation
    def tmp_path(self, name: str) -> Path: ...
    # a complete, checked copy in `tmp` named as the shard's sealed file
    def install(self, shard_hex: str, tmp: Path) -> None: ...


def has_files(disk: object) -> TypeGuard[LocalFiles]:
    """Whether the disk keeps its shards as local files (`LocalFiles`: a copy's descriptors and
    tmp file, the mount's own descriptors, gc's reservation use them); a backend without them
    (an S3 disk) is used through the contract alone."""
    return hasattr(disk, "open_fd")
