"""AC5: the round trip through a real Label Studio (1.23), over its REST API.

The engine's AC5 steps call these plain functions (docs/actions.md, "AC5 — your Label Studio"):

    ls = client_from_settings(cfg)                       # [label_studio] url, token_file, …
    project = ensure_project(ls, title, label_config)    # idempotent by title
    import_tasks(ls, project, [Task(sha256, path_in_3C), …])   # by URL, ≤ 1,000 per request
    export_json = export(ls, project)                    # a snapshot, not the plain export
    to_coco(ls, export_json, label_config, out_dir)      # label-studio-sdk's Converter, own process
    rows = annotations_to_labels(export_json)            # [(node sha256, key, value), …]

Tasks are never uploaded: each task's image is a local-files URL `/data/local-files/?d=<path
relative to Label Studio's document root>` of the file staged in zone 3C, which Label Studio
serves when it runs with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and a "local files"
storage of the project covers the file's directory (ensured here per staged run directory: Label
Studio serves nothing outside such a storage, and refuses one equal to its document root).
A task's data carries the node's sha256 (`hoard_sha256`) and its staged path (`hoard_path`), so
every annotation maps back to its node whatever Label Studio does to ids.

Every failure a person can fix is a LabelStudioError: one line naming the URL, the file or the
task, and the next step.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import NotOwn, load_owned
from hoardfs.base.paths import display

if TYPE_CHECKING:
    import httpx

#: tasks per import request: Label Studio's big imports time out and hit its upload caps
#: (label-studio#2678, #4556)
MAX_TASKS_PER_IMPORT = 1000
#: the largest `key` + `value` of one label row (hoardfs.sql.intents.MAX_LABEL_VALUE): the label
#: table indexes md5(value), not the value (migration 010; before it, PostgreSQL's 2,704-byte
#: b-tree entries refused a polygon of ~70 points in full-precision percent coordinates)
MAX_LABEL_BYTES = 1 << 20
#: a label's key: `ls:` and the control's name (`from_name` in Label Studio's JSON)
KEY_PREFIX = "ls:"
#: the data keys hoard adds to every task
SHA_KEY, PATH_KEY = "hoard_sha256", "hoard_path"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: `make labelstudio`'s environment (label-studio and label-studio-sdk), beside hoard's code
DEFAULT_CONVERTER_PYTHON = Path(__file__).resolve().parents[2] / "var" / "labelstudio" / "venv" / "bin" / "python"


class LabelStudioError(HoardError):
    """Label Studio could not do what AC5 asked: one line, the URL or file, the next step."""

    exit_code = ExitCode.UNAVAILABLE


@dataclass(frozen=True)
class Client:
    """Where Label Studio is and how hoard's files look from there."""

    url: str                   # e.g. "http://127.0.0.1:8080", no trailing slash
    token: str
    zone_root: Path            # zone 3C here
    files_root: Path           # zone 3C as Label Studio's host sees it
    document_root: Path        # Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    converter_python: Path = DEFAULT_CONVERTER_PYTHON
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Task:
    """One image to label: the node's sha256 and its staged file, relative to zone 3C's root
    (e.g. "<run>/<layout>/input/by_sha256/ab/abcd….jpg")."""

    sha256: str
    path: str


@dataclass(frozen=True)
class ImportReport:
    imported: int       # tasks created now
    present: int        # tasks the project had already (a resumed import)
    requests: int       # import requests made


def read_token(path: Path) -> str:
    """The token in `path` (one line), refused when missing, empty or readable by others."""
    shown = display(str(path))
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise LabelStudioError(f"label_studio.token_file {shown} is not a regular file; put the token in a file",
                                   ExitCode.USAGE)
        if st.st_mode & 0o077:
            raise LabelStudioError(f"label_studio.token_file {shown} is readable by others (mode "
                                   f"{stat.S_IMODE(st.st_mode):o}); `chmod 600 {shown}`", ExitCode.USAGE)
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise LabelStudioError(f"label_studio.token_file {shown}: no such file; write the token of Label Studio's "
                               "Account & Settings page into it (mode 0600)", ExitCode.USAGE) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelStudioError(f"label_studio.token_file {shown}: cannot read: {first_line(e)}", ExitCode.USAGE) from None
    if not text or any(c.isspace() for c in text):
        raise LabelStudioError(f"label_studio.token_file {shown} holds no token (empty, or more than one word); "
                               "write the token alone into it", ExitCode.USAGE)
    return text


