"""ActionContract files (UA_2, docs/actions.md): every example of the docs is a valid contract;
each hostile or wrong file is refused with one line per problem naming the file and the key;
`hoard action list|show|validate` as real `hoard` processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hoardfs.jobs.actions import contract
from hoardfs.jobs.actions.contract import ContractError, load_file, parse

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "actions.md"


def examples() -> dict[str, str]:
    """The TOML examples of docs/actions.md, by action_id."""
    found = {}
    for text in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S):
        m = re.search(r'^action_id = "([^"]+)"', text, re.M)
        assert m, f"an example of {DOC.name} without action_id:\n{text}"
        found[m.group(1)] = text
    return found


def write(directory: Path, text: str, name: str | None = None) -> Path:
    aid = re.search(r'^action_id = "([^"]+)"', text, re.M)
    path = directory / (name or f"{aid.group(1) if aid else 'x'}.toml")
    path.write_text(text)
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(ContractError) as e:
        load_file(path)
    assert all(line.startswith(str(path)) for line in e.value.lines), e.value.lines
    return e.value.lines


def one_line(path: Path, *words: str) -> str:
    lines = refused(path)
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_every_example_in_docs_actions_md_is_a_valid_contract_one_per_type(tmp_path: Path) -> None:
    """The docs cannot rot: each ```toml example loads (as its own file) and validates, and
    there is one per type AC1–AC5; the key table names every key of the model."""
    types = []
    for aid, text in examples().items():
        c = load_file(write(tmp_path, text))
        assert c.action_id == aid
        types.append(c.action_type)
    assert sorted(types) == ["AC1", "AC2", "AC3", "AC4", "AC5"]
    table = set(re.findall(r"^\| `([a-z_0-9]+)` \|", DOC.read_text(), re.M))
    assert set(contract.Contract.model_fields) <= table
    named = set(re.findall(r"`([a-z_0-9]+)", DOC.read_text()))
    for model in (contract.StageLayout, contract.RunLocal, contract.RunDocker, contract.RunKubectl,
                  contract.RunExternal, contract.RunLabelStudio, contract.Param, contract.ChildFiles,
                  contract.ResultFiles, contract.OutputParser, contract.ResultMapping, contract.Rule, contract.Gate):
        assert set(model.model_fields) <= named, (model.__name__, set(model.model_fields) - named)


def test_happy_path_per_type_reads_what_the_file_says(tmp_path: Path) -> None:
    ex = examples()
    ac1 = load_file(write(tmp_path, ex["blacklist-small-images"]))
    assert ac1.rules[0].black_list and ac1.rules[1].label is not None and ac1.rules[1].label.key == "quality"
    ac2 = load_file(write(tmp_path, ex["thumbnail"]))
    assert isinstance(ac2.run_spec, contract.RunLocal) and ac2.run_spec.run_as == "worker"
    assert ac2.params["size"].default == 256 and ac2.output_parser is not None
    assert ac2.output_parser.children[0].relationship == "thumbnail_of"
    ac3 = load_file(write(tmp_path, ex["canny"]))
    assert isinstance(ac3.run_spec, contract.RunDocker) and ac3.run_spec.gpus and ac3.gate is not None
    assert ac3.result_mapping["edges"].into == "result_canny"
    ac4 = load_file(write(tmp_path, ex["resize-variants"]))
    assert isinstance(ac4.run_spec, contract.RunExternal) and ac4.run_spec.done_marker == "_DONE"
    assert ac4.a4_scale == 4 and ac4.retries == 1
    ac5 = load_file(write(tmp_path, ex["label-studio"]))
    assert isinstance(ac5.run_spec, contract.RunLabelStudio) and ac5.run_spec.tasks_per_import == 500
    assert ac5.input_selector.limit == 5000


