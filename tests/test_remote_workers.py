"""Workers on other hosts (docs/scale-out.md, "Workers on other hosts"): a `hoard worker` in a
network namespace of its own — a second host, which reaches the store's server only over a
veth pair: Redis on TCP with a password, SeaweedFS's S3 through a proxy on the pair's address
— stages and exports from the S3 disk into its own SSD's 3C/3D; an output with an object on no
S3 disk is refused on the server in one line; a host killed mid-job (SIGKILL of every process
in its namespace) has its job queued again by the server's reaper and finished by another
host. Real PostgreSQL, Redis, SeaweedFS, store and processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import rq
from rq import Queue, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry

from hoardfs.adapters.synth import Spec
from hoardfs.base import config
from hoardfs.base.proc import process_space, which
from hoardfs.fsd.core.records import DataError
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.outputs import seal
from hoardfs.fsd.store import Store
from hoardfs.jobs import remote as remote_mod
from hoardfs.jobs.guard import SERIALIZER
from hoardfs.jobs.queues import HoardWorker, fetch_job, rq_queue
from hoardfs.jobs.reaper import reap
from tests.helpers import missing, write_config
from tests.s3fault import FaultProxy
from tests.test_ingest import ingest_sample
from tests.test_s3_backend import engine_env  # noqa: F401  # (a fixture)

# tier: SeaweedFS, PostgreSQL, Redis and hoard processes in network namespaces
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent
#: the heartbeat and reaper of every host in these tests (the defaults are 10 s and 40 s)
WORKER = "[worker]\nheartbeat_s = 1\nreap_after_s = 3\n"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


#: where the subnets hosts hold are locked: one file per 10.77.<n>.0/24, flocked while a Host is
#: up — two pytest runs at once (two checkouts, or xdist workers) never take the same addresses
SUBNET_LOCKS = Path("/run/lock/hoard-test-subnets")


def _take_subnet() -> tuple[int, int]:
    """A subnet 10.77.<n>.0/24 no Host of any process holds and no interface here uses: (n, the
    descriptor of its flocked lock file, held until Host.down)."""
    import fcntl

    SUBNET_LOCKS.mkdir(parents=True, exist_ok=True)
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=30).stdout
    for n in range(1, 255):
        if f" 10.77.{n}." in used:
            continue  # (a dead run's leftover, or someone else's)
        fd = os.open(SUBNET_LOCKS / str(n), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return n, fd
    raise RuntimeError("no free subnet 10.77.<1-254>.0/24 for a test host: `ip -o addr` shows them all in use")


class Host:
    """A network namespace joined to this host by a veth pair: this side 10.77.<n>.1, the
    namespace's 10.77.<n>.2 — what it can reach of the server is what listens on 10.77.<n>.1;
    `n` a subnet no other Host holds (_take_subnet)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.n, self._lock = _take_subnet()
        tag = f"{os.getpid() % 10000}{self.n}"
        self.ns, self.veth = f"hoardt{tag}", f"hvt{tag}"
        self.server_ip = f"10.77.{self.n}.1"
        self.procs: list[subprocess.Popen] = []

    def up(self) -> None:
        try:
            _run("ip", "netns", "add", self.ns)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            missing(f"NETWORK NAMESPACES UNAVAILABLE (`ip netns add` failed: "
                    f"{getattr(e, 'stderr', b'') or e!s}); the remote-worker tests need root and netns")
        _run("ip", "link", "add", self.veth + "a", "type", "veth", "peer", "name", self.veth + "b")
        _run("ip", "link", "set", self.veth + "b", "netns", self.ns)
        _run("ip", "addr", "add", f"{self.server_ip}/24", "dev", self.veth + "a")
        _run("ip", "link", "set", self.veth + "a", "up")
        for cmd in (("addr", "add", f"10.77.{self.n}.2/24", "dev", self.veth + "b"),
                    ("link", "set", self.veth + "b", "up"), ("link", "set", "lo", "up")):
            _run(*self.inside(), "ip", *cmd)

    def inside(self) -> tuple[str, ...]:
        """The prefix that runs a command in this host's network namespace: `nsenter --net`, not
        `ip netns exec` or `ip -n`, which also remount /sys in a mount namespace of their own
        (refused where the root directory is no mount point: a chroot) — the host's processes, and
        `ip` setting up its link, need only its network."""
        return ("nsenter", f"--net=/run/netns/{self.ns}")

    def start_worker(self, cfg: Path) -> subprocess.Popen:
        """`hoard worker` inside the namespace, with this host's own hoard.toml."""
        log = (self.home / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([*self.inside(), sys.executable, "-m", "hoardfs", "--config", str(cfg),
                                 "worker"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace (the host dies); their pids."""
        pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True,
                                                timeout=30).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        return pids

    def down(self) -> None:
        self.kill_all()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth + "a"], capture_output=True, timeout=30)
        os.close(self._lock)  # (the subnet free again)


@contextlib.contextmanager
def _redis_on(ips: list[str], base: Path) -> Iterator[tuple[int, str]]:
    """A Redis of the test's own on TCP (these addresses and 127.0.0.1) with a password: (port,
    password)."""
    password = secrets.token_hex(16)
    base.mkdir(parents=True, exist_ok=True)
    with FaultProxy("http://127.0.0.1:1") as probe:  # a free port, taken and given back
        port = int(probe.endpoint.rsplit(":", 1)[1])
    proc = subprocess.Popen([which("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1", *ips,
                             "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(base)],
                            stdout=(base / "redis.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        r = redis.Redis(port=port, password=password)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if r.ping():
                    break
            time.sleep(0.05)
        yield port, password
    finally:
        proc.kill()
        proc.wait(10)


def _remote_config(home: Path, server_ip: str, port: int, password: str, endpoint: str, bucket: str,
                   database_url: str) -> Path:
    """A second host's hoard.toml: the server's Redis over TCP, its PostgreSQL, the S3 disk by
    the address this host reaches it at, an SSD of its own."""
    home.mkdir(parents=True, exist_ok=True)
    zones = "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D"))
    path = home / "hoard.toml"
    path.write_text(f'redis_url = "redis://:{password}@{server_ip}:{port}/0"\ndatabase_url = {database_url!r}\n\n'
                    f"[worker]\nremote = true\nheartbeat_s = 1\nreap_after_s = 3\n\n"
                    f'[[disks]]\nlabel = "s3a"\nkind = "s3"\nendpoint = "{endpoint}"\nbucket = "{bucket}"\n'
                    f'capacity_gb = 2\n\n[ssd]\nroot = "ssd"\n\n{zones}')
    for z in ("3A", "3B", "3C", "3D"):
        (home / "ssd" / z).mkdir(parents=True, exist_ok=True)
    return path


def _hoard(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cluster(hoard_home: Path, pg, redis_conn, seaweedfs, engine_env, tmp_path: Path):
    """The store's server (a store of four directory disks and the S3 disk s3a, filled by a real
    ingest), a TCP Redis, and two hosts in network namespaces, each with its S3 proxy."""
    engine_env(seaweedfs)
    cfg, _ = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=91, batches=1, items_per_batch=30, large_max_mb=1,
                                                             ready_signal=True, sources=("gallery",)))
    bucket = "hoard-remote-" + secrets.token_hex(4)
    seaweedfs.client().create_bucket(Bucket=bucket)
    main = Path(cfg.source)
    text = main.read_text().replace("\n[ssd]", f'\n[[disks]]\nlabel = "s3a"\nkind = "s3"\nendpoint = '
                                              f'"{seaweedfs.endpoint}"\nbucket = "{bucket}"\ncapacity_gb = 2\n\n[ssd]', 1)
    main.write_text(text)
    Store.open(config.load(main), init=True).close()  # the empty bucket becomes the disk s3a
    hosts = [Host(tmp_path / f"host{i}") for i in (1, 2)]
    try:
        for h in hosts:
            h.home.mkdir()
            h.up()
        with _redis_on([h.server_ip for h in hosts], tmp_path / "redis") as (port, password), \
                FaultProxy(seaweedfs.endpoint, bind=hosts[0].server_ip) as proxy1, \
                FaultProxy(seaweedfs.endpoint, bind=hosts[1].server_ip) as proxy2:
            text = main.read_text()
            main.write_text(text.replace(f"redis_url = {cfg.redis_url!r}",
                                         f'redis_url = "redis://:{password}@127.0.0.1:{port}/0"', 1) + "\n" + WORKER)
            assert "127.0.0.1" in config.load(main).redis_url
            remotes = [_remote_config(h.home, h.server_ip, port, password, p.endpoint, bucket, cfg.database_url)
                       for h, p in zip(hosts, (proxy1, proxy2), strict=True)]
            try:
                yield {"main": main, "hosts": hosts, "remotes": remotes, "proxies": (proxy1, proxy2),
                       "redis": redis.Redis(port=port, password=password), "bucket": bucket,
                       "s3": seaweedfs.client()}
            finally:
                for h in hosts:  # (before their Redis stops: a worker would log that it is gone)
                    h.kill_all()
    finally:
        for h in hosts:
            h.down()


def _onto_the_bucket(main: Path) -> None:
    """Every shard replicated onto s3a too (a copy target of five: four HDDs and the bucket)."""
    text = main.read_text().replace("[store]\n", "[store]\ncopy_of_raw = 5\ncopy_of_generated = 5\n", 1)
    main.write_text(text)
    with Store.open(config.load(main)) as store:
        replicate_once(store, rate_mb_s=None)
        s3a = next(u for u, r in store.records.items() if r.label == "s3a")
        assert all(s3a in m.replicas for m in store.index.iter_shards() if m.sealed)


def _nodes(cfg: config.Settings, path: Path) -> list[str]:
    import psycopg

    with psycopg.connect(cfg.database_url) as conn:
        shas = [r[0] for r in conn.execute("SELECT encode(sha256, 'hex') FROM node n JOIN physical_content USING "
                                           "(node_id) ORDER BY 1").fetchall()]
    path.write_text("\n".join(shas) + "\n")
    return shas


def test_a_worker_on_another_host_stages_and_exports_from_the_s3_disk(cluster, tmp_path: Path) -> None:
    """Refused on the server in one line while an object is on no S3 disk; once every shard is on
    the bucket, a worker in another network namespace stages and exports into its own 3C/3D —
    sealed, every file the object's bytes — and nothing lands in the server's zones."""
    main, (host, _), (remote, _) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg = config.load(main)
    shas = _nodes(cfg, tmp_path / "shas.txt")
    assert len(shas) > 20
    refused = _hoard(main, "stage", "st1", "--layout", "by_sha256", "--nodes", str(tmp_path / "shas.txt"), "--remote")
    lines = [ln for ln in (refused.stdout + refused.stderr).splitlines() if ln.strip()]
    assert refused.returncode == 3 and len(lines) == 1, lines
    assert "on no S3 disk" in lines[0] and "hoard replicate" in lines[0] and "Traceback" not in lines[0]
    assert not cluster["redis"].exists("rq:queue:remote")  # nothing was queued

    _onto_the_bucket(main)
    host.start_worker(remote)
    res = _hoard(main, "stage", "st1", "--layout", "by_sha256", "--nodes", str(tmp_path / "shas.txt"), "--remote",
                 "--wait", "--json", "--timeout", "100")
    assert res.returncode == 0, res.stdout + res.stderr + _logs(host)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    staged = host.home / "ssd" / "3C" / "st1"
    doc = seal.check_sealed(staged, verify=True)
    assert doc["kind"] == "stage" and report["files"] == doc["actual_files"] == len(shas)
    assert sorted(_tree(staged / "by_sha256" / "input").values()) == shas
    assert (staged / "by_sha256" / "output").is_dir()
    assert not (cfg.ssd.zone_path("3C") / "st1").exists()

    selector = tmp_path / "sel.json"
    selector.write_text(json.dumps({"sources": ["gallery"]}))
    res = _hoard(main, "export", "ex1", "--layout", "by_batch", "--selector", str(selector), "--remote", "--wait",
                 "--timeout", "100")
    assert res.returncode == 0, res.stdout + res.stderr + _logs(host)
    exported = host.home / "ssd" / "3D" / "ex1"
    doc = seal.check_sealed(exported, verify=True)
    files = _tree(exported / "by_batch")
    assert doc["kind"] == "export" and len(files) == doc["actual_files"] > 20 and set(files.values()) <= set(shas)
    assert not (cfg.ssd.zone_path("3D") / "ex1").exists()
    status = _hoard(remote, "export", "--status", "ex1", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "done", status.stdout + status.stderr


#: what a process on a remote host runs with that host's hoard.toml (argv: it, the server's
#: hoard.toml): a `backup` queued on the server's `maintenance` queue, unsigned and signed with a
#: key of the host's own
FROM_A_HOST = """
import sys
from hoardfs.base import config
from hoardfs.jobs import jobkey
from hoardfs.jobs.queues import connect, rq_queue
cfg = config.load(sys.argv[1])
conn = connect(cfg.redis_url)
rq_queue("maintenance", conn).enqueue("hoardfs.jobs.maintenance.run", "backup", sys.argv[2], job_id="from-host")
rq_queue("maintenance", conn, jobkey.of(cfg)).enqueue("hoardfs.jobs.maintenance.run", "backup", sys.argv[2],
                                                      job_id="from-host-key")
"""


@pytest.mark.expect_log(r"refused job from-host(-key)? on queue maintenance, not run: not signed by this server's key; "
                        r"only the server queues server jobs \(docs/security.md\)", level="ERROR")
def test_a_remote_host_cannot_queue_a_server_job(cluster) -> None:
    """A process in a remote host's namespace, with only that host's hoard.toml (the server's
    Redis and its password), queues `backup` on the server's `maintenance` queue — unsigned, and
    signed with a key of the host's own: the server's `hoard worker --burst` refuses each in one
    line and no backup is made; the backup the server queues itself (as the GUI's Run does) runs."""
    main, (host, _), (remote, _) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg, conn = config.load(main), cluster["redis"]
    zone3b = cfg.ssd.zone_path("3B")
    before = sorted(zone3b.rglob("*"))
    res = subprocess.run([*host.inside(), sys.executable, "-c", FROM_A_HOST, str(remote),
                          str(main.resolve())], cwd=REPO, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert conn.lrange("rq:queue:maintenance", 0, -1) == [b"from-host", b"from-host-key"]  # it reached the queue

    out = _hoard(main, "worker", "--queues", "maintenance", "--burst")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    for job_id in ("from-host", "from-host-key"):
        assert len([ln for ln in out.stderr.splitlines() if f"refused job {job_id} " in ln]) == 1, out.stderr
        assert fetch_job(job_id, conn).get_status(refresh=True) == "failed"
    assert sorted(zone3b.rglob("*")) == before, "a backup was made"

    from hoardfs.jobs.launch import launch_maintenance

    job_id = launch_maintenance(cfg, "backup", {}, by="test")
    out = _hoard(main, "worker", "--queues", "maintenance", "--burst")
    assert out.returncode == 0 and "refused" not in out.stderr, out.stderr
    assert fetch_job(job_id, conn).get_status(refresh=True) == "finished", out.stderr
    assert sorted(zone3b.rglob("*")) != before


@pytest.mark.expect_log(r"reaper: job remote-stage-st2 .* sent no heartbeat for \d+ s \(host down\?\); queued again",
                        level="WARNING")
@pytest.mark.expect_log(r"zone 3C: reclaimed the stale reservation of job stage:st2 .* its process is gone",
                        level="WARNING")
def test_a_host_killed_mid_stage_has_its_job_queued_again_and_finished_elsewhere(cluster, tmp_path: Path) -> None:
    """SIGKILL of every process of host 1 while it stages (its S3 answers slowed down): the
    server's reaper (heartbeat 1 s, reap after 3 s) queues the job again within
    reap_after_s + 2 × heartbeat_s of the last beat, host 2 stages the whole output, sealed; the
    job is never failed; host 1, back, runs the same job again and resumes its own partial tree
    to the same files — nothing duplicated, nothing lost."""
    main, (host1, host2), (remote1, remote2) = cluster["main"], cluster["hosts"], cluster["remotes"]
    proxy1, _ = cluster["proxies"]
    cfg = config.load(main)
    shas = _nodes(cfg, tmp_path / "shas.txt")
    _onto_the_bucket(main)
    reaper = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(main), "worker", "--queues", "sql"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proxy1.delay(0.3)  # host 1's reads crawl: it is killed in the middle
        host1.start_worker(remote1)
        res = _hoard(main, "stage", "st2", "--layout", "by_sha256", "--nodes", str(tmp_path / "shas.txt"), "--remote")
        assert res.returncode == 0, res.stdout + res.stderr
        partial = host1.home / "ssd" / "3C" / ".tmp" / "st2"
        deadline = time.monotonic() + 60
        while not (partial.is_dir() and any(p.is_file() for p in partial.rglob("*"))):
            assert time.monotonic() < deadline, _logs(host1)
            time.sleep(0.1)
        conn = cluster["redis"]
        job = fetch_job("remote-stage-st2", conn)
        assert job.get_status() == "started"
        host1.kill_all()
        killed = time.time()
        host2.start_worker(remote2)
        while (status := fetch_job("remote-stage-st2", conn).get_status(refresh=True)) != "finished":
            assert status != "failed" and time.monotonic() < deadline + 60, status + _logs(host2)
            time.sleep(0.2)
        job = fetch_job("remote-stage-st2", conn)
        requeued = job.enqueued_at.timestamp()  # (set again when the reaper queued it)
        assert requeued - killed <= 3 + 2 + 1, (requeued - killed)  # reap_after_s + 2 × heartbeat_s, a beat's slack
        assert not conn.zcard("rq:failed:remote")
    finally:
        reaper.send_signal(signal.SIGTERM)
        out, _ = reaper.communicate(timeout=60)
    assert "remote-stage-st2" in out and "queued again" in out, out
    staged = host2.home / "ssd" / "3C" / "st2"
    assert seal.check_sealed(staged, verify=True)["actual_files"] == len(shas)
    assert sorted(_tree(staged / "by_sha256" / "input").values()) == shas
    assert not (host1.home / "ssd" / "3C" / "st2").exists() and partial.is_dir()

    # host 1 back (host 2 gone): the same job again resumes host 1's partial tree
    host2.kill_all()
    proxy1.delay(0)
    host1.start_worker(remote1)
    conn.delete("rq:job:remote-stage-st2")  # finished: the next `--remote` queues it anew
    res = _hoard(main, "stage", "st2", "--layout", "by_sha256", "--nodes", str(tmp_path / "shas.txt"), "--remote",
                 "--wait", "--json", "--timeout", "100")
    assert res.returncode == 0, res.stdout + res.stderr + _logs(host1) + _logs(host2)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["kept_files"] > 0 and report["copied_files"] + report["kept_files"] == len(shas), report
    resumed = host1.home / "ssd" / "3C" / "st2"
    assert seal.check_sealed(resumed, verify=True)["actual_files"] == len(shas)
    assert _tree(resumed / "by_sha256") == _tree(staged / "by_sha256")


def _logs(host: Host) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(host.home.glob("*.log")))


def _started(conn, job_id: str, name: str = "io") -> tuple[Worker, Job]:
    """A job on queue `name` taken by a worker of this process, as RQ's worker takes one (its
    execution in the started registry, the job `started` with a heartbeat now)."""
    queue = rq_queue(name, conn)
    queue.enqueue("hoardfs.jobs.outputs.run_job", None, job_id, job_id=job_id)
    worker = Worker([queue], connection=conn, serializer=SERIALIZER)
    worker.register_birth()
    job = queue.dequeue_any([queue], None, connection=conn, serializer=SERIALIZER)[0]
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return worker, job


@pytest.mark.expect_log(r"reaper: job silent .* sent no heartbeat for 60 s \(host down\?\); queued again",
                        level="WARNING")
def test_the_reaper_takes_a_silent_job_once_and_never_a_live_local_one(redis_conn) -> None:
    """A started job whose heartbeat has not changed for reap_after_s (the reaper's clock) is queued again once — a second
    reaper finds nothing — unless its worker is a live process of this host (an in-process
    SimpleWorker beats only between jobs); a job with a fresh beat is left alone."""
    worker, job = _started(redis_conn, "silent")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    assert reap(redis_conn, 40) == []  # a fresh beat
    assert reap(redis_conn, 40, now=later) == []  # silent, but its worker is this live process
    redis_conn.hset(worker.key, "hostname", "another-host")  # the same worker, on a host that died
    assert reap(redis_conn, 40, now=later) == ["silent"]
    assert reap(redis_conn, 40, now=later) == []  # taken once: a second reaper finds nothing
    queue = rq_queue("io", redis_conn)
    assert queue.job_ids == ["silent"] and fetch_job("silent", redis_conn).get_status() == "queued"
    assert not StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)


@pytest.mark.expect_log(r"reaper: job lost .* was taken by a worker that never started it \(for 60 s: host down\?\); "
                        r"queued again", level="WARNING")
def test_the_reaper_queues_again_a_job_its_worker_took_but_never_started(redis_conn) -> None:
    """A worker serving one queue (a remote host) takes a job into the queue's intermediate
    list and dies before it starts it: RQ would fail it at its maintenance (rq#1571), by a
    worker of that queue only. The reaper queues it again after two sightings `reap_after_s`
    apart, once; a job in the list that its worker started is left alone."""
    queue = rq_queue(remote_mod.QUEUE, redis_conn)
    queue.enqueue("hoardfs.jobs.outputs.run_job", None, "lost", job_id="lost")
    assert Queue.lmove(redis_conn, queue.key, None) is not None  # BLMOVE, as `hoard worker` takes it
    assert redis_conn.lrange(queue.intermediate_queue_key, 0, -1) == [b"lost"] and queue.job_ids == []
    now = dt.datetime.now(dt.UTC)
    assert reap(redis_conn, 40, now=now) == []  # first seen
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=30)) == []  # not long enough yet
    later = now + dt.timedelta(seconds=60)
    assert reap(redis_conn, 40, now=later) == ["lost"]
    assert reap(redis_conn, 40, now=later + dt.timedelta(seconds=60)) == []  # taken once
    assert queue.job_ids == ["lost"] and fetch_job("lost", redis_conn).get_status() == "queued"
    assert redis_conn.llen(queue.intermediate_queue_key) == 0
    queue.remove("lost")
    worker, job = _started(redis_conn, "running", remote_mod.QUEUE)  # started: its heartbeat counts, not the list
    redis_conn.rpush(queue.intermediate_queue_key, "running")
    assert reap(redis_conn, 40, now=later) == reap(redis_conn, 40, now=later + dt.timedelta(seconds=60)) == []
    assert fetch_job("running", redis_conn).get_status() == "started"


