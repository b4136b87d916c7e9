"""`/storage`: each HDD (capacity bar, used/free, state, recent errors; for a missing or failed
one when it was last seen, what it held and the next step), replication lag,
scrub age, the SSD zone gauges with their warn/deny/emergency marks, and the ages of the
index and database backups — all from the last snapshot (`hoard health --json`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nicegui import ui

from hoardfs.base.errors import HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.maintenance.health import smart_line
from hoardfs.gui import charts, text
from hoardfs.gui.context import ctx, in_thread, page, page_snapshot
from hoardfs.gui.frame import age, frame, live, progress_text
from hoardfs.jobs import usage

#: how far back the usage history charts look
HISTORY_DAYS = 30
#: how long a page view waits for the usage history: NiceGUI gives up on a page after 3 s, and
#: the rest of the page (the snapshot) must show even when the database hangs
HISTORY_WAIT_S = 1.5
#: a read history serves every view for this long: samples come every 10 minutes, and the read
#: is one row per disk and zone per sample of HISTORY_DAYS (~120,000 rows with 24 disks)
HISTORY_KEEP_S = 120.0
STATE_COLOR = {"active": "positive", "draining": "warning", "failed": "negative", "missing": "negative"}


def _bar(ratio: float, marks: tuple[float, ...] = ()) -> None:
    """A horizontal gauge, with thin lines at `marks` (fractions)."""
    color = "#c62828" if marks and ratio >= marks[-1] else "#ef6c00" if marks and ratio >= marks[0] else "#1e88e5"
    with ui.element("div").classes("relative-position w-full").style(
            "height: 14px; background: #e0e0e0; border-radius: 3px"):
        ui.element("div").style(f"width: {min(ratio, 1) * 100:.1f}%; height: 100%; background: {color};"
                                "border-radius: 3px")
        for m in marks:
            ui.element("div").style(f"position: absolute; left: {m * 100:.0f}%; top: -3px; width: 2px; "
                                    "height: 20px; background: #424242")


def _gone(d: dict[str, Any]) -> None:
    """What a person needs about a disk that is missing or failed: since when it is not seen,
    what it holds by the index, and the next step (all from `hoard health`: hoardfs.fsd.maintenance.health)."""
    seen = d.get("seen")
    ui.label(f"last seen {age(time.time() - seen)} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(seen))})"
             if seen else "last seen: not recorded").classes("text-caption").mark("disk-seen")
    ui.label(f"held {d.get('replicas', 0):,} replicas, {fmt_bytes(d.get('replica_bytes', 0))} (by the index)").classes(
        "text-caption").mark("disk-held")
    if d.get("only_here"):
        ui.label(f"{d['only_here']:,} shards have no other readable replica").classes("text-negative text-caption")
    if d.get("next_step"):
        ui.label(f"next: {d['next_step']}").classes("text-caption").mark("disk-next")


def _disk_card(d: dict[str, Any], errors: list[dict[str, Any]], verified: dict[str, float | None]) -> None:
    total, used = d.get("total_bytes"), d.get("used_bytes") or 0
    state = d.get("state", "active") if d.get("present", True) else "missing"
    with ui.card().classes("w-72").props(f'data-testid="disk-{d["label"]}"').mark(f"disk-{d['label']}"):
        with ui.row().classes("items-center w-full"):
            ui.label(d["label"]).classes("text-h6")
            ui.space()
            ui.badge(state, color=STATE_COLOR.get(state, "grey"))
        if total is not None:  # a disk that is not there has no size to show
            _bar(used / total if total else 0)
            ui.label(f"{fmt_bytes(used)} used of {fmt_bytes(total)}, {fmt_bytes(d.get('free_bytes'))} free").classes("text-caption")
        if state in ("missing", "failed"):
            _gone(d)
        elif d.get("next_step"):  # draining
            ui.label(f"next: {d['next_step']}").classes("text-caption").mark("disk-next")
        if d["label"] in verified:
            v = verified[d["label"]]
            ui.label(f"its replicas verified (or written) {age(v)}" if v is not None else "no sealed shard here yet"
                     ).classes("text-caption")
        _smart(d.get("smart"))
        ui.label(d["path"]).classes("text-caption text-grey-7")
        if d.get("reason"):
            text.label(d["reason"]).classes("text-negative text-caption")
        mine = [e for e in errors if e.get("disk") in (d["label"], d.get("uuid"))]
        for e in mine[:3]:
            text.label(f"{e.get('kind')}: {e.get('error') or e.get('detail') or ''}").classes(
                "text-negative text-caption")


def _smart(s: dict[str, Any] | None) -> None:
    """The drive's SMART on its card: the figures (or why there are none) and its findings with
    their next steps. smartctl's words (model, messages) are the drive's: text, never markup."""
    if not s:
        return
    read = f", read {age(s['age_s'])}" if s.get("age_s") is not None else ""
    text.label(f"SMART: {smart_line(s)}{read}").classes("text-caption").mark("disk-smart")
    if not s.get("available") and s.get("why"):
        text.label(s["why"]).classes("text-caption text-grey-7")
    for f in s.get("findings", []):
        text.label(f"{f['level']}: {f['line']}").classes(
            "text-caption " + ("text-negative" if f["level"] == "problem" else "text-warning")).mark("disk-smart-finding")


def _body() -> None:
    snap = ctx().cache.get()
    h, cfg = snap.health, ctx().cfg
    store = h["store"]
    errors = store.get("recent_errors", []) if store.get("ok") else []
    ui.label("Disks").classes("text-h6")
    with ui.row().classes("w-full"):
        for d in h["disks"]:
            _disk_card(d, errors, snap.verified)
    t = cfg.ssd.thresholds
    with ui.row().classes("w-full no-wrap"):
        ui.echart(charts.disk_usage(h["disks"])).classes("w-1/2 h-56")
        ui.echart(charts.zone_usage(h["zones"], (t.warn, t.deny, t.emergency))).classes("w-1/2 h-56")
    ui.label("Store").classes("text-h6 q-mt-md")
    if store.get("ok"):
        lag = store["replication"]
        ui.label(f"{store['objects']:,} objects; replication lag: {lag['shards_below_target']} shards "
                 f"({fmt_bytes(lag['bytes_below_target'])}) below their replica target; "
                 f"{len(lag['at_risk'])} shards at risk; {store.get('pending_repairs', 0)} replicas waiting for repair")
        ui.label(f"scrub: the least recently verified shard was checked {age(store.get('oldest_unverified_s'))}")
        for e in errors[:10]:
            text.label(f"{e.get('time', '')} {e.get('kind')}: {e.get('disk', '')} {e.get('error', '')}").classes(
                "text-caption text-negative")
    else:
        ui.label(store.get("error", "the store cannot be read")).classes("text-negative")
    with ui.row().classes("items-center"):
        ui.label("Maintenance runs:").classes("text-bold")
        for kind in ("replicate", "verify", "rebuild", "gc", "backup", "verify-backup"):
            last = next((r for r in snap.runs if r.kind == kind), None)  # newest first
            if last is None:
                ui.label(f"{kind}: none from here").classes("text-caption text-grey-7")
            else:
                ui.link(f"{kind}: {last.status} {last.updated[:16].replace('T', ' ')}", f"/runs/{kind}/{last.id}")
                if last.status == "running" and last.progress:  # hoardfs.jobs.progress, as of the snapshot
                    ui.label(progress_text(last.progress)).classes("text-caption").mark(f"progress-{kind}")
    ui.label("(runs launched from this GUI; the systemd timers' runs show in `hoard health` and their journals)"
             ).classes("text-caption text-grey-7")
    marks = (t.warn, t.deny, t.emergency)
    ui.label(f"SSD zones (marks at {t.warn:.0%} warn, {t.deny:.0%} deny, {t.emergency:.0%} emergency)").classes(
        "text-h6 q-mt-md")
    with ui.row().classes("w-full"):
        for z, s in h["zones"].items():
            with ui.card().classes("w-72").props(f'data-testid="zone-{z}"'):
                with ui.row().classes("items-center w-full"):
                    ui.label(f"zone {z}").classes("text-h6")
                    ui.space()
                    ui.badge(s.get("level", "?"), color="positive" if s.get("level") == "ok" else "negative")
                _bar(s.get("used_ratio", 0), marks)
                ui.label(f"{s.get('used_ratio', 0):.0%}: {fmt_bytes(s.get('used_bytes'))} used + "
                         f"{fmt_bytes(s.get('reserved_bytes'))} reserved of {fmt_bytes(s.get('quota_bytes'))}").classes("text-caption")
                outs = s.get("outputs", [])
                if outs:
                    ui.label(", ".join(f"{sum(o['state'] == k for o in outs)} {k}" for k in
                                       ("sealed", "running", "incomplete") if any(o["state"] == k for o in outs))
                             + " outputs").classes("text-caption")
    ui.label("Backups").classes("text-h6 q-mt-md")
    db = h["database"]
    if db.get("ok"):
        kinds = db.get("backups") or {}
        if not kinds:
            ui.label("database: never backed up — run `hoard db backup`").classes("text-negative")
        for kind, b in sorted(kinds.items()):
            ok = {True: "restore-checked", False: "FAILED its restore check", None: "not checked"}[b.get("verified")]
            ui.label(f"database ({kind}): {age(b['age_s'])}, {fmt_bytes(b.get('size_bytes'))}, {ok}")
    else:
        ui.label(f"database: {db.get('error')}").classes("text-negative")
    if snap.index_copies:
        for c in snap.index_copies:
            ui.label(f"index copy on {c['disk']}: {age(c['age_s'])}")
    else:
        ui.label("index: no copy on any disk — run `hoard index backup`").classes("text-negative")
    ui.label(f"figures from {age(snap.age_s)}").classes("text-caption q-mt-md")


def _history(points: list[Any] | None, error: str, smart: list[Any] | None = None) -> None:
    """The usage history charts (`hoard health --record`, systemd/hoard-usage.timer) from
    `_read_history`: one bucketed query of at most hoardfs.sql.usage.CHART_POINTS points per series,
    shared by the views of HISTORY_KEEP_S."""
    t = ctx().cfg.ssd.thresholds
    ui.label(f"Usage over the last {HISTORY_DAYS} days").classes("text-h6 q-mt-md")
    if error or not points:
        ui.label(error or "no usage samples yet: `hoard health --record` takes one; enable hoard-usage.timer "
                          "(systemd/) to take one every 10 minutes").classes("text-caption text-grey-7")
        return
    with ui.row().classes("w-full no-wrap"):
        ui.echart(charts.disk_history(points)).classes("w-1/2 h-64").mark("disk-history")
        ui.echart(charts.zone_history(points, (t.warn, t.deny, t.emergency))).classes("w-1/2 h-64").mark(
            "zone-history")
    if smart:  # (only drives with SMART have readings: loop devices and virtual disks have none)
        ui.echart(charts.smart_history(smart)).classes("w-full h-64").mark("smart-history")


async def _read_history() -> tuple[tuple[list[Any], list[Any]] | None, str]:
    """The usage history, or why it is not shown; never waits more than HISTORY_WAIT_S. The
    read is not cancelled (a thread cannot be): a late one ends on its own
    (hoardfs.jobs.usage.HISTORY_TIMEOUT_S) and its answer is dropped. A read younger than
    HISTORY_KEEP_S is reused."""
    c = ctx()
    if c.history is not None and time.monotonic() - c.history[0] < HISTORY_KEEP_S:
        return c.history[1], ""
    task = asyncio.ensure_future(in_thread(usage.histories, c.cfg, HISTORY_DAYS))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a late failure is no one's news
    done, _ = await asyncio.wait({task}, timeout=HISTORY_WAIT_S)
    if not done:
        return None, (f"usage history not shown: the database did not answer within {HISTORY_WAIT_S} s "
                      "(`hoard db status`)")
    try:
        points = task.result()  # AppStopping (the app is stopping) ends the page quietly
    except HoardError as e:
        return None, e.message
    c.history = (time.monotonic(), points)
    return points, ""


def register() -> None:
    @page("/storage")
    async def storage_page() -> None:
        await page_snapshot()
        read, error = await _read_history()
        with frame("Storage"):
            live(_body)
            _history(read[0] if read else None, error, read[1] if read else None)
