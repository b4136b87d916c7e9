"""A team's own local worker runs confined like the built-ins (jobs/actions/execute.py
`confined_argv`, the launcher hoardfs.base.confine; docs/actions.md, "Confinement"): it writes
only below its output root and a TMPDIR of its own, reads only its roots, the system, its
program and `run_spec.read`, and opens no socket unless `network = true`; where the kernel
cannot confine, the run is refused in one line unless `confine = false`. The workers are two
real programs, tests/data/workers/wander.py and wander.sh, confined by the real kernel; a
kernel without Landlock is this one behind tests/nolandlock.py."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.base import landlock
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.contract import Contract, parse
from hoardfs.jobs.actions.execute import ExecError, Outcome, Roots, run_worker
from hoardfs.jobs.actions.state import load_state
from tests.helpers import REPO, missing, needs_reachable_checkout, write_contract
from tests.nolandlock import UNSUPPORTED
from tests.test_action_runs import action_home, hoard
from tests.test_action_workers import inputs_of

pytestmark = pytest.mark.services  # every test starts worker processes

WORKERS = REPO / "tests" / "data" / "workers"
NOLANDLOCK = [sys.executable, str(REPO / "tests" / "nolandlock.py")]


@pytest.fixture(autouse=True)
def landlock_support() -> None:
    """Skip loudly (fail in CI) where this kernel has no usable Landlock."""
    st = landlock.status()
    if not st["enforced"]:
        missing(f"LANDLOCK UNAVAILABLE: {st['reason']}")


def command(program: str, *actions: str) -> list[str]:
    """The run spec's command of wander.py (by hoard's Python) or wander.sh (by its #! line)."""
    if program == "py":
        return [sys.executable, str(WORKERS / "wander.py"), "{output_root}", *actions]
    return [str(WORKERS / "wander.sh"), "{output_root}", *actions]


def contract(cmd: list[str], **run_spec: object) -> Contract:
    doc = {"action_id": "t", "action_type": "AC2", "version": 1, "input_selector": {},
           "stage_layout": {"layout": "flat"}, "run_spec": {"kind": "local", "command": cmd, **run_spec},
           "output_parser": {}}
    return parse(doc, "t.toml")


@pytest.fixture
def roots() -> Iterator[Roots]:
    """An input and an output root under a directory every user may enter (pytest's tmp_path is
    root's own, mode 0700: the worker user could not reach it)."""
    if os.geteuid() == 0:
        needs_reachable_checkout()  # the worker user starts hoard's Python (the launcher)
    d = Path(tempfile.mkdtemp(prefix="hoard-confine-", dir="/tmp"))
    d.chmod(0o755)
    (d / "input").mkdir()
    (d / "input" / "a.jpg").write_bytes(b"jpeg")
    yield Roots(d / "input", d / "output", "t-v1-0123456789ab")
    shutil.rmtree(d)


def run(c: Contract, roots: Roots) -> Outcome:
    return run_worker(c, roots, {}, log_path=roots.output_root.parent / "worker.log", heartbeat=lambda: None,
                      should_stop=lambda: False, grace_s=0.5)


def log_of(roots: Roots) -> str:
    return (roots.output_root.parent / "worker.log").read_text()


@pytest.mark.parametrize("program", ["py", "sh"])
def test_a_worker_writing_in_its_output_root_and_tmpdir_succeeds(roots: Roots, program: str) -> None:
    """The worker writes its output root and its TMPDIR — a directory of its own beside the
    output root, not the shared /tmp, emptied for it and removed after it — and succeeds."""
    out = run(contract(command(program, "write:$TMPDIR/scratch" if program == "py" else "$TMPDIR/scratch")), roots)
    assert (out.reason, out.exit_code) == ("exited", 0), log_of(roots)
    assert out.confined
    assert (roots.output_root / "made.txt").read_text() == "made\n"
    assert not (roots.output_root.parent / "tmp").exists()
    probe = run(contract(["/bin/sh", "-c", 'echo "$TMPDIR" > {output_root}/tmpdir; test -d "$TMPDIR" -a -w "$TMPDIR"']),
                roots)
    assert probe.exit_code == 0, log_of(roots)
    assert (roots.output_root / "tmpdir").read_text().strip() == str(roots.output_root.parent / "tmp")


@pytest.mark.parametrize(("program", "where", "abi"), [
    ("py", "input", ""), ("py", "home", ""), ("py", "tmp", ""), ("sh", "input", ""), ("sh", "home", ""),
    ("sh", "tmp", ""), ("py", "tmp", "2"), ("sh", "input", "2")])
def test_a_worker_writing_outside_its_roots_is_refused_by_the_kernel(roots: Roots, program: str, where: str,
                                                                     abi: str) -> None:
    """A write into the input root, into $HOME or into the shared /tmp — each a directory the
    worker's user may write by its mode — is refused by the kernel (EACCES): nothing is
    written there, the worker fails with its own line naming the refusal. The same at Landlock
    ABI 2 (Debian 12's kernel, `landlock.TEST_ABI`)."""
    home = roots.output_root.parent / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    roots.input_root.chmod(0o777)
    target = {"input": roots.input_root / "planted", "home": home / ".profile",
              "tmp": Path("/tmp") / f"hoard-wander-{secrets.token_hex(6)}"}[where]
    env = {"HOME": str(home), **({landlock.TEST_ABI: abi} if abi else {})}
    try:
        out = run(contract(command(program, f"write:{target}" if program == "py" else str(target)), env=env), roots)
        assert (out.reason, out.exit_code) == ("exited", 1), log_of(roots)
        assert not target.exists()
        assert (roots.output_root / "made.txt").read_text() == "made\n"  # its own root it writes
        assert out.last_line.startswith("wander.") and str(target) in out.last_line, out.last_line
        assert "Permission denied" in out.last_line
    finally:
        target.unlink(missing_ok=True)


def listener() -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A TCP listener on 127.0.0.1 (an ephemeral port) and what each connection sent."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)
    got: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            got.append(conn.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, got, t


def test_no_network_unless_the_contract_says_network_true(roots: Roots) -> None:
    """A worker connecting to a local TCP listener: refused (EACCES at socket(2)) without
    `network = true`, nothing reaches the listener; with it, the connection is made and its
    bytes arrive — its files stay confined all the same."""
    srv, got, t = listener()
    port = srv.getsockname()[1]
    try:
        out = run(contract(command("py", f"connect:127.0.0.1:{port}")), roots)
        assert (out.reason, out.exit_code) == ("exited", 1), log_of(roots)
        assert out.last_line == f"wander.py: connect 127.0.0.1:{port}: Permission denied", out.last_line
        assert got == []
        leak = Path("/tmp") / f"hoard-wander-{secrets.token_hex(6)}"
        out = run(contract(command("py", f"connect:127.0.0.1:{port}", f"write:{leak}"), network=True), roots)
        t.join(30)
        assert got == [b"hello"]
        assert out.exit_code == 1 and not leak.exists() and "Permission denied" in out.last_line
    finally:
        srv.close()


def test_reads_beyond_its_roots_only_what_run_spec_read_names(roots: Roots) -> None:
    """A file outside its roots and program (a team's model directory) is unreadable to the
    worker until `run_spec.read` names its directory; a `read` that would reach the service's
    configuration (a hoard.toml in or above it) is refused in one line before anything starts."""
    team = Path(tempfile.mkdtemp(prefix="hoard-team-", dir="/tmp"))
    try:
        team.chmod(0o755)
        models = team / "models"
        models.mkdir(mode=0o755)
        (models / "weights.txt").write_text("w1\n")
        (models / "weights.txt").chmod(0o644)
        out = run(contract(command("py", f"read:{models}/weights.txt")), roots)
        assert out.exit_code == 1 and "Permission denied" in out.last_line, log_of(roots)
        out = run(contract(command("py", f"read:{models}/weights.txt"), read=[str(models)]), roots)
        assert out.exit_code == 0, log_of(roots)
        assert "\nw1\n" in log_of(roots)
        (team / "hoard.toml").write_text('database_url = "postgresql://hoard:secret@db/hoard"\n')
        with pytest.raises(ExecError, match=r"^run_spec.read\[0\]: .* would let confined code read .*hoard.toml"):
            run(contract(command("py"), read=[str(team)]), roots)
    finally:
        shutil.rmtree(team)


def test_a_process_pool_needs_shared_memory_true(roots: Roots) -> None:
    """A worker running a multiprocessing pool (its semaphores live in /dev/shm, which every user
    shares) is refused there by default and fails in its own words; with `shared_memory = true`
    it runs and writes its output, its other files still confined."""
    cmd = [sys.executable, str(WORKERS / "pool.py"), "{input_root}", "{output_root}"]
    out = run(contract(cmd), roots)
    assert out.exit_code == 1 and out.last_line.startswith("PermissionError"), log_of(roots)
    assert not (roots.output_root / "sizes.csv").exists()
    out = run(contract(cmd, shared_memory=True), roots)
    assert out.exit_code == 0, log_of(roots)
    assert (roots.output_root / "sizes.csv").read_text() == "file,size\na.jpg,4\n"


@pytest.mark.parametrize("kernel", ["ENOSYS", "EOPNOTSUPP", "NOSECCOMP"])
def test_the_launcher_refuses_where_the_kernel_cannot_confine(tmp_path: Path, kernel: str) -> None:
    """The launcher on a kernel without Landlock (built without it, not enabled at boot) or
    without seccomp filters: the program is not started; one line naming `confine = false`,
    exit 126."""
    marker = tmp_path / "ran"
    res = subprocess.run([*NOLANDLOCK, kernel, "--", sys.executable, "-I", "-m", "hoardfs.base.confine", "--write",
                          str(tmp_path), "--", "/bin/sh", "-c", f"touch {marker}"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    if res.returncode == UNSUPPORTED:
        missing(f"SECCOMP UNAVAILABLE: {res.stderr.strip()}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 126 and len(lines) == 1, res.stderr
    assert lines[0].startswith("hoard: worker not started: ") and "confine = false" in lines[0]
    assert not marker.exists()


CONTRACT = """action_type = "AC2"
version = {version}

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "local"
command = {command}
run_as = "root"
allow_root = true
{extra}

[output_parser]
unmatched = "ignore"

[[output_parser.children]]
glob = "*.out"
parent_match = "(?P<input>[0-9a-f]{{64}})\\\\.out"
parent_key = "sha256"
relationship = "wander_of"
"""


def test_a_wandering_worker_fails_its_run_in_one_line_and_no_landlock_refuses_unless_opted_out(
        hoard_home: Path, pg, redis_conn) -> None:
    """Through the CLI: a worker writing into /tmp fails the run at `run` in one line naming
    its error and the confinement, nothing written there. On a kernel without Landlock the run
    is refused in one line naming `run_spec.confine` before the worker starts; without seccomp
    filters the launcher refuses to start it, in one line naming `confine = false`; with
    `confine = false` (a new version of the contract) the same worker runs there unconfined and
    its run completes."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=91, items=3)
    leak = Path("/tmp") / f"hoard-wander-{secrets.token_hex(6)}"
    child = f"write:{{output_root}}/{inputs_of(cfg, batch)[0]}.out"  # a child of one input
    cmd = json.dumps([sys.executable, str(WORKERS / "wander.py"), "{output_root}", f"write:{leak}", child])
    write_contract(cfg, "wander", CONTRACT.format(batch=batch, command=cmd, extra="", version=1))
    try:
        res = hoard(cfg.source, "action", "run", "wander", "--here")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 5 and len(lines) == 1, lines
        assert "failed at step run" in lines[0] and f"wander.py: write {leak}: Permission denied" in lines[0], lines
        assert "runs confined" in lines[0] and "run_spec.network" in lines[0], lines
        assert not leak.exists()
        (rid,) = [r["run"] for r in api.runs(cfg)]
        unconfined = [*NOLANDLOCK, "ENOSYS", "--", sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
        res = subprocess.run([*unconfined, "action", "run", "wander", "--here"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode == UNSUPPORTED:
            missing(f"SECCOMP UNAVAILABLE: {res.stderr.strip()}")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode != 0 and len(lines) == 1, lines
        assert "run_spec.confine: this kernel cannot confine the worker" in lines[0], lines
        assert "confine = false" in lines[0] and "Traceback" not in lines[0]
        assert not leak.exists() and "without Landlock" in load_state(cfg, rid).error
        # Landlock but no seccomp filters: the launcher, as the worker's process, refuses to run it
        noseccomp = [*NOLANDLOCK, "NOSECCOMP", "--", sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
        res = subprocess.run([*noseccomp, "action", "run", "wander", "--here"], capture_output=True, text=True,
                             timeout=300)
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 5 and len(lines) == 1, lines
        assert "failed at step run" in lines[0] and "worker not started: this host cannot confine its network" \
            in lines[0] and "confine = false" in lines[0], lines
        assert not leak.exists()
        write_contract(cfg, "wander", CONTRACT.format(batch=batch, command=cmd, extra="confine = false", version=2))
        res = subprocess.run([*unconfined, "action", "run", "wander", "--here", "--json"], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["status"] == "done" and doc["run"] != rid
        assert leak.read_text() == "wandered\n"  # unconfined, as the contract says
    finally:
        leak.unlink(missing_ok=True)
