"""HTTP ingest against clients that misbehave on purpose: a sender that goes quiet or drips a
byte now and then, an Idempotency-Key sent again with another request, and a scraper that
swaps its batch directory for a link while the server checks the manifest. A real `hoard gui`
on the test PostgreSQL and Redis, real sockets and httpx."""

from __future__ import annotations

import os
import select
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_ingest import (  # noqa: F401 - fixtures
    Server,
    answer,
    connect,
    files_of,
    gallery,
    ingest_server,
    multipart,
    prepare,
    raw_request,
    until,
)

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


def test_an_idempotency_key_sent_with_another_request_is_422(server: Server, gallery: Path) -> None:
    """An Idempotency-Key used again with another request — a file fewer, a file changed, a
    file renamed, another source, another batch id — is 422 naming the key and the first batch,
    and makes no batch; the first request sent again (its parts in another order) still gets
    the first answer, replayed."""
    key = str(uuid.uuid4())
    files = files_of(gallery)

    def post(data: dict[str, str], parts: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
        return httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | {"Idempotency-Key": key},
                          data=data, files=parts, timeout=60)

    first = post({"source": "gallery"}, files)
    assert first.status_code == 202, first.text
    batch = first.json()["batch"]
    before = server.batches()
    name, content = files[0][1]
    changed = [("files", (name, content[:-1] + bytes([content[-1] ^ 1])))] + files[1:]
    renamed = [("files", ("x-" + name, content))] + files[1:]
    others = [({"source": "gallery"}, files[:-1]), ({"source": "gallery"}, changed), ({"source": "gallery"}, renamed),
              ({"source": "sidecar"}, files), ({"source": "gallery", "batch": "another-1"}, files)]
    for data, parts in others:
        r = post(data, parts)
        assert r.status_code == 422, (data, r.text)
        assert f"Idempotency-Key {key!r} was used for another request (batch {batch})" in r.json()["error"]
        assert "idempotent-replayed" not in r.headers
    assert server.batches() == before
    again = post({"source": "gallery"}, list(reversed(files)))
    assert again.status_code == 202 and again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert server.batches() == before
