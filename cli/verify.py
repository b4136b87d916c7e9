"""`hoard verify`: scrub and repair."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import database, err, finite, out, progress, state
from hoardfs.cli.store import open_store
from hoardfs.fsd.io import integrity, scrub
from hoardfs.fsd.maintenance import check as check_mod
from hoardfs.fsd.maintenance.health import smart_of_store, unmendable_problems
from hoardfs.fsd.maintenance.orphans import sweep
from hoardfs.sql.check import Liveness, liveness, mend_liveness, store_vs_database


def verify(
    ctx: typer.Context,
    sample: Annotated[float, typer.Option(
        "--sample", min=0.01, max=100, help="check this percent of the shards, least recently verified first")] = 100,
    disk: Annotated[str | None, typer.Option("--disk", help="only replicas on this disk")] = None,
    sha256: Annotated[bool, typer.Option("--sha256", help="also recompute every payload's sha256")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="replace bad replicas with good copies")] = False,
    budget_s: Annotated[float | None, typer.Option(min=0, callback=finite, help="stop after this many seconds")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="only the shards holding this ingested batch")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    orphans: Annotated[bool, typer.Option("--orphans", help="instead: find shard files no index entry names "
                                          "and set them aside (--repair deletes old ones)")] = False,
    grace_h: Annotated[float, typer.Option("--grace-h", min=0, help="--orphans: leave files younger than this")] = 24,
) -> None:
    """Check replicas (xxh3-128, footers; --sha256 too), oldest-verified first, and every disk's marks log.

    Then reads the disks' drives' SMART afresh (a drive finds its unreadable sectors when they are read) and judges
    it as `hoard health` does.

    Exit 5 if a bad replica or a damaged marks-log line remains (not repaired, or no good copy to repair from), or a
    drive says it is failing.
    """
    if orphans:
        _orphans(ctx, repair, grace_h * 3600, as_json)
        return

    with open_store(ctx) as store, progress("verifying") as update:
        rep = scrub.verify(store, sample, disk, sha256, repair, budget_s, batch=batch, progress=update)
        stuck = store.unmendable_repairs() if repair and rep.unrepaired else []
        _, smart_problems, smart_warnings = smart_of_store(store, 0, [disk] if disk else None)
    scope = (f" on disk {disk}" if disk else "") + (f" holding batch {batch}" if batch else "")
    if rep.in_scope == 0 and not rep.bad and not as_json and not smart_problems + smart_warnings:
        out.print(f"nothing to verify: no sealed shard{scope}")
        return
    if rep.in_scope and rep.replicas == 0:  # shards exist, yet not one replica could be read: no pass
        raise HoardError(f"{rep.in_scope} sealed shards{scope}, but none has a replica on a readable disk; "
                         "`hoard health` names the failed or missing disks", ExitCode.DATA)
    if as_json:
        out.print(json.dumps(asdict(rep) | {"smart": {"problems": smart_problems, "warnings": smart_warnings}}),
                  markup=False)
    else:
        out.print(f"verified {rep.replicas} replicas of {rep.shards} shards ({fmt_bytes(rep.bytes)}) in "
                  f"{rep.seconds:.1f} s: {len(rep.bad)} bad, {len(rep.repaired)} repaired")
        for b in rep.bad:
            err.print(f"bad {b}", markup=False)
        for line in scrub.skipped_lines(store, rep):
            err.print(f"not verified: {line}", markup=False)
        for w in smart_warnings:
            err.print(f"warning: {w}", markup=False)
        for p in smart_problems:
            err.print(f"failing {p}", markup=False)
    if smart_problems and not rep.unrepaired:
        raise typer.Exit(ExitCode.DATA)
    if rep.unrepaired:
        if not repair:
            err.print("run `hoard verify --repair` to replace bad replicas from good ones (and rewrite damaged marks logs from the index)")
        else:  # (no whole copy, none assembled record by record: see the log above for each shard)
            err.print(f"{rep.unrepaired} bad replicas could not be repaired: no replica holds every record of their "
                      "shard whole (the log names what each lacked); keep their disks in service — every object a "
                      "replica holds whole still reads — and see docs/operations.md \"A shard no replica holds "
                      "whole\"", markup=False)
            for line in unmendable_problems(stuck)[1:]:  # a batch or view whose manifest is such a record
                err.print(line, markup=False)
        raise typer.Exit(ExitCode.DATA)


def _orphans(ctx: typer.Context, repair: bool, grace_s: float, as_json: bool) -> None:

    with open_store(ctx) as store:
        rep = sweep(store, repair, grace_s)
    if as_json:
        out.print(json.dumps(asdict(rep)), markup=False)
    else:
        out.print(f"{rep.found} shard files no index entry names ({fmt_bytes(rep.bytes)}): {len(rep.set_aside)} set "
                  f"aside to <disk>/orphans/, {rep.too_young} younger than the grace period, {rep.writer_alive} still "
                  f"being written, {len(rep.unindexed)} kept (they hold, or may hold, objects the index lacks); {rep.tmp_removed} "
                  f"stale tmp files removed" + (f"; {len(rep.deleted)} old orphans deleted "
                                                f"({fmt_bytes(rep.bytes_deleted)})" if repair else ""), markup=False)
        for line in rep.set_aside:
            err.print(f"set aside: {line}", markup=False)
    for line in rep.unindexed:
        err.print(f"kept: {line}", markup=False)
    if rep.unindexed:
        raise typer.Exit(ExitCode.DATA)


def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    no_database: Annotated[bool, typer.Option("--no-database", help="only the index and the disks")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="first set the database's deletion flags from the store "
                                         "where they disagree (the one disagreement check mends)")] = False,
) -> None:
    """Do the index, the shards on the disks and the database agree? Names each disagreement.

    Exit 5 when something disagrees (each on one line with what to do), 0 when all agree.
    Changes nothing, except with `--repair`: then a node the database marks deleted while a batch
    holds it and the store shows it is marked live, and one the store hides (`hoard delete --node`)
    is marked hidden, before the check. `hoard verify` reads every byte, this reads the index,
    footers and sizes.
    """

    if repair and no_database:
        raise HoardError("--repair sets the database's deletion flags from the store: drop --no-database",
                         ExitCode.USAGE)
    with database(state(ctx).settings, skip=no_database, needed_for="--repair changes the database" if repair
                  else None) as conn, open_store(ctx, writable=False) as store:
        mended: list[Liveness] = []
        if repair and conn is not None:
            mended = mend_liveness(conn, check_mod.IndexMarks(store))
            if not as_json:
                for f in mended[:integrity.SHOW]:
                    out.print(f"repaired: {f.mended()}", markup=False)
                out.print(f"repaired: {len(mended)} nodes' deletion flags in the database now follow the store",
                          markup=False)
        rep = check_mod.check(store, (lambda objs: store_vs_database(conn, objs)) if conn is not None else None,
                              liveness_in_db=(lambda marks: (f.line() for f in liveness(conn, marks)))
                              if conn is not None else None)
        check_mod.check_drives(store, rep)
    if as_json:
        out.print(json.dumps(asdict(rep) | {"ok": rep.ok} | ({"repaired": len(mended)} if repair else {})),
                  markup=False)
    else:
        t = rep.totals
        out.print(f"{t['objects']} objects in {t['shards']} shards ({t['sealed']} sealed), {t['replicas']} replicas; "
                  + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(t["bytes_per_disk"].items()))
                  + f" — checked in {rep.seconds:.1f} s", markup=False)
        for line in rep.notes:
            out.print(f"note: {line}", markup=False)
        for line in rep.problems:
            err.print(f"disagrees: {line}", markup=False)
        if rep.counts:
            err.print("hoard: error: " + ", ".join(f"{n} {k}" for k, n in sorted(rep.counts.items()))
                      + " — see the lines above", markup=False)
    if not rep.ok:
        raise typer.Exit(ExitCode.DATA)
