"""The `hoard` command: its root (options, one-line errors, exit codes, the table of commands)
is hoardfs.cli.root, one module per command beside it.

This package's __init__ imports nothing: `hoard`'s entry point (hoardfs.cli.entry) is a module
of this package, and it must catch a Ctrl-C that lands while the CLI's modules load — so the
root's names (`app`, `main`, `COMMANDS`, …) load on their first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib  # deferred: the root loads typer, rich and the commands' table

    return getattr(importlib.import_module("hoardfs.cli.root"), name)
