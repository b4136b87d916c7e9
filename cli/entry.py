"""The `hoard` command's entry point: a Ctrl-C while the CLI's modules are still loading (the
first second or so of a cold start) ends it like one later on — "hoard: interrupted", exit
130 — instead of a traceback from inside an import. It sets the umask of every hoardfs process
(the CLI, workers and their work horses, the GUI, the mount, the private Redis), first."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from hoardfs.base.modes import set_umask  # deferred: a Ctrl-C while it loads is caught here too

        set_umask()  # before anything is made: nothing a hoard process makes is others' to read
        from hoardfs.cli import main as run  # deferred: a Ctrl-C while the CLI loads is caught here
    except KeyboardInterrupt:
        sys.stderr.write("hoard: interrupted\n")
        sys.exit(130)  # ExitCode.INTERRUPTED (hoardfs.base is not loaded yet)
    run()
