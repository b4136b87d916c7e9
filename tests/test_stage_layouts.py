"""Stage layouts for workers with a fixed folder contract (docs/layouts.md, "Files for a
worker's folder contract"): index files (CSV, JSON Lines, JSON, a path list), a folder per
input (the input, its parent, a meta.json), label files (YOLO, COCO, a JSON per input),
conversion on stage and the refusal of bytes a template's extension does not name. Each test
runs a worker program of tests/data/workers/ (written before the layouts, never changed)
through stage → run → parse → intent against real PostgreSQL, Redis, store and files; what the
worker read comes back as its labels. Scraped metadata is hostile: CSV cells never start a
formula, JSON is JSON."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from hoardfs.base import config
from hoardfs.datasets import stagefiles
from hoardfs.jobs.actions import contract
from tests.conftest import write_home
from tests.helpers import fresh_schema, write_contract
from tests.test_action_runs import hoard
from tests.test_ingest import ingest_all, ingest_home

# tier: the module's tests start hoard processes and workers, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

WORKERS = Path(__file__).resolve().parent / "data" / "workers"
SHOP, LATE = "shop-s1-b000", "shop-s1-b001"
#: titles and authors as a scraper leaves them: formulas, quotes, commas
TITLE_A = '=HYPERLINK("http://evil.example","x")'
TITLE_B = 'plain, "quoted" title'
#: (width, height) of each staged image and what its bytes are
IMAGES = {"a.png": ((40, 30), "PNG"), "b.png": ((50, 20), "PNG"), "e.png": ((16, 16), "PNG"),
          "d.jpg": ((20, 20), "JPEG")}
#: Label Studio rectangles as an AC5 run stores them (percent of the image)
BOX_A = {"type": "rectanglelabels", "original_width": 40, "original_height": 30, "annotation": 1, "region": "r1",
         "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["cat"]}}
BOX_B = {"type": "rectanglelabels", "original_width": 50, "original_height": 20, "annotation": 2, "region": "r2",
         "value": {"x": 0, "y": 50, "width": 20, "height": 50, "rotation": 0, "rectanglelabels": ["dog"]}}


def _image(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 90, 160)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, str]) -> Iterator[tuple[config.Settings, dict]]:
    """One home for the module: batch SHOP (a, b, e: PNG; d: JPEG) with hostile gallery-dl
    metadata and box/class labels on a and b; batch LATE holding c.png, JPEG bytes under .png.
    Returns the settings and {file name: sha256}."""
    import redis  # deferred: the module's own connection (redis_conn is per test)

    home = write_home(tmp_path_factory.mktemp("stage-layouts"), servers)
    r = redis.Redis.from_url(servers["redis_url"])
    with fresh_schema(servers["database_url"]) as pg:
        cfg = ingest_home(home, pg)
        cfg.actions_dir.mkdir(exist_ok=True)
        zone3a = cfg.ssd.zone_path("3A")
        shas = {}
        meta = {"a.png": (TITLE_A, "-alice"), "b.png": (TITLE_B, "bob"), "e.png": ("@SUM(1+1)", "+carol"),
                "d.jpg": ("+cmd|' /C calc'!A0", "dave")}
        files = {SHOP: {n: _image(size, fmt, i) for i, (n, (size, fmt)) in enumerate(IMAGES.items())},
                 LATE: {"c.png": _image((12, 12), "JPEG", 7)}}
        for batch, named in files.items():
            d = zone3a / batch
            d.mkdir(parents=True)
            for name, data in named.items():
                (d / name).write_bytes(data)
                title, author = meta.get(name, ("late", "erin"))
                (d / f"{name}.json").write_text(json.dumps({
                    "category": "shop", "title": title, "user": {"name": author}, "shop": "north",
                    "tags": ["red", "small"], "extension": name.rsplit(".", 1)[1]}))
                shas[name] = hashlib.sha256(data).hexdigest()
            (d / "_READY").write_text("gallery\n")
        states = ingest_all(cfg, r, [zone3a / SHOP, zone3a / LATE])
        assert [s.status for s in states] == ["done", "done"], [(s.status, s.error) for s in states]
        for key, value, name in (("ls:box", BOX_A, "a.png"), ("ls:box", BOX_B, "b.png"), ("class", "cat", "a.png"),
                                 ("class", "dog", "b.png"), ("class", "pet", "b.png")):
            text = value if isinstance(value, str) else json.dumps(value)
            res = hoard(str(cfg.source), "label", "add", f"{key}={text}", shas[name])
            assert res.returncode == 0, res.stdout + res.stderr
        yield cfg, shas
    r.close()


RUN_AS = '\nrun_as = "root"\nallow_root = true' if os.geteuid() == 0 else ""

CONTRACT = """action_type = "AC2"
version = 1

