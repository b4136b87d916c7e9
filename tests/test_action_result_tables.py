"""An action's own typed result table (`[result_table]`, docs/actions.md "Result tables"), filled
from a team's fixed workers' outputs (tests/data/workers/scorer.py and scorer.sh, written before
the parser and never changed), through stage → run → parse → write-intent, against real
PostgreSQL: a name,score CSV → typed rows and templated labels; JSONL read by JSON path; children
whose parent a mapping file names; a type change as a new version; a bad cell refused in one
line; a selector on a result column."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.jobs.actions import contract as contracts
from hoardfs.jobs.actions import parse
from hoardfs.jobs.actions import remote as remote_actions
from hoardfs.sql import result_tables
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import query_nodes
from tests.helpers import write_contract
from tests.test_action_runs import action_home, hoard

pytestmark = pytest.mark.services

WORKERS = Path(__file__).resolve().parent / "data" / "workers"

CONTRACT = """action_type = "AC2"
version = {version}

[input_selector]
batches = ["{batch}"]
file_types = ["png"]

[stage_layout]
layout = "flat"

[run_spec]
kind = "local"
command = {command}
run_as = "root"
allow_root = true

{body}
"""

CSV_BODY = """[[output_parser.results]]
name = "scores"
glob = "scores.csv"
format = "csv"
node_field = "name"
node_key = "name"

[result_mapping.scores]
into = "result_table"
columns = { score = "score", passed = "passed", note = "note" }
labels = [{ key = "mask_score", value = "{score}" }, { key = "scored", value = "by maskr" }]

[result_table]
columns = { score = "float", passed = "bool", note = "text" }
"""


def python_worker(mode: str) -> str:
    return json.dumps([sys.executable, str(WORKERS / "scorer.py"), "{input_root}", "{output_root}", mode])


def shell_worker() -> str:
    return json.dumps([shutil.which("sh") or "/bin/sh", str(WORKERS / "scorer.sh"), "{input_root}",
                       "{output_root}"])


def contract(cfg: config.Settings, name: str, batch: str, command: str, body: str, version: int = 1) -> None:
    write_contract(cfg, name, CONTRACT.format(version=version, batch=batch, command=command, body=body))


def sizes(cfg: config.Settings, batch: str) -> dict[str, int]:
    """sha256 → size of the batch's png inputs."""
    with psycopg.connect(cfg.database_url) as conn:
        return dict(conn.execute(
            "SELECT encode(n.sha256, 'hex'), pc.size FROM batch_member m JOIN node n USING (node_id) "
            "JOIN physical_content pc USING (node_id) WHERE m.batch_id = %s AND pc.file_type = 'png'",
            [batch]).fetchall())


def score(size: int) -> float:
    return round((size % 1000) / 1000, 3)


