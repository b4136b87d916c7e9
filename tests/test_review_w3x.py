"""The adversarial review of W3-X (issue 41): each hole found, reproduced as the attacker
would — a scraper account that writes 3A (`nobody` in 3A's group, by setpriv), the real
`hoard` CLI as root — and what must hold now."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gui_fixtures import gui_home, proxied, user  # noqa: F401 - fixtures
from tests.test_privileges import _gallery, as_user, hoard, home, needs_root, reachable  # noqa: F401 (fixtures)

SECRET = "ROOT-ONLY-TOKEN-4f1c2a"


def _secret(home: Path) -> Path:
    """A root-only file, as the GUI's cookie key or /etc/shadow is."""
    secret = home / "ssd" / "state" / "secret-token"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET + " rest\n")
    secret.chmod(0o600)
    return secret


@needs_root
def test_a_ready_signal_linked_to_a_secret_tells_nothing_of_it(home: Path) -> None:
    """The scraper makes its batch's `_READY` a link to a root-only file. `hoard ingest
    --ready` (root) read the link's target, took its first word for the source name and
    wrote "no source 'ROOT-ONLY-TOKEN…'" into the batch's `_REASON.txt` (which the scraper
    reads, its directory's group set-gid), into its own output and into `hoard health`.
    A signal that is not a regular file of the batch is now refused without being read."""
    cfg_path = home / "hoard.toml"
    secret = _secret(home)
    batch = _gallery(home / "gen")
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && chmod g+s "$2/$4" && rm "$2/$4/_READY" && ln -s "$3" "$2/$4/_READY"',
                  str(batch), str(zone), str(secret), batch.name)
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, "ingest", "--ready", ok=False)
    assert SECRET not in res.stdout + res.stderr, res.stdout + res.stderr
    health = hoard(cfg_path, "health", "--json", ok=False)
    assert SECRET not in health.stdout + health.stderr
    mine = zone / batch.name
    seen = as_user('cat "$1"/_* "$1"/.*.tmp 2>/dev/null; true', str(mine))
    assert SECRET not in seen.stdout
    assert "_READY" in res.stdout + res.stderr and "link" in res.stdout + res.stderr, res.stdout + res.stderr
    # the reason set aside, swapped for a link to the secret: `hoard health` (and the GUI's
    # banner, a viewer's) showed its first line as the reason
    res = as_user('rm -f "$1/_REASON.txt" && ln -s "$2" "$1/_REASON.txt"', str(mine), str(secret))
    assert res.returncode == 0, res.stderr
    health = hoard(cfg_path, "health", "--json", ok=False)
    assert batch.name in health.stdout and SECRET not in health.stdout + health.stderr


@needs_root
def test_a_link_planted_at_a_temporary_name_is_not_written_through(home: Path) -> None:
    """Every file hoardfs rewrites goes tmp → rename through `.<name>.tmp` beside it, opened
    O_CREAT|O_TRUNC, following links. In the scraper's own batch directory the ingest (root)
    writes `_REASON.txt` when it sets a refused `_READY` aside: the scraper planted
    `._REASON.txt.tmp` → a root-only file, and `hoard ingest --ready` truncated that file,
    wrote the reason into it and made it 0640. A leftover at the temporary name is now removed,
    never followed, and the file made new (O_EXCL)."""
    cfg_path = home / "hoard.toml"
    victim = _secret(home)
    batch = _gallery(home / "gen")
    (batch / "_READY").write_text("no-such-source\n")
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && ln -s "$3" "$2/$4/._REASON.txt.tmp"', str(batch), str(zone), str(victim),
                  batch.name)
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, "ingest", "--ready", ok=False)
    assert "no-such-source" in res.stdout + res.stderr, res.stdout + res.stderr
    assert victim.read_text() == SECRET + " rest\n"
    assert oct(victim.stat().st_mode & 0o777) == oct(0o600)
    mine = zone / batch.name
    assert "no-such-source" in (mine / "_REASON.txt").read_text()
    assert not (mine / "_REASON.txt").is_symlink()


