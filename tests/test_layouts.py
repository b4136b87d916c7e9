"""Layouts (datasets/layouts.py): templates are checked when read; a plan is checked whole —
hostile values, missing fields, collisions — before any byte moves. The rows come from a
real PostgreSQL (sql/layout_rows.py) built by a write-intent, hostile metadata included."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import psycopg
import pytest

from hoardfs.datasets.layouts import BUILTIN, LayoutError, PlacementError, load, parse, plan
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.layout_rows import layout_rows
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import query_nodes
from tests.test_outputs import _hoard, _selector, _zones, filled  # noqa: F401 (a fixture)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def rows(pg: psycopg.Connection) -> dict[str, dict]:
    """Five images in two batches of source `gallery`: labelled cat / dog / none, one with
    hostile metadata values, one stored twice (two batches, two original paths)."""
    migrate(pg)
    spec = {  # name → (batch paths, label, title, raw metadata)
        "a": (["batch:b1/img/a.jpg"], "cat", "A cat", {"album": "pets"}),
        "b": (["batch:b1/img/b.jpg"], "dog", "../../etc/passwd", {"album": "../.."}),
        "c": (["batch:b1/img/sub/c.png", "batch:b2/again/c.png"], None, "C/slash", {"album": "x\x01y"}),
        "d": (["batch:b2/d.jpg"], "cat", "Nul\nline", {"album": {"nested": 1}}),
    }
    nodes, meta, labels, members = [], [], [], {"b1": [], "b2": []}
    for name, (locs, label, title, raw) in spec.items():
        h = sha(name)
        nodes.append({"sha256": h, "physical": {"size": 10 + len(name), "file_type": locs[0].rsplit(".", 1)[1],
                                                "locators": locs}})
        meta.append({"node": h, "source": "gallery", "title": title, "raw_metadata": raw})
        if label:
            labels.append({"node": h, "key": "class", "value": label})
        for loc in locs:
            members[loc.split("/")[0][6:]].append(h)
    apply_write_intent(pg, {"key": "layouts", "sources": ["gallery"], "nodes": nodes, "metadata": meta,
                            "labels": labels,
                            "batches": [{"batch_id": b, "members": m} for b, m in members.items()]})
    picked = query_nodes(pg, {})
    got = layout_rows(pg, picked.node_ids)
    return {next(n for n in spec if sha(n) == r["sha256"]): r for r in got}


def test_builtin_layouts_place_every_node(rows: dict[str, dict]) -> None:
    by_sha = plan(load("by_sha256"), rows.values())
    assert [p.path for p in by_sha] == sorted(f"{sha(n)[:2]}/{sha(n)}{'.png' if n == 'c' else '.jpg'}" for n in rows)
    by_batch = plan(load("by_batch"), rows.values())
    assert {p.path for p in by_batch} == {"gallery/b1/img/a.jpg", "gallery/b1/img/b.jpg", "gallery/b1/img/sub/c.png",
                                          "gallery/b2/d.jpg"}
    every = plan(parse("{source}/{batch}/{orig_path}", "all", per_locator=True), rows.values())
    assert "gallery/b2/again/c.png" in {p.path for p in every} and len(every) == 5


def test_a_layout_reads_only_the_row_parts_it_needs_and_places_the_same(pg: psycopg.Connection,
                                                                        rows: dict[str, dict]) -> None:
    """A stage asks layout_rows only for the parts its layout's fields and sidecars read
    (`Layout.row_parts`): every field's layout places every node on the same path — or
    refuses it with the same line — as from whole rows, a node no metadata describes too."""
    from hoardfs.datasets.layouts import FIELDS

    apply_write_intent(pg, {"key": "layouts-bare", "sources": ["gallery"],
                            "nodes": [{"sha256": sha("e"), "physical": {"size": 3, "file_type": "jpg",
                                                                        "locators": ["batch:b3/e.jpg"]}}],
                            "batches": [{"batch_id": "b3", "members": [sha("e")]}]})
    ids = query_nodes(pg, {}).node_ids
    whole = layout_rows(pg, ids)
    templates = [f"{{{f}:class|none}}/{{sha256}}" if f == "label" else f"{{{f}:album|none}}/{{sha256}}"
                 if f == "meta" else f"{{{f}|none}}/{{sha256}}" for f in FIELDS]
    lays = [parse(t, f"f{k}") for k, t in enumerate(templates)] + [load(n) for n in BUILTIN] + \
        [parse("{sha256}", "car", sidecars=True)]
    asked = set()
    for lay in lays:
        asked.add(frozenset(lay.row_parts()))

        def placed(got: list[dict], lay=lay) -> object:
            try:
                return [(p.path, p.sha256, p.sidecar) for p in plan(lay, got)]
            except PlacementError as e:
                return str(e)
        assert placed(layout_rows(pg, ids, lay.row_parts())) == placed(whole), lay.template
    assert frozenset() in asked and len(asked) >= 4, asked


def test_a_missing_label_is_refused_naming_the_node_unless_a_default_is_given(rows: dict[str, dict]) -> None:
    with pytest.raises(PlacementError, match=rf"node {rows['c']['node_id']} \({sha('c')[:12]}…\) has no label:class; "
                                             r"layout by_label needs it — give a default"):
        plan(load("by_label"), rows.values())
    placed = plan(parse("{label:class|unlabelled}/{sha256}{ext}", "lbl"), rows.values())
    assert sorted(p.path.split("/")[0] for p in placed) == ["cat", "cat", "dog", "unlabelled"]


@pytest.mark.parametrize("template, field, why", [
    ("{title}/{sha256}", "title", "'..' would leave"),  # b: ../../etc/passwd
    ("{meta:album}/{sha256}", "meta:album", "'..' would leave"),  # b: album ../..
])
def test_hostile_values_are_refused_naming_node_and_field(rows: dict[str, dict], template: str, field: str,
                                                          why: str) -> None:
    only_b = [rows["b"]]
    with pytest.raises(PlacementError) as e:
        plan(parse(template, "t"), only_b)
    assert f"node {rows['b']['node_id']}" in e.value.message and field in e.value.message
    assert "'/' would make it a directory" in e.value.message or why in e.value.message


def test_slash_nul_newline_and_nested_values_are_refused(rows: dict[str, dict]) -> None:
    with pytest.raises(PlacementError, match="title is 'C/slash': a '/' would make it a directory"):
        plan(parse("{title}/{sha256}", "t"), [rows["c"]])
    with pytest.raises(PlacementError, match="meta:album holds a control character"):
        plan(parse("{meta:album}/{sha256}", "t"), [rows["c"]])
    with pytest.raises(PlacementError, match="title holds a control character"):
        plan(parse("{title}/{sha256}", "t"), [rows["d"]])
    with pytest.raises(PlacementError, match="raw metadata 'album' is not a single value"):
        plan(parse("{meta:album}/{sha256}", "t"), [rows["d"]])


def test_collisions_are_refused_naming_both_nodes(rows: dict[str, dict]) -> None:
    with pytest.raises(PlacementError, match=r"nodes \d+ \(\w+…\) and \d+ \(\w+…\) both map to 'cat\.jpg'"):
        plan(parse("{label:class}{ext}", "t"), [rows["a"], rows["d"]])
    with pytest.raises(PlacementError, match="comes twice to 'x/c.png'.*two original paths"):
        plan(parse("x/{name}", "t", per_locator=True), [rows["c"]])
    file_and_dir = [dict(rows["a"], locators=["batch:b1/p"]), dict(rows["b"], locators=["batch:b1/p/q"])]
    with pytest.raises(PlacementError, match="'p' is the file of node .* and a directory holding 'p/q'"):
        plan(parse("{orig_path}", "t"), file_and_dir)


def test_sidecars_carry_the_node_and_take_their_own_path(rows: dict[str, dict]) -> None:
    placed = plan(parse("{sha256}{ext}", "cars", sidecars=True), [rows["a"]])
    [p] = placed
    doc = json.loads(p.sidecar)
    assert doc["sha256"] == sha("a") and doc["labels"] == {"class": ["cat"]} and doc["metadata"]["title"] == "A cat"
    assert doc["orig_path"] == "img/a.jpg" and doc["metadata"]["raw"] == {"album": "pets"}
    clash = [rows["a"], dict(rows["b"], locators=["batch:b1/img/a.jpg.json"])]  # a file named like a's sidecar
    with pytest.raises(PlacementError, match=r"both map to 'a\.jpg\.json'"):
        plan(parse("{name}", "cars", sidecars=True), clash)


@pytest.mark.parametrize("template, message", [
    ("{nope}/{sha256}", "unknown field {nope}; known fields: sha256, node_id"),
    ("/abs/{sha256}", "must be a relative path"),
    ("../{sha256}", "'..' in the template"),
    ("fixed/name.jpg", "names no field"),
    ("{label}/{sha256}", "{label} needs a key"),
    ("{sha256:99}", "prefix length must be 1-64"),
    ("{size:3}", "{size} takes no argument"),
    ("{sha256}/{", "unmatched '{'"),
    ("{label:c|..}/{sha256}", "'..' would leave"),
    ("", "must be a relative path"),
])
def test_bad_templates_are_refused_when_read(template: str, message: str) -> None:
    with pytest.raises(LayoutError) as e:
        parse(template, "bad")
    assert message in e.value.message
    assert e.value.exit_code == 2


def test_layout_files(tmp_path: Path) -> None:
    good = tmp_path / "worker-in.toml"
    good.write_text('template = "{{raw}}/{sha256}{ext}"\nsidecars = true\n')
    lay = load(str(good))
    assert (lay.name, lay.sidecars, lay.per_locator) == ("worker-in", True, False)
    assert plan(lay, [{"node_id": 1, "sha256": "ab" * 32, "size": 1, "file_type": "jpg", "locators": []}])[0].path \
        == "{raw}/" + "ab" * 32 + ".jpg"
    for body, message in (('template = 3\n', "needs `template"), ('template = "{sha256}"\nextra = 1\n', "unknown keys: "
                          "extra"), ('template = "{sha256}"\nsidecars = "yes"\n', "true or false"), ("= =", "Invalid")):
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(LayoutError, match=message):
            load(str(bad))
    with pytest.raises(LayoutError, match="does not exist"):
        load(str(tmp_path / "missing.toml"))
    with pytest.raises(LayoutError, match="not a built-in"):
        load("by_nothing")
    assert set(BUILTIN) == {"by_sha256", "by_batch", "by_label", "flat"}


def test_a_file_no_metadata_describes_takes_its_batchs_source() -> None:
    row = {"node_id": 9, "sha256": "cd" * 32, "size": 3, "file_type": None, "locators": ["batch:b7/x/y.json"],
           "batch_sources": {"b7": "ytdlp"}, "labels": {}}
    assert [p.path for p in plan(load("by_batch"), [row])] == ["ytdlp/b7/x/y.json"]
    with pytest.raises(PlacementError, match="has no source"):
        plan(load("by_batch"), [dict(row, batch_sources={})])


@pytest.mark.parametrize("template, title, sidecars, message", [
    ("t/{title}{ext}", "del\x7fhere", False, r"title holds a control character \(del\\x7fhere\)"),
    ("{title}/{title}/{title}/{title}/{title}{ext}", "x" * 240, False,
     r"output contract refuses: the path is 1219 bytes long; at most 1000.*longest field is \{title\}"),
    ("t/{title}", "y" * 253, True, r"the sidecar 't/y+…' \(in the output.*a name of 258 bytes|"
                                    r"gives the sidecar a name of 258 bytes \(at most 255.*\{title\}"),
    ("t/{title}{ext}", "csi\x9bhere", False, r"title holds a control character \(csi\\x9bhere\)"),  # C1
    ("t/{title}{ext}", "cod\u202egnp", False, r"title is 'cod\\u202egnp': the path contains a bidirectional override"),
])
def test_a_path_the_seal_or_the_file_system_would_refuse_is_refused_by_the_plan(
        rows: dict[str, dict], template: str, title: str, sidecars: bool, message: str) -> None:
    """DEL, a path over the output contract's 1000 bytes (with the output's `<name>/input/`
    in front) and a sidecar name over 255 bytes fail the plan, naming the node and the field."""
    row = dict(rows["a"], title=title)
    with pytest.raises(PlacementError, match=message) as e:
        plan(parse(template, "long", sidecars=sidecars), [row])
    assert f"node {row['node_id']}" in e.value.message and e.value.exit_code == 5
    plan(parse(template, "long", sidecars=sidecars), [dict(row, title="ok")])  # the same layout, a fine title


def test_the_plan_checks_paths_below_the_outputs_own_directory(rows: dict[str, dict]) -> None:
    """A path that fits alone but not under the output's `<layout>/input/` is refused."""
    lay = parse("{title}/{title}/{title}/{title}{ext}", "x" * 64)
    row = dict(rows["a"], title="t" * 232)  # 4 * 232 + 3 + 4 = 935 bytes; 1006 under "xxx…/input/"
    assert plan(lay, [row], prefix="")[0].path.endswith(".jpg")
    with pytest.raises(PlacementError, match="1000"):
        plan(lay, [row])


