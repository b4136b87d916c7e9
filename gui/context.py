"""The one GUI process's shared objects: its settings, the snapshot cache, the login limiter
and gate, the sign-in tickets, the device cookies' key; `in_thread`, the one way the GUI runs
blocking work off the event loop, and `page`, the one way it registers a page (which ends
quietly when that work finds the app stopping).

Set once by `hoardfs.gui.app.build`; pages and routes read it with `ctx()`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from fastapi.responses import PlainTextResponse
from nicegui import run, ui

from hoardfs.base.config import Settings
from hoardfs.gui.devices import Devices
from hoardfs.gui.gate import LoginGate
from hoardfs.gui.state import Cache, Snapshot
from hoardfs.gui.tickets import Tickets
from hoardfs.jobs.users import LoginLimiter


@dataclass
class Context:
    cfg: Settings
    cache: Cache
    limiter: LoginLimiter
    gate: LoginGate = field(default_factory=LoginGate)
    tickets: Tickets = field(default_factory=Tickets)
    #: signs and recognises device cookies (hoardfs.gui.app.build gives it the service's key)
    devices: Devices = field(default_factory=lambda: Devices(secrets.token_urlsafe(32)))
    #: the usage history as last read (time.monotonic(), (usage points, SMART points)), shared
    #: by /storage's views
    history: tuple[float, tuple[list[Any], list[Any]]] | None = None


_current: Context | None = None


def ctx() -> Context:
    assert _current is not None, "hoardfs.gui.app.build(cfg) sets up the GUI first"
    return _current


def set_context(c: Context) -> None:
    global _current
    _current = c


P = ParamSpec("P")
R = TypeVar("R")


class AppStopping(asyncio.CancelledError):
    """NiceGUI did not run a call `in_thread` was given: the app is stopping (or the call was
    cancelled). A CancelledError, as NiceGUI 4.0 will raise itself there: a timer or an event
    handler it reaches ends quietly (NiceGUI's own handling of a cancelled task), and a page
    registered with `page` ends with what it built. An HTTP route answers `stopping()`:
    Starlette's middleware turns a CancelledError into an error."""


async def in_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(*args, **kwargs)` in NiceGUI's thread pool (`run.io_bound`), and its answer as it is
    — None too, when that is what `fn` returned. Where run.io_bound answers None without having
    run it (the app stopping), raises AppStopping: the GUI calls run.io_bound only here, so no
    page mistakes that None for an answer or has to check for it."""
    boxed = await run.io_bound(_boxed, fn, args, kwargs)
    if boxed is None:
        raise AppStopping(f"{getattr(fn, '__qualname__', fn)} was not run: the GUI is stopping")
    return boxed[0]


def _boxed(fn: Callable[..., R], args: tuple, kwargs: dict) -> tuple[R]:
    return (fn(*args, **kwargs),)


def page(path: str, **kwargs: Any) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """`ui.page(path, **kwargs)`, for every page of the GUI (tests/test_layering.py): a page
    function awaiting `in_thread` while the app stops ends there, quietly, with what it built
    (NiceGUI would log a cancelled page build)."""
    def register(fn: Callable[P, Any]) -> Callable[P, Any]:
        if not inspect.iscoroutinefunction(fn):  # awaits nothing: nothing to end early
            return ui.page(path, **kwargs)(fn)

        @functools.wraps(fn)  # (NiceGUI and FastAPI read the page's parameters through it)
        async def quiet(*args: P.args, **kw: P.kwargs) -> Any:
            try:
                return await fn(*args, **kw)
            except AppStopping:
                return None

        return ui.page(path, **kwargs)(quiet)
    return register


async def snapshot() -> Snapshot:
    """The last snapshot, or one gathered now (off the event loop) when the background timer
    has not made one yet: a route opened right after the GUI started. (A page: `page_snapshot`.)"""
    c = ctx()
    return c.cache.snapshot or await in_thread(c.cache.first)


async def page_snapshot() -> Snapshot:
    """`snapshot()` for a page. When there is none yet — the GUI just started, and the first
    refresh takes seconds on a big store (`hoard health` over every disk, the database's
    counts) — the page is answered at once with a line saying so and filled in over its
    websocket when the snapshot is ready, instead of failing NiceGUI's response_timeout (3 s)."""
    if (snap := ctx().cache.snapshot) is not None:
        return snap
    note = ui.label("Gathering the store's status (the first time since the GUI started)…").classes("text-body2")
    await ui.context.client.connected()
    try:
        return await snapshot()
    finally:
        note.delete()


def stopping() -> PlainTextResponse:
    """What an HTTP route answers when `in_thread` raised AppStopping."""
    return PlainTextResponse("the GUI is stopping; try again when it is back", status_code=503)
