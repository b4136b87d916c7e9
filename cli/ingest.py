"""`hoard ingest`: UA_1 — a scraped batch in zone 3A into the store, the database and a 3B package."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hoardfs.adapters import canonical_source
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import err, out, print_figures, progress, state
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs.queues import connect, redis_required
from hoardfs.jobs.reports import duration


def ingest(
    ctx: typer.Context,
    batch_dirs: Annotated[list[Path] | None, typer.Argument(help="batch directories in zone 3A")] = None,
    source: Annotated[str | None, typer.Option(help="the batch's source (default: the word in its _READY file)")] = None,
    ready: Annotated[bool, typer.Option("--ready", help="take every 3A batch with a _READY signal")] = False,
    wait: Annotated[bool, typer.Option(help="wait until each batch is done and print its report")] = False,
    here: Annotated[bool, typer.Option("--here", help="run the batches' steps in this process (no worker, no Redis)")] = False,
    status: Annotated[str | None, typer.Option("--status", metavar="BATCH", help="show a batch's state and report")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="BATCH", help="re-queue a batch at its step (after a failure, Ctrl-C or a lost job)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="reports as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 3600,
) -> None:
    """Ingest scraped batches: scan → store → database → 3B package → remove from 3A.

    Runs as RQ jobs on the ingest/io/sql/maintenance queues (`hoard worker`), or with --here
    step by step in this process, without Redis (a step that fails names why; --resume goes on).
    Bad files go to `3A/_quarantine/<batch>/` with _REASONS.txt; the batch then ends
    "done with rejects" (exit 5 with --wait/--here). A batch that cannot be taken (a bad
    _READY, an id ingested before) is named on stderr and the others go on (exit 5).
    """

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
    if source is not None:
        source = canonical_source(source, cfg.sources)  # a bad --source stops everything, before anything queues
    zone3a = cfg.ssd.zone_path("3A")
    dirs = list(batch_dirs or [])
    if resume:
        dirs.append(zone3a / resume)
    if ready:
        dirs += ua1.ready_batches(cfg)
    if not dirs:
        if ready:
            if as_json:
                out.print(json.dumps({"submitted": []}), markup=False)
            else:
                out.print(f"no batch with a {ua1.SIGNAL} signal waits in {zone3a}")
            return
        raise HoardError("name batch directories of zone 3A, or --ready, --status BATCH, --resume BATCH",
                         ExitCode.USAGE)
    assert cfg.redis_url
    with redis_required(cfg.redis_url):  # --here does not use Redis
        try:
            code = _ingest(cfg, dirs, source, wait=wait, here=here, as_json=as_json, timeout=timeout)
        except KeyboardInterrupt:
            # stopping now: another Ctrl-C while the message is written would kill the process
            # by SIGINT instead of the documented exit 130
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise _interrupted(cfg, [Path(d).name for d in dirs], here) from None
    if code:
        raise typer.Exit(code)


def _near_dups_here(cfg, batch_id: str) -> None:
    """`ingest.near_dup_at_ingest` under --here: the batch's near-dup-hash run, run here too (as
    the worker's finish step queues it). Its failure is said, not the batch's: it is ingested."""
    # deferred: hoardfs.jobs.actions and what it loads only when the key asks for it
    from hoardfs.jobs.actions import api, run_here

    try:
        sub = api.near_dups_of(cfg, batch_id, queue=False)
        code = run_here(cfg, sub.state.run_id) if sub is not None and sub.how != "done already" else ExitCode.OK
    except HoardError as e:
        code, why = e.exit_code, e.message
    else:
        why = f"`hoard action status {sub.state.run_id}` says why" if sub is not None else ""
    if code != ExitCode.OK:
        err.print(f"[yellow]hoard: {escape(batch_id)}: ingested, but its near-dup-hash run did not end (exit "
                  f"{int(code)}): {escape(why)}[/]")


def _ingest(cfg, dirs: list[Path], source: str | None, *, wait: bool, here: bool, as_json: bool,
            timeout: float) -> int:
    """Submit each batch on its own, run or wait for them; the exit code (0 when all is done)."""

    submitted: list[ua1.BatchState] = []
    codes: list[int] = []
    for d in dirs:
        try:
            submitted.append(ua1.submit(cfg, d, source, queue=not here))
        except HoardError as e:  # this batch's problem: name it, go on with the others
            message = e.message
            if isinstance(e, ua1.SignalRefused) and (Path(d) / ua1.SIGNAL).exists():
                try:
                    message += "; " + ua1.set_signal_aside(Path(d), e.message)
                except OSError as why:  # (a link on the way not followed, a full SSD: the batch's line says it)
                    message += f"; its signal could not be set aside ({why.strerror})"
            err.print(f"[bold red]hoard: {escape(Path(d).name)}:[/] {escape(message)}")
            codes.append(e.exit_code)
    for st in submitted:  # with --json, the reports printed at the end are the output
        if not as_json:
            out.print(f"{st.batch_id}: {st.status}" + ("" if st.finished else f" (next step: {st.step})"))
    pending = [st.batch_id for st in submitted if not st.finished]
    failed: dict[str, int] = {}  # --here: a batch whose step failed → the exit code of why
    if here:
        for batch_id in pending:  # one after the other; a failed batch does not stop the others
            if code := ua1.run_here(cfg, batch_id):
                failed[batch_id] = code
            elif cfg.ingest.near_dup_at_ingest:
                _near_dups_here(cfg, batch_id)
    elif pending and (idle := ua1.unserved_queues(connect(cfg.redis_url))):
        advice = (f"no worker serves the {', '.join(idle)} queue(s), so {', '.join(pending)} wait(s) in Redis: "
                  "start one with `hoard worker` (systemd: hoard-worker@…), or run the jobs here with "
                  f"`hoard ingest --resume {pending[0]} --here`")
        if wait:
            raise HoardError(advice, ExitCode.UNAVAILABLE)
        err.print(f"[yellow]{escape(advice)}[/]")
    if as_json and not (wait or here):
        for st in submitted:
            _show(st, True)
    if wait or here:
        final = [_state(cfg, st.batch_id) if here else _wait(cfg, st.batch_id, timeout) for st in submitted]
        for fin in final:
            _show(fin, as_json, here)
            if fin.status != ua1.Status.DONE.value:
                codes.append(failed.get(fin.batch_id, ExitCode.DATA))
    return max(codes, default=ExitCode.OK)


def _interrupted(cfg, batch_ids: list[str], here: bool) -> HoardError:
    """Ctrl-C: say where each unfinished batch stands and how it goes on (exit 130)."""

    left = [st for st in (ua1.load_state(cfg, b) for b in batch_ids) if st is not None and not st.finished]
    if here:
        how = "; ".join(f"{st.batch_id} stopped at step {st.step}: `hoard ingest --resume {st.batch_id} --here` "
                        "continues it" for st in left)
    else:
        how = "; ".join(f"{st.batch_id} ({st.status} at step {st.step}) "
                        + ("" if st.status == ua1.Status.FAILED.value else "goes on in the worker: ")
                        + f"`hoard ingest --status {st.batch_id}`" for st in left)
    return HoardError("interrupted" + (f": {how}" if how else ""), ExitCode.INTERRUPTED)


def _state(cfg, batch_id: str):
    """The state of a batch this command submitted (written before it returned): a state file
    removed by hand while the command ran is one line, not a traceback."""
    st = ua1.load_state(cfg, batch_id)
    if st is None:
        raise HoardError(f"batch {batch_id}: its state file {ua1.state_dir(cfg) / (batch_id + '.json')} was removed "
                         f"while this command ran; `hoard ls` lists the batches the store holds", ExitCode.DATA)
    return st


def _wait(cfg, batch_id: str, timeout: float):

    deadline = time.monotonic() + timeout
    with progress(f"ingest {batch_id}", len(ua1.STEPS), unit="steps") as update:
        while True:
            st = _state(cfg, batch_id)
            update(len(st.done))
            if st.finished or st.status == ua1.Status.FAILED.value:
                return st
            if time.monotonic() > deadline:
                raise HoardError(f"batch {batch_id} is still at step {st.step} after {timeout:.0f} s; "
                                 f"`hoard ingest --status {batch_id}` shows progress", ExitCode.UNAVAILABLE)
            time.sleep(0.2)


def _show(st, as_json: bool, here: bool = False) -> None:
    if as_json:
        out.print(json.dumps(asdict(st), default=str), markup=False)  # one line per batch
        return

    r = st.report
    color = {"done": "green", "done with rejects": "yellow", "failed": "red"}.get(st.status, "cyan")
    out.print(f"[bold]{escape(st.batch_id)}[/] ({escape(st.source)}): [{color}]{st.status}[/]"
              + (f" at step {st.step}" if not st.finished else ""))
    if st.deleted:
        out.print(f"  deleted: {st.deleted} (`hoard delete --batch`); what follows is its ingest's history")
    if st.error:
        out.print(f"  error: {st.error}", markup=False)
        out.print(f"  next:  fix the cause, then `hoard ingest --resume {st.batch_id}" + (" --here`" if here else "`"),
                  markup=False)
    print_figures(r, sum(st.seconds.values()) if st.seconds else None)
    if st.seconds:
        out.print("  steps: " + ", ".join(f"{k} {duration(v)}" for k, v in st.seconds.items()), markup=False)
    if "rejected" in r:
        out.print(f"  rejected files: {len(r['rejected'])}")
    for rej in r.get("rejected", [])[:20]:
        out.print(f"  rejected {rej['path'] or '-'}: {rej['reason']}", markup=False)
    if len(r.get("rejected", [])) > 20:
        where = f"{r['quarantine']}/_REASONS.txt" if r.get("quarantine") else "`--json`"
        out.print(f"  … {len(r['rejected']) - 20} more in {where}", markup=False)
