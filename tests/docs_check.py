"""The docs check (`make docs-check`, part of `make lint`): the docs, the code, the tests, the
benchmarks and the SQL migrations say what is, not how it came to be.

It fails on a session, review or issue number ("session N", "Review N", "issue #N", any case,
plural too, N a number, a line break allowed between the word and N) or a work item's code
(W, a number, a dash, a capital letter) in README.md, CONTRIBUTING.md, docs/*.md, the *.py of the product
code, of tests/ and of bench/ (their subfolders too: bench/peers, tests/chaos), the SQL
migrations (sql/**/*.sql), the Makefile and the CI scripts (.ci/), and on a README.md over
10 KiB, printing `file:line` for each. Not checked: CHANGES.md (the history), tests/data (the
fixtures), bench/results (the measurements) and this check's own test, whose examples are such
numbers. An upstream project's issue is cited as `owner/repo#N`, which the check lets pass.
History belongs in CHANGES.md and the commit messages; CONTRIBUTING.md, "Docs", gives the rules.

Run: `python -m tests.docs_check [ROOT]` (ROOT: the checkout, by default this one). Only the
standard library: it runs before the venv exists.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

#: a development-history reference: the word, then its number (a line break between them too),
#: or a work item's code (W, a number, a dash, a capital letter)
HISTORY = re.compile(r"\b(?:(?i:sessions?|reviews?|issues?)\s+#?[0-9]+|W[0-9]+-[A-Z]\b)")
#: the folders checked (those of them the checkout has) and the endings of the files checked in
#: each, subfolders included: the product code's, the tests', the benchmarks' (bench/peers too),
#: the SQL migrations and the CI scripts (every file: "" ends every name)
FOLDERS = {
    **{code: (".py",) for code in ("fsd", "base", "cli", "jobs", "adapters", "datasets", "gui", "hoardfs")},
    "sql": (".py", ".sql"),
    "tests": (".py",),
    "bench": (".py",),
    ".ci": ("",),
}
#: the files checked at the checkout's top besides the documents
TOP = ("Makefile",)
#: not checked: the test fixtures, the benchmarks' raw results, and the test of this check, whose
#: examples are history numbers
SKIPPED = ("tests/data", "bench/results", "tests/test_docs_check.py")
README_MAX = 10 * 1024


def documents(root: Path) -> list[Path]:
    """The documents the rules cover: README.md, CONTRIBUTING.md and docs/*.md."""
    found = [root / name for name in ("README.md", "CONTRIBUTING.md") if (root / name).is_file()]
    return found + sorted(p for p in (root / "docs").glob("*.md") if p.is_file())


def sources(root: Path) -> list[Path]:
    """The Makefile, then every file of FOLDERS with one of its folder's endings, SKIPPED left out
    and links not followed (hoardfs/ links to the product code's other folders)."""
    found = [root / name for name in TOP if (root / name).is_file()]
    for folder, endings in FOLDERS.items():
        for top, dirs, files in os.walk(root / folder):
            here = Path(top)
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not _skipped(root, here / d))
            found += [here / f for f in sorted(files)
                      if f.endswith(endings) and not _skipped(root, here / f)]
    return found


def _skipped(root: Path, path: Path) -> bool:
    return path.relative_to(root).as_posix() in SKIPPED


def findings(root: Path) -> list[str]:
    """One line per place that breaks a rule: `file:line: …`, paths relative to `root`."""
    out = []
    readme = root / "README.md"
    if readme.is_file() and (size := readme.stat().st_size) > README_MAX:
        out.append(f"README.md:1: {size:,} bytes, over the {README_MAX:,} a README may have: "
                   "move the detail into docs/ and link it")
    for path in documents(root) + sources(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in HISTORY.finditer(text):
            number = text.count("\n", 0, m.start()) + 1
            found = " ".join(m.group(0).split())
            out.append(f"{path.relative_to(root)}:{number}: '{found}': a development-history number")
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
