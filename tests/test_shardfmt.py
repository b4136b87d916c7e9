"""The shard codec: round trips, every kind of damage named, torn tails found (property tests)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoardfs.fsd.core import shardfmt as fmt

SID = bytes(range(12))


def build(payloads: list[bytes], seal: bool = True, klass: int = fmt.CLASS_RAW) -> tuple[bytes, list[fmt.RecordInfo]]:
    buf = bytearray(fmt.encode_shard_header(fmt.ShardHeader(SID, klass)))
    recs = []
    for p in payloads:
        sha = hashlib.sha256(p).digest()
        recs.append(fmt.RecordInfo(sha, len(buf) + fmt.RECORD_HEADER_SIZE, len(p), fmt.xxh3(p)))
        buf += fmt.encode_record(sha, p)
    if seal:
        buf += fmt.encode_footer(recs, len(buf))
    return bytes(buf), recs


def reader(buf: bytes):
    return lambda off, n: buf[off:off + n]


payload_lists = st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=12)


@given(payload_lists, st.booleans())
@settings(max_examples=200, deadline=None)
def test_round_trip(payloads: list[bytes], seal: bool) -> None:
    """Records scanned back (open or sealed) equal what was written; the footer lists them."""
    buf, recs = build(payloads, seal)
    scanned = list(fmt.scan_records(reader(buf), len(buf), sealed=seal))
    assert [r.sha256 for r in fmt.scan_records(reader(buf), len(buf))] == [r.sha256 for r in scanned]
    assert [(r.sha256, r.offset, r.length) for r in scanned] == [(r.sha256, r.offset, r.length) for r in recs]
    for r, p in zip(scanned, payloads, strict=True):
        assert buf[r.offset:r.end] == p
    footer = fmt.decode_footer(reader(buf), len(buf), strict=seal)
    if seal:
        assert [(r.sha256, r.offset, r.length) for r in footer] == [(r.sha256, r.offset, r.length) for r in recs]
    else:
        assert footer is None


@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_truncation_yields_a_prefix_then_names_the_tear(payloads: list[bytes], data) -> None:
    """An open shard cut anywhere gives the whole records before the cut, then TruncatedShard
    (no error when the cut falls exactly between records)."""
    buf, recs = build(payloads, seal=False)
    cut = data.draw(st.integers(fmt.SHARD_HEADER_SIZE, len(buf) - 1))
    boundary = cut == fmt.SHARD_HEADER_SIZE or any(r.end == cut for r in recs)
    got = []
    try:
        for r in fmt.scan_records(reader(buf[:cut]), cut, sealed=False):
            got.append(r)
        assert boundary, f"a cut at {cut} inside a record went unnoticed"
    except fmt.TruncatedShard:
        assert not boundary
    assert [r.sha256 for r in got] == [r.sha256 for r in recs if r.end <= cut]


@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6), st.data())
@settings(max_examples=300, deadline=None)
def test_any_flipped_bit_is_detected(payloads: list[bytes], data) -> None:
    """A bit flipped anywhere in the records never goes unnoticed by a verifying scan."""
    buf, recs = build(payloads, seal=False)
    pos = data.draw(st.integers(fmt.SHARD_HEADER_SIZE, len(buf) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(buf)
    bad[pos] ^= 1 << bit
    with pytest.raises(fmt.ShardFormatError):
        list(fmt.scan_records(reader(bytes(bad)), len(bad), sealed=False))


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_a_batch_reads_one_call_check_passes_nothing_the_detailed_checks_refuse(payloads: list[bytes], data) -> None:
    """`sound_payload` (the batch read's check of a record in one call) hands back a payload
    only where the detailed checks (`verified_view`'s: header, its check, sha256 and length as
    the index says, xxh3-128) hand back the same one: a bit flipped anywhere in a record, or
    the index naming another sha256 or length, gets None — and the detailed checks' error."""
    from hoardfs.fsd.core.records import verified_view
    buf, recs = build(payloads, seal=False)
    for r, p in zip(recs, payloads, strict=True):
        at = r.offset - fmt.RECORD_HEADER_SIZE
        assert bytes(fmt.sound_payload(memoryview(buf), at, r.sha256, r.length)) == p
        assert bytes(verified_view(memoryview(buf), at, r.sha256, r.length)) == p
    r = data.draw(st.sampled_from(recs))
    at = r.offset - fmt.RECORD_HEADER_SIZE
    pos = data.draw(st.integers(at, r.end - 1 if r.length else at + fmt.RECORD_HEADER_SIZE - 1))
    bad = bytearray(buf)
    bad[pos] ^= 1 << data.draw(st.integers(0, 7))
    asked = [(bytes(bad), r.sha256, r.length), (buf, bytes(32), r.length), (buf, r.sha256, r.length + 1)]
    for got, sha, length in asked:
        assert fmt.sound_payload(memoryview(got), at, sha, length) is None
        with pytest.raises(fmt.ShardFormatError):
            verified_view(memoryview(got), at, sha, length)


def test_typed_errors() -> None:
    """Each kind of damage has its own error type."""
    buf, recs = build([b"hello", b"world"])
    with pytest.raises(fmt.BadMagic):
        fmt.decode_shard_header(b"X" * fmt.SHARD_HEADER_SIZE)
    wrong_version = bytearray(buf)
    wrong_version[8] = 9
    with pytest.raises(fmt.UnsupportedVersion):
        fmt.decode_shard_header(bytes(wrong_version))
    with pytest.raises(fmt.TruncatedShard):
        fmt.decode_shard_header(buf[:10])
    payload_hit = bytearray(buf)
    payload_hit[recs[0].offset] ^= 0xFF
    with pytest.raises(fmt.PayloadChecksumMismatch):
        list(fmt.scan_records(reader(bytes(payload_hit)), len(buf)))
    header_hit = bytearray(buf)
    header_hit[recs[0].offset - fmt.RECORD_HEADER_SIZE + 10] ^= 0x01  # inside the length field
    with pytest.raises(fmt.HeaderCheckMismatch):
        list(fmt.scan_records(reader(bytes(header_hit)), len(buf)))
    footer_hit = bytearray(buf)
    footer_hit[recs[-1].end + 3] ^= 0x01  # inside the first footer entry
    with pytest.raises(fmt.FooterMismatch):
        fmt.decode_footer(reader(bytes(footer_hit)), len(buf))


def test_field_sizes_are_as_documented() -> None:
    assert (fmt.SHARD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE, fmt.FOOTER_ENTRY_SIZE, fmt.TRAILER_SIZE) == (32, 72, 56, 40)
