"""Action runs on other hosts (docs/scale-out.md, "Workers on other hosts"; hoardfs.jobs.actions.remote):
`hoard action run thumbnail --remote` on the store's server, its stage, worker and parse by a
`hoard worker` in a network namespace of its own (tests/test_remote_workers.py's hosts: Redis
on TCP with a password, SeaweedFS's S3 through a proxy on a veth pair), its children back
through the bucket, stored and applied on the server. Real PostgreSQL, Redis, SeaweedFS,
store, worker program and processes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.base.files import flocked
from hoardfs.fsd.core import s3
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import remote as remote_actions
from hoardfs.jobs.actions.api import load_contract
from hoardfs.jobs.actions.contract import Contract
from hoardfs.jobs.actions.state import (
    RunState,
    load_state,
    run_id_of,
    save_state,
    state_dir,
    steps_of,
    typed_params,
    write_work,
)
from hoardfs.jobs.queues import enqueue_once, fetch_job
from tests.helpers import needs_reachable_checkout
from tests.s3fault import FaultProxy
from tests.test_remote_workers import REPO, _hoard, _logs, _onto_the_bucket, cluster  # noqa: F401  # (a fixture)
from tests.test_s3_backend import engine_env, s3_disk  # noqa: F401  # (a fixture)

# tier: SeaweedFS, PostgreSQL, Redis and hoard processes in network namespaces
pytestmark = pytest.mark.services


@contextlib.contextmanager
def _reachable_ssds(remotes: list[Path]) -> Iterator[None]:
    """Each host's SSD moved where an action's worker can pass: as root, a worker runs as
    `actions.worker_user` (nobody), who cannot enter pytest's root-only tmp_path (0711 under
    /var/tmp: passage, no listing)."""
    if os.geteuid() == 0:
        needs_reachable_checkout()  # the worker user starts hoard's Python on the host
    made = []
    try:
        for cfg in remotes:
            d = Path(tempfile.mkdtemp(prefix="hoard-host-ssd-", dir="/var/tmp"))
            d.chmod(0o711)
            made.append(d)
            for z in ("3A", "3B", "3C", "3D"):
                (d / z).mkdir()
            cfg.write_text(cfg.read_text().replace('root = "ssd"', f'root = "{d}"', 1))
        yield
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def _images(cfg: config.Settings) -> list[str]:
    with psycopg.connect(cfg.database_url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT encode(sha256, 'hex') FROM node JOIN physical_content USING (node_id) "
            "WHERE file_type IN (SELECT ext FROM file_type WHERE kind = 'image') ORDER BY 1").fetchall()]


def _children(cfg: config.Settings) -> list[tuple[str, str]]:
    """(parent, child) of every `thumbnail_of` edge in PostgreSQL."""
    with psycopg.connect(cfg.database_url) as conn:
        return sorted(conn.execute(
            "SELECT encode(p.sha256, 'hex'), encode(c.sha256, 'hex') FROM edge e JOIN node p ON p.node_id = "
            "e.parent_id JOIN node c ON c.node_id = e.child_id JOIN relationship_type r USING (rel_id) "
            "WHERE r.name = 'thumbnail_of'").fetchall())


def _run_id(line_source: str) -> str:
    doc = json.loads(line_source.strip().splitlines()[-1])
    return str(doc["run"])


@contextlib.contextmanager
def _server_worker(main: Path, home: Path) -> Iterator[subprocess.Popen]:
    """`hoard worker` of the store's server: every server queue, RQ's scheduler, the reaper."""
    log = (home / "server-worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(main), "worker"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _server_log(home: Path) -> str:
    p = home / "server-worker.log"
    return f"\n--- server worker\n{p.read_text(errors='replace')[-4000:]}" if p.exists() else ""


def test_a_remote_host_runs_an_action_and_its_children_are_stored_on_the_server(cluster, tmp_path: Path) -> None:
    """Refused on the server in one line, nothing recorded or queued, while an input is on no S3
    disk; once the shards are on the bucket, `hoard action run thumbnail --remote --wait` has a
    worker in another network namespace stage the images into its own 3C, make the thumbnails
    and upload them: the server stores each child, PostgreSQL holds one `thumbnail_of` edge per
    image, the transfer is gone from the bucket, nothing of the run is left in either host's 3C;
    the same command again is "done already". A run cancelled while it waits for a host is taken
    off the `remote` queue."""
    main, (host, _), (remote, _) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg = config.load(main)
    images = _images(cfg)
    assert len(images) > 5
    nodes = tmp_path / "images.txt"
    nodes.write_text("\n".join(images) + "\n")  # (the thumbnails are images too: a later run would take them)
    refused = _hoard(main, "action", "run", "thumbnail", "--nodes", str(nodes), "--remote")
    lines = [ln for ln in (refused.stdout + refused.stderr).splitlines() if ln.strip()]
    assert refused.returncode == 3 and len(lines) == 1, lines
    assert "on no S3 disk" in lines[0] and "hoard replicate" in lines[0] and "thumbnail --remote" in lines[0], lines
    assert not cluster["redis"].exists("rq:queue:remote")  # nothing queued …
    assert not list((cfg.ssd.root / "state" / "actions").glob("thumbnail-*.json"))  # … nor recorded

    _onto_the_bucket(main)
    with _reachable_ssds([remote]), _server_worker(main, tmp_path):
        few = tmp_path / "few.txt"
        few.write_text("\n".join(images[:2]) + "\n")
        queued = _hoard(main, "action", "run", "thumbnail", "--nodes", str(few), "--remote", "--json")
        assert queued.returncode == 0, queued.stdout + queued.stderr
        cancelled = _run_id(queued.stdout)  # no host serves `remote` yet: it waits there …
        deadline = time.monotonic() + 60
        while (st := load_state(cfg, cancelled)) is None or st.status != "waiting_remote":
            assert time.monotonic() < deadline, _server_log(tmp_path)
            time.sleep(0.2)
        res = _hoard(main, "action", "cancel", cancelled)
        assert res.returncode == 0, res.stdout + res.stderr  # … until cancelled: taken off the queue
        assert fetch_job(remote_actions.job_id(cancelled), cluster["redis"]).get_status() == "canceled"
        assert load_state(cfg, cancelled).status == "cancelled"
        host.start_worker(remote)
        res = _hoard(main, "action", "run", "thumbnail", "--nodes", str(nodes), "--remote", "--wait", "--json",
                     timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr + _logs(host) + _server_log(tmp_path)
        rid = _run_id(res.stdout)
        st = load_state(cfg, rid)
        assert st is not None and st.status == "done" and st.steps[:3] == ["plan", "remote", "collect"], st
        edges = _children(cfg)
        assert sorted(p for p, _ in edges) == images and len({c for _, c in edges}) == len(images), edges
        with Store.open(config.load(main), writable=False) as store:
            assert all(store.index.lookup(bytes.fromhex(c)) is not None for _, c in edges)
        assert st.report["children_stored"] == len(images) and st.report["remote"]["host"], st.report
        listed = cluster["s3"].list_objects_v2(Bucket=cluster["bucket"], Prefix="transfers/").get("Contents", [])
        assert listed == []
        host_cfg = config.load(remote)
        assert not (host_cfg.ssd.zone_path("3C") / rid).exists() and not (cfg.ssd.zone_path("3C") / rid).exists()
        assert fetch_job(remote_actions.job_id(rid), cluster["redis"]).get_status() == "finished"

        again = _hoard(main, "action", "run", "thumbnail", "--nodes", str(nodes), "--remote")
        assert again.returncode == 0 and "done already" in again.stdout, again.stdout + again.stderr
        assert _children(cfg) == edges


@pytest.mark.expect_log(r"reaper: job remote-action-thumbnail-v1-[0-9a-f]{12} .* sent no heartbeat for \d+ s "
                        r"\(host down\?\); queued again", level="WARNING")
def test_a_host_killed_mid_action_has_it_finished_elsewhere_and_nothing_stored_twice(cluster, tmp_path: Path) -> None:
    """SIGKILL of every process of host 1 while it stages a run's inputs (its S3 answers slowed
    down): the server's reaper queues the host's job again, host 2 stages, runs and uploads
    the whole run, and the server stores and applies it once — one `thumbnail_of` edge per
    image, one write-intent; the run never failed."""
    main, (host1, host2), (remote1, remote2) = cluster["main"], cluster["hosts"], cluster["remotes"]
    proxy1, _ = cluster["proxies"]
    cfg = config.load(main)
    images = _images(cfg)
    nodes = tmp_path / "images.txt"
    nodes.write_text("\n".join(images) + "\n")
    _onto_the_bucket(main)
    conn = cluster["redis"]
    with _reachable_ssds([remote1, remote2]), _server_worker(main, tmp_path):
        proxy1.delay(0.3)  # host 1's reads crawl: it is killed in the middle of its stage
        host1.start_worker(remote1)
        res = _hoard(main, "action", "run", "thumbnail", "--nodes", str(nodes), "--remote", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        rid = _run_id(res.stdout)
        partial = config.load(remote1).ssd.zone_path("3C") / ".tmp" / rid
        deadline = time.monotonic() + 90
        while not (partial.is_dir() and any(p.is_file() for p in partial.rglob("*"))):
            assert time.monotonic() < deadline, _logs(host1) + _server_log(tmp_path)
            time.sleep(0.1)
        assert fetch_job(remote_actions.job_id(rid), conn).get_status() == "started"
        host1.kill_all()
        host2.start_worker(remote2)
        waited = _hoard(main, "action", "run", "thumbnail", "--nodes", str(nodes), "--remote", "--wait", "--json",
                        timeout=300)
        assert waited.returncode == 0, waited.stdout + waited.stderr + _logs(host2) + _server_log(tmp_path)
    st = load_state(cfg, rid)
    assert st is not None and st.status == "done" and st.endings == 0, st
    edges = _children(cfg)
    assert sorted(p for p, _ in edges) == images and len(edges) == len(images), edges
    with psycopg.connect(cfg.database_url) as db:
        assert db.execute("SELECT count(*) FROM applied_intent WHERE key = %s", (f"action:{rid}",)).fetchone() == (1,)
    assert not conn.zcard("rq:failed:remote")
    assert "queued again" in (tmp_path / "server-worker.log").read_text(errors="replace")


def test_what_a_host_uploaded_is_checked_before_anything_is_stored() -> None:
    """parsed.json is read from a bucket anyone with its key can write: a child path out of the
    output root, a parent that is not an input of the run, a relationship or a record table the
    contract does not have — each refused with one line naming it."""
    c = Contract.model_validate(json.loads(json.dumps(_thumbnail())))
    inp, other = "a" * 64, "b" * 64
    good = {"path": "thumbs/x.jpg", "sha256": "c" * 64, "size": 3, "parent_sha256": inp, "parent_path": None,
            "relationship": "thumbnail_of", "labels": {"variant": "thumbnail"}}
    children, _, _ = remote_actions._checked(c, {"children": [good], "records": []}, {inp}, limit=1, max_bytes=None)
    assert children == [good]
    for change, said in (({"path": "../../etc/x.jpg"}, "child 1 names"), ({"parent_sha256": other}, "its parent"),
                         ({"relationship": "owns"}, "relationship 'owns'"), ({"sha256": "zz"}, "child 1 is not")):
        with pytest.raises(remote_actions._Bad) as e:
            remote_actions._checked(c, {"children": [good | change], "records": []}, {inp}, limit=1,
                                    max_bytes=None)
        assert said in str(e.value) and "\n" not in str(e.value), (change, str(e.value))
    record = {"rule": "x", "into": "result_canny", "node_sha256": inp, "child_path": None, "values": {"status": "ok"}}
    with pytest.raises(remote_actions._Bad) as e:
        remote_actions._checked(c, {"children": [good], "records": [record]}, {inp}, limit=1, max_bytes=None)
    assert "record 1" in str(e.value)


def _thumbnail() -> dict:
    from hoardfs.jobs.actions import contract as contracts  # deferred: the built-in's file, found as the CLI finds it

    return contracts.load_file(contracts.find_any(Path("/nonexistent"), "thumbnail")[0]).model_dump(mode="json")


def test_a_host_runs_only_a_contract_it_has_itself(tmp_path: Path) -> None:
    """A `run_action` job written into Redis by someone other than the server names a contract:
    one whose command is not the host's own (the built-in thumbnail's, here) is refused in one
    line before anything is staged or run — the job cannot make the host run a command of its
    choosing; nor can parameters the contract refuses, nor a stage of another run, nor a run id
    that is not the hash of that contract, those parameters and inputs (the host would upload its
    outputs as another run's)."""
    from tests.helpers import write_config

    root = tmp_path / "host"
    for d in ("d0", "d1", "ssd/3A", "ssd/3B", "ssd/3C", "ssd/3D"):
        (root / d).mkdir(parents=True)
    cfg_path = write_config(root, [(d, root / d, None) for d in ("d0", "d1")])
    rid = "thumbnail-v1-0123456789ab"
    own = _thumbnail()
    spec = {"kind": "stage", "id": rid, "nodes": ["a" * 64], "layout": {"name": "flat", "template": "{sha256}",
                                                                       "sidecars": False, "per_locator": False}}
    evil = json.loads(json.dumps(own))
    evil["run_spec"]["command"] = ["sh", "-c", f"touch {tmp_path / 'pwned'}"]
    for contract, params, stage, said in ((evil, {"size": 64}, spec, "is not this host's"),
                                          (own, {"size": 1}, spec, "its parameters are not the contract's"),
                                          (own, {"size": 64}, spec | {"id": "other-v1-0123456789ab"}, "is not the run's"),
                                          # a run id of the server's not made of this contract, these
                                          # parameters and inputs: its outputs would be uploaded as that run's
                                          (own, {"size": 64}, spec, "is not the run of action thumbnail")):
        doc = {"run": rid, "contract": contract, "params": params, "spec": stage, "plan": {}, "disk": "s3a"}
        with pytest.raises(HoardError) as e:
            remote_actions.run_action(str(cfg_path), doc)
        message = e.value.message
        assert said in message and "\n" not in message, message
        assert not (tmp_path / "pwned").exists()
        assert not any((root / "ssd" / "3C").iterdir())  # nothing staged


@pytest.mark.expect_log(r"job remote-action-thumbs-v1-[0-9a-f]{12} .* failed: run thumbs-v1-[0-9a-f]{12} on host "
                        r".*: the worker exited with status 3", level="ERROR")
@pytest.mark.expect_log(r"job action-thumbs-v1-[0-9a-f]{12}-remote(-poll)? .* failed: run thumbs-v1-[0-9a-f]{12}: its "
                        r"job remote-action-thumbs-v1-[0-9a-f]{12} failed on a remote host", level="ERROR")
def test_a_worker_failing_on_the_host_fails_the_run_in_one_line_and_resume_reruns_it(cluster, tmp_path: Path) -> None:
    """A worker that exits 3 on the remote host: `--wait` on the server exits 5 with one line
    naming the worker's exit, its log on that host and `hoard action resume RUN`; `status` says
    failed. The worker fixed (the same contract on both hosts), `hoard action resume RUN --wait`
    runs the host's part again and the children are stored once each."""
    from tests.helpers import ACTION_WORKER, worker_contract

    main, (host, _), (remote, _) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg = config.load(main)
    _onto_the_bucket(main)
    with psycopg.connect(cfg.database_url) as db:
        (batch,) = db.execute("SELECT batch_id FROM action_batch ORDER BY batch_id LIMIT 1").fetchone()
    cfg.actions_dir.mkdir(parents=True, exist_ok=True)
    contract = worker_contract(cfg, batch, exit=3)
    mine = config.load(remote).actions_dir
    mine.mkdir(parents=True, exist_ok=True)
    shutil.copy(contract, mine / contract.name)  # the host runs only a contract it has itself
    with _reachable_ssds([remote]), _server_worker(main, tmp_path):
        host.start_worker(remote)
        res = _hoard(main, "action", "run", "thumbs", "--remote", "--wait", timeout=300)
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 5 and len(lines) == 1, lines + [_logs(host), _server_log(tmp_path)]
        assert "exited with status 3" in lines[0] and "hoard action resume thumbs-v1-" in lines[0], lines
        rid = lines[0].split("run ", 1)[1].split(" ", 1)[0]
        status = _hoard(main, "action", "status", rid, "--json")
        assert json.loads(status.stdout)["status"] == "failed", status.stdout
        (cfg.actions_dir / "thumbs-worker.py").write_text(ACTION_WORKER.format(children=1, exit=0, sleep=0))
        res = _hoard(main, "action", "resume", rid, "--wait", timeout=300)
        assert res.returncode == 0 and f"run {rid}: done" in res.stdout, res.stdout + res.stderr + _logs(host)
    st = load_state(cfg, rid)
    assert st is not None and st.report["children_stored"] == st.inputs > 0, st.report
    with psycopg.connect(cfg.database_url) as db:
        (edges,) = db.execute("SELECT count(*) FROM edge JOIN relationship_type USING (rel_id) WHERE name = "
                              "'thumb_of'").fetchone()
    assert edges == st.inputs


def test_what_a_host_uploaded_is_held_to_the_runs_limits() -> None:
    """A host (or anyone who can write the bucket) is held to what a local run's parse allows:
    no more children than a4_scale × inputs, no more bytes than max_output_bytes — else the
    server would download and store whatever the document claims (its sizes are the
    document's); no path twice (the stored table is by path: one child's bytes would be
    stored and pinned, the other's applied); no parents in a ring (two children each the
    other's parent: a cycle in PostgreSQL's edges)."""
    c = Contract.model_validate(json.loads(json.dumps(_thumbnail())))
    inp = "a" * 64

    def child(n: int, **change: object) -> dict:
        return {"path": f"thumbs/{n}.jpg", "sha256": f"{n:064x}", "size": 10, "parent_sha256": inp,
                "parent_path": None, "relationship": "thumbnail_of", "labels": {}} | change

    two = [child(1), child(2)]
    children, _, _ = remote_actions._checked(c, {"children": two, "records": []}, {inp}, limit=2, max_bytes=20)
    assert [ch["path"] for ch in children] == ["thumbs/1.jpg", "thumbs/2.jpg"]
    ring = [child(1, parent_sha256=None, parent_path="thumbs/2.jpg"),
            child(2, parent_sha256=None, parent_path="thumbs/1.jpg")]
    for kids, limit, max_bytes, said in (
            ([child(1), child(2), child(3)], 2, None, "3 children, more than 2"),
            ([child(1), child(2, size=11)], 2, 20, "more than max_output_bytes"),
            ([child(1), child(1, sha256="f" * 64)], 2, None, "twice"),
            (ring, 2, None, "ring")):
        with pytest.raises(remote_actions._Bad) as e:
            remote_actions._checked(c, {"children": kids, "records": []}, {inp}, limit=limit, max_bytes=max_bytes)
        assert said in str(e.value) and "\n" not in str(e.value), (said, str(e.value))


def test_a_parsed_json_is_read_as_it_streams_and_refused_before_it_fills_the_servers_memory(
        seaweedfs, engine_env, tmp_path: Path) -> None:
    """parsed.json comes off a bucket anyone with its key can write. Read whole and given to
    `json.loads` (as before), a document of PARSED_MAX (1 GiB) could hold twenty times that in
    the server's memory — a list of empty maps — before a check looked at it. It is now read as
    it streams: what the engine serves is taken as json.loads takes it, and a document that nests
    too deep, is not JSON, names a top key twice, has a child that is not a map, holds a value
    longer than TOKEN_MAX (yajl scans such a token again at each read: an 8 MiB number took 4.6 s),
    or would take more memory than the server allows (HELD_MAX, lowered here; a string's
    characters at their width) is refused in one line as soon as that shows — the rest
    of it never read."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    inp = "a" * 64
    kids = [{"path": f"thumbs/{n}.jpg", "sha256": f"{n:064x}", "size": 10, "parent_sha256": inp, "parent_path": None,
             "relationship": "thumbnail_of", "labels": {f"k{i}": "" for i in range(100)}} for n in range(2000)]
    good = {"children": kids, "records": [{"into": "labels", "node_sha256": inp, "child_path": None,
                                           "values": {"key": "k", "value": 0.25}}],
            "files": 2000, "bytes": 20000, "run": {"reason": "ok", "seconds": 1.5}, "host": "h"}
    raw = json.dumps(good).encode()
    key = remote_actions.prefix("thumbs-v1-" + secrets.token_hex(6)) + remote_actions.PARSED
    disk.put_transfer(key, raw, hashlib.sha256(raw).hexdigest())
    body = disk.open_transfer(key)
    try:
        assert remote_actions._read_parsed(body) == json.loads(raw)  # (off the engine, as a collect reads it)
    finally:
        body.close()
    # a record's hash of -2**63 (the phash of a blank image: parse._hash64) and integers beyond
    # 64 bits, which yajl cannot hold: read again by ijson's own parser, as json.loads reads them
    # (before, refused as "not JSON", every resume); an empty top key; keys ijson's prefixes
    # would confuse
    odd = {"children": [{"path": "a", "item": {"children": [1]}}], "records": [{"values": {"h": -(2 ** 63)}}],
           "": {"children": 1}, "children.item": 2 ** 64, "n": 123456789012345678901234567890,
           "f": [1.5e300, -0.0, 1e-5, "\u00e9\U0001f600"]}
    raw_odd = json.dumps(odd).encode()
    key_odd = remote_actions.prefix("thumbs-v1-" + secrets.token_hex(6)) + remote_actions.PARSED
    disk.put_transfer(key_odd, raw_odd, hashlib.sha256(raw_odd).hexdigest())
    assert remote_actions._read_parsed_from(disk, key_odd) == json.loads(raw_odd)
    held = 4 << 20  # (the good document takes ~40 MiB as reckoned)
    emoji = json.dumps({"children": [], "records": [], "f": ["\U0001f600" + "a" * 5000] * 900},
                       ensure_ascii=False).encode()  # (4.5 MB; each string 4 bytes a character in memory: 18 MB)
    for doc, said in ((raw, "more than this server takes in memory"),
                      (emoji, "more than this server takes in memory"),
                      (b'{"x": 0.' + b"1" * (8 << 20) + b"}", "a value (or a gap between two) longer than"),
                      (b'{"x": "' + "é".encode() * (4 << 20) + b'"}', "a value (or a gap between two) longer than"),
                      (b'{"x": "\xed\xa0\x80", "children": [' + b"1," * 1_000_000 + b"1]}", "not UTF-8"),
                      (b'{"children": [' + b",".join([b"1"] * 1_000_000) + b"]}", "child 1 is not a map"),
                      (b'{"children": [], "children": [' + b",".join([b"{}"] * 1_000_000) + b"]}", "twice"),
                      (b'{"run": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}", "nests deeper than"),
                      (b'{"children": [], "records": [] ' + b" " * 1000 + b"x}", "is not JSON"),
                      (b"[" + b",".join([b"{}"] * 1_000_000) + b"]", "is not {children, records}")):
        stream = io.BytesIO(doc)
        with pytest.raises(remote_actions._Bad) as e:
            remote_actions._read_parsed(stream, held_max=held)
        assert said in str(e.value) and "\n" not in str(e.value), (said, str(e.value))
        if said != "is not JSON":  # (the refusal shows before the end: the rest is not read)
            assert stream.tell() < len(doc) // 2, (said, stream.tell(), len(doc))


def test_a_job_run_again_after_its_run_was_collected_leaves_nothing_on_the_bucket(cluster, tmp_path: Path) -> None:
    """`--wait` on a --remote run no host serves yet says so (one line) and waits for one. The
    reaper re-queues a job whose host sent no heartbeat; if that host was only slow, the job runs
    twice. When the second run ends after the server collected (and deleted) the
    transfer, what it uploads is nobody's: the bucket must not keep it (the server closes the run
    in Redis before it deletes the transfer; the job looks before it stages and after it uploads)."""
    main, (host, _), (remote, _) = cluster["main"], cluster["hosts"], cluster["remotes"]
    cfg = config.load(main)
    few = tmp_path / "few.txt"
    few.write_text("\n".join(_images(cfg)[:2]) + "\n")
    _onto_the_bucket(main)
    conn = cluster["redis"]
    with _reachable_ssds([remote]), _server_worker(main, tmp_path):
        said = tmp_path / "wait.err"
        with said.open("w") as err:  # --wait before any host serves `remote`: it says so, then waits
            proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(main), "action", "run", "thumbnail",
                                     "--nodes", str(few), "--remote", "--wait"], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=err, stdin=subprocess.DEVNULL, text=True)
            deadline = time.monotonic() + 60
            while "no worker serves the remote queue" not in said.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, said.read_text()
                time.sleep(0.2)
            host.start_worker(remote)
            out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + said.read_text() + _logs(host) + _server_log(tmp_path)
        rid = out.split()[1].rstrip(":")  # "run RID: done"
        assert load_state(cfg, rid).status == "done"
        job = fetch_job(remote_actions.job_id(rid), conn)
        # the same job again, as the reaper queues it (hoardfs.jobs.queues.enqueue_once, same id and args)
        enqueue_once(conn, "remote", remote_actions.JOB_FUNCTION, *job.args, job_id=job.id, timeout=600,
                     description=job.description, key=None)  # (a host's job: it checks no signature)
        deadline = time.monotonic() + 180
        while fetch_job(job.id, conn).get_status(refresh=True) not in ("finished", "failed"):
            assert time.monotonic() < deadline, _logs(host)
            time.sleep(0.5)
    listed = cluster["s3"].list_objects_v2(Bucket=cluster["bucket"], Prefix=f"transfers/{rid}/").get("Contents", [])
    assert [o["Key"] for o in listed] == []
    assert fetch_job(job.id, conn).return_value().get("already_done") is True  # (nothing staged nor run again)
    assert not (config.load(remote).ssd.zone_path("3C") / rid).exists()


def _transfer(disk, key: str) -> None:
    body = key.encode()
    disk.put_transfer(key, body, hashlib.sha256(body).hexdigest())


#: where each status leaves a --remote run of thumbnail: its step, and how many of its steps are done
_AT = {"done": ("finish", 5), "cancelled": ("remote", 1), "failed": ("collect", 2), "waiting_remote": ("remote", 1)}


def _recorded(cfg: config.Settings, status: str = "cancelled", key: str | None = None) -> str:
    """A run of the built-in thumbnail as `hoard action run thumbnail --remote` records it
    (api.submit: its contract and inputs as work files, then its state; its id `run_id_of`
    them), at `status` where its steps leave that status. `key`: the id's key made up instead
    — a state written as the service that does not prove itself (load_state refuses it)."""
    c = load_contract(cfg, "thumbnail")
    params = typed_params(c, {}, cfg)
    inputs = sorted(hashlib.sha256(secrets.token_bytes(16)).hexdigest() for _ in range(2))
    rid = run_id_of(c.action_id, c.version, params, inputs) if key is None else f"{c.action_id}-v{c.version}-{key}"
    steps = steps_of(c, remote=True)
    step, done = _AT[status]
    write_work(cfg, rid, "contract", c.model_dump(mode="json"))
    write_work(cfg, rid, "inputs", inputs)
    save_state(cfg, RunState(run_id=rid, action=c.action_id, version=c.version, action_type=c.action_type,
                             action_num=1, params=params, steps=steps, inputs=len(inputs), status=status, step=step,
                             done=steps[:done]))
    return rid


def test_what_past_deletes_left_on_the_bucket_is_swept_and_nothing_a_run_still_needs(
        hoard_home: Path, seaweedfs, engine_env, tmp_path: Path) -> None:
    """A cancel while the engine did not answer, or a host cut off from Redis that uploaded
    after its run was collected from another host, leaves `transfers/<run>/` on the bucket, which
    `verify --orphans` does not look at. The next collect or cancel of a --remote run sweeps it
    (sweep_transfers): the prefix of every run done or cancelled on this server, once its newest
    object is older than the grace — never one of a run that failed or waits (a resume collects
    what is there), nor one this server does not know, nor one whose state does not prove itself
    (what it says, "cancelled" here, is not believed), nor a key no run names."""
    engine_env(seaweedfs)
    cfg = config.load(hoard_home / "hoard.toml")
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    runs = {}
    for status in ("done", "cancelled", "failed", "waiting_remote", "unknown", "refused"):
        if status == "unknown":
            rid = f"thumbnail-v1-{secrets.token_hex(6)}"
        elif status == "refused":
            rid = _recorded(cfg, "cancelled", key=secrets.token_hex(6))
            with pytest.raises(HoardError, match="do not hash to run"):
                load_state(cfg, rid)
        else:
            rid = _recorded(cfg, status)
            st = load_state(cfg, rid)  # (it proves itself)
            assert st is not None and st.status == status
        runs[status] = rid
        for name in ("a" * 64, "b" * 64, remote_actions.PARSED):
            _transfer(disk, remote_actions.prefix(rid) + name)
    _transfer(disk, "transfers/not-a-run/x")

    assert remote_actions.sweep_transfers(cfg, disk) == []  # all younger than the grace: a resume may want them
    assert remote_actions.sweep_transfers(cfg, disk, grace_s=0) == sorted([runs["done"], runs["cancelled"]])
    left = {key.split("/")[1] for key in disk.transfer_ages()}
    assert left == {runs["failed"], runs["waiting_remote"], runs["unknown"], runs["refused"], "not-a-run"}
    assert all(len(disk.transfer_keys(remote_actions.prefix(runs[s]))) == 3
               for s in ("failed", "waiting_remote", "refused"))


def test_a_host_removes_the_stages_of_runs_the_server_closed(hoard_home: Path, redis_conn) -> None:
    """A job a cancel stopped mid-run, or one the reaper moved to another host while this one
    was cut off, leaves its stage in this host's 3C. The host's next run_action job removes the
    stage of every run the server has closed (collected or cancelled) — not the job's own run's,
    not a run still open, not another output of the host."""
    from hoardfs.jobs import outputs

    cfg = config.load(hoard_home / "hoard.toml")
    ids = {what: f"thumbs-v1-{secrets.token_hex(6)}" for what in ("collected", "cancelled", "open", "current")}
    ids["a stage"] = "plain-stage"
    for what, oid in ids.items():
        outputs.submit(cfg, outputs.make_spec("stage", oid, "by_sha256", nodes=["c" * 64]))
        (cfg.ssd.zone_path("3C") / oid / "by_sha256").mkdir(parents=True)
        (cfg.ssd.zone_path("3C") / oid / "by_sha256" / "x.bin").write_bytes(b"staged")
        if what in ("collected", "cancelled", "current"):
            remote_actions._close(redis_conn, oid, what)
    redis_conn.set(remote_actions.closed_key("plain-stage"), "collected")  # (no run's id: never judged)

    removed = remote_actions.sweep_host_stages(cfg, redis_conn, ids["current"])
    assert removed == sorted([ids["collected"], ids["cancelled"]])
    for what, oid in ids.items():
        kept = what not in ("collected", "cancelled")
        assert (cfg.ssd.zone_path("3C") / oid).exists() == kept, what
        assert (outputs.load_state(cfg, oid) is not None) == kept, what


def test_a_delete_that_breaks_off_never_leaves_a_transfer_that_looks_uploaded(
        hoard_home: Path, seaweedfs, engine_env, tmp_path: Path) -> None:
    """parsed.json says a host's upload is whole: the host's job of a resumed run that finds it
    does nothing ("already done"), the server's poll that finds it collects. A delete of
    `transfers/<run>/` the engine breaks off part way (a sweep here; a cancel or a collect the
    same) must so never leave parsed.json without the children it names — a cancelled run,
    resumed, would be collected from the half-deleted transfer and refused ("child … is not in
    the bucket"): a failed run, and a second resume for nothing."""
    engine_env(seaweedfs)
    cfg = config.load(hoard_home / "hoard.toml")
    bucket = "hoard-" + secrets.token_hex(6)
    seaweedfs.client().create_bucket(Bucket=bucket)
    with FaultProxy(seaweedfs.endpoint) as proxy:
        disk = s3.S3Disk.initialise("s3a", proxy.endpoint, bucket, tmp_path / "staging", capacity_bytes=10 << 30)
        rid = _recorded(cfg)
        names = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)] + [remote_actions.PARSED]
        for name in names:
            _transfer(disk, remote_actions.prefix(rid) + name)
        before = proxy.requests
        disk.transfer_ages()
        disk.transfer_keys(remote_actions.prefix(rid))
        listings = proxy.requests - before  # (the sweep lists the transfers, then the run's keys)
        proxy.fail(1000, after=listings + 3)  # three deletes get through, then the engine stops answering
        assert remote_actions.sweep_transfers(cfg, disk, grace_s=0) == []
        proxy.fail(0)
        left = disk.transfer_keys(remote_actions.prefix(rid))
        assert 0 < len(left) < len(names), left  # (it did break off part way)
        assert disk.transfer_sha(remote_actions.prefix(rid) + remote_actions.PARSED) is None, left
        assert remote_actions.sweep_transfers(cfg, disk, grace_s=0) == [rid]  # the next sweep takes the rest
        assert disk.transfer_keys(remote_actions.prefix(rid)) == []


