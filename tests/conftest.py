"""Shared fixtures: real PostgreSQL (a separate *_test database), real Redis, the disk lab.

Where the servers are: `HOARD_TEST_DATABASE_URL` / `HOARD_TEST_REDIS_URL`, else the
`test_database_url` / `test_redis_url` of the config (`$HOARD_CONFIG` or ./hoard.toml,
which `make test` creates and whose services it starts). A test database whose name does
not end in `_test`, or a test Redis db equal to the working one, is refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests import ceph_rgw as ceph_mod
from tests import dockerd as dockerd_mod
from tests import lab as lab_mod
from tests import labelstudio as ls_mod
from tests import seaweedfs as weed_mod
from tests.helpers import ENGINE_FIXTURES, REPO, S3_ENGINES, fresh_schema, missing, write_config


@pytest.fixture(autouse=True)
def _signal_handlers() -> Iterator[None]:
    """Each test starts and ends with the process's SIGINT/SIGTERM handlers as they were: an
    in-process RQ worker (SimpleWorker) installs its own and leaves them behind, which turns a
    later test's Ctrl-C into rq's StopRequested."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)

@pytest.fixture(autouse=True)
def _unit_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit-tier test runs in this process alone: starting a process (a `hoard` command, a
    server, a mount, a racing writer) fails it, naming the tier it belongs in — which keeps
    `make test-fast` fast and free of servers, FUSE and the lab."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refused(*args: object, **kwargs: object):
        pytest.fail(f"{request.node.nodeid} is a unit test but starts a process: mark it "
                    "@pytest.mark.services (tests/conftest.py tier_of)", pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refused)
    monkeypatch.setattr(os, "fork", refused)
    monkeypatch.setattr(os, "posix_spawn", refused)




#: the packages whose modules `hoard` processes import (tests: its helpers run as `python -m tests.…`)
BYTECODE_PACKAGES = ("fsd", "base", "cli", "jobs", "gui", "adapters", "datasets", "sql", "tests")


def _compile_bytecode() -> None:
    """Each package's bytecode written once, before the first `hoard` process starts: where
    PYTHONDONTWRITEBYTECODE is set (this sandbox, and so CI) no process writes any, and every
    `hoard` subprocess the suite starts (thousands) compiled its ~100 modules from source again —
    0.5-0.8 s of CPU each. Up-to-date files are skipped; __pycache__ is ignored by git."""
    import compileall

    for package in BYTECODE_PACKAGES:
        compileall.compile_dir(REPO / package, quiet=1, workers=1)


def pytest_sessionstart(session: pytest.Session) -> None:
    from hoardfs.base import landlock

    _compile_bytecode()

    # what a confined child gets here: `hoard health` asks a child once per process (the real
    # one, run now), and a unit-tier test that reads health then starts none
    landlock.status()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the sweep below runs once, in the controlling process, before any worker's lab exists
    try:
        lab_mod.check_support()
    except lab_mod.LabUnavailable:
        return
    for leftover in lab_mod.sweep_stale():
        print(f"disk lab: removed leftovers of a dead run: {leftover}", file=sys.stderr)


def _repo_settings():
    from hoardfs.base import config

    return config.load(os.environ.get("HOARD_CONFIG") or REPO / "hoard.toml")


@pytest.fixture(scope="session")
def servers() -> dict[str, str]:
    """URLs of the test database and the test Redis, checked to be separate from the working ones."""
    db = os.environ.get("HOARD_TEST_DATABASE_URL")
    rd = os.environ.get("HOARD_TEST_REDIS_URL")
    work_redis = None
    if not (db and rd):
        try:
            cfg = _repo_settings()
        except Exception as e:  # turned into a clear failure
            pytest.fail(f"no test servers: set HOARD_TEST_DATABASE_URL/HOARD_TEST_REDIS_URL or run `make test` "
                        f"(it writes hoard.toml and starts the services): {e}", pytrace=False)
        db, rd, work_redis = db or cfg.test_database_url, rd or cfg.test_redis_url, cfg.redis_url
    db, rd = per_worker(db, rd)
    name = psycopg.conninfo.conninfo_to_dict(db).get("dbname", "")
    if not str(name).endswith("_test"):
        pytest.fail(f"refusing to test against database {name!r}: its name must end in _test", pytrace=False)
    if work_redis and redis.connection.parse_url(rd).get("db") == redis.connection.parse_url(work_redis).get("db"):
        pytest.fail("refusing to test against the working Redis database", pytrace=False)
    from hoardfs.sql.cluster import ensure_database

    try:
        ensure_database(db)
        redis.Redis.from_url(rd).ping()
    except Exception as e:
        pytest.fail(f"test servers unreachable ({e}); `make test` starts the embedded ones", pytrace=False)
    return {"database_url": db, "redis_url": rd}


