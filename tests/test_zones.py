"""Zone accounting and the output contract on real files: reservations count against the quota,
are refused at deny and emergency, survive kill -9 and are reclaimed as stale; two processes
never both get the last room; an output is complete only once `_SEALED` is there."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.base.proc import booted_ns, pid_alive, process_space
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.outputs import seal, zones
from tests.helpers import missing

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
QUOTA_GB = 0.01  # 10.24 MiB: deny at 9.2 MiB, emergency at 9.7 MiB


def zone_config(root: Path, keep_failed: bool = False) -> config.Settings:
    """A hoard.toml with four 10 MiB zones (no servers: zone accounting needs none)."""
    lines = ['database_url = "postgresql:///unused_test"', 'redis_url = "redis://localhost:1/0"', "",
             "[store]", "allow_directory_disks = true"]
    for i in (1, 2):
        lines += ["", "[[disks]]", f'label = "d{i}"', f'path = "{root / f"d{i}"}"']
        (root / f"d{i}").mkdir(parents=True, exist_ok=True)
    lines += ["", "[ssd]", f'root = "{root / "ssd"}"', f"keep_failed_outputs = {str(keep_failed).lower()}"]
    for z in ("3A", "3B", "3C", "3D"):
        lines += [f"[ssd.zones.{z}]", f"quota_gb = {QUOTA_GB}"]
        (root / "ssd" / z).mkdir(parents=True, exist_ok=True)
    (root / "hoard.toml").write_text("\n".join(lines) + "\n")
    return config.load(root / "hoard.toml")


def fill(path: Path, nbytes: int) -> None:
    """Allocated bytes (not sparse: quotas count real blocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(nbytes))
        f.flush()
        os.fsync(f.fileno())


def to_ratio(cfg: config.Settings, zone: str, ratio: float) -> None:
    """Add a loose file so that the zone's usage (on disk + reserved) is about `ratio`."""
    u = zones.zone_usage(cfg, zone)
    want = int(ratio * u["quota_bytes"]) - u["used_bytes"] - u["reserved_bytes"]
    fill(Path(u["path"]) / f"filler-{time.monotonic_ns()}.bin", want - want % 4096)


def sealed_output(cfg: config.Settings, zone: str, output_id: str, nbytes: int) -> Path:
    with seal.output(cfg, zone, output_id, job=f"test:{output_id}", kind="test", expected_bytes=nbytes + 65536) as o:
        o.write("data.bin", os.urandom(nbytes))
    return o.final


def child(cfg: config.Settings, body: str, **env: str) -> subprocess.Popen:
    """A real process running `body` with `cfg` loaded (PYTHONPATH as this test's)."""
    code = "from hoardfs.base import config\nfrom hoardfs.fsd.outputs import zones, seal\nimport os, sys, time\n" \
           f"cfg = config.load({str(cfg.source)!r})\n" + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=os.environ | env)