def test_a_sweep_takes_nothing_of_a_run_a_resume_is_recording(hoard_home: Path, seaweedfs, engine_env,
                                                             tmp_path: Path) -> None:
    """`hoard action resume` of a cancelled run records its new attempt under the run's submit
    lock, then its host's job uploads to `transfers/<run>/` — or, finding the old attempt's
    parsed.json still there, does nothing and the server collects that. A sweep that judged the
    run cancelled and deleted meanwhile would leave that collect a half-deleted transfer (the
    sweep's delete of a large run takes minutes). So a sweep judges and deletes under the same
    lock: while a resume holds it the run is not swept; once it is free, a cancelled run is."""
    engine_env(seaweedfs)
    cfg = config.load(hoard_home / "hoard.toml")
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    rid = _recorded(cfg)
    for name in ("a" * 64, remote_actions.PARSED):
        _transfer(disk, remote_actions.prefix(rid) + name)
    with flocked(state_dir(cfg) / f"{rid}.submit.lock"):  # (as api.resume holds it)
        assert remote_actions.sweep_transfers(cfg, disk, grace_s=0) == []
        assert len(disk.transfer_keys(remote_actions.prefix(rid))) == 2
    assert remote_actions.sweep_transfers(cfg, disk, grace_s=0) == [rid]
    assert disk.transfer_keys(remote_actions.prefix(rid)) == []
