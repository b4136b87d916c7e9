"""The free templates of docs/layouts.md as a dataset format: `<split>/<the template's path>`."""

from __future__ import annotations

from datetime import datetime

from hoardfs.datasets import layouts
from hoardfs.datasets.formats.base import Generated, StoredFile, Tree, check_name, check_samples, finish, json_bytes
from hoardfs.datasets.layouts import Layout, LayoutError
from hoardfs.datasets.model import Sample

#: the template fields a dataset sample carries (the rest — batch, orig_path, source, title … —
#: are a stage's or an export's, read from the database when it runs)
SAMPLE_FIELDS = {"sha256", "node_id", "size", "ext", "label", "download_date"}


def _row(s: Sample) -> dict:
    return {"node_id": s.node_id, "sha256": s.sha256, "size": s.size, "file_type": s.ext[1:] or None,
            "labels": {k: list(v) for k, v in s.labels.items()},
            "download_time": datetime.fromisoformat(s.date) if s.date else None}


class TemplateFormat:
    """A layout template under one directory per split; with `sidecars`, the sample's manifest
    line as `<file>.json` next to it."""

    needs_class = False
    needs_size = False
    view_ok = True

    def __init__(self, layout: Layout) -> None:
        other = layout.needs() - SAMPLE_FIELDS
        if other:
            raise LayoutError(f"layout {layout.name}: {', '.join('{' + f + '}' for f in sorted(other))} is not a "
                              f"field of a dataset sample; a dataset template may use "
                              f"{', '.join('{' + f + '}' for f in sorted(SAMPLE_FIELDS))}")
        if layout.per_locator:
            raise LayoutError(f"layout {layout.name}: per_locator has no meaning for a dataset (one file per "
                              "sample); drop it from the layout file")
        self.layout = layout
        self.name = layout.name

    def place(self, sample: Sample) -> str:
        return f"{sample.split}/{layouts.render(self.layout, _row(sample), prefix=sample.split + '/')}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        prefix = options.get("prefix", "")
        ordered = check_samples(self, samples, image=False)
        tree = Tree()
        by_node = {s.node_id: s for s in ordered}
        for split in sorted({s.split for s in ordered}):
            check_name(split, "split")
            rows = [_row(s) for s in ordered if s.split == split]
            for p in layouts.plan(self.layout, rows, prefix=f"{prefix}{split}/"):
                s = by_node[p.node_id]
                tree.files.append(StoredFile(f"{split}/{p.path}", s.sha256, s.size))
                if self.layout.sidecars:
                    tree.generated.append(Generated(f"{split}/{p.path}{layouts.SIDECAR_SUFFIX}",
                                                    json_bytes(s.to_json())))
        return finish(tree, self.name, prefix, self.layout.case_sensitive)


def template_format(layout: Layout) -> TemplateFormat:
    """A Format of a layout template (docs/layouts.md); LayoutError if it names a field a
    dataset sample does not carry."""
    return TemplateFormat(layout)
