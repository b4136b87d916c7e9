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
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec
from hoardfs.datasets.formats import FORMATS
from hoardfs.datasets.plan import samples_from_rows, split_of
from hoardfs.datasets.spec import DatasetError, load_spec, parse_spec
from hoardfs.fsd.outputs import seal
from hoardfs.sql.apply import apply_write_intent
from tests.test_ingest import ingest_sample

REPO = Path(__file__).resolve().parent.parent
CONTRACT = {"_JOB.json", "_SEALED", "_MANIFEST.json"}  # _JOB.json holds times: not part of the dataset


def _hoard(cfg, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
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
                     "licences": [], "group": f"post:{root}"})
    return rows


def test_a_near_dup_group_lies_in_one_split_and_dedup_keeps_one_of_it() -> None:
    """group = "near_dup": each row's `near_dup` (its near-duplicate group's name, as
    hoardfs.sql.neardup.group_of_nodes gives it) is its group, nothing else joined — every group
    lies in one split, the splits honour the ratios; dedup = "by_near_dup" keeps one sample of
    each group (the lowest node id) and every image in no group."""
    spec = load_spec(SPEC.replace('salt = "v1"', 'salt = "v1"\ngroup = "near_dup"'))
    fmt = FORMATS["imagefolder"]
    out = _rows(160, roots=None)
    for i, r in enumerate(out):
        r["root_id"] = 10_000 + i // 2
        r["lineage"] = [r["node_id"], r["root_id"]]
        if i % 3 == 0:  # groups of 3 copies across 2-3 posts
            r["near_dup"] = f"{i // 9:064x}"
    samples = samples_from_rows(spec, fmt, out, None).samples
    split_of_node = {s.node_id: s.split for s in samples}
    by: dict[str, set[str]] = {}
    for r in out:
        if r.get("near_dup"):
            by.setdefault(f"group {r['near_dup']}", set()).add(split_of_node[r["node_id"]])
    assert all(len(v) == 1 for v in by.values()), by
    val = sum(1 for s in samples if s.split == "val")
    assert abs(val / len(samples) - 0.2) <= 0.02, val  # 53 groups of 3 and 107 images alone: no chain
    deduped = samples_from_rows(spec.model_copy(update={"dedup": "by_near_dup"}), fmt, out, None)
    grouped = {r["near_dup"] for r in out if r.get("near_dup")}
    assert deduped.dropped_dup == sum(1 for r in out if r.get("near_dup")) - len(grouped)
    kept = {s.node_id for s in deduped.samples}
    first = {}
    for r in sorted(out, key=lambda r: r["node_id"]):
        first.setdefault(r.get("near_dup") or r["sha256"], r["node_id"])
    assert kept == set(first.values())
    with pytest.raises(DatasetError, match=r"near_dup_threshold"):
        load_spec("near_dup_threshold = 40\n" + SPEC)


def test_ratios_not_summing_to_one_and_unknown_keys_are_one_line() -> None:
    with pytest.raises(DatasetError, match=r"split.ratios: the ratios sum to 0.9, not 1"):
        load_spec(SPEC.replace("val = 0.2", "val = 0.1"))
    with pytest.raises(DatasetError, match=r"colour: unknown key"):
        load_spec('colour = "red"\n' + SPEC)
    with pytest.raises(DatasetError, match=r"\[selector\] selector rejected"):
        parse_spec({"name": "x", "layout": "imagefolder", "selector": {"colour": "red"}})
    with pytest.raises(DatasetError, match=r"does not exist"):
        load_spec(Path("/nonexistent/spec.toml"))
    # a `.` would make the RQ job id `dataset-<name>` one RQ refuses (a traceback at submit)
    with pytest.raises(DatasetError, match=r"name: 1-120 of A-Z a-z 0-9 _ - .*\(got 'pets.v2'\)"):
        load_spec(SPEC.replace('name = "', 'name = "pets.v2" #', 1))


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


