"""Login: every page and route needs a signed-in user except `/health/*` and `/login`.

A browser signs in on `/login`; its session (NiceGUI's `app.storage.user`, keyed by the id in
a signed cookie) holds the name, the role and when it expires (`gui.session_hours`). Signing in
gives the browser a new session id (`hoardfs.gui.tickets`: the form hands out a one-use ticket,
`/login/finish` redeems it), so a cookie someone held before the login stays signed out;
`/logout` empties the session on the server (a copied cookie is signed out too). A program
(Prometheus on `/metrics`, scripts on `/api/…`) sends HTTP Basic credentials instead; both
go through `login_check`: the same limits of failed logins (`gui.login_attempts` per
`gui.login_window_s`, counted before the password is checked; docs/security.md) for the same
client address (`client_address`: `gui.trusted_proxies`), and the same gate of password checks
(`gui.login_concurrency` at once). Either way a sign-in gives the browser a device cookie
(hoardfs.gui.devices): its later logins of that name are counted apart from strangers' and checked first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import quote, unquote, urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from nicegui import app, ui
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import cookie_parser

from hoardfs.gui import devices
from hoardfs.gui.context import AppStopping, ctx, in_thread, page, stopping
from hoardfs.gui.gate import Busy
from hoardfs.jobs import users as users_mod

#: paths open without a login (the health probes of systemd / a load balancer; NiceGUI's
#: own static files and websocket, which serve no data)
OPEN_PREFIXES = ("/health/", "/_nicegui")
OPEN_PATHS = ("/login", "/login/finish", "/logout")
#: paths answered with 401 + Basic instead of a redirect to the login page
API_PREFIXES = ("/metrics", "/api/")
#: paths whose routes check a scraper's bearer token themselves (hoardfs.gui.api): a login, a session
#: or HTTP Basic gives nothing there, and the login limits do not count them
TOKEN_PREFIXES = ("/api/v1/",)
#: mounted apps whose POSTs act (rq-dashboard: requeue, cancel, delete): operators and admins only
ACTING_PREFIXES = ("/rq",)
#: GET routes that act when a browser arrives (sign out, finish a sign-in, a program's API): a
#: login never sends the browser on to one (`_safe_target`), so a link to `/login?redirect_to=…`
#: cannot make a person act by signing in
ACTS_ON_ARRIVAL = ("/logout", "/login/finish")
ACTS_ON_ARRIVAL_PREFIXES = ("/api/",)
#: rq-dashboard's pages, the only paths under /rq a login continues to (the rest act —
#: `/rq/requeue/<queue>` on GET — or are its JSON)
RQ_PAGES = re.compile(r"^/rq(/(\d+(/view(/.*)?)?)?)?$")


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
    into one: backslashes, control characters, white space) may follow a login, and never one
    that acts on arrival (ACTS_ON_ARRIVAL, rq-dashboard's acting routes) — those land on `/`."""
    parts = urlsplit(path)
    ok = (path.startswith("/") and not path.startswith("//") and not parts.scheme and not parts.netloc
          and not any(c == "\\" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in path))
    # an empty or dot segment in any spelling: a browser resolves `..` keeping empty segments,
    # a server's normalisation drops them, so the two can reach different routes (`/rq//../
    # requeue//../ingest` is `/ingest` to normpath, `/rq/requeue/ingest` to a browser); no page
    # of the GUI needs either
    plain = unquote(parts.path)
    odd = "//" in plain or DOT_SEGMENT.search(plain) is not None
    return path if ok and not odd and not _acts_on_arrival(parts.path) else "/"


DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")


def _acts_on_arrival(path: str) -> bool:
    """The route a browser sent to `path` reaches acts (or is not a page): checked on the path the
    server routes — percent-decoded (`/%6cogout`), dot segments resolved (`/x/../logout`, which
    the browser resolves before asking), a trailing slash dropped (redirected to the route)."""
    routed = posixpath.normpath(unquote(path)) if path else "/"
    return (routed in ACTS_ON_ARRIVAL or routed.startswith(ACTS_ON_ARRIVAL_PREFIXES) or routed == "/api"
            or ((routed == "/rq" or routed.startswith("/rq/")) and not RQ_PAGES.match(routed)))


