"""The shard file format: byte grammar, encoders, decoders, scanner (docs/design.md).

    Shard       = ShardHeader || Record* || [Footer]
    ShardHeader = "HOARDSH1" || version:u16 || class:u8 || flags:u8 || reserved:u32 || shard_id:12 || reserved:4
    Record      = RecordHeader || payload
    RecordHeader= "HREC" || version:u8 || flags:u8 || reserved:u16 || length:u64 || sha256:32
                  || xxh3_128:16 || reserved:u32 || header_check:u32
    Footer      = FooterEntry* || FooterTrailer
    FooterEntry = sha256:32 || offset:u64 || length:u64 || flags:u8 || reserved:7
    FooterTrailer = count:u64 || entries_offset:u64 || entries_xxh3_128:16 || "HSEALED1"

All integers little-endian. `offset` is where the record's *payload* starts. A shard
without a footer is open (being appended) or was left open by a crash: it is still
readable by scanning records from the header, which is what `scan_records` does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from hoardfs.fsd.core import formats

SHARD_MAGIC = b"HOARDSH1"
RECORD_MAGIC = b"HREC"
SEAL_MAGIC = b"HSEALED1"
VERSION = formats.SHARD  # (every on-disk format and its version: hoardfs.fsd.core.formats)

CLASS_RAW = 1
CLASS_GENERATED = 2
CLASSES = {"raw": CLASS_RAW, "generated": CLASS_GENERATED}
CLASS_NAMES = {v: k for k, v in CLASSES.items()}

_SHARD_HDR = struct.Struct("<8sHBBI12s4s")  # 32 bytes
_REC_HDR = struct.Struct("<4sBBHQ32s16sII")  # 72 bytes
_REC_CHECKED = struct.Struct("<4sBBHQ32s16sI")  # the part header_check covers (68 bytes)
_ENTRY = struct.Struct("<32sQQB7s")  # 56 bytes
_TRAILER = struct.Struct("<QQ16s8s")  # 40 bytes

SHARD_HEADER_SIZE = _SHARD_HDR.size
RECORD_HEADER_SIZE = _REC_HDR.size
FOOTER_ENTRY_SIZE = _ENTRY.size
TRAILER_SIZE = _TRAILER.size

#: record flags understood by this version (none yet); a reader rejects any other bit
KNOWN_RECORD_FLAGS = 0x00


class ShardFormatError(ValueError):
    """Base of every corruption the decoder can name."""


class BadMagic(ShardFormatError):
    pass


class UnsupportedVersion(ShardFormatError):
    """A header of another version: `newer` when a later hoardfs wrote it (never damage to
    cut, set aside or repair: `refuse_newer`)."""

    def __init__(self, what: str, found: int) -> None:
        self.found, self.newer = found, found > VERSION
        super().__init__(f"{what} is format {found}; this hoardfs reads {VERSION}"
                         + (f" — {formats.UPGRADE}" if self.newer else ""))


def refuse_newer(e: ShardFormatError, where: str) -> None:
    """Raise formats.NewerFormat for a shard a later hoardfs wrote (`e` from a decoder), so a
    caller that would take the file for damage — set it aside, leave it out of an index
    rebuild — stops instead, naming it."""
    if isinstance(e, UnsupportedVersion) and e.newer:
        raise formats.NewerFormat(f"the shard {where}", e.found, VERSION) from None


class HeaderCheckMismatch(ShardFormatError):
    """A record header's own checksum does not match: its fields cannot be trusted."""


class PayloadChecksumMismatch(ShardFormatError):
    """The payload's xxh3-128 differs from the record header: the bytes are damaged."""


class TruncatedShard(ShardFormatError):
    """The file ends inside a header or a payload (a torn write)."""


class FooterMismatch(ShardFormatError):
    pass


@dataclass(frozen=True, slots=True)
class ShardHeader:
    shard_id: bytes  # 12 bytes
    klass: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class RecordInfo:
    sha256: bytes
    offset: int  # of the payload
    length: int
    xxh3: bytes
    flags: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


