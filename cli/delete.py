"""`hoard delete`: type A hides nodes (the bytes stay); type B drops a batch or releases what
`hoard put` stored (`hoard gc` frees the bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import confirm, database, err, out, read_sha_list, state
from hoardfs.fsd.core.records import sha_bytes
from hoardfs.fsd.maintenance.deletion import drop_batch, finish_batch, hide, release
from hoardfs.fsd.outputs.puts import release as release_put
from hoardfs.fsd.outputs.unreadable import ManifestUnreadable
from hoardfs.fsd.store import Store
from hoardfs.jobs.ingest import forget_deleted
from hoardfs.sql import deletion as db_del


def delete(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Option("--batch", help="type B: drop this batch's references")] = None,
    node: Annotated[list[str] | None, typer.Option("--node", help="type A: hide this sha256 (repeatable)")] = None,
    obj: Annotated[list[str] | None, typer.Option("--object", help="type B: release an object `hoard put` "
                                                     "stored (repeatable)")] = None,
    objects_from: Annotated[Path | None, typer.Option("--objects-from", help="type B: release the objects "
                                                         "listed in FILE, one sha256 per line ('-' = stdin)")] = None,
    put: Annotated[str | None, typer.Option("--put", help="type B: release what `hoard put --name NAME` "
                                               "stored (`hoard ls --puts`)")] = None,
    reason: Annotated[str, typer.Option(help="recorded with the deletion")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="do not ask (type B)")] = False,
) -> None:
    """Delete: type A hides nodes (bytes stay), type B drops a batch or releases what `hoard put`
    stored (`hoard gc` frees the bytes no batch, view, job or database row still uses).

    The database is changed first, then the store; re-running after a failure is safe.
    """

    cfg = state(ctx).settings
    if sum(map(bool, (batch, node, obj or objects_from, put))) != 1:
        raise HoardError("name one of --batch ID (type B), --object SHA256 / --objects-from FILE (type B, what "
                         "`hoard put` stored), --put NAME (type B, a named put) or --node SHA256 (type A)",
                         ExitCode.USAGE)
    if put:

        if not yes:
            confirm(f"release put {put}: its files no other put, batch or view holds will be freed by the next "
                    "`hoard gc`. Continue?")
        with Store.open(cfg) as store:
            released, kept = release_put(store, put, reason or f"put {put} released (hoard delete --put)")
        out.print(f"type B: put {put} released: {released} objects tombstoned, {kept} kept (another put, a batch, "
                  "a view or a job holds them); `hoard gc` frees the space")
        return
    if obj or objects_from:
        listed = read_sha_list(objects_from, "object list") if objects_from is not None else []
        shas = list(dict.fromkeys([sha_bytes(h) for h in obj or []] + [bytes.fromhex(h) for h in listed]))
        with Store.open(cfg) as store:  # the database is not asked: gc keeps what a row still needs
            released, marked = release(store, shas, reason or "released (hoard delete --object)")
        out.print(f"type B: {released} objects released from `hoard put`, {marked} tombstoned; `hoard gc` frees "
                  "those no batch, view, job or database row uses")
        return
    if batch and not yes:
        confirm(f"drop batch {batch}: its files no other batch or view uses will be freed by the next `hoard gc`. "
                "Continue?")
    with database(cfg, needed_for="a deletion changes the database first") as conn, Store.open(cfg) as store:
        if node:
            shas = [sha_bytes(h) for h in node]
            unknown = [s.hex() for s in shas if store.index.lookup(s) is None]
            if unknown:  # checked before anything changes: a typo must not half-apply a deletion
                raise HoardError(f"no object {', '.join(unknown)} in the store; nothing was hidden (check the "
                                 "sha256: `ls <mount>/by-hash/<first 2 hex digits>`)", ExitCode.DATA)
            n_db = db_del.hide_nodes(conn, shas)
            n_store = hide(store, shas, reason or "deleted (type A)")
            out.print(f"type A: {n_db} nodes marked deleted in the database, {n_store} hidden in the store "
                      "(bytes stay; selectors and the mount no longer show them)")
            return
        assert batch is not None
        if store.index.get_batch(batch) is None and db_del.batch_deleted(conn, batch):  # a re-run finishes the rest
            finish_batch(store, batch)  # (the store's last step, if a killed run left it)
            out.print(f"type B: batch {batch} was already deleted", markup=False)
        else:
            counts: dict[str, int] = {}

            def database_first() -> None:  # (run by drop_batch once it knows what it drops, before the store changes)
                if db_del.batch_known(conn, batch):
                    counts.update(db_del.drop_batch(conn, batch, reason))

            try:
                dropped, shared = drop_batch(store, batch, before=database_first)
            except ManifestUnreadable as e:  # nothing changed yet: say so, and ask
                err.print(f"batch {batch}: its manifest {e.manifest} cannot be read from any replica ({e.why}), and "
                          "nothing mends it. What the batch named is not known, so dropping it tombstones nothing it "
                          "named: its files stay stored (a leak, never a loss); only the manifest is tombstoned, and "
                          "`hoard gc` frees it.", markup=False)
                if not yes:
                    confirm(f"unregister batch {batch}, tombstoning nothing it named?")
                dropped, shared = drop_batch(store, batch, unreadable_ok=True, before=database_first)
            out.print(f"type B: batch {batch} dropped: {counts.get('members', 0)} memberships and "
                      f"{counts.get('nodes_marked_deleted', 0)} nodes marked deleted in the database; {dropped} "
                      f"objects tombstoned, {shared} kept (another batch or view uses them). `hoard gc` frees the space.")

    out.print(forget_deleted(cfg, batch), markup=False)
