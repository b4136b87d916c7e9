"""Every test is in exactly one tier (unit, services, lab, gui, chaos, system: docs/testing.md), so
`make test-fast` (the unit tier) and `pytest -m TIER` leave no test out and none runs twice."""

from __future__ import annotations

import pytest

from tests.conftest import TIERS


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    """Of the tests this run collected (all of them under `make test`), none is untiered and
    none has two tiers (a test that declares a lighter tier than its fixtures say)."""
    items = request.session.items
    assert items, "no tests collected"
    wrong = {item.nodeid: sorted({m.name for m in item.iter_markers() if m.name in TIERS}) for item in items}
    wrong = {nodeid: tiers for nodeid, tiers in wrong.items() if len(tiers) != 1}
    assert not wrong, f"tests without exactly one tier marker: {wrong}"
