"""`hoard action list|show|validate`: the ActionContract files of UA_2 (docs/actions.md).

Read-only: these commands read the actions directory (`actions.dir`, default `actions/`
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

app = typer.Typer(help="ActionContracts (UA_2): `hoard action list`, `show NAME`, `validate FILE` "
                       "(docs/actions.md).", no_args_is_help=True)

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
