"""Logging set-up shared by every `hoard` process (the CLI, the mount daemon, workers).

Besides stderr, WARNING and ERROR records go as JSON lines to the file `HOARD_LOG_JSON`
names, when it is set: one line per record (time, pid, level, logger, message), appended
with one write so that concurrent processes never interleave within a line. Monitoring can
tail it; the test suite sets it so the warnings of the processes it starts are checked like
its own (tests/checklogs.py).
"""

from __future__ import annotations

import json
import logging
import os
import time

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
        except Exception:  # noqa: BLE001 - logging must never take the process down
            self.handleError(record)


def setup(level: int, force: bool = False) -> None:
    """stderr at `level`, plus the JSON-lines file of HOARD_LOG_JSON when it is set."""
    logging.basicConfig(level=level, format=FORMAT, force=force)
    path = os.environ.get(ENV)
    root = logging.getLogger()
    if path and not any(isinstance(h, JsonLinesHandler) for h in root.handlers):
        root.addHandler(JsonLinesHandler(path))
