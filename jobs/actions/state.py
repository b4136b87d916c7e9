"""A run's state: its key and id, its file in <ssd.root>/state/actions/<run>.json (status, step,
steps done, seconds per step, error, report, gate), written atomically after every change; its
heartbeat file; the work files the steps hand each other; the job id of each step.

A run's files are trusted only when they prove themselves (docs/security.md, "Run state"):
each is the service's own (0600, its owner the service's user, no link: `load_owned`), and
its recorded contract, parameters and inputs hash to its run id (`proof_problem`, the key a
remote host checks too); a run that does not is refused (`RunRefused`) wherever it is loaded.
What a step runs must also be the contract the service has now (`check_runnable`). The file is
read and written through the run-state store of every kind of run (`hoardfs.jobs.runs`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import load_owned, write_owned
from hoardfs.base.paths import display
from hoardfs.jobs import runs
from hoardfs.jobs.actions.contract import Contract, find_any, load_file
from hoardfs.jobs.actions.params import canonical, parse_params
from hoardfs.jobs.runs import Status, now

log = logging.getLogger(__name__)

#: the steps of each type (docs/actions.md, "Runs"); `gate` only when the contract has one
STEPS_AC1 = ("plan", "apply", "finish")
STEPS_WORKER = ("plan", "stage", "gate", "run", "parse", "store", "apply", "finish")
STEPS_AC5 = ("plan", "stage", "tasks", "labels", "apply", "finish")
#: an AC2–AC4 run with --remote (hoardfs.jobs.actions.remote): stage, run and parse on another host
#: (one job on the `remote` queue, which `remote` queues and waits for), its children collected
STEPS_REMOTE = ("plan", "gate", "remote", "collect", "apply", "finish")
QUEUE_OF = {"plan": "sql", "stage": "io", "gate": "maintenance", "run": "actions", "parse": "io", "store": "io",
            "tasks": "maintenance", "labels": "maintenance", "apply": "sql", "finish": "maintenance",
            "remote": "actions", "collect": "io"}
#: the action types whose runs are memoised per input (`action_memo`: a worker runs on each);
#: AC1's rules are cheap and see the selection whole, AC5's labels are people's
MEMOISED = ("AC2", "AC3", "AC4")
#: RQ timeout of a step (the worker's own timeout is the contract's; the run step adds a margin)
STEP_TIMEOUT_S = 6 * 3600
#: a running step writes its heartbeat this often …
HEARTBEAT_S = 5
#: … and a run "running" whose heartbeat is older than this is reported failed
STALE_S = 120
#: how often a waiting `external` run looks for its done marker
EXTERNAL_POLL_S = 30
#: how often a --remote run looks whether its host's job ended (Redis, then the bucket)
REMOTE_POLL_S = 5
#: how often an AC5 run waiting for its labellers asks Label Studio how far they are
LABELS_POLL_S = 60
RUN_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}-v[0-9]+-[0-9a-f]{12}")


#: the statuses a run takes (`Status`, the one of every kind of run)
STATUSES = runs.STATUSES["actions"]
WAITING = (Status.WAIT_GPU_READY.value, Status.WAITING_EXTERNAL.value, Status.WAITING_LABELS.value,
           Status.WAITING_REMOTE.value)


class ActionError(HoardError):
    exit_code = ExitCode.USAGE


class RunRefused(ActionError):
    """A run whose files do not prove themselves (another account's, writable by others, or
    not hashing to its id): nothing of it is run. One line naming the file, exit 5."""

    exit_code = ExitCode.DATA


class Cancelled(ActionError):
    """The run was cancelled (`hoard action cancel`) while a step ran."""


class Waiting(Exception):  # not an error: the step ends and the run waits
    """A step that must wait (the gate, an external worker) ends here without holding a worker;
    a poll job (or `hoard action release`) runs it again."""

    def __init__(self, status: str, poll_s: float) -> None:
        super().__init__(status)
        self.status, self.poll_s = status, poll_s


@dataclass
class RunState:
    run_id: str
    action: str
    version: int
    action_type: str
    #: action.action_id in the database (hoardfs.sql.batches.register_action)
    action_num: int
    params: dict[str, Any]
    steps: list[str]
    inputs: int
    status: str = Status.QUEUED.value
    step: str = "plan"
    done: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: now())
    updated: str = field(default_factory=lambda: now())
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    #: the gate: when the run began waiting, released by hand, the hook's last answer (AC5: the
    #: labels step, "released" = import what is finished now)
    gate: dict[str, Any] = field(default_factory=dict)
    #: an external run: when it began waiting for the done marker
    waiting_since: str | None = None
    exit_code: int = 0
    #: the worker process running now: its session id (= pid), start time (ticks after boot) and
    #: boot id, so that a later process can end it if this runner dies (steps.end_left_worker)
    worker: dict[str, Any] | None = None
    #: how many times the run ended failed or cancelled (each wrote one action_event)
    endings: int = 0
    #: who launched it (a GUI login; empty from the command line), as other runs record it
    by: str = ""
    #: `hoard action run --rerun`: when it was asked for — part of the run's key (another run
    #: than the one over the same inputs before), and its inputs are run whatever the memo says
    rerun: str = ""
    #: when this attempt began (submitted, or resumed by `hoard action run` again): the key of
    #: the attempt's ending event (`action-end:<run>:<attempt>`), so that an ending whose event
    #: was written but whose state was not saved (a crash between the two) is not mistaken for
    #: the next one, and a cancel after a failure is the same ending, not a second
    attempt: str = field(default_factory=lambda: stamp())
    #: ending events PostgreSQL could not take (it was down): retried by `status` and `run`
    pending_events: list[dict[str, Any]] = field(default_factory=list)
    #: the attempt whose ending event is recorded (one per attempt)
    ended_attempt: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == Status.DONE.value


def stamp() -> str:
    """A start stamp unique to the microsecond (an attempt's)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def since(stamp: str) -> float:
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()


def run_key(action: str, version: int, params_canonical: str, inputs: list[str], rerun: str = "") -> str:
    """sha256 of the canonical JSON of what makes a run the same run (`rerun`: the time a
    `--rerun` was asked for, which makes it another run)."""
    doc: dict[str, Any] = {"action": action, "version": version, "params": params_canonical, "inputs": sorted(inputs)}
    if rerun:
        doc["rerun"] = rerun
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_id(action: str, version: int, key: str) -> str:
    return f"{action}-v{version}-{key[:12]}"


def run_id_of(action: str, version: int, params: dict[str, Any], inputs: list[str], rerun: str = "") -> str:
    """The id of the run of `action` v`version` on the typed `params` and `inputs` (and the
    `--rerun` stamp, if any): what `hoard action run` records it as, what a remote host and
    every load of its state check."""
    return run_id(action, version, run_key(action, version, canonical(params) if params else "{}", inputs, rerun))


def params_digest(params: dict[str, Any]) -> str:
    """sha256 (hex) of the typed parameters' canonical JSON: the parameters' part of the memo
    key (action, version, parameters, input), as the run key hashes them."""
    return hashlib.sha256((canonical(params) if params else "{}").encode()).hexdigest()


def typed_params(c: Contract, params: dict[str, Any], cfg: Settings | None = None) -> dict[str, Any]:
    """Recorded parameters typed again against contract `c` (ParamError, one line, when one is
    not the contract's): each given as `--param NAME=VALUE` would give it."""
    return parse_params(c, [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in params.items()], cfg)


def steps_of(c: Contract, remote: bool = False) -> list[str]:
    if remote:  # stage, run, parse on another host; its children collected (hoardfs.jobs.actions.remote)
        return [s for s in STEPS_REMOTE if s != "gate" or c.gate is not None]
    if c.action_type == "AC1":
        return list(STEPS_AC1)
    if c.action_type == "AC5":
        return list(STEPS_AC5)
    return [s for s in STEPS_WORKER if s != "gate" or c.gate is not None]


# -- files --------------------------------------------------------------------------------------

def state_dir(cfg: Settings) -> Path:
    return runs.state_dir(cfg, "actions")


def check_id(rid: str) -> str:
    if not RUN_ID.fullmatch(rid or ""):
        raise ActionError(f"{rid!r:.80} is not a run id (ACTION-vVERSION-KEY, as `hoard action run` printed it); "
                          "`hoard action runs` lists them")
    return rid


#: the way on from a damaged file of a run
_DAMAGED_WAY_ON = "remove it and run the action again"


def _read(path: Path, rid: str) -> Any:
    """One of run `rid`'s files, the service's own (RunRefused otherwise), as JSON; None when
    there is none; ActionError (one line naming it, exit 5) when it is damaged."""
    return runs.read(path, f"the state of run {rid}", _DAMAGED_WAY_ON, ActionError, RunRefused)


def load_state(cfg: Settings, rid: str) -> RunState | None:
    """Run `rid`'s state, None when there is none; RunRefused (one line naming the file) when
    its files do not prove themselves, ActionError (one line, exit 5) when it is damaged: not
    JSON, not a run's state (`hoardfs.jobs.runs.load`)."""
    path = state_dir(cfg) / f"{check_id(rid)}.json"
    st = runs.load(path, RunState, "actions", f"the state of run {rid}", _DAMAGED_WAY_ON, ActionError, RunRefused)
    if st is None:
        return None
    why = proof_problem(cfg, st, rid)
    if why:
        raise RunRefused(f"{display(str(path))}: {why}: not written by hoardfs, so nothing of it is run; remove "
                         f"{display(str(state_dir(cfg)))}/{rid}.*")
    return st


#: runs proven in this process: run id → (what the proof read: its state's fields and its
#: work files' identities). A file replaced since (another inode, size or time) is read again.
_PROVEN: dict[str, tuple[Any, ...]] = {}
_SHA = re.compile(r"[0-9a-f]{64}")


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        s = os.lstat(path)
    except OSError:
        return None
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_uid, s.st_mode)