def test_a_sidecar_swapped_for_a_link_after_the_screen_is_not_read(tmp_path: Path) -> None:
    """The screen saw a batch's sidecar as a file of the batch; before the adapter read it (the
    settle wait's re-check is behind, the parse comes next) the scraper swapped it for a link
    to a root-only JSON file (the GUI's users.json, a session). The adapter, as root, parsed
    the secret as the sidecar's metadata — `raw_metadata` every viewer sees on the node page.
    A document is now read only if it is the file the screen saw (device and inode of what
    was opened); the swapped one is rejected with its media, the others taken."""
    from adapters.screen import screen
    from adapters.sidecars import GalleryDl

    batch = _gallery(tmp_path / "gen")
    secret = tmp_path / "users.json"
    secret.write_text('{"admin": {"password_hash": "%s"}}' % SECRET)  # noqa: UP031  # JSON: braces stay literal
    secret.chmod(0o600)
    view, rejects = screen(batch)
    assert not rejects
    victim = sorted(r for r in view.files if r.endswith(".json"))[0]
    (batch / victim).unlink()
    (batch / victim).symlink_to(secret)
    parsed = GalleryDl("gallery").parse(view)
    assert SECRET not in repr([r.raw for r in parsed.records] + [r.specific for r in parsed.records])
    reasons = {p: r.reason for r in parsed.rejects for p in r.paths}
    assert "not the file the scan saw" in reasons[victim], reasons
    assert victim.removesuffix(".json") in reasons
    assert len(parsed.records) == len([r for r in view.files if r.endswith(".json")]) - 1


@needs_root
def test_the_package_holds_the_files_stored_not_what_3a_holds_later(home: Path, pg) -> None:
    """The store step stores the file the scan saw; the package step then read the batch's
    files from 3A again, by path, following links. After the store step the scraper swapped
    its directory `sub` for a link to a root-only directory holding a file of the same name:
    root wrote that secret into the 3B package (the manifest still naming the stored file's
    checksum). The package is now made of the files the scan saw, or not at all."""
    import hashlib
    import json
    import tarfile

    from fsd.base import config
    from jobs import ingest as ua1

    cfg = config.load(home / "hoard.toml")
    zone = cfg.ssd.zone_path("3A")
    src = home / "gen" / "b-swap"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        d = src / "sub" if i == 0 else src
        (d / f"p{i}.png").write_bytes(os.urandom(2000))
        (d / f"p{i}.png.json").write_text(json.dumps({"title": f"t{i}", "id": f"i{i}"}))
    private = home / "ssd" / "state" / "private"  # a root-only directory holding the same names
    private.mkdir(parents=True)
    (private / "p0.png.json").write_text("{}")
    (private / "p0.png").write_text(SECRET * 80)  # as large as the stored file: size alone is no tell
    os.truncate(private / "p0.png", 2000)
    (private / "p0.png").chmod(0o600)
    res = as_user('cp -r "$1" "$2/"', str(src), str(zone))
    assert res.returncode == 0, res.stderr
    mine = zone / "b-swap"
    ua1.submit(cfg, mine, "sidecar", queue=False)
    ua1._run_step_locked(cfg, "b-swap", "scan", then_enqueue=False)
    ua1._run_step_locked(cfg, "b-swap", "store", then_enqueue=False)
    res = as_user('mv "$1/sub" "$1/sub.orig" && ln -s "$2" "$1/sub"', str(mine), str(private))
    assert res.returncode == 0, res.stderr
    ua1._run_step_locked(cfg, "b-swap", "apply", then_enqueue=False)
    with pytest.raises(Exception) as failed:
        ua1._run_step_locked(cfg, "b-swap", "package", then_enqueue=False)
    assert "sub/p0.png" in str(failed.value) and "not the file" in str(failed.value), failed.value
    for part in (cfg.ssd.zone_path("3B") / "b-swap").glob("*.tar"):
        with tarfile.open(part) as tar:
            for m in tar.getmembers():
                assert SECRET.encode() not in tar.extractfile(m).read()
    # put back as it was, the package is made of the stored files
    res = as_user('rm "$1/sub" && mv "$1/sub.orig" "$1/sub"', str(mine))
    assert res.returncode == 0, res.stderr
    ua1._run_step_locked(cfg, "b-swap", "package", then_enqueue=False)
    [part] = (cfg.ssd.zone_path("3B") / "b-swap").glob("*.tar")
    manifest = json.loads((cfg.ssd.zone_path("3B") / "b-swap" / "b-swap.manifest.json").read_text())
    with tarfile.open(part) as tar:
        for f in manifest["files"]:
            assert hashlib.sha256(tar.extractfile(f["path"]).read()).hexdigest() == f["sha256"]


