"""A dataset's samples as plain data: what the plan selects, the manifest stores and the formats lay out.

No SQL and no store here. A `Sample` is one manifest line (`to_json` / `from_json`, written
with `canonical`); `annotations_from_ls` turns Label Studio's regions (percent of the image,
docs/actions.md "What comes back") into pixel `Annotation`s. Every function is pure: the same
input gives the same output, which is what makes a build byte-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hoardfs.datasets.layouts import PlacementError

#: how many decimals a pixel coordinate converted from Label Studio's percent keeps: a
#: thousandth of a pixel, and no float noise (47.355000000000004) in the files
PIXEL_DECIMALS = 3
#: Label Studio region types that carry a shape, and the key of their class names in `value`
LS_SHAPES = {"rectanglelabels": "rectangle", "rectangle": "rectangle",
             "polygonlabels": "polygon", "polygon": "polygon"}


def canonical(doc: Any) -> str:
    """The one JSON text of a document: keys sorted, no spaces, UTF-8 as is (no newline)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Annotation:
    label: str                                       # class name
    bbox: tuple[float, float, float, float] | None   # x, y, w, h in PIXELS of the original image
    polygon: tuple[tuple[float, float], ...] | None  # pixels

    def box(self) -> tuple[float, float, float, float] | None:
        """The bbox, or the polygon's enclosing box when only a polygon was given."""
        if self.bbox is not None:
            return self.bbox
        if not self.polygon:
            return None
        xs, ys = [p[0] for p in self.polygon], [p[1] for p in self.polygon]
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))

    def to_json(self) -> dict:
        return {"label": self.label, "bbox": list(self.bbox) if self.bbox is not None else None,
                "polygon": [list(p) for p in self.polygon] if self.polygon is not None else None}

    @classmethod
    def from_json(cls, d: dict) -> Annotation:
        bbox = d.get("bbox")
        poly = d.get("polygon")
        return cls(d["label"], (bbox[0], bbox[1], bbox[2], bbox[3]) if bbox is not None else None,
                   tuple((p[0], p[1]) for p in poly) if poly is not None else None)


@dataclass(frozen=True)
class Sample:
    path: str          # the file's path in the dataset tree (the format decides: hoardfs.datasets.formats.plan_paths)
    sha256: str        # hex
    size: int
    ext: str           # ".jpg" ("" unknown)
    key: str           # stable sample key: sha256[:16] unless two samples share it (then the node id)
    node_id: int
    root_id: int
    lineage: tuple[int, ...]   # node, parent, …, root
    source_url: str | None
    date: str | None           # the nearest dated item's download date YYYY-MM-DD
    labels: dict[str, tuple[str, ...]] = field(hash=False)
    cls: str | None
    class_index: int | None
    split: str
    annotations: tuple[Annotation, ...] = ()
    width: int | None = None
    height: int | None = None
    author: str | None = None   # of the nearest item that names one (the sample, its post, …)
    licences: tuple[str, ...] = ()  # of the nearest item that names any
    group: str | None = None    # the group key its split was drawn for (`split.group`)
    #: the image's channels as the file written holds them (1 greyscale, 3 colour; VOC's
    #: `<depth>`), read from the image at build; None where no layout needs it
    depth: int | None = None
    #: the file written in place of the stored one (sha256 hex, size): a JPEG converted at build
    #: for a layout that holds JPEG only (voc; hoardfs.datasets.formats.jpeg). `sha256` stays the
    #: stored original's: the sample's identity in diffs, lineage and every other layout
    converted: tuple[str, int] | None = None

    @property
    def written(self) -> tuple[str, int]:
        """(sha256, size) of the bytes the layout writes for this sample."""
        return self.converted if self.converted is not None else (self.sha256, self.size)

    def to_json(self) -> dict:
        """The manifest line's document (write it with `canonical`); `depth` and `converted`
        only when set, so the manifests of the layouts that do not use them stay as they were."""
        doc = {"path": self.path, "sha256": self.sha256, "size": self.size, "ext": self.ext, "key": self.key,
               "node_id": self.node_id, "root_id": self.root_id, "lineage": list(self.lineage),
               "source_url": self.source_url, "date": self.date,
               "labels": {k: list(v) for k, v in self.labels.items()},  # (written with sorted keys)
               "class": self.cls, "class_index": self.class_index, "split": self.split,
               "annotations": [a.to_json() for a in self.annotations],
               "width": self.width, "height": self.height, "author": self.author,
               "licences": list(self.licences), "group": self.group}
        if self.depth is not None:
            doc["depth"] = self.depth
        if self.converted is not None:
            doc["converted"] = {"sha256": self.converted[0], "size": self.converted[1]}
        return doc

    @classmethod
    def from_json(cls, d: dict) -> Sample:
        return cls(path=d["path"], sha256=d["sha256"], size=d["size"], ext=d["ext"], key=d["key"],
                   node_id=d["node_id"], root_id=d["root_id"], lineage=tuple(d["lineage"]),
                   source_url=d.get("source_url"), date=d.get("date"),
                   labels={k: tuple(v) for k, v in d.get("labels", {}).items()},
                   cls=d.get("class"), class_index=d.get("class_index"), split=d["split"],
                   annotations=tuple(Annotation.from_json(a) for a in d.get("annotations", ())),
                   width=d.get("width"), height=d.get("height"), author=d.get("author"),
                   licences=tuple(d.get("licences", ())), group=d.get("group"), depth=d.get("depth"),
                   converted=(d["converted"]["sha256"], d["converted"]["size"]) if d.get("converted") else None)


