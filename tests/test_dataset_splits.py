"""Dataset splits that honour their ratios, groups with meaning, provenance from each sample's
own post (docs/datasets.md "Splits", "Groups", "Sources"): hypothesis properties of the
assignment (hoardfs.datasets.splits), then real ingests of synthetic CSV-forum, gallery-dl and
yt-dlp batches into real PostgreSQL, planned and built by the real code."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoardfs.adapters import synth
from hoardfs.adapters.synth import Spec
from hoardfs.base.errors import ExitCode
from hoardfs.datasets.formats import FORMATS
from hoardfs.datasets.plan import dry_plan, plan
from hoardfs.datasets.spec import DatasetError, load_spec
from hoardfs.datasets.splits import balance, tolerance, unit
from hoardfs.sql.apply import apply_write_intent
from tests.test_ingest import ingest_sample

REPO = Path(__file__).resolve().parent.parent

# -- the assignment: properties -------------------------------------------------------------------

RATIOS = st.sampled_from([{"train": 0.8, "val": 0.2}, {"train": 0.7, "val": 0.15, "test": 0.15},
                          {"a": 0.5, "b": 0.5}, {"train": 0.6, "val": 0.3, "test": 0.1},
                          {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}])
SIZES = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=400)


def _groups(sizes: list[int], tag: str = "g") -> dict[str, int]:
    return {f"{tag}:{i}": n for i, n in enumerate(sizes)}


def _moved(old: dict[str, int], new: dict[str, int], sizes: dict[str, int]) -> int:
    return sum(sizes[k] for k in old if old[k] != new[k])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratios=RATIOS, sizes=SIZES, salt=st.text(max_size=4))
def test_every_split_is_within_the_tolerance_when_its_share_can_hold_a_group(ratios, sizes, salt) -> None:
    """Whenever each split's share of the samples is at least the tolerance (2 % of them or the
    largest group), every split is non-empty and within the tolerance of its ratio; and always:
    every group in exactly one split, the counts adding up, the same answer for the same
    groups in any order."""
    groups = _groups(sizes)
    b = balance(ratios, salt, groups)
    total = sum(sizes)
    assert set(b.assign) == set(groups) and sum(b.counts) == total == b.total
    assert b.tolerance == tolerance(total, max(sizes))
    for i, sp in enumerate(ratios):
        assert b.counts[i] == sum(n for k, n in groups.items() if b.assign[k] == i), sp
    if all(r * total >= b.tolerance for r in ratios.values()):
        for n, r in zip(b.counts, ratios.values(), strict=True):
            assert n > 0 and abs(n - r * total) <= b.tolerance, (b.counts, ratios, b.tolerance)
    shuffled = list(groups.items())
    random.Random(len(sizes)).shuffle(shuffled)
    assert balance(ratios, salt, dict(shuffled)).assign == b.assign


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratios=RATIOS, sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=150, max_size=600),
       added=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=20))
def test_adding_data_moves_few_samples(ratios, sizes, added) -> None:
    """Adding groups moves, at each boundary between splits, at most (tol_old + tol_new) / 2
    + 2·(samples added) of the old samples — both cuts lie within half the tolerance of their
    targets, which move by at most the samples added — and none at all when neither
    assignment had to leave the hash draw (today's property: adding data moved 0 samples)."""
    old_groups = _groups(sizes)
    new_groups = old_groups | _groups(added, "new")
    old, new = balance(ratios, "s", old_groups), balance(ratios, "s", new_groups)
    m = sum(added)
    total = sum(sizes)
    if not all(r * total >= old.tolerance and r * (total + m) >= new.tolerance for r in ratios.values()):
        return
    moved = _moved(old.assign, new.assign, old_groups)
    bound = (len(ratios) - 1) * ((old.tolerance + new.tolerance) / 2 + 2 * m)
    assert moved <= bound, (moved, bound)
    if old.moved == 0 and new.moved == 0:
        assert moved == 0
    # a group moves only when a cut passes its place: the assignment is monotone in the hash
    order = sorted(new_groups, key=lambda k: unit("s", k))
    idx = [new.assign[k] for k in order]
    assert idx == sorted(idx)


def _fits(counts: list[int], total: int, ratios: list[float], tol: float) -> bool:
    return all(n > 0 and abs(n - total * r) <= tol for n, r in zip(counts, ratios, strict=True))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratios=RATIOS | st.sampled_from([{"a": 0.587, "b": 0.09, "c": 0.323}, {"a": 0.346, "b": 0.239,
                                                                                "c": 0.119, "d": 0.296}]),
       sizes=st.lists(st.sampled_from([1, 1, 1, 2, 3, 5, 8]), min_size=2, max_size=8), salt=st.text(max_size=3))
