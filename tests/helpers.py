"""Helpers the tests share (configs, files, schemas); fixtures and hooks are in conftest.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hoardfs.sql.cluster import PrivateCluster

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"
#: the S3 engines the S3 backend's tests run against, each test once per engine: SeaweedFS (pip,
#: every run) and Ceph RGW (the optional `ceph` group: where Debian's Ceph is installed;
#: tests/ceph_rgw.py, docs/testing.md "Ceph RGW")
S3_ENGINES = ["seaweedfs", pytest.param("ceph", marks=pytest.mark.ceph)]
#: each engine's fixtures (tests/conftest.py): the session's, and a test's own that it may stop
ENGINE_FIXTURES = {"seaweedfs": ("seaweedfs", "seaweedfs_own"), "ceph": ("ceph_rgw", "ceph_rgw_own")}


def wait_until(condition: Any, timeout: float = 60.0, what: str = "timed out") -> None:
    """Poll `condition()` until true; fail saying `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports of 127.0.0.1 that were free a moment ago (for a server a test starts)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(log: Path, n: int = 5) -> str:
    """The last `n` lines of a server's log, on one line (for the error that says it did not start)."""
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def missing(msg: str) -> None:
    """What a test needs is missing here (`msg` says what, in capitals): skipped loudly, with
    the reason on stderr; under CI=true a failure, so CI cannot go green by skipping."""
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must run these tests)", pytrace=False)
    print(f"\n*** {msg} ***", file=sys.stderr)
    pytest.skip(msg)


def checkout_out_of_reach() -> str | None:
    """Why other accounts (the worker user, nobody) cannot run hoard from this checkout — a
    directory on the way to its venv or its source without the others' x bit, as a clone in
    /root (0700) has — or None where they can."""
    for top in (Path(sys.prefix), Path(__file__).resolve().parent.parent):
        for d in [top, *top.parents]:
            mode = d.stat().st_mode & 0o777
            if not mode & 0o001:
                return f"{d} (mode {mode:o}) stops other accounts on the way to {top}"
    return None


def needs_reachable_checkout() -> None:
    """Tests that run hoard's Python as another account (the worker user) need a checkout that
    account can pass; a clone in /root cannot be (its built-in workers there run as the embedded
    default's owner instead: `make demo` tests that). Missing loudly here; a failure in CI."""
    why = checkout_out_of_reach()
    if why is not None:
        missing(f"THE CHECKOUT IS OUT OF OTHER ACCOUNTS' REACH: {why}; clone it where they may pass to run this test")


_PRIVATE_MOUNTS: list[str | None] = []


def needs_private_mounts() -> None:
    """Tests that bind files in a mount namespace of their own (`unshare --mount --propagation
    private`, systemd-nspawn) need a root directory that is a mount point: in a chroot it is not,
    and the kernel refuses to make it private. Missing loudly there; a failure in CI."""
    if not _PRIVATE_MOUNTS:
        res = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                             text=True, timeout=30)
        _PRIVATE_MOUNTS.append(None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}"))
    if _PRIVATE_MOUNTS[0] is not None:
        missing(f"NO PRIVATE MOUNT NAMESPACE HERE (a chroot?): `unshare --mount --propagation private`: {_PRIVATE_MOUNTS[0]}")


#: for tests of real public sample files (../shared/realdata beside the repo; under CI=true a skip fails)
needs_realdata = pytest.mark.needs(REALDATA.is_dir(), f"REAL SAMPLES MISSING at {REALDATA}")
#: for tests of text → image search: the search extra (open_clip, torch, usearch) is installed on
#: request (`make search`; CI does). Installed but not importing (a torch and torchvision of two
#: builds) is no skip: those tests fail
needs_search = pytest.mark.needs(all(importlib.util.find_spec(m) is not None for m in ("open_clip", "usearch")),
                                 "SEARCH EXTRA MISSING (open_clip, usearch): make search")


def write_config(root: Path, disks: list[tuple[str, Path, float | None]], allow_dirs: bool = True,
                 ssd: Path | None = None, *, database_url: str = "postgresql:///unused_test",
                 redis_url: str = "redis://localhost:1/0", quota_gb: float = 1, **store: object) -> Path:
    """A hoard.toml under `root` for store tests (no servers needed by default: they are not
    contacted); the SSD root is `ssd`, by default `root/ssd`, each zone of `quota_gb`."""
    lines = [f"database_url = {json.dumps(database_url)}", f"redis_url = {json.dumps(redis_url)}", "", "[store]",
             f"allow_directory_disks = {'true' if allow_dirs else 'false'}"]
    lines += [f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}" for k, v in store.items()]
    for label, path, cap in disks:
        lines += ["", "[[disks]]", f'label = "{label}"', f'path = "{path}"']
        if cap is not None:
            lines.append(f"capacity_gb = {cap}")
    lines += ["", "[ssd]", f'root = "{ssd or root / "ssd"}"']
    for z in ("3A", "3B", "3C", "3D"):
        lines += [f"[ssd.zones.{z}]", f"quota_gb = {quota_gb}"]
    cfg = root / "hoard.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def dir_disks_config(root: Path, n: int, first: int = 0, cap: float | None = None, **store: object) -> Path:
    """A hoard.toml under `root` with `n` directory disks d<first>..; the directories are created."""
    disks = [(f"d{i}", root / f"d{i}", cap) for i in range(first, first + n)]
    for _, p, _ in disks:
        p.mkdir(parents=True, exist_ok=True)
    return write_config(root, disks, **store)


def make_files(root: Path, n: int, seed: int = 0, lo: int = 1024, hi: int = 64 * 1024) -> list[Path]:
    """n files of pseudo-random bytes (deterministic by seed) under root."""
    from hoardfs.adapters.synth import flat_files

    return flat_files(root, n, seed, lo, hi)


@contextmanager
def fresh_schema(url: str) -> Iterator[psycopg.Connection]:
    """A connection to `url` whose search_path is a new, empty schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            with psycopg.connect(url, options=f"-c search_path={schema}", autocommit=True) as conn:
                yield conn
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def filled_schema(url: str, fill) -> Iterator[psycopg.Connection]:
    """`fresh_schema`, migrated and filled by `fill(conn)` (a module's rows for its plans)."""
    from hoardfs.sql.migrate import migrate

    with fresh_schema(url) as conn:
        migrate(conn)
        fill(conn)
        yield conn


def use_schema(home: Path, conn: psycopg.Connection) -> str:
    """Point the hoard.toml in `home` at `conn`'s schema (from the `pg` fixture); return the config path."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    cfg_path = home / "hoard.toml"
    lines = cfg_path.read_text().splitlines()
    url = next(ln for ln in lines if ln.startswith("database_url = ")).split(" = ", 1)[1].strip("'\"")
    own = psycopg.conninfo.make_conninfo(url, options=f"-c search_path={schema}")
    cfg_path.write_text("\n".join(f"database_url = {json.dumps(own)}" if ln.startswith("database_url = ") else ln
                                  for ln in lines) + "\n")
    return str(cfg_path)


def flip_byte(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset` in `path` (a bit of rot)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


