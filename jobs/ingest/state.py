"""A batch's ingest state: its file in <ssd.root>/state/ingest/<batch>.json (status, steps done,
report), written atomically after every step, the service's own (0600; a file another account
planted, or one others may write, is refused on load, a damaged one named: the run-state store
`hoardfs.jobs.runs`); the job id of each step; a deleted batch's state and 3B package let go."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import NotOwn
from hoardfs.base.paths import NAME_PATTERN
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.outputs import zones
from hoardfs.jobs import runs
from hoardfs.jobs.runs import Status, now

log = logging.getLogger(__name__)


STEPS = ("scan", "store", "apply", "package", "finish")
QUEUE_OF = {"scan": "ingest", "store": "io", "apply": "sql", "package": "io", "finish": "maintenance"}
#: RQ timeout per step (a 20,000-item batch with large videos takes minutes, not hours)
STEP_TIMEOUT_S = 6 * 3600
BATCH_ID = re.compile(NAME_PATTERN)
SIGNAL = "_READY"
#: the work files a batch's steps keep beside its state: state/ingest/<batch>.<work>.json
WORK = ("records", "stored")


#: the statuses a batch takes (`Status`, the one of every kind of run)
STATUSES = runs.STATUSES["ingest"]


class IngestError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass
class BatchState:
    batch_id: str
    source: str
    status: str = Status.QUEUED.value
    step: str = "scan"
    done: list[str] = field(default_factory=list)
    signalled: str = field(default_factory=lambda: now())
    updated: str = field(default_factory=lambda: now())
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    #: when `hoard delete --batch` dropped it (its status is then history, not a problem)
    deleted: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in (Status.DONE.value, Status.DONE_WITH_REJECTS.value)


# -- state files -------------------------------------------------------------------------

def state_dir(cfg: Settings) -> Path:
    return runs.state_dir(cfg, "ingest")


def load_state(cfg: Settings, batch_id: str) -> BatchState | None:
    """Batch `batch_id`'s ingest state, None when there is none; NotOwn (one line naming the
    file, exit 5) when it is not the service's own file, IngestError (one line naming it and
    the next step, exit 5) when it is damaged: not JSON, not a batch's state, a step not UA_1's."""
    path = state_dir(cfg) / f"{batch_id}.json"
    what, way_on = f"the ingest state of batch {batch_id}", (f"remove it, then `hoard ingest --resume {batch_id}` "
                                                             "scans the batch anew")
    st = runs.load(path, BatchState, "ingest", what, way_on, IngestError)
    if st is not None and (st.step not in STEPS or not set(st.done) <= set(STEPS)):
        raise IngestError(f"{what} ({path}) is damaged (its step or steps done are not among {', '.join(STEPS)}); "
                          f"{way_on}", ExitCode.DATA)
    return st


def save_state(cfg: Settings, st: BatchState) -> None:
    runs.save(state_dir(cfg) / f"{st.batch_id}.json", st)


def names_work(batch_id: str) -> bool:
    """Whether `batch_id` is `<another batch>.<work>`: its state file would be that batch's
    work file (read as a state, written over it, removed when that batch ends)."""
    head, dot, tail = batch_id.rpartition(".")
    return bool(head and dot) and tail in WORK


def work_path(cfg: Settings, batch_id: str, what: str) -> Path:
    """A work file a batch's steps hand each other: `<batch>.<what>.json` (WORK)."""
    return state_dir(cfg) / f"{batch_id}.{what}.json"



#: state files refused by this process, each logged once
_WARNED: set[str] = set()


def all_states(cfg: Settings) -> list[BatchState]:
    """Every batch's ingest state; a damaged one is skipped, one the service did not write
    (`NotOwn`) too, with a WARNING in the log naming it."""
    out = []
    for p in sorted(state_dir(cfg).glob("*.json")):
        if not names_work(p.name.removesuffix(".json")):  # <batch>.json, not <batch>.<work>.json (an id may hold `.`)
            try:
                st = load_state(cfg, p.name.removesuffix(".json"))
            except NotOwn as e:
                if e.message not in _WARNED:
                    _WARNED.add(e.message)
                    log.warning("ingest state refused: %s", e.message)
                continue
            except (HoardError, OSError):
                continue
            if st is not None:
                out.append(st)
    return out


def forget_deleted(cfg: Settings, batch_id: str) -> str:
    """After `hoard delete --batch` committed (database and store): its ingest record says
    deleted, and its 3B package (what UA_1 packaged for cold storage) is removed — a package
    of a batch the store dropped restores nothing anyone asked to keep. Returns one line
    saying what happened to the package."""
    st = load_state(cfg, batch_id)
    if st is not None and st.deleted is None:
        st.deleted = now()
        save_state(cfg, st)
    package = cfg.ssd.zone_path("3B") / batch_id
    try:
        freed = zones.clean(cfg, batch_id, "3B")["freed_bytes"]
    except zones.NoSuchOutput:
        return f"no 3B package {package} (moved to cold storage or never made)"
    except HoardError as e:  # a package step still writing it: name it, the deletion stands
        return f"3B package {package} kept: {e.message}; `hoard zones clean {batch_id}` removes it later"
    return f"3B package {package} removed ({fmt_bytes(freed)})"


def job_id(batch_id: str, step: str) -> str:
    """The RQ job id of a batch's step (one per step: a step queued twice is one job)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", batch_id)
    return f"ingest-{safe}-{hashlib.sha1(batch_id.encode()).hexdigest()[:8]}-{step}"

