"""Every dataset layout through the real path: images ingested (UA_1),
classes labelled with `hoard label add`, boxes and a polygon written as Label Studio `ls:box`
labels the way the AC5 round trip writes them (hoardfs.jobs.actions.labelstudio.annotations_to_labels
→ a write-intent), `hoard dataset build SPEC --here --json`, then the sealed tree at the
reported `path` read with the reader its users use (tests/test_dataset_formats.py's checks):
counts and labels match manifest.jsonl. A forced rebuild and a materialize after rm give the
same sha256 over the whole tree, tars included; a layout file's dataset is materialized after
the file is deleted; view mode read through the FUSE mount; the Python API once."""

from __future__ import annotations

import io
import json
import os
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hoardfs.adapters.synth import Spec
from hoardfs.fsd.outputs import seal
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions.labelstudio import SHA_KEY, annotations_to_labels
from hoardfs.sql.apply import apply_write_intent
from tests.test_dataset_formats import READERS, _ultralytics_check, hf_load
from tests.test_datasets import _hoard, tree_sha256
from tests.test_ingest import ingest_sample

pytestmark = pytest.mark.services  # ingests, runs `hoard` and the readers' processes

CLASSES = ("cat", "dog")
RATIOS = "train = 0.75, val = 0.25"


@pytest.fixture
def annotated(hoard_home: Path, pg, redis_conn):
    """A gallery batch ingested (real UA_1; its PNGs are real images), its images labelled
    class = cat | dog by `hoard label add`, and each given Label Studio regions as the AC5
    round trip stores them: a rectangle of its class, and on every third a polygon too."""
    cfg, _ = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=43, batches=1, items_per_batch=24, large_max_mb=1,
                                                            ready_signal=True, sources=("gallery",)))
    shas = [r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    assert len(shas) >= 8
    classes = {h: CLASSES[i % 2] for i, h in enumerate(shas)}
    for cls in CLASSES:
        res = _hoard(cfg, "label", "add", f"class={cls}", *[h for h in shas if classes[h] == cls])
        assert res.returncode == 0, res.stderr
    tasks = []
    with Store.open(cfg) as store:
        for i, h in enumerate(shas):
            with Image.open(io.BytesIO(store.get(h))) as im:
                w, ht = im.size
            result = [{"id": f"r{i}", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
                       "original_width": w, "original_height": ht, "image_rotation": 0,
                       "value": {"x": 10, "y": 12.5, "width": 50, "height": 40, "rotation": 0,
                                 "rectanglelabels": [classes[h]]}}]
            if i % 3 == 0:
                result.append({"id": f"p{i}", "from_name": "box", "to_name": "image", "type": "polygonlabels",
                               "original_width": w, "original_height": ht, "image_rotation": 0,
                               "value": {"points": [[20, 20], [80, 25], [50, 90]], "polygonlabels": ["cat"]}})
            tasks.append({"id": 100 + i, "data": {SHA_KEY: h}, "annotations": [{"id": 500 + i, "result": result}]})
    rows = annotations_to_labels(tasks)
    apply_write_intent(pg, {"key": "test:ls-round-trip", "labels": [{"node": h, "key": k, "value": v}
                                                                   for h, k, v in rows]})
    return cfg, shas, classes


def _spec(tmp: Path, name: str, layout: str, extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlayout = "{layout}"\nclass_label = "class"\n{extra}\n'
                    f'[selector]\nfile_types = ["png"]\n[split]\nratios = {{ {RATIOS} }}\nsalt = "s1"\n')
    return path


def _build(cfg, spec: Path, *args: str) -> dict:
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def _by_split(manifest: list[dict]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for m in manifest:
        out.setdefault(m["split"], []).append((m["sha256"], m["class"]))
    return {k: sorted(v) for k, v in out.items()}


# -- each layout read by its reader -----------------------------------------------------------

def read_hf(root: Path, manifest: list[dict], tmp: Path) -> None:
    got = hf_load(root, tmp)
    want = _by_split(manifest)
    assert set(got) == {"train", "validation"} == {"validation" if s == "val" else s for s in want}
    sizes = {}
    for m in manifest:  # each image's size as its file in the tree says
        with Image.open(root / m["path"]) as im:
            sizes[m["sha256"]] = list(im.size)
    for split, rows in got.items():
        mine = want["val" if split == "validation" else split]
        if "sha256" in rows[0]:  # hf-imagefolder: metadata.jsonl's columns
            assert sorted((r["sha256"], r["class"]) for r in rows) == mine
            assert all(r["size"] == sizes[r["sha256"]] for r in rows)
        else:  # imagefolder: the class from the directory
            assert sorted((tuple(r["size"]), r["label_name"]) for r in rows) == sorted(
                (tuple(sizes[h]), c) for h, c in mine)


def read_coco(root: Path, manifest: list[dict], _tmp: Path) -> None:
    from pycocotools.coco import COCO  # deferred: a test-only reader

    for split, mine in _by_split(manifest).items():
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        rows = {m["node_id"]: m for m in manifest if m["split"] == split}
        assert sorted(coco.getImgIds()) == sorted(rows) and len(rows) == len(mine)
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "cat", 2: "dog"}
        for nid, m in rows.items():
            img = coco.loadImgs(nid)[0]
            assert (root / "images" / split / img["file_name"]).stat().st_size == m["size"]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=nid))
            assert sorted(coco.loadCats(a["category_id"])[0]["name"] for a in anns) == sorted(
                a["label"] for a in m["annotations"])
            assert any(a["segmentation"] for a in anns) == any(a["polygon"] for a in m["annotations"])