def _not_from_the_gui(request: Request) -> str:
    """Why a request that acts (`/logout`, /rq's actions) is refused, or "" for one a page of this
    GUI made or a typed address: the browser's Sec-Fetch-Site (`same-origin`, or `none` for a
    typed address or a bookmark), else Origin/Referer naming this host and port (SameSite
    cookies do not tell ports apart, so a page served on another port of the same host could
    act with the user's session otherwise). A request with none of the three is refused too:
    every current browser sends Sec-Fetch-Site, so it is a script (which signs in with HTTP
    Basic on /metrics and /api, and holds no session to sign out or act with) or an old browser,
    where a hostile page can withhold Origin and Referer (`Referrer-Policy: no-referrer`) — a
    rule that let it through would let that page through. An old browser's Sign out form sends
    Origin (and a Referer)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return "" if site in ("same-origin", "none") else "it came from another site's page"
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return ("it does not say where it came from (no Sec-Fetch-Site, Origin or Referer: a script, or a browser "
                "too old to send Sec-Fetch-Site)")
    return "" if urlsplit(origin).netloc == request.headers.get("host", "") else "it came from another site's page"


#: what the login form says after a ticket that did not work
RETRY = ("that sign-in did not finish: its ticket was used already, expired, or came from another browser; "
         "sign in again")


def client_address(request: Request, trusted: Sequence[IPv4Network | IPv6Network], proxy_socket: bool = False) -> str:
    """The address the failed-login limits count for: the socket's, unless it is a trusted proxy
    (`gui.trusted_proxies`) or the connection came through `gui.socket` (`proxy_socket`: only
    the proxy on this host may open it); then the right-most X-Forwarded-For entry that is not
    a trusted proxy — each proxy appends the address it was connected from, so entries to the
    left of the first untrusted one are whatever that client wrote. A malformed entry (never
    one a trusted proxy appends) stops the walk at the proxy that passed it on."""
    if request.client is None and proxy_socket:  # a unix socket's peer has no address: the proxy
        hop, first_trusted = "proxy", True
    else:
        hop = request.client.host if request.client else "unknown"
        first_trusted = _trusted(hop, trusted)
    forwarded = [part.strip() for value in request.headers.getlist("x-forwarded-for") for part in value.split(",")]
    while forwarded and (first_trusted or _trusted(hop, trusted)):
        first_trusted = False
        entry = forwarded.pop()
        try:
            ip_address(entry)
        except ValueError:
            break
        hop = entry
    return client_key(hop)


def client_key(address: str) -> str:
    """The client the limits count for, of an address: every loopback address is one client
    (any local user binds any of 127.0.0.0/8: five addresses of its own once locked a name for
    everyone), an IPv6 address counts by its /64 (one host's share), an IPv4 one as it is."""
    try:
        ip = ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, IPv6Address):
        return str(IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def _trusted(address: str, trusted: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _client(request: Request) -> str:
    gui = ctx().cfg.gui
    return client_address(request, gui.trusted_proxies, proxy_socket=gui.socket is not None)


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password


def recognised(name: str, cookie: str | None) -> devices.Device | None:
    """The device `cookie` (a device cookie's value) names, if it signed in as `name` before."""
    if not cookie:
        return None
    try:
        account = users_mod.users(ctx().cfg).get(name)
    except users_mod.UserError:
        return None
    return ctx().devices.recognise(cookie, account)


async def login_check(name: str, password: str, client: str,
                      device_cookie: str | None = None) -> tuple[users_mod.User | None, str, float]:
    """(the user, "", 0) on success; (None, why, seconds to wait or 0) on a refusal. The attempt
    counts as a failure before the password is checked (LoginLimiter.begin), and the check waits
    for a turn at the gate (at most `gui.login_concurrency` at once). From a device that signed
    in as `name` before (`device_cookie`), both count it on that device, apart from strangers."""
    c = ctx()
    device = recognised(name, device_cookie)
    dev_id = device.id if device else None
    token, wait = c.limiter.begin(name, client, dev_id)
    if token is None:
        return None, f"too many failed logins; try again in {math.ceil(wait)} s", wait
    user = None
    try:
        async with c.gate.turn(dev_id or client, known=device is not None):
            user = await in_thread(users_mod.authenticate, c.cfg, name, password)
    except Busy as busy:
        c.limiter.end(name, client, token, succeeded=False, device=dev_id)  # never checked: not a failure
        return None, str(busy), busy.retry_s
    except BaseException:
        c.limiter.end(name, client, token, succeeded=False, device=dev_id)  # the GUI stopping: nothing decided
        raise
    if user is None:
        return None, "wrong name or password", 0.0
    c.limiter.end(name, client, token, succeeded=True, device=dev_id)
    return user, "", 0.0


def _secure(request: Request) -> bool:
    """Cookies are Secure when the GUI is reached over TLS: a proxy in front (`gui.secure_cookies`)."""
    return ctx().cfg.gui.secure_cookies or request.url.scheme == "https"


class AuthMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if (handed := ctx().tickets.claim(request.session.get("id"))) is not None:
            app.storage.user.update(handed)  # the first request of a session `/login/finish` made
        user = current_user() if not path.startswith(OPEN_PREFIXES) else None
        acting = request.method not in ("GET", "HEAD")  # (a GET to rq-dashboard's acting routes: 405, hoardfs.gui.rqdash)
        if user is not None and path.startswith(ACTING_PREFIXES) and acting and not user.may("cancel"):
            return JSONResponse({"error": f"a {user.role} may look but not act; ask an admin for the operator role"},
                                status_code=403)
        if path.startswith(ACTING_PREFIXES) and acting and (why := _not_from_the_gui(request)):
            return JSONResponse({"error": f"refused: {why}; open the GUI itself to act"}, status_code=403)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES + TOKEN_PREFIXES) or user is not None:
            return await call_next(request)
        if path.startswith(API_PREFIXES):
            creds = _basic(request)
            if creds:
                cookie = request.cookies.get(devices.COOKIE)
                try:
                    user, why, wait = await login_check(*creds, _client(request), cookie)
                except AppStopping:
                    return stopping()
                if user is not None:
                    answer = await call_next(request)
                    if recognised(user.name, cookie) is None:  # a browser's Basic sign-in: its device from now on
                        ctx().devices.give(answer, user, _secure(request))
                    return answer
            else:
                why, wait = "sign in: HTTP Basic with a `hoard users` login", 0.0
            if wait:  # refused before the password was checked: come back later
                return JSONResponse({"error": why}, status_code=429, headers={"Retry-After": str(math.ceil(wait))})
            return JSONResponse({"error": why}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="hoard"'})
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?redirect_to={quote(target, safe='/')}")


def _device_cookie(page_cookie: str | None) -> str | None:
    """The device cookie of the browser behind the login form: as its websocket sent it when the
    form was opened, else as its page request did. The websocket's, because the cookie is
    SameSite=Strict: a browser that followed a link from another site to the GUI sent the page
    request without it, and the websocket the GUI's own page opened with it."""
    environ = ui.context.client.environ or {}
    header = environ.get("HTTP_COOKIE")
    found = cookie_parser(header).get(devices.COOKIE) if isinstance(header, str) else None
    return found or page_cookie


def register() -> None:
    app.add_middleware(AuthMiddleware)

    @page("/login", title="hoardfs · sign in")
    def login_page(request: Request, redirect_to: str = "/", retry: int = 0) -> RedirectResponse | None:
        target = _safe_target(redirect_to)
        if current_user() is not None:
            return RedirectResponse(target)
        client = _client(request)
        page_cookie = request.cookies.get(devices.COOKIE)

        async def attempt() -> None:
            user, why, _ = await login_check(name.value.strip(), password.value, client, _device_cookie(page_cookie))
            if user is None:
                message.text = why
                message.visible = True
                return
            # signed in under a new session id, not this one (which was made before the login and
            # may be known to someone else): /login/finish switches the browser over
            ticket = ctx().tickets.issue(app.storage.browser["id"], {
                "name": user.name, "role": user.role, "account": _fingerprint(user),
                "expires": time.time() + ctx().cfg.gui.session_hours * 3600}, target)
            ui.navigate.to(f"/login/finish?ticket={ticket}")

        with ui.card().classes("absolute-center w-80"):
            ui.label("hoardfs").classes("text-h5")
            name = ui.input("Name").props("autofocus").classes("w-full")
            password = ui.input("Password", password=True, password_toggle_button=True).classes("w-full")
            password.on("keydown.enter", attempt)
            message = ui.label(RETRY if retry else "").classes("text-negative")
            message.visible = bool(retry)
            ui.button("Sign in", on_click=attempt).classes("w-full")
        return None

    @app.get("/login/finish")
    def finish(request: Request, ticket: str = "") -> RedirectResponse:
        """Redeem the form's ticket: the session id the browser signed in with is emptied and
        replaced (a new cookie); the signed-in state goes to the new id."""
        redeemed = ctx().tickets.redeem(ticket, request.session.get("id"))
        if redeemed is None:
            return RedirectResponse("/login?retry=1", status_code=303)
        state, target = redeemed
        app.storage.user.clear()  # the old id's storage: anyone holding the old cookie finds nothing
        fresh = str(uuid.uuid4())  # as NiceGUI makes them
        request.session["id"] = fresh  # the session middleware sends the new cookie with this answer
        ctx().tickets.hand_over(fresh, state)
        answer = RedirectResponse(_safe_target(target), status_code=303)
        try:
            account = users_mod.users(ctx().cfg).get(state["name"])
        except users_mod.UserError:
            account = None
        if account is not None:  # this browser signed in as them: their device from now on
            ctx().devices.give(answer, account, _secure(request))
        return answer

    @app.post("/logout")
    def logout(request: Request) -> Response:
        """Sign out: the session's storage is emptied on the server (a copy of the cookie is signed
        out too) and the browser gets a new session id. A POST (the header's Sign out form), never
        a GET: a GET is what an `<img>` or a link makes, and no markup a page shows may sign its
        viewer out (GET answers 405). Only from the GUI's own pages (`_not_from_the_gui`, the rule
        of /rq's actions): another site's page cannot sign a person out."""
        if why := _not_from_the_gui(request):
            return PlainTextResponse(f"refused: this sign-out was not made by the GUI's pages or a typed address — "
                                     f"{why}; use Sign out in the GUI itself", status_code=403)
        app.storage.user.clear()
        request.session["id"] = str(uuid.uuid4())
        return RedirectResponse("/login", status_code=303)
