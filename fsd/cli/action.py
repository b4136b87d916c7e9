"""`hoard action list|show|validate`: the ActionContract files of UA_2 (docs/actions.md);
`hoard action run|status|runs|release|cancel`: runs of them (jobs.actions.api).

list, show and validate only read the actions directory (`actions.dir`, default `actions/`
beside hoard.toml) and the built-in contracts (jobs/actions/builtin; a file of the directory
shadows the built-in of its id) and check contracts; none opens the database or queues anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fsd.base.errors import ExitCode
from fsd.base.paths import display
from fsd.cli._common import err, out, state
from jobs.actions.contract import (
    TYPES,
    Contract,
    ContractError,
    RunDocker,
    RunExternal,
    RunKubectl,
    RunLabelStudio,
    RunLocal,
    find_any,
    list_all,
    load_file,
    summary,
)

app = typer.Typer(help="ActionContracts (UA_2): `hoard action list`, `show NAME`, `validate FILE`, `run NAME`, "
                       "`status RUN`, `runs`, `release RUN`, `cancel RUN` (docs/actions.md).", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout, nothing else")]


def _refuse(e: ContractError) -> None:
    """Every problem, one line each, then exit 2."""
    for line in e.lines:
        err.print(f"hoard: error: {line}", markup=False)
    raise typer.Exit(int(ExitCode.USAGE))


@app.command("list")
def list_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The contracts of the actions directory, then the built-ins no file there shadows: id,
    type, version, file (`builtin` for a built-in). A file that is not a valid contract is
    listed with its first problem (`hoard action validate FILE` gives all)."""
    directory = state(ctx).settings.actions_dir
    entries = list_all(directory)
    if as_json:
        docs = [{"file": str(e.path), "source": "builtin" if e.builtin else str(e.path)}
                | (summary(e.contract) if e.contract is not None else {"error": e.error, "problems": e.problems})
                for e in entries]
        out.print(json.dumps({"dir": str(directory), "actions": docs}, ensure_ascii=False), markup=False)
        return
    if not any(not e.builtin for e in entries):
        err.print(f"no action contracts in {display(str(directory))} (actions.dir; docs/actions.md)"
                  + ("; the built-ins:" if entries else ""), markup=False)
    for e in entries:
        if e.contract is not None:
            c = e.contract
            out.print(f"{c.action_id:<28} {c.action_type} {TYPES[c.action_type]:<5} v{c.version:<4} "
                      f"{'builtin' if e.builtin else display(str(e.path))}", markup=False)
        else:
            more = f" (+{e.problems - 1} more: hoard action validate)" if e.problems > 1 else ""
            out.print(f"{'(invalid)':<28} {display(str(e.path))}: {e.error}{more}", markup=False)


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="the action's id")],
         as_json: AsJson = False) -> None:
    """One contract, checked: its keys, or every problem (exit 2)."""
    try:
        path, builtin = find_any(state(ctx).settings.actions_dir, name)
        c = load_file(path)
    except ContractError as e:
        _refuse(e)
        return
    if as_json:
        out.print(json.dumps({"file": str(path), "source": "builtin" if builtin else str(path),
                              "contract": c.model_dump(mode="json")}, ensure_ascii=False), markup=False)
        return
    for key, value in _describe(c, path, builtin):
        out.print(f"{key:<13}{display(value)}", markup=False)


@app.command("validate")
def validate(file: Annotated[Path, typer.Argument(metavar="FILE", help="a contract file (.toml)")]) -> None:
    """Check a contract file: exit 0 when valid; exit 2 with one line per problem, each naming
    the file, the key and what to fix."""
    try:
        c = load_file(file)
    except ContractError as e:
        _refuse(e)
        return
    out.print(f"{display(str(file))}: valid: action {c.action_id} ({c.action_type}, version {c.version})",
              markup=False)


