"""Sign-in tickets: how a login gets a fresh session id (no session fixation).

NiceGUI keys `app.storage.user` by the id in the browser's signed session cookie, and that id
is made on the first visit, before anyone signs in. Were the signed-in state written under it,
whoever had planted or copied that cookie beforehand would be signed in too. So the login form
does not sign the session in: it hands out a ticket, bound to the session id that asked for it,
which `/login/finish` redeems once — that route empties the old id's storage, gives the browser a
new id (a new cookie) and hands the signed-in state over to it (`hoardfs.gui.auth`).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

#: seconds a ticket (and a handed-over state not yet claimed) stays valid: the browser follows
#: the ticket at once, so a short life is enough and leaves little to replay
TICKET_S = 30.0


@dataclass(frozen=True)
class _Ticket:
    session: str  # the session id of the browser that signed in
    state: dict[str, Any]  # what the new session's storage will hold
    target: str  # where the browser goes after
    expires: float


class Tickets:
    """One-use tickets by token, and signed-in states waiting for the new session id's first
    request (that id's storage exists only once NiceGUI has seen a request carrying it)."""

    def __init__(self, life_s: float = TICKET_S) -> None:
        self.life_s = life_s
        self._tickets: dict[str, _Ticket] = {}
        self._handed: dict[str, tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()

    def _drop_expired(self, now: float) -> None:
        self._tickets = {k: t for k, t in self._tickets.items() if t.expires > now}
        self._handed = {k: v for k, v in self._handed.items() if v[1] > now}

    def issue(self, session: str, state: dict[str, Any], target: str) -> str:
        """A new ticket for the browser whose session id is `session`."""
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._drop_expired(now)
            self._tickets[token] = _Ticket(session, dict(state), target, now + self.life_s)
        return token

    def redeem(self, token: str, session: str | None) -> tuple[dict[str, Any], str] | None:
        """(state, target) if `token` is a live ticket issued to `session`; None otherwise. A
        ticket is gone after its first redeem, whether it matched or not (no second guess)."""
        now = time.monotonic()
        with self._lock:
            t = self._tickets.pop(token, None)
        if t is None or t.expires <= now or session is None or not secrets.compare_digest(t.session, session):
            return None
        return t.state, t.target

    def hand_over(self, session: str, state: dict[str, Any]) -> None:
        """`state` for the new session id `session`, until its first request claims it."""
        with self._lock:
            self._handed[session] = (dict(state), time.monotonic() + self.life_s)

    def claim(self, session: str | None) -> dict[str, Any] | None:
        """The state handed over to `session`, once."""
        if session is None:
            return None
        with self._lock:
            got = self._handed.pop(session, None)
        return got[0] if got and got[1] > time.monotonic() else None
