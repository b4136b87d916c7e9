"""Ingest never stalls silently nor hangs: re-used batch ids, bad signals, batches with no good
file, Ctrl-C, no worker, Redis down — on real PostgreSQL, Redis, store and files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from tests.helpers import wait_until
from tests.terminal import as_foreground
from tests.test_ingest import ingest_home


def hoard(cfg: config.Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args],
                          capture_output=True, text=True, timeout=timeout)


def ingest_problems(cfg: config.Settings) -> list[str]:
    """The ingest lines among `hoard health`'s problems."""
    res = hoard(cfg, "health", "--json")
    return [p for p in json.loads(res.stdout)["problems"] if p.startswith("ingest ")]


def where(cfg: config.Settings, batch_id: str) -> tuple[str, str] | None:
    """(status, step) of a batch, None before it is submitted."""
    st = ua1.load_state(cfg, batch_id)
    return (st.status, st.step) if st else None


def drop(zone3a: Path, spec: Spec) -> list[Path]:
    """Generated batches dropped in 3A with their _READY signal."""
    return [zone3a / b.batch_id for b in generate(zone3a, spec)]


def test_reused_batch_id_is_refused_and_shown(hoard_home: Path, pg, redis_conn) -> None:
    """A batch dropped again under an id already ingested is refused (exit 5) naming the date and
    a free id, by `hoard ingest BATCH` and `--ready` alike; its signal is set aside once and health
    lists it until it is renamed; renamed, it ingests without the set-aside signal files."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    spec = Spec(seed=21, batches=1, items_per_batch=6, sources=("gallery",), large_max_mb=1, ready_signal=True)
    batch = drop(zone3a, spec)[0]
    ua1.submit(cfg, batch, None, redis_conn)
    ua1.work_here(cfg, redis_conn)
    assert ua1.load_state(cfg, batch.name).status == "done"
    drop(zone3a, spec)  # the scraper drops its next batch under the same name
    today = ua1.load_state(cfg, batch.name).report["finished_at"][:10]

    assert any(p.startswith(f"ingest {batch.name}: ") for p in ingest_problems(cfg))  # before anyone ran ingest
    res = hoard(cfg, "ingest", str(batch))
    assert res.returncode == ExitCode.DATA
    assert f"already ingested on {today}" in res.stderr and f"{batch.name}.2" in res.stderr
    assert (batch / ua1.REJECTED_SIGNAL).exists() and not (batch / ua1.SIGNAL).exists()
    assert "already ingested" in (batch / ua1.REASON_FILE).read_text()
    problem = next(p for p in ingest_problems(cfg) if p.startswith(f"ingest {batch.name}: "))
    assert "already ingested" in problem and f"write {ua1.SIGNAL} again" in problem
    assert hoard(cfg, "ingest", "--ready").returncode == 0  # the timer does not refuse it every 30 s

    (batch / ua1.SIGNAL).write_text("gallery\n")  # signalled again without renaming: refused again
    res = hoard(cfg, "ingest", "--ready")
    assert res.returncode == ExitCode.DATA and f"{batch.name}: " in res.stderr and "already ingested" in res.stderr
    assert not (batch / ua1.SIGNAL).exists()

    renamed = batch.rename(zone3a / f"{batch.name}.2")
    (renamed / ua1.REJECTED_SIGNAL).rename(renamed / ua1.SIGNAL)
    res = hoard(cfg, "ingest", "--ready", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    with Store.open(cfg, writable=False) as store:
        paths = {f["path"] for f in store.batch_manifest(renamed.name)["files"]}
    assert paths and not paths & {ua1.REJECTED_SIGNAL, ua1.REASON_FILE}
    assert ingest_problems(cfg) == []


def test_ready_takes_each_batch_on_its_own(hoard_home: Path, pg, redis_conn) -> None:
    """`--ready` sets aside the signals naming an unknown source (with "did you mean"), empty or
    unreadable, names each such batch on stderr and exits 5, while the good batches — one
    signalled `yt-dlp`, recorded as source ytdlp — are ingested."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    good = drop(zone3a, Spec(seed=22, batches=2, items_per_batch=5, sources=("gallery", "ytdlp"), large_max_mb=1,
                             ready_signal=True))
    (good[1] / ua1.SIGNAL).write_text("yt-dlp\n")  # the scraper's own name for itself
    bad = {"typo-1": "ytdpl\n", "empty-1": "", "unreadable-1": None}
    for name, signal_text in bad.items():
        (zone3a / name).mkdir()
        (zone3a / name / "a.png").write_bytes(b"\x89PNG" + bytes(100))
        if signal_text is None:
            (zone3a / name / ua1.SIGNAL).mkdir()  # reading it fails, even as root
        else:
            (zone3a / name / ua1.SIGNAL).write_text(signal_text)

    res = hoard(cfg, "ingest", "--ready", "--here")
    assert res.returncode == ExitCode.DATA, res.stdout + res.stderr
    said = {name: next(ln for ln in res.stderr.splitlines() if f"{name}:" in ln) for name in bad}
    assert "did you mean ytdlp?" in said["typo-1"] and "is empty" in said["empty-1"]
    assert "cannot be read" in said["unreadable-1"]
    assert all(f"write {ua1.SIGNAL} again" in line for line in said.values())
    for name in bad:
        assert (zone3a / name / ua1.REJECTED_SIGNAL).exists() and (zone3a / name / ua1.REASON_FILE).exists()
        assert (zone3a / name / "a.png").exists() and ua1.load_state(cfg, name) is None
    states = [ua1.load_state(cfg, d.name) for d in good]
    assert [s.status for s in states] == ["done", "done"] and states[1].source == "ytdlp"
    assert sorted(p.split(":")[0] for p in ingest_problems(cfg)) == [f"ingest {n}" for n in sorted(bad)]

    res = hoard(cfg, "ingest", "--ready", "--source", "ytdpl")
    assert res.returncode == ExitCode.USAGE and "did you mean ytdlp?" in res.stderr


