"""`hoard events` (what happened: batches ingested, runs finished or failed, gates waiting,
datasets built, disks failed) and `hoard webhooks list|deliveries|requeue` (who hears of them,
and each delivery's tries) — jobs.events, sql.events. Values from outside (subjects, receivers'
answers) are printed as text, never markup; a webhook's secret and its URL's path never."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from fsd.base.config import EVENT_NAMES
from fsd.base.errors import ExitCode, HoardError
from fsd.cli._common import database, out, state
from jobs import events as events_mod
from sql import events as sql_events

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
    if name is not None and name not in EVENT_NAMES:
        raise HoardError(f"--name {name}: no such event; events are {', '.join(EVENT_NAMES)}", ExitCode.USAGE)
    with database(state(ctx).settings, needed_for="events are kept in the database") as conn:
        rows = sql_events.events(conn, limit, name)
    if as_json:
        out.print(json.dumps({"events": [r.model_dump(mode="json") for r in rows]}), markup=False)
        return
    if not rows:
        out.print("no events yet (they are recorded as batches are ingested, runs end, datasets are built, disks fail)",
                  markup=False)
    for r in rows:
        out.print(f"{r.at:%Y-%m-%d %H:%M:%S%z}  #{r.event_id:<6} {r.name:<15} {r.subject}", markup=False)


@app.command("list")
def list_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The [[webhooks]] of hoard.toml: name (or scheme://host:port), events, tries, backoff, timeout —
    never the secret, nor the URL's path (it may hold a token)."""
    hooks: list[dict[str, Any]] = [{"webhook": w.display, "events": w.events, "tries": w.tries,
                                    "backoff_s": w.backoff_s, "timeout_s": w.timeout_s}
                                   for w in state(ctx).settings.webhooks]
    if as_json:
        out.print(json.dumps({"webhooks": hooks}), markup=False)
        return
    if not hooks:
        out.print("no webhooks; add a [[webhooks]] table (url, events, secret) to hoard.toml — docs/config.md",
                  markup=False)
    for h in hooks:
        out.print(f"{h['webhook']}: {', '.join(h['events'])} — {h['tries']} tries, first retry after "
                  f"{h['backoff_s']:g} s (doubling), {h['timeout_s']:g} s per try", markup=False)


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    state_: Annotated[str | None, typer.Option("--state", help="pending, delivered or failed")] = None,
    limit: Limit = 50,
    as_json: AsJson = False,
) -> None:
    """Each delivery of an event to a webhook, newest first: its state, tries, the receiver's last
    answer or the error that kept it from answering, and when the next try is due."""
    if state_ is not None and state_ not in sql_events.DELIVERY_STATES:
        raise HoardError(f"--state {state_}: allowed: {', '.join(sql_events.DELIVERY_STATES)}", ExitCode.USAGE)
    with database(state(ctx).settings, needed_for="deliveries are kept in the database") as conn:
        rows = sql_events.deliveries(conn, limit, state_)
    if as_json:
        out.print(json.dumps({"deliveries": [r.model_dump(mode="json") for r in rows]}), markup=False)
        return
    if not rows:
        out.print("no deliveries" + (f" {state_}" if state_ else ""), markup=False)
    for d in rows:
        line = (f"#{d.delivery_id:<6} {d.state:<9} {d.event} {d.subject} → {d.webhook}, "
                f"try {d.attempts}/{d.max_tries}")
        if d.last_status is not None:
            line += f", HTTP {d.last_status}"
        if d.last_error:
            line += f": {d.last_error}"
        if d.next_attempt_at is not None:
            line += f"; next try {d.next_attempt_at:%Y-%m-%d %H:%M:%S%z}"
        out.print(line, markup=False)


@app.command("requeue")
def requeue(ctx: typer.Context) -> None:
    """Queue again the pending deliveries whose try is overdue (their job was lost: Redis was down
    or flushed); `hoard worker` then delivers them."""
    cfg = state(ctx).settings
    with database(cfg, needed_for="deliveries are kept in the database") as conn:
        ids = events_mod.requeue(cfg, conn)
    out.print(f"{len(ids)} overdue deliveries queued again" if ids else "no delivery is overdue", markup=False)
