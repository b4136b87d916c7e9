"""`hoard index rebuild`: the LMDB index from the disks alone."""

from __future__ import annotations

import typer

from fsd.cli._common import err, out, state

app = typer.Typer(help="The LMDB index: rebuild it from the shards on the disks.", no_args_is_help=True)


@app.command()
def rebuild(ctx: typer.Context) -> None:
    """Reconstruct objects, shards and replica locations from the disks (store must be idle)."""
    from fsd.reindex import rebuild_index

    rep = rebuild_index(state(ctx).settings)
    out.print(f"index rebuilt in {rep.seconds:.1f} s from {rep.disks} disks: {rep.objects} objects in "
              f"{rep.shards} shards ({rep.replicas} replicas, {rep.open_shards} open)")
    for s in rep.skipped_disks:
        err.print(f"[yellow]skipped disk[/] {s}")
    for d in rep.damaged:
        err.print(f"[yellow]unusable replica[/] {d} (`hoard verify --repair` restores it from another copy)")
