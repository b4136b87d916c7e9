"""The `hoard` command line: typer + rich, one-line errors, documented exit codes.

The top layer (docs/ARCHITECTURE.md, Layers): commands parse, call downward and print. Each
command lives in a module of its own (or of its group), imported only when that command runs
(`COMMANDS`), so a module imports what its commands use at its top and `hoard put` never loads
NiceGUI, RQ or the database client. `hoard --help` loads none of them: it lists each command
with the summary kept for it in `hoardfs.cli._summaries` (written from the commands themselves by
`make summaries`; a test fails when one is out of date) — loading them all took
about 4 s, most of it NiceGUI's.
"""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import inspect
import logging
import os
import pwd
import shlex
import sys
import traceback
from pathlib import Path
from typing import Annotated, Final, cast

import lmdb
import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from hoardfs.base import config as config_mod
from hoardfs.base import logs
from hoardfs.base.errors import (
    ExitCode,
    HoardError,
    conflict_line,
    db_disk_full,
    db_disk_full_line,
    first_line,
    write_conflict,
)
from hoardfs.base.files import PlantedLink
from hoardfs.cli import _summaries
from hoardfs.cli._common import OutputFailed, err, guard_stdout, out, state
from hoardfs.cli._summaries import SUMMARIES
from hoardfs.fsd.core.index import index_error


def _flag_type(self, ctx):  # a flag takes no value: show no `<bool>` type in --help
    return None if self.is_bool_flag else _typer_option_type(self, ctx)


_typer_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]  # typer has no hook for this

#: every command, in the order --help lists them: name → (its module under hoardfs.cli, the
#: command function or the group's typer app there)
COMMANDS: dict[str, tuple[str, str]] = {
    "put": ("store", "put"), "get": ("store", "get"), "replicate": ("store", "replicate"),
    "info": ("find", "info"), "ls": ("find", "ls"), "select": ("find", "select"),
    "verify": ("verify", "verify"), "check": ("verify", "check"), "rebuild": ("rebuild", "rebuild"),
    "ingest": ("ingest", "ingest"), "stage": ("outputs", "stage"), "export": ("outputs", "export"),
    "mount": ("mount", "mount"), "umount": ("mount", "umount"), "delete": ("delete", "delete"),
    "gc": ("gc", "gc"), "gui": ("gui", "gui"), "init": ("init", "init"), "health": ("health", "health"),
    "worker": ("worker", "worker"), "demo": ("demo", "demo"),
    "services": ("services", "app"), "fixtures": ("fixtures", "app"), "disks": ("disks", "app"),
    "db": ("db", "app"), "index": ("index", "app"), "zones": ("zones", "app"), "users": ("users", "app"),
    "tokens": ("tokens", "app"),
    "label": ("label", "app"), "view": ("mount", "view_app"), "action": ("action", "app"),
    "pipeline": ("pipeline", "app"), "dataset": ("dataset", "app"), "labelstudio": ("labelstudio", "app"),
    "events": ("events", "events"), "webhooks": ("events", "app"), "dups": ("dups", "dups"),
    "search": ("search", "search"),
    "install": ("install", "install"), "uninstall": ("install", "uninstall"),
}

#: how every command's help is written: paragraphs reflowed, `code` shown as code
MARKUP: Final = "markdown"


class LazyGroup(TyperGroup):
    """The root group: a command's module is imported when the command is asked for — but
    not to list it in `hoard --help`, which shows the summary kept for it (SUMMARIES)."""

    listing = False  # True while the root's own help is written

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]  # typer's own Context
        return list(COMMANDS)

    def format_help(self, ctx: typer.Context, formatter: object) -> None:  # type: ignore[override]
        self.listing = True
        try:
            super().format_help(ctx, formatter)  # type: ignore[arg-type]  # typer's formatter
        finally:
            self.listing = False

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:  # type: ignore[override]
        if self.listing and cmd_name not in self.commands and cmd_name in SUMMARIES:
            return TyperCommand(cmd_name, help=SUMMARIES[cmd_name])  # only its line in the list
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load(cmd_name)
        # what `load` put there: typer builds its own command classes
        return cast("TyperCommand | TyperGroup | None", self.commands.get(cmd_name))


def summaries() -> dict[str, str]:
    """Every command's line in `hoard --help` — the first paragraph of its short help, else of
    its help, as typer lists it — each command loaded to read it (what `hoardfs.cli._summaries` keeps)."""
    return {name: inspect.cleandoc(cmd.short_help or cmd.help or "").split("\n\n")[0]
            for name in COMMANDS for cmd in [load(name)]}


def write_summaries() -> None:
    """`make summaries`: write `cli/_summaries.py` again from the commands' own help."""
    import pprint  # deferred: only `make summaries` writes the file

    path = Path(_summaries.__file__)
    head, _, rest = path.read_text().partition("SUMMARIES: dict[str, str] = ")
    body = pprint.pformat(summaries(), width=110, sort_dicts=False)
    path.write_text(f"{head}SUMMARIES: dict[str, str] = {body}\n")


def load(name: str) -> TyperCommand | TyperGroup:
    """The click command of `name`, its module imported now."""
    module, attr = COMMANDS[name]
    target = getattr(importlib.import_module(f"hoardfs.cli.{module}"), attr)
    one = typer.Typer(rich_markup_mode=MARKUP)
    if isinstance(target, typer.Typer):
        one.add_typer(target, name=name)
    else:
        one.command(name)(target)
    return cast("TyperCommand | TyperGroup", typer.main.get_group(one).commands[name])  # typer builds its own


