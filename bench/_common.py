"""Shared by the benchmarks: lab setup, a store on lab disks, timing, result printing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hoardfs.base import config  # noqa: E402
from hoardfs.fsd.store import Store  # noqa: E402
from tests.helpers import write_config  # noqa: E402
from tests.lab import LAB4, Lab, drop_caches  # noqa: E402, F401

MiB = 1 << 20
_LOAD_AT_START = os.getloadavg()[0]  # a benchmark imports this module first


def lab_store(lab: Lab, root: Path, labels: list[str] | None = None, **opts) -> Store:
    """A store whose disks are the lab's mounts, with the profile's read and write speeds configured."""
    labels = labels or list(lab.disks)
    disks = [(label, lab.disks[label].mountpoint, None) for label in labels]
    path = write_config(root, disks, allow_dirs=False, **opts)
    text = path.read_text()
    for label in labels:  # give the planner and the writer the lab's real bandwidths: blkio throttles
        prof = lab.disks[label].profile  # in MiB/s, read_mb_s and write_mb_s are in MB/s (10^6 bytes)
        text = text.replace(f'label = "{label}"\n', f'label = "{label}"\nread_mb_s = {prof.read_mbps * MiB / 1e6:.3f}\n'
                                                    f'write_mb_s = {prof.write_mbps * MiB / 1e6:.3f}\n')
    path.write_text(text)
    return Store.open(config.load(path), init=True)


def _commit() -> str:
    """The commit measured, with `+dirty` when the work tree's code differs from it (the
    results a `make bench` run has written so far do not count: they are not what runs)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)bench/results"], capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine() -> dict:
    import platform

    mem = next((int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    # the load when the run started and when it ended: a figure measured on a busy machine says so
    return {"cpus": os.cpu_count(), "mem_mib": mem, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_1m_at_start": _LOAD_AT_START, "loadavg_1m_at_end": os.getloadavg()[0]}


def lab_profile(lab: Lab) -> dict:
    """The lab's disks as the kernel throttles them (MiB/s = 2^20 bytes per second)."""
    return {label: {"size_mb": d.profile.size_mb, "read_mib_s": d.profile.read_mbps, "write_mib_s": d.profile.write_mbps,
                    "iops": d.profile.iops} for label, d in lab.disks.items()}


def measured_limits(lab: Lab, labels: list[str] | None = None, mib: int = 64,
                    read: bool = True) -> dict[str, dict[str, float]]:
    """Each lab disk's write (and, with `read`, read) MiB/s as `dd` gets them through the lab's
    throttle, one disk at a time (O_DIRECT, 1 MiB blocks, `mib` MiB written with a final fsync,
    then read back) — called inside `lab.throttled()`: the bound a benchmark divides by (blkio
    lets a few per cent more through than it is set to, so a bound from the configured limits
    would flatter every share)."""
    out: dict[str, dict[str, float]] = {}
    for label in labels or list(lab.disks):
        path = lab.disks[label].mountpoint / ".dd-limit"
        t0 = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "oflag=direct", "conv=fsync",
                        "status=none"], check=True)
        out[label] = {"write_mib_s": round(mib / (time.monotonic() - t0), 2)}
        if read:
            t0 = time.monotonic()
            subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct", "status=none"], check=True)
            out[label]["read_mib_s"] = round(mib / (time.monotonic() - t0), 2)
        path.unlink()
    return out


def measured_reads(lab: Lab, mib: int = 64) -> dict[str, float]:
    """Each lab disk's read MiB/s as `dd` gets it through the throttle (`measured_limits`' read
    half; called inside `lab.throttled()`)."""
    return {label: m["read_mib_s"] for label, m in measured_limits(lab, mib=mib).items()}


def parallel(cmds: list[list[str]]) -> None:
    """Run the commands at the same time (one per disk); fail if any fails."""
    procs = [subprocess.Popen(c) for c in cmds]
    if any(p.wait() for p in procs):
        raise SystemExit(f"a baseline failed: {cmds}")


@contextmanager
def timed(results: dict, name: str):
    t0 = time.monotonic()
    yield
    results[name] = time.monotonic() - t0


#: every run's raw numbers, one JSON file per benchmark and variant (committed with docs/benchmarks.md)
RESULTS = Path(__file__).resolve().parent / "results"


def report(title: str, rows: list[tuple[str, str]], data: dict, results: Path | None = None,
           name: str | None = None) -> None:
    """Print the rows and write the raw numbers to `results` (default RESULTS) as
    `<benchmark>-<arguments>.json` (or `<name>.json`)."""
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("json: " + json.dumps(data, sort_keys=True))
    results = results or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    slug = name or result_name(Path(sys.argv[0]).stem, sys.argv[1:])
    doc = {"benchmark": title, **stamp(), **data}
    (results / f"{slug}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def stamp() -> dict:
    """What every results JSON says of its run: the arguments, when it ended, the commit measured
    and the machine (with the load at start and end)."""
    return {"argv": sys.argv[1:], "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": _commit(),
            "machine": _machine()}


def result_name(script: str, argv: list[str]) -> str:
    """The name (without `.json`) `report` gives the results of `script` run with `argv`."""
    import re

    variant = "-".join(a.lstrip("-") for a in argv) or "default"
    return re.sub(r"[^a-z0-9]+", "-", f"{script}-{variant}".lower()).strip("-")


def lab_config(work: Path, url: str, redis_url: str, body: str, quota_gb: int) -> config.Settings:
    """A benchmark's hoard.toml in `work`: the test PostgreSQL and Redis, `body` (the script's own
    tables: [store], [[disks]], …), zone 3A–3D on `work/ssd` with `quota_gb` each, made; the store
    initialised."""
    zones = "".join(f"[ssd.zones.{z}]\nquota_gb = {quota_gb}\n" for z in ("3A", "3B", "3C", "3D"))
    path = work / "hoard.toml"
    path.write_text(f"database_url = {json.dumps(url)}\nredis_url = {json.dumps(redis_url)}\n"
                    f"{body}[ssd]\nroot = \"{work / 'ssd'}\"\n{zones}")
    cfg = config.load(path)
    for z in cfg.ssd.zones:
        cfg.ssd.zone_path(z).mkdir(parents=True, exist_ok=True)
    if "[actions]" in body:
        cfg.actions_dir.mkdir(parents=True, exist_ok=True)
    Store.open(cfg, init=True).close()
    return cfg


def write_doc_section(begin: str, end: str, lines: list[str], doc: Path | None = None) -> None:
    """docs/benchmarks.md's (or `doc`'s) section between the markers `begin` and `end` replaced
    by `lines` (which hold both markers); the first time, it goes before the section "Where
    hoardfs is behind" (or at the end of `doc`). A script's `--render`: the figures there are
    the script's, from its JSON, never typed."""
    doc = doc or REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    block = "\n".join(lines)
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    elif "\n## Where hoardfs is behind" in text:
        text = text.replace("\n## Where hoardfs is behind", "\n" + block + "\n\n## Where hoardfs is behind", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
    print(f"{doc.relative_to(REPO)}: section rewritten from the JSON")


def run_timed(main) -> None:
    """A benchmark's `__main__`: run it and say how long the whole run took."""
    t0 = time.monotonic()
    main()
    print(f"(benchmark took {time.monotonic() - t0:.0f} s)")


def replica_roots(store: Store, shas: list[str]) -> list[list[Path]]:
    """For each object, the roots of the disks holding a replica of its shard."""
    out = []
    for sha in shas:
        meta = store.index.get_shard(store.index.lookup(bytes.fromhex(sha)).shard_id)
        out.append([store.disks[uuid].root for uuid in meta.replicas])
    return out


def place_plain(files: list[Path], roots: list[list[Path]]) -> list[tuple[int, list[Path]]]:
    """Each file as a plain file `<root>/plain/<name>` on each of its roots (the store's own
    placement, from `replica_roots`), for per-file baselines. (size, copies)."""
    import shutil

    placed = []
    for path, where in zip(files, roots, strict=True):
        copies = []
        for root in where:
            dst = root / "plain" / path.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, dst)
            copies.append(dst)
        placed.append((path.stat().st_size, copies))
    os.sync()
    return placed


def fair_copies(speed: dict[str, float], placed: list[tuple[int, list[tuple[str, Path]]]]) -> list[Path]:
    """For each file (size, its copies as (disk label, path)), in the given order, the copy
    whose disk finishes its share first (greedy by bytes / the disk's read MiB/s): what a
    reader that knows every copy would choose, keeping every disk busy at every point of
    the order."""
    load = dict.fromkeys(speed, 0.0)
    out = []
    for size, copies in placed:
        label, best = min(copies, key=lambda c: (load[c[0]] + size) / speed[c[0]])
        load[label] += size
        out.append(best)
    return out


def balanced_per_disk(lab: Lab, placed: list[tuple[int, list[Path]]]) -> dict[str, list[Path]]:
    """Each file from the copy whose disk finishes its share first (`fair_copies`), in the
    given order: disk label → the files its reader takes (copies are `<mount>/plain/<name>`)."""
    speed = {label: d.profile.read_mbps for label, d in lab.disks.items()}  # a mount point's name is its label
    chosen = fair_copies(speed, [(size, [(c.parent.parent.name, c) for c in copies]) for size, copies in placed])
    per_disk: dict[str, list[Path]] = {}
    for best in chosen:
        per_disk.setdefault(best.parent.parent.name, []).append(best)
    return per_disk


def in_threads(fn, groups) -> None:
    """`fn(group)` for every group at the same time, one thread each (one reader per disk)."""
    import threading

    threads = [threading.Thread(target=fn, args=(g,)) for g in groups]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def allocated(*paths: Path) -> int:
    """Bytes the filesystem spends on the paths (`du --block-size=1`: 4 KiB blocks included)."""
    out = subprocess.run(["du", "-s", "--block-size=1", *map(str, paths)], capture_output=True, text=True, check=True)
    return sum(int(line.split()[0]) for line in out.stdout.splitlines())


# -- reading through mounts (hoard mount, mergerfs) and plain files ---------------------------------

@contextmanager
def hoard_mounted(cfg_path: Path, mnt: Path, repo: Path = REPO, stop_timeout: float = 30):
    """`hoard mount --foreground` at `mnt` while the block runs; yields its process (the
    daemon itself: its /proc/<pid>/status has the daemon's memory). Started from a throttled
    block, the daemon is in the lab's cgroup (children inherit it). `repo`: the checkout whose
    daemon runs (another commit's worktree, for before/after figures in one run). After the
    block the daemon gets SIGTERM; the seconds until it exits are left in `proc.stop_s`, and a
    daemon still running after `stop_timeout` seconds is killed and the run stopped, saying so."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "mount", "--foreground",
                             str(mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    _wait_mount(mnt, proc)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            raise SystemExit(f"hoard mount at {mnt} was still running {stop_timeout:.0f} s after SIGTERM: killed "
                             "(a benchmark's finding: time its exit with py-spy dump)") from None
        proc.stop_s = round(time.monotonic() - t0, 3)  # type: ignore[attr-defined]


@contextmanager
def mergerfs_mounted(branches: list[Path], mnt: Path, options: str = "ro"):
    """A mergerfs pool of `branches` at `mnt` (its defaults but `options`), in the foreground
    so that the process yielded is the daemon serving it."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["mergerfs", "-f", "-o", options, ":".join(str(b) for b in branches), str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_mount(mnt, proc)
    try:
        yield proc
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        proc.wait(30)


def _wait_mount(mnt: Path, proc) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount at {mnt} did not come up")
        time.sleep(0.005)  # (a start's time is known to 5 ms; 50 ms steps hid a quarter of a 0.2 s change)


def read_file(path: Path, bs: int = MiB) -> int:
    """Read a file whole, `bs` bytes per read(), no Python buffering; returns its size."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(bs):
            n += len(chunk)
    return n


def drop_page_cache() -> None:
    """Drop cached file data only (`echo 1`): inodes and directory entries stay."""
    subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=True)


def disk_reads_by_disk(lab: Lab) -> dict[str, int]:
    """Each lab disk's bytes read so far (sectors read × 512, /sys/block/<loop>/stat). (Not its
    io_ticks: the blkio throttle holds requests before the loop device, which counts them busy
    only once let through.)"""
    return {label: int((Path("/sys/block") / Path(d.device).name / "stat").read_text().split()[2]) * 512
            for label, d in lab.disks.items()}


def disk_reads(lab: Lab) -> int:
    """Bytes the lab's disks have read so far."""
    return sum(disk_reads_by_disk(lab).values())


def read_all(paths: list[Path], readers: int) -> int:
    """Read every file whole, `readers` threads at once, reader i taking items i, i+N, …
    (a DataLoader's workers over its index); returns the bytes read."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(readers) as pool:
        return sum(pool.map(lambda i: sum(read_file(p) for p in paths[i::readers]), range(readers)))


def names_warm_data_cold(lab: Lab, paths: list[Path], readers: int) -> tuple[int, float, int]:
    """Stat every path (a loader lists its dataset first), drop the page cache (`echo 1`:
    file data cold, inodes and dentries kept), read them all with `read_all`: (bytes,
    seconds, bytes the lab's disks read meanwhile)."""
    for p in paths:
        os.stat(p)
    drop_page_cache()
    before, t0 = disk_reads(lab), time.monotonic()
    got = read_all(paths, readers)
    return got, time.monotonic() - t0, disk_reads(lab) - before


# -- a hoard command as its own process: time, peak memory, its longest LMDB write transaction --------

#: the keys every `hoard` process appends to $HOARD_LMDB_TXN_LOG at exit (one JSON line), once the
#: write-transaction instrumentation is in the checkout; null here when no line appeared
TXN_KEYS = ("longest_write_txn_s", "longest_write_txn_site", "longest_write_txn_writes", "write_txns")


def txn_lines(log: Path, offset: int) -> tuple[dict, int]:
    """The transaction keys of the lines appended to `log` since byte `offset` (the line whose
    longest write transaction is the longest, `write_txns` summed over them), and the new offset.
    No line: every key None and `txn_note` saying why."""
    if not log.exists():
        return {**dict.fromkeys(TXN_KEYS), "txn_note": "not instrumented in this checkout"}, offset
    with open(log, "rb") as f:
        f.seek(offset)
        body = f.read()
    lines = [json.loads(ln) for ln in body.decode(errors="replace").splitlines() if ln.strip().startswith("{")]
    if not lines:
        return {**dict.fromkeys(TXN_KEYS), "txn_note": "not instrumented in this checkout"}, offset + len(body)
    top = max(lines, key=lambda d: d.get("longest_write_txn_s") or 0)
    got = {k: top.get(k) for k in TXN_KEYS}
    got["write_txns"] = sum(d.get("write_txns") or 0 for d in lines)
    got["txn_processes"] = len(lines)
    return got, offset + len(body)


def hoard_process(cfg_path: Path, argv: list[str], repo: Path = REPO, txn_log: Path | None = None,
                  ok: tuple[int, ...] = (0, 5), prog: list[str] | None = None) -> dict:
    """Run `python -m hoardfs --config CFG ARGV` (or `prog` + ARGV) from checkout `repo` as its own
    process: seconds, peak RSS (VmHWM, which counts the index pages the process mapped) and
    peak RssAnon (what it allocated), in KiB; its CPU seconds, the bytes it read from the disk
    (page-cache misses), the bytes it had written and its major faults (`peak_memory`); with
    `txn_log` the process gets HOARD_LMDB_TXN_LOG and the keys it appended there (`txn_lines`). An exit outside `ok`
    fails the benchmark (5: check found something — still a measurement)."""
    from tests.helpers import peak_memory

    env = dict(os.environ, PYTHONPATH=str(repo))
    offset = 0
    if txn_log is not None:
        env["HOARD_LMDB_TXN_LOG"] = str(txn_log)
        offset = txn_log.stat().st_size if txn_log.exists() else 0
    cmd = (prog or [sys.executable, "-m", "hoardfs", "--config", str(cfg_path)]) + argv
    got = peak_memory(cmd, env=env, cwd=repo, poll_s=0.05)
    if got["exit"] not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({got['exit']}): {got['stderr'][-2000:]}")
    out = {"seconds": round(got["seconds"], 3), "vmhwm_kb": got["vmhwm_kb"], "peak_anon_kb": got["peak_anon_kb"],
           "exit": got["exit"], "cpu_s": round(got["cpu_s"], 3), "read_bytes": got["read_bytes"],
           "write_bytes": got["write_bytes"], "majflt": got["majflt"]}
    if txn_log is not None:
        out.update(txn_lines(txn_log, offset)[0])
    return out


class PeakWatch:
    """The peak VmHWM and RssAnon of a running process (a daemon: the mount, the GUI), polled
    in a thread until `stop()`; KiB."""

    def __init__(self, pid: int, poll_s: float = 0.05) -> None:
        import threading

        self.pid, self.poll_s = pid, poll_s
        self.vmhwm_kb = self.peak_anon_kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                for row in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if row.startswith("VmHWM:"):
                        self.vmhwm_kb = max(self.vmhwm_kb, int(row.split()[1]))
                    elif row.startswith("RssAnon:"):
                        self.peak_anon_kb = max(self.peak_anon_kb, int(row.split()[1]))
            except (OSError, ValueError, IndexError):
                pass
            self._done.wait(self.poll_s)

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return {"vmhwm_kb": self.vmhwm_kb, "peak_anon_kb": self.peak_anon_kb}


# -- PostgreSQL of a benchmark's own ---------------------------------------------------------------

@contextmanager
def private_cluster(where: Path | None = None, keep: bool = False):
    """A PostgreSQL cluster of the bench's own, initdb'ed with the embedded default's settings
    under `where` (default a new folder in /var/tmp), removed afterwards; yields its URL and the
    cluster (to restart it: a cold query needs a fresh server and the page cache dropped).
    With `keep` it lives in `where`/kept-pg, is stopped, not removed, afterwards, and the next
    call with `keep` starts it again (a kept bench store is re-measured against its rows)."""
    import shutil
    import tempfile

    import psycopg

    from hoardfs.sql.cluster import PrivateCluster, ensure_database

    if keep:
        work = (where or Path("/var/tmp")) / "kept-pg"
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="hoard-bench-pg-", dir=where or "/var/tmp"))
    cluster = PrivateCluster(work / "pg", work / "pg" / "socket")
    cluster.start()
    try:
        url = psycopg.conninfo.make_conninfo(host=str(cluster.socket_dir.resolve()), user="hoard", dbname="bench")
        ensure_database(url)
        yield url, cluster
    finally:
        if keep:
            cluster.stop()
        else:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)


