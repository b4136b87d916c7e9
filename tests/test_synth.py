"""The S08 fixture generator: deterministic, realistic shape, ground truth that matches the files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from hoardfs.adapters.synth import Spec, generate

SPEC = Spec(seed=3, batches=4, items_per_batch=80, large_max_mb=2, large_fraction=0.05)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("synth")
    return root, generate(root, SPEC)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(corpus, tmp_path: Path) -> None:
    """Two runs with one spec produce identical trees; another seed differs."""
    root, _ = corpus
    generate(tmp_path / "again", SPEC)
    assert _tree(tmp_path / "again") == _tree(root)
    generate(tmp_path / "other", Spec(seed=4, batches=1, items_per_batch=10, large_max_mb=2))
    assert _tree(tmp_path / "other") != _tree(root)


def test_rerun_in_place_rewrites_nothing(corpus) -> None:
    """Generating into an existing tree leaves every file untouched (idempotent demo)."""
    root, _ = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    generate(root, SPEC)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_truth_matches_files(corpus) -> None:
    """truth.json lists every batch file with its real sha256 and size."""
    root, batches = corpus
    truth = json.loads((root / "truth.json").read_text())
    assert [b["batch_id"] for b in truth["batches"]] == [b.batch_id for b in batches]
    for b in truth["batches"]:
        on_disk = {str(p.relative_to(root / b["batch_id"])) for p in (root / b["batch_id"]).rglob("*") if p.is_file()}
        assert on_disk == {i["path"] for i in b["items"]}
        for i in b["items"]:
            data = (root / b["batch_id"] / i["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == i["sha256"] and len(data) == i["size"]


def test_mostly_small_files_a_few_large(corpus) -> None:
    """About 95 % of media files are 1–64 KB; some are ≥ 1 MB."""
    _, batches = corpus
    media = [i for b in batches for i in b.items if i.kind in ("image", "video")]
    small = [i for i in media if 1024 <= i.size <= 64 * 1024 + 1024]
    large = [i for i in media if i.size >= 1 << 20]
    assert len(small) / len(media) >= 0.90
    assert large, "some large files"


def test_content_repeats_across_batches_with_other_metadata(corpus) -> None:
    """Some content appears in several batches (F_03), described by different sidecars."""
    _, batches = corpus
    where: dict[str, set[str]] = {}
    for b in batches:
        for i in b.items:
            if i.kind in ("image", "video"):
                where.setdefault(i.sha256, set()).add(b.batch_id)
    assert any(len(v) > 1 for v in where.values())


def test_formats_parse(corpus) -> None:
    """Sidecars are valid JSON in yt-dlp / gallery-dl shape; the forum manifest is CSV; images open."""
    root, batches = corpus
    for b in batches:
        base = root / b.batch_id
        for i in b.items:
            if i.kind == "image":
                with Image.open(base / i.path) as img:
                    img.verify()
            if i.meta and i.meta.endswith(".json"):
                doc = json.loads((base / i.meta).read_text())
                if b.source == "ytdlp":
                    assert {"id", "title", "uploader", "channel_id", "view_count", "upload_date"} <= doc.keys()
                else:
                    assert {"category", "id", "user", "date", "extension"} <= doc.keys()
            if b.source == "forum":
                rows = list(csv.DictReader((base / "manifest.csv").open()))
                assert {r["path"] for r in rows} == {x.path for x in b.items if x.kind != "manifest"}
                assert any(r["parent_post_id"] for r in rows)


def test_derived_children_point_at_real_parents(corpus) -> None:
    """Crops and frames exist under _derived/ and name a parent that is in the batch."""
    root, batches = corpus
    total = 0
    for b in batches:
        parents = {i.sha256 for i in b.items}
        for d in b.derived:
            total += 1
            assert d["parent_sha256"] in parents
            data = (root / "_derived" / b.batch_id / d["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == d["sha256"]
            if d["relation"] == "crop":
                with Image.open(root / b.batch_id / d["parent_path"]) as p, \
                        Image.open(root / "_derived" / b.batch_id / d["path"]) as c:
                    assert c.size == (p.size[0] // 2, p.size[1] // 2)
    assert total > 0
    assert {d["relation"] for b in batches for d in b.derived} == {"crop", "frame"}


def test_unknown_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic source"):
        generate(tmp_path, Spec(sources=("nope",)))
