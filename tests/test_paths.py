"""hoardfs.base.paths.hostile_reason: its fast path (one character-class search and a few
substring tests) never accepts a path its full checks refuse."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hoardfs.base.paths as paths

#: pieces that sit next to a check's edge: dots, dashes and slashes in every arrangement, each class
#: of refused character (C0, DEL, C1, bidi, surrogate) and characters of 2, 3 and 4 bytes
PIECES = ["a", "b", ".", "..", "/", "//", "/.", "./", "-", "/-", " ", "\\", "\t", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "\xa0",
          "\u202a", "\u202e", "\u2066", "\u2069", "\u2028", "\ud800", "\udfff", "é", "€", "😀"]


def _full(rel: str) -> str | None:
    """hostile_reason with its fast path off (every path suspect: the full checks decide)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(paths, "_SUSPECT", re.compile(".", re.S))
        return paths.hostile_reason(rel)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
                 st.text(max_size=40),
                 # around the length limit: 250 characters of up to 4 bytes each
                 st.lists(st.sampled_from(["a", "é", "€", "😀", "/"]), min_size=240, max_size=260).map("".join)))
def test_fast_path_accepts_nothing_the_full_checks_refuse(rel: str) -> None:
    if paths.hostile_reason(rel) is None:
        assert _full(rel) is None, rel


@pytest.mark.parametrize("rel", ["a/b", ".hidden/x", "a/.b", "a/..b", "..a", "-x", "a/-x", "a-/x-", "x" * 250, "é" * 250, "😀" * 250,
                                 "😀" * 251])
def test_fast_path_agrees_with_the_full_checks(rel: str) -> None:
    assert (paths.hostile_reason(rel) is None) == (_full(rel) is None), rel