def test_a_label_group_takes_every_sample_of_its_posts_into_one_split() -> None:
    """group = "label:dup" (a near-duplicate group an action wrote): each post has a labelled
    image and an unlabelled sibling, and some groups span two posts. Every post and every group
    lies in one split, the ratios are met, and doubling the posts moves at most two groups (the
    cuts between splits follow the data). On the old code the labelled image took its group's
    split and its sibling its root's: one post in train and val."""
    spec = load_spec(SPEC.replace('salt = "v1"', 'salt = "v1"\ngroup = "label:dup"'))
    fmt = FORMATS["imagefolder"]

    def rows(posts: int) -> list[dict]:
        out = _rows(2 * posts, roots=None)
        for i, r in enumerate(out):
            r["root_id"] = 10_000 + i // 2
            r["lineage"] = [r["node_id"], r["root_id"]]
            if i % 2 == 0:  # the first image of each post is in a group shared by two posts
                r["labels"]["dup"] = [f"g{i // 4}"]
        return out

    small = samples_from_rows(spec, fmt, rows(40), None).samples
    by_root: dict[int, set[str]] = {}
    by_group: dict[str, set[str]] = {}
    for s in small:
        by_root.setdefault(s.root_id, set()).add(s.split)
        for g in s.labels.get("dup", ()):
            by_group.setdefault(g, set()).add(s.split)
    assert all(len(v) == 1 for v in by_root.values()), by_root
    assert all(len(v) == 1 for v in by_group.values()), by_group
    assert {s.split for s in small} == {"train", "val"}
    big = {s.sha256: s.split for s in samples_from_rows(spec, fmt, list(reversed(rows(80))), None).samples}
    assert sum(big[s.sha256] != s.split for s in small) <= 8  # two groups of 4
    assert sum(s.split == "val" for s in small) == 16


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
    """max_per_class = 8 with train 0.8 / val 0.2: 8 of a class in train, 2 in val, whatever the
    rows' order."""
    spec = load_spec(SPEC.replace('class_label = "class"', 'class_label = "class"\nmax_per_class = 8'))
    fmt = FORMATS["imagefolder"]
    a = samples_from_rows(spec, fmt, _rows(120), None).samples
    b = samples_from_rows(spec, fmt, list(reversed(_rows(120))), None).samples
    assert a == b
    assert Counter((s.split, s.cls) for s in a) == {("train", "cat"): 8, ("train", "dog"): 8,
                                                    ("val", "cat"): 2, ("val", "dog"): 2}


def test_caps_keep_the_ratios_asked_for() -> None:
    """A cap holds in the largest split and the others keep their ratio's share of it: with 80/20
    and 20 per class the realised shares are 80/20 (a cap per split alike made it ~53/47); caps
    that leave a split off its ratio (a class too small in train) are refused before a byte moves."""
    spec = load_spec(SPEC.replace('class_label = "class"', 'class_label = "class"\nmax_per_class = 20'))
    p = samples_from_rows(spec, FORMATS["imagefolder"], _rows(80), None)
    shares = {sp: v["share"] for sp, v in p.splits.items()}
    assert shares == {"train": 0.8, "val": 0.2}, shares
    tiny = SPEC.replace('class_label = "class"', 'class_label = "class"\ncaps = { cat = 2, dog = 2, fox = 2 }')
    rows = _rows(60, classes=("cat", "dog", "fox"))
    with pytest.raises(DatasetError, match=r"after the caps split 'train' would hold 6 of 9 samples .*allow_skew"):
        samples_from_rows(load_spec(tiny), FORMATS["imagefolder"], rows, None)  # val keeps 1 a class: at least 1
    skewed = samples_from_rows(load_spec(tiny.replace('salt = "v1"', 'salt = "v1"\nallow_skew = true')),
                               FORMATS["imagefolder"], rows, None)
    assert {sp: v["samples"] for sp, v in skewed.splits.items()} == {"train": 6, "val": 3}


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
    assert "| `cat` |" in (root1 / "README.md").read_text()
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
        # a dataset only ever built as a view, removed: the view owned what it made (the README),
        # never the recorded manifest and dataset.json — a gc that does not ask the database
        # keeps them, and materialize makes the version again
        only = _build(cfg, _spec(tmp_path, "pw"), "--mode", "view")
        assert _hoard(cfg, "dataset", "rm", "pw@1").returncode == 0
        assert _hoard(cfg, "gc", "--no-database", "--threshold", "1.0").returncode == 0
        res = _hoard(cfg, "dataset", "materialize", "pw@1", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        assert Path(only["path"]).is_dir() and (Path(only["path"]) / "_SEALED").is_file()


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
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "dataset", "build", str(spec), "--here"]
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
    from hoardfs.jobs.queues import fetch_job
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


