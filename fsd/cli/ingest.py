"""`hoard ingest`: UA_1 — a scraped batch in zone 3A into the store, the database and a 3B package."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsd.cli._common import err, out, state
from fsd.errors import ExitCode, HoardError


def ingest(
    ctx: typer.Context,
    batch_dirs: Annotated[Optional[list[Path]], typer.Argument(help="batch directories in zone 3A")] = None,
    source: Annotated[Optional[str], typer.Option(help="the batch's source (default: the word in its _READY file)")] = None,
    ready: Annotated[bool, typer.Option("--ready", help="take every 3A batch with a _READY signal")] = False,
    wait: Annotated[bool, typer.Option(help="wait until each batch is done and print its report")] = False,
    here: Annotated[bool, typer.Option("--here", help="run the queued jobs in this process (no worker needed)")] = False,
    status: Annotated[Optional[str], typer.Option("--status", metavar="BATCH", help="show a batch's state and report")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="BATCH", help="re-queue a failed batch at the step that failed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="reports as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 3600,
) -> None:
    """Ingest scraped batches: scan → store → database → 3B package → remove from 3A.

    Runs as RQ jobs on the ingest/io/sql/maintenance queues (`hoard worker`, or --here).
    Bad files go to 3A/_quarantine/<batch>/ with _REASONS.txt; the batch then ends
    "done with rejects" (exit 5 with --wait/--here).
    """
    from jobs import ingest as ua1

    cfg = state(ctx).settings
    if status:
        st = ua1.load_state(cfg, status)
        if st is None:
            raise HoardError(f"no ingest record of batch {status!r}; `ls {cfg.ssd.zone_path('3A')}` shows "
                             "what waits to be ingested", ExitCode.USAGE)
        _show(st, as_json)
        if st.status == ua1.Status.FAILED.value:
            raise typer.Exit(ExitCode.DATA)
        return
    zone3a = cfg.ssd.zone_path("3A")
    dirs = list(batch_dirs or [])
    if resume:
        dirs.append(zone3a / resume)
    if ready:
        dirs += ua1.ready_batches(cfg)
    if not dirs:
        if ready:
            out.print(f"no batch with a {ua1.SIGNAL} signal waits in {zone3a}")
            return
        raise HoardError("name batch directories of zone 3A, or --ready, --status BATCH, --resume BATCH",
                         ExitCode.USAGE)
    submitted = [ua1.submit(cfg, d, source) for d in dirs]
    for st in submitted:
        out.print(f"{st.batch_id}: {st.status}" + ("" if st.finished else f" (next step: {st.step})"))
    if here:
        ua1.work_here(cfg)
    elif wait and not _has_worker(cfg):
        err.print("[yellow]no worker serves the ingest queue; start `hoard worker` (systemd: hoard-worker@ingest) "
                  "or use --here[/]")
    if not (wait or here):
        return
    final = [_wait(cfg, st.batch_id, timeout) for st in submitted]
    for st in final:
        _show(st, as_json)
    if any(st.status != ua1.Status.DONE.value for st in final):
        raise typer.Exit(ExitCode.DATA)


def _has_worker(cfg) -> bool:
    from rq import Worker

    from jobs.queues import connect

    return any("ingest" in w.queue_names() for w in Worker.all(connection=connect(cfg.redis_url)))


def _wait(cfg, batch_id: str, timeout: float):
    from jobs import ingest as ua1

    deadline = time.monotonic() + timeout
    while True:
        st = ua1.load_state(cfg, batch_id)
        assert st is not None
        if st.finished or st.status == ua1.Status.FAILED.value:
            return st
        if time.monotonic() > deadline:
            raise HoardError(f"batch {batch_id} is still at step {st.step} after {timeout:.0f} s; "
                             f"`hoard ingest --status {batch_id}` shows progress", ExitCode.UNAVAILABLE)
        time.sleep(0.2)


def _show(st, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        out.print(json.dumps(asdict(st), indent=1, default=str))
        return
    r = st.report
    color = {"done": "green", "done with rejects": "yellow", "failed": "red"}.get(st.status, "cyan")
    out.print(f"[bold]{st.batch_id}[/] ({st.source}): [{color}]{st.status}[/]"
              + (f" at step {st.step}" if not st.finished else ""))
    if st.error:
        out.print(f"  error: {st.error}")
        out.print(f"  next:  fix the cause, then `hoard ingest --resume {st.batch_id}`")
    if "files_accepted" in r:
        out.print(f"  files: {r['files_accepted']} accepted, {len(r.get('rejected', []))} rejected; "
                  f"{r.get('records', 0)} metadata records")
    if "stored_new" in r:
        out.print(f"  store: {r['stored_new']} new, {r['stored_existing']} already present "
                  f"({r['bytes_new'] / 1e6:.1f} MB new of {r['bytes_total'] / 1e6:.1f} MB)")
    if "metadata_rows" in r:
        db = r.get("database", {})
        out.print(f"  database: {r['nodes']} nodes ({db.get('nodes_new', 0)} new), {r['metadata_rows']} metadata "
                  f"rows, {r['edges']} edges, {r['virtual_assets']} virtual assets"
                  + (f"; schema proposal {r['schema_proposal']} (`hoard db proposals`)" if r.get("schema_proposal") else ""))
    if "package" in r:
        p = r["package"]
        out.print(f"  package: {p['parts']} tar part(s), {p['bytes'] / 1e6:.1f} MB in {p['path']}")
    if st.seconds:
        out.print("  time: " + ", ".join(f"{k} {v:.2f} s" for k, v in st.seconds.items()))
    for rej in r.get("rejected", [])[:20]:
        out.print(f"  [yellow]rejected[/] {rej['path'] or '-'}: {rej['reason']}")
    if len(r.get("rejected", [])) > 20:
        out.print(f"  … {len(r['rejected']) - 20} more in {r.get('quarantine')}/_REASONS.txt")
