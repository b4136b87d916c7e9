"""An action run whose stage, worker and parse run on another host (`hoard action run NAME
--remote`; docs/scale-out.md, "Workers on other hosts"). Its steps on the store's server:

    plan     sql      as any run (the inputs; parents/children to stage beside them)
    gate     …        AC3/AC4 with a gate: judged here, before anything is queued for the host
    remote   actions  the stage planned and located here (hoardfs.jobs.remote.locate: refused in one line
                      when an input is on no S3 disk), queued once per attempt on `remote` as
                      `run_action`; then waits (state waiting_remote, a poll every REMOTE_POLL_S,
                      no worker held) until the host's parsed outputs are in the bucket
    collect  io       each child downloaded from the bucket, its sha256 and size checked, stored
                      (class generated, pinned) through this server's store; the transfer deleted
    apply, finish     as any run: ONE write-intent `action:<run>`

and on the remote host, the job `run_action` (queue `remote`, run with the host's own
hoard.toml): the stage made in its own 3C from ranged GETs (hoardfs.jobs.remote.make_planned), the
worker run there, its output root parsed (hoardfs.jobs.actions.parse: the hostile-output rules of any
run), each child read back with O_NOFOLLOW at every component and only if it is the file the
parser saw, uploaded as `transfers/<run>/<sha256>` (If-None-Match: a retry re-sends nothing),
then `transfers/<run>/parsed.json` — what was parsed, the run's "done" on the bucket — and its
3C output removed. The host has no index, no store disk and no PostgreSQL work to do.

A host that dies mid-run has its job queued again by the server's reaper (hoardfs.jobs.reaper); run
again, on it or another host, the job makes the same stage (resumed or anew), runs the worker
again on an emptied output root and uploads what is not there yet. A job that finds
parsed.json already there is done at once. The children are stored once whatever ran twice:
the store dedups by sha256, and the write-intent `action:<run>` is applied exactly once.

Anyone who can write to Redis can queue a `run_action` (the guard allows the function, which
names no configuration): the host runs only a contract it has itself (its actions directory or
its built-ins, the same document), with parameters that contract accepts, and the stage's plan
is checked as a remote stage's is (hoardfs.jobs.remote.checked_plan). What comes back to the server —
parsed.json and the objects — is checked before it is stored or applied: every path clean,
every parent one of the run's inputs or children, every record into a table the contract maps
to, every object's bytes its sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import redis
from rq import get_current_job
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import flocked, open_nofollow
from hoardfs.base.paths import display, hostile_reason
from hoardfs.fsd.store import Store
from hoardfs.jobs import jobkey, outputs
from hoardfs.jobs import remote as remote_jobs
from hoardfs.jobs.actions import contract as contracts
from hoardfs.jobs.actions import parse
from hoardfs.jobs.actions.contract import Contract, RunExternal, RunLabelStudio
from hoardfs.jobs.actions.state import (
    REMOTE_POLL_S,
    RUN_ID,
    STEP_TIMEOUT_S,
    ActionError,
    RunState,
    Status,
    Waiting,
    check_id,
    load_state,
    log_path,
    now,
    own_contract,
    resume_line,
    run_id_of,
    save_state,
    state_dir,
    typed_params,
    write_work,
)
from hoardfs.jobs.actions.steps import (
    _rows,
    _why,
    context_of,
    contract_of,
    inputs_of,
    roots_for,
    run_attempts,
    stage_spec,
    staged_inputs_for,
)
from hoardfs.jobs.queues import connect, enqueue_once, fetch_job

log = logging.getLogger(__name__)

#: the job function a remote host runs (hoardfs.jobs.guard: JOB_FUNCTIONS, HOST_JOBS)
JOB_FUNCTION = "hoardfs.jobs.actions.remote.run_action"
#: the name of what the host parsed, beside the children it uploaded
PARSED = "parsed.json"
#: the most bytes a parsed.json may hold (a run of 100,000 children writes ~40 MB)
PARSED_MAX = 1 << 30
#: the most memory what parsed.json holds may take on the server, as `_read_parsed` reckons it
#: (CPython's sizes of its strings, numbers, maps and lists: a run of 100,000 children ~0.2 GiB)
HELD_MAX = 2 << 30
#: the deepest parsed.json nests (a record's values map is at 4)
PARSED_DEPTH_MAX = 16
#: read and upload in pieces of this size
PIECE = 8 << 20
_SHA = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,10}")


def job_id(rid: str) -> str:
    return f"remote-action-{rid}"


#: how long a run stays closed to its host's job (RQ's failure_ttl: a job is not kept longer)
CLOSED_TTL_S = 30 * 86400


def closed_key(rid: str) -> str:
    """Redis key set once the server has collected (or cancelled) run `rid`: a job of it that
    runs after that — queued again by the reaper while its first host was only slow, or one a
    cancel could not stop — uploads nothing, or deletes what it uploaded (nothing would collect
    it); deleted when the server queues the run's job again (a resumed run). Under `rq:`: a
    host's Redis user may be allowed no other keys (docs/scale-out.md)."""
    return f"rq:hoard:remote-action-closed:{rid}"


