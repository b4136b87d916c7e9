"""A dataset version's own objects — the JPEGs a VOC build converts (objects no node names), its
manifest.jsonl and dataset.json — are acknowledged and kept: `hoard delete --object` of a
converted JPEG, or a batch holding the same bytes ingested and dropped, then `hoard gc`, leave
`hoard dataset materialize` able to make the version again, byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import needs_realdata
from tests.test_dataset_voc import _build, _manifest, _spec, photos  # noqa: F401 (the fixture)
from tests.test_datasets import _hoard, tree_sha256

pytestmark = [pytest.mark.services, needs_realdata]


def _ok(res) -> None:
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr


def _again(cfg, root: Path, h: str) -> None:
    """`dataset rm photos@1` then `materialize photos@1` make the same tree."""
    _ok(_hoard(cfg, "dataset", "rm", "photos@1"))
    assert not root.exists()
    _ok(_hoard(cfg, "dataset", "materialize", "photos@1", "--json"))
    assert tree_sha256(root) == h


def test_a_released_converted_jpeg_survives_gc(photos, tmp_path: Path) -> None:
    """`hoard delete --object` of a JPEG a VOC build converted, then `hoard gc`: the object is
    kept (the version's row needs it) and materialize makes the same tree."""
    cfg, _ = photos
    v1 = _build(cfg, _spec(tmp_path, "photos"))
    root = Path(v1["path"])
    h = tree_sha256(root)
    converted = sorted({m["converted"]["sha256"] for m in _manifest(root) if "converted" in m})
    assert converted
    _ok(_hoard(cfg, "delete", *[a for sha in converted for a in ("--object", sha)]))
    _ok(_hoard(cfg, "gc", "--threshold", "1.0"))
    _again(cfg, root, h)  # the old code: the converted JPEGs are gone, materialize refuses


def test_the_versions_files_ingested_and_dropped_survive_gc(photos, tmp_path: Path) -> None:
    """The built tree (converted JPEGs, manifest.jsonl, dataset.json) ingested as a batch, that
    batch dropped and `hoard gc` run: the version's own objects stay and materialize makes the
    same tree."""
    cfg, _ = photos
    v1 = _build(cfg, _spec(tmp_path, "photos"))
    root = Path(v1["path"])
    h = tree_sha256(root)
    batch = cfg.ssd.zone_path("3A") / "again-1"
    batch.mkdir()
    files = {p.name: p for p in sorted((root / "JPEGImages").iterdir())}
    files |= {"manifest.jsonl": root / "manifest.jsonl", "doc.txt": root / "dataset.json"}  # (X.json: X's sidecar)
    for name, src in files.items():
        shutil.copyfile(src, batch / name)
        (batch / f"{name}.json").write_text(json.dumps({"title": name}))
    _ok(_hoard(cfg, "ingest", str(batch), "--source", "sidecar", "--here"))
    _ok(_hoard(cfg, "delete", "--batch", "again-1", "--yes"))
    _ok(_hoard(cfg, "gc", "--threshold", "1.0"))
    _again(cfg, root, h)  # the old code: manifest.jsonl and the converted JPEGs are gone
