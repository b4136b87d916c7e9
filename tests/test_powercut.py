"""Power cuts replayed on the disk lab: acknowledged objects survive a cut at any moment.

A writer process stores small files in many `put_many` calls on three direct-IO lab HDDs,
with the SSD (index, locks, pins) on a fourth lab disk, and appends each call's sha256s to
an acknowledgement log outside the lab (fsynced) once the call returned. The test cuts the
power at ≥ 50 moments spread over the run (it stops the writer, copies every image, lets it
go on — see tests/lab.py), then replays each cut: the copies are mounted (journal replay),
a store is opened on them (recovery runs), and every object acknowledged before that cut
must read back with its sha256, every index entry must verify, no shard may stay open, and
a second open must find nothing left to recover. A second test cuts replicate and gc the
same way. About 1.5–2 minutes in all.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsd import config
from fsd.store import Store
from tests.conftest import make_files, write_config
from tests.lab import DiskProfile
from tests.test_store import check_store

REPO = Path(__file__).resolve().parent.parent
DISKS = (DiskProfile("hdd1", 112, 0, 0, 0), DiskProfile("hdd2", 96, 0, 0, 0), DiskProfile("hdd3", 96, 0, 0, 0),
         DiskProfile("ssd", 64, 0, 0, 0))
CUTS = 52

WRITER = """
import os, sys
from pathlib import Path
from fsd import config
from fsd.store import Store
cfg = config.load(sys.argv[1]); acks = sys.argv[2]; files = open(sys.argv[3]).read().split()
fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for i in range(0, len(files), 25):
    with Store.open(cfg) as store:
        res = store.put_many(files[i:i + 25])
    # acknowledged: put_many returned (and the store closed); only now does the test count them
    os.write(fd, (" ".join(r.sha256 for r in res if r.status != "rejected") + "\\n").encode())
    os.fsync(fd)