@pytest.mark.expect_log(r"reaper: job cloned .* sent no heartbeat", level="WARNING")
def test_a_dead_host_of_this_host_s_name_is_not_taken_for_this_one(redis_conn) -> None:
    """A remote host with the server's hostname (a cloned VM, a container) dies; its worker's pid
    happens to be a live process here. The worker's record names its process space (boot id and
    pid namespace: `hoard worker` writes it), so the reaper does not take it for a live worker
    of this host, and queues its job again (before: never, while that pid lived here)."""
    hoard_worker = HoardWorker([rq_queue("io", redis_conn)], connection=redis_conn)
    hoard_worker.register_birth()  # what `hoard worker` records of itself
    assert redis_conn.hget(hoard_worker.key, "hoard_space").decode() == process_space() != ""
    hoard_worker.register_death()
    worker, job = _started(redis_conn, "cloned")
    assert redis_conn.hget(worker.key, "hostname").decode() == socket.gethostname()  # (this process: alive)
    now = dt.datetime.now(dt.UTC)
    redis_conn.hset(worker.key, "hoard_space", process_space())
    assert reap(redis_conn, 40, now=now) == []  # its beat seen
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=60)) == []  # silent, but this host's live worker
    redis_conn.hset(worker.key, "hoard_space", process_space().rsplit("/", 1)[0] + "/1")  # another pid namespace
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=60)) == ["cloned"]