def proof_problem(cfg: Settings, st: RunState, rid: str) -> str | None:
    """Why run `rid`'s state `st` does not prove itself (a clause), None when it does: its
    recorded contract (`<run>.contract.json`), parameters and inputs (`<run>.inputs.json`)
    hash to its id (`run_id_of`, the key `hoard action run` made), the state names that
    contract's action, version, type and steps, and the parameters are the contract's. Its
    work files are the service's own (RunRefused otherwise)."""
    if not (isinstance(st.steps, list) and isinstance(st.done, list) and st.step in st.steps
            and all(isinstance(d, str) and d in st.steps for d in st.done)):
        return "its step and steps done are not among its steps"
    fields = (st.run_id, st.action, st.version, st.action_type, st.inputs, repr(st.params), repr(st.steps),
              repr(st.rerun))
    seen = (fields, _identity(work(cfg, rid, "contract")), _identity(work(cfg, rid, "inputs")))
    if _PROVEN.get(rid) == seen:
        return None
    if st.run_id != rid:
        return f"it names another run ({display(str(st.run_id))[:80]})"
    doc, inputs = _read(work(cfg, rid, "contract"), rid), _read(work(cfg, rid, "inputs"), rid)
    if doc is None or inputs is None:
        return f"its recorded {'contract' if doc is None else 'inputs'} ({rid}.{'contract' if doc is None else 'inputs'}.json) is missing"
    try:
        c = Contract.model_validate(doc)
    except ValueError:
        return f"its recorded contract ({rid}.contract.json) is not a contract"
    if not (isinstance(inputs, list) and all(isinstance(h, str) and _SHA.fullmatch(h) for h in inputs)
            and len(set(inputs)) == len(inputs) == st.inputs):
        return f"its recorded inputs ({rid}.inputs.json) are not the {st.inputs!r:.20} sha256s its state counts"
    if (st.action, st.version, st.action_type) != (c.action_id, c.version, c.action_type):
        return f"its state names another action than its recorded contract ({c.action_id} v{c.version})"
    if st.steps not in (steps_of(c), steps_of(c, remote=True)):
        return f"its steps are not those of action {c.action_id} ({c.action_type})"
    if not isinstance(st.params, dict):
        return "its parameters are not a table"
    try:
        typed = typed_params(c, st.params, cfg)
    except HoardError as e:
        return f"its parameters are not the contract's ({first_line(e)[:200]})"
    try:
        same = canonical(typed) == canonical(st.params)
    except (TypeError, ValueError):  # (a value JSON holds that no parameter types to: NaN)
        same = False
    if not isinstance(st.rerun, str) or len(st.rerun) > 64:
        return "its --rerun stamp is not a time"
    if not same or run_id_of(c.action_id, c.version, typed, inputs, st.rerun) != rid:
        return f"its contract, parameters and inputs do not hash to run {rid}"
    _PROVEN[rid] = seen
    return None