app = typer.Typer(
    name="hoard",
    cls=LazyGroup,
    help="hoardfs: a content-addressed data-asset store on unequal second-hand disks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=MARKUP,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", "-c", envvar="HOARD_CONFIG",
                                                  help="hoard.toml to use (default ./hoard.toml)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug messages")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=lambda v: _print_version(v),
                                          help="print the version and exit")] = False,
) -> None:
    logs.setup(logging.DEBUG if verbose else logging.WARNING)
    state(ctx).config_path = config


#: what root may run on a store another account owns: what only root can do (the install, the
#: SMART readings of hoard-smart.service, replacing the system cluster's data directory)
AS_ROOT: Final = {("install",), ("uninstall",), ("disks", "smart"), ("db", "restore")}


def _refuse_root_on_anothers_store(argv: list[str] | None) -> None:
    """Root refused on a store whose index directory another account owns (`hoard install`'s
    `hoard` user): every file a command writes there — marks, shards, locks, the health cache —
    would be root's, and the services, which run as that account, could no longer write them.
    The line names the command to run instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0 or {"--help", "-h", "--version"} & set(args):
        return
    explicit: str | None = None
    words: list[str] = []
    i = 0
    while i < len(args) and len(words) < 2:
        if args[i] in ("--config", "-c") and not words:
            explicit, i = (args[i + 1] if i + 1 < len(args) else None), i + 2
            continue
        if args[i].startswith("--config=") and not words:
            explicit = args[i].split("=", 1)[1]
        elif not args[i].startswith("-"):
            words.append(args[i])
        i += 1
    if not words or tuple(words[:1]) in AS_ROOT or tuple(words[:2]) in AS_ROOT:
        return
    try:
        index_dir = config_mod.load(explicit).index_dir
        owner = index_dir.stat().st_uid
    except (HoardError, OSError, ValueError):
        return  # no store yet, or a config the command itself will name
    if owner == 0:
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = f"#{owner}"
    me = [sys.executable, "-m", "hoardfs"] if sys.argv[0].endswith("__main__.py") else sys.argv[:1]
    again = shlex.join(["runuser", "-u", name, "--", *me, *args])
    raise HoardError(f"this store is {name}'s (its index {index_dir} is): run as root, hoard would leave files "
                     f"there that {name}'s services cannot write; run it as {name}: `{again}`", ExitCode.USAGE)


def _print_version(wanted: bool) -> None:
    if wanted:
        out.print(f"hoard (hoardfs) {importlib.metadata.version('hoardfs')}", markup=False)
        raise typer.Exit()


def _service_down(e: Exception) -> HoardError | None:
    """One line for PostgreSQL or Redis being unreachable, wherever in a command it showed."""
    # neither client is imported here: an error of one comes only from a command that loaded it
    # (the mount daemon loads neither: ~15 MiB of resident memory each)
    psycopg, redis = sys.modules.get("psycopg"), sys.modules.get("redis")
    if psycopg is not None and isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        return HoardError(f"the database's schema is older than this hoardfs ({first_line(e)}); `hoard db migrate` "
                          "brings it up to date — nothing was changed after this point", ExitCode.UNAVAILABLE)
    if write_conflict(e):
        return HoardError(conflict_line(e), ExitCode.CONFLICT)
    if db_disk_full(e):
        return HoardError(db_disk_full_line(e), ExitCode.NO_SPACE)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HoardError(f"{e.filename or 'a file the command writes'}: {e.strerror} — its file system (or quota) is "
                          "full; free space there (`hoard health` names what fills the SSD), then run the same "
                          "command again", ExitCode.NO_SPACE)
    if psycopg is not None and isinstance(e, psycopg.OperationalError):
        first = first_line(e)
        return HoardError(f"cannot reach the database ({first}); start it with `hoard services up` or fix "
                          "database_url — nothing was changed after this point", ExitCode.UNAVAILABLE)
    if redis is not None and isinstance(e, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return HoardError(f"cannot reach Redis ({str(e).strip()}); start it with `hoard services up` or fix "
                          "redis_url", ExitCode.UNAVAILABLE)
    return None


def _index_path(argv: list[str] | None) -> str:
    """The index directory of the config this run uses (only to name it in a message)."""
    args = list(sys.argv[1:] if argv is None else argv)
    explicit = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")), None)
    try:
        return str(config_mod.load(explicit).index_dir)
    except Exception:  # a message without the path is still a message
        return "(the index)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line for user errors, a traceback only for bugs.

    Typer (standalone mode) answers usage errors itself with exit code 2.
    """
    guard_stdout()  # click would turn a closed stdout (EPIPE) into exit 1, "a bug" in our table
    try:
        try:
            _refuse_root_on_anothers_store(argv)
            app(args=argv, prog_name="hoard")
        except lmdb.Error as e:  # the SSD under the index is full or failing: a condition, not a bug
            raise index_error(_index_path(argv), e) from None
        except Exception as e:  # a server that went away is a condition to report, not a bug
            down = _service_down(e)
            if down is None:
                raise
            raise down from None
    except OutputFailed as e:
        if e.message:
            err.print(f"hoard: error: {e.message}", markup=False)
        sys.exit(int(e.exit_code))
    except HoardError as e:
        err.print(f"[bold red]hoard: error:[/] {escape(e.message)}", soft_wrap=True)
        sys.exit(int(e.exit_code))
    except PlantedLink as e:  # (any command: a store or zone path through another account's link)
        err.print(f"hoard: error: {e.strerror}", markup=False, soft_wrap=True)
        sys.exit(int(ExitCode.USAGE))
    except KeyboardInterrupt:
        err.print("hoard: interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:
        traceback.print_exc()
        err.print("[bold red]hoard: internal error[/] (a bug: please report the traceback above)")
        sys.exit(ExitCode.BUG)
