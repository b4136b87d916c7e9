"""Logins a local user cannot lock out or forge: every loopback address is one client, a
proxy on this host is reached through gui.socket (a unix socket no other user can take
or replace) and only a trusted proxy's X-Forwarded-For is believed (docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gui_fixtures import gui_home, proxied  # noqa: F401 - fixtures
from tests.test_privileges import as_user, needs_root


def _basic_from(url: str, source: str, name: str, password: str, forwarded: str | None = None) -> int:
    """The status of a Basic login to /metrics over a connection made from `source` (any
    address of 127.0.0.0/8 is this host's: an unprivileged user binds whichever it likes)."""
    import base64
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120, source_address=(source, 0))
    headers = {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    try:
        conn.request("GET", "/metrics", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def served(request, hoard_home: Path, pg, redis_conn):
    """`hoard gui` on a free port of 127.0.0.1 with the test's [gui] keys (an indirect parameter)."""
    from tests.gui_fixtures import gui_process

    with gui_process(hoard_home, pg, **getattr(request, "param", {})) as (url, _):
        yield url


@pytest.mark.timeout(300)
def test_a_local_user_cannot_lock_a_name_everywhere_from_loopback_aliases(served) -> None:
    """A name is locked everywhere after 4 × `gui.login_attempts` failures, one client adding at
    most `login_attempts` — "so no single address can lock a name everywhere". Every address of
    127.0.0.0/8 reaches a GUI on 127.0.0.1 and any local user binds whichever it likes: five
    wrong guesses from each of 127.0.0.2–5 locked otto out for everyone, the TLS proxy's remote
    clients included. The loopback addresses are now one client (and an IPv6 /64 is one)."""
    from tests.gui_fixtures import PASSWORDS

    for i in range(5):
        assert _basic_from(served, "127.0.0.2", "otto", f"guess-{i}") == 401
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):  # each was a fresh client of five more guesses
        for i in range(5):
            assert _basic_from(served, source, "otto", f"guess-{i}") == 429
    assert _basic_from(served, "127.0.0.6", "otto", PASSWORDS["otto"]) == 429  # this host guessed wrong


def test_the_client_key_groups_loopback_and_ipv6_networks() -> None:
    """The address the limits count for: one key for every loopback address (v4, v6, v4-mapped),
    one per IPv6 /64 (a host is given a whole /64), IPv4 addresses as they are."""
    from hoardfs.gui.auth import client_key

    assert len({client_key(a) for a in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2")}) == 1
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::9") != client_key("2001:db8:1:3::5")
    assert client_key("203.0.113.5") != client_key("203.0.113.6")
    assert client_key("unknown") == "unknown"


def _connects(user_group: str, path: Path) -> bool:
    """Whether the user nobody, with primary group `user_group` and no other, can connect to `path`."""
    import subprocess

    res = subprocess.run(["setpriv", "--reuid=nobody", f"--regid={user_group}", "--clear-groups", "--", "/usr/bin/python3",
                          "-c", "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])", str(path)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)
    assert res.returncode == 0 or "PermissionError" in res.stderr, res.stderr
    return res.returncode == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("proxied", [{"socket_group": "nogroup", "trusted_proxies": ["192.0.2.1"]}], indirect=True)
def test_a_local_user_cannot_write_the_forwarded_for_of_a_proxy_on_this_host(proxied) -> None:
    """hoard.example.toml once told a proxy on this host to be named by
    `trusted_proxies = ["127.0.0.1"]`, and a local user connecting to the GUI's port directly is
    127.0.0.1 too: its X-Forwarded-For was believed, and five wrong guesses under each of four
    addresses it wrote locked otto out everywhere. A proxy on this host now reaches the GUI on
    `gui.socket`: no TCP port is open, only the proxy's group may connect (0660), and what
    comes through the socket is the proxy's, so its X-Forwarded-For names the client."""
    import socket
    import stat

    from tests.gui_browser import unix_get
    from tests.gui_fixtures import PASSWORDS

    url, port, path = proxied
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))  # nothing listens where a local user could write the header
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert _connects("nogroup", path)  # the proxy's group connects ...
    assert not _connects("daemon", path)  # ... another local user does not

    def login(password: str, forwarded: str) -> int:
        import base64

        auth = "Basic " + base64.b64encode(f"otto:{password}".encode()).decode()
        return unix_get(path, "/metrics", {"Authorization": auth, "X-Forwarded-For": forwarded})[0]

    for i in range(5):
        assert login(f"guess-{i}", "198.51.100.1") == 401
    assert login(PASSWORDS["otto"], "198.51.100.1") == 429  # locked at the client the proxy named
    assert login(PASSWORDS["otto"], "10.9.8.7, 198.51.100.1") == 429  # what the client wrote before it: ignored
    assert login(PASSWORDS["otto"], "198.51.100.1, 192.0.2.1") == 429  # a trusted proxy's hop is passed over
    assert login(PASSWORDS["otto"], "203.0.113.9") == 200  # another client of the proxy signs in
    assert url == f"unix:{path}"


def test_a_loopback_trusted_proxy_is_refused_with_the_way_to_do_it(hoard_home: Path, tmp_path: Path) -> None:
    """`gui.trusted_proxies` naming loopback addresses (127.0.0.1, ::1, a v4-mapped one, a
    network holding them) is refused when the config loads: one line naming the key and
    `gui.socket`, exit 2."""
    import subprocess
    import sys

    base = (hoard_home / "hoard.toml").read_text()  # no [gui] (the checkout's hoard.toml is made by `make up` only)
    for proxies in ('["127.0.0.1"]', '["::1"]', '["::ffff:127.0.0.1"]', '["10.0.0.1", "0.0.0.0/0"]'):
        cfg = tmp_path / "c.toml"
        cfg.write_text(base + f"\n[gui]\ntrusted_proxies = {proxies}\n")
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "gui"], capture_output=True,
                             text=True, env={k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}, timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (proxies, res.stdout, res.stderr)
        assert "gui.trusted_proxies" in lines[0] and "gui.socket" in lines[0], lines[0]


def test_the_proxy_socket_replaces_a_dead_one_and_refuses_the_rest(tmp_path: Path) -> None:
    """`gui.socket`: a socket left by a server that died is replaced; one a live server
    answers on, a file that is not a socket, or an unknown group is refused in one line."""
    import socket

    from hoardfs.base.errors import HoardError
    from hoardfs.gui.app import proxy_socket

    path = tmp_path / "run" / "gui.sock"
    dead = proxy_socket(path, None)
    dead.close()  # the server died; its socket file stays
    assert path.exists()
    live = proxy_socket(path, None)
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
        with pytest.raises(HoardError, match="another `hoard gui` already listens"):
            proxy_socket(path, None)
        assert path.exists()  # the live server's socket is left alone
    finally:
        live.close()
    other = tmp_path / "run" / "file"
    other.write_text("mine")
    with pytest.raises(HoardError, match="is not a socket"):
        proxy_socket(other, None)
    assert other.read_text() == "mine"
    with pytest.raises(HoardError, match="gui.socket_group 'no-such-grp' is not a group"):
        proxy_socket(tmp_path / "run" / "g.sock", "no-such-grp")


def _an_address_of_this_host() -> str:
    """A non-loopback IPv4 address of this host: the source of a route out (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))
        address = s.getsockname()[0]
    assert not address.startswith("127."), f"this host has no address but loopback ({address})"
    return address


def test_a_trusted_proxy_network_holding_this_host_is_refused(hoard_home: Path, pg) -> None:
    """Finding 10 again, without loopback: `gui.trusted_proxies = ["192.0.2.0/24"]` names the
    LAN a proxy on another host sits in — and this host (192.0.2.2) is in it too. A local user
    binds its socket to 192.0.2.2 and connects to the GUI on 127.0.0.1 (the kernel allows any
    of the host's addresses as the source): its X-Forwarded-For was believed, and five wrong
    guesses of otto under each of four addresses it wrote (as `nobody`) locked otto out from
    everywhere — 429 to the correct password from 127.0.0.1. `hoard gui` now refuses to start
    with a trusted proxy network holding an address of this host: one line naming the key,
    the address, and `gui.socket`, exit 2, nothing listening."""
    import ipaddress
    import subprocess
    import sys

    from tests.gui_browser import free_port
    from tests.gui_fixtures import make_home

    mine = _an_address_of_this_host()
    lan = str(ipaddress.ip_network(f"{mine}/24", strict=False))
    base = make_home(hoard_home, pg).read_text()  # users exist: only the proxies could stop it
    for i, proxies in enumerate(([lan], [mine], ["198.51.100.7", f"::ffff:{mine}"])):
        cfg_path = hoard_home / f"c{i}.toml"
        cfg_path.write_text(base + f"\n[gui]\ntrusted_proxies = {proxies!r}\nport = {free_port()}\n")
        try:
            res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "gui"], capture_output=True,
                                 text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                             if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")})
        except subprocess.TimeoutExpired:
            pytest.fail(f"`hoard gui` served with trusted_proxies = {proxies}, holding {mine} of this host")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (proxies, res.stdout, res.stderr)
        assert "gui.trusted_proxies" in lines[0] and mine in lines[0] and "gui.socket" in lines[0], lines[0]


@needs_root
def test_a_proxy_socket_where_another_user_could_replace_it_is_refused(tmp_path: Path) -> None:
    """`gui.socket` in a directory a local user made first (under /tmp or /var/tmp, before
    `hoard gui` ever ran): the GUI bound its socket there, and the directory's owner (`nobody`)
    removed it and listened at the same path — the TLS proxy then handed every request, the
    passwords of the sign-in form included, to that user, who also wrote the X-Forwarded-For
    the GUI would have believed. And a socket straight in a world-writable directory (/tmp
    itself) made `hoard gui` chmod that directory to 0751. Both are now refused in one line,
    nothing bound and no mode changed; a directory of root's (or the service's) that others
    cannot write is used as it is."""
    import stat
    import tempfile

    from hoardfs.base.errors import HoardError
    from hoardfs.gui.app import proxy_socket

    top = Path(tempfile.mkdtemp(prefix="hg", dir="/tmp"))  # a socket's path holds 107 bytes at most
    try:
        top.chmod(0o1777)  # as /tmp, /var/tmp are
        theirs = top / "run"
        res = as_user('mkdir "$1" && chmod 755 "$1"', str(theirs))
        assert res.returncode == 0, res.stderr
        with pytest.raises(HoardError, match="could replace the socket") as refused:
            sock = proxy_socket(theirs / "gui.sock", None)
            sock.close()  # the old code: bound, and the owner of `run` swaps it for their own
            res = as_user('rm "$1"/gui.sock && echo swapped', str(theirs))
            assert "swapped" not in res.stdout
        assert len(str(refused.value).splitlines()) == 1 and str(theirs) in str(refused.value)
        assert not (theirs / "gui.sock").exists()
        with pytest.raises(HoardError, match="could replace the socket"):
            proxy_socket(top / "gui.sock", None).close()
        assert stat.S_IMODE(top.stat().st_mode) == 0o1777 and not (top / "gui.sock").exists()
        ours = top / "ours"
        ours.mkdir(mode=0o755)
        proxy_socket(ours / "gui.sock", None).close()  # root's, others cannot write: used as it is
        assert stat.S_IMODE(ours.stat().st_mode) == 0o755
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)
