"""The dataset layouts (datasets/formats) read back by the readers their users use: Hugging
Face `datasets` (imagefolder), pycocotools, the webdataset package, Ultralytics' documented
YOLO structure, VOC XML; byte-identical renders; one clear line for bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hoardfs.datasets.formats import (
    FORMATS,
    TarMember,
    TarShard,
    Tree,
    get,
    plan_paths,
    tar_bytes,
    tar_layout,
    tar_size,
    template_format,
    write_tar,
)
from hoardfs.datasets.formats.jpeg import prepare
from hoardfs.datasets.layouts import LayoutError, PlacementError, parse
from hoardfs.datasets.model import Annotation, Sample, annotations_from_ls, canonical
from tests.helpers import REALDATA, needs_realdata

REPO = Path(__file__).resolve().parents[1]
#: Hugging Face `datasets` lives in its own venv (`make readers`): in a process started in the
#: checkout, and in pytest (the repo root on sys.path), `import datasets` finds the checkout's
#: `datasets/` folder (hoardfs.datasets' source) before an installed HF `datasets`
READERS = Path(os.environ.get("HOARD_TEST_READERS") or REPO / "var" / "readers" / "venv")
needs_hf = pytest.mark.needs((READERS / "bin" / "python").exists(),
                             f"HUGGING FACE DATASETS MISSING at {READERS}: make readers")
CLASSES = ["dog", "cat", "bird"]  # pinned, not sorted: index = position


def _image(i: int, fmt: str) -> tuple[bytes, int, int]:
    w, h = 40 + 7 * i, 30 + 5 * i
    img = Image.new("RGB", (w, h), (30 * i % 256, 90, 200 - 10 * i))
    img.paste((255, 255, 0), (5, 5, 15, 12))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue(), w, h


def dataset(n: int = 9, boxes: bool = True, polygon: bool = False) -> tuple[list[Sample], dict[str, bytes]]:
    """n real images (JPEG and PNG) over three classes and two splits, each with a box or two
    (and one polygon when asked), as the plan gives them."""
    samples, blobs = [], {}
    for i in range(n):
        data, w, h = _image(i, "PNG" if i % 3 == 0 else "JPEG")
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        cls = CLASSES[i % 3]
        anns: tuple[Annotation, ...] = ()
        if boxes:
            anns = (Annotation(cls, (5.0, 5.0, 10.0, 7.0), None),)
            if i % 2:
                anns += (Annotation("cat", (1.5, 2.25, w / 2, h / 3), None),)
            if polygon and i == 4:
                anns += (Annotation("bird", None, ((2.0, 2.0), (20.0, 3.0), (11.0, 18.0))),)
        samples.append(Sample(path="", sha256=sha, size=len(data), ext=".png" if i % 3 == 0 else ".jpg",
                              key=sha[:16], node_id=100 + i, root_id=10 + i // 2, lineage=(100 + i, 10 + i // 2),
                              source_url=f"https://example.org/p/{i // 2}", date=f"2024-05-0{1 + i % 9}",
                              labels={"class": (cls,), "note": ("x",)}, cls=cls, class_index=CLASSES.index(cls),
                              split="val" if i in (2, 5, 7) else "train", annotations=anns, width=w, height=h))
    return samples, blobs


DOC = {"name": "pets", "classes": CLASSES}


def voc_ready(samples: list[Sample], blobs: dict[str, bytes]) -> list[Sample]:
    """The samples as a voc build gives them to the format (hoardfs.datasets.formats.jpeg.prepare):
    size and depth read from each image, each PNG converted — its JPEG added to `blobs`."""
    def put_many(datas: list[bytes]) -> list[str]:
        shas = [hashlib.sha256(d).hexdigest() for d in datas]
        blobs.update(zip(shas, datas, strict=True))
        return shas
    return prepare("pets", samples, blobs.__getitem__, put_many)


def materialise(tree: Tree, blobs: dict[str, bytes], root: Path) -> str:
    """Write a tree as the builder would (stored files from `blobs`); the sha256 of it all."""
    whole = hashlib.sha256()
    items: list[tuple[str, bytes]] = [(f.path, blobs[f.sha256]) for f in tree.files]
    items += [(g.path, g.data) for g in tree.generated]
    items += [(t.path, tar_bytes(t, blobs.__getitem__)) for t in tree.tars]
    for path, data in sorted(items):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        whole.update(f"{path}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return whole.hexdigest()


def hf_load(root: Path, tmp_path: Path) -> dict:
    """`datasets.load_dataset("imagefolder", data_dir=root)`, in the readers venv, offline:
    per split, each row's image size and its label columns."""
    script = """
import json, sys
from datasets import ClassLabel, load_dataset
ds = load_dataset("imagefolder", data_dir=sys.argv[1])
out = {}
for split, part in ds.items():
    label = part.features.get("label")
    rows = []
    for row in part:
        r = {k: v for k, v in row.items() if k != "image"}
        r["size"] = list(row["image"].size)
        if isinstance(label, ClassLabel):
            r["label_name"] = label.int2str(row["label"])
        rows.append(r)
    out[split] = rows
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # cwd away from the repository: its `datasets` package must not shadow Hugging Face's
    r = subprocess.run([str(READERS / "bin" / "python"), "-c", script, str(root)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


# -- the manifest line and Label Studio's regions --------------------------------------------

def test_sample_manifest_line_round_trips():
    """A Sample written as its manifest line and read back is the same Sample; the line is canonical."""
    samples, _ = dataset(3, polygon=True)
    for s in plan_paths(FORMATS["coco"], samples):
        line = canonical(s.to_json())
        assert Sample.from_json(json.loads(line)) == s
        assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert s.path == f"images/{s.split}/{s.key}{s.ext}"


def test_annotations_from_ls_the_documented_example():
    """docs/actions.md's rectangle (percent of a 451 × 300 image) comes out in pixels."""
    value = ('{"annotation":12,"image_rotation":0,"original_height":300,"original_width":451,"region":"r1",'
             '"type":"rectanglelabels","value":{"height":40,"rectanglelabels":["cat"],"rotation":0,"width":30,'
             '"x":10.5,"y":20.25}}')
    choice = '{"type":"choices","value":{"choices":["good"]},"original_width":451,"original_height":300}'
    assert annotations_from_ls([value, choice]) == (Annotation("cat", (47.355, 60.75, 135.3, 120.0), None),)


