"""`/actions`: every ActionContract (the actions directory's and the built-ins; a bad file with
its first problem) and every run of them, newest first. `/actions/{name}`: one contract as
`hoard action show` describes it, and its launch form — typed from the contract's `params`,
inputs from its selector (narrowed by an optional selector, or replaced by a list of sha256).
One action run's page is `/runs/action/{run}` (`run_body`, called by hoardfs.gui.runs_page): its step
timeline, the error line with the way on (and Resume), Release while the GPU gate or the labellers wait, Cancel, the
children it stored (each a link to its node page), its logs.

Only `hoardfs.jobs.launch`'s action functions (over `hoardfs.jobs.actions.api`) are called: no business logic
here. Contract text (descriptions, help, file names) and what workers wrote (error lines, logs,
child paths) come from outside: shown as text, never markup (hoardfs.gui.text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nicegui import ui

from hoardfs.base.errors import HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.gui import text
from hoardfs.gui.auth import SignedIn, require
from hoardfs.gui.context import ctx, in_thread, page
from hoardfs.gui.frame import frame
from hoardfs.jobs import launch, reports
from hoardfs.jobs.actions.contract import Contract, Param

STATUS_COLOR = {"done": "positive", "failed": "negative", "refused": "negative", "running": "primary", "queued": "grey",
                "canceled": "grey", "cancelled": "grey", "WAIT_GPU_READY": "orange", "waiting_external": "orange",
                "waiting_labels": "orange", "waiting_remote": "orange"}
STEP_COLOR = {"done": "positive", "failed": "negative", "running": "primary", "waiting": "orange",
              "queued": "grey-7", "cancelled": "grey-7"}


def run_link(rid: str) -> str:
    return f"/runs/action/{quote(rid, safe='')}"


def _runs_table(runs: list[dict[str, Any]], with_action: bool = True) -> None:
    if not runs:
        ui.label("no run yet").classes("text-caption")
        return
    heads = ["run", *(["action"] if with_action else []), "status", "step", "started", "took", "inputs",
             "children", "by"]
    with ui.grid(columns=" ".join(["auto"] * len(heads))).classes("gap-x-6 gap-y-1 items-center").mark(
            "action-runs"):
        for h in heads:
            ui.label(h).classes("text-bold")
        for r in runs:
            ui.link(r["run"], run_link(r["run"]))
            if with_action:
                ui.link(r["action"], f"/actions/{r['action']}")
            ui.badge(r["status"], color=STATUS_COLOR.get(r["status"], "grey"))
            ui.label(r["step"])
            ui.label(r["created"].replace("T", " ")[:19])
            ui.label(reports.duration(r["took"]))
            ui.label(str(r["inputs"]))
            ui.label("-" if r["children"] is None else str(r["children"]))
            text.label(r.get("by") or "-")


def _contracts_table(rows: list[dict[str, Any]]) -> None:
    directory = ctx().cfg.actions_dir
    text.label(f"the actions directory (actions.dir): {directory}").classes("text-caption")
    if not rows:
        ui.label("no contract there and no built-in (docs/actions.md)").classes("text-caption")
        return
    with ui.grid(columns="auto auto auto auto auto minmax(0, 1fr)").classes("gap-x-6 gap-y-1 items-center").mark(
            "action-contracts"):
        for h in ("action", "type", "version", "run", "from", "description"):
            ui.label(h).classes("text-bold")
        for c in rows:
            where = "built-in" if c["builtin"] else Path(c["file"]).name
            if c.get("error") is not None:
                text.label(c["name"]).classes("text-negative")
                ui.label("invalid").classes("text-negative")
                ui.label("-")
                ui.label("-")
                text.label(where)
                more = f" (+{c['problems'] - 1} more: hoard action validate)" if c["problems"] > 1 else ""
                text.label(c["error"] + more).classes("text-negative text-caption").mark("contract-problem")
                continue
            ui.link(c["action_id"], f"/actions/{c['action_id']}")
            ui.label(f"{c['action_type']} ({c['kind']})")
            ui.label(f"v{c['version']}")
            ui.label(c["run"] + (" + gate" if c["gate"] else ""))
            text.label(where)
            text.label(c["description"][:200]).classes("text-caption")


def _param_field(name: str, p: Param) -> Any:
    """An input for one parameter, its default filled; returns a function giving the
    `NAME=VALUE` item `--param` takes (None: not given — the contract's default applies, or
    the one line naming a missing parameter)."""
    bounds = ""
    if p.type in ("int", "float") and (p.min is not None or p.max is not None):
        lo, hi = ("" if v is None else f"{v:g}" for v in (p.min, p.max))
        bounds = f", {lo}..{hi}"
    label = f"{name} ({p.type}{bounds})" + ("" if p.default is not None else " *")
    with ui.column().classes("gap-0"):
        if p.type == "bool":
            el = ui.switch(label, value=bool(p.default)).mark(f"param-{name}")
            read = lambda: f"{name}={'true' if el.value else 'false'}"  # noqa: E731
        elif p.type == "choice":
            el = ui.select(list(p.choices), value=p.default, label=label).classes("w-64").mark(f"param-{name}")
            read = lambda: None if el.value is None else f"{name}={el.value}"  # noqa: E731
        elif p.type in ("int", "float"):
            # no min/max on the element: the browser would clamp a value on blur; a value out of
            # range is the one line `--param` parsing gives
            el = ui.number(label, value=p.default).classes("w-64").mark(f"param-{name}")

            def read() -> str | None:
                v = el.value
                if v is None or v == "":
                    return None
                if p.type == "int" and isinstance(v, float) and v.is_integer():
                    v = int(v)
                return f"{name}={v}"
        else:
            el = ui.input(label, value="" if p.default is None else str(p.default)).classes("w-96").mark(
                f"param-{name}")
            read = lambda: None if not el.value and p.default is None else f"{name}={el.value or ''}"  # noqa: E731
        if p.help:
            text.label(p.help).classes("text-caption text-grey-8")
    return read


def _launch_form(c: Contract, user: SignedIn) -> None:
    with ui.card().classes("w-full").props('data-testid="action-launch"'):
        ui.label("Launch").classes("text-h6")
        readers = [_param_field(name, p) for name, p in c.params.items()]
        if not c.params:
            ui.label("this action takes no parameters").classes("text-caption")
        ui.label("Inputs: the contract's selector (above); or narrowed by a selector, or replaced by a list "
                 "of nodes").classes("text-caption q-mt-sm")
        selector = ui.textarea("narrowing selector (JSON, docs/selectors.md; empty: the contract's alone)",
                               value="", placeholder='{"batches": ["…"]}').classes("w-full").mark("action-selector")
        nodes = ui.textarea("or these nodes: sha256, one a line (instead of the contract's selector)",
                            value="").classes("w-full").mark("action-nodes")
        elsewhere = None
        if not launch.remote_refusal(c):  # (AC2–AC4 with a worker of its own: docs/scale-out.md)
            elsewhere = ui.checkbox("on another host: stage, run and parse on a worker of the remote queue "
                                    "(--remote; the inputs must be on an S3 disk)", value=False).mark("action-remote")
        message = ui.label("").mark("action-message")

        def refuse(line: str) -> None:
            message.text = line
            message.classes("text-negative")

        async def go() -> None:
            who = require("launch")
            message.classes(remove="text-negative")
            message.text = ""
            sel = None
            if (selector.value or "").strip():
                try:
                    sel = json.loads(selector.value)
                except ValueError as e:
                    refuse(f"the selector is not JSON: {e}")
                    return
                if not isinstance(sel, dict):
                    refuse("the selector is a JSON object, e.g. {\"batches\": [\"…\"]} (docs/selectors.md)")
                    return
            listed = (nodes.value or "").split() or None
            given = [item for item in (r() for r in readers) if item is not None]
            try:
                sub = await in_thread(launch.launch_action, ctx().cfg, c.action_id, sel, listed, given, who.name,
                                      remote=bool(elsewhere is not None and elsewhere.value))
            except HoardError as e:
                refuse(text.shown(e.message.splitlines()[0] if e.message else type(e).__name__))
                return
            rid = sub.state.run_id
            if sub.how == "done already":
                message.text = f"run {rid}: done already (nothing changed)"
                ui.link("its page", run_link(rid)).mark("action-done-already")
                return
            ui.navigate.to(run_link(rid))

        if user.may("launch"):
            ui.button(f"Launch {c.action_id}", on_click=go).mark("action-launch")
        else:
            ui.label(f"You are signed in as a {user.role}: you can read the form but not launch.").classes(
                "text-warning")


def label_studio_project(report: dict[str, Any]) -> tuple[str, str] | None:
    """(text, URL) of an AC5 run's Label Studio project: the Label Studio its tasks step used
    (label_studio.url, or this host's, `hoard labelstudio up`) and the project id, both in its
    report; None for another run."""
    ls = report.get("label_studio")
    if not isinstance(ls, dict) or not isinstance(ls.get("project"), int) or isinstance(ls.get("project"), bool):
        return None
    base = ls.get("url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        return None
    title = ls.get("title") if isinstance(ls.get("title"), str) else ""
    return (f"Label Studio project {ls['project']}" + (f" ({title})" if title else ""),
            f"{base.rstrip('/')}/projects/{ls['project']}/data")


def run_body(rid: str, user: SignedIn) -> Any:
    """The page of one action run, under the frame hoardfs.gui.runs_page made: returns an awaitable
    that builds it (and refreshes it every few seconds)."""
    cfg = ctx().cfg

    async def data() -> dict[str, Any]:
        return await in_thread(launch.action_detail, cfg, rid)

    async def build() -> None:
        try:
            d = await data()
        except HoardError as e:
            text.label(e.message).classes("text-negative")
            return

        @ui.refreshable
        def body(d: dict[str, Any] = d) -> None:
            status = d["status"]
            with ui.row().classes("items-center"):
                ui.badge(status, color=STATUS_COLOR.get(status, "grey")).classes("text-h6").mark("run-status")
                ui.link(f"action {d['action']} v{d['version']} ({d['type']})", f"/actions/{d['action']}")
                ui.label(f"step {d['step']}")
                ui.label(f"started {d['created'].replace('T', ' ')[:19]}")
                if d["took"] is not None:
                    ui.label(f"took {reports.duration(d['took'])}").mark("run-took")
                if d.get("by"):
                    text.label(f"launched by {d['by']}")
            if status == "WAIT_GPU_READY":
                gate = d.get("gate_contract") or {}
                how = (f"its hook {' '.join(gate['hook'])} is asked every {gate.get('poll_s')} s; "
                       if gate.get("hook") else "")
                text.label(f"waiting at the GPU gate: {how}Release moves it on now (`hoard action release "
                           f"{d['run']}`); it fails after {gate.get('timeout_s', '?')} s").classes(
                    "text-warning").mark("run-waiting")
            elif status == "waiting_labels":
                ls = d["report"].get("label_studio") or {}
                done = (f"{ls['finished']} of {ls.get('tasks', '?')} tasks labelled so far; "
                        if ls.get("finished") is not None else "")
                text.label(f"waiting for the labellers in Label Studio: {done}Release imports what is labelled now "
                           f"(`hoard action release {d['run']}`)").classes("text-warning").mark("run-waiting")
            elif status == "waiting_external":
                text.label("waiting for the external worker's done marker"
                           + (f" in {d['report']['external']}" if d["report"].get("external") else "")).classes(
                    "text-warning").mark("run-waiting")
            project = label_studio_project(d["report"])
            if project is not None:  # AC5: its Label Studio project, a plain link (its text shown as text)
                ui.link(project[0], project[1], new_tab=True).mark("run-ls-project")
            if d.get("next"):  # the command to type next (`hoard action status RUN`'s `next`)
                text.label(f"next: `{d['next']}`").classes("text-mono").mark("run-next")
            if d.get("error"):
                text.label(d["error"]).classes("text-negative").mark("run-error")
            if d.get("refused") and d["refused"] != d.get("error"):  # why it cannot be resumed as it is
                text.label(d["refused"]).classes("text-negative").mark("run-refused")
            ui.label("Steps").classes("text-h6")
            with ui.timeline(side="right").mark("run-steps"):
                for s in d["steps_timeline"]:
                    secs = reports.duration(s["seconds"]) if s["seconds"] is not None else ""
                    with ui.timeline_entry(title=s["step"], color=STEP_COLOR.get(s["state"], "grey")):
                        ui.label(f"{s['step']}: {s['state']} {secs} (queue {s['queue']})")
            with ui.row().classes("items-center"):
                ui.link(f"inputs: {d['inputs']}", f"/assets?batch={quote(d['run'], safe='')}").mark("run-inputs")
                if d["children"] is not None:
                    ui.label(f"children: {d['children']}").mark("run-children")
            if d["children_listed"]:
                with ui.column().classes("gap-0").mark("run-children-list"):
                    for ch in d["children_listed"]:
                        with ui.row().classes("items-center gap-2"):
                            ui.link(ch["sha256"][:16], f"/node/{ch['sha256']}")
                            text.label(ch["path"]).classes("text-mono text-caption")
                            ui.label(fmt_bytes(ch["size"])).classes("text-caption")
                    if d["children"] and d["children"] > len(d["children_listed"]):
                        ui.label(f"… the first {len(d['children_listed'])} of {d['children']}").classes(
                            "text-caption")
            if d["params"]:
                text.label("parameters: " + ", ".join(f"{k}={v}" for k, v in d["params"].items()))
            # each figure a line of text (hoardfs.jobs.reports: nested figures as `outer: inner`, yes/no,
            # sizes and durations in words), never a dictionary's repr; as text: a worker wrote some of it
            figures = reports.figures({k: v for k, v in d["report"].items() if k not in ("database", "external")})
            if figures or d["report"].get("database"):
                ui.label("Report").classes("text-h6")
                with ui.grid(columns=2).classes("gap-x-6").mark("run-report"):
                    for k, v in figures:
                        text.label(k).classes("text-bold")
                        text.label(v)
                    if d["report"].get("database"):
                        ui.label("database").classes("text-bold")
                        text.label(", ".join(f"{k} {v}" for k, v in sorted(d["report"]["database"].items())))
            if user.may("launch"):
                with ui.row().classes("q-mt-md"):
                    if status == "WAIT_GPU_READY":
                        ui.button("Release", on_click=lambda: act("release")).mark("run-release")
                    elif status == "waiting_labels":
                        ui.button("Release: import what is labelled now", on_click=lambda: act("release")).mark(
                            "run-release")
                    if (status in ("failed", "cancelled", "canceled") or d.get("stalled")) and not d.get("refused"):
                        # `hoard action resume RUN`: this run, with its recorded inputs and params
                        # (none for a run whose files or contract do not prove themselves)
                        ui.button("Resume", on_click=lambda: act("resume")).mark("run-resume")
                    if status in launch.ACTION_CANCELABLE:
                        ui.button("Cancel", on_click=lambda: act("cancel")).props("color=negative").mark(
                            "run-cancel")
            if d["log"]:
                text.run_log(d["log"], failed=status == "failed")
            if d["worker_log"]:
                ui.label("The worker's output (stdout and stderr, newest last)").classes("text-h6 q-mt-md")
                text.pre(d["worker_log"]).mark("run-worker-log")

        async def reload() -> None:
            try:
                fresh = await data()
            except HoardError:
                return
            body.refresh(fresh)

        async def act(what: str) -> None:
            require({"cancel": "cancel", "resume": "retry"}.get(what, "release"))
            try:
                if what == "release":
                    said = await in_thread(launch.release_action, cfg, rid)
                elif what == "resume":
                    said = await in_thread(launch.resume_action, cfg, rid)
                else:
                    said = await in_thread(launch.cancel_action, cfg, rid)
            except HoardError as e:
                ui.notify(text.shown(e.message), type="negative")
                return
            ui.notify(f"run {rid}: {said}", type="positive")
            await reload()

        ui.timer(max(2.0, cfg.gui.refresh_s / 2), reload)
        body()

    return build()


def register() -> None:
    @page("/actions")
    async def actions_page() -> None:
        cfg = ctx().cfg
        with frame("Actions"):
            try:
                rows = await in_thread(launch.action_contracts, cfg)
            except HoardError as e:
                text.label(e.message).classes("text-negative")
                rows = []
            ui.label("Contracts").classes("text-h6")
            _contracts_table(rows)
            ui.label("Runs, newest first").classes("text-h6 q-mt-md")
            _runs_table(await in_thread(launch.action_runs, cfg))

    @page("/actions/{name}")
    async def action_page(name: str) -> None:
        cfg = ctx().cfg
        with frame(f"Action {text.shown(name)}") as user:
            try:
                c, rows = await in_thread(launch.action_contract, cfg, name)
            except HoardError as e:
                for line in e.message.splitlines()[:20]:
                    text.label(line).classes("text-negative").mark("contract-problem")
                ui.link("all actions", "/actions")
                return
            with ui.grid(columns=2).classes("gap-x-6 gap-y-1").mark("action-show"):
                for key, value in rows:
                    ui.label(key).classes("text-bold")
                    text.label(value)
            _launch_form(c, user)
            ui.label("Its runs, newest first").classes("text-h6 q-mt-md")
            _runs_table(await in_thread(launch.action_runs, cfg, c.action_id), with_action=False)
