"""Attacks as a real unprivileged local user — on the embedded Redis, the quarantine, a batch's
files after the scan and the files a run leaves: each attack runs in a subprocess with
`setpriv --reuid nobody --regid nogroup --clear-groups`, against a store the real `hoard` CLI
(as root, as in production) made and ran.

pytest's temporary directories are 0700: the fixture `reachable` lets others pass through
them (never list them), and each test reads a control file as the user first, so what stops
the user is hoardfs's modes, not the test's directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config, modes
from hoardfs.base.errors import HoardError
from tests.gui_browser import have_browser
from tests.helpers import needs_reachable_checkout

USER, GROUP = "nobody", "nogroup"


def _have_user() -> bool:
    import grp
    import pwd

    try:
        pwd.getpwnam(USER), grp.getgrnam(GROUP)
    except KeyError:
        return False
    return True


needs_root = pytest.mark.needs(os.geteuid() == 0 and bool(shutil.which("setpriv")) and _have_user(),
                               f"ROOT, setpriv AND THE USER {USER}:{GROUP} NEEDED to attack as an unprivileged user")
pytestmark = needs_root


def as_user(script: str, *args: str) -> subprocess.CompletedProcess:
    """`sh -c script` as the unprivileged user (no supplementary groups, an empty environment)."""
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "--",
                           "/bin/sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)


def readable_by_user(paths: list[Path]) -> list[str]:
    """Which of `paths` the user can read a byte of."""
    res = as_user('for f in "$@"; do head -c1 "$f" >/dev/null 2>&1 && echo "$f"; done; true', *map(str, paths))
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def hoard(cfg_path: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """The real `hoard` CLI (its entry point: the umask of every hoard process), as root."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args], capture_output=True,
                         text=True, env=env, timeout=600)
    if ok:
        assert res.returncode == 0, f"hoard {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """tmp_path and the directories above it passable by others (pytest makes them 0700), with
    a control file the user can read; the modes are put back afterwards."""
    changed = []
    for d in [tmp_path, *tmp_path.parents]:
        mode = stat.S_IMODE(d.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
            changed.append((d, mode))
    control = tmp_path / "control.txt"
    control.write_text("readable")
    control.chmod(0o644)
    assert readable_by_user([control]) == [str(control)], "the test's own directory stops the user"
    yield tmp_path
    for d, mode in changed:
        os.chmod(d, mode)


@pytest.fixture
def home(reachable: Path, hoard_home: Path, pg: psycopg.Connection) -> Path:
    """A store made by `hoard init` with its schema, a gallery source, and 3A given to the
    scraper's group as docs/operations.md tells (`chgrp SCRAPERS 3A`)."""
    from hoardfs.sql.migrate import migrate
    from tests.helpers import use_schema

    cfg_path = Path(use_schema(hoard_home, pg))
    with open(cfg_path, "a") as fh:
        fh.write('\n[ingest]\nsettle_s = 0.05\n\n[sources]\ngallery = "gallery_dl"\n')
    hoard(cfg_path, "init")
    migrate(pg)
    import grp

    os.chown(hoard_home / "ssd" / "3A", -1, grp.getgrnam(GROUP).gr_gid)
    return hoard_home


def _gallery(out: Path, seed: int = 3) -> Path:
    """A generated gallery batch (readable by the user: the test process's umask) in `out`."""
    from hoardfs.adapters.synth import Spec, generate

    [batch] = generate(out, Spec(seed=seed, batches=1, items_per_batch=4, sources=("gallery",), large_max_mb=1,
                                  ready_signal=True))
    return out / batch.batch_id


def test_zone_3a_is_a_drop_box_with_the_sticky_bit(home: Path) -> None:
    """3A is 1770 with the sticky bit: the scraper's group writes its batches, cannot remove or
    rename another account's (the service's `_quarantine`), and lists nothing else of the SSD."""
    zone = home / "ssd" / "3A"
    assert stat.S_IMODE(zone.stat().st_mode) == 0o1770
    (zone / "_quarantine").mkdir(mode=0o750)  # the service's, as the first quarantine makes it
    res = as_user('mkdir "$1/mine" && echo x > "$1/mine/f" && mv "$1/mine" "$1/mine2"', str(zone))
    assert res.returncode == 0, res.stderr
    for script in ('mv "$1/_quarantine" "$1/q2"', 'rmdir "$1/_quarantine"', 'ls "$2"'):
        res = as_user(script, str(zone), str(home / "ssd"))
        assert res.returncode != 0 and ("ermission denied" in res.stderr or "not permitted" in res.stderr), \
            (script, res.stdout, res.stderr)


