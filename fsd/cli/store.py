"""`hoard put`, `hoard get`, `hoard replicate`: the store from the command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsd.cli._common import err, out, state
from fsd.errors import ExitCode, HoardError


def open_store(ctx: typer.Context, writable: bool = True):
    from fsd.store import Store

    return Store.open(state(ctx).settings, writable=writable)


def _expand(paths: list[Path], manifest: Optional[Path]) -> list[Path]:
    items: list[Path] = []
    if manifest is not None:
        try:
            text = sys.stdin.read() if str(manifest) == "-" else manifest.read_text()
        except OSError as e:
            raise HoardError(f"cannot read manifest {manifest}: {e.strerror}", ExitCode.USAGE) from None
        items += [Path(line) for line in text.splitlines() if line.strip()]
    for p in paths:
        if p.is_dir():
            items += sorted(q for q in p.rglob("*") if q.is_file())
        else:
            items.append(p)
    if not items:
        raise HoardError("nothing to store: name files or directories, or --manifest FILE", ExitCode.USAGE)
    return items


def put(
    ctx: typer.Context,
    paths: Annotated[Optional[list[Path]], typer.Argument(help="files or directories (walked)")] = None,
    klass: Annotated[str, typer.Option("--class", help="raw or generated (sets the replica target)")] = "raw",
    manifest: Annotated[Optional[Path], typer.Option(help="file with one path per line ('-' = stdin)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per file")] = False,
) -> None:
    """Store files: prints sha256, new/existing and replicas now/target per file.

    Exit 5 if any file was rejected (each is named on stderr with the reason).
    """
    items = _expand(paths or [], manifest)
    t0 = time.monotonic()
    with open_store(ctx) as store:
        results = store.put_many(items, klass=klass)
    took = time.monotonic() - t0
    rejected = 0
    for r in results:
        if as_json:
            out.print(json.dumps(r.__dict__), soft_wrap=True)
        elif r.status == "rejected":
            pass
        else:
            out.print(f"{r.sha256}  {r.status:<8} {r.replicas}/{r.target}  {r.path}")
        if r.status == "rejected":
            rejected += 1
            err.print(f"[red]rejected[/] {r.path}: {r.reason}")
    new = sum(r.status == "new" for r in results)
    size = sum(r.size for r in results if r.status == "new")
    err.print(f"{len(results)} files: {new} new ({size / 1e6:.1f} MB), "
              f"{len(results) - new - rejected} already present, {rejected} rejected in {took:.2f} s")
    if rejected:
        raise typer.Exit(ExitCode.DATA)


def get(
    ctx: typer.Context,
    sha256: Annotated[str, typer.Argument(help="the object's sha256 (64 hex digits)")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="write here instead of stdout")] = None,
) -> None:
    """Read an object back, verified, from the best healthy replica."""
    with open_store(ctx, writable=False) as store:
        data = store.get(sha256.lower())
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from fsd.disks import atomic_write

    atomic_write(output, data)


def replicate(
    ctx: typer.Context,
    budget_s: Annotated[float, typer.Option(help="stop after this many seconds")] = 600,
    rate_mb_s: Annotated[float, typer.Option(help="copy at most this fast (0 = no limit)")] = 100,
    watch: Annotated[bool, typer.Option(help="keep running, checking every 30 s")] = False,
) -> None:
    """Copy shards below their replica target (copy_of_raw / copy_of_generated)."""
    from fsd.replicate import replicate_once

    while True:
        with open_store(ctx) as store:
            rep = replicate_once(store, budget_s, rate_mb_s or None)
        out.print(f"replicated {rep.copied_shards} shards ({rep.copied_bytes / 1e6:.1f} MB) in {rep.seconds:.1f} s; "
                  f"{rep.remaining_shards} still below target")
        if not watch:
            if rep.remaining_shards:
                raise typer.Exit(ExitCode.DEGRADED)
            return
        time.sleep(30)


def register(app: typer.Typer) -> None:
    app.command()(put)
    app.command()(get)
    app.command()(replicate)
