"""What one scraper's token can hold of zone 3A through `POST /api/v1/batches` (a real `hoard
gui` on the test PostgreSQL and Redis, raw-socket clients that stop half-way): an upload holds
what has arrived, not what it declares, and a token's uploads under way are capped in number
and in declared bytes (api.max_uploads_per_token, api.max_reserved_mb_per_token)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hoardfs.base import config
from hoardfs.fsd.outputs import zones
from tests.http_ingest import Server, answer, connect, ingest_server, multipart, raw_request, until

MiB = 1 << 20
#: 3A's quota: 50 MiB, deny at 45 MiB
QUOTA_MB = 50


def _prepare(cfg_path: Path) -> None:
    text = cfg_path.read_text().replace("[ssd.zones.3A]\nquota_gb = 1\n", f"[ssd.zones.3A]\nquota_gb = {QUOTA_MB / 1024}\n")
    cfg_path.write_text(text + "\n[api]\nmax_batch_mb = 48\nmax_uploads_per_token = 2\nmax_reserved_mb_per_token = 50\n"
                        "idle_timeout_s = 120\n\n[ingest]\nsettle_s = 0.05\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str]) -> Iterator[Server]:
    with ingest_server(tmp_path_factory, servers, _prepare) as srv:
        yield srv


def _token(srv: Server, name: str) -> str:
    res = srv.hoard("tokens", "add", name)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _held_by(srv: Server, who: str) -> list[zones.Reservation]:
    return [r for r in zones.reservations(config.load(srv.cfg_path), "3A") if r.job.endswith(f" of {who}")]


@contextlib.contextmanager
def _stalled(srv: Server, token: str, declared: int, sent: int = 64 << 10) -> Iterator[socket.socket]:
    """An upload declaring `declared` bytes of which only the first `sent` come (its file's
    first bytes): under way until the connection closes."""
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"a.bin", b"")])
    head, tail = body.split(b"\r\n\r\n\r\n", 1)  # (the file's content goes between)
    start = head + b"\r\n\r\n" + os.urandom(sent)
    sock = connect(srv.url)
    try:
        raw_request(sock, srv.url, srv.auth(token) | headers | {"Content-Length": str(declared)}, start)
        yield sock
    finally:
        sock.close()


def _small(srv: Server, token: str | None = None, size: int = 16) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/v1/batches", headers=srv.auth(token), data={"source": "sidecar"},
                      files=[("files", ("a.png", os.urandom(size))), ("files", ("a.png.json", b"{}"))], timeout=60)


def test_a_trickling_upload_declaring_most_of_3a_holds_none_of_it_from_others(server: Server) -> None:
    """A token's upload declaring all but 512 KiB of 3A's room below deny and sending a trickle
    (above any rate floor) made every other upload 507 for as long as it trickled: its size
    was held whole from its first byte. It holds what has arrived and a step ahead: another
    token's 1 MiB batch is taken (202) while it trickles, and when it goes away nothing of it
    stays."""
    cfg = config.load(server.cfg_path)
    room = int(cfg.ssd.thresholds.deny * zones.quota(cfg, "3A")) - zones.zone_bytes(cfg, "3A")
    trickler = _token(server, "trickler")
    before = server.batches()
    with _stalled(server, trickler, room - 512 * 1024) as sock:
        until(lambda: len(_held_by(server, "trickler")) == 1, "the trickling upload under way")
        sock.sendall(os.urandom(2048))  # (a trickle: 2 KiB more)
        r = _small(server, size=MiB)
        assert r.status_code == 202, r.text
        [held] = _held_by(server, "trickler")
        assert held.bytes < 20 * MiB, held
    until(lambda: not _held_by(server, "trickler"), "the trickling upload's room let go")
    assert server.batches() == before | {r.json()["batch"]}


def test_a_tokens_uploads_under_way_are_capped_in_number_and_declared_bytes(server: Server) -> None:
    """With api.max_uploads_per_token = 2 a token's third upload at once is 429 before its
    body is read, and with api.max_reserved_mb_per_token = 50 so is one whose size takes its
    uploads under way past 50 MiB — one line naming the key, nothing written; another token's
    upload is taken meanwhile, and the token's own once it is within its caps again."""
    greedy = _token(server, "greedy")
    before = server.batches()

    def refused(declared: int) -> tuple[int, dict]:
        headers, _ = multipart([("source", None, b"sidecar")])
        with connect(server.url) as sock:
            sock.settimeout(20)  # (a cap not applied: the server waits for the body, the test does not)
            raw_request(sock, server.url, server.auth(greedy) | headers | {"Content-Length": str(declared)})
            return answer(sock)

    with _stalled(server, greedy, 30 * MiB):
        with _stalled(server, greedy, 1 * MiB):
            until(lambda: len(_held_by(server, "greedy")) == 2, "two of the token's uploads under way")
            status, doc = refused(4096)
            assert status == 429 and "api.max_uploads_per_token = 2" in doc["error"], (status, doc)
            assert "\n" not in doc["error"] and "send the batch again" in doc["next_step"]
            assert _small(server).status_code == 202  # another token: not held back
        until(lambda: len(_held_by(server, "greedy")) == 1, "one of the token's uploads ended")
        status, doc = refused(21 * MiB)
        assert status == 429 and "api.max_reserved_mb_per_token = 50 MiB" in doc["error"], (status, doc)
        r = _small(server, greedy)
        assert r.status_code == 202, r.text
    until(lambda: not _held_by(server, "greedy"), "the token's uploads' room let go")
    assert len(server.batches() - before) == 2 and not any(b.startswith(".tmp/") for b in server.batches())
