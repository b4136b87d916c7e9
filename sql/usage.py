"""Usage history (table `usage_sample`, migration 007, and the disks' SMART readings beside it,
`smart_sample`, migration 012): record a sample, prune old ones, and read them back in time
buckets for the storage page's charts.

A sample is the rows `hoardfs.jobs.usage.rows` makes of one `hoard health` document: one per disk,
per SSD zone and one for the store. Recording takes an advisory lock, so two recorders at
once (the timer and a person) leave one sample, not two.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, ConfigDict

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.rows import one

SAMPLE_EVERY = dt.timedelta(minutes=10)
"""At most one sample per this interval: `hoard health --record` within it of the last sample
records nothing (the timer fires every 5 minutes, so samples land 10 to 15 minutes apart)."""

KEEP = dt.timedelta(days=90)
"""Samples older than this are deleted whenever a sample is recorded."""

CHART_POINTS = 400
"""The most points per series `history` returns: samples are merged into buckets of
window / CHART_POINTS (a 30-day window: ~2 h buckets), so a page never receives 90 days of rows."""

_LOCK_ID = 0x686F61726475  # "hoardu": one recorder at a time

_COLUMNS = ("kind", "name", "state", "used_bytes", "total_bytes", "reserved_bytes", "objects")


class UsageRow(BaseModel):
    """One disk, zone or the store in one sample; None = not known (see the table's comments)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["disk", "zone", "store"]
    name: str
    state: str
    used_bytes: int | None = None
    total_bytes: int | None = None
    reserved_bytes: int | None = None
    objects: int | None = None


class SmartRow(BaseModel):
    """One disk's SMART reading in one sample (the columns of `smart_sample`; None = not reported)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    disk: str
    device: str
    serial: str | None = None
    passed: bool | None = None
    reallocated: int | None = None
    pending: int | None = None
    uncorrectable: int | None = None
    media_errors: int | None = None
    temperature_c: int | None = None
    power_on_hours: int | None = None
    read_age_s: float = 0.0


_SMART_COLUMNS = tuple(SmartRow.model_fields)


class SmartPoint(BaseModel):
    """One disk's SMART figures in one time bucket: the highest counts and temperature of the
    bucket's samples, and whether every reading in it passed (None: none said)."""

    at: dt.datetime
    disk: str
    passed: bool | None
    reallocated: int | None
    pending: int | None
    uncorrectable: int | None
    media_errors: int | None
    temperature_c: int | None


class HistoryPoint(BaseModel):
    """One disk's or zone's figures in one time bucket: the largest used/total/reserved of the
    bucket's samples (None: no sample of the bucket knew them) and the state of its latest."""

    at: dt.datetime
    kind: str
    name: str
    state: str
    used_bytes: int | None
    total_bytes: int | None
    reserved_bytes: int | None


@dataclass(frozen=True)
class Recorded:
    taken_at: dt.datetime | None  # the new sample's instant; None when the last one is too recent
    rows: int
    pruned: int  # rows older than KEEP deleted
    last_at: dt.datetime | None  # the sample before this call
    ahead: int = 0  # rows stamped after now deleted (the clock was set back since they were taken)
    smart_rows: int = 0  # disks' SMART readings recorded with the sample


def _no_table(e: psycopg.Error) -> HoardError:
    table = "smart_sample" if "smart_sample" in str(e) else "usage_sample"
    return HoardError(f"the database has no {table} table ({str(e).strip().splitlines()[0]}); run "
                      "`hoard db migrate`", ExitCode.UNAVAILABLE)


def record(conn: psycopg.Connection, rows: list[UsageRow], every: dt.timedelta = SAMPLE_EVERY,
           keep: dt.timedelta = KEEP, smart: list[SmartRow] | None = None) -> Recorded:
    """Record `rows` as one sample, unless the last sample is younger than `every`; either way
    delete the rows older than `keep`, and those stamped after now: the database's clock was set
    back since they were taken, so their instants are wrong — and kept, they would hold off every
    new sample until the clock caught up with them. The disks' SMART rows (`smart`) go with the
    sample, at its instant. One transaction."""
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
            pruned = conn.execute("DELETE FROM usage_sample WHERE taken_at < now() - %s", [keep]).rowcount
            ahead = conn.execute("DELETE FROM usage_sample WHERE taken_at > now()").rowcount
            if smart is not None:  # (a caller with no SMART rows leaves the table alone: it may predate it)
                conn.execute("DELETE FROM smart_sample WHERE taken_at < now() - %s OR taken_at > now()", [keep])
            now, last = one(conn.execute("SELECT now(), max(taken_at) FROM usage_sample"))
            if last is not None and now - last < every:
                return Recorded(None, 0, pruned, last, ahead)
            with conn.cursor() as cur, cur.copy(f"COPY usage_sample (taken_at, {', '.join(_COLUMNS)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row([now, *(getattr(r, c) for c in _COLUMNS)])
            if smart:
                with conn.cursor() as cur, cur.copy(
                        f"COPY smart_sample (taken_at, {', '.join(_SMART_COLUMNS)}) FROM STDIN") as cp:
                    for sr in smart:
                        cp.write_row([now, *(getattr(sr, c) for c in _SMART_COLUMNS)])
            return Recorded(now, len(rows), pruned, last, ahead, len(smart or ()))
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


def _buckets(conn: psycopg.Connection, days: float, points: int,
             timeout_s: float | None) -> tuple[dt.timedelta, dt.timedelta]:
    """(bucket, window) of a history query over the last `days` days in at most `points`
    buckets; the server cancels the session's statements after `timeout_s`."""
    if timeout_s is not None:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{timeout_s:g}s"])
    window = dt.timedelta(days=days)
    return max(SAMPLE_EVERY, window / max(1, points)), window


def history(conn: psycopg.Connection, days: float = 30, points: int = CHART_POINTS,
            timeout_s: float | None = None) -> list[HistoryPoint]:
    """The disks' and zones' samples of the last `days` days, merged into at most `points`
    buckets per series, oldest first; cancelled by the server after `timeout_s` (a page
    waiting on it says so rather than hang)."""
    bucket, window = _buckets(conn, days, points, timeout_s)
    try:
        with conn.cursor(row_factory=class_row(HistoryPoint)) as cur:
            return cur.execute("""
                SELECT date_bin(%(bucket)s, taken_at, timestamptz '2000-01-01') AS at, kind, name,
                       (array_agg(state ORDER BY taken_at DESC))[1] AS state,
                       max(used_bytes) AS used_bytes, max(total_bytes) AS total_bytes,
                       max(reserved_bytes) AS reserved_bytes
                FROM usage_sample
                WHERE taken_at >= now() - %(window)s AND taken_at <= now() AND kind IN ('disk', 'zone')
                GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""", {"bucket": bucket, "window": window}).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None


def smart_history(conn: psycopg.Connection, days: float = 30, points: int = CHART_POINTS,
                  timeout_s: float | None = None) -> list[SmartPoint]:
    """Each disk's SMART readings of the last `days` days in at most `points` buckets, oldest
    first (the buckets of `history`); cancelled by the server after `timeout_s`."""
    bucket, window = _buckets(conn, days, points, timeout_s)
    try:
        with conn.cursor(row_factory=class_row(SmartPoint)) as cur:
            return cur.execute("""
                SELECT date_bin(%(bucket)s, taken_at, timestamptz '2000-01-01') AS at, disk,
                       bool_and(passed) AS passed, max(reallocated) AS reallocated, max(pending) AS pending,
                       max(uncorrectable) AS uncorrectable, max(media_errors) AS media_errors,
                       max(temperature_c) AS temperature_c
                FROM smart_sample
                WHERE taken_at >= now() - %(window)s AND taken_at <= now()
                GROUP BY 1, 2 ORDER BY 1, 2""", {"bucket": bucket, "window": window}).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise _no_table(e) from None
