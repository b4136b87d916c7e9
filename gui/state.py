"""What the pages show, gathered by one background refresh (`gui.refresh_s`), so that a page
view reads memory instead of scanning the store, the database or Redis.

`Snapshot` is replaced whole on each refresh (readers never see half of one). It holds the
`hoard health --json` document (`hoardfs.jobs.health.collect`), the job counts per queue and state,
and the banner lines derived from both.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from hoardfs.base.config import Settings
from hoardfs.fsd.maintenance.health import verified_by_disk
from hoardfs.fsd.maintenance.reindex import index_copies
from hoardfs.jobs.health import Laps, collect
from hoardfs.jobs.launch import Run, runs
from hoardfs.jobs.queues import job_counts
from hoardfs.sql.browse import ingested_per_day_at

log = logging.getLogger(__name__)

#: one Store open at a time in this process: LMDB allows an environment to be opened once per
#: process, and the health document, thumbnails and the jobs API each open the store
STORE_LOCK = threading.Lock()
#: a refresh slower than this is logged with its parts (INFO; the others at DEBUG)
SLOW_S = 1.0


@dataclass(frozen=True)
class Banner:
    """One thing on fire, shown on every page: what, how bad, where to look."""

    text: str
    severity: str  # "error" | "warning"
    link: str


@dataclass(frozen=True)
class Snapshot:
    health: dict[str, Any]
    jobs: dict[str, dict[str, int]]  # queue → state → count
    banners: list[Banner]
    index_copies: list[dict[str, Any]]  # disk label → age of its index copy (`hoard index backup`)
    runs: list[Run]  # every run, newest first (hoardfs.jobs.launch.runs)
    ingested: list[dict[str, Any]]  # files ingested per day and source, last 30 days (hoardfs.sql.browse)
    verified: dict[str, float | None]  # disk label → age of its least recently verified replica
    taken: float = field(default_factory=time.time)
    took_s: float = 0.0

    @property
    def age_s(self) -> float:
        return time.time() - self.taken


def _parts(took: dict[str, float]) -> str:
    """`took` as "name 0.012 s, …" (a snapshot's log line)."""
    return ", ".join(f"{name} {s:.3f} s" for name, s in took.items())


def banners(health: dict[str, Any]) -> list[Banner]:
    """Failed or missing disks, zones past warn, failed batches, the database or Redis down, and
    every backup, store-at-risk and stage/export problem `hoard health` names."""
    out = []
    for d in health["disks"]:
        state = d.get("state", "active")
        if state in ("failed", "missing") or not d.get("present", True):
            out.append(Banner(f"disk {d['label']} is {state if state != 'active' else 'missing'}"
                              + (f": {d['reason']}" if d.get("reason") else ""), "error", "/storage"))
        for f in (d.get("smart") or {}).get("findings", []):  # its drive failing, or losing sectors
            out.append(Banner(f["line"], "error" if f["level"] == "problem" else "warning", "/storage"))
    for z, s in health["zones"].items():
        if s.get("level", "ok") != "ok":
            out.append(Banner(f"zone {z} is {s['used_ratio']:.0%} full ({s['level']})",
                              "error" if s["level"] != "warn" else "warning", "/storage"))
    for f in health["ingest"]["failed"]:
        out.append(Banner(f"batch {f['batch_id']} failed at {f['step']}", "error", f"/runs/ingest/{f['batch_id']}"))
    db = health["database"]
    if not db.get("ok"):
        out.append(Banner(f"the database does not answer: {db.get('error')}", "error", "/storage"))
    # the rest as `hoard health` words it (its rules are the one place that says what is stale
    # or at risk): backups, data at risk in the store, failed or interrupted stages/exports
    for p in health.get("problems", []):
        if p.startswith("database:") and db.get("ok"):
            out.append(Banner(p.removeprefix("database: "), "error" if "failed" in p else "warning", "/storage"))
        elif p.startswith("store:"):
            out.append(Banner(p, "error", "/storage"))
        elif p.startswith(("stage ", "export ")):
            kind, run_id = p.split(" ", 2)[:2]
            out.append(Banner(p, "error", f"/runs/{kind}/{run_id.rstrip(':')}"))
    if not health["redis"].get("ok"):
        out.append(Banner(f"Redis does not answer: {health['redis'].get('error')}", "error", "/storage"))
    return out


class Cache:
    """The latest Snapshot and the one refresh that replaces it."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def refresh(self) -> Snapshot:
        """Gather a new snapshot (blocking: run it off the event loop). Never raises for a
        service that is down: the health document reports it."""
        with self._lock:
            return self._gather()

    def first(self) -> Snapshot:
        """The latest snapshot, or one gathered now — after waiting for a refresh already under
        way (the timer's first, right after the GUI started) instead of gathering a second."""
        with self._lock:
            return self.snapshot or self._gather()

    def _gather(self) -> Snapshot:
        """A new snapshot; the caller holds self._lock. Logs what each part took (the health
        document's parts, then the GUI's own)."""
        t0, first = time.monotonic(), self.snapshot is None
        lap = Laps()
        with STORE_LOCK:
            lap("store lock")
            health = collect(self.cfg)
            lap("health")
            verified = verified_by_disk(self.cfg) if health["store"].get("ok") else {}
            lap("verified")
        try:
            jobs = job_counts(self.cfg.redis_url) if health["redis"].get("ok") else {}
        except redis.RedisError:
            jobs = {}
        lap("jobs")
        try:
            all_runs = runs(self.cfg)
        except redis.RedisError:
            all_runs = []
        lap("runs")
        ingested = ingested_per_day_at(self.cfg.database_url) if health["database"].get("ok") else []
        lap("ingested")
        copies = index_copies(self.cfg)
        lap("index copies")
        self.snapshot = Snapshot(health, jobs, banners(health), copies, all_runs, ingested, verified,
                                 took_s=time.monotonic() - t0)
        # (the first in a process, what a page right after a start waits for, and a slow one)
        level = logging.INFO if first or self.snapshot.took_s > SLOW_S else logging.DEBUG
        log.log(level, "snapshot gathered in %.3f s: %s; health: %s", self.snapshot.took_s, _parts(lap.took),
                _parts(health.get("took_s") or {}))
        return self.snapshot

    def get(self) -> Snapshot:
        """The latest snapshot; the first call gathers one."""
        return self.snapshot or self.first()
