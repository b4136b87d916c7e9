"""`hoard gui`: the NiceGUI app — login, the pages, `/health/*`, `/metrics`.

`build(cfg)` registers everything on NiceGUI's global app (pages, routes, the login
middleware, the one refresh timer); `serve` runs it. The tests build it the same way
(tests/gui_main.py) and drive it with NiceGUI's `user` fixture.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import secrets
import socket
import stat
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

from fastapi.responses import JSONResponse, Response
from nicegui import app, core, ui

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.modes import PASSAGE, ensure_dir
from hoardfs.gui import (
    actions_page,
    api,
    auth,
    browse_page,
    datasets_page,
    dups_page,
    events_page,
    launch_page,
    overview,
    pipelines_page,
    rqdash,
    runs_page,
    storage,
    users_page,
)
from hoardfs.gui.context import AppStopping, Context, ctx, in_thread, set_context, snapshot, stopping
from hoardfs.gui.devices import Devices
from hoardfs.gui.gate import LoginGate
from hoardfs.gui.metrics import render
from hoardfs.gui.protocol import head_timeout
from hoardfs.gui.security import SecurityHeaders
from hoardfs.gui.state import Cache
from hoardfs.jobs.users import LoginLimiter, users

log = logging.getLogger(__name__)


def state_dir(cfg: Settings) -> Path:
    return cfg.ssd.root / "state" / "gui"


def storage_secret(cfg: Settings) -> str:
    """The key that signs session cookies: made once, kept (0600) beside the users file, so
    a restart keeps everyone signed in."""
    path = state_dir(cfg) / "secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()


def build(cfg: Settings) -> None:
    """Register the GUI on NiceGUI's app for `cfg`."""
    set_context(Context(cfg, Cache(cfg), LoginLimiter(cfg.gui.login_attempts, cfg.gui.login_window_s),
                        LoginGate(cfg.gui.login_concurrency), devices=Devices(storage_secret(cfg))))
    # socket.io answers only the GUI's own origin (the scheme and Host the request came with, or
    # a proxy's X-Forwarded-Proto/-Host), not NiceGUI's `*`, which lets a page on any origin —
    # another port of this host is the same site, and its requests carry the session cookie —
    # open a socket with the user's session; a handshake from another origin gets 400
    core.sio.eio.cors_allowed_origins = None
    auth.register()
    app.add_middleware(SecurityHeaders)  # added after the login's: outside it, so its refusals carry the headers too

    async def refresh() -> None:
        await in_thread(ctx().cache.refresh)

    app.timer(cfg.gui.refresh_s, refresh)

    @app.get("/health/live")
    def live() -> dict:
        return {"ok": True}

    @app.get("/health/ready")
    async def ready() -> Response:
        """Open to anyone (a load balancer, systemd): only `{"ready": true|false}` — 200 when the
        last refresh's `hoard health` found nothing wrong, 503 when it did (or while the GUI
        stops). What is wrong (paths, disk ids, error texts) is `/api/health`'s, behind the login."""
        try:
            snap = await snapshot()
        except AppStopping:
            return stopping()
        up = bool(snap.health.get("ok"))
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    @app.get("/api/health")
    async def health() -> Response:
        """The `hoard health --json` document of the last refresh (signed in, or HTTP Basic)."""
        try:
            snap = await snapshot()
        except AppStopping:
            return stopping()
        return JSONResponse(snap.health)

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            await snapshot()
        except AppStopping:
            return stopping()
        return Response(render(lambda: ctx().cache.get(), ctx().gate), media_type="text/plain; version=0.0.4; charset=utf-8")

    overview.register()
    storage.register()
    users_page.register()
    launch_page.register()
    actions_page.register()
    runs_page.register()
    browse_page.register()
    pipelines_page.register()
    datasets_page.register()
    events_page.register()
    dups_page.register()
    api.register()
    rqdash.mount(cfg)


def usable(cfg: Settings, host: str | None = None, port: int | None = None) -> None:
    """Refuse to serve pages nobody can sign in to, or to listen where `gui.socket` says not to."""
    if cfg.gui.socket and (host or port):
        raise HoardError(f"gui.socket is set: `hoard gui` listens on {cfg.gui.socket} only; drop --host/--port "
                         "or unset gui.socket", ExitCode.USAGE)
    mine = local_addresses()
    for net in cfg.gui.trusted_proxies:
        held = sorted((a for a in mine if _holds(net, a)), key=str)
        if held:  # any local user connects from any address of the host, to 127.0.0.1 too
            raise HoardError(f"gui.trusted_proxies {net} holds {held[0]}, an address of this host: any local user "
                             "connects from it and writes the X-Forwarded-For the GUI would believe; name the "
                             "proxy's own address on its host, or for a proxy on this host set gui.socket instead "
                             "(docs/security.md)", ExitCode.USAGE)
    if not users(cfg):
        raise HoardError("no GUI users yet; add one with `hoard users add NAME --role admin` "
                         "(or [[gui.users]] in hoard.toml), then run `hoard gui` again", ExitCode.USAGE)


