"""docs/cli.md's command reference is written from the commands' own help (`make cli-docs`,
tests/cli_docs.py): it must be what the commands say now, and keep the hand-written part."""

from __future__ import annotations

import pytest

from hoardfs.cli import COMMANDS
from tests import cli_docs


def test_docs_cli_md_is_what_make_cli_docs_writes() -> None:
    """docs/cli.md equals what `make cli-docs` writes from the help now: a command or option
    added, renamed or re-described without running it fails here."""
    text = cli_docs.DOC.read_text()
    assert cli_docs.written(text) == text, "docs/cli.md is out of date: run `make cli-docs`"


def test_the_reference_has_every_command_and_option() -> None:
    """Every command and every subcommand of a group has its section, and an option's help and
    default are there as `--help` gives them."""
    ref = cli_docs.render()
    for name in COMMANDS:
        assert f"\n## `hoard {name}`\n" in ref, name
    for sub in ("disks add", "db restore", "action run", "dataset build", "webhooks test"):
        assert f"\n### `hoard {sub}`\n" in ref, sub
    assert "- `--class <str>`: raw or generated (sets the replica target) [default: raw]" in ref
    assert "- `-l, --label <str>`: name for the disk, e.g. wd4t [required]" in ref
    assert "- [`hoard disks add`](#hoard-disks-add): " in ref
    assert "--help" not in ref.replace("`hoard COMMAND --help`", "")


def test_the_hand_written_part_is_kept() -> None:
    """What lies outside the markers is kept byte for byte; what lies between them is replaced;
    a file without the markers is refused naming them."""
    text = f"# head\n\nby hand\n\n{cli_docs.BEGIN}\nno longer what the help says\n{cli_docs.END}\n\ntail by hand\n"
    out = cli_docs.written(text)
    assert out.startswith("# head\n\nby hand\n\n" + cli_docs.BEGIN + "\n")
    assert out.endswith(f"{cli_docs.END}\n\ntail by hand\n") and "no longer what the help says" not in out
    assert cli_docs.written(out) == out
    with pytest.raises(SystemExit, match="markers"):
        cli_docs.written("# no markers\n")