[input_selector]
{selector}

[stage_layout]
{stage}

[run_spec]
kind = "local"
command = {command}
timeout_s = 120{run_as}

[[output_parser.results]]
name = "out"
glob = "{glob}"
format = "{fmt}"
node_field = "{field}"
node_key = "{key}"

[result_mapping.out]
into = "labels"
columns = {{ key = "key", value = "value" }}
"""


def worker(name: str, *args: str) -> str:
    """The run_spec command of a worker program of tests/data/workers."""
    path = str(WORKERS / name)
    head = ["/bin/sh", path] if name.endswith(".sh") else [sys.executable, path]
    return json.dumps([*head, "{input_root}", "{output_root}", *args])


def run_action(cfg: config.Settings, name: str, stage: str, command: str, glob: str, fmt: str = "csv",
               field: str = "file", key: str = "stem", selector: str = f'batches = ["{SHOP}"]\nfile_types = ["png"]'
               ) -> dict:
    """Write the contract and run it through the CLI (--here): its --json report."""
    write_contract(cfg, name, CONTRACT.format(selector=selector, stage=stage, command=command, run_as=RUN_AS,
                                              glob=glob, fmt=fmt, field=field, key=key))
    res = hoard(str(cfg.source), "action", "run", name, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "done", doc
    return doc


def labels(cfg: config.Settings, action: str, key: str) -> dict[str, list[str]]:
    """sha256 → the values of label `key` action `action` wrote."""
    with psycopg.connect(cfg.database_url) as conn:
        rows = conn.execute("SELECT encode(n.sha256, 'hex'), l.value FROM label l JOIN node n USING (node_id) "
                            "WHERE l.key = %s AND l.origin = %s ORDER BY 1, 2", [key, f"action:{action}"]).fetchall()
    out: dict[str, list[str]] = {}
    for sha, value in rows:
        out.setdefault(sha, []).append(value)
    return out


def test_index_csv_beside_images(shop) -> None:
    """A worker reading in/meta.csv (name, title, author) and in/images/<name>.png runs without a
    shim: every image is listed with its metadata, and a title or author starting a formula
    (=, +, -, @) reaches it prefixed with ', commas and quotes intact."""
    cfg, shas = shop
    run_action(cfg, "csv-index", 'template = "images/{stem}.png"\n[[stage_layout.index]]\npath = "meta.csv"\n'
               'format = "csv"\ncolumns = { name = "{stem}", title = "{meta.title}", author = "{meta.author}" }',
               worker("meta_scores.py"), "scores.csv")
    a, b, e = shas["a.png"], shas["b.png"], shas["e.png"]
    assert labels(cfg, "csv-index", "score") == {a: ["1200"], b: ["1000"], e: ["256"]}
    assert labels(cfg, "csv-index", "title_read") == {a: ["'" + TITLE_A], b: [TITLE_B], e: ["'@SUM(1+1)"]}
    assert labels(cfg, "csv-index", "author_read") == {a: ["'-alice"], b: ["bob"], e: ["'+carol"]}


def test_index_jsonl_typed(shop) -> None:
    """A JSON Lines index over {sha256}{ext}: each record's file, sha256 and size (a number)
    match the staged file; the title and a source's own field (tags, a list) come as JSON."""
    cfg, shas = shop
    run_action(cfg, "jsonl-index", 'template = "{sha256}{ext}"\n[[stage_layout.index]]\npath = "inputs.jsonl"\n'
               'format = "jsonl"\ncolumns = { file = "{path}", sha = "{sha256}", size = "{size}", '
               'title = "{meta.title}", tags = "{meta.tags}" }',
               worker("check_index.py", "inputs.jsonl"), "checked.jsonl", fmt="jsonl", field="sha", key="sha256")
    got = labels(cfg, "jsonl-index", "checked")
    assert got == {shas["a.png"]: [TITLE_A + '|["red", "small"]'], shas["b.png"]: [TITLE_B + '|["red", "small"]'],
                   shas["e.png"]: ['@SUM(1+1)|["red", "small"]']}


