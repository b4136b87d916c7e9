"""Under systemd, hoardfs's log records reach journald as structured entries (hoardfs.base.logs):
the native protocol's encoding, and the fields an operator filters by — the disk, the run, the
batch — on a real unix datagram socket standing where journald's is."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

from hoardfs.base.logs import JournalHandler, encode_journal, run_context


def parse(datagram: bytes) -> dict[str, str]:
    """journald's reading of a native-protocol datagram (systemd.io/JOURNAL_NATIVE_PROTOCOL)."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key, size = line, struct.unpack("<Q", datagram[nl + 1:nl + 9])[0]
            value = datagram[nl + 9:nl + 9 + size]
            assert datagram[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[key.decode()] = value.decode()
    return fields


def test_a_value_with_a_newline_is_sent_binary_safe() -> None:
    """A traceback's newlines survive: such a value is sent with its length, others as KEY=value."""
    data = encode_journal({"MESSAGE": "failed\nTraceback: …", "PRIORITY": "3"})
    assert data.startswith(b"MESSAGE\n" + struct.pack("<Q", len("failed\nTraceback: …".encode())))
    assert parse(data) == {"MESSAGE": "failed\nTraceback: …", "PRIORITY": "3"}


def test_records_carry_the_disk_the_run_and_the_batch(tmp_path: Path) -> None:
    """A "disk %s: …" warning names its disk in HOARD_DISK; what an ingest run logs carries its
    batch (HOARD_BATCH, HOARD_RUN) and the run's kind; the priority follows the level."""
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    journal.settimeout(10)  # a record that never came fails the test, it does not hang it
    log = logging.getLogger("hoard.test.journal")
    log.setLevel(logging.INFO)
    handler = JournalHandler(path=path)
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("disk %s: cannot append to %s: %s", "wd4t", "/srv/hdd/wd4t/marks", "EIO")
        with run_context("ingest", "2024-05-01_artsite"):
            log.error("step %s failed", "metadata", extra={"disk": "st3t"})
        log.info("after the run")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    first, second, third = (parse(journal.recv(65536)) for _ in range(3))
    assert first["MESSAGE"] == "disk wd4t: cannot append to /srv/hdd/wd4t/marks: EIO"
    assert (first["HOARD_DISK"], first["PRIORITY"], first["SYSLOG_IDENTIFIER"]) == ("wd4t", "4", "hoard")
    assert "HOARD_RUN" not in first
    assert (second["HOARD_BATCH"], second["HOARD_RUN"], second["HOARD_RUN_KIND"]) == \
        ("2024-05-01_artsite", "2024-05-01_artsite", "ingest")
    assert (second["HOARD_DISK"], second["PRIORITY"], second["LOGGER"]) == ("st3t", "3", "hoard.test.journal")
    assert "HOARD_RUN" not in third and third["PRIORITY"] == "6"
