"""Where HTTP uploads are staged, `3A/.tmp`, against a scraper account (one that may write 3A:
`nobody` in 3A's group, by setpriv) and a real `hoard gui` run as root: the folder is the
service's own from `hoard init` on, an upload refuses one that is not (503, one line), and no
link the scraper plants leads an upload's file anywhere (docs/security.md, "Zone 3A")."""

from __future__ import annotations

import contextlib
import grp
import os
import select
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gui_browser import child_env
from tests.http_ingest import Server, answer, connect, ingest_server, multipart, raw_request, until
from tests.test_privileges import GROUP, as_user, needs_root

pytestmark = needs_root


@contextlib.contextmanager
def _passable(path: Path) -> Iterator[None]:
    """`path` and the directories above it passable by others (pytest makes its own 0700; the
    store's modes are what must stop the scraper); the modes put back afterwards."""
    changed = []
    for d in [path, *path.parents]:
        mode = stat.S_IMODE(d.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
            changed.append((d, mode))
    try:
        yield
    finally:
        for d, mode in reversed(changed):
            os.chmod(d, mode)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str]) -> Iterator[Server]:
    """A `hoard gui` (as root) whose 3A the scraper's group writes, as docs/operations.md tells
    (`chgrp SCRAPERS 3A`), its home passable by the scraper."""
    with ingest_server(tmp_path_factory, servers) as srv:
        os.chown(srv.zone3a, -1, grp.getgrnam(GROUP).gr_gid)
        with _passable(srv.zone3a.parent):
            yield srv


@pytest.fixture
def victim(scraped: Server) -> Iterator[Path]:
    """A directory of the service's, where a scraper must never have a file written (the
    service's `state/actions`, say: a run's files there are shown with a Resume button)."""
    path = scraped.cfg_path.parent / "ssd" / "state" / "victim"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path)


@contextlib.contextmanager
def _staging_as_scrapers(srv: Server) -> Iterator[Path]:
    """3A/.tmp made by the scraper before the first upload (0777, theirs), as on a store
    `hoard init` did not make it in; the service's own put back afterwards."""
    tmp = srv.zone3a / ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    res = as_user('mkdir -m 0777 "$1"', str(tmp))
    assert res.returncode == 0, res.stderr
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o750)