def test_a_few_groups_are_refused_only_when_no_cut_fits(ratios, sizes, salt) -> None:
    """A few groups of unequal sizes: whenever some cut of the groups in hash order puts every
    split non-empty and within the tolerance, the assignment does too (the old cuts, each kept
    within half the tolerance of its cumulative target, left a split empty — refused — where
    another cut fitted: 0.587/0.09/0.323 over groups of 3, 1, 3 and 8)."""
    groups = _groups(sizes)
    b = balance(ratios, salt, groups)
    rs, total = list(ratios.values()), sum(sizes)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: unit(salt, k))]
    fitting = any(_fits([sum(ordered[a:z]) for a, z in zip((0, *cuts), (*cuts, len(ordered)), strict=True)],
                        total, rs, b.tolerance)
                  for cuts in itertools.combinations(range(1, len(ordered)), len(rs) - 1))
    assert _fits(b.counts, total, rs, b.tolerance) == fitting, (b.counts, ordered, b.tolerance)
    idx = [b.assign[k] for k in sorted(groups, key=lambda k: unit(salt, k))]
    assert idx == sorted(idx)  # still monotone in the hash: a group moves only when a cut passes it


def test_a_hash_draw_within_the_tolerance_is_kept_as_it_is() -> None:
    """Many small groups: the hash draw already meets the ratios, so the rebalancing moves
    nothing and adding 40 groups moves no old sample."""
    groups = _groups([1] * 2000)
    b = balance({"train": 0.8, "val": 0.2}, "v1", groups)
    assert b.moved == 0 and abs(b.counts[1] - 400) <= 40
    more = balance({"train": 0.8, "val": 0.2}, "v1", groups | _groups([1] * 40, "more"))
    assert _moved(b.assign, more.assign, groups) == 0


# -- real ingests --------------------------------------------------------------------------------


