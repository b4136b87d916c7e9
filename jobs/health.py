"""`hoard health`: one JSON document with the state of every part, and the problems to act on.

Each system reports its own part — `hoardfs.fsd.maintenance.health` (the disks, the store, the SSD zones),
`hoardfs.sql.health` (the database), `hoardfs.jobs.queues` (Redis), `hoardfs.jobs.ingest` (UA_1 batches),
`hoardfs.jobs.outputs` (stages and exports), `hoardfs.jobs.actions.api` (action runs). `collect`
puts them together here, above the store and the database, so that the `hoard` command and
the GUI (which sit above jobs) read the same document.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hoardfs.base import landlock
from hoardfs.base.config import Settings
from hoardfs.base.files import flocked
from hoardfs.fsd.io.attach import formats_found
from hoardfs.fsd.maintenance.health import (
    disk_status,
    smart_findings,
    smart_status,
    store_problems,
    store_status,
    zone_status,
)
from hoardfs.jobs import clip_model, events, outputs
from hoardfs.jobs.actions import api as actions
from hoardfs.jobs.actions.nextstep import idle_queues, queues_of, worker_command
from hoardfs.jobs.actions.state import WAITING, Status, all_states, here_lock_path
from hoardfs.jobs.ingest import ingest_status
from hoardfs.jobs.queues import QUEUES, redis_status
from hoardfs.jobs.remote import QUEUE as REMOTE_QUEUE
from hoardfs.sql.health import database_problems, database_status


def collect(cfg: Settings, smart_max_age_s: float = math.inf, *, search_import: bool = False) -> dict[str, Any]:
    """Gather the status of disks, zones, PostgreSQL and Redis, and list the problems (exit 4)
    and the warnings (signs to act on before they become problems: a drive losing sectors).
    Each disk's SMART reading is the cached one while younger than `smart_max_age_s` — by
    default the cached one (hoard-smart.timer's): a library call (the GUI, the demo, a test)
    runs no smartctl; `hoard health` passes FRESH_S (as root it reads a drive read over an
    hour ago). `search_import`: whether configured search is checked by importing open_clip in a
    process of its own (seconds: torch; `hoard health` does, the GUI's refreshes do not)."""
    assert cfg.database_url and cfg.redis_url
    lap = Laps()
    store = store_status(cfg)
    lap("store")
    disks = store.pop("disks", None) or disk_status(cfg)
    formats = store.pop("formats", None) or formats_found(cfg, None)
    lap("disks")
    zones = zone_status(cfg)
    lap("zones")
    database = database_status(cfg.database_url)
    lap("database")
    redis = redis_status(cfg.redis_url)
    lap("redis")
    ingest = ingest_status(cfg)
    lap("ingest")
    report: dict[str, Any] = {"config": str(cfg.source) if cfg.source else None, "disks": disks, "store": store,
                              "formats": formats, "zones": zones, "database": database, "redis": redis,
                              "ingest": ingest}
    readings = smart_status(cfg, report["disks"], smart_max_age_s)
    for d in report["disks"]:
        if d["label"] in readings:
            d["smart"] = readings[d["label"]]
    problems, warnings = smart_findings(report["disks"])
    lap("smart")
    report["sandbox"] = sandbox = landlock.status()
    lap("sandbox")
    if not sandbox["enforced"]:
        # a confined child that cannot even start: every batch and thumbnail fails with it
        (problems if sandbox["fails"] else warnings).append(
            f"sandbox: {sandbox['reason']}, so {sandbox['effect']}; {sandbox['next_step']} — docs/security.md, "
            "\"Sandboxed parsers\"")
    # optional: a note where search is not set up; a warning where it is configured and cannot run
    report["search"] = search = clip_model.readiness(cfg.search.clip_weights, check_import=search_import)
    unchecked = search["installed"] and search["configured"] and search["imports"] is None
    if cfg.search.clip_weights is not None and not search["ready"] and not unchecked:
        warnings.append(f"search: {search['note']}")
    lap("search")
    for f in report["ingest"]["failed"]:
        problems.append(f"ingest {f['batch_id']}: failed at {f['step']}: {f['error']}; after fixing it, "
                        f"`hoard ingest --resume {f['batch_id']}`")
    for r in report["ingest"]["refused"] + report["ingest"]["stalled"]:  # never a silent skip or stall
        problems.append(f"ingest {r['batch_id']}: {r['reason']}")
    problems += store_problems(cfg, store, report["disks"], report["zones"])
    problems += report["formats"]["problems"]
    problems += outputs.problems(cfg)
    problems += actions.problems(cfg)
    problems += database_problems(report["database"])
    if not report["redis"]["ok"]:
        problems.append(f"redis: {report['redis']['error']}; start it with `hoard services up` or fix redis_url")
    warnings += events.warnings(cfg)
    if report["redis"]["ok"]:
        warnings += unserved_warnings(cfg)
    lap("problems")
    report["problems"] = problems
    report["warnings"] = warnings
    report["ok"] = not problems
    # the index's disk failures become `disk_failed` events (each once): none of the processes that
    # fail a disk (the mount, a writer) reaches PostgreSQL, every health collection relays them
    events.relay_disk_failures(cfg, store.get("disk_failures") or [])
    actions.relay_dead_runs(cfg)  # (likewise: a process that died records nothing of its own)
    lap("relays")
    report["took_s"] = lap.took
    return report


def waiting_on(cfg: Settings) -> dict[str, list[str]]:
    """The action runs each queue's jobs move on: every queued or waiting run under the queues
    of `nextstep.queues_of`. A run `hoard action run --here` drives (its here-lock held) needs
    no worker and is left out."""
    out: dict[str, list[str]] = {}
    for st in all_states(cfg):
        if (st.status == Status.QUEUED.value or st.status in WAITING) and not _held(here_lock_path(cfg, st.run_id)):
            for queue in queues_of(st):
                out.setdefault(queue, []).append(st.run_id)
    return out


def unserved_warnings(cfg: Settings) -> list[str]:
    """`hoard health`'s warnings (and the GUI's) about work nothing will start: one line per
    queue that action runs wait on and no live worker serves, naming the command that starts
    one (`nextstep.worker_command`). None when every such queue is served or nothing waits, nor
    when Redis does not answer (health reports Redis itself). An ingest batch waiting on such a
    queue is a problem of its own (`hoardfs.jobs.ingest.stalled_batches`)."""
    waiting = waiting_on(cfg)
    idle = idle_queues(cfg) if waiting else None
    if not idle:
        return []
    out = []
    for queue in [q for q in (*QUEUES, REMOTE_QUEUE) if q in waiting and q in idle]:
        runs = sorted(waiting[queue])
        shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        out.append(f"queue {queue}: {len(runs)} action run{'s' * (len(runs) > 1)} wait{'s' * (len(runs) == 1)} "
                   f"on it ({shown}) and no worker serves it; start one: {worker_command(queue, idle)}")
    return out


def _held(path: Path) -> bool:
    try:
        with flocked(path, wait=False):
            return False
    except BlockingIOError:
        return True


class Laps:
    """The seconds each part of a collection took, in the order gathered (the document's
    `took_s`: where a slow `hoard health` or GUI refresh spends its time). `lap(name)` closes
    the part that began at the previous lap (or at creation)."""

    def __init__(self) -> None:
        self.took: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.took[name] = round(now - self._t, 4)
        self._t = now
