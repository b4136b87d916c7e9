"""fsd.core.spill: fixed-width records back in byte order, one partition in memory at a time;
a spill that cannot be written is one line naming its folder and what to do."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fsd.base.errors import ExitCode, HoardError
from fsd.core.spill import Spill


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
