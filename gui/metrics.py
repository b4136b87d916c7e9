"""`/metrics`: the latest snapshot (hoardfs.gui.state) in the Prometheus text format.

A custom collector reads the snapshot at scrape time, so a scrape costs no query of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hoardfs.gui.gate import LoginGate
from hoardfs.gui.state import Snapshot
from hoardfs.jobs.queues import JOB_STATES

DISK_STATES = ("active", "draining", "failed", "missing")  # hoardfs.fsd.core.disks.DiskState


class _Collector:
    def __init__(self, snapshot) -> None:
        self._snapshot = snapshot  # a callable returning the latest Snapshot

    def collect(self) -> Iterator[Metric]:
        snap: Snapshot = self._snapshot()
        h = snap.health
        store = h["store"]
        g = GaugeMetricFamily("hoard_objects", "Objects in the store (index entries)")
        g.add_metric([], store.get("objects", 0) if store.get("ok") else float("nan"))
        yield g
        g = GaugeMetricFamily("hoard_stored_bytes", "Bytes of shards on all disks (every replica)")
        g.add_metric([], sum(d.get("used_bytes") or 0 for d in h["disks"]))
        yield g
        lag = store.get("replication", {})
        g = GaugeMetricFamily("hoard_replication_shards_below_target", "Shards with fewer replicas than their target")
        g.add_metric([], lag.get("shards_below_target", 0))
        yield g
        g = GaugeMetricFamily("hoard_replication_bytes_below_target", "Bytes of shards below their replica target")
        g.add_metric([], lag.get("bytes_below_target", 0))
        yield g
        used = GaugeMetricFamily("hoard_disk_used_bytes", "Bytes hoardfs uses on a disk", labels=["disk"])
        total = GaugeMetricFamily("hoard_disk_capacity_bytes", "Capacity of a disk for hoardfs", labels=["disk"])
        state = GaugeMetricFamily("hoard_disk_state", "1 for the disk's state", labels=["disk", "state"])
        for d in h["disks"]:
            used.add_metric([d["label"]], d.get("used_bytes") or 0)
            if d.get("total_bytes") is not None:
                total.add_metric([d["label"]], d["total_bytes"])
            for s in DISK_STATES:
                state.add_metric([d["label"], s], float(d.get("state", "active") == s))
        yield from (used, total, state)
        ratio = GaugeMetricFamily("hoard_zone_used_ratio", "Used + reserved bytes of an SSD zone / its quota",
                                  labels=["zone"])
        zbytes = GaugeMetricFamily("hoard_zone_used_bytes", "Bytes on disk in an SSD zone", labels=["zone"])
        quota = GaugeMetricFamily("hoard_zone_quota_bytes", "Quota of an SSD zone", labels=["zone"])
        for z, s in h["zones"].items():
            ratio.add_metric([z], s.get("used_ratio", 0))
            zbytes.add_metric([z], s.get("used_bytes", 0))
            quota.add_metric([z], s.get("quota_bytes", 0))
        yield from (ratio, zbytes, quota)
        jobs = GaugeMetricFamily("hoard_jobs", "RQ jobs by queue and state", labels=["queue", "state"])
        for q, counts in snap.jobs.items():
            for s in JOB_STATES:
                jobs.add_metric([q, s], counts.get(s, 0))
        yield jobs
        up = GaugeMetricFamily("hoard_up", "1 when a part answers", labels=["part"])
        up.add_metric(["database"], float(bool(h["database"].get("ok"))))
        up.add_metric(["redis"], float(bool(h["redis"].get("ok"))))
        up.add_metric(["store"], float(bool(store.get("ok"))))
        yield up
        g = GaugeMetricFamily("hoard_problems", "Lines of `hoard health` that need a person")
        g.add_metric([], len(h["problems"]))
        yield g
        g = GaugeMetricFamily("hoard_snapshot_age_seconds", "Age of the figures above")
        g.add_metric([], snap.age_s)
        yield g


class _Logins:
    """The login gate's counts (hoardfs.gui.gate): a flood of logins shows as busy refusals."""

    def __init__(self, gate: LoginGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        c = CounterMetricFamily("hoard_gui_login_checks", "Passwords checked (argon2) by the GUI since it started")
        c.add_metric([], gate.checks)
        yield c
        c = CounterMetricFamily("hoard_gui_logins_busy", "Logins turned away unchecked: too many checks at once")
        c.add_metric([], gate.busy)
        yield c
        g = GaugeMetricFamily("hoard_gui_login_checks_most_at_once",
                              "The most password checks that ever ran at once (at most gui.login_concurrency)")
        g.add_metric([], gate.most_at_once)
        yield g


def render(snapshot, gate: LoginGate | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    if gate is not None:
        registry.register(_Logins(gate))
    return generate_latest(registry)
