"""The team's real size: every command's time and peak memory on a store of 1 M and
10 M small objects, grown in one run, with a PostgreSQL of as many nodes beside it.

    python bench/scale.py [--sizes 1000000,10000000] [--work DIR] [--keep]
    python bench/scale.py --only NAMES --work DIR [--sizes N] [--repo CHECKOUT] [--label L]
    python bench/scale.py --render [bench/results/scale-<label>.json]

The store: objects of 0.5–4 KB of random bytes on two *directory* disks under `--work`
(this machine's disk, not the lab's loop devices: the figures are about how cost grows with
the store, not about disk speed), two copies each, built through the public write path
(`Store.put_bytes_many`) in batches of 20,000 like UA_1's: each batch's manifest stored and
registered as the ingest's package step does, and its write-intent applied (`hoardfs.sql.apply`, the
real path) to a PostgreSQL of the bench's own: a node per object (+ a virtual channel per 300),
two edges per node (a video under two channels, a frame under two videos, a crop under two
frames: 3-level ancestry) and a `split` label each, the batch's members and its seal. The
store grows to each size in turn; at each, the last batch is a real `hoard put` (timed) and the
last 100,000 objects' rows are one measured write-intent.

At each size every command of the issue runs as its own process, timed, its peak RSS (VmHWM:
the index pages it mapped count) and highest RssAnon (what it allocated) read from /proc: put
of the last batch, health --json, info, ls, replicate (nothing to do), verify --sample 1,
check, gc --dry-run, delete --batch (the last grown batch) and the gc that frees it, index
backup / rebuild / restore, select with 3-level ancestry (narrow: one channel's tree; broad:
every channel's, one label value — each cold, after a server restart and the page cache
dropped, then warm), a write-intent of 100,000 nodes, the mount (start, `find` over a view of
up to 1,000,000 entries, 10,000 by-hash lookups) and the GUI's storage and assets pages (in a
headless Chromium). Every process gets HOARD_LMDB_TXN_LOG; the longest LMDB write transaction
it reports at exit is kept with its figures (null while the checkout has no instrumentation).
`health --json`, `info` and the warm narrow select — about a second each, mostly a fixed
start — run five times; the run of the median time is kept, with every time in the order run
(`runs_s`; health's first reads every pointer changed since the last judgement, the others
what changed after it) and, for the select, the cluster's blocks per run. The cold narrow select
and the GUI pages' first visits run three times (RESTARTS), each from its own restart (the
cluster restarted and the page cache dropped; a new `hoard gui` and browser), the median kept.

Raw JSON: bench/results/scale-<label>.json; `--render` writes docs/benchmarks.md's section
from it, with the largest / smallest size's per-object ratio and each goal's verdict.

`--keep` keeps the store, its cluster (`DIR/kept-pg`, stopped) and what was built
(`DIR/built.json`). `--only NAMES --work DIR` then re-times some measurements on that store,
before / after a fix, on the same rows. NAMES, comma-separated: a measurement that leaves the
store as it found it by any start of its name (`info`, `ls`, `health`, `replicate`, `verify`,
`select`, `select narrow`, `mount`, `GUI`, `GUI assets`), one that changes it (check,
gc --dry-run, delete --batch, gc (one deleted batch), index backup / rebuild / restore,
`put (one batch)`: a batch of new objects with the page cache dropped first, `put (one batch;
index cached)` the same with the LMDB index read into it first, each deleted and collected after
it; `write-intent`: the
rows of the last 100,000 objects deleted and vacuumed first, so it is slower than a run's own
and compares only with another re-time) by its whole name. They are timed at the kept store's
size, or at each of `--sizes` (ascending, none below it), the store grown to each first in the
kept store's batches, the PostgreSQL rows grown with it when the cluster was kept (a DIR
without a store gets a new one). With the kept cluster the selects, the GUI pages and the
write-intent can be re-timed; without one (a store kept before the cluster was, or made by
`--only`) a new empty cluster serves the commands, and they are not. `--pg-set NAME=VALUE`
(repeatable): the cluster restarted with that setting for the run (a full run: its build and
every measurement, e.g. docs/sizing.md's settings for 10–100 M nodes; `--only`: the kept
cluster), reset after.
`--profile LABEL`: each process sampled by py-spy (100 a second, not stopped) into
bench/results/scale-profile-LABEL-<measurement>.collapsed — py-spy's times, not the table's.
Each size starts from a settled state (the cluster vacuumed and checkpointed, a sync, the load
below SETTLE_LOAD; `HOARD_SCALE_SETTLE_MAX_S` bounds the wait, 600 s). `--repo CHECKOUT`: the commands and the mount
are that checkout's (e.g. the old code: `git archive COMMIT | tar -x -C CHECKOUT`), the GUI
this one's. The store stays; the JSON is bench/results/scale-only-<label>.json (label default:
the sizes), which --render does not read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from _common import (
    REPO,
    RESULTS,
    PeakWatch,
    allocated,
    drop_caches,
    hoard_mounted,
    hoard_process,
    lab_config,
    private_cluster,
    read_all,
    stamp,
    txn_lines,
    visit_page,
    write_doc_section,
)

from hoardfs.base import config
from hoardfs.fsd.outputs import members
from hoardfs.fsd.outputs.manifest import batch_manifest, naming_lock
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.intents import virtual_sha256
from hoardfs.sql.migrate import migrate

_HEX = re.compile(r"[0-9a-f]{16,}")
#: what a profiled process's figures leave out (they are py-spy's process's)
PROFILED_OUT = ("vmhwm_kb", "peak_anon_kb", "cpu_s", "read_bytes", "write_bytes", "majflt")
BATCH = 20_000          # objects per batch (UA_1's batch; a quarter of the smallest size when that is less)
INTENT_NODES = 100_000  # the measured write-intent
VIEW_MAX = 10_000_000   # the view the mount's `find` walks: every live object, at most this many
LOOKUPS = 10_000        # by-hash lookups through the mount
PER_CHANNEL = 300       # objects per virtual channel
SOURCE = "scale"
T0 = "2026-01-01T00:00:00+00:00"

#: command → (argv, exits that are a measurement, work: "object" = grows with the store by design
#: (goal: per-object cost within 1.25×), "fixed" = does not (goal: absolute time within 1.25×))
COMMANDS: dict[str, tuple[list[str], tuple[int, ...], str]] = {
    "health --json": (["health", "--json"], (0, 4), "fixed"),
    "info": (["info", "{sha}"], (0,), "fixed"),
    "ls": (["ls"], (0,), "object"),
    "replicate (nothing to do)": (["replicate"], (0,), "object"),
    "verify --sample 1": (["verify", "--sample", "1"], (0,), "object"),
    "check": (["check"], (0, 5), "object"),
    "gc --dry-run": (["gc", "--dry-run"], (0,), "object"),
    "delete --batch": (["delete", "--batch", "{batch}", "--yes"], (0,), "fixed"),
    "gc (one deleted batch)": (["gc"], (0,), "fixed"),
    "index backup": (["index", "backup"], (0,), "object"),
    "index rebuild": (["index", "rebuild"], (0,), "object"),
    "index restore": (["index", "restore"], (0,), "object"),
}
#: the commands of about a second, mostly a fixed start, timed REPEAT times (the median kept):
#: one run each swung by a third with a moment's load (select narrow, warm: 0.71 s at 1 M and
#: 1.06 s at 10 M in the settled run, while py-spy of each found no more work at 10 M)
REPEATED, REPEAT = ("health --json", "info"), 5
#: the measurements that start from a restart (the narrow select cold: the cluster restarted and
#: the page cache dropped; the GUI's pages: a new `hoard gui` process and browser) and end in
#: well under a minute, timed RESTARTS times, the median kept: one such run was the single
#: sample the 10 M verdict hung on (the storage page's first visit 0.39 -> 0.56 s, later
#: visits 0.91x)
RESTARTS = 3
#: the commands that read the disks (every shard's footer, the marks logs) and the whole index:
#: each starts with the page cache dropped, at every size (a 1 M store fits this machine's page
#: cache after its build, a 10 M one does not: warm at one size and cold at the other, the ratio
#: would compare two media)
COLD = ("check", "index rebuild", "index restore")
#: before each size's measurements: the load (1 min) waited for, and for at most how long
SETTLE_LOAD, SETTLE_MAX_S = 0.5, float(os.environ.get("HOARD_SCALE_SETTLE_MAX_S", 600))
#: the goals at 10 M objects: each command's cost per object within 1.25× of its cost at 1 M, peak
#: RSS ≤ 2 GB, no LMDB write transaction over 1 s, an index ≤ 200 B per object, `health` and the
#: GUI storage page ≤ 2 s
#: (2 GB as the goal writes it: 10^9 bytes, in the KiB /proc reports)
GOAL_RATIO, GOAL_RSS_KB, GOAL_TXN_S, GOAL_INDEX_B, GOAL_HEALTH_S = 1.25, 2e9 / 1024, 1.0, 200, 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help="comma-separated object counts, ascending (default 1000000,10000000; "
                                    "with --only the kept store's size)")
    ap.add_argument("--work", type=Path, help="where the store and the cluster go (default: a new folder in /var/tmp)")
    ap.add_argument("--label", help="the results file's label (default: the sizes, e.g. 1m-10m)")
    ap.add_argument("--batch", type=int, help=f"objects per batch (default {BATCH:,} or a quarter of the smallest size; "
                                              "with --only the kept store's)")
    ap.add_argument("--keep", action="store_true", help="keep the store, its cluster (DIR/kept-pg) and built.json")
    ap.add_argument("--render", nargs="?", const="newest", help="write docs/benchmarks.md's section from a JSON")
    ap.add_argument("--against", type=Path, help="with --render: another run's JSON whose smallest size is the "
                                                 "rendered run's (e.g. a one-size run made on a quieter machine): "
                                                 "its ratios are shown too, and each goal judged by the higher")
    ap.add_argument("--note", help="with --render: what shared the machine during the run (one sentence)")
    ap.add_argument("--only", help="re-time these measurements (comma-separated) on the store kept in --work: "
                                   f"by any start of the name {', '.join(READ_ONLY)}; by the whole name "
                                   f"{', '.join(k for k in COMMANDS if not k.startswith(READ_ONLY))}")
    ap.add_argument("--repo", type=Path, help="with --only: time the commands and the mount of this checkout (e.g. "
                                              "the old code: `git archive main | tar -x -C DIR`; the GUI is this one's)")
    ap.add_argument("--profile", metavar="LABEL", help="with --only: each measured process (the mount: during `find` "
                                       "and the lookups) sampled by py-spy into bench/results/scale-profile-LABEL-"
                                       "<what>.collapsed (its times are py-spy's, not the table's)")
    ap.add_argument("--pg-set", action="append", metavar="NAME=VALUE", default=[],
                    help="a PostgreSQL setting for this run (ALTER SYSTEM, the cluster restarted; reset afterwards), "
                         "e.g. shared_buffers=4GB; repeatable. A full run: for its build and measurements; with "
                         "--only: on the kept cluster")
    ap.add_argument("--apply-intent", type=Path, help=argparse.SUPPRESS)  # (the measured write-intent's process)
    ap.add_argument("--database-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.apply_intent:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            apply_write_intent(conn, json.loads(args.apply_intent.read_bytes()))
        return
    if args.render:
        render(Path(args.render).resolve() if args.render != "newest" else newest_results(),
               args.against.resolve() if args.against else None, args.note)
        return
    sizes = [int(s) for s in (args.sizes or "1000000,10000000").split(",")]
    if args.only:
        only = [o.strip() for o in args.only.split(",") if o.strip()]
        unknown = [o for o in only if not any(wanted(k, [o]) for k in RETIMED)]
        if unknown or not only or not args.work:
            raise SystemExit(f"--only {args.only}: " + (
                "needs --work DIR (the store a run with --keep left there)" if not unknown and only else
                f"{', '.join(unknown) or 'nothing'} not a measurement; any start of {', '.join(READ_ONLY)}, or "
                f"the whole name of {', '.join(k for k in COMMANDS if not k.startswith(READ_ONLY))}"))
        run_only(sizes if args.sizes else None, args.label, args.work, args.batch, only,
                 (args.repo or REPO).resolve(), args.profile, dict(_setting(x) for x in args.pg_set))
        return
    if args.repo or args.profile:
        raise SystemExit("--repo, --profile: only with --only (a full run times this checkout)")
    label = args.label or "-".join(_short(n) for n in sizes)
    batch = args.batch or min(BATCH, sizes[0] // 4)
    if batch < 5000 or INTENT_NODES % batch or any(n % batch for n in sizes):
        raise SystemExit(f"--batch {batch}: at least 5,000, dividing {INTENT_NODES:,} and every size")
    run(sizes, label, args.work, args.keep, batch, dict(_setting(x) for x in args.pg_set))


def _setting(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not all(part.replace("_", "").isalnum() for part in name.split(".")) or not value:
        raise SystemExit(f"--pg-set {text}: NAME=VALUE, e.g. shared_buffers=4GB")
    return name, value


@contextmanager
def pg_settings(r: Run, settings: dict[str, str]):
    """The kept cluster with `settings` (ALTER SYSTEM, restarted) while the block runs; reset
    after it, so the kept cluster stays as the run left it."""
    from psycopg import sql

    def alter(reset: bool) -> None:
        with psycopg.connect(r.url, autocommit=True) as conn:
            for name, value in settings.items():
                ident = sql.Identifier(*name.split("."))  # (a module's: auto_explain.log_min_duration)
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(ident) if reset else
                             sql.SQL("ALTER SYSTEM SET {} = {}").format(ident, sql.Literal(value)))
        r.cluster.stop()
        r.cluster.start()

    if not settings:
        yield
        return
    alter(reset=False)
    try:
        yield
    finally:
        alter(reset=True)


def _pretty(n: int) -> str:
    return f"{n // 1_000_000} M" if n % 1_000_000 == 0 else f"{n // 1000} k" if n % 1000 == 0 else f"{n:,}"


def _short(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def full_run(doc: dict) -> bool:
    """Whether a results JSON is a full run's of two sizes or more (what --render compares), not
    an `--only` run's or a one-size run's."""
    return (doc.get("benchmark") == "scale" and "only" not in doc and "partial" not in doc
            and len(doc.get("sizes", [])) > 1)


def newest_results() -> Path:
    got = sorted((p for p in RESULTS.glob("scale-*.json") if full_run(json.loads(p.read_text()))),
                 key=lambda p: p.stat().st_mtime)
    if not got:
        raise SystemExit("no bench/results/scale-*.json yet: run `python bench/scale.py` first")
    return got[-1]


# -- the estimate printed first ------------------------------------------------------------------

def estimate_s(sizes: list[int], doc: dict | None = None) -> tuple[float, str]:
    """Seconds the run will take, from `doc` (default the newest results) at its largest size
    (build seconds per object grown; each command's per-object or fixed time), else from coarse
    defaults."""
    try:
        doc = doc or json.loads(newest_results().read_text())
    except (SystemExit, OSError, ValueError):
        return sum(n * 1e-3 + 120 for n in sizes), "coarse default (1 ms per object + 2 min per size)"
    top = doc["sizes"][-1]
    build = top["build_s"] / max(1, top["grown"])
    obj = sum(c["seconds"] for c in top["commands"].values() if c.get("work") == "object") / top["objects"]
    fixed = sum(c["seconds"] for c in top["commands"].values() if c.get("work") != "object") + top["setup_s"]
    total, have = 0.0, 0
    for n in sizes:
        total += (n - have) * build + n * obj + fixed
        have = n
    return total, f"from the rates at {top['objects']:,} objects"


# -- building ------------------------------------------------------------------------------------

class Built:
    """What the bench built: the in-process objects' sha256s in order (`shas.bin`, 32 bytes
    each: 10 M of them stay out of this process's memory), its batches, the deleted ones."""

    def __init__(self, work: Path, batch: int) -> None:
        self.batch = batch
        self.path = work / "shas.bin"
        self.path.touch()
        self.count = 0
        self.batches: list[tuple[str, int, int]] = []  # (batch id, first object, objects)
        self.deleted: set[str] = set()
        self.db_upto = 0  # objects whose rows are in PostgreSQL
        self.size = 0  # the store's size as measured: the last size, and the objects grown since

    def append(self, shas: list[bytes]) -> None:
        with open(self.path, "ab") as f:
            f.write(b"".join(shas))
        self.count += len(shas)
        self.size += len(shas)

    def read(self, first: int, n: int) -> list[bytes]:
        with open(self.path, "rb") as f:
            f.seek(first * 32)
            body = f.read(n * 32)
        return [body[i:i + 32] for i in range(0, len(body), 32)]

    STATE = ("batch", "count", "batches", "deleted", "db_upto", "size")

    def save(self) -> None:
        """What was built, beside the store (built.json), for `--only` to find its way in it."""
        state = {k: getattr(self, k) for k in self.STATE} | {"deleted": sorted(self.deleted)}
        (self.path.parent / "built.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, work: Path, batch: int | None) -> Built:
        """The store kept in `work` (a new, empty one when it has none, in batches of `batch`)."""
        kept = work / "built.json"
        if not kept.exists():
            if (work / "shas.bin").exists() and (work / "shas.bin").stat().st_size:
                raise SystemExit(f"{work} holds a store without built.json (not kept by --keep): use another --work")
            return cls(work, batch or BATCH)
        state = json.loads(kept.read_text())
        if batch and batch != state["batch"]:
            raise SystemExit(f"--batch {batch}: the store kept in {work} was built in batches of {state['batch']:,}")
        built = cls(work, state["batch"])
        built.count, built.db_upto = state["count"], state["db_upto"]
        built.batches = [tuple(b) for b in state["batches"]]  # type: ignore[misc]
        built.deleted = set(state["deleted"])
        built.size = state.get("size", built.count + built.batch)  # (a full run's last batch is a `hoard put`)
        if built.path.stat().st_size != 32 * built.count:
            raise SystemExit(f"{work}: shas.bin holds {built.path.stat().st_size // 32:,} objects, built.json "
                             f"{built.count:,} (a run stopped between the two): use another --work")
        return built

    def live(self, limit: int) -> list[bytes]:
        """The first `limit` objects of batches not deleted."""
        out: list[bytes] = []
        for bid, first, n in self.batches:
            if bid not in self.deleted:
                out += self.read(first, min(n, limit - len(out)))
            if len(out) >= limit:
                break
        return out


def payloads(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(512, 4096)) for _ in range(n)]


def store_batch(store: Store, built: Built, batch_id: str) -> None:
    """One batch of objects stored (a group commit per 5,000), its manifest stored and registered."""
    stored: dict[str, tuple[str, int]] = {}
    shas: list[bytes] = []
    for part in range(0, built.batch, 5000):
        for r in store.put_bytes_many(payloads(built.count + part, min(5000, built.batch - part))):
            stored[f"{len(stored):05d}.bin"] = (r.sha256, r.size)
            shas.append(bytes.fromhex(r.sha256))
    body = batch_manifest(batch_id, SOURCE, T0, stored, dict.fromkeys(stored, 0), [], [])
    put = store.put_bytes(body)
    with naming_lock(store):
        store.register_batch(batch_id, {"source": SOURCE, "manifest": put.sha256, "files": len(stored),
                                        "bytes": sum(s for _, s in stored.values()), "sealed": T0},
                             holds=shas + [bytes.fromhex(put.sha256)])  # (as the ingest's package step does)
    members.remember(store, put.sha256, shas)  # (as the ingest's package step does)
    built.batches.append((batch_id, built.count, len(shas)))
    built.append(shas)


def _channel(c: int) -> str:
    return virtual_sha256("channel", SOURCE, str(c))


def intent_for(built: Built, first: int, n: int, key: str) -> dict:
    """The rows of objects first..first+n: a node each (level g % 3: video, frame, crop), two
    edges each to the level above (two channels, two videos, two frames), a `split` label each,
    and the batches they belong to."""
    shas = [s.hex() for s in built.read(max(0, first - 4), n + min(first, 4))]
    off = min(first, 4)
    nodes, edges, labels, chans = [], [], [], set()
    for i in range(n):
        g, h = first + i, shas[off + i]
        nodes.append({"sha256": h, "physical": {"size": 0, "file_type": "bin"}})
        labels.append({"node": h, "key": "split", "value": "val" if g % 10 == 0 else "test" if g % 10 == 1
                       else "train", "origin": "bench"})
        level = g % 3
        if level == 0:
            c = g // PER_CHANNEL
            chans |= {c, c + 1}
            parents = [(_channel(c), "channel_of"), (_channel(c + 1), "channel_of")]
        else:
            rel = ("frame_of", "crop_of")[level - 1]
            parents = [(shas[off + i - back], rel) for back in (1, 4) if g - back >= 0 and i + off - back >= 0]
        edges += [{"parent": p, "child": h, "relationship": rel} for p, rel in parents]
    nodes += [{"sha256": _channel(c), "virtual": {"kind": "channel", "source": SOURCE, "stable_id": str(c)}}
              for c in sorted(chans)]
    batches = [{"batch_id": bid, "source": SOURCE, "seal": True,
                "members": [s.hex() for s in built.read(max(b0, first), min(b0 + bn, first + n) - max(b0, first))]}
               for bid, b0, bn in built.batches if b0 < first + n and b0 + bn > first]
    return {"key": key, "sources": [SOURCE], "relationships": [{"name": "frame_of"}, {"name": "crop_of"}],
            "nodes": nodes, "edges": edges, "labels": labels, "batches": batches}


def grow(cfg_path: Path, url: str, built: Built, upto: int, db_upto: int) -> dict:
    """Store batches until `upto` objects are built; rows in PostgreSQL up to `db_upto`, one
    write-intent per batch. Seconds spent in each."""
    t = {"store_s": 0.0, "database_s": 0.0}
    with Store.open(config.load(cfg_path)) as store, psycopg.connect(url, autocommit=True) as conn:
        while built.count < upto:
            t0 = time.monotonic()
            store_batch(store, built, f"scale-{len(built.batches):05d}")
            t1 = time.monotonic()
            t["store_s"] += t1 - t0
            while built.db_upto + built.batch <= min(db_upto, built.count):
                apply_write_intent(conn, intent_for(built, built.db_upto, built.batch, f"scale-rows-{built.db_upto}"))
                built.db_upto += built.batch
            t["database_s"] += time.monotonic() - t1
    return t


# -- measuring -----------------------------------------------------------------------------------

class Run:
    """One run's store, cluster and figures."""

    def __init__(self, work: Path, cfg_path: Path, url: str, cluster, repo: Path = REPO,
                 profile: str | None = None) -> None:
        self.work, self.cfg_path, self.url, self.cluster, self.repo = work, cfg_path, url, cluster, repo
        self.profile = profile  # (a label: each process sampled by py-spy into bench/results/)
        self._profiled: dict[str, int] = {}
        self.txn_log = work / "lmdb-txn.jsonl"
        os.environ["HOARD_LMDB_TXN_LOG"] = str(self.txn_log)  # every child (mount, GUI too) inherits it
        self.cfg = config.load(cfg_path)

    def command(self, argv: list[str], ok: tuple[int, ...] = (0,), objects: int = 1, prog: list[str] | None = None,
                repeat: int = 1) -> dict:
        """One process's figures; with `repeat` (a command of about a second, whose time is mostly
        a fixed start: a moment's load on this 2-core VM swings it by a third) the run of the
        median time of `repeat`, every time kept (`runs_s`)."""
        if repeat > 1:  # (`runs_s` in the order run: the first may do what the others find done)
            return _median_run([self.command(argv, ok, objects, prog) for _ in range(repeat)])
        if self.profile:  # (py-spy's process is the one timed: a profile's figures are not the table's)
            out = self.profile_path(" ".join(a for a in argv if not a.startswith("/") and not _HEX.fullmatch(a))
                                    or "write-intent")
            prog = [*_py_spy(out), "--", *(prog or [sys.executable, "-m", "hoardfs", "--config", str(self.cfg_path)])]
        got = hoard_process(self.cfg_path, argv, repo=self.repo, txn_log=self.txn_log, ok=ok, prog=prog)
        if self.profile:  # (the memory and rusage measured are py-spy's own: not kept)
            got = {k: v for k, v in got.items() if k not in PROFILED_OUT} | {"profile": str(out.relative_to(REPO))}
        got["per_object_s"] = got["seconds"] / objects
        mem = ("  (profiled)" if self.profile else f"  VmHWM {got['vmhwm_kb'] / 1024:7.0f} MB  RssAnon "
               f"{got['peak_anon_kb'] / 1024:7.0f} MB")
        print(f"    {' '.join(argv or ['write-intent'])[:60]:<60} {got['seconds']:8.2f} s{mem}  txn "
              f"{got['longest_write_txn_s']}", flush=True)
        return got

    def profile_path(self, what: str) -> Path:
        """Where a profile of `what` goes: its words, numbered from the second of this run on
        (a cold and a warm select are two profiles)."""
        slug = "-".join("".join(c if c.isalnum() else " " for c in what).split())
        self._profiled[slug] = n = self._profiled.get(slug, 0) + 1
        return RESULTS / f"scale-profile-{self.profile}-{slug}{'' if n == 1 else f'-{n}'}.collapsed"

    def index_bytes(self) -> int:
        return allocated(self.cfg.index_dir)

    def pg_blocks(self, since: dict | None = None) -> dict:
        """The cluster's block reads (`pg_blocks_read`: not in shared buffers, from the page
        cache or the disk), hits (`pg_blocks_hit`) and milliseconds waited on the reads
        (`pg_read_ms`: 0 unless `--pg-set track_io_timing=on`) in this database so far; with
        `since`, the difference (what the process between the two calls cost the server)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            read, hit, ms = conn.execute("SELECT blks_read, blks_hit, blk_read_time FROM pg_stat_database "
                                         "WHERE datname = current_database()").fetchone()
        now = {"pg_blocks_read": int(read), "pg_blocks_hit": int(hit), "pg_read_ms": float(ms)}
        return now if since is None else {k: round(now[k] - since[k], 1) for k in now}

    def database_bytes(self) -> dict:
        with psycopg.connect(self.url, autocommit=True) as conn:
            db = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            wal = conn.execute("SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()").fetchone()[0]
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("node", "edge", "label", "batch_member")}
        return {"database_bytes": db, "wal_bytes": int(wal), "rows": counts}


def settle(r: Run) -> dict:
    """Before a size's measurements: the cluster vacuumed and checkpointed (autovacuum and the
    checkpointer would otherwise work off the build during them), the build's dirty pages
    written back, then the load (1 min) let fall below SETTLE_LOAD (at most SETTLE_MAX_S): each
    size is measured from the same quiet state, not right behind its build."""
    t0 = time.monotonic()
    with psycopg.connect(r.url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    os.sync()
    while os.getloadavg()[0] > SETTLE_LOAD and time.monotonic() - t0 < SETTLE_MAX_S:
        time.sleep(5)
    got = {"settle_s": round(time.monotonic() - t0, 1), "load_at_measure": round(os.getloadavg()[0], 2)}
    print(f"  settled in {got['settle_s']:.0f} s (vacuum, checkpoint, sync; load {got['load_at_measure']})",
          flush=True)
    return got


def disk_rate(disks: list[Path], limit: int = 4 << 30) -> dict:
    """The disks' cold sequential rate, measured beside `check` (which reads each shard's footer,
    not its bytes: what it reads is in its `read_bytes`): the largest shard files read once (one
    stream, 8 MiB reads) after the page cache was dropped, up to `limit` bytes; MiB/s."""
    files = sorted((p for d in disks for p in Path(d).rglob("*.shard") if p.is_file()),
                   key=lambda p: -p.stat().st_size)
    drop_caches()
    done, t0 = 0, time.monotonic()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            while done < limit and (got := os.read(fd, 8 << 20)):
                done += len(got)
        finally:
            os.close(fd)
        if done >= limit:
            break
    secs = time.monotonic() - t0
    mib_s = done / secs / 2**20 if secs else 0.0
    print(f"    disk: {done / 2**30:.1f} GiB of shards read cold in {secs:.1f} s ({mib_s:.0f} MiB/s, one stream)",
          flush=True)
    return {"disk_read_bytes": done, "disk_read_mib_s": round(mib_s, 1)}


def put_again(r: Run, built: Built, n: int, index: str = "cold") -> dict:
    """`--only put (one batch)` (`index` "cold") and `put (one batch; index cached)` ("cached"):
    a `hoard put` of one batch of new objects (another seed than any built), timed; then deleted
    and collected, untimed, so the store is as it was."""
    settle(r)
    name = f"again-{n}-{time.time_ns()}"
    got, _ = timed_put(r, built, n, 10**13 + time.time_ns() % 10**9, name, index)
    hoard_process(r.cfg_path, ["delete", "--put", name, "--yes"], repo=r.repo, ok=(0,))
    hoard_process(r.cfg_path, ["gc"], repo=r.repo, ok=(0,))
    return got


def intent_again(r: Run, built: Built, n: int) -> dict:
    """`--only write-intent`: the rows of the last INTENT_NODES objects before the batches
    deleted last (their nodes, with their edges, labels and memberships, and their batches)
    deleted, the cluster vacuumed and settled, then the same write-intent as the run's (the same
    shape: INTENT_NODES nodes of whole batches) timed, under a new key."""
    end = built.count  # (the batches deleted last are left out: their objects are gone, and so must their rows stay)
    for bid, b0, bn in reversed(built.batches):
        if bid not in built.deleted or b0 + bn != end:
            break
        end = b0
    first = max([0, end - INTENT_NODES] + [b0 + bn for bid, b0, bn in built.batches
                                           if bid in built.deleted and b0 + bn <= end])  # (fewer, in a small store)
    intent = intent_for(built, first, end - first, f"scale-again-{n}-{time.time_ns()}")
    with psycopg.connect(r.url, autocommit=True) as conn:
        conn.execute("DELETE FROM action_batch WHERE batch_id = ANY(%s)", ([b["batch_id"] for b in intent["batches"]],))
        conn.execute("DELETE FROM node WHERE sha256 = ANY(%s)", ([bytes.fromhex(x["sha256"]) for x in intent["nodes"]
                                                                 if "physical" in x],))
    settle(r)
    return timed_intent(r, intent, end - first, n)[0]


#: the two states of the page cache a put is timed in: nothing cached (the index's pages read
#: from the disk as the put's B-tree descent needs them: more distinct pages at a larger size),
#: and the whole LMDB index cached (a server with RAM for it, an ingest that runs all day)
PUT_STATES = {"cold": "put (one batch)", "cached": "put (one batch; index cached)"}


def batch_to_put(put_dir: Path, index_dir: Path, seed: int, n: int, index: str) -> None:
    """`n` new files of payloads of `seed` in `put_dir` (made anew), in the page-cache state
    PUT_STATES names: the cache dropped first, the files written and synced (cached, as a batch
    just scraped would be); `index` "cached" then reads the whole LMDB index at `index_dir`."""
    drop_caches()
    shutil.rmtree(put_dir, ignore_errors=True)
    put_dir.mkdir()
    for i, data in enumerate(payloads(seed, n)):
        (put_dir / f"{i:05d}.bin").write_bytes(data)
    if index == "cached":
        read_all([p for p in index_dir.rglob("*") if p.is_file()], 1)
    os.sync()


def timed_put(r: Run, built: Built, n: int, seed: int, name: str, index: str = "cold") -> tuple[dict, float]:
    """`hoard put --name NAME` of one batch of new files (payloads of `seed`), timed; and the
    seconds spent writing those files first (setup, untimed). The page cache is dropped first,
    then the files written and synced (they are cached, as a batch just scraped would be);
    `index` "cached" then reads the whole LMDB index once (PUT_STATES): the same state at every
    size, whatever the process before left cached."""
    t0 = time.monotonic()
    put_dir = r.work / f"put-{name}"
    batch_to_put(put_dir, Path(r.cfg.index_dir), seed, built.batch, index)
    setup = time.monotonic() - t0
    got = r.command(["put", "--name", name, str(put_dir)], objects=n)
    shutil.rmtree(put_dir)
    return got | {"work": "fixed", "files_per_s": built.batch / got["seconds"], "index": index}, setup


def timed_intent(r: Run, intent: dict, nodes: int, n: int) -> tuple[dict, float]:
    """`intent` (of `nodes` objects' rows) applied by a process of its own (`--apply-intent`),
    timed with the cluster's block reads around it; and the seconds spent writing it out first."""
    t0 = time.monotonic()
    path = r.work / "intent.json"
    path.write_text(json.dumps(intent))
    setup = time.monotonic() - t0
    blocks = r.pg_blocks()
    got = r.command([], objects=n, prog=[sys.executable, str(Path(__file__).resolve()), "--apply-intent", str(path),
                                         "--database-url", r.url])
    path.unlink()
    return got | {"work": "fixed", "nodes": nodes, **r.pg_blocks(since=blocks)}, setup


def measure_size(r: Run, built: Built, n: int) -> dict:
    """Every measurement at `n` objects (the store already holds all but the last batch)."""
    cmds: dict[str, dict] = {}
    settled = settle(r)
    cmds[PUT_STATES["cached"]] = put_again(r, built, n, "cached")  # (first: deleted and collected after it)
    cmds[PUT_STATES["cold"]], setup = timed_put(r, built, n, 10**12 + n, f"last-{n}")
    t_setup = time.monotonic()
    pending = built.count - built.db_upto
    intent = intent_for(built, built.db_upto, pending, f"scale-measured-{n}")
    setup += time.monotonic() - t_setup
    cmds["write-intent"], wrote = timed_intent(r, intent, pending, n)
    setup += wrote
    built.db_upto = built.count

    index_as_grown = r.index_bytes()
    got, index_rebuilt = time_commands(r, built, n)
    cmds |= got
    t_setup = time.monotonic()
    cmds |= selects(r, n)
    setup += time.monotonic() - t_setup
    t_setup = time.monotonic()
    view = define_view(r, built)
    setup += time.monotonic() - t_setup
    cmds |= mount(r, view, n)
    pages, failed = gui(r, n)
    cmds |= pages
    return {"objects": n, "commands": cmds, "failed": failed, "setup_s": round(setup, 1), "view_entries": len(view),
            **settled,
            "index_bytes_as_grown": index_as_grown, "index_bytes_rebuilt": index_rebuilt,
            "index_b_per_object_as_grown": index_as_grown / n, "index_b_per_object_rebuilt": index_rebuilt / n,
            "store_bytes": allocated(*(d.path for d in r.cfg.disks)), **r.database_bytes()}


#: the measurements that leave the store as they found it (`--only` takes any start of their names)
READ_ONLY = ("health --json", "info", "ls", "replicate (nothing to do)", "verify --sample 1", "select", "mount",
             "GUI")


def wanted(name: str, only: list[str] | None) -> bool:
    """Whether `--only` (None: a full run) names measurement `name`: a read-only one by any start
    of its name, one that changes the store by its whole name."""
    return only is None or name in only or (name.startswith(READ_ONLY) and any(name.startswith(o) for o in only))


def time_commands(r: Run, built: Built, n: int, only: list[str] | None = None) -> tuple[dict[str, dict], int | None]:
    """COMMANDS (those `only` names) in their order, each its own process: `info` of the first
    object built, `delete --batch` of the last batch not deleted, what the gc after it freed;
    and the index's bytes after `index rebuild` (None if it did not run)."""
    cmds: dict[str, dict] = {}
    victim = [bid for bid, _, _ in built.batches if bid not in built.deleted][-1]
    sample = built.read(built.batches[0][1], 1)[0].hex()
    disks = [d.path for d in r.cfg.disks]
    before_delete = index_rebuilt = None
    for name, (argv, ok, work) in COMMANDS.items():
        if not wanted(name, only):
            continue
        argv = [a.format(sha=sample, batch=victim) for a in argv]
        if name == "delete --batch":
            before_delete = allocated(*disks)
        bound = disk_rate(disks) if name == "check" else {}
        if name in COLD:
            drop_caches()
        cmds[name] = r.command(argv, ok=ok, objects=n, repeat=REPEAT if name in REPEATED else 1) | {
            "work": work, **bound} | (
            {"cold": True} if name in COLD else {})
        if name == "delete --batch":
            built.deleted.add(victim)
        if name == "gc (one deleted batch)" and before_delete is not None:  # what it freed: the batch's bytes, twice
            cmds[name]["freed_bytes"] = before_delete - allocated(*disks)
        if name == "index rebuild":
            index_rebuilt = r.index_bytes()
        for old in r.cfg.ssd.root.glob("index.old-*"):  # (each rebuild keeps the old index)
            shutil.rmtree(old)
    return cmds, index_rebuilt


def define_view(r: Run, built: Built) -> list[bytes]:
    """View `scale`: the objects of the batches not deleted, at most VIEW_MAX (what the mount's
    `find` walks: at 10 M a view of 10 M entries, less the deleted batch); those objects. Then
    a gc: a view redefined (every size after the first) leaves its old manifest tombstoned until one, and while any object awaits collection the
    mount checks every file it shows against the deleted list (docs/benchmarks.md) — each size's `find` starts with
    nothing pending."""
    view = built.live(VIEW_MAX)
    with Store.open(r.cfg) as store:
        define_view_rows(store, "scale", ((f"d{i // 1000:04d}/f{i:07d}.bin", s.hex()) for i, s in enumerate(view)))
    hoard_process(r.cfg_path, ["gc"], repo=r.repo, ok=(0,))
    return view


def selects(r: Run, n: int, only: list[str] | None = None) -> dict:
    """`hoard select` with 3-level ancestry (those `only` names), each cold (server restarted,
    page cache dropped) then warm."""
    sels = {"narrow": {"has_ancestor": [{"sha256": _channel(7), "max_depth": 3}]},
            "broad": {"has_ancestor": [{"kind": "channel", "source": SOURCE, "max_depth": 3}],
                      "labels": [{"key": "split", "value": "val"}]}}
    sels = {k: v for k, v in sels.items() if any(wanted(f"select {k} ({t})", only) for t in ("cold", "warm"))}
    out: dict[str, dict] = {}
    if sels:
        with psycopg.connect(r.url, autocommit=True) as conn:
            conn.execute("ANALYZE")
    for name, sel in sels.items():
        path = r.work / f"select-{name}.json"
        path.write_text(json.dumps(sel))
        work = {"work": "object" if name == "broad" else "fixed"}
        colds = []  # (each from a restart: the cluster stopped, the page cache dropped)
        for _ in range(RESTARTS if name == "narrow" else 1):
            r.cluster.stop()
            drop_caches()
            r.cluster.start()
            blocks = r.pg_blocks()
            colds.append(r.command(["select", "--file", str(path)], objects=n) | r.pg_blocks(since=blocks))
        out[f"select {name} (cold)"] = _median_run(colds) | work
        again = REPEAT if name == "narrow" else 1
        blocks = r.pg_blocks()
        got = r.command(["select", "--file", str(path)], objects=n, repeat=again)
        read = r.pg_blocks(since=blocks)  # (per run: the repeated one's blocks are divided among its runs)
        out[f"select {name} (warm)"] = got | work | {k: round(v / again) for k, v in read.items()}
    return out


def _median_run(runs: list[dict], key: str = "seconds") -> dict:
    """Of runs timed alike, the run of the median `key`, with every run's `key` in the order run
    (`runs_s`) and, where the runs counted the cluster's block reads, theirs (`pg_blocks_read_runs`,
    `pg_read_ms_runs`)."""
    got = sorted(runs, key=lambda g: g[key])[len(runs) // 2]
    if len(runs) == 1:
        return got
    more = {f"{k}_runs": [g[k] for g in runs] for k in ("pg_blocks_read", "pg_read_ms") if k in got}
    return got | {"runs_s": [g[key] for g in runs]} | more


def mount(r: Run, view: list[bytes], n: int) -> dict:
    """`hoard mount`: seconds until mounted (the median of three starts), `find` over the view,
    10,000 by-hash lookups; the daemon's peak memory over the last start and both, and its
    RssAnon after each."""
    mnt = r.work / "mnt"
    offset = r.txn_log.stat().st_size if r.txn_log.exists() else 0
    lookups = random.Random(n).sample(view, min(LOOKUPS, len(view)))
    # the start: the median of three (a start on a loaded machine swings), the view just defined
    # written back first (the setup's writes, not the daemon's start); and the daemon's CPU
    # seconds (until it serves, in the find, in the lookups): what each costs it, whatever the load
    os.sync()
    starts, cpus = [], []
    for _ in range(2):
        t0 = time.monotonic()
        with hoard_mounted(r.cfg_path, mnt, r.repo) as proc:
            starts.append(time.monotonic() - t0)
            cpus.append(_cpu_s(proc.pid))
    t0 = time.monotonic()
    # (a daemon that walked 10^7 names takes a while to exit: the kernel's inodes go at its unmount)
    with hoard_mounted(r.cfg_path, mnt, r.repo, stop_timeout=900) as proc:
        starts.append(time.monotonic() - t0)
        cpus.append(_cpu_s(proc.pid))
        start, start_cpu = sorted(zip(starts, cpus, strict=True))[1]  # (the median start, and its own CPU)
        watch = PeakWatch(proc.pid)
        anon = {"anon_after_start_kb": _rss_anon_kb(proc.pid)}
        with sampled(r, proc.pid, "mount find"):
            c0, io0, t0, kids = _cpu_s(proc.pid), _io(proc.pid), time.monotonic(), _children_cpu_s()
            found = _count_lines(["find", str(mnt / "views" / "scale"), "-type", "f"])
            find_s, find_cpu, find_io = time.monotonic() - t0, _cpu_s(proc.pid) - c0, _io(proc.pid, io0)
            find_io["find_cpu_s"] = round(_children_cpu_s() - kids, 2)  # (`find`'s own: its system calls, FUSE's kernel side)
        anon["anon_after_find_kb"] = _rss_anon_kb(proc.pid)
        with sampled(r, proc.pid, "mount lookups"):
            c0, io0, t0 = _cpu_s(proc.pid), _io(proc.pid), time.monotonic()
            for s in lookups:
                h = s.hex()
                os.stat(mnt / "by-hash" / h[:2] / h[2:4] / h)
            lookup_s, lookup_cpu, lookup_io = time.monotonic() - t0, _cpu_s(proc.pid) - c0, _io(proc.pid, io0)
        anon["anon_after_lookups_kb"] = _rss_anon_kb(proc.pid)
        mem = watch.stop() | anon
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if found != len(view):
        raise SystemExit(f"find over the view saw {found} files, the view holds {len(view)}")
    txn = txn_lines(r.txn_log, offset)[0]
    common = {**mem, **txn, "work": "fixed", "exit": 0}
    print(f"    mount: start {start:.2f} s ({start_cpu:.2f} s CPU), find {found:,} in {find_s:.2f} s "
          f"({find_cpu:.2f} s CPU), {len(lookups):,} lookups in {lookup_s:.2f} s ({lookup_cpu:.2f} s CPU); "
          f"VmHWM {mem['vmhwm_kb'] / 1024:.0f} MB RssAnon {mem['peak_anon_kb'] / 1024:.0f} MB (after start "
          f"{anon['anon_after_start_kb'] / 1024:.0f}, after find {anon['anon_after_find_kb'] / 1024:.0f}, after "
          f"lookups {anon['anon_after_lookups_kb'] / 1024:.0f})", flush=True)
    print(f"    mount: exited {proc.stop_s:.1f} s after SIGTERM", flush=True)
    return {"mount start": {**common, "seconds": round(start, 3), "per_object_s": start / n,
                            "starts_s": [round(t, 3) for t in starts], "start_cpu_s": start_cpu,
                            "stop_after_walk_s": proc.stop_s},
            "mount find (view)": {**common, "seconds": round(find_s, 3), "per_object_s": find_s / n,
                                  "entries": found, "daemon_cpu_s": round(find_cpu, 2), **find_io},
            "mount by-hash lookups": {**common, "seconds": round(lookup_s, 3), "per_object_s": lookup_s / n,
                                      "lookups": len(lookups), "daemon_cpu_s": round(lookup_cpu, 2), **lookup_io}}


def _count_lines(argv: list[str]) -> int:
    """The lines `argv` prints, counted as they stream (a `find` over 10 M names prints ~0.5 GB:
    held whole, this process would take that memory from the page cache the walk measures)."""
    n = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            n += chunk.count(b"\n")
    if proc.returncode:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}")
    return n


def _py_spy(out: Path) -> list[str]:
    """py-spy sampling a process into `out` (collapsed stacks; 100 a second, without stopping it)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [exe, "record", "--rate", "100", "--format", "raw", "--nonblocking", "--output", str(out)]


@contextmanager
def sampled(r: Run, pid: int, what: str):
    """With `--profile`: the daemon `pid` sampled by py-spy while the block runs."""
    if not r.profile:
        yield None
        return
    out = r.profile_path(what)
    spy = subprocess.Popen([*_py_spy(out), "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # (attached before the work starts)
    try:
        yield out
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def _cpu_s(pid: int) -> float:
    """A process's CPU seconds so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _io(pid: int, since: dict[str, float] | None = None) -> dict[str, float]:
    """A process's bytes read from the disk (page-cache misses), major and minor faults and
    system CPU seconds so far, or since `since` (`daemon_read_bytes`, `daemon_majflt`,
    `daemon_minflt`, `daemon_sys_s`: the kernel's share of the daemon's CPU, its page faults
    on the index's mapped pages among it)."""
    io = dict(row.split(": ") for row in Path(f"/proc/{pid}/io").read_text().splitlines())
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    now = {"daemon_read_bytes": int(io["read_bytes"]), "daemon_majflt": int(stat[9]), "daemon_minflt": int(stat[7]),
           "daemon_sys_s": int(stat[12]) / os.sysconf("SC_CLK_TCK")}
    return {k: round(v - (since or {}).get(k, 0), 2) for k, v in now.items()}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _rss_anon_kb(pid: int) -> int:
    """A process's RssAnon now (KiB)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("RssAnon:"):
            return int(row.split()[1])
    return 0


def gui(r: Run, n: int) -> tuple[dict, dict[str, str]]:
    """The GUI in a headless Chromium, a new `hoard gui` process and browser RESTARTS times:
    its first snapshot's gathering (what a page right after a start waits for: `hoard health`,
    the database's counts, the runs; the overview's "gathered in"), then the storage and assets
    pages (content on screen: the first visit in this process, then the median of three more;
    the snapshot cached, as every visit finds it once the GUI has gathered one). Each the run of
    the median kept, every run in `runs_s`; the process's peak memory over all. A measurement that
    failed in any serving (its error kept; no more servings) has no figure."""
    from tests.gui_browser import have_browser

    if not have_browser():
        print("    GUI: no chromium + chromium-driver here (`make deps`): pages not measured", flush=True)
        return {}, {}
    offset = r.txn_log.stat().st_size if r.txn_log.exists() else 0
    runs: dict[str, list[dict]] = {}
    mem: dict[str, int] = {}
    failed: dict[str, str] = {}
    for _ in range(RESTARTS):
        pages, got_mem, failed = _serve_pages(r)
        mem = {k: max(v, mem.get(k, 0)) for k, v in got_mem.items()}
        for name, t in pages.items():
            runs.setdefault(name, []).append(t | {"seconds": t["first_s"]})
        if failed:
            break
    txn = txn_lines(r.txn_log, offset)[0]
    out = {}
    for name, ts in runs.items():
        if name in failed or len(ts) < RESTARTS:  # (a figure of fewer servings than the others': none)
            continue
        t = _median_run(ts)
        out[name] = {**mem, **txn, **t, "per_object_s": t["seconds"] / n, "work": "fixed", "exit": 0}
        again = f", again {t['again_s']:.2f} s" if "again_s" in t else ""
        print(f"    {name}: first {t['first_s']:.2f} s (runs {[g['first_s'] for g in ts]}){again}; VmHWM "
              f"{mem['vmhwm_kb'] / 1024:.0f} MB", flush=True)
    return out, failed


#: the overview's words for how long its snapshot took to gather (gui/overview.py)
_GATHERED = re.compile(r"gathered in (\d+(?:\.\d+)?) s")


#: the GUI's log line of a gathering and its parts (gui/state.py `Cache._gather`)
_PARTS_LINE = re.compile(r"snapshot gathered in [\d.]+ s: (.*); health: (.*)$", re.M)


def _gathering_parts(log: Path) -> dict[str, dict[str, float]]:
    """The first gathering's parts from the GUI's log — {"parts_s": {part: s}, "health_parts_s":
    {part: s}} — or {} when the log has no such line (a checkout that does not log it)."""
    m = _PARTS_LINE.search(log.read_text(errors="replace"))
    if m is None:
        return {}
    return {key: {name: float(s) for name, s in re.findall(r"([\w ]+?) ([\d.]+) s(?:, |$)", text)}
            for key, text in (("parts_s", m.group(1)), ("health_parts_s", m.group(2)))}


def _serve_pages(r: Run) -> tuple[dict[str, dict], dict[str, int], dict[str, str]]:
    """One `hoard gui` process and browser: vera signs in on the overview, which shows once the
    process's first snapshot is gathered (its "gathered in" read); then the storage and assets
    pages timed (`visit_page`). The process's peak memory; the measurement that failed, with its
    error (any: a page that never showed its content, a browser that broke)."""
    from tests.gui_browser import chromium, page_text, serving, sign_in
    from tests.gui_fixtures import PASSWORDS

    started: list = []
    with serving(r.cfg_path, r.work / "gui.log", r.cfg.gui.port, started=started) as base, chromium() as driver:
        watch = PeakWatch(started[0].pid)
        pages: dict[str, dict] = {}
        failed: dict[str, str] = {}
        try:
            sign_in(driver, base, "vera", PASSWORDS["vera"], path="/", then="gathered in")
            took = _GATHERED.search(page_text(driver))
            if took is None:
                raise AssertionError("the overview showed no 'gathered in N s'")
            pages[GUI[0]] = {"first_s": float(took.group(1)), **_gathering_parts(r.work / "gui.log")}
            # (once per process: no "again")
            pages[GUI[1]] = visit_page(driver, base, "/storage", "SSD zones", 3)
            pages[GUI[2]] = visit_page(driver, base, "/assets", "assets on page 1", 3)
        except Exception as e:  # (a finding, not the run's end)
            page = next(k for k in GUI if k not in pages)
            failed[page] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]
            print(f"    {page}: FAILED: {failed[page]}", flush=True)
        return pages, watch.stop(), failed


def run(sizes: list[int], label: str, work: Path | None, keep: bool, batch: int,
        pg_set: dict[str, str] | None = None) -> None:
    est, basis = estimate_s(sizes)
    print(f"estimated duration: {est / 3600:.1f} h ({est / 60:.0f} min; {basis})", flush=True)
    work = work or Path(tempfile.mkdtemp(prefix="hoard-scale-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    if (work / "built.json").exists() or (work / "shas.bin").exists():
        raise SystemExit(f"{work} holds a store already: `--only NAMES --work {work}` re-times it, or give another --work")
    print(f"store: two directory disks under {work} (this machine's disk, not lab disks)", flush=True)
    repo_cfg = config.load(REPO / "hoard.toml")
    load_before = os.getloadavg()
    t_run = time.monotonic()
    results = []
    with private_cluster(work, keep=keep) as (url, cluster):
        cfg_path = _home(work, url, repo_cfg.test_redis_url)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        r = Run(work, cfg_path, url, cluster)
        built = Built(work, batch)
        try:
            with pg_settings(r, pg_set or {}):  # (the whole run: its build and its measurements)
                for n in sizes:
                    have = built.count
                    t0 = time.monotonic()
                    grown = grow(cfg_path, url, built, n - batch, n - batch - INTENT_NODES)
                    build_s = time.monotonic() - t0
                    print(f"{n:,} objects: grew {built.count - have:,} in {build_s:.0f} s ({grown['store_s']:.0f} s "
                          f"store, {grown['database_s']:.0f} s database)", flush=True)
                    got = measure_size(r, built, n)
                    got |= {"grown": n - have, "build_s": round(build_s, 1),
                            **{k: round(v, 1) for k, v in grown.items()}}
                    results.append(got)
                    built.size = n
                    write_results(label, load_before, t_run, est, batch, results, pg_set,
                                  partial=n != sizes[-1])
                    print(f"  index {got['index_b_per_object_as_grown']:.0f} B/object as grown, "
                          f"{got['index_b_per_object_rebuilt']:.0f} after a rebuild", flush=True)
        finally:
            if keep:
                built.save()  # (with the cluster in DIR/kept-pg: what `--only` re-times)
            else:
                for d in r.cfg.disks:
                    shutil.rmtree(d.path, ignore_errors=True)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    doc = write_results(label, load_before, t_run, est, batch, results, pg_set)
    print(f"bench/results/scale-{label}.json written; the run took {doc['seconds'] / 60:.0f} min "
          f"(estimated {est / 60:.0f})", flush=True)


def write_results(label: str, load_before, t_run: float, est: float, batch: int, results: list[dict],
                  pg_set: dict[str, str] | None, partial: bool = False) -> dict:
    """The run's JSON: after each size (`partial`: a run that dies at a larger size keeps what the
    smaller ones measured; --render reads no partial file) and at the end."""
    doc = {"benchmark": "scale", **stamp(), "load_before": load_before, "load_after": os.getloadavg(),
           "disks": DISKS, "batch": batch, "intent_nodes": INTENT_NODES, "sizes": results, "seconds": round(time.monotonic() - t_run),
           "estimated_s": round(est), "pg_set": pg_set or {}} | ({"partial": True} if partial else {})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale-{label}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def run_only(sizes: list[int] | None, label: str | None, work: Path, batch: int | None, only: list[str],
             repo: Path, profile: str | None = None, pg_set: dict[str, str] | None = None) -> None:
    """`--only`: the measurements `only` names on the store kept in `work` (a new one if it has
    none), at each of `sizes` (default: the kept store's size), grown to each first; the commands
    and the mount from checkout `repo`. The store, and its cluster if it was kept, stay."""
    work.mkdir(parents=True, exist_ok=True)
    new = not (work / "built.json").exists()
    if new and not sizes:
        raise SystemExit(f"--only: {work} holds no kept store (built.json): give --sizes N to build one there")
    built = Built.load(work, batch or (min(BATCH, sizes[0] // 4) if new and sizes else None))
    sizes = sizes or [built.size]
    for was, n in zip([built.size, *sizes], sizes, strict=False):
        if n < was or (n - was) % built.batch:
            raise SystemExit(f"--sizes {','.join(map(str, sizes))}: the store kept in {work} holds {built.size:,} "
                             f"objects in batches of {built.batch:,}; each size at least that, ascending, "
                             "a whole number of batches apart")
    kept = (work / "kept-pg").is_dir()  # the cluster a run with --keep left, with the store's rows
    if pg_set and not kept:
        raise SystemExit(f"--pg-set: {work} has no kept cluster (kept-pg: a run with --keep makes one)")
    needs_rows = [k for k in RETIMED if k.startswith(("select", "GUI", "write-intent")) and wanted(k, only)]
    if needs_rows and not kept:
        print(f"  no kept cluster in {work} (kept-pg: a run with --keep makes one): the selects and GUI pages "
              "are not re-timed", flush=True)
    repo_cfg = config.load(REPO / "hoard.toml")
    load_before = os.getloadavg()
    t_run = time.monotonic()
    results = []
    with private_cluster(work, keep=kept) as (url, cluster):
        cfg_path = work / "hoard.toml"
        if cfg_path.exists():  # the kept store's, pointed at this cluster (a new one when the kept one was not)
            cfg_path.write_text("".join(f"database_url = {json.dumps(url)}\n" if row.startswith("database_url")
                                        else row for row in cfg_path.read_text().splitlines(keepends=True)))
        else:
            cfg_path = _home(work, url, repo_cfg.test_redis_url)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
        r = Run(work, cfg_path, url, cluster, repo, profile)
        with contextlib.ExitStack() as stack:
            stack.enter_context(pg_settings(r, pg_set or {}))
            stack.callback(built.save)
            for n in sizes:
                t0, had, deleted = time.monotonic(), built.count, len(built.deleted)
                grown = grow(cfg_path, url, built, built.count + n - built.size,
                             built.count + n - built.size if kept else 0)
                if built.count > had:
                    print(f"{n:,} objects: grew {built.count - had:,} in {time.monotonic() - t0:.0f} s "
                          f"({grown['store_s']:.0f} s store, {grown['database_s']:.0f} s database)", flush=True)
                got: dict = {"objects": n, "grown": built.count - had, "build_s": round(time.monotonic() - t0, 1),
                             **{k: round(v, 1) for k, v in grown.items()}}
                got |= settle(r)  # (after the growth, before the first measurement)
                cmds: dict[str, dict] = {}
                for index, name in PUT_STATES.items():
                    if wanted(name, only):
                        cmds[name] = put_again(r, built, n, index)
                if kept and wanted("write-intent", only):
                    cmds["write-intent"] = intent_again(r, built, n)
                got_cmds, _ = time_commands(r, built, n, only)
                cmds |= got_cmds
                if kept:
                    cmds |= selects(r, n, only)
                if any(wanted(k, only) for k in MOUNT):
                    t0 = time.monotonic()
                    with Store.open(r.cfg) as store:
                        kept_view = store.index.get_view("scale")
                    view = built.live(VIEW_MAX)  # (the view the kept run defined: the same objects —
                    # unless the store grew, lost a batch, or was kept by a run whose VIEW_MAX differed)
                    if kept_view is None or kept_view.get("files") != len(view) or built.count != had \
                            or len(built.deleted) != deleted:
                        view = define_view(r, built)
                    got |= {"setup_s": round(time.monotonic() - t0, 1), "view_entries": len(view)}
                    cmds |= {k: v for k, v in mount(r, view, n).items() if wanted(k, only)}
                pages, failed = gui(r, n) if kept and any(wanted(k, only) for k in GUI) else ({}, {})
                cmds |= {k: v for k, v in pages.items() if wanted(k, only)}
                results.append(got | {"commands": cmds, "failed": {k: v for k, v in failed.items() if wanted(k, only)}})
    if not any(got["commands"] or got["failed"] for got in results):
        raise SystemExit(f"--only {','.join(only)}: nothing re-timed (no results file written)")
    doc = {"benchmark": "scale --only", **stamp(), "load_before": load_before, "load_after": os.getloadavg(),
           "disks": DISKS, "batch": built.batch,
           "only": only, "repo": str(repo), "cluster": "kept (the store's rows)" if kept else "new (no rows)",
           "profiled": bool(profile), "pg_set": pg_set or {},
           "sizes": results, "seconds": round(time.monotonic() - t_run)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scale-only-{label or '-'.join(_short(n) for n in sizes)}.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{out.relative_to(REPO)} written; the store stays in {work}", flush=True)


#: the store's disks, as the results name them
DISKS = "two directory disks on this machine's disk (virtio, ext4), two copies"


def _home(work: Path, url: str, redis_url: str) -> Path:
    """hoard.toml: two directory disks, two copies, the bench's cluster, the GUI on a free port,
    a viewer to sign in as."""
    from hoardfs.jobs import users
    from tests.gui_browser import free_port
    from tests.gui_fixtures import PASSWORDS, ROLES

    disks = "".join(f'[[disks]]\nlabel = "d{i}"\npath = "{work / f"d{i}"}"\n' for i in range(2))
    for i in range(2):
        (work / f"d{i}").mkdir(exist_ok=True)
    cfg = lab_config(work, url, redis_url, "[store]\nallow_directory_disks = true\nwrite_ack = 2\ncopy_of_raw = 2\n"
                     f"[gui]\nport = {free_port()}\nrefresh_s = 2.0\n{disks}", quota_gb=50)
    users.add(cfg, "vera", ROLES["vera"], PASSWORDS["vera"])
    return work / "hoard.toml"


# -- the table -----------------------------------------------------------------------------------

BEGIN = "<!-- bench/scale.py: begin (written by `bench/scale.py --render`; do not edit) -->"
END = "<!-- bench/scale.py: end -->"


def _load(doc: dict) -> str:
    return f"load (1 min) {doc['load_before'][0]:.1f} before, {doc['load_after'][0]:.1f} after"


def _pg_text(doc: dict) -> str:
    """The PostgreSQL settings a run set for its whole length (`--pg-set`), as a sentence."""
    settings = doc.get("pg_set") or {}
    if not settings:
        return "PostgreSQL: the embedded default's settings. "
    return ("PostgreSQL, for the whole run (build and measurements), with docs/sizing.md's settings for "
            "10–100 M nodes: " + ", ".join(f"`{k} = {v}`" for k, v in settings.items()) + ". ")


def render(path: Path, against: Path | None = None, note: str | None = None) -> None:
    doc = json.loads(path.read_text())
    if not full_run(doc):
        raise SystemExit(f"{path.name}: not a full run of two sizes or more (an --only or one-size run's): "
                         "--render compares a full run's sizes")
    lo, hi = doc["sizes"][0], doc["sizes"][-1]
    a, b = _pretty(lo["objects"]), _pretty(hi["objects"])
    est, _ = estimate_s([1_000_000, 10_000_000], doc)
    # the smallest size measured twice: in the run, and by `against` (another run, e.g. on a
    # quieter machine); each goal is judged by the higher ratio
    los = [("in the run", lo)]
    if against:
        other = json.loads(against.read_text())
        lo2 = other["sizes"][0] if other.get("benchmark") == "scale" and "only" not in other else None
        if lo2 is None or lo2["objects"] != lo["objects"]:
            raise SystemExit(f"{against.name}: not a run whose smallest size is {lo['objects']:,} objects")
        los.append((f"re-run ({against.name}, {other['commit']}, {other['when'][:10]}, {_load(other)})", lo2))
    if hi["objects"] >= 10_000_000:
        duration = (f"The run took {doc['seconds'] / 3600:.1f} h ({doc['seconds'] / 60:.0f} min; estimated "
                    f"{doc['estimated_s'] / 60:.0f} min at its start) on this machine; a run may take three hours.")
    else:
        duration = (f"The run took {doc['seconds'] / 60:.0f} min. **The 10 M run (`python bench/scale.py`: 1 M and "
                    f"10 M) is still to be made**: it would take the machine for about "
                    f"{est / 3600:.1f} h by this run's rates (build and per-object costs at {b}, if they stay flat), "
                    f"and about {10 * hi['store_bytes'] / 1e9 + 5:.0f} GB of disk.")
    lines = [BEGIN, "", f"## Every command at {a} and {b} objects", "",
             f"`python bench/scale.py --sizes {lo['objects']},{hi['objects']}"
             + "".join(f" --pg-set {k}={v}" for k, v in (doc.get("pg_set") or {}).items())
             + f"` at {doc['commit']}, {doc['when'][:10]} "
             f"({path.relative_to(RESULTS.parent.parent)}); {doc['disks']}; batches of {doc['batch']:,}; machine "
             f"{doc['machine']['cpus']} cores, {doc['machine']['mem_mib'] / 1024:.0f} GiB, {_load(doc)}"
             + (f" ({note})" if note else "") + f". {_pg_text(doc)}{duration} "
             "Each command is its own process: time, VmHWM (peak RSS, "
             "index pages it mapped included) and peak RssAnon (what it allocated). The ratio compares the cost "
             f"per unit of work at {b} with {a}: per object in the store for commands whose work grows with it, "
             "per node / view entry / lookup for those whose input is counted so, the time itself for the others "
             f"(*fixed*: one batch, one object, one page). Longest LMDB write transaction: {_txn_text(hi)}."]
    if against:
        lines += ["", f"{a} was measured twice: (1) in the run ({_load(doc)} for the whole run) and (2) by a "
                  f"{los[1][0]}. Both ratios are shown; each goal is judged by the higher."]
    tag = [f" ({i + 1})" if against else "" for i in range(len(los))]
    lines += ["", "| command | work | " + " | ".join(f"{a}{t}: s" for t in tag) + f" | {b}: s | "
              + " | ".join(f"{a}{t}: µs per unit" for t in tag) + f" | {b}: µs per unit | "
              + " | ".join(f"ratio{t}" for t in tag) + f" | {b}: VmHWM MiB | {b}: RssAnon MiB | {b}: longest write txn s |",
              "|---|---|" + "---:|" * (3 * len(los) + 5)]
    misses: list[str] = []
    for name in [k for k in ORDER if k in hi["commands"]] + sorted(set(hi["commands"]) - set(ORDER)):
        c_hi = hi["commands"][name]
        c_los = [(size, size["commands"].get(name)) for _, size in los]
        if any(c is None for _, c in c_los):
            continue
        work, u_hi = _units(c_hi, hi)
        per_lo = [c["seconds"] / _units(c, size)[1] for size, c in c_los]
        ratios = [(c_hi["seconds"] / u_hi) / p for p in per_lo]
        txn = c_hi.get("longest_write_txn_s")
        per = (" | ".join(f"{p * 1e6:,.1f}" for p in per_lo) + f" | {c_hi['seconds'] / u_hi * 1e6:,.1f}"
               if u_hi > 1 else " | ".join("—" for _ in range(len(los) + 1)))
        shown = " | ".join(f"**{r:.2f}×**" if r > GOAL_RATIO else f"{r:.2f}×" for r in ratios)
        lines.append(f"| {name} | {work} | " + " | ".join(f"{c['seconds']:.2f}" for _, c in c_los)
                     + f" | {c_hi['seconds']:.2f} | {per} | {shown} | {c_hi['vmhwm_kb'] / 1024:.0f} | "
                     f"{c_hi['peak_anon_kb'] / 1024:.0f} | {'—' if txn is None else f'{txn:.2f}'} |")
        if max(ratios) > GOAL_RATIO:
            misses.append(f"{name} {max(ratios):.2f}×")
    lines += where_time_went(lo, hi, a, b)
    lines += ["", "| size | index B/object as grown | after a rebuild | PostgreSQL | WAL | store (2 copies) | "
                  "build s (store + database) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in doc["sizes"]:
        lines.append(f"| {s['objects']:,} | {s['index_b_per_object_as_grown']:.0f} | "
                     f"{s['index_b_per_object_rebuilt']:.0f} | {s['database_bytes'] / 2**30:.2f} GiB | "
                     f"{s['wal_bytes'] / 2**30:.2f} GiB | {s['store_bytes'] / 2**30:.2f} GiB | "
                     f"{s['build_s']:.0f} ({s['store_s']:.0f} + {s['database_s']:.0f}) for {s['grown']:,} |")
    failed = [f"- **{name} failed at {s['objects']:,} objects**: {err}" for s in doc["sizes"]
              for name, err in s.get("failed", {}).items()]
    if failed:
        lines += ["", "Measurements that failed (no figure; each counts as a missed goal):", ""] + failed
        misses += [f"{name} (failed at {s['objects']:,})" for s in doc["sizes"] for name in s.get("failed", {})]
    lines += ["", f"Goals (set for 10 M, judged here at {b}):", ""] + goals(hi, misses)
    lines += ["", END]
    write_doc_section(BEGIN, END, lines)
    write_doc_section(SIZING_BEGIN, SIZING_END, sizing(doc, path), doc=SIZING)


def where_time_went(lo: dict, hi: dict, a: str, b: str) -> list[str]:
    """What each command spent besides its wall time, at both sizes (a run whose JSON has it):
    its CPU seconds, what it read from the disk (page-cache misses) and its major faults; the
    cluster's block reads (outside shared buffers) for the write-intent and the selects; and the
    disks' cold one-stream rate measured before `check`."""
    def cpu(c: dict) -> float | None:  # (the mount's rows: the daemon's CPU in them)
        return c.get("cpu_s", c.get("daemon_cpu_s", c.get("start_cpu_s")))

    rows = [k for k in hi["commands"] if cpu(hi["commands"][k]) is not None
            and cpu(lo["commands"].get(k, {})) is not None]
    if not rows:
        return []
    cold = f" — each of {', '.join(COLD)} starts with the page cache dropped" if any(k in COLD for k in rows) else ""
    out = ["", f"Where the time went (each process's rusage; the mount's: its daemon's CPU; *pg blocks read*: the cluster's reads outside its shared "
           f"buffers during the command){cold}:",
           "", f"| command | {a}: s | {a}: CPU s | {a}: read MB | {a}: major faults | {a}: pg blocks read | "
           f"{b}: s | {b}: CPU s | {b}: read MB | {b}: major faults | {b}: pg blocks read |", "|---|" + "---:|" * 10]
    for name in [k for k in ORDER if k in rows] + sorted(set(rows) - set(ORDER)):
        cells = []
        for size in (lo, hi):
            c = size["commands"][name]
            pg, read, faults = c.get("pg_blocks_read"), c.get("read_bytes"), c.get("majflt")
            cells += [f"{c['seconds']:.2f}", f"{cpu(c):.2f}", "—" if read is None else f"{read / 1e6:,.0f}",
                      "—" if faults is None else f"{faults:,}", "—" if pg is None else f"{pg:,}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    for size, label in ((lo, a), (hi, b)):
        c = size["commands"].get("check", {})
        if c.get("disk_read_mib_s"):
            out.append("")
            out.append(f"At {label}, `check` took {c['seconds']:.1f} s, {c['cpu_s']:.1f} s of it CPU, and read "
                       f"{c['read_bytes'] / 2**20:,.0f} MiB from the disk (the shards' footers, the index, the "
                       f"manifests: {c['read_bytes'] / size['store_bytes']:.1%} of the store's "
                       f"{size['store_bytes'] / 2**30:.2f} GiB); the disks gave {c['disk_read_mib_s']:.0f} MiB/s to one "
                       f"stream reading {c['disk_read_bytes'] / 2**30:.1f} GiB of the largest shards cold just before.")
    out += gathering_parts(lo, hi, a, b)
    if any("settle_s" in s for s in (lo, hi)):
        out += ["", "Each size was measured from a settled state (the cluster vacuumed and checkpointed, the build's "
                "writes synced, the load let fall below " + f"{SETTLE_LOAD}): " + "; ".join(
                    f"{_pretty(s['objects'])} after {s['settle_s']:.0f} s, load {s['load_at_measure']}"
                    for s in (lo, hi) if "settle_s" in s) + "."]
    return out


def gathering_parts(lo: dict, hi: dict, a: str, b: str) -> list[str]:
    """The GUI's first snapshot gathering part by part at both sizes (the median restart's, from
    the GUI's log; a run whose JSON has them): its own parts, then the health document's."""
    name = GUI[0]
    got = [size["commands"].get(name, {}) for size in (lo, hi)]
    if not all("parts_s" in g for g in got):
        return []
    out = ["", f"The GUI's first snapshot gathering, part by part (seconds, the median restart's; the GUI's log): "
           f"{a} {got[0]['seconds']:.2f} s, {b} {got[1]['seconds']:.2f} s.", "",
           f"| part | {a}: s | {b}: s |", "|---|---:|---:|"]
    small = []
    for key, prefix in (("parts_s", ""), ("health_parts_s", "health: ")):
        for part in got[1][key]:
            if key == "parts_s" and part == "health":
                continue  # (its parts follow)
            if all(g.get(key, {}).get(part, 0) < 0.0005 for g in got):
                small.append(f"{prefix}{part}")  # (under half a millisecond at both sizes: named below)
                continue
            cells = [f"{g[key][part]:.3f}" if part in g.get(key, {}) else "—" for g in got]
            out.append(f"| {prefix}{part} | {cells[0]} | {cells[1]} |")
    if small:
        out += ["", "Under half a millisecond at both sizes: " + ", ".join(small) + "."]
    return out


SIZING = RESULTS.parent.parent / "docs" / "sizing.md"
SIZING_BEGIN = "<!-- bench/scale.py: sizing begin (written by `bench/scale.py --render`; do not edit) -->"
SIZING_END = "<!-- bench/scale.py: sizing end -->"
PLAN = (1_000_000, 10_000_000, 100_000_000)


def _line(lo: dict, hi: dict, get) -> tuple[float, float]:
    """(intercept, slope per object) of `get(size)` through the two sizes."""
    slope = (get(hi) - get(lo)) / (hi["objects"] - lo["objects"])
    return get(hi) - slope * hi["objects"], slope


def _db_grown(doc: dict, s: dict) -> int:
    """Objects whose rows the growth to `s` applied: those grown but the ones of the measured
    write-intent (the previous size's measured intent caught up to its last batch)."""
    i = doc["sizes"].index(s)
    prev = doc["sizes"][i - 1]["objects"] if i else doc["batch"]
    return s["objects"] - prev - s["commands"]["write-intent"]["nodes"]


def sizing(doc: dict, path: Path) -> list[str]:
    """docs/sizing.md's tables: each figure at 1 M / 10 M / 100 M objects on the line through
    the run's two sizes (a size the run had is measured, the others extrapolated)."""
    lo, hi = doc["sizes"][0], doc["sizes"][-1]
    had = {s["objects"] for s in doc["sizes"]}
    head = " | ".join(f"{_pretty(n)} ({'measured' if n in had else 'extrapolated'})" for n in PLAN)
    gb = 1e9
    # (not per row: each size's own where the run had it, the largest's beyond — max_wal_size bounds it)
    wal = [f"{next((s['wal_bytes'] for s in doc['sizes'] if s['objects'] == n), hi['wal_bytes']) / gb:,.1f}"
           for n in PLAN]

    def at(get, n: int) -> float:
        """Measured where the run had the size `n`; else on the line, never below the largest
        size's figure (a slope the run's noise made negative does not make a bigger store cheaper)."""
        if n in had:
            return get(next(s for s in doc["sizes"] if s["objects"] == n))
        b0, b1 = _line(lo, hi, get)
        return max(get(hi), b0 + b1 * n)

    def row(name: str, get, unit: float, fmt: str = "{:,.1f}") -> str:
        return f"| {name} | {' | '.join(fmt.format(at(get, n) / unit) for n in PLAN)} |"

    out = [SIZING_BEGIN, "", f"From {path.relative_to(RESULTS.parent.parent)} ({doc['commit']}, {doc['when'][:10]}, "
           f"{lo['objects']:,} and {hi['objects']:,} objects of 0.5–4 KB, load {doc['load_before'][0]:.1f}–"
           f"{doc['load_after'][0]:.1f} on {doc['machine']['cpus']} cores): each figure on the straight line "
           "through the two sizes.", "", "**SSD** (GB):", "", f"| | {head} |", "|---|---:|---:|---:|",
           row("LMDB index, as grown by puts", lambda s: s["index_bytes_as_grown"], gb),
           row("LMDB index, after `hoard index rebuild`", lambda s: s["index_bytes_rebuilt"], gb),
           row("PostgreSQL (a node, two edges, a label per object)", lambda s: s["database_bytes"], gb),
           f"| its WAL directory (`pg_wal`: max_wal_size, 1 GB by default, plus what waits for archiving; "
           f"not per row) | {' | '.join(wal)} |",
           "", "**HDD** (GB, two copies, objects of 0.5–4 KB — scale by your mean object size):", "",
           f"| | {head} |", "|---|---:|---:|---:|",
           row("shards on the disks", lambda s: s["store_bytes"], gb),
           "", "**RAM**: peak RssAnon (what the process allocated) and VmHWM (the index pages it mapped "
           "included: page cache, given back under pressure) of the commands that allocate most, MB. "
           f"A write-intent's memory follows its size, not the store's: {hi['commands']['write-intent']['nodes']:,} "
           f"nodes took {hi['commands']['write-intent']['peak_anon_kb'] * 1024 / 1e6:,.0f} MB RssAnon.", "",
           f"| command | {head} |", "|---|---:|---:|---:|"]
    top = sorted((k for k in hi["commands"] if k != "write-intent"), key=lambda k: -hi["commands"][k]["peak_anon_kb"])
    # (one GUI process serves all three pages, one mount daemon its start, find and lookups)
    top = [k for k in top if (k == "GUI storage page" or not k.startswith("GUI"))
           and (k == "mount find (view)" or not k.startswith("mount"))][:5]
    for name in top:
        if name in lo["commands"]:
            out.append(row(f"{name}: RssAnon", lambda s, k=name: s["commands"][k]["peak_anon_kb"] * 1024, 1e6,
                           "{:,.0f}"))
            out.append(row(f"{name}: VmHWM", lambda s, k=name: s["commands"][k]["vmhwm_kb"] * 1024, 1e6, "{:,.0f}"))
    out += buy_table(doc, at, head)
    out += ["", "**Time** (minutes; the store grown through `put_bytes_many` and write-intents, the commands "
            "whose work grows with the store):", "", f"| | {head} |", "|---|---:|---:|---:|",
            row("build: store", lambda s: s["store_s"] / s["grown"] * s["objects"], 60),
            row("build: database rows (write-intents of 20,000 nodes)",
                lambda s: s["database_s"] / max(1, _db_grown(doc, s)) * s["objects"], 60)]
    for name, c in hi["commands"].items():
        if c["work"] == "object" and name in lo["commands"]:
            out.append(row(name, lambda s, k=name: s["commands"][k]["seconds"], 60, "{:,.1f}"))
    return out + ["", SIZING_END]


def _setting_bytes(text: str) -> float:
    """A PostgreSQL memory setting ("4GB", "256MB", "512kB") in bytes."""
    for suffix, mult in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * mult
    return float(text) * 8192  # (a bare number: 8 kB pages)


def buy_table(doc: dict, at, head: str) -> list[str]:
    """What to buy at each size, from the tables' own figures (GB): the SSD for the index and
    PostgreSQL twice each (a rebuild writes a new index beside the old one; VACUUM FULL and
    index builds need their table's size again) plus the WAL directory — the zones' quotas come
    on top; the RAM for the largest allocation any measured command made (RssAnon), PostgreSQL's
    shared buffers as the run set them, and the whole index in the page cache (a put that meets
    it cold is the run's slowest per batch) — the database's own hot indexes in the page cache
    come on top (not measured)."""
    gb = 1e9
    buffers = _setting_bytes((doc.get("pg_set") or {}).get("shared_buffers", "256MB"))
    names = [k for k in doc["sizes"][-1]["commands"] if all(k in s["commands"] for s in doc["sizes"])]
    wal = max(s["wal_bytes"] for s in doc["sizes"])
    cells_ssd, cells_ram = [], []
    for n in PLAN:
        index = at(lambda s: s["index_bytes_as_grown"], n)
        database = at(lambda s: s["database_bytes"], n)
        anon = max(at(lambda s, k=k: s["commands"][k]["peak_anon_kb"] * 1024, n) for k in names)
        cells_ssd.append(f"{(2 * index + 2 * database + wal) / gb:,.0f}")
        cells_ram.append(f"{(anon + buffers + index) / gb:,.1f}")
    return ["", "**What to buy** (GB; from the rows above — the SSD before the zones' quotas, the RAM before "
            "the page cache the database's indexes want):", "", f"| | {head} |", "|---|---:|---:|---:|",
            f"| SSD: index × 2 + PostgreSQL × 2 + WAL | {' | '.join(cells_ssd)} |",
            f"| RAM: the largest RssAnon + shared_buffers ({buffers / 2**30:g} GiB in the run) + the index "
            f"cached | {' | '.join(cells_ram)} |"]


#: the table's order: the order of the measurements
MOUNT = ["mount start", "mount find (view)", "mount by-hash lookups"]
GUI = ["GUI snapshot (first gathering)", "GUI storage page", "GUI assets page"]
ORDER = [*PUT_STATES.values(), "write-intent", *COMMANDS, "select narrow (cold)", "select narrow (warm)",
         "select broad (cold)", "select broad (warm)", *MOUNT, *GUI]
#: what `--only` can re-time (the put's batch is deleted and collected after it; the
#: write-intent's rows are the last INTENT_NODES objects', deleted and vacuumed before it)
RETIMED = ORDER


def _units(c: dict, size: dict) -> tuple[str, int]:
    """What a command's cost is divided by: (its name, how many)."""
    for key, what in (("nodes", "per node"), ("entries", "per view entry"), ("lookups", "per lookup")):
        if c.get(key):
            return what, c[key]
    if c["work"] == "object":
        return "per object", size["objects"]
    return "fixed", 1


def _txn_text(size: dict) -> str:
    got = [c.get("longest_write_txn_s") for c in size["commands"].values()]
    if all(g is None for g in got):
        return "not instrumented in this checkout (no process wrote HOARD_LMDB_TXN_LOG)"
    return f"{max(g for g in got if g is not None):.2f} s at most"


def goals(hi: dict, misses: list[str]) -> list[str]:
    cmds = hi["commands"]
    rss = {k: max(c["vmhwm_kb"], c["peak_anon_kb"]) for k, c in cmds.items()}
    anon_over = [f"{k} {c['peak_anon_kb'] * 1024 / 1e9:.2f} GB" for k, c in cmds.items() if c["peak_anon_kb"] > GOAL_RSS_KB]
    hwm_over = [f"{k} {c['vmhwm_kb'] * 1024 / 1e9:.2f} GB" for k, c in cmds.items() if c["vmhwm_kb"] > GOAL_RSS_KB]
    txns = [c.get("longest_write_txn_s") for c in cmds.values()]
    slow = {k: cmds[k]["seconds"] for k in ("health --json", "GUI storage page") if k in cmds}
    slow |= {k: float("inf") for k in ("health --json", "GUI storage page") if k in hi.get("failed", {})}
    top = max(rss.values()) * 1024 / 1e9
    return [
        f"- per-object cost within {GOAL_RATIO}× (fixed work: absolute time): "
        + ("**met**" if not misses else f"**missed** by {', '.join(misses)}"),
        "- ≤ 2 GB peak RSS: " + ("**met**" if not (anon_over or hwm_over) else "**missed**: "
                                   + ", ".join(anon_over + hwm_over)) + f" (highest {top:.2f} GB)",
        "- ≤ 1 s LMDB write transaction: " + ("not measured (not instrumented in this checkout)"
                                              if all(t is None for t in txns) else
                                              ("**met**" if max(t for t in txns if t is not None) <= GOAL_TXN_S
                                               else "**missed**")),
        f"- index ≤ {GOAL_INDEX_B} B/object: as grown {hi['index_b_per_object_as_grown']:.0f}, after a rebuild "
        f"{hi['index_b_per_object_rebuilt']:.0f} — "
        + ("**met**" if hi["index_b_per_object_as_grown"] <= GOAL_INDEX_B else "**missed**"),
        f"- health and the GUI storage page ≤ {GOAL_HEALTH_S:.0f} s: "
        + ", ".join(f"{k} {v:.2f} s" if v != float("inf") else f"{k} failed" for k, v in slow.items()) + " — "
        + ("**met**" if all(v <= GOAL_HEALTH_S for v in slow.values()) else "**missed**")]


if __name__ == "__main__":
    main()
