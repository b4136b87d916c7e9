"""`hoard verify`: scrub and repair."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from fsd.cli._common import err, out, progress
from fsd.errors import ExitCode


def verify(
    ctx: typer.Context,
    sample: Annotated[float, typer.Option("--sample", min=0.01, max=100, help="percent of shards to check")] = 100,
    disk: Annotated[Optional[str], typer.Option("--disk", help="only replicas on this disk")] = None,
    sha256: Annotated[bool, typer.Option("--sha256", help="also recompute every payload's sha256")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="replace bad replicas with good copies")] = False,
    budget_s: Annotated[Optional[float], typer.Option(help="stop after this many seconds")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="only the shards holding this ingested batch")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
) -> None:
    """Check replicas (xxh3-128, footers; --sha256 too), oldest-verified first.

    Exit 5 if a bad replica remains (not repaired, or no good copy to repair from).
    """
    from fsd.cli.store import open_store
    from fsd.scrub import verify as run

    with open_store(ctx) as store, progress("verifying") as update:
        rep = run(store, sample, disk, sha256, repair, budget_s, batch=batch, progress=update)
    if as_json:
        from dataclasses import asdict

        out.print(json.dumps(asdict(rep)), markup=False)
    else:
        out.print(f"verified {rep.replicas} replicas of {rep.shards} shards ({rep.bytes / 1e6:.1f} MB) in "
                  f"{rep.seconds:.1f} s: {len(rep.bad)} bad, {len(rep.repaired)} repaired")
        for b in rep.bad:
            err.print(f"bad {b}", markup=False)
    if rep.unrepaired:
        if not repair:
            err.print("run `hoard verify --repair` to replace bad replicas from good ones")
        raise typer.Exit(ExitCode.DATA)