@pytest.mark.expect_log(r"reaper: job behind .* sent no heartbeat for 44 s \(host down\?\); queued again", level="WARNING")
def test_the_reaper_never_takes_a_job_whose_worker_beats_by_a_clock_behind(redis_conn) -> None:
    """A remote host's clock 45 s behind the reaper's (no NTP there): its worker beats every
    heartbeat_s, each beat stamped by its own clock. Silence is judged by the reaper's clock
    alone — a beat that changes is a live worker, whatever time it names —, so its job is left
    to it (before: every beat looked 45 s old, and the live job was taken and run twice); once
    the beats stop for reap_after_s of the reaper's time, it is taken."""
    worker, job = _started(redis_conn, "behind")
    redis_conn.hset(worker.key, "hostname", "another-host")
    now = dt.datetime.now(dt.UTC)
    for t in range(0, 100, 10):  # a beat every 10 s of the worker's clock, 45 s behind
        job.heartbeat(now + dt.timedelta(seconds=t - 45), 60)
        assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=t + 1)) == [], t
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=125)) == []  # silent 34 s: not yet
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=135)) == ["behind"]  # silent 44 s


def test_the_reaper_never_takes_a_job_a_live_worker_just_took_on_an_old_sighting(redis_conn) -> None:
    """A job seen in the intermediate list in the moment between its worker's BLMOVE and its
    start, started, ended and queued again (a retry, a resubmission) is taken by a live worker
    as the reaper passes again: the reaper's first sighting is of the earlier time in the list,
    not of this one — the job is left to its worker (before: taken and queued again, run by
    two workers at once)."""
    queue = rq_queue(remote_mod.QUEUE, redis_conn)
    queue.enqueue("hoardfs.jobs.outputs.run_job", None, "again", job_id="again")
    assert Queue.lmove(redis_conn, queue.key, None) is not None  # a live worker takes it...
    now = dt.datetime.now(dt.UTC)
    assert reap(redis_conn, 40, now=now) == []  # ...as the reaper passes: seen
    worker = Worker([queue], connection=redis_conn, serializer=SERIALIZER)
    worker.register_birth()
    job = fetch_job("again", redis_conn)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)  # started: out of the list
    assert redis_conn.llen(queue.intermediate_queue_key) == 0
    redis_conn.delete(StartedJobRegistry(queue=queue).key)  # it ends (its execution leaves the registry)...
    job.set_status("finished")
    queue.enqueue_job(job)  # ...and is queued again; a live worker takes it as the reaper passes
    assert Queue.lmove(redis_conn, queue.key, None) is not None
    assert reap(redis_conn, 40, now=now + dt.timedelta(seconds=60)) == []
    assert redis_conn.lrange(queue.intermediate_queue_key, 0, -1) == [b"again"] and queue.job_ids == []