def _close(conn: Any, rid: str, why: str) -> None:
    conn.set(closed_key(rid), why, ex=CLOSED_TTL_S)


def prefix(rid: str) -> str:
    return f"transfers/{rid}/"


def refusal(c: Contract) -> str:
    """Why action `c` cannot run --remote, or "": only a worker the host starts itself (AC2–AC4,
    local or docker/k8s) stages, runs and parses there."""
    if c.action_type not in ("AC2", "AC3", "AC4"):
        return f"action {c.action_id} is {c.action_type}: only AC2, AC3 and AC4 runs stage and run a worker"
    if isinstance(c.run_spec, (RunExternal, RunLabelStudio)):
        return (f"action {c.action_id} runs kind {c.run_spec.kind!r}, which waits for someone else's worker on this "
                "server's 3C")
    return ""


def check_locatable(cfg: Settings, c: Contract, rid: str, inputs: list[str],
                    context: dict[str, list[str]] | None) -> None:
    """Refused in one line (nothing recorded) when the run cannot go --remote: not a worker
    action, or an input (or a parent/child staged beside it) is on no S3 disk."""
    why = refusal(c)
    if why:
        raise ActionError(f"{why}; run it without --remote")
    _located(cfg, stage_spec(c, rid, inputs, context), f"action {c.action_id} --remote")


def _located(cfg: Settings, spec: outputs.OutputSpec, who: str) -> dict[str, Any]:
    """hoardfs.jobs.remote.locate's plan of the stage `spec`; its refusal as the run's, `who` first."""
    try:
        return remote_jobs.locate(cfg, spec)
    except remote_jobs.RemoteError as e:
        raise ActionError(f"{who}: {e.message.split(': ', 1)[-1]}", e.exit_code) from None


# -- on the store's server: the steps `remote` and `collect` -------------------------------------

def _step_remote(cfg: Settings, st: RunState) -> None:
    """Queue the host's job once per attempt, then wait for its parsed outputs on the bucket: a
    failed job fails the run with its line; a job Redis lost (or one that ended without
    uploading) is queued again."""
    assert cfg.redis_url  # (submit refuses --remote without Redis)
    rid = st.run_id
    rep = st.report.setdefault("remote", {})
    conn = connect(cfg.redis_url)
    if rep.get("attempt") == st.attempt and rep.get("disk"):
        disk = remote_jobs.open_s3(cfg, rep["disk"])
        if disk.transfer_sha(prefix(rid) + PARSED) is not None:
            rep["uploaded"] = now()
            return
        try:
            job = fetch_job(job_id(rid), conn)
            status = _status(job)
        except NoSuchJobError:
            job, status = None, ""
        if job is not None and status == "failed":
            line = _failed_line(job)
            raise ActionError(f"run {rid}: its job {job.id} failed on a remote host: {line}"
                              + ("" if resume_line(rid) in line else f"; then {resume_line(rid)}"), _exit_code(job))
        if status in ("queued", "scheduled", "deferred", "started"):
            # (started by a worker that is gone: the server's reaper queues it again — hoardfs.jobs.reaper)
            raise Waiting(Status.WAITING_REMOTE.value, REMOTE_POLL_S)
        # no such job (Redis lost it), or it ended without uploading: queued again below
    c = contract_of(cfg, st)
    spec = stage_spec(c, rid, sorted(inputs_of(cfg, st)), context_of(cfg, st))
    plan = _located(cfg, spec, f"run {rid}")  # now, not at submit: shards move (compaction, a disk replaced)
    label = _transfer_disk(plan)
    doc = {"run": rid, "attempt": st.attempt, "contract": c.model_dump(mode="json"), "params": st.params,
           "spec": spec.model_dump(), "plan": plan, "disk": label}
    conn.delete(closed_key(rid))  # (a cancelled run resumed: its host's job runs again)
    enqueue_once(conn, remote_jobs.QUEUE, JOB_FUNCTION, None, doc, job_id=job_id(rid), timeout=STEP_TIMEOUT_S,
                 description=f"action {rid} (remote)", key=jobkey.of(cfg))
    rep.update(job=job_id(rid), disk=label, attempt=st.attempt, queued=now())
    save_state(cfg, st)
    raise Waiting(Status.WAITING_REMOTE.value, REMOTE_POLL_S)


def _status(job: Any) -> str:
    """The job's RQ status as read now: "queued", "started", "failed"… ("" when it has none)."""
    found = job.get_status(refresh=True)
    return str(getattr(found, "value", found or ""))


def _transfer_disk(plan: dict[str, Any]) -> str:
    """The S3 disk the host uploads to: one holding every object's shard if there is one (the
    host declares it, since it reads from it), else the first object's first."""
    lists = [labels for _, _, _, labels in plan["where"].values()]
    common = set(lists[0]).intersection(*lists[1:]) if lists else set()
    return sorted(common)[0] if common else str(lists[0][0])


