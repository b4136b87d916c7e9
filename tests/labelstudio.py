"""A real Label Studio server for the AC5 tests (`label_studio` fixture, services tier).

`make labelstudio` installs pip `label-studio` 1.23 into its own venv (`var/labelstudio/venv`,
or $HOARD_TEST_LABEL_STUDIO naming another venv): it pins Django and pulls pandas, nltk and
OpenCV, none of which may reach hoard's environment. One server per test session: a fresh
data directory (SQLite), local-files serving on with the document root a session directory
that the tests use as zone 3C, a user and its legacy API token created by `label-studio start
--username --password --user-token --enable-legacy-api-token` (label_studio/server.py
`_create_user`; the token replaces the user's auth token, the organisation keeps legacy tokens
on). Starting it applies Label Studio's migrations to the new database: about 25 s on this
2-core machine, once per session.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import REPO, missing

VENV = Path(os.environ.get("HOARD_TEST_LABEL_STUDIO") or REPO / "var" / "labelstudio" / "venv")
#: the longest a fresh server may take to answer (migrations on a loaded machine)
START_S = 300
_STARTED = re.compile(r"Starting development server at http://127\.0\.0\.1:(\d+)/")


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    document_root: Path     # the tests' zone 3C
    python: Path            # the venv's python (label-studio-sdk's converter)
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path, n: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def serve(base: Path) -> Iterator[Server]:
    """Start Label Studio with its data under `base`, yield it once it answers, stop it."""
    exe = VENV / "bin" / "label-studio"
    if not exe.is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    data, root, log = base / "data", base / "3C", base / "label-studio.log"
    data.mkdir(parents=True)
    root.mkdir()
    token = secrets.token_hex(20)
    port = _free_port()
    env = {
        "PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",   # its "Starting development server at …" line reaches the log at once
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        # offline and quiet: no version check on PyPI, no analytics
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
    }
    argv = [str(exe), "start", "--no-browser", "--data-dir", str(data), "--internal-host", "127.0.0.1",
            "--port", str(port), "--username", "hoard@example.org", "--password", secrets.token_hex(12),
            "--user-token", token, "--enable-legacy-api-token"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=base, start_new_session=True)
    try:
        url = _wait(proc, port, token, log)
        yield Server(url=url, token=token, document_root=root, python=VENV / "bin" / "python", log=log)
    finally:
        _stop(proc)


def _wait(proc: subprocess.Popen, port: int, token: str, log: Path) -> str:
    """The URL once the API answers with the token (Label Studio moves to the next port when
    its own is taken: the log says which)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_S:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode} while starting: {_tail(log)}")
        found = _STARTED.search(log.read_text(errors="replace"))
        url = f"http://127.0.0.1:{found.group(1) if found else port}"
        try:
            r = httpx.get(f"{url}/api/projects/", headers={"Authorization": f"Token {token}"}, timeout=10)
            if r.status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Label Studio did not answer within {START_S} s (port {port}): {_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def point_at(cfg_path: Path, home: Path, server: Server, zone: Path, url: str | None = None) -> None:
    """Append hoard.toml's `[label_studio]` for `server`: a link in its document root points at
    the home's zone 3C (files_root), as a team's mount of the hoard host's 3C would; the token in
    `home/ls.token` (0600); label-studio-sdk's converter is the server venv's Python."""
    import json
    import uuid

    zone.mkdir(parents=True, exist_ok=True)
    seen = server.document_root / f"home-{uuid.uuid4().hex[:8]}"
    seen.symlink_to(zone)
    token = home / "ls.token"
    token.write_text(server.token + "\n")
    os.chmod(token, 0o600)
    with open(cfg_path, "a") as fh:
        fh.write(f"\n[label_studio]\nurl = {json.dumps(url or server.url)}\ntoken_file = {json.dumps(str(token))}\n"
                 f"files_root = {json.dumps(str(seen))}\ndocument_root = {json.dumps(str(server.document_root))}\n"
                 f"converter_python = {json.dumps(str(server.python))}\n")
