"""Text → image search: a tiny open_clip model this module builds with random
weights and saves as a weights file, loaded through the code a user's weights go through
(hoardfs.jobs.clip_model); the `clip-embed` action (AC3, its GPU gate told "cpu") over an ingested batch
with bad images in it; the embeddings' rows in PostgreSQL; `hoard search` against brute force
over those rows; the on-disk HNSW index rebuilt when missing, corrupt or behind. Random weights:
what is checked is the plumbing — shapes, storage, nearest-neighbour order — not meaning."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hoardfs.jobs import clip_model
from tests.helpers import needs_search, worker_reachable_home
from tests.test_ingest import ingest_home

REPO = Path(__file__).resolve().parent.parent
pytestmark = needs_search
#: a ViT of 2 layers on 32-pixel images and a text transformer of 2 layers: ~3 M parameters, most
#: of them the token embedding (open_clip's tokenizer has 49,408 tokens)
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "black": (5, 5, 5), "white": (250, 250, 250), "grey": (128, 128, 128), "purple": (140, 30, 160)}


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[Path, Path]]:
    """(model config JSON, weights file) of a tiny open_clip model with random weights, saved as
    a user's weights are (a state dict by torch.save), in a directory the worker's user (nobody,
    under root) can read; built once for the module."""
    import torch

    open_clip = clip_model.open_clip_module()  # torchvision's import as the product does it
    d = Path(tempfile.mkdtemp(prefix="hoard-clip-", dir="/var/tmp"))
    try:
        d.chmod(0o755)
        cfg = d / "tiny-clip.json"
        cfg.write_text(json.dumps(TINY))
        open_clip.add_model_config(cfg)
        torch.manual_seed(40)
        logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded": random ones are the point
        try:
            model = open_clip.create_model("tiny-clip")
        finally:
            logging.disable(logging.NOTSET)
        weights = d / "tiny-clip.bin"
        torch.save(model.state_dict(), weights)
        for f in (cfg, weights):
            f.chmod(0o644)
        yield cfg, weights
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pictures(root: Path, sidecars: bool = False) -> dict[str, str]:
    """One 48×40 PNG per colour, a diagonal stripe in each so no two are alike; name → sha256."""
    out = {}
    for i, (name, rgb) in enumerate(COLOURS.items()):
        im = Image.new("RGB", (48, 40), rgb)
        for k in range(40):
            im.putpixel(((k + 3 * i) % 48, k), (255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
        path = root / f"{name}.png"
        im.save(path)
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        if sidecars:
            (root / f"{name}.png.json").write_text(json.dumps({"title": f"a {name} square"}))
    return out


def _bad(root: Path, sidecars: bool = False) -> dict[str, str]:
    """A truncated PNG and a text file named .jpg in `root`; name → what the skip line says."""
    good = (root / "red.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_bytes(b"<script>alert(1)</script> not an image")
    if sidecars:
        for n in ("truncated.png", "text.jpg"):
            (root / f"{n}.json").write_text(json.dumps({"title": n}))
    return {"truncated.png": "cannot decode", "text.jpg": "not an image Pillow can read"}


def _vec(b64: str | bytes) -> np.ndarray:
    raw = base64.b64decode(b64) if isinstance(b64, str) else bytes(b64)
    return np.frombuffer(raw, "<f4")


def test_weights_that_are_missing_or_not_the_model_s_are_one_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """No weights configured, a path that is no file, a file that is not these weights, and a
    config that would download a tokenizer: each a ClipError naming what to fix."""
    cfg, _ = tiny
    with pytest.raises(clip_model.ClipError, match="search.clip_weights is not set"):
        clip_model.load(str(cfg), None)
    with pytest.raises(clip_model.ClipError, match="is not a file"):
        clip_model.load(str(cfg), tmp_path / "none.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(clip_model.ClipError, match="does not load into tiny-clip"):
        clip_model.load(str(cfg), junk)
    hf = tmp_path / "hf-clip.json"
    hf.write_text(json.dumps({**TINY, "text_cfg": {**TINY["text_cfg"], "hf_tokenizer_name": "bert-base-uncased"}}))
    with pytest.raises(clip_model.ClipError, match="would be downloaded"):
        clip_model.load(str(hf), junk)


def _hoard(cfg, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.services
def test_clip_embed_then_hoard_search_finds_the_nearest_as_brute_force_does(
        hoard_home: Path, pg, tiny: tuple[Path, Path]) -> None:
    """An ingested batch of 8 pictures and 2 bad images; `hoard search` before any embedding says
    how to make them; `hoard action run clip-embed` (device cpu: its GPU gate's hook says ready)
    stores one row per picture; `hoard search TEXT` gives the pictures in the order brute force
    over those rows gives, with its scores; the index file is rebuilt (one line) when missing,
    corrupt or behind the database; a bad --limit and missing weights are one line each."""
    with worker_reachable_home(hoard_home) as home:  # the built-in action's worker runs as nobody under root
        _embed_and_search(home, pg, tiny)


def _embed_and_search(home: Path, pg, tiny: tuple[Path, Path]) -> None:
    from hoardfs.base import config
    from hoardfs.sql import embeddings

    model_cfg, weights = tiny
    cfg = ingest_home(home, pg)
    unset = _hoard(cfg, "search", "a red square")
    assert unset.returncode == 2 and "search.clip_weights is not set" in unset.stderr, unset.stderr
    with open(cfg.source, "a") as fh:
        fh.write(f'\n[search]\nclip_model = "{model_cfg}"\nclip_weights = "{weights}"\ndevice = "cpu"\n')
    cfg = config.load(cfg.source)
    batch = cfg.ssd.zone_path("3A") / "clip-1"
    batch.mkdir()
    shas = _pictures(batch, sidecars=True)
    bad = {hashlib.sha256((batch / n).read_bytes()).hexdigest(): why for n, why in _bad(batch, sidecars=True).items()}
    pictures = {n: Image.open(batch / f"{n}.png").convert("RGB") for n in COLOURS}
    done = _hoard(cfg, "ingest", str(batch), "--source", "sidecar", "--here")
    assert done.returncode == 0, done.stdout + done.stderr

    empty = _hoard(cfg, "search", "a red square")
    assert empty.returncode == 0 and empty.stdout == "" and "hoard action run clip-embed" in empty.stderr, empty

    run = _hoard(cfg, "action", "run", "clip-embed", "--here", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "done"
    log = (cfg.ssd.root / "state" / "actions" / f"{doc['run']}.worker.log").read_text().splitlines()
    for sha, why in bad.items():  # each bad image one line naming it (staged flat: by sha256); the run went on
        assert sum(f"hoard-builtin: skipped {sha}" in ln and why in ln for ln in log) == 1, log
    rows = {bytes(s).hex(): (m, _vec(e)) for s, m, e in pg.execute(
        "SELECT n.sha256, r.model, r.embedding FROM result_image_embedding r JOIN node n USING (node_id)")}
    assert set(rows) == set(shas.values())  # the bad images have none
    m = clip_model.load(str(model_cfg), weights)
    assert clip_model.load(str(model_cfg), weights) is m  # loaded once per process
    model_id = f"tiny-clip@{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}"
    assert m.model_id == model_id and m.dim == 32
    assert {mid for mid, _ in rows.values()} == {model_id}
    mine = clip_model.encode_images(m, list(pictures.values()))  # the worker's numbers are this process's
    assert mine.shape == (len(COLOURS), 32) and mine.dtype == np.float32
    for i, n in enumerate(COLOURS):
        v = rows[shas[n]][1]
        assert v.shape == (32,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
        np.testing.assert_allclose(v, mine[i], atol=1e-4)

    def brute(text: str) -> list[tuple[str, float]]:
        q = clip_model.encode_text(m, text)
        assert q.shape == (32,) and abs(float(np.linalg.norm(q)) - 1) < 1e-5
        return sorted(((s, float(v @ q)) for s, (_, v) in rows.items()), key=lambda x: -x[1])

    assert [s for s, _ in brute("a red square")] != [s for s, _ in brute("purple stripes")]
    res = _hoard(cfg, "search", "a red square", "--json", "--limit", "8")
    assert res.returncode == 0 and res.stderr.count("\n") == 1 and "missing; rebuilt from the 8" in res.stderr, res
    doc = json.loads(res.stdout)
    want = brute("a red square")
    assert doc["model"] == model_id and doc["query"] == "a red square"
    assert [r["sha256"] for r in doc["results"]] == [s for s, _ in want]
    np.testing.assert_allclose([r["score"] for r in doc["results"]], [sc for _, sc in want], atol=1e-4)
    assert all(r["locator"].startswith("batch:clip-1/") for r in doc["results"])
    index = embeddings.index_dir(cfg.ssd.root) / f"{model_id}.usearch"
    assert index.is_file()

    said: list[str] = []

    def search(text: str, limit: int) -> list[str]:  # what `hoard search` runs, in this process
        got = clip_model.search_text(cfg, pg, text, limit, said.append)
        assert got[0] == model_id
        return [h.sha256 for h in got[1]]

    assert search("purple stripes", 3) == [s for s, _ in brute("purple stripes")[:3]] and said == []  # current
    index.write_bytes(b"\0garbage" * 64)  # a corrupt cache: rebuilt from PostgreSQL, the same answer
    assert search("a red square", 8) == [s for s, _ in want]
    assert len(said) == 1 and "unreadable" in said[0] and "rebuilt from the 8 embeddings in PostgreSQL" in said[0]
    # a row PostgreSQL has lost and the index has not: behind, rebuilt; a deleted image is never an answer
    red, blue = shas["red"], shas["blue"]
    pg.execute("DELETE FROM result_image_embedding WHERE node_id = (SELECT node_id FROM node WHERE sha256 = %s)",
               [bytes.fromhex(red)])
    pg.execute("UPDATE physical_content SET is_deleted = true WHERE node_id = (SELECT node_id FROM node "
               "WHERE sha256 = %s)", [bytes.fromhex(blue)])
    got = search("a red square", 8)
    assert "out of date (8 images in it, 7 in PostgreSQL)" in said[1], said
    assert got == [s for s, _ in want if s not in (red, blue)]

    text = _hoard(cfg, "search", "a red square", "--limit", "2")  # the lines: similarity, sha256, locator
    assert text.returncode == 0 and text.stderr == "", text.stderr
    lines = [ln.split() for ln in text.stdout.splitlines()]
    assert [ln[1] for ln in lines] == got[:2] and all(ln[2].startswith("batch:clip-1/") for ln in lines)
    for bad_limit in ("0", "1001"):
        refused = _hoard(cfg, "search", "x", "--limit", bad_limit)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--limit" in refused.stderr