@pytest.mark.parametrize("template", ["./{sha256}", "a//{sha256}", "{sha256}/", "a/./{sha256}", "t\x7f/{sha256}"])
def test_a_template_with_an_empty_or_dot_part_is_refused_when_read(template: str) -> None:
    """Template-made empty or '.' parts (and DEL) are the template's fault, refused by parse (exit 2)."""
    with pytest.raises(LayoutError, match="empty or '.' part|control character") as e:
        parse(template, "bad")
    assert e.value.exit_code == 2


def test_an_export_whose_titles_the_seal_would_refuse_writes_nothing(filled, pg, tmp_path: Path) -> None:
    """`hoard export` with a DEL in the titles fails at the plan (exit 5, node and field
    named): nothing reserved, nothing copied into 3D."""
    cfg, _ = filled
    pg.execute("UPDATE common_metadata SET title = 'a' || chr(127) || 'b'")
    pg.commit()
    layout = tmp_path / "titled.toml"
    layout.write_text('template = "t/{title|none}/{sha256}{ext}"\n')
    res = _hoard(cfg, "export", "exdel", "--layout", str(layout), "--selector", _selector(tmp_path, {}), "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    assert re.search(r"node \d+ \(\w+…\): title holds a control character \(a\\x7fb\)", res.stderr), res.stderr
    zone = cfg.ssd.zone_path("3D")
    assert not (zone / "exdel").exists() and not (zone / ".tmp" / "exdel").exists()
    assert _zones(cfg)["3D"]["reserved_bytes"] == 0


def test_paths_that_differ_only_in_case_are_refused_unless_the_layout_allows_them(rows: dict[str, dict],
                                                                                 tmp_path: Path) -> None:
    """'Cat.jpg' and 'cat.jpg' are two files on Linux and one on a Windows or macOS worker, an
    SMB share or exFAT: refused naming both nodes, unless the layout file says
    `case_sensitive = true`. Right-to-left letters are not controls and pass."""
    two = [dict(rows["a"], title="Cat"), dict(rows["d"], title="cat")]
    with pytest.raises(PlacementError, match=r"node \d+ \(\w+…\) maps to 'Cat\.jpg' and node \d+ .* to 'cat\.jpg'.*"
                                             r"differ only in case.*case_sensitive = true") as e:
        plan(parse("{title}{ext}", "t"), two)
    assert e.value.exit_code == 5
    lay = tmp_path / "linux-only.toml"
    lay.write_text('template = "{title}{ext}"\ncase_sensitive = true\n')
    assert [p.path for p in plan(load(str(lay)), two)] == ["Cat.jpg", "cat.jpg"]
    rtl = [dict(rows["a"], title="שלום"), dict(rows["d"], title="مرحبا")]
    assert len(plan(parse("{title}{ext}", "t"), rtl)) == 2


def test_an_export_is_checked_under_its_own_prefix_not_a_stages(filled, tmp_path: Path) -> None:
    """An export's files lie under `<layout>/`, a stage's under `<layout>/input/` (6 bytes
    longer): a 990-byte path is within the output contract's 1000 as an export (995) and not
    as a stage (1001) — the export goes through and seals, the stage is refused before a byte
    moves."""
    cfg, batches = filled
    node = next(i.sha256 for i in batches[0].items if i.kind != "sidecar")
    layout = tmp_path / "long.toml"
    literal = "/".join(c * 230 for c in "abc") + "/" + "d" * 232 + "/"
    layout.write_text(f'template = "{literal}{{sha256}}"\n')
    assert len(literal) + 64 == 990
    sel = _selector(tmp_path, {"sources": ["gallery"]})
    res = _hoard(cfg, "export", "ex-long", "--layout", str(layout), "--selector", sel, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    out = cfg.ssd.zone_path("3D") / "ex-long" / "long" / literal / node
    assert hashlib.sha256(out.read_bytes()).hexdigest() == node
    res = _hoard(cfg, "stage", "st-long", "--layout", str(layout), "--selector", sel, "--here")
    assert res.returncode == 5 and "1001 bytes long" in res.stderr, res.stdout + res.stderr
    assert not (cfg.ssd.zone_path("3C") / "st-long").exists() and not (cfg.ssd.zone_path("3C") / ".tmp" / "st-long").exists()


def test_a_selected_batch_gives_its_own_paths(rows: dict[str, dict]) -> None:
    """A stage of batch b2 places the file stored in b1 and b2 under its b2 path; the others
    (in no selected batch) keep their first batch's path."""
    placed = {p.path for p in plan(load("by_batch"), rows.values(), batches=["b2"])}
    assert placed == {"gallery/b1/img/a.jpg", "gallery/b1/img/b.jpg", "gallery/b2/again/c.png", "gallery/b2/d.jpg"}
