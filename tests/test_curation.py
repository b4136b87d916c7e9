"""Curation from the command line (issue #33, build 4): `hoard label add|rm`, `hoard select
--text`, on a really ingested batch, real PostgreSQL and the real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.synth import Spec, generate
from tests.test_find import _hoard
from tests.test_ingest import ingest_all, ingest_home


@pytest.fixture
def ingested(hoard_home: Path, pg, redis_conn):
    """A home with one ingested yt-dlp batch: (cfg, the batch)."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    [b] = generate(zone3a, Spec(seed=33, batches=1, items_per_batch=8, sources=("ytdlp",), large_max_mb=1,
                                ready_signal=True))
    [st] = ingest_all(cfg, redis_conn, [zone3a / b.batch_id])
    assert st.status == "done", st.error
    return cfg, b


def _selected(cfg, *args: str) -> list[str]:
    res = _hoard(cfg, "select", *args)
    assert res.returncode == 0, res.stderr
    return [line.split()[0] for line in res.stdout.splitlines()]


def test_label_add_rm_by_sha_list_and_selector(ingested, pg, tmp_path: Path) -> None:
    """`label add` by sha256 arguments, a list on stdin (`hoard select` output as it is) and a
    selector file labels the nodes through a write-intent with the command and user as origin;
    a second run changes nothing and says so; `select --label` and a by_label export see the
    labels; `label rm KEY=VALUE` and `rm KEY` take them off again."""
    cfg, b = ingested
    every = _selected(cfg, "--batch", b.batch_id)
    assert len(every) >= 4
    first, second = every[:2], every[2:4]

    res = _hoard(cfg, "label", "add", "class=cat", *first)
    assert res.returncode == 0, res.stderr
    assert "2 nodes labelled, 0 had it already" in res.stdout
    again = _hoard(cfg, "label", "add", "class=cat", *first, "--json")
    assert json.loads(again.stdout) == {"label": "class=cat", "nodes": 2, "changed": 0, "already": 2}
    listing = "".join(f"{s}  123\n" for s in second)
    res = _hoard(cfg, "label", "add", "class=dog", "--nodes", "-", stdin=listing)
    assert res.returncode == 0 and "2 nodes labelled" in res.stdout, res.stderr
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"batches": [b.batch_id]}))
    res = _hoard(cfg, "label", "add", "reviewed", "--selector", str(sel))
    assert res.returncode == 0 and f"{len(every)} nodes labelled" in res.stdout, res.stderr

    assert sorted(_selected(cfg, "--label", "class=cat")) == sorted(first)
    assert sorted(_selected(cfg, "--label", "class")) == sorted(first + second)
    assert sorted(_selected(cfg, "--label", "reviewed")) == sorted(every)
    origins = {r[0] for r in pg.execute("SELECT DISTINCT origin FROM label WHERE key = 'class'")}
    assert len(origins) == 1 and next(iter(origins)).startswith("hoard label add (")
    applied = pg.execute("SELECT count(*) FROM applied_intent WHERE key LIKE 'label:add:%'").fetchone()[0]
    assert applied == 4  # one write-intent per command

    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"labels": [{"key": "class"}]}))
    exp = _hoard(cfg, "export", "pets", "--layout", "by_label", "--selector", str(cats), "--here")
    assert exp.returncode == 0, exp.stderr
    tree = cfg.ssd.zone_path("3D") / "pets" / "by_label"
    assert sorted(p.name for p in tree.iterdir()) == ["cat", "dog"]
    assert sorted(p.name.split(".")[0] for p in (tree / "cat").iterdir()) == sorted(first)

    res = _hoard(cfg, "label", "rm", "class=cat", *first, *second)
    assert res.returncode == 0 and "2 nodes unlabelled, 2 did not have it" in res.stdout, res.stderr
    assert _selected(cfg, "--label", "class=cat") == []
    res = _hoard(cfg, "label", "rm", "class", "--nodes", "-", stdin="\n".join(every) + "\n")
    assert res.returncode == 0 and "2 nodes unlabelled" in res.stdout, res.stderr
    assert _selected(cfg, "--label", "class") == []
    assert sorted(_selected(cfg, "--label", "reviewed")) == sorted(every)


