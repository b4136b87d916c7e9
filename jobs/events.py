"""Events and webhooks (docs/operations.md "Events and webhooks"): `emit` records an
event where its fact happens, with one pending delivery per `[[webhooks]]` table that asks for
it (hoardfs.sql.events: one transaction), and queues each delivery on the RQ queue `events`; `deliver`,
the RQ job, POSTs the event's JSON body signed with the webhook's secret (HMAC-SHA256 in
`X-Hoard-Signature: sha256=<hex>`, GitHub's convention) and records the try — delivered on a
2xx answer, else queued again after an exponential backoff until the webhook's `tries` are spent
(failed, with the last error).

Emitting never fails the step it reports, and never holds it long:

- PostgreSQL unreachable (or not migrated): the event is dropped with one WARNING naming it. The
  emitters call `emit` right after their own write to PostgreSQL succeeded (the batch's event,
  the run's, the dataset's version), so this is a race, not the rule; a failed run's event is
  emitted when its `action_event` is written, which waits in the run's state while PostgreSQL is
  down (hoardfs.jobs.actions.steps.record_ending) — queued, not dropped. A disk's failure is relayed
  from the index's own events (`relay_disk_failures`: at the end of every maintenance job and by
  every health collection), so it is recorded once PostgreSQL answers.
- Redis unreachable: the deliveries are recorded pending; a delivery whose try is overdue by
  OVERDUE is queued again by the next `emit` (or `hoard webhooks requeue`).
- Connecting takes at most EMIT_CONNECT_S; recording is one short transaction.

The secret is never logged, stored or shown; a webhook is named by its display name (its
`name`, else scheme://host:port of its URL — the URL's path may hold a token).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import psycopg
import redis

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings, WebhookConfig
from hoardfs.base.errors import first_line
from hoardfs.fsd.store import Store
from hoardfs.jobs import jobkey
from hoardfs.jobs.queues import connect, enqueue_once, redis_required, rq_queue
from hoardfs.sql import events as sql_events
from hoardfs.sql.events import EVENT_NAMES as EVENT_NAMES
from hoardfs.sql.events import Event

log = logging.getLogger(__name__)

#: the RQ queue deliveries run on (short network calls: not behind an hours-long action or gc)
QUEUE = "events"
#: the longest wait between two tries of a delivery, whatever its backoff_s doubled to
BACKOFF_CAP_S = 6 * 3600.0
#: the longest `emit` waits for PostgreSQL before it drops the event
EMIT_CONNECT_S = 3
#: a pending delivery due longer ago than this lost its job, and is queued again
OVERDUE = dt.timedelta(minutes=5)
#: an RQ job's limit: one try takes at most the webhook's timeout_s (≤ 300 s)
JOB_TIMEOUT_S = 600
#: how much of a refusing receiver's answer the delivery log keeps (one line)
ANSWER_CHARS = 200
SIGNATURE_HEADER = "X-Hoard-Signature"


# -- signing ------------------------------------------------------------------------------------

def body(event: Event) -> bytes:
    """The JSON body of `event`'s delivery: the same bytes at every try (sorted keys, no spaces)."""
    return json.dumps({"id": event.event_id, "event": event.name, "at": event.at.isoformat(),
                       "subject": event.subject, "detail": event.detail},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(secret: str | bytes, payload: bytes) -> str:
    """The `X-Hoard-Signature` of `payload`: `sha256=` and the hex HMAC-SHA256 under `secret`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, payload: bytes, header: str | None) -> bool:
    """What a receiver does (docs/operations.md, "Events and webhooks"): the header is the
    signature of the very bytes received, compared in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, payload), header)


def backoff_s(hook: WebhookConfig, tries_made: int) -> float:
    """The wait after try number `tries_made` failed: backoff_s, then doubled each time."""
    return min(BACKOFF_CAP_S, hook.backoff_s * 2 ** (tries_made - 1))


# -- emitting -----------------------------------------------------------------------------------

