"""Curation from the command line: `hoard label add|rm`, `hoard select
--text`, on a really ingested batch, real PostgreSQL and the real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_find import _hoard, ingest_one


@pytest.fixture
def ingested(hoard_home: Path, pg, redis_conn):
    """A home with one ingested yt-dlp batch: (cfg, the batch)."""
    return ingest_one(hoard_home, pg, redis_conn, seed=33)


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
    search (hoardfs.sql.browse.search, the same full-text index) finds for the same words — a word's
    start included — and combines with the other flags; words that are no words are one line."""
    from hoardfs.sql import browse

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

    from hoardfs.sql import result_tables
    from hoardfs.sql.migrate import migrate
    from hoardfs.sql.selectors import Selector, parse_selector, query_nodes

    migrate(pg)
    # the `maskr` action of the examples, its own result table declared as a run of it declares it
    result_tables.ensure(pg, "maskr", 1, {"score": "float", "passed": "bool"})
    doc = (Path(__file__).resolve().parent.parent / "docs" / "selectors.md").read_text()
    examples = re.findall(r"```json\n(.*?)```", doc, re.S)
    assert len(examples) >= 5
    for text in examples:
        query_nodes(pg, parse_selector(json.loads(text)))
    table = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.M))
    assert table == set(Selector.model_fields)


def _put(cfg, *args: str) -> dict[str, str]:
    """`hoard put --json …`: path → sha256 of what it stored."""
    res = _hoard(cfg, "put", "--json", *args)
    assert res.returncode == 0, res.stderr
    return {Path(d["path"]).name: d["sha256"] for d in map(json.loads, res.stdout.splitlines())}


def _readable(cfg, sha: str) -> bool:
    return _hoard(cfg, "get", sha, "-o", "/dev/null").returncode == 0


