"""The one GUI process's shared objects: its settings, the snapshot cache, the login limiter,
the sign-in tickets.

Set once by `gui.app.build`; pages and routes read it with `ctx()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsd.base.config import Settings
from gui.state import Cache
from gui.tickets import Tickets
from jobs.users import LoginLimiter


@dataclass
class Context:
    cfg: Settings
    cache: Cache
    limiter: LoginLimiter
    tickets: Tickets = field(default_factory=Tickets)
    #: the usage history as last read (time.monotonic(), points), shared by /storage's views
    history: tuple[float, list[Any]] | None = None


_current: Context | None = None


def ctx() -> Context:
    assert _current is not None, "gui.app.build(cfg) sets up the GUI first"
    return _current


def set_context(c: Context) -> None:
    global _current
    _current = c
