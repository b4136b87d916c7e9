"""The next command of a run, as `hoard action status RUN` names it (and its `--json`'s `next`):
what a person types to move the run on from where it is, or None where nothing is theirs to do.

    waiting at its GPU gate          `hoard action release RUN`
    released, or queued / waiting,   `hoard worker` (`--queues Q` when other queues are served;
      with no worker on its queue      a --remote run's host: one with [worker] remote = true),
                                       unless `hoard action run --here` drives it (its here-lock)
    a cancel asked while a step ran  `hoard action cancel RUN` (again: it ends the run now)
    waiting for an external worker   `hoard action collect RUN` (what it wrote so far)
      or for its labellers
    failed, cancelled, its job lost  `hoard action resume RUN`
    refused (its files or contract)  None: the refusal line says what to do
    running; queued on a served      None: a worker has it in hand
      queue; done
"""

from __future__ import annotations

from pathlib import Path

import redis

from hoardfs.base.config import Settings
from hoardfs.base.files import flocked
from hoardfs.jobs.actions.state import QUEUE_OF, WAITING, RunState, Status, cancel_flag, here_lock_path, resume_line
from hoardfs.jobs.queues import QUEUES, connect, unserved_queues
from hoardfs.jobs.remote import QUEUE as REMOTE_QUEUE


def worker_command(queue: str, idle: list[str]) -> str:
    """The command that starts a worker serving `queue`, `idle` being the queues no live worker
    serves: `hoard worker` (every queue) when none is served, else `hoard worker --queues
    QUEUE`; for the `remote` queue, where such a worker runs."""
    if queue == REMOTE_QUEUE:
        return "`hoard worker` on a host whose hoard.toml says [worker] remote = true (docs/scale-out.md)"
    if set(QUEUES) <= set(idle):
        return "`hoard worker`"
    return f"`hoard worker --queues {queue}`"


def queues_of(st: RunState) -> list[str]:
    """The queues whose jobs move a queued or waiting run on: its step's (the step's job, or its
    poll, which a worker's scheduler queues there); a --remote run waiting for its host, the
    `remote` queue too."""
    out = [QUEUE_OF[st.step]]
    if st.status == Status.WAITING_REMOTE.value:
        out.append(REMOTE_QUEUE)
    return out


def idle_queues(cfg: Settings, conn: redis.Redis | None = None) -> list[str] | None:
    """The queues (hoardfs's and `remote`) no live worker serves; None when Redis cannot be
    asked (none configured, or it does not answer)."""
    if not cfg.redis_url:
        return None
    try:
        return unserved_queues(conn or connect(cfg.redis_url), (*QUEUES, REMOTE_QUEUE))
    except redis.RedisError:
        return None


def held(path: Path) -> bool:
    """Whether a process holds the lock file `path` (`hoard action run --here` holds its run's)."""
    try:
        with flocked(path, wait=False):
            return False
    except BlockingIOError:
        return True


def next_command(cfg: Settings, st: RunState, shown: str, *, stalled: bool, refused: str | None,
                 conn: redis.Redis | None = None) -> str | None:
    """The next command of run `st` (the table above) shown as `shown` (`api.describe`):
    `stalled` — queued or waiting with nothing in Redis to move it (`resume` queues it again);
    `refused` — why it cannot run as it is (no command: the line says what to do)."""
    rid = st.run_id
    if refused:
        return None
    if shown in (Status.FAILED.value, Status.CANCELLED.value) or stalled:
        return resume_line(rid).strip("`")
    if shown != Status.QUEUED.value and shown not in WAITING:
        return None  # running, done
    if shown == Status.WAIT_GPU_READY.value and not st.gate.get("released"):
        return f"hoard action release {rid}"
    idle = idle_queues(cfg, conn)
    here = held(here_lock_path(cfg, rid))  # `hoard action run --here` drives it: no worker needed
    unserved = [q for q in queues_of(st) if idle is not None and q in idle and not here]
    if unserved:  # (the `remote` queue's worker runs on another host: said with the command)
        return worker_command(unserved[0], idle or []).replace("`", "")
    if cancel_flag(cfg, rid).exists():  # a cancel asked while a step ran: asking again ends it now
        return f"hoard action cancel {rid}"
    if shown in (Status.WAITING_EXTERNAL.value, Status.WAITING_LABELS.value):
        return f"hoard action collect {rid}"
    return None