def test_a_link_planted_at_the_quarantine_moves_nothing(home: Path) -> None:
    """As the scraper account: it drops a batch holding a `users.json` (a reject) and
    plants `3A/_quarantine/<batch>` → the GUI's state; the ingest (root) refuses in one line
    and the GUI's accounts stay."""
    cfg_path = home / "hoard.toml"
    state = home / "ssd" / "state" / "gui"
    state.mkdir(parents=True)
    (state / "users.json").write_text('{"admin": "the real one"}')
    batch = _gallery(home / "gen")
    (batch / "users.json").write_text('{"admin": "the scraper"}')
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && mkdir "$2/_quarantine" && ln -s "$3" "$2/_quarantine/$4"',
                  str(batch), str(zone), str(state), batch.name)
    assert res.returncode == 0, res.stderr  # the old code's 3A (0755 root) took nothing from the scraper
    res = hoard(cfg_path, "ingest", str(zone / batch.name), "--here", ok=False)
    assert res.returncode != 0
    assert "_quarantine" in res.stdout + res.stderr and "nothing was moved" in res.stdout + res.stderr, res
    assert (state / "users.json").read_text() == '{"admin": "the real one"}'
    assert (zone / batch.name / "users.json").is_file()


def test_a_file_swapped_for_a_link_to_a_secret_is_not_stored(home: Path, pg) -> None:
    """As the scraper account: after the scan it replaces one of its files by a link to
    a root-only secret; the store step (root) stores the batch's other files, not the secret."""
    import hashlib

    from hoardfs.fsd.store import Store
    from hoardfs.jobs import ingest as ua1

    cfg = config.load(home / "hoard.toml")
    batch = _gallery(home / "gen", seed=5)
    zone = cfg.ssd.zone_path("3A")
    res = as_user('cp -r "$1" "$2/"', str(batch), str(zone))
    assert res.returncode == 0, res.stderr
    mine = zone / batch.name
    assert mine.stat().st_uid != 0
    ua1.submit(cfg, mine, "gallery", queue=False)
    ua1._run_step_locked(cfg, batch.name, "scan", then_enqueue=False)
    secret = home / "secret"
    secret.write_bytes(b"ROOT ONLY " * 100)
    secret.chmod(0o600)
    victim = sorted(p.name for p in mine.iterdir() if p.suffix == ".png")[0]
    res = as_user('rm "$1/$2" && ln -s "$3" "$1/$2"', str(mine), victim, str(secret))
    assert res.returncode == 0, res.stderr
    report = ua1._run_step_locked(cfg, batch.name, "store", then_enqueue=False)
    with Store.open(cfg, writable=False) as store:
        assert store.index.lookup(hashlib.sha256(secret.read_bytes()).digest()) is None
        assert store.index.count_objects() >= 3
    assert "not the file the scan saw" in {r["path"]: r["reason"] for r in report["rejected"]}[victim]


@pytest.fixture
def private_redis(home: Path) -> Iterator[Path]:
    """The embedded Redis of this home started by `hoard services up` (stopped after); yields
    its socket."""
    cfg_path = home / "hoard.toml"
    with open(cfg_path, "a") as fh:
        fh.write(f'\n[embedded]\nroot = "{home / "var"}"\npostgres = false\nredis = true\n')
    hoard(cfg_path, "services", "up")
    try:
        yield config.load(cfg_path).embedded.redis_socket
    finally:
        hoard(cfg_path, "services", "down")


def test_an_unprivileged_user_cannot_reach_the_embedded_redis(private_redis: Path) -> None:
    """The user cannot write a job into the embedded Redis (its socket refuses); a job
    that names another function, written by someone who can, is refused by the worker
    (tests/test_worker_guard.py)."""
    res = as_user('redis-cli -s "$1" RPUSH rq:queue:maintenance x', str(private_redis))
    assert "ermission denied" in res.stdout + res.stderr, (res.stdout, res.stderr)


