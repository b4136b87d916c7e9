"""HTTP ingest against clients that misbehave on purpose: a sender that goes quiet or drips a
byte now and then. A real `hoard gui` on the test PostgreSQL and Redis, real sockets and httpx."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import httpx
import pytest

from tests.http_ingest import Server, answer, connect, ingest_server, multipart, prepare, raw_request, until

#: this module's server: an upload quiet for 3 s, or slower than 1 KiB/s past those 3 s, is
#: ended
SLOW = "idle_timeout_s = 3\nmin_rate_kib_s = 1\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str]) -> Iterator[Server]:
    """The module's `hoard gui` (tests.http_ingest), with SLOW."""
    with ingest_server(tmp_path_factory, servers, lambda cfg_path: prepare(cfg_path, api=SLOW)) as srv:
        yield srv


@pytest.mark.expect_log(r"HTTP upload upload-\w+ of scraper ended after \d+ parts", level="WARNING")
def test_a_sender_that_goes_quiet_or_drips_is_ended_and_nothing_kept(server: Server) -> None:
    """A client that opens an upload and then sends nothing, and one that sends a byte every
    half second, are each answered 408 naming the limit it broke (api.idle_timeout_s,
    api.min_rate_kib_s) and the connection closed: the upload's temporary directory and its
    reservation of 3A are gone, no batch appeared, the GUI's log says so, and the next upload
    goes through."""
    from fsd.base import config
    from fsd.outputs import zones

    cfg = config.load(server.cfg_path)
    assert (cfg.api.idle_timeout_s, cfg.api.min_rate_kib_s) == (3, 1)
    url, gui_log = server.url, server.cfg_path.parent / "gui.log"
    before = server.batches()
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"a.png", os.urandom(50_000)),
                               ("files", b"a.png.json", b"{}")])
    head = server.auth() | headers | {"Content-Length": str(len(body))}

    with connect(url) as sock:  # quiet: a part of the body, then nothing
        raw_request(sock, url, head, body[:20_000])
        until(lambda: any((server.zone3a / ".tmp").glob("upload-*/a.png")), "the upload under way")
        held = [r.id for r in zones.reservations(cfg, "3A")]
        assert len(held) == 1 and held[0].startswith("upload-")  # reserved while it is received
        status, doc = answer(sock)
        assert sock.recv(1) == b""  # and the connection closed
    assert status == 408 and "no byte of the body came for 3 s (api.idle_timeout_s)" in doc["error"], doc
    assert "send the batch again" in doc["error"]
    assert server.batches() == before and zones.reservations(cfg, "3A") == []
    until(lambda: f"HTTP upload {held[0]} of scraper ended" in gui_log.read_text(), "the GUI's log line")

    with connect(url) as sock:  # dripping: a byte every half second, never quiet for 3 s
        raw_request(sock, url, head, body[:100])
        sent = 100
        while not select.select([sock], [], [], 0.5)[0]:
            assert sent < 100 + 240, "the dripping upload was never ended"  # (2 minutes: the old code)
            try:
                sock.sendall(body[sent:sent + 1])
            except OSError:  # (answered and closed between the look and the byte)
                break
            sent += 1
        status, doc = answer(sock)
    assert status == 408 and "less than api.min_rate_kib_s = 1 KiB/s" in doc["error"], doc
    assert server.batches() == before and zones.reservations(cfg, "3A") == []
    until(lambda: gui_log.read_text().count("nothing kept, its reservation in 3A released") == 2, "both log lines")
    assert "Traceback" not in gui_log.read_text()

    whole = httpx.post(f"{url}/api/v1/batches", headers=server.auth() | headers, content=body, timeout=60)
    assert whole.status_code == 202, whole.text
    assert zones.reservations(cfg, "3A") == []
