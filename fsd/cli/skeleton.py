"""Commands of the skeleton whose implementation lands with a later issue.

Each exists so `hoard --help` shows the whole tool; running one says which issue brings it
and exits with ExitCode.NOT_BUILT (9). Each issue replaces its entries here with a module.
"""

from __future__ import annotations

import typer

from fsd.base.errors import NotBuilt

PENDING: dict[str, tuple[str, str]] = {}  # name → (help, the issue that brings it); none left


def register(app: typer.Typer) -> None:
    for name, (help_text, issue) in PENDING.items():
        app.command(name, help=f"{help_text}. [dim](arrives with {issue})[/]",
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_pending(name, issue))


def _pending(name: str, issue: str):
    def command(ctx: typer.Context) -> None:
        raise NotBuilt(f"`hoard {name}` is not built yet; it arrives with {issue}")

    command.__name__ = f"cmd_{name}"
    return command
