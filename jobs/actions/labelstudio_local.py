"""A Label Studio on this host for the embedded default: `hoard labelstudio up|down|status|token`
(docs/actions.md, "Starting Label Studio").

`make labelstudio` installs label-studio 1.23 in a venv of its own (`var/labelstudio/venv`, or
the venv of `label_studio.converter_python`). `up` starts its `label-studio start` detached, in
a session of its own, with

- its data (SQLite, its log) in `<ssd.root>/state/labelstudio/` (`data/`, `label-studio.log`),
  and `server.json` there: the process id, the URL, when it started;
- local-files serving on, its document root the one AC5 needs (`label_studio.document_root`,
  else `files_root`, else zone 3C): the tasks' images are served from the staged files;
- one user (`hoard@localhost`) and its legacy API token, generated once: the token in
  `label_studio.token_file` (else `<state>/labelstudio/token`), the password in
  `<state>/labelstudio/password`, both 0600; given to Label Studio through its environment,
  never its command line (which other local accounts can read in `ps`);
- listening on 127.0.0.1 only, at `label_studio.url`'s port (else 8080, another free one when
  8080 is taken, kept in server.json for the next start);
- confined (`label_studio.confine`, default true) through hoard's launcher hoardfs.base.confine:
  Label Studio writes only its data directory and a temporary directory of its own
  (`<state>/labelstudio/tmp`, its TMPDIR), reads only those, its venv (and the Python that venv
  runs), the system's programs, libraries and files (hoardfs.jobs.actions.execute's
  SYSTEM_PROGRAMS, SYSTEM_READS) and the document root, and opens IPv4/IPv6 sockets only.
  Landlock checks the file a link resolves to, so a link a worker plants in 3C pointing
  elsewhere (hoard.toml, a shard, the index) is answered 404, whichever user runs it. Where
  the kernel cannot confine it, `up` refuses in one line naming the key;
- confined or not, hoard's settings module (`GUARD_MODULE`, `_GUARD`): Landlock lets Label
  Studio read and write its own data, so its local files (served, imported as JSON tasks,
  written by an export storage) are only files whose real path lies below the document root
  and outside its data; `up` refuses a document root that holds the SSD's state/ or hoard.toml.

`down` stops only the process `server.json` names, and only while that process is this data
directory's `label-studio`. AC5 (`labelstudio.client_from_settings`) uses this server when
hoard.toml's `[label_studio]` names no url or token_file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hoardfs.base import landlock
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode
from hoardfs.base.files import flocked, state_directory, write_owned
from hoardfs.base.paths import display
from hoardfs.jobs.actions.execute import launcher_argv, program_paths
from hoardfs.jobs.actions.labelstudio import (
    DEFAULT_CONVERTER_PYTHON,
    LabelStudioError,
    home_of,
    read_token,
    recorded,
)

#: the user `up` creates (Label Studio signs in by e-mail address)
USERNAME = "hoard@localhost"
#: Label Studio's own default port
DEFAULT_PORT = 8080
#: the longest a start may take: a first start applies Label Studio's migrations (~25 s on 2 cores)
START_S = 300.0
#: how long `down` waits for the process to end after SIGTERM, before SIGKILL
STOP_S = 30.0
_STARTED = re.compile(r"Starting development server at http://127\.0\.0\.1:(\d+)/")
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Local:
    """Where this host's Label Studio lives, and how it is started."""

    home: Path              # <ssd.root>/state/labelstudio
    venv: Path              # the venv holding `label-studio`
    token_file: Path
    document_root: Path
    port: int | None        # label_studio.url's port; None: not configured

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "label-studio.log"

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def server_file(self) -> Path:
        return self.home / "server.json"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    @property
    def exe(self) -> Path:
        return self.venv / "bin" / "label-studio"


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    started: bool           # started now (False: it was up already)


def local_of(cfg: Settings, venv: Path | None = None) -> Local:
    """The local server `cfg` describes (`venv`: the one holding label-studio, instead of
    label_studio.converter_python's); refused in one line when label_studio.url names another
    host (that Label Studio is run there, not by hoard)."""
    lc = cfg.label_studio
    port = None
    if lc.url is not None:
        parts = urlsplit(lc.url)
        if parts.hostname not in _LOCAL_HOSTS or parts.scheme != "http":
            raise LabelStudioError(f"label_studio.url is {display(lc.url)}: a Label Studio run elsewhere; "
                                   "`hoard labelstudio up` starts one on this host only when the url is unset or "
                                   "http://127.0.0.1:PORT", ExitCode.USAGE)
        port = parts.port or 80
    venv = venv or (lc.converter_python or DEFAULT_CONVERTER_PYTHON).parent.parent
    return Local(home=home_of(cfg), venv=venv, token_file=lc.token_file or home_of(cfg) / "token",
                 document_root=lc.document_root or lc.files_root or cfg.ssd.zone_path("3C"), port=port)