# -- this host's Label Studio, as `hoard labelstudio up` (jobs/actions/labelstudio_local.py) records it

def home_of(cfg: Settings) -> Path:
    """Where `hoard labelstudio up` keeps this host's Label Studio: its data, server.json, token."""
    return cfg.ssd.root / "state" / "labelstudio"


def recorded(home: Path) -> dict[str, Any]:
    """What server.json says (empty when there is none)."""
    try:
        doc = json.loads(load_owned(home / "server.json"))
    except (FileNotFoundError, NotOwn, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def recorded_url(cfg: Settings) -> str | None:
    """The URL of this host's Label Studio as `up` last started it (None: never started)."""
    url = recorded(home_of(cfg)).get("url")
    return url if isinstance(url, str) else None


def default_token_file(cfg: Settings) -> Path:
    return home_of(cfg) / "token"


def client_from_settings(cfg: Settings) -> Client:
    """The client hoard.toml's `[label_studio]` describes (docs/config.md); without its url or
    token_file, this host's Label Studio as `hoard labelstudio up` started it."""
    lc = cfg.label_studio
    url = lc.url or recorded_url(cfg)
    token_file = lc.token_file or default_token_file(cfg)
    if url is None or not (lc.token_file or token_file.exists()):
        raise LabelStudioError("AC5 needs label_studio.url and label_studio.token_file in hoard.toml, or this "
                               "host's Label Studio: `hoard labelstudio up` (docs/actions.md, \"Starting Label "
                               "Studio\")", ExitCode.USAGE)
    zone_root = cfg.ssd.zone_path("3C")
    files_root = lc.files_root or zone_root
    document_root = lc.document_root or files_root
    if files_root != document_root and document_root not in files_root.parents:
        raise LabelStudioError(f"label_studio.files_root {files_root} is not inside label_studio.document_root "
                               f"{document_root}: Label Studio serves files under its document root only",
                               ExitCode.USAGE)
    return Client(url=url.rstrip("/"), token=read_token(token_file), zone_root=zone_root,
                  files_root=files_root, document_root=document_root,
                  converter_python=lc.converter_python or DEFAULT_CONVERTER_PYTHON, timeout_s=lc.timeout_s)


# --- HTTP ------------------------------------------------------------------------------------

def _is_jwt(token: str) -> bool:
    """A personal access token (a JWT refresh token) rather than a legacy token."""
    return token.count(".") == 2 and all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in token.split("."))


_access: dict[tuple[str, str], str] = {}


def _auth(ls: Client, http: httpx.Client, fresh: bool = False) -> dict[str, str]:
    if not _is_jwt(ls.token):
        return {"Authorization": f"Token {ls.token}"}
    key = (ls.url, ls.token)
    if fresh or key not in _access:
        r = _send(ls, http, "POST", "/api/token/refresh/", {}, json={"refresh": ls.token})
        if r.status_code in (400, 401, 403):
            raise LabelStudioError(f"Label Studio at {ls.url} refused the personal access token of "
                                   "label_studio.token_file (expired or revoked?); create a new one in Account & "
                                   "Settings and write it into that file", ExitCode.USAGE)
        _access[key] = _json(ls, r, "/api/token/refresh/")["access"]
    return {"Authorization": f"Bearer {_access[key]}"}


def _send(ls: Client, http: httpx.Client, method: str, path: str, headers: dict[str, str],
          **kw: Any) -> httpx.Response:
    import httpx  # deferred: every `hoard` command that reads action runs loads this module; httpx is ~50 ms

    try:
        return http.request(method, ls.url + path, headers=headers, timeout=ls.timeout_s, **kw)
    except httpx.TimeoutException:
        raise LabelStudioError(f"Label Studio at {ls.url} did not answer {method} {path} within "
                               f"{ls.timeout_s:g} s; check its load, or raise label_studio.timeout_s") from None
    except httpx.HTTPError as e:
        raise LabelStudioError(f"Label Studio at {ls.url} does not answer ({first_line(e)}); start it, or fix "
                               "label_studio.url in hoard.toml, then run the action again") from None