def test_named_puts_survive_a_rebuild_and_release_only_what_nothing_else_holds(ingested, tmp_path: Path) -> None:
    """`put --name` records what one put stored (existing files too); `ls --puts` lists it; the
    record survives `hoard index rebuild`; `delete --put alpha` + gc frees only alpha's own
    files: a file another named put, an unnamed put (rooted before or after) or an ingested
    batch holds reads back. A duplicate, a bad or an unknown name is one line and stores or
    releases nothing."""
    cfg, b = ingested
    batch_sha = b.items[0].sha256
    got = _hoard(cfg, "get", batch_sha, "-o", str(tmp_path / "from-batch.bin"))
    assert got.returncode == 0, got.stderr
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    alpha.mkdir(), beta.mkdir()
    for d, names in ((alpha, ("own-a", "shared", "unnamed-before", "unnamed-after")), (beta, ("shared", "own-b"))):
        for n in names:
            (d / f"{n}.bin").write_bytes(f"{n} bytes of the curation test".encode() * 50)
    (alpha / "batch.bin").write_bytes((tmp_path / "from-batch.bin").read_bytes())
    before = _put(cfg, str(alpha / "unnamed-before.bin"))

    shas = _put(cfg, "--name", "alpha", str(alpha))
    assert shas["batch.bin"] == batch_sha and len(shas) == 5
    shas_b = _put(cfg, "--name", "beta", str(beta))
    assert shas_b["shared.bin"] == shas["shared.bin"]
    after = _put(cfg, str(alpha / "unnamed-after.bin"))
    assert before["unnamed-before.bin"] == shas["unnamed-before.bin"]
    assert after["unnamed-after.bin"] == shas["unnamed-after.bin"]

    (tmp_path / "new.bin").write_bytes(b"never stored: the name was taken")
    dup = _hoard(cfg, "put", "--name", "alpha", str(tmp_path / "new.bin"))
    assert dup.returncode == 2 and "a put named 'alpha' exists already" in dup.stderr, dup.stderr
    bad = _hoard(cfg, "put", "--name", "../x", str(tmp_path / "new.bin"))
    assert bad.returncode == 2 and "put name" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    for refused in (dup, bad):  # one line (a "0 files: 0 new …" summary followed it)
        assert len(refused.stderr.strip().splitlines()) == 1 and not refused.stdout, refused.stderr
    assert "new.bin" not in _hoard(cfg, "ls", "--puts").stdout
    by_hand = _hoard(cfg, "view", "rm", "put.alpha")
    assert by_hand.returncode == 2 and "hoard delete --put alpha" in by_hand.stderr, by_hand.stderr

    def listed() -> dict[str, dict]:
        res = _hoard(cfg, "ls", "--puts", "--json")
        assert res.returncode == 0, res.stderr
        return {d["name"]: d for d in map(json.loads, res.stdout.splitlines())}

    puts = listed()
    assert set(puts) == {"alpha", "beta"} and puts["alpha"]["count"] == 5 and puts["beta"]["count"] == 2
    assert puts["alpha"]["bytes"] == sum(p.stat().st_size for p in alpha.iterdir()) and puts["alpha"]["when"]

    rebuilt = _hoard(cfg, "index", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert listed() == puts

    no = _hoard(cfg, "delete", "--put", "alpha", stdin="")
    assert no.returncode == 130 and set(listed()) == {"alpha", "beta"}
    unknown = _hoard(cfg, "delete", "--put", "gamma", "--yes")
    assert unknown.returncode == 2 and "no put named 'gamma'" in unknown.stderr, unknown.stderr
    gone = _hoard(cfg, "delete", "--put", "alpha", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "1 objects tombstoned, 4 kept" in gone.stdout, gone.stdout
    assert set(listed()) == {"beta"}
    swept = _hoard(cfg, "gc", "--threshold", "1.0")
    assert swept.returncode == 0, swept.stderr
    assert not _readable(cfg, shas["own-a.bin"])
    for kept in ("shared.bin", "unnamed-before.bin", "unnamed-after.bin", "batch.bin"):
        assert _readable(cfg, shas[kept]), kept
    again = _hoard(cfg, "delete", "--put", "alpha", "--yes")
    assert again.returncode == 2 and "no put named 'alpha'" in again.stderr

    assert _hoard(cfg, "delete", "--put", "beta", "--yes").returncode == 0
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    assert not _readable(cfg, shas["shared.bin"]) and not _readable(cfg, shas_b["own-b.bin"])
    assert _readable(cfg, batch_sha) and _readable(cfg, shas["unnamed-after.bin"])
    check = _hoard(cfg, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_delete_objects_from_a_list(ingested, tmp_path: Path) -> None:
    """`delete --objects-from FILE|-` releases the listed objects as `--object` does; an empty
    list or a bad line is one line (exit 2), an unknown sha256 exit 5, and nothing is released."""
    cfg, _b = ingested
    for n in range(3):
        (tmp_path / f"f{n}.bin").write_bytes(f"object {n} of the list".encode() * 40)
    shas = _put(cfg, *(str(tmp_path / f"f{n}.bin") for n in range(3)))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# from hoard put\n{shas['f0.bin']}  f0.bin\n\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for args, stdin, code, words in ((("--objects-from", str(empty)), None, 2, "lists no sha256"),
                                     (("--objects-from", "-"), "zz\n", 2, "line 1"),
                                     (("--objects-from", "-"), "cd" * 32 + "\n" + shas["f1.bin"], 5,
                                      "nothing was released")):
        res = _hoard(cfg, "delete", *args, stdin=stdin)
        assert res.returncode == code and words in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = _hoard(cfg, "delete", "--objects-from", str(listing))
    assert res.returncode == 0 and "1 objects released" in res.stdout, res.stderr
    res = _hoard(cfg, "delete", "--objects-from", "-", "--object", shas["f2.bin"], stdin=shas["f1.bin"] + "\n")
    assert res.returncode == 0 and "2 objects released" in res.stdout, res.stderr
    assert _hoard(cfg, "gc", "--threshold", "1.0").returncode == 0
    assert not any(_readable(cfg, s) for s in shas.values())


def test_a_named_put_needs_no_database(hoard_home: Path, tmp_path: Path) -> None:
    """`put --name`, `ls --puts` and `delete --put` work on a store whose database does not answer."""
    from hoardfs.base import config

    cfg_path = hoard_home / "hoard.toml"
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace("database_url = ", f"database_url = 'postgresql:///x?host={tmp_path}'\n#", 1))
    cfg = config.load(cfg_path)
    assert _hoard(cfg, "init").returncode == 0
    (tmp_path / "one.bin").write_bytes(b"stored without a database" * 10)
    res = _hoard(cfg, "put", "--json", "--name", "offline", str(tmp_path / "one.bin"))
    assert res.returncode == 0, res.stderr
    shas = {"one.bin": json.loads(res.stdout)["sha256"]}
    assert "put offline: 1 files, 250 B recorded" in res.stderr, res.stderr  # one unit convention (was "0.0 MB")
    listed = _hoard(cfg, "ls", "--puts")
    assert listed.returncode == 0 and "offline" in listed.stdout and "1 files" in listed.stdout, listed.stderr
    gone = _hoard(cfg, "delete", "--put", "offline", "--yes")
    assert gone.returncode == 0 and "1 objects tombstoned" in gone.stdout, gone.stderr
    assert _hoard(cfg, "gc", "--no-database", "--threshold", "1.0").returncode == 0
    assert not _readable(cfg, shas["one.bin"])
