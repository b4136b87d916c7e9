"""Detection layouts: COCO, Ultralytics YOLO, Pascal VOC. Boxes and polygons come from the
samples' annotations, in pixels of the original image; each format writes them its own way."""

from __future__ import annotations

import json
import math
from xml.sax.saxutils import escape

from hoardfs.datasets.formats.base import (
    Format,
    Generated,
    StoredFile,
    Tree,
    check_name,
    check_samples,
    class_names,
    finish,
    json_bytes,
    who,
)
from hoardfs.datasets.formats.jpeg import JPEG_EXTS
from hoardfs.datasets.layouts import PlacementError
from hoardfs.datasets.model import Annotation, Sample


def _indexed(fmt: Format, samples: list[Sample], doc: dict) -> tuple[list[Sample], dict[str, int]]:
    """The samples in order and the class map (name → index), after the checks a detection
    layout needs: the dataset carries annotations, every annotation has a shape and a class
    in the map."""
    ordered = check_samples(fmt, samples)
    names = class_names(ordered, doc)
    if not names:  # no class map, no image classes: the boxes' own names, sorted
        names = sorted({a.label for s in ordered for a in s.annotations})
        for n in names:
            check_name(n, "annotation class")
    index = {n: i for i, n in enumerate(names)}
    if ordered and not any(s.annotations for s in ordered):
        raise PlacementError(f"layout {fmt.name} needs boxes, and none of the {len(ordered)} samples has an "
                             "annotation; name the label key that holds them in the spec (`annotations = "
                             "\"ls:box\"`) or use imagefolder")
    for s in ordered:
        for a in s.annotations:
            if a.box() is None:
                raise PlacementError(f"{who(s)}: an annotation of {a.label!r} has neither a box nor a polygon")
            if a.label not in index:
                raise PlacementError(f"{who(s)}: annotation class {a.label!r} is not in the class map "
                                     f"({', '.join(names[:8])}); add it to `classes` in the spec")
    return ordered, index


def _split_tree(fmt: Format, ordered: list[Sample]) -> Tree:
    return Tree(files=[StoredFile(fmt.place(s), s.sha256, s.size) for s in ordered])


