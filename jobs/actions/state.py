"""A run's state: its key and id, its file in <ssd.root>/state/actions/<run>.json (status, step,
steps done, seconds per step, error, report, gate), written atomically after every change; its
heartbeat file; the work files the steps hand each other; the job id of each step."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fsd.base.config import Settings
from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import atomic_write

#: the steps of each type (docs/actions.md, "Runs"); `gate` only when the contract has one
STEPS_AC1 = ("plan", "apply", "finish")
STEPS_WORKER = ("plan", "stage", "gate", "run", "parse", "store", "apply", "finish")
STEPS_AC5 = ("plan", "stage", "tasks", "labels", "apply", "finish")
#: an AC2–AC4 run with --remote (jobs.actions.remote): stage, run and parse on another host
#: (one job on the `remote` queue, which `remote` queues and waits for), its children collected
STEPS_REMOTE = ("plan", "gate", "remote", "collect", "apply", "finish")
QUEUE_OF = {"plan": "sql", "stage": "io", "gate": "maintenance", "run": "actions", "parse": "io", "store": "io",
            "tasks": "maintenance", "labels": "maintenance", "apply": "sql", "finish": "maintenance",
            "remote": "actions", "collect": "io"}
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


class Status(str, enum.Enum):  # noqa: UP042  # StrEnum would change str(member), which messages print
    QUEUED = "queued"
    RUNNING = "running"
    WAIT_GPU_READY = "WAIT_GPU_READY"
    WAITING_EXTERNAL = "waiting_external"
    WAITING_LABELS = "waiting_labels"
    #: a --remote run while a host of the `remote` queue stages, runs and parses it
    WAITING_REMOTE = "waiting_remote"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


WAITING = (Status.WAIT_GPU_READY.value, Status.WAITING_EXTERNAL.value, Status.WAITING_LABELS.value,
           Status.WAITING_REMOTE.value)


class ActionError(HoardError):
    exit_code = ExitCode.USAGE


class Cancelled(ActionError):
    """The run was cancelled (`hoard action cancel`) while a step ran."""


class Waiting(Exception):  # noqa: N818 - not an error: the step ends and the run waits
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
    #: action.action_id in the database (sql.batches.register_action)
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


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stamp() -> str:
    """A start stamp unique to the microsecond (an attempt's)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def since(stamp: str) -> float:
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()


def run_key(action: str, version: int, params_canonical: str, inputs: list[str]) -> str:
    """sha256 of the canonical JSON of what makes a run the same run."""
    doc = {"action": action, "version": version, "params": params_canonical, "inputs": sorted(inputs)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_id(action: str, version: int, key: str) -> str:
    return f"{action}-v{version}-{key[:12]}"


# -- files --------------------------------------------------------------------------------------

def state_dir(cfg: Settings) -> Path:
    d = cfg.ssd.root / "state" / "actions"
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_id(rid: str) -> str:
    if not RUN_ID.fullmatch(rid or ""):
        raise ActionError(f"{rid!r:.80} is not a run id (ACTION-vVERSION-KEY, as `hoard action run` printed it); "
                          "`hoard action runs` lists them")
    return rid


def load_state(cfg: Settings, rid: str) -> RunState | None:
    path = state_dir(cfg) / f"{check_id(rid)}.json"
    try:
        return RunState(**json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise ActionError(f"the state of run {rid} ({path}) is damaged ({type(e).__name__}); remove it and run the "
                          "action again", ExitCode.DATA) from None


def save_state(cfg: Settings, st: RunState) -> None:
    st.updated = now()
    atomic_write(state_dir(cfg) / f"{st.run_id}.json", json.dumps(asdict(st), indent=1).encode())


def all_states(cfg: Settings) -> list[RunState]:
    out = []
    for p in sorted(state_dir(cfg).glob("*.json")):
        if p.name.count(".") == 1 and RUN_ID.fullmatch(p.stem):
            try:
                out.append(RunState(**json.loads(p.read_bytes())))
            except (OSError, ValueError, TypeError):
                continue
    return out


def work(cfg: Settings, rid: str, what: str) -> Path:
    """A work file steps hand each other: `<run>.<what>.json` (inputs, contract, plan, parsed …)."""
    return state_dir(cfg) / f"{rid}.{what}.json"


def read_work(cfg: Settings, rid: str, what: str) -> Any:
    return json.loads(work(cfg, rid, what).read_bytes())


def write_work(cfg: Settings, rid: str, what: str, doc: Any) -> None:
    atomic_write(work(cfg, rid, what), json.dumps(doc).encode())


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


#: phrases of the one-line errors the steps meet (jobs.outputs, jobs.ingest, the Label Studio
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