def xxh3(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def encode_shard_header(h: ShardHeader) -> bytes:
    if len(h.shard_id) != 12:
        raise ValueError("shard_id must be 12 bytes")
    return _SHARD_HDR.pack(SHARD_MAGIC, VERSION, h.klass, h.flags, 0, h.shard_id, b"\0" * 4)


def decode_shard_header(buf: bytes) -> ShardHeader:
    if len(buf) < SHARD_HEADER_SIZE:
        raise TruncatedShard("file shorter than the shard header")
    magic, version, klass, flags, _r, sid, _r2 = _SHARD_HDR.unpack_from(buf)
    if magic != SHARD_MAGIC:
        raise BadMagic(f"not a hoardfs shard (magic {magic!r})")
    if version != VERSION:
        raise UnsupportedVersion("the shard header", version)
    if klass not in CLASS_NAMES:
        raise ShardFormatError(f"unknown shard class {klass}")
    return ShardHeader(sid, klass, flags)


def encode_record_header(sha256: bytes, length: int, digest: bytes, flags: int = 0) -> bytes:
    checked = _REC_CHECKED.pack(RECORD_MAGIC, VERSION, flags, 0, length, sha256, digest, 0)
    return checked + struct.pack("<I", xxhash.xxh32_intdigest(checked))


def encode_record(sha256: bytes, payload: bytes | memoryview) -> bytes:
    """A whole record: header + payload (the caller computed sha256)."""
    return encode_record_header(sha256, len(payload), xxh3(payload)) + bytes(payload)


def decode_record_header(buf: bytes | memoryview, at: int = 0) -> tuple[bytes, int, bytes, int]:
    """(sha256, length, xxh3, flags) of the record header at `at`; typed errors on damage."""
    if len(buf) - at < RECORD_HEADER_SIZE:
        raise TruncatedShard("file ends inside a record header")
    magic, version, flags, _r, length, sha, digest, _r2, check = _REC_HDR.unpack_from(buf, at)
    if magic != RECORD_MAGIC:
        raise BadMagic(f"no record magic at {at} (found {bytes(magic)!r})")
    if xxhash.xxh32_intdigest(bytes(buf[at:at + _REC_CHECKED.size])) != check:
        raise HeaderCheckMismatch(f"record header at {at} fails its check")
    if version != VERSION:
        raise UnsupportedVersion(f"the record header at {at}", version)
    if flags & ~KNOWN_RECORD_FLAGS:
        raise ShardFormatError(f"unknown record flags {flags:#x} at {at}")
    return sha, length, digest, flags


def sound_payload(buf: memoryview, at: int, sha: bytes, length: int) -> memoryview | None:
    """The payload of the record at `at` as a view into `buf` when its header is sound and
    describes (sha, length) and the payload matches its xxh3-128; None for anything else (the
    caller's detailed checks then say which: `hoardfs.fsd.core.records.verified_view`). The same checks
    as `decode_record_header` + `verify_payload`, in one call: a batch read makes this call for
    each of tens of thousands of records (docs/benchmarks.md, "The S3 backend against SeaweedFS").
    """
    digest = _sound_header(buf, at, sha, length)
    if digest is None:
        return None
    start = at + RECORD_HEADER_SIZE
    payload = buf[start:start + length]
    if len(payload) != length or xxhash.xxh3_128_digest(payload) != digest:
        return None
    return payload


def sound_parts(head: bytes, payload: bytes, sha: bytes, length: int) -> bool:
    """`sound_payload`'s checks of a record read as two parts: its header and its payload."""
    digest = _sound_header(head, 0, sha, length)
    return digest is not None and len(payload) == length and xxhash.xxh3_128_digest(payload) == digest


def _sound_header(buf: bytes | memoryview, at: int, sha: bytes, length: int) -> bytes | None:
    """The payload's xxh3-128 when the record header at `at` is sound and describes (sha,
    length); None otherwise."""
    try:
        magic, version, flags, _r, got_len, got_sha, digest, _r2, check = _REC_HDR.unpack_from(buf, at)
    except struct.error:
        return None
    if (got_sha != sha or got_len != length or magic != RECORD_MAGIC or version != VERSION
            or flags & ~KNOWN_RECORD_FLAGS or xxhash.xxh32_intdigest(buf[at:at + _REC_CHECKED.size]) != check):
        return None
    return digest


def verify_payload(payload: bytes | memoryview, digest: bytes, where: str = "") -> None:
    if xxh3(payload) != digest:
        raise PayloadChecksumMismatch(f"payload checksum mismatch{where}")


#: payloads longer than this are checked in pieces of this size (memory stays bounded)
VERIFY_PIECE = 8 << 20


def verify_range(read_at, start: int, length: int, digest: bytes, where: str = "") -> None:
    """Check the xxh3-128 of the payload at [start, start+length) without holding it whole."""
    if length <= VERIFY_PIECE:
        payload = read_at(start, length)
        if len(payload) != length:
            raise TruncatedShard(f"short read{where}")
        verify_payload(payload, digest, where)
        return
    h = xxhash.xxh3_128()
    for off in range(start, start + length, VERIFY_PIECE):
        n = min(VERIFY_PIECE, start + length - off)
        piece = read_at(off, n)
        if len(piece) != n:
            raise TruncatedShard(f"short read{where}")
        h.update(piece)
    if h.digest() != digest:
        raise PayloadChecksumMismatch(f"payload checksum mismatch{where}")


def encode_footer(records: list[RecordInfo], entries_offset: int) -> bytes:
    entries = b"".join(_ENTRY.pack(r.sha256, r.offset, r.length, r.flags, b"\0" * 7) for r in records)
    return entries + _TRAILER.pack(len(records), entries_offset, xxh3(entries), SEAL_MAGIC)


def decode_footer(read_at, file_size: int, strict: bool = True) -> list[RecordInfo] | None:
    """The footer's record list; None when there is no seal magic at the end.

    `read_at(offset, n)` reads bytes from the shard (so this works on any backend). With
    `strict=False` a footer whose geometry or checksum does not hold also gives None (the
    bytes are just the end of an open shard's last payload); with `strict=True` it raises
    FooterMismatch, as it must for a file that is supposed to be sealed.
    """
    if file_size < SHARD_HEADER_SIZE + TRAILER_SIZE:
        return None
    count, entries_offset, digest, magic = _TRAILER.unpack(read_at(file_size - TRAILER_SIZE, TRAILER_SIZE))
    if magic != SEAL_MAGIC:
        return None
    size = count * FOOTER_ENTRY_SIZE
    if entries_offset < SHARD_HEADER_SIZE or entries_offset + size + TRAILER_SIZE != file_size:
        if not strict:
            return None
        raise FooterMismatch(f"footer says {count} entries at {entries_offset}, file is {file_size} bytes")
    entries = read_at(entries_offset, size)
    if xxh3(entries) != digest:
        if not strict:
            return None
        raise FooterMismatch("footer checksum mismatch")
    out = []
    for i in range(count):
        sha, off, length, flags, _ = _ENTRY.unpack_from(entries, i * FOOTER_ENTRY_SIZE)
        out.append(RecordInfo(sha, off, length, b"", flags))
    return out


def lists_whole_body(records: list[RecordInfo], file_size: int) -> bool:
    """Whether a sealed shard's footer `records` name every record of its body: each follows the
    one before from the shard header on (as `scan_records` walks them), and the last ends where
    the footer begins. A footer that leaves one out (damaged, or a sealing cut short) is no list
    of what the shard holds."""
    pos = SHARD_HEADER_SIZE
    for r in sorted(records, key=lambda r: r.offset):
        if r.offset != pos + RECORD_HEADER_SIZE:
            return False
        pos = r.end
    return pos == file_size - len(records) * FOOTER_ENTRY_SIZE - TRAILER_SIZE


def footer_start(trailer: bytes, file_size: int) -> int:
    """Where the footer begins, from a sealed shard's last TRAILER_SIZE bytes; `file_size`
    when they are not a plausible trailer (nothing is checked beyond its geometry: a copy
    uses it only to send the footer first, and the copy's check reads the real thing)."""
    if file_size < SHARD_HEADER_SIZE + TRAILER_SIZE or len(trailer) != TRAILER_SIZE:
        return file_size
    count, entries_offset, _digest, magic = _TRAILER.unpack(trailer)
    if magic != SEAL_MAGIC or entries_offset < SHARD_HEADER_SIZE or \
            entries_offset + count * FOOTER_ENTRY_SIZE + TRAILER_SIZE != file_size:
        return file_size
    return entries_offset


def scan_records(read_at, file_size: int, verify: bool = True, sealed: bool | None = None) -> Iterator[RecordInfo]:
    """Walk the records from the header on, without any index.

    `sealed`: True for a `.shard` file (its footer must be valid and bounds the records),
    False for an `.open` one (records run to the end of the file), None to decide from the
    footer (a payload that merely ends in the seal magic does not fool it: the footer's
    geometry and checksum must hold).

    A torn tail (a record cut short or a damaged header) raises TruncatedShard /
    HeaderCheckMismatch at its offset, after every good record before it has been
    yielded — recovery truncates there.
    """
    decode_shard_header(read_at(0, SHARD_HEADER_SIZE))
    footer_start = file_size
    if sealed is not False and file_size >= SHARD_HEADER_SIZE + TRAILER_SIZE:
        entries = decode_footer(read_at, file_size, strict=bool(sealed))
        if entries is not None:
            _c, footer_start, _d, _m = _TRAILER.unpack(read_at(file_size - TRAILER_SIZE, TRAILER_SIZE))
        elif sealed:
            raise FooterMismatch("sealed shard has no footer")
    elif sealed:
        raise TruncatedShard("sealed shard is shorter than a footer")
    pos = SHARD_HEADER_SIZE
    while pos < footer_start:
        hdr = read_at(pos, RECORD_HEADER_SIZE)
        if len(hdr) < RECORD_HEADER_SIZE:
            raise TruncatedShard(f"file ends inside the record header at {pos}")
        sha, length, digest, flags = decode_record_header(hdr)
        start = pos + RECORD_HEADER_SIZE
        if start + length > footer_start:
            raise TruncatedShard(f"record at {pos} claims {length} bytes, file ends at {footer_start}")
        if verify:
            verify_range(read_at, start, length, digest, f" in record at {pos}")
        yield RecordInfo(sha, start, length, digest, flags)
        pos = start + length
