"""docs/design.md's worked example decodes with the real decoder (as restic tests its doc)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from hoardfs.fsd.core import shardfmt as fmt

DOC = Path(__file__).resolve().parent.parent / "docs" / "design.md"


def _example() -> bytes:
    block = re.search(r"```hex-example\n(.*?)```", DOC.read_text(), re.S).group(1)
    return bytes.fromhex("".join(line[10:] for line in block.splitlines()))


def test_worked_example_decodes() -> None:
    """Header, record and footer of the example are what the document says they are."""
    buf = _example()
    assert len(buf) == 0xD4
    read = lambda off, n: buf[off:off + n]  # noqa: E731
    hdr = fmt.decode_shard_header(buf)
    assert hdr.shard_id.hex() == "019a2b3c4d5e0102030405a1" and hdr.klass == fmt.CLASS_RAW
    [rec] = list(fmt.scan_records(read, len(buf), sealed=True))
    assert (rec.offset, rec.length) == (0x68, 12)
    payload = buf[rec.offset:rec.end]
    assert payload == b"hello hoard\n"
    assert rec.sha256 == hashlib.sha256(payload).digest()
    assert rec.sha256.hex().startswith("c07129be") and rec.xxh3.hex() == "4992bb96e52cb6731bcf7663bea31244"
    [entry] = fmt.decode_footer(read, len(buf))
    assert (entry.sha256, entry.offset, entry.length) == (rec.sha256, 0x68, 12)


def test_encoder_reproduces_the_example() -> None:
    """Encoding the same object gives the document's bytes exactly."""
    sid = bytes.fromhex("019a2b3c4d5e0102030405a1")
    payload = b"hello hoard\n"
    sha = hashlib.sha256(payload).digest()
    buf = bytearray(fmt.encode_shard_header(fmt.ShardHeader(sid, fmt.CLASS_RAW)))
    buf += fmt.encode_record(sha, payload)
    buf += fmt.encode_footer([fmt.RecordInfo(sha, 0x68, 12, b"")], len(buf))
    assert bytes(buf) == _example()