def test_the_reaper_never_queues_again_a_job_that_ends_as_it_is_taken(redis_conn, monkeypatch) -> None:
    """A silent job that finishes after the reaper looked at it, as the reaper puts it back (its
    worker was slow, not dead): the job's status is read and the job queued in one WATCHed
    transaction, so the finished job stays finished and is not run again (before: queued)."""
    worker, job = _started(redis_conn, "late")
    redis_conn.hset(worker.key, "hostname", "another-host")
    real = rq.Queue.enqueue_job
    other = redis.Redis(connection_pool=redis_conn.connection_pool)

    def finishes_meanwhile(self, job, *a, **kw):
        other.hset(job.key, "status", "finished")  # the worker's own end, from its connection
        return real(self, job, *a, **kw)

    assert reap(redis_conn, 40) == []  # its beat seen (silence is counted from there)
    monkeypatch.setattr(rq.Queue, "enqueue_job", finishes_meanwhile)
    assert reap(redis_conn, 40, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)) == []
    assert fetch_job("late", redis_conn).get_status() == "finished" and rq_queue("io", redis_conn).job_ids == []


@pytest.mark.expect_log(r"job remote-stage-st3 \(stage st3 \(remote\)\) failed: object [0-9a-f]{64} lies on S3 disk\(s\) "
                        r"s3a, none of which .* declares", level="ERROR")