def test_hostile_files_are_one_line_each(tmp_path: Path) -> None:
    good = write(tmp_path, examples()["thumbnail"])
    link = tmp_path / "link.toml"
    link.symlink_to(good.name)
    one_line(link, "symbolic link")
    (tmp_path / "dir.toml").mkdir()
    one_line(tmp_path / "dir.toml", "not a regular file")
    one_line(tmp_path / "missing.toml", "no such file")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'action_id = "\xff\xfe"\n')
    one_line(binary, "not UTF-8", "byte 13")
    huge = tmp_path / "huge.toml"
    huge.write_text(examples()["thumbnail"] + "#" * contract.MAX_BYTES + "\n")
    one_line(huge, "bytes, more than a contract may hold")
    syntax = tmp_path / "syntax.toml"
    syntax.write_text('action_id = "syntax"\naction_type = AC2\n')
    one_line(syntax, "not valid TOML", "line 2")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    one_line(fifo, "not a regular file")  # opened without blocking, never read


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path) -> None:
    text = examples()["thumbnail"]
    one_line(write(tmp_path, text.replace("version = 2", "version = 2\ncolour = \"red\"")),
             "colour: unknown key", "allowed here: format, action_id")
    one_line(write(tmp_path, text.replace("version = 2", 'version = "two"')), "version:", "'two'")
    one_line(write(tmp_path, text.replace('timeout_s = 1800', 'timeout_s = 1800\nimage = "x"')),
             "run_spec.image: unknown key", "allowed here: run_as", "command")
    one_line(write(tmp_path, text.replace('kinds = ["image"]', 'kinds = ["image"]\nsql = "1=1"')),
             "input_selector.sql: unknown key")
    one_line(write(tmp_path, text.replace('type = "int"', 'type = "integer"')), "params.size.type")
    one_line(write(tmp_path, text.replace('layout = "by_sha256"', 'layout = "by_shaa"')),
             "stage_layout:", "'by_shaa' is not a built-in layout", "by_sha256")
    one_line(write(tmp_path, text.replace('layout = "by_sha256"', 'template = "{sha256}/{colour}"')),
             "stage_layout:", "unknown field {colour}")
    one_line(write(tmp_path, text.replace('default = 256', 'default = "big"')), "params.size:", "not a int")
    one_line(write(tmp_path, text.replace('kind = "local"\n', '')), "run_spec.kind: required key is missing",
             '"docker"')
    one_line(write(tmp_path, text.replace('kind = "local"', 'kind = "shell"')), "run_spec.kind: 'shell' is not a kind")
    one_line(write(tmp_path, text.replace("[params.size]", "[params.Size]")), "params.Size (the name):")
    hostile = refused(write(tmp_path, text.replace("version = 2", 'version = 2\n"a\\nb\\u202e\\u001b[2J" = 1')))
    assert hostile == [f"{tmp_path}/thumbnail.toml: a\\x0ab\\u202e\\x1b[2J: unknown key; allowed here: "
                       + ", ".join(contract.Contract.model_fields)]  # one line, nothing for the terminal to run
    # every problem of a file is its own line, each naming its key
    lines = refused(write(tmp_path, text.replace("version = 2", "version = 0\nzzz = 1")))
    assert len(lines) == 2 and "version:" in lines[0] and "zzz: unknown key" in lines[1], lines


def test_placeholders_must_be_known_and_params_declared(tmp_path: Path) -> None:
    text = examples()["thumbnail"]
    one_line(write(tmp_path, text.replace("{param:size}", "{param:width}")),
             "run_spec.command[6]: {param:width} is not a declared parameter", "[params.width]", "declared: size")
    one_line(write(tmp_path, text.replace('"--in", "{input_root}"', '"--in", "{inptu_root}"')),
             "run_spec.command[2]: unknown placeholder {inptu_root}", "{input_root}")
    one_line(write(tmp_path, text.replace('"--in",', '"--in{",')), "run_spec.command[1]: an unmatched '{'")
    assert load_file(write(tmp_path, text.replace('"--in",', '"--in{{x}}",'))).run_spec is not None
    canny = examples()["canny"]
    one_line(write(tmp_path, canny.replace('"--check"', '"--host={param:host}"')),
             "gate.hook[1]: {param:host} is not a declared parameter")


def test_a_worker_never_runs_as_root_unless_allowed(tmp_path: Path) -> None:
    text = examples()["thumbnail"]
    for who in ("root", "0"):
        one_line(write(tmp_path, text.replace('run_as = "worker"', f'run_as = "{who}"')),
                 "run_spec:", "would run as root", "allow_root = true")
    allowed = load_file(write(tmp_path, text.replace('run_as = "worker"', 'run_as = "root"\nallow_root = true')))
    assert isinstance(allowed.run_spec, contract.RunLocal) and allowed.run_spec.run_as == "root"
    canny = examples()["canny"]
    one_line(write(tmp_path, canny.replace('"--input",', '"--privileged", "--input",')),
             "run_spec.args[0]: '--privileged' is not allowed")
    one_line(write(tmp_path, canny.replace('"--input",', '"--user=0", "--input",')), "run_spec.args[0]")


