"""`/datasets`: every dataset (UA_3, docs/datasets.md) with its versions — built, mode, counts,
bytes, the directory it sealed — each version's diff against the one before (samples added,
removed, moved between splits, relabelled), and for operators Materialize (queued on `io`) and
Remove, each behind a confirmation. `/datasets/new`: a spec written in a TOML editor, a live dry
run as it changes (counts per split × class, bytes, whether zone 3D's quota admits it, sample
thumbnails per class) and Launch, which queues the build (`hoard dataset build SPEC`) and opens
its run page (/runs/dataset/NAME).

Only `hoardfs.datasets.api` (dry_run, list_datasets, diff, remove) and `hoardfs.jobs.launch` (launch_dataset,
launch_dataset_materialize) are called: no business logic here. Dataset names, class names,
label values, paths and error lines come from the database, labels and what a person typed:
shown as text (hoardfs.gui.text), never markup."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from nicegui import ui

from hoardfs.base.errors import HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.datasets import api
from hoardfs.datasets.audit import leak_line
from hoardfs.datasets.formats import FORMATS
from hoardfs.datasets.spec import DatasetSpec, parse_text
from hoardfs.gui import text
from hoardfs.gui.auth import SignedIn, require
from hoardfs.gui.browse_page import thumb_img
from hoardfs.gui.context import ctx, in_thread, page
from hoardfs.gui.frame import frame
from hoardfs.jobs import launch

#: what /datasets/new starts with: the spec's minimal keys (docs/datasets.md)
EXAMPLE = """\
name = "pets"                  # the dataset's name; builds are versions 1, 2, … of it
layout = "imagefolder"         # imagefolder | hf-imagefolder | coco | yolo | voc | webdataset | a layout file
mode = "copy"                  # or "view"
class_label = "class"          # the label key whose value is the class
classes = ["cat", "dog"]       # the pinned class map (optional: frozen at the first build)
[selector]                     # as `hoard select --file` takes it (docs/selectors.md)
kinds = ["image"]
[split]                        # ratios by name; salt; the group that never straddles splits
ratios = { train = 0.8, val = 0.2 }
salt = "v1"
group = "post"                 # post | author | thread | channel | lineage | near_dup | none | root
"""
#: how long the editor must rest before the dry run follows it (seconds)
DEBOUNCE_S = 0.8
#: the samples a diff lists of each kind (the counts are whole)
DIFF_LISTED = 200
SHA256 = re.compile(r"[0-9a-f]{64}")
STATUS_COLOR = {"done": "positive", "building": "primary", "removed": "grey", "failed": "negative"}


def one_line(e: HoardError) -> str:
    """The first line of an error, as the page shows it."""
    return text.shown((e.message or type(e).__name__).splitlines()[0])


def read_spec(source: str, user: SignedIn) -> DatasetSpec:
    """The spec typed in the editor (TOML text, never a file's name); a layout file, which is
    read from the server's disk, only for a role that may launch (a viewer would probe files)."""
    spec = parse_text(source)
    if spec.layout not in FORMATS and not user.may("launch"):
        raise HoardError(f"layout {spec.layout!r}: a viewer may dry-run the built-in layouts only "
                         f"({', '.join(sorted(FORMATS))}); an operator may name a layout file")
    return spec


def _split_counts(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{split} {sum(by.values())}" for split, by in counts.items()) or "-"


def counts_table(counts: dict[str, dict[str, int]], class_map: list[str]) -> None:
    """Samples per split (rows) × class (columns, the class map's order), with totals."""
    classes = list(class_map) + sorted({c for by in counts.values() for c in by} - set(class_map))
    with ui.grid(columns=len(classes) + 2).classes("gap-x-6 gap-y-1").mark("dataset-counts"):
        ui.label("split").classes("text-bold")
        for c in classes:
            text.label(c).classes("text-bold")
        ui.label("total").classes("text-bold")
        for split, by in counts.items():
            text.label(split)
            for c in classes:
                ui.label(str(by.get(c, 0)))
            ui.label(str(sum(by.values()))).classes("text-bold")


def dry_run_view(d: api.DryRun) -> None:
    ui.label(f"{d.samples} samples ({d.selected} nodes selected; {d.unlabelled} without the class label, "
             f"{d.capped} over a cap, {d.dropped_dup} duplicates left out)").mark("dataset-dry-samples")
    counts_table(d.counts, d.class_map)
    text.label("split: " + ", ".join(f"{sp} {g['samples']} ({g['share']:.1%}, ratio {g['ratio']:.0%})"
                                     for sp, g in d.splits.items())).mark("dataset-dry-splits")
    if d.large_groups:
        text.label("large groups: " + ", ".join(f"{g['group']} {g['samples']} ({g['share']:.1%})"
                                                for g in d.large_groups[:5])).classes("text-warning")
    if d.leak_audit:  # pairs across splits: the build refuses (or warns) — shown before it is launched
        text.label("leak audit: " + leak_line(d.leak_audit)).classes(
            "text-warning" if d.leak_audit["pairs"] else "").mark("dataset-dry-leaks")
    text.label(f"{fmt_bytes(d.bytes)} in {d.mode} mode, layout {d.layout}").mark("dataset-dry-bytes")
    if d.quota_ok:
        ui.label(f"zone 3D admits it: it reserves {fmt_bytes(d.reserve_bytes)}, "
                 f"{fmt_bytes(d.zone_free)} free under the deny mark").classes("text-positive").mark("dataset-quota")
    else:
        ui.label(f"zone 3D does not admit it: it needs {fmt_bytes(d.reserve_bytes)}, {fmt_bytes(d.zone_free)} free "
                 "under the deny mark — free space (`hoard zones`, Remove below) or raise its quota").classes(
            "text-negative").mark("dataset-quota")
    if d.new_classes:
        text.label("new classes, appended to the class map: " + ", ".join(d.new_classes)).classes("text-warning")
    ui.label("Samples per class").classes("text-subtitle1 q-mt-sm")
    for cls, shas in d.thumbnails.items():
        text.label(cls).classes("text-bold").mark("dataset-thumb-class")
        with ui.row().classes("gap-2"):
            for sha in shas:
                if SHA256.fullmatch(sha):
                    with ui.link(target=f"/node/{sha}"):
                        thumb_img(sha, "w-24 h-24")


def _editor(user: SignedIn) -> None:
    cfg = ctx().cfg
    with ui.row().classes("w-full no-wrap items-start gap-6"):
        with ui.column().classes("w-1/2"):
            ui.label("The spec (TOML; docs/datasets.md)").classes("text-h6")
            editor = ui.codemirror(EXAMPLE, language="TOML").classes("w-full").style("min-height: 22em").mark(
                "dataset-spec")
            with ui.row().classes("items-center"):
                ui.button("Dry run now", on_click=lambda: dry(edition["n"])).props("flat").mark("dataset-dry-now")
                if user.may("launch"):
                    ui.button("Launch the build", on_click=lambda: go()).mark("dataset-launch")
                else:
                    ui.label(f"You are signed in as a {user.role}: you can dry-run but not launch.").classes(
                        "text-warning")
            message = ui.label("").mark("dataset-message")
        with ui.column().classes("w-1/2"):
            ui.label("Dry run").classes("text-h6")
            state = ui.label("").classes("text-caption").mark("dataset-dry-state")
            result = ui.column().classes("w-full").mark("dataset-dry")

    edition = {"n": 0, "shown": -1}

    async def dry(n: int) -> None:
        if n != edition["n"] or n == edition["shown"]:
            return  # edited again since (a later dry run follows), or shown already
        state.text = "planning…"
        try:
            spec = read_spec(editor.value or "", user)
            d = await in_thread(api.dry_run, cfg, spec)
        except HoardError as e:
            if n != edition["n"]:
                return
            result.clear()
            with result:
                ui.label(one_line(e)).classes("text-negative").mark("dataset-error")
            state.text = ""
            edition["shown"] = n
            return
        if n != edition["n"]:
            return  # what it planned has been edited meanwhile
        result.clear()
        with result:
            dry_run_view(d)
        state.text = "as the spec stands"
        edition["shown"] = n

    def changed() -> None:
        edition["n"] += 1
        n = edition["n"]
        state.text = "edited…"
        ui.timer(DEBOUNCE_S, lambda: dry(n), once=True)

    editor.on_value_change(changed)

    async def go() -> None:
        who = require("launch")
        message.classes(remove="text-negative")
        message.text = ""
        try:
            spec = read_spec(editor.value or "", who)
            name = await in_thread(launch.launch_dataset, cfg, spec, who.name)
        except HoardError as e:
            message.text = one_line(e)
            message.classes("text-negative")
            return
        ui.navigate.to(f"/runs/dataset/{quote(name, safe='')}")

    ui.timer(0.1, lambda: dry(0), once=True)  # the example's dry run, once the page is up


def _diff_view(d: dict[str, Any]) -> None:
    ui.label(f"{d['a']} → {d['b']}: {len(d['added'])} added, {len(d['removed'])} removed, {len(d['moved'])} moved "
             f"between splits, {len(d['relabelled'])} relabelled, {d['unchanged']} unchanged").classes(
        "text-bold").mark("dataset-diff-summary")
    for kind, rows in (("added", d["added"]), ("removed", d["removed"])):
        for r in rows[:DIFF_LISTED]:
            with ui.row().classes("items-center gap-2"):
                ui.label(kind).classes("text-caption")
                ui.link(r["sha256"][:16], f"/node/{r['sha256']}")
                text.label(f"{r['split']} / {r['class'] or '-'}: {r['path']}").classes("text-mono text-caption")
    for kind, rows in (("moved", d["moved"]), ("relabelled", d["relabelled"])):
        for r in rows[:DIFF_LISTED]:
            with ui.row().classes("items-center gap-2"):
                ui.label(kind).classes("text-caption")
                ui.link(r["sha256"][:16], f"/node/{r['sha256']}")
                text.label(f"{r['from'] or '-'} → {r['to'] or '-'}").classes("text-caption").mark(f"dataset-{kind}")
    if any(len(d[k]) > DIFF_LISTED for k in ("added", "removed", "moved", "relabelled")):
        ui.label(f"… the first {DIFF_LISTED} of each; `hoard dataset diff {d['a']} {d['b']} --json` lists "
                 "all").classes("text-caption")


def _confirm(question: str, yes: str, act: Any) -> None:
    """Ask before acting: a dialog with the question, Cancel and the acting button."""
    with ui.dialog() as dialog, ui.card():
        text.label(question)
        with ui.row():
            ui.button("Cancel", on_click=dialog.close).props("flat").mark("dataset-confirm-no")

            async def go() -> None:
                dialog.close()
                await act()

            ui.button(yes, on_click=go).props("color=negative" if yes == "Remove" else "").mark("dataset-confirm")
    dialog.open()


def _dataset_card(ds: dict[str, Any], user: SignedIn, reload: Any) -> None:
    cfg = ctx().cfg
    name = ds["name"]
    with ui.card().classes("w-full").mark("dataset"):
        with ui.row().classes("items-center"):
            text.label(name).classes("text-h6").mark("dataset-name")
            ui.link("its jobs", f"/runs/dataset/{quote(name, safe='')}").classes("text-caption")
        if ds["class_map"]:
            text.label("classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(ds["class_map"]))).classes(
                "text-caption").mark("dataset-classes")
        diff_box = ui.column().classes("w-full")

        async def show_diff(a: str, b: str) -> None:
            try:
                d = await in_thread(api.diff, cfg, a, b)
            except HoardError as e:
                diff_box.clear()
                with diff_box:
                    ui.label(one_line(e)).classes("text-negative")
                return
            diff_box.clear()
            with diff_box:
                _diff_view(d)

        async def materialize(ref: str) -> None:
            who = require("launch")
            try:
                run = await in_thread(launch.launch_dataset_materialize, cfg, ref, who.name)
            except HoardError as e:
                ui.notify(one_line(e), type="negative")
                return
            ui.notify(f"materialize {ref}: queued", type="positive")
            ui.navigate.to(f"/runs/dataset/{quote(run, safe='')}")

        async def remove(ref: str) -> None:
            require("delete")
            try:
                r = await in_thread(api.remove, cfg, ref)
            except HoardError as e:
                ui.notify(one_line(e), type="negative")
                return
            freed = sum(x.get("freed_bytes") or 0 for x in r["removed"])
            ui.notify(text.shown(f"{ref}: removed from 3D ({fmt_bytes(freed)} freed); materialize makes it again"),
                      type="positive")
            await reload()

        heads = ["version", "status", "built", "mode", "samples", "files", "bytes", "path", ""]
        with ui.grid(columns="auto auto auto auto auto auto auto minmax(0, 1fr) auto").classes(
                "gap-x-6 gap-y-1 items-center w-full").mark("dataset-versions"):
            for h in heads:
                ui.label(h).classes("text-bold")
            previous = None
            for v in ds["versions"]:
                ref = f"{name}@{v['version']}"
                ui.label(f"v{v['version']}")
                ui.badge(v["status"], color=STATUS_COLOR.get(v["status"], "grey"))
                ui.label((v["built_at"] or "").replace("T", " ")[:19])
                ui.label(v["mode"])
                text.label(_split_counts(v["counts"] or {}))
                ui.label("-" if v["files"] is None else str(v["files"]))
                ui.label("-" if v["bytes"] is None else fmt_bytes(v["bytes"]))
                text.label(v["path"] or "-").classes("text-mono text-caption")
                with ui.row().classes("gap-1 no-wrap"):
                    if previous is not None:
                        ui.button(f"diff v{previous}", on_click=lambda a=f"{name}@{previous}", b=ref: show_diff(
                            a, b)).props("flat dense no-caps").mark("dataset-diff", f"dataset-diff-v{v['version']}")
                    if user.may("launch") and v["status"] != "done":
                        ui.button("Materialize", on_click=lambda r=ref: _confirm(
                            f"Materialize {r}: make 3D/{name}-v{r.rsplit('@', 1)[1]}/ again from its stored "
                            "manifest (queued on io)?", "Materialize", lambda: materialize(r))).props(
                            "flat dense no-caps").mark("dataset-materialize", f"dataset-materialize-v{v['version']}")
                    if user.may("delete") and v["status"] == "done":
                        ui.button("Remove", on_click=lambda r=ref, p=v["path"]: _confirm(
                            f"Remove {r}: delete {p} from zone 3D? The version stays recorded; materialize makes "
                            "it again.", "Remove", lambda: remove(r))).props("flat dense no-caps color=negative").mark(
                            "dataset-remove", f"dataset-remove-v{v['version']}")
                previous = v["version"]


def register() -> None:
    @page("/datasets")
    async def datasets_page() -> None:
        cfg = ctx().cfg
        with frame("Datasets") as user:
            with ui.row().classes("items-center"):
                ui.link("New dataset: write a spec, dry-run it, launch the build", "/datasets/new").mark(
                    "dataset-new")
                ui.link("dataset builds in Runs", "/runs?kind=dataset").classes("q-ml-md")

            @ui.refreshable
            async def listing() -> None:
                try:
                    rows = await in_thread(api.list_datasets, cfg)
                except HoardError as e:
                    ui.label(one_line(e)).classes("text-negative")
                    return
                if not rows:
                    ui.label("no dataset yet: write a spec on New dataset, or `hoard dataset build SPEC`").classes(
                        "text-caption")
                for ds in rows:
                    _dataset_card(ds, user, listing.refresh)

            await listing()

    @page("/datasets/new")
    async def new_dataset_page() -> None:
        with frame("New dataset") as user:
            ui.link("all datasets", "/datasets")
            _editor(user)