def wait_line(proc: subprocess.Popen, want: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    while want not in line:
        assert time.monotonic() < deadline and proc.poll() is None, f"child died: {proc.stderr.read()}"
        line = proc.stdout.readline()
    return line


def hoard(cfg: config.Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, env=os.environ | {"COLUMNS": "200"})


def test_reserve_and_release(tmp_path: Path) -> None:
    """A reservation is a durable file naming job, pid, host and time; its unwritten part counts
    as reserved, what its output holds already counts as used; release gives it back."""
    cfg = zone_config(tmp_path)
    r = zones.reserve(cfg, "3C", "job-1", "stage:1", 4 * MiB)
    doc = json.loads((cfg.ssd.root / "state" / "reservations" / "3C" / "job-1.json").read_bytes())
    assert doc["job"] == "stage:1" and doc["bytes"] == 4 * MiB and doc["pid"] == os.getpid()
    assert doc["host"] == socket.gethostname() and doc["created"] and doc["pid_start"]
    u = zones.zone_usage(cfg, "3C")
    assert u["reserved_bytes"] == 4 * MiB and u["free_bytes"] == u["quota_bytes"] - u["used_bytes"] - 4 * MiB
    [listed] = u["reservations"]
    assert listed["job"] == "stage:1" and not listed["stale"] and listed["age_s"] >= 0
    fill(cfg.ssd.zone_path("3C") / ".tmp" / "job-1" / "part", 1 * MiB)
    u = zones.zone_usage(cfg, "3C")
    written = zones.du(cfg.ssd.zone_path("3C") / ".tmp" / "job-1")  # the MiB and its directory's block
    assert written >= MiB and u["reserved_bytes"] == 4 * MiB - written  # moved from reserved to used
    assert [o["state"] for o in u["outputs"]] == ["running"] and u["outputs"][0]["job"] == "stage:1"
    assert zones.release(cfg, r.zone, r.id) and not zones.release(cfg, r.zone, r.id)
    u = zones.zone_usage(cfg, "3C")
    assert u["reserved_bytes"] == 0 and u["reservations"] == []
    assert [o["state"] for o in u["outputs"]] == ["incomplete"]  # nobody will finish it now


def test_deny_at_90_percent_names_zone_need_and_what_to_clean(tmp_path: Path) -> None:
    """A reservation that would pass 90 % is refused (exit 6) in one line: the zone, how full,
    what the job needs, the biggest sealed outputs and `hoard zones clean ID`; one that fits
    is taken."""
    cfg = zone_config(tmp_path)
    sealed_output(cfg, "3D", "export-big", 5 * MiB)
    sealed_output(cfg, "3D", "export-small", 1 * MiB)
    zones.reserve(cfg, "3D", "running-one", "export:7", 1 * MiB)
    with pytest.raises(zones.ZoneFull) as e:
        zones.reserve(cfg, "3D", "export-new", "export:9", 3 * MiB, next_step="`hoard export --resume 9`")
    msg = e.value.message
    assert e.value.exit_code == ExitCode.NO_SPACE and "\n" not in msg
    pct = round(100 * (zones.zone_usage(cfg, "3D")["used_ratio"]))
    assert msg.startswith("zone 3D has room for ") and "below its deny threshold (90%)" in msg
    assert "export:9 needs 3.0 MiB" in msg and f"it is {pct}% full" in msg and "1.0 MiB reserved by 1 running job" in msg
    assert "Biggest sealed outputs: export-big (5.0 MiB), export-small (1.0 MiB)" in msg
    assert "`hoard zones clean ID`" in msg and "ssd.zones.3D.quota_gb" in msg
    assert msg.endswith("then `hoard export --resume 9`")
    assert not (cfg.ssd.root / "state" / "reservations" / "3D" / "export-new.json").exists()
    zones.reserve(cfg, "3D", "export-new", "export:9", 1 * MiB)  # what fits below 90 % is taken


def test_emergency_only_running_jobs_finish(tmp_path: Path) -> None:
    """Between deny and emergency a running job may grow past its estimate while new ones are
    refused; past 95 % nothing new at all (the message says emergency), no growing, but the
    running job still seals its output."""
    cfg = zone_config(tmp_path)
    out = seal.begin(cfg, "3C", "stage-1", job="stage:1", kind="stage", expected_bytes=2 * MiB)
    to_ratio(cfg, "3C", 0.91)
    with pytest.raises(zones.ZoneFull, match="deny threshold"):
        zones.reserve(cfg, "3C", "stage-2", "stage:2", 64 * 1024)
    assert out.reservation is not None
    zones.grow(cfg, out.reservation, 2 * MiB + 256 * 1024)  # 91 % → 93 %: allowed, the job is running
    to_ratio(cfg, "3C", 0.96)
    assert zones.zone_usage(cfg, "3C")["level"] == "emergency"
    with pytest.raises(zones.ZoneFull) as e:
        zones.reserve(cfg, "3C", "stage-2", "stage:2", 4096)
    assert "zone 3C is past its emergency threshold (95%)" in e.value.message
    assert "only jobs already holding a reservation may finish" in e.value.message and "stage:2" in e.value.message
    with pytest.raises(zones.ZoneFull, match="emergency"):
        zones.grow(cfg, out.reservation, 4 * MiB)
    out.write("a.bin", os.urandom(2 * MiB))
    doc = out.seal()
    assert doc["actual_bytes"] == 2 * MiB and seal.check_sealed(out.final, verify=True) == doc
    assert zones.zone_usage(cfg, "3C")["reservations"] == []


RACER = """
go = os.environ["GO"]
while not os.path.exists(go):
    pass
try:
    zones.reserve(cfg, "3B", os.environ["ID"], "race:" + os.environ["ID"], 3 << 20)
    print("ok", flush=True)
except zones.ZoneFull:
    print("refused", flush=True)
while not os.path.exists(go + ".done"):  # a winner keeps its reservation alive until the end
    time.sleep(0.01)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_racing_processes_never_share_the_last_room(tmp_path: Path) -> None:
    """Eight processes reserve 3 MiB each at the same instant in a zone with room for three
    below 90 %: exactly three get it, and together they stay below the deny threshold."""
    cfg = zone_config(tmp_path)
    many = cfg.ssd.zone_path("3B") / "many-small-files"  # measuring the zone takes a while: a wide window
    many.mkdir()
    for i in range(10000):
        (many / str(i)).touch()
    go = tmp_path / "go"
    procs = [child(cfg, RACER, GO=str(go), ID=f"r{i}") for i in range(8)]
    time.sleep(1.0)  # every child is spinning on the start file
    go.touch()
    try:
        answers = [wait_line(p, "").strip() for p in procs]
        assert sorted(answers) == ["ok"] * 3 + ["refused"] * 5, answers
        u = zones.zone_usage(cfg, "3B")
        assert len(u["reservations"]) == 3 and u["reserved_bytes"] == 9 * MiB
        assert u["used_bytes"] + u["reserved_bytes"] <= cfg.ssd.thresholds.deny * u["quota_bytes"]
    finally:
        (tmp_path / "go.done").touch()
        for p in procs:
            p.wait(30)


HOLDER = """
r = zones.reserve(cfg, "3C", "stage-9", "stage:9", 5 << 20)
os.makedirs(cfg.ssd.zone_path("3C") / ".tmp" / "stage-9")
with open(cfg.ssd.zone_path("3C") / ".tmp" / "stage-9" / "part", "wb") as f:
    f.write(os.urandom(1 << 20))
print("reserved", r.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"zone 3C: reclaimed the stale reservation of job stage:9", level="WARNING")
def test_reservation_survives_kill9_and_is_reclaimed_as_stale(tmp_path: Path) -> None:
    """A reservation outlives its process's kill -9 on disk; it is then reported stale (and no
    longer counted), the next reservation in the zone reclaims it with a warning, and `hoard
    zones clean` removes what the dead job wrote."""
    cfg = zone_config(tmp_path)
    proc = child(cfg, HOLDER)
    pid = int(wait_line(proc, "reserved").split()[1])
    live = zones.zone_usage(cfg, "3C")
    assert live["reservations"][0]["pid"] == pid and not live["reservations"][0]["stale"]
    assert live["reserved_bytes"] == 5 * MiB - zones.du(cfg.ssd.zone_path("3C") / ".tmp" / "stage-9")
    with pytest.raises(zones.ZoneFull):  # 1 written + 4 outstanding + 5 more would pass 90 %
        zones.reserve(cfg, "3C", "stage-10", "stage:10", 5 * MiB)
    res = hoard(cfg, "zones", "clean", "stage-9")
    assert res.returncode == ExitCode.UNAVAILABLE and f"pid {pid}" in res.stderr, res.stderr
    proc.kill()
    proc.wait()
    dead = zones.zone_usage(cfg, "3C")
    [r] = dead["reservations"]
    assert r["stale"] and r["job"] == "stage:9" and dead["reserved_bytes"] == 0
    assert [(o["id"], o["state"]) for o in dead["outputs"]] == [("stage-9", "incomplete")]
    zones.reserve(cfg, "3C", "stage-10", "stage:10", 5 * MiB)  # reclaims the stale one (the warning)
    assert [x.id for x in zones.reservations(cfg, "3C")] == ["stage-10"]
    res = hoard(cfg, "zones", "clean", "stage-9")
    assert res.returncode == 0 and "removed incomplete output stage-9 (1.0 MiB freed)" in res.stdout, res.stderr
    assert not (cfg.ssd.zone_path("3C") / ".tmp" / "stage-9").exists()


def _own_reservation(tmp_path: Path) -> tuple[config.Settings, Path, dict]:
    """A zone config with one reservation of this process in 3C ("own"): the config, the
    reservations folder and the reservation's document (to write others from)."""
    if "-" in process_space().split("/")[1:3]:
        pytest.skip("no machine id or boot id to tell a boot by")
    cfg = zone_config(tmp_path)
    zones.reserve(cfg, "3C", "own", "stage:own", MiB)
    d = cfg.ssd.root / "state" / "reservations" / "3C"
    return cfg, d, json.loads((d / "own.json").read_bytes())


def test_a_reservation_is_judged_where_its_pid_names_a_process(tmp_path: Path) -> None:
    """A reservation names its process by pid, start time and process space (machine, boot, pid
    namespace): one whose pid runs here but was made in another boot of this machine is stale
    (judged by host name and pid it looked alive: the old code kept it, and `hoard zones clean`
    refused it for good); one of another pid namespace is live (its pid cannot be checked here);
    this process's own is live; a file without `space` (the format before it) is judged by host
    name and pid as it was — a dead pid stale, a live one not."""
    cfg, d, doc = _own_reservation(tmp_path)
    name, machine, boot, ns = process_space().split("/")
    dead = next(pid for pid in range(int(Path("/proc/sys/kernel/pid_max").read_text()) - 1, 1, -1)
                if not pid_alive(pid))  # (a pid no process has)
    old = {k: v for k, v in doc.items() if k != "space"}
    booted = booted_ns()
    assert booted is not None
    for rid, body in {"other-boot": doc | {"space": f"{name}/{machine}/{'0' * 32}/{ns}",  # made before this boot
                                           "created_ns": booted - 3600 * 10**9},
                      "other-ns": doc | {"space": f"{name}/{machine}/{boot}/1"},
                      "old-live": old, "old-dead": old | {"pid": dead}}.items():
        (d / f"{rid}.json").write_text(json.dumps(body | {"id": rid, "job": f"stage:{rid}"}))
    stale = {r.id: r.stale for r in zones.reservations(cfg, "3C")}
    assert stale == {"own": False, "other-boot": True, "other-ns": False, "old-live": False, "old-dead": True}
    assert zones.clean(cfg, "other-boot")["stale_reservation"]["id"] == "other-boot"  # health's next step for it
    assert sorted(r.id for r in zones.reservations(cfg, "3C")) == ["old-dead", "old-live", "other-ns", "own"]



def test_a_reservation_made_after_this_boot_began_is_never_an_earlier_boots(tmp_path: Path) -> None:
    """A reservation naming this host name and machine id but another boot id is stale only if
    it was made before this boot began (`btime` in /proc/stat): one made since cannot be an
    earlier boot's — another kernel wrote it: a VM cloned with its machine id (a common slip)
    or a container with a kernel of its own (gVisor, Kata: its own boot id; the image's machine
    id and a set host name) sharing this SSD. Its pid cannot be checked here: it is live — not
    reclaimed by the next `reserve`, and `hoard zones clean` refuses it (before, both went
    ahead: the running job's output was removed under it)."""
    cfg, d, doc = _own_reservation(tmp_path)
    name, machine, boot, ns = process_space().split("/")
    now = time.time_ns()  # (made now: after this boot began)
    (d / "clone.json").write_text(json.dumps(doc | {"id": "clone", "job": "stage:clone", "created_ns": now,
                                                     "space": f"{name}/{machine}/{'0' * 32}/{ns}"}))
    part = cfg.ssd.zone_path("3C") / ".tmp" / "clone" / "part-0"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(4096))
    assert {r.id: r.stale for r in zones.reservations(cfg, "3C")} == {"own": False, "clone": False}
    zones.reserve(cfg, "3C", "next", "stage:next", MiB)
    assert sorted(r.id for r in zones.reservations(cfg, "3C")) == ["clone", "next", "own"]
    with pytest.raises(zones.ZoneBusy):
        zones.clean(cfg, "clone")
    assert part.is_file()