# -- action contracts and test workers (tests/test_action_*.py, tests/test_gui_actions.py) --------

def write_contract(cfg: Any, name: str, body: str) -> Path:
    """`<actions dir>/<name>.toml`: `action_id = name`, then `body`."""
    path = cfg.actions_dir / f"{name}.toml"
    path.write_text(f'action_id = "{name}"\n' + body)
    return path


#: a worker: each staged input → thumbs/<sha>.txt (a child) and a line of edges.jsonl (a result);
#: CHILDREN children per input, then EXIT
ACTION_WORKER = """
import json, os, sys, time
inp, out = sys.argv[1], sys.argv[2]
CHILDREN, EXIT, SLEEP = {children}, {exit}, {sleep}
os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)
with open(os.path.join(out, "edges.jsonl"), "w") as res:
    for d, _, files in os.walk(inp):
        for f in sorted(files):
            sha = f.split(".")[0]
            data = open(os.path.join(d, f), "rb").read()
            for k in range(CHILDREN):
                name = sha if k == 0 else f"{{sha}}_{{k}}"
                with open(os.path.join(out, "thumbs", name + ".txt"), "wb") as c:
                    c.write(b"thumb %d of " % k + data[:64][::-1])
            res.write(json.dumps({{"sha": sha, "status": "ok", "ratio": 0.5}}) + "\\n")
if SLEEP:
    if os.fork() == 0:  # a process of the worker's session that outlives the worker itself
        os.execvp("sleep", ["sleep", str(SLEEP)])
    stop = os.path.join(out, "..", "stop")
    end = time.time() + SLEEP
    while time.time() < end and not os.path.exists(stop):
        time.sleep(0.05)
sys.exit(EXIT)
"""

ACTION_CONTRACT = """action_type = "{type}"
version = 1
a4_scale = 2

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
{run_spec}

{gate}
[[output_parser.children]]
glob = "thumbs/*.txt"
parent_match = "thumbs/(?P<input>[0-9a-f]{{64}})(_[0-9]+)?\\\\.txt"
parent_key = "sha256"
relationship = "thumb_of"

[[output_parser.results]]
name = "edges"
glob = "edges.jsonl"
format = "jsonl"
node_field = "sha"
node_key = "sha256"

[result_mapping.edges]
into = "result_canny"
columns = {{ status = "status", edge_ratio = "ratio" }}
"""


def worker_contract(cfg: Any, batch: str, name: str = "thumbs", *, children: int = 1, exit: int = 0,
                    sleep: float = 0, timeout_s: int = 600, type: str = "AC2", gate: str = "",
                    run_spec: str | None = None) -> Path:
    script = cfg.actions_dir / f"{name}-worker.py"
    script.write_text(ACTION_WORKER.format(children=children, exit=exit, sleep=sleep))
    spec = run_spec or (f'kind = "local"\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, '
                        f'"{{input_root}}", "{{output_root}}"]\ntimeout_s = {timeout_s}'
                        # as root, the worker would be actions.worker_user (nobody), who cannot enter
                        # pytest's root-only tmp_path: the test worker runs as root, allowed
                        + ('\nrun_as = "root"\nallow_root = true' if os.geteuid() == 0 else ''))
    return write_contract(cfg, name, ACTION_CONTRACT.format(type=type, batch=batch, run_spec=spec, gate=gate))