def bench_servers() -> tuple[str, str]:
    """The test PostgreSQL's and Redis's URLs (the environment's, else hoard.toml's), the test
    database made when missing (as the tests do)."""
    from hoardfs.sql.cluster import ensure_database  # deferred: only the benchmarks on the test servers need it

    db_url = os.environ.get("HOARD_TEST_DATABASE_URL") or config.load(REPO / "hoard.toml").test_database_url
    redis_url = os.environ.get("HOARD_TEST_REDIS_URL") or config.load(REPO / "hoard.toml").test_redis_url
    ensure_database(db_url)
    return db_url, redis_url


@contextmanager
def bench_schema(db_url: str):
    """A fresh schema in the database at `db_url`, migrated, dropped afterwards; yields the URL
    whose search_path is that schema (a benchmark's rows never meet the tests')."""
    import uuid

    import psycopg

    from hoardfs.sql.migrate import migrate  # deferred: only the benchmarks on the test servers need it

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            url = psycopg.conninfo.make_conninfo(db_url, options=f"-c search_path={schema}")
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
            yield url
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


# -- GUI pages in a browser ------------------------------------------------------------------------

#: every thumbnail inside the window has loaded (lazy ones below it are not asked for yet)
THUMBS_LOADED = """
const shown = [...document.querySelectorAll("img[src^='/thumb/']")].filter(i => {
    const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < window.innerHeight; });
return shown.length > 0 && shown.every(i => i.complete && i.naturalWidth > 0);"""


def visit_page(driver, base: str, path: str, expect: str, repeat: int, thumbs: bool = False) -> dict[str, float]:
    """Seconds from `driver.get` to `expect` on screen (polled every 20 ms): the first visit,
    then the median of `repeat` more; with `thumbs`, also until every thumbnail in the
    window has loaded."""
    import statistics

    from tests.gui_browser import wait_text

    content, loaded = [], []
    for _ in range(1 + repeat):
        t0 = time.monotonic()
        driver.get(f"{base}{path}")
        wait_text(driver, expect, timeout=60, poll=0.02)
        content.append(time.monotonic() - t0)
        if thumbs:
            deadline = time.monotonic() + 60
            while not driver.execute_script(THUMBS_LOADED):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the thumbnails of {path} did not load in 60 s")
                time.sleep(0.02)
            loaded.append(time.monotonic() - t0)
    out = {"first_s": round(content[0], 3), "again_s": round(statistics.median(content[1:]), 3)}
    if thumbs:
        out |= {"thumbs_first_s": round(loaded[0], 3), "thumbs_again_s": round(statistics.median(loaded[1:]), 3)}
    return out