def test_batch_with_no_accepted_file_fails_in_place(hoard_home: Path, pg, redis_conn) -> None:
    """A batch none of whose files is accepted (here: the wrong --source) ends `failed` with the
    reasons, every file still in 3A; ingested again with the right source it completes."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = drop(zone3a, Spec(seed=23, batches=1, items_per_batch=6, sources=("gallery",), large_max_mb=1,
                              ready_signal=True))[0]
    before = sorted(p.name for p in batch.iterdir())
    res = hoard(cfg, "ingest", str(batch), "--source", "ytdlp", "--here")
    assert res.returncode == ExitCode.DATA
    st = ua1.load_state(cfg, batch.name)
    assert st.status == "failed" and st.step == "scan" and "no file of batch" in st.error
    assert len(st.report["rejected"]) == len(before) - 1 and "not described by any" in str(st.report["rejected"])
    assert sorted(p.name for p in batch.iterdir()) == before
    assert not (zone3a / "_quarantine" / batch.name).exists()
    assert hoard(cfg, "ingest", "--status", batch.name).returncode == ExitCode.DATA

    res = hoard(cfg, "ingest", str(batch), "--source", "gallery", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert ua1.load_state(cfg, batch.name).status == "done" and not batch.exists()


def test_ctrl_c_under_here_stops_at_once_and_resumes(hoard_home: Path, pg, redis_conn) -> None:
    """Ctrl-C during `hoard ingest --here` (a second one right after) exits 130 within seconds,
    the batch marked interrupted at its step; `--resume --here` completes it, every file stored."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    [spec_batch] = generate(zone3a, Spec(seed=24, batches=1, items_per_batch=300, sources=("gallery",),
                                         large_fraction=0.3, large_max_mb=2, ready_signal=True))
    batch = zone3a / spec_batch.batch_id
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "ingest", str(batch),
                             "--here"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=as_foreground)
    wait_until(lambda: where(cfg, batch.name) == ("running", "store") or proc.poll() is not None, 120)
    assert proc.poll() is None, "the batch finished before it could be interrupted: make it bigger"
    time.sleep(0.1)  # inside put_many
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5 and proc.returncode == ExitCode.INTERRUPTED, stderr
    assert f"`hoard ingest --resume {batch.name} --here`" in stderr and "Traceback" not in stderr
    st = ua1.load_state(cfg, batch.name)
    assert st.status == "failed" and st.step == "store" and "interrupted during step store" in st.error
    assert batch.is_dir()

    res = hoard(cfg, "ingest", "--resume", batch.name, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert ua1.load_state(cfg, batch.name).status == "done"
    with Store.open(cfg, writable=False) as store:
        for item in spec_batch.items:
            assert hashlib.sha256(store.get(item.sha256)).hexdigest() == item.sha256


def test_ctrl_c_under_wait_leaves_the_batch_to_the_worker(hoard_home: Path, pg, redis_conn) -> None:
    """Ctrl-C during `hoard ingest --wait` exits 130 within seconds, saying the batch goes on in
    the worker — which then finishes it."""
    cfg = ingest_home(hoard_home, pg, settle_s=3)  # the scan looks twice, 3 s apart
    batch = drop(cfg.ssd.zone_path("3A"), Spec(seed=27, batches=1, items_per_batch=4, sources=("gallery",),
                                               large_max_mb=1, ready_signal=True))[0]
    hoard_cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    worker = subprocess.Popen(hoard_cmd + ["worker"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_until(lambda: not ua1.unserved_queues(redis_conn))
        proc = subprocess.Popen(hoard_cmd + ["ingest", str(batch), "--wait"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground)
        wait_until(lambda: where(cfg, batch.name) == ("running", "scan"))
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10 and proc.returncode == ExitCode.INTERRUPTED, stderr  # 1–2 s alone; 6.6 s seen under a loaded machine
        assert f"{batch.name} (running at step scan) goes on in the worker" in stderr
        wait_until(lambda: where(cfg, batch.name) == ("done", "finish"))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # a warm shutdown: the worker is idle by now
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # (still busy on a loaded machine) never left to take later tests' jobs
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            raise


def test_no_worker_is_said_not_waited_for(hoard_home: Path, pg, redis_conn) -> None:
    """With no worker running, `--resume` says so and how to start one; `--wait` refuses at once
    (exit 3) instead of waiting an hour; the batch stays queued and `--here` finishes it."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batch = drop(zone3a, Spec(seed=25, batches=1, items_per_batch=4, sources=("gallery",), large_max_mb=1,
                              ready_signal=True))[0]
    t0 = time.monotonic()
    res = hoard(cfg, "ingest", str(batch), "--wait")
    assert res.returncode == ExitCode.UNAVAILABLE and time.monotonic() - t0 < 30
    assert "no worker serves" in res.stderr and "`hoard worker`" in res.stderr and "--here" in res.stderr
    res = hoard(cfg, "ingest", "--resume", batch.name)
    assert res.returncode == 0 and "no worker serves" in res.stderr and "--here" in res.stderr
    assert ua1.load_state(cfg, batch.name).status == "queued"
    assert hoard(cfg, "ingest", "--resume", batch.name, "--here").returncode == 0
    assert ua1.load_state(cfg, batch.name).status == "done"


def test_stalled_batches_are_health_problems(hoard_home: Path, pg, redis_conn) -> None:
    """A batch recorded as queued whose job Redis lost, or which waits on a queue no worker
    serves, is a health problem naming `--resume`; resumed and run, health is clean."""
    cfg = ingest_home(hoard_home, pg)
    batch = drop(cfg.ssd.zone_path("3A"), Spec(seed=28, batches=1, items_per_batch=3, sources=("gallery",),
                                               large_max_mb=1, ready_signal=True))[0]
    ua1.submit(cfg, batch, None, redis_conn)
    [problem] = ingest_problems(cfg)
    assert problem.startswith(f"ingest {batch.name}: queued at step scan but waits on the ingest queue")
    redis_conn.flushdb()  # Redis restarted without its data
    [problem] = ingest_problems(cfg)
    assert "no job runs its step" in problem and f"`hoard ingest --resume {batch.name}`" in problem
    assert hoard(cfg, "ingest", "--resume", batch.name, "--here").returncode == 0
    assert ingest_problems(cfg) == []


def test_redis_down_is_one_line(hoard_home: Path, pg) -> None:
    """With Redis unreachable every form of `hoard ingest` that queues and `hoard worker --burst`
    prints one line naming Redis and what to do (exit 3), and no batch is left recorded as
    queued (`--here` needs no Redis: tests/test_ingest_faults.py)."""
    cfg = ingest_home(hoard_home, pg)
    text = Path(cfg.source).read_text()
    redis_line = next(ln for ln in text.splitlines() if ln.startswith("redis_url = "))
    Path(cfg.source).write_text(text.replace(redis_line, f'redis_url = "unix://{hoard_home}/no/redis.sock"'))
    cfg = config.load(cfg.source)
    batch = drop(cfg.ssd.zone_path("3A"), Spec(seed=26, batches=1, items_per_batch=3, sources=("gallery",),
                                               large_max_mb=1, ready_signal=True))[0]
    for args in ([str(batch)], ["--ready"], [str(batch), "--wait"],
                 ["--resume", batch.name], ["worker", "--burst"]):
        res = hoard(cfg, *(args if args[0] == "worker" else ["ingest", *args]))
        assert res.returncode == ExitCode.UNAVAILABLE, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Redis at" in lines[0] and "start it" in lines[0], (args, res.stderr)
        assert ua1.load_state(cfg, batch.name) is None
