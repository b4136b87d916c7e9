"""Stage and export on another host (docs/scale-out.md, "Workers on other hosts").

    hoard stage ab-0042 --layout by_sha256 --nodes shas.txt --remote     (on the store's server)
    hoard worker                                                         (on a host whose hoard.toml
                                                                          says [worker] remote = true)

The store's server plans the output (the selection from PostgreSQL, the layout's paths) and
looks every object up in its index: where each record lies — shard, offset, length — and which
S3 disks hold a replica of that shard. An output with an object that no S3 disk holds (its
replicas only on the server's own HDDs) is refused there, in one line: only jobs a remote
worker can serve reach the `remote` queue. The job carries that plan; the remote worker
never opens the index (it lives on the server's SSD): it records the request in its own
`<ssd>/state/outputs/`, reads each record with a ranged GET from its S3 disk of the same
label, checks it (the record header names the object; its xxh3 and sha256 are checked as any
read checks them) and writes the output into its own 3C or 3D through the same reserve, copy
and seal as a local run (hoardfs.fsd.outputs.write). A job re-queued after its host died (hoardfs.jobs.reaper)
runs the same request again: on a host that already holds the sealed output it is reported
done, a partial tree is resumed (what checks is kept), and on another host it is made there —
nothing of a stage or an export is written outside the host's own zone.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rq import get_current_job

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.paths import display, hostile_reason
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.records import ITER_READ, DataError, checked_header, verify_record
from hoardfs.fsd.outputs.materialize import Item
from hoardfs.jobs import outputs

log = logging.getLogger(__name__)

#: the queue only remote workers serve (not one of hoardfs.jobs.queues.QUEUES: a worker of the store's
#: server serves those, and a job here is meant for another host's zone)
QUEUE = "remote"
#: records longer than this are read in pieces of it (bounded memory), as `Store.iter_object`
#: reads them; shorter ones whole
PIECE = ITER_READ


class RemoteError(HoardError):
    exit_code = ExitCode.UNAVAILABLE


def job_id(kind: str, output_id: str) -> str:
    return f"remote-{kind}-{output_id}"


# -- on the store's server: plan and locate ----------------------------------------------------

def locate(cfg: Settings, spec: outputs.OutputSpec) -> dict[str, Any]:
    """The plan a remote worker runs: the output's items and, for each object, its record's
    place (shard hex, offset, length) and the labels of the S3 disks holding a replica.
    RemoteError (one line) when an object is on no S3 disk, or the output is not a copy."""
    from hoardfs.fsd.store import Store  # deferred: opened only to look the objects up

    if spec.mode != "copy":
        raise RemoteError(f"{spec.kind} {spec.id}: --remote copies (--mode copy); a view lives in this server's "
                          "mount", ExitCode.USAGE)
    if spec.stage is not None:  # its files are made from the objects' bytes, which only this server reads
        raise RemoteError(f"{spec.kind} {spec.id}: its stage_layout makes files beside the inputs (index, "
                          "parent_template, meta_template, labels or convert), which the store's server makes: run "
                          "it without --remote", ExitCode.USAGE)
    items, n_nodes = outputs.plan_items(cfg, spec)
    s3 = {d.label for d in cfg.disks if d.kind == "s3"}
    where: dict[str, list[Any]] = {}
    away: list[str] = []
    with Store.open(cfg, writable=False) as store:
        labels = {rec.uuid: rec.label for rec in store.records.values()}
        found = store.index.lookup_many({bytes.fromhex(it.sha256) for it in items})
        for it in items:
            if it.sha256 in where:
                continue
            loc = found.get(bytes.fromhex(it.sha256))
            meta = store.index.get_shard(loc.shard_id) if loc is not None else None
            if loc is None or meta is None:
                raise RemoteError(f"{spec.kind} {spec.id}: object {it.sha256} is not in the store; nothing was "
                                  f"queued — narrow the selection (`hoard info {it.sha256}`)", ExitCode.DATA)
            on = sorted(labels[u] for u in meta.replicas if labels.get(u) in s3 and meta.sealed)
            if not on:
                away.append(it.sha256)
            where[it.sha256] = [meta.hex, loc.offset, loc.length, on]
    if away:
        raise RemoteError(f"{spec.kind} {spec.id}: {len(away)} of {len(where)} objects are on no S3 disk (only on "
                          f"this server's disks), e.g. {away[0]}; a remote worker cannot read them — `hoard replicate` "
                          "onto the S3 disk first, or run it here without --remote", ExitCode.UNAVAILABLE)
    return {"nodes": n_nodes, "items": [[it.path, it.sha256, it.size,
                                         it.sidecar.decode() if it.sidecar is not None else None] for it in items],
            "where": where}


def enqueue(cfg: Settings, spec: outputs.OutputSpec, conn: Any) -> str:
    """Plan and locate here, then queue the job on `remote` (once: a job of the same id that
    waits or runs is kept)."""
    # deferred: hoardfs.jobs.queues loads RQ, and the key is read only where a job is queued
    from hoardfs.jobs import jobkey
    from hoardfs.jobs.queues import enqueue_once

    plan = locate(cfg, spec)
    return enqueue_once(conn, QUEUE, "hoardfs.jobs.remote.run_output", None, spec.model_dump(), plan,
                        job_id=job_id(spec.kind, spec.id), timeout=outputs.JOB_TIMEOUT_S,
                        description=f"{spec.kind} {spec.id} (remote)", key=jobkey.of(cfg))


# -- on the remote host: run the plan ----------------------------------------------------------

def run_output(config_path: str | None, spec_doc: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """RQ job (queue `remote`): the located plan of a stage or export, run against this host's
    own configuration (`config_path`: the worker's, given by hoardfs.jobs.guard). Idempotent: a sealed
    output of the same request is reported done; a partial one resumed."""
    cfg = config_mod.load(config_path)
    try:
        spec = outputs.OutputSpec.model_validate(spec_doc)
    except ValueError as e:
        raise RemoteError(f"remote job: not a stage/export request ({str(e).splitlines()[0]})", ExitCode.USAGE) from None
    try:
        return make_planned(cfg, spec, plan)
    except HoardError as e:
        keep_exit_code(e)
        raise


def keep_exit_code(e: HoardError) -> None:
    """The exit code of the error a job fails with, in its meta, for `--wait` on the server (RQ
    keeps no exit code of a job's own)."""
    if (job := get_current_job()) is not None:
        job.meta["exit_code"] = int(e.exit_code)
        job.save_meta()


def make_planned(cfg: Settings, spec: outputs.OutputSpec, plan: Any) -> dict[str, Any]:
    """The located plan of `spec` (checked first: `checked_plan`) made in this host's zone —
    recorded, reserved, read off the S3 disks, sealed; the output's report. Also the stage of
    an action run on this host (hoardfs.jobs.actions.remote)."""
    items, where, n_nodes = checked_plan(spec, plan)
    outputs.submit(cfg, spec)

    def body(cfg: Settings, spec: outputs.OutputSpec, progress: Callable[[int, int], None] | None,
             started: Callable[[], None]) -> dict[str, Any]:
        with LocatedReader(cfg, where) as reader:
            return outputs.copy_planned(cfg, spec, reader, items, n_nodes, progress, started)

    return outputs.run(cfg, spec.id, keep_refusal=True, body=body)


_SHA = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{24}")  # a shard id: 12 bytes (hoardfs.fsd.core.entries)


def checked_plan(spec: outputs.OutputSpec, plan: Any) -> tuple[list[Item], dict[str, list[Any]], int]:
    """The plan of a job read from Redis, checked before anything of it is written or read: the
    server's `locate` made it, but anyone who can write to Redis can queue a `run_output` (the
    guard allows the function), and its paths are joined to this host's zone and its sidecars
    are bytes written there. Every path must be a clean relative path under the layout's own
    directory (`hoardfs.base.paths.hostile_reason`, as the seal checks it — but the sidecars are
    written before the seal looks), every object located, each place well-formed. RemoteError
    (one line) naming the first thing wrong; nothing written, nothing recorded."""
    def bad(why: str) -> RemoteError:
        return RemoteError(f"{spec.kind} {spec.id}: the job's plan {why}; refused, nothing written — a plan is made "
                           "by `hoard {spec.kind} … --remote` on the store's server (who else can write to its "
                           "Redis? docs/security.md)".replace("{spec.kind}", spec.kind), ExitCode.USAGE)

    if not isinstance(plan, dict) or not isinstance(plan.get("items"), list) or not isinstance(plan.get("where"), dict):
        raise bad("is not {nodes, items, where}")
    nodes = plan.get("nodes")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 0:
        raise bad("has no count of nodes")
    where: dict[str, list[Any]] = {}
    for sha, place in plan["where"].items():
        ok = isinstance(place, list) and len(place) == 4
        shard, offset, length, labels = place if ok else (None, 0, 0, None)
        if not (ok and _SHA.fullmatch(sha) and isinstance(shard, str) and _SHARD.fullmatch(shard)
                and isinstance(offset, int) and isinstance(length, int) and not isinstance(offset, bool)
                and not isinstance(length, bool) and offset >= fmt.RECORD_HEADER_SIZE and length >= 0
                and isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise bad(f"places object {display(str(sha))[:80]!r} nowhere a record can be")
        where[sha] = [shard, offset, length, labels]
    name = spec.layout.get("name")
    if not isinstance(name, str) or hostile_reason(name) is not None or "/" in name:
        raise bad(f"names layout {display(str(name))[:200]!r}, not a name (its directories are made in the zone)")
    if not plan["items"]:
        raise bad("names no file (a plan of an empty selection is refused on the server)")
    prefix = f"{name}/"
    items = []
    for n, entry in enumerate(plan["items"], start=1):
        ok = isinstance(entry, list) and len(entry) == 4
        path, sha, size, car = entry if ok else (None, None, None, None)
        if not (ok and isinstance(path, str) and isinstance(sha, str) and isinstance(size, int)
                and not isinstance(size, bool) and (car is None or isinstance(car, str))):
            raise bad(f"item {n} is not [path, sha256, size, sidecar]")
        why = hostile_reason(path) or (hostile_reason(path + ".json") if car is not None else None)
        if why is None and not path.startswith(prefix):
            why = f"it is not under the layout's directory {prefix}"
        if why is not None:
            raise bad(f"item {n} names file {display(path)[:200]!r}: {why}")
        if sha not in where or where[sha][2] != size:
            raise bad(f"item {n} ({display(path)[:200]!r}): object {display(sha)[:80]} is not located, or not of "
                      f"its {size} bytes")
        items.append(Item(path, sha, size, car.encode() if car is not None else None))
    return items, where, nodes


def open_s3(cfg: Settings, label: str) -> Any:
    """This host's S3 disk `label`, its bucket checked to be that hoardfs disk (its identity):
    RemoteError (one line) when hoard.toml declares no such S3 disk or names another bucket."""
    from hoardfs.fsd.core.s3 import S3Disk  # deferred: boto3 is loaded only where an S3 disk is read

    dc = next((d for d in cfg.disks if d.kind == "s3" and d.label == label), None)
    if dc is None:
        raise RemoteError(f"S3 disk {label}: {cfg.source} declares no such disk: add its [[disks]] table "
                          "(kind = \"s3\") on this host")
    disk = S3Disk.configured(dc)
    ident = disk.read_identity()  # (an engine that does not answer: EngineError, one line)
    if ident is None or ident.get("label") != dc.label:
        raise RemoteError(f"disk {dc.label}: bucket {dc.bucket} at {dc.endpoint} is not that hoardfs "
                          f"disk (its identity: {ident and ident.get('label')}); correct disks.bucket in "
                          f"{cfg.source}")
    return S3Disk.configured(dc, str(ident["uuid"]))


@dataclass
class _Stats:
    """What materialize reads of a batch read's statistics and plan."""

    seconds: float = 0.0
    fallbacks: int = 0
    per_disk_seconds: dict[str, float] = field(default_factory=dict)


class LocatedReader:
    """The one call of the store that copying an output makes (`read_batch`), served from the
    records the plan located on this host's S3 disks: ranged GETs, no index."""

    def __init__(self, cfg: Settings, where: dict[str, list[Any]]) -> None:
        self.where = where
        self.disks: dict[str, Any] = {}
        self.cfg = cfg

    def __enter__(self) -> LocatedReader:
        wanted = {label for _, _, _, labels in self.where.values() for label in labels}
        for dc in self.cfg.disks:
            if dc.kind == "s3" and dc.label in wanted:
                self.disks[dc.label] = open_s3(self.cfg, dc.label)
        return self

    def __exit__(self, *exc: object) -> None:
        self.disks.clear()

    def _disks(self, sha_hex: str) -> tuple[list[Any], str, int, int]:
        """The S3 disks of this host holding the object's shard (in the plan's order), and its place."""
        shard_hex, offset, length, labels = self.where[sha_hex]
        here = [self.disks[label] for label in labels if label in self.disks]
        if not here:
            raise RemoteError(f"object {sha_hex} lies on S3 disk(s) {', '.join(labels)}, none of which "
                              f"{self.cfg.source} declares: add its [[disks]] table (kind = \"s3\") on this host")
        return here, shard_hex, int(offset), int(length)

    def read_batch(self, shas_hex: list[str], sink: Callable[[bytes, memoryview], None],
                   large_sink: Callable[[bytes, Iterator[bytes]], None] | None = None) -> tuple[_Stats, _Stats]:
        """Each object from the first of its S3 disks that gives it whole and checked: a record
        that does not check, or a disk that does not answer, is read from the next disk holding
        the shard (the store's reads fall back to another replica too); only when none does is
        the job failed, in one line."""
        t0 = time.monotonic()
        stats = _Stats()
        for sha_hex in shas_hex:
            disks, shard_hex, offset, length = self._disks(sha_hex)
            for n, disk in enumerate(disks, start=1):
                try:
                    self._read(disk, sha_hex, shard_hex, offset, length, sink, large_sink)
                    break
                except (fmt.ShardFormatError, DataError, OSError) as e:  # (EngineError is an OSError: DiskGone)
                    if n < len(disks):
                        stats.fallbacks += 1
                        log.warning("object %s: its record in shard %s on S3 disk %s cannot be used (%s); read from "
                                    "S3 disk %s instead — `hoard verify` on the store's server repairs the replica",
                                    sha_hex, shard_hex, disk.label, first_line(e), disks[n].label)
                        continue
                    if isinstance(e, (fmt.ShardFormatError, DataError)):
                        on = ", ".join(d.label for d in disks)
                        raise RemoteError(f"object {sha_hex}: its record in shard {shard_hex} on S3 disk {on} does "
                                          f"not check ({first_line(e)}); the output keeps what it copied — run `hoard "
                                          "verify` on the store's server (it repairs the replica from another), then "
                                          "the same command", ExitCode.DATA) from None
                    raise
        stats.seconds = time.monotonic() - t0
        return _Stats(seconds=0.0), stats

    @staticmethod
    def _read(disk: Any, sha_hex: str, shard_hex: str, offset: int, length: int,
              sink: Callable[[bytes, memoryview], None],
              large_sink: Callable[[bytes, Iterator[bytes]], None] | None) -> None:
        """One located record into `sink` (checked here) or, in pieces, `large_sink` (its
        header checked here, the whole payload's sha256 by the sink)."""
        sha, where = bytes.fromhex(sha_hex), f" (shard {shard_hex} on {disk.label})"
        if length <= PIECE or large_sink is None:
            buf = disk.read_exact(shard_hex, offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE + length)
            sink(sha, memoryview(verify_record(memoryview(buf), 0, sha, length, where)))
        else:  # the header checked here, the whole payload's sha256 by the sink
            checked_header(disk.read_exact(shard_hex, offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE), 0,
                           sha, length, where)
            large_sink(sha, (disk.read_exact(shard_hex, offset + k, min(PIECE, length - k))
                             for k in range(0, length, PIECE)))
