"""`hoard pipeline define|show|advance|watch`: ordered stages of actions a batch goes through
(hoardfs.jobs.actions.pipelines; docs/actions.md "Pipelines")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.cli._common import err, out, state
from hoardfs.jobs.actions import pipelines

app = typer.Typer(help="Pipelines: ordered stages of actions a batch goes through (docs/actions.md).",
                  no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout, nothing else")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="the pipeline's name")]


@app.command("define")
def define(ctx: typer.Context, name: Name,
           actions: Annotated[list[str], typer.Argument(metavar="ACTION...", help="the stages: action ids, in order")],
           source: Annotated[str | None, typer.Option("--source", help="and start it on every new batch of this "
                                                                      "source (as `hoard pipeline watch`)")] = None,
           ) -> None:
    """Define a pipeline: its stages, the actions in order. The same again changes nothing;
    other stages for an existing name are refused (a pipeline's stages never change)."""
    new = pipelines.define(state(ctx).settings, name, actions)
    out.print(f"pipeline {name}: {' → '.join(actions)}" + ("" if new else " (defined already)"), markup=False)
    if source is not None:
        pipelines.watch(state(ctx).settings, name, source=source)
        out.print(f"  starts on every new batch of source {display(source)} (`hoard pipeline watch {name}`)",
                  markup=False)


def _next_line(doc: dict) -> str:
    nxt = doc["next"]
    if nxt is None:
        return "every stage done"
    what = f"next {nxt['position']}. {nxt['action']}: "
    if nxt["run"] is None:
        return what + f"cannot run: {nxt['error']}"
    return what + f"run {nxt['run']} {nxt['status']}" + (f" ({nxt['error']})" if nxt["error"] else "")


@app.command("show")
def show(ctx: typer.Context,
         name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="one pipeline (default: all)")] = None,
         as_json: AsJson = False) -> None:
    """Every pipeline (or NAME): its stages, and each batch in it with the last stage done and
    the run of the next."""
    docs = pipelines.show(state(ctx).settings, name)
    if as_json:
        out.print(json.dumps({"pipelines": docs}, ensure_ascii=False), markup=False)
        return
    if not docs:
        err.print("no pipeline is defined yet (`hoard pipeline define NAME ACTION [ACTION…]`)", markup=False)
    for p in docs:
        out.print(f"pipeline {p['name']}: " + " → ".join(f"{i}. {a}" for i, a in enumerate(p["stages"])),
                  markup=False)
        if p.get("watch"):
            w = p["watch"]
            out.print(f"  starts on every new batch of {'source ' + display(w['source']) if w['source'] else 'every source'}"
                      + (f" with a member matching {display(json.dumps(w['selector']))}" if w["selector"] else ""),
                      markup=False)
        if not p["batches"]:
            out.print(f"  no batch yet (`hoard pipeline advance {p['name']} BATCH`)", markup=False)
        for b in p["batches"]:
            last = "none" if b["last_done"] is None else f"{b['done_position']}. {b['last_done']}"
            out.print(f"  {display(b['batch'])}: done {last}; {display(_next_line(b))}", markup=False)


@app.command("advance")
def advance(ctx: typer.Context, name: Name,
            batch: Annotated[str, typer.Argument(metavar="BATCH", help="the batch (its members are the inputs)")],
            here: Annotated[bool, typer.Option("--here", help="run the stages in this process (no worker), to the "
                                                              "end or to a gate")] = False,
            wait: Annotated[bool, typer.Option("--wait", help="queue each stage's run and wait for it")] = False,
            retry: Annotated[bool, typer.Option("--retry", help="resume a stage's failed or cancelled run")] = False,
            as_json: AsJson = False) -> None:
    """Move a batch along a pipeline: every stage whose run is done is recorded done, then the
    next stage's run is submitted (queued for `hoard worker`, or --here, or --wait). The same
    command again is harmless."""
    if here and wait:
        raise HoardError("--here runs the stages in this process; --wait waits for a worker: give one",
                         ExitCode.USAGE)
    try:
        st = pipelines.advance(state(ctx).settings, name, batch, mode="here" if here else "wait" if wait else "queue",
                               retry=retry)
    except pipelines.PipelineError as e:
        if as_json and e.doc is not None:
            out.print(json.dumps(e.doc | {"error": e.message}, ensure_ascii=False), markup=False)
        raise
    doc = st.doc()
    if as_json:
        out.print(json.dumps(doc, ensure_ascii=False), markup=False)
        return
    last = "none" if doc["last_done"] is None else f"{doc['done_position']}. {doc['last_done']}"
    out.print(f"pipeline {name}, batch {display(batch)}: done {last}; {display(_next_line(doc))}", markup=False)
    if doc["next"] is not None and doc["next"]["status"] in ("queued", "running") and not (here or wait):
        out.print("  `hoard worker` runs it; `hoard pipeline advance` again records it once done", markup=False)


@app.command("watch")
def watch(ctx: typer.Context, name: Name,
          source: Annotated[str | None, typer.Option("--source", help="start on each new batch of this source "
                                                                     "(default: of every source)")] = None,
          selector: Annotated[Path | None, typer.Option("--selector", help="a selector JSON file: only batches "
                                                                          "with a member it matches")] = None,
          off: Annotated[bool, typer.Option("--off", help="stop watching")] = False,
          as_json: AsJson = False) -> None:
    """Start the pipeline on every batch ingested from now on from SOURCE (and matching the
    selector): its stages run one after the other on a `hoard worker`, without `hoard pipeline
    advance`, to the end or to a gate. --off stops it; no option shows the binding."""
    # deferred: the selector file reader lives with the output commands, loaded only here
    from hoardfs.cli.outputs import _json_file

    cfg = state(ctx).settings
    if off:
        if source is not None or selector is not None:
            raise HoardError("--off takes no --source or --selector: it stops the watch", ExitCode.USAGE)
        was = pipelines.unwatch(cfg, name)
        out.print(f"pipeline {name}: " + ("watches no source now" if was else "watched no source"), markup=False)
        return
    if source is not None or selector is not None:
        pipelines.watch(cfg, name, source=source,
                        selector=_json_file(selector, "selector") if selector is not None else None)
    doc = pipelines.watch_doc(cfg, name)
    if as_json:
        out.print(json.dumps({"pipeline": name, "watch": doc}, ensure_ascii=False), markup=False)
        return
    if doc is None:
        out.print(f"pipeline {name}: watches no source (`hoard pipeline watch {name} --source SOURCE`)", markup=False)
        return
    out.print(f"pipeline {name}: starts on every new batch of "
              + (f"source {display(doc['source'])}" if doc["source"] else "every source")
              + (f" with a member matching {display(json.dumps(doc['selector']))}" if doc["selector"] else "")
              + f" (since {doc['since']}); `hoard worker` runs its stages", markup=False)