@pytest.mark.expect_log(r"job remote-stage-st4 \(stage st4 \(remote\)\) failed: object [0-9a-f]{64}: its record in "
                        r"shard [0-9a-f]+ on S3 disk s3a does not check", level="ERROR")
def test_a_host_that_cannot_read_an_object_fails_the_job_in_one_line(cluster, tmp_path: Path) -> None:
    """A host whose hoard.toml names the S3 disk by another label, and a record damaged in its
    shard's object on the bucket: each fails the job with one line naming the disk or the
    object and the next step — `--wait` exits 5 with it, the host's worker logs it without a
    traceback, and nothing is sealed."""
    main, (host1, host2), (remote1, remote2) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg = config.load(main)
    shas = _nodes(cfg, tmp_path / "shas.txt")
    _onto_the_bucket(main)
    stage = ("stage", "--layout", "by_sha256", "--nodes", str(tmp_path / "shas.txt"), "--remote", "--wait",
             "--timeout", "100")

    remote2.write_text(remote2.read_text().replace('label = "s3a"', 'label = "s3b"'))
    host2.start_worker(remote2)
    res = _hoard(main, stage[0], "st3", *stage[1:])
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 3 and len(lines) == 1, lines
    assert "none of which" in lines[0] and "[[disks]] table" in lines[0] and "s3a" in lines[0], lines
    host2.kill_all()

    with Store.open(config.load(main), writable=False) as store:  # one object's payload damaged on the bucket
        loc = store.index.lookup(bytes.fromhex(shas[0]))
        assert loc is not None
        key = f"shards/{loc.shard_id.hex()[-2:]}/{loc.shard_id.hex()}"  # (docs/scale-out.md: the layout in the bucket)
    client = cluster["s3"]
    body = bytearray(client.get_object(Bucket=cluster["bucket"], Key=key)["Body"].read())
    body[loc.offset] ^= 0xFF
    client.put_object(Bucket=cluster["bucket"], Key=key, Body=bytes(body))
    host1.start_worker(remote1)
    res = _hoard(main, stage[0], "st4", *stage[1:])
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 5 and len(lines) == 1, lines
    assert f"object {shas[0]}" in lines[0] and "does not check" in lines[0] and "hoard verify" in lines[0], lines
    assert not (host1.home / "ssd" / "3C" / "st4").exists()
    status = _hoard(remote1, "stage", "--status", "st4", "--json")
    assert json.loads(status.stdout)["status"] == "failed", status.stdout + status.stderr
    assert "Traceback" not in _logs(host1) + _logs(host2)


