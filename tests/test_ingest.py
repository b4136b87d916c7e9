"""UA_1 end to end on real PostgreSQL, Redis, store and files: 3A → store + DB → 3B → gone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest
from rq import SimpleWorker

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs.guard import SERIALIZER
from hoardfs.jobs.queues import QUEUES, rq_queue
from hoardfs.sql.intents import virtual_sha256
from tests.helpers import REALDATA, fresh_schema, needs_realdata, use_schema

SPEC = Spec(seed=5, batches=3, items_per_batch=30, large_max_mb=2, ready_signal=True)


def ingest_home(home: Path, pg: psycopg.Connection, batch_size_gb: float | None = None,
                **ingest: object) -> config.Settings:
    cfg_path = use_schema(home, pg)
    if batch_size_gb is not None:
        text = Path(cfg_path).read_text()
        Path(cfg_path).write_text(text.replace("[store]\n", f"[store]\nbatch_size_gb = {batch_size_gb}\n", 1))
    opts = {"settle_s": 0.05, **ingest}
    with open(cfg_path, "a") as fh:
        fh.write("\n[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()))
        fh.write('\n[sources]\ngallery = "gallery_dl"\nforum = "csv_manifest"\n')
    cfg = config.load(cfg_path)
    for d in cfg.disks:
        d.path.mkdir(parents=True, exist_ok=True)
    for z in cfg.ssd.zones:
        cfg.ssd.zone_path(z).mkdir(parents=True, exist_ok=True)
    Store.open(cfg, init=True).close()
    return cfg


def ingest_sample(home: Path, pg: psycopg.Connection, redis_conn, spec: Spec) -> tuple[config.Settings, list]:
    """A home (ingest_home) with `spec`'s synthetic batches dropped in 3A and ingested, each done."""
    cfg = ingest_home(home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, spec)
    states = ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches])
    assert [s.status for s in states] == ["done"] * len(batches), [(s.status, s.error) for s in states]
    return cfg, batches


def work(redis_conn) -> None:
    SimpleWorker([rq_queue(q, redis_conn) for q in QUEUES], connection=redis_conn, serializer=SERIALIZER).work(burst=True)


def ingest_all(cfg: config.Settings, redis_conn, dirs: list[Path], source: str | None = None) -> list[ua1.BatchState]:
    for d in dirs:
        ua1.submit(cfg, d, source, redis_conn)
    work(redis_conn)
    return [ua1.load_state(cfg, d.name) for d in dirs]


def test_synthetic_batches_end_to_end(hoard_home: Path, pg, redis_conn) -> None:
    """Three sources' batches end stored (≥ write_ack copies), described in the database with
    cross-batch edges, packaged byte for byte in 3B (in tar parts of at most batch_size_gb),
    and gone from 3A."""
    cfg = ingest_home(hoard_home, pg, batch_size_gb=0.001)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, SPEC)
    states = ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches])
    assert [s.status for s in states] == ["done"] * 3, [(s.status, s.error) for s in states]
    truth = {b.batch_id: {i.path: i.sha256 for i in b.items} for b in batches}
    multipart = 0
    with Store.open(cfg, writable=False) as store:
        for b in batches:
            assert not (zone3a / b.batch_id).exists()
            pkg = cfg.ssd.zone_path("3B") / b.batch_id
            manifest = json.loads((pkg / f"{b.batch_id}.manifest.json").read_bytes())
            assert {f["path"]: f["sha256"] for f in manifest["files"]} == truth[b.batch_id]
            packed = {}
            parts = sorted(pkg.glob("*.tar"))
            assert len(parts) == len({f["part"] for f in manifest["files"]})
            multipart += len(parts) > 1
            for part in parts:  # at most batch_size_gb, unless one file alone is bigger
                assert part.stat().st_size <= 0.001 * 2**30 + 64 * 1024 or len(tarfile.open(part).getmembers()) == 1
                with tarfile.open(part) as tar:
                    for m in tar.getmembers():
                        packed[m.name] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            assert packed == truth[b.batch_id]
            assert store.batch_manifest(b.batch_id) == manifest
            for sha in truth[b.batch_id].values():
                loc = store.index.lookup(bytes.fromhex(sha))
                assert len(store.index.get_shard(loc.shard_id).replicas) >= cfg.store.write_ack
    assert multipart >= 2
    all_shas = {s for t in truth.values() for s in t.values()}
    assert pg.execute("SELECT count(*) FROM node WHERE is_physical").fetchone()[0] == len(all_shas)
    # every metadata row of a file points at its stored sidecar, and the batches are sealed members
    assert pg.execute("SELECT count(*) FROM common_metadata WHERE raw_object IS NULL").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM action_batch WHERE sealed_at IS NOT NULL").fetchone()[0] == 3
    # forum replies chain through virtual posts; ytdlp videos hang under their channel
    assert pg.execute("SELECT count(*) FROM edge JOIN relationship_type USING (rel_id) "
                      "WHERE name = 'reply_to'").fetchone()[0] > 0
    assert pg.execute("SELECT count(*) FROM edge e JOIN relationship_type r USING (rel_id) "
                      "JOIN virtual_asset v ON v.node_id = e.parent_id WHERE r.name = 'channel_of' "
                      "AND v.kind = 'channel'").fetchone()[0] >= 30 * 0.9
    events = pg.execute("SELECT status, detail->>'status' FROM action_event").fetchall()
    assert events == [("done", "done")] * 3
    # a second submit of a finished batch does nothing and says so
    assert ua1.submit(cfg, zone3a / batches[0].batch_id, None, redis_conn).status == "done"