#: a GPU gate released by hand (or failing after `timeout` s), polled every 5 s
GATE = "[gate]\ntimeout_s = {timeout}\npoll_s = 5\n"

@contextmanager
def worker_reachable_home(home: Path) -> Iterator[Path]:
    """`home`'s hoard.toml in a directory of its own that an action's worker can pass: as
    root, a worker runs as `actions.worker_user` (nobody), who cannot enter pytest's root-only
    tmp_path. The directory (0711 under /var/tmp: passage, no listing) is removed afterwards."""
    if os.geteuid() == 0:
        needs_reachable_checkout()  # the worker user runs hoard's own Python (built-ins, the launcher)
    d = Path(tempfile.mkdtemp(prefix="hoard-home-", dir="/var/tmp"))
    try:
        d.chmod(0o711)
        shutil.copy(home / "hoard.toml", d / "hoard.toml")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def peak_memory(argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO,
                poll_s: float = 0.01) -> dict[str, Any]:
    """Run `argv` and return its `exit`, `seconds`, `vmhwm_kb` (the kernel's peak RSS of the
    program, VmHWM) and `peak_anon_kb` (the highest RssAnon seen), read from /proc every
    `poll_s`. VmHWM counts the pages of the LMDB index the process mapped (a scan
    of the index maps all of it: page cache, dropped under pressure); RssAnon is what the
    process itself allocated — what a store's size must not make grow. From its rusage (the
    program and the children it waited for): `cpu_s` (user + system), `read_bytes` (what the
    filesystems read for it from their devices: page-cache misses), `write_bytes` (what it had
    them write: its own writes and the pages it dirtied in a mapped file, e.g. an LMDB commit)
    and `majflt` (the page faults that read a mapped page, e.g. of the index, from disk)."""
    import subprocess
    import time

    t0 = time.monotonic()
    errf = tempfile.TemporaryFile()  # (a pipe nobody reads while polling could fill and stop the process)
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errf)
    status_path = f"/proc/{proc.pid}/status"
    anon = hwm = 0
    while True:
        try:
            with open(status_path) as f:
                for row in f:
                    if row.startswith("VmHWM:"):  # (wait4's ru_maxrss would count the parent's pages from before exec)
                        hwm = max(hwm, int(row.split()[1]))
                    elif row.startswith("RssAnon:"):
                        anon = max(anon, int(row.split()[1]))
                        break
        except (OSError, ValueError, IndexError):
            pass
        got, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if got:
            break
        time.sleep(poll_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    errf.seek(0)
    err = errf.read().decode(errors="replace")
    errf.close()
    return {"exit": proc.returncode, "seconds": time.monotonic() - t0, "vmhwm_kb": hwm,
            "peak_anon_kb": anon, "stderr": err, "cpu_s": usage.ru_utime + usage.ru_stime,
            "read_bytes": usage.ru_inblock * 512, "write_bytes": usage.ru_oublock * 512, "majflt": usage.ru_majflt}


def reads_back(cfg_path: Path, shas: list[bytes]) -> None:
    """Each of `shas` reads back from the store at `cfg_path`, its bytes hashing to its sha256."""
    import hashlib

    from hoardfs.base import config
    from hoardfs.fsd.store import Store

    with Store.open(config.load(cfg_path)) as store:
        for sha in shas:
            assert hashlib.sha256(store.get(sha.hex())).digest() == sha


def freed(cfg_path: Path, shas: list[bytes]) -> None:
    """None of `shas` is in the store at `cfg_path` any more."""
    from hoardfs.base import config
    from hoardfs.fsd.core.records import ObjectNotFound
    from hoardfs.fsd.store import Store

    with Store.open(config.load(cfg_path)) as store:
        for sha in shas:
            with pytest.raises(ObjectNotFound):
                store.get(sha.hex())


def older_index(index_dir: Path, version: int, without: str) -> None:
    """Make the index at `index_dir` what format `version` wrote: table `without` gone, its
    `format` that version."""
    import lmdb

    from hoardfs.fsd.core import formats

    env = lmdb.open(str(index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(without.encode(), txn=txn), delete=True)
        txn.put(formats.INDEX_KEY.encode(), str(version).encode(), db=env.open_db(b"meta", txn=txn))
    env.close()


def private_cluster(base: Path) -> PrivateCluster:
    """A private PostgreSQL cluster at a path no earlier run used. As root, a directory the
    server user cannot reach gets a stand-in under /var/lib/hoardfs named after the path
    (hoardfs.sql.cluster), and a run killed before its teardown leaves that stand-in for the next run
    whose tmp path repeats (pytest numbers them from 0 again once /tmp is cleared): the test then
    found an old cluster, archive settings and rows included."""
    pg = base / f"pg-{uuid.uuid4().hex[:8]}"
    return PrivateCluster(pg, pg / "socket")
