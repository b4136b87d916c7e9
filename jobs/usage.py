"""Usage history: the `hoard health` document (`hoardfs.jobs.health.collect`) turned into one
`usage_sample` (hoardfs.sql.usage) — `hoard health --record` and systemd/hoard-usage.timer — with each
disk's SMART reading (`smart_sample`), and read back for the storage page's charts.

The figures are the document's own, never measured again here. What the document does not
know is recorded as not known: a disk the store could not read (missing, failed, or the store
did not open at all) gets its state and no bytes, so its chart line breaks instead of
dropping to an empty disk.
"""

from __future__ import annotations

from typing import Any

import psycopg

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.sql.browse import fold_member_tally
from hoardfs.sql.usage import HistoryPoint, Recorded, SmartPoint, SmartRow, UsageRow
from hoardfs.sql.usage import history as _history
from hoardfs.sql.usage import record as _record
from hoardfs.sql.usage import smart_history as _smart_history

#: disk states whose byte counts are read from the disk itself
_READABLE = ("active", "draining")


def _disk_row(d: dict[str, Any], store_ok: bool) -> UsageRow:
    if not d.get("present", True):
        state = "missing"  # whatever the index last said: the path holds no disk now
    elif not store_ok:
        state = "unknown"  # the store did not open: hoard's bytes there are not known
    else:
        state = d.get("state") or "unknown"
    if state in _READABLE and d.get("used_bytes") is not None and d.get("total_bytes") is not None:
        return UsageRow(kind="disk", name=d["label"], state=state, used_bytes=d["used_bytes"],
                        total_bytes=d["total_bytes"])
    # an active disk that could not even be stat'ed is not known to be active
    return UsageRow(kind="disk", name=d["label"], state="unknown" if state in _READABLE else state)


def rows(report: dict[str, Any]) -> list[UsageRow]:
    """One sample's rows from a `hoard health` document: each disk, each zone, the store."""
    store = report["store"]
    out = [_disk_row(d, bool(store.get("ok"))) for d in report["disks"]]
    for name, z in report["zones"].items():
        if z.get("present"):
            # a reservation file that could not be read (z["error"]): the reserved bytes are not known
            out.append(UsageRow(kind="zone", name=name, state=z["level"], used_bytes=z["used_bytes"],
                                total_bytes=z["quota_bytes"],
                                reserved_bytes=None if z.get("error") else z["reserved_bytes"]))
        else:
            out.append(UsageRow(kind="zone", name=name, state="absent"))
    if store.get("ok"):
        out.append(UsageRow(kind="store", name="store", state="ok", used_bytes=store.get("shard_bytes"),
                            objects=store["objects"]))
    else:
        out.append(UsageRow(kind="store", name="store", state="unreadable"))
    return out


def smart_rows(report: dict[str, Any]) -> list[SmartRow]:
    """The SMART readings of a `hoard health` document's disks (`hoardfs.fsd.core.smart.read_all`), one
    row per disk whose drive has SMART; the figures as the document has them."""
    out = []
    for d in report["disks"]:
        s = d.get("smart") or {}
        if s.get("available") and s.get("device"):
            out.append(SmartRow(disk=d["label"], device=s["device"], serial=s.get("serial"), passed=s.get("passed"),
                                reallocated=s.get("reallocated"), pending=s.get("pending"),
                                uncorrectable=s.get("uncorrectable"), media_errors=s.get("media_errors"),
                                temperature_c=s.get("temperature_c"), power_on_hours=s.get("power_on_hours"),
                                read_age_s=max(0.0, float(s.get("age_s") or 0.0))))
    return out


#: a page view waits for the history only briefly (hoardfs.gui.storage): its connection and query give
#: up soon after, so a hung database does not hold a GUI thread for long per view
HISTORY_TIMEOUT_S = 3


def _connect(cfg: Settings, why: str, timeout_s: int = 10) -> psycopg.Connection:
    assert cfg.database_url
    try:
        return psycopg.connect(cfg.database_url, connect_timeout=timeout_s)
    except psycopg.OperationalError as e:
        raise HoardError(f"{why}: the database is unreachable ({first_line(e)}); `hoard services up` or check "
                         "database_url", ExitCode.UNAVAILABLE) from None


def record(cfg: Settings, report: dict[str, Any]) -> Recorded:
    """Record the document as a usage sample (unless the last one is younger than
    hoardfs.sql.usage.SAMPLE_EVERY), prune samples older than hoardfs.sql.usage.KEEP, and fold the past days
    of batch_member_tally (hoardfs.sql.browse.fold_member_tally)."""
    with _connect(cfg, "no usage sample recorded") as conn:
        done = _record(conn, rows(report), smart=smart_rows(report))
        fold_member_tally(conn)  # the ingest chart's per-statement rows of past days, one per batch and day
        return done


def histories(cfg: Settings, days: float = 30) -> tuple[list[HistoryPoint], list[SmartPoint]]:
    """The disks' and zones' usage and the disks' SMART readings over the last `days` days, in
    chart-sized buckets, through one connection (the storage page's charts)."""
    with _connect(cfg, "no usage history", HISTORY_TIMEOUT_S) as conn:
        try:
            return (_history(conn, days, timeout_s=HISTORY_TIMEOUT_S),
                    _smart_history(conn, days, timeout_s=HISTORY_TIMEOUT_S))
        except HoardError:
            raise
        except psycopg.Error as e:
            raise HoardError(f"no usage history: the database failed ({first_line(e)})",
                             ExitCode.UNAVAILABLE) from None


def history(cfg: Settings, days: float = 30) -> list[HistoryPoint]:
    """The disks' and zones' usage over the last `days` days, in chart-sized buckets."""
    return histories(cfg, days)[0]
