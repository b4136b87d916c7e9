"""`/launch`: forms that start runs — a UA_1 ingest of a 3A batch, a stage or export, and each
maintenance job, its form generated from the job's typed parameters (`hoardfs.jobs.launch.params_model`).
Every request is validated by the jobs API before anything is queued; a refusal is shown as
its one line."""

from __future__ import annotations

import json
import typing
from typing import Any

import psycopg
from nicegui import ui

from hoardfs.base.errors import HoardError, first_line
from hoardfs.datasets.layouts import BUILTIN
from hoardfs.gui.auth import SignedIn, require
from hoardfs.gui.context import ctx, in_thread, page
from hoardfs.gui.frame import frame
from hoardfs.gui.text import shown
from hoardfs.jobs import launch, outputs
from hoardfs.jobs.maintenance import JOBS
from hoardfs.sql.selectors import query_nodes


async def _launched(message, fn, *args):
    """`fn(*args)` in a worker thread; its HoardError (a refused form, Redis down) shown in
    `message` in red, and None returned."""
    try:
        return await in_thread(fn, *args)
    except HoardError as e:
        message.text = e.message
        message.classes("text-negative")
        return None

def _field(name: str, annotation: Any, default: Any, mark: str) -> tuple[ui.element, Any]:
    """An input for one parameter and a function reading its value back (None for empty)."""
    el, read = _input(name, annotation, default)
    el.mark(mark)
    return el, read


def _input(name: str, annotation: Any, default: Any) -> tuple[ui.element, Any]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    base = args[0] if optional and len(args) == 1 else annotation
    if typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    label = name.replace("_", " ")
    if base is bool:
        el = ui.checkbox(label, value=bool(default))
        return el, lambda: el.value
    if typing.get_origin(base) is typing.Literal:
        el = ui.select(list(typing.get_args(base)), value=default, label=label).classes("w-48")
        return el, lambda: el.value
    if base in (int, float):
        el = ui.number(label, value=None if default in (None, Ellipsis) else default).classes("w-48")
        return el, lambda: None if el.value in (None, "") else el.value
    el = ui.input(label, value="" if default in (None, Ellipsis) else str(default)).classes("w-48")
    return el, lambda: el.value.strip() or None


def _maintenance_form(kind: str, user: SignedIn) -> None:
    model = launch.params_model(kind)
    with ui.card().classes("w-96").props(f'data-testid="launch-{kind}"'):
        ui.label(kind).classes("text-h6")
        ui.label(launch.describe(kind)).classes("text-caption")
        readers = {}
        for name, f in model.model_fields.items():
            _, readers[name] = _field(name, f.annotation, ... if f.is_required() else f.default, f"{kind}-{name}")
        message = ui.label("")

        async def go() -> None:
            who = require("launch")
            params = {k: r() for k, r in readers.items()}
            params = {k: v for k, v in params.items() if v is not None or not model.model_fields[k].is_required()}
            job_id = await _launched(message, launch.launch_maintenance, ctx().cfg, kind, params, who.name)
            if job_id is None:
                return
            ui.navigate.to(f"/runs/{kind}/{job_id}")

        if user.may("launch"):
            ui.button(f"Launch {kind}", on_click=go).mark(f"launch-{kind}")


def _ingest_form(user: SignedIn) -> None:
    cfg = ctx().cfg
    batches = launch.ingest_candidates(cfg)
    with ui.card().classes("w-96").props('data-testid="launch-ingest"'):
        ui.label("ingest (UA_1)").classes("text-h6")
        ui.label("A scraped batch of zone 3A → store, database, 3B package.").classes("text-caption")
        if not batches:
            ui.label(f"no batch waits in {cfg.ssd.zone_path('3A')}").classes("text-caption")
        options = {b["batch_id"]: shown(f"{b['batch_id']} ({b['source'] or 'no _READY'}, {b['state']})") for b in batches}
        batch = ui.select(options, label="batch", value=next(iter(options), None)).classes("w-full").mark(
            "ingest-batch")
        source = ui.select({"": "the one its _READY names", **{s: s for s in launch.sources(cfg)}}, value="",
                           label="source").classes("w-full").mark("ingest-source")
        message = ui.label("")

        async def go() -> None:
            require("launch")
            st = await _launched(message, launch.launch_ingest, cfg, batch.value or "", source.value or None)
            if st is None:
                return
            await in_thread(ctx().cache.refresh)
            ui.navigate.to(f"/runs/ingest/{st.batch_id}")

        if user.may("launch"):
            ui.button("Launch ingest", on_click=go).mark("launch-ingest")