# -- Label Studio regions → pixel annotations -----------------------------------------------

def annotations_from_ls(values: Iterable[str | dict], class_key: str | None = None,
                        who: str = "the sample") -> tuple[Annotation, ...]:
    """Pixel annotations from the values of a Label Studio label (`ls:<from_name>`): each a
    region's canonical JSON `{type, value, original_width, original_height, image_rotation, …}`
    with `value` in percent of the image. `class_key` is the key of `value` holding the class
    names (default: the region's type, e.g. `rectanglelabels`, as Label Studio writes it).

    A rectangle gives a bbox; one rotated (`rotation`, degrees clockwise about its top-left
    corner, as Label Studio draws it) gives its enclosing bbox and its four corners as the
    polygon. A polygon gives its points (and no bbox: `Annotation.box()` encloses it). A region
    with several class names gives one annotation per name. Regions without a shape (choices,
    text) are not annotations and are skipped. Sorted, so the order of the values does not
    matter. PlacementError naming `who` and the region for what cannot be converted."""
    out: list[Annotation] = []
    for raw in values:
        try:
            region = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise PlacementError(f"{who}: a Label Studio region is not JSON ({str(raw)[:60]!r}); the label key "
                                 "named in `annotations` must hold `ls:` regions") from None
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise PlacementError(f"{who}: a Label Studio region has no `value` object ({str(raw)[:60]!r}); the "
                                 "label key named in `annotations` must hold `ls:` regions")
        kind = LS_SHAPES.get(str(region.get("type")))
        if kind is None:
            continue
        out.extend(_region(region, kind, class_key or str(region["type"]), who))
    return tuple(sorted(out, key=lambda a: (a.label, a.bbox or (), a.polygon or ())))


def _region(region: dict, kind: str, class_key: str, who: str) -> list[Annotation]:
    value = region["value"]
    name = f"{who}: Label Studio region {region.get('region')!r}"
    w, h = region.get("original_width"), region.get("original_height")
    if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and _number(w) and _number(h)
            and w > 0 and h > 0):
        raise PlacementError(f"{name} has no original_width/original_height; export the annotations again with "
                             "Label Studio ≥ 1.0 (hoard labels pull)")
    if region.get("image_rotation") not in (None, 0, 0.0):
        raise PlacementError(f"{name} was drawn on the image rotated by {region['image_rotation']}°; set the "
                             "rotation back to 0 in Label Studio and submit again")
    names = value.get(class_key)
    if isinstance(names, str):
        names = [names]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise PlacementError(f"{name} has no class name under {class_key!r}; give the region a label in Label "
                             "Studio, or name the key that holds it")

    def px(v: Any, scale: float, what: str) -> float:
        if not _number(v):
            raise PlacementError(f"{name}: {what} is {v!r}, not a number")
        return round(v * scale / 100, PIXEL_DECIMALS) + 0.0  # + 0.0: no -0.0

    bbox: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    if kind == "rectangle":
        x, y = px(value.get("x"), w, "x"), px(value.get("y"), h, "y")
        bw, bh = px(value.get("width"), w, "width"), px(value.get("height"), h, "height")
        if bw <= 0 or bh <= 0:
            raise PlacementError(f"{name} is an empty rectangle ({bw} × {bh} px); delete it in Label Studio")
        rot = value.get("rotation") or 0
        if not _number(rot):
            raise PlacementError(f"{name}: rotation is {rot!r}, not a number")
        if rot % 360 == 0:
            bbox = (x, y, bw, bh)
        else:
            c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
            polygon = tuple((round(x + dx * c - dy * s, PIXEL_DECIMALS) + 0.0,
                             round(y + dx * s + dy * c, PIXEL_DECIMALS) + 0.0)
                            for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh)))
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            bbox = (min(xs), min(ys), round(max(xs) - min(xs), PIXEL_DECIMALS), round(max(ys) - min(ys),
                                                                                      PIXEL_DECIMALS))
    else:
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3 or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise PlacementError(f"{name} is a polygon of fewer than 3 points; delete it in Label Studio")
        polygon = tuple((px(p[0], w, "a point's x"), px(p[1], h, "a point's y")) for p in points)
    return [Annotation(n, bbox, polygon) for n in names]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