def own_contract(cfg: Settings, name: str) -> tuple[Contract, Path, bool]:
    """Action `name`'s contract as this service has it now: (the contract, its file, whether a
    built-in) — the actions directory's file, else the built-in; ContractError when neither."""
    path, builtin = find_any(cfg.actions_dir, name)
    return load_file(path), path, builtin


def runnable_problem(cfg: Settings, st: RunState) -> str | None:
    """Why run `st` must not run a step now (one line with the way on), None when it may: the
    contract it was recorded with is, key for key, its action's contract as the service has it
    now (the actions directory's file, else the built-in) — a remote host checks the same. Its
    files prove the rest (`load_state`); a contract swapped in beside a state, or edited in
    place without raising its version, is not run."""
    rid = st.run_id
    try:
        recorded = Contract.model_validate(read_work(cfg, rid, "contract"))
    except (OSError, ValueError) as e:
        return f"run {rid}: its recorded contract cannot be read ({first_line(e)[:200]}); remove its files and run it again"
    try:
        own, path, builtin = own_contract(cfg, recorded.action_id)
    except HoardError as e:
        return (f"run {rid}: action {recorded.action_id} is not one of this service's now ({first_line(e)[:200]}), so it "
                f"is not run; put its contract in {display(str(cfg.actions_dir))} (then {resume_line(rid)}), or "
                f"remove the run's files ({display(str(state_dir(cfg)))}/{rid}.*) if nobody here recorded it")
    if own.model_dump(mode="json") != recorded.model_dump(mode="json"):
        where = "the built-in" if builtin else display(str(path))
        return (f"run {rid}: the contract it was recorded with is not action {own.action_id} v{own.version} as {where} "
                f"has it now (edited without raising its version, or swapped in beside the run), so it is not run; "
                f"raise `version` there to run it as it is now (another run), or put back the one recorded "
                f"({display(str(work(cfg, rid, 'contract')))}) and then {resume_line(rid)}")
    return None


