"""Everyday edges, on real PostgreSQL, Redis, store and files: select by source
reaches files whose metadata sits on their post, views and stages of one batch use that
batch's paths, overlapping puts count exactly, deleted batches do not linger."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.fsd.core.records import STREAM_THRESHOLD
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs import outputs
from hoardfs.sql import browse
from hoardfs.sql.selectors import query_nodes
from tests.helpers import dir_disks_config, make_files
from tests.test_ingest import ingest_all, ingest_home

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent

FORUM = Spec(seed=1, batches=1, items_per_batch=40, sources=("forum",), large_max_mb=1, ready_signal=True)


def _members(pg, batch_id: str) -> set[str]:
    return {r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM batch_member bm JOIN node n USING (node_id) "
        "WHERE bm.batch_id = %s AND n.is_physical", [batch_id])}


def test_select_by_source_reaches_files_under_their_post(hoard_home: Path, pg, redis_conn) -> None:
    """A csv_manifest batch's media carry no metadata of their own (it sits on the virtual
    post above them); `select --source forum` still picks every file of the batch."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    (batch,) = generate(zone3a, FORUM)
    (state,) = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id], source="forum")
    assert state.status == "done", state.error
    members = _members(pg, batch.batch_id)
    documents = {r[0] for r in pg.execute(  # the manifest: a metadata document, not a file it describes
        "SELECT DISTINCT encode(raw_object, 'hex') FROM common_metadata WHERE raw_object IS NOT NULL")}
    assert len(members) > 20 and len(documents & members) == 1
    picked = set(query_nodes(pg, {"sources": ["forum"]}).sha256)
    assert picked == members - documents
    assert not set(query_nodes(pg, {"sources": ["ytdlp"]}).sha256)


def _summary(stderr: str) -> tuple[int, int, int]:
    """(files, new, already present) from `hoard put`'s last line."""
    m = re.search(r"^(\d+) files: (\d+) new \(.*\), (\d+) already present", stderr, re.M)
    assert m, stderr
    return int(m[1]), int(m[2]), int(m[3])


def test_overlapping_puts_count_every_file_once(tmp_path: Path) -> None:
    """Two `hoard put`s of the same files at the same time: each reports every file exactly
    once (a file the other put committed while this one was writing it is "existing", once),
    and the new ones of the two add up to the files. Repeated: the race needs timing luck."""
    src = tmp_path / "in"
    big = [src / f"big{i}.bin" for i in range(3)]  # streamed, each its own commit
    src.mkdir()
    for i, p in enumerate(big):
        p.write_bytes(random.Random(i).randbytes(STREAM_THRESHOLD + 4096))
    small = make_files(src / "small", 70, seed=3, lo=500_000, hi=520_000)  # > one 32 MB group
    n = len(big) + len(small)
    for attempt in range(3):
        cfg = dir_disks_config(tmp_path / f"try{attempt}", 3, shard_size_mb=64)
        Store.open(config.load(cfg), init=True).close()
        cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", str(src)]
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        news = 0
        for stdout, stderr in outs:
            files, new, existing = _summary(stderr)
            assert (files, new + existing) == (n, n), stderr
            assert sorted(line.split()[-1] for line in stdout.splitlines()) == sorted(str(p) for p in big + small)
            news += new
        assert news == n


GALLERY = Spec(seed=4, batches=2, items_per_batch=40, sources=("gallery",), large_max_mb=1, ready_signal=True,
               repeat_fraction=0.3)


def test_view_and_stage_of_one_batch_use_its_paths(hoard_home: Path, pg, redis_conn) -> None:
    """`select --batch B --view` and a stage of B put every file of B under its path in B —
    a file first seen in another batch too, and each path of a file B holds twice."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, GALLERY)
    states = ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches])
    assert [s.status for s in states] == ["done"] * 2, [s.error for s in states]
    second = batches[1]
    truth = {(i.sha256, i.path) for i in second.items}
    first = {i.sha256 for i in batches[0].items}
    shas = [s for s, _ in truth]
    assert len(shas) > len(set(shas)), "the fixture needs files the batch holds twice"
    assert first & set(shas), "the fixture needs files another batch holds too"
    cfg_path = str(hoard_home / "hoard.toml")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg_path, "select", "--batch", second.batch_id,
                          "--view"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert {tuple(line.split("  ", 1)) for line in res.stdout.splitlines()} == truth
    assert len(res.stdout.splitlines()) == len(truth)
    add = subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg_path, "view", "add", "b1", "-"], cwd=REPO,
                         input=res.stdout, capture_output=True, text=True, timeout=120)
    assert add.returncode == 0, add.stderr
    spec = outputs.make_spec("stage", "one-batch", "by_batch", selector={"batches": [second.batch_id]})
    outputs.submit(cfg, spec)
    report = outputs.run(cfg, "one-batch")
    assert report["files"] == len(truth)
    staged = cfg.ssd.zone_path("3C") / "one-batch" / "by_batch" / "input" / "gallery" / second.batch_id
    assert {(hashlib.sha256(p.read_bytes()).hexdigest(), str(p.relative_to(staged)))
            for p in staged.rglob("*") if p.is_file()} == truth


def test_a_deleted_batch_is_shown_deleted_everywhere(hoard_home: Path, pg, redis_conn) -> None:
    """After `hoard delete --batch B` of a batch ingested with rejects: health no longer names
    it "with rejects", `ingest --status B` and the GUI's batch list say it was deleted, and its
    3B package is gone."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    (batch,) = generate(zone3a, Spec(seed=6, batches=1, items_per_batch=10, sources=("gallery",), large_max_mb=1))
    (zone3a / batch.batch_id / "lonely.png.json").write_text('{"title": "no media"}')  # a reject
    (zone3a / batch.batch_id / "_READY").write_text("gallery\n")
    (st,) = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id])
    assert st.status == "done with rejects", st.error
    package = cfg.ssd.zone_path("3B") / batch.batch_id
    assert package.is_dir()
    assert batch.batch_id in ua1.ingest_status(cfg)["with_rejects"]
    cfg_path = str(hoard_home / "hoard.toml")

    def hoard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hoardfs", "--config", cfg_path, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    res = hoard("delete", "--batch", batch.batch_id, "--yes")
    assert res.returncode == 0, res.stderr
    assert f"3B package {package} removed" in res.stdout
    assert not package.exists()
    status = ua1.ingest_status(cfg)
    assert batch.batch_id not in status["with_rejects"] and status["deleted"] == [batch.batch_id]
    health = hoard("health")
    assert "ingest:   1 deleted batches" in health.stdout and "with rejects" not in health.stdout, health.stdout
    shown = hoard("ingest", "--status", batch.batch_id)
    assert shown.returncode == 0 and "deleted" in shown.stdout, shown.stdout + shown.stderr
    rows, _ = browse.batches(pg)
    (row,) = [r for r in rows if r["batch_id"] == batch.batch_id]
    assert row["deleted"] is True
    again = hoard("delete", "--batch", batch.batch_id, "--yes")  # idempotent, and says the package is gone
    assert again.returncode == 0, again.stderr
    assert "already deleted" in again.stdout and "no 3B package" in again.stdout, again.stdout
