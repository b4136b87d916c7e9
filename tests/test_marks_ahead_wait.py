"""Records a killed writer left in the marks logs (appended inside its transaction, never
committed): `hoard check` gave any writer AHEAD_WAIT_S to commit them, once per disk holding
one — every check of a store with such records waited 5 s per disk, though no writer was left.
It now waits only while a writer holds the store, and once for all the disks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.io import integrity
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, make_files

#: a writer killed right after its marks records reached every disk, before its commit
APPEND_THEN_DIE = """
import os, sys
from hoardfs.base import config
from hoardfs.fsd.io import copies
from hoardfs.fsd.store import Store

append = copies.log_marks

def append_then_die(*args, **kwargs):
    append(*args, **kwargs)
    os._exit(9)

copies.log_marks = append_then_die
store = Store.open(config.load(sys.argv[1]))
store.index.mark(store.index.hidden, [bytes.fromhex(sys.argv[2])], "test: killed before its commit")
"""

AHEAD = "stamped after anything the index gave out"


def _killed_writer(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store of three directory disks (made unless there) whose every marks log ends in a
    record never committed."""
    cfg_path = dir_disks_config(tmp_path, 3)
    with Store.open(config.load(cfg_path), init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 4, seed=8))]
    res = subprocess.run([sys.executable, "-c", APPEND_THEN_DIE, str(cfg_path), shas[0]], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 9, res.stderr[-2000:]
    return cfg_path, shas


@pytest.mark.services  # starts hoard processes
def test_records_no_writer_can_commit_are_named_at_once(tmp_path: Path) -> None:
    """No writer holds the store: `hoard check` names each disk's record ahead at once (old
    code: it waited AHEAD_WAIT_S for each of the three disks first)."""
    cfg_path, _ = _killed_writer(tmp_path)
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "check", "--no-database",
                          "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    doc = json.loads(res.stdout)
    assert res.returncode == 5 and len([p for p in doc["problems"] if AHEAD in p]) == 3, doc["problems"]
    assert doc["seconds"] < integrity.AHEAD_WAIT_S, doc["seconds"]  # old code: over 3 × 5 s


#: a writer that holds the store (its lock, shared) until its stdin closes
HOLD = """
import sys
from hoardfs.base import config
from hoardfs.fsd.store import Store

with Store.open(config.load(sys.argv[1])):
    print("open", flush=True)
    sys.stdin.read()
"""


@pytest.mark.services  # starts hoard processes
def test_beside_a_writer_records_ahead_are_waited_for_once(tmp_path: Path, monkeypatch) -> None:
    """A writer holds the store (its records may be committing): the check waits AHEAD_WAIT_S
    once for all the disks, not once per disk, and then names the records still ahead."""
    monkeypatch.setattr(integrity, "AHEAD_WAIT_S", 1.0)
    cfg_path = dir_disks_config(tmp_path, 3)
    Store.open(config.load(cfg_path), init=True).close()
    # (opened before the records are left: a writer's open mends what it finds)
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        _killed_writer(tmp_path)
        with Store.open(config.load(cfg_path), writable=False) as store:
            t0 = time.monotonic()
            rep = check(store)
            took = time.monotonic() - t0
    finally:
        writer.communicate("", timeout=60)
    assert len([p for p in rep.problems if AHEAD in p]) == 3, rep.problems
    assert 1.0 <= took < 2.5, took  # old code: 3 × 1 s