def _hoard(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _label(pg, key: str, rows: list[tuple[str, str, str]]) -> None:
    apply_write_intent(pg, {"key": f"test:{key}", "labels": [{"node": h, "key": k, "value": v} for h, k, v in rows]})


def _crops(cfg, pg, images: list[str]) -> dict[str, str]:
    """A crop child (stored bytes, a `crop_of` edge from its image, as an action's output is
    recorded) of every third image: crop sha256 → its image's."""
    from hoardfs.fsd.store import Store

    datas = {hashlib.sha256(f"crop of {h}".encode()).hexdigest(): (h, f"crop of {h}".encode())
             for h in images[::3]}
    with Store.open(cfg) as store:
        assert all(r.status in ("new", "existing") for r in store.put_bytes_many([d for _, d in datas.values()]))
    apply_write_intent(pg, {"key": f"test:crops:{len(datas)}:{images[0][:8]}", "relationships": [{"name": "crop_of"}],
                            "nodes": [{"sha256": c, "physical": {"size": len(d), "file_type": "png"}}
                                      for c, (_h, d) in datas.items()],
                            "edges": [{"parent": h, "child": c, "relationship": "crop_of"}
                                      for c, (h, _d) in datas.items()]})
    return {c: h for c, (h, _d) in datas.items()}


FORUM = Spec(seed=66, batches=2, items_per_batch=60, large_max_mb=1, ready_signal=True, sources=("forum",),
             repeat_fraction=0.0)


def _forum_truth(batches) -> dict[str, dict[str, str]]:
    """sha256 of each forum image → its post, thread and author, from the synthetic rows'
    rules (adapters/synth.py `_forum`), not from the database."""
    out = {}
    for b in batches:
        n = int(b.batch_id.rsplit("-", 1)[-1]) if b.batch_id.rsplit("-", 1)[-1].isdigit() else None
        for item in b.items:
            if not item.path.startswith("media/"):
                continue
            post = item.path.split("/")[1].split("_")[0]
            bi, i = int(post[1:4]), int(post[4:])
            assert n is None or n == bi
            author = synth._rng(FORUM, "forum", bi, i).choice(synth._AUTHORS)
            out.setdefault(item.sha256, {"post": post, "thread": f"t{bi:03d}{i // 10:04d}", "author": author})
    return out


@pytest.fixture
def forum(hoard_home: Path, pg, redis_conn):
    """Two CSV-forum batches (threads of 10 posts, 8 authors, every other post an image)
    ingested by the real UA_1, a third of the images given a crop child; every png labelled
    class = a | b."""
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, FORUM)
    truth = _forum_truth(batches)
    crops = _crops(cfg, pg, sorted(truth))
    shas = [r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    _label(pg, "forum", [(h, "class", "ab"[i % 2]) for i, h in enumerate(shas)])
    return cfg, batches, truth, crops, shas


def _plan(pg, group: str, ratios: str = "train = 0.8, val = 0.2", extra: str = "", selector: str = "",
          split: str = ""):
    spec = load_spec(f'name = "f"\nlayout = "imagefolder"\nclass_label = "class"\n{extra}\n[selector]\n'
                     f'file_types = ["png"]\n{selector}\n[split]\nratios = {{ {ratios} }}\nsalt = "s"\n{split}\n'
                     + (f'group = "{group}"\n' if group else ""))
    return plan(pg, spec, FORMATS["imagefolder"], None), spec


def test_group_kinds_over_a_csv_forum(forum, pg) -> None:
    """post (the default) keeps each post's image and its crop together and apart from every
    other post; thread, author and lineage put every sample of a thread / author / image with
    its crops in one split; none makes each sample its own group; root keeps its meaning. Each
    grouping's splits meet the ratios within the tolerance. Fails on the old code: there was no
    post, thread, author, lineage or none (and the default, root, was the node first created)."""
    _cfg, _batches, truth, crops, _shas = forum
    of = {**truth, **{c: truth[p] for c, p in crops.items() if p in truth}}  # a crop belongs to its image's post

    for kind, field in (("", "post"), ("thread", "thread"), ("author", "author"), ("lineage", None),
                        ("none", None), ("root", None)):
        p, spec = _plan(pg, kind)
        samples = [s for s in p.samples if s.sha256 in of]
        assert len(samples) >= 30
        keys: dict[str, set[str]] = {}
        for s in samples:
            assert s.group is not None
            if field is not None:
                keys.setdefault(of[s.sha256][field], set()).add(s.group)
        if field is not None:  # one key per post / thread / author, and a different one for each
            assert all(len(v) == 1 for v in keys.values()), (kind, {k: v for k, v in keys.items() if len(v) > 1})
            assert len({next(iter(v)) for v in keys.values()}) == len(keys), kind
        by_group: dict[str, set[str]] = {}
        for s in p.samples:
            by_group.setdefault(s.group, set()).add(s.split)
        assert all(len(v) == 1 for v in by_group.values()), kind
        sha_split = {s.sha256: s.split for s in p.samples}
        if kind in ("", "lineage"):
            assert all(sha_split[c] == sha_split[par] for c, par in crops.items() if c in sha_split), kind
        if kind == "none":
            assert len(by_group) == len(p.samples)
        if kind == "root":
            assert all(s.group == f"root:{s.root_id}" for s in p.samples)
        total = len(p.samples)
        largest = max(sum(1 for s in p.samples if s.group == g) for g in by_group)
        for sp, r in spec.split.ratios.items():
            assert abs(p.splits[sp]["samples"] - r * total) <= max(0.02 * total, largest), (kind, p.splits)
        with pg.transaction():
            d = dry_plan(pg, spec, FORMATS["imagefolder"], None)
        assert d.counts == p.counts(), kind  # the dry run draws the same splits


def _plan_spec(pg, group: str, selector: str):
    return load_spec(f'name = "f"\nlayout = "imagefolder"\nclass_label = "class"\n[selector]\nfile_types = ["png"]\n'
                     f'{selector}\n[split]\nratios = {{ train = 0.6, val = 0.2, test = 0.2 }}\nsalt = "s"\n'
                     f'group = "{group}"\n')


def test_few_big_groups_are_refused_naming_them_or_balanced(forum, pg) -> None:
    """Two threads' images, three splits: grouped by thread, one split would be empty — refused
    before anything is planned further, naming both threads and the way out; allow_skew builds
    anyway; grouped by post (the default) the same images meet the ratios."""
    _cfg, _batches, truth, _crops, _shas = forum
    two = sorted({t["thread"] for t in truth.values()})[:2]
    picked = [h for h, t in truth.items() if t["thread"] in two]
    _label(pg, "two threads", [(h, "pick", "yes") for h in picked])
    sel = 'labels = [{ key = "pick", value = "yes" }]'
    with pytest.raises(DatasetError) as e:
        _plan(pg, "thread", "train = 0.6, val = 0.2, test = 0.2", selector=sel)
    msg = e.value.message
    assert "would hold 0 of" in msg and "split.allow_skew = true" in msg and 'split.group = "none"' in msg
    assert msg.count("thread:") == 2 and "\n" not in msg, msg
    with pg.transaction(), pytest.raises(DatasetError) as e2:
        dry_plan(pg, _plan_spec(pg, "thread", sel), FORMATS["imagefolder"], None)
    assert e2.value.message == msg  # the dry run refuses in the same line
    skew, _ = _plan(pg, "thread", "train = 0.6, val = 0.2, test = 0.2", selector=sel, split="allow_skew = true")
    assert sorted(g["samples"] for g in skew.splits.values())[0] == 0
    assert {g["group"] for g in skew.large_groups} == {s.group for s in skew.samples}  # both over 10 %
    post, _ = _plan(pg, "", "train = 0.6, val = 0.2, test = 0.2", selector=sel)
    n = len(post.samples)
    assert all(g["samples"] > 0 and abs(g["samples"] - g["ratio"] * n) <= max(0.02 * n, 2)
               for g in post.splits.values()), post.splits


def test_a_chain_of_near_duplicates_is_balanced(hoard_home: Path, pg, redis_conn) -> None:
    """Gallery posts of three images; near-duplicate pairs chain each post to the next (the last
    image of post k looks like the first of post k+1). group = "near_dup" keeps each pair in one
    split and joins nothing else, so the splits meet the ratios — where joining the pairs with
    the posts they touch made one group of all (1,847/10 on the digits)."""
    from hoardfs.sql.neardup import to_signed

    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=7, batches=1, items_per_batch=90,
                                                                  large_max_mb=1, ready_signal=True,
                                                                  sources=("gallery",), crop_fraction=0.0,
                                                                  repeat_fraction=0.0))
    items = sorted((i for b in batches for i in b.items if i.path.endswith(".png")), key=lambda i: i.path)
    by_post: dict[str, list[str]] = {}
    for i in items:
        by_post.setdefault(i.path.split("_")[1], []).append(i.sha256)
    posts = [v for _k, v in sorted(by_post.items()) if len(v) == 3]
    rng = random.Random(3)
    hashes: dict[str, int] = {}
    pairs = []
    for a, b in zip(posts, posts[1:], strict=False):
        base = rng.getrandbits(64)
        hashes[a[2]], hashes[b[0]] = base, base ^ 1
        pairs.append((a[2], b[0]))
    for post in posts:
        hashes.setdefault(post[1], rng.getrandbits(64))
    apply_write_intent(pg, {"key": "test:chain", "batches": [{"batch_id": "hash-chain", "seal": True}],
                            "results": [{"table": "result_image_hash", "node": h, "batch_id": "hash-chain",
                                         "values": {"phash": to_signed(p), "dhash": 0, "phash_flip": to_signed(~p & (2 ** 64 - 1))}}
                                        for h, p in hashes.items()]})
    _label(pg, "chain classes", [(h, "class", "x") for h in hashes])
    p, spec = _plan(pg, "near_dup", extra="near_dup_threshold = 2")
    split = {s.sha256: s.split for s in p.samples}
    assert all(split[a] == split[b] for a, b in pairs)
    assert len({s.group for s in p.samples}) == len(pairs) + len(posts)
    assert abs(p.splits["val"]["share"] - 0.2) <= 0.02 + 2 / len(p.samples), p.splits