def _by_split(ordered: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in ordered:
        out.setdefault(s.split, []).append(s)
    return out


class Coco:
    """`images/<split>/<key><ext>` and `annotations/instances_<split>.json`: COCO detection
    (bbox `[x, y, w, h]` in pixels) and segmentation (`[[x1, y1, …]]`) when a polygon is given;
    category ids are the class map's index + 1 (0 is background to many COCO tools); an image's
    id is its node id (stable across builds), an annotation's its rank in the file from 1."""

    name = "coco"
    needs_class = False
    needs_size = True
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"images/{sample.split}/{sample.key}{sample.ext}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        ordered, index = _indexed(self, samples, doc)
        tree = _split_tree(self, ordered)
        categories = [{"id": i + 1, "name": n, "supercategory": ""} for n, i in index.items()]
        for split, group in _by_split(ordered).items():
            images: list[dict] = []
            anns: list[dict] = []
            for s in sorted(group, key=lambda s: s.node_id):
                images.append({"id": s.node_id, "file_name": f"{s.key}{s.ext}", "width": s.width,
                               "height": s.height})
                for a in s.annotations:
                    x, y, w, h = a.box()  # type: ignore[misc]
                    seg = [[c for p in a.polygon for c in p]] if a.polygon else []
                    anns.append({"id": len(anns) + 1, "image_id": s.node_id, "category_id": index[a.label] + 1,
                                 "bbox": [x, y, w, h], "area": _area(a), "iscrowd": 0, "segmentation": seg})
            coco = {"info": {"description": str(doc.get("name", "")), "version": "", "year": 0},
                    "licenses": [], "images": images, "annotations": anns, "categories": categories}
            tree.generated.append(Generated(f"annotations/instances_{split}.json", json_bytes(coco)))
        return finish(tree, self.name, options.get("prefix", ""))


def _area(a: Annotation) -> float:
    if a.polygon:
        pts = a.polygon
        twice = sum(pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
                    for i in range(len(pts)))
        return round(abs(twice) / 2, 3)
    _, _, w, h = a.box()  # type: ignore[misc]
    return round(w * h, 3)


#: the splits an Ultralytics data.yaml names (ultralytics.data.utils.check_det_dataset: train and
#: val are required)
YOLO_SPLITS = ("train", "val", "test")


class Yolo:
    """Ultralytics YOLO: `images/<split>/<key><ext>`, `labels/<split>/<key>.txt` (one line per
    object, `class cx cy w h` normalised to 0–1; when any annotation is a polygon, every line is
    a polygon `class x1 y1 … xn yn` — Ultralytics reads a file with any line longer than 5 as
    segments only, so a box is written as its four corners), and `data.yaml`: `path` left
    empty (Ultralytics then takes the yaml's own directory: the tree can move), the splits, and
    `names` as a mapping index → name. A sample without annotation gets an empty label file (a
    background image). Coordinates are clamped to the image (Ultralytics refuses > 1.01)."""

    name = "yolo"
    needs_class = False
    needs_size = True
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"images/{sample.split}/{sample.key}{sample.ext}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        ordered, index = _indexed(self, samples, doc)
        splits = _by_split(ordered)
        if ordered and (not {"train", "val"} <= set(splits) or not set(splits) <= set(YOLO_SPLITS)):
            raise PlacementError(f"layout {self.name}: Ultralytics reads the splits train and val (and test); this "
                                 f"dataset has {', '.join(sorted(splits))} — name the [split] ratios train/val[/test]")
        segment = any(a.polygon for s in ordered for a in s.annotations)
        tree = _split_tree(self, ordered)
        for s in ordered:
            lines = [_yolo_line(a, index[a.label], s, segment) for a in s.annotations]
            tree.generated.append(Generated(f"labels/{s.split}/{s.key}.txt", "".join(f"{x}\n" for x in lines).encode()))
        yaml = ["# Ultralytics YOLO dataset written by hoardfs; `path` is empty: the directory of this file",
                "path:"]
        yaml += [f"{k}: images/{k}" for k in YOLO_SPLITS if k in splits]
        yaml += ["names:"] + [f"  {i}: {_yaml_str(n)}" for n, i in index.items()]
        tree.generated.append(Generated("data.yaml", ("\n".join(yaml) + "\n").encode()))
        return finish(tree, self.name, options.get("prefix", ""))


def _yaml_str(s: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are a subset of YAML's)."""
    return json.dumps(s, ensure_ascii=False)


def _norm(v: float, size: int) -> str:
    return f"{min(max(v / size, 0.0), 1.0):.6f}"


def _yolo_line(a: Annotation, cls: int, s: Sample, segment: bool) -> str:
    w, h = s.width or 1, s.height or 1
    if segment:
        pts = a.polygon
        if not pts:
            x, y, bw, bh = a.box()  # type: ignore[misc]
            pts = ((x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh))
        return " ".join([str(cls)] + [f"{_norm(px, w)} {_norm(py, h)}" for px, py in pts])
    x, y, bw, bh = a.box()  # type: ignore[misc]
    x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
    x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    return f"{cls} {_norm((x0 + x1) / 2, w)} {_norm((y0 + y1) / 2, h)} {_norm(x1 - x0, w)} {_norm(y1 - y0, h)}"


class Voc:
    """Pascal VOC as torchvision's `VOCDetection` reads it: `JPEGImages/<key>.jpg` (a JPEG
    always — a sample that is not one is converted at build, hoardfs.datasets.formats.jpeg, and
    the manifest records both sha256s: `sha256` the stored original's, `converted` the JPEG
    written), `Annotations/<key>.xml` (`size` and `depth` as the image has them; `bndbox` in
    VOC's 1-based whole pixels: xmin = floor(x) + 1, xmax = ceil(x + w), clamped to the image)
    and `ImageSets/Main/<split>.txt` (the keys of each split, one a line)."""

    name = "voc"
    needs_class = False
    needs_size = True
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"JPEGImages/{sample.key}.jpg"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        ordered, _ = _indexed(self, samples, doc)
        tree = Tree()
        for s in ordered:
            if s.converted is None and s.ext.lower() not in JPEG_EXTS:
                raise PlacementError(f"{who(s)}: its file is {s.ext or '(unknown)'!r}, not a JPEG, and no JPEG was "
                                     f"made of it; layout {self.name} holds JPEG files only — build the dataset "
                                     "again (hoard dataset build: convert = true converts it)")
            sha, size = s.written
            tree.files.append(StoredFile(self.place(s), sha, size))
            tree.generated.append(Generated(f"Annotations/{s.key}.xml", _voc_xml(s, str(doc.get("name", "")))))
        for split, group in _by_split(ordered).items():
            keys = sorted(s.key for s in group)
            tree.generated.append(Generated(f"ImageSets/Main/{split}.txt", "".join(f"{k}\n" for k in keys).encode()))
        return finish(tree, self.name, options.get("prefix", ""))


def _voc_xml(s: Sample, folder: str) -> bytes:
    w, h = s.width or 0, s.height or 0
    out = ["<annotation>", f"  <folder>{escape(folder)}</folder>", f"  <filename>{s.key}.jpg</filename>",
           "  <source><database>hoardfs</database></source>",
           f"  <size><width>{w}</width><height>{h}</height><depth>{s.depth or 3}</depth></size>",
           f"  <segmented>{0}</segmented>"]
    for a in s.annotations:
        x, y, bw, bh = a.box()  # type: ignore[misc]
        xmin, ymin = min(max(math.floor(x) + 1, 1), w), min(max(math.floor(y) + 1, 1), h)
        xmax, ymax = min(max(math.ceil(x + bw), xmin), w), min(max(math.ceil(y + bh), ymin), h)
        out += ["  <object>", f"    <name>{escape(a.label)}</name>", "    <pose>Unspecified</pose>",
                "    <truncated>0</truncated>", "    <difficult>0</difficult>",
                f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
                "  </object>"]
    out.append("</annotation>")
    return ("\n".join(out) + "\n").encode()
