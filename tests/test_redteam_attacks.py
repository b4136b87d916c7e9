"""Adversarial checks of the security and recovery work: a remote worker host, a local user, a
crash — each test one finding, with real Redis, PostgreSQL and `hoard` processes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config, landlock
from hoardfs.jobs import jobkey, launch
from hoardfs.jobs.queues import fetch_job, rq_queue
from tests.gui_fixtures import gui_process
from tests.helpers import write_contract
from tests.test_action_runs import AC1, action_home, hoard
from tests.test_gui_security import _read_until_closed


def _hoard(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_retry_of_a_run_a_host_wrote_into_redis_queues_nothing_signed(hoard_home: Path, redis_conn) -> None:
    """Retry of a maintenance run queues the parameters the server signed, never ones a host wrote: a run a
    host forged (unsigned) is refused in one line, and a signed run whose meta a host rewrote retries as signed."""
    path = hoard_home / "hoard.toml"
    assert _hoard(path, "init").returncode == 0
    cfg = config.load(path)
    key, named = jobkey.of(cfg), str(path.resolve())
    disk = cfg.disks[0].label
    q = rq_queue(launch.MAINTENANCE_QUEUE, redis_conn)  # (no key: what a host can write)
    # a host's forged "failed rebuild" of a healthy disk, shown on the maintenance page with Retry
    q.enqueue("hoardfs.jobs.maintenance.run", "rebuild", named, disk=disk, job_id=f"{launch.PREFIX}rebuild-forged",
              meta={"kind": "rebuild", "params": {"disk": disk}})
    before = set(rq_queue(launch.MAINTENANCE_QUEUE, redis_conn).job_ids)
    with pytest.raises(launch.LaunchError, match="not signed by this server"):
        launch.retry(cfg, "rebuild", f"{launch.PREFIX}rebuild-forged", conn=redis_conn)
    assert set(rq_queue(launch.MAINTENANCE_QUEUE, redis_conn).job_ids) == before, "a forged run was queued signed"

    # a real verify the server signed; a host rewrites its meta so that Retry repairs a whole disk
    real = launch.launch_maintenance(cfg, "verify", {"sample": 1.0}, conn=redis_conn)
    job = fetch_job(real, redis_conn)
    job.meta["params"] = {"sample": 100.0, "repair": True, "disk": disk}
    job.save_meta()
    again = fetch_job(launch.retry(cfg, "verify", real, conn=redis_conn), redis_conn)
    assert again.kwargs.get("repair") is False and again.kwargs.get("sample") == 1.0, again.kwargs
    assert key.check(again, launch.MAINTENANCE_QUEUE) == ""


@pytest.mark.expect_log(r"refused job h-export on queue io, not run", level="ERROR")
def test_a_hosts_job_put_on_a_server_queue_is_refused(hoard_home: Path, redis_conn) -> None:
    """A host's job (a located stage/export, an action step: unsigned by design) runs only when taken from the
    `remote` queue: one a host puts on a server queue (`io`) is refused in one line, and nothing of it runs."""
    path = hoard_home / "hoard.toml"
    assert _hoard(path, "init").returncode == 0
    rq_queue("io", redis_conn).enqueue("hoardfs.jobs.remote.run_output", None, {"kind": "export"}, {},
                                       job_id="h-export")
    res = _hoard(path, "worker", "--queues", "io", "--burst")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    refused = [ln for ln in res.stderr.splitlines() if "refused job h-export on queue io, not run" in ln]
    assert len(refused) == 1 and "remote" in refused[0], res.stderr
    assert "not a stage/export request" not in res.stderr, "the host's job ran on the server"
    assert "refused by the worker, not run" in (fetch_job("h-export", redis_conn).latest_result().exc_string or "")


@contextlib.contextmanager
def _victim_and_boxes(tmp_path: Path):
    """Another process of the service's user (the mount, the GUI) and a confined child's input and
    output folders; skipped where Landlock is not enforced."""
    if not landlock.status()["enforced"]:
        pytest.skip("no Landlock here")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    victim = subprocess.Popen(["sleep", "60"])
    try:
        yield victim, inp, out
    finally:
        victim.kill()
        victim.wait()


#: what both children below do first: confine themselves as `hoard-builtin` confines a built-in
#: (`_io.confine`), then try each attack, an errno (0: it worked) for each
CONFINED_ATTEMPTS = '''
import errno, fcntl, json, os, resource, sys
from pathlib import Path
from hoardfs.jobs.actions.builtin import _io
VICTIM, INPUT, OUTPUT = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
assert _io.confine(OUTPUT, INPUT)
def attempt(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
'''

#: a built-in taken over by its input, confined as `hoard-builtin` confines it (`_io.confine`),
#: asking the kernel to signal another process of its user through a file's owner (F_SETOWN:
#: SIGIO, whose default action ends a process, when its pipe becomes readable)
SIGIO_TO_ANOTHER = CONFINED_ATTEMPTS + '''
r, w = os.pipe()
got = {"own": attempt(lambda: fcntl.fcntl(r, fcntl.F_SETOWN, VICTIM))}
got["async"] = attempt(lambda: fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC))
os.write(w, b"x")
print(json.dumps(got))
'''


@pytest.mark.services
@pytest.mark.parametrize("abi", [None, "2"], ids=["this-kernel", "abi-2"])
def test_a_confined_builtin_cannot_signal_another_process_through_a_file_owner(tmp_path: Path, abi: str | None) -> None:
    """A confined built-in cannot signal another process of its user by making it a file's owner (F_SETOWN and
    O_ASYNC: SIGIO on input), also where Landlock does not scope signals (ABI < 6): the process lives on."""
    with _victim_and_boxes(tmp_path) as (victim, inp, out):
        res = subprocess.run([sys.executable, "-c", SIGIO_TO_ANOTHER, str(victim.pid), str(inp), str(out)],
                             capture_output=True, text=True, timeout=60,
                             env=os.environ | ({landlock.TEST_ABI: abi} if abi else {}))
        assert res.returncode == 0, res.stderr
        try:
            victim.wait(1)
        except subprocess.TimeoutExpired:
            pass
        assert victim.poll() is None, f"the service's process was signalled ({victim.returncode}): {res.stdout}"


#: a built-in taken over by its input, confined as `hoard-builtin` confines it, changing another
#: process of its user: its hard limits (a file size of 0 ends it at its next write), its
#: priority, its processors
LIMITS_OF_ANOTHER = CONFINED_ATTEMPTS + '''
got = {"file size": attempt(lambda: resource.prlimit(VICTIM, resource.RLIMIT_FSIZE, (0, 0))),
       "open files": attempt(lambda: resource.prlimit(VICTIM, resource.RLIMIT_NOFILE, (3, 3))),
       "renice it": attempt(lambda: os.setpriority(os.PRIO_PROCESS, VICTIM, 19)),
       "pin it": attempt(lambda: os.sched_setaffinity(VICTIM, {0})),
       "own limit": attempt(lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0))),
       "own priority": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 1))}
print(json.dumps(got))
'''


@pytest.mark.services
def test_a_confined_builtin_cannot_change_another_processs_limits(tmp_path: Path) -> None:
    """A confined built-in cannot change another process's resource limits, priority or processors (EPERM); its
    own limits and priority it may still set."""
    with _victim_and_boxes(tmp_path) as (victim, inp, out):
        before = Path(f"/proc/{victim.pid}/limits").read_text()
        res = subprocess.run([sys.executable, "-c", LIMITS_OF_ANOTHER, str(victim.pid), str(inp), str(out)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout.splitlines()[-1])
        assert Path(f"/proc/{victim.pid}/limits").read_text() == before, "another process's limits changed"
        assert os.getpriority(os.PRIO_PROCESS, victim.pid) == os.getpriority(os.PRIO_PROCESS, 0) and os.sched_getaffinity(victim.pid) == \
            os.sched_getaffinity(0)
    assert {k: got.pop(k) for k in ("own limit", "own priority")} == {"own limit": 0, "own priority": 0}
    assert got == dict.fromkeys(got, errno.EPERM), got


@pytest.mark.services
def test_a_database_whose_disk_is_full_is_named_as_such(hoard_home: Path, pg, redis_conn) -> None:
    """A command whose database write finds PostgreSQL's disk full says so in one line, exit 6 (no space), never
    "cannot reach the database; start it with `hoard services up`" (the server is up)."""
    if not pg.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        pytest.skip("the test role cannot make a tablespace")
    cfg, batch = action_home(hoard_home, pg, redis_conn)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    where = Path(tempfile.mkdtemp(prefix="hoard-pgfull-"))  # (PostgreSQL's user must reach it: not below tmp_path)
    where.chmod(0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]).returncode != 0:
        where.rmdir()
        pytest.skip("no tmpfs here (needs root)")
    space = f"rt_full_{os.getpid()}"
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    tables = [r[0] for r in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])]
    pg.autocommit = True
    try:
        subprocess.run(["chown", "postgres:postgres", str(where)], check=True)
        pg.execute(f"CREATE TABLESPACE {space} LOCATION '{where}'")
        for t in tables:
            pg.execute(f'ALTER TABLE "{t}" SET TABLESPACE {space}')
        pg.execute(f"CREATE TABLE rt_filler (b bytea) TABLESPACE {space}")
        with pytest.raises(psycopg.errors.DiskFull):
            while True:
                pg.execute("INSERT INTO rt_filler SELECT decode(repeat('ab', 8000), 'hex') FROM generate_series(1, 50)")
        res = hoard(cfg.source, "action", "run", "check-quality", "--here")
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert "Traceback" not in res.stderr and len(lines) == 1, lines
        assert res.returncode == 6 and "hoard services up" not in lines[0], (res.returncode, lines)
    finally:
        pg.execute("DROP TABLE IF EXISTS rt_filler")
        for t in tables:
            pg.execute(f'ALTER TABLE "{t}" SET TABLESPACE pg_default')
        pg.execute(f"DROP TABLESPACE IF EXISTS {space}")
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.mark.parametrize("path", ["/logout", "/api/v1/batches"])
def test_a_request_body_that_dribbles_is_not_held_open(hoard_home: Path, pg, redis_conn, path: str) -> None:
    """A request whose body dribbles in one byte a second — answered without its body, or not — is closed within a
    bounded time (here 20 s), as a dribbling head is: a stranger cannot hold connections open without end."""
    with gui_process(hoard_home, pg, header_timeout_s=2) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode())
            _read_until_closed(sock, b"x", 1.0, 20)
