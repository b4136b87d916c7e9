"""`/pipelines`: the pipelines defined in the database (their stages and how far their batches
are), and the stage (3C) and export (3D) outputs — sealed, running, incomplete — with their
runs. A pipeline's stages are actions: each shows the action's name and links its page
(/actions/NAME); they are defined and advanced with `hoard pipeline define|advance`
(docs/actions.md). Datasets (UA_3) are not built yet."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
from nicegui import ui

from hoardfs.base.units import fmt_bytes
from hoardfs.gui.context import ctx, in_thread, page, page_snapshot
from hoardfs.gui.frame import db_down, frame
from hoardfs.gui.text import shown
from hoardfs.sql import browse


def _pipelines() -> list[dict]:
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        return browse.pipelines(conn)


def register() -> None:
    @page("/pipelines")
    async def pipelines_page() -> None:
        snap = await page_snapshot()
        with frame("Pipelines and outputs"):
            ui.label("Pipelines").classes("text-h6")
            try:
                rows = await in_thread(_pipelines)
            except psycopg.Error as e:
                db_down(e)
                rows = []
            if not rows:
                ui.label("no pipeline is defined yet (`hoard pipeline define NAME ACTION…`)").classes("text-caption")
            for p in rows:
                with ui.card().classes("w-full"):
                    ui.label(p["name"]).classes("text-bold")
                    stages = p["stages"] or []
                    with ui.row().classes("items-center"):
                        for i, name in enumerate(stages):  # each stage is an action: its name, linking its page
                            done = sum(n for pos, n in p["done"].items() if int(pos) >= i)
                            with ui.link(target=f"/actions/{quote(name, safe='')}").mark(f"stage-{i}"):
                                ui.badge(shown(f"{i}. {name}: {done} batches done"), color="primary")
                    ui.label(f"{p['done'].get('-1', 0)} batches not started").classes("text-caption")
            runs = {(r.kind, r.id): r for r in snap.runs if r.kind in ("stage", "export")}
            for zone, title in (("3C", "Stages (zone 3C, worker scratch)"), ("3D", "Dataset exports (zone 3D)")):
                z = snap.health["zones"].get(zone, {})
                ui.label(f"{title}: {z.get('used_ratio', 0):.0%} of {fmt_bytes(z.get('quota_bytes'))}").classes(
                    "text-h6 q-mt-md")
                outs = z.get("outputs", [])
                if not outs:
                    ui.label("none").classes("text-caption")
                    continue
                with ui.grid(columns=5).classes("gap-x-6 gap-y-1"):
                    for head in ("output", "state", "size", "sealed / age", "run"):
                        ui.label(head).classes("text-bold")
                    for o in outs:
                        kind = "stage" if zone == "3C" else "export"
                        r = runs.get((kind, o["id"]))
                        ui.label(o["id"])
                        ui.label(o["state"])
                        ui.label(fmt_bytes(o["bytes"]))
                        ui.label(o.get("sealed") or f"{o.get('age_s', 0) / 3600:.1f} h")
                        if r:
                            ui.link(r.status, f"/runs/{kind}/{o['id']}")
                        else:
                            ui.label("-")
            ui.label(f"{len([r for r in snap.runs if r.kind in ('stage', 'export')])} stage/export runs recorded; "
                     "launch one on the Launch page").classes("text-caption q-mt-md")