def test_index_json_list(shop) -> None:
    """A JSON index (one list) read by the same worker: the same records, from json.load."""
    cfg, shas = shop
    if not labels(cfg, "jsonl-index", "checked"):
        test_index_jsonl_typed(shop)
    doc = run_action(cfg, "json-index", 'template = "by/{sha256:2}/{sha256}{ext}"\n[[stage_layout.index]]\n'
               'path = "inputs.json"\nformat = "json"\ncolumns = { file = "{path}", sha = "{sha256}", '
               'size = "{size}", title = "{meta.title}", tags = "{meta.tags}" }',
               worker("check_index.py", "inputs.json"), "checked.jsonl", fmt="jsonl", field="sha", key="sha256")
    # (the worker exits 2 on a record that does not match its file; its labels are those of
    # the JSON Lines run, already stored: a record per input is what this run adds)
    assert doc["report"]["records"] == 3 and doc["report"]["run"]["exit_code"] == 0
    assert set(labels(cfg, "jsonl-index", "checked")) == {shas["a.png"], shas["b.png"], shas["e.png"]}


def test_index_path_list_shell_worker(shop) -> None:
    """A plain list of staged paths, one a line, read by a shell worker that checks each exists."""
    cfg, shas = shop
    run_action(cfg, "path-list", 'template = "imgs/{stem}{ext}"\n[[stage_layout.index]]\npath = "paths.txt"\n'
               'format = "paths"', worker("list_paths.sh"), "listed.csv", key="staged_path")
    got = labels(cfg, "path-list", "listed")
    with psycopg.connect(cfg.database_url) as conn:
        size: dict[str, str] = dict(conn.execute("SELECT encode(n.sha256, 'hex'), pc.size::text FROM node n JOIN physical_content pc "
                                 "USING (node_id)").fetchall())
    assert got == {shas[n]: [size[shas[n]]] for n in ("a.png", "b.png", "e.png")}


