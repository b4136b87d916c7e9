"""`hoard events` (what happened: batches ingested, runs finished or failed, gates waiting,
datasets built, disks failed) and `hoard webhooks list|deliveries|requeue` (who hears of them,
and each delivery's tries) — hoardfs.jobs.events, hoardfs.sql.events. Values from outside (subjects, receivers'
answers) are printed as text, never markup; a webhook's secret and its URL's path never."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from hoardfs.base.config import EVENT_NAMES
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import database, out, state
from hoardfs.jobs import events as events_mod
from hoardfs.sql import events as sql_events

AsJson = Annotated[bool, typer.Option("--json", help="one JSON document")]
Limit = Annotated[int, typer.Option("--limit", min=1, max=100_000, help="the newest this many")]

app = typer.Typer(help="Webhooks: the configured ones, each delivery's tries, and queueing the overdue again.",
                  no_args_is_help=True)


def events(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option("--name", help="only events of this name: " + ", ".join(EVENT_NAMES))
                    ] = None,
    limit: Limit = 50,
    as_json: AsJson = False,
) -> None:
    """The newest events, newest first: batch_ingested, run_finished, run_failed, gate_waiting,
    dataset_built, disk_failed (kept 90 days)."""
    _allowed("--name", name, EVENT_NAMES)
    with database(state(ctx).settings, needed_for="events are kept in the database") as conn:
        rows = sql_events.events(conn, limit, name)
    _show("events", rows, as_json, "no events yet (they are recorded as batches are ingested, runs end, datasets "
          "are built, disks fail)", lambda r: f"{r.at:%Y-%m-%d %H:%M:%S%z}  #{r.event_id:<6} {r.name:<15} {r.subject}")


def _allowed(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise HoardError(f"{flag} {value}: allowed: {', '.join(allowed)}", ExitCode.USAGE)


def _show(key: str, rows: Sequence[Any], as_json: bool, empty: str, line: Callable[[Any], str]) -> None:
    """`rows` (models or dicts) as one JSON document ({key: [...]}) or one line each (`empty` when
    there is none); never markup: their values come from outside."""
    if as_json:
        out.print(json.dumps({key: [r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in rows]}),
                  markup=False)
        return
    if not rows:
        out.print(empty, markup=False)
    for r in rows:
        out.print(line(r), markup=False)


@app.command("list")
def list_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The [[webhooks]] of hoard.toml: name (or scheme://host:port), events, tries, backoff, timeout —
    never the secret, nor the URL's path (it may hold a token)."""
    hooks = state(ctx).settings.webhooks
    _show("webhooks", [{"webhook": w.display, "events": w.events, "tries": w.tries, "backoff_s": w.backoff_s,
                        "timeout_s": w.timeout_s, "summary": w.summary} for w in hooks], as_json,
          "no webhooks; add a [[webhooks]] table (url, events, secret) to hoard.toml — docs/config.md",
          lambda h: h["summary"])


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    state_: Annotated[str | None, typer.Option("--state", help="pending, delivered or failed")] = None,
    limit: Limit = 50,
    as_json: AsJson = False,
) -> None:
    """Each delivery of an event to a webhook, newest first: its state, tries, the receiver's last
    answer or the error that kept it from answering, and when the next try is due."""
    _allowed("--state", state_, sql_events.DELIVERY_STATES)
    with database(state(ctx).settings, needed_for="deliveries are kept in the database") as conn:
        rows = sql_events.deliveries(conn, limit, state_)
    _show("deliveries", rows, as_json, "no deliveries" + (f" {state_}" if state_ else ""), _delivery_line)


def _delivery_line(d: sql_events.Delivery) -> str:
    line = f"#{d.delivery_id:<6} {d.state:<9} {d.event} {d.subject} → {d.webhook}, try {d.attempts}/{d.max_tries}"
    if d.last_status is not None:
        line += f", HTTP {d.last_status}"
    if d.last_error:
        line += f": {d.last_error}"
    if d.next_attempt_at is not None:
        line += f"; next try {d.next_attempt_at:%Y-%m-%d %H:%M:%S%z}"
    return line


@app.command("test")
def test(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="the webhook's name (or scheme://host:port); default: every one")
                    ] = None,
) -> None:
    """POST a signed `ping` event (id 0, recorded nowhere, not retried) to each webhook now and
    print its answer in one line; exit 3 if one did not answer 2xx."""
    hooks = [w for w in state(ctx).settings.webhooks if name is None or w.display == name]
    if not hooks:
        raise HoardError(f"no webhook {name}; `hoard webhooks list` shows them" if name else
                         "no webhooks; add a [[webhooks]] table (url, events, secret) to hoard.toml — docs/config.md",
                         ExitCode.USAGE)
    failed = []
    for w in hooks:
        status, error = events_mod.ping(w)
        if error is None:
            out.print(f"{w.display}: answered HTTP {status}", markup=False)
        else:
            failed.append(f"{w.display}: {error}")
    if failed:
        raise HoardError("; ".join(failed) + " — fix the receiver or the url in hoard.toml", ExitCode.UNAVAILABLE)


@app.command("requeue")
def requeue(ctx: typer.Context) -> None:
    """Queue again the pending deliveries whose try is overdue (their job was lost: Redis was down
    or flushed); `hoard worker` then delivers them."""
    cfg = state(ctx).settings
    with database(cfg, needed_for="deliveries are kept in the database") as conn:
        ids = events_mod.requeue(cfg, conn)
    out.print(f"{len(ids)} overdue deliveries queued again" if ids else "no delivery is overdue", markup=False)
