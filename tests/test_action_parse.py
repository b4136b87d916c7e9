"""Reading a worker's output root back (jobs/actions/parse.py, docs/actions.md "Reading the
output"): children of inputs and of other children, result records typed for each table — and
every hostile or wrong output refused with one line naming the file and the next step."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import pytest

from hoardfs.jobs.actions import contract
from hoardfs.jobs.actions.parse import (
    MAX_RESULT_FILE_BYTES,
    Child,
    InputFile,
    OutputProblem,
    Parsed,
    Record,
    glob_regex,
    open_output,
    parse_outputs,
)

HEAD = """
action_id = "t"
action_type = "AC2"
version = 1
[input_selector]
kinds = ["image"]
[stage_layout]
layout = "flat"
[run_spec]
kind = "local"
command = ["/bin/true"]
"""


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


CAT, DOG = InputFile(sha("cat"), "cat.jpg"), InputFile(sha("dog"), "dogs/dog.png")
INPUTS = [CAT, DOG]


def make(body: str) -> contract.Contract:
    return contract.parse(tomllib.loads(HEAD + body), "test")


def put(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def problem(c: contract.Contract, root: Path, *words: str, inputs: list[InputFile] = INPUTS, a4_scale: int = 10,
            done_marker: str | None = None) -> str:
    """The one line parse_outputs refuses `root` with; it holds each of `words`."""
    with pytest.raises(OutputProblem) as e:
        parse_outputs(c, root, inputs, a4_scale=a4_scale, done_marker=done_marker)
    line = e.value.message
    assert "\n" not in line and e.value.exit_code == 5
    assert all(w in line for w in words), line
    return line


THUMBS = """
[[output_parser.children]]
glob = "thumbs/*.jpg"
parent_match = "thumbs/(?P<input>[^/]+)_[0-9]+\\\\.jpg"
relationship = "thumbnail_of"
labels = { variant = "thumb" }
"""


# -- the happy paths -----------------------------------------------------------------------------

def test_children_of_inputs_by_stem_sha256_and_staged_path(tmp_path: Path) -> None:
    """Each file a children rule's glob takes becomes a child of the input its path names
    (`**` included), with the rule's relationship and labels, sorted by path."""
    root = put(tmp_path / "out", {"thumbs/dog_2.jpg": "dd", "thumbs/cat_1.jpg": "c", "thumbs/cat_10.jpg": "cc",
                                  f"edges/x/{CAT.sha256}.png": "e", "by_path/dogs/dog.webp": "w"})
    c = make(THUMBS + """
[[output_parser.children]]
glob = "edges/**/*.png"
parent_match = ".*/(?P<input>[0-9a-f]{64})\\\\.png"
parent_key = "sha256"
[[output_parser.children]]
glob = "by_path/**"
parent_match = "by_path/(?P<input>.+)\\\\.webp"
parent_key = "staged_path"
relationship = "variant_of"
""")
    got = parse_outputs(c, root, INPUTS, a4_scale=3)
    assert got == Parsed([
        Child("by_path/dogs/dog.webp", DOG.sha256, None, "variant_of", {}, 1),
        Child(f"edges/x/{CAT.sha256}.png", CAT.sha256, None, "derived_from", {}, 1),
        Child("thumbs/cat_1.jpg", CAT.sha256, None, "thumbnail_of", {"variant": "thumb"}, 1),
        Child("thumbs/cat_10.jpg", CAT.sha256, None, "thumbnail_of", {"variant": "thumb"}, 2),
        Child("thumbs/dog_2.jpg", DOG.sha256, None, "thumbnail_of", {"variant": "thumb"}, 2),
    ], [], files=5, bytes=7)
    with open_output(root, got.children[0]) as f:
        assert f.read() == b"w"


