"""`hoard index rebuild`: the LMDB index from the disks alone."""

from __future__ import annotations

import time

import typer

from fsd.cli._common import err, out, progress, state
from fsd.cli.store import open_store

app = typer.Typer(help="The LMDB index: rebuild it from the shards on the disks.", no_args_is_help=True)


@app.command()
def rebuild(ctx: typer.Context) -> None:
    """Reconstruct objects, shards and replica locations from the disks (store must be idle)."""
    # deferred: hoard starts without the store's modules
    from fsd.reindex import rebuild_index

    with progress("reading the shards") as update:
        rep = rebuild_index(state(ctx).settings, update)
    out.print(f"index rebuilt in {rep.seconds:.1f} s from {rep.disks} disks: {rep.objects} objects in "
              f"{rep.shards} shards ({rep.replicas} replicas, {rep.open_shards} open); deletion marks replayed: "
              f"{rep.hidden} hidden, {rep.deleted} tombstoned, {rep.rooted} kept by `hoard put`")
    for s in rep.skipped_disks:
        err.print(f"[yellow]skipped disk[/] {s}")
    for d in rep.damaged:
        err.print(f"[yellow]unusable replica[/] {d} (`hoard verify --repair` restores it from another copy)")


@app.command()
def backup(ctx: typer.Context, copies: int = typer.Option(2, min=1, help="how many HDDs get a copy")) -> None:
    """Copy the index to HDDs (`<disk>/index-copy/`), so a dead SSD costs no rebuild scan."""
    # deferred: hoard starts without the store's modules
    from fsd.reindex import backup_index

    with open_store(ctx, writable=False) as store:
        labels = backup_index(store, copies)
    out.print(f"index copied to {', '.join(labels)}")


@app.command()
def restore(ctx: typer.Context) -> None:
    """Put the newest index copy from the HDDs in place (then `hoard verify` to be sure)."""
    # deferred: hoard starts without the store's modules
    from fsd.reindex import restore_index

    label, stamp = restore_index(state(ctx).settings)
    out.print(f"index restored from disk {label}: {stamp['objects']} objects, copied "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp['taken_at']))}; "
              "objects stored after that: `hoard index rebuild` finds them in the shards")