def check_runnable(cfg: Settings, st: RunState) -> None:
    """`runnable_problem` as an ActionError (exit 5)."""
    why = runnable_problem(cfg, st)
    if why:
        raise ActionError(why, ExitCode.DATA)


def save_state(cfg: Settings, st: RunState) -> None:
    runs.save(state_dir(cfg) / f"{st.run_id}.json", st)


@dataclass
class Refusal:
    """A state file in the actions' state directory that does not prove itself: its run id
    (the file's name), the one line saying why, when it was last changed."""

    run_id: str
    line: str
    changed: str


def refusal(cfg: Settings, rid: str, line: str) -> Refusal:
    """Run `rid`'s Refusal: `line`, and when its state file was last changed."""
    try:
        when = dt.datetime.fromtimestamp((state_dir(cfg) / f"{rid}.json").lstat().st_mtime, dt.UTC)
    except OSError:
        when = dt.datetime.now(dt.UTC)
    return Refusal(rid, line, when.isoformat(timespec="seconds"))


#: refusals already logged by this process (each once)
_WARNED: set[str] = set()


def scan_states(cfg: Settings) -> tuple[list[RunState], list[Refusal]]:
    """Every run's state that proves itself, and a Refusal for each that does not (each logged
    once as a WARNING): a file another account planted, one others may write, one whose
    contract, parameters and inputs do not hash to its id. A damaged file is skipped."""
    out, refused = [], []
    for p in sorted(state_dir(cfg).glob("*.json")):
        if p.name.count(".") == 1 and RUN_ID.fullmatch(p.stem):
            try:
                st = load_state(cfg, p.stem)
            except RunRefused as e:
                refused.append(refusal(cfg, p.stem, e.message))
                if e.message not in _WARNED:
                    _WARNED.add(e.message)
                    log.warning("action run refused: %s", e.message)
                continue
            except HoardError:
                continue
            if st is not None:
                out.append(st)
    return out, refused


