"""What the GUI tests share: a real home (store on directory disks, the test PostgreSQL in a
fresh schema, the test Redis) with one user of each role, and signing in through the form."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import use_schema

PASSWORDS = {"ada": "admin-pass-1", "otto": "operator-pass-1", "vera": "viewer-pass-1"}
ROLES = {"ada": "admin", "otto": "operator", "vera": "viewer"}


def make_home(home: Path, conn, **gui: object) -> Path:
    """Init the store and the schema under `home`, add the three users; returns the config path."""
    from hoardfs.base import config
    from hoardfs.jobs import users
    from hoardfs.sql.migrate import migrate

    cfg_path = Path(use_schema(home, conn))
    text = cfg_path.read_text()
    if gui:
        text += "\n[gui]\n" + "".join(f"{k} = {v!r}\n" for k, v in gui.items())
    cfg_path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "init"], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"})
    assert res.returncode == 0, res.stderr
    migrate(conn)
    cfg = config.load(cfg_path)
    for name, pw in PASSWORDS.items():
        users.add(cfg, name, ROLES[name], pw)
    return cfg_path


@contextlib.contextmanager
def gui_process(home: Path, conn, prepare: Callable[[Path], object] = lambda cfg_path: None,
                **gui: object) -> Iterator[tuple[str, Path]]:
    """A home made by `make_home` (`gui` its [gui] keys), `prepare(config path)` run on it, and
    a real `hoard gui` serving it on a free port (or on `socket`, if a key): yields (its URL,
    `unix:<path>` for a socket, and the config path)."""
    from tests.gui_browser import free_port, serving

    port = free_port()
    cfg_path = make_home(home, conn, port=port, **gui)
    prepare(cfg_path)
    unix = Path(str(gui["socket"])) if gui.get("socket") else None
    with serving(cfg_path, home / "gui.log", port, unix) as url:
        yield url, cfg_path


@pytest.fixture
def proxied(request, hoard_home: Path, pg, redis_conn) -> Iterator[tuple[str, int, Path]]:
    """`hoard gui` behind a proxy on this host: listening on `gui.socket` only, with the
    test's other [gui] keys (an indirect parameter). Yields (its `unix:` URL, the TCP port
    it would have had, the socket's path)."""
    import shutil
    import tempfile

    from hoardfs.base import config

    top = Path(tempfile.mkdtemp(prefix="hg", dir="/tmp"))  # short: a socket's path holds 107 bytes at most
    top.chmod(0o711)
    path = top / "run" / "gui.sock"
    try:
        with gui_process(hoard_home, pg, socket=str(path), **getattr(request, "param", {})) as (url, cfg_path):
            yield url, config.load(cfg_path).gui.port, path
    finally:
        shutil.rmtree(top, ignore_errors=True)


#: the id of the batch `drop_batch` makes
BATCH = "gallery-s3-b000"


def drop_batch(cfg_path: Path, with_reject: bool = True) -> str:
    """A synthetic gallery batch with a `_READY` in 3A, plus one truncated sidecar (a reject)."""
    from hoardfs.adapters.synth import Spec, generate
    from hoardfs.base import config

    with open(cfg_path, "a") as fh:
        fh.write('\n[ingest]\nsettle_s = 0.05\n\n[sources]\ngallery = "gallery_dl"\n')
    zone3a = config.load(cfg_path).ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=3, batches=1, items_per_batch=6, sources=("gallery",), large_max_mb=1,
                                  ready_signal=True))[0]
    assert batch.batch_id == BATCH
    if with_reject:
        d = zone3a / batch.batch_id
        (d / "broken.png").write_bytes(next(p for p in sorted(d.iterdir()) if p.suffix == ".png").read_bytes() + b"x")
        (d / "broken.png.json").write_text('{"title": "x", "author": ')  # truncated JSON
    return batch.batch_id


@pytest.fixture
def gui_home(request, hoard_home: Path, pg, redis_conn, monkeypatch) -> Path:
    """A home for the GUI; `[gui]` keys from an indirect parameter (a dict), if any, and with
    `"_batch": True` in it the fixture batch BATCH waiting in 3A."""
    params = dict(getattr(request, "param", {}))
    batch = params.pop("_batch", False)
    cfg_path = make_home(hoard_home, pg, **params)
    if batch:
        drop_batch(cfg_path)
    monkeypatch.setenv("HOARD_CONFIG", str(cfg_path))
    return cfg_path


