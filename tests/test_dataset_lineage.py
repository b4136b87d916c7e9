"""Black-listed lineage and the leak audit (docs/datasets.md, docs/selectors.md): a selector
leaves out the nodes derived from a black-listed one, a dataset too unless its spec keeps them;
`hoard dataset show NAME` lists every version; datasets' own files are no assets; every build
audits its splits for pairs that leak across them (a shared lineage, near-duplicates, near
embeddings), refusing or warning, and its card shows the counts. Real PostgreSQL, the store,
real builds through `hoard dataset build`."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from hoardfs.adapters.synth import Spec
from hoardfs.sql import browse
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.selectors import MARKED_IDS, marked_nodes, query_nodes, selector_query, withheld_nodes
from tests.helpers import filled_schema
from tests.test_ingest import ingest_sample
from tests.test_selectors import picked, tree  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent


# -- the selector -------------------------------------------------------------------------------

def _black(pg, sha: str, flagged: bool = True) -> None:
    pg.execute("UPDATE physical_content SET in_black_list = %s WHERE node_id = "
               "(SELECT node_id FROM node WHERE sha256 = %s)", [flagged, bytes.fromhex(sha)])


def test_a_black_listed_frame_takes_its_crops_out_of_every_selection(pg, tree) -> None:
    """A black-listed frame leaves the selection with its derived crop (and the crop's own
    children, and through a cycle of edges), not its parent video nor the other lineage;
    `include_blacklisted_lineage` keeps the crop, `include_black_listed` keeps both. Fails on
    the old code: the crop of a black-listed frame was selected."""
    every = {"video1", "video2", "frame1", "frame2", "crop1", "crop2", "img"}
    assert picked(pg, tree) == every
    _black(pg, tree["frame1"])
    assert picked(pg, tree) == every - {"frame1", "crop1"}
    assert picked(pg, tree, include_blacklisted_lineage=True) == every - {"frame1"}
    assert picked(pg, tree, include_black_listed=True) == every | {"banned"}
    assert picked(pg, tree, labels=[{"key": "class"}]) == {"crop2"}
    # a grandchild, and an edge back up (a cycle) that must not end the walk early or loop
    grand = hashlib.sha256(b"grandchild").hexdigest()
    apply_write_intent(pg, {"key": "grand", "relationships": [{"name": "crop_of"}],
                            "nodes": [{"sha256": grand, "physical": {"size": 3, "file_type": "png"}}],
                            "edges": [{"parent": tree["crop1"], "child": grand, "relationship": "crop_of"},
                                      {"parent": grand, "child": tree["frame1"], "relationship": "crop_of"}]})
    got = {s for s in query_nodes(pg, {}).sha256}
    assert grand not in got and tree["crop1"] not in got
    assert grand in {s for s in query_nodes(pg, {"include_blacklisted_lineage": True}).sha256}
    _black(pg, tree["frame1"], False)
    assert set(query_nodes(pg, {}).sha256) == {tree[k] for k in every} | {grand}  # unflagged: the lineage is back


N = 20_000


def _fill(conn: psycopg.Connection) -> None:
    """N png nodes in chains of 4 (each the crop_of the one before), every 1,000th black-listed."""
    conn.execute("INSERT INTO relationship_type (name) VALUES ('crop_of')")
    conn.execute("INSERT INTO node (node_id, sha256, is_virtual, is_physical) "
                 "SELECT g, sha256(int8send(g)), false, true FROM generate_series(1, %s) g", [N])
    conn.execute("INSERT INTO physical_content (node_id, size, file_type, in_black_list) "
                 "SELECT node_id, 10, 'png', node_id % 1000 = 1 FROM node")
    conn.execute("INSERT INTO edge (parent_id, child_id, rel_id) SELECT g - 1, g, (SELECT rel_id FROM "
                 "relationship_type WHERE name = 'crop_of') FROM generate_series(1, %s) g WHERE g %% 4 <> 1", [N])
    conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def chains(servers):
    with filled_schema(servers["database_url"], _fill) as conn:
        yield conn


def test_the_lineage_walk_starts_from_the_black_list_by_its_index(chains) -> None:
    """The walk down the black-listed lineage is one recursive query per selection that starts
    from the partial index of the black-listed nodes (migration 020) — never a scan of every
    physical_content row — and is joined once (an anti-join), not walked per candidate; its
    answer: each black-listed chain head's 3 crops out."""
    query, params = selector_query(chains, {})
    plan = "\n".join(r[0] for r in chains.execute(b"EXPLAIN " + query.as_bytes(chains), params))
    assert "physical_content_black_listed" in plan, plan
    assert "Anti Join" in plan, plan
    got = set(query_nodes(chains, {}).node_ids)
    gone = {h + k for h in range(1, N + 1, 1000) for k in range(4)}
    assert got == set(range(1, N + 1)) - gone


