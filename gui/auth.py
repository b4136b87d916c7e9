"""Login: every page and route needs a signed-in user except `/health/*` and `/login`.

A browser signs in on `/login`; its session (NiceGUI's `app.storage.user`, keyed by a signed
cookie) holds the name, the role and when it expires (`gui.session_hours`). A program
(Prometheus on `/metrics`, scripts on `/api/…`) sends HTTP Basic credentials instead; both
go through the same limiter of failed logins (`gui.login_attempts` per `gui.login_window_s`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse
from nicegui import app, run, ui
from starlette.middleware.base import BaseHTTPMiddleware

from gui import users as users_mod
from gui.context import ctx

#: paths open without a login (the health probes of systemd / a load balancer; NiceGUI's
#: own static files and websocket, which serve no data)
OPEN_PREFIXES = ("/health/", "/_nicegui")
OPEN_PATHS = ("/login",)
#: paths answered with 401 + Basic instead of a redirect to the login page
API_PREFIXES = ("/metrics", "/api/")
#: mounted apps whose POSTs act (rq-dashboard: requeue, cancel, delete): operators and admins only
ACTING_PREFIXES = ("/rq",)


@dataclass(frozen=True)
class SignedIn:
    name: str
    role: str

    def may(self, action: str) -> bool:
        return users_mod.may(self.role, action)


def _fingerprint(user: users_mod.User) -> str:
    """Ties a session to the account as it was at sign-in: a changed password or role, or a
    removed user, ends every session opened before (checked on each request)."""
    return hashlib.sha256(f"{user.name}\0{user.role}\0{user.password_hash}".encode()).hexdigest()[:32]


def current_user() -> SignedIn | None:
    """The user of this browser session, or None (never signed in, signed out, expired, or the
    account was removed, demoted or given a new password since)."""
    s = app.storage.user
    if not s.get("name"):
        return None
    if s.get("expires", 0) < time.time():
        s.clear()
        return None
    try:
        account = users_mod.users(ctx().cfg).get(s["name"])
    except users_mod.UserError:
        account = None
    if account is None or s.get("account") != _fingerprint(account):
        s.clear()
        return None
    return SignedIn(account.name, account.role)


def require(action: str) -> SignedIn:
    """The signed-in user if their role may do `action`; else a notification and PermissionError.
    Event handlers call it before acting: a control a role cannot use is hidden, and checked again."""
    user = current_user()
    if user is None or not user.may(action):
        msg = ("your session expired; sign in again" if user is None
               else f"a {user.role} may not {action}; ask an admin for the {users_mod.NEEDS[action]} role")
        ui.notify(msg, type="negative")
        raise PermissionError(msg)
    return user


def _safe_target(path: str) -> str:
    """Only a local path (never `//host`, a scheme, or anything a browser could strip or turn
    into one: backslashes, control characters, white space) may follow a login."""
    parts = urlsplit(path)
    ok = (path.startswith("/") and not path.startswith("//") and not parts.scheme and not parts.netloc
          and not any(c == "\\" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in path))
    return path if ok else "/"


def _same_origin(request: Request) -> bool:
    """A request a page of this GUI made: the browser's Sec-Fetch-Site, else Origin/Referer
    naming this host and port (SameSite cookies do not tell ports apart, so a page served on
    another port of the same host could act with the user's session otherwise)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # not a browser (curl, a script): it holds the cookie itself, no one else's page
    here = request.headers.get("host", "")
    return urlsplit(origin).netloc == here


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password


async def login_check(name: str, password: str, client: str) -> tuple[users_mod.User | None, str]:
    """(the user, "") on success; (None, why) on a refusal. Counts failures."""
    c = ctx()
    wait = c.limiter.wait_s(name, client)
    if wait > 0:
        return None, f"too many failed logins; try again in {math.ceil(wait)} s"
    user = await run.io_bound(users_mod.authenticate, c.cfg, name, password)
    if user is None:
        c.limiter.failed(name, client)
        return None, "wrong name or password"
    c.limiter.succeeded(name)
    return user, ""


class AuthMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        user = current_user() if not path.startswith(OPEN_PREFIXES) else None
        acting = request.method not in ("GET", "HEAD") or "/requeue/" in path  # rq-dashboard requeues on GET too
        if user is not None and path.startswith(ACTING_PREFIXES) and acting and not user.may("cancel"):
            return JSONResponse({"error": f"a {user.role} may look but not act; ask an admin for the operator role"},
                                status_code=403)
        if path.startswith(ACTING_PREFIXES) and acting and not _same_origin(request):
            return JSONResponse({"error": "refused: this request came from another site's page (open the GUI "
                                          "itself to act)"}, status_code=403)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or user is not None:
            return await call_next(request)
        if path.startswith(API_PREFIXES):
            creds = _basic(request)
            if creds:
                user, why = await login_check(*creds, _client(request))
                if user is not None:
                    return await call_next(request)
                status = 429 if why.startswith("too many") else 401
            else:
                status, why = 401, "sign in: HTTP Basic with a `hoard users` login"
            return JSONResponse({"error": why}, status_code=status, headers={"WWW-Authenticate": 'Basic realm="hoard"'})
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?redirect_to={quote(target, safe='/')}")


def register() -> None:
    app.add_middleware(AuthMiddleware)

    @ui.page("/login", title="hoardfs · sign in")
    def login_page(request: Request, redirect_to: str = "/") -> RedirectResponse | None:
        target = _safe_target(redirect_to)
        if current_user() is not None:
            return RedirectResponse(target)
        client = _client(request)

        async def attempt() -> None:
            user, why = await login_check(name.value.strip(), password.value, client)
            if user is None:
                message.text = why
                message.visible = True
                return
            app.storage.user.clear()
            app.storage.user.update(name=user.name, role=user.role, account=_fingerprint(user),
                                    expires=time.time() + ctx().cfg.gui.session_hours * 3600)
            ui.navigate.to(target)

        with ui.card().classes("absolute-center w-80"):
            ui.label("hoardfs").classes("text-h5")
            name = ui.input("Name").props("autofocus").classes("w-full")
            password = ui.input("Password", password=True, password_toggle_button=True).classes("w-full")
            password.on("keydown.enter", attempt)
            message = ui.label("").classes("text-negative")
            message.visible = False
            ui.button("Sign in", on_click=attempt).classes("w-full")
        return None

    @ui.page("/logout")
    def logout_page() -> RedirectResponse:
        app.storage.user.clear()
        return RedirectResponse("/login")