@pytest.mark.gui  # a real Chromium signs in
@pytest.mark.needs(have_browser(), "CHROMIUM MISSING: the GUI's session file is made by a real sign-in")
def test_an_unprivileged_user_reads_nothing_of_a_demo_run(home: Path, private_redis: Path, pg) -> None:
    """After `hoard put`, an ingest, a database dump, the GUI's users and a session, a
    thumbnail and the private Redis's append-only file, the user can read none of the shards,
    the dump in 3B, the ingest's package in 3B, the sessions, users.json, the thumbnails, the
    index or the AOF. (The old code left them 0644 under 0755 directories.)"""
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.jobs import users
    from tests.gui_browser import chromium, free_port, serving, sign_in

    cfg_path = home / "hoard.toml"
    put = home / "put.bin"
    put.write_bytes(os.urandom(50_000))
    hoard(cfg_path, "put", str(put))
    batch = _gallery(home / "gen")
    shutil.copytree(batch, home / "ssd" / "3A" / batch.name)
    hoard(cfg_path, "ingest", str(home / "ssd" / "3A" / batch.name), "--here")
    hoard(cfg_path, "db", "backup", "--type", "dump")
    port = free_port()
    with open(cfg_path, "a") as fh:
        fh.write(f"\n[gui]\nport = {port}\n")
    cfg = config.load(cfg_path)
    users.add(cfg, "ada", "admin", "admin-pass-1")
    sessions = home / "ssd" / "state" / "gui" / "sessions"
    with serving(cfg_path, home / "gui.log", port) as url, chromium() as driver:
        sign_in(driver, url, "ada", "admin-pass-1")
        deadline = time.monotonic() + 30
        while not list(sessions.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)  # NiceGUI writes a session's file shortly after it changes
    png = next(p for p in sorted(batch.iterdir()) if p.suffix == ".png")
    import hashlib

    assert thumbs.thumbnail(cfg, hashlib.sha256(png.read_bytes()).hexdigest()) is not None
    import redis

    redis.Redis(unix_socket_path=str(private_redis)).set("job-args", "secret")

    ssd = home / "ssd"
    kinds = {
        "shards": list((home / "disks").glob("*/shards/*/*.shard")),
        "dumps in 3B": list((ssd / "3B").glob("db-dumps/*.dump")),
        "3B packages": [p for p in (ssd / "3B").rglob("*") if p.is_file() and "db-dumps" not in p.parts],
        "sessions": list((ssd / "state" / "gui" / "sessions").glob("*.json")),
        "users.json": [ssd / "state" / "gui" / "users.json"],
        "thumbnails": list((ssd / "state" / "gui" / "thumbs").rglob("*.jpg")),
        "index": list((ssd / "index").iterdir()),
        "Redis AOF": [p for p in (home / "var" / "redis").rglob("*") if p.is_file()],
    }
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}  # each kind was made
    read = readable_by_user([p for ps in kinds.values() for p in ps])
    assert read == [], read


def test_ensure_dir_tightens_and_keeps_stricter_modes(tmp_path: Path, monkeypatch) -> None:
    """A looser directory is tightened, a stricter one kept, the group given when the `hoard`
    group exists (here: nogroup stands for it) with set-group-id; a file where the directory
    goes is left for the caller to name."""
    import grp

    loose, strict, fresh = tmp_path / "loose", tmp_path / "strict", tmp_path / "a" / "fresh"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    strict.mkdir(mode=0o700)
    monkeypatch.setattr(modes, "GROUP", GROUP)
    gid = grp.getgrnam(GROUP).gr_gid
    modes.ensure_dir(loose)
    modes.ensure_dir(strict)
    modes.ensure_dir(fresh, modes.DROP)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o2750 and loose.stat().st_gid == gid
    assert stat.S_IMODE(strict.stat().st_mode) == 0o2700
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o3770
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o755  # a parent made on the way: a passage
    (fresh / "f").write_text("x")
    assert (fresh / "f").stat().st_gid == gid  # what is made inside gets the group
    (tmp_path / "file").write_text("x")
    modes.ensure_dir(tmp_path / "file")
    assert (tmp_path / "file").is_file()


