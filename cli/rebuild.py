"""`hoard rebuild`: the replicas of a lost disk, with a progress bar and an ETA."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape

from hoardfs.base.errors import ExitCode
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import confirm, err, finite, out, progress
from hoardfs.cli.store import open_store
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.maintenance.rebuild import rebuild as run


def run_rebuild(ctx: typer.Context, disk: str, onto: str | None, rate_mb_s: float, yes: bool,
                as_json: bool = False) -> None:

    with open_store(ctx) as store:
        rec = next((r for r in store.records.values() if r.label == disk), None)
        # a rebuild marks the disk failed; done by mistake on a healthy disk, only
        # `hoard disks activate` brings it back
        if rec is not None and rec.state == DiskState.ACTIVE and not yes:
            confirm(f"disk {disk} is active and present: rebuilding marks it failed (`hoard disks activate "
                    f"{disk}` undoes that). Continue?")
        with progress(f"rebuilding {disk}") as update:
            rep = run(store, disk, onto, rate_mb_s or None, progress=update)
    if as_json:
        out.print(json.dumps(asdict(rep)), markup=False)
    else:
        out.print(f"rebuilt {rep.shards} shards of disk {disk} in {rep.seconds:.1f} s: {rep.copied} copied "
                  f"({fmt_bytes(rep.bytes)}), {rep.adopted} already there, {len(rep.lost)} without a healthy replica"
                  + (f", {len(rep.not_copied)} not copied" if rep.not_copied else ""))
        for hex_ in rep.lost:
            err.print(f"[red]lost[/] shard {hex_}: no healthy replica; restore it from cold storage (zone 3B packages)")
        for line in rep.not_copied:
            err.print(escape(f"not copied: {line}"), style="red")
    if rep.lost or rep.not_copied:
        raise typer.Exit(ExitCode.DATA)


def rebuild(
    ctx: typer.Context,
    disk: Annotated[str, typer.Option("--disk", help="the lost disk's label")],
    onto: Annotated[str | None, typer.Option("--onto", help="the new disk (default: any disks with room)")] = None,
    rate_mb_s: Annotated[float, typer.Option(min=0, callback=finite, help="copy at most this fast (0 = no limit)")] = 0,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask when the disk is still healthy")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
) -> None:
    """Re-create the replicas a lost disk held, from healthy replicas; resumable after a kill.
    Afterwards `hoard disks forget DISK` and remove its [[disks]] table from hoard.toml."""
    run_rebuild(ctx, disk, onto, rate_mb_s, yes, as_json)
