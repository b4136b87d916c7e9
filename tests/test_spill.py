"""hoardfs.fsd.core.spill: fixed-width records back in byte order, one partition in memory at a time;
a spill that cannot be written is one line naming its folder and what to do."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.spill import Spill, sweep
from tests.helpers import REPO


def test_records_come_back_sorted_with_duplicates_and_the_folder_goes(tmp_path: Path) -> None:
    rng = random.Random(1)
    recs = [rng.randbytes(9) for _ in range(5000)]
    recs += recs[:100]  # the same record twice stays twice (the caller decides)
    with Spill(tmp_path, 9) as sp:
        for r in recs:
            sp.add(r)
        assert sp.count == len(recs)
        assert list(sp.sorted()) == sorted(recs)
        folder = sp.folder
    assert not folder.exists()


def test_a_spill_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    with Spill(tmp_path, 4) as sp:
        (sp.folder / "61").mkdir()  # where partition 0x61 goes: a directory (an I/O error would do the same)
        with pytest.raises(HoardError) as e:
            sp.add(b"abcd")
    assert str(sp.folder) in e.value.message and "run this again" in e.value.message
    assert e.value.exit_code == ExitCode.UNAVAILABLE


@pytest.mark.services  # starts processes
def test_a_killed_process_spill_folder_goes_with_the_next_one_a_live_one_stays(tmp_path: Path) -> None:
    """`hoard check` killed mid-way leaves its sorted runs on the SSD: the next Spill made there
    removes a folder whose process is gone, never one a running process still writes to."""
    holder = ("import sys, time; from pathlib import Path; from hoardfs.fsd.core.spill import Spill; "
              "s = Spill(Path(sys.argv[1]), 4); s.add(b'abcd'); print(s.folder, flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    try:
        dead, live = (Path(p.stdout.readline().strip()) for p in procs)
        assert dead.is_dir() and live.is_dir() and str(procs[0].pid) in dead.name
        procs[0].kill()  # SIGKILL: no `close`
        procs[0].wait()
        with Spill(tmp_path, 4) as sp:
            assert not dead.exists()
            assert live.is_dir() and any(live.iterdir())
            assert sp.folder.is_dir()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sweep(tmp_path) == [live]
    assert not list(tmp_path.iterdir())
