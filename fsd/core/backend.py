"""The shard backend interface: everything the store needs from a place that holds shards.

`fsd.core.disks.LocalDisk` implements it for an HDD mount point. The scale-out path (shards on
an S3-compatible engine such as Ceph RGW) implements the same few methods: shards are
written once, sealed, then only read, copied or deleted whole — which maps onto object
PUT (multipart while open), GET with a Range header, and DELETE.
"""

from __future__ import annotations

from typing import Protocol


class ShardSink(Protocol):
    """An open shard being appended on one backend."""

    def write(self, data: bytes | memoryview) -> None: ...
    def sync(self) -> None: ...  # durable on this backend when it returns
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class ShardBackend(Protocol):
    label: str
    uuid: str

    def create(self, shard_hex: str) -> ShardSink: ...
    def reopen(self, shard_hex: str) -> ShardSink: ...
    def seal(self, shard_hex: str) -> None: ...  # open → sealed, atomically
    # `length` bytes (fewer only at the end of the shard), however large: a local file needs
    # several pread() calls past 2 GiB (fsd.core.disks.pread_full), S3 a ranged GET; callers read
    # large records in pieces (Store.iter_object), never whole
    def read_at(self, shard_hex: str, offset: int, length: int) -> bytes: ...
    # the same bytes, fetched without speculating past them (a local file: read-ahead off; S3:
    # the same ranged GET) — the batch planner's reads, which know exactly what comes next
    def read_exact(self, shard_hex: str, offset: int, length: int) -> bytes: ...
    def size(self, shard_hex: str) -> int: ...
    # durable; FileNotFoundError when nothing was there, DiskGone when the backend is unreachable
    def delete(self, shard_hex: str) -> None: ...
    def free_bytes(self, used_by_hoard: int) -> int: ...
