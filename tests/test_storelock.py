"""The store-wide locks (fsd.core.storelock): shared holders, exclusive requests refused with the
holders named, and no window in which a failed upgrade leaves a process unprotected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.core import storelock
from fsd.core.storelock import StoreBusy

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pathlib import Path
from fsd.core import storelock
storelock.acquire_shared(Path(sys.argv[1]), "child holder")
print("held", flush=True)
sys.stdin.readline()
"""

TRY_EXCLUSIVE = """
import sys
from pathlib import Path
from fsd.core import storelock
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