def read_yolo(root: Path, manifest: list[dict], _tmp: Path) -> None:
    got = _ultralytics_check(root)
    assert yaml.safe_load((root / "data.yaml").read_text())["names"] == {0: "cat", 1: "dog"}
    by_path = {m["path"]: m for m in manifest}
    for split, rows in got.items():
        assert sorted(p for p, _ in rows) == sorted(m["path"] for m in manifest if m["split"] == split)
        for path, lines in rows:
            assert sorted(("cat", "dog")[int(r[0])] for r in lines) == sorted(
                a["label"] for a in by_path[path]["annotations"])


def read_voc(root: Path, manifest: list[dict], tmp: Path) -> None:
    """torchvision's VOCDetection loads each split: every sample's JPEG (the PNGs converted at
    build, the manifest naming the JPEG written) with its size and boxes."""
    from tests.test_dataset_voc import voc_detection  # deferred: it imports this module's neighbours

    for split, mine in _by_split(manifest).items():
        keys = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert sorted(keys) == sorted(m["key"] for m in manifest if m["split"] == split) and len(keys) == len(mine)
        by_key = {m["key"]: m for m in manifest if m["split"] == split}
        items = voc_detection(root, split, tmp)
        assert sorted(it["annotation"]["filename"] for it in items) == sorted(f"{k}.jpg" for k in by_key)
        for it in items:
            m = by_key[it["annotation"]["filename"][:-4]]
            assert it["size"] == [m["width"], m["height"]] and it["annotation"]["size"]["depth"] == str(m["depth"])
            assert sorted(o["name"] for o in it["annotation"]["object"]) == sorted(a["label"] for a in m["annotations"])
    for m in manifest:
        doc = ET.parse(root / "Annotations" / f"{m['key']}.xml").getroot()
        assert doc.findtext("filename") == f"{m['key']}.jpg" and m["converted"]  # the gallery's PNGs, converted
        assert (root / "JPEGImages" / doc.findtext("filename")).stat().st_size == m["converted"]["size"]
        assert (int(doc.findtext("size/width")), int(doc.findtext("size/height"))) == (m["width"], m["height"])


