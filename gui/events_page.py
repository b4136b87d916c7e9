"""`/events`: what happened (batches ingested, runs finished or failed, gates waiting, datasets
built, disks failed — hoardfs.sql.events, kept 90 days), who hears of it (the [[webhooks]] of hoard.toml,
by name or scheme://host:port: never the secret, nor the URL's path, which may hold a token), and
each delivery's tries — state, the receiver's last answer or the error that kept it from
answering, when the next try is due. The same rows as `hoard events` and `hoard webhooks
deliveries`. Subjects, details and receivers' answers come from outside: shown as text
(hoardfs.gui.text), never markup."""

from __future__ import annotations

import json

import psycopg
from nicegui import ui

from hoardfs.gui.context import ctx, page
from hoardfs.gui.frame import frame, read_or_say
from hoardfs.gui.text import label
from hoardfs.sql import events as sql_events

#: rows each table shows (the newest)
SHOWN = 100
STATE_COLOR = {"delivered": "text-positive", "pending": "text-primary", "failed": "text-negative"}


def _rows() -> tuple[list[sql_events.Event], list[sql_events.Delivery]]:
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        return sql_events.events(conn, SHOWN), sql_events.deliveries(conn, SHOWN)


def register() -> None:
    @page("/events")
    async def events_page() -> None:
        with frame("Events and webhooks"):
            ui.label("Webhooks").classes("text-h6")
            hooks = ctx().cfg.webhooks
            if not hooks:
                ui.label("none configured: add a [[webhooks]] table (url, events, secret) to hoard.toml "
                         "(docs/config.md)").classes("text-caption")
            with ui.column().classes("gap-0").mark("webhooks"):
                for w in hooks:
                    label(w.summary)
            rows = await read_or_say(_rows)
            if rows is None:
                return
            evs, dels = rows
            ui.label(f"Deliveries (newest {SHOWN})").classes("text-h6 q-mt-md")
            if not dels:
                ui.label("none yet").classes("text-caption")
            else:
                with ui.grid(columns=7).classes("gap-x-6 gap-y-1").mark("deliveries"):
                    for head in ("#", "state", "event", "webhook", "tries", "last answer", "next try"):
                        ui.label(head).classes("text-bold")
                    for d in dels:
                        ui.label(str(d.delivery_id))
                        ui.label(d.state).classes(STATE_COLOR.get(d.state, ""))
                        label(f"{d.event} {d.subject}")
                        label(d.webhook)
                        ui.label(f"{d.attempts}/{d.max_tries}")
                        label((d.last_error or f"HTTP {d.last_status}") if d.attempts else "not tried yet").classes(
                            "text-caption")
                        ui.label(f"{d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.next_attempt_at else "-")
            ui.label(f"Events (newest {SHOWN}, kept 90 days)").classes("text-h6 q-mt-md")
            if not evs:
                ui.label("none yet").classes("text-caption")
                return
            with ui.grid(columns=4).classes("gap-x-6 gap-y-1").mark("events"):
                for head in ("when", "event", "subject", "detail"):
                    ui.label(head).classes("text-bold")
                for ev in evs:
                    ui.label(f"{ev.at:%Y-%m-%d %H:%M:%S}")
                    ui.label(ev.name)
                    label(ev.subject)
                    label(json.dumps(ev.detail, sort_keys=True, ensure_ascii=False)[:300]).classes(
                        "text-caption text-mono")