def test_a_large_record_is_read_off_the_bucket_in_checked_pieces(tmp_path: Path, seaweedfs, engine_env) -> None:
    """An object larger than a piece (8 MiB) is read by a remote worker's reader in pieces of
    ranged GETs, its record header checked first, the pieces' sha256 the object's; a plan that
    points at another record's place is refused in one line naming the object and the shard."""
    engine_env(seaweedfs)
    bucket = "hoard-large-" + secrets.token_hex(4)
    seaweedfs.client().create_bucket(Bucket=bucket)
    cfg_path = _s3_store_config(tmp_path, seaweedfs.endpoint, bucket)
    big, small = os.urandom(remote_mod.PIECE + 12345), b"a small one"
    with Store.open(config.load(cfg_path), init=True) as store:
        shas = [r.sha256 for r in store.put_bytes_many([big, small])]
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        s3a = next(u for u, r in store.records.items() if r.label == "s3a")
        where = {}
        for sha in shas:
            loc = store.index.lookup(bytes.fromhex(sha))
            meta = store.index.get_shard(loc.shard_id)
            assert meta.sealed and s3a in meta.replicas
            where[sha] = [meta.hex, loc.offset, loc.length, ["s3a"]]
    pieces: list[int] = []
    got: dict[str, str] = {}

    def sink(sha: bytes, payload: memoryview) -> None:
        got[sha.hex()] = hashlib.sha256(payload).hexdigest()

    def large_sink(sha: bytes, parts) -> None:
        h = hashlib.sha256()
        for part in parts:
            pieces.append(len(part))
            h.update(part)
        got[sha.hex()] = h.hexdigest()

    with remote_mod.LocatedReader(config.load(cfg_path), where) as reader:
        reader.read_batch(shas, sink, large_sink)
    assert got == {s: s for s in shas} and pieces == [remote_mod.PIECE, 12345]
    where[shas[0]] = [where[shas[1]][0], where[shas[1]][1], len(big), ["s3a"]]  # another record's place
    with remote_mod.LocatedReader(config.load(cfg_path), where) as reader, \
            pytest.raises(remote_mod.RemoteError) as e:
        reader.read_batch([shas[0]], sink, large_sink)
    assert f"object {shas[0]}" in e.value.message and "does not check" in e.value.message