#: the most overdue deliveries one `emit` queues again (the rest: the next one, `hoard webhooks requeue`)
SWEEP = 50


def targets(cfg: Settings, name: str) -> list[sql_events.Target]:
    """The webhooks that ask for `name` (one URL each: the configuration refuses a URL twice)."""
    return [sql_events.Target(w.display, w.url_sha256, w.tries) for w in cfg.webhooks if w.wants(name)]


def emit(cfg: Settings, name: str, key: str, subject: str, detail: dict[str, Any] | None = None, *,
         at: dt.datetime | None = None, conn: psycopg.Connection | None = None) -> int | None:
    """Record event `name` (once per `key`) and queue its deliveries; the event's number, or None
    when it was recorded before or could not be. Never raises (see the module docstring): the
    step that reports a fact must not fail for the report. `conn`: the caller's connection
    (autocommit), else one is opened for this."""
    try:
        if conn is not None:
            rec = sql_events.record(conn, name, key, subject, detail, targets(cfg, name), at=at)
            late = sql_events.overdue(conn, OVERDUE, SWEEP) if cfg.webhooks else []
        else:
            with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=EMIT_CONNECT_S) as own:
                rec = sql_events.record(own, name, key, subject, detail, targets(cfg, name), at=at)
                late = sql_events.overdue(own, OVERDUE, SWEEP) if cfg.webhooks else []
    except Exception as e:  # the step reported on goes on whatever happens here
        why = e.message if hasattr(e, "message") else first_line(e)
        log.warning("event %s of %s not recorded, dropped: %s (its webhooks are not called)", name, subject, why)
        return None
    queue = [(d, 1) for d in rec.deliveries] + [(d, made + 1) for d, made in late if d not in rec.deliveries]
    if queue:
        try:
            _queue(cfg, queue)
        except Exception as e:  # (Redis's own errors are said by _queue) pending, requeued later
            log.warning("webhook deliveries of event %s not queued: %s; they stay pending (`hoard webhooks requeue`)",
                        name, first_line(e))
    return rec.event_id


def _queue(cfg: Settings, deliveries: list[tuple[int, int]], delay_s: float = 0.0) -> None:
    """Queue try `n` of each (delivery, n): now, or after `delay_s` (RQ's scheduler: `hoard
    worker` runs it). Redis down: one warning; the deliveries stay pending and the next `emit`
    queues them once they are OVERDUE."""
    try:
        r = connect(cfg.redis_url)
        for delivery_id, n in deliveries:
            _enqueue(cfg, r, delivery_id, n, delay_s)
    except redis.RedisError as e:
        log.warning("webhook deliveries %s not queued: Redis at %s does not answer (%s); they stay pending and are "
                    "queued again by the next event or `hoard webhooks requeue`",
                    ", ".join(str(d) for d, _ in deliveries), cfg.redis_url, first_line(e))


def _enqueue(cfg: Settings, r: redis.Redis, delivery_id: int, n: int, delay_s: float) -> None:
    jid, path = f"webhook-{delivery_id}-{n}", str(cfg.source) if cfg.source else None
    desc = f"webhook delivery {delivery_id}, try {n}"
    if delay_s <= 0:
        enqueue_once(r, QUEUE, "hoardfs.jobs.events.deliver", path, delivery_id, n, job_id=jid, timeout=JOB_TIMEOUT_S,
                     description=desc, key=jobkey.of(cfg))
        return
    rq_queue(QUEUE, r, jobkey.of(cfg)).enqueue_in(dt.timedelta(seconds=delay_s), "hoardfs.jobs.events.deliver", path,
                                                  delivery_id, n,
                                  job_id=jid, job_timeout=JOB_TIMEOUT_S, result_ttl=86400, failure_ttl=30 * 86400,
                                  description=desc)