def local_addresses() -> set[IPv4Address | IPv6Address]:
    """Every address of this host's interfaces (Linux: /proc/net): any local user may bind one
    as the source of a connection, to 127.0.0.1 as well."""
    found: set[IPv4Address | IPv6Address] = set()
    with contextlib.suppress(OSError):
        leaf = None
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            if "|--" in line:
                leaf = line.split("|--", 1)[1].strip()
            elif line.strip() == "/32 host LOCAL" and leaf:
                found.add(ip_address(leaf))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hexa = line.split()[0]
            found.add(ip_address(":".join(hexa[i:i + 4] for i in range(0, 32, 4))))
    return found


def _holds(net: IPv4Network | IPv6Network, address: IPv4Address | IPv6Address) -> bool:
    if net.version == address.version:
        return address in net
    return net.version == 6 and ip_address(f"::ffff:{address}") in net  # a v4-mapped network


def session_options(cfg: Settings) -> dict[str, object]:
    """The session cookie's attributes: `Secure` when `gui.secure_cookies` says the GUI is
    reached over TLS (a proxy in front); SameSite=Lax, HttpOnly (Starlette's)."""
    return {"https_only": cfg.gui.secure_cookies, "same_site": "lax"}


def proxy_socket(path: Path, group: str | None) -> socket.socket:
    """The unix socket `hoard gui` listens on for a TLS proxy on this host (`gui.socket`):
    0660, given `group` (the proxy's), in a directory others may pass through (0751). Only
    those who may open it connect, so every connection is the proxy's. A socket left by a dead
    server is replaced; one a live server answers on, or any other file there, is refused."""
    _refuse_a_directory_others_change(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise HoardError(f"gui.socket {path} exists and is not a socket; remove it or choose another path",
                             ExitCode.USAGE)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nobody answers: left by a server that died
            else:
                raise HoardError(f"another `hoard gui` already listens on gui.socket {path}; stop it first",
                                 ExitCode.USAGE)
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise HoardError(f"gui.socket_group {group!r} is not a group on this host; create it or name the "
                             "proxy's group (e.g. www-data)", ExitCode.USAGE) from None
    if not path.parent.is_dir():
        ensure_dir(path.parent, PASSAGE)  # made here; an existing directory (checked above) keeps its mode
        _refuse_a_directory_others_change(path)  # not one another user made first, meanwhile
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # born 0600: nobody connects before its group and mode are set
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            raise HoardError(f"cannot give gui.socket {path} to group {group}: the service's user is not in it; "
                             f"add it (`usermod -aG {group} <user>`) and start `hoard gui` again",
                             ExitCode.USAGE) from None
        os.chmod(path, 0o660)
        sock.listen(2048)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return sock


def _refuse_a_directory_others_change(path: Path) -> None:
    """Refuse (one line) a `gui.socket` whose directory another user could change: one that is
    not root's or the service's, or that others may write — its owner, or anyone, could remove
    the socket and listen there, and the proxy would hand them every request, passwords and all
    (a directory above may be writable by others only with the sticky bit, as /tmp is)."""
    here = Path(os.path.realpath(path.parent))
    while not here.is_dir():  # the missing part is made by this service
        here = here.parent
    first = True
    for d in (here, *here.parents):
        st = os.stat(d)
        why = (f"belongs to another user (uid {st.st_uid})" if st.st_uid not in (0, os.geteuid())
               else "is writable by others" if st.st_mode & 0o022 and (first or not st.st_mode & stat.S_ISVTX)
               else None)
        if why:
            raise HoardError(f"gui.socket {path}: the directory {d} {why}, so a local user could replace the socket "
                             "and take the proxy's requests, passwords included; use a directory of the service's "
                             "own, e.g. /run/hoardfs/gui.sock (docs/security.md)", ExitCode.USAGE)
        first = False


def serve(cfg: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the GUI until interrupted (blocking): on host:port, or on the unix socket
    `gui.socket` for a proxy on this host."""
    # deferred: NiceGUI's storage module is only needed when serving, to keep sessions on the SSD
    from nicegui.storage import Storage

    usable(cfg, host, port)
    Storage.path = state_dir(cfg) / "sessions"
    ensure_dir(Storage.path)  # 0750: session ids, names and roles are nobody else's to read
    listen: dict[str, object] = {"host": host or cfg.gui.host, "port": port or cfg.gui.port}
    sock = proxy_socket(cfg.gui.socket, cfg.gui.socket_group) if cfg.gui.socket else None
    if sock is not None:
        listen["fd"] = sock.fileno()  # uvicorn serves the socket made above, its mode and group as set
    build(cfg)
    try:
        ui.run(title="hoardfs", reload=False, show=False,
               storage_secret=storage_secret(cfg), session_middleware_kwargs=session_options(cfg),
               show_welcome_message=False, favicon="🗄️",
               # the client address is the socket's: X-Forwarded-For from a local process must not
               # choose it (the failed-login limiter counts per client); `gui.trusted_proxies` and
               # `gui.socket` say whose header counts (hoardfs.gui.auth.client_address)
               proxy_headers=False,
               http=head_timeout(cfg.gui.header_timeout_s),  # uvicorn has no deadline on a request's head
               **listen)
    finally:
        if sock is not None:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                cfg.gui.socket.unlink()
