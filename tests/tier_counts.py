"""docs/testing.md's tier table counted, not typed: each tier's number of tests as pytest collects it.

Run as `make testing-docs` (`python -m tests.tier_counts`): for every tier of tests/conftest.py
(`TIERS`), `pytest --collect-only -q -m TIER` lists the tests the marker selects, and the last
cell ("tests") of that tier's row in the table between the two markers below is set to their
number; a line under the table gives the sum. Everything else in the table — what puts a test
in a tier, how to run it — is hand-written and kept. No unit test runs this: collecting the
whole suite six times takes about a minute.

Collecting imports every test module and runs pytest's session hooks (tests/conftest.py
`pytest_sessionstart`) but no test and no fixture: no server is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"
BEGIN = "<!-- BEGIN GENERATED: `make testing-docs` writes the tests column from pytest's collection -->"
END = "<!-- END GENERATED -->"
#: the tiers, lightest first: tests/conftest.py's TIERS (not imported: that would import pytest's plugins here)
TIERS = ("unit", "services", "lab", "gui", "chaos", "system")
#: a table row of one tier: its first cell is the tier's name in backquotes
ROW = re.compile(r"^\| `(?P<tier>[a-z]+)` \|")
TOTAL = re.compile(r"^\d[\d,]* tests in all")


def count(tier: str) -> int:
    """How many tests `pytest -m TIER` selects (its collection's node ids, one a line)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", tier]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    # exit 5: nothing selected — a tier with no tests is 0, not an error
    if done.returncode not in (0, 5):
        raise SystemExit(f"tier_counts: `{' '.join(cmd[1:])}` failed (exit {done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return sum(1 for line in done.stdout.splitlines() if "::" in line and not line.startswith(" "))


def rewrite(text: str, counts: dict[str, int]) -> str:
    """`text` (docs/testing.md) with each tier row's last cell set to its count, and the total under the table."""
    head, begin, rest = text.partition(BEGIN)
    table, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"tier_counts: {DOC} has lost its markers ({BEGIN!r} … {END!r}): put them back "
                         "around the tier table")
    lines = []
    for line in table.splitlines():
        m = ROW.match(line)
        if m and m["tier"] in counts:
            cells = line.rstrip().rstrip("|").split(" | ")
            cells[-1] = f"{counts[m['tier']]:,}"
            line = " | ".join(cells) + " |"
        elif TOTAL.match(line):
            continue
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    lines += ["", f"{sum(counts.values()):,} tests in all (`make testing-docs` counts them: tests/tier_counts.py).", ""]
    return head + begin + "\n".join(lines) + "\n" + end + tail


def main() -> int:
    """Count every tier, write docs/testing.md's table again; print the counts."""
    counts = {tier: count(tier) for tier in TIERS}
    DOC.write_text(rewrite(DOC.read_text(encoding="utf-8"), counts), encoding="utf-8")
    print(", ".join(f"{tier} {n:,}" for tier, n in counts.items()) + f" → {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
