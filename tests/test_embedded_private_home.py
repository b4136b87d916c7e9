"""The embedded default cloned under a home closed to others (root's /root, mode 0700): its
built-in workers run as the clone's owner — root's uid with no capability — where the worker
user cannot reach them; /root stays closed, and any other worker keeps the worker user's rules
(docs/actions.md, "Running a worker")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from hoardfs.jobs.actions import execute
from hoardfs.jobs.actions.contract import Contract, parse
from tests.helpers import needs_reachable_checkout
from tests.test_ingest import ingest_home

pytestmark = pytest.mark.needs(os.geteuid() == 0, "NOT ROOT: a worker user is chosen only when hoard runs as root")

EMBEDDED = '\n[embedded]\nroot = "var"\npostgres = false\nredis = false\n'


@pytest.fixture
def closed_home(hoard_home: Path) -> Iterator[Path]:
    """`hoard_home`'s hoard.toml in `<dir>/project`, where <dir> is root's and mode 0700 as /root
    is on Debian: the worker user (nobody) cannot pass it."""
    outer = Path(tempfile.mkdtemp(prefix="hoard-closed-", dir="/var/tmp"))
    try:
        outer.chmod(0o700)
        home = outer / "project"
        home.mkdir()
        shutil.copy(hoard_home / "hoard.toml", home / "hoard.toml")
        yield home
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _hoard(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=600)


def _thumbnail_run(home: Path, pg) -> tuple[subprocess.CompletedProcess, Path]:
    cfg = ingest_home(home, pg)
    assert cfg.source is not None
    batch = cfg.ssd.zone_path("3A") / "pictures-1"
    batch.mkdir()
    for i, rgb in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        Image.new("RGB", (64 + 8 * i, 48), rgb).save(batch / f"p{i}.png")
        (batch / f"p{i}.png.json").write_text(json.dumps({"title": f"picture {i}"}))
    done = _hoard(cfg.source, "ingest", str(batch), "--source", "sidecar", "--here")
    assert done.returncode == 0, done.stdout + done.stderr
    return _hoard(cfg.source, "action", "run", "thumbnail", "--here", "--json"), cfg.source


@pytest.mark.services
def test_the_embedded_defaults_thumbnail_run_works_under_a_closed_home(closed_home: Path, pg) -> None:
    """An embedded default in a clone under a root-only 0700 directory: the demo's thumbnail
    run is done (each picture gets its thumbnail, written by root's uid), the directory is
    still 0700."""
    with open(closed_home / "hoard.toml", "a") as fh:
        fh.write(EMBEDDED)
    run, cfg = _thumbnail_run(closed_home, pg)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "done", doc
    n = pg.execute("SELECT count(*) FROM edge e JOIN relationship_type r USING (rel_id) "
                   "WHERE r.name = 'thumbnail_of'").fetchone()[0]
    assert n == 3
    assert (closed_home.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.services
def test_a_config_that_is_not_embedded_keeps_the_worker_users_rule(closed_home: Path, pg) -> None:
    """The same clone without an [embedded] section: the worker stays the worker user, and the
    run fails with the one line naming the directory it cannot pass."""
    run, _ = _thumbnail_run(closed_home, pg)
    said = run.stdout + run.stderr
    assert run.returncode != 0
    assert re.search(r"the worker user nobody cannot reach \S*hoard-closed-\S+ \(mode drwx------", said), said


def _contract(command: str, extra: str = "") -> Contract:
    return parse(tomllib.loads(f'action_id = "x"\naction_type = "AC2"\nversion = 1\n[input_selector]\nkinds = ["image"]\n'
                               '[stage_layout]\nlayout = "flat"\n'
                 f'[run_spec]\nkind = "local"\ncommand = [{command!r}, "{{input_root}}", "{{output_root}}"]\n{extra}'
                 'timeout_s = 60\n[[output_parser.children]]\nglob = "*"\nparent_key = "sha256"\n'
                 'relationship = "thumbnail_of"\n'), "test")


def test_only_a_builtin_the_worker_user_cannot_reach_changes_user(tmp_path: Path) -> None:
    """`as_setup_owner`: a built-in whose zones lie under a closed directory runs as the setup's
    owner (root here: no capabilities), and so does a team's program started confined (hoard's
    Python is its launcher); not for a config that is not embedded, not for a program started
    unconfined (`confine = false`), not where the worker user reaches everything."""
    closed = tmp_path / "closed"
    (closed / "ssd").mkdir(parents=True)
    closed.chmod(0o700)
    roots = execute.Roots(closed / "ssd" / "in", closed / "ssd" / "out", "r1")
    builtin = _contract(str(Path(sys.executable).parent / execute.BUILTIN))
    cmd = execute.command_for(builtin, roots, {})
    assert cmd.worker.name == "nobody"
    moved = execute.as_setup_owner(cmd, builtin, closed, closed / "ssd")
    assert (moved.worker.uid, moved.user and moved.user.uid, moved.no_caps) == (0, 0, True)
    assert moved.env["HOME"] == "/root" and moved.argv == cmd.argv
    assert execute.as_setup_owner(cmd, builtin, None, closed / "ssd") is cmd
    confined = _contract("/bin/true")
    launched = execute.command_for(confined, roots, {})
    assert launched.argv[2:4] == ("-m", execute.LAUNCHER)
    moved = execute.as_setup_owner(launched, confined, closed, closed / "ssd")
    assert (moved.worker.uid, moved.no_caps, moved.argv) == (0, True, launched.argv)
    free = _contract("/bin/true", "confine = false\n")
    assert execute.as_setup_owner(execute.command_for(free, roots, {}), free, closed, closed / "ssd").worker.name \
        == "nobody"
    needs_reachable_checkout()  # the rest: where the worker user reaches hoard's Python and the built-in
    open_dir = Path(tempfile.mkdtemp(prefix="hoard-open-", dir="/var/tmp"))
    try:
        open_dir.chmod(0o755)
        assert execute.as_setup_owner(cmd, builtin, open_dir, open_dir) is cmd
    finally:
        open_dir.rmdir()


@pytest.mark.services  # starts a process
def test_a_worker_started_without_capabilities_has_none(tmp_path: Path) -> None:
    """A command with no_caps runs as root's uid with empty effective, permitted, bounding and
    ambient sets, and cannot gain one at execve: it cannot read a file only another user may."""
    secret = tmp_path / "only-nobodys"
    secret.write_text("x")
    secret.chmod(0o600)
    os.chown(secret, 65534, 65534)
    tmp_path.chmod(0o755)
    log = tmp_path / "out.log"
    script = (f"grep -E '^(Uid|Cap(Eff|Prm|Bnd|Amb))' /proc/self/status; "
              f"cat {secret} >/dev/null 2>&1 && echo read || echo refused")
    root = execute._lookup("0", "test")
    cmd = execute.Command(("/bin/sh", "-c", script), {"PATH": "/usr/bin:/bin"}, "test", root, root, no_caps=True)
    with open(log, "wb") as fh:
        proc = execute._start(cmd, str(tmp_path), fh.fileno())
        assert proc.wait(timeout=30) == 0
    said = log.read_text()
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert re.search(rf"^{field}:\s+0+$", said, re.M), said
    assert re.search(r"^Uid:\s+0\s", said, re.M) and said.rstrip().endswith("refused"), said
