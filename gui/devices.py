"""Device cookies: a browser that signed in as a name before is told apart from strangers
trying that name (docs/security.md, Logins; OWASP's "device cookies" against lockout attacks).

Every loopback address is one client to the login limits (any local user binds any of
127.0.0.0/8), so without this any local user's five wrong guesses of the admin's name lock the
admin out on 127.0.0.1, and a flood of logins fills the password-check queue before the
admin's turn. A successful sign-in — the form, or HTTP Basic — gives the browser a cookie
naming the user, signed with the service's key; a later login of that name carrying it is
counted on the device alone (hoardfs.jobs.users.LoginLimiter) and goes ahead of strangers' in the
gate (hoardfs.gui.gate).

The cookie: `<name>.<issued, unix s>.<random id>.<HMAC-SHA256>`, the MAC over the name, the
time, the id and the user's password hash as it was (a new password makes every earlier device
a stranger again: a browser that knew the old password is not trusted for the new one).
HttpOnly, SameSite=Strict, Secure when `gui.secure_cookies` (the GUI behind TLS), for DAYS.
It gives nothing but that: it signs nobody in, and a stolen one gets its holder `gui.login_attempts`
guesses a window of their own — no more than a stranger's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.responses import Response

from hoardfs.jobs.users import User

COOKIE = "hoard_device"
#: how long a device stays recognised after its last sign-in (each sign-in gives a fresh cookie)
DAYS = 90


@dataclass(frozen=True)
class Device:
    """A recognised device: `id` is what the limiter and the gate count it by."""

    id: str
    name: str


class Devices:
    def __init__(self, secret: str, days: float = DAYS) -> None:
        # a key of its own, derived from the service's: a device MAC is never a session signature
        self._key = hmac.new(secret.encode(), b"hoardfs device cookie", hashlib.sha256).digest()
        self.life_s = days * 86400

    def _mac(self, name: str, issued: str, nonce: str, password_hash: str) -> str:
        msg = "\0".join((name, issued, nonce, password_hash)).encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()).decode().rstrip("=")

    def issue(self, user: User) -> str:
        """A new cookie value for a browser that just signed in as `user`."""
        issued, nonce = str(int(time.time())), secrets.token_urlsafe(12)
        return ".".join((user.name, issued, nonce, self._mac(user.name, issued, nonce, user.password_hash)))

    def recognise(self, value: str | None, user: User | None) -> Device | None:
        """The device `value` (a cookie) names, if it is a sign-in of `user` with their current
        password, made by this service within its life; else None (a stranger)."""
        if not value or user is None:
            return None
        parts = value.rsplit(".", 3)  # the name may hold dots; the rest never do
        if len(parts) != 4 or parts[0] != user.name or not parts[1].isdigit():
            return None
        name, issued, nonce, mac = parts
        if not 0 <= time.time() - int(issued) <= self.life_s:
            return None
        if not hmac.compare_digest(mac, self._mac(name, issued, nonce, user.password_hash)):
            return None
        return Device(nonce, name)

    def give(self, response: Response, user: User, secure: bool) -> None:
        """Set a fresh device cookie for `user` on `response`."""
        response.set_cookie(COOKIE, self.issue(user), max_age=int(self.life_s), path="/", secure=secure,
                            httponly=True, samesite="strict")