def test_the_marked_nodes_are_walked_from_their_partial_indexes(chains) -> None:
    """The nodes a dataset reader withholds (deleted or black-listed: `marked_nodes`) are found
    from the two partial indexes (migrations 020 and 022) — never a scan of every
    physical_content or node row, whether a few nodes are marked here and there or a whole
    batch's thousands, its ids in one block —; the walk gives up (None) past the most asked
    for, or without migration 022's index, and finds what asking of each sha256
    (`withheld_nodes`) finds."""
    black = {n for n in range(1, N + 1) if n % 1000 == 1}
    sha = dict(chains.execute("SELECT node_id, sha256 FROM node").fetchall())

    def deleted(ids: list[int]) -> None:
        chains.execute("UPDATE physical_content SET is_deleted = node_id = ANY(%s)", [ids])
        chains.execute("VACUUM ANALYZE physical_content")
        plan = "\n".join(r[0] for r in chains.execute("EXPLAIN " + MARKED_IDS, {"k": N}))
        assert "physical_content_deleted" in plan and "physical_content_black_listed" in plan, plan
        assert "Seq Scan" not in plan and "physical_content_pkey" not in plan, plan
        marked = black | set(ids)
        assert marked_nodes(chains, len(marked)) == {bytes(sha[n]) for n in marked}
        assert marked_nodes(chains, len(marked) - 1) is None
        asked = [bytes(sha[n]) for n in range(1, 7001)]
        assert withheld_nodes(chains, asked) == {bytes(sha[n]) for n in marked if n <= 7000}

    try:
        deleted([5, 6006, 17017])  # a few, here and there
        deleted(list(range(N - 3000 + 1, N + 1)))  # a batch's 3,000, the newest ids
        # a schema before migration 022 (`hoard db migrate` not run yet): no walk, each asked
        chains.execute("DROP INDEX physical_content_deleted")
        try:
            assert marked_nodes(chains, N) is None
        finally:
            chains.execute("CREATE INDEX physical_content_deleted ON physical_content (node_id) WHERE is_deleted")
    finally:
        chains.execute("UPDATE physical_content SET is_deleted = false WHERE is_deleted")
        chains.execute("ANALYZE physical_content")


# -- real builds --------------------------------------------------------------------------------

def _hoard(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _label(pg, key: str, rows: list[tuple[str, str, str]]) -> None:
    apply_write_intent(pg, {"key": f"test:{key}", "labels": [{"node": h, "key": k, "value": v} for h, k, v in rows]})


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8 + seed % 5, 6), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(buf, "PNG")
    return buf.getvalue()