def _failed_line(job: Any) -> str:
    last = job.latest_result()
    lines = (last.exc_string or "").strip().splitlines() if last is not None else []
    return re.sub(r"^[\w.]+: ", "", lines[-1]) if lines else "no reason kept"


def _exit_code(job: Any) -> ExitCode:
    try:
        return ExitCode(int(job.meta.get("exit_code", ExitCode.DATA)))
    except (TypeError, ValueError):
        return ExitCode.DATA


def _step_collect(cfg: Settings, st: RunState) -> None:
    """The host's children into this server's store, checked; the work files `parsed` and
    `stored` as a local run's parse and store steps write them; the transfer deleted."""
    rid = st.run_id
    c = contract_of(cfg, st)
    rep = st.report["remote"]
    disk = remote_jobs.open_s3(cfg, rep["disk"])
    if rep.get("collected") == st.attempt:  # stored by a collect killed before it was recorded done
        _drop_transfer(disk, rid)
        return
    where = f"{disk.where}/{prefix(rid)}"
    tmp = state_dir(cfg) / f"{rid}.collect"  # what comes down, until stored
    try:
        doc = _read_parsed_from(disk, prefix(rid) + PARSED)
        inputs = set(inputs_of(cfg, st))
        children, records, doc = _checked(c, doc, inputs,
                                          limit=(c.a4_scale or cfg.store.a4_scale) * len(inputs),
                                          max_bytes=c.max_output_bytes or cfg.actions.max_output_bytes)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files: dict[str, Path] = {}
        for ch in children:
            if ch["sha256"] not in files:
                ext = Path(ch["path"]).suffix.lstrip(".").lower()
                files[ch["sha256"]] = _download(disk, rid, ch["sha256"], ch["size"],
                                                tmp / (ch["sha256"] + (f".{ext}" if _EXT.fullmatch(ext) else "")))
    except (_Bad, ValueError) as e:
        st.report["output_refused"] = "collect"  # resumed, the host runs it again (api._again)
        shutil.rmtree(tmp, ignore_errors=True)  # (what came down before the refusal)
        _drop_transfer(disk, rid)
        raise ActionError(f"run {rid}: what its host uploaded ({where}) is refused: {first_line(e)}; nothing was "
                          f"stored — {resume_line(rid)} runs it on a host again", ExitCode.DATA) from None
    stored: dict[str, list[Any]] = {}
    if files:
        with Store.open(cfg) as store:
            results = store.put_many(list(files.values()), klass="generated")
            bad = next((r for r in results if r.status == "rejected"), None)
            if bad is not None:  # (downloaded again when resumed: the transfer is kept, this copy not)
                shutil.rmtree(tmp, ignore_errors=True)
                raise ActionError(f"run {rid}: child {bad.sha256 or display(str(bad.path))} could not be stored: "
                                  f"{bad.reason}; {resume_line(rid)} once fixed", ExitCode.DATA)
            # referenced from now on (gc), until the apply's rows reference them; finish unpins
            store.pin(f"action-{rid}", [r.sha256 for r in results], f"children of action run {rid}")
        stored = {ch["path"]: [ch["sha256"], ch["size"]] for ch in children}
    keep = ("path", "parent_sha256", "parent_path", "relationship", "labels", "size")
    write_work(cfg, rid, "parsed", {"children": [{k: ch[k] for k in keep} for ch in children], "records": records})
    write_work(cfg, rid, "stored", stored)
    st.report.update(children=len(children), records=len(records), children_stored=len(stored),
                     output_files=_count(doc.get("files")), output_bytes=_count(doc.get("bytes")),
                     run={k: v for k, v in (doc.get("run") or {}).items()
                          if k in ("reason", "exit_code", "seconds") and isinstance(v, (str, int, float))
                          and len(str(v)) <= 80} if isinstance(doc.get("run"), dict) else {})
    rep.update(host=str(doc.get("host", ""))[:200], collected=st.attempt)  # (the document's word: shown, never used)
    save_state(cfg, st)  # the transfer is deleted only once the state says what was stored
    if cfg.redis_url:  # before the delete: a late job that uploads after it sees this and deletes its own
        _close(connect(cfg.redis_url), rid, "collected")
    _drop_transfer(disk, rid)
    shutil.rmtree(tmp, ignore_errors=True)
    sweep_transfers(cfg, disk)


