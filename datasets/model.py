"""The samples of a dataset as plain data: what `datasets.plan` produces, what each line of a
build's `manifest.jsonl` holds, and what the layouts (`datasets.formats`) render. No SQL, no
store: a manifest read back years later gives the same samples, so the same files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Annotation:
    label: str  # class name
    bbox: tuple[float, float, float, float] | None  # x, y, w, h in PIXELS of the original image
    polygon: tuple[tuple[float, float], ...] | None  # pixels

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "bbox": list(self.bbox) if self.bbox is not None else None,
                "polygon": [list(p) for p in self.polygon] if self.polygon is not None else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Annotation:
        bbox = d.get("bbox")
        poly = d.get("polygon")
        return cls(str(d["label"]), tuple(float(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
                   tuple((float(x), float(y)) for x, y in poly) if poly is not None else None)


@dataclass(frozen=True)
class Sample:
    path: str  # the file's path in the dataset tree (the format decides)
    sha256: str  # hex
    size: int
    ext: str  # ".jpg" ("" unknown)
    key: str  # stable sample key: sha256[:16] unless two samples share it (then node id)
    node_id: int
    root_id: int
    lineage: tuple[int, ...]  # node, parent, …, root
    source_url: str | None
    date: str | None  # the root's download date YYYY-MM-DD
    labels: dict[str, tuple[str, ...]]
    cls: str | None
    class_index: int | None
    split: str
    annotations: tuple[Annotation, ...] = ()
    width: int | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest line's document (`canonical` makes the line)."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "ext": self.ext, "key": self.key,
                "node_id": self.node_id, "root_id": self.root_id, "lineage": list(self.lineage),
                "source_url": self.source_url, "date": self.date,
                "labels": {k: list(v) for k, v in sorted(self.labels.items())}, "class": self.cls,
                "class_index": self.class_index, "split": self.split,
                "annotations": [a.to_json() for a in self.annotations], "width": self.width, "height": self.height}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(path=d["path"], sha256=d["sha256"], size=int(d["size"]), ext=d.get("ext", ""), key=d["key"],
                   node_id=int(d["node_id"]), root_id=int(d["root_id"]), lineage=tuple(int(n) for n in d["lineage"]),
                   source_url=d.get("source_url"), date=d.get("date"),
                   labels={k: tuple(v) for k, v in d.get("labels", {}).items()}, cls=d.get("class"),
                   class_index=d.get("class_index"), split=d["split"],
                   annotations=tuple(Annotation.from_json(a) for a in d.get("annotations", ())),
                   width=d.get("width"), height=d.get("height"))

