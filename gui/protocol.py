"""A deadline on each request's head (`gui.header_timeout_s`): uvicorn has none.

uvicorn's only timeout before a request is its keep-alive one, armed after a response and
disarmed by the next byte that arrives; a new connection has none at all. Without more, a
client that opens a connection and sends nothing, or one header line a second, holds it (and a
file descriptor, and a place among the server's connections) for as long as it likes (the
slowloris attack). ASGI middleware cannot help: it runs once the head is parsed.

`HeadTimeout` is uvicorn's httptools protocol with a timer from the moment a connection is
made, and from the first byte of each later request, to the end of that request's head; when it
fires first the client gets `408 Request Timeout` and the connection is closed.

A body gets the same deadline, from the end of its head to its last byte: a body dribbled one
byte a second held the connection as long as a dribbled head did — answered without its body
(a 401, a 403) the connection stayed open for the rest of it, since uvicorn reads and drops what
a request still sends. The HTTP upload's body (UPLOAD_PATH) is timed by its own rules while it
is read (`api.idle_timeout_s`, `api.min_rate_kib_s`), and by this deadline from the moment it was
answered without being read whole. Websockets once upgraded and responses are not timed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_WHY = b"the request's head did not arrive in time (gui.header_timeout_s); send it at once\n"
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(_WHY), _WHY))
_WHY_BODY = b"the request's body did not arrive in time (gui.header_timeout_s); send it at once\n"
BODY_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(_WHY_BODY), _WHY_BODY))
#: the HTTP upload's path (hoardfs.gui.api): its body is timed by its own rules while it is read
UPLOAD_PATH = "/api/v1/batches"


def head_timeout(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=`: HeadTimeout with `seconds` as its deadline."""
    return type("HeadTimeout", (HeadTimeout,), {"timeout_s": seconds})


class HeadTimeout(HttpToolsProtocol):
    timeout_s: float = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_body = False  # a request's head arrived, its body's last byte not yet

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first head, from the first moment: sending nothing is slow too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a later request on a kept-alive connection: from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._in_body = True
        if self.scope.get("path") != UPLOAD_PATH:
            self._arm_body()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm_body()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body:  # answered before its body came whole: the rest comes in time, or not at all
            self._arm_body()

    def _arm_body(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.timeout_s, self._body_timed_out)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        log.info("closed a connection from %s: its request's body took longer than %s s (gui.header_timeout_s)",
                 self.client[0] if self.client else "a unix socket", self.timeout_s)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(BODY_TIMED_OUT)
        self.transport.close()

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        log.info("closed a connection from %s: its request's head took longer than %s s (gui.header_timeout_s)",
                 self.client[0] if self.client else "a unix socket", self.timeout_s)
        if self.cycle is None or self.cycle.response_complete:  # no answer of an earlier request under way
            self.transport.write(TIMED_OUT)
        self.transport.close()