def test_nested_children_by_output_path_video_scene_frame(tmp_path: Path) -> None:
    """keyframes' hierarchy: a scene is a child of the video (stem), a frame a child of the
    scene (its output path without extension); a result may name a child by its path."""
    video = InputFile(sha("video"), "clips/v1.mp4")
    root = put(tmp_path / "out", {"scenes/v1_001.mp4": "s1", "scenes/v1_002.mp4": "s2",
                                  "frames/scenes/v1_001/0001.jpg": "f", "frames/scenes/v1_002/0001.jpg": "f",
                                  "frames/scenes/v1_002/0002.jpg": "f",
                                  "scores.jsonl": '{"path": "frames/scenes/v1_002/0002.jpg", "k": "sharp"}\n'})
    c = make("""
[[output_parser.children]]
glob = "scenes/*.mp4"
relationship = "scene_of"
[[output_parser.children]]
glob = "frames/**/*.jpg"
parent_match = "frames/(?P<input>.+)/[0-9]+\\\\.jpg"
parent_key = "output_path"
relationship = "frame_of"
[[output_parser.results]]
name = "scores"
glob = "scores.jsonl"
format = "jsonl"
node_field = "path"
node_key = "output_path"
[result_mapping.scores]
into = "labels"
columns = { key = "k" }
""")
    got = parse_outputs(c, root, [video], a4_scale=10)
    assert [(ch.path, ch.parent_sha256, ch.parent_path, ch.relationship) for ch in got.children] == [
        ("frames/scenes/v1_001/0001.jpg", None, "scenes/v1_001.mp4", "frame_of"),
        ("frames/scenes/v1_002/0001.jpg", None, "scenes/v1_002.mp4", "frame_of"),
        ("frames/scenes/v1_002/0002.jpg", None, "scenes/v1_002.mp4", "frame_of"),
        ("scenes/v1_001.mp4", video.sha256, None, "scene_of"),
        ("scenes/v1_002.mp4", video.sha256, None, "scene_of"),
    ]
    assert got.records == [Record("scores", "labels", None, "frames/scenes/v1_002/0002.jpg",
                                  {"key": "sharp", "value": ""})]
    # `hoard action show` (and the GUI's Actions page) says so
    assert ("children", "frames/**/*.jpg → child of another child (output_path), frame_of") in contract.show_rows(c, root)


RESULTS = """
[[output_parser.results]]
name = "r"
glob = "{glob}"
format = "{fmt}"
node_field = "file"
node_key = "{key}"
[result_mapping.r]
into = "{into}"
columns = {columns}
"""


def results(fmt: str, into: str, columns: str, glob: str = "out.*", key: str = "stem") -> contract.Contract:
    return make(RESULTS.format(glob=glob, fmt=fmt, key=key, into=into, columns=columns))


def test_json_into_labels(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"out.json": json.dumps([
        {"file": "dog", "tag": "width", "v": 640}, {"file": "cat", "tag": "model", "v": "Nikon"},
        {"file": "cat", "tag": "flash"}])})
    got = parse_outputs(results("json", "labels", '{ key = "tag", value = "v" }'), root, INPUTS, a4_scale=1)
    assert got.records == [Record("r", "labels", DOG.sha256, None, {"key": "width", "value": "640"}),
                           Record("r", "labels", CAT.sha256, None, {"key": "model", "value": "Nikon"}),
                           Record("r", "labels", CAT.sha256, None, {"key": "flash", "value": ""})]
    assert (got.files, got.bytes) == (1, (root / "out.json").stat().st_size)


def test_jsonl_into_result_canny(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"out.jsonl": '{"file": "cat", "s": "ok", "ratio": 0.25}\n\n'
                                               '{"file": "dog", "s": "failed", "ratio": null}\n'})
    got = parse_outputs(results("jsonl", "result_canny", '{ status = "s", edge_ratio = "ratio" }'), root, INPUTS,
                        a4_scale=1)
    assert [(r.node_sha256, r.values) for r in got.records] == [
        (CAT.sha256, {"status": "ok", "edge_ratio": 0.25}), (DOG.sha256, {"status": "failed", "edge_ratio": None})]