def test_each_type_gets_only_its_keys(tmp_path: Path) -> None:
    ex = examples()
    one_line(write(tmp_path, ex["blacklist-small-images"] + '\n[run_spec]\nkind = "local"\ncommand = ["x"]\n'),
             "run_spec: an AC1 action is SQL only")
    ac2_no_parser = ex["thumbnail"].split("[[output_parser.children]]")[0]
    lines = refused(write(tmp_path, ac2_no_parser))  # (its a4_scale has no children left either)
    assert len(lines) == 2 and "output_parser: an AC2 action must say which output files" in lines[0], lines
    assert "a4_scale: this action declares no children" in lines[1], lines
    lines = refused(write(tmp_path, ex["label-studio"].replace('action_type = "AC5"', 'action_type = "AC2"')))
    assert 'run_spec.kind: "label_studio" is for AC5' in lines[0] and "output_parser:" in lines[1], lines
    one_line(write(tmp_path, ex["thumbnail"] + "\n[gate]\ntimeout_s = 600\n"), "gate: only GPU actions")
    no_children = ex["canny"].replace('version = 1', 'version = 1\na4_scale = 2')
    one_line(write(tmp_path, no_children), "a4_scale: this action declares no children")
    unmapped = ex["thumbnail"].split("[result_mapping.exif]")[0]
    one_line(write(tmp_path, unmapped), "result_mapping.exif: missing")
    one_line(write(tmp_path, ex["canny"].replace("status = \"status\", ", "")),
             "result_mapping.edges.columns: result_canny needs column 'status'")
    one_line(write(tmp_path, ex["canny"].replace("edge_ratio = \"ratio\"", "edges = \"ratio\"")),
             "result_mapping.edges.columns.edges: result_canny has no column 'edges'")


def test_output_globs_stay_inside_the_output_root(tmp_path: Path) -> None:
    text = examples()["thumbnail"]
    for glob in ("../*.jpg", "/etc/*", "thumbs//*.jpg", ""):
        one_line(write(tmp_path, text.replace('glob = "thumbs/*.jpg"', f'glob = "{glob}"')),
                 "output_parser.children[0]:", "output root")
    one_line(write(tmp_path, text.replace('(?P<input>[0-9a-f]{64})', '([0-9a-f]{64})')),
             "output_parser.children[0]:", "(?P<input>")
    one_line(write(tmp_path, text.replace('(?P<input>[0-9a-f]{64})', '(?P<input>[0-9a-f')),
             "output_parser.children[0]:", "not a regular expression")


def test_the_file_is_named_by_its_action_id(tmp_path: Path) -> None:
    one_line(write(tmp_path, examples()["thumbnail"], "thumbs.toml"), "name the file thumbnail.toml")


def test_result_tables_are_the_schemas() -> None:
    """RESULT_TABLES names the columns of the migrations' result tables (node and batch aside)."""
    sql = "\n".join(p.read_text() for p in sorted((REPO / "sql" / "migrations").glob("*.sql")))
    for table, (columns, required) in contract.RESULT_TABLES.items():
        if table == "labels":
            continue
        body = re.search(rf"CREATE TABLE {table} \((.*?)\n\);", sql, re.S)
        assert body, table
        cols = set(re.findall(r"^\s+(?:(\w+)\s+\w+)", body.group(1), re.M)) | set(
            re.findall(r"(\w+) real NOT NULL", body.group(1)))
        assert columns | {"node_id", "batch_id"} == cols - {"PRIMARY"}, (table, cols)
        assert required <= columns


def test_listing_a_directory_lists_bad_files_with_their_first_problem(tmp_path: Path) -> None:
    for text in examples().values():
        write(tmp_path, text)
    (tmp_path / "bad.toml").write_text('action_id = "bad"\naction_type = "AC9"\nversion = 0\n')
    (tmp_path / "notes.txt").write_text("not a contract\n")
    entries = contract.list_dir(tmp_path)
    assert [e.path.name for e in entries] == sorted(f"{a}.toml" for a in [*examples(), "bad"])
    bad = next(e for e in entries if e.contract is None)
    assert bad.path.name == "bad.toml" and bad.error is not None and bad.error.startswith("action_type:")
    assert bad.problems == 3
    assert contract.list_dir(tmp_path / "none") == []


# -- the commands -----------------------------------------------------------------------------

CONFIG = """\
database_url = "postgresql:///nothing?host={home}/no-pg"
redis_url = "unix://{home}/no-redis.sock"
[store]
allow_directory_disks = true
[[disks]]
label = "hdd1"
path = "d1"
capacity_gb = 1
[[disks]]
label = "hdd2"
path = "d2"
capacity_gb = 1
[ssd]
root = "ssd"
{zones}
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A hoard.toml (no service is reached: the action commands read files only) with the docs'
    examples in actions/ beside it, and one bad contract."""
    zones = "\n".join(f"[ssd.zones.{z}]\nquota_gb = 1" for z in ("3A", "3B", "3C", "3D"))
    (tmp_path / "hoard.toml").write_text(CONFIG.format(home=tmp_path, zones=zones))
    (tmp_path / "actions").mkdir()
    for text in examples().values():
        write(tmp_path / "actions", text)
    (tmp_path / "actions" / "broken.toml").write_text('action_id = "broken"\naction_type = "AC2"\nversion = 0\n'
                                                      'input_selector = {}\nzzz = 1\n')
    return tmp_path