@needs_root
def test_a_link_planted_at_an_outputs_name_takes_no_output_elsewhere(home: Path) -> None:
    """3C is written by a trainer's group too. Every output job starts with `resume` (an
    output renamed into place but not sealed goes back to work): a link planted at `3C/s1` →
    a directory of root's was taken for such an output, renamed to `3C/.tmp/s1`, and
    `hoard stage s1` (root) wrote the staged files through it, then left the link as the
    output. Only the service's own directory is taken back now; a link there is refused in
    one line, nothing written."""
    import grp
    import hashlib
    import shutil

    cfg_path = home / "hoard.toml"
    batch = _gallery(home / "gen")
    shutil.copytree(batch, home / "ssd" / "3A" / batch.name)
    hoard(cfg_path, "ingest", str(home / "ssd" / "3A" / batch.name), "--here")
    zone = home / "ssd" / "3C"
    os.chown(zone, -1, grp.getgrnam("nogroup").gr_gid)
    elsewhere = home / "root-only"
    elsewhere.mkdir()
    nodes = home / "nodes.txt"
    nodes.write_text("".join(hashlib.sha256(p.read_bytes()).hexdigest() + "\n"
                             for p in sorted(batch.iterdir()) if p.suffix == ".png"))
    args = ("stage", "s1", "--layout", "by_sha256", "--nodes", str(nodes))
    hoard(cfg_path, *args)  # requested (queued): the id is known from here on
    res = as_user('ln -s "$1" "$2/s1"', str(elsewhere), str(zone))
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, *args, "--here", ok=False)  # the worker's run, or the same command again
    assert list(elsewhere.iterdir()) == []
    assert res.returncode != 0 and "s1" in res.stderr and "link" in res.stderr, res


@needs_root
def test_an_output_signal_in_3c_is_read_never_through_a_link_nor_from_a_fifo(home: Path) -> None:
    """3C is written by a trainer's group too (1770). `hoard health` — and the GUI's refresh,
    every few seconds, as root — lists the outputs of each zone and reads a sealed one's
    `_JOB.json` for its kind, following links and to its end: the trainer (`nobody`) made
    `3C/x/_SEALED` and `3C/x/_JOB.json` a link to a root-only JSON file, and its "kind" was
    shown on the pipelines page and in `hoard health --json`; a fifo there hung `hoard health`
    (and the GUI's refresh) for ever, and a link to /dev/zero would have read until memory ran
    out. The file is now read as 3A's signals are: never through a link, a regular file only,
    at most 64 KB."""
    import grp
    import json
    import subprocess
    import sys

    cfg_path = home / "hoard.toml"
    zone = home / "ssd" / "3C"
    os.chown(zone, -1, grp.getgrnam("nogroup").gr_gid)
    secret = home / "ssd" / "state" / "job-secret.json"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(json.dumps({"kind": SECRET}))
    secret.chmod(0o600)
    res = as_user('mkdir -m 750 "$1/x" "$1/y" && touch "$1/x/_SEALED" "$1/y/_SEALED" && ln -s "$2" "$1/x/_JOB.json" '
                  '&& mkfifo "$1/y/_JOB.json"', str(zone), str(secret))
    assert res.returncode == 0, res.stderr
    try:  # a bound on the hang only: `hoard health` takes seconds
        health = subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg_path), "health", "--json"],
                                capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")})
    except subprocess.TimeoutExpired:
        pytest.fail("`hoard health` read a fifo the trainer made 3C/y/_JOB.json and never returned")
    assert SECRET not in health.stdout + health.stderr
    shown = {o["id"]: o for o in json.loads(health.stdout)["zones"]["3C"]["outputs"]}
    assert shown["x"]["state"] == shown["y"]["state"] == "sealed", shown  # what it says of itself, kind unknown
    assert shown["x"]["kind"] == shown["y"]["kind"] == "output", shown


