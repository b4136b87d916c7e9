"""A real HTTP proxy in front of a real S3 engine that answers the faults an engine shows:
5xx answers and slow answers (`FaultProxy`). Every request is read whole, then either answered
with the fault or sent on to the engine unchanged — its Host header too, so the client's SigV4
signature still holds — and the engine's answer is sent back. Nothing of S3 is imitated: a
request that gets no fault gets the engine's own answer.

    with FaultProxy(engine.endpoint) as proxy:
        proxy.fail(2)          # the next two requests are answered 503 SlowDown
        proxy.fail(9, after=3) # three requests get through, then nine are answered 503
        proxy.flaky()          # every request meets one 503 first (each other one is answered 503)
        proxy.delay(5.0)       # every request waits 5 s before it is sent on
        proxy.cut(12 << 20)    # the next answer whose body is longer stops after 12 MiB
        proxy.requests         # how many requests reached the proxy
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: the body of the 5xx answer: what an engine that sheds load says (S3's SlowDown)
_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate.</Message></Error>")
#: hop-by-hop headers a proxy does not pass on
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultProxy:
    """A proxy on `bind` (127.0.0.1 by default; its `endpoint`) in front of the engine at
    `upstream` — another address lets a host in a network namespace reach the engine."""

    def __init__(self, upstream: str, bind: str = "127.0.0.1") -> None:
        url = urlsplit(upstream)
        self._up = (url.hostname or "127.0.0.1", url.port or 80)
        self._lock = threading.Lock()
        self._failing, self._status, self._delay, self._flaky, self._passed = 0, 503, 0.0, False, False
        self._through = 0  # requests that still get through before the failing ones
        self._cut: int | None = None
        self.requests = self.faults = self.cuts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # (the base's name)
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, delay = proxy._next()
                if delay:
                    time.sleep(delay)
                if status:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(*proxy._up, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in _HOP:
                            conn.putheader(k, v)
                    conn.endheaders(body or None)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status, r.reason)
                    for k, v in r.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                           else int(r.getheader("Content-Length") or 0)))
                    self.end_headers()
                    if self.command != "HEAD":
                        cut = proxy._cut_at(len(data))
                        self.wfile.write(data if cut is None else data[:cut])
                        if cut is not None:  # the Content-Length promised more: the client sees a body cut short
                            self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up (a timeout) or an engine stopped: the client sees it

        self._server = Server((bind, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{bind}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    def _next(self) -> tuple[int, float]:
        with self._lock:
            self.requests += 1
            if self._failing and self._through:
                self._through -= 1
                return 0, self._delay
            if self._failing or (self._flaky and self._passed):
                self._failing = max(0, self._failing - 1)
                self.faults += 1
                self._passed = False
                return self._status, self._delay
            self._passed = True
            return 0, self._delay

    def _cut_at(self, length: int) -> int | None:
        with self._lock:
            if self._cut is None or length <= self._cut:
                return None
            cut, self._cut = self._cut, None
            self.cuts += 1
            return cut

    def cut(self, after: int) -> None:
        """Stop the body of the next answer longer than `after` bytes after that many (its
        Content-Length the whole body's, the connection closed): an engine that breaks off."""
        with self._lock:
            self._cut = after

    def fail(self, n: int, status: int = 503, after: int = 0) -> None:
        """Answer the next `n` requests with `status` (0: none) — those after the next `after`,
        which get through: an engine that stops answering part way through a series of requests."""
        with self._lock:
            self._failing, self._status, self._through = n, status, after

    def flaky(self, on: bool = True) -> None:
        """Answer 503 to each request that follows one that got through: a client that tries
        again gets every request through, each after one 503."""
        with self._lock:
            self._flaky, self._passed = on, True

    def delay(self, seconds: float) -> None:
        """Hold every request `seconds` before it is answered (0: none)."""
        with self._lock:
            self._delay = seconds

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
