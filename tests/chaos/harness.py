"""The chaos harness: a seeded scheduler runs store workloads through the real `hoard` CLI on
lab disks, injects one fault at a random point of each step, heals what the fault broke the
way an operator would, and checks global invariants after every step.

The fault budget is what two copies protect against: at most one disk-level fault is
unhealed at any time (the heal runs before the next step). Within that budget nothing
acknowledged may be lost:

- every object ever acknowledged (a line `hoard put` printed) reads back with its sha256 —
  also after a batch holding the same content was ingested, dropped and garbage-collected;
- `hoard check` finds the index, the shards on the disks and the database in agreement;
- `hoard health` names an injected disk fault (the disk's label) until it is healed, and
  names no store or disk problem once everything is healed;
- nothing read through the mount comes back with other bytes than its sha256 says;
- no reservation outlives its job, every output `hoard stage` / `hoard export` acknowledged
  (exit 0) stays sealed and its files match their manifest, and nothing unsealed is ever
  reported done.
- no alarm without a cause (`World.observe`, `World.follow_advice`): every problem `hoard
  health`, `hoard check` or `hoard verify` reports during a seed names a next step; once a
  fault's outside cause is healed (a disk back, a server started, a filler removed, a dead
  disk replaced), the harness follows the `hoard` commands the problems still reported name,
  and each problem it followed is gone; after each step's heal and re-run all three report
  nothing (exit 0; health: nothing beyond a new world's problems);
- after each faulted command, before the heal, `hoard check`'s exit code and `hoard verify`'s
  agree, except where one of them is blind by design (`check_agrees_with_verify`).
- every batch the store registers is selectable whole: the nodes `hoard select --batch B`
  returns are its manifest's files less those the store hides (`check_batches`) — also a batch
  ingested right after `hoard delete --batch` of one holding the same files (`batch_drop`);
- at the end of a seed every registered batch can be deleted: `hoard delete --batch B` exits 0,
  or names a `hoard` step after which it does (`delete_every_batch`), and `hoard check` agrees.
- action runs (`action`, `action_rq`: `hoard action run` of an AC2 contract with a python test
  worker, ACTION_WORKER) happen exactly once: after the re-run every run acknowledged done has
  one child, edge, label and result row per input and one `done` action_event, the same command
  again is "done already" and changes no row count, its children read back, no run is left
  running or failed, 3C holds nothing of it, and no worker outlives its runner (`check_actions`).

A step's plan (workload, fault, victim, timing) comes from the seed alone, so a failing seed
replays with the command `World.replay_hint` prints; the kill instants are wall-clock, so a
replay hits the same step at nearly, not exactly, the same point.

Power worlds. Every third seed (seed % 3 == 0) builds a power world, where a step's fault may
also be `powercut` (at least one step of such a seed has it): at the step's instant the whole
machine loses power — every process of the world stops at once, every disk shows only what
had reached it — and comes back (`World.power_cut`, the image-snapshot method of
tests/lab.py); then an operator does what docs/operations.md says to do after a power loss,
the interrupted command runs again and every invariant above must hold. Acknowledged is what
the command had printed before the instant (it writes to a file, read once it is stopped),
or what it acknowledged by its exit when the cut comes after it ended. Right after the cut,
before anyone acts, whatever `hoard health` reports must be true (`health_after_cut`); once
the operator's steps and the re-run are done it must report nothing at all.
A power world differs from the others in two ways, neither of which changes what another
fault means:
- its lab disks use direct IO (`Lab(direct_io=True)`: a power cut copies what the loop
  devices have written, not what sits in a page cache under the lab), and "the SSD" — the
  store's [ssd] root with the index, the zones and the job state, PostgreSQL's data
  directory, Redis's — is a lab disk too (`SSD`), cut at the same instant as the HDDs;
  elsewhere they stay on the machine's own disk. A direct-IO loop reads a truncated image
  back as zeros instead of failing, so `eio` first switches its victim's loop device to
  buffered IO (`Lab.fail_eio`): the disk answers EIO as in any other world;
- a scraped batch dropped into 3A is synced before the step: losing a drop the store never
  took would be the scraper's loss, and the batch the harness expects would not exist.
Seeds that are no power world plan and run exactly as before power worlds existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from hoardfs.base.files import syncfs
from tests.helpers import private_cluster
from tests.lab import DiskProfile, Lab, stopped

REPO = Path(__file__).resolve().parents[2]

#: four small, fast lab disks in use and two spares that replace dead ones (throttling is not
#: the point here: faults are)
ACTIVE = tuple(DiskProfile(f"c{i}", 400, 200, 200, 5000) for i in (1, 2, 3, 4))
SPARES = tuple(DiskProfile(f"s{i}", 400, 200, 200, 5000) for i in (1, 2))

#: what a step's seed is mixed with for the marks-log flip's own choices
MARKS_FLIP = 0x6D61726B

#: what a seed is mixed with to choose the seeds that end by replacing every disk
REPLACE_ALL = 0x7265706C

#: what a seed is mixed with for the choice of the steps that run an action (an rng of their own:
#: the other steps' plans stay what they were before action workloads existed)
ACTIONS = 0x61637473
#: the share of steps (after the first) that run an action instead of the workload drawn;
#: CHAOS_ACTION_SHARE=1 makes every step after the first an action (a long run aimed at the engine)
ACTION_SHARE = float(os.environ.get("CHAOS_ACTION_SHARE", 1 / 5))
#: the ActionContract the action workloads run (an AC2 with a python test worker, ACTION_WORKER)
ACTION = "chaos-copy"
#: relationship of its children to their inputs, and the label each child gets
ACTION_REL = "chaos_child_of"
#: the tables whose row counts a run that is done already must not change
ACTION_TABLES = ("node", "physical_content", "physical_path", "edge", "label", "action", "action_batch",
                 "batch_member", "action_event", "result_canny", "result_ocr_box", "applied_intent",
                 "relationship_type")
#: the worker: argv input root, output root, run id; for each staged input (sorted) a child
#: children/<sha256>.bin — bytes of its own, the same on a re-run — and a line of results.jsonl;
#: a little sleep per input, so that a fault finds it running
ACTION_WORKER = r"""
import json, os, sys, time
inp, out, run = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.join(out, "children"), exist_ok=True)
with open(os.path.join(out, "results.jsonl"), "w") as res:
    for d, _, files in sorted(os.walk(inp)):
        for f in sorted(files):
            sha = f.split(".")[0]
            data = open(os.path.join(d, f), "rb").read()
            with open(os.path.join(out, "children", sha + ".bin"), "wb") as c:
                c.write(b"chaos child of %s in %s\n" % (sha.encode(), run.encode()) + data[:256][::-1])
            res.write(json.dumps({"sha": sha, "status": "ok", "ratio": len(data) % 97 / 97}) + "\n")
            res.flush()
            time.sleep(0.03)
"""
ACTION_CONTRACT = """action_id = "{name}"
action_type = "AC2"
version = 1
description = "the chaos suite's action workload: a child and a result per input"

