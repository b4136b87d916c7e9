"""`hoard search "TEXT" [--limit N] [--json]`: the stored images nearest a text, by their CLIP
embeddings (the `clip-embed` action's; hoardfs.jobs.clip_model, hoardfs.sql.embeddings; docs/search.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.cli._common import database, err, out, state

#: the most images one search returns
MAX_LIMIT = 1000


def search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="what the images should show, in words")],
    limit: Annotated[int, typer.Option("--limit", "-n", help=f"how many images, 1–{MAX_LIMIT}; default 20")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document: query, model, results (sha256, score, "
                                                         "locator), nearest first")] = False,
) -> None:
    """The stored images nearest TEXT, nearest first, one a line: cosine similarity, sha256 and
    where the image came from. Only images the `clip-embed` action has embedded with the model
    of `search.clip_model` / `search.clip_weights` are searched (`hoard action run clip-embed`)."""
    from hoardfs.jobs import clip_model  # deferred: torch is imported only by a search

    if not 1 <= limit <= MAX_LIMIT:
        raise HoardError(f"--limit: {limit} is outside 1–{MAX_LIMIT}", ExitCode.USAGE)
    if not text.strip():
        raise HoardError("TEXT is empty: say what the images should show, e.g. hoard search \"a red car\"",
                         ExitCode.USAGE)
    settings = state(ctx).settings
    clip_model.weights_file(settings.search.clip_weights)  # nothing configured: that line, before the database's
    with database(settings, needed_for="the images' embeddings are kept in the database") as conn:
        try:
            model, hits = clip_model.search_text(settings, conn, text, limit, lambda line: err.print(line, markup=False))
        except clip_model.NothingEmbedded as e:
            model, hits = "", []
            err.print(str(e), markup=False)
    if as_json:
        out.print(json.dumps({"query": text, "model": model, "results": [
            {"sha256": h.sha256, "score": round(h.score, 6), "locator": h.locator} for h in hits]},
            ensure_ascii=False), markup=False)
        return
    for h in hits:
        out.print(f"{h.score:.4f} {h.sha256} {display(h.locator)}", markup=False)