print("done", flush=True)
"""


def _lab(lab_factory):
    from tests.lab import Lab

    lab = lab_factory(DISKS)
    if not lab.direct_io:  # the fixture's labs are buffered; power cuts need direct IO
        lab.close()
        lab = Lab(DISKS, throttle=False, direct_io=True)
    return lab


def _config(root: Path, mounts: dict[str, Path], **store) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_config(root, [(label, mounts[label], None) for label in ("hdd1", "hdd2", "hdd3")],
                        allow_dirs=False, ssd_root=mounts["ssd"] / "ssd", **store)


def _acked(log: Path) -> list[str]:
    """The sha256s of complete acknowledgement lines (a line the writer was cut in does not count)."""
    text = log.read_text() if log.exists() else ""
    return [sha for line in text.split("\n")[:-1] for sha in line.split()]


def _cut_while(proc: subprocess.Popen, lab, log: Path, cuts: int, spacing: float) -> list[tuple[Path, list[str]]]:
    """Cut the power `cuts` times while `proc` runs: stop it, count the acknowledgements,
    copy the images, let it go on."""
    taken = []
    rng = random.Random(7)
    while log.name != "none.log" and proc.poll() is None and not _acked(log):
        time.sleep(0.01)  # a few cuts before the first acknowledgement would test little
    while proc.poll() is None and len(taken) < cuts:
        time.sleep(rng.uniform(0.2, 1.8) * spacing)
        try:
            os.kill(proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            break
        try:
            acked = _acked(log)
            taken.append((lab.power_cut(f"cut{len(taken):03d}"), acked))
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    return taken


def _replay(lab, cut: Path, acked: list[str], store_opts: dict) -> None:
    """Mount a cut, open the store on it (recovery), check every acknowledged object."""
    try:
        mounts = lab.mount_cut(cut)
        cfg = config.load(_config(cut / "cfg", mounts, **store_opts))
        with Store.open(cfg) as store:
            for sha in acked:
                assert hashlib.sha256(store.get(sha)).hexdigest() == sha, f"{cut.name}: {sha} lost"
            check_store(store)
            unsealed = [m for m in store.index.iter_shards() if not m.sealed]
            assert unsealed == [], (f"{cut.name}: open shards left after recovery: {unsealed}; files: "
                                    + str([(p, p.stat().st_size) for d in store.disks.values()
                                           for p in (d.root / "shards").rglob(f"{unsealed[0].hex}*")])
                                    + f"; events: {store.index.recent_events(8)}")
            events = [e for e in store.index.recent_events(500) if e["kind"] == "recovery_incomplete"]
            assert events == [], events
            left = [p for d in store.disks.values() for p in (d.root / "shards").rglob("*.open")]
            assert left == [], left
            recovered = sum(e["kind"] == "recovered_shard" for e in store.index.recent_events(1000))
        with Store.open(cfg) as store:  # a second start finds nothing more to do
            assert sum(e["kind"] == "recovered_shard" for e in store.index.recent_events(1000)) == recovered
    finally:
        lab.drop_cut(cut)


@pytest.mark.expect_log(r"set aside to", level="WARNING", optional=True)  # a replica the cut tore, renamed aside
def test_power_cuts_during_batch_writes(lab_support, tmp_path: Path) -> None:
    """≥ 50 power cuts during a stream of batch writes: every acknowledged object survives each."""
    from tests.lab import Lab

    with Lab(DISKS, throttle=False, direct_io=True) as lab:
        mounts = {label: d.mountpoint for label, d in lab.disks.items()}
        opts = {"shard_size_mb": 1, "write_ack": 2, "copy_of_raw": 2}
        cfg_path = _config(tmp_path / "live", mounts, **opts)
        Store.open(config.load(cfg_path), init=True).close()
        files = make_files(tmp_path / "in", 2500, seed=41, lo=2_000, hi=30_000)
        listing = tmp_path / "files.txt"
        listing.write_text("\n".join(map(str, files)))
        log = tmp_path / "acks.log"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(cfg_path), str(log), str(listing)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cuts = _cut_while(proc, lab, log, CUTS, spacing=0.05)
        finally:
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert len(cuts) >= 50, f"only {len(cuts)} cuts before the writer finished; slow it or cut faster"
        assert all(acked for _, acked in cuts) and len(cuts[-1][1]) > len(cuts[0][1])
        for cut, acked in cuts:
            _replay(lab, cut, acked, opts)


MAINTENANCE = """
import sys
from fsd import config
from fsd.gc import gc
from fsd.replicate import replicate_once
from fsd.store import Store
with Store.open(config.load(sys.argv[1])) as store:
    replicate_once(store, budget_s=600, rate_mb_s=None)
    gc(store, threshold=0.99)
print("done", flush=True)
"""


def test_power_cuts_during_replicate_and_gc(lab_support, tmp_path: Path) -> None:
    """Cuts while the replicator copies shards and gc compacts them: every object acknowledged
    and still referenced (batch "keep") reads back after each cut."""
    import json

    from fsd.deletion import drop_batch
    from tests.lab import Lab

    with Lab(DISKS, throttle=False, direct_io=True) as lab:
        mounts = {label: d.mountpoint for label, d in lab.disks.items()}
        opts = {"shard_size_mb": 1, "write_ack": 2, "copy_of_raw": 3}
        cfg_path = _config(tmp_path / "live", mounts, **opts)
        with Store.open(config.load(cfg_path), init=True) as store:
            res = store.put_many(make_files(tmp_path / "in", 1200, seed=42, lo=5_000, hi=30_000))
            keep, drop = res[::2], res[1::2]
            for name, part in (("keep", keep), ("drop", drop)):
                body = json.dumps({"files": [{"path": str(i), "sha256": r.sha256, "size": r.size}
                                             for i, r in enumerate(part)]}).encode()
                store.register_batch(name, {"source": "t", "manifest": store.put_bytes(body).sha256,
                                            "files": len(part), "bytes": 0})
            drop_batch(store, "drop")
        acked = [r.sha256 for r in keep]
        proc = subprocess.Popen([sys.executable, "-c", MAINTENANCE, str(cfg_path)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cuts = _cut_while(proc, lab, tmp_path / "none.log", 12, spacing=0.15)
        finally:
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert len(cuts) >= 6, f"only {len(cuts)} cuts landed during the maintenance run"
        for cut, _ in cuts:
            _replay(lab, cut, acked, opts)
