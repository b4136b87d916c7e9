"""pytest plugin: a test fails on WARNING/ERROR log records it did not declare.

Declare expected records with `@pytest.mark.expect_log(r"regex", level="WARNING")`; a
declared record that never shows up fails the test too, so declarations stay honest —
unless it is declared `optional=True` (a race decides whether it happens, e.g. a power cut).
Records carrying a traceback (exc_info) count as unexpected unless declared.
The processes a test starts (the CLI, the mount daemon, workers) are checked the same way:
the plugin sets HOARD_LOG_JSON (base/logs.py) for the session, every `hoard` process appends
its WARNING/ERROR records there, and a test owns the records written while it ran.
Modelled on S3QL's tests/pytest_checklogs.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import pytest

_KEY = pytest.StashKey["_Collector"]()
_HITS = pytest.StashKey[set]()
_PASSED = pytest.StashKey[bool]()
_ENV = "HOARD_LOG_JSON"  # hoardfs.base.logs.ENV (not imported: the plugin loads before the project)


_OWN = pytest.StashKey[str]()


_MAKER = "HOARD_LOG_JSON_MADE_BY"  # the pid of the pytest process that made the file


def pytest_configure(config: pytest.Config) -> None:
    """A file of this process's own, unless one was given. A pytest-xdist worker inherits the
    controller's environment: it makes its own too, or a test would own the records of the
    processes another worker's test started meanwhile."""
    if not os.environ.get(_ENV) or os.environ.get(_MAKER, str(os.getpid())) != str(os.getpid()):
        fd, path = tempfile.mkstemp(prefix="hoard-test-logs-", suffix=".jsonl")
        os.close(fd)
        os.environ[_ENV] = config.stash[_OWN] = path
        os.environ[_MAKER] = str(os.getpid())


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN in config.stash:
        Path(config.stash[_OWN]).unlink(missing_ok=True)


class _Subprocesses:
    """Reads the records other processes appended to HOARD_LOG_JSON since the last look."""

    def __init__(self) -> None:
        self.path = Path(os.environ[_ENV])
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def records(self) -> list[logging.LogRecord]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        data = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(data)
        out = []
        for line in data.splitlines():
            r = json.loads(line)
            out.append(logging.makeLogRecord({
                "name": f"{r['logger']} (pid {r['pid']})", "levelname": r["level"],
                "levelno": logging.getLevelName(r["level"]),
                "msg": r["message"] + (" [with a traceback]" if r["traceback"] else "")}))
        return out


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.subprocesses: _Subprocesses | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    collector = _Collector()
    collector.subprocesses = _Subprocesses()
    item.stash[_KEY] = collector
    item.stash[_HITS] = set()
    logging.getLogger().addHandler(collector)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield  # if the test fails or skips, its own story is told; no "never appeared"
    item.stash[_PASSED] = True
    _evaluate(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    result = yield
    collector = item.stash.get(_KEY, None)
    if collector is not None:
        logging.getLogger().removeHandler(collector)
        _evaluate(item, final=True)
    return result


def _evaluate(item: pytest.Item, final: bool = False) -> None:
    collector = item.stash[_KEY]
    all_marks = list(item.iter_markers("expect_log"))
    marks = [(re.compile(m.args[0]), m.kwargs.get("level")) for m in all_marks]
    optional = {i for i, m in enumerate(all_marks) if m.kwargs.get("optional")}
    hits = item.stash[_HITS]
    bad = []
    if collector.subprocesses is not None:
        collector.records += collector.subprocesses.records()
    for rec in collector.records:
        msg = rec.getMessage()
        matched = [i for i, (pat, level) in enumerate(marks)
                   if pat.search(msg) and (level is None or rec.levelname == level)]
        hits.update(matched)
        if not matched:
            bad.append(f"{rec.levelname} {rec.name}: {msg}")
    collector.records.clear()
    if bad:
        pytest.fail("unexpected log records (declare with @pytest.mark.expect_log):\n  " + "\n  ".join(bad),
                    pytrace=False)
    if final and item.stash.get(_PASSED, False):
        missing = [marks[i][0].pattern for i in range(len(marks)) if i not in hits and i not in optional]
        if missing:
            pytest.fail(f"declared log records never appeared: {missing}", pytrace=False)
