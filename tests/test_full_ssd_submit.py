"""A full SSD at submit: every command that records a run (stage, export, action run, dataset
build) says so in one line with exit 6 and leaves nothing behind in the state folder."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.sql.apply import apply_write_intent
from tests.helpers import missing, worker_contract
from tests.test_action_runs import action_home, hoard

# tier: starts hoard processes, mounts a tmpfs, needs PostgreSQL and Redis
pytestmark = pytest.mark.services


@contextlib.contextmanager
def full(where: Path) -> Iterator[None]:
    """`where` on a tmpfs of its own, filled to the last byte (its files kept across it)."""
    keep = where.with_name(where.name + ".kept")
    where.mkdir(parents=True, exist_ok=True)
    where.rename(keep)
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0750", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        where.rmdir()
        keep.rename(where)
        missing(f"TMPFS MOUNT UNAVAILABLE (needs root): {done.stderr.strip()}")
    try:
        subprocess.run(["cp", "-a", f"{keep}/.", str(where)], check=False)
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()
        keep.rename(where)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def _one_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0] and "internal error" not in lines[0], lines
    return lines[0]


def test_every_submit_on_a_full_ssd_is_one_line_exit_6_and_leaves_nothing(hoard_home: Path, pg, redis_conn,
                                                                          tmp_path: Path) -> None:
    """stage, export and action run submitted (no --here) and a dataset built, with no byte left
    on the SSD: exit 6, one line naming the full file system, and the SSD holds exactly the
    files it held before (no lock, no half-written state, no partial output)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=131, items=4)
    worker_contract(cfg, batch)
    shas = [r[0] for r in pg.execute("SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc "
                                     "USING (node_id) WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    apply_write_intent(pg, {"key": "test:classes", "labels": [
        {"node": h, "key": "class", "value": "cat" if i % 2 else "dog"} for i, h in enumerate(shas)]})
    selector = tmp_path / "selector.json"
    selector.write_text(json.dumps({"batches": [batch]}))
    spec = tmp_path / "pets.toml"
    spec.write_text('name = "pets"\nlayout = "imagefolder"\nclass_label = "class"\n'
                    '[selector]\nfile_types = ["png"]\n[split]\nratios = { train = 0.75, val = 0.25 }\nsalt = "s1"\n')
    state = cfg.ssd.root
    commands = {
        "stage": ("stage", "st-full", "--layout", "flat", "--selector", str(selector), "--no-wait"),
        "export": ("export", "ex-full", "--layout", "flat", "--selector", str(selector), "--no-wait"),
        "action run": ("action", "run", "thumbs"),
        "dataset build": ("dataset", "build", str(spec), "--here"),
    }
    with full(state):
        before = _files(state)
        for what, argv in commands.items():
            res = hoard(cfg.source, *argv)
            line = _one_line(res)
            assert res.returncode == 6, f"{what}: exit {res.returncode}: {line}"
            assert "full" in line or "free space" in line, f"{what}: {line}"
            assert _files(state) == before, f"{what} left {sorted(_files(state) - before)}"
