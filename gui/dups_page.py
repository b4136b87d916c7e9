"""`/dups`: near-duplicate groups of the hashed images — the groups of `hoard dups` (hoardfs.sql.neardup)
at a threshold the user chooses, largest first, each member a thumbnail linking to its node page,
the members matched as mirror images marked. The grouping reads every hash once (docs/near-dups.md
gives its time at a million); the page shows the first `SHOWN` groups."""

from __future__ import annotations

import psycopg
from nicegui import ui

from hoardfs.gui.browse_page import thumb_img
from hoardfs.gui.context import ctx, page
from hoardfs.gui.frame import frame, read_or_say
from hoardfs.gui.text import label
from hoardfs.sql import neardup

#: groups a page shows (the largest)
SHOWN = 50


def _groups(threshold: int, flips: bool) -> tuple[int, list[list[neardup.Member]]]:
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        hashed = neardup.hashed_count(conn)
        return hashed, neardup.groups(conn, threshold, flips=flips, limit=SHOWN) if hashed else []


def register() -> None:
    @page("/dups")
    async def dups_page(threshold: int = neardup.DEFAULT_THRESHOLD, flips: bool = True) -> None:
        with frame("Near-duplicates"):
            t = min(max(threshold, 0), neardup.MAX_THRESHOLD)
            with ui.row().classes("items-center"):
                box = ui.number("threshold (bits of 64)", value=t, min=0, max=neardup.MAX_THRESHOLD, step=1,
                                format="%d").mark("threshold")
                mirror = ui.checkbox("mirror images", value=flips).mark("flips")
                ui.button("Group", on_click=lambda: ui.navigate.to(
                    f"/dups?threshold={int(box.value or 0)}&flips={'true' if mirror.value else 'false'}"))
            ui.label(f"images whose pHashes differ in at most {t} bits"
                     + (", or one's pHash and the other's mirrored pHash," if flips else "")
                     + " are near-duplicates; a chain of them is one group (`hoard dups`)").classes("text-caption")
            found = await read_or_say(_groups, t, flips)
            if found is None:
                return
            hashed, groups = found
            if not hashed:
                ui.label("no image has been hashed yet: run the action near-dup-hash (Actions, or "
                         "`hoard action run near-dup-hash`)").mark("none")
                return
            ui.label(f"{len(groups)}{'+' if len(groups) == SHOWN else ''} groups among {hashed:,} hashed images"
                     + (f" (the {SHOWN} largest shown)" if len(groups) == SHOWN else "")).mark("summary")
            with ui.column().classes("w-full gap-4").mark("groups"):
                for g in groups:
                    with ui.card().classes("w-full").mark("group"):
                        ui.label(f"{len(g)} images").classes("text-bold")
                        with ui.row().classes("gap-2"):
                            for m in g:
                                with ui.link(target=f"/node/{m.sha256}").classes("column items-center").mark(
                                        "member"):
                                    thumb_img(m.sha256, "w-32 h-32")
                                    label(m.sha256[:16] + ("  (mirror image)" if m.flipped else "")).classes(
                                        "text-caption text-mono")