def test_a_build_resumed_over_changed_labels_locates_one_manifest_per_name(labelled, pg, tmp_path: Path) -> None:
    """A build killed right after it recorded version 1's manifest, then run again after a
    label changed: version 1 gets the new manifest, and `dataset:rs@1/manifest.jsonl` locates
    that one node only — the earlier attempt's is no longer located there and is marked deleted
    (on the old code both stayed located at the one name)."""
    import psycopg

    from hoardfs.datasets import api
    from hoardfs.fsd.store import Store
    from hoardfs.sql import datasets as sqld

    cfg, shas = labelled
    path = _spec(tmp_path, "rs")
    spec = load_spec(path)
    fmt = api.resolve_format(spec)
    # what the killed build left: version 1 `building`, its manifest and dataset.json recorded
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        p = api._plan(cfg, conn, spec, fmt)
        made = api._make(spec.doc(), spec.sha256(), fmt, p.samples, p.class_map, p.licences)
        n = sqld.begin_version(conn, "rs", spec.doc(), spec.sha256(), made.doc["state"]["fingerprint"], "copy",
                               str(cfg.ssd.zone_path("3D")))
        with Store.open(cfg) as store:
            first, _, first_index = api._record(store, conn, "rs", n, made)
    assert n == 1
    cls = pg.execute("SELECT value FROM label l JOIN node n USING (node_id) WHERE n.sha256 = %s AND l.key = 'class'",
                     [bytes.fromhex(shas[0])]).fetchone()[0]
    _label(pg, "rs-unlabel", [], unlabel=[(shas[0], "class")])
    _label(pg, "rs-relabel", [(shas[0], "class", "cat" if cls == "dog" else "dog")])
    report = _build(cfg, path)
    assert report["version"] == 1 and not report.get("unchanged")
    row = pg.execute("SELECT encode(manifest_sha256, 'hex'), status FROM dataset_version WHERE name = 'rs'").fetchall()
    assert len(row) == 1 and row[0][1] == "done" and row[0][0] != first
    for name in ("manifest.jsonl", "dataset.json"):
        located = pg.execute("SELECT encode(n.sha256, 'hex') FROM physical_path pp JOIN node n USING (node_id) "
                             "WHERE pp.locator = %s", [f"dataset:rs@1/{name}"]).fetchall()
        assert len(located) == 1, (name, located)
    assert pg.execute("SELECT encode(n.sha256, 'hex') FROM physical_path pp JOIN node n USING (node_id) WHERE "
                      "pp.locator = 'dataset:rs@1/manifest.jsonl'").fetchone()[0] == row[0][0]
    assert pg.execute("SELECT pc.is_deleted FROM node n JOIN physical_content pc USING (node_id) WHERE n.sha256 = %s",
                      [bytes.fromhex(first)]).fetchone()[0] is True
    manifest = (Path(report["path"]) / "manifest.jsonl").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == row[0][0]
    # the version's own objects are the finished build's: its loader index alone (the killed
    # attempt's index let go — gc frees it — not kept for as long as the version is recorded)
    index = pg.execute("SELECT encode(loader_index_sha256, 'hex') FROM dataset_version WHERE name = 'rs'").fetchone()[0]
    assert index != first_index
    assert [r[0] for r in pg.execute("SELECT encode(sha256, 'hex') FROM dataset_object WHERE name = 'rs'")] == [index]


