"""`hoard fixtures generate`: deterministic synthetic scraped batches (S08)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.adapters.synth import Spec
from hoardfs.adapters.synth import generate as gen
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import out

app = typer.Typer(help="Deterministic test and benchmark data.", no_args_is_help=True)


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="directory to write the batches into")],
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 1,
    batches: Annotated[int, typer.Option(min=1)] = 3,
    items: Annotated[int, typer.Option("--items", min=1, help="media items per batch")] = 100,
    large_max_mb: Annotated[int, typer.Option(min=1, help="upper size of the few large files")] = 50,
    sources: Annotated[str, typer.Option(help="comma-separated: ytdlp,gallery,forum")] = "ytdlp,gallery,forum",
    ready: Annotated[bool, typer.Option(help="drop a _READY signal file into each batch")] = False,
) -> None:
    """Write synthetic batches (media + sidecars, repeats, crops/frames) and truth.json."""

    try:
        spec = Spec(seed=seed, batches=batches, items_per_batch=items, large_max_mb=large_max_mb,
                    sources=tuple(s.strip() for s in sources.split(",") if s.strip()), ready_signal=ready)
        result = gen(out_dir, spec)
    except ValueError as e:
        raise HoardError(str(e), ExitCode.USAGE) from None
    except OSError as e:
        raise HoardError(f"cannot write the batches into {out_dir}: {e.strerror}"
                         + (f" ({e.filename})" if e.filename and str(e.filename) != str(out_dir) else "")
                         + "; name a writable directory",
                         ExitCode.NO_SPACE if e.errno == errno.ENOSPC else ExitCode.USAGE) from None
    for b in result:
        size = sum(i.size for i in b.items)
        out.print(f"{b.batch_id}: {len(b.items)} files, {fmt_bytes(size)}, {len(b.derived)} derived")
    out.print(f"truth: {out_dir / 'truth.json'}")
