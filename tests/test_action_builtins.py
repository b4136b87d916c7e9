"""The built-in actions (jobs/actions/builtin, docs/actions.md "Built-in actions"): each worker
program run as a real `hoard-builtin` process on real images and a real video (../shared/realdata
when present, else generated with Pillow and ffmpeg); what it writes is what its contract's
output_parser reads; a rerun writes the same bytes; a bad input is one line on stderr and skipped;
every contract validates and `hoard action list|show` find them."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from hoardfs.base import landlock
from hoardfs.jobs.actions import contract
from hoardfs.jobs.actions.builtin import CONTRACTS, PROGRAMS
from tests.helpers import REALDATA

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.services  # each test starts `hoard-builtin` (or `hoard`) processes
needs_ffmpeg = pytest.mark.needs(shutil.which("ffmpeg") is not None, "FFMPEG MISSING: apt-get install ffmpeg")


def run(name: str, inp: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`hoard-builtin NAME INP OUT ARGS…` as its own process (python -m: the console script of
    this tree, whichever hoardfs the venv has installed; `env` added to this one's)."""
    return subprocess.run([sys.executable, "-m", "hoardfs.jobs.actions.builtin", name, str(inp), str(out), *args],
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path → bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(action_id: str) -> contract.Contract:
    return contract.load_file(CONTRACTS / f"{action_id}.toml")


def _glob(pattern: str, path: str) -> bool:
    """The glob as a path pattern: `*` never crosses a `/`."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


def parsed(c: contract.Contract, out: Path, inputs: set[str]) -> tuple[dict[str, str], list[dict]]:
    """What the contract's output_parser makes of `out`, checked the way jobs/actions/parse.py
    reads it: every file matched by a rule (unmatched = error), each child's parent an input
    (by sha256) or another child (by its output path without extension), each result record
    naming an input or a child and holding the mapped fields. (child path → parent, records)."""
    assert c.output_parser is not None
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    children: dict[str, str] = {}
    records: list[dict] = []
    for f in files:
        rule = next((r for r in c.output_parser.children if _glob(r.glob, f)), None)
        if rule is not None:
            m = re.fullmatch(rule.parent_match, f)
            assert m, (f, rule.parent_match)
            children[f] = m.group("input") if rule.parent_key != "output_path" else "child:" + m.group("input")
            if rule.parent_key == "sha256":
                assert m.group("input") in inputs, f
            continue
        res = next((r for r in c.output_parser.results if _glob(r.glob, f)), None)
        assert res is not None, f"{f}: no output_parser rule matches it"
        assert res.format == "jsonl"
        for line in (out / f).read_text().splitlines():
            rec = json.loads(line)
            assert set(c.result_mapping[res.name].columns.values()) <= set(rec), rec
            records.append(rec | {"_node": rec[res.node_field], "_key": res.node_key})
    stems = {os.path.splitext(p)[0]: p for p in children}
    for child, parent in children.items():
        if parent.startswith("child:"):
            assert parent.removeprefix("child:") in stems, (child, parent)  # names another child
    for rec in records:
        assert rec["_node"] in (children if rec["_key"] == "output_path" else inputs), rec
    return children, records


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A staged input tree (layout flat: <sha256><ext>) of real images in several encodings
    (../shared/realdata/images when present, else Pillow-made JPEG, PNG, GIF, WebP and an
    EXIF-rotated JPEG), a truncated JPEG and a text file named .jpg."""
    root = tmp_path / "in"
    root.mkdir()
    if (REALDATA / "images").is_dir():
        sources = sorted((REALDATA / "images").iterdir())
    else:
        gen = tmp_path / "gen"
        gen.mkdir()
        base = Image.radial_gradient("L").convert("RGB").resize((300, 200))
        for ext in ("jpg", "png", "gif", "webp"):
            base.save(gen / f"pic.{ext}")
        exif = Image.Exif()
        exif[0x0112] = 6
        base.save(gen / "pillow_hopper_orientation_6.jpg", exif=exif)
        sources = sorted(gen.iterdir())
    for src in sources:
        shutil.copyfile(src, root / f"{sha(src)}{src.suffix}")
    good = next(p for p in sources if p.suffix == ".jpg")
    truncated = good.read_bytes()[: len(good.read_bytes()) // 3]
    (root / f"{hashlib.sha256(truncated).hexdigest()}.jpg").write_bytes(truncated)
    (root / f"{hashlib.sha256(b'not an image').hexdigest()}.jpg").write_bytes(b"not an image")
    return root


def shas(root: Path) -> set[str]:
    return {sha(p) for p in root.iterdir()}


def bad_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("hoard-builtin: skipped ")]


def test_every_builtin_contract_validates_and_runs_hoard_builtin() -> None:
    """Each contract file loads (contract.load_file), its local command is `hoard-builtin
    <program>`, and pyproject.toml installs that console script."""
    files = sorted(CONTRACTS.glob("*.toml"))
    ids = {p.stem for p in files}
    assert ids == {"blacklist-small-images", "thumbnail", "exif", "resize-variants", "canny", "keyframes",
                   "label-studio", "near-dup-hash", "clip-embed"}
    types = {}
    for path in files:
        c = contract.load_file(path)
        types[c.action_id] = c.action_type
        if isinstance(c.run_spec, contract.RunLocal):
            assert c.run_spec.command[:4] == ["hoard-builtin", c.action_id, "{input_root}", "{output_root}"]
            assert c.action_id in PROGRAMS
    assert types == {"blacklist-small-images": "AC1", "thumbnail": "AC2", "exif": "AC2", "keyframes": "AC2",
                     "near-dup-hash": "AC2", "resize-variants": "AC4", "canny": "AC4", "label-studio": "AC5",
                     "clip-embed": "AC3"}
    for gpu in ("resize-variants", "canny"):
        c = load(gpu)
        assert c.gate is not None and c.a4_scale is not None
    assert load("clip-embed").gate is not None
    ls = load("label-studio").run_spec
    assert isinstance(ls, contract.RunLabelStudio)
    for tag in ("<RectangleLabels", "<PolygonLabels", "<Choices", "<TextArea"):
        assert tag in ls.label_config
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hoard-builtin"] == "hoardfs.jobs.actions.builtin:main"


def test_blacklist_small_images_selects_images_under_4_kib(pg) -> None:
    """AC1: its rule's selector (max_size) picks the images of at most 4095 bytes, no larger one."""
    from hoardfs.sql.migrate import migrate
    from hoardfs.sql.selectors import query_nodes

    migrate(pg)
    c = load("blacklist-small-images")
    assert c.rules and c.rules[0].black_list
    pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) SELECT sha256(int8send(i)), false, true "
               "FROM generate_series(1, 4) i")
    pg.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, "
               "(ARRAY[100, 4095, 4096, 50000])[node_id], 'png' FROM node")
    where = c.input_selector.model_copy(update=c.rules[0].where.model_dump(exclude_defaults=True))
    picked = query_nodes(pg, where)
    assert sorted(picked.sizes) == [100, 4095]


