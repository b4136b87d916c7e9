"""Events and webhook deliveries (tables `event` and `webhook_delivery`, migration 014): record an
event with its pending deliveries in one transaction, claim a delivery for a try and record the
try, list both for `hoard events`, `hoard webhooks deliveries` and the GUI.

Who emits, who delivers and when is `hoardfs.jobs.events`'; here is only the SQL. An event is recorded
once per key: the same key again records nothing and makes no delivery (a step run again after
a crash). Events older than KEEP are deleted whenever one is recorded, their deliveries with
them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel

from hoardfs.base.config import EVENT_NAMES as EVENT_NAMES  # the names are the configuration's to check
from hoardfs.base.errors import ExitCode, HoardError

KEEP = dt.timedelta(days=90)
"""Events older than this (and their deliveries) are deleted whenever an event is recorded."""

DELIVERY_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class Target:
    """A webhook an event is to be delivered to: its display name, the sha256 of its URL (the
    URL itself is never stored) and its number of tries."""

    webhook: str
    url_sha256: str
    max_tries: int


@dataclass(frozen=True)
class Recorded:
    event_id: int | None  # None: an event of this key was recorded before (nothing new)
    deliveries: list[int] = field(default_factory=list)  # the pending deliveries made
    pruned: int = 0  # events older than KEEP deleted


class Event(BaseModel):
    event_id: int
    name: str
    key: str
    at: dt.datetime
    subject: str
    detail: dict[str, Any]


class Delivery(BaseModel):
    delivery_id: int
    event_id: int
    event: str  # the event's name
    subject: str
    webhook: str
    url_sha256: str
    state: str
    attempts: int
    max_tries: int
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


def _no_table(e: psycopg.Error) -> HoardError:
    return HoardError(f"the database has no event tables ({str(e).strip().splitlines()[0]}); run `hoard db migrate`",
                      ExitCode.UNAVAILABLE)


def record(conn: psycopg.Connection, name: str, key: str, subject: str, detail: dict[str, Any] | None = None,
           targets: list[Target] | tuple[Target, ...] = (), at: dt.datetime | None = None,
           keep: dt.timedelta = KEEP) -> Recorded:
    """Record event `name` under `key` (once: the same key again records nothing) with one pending
    delivery per target, due now; delete the events older than `keep`. One transaction."""
    if name not in EVENT_NAMES:
        raise ValueError(f"event {name!r} is not one of {', '.join(EVENT_NAMES)}")
    body = json.dumps(detail or {}, default=str)
    try:
        with conn.transaction():
            pruned = conn.execute("DELETE FROM event WHERE at < now() - %s", [keep]).rowcount
            row = conn.execute("INSERT INTO event (name, key, at, subject, detail) "
                               "VALUES (%s, %s, coalesce(%s, now()), %s, %s::jsonb) "
                               "ON CONFLICT (key) DO NOTHING RETURNING event_id",
                               [name, key, at, subject, body]).fetchone()
            if row is None:
                return Recorded(None, [], pruned)
            ids = [conn.execute("INSERT INTO webhook_delivery (event_id, webhook, url_sha256, max_tries, "
                                "next_attempt_at) VALUES (%s, %s, %s, %s, now()) RETURNING delivery_id",
                                [row[0], t.webhook, t.url_sha256, t.max_tries]).fetchone()[0]  # type: ignore[index]
                   for t in targets]
            return Recorded(row[0], ids, pruned)
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


_DELIVERY = """
    SELECT d.delivery_id, d.event_id, e.name AS event, e.subject, d.webhook, d.url_sha256, d.state, d.attempts,
           d.max_tries, d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.delivered_at
    FROM webhook_delivery d JOIN event e USING (event_id)"""


def events(conn: psycopg.Connection, limit: int = 100, name: str | None = None) -> list[Event]:
    """The newest `limit` events (of `name`), newest first."""
    try:
        with conn.cursor(row_factory=class_row(Event)) as cur:
            return cur.execute("SELECT event_id, name, key, at, subject, detail FROM event "
                               "WHERE %(name)s::text IS NULL OR name = %(name)s "
                               "ORDER BY at DESC, event_id DESC LIMIT %(limit)s",
                               {"name": name, "limit": limit}).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


def deliveries(conn: psycopg.Connection, limit: int = 100, state: str | None = None,
               event_id: int | None = None) -> list[Delivery]:
    """The newest `limit` deliveries (in `state`, of `event_id`), newest first."""
    try:
        with conn.cursor(row_factory=class_row(Delivery)) as cur:
            return cur.execute(_DELIVERY + " WHERE (%(state)s::text IS NULL OR d.state = %(state)s) "
                               "AND (%(event)s::bigint IS NULL OR d.event_id = %(event)s) "
                               "ORDER BY d.delivery_id DESC LIMIT %(limit)s",
                               {"state": state, "event": event_id, "limit": limit}).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


def claim(conn: psycopg.Connection, delivery_id: int) -> tuple[Delivery, Event] | None:
    """The pending delivery `delivery_id` and its event, its row locked until the caller's
    transaction ends; None when it is not pending or another try holds it (two jobs for one
    delivery — its own and one queued again as overdue — never post twice at once)."""
    row = conn.execute("SELECT 1 FROM webhook_delivery WHERE delivery_id = %s AND state = 'pending' "
                       "FOR UPDATE SKIP LOCKED", [delivery_id]).fetchone()
    if row is None:
        return None
    with conn.cursor(row_factory=class_row(Delivery)) as cur:
        d = cur.execute(_DELIVERY + " WHERE d.delivery_id = %s", [delivery_id]).fetchone()
    with conn.cursor(row_factory=class_row(Event)) as cur:
        e = cur.execute("SELECT event_id, name, key, at, subject, detail FROM event WHERE event_id = %s",
                        [d.event_id if d else None]).fetchone()
    return (d, e) if d is not None and e is not None else None


def attempted(conn: psycopg.Connection, delivery_id: int, *, status: int | None, error: str | None,
              delivered: bool, retry_in: dt.timedelta | None) -> Delivery:
    """Record one try of `delivery_id`: delivered; or failed for good (`retry_in` None); or due
    again after `retry_in`. Returns the row as it now is."""
    state = "delivered" if delivered else "pending" if retry_in is not None else "failed"
    conn.execute("UPDATE webhook_delivery SET attempts = attempts + 1, last_attempt_at = now(), last_status = %s, "
                 "last_error = %s, state = %s, delivered_at = CASE WHEN %s THEN now() END, "
                 "next_attempt_at = CASE WHEN %s = 'pending' THEN now() + %s END WHERE delivery_id = %s",
                 [status, None if delivered else error, state, delivered, state, retry_in or dt.timedelta(0),
                  delivery_id])
    with conn.cursor(row_factory=class_row(Delivery)) as cur:
        d = cur.execute(_DELIVERY + " WHERE d.delivery_id = %s", [delivery_id]).fetchone()
    assert d is not None
    return d


def overdue(conn: psycopg.Connection, late: dt.timedelta, limit: int = 1000) -> list[tuple[int, int]]:
    """(delivery, tries made) of the pending deliveries whose try is due since more than `late`:
    their job was lost (Redis down when it was to be queued, flushed, a worker gone) and they are
    to be queued again."""
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT delivery_id, attempts FROM webhook_delivery "
                                           "WHERE state = 'pending' "
                                           "AND next_attempt_at < now() - %s ORDER BY next_attempt_at LIMIT %s",
                                           [late, limit]).fetchall()]
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


def trouble(conn: psycopg.Connection, since: dt.timedelta, late: dt.timedelta) -> dict[str, Any]:
    """What `hoard health` warns of: deliveries failed since `since` ago (per webhook), and
    pending ones overdue by more than `late` (no worker serves the queue, or their job was lost)."""
    try:
        failed: dict[str, int] = {r[0]: r[1] for r in conn.execute(
            "SELECT webhook, count(*) FROM webhook_delivery WHERE state = 'failed' "
            "AND last_attempt_at > now() - %s GROUP BY 1 ORDER BY 1", [since])}
        overdue_n = conn.execute("SELECT count(*) FROM webhook_delivery WHERE state = 'pending' "
                                 "AND next_attempt_at < now() - %s", [late]).fetchone()
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None
    return {"failed": failed, "overdue": overdue_n[0] if overdue_n else 0}
