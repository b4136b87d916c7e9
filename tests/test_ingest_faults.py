"""`hoard ingest --here` under the faults the chaos suite found it printing tracebacks for
(seeds 112, 129, 154: Redis stopped, PostgreSQL stopped, a disk dying with EIO): one line
naming the cause, the batch failed at its step, and a re-run after the repair completes it
with nothing lost — on real PostgreSQL, store, lab disks and files."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from tests.test_ingest import ingest_home

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services


def hoard(cfg_path: str | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=timeout)


def drop_batch(cfg: config.Settings, seed: int, items: int = 8):
    """A synthetic gallery-dl batch in 3A with its _READY signal: (its directory, sha256 → size)."""
    batch = generate(cfg.ssd.zone_path("3A"), Spec(seed=seed, batches=1, items_per_batch=items,
                                                   sources=("gallery",), large_max_mb=1, ready_signal=True))[0]
    return cfg.ssd.zone_path("3A") / batch.batch_id, {i.sha256: i.size for i in batch.items}


def assert_ingested(cfg: config.Settings, folder: Path, files: dict[str, int]) -> None:
    """The batch is done, gone from 3A, packaged in 3B, and every file of it reads back."""
    st = ua1.load_state(cfg, folder.name)
    assert st.status == ua1.Status.DONE.value, (st.status, st.step, st.error)
    assert not folder.exists() and (cfg.ssd.zone_path("3B") / folder.name).is_dir()
    with Store.open(cfg, writable=False) as store:
        for sha, size in files.items():
            data = store.get(sha)
            assert len(data) == size and hashlib.sha256(data).hexdigest() == sha


def set_url(cfg_path: str | Path, key: str, value: str) -> None:
    """Replace `key = …` in the hoard.toml."""
    text = Path(cfg_path).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{key} = "))
    Path(cfg_path).write_text(text.replace(line, f"{key} = {json.dumps(value)}"))


def test_here_runs_without_redis(hoard_home: Path, pg) -> None:
    """`ingest --here` runs the steps in its own process: with Redis unreachable (stopped under
    it, seed 112) the batch is ingested all the same, and nothing waits in Redis afterwards."""
    cfg = ingest_home(hoard_home, pg)
    set_url(cfg.source, "redis_url", f"unix://{hoard_home}/no/redis.sock")
    folder, files = drop_batch(cfg, seed=41)
    res = hoard(cfg.source, "ingest", str(folder), "--here")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert_ingested(cfg, folder, files)


def test_database_down_under_here_is_one_line_then_resumes(hoard_home: Path, pg) -> None:
    """PostgreSQL unreachable at the apply step (stopped under it, seed 129): `ingest --here`
    exits 3 with the batch failed at `apply` and one line naming PostgreSQL and `--resume
    … --here`, no traceback; the files stay in 3A; the same command once the database is back
    completes the batch."""
    cfg = ingest_home(hoard_home, pg)
    folder, files = drop_batch(cfg, seed=42)
    good = Path(cfg.source).read_text()
    set_url(cfg.source, "database_url", f"host={hoard_home}/no-pg dbname=nothing connect_timeout=2")
    res = hoard(cfg.source, "ingest", str(folder), "--here")
    assert res.returncode == ExitCode.UNAVAILABLE and "Traceback" not in res.stderr + res.stdout, res.stderr
    assert "error: PostgreSQL unreachable" in res.stdout and f"--resume {folder.name} --here" in res.stdout
    st = ua1.load_state(cfg, folder.name)
    assert (st.status, st.step, st.done) == (ua1.Status.FAILED.value, "apply", ["scan", "store"])
    assert folder.is_dir()
    Path(cfg.source).write_text(good)  # the database is back
    res = hoard(cfg.source, "ingest", str(folder), "--here")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert_ingested(cfg, folder, files)


def test_disk_error_under_here_names_the_disk_then_resumes(hoard_home: Path, pg, monkeypatch) -> None:
    """A store disk answering EIO where the store does not handle it yet (seed 154: the batch
    pointer of the package step, written to a dying disk the store had not marked failed):
    `ingest --here` exits 3 with the batch failed at `package`, one line naming the disk and
    `--resume … --here`, no traceback; the same command then completes the batch.

    The EIO is raised by hand at that point: a truncated lab image answers it there only when
    the disk's metadata is not cached, which the chaos run met by timing."""
    cfg = ingest_home(hoard_home, pg)
    folder, files = drop_batch(cfg, seed=43, items=12)
    hdd1 = next(d for d in cfg.disks if d.label == "hdd1")

    def dying(store: Store, batch_id: str, info, **_kw) -> None:
        raise OSError(errno.EIO, "Input/output error", str(hdd1.path / "batches"))

    monkeypatch.setattr(Store, "register_batch", dying)
    st = ua1.submit(cfg, folder, None, queue=False)
    assert ua1.run_here(cfg, st.batch_id) == ExitCode.UNAVAILABLE
    st = ua1.load_state(cfg, folder.name)
    assert (st.status, st.step, st.done) == (ua1.Status.FAILED.value, "package", ["scan", "store", "apply"])
    assert st.error.startswith("disk hdd1: Input/output error (") and "hoard disks replace hdd1" in st.error
    assert folder.is_dir()  # nothing left 3A
    monkeypatch.undo()  # the disk replaced
    assert ua1.run_here(cfg, st.batch_id) == ExitCode.OK
    assert_ingested(cfg, folder, files)



