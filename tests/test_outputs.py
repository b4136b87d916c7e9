"""`hoard export` / `hoard stage` (jobs/outputs.py) against real PostgreSQL, Redis and a store
filled by UA_1: planned and checked before a byte moves, reserved, copied, sealed; idempotent,
immutable ids, resumable after kill -9; bad requests, ids and state files refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.fsd.outputs import seal
from tests.terminal import as_foreground
from tests.test_ingest import ingest_all, ingest_home, ingest_sample

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def filled(hoard_home: Path, pg, redis_conn):
    """Two gallery batches ingested (real UA_1): ~60 physical nodes with metadata."""
    return ingest_sample(hoard_home, pg, redis_conn, Spec(seed=41, batches=2, items_per_batch=25, large_max_mb=1,
                                                          ready_signal=True, sources=("gallery",)))


def _hoard(cfg, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _selector(tmp: Path, doc: dict) -> str:
    path = tmp / f"sel-{hashlib.sha1(json.dumps(doc).encode()).hexdigest()[:8]}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _zones(cfg) -> dict:
    res = _hoard(cfg, "zones", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["zones"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_copies_seals_and_is_idempotent(filled, pg, tmp_path: Path) -> None:
    cfg, batches = filled
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    res = _hoard(cfg, "export", "ex1", "--layout", "by_batch", "--selector", sel, "--here", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    final = cfg.ssd.zone_path("3D") / "ex1"
    doc = seal.check_sealed(final, verify=True)
    assert doc["kind"] == "export" and doc["layout"]["name"] == "by_batch"
    nodes = pg.execute("SELECT encode(n.sha256, 'hex'), pp.locator FROM node n JOIN physical_path pp USING (node_id) "
                       "JOIN common_metadata cm USING (node_id) JOIN source s USING (source_id) "
                       "WHERE s.name = 'gallery'").fetchall()
    files = _tree(final / "by_batch")
    assert report["files"] == len(files) == doc["actual_files"] > 20
    for rel, sha in files.items():  # every file is a gallery node's bytes at its original place
        source, batch, orig = rel.split("/", 2)
        assert source == "gallery" and (sha, f"batch:{batch}/{orig}") in set(nodes), rel
    again = _hoard(cfg, "export", "ex1", "--layout", "by_batch", "--selector", sel, "--here")
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr
    other = _hoard(cfg, "export", "ex1", "--layout", "flat", "--selector", sel, "--here")
    assert other.returncode == 2 and "ids are immutable" in other.stderr, other.stderr
    zones = _zones(cfg)
    assert any(o["id"] == "ex1" and o["state"] == "sealed" for o in zones["3D"]["outputs"]), zones["3D"]
    assert zones["3D"]["reserved_bytes"] == 0


def test_stage_gives_the_worker_input_and_an_empty_output(filled, tmp_path: Path) -> None:
    cfg, batches = filled
    shas = [i.sha256 for i in batches[0].items[:5]]
    listing = tmp_path / "nodes.txt"
    listing.write_text("# five\n" + "\n".join(shas) + "\n")
    queued = _hoard(cfg, "stage", "ab-1", "--layout", "by_sha256", "--nodes", str(listing))
    assert queued.returncode == 0 and "queued on `io`" in queued.stdout, queued.stderr
    assert "no worker serves the io queue" in queued.stderr
    assert _hoard(cfg, "stage", "--status", "ab-1").stdout.startswith("stage ab-1: queued")
    worker = _hoard(cfg, "worker", "--burst", "--queues", "io")  # a real worker process takes it
    assert worker.returncode == 0, worker.stderr
    res = _hoard(cfg, "stage", "--status", "ab-1")
    assert res.returncode == 0 and "stage ab-1: done" in res.stdout, res.stdout + res.stderr
    # the report as labelled figures with the run's duration, not keys
    assert "  copied files: " in res.stdout and "  took: " in res.stdout and "  rate: " in res.stdout, res.stdout
    assert not any("_" in line.split(":")[0] for line in res.stdout.splitlines()[1:]), res.stdout
    root = cfg.ssd.zone_path("3C") / "ab-1" / "by_sha256"
    assert sorted(_tree(root / "input").values()) == sorted(set(shas))
    assert (root / "output").is_dir() and not list((root / "output").iterdir())
    seal.check_sealed(root.parent, verify=True)


DIE_BEFORE_RELEASE = """
import os, sys
from hoardfs.fsd.outputs import zones
zones.release = lambda cfg, zone, output_id: os._exit(9)  # killed after the seal, before the release
from hoardfs.cli.entry import main
sys.argv = ["hoard", *sys.argv[1:]]
main()
"""


def test_a_run_killed_between_its_seal_and_its_release_leaves_nothing_stale(filled, tmp_path: Path) -> None:
    """An export killed after it sealed its output and before it released its reservation
    (chaos seed 522: the re-run said "already done" and the stale reservation stayed, with
    `hoard health` advising `hoard zones clean ID` — which removes the sealed output). Health
    says the output is whole and what releases it; the re-run releases it; nothing is removed."""
    cfg, _ = filled
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    args = ["export", "ex9", "--layout", "by_batch", "--selector", sel, "--here"]
    died = subprocess.run([sys.executable, "-c", DIE_BEFORE_RELEASE, "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    final = cfg.ssd.zone_path("3D") / "ex9"
    seal.check_sealed(final, verify=True)
    report = json.loads(_hoard(cfg, "health", "--json").stdout)
    said = [p for p in report["problems"] if p.startswith("zone 3D:")]
    assert len(said) == 1 and "after sealing output ex9" in said[0] and "the output is whole" in said[0], said
    assert "zones clean" not in said[0]
    again = _hoard(cfg, *args)
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr
    assert _zones(cfg)["3D"]["reservations"] == []
    report = json.loads(_hoard(cfg, "health", "--json").stdout)
    assert not [p for p in report["problems"] if p.startswith("zone ")], report["problems"]
    seal.check_sealed(final, verify=True)


@pytest.mark.parametrize("args, code, message", [
    (["--layout", "by_batch", "--selector", "{EMPTY}"], 5, "the selection is empty"),
    (["--layout", "{nope}/x", "--selector", "{ALL}"], 2, "not a built-in"),
    (["--layout", "{BADTOML}", "--selector", "{ALL}"], 2, "unknown field {nope}"),
    (["--layout", "by_label", "--selector", "{ALL}"], 5, "has no label:class; layout by_label needs it"),
    (["--layout", "{COLLIDE}", "--selector", "{ALL}"], 5, "both map to"),
    (["--layout", "by_batch", "--selector", "{BADSEL}"], 2, "selector rejected"),
    (["--layout", "by_batch", "--selector", "{ALL}", "--mode", "view"], 2, "--mode view needs the mount"),
    (["--layout", "by_batch", "--selector", "{ALL}", "--mode", "sideways"], 2, "--mode 'sideways': copy or view"),
    (["--layout", "by_batch", "--selector", "{ALL}", "--dedup", "twice"], 2, "--dedup 'twice'"),
])
def test_bad_requests_are_refused_before_anything_is_written(filled, tmp_path: Path, args, code, message) -> None:
    cfg, _ = filled
    (tmp_path / "bad.toml").write_text('template = "{nope}/{sha256}"\n')
    (tmp_path / "collide.toml").write_text('template = "x{ext}"\n')
    fill = {"{EMPTY}": _selector(tmp_path, {"sources": ["nosuchsource"]}), "{ALL}": _selector(tmp_path, {}),
            "{BADTOML}": str(tmp_path / "bad.toml"), "{COLLIDE}": str(tmp_path / "collide.toml"),
            "{BADSEL}": _selector(tmp_path, {"colour": "red"})}
    res = _hoard(cfg, "export", "exbad", *[fill.get(a, a) for a in args], "--here")
    assert res.returncode == code, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    zone = cfg.ssd.zone_path("3D")
    assert not (zone / "exbad").exists() and not (zone / ".tmp" / "exbad").exists()
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0


def test_an_export_too_big_for_the_zone_is_refused_before_it_starts(filled, tmp_path: Path) -> None:
    cfg, _ = filled
    text = Path(cfg.source).read_text().replace("[ssd.zones.3D]\nquota_gb = 1", "[ssd.zones.3D]\nquota_gb = 0.0001")
    Path(cfg.source).write_text(text)
    res = _hoard(cfg, "export", "big", "--layout", "flat", "--selector", _selector(tmp_path, {}), "--here")
    assert res.returncode == 6, res.stderr
    assert "zone 3D" in res.stderr and "Traceback" not in res.stderr
    assert not (cfg.ssd.zone_path("3D") / ".tmp" / "big").exists() or not any(
        (cfg.ssd.zone_path("3D") / ".tmp" / "big").rglob("*.*"))


@pytest.mark.lab
@pytest.mark.expect_log(r"zone 3D: reclaimed the stale reservation of job export:ex2", level="WARNING")
def test_killed_export_resumes_without_recopying(lab_factory, hoard_home: Path, pg, redis_conn,
                                                 tmp_path: Path) -> None:
    """kill -9 in the middle of the copy (lab disks reading 0.5 MiB/s): nothing is presented
    as done (no 3D/<id>, the output listed incomplete), and the same command finishes it,
    keeping the files the first run had written."""
    lab, cfg, sel = _slow_lab_export(lab_factory, hoard_home, pg, redis_conn, tmp_path)
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "export", "ex2", "--layout", "by_sha256",
           "--selector", sel, "--here"]
    proc = subprocess.Popen(lab.wrap(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    tmp = cfg.ssd.zone_path("3D") / ".tmp" / "ex2"
    _until_a_file_in(tmp)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len([p for p in tmp.rglob("*") if p.is_file()])
    assert written >= 1
    assert not (cfg.ssd.zone_path("3D") / "ex2").exists()
    zones = _zones(cfg)["3D"]
    assert [o for o in zones["outputs"] if o["id"] == "ex2" and o["state"] == "incomplete"], zones["outputs"]
    status = _hoard(cfg, "export", "--status", "ex2")  # not "running" for ever: nothing runs it
    assert status.returncode == 5 and "ex2: interrupted" in status.stdout, status.stdout + status.stderr
    health = json.loads(_hoard(cfg, "health", "--json").stdout)["problems"]
    assert any(p.startswith("export ex2: interrupted") for p in health), health
    res = _hoard(cfg, "export", "ex2", "--layout", "by_sha256", "--selector", sel, "--here", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["kept_files"] >= written - 1 and report["copied_files"] >= 1, report
    seal.check_sealed(cfg.ssd.zone_path("3D") / "ex2", verify=True)
    st = _hoard(cfg, "export", "--status", "ex2")
    assert st.returncode == 0 and "ex2: done" in st.stdout



@pytest.mark.lab
def test_ctrl_c_mid_export_exits_130_and_the_same_command_finishes(lab_factory, hoard_home: Path, pg, redis_conn,
                                                                   tmp_path: Path) -> None:
    """Ctrl-C in the middle of the copy (the SSD's helper thread syncing beside the slow
    reads): exit 130 within seconds without a traceback, nothing sealed, the output listed
    incomplete, and the same command finishes it keeping what was written."""
    lab, cfg, sel = _slow_lab_export(lab_factory, hoard_home, pg, redis_conn, tmp_path)
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "export", "ex4", "--layout", "by_sha256",
           "--selector", sel, "--here"]
    proc = subprocess.Popen(lab.wrap(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_foreground)
    tmp = cfg.ssd.zone_path("3D") / ".tmp" / "ex4"
    _until_a_file_in(tmp)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _out, errs = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130 and "Traceback" not in errs, errs
    written = len([p for p in tmp.rglob("*") if p.is_file()])
    assert written >= 1 and not (cfg.ssd.zone_path("3D") / "ex4").exists()
    assert [o for o in _zones(cfg)["3D"]["outputs"] if o["id"] == "ex4" and o["state"] == "incomplete"]
    res = _hoard(cfg, "export", "ex4", "--layout", "by_sha256", "--selector", sel, "--here", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["kept_files"] >= written - 1, report
    seal.check_sealed(cfg.ssd.zone_path("3D") / "ex4", verify=True)


@pytest.mark.lab
def test_zone_directory_deleted_mid_export(lab_factory, hoard_home: Path, pg, redis_conn, tmp_path: Path) -> None:
    """Someone removes 3D by hand while an export copies into it: the export fails naming the
    path and what to do, nothing is sealed, and after `hoard init` the same command completes."""
    import shutil

    lab, cfg, sel = _slow_lab_export(lab_factory, hoard_home, pg, redis_conn, tmp_path)
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "export", "ex3", "--layout", "flat",
           "--selector", sel, "--here"]
    proc = subprocess.Popen(lab.wrap(cmd), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _until_a_file_in(cfg.ssd.zone_path("3D") / ".tmp" / "ex3")
    gone = cfg.ssd.zone_path("3D").with_name("3D.removed")  # `rm -rf 3D`, without racing the writer
    cfg.ssd.zone_path("3D").rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    _out, errs = proc.communicate(timeout=120)
    assert proc.returncode in (3, 5), errs
    assert "Traceback" not in errs and "3D" in errs and "run the same command again" in errs, errs
    assert _hoard(cfg, "init").returncode == 0
    res = _hoard(cfg, "export", "ex3", "--layout", "flat", "--selector", sel, "--here", timeout=300)
    assert res.returncode == 0, res.stderr
    seal.check_sealed(cfg.ssd.zone_path("3D") / "ex3", verify=True)


@pytest.mark.lab
def test_a_killed_export_left_a_zombie_is_not_alive(lab_factory, hoard_home: Path, pg, redis_conn,
                                                    tmp_path: Path) -> None:
    """kill -9 of an export whose parent does not reap it (State: Z): the zombie holds
    nothing, so `zones clean` and the re-run are not refused as if it still ran."""
    lab, cfg, sel = _slow_lab_export(lab_factory, hoard_home, pg, redis_conn, tmp_path)
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "export", "ex5", "--layout", "by_sha256",
           "--selector", sel, "--here"]
    proc = subprocess.Popen(lab.wrap(cmd), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until_a_file_in(cfg.ssd.zone_path("3D") / ".tmp" / "ex5")
        os.kill(proc.pid, signal.SIGKILL)  # and not reaped: a zombie until proc.wait() below
        deadline = time.monotonic() + 10
        while "State:\tZ" not in Path(f"/proc/{proc.pid}/status").read_text():
            assert time.monotonic() < deadline, "the killed export did not become a zombie"
            time.sleep(0.05)
        cleaned = _hoard(cfg, "zones", "clean", "ex5")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        res = _hoard(cfg, "export", "ex5", "--layout", "by_sha256", "--selector", sel, "--here", timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "State:\tZ" in Path(f"/proc/{proc.pid}/status").read_text()  # still not reaped
    finally:
        proc.wait()
    seal.check_sealed(cfg.ssd.zone_path("3D") / "ex5", verify=True)


def _until_a_file_in(folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not [p for p in folder.rglob("*") if p.is_file()]:
        time.sleep(0.01)


def _slow_lab_export(lab_factory, hoard_home: Path, pg, redis_conn, tmp_path: Path):
    """A store on two lab disks that read 0.5 MiB/s, one ingested batch, caches dropped: an
    export of it takes seconds, time to interfere. (lab, settings, selector path)"""
    from tests.lab import DiskProfile, drop_caches

    lab = lab_factory([DiskProfile(f"k{i}", 200, 0.5, 50, 200) for i in (1, 2)])
    toml = hoard_home / "hoard.toml"
    text = toml.read_text().replace("shard_size_mb = 4\nallow_directory_disks = true", "shard_size_mb = 1")
    head, _, tail = text.partition("[[disks]]")
    tail = tail[tail.index("[ssd]"):]
    disks = "".join(f'[[disks]]\nlabel = "{lbl}"\npath = "{d.mountpoint}"\n\n' for lbl, d in lab.disks.items())
    toml.write_text(head + disks + tail)
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, Spec(seed=42, batches=1, items_per_batch=40, large_max_mb=1, ready_signal=True,
                                    sources=("gallery",)))
    assert ingest_all(cfg, redis_conn, [zone3a / batches[0].batch_id])[0].status == "done"
    drop_caches()
    return lab, cfg, _selector(tmp_path, {})


@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_view_mode_publishes_without_copying_and_reads_through_the_mount(filled, tmp_path: Path) -> None:
    """--mode view: no file copied, the zone holds a sealed output whose entry links into the
    mount; read through that path the bytes are the copy mode's; `hoard zones clean` removes
    the output and its view."""
    from tests.test_mount import mounted

    cfg, _ = filled
    mnt = tmp_path / "mnt"
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{mnt}"\n')
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    copy = _hoard(cfg, "export", "c1", "--layout", "by_batch", "--selector", sel, "--here")
    assert copy.returncode == 0, copy.stderr
    t0 = time.monotonic()
    view = _hoard(cfg, "export", "v1", "--layout", "by_batch", "--selector", sel, "--mode", "view", "--here")
    assert view.returncode == 0, view.stderr
    assert "published as view 3D-v1" in view.stdout, view.stdout
    out = cfg.ssd.zone_path("3D") / "v1"
    doc = seal.check_sealed(out, verify=True)
    assert doc["actual_bytes"] == 0 and os.readlink(out / "by_batch") == str(mnt / "views" / "3D-v1" / "by_batch")
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0
    with mounted(str(cfg.source), mnt):
        assert _tree(out / "by_batch") == _tree(cfg.ssd.zone_path("3D") / "c1" / "by_batch")
    again = _hoard(cfg, "export", "v1", "--layout", "by_batch", "--selector", sel, "--mode", "view", "--here")
    assert again.returncode == 0 and "already done" in again.stdout
    cleaned = _hoard(cfg, "zones", "clean", "v1")
    assert cleaned.returncode == 0 and "view 3D-v1 removed" in cleaned.stdout, cleaned.stderr
    assert "3D-v1" not in _hoard(cfg, "view", "list").stdout
    reuse = _hoard(cfg, "export", "v1", "--layout", "flat", "--selector", sel, "--here")  # the id is free again
    assert reuse.returncode == 0, reuse.stderr
    assert time.monotonic() - t0 < 120


def test_an_id_is_never_taken_over_by_another_request(filled, tmp_path: Path) -> None:
    """A queued id refuses a different request (of either kind) until `hoard zones clean`
    forgets it; the worker then makes what was asked first."""
    cfg, batches = filled
    first = _selector(tmp_path, {"batches": [batches[0].batch_id]})
    second = _selector(tmp_path, {"batches": [batches[1].batch_id]})
    assert _hoard(cfg, "export", "q1", "--layout", "by_sha256", "--selector", first).returncode == 0
    other = _hoard(cfg, "export", "q1", "--layout", "by_sha256", "--selector", second)
    assert other.returncode == 2 and "taken by another request (export, queued" in other.stderr, other.stderr
    listing = tmp_path / "one.txt"
    listing.write_text(batches[1].items[0].sha256 + "\n")
    stage = _hoard(cfg, "stage", "q1", "--layout", "by_sha256", "--nodes", str(listing))
    assert stage.returncode == 2 and "taken by another request" in stage.stderr, stage.stderr
    assert _hoard(cfg, "worker", "--burst", "--queues", "io").returncode == 0
    made = set(_tree(cfg.ssd.zone_path("3D") / "q1" / "by_sha256").values())
    first_only = {i.sha256 for i in batches[0].items} - {i.sha256 for i in batches[1].items}
    second_only = {i.sha256 for i in batches[1].items} - {i.sha256 for i in batches[0].items}
    assert made & first_only and not made & second_only, "the output holds another request's selection"
    cleaned = _hoard(cfg, "zones", "clean", "q1")
    assert cleaned.returncode == 0 and "the id is free again" in cleaned.stdout, cleaned.stderr
    assert _hoard(cfg, "export", "q1", "--layout", "by_sha256", "--selector", second, "--here").returncode == 0


def test_done_is_read_from_the_seal(filled, tmp_path: Path) -> None:
    """An output whose `_SEALED` went (a crash in the middle of `zones clean`, or between
    the rename and the seal) is not "done": --status says gone, and the same command seals it
    again from the files it finds, copying nothing."""
    cfg, _ = filled
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    assert _hoard(cfg, "export", "f1", "--layout", "by_batch", "--selector", sel, "--here").returncode == 0
    final = cfg.ssd.zone_path("3D") / "f1"
    before = _tree(final / "by_batch")
    (final / "_SEALED").unlink()
    (final / "_JOB.json").unlink()
    status = _hoard(cfg, "export", "--status", "f1")
    assert status.returncode == 5 and "f1: gone" in status.stdout, status.stdout
    again = _hoard(cfg, "export", "f1", "--layout", "by_batch", "--selector", sel, "--here", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert report["copied_files"] == 0 and report["kept_files"] == len(before), report
    seal.check_sealed(final, verify=True)
    assert _tree(final / "by_batch") == before


def test_a_resumed_run_drops_what_its_plan_no_longer_names(filled, tmp_path: Path) -> None:
    """Files an earlier attempt left in `.tmp/<id>/` that the plan does not name (the
    selection shrank meanwhile) are removed, not a reason to refuse the seal for ever."""
    cfg, _ = filled
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    stray = cfg.ssd.zone_path("3D") / ".tmp" / "s1" / "by_sha256" / "ab" / "gone.bin"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a node the selection lost")
    res = _hoard(cfg, "export", "s1", "--layout", "by_sha256", "--selector", sel, "--here")
    assert res.returncode == 0, res.stderr
    final = cfg.ssd.zone_path("3D") / "s1"
    seal.check_sealed(final, verify=True)
    assert not (final / "by_sha256" / "ab" / "gone.bin").exists()


def test_deleted_nodes_and_objects_are_refused_before_a_byte_moves(filled, tmp_path: Path) -> None:
    """--nodes leaves out nothing silently: a deleted (hidden) node is named; a selection whose
    objects left the store is refused before reserving, not half-way through the copy."""
    cfg, batches = filled
    media = [i.sha256 for i in batches[0].items if i.kind != "sidecar"]
    hide = _hoard(cfg, "delete", "--node", media[0])
    assert hide.returncode == 0, hide.stderr
    listing = tmp_path / "nodes.txt"
    listing.write_text("\n".join(media[:3]) + "\n")
    res = _hoard(cfg, "stage", "h1", "--layout", "by_sha256", "--nodes", str(listing), "--here")
    assert res.returncode == 5 and "deleted or black-listed, e.g. " + media[0] in res.stderr, res.stderr
    drop = _hoard(cfg, "delete", "--batch", batches[1].batch_id, "--yes")
    assert drop.returncode == 0, drop.stderr
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    only_dropped = {i.sha256 for i in batches[1].items} - {i.sha256 for i in batches[0].items}
    listing.write_text("\n".join(sorted(only_dropped)[:2]) + "\n")
    res = _hoard(cfg, "stage", "h2", "--layout", "by_sha256", "--nodes", str(listing), "--here")
    assert res.returncode == 5 and "Traceback" not in res.stderr, res.stderr
    assert not (cfg.ssd.zone_path("3C") / ".tmp" / "h2").exists() and _zones(cfg)["3C"]["reserved_bytes"] == 0


def test_state_files_and_ids_from_outside(filled, tmp_path: Path) -> None:
    """--status of a path is refused as an id; a damaged state file is named in one line,
    and `hoard zones clean` forgets it."""
    cfg, _ = filled
    bad = _hoard(cfg, "export", "--status", "../ingest/x")
    assert bad.returncode == 2 and "is not an output id" in bad.stderr and "Traceback" not in bad.stderr
    state = cfg.ssd.root / "state" / "outputs"
    state.mkdir(parents=True, exist_ok=True)
    (state / "d1.json").write_text("{not json")
    res = _hoard(cfg, "export", "--status", "d1")
    assert res.returncode == 5 and "is damaged" in res.stderr and "Traceback" not in res.stderr, res.stderr
    cleaned = _hoard(cfg, "zones", "clean", "d1")
    assert cleaned.returncode == 0 and "free again" in cleaned.stdout, cleaned.stdout + cleaned.stderr


def test_output_views_belong_to_their_outputs(filled, tmp_path: Path) -> None:
    """`hoard view add/rm` refuse the 3B-/3C-/3D- names of view-mode outputs, and a view-mode
    export refused by its zone publishes no view."""
    cfg, _ = filled
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{tmp_path / "mnt"}"\n')
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{'0' * 64}  x.bin\n")
    for args in (["view", "add", "3D-mine", str(manifest)], ["view", "rm", "3C-theirs"]):
        res = _hoard(cfg, *args)
        assert res.returncode == 2 and "belong to view-mode outputs" in res.stderr, res.stderr
    filler = cfg.ssd.zone_path("3D") / "someone-elses"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, int(0.97 * (1 << 30)))
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    res = _hoard(cfg, "export", "vz", "--layout", "flat", "--selector", sel, "--mode", "view", "--here")
    assert res.returncode == 6, res.stderr
    assert "3D-vz" not in _hoard(cfg, "view", "list").stdout


def test_the_zone_is_charged_what_the_files_occupy(filled, pg, tmp_path: Path) -> None:
    """A stage reserves what its files will occupy on the SSD (blocks), not their bytes: ten
    small files that fit by size but not by blocks are refused before a byte moves."""
    cfg, _ = filled
    small = pg.execute("SELECT encode(n.sha256, 'hex'), pc.size FROM node n JOIN physical_content pc USING (node_id) "
                       "WHERE pc.size BETWEEN 1 AND 1500 ORDER BY pc.size, n.sha256 LIMIT 10").fetchall()
    assert len(small) == 10, small
    listing = tmp_path / "small.txt"
    listing.write_text("\n".join(sha for sha, _ in small) + "\n")
    quota = 34_000  # deny at 90 %: 30,600 bytes, the zone's own directory takes 4 KiB of it
    assert sum(size for _, size in small) < 0.9 * quota - 8192 < 10 * 4096
    text = Path(cfg.source).read_text().replace("[ssd.zones.3C]\nquota_gb = 1", f"[ssd.zones.3C]\nquota_gb = {quota / 1e9}")
    Path(cfg.source).write_text(text)
    res = _hoard(cfg, "stage", "tiny", "--layout", "by_sha256", "--nodes", str(listing), "--here")
    assert res.returncode == 6 and "zone 3C" in res.stderr, res.stdout + res.stderr
    assert not (cfg.ssd.zone_path("3C") / ".tmp" / "tiny").exists()


def test_view_mode_sidecars_are_freed_once_no_view_names_them(filled, tmp_path: Path) -> None:
    """A view-mode export stores each sidecar as a generated object only its view names:
    while any view names it gc keeps it (two exports share identical sidecars), once the last
    is cleaned gc frees it — and the nodes' own objects, which the batches name, stay."""
    from hoardfs.fsd.outputs.manifest import iter_files
    from hoardfs.fsd.store import Store

    cfg, _ = filled
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{tmp_path / "mnt"}"\n')
    layout = tmp_path / "withmeta.toml"
    layout.write_text('template = "{sha256}{ext}"\nsidecars = true\n')
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    for out in ("vs1", "vs2"):
        res = _hoard(cfg, "export", out, "--layout", str(layout), "--selector", sel, "--mode", "view", "--here")
        assert res.returncode == 0, res.stderr

    def objects() -> tuple[set[bytes], set[bytes]]:
        with Store.open(cfg, writable=False) as store:
            files = list(iter_files(store.get, store.index.get_view("3D-vs1")["manifest"]))
            return ({sha for p, sha, _ in files if p.endswith(".json")}, {sha for p, sha, _ in files if not p.endswith(".json")})

    def present(shas: set[bytes]) -> set[bytes]:
        with Store.open(cfg, writable=False) as store:
            return {s for s in shas if store.index.lookup(s) is not None}

    cars, media = objects()
    assert len(cars) == len(media) > 20
    assert _hoard(cfg, "zones", "clean", "vs1").returncode == 0
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    assert present(cars) == cars  # vs2 still names them
    assert _hoard(cfg, "zones", "clean", "vs2").returncode == 0
    res = _hoard(cfg, "gc", "--threshold", "1.0")
    assert res.returncode == 0, res.stderr
    assert present(cars) == set(), "sidecars no view names were kept for ever"
    assert present(media) == media
    check = _hoard(cfg, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_batch_deleted_under_a_view_mode_export_is_freed_once_the_export_is_cleaned(filled, tmp_path: Path) -> None:
    """A batch deleted while a view-mode export names its files: the files stay while the
    export serves them; `zones clean` of the export and gc free what only that batch and the
    export named, and every object still referenced reads back."""
    from hoardfs.fsd.store import Store

    cfg, batches = filled
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{tmp_path / "mnt"}"\n')
    sel = _selector(tmp_path, {"batches": [batches[1].batch_id]})
    res = _hoard(cfg, "export", "vd", "--layout", "by_sha256", "--selector", sel, "--mode", "view", "--here")
    assert res.returncode == 0, res.stderr
    kept = {i.sha256 for i in batches[0].items}
    only_dropped = {i.sha256 for i in batches[1].items} - kept
    assert len(only_dropped) > 10

    def present(shas: set[str]) -> set[str]:
        with Store.open(cfg, writable=False) as store:
            return {s for s in shas if store.index.lookup(bytes.fromhex(s)) is not None}

    drop = _hoard(cfg, "delete", "--batch", batches[1].batch_id, "--yes")
    assert drop.returncode == 0, drop.stderr
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    assert present(only_dropped) == only_dropped  # the export still serves them
    assert _hoard(cfg, "zones", "clean", "vd").returncode == 0
    for _ in range(2):
        res = _hoard(cfg, "gc", "--threshold", "1.0")
        assert res.returncode == 0, res.stderr
    assert present(only_dropped) == set(), "files only a deleted batch and a cleaned export named were never freed"
    with Store.open(cfg, writable=False) as store:
        for sha in kept:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
    check = _hoard(cfg, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_sealed_view_mode_export_keeps_a_file_hidden_after_it_was_sealed(filled, tmp_path: Path) -> None:
    """`hoard delete --node` of a file a sealed view-mode export serves: the export keeps
    serving it (its sealed selection does not change), while the batch's directory, by-hash/
    and a hand-made view stop showing it."""
    from tests.test_mount import mounted

    cfg, batches = filled
    mnt = tmp_path / "mnt"
    with open(cfg.source, "a") as f:
        f.write(f'\n[mount]\npath = "{mnt}"\n')
    sel = _selector(tmp_path, {"batches": [batches[0].batch_id]})
    res = _hoard(cfg, "export", "vh", "--layout", "by_sha256", "--selector", sel, "--mode", "view", "--here")
    assert res.returncode == 0, res.stderr
    out = cfg.ssd.zone_path("3D") / "vh" / "by_sha256"
    victim = next(i.sha256 for i in batches[0].items if i.kind != "sidecar")
    mine = tmp_path / "mine.txt"
    mine.write_text(f"{victim}  one/file.bin\n")
    assert _hoard(cfg, "view", "add", "mine", str(mine)).returncode == 0
    with mounted(str(cfg.source), mnt):
        before = _tree(out)
        assert victim in before.values()
        hide = _hoard(cfg, "delete", "--node", victim)
        assert hide.returncode == 0, hide.stderr
        deadline = time.monotonic() + 30
        while (mnt / "views" / "mine" / "one" / "file.bin").exists():  # the mount took the hide in
            assert time.monotonic() < deadline, "the mount never hid the node"
            time.sleep(0.2)
        assert not list((mnt / "by-hash" / victim[:2] / victim[2:4]).glob(victim + "*"))
        assert _tree(out) == before, "the sealed export lost a file"
    status = _hoard(cfg, "export", "--status", "vh")
    assert status.returncode == 0 and "done" in status.stdout, status.stdout + status.stderr


def _refusal_setup(cfg, tmp_path: Path, case: str) -> list[str]:
    """The arguments (after the id) of a request refused before it starts, and what makes it so."""
    if case == "zone full":
        text = Path(cfg.source).read_text().replace("[ssd.zones.3D]\nquota_gb = 1", "[ssd.zones.3D]\nquota_gb = 0.0001")
        Path(cfg.source).write_text(text)
    if case == "database down":
        lines = Path(cfg.source).read_text().splitlines()
        Path(cfg.source).write_text("\n".join(
            f"database_url = {json.dumps(f'postgresql://nobody@/nodb?host={tmp_path}/nopg')}"
            if ln.startswith("database_url = ") else ln for ln in lines) + "\n")
    if case == "schema not migrated":  # a database without hoardfs's tables (an old dump restored, say)
        lines = Path(cfg.source).read_text().splitlines()
        url = json.loads(next(ln for ln in lines if ln.startswith("database_url = ")).split(" = ", 1)[1])
        bare = re.sub(r"search_path=[^ ']*", "search_path=information_schema", url)
        Path(cfg.source).write_text("\n".join(
            f"database_url = {json.dumps(bare)}"
            if ln.startswith("database_url = ") else ln for ln in lines) + "\n")
    sel = {"empty selection": {"sources": ["nosuchsource"]}}.get(case, {})
    return ["--layout", "by_label" if case == "missing label" else "by_batch", "--selector", _selector(tmp_path, sel),
            *(["--mode", "view"] if case == "view without mount" else [])]


REFUSALS = pytest.mark.parametrize("case, code, message", [
    ("missing label", 5, "layout by_label needs it"),
    ("view without mount", 2, "--mode view needs the mount"),
    ("empty selection", 5, "the selection is empty"),
    ("zone full", 6, "zone 3D"),
    ("database down", 3, "cannot reach the database"),
    ("schema not migrated", 3, "`hoard db migrate`"),
])


@REFUSALS
def test_a_refused_request_keeps_no_id_reservation_or_problem(filled, tmp_path: Path, case, code, message) -> None:
    """A stage/export refused before it copies (--here) is not a failed output: no state,
    no reservation, no health line, one line with the README's code, and the id takes another
    request."""
    from hoardfs.jobs import outputs

    cfg, _ = filled
    saved = Path(cfg.source).read_text()
    args = _refusal_setup(cfg, tmp_path, case)
    res = _hoard(cfg, "export", "refusedx", *args, "--here")
    assert res.returncode == code, res.stdout + res.stderr
    assert message in res.stderr, res.stderr
    for bad in ("Traceback", "OperationalError", "resumes it", "zones clean refusedx"):
        assert bad not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    Path(cfg.source).write_text(saved)
    assert not (outputs.state_dir(cfg) / "refusedx.json").exists()
    assert outputs.problems(cfg) == []
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0
    assert not (cfg.ssd.zone_path("3D") / ".tmp" / "refusedx").exists()
    health = _hoard(cfg, "health")
    assert "refusedx" not in health.stdout + health.stderr
    # the id is free for another request, without `hoard zones clean`
    res = _hoard(cfg, "export", "refusedx", "--layout", "flat", "--selector", _selector(tmp_path, {}), "--here")
    assert res.returncode == 0, res.stderr


@REFUSALS
def test_a_workers_refusal_says_why_and_holds_nothing(filled, redis_conn, tmp_path: Path, case, code,
                                                     message) -> None:
    """Refused in the worker (the GUI's launches): `--status` says `refused` and why with
    the README's code, no health problem, nothing to retry (`hoardfs.jobs.launch.retry` queued it
    again), the id takes another request."""
    from hoardfs.jobs import launch, outputs

    cfg, _ = filled
    saved = Path(cfg.source).read_text()
    args = _refusal_setup(cfg, tmp_path, case)
    from hoardfs.base import config as config_mod

    spec = outputs.make_spec("export", "refusedw", args[1], json.loads(Path(args[3]).read_text()),
                             mode="view" if "view" in args else "copy")
    outputs.submit(cfg, spec)
    with pytest.raises(outputs.HoardError) as e:
        outputs.run_job(str(cfg.source), "refusedw")  # what `hoard worker` runs
    assert e.value.exit_code == code and message in e.value.message
    Path(cfg.source).write_text(saved)
    cfg = config_mod.load(cfg.source)
    st = _hoard(cfg, "export", "--status", "refusedw")
    assert st.returncode == code, st.stdout + st.stderr
    assert "refusedw: refused" in st.stdout and message in st.stdout, st.stdout
    assert "OperationalError" not in st.stdout and "resumes it" not in st.stdout
    assert outputs.problems(cfg) == []
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0
    with pytest.raises(launch.LaunchError, match="refused before it started"):
        launch.retry(cfg, "export", "refusedw", conn=redis_conn)
    assert redis_conn.llen("rq:queue:io") == 0  # the old code queued it again
    res = _hoard(cfg, "export", "refusedw", "--layout", "flat", "--selector", _selector(tmp_path, {}), "--here")
    assert res.returncode == 0, res.stderr


def test_ctrl_c_while_an_export_is_planned_keeps_nothing(filled, servers, pg, tmp_path: Path) -> None:
    """Ctrl-C of `hoard export --here` while it plans (its query waits on a lock here): exit
    130 saying nothing was written, and no state, id, reservation or health problem — before,
    it was recorded as failed ("KeyboardInterrupt: "), a health problem until `zones clean`,
    and the message said "its files so far are kept" of files never written."""
    import psycopg

    from hoardfs.jobs import outputs

    cfg, _ = filled
    sel = _selector(tmp_path, {})
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    with psycopg.connect(servers["database_url"], options=f"-c search_path={schema}") as locker:
        locker.execute("LOCK TABLE node IN ACCESS EXCLUSIVE MODE")  # the plan's first query waits for it
        proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "export", "cc1", "--layout",
                                 "by_sha256", "--selector", sel, "--here"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%FROM node%%'"
        while not pg.execute(waiting).fetchone()[0]:  # (autocommit: each look is a fresh snapshot)
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in errs, errs
    assert "nothing was written" in errs and "files so far are kept" not in errs, errs
    assert not (outputs.state_dir(cfg) / "cc1.json").exists()
    assert outputs.problems(cfg) == []
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0
    assert "cc1" not in _hoard(cfg, "health").stdout
    res = _hoard(cfg, "export", "cc1", "--layout", "flat", "--selector", sel, "--here")  # the id is free
    assert res.returncode == 0, res.stderr


def test_a_stage_whose_database_goes_before_its_context_is_planned_says_so(hoard_home: Path, tmp_path: Path) -> None:
    """A stage's parents/children (an action's include_parents/_children) are read from the
    database after its inputs: the database gone in between is the planning refusal's one line
    (exit 3, "run the same command again"), not psycopg's OperationalError out of the run."""
    from hoardfs.base import config
    from hoardfs.jobs import outputs

    cfg = config.load(hoard_home / "hoard.toml")
    cfg = cfg.model_copy(update={"database_url": f"postgresql://nobody@/nodb?host={tmp_path}/nopg"})
    spec = outputs.OutputSpec.model_validate({
        "kind": "stage", "id": "ctx1", "nodes": ["ab" * 32], "context": {"parents": ["cd" * 32]},
        "layout": {"name": "flat", "template": "{sha256}{ext}", "sidecars": False, "per_locator": False}})
    with pytest.raises(outputs.OutputError) as e:
        outputs._context_items(cfg, spec, spec.the_layout(), "parents", ["cd" * 32])
    assert e.value.exit_code == 3 and "run the same command again" in e.value.message
