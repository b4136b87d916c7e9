"""The docs check (`make docs-check`, tests/docs_check.py) finds development-history numbers
in the docs, the code, the tests, the benchmarks and the SQL migrations, and a README over
10 KiB, each by file and line."""

from __future__ import annotations

from pathlib import Path

from tests import docs_check


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_history_numbers_are_named_by_file_and_line(tmp_path: Path) -> None:
    """`session N`, `Review N`, `issue #N` (any case, plural too, over a line break too) and a
    work item's code (`W3-S`) in README, CONTRIBUTING,
    docs/*.md, the Makefile, the *.py of the product code, tests/ and bench/ (subfolders too),
    sql/**/*.sql and .ci/ are each reported as file:line; CHANGES.md, tests/data, bench/results,
    the check's own test, an upstream `owner/repo#N` and words without a number are not."""
    root = _tree(tmp_path, {
        "README.md": "# x\nMeasured in session 44.\n",
        "CONTRIBUTING.md": "Never write `session N` in a doc.\n",
        "CHANGES.md": "Fixed in review 42.\n",
        "docs/design.md": "ok\nok\nas Review 41 found, and issue #39 says\n",
        "docs/notes.txt": "issue 1\n",
        "Makefile": "lint:  # issues 5 and 6\n",
        "fsd/core/x.py": "# the issue is a race (sessions 3-4)\n",
        "jobs/y.py": "x = 1  # reviews are welcome\n",
        "sql/migrations/001_x.sql": "-- migration 001 (issue 40, part 4)\n",
        "tests/test_z.py": "# issue 37's test\n",
        "tests/test_y.py": "# as AnalogJ/scrutiny#187 reports\n",
        "tests/test_docs_check.py": "# session 1\n",
        "tests/data/workers/w.py": "# session 2\n",
        "bench/b.py": "# session 47's run\n",
        "bench/peers/p.py": "\n# review 39\n\"\"\"as the review\n40 found (W3-S)\"\"\"\n",
        "bench/results/r.py": "# session 3\n",
        ".ci/run": "#!/bin/sh\nmake lint  # Issue 12\n",
    })
    assert docs_check.findings(root) == [
        "README.md:2: 'session 44': a development-history number",
        "docs/design.md:3: 'Review 41': a development-history number",
        "docs/design.md:3: 'issue #39': a development-history number",
        "Makefile:1: 'issues 5': a development-history number",
        "fsd/core/x.py:1: 'sessions 3': a development-history number",
        "sql/migrations/001_x.sql:1: 'issue 40': a development-history number",
        "tests/test_z.py:1: 'issue 37': a development-history number",
        "bench/b.py:1: 'session 47': a development-history number",
        "bench/peers/p.py:2: 'review 39': a development-history number",
        "bench/peers/p.py:3: 'review 40': a development-history number",
        "bench/peers/p.py:4: 'W3-S': a development-history number",
        ".ci/run:2: 'Issue 12': a development-history number",
    ]
    assert docs_check.main([str(root)]) == 1


def test_a_readme_over_10_kib_fails_and_a_clean_tree_passes(tmp_path: Path, capsys) -> None:
    """A README of 10 KiB passes and one byte more fails, naming its size; a clean tree exits 0."""
    root = _tree(tmp_path, {"README.md": "x" * docs_check.README_MAX, "docs/a.md": "what is\n"})
    assert docs_check.main([str(root)]) == 0
    assert "clean" in capsys.readouterr().out
    (root / "README.md").write_text("x" * (docs_check.README_MAX + 1))
    assert docs_check.findings(root) == [
        "README.md:1: 10,241 bytes, over the 10,240 a README may have: move the detail into docs/ and link it"]
