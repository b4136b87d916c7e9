"""A dataset version's own objects — the JPEGs a VOC build converts (objects no node names), its
manifest.jsonl and dataset.json — are acknowledged and kept: `hoard delete --object` of a
converted JPEG, or a batch holding the same bytes ingested and dropped, then `hoard gc`, leave
`hoard dataset materialize` able to make the version again, byte for byte. And the label
values a spec reads as plain: JSON-shaped text a user meant is a class, and the dry run finds a
JSON blob wherever the build does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hoardfs.datasets import api
from hoardfs.datasets.spec import DatasetError, load_spec
from hoardfs.sql import datasets as sqld
from hoardfs.sql.apply import apply_write_intent
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


def _imagefolder(tmp: Path, name: str, class_label: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlayout = "imagefolder"\nclass_label = "{class_label}"\n[selector]\n'
                    'kinds = ["image"]\n[split]\nratios = { train = 0.6, val = 0.4 }\nsalt = "s1"\ngroup = "none"\n'
                    'allow_skew = true\n')
    return path


def test_json_shaped_plain_values_are_classes_not_blobs(photos, pg, tmp_path: Path) -> None:
    """A class key whose plain values are only shaped like JSON — `[1]`, `[0, 1]` (a multi-hot
    target), `{}` — is no JSON blob: the dry run and the build agree on the classes and counts
    (the old code refused it as Label Studio's raw answers)."""
    cfg, by_sha = photos
    values = ["[1]", "[0, 1]", "{}"]
    apply_write_intent(pg, {"key": "test:json-shaped", "labels": [
        {"node": sha, "key": "target", "value": values[i % 3]} for i, sha in enumerate(sorted(by_sha))]})
    spec = _imagefolder(tmp_path, "shaped", "target")
    dry = _hoard(cfg, "dataset", "build", str(spec), "--dry-run", "--json")
    _ok(dry)
    built = _build(cfg, spec)
    assert {m["class"] for m in _manifest(Path(built["path"]))} == set(values)
    assert json.loads(dry.stdout)["counts"] == built["counts"]


def test_the_dry_run_finds_a_blob_past_one_fetch_of_candidates(photos, pg, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """More values that start like JSON but are none (`[draft] …`) than the dry run fetches at
    once come before a node holding a Label Studio result: the dry run refuses it as the build
    does (the old code looked at the first JSON_CANDIDATES only, and passed it)."""
    cfg, by_sha = photos
    shas = sorted(by_sha, key=lambda h: pg.execute("SELECT node_id FROM node WHERE sha256 = %s",
                                                   [bytes.fromhex(h)]).fetchone()[0])
    blob = json.dumps({"type": "choices", "value": {"choices": ["cat"]}})
    apply_write_intent(pg, {"key": "test:draft", "labels": [
        {"node": sha, "key": "kind", "value": blob if i == len(shas) - 1 else f"[draft] {i}"}
        for i, sha in enumerate(shas)]})
    monkeypatch.setattr(sqld, "JSON_CANDIDATES", 2)
    spec = load_spec(_imagefolder(tmp_path, "drafts", "kind"))
    with pytest.raises(DatasetError, match="class_label = 'kind' holds JSON blobs"):
        api.dry_run(cfg, spec)
    res = _hoard(cfg, "dataset", "build", str(tmp_path / "drafts.toml"), "--here")
    assert res.returncode == 5 and "class_label = 'kind' holds JSON blobs" in res.stderr, res.stdout + res.stderr


def test_materialize_of_samples_deleted_says_to_build_a_new_version(photos, tmp_path: Path) -> None:
    """The samples' batch dropped and collected: `materialize` of a removed version refuses in
    one line saying it cannot be made again and to build a new version (the old line said to
    narrow a selection a materialize does not have)."""
    cfg, _ = photos
    v1 = _build(cfg, _imagefolder(tmp_path, "gone", "class"))
    _ok(_hoard(cfg, "dataset", "rm", "gone@1"))
    _ok(_hoard(cfg, "delete", "--batch", "photos-1", "--yes"))
    _ok(_hoard(cfg, "gc", "--threshold", "1.0"))
    res = _hoard(cfg, "dataset", "materialize", "gone@1")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 5 and len(lines) == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "dataset gone@1:" in lines[0] and "build a new one from its spec" in lines[0], lines[0]
    assert "narrow the selection" not in lines[0] and not Path(v1["path"]).exists()
