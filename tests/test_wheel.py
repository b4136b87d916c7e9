"""The hoardfs wheel installs beside the ML packages it is installed into: built from a fresh
clone, it holds one top-level package, `hoardfs`; in a fresh venv that already holds Hugging Face
`datasets` and AdapterHub `adapters` (from PyPI) all three import and work, no `fsd` (or other
bare folder name) is importable, and `pip uninstall hoardfs` leaves HF `datasets` whole. Tier
`system` (network for pip; a few minutes with pip's cache warm after `make`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

PYTHON = "/usr/bin/python3"  # the Makefile's: Debian's interpreter
TORCH = "torch==2.13.0"  # the search extra's version (any build of it)
PYFUSE3_DIST = REPO / "var" / "pyfuse3" / "dist"  # the Makefile's patched pyfuse3 wheel (`make pyfuse3`)
#: what each check runs in the venv, from a directory outside any checkout
HF_WORKS = ("import datasets; d = datasets.Dataset.from_dict({'x': [1, 2, 3], 'y': ['a', 'b', 'c']}); "
            "assert d.num_rows == 3 and d[1] == {'x': 2, 'y': 'b'}, d; "
            "assert callable(datasets.load_dataset); print(datasets.__file__)")

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(1800),
    pytest.mark.needs(shutil.which("git") is not None and any(PYFUSE3_DIST.glob("pyfuse3-*.whl")),
                      f"GIT OR THE PYFUSE3 WHEEL MISSING (in {PYFUSE3_DIST}): make pyfuse3"),
]


def _run(argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_installs_beside_hf_datasets_and_adapters(tmp_path: Path) -> None:
    """A wheel of a fresh clone holds only hoardfs/; installed after HF `datasets` and AdapterHub
    `adapters` into one venv: Dataset.from_dict works, `adapters` imports, `hoard --version` and
    `import hoardfs.fsd.store` work, `import fsd` fails; uninstalled, HF `datasets` still works."""
    clone, dist, venv, away = tmp_path / "clone", tmp_path / "dist", tmp_path / "venv", tmp_path / "away"
    away.mkdir()
    _ok(_run(["git", "clone", "-q", str(REPO), str(clone)], tmp_path))
    _ok(_run([str(REPO / ".venv" / "bin" / "pip"), "wheel", "-q", "--no-deps", "-w", str(dist), str(clone)], tmp_path))
    wheel = next(dist.glob("hoardfs-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    assert tops == {"hoardfs", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops

    _ok(_run([PYTHON, "-m", "venv", str(venv)], tmp_path))
    pip, py = str(venv / "bin" / "pip"), str(venv / "bin" / "python")
    # AdapterHub `adapters` imports torch without declaring it (its docs: install PyTorch first)
    _ok(_run([pip, "install", "-q", "--disable-pip-version-check", "datasets", "adapters", TORCH], away))
    hf_file = _ok(_run([py, "-c", HF_WORKS], away)).strip()
    _ok(_run([pip, "install", "-q", "--disable-pip-version-check", "--find-links", str(PYFUSE3_DIST), str(wheel)], away))

    assert _ok(_run([py, "-c", HF_WORKS], away)).strip() == hf_file  # HF's, untouched
    _ok(_run([py, "-c", "import adapters; print(adapters.__file__)"], away))
    assert _ok(_run([str(venv / "bin" / "hoard"), "--version"], away)).startswith("hoard (hoardfs) ")
    _ok(_run([py, "-c", "import hoardfs.fsd.store, hoardfs.datasets.formats, hoardfs.adapters"], away))
    for bare in ("fsd", "jobs", "sql", "gui", "base", "cli"):
        gone = _run([py, "-c", f"import {bare}"], away)
        assert gone.returncode != 0 and f"No module named '{bare}'" in gone.stderr, (bare, gone.stderr[-500:])

    _ok(_run([pip, "uninstall", "-y", "-q", "hoardfs"], away))
    assert _ok(_run([py, "-c", HF_WORKS], away)).strip() == hf_file
    _ok(_run([py, "-c", "import adapters"], away))
