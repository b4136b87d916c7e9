"""The store's lock files (hoardfs.base.files.flocked) as the services' user finds them after a
command was run as root beside them: a lock file root made, which the `hoard` user may only
read, is still a lock — taken through a read-only descriptor, excluding root's holder — instead
of failing every timer from then on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hoardfs.base.files import flocked
from tests.helpers import needs_reachable_checkout

#: as another user: take the lock without waiting; say "locked" or the error's name
TAKE = """
import os, sys
os.setgid(65534); os.setuid(65534)
from hoardfs.base.files import flocked
try:
    with flocked(__import__("pathlib").Path(sys.argv[1]), wait=False):
        print("locked")
except BlockingIOError:
    print("held")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.services  # starts a process as another user
@pytest.mark.skipif(os.geteuid() != 0, reason="makes a lock file as root and takes it as nobody")
def test_a_lock_file_root_made_is_taken_read_only_by_another_user() -> None:
    needs_reachable_checkout()  # the other user runs hoard's Python
    d = Path(tempfile.mkdtemp(prefix="hoard-locks-", dir="/var/tmp"))
    try:
        d.chmod(0o755)  # (the services' user may read the folder, not write it: as on an installed store)
        lock = d / "maintenance.lock"
        with flocked(lock):  # root's command makes it, 0640-ish: readable, not writable, by others
            lock.chmod(0o644)
            run = [sys.executable, "-c", TAKE, str(lock)]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            held = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
            assert held.stdout.strip() == "held", held.stdout + held.stderr  # root holds it: excluded
        free = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
        assert free.stdout.strip() == "locked", free.stdout + free.stderr  # was PermissionError
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_transient_lock_leaves_no_file_and_never_has_two_holders(tmp_path: Path) -> None:
    """A transient lock file is removed as its holder lets go; a waiter that got the lock of
    the removed file locks the new one a later comer made instead, so two threads never hold
    the lock at once (each thread has its own descriptor: flock excludes them as it does
    processes)."""
    import threading
    import time

    path = tmp_path / "x.submit.lock"
    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with flocked(path, transient=True):
            start = time.monotonic()
            time.sleep(0.15)
            spans.append((start, time.monotonic()))

    with flocked(path, transient=True):
        waiters = [threading.Thread(target=hold) for _ in range(2)]
        for t in waiters:
            t.start()
        time.sleep(0.2)  # both waiters have opened the file this holder removes
    late = [threading.Thread(target=hold) for _ in range(2)]  # these make a new file
    time.sleep(0.02)
    for t in late:
        t.start()
    for t in waiters + late:
        t.join(10)
    assert len(spans) == 4
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert not path.exists()