def test_an_output_checked_for_its_seal_is_read_never_from_a_fifo(tmp_path: Path) -> None:
    """`seal.check_sealed` (a stage's status, the run pages, `hoard stage` finding its output
    done) read `<id>/_JOB.json` and `_MANIFEST.json` following links, to their end: in 3C, which
    a trainer's group writes, a directory of a cleaned or failed output's id with `_SEALED` and
    a fifo for `_JOB.json` hung the caller for ever. Now refused as incomplete, unread."""
    import subprocess
    import sys

    out = tmp_path / "3C" / "stage-7"
    out.mkdir(parents=True)
    (out / "_SEALED").touch()
    os.mkfifo(out / "_JOB.json")
    (out / "_MANIFEST.json").symlink_to("/dev/zero")
    code = ("import sys\nfrom fsd.outputs import seal\ntry:\n    seal.check_sealed(__import__('pathlib').Path(sys.argv[1]))\n"
            "except seal.OutputIncomplete as e:\n    print(e)\n")
    try:  # a bound on the hang only: the check takes milliseconds
        res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("check_sealed opened the fifo at _JOB.json and never returned")
    assert "stage-7" in res.stdout and "unreadable" in res.stdout, (res.stdout, res.stderr)


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
    from gui.auth import client_key

    assert len({client_key(a) for a in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2")}) == 1
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::9") != client_key("2001:db8:1:3::5")
    assert client_key("203.0.113.5") != client_key("203.0.113.6")
    assert client_key("unknown") == "unknown"


@pytest.mark.timeout(300)
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
    """The review's finding: hoard.example.toml told a proxy on this host to be named by
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
        res = subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg), "gui"], capture_output=True,
                             text=True, env={k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}, timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (proxies, res.stdout, res.stderr)
        assert "gui.trusted_proxies" in lines[0] and "gui.socket" in lines[0], lines[0]


def test_the_proxy_socket_replaces_a_dead_one_and_refuses_the_rest(tmp_path: Path) -> None:
    """`gui.socket`: a socket left by a server that died is replaced; one a live server
    answers on, a file that is not a socket, or an unknown group is refused in one line."""
    import socket

    from fsd.base.errors import HoardError
    from gui.app import proxy_socket

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
            res = subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg_path), "gui"], capture_output=True,
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

    from fsd.base.errors import HoardError
    from gui.app import proxy_socket

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


def test_a_file_name_with_a_line_separator_is_refused_at_the_screen(tmp_path: Path) -> None:
    """W3-X build 1: U+2028/U+2029 "refused in file names and escaped in display". U+0085 was
    refused (a C1 control) and the bidi overrides were, but a scraped `a<U+2028>b.png` was
    accepted, stored under that name and printed as two lines by `display`."""
    from adapters.screen import screen
    from fsd.base.paths import display

    batch = tmp_path / "b"
    batch.mkdir()
    for name in ("ok.png", "a\u2028b.png", "c\u2029d.png"):
        (batch / name).write_bytes(b"\x89PNG" + os.urandom(64))
    view, rejects = screen(batch)
    assert set(view.files) == {"ok.png"}
    reasons = {p: r.reason for r in rejects for p in r.paths}
    assert set(reasons) == {"a\u2028b.png", "c\u2029d.png"} and "separator" in reasons["a\u2028b.png"], reasons
    assert display("a\u2028b\u2029c") == "a\\u2028b\\u2029c"


@pytest.mark.expect_log(r"StartedJobRegistry cleanup: h-cb Moved to FailedJobRegistry", level="WARNING")
def test_an_abandoned_job_runs_no_callback_it_names(hoard_home: Path, redis_conn) -> None:
    """jobs.guard refuses a dequeued job naming callbacks; but RQ's registry clean-up (the
    worker's, at start and every few minutes) fetched every job of `rq:wip:<queue>` whose
    time had passed and called its failure callback — imported by the name in the job hash,
    called with the job, nothing checked. A job hash written into Redis with
    `failure_callback_name` = `builtins.print` and an expired entry in `rq:wip:maintenance`
    had `hoard worker --burst` call print (any importable callable: a module's import runs its
    code, `asyncio.__main__` hangs the worker). No job's callback is ever called now."""
    import json
    import zlib

    from tests.test_worker_guard import _hoard

    cfg = hoard_home / "hoard.toml"
    assert _hoard(cfg, "init").returncode == 0
    data = json.dumps(["jobs.store_jobs.replicate", None, [str(cfg.resolve()), 60, None], {}]).encode()
    redis_conn.hset("rq:job:h-cb", mapping={
        "data": zlib.compress(data), "origin": "maintenance", "status": "started",
        "created_at": "2026-01-01T00:00:00.000000Z", "enqueued_at": "2026-01-01T00:00:00.000000Z",
        "started_at": "2026-01-01T00:00:00.000000Z", "description": "abandoned",
        "failure_callback_name": "builtins.print"})
    redis_conn.sadd("rq:queues", "rq:queue:maintenance")
    redis_conn.zadd("rq:wip:maintenance", {"h-cb:e1": 1})
    res = _hoard(cfg, "worker", "--queues", "maintenance", "--burst")
    assert "AbandonedJobError" not in res.stdout, res.stdout  # print(job, connection, AbandonedJobError, …)
    assert "callback" not in res.stderr.lower() or "refus" in res.stderr.lower(), res.stderr


@pytest.mark.timeout(120)
async def test_rq_dashboard_never_unpickles_a_job(user, redis_conn, tmp_path: Path) -> None:
    """The GUI reads jobs with the JSON serializer (jobs.guard); rq-dashboard's job page and its
    delete route did not: `Job.fetch(job_id, connection=…)` with RQ's default serializer, and
    RQ decodes a job's `meta` as it fetches it. A job hash with a pickled `meta` (written by
    whoever reaches Redis) ran its command in the GUI's process (root) when a signed-in viewer
    opened /rq/0/view/job/<id>."""
    import pickle
    import zlib

    from jobs.guard import SERIALIZER
    from tests.gui_fixtures import sign_in
    from tests.test_worker_guard import _RunsOnUnpickle

    marker = tmp_path / "pwned"
    redis_conn.hset("rq:job:h-view", mapping={
        "data": zlib.compress(SERIALIZER.dumps(["jobs.store_jobs.replicate", None, [], {}])), "origin": "maintenance",
        "status": "failed", "created_at": "2026-01-01T00:00:00.000000Z", "description": "hostile",
        "meta": pickle.dumps(_RunsOnUnpickle(f"id > {marker}"))})
    try:
        await sign_in(user, "vera")
        r = await user.http_client.get("/rq/0/view/job/h-view")
        assert not marker.exists()
        assert r.status_code in (200, 404), r.text
    finally:
        redis_conn.delete("rq:job:h-view")


async def test_rq_dashboard_escapes_the_keys_of_a_result_too(user, redis_conn) -> None:
    """rq-dashboard's job page writes `JSON.stringify(d.result)` into a `<pre>` unescaped, and
    `gui.rqdash` escaped the strings of its JSON but not the keys of an object: a result
    `{"<form action=/rq/requeue/ingest method=post><button>…": 1}` came out as a form on
    the GUI's own page (same origin: its POST passes the acting check), the issue's "also
    seen". Keys are escaped as values are now."""
    from rq.results import Result

    from jobs.queues import rq_queue
    from tests.gui_fixtures import sign_in

    evil = "<form action=/rq/requeue/ingest method=post><button>session expired: continue</button></form>"
    job = rq_queue("maintenance", redis_conn).enqueue("builtins.print", "x", description="plain")
    Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value={evil: 1, "nested": {evil: [evil]}})
    try:
        await sign_in(user, "vera")
        r = await user.http_client.get(f"/rq/0/data/job/{job.id}.json")
        assert r.status_code == 200, r.text
        assert "<form" not in r.text and "<button" not in r.text, r.text
        assert any(k.startswith("&lt;form action=/rq/requeue/ingest method=post&gt;") for k in r.json()["result"])
    finally:
        job.delete()


def test_get_never_writes_through_a_link_at_its_temporary_name(hoard_home: Path) -> None:
    """`hoard get SHA -o DIR/out` writes `DIR/.out.part`, then renames it. Run as root into a
    directory others write (/tmp), a link planted at `.out.part` had the object written into
    the file it named. The temporary file is now made new (the link removed, not followed)."""
    import hashlib
    import subprocess
    import sys

    cfg = hoard_home / "hoard.toml"
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg), *args], capture_output=True,
                              text=True, env=env, timeout=120)

    assert run("init").returncode == 0
    src = hoard_home / "obj.bin"
    src.write_bytes(b"the object " * 100)
    assert run("put", str(src)).returncode == 0
    shared = hoard_home / "shared"
    shared.mkdir()
    victim = hoard_home / "victim"
    victim.write_text(SECRET)
    (shared / ".out.part").symlink_to(victim)
    res = run("get", hashlib.sha256(src.read_bytes()).hexdigest(), "-o", str(shared / "out"))
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == SECRET
    assert (shared / "out").read_bytes() == src.read_bytes() and not (shared / "out").is_symlink()


