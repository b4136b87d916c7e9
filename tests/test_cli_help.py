"""`hoard --help` lists every command from cli/_summaries.py without loading one
(hoardfs.cli.LazyGroup): the kept lines must be what the commands themselves say."""

from __future__ import annotations

import contextlib
import io
import sys

import typer
from typer.testing import CliRunner

import hoardfs.cli
from hoardfs.cli import COMMANDS, app, summaries
from hoardfs.cli._summaries import SUMMARIES


def test_the_kept_summaries_are_the_commands_own() -> None:
    """Each command's line in `hoard --help` as kept equals the one its own help gives now — a
    command added, renamed or re-described without `make summaries` fails here."""
    assert SUMMARIES == summaries(), "cli/_summaries.py is out of date: run `make summaries`"
    assert list(SUMMARIES) == list(COMMANDS)


def test_the_root_help_lists_every_command_from_the_summaries() -> None:
    """The root help names every command with its kept line — the first words of each are in
    the output — and loading a command afterwards still gives the real one, not the listing's."""
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}, prog_name="hoard")
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.split())
    for name, line in SUMMARIES.items():  # as rendered: markdown's `code` loses its backticks
        assert f"│ {name} " in words and " ".join(line.replace("`", "").split()[:4]) in words, name
    res = CliRunner().invoke(app, ["put", "--help"], env={"COLUMNS": "200"}, prog_name="hoard")
    assert res.exit_code == 0 and "--name" in res.output, res.output
    assert "hoardfs.cli.store" in sys.modules
    # (each invoke builds its own group: the one that wrote the listing is asked again here)
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="hoard")
    with contextlib.redirect_stdout(io.StringIO()):
        group.get_help(ctx)
    assert isinstance(group, hoardfs.cli.LazyGroup) and not group.listing
    put = group.get_command(ctx, "put")
    assert put is not None and any("--name" in p.opts for p in put.params), put
