"""`/`: the overview — what the store holds, what runs, what needs a person."""

from __future__ import annotations

from nicegui import ui

from hoardfs.base.units import fmt_bytes
from hoardfs.gui import text
from hoardfs.gui.context import ctx, page, page_snapshot
from hoardfs.gui.frame import age, frame, live


def _body() -> None:
    snap = ctx().cache.get()
    h = snap.health
    store = h["store"]
    with ui.row().classes("w-full"):
        for label, value in (
                ("objects", f"{store.get('objects', '-'):,}" if store.get("ok") else "store not readable"),
                ("stored", fmt_bytes(sum(d.get("used_bytes") or 0 for d in h["disks"]))),
                ("disks", f"{sum(d.get('state') == 'active' for d in h['disks'])} of {len(h['disks'])} active"),
                ("jobs running", str(sum(c.get("started", 0) for c in snap.jobs.values()))),
                ("jobs queued", str(sum(c.get("queued", 0) for c in snap.jobs.values()))),
                ("jobs failed", str(sum(c.get("failed", 0) for c in snap.jobs.values())))):
            with ui.card().classes("q-pa-sm"):
                ui.label(label).classes("text-caption")
                ui.label(value).classes("text-h6")
    # the words of `hoard health`: "All good" only with neither a problem nor a warning
    ui.label("Needs attention" if h["problems"] else "Worth a look" if h.get("warnings") else "All good"
             ).classes("text-h6 q-mt-md")
    for p in h["problems"]:
        text.label(p).classes("text-body2")  # a problem line can name a batch directory (scraped)
    for w in h.get("warnings", []):  # (a drive losing sectors: smartctl's words, as text)
        text.label(f"warning: {w}").classes("text-body2 text-warning")
    ui.label(f"figures from {age(snap.age_s)} (gathered in {snap.took_s:.2f} s)").classes("text-caption q-mt-md")


def register() -> None:
    @page("/")
    async def overview() -> None:
        await page_snapshot()
        with frame("Overview"):
            live(_body)