def all_states(cfg: Settings) -> list[RunState]:
    """Every run's state that proves itself (`scan_states`)."""
    return scan_states(cfg)[0]


def work(cfg: Settings, rid: str, what: str) -> Path:
    """A work file steps hand each other: `<run>.<what>.json` (inputs, contract, plan, parsed …)."""
    return state_dir(cfg) / f"{rid}.{what}.json"


def read_work(cfg: Settings, rid: str, what: str) -> Any:
    """A work file, the service's own (`load_owned`: NotOwn, one line, otherwise; FileNotFoundError
    when there is none)."""
    return json.loads(load_owned(work(cfg, rid, what)))


def write_work(cfg: Settings, rid: str, what: str, doc: Any) -> None:
    write_owned(work(cfg, rid, what), json.dumps(doc).encode())


def beat(cfg: Settings, rid: str) -> None:
    """The heartbeat: the mtime of `<run>.beat`."""
    path = state_dir(cfg) / f"{rid}.beat"
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch()


def heartbeat_age(cfg: Settings, rid: str) -> float | None:
    try:
        return time.time() - (state_dir(cfg) / f"{rid}.beat").stat().st_mtime
    except FileNotFoundError:
        return None


def cancel_flag(cfg: Settings, rid: str) -> Path:
    return state_dir(cfg) / f"{rid}.cancel"


def lock_path(cfg: Settings, rid: str) -> Path:
    return state_dir(cfg) / f"{rid}.lock"


def here_lock_path(cfg: Settings, rid: str) -> Path:
    """Held by `hoard action run --here` for as long as it runs the run's steps (between steps
    and while it waits at a gate too): no Redis job is needed for that run to move on."""
    return state_dir(cfg) / f"{rid}.here.lock"


def log_path(cfg: Settings, rid: str) -> Path:
    """The worker's stdout and stderr."""
    return state_dir(cfg) / f"{rid}.worker.log"


def resume_line(rid: str) -> str:
    """The way on of a run that stopped: the one command that resumes exactly this run, with
    the inputs and parameters it was recorded with (`hoard action run NAME` again is that run
    only with the same --nodes/--selector/--param)."""
    return f"`hoard action resume {rid}`"


#: phrases of the one-line errors the steps meet (hoardfs.jobs.outputs, hoardfs.jobs.ingest, the Label Studio
#: client, the parser) that mean "do it again", each replaced by the run's resume command
_AGAIN_PHRASES = ("run the action again", "`hoard ingest --resume`", "the same command again",
                  "`hoard action run` resumes it", "run it again")


def with_way_on(line: str, rid: str) -> str:
    """A step's error line naming `hoard action resume RUN` as its way on: a generic "again" is
    replaced by it, and a line that names none gets it appended."""
    way = resume_line(rid)
    for phrase in _AGAIN_PHRASES:
        line = line.replace(phrase, f"{way} resumes it" if phrase.endswith("resumes it") else way)
    if way not in line:
        line = f"{line.rstrip('. ')}; then {way}"
    return line


def job_id(rid: str, step: str, suffix: str = "") -> str:
    return f"action-{rid}-{step}{suffix}"