def _s3_store_config(root: Path, endpoint: str, bucket: str) -> Path:
    """Two directory disks and the S3 disk s3a, every shard on all three."""
    disks = [(label, root / label, None) for label in ("d0", "d1")]
    for _, p, _ in disks:
        p.mkdir()
    path = write_config(root, disks, shard_size_mb=64, copy_of_raw=3, copy_of_generated=3, write_ack=2)
    path.write_text(path.read_text().replace("\n[ssd]", f'\n[[disks]]\nlabel = "s3a"\nkind = "s3"\nendpoint = '
                                                        f'"{endpoint}"\nbucket = "{bucket}"\ncapacity_gb = 2\n\n[ssd]', 1))
    return path


def test_a_hostile_plan_queued_by_hand_writes_nothing_outside_the_zone(redis_conn, tmp_path: Path) -> None:
    """A `run_output` job written into Redis by someone other than the server (the guard allows
    the function, and it names no configuration) whose plan names paths out of the zone — `..`,
    an absolute path, a path beside the layout's directory — with sidecar bytes of its choosing:
    refused in one line before anything is written or recorded (the sidecars were written
    outside the zone, to the job's paths, before any record was read)."""
    from hoardfs.jobs.guard import refusal

    root = tmp_path / "host"
    for d in ("d0", "d1", "ssd/3A", "ssd/3B", "ssd/3C", "ssd/3D"):
        (root / d).mkdir(parents=True)
    cfg_path = write_config(root, [(d, root / d, None) for d in ("d0", "d1")])
    cfg = config.load(cfg_path)
    sha = hashlib.sha256(b"x").hexdigest()
    where = {sha: ["00" * 12, 72, 1, []]}
    for n, path in enumerate(["../../../../outside/pwned", str(tmp_path / "abs" / "pwned"), "x/input/../../../../up",
                              "_SEALED", "y/input/a"]):
        spec = {"kind": "stage", "id": f"evil{n}", "nodes": [sha], "layout": {
            "name": "x", "template": "{sha256}", "sidecars": True, "per_locator": False}}
        plan = {"nodes": 1, "items": [["x/input/ok", sha, 1, None], [path, sha, 1, "bytes of the job's choosing"]],
                "where": where}
        job = rq_queue(remote_mod.QUEUE, redis_conn).enqueue("hoardfs.jobs.remote.run_output", None, spec, plan,
                                                            job_id=f"remote-stage-evil{n}")
        assert refusal(fetch_job(job.id, redis_conn), cfg_path) == ""  # what the guard lets through
        with pytest.raises(remote_mod.RemoteError) as e:
            remote_mod.run_output(str(cfg_path), spec, plan)  # what the worker's work horse runs
        assert not (tmp_path / "outside").exists() and not (tmp_path / "abs").exists(), path
        assert not any(root.parent.rglob("*pwned*")) and not any(root.parent.rglob("up*")), path
        assert "the job's plan item 2" in e.value.message and "\n" not in e.value.message, e.value.message
        assert not (cfg.ssd.root / "state" / "outputs" / f"evil{n}.json").exists()  # nothing recorded
        assert not (cfg.ssd.zone_path("3C") / ".tmp" / f"evil{n}").exists()
    for n, name in enumerate(["../../../../escape", str(tmp_path / "escape")]):  # no file: only its empty directories
        spec = {"kind": "stage", "id": f"evil-layout{n}", "nodes": [sha], "layout": {
            "name": name, "template": "{sha256}", "sidecars": False, "per_locator": False}}
        with pytest.raises(remote_mod.RemoteError) as e:
            remote_mod.run_output(str(cfg_path), spec, {"nodes": 1, "items": [], "where": {}})
        assert not (tmp_path / "escape").exists() and not any(root.parent.rglob("escape")), name
        assert "the job's plan names layout" in e.value.message, e.value.message


@pytest.mark.expect_log(r"reaper: Redis at .* does not answer", level="WARNING")
@pytest.mark.expect_log(r"reaper: job beating .* sent no heartbeat for \d+ s \(host down\?\); queued again",
                        level="WARNING")