def requeue(cfg: Settings, conn: psycopg.Connection) -> list[int]:
    """Queue again every pending delivery whose try is overdue (`hoard webhooks requeue`); the
    deliveries queued. A delivery whose job is still waiting in Redis is not queued twice."""
    late = sql_events.overdue(conn, dt.timedelta(0))
    if late:
        with redis_required(cfg.redis_url):
            r = connect(cfg.redis_url)
            for delivery_id, made in late:
                _enqueue(cfg, r, delivery_id, made + 1, 0.0)
    return [d for d, _ in late]


def relay_disk_failures(cfg: Settings, failures: list[dict[str, Any]]) -> None:
    """Record a `disk_failed` event for each failure the index recorded (`hoardfs.fsd.maintenance.health`
    lists those of the last days in the health document): the index is where a disk's failure is
    written — by whichever process met it, the mount included, none of which reaches PostgreSQL —
    and every health collection (the GUI's refresh, `hoard health`, hoard-usage.timer) relays
    them here, once each by its key. Quiet when PostgreSQL is down: the next collection relays."""
    keyed = {f"disk_failed:{f['disk']}:{f['at_ns']}|{cfg.database_url}": f for f in failures}
    todo = {k: f for k, f in keyed.items() if k not in _relayed}
    if not todo:  # (the GUI collects every few seconds: a failure relayed is not looked up again)
        return
    try:
        with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=EMIT_CONNECT_S) as conn:
            for k, f in todo.items():
                at = dt.datetime.fromtimestamp(f["at_ns"] / 1e9, dt.UTC)
                rec = sql_events.record(conn, "disk_failed", k.partition("|")[0], f["disk"],
                                        {"disk": f["disk"], "reason": f.get("detail") or ""},
                                        targets(cfg, "disk_failed"), at=at)
                if rec.deliveries:
                    _queue(cfg, [(d, 1) for d in rec.deliveries])
                if len(_relayed) > 10_000:
                    _relayed.clear()
                _relayed.add(k)
    except Exception as e:  # a health collection goes on; the next one relays
        log.info("disk failures not relayed as events now: %s", first_line(e))


def relay_from_index(cfg: Settings) -> None:
    """`relay_disk_failures` of the failures the index recorded in the last DISK_FAILURES_S,
    read here (a maintenance job — verify, scrub, rebuild, replicate: where a dying disk is most
    often met — relays at its end, not only at the next health collection). Never raises."""
    try:
        with Store.open(cfg, writable=False) as store:
            failures = store.status_disk_failures()
    except Exception as e:  # the job's own report is what counts; the next collection relays
        log.info("disk failures not read from the index now: %s", first_line(e))
        return
    relay_disk_failures(cfg, failures)


#: the disk failures this process relayed (key|database): not looked up again
_relayed: set[str] = set()


def warnings(cfg: Settings) -> list[str]:
    """`hoard health`'s warnings of the webhooks (none without [[webhooks]]): deliveries failed in
    the last day, per webhook, and deliveries overdue. Never raises: the database's own trouble is
    the health document's `database` part."""
    if not cfg.webhooks:
        return []
    try:
        with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=EMIT_CONNECT_S) as conn:
            t = sql_events.trouble(conn, dt.timedelta(days=1), OVERDUE)
    except Exception:  # (said by the database part; a table missing by `hoard db migrate`'s check)
        return []
    out = [f"webhook {name}: {n} deliveries failed in the last 24 h; `hoard webhooks deliveries --state failed` says "
           f"why, `hoard webhooks test {name}` tries it now" for name, n in t["failed"].items()]
    if t["overdue"]:
        out.append(f"webhooks: {t['overdue']} deliveries overdue by more than {OVERDUE.seconds // 60} min: does a "
                   "`hoard worker` serve the `events` queue? Then `hoard webhooks requeue`")
    return out