def read_webdataset(root: Path, manifest: list[dict], _tmp: Path) -> None:
    import webdataset as wds  # deferred: a test-only reader

    urls = sorted(str(p) for p in root.glob("*.tar"))
    assert urls and {m["path"].split("/", 1)[0] for m in manifest} == {Path(u).name for u in urls}
    seen = {row["__key__"]: row for row in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    assert sorted(seen) == sorted(m["key"] for m in manifest)
    for m in manifest:
        row = seen[m["key"]]
        assert len(row["png"]) == m["size"] and int(row["cls"]) == m["class_index"]
        assert json.loads(row["json"])["class"] == m["class"]
    for u in urls:  # a shard of many members, each stamped with nothing of the machine or the hour
        with tarfile.open(u) as tar:
            members = tar.getmembers()
            assert {(t.mtime, t.uid, t.gid, t.uname, t.gname) for t in members} == {(0, 0, 0, "", "")}
    counts = Counter(m["path"].split("/", 1)[0] for m in manifest)  # shard_samples = 5: shards of 5 samples
    assert max(counts.values()) == 5 and len(urls) > 2
    assert max(len(tarfile.open(u).getmembers()) for u in urls) == 15  # file, .json, .cls each


def read_template(root: Path, manifest: list[dict], _tmp: Path) -> None:
    for m in manifest:
        assert m["path"] == f"{m['split']}/{m['class']}/{m['sha256']}.png"
        assert (root / m["path"]).stat().st_size == m["size"]
        assert json.loads((root / (m["path"] + ".json")).read_bytes())["sha256"] == m["sha256"]


LAYOUTS = {
    "imagefolder": ("", read_hf),
    "hf-imagefolder": ("", read_hf),
    "coco": ('annotations = "ls:box"', read_coco),
    "yolo": ('annotations = "ls:box"', read_yolo),
    "voc": ('annotations = "ls:box"', read_voc),
    "webdataset": ("[webdataset]\nshard_samples = 5", read_webdataset),
    "template": ("", read_template),
}


def _layout(tmp: Path, layout: str) -> str:
    if layout != "template":
        return layout
    f = tmp / "mine.toml"  # a layout file of docs/layouts.md
    f.write_text('template = "{label:class|none}/{sha256}{ext}"\nsidecars = true\n')
    return str(f)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_built_read_rebuilt_and_materialized_byte_identical(annotated, tmp_path: Path,
                                                                       layout: str) -> None:
    """The CLI builds the layout from labelled images; its reader reads what the manifest says;
    a forced rebuild and a materialize after rm give the same tree, byte for byte."""
    if layout in ("imagefolder", "hf-imagefolder") and not (READERS / "bin" / "python").exists():
        pytest.skip(f"HUGGING FACE DATASETS MISSING at {READERS}: make readers")
    cfg, shas, classes = annotated
    extra, read = LAYOUTS[layout]
    name = layout.replace("-", "")
    spec = _spec(tmp_path, name, _layout(tmp_path, layout), extra)
    v1 = _build(cfg, spec)
    root = Path(v1["path"])
    assert v1["version"] == 1 and root == cfg.ssd.zone_path("3D") / f"{name}-v1"
    seal.check_sealed(root, verify=True)
    manifest = _manifest(root)
    assert sorted(m["sha256"] for m in manifest) == sorted(shas)
    assert all(m["class"] == classes[m["sha256"]] for m in manifest)
    assert Counter(m["split"] for m in manifest).keys() == {"train", "val"}
    if "annotations" in extra:  # the Label Studio regions, in pixels, with the image's size
        assert all(m["annotations"] and m["width"] and m["height"] for m in manifest)
    read(root, manifest, tmp_path)
    h = tree_sha256(root)
    v2 = _build(cfg, spec, "--force")
    assert v2["version"] == 2 and tree_sha256(Path(v2["path"])) == h
    if layout == "template":  # the template is recorded: the file is not needed any more
        Path(_layout(tmp_path, layout)).unlink()
        doc = json.loads((root / "dataset.json").read_bytes())
        assert doc["spec"]["template"] == {"name": "mine", "template": "{label:class|none}/{sha256}{ext}",
                                           "sidecars": True, "case_sensitive": False}
    rm = _hoard(cfg, "dataset", "rm", f"{name}@1", "--json")
    assert rm.returncode == 0 and not root.exists(), rm.stderr
    again = _hoard(cfg, "dataset", "materialize", f"{name}@1", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["path"] == str(root) and tree_sha256(root) == h
    read(root, _manifest(root), tmp_path)


def test_the_python_api_builds_what_the_cli_builds(annotated, tmp_path: Path) -> None:
    """hoardfs.datasets.api.build (what the GUI and scripts call) seals the same tree as the CLI."""
    from hoardfs.datasets import api
    from hoardfs.datasets.spec import load_spec

    cfg, _shas, _ = annotated
    spec = _spec(tmp_path, "apivoc", "voc", 'annotations = "ls:box"')
    cli = _build(cfg, spec)
    report = api.build(cfg, load_spec(spec), force=True)
    assert report["version"] == 2 and report["path"] == str(cfg.ssd.zone_path("3D") / "apivoc-v2")
    seal.check_sealed(Path(report["path"]), verify=True)
    assert tree_sha256(Path(report["path"])) == tree_sha256(Path(cli["path"]))
    read_voc(Path(report["path"]), _manifest(Path(report["path"])), tmp_path)


@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_view_mode_layouts_read_through_the_mount(annotated, tmp_path: Path) -> None:
    """Every layout a view can show, built in view mode: nothing copied, and through the mount
    the same tree as copy mode, which its reader reads."""
    from tests.test_mount import mounted

    cfg, _, _ = annotated
    mnt = tmp_path / "mnt"
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{mnt}"\n')
    built = {}
    for layout in ("coco", "yolo", "voc", "template") + (("hf-imagefolder",) if (READERS / "bin" / "python").exists()
                                                          else ()):
        extra, read = LAYOUTS[layout]
        name = "v" + layout.replace("-", "")
        spec = _spec(tmp_path, name, _layout(tmp_path, layout), extra)
        copy = _build(cfg, spec)
        view = _build(cfg, spec, "--mode", "view")
        assert view["version"] == 2 and view["view"] == f"3D-{name}-v2"
        assert seal.check_sealed(Path(view["path"]), verify=True)["actual_bytes"] == 0  # nothing copied
        built[layout] = (Path(copy["path"]), Path(view["path"]), mnt / "views" / view["view"], read)
    with mounted(str(cfg.source), mnt):
        for copy_root, view_root, in_mount, read in built.values():
            assert tree_sha256(view_root) == tree_sha256(copy_root) == tree_sha256(in_mount)
            # the reader given the view's directory in the mount (Hugging Face's file search does not
            # follow the links that are 3D's entries of a view)
            read(in_mount, _manifest(in_mount), tmp_path)
