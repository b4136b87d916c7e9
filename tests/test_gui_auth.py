"""`hoard gui` slice 1: login, roles, sessions, the limit on failed logins, `/health/*`,
`/metrics`, and `hoard users` — against the real test PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gui_fixtures import FROM_THE_GUI, PASSWORDS, gui_home, sign_in, sign_out, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def test_every_page_asks_for_a_login(user) -> None:
    """Signed out, each page sends the browser to the login form, which returns there after."""
    for path in ("/", "/storage", "/users", "/runs", "/launch", "/batches", "/assets", "/pipelines",
                 f"/node/{'a' * 64}", "/runs/ingest/x", "/actions", "/actions/thumbnail", "/runs/action/x-v1-0123456789ab"):
        await user.open(path)
        await user.should_see("Sign in")
    for path in (f"/thumb/{'a' * 64}", "/rq/", "/rq/0/data/queues.json"):
        r = await user.http_client.get(path, follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"].startswith("/login"), path
    await sign_in(user, "vera", then="")
    await user.should_see("Overview", retries=30)


async def test_login_returns_to_the_page_asked_for(user) -> None:
    """`/storage` signed out → login → `/storage`."""
    await user.open("/storage")
    user.find("Name").type("vera")
    user.find("Password").type(PASSWORDS["vera"])
    user.find("Sign in").click()
    await user.should_see("SSD zones", retries=30)


async def test_wrong_password_is_refused(user) -> None:
    await sign_in(user, "ada", "not-her-password", then="wrong name or password")
    await user.open("/")
    await user.should_see("Sign in")


async def test_unknown_name_answers_like_a_wrong_password(user) -> None:
    await sign_in(user, "nobody", "whatever-it-is", then="wrong name or password")


@pytest.mark.parametrize("gui_home", [{"login_attempts": 3}], indirect=True)
async def test_failed_logins_are_rate_limited(user) -> None:
    """After `gui.login_attempts` failures even the right password waits for the window."""
    for _ in range(3):
        await sign_in(user, "ada", "guessing-wrong", then="wrong name or password")
    await sign_in(user, "ada", then="too many failed logins")
    await user.open("/")
    await user.should_see("Sign in")


@pytest.mark.parametrize("gui_home", [{"session_hours": 0.0005}], indirect=True)  # 1.8 s
async def test_sessions_expire(user) -> None:
    await sign_in(user, "ada")
    await asyncio.sleep(2.0)
    await user.open("/storage")
    await user.should_see("Sign in")


async def test_sign_out(user) -> None:
    await sign_in(user, "otto")
    await sign_out(user)
    await user.should_see("Sign in")
    await user.open("/")
    await user.should_see("Sign in")


def _other_browser(cookies: dict[str, str]) -> httpx.AsyncClient:
    """A second HTTP client on the same app, holding `cookies` (someone who copied or planted them)."""
    from nicegui import app

    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test", cookies=cookies)


async def _signed_in(client: httpx.AsyncClient) -> bool:
    """Whether `client`'s cookie is a signed-in session: a page answers (not a redirect to /login)
    and /metrics answers without Basic credentials."""
    page = await client.get("/storage", follow_redirects=False)
    metrics = await client.get("/metrics")
    assert (page.status_code == 200) == (metrics.status_code == 200), (page.status_code, metrics.status_code)
    if page.status_code != 200:
        assert page.headers["location"].startswith("/login") and metrics.status_code == 401
    return page.status_code == 200


async def test_a_cookie_from_before_sign_in_stays_signed_out(user) -> None:
    """Session fixation: the session cookie a browser held before signing in (one an attacker
    could have planted there, or copied) is not signed in by that login — signing in gives the
    browser a new session id, and the old id's server-side storage is emptied."""
    await user.open("/login")
    before = dict(user.http_client.cookies)
    assert before.get("session"), before  # NiceGUI's signed session cookie, made on the first visit
    await sign_in(user, "otto")
    after = dict(user.http_client.cookies)
    assert after["session"] != before["session"]
    assert await _signed_in(user.http_client)
    async with _other_browser(before) as planted:
        assert not await _signed_in(planted)
    async with _other_browser(after) as copied:  # the new cookie is the session (the test's own check)
        assert await _signed_in(copied)