def _graph(conn: psycopg.Connection) -> tuple[set, set, set]:
    nodes = {bytes(r[0]) for r in conn.execute("SELECT sha256 FROM node")}
    edges = {(bytes(a), bytes(b), r) for a, b, r in conn.execute(
        "SELECT p.sha256, c.sha256, t.name FROM edge e JOIN node p ON p.node_id = e.parent_id "
        "JOIN node c ON c.node_id = e.child_id JOIN relationship_type t USING (rel_id)")}
    meta = {(bytes(s), t) for s, t in conn.execute(
        "SELECT n.sha256, m.title FROM common_metadata m JOIN node n USING (node_id)")}
    return nodes, edges, meta


def test_batch_order_does_not_change_the_graph(tmp_path: Path, servers, redis_conn) -> None:
    """Ingesting a thread's batches A then B gives the same nodes, edges and metadata as B then A."""
    spec = Spec(seed=9, batches=2, items_per_batch=25, sources=("forum",), large_max_mb=2, ready_signal=True,
                repeat_fraction=0.3)
    graphs = []
    for order in ((0, 1), (1, 0)):
        home = tmp_path / f"order{order[0]}"
        home.mkdir()
        (home / "hoard.toml").write_text(_home_toml(servers))
        with fresh_schema(servers["database_url"]) as conn:
            cfg = ingest_home(home, conn)
            zone3a = cfg.ssd.zone_path("3A")
            batches = generate(zone3a, spec)
            for i in order:
                ingest_all(cfg, redis_conn, [zone3a / batches[i].batch_id])
            graphs.append(_graph(conn))
    assert graphs[0] == graphs[1]
    assert len(graphs[0][1]) > 50
    # the second batch's first post answers the first batch's last one: an edge across batches
    cross = virtual_sha256("post", "forum", "p00000024"), virtual_sha256("post", "forum", "p00100000")
    assert (bytes.fromhex(cross[0]), bytes.fromhex(cross[1]), "reply_to") in graphs[0][1]


def _home_toml(servers) -> str:
    disks = "".join(f'[[disks]]\nlabel = "hdd{i}"\npath = "disks/hdd{i}"\n' for i in range(1, 4))
    zones = "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D"))
    return (f"database_url = {servers['database_url']!r}\nredis_url = {servers['redis_url']!r}\n"
            f"[store]\nshard_size_mb = 4\nallow_directory_disks = true\n{disks}[ssd]\nroot = \"ssd\"\n{zones}")


