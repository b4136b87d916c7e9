"""The log-checking plugin: undeclared WARNING/ERROR records fail a test."""

from __future__ import annotations

from pathlib import Path

import pytest

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

pytest_plugins = ["pytester"]


def _run(pytester, body: str):
    pytester.makeconftest("pytest_plugins = ['tests.checklogs']\n")
    pytester.makeini("[pytest]\nmarkers =\n    expect_log: expected log\n")
    pytester.makepyfile(body)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_undeclared_warning_fails(pytester, monkeypatch) -> None:
    """Undeclared records and tracebacks fail; declared ones pass; declared-but-absent errors."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    res = _run(pytester, """
import logging, pytest

def test_quiet():
    logging.getLogger("x").info("fine")

def test_loud():
    logging.getLogger("x").warning("disk hdd9 is on fire")

@pytest.mark.expect_log(r"on fire", level="WARNING")
def test_declared():
    logging.getLogger("x").warning("disk hdd9 is on fire")

@pytest.mark.expect_log(r"never said")
def test_declared_but_absent():
    pass

def test_traceback():
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("x").exception("boom")
""")
    # test_declared_but_absent passes its call and errors at teardown
    res.assert_outcomes(passed=3, failed=2, errors=1)
    out = res.stdout.str()
    assert "unexpected log records" in out and "disk hdd9 is on fire" in out
    assert "declared log records never appeared: ['never said']" in out
    assert "ERROR x: boom" in out


def test_records_of_started_processes_count(pytester, monkeypatch) -> None:
    """A warning logged by a `hoard` process the test starts fails the test unless declared
    (the plugin points HOARD_LOG_JSON at its own file; hoardfs.base.logs writes there)."""
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.delenv("HOARD_LOG_JSON")  # the inner session gets a file of its own
    res = _run(pytester, f"""
import subprocess, sys, pytest

CHILD = ("import logging, sys; from hoardfs.base import logs; logs.setup(logging.WARNING); "
         "logging.getLogger('hoardfs.fsd.store').warning('disk %s: write error', sys.argv[1])")

def run(label):
    subprocess.run([sys.executable, "-c", CHILD, label], check=True, cwd={str(repo)!r})

def test_child_loud():
    run("hdd7")

@pytest.mark.expect_log(r"disk hdd8: write error", level="WARNING")
def test_child_declared():
    run("hdd8")
""")
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "WARNING hoardfs.fsd.store (pid " in out and "disk hdd7: write error" in out
