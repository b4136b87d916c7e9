"""`hoard gui`'s /events page: the configured webhooks (by name, never the
secret or the URL's path), every delivery with its tries and last answer, the events. Subjects
and receivers' answers come from outside: shown as their characters, never markup. Real test
PostgreSQL; the deliveries are recorded as the delivery job records them (hoardfs.sql.events)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from nicegui import ui

from hoardfs.base import config
from hoardfs.jobs import events
from hoardfs.sql import events as sql_events
from tests import gui_fixtures
from tests.gui_fixtures import sign_in, user  # noqa: F401 - fixtures
from tests.test_events import SECRET, hook, with_webhooks

#: a subject and a receiver's answer holding HTML and Markdown: the page shows these characters
HOSTILE = "<img src=x onerror=alert(1)>**strong** [l](javascript:alert(2))"


@pytest.fixture
def gui_home(request, hoard_home: Path, pg, redis_conn, monkeypatch) -> Path:
    """tests.gui_fixtures' home, with a webhook whose URL's path holds a token."""
    path = gui_fixtures.gui_home.__wrapped__(request, hoard_home, pg, redis_conn, monkeypatch)
    with_webhooks(path, hook("https://hooks.example:8443/T0/B1/t0ken-in-the-path", name="ops-chat"))
    return path


async def test_events_page_shows_deliveries_and_events_as_text_and_no_secret(user, gui_home: Path) -> None:
    """A viewer sees the webhook by its name, a failed delivery with its tries and the receiver's
    hostile answer as text, and the event with its hostile subject as text; neither the secret nor
    the URL's token appears anywhere on the page."""
    cfg = config.load(gui_home)
    eid = events.emit(cfg, "batch_ingested", "batch_ingested:x", HOSTILE, {"files": 2})
    assert eid is not None
    with psycopg.connect(cfg.database_url) as conn, conn.transaction():
        (d,) = sql_events.deliveries(conn)
        assert sql_events.claim(conn, d.delivery_id) is not None
        sql_events.attempted(conn, d.delivery_id, status=500, error=f"HTTP 500 Internal Server Error: {HOSTILE}",
                             delivered=False, retry_in=None)
    await sign_in(user, "vera")
    await user.open("/events")
    await user.should_see(marker="deliveries", retries=50)
    await user.should_see("ops-chat")
    await user.should_see(f"HTTP 500 Internal Server Error: {HOSTILE}")
    await user.should_see(f"batch_ingested {HOSTILE}")
    await user.should_see(marker="events")
    await user.should_see("1/5")
    await user.should_not_see(kind=ui.html)
    await user.should_not_see(kind=ui.markdown)
    await user.should_not_see(SECRET)
    await user.should_not_see("t0ken")
