"""The steps of a run (docs/actions.md, "Runs"), each idempotent by run id, and the work files
they hand each other in `<ssd.root>/state/actions/`:

    plan     sql          AC1: each rule's nodes among the inputs (→ plan); others: the stage request
    stage    io           hoardfs.jobs.outputs' stage (kind "stage", id = run id) into 3C/<run>/<layout>/input
    gate     maintenance  AC3/AC4 with a gate: released by hand or by the hook, else wait (no worker held)
    run      actions      the worker (hoardfs.jobs.actions.execute), or wait for an external one's done marker
    parse    io           the output root read back (hoardfs.jobs.actions.parse) → children and records
    store    io           the children into S01, class `generated`, pinned until the apply
    apply    sql          ONE write-intent `action:<run>`: children, edges, labels, results, black
                          list, the action_event
    finish   maintenance  3C/<run> renamed into 3C/.trash (deleted once the run is recorded done),
                          the reservation released, the pin dropped — an AC5 run released with
                          tasks unlabelled keeps 3C/<run> while one of them shows its files

AC5 (human labels, hoardfs.jobs.actions.labelstudio) replaces gate … store by

    tasks    maintenance  the Label Studio project (run_spec.project_title, else the action id)
                          ensured; every staged input imported as a task by URL
    labels   maintenance  wait (no worker held: state waiting_labels + a poll job) until each of
                          the run's tasks has a finished annotation, or `hoard action release`;
                          then export (a snapshot), the run's tasks → label rows, the export JSON
                          and its COCO conversion stored as assets (class generated, pinned until
                          finish); the tasks left unlabelled by a release stay in Label Studio,
                          listed (`ls_open`) for a later run over their nodes to take over, until
                          taken or the run is cancelled (`cancel_kept`)

A step that fails keeps what it wrote (3C included) for inspection; `hoard action resume RUN`
resumes at that step.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode
from hoardfs.base.files import flocked, syncfs_fd
from hoardfs.base.paths import display
from hoardfs.datasets import layouts, stagefiles
from hoardfs.fsd.core.layout import pin_path
from hoardfs.fsd.outputs.seal import MANIFEST
from hoardfs.fsd.store import Store
from hoardfs.jobs import events, outputs
from hoardfs.jobs.actions import execute, labelstudio, parse
from hoardfs.jobs.actions.contract import Contract, RunExternal, RunLabelStudio
from hoardfs.jobs.actions.execute import Roots
from hoardfs.jobs.actions.labelstudio import Task
from hoardfs.jobs.actions.parse import InputFile
from hoardfs.jobs.actions.state import (
    EXTERNAL_POLL_S,
    LABELS_POLL_S,
    MEMOISED,
    ActionError,
    Cancelled,
    RunState,
    Status,
    Waiting,
    all_states,
    beat,
    cancel_flag,
    load_state,
    lock_path,
    log_path,
    now,
    params_digest,
    read_work,
    resume_line,
    save_state,
    since,
    work,
    write_work,
)
from hoardfs.sql import result_tables
from hoardfs.sql.apply import apply_write_intent, is_applied
from hoardfs.sql.collected import withdraw
from hoardfs.sql.intents import IntentConflict
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import neighbours, query_nodes

log = logging.getLogger(__name__)


def contract_of(cfg: Settings, st: RunState) -> Contract:
    """The contract as it was when the run was submitted (its work file), not the file now."""
    return Contract.model_validate(read_work(cfg, st.run_id, "contract"))


def inputs_of(cfg: Settings, st: RunState) -> list[str]:
    return list(read_work(cfg, st.run_id, "inputs"))


def memo_of(cfg: Settings, st: RunState) -> dict[str, Any] | None:
    """The run's memo split (api.memo_split, fixed at submit): the inputs it runs (`new`) and
    those its action ran on before (`reused`: sha256 → run); None for a run not memoised."""
    return read_work(cfg, st.run_id, "memo") if work(cfg, st.run_id, "memo").is_file() else None


def run_inputs(cfg: Settings, st: RunState) -> list[str]:
    """The inputs the run stages and its worker runs on (sorted): the new ones of a memoised
    run, else all of them."""
    split = memo_of(cfg, st)
    return sorted(split["new"] if split is not None else inputs_of(cfg, st))


def nothing_new(cfg: Settings, st: RunState) -> bool:
    """A memoised run whose every input its action ran on before: nothing is staged, no gate
    is waited at and no worker starts — its apply records the run, its report says so."""
    split = memo_of(cfg, st)
    return split is not None and not split["new"]


#: what a skipped step reports
ALL_DONE = "every input done already (inputs_reused); no worker started"


def origin(st: RunState) -> str:
    return f"action:{st.action}"


def _connect(cfg: Settings) -> psycopg.Connection:
    return psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)


#: an AC5 poll that finds Label Studio's project counters unchanged skips the export snapshot,
#: except every this many polls (a full look now and then, whatever the counters say)
LABELS_FULL_EVERY = 10


# -- plan ---------------------------------------------------------------------------------------

def own_table(conn: psycopg.Connection, c: Contract) -> None:
    """The contract's [result_table] made or migrated to its version (hoardfs.sql.result_tables):
    at plan, so a table changed at the same version is refused before a worker runs, and again
    at apply (the same version: nothing to do)."""
    if c.result_table is not None:
        result_tables.ensure(conn, c.action_id, c.version, dict(c.result_table.columns))


def _step_plan(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    if c.result_table is not None:
        with _connect(cfg) as conn:
            own_table(conn, c)
    if nothing_new(cfg, st):
        st.report["stage"] = {"skipped": ALL_DONE}  # (the shape of a stage's figures, as `run`'s)
        return
    inputs = set(run_inputs(cfg, st))  # (a memoised run: only those its action did not run on before)
    if c.action_type == "AC1":
        labels, black = [], set()
        with _connect(cfg) as conn:
            for rule in c.rules:
                hit = sorted(set(query_nodes(conn, rule.where).sha256) & inputs)
                if rule.black_list:
                    black.update(hit)
                elif rule.label is not None:
                    labels += [[h, rule.label.key, rule.label.value] for h in hit]
        write_work(cfg, st.run_id, "plan", {"labels": labels, "black_list": sorted(black)})
        st.report.update(labels_planned=len(labels), black_list_planned=len(black))
        return
    # fixed now, once: a resumed run stages the same — and a plan run again (its runner killed
    # after the submit below, before its state said so) submits the same request, not one of
    # the parents/children of now, which the id's recorded request would refuse
    if context_of(cfg, st) is None and (chosen := stage_context(cfg, c, sorted(inputs))) is not None:
        write_work(cfg, st.run_id, "context", chosen)
    context = context_of(cfg, st)
    st.report.update({f"{role}_staged": len(v) for role, v in (context or {}).items()})
    if "remote" not in st.steps:  # (a --remote run's stage is recorded on the host that makes it)
        outputs.submit(cfg, stage_spec(c, st.run_id, sorted(inputs), context))


def stage_context(cfg: Settings, c: Contract, inputs: list[str]) -> dict[str, list[str]] | None:
    """The parents and children of `inputs` the contract stages beside them (include_parents,
    include_children), from PostgreSQL now; None when it stages none."""
    s = c.stage_layout
    if s is None or not (s.include_parents or s.include_children):
        return None
    shas = [bytes.fromhex(h) for h in sorted(inputs)]
    with _connect(cfg) as conn:
        return {role: neighbours(conn, shas, up=role == "parents")
                for role, wanted in (("parents", s.include_parents), ("children", s.include_children)) if wanted}


def context_of(cfg: Settings, st: RunState) -> dict[str, list[str]] | None:
    """What the plan step chose to stage beside the inputs (include_parents/_children), if anything."""
    return read_work(cfg, st.run_id, "context") if work(cfg, st.run_id, "context").is_file() else None


def stage_spec(c: Contract, rid: str, inputs: list[str], context: dict[str, list[str]] | None = None) -> outputs.OutputSpec:
    """The stage request of a run: its inputs by sha256, laid out as the contract says, and the
    parents/children planned beside them."""
    s = c.stage_layout
    assert s is not None  # contract.problems: every type but AC1 has one
    lay = layouts.load(s.layout) if s.layout else layouts.parse(s.template or "", c.action_id, s.sidecars)
    files = stagefiles.StageFiles.model_validate(s.model_dump(include=set(stagefiles.StageFiles.model_fields)))
    # the worker's files, and the check of a template's fixed extension against the bytes: only
    # when asked for (a stage without them keeps the request, and its digest, it always had)
    stage = files.model_dump() if files.used() or stagefiles.literal_ext(lay) is not None else None
    return outputs.OutputSpec.model_validate({
        "kind": "stage", "id": rid, "nodes": inputs, "context": context, "stage": stage,
        "layout": {"name": lay.name, "template": lay.template, "sidecars": s.sidecars or lay.sidecars,
                   "per_locator": lay.per_locator}})


# -- stage --------------------------------------------------------------------------------------

def _step_stage(cfg: Settings, st: RunState) -> None:
    if nothing_new(cfg, st):
        return
    # the request again (the same request is fine): `hoard zones clean RUN`, which health offers
    # for the stage of a run killed while it staged, forgets it — and the run must still resume
    outputs.submit(cfg, stage_spec(contract_of(cfg, st), st.run_id, run_inputs(cfg, st), context_of(cfg, st)))
    rep = outputs.run(cfg, st.run_id)
    st.report["stage"] = {k: rep.get(k) for k in ("path", "files", "bytes", "copied_files")}


def embedded_setup(cfg: Settings) -> Path | None:
    """The directory of an embedded default's hoard.toml, where its built-in workers may run as
    the clone's owner (execute.as_setup_owner); None for any other config."""
    if cfg.embedded is None:
        return None
    return cfg.source.parent if cfg.source is not None else Path.cwd()


