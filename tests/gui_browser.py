"""A real `hoard gui` process and a real headless Chromium (Debian's chromium + chromium-driver,
Selenium offline): shared by the end-to-end test and bench/gui_pages.py."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(DRIVER).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of a `hoard` child: without PYTEST_CURRENT_TEST (NiceGUI takes a process
    that has it for its own test server) and without HOARD_CONFIG (the child gets --config); the
    checkout these tests are in first on its path (the venv's editable install may be another's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
    return env


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: what a proxy on this host does with `gui.socket`."""

    def __init__(self, path: Path | str, timeout: float = 120) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_get(path: Path | str, target: str, headers: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET of `target` sent through the unix socket `path`."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(), dict(r.headers)
    finally:
        conn.close()


def _live(url: str) -> bool:
    """/health/live answers 200 at `url` (http://… or unix:<socket path>)."""
    if url.startswith("unix:"):
        return unix_get(url.removeprefix("unix:"), "/health/live", timeout=2)[0] == 200
    with urllib.request.urlopen(f"{url}/health/live", timeout=2) as r:
        return r.status == 200


@contextlib.contextmanager
def serving(cfg_path: Path, log_path: Path, port: int, unix: Path | None = None,
            started: list | None = None) -> Iterator[str]:
    """`hoard gui` on `port` (the config's [gui] port), or on the unix socket `unix` (its
    gui.socket), until the block ends; yields its URL (`unix:<path>` for a socket) once
    /health/live answers. `started` gets the process (a benchmark reads its memory)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "gui"], env=child_env(),
                            stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent)
    if started is not None:
        started.append(proc)
    url = f"unix:{unix}" if unix else f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _live(url):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"hoard gui did not start: {log_path.read_text()}") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium driven by Selenium, never downloading anything."""
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser to download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("headless=new", "no-sandbox", "disable-dev-shm-usage", "disable-gpu", "window-size=1280,900",
                "disable-search-engine-choice-screen", "hide-scrollbars"):
        opts.add_argument(f"--{arg}")
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver) -> str:
    """The page's visible text, read fresh each time: a page that navigates (a click that
    opens a run page) replaces its body, and a kept element reference would go stale."""
    from selenium.common.exceptions import JavascriptException, StaleElementReferenceException

    try:
        return driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    except (JavascriptException, StaleElementReferenceException):  # the page is between documents
        return ""


def wait_text(driver, text: str, timeout: float = 30, poll: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while text.lower() not in page_text(driver).lower():  # buttons show in capitals
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not on {driver.current_url}:\n{page_text(driver)[:3000]}")
        time.sleep(poll)


def click(driver, text: str) -> None:
    driver.find_element("xpath", f"//button[contains(normalize-space(.), {text!r})]").click()


def sign_in(driver, url: str, name: str, password: str, path: str = "/storage", then: str = "SSD zones") -> None:
    """Open `path`, sign in on the login page it sends the browser to, wait for `then`."""
    driver.get(f"{url}{path}")
    wait_text(driver, "Sign in")
    fields = driver.find_elements("css selector", "input")
    fields[0].send_keys(name)
    fields[1].send_keys(password)
    click(driver, "Sign in")
    wait_text(driver, then)
