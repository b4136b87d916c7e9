"""Near-duplicate hashes made at ingest (`[ingest] near_dup_at_ingest = true`):
a batch's images hashed as it is ingested, with no pipeline stage set up — by the worker (its
finish step queues the built-in near-dup-hash run over the batch) and by `hoard ingest --here`
— in the action's sandbox, the rows the action writes. Real PostgreSQL, Redis, RQ workers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.jobs.actions.builtin.near_dup_hash import hashes
from hoardfs.sql import neardup
from tests.helpers import REALDATA, worker_reachable_home
from tests.near_variants import write_set
from tests.test_ingest import ingest_home

KINDS = ("original", "resize", "quality60", "flip")


def _batch(cfg, name: str, made: dict[str, dict[str, Path]], pictures: list[str]) -> dict[str, Path]:
    """A sidecar batch in 3A of `pictures` and their copies (KINDS), and a text document that is
    no image; sha256 → the image file it is made of."""
    batch = cfg.ssd.zone_path("3A") / name
    batch.mkdir()
    images = {}
    for pic in pictures:
        for kind in KINDS:
            path = made[pic][kind]
            (batch / f"{pic}-{kind}.jpg").write_bytes(path.read_bytes())
            (batch / f"{pic}-{kind}.jpg.json").write_text(json.dumps({"title": f"{pic} {kind}"}))
            images[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    (batch / "notes.txt").write_text("a text document: no image, no hash\n")
    (batch / "notes.txt.json").write_text(json.dumps({"title": "notes"}))
    return images


def _rows(pg) -> dict[str, tuple[str, str, str]]:
    return {bytes(s).hex(): tuple(neardup.to_hex(v) for v in (p, d, f)) for s, p, d, f in pg.execute(
        "SELECT n.sha256, r.phash, r.dhash, r.phash_flip FROM result_image_hash r JOIN node n USING (node_id)")}


def _want(images: dict[str, Path]) -> dict[str, tuple[str, str, str]]:
    """What the action's own function makes of each image (hoardfs.jobs.actions.builtin.near_dup_hash)."""
    return {sha: (h["phash"], h["dhash"], h["phash_flip"]) for sha, path in images.items() for h in [hashes(path)]}


@pytest.mark.services
def test_near_dup_at_ingest_hashes_each_batchs_images_without_a_pipeline(hoard_home: Path, pg, redis_conn) -> None:
    """With `ingest.near_dup_at_ingest`, a batch ingested by the workers gets its images' hashes
    with no pipeline defined and no `hoard action run`: the finish step queues the near-dup-hash
    run over the batch, whose rows are the action's own hashes of each image (the text document
    none); `hoard dups` groups the copies. Ingested again under `--here`, another batch is hashed
    in the same process. Without the key (the default) a batch gets no hash."""
    with worker_reachable_home(hoard_home) as home:  # the built-in action's worker runs as nobody under root
        _hashed_at_ingest(home, pg, redis_conn)


def _hashed_at_ingest(home: Path, pg, redis_conn) -> None:
    from hoardfs.jobs import ingest as ua1
    from hoardfs.jobs.ingest import work_here

    made = write_set(home / "set", REALDATA / "images")
    pictures = sorted(made)
    cfg = ingest_home(home, pg)
    plain = _batch(cfg, "plain-1", made, pictures[:1])
    assert ua1.submit(cfg, cfg.ssd.zone_path("3A") / "plain-1", "sidecar").status == "queued"
    work_here(cfg, redis_conn)
    assert ua1.load_state(cfg, "plain-1").status == "done"
    assert _rows(pg) == {}  # the default: no hash at ingest

    text = Path(cfg.source).read_text().replace("[ingest]\n", "[ingest]\nnear_dup_at_ingest = true\n", 1)
    Path(cfg.source).write_text(text)
    from hoardfs.base import config

    cfg = config.load(cfg.source)
    assert cfg.ingest.near_dup_at_ingest
    queued = _batch(cfg, "queued-1", made, pictures[1:3])
    assert ua1.submit(cfg, cfg.ssd.zone_path("3A") / "queued-1", "sidecar").status == "queued"
    work_here(cfg, redis_conn)
    assert ua1.load_state(cfg, "queued-1").status == "done"
    assert _rows(pg) == _want(queued)  # plain-1's images stay unhashed: only the batch ingested
    runs = json.loads(_hoard(cfg, "action", "runs", "--json").stdout)["runs"]
    assert [(r["action"], r["status"], r["inputs"], r["by"]) for r in runs] == [
        ("near-dup-hash", "done", len(queued), "ingest of queued-1")], runs

    dups = json.loads(_hoard(cfg, "dups", "--json").stdout)
    by_path = {sha: path for sha, path in queued.items()}
    groups = {frozenset(by_path[m].parent.name for m in g["members"]) for g in dups["groups"]}
    assert groups == {frozenset({pic}) for pic in pictures[1:3]}, dups  # each picture's copies: one group

    here = _batch(cfg, "here-1", made, pictures[3:4])
    res = _hoard(cfg, "ingest", str(cfg.ssd.zone_path("3A") / "here-1"), "--source", "sidecar", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _rows(pg) == _want(queued) | _want(here)
    assert plain.keys().isdisjoint(_rows(pg))


def _hoard(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], capture_output=True,
                          text=True, timeout=600)