def test_label_bad_input_is_one_line_and_changes_nothing(ingested, pg, tmp_path: Path) -> None:
    """An unknown sha256 among known ones (exit 5), a bad sha256, an empty list, a list with a
    bad line, no key, two ways of naming nodes, a selector that selects nothing: each one line,
    no traceback, and no label written."""
    cfg, b = ingested
    known = _selected(cfg, "--batch", b.batch_id)[:3]
    unknown = "ab" * 32
    res = _hoard(cfg, "label", "add", "class=cat", *known, unknown)
    assert res.returncode == 5 and unknown in res.stderr and "nothing was labelled" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _hoard(cfg, "label", "rm", "class", "--nodes", "-", stdin=unknown + "\n")
    assert res.returncode == 5 and "nothing was unlabelled" in res.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({"batches": ["no-such-batch"]}))
    for args, words in ((("class=cat", "xyz"), "is not a sha256"),
                        (("class=cat", "--nodes", str(empty)), "lists no sha256"),
                        (("class=cat", "--nodes", str(tmp_path / "missing.txt")), "cannot read node list"),
                        (("=cat", *known), "names no key"),
                        (("class=cat", known[0], "--nodes", str(empty)), "name the nodes one way"),
                        (("class=cat",), "name the nodes one way"),
                        (("class=cat", "--selector", str(nothing)), "selects no node"),
                        (("class=cat", "--selector", str(empty)), "is not JSON")):
        res = _hoard(cfg, "label", "add", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    bad_line = tmp_path / "bad.txt"
    bad_line.write_text(f"{known[0]}\nnot-a-sha\n")
    res = _hoard(cfg, "label", "add", "class=cat", "--nodes", str(bad_line))
    assert res.returncode == 2 and "line 2" in res.stderr
    assert pg.execute("SELECT count(*) FROM label").fetchone()[0] == 0


def test_select_text_finds_what_the_gui_search_finds(ingested, pg, tmp_path: Path) -> None:
    """`select --text WORDS` (and `"text"` in a selector file) picks the nodes the GUI's asset
    search (sql.browse.search, the same full-text index) finds for the same words — a word's
    start included — and combines with the other flags; words that are no words are one line."""
    from sql import browse

    cfg, b = ingested
    titles = pg.execute("SELECT cm.title FROM common_metadata cm JOIN physical_content USING (node_id) "
                        "WHERE cm.title IS NOT NULL ORDER BY cm.node_id").fetchall()
    assert titles
    word = max(titles[0][0].split(), key=len)
    for text in (word, word[:3].upper(), f"{word} {titles[0][0].split()[0]}"):
        gui = {r["sha256"] for r in browse.search(pg, text=text, limit=10_000)}
        assert gui, text
        assert set(_selected(cfg, "--text", text, "--include-black-listed")) == gui, text
        sel = tmp_path / "text.json"
        sel.write_text(json.dumps({"text": text, "include_black_listed": True}))
        assert set(_selected(cfg, "--file", str(sel))) == gui
    assert _selected(cfg, "--text", word, "--batch", "no-such-batch") == []
    assert _selected(cfg, "--text", "zzqqxxnothingmatches") == []
    for text, words in (("!!! ???", "nothing to search for"), ("x" * 600, "at most 500")):
        res = _hoard(cfg, "select", "--text", text)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_every_example_in_docs_selectors_md_is_a_selector_that_runs(pg) -> None:
    """Each JSON example of docs/selectors.md parses as a Selector and runs; the key table
    names every key the Selector model has."""
    import re

    from sql.migrate import migrate
    from sql.selectors import Selector, parse_selector, query_nodes

    migrate(pg)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "selectors.md").read_text()
    examples = re.findall(r"```json\n(.*?)```", doc, re.S)
    assert len(examples) >= 5
    for text in examples:
        query_nodes(pg, parse_selector(json.loads(text)))
    table = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.M))
    assert table == set(Selector.model_fields)
