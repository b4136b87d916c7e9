"""`hoard dataset` (datasets/): specs checked whole, splits that never move, the class map,
builds into zone 3D that are byte-identical when made twice (a forced rebuild, a materialize
after rm — copy and view mode), versions and diffs, every bad input refused in one line
before a byte moves, kill -9 mid-build then the same command finishes — against real
PostgreSQL, Redis, the store and (view mode) the FUSE mount."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.synth import Spec
from datasets.formats import FORMATS
from datasets.plan import samples_from_rows, split_of
from datasets.spec import DatasetError, load_spec, parse_spec
from fsd.outputs import seal
from sql.apply import apply_write_intent
from tests.test_ingest import ingest_sample

REPO = Path(__file__).resolve().parent.parent
CONTRACT = {"_JOB.json", "_SEALED", "_MANIFEST.json"}  # _JOB.json holds times: not part of the dataset


def _hoard(cfg, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsd", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def tree_sha256(root: Path) -> str:
    """sha256 over every file's relative path and bytes (links into the mount followed), the
    output contract's own files left out."""
    h = hashlib.sha256()
    files = []
    for top, _dirs, names in os.walk(root, followlinks=True):
        for n in names:
            rel = os.path.relpath(os.path.join(top, n), root)
            if rel not in CONTRACT:
                files.append(rel)
    assert files, f"no files under {root}"
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


# -- pure: spec, splits, class map ----------------------------------------------------------------

SPEC = """
name = "pets"
layout = "imagefolder"
class_label = "class"
[selector]
file_types = ["png"]
[split]
ratios = { train = 0.8, val = 0.2 }
salt = "v1"
"""