[input_selector]
file_types = ["png"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "local"
command = [{python}, {script}, "{{input_root}}", "{{output_root}}", "{{action_batch_id}}"]
timeout_s = 300
{run_as}
[[output_parser.children]]
glob = "children/*.bin"
parent_match = 'children/(?P<input>[0-9a-f]{{64}})\\.bin'
parent_key = "sha256"
relationship = "{rel}"
labels = {{ made_by = "chaos" }}

[[output_parser.results]]
name = "ratios"
glob = "results.jsonl"
format = "jsonl"
node_field = "sha"
node_key = "sha256"

[result_mapping.ratios]
into = "result_canny"
columns = {{ status = "status", edge_ratio = "ratio" }}
"""

#: a command running this long (the lab is fast and a step's data small) is hung
HUNG_S = 120

WORKLOADS = ("put", "put", "put", "replicate", "verify", "views_gc", "batch_drop", "ingest", "index_rebuild", "get",
             "export", "ingest_rq", "mount_read")
#: faults during a step: none, kill -9 of the CLI, a disk vanishing (and coming back), a
#: disk dying (EIO; replaced by a spare), a flipped byte in one replica before the step, a
#: disk filling up (someone else's file takes its free space; removed afterwards),
#: PostgreSQL or Redis stopped (the world's own servers; started again by the heal), the
#: output zones 3B–3D past their deny threshold (someone else's files; removed by the heal);
#: the worker's work horse alone killed -9 (the worker parent goes on: kill9 takes both), the
#: FUSE mount killed -9 under a reader (its mount point is left "not connected"); in a power
#: world also a power cut (POWER_FAULTS)
FAULTS = ("none", "kill9", "kill9", "vanish", "eio", "flip", "full", "db_down", "redis_down", "zone_full",
          "kill_horse", "kill_mount")
DISK_FAULTS = ("vanish", "eio", "flip", "full")
#: faults injected at an instant of the command (the others are set up before it)
TIMED_FAULTS = ("kill9", "vanish", "eio", "full", "db_down", "redis_down", "kill_horse", "kill_mount", "powercut")
#: a power world's faults: those, and the whole machine losing power (`World.power_cut`)
POWER_FAULTS = FAULTS + ("powercut",) * 3
#: a power world's SSD: a lab disk holding [ssd] root (index, zones, state), PostgreSQL's data
#: directory and Redis's; large enough that every zone's quota fits on it with 3B–3D filled
#: (zone_full), as on the machine's own disk (its image is sparse)
SSD = DiskProfile("ssd", 6000, 400, 400, 5000)
#: the faults that only some workloads have a target for (a worker's horse, a mount)
TARGETED = {"kill_horse": ("ingest_rq", "action_rq"), "kill_mount": ("mount_read",)}
#: the reader a `mount_read` step runs (not a hoard command): argv mount point, a file of
#: sha256s (up to 400); reads each object through by-hash/ and checks its sha256 — wrong bytes print
#: WRONG BYTES (an invariant violation whatever the fault), an unreadable file exits 3
READ_MOUNT = "@read-mount"
READER = r"""
import hashlib, os, sys
mnt, listing = sys.argv[1], sys.argv[2]
for sha in open(listing).read().split():
    where = os.path.join(mnt, "by-hash", sha[:2], sha[2:4])
    try:
        name = next(n for n in os.listdir(where) if n.split(".")[0] == sha)
        with open(os.path.join(where, name), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    except (OSError, StopIteration) as e:
        print(f"{sha}: {e!r}", file=sys.stderr)
        sys.exit(3)
    if got != sha:
        print(f"WRONG BYTES: {sha} read back as {got}", file=sys.stderr)
        sys.exit(1)
"""


def power_world(seed: int) -> bool:
    """Every third seed (0, 3, 6, …) builds a power world (module docstring)."""
    return seed % 3 == 0


def lab_profiles(seed: int) -> tuple[DiskProfile, ...]:
    return ACTIVE + SPARES + ((SSD,) if power_world(seed) else ())


class InvariantViolation(AssertionError):
    pass


@dataclass
class Step:
    n: int
    workload: str
    fault: str
    victim: str | None  # a disk label for vanish/eio/flip
    at: float  # the fault's instant, as a fraction of the step's expected duration
    seed: int  # for the workload's own choices
    marks: bool = False  # a `flip` step that also flipped a bit in the victim's marks log

    def __str__(self) -> str:
        where = f" on {self.victim}" if self.victim else ""
        return f"step {self.n}: {self.workload} with {self.fault}{where} at {self.at:.2f}"


@dataclass
class World:
    lab: Lab
    home: Path
    seed: int
    cfg_path: Path = field(init=False)
    acked: dict[str, int] = field(default_factory=dict)  # sha256 → size, every acknowledged object
    disks: list[str] = field(default_factory=lambda: [p.label for p in ACTIVE])  # in the store now
    spares: list[str] = field(default_factory=lambda: [p.label for p in SPARES])
    views: list[str] = field(default_factory=list)
    pending_batch: dict[str, int] = field(default_factory=dict)  # the batch `ingest` is taking
    pending_batch_id: str = ""
    batches: list[str] = field(default_factory=list)  # ingested batches (in the database, not dropped)
    outputs: dict[str, str] = field(default_factory=dict)  # stage/export id → zone, every acknowledged output
    pending_output: tuple[str, str] = ("", "")  # (id, zone) of the stage/export under way
    log: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)  # "kill9 during put" → how often
    took: dict[str, float] = field(default_factory=dict)  # workload → seconds, last undisturbed run
    boot_s: float = 0.0
    rerun: list[str] = field(default_factory=list)  # what re-runs an interrupted step (default: its command)
    mount_proc: subprocess.Popen | None = None
    baseline: set[str] = field(default_factory=set)  # what `hoard health` reports right after init
    cut_problems: list[str] = field(default_factory=list)  # what it reported right after the last power cut
    alarms: int = 0  # problems health, check and verify reported during the seed (each with its next step)
    followed: dict[str, int] = field(default_factory=dict)  # advice the harness followed → how often
    database_url: str = ""
    pending_action: tuple[str, int] = ("", 0)  # (run id, inputs) of the action run under way
    action_runs: dict[str, int] = field(default_factory=dict)  # run id → inputs its worker ran on, every run done
    #: run id → (its inputs, {input: the earlier run whose child it reuses}), every run acknowledged done
    action_inputs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    frozen: bool = False  # the world stopped at a power cut's instant: its PostgreSQL answers nothing
    _files: int = 0

    def __post_init__(self) -> None:
        from hoardfs.jobs.redis_server import PrivateRedis

        self.cfg_path = self.home / "hoard.toml"
        self.power = power_world(self.seed)
        # in a power world "the SSD" is a lab disk the cut copies with the HDDs; else the machine's disk
        base = self.home
        if self.power:
            assert self.lab.direct_io and "ssd" in self.lab.disks, \
                "a power world needs Lab(lab_profiles(seed), direct_io=True)"
            base = self.lab.disks["ssd"].mountpoint
            os.chmod(self.lab.root, 0o711)  # PostgreSQL's server user must reach its data directory there
        self.ssd = base / "ssd"
        # its own servers, so that stopping them hurts no other test (nor a developer's run)
        self.pg = private_cluster(base)
        self.redis = PrivateRedis(base / "redis", self.home / "run" / "redis.sock")

    # -- the CLI ------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        if args and args[0] == READ_MOUNT:
            return [sys.executable, "-c", READER, str(self.mnt), *args[1:]]
        return [sys.executable, "-m", "hoardfs", "--config", str(self.cfg_path), *args]

    @property
    def mnt(self) -> Path:
        return self.home / "mnt"

    def hoard(self, *args: str, timeout: float = 300, ok: tuple[int, ...] | None = (0,)) -> subprocess.CompletedProcess:
        res = subprocess.run(self._cmd(*args), cwd=self.home, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, env=_env())
        self.log.append(f"hoard {' '.join(args)} → {res.returncode}")
        if "Traceback" in res.stderr:
            raise InvariantViolation(f"`hoard {' '.join(args)}` printed a traceback:\n{res.stderr[-3000:]}")
        if ok is not None and res.returncode not in ok:  # (some commands name a failure on stdout: ingest --here)
            raise InvariantViolation(f"`hoard {' '.join(args)}` exit {res.returncode}:\n{res.stderr[-3000:]}"
                                     f"\nstdout:\n{res.stdout[-2000:]}")
        return res

    def start(self, *args: str) -> subprocess.Popen:
        """Started in its own session (a kill takes its children too); its output goes to files,
        so a long output cannot block it on a full pipe: `finish` reads them."""
        self.log.append(f"hoard {' '.join(args)} (started)")
        with open(self.home / "out.txt", "w") as out, open(self.home / "err.txt", "w") as err:
            return subprocess.Popen(self._cmd(*args), cwd=self.home, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)

    def finish(self, proc: subprocess.Popen) -> tuple[str, str]:
        proc.wait()
        return (self.home / "out.txt").read_text(errors="replace"), (self.home / "err.txt").read_text(errors="replace")

    # -- setup --------------------------------------------------------------------
    def init(self) -> None:
        from hoardfs.sql.cluster import ensure_database

        self.pg.start()
        self.redis.start()
        database_url = psycopg.conninfo.make_conninfo(host=str(self.pg.socket_dir.resolve()), user="hoard",
                                                      dbname="hoard_chaos")
        redis_url = f"unix://{self.redis.socket}?db=0"
        ensure_database(database_url)
        self.database_url = database_url
        lines = [f"database_url = {json.dumps(database_url)}", f"redis_url = {json.dumps(redis_url)}", "",
                 "[store]", "shard_size_mb = 1", "copy_of_raw = 3", "copy_of_generated = 2", "write_ack = 2",
                 "allow_directory_disks = false"]
        for label in self.disks:
            lines += ["", "[[disks]]", f'label = "{label}"', f'path = "{self.lab.disks[label].mountpoint}"']
        lines += ["", "[ssd]", f'root = "{self.ssd}"']
        for z in ("3A", "3B", "3C", "3D"):
            lines += [f"[ssd.zones.{z}]", "quota_gb = 1"]
        lines += ["", "[ingest]", "settle_s = 0.05", "", "[sources]", 'gallery = "gallery_dl"']
        lines += ["", "[mount]", f'path = "{self.home / "mnt"}"']  # where view-mode outputs point
        self.cfg_path.write_text("\n".join(lines) + "\n")
        self.write_action()
        self.hoard("init")
        self.hoard("db", "migrate")
        t0 = time.monotonic()
        self.hoard("disks", "list", "--json")
        self.boot_s = time.monotonic() - t0  # a command's start-up: faults land after it
        # what health reports of a new world (no backup taken yet): no fault's doing
        self.baseline = set(json.loads(self.hoard("health", "--json", ok=(0, 4)).stdout)["problems"])

    def close(self) -> None:
        self.stop_mount()
        self.redis.stop()
        self.pg.destroy()

    # -- the plan -----------------------------------------------------------------
    def plan(self, steps: int) -> list[Step]:
        rng = random.Random(self.seed)
        own = random.Random(self.seed ^ ACTIONS)
        out = []
        for n in range(1, steps + 1):
            workload = rng.choice(WORKLOADS) if n > 1 else "put"  # something to lose first
            fault = rng.choice(POWER_FAULTS if self.power else FAULTS)
            if n > 1 and own.random() < ACTION_SHARE:  # an action instead (own rng: other plans unchanged)
                workload = own.choice(("action", "action_rq"))
            if workload not in TARGETED.get(fault, (workload,)):  # nothing of that kind runs in this step
                fault = "kill9"
            out.append(Step(n, workload, fault, None, rng.random(), rng.randrange(1 << 30)))
        if self.power and out and not any(s.fault == "powercut" for s in out):  # a power world cuts at least once
            rng.choice(out).fault = "powercut"
        return out

    def replay_hint(self) -> str:
        return f"make chaos SEEDS=1 SEED0={self.seed}   (or: CHAOS_SEED={self.seed} pytest -m chaos tests/chaos)"

    # -- running a step -----------------------------------------------------------
    def run(self, step: Step) -> None:
        self.log.append(f"-- {step}")
        rng = random.Random(step.seed)
        if step.fault in DISK_FAULTS:
            step.victim = rng.choice(self.disks)
            if step.fault == "eio" and not self.spares:
                step.fault, step.victim = "vanish", step.victim  # no spare left to replace a dead disk
        if step.fault == "flip":
            self.flip_byte(step.victim, rng)
            # half the flips also hit the victim's marks log (an rng of their own: the replica
            # flip and the rest of the step stay what they were for every seed)
            own = random.Random(step.seed ^ MARKS_FLIP)
            if own.random() < 0.5:
                step.marks = self.flip_marks(step.victim, own)
        args, expected_s = self.workload_args(step.workload, rng)
        if args is None:
            return
        self.rerun = self.rerun or list(args)
        if step.fault == "zone_full":  # after the workload's own set-up (an ingest, say), before its command
            self.fill_zones()
        expected_s = self.took.get(step.workload, expected_s)
        proc = self.start(*args)
        injected = False
        boot_s = 0.05 if args[0] == READ_MOUNT else self.boot_s  # the reader is no `hoard` process
        t_fault = boot_s + step.at * max(0.1, expected_s - boot_s)
        t0 = time.monotonic()
        while proc.poll() is None:
            if not injected and time.monotonic() - t0 >= t_fault and step.fault in TIMED_FAULTS:
                injected = True
                self.inject(step, proc)
            if time.monotonic() - t0 > HUNG_S:
                stack = _stack(proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                _, stderr = self.finish(proc)
                raise InvariantViolation(f"{step}: `hoard {' '.join(args)}` hung for {HUNG_S} s; stderr:\n"
                                         f"{stderr[-2000:]}\n{stack}")
            time.sleep(0.005)
        stdout, stderr = self.finish(proc)
        if step.fault in ("none", "flip", "zone_full") or not injected:  # undisturbed: where later faults land
            self.took[step.workload] = time.monotonic() - t0
        self.log.append(f"  → exit {proc.returncode} after {time.monotonic() - t0:.2f} s")
        if "Traceback" in stderr or "WRONG BYTES" in stderr:
            raise InvariantViolation(f"{step}: `hoard {' '.join(args)}` printed:\n{stderr[-3000:]}")
        self.collect_acks(step.workload, stdout, proc.returncode)
        if step.workload == "ingest_rq" and step.fault == "none" and self.pending_batch_id not in self.batches:
            raise InvariantViolation(f"{step}: the worker ended (exit {proc.returncode}) without the batch done:\n"
                                     f"{stderr[-3000:]}")
        if step.workload == "action_rq" and step.fault == "none" and self.pending_action[0] not in self.action_runs:
            raise InvariantViolation(f"{step}: the worker ended (exit {proc.returncode}) without action run "
                                     f"{self.pending_action[0]} done:\n{stderr[-3000:]}")
        if step.workload in ("action", "action_rq"):
            self.worker_outlives_runner(step, proc)
        if step.fault in TIMED_FAULTS and step.fault != "kill9" and not injected:  # faster than the fault
            self.inject(step, proc)
        when = "during" if injected or step.fault in ("flip", "zone_full") else "after"
        key = f"{step.fault} {when} {step.workload}" if step.fault != "none" else f"no fault, {step.workload}"
        self.faults[key] = self.faults.get(key, 0) + 1
        if step.fault in ("vanish", "eio", "full"):
            self.health_names(step.victim, step)
        elif step.fault in ("db_down", "redis_down"):
            self.health_names("database:" if step.fault == "db_down" else "redis:", step)
        elif step.fault == "zone_full":
            self.health_names("zone 3D:", step)
        elif step.fault == "powercut":
            self.health_after_cut(step)
        clean = proc.returncode in (0,) or (step.fault == "none" and step.workload == "get")
        if not clean and step.fault == "none":
            raise InvariantViolation(f"{step}: `hoard {' '.join(args)}` exit {proc.returncode} with no fault:\n"
                                     f"{stderr[-3000:]}")
        if step.fault != "none":
            self.check_agrees_with_verify(step, self.observe(step, "after the fault"))
        self.heal(step)
        self.follow_advice(step)
        if step.fault != "none" and step.workload != "get":  # the interrupted command, re-run, completes
            again = self.rerun
            res = self.hoard(*again, ok=None)
            self.collect_acks(step.workload, res.stdout, res.returncode)
            if res.returncode != 0:
                raise InvariantViolation(f"{step}: re-run `hoard {' '.join(again)}` exit {res.returncode}:\n"
                                         f"{res.stderr[-3000:]}\nstdout:\n{res.stdout[-2000:]}")
        if step.workload in ("action", "action_rq"):
            if self.pending_action[0] not in self.action_runs:
                raise InvariantViolation(f"{step}: action run {self.pending_action[0]} is not done after the re-run")
            self.action_done_already(step)
        self.rerun = []
        self.stop_mount()

    def worker_outlives_runner(self, step: Step, proc: subprocess.Popen) -> None:
        """A worker never outlives its runner: once the command (`hoard action run --here`, or the
        RQ worker whose work horse ran the step) is gone — killed -9 included — no process of the
        action's worker program runs (it would go on writing the output root a resumed run reads)."""
        script = str(self.home / "actions" / f"{ACTION}-worker.py")
        deadline = time.monotonic() + 10  # the kernel's SIGKILL of a dead runner's worker is not instant
        while True:
            alive = []
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    with contextlib.suppress(OSError):
                        if script.encode() in (d / "cmdline").read_bytes().split(b"\0"):
                            alive.append(int(d.name))
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if alive:
            raise InvariantViolation(f"{step}: `hoard {' '.join(self.rerun)}` ended (exit {proc.returncode}) but its "
                                     f"worker still runs: pids {alive}")

    def workload_args(self, workload: str, rng: random.Random) -> tuple[list[str] | None, float]:
        """The command line of a workload and its expected duration in seconds."""
        if workload == "put":
            listing = self.make_batch(rng)
            return ["put", "--json", "--manifest", str(listing)], 1.5
        if workload == "replicate":
            return ["replicate"], 1.0
        if workload == "verify":
            return ["verify", "--sha256", "--repair"], 1.2
        if workload == "index_rebuild":
            return ["index", "rebuild"], 1.0
        if workload == "get":
            if not self.acked:
                return None, 0
            sha = rng.choice(sorted(self.acked))
            return ["get", sha, "-o", str(self.home / "got.bin")], 1.0
        if workload == "views_gc":
            if not self.acked:
                return None, 0
            self.define_view(rng)
            return ["gc", "--threshold", "0.95", "--wait", "30"], 1.5
        if workload == "batch_drop":
            self.ingest_and_drop(rng)
            return ["gc", "--threshold", "0.95", "--wait", "30"], 1.5
        if workload == "ingest":
            batch = self.scraped_batch(rng)
            self.pending_batch = {i.sha256: i.size for i in batch.items}
            self.pending_batch_id = batch.batch_id
            return ["ingest", str(self.ssd / "3A" / batch.batch_id), "--here"], 4.0
        if workload == "export":
            return self.output_args(rng), 2.0
        if workload == "ingest_rq":  # queued, then run by a worker: the worker is what the fault hits
            batch = self.scraped_batch(rng)
            self.pending_batch = {i.sha256: i.size for i in batch.items}
            self.pending_batch_id = batch.batch_id
            folder = str(self.ssd / "3A" / batch.batch_id)
            self.hoard("ingest", folder)
            self.rerun = ["ingest", folder, "--here"]  # a killed job is not re-run by RQ: resume it here
            return ["worker", "--burst"], 6.0
        if workload in ("action", "action_rq"):
            return self.action_args(rng, queued=workload == "action_rq"), 1.8 if workload == "action" else 3.5
        if workload == "mount_read":
            if not self.acked:
                return None, 0
            self.start_mount()
            listing = self.home / "read.list"
            listing.write_text("\n".join(rng.sample(sorted(self.acked), min(len(self.acked), 400))) + "\n")
            return [READ_MOUNT, str(listing)], 1.0
        raise ValueError(workload)

    def write_action(self) -> None:
        """The action workloads' contract and worker, in `actions/` beside hoard.toml. As root the
        worker would be actions.worker_user (nobody), who cannot enter the test's root-only
        directory: it runs as root, allowed (as in tests/test_action_workers.py)."""
        actions = self.home / "actions"
        actions.mkdir(exist_ok=True)
        script = actions / f"{ACTION}-worker.py"
        script.write_text(ACTION_WORKER)
        run_as = 'run_as = "root"\nallow_root = true\n' if os.geteuid() == 0 else ""
        (actions / f"{ACTION}.toml").write_text(ACTION_CONTRACT.format(
            name=ACTION, python=json.dumps(sys.executable), script=json.dumps(str(script)), run_as=run_as,
            rel=ACTION_REL))

    def action_args(self, rng: random.Random, queued: bool) -> list[str]:
        """`hoard action run` of the chaos contract over 10–30 of the ingested batches' media
        (acknowledged nodes in the database, none deleted), by --nodes; an ingest first when there
        are none. The run's id is known before it starts (its key: action, version, parameters,
        the sorted inputs). `queued`: the run is submitted now, and a worker (the step's command)
        runs its steps."""
        from hoardfs.jobs.actions.state import run_id, run_key

        media = self.media_nodes()
        if not media:
            batch = self.scraped_batch(rng)
            self.hoard("ingest", str(self.ssd / "3A" / batch.batch_id), "--here", timeout=300)
            self.acked.update({i.sha256: i.size for i in batch.items})
            self.batches.append(batch.batch_id)
            media = self.media_nodes()
        chosen = sorted(rng.sample(media, min(len(media), rng.randint(10, 30))))
        listing = self.home / f"a{len(self.log)}.nodes"  # unique within the run (the log only grows)
        listing.write_text("\n".join(chosen) + "\n")
        rid = run_id(ACTION, 1, run_key(ACTION, 1, "{}", chosen))
        self.pending_action = (rid, len(chosen))
        here = ["action", "run", ACTION, "--nodes", str(listing), "--here", "--json"]
        self.rerun = list(here)  # an interrupted run is resumed in place (RQ does not re-run a killed job)
        if not queued:
            return here
        self.hoard("action", "run", ACTION, "--nodes", str(listing), "--json")
        return ["worker", "--burst"]

    def media_nodes(self) -> list[str]:
        """The sha256s of the ingested batches' media: physical nodes neither deleted nor black-listed."""
        if not self.batches:
            return []
        with psycopg.connect(self.database_url) as conn:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT encode(n.sha256, 'hex') FROM batch_member m JOIN node n USING (node_id) "
                "JOIN physical_content pc USING (node_id) WHERE m.batch_id = ANY(%s) AND NOT pc.is_deleted "
                "AND NOT pc.in_black_list AND pc.file_type IN ('png', 'mp4') ORDER BY 1", [self.batches])]

    def action_counts(self) -> dict[str, int]:
        with psycopg.connect(self.database_url) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ACTION_TABLES}

    def action_done_already(self, step: Step) -> None:
        """The same `hoard action run` once more, after its run is done: "done already", exit 0, and
        no row count of the tables a run writes changes."""
        rid, _ = self.pending_action
        listing = self.rerun[self.rerun.index("--nodes") + 1]
        before = self.action_counts()
        res = self.hoard("action", "run", ACTION, "--nodes", listing, "--here", ok=None)
        after = self.action_counts()
        if res.returncode != 0 or f"run {rid}: done already" not in res.stdout:
            raise InvariantViolation(f"{step}: the same action run again: exit {res.returncode}, not "
                                     f"\"run {rid}: done already\":\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        if after != before:
            raise InvariantViolation(f"{step}: the action run done already changed row counts: "
                                     f"{ {t: (before[t], after[t]) for t in before if before[t] != after[t]} }")

    def start_mount(self) -> None:
        """`hoard mount --foreground` in the background, until the step ends (it holds the store
        lock shared: gc's swap waits for it)."""
        self.mnt.mkdir(exist_ok=True)
        log = open(self.home / "mount.log", "ab")
        self.mount_proc = subprocess.Popen(self._cmd("mount", "--foreground", str(self.mnt)), cwd=self.home,
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=_env(), start_new_session=True)
        log.close()
        self.log.append("hoard mount --foreground (started)")
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if self.mount_proc.poll() is not None or time.monotonic() > deadline:
                raise InvariantViolation(f"`hoard mount` did not come up (exit {self.mount_proc.poll()}):\n"
                                         + (self.home / "mount.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def stop_mount(self) -> None:
        proc, self.mount_proc = self.mount_proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if os.path.ismount(self.mnt) or _dead_mount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def output_args(self, rng: random.Random) -> list[str]:
        """`hoard stage` (→ 3C) or `hoard export` (→ 3D) of some ingested batches, in copy mode
        or (now and then) view mode; an ingest first when the database holds no batch."""
        if not self.batches:
            batch = self.scraped_batch(rng)
            self.hoard("ingest", str(self.ssd / "3A" / batch.batch_id), "--here", timeout=300)
            self.acked.update({i.sha256: i.size for i in batch.items})
            self.batches.append(batch.batch_id)
        kind = rng.choice(("export", "export", "stage"))
        oid = f"o{len(self.log)}"  # unique within the run (the log only grows)
        selector = self.home / f"{oid}.json"
        selector.write_text(json.dumps({"batches": rng.sample(self.batches, rng.randint(1, min(3, len(self.batches))))}))
        self.pending_output = (oid, "3C" if kind == "stage" else "3D")
        mode = "view" if rng.random() < 0.25 else "copy"
        layout = rng.choice(("by_sha256", "by_batch"))
        return [kind, oid, "--layout", layout, "--selector", str(selector), "--mode", mode, "--here", "--json"]

    def scraped_batch(self, rng: random.Random):
        """A UA_1 batch (synthetic gallery-dl: media + sidecars, now and then a large file and
        content seen before) dropped into zone 3A with its _READY signal."""
        from hoardfs.adapters.synth import Spec, generate

        staging = self.ssd.parent / "gen"  # on the SSD's file system: moved into 3A by a rename
        batch = generate(staging, Spec(seed=rng.randrange(1 << 30), batches=1, items_per_batch=rng.randint(10, 40),
                                       sources=("gallery",), large_max_mb=1, ready_signal=True))[0]
        (staging / batch.batch_id).rename(self.ssd / "3A" / batch.batch_id)
        if self.power:  # the scraper's drop is durable before any step: a cut losing it is no store's loss
            syncfs(self.ssd)
        return batch

    def ingest_and_drop(self, rng: random.Random) -> None:
        """A scraped batch some of whose files `hoard put` also stored is ingested and dropped
        (`delete --batch`), then a batch holding the same files (a copy under another name) is
        ingested — its every node must be selectable (`check_batches`): the gc that follows must
        keep every object put and the second batch acknowledged, whatever fault hits it."""
        batch = self.scraped_batch(rng)
        folder = self.ssd / "3A" / batch.batch_id
        twin = self.ssd.parent / "gen" / f"{batch.batch_id}-again"  # (the ingest empties the folder)
        shutil.copytree(folder, twin)
        media = [folder / i.path for i in batch.items if i.kind != "sidecar"]
        chosen = rng.sample(media, max(1, len(media) // 3))
        self.collect_acks("put", self.hoard("put", "--json", *map(str, chosen)).stdout, 0)
        self.hoard("ingest", str(folder), "--here", timeout=300)
        self.hoard("delete", "--batch", batch.batch_id, "--yes")
        again = self.ssd / "3A" / twin.name
        twin.rename(again)
        if self.power:  # as a scraper's drop (scraped_batch)
            syncfs(self.ssd)
        self.hoard("ingest", str(again), "--here", timeout=300)
        self.acked.update({i.sha256: i.size for i in batch.items})
        self.batches.append(twin.name)

    def make_batch(self, rng: random.Random) -> Path:
        """A batch of new files: mostly small, a few duplicates of acknowledged content, now and
        then one of several MiB (a large object is streamed in pieces)."""
        self._files += 1
        root = self.home / "in" / f"b{self._files}"
        root.mkdir(parents=True)
        paths = []
        for i in range(rng.randint(50, 400)):
            size = rng.choice((rng.randint(0, 4096), rng.randint(4096, 65536), rng.randint(65536, 300_000)))
            data = rng.randbytes(size)
            p = root / f"f{i:04d}.bin"
            p.write_bytes(data)
            paths.append(p)
        if self.acked and rng.random() < 0.5:  # content the store already has, under a new name
            for j, p in enumerate(sorted(self.home.glob("in/*/*.bin"))[: rng.randint(1, 20)]):
                dup = root / f"dup{j:03d}.bin"
                dup.write_bytes(p.read_bytes())
                paths.append(dup)
        if rng.random() < 0.2:
            big = root / "large.bin"
            with open(big, "wb") as f:
                for _ in range(rng.randint(3, 10)):
                    f.write(rng.randbytes(1 << 20))
            paths.append(big)
        listing = root.parent / f"b{self._files}.list"
        listing.write_text("\n".join(map(str, paths)) + "\n")
        return listing

    def collect_acks(self, workload: str, stdout: str, code: int | None) -> None:
        """What a command acknowledged: each line `put --json` printed (a killed put's too); a
        whole batch when `ingest --here` ended with exit 0 (the batch is done: its manifest is
        registered and names every file)."""
        if workload in ("action", "action_rq"):
            self.collect_action(workload, stdout, code)
            return
        if workload == "ingest_rq":  # the worker's exit says nothing of the batch: its state does
            from hoardfs.base import config
            from hoardfs.jobs.ingest import load_state

            st = load_state(config.load(self.cfg_path), self.pending_batch_id)
            code = 0 if st is not None and st.status == "done" else 1
            workload = "ingest"
        if workload == "ingest":
            if code == 0:
                self.acked.update(self.pending_batch)
                if self.pending_batch_id not in self.batches:
                    self.batches.append(self.pending_batch_id)
            return
        if workload == "export":
            if code == 0:
                oid, zone = self.pending_output
                self.outputs[oid] = zone
            return
        if workload != "put":
            return
        for line in stdout.splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed put may be cut short: not acknowledged
            if r.get("status") in ("new", "existing"):
                self.acked[r["sha256"]] = r["size"]

    def collect_action(self, workload: str, stdout: str, code: int | None) -> None:
        """An action run is acknowledged once `hoard action run --json` printed it done (a line
        with "status": "done", whatever its exit), or — run by a worker — once its state says
        done; then each of its children (the run's `stored` work file: path → sha256, size) is
        an acknowledged object. The run is incremental (its `memo` work file): its worker made a
        child of each new input, and each input it reused has the live child an earlier run made
        — every input of a done run has its child."""
        from hoardfs.base import config
        from hoardfs.jobs.actions.state import load_state, read_work, work

        rid, n = self.pending_action
        done = False
        if workload == "action":
            for line in stdout.splitlines():
                with contextlib.suppress(json.JSONDecodeError, AttributeError):
                    doc = json.loads(line)
                    done = done or (doc.get("run") == rid and doc.get("status") == "done")
        else:
            st = load_state(config.load(self.cfg_path), rid)
            done = st is not None and st.status == "done"
        if not done:
            return
        cfg = config.load(self.cfg_path)
        inputs = list(read_work(cfg, rid, "inputs"))
        reused = dict(read_work(cfg, rid, "memo")["reused"]) if work(cfg, rid, "memo").is_file() else {}
        stored = read_work(cfg, rid, "stored") if work(cfg, rid, "stored").is_file() else {}
        if len(inputs) != n or len(stored) != n - len(reused):
            raise InvariantViolation(f"action run {rid} is done with {len(stored)} children stored for {len(inputs)} "
                                     f"inputs ({n} chosen), {len(reused)} of them reused")
        # (PostgreSQL stopped or frozen by the step's fault: check_invariants looks, after the heal)
        if self.pg.is_running() and not self.frozen:
            self.childless(rid, inputs, reused, "done")
        self.acked.update({sha: size for sha, size in stored.values()})
        self.action_runs[rid] = n - len(reused)
        self.action_inputs[rid] = (inputs, reused)

    def childless(self, rid: str, inputs: list[str], reused: dict[str, str], when: str) -> None:
        """Each input of run `rid` has a live child (not deleted, an edge ACTION_REL from the
        input) located `action:<run>/…` of the run that ran it: `rid`, or the earlier run the
        memo reused it from."""
        with psycopg.connect(self.database_url) as conn:
            live = {run: {r[0] for r in conn.execute(
                "SELECT encode(p.sha256, 'hex') FROM edge e JOIN relationship_type r USING (rel_id) "
                "JOIN node p ON p.node_id = e.parent_id JOIN physical_content pc ON pc.node_id = e.child_id "
                "WHERE r.name = %s AND NOT pc.is_deleted AND EXISTS (SELECT 1 FROM physical_path pp "
                "WHERE pp.node_id = e.child_id AND starts_with(pp.locator, %s))", [ACTION_REL, f"action:{run}/"])}
                for run in {rid, *reused.values()}}
        missing = sorted(h for h in inputs if h not in live[reused.get(h, rid)])
        if missing:
            raise InvariantViolation(f"action run {rid} is {when} but {len(missing)} of its {len(inputs)} inputs have "
                                     f"no live child (made by it or reused): {[(h, reused.get(h, rid)) for h in missing[:5]]}")

    def define_view(self, rng: random.Random) -> None:
        """A new view over some acknowledged objects; the previous one is removed, so its
        manifest objects become garbage for gc to compact away."""
        name = f"v{len(self.views) + 1}"
        shas = rng.sample(sorted(self.acked), min(len(self.acked), rng.randint(1, 50)))
        manifest = self.home / f"{name}.list"
        manifest.write_text("".join(f"{sha}  d{i % 7}/o{i}.bin\n" for i, sha in enumerate(shas)))
        self.hoard("view", "add", name, str(manifest))
        if self.views:
            self.hoard("view", "rm", self.views[-1])
        self.views.append(name)

    # -- faults and healing ---------------------------------------------------------
    def flip_byte(self, label: str, rng: random.Random) -> None:
        shards = sorted(self.lab.disks[label].mountpoint.glob("shards/*/*.shard"))
        if not shards:
            return
        victim = rng.choice(shards)
        size = victim.stat().st_size
        off = rng.randrange(64, size) if size > 64 else 0
        with open(victim, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
        self.log.append(f"  flipped a bit of {victim.name} at {off} on {label}")

    def flip_marks(self, label: str, rng: random.Random) -> bool:
        """Flip one bit of one line of the disk's marks log: half the time a digit of the stamp of
        a record that frees an object (`unroot`, `delete`, `drop`) moved days ahead — what once
        made one disk's log outvote the others' and lose an acknowledged object —, else
        any bit of any line. Returns whether a line was flipped."""
        root = self.lab.disks[label].mountpoint
        pointers = sorted(root.glob("batches/*.json")) + sorted(root.glob("views/*.json"))
        if pointers and rng.random() < 1 / 3:  # a batch or view pointer instead
            return self.flip_pointer(label, rng.choice(pointers), rng)
        log = root / "marks" / "marks.log"
        try:
            data = bytearray(log.read_bytes())
        except OSError:
            return False
        starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A and i + 1 < len(data)]
        lines = [i for i in starts if data[i:i + 19].isdigit()]
        freeing = [i for i in lines if data[i + 20:i + 27].split(b" ")[0] in (b"unroot", b"delete", b"drop")]
        if not lines:
            return False
        if freeing and rng.random() < 0.5:
            at = rng.choice(freeing) + rng.choice((2, 3))  # the digit worth 10^16 or 10^15 ns
            bits = [b for b in (1, 2, 4, 8) if data[at] < (data[at] ^ b) <= 0x39]
            if not bits:
                return False
            data[at] ^= rng.choice(bits)
        else:
            start = rng.choice(lines)
            end = data.index(b"\n", start) if b"\n" in data[start:] else len(data)
            at = rng.randrange(start, end)
            data[at] ^= 1 << rng.randrange(8)
        log.write_bytes(bytes(data))
        self.log.append(f"  flipped a bit of {label}'s marks log at {at}")
        return True

    def flip_pointer(self, label: str, pointer: Path, rng: random.Random) -> bool:
        """Flip one bit of a batch or view pointer file on one disk."""
        data = bytearray(pointer.read_bytes())
        if not data:
            return False
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        pointer.write_bytes(bytes(data))
        self.log.append(f"  flipped a bit of {label}'s pointer {pointer.parent.name}/{pointer.name} at {at}")
        return True

    def named(self) -> tuple[dict, dict]:
        """(batches, views) as the store names them: `hoard ls --json`, `hoard view list --json`."""
        batches = {}
        for line in self.hoard("ls", "--json").stdout.splitlines():
            doc = json.loads(line)
            batches[doc.pop("batch")] = doc
        return batches, json.loads(self.hoard("view", "list", "--json").stdout)

    def replace_all_due(self) -> bool:
        """One seed in three ends by replacing every disk (an rng of its own: plans stay as they were)."""
        return random.Random(self.seed ^ REPLACE_ALL).random() < 1 / 3

    def replace_all_then_rebuild(self) -> None:
        """Every disk replaced one by one by the documented procedure (docs/operations.md:
        add a new disk, `disks replace OLD NEW`, `disks forget OLD`, its [[disks]] table removed;
        the old disk wiped and kept as the next spare), then the index lost and rebuilt from the
        new disks alone: every acknowledged object (check_invariants), batch and view — with its
        latest definition — must be there."""
        from hoardfs.base import config

        if not self.spares:  # dead disks (eio) used them up: nothing to replace onto
            self.log.append("-- replace every disk: no spare left, skipped")
            return
        self.log.append("-- replace every disk, then lose the index")
        self.stop_mount()
        before = self.named()
        for old in list(self.disks):
            new = self.spares.pop(0)
            self.hoard("disks", "add", str(self.lab.disks[new].mountpoint), "--label", new)
            self.hoard("disks", "replace", old, new, "--yes", timeout=600)
            self.hoard("disks", "forget", old)
            self.drop_disk_table(old)
            gone = self.lab.disks[old].mountpoint
            for entry in gone.iterdir():  # wiped: a new disk when it is added again
                if entry.name != "lost+found":
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self.spares.append(old)
            self.disks = [new if d == old else d for d in self.disks]
        shutil.rmtree(config.load(self.cfg_path).index_dir)
        self.hoard("index", "rebuild")
        after = self.named()
        if after != before:
            raise InvariantViolation(f"after replacing every disk and rebuilding the index, the store names\n"
                                     f"  batches {sorted(after[0])} (before: {sorted(before[0])})\n"
                                     f"  views {after[1]}\n  (before: {before[1]})")

    def inject(self, step: Step, proc: subprocess.Popen) -> None:
        if step.fault == "kill9":
            os.killpg(proc.pid, signal.SIGKILL)
        elif step.fault == "kill_horse":  # the worker's forked child running the job (if one runs now)
            horses = _children(proc.pid)
            for pid in horses:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.log.append(f"  killed the work horse {horses or '(none running)'}")
        elif step.fault == "kill_mount" and self.mount_proc is not None:
            os.killpg(self.mount_proc.pid, signal.SIGKILL)
            self.mount_proc.wait()
            self.log.append("  killed the mount")
        elif step.fault == "vanish":
            self.lab.vanish(step.victim)
        elif step.fault == "eio":
            self.lab.fail_eio(step.victim)
        elif step.fault == "full":
            self.fill(step.victim)
        elif step.fault == "db_down":
            self.pg.stop()
            self.log.append("  PostgreSQL stopped")
        elif step.fault == "redis_down":
            self.redis.stop()
            self.log.append("  Redis stopped")
        elif step.fault == "powercut":
            self.power_cut(step, proc)

    def power_cut(self, step: Step, proc: subprocess.Popen) -> None:
        """The machine loses power now, and comes back. Every process of the world — the
        command and its children (a worker's horse), the mount, PostgreSQL and Redis — is
        stopped at one instant (SIGSTOP); what the command printed until then is acknowledged;
        every disk image, HDDs and the SSD, is copied as the disks hold it (`Lab.power_cut`);
        every process is killed -9, the copies take the disks' places at the same mount points
        (`Lab.reboot`: the ext4 journals replay) and PostgreSQL and Redis start again (they
        replay their WAL and append-only file). What an operator does next is `heal`'s."""
        during = proc.poll() is None
        sessions = {p.pid for p in (proc, self.mount_proc) if p is not None and p.poll() is None}
        servers = [pid for pid in (_pidfile(self.pg.data_dir / "postmaster.pid"),
                                   _pidfile(self.redis.data_dir / "redis.pid")) if pid]
        # the command's descendants too: an action's worker runs in a session of its own
        frozen = _freeze(lambda: _world_pids(sessions, servers + [proc.pid]))
        try:
            if during:  # its output file holds every line it wrote before the instant
                self.frozen = True
                try:
                    self.collect_acks(step.workload, (self.home / "out.txt").read_text(errors="replace"), None)
                finally:
                    self.frozen = False
            cut = self.lab.power_cut()
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()  # the harness's own children: reaped here, the others by init
        if self.mount_proc is not None:
            self.mount_proc.wait()
        _wait_gone(frozen)
        self.stop_mount()  # its process is dead: a lazy unmount of what it left
        alive = [*self.disks, *self.spares, "ssd"]  # a dead disk stays as it died
        self.lab.reboot(cut, alive)
        self.log.append(f"  power cut {'while it ran' if during else 'after it ended'}: {len(frozen)} processes "
                        f"stopped and killed, {len(alive)} disks rebooted from their copies (taken "
                        f"{cut.waited_s:.1f} s after the pause, copy {cut.copies})")
        self.start_servers(step)

    def start_servers(self, step: Step) -> None:
        """PostgreSQL and Redis start again after a cut; one that cannot is a violation, with its log."""
        from hoardfs.base.errors import HoardError

        for server, log in ((self.pg, self.pg.log_file), (self.redis, self.redis.data_dir / "redis.log")):
            try:
                server.start()
            except HoardError as e:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
                raise InvariantViolation(f"{step}: after the cut: {e.message}\n{tail}") from None

    def fill(self, label: str) -> None:
        """Another program takes every free byte of the disk."""
        mnt = self.lab.disks[label].mountpoint
        free = os.statvfs(mnt)
        filler = mnt / "someone-elses-file"
        with open(filler, "ab") as f:
            try:
                os.posix_fallocate(f.fileno(), filler.stat().st_size, free.f_bavail * free.f_frsize)
            except OSError:
                pass  # as much as there was
        self.log.append(f"  filled {label} ({free.f_bavail * free.f_frsize >> 20} MiB)")

    def fill_zones(self) -> None:
        """Someone else's files take the output zones past their deny threshold (92 % of the
        quota): new stages, exports and ingest packages must be refused before they start."""
        for zone in ("3B", "3C", "3D"):
            filler = self.ssd / zone / "someone-elses-file"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, int(0.92 * (1 << 30)))
        self.log.append("  filled zones 3B, 3C and 3D to 92 % of their quota")

    def health_names(self, what: str, step: Step) -> None:
        """`hoard health` exits 4 with a problem naming `what` (a disk's label, `database:`, `redis:`)."""
        res = self.hoard("health", "--json", ok=(0, 4))
        problems = json.loads(res.stdout)["problems"]
        if res.returncode != 4 or not any(what in p for p in problems):
            raise InvariantViolation(f"{step}: `hoard health` does not name {what}: {problems}")

    def health_after_cut(self, step: Step) -> None:
        """Back from a power cut, before anyone acts: every problem `hoard health` reports is
        true. Each kind a cut may leave is checked against the index, the zones or the job
        state (`_cut_claim_true`); every disk and server is back, so one naming a disk, the
        database or Redis as down is false, and so is a kind the harness cannot check."""
        res = self.hoard("health", "--json", ok=(0, 4))
        problems = [p for p in json.loads(res.stdout)["problems"] if p not in self.baseline]
        self.log.append(f"  health after the cut: {problems}")
        self.cut_problems = problems
        false = [p for p in problems if not self._cut_claim_true(p)]
        if false:
            raise InvariantViolation(f"{step}: after the cut `hoard health` reports what is not so (or what the "
                                     f"harness cannot check): {false}")

    def _cut_claim_true(self, problem: str) -> bool:
        from hoardfs.base import config
        from hoardfs.fsd.outputs import zones
        from hoardfs.fsd.store import Store
        from hoardfs.jobs import ingest, outputs
        from hoardfs.jobs.actions.state import load_state as action_state

        cfg = config.load(self.cfg_path)
        if m := re.match(r"store: (\d+) open shards have no writer left \(e\.g\. ([0-9a-f]+)\)", problem):
            # every process of the world is dead: an open shard has no writer
            with Store.open(cfg, writable=False) as store:
                unsealed = {meta.hex for meta in store.index.iter_shards() if not meta.sealed}
            return len(unsealed) == int(m[1]) and m[2] in unsealed
        if m := re.match(r"store: (\d+) shards \(.*\) are below their replica target", problem):
            with Store.open(cfg, writable=False) as store:
                below = sum(1 for meta in store.index.iter_shards()
                            if meta.sealed and store.copies_of(meta) < store.target(meta.klass))
            return below == int(m[1])
        if m := re.match(r"zone (3[A-D]): the reservation of job .* for (\S+) is stale \(pid (\d+)", problem):
            held = (zones.reservations_dir(cfg, m[1]) / f"{m[2]}.json").is_file()
            return held and not Path(f"/proc/{m[3]}").exists()
        if m := re.match(r"zone (3[A-D]): job \S+ died \(pid (\d+) on .*\) after sealing output (\S+), before "
                         r"releasing its reservation", problem):
            held = (zones.reservations_dir(cfg, m[1]) / f"{m[3]}.json").is_file()
            return held and not Path(f"/proc/{m[2]}").exists() and (self.ssd / m[1] / m[3] / "_SEALED").is_file()
        if m := re.match(r"action run (\S+): (\S+) at (\S+): (?:its poll|the job of its next step) \(\S+\) is not in "
                         r"Redis", problem):
            import redis  # deferred: only this claim asks Redis

            from hoardfs.jobs.actions.state import job_id

            st = action_state(cfg, m[1])  # and no job of its step waits in Redis (the cut lost it)
            conn = redis.Redis.from_url(cfg.redis_url)
            waiting = [jid for jid in (job_id(m[1], m[3], sfx) for sfx in ("", "-poll", "-release"))
                       if conn.exists(f"rq:job:{jid}") and conn.hget(f"rq:job:{jid}", "status") in
                       (b"queued", b"scheduled", b"deferred")]
            return st is not None and (st.status, st.step) == (m[2], m[3]) and not waiting
        if m := re.match(r"zone (3[A-D]): output (\S+) is incomplete", problem):
            final, tmp = self.ssd / m[1] / m[2], self.ssd / m[1] / ".tmp" / m[2]
            return (final.is_dir() and not (final / "_SEALED").exists()) or tmp.is_dir()
        if m := re.match(r"ingest (\S+): (queued|running) at step \S+ but ", problem):
            st = ingest.load_state(cfg, m[1])  # and no worker runs: the cut killed every one
            return st is not None and st.status == m[2]
        if m := re.match(r"action run (\S+): failed at (\S+): the process running step \S+ stopped", problem):
            st = action_state(cfg, m[1])  # "running" in its state, and no process runs it: the cut killed every one
            return st is not None and st.status == "running" and st.step == m[2]
        if m := re.match(r"(stage|export) (\S+): interrupted", problem):
            st = outputs.load_state(cfg, m[2])  # and no process runs it: the cut killed every one
            return st is not None and st.status == "running"
        if m := re.match(r"store: (.+?): left by an index rebuild or restore that was killed \(none runs now", problem):
            # an index rebuild's or restore's work folder beside the index, and none runs: the cut killed every one
            from hoardfs.fsd.core.layout import INDEX_WORK, index_work

            work = Path(m[1])
            return work in {index_work(cfg, kind) for kind in INDEX_WORK} and (work.exists() or work.is_symlink())
        if m := re.match(r"disk (\S+): its marks log holds (\d+) record\(s\) stamped after anything the index gave "
                         r"out", problem):
            # a writer appends its records to every disk before its commit: the cut came between
            with Store.open(cfg, writable=False) as store:
                raw = store.index.get_meta("marks_ns") if store.index.meta is not None else None
            return m[1] in self.lab.disks and _stamped_after(self.lab.disks[m[1]].mountpoint, int(raw or 0)) == int(m[2])
        return False

    def heal(self, step: Step) -> None:
        if step.fault == "vanish":
            self.lab.reappear(step.victim)
            state = self.disk_state(step.victim)
            if state != "active":
                self.hoard("disks", "activate", step.victim)
        elif step.fault == "eio":
            spare = self.spares.pop(0)
            self.hoard("disks", "add", str(self.lab.disks[spare].mountpoint), "--label", spare)
            self.hoard("disks", "replace", step.victim, spare, "--yes", timeout=600)
            self.hoard("disks", "forget", step.victim)
            self.drop_disk_table(step.victim)  # what `disks forget` tells the operator to do
            self.disks = [spare if d == step.victim else d for d in self.disks]
        elif step.fault == "flip":
            if step.marks:  # the index lost while a log is damaged: the rebuild must not obey it
                self.stop_mount()
                from hoardfs.base import config

                shutil.rmtree(config.load(self.cfg_path).index_dir)
                self.hoard("index", "rebuild")
                if step.workload == "mount_read":  # (the step's re-run reads through it)
                    self.start_mount()
            # the damage itself is repaired by following the advice the tools give (follow_advice)
        elif step.fault == "full":
            (self.lab.disks[step.victim].mountpoint / "someone-elses-file").unlink()
            if self.disk_state(step.victim) != "active":
                self.hoard("disks", "activate", step.victim)
        elif step.fault == "db_down":
            self.pg.start()
        elif step.fault == "redis_down":
            self.redis.start()
        elif step.fault == "zone_full":
            for zone in ("3B", "3C", "3D"):
                (self.ssd / zone / "someone-elses-file").unlink()
        elif step.fault == "kill_mount":  # what an operator (or systemd's ExecStopPost) does
            self.stop_mount()
            self.start_mount()
        elif step.fault == "powercut":  # docs/operations.md, "After a power loss" (the servers run again)
            self.hoard("replicate")  # seals what the cut left open, brings shards to their target
            for problem in self.cut_problems:  # an ingest whose job Redis lost, or whose worker died
                if m := re.search(r"`hoard ingest --resume (\S+)`", problem):
                    self.hoard("ingest", "--resume", m[1], "--here")
            if step.workload == "mount_read":  # hoard-mount.service comes up at boot
                self.start_mount()

    def drop_disk_table(self, label: str) -> None:
        """Remove the [[disks]] table of `label` from hoard.toml (up to the next table)."""
        out, table, dropped = [], [], False
        for line in self.cfg_path.read_text().splitlines() + ["[end]"]:
            if line.startswith("[") and table:
                if f'label = "{label}"' in table:
                    dropped = True
                else:
                    out += table
                table = []
            (table if line == "[[disks]]" or table else out).append(line)
        assert dropped, f"no [[disks]] table for {label} in {self.cfg_path}"
        self.cfg_path.write_text("\n".join(out[:-1]) + "\n")

    def disk_state(self, label: str) -> str:
        res = self.hoard("disks", "list", "--json")
        return next(d["state"] for d in json.loads(res.stdout)["disks"] if d["label"] == label)

    # -- invariants -----------------------------------------------------------------
    def check_invariants(self, step: Step) -> None:
        from hoardfs.base import config
        from hoardfs.fsd.store import Store

        self.hoard("replicate")  # the store may lag its replica target after a fault; not a loss
        with Store.open(config.load(self.cfg_path), writable=False) as store:
            lost = []
            for sha, size in sorted(self.acked.items()):
                try:
                    data = store.get(sha)
                except Exception as e:  # any failure to read it back is a loss
                    lost.append(f"{sha}: {type(e).__name__}: {e}")
                    continue
                if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                    lost.append(f"{sha}: read back {len(data)} bytes with another sha256")
            if lost:
                raise InvariantViolation(f"after {step}: {len(lost)} of {len(self.acked)} acknowledged objects "
                                         "do not read back:\n  " + "\n  ".join(lost[:20]))
        check = self.hoard("check", "--json", ok=None)
        if check.returncode != 0:
            raise InvariantViolation(f"after {step}: `hoard check` exit {check.returncode}:\n"
                                     f"{check.stdout[-3000:]}{check.stderr[-2000:]}")
        seen = self.observe(step, "after the heal")
        left = {tool: o.problems for tool, o in seen.items() if o.problems or o.code != 0}
        if left:  # no alarm without a cause: the heal and the advice removed every cause
            raise InvariantViolation(f"after {step} and its heal: still reported: {json.dumps(left, indent=1)}")
        self.check_outputs(step)
        self.check_actions(step)
        self.check_batches(step)

    def registered(self) -> dict[str, int]:
        """Each batch the store registers → how many nodes `hoard select --batch` must return: the
        distinct files its manifest names less those the store hides (`hoard delete --node`)."""
        from hoardfs.base import config
        from hoardfs.fsd.core.held import iter_files
        from hoardfs.fsd.store import Store

        want = {}
        with Store.open(config.load(self.cfg_path), writable=False) as store:
            for batch_id, info in store.index.iter_batches():
                files = {sha for _path, sha, _size in iter_files(store.get, info["manifest"])}
                want[batch_id] = len(files - store.index.marked_among(store.index.hidden, files))
        return want

    def check_batches(self, step: Step | str) -> None:
        """Every batch the store registers is selectable whole (`registered`). The count is the
        selector `hoard select --batch B` runs (hoardfs.sql.selectors.query_nodes), asked in this process:
        a `hoard` process per batch after every step would cost more than the step."""
        from hoardfs.sql.selectors import parse_selector, query_nodes

        want = self.registered()
        with psycopg.connect(self.database_url) as conn:
            got = {b: len(query_nodes(conn, parse_selector({"batches": [b]})).sha256) for b in want}
        short = {b: f"{got[b]} of {n}" for b, n in want.items() if got[b] != n}
        if short:
            raise InvariantViolation(f"after {step}: batches the store registers are not selectable whole "
                                     f"(`hoard select --batch` returns): {short}")

    def delete_every_batch(self) -> None:
        """At the end of a seed: `hoard delete --batch B` of every batch the store registers exits
        0, or names a `hoard` step (FOLLOW) after which it does; then none is registered, and
        `hoard check` (with the database) finds everything in agreement."""
        for batch_id in sorted(self.registered()):
            res = self.hoard("delete", "--batch", batch_id, "--yes", ok=None)
            if res.returncode == 0:
                continue
            steps = [a for a in map(followable, next_steps(res.stderr)) if a]
            if not steps:
                raise InvariantViolation(f"`hoard delete --batch {batch_id}` exit {res.returncode} naming no step "
                                         f"that makes it succeed:\n{res.stderr[-2000:]}")
            for argv in steps:
                self.hoard(*argv, ok=None, timeout=600)
            again = self.hoard("delete", "--batch", batch_id, "--yes", ok=None)
            if again.returncode != 0:
                raise InvariantViolation(f"`hoard delete --batch {batch_id}` exit {again.returncode} after "
                                         f"{[' '.join(a) for a in steps]}, the steps it named:\n{again.stderr[-2000:]}")
        left = self.registered()
        if left:
            raise InvariantViolation(f"batches still registered after `hoard delete --batch` of each: {sorted(left)}")
        self.batches.clear()
        check = self.hoard("check", "--json", ok=None)
        if check.returncode != 0:
            raise InvariantViolation(f"after deleting every batch: `hoard check` exit {check.returncode}:\n"
                                     f"{check.stdout[-3000:]}{check.stderr[-2000:]}")

    def check_actions(self, step: Step) -> None:
        """Every action run: none reported running (no process runs one between steps) and none
        failed (each was re-run to completion); every run acknowledged done wrote exactly once
        what one run writes — a child per input its worker ran on (the memo's new ones: located
        `action:<run>/…`, labelled, an edge from its input), a result row per such input, one
        `done` action_event (the failed endings of faulted attempts aside) — every input it
        reused still has the live child of the run that made it, and it left nothing in
        3C (the reservation's release is check_outputs')."""
        if not self.action_runs and not (self.ssd / "state" / "actions").is_dir():
            return
        runs = json.loads(self.hoard("action", "runs", "--json").stdout)["runs"]
        bad = [f"{r['run']}: {r['status']} at {r['step']} ({r['error']})" for r in runs if r["status"] != "done"]
        if bad:
            raise InvariantViolation(f"after {step}: action runs not done: {bad}")
        with psycopg.connect(self.database_url) as conn:
            for rid, n in sorted(self.action_runs.items()):
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT p.node_id), "
                    " (SELECT count(*) FROM edge e JOIN relationship_type r USING (rel_id) WHERE r.name = %s "
                    "   AND e.child_id IN (SELECT node_id FROM physical_path WHERE locator LIKE %s)), "
                    " (SELECT count(*) FROM label l WHERE l.key = 'made_by' AND l.value = 'chaos' "
                    "   AND l.node_id IN (SELECT node_id FROM physical_path WHERE locator LIKE %s)), "
                    " (SELECT count(*) FROM result_canny WHERE batch_id = %s), "
                    " (SELECT count(*) FROM action_event WHERE batch_id = %s AND status = 'done'), "
                    " (SELECT count(*) FROM action_event WHERE batch_id = %s "
                    "   AND status NOT IN ('done', 'failed', 'cancelled')) "
                    "FROM physical_path p WHERE p.locator LIKE %s",
                    [ACTION_REL, f"action:{rid}/%", f"action:{rid}/%", rid, rid, rid, f"action:{rid}/%"]).fetchone()
                # one `done`; a faulted attempt before it may have ended `failed` (its own event)
                want = (n, n, n, n, n, 1, 0)
                if tuple(row) != want:
                    names = ("locators", "child nodes", "edges", "labels", "result rows", "done events",
                             "other events")
                    raise InvariantViolation(f"after {step}: action run {rid} ({n} inputs) is not there exactly once: "
                                             + ", ".join(f"{k} {g}" + (f" (want {w})" if g != w else "")
                                                         for k, g, w in zip(names, row, want, strict=True)))
                self.childless(rid, *self.action_inputs[rid], f"done (after {step})")
                left = [p for p in (self.ssd / "3C" / rid, self.ssd / "3C" / ".tmp" / rid) if p.exists()]
                if left:
                    raise InvariantViolation(f"after {step}: action run {rid} is done but 3C still holds {left}")

    def observe(self, step: Step, when: str) -> dict[str, Observed]:
        """What `hoard health`, `hoard verify` and `hoard check` report now (in that order: health
        opens the store read-only and sees it as it is; verify opens it as a writer — the catch-up
        every writer does (a disk's marks log or pointers behind, an open shard without a writer)
        runs before it judges — and check, after it, judges the state verify judged). check runs
        without the database (verify does not judge it; after the heal `check_invariants` runs
        it with the database). Every problem must name a next step (`next_steps`)."""
        health = self.hoard("health", "--json", ok=(0, 4))
        doc = json.loads(health.stdout)
        seen = {"health": Observed(health.returncode if [p for p in doc["problems"] if p not in self.baseline] else 0,
                                   [p for p in doc["problems"] if p not in self.baseline], {},
                                   {d["label"]: d.get("state", "active") for d in doc["disks"]})}
        verify = self.hoard("verify", "--json", ok=None)
        try:
            rep = json.loads(verify.stdout)
            seen["verify"] = Observed(verify.returncode, rep["bad"], rep.get("kinds", {}), advice=verify.stderr)
        except (json.JSONDecodeError, KeyError):
            seen["verify"] = Observed(verify.returncode, [verify.stderr.strip()] if verify.returncode else [], {},
                                      advice=verify.stderr)
        check = self.hoard("check", "--json", "--no-database", ok=None)
        try:
            rep = json.loads(check.stdout)
            seen["check"] = Observed(check.returncode, rep["problems"], rep["counts"])
        except (json.JSONDecodeError, KeyError):
            seen["check"] = Observed(check.returncode, [check.stderr.strip()] if check.returncode else [], {})
        for tool, o in seen.items():
            if o.code not in (0, 4, 5):  # (4: health's "needs attention", 5: check's and verify's)
                raise InvariantViolation(f"{step}, {when}: `hoard {tool}` exit {o.code}: {o.problems}")
            self.alarms += len(o.problems)
            bare = [p for p in o.problems if not next_steps(p if tool != "verify" else o.advice)]
            if bare:
                raise InvariantViolation(f"{step}, {when}: `hoard {tool}` reports problems with no next step: {bare}")
        self.log.append(f"  {when}: " + "; ".join(f"{tool} {o.code} ({len(o.problems)})" for tool, o in seen.items()))
        self.log += [f"    {tool}: {p[:300]}" for tool, o in seen.items() for p in o.problems[:3]]
        return seen

    def check_agrees_with_verify(self, step: Step, seen: dict[str, Observed]) -> None:
        """check's exit code and verify's agree (both 5 or both 0), except where one is blind by
        design: check judges the index against itself and the database (CHECK_ONLY) without
        reading a replica's bytes; verify reads the bytes inside each replica (VERIFY_ONLY: a
        flipped byte in a whole file, found when a footer of another replica reads) and a
        replica on a disk verify's own read failed (check leaves a failed or missing disk's
        replicas to health, which names the disk)."""
        check, verify = seen["check"], seen["verify"]
        if (check.code == 5) == (verify.code == 5):
            return
        if check.code == 5 and set(check.kinds) <= CHECK_ONLY:
            return
        down = {label for label, state in seen["health"].disks.items() if state != "active"}
        on_down = all(any(f" on {label}:" in line for label in down) for line in verify.problems)
        if verify.code == 5 and (set(verify.kinds) <= VERIFY_ONLY or (verify.problems and on_down)):
            return
        raise InvariantViolation(f"{step}, after the fault: `hoard check` exit {check.code} ({check.kinds}: "
                                 f"{check.problems[:5]}) but `hoard verify` exit {verify.code} ({verify.kinds}: "
                                 f"{verify.problems[:5]})")

    def follow_advice(self, step: Step) -> None:
        """Once the fault's outside cause is healed: whatever health, check and verify still
        report, the harness does what it says — each `hoard` command a problem names (FOLLOW),
        once, in the order named (`ingest --resume B` with `--here`: no worker runs) — and then
        every problem whose advice it followed must be gone. Two rounds (one piece of advice
        may be "see `hoard check`", whose own line names the fix). A problem whose advice the
        harness does not run (a placeholder to fill in, the interrupted command, an operator's
        hand) is left to the step's re-run: after it `check_invariants` wants nothing reported."""
        seen = self.observe(step, "after the outside heal")
        for round_ in (1, 2):
            followed: list[tuple[str, str]] = []
            commands: list[list[str]] = []
            for tool, o in seen.items():
                for p in o.problems:
                    argvs = [a for a in map(followable, next_steps(o.advice if tool == "verify" else p)) if a]
                    if argvs:
                        followed.append((tool, p))
                    commands += [a for a in argvs if a not in commands]
            if not commands:
                return
            for argv in commands:
                key = " ".join(argv[:2] if argv[0] in ("index", "disks", "zones", "ingest") else argv[:1])
                self.followed[key] = self.followed.get(key, 0) + 1
                self.hoard(*argv, ok=None, timeout=600)
            seen = self.observe(step, f"after following the advice (round {round_})")
            still = [(tool, p) for tool, p in followed if p in seen[tool].problems]
            if still and round_ == 2:
                raise InvariantViolation(f"{step}: after following {[' '.join(c) for c in commands]} these are still "
                                         f"reported: {still}")

    def check_outputs(self, step: Step) -> None:
        """No reservation outlives its job; every acknowledged output is sealed and matches its
        manifest; no output is reported done without its seal."""
        from hoardfs.fsd.outputs.seal import OutputIncomplete, check_sealed

        zones = json.loads(self.hoard("zones", "--json").stdout)["zones"]
        held = [f"{z}: {r['id']} ({r['job']})" for z, s in zones.items() for r in s["reservations"]]
        if held:
            raise InvariantViolation(f"after {step}: reservations outlive their jobs: {held}")
        for oid, zone in sorted(self.outputs.items()):
            try:
                check_sealed(self.ssd / zone / oid, verify=True)
            except OutputIncomplete as e:
                raise InvariantViolation(f"after {step}: acknowledged output {zone}/{oid}: {e.message}") from None
        for state in sorted((self.ssd / "state" / "outputs").glob("*.json")):
            doc = json.loads(state.read_text())
            zone = "3C" if doc["spec"]["kind"] == "stage" else "3D"
            if doc["status"] == "done" and not (self.ssd / zone / state.stem / "_SEALED").is_file():
                raise InvariantViolation(f"after {step}: {doc['spec']['kind']} {state.stem} is reported done "
                                         "but is not sealed")


#: what `hoard check` judges and `hoard verify` does not, by design: the index against itself
#: (entries that do not decode, point nowhere or past their shard, marks of objects not in it,
#: the objects it maps to a shard against its footer's count, disks' used bytes, manifests)
#: and the database (`check_agrees_with_verify`)
CHECK_ONLY = frozenset({"malformed", "dangling", "out of bounds", "stale mark", "unindexed", "record count",
                        "used bytes", "manifest", "database", "replicas"})
#: what `hoard verify` judges and `hoard check` does not: the bytes inside a replica file of the
#: right size (check reads sizes and the first footer that reads)
VERIFY_ONLY = frozenset({"replica bytes"})
#: an operator's next step that names no `hoard` command (a disk to mount again, a file to remove)
OPERATOR_STEPS = ("mount it again", "remove it", "start it with", "free space", "add a disk", "put its [[disks]] "
                  "table back", "the next writer", "run the job again", "fix database_url", "fix redis_url")
#: a command a problem names as what would not help: a full zone's refusal (an action run failed
#: at its stage says it) names `hoard zones clean` only to say nothing in the zone is for it
NOT_ADVICE = r"Nothing in it is a sealed output `hoard zones clean` could remove"
#: `hoard` commands the harness follows when a problem names them (others change the world the
#: harness keeps track of — disks replaced, servers — and are its heal's)
FOLLOW = (("replicate",), ("verify",), ("index", "rewrite-marks"), ("index", "rewrite-pointers"),
          ("index", "rebuild"), ("index", "migrate"), ("gc",), ("ingest", "--resume"), ("disks", "activate"), ("zones", "clean"),
          ("check",), ("health",))


@dataclass
class Observed:
    """What one of health, verify, check reported: its exit code, its problem lines, their kinds
    (check's `counts`, verify's `kinds`), the disks' states (health), verify's advice (stderr)."""
    code: int
    problems: list[str]
    kinds: dict[str, int]
    disks: dict[str, str] = field(default_factory=dict)
    advice: str = ""


def next_steps(text: str) -> list[str]:
    """The `hoard …` commands `text` names, in order (not one it names as no help: NOT_ADVICE);
    [""] for an operator's step with no command (OPERATOR_STEPS); [] when it names none."""
    cmds = re.findall(r"`(hoard [^`]+)`", re.sub(NOT_ADVICE, "", text))
    return cmds or ([""] if any(p in text for p in OPERATOR_STEPS) else [])


def followable(cmd: str) -> list[str] | None:
    """The argv of a named `hoard` command the harness runs (FOLLOW), or None: not one of those,
    or one with a placeholder to fill in (LABEL, ID, …) or an ellipsis."""
    argv = cmd.split()[1:]
    if not argv or "…" in cmd or "..." in cmd or any(re.fullmatch(r"[A-Z][A-Z_]*", a) for a in argv):
        return None
    if not any(tuple(argv[:len(f)]) == f for f in FOLLOW):
        return None
    if argv[:2] == ["ingest", "--resume"] and "--here" not in argv:
        argv.append("--here")  # the queued form needs a worker: run in place
    return argv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "HOARD_DATABASE_URL", "HOARD_REDIS_URL")}
    return env | {"COLUMNS": "200", "PYTHONPATH": str(REPO)}


