"""`hoard users`: who may sign in to `hoard gui` (argon2-hashed passwords in gui.users_file)."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import out, print_rows, state
from hoardfs.jobs import users

app = typer.Typer(help="Who may sign in to `hoard gui`: add, passwd, rm, list, hash.", no_args_is_help=True)


def _password(from_stdin: bool, confirm: bool = True) -> str:
    """The new password: one line of stdin with --password-stdin, else asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise HoardError("no terminal to ask for the password; pipe it in with --password-stdin", ExitCode.USAGE)
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        raise HoardError("the two passwords differ; nothing was changed", ExitCode.USAGE)
    return first


StdinOpt = Annotated[bool, typer.Option("--password-stdin", help="read the password from one line of stdin")]


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin")] = "viewer",
    password_stdin: StdinOpt = False,
) -> None:
    """Add a user (argon2-hashed password, kept in gui.users_file)."""
    cfg = state(ctx).settings
    if role not in users.ROLES:  # before asking for a password
        raise HoardError(f"role {role!r} is not one of {', '.join(users.ROLES)}", ExitCode.USAGE)
    users.add(cfg, name, role, _password(password_stdin))
    out.print(f"user {name} added ({role}); sign in at `hoard gui`")


@app.command("passwd")
def passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="login name")],
    password_stdin: StdinOpt = False,
) -> None:
    """Set a user's password."""
    cfg = state(ctx).settings
    if name not in users.users(cfg):
        raise HoardError(f"no user {name}; `hoard users list` shows them", ExitCode.USAGE)
    users.passwd(cfg, name, _password(password_stdin))
    out.print(f"password of {name} set")


@app.command("rm")
def rm(ctx: typer.Context, name: Annotated[str, typer.Argument(help="login name")]) -> None:
    """Remove a user (their open sessions end at the next page they open)."""
    users.remove(state(ctx).settings, name)
    out.print(f"user {name} removed")


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The users and their roles."""
    found = sorted(users.users(state(ctx).settings).values(), key=lambda u: u.name)
    rows = [{"name": u.name, "role": u.role, "from": "hoard.toml" if u.from_config else "users file"} for u in found]
    print_rows(rows, as_json, "no users; `hoard users add NAME --role admin` adds the first",
               lambda r: f"{r['name']:<20} {r['role']:<9} ({r['from']})")


@app.command("hash")
def hash_(password_stdin: StdinOpt = False) -> None:
    """Print an argon2 hash of a password, for [[gui.users]] password_hash in hoard.toml."""
    out.print(users.hash_password(_password(password_stdin)), markup=False)