def _record(local: Local, doc: dict[str, Any]) -> None:
    write_owned(local.server_file, json.dumps(doc, sort_keys=True).encode())


def _is_ours(local: Local, pid: int) -> bool:
    """Process `pid` is this data directory's `label-studio` (not a pid reused by another)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(local.data).encode() in argv and any(a.endswith(b"label-studio") for a in argv[:2])


def running(local: Local) -> Running | None:
    """The server `up` started, while its process lives; None otherwise."""
    doc = recorded(local.home)
    pid, url = doc.get("pid"), doc.get("url")
    if isinstance(pid, int) and isinstance(url, str) and not _ended(pid) and _is_ours(local, pid):
        return Running(url=url, pid=pid, started=False)
    return None


def _secret(path: Path, make: Callable[[], str]) -> str:
    """The one-word secret in `path`, made once (0600) when there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_owned(path, (make() + "\n").encode())
    return read_token(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tail(log: Path, n: int = 3) -> str:
    """The log's last lines, as one line."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return "(no log)"
    return display(" | ".join(x.strip() for x in lines)) or "(empty log)"


#: the refusals' next step where Label Studio cannot be confined
_OPT_OUT = "set label_studio.confine = false in hoard.toml to start it unconfined"


def confines(wanted: bool, gone: tuple[str, str] | None) -> bool:
    """Whether `up` starts Label Studio confined: `wanted` is label_studio.confine, `gone`
    what `landlock.unavailable()` says (why this kernel cannot confine, the next step; None
    where it can). LabelStudioError, one line naming the key, where it is wanted and cannot be."""
    if wanted and gone is not None:
        raise LabelStudioError(f"label_studio.confine: this kernel cannot confine Label Studio: {gone[0]}; "
                               f"{gone[1]}, or {_OPT_OUT}", ExitCode.UNAVAILABLE)
    return wanted


def confined_argv(argv: list[str], *, data: Path, tmp: Path, read: Iterable[Path], search: str) -> list[str]:
    """hoard's launcher (hoardfs.base.confine) running `argv`, Label Studio's: it writes only
    `data` and `tmp`, reads those, `read` (the document root), its program's files
    (`program_paths`: the venv, the Python it runs) and the system's; IPv4 and IPv6 sockets."""
    return [*launcher_argv(write=[], own=[str(data), str(tmp)], read=[str(p) for p in read],
                           run=program_paths(argv[0], search), network=True, name="Label Studio", opt_out=_OPT_OUT),
            "--", *argv]


#: the module Label Studio takes as its Django settings (`launch`): its own settings and
#: `LocalFilesGuard`, in a directory of its TMPDIR on its PYTHONPATH
GUARD_MODULE = "hoard_label_studio"
#: its source. Label Studio's /data/local-files/ follows the links below its document root to
#: whatever it may read — its own data too (the SQLite database holding every account's token
#: and password hash, `.env` holding the key that signs its session cookies), which Landlock
#: cannot tell apart from its own reads. The guard serves a file only where its real path lies
#: below a root hoard names (HOARD_LABEL_STUDIO_SERVES: the document root, files_root's target)
#: and outside Label Studio's own directories (HOARD_LABEL_STUDIO_OWN): checked before the view
#: opens it (no device, FIFO or /proc file is opened) and again on the file it opened, by the
#: kernel's name for it (a link swapped in between is caught); anything else is answered 404.
#: A storage that imports tasks from JSON files reads each file under the same rule; an export
#: storage writes an annotation's file only there too, never through a link (a link a worker
#: plants in 3C named as the next annotation would otherwise have it overwrite its database,
#: or, unconfined, any file its user may write).
_GUARD = """\
import json
import os
import posixpath
import sys

_LS = "label_studio.core.settings.label_studio"


def __getattr__(name):  # its settings read while they load (Sentry's) are Label Studio's own so far
    return getattr(sys.modules[_LS], name)


def __dir__():
    return dir(sys.modules[_LS])


from label_studio.core.settings.label_studio import *  # noqa: E402,F403

MIDDLEWARE = [*MIDDLEWARE, "hoard_label_studio.LocalFilesGuard"]  # noqa: F405

_SERVES = [os.path.realpath(p) for p in json.loads(os.environ.get("HOARD_LABEL_STUDIO_SERVES", "[]"))]
_OWN = [os.path.realpath(p) for p in json.loads(os.environ.get("HOARD_LABEL_STUDIO_OWN", "[]"))]


def _below(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def served(path):
    return _below(path, _SERVES) and not _below(path, _OWN)


def _fileno(response):
    # Django's FileResponse holds the file as `file_to_stream`; Label Studio's RangedFileResponse
    # as `ranged_file.f` (its RangedFileReader's)
    f = getattr(response, "file_to_stream", None) or getattr(response, "ranged_file", None)
    for _ in range(3):
        if f is None:
            return None
        if hasattr(f, "fileno"):
            try:
                return f.fileno()
            except (OSError, ValueError):
                return None
        f = getattr(f, "f", None)
    return None


def _read_served(key):
    if not served(os.path.realpath(key)):
        raise ValueError(f"{key} lies outside the files Label Studio serves here (hoard's guard)")
    try:
        with open(key, "rb") as f:
            if not served(os.readlink(f"/proc/self/fd/{f.fileno()}")):
                raise ValueError(f"{key} lies outside the files Label Studio serves here (hoard's guard)")
            return f.read()
    except OSError as e:
        raise ValueError(f"Failed to read file {key}: {e}") from None


def _guard_imports():
    # a local-files storage that imports tasks from JSON files reads each through `get_data`
    from io_storages.localfiles.models import LocalFilesImportStorageBase
    from io_storages.utils import load_tasks_json

    own = LocalFilesImportStorageBase.get_data

    def get_data(self, key):
        return own(self, key) if self.use_blob_urls else load_tasks_json(_read_served(key), key)

    LocalFilesImportStorageBase.get_data = get_data


def _write_served(path, text):
    if not served(os.path.realpath(os.path.dirname(path))):
        raise ValueError(f"{path} lies outside the files Label Studio serves here (hoard's guard)")
    # never through a link, nor into a FIFO; truncated only once the file is known to be served
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        if not served(os.readlink(f"/proc/self/fd/{fd}")):
            raise ValueError(f"{path} lies outside the files Label Studio serves here (hoard's guard)")
        f.truncate(0)
        f.write(text)


def _guard_exports():
    # a local-files export storage writes each annotation as a file named by its id
    from io_storages.localfiles.models import LocalFilesExportStorage, LocalFilesExportStorageLink

    def save_annotation(self, annotation):
        key = LocalFilesExportStorageLink.get_key(annotation)
        path = os.path.join(self._get_storage_path_or_raise(), f"{key}")
        _write_served(path, json.dumps(self._get_serialized_data(annotation), indent=2))
        LocalFilesExportStorageLink.create(annotation, self)

    LocalFilesExportStorage.save_annotation = save_annotation


class LocalFilesGuard:
    def __init__(self, get_response):
        self.get_response = get_response
        _guard_imports()  # the apps are loaded once a middleware is made
        _guard_exports()

    def __call__(self, request):
        response = self.get_response(request)
        if getattr(request, "hoard_local_file", False) and getattr(response, "streaming", False):
            fd = _fileno(response)
            try:
                real = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else ""
            except OSError:
                real = ""
            if not served(real):
                from django.http import HttpResponseNotFound

                response.close()
                return HttpResponseNotFound()
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = getattr(request, "resolver_match", None)
        if match is None or match.url_name != "localfiles_data":
            return None
        request.hoard_local_file = True
        d = request.GET.get("d")
        if not d:
            return None
        from django.conf import settings
        from django.http import HttpResponseNotFound
        from django.utils._os import safe_join

        try:
            full = safe_join(settings.LOCAL_FILES_DOCUMENT_ROOT, posixpath.normpath(d).lstrip("/"))
        except Exception:  # SuspiciousFileOperation: `..` out of the root
            return HttpResponseNotFound()
        return None if served(os.path.realpath(full)) else HttpResponseNotFound()
"""


def launch(exe: Path, *, data: Path, document_root: Path, port: int, token: str, password: str, log: Path,
           cwd: Path, tmp: Path, username: str = USERNAME, confine: bool = True,
           read: Iterable[Path] = ()) -> subprocess.Popen:
    """`label-studio start` detached (a session of its own), its output in `log`: local-files
    serving under `document_root`, the user `username` with `token` as its legacy API token on
    a first start (secrets through the environment), bound to 127.0.0.1:`port`, `tmp` (made
    anew, empty, holding `_GUARD`) its TMPDIR. With `confine`, through hoard's launcher
    (`confined_argv`): it writes `data` and `tmp` alone and reads, besides its own files,
    `document_root` and `read`. Either way its local files lie below those two, outside its own."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp)
    else:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    (tmp / "guard").mkdir(mode=0o700)
    (tmp / "guard" / f"{GUARD_MODULE}.py").write_text(_GUARD)
    env = {
        "PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "TMPDIR": str(tmp),
        # its settings and the guard of its local files (`_GUARD`), confined or not
        "PYTHONPATH": str(tmp / "guard"), "DJANGO_SETTINGS_MODULE": GUARD_MODULE,
        "HOARD_LABEL_STUDIO_SERVES": json.dumps([os.path.realpath(p) for p in [document_root, *read]]),
        "HOARD_LABEL_STUDIO_OWN": json.dumps([os.path.realpath(p) for p in (data, tmp)]),
        "PYTHONUNBUFFERED": "1",   # its "Starting development server at …" line reaches the log at once
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USERNAME": username, "LABEL_STUDIO_PASSWORD": password, "LABEL_STUDIO_USER_TOKEN": token,
        # offline and quiet: no version check on PyPI, no analytics
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
    }
    argv = [str(exe), "start", "--no-browser", "--data-dir", str(data), "--internal-host", "127.0.0.1",
            "--port", str(port), "--enable-legacy-api-token"]
    if confine:
        argv = confined_argv(argv, data=data, tmp=tmp, read=[document_root, *read], search=env["PATH"])
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)


def wait_until_up(alive: Callable[[], int | None], port: int, token: str, log: Path, *, since: int = 0,
                  limit_s: float = START_S) -> str:
    """The URL once its API answers with `token`; Label Studio moves to the next port when its
    own is taken, and the log (read from byte `since`) says which. `alive()` gives the exit
    status once the process ended (None while it runs). LabelStudioError, one line, otherwise."""
    import httpx  # deferred: only `up` and the tests wait for a server; httpx is ~50 ms

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        code = alive()
        if code is not None:
            raise LabelStudioError(f"Label Studio exited with status {code} while starting: {tail(log)} "
                                   f"({display(str(log))})")
        try:
            with log.open("rb") as fh:
                fh.seek(since)
                found = _STARTED.search(fh.read().decode(errors="replace"))
        except OSError:
            found = None
        url = f"http://127.0.0.1:{found.group(1) if found else port}"
        try:
            r = httpx.get(f"{url}/api/projects/", headers={"Authorization": f"Token {token}"}, timeout=10,
                          trust_env=False)
            if r.status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise LabelStudioError(f"Label Studio did not answer within {limit_s:g} s (port {port}): {tail(log)}; "
                           f"see {display(str(log))}")


def stop_group(pid: int, wait: Callable[[float], bool]) -> None:
    """SIGTERM to the process group `pid` leads (`launch` made it a session of its own), then
    SIGKILL when `wait(STOP_S)` says it did not end."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if not wait(STOP_S):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait(10.0)


def up(cfg: Settings, venv: Path | None = None) -> Running:
    """Start this host's Label Studio (from `venv`, default `local_of`'s) unless it runs;
    return once it answers."""
    local = local_of(cfg, venv)
    state_directory(local.home)
    with flocked(local.home / "up.lock"):
        now = running(local)
        if now is not None:
            return now
        if not local.exe.is_file():
            raise LabelStudioError(f"no Label Studio in {display(str(local.venv))}: `make labelstudio` installs it "
                                   "(or set label_studio.converter_python to a venv's python that has it)",
                                   ExitCode.USAGE)
        if not local.document_root.is_dir():
            raise LabelStudioError(f"Label Studio's document root {display(str(local.document_root))} is not a "
                                   "directory; `hoard init` makes zone 3C (or fix label_studio.document_root)",
                                   ExitCode.USAGE)
        confine = confines(cfg.label_studio.confine, landlock.unavailable())
        files_root = cfg.label_studio.files_root
        reads = [Path(os.path.realpath(files_root))] if files_root is not None else []  # a link in the root
        try:  # what it serves, confined or not; its data dir names the SSD whose state/ it must not hold
            landlock.refuse_secrets([local.document_root, *reads], own=[local.data, local.tmp])
        except landlock.SecretInReach as e:
            raise LabelStudioError(f"label_studio.document_root: {e}", ExitCode.USAGE) from None
        toml = os.path.realpath(cfg.source) if cfg.source is not None else None  # wherever --config found it
        for root in [local.document_root, *reads]:
            if toml is not None and toml.startswith(os.path.realpath(root).rstrip("/") + "/"):
                raise LabelStudioError(f"label_studio.document_root: {display(str(root))} holds hoard.toml "
                                       f"({display(toml)}), which Label Studio would serve; keep hoard.toml outside "
                                       "its document root", ExitCode.USAGE)
        token = _secret(local.token_file, lambda: secrets.token_hex(20))
        password = _secret(local.password_file, lambda: secrets.token_urlsafe(18))
        before = recorded(local.home)
        port = local.port or before.get("port") or DEFAULT_PORT
        if not _port_free(port):
            if local.port is not None:
                raise LabelStudioError(f"port {port} of label_studio.url is taken by another program; stop it or "
                                       "give label_studio.url another port", ExitCode.UNAVAILABLE)
            port = free_port()
        local.data.mkdir(parents=True, exist_ok=True)
        since = local.log.stat().st_size if local.log.exists() else 0
        proc = launch(local.exe, data=local.data, document_root=local.document_root, port=port, token=token,
                      password=password, log=local.log, cwd=local.home, tmp=local.tmp, confine=confine, read=reads)
        _record(local, {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}", "starting": True,
                        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            url = wait_until_up(proc.poll, port, token, local.log, since=since)
        except BaseException:
            stop_group(proc.pid, lambda s: waited(proc, s))
            _record(local, {"port": port, "url": f"http://127.0.0.1:{port}"})
            raise
        got = int(urlsplit(url).port or port)
        if local.port is not None and got != local.port:
            stop_group(proc.pid, lambda s: waited(proc, s))
            raise LabelStudioError(f"Label Studio took port {got}, not label_studio.url's {local.port} (taken "
                                   "meanwhile); free it and run `hoard labelstudio up` again", ExitCode.UNAVAILABLE)
        _record(local, {"pid": proc.pid, "port": got, "url": url,
                        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return Running(url=url, pid=proc.pid, started=True)


def waited(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether `proc` ended within `seconds`."""
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _ended(pid: int) -> bool:
    """Process `pid` is gone, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _gone(pid: int, seconds: float) -> bool:
    """Process `pid` (not a child of this one) ended within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _ended(pid):
            return True
        time.sleep(0.2)
    return _ended(pid)


def down(cfg: Settings) -> int | None:
    """Stop the server `up` started (its process id, or None when none runs); nothing else."""
    local = local_of(cfg)
    state_directory(local.home)
    with flocked(local.home / "up.lock"):
        now = running(local)
        doc = recorded(local.home)
        if now is None:
            if doc.get("pid") is not None:  # a process that ended by itself: forgotten
                _record(local, {k: v for k, v in doc.items() if k in ("port", "url")})
            return None
        stop_group(now.pid, lambda s: _gone(now.pid, s))
        _record(local, {k: v for k, v in doc.items() if k in ("port", "url")})
        return now.pid


def status(cfg: Settings) -> dict[str, Any]:
    """{running, url, pid}: the url it answers at (or would: label_studio.url, the last one)."""
    local = local_of(cfg)
    now = running(local)
    if now is not None:
        return {"running": True, "url": now.url, "pid": now.pid}
    url = cfg.label_studio.url or recorded(local.home).get("url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    return {"running": False, "url": url.rstrip("/"), "pid": None}


def token(cfg: Settings) -> str:
    """The token AC5 uses for this host's Label Studio."""
    local = local_of(cfg)
    if not local.token_file.exists():
        raise LabelStudioError(f"no Label Studio token yet ({display(str(local.token_file))}); `hoard labelstudio "
                               "up` makes one", ExitCode.USAGE)
    return read_token(local.token_file)