def test_finish_cut_after_its_cleanup_resumes(hoard_home: Path, pg) -> None:
    """A power cut during the last step after it removed its work files but before the state
    said done (chaos seed 306): the batch stood "running at step finish" and every `--resume
    --here` exited 3 — the step read the work file it had removed. It goes on from where it
    was: done, the event sent once, every file readable."""
    cfg = ingest_home(hoard_home, pg)
    folder, files = drop_batch(cfg, seed=44)
    st = ua1.submit(cfg, folder, None, queue=False)
    assert ua1.run_here(cfg, st.batch_id) == ExitCode.OK
    st = ua1.load_state(cfg, folder.name)
    assert "finished_at" in st.report and not ua1.work_path(cfg, st.batch_id, "stored").exists()
    st.step, st.status, st.done = "finish", ua1.Status.RUNNING.value, st.done[:-1]  # the state the cut left
    ua1.save_state(cfg, st)
    res = hoard(cfg.source, "ingest", "--resume", folder.name, "--here")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert_ingested(cfg, folder, files)
    with psycopg.connect(cfg.database_url) as conn:
        n = conn.execute("SELECT count(*) FROM action_event WHERE batch_id = %s AND status = 'done'",
                         [folder.name]).fetchone()
    assert n == (1,)


DIE_BEFORE_RELEASE = """
import os, sys
from hoardfs.fsd.outputs import zones
zones.release = lambda cfg, zone, output_id: os._exit(9)  # killed after the manifest, before the release
from hoardfs.cli.entry import main
sys.argv = ["hoard", *sys.argv[1:]]
main()
"""