def _reasons(cfg: config.Settings, batch_id: str) -> dict[str, str]:
    lines = (cfg.ssd.zone_path("3A") / "_quarantine" / batch_id / "_REASONS.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if not line.startswith("#"))


def test_bad_inputs_are_quarantined_with_reasons(hoard_home: Path, pg, redis_conn) -> None:
    """Malformed/truncated JSON, orphans, empty files, hostile names, escaping symlinks and
    duplicate rows each land in quarantine (or the report) with a reason; good items ingest."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    b = zone3a / "side-bad-1"
    b.mkdir(parents=True)
    png = generate(hoard_home / "gen", Spec(seed=2, batches=1, items_per_batch=8, sources=("gallery",),
                                            large_max_mb=1))[0]
    src = hoard_home / "gen" / png.batch_id
    images = sorted(p for p in src.iterdir() if p.suffix == ".png")
    good = {}
    for i, img in enumerate(images[:3]):
        (b / f"good{i}.png").write_bytes(img.read_bytes())
        (b / f"good{i}.png.json").write_text(json.dumps({"title": f"good {i}", "author": "ada", "views": i,
                                                         "note": "nul \u0000 inside"}))
        good[f"good{i}.png"] = hashlib.sha256(img.read_bytes()).hexdigest()
    (b / "broken.png").write_bytes(images[3].read_bytes())
    (b / "broken.png.json").write_text('{"title": "x", "author": ')  # truncated
    (b / "bad.png").write_bytes(images[4].read_bytes())
    (b / "bad.png.json").write_text('{"title": "x" "author": "y"}')  # malformed
    (b / "lonely.png.json").write_text('{"title": "no media"}')
    (b / "orphan.png").write_bytes(images[5].read_bytes())
    (b / "empty.png").write_bytes(b"")
    (b / "empty.png.json").write_text('{"title": "empty"}')
    os.symlink("/etc/hostname", b / "escape.png")
    (b / "inside.png").symlink_to(b / "good0.png")
    (b / "inside.png.json").write_text('{"title": "alias"}')
    bad_name = os.fsencode(b) + b"/caf\xe9.png"
    with open(bad_name, "wb") as fh:
        fh.write(images[6].read_bytes())
    (b / "new\nline.png").write_bytes(images[7].read_bytes())
    (b / "cod\u202egnp.png").write_bytes(images[6].read_bytes() + b"!")  # shows as "codpng.png"
    (b / "_READY").write_text("sidecar\n")

    st = ingest_all(cfg, redis_conn, [b])[0]
    assert st.status == "done with rejects", st.error
    reasons = _reasons(cfg, "side-bad-1")
    assert "truncated JSON" in reasons["broken.png.json"] and reasons["broken.png"] == reasons["broken.png.json"]
    assert "malformed JSON" in reasons["bad.png.json"]
    assert "names no file" in reasons["lonely.png.json"]
    assert "not described by any" in reasons["orphan.png"]
    assert "empty file" in reasons["empty.png"]
    assert "outside the batch" in reasons["escape.png"]
    assert "not valid UTF-8" in reasons["caf\\xe9.png"]
    assert any("control characters" in r for p, r in reasons.items() if p.startswith("new"))
    assert "bidirectional override" in reasons["cod\\u202egnp.png"], reasons
    assert (zone3a / "_quarantine" / "side-bad-1" / "cod\u202egnp.png").is_file()  # moved, not lost
    q = zone3a / "_quarantine" / "side-bad-1"
    assert (q / "broken.png").read_bytes() == images[3].read_bytes()  # moved, not lost
    assert os.path.exists(os.fsencode(q) + b"/caf\xe9.png")
    assert os.path.islink(q / "escape.png")
    assert len(st.report["rejected"]) == len(reasons)
    titles = dict(pg.execute("SELECT p.locator, m.title FROM common_metadata m JOIN physical_path p USING (node_id) "
                             "WHERE p.locator LIKE 'batch:side-bad-1/%%.png'").fetchall())
    assert titles["batch:side-bad-1/good1.png"] == "good 1"
    assert "batch:side-bad-1/inside.png" in titles  # a symlink inside the batch stores its target's bytes
    assert not b.exists()


def test_csv_manifest_hostile_rows(hoard_home: Path, pg, redis_conn) -> None:
    """Rows naming `../`, absolute, NUL, over-long or missing paths, and repeated rows, are
    reported with their row number; the good rows ingest."""
    cfg = ingest_home(hoard_home, pg)
    b = cfg.ssd.zone_path("3A") / "forum-hostile"
    (b / "media").mkdir(parents=True)
    (b / "media" / "a.txt").write_text("post a\n")
    (b / "media" / "b.txt").write_text("post b\n")
    rows = ["path,post_id,parent_post_id,author,title",
            "media/a.txt,p1,,ada,first", "media/b.txt,p2,p1,brook,reply",
            "../../etc/passwd,p3,,x,climb", "/etc/passwd,p4,,x,abs", "media/a.txt,p5,,x,again",
            "media/gone.txt,p6,,x,missing", "media/\x00.txt,p7,,x,nul", f"{'d/' * 500}x.txt,p8,,x,long"]
    (b / "manifest.csv").write_text("\n".join(rows) + "\n")
    st = ingest_all(cfg, redis_conn, [b], source="forum")[0]
    assert st.status == "done with rejects"
    reasons = [r["reason"] for r in st.report["rejected"]]
    for row, words in ((4, "climbs out"), (5, "absolute"), (6, "repeats media/a.txt"), (7, "not in the batch"),
                       (8, "NUL"), (9, "1000 are accepted")):
        assert any(f"row {row}" in r and words in r for r in reasons), (row, reasons)
    replies = pg.execute("SELECT count(*) FROM edge JOIN relationship_type USING (rel_id) "
                         "WHERE name = 'reply_to'").fetchone()[0]
    assert replies == 1


def test_unknown_source_and_misplaced_batch(hoard_home: Path, pg, redis_conn, tmp_path: Path) -> None:
    """An unknown source is refused naming the known ones; nothing moves. A directory outside
    3A is refused with where to put it."""
    cfg = ingest_home(hoard_home, pg)
    b = cfg.ssd.zone_path("3A") / "mystery-1"
    b.mkdir(parents=True)
    (b / "x.png").write_bytes(b"\x89PNG....")
    with pytest.raises(HoardError, match=r"unknown source 'nope'; known: .*csv_manifest.*ytdlp") as e:
        ua1.submit(cfg, b, "nope", redis_conn)
    assert e.value.exit_code == ExitCode.USAGE
    assert (b / "x.png").exists() and ua1.load_state(cfg, "mystery-1") is None
    with pytest.raises(HoardError, match="no _READY file"):
        ua1.submit(cfg, b, None, redis_conn)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(HoardError, match="not a batch directory of zone 3A"):
        ua1.submit(cfg, tmp_path / "elsewhere", "ytdlp", redis_conn)


@pytest.mark.expect_log(r"exception raised while executing", level="ERROR")
def test_database_down_then_resume(hoard_home: Path, pg, redis_conn) -> None:
    """With PostgreSQL unreachable the batch fails at `apply`, stays in 3A with its files
    stored; `--resume` after the fix finishes it without storing anything twice."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=6, batches=1, items_per_batch=20, large_max_mb=1, ready_signal=True))[0]
    good_url = cfg.database_url
    broken = cfg.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"})
    cfg_text = Path(cfg.source).read_text()
    Path(cfg.source).write_text(cfg_text.replace(json.dumps(good_url), json.dumps(broken.database_url)))
    st = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id])[0]
    assert st.status == "failed" and st.step == "apply" and "PostgreSQL unreachable" in st.error
    stored = st.report["stored_new"] + st.report["stored_existing"]
    assert (zone3a / batch.batch_id).is_dir() and stored == len(batch.items)
    Path(cfg.source).write_text(cfg_text)
    st = ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    assert st.step == "apply"
    work(redis_conn)
    st = ua1.load_state(cfg, batch.batch_id)
    assert st.status == "done" and st.report["stored_new"] + st.report["stored_existing"] == stored
    assert not (zone3a / batch.batch_id).exists()