def test_thumbnail_real_images_rerun_identical_bad_inputs_skipped(images: Path, tmp_path: Path) -> None:
    """Each decodable image gets thumbs/<sha256>.jpg with its longer side ≤ --size, EXIF
    orientation applied; a rerun writes the same bytes; the truncated JPEG and the text file
    are one stderr line each and the run succeeds."""
    out = tmp_path / "out"
    res = run("thumbnail", images, out, "--size", "64")
    assert res.returncode == 0, res.stderr
    bad = bad_lines(res)
    assert len(bad) == 2 and all(".jpg" in ln for ln in bad), res.stderr
    first = tree(out)
    children, _ = parsed(load("thumbnail"), out, shas(images))
    assert len(children) == len(list(images.iterdir())) - 2 == len(first)
    for rel in first:
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and max(im.size) <= 64 and not im.getexif()
    # orientation 6 (stored rotated a quarter turn): the thumbnail is upright, like the plain picture
    rotated = next(p for p in images.iterdir() if p.suffix == ".jpg" and Image.open(p).getexif().get(0x0112) == 6)
    with Image.open(rotated) as raw, Image.open(out / f"thumbs/{sha(rotated)}.jpg") as th:
        upright = ImageOps.exif_transpose(raw).convert("L")

        def off(im: Image.Image) -> float:
            return float(np.abs(np.asarray(th.convert("L"), dtype=float)
                                - np.asarray(im.resize(th.size), dtype=float)).mean())
        assert off(upright) < 20 and off(upright) < off(raw.convert("L"))
    shutil.rmtree(out)
    assert run("thumbnail", images, out, "--size", "64").returncode == 0
    assert tree(out) == first  # same input → same bytes (the run key and exactly-once rely on it)