@pytest.fixture
async def user(gui_home, user):  # NiceGUI's fixture, built after the home exists
    """NiceGUI's simulated user, on the app built for `gui_home` (tests/gui_main.py)."""
    yield user


#: what a current browser sends with a request a page of the GUI made (its Sign out form, its
#: rq-dashboard's buttons): /logout and /rq's actions refuse a request that says nothing of where
#: it came from (hoardfs.gui.auth._not_from_the_gui)
FROM_THE_GUI = {"Sec-Fetch-Site": "same-origin"}


async def sign_out(user) -> None:
    """Submit the GUI's Sign out form, as a current browser does; then on the login page."""
    r = await user.http_client.post("/logout", headers=FROM_THE_GUI, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login", (r.status_code, r.text)
    await user.open("/login")


async def sign_in(user, name: str, password: str | None = None, then: str = "Overview") -> None:
    await user.open("/login")
    user.find("Name").type(name)
    user.find("Password").type(password if password is not None else PASSWORDS[name])
    user.find("Sign in").click()
    if then:
        await user.should_see(then, retries=30)  # argon2 runs in a thread


def fill_nodes(database_url: str, n: int, batches: int, shas: list[bytes] | None = None) -> str:
    """`n` physical nodes (two thirds images), each with metadata and a path, in `batches` sealed
    batches of two sources (the GUI's scale test and bench/gui_pages.py); their sha256s are
    `shas` (objects in the store) or made up; returns one node's sha256."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO source (name) VALUES ('gallery'), ('forum') ON CONFLICT DO NOTHING")
        if shas is None:
            conn.execute("""INSERT INTO node (sha256, is_virtual, is_physical, created_at)
                SELECT sha256(int8send(i)), false, true, now() - (i %% 60) * interval '1 day'
                FROM generate_series(1, %s) i""", [n])
        else:
            assert len(shas) == n
            conn.execute("""INSERT INTO node (sha256, is_virtual, is_physical, created_at)
                SELECT s, false, true, now() - (i %% 60) * interval '1 day'
                FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(s, i) ORDER BY i""", [shas])
        conn.execute("""INSERT INTO physical_content (node_id, size, file_type)
            SELECT node_id, 1000 + node_id % 5000, CASE WHEN node_id % 3 = 0 THEN 'json' ELSE 'png' END FROM node""")
        conn.execute("""INSERT INTO physical_path (node_id, locator)
            SELECT node_id, 'batch:scale-' || (node_id %% %s) || '/f' || node_id || '.png' FROM node""", [batches])
        conn.execute("""INSERT INTO common_metadata (node_id, source_id, title, author)
            SELECT n.node_id, s.source_id, 'title ' || n.node_id, 'author ' || (n.node_id % 97)
            FROM node n JOIN source s ON s.name = CASE WHEN n.node_id % 2 = 0 THEN 'gallery' ELSE 'forum' END""")
        conn.execute("""INSERT INTO action_batch (batch_id, action_id, source_id)
            SELECT 'scale-' || b, 0, (SELECT source_id FROM source WHERE name = 'gallery')
            FROM generate_series(0, %s - 1) b""", [batches])
        conn.execute("""INSERT INTO batch_member (batch_id, node_id)
            SELECT 'scale-' || (node_id %% %s), node_id FROM node""", [batches])
        conn.execute("UPDATE action_batch SET sealed_at = now() WHERE batch_id LIKE 'scale-%'")
        conn.execute("ANALYZE")
        return conn.execute("SELECT encode(sha256, 'hex') FROM node ORDER BY node_id LIMIT 1 OFFSET %s", [n // 20]).fetchone()[0]


def scale_pages(sha: str) -> list[tuple[str, str]]:
    """(path, text it shows once answered) for each page, on a database `fill_nodes` filled;
    `sha`: the node it returned."""
    return [("/", "Overview"), ("/storage", "SSD zones"), ("/runs", "runs"), ("/batches", "batches"),
            ("/assets", "assets on page 1"), ("/assets?source=forum&q=author%2042", "assets on page 1"),
            ("/assets?batch=scale-7&kind=image", "assets on page 1"),
            ("/assets?since=2000-01-01&until=2000-01-02", "nothing matches"),
            (f"/node/{sha}?depth=3", "title "), ("/launch", "Maintenance"), ("/pipelines", "Dataset exports"),
            ("/actions", "Contracts")]