def _crops(cfg, pg, parents: list[str], tag: str) -> dict[str, str]:
    """A crop child of each image (real PNG bytes stored, a `crop_of` edge from the image, as an
    action's output is recorded), labelled with its image's class: crop sha256 → its image's."""
    from hoardfs.fsd.store import Store

    datas = {p: _png(int(hashlib.sha256((p + tag).encode()).hexdigest()[:6], 16)) for p in parents}
    with Store.open(cfg) as store:
        res = store.put_bytes_many(list(datas.values()))
    assert all(r.status in ("new", "existing") for r in res)
    crops = {r.sha256: p for r, p in zip(res, datas, strict=True)}
    apply_write_intent(pg, {"key": f"test:crops:{tag}", "relationships": [{"name": "crop_of"}],
                            "nodes": [{"sha256": c, "physical": {"size": len(datas[p]), "file_type": "png"}}
                                      for c, p in crops.items()],
                            "edges": [{"parent": p, "child": c, "relationship": "crop_of"} for c, p in crops.items()]})
    classes = dict(pg.execute("SELECT encode(n.sha256, 'hex'), l.value FROM label l JOIN node n USING (node_id) "
                              "WHERE l.key = 'class'").fetchall())
    _label(pg, f"crop classes:{tag}", [(c, "class", classes[p]) for c, p in crops.items()])
    return crops


