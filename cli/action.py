"""`hoard action list|show|validate`: the ActionContract files of UA_2 (docs/actions.md);
`hoard action run|resume|status|runs|release|cancel`: runs of them (hoardfs.jobs.actions.api).

list, show and validate only read the actions directory (`actions.dir`, default `actions/`
beside hoard.toml) and the built-in contracts (jobs/actions/builtin; a file of the directory
shadows the built-in of its id) and check contracts; none opens the database or queues anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, first_line
from hoardfs.base.paths import display
from hoardfs.cli._common import err, out, state
from hoardfs.jobs.actions.contract import TYPES, ContractError, find_any, list_all, load_file, show_rows, summary

app = typer.Typer(help="ActionContracts (UA_2): `hoard action list`, `show NAME`, `validate FILE`, `run NAME`, "
                       "`resume RUN`, `status RUN`, `runs`, `release RUN`, `collect RUN`, `cancel RUN` (docs/actions.md).",
                  no_args_is_help=True)

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
    for key, value in show_rows(c, path, builtin):
        out.print(f"{key:<13}{display(value)}", markup=False)
    label_config = getattr(c.run_spec, "label_config", None)  # AC5: the labelling interface, as Label Studio gets it
    if label_config:
        out.print("label_config (Label Studio's labelling interface):", markup=False)
        for line in label_config.strip("\n").splitlines():
            out.print(f"  {display(line)}", markup=False)


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
        remote: Annotated[bool, typer.Option("--remote", help="stage, run and parse on a worker of another host "
                                             "(queue `remote`) reading the inputs from the S3 disks; the children "
                                             "come back through the bucket and are stored here")] = False,
        rerun: Annotated[bool, typer.Option("--rerun", help="run the worker on every input, also those this "
                                            "action (version, parameters) ran on before")] = False,
        as_json: AsJson = False) -> None:
    """Run an action on its inputs: queued for `hoard worker` (or --here, or --wait; --remote: its
    worker on another host, docs/scale-out.md). An AC2–AC4 run stages and runs only the inputs
    its action, version and parameters have not run on ("N reused, M new"; --rerun: all). The
    same command again: done → "done already" (nothing changes); failed or interrupted → resumed."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.base.errors import HoardError
    from hoardfs.cli._common import read_sha_list
    from hoardfs.cli.outputs import _json_file
    from hoardfs.jobs.actions import api
    from hoardfs.jobs.queues import redis_required

    if selector is not None and nodes is not None:
        raise HoardError("give --selector FILE (narrows the contract's input_selector) or --nodes FILE (replaces "
                         "it), not both", ExitCode.USAGE)
    if here and wait:
        raise HoardError("--here runs the steps in this process; --wait waits for a worker: give one", ExitCode.USAGE)
    if here and remote:
        raise HoardError("--here runs the steps in this process; --remote on another host: give one", ExitCode.USAGE)
    cfg = state(ctx).settings
    try:
        sel = _json_file(selector, "selector") if selector is not None else None
        listed = read_sha_list(nodes, "node list") if nodes is not None else None
    except ContractError as e:
        _refuse(e)
        return
    try:
        if here:
            sub = api.submit(cfg, name, selector=sel, nodes=listed, given=param or [], queue=False, rerun=rerun)
        else:
            assert cfg.redis_url
            with redis_required(cfg.redis_url):
                sub = api.submit(cfg, name, selector=sel, nodes=listed, given=param or [], remote=remote,
                                 rerun=rerun)
    except ContractError as e:
        _refuse(e)
        return
    _go(cfg, sub, here=here, wait=wait, as_json=as_json)


