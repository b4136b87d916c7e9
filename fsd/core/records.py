"""Object records: the sizes the read and write paths share, their results and errors, and
the helpers that hash a file and verify a record (docs/design.md: "RecordHeader", "Large
objects").

A leaf of the store: the write path (`put`), the read paths (`planner`, the facade
`hoardfs.fsd.store`, the mount) and gc import it; it imports only the byte format, the disks and the
base.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import drop_cache
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES

#: files up to this size are read into memory whole; larger ones are streamed twice
STREAM_THRESHOLD = 8 << 20
#: uncommitted bytes that trigger an fsync + index commit
GROUP_BYTES = 32 << 20
#: … or uncommitted objects: the index transaction that adds a group (Index.add_objects) writes
#: an entry per object and one per extension, and once the objects table is much larger than a
#: transaction each entry dirties a page of its own — at 10 M objects a 32 MiB group of ~14,000
#: small objects held the index 0.86–1.12 s, and no write transaction may be held over 1 s
#: (docs/benchmarks.md, "Every command at 1 M and 10 M objects"). A group stays within a maintenance command's chunk (TXN_ENTRIES).
GROUP_OBJECTS = max(256, (TXN_ENTRIES - SLACK) // 2)  # (a floor: a small TXN_ENTRIES must not make a group a file)
CHUNK = 4 << 20
#: a large object's chunk map has the xxh3-128 of every MAP_PIECE bytes (CHUNK is a multiple)
MAP_PIECE = 1 << 20
#: `Store.get` returns objects up to this size in memory; larger ones are read with
#: `iter_object` (verified pieces, bounded memory)
GET_MAX = 256 << 20
#: pieces `iter_object` reads from a replica at a time (each MAP_PIECE checked on its own)
ITER_READ = 8 << 20


class ObjectNotFound(HoardError):
    exit_code = ExitCode.DATA


class DataError(HoardError):
    exit_code = ExitCode.DATA


@dataclass
class PutResult:
    path: str
    sha256: str = ""
    status: str = "rejected"  # new | existing | rejected
    size: int = 0
    replicas: int = 0
    target: int = 0
    reason: str = ""


class SourceChanged(Exception):
    pass


def learn_map(read_at, where: str, loc, sha: bytes) -> bytes:
    """Stream one replica's record once (`read_at(offset, n)` on its shard file): header
    against the index, xxh3-128 and sha256 of the payload against the header; returns the
    chunk map (xxh3-128 per MAP_PIECE) of what was read. Memory: one ITER_READ piece."""
    got, length, digest, _flags = fmt.decode_record_header(read_at(loc.offset - fmt.RECORD_HEADER_SIZE,
                                                                   fmt.RECORD_HEADER_SIZE))
    if got != sha or length != loc.length:
        raise fmt.ShardFormatError(f"record header of {sha.hex()[:12]}… does not match the index ({where})")
    h, xx, pieces = hashlib.sha256(), xxhash.xxh3_128(), []
    for off in range(0, length, ITER_READ):
        n = min(ITER_READ, length - off)
        buf = read_at(loc.offset + off, n)
        if len(buf) != n:
            raise fmt.TruncatedShard(f"{where} ends inside object {sha.hex()[:12]}…")
        h.update(buf)
        xx.update(buf)
        view = memoryview(buf)
        pieces += [xxhash.xxh3_128_digest(view[i:i + MAP_PIECE]) for i in range(0, n, MAP_PIECE)]
    if xx.digest() != digest or h.digest() != sha:
        raise fmt.PayloadChecksumMismatch(f"object {sha.hex()[:12]}… does not match its checksums ({where})")
    return b"".join(pieces)


def checked_header(buf: bytes | memoryview, at: int, sha: bytes, length: int, where: str = "") -> bytes:
    """The payload's xxh3-128 from the record header at `at`, once the header is shown to
    describe (sha, length); ShardFormatError naming both otherwise."""
    got_sha, got_len, digest, _flags = fmt.decode_record_header(buf, at)
    if got_sha != sha or got_len != length:
        raise fmt.ShardFormatError(f"record header names {got_sha.hex()[:12]}…/{got_len} bytes, "
                                   f"index expects {sha.hex()[:12]}…/{length}{where}")
    return digest


def verify_record(buf: memoryview, at: int, sha: bytes, length: int, where: str = "") -> bytes:
    """Check the record header at `at` describes (sha, length) and the payload's xxh3; return it."""
    return bytes(verified_view(buf, at, sha, length, where))


def verified_parts(head: bytes, payload: bytes, sha: bytes, length: int, where: str = "") -> bytes:
    """`verify_record`'s checks of a record read as two parts, its header and its payload
    (`LocalDisk.read_record`): the payload itself handed back, no copy made."""
    if not fmt.sound_parts(head, payload, sha, length):
        _unsound(head, 0, payload, sha, length, where)
    return payload


def _unsound(buf: bytes | memoryview, at: int, payload: bytes | memoryview, sha: bytes, length: int,
             where: str) -> None:
    """The checks of the record header at `at` of `buf` and of its `payload` one by one, for
    the error that names what does not check out (`sound_payload` or `sound_parts` said
    something does)."""
    digest = checked_header(buf, at, sha, length, where)
    if len(payload) != length:
        raise fmt.TruncatedShard(f"short read{where}")
    fmt.verify_payload(payload, digest, where)


def verified_view(buf: memoryview, at: int, sha: bytes, length: int, where: str = "") -> memoryview:
    """`verify_record`'s checks, the payload handed back as a view into `buf`, not a copy: the
    batch planner's sinks write each payload out at once, and a copy of every record is a
    client's CPU the read could not spare (docs/benchmarks.md, "The S3 backend against SeaweedFS").
    A view keeps all of
    `buf` alive: for a caller that uses the payload at once, never one that keeps it."""
    payload = fmt.sound_payload(buf, at, sha, length)
    if payload is not None:
        return payload
    start = at + fmt.RECORD_HEADER_SIZE
    payload = buf[start:start + length]
    _unsound(buf, at, payload, sha, length, where)
    return payload


def sha_bytes(hex_: str) -> bytes:
    """The 32 bytes of a sha256 given as 64 hex digits; a usage error naming it otherwise."""
    try:
        raw = bytes.fromhex(hex_)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise HoardError(f"{hex_!r} is not a sha256 (64 hex digits)", ExitCode.USAGE)
    return raw


def hash_file(path: Path) -> tuple[bytes, bytes, int, os.stat_result, bytes]:
    """sha256, xxh3-128, size, the stat taken before reading, and the xxh3-128 of each
    MAP_PIECE piece (the chunk map readers use to verify a piece of a large object), streaming."""
    sha, xx = hashlib.sha256(), xxhash.xxh3_128()
    pieces = []
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        n = 0
        while chunk := read_upto(fd, CHUNK):
            sha.update(chunk)
            xx.update(chunk)
            pieces += [xxhash.xxh3_128_digest(chunk[i:i + MAP_PIECE]) for i in range(0, len(chunk), MAP_PIECE)]
            n += len(chunk)
        drop_cache(fd)
    finally:
        os.close(fd)
    return sha.digest(), xx.digest(), n, st, b"".join(pieces)


def read_upto(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from the file position (fewer only at the end of the file)."""
    parts = []
    total = 0
    while total < limit:
        chunk = os.read(fd, min(CHUNK, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