def test_exif_labels(images: Path, tmp_path: Path) -> None:
    """exif.jsonl: format, width and height of every decodable image; the EXIF-rotated JPEG's
    orientation; the Canon photo's make and model; every record names an input by sha256."""
    out = tmp_path / "out"
    res = run("exif", images, out)
    assert res.returncode == 0 and len(bad_lines(res)) == 2, res.stderr
    _, records = parsed(load("exif"), out, shas(images))
    by_node: dict[str, dict[str, str]] = {}
    for r in records:
        by_node.setdefault(r["sha256"], {})[r["key"]] = r["value"]
    assert len(by_node) == len(list(images.iterdir())) - 2
    for node, labels in by_node.items():
        path = next(images.glob(f"{node}.*"))
        with Image.open(path) as im:
            assert (labels["image.width"], labels["image.height"]) == (str(im.width), str(im.height))
            assert labels["image.format"] == im.format
    assert "6" in {labels.get("exif.orientation") for labels in by_node.values()}
    if (REALDATA / "images" / "pillow_flower.jpg").exists():
        flower = by_node[sha(REALDATA / "images" / "pillow_flower.jpg")]
        assert flower["exif.make"] == "Canon" and flower["exif.model"] == "Canon PowerShot S40"


def test_resize_variants_presets_and_sizes(images: Path, tmp_path: Path) -> None:
    """Children variants/<sha256>/<W>x<H>.jpg for the preset and each --sizes item, fitted
    inside the box; sizes.jsonl gives each child's real width and height by its output path."""
    out = tmp_path / "out"
    res = run("resize-variants", images, out, "--preset", "small", "--sizes", "100x50, 20x20")
    assert res.returncode == 0 and len(bad_lines(res)) == 2, res.stderr
    c = load("resize-variants")
    children, records = parsed(c, out, shas(images))
    assert c.a4_scale is not None and len(children) == 3 * (len(list(images.iterdir())) - 2)
    dims: dict[str, dict[str, int]] = {}
    for r in records:
        dims.setdefault(r["output_path"], {})[r["key"]] = int(r["value"])
    assert set(dims) == set(children)
    for rel, d in dims.items():
        with Image.open(out / rel) as im:
            assert (im.width, im.height) == (d["width"], d["height"])
            box = tuple(int(v) for v in Path(rel).stem.split("x"))
            assert im.width <= box[0] and im.height <= box[1]
    res = run("resize-variants", images, tmp_path / "o2", "--preset", "none", "--sizes", "12x")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'12x' is not WxH" in res.stderr, res.stderr


def test_canny_edge_image_and_ratio(images: Path, tmp_path: Path) -> None:
    """edges/<sha256>.png is a binary edge map of the input's size, on the boundary of a drawn
    square and nowhere inside it; canny.jsonl's edge_ratio is its share of edge pixels; a bad
    input is a `failed` record and a stderr line."""
    square = Image.new("L", (100, 80), 0)
    square.paste(255, (30, 20, 70, 60))
    path = images / "square.png"
    square.save(path)
    square_sha = sha(path)
    os.rename(path, images / f"{square_sha}.png")
    out = tmp_path / "out"
    res = run("canny", images, out, "--low", "50", "--high", "150")
    assert res.returncode == 0 and len(bad_lines(res)) == 2, res.stderr
    children, records = parsed(load("canny"), out, shas(images))
    by = {r["sha256"]: r for r in records}
    assert len(by) == len(list(images.iterdir()))
    assert sorted(r["status"] for r in records).count("failed") == 2
    for r in records:
        if r["status"] == "failed":
            assert r["edge_ratio"] is None
            continue
        edge = np.asarray(Image.open(out / f"edges/{r['sha256']}.png"))
        assert set(np.unique(edge)) <= {0, 255}
        assert r["edge_ratio"] == round(np.count_nonzero(edge) / edge.size, 6)
    sq = np.asarray(Image.open(out / f"edges/{square_sha}.png"))
    assert sq.shape == (80, 100) and f"edges/{square_sha}.png" in children
    assert sq[25:55, 35:65].max() == 0 and sq[:15].max() == 0  # flat areas: no edge
    assert sq[18:23, 30:70].max() == 255 and sq[20:60, 28:33].max() == 255  # the square's sides
    first = tree(out)
    shutil.rmtree(out)
    assert run("canny", images, out, "--low", "50", "--high", "150").returncode == 0 and tree(out) == first