@needs_root
def test_a_batch_directory_swapped_for_a_link_is_not_scanned(home: Path, pg) -> None:
    """After the batch was signalled (submitted) and before its scan, the scraper replaced its
    batch directory `3A/<batch>` by a link to a root-only directory. The screen walked the
    link's target as the batch (os.walk follows its top), the adapter parsed its documents and
    the store step stored its files as root. The batch directory is now opened without
    following a link, and the scan refuses one in one line, nothing read."""
    import json

    from fsd.base import config
    from jobs import ingest as ua1

    cfg = config.load(home / "hoard.toml")
    zone = cfg.ssd.zone_path("3A")
    src = home / "gen" / "b-link"
    src.mkdir(parents=True)
    (src / "p1.png").write_bytes(os.urandom(2000))
    (src / "p1.png.json").write_text(json.dumps({"title": "mine"}))
    private = home / "ssd" / "state" / "private"
    private.mkdir(parents=True)
    (private / "p0.png").write_bytes(os.urandom(3000))
    (private / "p0.png.json").write_text(json.dumps({"title": SECRET}))
    private.chmod(0o700)
    res = as_user('cp -r "$1" "$2/"', str(src), str(zone))
    assert res.returncode == 0, res.stderr
    ua1.submit(cfg, zone / "b-link", "sidecar", queue=False)
    res = as_user('mv "$1/b-link" "$1/b-link.orig" && ln -s "$2" "$1/b-link"', str(zone), str(private))
    assert res.returncode == 0, res.stderr
    with pytest.raises(Exception) as failed:
        ua1._run_step_locked(cfg, "b-link", "scan", then_enqueue=False)
    assert "link" in str(failed.value), failed.value
    assert SECRET not in str(failed.value)
    records = home / "ssd" / "state"
    assert not any(SECRET in p.read_text(errors="replace") for p in records.rglob("*records*") if p.is_file())
    assert sorted(p.name for p in private.iterdir()) == ["p0.png", "p0.png.json"]