@pytest.fixture(scope="module", autouse=True)
def _redis_per_file(request: pytest.FixtureRequest) -> None:
    """Each test file that uses the servers starts on an empty test Redis database: what an
    earlier file left queued — a `--here` action run's maintenance job (actions-empty-trash),
    which no worker of that file took — is no later file's `hoard worker --burst`'s to take
    (it refuses a job naming another file's hoard.toml, and logs the refusal as an error:
    the CI run of stop 52 failed test_cli_contract's PostgreSQL-down scenario on it). Files
    without servers (the unit tier) start none."""
    path = request.node.path
    if not any("servers" in item.fixturenames for item in request.session.items if item.path == path):
        return
    servers = request.getfixturevalue("servers")
    redis.Redis.from_url(servers["redis_url"]).flushdb()


def per_worker(db: str, rd: str) -> tuple[str, str]:
    """The test servers of this pytest-xdist worker (`make test` runs the suite in TEST_WORKERS
    processes): worker gwN gets its own database `<name>_gwN_test` (created when missing, as the
    test database is) and its own Redis database, N numbers above the test one — a test's
    migrations, rows and RQ queues never meet another worker's. No worker: the URLs as given."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return db, rd
    n = int(worker[2:])
    name = str(psycopg.conninfo.conninfo_to_dict(db).get("dbname") or "hoard_test")
    mine = f"{name.removesuffix('_test')}_{worker}_test"
    if db.startswith(("postgresql://", "postgres://")):  # kept a URI (the form hoard.toml has)
        parts = urllib.parse.urlsplit(db)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "dbname" for k, _ in query):
            query = [(k, mine if k == "dbname" else v) for k, v in query]
        else:
            parts = parts._replace(path="/" + urllib.parse.quote(mine))
        db = f"{parts.scheme}://{parts.netloc}{parts.path}" + (
            f"?{urllib.parse.urlencode(query, safe='/')}" if query else "")
    else:
        db = psycopg.conninfo.make_conninfo(db, dbname=mine)
    conn = redis.connection.parse_url(rd)
    redis_db = int(conn.get("db") or 0) + n
    if redis_db > 15:
        pytest.fail(f"test Redis database {redis_db} for worker {worker}: Redis has 0-15; run fewer workers",
                    pytrace=False)
    head, _, query = rd.partition("?")
    rest = [p for p in query.split("&") if p and not p.startswith("db=")]
    if head.startswith("unix://"):
        rd = f"{head}?{'&'.join(rest + [f'db={redis_db}'])}"
    else:
        root = head.rpartition("/")[0] if head.count("/") > 2 else head
        rd = f"{root}/{redis_db}" + (f"?{'&'.join(rest)}" if rest else "")
    return db, rd


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ls_mod.Server]:
    """A real Label Studio 1.23 for the session (tests/labelstudio.py: ~25 s to start, once),
    confined; it reads the session's temporary tree, where the tests' homes and their 3C lie."""
    yield from ls_mod.serve(tmp_path_factory.mktemp("label-studio"), read=(tmp_path_factory.getbasetemp(),))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[weed_mod.Engine]:
    """A real SeaweedFS S3 server for the session (tests/seaweedfs.py: ~4 s to start, once); a
    test that stops it asks for `seaweedfs_own` instead."""
    yield from weed_mod.serve(tmp_path_factory.mktemp("seaweedfs"))


@pytest.fixture
def seaweedfs_own(tmp_path: Path) -> Iterator[weed_mod.Engine]:
    """A SeaweedFS S3 server of this test's own, which it may stop and start again."""
    yield from weed_mod.serve(tmp_path / "seaweedfs")


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph_mod.Cluster]:
    """A private Ceph cluster with one S3 gateway for the session (tests/ceph_rgw.py: ~25 s to
    start, once); skipped where Ceph is not installed — the optional `ceph` group, which CI
    does not install (docs/testing.md, "Ceph RGW")."""
    yield from ceph_mod.serve(tmp_path_factory.mktemp("ceph"))


@pytest.fixture(scope="session")
def ceph_rgw(ceph_cluster: ceph_mod.Cluster) -> ceph_mod.Gateway:
    """The session cluster's first gateway; a test that stops one asks for `ceph_rgw_own`."""
    return ceph_cluster.gateways[0]


@pytest.fixture
def ceph_rgw_own(ceph_cluster: ceph_mod.Cluster) -> Iterator[ceph_mod.Gateway]:
    """A gateway of this test's own on the session's cluster, which it may stop and start
    again (the cluster, and what it holds, stay)."""
    gw = ceph_cluster.gateway(f"own{len(ceph_cluster.gateways)}")
    yield gw
    gw.stop()