def _output_form(user: SignedIn) -> None:
    with ui.card().classes("w-96").props('data-testid="launch-output"'):
        ui.label("stage / export").classes("text-h6")
        ui.label("Selected nodes, laid out, copied into 3C (stage) or 3D (export), then sealed.").classes(
            "text-caption")
        kind = ui.select(["export", "stage"], value="export", label="kind").classes("w-48")
        output_id = ui.input("output id").classes("w-full").mark("output-id")
        layout = ui.select(sorted(BUILTIN), value="by_sha256", label="layout", new_value_mode="add-unique").classes(
            "w-full")
        # empty, never a default: `{}` (or `{"sources": []}`) selects every node in the store
        selector = ui.textarea("selector (JSON, docs/selectors.md)", value="",
                               placeholder='{"batches": ["…"], "kinds": ["image"]}').classes("w-full").mark(
            "output-selector")
        dedup = ui.select(["by_node", "by_sha256"], value="by_node", label="dedup").classes("w-48")
        mode = ui.select(["copy", "view"], value="copy", label="mode").classes("w-48")
        message = ui.label("")

        def refuse(text: str) -> None:
            message.text = text
            message.classes("text-negative")

        async def go() -> None:
            require("launch")
            message.classes(remove="text-negative")
            try:
                sel = json.loads(selector.value or "null")
            except ValueError as e:
                refuse(f"the selector is not JSON: {e}")
                return
            if not isinstance(sel, dict) or not any(v not in ([], None, False, "") for v in sel.values()):
                refuse("write a selector (docs/selectors.md), e.g. {\"batches\": [\"…\"]}: an empty one would "
                       "select every node in the store")
                return
            args = (kind.value, output_id.value.strip(), layout.value, sel, None, dedup.value, mode.value)
            if await _launched(message, outputs.make_spec, *args) is None:  # the id, layout, selector: checked
                return
            try:
                found = await _launched(message, _count, sel)  # a selector a query refuses (`text`): its line
            except psycopg.Error as e:
                refuse(f"the selection could not be counted: the database does not answer ({first_line(e)})")
                return
            if found is None:
                return
            if not found[0]:
                refuse("the selector selects no node; nothing was queued (`hoard select --file` shows what it picks)")
                return
            message.text = f"{found[0]:,} nodes, {found[1] / 1e6:,.1f} MB selected"
            oid = await _launched(message, launch.launch_output, ctx().cfg, *args)
            if oid is None:
                return
            await in_thread(ctx().cache.refresh)
            ui.navigate.to(f"/runs/{kind.value}/{oid}")

        if user.may("launch"):
            ui.button("Launch", on_click=go).mark("launch-output")


def _count(sel: dict) -> tuple[int, int]:
    """How many nodes the selector picks and their bytes (blocking: run it `in_thread`)."""
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        nodes = query_nodes(conn, sel)
    return len(nodes), nodes.total_bytes


def register() -> None:
    @page("/launch")
    def launch_page() -> None:
        with frame("Launch") as user:
            if not user.may("launch"):
                ui.label(f"You are signed in as a {user.role}: you can look at the forms but not launch.").classes(
                    "text-warning")
            with ui.row().classes("w-full items-start"):
                _ingest_form(user)
                _output_form(user)
            ui.label("Maintenance").classes("text-h6 q-mt-md")
            with ui.row().classes("w-full items-start"):
                for kind in JOBS:
                    _maintenance_form(kind, user)
