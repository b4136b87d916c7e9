"""Placement invariants: distinct eligible disks, proportional to free space, named refusals."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoardfs.fsd.core.placement import Candidate, NoSpace, choose

cand_lists = st.lists(
    st.builds(Candidate, uuid=st.uuids().map(str), label=st.text("abcdefgh", min_size=1, max_size=4),
              free_bytes=st.integers(0, 10**12), queue=st.integers(0, 5), usable=st.booleans()),
    min_size=1, max_size=8, unique_by=lambda c: c.uuid)


@given(cand_lists, st.integers(1, 4), st.integers(1, 10**11), st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_choice_is_distinct_and_eligible_or_refused(cands, n, need, seed) -> None:
    """Either n distinct usable disks that can each hold `need`, or NoSpace naming every disk."""
    eligible = [c for c in cands if c.usable and c.free_bytes >= need]
    if len(eligible) >= n:
        got = choose(cands, n, need, random.Random(seed))
        assert len({c.uuid for c in got}) == n
        assert all(c.usable and c.free_bytes >= need for c in got)
    else:
        with pytest.raises(NoSpace) as e:
            choose(cands, n, need, random.Random(seed))
        for c in cands:
            assert c.label in e.value.message


def test_share_follows_free_space() -> None:
    """A disk with twice the free space takes about twice the shards (pfrd)."""
    cands = [Candidate("a", "a", 4000), Candidate("b", "b", 2000), Candidate("c", "c", 1000), Candidate("d", "d", 1000)]
    rng = random.Random(1)
    counts = Counter(choose(cands, 1, 10, rng)[0].label for _ in range(16000))
    assert counts["a"] == pytest.approx(8000, rel=0.05)
    assert counts["b"] == pytest.approx(4000, rel=0.07)
    assert counts["c"] == pytest.approx(2000, rel=0.1)


def test_queue_spreads_a_batch() -> None:
    """A disk already taking writes is less likely to get the next shard."""
    rng = random.Random(2)
    busy = [Candidate("a", "a", 1000, queue=3), Candidate("b", "b", 1000)]
    counts = Counter(choose(busy, 1, 10, rng)[0].label for _ in range(5000))
    assert counts["b"] > 3 * counts["a"]


def test_refusal_names_disks_and_free_space() -> None:
    cands = [Candidate("a", "hdd1", 5 * 10**9), Candidate("b", "hdd2", 10**6),
             Candidate("c", "hdd3", 0, usable=False, why_not="missing (not mounted)")]
    with pytest.raises(NoSpace) as e:
        choose(cands, 2, 256 << 20)
    msg = e.value.message
    assert "need 2 disks with 256.0 MiB free" in msg
    assert "hdd1 4.66 GiB free" in msg and "hdd2 977 KiB free (too little)" in msg
    assert "hdd3 missing (not mounted)" in msg
    assert e.value.exit_code == 6
