"""The store-wide locks (hoardfs.fsd.core.storelock): shared holders, exclusive requests refused with the
holders named, and no window in which a failed upgrade leaves a process unprotected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.fsd.core import storelock
from hoardfs.fsd.core.storelock import StoreBusy

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pathlib import Path
from hoardfs.fsd.core import storelock
storelock.acquire_shared(Path(sys.argv[1]), "child holder")
print("held", flush=True)
sys.stdin.readline()
"""

TRY_EXCLUSIVE = """
import sys
from pathlib import Path
from hoardfs.fsd.core import storelock
try:
    with storelock.exclusive(Path(sys.argv[1]), "third", wait_s=0.2):
        print("got it")
except storelock.StoreBusy as e:
    print("refused:", e.message)
"""


def _child(code: str, root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_upgrade_refused_keeps_the_shared_hold(tmp_path: Path) -> None:
    """While another process shares the lock, this process's upgrade is refused naming it — and
    this process still holds its shared lock afterwards (a third process's exclusive request is
    refused naming us), which a plain flock conversion would have dropped."""
    storelock.acquire_shared(tmp_path, "parent holder")
    child = _child(HOLD, tmp_path)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy) as e:
            with storelock.exclusive(tmp_path, "gc swap", wait_s=0.3):
                pass
        assert f"pid {child.pid}" in e.value.message and "child holder" in e.value.message
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(10)
        third = subprocess.run([sys.executable, "-c", TRY_EXCLUSIVE, str(tmp_path)], cwd=REPO,
                               capture_output=True, text=True)
        assert third.stdout.startswith("refused:") and f"pid {os.getpid()}" in third.stdout, third.stdout
        with storelock.exclusive(tmp_path, "gc swap"):  # alone now: the upgrade works
            assert json.loads(storelock._get(tmp_path, storelock.STORE).holder_path().read_text())["mode"] \
                == "exclusive"
        third = subprocess.run([sys.executable, "-c", TRY_EXCLUSIVE, str(tmp_path)], cwd=REPO,
                               capture_output=True, text=True)
        assert third.stdout.startswith("refused:"), "back to shared after the exclusive section"
    finally:
        child.kill()
        storelock.release_shared(tmp_path)
    third = subprocess.run([sys.executable, "-c", TRY_EXCLUSIVE, str(tmp_path)], cwd=REPO, capture_output=True,
                           text=True)
    assert third.stdout.strip() == "got it"


def test_stale_holder_files_are_ignored(tmp_path: Path) -> None:
    """A holder file left by a process that died (its flock died with it) does not block and
    is removed when holders are listed."""
    (tmp_path / "locks").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "locks" / f"store.{dead.stdout.strip()}.holder"
    stale.write_text(json.dumps({"pid": int(dead.stdout), "command": "x", "mode": "shared", "since": "then"}))
    assert storelock.holders(tmp_path) == []
    assert not stale.exists()
    with storelock.exclusive(tmp_path, "index rebuild"):
        pass


#: a process holding the lock file shared without a holder file of its own — what `taken`
#: (hoard health's probe for a running index rebuild) does for a moment — for argv[2] seconds
PROBE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
print("probing", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _probe(tmp_path: Path, name: str, seconds: float) -> subprocess.Popen:
    lock = tmp_path / "locks" / f"{name}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    child = subprocess.Popen([sys.executable, "-c", PROBE, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "probing"
    return child


def test_a_probe_of_a_moment_does_not_refuse_an_index_rebuild(tmp_path: Path) -> None:
    """`hoard health` probes the readers lock (`taken`: a shared flock for a moment, no holder
    file) to tell a running index rebuild; an index rebuild asking for it exclusively at that
    moment (wait 0) was refused, "held by a process that left no holder file". Now a lock no
    holder file names is waited for a moment (MOMENT_S)."""
    child = _probe(tmp_path, storelock.READERS, 0.2)
    try:
        with storelock.exclusive(tmp_path, "hoard index rebuild", storelock.READERS):
            assert child.wait(5) == 0  # the probe had ended: it was waited for, not overrun
    finally:
        child.kill()


def test_a_lock_held_longer_by_a_process_without_holder_file_is_still_refused(tmp_path: Path) -> None:
    """The moment's wait is a moment: a holder that names itself nowhere and keeps the lock is
    refused after MOMENT_S, with the line that says so."""
    child = _probe(tmp_path, storelock.READERS, 30)
    try:
        with pytest.raises(StoreBusy) as e:
            with storelock.exclusive(tmp_path, "hoard index rebuild", storelock.READERS):
                pass
        assert "a process that left no holder file" in e.value.message
    finally:
        child.kill()
