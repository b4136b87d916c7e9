"""Pascal VOC as torchvision's `VOCDetection` reads it, over real sample photos (../shared/realdata:
PNG, WebP and JPEG files, and a greyscale PNG of one of them) ingested by UA_1: every image in
`JPEGImages/<key>.jpg` — a JPEG as stored, another converted at build with both sha256s in the
manifest — its `<depth>` and size as the image has them, the same bytes rebuilt, in copy and in
view mode; `convert = false` refusing a PNG in one line; and a spec naming a label key of JSON
blobs (Label Studio's raw answers) refused in one line at the dry run and the build."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hoardfs.fsd.outputs import seal
from hoardfs.jobs.actions.labelstudio import SHA_KEY, annotations_to_labels
from hoardfs.sql.apply import apply_write_intent
from tests.helpers import REALDATA, missing, needs_realdata
from tests.test_dataset_formats import READERS
from tests.test_datasets import _hoard, tree_sha256
from tests.test_ingest import ingest_home

pytestmark = [pytest.mark.services, needs_realdata]  # ingests, runs `hoard` and the reader's process

#: real sample files (name in realdata/images → class); PNG and WebP are converted, JPEG kept
PHOTOS = {"imageio_chelsea.png": "cat", "imageio_chelsea.jpg": "cat", "pillow_hopper.png": "person",
          "pillow_hopper.jpg": "person", "pillow_hopper.webp": "person", "pillow_flower_thumbnail.png": "flower",
          "pillow_flower.jpg": "flower"}
#: greyscale PNGs: the real photos in 8-bit greyscale (mode L), as a scanner or an X-ray gives them
GREY = {"imageio_chelsea.png": "cat", "pillow_flower.jpg": "flower"}


def _python_with_torchvision() -> str | None:
    """The readers venv's python when it has torchvision, else this one's (the search extra's)."""
    for py in (READERS / "bin" / "python", Path(sys.executable)):
        if py.exists() and subprocess.run([str(py), "-c", "import torchvision"], capture_output=True,
                                          cwd="/").returncode == 0:
            return str(py)
    return None


def voc_detection(root: Path, split: str, tmp: Path) -> list[dict]:
    """torchvision.datasets.VOCDetection(image_set=split) over the dataset (linked as the
    VOCdevkit/VOC2012 it looks for), in a process of its own: per item, the image's mode and
    size as the reader returns it and the annotation it parsed."""
    py = _python_with_torchvision()
    if py is None:
        missing("TORCHVISION MISSING: make search (or torchvision in the readers venv)")
    devkit = tmp / f"voc-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"
    (devkit / "VOCdevkit").mkdir(parents=True, exist_ok=True)
    link = devkit / "VOCdevkit" / "VOC2012"
    if not link.is_symlink():
        link.symlink_to(root)
    script = """
import json, sys
from torchvision.datasets import VOCDetection
ds = VOCDetection(sys.argv[1], year="2012", image_set=sys.argv[2], download=False)
out = []
for i in range(len(ds)):
    img, target = ds[i]
    out.append({"mode": img.mode, "size": list(img.size), "annotation": target["annotation"]})
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([py, "-c", script, str(devkit), split], cwd=tmp, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture
def photos(hoard_home: Path, pg):
    """The photos (and greyscale PNGs of two) ingested as a sidecar batch, each labelled with its
    class, given a Label Studio rectangle of it (as the AC5 round trip stores regions) and a
    Label Studio choice stored both ways: as the raw JSON of `ls:scene` (what older pulls kept)
    and as the plain `scene` value."""
    cfg = ingest_home(hoard_home, pg)
    batch = cfg.ssd.zone_path("3A") / "photos-1"
    batch.mkdir()
    files: dict[str, tuple[bytes, str]] = {}
    for name, cls in PHOTOS.items():
        files[name] = ((REALDATA / "images" / name).read_bytes(), cls)
    for name, cls in GREY.items():
        buf = io.BytesIO()
        with Image.open(REALDATA / "images" / name) as im:
            im.convert("L").save(buf, "PNG")
        files[f"grey_{Path(name).stem}.png"] = (buf.getvalue(), cls)
    for name, (data, _) in files.items():
        (batch / name).write_bytes(data)
        (batch / f"{name}.json").write_text(json.dumps({"title": name}))
    done = _hoard(cfg, "ingest", str(batch), "--source", "sidecar", "--here")
    assert done.returncode == 0, done.stdout + done.stderr
    by_sha = {hashlib.sha256(data).hexdigest(): (name, cls, data) for name, (data, cls) in files.items()}
    tasks, labels = [], []
    for i, (sha, (_name, cls, data)) in enumerate(sorted(by_sha.items())):
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        labels.append({"node": sha, "key": "class", "value": cls})
        labels.append({"node": sha, "key": "scene", "value": "indoor" if cls == "person" else "outdoor"})
        labels.append({"node": sha, "key": "ls:scene", "value": json.dumps(
            {"annotation": 900 + i, "region": f"c{i}", "type": "choices",
             "value": {"choices": ["indoor" if cls == "person" else "outdoor"]}},
            sort_keys=True, separators=(",", ":"))})
        tasks.append({"id": 100 + i, "data": {SHA_KEY: sha}, "annotations": [{"id": 500 + i, "result": [
            {"id": f"r{i}", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
             "original_width": w, "original_height": h, "image_rotation": 0,
             "value": {"x": 10, "y": 12.5, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": [cls]}}]}]})
    labels += [{"node": h, "key": k, "value": v} for h, k, v in annotations_to_labels(tasks) if k == "ls:box"]
    apply_write_intent(pg, {"key": "test:voc-photos", "labels": labels})
    return cfg, by_sha


def _spec(tmp: Path, name: str, extra: str = "", class_label: str = "class") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlayout = "voc"\nclass_label = "{class_label}"\nannotations = "ls:box"\n'
                    f'{extra}\n[selector]\nkinds = ["image"]\n'
                    '[split]\nratios = { train = 0.6, val = 0.4 }\nsalt = "s1"\ngroup = "none"\nallow_skew = true\n')
    return path


def _build(cfg, spec: Path, *args: str) -> dict:
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def read_voc(root: Path, by_sha: dict[str, tuple[str, str, bytes]], tmp: Path) -> None:
    """VOCDetection loads every sample of each split with the manifest's size, the image's depth
    and its boxes; each file is the stored JPEG or the JPEG the manifest names."""
    manifest = _manifest(root)
    assert sorted(m["sha256"] for m in manifest) == sorted(by_sha)
    for m in manifest:
        name, _cls, data = by_sha[m["sha256"]]
        path = root / "JPEGImages" / f"{m['key']}.jpg"
        assert m["path"] == f"JPEGImages/{m['key']}.jpg"
        written = hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(io.BytesIO(data)) as original, Image.open(path) as im:
            assert im.format == "JPEG" and im.size == original.size == (m["width"], m["height"])
            assert m["depth"] == (1 if original.mode == "L" else 3) == len(im.getbands())
        if name.endswith(".jpg"):  # a JPEG is written as stored
            assert "converted" not in m and written == m["sha256"]
        else:  # both sha256s: the stored original's and the JPEG written
            assert m["converted"] == {"sha256": written, "size": path.stat().st_size} and written != m["sha256"]
    for split in ("train", "val"):
        mine = {m["key"]: m for m in manifest if m["split"] == split}
        items = voc_detection(root, split, tmp)
        assert sorted(it["annotation"]["filename"] for it in items) == sorted(f"{k}.jpg" for k in mine)
        for it in items:
            m = mine[it["annotation"]["filename"][:-4]]
            ann = it["annotation"]
            assert it["size"] == [m["width"], m["height"]] and it["mode"] == "RGB"
            assert (ann["size"]["width"], ann["size"]["height"]) == (str(m["width"]), str(m["height"]))
            assert ann["size"]["depth"] == str(m["depth"])
            assert [o["name"] for o in ann["object"]] == [a["label"] for a in m["annotations"]] == [m["class"]]


def test_voc_of_png_webp_and_greyscale_photos_loads_in_vocdetection_copy_and_view(photos, tmp_path: Path) -> None:
    """PNG, WebP and greyscale PNG photos are converted to JPEG at build (both sha256s in the
    manifest), JPEGs kept as stored; VOCDetection loads every sample with depth 1 for greyscale
    and 3 for colour; a forced rebuild and a materialize are byte-identical; a view of it through
    the mount is the same tree and loads the same."""
    cfg, by_sha = photos
    spec = _spec(tmp_path, "photos")
    dry = _hoard(cfg, "dataset", "build", str(spec), "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["samples"] == len(by_sha), dry.stdout + dry.stderr
    v1 = _build(cfg, spec)
    root = Path(v1["path"])
    seal.check_sealed(root, verify=True)
    read_voc(root, by_sha, tmp_path)
    assert {m["depth"] for m in _manifest(root)} == {1, 3}
    h = tree_sha256(root)
    v2 = _build(cfg, spec, "--force")
    assert v2["version"] == 2 and tree_sha256(Path(v2["path"])) == h
    assert _hoard(cfg, "dataset", "rm", "photos@1").returncode == 0 and not root.exists()
    again = _hoard(cfg, "dataset", "materialize", "photos@1", "--json")
    assert again.returncode == 0 and tree_sha256(root) == h, again.stdout + again.stderr
    if not os.path.exists("/dev/fuse"):
        return
    from tests.test_mount import mounted

    mnt = tmp_path / "mnt"
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{mnt}"\n')
    view = _build(cfg, spec, "--mode", "view")
    assert view["view"] == f"3D-photos-v{view['version']}"
    assert seal.check_sealed(Path(view["path"]), verify=True)["actual_bytes"] == 0  # nothing copied
    with mounted(str(cfg.source), mnt):
        in_mount = mnt / "views" / view["view"]
        assert tree_sha256(Path(view["path"])) == tree_sha256(in_mount) == h
        read_voc(in_mount, by_sha, tmp_path)


def _refused(cfg, spec: Path, needles: list[str]) -> None:
    """The dry run and the build each refuse with exit 5 and one line holding every needle."""
    for args in (["--dry-run"], ["--here"]):
        res = _hoard(cfg, "dataset", "build", str(spec), *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 5 and len(lines) == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
        assert all(n in lines[0] for n in needles), lines[0]
    zone = cfg.ssd.zone_path("3D")
    assert [p.name for p in zone.iterdir() if p.name not in (".tmp", ".trash")] == []


def test_convert_false_refuses_a_png_naming_it_and_its_key(photos, pg, tmp_path: Path) -> None:
    """`convert = false` and a PNG among the samples: the dry run and the build refuse in one
    line naming the first such node (by node id) and its sample key, before a byte moves."""
    cfg, by_sha = photos
    first = pg.execute("SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
                       "WHERE pc.file_type <> 'jpg' AND n.sha256 = ANY(%s) ORDER BY n.node_id LIMIT 1",
                       [[bytes.fromhex(h) for h in by_sha]]).fetchone()[0]
    kind = Path(by_sha[first][0]).suffix[1:].upper()
    _refused(cfg, _spec(tmp_path, "strict", "convert = false"),
             [f"node {first} (sample key {first[:16]}) is a {kind} file, not a JPEG", "convert = false",
              "set convert = true"])
    assert pg.execute("SELECT count(*) FROM dataset_version").fetchone()[0] == 0


def test_a_label_key_of_json_blobs_is_refused_naming_the_key(photos, pg, tmp_path: Path) -> None:
    """class_label = "ls:scene" (Label Studio's raw JSON answers): the dry run and the build refuse
    in one line naming the key and the plain key to use; `scene` itself builds, its values the
    classes."""
    cfg, _ = photos
    _refused(cfg, _spec(tmp_path, "blobs", class_label="ls:scene"),
             ["class_label = 'ls:scene' holds JSON blobs", "class_label = 'scene'"])
    _refused(cfg, _group_spec(tmp_path), ["split.group = 'ls:scene' holds JSON blobs"])
    assert pg.execute("SELECT count(*) FROM dataset_version").fetchone()[0] == 0
    ok = _spec(tmp_path, "scenes", class_label="scene").read_text().replace('annotations = "ls:box"\n', "")
    (tmp_path / "scenes.toml").write_text(ok.replace('layout = "voc"', 'layout = "imagefolder"'))
    built = _build(cfg, tmp_path / "scenes.toml")
    assert {m["class"] for m in _manifest(Path(built["path"]))} == {"indoor", "outdoor"}


def _group_spec(tmp: Path) -> Path:
    path = tmp / "blobgroup.toml"
    path.write_text(_spec(tmp, "blobgroup").read_text().replace('group = "none"', 'group = "label:ls:scene"'))
    return path