def test_annotations_from_ls_rotated_rectangle_and_two_labels():
    """A rotated rectangle gives its corners and their enclosing box; two names give two annotations."""
    region = {"type": "rectanglelabels", "original_width": 200, "original_height": 100, "image_rotation": 0,
              "value": {"x": 10, "y": 10, "width": 10, "height": 20, "rotation": 90,
                        "rectanglelabels": ["dog", "cat"]}}
    anns = annotations_from_ls([region])
    assert [a.label for a in anns] == ["cat", "dog"]
    assert anns[0].polygon == ((20.0, 10.0), (20.0, 30.0), (0.0, 30.0), (0.0, 10.0))
    assert anns[0].bbox == (0.0, 10.0, 20.0, 20.0)


@needs_realdata
def test_annotations_from_ls_a_real_export():
    """A real Label Studio export's rectangle and polygon convert; its keypoints are skipped."""
    task = json.loads((REALDATA / "labelstudio" / "ls_export_rect_polygon_keypoint.json").read_text())[0]
    values = [canonical({k: r[k] for k in ("type", "value", "original_width", "original_height", "image_rotation")}
                        | {"region": r["id"]}) for r in task["annotations"][0]["result"]]
    anns = annotations_from_ls(values)
    rect = next(r for r in task["annotations"][0]["result"] if r["type"] == "rectanglelabels")
    box = next(a for a in anns if a.label == "rectangle_label")
    assert box.bbox == pytest.approx((rect["value"]["x"] * 5, rect["value"]["y"] * 3.2, rect["value"]["width"] * 5,
                                      rect["value"]["height"] * 3.2), abs=1e-3)
    poly = next(a for a in anns if a.label == "polygon_label")
    assert poly.polygon is not None and len(poly.polygon) == 3 and poly.bbox is None
    assert {a.label for a in anns} == {"rectangle_label", "polygon_label"}


