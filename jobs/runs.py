"""The state of a run — an ingest batch (`hoardfs.jobs.ingest.state`), an action run
(`hoardfs.jobs.actions.state`), a stage or export (`hoardfs.jobs.outputs`): one JSON file per run
under `<ssd.root>/state/<kind>/`, the service's own (written whole and 0600: `write_owned`; read
back only as such: `load_owned`), its fields checked against the run's record type when it is
loaded. A file that is not a record of its kind (cut short by a full disk or a crash of the file
system, edited by hand) is named in one line with the next step, never a traceback.

The one `Status` of every kind of run, the stamp of a change (`now`), and what the runners of
every kind share: the one line a failed step records (`explain`) and the Ctrl-C-safe scope of a
run in this process (`interruptible`)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import os
import signal
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import NotOwn, json_bytes, load_owned, state_directory, write_owned
from hoardfs.base.paths import display
from hoardfs.jobs.queues import condition_line


class Status(str, enum.Enum):  # noqa: UP042  # StrEnum would change str(member), which messages print
    """What a run is doing or how it ended; each kind of run takes the values its `STATUSES` names."""

    QUEUED = "queued"
    RUNNING = "running"
    #: an action run at its gate, waiting for a person (`hoard action release`) or its hook
    WAIT_GPU_READY = "WAIT_GPU_READY"
    #: an `external` action run waiting for its done marker
    WAITING_EXTERNAL = "waiting_external"
    #: an AC5 run waiting for its labellers
    WAITING_LABELS = "waiting_labels"
    #: a --remote run while a host of the `remote` queue stages, runs and parses it
    WAITING_REMOTE = "waiting_remote"
    DONE = "done"
    #: an ingest batch stored whole but for the files its scan quarantined
    DONE_WITH_REJECTS = "done with rejects"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: a stage or export refused before it started (nothing reserved or written): it holds no id
    REFUSED = "refused"


#: the statuses each kind of run records (the name of its folder under `<ssd.root>/state/`)
STATUSES: dict[str, tuple[Status, ...]] = {
    "ingest": (Status.QUEUED, Status.RUNNING, Status.DONE, Status.DONE_WITH_REJECTS, Status.FAILED),
    "actions": (Status.QUEUED, Status.RUNNING, Status.WAIT_GPU_READY, Status.WAITING_EXTERNAL, Status.WAITING_LABELS,
                Status.WAITING_REMOTE, Status.DONE, Status.FAILED, Status.CANCELLED),
    "outputs": (Status.QUEUED, Status.RUNNING, Status.DONE, Status.FAILED, Status.REFUSED),
}

R = TypeVar("R")


def now() -> str:
    """The stamp of a change (UTC, to the second), as every state file records it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def state_dir(cfg: Settings, kind: str) -> Path:
    """The folder of one kind of run's state files (`ingest`, `actions`, `outputs`), made if missing."""
    return state_directory(cfg.ssd.root / "state" / kind)


def read(path: Path, what: str, way_on: str, damaged: type[HoardError],
         refused: type[HoardError] = NotOwn) -> Any:
    """The JSON of one of a run's files, None when there is none. `what` names it ("the state
    of run R") and `way_on` is the next step when it is damaged: `damaged` (exit 5), one line.
    A file the service did not write (`load_owned`) is `refused`, one line; one this user cannot
    read is `damaged`, naming the user to run the command as."""
    try:
        raw = load_owned(path)
    except FileNotFoundError:
        return None
    except NotOwn as e:
        raise refused(e.message, ExitCode.DATA) from None
    except OSError as e:
        raise damaged(f"{display(str(path))}: cannot be read ({e.strerror or first_line(e)}) as uid {os.geteuid()}; "
                      "run the command as the service's user", ExitCode.DATA) from None
    try:
        return json.loads(raw)
    except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError)
        raise damaged(f"{what} ({display(str(path))}) is damaged ({type(e).__name__}: {first_line(e)[:120]}); "
                      f"{way_on}", ExitCode.DATA) from None


def load(path: Path, record: type[R], kind: str, what: str, way_on: str, damaged: type[HoardError],
         refused: type[HoardError] = NotOwn) -> R | None:
    """A run's state file as its `record` (a dataclass), None when there is none: `read`, then
    each field checked against the record's type and its status against the kind's `STATUSES`
    (`problem`) — a file that does not hold one is `damaged`, one line naming it and `way_on`."""
    doc = read(path, what, way_on, damaged, refused)
    if doc is None:
        return None
    why = problem(record, doc, kind)
    if why:
        raise damaged(f"{what} ({display(str(path))}) is damaged ({why}); {way_on}", ExitCode.DATA)
    return record(**doc)


def save(path: Path, st: Any, sort_keys: bool = False) -> None:
    """Record run state `st` (a dataclass with an `updated` stamp, set now) whole in `path`."""
    st.updated = now()
    write_owned(path, json_bytes(st, sort_keys))


def problem(record: type, doc: Any, kind: str) -> str | None:
    """Why `doc` is not a state of `record` (a clause), None when it is: a JSON object whose
    keys are the record's fields — each required one there, no other —, each value of its
    field's type, its `status` one of the kind's `STATUSES`."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    hints = _hints(record)
    fields = {f.name: f for f in dataclasses.fields(record)}
    unknown = sorted(str(k) for k in doc if k not in fields)
    if unknown:
        return f"no such field {display(unknown[0])[:60]!r}"
    for name, f in fields.items():
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f"its field {name!r} is missing"
        elif not _fits(doc[name], hints[name]):
            return f"its field {name!r} is not {_shown(hints[name])}"
    if "status" in fields and "status" in doc and doc["status"] not in {s.value for s in STATUSES[kind]}:
        return f"its status {display(str(doc['status']))[:40]!r} is not one of a run's of its kind"
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(record: type) -> dict[str, Any]:
    if record not in _HINTS:
        _HINTS[record] = typing.get_type_hints(record)
    return _HINTS[record]


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value is of type `tp` (the types a state record's fields have)."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _shown(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_shown(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp) or tp
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
            dict: "a table"}.get(origin, getattr(origin, "__name__", str(origin)))


# -- what the runners share -------------------------------------------------------------------

def explain(e: Exception, cfg: Settings | None = None) -> str:
    """One line for a run's state file: what failed and what to do (an action's runner puts its
    own resume command in: `hoardfs.jobs.actions.state.with_way_on`)."""
    if isinstance(e, HoardError):
        return e.message
    if isinstance(e, (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError)):
        return f"{condition_line(e)}; start it, then `hoard ingest --resume`"
    if isinstance(e, OSError):
        where = Path(e.filename) if isinstance(e.filename, str) else None
        disk = next((d for d in (cfg.disks if cfg and where else []) if where and where.is_relative_to(d.path)), None)
        if disk is not None:  # the store meets a disk dying under it (EIO) before it has marked it failed
            return (f"disk {disk.label}: {e.strerror or e} ({e.filename}); `hoard health` shows its state: bring it "
                    f"back or replace it (`hoard disks replace {disk.label} …`), then `hoard ingest --resume`")
        return f"{condition_line(e)}; fix it, then `hoard ingest --resume`"
    return f"{type(e).__name__}: {e} (a bug; traceback in the worker log)"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once inside; the process's handlers come back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    fired = False

    def interrupt(signum: int, frame: types.FrameType | None) -> None:
        nonlocal fired
        if fired:
            return  # already stopping: a second Ctrl-C must not cut short the recording of the first
        fired = True
        raise KeyboardInterrupt

    for sig in saved:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