@pytest.fixture(scope="session", params=S3_ENGINES)
def s3_engine(request: pytest.FixtureRequest):
    """The S3 engine of the session, each in turn: SeaweedFS, then Ceph RGW where Ceph is
    installed (tests/helpers.py S3_ENGINES); a test that stops it asks for `s3_engine_own`."""
    return request.getfixturevalue(ENGINE_FIXTURES[request.param][0])


@pytest.fixture(params=S3_ENGINES)
def s3_engine_own(request: pytest.FixtureRequest):
    """An S3 engine of this test's own, each in turn, which it may stop and start again."""
    return request.getfixturevalue(ENGINE_FIXTURES[request.param][1])


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[dockerd_mod.Daemon]:
    """A real Docker daemon for the session with the test image imported (tests/dockerd.py:
    started by hand, a second or two, once; skipped loudly — failed in CI — where it cannot run)."""
    yield from dockerd_mod.serve()


@pytest.fixture
def docker(docker_daemon: dockerd_mod.Daemon, monkeypatch: pytest.MonkeyPatch) -> dockerd_mod.Daemon:
    """The session's Docker daemon, with DOCKER_HOST naming it for this test and the processes
    it starts (hoard's docker client keeps DOCKER_HOST)."""
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    return docker_daemon


@pytest.fixture
def db(servers) -> Iterator[psycopg.Connection]:
    with psycopg.connect(servers["database_url"]) as conn:
        yield conn


@pytest.fixture
def redis_conn(servers) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(servers["redis_url"])
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture
def hoard_home(tmp_path: Path, servers) -> Path:
    """A hoard.toml in tmp_path: directory disks of unequal size, SSD zones, test servers."""
    return write_home(tmp_path, servers)