def test_after_redis_was_down_the_reaper_lets_live_workers_beat_again_first(tmp_path: Path) -> None:
    """Redis stopped for longer than reap_after_s and started again (its data kept): no worker
    could beat meanwhile, and a live one beats again within its heartbeat after Redis is back —
    the reaper takes nothing before reap_after_s has passed with Redis there (it used to take
    the job at its first look, from its live worker: another host made the output again); a job
    whose worker stays silent after that is taken as before."""
    from hoardfs.jobs.reaper import Reaper

    with FaultProxy("http://127.0.0.1:1") as probe:  # a free port, taken and given back
        port = int(probe.endpoint.rsplit(":", 1)[1])
    argv = [which("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--dir", str(tmp_path)]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        conn = redis.Redis(port=port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if conn.ping():
                    return proc
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    proc = start()
    conn = redis.Redis(port=port)
    reaper = Reaper(f"redis://127.0.0.1:{port}/0", 0.2, 2)
    try:
        worker, job = _started(conn, "beating")
        conn.hset(worker.key, "hostname", "another-host")  # a remote host's worker: only its beat counts
        reaper.start()
        time.sleep(0.5)
        job.heartbeat(dt.datetime.now(dt.UTC), 60)
        proc.terminate()  # (Redis writes its append-only file on the way out)
        proc.wait(10)
        time.sleep(3)  # longer than reap_after_s: no beat could be sent
        proc = start()
        time.sleep(1.0)  # the live worker's next beat, within its heartbeat_s of Redis answering
        assert fetch_job("beating", conn).get_status() == "started", "taken from its live worker"
        job.heartbeat(dt.datetime.now(dt.UTC), 60)
        time.sleep(1.5)
        assert fetch_job("beating", conn).get_status() == "started" and not rq_queue("io", conn).job_ids
        until = time.monotonic() + 10  # silent from now on: taken once reap_after_s passed
        while rq_queue("io", conn).job_ids != ["beating"]:
            assert time.monotonic() < until, "a silent job never taken"
            time.sleep(0.1)
    finally:
        reaper.stop()
        reaper.join(10)
        proc.kill()
        proc.wait(10)


@pytest.mark.expect_log(r"object [0-9a-f]{64}: its record in shard [0-9a-f]+ on S3 disk s3a cannot be used .*; read "
                        r"from S3 disk s3b instead", level="WARNING")
def test_a_bad_record_on_one_s3_disk_is_read_from_another(tmp_path: Path, seaweedfs, engine_env) -> None:
    """Two S3 disks hold each shard; on the first the payload of a small record and of one larger
    than a piece is damaged: a remote worker's reader reads both from the second, checked, each
    fallback a WARNING and counted (the reader tried only the plan's first disk and failed the job
    though another held the shard); with the second damaged too the job fails in one line."""
    engine_env(seaweedfs)
    buckets = {label: f"hoard-{label}-" + secrets.token_hex(4) for label in ("s3a", "s3b")}
    for b in buckets.values():
        seaweedfs.client().create_bucket(Bucket=b)
    cfg_path = _s3_store_config(tmp_path, seaweedfs.endpoint, buckets["s3a"])
    text = cfg_path.read_text().replace("copy_of_raw = 3", "copy_of_raw = 4").replace(
        "\n[ssd]", f'\n[[disks]]\nlabel = "s3b"\nkind = "s3"\nendpoint = "{seaweedfs.endpoint}"\nbucket = '
                   f'"{buckets["s3b"]}"\ncapacity_gb = 2\n\n[ssd]', 1)
    cfg_path.write_text(text)
    big, small = os.urandom(remote_mod.PIECE + 999), b"a small one"
    with Store.open(config.load(cfg_path), init=True) as store:
        shas = [r.sha256 for r in store.put_bytes_many([big, small])]
    where = {}
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        labels = {u: r.label for u, r in store.records.items()}
        for sha in shas:
            loc = store.index.lookup(bytes.fromhex(sha))
            meta = store.index.get_shard(loc.shard_id)
            assert meta.sealed and {"s3a", "s3b"} <= {labels[u] for u in meta.replicas}
            where[sha] = [meta.hex, loc.offset, loc.length, ["s3a", "s3b"]]
    client = seaweedfs.client()

    def damage(label: str) -> None:
        for shard_hex, offset, _length, _ in where.values():
            key = f"shards/{shard_hex[-2:]}/{shard_hex}"
            body = bytearray(client.get_object(Bucket=buckets[label], Key=key)["Body"].read())
            body[offset + 5] ^= 0xFF
            client.put_object(Bucket=buckets[label], Key=key, Body=bytes(body))

    got: dict[str, str] = {}

    def sink(sha: bytes, payload: memoryview) -> None:
        got[sha.hex()] = hashlib.sha256(payload).hexdigest()

    def large_sink(sha: bytes, parts) -> None:  # as materialize's: the whole payload's sha256 checked
        h = hashlib.sha256()
        for part in parts:
            h.update(part)
        if h.hexdigest() != sha.hex():
            raise DataError(f"object {sha.hex()} read back with another sha256")
        got[sha.hex()] = h.hexdigest()

    damage("s3a")
    with remote_mod.LocatedReader(config.load(cfg_path), where) as reader:
        _, stats = reader.read_batch(shas, sink, large_sink)
    assert got == {s: s for s in shas} and stats.fallbacks == 2
    damage("s3b")
    got.clear()
    with remote_mod.LocatedReader(config.load(cfg_path), where) as reader, \
            pytest.raises(remote_mod.RemoteError) as e:
        reader.read_batch([shas[1]], sink, large_sink)
    assert f"object {shas[1]}" in e.value.message and "on S3 disk s3a, s3b does not check" in e.value.message
    assert "\n" not in e.value.message and got == {}
