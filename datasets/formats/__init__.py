"""Dataset formats: a manifest's samples → the tree a training loader reads.

Each format is a pure function `render(samples, dataset_doc, options) -> Tree`: the same
samples (in any order), document and options give the same paths and the same bytes, so a
build and a later `materialize` of its manifest are byte-identical. A Tree names the stored
files (bytes from the store), the files made here and the tar shards (`write_tar`); the builder
writes them. `doc` is dataset.json as a dict: a format reads its `classes` (the class map,
index = position) and `name`. `options`: `prefix` (the directory the tree goes in, for the
path-length rule) and, for webdataset, `shard_bytes` / `shard_samples`. Layouts and their
traps: docs/datasets.md "Layouts". Must not import the store, SQL or jobs.
"""

from __future__ import annotations

from dataclasses import replace

from hoardfs.datasets import layouts
from hoardfs.datasets.formats.base import IMAGE_EXTS, Format, Generated, StoredFile, TarMember, TarShard, Tree
from hoardfs.datasets.formats.detection import Coco, Voc, Yolo
from hoardfs.datasets.formats.folders import HFImageFolder, ImageFolder
from hoardfs.datasets.formats.template import template_format
from hoardfs.datasets.formats.webdataset import WebDataset, tar_bytes, tar_layout, tar_size, write_tar
from hoardfs.datasets.layouts import LayoutError
from hoardfs.datasets.model import Sample

FORMATS: dict[str, Format] = {f.name: f for f in (ImageFolder(), HFImageFolder(), Coco(), Yolo(), Voc(),
                                                  WebDataset())}


def get(layout: str) -> Format:
    """The format a spec's `layout` names: one of FORMATS, a built-in template or a layout
    file (docs/layouts.md); LayoutError naming the choices otherwise."""
    if layout in FORMATS:
        return FORMATS[layout]
    try:
        template = layouts.load(layout)
    except LayoutError:
        if layout.endswith(".toml"):
            raise
        raise LayoutError(f"layout {layout!r}: not one of {', '.join(FORMATS)}, a template "
                          f"({', '.join(layouts.BUILTIN)}) nor a .toml layout file (docs/datasets.md)") from None
    return template_format(template)


def plan_paths(fmt: Format, samples: list[Sample], options: dict | None = None) -> list[Sample]:
    """The samples with `path` set to where the format puts each (a webdataset sample's is
    `<shard>/<member>`), sorted by path: the manifest's order."""
    if isinstance(fmt, WebDataset):
        placed = [replace(s, path=f"{shard}/{fmt.place(s)}") for shard, group in fmt.shards(samples, options or {})
                  for s, _ in group]
    else:
        placed = [replace(s, path=fmt.place(s)) for s in samples]
    return sorted(placed, key=lambda s: s.path)


def render(fmt: Format, samples: list[Sample], doc: dict, options: dict | None = None) -> Tree:
    return fmt.render(samples, doc, options or {})


__all__ = ["FORMATS", "IMAGE_EXTS", "Format", "Generated", "StoredFile", "TarMember", "TarShard", "Tree", "get",
           "plan_paths", "render", "tar_bytes", "tar_layout", "tar_size", "template_format", "write_tar"]