def hoard(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOARD_")}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(home / "hoard.toml"), *args], cwd=home,
                          capture_output=True, text=True, timeout=120, env=env | {"COLUMNS": "200",
                                                                                  "PYTHONPATH": str(REPO)})


@pytest.mark.services
def test_action_list_shows_each_contract_and_each_bad_file_in_one_line(home: Path) -> None:
    res = hoard(home, "action", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # the directory's 6 files, then the built-ins none of them shadows (clip-embed, exif, keyframes, near-dup-hash)
    own = [ln for ln in lines if not ln.endswith(" builtin")]
    assert len(own) == 6 and "Traceback" not in res.stderr, lines
    assert sorted(ln.split()[0] for ln in lines if ln.endswith(" builtin")) == ["clip-embed", "exif", "keyframes",
                                                                                 "near-dup-hash"], \
        lines
    assert any(ln.startswith("thumbnail ") and " AC2 " in ln and " v2 " in ln for ln in lines), lines
    bad = [ln for ln in lines if "broken.toml" in ln]
    assert len(bad) == 1 and "(invalid)" in bad[0] and "+" in bad[0] and "hoard action validate" in bad[0], bad
    doc = json.loads(hoard(home, "action", "list", "--json").stdout)
    assert doc["dir"] == str(home / "actions")
    by_file = {Path(a["file"]).name: a for a in doc["actions"]}
    assert by_file["canny.toml"] | {"file": "", "source": ""} == {"file": "", "source": "", "action_id": "canny",
                                                                  "action_type": "AC3", "kind": "gpu", "version": 1,
                                                                  "run": "docker"}
    assert by_file["canny.toml"]["source"] == str(home / "actions" / "canny.toml")
    assert by_file["broken.toml"]["problems"] >= 2 and "error" in by_file["broken.toml"]


@pytest.mark.services
def test_action_dir_is_configurable_and_a_missing_one_holds_none(home: Path) -> None:
    toml = home / "hoard.toml"
    toml.write_text(toml.read_text() + '\n[actions]\ndir = "elsewhere"\n')
    res = hoard(home, "action", "list", "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["dir"] == str(home / "elsewhere")
    assert {a["source"] for a in doc["actions"]} == {"builtin"}  # the built-ins only
    res = hoard(home, "action", "list")
    assert res.returncode == 0 and "no action contracts in" in res.stderr
    assert res.stdout and all(ln.endswith(" builtin") for ln in res.stdout.splitlines()), res.stdout


@pytest.mark.services
def test_action_show(home: Path) -> None:
    res = hoard(home, "action", "show", "thumbnail")
    assert res.returncode == 0, res.stderr
    assert "AC2 (cpu)" in res.stdout and "param        size: int = 256 (16..4096)" in res.stdout
    doc = json.loads(hoard(home, "action", "show", "resize-variants", "--json").stdout)
    assert doc["contract"]["a4_scale"] == 4 and doc["contract"]["run_spec"]["kind"] == "external"
    res = hoard(home, "action", "show", "broken")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 2, res.stderr  # one line per problem
    assert all(ln.startswith(f"hoard: error: {home / 'actions' / 'broken.toml'}: ") for ln in res.stderr.splitlines())
    for name, words in (("nosuch", "no action 'nosuch'"), ("../hoard", "is not an action id")):
        res = hoard(home, "action", "show", name)
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.services
def test_action_validate(home: Path) -> None:
    res = hoard(home, "action", "validate", str(home / "actions" / "canny.toml"))
    assert res.returncode == 0 and "valid: action canny (AC3, version 1)" in res.stdout, res.stderr
    (home / "actions" / "link.toml").symlink_to("canny.toml")
    (home / "x.toml").write_bytes(b"\xff")
    for path, words in ((home / "actions" / "broken.toml", "zzz: unknown key"),
                        (home / "actions" / "link.toml", "symbolic link"), (home / "actions", "not a regular file"),
                        (home / "x.toml", "not UTF-8"), (home / "hoard.toml", "unknown key")):
        res = hoard(home, "action", "validate", str(path))
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (path, res.stderr)
        assert all(ln.startswith(f"hoard: error: {path}: ") for ln in res.stderr.splitlines()), res.stderr


def test_a_contract_is_toml_and_parse_names_where_it_came_from() -> None:
    doc = tomllib.loads(examples()["canny"])
    assert parse(doc, "somewhere").action_id == "canny"
    doc["retries"] = 11
    with pytest.raises(ContractError) as e:
        parse(doc, "somewhere")
    assert e.value.lines == ["somewhere: retries: Input should be less than or equal to 10 (got 11)"]
