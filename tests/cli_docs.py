"""docs/cli.md's command reference, written from the `hoard` command's own help.

Run as `make cli-docs` (`python -m tests.cli_docs`): the part of docs/cli.md between the two
markers below is replaced with every command's usage line, help text and parameters, as
`hoard COMMAND --help` gives them; everything outside the markers is hand-written and kept.
tests/test_cli_docs.py fails when the file differs from what this writes.

The help texts are markdown already (the CLI renders them with rich's markdown mode), so they
go in as they are; a parameter's line is its name and type as `--help` shows them, then its
help with the extras typer adds (default, range, required).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from hoardfs.cli import COMMANDS, app

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BEGIN = "<!-- BEGIN GENERATED: `make cli-docs` writes this part from the commands' help; edit the help, not this -->"
END = "<!-- END GENERATED -->"

#: a command and a context of the click typer carries inside itself (typer._click: no public name)
Command = Any
Context = Any


def _help(cmd: Command) -> str:
    """The command's help as `--help` shows it: dedented, cut at click's `\\f`."""
    return inspect.cleandoc((cmd.help or "").split("\f")[0]).strip()


def _anchor(path: list[str]) -> str:
    """GitHub's anchor of a heading that is just `` `hoard a b` ``."""
    return "-".join(path)


def _params(cmd: Command, ctx: Context) -> list[str]:
    """One markdown block per visible parameter: arguments first, then options, --help left
    out (every command has it)."""
    args: list[str] = []
    opts: list[str] = []
    for p in cmd.get_params(ctx):
        if p.name == "help":
            continue
        record = p.get_help_record(ctx)
        if record is None:  # hidden
            continue
        name, text = record
        line = f"- `{' '.join(name.split())}`" + (f": {' '.join(text.split())}" if text.strip() else "")
        (args if p.param_type_name == "argument" else opts).append(line)
    out: list[str] = []
    if args:
        out += ["Arguments:", "", *args, ""]
    if opts:
        out += ["Options:", "", *opts, ""]
    return out


def _command(cmd: Command, ctx: Context, path: list[str]) -> list[str]:
    """The section of one command, and of each of a group's commands after it."""
    level = "#" * min(len(path), 4)
    usage = " ".join(cmd.get_usage(ctx).removeprefix("Usage:").split())
    lines = [f"{level} `{' '.join(path)}`", "", f"`{usage}`", ""]
    text = _help(cmd)
    if text:
        lines += [text, ""]
    lines += _params(cmd, ctx)
    if isinstance(cmd, TyperGroup):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _command(sub, sub.context_class(sub, info_name=name, parent=ctx), [*path, name])
    return lines


def _index(group: Command, ctx: Context, path: list[str]) -> list[str]:
    """A line per command (a group's commands indented under it): the link and its summary."""
    lines = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        full = [*path, name]
        summary = " ".join(inspect.cleandoc(cmd.short_help or _help(cmd)).split("\n\n")[0].split())
        indent = "  " * (len(full) - 2)
        lines.append(f"{indent}- [`{' '.join(full)}`](#{_anchor(full)}): {summary}")
        if isinstance(cmd, TyperGroup):
            lines += _index(cmd, cmd.context_class(cmd, info_name=name, parent=ctx), full)
    return lines


def render() -> str:
    """The generated part of docs/cli.md, markers included."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    ctx = root.context_class(root, info_name="hoard")
    assert root.list_commands(ctx) == list(COMMANDS)
    lines = [BEGIN, "", "## Every command", "", *_index(root, ctx, ["hoard"]), ""]
    usage = " ".join(root.get_usage(ctx).removeprefix("Usage:").split())
    lines += ["## `hoard`", "", f"`{usage}`", "", _help(root), "", *_params(root, ctx)]
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        assert cmd is not None, name
        lines += _command(cmd, cmd.context_class(cmd, info_name=name, parent=ctx), ["hoard", name])
    while lines[-1] == "":
        lines.pop()
    return "\n".join([*lines, "", END]) + "\n"


def written(text: str) -> str:
    """`text` (docs/cli.md as it is) with its generated part replaced by `render()`'s."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{DOC}: the markers of the generated part are missing; put these two lines where the "
                         f"reference goes:\n{BEGIN}\n{END}")
    return head + render() + tail.removeprefix("\n")


def main() -> int:
    """`make cli-docs`: write docs/cli.md's generated part again; say whether it changed."""
    before = DOC.read_text()
    after = written(before)
    if after == before:
        print(f"{DOC.name} is up to date")
        return 0
    DOC.write_text(after)
    print(f"{DOC.name} written again from the commands' help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