def _rows(n: int, classes=("cat", "dog"), roots: int | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        sha = hashlib.sha256(f"node {i}".encode()).hexdigest()
        root = 10_000 + (i % roots if roots else i)
        rows.append({"node_id": i + 1, "sha256": sha, "size": 100 + i, "file_type": "png",
                     "labels": {"class": [classes[i % len(classes)]]}, "lineage": [i + 1, root], "root_id": root,
                     "source_url": f"https://example.org/p/{root}", "date": "2024-05-01", "boxes": [],
                     "licences": []})
    return rows


def test_ratios_not_summing_to_one_and_unknown_keys_are_one_line() -> None:
    with pytest.raises(DatasetError, match=r"split.ratios: the ratios sum to 0.9, not 1"):
        load_spec(SPEC.replace("val = 0.2", "val = 0.1"))
    with pytest.raises(DatasetError, match=r"colour: unknown key"):
        load_spec('colour = "red"\n' + SPEC)
    with pytest.raises(DatasetError, match=r"\[selector\] selector rejected"):
        parse_spec({"name": "x", "layout": "imagefolder", "selector": {"colour": "red"}})
    with pytest.raises(DatasetError, match=r"does not exist"):
        load_spec(Path("/nonexistent/spec.toml"))


def test_splits_never_move_when_data_is_added_and_groups_stay_together() -> None:
    spec = load_spec(SPEC)
    fmt = FORMATS["imagefolder"]
    small = {s.sha256: s.split for s in samples_from_rows(spec, fmt, _rows(40, roots=10), None).samples}
    big = samples_from_rows(spec, fmt, _rows(200, roots=10), None).samples
    assert all(small[s.sha256] == s.split for s in big if s.sha256 in small)
    by_root: dict[int, set[str]] = {}
    for s in big:
        by_root.setdefault(s.root_id, set()).add(s.split)
    assert all(len(v) == 1 for v in by_root.values()), by_root  # one post never straddles splits
    assert {s.split for s in big} == {"train", "val"}
    assert split_of({"a": 0.5, "b": 0.5}, "s", "root:1") == split_of({"a": 0.5, "b": 0.5}, "s", "root:1")


def test_class_map_is_frozen_pinned_and_appended_never_reordered() -> None:
    spec = load_spec(SPEC)
    fmt = FORMATS["imagefolder"]
    p = samples_from_rows(spec, fmt, _rows(10), None)
    assert p.class_map == ["cat", "dog"]
    with pytest.raises(DatasetError, match=r"class 'bird' \(of node [0-9a-f]{64}\) is not in the class map frozen"):
        samples_from_rows(spec, fmt, _rows(10, ("cat", "dog", "bird")), ["cat", "dog"])
    grown = samples_from_rows(spec.model_copy(update={"allow_new_classes": True}), fmt,
                              _rows(10, ("dog", "bird", "cat")), ["dog", "cat"])
    assert grown.class_map == ["dog", "cat", "bird"] and grown.new_classes == ["bird"]
    assert {s.cls: s.class_index for s in grown.samples} == {"dog": 0, "cat": 1, "bird": 2}
    pinned = load_spec(SPEC.replace('class_label = "class"', 'class_label = "class"\nclasses = ["dog", "cat", "fox"]'))
    with pytest.raises(DatasetError, match=r"class 'fox' has no samples; drop it from classes or widen the selector"):
        samples_from_rows(pinned, fmt, _rows(10), None)
    with pytest.raises(DatasetError, match=r"class_label = 'klass': no selected node has that label key"):
        samples_from_rows(load_spec(SPEC.replace('"class"', '"klass"')), fmt, _rows(4), None)


def test_caps_keep_a_stable_choice() -> None:
    spec = load_spec(SPEC.replace('class_label = "class"', 'class_label = "class"\nmax_per_class = 3'))
    fmt = FORMATS["imagefolder"]
    a = samples_from_rows(spec, fmt, _rows(60), None).samples
    b = samples_from_rows(spec, fmt, list(reversed(_rows(60))), None).samples
    assert a == b and len(a) == 3 * 2 * 2  # 3 per class per split, two classes, two splits


# -- against the services -------------------------------------------------------------------------

@pytest.fixture
def labelled(hoard_home: Path, pg, redis_conn):
    """Two gallery batches ingested (real UA_1), their png images labelled class = cat | dog."""
    cfg, _ = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=43, batches=2, items_per_batch=20, large_max_mb=1,
                                                            ready_signal=True, sources=("gallery",)))
    shas = [r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    assert len(shas) >= 10
    _label(pg, "setup", [(h, "class", "cat" if i % 2 else "dog") for i, h in enumerate(shas)])
    return cfg, shas


def _label(pg, key: str, rows: list[tuple[str, str, str]], unlabel: list[tuple[str, str]] = ()) -> None:
    apply_write_intent(pg, {"key": f"test:{key}", "labels": [{"node": h, "key": k, "value": v} for h, k, v in rows],
                            "unlabels": [{"node": h, "key": k} for h, k in unlabel]})


def _spec(tmp: Path, name: str = "pets", extra: str = "", selector: str = 'file_types = ["png"]',
          ratios: str = "train = 0.75, val = 0.25", layout: str = "imagefolder", class_label: str = "class") -> Path:
    path = tmp / f"{name}-{hashlib.sha1((extra + selector + ratios + layout).encode()).hexdigest()[:6]}.toml"
    path.write_text(f'name = "{name}"\nlayout = "{layout}"\nclass_label = "{class_label}"\n{extra}\n'
                    f'[selector]\n{selector}\n[split]\nratios = {{ {ratios} }}\nsalt = "s1"\n')
    return path


def _build(cfg, spec: Path, *args: str) -> dict:
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_build_twice_is_byte_identical_and_versions_diff_and_materialize(labelled, pg, tmp_path: Path) -> None:
    cfg, shas = labelled
    spec = _spec(tmp_path)
    dry = _hoard(cfg, "dataset", "build", str(spec), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    d = json.loads(dry.stdout)
    assert d["quota_ok"] and d["samples"] == len(shas) and set(d["counts"]) == {"train", "val"}
    assert not (cfg.ssd.zone_path("3D") / "pets-v1").exists()  # a dry run writes nothing
    v1 = _build(cfg, spec)
    root1 = Path(v1["path"])
    assert v1["version"] == 1 and root1 == cfg.ssd.zone_path("3D") / "pets-v1"
    seal.check_sealed(root1, verify=True)
    manifest = [json.loads(line) for line in (root1 / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["sha256"] for m in manifest) == sorted(shas)
    assert all((root1 / m["path"]).is_file() and m["lineage"][0] == m["node_id"] and m["lineage"][-1] == m["root_id"]
               for m in manifest)
    assert all(m["path"] == f"{m['split']}/{m['class']}/{m['sha256'][:16]}.png" for m in manifest)
    doc = json.loads((root1 / "dataset.json").read_bytes())
    assert doc["class_map"] == ["cat", "dog"] and doc["samples"] == len(shas)
    assert "| cat |" in (root1 / "README.md").read_text()
    h1 = tree_sha256(root1)
    same = _build(cfg, spec)
    assert same["unchanged"] and same["version"] == 1 and same["path"] == str(root1)
    v2 = _build(cfg, spec, "--force")
    assert v2["version"] == 2 and tree_sha256(Path(v2["path"])) == h1  # a forced rebuild: the same bytes
    # labels change: version 3 differs, and diff says how
    old = next(m["class"] for m in manifest if m["sha256"] == shas[0])
    _label(pg, "unlabel", [], unlabel=[(shas[0], "class")])
    _label(pg, "relabel", [(shas[0], "class", "cat" if old == "dog" else "dog")])
    v3 = _build(cfg, spec)
    assert v3["version"] == 3
    diff = _hoard(cfg, "dataset", "diff", "pets@2", "pets@3", "--json")
    assert diff.returncode == 0, diff.stderr
    dd = json.loads(diff.stdout)
    assert [x["sha256"] for x in dd["relabelled"]] == [shas[0]] and not dd["added"] and not dd["removed"]
    # rm, then materialize the old version: the same bytes though its labels changed
    rm = _hoard(cfg, "dataset", "rm", "pets@1", "--json")
    assert rm.returncode == 0 and not root1.exists(), rm.stderr
    again = _hoard(cfg, "dataset", "materialize", "pets@1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["path"] == str(root1) and tree_sha256(root1) == h1
    listed = json.loads(_hoard(cfg, "dataset", "list", "--json").stdout)
    assert [v["version"] for v in listed[0]["versions"]] == [1, 2, 3]
    assert all(v["status"] == "done" for v in listed[0]["versions"])
    shown = _hoard(cfg, "dataset", "show", "pets@2", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["sealed"], shown.stderr
    # the manifests are nodes gc keeps, never samples of a later selection
    located = pg.execute("SELECT count(*) FROM physical_path WHERE locator LIKE 'dataset:pets@%%'").fetchone()[0]
    assert located == 6


@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_view_mode_builds_twice_byte_identical_through_the_mount(labelled, tmp_path: Path) -> None:
    from tests.test_mount import mounted

    cfg, _ = labelled
    mnt = tmp_path / "mnt"
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{mnt}"\n')
    spec = _spec(tmp_path, "pv")
    copy = _build(cfg, spec)  # the same tree in copy mode, to compare with
    v2 = _build(cfg, spec, "--mode", "view")
    assert v2["version"] == 2 and v2["view"] == "3D-pv-v2"
    root = Path(v2["path"])
    assert seal.check_sealed(root, verify=True)["actual_bytes"] == 0  # nothing copied
    v3 = _build(cfg, spec, "--mode", "view", "--force")
    with mounted(str(cfg.source), mnt):
        h = tree_sha256(root)
        assert h == tree_sha256(Path(copy["path"])) == tree_sha256(Path(v3["path"]))
        assert _hoard(cfg, "dataset", "rm", "pv@2").returncode == 0 and not root.exists()
        res = _hoard(cfg, "dataset", "materialize", "pv@2", "--json")
        assert res.returncode == 0, res.stderr
        assert tree_sha256(root) == h


BAD = {
    "empty selection": ({"selector": 'sources = ["nosuchsource"]'}, 5, "the selection is empty"),
    "unknown label key": ({"class_label": "klass"}, 5, "class_label = 'klass': no selected node has that label key"),
    "ratios": ({"ratios": "train = 0.7, val = 0.2"}, 2, "the ratios sum to 0.9, not 1"),
    "class with no members": ({"extra": 'classes = ["cat", "dog", "fox"]'}, 5, "class 'fox' has no samples"),
    "class not in the map": ({"extra": 'classes = ["cat"]'}, 5, "class 'dog' (of node"),
    "missing layout": ({"layout": "tfrecord"}, 2, "layout 'tfrecord' is not one of"),
    "3D full": ({}, 6, "zone 3D has room for"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_are_refused_in_one_line_before_a_byte_moves(labelled, pg, tmp_path: Path, case: str) -> None:
    cfg, _ = labelled
    kw, code, message = BAD[case]
    if case == "3D full":
        text = Path(cfg.source).read_text().replace("[ssd.zones.3D]\nquota_gb = 1", "[ssd.zones.3D]\nquota_gb = 0.0001")
        Path(cfg.source).write_text(text)
    spec = _spec(tmp_path, "bad", **kw)
    for args in (["--dry-run"], ["--here"]):
        res = _hoard(cfg, "dataset", "build", str(spec), *args)
        if args == ["--dry-run"] and case == "3D full":
            assert res.returncode == 6 and "too full" in res.stdout, res.stdout + res.stderr
            continue
        assert res.returncode == code, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr
    zone = cfg.ssd.zone_path("3D")
    assert sorted(p.name for p in zone.iterdir() if p.name not in (".tmp", ".trash")) == []
    assert not (zone / ".tmp").exists() or not any((zone / ".tmp").iterdir())
    assert pg.execute("SELECT count(*) FROM dataset_version").fetchone()[0] == 0


@pytest.mark.lab
@pytest.mark.expect_log(r"zone 3D: reclaimed the stale reservation of job dataset:slow@1", level="WARNING",
                        optional=True)
def test_kill_9_mid_build_then_the_same_command_completes(lab_factory, hoard_home: Path, pg, redis_conn,
                                                         tmp_path: Path) -> None:
    """kill -9 while the files are copied (lab disks reading 0.5 MiB/s): nothing sealed, nothing
    recorded as done; the same command resumes version 1 and seals it whole."""
    from tests.test_outputs import _slow_lab_export, _until_a_file_in

    lab, cfg, _sel = _slow_lab_export(lab_factory, hoard_home, pg, redis_conn, tmp_path)
    shas = [r[0] for r in pg.execute("SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc "
                                     "USING (node_id) WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    _label(pg, "slow", [(h, "class", "cat" if i % 2 else "dog") for i, h in enumerate(shas)])
    spec = _spec(tmp_path, "slow")
    cmd = [sys.executable, "-m", "fsd", "--config", str(cfg.source), "dataset", "build", str(spec), "--here"]
    proc = subprocess.Popen(lab.wrap(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    tmp = cfg.ssd.zone_path("3D") / ".tmp" / "slow-v1"
    _until_a_file_in(tmp)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cfg.ssd.zone_path("3D") / "slow-v1").exists()  # nothing half-sealed
    assert pg.execute("SELECT status FROM dataset_version WHERE name = 'slow'").fetchall() == [("building",)]
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["version"] == 1
    seal.check_sealed(Path(report["path"]), verify=True)
    assert pg.execute("SELECT status FROM dataset_version WHERE name = 'slow'").fetchall() == [("done",)]
    assert not tmp.exists()


def test_a_queued_build_runs_on_the_io_queue(labelled, redis_conn, tmp_path: Path) -> None:
    """Without --here the build is an RQ job on `io` (the spec travels in it); a worker builds
    it and its report names the sealed directory under `path`."""
    from jobs.queues import fetch_job
    from tests.test_ingest import work

    cfg, shas = labelled
    res = _hoard(cfg, "dataset", "build", str(_spec(tmp_path, "queued")), "--json")
    assert res.returncode == 0, res.stderr
    queued = json.loads(res.stdout)
    assert queued["queued"] and queued["job"] == "dataset-queued"
    assert not (cfg.ssd.zone_path("3D") / "queued-v1").exists()
    work(redis_conn)
    report = fetch_job("dataset-queued", redis_conn).return_value()
    assert report["version"] == 1 and report["path"] == str(cfg.ssd.zone_path("3D") / "queued-v1")
    seal.check_sealed(Path(report["path"]), verify=True)
    assert sum(sum(by.values()) for by in report["counts"].values()) == len(shas)


def test_sample_rows_lineage_roots_and_metadata_across_chunks(pg, monkeypatch) -> None:
    """Each node's lineage climbs by the parent with the lowest node id to a node with no parent
    (a cycle is cut at MAX_DEPTH), and its source URL and date are its root's — the same when
    the nodes are read in chunks that share ancestors (sql.datasets reads a level of parents at
    a time, each ancestor once)."""
    from sql import datasets as sqld
    from sql.migrate import migrate

    migrate(pg)
    apply_write_intent(pg, {"key": "test:lineage", "sources": ["web"], "nodes": [
        {"sha256": f"{i:064x}", "physical": {"size": i, "file_type": "png"}} for i in range(1, 9)],
        "metadata": [{"node": f"{1:064x}", "source": "web", "download_time": "2026-03-04T05:06:07+00:00",
                      "raw_metadata": {"source_url": "https://example.org/p/1", "license": "CC-BY", "x": "y" * 50}}],
        "edges": [{"parent": f"{a:064x}", "child": f"{b:064x}", "relationship": "media_of"}
                  for a, b in ((1, 2), (2, 3), (1, 4), (5, 4), (6, 7), (7, 6))]})
    ids = {i: pg.execute("SELECT node_id FROM node WHERE sha256 = %s", [bytes.fromhex(f"{i:064x}")]).fetchone()[0]
           for i in range(1, 9)}
    monkeypatch.setattr(sqld, "CHUNK", 2)
    rows = sqld.sample_rows(pg, [ids[i] for i in (3, 4, 2, 7, 8, 1)])
    assert rows[ids[3]]["lineage"] == [ids[3], ids[2], ids[1]]
    assert rows[ids[4]]["lineage"] == [ids[4], ids[1]]  # two parents: the lower node id
    assert rows[ids[8]]["lineage"] == [ids[8]] and rows[ids[8]]["source_url"] is None
    assert rows[ids[7]]["lineage"] == [ids[7]] + [ids[6], ids[7]] * 32  # the cycle cut: 64 steps up
    for i in (1, 2, 3, 4):
        r = rows[ids[i]]
        assert (r["root_id"], r["source_url"], r["date"]) == (ids[1], "https://example.org/p/1", "2026-03-04")
    assert rows[ids[1]]["licences"] == ["CC-BY"] and rows[ids[3]]["licences"] == ["CC-BY"]
