"""`hoard gc`: free the bytes no batch, view, job or database row still uses."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import database, out, progress, state
from hoardfs.fsd.maintenance.gc import gc as run
from hoardfs.fsd.store import Store
from hoardfs.sql.deletion import has_schema, referenced


def gc(
    ctx: typer.Context,
    threshold: Annotated[float, typer.Option(min=0.01, max=1.0, help="compact shards whose live share is below this")] = 0.5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only show which shards would be compacted")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wait: Annotated[float, typer.Option(help="seconds to wait for other maintenance jobs or writers")] = 60.0,
    no_database: Annotated[bool, typer.Option("--no-database", help="a store used without the database: only "
                                              "manifests and running jobs count as references (a database that "
                                              "answers all the same is still asked)")] = False,
) -> None:
    """Compact shards holding deleted objects and free their space (resumable; reserves space first).

    An object is freed only if it is tombstoned (`hoard delete --batch`) and, at gc time, no
    batch or view manifest, running job (pin) or database row references it."""

    cfg = state(ctx).settings
    # --no-database goes on without a database that does not answer; one that answers is asked
    # all the same (its rows may need what a view or batch left tombstoned: a dataset's manifest)
    with (database(cfg, quiet=True) if no_database else
          database(cfg, needed_for="gc needs the database to know which objects rows still reference "
                                   "(`--no-database` for a store without one)")) as conn, \
            Store.open(cfg, what="hoard gc") as store, progress("copying live records") as update:
        roots = (lambda shas: referenced(conn, shas)) if conn is not None and has_schema(conn) else None
        rep = run(store, threshold, dry_run, roots=roots, wait_s=wait, progress=update)
    if as_json:
        out.print(json.dumps(asdict(rep)))
        return
    if dry_run:
        for p in rep.plan:
            out.print(f"shard {p['shard']}: {p['ratio']:.0%} live ({fmt_bytes(p['live'])} of {fmt_bytes(p['size'])})")
        out.print(f"{rep.candidates} shards below {threshold:.0%} live would be compacted")
        return
    out.print(f"{rep.compacted} of {rep.candidates} shards compacted, {rep.objects_dropped} deleted objects dropped; "
              f"removed {rep.replicas_deleted} replica files ({fmt_bytes(rep.bytes_freed)}), wrote "
              f"{fmt_bytes(rep.bytes_written)} of new replica files for the {fmt_bytes(rep.live_bytes_copied)} of live "
              f"data copied: {fmt_bytes(rep.bytes_freed - rep.bytes_written)} net freed on the disks "
              f"in {rep.seconds:.1f} s"
              + (f"; {rep.kept_back} kept back (stored again meanwhile), retried next run" if rep.kept_back else "")
              + (f"; {rep.kept_damaged} shards left as they are: a footer or a `live` count disagrees with the "
                 "index — `hoard check` names each, with its next step" if rep.kept_damaged else "")
              + (f"; {rep.stale_cleared} chunk maps or extensions of objects not in the store cleared"
                 if rep.stale_cleared else ""))