@pytest.fixture
def gallery(hoard_home: Path, pg, redis_conn):
    """A gallery batch ingested by the real UA_1 (no crops of its own, no repeats), its png
    images labelled class = cat | dog: (cfg, their sha256s)."""
    cfg, _ = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=66, batches=1, items_per_batch=40, large_max_mb=1,
                                                            ready_signal=True, sources=("gallery",), crop_fraction=0.0,
                                                            repeat_fraction=0.0))
    shas = [r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    assert len(shas) >= 16
    _label(pg, "gallery", [(h, "class", "cat" if i % 2 else "dog") for i, h in enumerate(shas)])
    return cfg, shas


def _spec(tmp: Path, name: str, extra: str = "", split: str = "") -> Path:
    path = tmp / f"{name}-{hashlib.sha1((extra + split).encode()).hexdigest()[:6]}.toml"
    path.write_text(f'name = "{name}"\nlayout = "imagefolder"\nclass_label = "class"\n{extra}\n'
                    f'[selector]\nfile_types = ["png"]\n[split]\nratios = {{ train = 0.5, val = 0.5 }}\n'
                    f'salt = "s1"\n{split}\n')
    return path


def _built(cfg, spec: Path, *args: str) -> dict:
    res = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _manifest(report: dict) -> dict[str, dict]:
    root = Path(report["path"])
    return {m["sha256"]: m for m in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}


def test_a_black_listed_images_children_stay_out_of_a_dataset(gallery, pg, tmp_path: Path) -> None:
    """An image black-listed (the GUI's flag) with two crops: neither it nor its crops are samples
    of a build; with `include_blacklisted_lineage = true` the crops are, the image is not. `hoard
    dataset show NAME` lists both versions (NAME@N one), and neither version's manifest.jsonl nor
    dataset.json is an asset of the GUI's asset listing. Fails on the old code: the crops were
    samples (and `show` gave only the newest version, and the listing held the datasets' files)."""
    cfg, shas = gallery
    img = shas[3]
    crops = _crops(cfg, pg, [img], "one")
    crops |= _crops(cfg, pg, [img], "two")
    assert len(crops) == 2
    browse.set_black_list(pg, img, True)
    v1 = _built(cfg, _spec(tmp_path, "kept"))
    m1 = _manifest(v1)
    assert img not in m1 and not set(crops) & set(m1)
    assert len(m1) == len(shas) - 1
    assert v1["leak_audit"]["pairs"] == 0  # a clean build audits clean
    v2 = _built(cfg, _spec(tmp_path, "kept", "include_blacklisted_lineage = true"))
    m2 = _manifest(v2)
    assert img not in m2 and set(crops) <= set(m2) and v2["version"] == 2
    doc = json.loads((Path(v2["path"]) / "dataset.json").read_text())
    assert doc["spec"]["include_blacklisted_lineage"] is True
    assert "include_blacklisted_lineage" not in json.loads((Path(v1["path"]) / "dataset.json").read_text())["spec"]

    shown = _hoard(cfg, "dataset", "show", "kept", "--json")
    assert shown.returncode == 0, shown.stderr
    d = json.loads(shown.stdout)
    assert d["version"] == 2 and d["sealed"] and "dataset" in d  # the keys it had
    assert [v["version"] for v in d["versions"]] == [1, 2]
    assert [v["path"] for v in d["versions"]] == [v1["path"], v2["path"]]
    text = _hoard(cfg, "dataset", "show", "kept").stdout
    assert "@1 " in text and "@2 " in text and "versions (2)" in text, text
    one = _hoard(cfg, "dataset", "show", "kept@1").stdout
    assert one.startswith("kept@1:") and "@2 " not in one and "versions" not in one, one

    own = {bytes(r[0]).hex() for r in pg.execute(
        "SELECT n.sha256 FROM node n JOIN physical_path p USING (node_id) WHERE p.locator LIKE 'dataset:kept@%%'")}
    assert len(own) == 4
    listed = {r["sha256"] for r in browse.search(pg, limit=10_000)}
    assert not own & listed and set(shas) <= listed | {img}
    assert not own & {r["sha256"] for r in browse.search(pg, file_kind="text", limit=10_000)}


def _hashes_and_embeddings(pg, shas: list[str], pair: tuple[str, str]) -> None:
    """A perceptual hash and a 32-number embedding for every node of `shas`, far apart (random)
    but for `pair`: hashes 1 bit apart, embeddings at cosine ≈ 0.999 — as the near-dup-hash and
    clip-embed actions' write-intents store them."""
    import base64

    import numpy as np

    from hoardfs.sql.neardup import to_signed

    rng = random.Random(5)
    hashes = {h: rng.getrandbits(64) for h in shas}
    hashes[pair[1]] = hashes[pair[0]] ^ 1
    gen = np.random.default_rng(5)
    vecs = {h: gen.normal(size=32) for h in shas}
    vecs[pair[1]] = vecs[pair[0]] + gen.normal(size=32) * 0.02
    vecs = {h: (v / np.linalg.norm(v)).astype("<f4") for h, v in vecs.items()}
    apply_write_intent(pg, {"key": "test:audit-results", "batches": [{"batch_id": "audit-run", "seal": True}],
                            "results": [{"table": "result_image_hash", "node": h, "batch_id": "audit-run",
                                         "values": {"phash": to_signed(p), "dhash": 0,
                                                    "phash_flip": to_signed(rng.getrandbits(64))}}
                                        for h, p in hashes.items()]
                            + [{"table": "result_image_embedding", "node": h, "batch_id": "audit-run",
                                "values": {"model": "test-model@0123456789abcdef",
                                           "embedding": base64.b64encode(v.tobytes()).decode()}}
                               for h, v in vecs.items()]})


def test_the_leak_audit_refuses_a_cross_split_near_duplicate_warns_and_shows_zeros(gallery, pg,
                                                                                     tmp_path: Path) -> None:
    """Every fourth image with a crop; with group = "none" some crops fall in the other split
    than their image, and one such pair is also a near-duplicate (hashes 1 bit apart) and near
    in embedding (cosine ≈ 0.999). The build is refused in one line naming the pair and the
    next step, nothing written; with audit.on_leak = "warn" it is built, warns, and its report,
    dataset.json and card count the pairs (lineage, near-duplicate, cosine); grouped by lineage
    the same data builds clean and the card shows zeros; the dry run counts what the build
    does. Fails on the old code: there was no
    audit (the leaky build was sealed without a word)."""
    from hoardfs.datasets.formats import FORMATS
    from hoardfs.datasets.plan import plan
    from hoardfs.datasets.spec import load_spec

    cfg, shas = gallery
    crops = _crops(cfg, pg, shas[::4], "audit")
    leaky = _spec(tmp_path, "leaky", split='group = "none"')
    split = {s.sha256: s.split for s in plan(pg, load_spec(leaky), FORMATS["imagefolder"], None).samples}
    straddle = sorted((i, c) for c, i in crops.items() if split[c] != split[i])
    assert straddle, split
    image, crop = straddle[0]
    _hashes_and_embeddings(pg, shas + sorted(crops), (image, crop))

    dry = _hoard(cfg, "dataset", "build", str(leaky), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    seen = json.loads(dry.stdout)["leak_audit"]  # the dry run shows what the build will refuse
    assert (seen["lineage_pairs"], seen["near_dup_pairs"], seen["cosine_pairs"]) == (len(straddle), 1, 1), seen
    res = _hoard(cfg, "dataset", "build", str(leaky), "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert image[:16] in line and crop[:16] in line and "near_dup" in line, line
    assert 'split.group = "lineage"' in line and 'audit.on_leak = "warn"' in line, line
    assert f"{len(straddle)} sharing a lineage" in line and "1 near-duplicate" in line, line
    assert not (cfg.ssd.zone_path("3D") / "leaky-v1").exists()
    assert _hoard(cfg, "dataset", "show", "leaky").returncode != 0  # no version recorded

    warn = _hoard(cfg, "dataset", "build", str(_spec(tmp_path, "leaky", split='group = "none"\n[audit]\n'
                                                                               'on_leak = "warn"')), "--here", "--json")
    assert warn.returncode == 0, warn.stdout + warn.stderr
    assert "warning:" in warn.stderr and image[:16] in warn.stderr, warn.stderr
    report = json.loads(warn.stdout.strip().splitlines()[-1])
    a = report["leak_audit"]
    assert (a["lineage_pairs"], a["near_dup_pairs"], a["cosine_pairs"]) == (len(straddle), 1, 1), a
    assert a["cosine_compared"] == len(shas) + len(crops) and a["cosine_exact"]
    root = Path(report["path"])
    assert json.loads((root / "dataset.json").read_text())["leak_audit"] == a == seen
    card = (root / "README.md").read_text()
    assert "## Leak audit" in card and f"crops, thumbnails, frames): {len(straddle)}" in card, card
    assert "- near-duplicates: 1 (" in card and "- near in embedding: 1 (" in card, card
    assert f"`{image[:16]}`" in card

    clean = _built(cfg, _spec(tmp_path, "tight", split='group = "lineage"'))
    a = clean["leak_audit"]
    assert (a["pairs"], a["lineage_pairs"], a["near_dup_pairs"], a["cosine_pairs"]) == (0, 0, 0, 0), a
    card = (Path(clean["path"]) / "README.md").read_text()
    assert "crops, thumbnails, frames): 0" in card and "- near-duplicates: 0 (" in card, card
    assert "- near in embedding: 0 (" in card and "For example" not in card, card
    shown = _hoard(cfg, "dataset", "show", "tight")
    assert "leak audit: 0 cross-split pairs" in shown.stdout, shown.stdout


@pytest.mark.needs(importlib.util.find_spec("usearch") is not None, "USEARCH MISSING (the search extra): make search")
def test_the_cosine_pairs_by_neighbours_are_the_exact_ones() -> None:
    """Above COSINE_EXACT embedded samples the audit asks an HNSW index of them for each one's
    nearest; over 3,000 random embeddings with 40 planted near pairs (half across splits) it
    finds what the exact block-by-block comparison finds."""
    import numpy as np

    from hoardfs.datasets.audit import _exact, _neighbours

    gen = np.random.default_rng(9)
    mat = gen.normal(size=(3000, 64)).astype(np.float32)
    for k in range(40):
        mat[2000 + k] = mat[k] + gen.normal(size=64).astype(np.float32) * 0.01
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    split = (np.arange(3000) % 2).astype(np.int32)
    split[2000:2040] = split[:40] ^ (np.arange(40) % 2)  # every other pair straddles
    exact = _exact(mat, split, 0.95)
    assert exact[0] == 20
    near = _neighbours(mat, split, 0.95)
    assert near[0] == exact[0] and near[1] == exact[1][:len(near[1])]