# -- delivering ---------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that failed: the body is not sent on (urllib would turn the POST
    into a GET without it), and the person fixes the URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(hook: WebhookConfig, payload: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    """POST `payload` to `hook`: (the HTTP status or None, None when it answered 2xx else one line
    saying why not). Never raises for the receiver's doing."""
    req = urllib.request.Request(hook.url, data=payload, method="POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=hook.timeout_s) as resp:
            resp.read(65536)
            return resp.status, None
    except urllib.error.HTTPError as e:
        answer = _answer(e)
        extra = "; webhooks are not redirected: give the final URL" if 300 <= e.code < 400 else ""
        return e.code, f"HTTP {e.code} {e.reason}" + (f": {answer}" if answer else "") + extra
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        return None, f"cannot connect: {reason}"
    except TimeoutError:
        return None, f"no answer within {hook.timeout_s:g} s (timeout_s)"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return None, f"{type(e).__name__}: {first_line(e)}"


def _answer(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read(ANSWER_CHARS * 4).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    return " ".join(text.split())[:ANSWER_CHARS]


def _version() -> str:
    try:
        return importlib.metadata.version("hoardfs")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def _headers(hook: WebhookConfig, payload: bytes, event: str, delivery: str, n: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": f"hoardfs/{_version()}", "X-Hoard-Event": event,
            "X-Hoard-Delivery": delivery, "X-Hoard-Attempt": str(n),
            SIGNATURE_HEADER: sign(hook.secret.get_secret_value(), payload)}


def ping(hook: WebhookConfig) -> tuple[int | None, str | None]:
    """POST a signed `ping` (event "ping", id 0: recorded nowhere, never retried) to `hook` now —
    `hoard webhooks test`: whether the receiver answers, and checks the signature, before a real
    event needs it. (status, None) when it answered 2xx, else (status or None, one line why)."""
    payload = json.dumps({"id": 0, "event": "ping", "at": dt.datetime.now(dt.UTC).isoformat(),
                          "subject": hook.display, "detail": {"events": hook.events}},
                         sort_keys=True, separators=(",", ":")).encode()
    return post(hook, payload, _headers(hook, payload, "ping", "0", 1))


def deliver(config_path: str | None, delivery_id: int, n: int) -> dict[str, Any]:
    """RQ job (queue `events`): try number `n` of delivery `delivery_id`. Nothing happens unless
    the delivery is pending with `n - 1` tries made and no other try holds it (a stale or
    duplicate job). The try is recorded in the same transaction that claimed the row; the next
    one, if any, is queued after it commits."""
    cfg = config_mod.load(config_path)
    with psycopg.connect(cfg.database_url, connect_timeout=10) as conn, conn.transaction():
        got = sql_events.claim(conn, delivery_id)
        if got is None or got[0].attempts != n - 1:
            return {"delivery": delivery_id, "try": n, "skipped": "not pending at this try (done, or another job)"}
        d, event = got
        hook = next((w for w in cfg.webhooks if w.url_sha256 == d.url_sha256), None)
        status: int | None
        error: str | None
        if hook is None:
            status, error = None, (f"webhook {d.webhook} is no longer in hoard.toml ([[webhooks]] with this url); "
                                   "not tried")
            retry = None
        else:
            payload = body(event)
            status, error = post(hook, payload, _headers(hook, payload, event.name, str(delivery_id), n))
            retry = (None if error is None or n >= d.max_tries
                     else dt.timedelta(seconds=backoff_s(hook, n)))
        row = sql_events.attempted(conn, delivery_id, status=status, error=error, delivered=error is None,
                                   retry_in=retry)
    what = f"webhook {d.webhook}: delivery {delivery_id} of event {event.name} ({event.subject}), try {n}/{d.max_tries}"
    if row.state == "delivered":
        log.info("%s: delivered (HTTP %s)", what, status)
    elif row.state == "pending" and retry is not None:
        log.info("%s: %s; next try in %g s", what, error, retry.total_seconds())
        _queue(cfg, [(delivery_id, n + 1)], retry.total_seconds())
    else:
        log.warning("%s: %s; failed for good (`hoard webhooks deliveries --state failed` lists it)", what, error)
    return {"delivery": delivery_id, "try": n, "state": row.state, "status": status, "error": error}