@app.command("resume")
def resume(ctx: typer.Context, run_id: RunId,
           here: Annotated[bool, typer.Option("--here", help="run every step in this process (no worker)")] = False,
           wait: Annotated[bool, typer.Option("--wait", help="queue it, then wait until it ends")] = False,
           as_json: AsJson = False) -> None:
    """Resume run RUN with the inputs and parameters it was recorded with (as `run` of the same
    --nodes/--selector/--param would): done → "done already"; running → said so; failed,
    cancelled or interrupted → resumed at its step; queued or waiting whose job Redis lost →
    queued again."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.base.errors import HoardError
    from hoardfs.jobs.actions import api
    from hoardfs.jobs.queues import redis_required

    if here and wait:
        raise HoardError("--here runs the steps in this process; --wait waits for a worker: give one", ExitCode.USAGE)
    cfg = state(ctx).settings
    if here:
        sub = api.resume(cfg, run_id, queue=False)
    else:
        if not cfg.redis_url:
            raise HoardError("no Redis configured (redis.url in hoard.toml) to queue the run on; add --here to run "
                             "it in this process", ExitCode.USAGE)
        with redis_required(cfg.redis_url):
            sub = api.resume(cfg, run_id)
    _go(cfg, sub, here=here, wait=wait, as_json=as_json)


def _go(cfg, sub, *, here: bool, wait: bool, as_json: bool) -> None:
    """What `run` and `resume` do once the run is submitted: say it, run it here, or wait for it."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    import time

    import redis

    from hoardfs.base.errors import HoardError
    from hoardfs.jobs.actions import api, run_here
    from hoardfs.jobs.actions.state import WAITING, load_state, resume_line
    from hoardfs.jobs.queues import connect, redis_required, unserved_queues

    rid = sub.state.run_id
    if sub.how == "done already":
        _run_report(cfg, rid, as_json, f"run {rid}: done already (nothing changed)")
        return
    if sub.how in ("running",) + WAITING and not here and not wait:  # (--wait: waits for it below)
        _run_report(cfg, rid, as_json, f"run {rid}: {sub.how} (`hoard action status {rid}`)", memo=False)
        return
    if sub.how == "requeued" and not wait:
        _run_report(cfg, rid, as_json, f"run {rid}: its job at step {sub.state.step} was lost from Redis; queued "
                                       f"again ({sub.state.status}; `hoard action status {rid}`)", memo=False)
        return
    if here:
        try:
            code = run_here(cfg, rid)
        except KeyboardInterrupt:
            raise HoardError(f"run {rid} interrupted; {resume_line(rid)} resumes it", ExitCode.INTERRUPTED) from None
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
            conn = connect(cfg.redis_url)
            idle = unserved_queues(conn)
            away = "remote" in sub.state.steps and bool(unserved_queues(conn, ("remote",)))
        if idle and not as_json:
            err.print(f"no worker serves the {', '.join(idle)} queue(s): `hoard worker`, or add --here", markup=False)
        if away and not as_json:
            err.print("no worker serves the remote queue: start `hoard worker` on a host whose hoard.toml says "
                      "[worker] remote = true (docs/scale-out.md)", markup=False)
        _run_report(cfg, rid, as_json, f"run {rid}: {sub.how}, queued (`hoard action status {rid}`; `hoard worker` "
                                       "runs it)")
        return
    if "remote" in sub.state.steps and not as_json:  # (--wait would wait in silence for a host that never comes)
        assert cfg.redis_url
        with redis_required(cfg.redis_url):
            if unserved_queues(connect(cfg.redis_url), ("remote",)):
                err.print(f"run {rid}: no worker serves the remote queue yet: start `hoard worker` on a host whose "
                          "hoard.toml says [worker] remote = true (docs/scale-out.md); waiting", markup=False)
    while True:
        st = load_state(cfg, rid)
        assert st is not None
        shown, why = api.describe(cfg, st, check_jobs=False)
        if shown in ("done", "failed", "cancelled"):
            break
        if st.status in ("queued",) + WAITING:
            try:
                lost = api.job_lost(cfg, st, connect(cfg.redis_url), strict=True)
            except redis.RedisError as e:
                raise HoardError(f"run {rid} {st.status} at step {st.step}: Redis at {cfg.redis_url} does not "
                                 f"answer ({first_line(e)}); the run is kept — once Redis is back, {resume_line(rid)} goes on",
                                 ExitCode.UNAVAILABLE) from None
            if lost:
                shown, why = api.describe(cfg, st)
                raise HoardError(f"run {rid} {shown} at step {st.step}: {why}", ExitCode.UNAVAILABLE)
        time.sleep(0.5)
    if shown != "done":
        if as_json:
            out.print(json.dumps(api.status_doc(cfg, st), ensure_ascii=False), markup=False)
        raise HoardError(f"run {rid} {shown} at step {st.step}: {why}", ExitCode(st.exit_code or ExitCode.DATA))
    _run_report(cfg, rid, as_json, f"run {rid}: done")


