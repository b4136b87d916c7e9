"""Logging set-up shared by every `hoard` process (the CLI, the mount daemon, workers).

Besides stderr, WARNING and ERROR records go as JSON lines to the file `HOARD_LOG_JSON`
names, when it is set: one line per record (time, pid, level, logger, message), appended
with one write so that concurrent processes never interleave within a line. Monitoring can
tail it; the test suite sets it so the warnings of the processes it starts are checked like
its own (tests/checklogs.py).

Under systemd (stderr is the journal: `JOURNAL_STREAM` names it) records go to journald as
structured entries instead of stderr lines, through the journal's native protocol (a datagram
of FIELD=value lines on /run/systemd/journal/socket; systemd.io/JOURNAL_NATIVE_PROTOCOL) — not
through the `systemd` Python package: pip's systemd-python compiles against libsystemd-dev and
Debian's python3-systemd is not in the venv, for twenty lines. Each entry carries
SYSLOG_IDENTIFIER "hoard" (journald adds _SYSTEMD_UNIT itself), PRIORITY, the logger and the code location, and the fields an
operator filters by: HOARD_DISK (a record about a disk: `extra={"disk": label}`, or the
"disk %s: …" messages' first argument), HOARD_RUN_KIND and HOARD_RUN (the run a worker works on:
`run_context`), HOARD_BATCH (an ingest run's batch) — `journalctl HOARD_DISK=wd4t`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENV = "HOARD_LOG_JSON"


class JsonLinesHandler(logging.Handler):
    """WARNING and above, appended to `path` as JSON lines (opened per record: cheap at this level)."""

    def __init__(self, path: str, level: int = logging.WARNING) -> None:
        super().__init__(level=level)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps({"time": time.time(), "pid": os.getpid(), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage(),
                               "traceback": bool(record.exc_info)}) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except Exception:  # logging must never take the process down
            self.handleError(record)


JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: syslog priorities of logging's levels (journald's PRIORITY field)
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
#: the run this process works on: journal fields (HOARD_RUN_KIND, HOARD_RUN, HOARD_BATCH)
_run: ContextVar[Mapping[str, str]] = ContextVar("hoard_run", default=MappingProxyType({}))


@contextlib.contextmanager
def run_context(kind: str, run_id: str) -> Iterator[None]:
    """Every record logged in the block carries the run it belongs to (an ingest's is its batch)."""
    fields = {"HOARD_RUN_KIND": kind, "HOARD_RUN": run_id} | ({"HOARD_BATCH": run_id} if kind == "ingest" else {})
    token = _run.set(fields)
    try:
        yield
    finally:
        _run.reset(token)


def journal_fields(record: logging.LogRecord, message: str, identifier: str) -> dict[str, str]:
    """The journal entry of a record."""
    fields = {"MESSAGE": message, "PRIORITY": str(PRIORITY.get(record.levelno, 6)), "SYSLOG_IDENTIFIER": identifier,
              "LOGGER": record.name, "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno),
              "CODE_FUNC": record.funcName, **_run.get()}
    disk = getattr(record, "disk", None)
    if disk is None and isinstance(record.msg, str) and record.msg.startswith("disk %s") and record.args:
        disk = record.args[0] if isinstance(record.args, tuple) else None
    if disk is not None:
        fields["HOARD_DISK"] = str(disk)
    return fields


def encode_journal(fields: dict[str, str]) -> bytes:
    """The native protocol: FIELD=value lines; a value holding a newline as FIELD, newline, its
    length (64-bit little-endian), the value, newline."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Records as journal entries (see the module docstring); a record the journal does not
    take (too large, the socket gone) goes to stderr as a plain line."""

    def __init__(self, identifier: str = "hoard", level: int = logging.NOTSET, path: str = JOURNAL_SOCKET) -> None:
        super().__init__(level=level)
        self.identifier = identifier
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            try:
                self.sock.sendto(encode_journal(journal_fields(record, message, self.identifier)), self.path)
            except OSError:
                sys.stderr.write(f"{record.levelname} {record.name}: {message}\n")
        except Exception:  # logging must never take the process down
            self.handleError(record)


def journal_stream() -> bool:
    """Whether stderr is systemd's journal (JOURNAL_STREAM is its device:inode, systemd.exec(5))."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}" and os.path.exists(JOURNAL_SOCKET)


def setup(level: int, force: bool = False) -> None:
    """stderr at `level` (under systemd: the journal, with fields), plus the JSON-lines file
    of HOARD_LOG_JSON when it is set."""
    if journal_stream():
        logging.basicConfig(level=level, handlers=[JournalHandler()], force=force)
    else:
        logging.basicConfig(level=level, format=FORMAT, force=force)
    path = os.environ.get(ENV)
    root = logging.getLogger()
    if path and not any(isinstance(h, JsonLinesHandler) for h in root.handlers):
        root.addHandler(JsonLinesHandler(path))