def roots_of(cfg: Settings, c: Contract, st: RunState) -> Roots:
    return roots_for(cfg, c, st.run_id)


def roots_for(cfg: Settings, c: Contract, rid: str) -> Roots:
    """The run's roots in this host's 3C (a --remote run's host: in its own)."""
    spec = stage_spec(c, rid, [])
    base = cfg.ssd.zone_path("3C") / rid / spec.layout["name"]
    s = c.stage_layout
    return Roots(input_root=base / "input", output_root=base / "output", batch_id=rid,
                 parents_root=base / "parents" if s is not None and s.include_parents else None,
                 children_root=base / "children" if s is not None and s.include_children else None)


def staged_inputs(cfg: Settings, c: Contract, st: RunState) -> list[Any]:
    return staged_inputs_for(cfg, c, st.run_id)


def staged_inputs_for(cfg: Settings, c: Contract, rid: str) -> list[Any]:
    """The staged files (relative to the input root) and their sha256, from the stage's manifest."""
    spec = stage_spec(c, rid, [])
    prefix = f"{spec.layout['name']}/input/"
    if spec.stage is not None:  # a worker's folder contract: its input root holds more than the inputs
        listed = json.loads((cfg.ssd.zone_path("3C") / rid / spec.layout["name"] / outputs.INPUTS_FILE).read_bytes())
        return [InputFile(sha256=sha, staged_path=path) for path, sha in listed]
    doc = json.loads((cfg.ssd.zone_path("3C") / rid / MANIFEST).read_bytes())
    return [InputFile(sha256=f["sha256"], staged_path=f["path"].removeprefix(prefix))
            for f in doc["files"] if f.get("sha256") and f["path"].startswith(prefix)
            and not (spec.layout.get("sidecars") and f["path"].endswith(".json"))]


# -- gate ---------------------------------------------------------------------------------------