def _json(ls: Client, r: httpx.Response, path: str) -> Any:
    try:
        return r.json()
    except ValueError:
        raise LabelStudioError(f"Label Studio at {ls.url} answered {path} with something that is not JSON "
                               f"(HTTP {r.status_code}); is label_studio.url Label Studio's address?") from None


def _call(ls: Client, http: httpx.Client, method: str, path: str, *, ok: Sequence[int] = (200, 201, 204),
          **kw: Any) -> httpx.Response:
    r = _send(ls, http, method, path, _auth(ls, http), **kw)
    if r.status_code == 401 and _is_jwt(ls.token):   # an access token expired: one refresh
        r = _send(ls, http, method, path, _auth(ls, http, fresh=True), **kw)
    if r.status_code == 401:
        raise LabelStudioError(f"Label Studio at {ls.url} refused the token of label_studio.token_file (HTTP 401); "
                               "copy the token of Account & Settings into that file (a legacy token needs legacy "
                               "tokens enabled for the organization)", ExitCode.USAGE)
    if r.status_code not in ok:
        raise LabelStudioError(f"Label Studio at {ls.url}: {method} {path} failed (HTTP {r.status_code}: "
                               f"{_detail(r)}); its log says more")
    return r


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return display(first_line(Exception(r.text[:200] or r.reason_phrase)))
    if isinstance(body, dict):
        found = body.get("validation_errors") or body.get("detail") or body
        return display(json.dumps(found, ensure_ascii=False)[:300])
    return display(json.dumps(body, ensure_ascii=False)[:300])


def _client() -> httpx.Client:
    import httpx  # deferred: as in _send

    return httpx.Client(follow_redirects=False, trust_env=False)


def _pages(ls: Client, http: httpx.Client, path: str, params: dict[str, Any], key: str) -> Iterable[dict]:
    """Every item of a paged list: on while the answer says there is more (`next` of the
    projects' and storages' lists, `total` of the tasks'), whatever page size the server allows."""
    page, seen = 1, 0
    while True:
        r = _call(ls, http, "GET", path, params={**params, "page": page, "page_size": 100 if key == "results" else 1000},
                  ok=(200, 404))
        if r.status_code == 404:      # past the last page
            return
        body = _json(ls, r, path)
        items = body if isinstance(body, list) else body.get(key) or []
        yield from items
        seen += len(items)
        if isinstance(body, list) or not items:
            return
        if not body.get("next") and not (isinstance(body.get("total"), int) and seen < body["total"]):
            return
        page += 1


# --- projects and tasks ----------------------------------------------------------------------

def ensure_project(ls: Client, title: str, label_config: str) -> int:
    """The id of the project called `title`, created with `label_config` when there is none
    (idempotent by title: a resumed run finds the project it made). An existing project's
    labelling interface is left as it is: people may have refined it in Label Studio."""
    if not 3 <= len(title) <= 50:
        raise LabelStudioError(f"Label Studio project title {display(title)!r} has {len(title)} characters; "
                               "Label Studio takes 3 to 50 (run_spec.project_title)", ExitCode.USAGE)
    with _client() as http:
        for p in _pages(ls, http, "/api/projects/", {"title": title}, "results"):
            if p.get("title") == title:
                return int(p["id"])
        r = _call(ls, http, "POST", "/api/projects/", json={"title": title, "label_config": label_config},
                  ok=(201, 400))
        if r.status_code == 400:
            raise LabelStudioError(f"Label Studio at {ls.url} refused project {display(title)!r}: {_detail(r)}; "
                                   "check run_spec.label_config", ExitCode.USAGE)
        return int(_json(ls, r, "/api/projects/")["id"])