def _box(w: int = 64, h: int = 48) -> str:
    return json.dumps({"type": "rectanglelabels", "original_width": w, "original_height": h, "image_rotation": 0,
                       "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rotation": 0,
                                 "rectanglelabels": ["thing"]}}, sort_keys=True)


def test_a_box_dataset_of_five_is_refused_when_a_split_would_be_empty(hoard_home: Path, pg, redis_conn,
                                                                     tmp_path: Path) -> None:
    """Five boxed images of one forum thread, COCO, 0.8 / 0.2: grouped by thread the val split
    would be empty — the dry run and the build exit 5 (data) with one line naming the thread group,
    and nothing is written to 3D; grouped by post (the default) the dry run shows 4 / 1 and the
    build's report, dataset.json and card give the realised counts and shares. Fails on the old
    code: it sealed 0 / 5 with exit 0."""
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=5, batches=1, items_per_batch=10,
                                                                  large_max_mb=1, ready_signal=True,
                                                                  sources=("forum",), crop_fraction=0.0,
                                                                  repeat_fraction=0.0))
    images = [i.sha256 for b in batches for i in b.items if i.path.startswith("media/")]
    assert len(images) == 5
    _label(pg, "boxes", [(h, "ls:box", _box()) for h in images])

    def spec(group: str) -> Path:
        path = tmp_path / f"boxes-{group or 'post'}.toml"
        path.write_text('name = "boxes"\nlayout = "coco"\nannotations = "ls:box"\n[selector]\nfile_types = ["png"]\n'
                        '[split]\nratios = { train = 0.8, val = 0.2 }\nsalt = "b"\n'
                        + (f'group = "{group}"\n' if group else ""))
        return path

    for args in (("--dry-run",), ("--here",)):
        res = _hoard(cfg, "dataset", "build", str(spec("thread")), *args)
        assert res.returncode == ExitCode.DATA, res.stdout + res.stderr
        line = res.stderr.strip()
        assert "\n" not in line and "split 'val' would hold 0 of 5 samples" in line and "thread:" in line, line
        assert "Traceback" not in res.stderr
    assert not (cfg.ssd.zone_path("3D") / "boxes-v1").exists()

    dry = json.loads(_hoard(cfg, "dataset", "build", str(spec("")), "--dry-run", "--json").stdout)
    assert dry["splits"] == {"train": {"samples": 4, "share": 0.8, "ratio": 0.8},
                             "val": {"samples": 1, "share": 0.2, "ratio": 0.2}}
    res = _hoard(cfg, "dataset", "build", str(spec("")), "--here", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["splits"] == dry["splits"]
    out = Path(report["path"])
    assert json.loads((out / "dataset.json").read_text())["splits"] == dry["splits"]
    card = (out / "README.md").read_text()
    assert "| `train` | 4 | 80.00% | 80.00% |" in card and "| `val` | 1 | 20.00% | 20.00% |" in card, card
    from pycocotools.coco import COCO

    for sp, n in (("train", 4), ("val", 1)):
        coco = COCO(str(out / "annotations" / f"instances_{sp}.json"))
        assert len(coco.getImgIds()) == n and len(coco.getAnnIds()) == n


def test_provenance_comes_from_each_samples_own_post(hoard_home: Path, pg, redis_conn, tmp_path: Path) -> None:
    """yt-dlp images (their info.json names the page) with crop children, and CSV-forum images
    (rows name the author, no URL): each manifest line's source URL is its own video's page (a
    crop: its image's), its author the post's, its date the download's; the card counts the
    hosts, the authors and the samples without each. Fails on the old code: the root (an
    author or thread node, created first) was read, and the card said "no source URL recorded"."""
    made = Spec(seed=9, batches=2, items_per_batch=40, large_max_mb=1, ready_signal=True, sources=("ytdlp", "forum"),
                repeat_fraction=0.0)
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, made)
    parent_of = _crops(cfg, pg, sorted(i.sha256 for b in batches for i in b.items if i.path.endswith(".png")))
    spec = tmp_path / "prov.toml"
    spec.write_text('name = "prov"\nlayout = "webdataset"\n[selector]\nfile_types = ["png"]\n'
                    '[split]\nratios = { train = 0.5, val = 0.5 }\n')
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json")
    assert res.returncode == 0, res.stderr
    out = Path(json.loads(res.stdout.strip().splitlines()[-1])["path"])
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    path_of = {i.sha256: (b.batch_id, i.path) for b in batches for i in b.items}
    yt = forum = 0
    for s in lines:
        batch, path = path_of[parent_of.get(s["sha256"], s["sha256"])]
        assert s["date"] is not None, s
        if batch.startswith("ytdlp"):
            yt += 1
            vid = Path(path).stem
            assert s["source_url"] == f"https://video.example/watch?v={vid}", s
            assert s["author"] and s["group"].startswith("post:")
        else:
            forum += 1
            post = Path(path).name.split("_")[0]
            bi, i = int(post[1:4]), int(post[4:])
            assert s["author"] == synth._rng(made, "forum", bi, i).choice(synth._AUTHORS), s
            assert s["source_url"] is None
    assert yt >= 10 and forum >= 10 and sum(s["sha256"] in parent_of for s in lines) >= 8
    card = (out / "README.md").read_text()
    assert f"- `video.example`: {yt} samples" in card, card
    assert f"Samples without a value (of {yt + forum}): source URL {forum}, download date 0" in card, card
    assert "no source URL recorded" not in card and "## Authors" in card
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["without"]["source_url"] == forum and doc["without"]["date"] == 0