def test_own_dir_refuses_a_link_or_another_users_directory(tmp_path: Path) -> None:
    """`<zone>/.tmp` in 3C, which others write: a link or another user's directory there is
    refused (an output written as root would follow it anywhere)."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 65534, 65534)
    for name, why in (("link", "a symbolic link"), ("theirs", "another user's (uid 65534)")):
        with pytest.raises(HoardError) as e:
            modes.own_dir(tmp_path / name)
        assert why in e.value.message
    assert modes.own_dir(tmp_path / "mine").is_dir()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_store_made_before_the_modes_is_closed_at_its_next_write(reachable: Path) -> None:
    """A store an older hoardfs made (0755 directories, 0644 files) is closed to others by the
    next writable command: the disks' and the SSD's directories are tightened."""
    from tests.helpers import dir_disks_config

    cfg_path = dir_disks_config(reachable, 2)
    first = reachable / "first.bin"
    first.write_bytes(os.urandom(20_000))
    hoard(cfg_path, "init")
    hoard(cfg_path, "put", str(first))
    made = [p for p in reachable.rglob("*") if p.parent != reachable or p.is_dir()]
    for p in made:  # as the old code left them
        p.chmod(0o755 if p.is_dir() else 0o644)
    shards = list(reachable.glob("d*/shards/*/*.shard"))
    assert shards and readable_by_user(shards) == [str(p) for p in shards]
    second = reachable / "second.bin"
    second.write_bytes(os.urandom(20_000))
    hoard(cfg_path, "put", str(second))
    index = list((reachable / "ssd" / "index").iterdir())
    assert readable_by_user(shards + index) == []
    assert stat.S_IMODE((reachable / "ssd" / "3A").stat().st_mode) == 0o1750  # g+w never given: kept away


def test_a_link_planted_at_3c_tmp_takes_no_output_elsewhere(home: Path) -> None:
    """3C is written by others too (a trainer's group): one plants `3C/.tmp` → a directory of
    root's before the first stage; `hoard stage` (root) refuses in one line and writes nothing
    there (the old code wrote the output through the link)."""
    import grp

    cfg_path = home / "hoard.toml"
    batch = _gallery(home / "gen")
    shutil.copytree(batch, home / "ssd" / "3A" / batch.name)
    hoard(cfg_path, "ingest", str(home / "ssd" / "3A" / batch.name), "--here")
    zone = home / "ssd" / "3C"
    os.chown(zone, -1, grp.getgrnam(GROUP).gr_gid)
    elsewhere = home / "root-only"
    elsewhere.mkdir()
    res = as_user('ln -s "$1" "$2/.tmp"', str(elsewhere), str(zone))
    assert res.returncode == 0, res.stderr
    import hashlib

    nodes = home / "nodes.txt"
    nodes.write_text("".join(hashlib.sha256(p.read_bytes()).hexdigest() + "\n"
                             for p in sorted(batch.iterdir()) if p.suffix == ".png"))
    res = hoard(cfg_path, "stage", "s1", "--layout", "by_sha256", "--nodes", str(nodes), "--here", ok=False)
    assert res.returncode != 0 and "is a symbolic link" in res.stderr, res
    assert list(elsewhere.iterdir()) == []


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_an_unprivileged_user_reads_nothing_through_the_mount(reachable: Path) -> None:
    """`hoard mount` runs as root with `allow_other` (so the `hoard` group's workers can read):
    the mount served every object 0444, and the kernel checked nothing, so any local user read
    any object (a database dump included) by its path. Now nodes are 0440/0550 of the `hoard`
    group with `default_permissions`: the user reads nothing, root reads the same path."""
    from tests.helpers import dir_disks_config
    from tests.test_mount import mounted

    cfg_path = dir_disks_config(reachable, 2)
    secret = reachable / "secret.bin"
    secret.write_bytes(b"a dump nobody else may read " + os.urandom(1000))
    hoard(cfg_path, "init")
    sha = hoard(cfg_path, "put", str(secret)).stdout.split()[0]
    mnt = reachable / "mnt"
    with mounted(str(cfg_path), mnt):
        path = mnt / "by-hash" / sha[:2] / sha[2:4] / f"{sha}.bin"
        assert path.read_bytes() == secret.read_bytes()  # root, as the service
        assert readable_by_user([path]) == []
        listed = as_user('ls "$1"', str(mnt / "by-hash"))
        assert listed.returncode != 0 and "Permission denied" in listed.stderr, listed


@pytest.mark.services  # starts hoard processes as root and as another user
def test_root_on_a_store_another_account_owns_is_sent_to_that_account(reachable: Path) -> None:
    needs_reachable_checkout()  # the account runs hoard's Python
    """An installed store is `hoard`'s: root's commands there would leave root's files (marks,
    locks, the health cache) that the services cannot write. Root is refused with one line that
    names the command to run instead — and that command works; --help and what only root does
    (`disks smart`) still run as root."""
    import re
    import shlex

    from tests.helpers import dir_disks_config

    cfg_path = dir_disks_config(reachable, 2)
    blob = reachable / "a.bin"
    blob.write_bytes(os.urandom(20_000))
    hoard(cfg_path, "init")
    hoard(cfg_path, "put", str(blob))
    for p in [*reachable.rglob("*"), reachable]:
        os.lchown(p, 65534, 65534)  # the store given to its account, as `hoard install` does
    refused = hoard(cfg_path, "verify", ok=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = " ".join(refused.stderr.split())
    assert f"this store is {USER}'s" in line and "run it as" in line, line
    assert [str(p) for p in reachable.rglob("*") if p.lstat().st_uid == 0] == []  # nothing of root's left there
    assert hoard(cfg_path, "verify", "--help").returncode == 0
    smart = hoard(cfg_path, "disks", "smart", ok=False)
    assert "this store is" not in smart.stderr, smart.stderr
    again = shlex.split(re.search(r"`(runuser [^`]+)`", line).group(1))  # type: ignore[union-attr]
    assert again[:4] == ["runuser", "-u", USER, "--"]
    env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")}
    ran = subprocess.run(again, capture_output=True, text=True, env=env, cwd="/", timeout=600)
    assert ran.returncode == 0 and "verified 2 replicas of 1 shards" in ran.stdout and "0 bad" in ran.stdout, \
        ran.stdout + ran.stderr
    # only the SMART readings root took for hoard-smart.service (readable by the services)
    assert [p.name for p in reachable.rglob("*") if p.lstat().st_uid == 0] == ["smart.json"]