def test_a_reservation_of_another_process_space_is_refused_with_advice_that_works(tmp_path: Path) -> None:
    """`hoard zones clean` refuses a live reservation, naming the next step. For one made in
    another process space (another pid namespace — a container — or machine: its pid cannot be
    checked here, so it is never stale here) that step is not "stop pid N first": N is a pid of
    that namespace — here it may be any other process — and stopping it leaves the reservation
    live. The refusal names where it was made and the reservation file to remove if no job
    writes the output."""
    cfg = zone_config(tmp_path)
    zones.reserve(cfg, "3C", "own", "stage:own", MiB)
    d = cfg.ssd.root / "state" / "reservations" / "3C"
    doc = json.loads((d / "own.json").read_bytes())
    name, machine, boot, _ns = process_space().split("/")
    (d / "boxed.json").write_text(json.dumps(doc | {"id": "boxed", "job": "stage:boxed", "pid": 1,
                                                     "space": f"{name}/{machine}/{boot}/1"}))
    with pytest.raises(zones.ZoneBusy) as e:
        zones.clean(cfg, "boxed")
    msg = e.value.message
    assert "stop pid 1" not in msg and "pid namespace" in msg and str(d / "boxed.json") in msg, msg


PACKAGER = """
r = zones.reserve(cfg, "3B", "b-7", "ingest:b-7", 2 << 20)
out = cfg.ssd.zone_path("3B") / "b-7"
os.makedirs(out)
(out / "b-7.part0001.tar").write_bytes(os.urandom(1 << 20))
(out / "b-7.manifest.json").write_text("{}")  # the package's seal
print("sealed", r.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_stale_reservation_of_a_sealed_package_is_released_not_reclaimed(tmp_path: Path) -> None:
    """An ingest package step killed after its manifest (the 3B package's seal), before its
    release: the next reservation in 3B drops it as an output's that is whole — it warned
    "what it wrote stays until `hoard zones clean b-7`", advice that removes the sealed
    package (the seal it looked for was `_SEALED` alone; a package's is its manifest)."""
    cfg = zone_config(tmp_path)
    proc = child(cfg, PACKAGER)
    wait_line(proc, "sealed")
    proc.kill()
    proc.wait()
    [r] = zones.reservations(cfg, "3B")
    assert r.stale and r.id == "b-7"
    zones.reserve(cfg, "3B", "b-8", "ingest:b-8", MiB)  # reclaims it: no warning (the test fails on one)
    assert [x.id for x in zones.reservations(cfg, "3B")] == ["b-8"]
    assert (cfg.ssd.zone_path("3B") / "b-7" / "b-7.manifest.json").is_file()


def test_seal_refuses_what_was_not_declared(tmp_path: Path) -> None:
    """A file whose sha256 or size differs from its declaration, or one never declared, is not
    sealed: the error names the output, the file and the cause; the reservation is released
    and the partial output removed (kept with ssd.keep_failed_outputs, listed incomplete)."""
    cfg = zone_config(tmp_path)
    with pytest.raises(seal.OutputFailed) as e:
        with seal.output(cfg, "3D", "bad-sha", job="export:1", kind="export", expected_bytes=MiB) as o:
            (o.tmp / "x.bin").write_bytes(b"what was written")
            o.declare("x.bin", 16, hashlib.sha256(b"what was computed").hexdigest())
    msg = e.value.message
    assert e.value.exit_code == ExitCode.DATA
    assert msg.startswith("output 3D/bad-sha of export:1 failed: output 3D/bad-sha (job export:1): x.bin has sha256 ")
    assert hashlib.sha256(b"what was written").hexdigest() in msg and "not sealed" in msg
    assert "partial files were removed" in msg
    assert not (cfg.ssd.zone_path("3D") / "bad-sha").exists() and not o.tmp.exists()
    assert zones.zone_usage(cfg, "3D")["reservations"] == []

    cfg = zone_config(tmp_path / "keep", keep_failed=True)
    with pytest.raises(seal.OutputFailed, match=r"y.bin has 3 bytes, 4 were declared"):
        with seal.output(cfg, "3D", "bad-size", job="export:2", kind="export", expected_bytes=MiB) as o:
            (o.tmp / "y.bin").write_bytes(b"abc")
            o.declare("y.bin", 4, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(seal.OutputFailed, match=r"1 file\(s\) the producer did not declare, e.g. extra.txt"):
        with seal.output(cfg, "3D", "extra", job="export:3", kind="export", expected_bytes=MiB) as o:
            o.write("ok.txt", b"fine")
            (o.tmp / "extra.txt").write_bytes(b"sneaked in")
    listed = {o["id"]: o["state"] for o in zones.zone_usage(cfg, "3D")["outputs"]}
    assert listed == {"bad-size": "incomplete", "extra": "incomplete"}
    with pytest.raises(seal.OutputIncomplete, match="not sealed"):
        seal.check_sealed(cfg.ssd.zone_path("3D") / ".tmp" / "extra")


def test_sealed_output_layout(tmp_path: Path) -> None:
    """A sealed output holds the files, a manifest of every file (size, sha256), `_JOB.json`
    (job, kind, selector, layout, times, expected/actual bytes and files, the manifest's
    sha256) and an empty `_SEALED`; `check_sealed` trusts it, and it is listed sealed."""
    cfg = zone_config(tmp_path)
    with seal.output(cfg, "3D", "ds-1", job="export:ds-1", kind="export", expected_bytes=MiB, expected_files=2,
                     selector={"source": "yt"}, layout="imagefolder") as o:
        o.write("cats/1.jpg", b"meow")
        o.write("dogs/2.jpg", b"woof")
    final = cfg.ssd.zone_path("3D") / "ds-1"
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == \
        ["_JOB.json", "_MANIFEST.json", "_SEALED", "cats/1.jpg", "dogs/2.jpg"]
    job = json.loads((final / "_JOB.json").read_bytes())
    manifest = (final / "_MANIFEST.json").read_bytes()
    assert job["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert json.loads(manifest)["files"] == [
        {"path": "cats/1.jpg", "size": 4, "sha256": hashlib.sha256(b"meow").hexdigest()},
        {"path": "dogs/2.jpg", "size": 4, "sha256": hashlib.sha256(b"woof").hexdigest()}]
    assert (job["kind"], job["selector"], job["layout"], job["expected_files"], job["actual_files"],
            job["actual_bytes"], job["format"]) == ("export", {"source": "yt"}, "imagefolder", 2, 2, 8,
                                                    "hoardfs-output-1")
    assert job["started"] <= job["ended"] and (final / "_SEALED").stat().st_size == 0
    assert seal.check_sealed(final, verify=True) == job
    (final / "cats" / "1.jpg").write_bytes(b"purr")
    with pytest.raises(seal.OutputIncomplete, match="differs from its manifest"):
        seal.check_sealed(final, verify=True)
    [listed] = zones.zone_usage(cfg, "3D")["outputs"]
    assert (listed["id"], listed["state"], listed["kind"]) == ("ds-1", "sealed", "export")


CRASHER = """
def stop_before_job_file(final, doc):
    print("renamed", flush=True)
    time.sleep(600)

seal._write_job = stop_before_job_file
with seal.output(cfg, "3C", "stage-5", job="stage:5", kind="stage", expected_bytes=1 << 20) as o:
    o.write("a.bin", os.urandom(200_000))
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_kill9_between_rename_and_sealed_is_not_complete(tmp_path: Path) -> None:
    """A producer killed after the rename but before `_SEALED` leaves `<zone>/<id>/` that no
    reader takes as complete: `check_sealed` refuses it, `hoard zones --json` lists it
    incomplete (its reservation stale), `hoard zones clean` removes it and the reservation."""
    cfg = zone_config(tmp_path)
    proc = child(cfg, CRASHER)
    wait_line(proc, "renamed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = cfg.ssd.zone_path("3C") / "stage-5"
    assert (final / "a.bin").is_file() and (final / "_MANIFEST.json").is_file()
    assert not (final / "_SEALED").exists()
    with pytest.raises(seal.OutputIncomplete, match="output 3C/stage-5 is not sealed"):
        seal.check_sealed(final)
    res = hoard(cfg, "zones", "--json")
    assert res.returncode == 0, res.stderr
    z = json.loads(res.stdout)["zones"]["3C"]
    assert [(o["id"], o["state"]) for o in z["outputs"]] == [("stage-5", "incomplete")]
    assert [(r["id"], r["stale"]) for r in z["reservations"]] == [("stage-5", True)]
    assert set(json.loads(res.stdout)["zones"]) == {"3A", "3B", "3C", "3D"}
    assert {"quota_bytes", "used_bytes", "reserved_bytes", "free_bytes", "level"} <= set(z)
    text = hoard(cfg, "zones")
    assert text.returncode == 0 and "stage-5" in text.stdout and "incomplete" in text.stdout
    assert "stale" in text.stdout
    res = hoard(cfg, "zones", "clean", "stage-5")
    assert res.returncode == 0 and "removed incomplete output stage-5" in res.stdout, res.stderr
    assert "reclaimed the stale reservation of job stage:5" in res.stdout
    assert not final.exists() and zones.reservations(cfg, "3C") == []


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_cli_clean_sealed_and_unknown(tmp_path: Path) -> None:
    """`hoard zones clean ID` removes a sealed output and frees its bytes; an unknown id, or a
    zone without outputs, is one line naming it."""
    cfg = zone_config(tmp_path)
    sealed_output(cfg, "3B", "pkg-1", 2 * MiB)
    before = zones.zone_usage(cfg, "3B")["used_bytes"]
    res = hoard(cfg, "zones", "clean", "pkg-1")
    assert res.returncode == 0 and "zone 3B: removed sealed output pkg-1 (2.0 MiB freed)" in res.stdout, res.stderr
    assert zones.zone_usage(cfg, "3B")["used_bytes"] <= before - 2 * MiB
    res = hoard(cfg, "zones", "clean", "pkg-1")
    assert res.returncode == ExitCode.DATA and res.stderr.count("\n") == 1
    assert "no output pkg-1 in zones 3B, 3C, 3D; `hoard zones` lists them" in res.stderr
    res = hoard(cfg, "zones", "clean", "some-batch", "--zone", "3A")
    assert res.returncode == ExitCode.USAGE and "zone 3A holds no job outputs" in res.stderr


def test_health_shows_the_same_figures(hoard_home: Path, pg) -> None:
    """`hoard health --json` carries `hoard zones`' figures (reserved, free, reservations,
    outputs) and names a stale reservation and an incomplete output as problems; `hoard
    health` shows the short form."""
    from tests.helpers import use_schema

    cfg = config.load(use_schema(hoard_home, pg))
    assert hoard(cfg, "init").returncode == 0
    sealed_output(cfg, "3D", "ds-1", MiB)
    proc = child(cfg, HOLDER)
    wait_line(proc, "reserved")
    proc.kill()
    proc.wait()
    res = hoard(cfg, "health", "--json")
    report = json.loads(res.stdout)
    assert res.returncode == ExitCode.DEGRADED
    same = json.loads(hoard(cfg, "zones", "--json").stdout)["zones"]
    for z in ("3C", "3D"):
        for key in ("quota_bytes", "used_bytes", "reserved_bytes", "free_bytes", "level"):
            assert report["zones"][z][key] == same[z][key], (z, key)
    assert [(o["id"], o["state"]) for o in report["zones"]["3D"]["outputs"]] == [("ds-1", "sealed")]
    [r] = report["zones"]["3C"]["reservations"]
    assert r["stale"] and r["job"] == "stage:9"
    stale = [p for p in report["problems"] if p.startswith("zone 3C:")]
    assert stale == [f"zone 3C: the reservation of job stage:9 for stage-9 is stale (pid {r['pid']} on {r['host']} "
                     "is gone); `hoard zones clean stage-9` reclaims it and removes what it wrote"], report["problems"]
    text = hoard(cfg, "health")
    assert "reserved" in text.stdout and "1 sealed" in text.stdout and "stage-9 is stale" in text.stderr
    assert hoard(cfg, "zones", "clean", "stage-9").returncode == 0
    report = json.loads(hoard(cfg, "health", "--json").stdout)
    assert not [p for p in report["problems"] if p.startswith("zone ")], report["problems"]


KILLED_PACKAGER = """
zones.reserve(cfg, "3B", os.environ["BATCH"], "ingest:" + os.environ["BATCH"], 1 << 20)
print("reserved", flush=True)
time.sleep(600)
"""


@pytest.mark.expect_log(r"zone 3B: reclaimed the stale reservation of job ingest:", level="WARNING")
def test_ingest_reserves_3b_and_its_package_is_a_sealed_output(hoard_home: Path, pg, redis_conn) -> None:
    """UA_1's package step reserves in 3B through the same mechanism: the reservation a killed
    packager left is reclaimed, none is left behind, and the package (sealed by its manifest)
    is listed as a sealed output `hoard zones clean` can remove."""
    from hoardfs.adapters.synth import Spec, generate
    from tests.test_ingest import ingest_all, ingest_home

    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=9, batches=1, items_per_batch=10, large_max_mb=1, ready_signal=True))[0]
    proc = child(cfg, KILLED_PACKAGER, BATCH=batch.batch_id)
    wait_line(proc, "reserved")
    proc.kill()
    proc.wait()
    st = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id])[0]
    assert st.status == "done", st.error
    u = zones.zone_usage(cfg, "3B")
    assert u["reservations"] == [] and u["reserved_bytes"] == 0
    [pkg] = u["outputs"]
    assert (pkg["id"], pkg["state"], pkg["kind"]) == (batch.batch_id, "sealed", "ingest-package")
    assert pkg["bytes"] >= st.report["package"]["bytes"]
    res = hoard(cfg, "zones", "clean", batch.batch_id)
    assert res.returncode == 0 and f"removed sealed output {batch.batch_id}" in res.stdout, res.stderr


def _doc_block(name: str) -> str:
    import re

    return re.search(rf"```json {name}\n(.*?)```", (REPO / "docs" / "design.md").read_text(), re.S).group(1)


def test_design_doc_example_is_what_seal_writes(tmp_path: Path) -> None:
    """docs/design.md's worked example: the same output sealed here has the document's
    `_MANIFEST.json` byte for byte and its `_JOB.json` but for the times."""
    cfg = zone_config(tmp_path)
    with seal.output(cfg, "3D", "hello", job="export:hello", kind="export", expected_bytes=65536, expected_files=1,
                     selector={"source": "yt"}, layout="imagefolder") as o:
        o.write("hello.txt", b"hello hoard\n")
    final = cfg.ssd.zone_path("3D") / "hello"
    assert (final / "_MANIFEST.json").read_text() + "\n" == _doc_block("output-manifest-example")
    doc, got = json.loads(_doc_block("output-job-example")), json.loads((final / "_JOB.json").read_bytes())
    times = ("started", "ended")
    assert {k: v for k, v in got.items() if k not in times} == {k: v for k, v in doc.items() if k not in times}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_unreadable_reservation_is_named_not_counted_silently(tmp_path: Path) -> None:
    """A reservation file a person broke stops new reservations in its zone with one line
    naming the file; `hoard zones` still shows the zone, with the error."""
    cfg = zone_config(tmp_path)
    broken = cfg.ssd.root / "state" / "reservations" / "3C" / "x.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    with pytest.raises(Exception) as e:
        zones.reserve(cfg, "3C", "y", "stage:y", 4096)
    assert f"reservation file {broken} is unreadable" in str(e.value)
    res = hoard(cfg, "zones", "--json")
    assert res.returncode == 0 and "is unreadable" in json.loads(res.stdout)["zones"]["3C"]["error"]


def test_no_reservation_on_an_ssd_that_is_not_mounted(tmp_path: Path) -> None:
    """Without the zone's directory (the SSD not mounted) a reservation is refused before
    anything — lock file, reservation — is written under ssd.root."""
    cfg = zone_config(tmp_path)
    (cfg.ssd.zone_path("3D")).rmdir()
    with pytest.raises(Exception, match=r"zone 3D: .* does not exist — the SSD is not mounted"):
        zones.reserve(cfg, "3D", "x", "export:x", 4096)
    assert not (cfg.ssd.root / "locks").exists() and not (cfg.ssd.root / "state").exists()


def test_a_bug_in_the_producer_is_cleaned_up_and_raised_as_it_is(tmp_path: Path) -> None:
    """An exception that is not a user error (a bug) still releases the reservation and
    removes the partial output, and reaches the caller unchanged (its traceback is the news)."""
    cfg = zone_config(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with seal.output(cfg, "3C", "oops", job="stage:oops", kind="stage", expected_bytes=MiB) as o:
            o.write("half.bin", b"x" * 1000)
            _ = 1 / 0
    assert zones.reservations(cfg, "3C") == [] and not o.tmp.exists()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_charge_is_what_the_files_occupy_as_du_counts_them(tmp_path: Path) -> None:
    """zones.charge of 152 small files (and a few others) in 3 directories covers what `du`
    finds once they are written on this machine's file system, and not much more — the
    logical sum of the sizes is a fraction of it."""
    import random

    rnd = random.Random(7)
    sizes = [rnd.randint(1, 2000) for _ in range(152)] + [0, 4096, 5000, 65536]
    tree = tmp_path / "tree"
    for i, n in enumerate(sizes):
        fill(tree / f"d{i % 2}" / f"{hashlib.sha256(str(i).encode()).hexdigest()}.jpg", n)
    on_disk = int(subprocess.run(["du", "-sB1", str(tree)], capture_output=True, text=True,
                                 check=True).stdout.split()[0])
    assert zones.du(tree) == on_disk
    block = os.statvfs(tree).f_frsize
    got = zones.charge(tree, sizes, dirs=3)
    assert on_disk <= got <= on_disk * 1.05 + 4 * block, (sum(sizes), on_disk, got)
    assert sum(sizes) < on_disk / 2  # what a reservation of the sizes alone undercounts
    cfg = zone_config(tmp_path / "home")
    assert zones.charge((cfg, "3C"), iter(sizes)) == zones.charge(cfg.ssd.zone_path("3C"), sizes)
    assert zones.charge(cfg.ssd.zone_path("3C") / "not-yet" / "deeper", [1]) == 2 * block  # a block and an entry


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_zone_on_a_full_file_system_refuses_what_its_quota_would_admit(tmp_path: Path) -> None:
    """3C on a 4 MiB tmpfs holding 3.94 MiB (38 % of its 10 MiB quota): `zone_usage` reports
    the file system's free bytes and counts them in `free_bytes`, `reserve` refuses 1 MiB
    (exit 6, one line naming the zone, its path, the free bytes and the need), `hoard zones`
    and `hoard health` name the shortfall; a reservation that fits is still taken."""
    from hoardfs.fsd.maintenance.health import store_problems

    cfg = zone_config(tmp_path)
    z = cfg.ssd.zone_path("3C")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(z)], capture_output=True).returncode:
        missing("TMPFS MOUNT UNAVAILABLE (needs root)")
    try:
        fill(z / "loose.bin", 4 * MiB - 64 * 1024)
        u = zones.zone_usage(cfg, "3C")
        assert u["level"] == "ok" and u["quota_bytes"] - u["used_bytes"] > 6 * MiB
        assert u["fs_free_bytes"] == os.statvfs(z).f_bavail * os.statvfs(z).f_frsize <= 64 * 1024
        assert u["free_bytes"] == u["fs_free_bytes"] and u["fs_short"]
        other = zones.zone_usage(cfg, "3D")
        assert not other["fs_short"] and other["free_bytes"] == other["quota_bytes"] - other["used_bytes"]
        with pytest.raises(zones.ZoneFull) as e:
            zones.reserve(cfg, "3C", "st-1", "stage:st-1", MiB, "run `hoard stage st-1` again")
        msg = e.value.message
        assert e.value.exit_code == ExitCode.NO_SPACE and "\n" not in msg
        assert msg.startswith(f"zone 3C: the file system holding {z} has {fmt_bytes(u['fs_free_bytes'])} free "
                              "and stage:st-1 needs 1.0 MiB"), msg
        assert msg.endswith("; then run `hoard stage st-1` again") and zones.reservations(cfg, "3C") == []
        zones.reserve(cfg, "3C", "st-2", "stage:st-2", 16 * 1024)
        assert zones.release(cfg, "3C", "st-2")
        problems = store_problems(cfg, {"ok": False, "error": "not opened"}, [], zones.usage(cfg))
        assert [p for p in problems if p.startswith("zone ")] == [
            f"zone 3C: the file system holding {z} has {fmt_bytes(u['fs_free_bytes'])} free, though the zone's "
            f"quota promises {fmt_bytes(u['quota_bytes'] - u['used_bytes'])} more: new work there is refused or "
            "fails; free space on that file system (the other zones and anything outside hoardfs share it) or "
            "lower ssd.zones.3C.quota_gb"]
        res = hoard(cfg, "zones")
        assert res.returncode == 0 and f"ok, file system: {fmt_bytes(u['fs_free_bytes'])} free" in res.stdout, \
            res.stdout + res.stderr
    finally:
        subprocess.run(["umount", str(z)], check=True)


def test_charge_counts_every_level_of_a_deep_tree(disk_path: Path) -> None:
    """A layout like {sha256:1}/{sha256:2}/{sha256:3}/{sha256} makes three directory levels:
    counting only each file's parent directory undercounts what `du` finds; `tree_dirs`
    counts every level, and the charge covers the written tree."""
    paths = []
    for i in range(60):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        paths.append(f"{h[:1]}/{h[:2]}/{h[:3]}/{h}.jpg")
    tree = disk_path / "tree"
    for p in paths:
        fill(tree / p, 100)
    on_disk = zones.du(tree)
    sizes = [100] * len(paths)
    parents_only = len({os.path.dirname(p) for p in paths})
    assert zones.tree_dirs(paths) == len({d for p in paths for d in (p[:1], p[:4], p[:8])}) > parents_only
    assert zones.charge(tree, sizes, dirs=1 + parents_only) < on_disk  # the old count: short
    assert on_disk <= zones.charge(tree, sizes, dirs=1 + zones.tree_dirs(paths))
    assert zones.tree_dirs(["f", "a/f", "a/g"]) == 1 and zones.tree_dirs([]) == 0


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_zones_sharing_a_file_system_count_each_others_reservations(tmp_path: Path) -> None:
    """All zones live on one SSD: a 4 MiB reservation in 3C (nothing written yet) leaves a
    6 MiB file system 2 MiB for everyone, so 3D's 4 MiB is refused — though 3D's quota and
    its own (empty) reservations would admit it — naming 3C's pending bytes; released, 3D
    fits. `zone_usage` shows the shared shortfall in every zone."""
    cfg = zone_config(tmp_path)
    ssd = cfg.ssd.root
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(ssd)], capture_output=True).returncode:
        missing("TMPFS MOUNT UNAVAILABLE (needs root)")
    try:
        for z in ("3A", "3B", "3C", "3D"):
            cfg.ssd.zone_path(z).mkdir()
        zones.reserve(cfg, "3C", "st-1", "stage:st-1", 4 * MiB)
        assert zones.zone_usage(cfg, "3D")["free_bytes"] <= 2 * MiB + 64 * 1024
        with pytest.raises(zones.ZoneFull) as e:
            zones.reserve(cfg, "3D", "ex-1", "export:ex-1", 4 * MiB)
        assert "running jobs reserved there (zone 3C)" in e.value.message, e.value.message
        assert zones.reservations(cfg, "3D") == []
        assert zones.release(cfg, "3C", "st-1")
        zones.reserve(cfg, "3D", "ex-1", "export:ex-1", 4 * MiB)
        assert [r.id for r in zones.reservations(cfg, "3D")] == ["ex-1"]
    finally:
        subprocess.run(["umount", str(ssd)], check=True)


def _steady(figures: dict) -> dict:
    """Zone figures without what moves between two calls (reservations' ages)."""
    return {z: {**u, "reservations": [{k: v for k, v in r.items() if k != "age_s"} for r in u["reservations"]]}
            for z, u in figures.items()}


def test_usage_reads_each_zones_reservations_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`usage` reads every zone's reservation files once — each zone's free space counts the
    pending bytes of all zones on its file system, which used to read every zone's files per
    zone (zones² reads) — and its figures are each zone's own `zone_usage`."""
    cfg = zone_config(tmp_path)
    zones.reserve(cfg, "3C", "job-c", "stage", 2 * MiB)
    zones.reserve(cfg, "3D", "job-d", "export", 1 * MiB)
    fill(tmp_path / "ssd" / "3D" / "job-d" / "part.bin", 256 << 10)
    # a file system with 5 MiB free: what every zone may still use is that less all pending
    monkeypatch.setattr(zones, "fs_free", lambda _path: 5 * MiB)
    alone = {z: zones.zone_usage(cfg, z) for z in zones.ZONES}
    calls: list[str] = []
    real = zones.reservations
    monkeypatch.setattr(zones, "reservations", lambda c, z: calls.append(z) or real(c, z))
    together = zones.usage(cfg)
    assert sorted(calls) == sorted(zones.ZONES)
    assert _steady(together) == _steady(alone)
    pending = together["3C"]["reserved_bytes"] + together["3D"]["reserved_bytes"]
    assert together["3C"]["reserved_bytes"] == 2 * MiB and MiB - (264 << 10) <= together["3D"]["reserved_bytes"] < MiB
    assert {z: u["free_bytes"] for z, u in together.items()} == {z: 5 * MiB - pending for z in zones.ZONES}


def test_usage_with_a_damaged_reservation_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation file a person broke: its zone names it, the other zones are reported
    as `zone_usage` reports them alone (read once, raised where it was read)."""
    cfg = zone_config(tmp_path)
    zones.reserve(cfg, "3C", "job-c", "stage", 2 * MiB)
    bad = zones.reservations_dir(cfg, "3D") / "broken.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("{not json")
    monkeypatch.setattr(zones, "fs_free", lambda _path: 5 * MiB)
    together = zones.usage(cfg)
    assert "broken.json" in together["3D"]["error"] and together["3D"]["reservations"] == []
    assert together["3C"]["reserved_bytes"] == 2 * MiB and together["3C"]["error"] is None
    assert _steady(together) == _steady({z: zones.zone_usage(cfg, z) for z in zones.ZONES})


def test_a_sparse_file_counts_by_its_apparent_size(tmp_path: Path) -> None:
    """`truncate -s 6G` in 3A allocates a few KB and slipped past the quota (ingest
    then read 6 GB); a file counts by its apparent size when that is larger than its blocks."""
    from hoardfs.fsd.outputs.zones import du

    sparse = tmp_path / "3A" / "b" / "x"
    sparse.parent.mkdir(parents=True)
    with open(sparse, "wb") as f:
        f.truncate(6 << 30)
    assert sparse.stat().st_blocks * 512 < 1 << 20
    assert du(tmp_path / "3A") >= 6 << 30  # the old count: a few KB
    small = tmp_path / "small"
    small.write_bytes(b"x")
    assert du(small) == small.stat().st_blocks * 512  # a dense file: its blocks, as before


def _walked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `zones.du` walks from now on (it still walks them: a count, not a stand-in)."""
    seen: list[str] = []
    real = zones.du

    def counting(path, dirs=None):
        seen.append(str(path))
        return real(path, dirs)
    monkeypatch.setattr(zones, "du", counting)
    return seen


def test_a_sealed_outputs_bytes_are_recorded_and_the_zone_never_counts_less_than_du(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zone's usage is `du` of the zone whatever happens — seal, files added to a sealed
    output by hand, a crash mid-copy, clean, clean aside and the trash emptied — while a sealed
    output, once recorded, is not walked again by a reservation (a stat per directory)."""
    cfg = zone_config(tmp_path)
    z = cfg.ssd.zone_path("3C")

    def agree() -> int:
        used = zones.zone_usage(cfg, "3C")["used_bytes"]
        assert used == zones.du(z), (used, zones.du(z))
        return used

    with seal.output(cfg, "3C", "big", job="test:big", kind="test", expected_bytes=MiB) as o:
        for i in range(40):
            o.write(f"d{i % 4}/f{i}.bin", os.urandom(1000))
    agree()
    walked = _walked(monkeypatch)
    r = zones.reserve(cfg, "3C", "next", "test:next", 4096)
    assert str(z / "big") not in walked, walked  # the record, not a walk
    zones.release(cfg, r.zone, r.id)
    # a file added by hand to a sealed output: its directory changed, so it is walked, counted whole
    fill(z / "big" / "d1" / "by-hand.bin", 64 * 1024)
    before = len(walked)
    used = agree()
    assert str(z / "big") in walked[before:]
    assert used >= 40 * 4096 + 64 * 1024
    # a copy killed mid-way: its unsealed .tmp output is walked every time, counted as it grows
    fill(z / ".tmp" / "half" / "a.bin", 8192)
    agree()
    fill(z / ".tmp" / "half" / "b.bin", 8192)
    agree()
    # the same name, another directory: the record of the old inode is not taken for it
    zones.clean(cfg, "big", zone="3C")
    agree()
    sealed_output(cfg, "3C", "big", 3000)
    agree()
    # aside into the trash: still counted (by its record: the inode moved with it), then gone
    zones.clean(cfg, "big", zone="3C", aside=True)
    assert zones.trash_bytes(cfg, "3C") > 0
    agree()
    zones.empty_trash(cfg, ["3C"])
    agree()
    assert not any((cfg.ssd.root / "state" / "zone-bytes" / "3C").iterdir())  # no record outlives its output


def test_the_seal_records_its_outputs_bytes_from_its_own_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealing walks the output once: its verify's walk gives the recorded bytes (no `du` of it
    after), and the record is what `du` counts — a crashed seal's manifest and a link included —
    so neither the seal nor a later reservation walks it again."""
    cfg = zone_config(tmp_path)
    z = cfg.ssd.zone_path("3C")
    walked = _walked(monkeypatch)
    o = seal.begin(cfg, "3C", "once", job="test:once", kind="test", expected_bytes=MiB)
    for i in range(30):
        o.write(f"d{i % 3}/e{i % 2}/f{i}.bin", os.urandom(1000 + 500 * i))
    (o.tmp / seal.MANIFEST).write_bytes(os.urandom(70_000))  # a crashed seal's: replaced, counted as the new one
    o.link("to-mount", "/srv/hoard/views/v")
    o.seal()
    used = zones.zone_usage(cfg, "3C")["used_bytes"]
    assert str(z / "once") not in walked, walked
    [record] = (cfg.ssd.root / "state" / "zone-bytes" / "3C").iterdir()
    assert json.loads(record.read_bytes())["bytes"] == zones.du(z / "once")
    assert used == zones.du(z)


def test_a_file_rewritten_in_place_in_a_sealed_output_is_counted_at_the_recount(tmp_path: Path) -> None:
    """No directory changes when a sealed file grows in place: its record is trusted until
    RECOUNT_S old, then the output is walked again and counted whole (the file system's free
    space, checked by every reservation, guards the SSD meanwhile)."""
    cfg = zone_config(tmp_path)
    final = sealed_output(cfg, "3C", "out", 4096)
    z = cfg.ssd.zone_path("3C")
    with open(final / "data.bin", "ab") as f:
        f.write(os.urandom(256 * 1024))
    assert zones.zone_usage(cfg, "3C")["used_bytes"] < zones.du(z)  # trusted, inside RECOUNT_S
    [record] = (cfg.ssd.root / "state" / "zone-bytes" / "3C").iterdir()
    doc = json.loads(record.read_bytes())
    record.write_text(json.dumps(doc | {"at": doc["at"] - zones.RECOUNT_S - 1}))
    assert zones.zone_usage(cfg, "3C")["used_bytes"] == zones.du(z)


def test_a_dump_folder_entry_that_is_a_dangling_link_or_gone_does_not_break_the_listing(tmp_path: Path) -> None:
    """3B/db-dumps is judged complete by its newest entry's mtime: `stat` of each entry listed
    followed a link (a dangling one raised FileNotFoundError out of `hoard zones` and health)
    and raised for a dump's temporary name renamed between the listing and the stat. Each
    entry's own mtime is read now, and an entry gone meanwhile is passed over."""
    dumps = tmp_path / "db-dumps"
    dumps.mkdir()
    (dumps / "hoard-1.dump").write_bytes(b"dump")
    os.utime(dumps / "hoard-1.dump", (1_000_000, 1_000_000))
    (dumps / "stray").symlink_to(tmp_path / "nowhere")
    os.utime(dumps / "stray", (2_000_000, 2_000_000), follow_symlinks=False)
    assert zones._seal_of("3B", dumps) == ("db-dumps", 2_000_000)
    assert zones._mtime(dumps / "gone") is None
