"""`hoard put` keeps its promises under bad input: special files and dangling symlinks are
named rejects (never a hang), names are printed escaped, results stream as files are stored
(an interrupted run has printed exactly what it stored), a closed or full stdout is one line."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.terminal import as_foreground

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def _hoard(cfg: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, **kw)


def _store(tmp_path: Path) -> Path:
    cfg = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    Store.open(config.load(cfg), init=True).close()
    return cfg


def test_special_files_are_named_rejects_not_hangs(tmp_path: Path) -> None:
    """A FIFO named directly, and a FIFO, a socket and a dangling symlink inside a walked
    directory, are each rejected by name (exit 5) within seconds; the regular files are stored."""
    import socket

    cfg = _store(tmp_path)
    d = tmp_path / "in"
    good = make_files(d, 2, seed=1)
    os.mkfifo(d / "pipe")
    (d / "gone").symlink_to(tmp_path / "nowhere")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    fifo = tmp_path / "lonely.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    res = _hoard(cfg, "put", str(fifo), str(d))
    assert time.monotonic() - t0 < 30
    assert res.returncode == 5, res.stderr
    assert f"rejected {fifo}: a FIFO, not a regular file" in res.stderr
    assert f"rejected {d / 'pipe'}: a FIFO" in res.stderr
    assert f"rejected {d / 'sock'}: a socket" in res.stderr
    assert f"rejected {d / 'gone'}: a dangling symlink" in res.stderr
    assert "2 new" in res.stderr and "4 rejected" in res.stderr
    assert sorted(line.split()[0] for line in res.stdout.splitlines()) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in good)


def test_names_are_printed_escaped(tmp_path: Path) -> None:
    """A name with an ESC sequence or a newline is printed as `\\xNN`: one line per file, and
    nothing reaches the terminal as a control sequence."""
    cfg = _store(tmp_path)
    d = tmp_path / "in"
    d.mkdir()
    (d / "red\x1b[31mname").write_bytes(b"one")
    (d / "two\nlines").write_bytes(b"two")
    res = _hoard(cfg, "put", str(d))
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert any(line.endswith("red\\x1b[31mname") for line in lines)
    assert any(line.endswith("two\\x0alines") for line in lines)


def test_interrupted_put_printed_exactly_what_it_stored(tmp_path: Path) -> None:
    """Ctrl-C during a large put: exit 130 within seconds, and the sha256s printed are exactly
    the objects in the index — each readable; a re-run stores the rest."""
    cfg = _store(tmp_path)
    files = make_files(tmp_path / "in", 3000, seed=2, lo=20_000, hi=60_000)
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", str(tmp_path / "in")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_foreground)
    first = proc.stdout.readline()
    assert first.split()[1] == "new"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rest = proc.stdout.read()  # through the same reader: readline() may have buffered more lines
    errs = proc.stderr.read()
    proc.wait(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130, errs
    printed = {line.split()[0] for line in (first + rest).splitlines()}
    with Store.open(config.load(cfg), writable=False) as store:
        indexed = {sha.hex() for sha, _ in store.index.iter_objects()}
        assert printed == indexed and 0 < len(printed) < len(files)
        for sha in list(printed)[:50]:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
    again = _hoard(cfg, "put", str(tmp_path / "in"))
    assert again.returncode == 0 and f"{len(files) - len(printed)} new" in again.stderr


def test_closed_or_full_stdout(tmp_path: Path) -> None:
    """`| head -1` ends with 141 and no traceback; stdout on /dev/full is one line, exit 6; the
    objects were stored either way."""
    cfg = _store(tmp_path)
    files = make_files(tmp_path / "in", 300, seed=3)
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", str(tmp_path / "in")],
                            cwd=REPO, stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    with os.fdopen(r) as reader:
        reader.readline()
    errs = proc.communicate(timeout=60)[1]
    assert proc.returncode == 141 and "Traceback" not in errs, errs
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", str(files[0])], cwd=REPO,
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 6 and "cannot write the output: No space left on device" in res.stderr
    assert "Traceback" not in res.stderr
