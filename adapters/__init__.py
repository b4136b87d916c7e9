"""S03 adapters: per-source parsers that turn a scraped batch into records and rejects.

    from hoardfs.adapters import adapter_for, parse_batch
    adapter = adapter_for("forum", cfg.sources)     # a source name → its format's adapter
    parsed, view = parse_batch(batch_dir, adapter)  # records, rejects (with reasons), claimed files

Adding a source format = one module with an `Adapter` subclass + a line in `FORMATS` and its
name in `hoardfs.base.config.SOURCE_FORMATS` (docs/adapters.md). Adapters never touch SQL or the
store; `hoardfs.adapters.intent` turns records and the store's digests into a write-intent.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from hoardfs.adapters.base import Adapter, Asset, BatchView, File, Parsed, Record, Reject, Rendition
from hoardfs.adapters.manifest import CsvManifest
from hoardfs.adapters.screen import display, quarantine, screen
from hoardfs.adapters.sidecars import GalleryDl, Sidecar, YtDlp
from hoardfs.adapters.social import Mastodon, Reddit, Twitter
from hoardfs.adapters.strokes import QuickDraw
from hoardfs.base.errors import ExitCode, HoardError

__all__ = ["ALIASES", "FORMATS", "Adapter", "Asset", "BatchView", "File", "Parsed", "Record", "Reject", "Rendition",
           "UnknownSource", "adapter_for", "canonical_source", "display", "known_sources", "parse_batch", "quarantine", "screen"]

#: format name → adapter class; a source name that is a format name needs no configuration
FORMATS: dict[str, type[Adapter]] = {a.format: a for a in (YtDlp, GalleryDl, Sidecar, CsvManifest,
                                                           Twitter, Reddit, Mastodon, QuickDraw)}


#: an alias (`yt-dlp`, `gallery-dl`) → the format it stands for; see `Adapter.aliases`
ALIASES: dict[str, str] = {a: f for f, cls in FORMATS.items() for a in cls.aliases}


class UnknownSource(HoardError):
    exit_code = ExitCode.USAGE


def known_sources(configured: Mapping[str, str]) -> dict[str, str]:
    """Every source name `hoard ingest --source` accepts → its format (aliases aside)."""
    return {**{f: f for f in FORMATS}, **dict(configured)}


def canonical_source(source: str, configured: Mapping[str, str]) -> str:
    """The source name a batch is recorded under: `source` itself when it is known, the
    format an alias stands for (`yt-dlp` → `ytdlp`; a [sources] entry of the same name wins).

    Raises UnknownSource naming the closest known names and every known one."""
    known = known_sources(configured)
    if source in known:
        return source
    if source in ALIASES:
        return ALIASES[source]
    close = difflib.get_close_matches(source, [*known, *ALIASES], n=3, cutoff=0.6)
    hint = ", ".join(dict.fromkeys(ALIASES.get(c, c) for c in close))
    raise UnknownSource(f"unknown source {source!r}; " + (f"did you mean {hint}? " if hint else "")
                        + f"known: {', '.join(sorted(known))}. A new site that uses one of the formats "
                        f"({', '.join(FORMATS)}) needs a line `{source} = \"<format>\"` under [sources] in hoard.toml")


def adapter_for(source: str, configured: Mapping[str, str]) -> Adapter:
    source = canonical_source(source, configured)
    fmt = known_sources(configured)[source]
    if fmt not in FORMATS:
        raise UnknownSource(f"source {source!r} has format {fmt!r} in hoard.toml; formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](source)


def parse_batch(root: Path, adapter: Adapter, settle_s: float = 0.0) -> tuple[Parsed, BatchView]:
    """Screen, parse, and reject every file no record accounts for."""
    view, rejects = screen(root, settle_s)
    parsed = adapter.parse(view)
    parsed.rejects[:0] = rejects
    rejected = {p for r in parsed.rejects for p in r.paths}
    stray = sorted(set(view.files) - parsed.claimed - rejected)
    for rel in stray:
        parsed.reject(f"not described by any {adapter.format} metadata in the batch; add its metadata, or "
                      "drop it again in a new batch (a new directory name) with the right source", rel)
    # a file both claimed and rejected (e.g. media of a rejected sidecar also named elsewhere) stays rejected
    parsed.claimed -= {p for r in parsed.rejects for p in r.paths}
    return parsed, view