def test_a_scraper_cannot_lead_an_uploads_file_through_a_planted_link(scraped: Server, victim: Path) -> None:
    """The scraper makes 3A/.tmp itself before the first upload, and while an upload's first
    file comes swaps the upload's folder for one holding a link `sub -> <a service directory>`;
    the upload's next part `sub/x` was written there as the service (a failed action run's
    files in `state/actions` made that run a Resume button away from running its command).
    An upload now refuses a 3A/.tmp that is not the service's own: 503 at once, one line naming
    the folder and `hoard init`; nothing is written anywhere, no batch, no reservation."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import zones

    before = scraped.batches()
    with _staging_as_scrapers(scraped) as tmp:
        headers, body = multipart([("source", None, b"sidecar"), ("files", b"a.png", os.urandom(300_000)),
                                   ("files", b"sub/x", b"#!/bin/sh\necho planted\n")])
        cut = body.index(b"a.png") + 100_000  # the request as far as the middle of the first file
        with connect(scraped.url) as sock:
            raw_request(sock, scraped.url, scraped.auth() | headers | {"Content-Length": str(len(body))}, body[:cut])

            def staged() -> list[Path]:
                return [p.parent for p in tmp.glob("upload-*/a.png")]

            def answered() -> bool:
                return bool(select.select([sock], [], [], 0.05)[0])

            until(lambda: bool(staged()) or answered(), "the upload's first file written, or an answer")
            if staged():  # the scraper's swap, at a point the test holds: between the upload's parts
                res = as_user('mv "$1" "$1.old" && mkdir "$1" && ln -s "$2" "$1/sub"', str(staged()[0]),
                              str(victim))
                assert res.returncode == 0, res.stderr
                sock.sendall(body[cut:])
            status, doc = answer(sock)
        assert list(victim.iterdir()) == [], f"written through the scraper's link: {list(victim.iterdir())}"
        assert status == 503, (status, doc)
        assert "\n" not in doc["error"] and f"{tmp} is another user's (uid 65534)" in doc["error"], doc
        assert "hoard init" in doc["error"] and "hoard init" in doc["next_step"], doc
        assert [p.name for p in tmp.iterdir()] == []  # nothing made in the scraper's folder
    assert scraped.batches() == before
    assert zones.reservations(config.load(scraped.cfg_path), "3A") == []


def test_hoard_init_makes_the_staging_folder_the_services_own(scraped: Server) -> None:
    """`hoard init` makes 3A/.tmp before any upload: the service's, 0750 — the scraper can
    neither make it first nor put anything in it; uploads go through it."""
    import httpx

    tmp = scraped.zone3a / ".tmp"
    shutil.rmtree(tmp)
    res = scraped.hoard("init")
    assert res.returncode == 0, res.stderr
    st = tmp.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o777 == 0o750
    res = as_user('mkdir "$1/upload-0000" || ln -s / "$1/upload-0000"', str(tmp))
    assert res.returncode != 0 and "ermission denied" in res.stderr, res.stderr
    r = httpx.post(f"{scraped.url}/api/v1/batches", headers=scraped.auth(), data={"source": "sidecar"},
                   files=[("files", ("d/a.png", b"\x89PNG...")), ("files", ("d/a.png.json", b"{}"))], timeout=60)
    assert r.status_code == 202, r.text


def test_a_staging_folder_others_may_write_is_refused_by_init_and_uploads(scraped: Server, victim: Path) -> None:
    """A 3A/.tmp that is a link, another user's, or the service's but writable by its group
    (the scraper's, in a zone the scraper writes) is refused in one line naming it and the
    next step — by `hoard init` (exit non-zero, no traceback) and by an upload (503, nothing
    written, nothing followed)."""
    import httpx

    tmp = scraped.zone3a / ".tmp"
    plants = {  # what is there, and the scraper's script that puts it there (or None: root's chmod)
        "a symbolic link": 'ln -s "$1" "$2"',
        "another user's (uid 65534)": 'mkdir -m 0700 "$2"',
        "writable by its group or others": None,
    }
    try:
        for why, script in plants.items():
            if script is None:
                os.chmod(tmp, 0o770)
            else:
                shutil.rmtree(tmp)  # (the service's, 0750: the scraper could not remove it)
                res = as_user(script, str(victim), str(tmp))
                assert res.returncode == 0, res.stderr
            res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(scraped.cfg_path), "init"],
                                 capture_output=True, text=True, env=child_env())
            assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
            assert f"{tmp} is {why}" in res.stderr and "remove it and run the command again" in res.stderr, res.stderr
            r = httpx.post(f"{scraped.url}/api/v1/batches", headers=scraped.auth(), data={"source": "sidecar"},
                           files=[("files", ("a.png", b"\x89PNG...")), ("files", ("a.png.json", b"{}"))], timeout=60)
            assert r.status_code == 503 and f"{tmp} is {why}" in r.json()["error"], (why, r.text)
            assert "\n" not in r.json()["error"] and "hoard init" in r.json()["error"]
            assert list(victim.iterdir()) == []
            _mend(tmp)
    finally:
        _mend(tmp)


def _mend(tmp: Path) -> None:
    """3A/.tmp the service's own again (0750)."""
    if tmp.is_symlink():
        tmp.unlink()
    elif tmp.is_dir() and tmp.lstat().st_uid != os.geteuid():
        shutil.rmtree(tmp)
    if not tmp.is_dir():
        tmp.mkdir(mode=0o750)
    os.chmod(tmp, 0o750)