def _step_gate(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    gate = c.gate
    assert gate is not None  # the step is in the run's steps only with a gate
    if nothing_new(cfg, st):
        st.report["gate"] = ALL_DONE
        return
    st.gate.setdefault("since", now())
    if st.gate.get("released"):
        st.report["gate"] = f"released by hand at {st.gate['released']}"
        return
    said = ""
    if gate.hook:
        limit = min(60, gate.poll_s * 2)
        ready, said = execute.gate_answer(c, roots_of(cfg, c, st), st.params, log_path=log_path(cfg, st.run_id),
                                          timeout_s=limit, worker_user=cfg.actions.worker_user,
                                          setup=embedded_setup(cfg))
        st.gate["hook_checked"] = now()
        st.gate["hook_said"] = said
        if ready:
            st.report["gate"] = f"the gate hook said ready at {st.gate['hook_checked']}"
            return
    waited = since(st.gate["since"])
    if waited >= gate.timeout_s:
        hook = (f" and its hook {display(' '.join(gate.hook))} did not say ready (last: {said})" if gate.hook else "")
        raise ActionError(f"run {st.run_id}: the GPU gate was not released within {gate.timeout_s} s "
                          f"(gate.timeout_s){hook}; once the GPU host is up, {resume_line(st.run_id)} waits "
                          f"anew, or `hoard action release {st.run_id}` then {resume_line(st.run_id)}",
                          ExitCode.UNAVAILABLE)
    raise Waiting(Status.WAIT_GPU_READY.value, min(gate.poll_s, max(1.0, gate.timeout_s - waited)))


# -- run ----------------------------------------------------------------------------------------

def _empty(d: Path) -> None:
    """The output root emptied for a fresh attempt (what a killed or failed attempt wrote is not
    mixed into the next one's)."""
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _step_run(cfg: Settings, st: RunState) -> None:
    if nothing_new(cfg, st):
        st.report["run"] = {"skipped": ALL_DONE}
        return
    c = contract_of(cfg, st)
    roots = roots_of(cfg, c, st)
    rs = c.run_spec
    if isinstance(rs, RunExternal):
        if st.waiting_since is None:
            _empty(roots.output_root)
            st.waiting_since = now()
            st.report["external"] = execute.render(rs.instructions, roots, st.params) if rs.instructions else ""
        if execute.done_marker_present(c, roots):
            fd = os.open(roots.output_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:  # what parse reads is on the disk before the step is done (run_attempts)
                _output_durable(fd, roots.output_root, st.run_id)
            finally:
                os.close(fd)
            st.report["run"] = {"external": True, "waited_s": round(since(st.waiting_since))}
            return
        waited = since(st.waiting_since)
        if waited >= rs.timeout_s:
            raise ActionError(f"run {st.run_id}: the external worker wrote no {rs.done_marker} in "
                              f"{roots.output_root} within {rs.timeout_s} s (run_spec.timeout_s); its input stays "
                              f"staged in {roots.input_root} — once it is done, {resume_line(st.run_id)} "
                              "waits anew", ExitCode.UNAVAILABLE)
        raise Waiting(Status.WAITING_EXTERNAL.value, min(EXTERNAL_POLL_S, max(1.0, rs.timeout_s - waited)))
    attempts = 1 + c.retries
    end_left_worker(cfg, st)  # a runner killed (kill -9) while its worker ran left that worker running

    def ended(outcome: execute.Outcome) -> None:
        st.worker = None
        st.report["run"] = {"reason": outcome.reason, "exit_code": outcome.exit_code,
                            "seconds": round(outcome.seconds, 3)}
        save_state(cfg, st)
        if outcome.reason == "cancelled":
            raise Cancelled(f"run {st.run_id} was cancelled while its worker ran (stopped after "
                            f"{outcome.seconds:.0f} s)")

    outcome = run_attempts(cfg, c, roots, st.params, st.run_id, heartbeat=lambda: beat(cfg, st.run_id),
                           should_stop=lambda: cancel_flag(cfg, st.run_id).exists(),
                           on_start=lambda pid, start: _worker_started(cfg, st, pid, start), ended=ended)
    if not (outcome.reason == "exited" and outcome.exit_code == 0):
        raise ActionError(f"run {st.run_id}: {_why(outcome, c)} ({attempts} attempt{'s' * (attempts > 1)}); its log: "
                          f"{log_path(cfg, st.run_id)}; the output is kept in {roots.output_root} — fix the worker, "
                          f"then {resume_line(st.run_id)}", ExitCode.DATA)


def run_attempts(cfg: Settings, c: Contract, roots: execute.Roots, params: dict[str, Any], rid: str, *,
                 heartbeat: Callable[[], None], should_stop: Callable[[], bool],
                 on_start: Callable[[int, int], None] | None = None,
                 ended: Callable[[execute.Outcome], None] = lambda outcome: None) -> execute.Outcome:
    """The worker run on an emptied output root, again after a failure, up to 1 + `c.retries`
    times (here and on a --remote run's host, hoardfs.jobs.actions.remote); `ended(outcome)` after each
    attempt. The last attempt's outcome: a success, or the failure that is the run's error line.
    A success's output is on the disk when it returns (syncfs: a power cut after the step was
    recorded done otherwise left files parse then read empty or missing, or unlike what it
    had read when store came); a writeback error of it, or a full SSD, is the ActionError
    `_output_durable` raises."""
    attempts = 1 + c.retries
    outcome: execute.Outcome | None = None
    for attempt in range(1, attempts + 1):
        _empty(roots.output_root)
        fd = os.open(roots.output_root, os.O_RDONLY | os.O_DIRECTORY)  # (writeback errors seen from here on)
        try:
            outcome = execute.run_worker(c, roots, params, log_path=log_path(cfg, rid), heartbeat=heartbeat,
                                         should_stop=should_stop, worker_user=cfg.actions.worker_user,
                                         on_start=on_start, run_dir=cfg.ssd.zone_path("3C") / rid,
                                         setup=embedded_setup(cfg))
            ended(outcome)
            if outcome.reason == "exited" and outcome.exit_code == 0:
                _output_durable(fd, roots.output_root, rid)
        finally:
            os.close(fd)
        if outcome.reason == "exited" and outcome.exit_code == 0:
            break
        if attempt < attempts:  # the last one's failure is the run's error line
            log.info("run %s: attempt %d of %d: %s; trying again", rid, attempt, attempts, _why(outcome, c))
    assert outcome is not None
    return outcome


def _output_durable(fd: int, root: Path, rid: str) -> None:
    """syncfs of the file system holding the output root `root` (open as `fd`): a writeback
    error (a failing SSD) or a full one is the run's one line, naming what failed — the worker
    itself succeeded — and the resume, which runs it again."""
    try:
        syncfs_fd(fd, root)
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ActionError(f"run {rid}: the worker succeeded, but its output in {display(str(root))} could not be "
                          f"written to the disk ({e.strerror}); "
                          + ("free space in zone 3C (`hoard zones`)" if full else "check the SSD (`hoard health`)")
                          + f", then {resume_line(rid)} runs the worker again",
                          ExitCode.NO_SPACE if full else ExitCode.UNAVAILABLE) from None


def _worker_started(cfg: Settings, st: RunState, pid: int, start: int) -> None:
    """The worker's session (its pid = sid = pgid) and start time go into the state before it
    is watched: a later process ends that session if this one dies first."""
    st.worker = {"sid": pid, "start": start, "boot": _boot_id(), "since": now()}
    save_state(cfg, st)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def end_left_worker(cfg: Settings, st: RunState) -> None:
    """Ends the worker session a dead runner left (the state names it; same boot, same start
    time — a reused pid is left alone), TERM then KILL as execute does, then — a docker or
    kubectl worker — what its client started: `docker rm --force hoard-<run>` (also after a
    reboot: a container with a restart policy, or a daemon that kept it) or `kubectl delete`;
    all before anything else touches the output root. No-op when none is recorded."""
    w = st.worker
    if not w:
        return

    if w.get("boot") == _boot_id():
        n = execute.end_session(int(w["sid"]), int(w["start"]))
        if n:
            log.warning("run %s: ended %d process(es) of the worker session %s a stopped runner left (started %s)",
                        st.run_id, n, w["sid"], w.get("since"))
            st.report["left_worker_ended"] = n
    c = contract_of(cfg, st)
    try:
        stop = execute.stop_left(c, roots_of(cfg, c, st), st.params, log_path=log_path(cfg, st.run_id),
                                 worker_user=cfg.actions.worker_user)
    except execute.ExecError as e:  # the run goes on (or is cancelled); say what may be left
        log.warning("run %s: what the worker's client started may be left running: %s", st.run_id, e.message)
        st.report["left_worker_stop"] = f"not run: {e.message}"
    else:
        if stop is not None:
            log.info("run %s: ran %s for the worker a stopped runner left", st.run_id, " ".join(stop.argv[1:]))
            st.report["left_worker_stop"] = " ".join(stop.argv[1:])
    st.worker = None
    save_state(cfg, st)


def _why(outcome: Any, c: Contract) -> str:
    if outcome.reason == "timeout":
        return f"the worker did not finish within {getattr(c.run_spec, 'timeout_s', '?')} s (run_spec.timeout_s) and was killed"
    last = getattr(outcome, "last_line", "")
    if getattr(outcome, "confined", False) and outcome.exit_code == execute.REFUSED and last.startswith("hoard: "):
        return last.removeprefix("hoard: ")  # the launcher's one line: it could not confine or start it
    why = f"the worker exited with status {outcome.exit_code}" + (f" (its last line: {last})" if last else "")
    if getattr(outcome, "confined", False):
        why += ("; it runs confined: it writes only below its output root and $TMPDIR and has no network unless "
                "run_spec.network = true (docs/actions.md, Confinement)")
    return why


# -- parse --------------------------------------------------------------------------------------

def _step_parse(cfg: Settings, st: RunState) -> None:
    if nothing_new(cfg, st):
        write_work(cfg, st.run_id, "parsed", {"children": [], "records": []})
        st.report.update(children=0, records=0)
        return
    c = contract_of(cfg, st)
    roots = roots_of(cfg, c, st)
    inputs = staged_inputs(cfg, c, st)
    marker = c.run_spec.done_marker if isinstance(c.run_spec, RunExternal) else None
    parsed = parse.parse_outputs(c, roots.output_root, inputs, a4_scale=c.a4_scale or cfg.store.a4_scale,
                                 done_marker=marker, max_bytes=c.max_output_bytes or cfg.actions.max_output_bytes)
    write_work(cfg, st.run_id, "parsed", {"children": _rows(parsed.children), "records": _rows(parsed.records)})
    st.report.update(children=len(parsed.children), records=len(parsed.records), output_files=parsed.files,
                     output_bytes=parsed.bytes)


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    """Flat dataclasses as dicts, field by field: what `dataclasses.asdict` gives them, without
    its deep copy of every value (0.13 s of a 10,000-child parse step, bench/action_overhead.py)."""
    if not items:
        return []
    names = [f.name for f in dataclasses.fields(items[0])]
    return [{k: getattr(x, k) for k in names} for x in items]


# -- store --------------------------------------------------------------------------------------

def _step_store(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    root = roots_of(cfg, c, st).output_root
    children = read_work(cfg, st.run_id, "parsed")["children"]
    stored: dict[str, list] = {}
    if children:
        with Store.open(cfg) as store:
            paths = [root / ch["path"] for ch in children]
            # only the files parse read: one swapped since (a link to a file outside the output
            # root, another file renamed over it) is rejected, not stored
            expect = {str(p): tuple(ch["seen"]) for p, ch in zip(paths, children, strict=True)
                      if any(ch.get("seen") or ())}
            results = store.put_many(paths, klass="generated", expect=expect)
            bad = next((r for r in results if r.status == "rejected"), None)
            if bad is not None:
                # not what parse read (swapped since): storing it again would refuse it again, so
                # the resumed run starts the worker again on an emptied output root (api._again)
                st.report["output_refused"] = "store"
                raise ActionError(f"run {st.run_id}: output {display(str(bad.path))} could not be stored: {bad.reason}; "
                                  f"{resume_line(st.run_id)} runs the worker again on an emptied output root",
                                  ExitCode.DATA)
            # referenced from now on (gc), until the apply's rows reference them; finish unpins
            store.pin(f"action-{st.run_id}", [r.sha256 for r in results], f"children of action run {st.run_id}")
        stored = {ch["path"]: [r.sha256, r.size] for ch, r in zip(children, results, strict=True)}
    write_work(cfg, st.run_id, "stored", stored)
    st.report["children_stored"] = len(stored)


# -- tasks, labels (AC5) -------------------------------------------------------------------------

#: where the run's Label Studio export is written (in the output root) and located in the store
EXPORT_NAME = "label-studio/export.json"
#: … and its COCO conversion (hoardfs.jobs.actions.labelstudio.to_coco), stored and linked the same way
COCO_NAME = "label-studio/coco.json"
#: the edge from each labelled input to the run's export
EXPORT_RELATIONSHIP = "labelled_in"


def _ls_spec(c: Contract) -> Any:
    assert isinstance(c.run_spec, RunLabelStudio)  # contract.problems: AC5 is kind "label_studio"
    return c.run_spec


def _ls_tasks(cfg: Settings, c: Contract, st: RunState) -> list[Any]:
    """The run's tasks: each staged input, its path relative to zone 3C."""

    base = roots_of(cfg, c, st).input_root.relative_to(cfg.ssd.zone_path("3C"))
    return [Task(sha256=f.sha256, path=(base / f.staged_path).as_posix()) for f in staged_inputs(cfg, c, st)]


#: the run's tasks, [sha256, path in 3C] each (`_step_tasks`): its own staged file's, or the
#: task of the same node an earlier run's partial release left unlabelled, taken over
LS_TASKS = "ls_tasks"
#: the tasks a partial release left unlabelled, [sha256, path] each: while one is listed, the
#: staged files of the run directory its path names stay in 3C (Label Studio shows them)
LS_OPEN = "ls_open"


def _pairs(cfg: Settings, rid: str, what: str) -> list[tuple[str, str]] | None:
    try:
        return [(str(sha), str(path)) for sha, path in read_work(cfg, rid, what)]
    except FileNotFoundError:
        return None


def ls_mine(cfg: Settings, c: Contract, st: RunState) -> list[tuple[str, str]]:
    """The run's Label Studio tasks as (sha256, path): the tasks step's list; before it (or for
    a run recorded before the list was kept) its own staged files."""
    mine = _pairs(cfg, st.run_id, LS_TASKS)
    return mine if mine is not None else [(t.sha256, t.path) for t in _ls_tasks(cfg, c, st)]


def _kept_runs(cfg: Settings, action: str, url: Any, project: Any, but: str = "") -> list[RunState]:
    """The done runs of `action` whose partial release left tasks unlabelled in Label Studio
    project `project` at `url` (their stage kept for them)."""
    out = []
    for k in all_states(cfg):
        lsr = k.report.get("label_studio") or {}
        if (k.run_id != but and k.action == action and k.status == Status.DONE.value and lsr.get("kept")
                and lsr.get("url") == url and lsr.get("project") == project):
            out.append(k)
    return out


def _step_tasks(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    rs = _ls_spec(c)
    ls = labelstudio.client_from_settings(cfg)
    title = rs.project_title or c.action_id
    project = labelstudio.ensure_project(ls, title, rs.label_config)
    own = _ls_tasks(cfg, c, st)
    # a node an earlier run's partial release left unlabelled keeps that task (its images are
    # kept in 3C): taken over, never imported twice — found in hoard's own list of those runs,
    # never by what a task's data says (any project member may write that)
    kept: dict[str, str] = {}
    zone = cfg.ssd.zone_path("3C")
    for k in _kept_runs(cfg, st.action, ls.url, project, but=st.run_id):
        broken = []
        for sha, path in _pairs(cfg, k.run_id, LS_OPEN) or []:
            if (zone / path).is_file():
                kept.setdefault(sha, path)
            else:  # its image deleted from 3C by hand: a task nobody can label; this run imports its own
                broken.append((sha, path))
        if broken:  # out of the project (unlabelled ones), and out of that run's kept list
            _forget_kept(cfg, k, broken, withdraw_tasks(cfg, k, broken))
    there = labelstudio.task_index(ls, project) if kept else {}
    mine = [(t.sha256, kept[t.sha256]) if (t.sha256, kept.get(t.sha256)) in there else (t.sha256, t.path)
            for t in own]
    new = [t for t, (_sha, path) in zip(own, mine, strict=True) if path == t.path]
    rep = labelstudio.import_tasks(ls, project, new, rs.label_config, batch=rs.tasks_per_import)
    write_work(cfg, st.run_id, LS_TASKS, mine)
    st.report["label_studio"] = {"url": ls.url, "project": project, "title": title, "tasks": len(mine),
                                 "imported": rep.imported, "present": rep.present, "requests": rep.requests,
                                 "taken_over": len(own) - len(new)}


def _finished(task: dict[str, Any]) -> bool:
    return any(not a.get("was_cancelled") for a in task.get("annotations") or [])


def _step_labels(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    rs = _ls_spec(c)
    ls = labelstudio.client_from_settings(cfg)
    project = int(st.report["label_studio"]["project"])
    if st.waiting_since is None:
        st.waiting_since = now()
    mine = set(ls_mine(cfg, c, st))
    released = st.gate.get("released")
    lsr = st.report["label_studio"]
    counters = labelstudio.progress(ls, project)  # before the export: a change after it is seen next time
    if (not released and int(lsr.get("finished", len(mine))) < len(mine) and lsr.get("counters") == counters
            and lsr.get("quiet_polls", 0) + 1 < LABELS_FULL_EVERY
            and since(st.waiting_since) < rs.timeout_s):  # (only ever to say: still waiting — never to fail)
        # nothing moved in the project since the last export: as many of this run's tasks are
        # finished as then, most likely — no snapshot (big projects: label-studio#1134), a full
        # one now and then (the counters stand still when one task loses its annotation as
        # another gets one), and always before the run fails at its timeout
        lsr.update(quiet_polls=lsr.get("quiet_polls", 0) + 1, checked=now())
        tasks, done = [], int(lsr["finished"])
    else:
        # the project may hold other runs' tasks (one project per title), and any project member may
        # add or edit tasks: this run's are those naming one of its staged files AND that file's
        # node — a task naming a staged path with another node's sha256 would label that node
        tasks = [t for t in labelstudio.export(ls, project)
                 if ((t.get("data") or {}).get(labelstudio.SHA_KEY), (t.get("data") or {}).get(labelstudio.PATH_KEY))
                 in mine]
        done = sum(_finished(t) for t in tasks)
        lsr.update(finished=done, checked=now(), counters=counters, quiet_polls=0, exports=lsr.get("exports", 0) + 1)
    if done < len(mine) and not released:
        waited = since(st.waiting_since)
        if waited >= rs.timeout_s:
            raise ActionError(f"run {st.run_id}: {done} of {len(mine)} tasks of Label Studio project {project} were "
                              f"labelled within {rs.timeout_s} s (run_spec.timeout_s); `hoard action release "
                              f"{st.run_id}` then {resume_line(st.run_id)} imports what is finished, or {resume_line(st.run_id)} "
                              "waits anew", ExitCode.UNAVAILABLE)
        raise Waiting(Status.WAITING_LABELS.value, min(LABELS_POLL_S, max(1.0, rs.timeout_s - waited)))
    rows = labelstudio.annotations_to_labels(tasks)
    root = roots_of(cfg, c, st).output_root
    out = root / EXPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(json.dumps(tasks, indent=1, ensure_ascii=False, sort_keys=True).encode())
    # the same export as COCO, by label-studio-sdk's converter (its own Python), each image the
    # run's own staged file (a task taken over shows an earlier run's copy of it)
    own = {t.sha256: t.path for t in _ls_tasks(cfg, c, st)}
    made = labelstudio.to_coco(ls, [{**t, "data": {**t["data"], labelstudio.PATH_KEY: own.get(
        t["data"][labelstudio.SHA_KEY], t["data"][labelstudio.PATH_KEY])}} for t in tasks],
        rs.label_config, root / "label-studio" / "coco")
    coco = root / COCO_NAME
    made.replace(coco)
    with Store.open(cfg) as store:
        res, cres = store.put_many([out, coco], klass="generated")
        for r, what in ((res, "export"), (cres, "COCO export")):
            if r.status == "rejected":
                raise ActionError(f"run {st.run_id}: its Label Studio {what} {display(str(r.path))} could not be "
                                  f"stored: {r.reason}; {resume_line(st.run_id)} once fixed", ExitCode.DATA)
        store.pin(f"action-{st.run_id}", [res.sha256, cres.sha256], f"Label Studio exports of action run {st.run_id}")
    labelled = sorted({t["data"][labelstudio.SHA_KEY] for t in tasks if _finished(t)})
    write_work(cfg, st.run_id, "labels", {"rows": rows, "export": [res.sha256, res.size],
                                          "coco": [cres.sha256, cres.size], "labelled": labelled})
    # released with tasks unlabelled: they stay in Label Studio, their images in 3C (finish),
    # until labelled — a later run over their nodes takes them over — or this run is cancelled
    finished = {(t["data"][labelstudio.SHA_KEY], t["data"][labelstudio.PATH_KEY]) for t in tasks if _finished(t)}
    left = sorted(mine - finished)
    write_work(cfg, st.run_id, LS_OPEN, left)
    st.report["label_studio"].update(labels=len(rows), export=res.sha256, coco=cres.sha256,
                                     released=bool(released) and done < len(mine), kept=len(left))


def _live_claims(cfg: Settings, action: str, but: str) -> set[tuple[str, str]]:
    """The tasks the runs of `action` that may still take labels (not cancelled, not past their
    labels step) wait for."""
    out: set[tuple[str, str]] = set()
    for k in all_states(cfg):
        if (k.run_id != but and k.action == action and k.status != Status.CANCELLED.value
                and "labels" not in k.done):
            out |= set(_pairs(cfg, k.run_id, LS_TASKS) or [])
    return out


def _shown(cfg: Settings, action: str, rid: str) -> bool:
    """A task some run of `action` waits for (not past its labels step) or keeps (its list of
    tasks not taken, once past it) shows a staged file of run `rid`."""
    head = f"{rid}/"
    for k in all_states(cfg):
        if k.action != action or k.status == Status.CANCELLED.value:
            continue
        listed = _pairs(cfg, k.run_id, LS_OPEN if "labels" in k.done else LS_TASKS) or []
        if any(p.startswith(head) for _sha, p in listed):
            return True
    return False


def _prune(cfg: Settings, runs: list[RunState], there: dict[tuple[str, str], Any] | None,
           taken: set[tuple[str, str]]) -> None:
    """Each kept run's list of tasks not taken, less those a run took (`taken`: their labels
    applied) and those deleted in Label Studio since (`there`: the project's tasks now; None:
    not known); then each stage no listed task shows any more is deleted (`_drop_unshown`)."""
    for k in runs:
        with flocked(lock_path(cfg, k.run_id)):
            now_st = load_state(cfg, k.run_id)
            if now_st is None:
                continue
            left = [t for t in _pairs(cfg, k.run_id, LS_OPEN) or []
                    if t not in taken and (there is None or t in there)]
            write_work(cfg, k.run_id, LS_OPEN, left)
            now_st.report.setdefault("label_studio", {})["kept"] = len(left)
            save_state(cfg, now_st)
    for k in runs:
        _drop_unshown(cfg, k.action, k.run_id)


def _drop_unshown(cfg: Settings, action: str, rid: str) -> None:
    """Run `rid`'s stage kept for Label Studio is deleted from 3C (its reservation given back)
    once no task a run keeps or waits for shows one of its files."""
    if _shown(cfg, action, rid):
        return
    with flocked(lock_path(cfg, rid)):
        st = load_state(cfg, rid)
        if st is None or st.status != Status.DONE.value:
            return
        lsr = st.report.setdefault("label_studio", {})
        if lsr.get("stage_deleted"):
            return
        try:
            outputs.clean(cfg, rid, "3C")
        except (outputs.zones.NoSuchOutput, outputs.OutputError):
            pass
        lsr["stage_deleted"] = now()
        save_state(cfg, st)
    log.info("run %s: no Label Studio task left to take shows its staged files: deleted from 3C", rid)


def sweep_kept(cfg: Settings, st: RunState) -> None:
    """At the end of run `st` (finish, cancel): the kept lists of the done runs of its action in
    its project lose the tasks `st` took and those deleted in Label Studio since, and a stage
    none shows is deleted (`_prune`). Label Studio not answering: only what `st` took leaves."""
    lsr = st.report.get("label_studio") or {}
    if lsr.get("project") is None:
        return
    runs = _kept_runs(cfg, st.action, lsr.get("url"), lsr.get("project"), but=st.run_id)
    if not runs:
        return
    left = _pairs(cfg, st.run_id, LS_OPEN)  # (None: its labels step did not end: it took none)
    taken = set(_pairs(cfg, st.run_id, LS_TASKS) or []) - set(left) if left is not None else set()
    there: dict[tuple[str, str], Any] | None
    try:
        there = labelstudio.task_index(labelstudio.client_from_settings(cfg), int(lsr["project"]))
    except labelstudio.LabelStudioError as e:
        log.info("run %s: Label Studio not asked which kept tasks are deleted: %s", st.run_id, e.message)
        there = None
    _prune(cfg, runs, there, taken)


def withdraw_tasks(cfg: Settings, st: RunState, tasks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Delete from the run's Label Studio project those of `tasks` nobody labelled (a labelled
    one is people's work: it stays there) and no other run of its action waits for; the kept
    lists lose them (`_prune`). The unlabelled ones another run waits for are returned.
    LabelStudioError when Label Studio does not answer."""
    lsr = st.report.get("label_studio") or {}
    ls = labelstudio.client_from_settings(cfg)
    there = labelstudio.task_index(ls, int(lsr["project"]))
    claimed = _live_claims(cfg, st.action, st.run_id)
    gone = [t for t in tasks if t in there and not there[t]["labelled"] and t not in claimed]
    labelstudio.delete_tasks(ls, [there[t]["id"] for t in gone])
    lsr["withdrawn"] = lsr.get("withdrawn", 0) + len(gone)
    after = {t: v for t, v in there.items() if t not in set(gone)}
    _prune(cfg, _kept_runs(cfg, st.action, lsr.get("url"), lsr.get("project"), but=st.run_id), after, set())
    return [t for t in tasks if t in after and t in claimed and not after[t]["labelled"]]


def _forget_kept(cfg: Settings, k: RunState, tasks: list[tuple[str, str]], waited: list[tuple[str, str]]) -> None:
    """Kept run `k` keeps `tasks` no more, but those another run waits for (`waited`)."""
    with flocked(lock_path(cfg, k.run_id)):
        now_st = load_state(cfg, k.run_id)
        if now_st is None:
            return
        drop = set(tasks) - set(waited)
        left = [t for t in _pairs(cfg, k.run_id, LS_OPEN) or [] if t not in drop]
        write_work(cfg, k.run_id, LS_OPEN, left)
        now_st.report.setdefault("label_studio", {})["kept"] = len(left)
        save_state(cfg, now_st)
    _drop_unshown(cfg, k.action, k.run_id)


def cancel_kept(cfg: Settings, rid: str) -> RunState:
    """`hoard action cancel RUN` of a done AC5 run whose partial release left tasks not taken:
    the unlabelled ones leave the Label Studio project (`withdraw_tasks`; those another run
    waits for stay), none is kept for a later run any more, and its kept stage is deleted once
    no task shows it. Its labels stand: it stays done."""
    st = load_state(cfg, rid)
    assert st is not None
    waited = withdraw_tasks(cfg, st, _pairs(cfg, rid, LS_OPEN) or [])
    with flocked(lock_path(cfg, rid)):
        now_st = load_state(cfg, rid)
        assert now_st is not None
        lsr = now_st.report.setdefault("label_studio", {})
        lsr["withdrawn"] = st.report["label_studio"].get("withdrawn", 0)
        write_work(cfg, rid, LS_OPEN, waited)
        lsr["kept"] = len(waited)
        save_state(cfg, now_st)
    _drop_unshown(cfg, st.action, rid)
    return load_state(cfg, rid) or now_st


def _ac5_intent(cfg: Settings, st: RunState, doc: dict[str, Any]) -> dict[str, Any]:
    """The labels, the export nodes (the JSON export located `action:<run>/label-studio/export.json`
    and its COCO conversion `action:<run>/label-studio/coco.json`, the run id being the batch id)
    and an edge `labelled_in` from each labelled input to each of them."""
    work = read_work(cfg, st.run_id, "labels")
    files = [(EXPORT_NAME, work["export"])] + ([(COCO_NAME, work["coco"])] if work.get("coco") else [])
    doc["labels"] = [{"node": h, "key": k, "value": v, "origin": origin(st)} for h, k, v in work["rows"]]
    doc["nodes"] = [{"sha256": sha, "physical": {"size": size, "file_type": "json",
                                                 "locators": [f"action:{st.run_id}/{name}"]}}
                    for name, (sha, size) in files]
    doc["edges"] = [{"parent": h, "child": sha, "relationship": EXPORT_RELATIONSHIP}
                    for _name, (sha, _size) in files for h in work["labelled"]]
    doc["relationships"] = [{"name": EXPORT_RELATIONSHIP, "action": st.action_num}] if doc["edges"] else []
    return doc


# -- apply --------------------------------------------------------------------------------------

_EXT = re.compile(r"[a-z0-9]{1,10}")


def build_intent(cfg: Settings, st: RunState) -> dict[str, Any]:
    """The run's one write-intent. Its body depends only on the work files and the state's
    fixed times: an apply run again after a crash sends the same body (exactly once by key)."""
    c = contract_of(cfg, st)
    event = {"batch_id": st.run_id, "action": st.action_num, "status": "done", "started_at": st.created,
             "ended_at": st.report["ended_at"], "detail": {"run": st.run_id, "version": st.version,
                                                            "params": st.params}}
    doc: dict[str, Any] = {"key": f"action:{st.run_id}", "events": [event]}
    if c.action_type == "AC1":
        plan = read_work(cfg, st.run_id, "plan")
        doc["labels"] = [{"node": h, "key": k, "value": v, "origin": origin(st)} for h, k, v in plan["labels"]]
        doc["black_list"] = plan["black_list"]
        return doc
    if c.action_type == "AC5":
        return _ac5_intent(cfg, st, doc)
    parsed = read_work(cfg, st.run_id, "parsed")
    stored = {p: tuple(v) for p, v in read_work(cfg, st.run_id, "stored").items()}
    nodes, edges, labels, results = [], [], [], []
    for ch in parsed["children"]:
        sha, size = stored[ch["path"]]
        ext = Path(ch["path"]).suffix.lstrip(".").lower()
        nodes.append({"sha256": sha, "physical": {"size": size, "file_type": ext if _EXT.fullmatch(ext) else None,
                                                  "locators": [f"action:{st.run_id}/{ch['path']}"]}})
        parent = ch["parent_sha256"] or stored[ch["parent_path"]][0]
        if parent != sha:  # a worker that copied its input: the same node, no edge to itself
            edges.append({"parent": parent, "child": sha, "relationship": ch["relationship"]})
        labels += [{"node": sha, "key": k, "value": v, "origin": origin(st)} for k, v in ch["labels"].items()]
    for r in parsed["records"]:
        node = r["node_sha256"] or stored[r["child_path"]][0]
        if r["into"] == "labels":
            labels.append({"node": node, "key": str(r["values"]["key"]), "value": str(r["values"].get("value") or ""),
                           "origin": origin(st)})
        else:
            results.append({"table": r["into"], "node": node, "batch_id": st.run_id, "values": r["values"]})
    doc.update(relationships=[{"name": n, "action": st.action_num}
                              for n in sorted({e["relationship"] for e in edges})],
               nodes=nodes, edges=edges, labels=labels, results=results)
    if c.action_type in MEMOISED:  # the inputs its worker ran on: a later run reuses this one's results
        key = params_digest(st.params)
        doc["memo"] = [{"action": st.action_num, "version": st.version, "params": key, "node": h, "run": st.run_id}
                       for h in run_inputs(cfg, st)]
    return doc


#: the work file of what `hoard action collect RUN` wrote (hoardfs.jobs.actions.collect)
COLLECTED = "collected"


def withdraw_collected(cfg: Settings, st: RunState, conn: psycopg.Connection, intent: dict[str, Any]) -> dict[str, int]:
    """Inside the apply's transaction, before its intent: what collects of this run wrote is
    taken back — its batch's rows in the result tables they wrote (the intent writes the final
    rows) and the labels they added that the intent does not hold — so the run's final outputs
    win over a file collected half-written or a task relabelled since. Nothing once the intent
    is applied (a retried apply) or where nothing was collected."""
    try:
        done = read_work(cfg, st.run_id, COLLECTED)
    except FileNotFoundError:
        return {}
    if is_applied(conn, str(intent["key"])):
        return {}
    final = {(lb["node"], lb["key"], lb["value"]) for lb in intent.get("labels", [])}
    stale = [(str(h), str(k), str(v)) for h, k, v in done["labels"] if (h, k, v) not in final]
    return withdraw(conn, st.run_id, done["tables"], stale, origin(st))


def _step_apply(cfg: Settings, st: RunState) -> None:
    if "ended_at" not in st.report:  # fixed before the intent is built: a retry sends the same body
        st.report["ended_at"] = now()
        save_state(cfg, st)
    intent = build_intent(cfg, st)
    with _connect(cfg) as conn:
        migrate(conn)
        own_table(conn, contract_of(cfg, st))
        withdrawn: dict[str, int] = {}
        if work(cfg, st.run_id, COLLECTED).exists():
            with conn.transaction():  # what collect wrote goes with the final rows' arrival, or neither
                withdrawn = withdraw_collected(cfg, st, conn, intent)
                res = apply_write_intent(conn, intent)
        else:  # (outside a transaction: an apply rolled back by a write conflict is retried)
            res = apply_write_intent(conn, intent)
    st.report.update(database=res.counts, intent=res.key, intent_was_applied_before=res.noop)
    if withdrawn:
        st.report["collected_withdrawn"] = withdrawn


# -- finish -------------------------------------------------------------------------------------

def _step_finish(cfg: Settings, st: RunState) -> None:
    c = contract_of(cfg, st)
    keep = c.action_type == "AC5" and any(p.startswith(f"{st.run_id}/") for _sha, p in
                                           _pairs(cfg, st.run_id, LS_OPEN) or [])
    if c.action_type == "AC5":
        sweep_kept(cfg, st)  # the tasks it took leave earlier runs' kept lists; a stage none shows goes
    if keep:  # its unlabelled tasks show these files: kept, with its reservation, until none does (_drop_unshown)
        with Store.open(cfg) as store:
            store.unpin(f"action-{st.run_id}")
    elif c.action_type != "AC1":
        try:
            # renamed aside at once (20,000 unlinks took 8–48 s, bench/action_overhead.py); the
            # trash is deleted once the run is recorded done (runner.after_done), its bytes
            # counted as 3C's until then, the reservation released now
            res = outputs.clean(cfg, st.run_id, "3C", aside=True)
            st.report["3c_set_aside"] = res.get("trashed", [])
        except outputs.zones.NoSuchOutput:
            pass  # cleaned by an earlier finish cut short after it
        with Store.open(cfg) as store:
            store.unpin(f"action-{st.run_id}")
    st.report["finished_at"] = now()


STEPS: dict[str, Callable[[Settings, RunState], None]] = {
    "plan": _step_plan, "stage": _step_stage, "gate": _step_gate, "run": _step_run, "parse": _step_parse,
    "store": _step_store, "tasks": _step_tasks, "labels": _step_labels, "apply": _step_apply,
    "finish": _step_finish}


def cleanup_cancelled(cfg: Settings, st: RunState) -> None:
    """A cancelled run ends a worker its dead runner left, then gives its 3C output and
    reservation back and drops the store pin of its children (nothing was applied, nothing will
    be: gc may take them). An AC5 run's unlabelled tasks leave its Label Studio project
    (`withdraw_tasks`): their images go with its 3C output."""
    if (st.report.get("label_studio") or {}).get("project") is not None:
        try:
            withdraw_tasks(cfg, st, _pairs(cfg, st.run_id, LS_TASKS) or [])
        except labelstudio.LabelStudioError as e:  # the cancel stands; say what was left
            st.report["label_studio"]["tasks_left"] = f"not removed from Label Studio: {e.message}"
    end_left_worker(cfg, st)
    unpin_children(cfg, st)
    try:
        outputs.clean(cfg, st.run_id, "3C")
    except (outputs.zones.NoSuchOutput, outputs.OutputError):
        pass
    except Exception as e:  # the cancel stands; say what was left
        st.report["3c_kept"] = f"{cfg.ssd.zone_path('3C') / st.run_id}: {e}"


def unpin_children(cfg: Settings, st: RunState) -> None:
    """Drop the pin `action-<run>` the store step put on the run's children (a cancelled run
    will never apply them; the file alone, no store opened)."""

    if pin_path(cfg, f"action-{st.run_id}").exists():
        pin_path(cfg, f"action-{st.run_id}").unlink(missing_ok=True)
        st.report["children_unpinned"] = True
        log.info("run %s: the pin of its stored children dropped (cancelled; gc may take them)", st.run_id)


def record_ending(cfg: Settings, st: RunState, status: str) -> None:
    """A run that ended failed or cancelled gets its `action_event` (status failed/cancelled, the
    error line in detail) — its own write-intent `action-end:<run>:<attempt>`, outside the
    product's `action:<run>`, exactly once per ending: the key is the attempt's start stamp, so
    an event written by a process that died before saving the state is not reused by the next
    ending, and a cancel of a run that failed in this attempt is that same ending (no second
    event). PostgreSQL down (often why the run failed): the event waits in the state
    (`pending_events`) and is written by the next `hoard action status` or `run` of the run."""
    key = f"action-end:{st.run_id}:{st.attempt}"
    if st.ended_attempt == st.attempt:  # this attempt's ending is recorded (or waits) already
        save_state(cfg, st)
        return
    st.ended_attempt = st.attempt
    st.endings += 1
    event = {"batch_id": st.run_id, "action": st.action_num, "status": status, "started_at": st.created,
             "ended_at": now(), "detail": {"run": st.run_id, "version": st.version, "params": st.params,
                                            "step": st.step, "error": st.error or ""}}
    st.pending_events.append({"key": key, "events": [event]})
    write_pending_events(cfg, st)


def write_pending_events(cfg: Settings, st: RunState) -> bool:
    """Write the ending events PostgreSQL could not take before (each exactly once by its key);
    True when none is left. The state is saved either way."""
    try:
        if st.pending_events:
            with _connect(cfg) as conn:
                while st.pending_events:
                    try:
                        apply_write_intent(conn, st.pending_events[0])
                    except IntentConflict:
                        pass  # this attempt's ending was written by a process that died before saving
                    _emit_failed(cfg, st, st.pending_events[0], conn)
                    st.pending_events.pop(0)
        st.report.pop("ending_event", None)
    except psycopg.OperationalError as e:
        st.report["ending_event"] = (f"not recorded in PostgreSQL yet ({str(e).strip().splitlines()[0][:200]}); "
                                     "`hoard action status` or `run` writes it once PostgreSQL answers")
        log.info("run %s: its ending event was not recorded: %s", st.run_id, st.report["ending_event"])
    save_state(cfg, st)
    return not st.pending_events


def _emit_failed(cfg: Settings, st: RunState, intent: dict[str, Any], conn: psycopg.Connection) -> None:
    """The webhooks' `run_failed` (hoardfs.jobs.events) of an ending just written: once per attempt (its
    key is the ending's), and only once PostgreSQL took the ending — so it waits with it."""
    for ev in intent.get("events", []):
        if ev.get("status") == Status.FAILED.value:
            events.emit(cfg, "run_failed", "run_failed:" + str(intent["key"]).removeprefix("action-end:"), st.run_id,
                        {"run": st.run_id, "action": st.action, "ended_at": ev.get("ended_at")} | ev.get("detail", {}),
                        conn=conn)


def wait_a_little(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep in the foreground (`--here` at a gate or for an external worker), a second at a time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop():
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
