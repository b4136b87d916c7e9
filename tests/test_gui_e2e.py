"""`hoard gui` end to end in a real headless Chromium (Debian's chromium + chromium-driver,
Selenium offline): the real `hoard gui` and `hoard worker` processes against the test
PostgreSQL and Redis. Signs in, launches an ingest of the fixture batch, waits until it is
done, opens the batch and one asset, launches an action from the Actions page and sees it
done, types a dataset spec, sees its dry run and builds it, checks `/rq` and `/metrics`, and
saves a screenshot of each main page under docs/screenshots/ (shown in the README)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.gui_browser import child_env, chromium, click, have_browser, page_text, wait_text
from tests.gui_fixtures import BATCH, PASSWORDS, drop_batch, gui_process
from tests.helpers import write_contract

REPO = Path(__file__).resolve().parents[1]
#: the README's screenshots are refreshed only when asked (HOARD_SCREENSHOTS=1 make test), so a
#: test run leaves the work tree as it was; otherwise they go to the test's own directory
SHOTS = REPO / "docs" / "screenshots" if os.environ.get("HOARD_SCREENSHOTS") == "1" else None
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.needs(have_browser(),
                                "no chromium + chromium-driver (Debian packages; `make deps` installs them): "
                                "the end-to-end GUI test needs a real browser")]


#: an AC1 action on the fixture batch (the Actions pages' path)
AC1 = f"""action_type = "AC1"
version = 1
description = "Mark the batch's PNGs as checked."

[input_selector]
batches = ["{BATCH}"]

[[rules]]
where = {{ file_types = ["png"] }}
label = {{ key = "quality", value = "checked" }}
"""


#: a dataset spec typed into /datasets/new: the PNGs AC1 marked, one class
DATASET_SPEC = f"""name = "checked"
layout = "imagefolder"
class_label = "quality"
[selector]
batches = ["{BATCH}"]
file_types = ["png"]
[split]
ratios = {{ train = 0.5, val = 0.5 }}
"""


def _prepare(cfg_path: Path) -> None:
    """The fixture batch in 3A and an action contract in the actions directory."""
    from hoardfs.base import config

    drop_batch(cfg_path)
    cfg = config.load(cfg_path)
    cfg.actions_dir.mkdir(exist_ok=True)
    write_contract(cfg, "check-quality", AC1)


@pytest.fixture
def served(hoard_home: Path, pg, redis_conn):
    """A home with the fixture batch in 3A, an action contract, and `hoard gui` serving it on a free port."""
    with gui_process(hoard_home, pg, _prepare, refresh_s=2.0) as served:
        yield served


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def _shot(driver, name: str) -> None:
    shots = SHOTS or Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / "hoard-gui-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    time.sleep(0.8)  # let images and fonts settle
    height = driver.execute_script("return Math.min(document.body.scrollHeight, 2400)")
    driver.set_window_size(1280, max(900, height))
    assert driver.save_screenshot(str(shots / f"{name}.png")), f"no screenshot of {name}"
    driver.set_window_size(1280, 900)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _status_with(url: str, cookie: str) -> tuple[int, str]:
    """(status, Location) of a GET sent with only this session cookie, redirects not followed —
    another client holding a copy of the browser's cookie."""
    req = urllib.request.Request(url, headers={"Cookie": f"session={cookie}"})
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=10) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("location", "")


def _signed_in_as(url: str, cookie: str) -> bool:
    status, location = _status_with(f"{url}/metrics", cookie)
    assert status in (200, 401), (status, location)
    page, location = _status_with(f"{url}/storage", cookie)
    assert (page == 200) == (status == 200) and (page == 200 or location.startswith("/login")), (page, location)
    return status == 200


