"""Everyday edges of the command line: bad --since/--until/--type values are one line,
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

from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, use_schema

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def _hoard(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200", **(env or {})}, **kw)


@pytest.fixture
def select_cfg(hoard_home: Path, pg) -> str:
    """A config on a fresh schema holding one jpg from source `sidecar`."""
    from hoardfs.sql.apply import apply_write_intent
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    h = hashlib.sha256(b"one").hexdigest()
    apply_write_intent(pg, {"key": "edges", "sources": ["sidecar"],
                            "nodes": [{"sha256": h, "physical": {"size": 3, "file_type": "jpg"}}],
                            "metadata": [{"node": h, "source": "sidecar", "download_time": "2026-01-02T00:00:00+00:00"}]})
    return use_schema(hoard_home, pg)


@pytest.mark.parametrize("flag,value", [("--since", "garbage"), ("--since", "2026-13-45"), ("--until", "yesterday")])
def test_bad_since_until_is_one_usage_line(select_cfg: str, flag: str, value: str) -> None:
    res = _hoard("--config", select_cfg, "select", flag, value)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{flag} '{value}' is not a date; give YYYY-MM-DD" in res.stderr


def test_since_until_and_type_in_any_case_select(select_cfg: str) -> None:
    h = hashlib.sha256(b"one").hexdigest()
    for args in (["--type", "JPG"], ["--type", ".jpg"], ["--since", "2026-01-01", "--until", "2026-01-03T00:00"]):
        res = _hoard("--config", select_cfg, "select", *args)
        assert res.returncode == 0 and res.stdout.split()[0] == h, (args, res.stdout, res.stderr)
    assert _hoard("--config", select_cfg, "select", "--since", "2026-01-03").stdout == ""


def test_min_size_max_size_flags_select_by_bytes(select_cfg: str) -> None:
    """--min-size / --max-size are the selector's min_size / max_size (the one node is 3 bytes)."""
    h = hashlib.sha256(b"one").hexdigest()
    for args, found in ((["--min-size", "3"], True), (["--min-size", "4"], False), (["--max-size", "3"], True),
                        (["--max-size", "2"], False), (["--min-size", "1", "--max-size", "10"], True)):
        res = _hoard("--config", select_cfg, "select", *args)
        assert res.returncode == 0 and (res.stdout.split()[:1] == [h]) == found, (args, res.stdout, res.stderr)
    res = _hoard("--config", select_cfg, "select", "--min-size", "-1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--min-size" in res.stderr, res.stderr


def test_size_flags_never_silently_override_the_file_nor_contradict(select_cfg: str, tmp_path: Path) -> None:
    """A flag fills in a key the selector file leaves out (docs/selectors.md): --min-size 1 with
    a file saying min_size = 5000 is one line naming both (it replaced the file's and found the
    3-byte node); --min-size above --max-size is one line, not a silent '0 nodes'."""
    f = tmp_path / "s.json"
    f.write_text('{"min_size": 5000}')
    for args, says in ((["--file", str(f), "--min-size", "1"], "says min_size = 5000"),
                       (["--min-size", "10", "--max-size", "5"], "--min-size 10 is more than --max-size 5")):
        res = _hoard("--config", select_cfg, "select", *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and says in lines[0] and res.stdout == "", (args, res.stderr)
    same = _hoard("--config", select_cfg, "select", "--file", str(f), "--min-size", "5000")
    assert same.returncode == 0 and same.stdout == "", same.stderr


def test_bad_type_is_one_human_line(select_cfg: str) -> None:
    res = _hoard("--config", select_cfg, "select", "--type", "j p*g")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--type 'j p*g' is not a file type" in res.stderr and "pattern" not in res.stderr


def test_mistyped_source_gets_did_you_mean(select_cfg: str) -> None:
    res = _hoard("--config", select_cfg, "select", "--source", "sidcar")
    assert res.returncode == 0 and res.stdout == ""
    assert "no source 'sidcar'; did you mean 'sidecar'?" in res.stderr
    res = _hoard("--config", select_cfg, "select", "--source", "zzzzzz")
    assert "no source 'zzzzzz'; known: " in res.stderr and "sidecar" in res.stderr
    res = _hoard("--config", select_cfg, "select", "--source", "sidecar")
    assert res.stdout.strip() and "no source" not in res.stderr


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
    res = subprocess.run(["bash", "-c", f'"$0" -m hoardfs --config {cfg} get {sha} | head -c 10 >/dev/null; '
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
    import typer

    from hoardfs.cli import app

    found: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: typer.core.TyperCommand, path: tuple[str, ...]) -> None:
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        marks = {m for t in texts for m in PLACEHOLDER.findall(t)}
        if marks:
            found[path] = marks
        if hasattr(cmd, "list_commands"):  # a group; a lazy one's commands load when asked for
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), (*path, name))

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


@pytest.mark.parametrize("args", [["replicate", "--budget-s", "-1"], ["replicate", "--rate-mb-s", "-5"],
                                  ["verify", "--budget-s", "-1"], ["replicate", "--budget-s", "nan"],
                                  ["replicate", "--rate-mb-s", "nan"], ["verify", "--budget-s", "nan"],
                                  ["rebuild", "d1", "--rate-mb-s", "nan"], ["rebuild", "d1", "--rate-mb-s", "-1"],
                                  ["disks", "replace", "d1", "d2", "--rate-mb-s", "nan"]])
def test_a_negative_budget_or_rate_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """A negative or nan budget or rate ran with no time or no limit (nan passes click's `min=`)."""
    res = _hoard("--config", str(tmp_path / "none.toml"), *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"Invalid value for '{args[-2]}'" in res.stderr


def test_a_batch_state_removed_while_ingest_waits_is_one_line(tmp_path: Path) -> None:
    """`hoard ingest --wait/--here` reads back the state of the batch it submitted: a state file
    removed meanwhile is one line naming it (exit 5), not an assertion's traceback."""
    from hoardfs.base.errors import ExitCode, HoardError
    from hoardfs.cli.ingest import _state

    cfg = config.load(dir_disks_config(tmp_path, 2))
    with pytest.raises(HoardError) as gone:
        _state(cfg, "b-1")
    assert gone.value.exit_code == ExitCode.DATA and len(str(gone.value).splitlines()) == 1
    assert "b-1.json was removed while this command ran" in str(gone.value)
