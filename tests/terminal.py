"""Child processes that a test interrupts as a person would, with Ctrl-C."""
from __future__ import annotations

import signal


def as_foreground() -> None:
    """`preexec_fn` for a child a test sends SIGINT to: the default disposition a terminal's
    foreground job has. A test run started in the background (`make test &`, a CI runner's
    non-interactive shell) ignores SIGINT, and an ignored signal stays ignored across exec —
    Python then installs no KeyboardInterrupt handler and the child never sees the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