@pytest.mark.expect_log(r"\(ingest [^)]*: apply\) failed: PostgreSQL unreachable", level="ERROR")
def test_hoard_worker_logs_a_condition_in_one_line(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard worker` running a step that meets PostgreSQL down (no bug, a condition): its log
    says the job failed and why in one line — no Python traceback (the chaos suite's seed 66
    found RQ's); the batch's state has the way on, and rq-dashboard's failed registry keeps
    the traceback. Resumed after the fix, the batch completes."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=8, batches=1, items_per_batch=8, large_max_mb=1, ready_signal=True))[0]
    cfg_text = Path(cfg.source).read_text()
    Path(cfg.source).write_text(cfg_text.replace(json.dumps(cfg.database_url),
                                                 json.dumps("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")))
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "worker", "--burst"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr
    failed = [line for line in res.stderr.splitlines() if " failed: " in line]
    assert "Traceback" not in res.stderr, res.stderr
    assert len(failed) == 1 and f"ingest {batch.batch_id}: apply" in failed[0] \
        and "PostgreSQL unreachable" in failed[0], res.stderr
    st = ua1.load_state(cfg, batch.batch_id)
    assert st.status == "failed" and st.step == "apply" and "start it, then `hoard ingest --resume`" in st.error
    job = rq_queue("sql", redis_conn).failed_job_registry.get_job_ids()
    assert job, "the failed job is not in RQ's failed registry"
    Path(cfg.source).write_text(cfg_text)
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    work(redis_conn)
    assert ua1.load_state(cfg, batch.batch_id).status == "done"


@pytest.mark.expect_log(r"exception raised while executing", level="ERROR")
def test_zone_3b_full_keeps_the_batch(hoard_home: Path, pg, redis_conn) -> None:
    """A 3B without room refuses the package (exit 6 message naming 3B and the next step);
    the batch stays in 3A; with room again it completes."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=8, batches=1, items_per_batch=20, large_max_mb=1, ready_signal=True))[0]
    filler = cfg.ssd.zone_path("3B") / "old-package.bin"
    filler.parent.mkdir(parents=True, exist_ok=True)
    with open(filler, "wb") as fh:  # allocated, not sparse: quotas count real blocks
        for _ in range(int(0.9 * 1024)):
            fh.write(b"\x01" * (1 << 20))
    st = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id])[0]
    assert st.status == "failed" and st.step == "package"
    assert "zone 3B has room" in st.error and "--resume" in st.error
    assert (zone3a / batch.batch_id).is_dir()
    filler.unlink()
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    work(redis_conn)
    assert ua1.load_state(cfg, batch.batch_id).status == "done"


def test_a_sparse_file_beyond_3b_is_refused_at_scan(hoard_home: Path, pg, redis_conn) -> None:
    """A sparse file (`truncate -s`: holes, almost nothing on disk) larger than zone 3B could
    ever hold is quarantined at scan with one line naming its apparent size — before the store
    step reads it — and the rest of the batch is ingested (the package step used to refuse
    the whole batch after storing every byte of it)."""
    toml = hoard_home / "hoard.toml"
    toml.write_text(toml.read_text().replace("[ssd.zones.3B]\nquota_gb = 1\n", "[ssd.zones.3B]\nquota_gb = 0.1\n"))
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=9, batches=1, items_per_batch=6, large_max_mb=1, sources=("gallery",),
                                  large_fraction=0.0))[0]
    big = zone3a / batch.batch_id / "huge.png"
    with open(big, "wb") as fh:
        fh.truncate(200 << 20)  # 200 MiB apparent, 0 bytes allocated; 3B admits 0.09 GiB
    (zone3a / batch.batch_id / "huge.png.json").write_text(json.dumps({"category": "site", "id": 1, "title": "x"}))
    st = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id], "gallery")[0]
    assert st.status == "done with rejects", (st.step, st.error)
    reason = _reasons(cfg, batch.batch_id)["huge.png"]
    assert reason.startswith("200.0 MiB (sparse: 0 B on disk) is more than zone 3B can ever hold"), reason
    assert "\n" not in reason and st.report["files_accepted"] == len(batch.items) + 1  # + huge.png.json


def test_real_worker_process_and_cli(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard ingest --ready` queues; a real `hoard worker --burst` subprocess runs the job graph;
    `hoard ingest --status` prints the report."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, Spec(seed=4, batches=2, items_per_batch=15, large_max_mb=1, ready_signal=True))
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    queued = subprocess.run(hoard + ["ingest", "--ready"], capture_output=True, text=True, check=True)
    assert all(b.batch_id in queued.stdout for b in batches)
    subprocess.run(hoard + ["worker", "--burst"], capture_output=True, text=True, check=True, timeout=300)
    shown = subprocess.run(hoard + ["ingest", "--status", batches[1].batch_id], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "done" in shown.stdout and "package: parts: 1" in shown.stdout and "took: " in shown.stdout
    # labelled figures, not raw keys and values (`intent_was_applied_before False`, `quarantine None`)
    assert "files accepted: " in shown.stdout and "None" not in shown.stdout, shown.stdout
    assert not any("_" in line.split(":")[0] for line in shown.stdout.splitlines()[1:]), shown.stdout
    health = json.loads(subprocess.run(hoard + ["health", "--json"], capture_output=True, text=True).stdout)
    assert health["ingest"]["batches"] == {"done": 2}


@needs_realdata
def test_real_api_dumps_end_to_end(hoard_home: Path, pg, redis_conn) -> None:
    """Real Twitter, Reddit and Mastodon responses ingest into the database with their edges."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    social = REALDATA / "social_api"
    dirs = []
    for source, pattern in (("twitter", "twitter_*.jsonl"), ("reddit", "reddit_*.json"),
                            ("mastodon", "mastodon_*.json")):
        d = zone3a / f"{source}-real"
        d.mkdir()
        for p in social.glob(pattern):
            (d / p.name).write_bytes(p.read_bytes())
        (d / "_READY").write_text(source)
        dirs.append(d)
    states = ingest_all(cfg, redis_conn, dirs)
    assert [s.status for s in states] == ["done"] * 3, [s.error for s in states]
    kinds = dict(pg.execute("SELECT kind, count(*) FROM virtual_asset GROUP BY kind").fetchall())
    assert {"tweet", "user", "post", "comment", "status", "media"} <= set(kinds)
    rels = {r[0] for r in pg.execute("SELECT DISTINCT name FROM edge JOIN relationship_type USING (rel_id)")}
    assert {"author_of", "reply_to", "media_of"} <= rels


def test_schema_proposal_accept_fills_table(hoard_home: Path, pg, redis_conn) -> None:
    """The first ytdlp batch leaves a provisional proposal; accepting it creates src_ytdlp filled
    from the metadata so far, and the next batch fills it too."""
    from hoardfs.sql.schema_decider import accept, list_proposals

    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, Spec(seed=14, batches=4, items_per_batch=12, sources=("ytdlp", "gallery"),
                                    large_max_mb=1, ready_signal=True))
    ingest_all(cfg, redis_conn, [zone3a / batches[0].batch_id])
    props = {p.source: p for p in list_proposals(pg)}
    prop = props["ytdlp"]
    cols = {f["path"]: f for f in prop.fields}
    assert cols["duration"]["sql_type"] == "bigint" and cols["view_count" if "view_count" in cols else "id"]
    assert cols["playlist_id"]["column"] is None  # present in 1 of 5: stays in extra
    accept(pg, prop.proposal_id)
    n1 = pg.execute("SELECT count(*) FROM src_ytdlp").fetchone()[0]
    assert n1 > 0
    assert pg.execute("SELECT count(*) FROM src_ytdlp WHERE duration IS NULL").fetchone()[0] == 0
    ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches[1:]])
    assert pg.execute("SELECT count(*) FROM src_ytdlp").fetchone()[0] > n1
    assert "gallery" in {p.source for p in list_proposals(pg)}  # a second source got its own proposal


def test_schema_proposal_reject(pg) -> None:
    """Rejecting a provisional proposal marks it rejected; rejecting it again names it as not provisional."""
    from hoardfs.sql.apply import apply_write_intent
    from hoardfs.sql.migrate import migrate
    from hoardfs.sql.schema_decider import ProposalError, list_proposals, propose, reject

    migrate(pg)
    apply_write_intent(pg, {"key": "sources", "sources": ["demo"]})
    prop = propose(pg, "demo", [{"a": i} for i in range(10)])
    reject(pg, prop.proposal_id)
    assert [p.status for p in list_proposals(pg, include_decided=True)] == ["rejected"]
    with pytest.raises(ProposalError, match=f"no provisional proposal {prop.proposal_id}; `hoard db proposals --all`"):
        reject(pg, prop.proposal_id)


def test_decider_heuristics() -> None:
    """Presence and type stability decide columns; ISO strings become timestamptz; mixed ints and
    floats are numbers; unstable or rare fields stay in extra."""
    from hoardfs.sql.schema_decider import decide

    docs = [{"a": i, "t": f"2024-01-{i % 28 + 1:02d}T00:00:00Z", "m": i if i % 2 else i + 0.5,
             "u": i if i % 3 else "x", "r": 1 if i == 0 else None, "l": [1]} for i in range(40)]
    fields, ddl = decide("demo", docs)
    f = {x["path"]: x for x in fields}
    assert f["a"]["sql_type"] == "bigint" and f["t"]["sql_type"] == "timestamptz"
    assert f["m"]["sql_type"] == "double precision"
    assert f["u"]["column"] is None and f["r"]["column"] is None and f["l"]["column"] is None
    assert ddl.startswith("CREATE TABLE src_demo (") and "extra jsonb" in ddl


def test_worker_killed_mid_step_resumes(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of the worker (and its work horse) while it runs a step leaves the batch
    `running`; `--resume` (a new worker) runs the step again and the batch completes,
    nothing stored twice."""
    import signal
    import time

    cfg = ingest_home(hoard_home, pg, settle_s=30)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=15, batches=1, items_per_batch=20, large_max_mb=1, ready_signal=True))[0]
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    worker = subprocess.Popen(hoard + ["worker", "--burst"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while ua1.load_state(cfg, batch.batch_id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its work horse (power loss, OOM killer)
    worker.wait()
    st = ua1.load_state(cfg, batch.batch_id)
    assert st.status == "running" and st.step == "scan"
    Path(cfg.source).write_text(Path(cfg.source).read_text().replace("settle_s = 30", "settle_s = 0.05"))
    cfg = config.load(cfg.source)
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    work(redis_conn)
    st = ua1.load_state(cfg, batch.batch_id)
    assert st.status == "done", st.error
    assert st.report["stored_new"] + st.report["stored_existing"] == len(batch.items)


def test_delete_types_through_cli(hoard_home: Path, pg, redis_conn) -> None:
    """Type A (`--node`) hides a node in the database and the store but keeps its bytes; type B
    (`--batch`) drops the batch's memberships, marks its unshared nodes deleted, and `hoard gc`
    frees them while content another batch holds stays readable."""
    from hoardfs.sql.selectors import query_nodes

    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, Spec(seed=16, batches=2, items_per_batch=30, sources=("gallery",), large_max_mb=1,
                                    repeat_fraction=0.3, ready_signal=True))
    ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches])
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    one = batches[1].items[0].sha256
    r = subprocess.run(hoard + ["delete", "--node", one], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert pg.execute("SELECT pc.is_deleted FROM physical_content pc JOIN node n USING (node_id) "
                      "WHERE n.sha256 = %s", [bytes.fromhex(one)]).fetchone() == (True,)
    assert one not in query_nodes(pg, {"batches": [batches[1].batch_id]}).sha256
    assert subprocess.run(hoard + ["get", one, "-o", str(hoard_home / "one")], capture_output=True).returncode == 0
    first = {i.sha256 for i in batches[0].items}
    second = {i.sha256 for i in batches[1].items}
    r = subprocess.run(hoard + ["delete", "--batch", batches[0].batch_id, "--yes"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{len(first & second)} kept" in r.stdout
    deleted = {bytes(s).hex() for (s,) in pg.execute(
        "SELECT n.sha256 FROM physical_content pc JOIN node n USING (node_id) WHERE pc.is_deleted")}
    assert deleted == (first - second) | {one}
    r = subprocess.run(hoard + ["gc", "--threshold", "1.0"], capture_output=True, text=True)
    assert r.returncode == 0 and "freed" in r.stdout, r.stderr
    with Store.open(cfg, writable=False) as store:
        for sha in second:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        assert all(store.index.lookup(bytes.fromhex(s)) is None for s in first - second)


def test_file_still_growing_is_quarantined(hoard_home: Path, pg, redis_conn) -> None:
    """A file a scraper is still writing when the signal arrives (it changes between the two
    looks `settle_s` apart) goes to quarantine, named as still being written; the rest ingests."""
    import threading
    import time

    cfg = ingest_home(hoard_home, pg, settle_s=1.0)
    b = cfg.ssd.zone_path("3A") / "side-growing"
    b.mkdir(parents=True)
    (b / "done.png").write_bytes(b"\x89PNG" + os.urandom(3000))
    (b / "done.png.json").write_text('{"title": "complete"}')
    (b / "partial.png").write_bytes(b"\x89PNG" + os.urandom(1000))
    (b / "partial.png.json").write_text('{"title": "downloading"}')
    (b / "_READY").write_text("sidecar")
    stop = threading.Event()

    def download() -> None:
        with open(b / "partial.png", "ab") as f:
            while not stop.is_set():
                f.write(os.urandom(512))
                f.flush()
                time.sleep(0.05)

    writer = threading.Thread(target=download)
    writer.start()
    try:
        st = ingest_all(cfg, redis_conn, [b])[0]
    finally:
        stop.set()
        writer.join()
    assert st.status == "done with rejects"
    reasons = _reasons(cfg, "side-growing")
    assert "still being written" in reasons["partial.png"]
    assert "names no file of the batch (expected partial.png" in reasons["partial.png.json"]
    assert st.report["stored_new"] + st.report["stored_existing"] == 2  # done.png and its sidecar


def test_orphaned_work_horse_is_waited_for(hoard_home: Path, pg, redis_conn) -> None:
    """kill -9 of only the worker's parent leaves its forked work horse running the step; a
    resumed job waits for it (batch lock) instead of racing it, and the batch completes once."""
    import signal
    import time

    cfg = ingest_home(hoard_home, pg, settle_s=3)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=17, batches=1, items_per_batch=15, large_max_mb=1, ready_signal=True))[0]
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    parent = subprocess.Popen(hoard + ["worker", "--burst"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while ua1.load_state(cfg, batch.batch_id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)  # the horse (its child) keeps scanning
    parent.wait()
    ua1.submit(cfg, zone3a / batch.batch_id, None, redis_conn)
    work(redis_conn)
    st = ua1.load_state(cfg, batch.batch_id)
    assert st.status == "done", st.error
    assert st.done == list(ua1.STEPS)
    assert redis_conn.llen("rq:queue:io") == redis_conn.llen("rq:queue:sql") == 0


def test_only_conditions_are_logged_as_conditions() -> None:
    """A service down, a disk gone, a person's error, two writers meeting (a deadlock, a
    serialization failure) are conditions (one line, a way on); EBADF is a bug and keeps its
    traceback."""
    import errno

    import redis

    from hoardfs.jobs.queues import is_condition

    assert is_condition(psycopg.OperationalError("connection refused"))
    assert is_condition(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_condition(psycopg.errors.DiskFull("no space"))
    assert is_condition(psycopg.errors.DeadlockDetected("deadlock detected"))  # (run again: it goes through)
    assert is_condition(psycopg.errors.SerializationFailure("could not serialize"))
    assert is_condition(redis.ConnectionError("gone")) and is_condition(HoardError("zone 3B is full"))
    assert is_condition(OSError(errno.EIO, "I/O error")) and is_condition(OSError(errno.ENOSPC, "full"))
    assert not is_condition(OSError(errno.EBADF, "Bad file descriptor"))
    assert not is_condition(ValueError("a bug"))


def test_a_file_swapped_for_a_link_after_the_scan_is_not_stored(hoard_home: Path, pg) -> None:
    """Between the scan and the store step a file of the batch is replaced
    by a symbolic link to a secret (the scraper account can write 3A). The store step ran as
    root and stored the secret in the world-readable shards. Now each file must be the one the
    scan saw (device, inode, size, mtime): the swapped one is rejected, the others stored."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(hoard_home / "gen", Spec(seed=5, batches=1, items_per_batch=4, sources=("gallery",),
                                              large_max_mb=1))[0]
    (hoard_home / "gen" / batch.batch_id).rename(zone3a / batch.batch_id)
    b = zone3a / batch.batch_id
    ua1.submit(cfg, b, "gallery", queue=False)
    ua1._run_step_locked(cfg, batch.batch_id, "scan", then_enqueue=False)
    victim = sorted(p for p in b.iterdir() if p.suffix == ".png")[0]
    secret = hoard_home / "secret"
    secret.write_bytes(b"TOP SECRET " * 100)
    victim.unlink()
    victim.symlink_to(secret)
    report = ua1._run_step_locked(cfg, batch.batch_id, "store", then_enqueue=False)
    with Store.open(cfg, writable=False) as store:
        assert store.index.lookup(hashlib.sha256(secret.read_bytes()).digest()) is None  # the old code stored it
        assert store.index.count_objects() >= 3
    rejected = {r["path"]: r["reason"] for r in report["rejected"]}
    assert "not the file the scan saw" in rejected[victim.name], rejected
    assert rejected[victim.name].endswith("nothing of it was stored — drop it in a new batch"), rejected