def test_end_to_end_in_chromium(served, browser) -> None:
    url, cfg_path = served
    d = browser
    d.get(f"{url}/storage")
    wait_text(d, "Sign in")
    assert "/login" in d.current_url
    before = d.get_cookie("session")["value"]  # the session id the browser had before signing in
    fields = d.find_elements("css selector", "input")
    fields[0].send_keys("otto")
    fields[1].send_keys(PASSWORDS["otto"])
    click(d, "Sign in")
    wait_text(d, "SSD zones")  # back on the page asked for
    signed_in = d.get_cookie("session")["value"]
    assert signed_in != before and _signed_in_as(url, signed_in)
    assert not _signed_in_as(url, before)  # a cookie planted or copied before the login is not signed in

    d.get(f"{url}/launch")
    wait_text(d, BATCH)
    _shot(d, "launch")
    click(d, "Launch ingest")
    wait_text(d, "which no worker serves")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"], env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wait_text(d, "done with rejects", timeout=60)  # the run page refreshes itself
    wait_text(d, "broken.png.json")
    _shot(d, "run")

    d.get(f"{url}/launch")  # an export of the batch's images into zone 3D
    wait_text(d, "stage / export")
    d.find_element("xpath", "//input[@aria-label='output id']").send_keys("gallery-images-v1")
    sel = d.find_element("xpath", "//textarea[starts-with(@aria-label, 'selector')]")
    from selenium.webdriver.common.keys import Keys

    sel.send_keys(Keys.CONTROL, "a")  # clear() would not reach the page's model (no input event)
    sel.send_keys(Keys.DELETE)
    sel.send_keys('{"sources": ["gallery"], "kinds": ["image"]}')
    d.find_element("xpath", "//button[normalize-space(.)='Launch']").click()
    wait_text(d, "export gallery-images-v1")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"], env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wait_text(d, "files", timeout=60)  # the export's report

    d.get(f"{url}/runs")
    wait_text(d, BATCH, timeout=20)
    wait_text(d, "gallery-images-v1", timeout=20)
    _shot(d, "runs")

    d.get(f"{url}/batches")
    wait_text(d, BATCH)
    _shot(d, "batches")
    d.find_element("link text", BATCH).click()
    wait_text(d, "assets on page 1")
    deadline = time.monotonic() + 30  # thumbnails are made on first view
    while not d.execute_script("return [...document.images].some(i => i.src.includes('/thumb/') && "
                               "i.complete && i.naturalWidth > 0)"):
        assert time.monotonic() < deadline, "no thumbnail loaded"
        time.sleep(0.3)
    _shot(d, "assets")
    d.find_element("css selector", "a[href^='/node/'] img, a[href^='/node/'] .q-img").click()
    wait_text(d, "In the FUSE mount")
    wait_text(d, f"batches: {BATCH}")
    _shot(d, "node")

    d.get(f"{url}/actions")  # an action (AC1) launched from its form, run by a worker, seen done
    wait_text(d, "check-quality")
    wait_text(d, "resize-variants")  # a built-in
    d.find_element("link text", "check-quality").click()
    wait_text(d, "Mark the batch's PNGs as checked.")
    click(d, "Launch check-quality")
    wait_text(d, "plan: queued")
    assert "/runs/action/check-quality-v1-" in d.current_url
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"], env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wait_text(d, "finish: done", timeout=60)  # the run page refreshes itself
    wait_text(d, "launched by otto")
    _shot(d, "action-run")
    d.get(f"{url}/actions")
    wait_text(d, "check-quality-v1-")
    _shot(d, "actions")

    d.get(f"{url}/datasets/new")  # a dataset of the PNGs the action marked: the spec typed, the dry run, launched
    wait_text(d, "Dry run")
    editor = d.find_element("css selector", ".cm-content")
    editor.click()
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(Keys.DELETE)
    editor.send_keys(DATASET_SPEC)
    wait_text(d, "zone 3D admits it", timeout=60)
    wait_text(d, "checked")
    _shot(d, "dataset-new")
    click(d, "Launch the build")
    wait_text(d, "dataset checked")
    assert d.current_url.endswith("/runs/dataset/checked")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"], env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wait_text(d, "checked-v1", timeout=60)  # the report names the directory it sealed
    d.get(f"{url}/datasets")
    wait_text(d, "checked-v1")
    _shot(d, "datasets")

    d.get(f"{url}/")
    wait_text(d, "objects")
    _shot(d, "overview")
    d.get(f"{url}/pipelines")
    wait_text(d, "Dataset exports (zone 3D)")
    wait_text(d, "gallery-images-v1")
    _shot(d, "pipelines")
    d.get(f"{url}/storage")
    wait_text(d, "SSD zones")
    wait_text(d, "its replicas verified (or written)")  # per disk, now that shards are sealed
    _shot(d, "storage")

    d.get(f"{url}/rq/")
    wait_text(d, "Queues")
    wait_text(d, "maintenance")  # rq-dashboard lists the hoardfs queues
    assert not [e for e in d.get_log("browser") if e["level"] == "SEVERE"], d.get_log("browser")
    _shot(d, "rq")

    d.get(f"{url}/metrics")
    text = page_text(d)
    assert "hoard_objects" in text and 'hoard_disk_state{disk="hdd1",state="active"} 1.0' in text
    assert "hoard_objects 0.0" not in text  # the ingest stored objects

    d.get(f"{url}/")
    wait_text(d, "Sign out")
    click(d, "Sign out")  # the header's form: a POST
    wait_text(d, "Sign in")
    assert "/login" in d.current_url
    assert not _signed_in_as(url, signed_in)  # signed out on the server: a copy of the cookie is too