async def test_a_sign_in_ticket_works_once_and_only_in_its_browser(user) -> None:
    """The form's ticket to `/login/finish` signs in the browser that asked for it, once: replayed
    (from the same browser or another one) it signs nobody in and says why on the login page."""
    await user.open("/login")
    stranger_cookies = dict(user.http_client.cookies)
    await sign_in(user, "vera")
    finish = next(p for p in user.back_history if p.startswith("/login/finish?ticket="))
    async with _other_browser({}) as stranger:
        await stranger.get("/login")  # a browser with its own session
        r = await stranger.get(finish, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?retry=1"
        assert not await _signed_in(stranger)
    async with _other_browser(stranger_cookies) as same_browser_before:  # the ticket's own session id, replayed
        r = await same_browser_before.get(finish, follow_redirects=False)
        assert r.headers["location"] == "/login?retry=1"
        assert not await _signed_in(same_browser_before)
    await sign_out(user)
    await user.open(finish)
    await user.should_see("that sign-in did not finish: its ticket was used already")
    assert not await _signed_in(user.http_client)


async def test_sign_out_ends_the_session_on_the_server(user) -> None:
    """`/logout` empties the session server-side: a copy of the signed-in cookie is signed out
    too. Asked by another site's page (or another port of this host) it is refused."""
    await sign_in(user, "otto")
    signed_in = dict(user.http_client.cookies)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Referer": "http://evil.example/page"}, {"Origin": "http://127.0.0.1:18998"}):
        r = await user.http_client.post("/logout", headers=headers, follow_redirects=False)
        assert r.status_code == 403 and "another site's page" in r.text, headers
    assert await _signed_in(user.http_client)
    r = await user.http_client.post("/logout", headers={"Sec-Fetch-Site": "same-origin"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert not await _signed_in(user.http_client)
    async with _other_browser(signed_in) as copy:
        assert not await _signed_in(copy)


async def test_sign_out_and_rq_actions_need_to_say_where_they_came_from(user) -> None:
    """/logout and /rq's actions answer a typed address (Sec-Fetch-Site: none) and the GUI's own
    pages (same-origin; an old browser's Referer naming this host and port), and refuse a request
    with no Sec-Fetch-Site, Origin or Referer — a script, or an old browser on which another
    site's page can withhold them — signing nobody out."""
    await sign_in(user, "otto")
    signed_in = dict(user.http_client.cookies)
    async with _other_browser(signed_in) as bare:  # no header but the cookie
        r = await bare.post("/logout", follow_redirects=False)
        assert r.status_code == 403 and "does not say where it came from" in r.text, r.text
        r = await bare.post("/rq/queue/ingest/failed/empty")
        assert r.status_code == 403 and "does not say where it came from" in r.json()["error"], r.text
        assert await _signed_in(bare)
        r = await bare.post("/rq/queue/ingest/failed/empty", headers={"Referer": "http://test/rq/"})
        assert r.status_code == 200, r.text
        r = await bare.post("/logout", headers={"Sec-Fetch-Site": "none"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert not await _signed_in(bare)
    assert not await _signed_in(user.http_client)  # the same session, signed out on the server
    await sign_in(user, "otto")
    r = await user.http_client.post("/logout", headers={"Referer": "http://test/storage"}, follow_redirects=False)
    assert r.status_code == 303 and not await _signed_in(user.http_client)  # an old browser's Sign out form


async def test_a_login_never_continues_to_an_acting_route(user, redis_conn) -> None:
    """`/login?redirect_to=/rq/requeue/ingest` (a link anyone can send) lands an operator on the
    overview after signing in; the failed job that route would requeue stays failed."""
    from rq import Queue
    from rq.job import Job, JobStatus

    q = Queue("ingest", connection=redis_conn)
    job = Job.create("builtins.print", args=("x",), id="failed-before-login", connection=redis_conn, origin="ingest")
    job.save()
    job.set_status(JobStatus.FAILED)
    q.failed_job_registry.add(job, exc_string="boom")
    try:
        await user.open("/login?redirect_to=/rq/requeue/ingest")
        user.find("Name").type("otto")
        user.find("Password").type(PASSWORDS["otto"])
        user.find("Sign in").click()
        await user.should_see("Overview", retries=30)
        assert not any(p.startswith("/rq") for p in user.back_history), user.back_history
        assert job.get_status(refresh=True) == JobStatus.FAILED and job.id in q.failed_job_registry
    finally:
        job.delete()


async def test_only_an_admin_manages_users(user) -> None:
    """A viewer and an operator see no Users link and are told so on /users."""
    for name in ("vera", "otto"):
        await sign_in(user, name)
        await user.should_not_see("Users")
        await user.open("/users")
        await user.should_see("Only an admin manages users")
        await sign_out(user)


async def test_admin_adds_and_removes_a_user(user, gui_home: Path) -> None:
    """The admin's form adds a user who can then sign in; a short password, and a short part
    repeated, are refused by name."""
    await sign_in(user, "ada")
    await user.open("/users")
    await user.should_see("vera")
    user.find("Name").type("newbie")
    user.find("Password").type("short")
    user.find(marker="user-add").click()
    await user.should_see("too short", retries=20)
    user.find("Password").clear().type("adminadmin12")  # a password once accepted
    user.find(marker="user-add").click()
    await user.should_see("a short part repeated", retries=20)
    user.find("Password").clear().type("long-enough-pw")
    user.find(marker="user-add").click()
    await user.should_see("added: newbie", retries=20)
    await sign_out(user)
    await sign_in(user, "newbie", "long-enough-pw")
    await sign_out(user)
    await sign_in(user, "ada")
    await user.open("/users")
    user.find("Name").type("newbie")
    user.find(marker="user-rm").click()
    await user.should_see("removed: newbie", retries=20)
    user.find("Name").clear().type("vera")
    user.find("Password").clear().type("vera-new-pass")
    user.find(marker="user-passwd").click()
    await user.should_see("password set: vera", retries=20)
    await sign_out(user)
    await sign_in(user, "vera", "vera-new-pass")


async def test_open_health_routes(user) -> None:
    """`/health/live` and `/health/ready` answer without a login; ready says only ready or not
    (the health document is `/api/health`'s: tests/test_gui_security.py)."""
    r = await user.http_client.get("/health/live")
    assert r.status_code == 200 and r.json() == {"ok": True}
    r = await user.http_client.get("/health/ready")
    assert r.status_code in (200, 503) and r.json() == {"ready": r.status_code == 200}


async def test_metrics_need_a_login(user) -> None:
    """`/metrics`: 401 without credentials, 200 with a user's Basic credentials, Prometheus text."""
    r = await user.http_client.get("/metrics")
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    r = await user.http_client.get("/metrics", headers=_basic("vera", "wrong-password!"))
    assert r.status_code == 401
    r = await user.http_client.get("/metrics", headers=_basic("vera", PASSWORDS["vera"]))
    assert r.status_code == 200, r.text
    text = r.text
    for name in ("hoard_objects", "hoard_stored_bytes", "hoard_replication_shards_below_target",
                 'hoard_disk_state{disk="hdd1",state="active"} 1.0', 'hoard_zone_used_ratio{zone="3A"}',
                 'hoard_jobs{queue="ingest",state="queued"} 0.0', 'hoard_up{part="database"} 1.0'):
        assert name in text, name


@pytest.mark.parametrize("gui_home", [{"login_attempts": 2}], indirect=True)
async def test_metrics_basic_auth_is_rate_limited(user) -> None:
    for _ in range(2):
        assert (await user.http_client.get("/metrics", headers=_basic("otto", "bad-bad-bad"))).status_code == 401
    r = await user.http_client.get("/metrics", headers=_basic("otto", PASSWORDS["otto"]))
    assert r.status_code == 429 and "too many failed logins" in r.json()["error"]


async def test_signed_in_browser_reads_metrics(user) -> None:
    await sign_in(user, "vera")
    r = await user.http_client.get("/metrics")
    assert r.status_code == 200 and "hoard_objects" in r.text


async def test_the_overview_and_the_redirect_are_safe(user) -> None:
    """A `redirect_to` pointing off-site is ignored after login."""
    await user.open("/login?redirect_to=//evil.example/")
    user.find("Name").type("vera")
    user.find("Password").type(PASSWORDS["vera"])
    user.find("Sign in").click()
    await user.should_see("Overview", retries=30)


# -- `hoard users` and `hoard gui` on the command line -------------------------------------

def hoard(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def test_users_commands(hoard_home: Path) -> None:
    """add (password from stdin), list --json, passwd, rm; refusals are one line, exit 2; the
    users file holds argon2 hashes only, mode 0600."""
    cfg = hoard_home / "hoard.toml"
    assert hoard(cfg, "init").returncode == 0
    res = hoard(cfg, "users", "add", "ada", "--role", "admin", "--password-stdin", stdin="s3cret-pass\n")
    assert res.returncode == 0, res.stderr
    listed = json.loads(hoard(cfg, "users", "list", "--json").stdout)
    assert listed == [{"name": "ada", "role": "admin", "from": "users file"}]
    users_file = hoard_home / "ssd" / "state" / "gui" / "users.json"
    assert oct(users_file.stat().st_mode & 0o777) == "0o600"
    assert "s3cret-pass" not in users_file.read_text() and "$argon2id$" in users_file.read_text()
    for args, stdin, says in (
            (("users", "add", "ada", "--password-stdin"), "another-pass\n", "user ada exists"),
            (("users", "add", "bob", "--role", "boss"), None, "role 'boss' is not one of viewer, operator, admin"),
            (("users", "add", "bob"), None, "no terminal to ask for the password"),
            (("users", "add", "bob", "--password-stdin"), "short\n", "too short"),
            # once accepted for an admin
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "12345678\n", "too short"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "1234567890\n", "a common password"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "Password123!\n", "a common password"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), " " * 12 + "\n", "too few different"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "bob1234567890\n", "user's name"),
            # once accepted for an admin
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "adminadmin12\n", "a short part repeated"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "1qaz2wsx3edc\n", "a keyboard run"),
            (("users", "add", "bob", "--role", "admin", "--password-stdin"), "bobbob-qwerty\n", "mostly the user's name"),
            (("users", "passwd", "ada", "--password-stdin"), "passpass-2024\n", "a short part repeated"),
            (("users", "hash", "--password-stdin"), "Summer24Summer24\n", "a short part repeated"),
            (("users", "add", "Bad Name", "--password-stdin"), "long-enough-1\n", "is not allowed"),
            (("users", "passwd", "nosuch", "--password-stdin"), "long-enough-1\n", "no user nosuch"),
            (("users", "rm", "nosuch"), None, "no user nosuch")):
        res = hoard(cfg, *args, stdin=stdin)
        assert res.returncode == 2, (args, res.stderr)
        assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert hoard(cfg, "users", "passwd", "ada", "--password-stdin", stdin="new-pass-123\n").returncode == 0
    from hoardfs.base import config
    from hoardfs.jobs import users

    c = config.load(cfg)
    assert users.authenticate(c, "ada", "new-pass-123") and not users.authenticate(c, "ada", "s3cret-pass")
    assert hoard(cfg, "users", "rm", "ada").returncode == 0
    assert json.loads(hoard(cfg, "users", "list", "--json").stdout) == []


def test_passwords_made_of_patterns_are_refused() -> None:
    """The password check refuses what a guessing run's rules make from little (a short part
    repeated, keyboard and alphabet runs, the user's name and common passwords, together with
    fewer than six other characters), naming the pattern; it passes passphrases, passwords
    with a pattern and enough else, and random ones of 16 characters."""
    import secrets

    from hoardfs.jobs.users import weak_password

    for password, name, says in (
            ("adminadmin12", "ada", "a short part repeated (7 characters without the repeats"),
            ("Summer24Summer24", "", "a short part repeated"),
            ("qwertyqwerty", "", "a short part repeated"),
            ("abababab12xyz", "", "a short part repeated"),
            ("1qaz2wsx3edc", "", "mostly a keyboard run (only 0 other characters"),
            ("abcdefghijk", "", "mostly a keyboard run"),
            ("zaq12wsxcde", "", "mostly a keyboard run"),
            ("bobbob-qwerty", "bob", "mostly the user's name and a repeated part and a keyboard run"),
            ("bob-xx-qwert", "bob", "only 4 other characters; at least 6 needed"),
            ("letmein-4321", "", "mostly a common password and a keyboard run")):
        assert says in (weak_password(password, name) or ""), (password, weak_password(password, name))
    for password, name in (("admin-pass-1", "ada"), ("operator-pass-1", "otto"), ("Summer2024Summer2024", ""),
                           ("correct horse battery staple", ""), ("banana-split-7", ""), ("new-pass-123", "ada"),
                           ("xk3-pq9-zw", "")):
        assert weak_password(password, name) is None, (password, weak_password(password, name))
    for _ in range(2000):  # (one of 12 is refused once in ~6000 draws: `Ma-Ma-`; the demo draws again)
        password = secrets.token_urlsafe(12)
        assert weak_password(password, "demo") is None, password


def test_users_from_hoard_toml(hoard_home: Path) -> None:
    """[[gui.users]] with a hash from `hoard users hash` signs in; the CLI will not edit it."""
    cfg = hoard_home / "hoard.toml"
    hashed = hoard(cfg, "users", "hash", "--password-stdin", stdin="from-toml-pass\n")
    assert hashed.returncode == 0 and hashed.stdout.startswith("$argon2id$")
    cfg.write_text(cfg.read_text() + f'\n[[gui.users]]\nname = "root"\nrole = "admin"\n'
                                     f'password_hash = "{hashed.stdout.strip()}"\n')
    from hoardfs.base import config
    from hoardfs.jobs import users

    assert users.authenticate(config.load(cfg), "root", "from-toml-pass").role == "admin"
    res = hoard(cfg, "users", "rm", "root")
    assert res.returncode == 2 and "remove it there" in res.stderr


def test_gui_refuses_to_serve_without_users(hoard_home: Path) -> None:
    """Pages nobody can sign in to are not served: one line naming `hoard users add`, exit 2."""
    res = hoard(hoard_home / "hoard.toml", "gui")
    assert res.returncode == 2
    assert "hoard users add NAME --role admin" in res.stderr and "Traceback" not in res.stderr


# -- rq-dashboard under /rq ------------------------------------------------------------------

async def test_rq_dashboard_is_behind_the_login(user) -> None:
    """/rq: signed out → the login page; signed in → rq-dashboard's pages and JSON; a viewer's
    POST (requeue, delete, empty) is refused, an operator's is not."""
    r = await user.http_client.get("/rq/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"].startswith("/login")
    await sign_in(user, "vera")
    r = await user.http_client.get("/rq/")
    assert r.status_code == 200 and "RQ" in r.text and "/rq/static/" in r.text
    assert (await user.http_client.get("/rq/static/js/jquery-3.5.1.min.js")).status_code == 200
    r = await user.http_client.get("/rq/0/data/queues.json")
    assert r.status_code == 200 and "queues" in r.json()
    r = await user.http_client.get("/rq/0/data/workers.json")
    assert r.status_code == 200 and "workers" in r.json()
    for path in ("/rq/queue/ingest/failed/empty", "/rq/requeue/ingest"):
        r = await user.http_client.post(path)
        assert r.status_code == 403 and "may look but not act" in r.json()["error"]
    await sign_out(user)
    await sign_in(user, "otto")
    r = await user.http_client.post("/rq/queue/ingest/failed/empty", headers=FROM_THE_GUI)
    assert r.status_code == 200, r.text


async def test_a_session_ends_with_its_account(user, gui_home: Path) -> None:
    """A session opened before the user was demoted, given a new password or removed ends at
    its next request (the session is tied to the account as it was at sign-in)."""
    cfg = gui_home
    await sign_in(user, "otto")
    assert (await user.http_client.get("/metrics")).status_code == 200
    assert hoard(cfg, "users", "rm", "otto").returncode == 0
    added = hoard(cfg, "users", "add", "otto", "--role", "viewer", "--password-stdin", stdin="operator-pass-1\n")
    assert added.returncode == 0, added.stderr
    r = await user.http_client.post("/rq/queue/ingest/failed/empty", follow_redirects=False)
    assert r.status_code in (302, 307, 401, 403), r.status_code  # not the operator's 200
    await user.open("/storage")
    await user.should_see("Sign in")
    await sign_in(user, "otto")  # as the viewer now
    r = await user.http_client.post("/rq/queue/ingest/failed/empty")
    assert r.status_code == 403 and "may look but not act" in r.json()["error"]
    assert hoard(cfg, "users", "passwd", "otto", "--password-stdin", stdin="a-new-password\n").returncode == 0
    await user.open("/storage")
    await user.should_see("Sign in")


async def test_rq_acts_only_from_the_gui_itself(user) -> None:
    """An operator's browser sent a requeue/delete by another site's page (another port of
    the same host: SameSite does not tell ports apart) is refused."""
    await sign_in(user, "otto")
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://127.0.0.1:18998"},
                    {"Referer": "http://evil.example/page"}):
        r = await user.http_client.post("/rq/queue/ingest/failed/empty", headers=headers)
        assert r.status_code == 403 and "another site" in r.json()["error"], headers
    r = await user.http_client.post("/rq/queue/ingest/failed/empty", headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200, r.text


async def test_rq_shows_job_text_as_text(user, redis_conn) -> None:
    """A job whose description holds markup (a scraped file's name, a form's value) comes out
    of /rq's JSON HTML-escaped: its templates insert it unescaped."""
    from hoardfs.jobs.queues import rq_queue

    evil = "<img src=x onerror=alert(1)>"
    job = rq_queue("maintenance", redis_conn).enqueue("builtins.print", evil, description=f"verify {evil}")
    try:
        await sign_in(user, "vera")
        r = await user.http_client.get(f"/rq/0/data/job/{job.id}.json")
        assert r.status_code == 200, r.text
        assert evil not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.json()["description"]
    finally:
        job.delete()


def test_only_a_plain_local_path_follows_a_login() -> None:
    """`redirect_to` values a browser could turn into another site are replaced by `/`."""
    from hoardfs.gui.auth import _safe_target

    for bad in ("//evil.example/", "/\t/evil.example/x", "/\n/evil.example", "\\\\evil.example", "/\\evil.example",
                "https://evil.example/", "/a b", "/x\x7f"):
        assert _safe_target(bad) == "/", repr(bad)
    for good in ("/", "/storage", "/runs?kind=export&status=failed", "/node/" + "a" * 64, "/rq/", "/rq",
                 "/rq/0/view/jobs", "/rq/0/view/job/abc", "/login?redirect_to=/storage"):
        assert _safe_target(good) == good


def test_a_login_does_not_continue_to_a_route_that_acts() -> None:
    """Sign out, finish a sign-in, a program's `/api/…`, rq-dashboard's acting routes (requeue
    on GET; its JSON too): after a login these land on `/` — in every spelling that reaches them
    (percent-encoded, dot segments the browser resolves, a trailing slash)."""
    from hoardfs.gui.auth import _safe_target

    for acting in ("/logout", "/logout/", "/logout?x=1", "/%6cogout", "/%6Cogout", "/storage/../logout",
                   "/./logout", "/%2e%2e/logout", "/login/finish?ticket=abc", "/login/finish/", "/api/x", "/api",
                   "/rq/requeue/ingest", "/rq/%72equeue/ingest", "/rq%2Frequeue%2Fingest", "/rq/0/../requeue/x",
                   "/rq/queue/ingest/failed/empty", "/rq/job/abc/delete", "/rq/job/abc/requeue",
                   "/rq/queue/ingest/compact", "/rq/0/data/queues.json",
                   # dot segments a browser resolves keeping empty ones (a server's normpath drops them)
                   "/rq//../requeue//../ingest", "/logout//..", "/rq/%2F../requeue/x", "/x/%2e/logout"):
        assert _safe_target(acting) == "/", acting


def test_the_limits_of_failed_logins() -> None:
    """Failures count before the check: per name at one client (`attempts`), per name everywhere
    (four times as many; one client adds at most `attempts`), per client (four times as many:
    then one try per name that has not failed there yet). A correct password forgives the name's
    failures at that client only; a check that never ran (busy) is not a failure; no key is kept
    once its window has passed."""
    import time

    from hoardfs.jobs.users import LoginLimiter

    lim = LoginLimiter(attempts=3, window_s=2.0)

    def fail(name: str, client: str) -> None:
        token, wait = lim.begin(name, client)
        assert token is not None and wait == 0, (name, client, wait)

    for _ in range(3):
        fail("ada", "127.0.0.1")
    assert lim.begin("ada", "127.0.0.1")[0] is None and lim.begin("ada", "127.0.0.1")[1] > 1
    token, _ = lim.begin("vera", "127.0.0.1")
    lim.end("vera", "127.0.0.1", token, succeeded=True)  # another name at the same address
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # ada from elsewhere: 3 + 9 = 12, her limit everywhere
        for _ in range(3):
            fail("ada", client)
        assert lim.begin("ada", client)[0] is None
    assert lim.begin("ada", "10.0.0.9")[0] is None  # locked everywhere
    for n in range(9):  # 3 (ada) + 9 failures here: 12, the client's limit
        fail(f"name{n}", "127.0.0.1")
    token, _ = lim.begin("vera", "127.0.0.1")  # not locked: still checked
    assert token is not None
    lim.end("vera", "127.0.0.1", token, succeeded=False)  # busy: not counted
    fail("other", "127.0.0.1")
    assert lim.begin("name0", "127.0.0.1")[0] is None  # one try per name past the client's limit
    token, _ = lim.begin("otto", "10.0.0.5")
    lim.end("otto", "10.0.0.5", token, succeeded=False)
    time.sleep(2.05)
    fail("ada", "127.0.0.1")
    fail("name0", "127.0.0.1")
    assert set(lim._failures) == {"p:127.0.0.1\0ada", "n:ada", "c:127.0.0.1", "p:127.0.0.1\0name0", "n:name0",
                                  *(k for n in range(1, 9) for k in (f"p:127.0.0.1\0name{n}", f"n:name{n}")),
                                  "p:127.0.0.1\0other", "n:other",
                                  *(k for c in ("10.0.0.1", "10.0.0.2", "10.0.0.3") for k in (f"p:{c}\0ada", f"c:{c}"))}
    lim.SWEEP_AT = 0
    fail("ada", "127.0.0.2")
    assert set(lim._failures) == {"p:127.0.0.1\0ada", "n:ada", "c:127.0.0.1", "p:127.0.0.1\0name0", "n:name0",
                                  "p:127.0.0.2\0ada", "c:127.0.0.2"}


def test_sign_in_tickets_are_short_lived_and_one_use() -> None:
    """A ticket redeems once, only for the session id it was issued to (a wrong one spends it),
    and not after its life; a handed-over state is claimed once, and not after its life."""
    import time

    from hoardfs.gui.tickets import Tickets

    t = Tickets(life_s=0.3)
    state = {"name": "ada", "role": "admin"}
    ok = t.issue("session-1", state, "/storage")
    assert t.redeem(ok, "session-1") == (state, "/storage")
    assert t.redeem(ok, "session-1") is None
    wrong = t.issue("session-1", state, "/")
    assert t.redeem(wrong, "session-2") is None and t.redeem(wrong, "session-1") is None
    assert t.redeem("not-a-ticket", "session-1") is None and t.redeem(t.issue("session-1", state, "/"), None) is None
    late = t.issue("session-1", state, "/")
    t.hand_over("session-3", state)
    t.hand_over("session-4", state)
    assert t.claim("session-3") == state and t.claim("session-3") is None
    time.sleep(0.35)
    assert t.redeem(late, "session-1") is None and t.claim("session-4") is None