def test_csv_into_result_ocr_box_typed(tmp_path: Path) -> None:
    """CSV cells are text: numbers are typed for the table's columns (real x, y, w, h; integer
    box_no), an empty optional cell is the column's default."""
    root = put(tmp_path / "out", {"out.csv": "\ufefffile,n,x,y,w,h,t,p\r\n"
                                             "cat,0,10,20.5,30,40,\"hello, world\",0.9\r\n"
                                             "cat,1,-1,0,0,0,,\r\n"
                                             "dog,0,1,2,3,4,\"two\nlines\",1\r\n"})
    c = results("csv", "result_ocr_box",
                '{ box_no = "n", x = "x", y = "y", w = "w", h = "h", text = "t", confidence = "p" }')
    got = parse_outputs(c, root, INPUTS, a4_scale=1)
    assert [(r.node_sha256, r.values) for r in got.records] == [
        (CAT.sha256, {"box_no": 0, "x": 10.0, "y": 20.5, "w": 30.0, "h": 40.0, "text": "hello, world",
                      "confidence": 0.9}),
        (CAT.sha256, {"box_no": 1, "x": -1.0, "y": 0.0, "w": 0.0, "h": 0.0, "text": "", "confidence": None}),
        (DOG.sha256, {"box_no": 0, "x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0, "text": "two\nlines",
                      "confidence": 1.0}),
    ]


def test_several_result_files_in_path_order_and_the_done_marker_is_not_an_output(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"b/out.jsonl": '{"file": "dog", "s": "ok"}\n', "a/out.jsonl": '{"file": "cat", '
                                  '"s": "skipped"}\n', "_DONE": ""})
    c = results("jsonl", "result_canny", '{ status = "s" }', glob="*/out.jsonl")
    got = parse_outputs(c, root, INPUTS, a4_scale=1, done_marker="_DONE")
    assert [r.node_sha256 for r in got.records] == [CAT.sha256, DOG.sha256] and got.files == 2
    problem(c, root, f"{root}/_DONE: no output_parser rule takes this file")  # without the marker: an output
    text = HEAD + RESULTS.format(glob="*/out.jsonl", fmt="jsonl", key="stem", into="result_canny",
                                 columns='{ status = "s" }')
    ext = contract.parse(tomllib.loads(text.replace('kind = "local"\ncommand = ["/bin/true"]',
                                                    'kind = "external"\ntimeout_s = 60')), "test")
    assert parse_outputs(ext, root, INPUTS, a4_scale=1).records == got.records  # the contract's marker


def test_ten_thousand_children_in_one_walk(tmp_path: Path) -> None:
    inputs = [InputFile(sha(str(i)), f"in/{i:05d}.jpg") for i in range(5000)]
    root = tmp_path / "out"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
        for i in range(5000):
            (root / d / f"{i:05d}.jpg").write_bytes(b"x")
    got = parse_outputs(make(THUMBS.replace("thumbs/*.jpg", "*/*.jpg").replace(
        "thumbs/(?P<input>[^/]+)_[0-9]+", "[ab]/(?P<input>[^/]+)")), root, inputs, a4_scale=2)
    assert len(got.children) == 10_000 and got.children[0].path == "a/00000.jpg"
    assert got.children[-1] == Child("b/04999.jpg", inputs[-1].sha256, None, "thumbnail_of", {"variant": "thumb"}, 1)
    assert [ch.path for ch in got.children] == sorted(ch.path for ch in got.children)


def test_glob_semantics() -> None:
    assert glob_regex("**/*.png").fullmatch("a.png") and glob_regex("**/*.png").fullmatch("x/y/a.png")
    assert not glob_regex("*.png").fullmatch("x/a.png")
    assert glob_regex("out/**").fullmatch("out/a/b") and not glob_regex("out/**").fullmatch("out")
    assert glob_regex("f[0-9]?.[!t]xt").fullmatch("f1a.csv".replace("csv", "cxt"))
    assert not glob_regex("f[0-9]?.[!t]xt").fullmatch("f1a.txt")
    assert glob_regex("a+b(1).json").fullmatch("a+b(1).json") and not glob_regex("a+b(1).json").fullmatch("aab1.json")
    assert glob_regex("[").fullmatch("[")


