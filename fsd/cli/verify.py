"""`hoard verify`: scrub and repair."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fsd.cli._common import err, out
from fsd.errors import ExitCode, HoardError


def verify(
    ctx: typer.Context,
    sample: Annotated[float, typer.Option("--sample", min=0.01, max=100, help="check this percent of the shards, least recently verified first")] = 100,
    disk: Annotated[Optional[str], typer.Option("--disk", help="only replicas on this disk")] = None,
    sha256: Annotated[bool, typer.Option("--sha256", help="also recompute every payload's sha256")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="replace bad replicas with good copies")] = False,
    budget_s: Annotated[Optional[float], typer.Option(help="stop after this many seconds")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="only the shards holding this ingested batch")] = None,
) -> None:
    """Check replicas (xxh3-128, footers; --sha256 too), oldest-verified first.

    Exit 5 if a bad replica remains (not repaired, or no good copy to repair from).
    """
    from fsd.cli.store import open_store
    from fsd.scrub import verify as run

    with open_store(ctx) as store:
        rep = run(store, sample, disk, sha256, repair, budget_s, batch=batch)
    scope = (f" on disk {disk}" if disk else "") + (f" holding batch {batch}" if batch else "")
    if rep.in_scope == 0:
        out.print(f"nothing to verify: no sealed shard{scope}")
        return
    if rep.replicas == 0:  # shards exist, yet not one replica could be read: that is not a pass
        raise HoardError(f"{rep.in_scope} sealed shards{scope}, but none has a replica on a readable disk; "
                         "`hoard health` names the failed or missing disks", ExitCode.DATA)
    out.print(f"verified {rep.replicas} replicas of {rep.shards} shards ({rep.bytes / 1e6:.1f} MB) in "
              f"{rep.seconds:.1f} s: {len(rep.bad)} bad, {len(rep.repaired)} repaired")
    for b in rep.bad:
        err.print(f"[red]bad[/] {b}")
    if rep.unrepaired:
        if not repair:
            err.print("run `hoard verify --repair` to replace bad replicas from good ones")
        raise typer.Exit(ExitCode.DATA)
