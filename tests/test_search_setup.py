"""Text → image search as an opt-in: `hoard health` says whether it can run here — a note where it
is not set up, a warning (never a problem) where it is configured and cannot run — and a
torchvision that does not import beside its torch is one line, not a torchvision traceback
(docs/search.md, Install)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import needs_search

REPO = Path(__file__).resolve().parent.parent
#: an open_clip that fails at import as one beside a torch of another build does
BROKEN = 'raise RuntimeError("operator torchvision::nms does not exist")\n'

pytestmark = pytest.mark.services  # `hoard health` against the test servers


def _health(home: Path, *env: tuple[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), "health", "--json"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **dict(env)}, cwd=home)
    return done, json.loads(done.stdout)


def _init(home: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), "init"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@needs_search
def test_health_notes_search_that_is_not_configured_and_warns_where_it_cannot_run(
        hoard_home: Path, tmp_path: Path) -> None:
    """No search.clip_weights: `search` in the report is a note ("no weights configured"), in no
    problem and no warning; weights configured and open_clip failing at import: a warning naming
    the error and `make search`, the problems unchanged; weights configured and open_clip
    importing: ready."""
    _init(hoard_home)
    _, plain = _health(hoard_home)
    s = plain["search"]
    assert (s["installed"], s["configured"], s["ready"]) == (True, False, False), s
    assert "no weights configured" in s["note"]
    assert not any("search" in w for w in plain["warnings"] + plain["problems"])

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    with open(hoard_home / "hoard.toml", "a") as fh:
        fh.write(f'\n[search]\nclip_weights = "{weights}"\ndevice = "cpu"\n')
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "open_clip.py").write_text(BROKEN)
    _, broken = _health(hoard_home, ("PYTHONPATH", str(fake)))
    assert broken["search"]["imports"] is False and broken["search"]["ready"] is False
    said = [w for w in broken["warnings"] if w.startswith("search: ")]
    assert len(said) == 1 and "operator torchvision::nms does not exist" in said[0] and "make search" in said[0], said
    assert broken["problems"] == plain["problems"]

    _, ready = _health(hoard_home)
    assert ready["search"]["ready"] is True and ready["search"]["note"] == "ready", ready["search"]
    assert not any(w.startswith("search: ") for w in ready["warnings"])


def test_an_open_clip_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    """`open_clip_module` where open_clip fails at import (torchvision's operators missing): the
    ClipError line naming the error and `make search`, no traceback."""
    (tmp_path / "open_clip.py").write_text(BROKEN)
    code = ("import sys; sys.modules.pop('open_clip', None)\n"
            "from hoardfs.jobs import clip_model\n"
            "try:\n    clip_model.open_clip_module()\n"
            "except clip_model.ClipError as e:\n    print(e.message)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.count("\n") == 1, done.stdout
    assert "open_clip does not import here (operator torchvision::nms does not exist)" in done.stdout
    assert "`make search`" in done.stdout


def test_readiness_where_the_extra_is_missing(tmp_path: Path) -> None:
    """Where open_clip is not installed, search is a note saying `make search`, ready False,
    and nothing is imported to find that out."""
    code = ("import sys, json; sys.modules['open_clip'] = None\n"
            "from hoardfs.jobs import clip_model\n"
            "r = clip_model.readiness(None)\n"
            "print(json.dumps([r, 'torch' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    r, torch_loaded = json.loads(done.stdout)
    assert (r["installed"], r["ready"], r["imports"], torch_loaded) == (False, False, None, False)
    assert r["note"].startswith("not installed") and "make search" in r["note"]
