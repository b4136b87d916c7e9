"""The frame of every page: the header with the navigation and the user, and the banner of
what is on fire (failed or missing disks, zones past warn, failed batches, stale backups)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from nicegui import ui

from hoardfs.base.errors import HoardError, first_line
from hoardfs.base.units import fmt_bytes
from hoardfs.gui.auth import SignedIn, current_user
from hoardfs.gui.context import ctx, in_thread
from hoardfs.gui.text import label, shown

NAV = (("Overview", "/"), ("Storage", "/storage"), ("Runs", "/runs"), ("Launch", "/launch"), ("Actions", "/actions"),
       ("Batches", "/batches"), ("Assets", "/assets"), ("Near-dups", "/dups"), ("Pipelines", "/pipelines"),
       ("Datasets", "/datasets"), ("Events", "/events"), ("Users", "/users"), ("RQ", "/rq/"),
       ("Metrics", "/metrics"))


def live(render: Callable[[], None]) -> None:
    """Render `render` here, and again every `gui.refresh_s` from the latest snapshot — for
    this page only (a refreshable made per page, so a closed page's timer goes with it)."""
    part = ui.refreshable(render)
    part()
    ui.timer(ctx().cfg.gui.refresh_s, part.refresh)


def banner() -> None:
    snap = ctx().cache.snapshot
    if snap is None:
        return
    for b in snap.banners:
        color = "bg-red-7" if b.severity == "error" else "bg-orange-8"
        with ui.row().classes(f"w-full {color} text-white q-px-md q-py-xs items-center no-wrap").props(
                'data-testid="banner"'):
            ui.icon("error" if b.severity == "error" else "warning")
            ui.link(shown(b.text), b.link).classes("text-white")


@contextlib.contextmanager
def frame(title: str) -> Iterator[SignedIn]:
    """Header, banner and a content column; yields the signed-in user (the middleware let
    only signed-in requests reach a page)."""
    user = current_user()
    assert user is not None
    ui.page_title(f"hoardfs · {title}")
    with ui.header().classes("items-center q-px-md q-py-xs bg-blue-grey-9"):
        ui.label("hoardfs").classes("text-h6 q-mr-lg")
        for label, href in NAV:
            if href == "/users" and not user.may("users"):
                continue
            ui.link(label, href).classes("text-white q-mr-md")
        ui.space()
        ui.label(f"{user.name} ({user.role})").classes("q-mr-md")
        # a form POST: signing out acts, and no GET does (hoardfs.gui.auth's /logout)
        with ui.element("form").props('method="post" action="/logout"'):
            ui.button("Sign out").props("type=submit flat dense no-caps color=white").mark("sign-out")
    live(banner)
    with ui.column().classes("w-full q-pa-md"):
        ui.label(title).classes("text-h5")
        yield user


def db_down(e: Exception) -> None:
    """The line a page shows where its database read failed."""
    ui.label(f"the database does not answer: {first_line(e)}").classes("text-negative")


async def read_or_say(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` (a database read) in a thread, or None after a line saying why not: the
    database does not answer, or a refusal (a table missing: `hoard db migrate`) shown as text."""
    try:
        return await in_thread(fn, *args)
    except psycopg.Error as e:
        db_down(e)
    except HoardError as e:
        label(e.message).classes("text-negative")
    return None


def progress_text(p: dict[str, Any]) -> str:
    """A job's published figures (`hoardfs.jobs.progress`) in one line: `1.20 GiB of 3.40 GiB (35%),
    80.1 MiB/s, about 28 s left`, or how it ended."""
    counted = p.get("unit", "bytes") != "bytes"

    def amount(n: float | None) -> str:
        return "?" if n is None else f"{n:,.0f} {p['unit']}" if counted else fmt_bytes(int(n))

    done, total, rate = p.get("done", 0), p.get("total"), p.get("rate") or 0
    text = amount(done) + (f" of {amount(total)} ({min(1.0, done / total):.0%})" if total else "")
    text += f", {rate:.1f}/s" if counted else f", {fmt_bytes(int(rate))}/s"
    if p.get("state") == "running" and p.get("eta_s") is not None:
        text += f", about {p['eta_s']:.0f} s left"
    elif p.get("state") in ("done", "failed"):
        text += f", {'finished' if p['state'] == 'done' else 'stopped'} after {p.get('elapsed_s', 0):.0f} s"
    return text


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


#: the last page number a listing takes from a URL (a larger one is that page: past the end)
MAX_PAGE = 1_000_000


def page_number(page: int) -> int:
    """A `page` query parameter as a listing uses it: at least 1, at most MAX_PAGE (a
    hand-typed -5 or 10**20 is no database error)."""
    return min(max(1, page), MAX_PAGE)