@pytest.mark.parametrize("region, needle", [
    ({"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["a"]}},
     "no original_width"),
    ({"type": "rectanglelabels", "original_width": 9, "original_height": 9, "image_rotation": 90,
      "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["a"]}}, "rotated by 90"),
    ({"type": "polygonlabels", "original_width": 9, "original_height": 9,
      "value": {"points": [[1, 1], [2, 2]], "polygonlabels": ["a"]}}, "fewer than 3 points"),
    ({"type": "rectanglelabels", "original_width": 9, "original_height": 9,
      "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": []}}, "no class name"),
    ("{not json", "not JSON"),
])
def test_annotations_from_ls_refuses_what_it_cannot_convert(region, needle):
    """A region that cannot become pixels is one line naming the sample and what to do."""
    with pytest.raises(PlacementError, match=needle) as e:
        annotations_from_ls([region], who="node 7")
    assert "node 7" in str(e.value) and "\n" not in str(e.value)


# -- each layout, read by its readers --------------------------------------------------------

def _expected(samples: list[Sample]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for s in samples:
        out.setdefault(s.split, []).append((s.sha256, s.cls or ""))
    return {k: sorted(v) for k, v in out.items()}


@needs_hf
@pytest.mark.services  # starts the readers venv's Python
def test_imagefolder_read_by_hugging_face(tmp_path):
    """`<split>/<class>/<file>`: load_dataset("imagefolder") finds both splits, every image and its class."""
    samples, blobs = dataset()
    materialise(get("imagefolder").render(samples, DOC, {}), blobs, tmp_path / "ds")
    got = hf_load(tmp_path / "ds", tmp_path)
    assert set(got) == {"train", "validation"}
    sizes = {s.sha256: [s.width, s.height] for s in samples}
    for split, hf in (("train", "train"), ("val", "validation")):
        want = sorted((sizes[sha], cls) for sha, cls in _expected(samples)[split])
        assert sorted((r["size"], r["label_name"]) for r in got[hf]) == want


@needs_hf
@pytest.mark.services  # starts the readers venv's Python
def test_hf_imagefolder_read_by_hugging_face(tmp_path):
    """Split dirs with their own metadata.jsonl: every image with its class index, name and sha256."""
    samples, blobs = dataset()
    tree = get("hf-imagefolder").render(samples, DOC, {})
    assert {g.path for g in tree.generated} == {"train/metadata.jsonl", "val/metadata.jsonl"}
    materialise(tree, blobs, tmp_path / "ds")
    got = hf_load(tmp_path / "ds", tmp_path)
    assert set(got) == {"train", "validation"}
    for split, hf in (("train", "train"), ("val", "validation")):
        rows = got[hf]
        assert sorted((r["sha256"], r["class"]) for r in rows) == _expected(samples)[split]
        assert all(CLASSES[r["label"]] == r["class"] for r in rows)
        assert all(r["size"] == [s.width, s.height] for r in rows for s in samples if s.sha256 == r["sha256"])


def test_coco_read_by_pycocotools(tmp_path):
    """instances_<split>.json: pycocotools indexes every image, box and category; ids are the pinned index + 1."""
    from pycocotools.coco import COCO  # deferred: a test-only reader
    samples, blobs = dataset(polygon=True)
    materialise(get("coco").render(samples, DOC, {}), blobs, tmp_path)
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "annotations" / f"instances_{split}.json"))
        mine = [s for s in samples if s.split == split]
        assert sorted(coco.getImgIds()) == sorted(s.node_id for s in mine)
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "dog", 2: "cat", 3: "bird"}
        for s in mine:
            img = coco.loadImgs(s.node_id)[0]
            assert (tmp_path / "images" / split / img["file_name"]).read_bytes() == blobs[s.sha256]
            assert (img["width"], img["height"]) == (s.width, s.height)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=s.node_id))
            assert sorted((coco.loadCats(a["category_id"])[0]["name"], tuple(a["bbox"])) for a in anns) == sorted(
                (a.label, a.box()) for a in s.annotations)
            for a in anns:
                if a["segmentation"]:
                    assert coco.annToMask(a).sum() > 0  # the polygon rasterises


