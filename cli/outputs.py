"""`hoard stage` (selected nodes → zone 3C for a worker) and `hoard export` (→ zone 3D)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, print_figures, progress, read_input, state
from hoardfs.jobs import outputs
from hoardfs.jobs import remote as remote_jobs
from hoardfs.jobs.launch import enqueue_output
from hoardfs.jobs.queues import connect, fetch_job, redis_required, unserved_queues

LAYOUT_HELP = "by_sha256 | by_batch | by_label | flat, or a layout .toml file (docs/layouts.md)"


def stage(
    ctx: typer.Context,
    action_batch: Annotated[str | None, typer.Argument(help="the action batch id: the output is `3C/<id>/`")] = None,
    layout: Annotated[str | None, typer.Option(help=LAYOUT_HELP)] = None,
    selector: Annotated[Path | None, typer.Option(help="a selector JSON file (docs/selectors.md)")] = None,
    nodes: Annotated[Path | None, typer.Option(help="a file of sha256s, one per line ('-': stdin)")] = None,
    mode: Annotated[str, typer.Option(help="copy (files on the SSD) or view (a view in the mount, no copy)")] = "copy",
    here: Annotated[bool, typer.Option("--here", help="run in this process (no worker needed)")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on a worker of another host (queue `remote`): "
                                         "planned here, read there from the S3 disks, made in that host's zone")] = False,
    wait: Annotated[bool, typer.Option(help="wait for the worker to finish and print the report")] = False,
    status: Annotated[str | None, typer.Option("--status", metavar="ID", help="show a stage's state")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 24 * 3600,
) -> None:
    """Stage nodes into zone 3C for a worker: `3C/<id>/<layout>/input/…` and an empty `output/`.

    Planned and checked whole (layout, collisions, room in the zone) before a byte moves;
    copied with the batch read planner; sealed (_SEALED) only when every file checks. The
    same command resumes a failed or killed run; the same id again after success does
    nothing. Runs as an RQ job on the `io` queue (`hoard worker`), or --here."""
    _command(ctx, "stage", action_batch, layout, selector, nodes, "by_node", mode, here, wait, status, as_json,
             timeout, remote)


def export(
    ctx: typer.Context,
    output_id: Annotated[str | None, typer.Argument(metavar="ID", help="the export's id: the output is `3D/<id>/`")] = None,
    layout: Annotated[str | None, typer.Option(help=LAYOUT_HELP)] = None,
    selector: Annotated[Path | None, typer.Option(help="a selector JSON file (docs/selectors.md)")] = None,
    dedup: Annotated[str, typer.Option(help="by_node: as the layout says; by_sha256: each content once")] = "by_node",
    mode: Annotated[str, typer.Option(help="copy (files on the SSD) or view (a view in the mount, no copy)")] = "copy",
    here: Annotated[bool, typer.Option("--here", help="run in this process (no worker needed)")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on a worker of another host (queue `remote`): "
                                         "planned here, read there from the S3 disks, made in that host's zone")] = False,
    wait: Annotated[bool, typer.Option(help="wait for the worker to finish and print the report")] = False,
    status: Annotated[str | None, typer.Option("--status", metavar="ID", help="show an export's state")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 24 * 3600,
) -> None:
    """Export a selection into zone 3D in a layout: `3D/<id>/<layout>/…` (see `hoard stage`)."""
    if dedup not in ("by_node", "by_sha256"):
        raise HoardError(f"--dedup {dedup!r}: by_node or by_sha256", ExitCode.USAGE)
    _command(ctx, "export", output_id, layout, selector, None, dedup, mode, here, wait, status, as_json, timeout,
             remote)


def _command(ctx: typer.Context, kind: str, output_id: str | None, layout: str | None, selector: Path | None,
             nodes: Path | None, dedup: str, mode: str, here: bool, wait: bool, status: str | None,
             as_json: bool, timeout: float, remote: bool = False) -> None:

    cfg = state(ctx).settings
    if status:
        st = outputs.load_state(cfg, status)
        if st is None or st.spec.get("kind") != kind:
            raise HoardError(f"no {kind} {status!r} was requested here", ExitCode.USAGE)
        shown = _show(cfg, st, as_json)
        if shown == "refused":
            raise typer.Exit(st.exit_code or ExitCode.USAGE)
        if shown in ("failed", "interrupted", "gone"):
            raise typer.Exit(ExitCode.DATA)
        return
    if output_id is None or layout is None:
        raise HoardError(f"`hoard {kind} ID --layout L --selector FILE`" + (" (or --nodes FILE)" if kind == "stage"
                         else "") + ", or --status ID", ExitCode.USAGE)
    sel = _json_file(selector, "selector") if selector is not None else None
    listed = _sha_list(nodes) if nodes is not None else None
    spec = outputs.make_spec(kind, output_id, layout, sel, listed, dedup, mode)
    if remote:
        if here:
            raise HoardError("--here or --remote, not both", ExitCode.USAGE)
        _remote(cfg, spec, wait, as_json, timeout)
        return
    st = outputs.submit(cfg, spec)
    if st.status == "done":
        _report(st.report | {"already_done": True}, as_json)
        return
    if here:
        try:
            with progress(f"{kind} {output_id}") as update:
                report = outputs.run(cfg, output_id, update)
        except KeyboardInterrupt:
            if outputs.load_state(cfg, output_id) is None:
                raise HoardError(f"{kind} {output_id} interrupted before it started; nothing was written or reserved",
                                 ExitCode.INTERRUPTED) from None
            raise HoardError(f"{kind} {output_id} interrupted; its files so far are kept: the same command "
                             "resumes it", ExitCode.INTERRUPTED) from None
        _report(report, as_json)
        return
    _enqueue(cfg, kind, output_id)
    if not wait:
        out.print(f"{kind} {output_id}: queued on `{outputs.QUEUE}` (`hoard {kind} --status {output_id}`; "
                  "`hoard worker` runs it, or add --here)")
        return
    deadline = time.monotonic() + timeout
    while True:
        st = outputs.load_state(cfg, output_id)
        if st is None:
            raise HoardError(f"the request of {kind} {output_id} was forgotten meanwhile (`hoard zones clean`)",
                             ExitCode.DATA)
        shown, why = outputs.describe(cfg, st)
        if shown not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            raise HoardError(f"{kind} {output_id} still {shown} after {timeout:.0f} s; "
                             f"`hoard {kind} --status {output_id}`", ExitCode.UNAVAILABLE)
        time.sleep(0.5)
    if shown == "refused":
        raise HoardError(f"{kind} {output_id} refused, nothing written or reserved: {why}",
                         ExitCode(st.exit_code or ExitCode.USAGE))
    if shown != "done":
        raise HoardError(f"{kind} {output_id} {shown}: {why}" + ("; the same command resumes it"
                                                                 if shown == "failed" else ""), ExitCode.DATA)
    _report(st.report, as_json)


def _enqueue(cfg, kind: str, output_id: str) -> None:

    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        enqueue_output(cfg, kind, output_id, conn)
        if outputs.QUEUE in unserved_queues(conn):
            err.print(f"[yellow]no worker serves the {outputs.QUEUE} queue: `hoard worker`, or run it here with "
                      f"`hoard {kind} {escape(output_id)} ... --here`[/]")


def _remote(cfg, spec: outputs.OutputSpec, wait: bool, as_json: bool, timeout: float) -> None:
    """--remote: planned and located here (refused in one line when an object is on no S3 disk),
    queued on `remote`; its state is kept on the host that runs it. --wait follows the RQ job."""
    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        job_id = remote_jobs.enqueue(cfg, spec, conn)
        if remote_jobs.QUEUE in unserved_queues(conn, (remote_jobs.QUEUE,)):
            err.print(f"[yellow]no worker serves the {remote_jobs.QUEUE} queue: start `hoard worker` on a host whose "
                      "hoard.toml says [worker] remote = true (docs/scale-out.md)[/]")
        if not wait:
            out.print(f"{spec.kind} {spec.id}: queued on `{remote_jobs.QUEUE}` as job {job_id} (`hoard {spec.kind} "
                      f"--status {spec.id}` on the host that runs it)")
            return
        deadline = time.monotonic() + timeout
        while (status := fetch_job(job_id, conn).get_status(refresh=True)) not in ("finished", "failed", "stopped",
                                                                                  "canceled"):
            if time.monotonic() > deadline:
                raise HoardError(f"{spec.kind} {spec.id} still {getattr(status, 'value', status)} after {timeout:.0f} s on `{remote_jobs.QUEUE}` "
                                 f"(job {job_id})", ExitCode.UNAVAILABLE)
            time.sleep(0.5)
        job = fetch_job(job_id, conn)
        if status != "finished":
            raise HoardError(f"{spec.kind} {spec.id} {getattr(status, 'value', status)} on a remote worker: "
                             f"{_why(job)} (`hoard {spec.kind} --status {spec.id}` on that host)", _exit_code(job))
        _report(job.return_value() or {}, as_json)


def _why(job) -> str:
    """The line a failed job ended with: its exception's message, without the type's name."""
    last = job.latest_result()
    lines = (last.exc_string or "").strip().splitlines() if last is not None else []
    return re.sub(r"^[\w.]+: ", "", lines[-1]) if lines else "no reason kept"


def _exit_code(job) -> ExitCode:
    """A remote stage/export's exit code: the one its host recorded for it in the job's meta,
    else 5 (the output is not there)."""
    try:
        return ExitCode(int(job.meta.get("exit_code", ExitCode.DATA)))
    except (TypeError, ValueError):
        return ExitCode.DATA


def _json_file(path: Path, what: str) -> dict:
    raw = read_input(path, what)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise HoardError(f"{what} {path}: not JSON ({e})", ExitCode.USAGE) from None
    if not isinstance(doc, dict):
        raise HoardError(f"{what} {path}: a JSON object is expected", ExitCode.USAGE)
    return doc


def _sha_list(path: Path) -> list[str]:
    raw = read_input(path, "node list")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise HoardError(f"node list {path}: not text (one sha256 per line)", ExitCode.USAGE) from None
    shas = [line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not shas:
        raise HoardError(f"node list {path} is empty: nothing to stage", ExitCode.USAGE)
    return shas


def _show(cfg, st, as_json: bool) -> str:
    """Print the state as `outputs.describe` reads it (done only if sealed, running only while
    a process runs it); the status shown."""

    shown, why = outputs.describe(cfg, st)
    if as_json:
        out.print(json.dumps({"id": st.id, "status": shown, "error": why, "report": st.report if shown == "done"
                              else {}, "updated": st.updated}, sort_keys=True), markup=False)
        return shown
    out.print(f"{st.spec['kind']} {st.id}: {shown}" + (f" — {why}" if why else ""), markup=False)
    if st.report and shown == "done":
        print_figures(st.report, st.report.get("seconds"))
    return shown


def _report(report: dict, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(report, sort_keys=True), markup=False)
        return
    if report.get("mode") == "view" and not report.get("already_done"):
        out.print(f"{report['path']}: sealed — {report['files']} files ({fmt_bytes(report['bytes'])}) from "
                  f"{report['nodes']} nodes published as view {report['view']} in {report['seconds']} s, nothing "
                  "copied; read them through the mount (`hoard mount`)", markup=False)
        return
    if report.get("already_done"):
        out.print(f"{report['path']}: already done ({report['files']} files, {fmt_bytes(report['bytes'])}); "
                  "nothing to do", markup=False)
        return
    out.print(f"{report['path']}: sealed — {report['files']} files, {fmt_bytes(report['bytes'])} from "
              f"{report['nodes']} nodes in layout {report['layout']}; copied {report['copied_files']} files at "
              f"{report['mib_s']} MiB/s" + (f", {report['kept_files']} kept from an earlier run"
                                             if report['kept_files'] else "")
              + (f", {report['fallbacks']} read from another replica" if report['fallbacks'] else ""),
              markup=False)