def write_home(home: Path, servers: dict[str, str]) -> Path:
    """`hoard_home`'s hoard.toml in `home` (for a fixture of a wider scope); returns `home`."""
    disks = "\n".join(
        f'[[disks]]\nlabel = "hdd{i}"\npath = "disks/hdd{i}"\ncapacity_gb = {cap}\n'
        for i, cap in enumerate((4, 3, 2, 1.5), start=1)
    )
    zones = "\n".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D"))
    (home / "hoard.toml").write_text(
        f"database_url = {servers['database_url']!r}\nredis_url = {servers['redis_url']!r}\n\n"
        "[store]\nshard_size_mb = 4\nallow_directory_disks = true\n\n"
        f"{disks}\n[ssd]\nroot = \"ssd\"\n\n{zones}"
    )
    return home


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.needs(available, reason)`: skipped loudly here, a failure in CI."""
    for mark in item.iter_markers("needs"):
        available, reason = mark.args
        if not available:
            missing(reason)


def _lab_unavailable(e: lab_mod.LabUnavailable):
    missing(f"DISK LAB UNAVAILABLE: {e}")


def _lab_or_skip(profiles, **options) -> lab_mod.Lab:
    try:
        return lab_mod.Lab(profiles, **options)
    except lab_mod.LabUnavailable as e:
        _lab_unavailable(e)


@pytest.fixture
def disk_path() -> Iterator[Path]:
    """A new directory on the machine's disk (/var/tmp), for a test of what tmpfs does
    otherwise (the page cache, a directory's blocks): `make test-fast` keeps tmp_path in RAM."""
    path = Path(tempfile.mkdtemp(prefix="hoard-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fuse() -> None:
    """A test that mounts FUSE asks for this: skipped loudly (failed in CI) without /dev/fuse."""
    if not os.path.exists("/dev/fuse"):
        missing("MOUNT TESTS SKIPPED: no /dev/fuse")


@pytest.fixture
def lab_support() -> None:
    """Skip loudly (fail in CI) where the kernel cannot run the disk lab."""
    try:
        lab_mod.check_support()
    except lab_mod.LabUnavailable as e:
        _lab_unavailable(e)


@pytest.fixture
def lab() -> Iterator[lab_mod.Lab]:
    """The standard lab4 profile: four throttled ext4 disks of unequal size; always cleaned up."""
    the_lab = _lab_or_skip(lab_mod.LAB4)
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def lab_factory() -> Iterator:
    """Build labs with custom profiles (and Lab options: throttle, direct_io); every one is
    cleaned up after the test."""
    made: list[lab_mod.Lab] = []

    def make(profiles=lab_mod.LAB4, **options) -> lab_mod.Lab:
        made.append(_lab_or_skip(profiles, **options))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def store_factory(tmp_path: Path):
    """Open stores on directory disks under tmp_path; all are closed after the test."""
    from hoardfs.base import config
    from hoardfs.fsd.store import Store

    opened = []

    def make(n_disks: int = 4, caps=(4, 3, 2, 1.5), disks=None, **store_opts):
        if disks is None:
            disks = [(f"d{i}", tmp_path / "disks" / f"d{i}", caps[i - 1] if caps else None)
                     for i in range(1, n_disks + 1)]
        for _, p, _ in disks:
            Path(p).mkdir(parents=True, exist_ok=True)
        store_opts.setdefault("shard_size_mb", 1)
        cfg = config.load(write_config(tmp_path, disks, **store_opts))
        st = Store.open(cfg, init=True)
        opened.append(st)
        return st

    yield make
    for st in opened:
        try:
            st.close()
        except Exception:  # a test may have closed it already
            pass


@pytest.fixture
def pg(servers) -> Iterator[psycopg.Connection]:
    """A connection to the test database whose search_path is a fresh, empty schema (dropped after)."""
    with fresh_schema(servers["database_url"]) as conn:
        yield conn


#: the tiers, lightest first; every test is in exactly one (docs/testing.md, "Tiers")
TIERS = ("unit", "services", "lab", "gui", "chaos", "system")
#: fixtures that put a test in a tier: the NiceGUI user and a GUI home → gui; the disk lab →
#: lab; the test PostgreSQL/Redis (`servers`, which db, pg, redis_conn and hoard_home use), a
#: FUSE mount (`fuse`), a Label Studio server (`label_studio`) or an S3 engine (`s3_engine`,
#: `s3_engine_own`, `seaweedfs`, `seaweedfs_own`, `ceph_cluster`, `ceph_rgw`, `ceph_rgw_own`) → services
TIER_FIXTURES = {"gui": {"user", "gui_home", "proxied"}, "lab": {"lab", "lab_factory", "lab_support"},
                 "services": {"servers", "fuse", "label_studio", "seaweedfs", "seaweedfs_own", "s3_engine",
                              "s3_engine_own", "ceph_cluster", "ceph_rgw", "ceph_rgw_own"}}


#: test files that must not run at the same time as each other in two pytest-xdist workers
#: (one group = one worker): what they use is one per machine, not one per test
SHARED_GROUPS = {"test_install.py": "system", "test_install_root.py": "system", "test_privileges.py": "system",
                 # each test starts a cluster of its own (an ingest, two network namespaces, their workers):
                 # kept to one worker as before — though their subnets no longer collide (Host takes a free one)
                 "test_remote_workers.py": "netns", "test_remote_actions.py": "netns"}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile` (what `make test` asks for), with SHARED_GROUPS: each test file is one
    unit of work that one worker runs whole — a module's fixtures are set up once, and tests of
    one file never race each other (tests/test_remote_workers.py's hosts, say, are numbered per
    test) — and the files of one group are one unit. Not xdist's `loadgroup` markers: pytest 9.2
    keeps a node's id where pytest-xdist 3.8 no longer writes the group into it, so they group
    nothing. Another --dist: xdist's own scheduler."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling  # deferred: pytest-xdist is loaded only when the suite is split

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_GROUPS.get(path.rpartition("/")[2], path)

    return ByFile(config, log)


def tier_of(item: pytest.Item) -> str:
    """The heaviest tier what `item` uses says: its fixtures (TIER_FIXTURES), a `tests/test_gui_*`
    file (gui), or a tier marker it declares (for what no fixture shows: a private PostgreSQL,
    a Chromium started by the test, the chaos harness). Nothing of these: unit."""
    fixtures = set(getattr(item, "fixturenames", ()))
    found = {m.name for m in item.iter_markers() if m.name in TIERS}
    found |= {tier for tier, names in TIER_FIXTURES.items() if fixtures & names}
    if item.path.name.startswith("test_gui_"):
        found.add("gui")
    return max(found, key=TIERS.index, default="unit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets its tier's marker (`tier_of`), so `pytest -m unit` selects the unit tier; a
    test that declares a lighter tier than it uses ends up with two, which
    tests/test_tiers.py refuses.

    NiceGUI's test app, stopped at a GUI test's teardown, logs "Could not cancel N tasks
    within timeout" when a page's `run.io_bound` thread is still busy (a loaded machine): a
    teardown artefact of the test harness, not something a user of the GUI meets — allowed,
    never required, in the GUI tests only."""
    for item in items:
        tier = tier_of(item)
        if not any(m.name == tier for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, tier))
        if item.path.name.startswith("test_gui_"):
            item.add_marker(pytest.mark.expect_log(r"^Could not cancel \d+ tasks within timeout", level="ERROR",
                                                   optional=True))