def _stamped_after(disk_root: Path, stamp: int) -> int:
    """How many whole, checked lines of the disk's marks log (`<stamp> <op> <sha256> <xxh3-64 of
    the first three>` and its newline, fsd/core/marks.py) other than a snapshot's `end` are
    stamped after `stamp` — read here from the file, not through the store's reader. A last
    line without its newline is an append the cut tore (its page reached the disk, the next
    did not), even when its check holds: no record, as a rebuild and `hoard health` take it."""
    import xxhash  # deferred: only this claim reads a marks log

    n = 0
    with contextlib.suppress(FileNotFoundError), open(disk_root / "marks" / "marks.log", "rb") as f:
        for raw in f:
            fields = raw.split()
            if not raw.endswith(b"\n") or len(fields) != 4 or not fields[0].isdigit() or fields[1] == b"end":
                continue
            if xxhash.xxh3_64_hexdigest(b" ".join(fields[:3])) == fields[3].decode("ascii", "replace"):
                n += int(fields[0]) > stamp
    return n


def _pidfile(path: Path) -> int | None:
    """The pid on the first line of a server's pid file, if it names a live process."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _world_pids(sessions: set[int], roots: list[int]) -> set[int]:
    """Every process in one of `sessions` (the command's, the mount's) or below one of `roots`
    (the servers), from /proc."""
    parent, members = {}, set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid, sid = int(d.name), int(fields[1]), int(fields[3])
        parent[pid] = ppid
        if sid in sessions:
            members.add(pid)
    for pid in parent:
        p, seen = pid, 0
        while p > 1 and seen < 64:
            if p in roots:
                members.add(pid)
                break
            p, seen = parent.get(p, 0), seen + 1
    return members


def _freeze(find) -> set[int]:
    """SIGSTOP every process `find()` names, again until it names no new one (a fork under
    way), then wait until every thread has stopped (a thread in an uninterruptible wait —
    a reader on the stopped FUSE mount — may not: after 2 s it counts as stopped, since it
    cannot return to user code before it stops)."""
    done: set[int] = set()
    while new := find() - done:
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        done |= new
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not all(stopped(pid) for pid in done):
        time.sleep(0.001)
    return done


def _wait_gone(pids: set[int], timeout: float = 30) -> None:
    """Until every one of `pids` has exited and been reaped: a server's start after the cut
    takes a zombie for its running self (pg_ctl status: the pid answers kill 0)."""
    deadline = time.monotonic() + timeout
    while left := [pid for pid in pids if Path(f"/proc/{pid}").exists()]:
        if time.monotonic() > deadline:
            raise InvariantViolation(f"processes {left} outlive their kill -9 by {timeout} s")
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (all its threads')."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _dead_mount(path: Path) -> bool:
    """A FUSE mount whose process died: stat answers ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == 107  # ENOTCONN
    return False


def _stack(pid: int) -> str:
    """The Python stacks of a hung process (py-spy, a dev dependency), for the failure message."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return "(no py-spy to show where it hangs)"
    return subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True).stdout[-6000:]
