"""The headers every answer of `hoard gui` carries (docs/security.md): a Content-Security-Policy,
`X-Frame-Options: DENY`, `nosniff`, a same-origin Referrer-Policy.

What NiceGUI needs of the policy (found in Chromium, tests/test_gui_security.py): its page
template has inline scripts (the import map, `addStyle`, the module that creates the Vue app
with the page's elements), so every HTML answer gets a fresh nonce written into each of its
`<script>` tags — an inline script the page did not send itself (an event-handler attribute, a
`javascript:` URL) does not run; Vue compiles component templates in the browser and NiceGUI
runs `run_javascript` and JS event handlers with `new Function`, so `'unsafe-eval'`; Quasar,
Tailwind's browser build and NiceGUI's `addStyle` write `<style>` elements and style
attributes, so `style-src 'unsafe-inline'` (CSS cannot run script; with `img-src`, `font-src`
and `connect-src` limited to this origin it cannot load or send anything elsewhere either).
rq-dashboard's pages (under /rq) are served the same way: their inline scripts get the nonce,
and underscore's templates need `'unsafe-eval'` too.

The nonce is only ever written into `<script` tags that are in the HTML as sent: every page's
text from outside is escaped there (NiceGUI writes its elements as JSON with `<` escaped, Jinja
escapes rq-dashboard's), so no value can bring a `<script` of its own to be given one.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def policy(nonce: str) -> str:
    return "; ".join((
        "default-src 'self'",
        f"script-src 'self' 'nonce-{nonce}' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


#: the other headers of every answer
FIXED = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}

SCRIPT_TAG = re.compile(rb"<script(?=[\s>])", re.IGNORECASE)


class SecurityHeaders:
    """ASGI middleware: the headers on every HTTP answer; the nonce into an HTML answer's scripts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        held: Message | None = None  # an HTML answer's start, sent once its body is complete
        body: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = policy(nonce)
                for name, value in FIXED.items():
                    headers[name] = value
                if headers.get("content-type", "").startswith("text/html") and "content-encoding" not in headers:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                html = SCRIPT_TAG.sub(f'<script nonce="{nonce}"'.encode(), b"".join(body))
                MutableHeaders(scope=held)["content-length"] = str(len(html))
                await send(held)
                await send({"type": "http.response.body", "body": html})
                return
            await send(message)

        await self.app(scope, receive, sending)