def _ultralytics_check(root: Path) -> dict[str, list[tuple[str, list[list[float]]]]]:
    """Ultralytics' documented YOLO structure, checked as ultralytics.data.utils does it
    (check_det_dataset, img2label_paths, verify_image_label): data.yaml with train and val and
    names (index → name), an empty `path` meaning the yaml's directory; label files found by
    replacing the last /images/ with /labels/ and the suffix with .txt; 5 columns or (any
    line longer than 6) segments only; coordinates within 0–1 (1 % tolerance); class < nc;
    images of a known type, at least 10 px. Returns per split (image path, label rows)."""
    data = yaml.safe_load((root / "data.yaml").read_text())
    assert "train" in data and "val" in data
    names = data["names"]
    assert isinstance(names, dict) and sorted(names) == list(range(len(names)))
    base = Path(data.get("path") or root)
    out = {}
    for split in ("train", "val", "test"):
        if not data.get(split):
            continue
        files = sorted(p for p in (base / data[split]).rglob("*.*")
                       if p.suffix[1:].lower() in {"bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp"})
        rows = []
        for img in files:
            sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
            label = Path(sb.join(str(img).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")
            with Image.open(img) as im:
                im.verify()
                assert min(im.size) > 9
            lb = [x.split() for x in label.read_text().strip().splitlines() if len(x)] if label.is_file() else []
            if any(len(x) > 6 for x in lb):
                assert all(len(x) >= 7 and len(x) % 2 == 1 for x in lb), f"{label}: a box among segments"
            else:
                assert all(len(x) == 5 for x in lb), label
            for x in lb:
                v = np.array(x, dtype=np.float32)
                assert v[1:].max() <= 1.01 and v.min() >= -0.01 and int(v[0]) < len(names)
            rows.append((str(img.relative_to(root)), [[float(c) for c in x] for x in lb]))
        out[split] = rows
    return out


@pytest.mark.parametrize("polygon", [False, True], ids=["detect", "segment"])
def test_yolo_meets_ultralytics_structure(tmp_path, polygon):
    """Every image has its label file; boxes normalised (or segments only); names map the pinned indices."""
    samples, blobs = dataset(polygon=polygon)
    materialise(get("yolo").render(samples, DOC, {}), blobs, tmp_path)
    got = _ultralytics_check(tmp_path)
    assert yaml.safe_load((tmp_path / "data.yaml").read_text())["names"] == dict(enumerate(CLASSES))
    for split in ("train", "val"):
        mine = {f"images/{s.split}/{s.key}{s.ext}": s for s in samples if s.split == split}
        assert sorted(p for p, _ in got[split]) == sorted(mine)
        for path, rows in got[split]:
            s = mine[path]
            assert sorted(CLASSES[int(r[0])] for r in rows) == sorted(a.label for a in s.annotations)
            if not polygon:  # the box of the class's own annotation, in pixels again
                x, y, w, h = 5.0, 5.0, 10.0, 7.0
                want = [CLASSES.index(s.cls), (x + w / 2) / s.width, (y + h / 2) / s.height, w / s.width, h / s.height]
                assert any(r == pytest.approx(want, abs=1e-5) for r in rows)


def test_voc_read_with_elementtree(tmp_path):
    """Annotations/<key>.xml parse; each object's name and 1-based box; ImageSets list each split's keys."""
    samples, blobs = dataset()
    samples = voc_ready(samples, blobs)
    materialise(get("voc").render(samples, DOC, {}), blobs, tmp_path)
    for split in ("train", "val"):
        keys = (tmp_path / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert sorted(keys) == sorted(s.key for s in samples if s.split == split)
    for s in samples:
        root = ET.parse(tmp_path / "Annotations" / f"{s.key}.xml").getroot()
        assert root.findtext("filename") == f"{s.key}.jpg" and root.findtext("size/depth") == "3"
        with Image.open(tmp_path / "JPEGImages" / f"{s.key}.jpg") as im:
            assert im.format == "JPEG" and im.size == (s.width, s.height)
        if s.ext == ".jpg":  # a JPEG is written as stored; another image as the JPEG made of it
            assert s.converted is None and (tmp_path / "JPEGImages" / f"{s.key}.jpg").read_bytes() == blobs[s.sha256]
        else:
            assert s.converted is not None and s.converted[1] == (tmp_path / "JPEGImages" / f"{s.key}.jpg").stat().st_size
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (s.width, s.height)
        objs = sorted((o.findtext("name"), *(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
                      for o in root.iter("object"))
        assert (s.cls, 6, 6, 15, 12) in objs  # x 5 w 10 → pixels 6…15 (1-based)
        assert sorted(o[0] for o in objs) == sorted(a.label for a in s.annotations)


# tier: webdataset imports torch where it is installed (`make search`), and torch starts a process
@pytest.mark.services
@pytest.mark.parametrize("options, shards", [({}, 2), ({"shard_samples": 2}, 3 + 2), ({"shard_bytes": 4096}, 9)])
def test_webdataset_read_by_the_webdataset_package(tmp_path, options, shards):
    """The webdataset package iterates every shard: each sample once, with its image, class index and json."""
    import webdataset as wds  # deferred: a test-only reader
    samples, blobs = dataset()
    tree = get("webdataset").render(samples, DOC, options)
    assert len(tree.tars) == shards
    materialise(tree, blobs, tmp_path)
    urls = sorted(str(tmp_path / t.path) for t in tree.tars)
    seen = {}
    for row in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        seen[row["__key__"]] = row
    assert sorted(seen) == sorted(s.key for s in samples)
    for s in samples:
        row = seen[s.key]
        assert row[s.ext[1:]] == blobs[s.sha256]
        assert int(row["cls"]) == s.class_index
        meta = json.loads(row["json"])
        assert (meta["class"], meta["split"], meta["node_id"]) == (s.cls, s.split, s.node_id)
    for t in tree.tars:
        assert t.path.startswith(("train-", "val-"))
        with tarfile.open(tmp_path / t.path) as tar:
            assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar} == {(0, 0, 0, "", "", 0o644)}


def test_template_format_places_under_the_split():
    """A docs/layouts.md template is a format: `<split>/<template>`, sidecars the manifest line."""
    samples, _ = dataset(4)
    fmt = template_format(parse("{label:class|none}/{sha256}{ext}", "mine", sidecars=True))
    tree = fmt.render(samples, DOC, {})
    assert sorted(f.path for f in tree.files) == sorted(f"{s.split}/{s.cls}/{s.sha256}{s.ext}" for s in samples)
    assert all(json.loads(g.data)["sha256"] in g.path for g in tree.generated)
    assert [fmt.place(s) for s in samples] == [f"{s.split}/{s.cls}/{s.sha256}{s.ext}" for s in samples]
    with pytest.raises(LayoutError, match=r"\{batch\} is not a field of a dataset sample"):
        template_format(parse("{batch}/{sha256}"))
    with pytest.raises(LayoutError, match="not one of imagefolder"):
        get("nope")
    with pytest.raises(LayoutError, match=r"layout by_batch: \{batch\}, \{orig_path\}, \{source\} is not a field"):
        get("by_batch")


# -- byte for byte ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [*FORMATS, "by_label"])
def test_render_is_byte_identical_in_any_order(tmp_path, layout):
    """The same samples in another order (and another call) give the same tree, tars included."""
    samples, blobs = dataset(polygon=True)
    fmt = get(layout)
    if layout == "voc":
        samples = voc_ready(samples, blobs)
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    first = materialise(fmt.render(samples, DOC, {"shard_samples": 3}), blobs, tmp_path / "a")
    again = materialise(fmt.render(list(reversed(shuffled)), DOC, {"shard_samples": 3}), blobs, tmp_path / "b")
    assert first == again
    assert [s.path for s in plan_paths(fmt, samples, {"shard_samples": 3})] == [
        s.path for s in plan_paths(fmt, shuffled, {"shard_samples": 3})]


def test_write_tar_is_the_same_bytes_and_checks_the_store():
    """write_tar's bytes depend on the members only; a store giving other bytes is refused."""
    samples, blobs = dataset(3)
    shard = get("webdataset").render(samples, DOC, {}).tars[0]
    out = io.BytesIO()
    write_tar(shard, blobs.__getitem__, out)
    assert out.getvalue() == tar_bytes(shard, dict(blobs).__getitem__)
    with pytest.raises(PlacementError, match="the store gave other bytes"):
        tar_bytes(shard, lambda sha: blobs[sha][:-1] + b"\0")


# -- bad input: one clear line ---------------------------------------------------------------

def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("layout", ["imagefolder", "hf-imagefolder"])
def test_a_sample_without_a_class_is_refused(layout):
    samples, _ = dataset(3)
    samples[1] = replace(samples[1], cls=None, class_index=None)
    with pytest.raises(PlacementError) as e:
        get(layout).render(samples, DOC, {})
    assert f"node {samples[1].node_id}" in _one_line(e) and "has no class" in str(e.value)


@pytest.mark.parametrize("layout", ["coco", "yolo", "voc"])
def test_a_detection_layout_without_boxes_is_refused(layout):
    samples, _ = dataset(4, boxes=False)
    with pytest.raises(PlacementError, match="needs boxes") as e:
        get(layout).render(samples, DOC, {})
    _one_line(e)
    samples, _ = dataset(4)
    samples[0] = replace(samples[0], width=None)
    with pytest.raises(PlacementError, match="no width/height") as e:
        get(layout).render(samples, DOC, {})


@pytest.mark.parametrize("cls, needle", [("..", "leave the output directory"), ("../b", "a '/'"),
                                         ("bad\x1bname", "control characters"), ("x\u202egpj.exe", "bidirectional")])
def test_a_hostile_class_name_is_refused(cls, needle):
    samples, _ = dataset(3)
    samples = [replace(s, cls=cls, class_index=0) for s in samples]
    for layout in ("imagefolder", "hf-imagefolder", "webdataset"):
        with pytest.raises(PlacementError, match=needle) as e:
            get(layout).render(samples, {"classes": [cls]}, {})
        _one_line(e)


def test_classes_one_but_for_case_are_refused():
    """Classes `Cat` and `cat` (two annotators' spellings): their files never share a path, but
    their directories are one on a case-insensitive consumer (macOS, exFAT, a Windows share),
    which merges the two classes silently; refused, naming both (the old code built the tree).
    A template that says `case_sensitive = true` keeps them."""
    samples, _ = dataset(6)
    cased = [replace(s, cls="Cat", class_index=0) if s.cls == "cat" else replace(s, cls="cat", class_index=1)
             for s in samples]
    doc = {"name": "pets", "classes": ["Cat", "cat"]}
    for layout in ("imagefolder", "by_label"):
        with pytest.raises(PlacementError, match=r"directories '(train|val)/Cat' and '(train|val)/cat', one directory "
                                                 "but for case") as e:
            get(layout).render([replace(s, labels={"class": (s.cls,)}) for s in cased], doc, {})
        _one_line(e)
    linux = template_format(parse("{label:class}/{sha256}{ext}", "linux", case_sensitive=True))
    tree = linux.render([replace(s, labels={"class": (s.cls,)}) for s in cased], doc, {})
    assert {p.split("/")[1] for p in tree.paths()} == {"Cat", "cat"}


def test_splits_a_reader_would_drop_are_refused():
    samples, _ = dataset(6)
    holdout = [replace(s, split="holdout") if s.split == "val" else s for s in samples]
    with pytest.raises(PlacementError, match="'holdout' is not a directory name Hugging Face") as e:
        get("hf-imagefolder").render(holdout, DOC, {})
    _one_line(e)
    with pytest.raises(PlacementError, match="Ultralytics reads the splits train and val"):
        get("yolo").render(holdout, DOC, {})
    gif = [replace(samples[0], ext=".gif")] + samples[1:]
    with pytest.raises(PlacementError, match="'.gif' is not an image the readers of layout imagefolder load"):
        get("imagefolder").render(gif, DOC, {})
    twice = samples + [replace(samples[0], node_id=999)]
    with pytest.raises(PlacementError, match="share a sample key"):
        get("imagefolder").render(twice, DOC, {})
    wrong = [replace(samples[0], class_index=2)] + samples[1:]
    with pytest.raises(PlacementError, match="has index 2, but the class map has 'bird'"):
        get("coco").render(wrong, DOC, {})


def test_write_tar_streams_one_member_at_a_time_in_pieces():
    """A shard of many members written from pieces (as the builder streams them from the store):
    the same bytes as from whole blobs, `tar_size` exact, and each member's pieces are drawn
    to the end before the next member is asked for — one member in memory at a time."""
    samples, blobs = dataset(9)
    shard = get("webdataset").render(samples, DOC, {}).tars[0]
    assert sum(1 for m in shard.members if m.sha256) > 3
    open_now: list[str] = []
    asked: list[str] = []

    def pieces(sha: str):
        assert not open_now, f"{sha[:12]} asked for while {open_now[0][:12]} is not finished"
        asked.append(sha)
        open_now.append(sha)
        data = blobs[sha]
        for i in range(0, len(data), 50):
            yield data[i:i + 50]
        open_now.pop()

    out = io.BytesIO()
    write_tar(shard, pieces, out)
    assert out.getvalue() == tar_bytes(shard, blobs.__getitem__)
    assert len(out.getvalue()) == tar_size(shard)
    assert asked == [m.sha256 for m in shard.members if m.sha256]


def test_tar_layout_places_every_byte_write_tar_writes():
    """The builder writes a shard from its layout (headers fixed, members at their offsets, in
    the order the disks deliver them): those bytes are write_tar's, for every shard of a render,
    a name long enough for a pax record, a non-ASCII name, an empty member and one made here."""
    samples, blobs = dataset(9)
    shards = get("webdataset").render(samples, DOC, {"shard_samples": 4}).tars
    sha, data = next(iter(blobs.items()))
    odd = TarShard("train-000009.tar", (TarMember("k" * 150 + ".jpg", sha, None, len(data)),
                                        TarMember("e.txt", None, b"", 0), TarMember("f.json", None, b'{"a": 1}', 8),
                                        TarMember("\u00fcber.jpg", sha, None, len(data))))
    for shard in [*shards, odd]:
        lay = tar_layout(shard)
        assert lay.path == shard.path and lay.size == tar_size(shard)
        buf = bytearray(lay.size)
        for off, piece in lay.fixed:
            buf[off:off + len(piece)] = piece
        for off, member, size in lay.objects:
            assert len(blobs[member]) == size
            buf[off:off + size] = blobs[member]
        assert bytes(buf) == tar_bytes(shard, blobs.__getitem__), shard.path
    assert len(tar_layout(odd).objects) == 2