def _cut_video(path: Path) -> None:
    """Four seconds: two seconds of a test pattern, then two of a plain colour (a hard cut)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10:duration=2",
                    "-f", "lavfi", "-i", "color=c=red:size=320x240:rate=10:duration=2", "-filter_complex",
                    "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True, timeout=120)


@needs_ffmpeg
def test_keyframes_video_scene_frame_hierarchy(tmp_path: Path) -> None:
    """A video → scenes/<sha256>/scene_NNNN.mp4 (children of the video) → scene_NNNN/frame_NNNN.png
    (children of their clip, named by the clip's output path without extension); a rerun gives
    the same bytes; a zero-byte video, a text file and an HLS playlist named .mp4 (which would
    make ffmpeg read other files) are one stderr line each."""
    inp = tmp_path / "in"
    inp.mkdir()
    cut = tmp_path / "cut.mp4"
    _cut_video(cut)
    videos = [cut] + ([REALDATA / "video" / "imageio_cockatoo.mp4"] if (REALDATA / "video").is_dir() else [])
    for v in videos:
        shutil.copyfile(v, inp / f"{sha(v)}.mp4")
    for data in (b"", b"just text\n", f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{cut}\n#EXT-X-ENDLIST\n".encode()):
        (inp / f"{hashlib.sha256(data).hexdigest()}.mp4").write_bytes(data)
    out = tmp_path / "out"
    res = run("keyframes", inp, out, "--threshold", "0.1", "--frames-per-scene", "2")
    assert res.returncode == 0, res.stderr
    assert len(bad_lines(res)) == 3 and "not on whitelist" in res.stderr, res.stderr
    children, _ = parsed(load("keyframes"), out, shas(inp))
    clips = sorted(p for p in children if p.endswith(".mp4"))
    frames = sorted(p for p in children if p.endswith(".png"))
    assert {children[p] for p in clips} == {sha(v) for v in videos}
    cut_clips = [p for p in clips if children[p] == sha(cut)]
    assert cut_clips == [f"scenes/{sha(cut)}/scene_0001.mp4", f"scenes/{sha(cut)}/scene_0002.mp4"]
    for f in frames:
        assert children[f].removeprefix("child:") + ".mp4" in clips  # a frame's parent is its clip
    for clip in clips:  # every clip has a keyframe; the cut's second scene is red
        assert any(children[f] == "child:" + clip.removesuffix(".mp4") for f in frames)
    with Image.open(out / f"scenes/{sha(cut)}/scene_0002/frame_0001.png") as red:
        r, g, b = (int(v) for v in np.asarray(red.convert("RGB")).reshape(-1, 3).mean(axis=0))
        assert r > 200 and g < 60 and b < 60
    assert not (out / ".keyframes-work").exists()
    first = tree(out)
    shutil.rmtree(out)
    assert run("keyframes", inp, out, "--threshold", "0.1", "--frames-per-scene", "2").returncode == 0
    assert tree(out) == first


@needs_ffmpeg
def test_every_builtin_writes_the_same_confined_as_on_debian_12s_landlock(images: Path, tmp_path: Path) -> None:
    """Each built-in confined as on Debian 12's kernel (Landlock ABI 2, `landlock.TEST_ABI`: the
    seccomp filters for truncation and signals stand in for what ABI 2 lacks; reads only its
    input, Python, the system's libraries and ffmpeg) exits 0 and writes the same bytes as
    confined with this kernel's own ABI: thumbnail, exif, resize-variants, canny and
    near-dup-hash on images, keyframes (ffmpeg, ffprobe) on a video."""
    video = tmp_path / "video"
    video.mkdir()
    cut = tmp_path / "cut.mp4"
    _cut_video(cut)
    shutil.copyfile(cut, video / f"{sha(cut)}.mp4")
    jobs: list[tuple[str, Path, list[str]]] = [
        (name, images, []) for name in ("thumbnail", "exif", "resize-variants", "canny", "near-dup-hash")]
    jobs.append(("keyframes", video, ["--threshold", "0.1"]))
    for name, inp, args in jobs:
        outs = []
        for abi in (None, "2"):
            out = tmp_path / f"{name}-{abi or 'kernel'}"
            res = run(name, inp, out, *args, env={landlock.TEST_ABI: abi} if abi else None)
            assert res.returncode == 0 and "Traceback" not in res.stderr, (name, abi, res.stderr)
            outs.append(tree(out))
        assert outs[0] and outs[0] == outs[1], name


def test_links_and_the_output_root(images: Path, tmp_path: Path) -> None:
    """An input that is a symbolic link (to a file outside the input root) is skipped with a line;
    an output root that is a link is refused (exit 2, one line) and nothing is written through it."""
    outside = tmp_path / "secret.png"
    Image.new("RGB", (10, 10)).save(outside)
    (images / "link.png").symlink_to(outside)
    out = tmp_path / "out"
    res = run("thumbnail", images, out)
    assert res.returncode == 0 and any("link.png" in ln and "not a regular file" in ln for ln in bad_lines(res))
    assert f"thumbs/{sha(outside)}.jpg" not in tree(out)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "linked-out").symlink_to(target)
    res = run("thumbnail", images, tmp_path / "linked-out")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is not a directory" in res.stderr, res.stderr
    assert list(target.iterdir()) == []
    res = run("thumbnail", tmp_path / "nothing", tmp_path / "o3")
    assert res.returncode == 2 and "input root" in res.stderr and res.stderr.count("\n") == 1


def hoard(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOARD_")}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), *args], cwd=home,
                          capture_output=True, text=True, timeout=120, env=env | {"COLUMNS": "200",
                                                                                  "PYTHONPATH": str(REPO)})


def test_action_list_and_show_find_builtins_a_file_shadows_them(tmp_path: Path) -> None:
    """`hoard action list` shows the built-ins (`builtin`) after the directory's files; a file of
    the same id shadows the built-in in list and show."""
    (tmp_path / "hoard.toml").write_text(
        f'database_url = "postgresql:///nothing?host={tmp_path}/no-pg"\nredis_url = "unix://{tmp_path}/no-redis"\n'
        '[store]\nallow_directory_disks = true\n'
        + "".join(f'[[disks]]\nlabel = "hdd{i}"\npath = "d{i}"\ncapacity_gb = 1\n' for i in (1, 2))
        + '[ssd]\nroot = "ssd"\n' + "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D")))
    (tmp_path / "actions").mkdir()
    own = (CONTRACTS / "canny.toml").read_text().replace("version = 1", "version = 7")
    (tmp_path / "actions" / "canny.toml").write_text(own)
    res = hoard(tmp_path, "action", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("canny ") and " v7 " in lines[0] and str(tmp_path / "actions" / "canny.toml") in lines[0]
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(
        ["blacklist-small-images", "thumbnail", "exif", "resize-variants", "keyframes", "label-studio",
         "near-dup-hash", "clip-embed"])
    assert all(ln.endswith(" builtin") for ln in lines[1:]), lines
    doc = json.loads(hoard(tmp_path, "action", "list", "--json").stdout)
    sources = {a["action_id"]: a["source"] for a in doc["actions"]}
    assert sources["canny"] == str(tmp_path / "actions" / "canny.toml") and sources["exif"] == "builtin"
    show = hoard(tmp_path, "action", "show", "keyframes")
    assert show.returncode == 0 and "builtin (" in show.stdout and "child of another child" in show.stdout, show.stderr
    doc = json.loads(hoard(tmp_path, "action", "show", "canny", "--json").stdout)
    assert doc["contract"]["version"] == 7 and doc["source"] != "builtin"
    res = hoard(tmp_path, "action", "show", "nosuch")
    assert res.returncode == 2 and "no action 'nosuch'" in res.stderr
