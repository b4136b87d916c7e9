"""`/runs`: every run (ingests, stages/exports, maintenance jobs) with filters and pages
computed on the server from the last snapshot; `/runs?view=failed`: failed and not since
succeeded. `/runs/{kind}/{id}`: one run — step timeline and times, the report (counts and
each rejected file with its reason), the traceback, why it waits; retry/resume and cancel."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from nicegui import ui

from hoardfs.base.errors import HoardError
from hoardfs.gui import actions_page, text
from hoardfs.gui.auth import require
from hoardfs.gui.context import ctx, in_thread, page, page_snapshot
from hoardfs.gui.frame import frame, page_number, progress_text
from hoardfs.jobs import launch, reports

PER_PAGE = 25
STATUS_COLOR = {"done": "positive", "done with rejects": "warning", "done with errors": "warning",
                "failed": "negative", "running": "primary", "queued": "grey", "canceled": "grey",
                "refused": "orange", "WAIT_GPU_READY": "orange", "waiting_external": "orange",
                "waiting_remote": "orange"}


def _filters(current: dict[str, str]) -> None:
    def go(**change: str) -> None:
        q = {k: v for k, v in (current | change | {"page": "1"}).items() if v}
        ui.navigate.to(f"/runs?{urlencode(q)}")

    with ui.row().classes("items-end"):
        ui.select({"": "any kind", **{k: k for k in launch.KINDS}}, value=current.get("kind", ""), label="kind",
                  on_change=lambda e: go(kind=e.value)).classes("w-40")
        ui.select({"": "any status", **{s: s for s in launch.STATUSES}}, value=current.get("status", ""),
                  label="status", on_change=lambda e: go(status=e.value)).classes("w-40")
        ui.input("source", value=current.get("source", ""),
                 on_change=None).classes("w-32").on("keydown.enter", lambda e: go(source=e.sender.value))
        ui.input("from (YYYY-MM-DD)", value=current.get("since", "")).classes("w-40").on(
            "keydown.enter", lambda e: go(since=e.sender.value))
        ui.input("until (YYYY-MM-DD)", value=current.get("until", "")).classes("w-40").on(
            "keydown.enter", lambda e: go(until=e.sender.value))
        ui.link("failed and not since succeeded", "/runs?view=failed").classes("q-ml-md")
        ui.link("all runs", "/runs").classes("q-ml-md")


def register() -> None:
    @page("/runs")
    async def runs_page(kind: str = "", status: str = "", source: str = "", since: str = "", until: str = "",
                        view: str = "", page: int = 1) -> None:
        page = page_number(page)
        snap = await page_snapshot()
        all_runs = launch.failed_not_since_succeeded(snap.runs) if view == "failed" else snap.runs
        rows, total = launch.select(all_runs, kind, status, source, since, until, page, PER_PAGE)
        current = {"kind": kind, "status": status, "source": source, "since": since, "until": until, "view": view}
        with frame("Failed, not since succeeded" if view == "failed" else "Runs"):
            _filters(current)
            ui.label(f"{total} runs" + (f", page {page} of {max(1, -(-total // PER_PAGE))}" if total else "")).classes(
                "text-caption")
            with ui.grid(columns=7).classes("gap-x-6 gap-y-1 items-center"):
                for head in ("kind", "run", "status", "source", "created", "took", "error"):
                    ui.label(head).classes("text-bold")
                for r in rows:
                    ui.label(r.kind)
                    ui.link(r.id, f"/runs/{r.kind}/{quote(r.id, safe='')}")
                    ui.badge(r.status, color=STATUS_COLOR.get(r.status, "grey"))
                    text.label(r.source or "-")
                    ui.label(r.created.replace("T", " ")[:19])
                    ui.label(reports.duration(r.seconds))
                    text.label((r.error or "")[:80]).classes("text-negative text-caption")
            with ui.row():
                q = {k: v for k, v in current.items() if v}
                if page > 1:
                    ui.link("← newer", f"/runs?{urlencode(q | {'page': page - 1})}")
                if page * PER_PAGE < total:
                    ui.link("older →", f"/runs?{urlencode(q | {'page': page + 1})}")

    @page("/runs/{kind}/{run_id}")
    async def run_page(kind: str, run_id: str) -> None:
        cfg = ctx().cfg
        with frame(f"{kind} {run_id}") as user:
            if kind not in launch.KINDS:
                text.label(f"no kind of run {kind!r}; one of {', '.join(launch.KINDS)}").classes("text-negative")
                return
            if kind == "action":  # a run of an ActionContract: its own page (hoardfs.gui.actions_page)
                await actions_page.run_body(run_id, user)
                return

            async def body_data():
                d = await in_thread(launch.detail, cfg, kind, run_id)
                return d | {"waiting": await in_thread(launch.why_waiting, cfg, kind, run_id, d.get("status", ""))}

            try:
                d = await body_data()
            except HoardError as e:
                ui.label(e.message).classes("text-negative")
                return

            @ui.refreshable
            def body(d=d) -> None:
                status = d.get("status", "?")
                with ui.row().classes("items-center"):
                    ui.badge(status, color=STATUS_COLOR.get(status, "grey")).classes("text-h6").mark("run-status")
                    if d.get("source"):
                        text.label(f"source {d['source']}")
                    if d.get("signalled"):
                        ui.label(f"signalled {d['signalled']}, updated {d.get('updated', '')}")
                    if d.get("took") is not None:
                        ui.label(f"took {reports.duration(d['took'])}").mark("run-took")
                    if d.get("by"):
                        text.label(f"launched by {d['by']}")
                if kind == "dataset":  # a build or materialize of a dataset: its versions are on /datasets
                    ui.link("the dataset's versions", "/datasets").mark("run-dataset")
                for why in d["waiting"]:
                    text.label(f"waiting: {why}").classes("text-warning")
                if d.get("progress"):  # a maintenance job's figures (hoardfs.jobs.progress), live while it runs
                    figures = d["progress"]
                    if figures.get("total"):
                        ui.linear_progress(value=min(1.0, figures["done"] / figures["total"]), show_value=False,
                                           size="12px").classes("w-96")
                    ui.label(f"{figures.get('what', 'progress')}: {progress_text(figures)}").mark(
                        "run-progress")
                if d.get("error"):
                    text.label(d["error"]).classes("text-negative")
                if d.get("deleted"):  # an ingest's batch dropped since (`hoard delete --batch`): this is its history
                    text.label(f"batch deleted {d['deleted']} (hoard delete --batch): its files are no longer in the "
                               "store's batches, and `hoard gc` frees those nothing else holds").classes(
                        "text-warning").mark("run-deleted")
                if d.get("steps"):
                    ui.label("Steps").classes("text-h6")
                    with ui.timeline(side="right"):
                        for s in d["steps"]:
                            state = "done" if s["done"] else ("failed" if s["current"] and status == "failed" else
                                                              "current" if s["current"] else "to do")
                            secs = reports.duration(s["seconds"]) if s.get("seconds") is not None else ""
                            with ui.timeline_entry(title=s["step"], color={
                                    "done": "positive", "failed": "negative", "current": "primary"}.get(state, "grey")):
                                ui.label(f"{s['step']}: {state} {secs} (queue {s['queue']})")
                report = d.get("report") or {}
                if report:
                    ui.label("Report").classes("text-h6")
                    with ui.grid(columns=2).classes("gap-x-6").mark("run-report"):
                        for k, v in reports.figures(report):
                            text.label(k).classes("text-bold")
                            text.label(v)
                    rejected = report.get("rejected") or []
                    if rejected:
                        ui.label(f"{len(rejected)} rejected files").classes("text-subtitle1 q-mt-sm")
                        with ui.grid(columns=2).classes("gap-x-6"):
                            for r in rejected[:500]:
                                text.label(r.get("path") or "(the batch)").classes("text-mono")
                                text.label(r.get("reason", ""))
                if d.get("params"):
                    text.label("parameters: " + ", ".join(f"{k}={v}" for k, v in d["params"].items()))
                if d.get("log"):
                    text.run_log(d["log"], failed=status == "failed")
                if d.get("traceback"):
                    ui.label("Traceback (of its last job)").classes("text-h6")
                    text.pre(d["traceback"]).mark("run-traceback")
                if d.get("job_id"):
                    ui.label(f"RQ job {d['job_id']} (its current step): {d['job_status']}").classes("text-bold q-mt-md")
                    for line in d.get("job_log", []):
                        text.label(line).classes("text-caption text-mono")
                if user.may("retry"):  # what the run's status allows: a done run offers neither
                    with ui.row().classes("q-mt-md"):
                        if status in launch.RETRYABLE:
                            ui.button("Retry / resume", on_click=lambda: act("retry")).mark("run-retry")
                        if status in launch.CANCELABLE:
                            ui.button("Cancel", on_click=lambda: act("cancel")).props("color=negative").mark(
                                "run-cancel")

            async def reload() -> None:
                try:
                    d = await body_data()
                except HoardError:
                    return
                body.refresh(d)

            ui.timer(max(2.0, cfg.gui.refresh_s / 2), reload)

            async def act(what: str) -> None:
                who = require("retry" if what == "retry" else "cancel")
                try:
                    if what == "retry":
                        new_id = await in_thread(launch.retry, cfg, kind, run_id, who.name)
                        ui.notify(f"{kind} {new_id} queued again", type="positive")
                        await in_thread(ctx().cache.refresh)
                        if new_id != run_id:
                            ui.navigate.to(f"/runs/{kind}/{new_id}")
                            return
                    else:
                        said = await in_thread(launch.cancel, cfg, kind, run_id)
                        ui.notify(f"{kind} {run_id}: {said}", type="positive")
                except HoardError as e:
                    ui.notify(e.message, type="negative")
                    return
                await reload()

            body()