def _describe(c: Contract, path: Path, builtin: bool = False) -> list[tuple[str, str]]:
    rows = [("action_id", c.action_id), ("action_type", f"{c.action_type} ({TYPES[c.action_type]})"),
            ("version", str(c.version)), ("file", f"builtin ({path})" if builtin else str(path))]
    if c.description:
        rows.append(("description", c.description))
    rows.append(("selector", json.dumps(c.input_selector.model_dump(mode="json", exclude_defaults=True),
                                        ensure_ascii=False)))
    for r in c.rules:
        effect = "black-list" if r.black_list else f"label {r.label.key}={r.label.value}" if r.label else "?"
        rows.append(("rule", f"{effect} where {json.dumps(r.where.model_dump(mode='json', exclude_defaults=True))}"))
    if c.stage_layout is not None:
        s = c.stage_layout
        extra = [k for k in ("sidecars", "include_parents", "include_children") if getattr(s, k)]
        rows.append(("stage", (f"layout {s.layout}" if s.layout else f"template {s.template}")
                     + (f" (+ {', '.join(extra)})" if extra else "")))
    rs = c.run_spec
    if isinstance(rs, RunLocal):
        rows.append(("run", f"local: {' '.join(rs.command)}"))
    elif isinstance(rs, RunDocker):
        rows.append(("run", f"docker: {rs.image} {' '.join(rs.args)}" + (" (gpus)" if rs.gpus else "")))
    elif isinstance(rs, RunKubectl):
        rows.append(("run", f"kubectl: a Job template of {len(rs.template.splitlines())} lines"
                     + (f" in namespace {rs.namespace}" if rs.namespace else "")))
    elif isinstance(rs, RunExternal):
        rows.append(("run", f"external: waits for {rs.done_marker} up to {rs.timeout_s} s"))
    elif isinstance(rs, RunLabelStudio):
        rows.append(("run", f"label_studio: {rs.project_title or c.action_id}, {rs.tasks_per_import} tasks per import"))
    if isinstance(rs, (RunLocal, RunDocker, RunKubectl)):
        rows.append(("run_as", rs.run_as or "(the job's user)"))
    if rs is not None:
        rows.append(("timeout", f"{rs.timeout_s} s, {c.retries} retr{'y' if c.retries == 1 else 'ies'}"))
    for name, p in c.params.items():
        lo, hi = ("" if v is None else f"{v:g}" for v in (p.min, p.max))
        bounds = f" ({lo}..{hi})" if lo or hi else ""
        choices = f" one of {', '.join(p.choices)}" if p.choices else ""
        default = "required" if p.default is None else f"= {p.default!r}"
        rows.append(("param", f"{name}: {p.type}{choices} {default}{bounds}"))
    if c.gate is not None:
        rows.append(("gate", (f"hook {' '.join(c.gate.hook)} every {c.gate.poll_s} s" if c.gate.hook else
                              "released by hand") + f", timeout {c.gate.timeout_s} s"))
    if c.output_parser is not None:
        for ch in c.output_parser.children:
            parent = "another child (output_path)" if ch.parent_key == "output_path" else f"the input ({ch.parent_key})"
            rows.append(("children", f"{ch.glob} → child of {parent}, {ch.relationship}"))
        for res in c.output_parser.results:
            m = c.result_mapping[res.name]
            rows.append(("results", f"{res.name}: {res.glob} ({res.format}) → {m.into}"))
    if c.a4_scale is not None:
        rows.append(("a4_scale", str(c.a4_scale)))
    return rows


# -- runs -------------------------------------------------------------------------------------

RunId = Annotated[str, typer.Argument(metavar="RUN", help="the run's id, as `hoard action run` printed it")]