def _run_report(cfg, rid: str, as_json: bool, line: str, memo: bool = True) -> None:
    """The run's line, then its figures (`memo`: with "N reused, M new" — a run found again
    running, waiting or requeued is said in its one line)."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions import api
    from hoardfs.jobs.actions.state import load_state

    st = load_state(cfg, rid)
    assert st is not None
    if as_json:
        out.print(json.dumps(api.status_doc(cfg, st), ensure_ascii=False), markup=False)
        return
    out.print(line, markup=False)
    _print_figures(st.report, memo=memo)


def _print_figures(report: dict, memo: bool = True) -> None:
    if memo and "inputs_new" in report:
        runs = report.get("reused_from") or {}
        out.print(f"  {report['inputs_reused']} reused, {report['inputs_new']} new"
                  + (f" (reused: the results of run{'s' * (len(runs) > 1)} {', '.join(sorted(runs))})" if runs else "")
                  + ("; every input done already with this version and parameters: no worker started "
                     "(--rerun runs them again)" if not report["inputs_new"] else ""), markup=False)
    for k in ("labels_planned", "black_list_planned", "children", "records", "children_stored"):
        if k in report:
            out.print(f"  {k.replace('_', ' ')}: {report[k]}", markup=False)
    if report.get("database"):
        out.print("  database: " + ", ".join(f"{k} {v}" for k, v in sorted(report["database"].items())), markup=False)
    if report.get("external"):
        out.print(f"  waiting for the external worker: {display(report['external'])}", markup=False)


@app.command("status")
def status(ctx: typer.Context, run_id: RunId, as_json: AsJson = False) -> None:
    """One run: status (a run whose heartbeat stopped is failed), step, steps done, error, figures
    and the command to type next (`--json`: `next`, null while nothing is yours to do)."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions import api

    st = api.retry_events(state(ctx).settings, api._must(state(ctx).settings, run_id))
    doc = api.status_doc(state(ctx).settings, st)
    if as_json:
        out.print(json.dumps(doc, ensure_ascii=False), markup=False)
    else:
        out.print(f"run {doc['run']}: {doc['status']} at step {doc['step']} (done: {', '.join(doc['done']) or '-'}; "
                  f"{doc['inputs']} inputs)", markup=False)
        if doc["error"]:
            out.print(f"  {display(doc['error'])}", markup=False)
        if doc["refused"]:  # why `resume` would refuse it
            out.print(f"  {display(doc['refused'])}", markup=False)
        _print_figures(st.report)
        if doc["next"]:
            out.print(f"  next: {doc['next']}", markup=False)
    if doc["status"] == "failed":
        raise typer.Exit(int(ExitCode.DATA))


@app.command("runs")
def runs_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Every run recorded: id, status, step."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions import api

    docs = api.runs(state(ctx).settings)
    if as_json:
        out.print(json.dumps({"runs": docs}, ensure_ascii=False), markup=False)
        return
    if not docs:
        err.print("no action runs yet (`hoard action run NAME`)", markup=False)
    for d in docs:
        way = (f"  {d['refused']}" if d["refused"] else f"  `hoard action resume {d['run']}`"
               if d["status"] in ("failed", "cancelled") or d["stalled"] else "")
        out.print(f"{d['run']:<48} {d['status']:<16} {d['step']:<7} {d['inputs']} inputs{way}", markup=False)


@app.command("release")
def release(ctx: typer.Context, run_id: RunId) -> None:
    """Open the GPU gate of a run (AC3/AC4): a run waiting in WAIT_GPU_READY moves on. An AC5 run
    waiting for its labellers imports the annotations finished now."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions import api

    st = api.release(state(ctx).settings, run_id)
    what = ("labels released: the annotations finished now are imported" if "labels" in st.steps
            else "gate released")
    out.print(f"run {st.run_id}: {what} ({st.status} at step {st.step})", markup=False)


@app.command("collect")
def collect(ctx: typer.Context, run_id: RunId, as_json: AsJson = False) -> None:
    """Take what a waiting run produced so far, without ending it: an external worker's outputs
    written by now (stored and applied as the run's own), an AC5 run's tasks labelled by now
    (their labels). The run goes on waiting; `release` opens the gate (AC5: ends the wait)."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions.collect import collect as take

    figures = take(state(ctx).settings, run_id)
    if as_json:
        out.print(json.dumps({"run": run_id} | figures, ensure_ascii=False), markup=False)
        return
    new = figures["new"]
    added = ", ".join(f"{k} {v}" for k, v in sorted(new.items()) if v) if new else ""
    out.print(f"run {run_id}: collected {figures['children']} children, {figures['labels']} labels, "
              f"{figures['results']} result rows so far" + (f" (new in the database: {added})" if added else
                                                          " (nothing new since the last collect)")
              + "; the run goes on waiting", markup=False)


@app.command("cancel")
def cancel(ctx: typer.Context, run_id: RunId) -> None:
    """Cancel a run: a running worker is stopped, 3C cleaned, nothing applied."""
    # deferred: hoardfs.jobs.actions and what it loads (rq, redis, psycopg) only in the commands that run; list, show and validate stay light
    from hoardfs.jobs.actions import api

    before = api._must(state(ctx).settings, run_id)
    st = api.cancel(state(ctx).settings, run_id)
    if before.status == "done":  # an AC5 run released with tasks unlabelled (api.cancel refuses another)
        lsr = st.report.get("label_studio") or {}
        out.print(f"run {st.run_id}: done, its labels stand; {lsr.get('withdrawn', 0)} unlabelled task(s) removed "
                  f"from Label Studio project {lsr.get('project')}"
                  + (f", {lsr['kept']} kept: another run waits for them" if lsr.get("kept") else
                     "; its staged files deleted"), markup=False)
        return
    if before.status == "failed" and st.status == "cancelled":
        out.print(f"run {st.run_id}: cancelled; it had failed at step {st.step} and that ending stands (no second "
                  "event); its 3C output and pin were dropped", markup=False)
        return
    out.print(f"run {st.run_id}: " + ("cancelled" if st.status == "cancelled" else
                                      f"cancel asked; step {st.step} stops at its next check"), markup=False)