def image_key(label_config: str) -> str:
    """The task data key the labelling interface shows: `$image` of `<Image value="$image">`."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise LabelStudioError(f"run_spec.label_config is not XML ({e})", ExitCode.USAGE) from None
    for el in root.iter():
        if el.tag == "Image" and (el.get("value") or "").startswith("$"):
            return str(el.get("value"))[1:]
    raise LabelStudioError('run_spec.label_config has no <Image value="$…"> to show the staged files',
                           ExitCode.USAGE)


def local_url(ls: Client, path: str) -> str:
    """The URL Label Studio serves a file of zone 3C at (`path` relative to 3C's root)."""
    rel = (ls.files_root / path).relative_to(ls.document_root)
    return "/data/local-files/?d=" + quote(rel.as_posix(), safe="/")


def _ensure_storages(ls: Client, http: httpx.Client, project: int, tops: set[str]) -> None:
    """A "local files" storage per staged run directory: Label Studio serves a file only when
    a storage of a project the user may see covers its directory."""
    have = {s.get("path") for s in _pages(ls, http, "/api/storages/localfiles", {"project": project}, "results")}
    for top in sorted(tops):
        where = str(ls.files_root / top)
        if where in have:
            continue
        r = _call(ls, http, "POST", "/api/storages/localfiles", ok=(201, 400),
                  json={"project": project, "path": where, "title": f"hoard {top}"[:256], "use_blob_urls": False})
        if r.status_code == 400:
            raise LabelStudioError(f"Label Studio at {ls.url} cannot serve {where}: {_detail(r)}; start it with "
                                   "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_"
                                   "DOCUMENT_ROOT set to label_studio.document_root", ExitCode.USAGE)


def project_tasks(ls: Client, project: int) -> list[dict[str, Any]]:
    """Every task of the project (id and data)."""
    with _client() as http:
        return list(_pages(ls, http, "/api/tasks", {"project": project}, "tasks"))


def task_index(ls: Client, project: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The project's tasks hoard imported, by (node sha256, staged path): {id, labelled — a
    submitted, not skipped, annotation —}; the lowest id where a pair is there twice."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for t in sorted(project_tasks(ls, project), key=lambda t: int(t.get("id") or 0)):
        data = t.get("data") or {}
        sha, path = data.get(SHA_KEY), data.get(PATH_KEY)
        if isinstance(sha, str) and isinstance(path, str) and (sha, path) not in out:
            out[(sha, path)] = {"id": int(t["id"]), "labelled": int(t.get("total_annotations") or 0) > 0}
    return out


def delete_tasks(ls: Client, ids: Iterable[int]) -> int:
    """Delete these tasks of Label Studio (one already gone counts as deleted); how many."""
    n = 0
    with _client() as http:
        for i in ids:
            _call(ls, http, "DELETE", f"/api/tasks/{int(i)}/", ok=(200, 204, 404))
            n += 1
    return n


def import_tasks(ls: Client, project: int, tasks: Sequence[Task], label_config: str, *,
                 batch: int = MAX_TASKS_PER_IMPORT) -> ImportReport:
    """Create a task per staged file, by URL, in requests of at most `batch` tasks. Every
    file is checked first: one missing in zone 3C names itself and nothing is imported. A
    task the project has already (same sha256 and path) is not imported again."""
    batch = max(1, min(batch, MAX_TASKS_PER_IMPORT))
    key = image_key(label_config)
    tops: set[str] = set()
    for t in tasks:
        if not _SHA256.fullmatch(t.sha256):
            raise LabelStudioError(f"task of {display(t.path)}: {display(t.sha256)!r} is not a sha256", ExitCode.USAGE)
        parts = Path(t.path).parts
        if not parts or Path(t.path).is_absolute() or ".." in parts:
            raise LabelStudioError(f"task {t.sha256}: {display(t.path)!r} is not a path inside zone 3C",
                                   ExitCode.USAGE)
        if len(parts) < 2 and ls.files_root == ls.document_root:
            raise LabelStudioError(f"task {t.sha256}: {display(t.path)!r} is not inside a staged run directory",
                                   ExitCode.USAGE)
        if not (ls.zone_root / t.path).is_file():
            raise LabelStudioError(f"task {t.sha256}: its staged file {display(str(ls.zone_root / t.path))} is "
                                   "missing in zone 3C; stage the run again (`hoard action run` resumes it), "
                                   "nothing was imported", ExitCode.DATA)
        tops.add(parts[0])
    with _client() as http:
        _ensure_storages(ls, http, project, tops)
        present = {(d.get(SHA_KEY), d.get(PATH_KEY)) for d in
                   (t.get("data", {}) for t in _pages(ls, http, "/api/tasks", {"project": project}, "tasks"))}
        todo = [t for t in tasks if (t.sha256, t.path) not in present]
        requests = 0
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            body = [{"data": {key: local_url(ls, t.path), SHA_KEY: t.sha256, PATH_KEY: t.path}} for t in chunk]
            r = _call(ls, http, "POST", f"/api/projects/{project}/import", json=body, ok=(201, 400))
            requests += 1
            if r.status_code == 400:
                raise LabelStudioError(f"Label Studio at {ls.url} refused tasks {i + 1}–{i + len(chunk)} of project "
                                       f"{project}: {_detail(r)}")
            got = _json(ls, r, "import").get("task_count")
            if got != len(chunk):
                raise LabelStudioError(f"Label Studio at {ls.url} created {got} of {len(chunk)} tasks of project "
                                       f"{project}; run the action again (tasks already there are kept)")
    return ImportReport(imported=len(todo), present=len(tasks) - len(todo), requests=requests)


# --- export ----------------------------------------------------------------------------------

#: the project's counters (GET /api/projects/<id>/) that move when a task is added or deleted,
#: or an annotation submitted, skipped or deleted — one change at a time: two at once can
#: cancel out (a task loses its annotation as another gets one), so while they stand still a
#: poll most likely, not surely, need not build an export snapshot (steps._step_labels: a full
#: one every tenth poll, on release, and before a run fails at its timeout)
PROGRESS_KEYS = ("task_number", "finished_task_number", "num_tasks_with_annotations", "total_annotations_number",
                 "skipped_annotations_number")


def progress(ls: Client, project: int) -> dict[str, Any]:
    """The project's PROGRESS_KEYS counters: one short request, whatever the project's size."""
    path = f"/api/projects/{project}/"
    with _client() as http:
        doc = _json(ls, _call(ls, http, "GET", path), path)
    return {k: doc.get(k) for k in PROGRESS_KEYS}


def export(ls: Client, project: int, *, poll_s: float = 0.5) -> list[dict[str, Any]]:
    """Every task of the project with its annotations (Label Studio's JSON).

    Through an export snapshot (`POST /api/projects/<id>/exports/`, then its download), not the
    plain `GET …/export`: the plain one builds the whole file inside one HTTP request, which
    times out on big projects (label-studio#1134, #5873); a snapshot is built by Label
    Studio's own worker when it has one (in the request otherwise), its state is polled with
    short requests, and it is deleted once downloaded."""
    deadline = time.monotonic() + max(ls.timeout_s, 600.0)
    base = f"/api/projects/{project}/exports/"
    with _client() as http:
        snap = _json(ls, _call(ls, http, "POST", base, json={"title": "hoard"}, ok=(201,)), base)
        sid = int(snap["id"])
        try:
            while snap.get("status") != "completed":
                if snap.get("status") == "failed":
                    raise LabelStudioError(f"Label Studio at {ls.url}: export snapshot {sid} of project {project} "
                                           "failed; its log says why, then run the action again")
                if time.monotonic() > deadline:
                    raise LabelStudioError(f"Label Studio at {ls.url}: export snapshot {sid} of project {project} "
                                           "is not done after 10 minutes; see its workers, then run the action "
                                           "again")
                time.sleep(poll_s)
                snap = _json(ls, _call(ls, http, "GET", f"{base}{sid}"), base)
            r = _call(ls, http, "GET", f"{base}{sid}/download", params={"exportType": "JSON"})
            data = _json(ls, r, f"{base}{sid}/download")
        finally:
            try:
                _call(ls, http, "DELETE", f"{base}{sid}", ok=(200, 204, 404))
            except LabelStudioError:
                pass        # a snapshot left behind costs Label Studio a file, nothing more
    if not isinstance(data, list):
        raise LabelStudioError(f"Label Studio at {ls.url}: the export of project {project} is not a list of tasks")
    return data


# --- annotations → labels --------------------------------------------------------------------

def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the same shape is always the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def label_of(annotation_id: int, result: dict[str, Any]) -> tuple[str, str]:
    """(key, value) of one region or answer: key `ls:<from_name>`; value the canonical JSON of
    {type, value — exactly as Label Studio holds it: percent coordinates, labels, choices, text
    —, original_width, original_height, image_rotation (when given), annotation (its id), region
    (the result's id)}."""
    name = result.get("from_name") or result.get("type") or "result"
    shape: dict[str, Any] = {"type": result.get("type"), "value": result.get("value"),
                             "annotation": annotation_id, "region": result.get("id")}
    for k in ("original_width", "original_height", "image_rotation"):
        if k in result:
            shape[k] = result[k]
    return KEY_PREFIX + str(name), canonical(shape)


#: the answers that come back as plain `KEY=VALUE` labels (docs/actions.md, "What comes back"):
#: result type → the key of its value holding the answer
ANSWERS = {"choices": "choices", "rating": "rating", "textarea": "text", "taxonomy": "taxonomy"}
#: a control name that is a plain label key: `--label scene=outdoor` selects it (no `=`, no `:`,
#: no space); any other name keeps the raw `ls:<from_name>` row
PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: a value holding one of these belongs to a region (a per-region answer): kept raw with it
_REGION_KEYS = frozenset({"x", "y", "width", "height", "points", "start", "end", "startOffset", "endOffset"})


def answer_values(result: dict[str, Any]) -> list[str] | None:
    """The plain values of an answer for the whole image — each choice, the rating as a
    number, each text of a text area, each taxonomy path joined with "/" — or None when the
    result is a region, a per-region answer, another control, or not shaped as Label Studio
    shapes that answer (such a result keeps its raw `ls:` row: nothing is lost)."""
    field = ANSWERS.get(str(result.get("type")))
    value = result.get("value")
    name = result.get("from_name")
    if field is None or not isinstance(value, dict) or not isinstance(name, str) or not PLAIN_KEY.fullmatch(name):
        return None
    if _REGION_KEYS & value.keys() or result.get("parentID"):
        return None
    got = value.get(field)
    if field == "rating":
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return None
        try:
            number = float(got)  # an integer past a float's range (10**400) raises: not a rating
        except OverflowError:
            return None
        if not math.isfinite(number):
            return None
        return [str(int(got)) if number.is_integer() else repr(number)]
    if not isinstance(got, list) or not got:
        return None
    if field == "taxonomy":
        if not all(isinstance(p, list) and p and all(isinstance(x, str) for x in p) for p in got):
            return None
        return ["/".join(p) for p in got]
    if not all(isinstance(x, str) for x in got):
        return None
    return list(got)


def labels_of(annotation_id: int, result: dict[str, Any]) -> list[tuple[str, str]]:
    """The label rows of one region or answer: an answer for the whole image (choices, rating,
    text area, taxonomy) is a `<from_name>=<value>` row per value (`scene=outdoor`); a region
    (boxes, polygons, keypoints, per-region answers) its raw `label_of` row."""
    plain = answer_values(result)
    if plain is None:
        return [label_of(annotation_id, result)]
    return [(str(result["from_name"]), v) for v in plain]


def annotations_to_labels(export_json: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(node sha256, key, value) rows for every region and answer of every finished (not
    cancelled) annotation; sorted, no duplicates, the same export → the same rows. Labels are
    the labellers' text: one holding NUL (PostgreSQL's text cannot) or over MAX_LABEL_BYTES is
    refused in one line naming its task and control."""
    rows: set[tuple[str, str, str]] = set()
    for task in export_json:
        sha = (task.get("data") or {}).get(SHA_KEY)
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            continue
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise LabelStudioError(f"Label Studio task {task.get('id')} has no {SHA_KEY} in its data: it was not "
                                   "imported by hoard; remove it from the project or label it elsewhere",
                                   ExitCode.DATA)
        for ann in annotations:
            for result in ann.get("result") or []:
                try:
                    got = labels_of(int(ann["id"]), result)
                except ValueError:  # NaN or an infinity in its value: no JSON (canonical) can hold it
                    raise LabelStudioError(
                        f"Label Studio task {task.get('id')} (node {sha}): region {display(str(result.get('id')))} "
                        f"of {display(str(result.get('from_name')))} holds a number that is not finite (NaN or an "
                        "infinity), which a label cannot; edit it in Label Studio and run again",
                        ExitCode.DATA) from None
                for key, value in got:
                    where = (f"Label Studio task {task.get('id')} (node {sha}): region "
                             f"{display(str(result.get('id')))} of {display(key)}")
                    if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
                        raise LabelStudioError(
                            f"{where} is {len(value.encode())} bytes as a label, over the {MAX_LABEL_BYTES} a label "
                            "row holds; simplify it in Label Studio (fewer polygon points) and run again",
                            ExitCode.DATA)
                    if "\x00" in key or "\x00" in value:
                        raise LabelStudioError(f"{where} holds NUL (U+0000), which a label cannot; edit it in Label "
                                               "Studio and run again", ExitCode.DATA)
                    rows.add((sha, key, value))
    return sorted(rows)


# --- COCO ------------------------------------------------------------------------------------

_CONVERT = """
import json, sys
from label_studio_sdk.converter import Converter
from label_studio_sdk.converter.converter import Format
config, source, out = sys.argv[1:4]
Converter(config=open(config, encoding="utf-8").read(), project_dir=".", download_resources=False).convert(
    source, out, Format.COCO, is_dir=False)
"""


def to_coco(ls: Client, export_json: Sequence[dict[str, Any]], label_config: str, out_dir: Path) -> Path:
    """`out_dir/result.json`: the export as COCO, by label-studio-sdk's Converter run in its own
    Python (`label_studio.converter_python`). Hoard then fixes what the Converter makes up:
    each image's `file_name` becomes the staged path in zone 3C (`hoard_path`, with its node in
    `hoard_sha256`) instead of a synthetic name, and category ids run from 0 in the order of the
    Converter's categories."""
    key = image_key(label_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, dict[str, Any]] = {}
    tasks = []
    for task in export_json:
        data = dict(task.get("data") or {})
        path = data.get(PATH_KEY)
        if isinstance(path, str):
            # the Converter opens a local file for the image size; the staged file is here
            data[key] = str(ls.zone_root / path)
            by_file[data[key]] = task["data"]
        tasks.append({**task, "data": data})
    if not ls.converter_python.is_file():
        raise LabelStudioError(f"label_studio.converter_python {display(str(ls.converter_python))} does not exist; "
                               "`make labelstudio` installs label-studio-sdk there", ExitCode.USAGE)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".convert-") as tmp:
        src, cfg = Path(tmp) / "export.json", Path(tmp) / "config.xml"
        src.write_text(json.dumps(tasks), encoding="utf-8")
        cfg.write_text(label_config, encoding="utf-8")
        res = subprocess.run([str(ls.converter_python), "-c", _CONVERT, str(cfg), str(src), tmp],
                             capture_output=True, text=True, cwd=tmp, timeout=3600, check=False)
        if res.returncode != 0:
            raise LabelStudioError(f"label-studio-sdk's COCO converter failed: {display(_last_line(res.stderr))}")
        coco = json.loads((Path(tmp) / "result.json").read_text(encoding="utf-8"))
    remap = {c["id"]: i for i, c in enumerate(sorted(coco.get("categories", []), key=lambda c: c["id"]))}
    for c in coco.get("categories", []):
        c["id"] = remap[c["id"]]
    for a in coco.get("annotations", []):
        a["category_id"] = remap[a["category_id"]]
    for im in coco.get("images", []):
        known = by_file.get(im.get("file_name", ""))
        if known is None:
            raise LabelStudioError(f"the COCO converter named image {display(str(im.get('file_name')))}, no staged "
                                   "file of the export; see label_studio.converter_python's label-studio-sdk version",
                                   ExitCode.DATA)
        im["file_name"], im[SHA_KEY] = known[PATH_KEY], known[SHA_KEY]
    out = out_dir / "result.json"
    out.write_text(json.dumps(coco, indent=1, ensure_ascii=False), encoding="utf-8")
    return out


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "no message"
