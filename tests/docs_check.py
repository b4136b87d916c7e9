"""The docs check (`make docs-check`, part of `make lint`): the docs and the product code say
what is, not how it came to be.

It fails on a session, review or issue number ("session 12", "Review 4", "issue #39") in
README.md, CONTRIBUTING.md, docs/*.md and the product code's *.py, and on a README.md over
10 KiB, printing `file:line` for each. History belongs in CHANGES.md and the commit messages;
CONTRIBUTING.md, "Docs", gives the rules.

Run: `python -m tests.docs_check [ROOT]` (ROOT: the checkout, by default this one). Only the
standard library: it runs before the venv exists.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

#: a development-history reference: the word, then its number
HISTORY = re.compile(r"\b(sessions?|reviews?|issues?)\s+#?[0-9]+", re.IGNORECASE)
#: the product code's folders (those of them the checkout has); tests/ and bench/ may tell stories
CODE = ("fsd", "base", "cli", "jobs", "adapters", "datasets", "sql", "gui", "hoardfs")
README_MAX = 10 * 1024


def documents(root: Path) -> list[Path]:
    """The documents the rules cover: README.md, CONTRIBUTING.md and docs/*.md."""
    found = [root / name for name in ("README.md", "CONTRIBUTING.md") if (root / name).is_file()]
    return found + sorted(p for p in (root / "docs").glob("*.md") if p.is_file())


def sources(root: Path) -> list[Path]:
    """Every *.py of the product code, links not followed (hoardfs/ links to the others)."""
    found = []
    for folder in CODE:
        for top, dirs, files in os.walk(root / folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            found += [Path(top) / f for f in sorted(files) if f.endswith(".py")]
    return found


def findings(root: Path) -> list[str]:
    """One line per place that breaks a rule: `file:line: …`, paths relative to `root`."""
    out = []
    readme = root / "README.md"
    if readme.is_file() and (size := readme.stat().st_size) > README_MAX:
        out.append(f"README.md:1: {size:,} bytes, over the {README_MAX:,} a README may have: "
                   "move the detail into docs/ and link it")
    for path in documents(root) + sources(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for m in HISTORY.finditer(line):
                out.append(f"{path.relative_to(root)}:{number}: '{m.group(0)}': a development-history number")
    return out


def main(argv: list[str] | None = None) -> int:
    """Print each finding; exit 1 when there is one."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    found = findings(root)
    for line in found:
        print(line)
    if found:
        print(f"docs check: {len(found)} finding(s): say what is, in the present tense; history goes to "
              "CHANGES.md and commit messages (CONTRIBUTING.md, \"Docs\")", file=sys.stderr)
        return 1
    print("docs check: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