@app.command("run")
def run(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="the action's id")],
        selector: Annotated[Path | None, typer.Option(help="a selector JSON file: narrows the contract's "
                                                         "input_selector (a node must match both)")] = None,
        nodes: Annotated[Path | None, typer.Option(help="a file of sha256s, one per line ('-': stdin): these "
                                                      "nodes instead of the contract's input_selector")] = None,
        param: Annotated[list[str] | None, typer.Option("--param", help="NAME=VALUE (a declared parameter)")] = None,
        here: Annotated[bool, typer.Option("--here", help="run every step in this process (no worker)")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="queue it, then wait until it ends")] = False,
        as_json: AsJson = False) -> None:
    """Run an action on its inputs: queued for `hoard worker` (or --here, or --wait). The same
    command again: done → "done already" (nothing changes); failed or interrupted → resumed."""
    import time

    from fsd.base.errors import HoardError
    from fsd.cli._common import read_sha_list
    from fsd.cli.outputs import _json_file
    from jobs.actions import api, run_here
    from jobs.actions.state import WAITING, load_state
    from jobs.queues import redis_required, unserved_queues

    if selector is not None and nodes is not None:
        raise HoardError("give --selector FILE (narrows the contract's input_selector) or --nodes FILE (replaces "
                         "it), not both", ExitCode.USAGE)
    if here and wait:
        raise HoardError("--here runs the steps in this process; --wait waits for a worker: give one", ExitCode.USAGE)
    cfg = state(ctx).settings
    try:
        sel = _json_file(selector, "selector") if selector is not None else None
        listed = read_sha_list(nodes, "node list") if nodes is not None else None
    except ContractError as e:
        _refuse(e)
        return
    try:
        if here:
            sub = api.submit(cfg, name, selector=sel, nodes=listed, given=param or [], queue=False)
        else:
            assert cfg.redis_url
            with redis_required(cfg.redis_url):
                sub = api.submit(cfg, name, selector=sel, nodes=listed, given=param or [])
    except ContractError as e:
        _refuse(e)
        return
    rid = sub.state.run_id
    if sub.how == "done already":
        _run_report(cfg, rid, as_json, f"run {rid}: done already (nothing changed)")
        return
    if sub.how in ("running",) + WAITING and not here:
        _run_report(cfg, rid, as_json, f"run {rid}: {sub.how} (`hoard action status {rid}`)")
        return
    if here:
        try:
            code = run_here(cfg, rid)
        except KeyboardInterrupt:
            raise HoardError(f"run {rid} interrupted; the same command resumes it", ExitCode.INTERRUPTED) from None
        st = load_state(cfg, rid)
        if code != ExitCode.OK and st is not None:
            shown, why = api.describe(cfg, st)
            if as_json:
                out.print(json.dumps(api.status_doc(cfg, st), ensure_ascii=False), markup=False)
            raise HoardError(f"run {rid} {shown} at step {st.step}: {why}", code)
        _run_report(cfg, rid, as_json, f"run {rid}: done")
        return
    if not wait:
        assert cfg.redis_url
        with redis_required(cfg.redis_url):
            from jobs.queues import connect

            idle = unserved_queues(connect(cfg.redis_url))
        if idle and not as_json:
            err.print(f"no worker serves the {', '.join(idle)} queue(s): `hoard worker`, or add --here", markup=False)
        _run_report(cfg, rid, as_json, f"run {rid}: {sub.how}, queued (`hoard action status {rid}`; `hoard worker` "
                                       "runs it)")
        return
    while True:
        st = load_state(cfg, rid)
        assert st is not None
        shown, why = api.describe(cfg, st)
        if shown in ("done", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if shown != "done":
        if as_json:
            out.print(json.dumps(api.status_doc(cfg, st), ensure_ascii=False), markup=False)
        raise HoardError(f"run {rid} {shown} at step {st.step}: {why}", ExitCode(st.exit_code or ExitCode.DATA))
    _run_report(cfg, rid, as_json, f"run {rid}: done")


def _run_report(cfg, rid: str, as_json: bool, line: str) -> None:
    from jobs.actions import api
    from jobs.actions.state import load_state

    st = load_state(cfg, rid)
    assert st is not None
    if as_json:
        out.print(json.dumps(api.status_doc(cfg, st), ensure_ascii=False), markup=False)
        return
    out.print(line, markup=False)
    _print_figures(st.report)


def _print_figures(report: dict) -> None:
    for k in ("labels_planned", "black_list_planned", "children", "records", "children_stored"):
        if k in report:
            out.print(f"  {k.replace('_', ' ')}: {report[k]}", markup=False)
    if report.get("database"):
        out.print("  database: " + ", ".join(f"{k} {v}" for k, v in sorted(report["database"].items())), markup=False)
    if report.get("external"):
        out.print(f"  waiting for the external worker: {display(report['external'])}", markup=False)


@app.command("status")
def status(ctx: typer.Context, run_id: RunId, as_json: AsJson = False) -> None:
    """One run: status (a run whose heartbeat stopped is failed), step, steps done, error and figures."""
    from jobs.actions import api

    st = api._must(state(ctx).settings, run_id)
    doc = api.status_doc(state(ctx).settings, st)
    if as_json:
        out.print(json.dumps(doc, ensure_ascii=False), markup=False)
    else:
        out.print(f"run {doc['run']}: {doc['status']} at step {doc['step']} (done: {', '.join(doc['done']) or '-'}; "
                  f"{doc['inputs']} inputs)", markup=False)
        if doc["error"]:
            out.print(f"  {display(doc['error'])}", markup=False)
        _print_figures(st.report)
    if doc["status"] == "failed":
        raise typer.Exit(int(ExitCode.DATA))


@app.command("runs")
def runs_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Every run recorded: id, status, step."""
    from jobs.actions import api

    docs = api.runs(state(ctx).settings)
    if as_json:
        out.print(json.dumps({"runs": docs}, ensure_ascii=False), markup=False)
        return
    if not docs:
        err.print("no action runs yet (`hoard action run NAME`)", markup=False)
    for d in docs:
        out.print(f"{d['run']:<48} {d['status']:<16} {d['step']:<7} {d['inputs']} inputs", markup=False)


@app.command("release")
def release(ctx: typer.Context, run_id: RunId) -> None:
    """Open the GPU gate of a run (AC3/AC4): a run waiting in WAIT_GPU_READY moves on."""
    from jobs.actions import api

    st = api.release(state(ctx).settings, run_id)
    out.print(f"run {st.run_id}: gate released ({st.status} at step {st.step})", markup=False)


@app.command("cancel")
def cancel(ctx: typer.Context, run_id: RunId) -> None:
    """Cancel a run: a running worker is stopped, 3C cleaned, nothing applied."""
    from jobs.actions import api

    st = api.cancel(state(ctx).settings, run_id)
    out.print(f"run {st.run_id}: " + ("cancelled" if st.status == "cancelled" else
                                      f"cancel asked; step {st.step} stops at its next check"), markup=False)