def crops(cfg: config.Settings) -> list[tuple[str, str]]:
    """(crop, its source image) sha256 pairs: the crops action run once over SHOP's PNGs (a
    child per image, relationship crop_of)."""
    if not crop_pairs(cfg):
        write_contract(cfg, "crop", CONTRACT.split("[[output_parser")[0].format(
            selector=f'batches = ["{SHOP}"]\nfile_types = ["png"]', stage='template = "{sha256}{ext}"',
            command=worker("crop.py"), run_as=RUN_AS) + '[[output_parser.children]]\nglob = "crops/*.png"\n'
            'relationship = "crop_of"\n')
        res = hoard(str(cfg.source), "action", "run", "crop", "--here", "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["status"] == "done", res.stdout + res.stderr
    return crop_pairs(cfg)


def crop_pairs(cfg: config.Settings) -> list[tuple[str, str]]:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute("SELECT encode(c.sha256, 'hex'), encode(p.sha256, 'hex') FROM edge e JOIN "
                            "relationship_type r USING (rel_id) JOIN node c ON c.node_id = e.child_id JOIN node p ON "
                            "p.node_id = e.parent_id WHERE r.name = 'crop_of' ORDER BY 1").fetchall()


def test_index_names_staged_parents(shop) -> None:
    """With include_parents, an index column {parent} / {parents} gives each input's parent as
    staged beside the input root (../parents/…), the path a worker opens from the input root."""
    cfg, shas = shop
    pairs = crops(cfg)
    doc = run_action(cfg, "parent-index", 'template = "{sha256}{ext}"\ninclude_parents = true\n'
                     '[[stage_layout.index]]\npath = "inputs.jsonl"\nformat = "jsonl"\ncolumns = { file = "{path}", '
                     'sha = "{sha256}", size = "{size}", title = "{parent}", tags = "{parents}" }',
                     worker("check_index.py", "inputs.jsonl"), "checked.jsonl", fmt="jsonl", field="sha",
                     key="sha256", selector='has_ancestor = [{ relationship = "crop_of" }]')
    assert doc["report"]["records"] == 3
    want = {crop: [f'../parents/{parent}.png|["../parents/{parent}.png"]'] for crop, parent in pairs}
    assert labels(cfg, "parent-index", "checked") == want


def test_folder_per_input_with_parent_and_meta(shop) -> None:
    """A folder per input holding the input, its parent and a meta.json naming that parent: crops
    made by one action are staged as <id>/image.png beside <id>/parent.png (their source image)
    for a shell worker that reads all three."""
    cfg, shas = shop
    crops(cfg)
    run_action(cfg, "folders", 'template = "{sha256:16}/image{ext}"\nparent_template = "{sha256:16}/parent{ext}"\n'
               'meta_template = "{sha256:16}/meta.json"', worker("folder.sh"), "folders.csv", key="staged_path",
               selector='has_ancestor = [{ relationship = "crop_of" }]')
    got = labels(cfg, "folders", "parent_bytes")
    with psycopg.connect(cfg.database_url) as conn:
        pairs = conn.execute("SELECT encode(c.sha256, 'hex'), pc.size::text FROM edge e JOIN relationship_type r "
                             "USING (rel_id) JOIN node c ON c.node_id = e.child_id JOIN physical_content pc ON "
                             "pc.node_id = e.parent_id WHERE r.name = 'crop_of'").fetchall()
    assert len(pairs) == 3 and got == {child: [size] for child, size in pairs}


def test_yolo_labels_from_stored_boxes(shop) -> None:
    """YOLO txt per image (class cx cy w h, fractions) and classes.txt, from the Label Studio
    rectangles stored as labels; an image without boxes gets an empty file."""
    cfg, shas = shop
    run_action(cfg, "yolo-labels", 'template = "images/{stem}.png"\n[[stage_layout.labels]]\nformat = "yolo"\n'
               'path = "labels/{stem}.txt"\nkey = "ls:box"\nclasses = ["cat", "dog"]\nclasses_path = "classes.txt"',
               worker("yolo.py"), "yolo.csv")
    assert labels(cfg, "yolo-labels", "yolo") == {
        shas["a.png"]: ["cat 0.350000 0.400000 0.500000 0.400000"],
        shas["b.png"]: ["dog 0.100000 0.750000 0.200000 0.500000"], shas["e.png"]: [""]}  # e: no boxes, an empty file


def test_coco_labels_from_stored_boxes(shop) -> None:
    """One COCO JSON: every staged image (its staged path, its real size) and its boxes in pixels."""
    cfg, shas = shop
    run_action(cfg, "coco-labels", 'template = "images/{stem}.png"\n[[stage_layout.labels]]\nformat = "coco"\n'
               'path = "annotations.json"\nkey = "ls:box"', worker("coco.py"), "coco.csv")
    assert labels(cfg, "coco-labels", "coco") == {shas["a.png"]: ["cat:4,6,20,12"], shas["b.png"]: ["dog:0,10,10,10"],
                                                  shas["e.png"]: [""]}
    assert labels(cfg, "coco-labels", "coco_size") == {shas["a.png"]: ["40x30"], shas["b.png"]: ["50x20"],
                                                       shas["e.png"]: ["16x16"]}


def test_per_input_json_labels(shop) -> None:
    """A JSON of each input's labels (keys chosen) beside the images."""
    cfg, shas = shop
    run_action(cfg, "json-labels", 'template = "images/{stem}.png"\n[[stage_layout.labels]]\nformat = "json"\n'
               'path = "labels/{stem}.json"\nkeys = ["class"]', worker("label_json.py"), "classes.jsonl",
               fmt="jsonl", field="sha", key="sha256")
    assert labels(cfg, "json-labels", "json_classes") == {shas["a.png"]: ["cat"], shas["b.png"]: ["dog,pet"],
                                                         shas["e.png"]: [""]}


def test_convert_on_stage(shop) -> None:
    """convert = "jpg": PNG inputs are staged as JPEG, JPEG bytes (d.jpg, and c.png, JPEG under
    .png) as they are, for a worker that reads only JPEG."""
    cfg, shas = shop
    run_action(cfg, "to-jpeg", 'template = "images/{stem}.jpg"\nconvert = "jpg"', worker("jpegs.py"), "jpegs.csv",
               selector=f'batches = ["{SHOP}", "{LATE}"]\nfile_types = ["png", "jpg"]')
    assert labels(cfg, "to-jpeg", "staged_as") == {shas[n]: ["jpeg"] for n in ("a.png", "b.png", "e.png", "d.jpg",
                                                                                "c.png")}


def test_extension_not_the_bytes_refused(shop) -> None:
    """A template ending .png over a file whose bytes are JPEG (c.png) is refused at stage, in
    one line naming the node and `convert`; the worker never runs."""
    cfg, shas = shop
    write_contract(cfg, "mislabelled", CONTRACT.format(
        selector=f'batches = ["{LATE}"]', stage='template = "images/{stem}.png"', command=worker("meta_scores.py"),
        run_as=RUN_AS, glob="scores.csv", fmt="csv", field="file", key="stem"))
    res = hoard(str(cfg.source), "action", "run", "mislabelled", "--here")
    assert res.returncode != 0
    err = (res.stderr or res.stdout).strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, err
    assert shas["c.png"][:12] in err and "JPEG bytes" in err and 'convert = "png"' in err, err
    assert labels(cfg, "mislabelled", "score") == {}


def test_metadata_never_a_path_unchecked(shop) -> None:
    """A per-input template over scraped metadata ({title}/meta.json, a title holding '/') is
    refused at stage in one line naming the node and the field; nothing is staged."""
    cfg, shas = shop
    write_contract(cfg, "by-title", CONTRACT.format(
        selector=f'batches = ["{SHOP}"]\nfile_types = ["png"]',
        stage='template = "{sha256}{ext}"\nmeta_template = "{title}/meta.json"', command=worker("meta_scores.py"),
        run_as=RUN_AS, glob="scores.csv", fmt="csv", field="file", key="stem"))
    res = hoard(str(cfg.source), "action", "run", "by-title", "--here")
    err = (res.stderr or res.stdout).strip()
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(err.splitlines()) == 1, err
    assert shas["a.png"][:12] in err and "title" in err and "'/'" in err, err


def test_contract_keys_checked() -> None:
    """The stage keys are validated: an unknown key, an unknown field and a fixed extension that
    contradicts `convert` are each one line naming the key."""
    base = {"action_id": "w", "action_type": "AC2", "version": 1, "input_selector": {},
            "run_spec": {"kind": "local", "command": ["true"]}, "output_parser": {"unmatched": "ignore"}}
    cases = [({"template": "{stem}.png", "indexes": []}, "stage_layout.indexes: unknown key"),
             ({"template": "{stem}.png", "index": [{"path": "m.csv", "format": "csv", "columns": {"t": "{meta}"}}]},
              "{meta}: meta needs a key"),
             ({"template": "{stem}.png", "convert": "jpg"}, "ends in .png but convert = 'jpg'"),
             ({"template": "{stem}{ext}", "index": [{"path": "../m.csv", "format": "paths"}]}, "cannot be a path"),
             ({"template": "{stem}{ext}", "index": [{"path": "m.csv", "format": "csv", "columns": {"p": "{parents}"}}]},
              "add include_parents = true or a parent_template")]
    for stage, want in cases:
        with pytest.raises(contract.ContractError) as e:
            contract.parse({**base, "stage_layout": stage}, "w.toml")
        assert len(e.value.lines) == 1 and want in e.value.lines[0], (stage, e.value.lines)


def test_csv_cells_never_start_a_formula() -> None:
    """OWASP's rule: a cell starting =, +, -, @, a tab or a CR gets a leading '; numbers stay."""
    assert [stagefiles.csv_cell(v) for v in ("=1+2", "+x", "-x", "@x", "\tx", "-5", "1.5e3", "ok")] == [
        "'=1+2", "'+x", "'-x", "'@x", "'\tx", "-5", "1.5e3", "ok"]


def test_path_list_line_cannot_be_split_by_metadata() -> None:
    """A path list's line holding a scraped value with a line break is refused, naming the node
    (it would read as two inputs); a value without one is written as it is."""
    ix = stagefiles.IndexFile(path="list.txt", format="paths", line="{path}\t{meta.title}")
    staged = [stagefiles.Staged(row={"sha256": "ab" * 32, "node_id": 7, "size": 3, "title": "one\ntwo"}, path="a.png")]
    with pytest.raises(stagefiles.PlacementError) as e:
        stagefiles.index_bytes(ix, staged)
    assert "node 7" in e.value.message and "line break" in e.value.message
    staged[0].row["title"] = "one, two"
    assert stagefiles.index_bytes(ix, staged) == b"a.png\tone, two\n"