# -- what a worker may not write ----------------------------------------------------------------

def test_links_are_never_followed(tmp_path: Path) -> None:
    c = make(THUMBS)
    secret = tmp_path / "secret"
    secret.write_text("root only")
    root = put(tmp_path / "o1", {"thumbs/cat_1.jpg": "c"})
    (root / "thumbs" / "dog_1.jpg").symlink_to("../../secret")
    problem(c, root, f"{root}/thumbs/dog_1.jpg: a symbolic link (to ../../secret), never followed", "fix it")
    root = put(tmp_path / "o2", {"thumbs/cat_1.jpg": "c"})
    (root / "thumbs" / "dog_1.jpg").symlink_to(secret)
    problem(c, root, f"{root}/thumbs/dog_1.jpg: a symbolic link (to {secret})")
    root = put(tmp_path / "o3", {"thumbs/cat_1.jpg": "c"})
    (root / "thumbs" / "cat_2.jpg").symlink_to("cat_1.jpg")  # inside the root: refused as well
    problem(c, root, "thumbs/cat_2.jpg: a symbolic link (to cat_1.jpg)")
    root = put(tmp_path / "o4", {"thumbs/cat_1.jpg": "c"})
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "dog_1.jpg").write_text("d")
    (root / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    problem(c, root, f"{root}/more: a symbolic link (to {tmp_path}/elsewhere)")
    (tmp_path / "linked").symlink_to(tmp_path / "o1", target_is_directory=True)
    problem(c, tmp_path / "linked", f"output root {tmp_path}/linked: a symbolic link, never followed")
    (tmp_path / "file").write_text("x")
    problem(c, tmp_path / "file", f"output root {tmp_path}/file: not a directory that can be read")
    problem(c, tmp_path / "nowhere", f"output root {tmp_path}/nowhere: missing")
    root = put(tmp_path / "o5", {"thumbs/cat_1.jpg": "c", "_DONE": "x"})
    (root / "_DONE").unlink()
    (root / "_DONE").symlink_to(secret)  # a marker that is a link is no marker
    problem(c, root, f"{root}/_DONE: a symbolic link", done_marker="_DONE")


def test_a_hard_link_is_never_read(tmp_path: Path) -> None:
    """A hard link names a file that may live outside the output root (a worker allowed root, or a
    host without fs.protected_hardlinks, links /etc/shadow into it): it was read and stored as a
    child; now refused, whichever of its names is in the output root."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c"})
    os.link(secret, root / "thumbs" / "dog_1.jpg")
    problem(make(THUMBS), root, f"{root}/thumbs/dog_1.jpg: a hard link (2 names for one file), never read")
    secret.unlink()  # the other name gone: one name, the worker's own file
    assert [ch.path for ch in parse_outputs(make(THUMBS), root, INPUTS, a4_scale=10).children] == \
        ["thumbs/cat_1.jpg", "thumbs/dog_1.jpg"]


def test_fifo_and_socket_are_not_read(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c"})
    os.mkfifo(root / "thumbs" / "dog_1.jpg")
    problem(make(THUMBS), root, f"{root}/thumbs/dog_1.jpg: a fifo, not a regular file")


@pytest.mark.parametrize(("name", "shown", "why"), [
    ("cat_1\n.jpg", "cat_1\\x0a.jpg", "control characters"),
    ("cat_\x1b[2J1.jpg", "cat_\\x1b[2J1.jpg", "control characters"),
    ("cat_1\u202egpj.exe", "cat_1\\u202egpj.exe", "bidirectional override"),
    (os.fsdecode(b"cat_\xff1.jpg"), "cat_\\xff1.jpg", "not valid UTF-8"),
])
def test_hostile_names_are_one_line_shown_safely(tmp_path: Path, name: str, shown: str, why: str) -> None:
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c"})
    (root / "thumbs" / name).write_text("x")
    problem(make(THUMBS), root, f"{root}/thumbs/{shown}: ", why, "plain names")


def test_too_long_paths_and_names(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c"})
    deep = root / "/".join(["d" * 200] * 6)
    deep.mkdir(parents=True)
    problem(make(THUMBS + '[output_parser]\nunmatched = "ignore"\n'), root, "the path is 1", "at most 1000")
    from hoardfs.jobs.actions.parse import _name_problem  # no file system here takes a longer name to test it with
    assert _name_problem("thumbs/" + "é" * 128) == "a name of 256 bytes (at most 255)"


def test_more_children_than_a4_scale_allows_is_refused_first(tmp_path: Path) -> None:
    """Counted during the walk, before any other check: the line names the count, the limit and
    the key to raise."""
    root = put(tmp_path / "out", {f"thumbs/cat_{i}.jpg": "c" for i in range(5)} | {"thumbs/nobody_1.jpg": "x",
                                                                                  "stray.txt": "x"})
    os.mkfifo(root / "zz")
    c = make(THUMBS)
    problem(c, root, f"{root}: the worker wrote more than 4 children", "a4_scale × inputs allows (2 × 2)",
            "raise `a4_scale` in the contract", a4_scale=2)
    problem(c, root, f"{root}/zz: a fifo", a4_scale=3)  # within the limit: the next problem
    os.mkfifo(root / "thumbs" / "zz")
    problem(c, root, f"{root}/thumbs/zz: a fifo", "(and 1 more refused in the output)", a4_scale=3)


def test_a_child_whose_parent_is_unknown_or_ambiguous(tmp_path: Path) -> None:
    c = make(THUMBS)
    root = put(tmp_path / "o1", {"thumbs/cat_1.jpg": "c", "thumbs/cow_1.jpg": "x"})
    problem(c, root, f"{root}/thumbs/cow_1.jpg: its parent names no input by its staged file name without "
                     "extension ('cow')")
    root = put(tmp_path / "o2", {"thumbs/cat_1.jpg": "c"})
    twins = [CAT, InputFile(sha("cat2"), "other/cat.png")]
    problem(c, root, "thumbs/cat_1.jpg: its parent is ambiguous: 2 inputs have the staged file name without "
                     "extension 'cat'", 'parent_key / node_key = "sha256"', inputs=twins)
    root = put(tmp_path / "o3", {"thumbs/cat.jpg": "c"})
    problem(c, root, "thumbs/cat.jpg: its path does not match parent_match")


def test_output_path_parents_unknown_ambiguous_itself_or_in_a_loop(tmp_path: Path) -> None:
    """A parent named by output path must be exactly one other child, and following parents
    must end at an input."""
    c = make("""
[[output_parser.children]]
glob = "*.*"
parent_match = "(?P<input>[a-z])[a-z]?\\\\.(png|jpg)"
parent_key = "output_path"
""")
    problem(c, put(tmp_path / "o1", {"ab.png": "1"}), "o1/ab.png: its parent names no child 'a' (another output "
                                                      "file, without its extension)")
    problem(c, put(tmp_path / "o2", {"ab.png": "1", "a.png": "2", "a.jpg": "3"}),
            "o2/a.jpg: its parent is ambiguous: 2 children are 'a' without extension (a.jpg, a.png)")
    problem(c, put(tmp_path / "o3", {"a.png": "1"}), "o3/a.png: its parent_match names the file itself")
    loop = make("""
[[output_parser.children]]
glob = "?.?"
parent_match = "[a-z]\\\\.(?P<input>[a-z])"
parent_key = "output_path"
""")  # a.b's parent is b.a (b), b.a's is a.b (a)
    problem(loop, put(tmp_path / "o4", {"a.b": "1", "b.a": "2"}), "o4/a.b: its parents (parent_key = "
                                                                  "\"output_path\") go round in a loop", "no input")


def test_unmatched_files_error_or_ignored(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c", "log/worker.txt": "x"})
    problem(make(THUMBS), root, f"{root}/log/worker.txt: no output_parser rule takes this file", "unmatched = \"ignore\"")
    got = parse_outputs(make(THUMBS + '[output_parser]\nunmatched = "ignore"\n'), root, INPUTS, a4_scale=1)
    assert [ch.path for ch in got.children] == ["thumbs/cat_1.jpg"] and (got.files, got.bytes) == (1, 1)


def test_empty_output_and_a_declared_output_missing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    problem(make(THUMBS), tmp_path / "out", f"{tmp_path}/out: the worker wrote nothing (the contract declares "
                                            "children)", "worker's log")
    put(tmp_path / "out", {"_DONE": ""})
    problem(make(THUMBS), tmp_path / "out", "the worker wrote nothing", done_marker="_DONE")
    c = make(THUMBS + RESULTS.format(glob="exif.csv", fmt="csv", key="stem", into="labels", columns='{ key = "k" }'))
    root = put(tmp_path / "o2", {"thumbs/cat_1.jpg": "c"})
    problem(c, root, f"{root}: no file matches output_parser.results 'r' (glob 'exif.csv')", "did not write a declared")
    root = put(tmp_path / "o3", {"thumbs/cat_1.jpg": "c", "thumbs/cat_2.jpg": "c"})
    both = make(THUMBS + THUMBS.replace("thumbnail_of", "derived_from"))
    problem(both, root, "thumbs/cat_1.jpg: matched by output_parser.children[0] (glob 'thumbs/*.jpg') and "
                        "output_parser.children[1]", "narrow a glob")


def test_malformed_result_files_name_the_file_and_line(tmp_path: Path) -> None:
    canny = '{ status = "s", edge_ratio = "ratio" }'
    cases = [
        ("json", "out.json", '[{"file": "cat", "s": "ok"},\n {"file": "dog", "s": ', "out.json line 2 column 23: not "
                                                                                     "valid JSON"),
        ("json", "out.json", '{"file": "cat"}', 'out.json: a JSON dict, not an array of objects (format = "json")'),
        ("json", "out.json", '[{"file": "cat", "s": "ok"}, 3]', "out.json record 2: a JSON int, not an object"),
        ("json", "out.json", "[" * 100_000 + "]" * 100_000, "out.json: not JSON this reader takes (RecursionError"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "ok"}\n{"file": dog}\n', "out.jsonl line 2 column 10: not valid "
                                                                             "JSON"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "ok"}\n["dog"]\n', "out.jsonl line 2: a JSON list, not an object"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "ok", "ratio": 1.5}\n', "out.jsonl line 1: field 'ratio' "
                                                                            "(result_canny.edge_ratio) must be a "
                                                                            "number from 0 to 1 (got 1.5)"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "ok", "ratio": NaN}\n', "out.jsonl line 1: field 'ratio' "
                                                                            "(result_canny.edge_ratio) must be a "
                                                                            "number (got NaN)"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "fine"}\n', "out.jsonl line 1: field 's' (result_canny.status) must be one "
                                                                 "of ok, failed, skipped"),
        ("jsonl", "out.jsonl", '{"file": "cat"}\n', "out.jsonl line 1: field 's' (result_canny.status) is missing"),
        ("jsonl", "out.jsonl", '{"s": "ok"}\n', "out.jsonl line 1: field 'file' (node_field) is missing"),
        ("jsonl", "out.jsonl", '{"file": ["cat"], "s": "ok"}\n', "out.jsonl line 1: field 'file' (node_field) is not a string"),
        ("jsonl", "out.jsonl", '{"file": "cow", "s": "ok"}\n', "out.jsonl line 1: field 'file' names no input by its "
                                                               "staged file name without extension ('cow')"),
        ("jsonl", "out.jsonl", b'{"file": "cat", "s": "ok"}\n{"file": "\xff"}\n', "out.jsonl line 2: not UTF-8 (byte "
                                                                                 "37)"),
        ("jsonl", "out.jsonl", '{"file": "cat", "s": "ok"}\n{"file": "cat", "s": "ok"}\n',
         ": two result_canny records for node " + CAT.sha256),
        ("csv", "out.csv", "", "out.csv line 1: no header line"),
        ("csv", "out.csv", "file,s,s\ncat,ok,ok\n", "out.csv line 1: the header names field 's' twice"),
        ("csv", "out.csv", "file,s,ratio\ncat,ok,0.1\ndog,ok\n", "out.csv line 3: 2 fields, the header has 3"),
        ("csv", "out.csv", 'file,s,ratio\ncat,ok,0.1\ndog,"ok"x,\n', "out.csv line 3: not valid CSV"),
        ("csv", "out.csv", "file,s,ratio\ncat,ok,lots\n", "out.csv line 2: field 'ratio' (result_canny.edge_ratio) must be "
                                                          "a number (got \"lots\")"),
        ("csv", "out.csv", "file,status\ncat,ok\n", "out.csv line 2: field 's' (result_canny.status) is missing"),
    ]
    for i, (fmt, name, data, words) in enumerate(cases):
        root = put(tmp_path / f"o{i}", {name: data})
        problem(results(fmt, "result_canny", canny), root, f"{root}{'' if words[0] == ':' else '/'}{words}",
                "run the action again")
    ocr = '{ box_no = "n", x = "x", y = "y", w = "w", h = "h" }'
    for i, (rec, words) in enumerate([
        ({"n": -1, "x": 0, "y": 0, "w": 1, "h": 1}, "field 'n' (result_ocr_box.box_no) must be a whole number ≥ 0"),
        ({"n": 1.5, "x": 0, "y": 0, "w": 1, "h": 1}, "field 'n' (result_ocr_box.box_no) must be a whole number"),
        ({"n": 1, "x": 0, "y": 0, "w": -1, "h": 1}, "field 'w' (result_ocr_box.w) must be a number ≥ 0 (got -1)"),
        ({"n": 1, "x": True, "y": 0, "w": 1, "h": 1}, "field 'x' (result_ocr_box.x) must be a number (got true)"),
        ({"n": 1, "x": 1e39, "y": 0, "w": 1, "h": 1}, "field 'x' (result_ocr_box.x) must be a number"),
    ]):
        root = put(tmp_path / f"ocr{i}", {"out.jsonl": json.dumps({"file": "dog", **rec}) + "\n"})
        problem(results("jsonl", "result_ocr_box", ocr), root, f"{root}/out.jsonl line 1: {words}")
    for i, (rec, words) in enumerate([
        ({"k": ""}, "field 'k' (labels.key) must not be empty"),
        ({"k": "a\u0000b"}, "field 'k' (labels.key) holds NUL"),
        ({"k": "x" * 201}, "field 'k' (labels.key) is 201 characters long; at most 200"),
        ({"k": "a", "v": {"x": 1}}, "field 'v' (labels.value) must be a string"),
    ]):
        root = put(tmp_path / f"lab{i}", {"out.json": json.dumps([{"file": "dog", **rec}])})
        problem(results("json", "labels", '{ key = "k", value = "v" }'), root, f"{root}/out.json record 1: {words}")


def test_a_huge_result_file_is_not_read(tmp_path: Path) -> None:
    root = put(tmp_path / "out", {})
    with open(root / "out.jsonl", "wb") as f:
        f.truncate(10 << 30)  # 10 GiB, sparse: refused by its size, never read
    problem(results("jsonl", "labels", '{ key = "k" }'), root,
            f"{root}/out.jsonl: {10 << 30} bytes, more than a result file may hold ({MAX_RESULT_FILE_BYTES >> 20} MiB)",
            "split its results over several files")
