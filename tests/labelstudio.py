"""A real Label Studio server for the AC5 tests (`label_studio` fixture, services tier).

`make labelstudio` installs pip `label-studio` 1.23 into its own venv (`var/labelstudio/venv`,
or $HOARD_TEST_LABEL_STUDIO naming another venv): it pins Django and pulls pandas, nltk and
OpenCV, none of which may reach hoard's environment. One server per test session: a fresh
data directory (SQLite), local-files serving on with the document root a session directory
that the tests use as zone 3C, a user and its legacy API token created by `label-studio start
--enable-legacy-api-token` with LABEL_STUDIO_USERNAME, _PASSWORD and _USER_TOKEN in its
environment (label_studio/server.py `_create_user`; the token replaces the user's auth token,
the organisation keeps legacy tokens on): `hoard labelstudio up`'s own `launch` and wait,
confined as `up` starts it. The tests' homes come after it, each its own zone 3C that a link in
the document root points at (`point_at`); the server reads them through the session's temporary
tree (`serve`'s `read`), as a host's Label Studio reads a team's mount its document root links to.
Starting it applies Label Studio's migrations to the new database: about 25 s on this 2-core
machine, once per session.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hoardfs.jobs.actions import labelstudio_local as local
from tests.helpers import REPO, missing

VENV = Path(os.environ.get("HOARD_TEST_LABEL_STUDIO") or REPO / "var" / "labelstudio" / "venv")
#: the longest a fresh server may take to answer (migrations on a loaded machine)
START_S = 300


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    document_root: Path     # the tests' zone 3C
    python: Path            # the venv's python (label-studio-sdk's converter)
    log: Path


def _free_port() -> int:
    return local.free_port()


def serve(base: Path, read: tuple[Path, ...] = ()) -> Iterator[Server]:
    """Start Label Studio with its data under `base` (`hoard labelstudio up`'s own launch and
    wait, confined: it reads its document root and `read` besides its own files), yield it once
    it answers, stop it."""
    exe = VENV / "bin" / "label-studio"
    if not exe.is_file():
        missing(f"LABEL STUDIO MISSING at {VENV}: run `make labelstudio`")
    data, root, log = base / "data", base / "3C", base / "label-studio.log"
    data.mkdir(parents=True)
    root.mkdir()
    token = secrets.token_hex(20)
    port = _free_port()
    proc = local.launch(exe, data=data, document_root=root, port=port, token=token, password=secrets.token_hex(12),
                        log=log, cwd=base, tmp=base / "tmp", username="hoard@example.org", read=read)
    try:
        url = local.wait_until_up(proc.poll, port, token, log, limit_s=START_S)
        yield Server(url=url, token=token, document_root=root, python=VENV / "bin" / "python", log=log)
    finally:
        if proc.poll() is None:
            local.stop_group(proc.pid, lambda s: local.waited(proc, s))


def point_at(cfg_path: Path, home: Path, server: Server, zone: Path, url: str | None = None) -> None:
    """Append hoard.toml's `[label_studio]` for `server`: a link in its document root points at
    the home's zone 3C (files_root), as a team's mount of the hoard host's 3C would; the token in
    `home/ls.token` (0600); label-studio-sdk's converter is the server venv's Python."""
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


def expected_label_rows(sha: str, ann: int, result: list[dict]) -> set[tuple[str, str, str]]:
    """The label rows an annotation `ann` drawing `result` on node `sha` must give (docs/actions.md,
    "What comes back"), written out by hand: an answer for the whole image is `<from_name>=<value>`
    — each choice, each text, the rating's number, each taxonomy path joined with "/" — and a
    region `ls:<from_name>` = its raw shape as JSON with sorted keys (compare through `normalised`)."""
    out = set()
    for region in result:
        kind, value, name = region["type"], region["value"], region["from_name"]
        if kind == "choices":
            out |= {(sha, name, c) for c in value["choices"]}
        elif kind == "textarea":
            out |= {(sha, name, t) for t in value["text"]}
        elif kind == "rating":
            out.add((sha, name, str(value["rating"])))
        elif kind == "taxonomy":
            out |= {(sha, name, "/".join(p)) for p in value["taxonomy"]}
        else:
            shape = {"type": kind, "value": value, "annotation": ann, "region": region["id"]}
            shape.update({k: region[k] for k in ("original_width", "original_height", "image_rotation") if k in region})
            out.add((sha, "ls:" + name, json.dumps(shape, sort_keys=True)))
    return out


def normalised(rows) -> set[tuple[str, str, str]]:
    """Label rows with each raw `ls:` value as JSON with sorted keys (as `expected_label_rows`)."""
    return {(s, k, json.dumps(json.loads(v), sort_keys=True) if k.startswith("ls:") else v) for s, k, v in rows}