def test_zone_3d_missing_is_one_line_naming_it(labelled, pg, tmp_path: Path) -> None:
    """Zone 3D's directory gone (the SSD not mounted): the dry run and the build each say so in
    one line with the fix — not "room for 0 bytes" — and record nothing."""
    cfg, _ = labelled
    zone = cfg.ssd.zone_path("3D")
    for p in sorted(zone.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    zone.rmdir()
    spec = _spec(tmp_path, "nozone")
    for args in (["--dry-run"], ["--here"]):
        res = _hoard(cfg, "dataset", "build", str(spec), *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 3 and len(lines) == 1, res.stdout + res.stderr
        assert f"zone 3D: {zone} does not exist" in lines[0] and "hoard init" in lines[0], lines[0]
        assert "room for" not in res.stderr
    assert not zone.exists()
    assert pg.execute("SELECT count(*) FROM dataset_version").fetchone()[0] == 0


def test_an_interrupted_materialize_never_lets_a_build_take_the_version_over(labelled, pg, tmp_path: Path) -> None:
    """Ctrl-C while `materialize pets@1` copies, then a label changes and the spec is built:
    the build is version 2, and version 1 — acknowledged, its manifest recorded — is still
    itself: `hoard gc` keeps its manifest and materialize makes its bytes again. On the old
    code materialize marked version 1 `building`, so the build "resumed" version 1 over the
    new data, dropped its manifest as stale, and pets@1 was another dataset."""
    from hoardfs.datasets import api

    cfg, shas = labelled
    spec = _spec(tmp_path)
    v1 = _build(cfg, spec)
    root1 = Path(v1["path"])
    h1 = tree_sha256(root1)
    m1 = pg.execute("SELECT manifest_sha256 FROM dataset_version WHERE name = 'pets'").fetchone()[0]
    assert _hoard(cfg, "dataset", "rm", "pets@1").returncode == 0

    def ctrl_c(_done: int, _total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.materialize(cfg, "pets@1", ctrl_c)
    assert not root1.exists()
    _label(pg, "unlabel", [], unlabel=[(shas[0], "class")])
    v2 = _build(cfg, spec)
    assert v2["version"] == 2 and not v2.get("unchanged")
    rows = pg.execute("SELECT version, manifest_sha256 FROM dataset_version WHERE name = 'pets' ORDER BY version")
    assert [(v, bytes(m)) for v, m in rows.fetchall()][0] == (1, bytes(m1))
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    again = _hoard(cfg, "dataset", "materialize", "pets@1", "--json")
    assert again.returncode == 0, again.stderr
    assert tree_sha256(root1) == h1
    assert pg.execute("SELECT status FROM dataset_version WHERE name = 'pets' AND version = 1").fetchone()[0] == "done"


_KILLED_BUILD = """
import os, signal, sys
from hoardfs.base import config
from hoardfs.datasets import api
from hoardfs.datasets.spec import load_spec

def kill_9(done, total):  # a real SIGKILL, while the files are copied
    if done:
        os.kill(os.getpid(), signal.SIGKILL)

api.build(config.load(sys.argv[1]), load_spec(sys.argv[2]), progress=kill_9)
"""


@pytest.mark.expect_log(r"zone 3D: reclaimed the stale reservation of job dataset:kd@1", level="WARNING",
                        optional=True)
def test_after_a_killed_build_health_and_show_name_the_next_step_and_it_works(labelled, pg, tmp_path: Path) -> None:
    """kill -9 mid-copy: `hoard health` names the dataset build that died and says to run it
    again (not only `hoard zones clean`, which leaves the version `building`); `hoard dataset
    show kd` says version 1 is building and how to resume it (the old code said "no dataset
    kd" while `list` showed it); `check` and `verify` find the store whole. Doing what they say
    seals version 1, and health has nothing more to say about it."""
    cfg, _ = labelled
    spec = _spec(tmp_path, "kd")
    res = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(cfg.source), str(spec)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert pg.execute("SELECT status FROM dataset_version WHERE name = 'kd'").fetchall() == [("building",)]
    health = _hoard(cfg, "health")
    lines = [ln for ln in health.stderr.splitlines() if "kd" in ln]
    assert len(lines) == 1 and "the build (or materialize) of dataset kd@1 died" in lines[0], health.stderr
    assert "run the same `hoard dataset build SPEC`" in lines[0] and "hoard dataset rm kd@1" in lines[0]
    shown = _hoard(cfg, "dataset", "show", "kd")
    assert shown.returncode == 2 and "kd@1 is building" in shown.stderr and "resume" in shown.stderr, shown.stderr
    assert "Traceback" not in shown.stderr
    for cmd in ("check", "verify"):
        r = _hoard(cfg, cmd)
        assert r.returncode == 0 and "kd" not in r.stdout + r.stderr, (cmd, r.stdout, r.stderr)
    report = _build(cfg, spec)
    assert report["version"] == 1
    seal.check_sealed(Path(report["path"]), verify=True)
    assert "kd" not in _hoard(cfg, "health").stderr
    assert _hoard(cfg, "dataset", "show", "kd").returncode == 0


def test_sample_rows_lineage_roots_and_metadata_across_chunks(pg, monkeypatch) -> None:
    """Each node's lineage climbs by the parent with the lowest node id to a node with no parent
    (a cycle is cut at MAX_DEPTH), and its source URL and date are its root's — the same when
    the nodes are read in chunks that share ancestors (hoardfs.sql.datasets reads a level of parents at
    a time, each ancestor once)."""
    from hoardfs.sql import datasets as sqld
    from hoardfs.sql.migrate import migrate

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


# -- the dry run: the build's counts, computed in the database -------------------------------------

def test_split_thresholds_fall_where_split_of_changes_its_answer() -> None:
    """The dry run draws splits in SQL against integer thresholds: each is the first 64-bit draw
    n for which `split_of`'s float rule (n / 2**64 < the running sum of the ratios) no longer
    holds — so the SQL and Python draws agree on every n, the float sum that falls a hair short
    of 1 (0.6 + 0.3 + 0.1) included."""
    from hoardfs.sql.datasets import split_thresholds

    def python_index(ratios: dict[str, float], n: int) -> int:  # split_of, with the draw given
        u, acc = n / 2 ** 64, 0.0
        for i, r in enumerate(ratios.values()):
            acc += r
            if u < acc:
                return i
        return len(ratios) - 1

    def sql_index(ratios: dict[str, float], n: int) -> int:
        return next((i for i, t in enumerate(split_thresholds(ratios)[:-1]) if n < t), len(ratios) - 1)

    for ratios in ({"train": 0.8, "val": 0.2}, {"a": 0.6, "b": 0.3, "c": 0.1}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
                   {"x": 1e-9, "y": 1 - 1e-9}, {"only": 1.0}):
        for t in split_thresholds(ratios):
            for n in (t - 2, t - 1, t, t + 1, 0, 2 ** 64 - 1):
                if 0 <= n < 2 ** 64:
                    assert python_index(ratios, n) == sql_index(ratios, n), (ratios, n)
    assert split_thresholds({"a": 0.6, "b": 0.3, "c": 0.1})[-1] < 2 ** 64  # the sum is 0.9999999999999999


def _dry_data(pg, second_parents: bool = True) -> dict[str, int]:
    """Roots (txt, not selected) with 1-4 png images each; some images with a second parent
    (another root), a png child of an image (lineage of 3), images without any parent, a cycle
    of two pngs; classes cat/dog/bird, some unlabelled; `dup` groups spanning posts; an explicit
    split `fold` on some. sha256 → node id."""
    import random

    from hoardfs.sql.migrate import migrate

    migrate(pg)
    rng = random.Random(36)
    nodes, edges, labels = [], [], []
    roots = [f"{0xA000 + r:064x}" for r in range(40)]
    nodes += [{"sha256": h, "physical": {"size": 10, "file_type": "txt"}} for h in roots]
    imgs = []
    for r, root in enumerate(roots):
        for k in range(1 + r % 4):
            h = hashlib.sha256(f"img {r} {k}".encode()).hexdigest()
            imgs.append(h)
            edges.append((root, h))
            if rng.random() < 0.15 and second_parents:  # a second parent: the lower node id wins
                edges.append((roots[rng.randrange(len(roots))], h))
    orphans = [hashlib.sha256(f"orphan {i}".encode()).hexdigest() for i in range(12)]
    kids = [hashlib.sha256(f"kid {i}".encode()).hexdigest() for i in range(10)]
    edges += [(imgs[3 * i], kid) for i, kid in enumerate(kids)]
    cycle = [hashlib.sha256(f"cycle {i}".encode()).hexdigest() for i in range(2)]
    edges += [(cycle[0], cycle[1]), (cycle[1], cycle[0])]
    pngs = imgs + orphans + kids + cycle
    nodes += [{"sha256": h, "physical": {"size": 100 + i * 7, "file_type": "png"}} for i, h in enumerate(pngs)]
    for i, h in enumerate(pngs):
        if i % 9 != 4:  # some unlabelled
            labels.append((h, "class", ("cat", "dog", "bird")[rng.randrange(3)]))
        if i % 5 == 0:
            labels.append((h, "dup", f"g{rng.randrange(8)}"))
        if i % 7 == 0:
            labels.append((h, "fold", ("train", "val", "test")[rng.randrange(3)]))
    apply_write_intent(pg, {"key": "test:dry-nodes", "nodes": nodes,
                            "edges": [{"parent": a, "child": b, "relationship": "media_of"} for a, b in edges]})
    _label(pg, "dry", labels)
    return {h: pg.execute("SELECT node_id FROM node WHERE sha256 = %s", [bytes.fromhex(h)]).fetchone()[0]
            for h in pngs}


def _dry_hashes(pg, shas: dict[str, int]) -> None:
    """Perceptual hashes (result_image_hash, through a write-intent) for most of the nodes:
    clusters of 2-6 nodes whose pHashes lie 0-4 bits apart (from anywhere in the lineages: a
    cluster joins roots), a mirror pair, the rest apart."""
    import random

    from hoardfs.sql.neardup import to_signed

    rng = random.Random(15)
    order = sorted(shas, key=shas.get)
    rows, i = [], 0
    while i < len(order) - 6:
        base = rng.getrandbits(64)
        size = rng.choice([1, 1, 2, 3, 6])
        for _ in range(size):
            p = base ^ sum(1 << b for b in rng.sample(range(64), rng.randrange(5)))
            rows.append({"sha": order[i], "phash": p, "flip": rng.getrandbits(64)})
            i += 1
    rows[-1]["flip"] = rows[0]["phash"] ^ 1  # the last one is the first one's mirror image
    apply_write_intent(pg, {"key": "test:dry-hashes", "batches": [{"batch_id": "hash-run", "seal": True}],
                            "results": [{"table": "result_image_hash", "node": r["sha"], "batch_id": "hash-run",
                                         "values": {"phash": to_signed(r["phash"]), "dhash": 0,
                                                    "phash_flip": to_signed(r["flip"])}}
                                        for r in rows]})


DRY_VARIANTS = {
    "root": 'group = "root"',
    "root, one parent each": 'group = "root"',
    "post (default)": "",
    "lineage": 'group = "lineage"',
    "author": 'group = "author"',
    "none": 'group = "none"',
    "node": 'group = "node"',
    "label group": 'group = "label:dup"',
    "near-dup group": 'group = "near_dup"',
    "near-dup group, dedup by group": 'group = "near_dup"',
    "explicit field": 'field = "fold"',
    "caps": "",
    "max per class, by node": "",
    "no class (webdataset)": "",
}


@pytest.mark.parametrize("variant", list(DRY_VARIANTS))
def test_dry_run_counts_are_the_builds(pg, variant: str) -> None:
    """`dry_plan` (SQL, one row per split × class) against `plan` (every sample, as the build
    makes them) on the same data: the same counts per split × class, samples, bytes, class map,
    thumbnails, selected / unlabelled / capped — for groups by root (lineages of 1-3 nodes, two
    parents or one — a row per node joined, or grouped —, a cycle cut at MAX_DEPTH), node and label:KEY, an explicit split field, caps and
    max_per_class, dedup by node, no class. Fails on the old code: there was no dry_plan (the dry
    run built every sample)."""
    from hoardfs.datasets.plan import dry_plan, plan

    shas = _dry_data(pg, second_parents=variant != "root, one parent each")
    if variant.startswith("near-dup"):
        _dry_hashes(pg, shas)
    head = 'name = "dry"\nlayout = "imagefolder"\nclass_label = "class"\n'
    extra = ""
    if variant == "caps":
        extra = 'caps = { cat = 5, dog = 3 }\n'
    elif variant == "max per class, by node":
        extra = 'max_per_class = 4\ndedup = "by_node"\n'
    elif variant == "near-dup group, dedup by group":
        extra = 'dedup = "by_near_dup"\nnear_dup_threshold = 3\n'
    elif variant == "no class (webdataset)":
        head = 'name = "dry"\nlayout = "webdataset"\n'
    spec = load_spec(f'{head}{extra}[selector]\nfile_types = ["png"]\n[split]\n'
                     f'ratios = {{ train = 0.6, val = 0.3, test = 0.1 }}\nsalt = "s"\n{DRY_VARIANTS[variant]}\n')
    fmt = FORMATS[spec.layout]
    p = plan(pg, spec, fmt, None)
    with pg.transaction():
        d = dry_plan(pg, spec, fmt, None)
    assert d.counts == p.counts() and sum(map(sum, (c.values() for c in d.counts.values()))) == len(p.samples)
    assert (d.samples, d.bytes, d.class_map, d.new_classes) == (len(p.samples), p.bytes, p.class_map, p.new_classes)
    assert (d.selected, d.unlabelled, d.capped, d.dropped_dup) == (p.selected, p.unlabelled, p.capped, p.dropped_dup)
    assert d.thumbnails == p.thumbnails()
    assert len(d.counts) == 3 and all(d.counts[s] for s in ("train", "val"))
    if variant in ("caps", "max per class, by node"):
        assert d.capped > 0
    if variant == "near-dup group, dedup by group":
        assert d.dropped_dup > 0


def test_dry_run_refuses_what_the_build_refuses_in_the_same_line(pg) -> None:
    """Two values of the class label, an explicit split naming no split, a class outside the
    pinned map: the dry run's line is the build's, naming the same node."""
    from hoardfs.datasets.plan import dry_plan, plan

    shas = _dry_data(pg)
    first = sorted(shas, key=shas.get)
    spec = load_spec('name = "dry"\nlayout = "imagefolder"\nclass_label = "class"\n[selector]\nfile_types = ["png"]\n'
                     '[split]\nratios = { train = 0.5, val = 0.3, test = 0.2 }\nfield = "fold"\n')
    fmt = FORMATS["imagefolder"]
    classed = pg.execute("SELECT encode(n.sha256, 'hex') FROM label l JOIN node n USING (node_id) WHERE l.key = 'class' "
                         "ORDER BY n.node_id DESC LIMIT 1").fetchone()[0]
    for setup in ([(first[40], "fold", "holdout")], [(classed, "class", "zebra")]):
        _label(pg, f"bad {setup[0][2]}", setup)
        lines = []
        for fn in (lambda: plan(pg, spec, fmt, None), lambda: dry_plan(pg, spec, fmt, None)):
            with pytest.raises(DatasetError) as e, pg.transaction():
                fn()
            lines.append(e.value.message)
        assert lines[0] == lines[1] and setup[0][0] in lines[0], lines
        _label(pg, f"unbad {setup[0][2]}", [], unlabel=[(setup[0][0], setup[0][1])])
    pinned = spec.model_copy(update={"classes": ["cat", "dog"]})
    lines = []
    for fn in (lambda: plan(pg, pinned, fmt, None), lambda: dry_plan(pg, pinned, fmt, None)):
        with pytest.raises(DatasetError) as e, pg.transaction():
            fn()
        lines.append(e.value.message)
    assert lines[0] == lines[1] and "is not in the spec's classes" in lines[0], lines