def rows(cfg: config.Settings, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(cfg.database_url) as conn:
        return conn.execute(query, list(params)).fetchall()  # the tests' own text


def run(cfg: config.Settings, name: str) -> dict:
    res = hoard(cfg.source, "action", "run", name, "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_csv_becomes_typed_rows_and_templated_labels(hoard_home: Path, pg, redis_conn) -> None:
    """A name,score CSV keyed by the staged file name: one typed row per input in result_maskr
    (float, bool, text; node_id, batch_id, run, version) and labels mask_score=<score>, scored=by maskr."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=91, items=6)
    contract(cfg, "maskr", batch, python_worker("csv"), CSV_BODY)
    doc = run(cfg, "maskr")
    want = sizes(cfg, batch)
    got = rows(cfg, "SELECT encode(n.sha256, 'hex'), r.score, r.passed, r.note, r.batch_id, r.run, r.version "
                    "FROM result_maskr r JOIN node n USING (node_id)")
    assert sorted(got) == sorted((sha, score(size), score(size) > 0.5, f"size {size}", doc["run"], doc["run"], 1)
                                 for sha, size in want.items())
    types = dict(rows(cfg, "SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_name = 'result_maskr'"))
    assert types["score"] == "double precision" and types["passed"] == "boolean" and types["note"] == "text"
    labels = rows(cfg, "SELECT encode(n.sha256, 'hex'), l.key, l.value, l.origin FROM label l JOIN node n "
                       "USING (node_id) WHERE l.key IN ('mask_score', 'scored')")
    assert sorted(labels) == sorted([(sha, "mask_score", str(score(size)), "action:maskr") for sha, size in want.items()]
                                    + [(sha, "scored", "by maskr", "action:maskr") for sha in want])
    show = hoard(cfg.source, "action", "show", "maskr")
    assert "result_maskr: score float, passed bool, note text" in show.stdout, show.stdout


JSONL_BODY = """[[output_parser.results]]
name = "masks"
glob = "results/*.jsonl"
format = "jsonl"
node_field = "$.input.file"
node_key = "stem"

[result_mapping.masks]
into = "result_table"
columns = { score = "$.mask.score", pixels = "$.mask.pixels", box = "$.mask.box", tags = "$.tags", first = "$.tags[0]" }

[result_table]
columns = { score = "float", pixels = "int", box = "box", tags = "json", first = "text" }
"""


def test_jsonl_read_by_json_path(hoard_home: Path, pg, redis_conn) -> None:
    """JSON Lines whose node and values sit inside objects: JSON paths fill int, float, box, json
    and text columns, the node named by `$.input.file` (its stem)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=92, items=5)
    contract(cfg, "mask-json", batch, python_worker("jsonl"), JSONL_BODY)
    run(cfg, "mask-json")
    got = rows(cfg, "SELECT encode(n.sha256, 'hex'), r.score, r.pixels, r.box, r.tags, r.first "
                    "FROM result_mask_json r JOIN node n USING (node_id)")
    assert sorted(got) == sorted((sha, score(size), size, [1.0, 2.0, 3.5, 4.0], ["scored", "jsonl"], "scored")
                                 for sha, size in sizes(cfg, batch).items())


MAPPING_BODY = """[output_parser.mapping]
glob = "map.csv"
id_field = "id"
input_field = "source"
input_key = "name"

[[output_parser.children]]
glob = "masks/*.png"
parent_match = "masks/(?P<input>item[0-9]+)\\\\.png"
parent_key = "mapping"
relationship = "mask_of"

[[output_parser.results]]
name = "scores"
glob = "scores.csv"
format = "csv"
node_field = "id"
node_key = "mapping"

[result_mapping.scores]
into = "result_table"
columns = { score = "score" }

[result_table]
columns = { score = "float" }
"""


def test_mapping_file_names_parents_and_rows(hoard_home: Path, pg, redis_conn) -> None:
    """The worker names inputs by its own ids (item0001…) and writes map.csv (id → staged file
    name): each mask child is the child of the input its id maps to, and each score row lands on it."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=93, items=5)
    contract(cfg, "masker", batch, python_worker("mapping"), MAPPING_BODY)
    doc = run(cfg, "masker")
    want = sizes(cfg, batch)
    edges = rows(cfg, "SELECT encode(p.sha256, 'hex'), c.node_id FROM edge e JOIN relationship_type r USING (rel_id) "
                      "JOIN node p ON p.node_id = e.parent_id JOIN node c ON c.node_id = e.child_id "
                      "WHERE r.name = 'mask_of'")
    assert sorted(p for p, _ in edges) == sorted(want) and len({c for _, c in edges}) == len(want)
    with psycopg.connect(cfg.database_url) as conn:
        from hoardfs.fsd.store import Store  # deferred: the store opens only for this check
        with Store.open(cfg, writable=False) as store:
            for parent, child in edges:
                sha = conn.execute("SELECT encode(sha256, 'hex') FROM node WHERE node_id = %s", [child]).fetchone()[0]
                data = store.get(sha)
                assert data.startswith(b"mask of ")
                assert store.get(parent)[:32] == data[len(b"mask of "):]  # the mask of exactly that input
    got = rows(cfg, "SELECT encode(n.sha256, 'hex'), r.score, r.run FROM result_masker r JOIN node n USING (node_id)")
    assert sorted(got) == sorted((sha, score(size), doc["run"]) for sha, size in want.items())


SHELL_BODY = """[[output_parser.results]]
name = "scores"
glob = "scores.csv"
format = "csv"
node_field = "name"
node_key = "name"

[result_mapping.scores]
into = "result_table"
columns = {{ score = "score" }}

[result_table]
columns = {{ score = "{type}" }}
"""


def test_type_change_is_a_new_version(hoard_home: Path, pg, redis_conn) -> None:
    """The shell worker's whole-number scores in an int column (v1); the column declared float at
    the same version is refused in one line naming the change; at version 2 the table is migrated:
    the v1 values kept under score__v1, the new rows' score a float, each row naming its version."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=94, items=4)
    contract(cfg, "shscore", batch, shell_worker(), SHELL_BODY.format(type="int"))
    run(cfg, "shscore")
    want = sizes(cfg, batch)
    assert sorted(rows(cfg, "SELECT encode(n.sha256, 'hex'), r.score, r.version FROM result_shscore r "
                            "JOIN node n USING (node_id)")) == sorted((sha, size % 100, 1) for sha, size in want.items())
    contract(cfg, "shscore", batch, shell_worker(), SHELL_BODY.format(type="float"))
    res = hoard(cfg.source, "action", "run", "shscore", "--here")
    out = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr, out
    assert len(out) == 1 and "score: int → float" in out[0] and "raise `version` to 2" in out[0], out
    contract(cfg, "shscore", batch, shell_worker(), SHELL_BODY.format(type="float"), version=2)
    doc = run(cfg, "shscore")
    types = dict(rows(cfg, "SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_name = 'result_shscore'"))
    assert types["score"] == "double precision" and types["score__v1"] == "bigint"
    got = rows(cfg, "SELECT encode(n.sha256, 'hex'), r.score, r.score__v1, r.version, r.run FROM result_shscore r "
                    "JOIN node n USING (node_id)")
    v2 = sorted(r for r in got if r[3] == 2)
    assert v2 == sorted((sha, float(size % 100), None, 2, doc["run"]) for sha, size in want.items())
    assert sorted((r[0], r[2]) for r in got if r[3] == 1) == sorted((sha, size % 100) for sha, size in want.items())
    assert [r[0] for r in rows(cfg, "SELECT version FROM result_table_version WHERE name = 'result_shscore' "
                                    "ORDER BY 1")] == [1, 2]


def test_bad_cell_refused_in_one_line(hoard_home: Path, pg, redis_conn) -> None:
    """A score cell "n/a" in a float column: the run fails at parse with one line naming the file,
    its line and the column; no row, no label reaches the database."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=95, items=4)
    contract(cfg, "maskbad", batch, python_worker("bad"), CSV_BODY)
    res = hoard(cfg.source, "action", "run", "maskbad", "--here")
    out = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 5 and "Traceback" not in res.stdout + res.stderr, out
    assert len(out) == 1 and "scores.csv line 3" in out[0] and "(result_maskbad.score)" in out[0], out
    assert "is not a number (column type float)" in out[0] and '"n/a"' in out[0], out
    assert rows(cfg, "SELECT count(*) FROM result_maskbad")[0][0] == 0
    assert rows(cfg, "SELECT count(*) FROM label WHERE key = 'mask_score'")[0][0] == 0


def test_selector_filters_on_a_result_column(hoard_home: Path, pg, redis_conn) -> None:
    """`result.maskr.score > 0.5` (and its object form) picks exactly the inputs scored above
    0.5, in `hoard select` and a dataset spec's [selector]; a value of the wrong type, an unknown
    column or an action without a table is refused in one line before SQL runs."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=96, items=8)
    contract(cfg, "maskr", batch, python_worker("csv"), CSV_BODY)
    run(cfg, "maskr")
    want = sorted(sha for sha, size in sizes(cfg, batch).items() if score(size) > 0.5)
    low = sorted(sha for sha, size in sizes(cfg, batch).items() if score(size) <= 0.5)
    assert want and low, "the sample needs inputs on both sides of 0.5"
    with psycopg.connect(cfg.database_url) as conn:
        assert sorted(query_nodes(conn, {"results": ["result.maskr.score > 0.5"]}).sha256) == want
        assert sorted(query_nodes(conn, {"results": [{"action": "maskr", "column": "passed", "op": "eq",
                                                      "value": False}]}).sha256) == low
    sel = hoard_home / "sel.json"
    sel.write_text(json.dumps({"batches": [batch], "results": ["result.maskr.score > 0.5"]}))
    res = hoard(cfg.source, "select", "--file", str(sel))
    assert res.returncode == 0 and sorted(ln.split()[0] for ln in res.stdout.splitlines()) == want, res.stderr
    res = hoard(cfg.source, "select", "--batch", batch, "--result", "maskr.score>0.5")
    assert res.returncode == 0 and sorted(ln.split()[0] for ln in res.stdout.splitlines()) == want, res.stderr
    spec = hoard_home / "high.toml"
    spec.write_text('name = "high"\nlayout = "imagefolder"\nclass_label = "scored"\n[selector]\n'
                    f'batches = ["{batch}"]\nresults = ["result.maskr.score > 0.5"]\n'
                    '[split]\nratios = { train = 1.0 }\nsalt = "s1"\n')
    res = hoard(cfg.source, "dataset", "build", str(spec), "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    built = json.loads(res.stdout.strip().splitlines()[-1])
    assert built["selected"] == built["samples"] == len(want)  # a dataset spec's [selector] takes the same key
    for bad, says in (("result.maskr.score > \"high\"", "maskr.score is a float column; give numbers"),
                      ("result.maskr.colour = 1", "result_maskr has no column 'colour'"),
                      ("result.nobody.score > 1", "action 'nobody' has no result table")):
        sel.write_text(json.dumps({"results": [bad]}))
        res = hoard(cfg.source, "select", "--file", str(sel))
        out = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 2 and len(out) == 1 and says in out[0], out


def test_intent_rows_are_checked_against_the_registry_before_sql(pg) -> None:
    """A write-intent's rows for an action's table: a value not of its column's registered type, a
    column the table does not declare (a hostile name, a reserved one) are refused in one line and
    nothing is written; a hostile column or a table name that is taken is refused when the table
    is made; a good row lands with its run and version."""
    migrate(pg)
    assert result_tables.ensure(pg, "hostile", 1, {"score": "float", "tags": "json", "box": "box"}) == "result_hostile"
    sha = "ab" * 32
    base = {"nodes": [{"sha256": sha, "physical": {"size": 1}}], "batches": [{"batch_id": "hostile-b1"}]}
    for i, (values, says) in enumerate((({"score": "1; DROP TABLE node"}, "result_hostile.score of node"),
                                        ({'score" text, "x': 1.0}, "has no column"),
                                        ({"node_id": 5}, "has no column 'node_id'"),
                                        ({"box": [0, 0, -1, 2]}, "width and height are ≥ 0"),
                                        ({"score": True}, "must be a finite number"))):
        with pytest.raises(HoardError) as err:
            apply_write_intent(pg, {**base, "key": f"t:bad{i}", "results": [
                {"table": "result_hostile", "node": sha, "batch_id": "hostile-b1", "values": values}]})
        assert says in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert pg.execute("SELECT count(*) FROM result_hostile").fetchone()[0] == 0
    good = apply_write_intent(pg, {**base, "key": "t:good", "results": [
        {"table": "result_hostile", "node": sha, "batch_id": "hostile-b1",
         "values": {"score": 0.5, "tags": {"a": [1, "x"]}, "box": [1, 2, 3, 4]}},
        {"table": "result_hostile", "node": sha, "batch_id": "hostile-b1", "values": {"score": 0.7}}]})
    assert good.counts["results_new"] == 1  # one row per node and batch: the first listed is kept
    assert pg.execute("SELECT score, tags, box, run, version FROM result_hostile").fetchall() == [
        (0.5, {"a": [1, "x"]}, [1.0, 2.0, 3.0, 4.0], "hostile-b1", 1)]
    for action, columns, says in (("hostile2", {'x"; DROP TABLE node; --': "int"}, "is not a column name"),
                                  ("hostile3", {"run": "int"}, "a column every result table has"),
                                  ("table", {"x": "int"}, "a table hoardfs holds already"),
                                  ("canny", {"x": "int"}, "a table hoardfs holds already")):
        with pytest.raises(result_tables.ResultTableError, match=says):
            result_tables.ensure(pg, action, 1, columns)


def test_contract_refuses_what_the_parser_could_not_fill() -> None:
    """Contract problems of the result side, one line each: a mapping into result_table without
    [result_table]; a [result_table] nothing writes; a column it does not declare; a bad JSON
    path; an unmatched brace in a label template; node_key = "mapping" without a mapping file."""
    def problems(body: str) -> list[str]:
        doc = tomllib.loads(CONTRACT.format(version=1, batch="b", command='["true"]', body=body))
        doc["action_id"] = "maskr"
        with pytest.raises(contracts.ContractError) as err:
            contracts.parse(doc, "maskr.toml")
        return err.value.lines

    rule = CSV_BODY.split("[result_mapping.scores]")[0]
    cases = {
        'into = "result_table"\ncolumns = { score = "score" }\n': "needs [result_table]",
        'into = "labels"\ncolumns = { key = "name" }\n[result_table]\ncolumns = { score = "float" }\n':
            "result_table: no result_mapping writes into it",
        'into = "result_table"\ncolumns = { colour = "c" }\n[result_table]\ncolumns = { score = "float" }\n':
            "result_maskr has no column 'colour'",
        'into = "result_table"\ncolumns = { score = "$.a..b" }\n[result_table]\ncolumns = { score = "float" }\n':
            "is not a JSON path",
        'into = "labels"\nlabels = [{ key = "s", value = "{score" }]\n': "an unmatched '{'",
    }
    for mapping, says in cases.items():
        lines = problems(rule + "[result_mapping.scores]\n" + mapping)
        assert any(says in ln for ln in lines), (says, lines)
    lines = problems(rule.replace('node_key = "name"', 'node_key = "mapping"')
                     + '[result_mapping.scores]\ninto = "labels"\nlabels = [{ key = "s", value = "{score}" }]\n')
    assert any('"mapping" needs [output_parser.mapping]' in ln for ln in lines), lines


def test_values_are_typed_as_their_format_writes_them(tmp_path: Path) -> None:
    """A CSV cell of a json column is JSON text, a JSON record's string is a JSON string; a float
    column takes a double's range; an int column refuses 4.5 in one line naming file, line, column."""
    body = ('[[output_parser.results]]\nname = "a"\nglob = "a.csv"\nformat = "csv"\nnode_field = "name"\n'
            'node_key = "name"\n[[output_parser.results]]\nname = "b"\nglob = "b.jsonl"\nformat = "jsonl"\n'
            'node_field = "name"\nnode_key = "name"\n'
            '[result_mapping.a]\ninto = "result_table"\ncolumns = { meta = "meta", big = "big", n = "n" }\n'
            '[result_mapping.b]\ninto = "labels"\nlabels = [{ key = "k", value = "{$.meta.x}" }]\n'
            '[result_table]\ncolumns = { meta = "json", big = "float", n = "int" }\n')
    doc = tomllib.loads(CONTRACT.format(version=1, batch="b", command='["true"]', body=body))
    doc["action_id"] = "typed"
    c = contracts.parse(doc, "typed.toml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv").write_text('name,meta,big,n\nx.png,"{""x"": 1}",1e300,4\n')
    (out / "b.jsonl").write_text(json.dumps({"name": "x.png", "meta": {"x": "hello"}}) + "\n")
    inputs = [parse.InputFile(sha256="ab" * 32, staged_path="x.png")]
    got = parse.parse_outputs(c, out, inputs, a4_scale=1)
    assert [(r.into, r.values) for r in got.records] == [
        ("result_typed", {"meta": {"x": 1}, "big": 1e300, "n": 4}), ("labels", {"key": "k", "value": "hello"})]
    (out / "a.csv").write_text('name,meta,big,n\nx.png,{},1,4.5\n')
    with pytest.raises(parse.OutputProblem) as err:
        parse.parse_outputs(c, out, inputs, a4_scale=1)
    assert "a.csv line 2: field 'n' (result_typed.n) is not a whole number (column type int)" in str(err.value)


def test_a_mapping_file_that_cannot_be_trusted_is_refused_in_one_line(tmp_path: Path) -> None:
    """The mapping file is worker output too: missing, an id mapped to two inputs, an input it
    names that was not staged, or an id a child or record uses that it does not map — each one
    line naming the file (and line); nothing is taken."""
    doc = tomllib.loads(CONTRACT.format(version=1, batch="b", command='["true"]', body=MAPPING_BODY))
    doc["action_id"] = "masker"
    c = contracts.parse(doc, "masker.toml")
    inputs = [parse.InputFile(sha256="ab" * 32, staged_path="x.png"), parse.InputFile(sha256="cd" * 32,
                                                                                     staged_path="y.png")]
    cases = {
        "": "no file matches output_parser.mapping",
        "id,source\nitem0001,x.png\nitem0001,y.png\n": "map.csv line 3: id 'item0001' is mapped to two inputs",
        "id,source\nitem0001,z.png\n": "map.csv line 2: field 'source' names no input by its staged file name",
        "id,source\nitem0002,x.png\n": "masks/item0001.png: its parent names no input by its id in the mapping file",
    }
    for i, (mapping, says) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        (out / "masks").mkdir(parents=True)
        (out / "masks" / "item0001.png").write_bytes(b"mask")
        (out / "scores.csv").write_text("id,score\nitem0001,0.5\n")
        if mapping:
            (out / "map.csv").write_text(mapping)
        with pytest.raises(parse.OutputProblem) as err:
            parse.parse_outputs(c, out, inputs, a4_scale=1)
        assert says in str(err.value) and "\n" not in str(err.value), (says, str(err.value))


def test_a_remote_hosts_records_into_the_actions_own_table_are_taken(tmp_path: Path) -> None:
    """A --remote host's parsed.json: records into result_<action> (the contract's own table) are
    a table the contract maps to; another action's table is not."""
    doc = tomllib.loads(CONTRACT.format(version=1, batch="b", command='["true"]', body=CSV_BODY))
    doc["action_id"] = "maskr"
    c = contracts.parse(doc, "maskr.toml")
    inp = "ab" * 32
    record = {"rule": "scores", "into": "result_maskr", "node_sha256": inp, "child_path": None,
              "values": {"score": 0.5, "passed": True, "note": "x"}}
    _, records, _ = remote_actions._checked(c, {"children": [], "records": [record]}, {inp}, limit=1, max_bytes=None)
    assert records == [record]
    with pytest.raises(remote_actions._Bad, match="into a table the contract maps to"):
        remote_actions._checked(c, {"children": [], "records": [record | {"into": "result_other"}]}, {inp}, limit=1,
                                max_bytes=None)
