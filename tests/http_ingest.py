"""What the HTTP ingest tests share (tests/test_gui_http_ingest*.py): a real `hoard gui` with a
scraper's token (`server`), a synthetic gallery-dl batch (`gallery`), and clients that write a
request byte by byte — a hostile or stalling client is not something httpx can be made to be."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from tests.conftest import write_home
from tests.gui_browser import child_env
from tests.gui_fixtures import gui_process
from tests.helpers import fresh_schema, wait_until

QUOTA_GB = 50 / 1024
API = """
[api]
max_batch_mb = 8
max_file_mb = 2

[ingest]
settle_s = 0.05

[sources]
gallery = "gallery_dl"
"""


@dataclass
class Server:
    url: str
    cfg_path: Path
    token: str

    @property
    def zone3a(self) -> Path:
        from hoardfs.base import config

        return config.load(self.cfg_path).ssd.zone_path("3A")

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def hoard(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(self.cfg_path), *args],
                              capture_output=True, text=True, env=child_env())

    def batches(self) -> set[str]:
        """The batch directories of 3A, and anything left under 3A/.tmp."""
        z = self.zone3a
        return ({p.name for p in z.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
                | {f".tmp/{p.name}" for p in (z / ".tmp").glob("*")})


def prepare(cfg_path: Path, quota_gb: float = QUOTA_GB, api: str = "") -> None:
    """The test's limits in the home's hoard.toml: 3A's quota, [api] (with the keys `api` adds), a
    `gallery` source."""
    text = cfg_path.read_text().replace("[ssd.zones.3A]\nquota_gb = 1\n", f"[ssd.zones.3A]\nquota_gb = {quota_gb}\n")
    cfg_path.write_text(text + API.replace("[api]\n", "[api]\n" + api))


@contextlib.contextmanager
def ingest_server(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str],
                  prepared: Callable[[Path], None] = prepare) -> Iterator[Server]:
    """A `hoard gui` on a fresh home and schema, its config `prepared`, with a scraper's token.
    The test Redis is emptied after: the batches queued here and never worked must not reach
    another module's worker (it refuses a job naming another configuration, loudly)."""
    r = redis.Redis.from_url(servers["redis_url"])
    r.flushdb()
    home = write_home(tmp_path_factory.mktemp("http-ingest"), servers)
    try:
        with fresh_schema(servers["database_url"]) as conn, gui_process(home, conn, prepared) as (url, cfg_path):
            res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "tokens", "add", "scraper"],
                                 capture_output=True, text=True, env=child_env())
            assert res.returncode == 0, res.stderr
            yield Server(url, cfg_path, res.stdout.strip())
    finally:
        r.flushdb()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str]) -> Iterator[Server]:
    """One `hoard gui` for the module (its start takes seconds): `ingest_server`."""
    with ingest_server(tmp_path_factory, servers) as srv:
        yield srv


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    """A synthetic gallery-dl batch (media + JSON sidecars) outside 3A, as a scraper holds it."""
    from hoardfs.adapters.synth import Spec, generate

    batch = generate(tmp_path / "scraped", Spec(seed=5, batches=1, items_per_batch=5, sources=("gallery",),
                                                large_max_mb=1))[0]
    return tmp_path / "scraped" / batch.batch_id


def files_of(root: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (p.relative_to(root).as_posix(), p.read_bytes())) for p in sorted(root.rglob("*")) if p.is_file()]


def multipart(parts: list[tuple[str, bytes | None, bytes]], boundary: str = "b0undary") -> tuple[dict[str, str], bytes]:
    """A multipart/form-data body written byte by byte (httpx escapes what a hostile client
    would send as it is): parts of (field, raw file name or None, content)."""
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"'.encode() + (b'; filename="' + filename + b'"' if filename is not None else b"")
        out += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp + b"\r\n\r\n" + content + b"\r\n"
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, out + b"--" + boundary.encode() + b"--\r\n"


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=60)


def raw_request(sock: socket.socket, url: str, headers: dict[str, str], body: bytes = b"") -> None:
    host = urlsplit(url).netloc
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items())
    sock.sendall(f"POST /api/v1/batches HTTP/1.1\r\n{head}\r\n".encode() + body)


def answer(sock: socket.socket) -> tuple[int, dict]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read())


def until(cond, what: str, timeout: float = 60.0) -> None:
    wait_until(cond, timeout, f"never happened: {what}")
