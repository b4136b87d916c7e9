"""The log-checking plugin: undeclared WARNING/ERROR records fail a test."""

from __future__ import annotations

from pathlib import Path

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
