"""`hoard index`: rebuild the LMDB index from the disks alone, restore it, copy it, migrate it, recount it."""

from __future__ import annotations

import time

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import err, out, progress, state
from hoardfs.cli.store import open_store
from hoardfs.fsd.core import formats, storelock
from hoardfs.fsd.core.held import ManifestNotRead
from hoardfs.fsd.core.layout import remove_index_leftovers
from hoardfs.fsd.core.marks import TABLES
from hoardfs.fsd.maintenance.reindex import backup_index, rebuild_index, restore_index
from hoardfs.fsd.outputs import unreadable
from hoardfs.fsd.store import Store

app = typer.Typer(help="The LMDB index: rebuild it from the shards on the disks.", no_args_is_help=True)


WITHOUT = typer.Option([], "--without", metavar="LABEL",
                       help="leave out this configured disk (not mounted, dead); repeat for more. Without it, a "
                            "disk that cannot be read stops the rebuild with nothing changed")


@app.command()
def rebuild(ctx: typer.Context, without: list[str] = WITHOUT) -> None:
    """Reconstruct objects, shards and replica locations from the disks (store must be idle)."""

    with progress("reading the shards") as update:
        rep = rebuild_index(state(ctx).settings, update, without=without)
    _report("index rebuilt", rep)


def _report(what: str, rep) -> None:
    out.print(f"{what} in {rep.seconds:.1f} s from {rep.disks} disks: {rep.objects} objects in "
              f"{rep.shards} shards ({rep.replicas} replicas, {rep.open_shards} open); deletion marks replayed: "
              f"{rep.hidden} hidden, {rep.deleted} tombstoned, {rep.rooted} kept by `hoard put`")
    for s in rep.skipped_disks:
        err.print(f"[yellow]skipped disk[/] {s}")
    for d in rep.damaged:
        err.print(f"[yellow]unusable[/] {d}")
    if rep.damaged:
        err.print("a damaged replica is restored from another copy by `hoard verify --repair`")


@app.command("rewrite-marks")
def rewrite_marks(ctx: typer.Context) -> None:
    """Replace every writable disk's marks log by the index's marks (what `hoard check` asks
    for when a log would not replay them; writers also do it for a disk that fell behind)."""

    with open_store(ctx) as store:
        chosen = [store.disks[u].label for u in store.disks if store.usable(u)]
        labels = store.snapshot_marks()
        n = sum(store.index.count(getattr(store.index, t)) for t in TABLES)
    left = [label for label in chosen if label not in labels]
    if left or not labels:  # (it said "rewritten on d1, d2", exit 0, with d0's log left behind)
        raise HoardError(f"the marks log could not be rewritten on {', '.join(left) or 'any disk'} (see the warnings "
                         "above; `hoard check` names what to remove); `hoard health` "
                         "names the disks' problems, then run this again", ExitCode.UNAVAILABLE)
    out.print(f"marks log rewritten on {', '.join(labels)}: {n} marks")


@app.command("rewrite-pointers")
def rewrite_pointers(ctx: typer.Context) -> None:
    """Write the index's batch and view pointers to every disk in service, and removal records
    over the ones it does not name (what `hoard check` asks for when a disk lacks one or holds
    another; writers also do it for a disk that was added, replaced onto or came back)."""
    with open_store(ctx) as store:
        store.index.align_pointers()
        chosen = [u for u in store.disks if store.usable(u)]
        labels = store.catch_up_pointers(chosen)
        left = [store.disks[u].label for u in chosen if store.disks[u].label not in labels]
        n = len(store.index.pointer_bodies()[1])
    if left or not labels:
        raise HoardError(f"the batch and view pointers could not be written to {', '.join(left) or 'any disk'} (see "
                         "the warnings above); `hoard health` names the disks' problems, then run this again",
                         ExitCode.UNAVAILABLE)
    out.print(f"batch and view pointers rewritten on {', '.join(labels)}: {n} pointers")


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Bring an index of an older format up to this hoardfs's (any writable command does it at
    its first open; this one does only that). An index a later hoardfs wrote is refused."""

    with open_store(ctx, writable=False) as store:
        found = store.index.format
    if found > formats.INDEX:
        raise formats.NewerFormat(f"the index at {state(ctx).settings.index_dir}", found, formats.INDEX)
    with open_store(ctx) as store:  # (the writable open migrates it, and removes a killed rebuild's leftovers)
        now = store.index.format
        why = store.migration_error
        if isinstance(why, ManifestNotRead):  # a registered manifest: what reads it, or what unregisters it
            why = unreadable.judge(store, why.kind, why.name, why.manifest, why)
        # what the open could not remove (it only logs why: every writer opens): health, check and
        # verify name this command as the way out, so it says why it is not
        _, stuck = remove_index_leftovers(store.cfg)
    if stuck:
        raise HoardError(f"{'; '.join(stuck)}: left by a killed index rebuild or restore, and cannot be removed; "
                         "nothing reads it: remove it by hand, then run `hoard check`", ExitCode.DATA)
    if now < formats.INDEX and isinstance(why, HoardError):
        raise HoardError(f"the index at {state(ctx).settings.index_dir} stays at format {now}: {why.message}; then "
                         "run this again", why.exit_code)
    if now < formats.INDEX:  # a step that reads the manifests could not (the open warned why)
        raise HoardError(f"the index at {state(ctx).settings.index_dir} stays at format {now}: a registered manifest "
                         "cannot be read (the warning above names it); `hoard check` names the damage — repair it "
                         "(`hoard verify --repair`, or `hoard view rm` / `hoard delete --batch` for what it names), "
                         "then run this again", ExitCode.DATA)
    out.print(f"index at format {formats.INDEX}" + (f" (migrated from format {found})" if found < formats.INDEX
                                                    else " already"))


@app.command()
def recount(ctx: typer.Context) -> None:
    """Count again, for every shard, the objects the index points at there and their bytes (the
    `live` table gc plans from; `hoard check` names a count that differs). One pass over the
    objects in short write transactions: the store stays in use (it holds the maintenance lock,
    as gc does)."""

    with open_store(ctx) as store, store.maintenance("index recount"):
        n = store.index.fill_live()
    out.print(f"live counts made again from {n} objects")


@app.command()
def backup(ctx: typer.Context, copies: int = typer.Option(2, min=1, help="how many HDDs get a copy")) -> None:
    """Copy the index to HDDs (`<disk>/index-copy/`), so a dead SSD costs no rebuild scan."""

    # the readers lock, shared (as the mount holds it), taken before the index is opened: an index
    # rebuild or restore holds it exclusively — a restore works from a copy this replaces, and a
    # restore killed then had its copy only in index.restore/, a leftover the next writer removes
    with Store.open(state(ctx).settings, writable=False, lock=storelock.READERS, what="hoard index backup") as store:
        labels = backup_index(store, copies)
    out.print(f"index copied to {', '.join(labels)}")


@app.command()
def restore(ctx: typer.Context, without: list[str] = WITHOUT) -> None:
    """Rebuild the index from the disks, with what only the newest index copy on the HDDs
    knows (disk states, events, queued repairs) taken from that copy (store must be idle)."""

    with progress("reading the shards") as update:
        label, stamp, rep = restore_index(state(ctx).settings, update, without=without)
    taken = time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp.get("taken_at", 0)))
    _report(f"index restored (copy of {taken} from disk {label}, brought up to date from the disks)", rep)