def _count(v: Any) -> int:
    """A figure of parsed.json for the report (state file, GUI): a count, or 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


class _Bad(Exception):
    """What a host uploaded is not what a run of this contract writes."""


#: what `_read_parsed` reckons each JSON event to take on the server besides its value's own
#: size (sys.getsizeof: a string's characters at their width — an emoji makes every character
#: of its string 4 bytes): a map's or a list's base and growth, a key's share of its map's table,
#: and each value's slot in its container
_HELD = {"start_map": 240, "start_array": 120, "map_key": 60}
_SLOT = 8
_ENDS = frozenset(("end_map", "end_array", "string", "number", "boolean", "null"))
#: the longest run of bytes parsed.json may go without a JSON event: one value (a path, a
#: label, an embedding of 4,096 floats in base64 is 22 KB). yajl scans a token that spans its
#: reads again at each read — quadratic: an 8 MiB number took 4.6 s, 1 GiB would take a day
TOKEN_MAX = 1 << 20


class _Overflow(Exception):
    """An integer yajl cannot hold (beyond 64 bits, or -2**63: the phash of a blank image)."""


class _Capped:
    """A transfer's body read through `read(n)`, refused (_Bad) past PARSED_MAX bytes, or past
    TOKEN_MAX bytes since the reader last marked an event (`mark`)."""

    def __init__(self, body: Any) -> None:
        self.body, self.n, self.at_event = body, 0, 0

    def mark(self) -> None:
        self.at_event = self.n

    def read(self, n: int = -1) -> bytes:
        piece = self.body.read(PIECE if n is None or n < 0 else min(n, PIECE))
        self.n += len(piece)
        if self.n > PARSED_MAX:
            raise _Bad(f"{PARSED} holds more than {PARSED_MAX} bytes")
        if self.n - self.at_event > TOKEN_MAX + len(piece):
            raise _Bad(f"{PARSED} holds a value (or a gap between two) longer than {TOKEN_MAX} bytes")
        return piece


def _read_parsed_from(disk: Any, key: str, held_max: int = HELD_MAX) -> dict[str, Any]:
    """`_read_parsed` of transfer `key`: with ijson's fastest parser (yajl's), and once more
    with its own Python one when the document holds an integer yajl cannot (a record's hash of
    -2**63, which a blank or evenly graded image has)."""
    import ijson  # deferred: only a collect of a --remote run reads a parsed.json

    for backend in (ijson, ijson.get_backend("python")):
        body = disk.open_transfer(key)
        try:
            return _read_parsed(body, held_max, backend)
        except _Overflow:
            continue
        finally:
            body.close()
    raise _Bad(f"{PARSED} holds an integer this server cannot read")


def _read_parsed(body: Any, held_max: int = HELD_MAX, backend: Any = None) -> dict[str, Any]:
    """parsed.json off the bucket as it streams (ijson, `backend`: its default unless given),
    never its bytes whole: anyone who can write to the bucket could have put it there, and
    `json.loads` of a document of 1 GiB can hold twenty times that (a list of empty maps).
    Refused (_Bad), reading no further, the moment it is more than PARSED_MAX bytes, holds a
    value longer than TOKEN_MAX, would take more than `held_max` of memory (`_HELD`), nests
    deeper than PARSED_DEPTH_MAX, has a child or a record that is not a map, is not JSON, or
    names a key twice at its top; _Overflow for an integer the backend cannot hold. `_checked`
    then judges what it holds."""
    import ijson  # deferred: only a collect of a --remote run reads a parsed.json

    backend = backend or ijson
    capped = _Capped(body)
    doc: dict[str, Any] = {}
    key: str = ""
    builder: Any = None
    held = depth = 0
    try:
        for _, event, value in backend.parse(capped, use_float=True):
            capped.mark()
            held += _HELD.get(event, 0) + (sys.getsizeof(value) + _SLOT if value is not None else _SLOT)
            if held > held_max:
                raise _Bad(f"{PARSED} holds more than this server takes in memory ({held_max >> 20} MiB as reckoned)")
            at = depth  # (the depth the event is at: 0 the document, 1 a top key's value, 2 a child or record)
            depth += (event in ("start_map", "start_array")) - (event in ("end_map", "end_array"))
            if depth > PARSED_DEPTH_MAX:
                raise _Bad(f"{PARSED} nests deeper than {PARSED_DEPTH_MAX}")
            if at == 0:
                if event != "start_map":
                    raise _Bad(f"{PARSED} is not {{children, records}}")
                continue
            if depth == 0:  # (the document's end)
                continue
            if at == 1 and event == "map_key":  # a top-level key: its value's events follow
                if value in doc:
                    raise _Bad(f"{PARSED} names {str(value)[:40]!r} twice")
                key, builder = value, ijson.ObjectBuilder()
                continue
            listed = key in ("children", "records")
            if listed and at == 1:  # (the list itself: opened here, closed by an end_array back at depth 1)
                if event != "start_array":
                    raise _Bad(f"{PARSED} is not {{children, records}}: {key} is not a list")
                doc[key] = []
                continue
            if listed and event == "end_array" and depth == 1:
                continue
            assert builder is not None
            builder.event(event, value)
            if event not in _ENDS:
                continue
            if listed and depth == 2:  # one child or record whole
                if not isinstance(builder.value, dict):
                    raise _Bad(f"{'record' if key == 'records' else 'child'} {len(doc[key]) + 1} is not a map")
                doc[key].append(builder.value)
                builder = ijson.ObjectBuilder()
            elif not listed and depth == 1:  # any other top-level value whole (files, bytes, run, host)
                doc[key] = builder.value
    except ijson.JSONError as e:
        if "integer overflow" in str(e):
            raise _Overflow() from None
        raise _Bad(f"{PARSED} is not JSON ({first_line(e)[:120]})") from None
    except UnicodeDecodeError as e:
        raise _Bad(f"{PARSED} is not JSON: not UTF-8 ({first_line(e)[:120]})") from None
    return doc


def _checked(c: Contract, doc: Any, inputs: set[str], *, limit: int, max_bytes: int | None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """parsed.json as the server takes it (anyone who can write to the bucket could have put it
    there): every child a clean relative path with a sha256, a size and a parent among the
    run's inputs or its children, with one of the contract's relationships; every record of a
    node of the run, into a table the contract maps to. Held to a local parse's limits before
    a byte is downloaded (the sizes are the document's word, checked as they come down): at
    most `limit` children (a4_scale × inputs) of at most `max_bytes` together; each path once
    (`stored` is by path) and no parents in a ring (a cycle in the edges)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("children"), list) or not isinstance(doc.get("records"),
                                                                                                 list):
        raise _Bad(f"{PARSED} is not {{children, records}}")
    if len(doc["children"]) > limit:
        raise _Bad(f"{len(doc['children'])} children, more than {limit} (a4_scale × inputs)")
    parser = c.output_parser
    relationships = {r.relationship for r in parser.children} if parser is not None else set()
    paths = {ch.get("path") for ch in doc["children"] if isinstance(ch, dict)}
    children = []
    for n, ch in enumerate(doc["children"], start=1):
        ok = isinstance(ch, dict) and isinstance(ch.get("path"), str) and isinstance(ch.get("sha256"), str)
        size = ch.get("size") if ok else None
        labels = ch.get("labels") if ok else None
        if not (ok and _SHA.fullmatch(ch["sha256"]) and isinstance(size, int) and not isinstance(size, bool)
                and size >= 0 and isinstance(labels, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
            raise _Bad(f"child {n} is not {{path, sha256, size, labels, …}}")
        why = hostile_reason(ch["path"])
        if why is not None:
            raise _Bad(f"child {n} names {display(ch['path'])[:200]!r}: {why}")
        if ch.get("relationship") not in relationships:
            raise _Bad(f"child {display(ch['path'])[:200]!r}: relationship {str(ch.get('relationship'))[:80]!r} is "
                       "none of the contract's")
        parent, parent_path = ch.get("parent_sha256"), ch.get("parent_path")
        if not ((parent in inputs and parent_path is None)
                or (parent is None and parent_path in paths and parent_path != ch["path"])):
            raise _Bad(f"child {display(ch['path'])[:200]!r}: its parent is neither an input of the run nor another "
                       "child")
        children.append(ch)
    total = sum(ch["size"] for ch in children)
    if max_bytes is not None and total > max_bytes:
        raise _Bad(f"the children hold {total} bytes, more than max_output_bytes allows ({max_bytes})")
    parent_of: dict[str, str | None] = {}
    for ch in children:
        if ch["path"] in parent_of:
            raise _Bad(f"child {display(ch['path'])[:200]!r} is named twice")
        parent_of[ch["path"]] = ch["parent_path"]
    for ch in children:  # each chain of parent_path ends at an input within len(children) steps
        at: str | None = ch["path"]
        for _ in range(len(children) + 1):
            at = parent_of[at] if at is not None else None
            if at is None:
                break
        else:
            raise _Bad(f"child {display(ch['path'])[:200]!r}: its parents go round in a ring, never reaching an "
                       "input of the run")
    tables = {"labels"} | {contracts.table_of(c, m.into) for m in c.result_mapping.values()}  # own: result_<action>
    records = []
    for n, r in enumerate(doc["records"], start=1):
        if not (isinstance(r, dict) and r.get("into") in tables and isinstance(r.get("values"), dict)
                and ((r.get("node_sha256") in inputs and r.get("child_path") is None)
                     or (r.get("node_sha256") is None and r.get("child_path") in paths))
                and (r["into"] != "labels" or isinstance(r["values"].get("key"), str))):
            raise _Bad(f"record {n} is not a record of this run's nodes into a table the contract maps to")
        records.append(r)
    return children, records, doc


def _download(disk: Any, rid: str, sha: str, size: int, dest: Path) -> Path:
    """`transfers/<run>/<sha>` into `dest`, its bytes' sha256 and count checked as they come."""
    h, n = hashlib.sha256(), 0
    try:
        body = disk.open_transfer(prefix(rid) + sha)
    except FileNotFoundError:
        raise _Bad(f"child {sha} is not in the bucket") from None
    try:
        with dest.open("xb") as f:
            while piece := body.read(PIECE):
                n += len(piece)
                if n > size:
                    break
                h.update(piece)
                f.write(piece)
    finally:
        body.close()
    if n != size or h.hexdigest() != sha:
        raise _Bad(f"child {sha} came down as {n} bytes of another content (sha256 {h.hexdigest()}), not its "
                   f"{size} bytes")
    return dest


def _drop_transfer(disk: Any, rid: str) -> None:
    """`transfers/<run>/` deleted, parsed.json first: it is what says the upload is whole (a
    host's job that finds it does nothing, the server's poll collects), so a delete the engine
    breaks off part way leaves children nobody takes for an upload (the next sweep's), never a
    parsed.json naming children that are gone — a resumed run collected from that is refused."""
    parsed = prefix(rid) + PARSED
    for key in sorted(disk.transfer_keys(prefix(rid)), key=lambda k: k != parsed):
        disk.delete_transfer(key)


#: a closed run's transfer is swept only once its newest object is this old: a cancelled run
#: resumed meanwhile uploads anew, and a sweep that read its state a moment before takes none of it
TRANSFER_GRACE_S = 3600.0
#: the states of a run whose transfer nothing will collect: collected and applied, or cancelled
CLOSED = (Status.DONE.value, Status.CANCELLED.value)


def sweep_transfers(cfg: Settings, disk: Any, grace_s: float = TRANSFER_GRACE_S) -> list[str]:
    """What a delete of the past left under `transfers/` on S3 disk `disk` — a cancel while the
    engine did not answer, a host cut off from Redis that uploaded after its run was collected
    from another host — deleted: the prefix of every run this server has as done or cancelled
    whose newest object is older than `grace_s`. Called after each collect and each cancel of a
    --remote run; best effort (the next one tries again), never a transfer of a run that is
    still to be collected. The runs swept, in order."""
    swept: list[str] = []
    try:
        ages = disk.transfer_ages()
    except (HoardError, OSError) as e:
        log.info("transfers on S3 disk %s not swept (%s); the next collect or cancel tries again", disk.label,
                 first_line(e))
        return swept
    newest: dict[str, float] = {}
    for key, age in ages.items():
        rid = key.split("/", 2)[1]  # transfers/<run>/<name>
        newest[rid] = min(age, newest.get(rid, age))
    for rid, age in sorted(newest.items()):
        if age < grace_s or not RUN_ID.fullmatch(rid):
            continue  # (a key no run of hoard's names: not ours to judge)
        try:
            st = load_state(cfg, rid)
            if st is None or st.status not in CLOSED:
                continue  # failed or waiting: a resume collects what is there; unknown: not this store's run
            # judged again and deleted under the lock `hoard action run/resume` records a new
            # attempt under: a resume waits for this delete, and one under way now is not swept
            with flocked(state_dir(cfg) / f"{rid}.submit.lock", wait=False, transient=True):
                st = load_state(cfg, rid)
                if st is None or st.status not in CLOSED:
                    continue  # (resumed since it was read above)
                _drop_transfer(disk, rid)
        except BlockingIOError:
            continue  # (a submit or resume of it holds the lock: the next sweep judges it)
        except (HoardError, OSError, ValueError) as e:
            log.info("run %s: its transfer on S3 disk %s not swept (%s)", rid, disk.label, first_line(e))
            continue
        log.info("run %s (%s): what its host uploaded (%s on S3 disk %s) deleted", rid, st.status, prefix(rid),
                 disk.label)
        swept.append(rid)
    return swept


def sweep_host_stages(cfg: Settings, conn: Any, current: str) -> list[str]:
    """On a remote host: the stages in its own 3C of runs the store's server has closed
    (collected or cancelled: closed_key) removed — a job a cancel stopped mid-run, or one the
    reaper queued on another host while this one was cut off, left its stage here. Called at
    the start of each run_action job, so a host gives the room back by itself. The runs whose
    stage was removed."""
    removed: list[str] = []
    for path in sorted(outputs.state_dir(cfg).glob("*.json")):
        rid = path.stem
        if rid == current or not RUN_ID.fullmatch(rid):
            continue
        try:
            why = conn.get(closed_key(rid))
            if why is None:
                continue
            outputs.clean(cfg, rid, "3C")
        except (redis.RedisError, HoardError, OSError) as e:  # (ZoneBusy: a job of it runs here still)
            log.info("run %s: its stage in this host's 3C is kept for now (%s)", rid, first_line(e))
            continue
        log.info("run %s is %s on the store's server; its stage in this host's 3C is removed", rid,
                 why.decode(errors="replace") if isinstance(why, bytes) else why)
        removed.append(rid)
    return removed


def cancel_remote(cfg: Settings, st: RunState) -> None:
    """A cancelled --remote run: its host's job taken off the queue, or stopped where it runs
    (RQ's stop command reaches a worker on any host), and what it uploaded deleted. Best
    effort — Redis or the engine not answering leaves them, said in the log: the job's output
    is never collected (the run is cancelled) and `transfers/<run>/` is a plain prefix to delete."""
    if "remote" not in st.steps or not cfg.redis_url:
        return
    rid = st.run_id
    try:
        conn = connect(cfg.redis_url)
        _close(conn, rid, "cancelled")  # (a job the stop below misses deletes what it uploads)
        job = fetch_job(job_id(rid), conn)
        status = _status(job)
        if status == "started":
            send_stop_job_command(conn, job.id)
        elif status in ("queued", "scheduled", "deferred"):
            job.cancel()
    except NoSuchJobError:
        pass
    except (redis.RedisError, InvalidJobOperation) as e:
        log.warning("run %s: its remote job %s could not be stopped (%s); it runs to its end, and nothing collects "
                    "what it uploads", rid, job_id(rid), first_line(e))
    label = st.report.get("remote", {}).get("disk")
    if label:
        try:
            disk = remote_jobs.open_s3(cfg, label)
            _drop_transfer(disk, rid)
        except (HoardError, OSError) as e:
            log.warning("run %s: what its host uploaded (%s on S3 disk %s) was not deleted: %s; the next collect or "
                        "cancel of a --remote run deletes it", rid, prefix(rid), label, first_line(e))
            return
        sweep_transfers(cfg, disk)


#: the steps of a --remote run that are not a local run's (hoardfs.jobs.actions.runner runs both kinds)
REMOTE_STEPS = {"remote": _step_remote, "collect": _step_collect}


# -- on the remote host: the job -----------------------------------------------------------------

def run_action(config_path: str | None, doc: dict[str, Any]) -> dict[str, Any]:
    """RQ job (queue `remote`): stage, run and parse action run `doc["run"]` on this host (its
    own hoard.toml: `config_path` is None, hoardfs.jobs.guard), then upload the children and what was
    parsed to the bucket. Idempotent: a run whose parsed.json is on the bucket is done."""
    cfg = config_mod.load(config_path)
    try:
        return _run_action(cfg, doc)
    except HoardError as e:
        remote_jobs.keep_exit_code(e)
        raise


def _job(cfg: Settings, doc: Any) -> tuple[str, Contract, dict[str, Any], outputs.OutputSpec, Any, str]:
    """The job's document, checked before anything is written or run: refused in one line."""
    def bad(why: str) -> remote_jobs.RemoteError:
        return remote_jobs.RemoteError(f"remote action job: {why}; refused, nothing run — such a job is queued by "
                                       "`hoard action run … --remote` on the store's server (who else can write to "
                                       "its Redis? docs/security.md)", ExitCode.USAGE)

    if not isinstance(doc, dict) or not isinstance(doc.get("run"), str) or not isinstance(doc.get("disk"), str):
        raise bad("not {run, contract, params, spec, plan, disk}")
    try:
        rid = check_id(doc["run"])
        c = Contract.model_validate(doc.get("contract"))
        spec = outputs.OutputSpec.model_validate(doc.get("spec"))
    except (ValueError, HoardError) as e:
        raise bad(f"its run, contract or stage is not one ({first_line(e)[:200]})") from None
    if spec.kind != "stage" or spec.id != rid:
        raise bad(f"its stage {spec.kind} {spec.id} is not the run's")
    try:
        own = own_contract(cfg, c.action_id)[0]
    except contracts.ContractError as e:
        raise remote_jobs.RemoteError(f"run {rid}: this host has no action {c.action_id} ({first_line(e)[:200]}); "
                                      f"put the same contract file in actions.dir of {cfg.source}, then "
                                      f"`hoard action resume {rid}` on the store's server", ExitCode.USAGE) from None
    if own.model_dump(mode="json") != c.model_dump(mode="json"):
        raise remote_jobs.RemoteError(f"run {rid}: action {c.action_id} v{c.version} of the store's server is not "
                                      f"this host's (v{own.version}, another document); put the same contract file "
                                      f"in actions.dir of {cfg.source}, then `hoard action resume {rid}` on the "
                                      "store's server", ExitCode.USAGE)
    params = doc.get("params")
    if not isinstance(params, dict):
        raise bad("its parameters are not a table")
    try:
        typed = typed_params(c, params, cfg)
    except HoardError as e:
        raise bad(f"its parameters are not the contract's ({first_line(e)[:200]})") from None
    if refusal(c):
        raise bad(refusal(c))
    # the run's id is the hash of what it is (api.prepare): a job naming a run of the server with
    # another contract, parameters or inputs would have this host upload its outputs as that
    # run's, collected there if they came first (If-None-Match: the first parsed.json stands)
    if run_id_of(c.action_id, c.version, typed, spec.nodes or []) != rid:
        raise bad(f"run {rid} is not the run of action {c.action_id} v{c.version} on these parameters and inputs")
    return rid, c, typed, spec, doc.get("plan"), doc["disk"]


def _run_action(cfg: Settings, doc: Any) -> dict[str, Any]:
    rid, c, params, spec, plan, label = _job(cfg, doc)
    host = socket.gethostname()
    job = get_current_job()
    if job is not None:
        sweep_host_stages(cfg, job.connection, rid)
    disk = remote_jobs.open_s3(cfg, label)
    if _closed(rid):
        log.info("run %s: collected or cancelled on the store's server already; nothing to do", rid)
        return {"run": rid, "already_done": True, "host": host}
    if disk.transfer_sha(prefix(rid) + PARSED) is not None:
        log.info("run %s: its outputs are on the bucket already (%s); nothing to do", rid, disk.where)
        return {"run": rid, "already_done": True, "host": host}
    stage = remote_jobs.make_planned(cfg, spec, plan)
    roots = roots_for(cfg, c, rid)
    attempts = 1 + c.retries
    outcome = run_attempts(cfg, c, roots, params, rid, heartbeat=lambda: None, should_stop=lambda: False)
    if not (outcome.reason == "exited" and outcome.exit_code == 0):
        raise remote_jobs.RemoteError(f"run {rid} on host {host}: {_why(outcome, c)} ({attempts} attempt"
                                      f"{'s' * (attempts > 1)}); its log there: {log_path(cfg, rid)} — fix the "
                                      f"worker, then `hoard action resume {rid}` on the store's server", ExitCode.DATA)
    parsed = parse.parse_outputs(c, roots.output_root, staged_inputs_for(cfg, c, rid),
                                 a4_scale=c.a4_scale or cfg.store.a4_scale,
                                 max_bytes=c.max_output_bytes or cfg.actions.max_output_bytes)
    children = _rows(parsed.children)
    sent = 0
    root_fd = os.open(roots.output_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        done: dict[str, int] = {}
        for ch in children:
            ch["sha256"], uploaded = _upload(disk, rid, root_fd, ch, done)
            sent += uploaded
    finally:
        os.close(root_fd)
    out = {"children": children, "records": _rows(parsed.records), "files": parsed.files, "bytes": parsed.bytes,
           "host": host, "stage": {k: stage.get(k) for k in ("files", "bytes", "copied_files")},
           "run": {"reason": outcome.reason, "exit_code": outcome.exit_code, "seconds": round(outcome.seconds, 3)}}
    body = json.dumps(out).encode()
    disk.put_transfer(prefix(rid) + PARSED, body, hashlib.sha256(body).hexdigest())
    if _closed(rid):  # collected (from another host's upload) or cancelled meanwhile: nobody collects this
        log.info("run %s: collected or cancelled on the store's server while this host ran it; what it uploaded "
                 "is deleted", rid)
        _drop_transfer(disk, rid)
    try:  # this host's copy of the inputs is not needed any more: its room in 3C given back
        outputs.clean(cfg, rid, "3C")
    except (outputs.zones.NoSuchOutput, outputs.OutputError, OSError) as e:
        log.warning("run %s: its stage in this host's 3C could not be removed (%s); `hoard zones clean %s` here "
                    "removes it", rid, first_line(e), rid)
    return {"run": rid, "children": len(children), "records": len(parsed.records), "uploaded": sent, "host": host}


def _closed(rid: str) -> bool:
    """True when the server has closed run `rid` (closed_key), asked on the job's own Redis
    connection (none outside a worker: a direct call checks nothing)."""
    job = get_current_job()
    return job is not None and bool(job.connection.exists(closed_key(rid)))


def _upload(disk: Any, rid: str, root_fd: int, ch: dict[str, Any], done: dict[str, int]) -> tuple[str, int]:
    """One child read back and uploaded as `transfers/<run>/<sha256>`: (its sha256, 1 when sent
    now). Opened with O_NOFOLLOW at every component below the output root and taken only if it
    is the file the parser saw (device, inode, size, mtime): a link or a file swapped in since is
    refused in one line — the worker's output is not trusted to stay put."""
    fd = _open_below(root_fd, ch["path"])
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        seen = tuple(ch.get("seen") or ())
        if not stat.S_ISREG(st.st_mode) or (any(seen) and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != seen):
            raise parse.OutputProblem(f"output {ch['path']}: not the file the parser read (swapped since, or not a "
                                      f"regular file); not uploaded — {resume_line(rid)} runs the worker again")
        h = hashlib.sha256()
        while piece := f.read(PIECE):
            h.update(piece)
        sha = h.hexdigest()
        if sha in done:
            return sha, 0
        f.seek(0)
        done[sha] = 1
        if disk.transfer_sha(prefix(rid) + sha) == sha:
            return sha, 0
        return sha, int(disk.put_transfer(prefix(rid) + sha, f, sha))


def _open_below(root_fd: int, rel: str) -> int:
    """`rel` opened under the directory `root_fd`, no component followed if it is a link (a fifo
    opened, not waited on: the caller's fstat refuses what is not a regular file)."""
    try:
        return open_nofollow(root_fd, rel)
    except OSError as e:
        raise parse.OutputProblem(f"output {rel}: cannot be opened without following a link ({e.strerror}); not "
                                  "uploaded") from None
