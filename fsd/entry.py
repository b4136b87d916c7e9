"""The `hoard` command's entry point: a Ctrl-C while the CLI's modules are still loading (the
first second or so of a cold start) ends it like one later on — "hoard: interrupted", exit
130 — instead of a traceback from inside an import. It sets the umask of every hoardfs process
(the CLI, workers and their work horses, the GUI, the mount, the private Redis), first."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.umask(0o027)  # fsd.base.modes.UMASK (not loaded yet): nothing hoard makes is others' to read
    try:
        from fsd.cli import main as run  # deferred: a Ctrl-C while the CLI loads is caught here
    except KeyboardInterrupt:
        sys.stderr.write("hoard: interrupted\n")
        sys.exit(130)  # ExitCode.INTERRUPTED (fsd.base is not loaded yet)
    run()