def test_package_killed_between_its_manifest_and_its_release_resumes_without_a_stale_reservation(
        hoard_home: Path, pg) -> None:
    """The package step killed after it wrote the 3B manifest (the package's seal) and before it
    released its 3B reservation: `--resume` goes on from the manifest and releases the
    reservation the dead run left; `hoard health` names no zone problem afterwards."""
    cfg = ingest_home(hoard_home, pg)
    folder, files = drop_batch(cfg, seed=45)
    died = subprocess.run([sys.executable, "-c", DIE_BEFORE_RELEASE, "--config", str(cfg.source), "ingest",
                           str(folder), "--here"], capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stdout + died.stderr
    assert (cfg.ssd.zone_path("3B") / folder.name / f"{folder.name}.manifest.json").is_file()
    res = hoard(cfg.source, "ingest", "--resume", folder.name, "--here")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert_ingested(cfg, folder, files)
    report = json.loads(hoard(cfg.source, "health", "--json").stdout)
    assert not [p for p in report["problems"] if p.startswith("zone ")], report["problems"]


DIE_AT_FINISH = """
import os, sys
from hoardfs.jobs import ingest
ingest._STEPS["finish"] = lambda cfg, st: os._exit(9)  # killed as the last step starts
from hoardfs.cli.entry import main
sys.argv = ["hoard", *sys.argv[1:]]
main()
"""


def test_finish_copies_again_what_a_failed_disk_held_then_empties_3a(hoard_home: Path, pg) -> None:
    """A disk holding copies of the batch failed between the store step and finish (chaos seed
    805: it was replaced and forgotten, and a shard the writer had sealed without it stayed at
    one copy): `--resume` copies those shards to other disks itself, then finishes — it exited
    5, "fewer than 2 replicas", until someone ran `hoard replicate`."""
    from hoardfs.fsd.core.disks import DiskState

    cfg = ingest_home(hoard_home, pg)
    folder, files = drop_batch(cfg, seed=46)
    died = subprocess.run([sys.executable, "-c", DIE_AT_FINISH, "--config", str(cfg.source), "ingest", str(folder),
                           "--here"], capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stdout + died.stderr
    with Store.open(cfg) as store:
        loc = store.index.lookup(bytes.fromhex(next(iter(files))))
        victim = store.disks[store.index.get_shard(loc.shard_id).replicas[0]].label
        store.set_disk_state(victim, DiskState.FAILED, "test: failed after the store step")
    res = hoard(cfg.source, "ingest", "--resume", folder.name, "--here")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert_ingested(cfg, folder, files)
    with Store.open(cfg, writable=False) as store:
        for sha in files:
            meta = store.index.get_shard(store.index.lookup(bytes.fromhex(sha)).shard_id)
            assert store.readable_replicas(meta) >= cfg.store.write_ack, sha


TOP_UP = """
import json, sys
from hoardfs.base import config
from hoardfs.jobs.ingest.steps import _top_up
stored = {k: tuple(v) for k, v in json.loads(sys.argv[2]).items()}
print(json.dumps(_top_up(config.load(sys.argv[1]), stored, sorted(stored))))
"""


def test_finish_counts_copies_on_the_disk_states_after_its_top_up(tmp_path: Path) -> None:
    """finish's top-up waits for the maintenance lock (a gc or rebuild holds it) with the disk
    states it read when it opened the store; a disk another process fails meanwhile still
    counted as readable, so the batch looked whole and 3A was emptied with one readable copy
    of each file. The count after the top-up reads the disks' states again."""
    import fcntl
    import os
    import time

    from hoardfs.fsd.core import storelock
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.core.layout import lock_root
    from tests.helpers import dir_disks_config, make_files

    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=8))
    with Store.open(cfg, init=True) as store:
        files = make_files(tmp_path / "in", 20)
        stored = {p.name: (r.sha256, r.size) for p, r in zip(files, store.put_many(files), strict=True)}
        meta = store.index.get_shard(store.index.lookup(bytes.fromhex(next(iter(stored.values()))[0])).shard_id)
        first, second = (store.disks[u].label for u in meta.replicas)
        store.set_disk_state(first, DiskState.FAILED, "test: failed before finish")
    gate = lock_root(cfg) / "locks" / f"{storelock.MAINTENANCE}.gate"
    with storelock.exclusive(lock_root(cfg), "test: a gc", name=storelock.MAINTENANCE):
        proc = subprocess.Popen([sys.executable, "-c", TOP_UP, str(cfg.source), json.dumps(stored)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        probe = os.open(gate, os.O_RDWR)
        try:  # the top-up holds the gate while it waits for the lock: its store is open by then
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(probe, fcntl.LOCK_UN)
                    time.sleep(0.05)
                except BlockingIOError:
                    break
            else:
                pytest.fail("the top-up never waited for the maintenance lock: " + proc.communicate()[1])
        finally:
            os.close(probe)
        with Store.open(cfg) as store:  # the mount's reader, say, saw EIO from the other copy's disk
            store.set_disk_state(second, DiskState.FAILED, "test: failed during the top-up")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == sorted(stored), "files with one readable copy were taken as whole"
