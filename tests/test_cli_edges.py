"""Everyday edges of the command line (W3-R): bad --since/--until/--type values are one line,
a mistyped --source gets a did-you-mean, a closed pipe is exit 141 whatever the buffering,
`hoard put EMPTYDIR` says the directory is empty, and --help shows its `<placeholders>`."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.base import config
from fsd.store import Store
from tests.conftest import dir_disks_config, use_schema

REPO = Path(__file__).resolve().parent.parent


def _hoard(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200", **(env or {})}, **kw)


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_get_into_a_closed_pipe_exits_141(tmp_path: Path, unbuffered: str) -> None:
    """`hoard get SHA | head -c 10`: the shell sees 141, as the README promises (an unbuffered
    stdout wrote short and ended 0)."""
    cfg = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    Store.open(config.load(cfg), init=True).close()
    blob = tmp_path / "big.bin"
    blob.write_bytes(os.urandom(3 << 20))
    assert _hoard("--config", str(cfg), "put", str(blob)).returncode == 0
    sha = hashlib.sha256(blob.read_bytes()).hexdigest()
    res = subprocess.run(["bash", "-c", f'"$0" -m fsd --config {cfg} get {sha} | head -c 10 >/dev/null; '
                          'echo "${PIPESTATUS[0]}"', sys.executable], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    assert res.stdout.strip() == "141", res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr


def test_put_empty_directory_says_so(tmp_path: Path) -> None:
    cfg = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    Store.open(config.load(cfg), init=True).close()
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    res = _hoard("--config", str(cfg), "put", str(tmp_path / "empty"))
    assert res.returncode == 2, res.stderr
    assert f"nothing to store: {tmp_path / 'empty'} holds no files" in res.stderr
    assert "name files or directories" not in res.stderr


PLACEHOLDER = re.compile(r"<[A-Za-z_][\w.]*>")


def _placeholders() -> dict[tuple[str, ...], set[str]]:
    """Every command's `<placeholder>`s in its help text and its parameters' help."""
    import click
    import typer

    from fsd.cli import app

    found: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        marks = {m for t in texts for m in PLACEHOLDER.findall(t)}
        if marks:
            found[path] = marks
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_help_shows_its_placeholders() -> None:
    """`3C/<id>/<layout>/…` was shown as `3C///…`: markdown took the placeholders for HTML."""
    found = _placeholders()
    assert ("stage",) in found and ("export",) in found and ("ingest",) in found
    missing = []
    for path, marks in sorted(found.items()):
        res = _hoard(*path, "--help")
        missing += [f"hoard {' '.join(path)} --help: {m}" for m in sorted(marks) if m not in res.stdout]
    assert not missing, "\n".join(missing)
