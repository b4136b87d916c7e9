"""AC5's round trip through a real Label Studio 1.23 (tests/labelstudio.py starts it): a project,
tasks imported by local-files URL in batches of ≤ 1,000, annotations posted through its API as
a labeller's browser posts them, exported (a snapshot) as JSON and COCO, and turned back into
label rows equal to what was drawn, shape by shape (converters people use drop labels on the
way back: label-studio-converter#236). The faults each give one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from hoardfs.jobs.actions import labelstudio as lsc
from hoardfs.jobs.actions.labelstudio import Client, LabelStudioError, Task
from tests.helpers import REALDATA, needs_realdata
from tests.labelstudio import Server, _free_port, expected_label_rows, normalised

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="Cat"/><Label value="Dog"/></RectangleLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Cat"/><Label value="Dog"/></PolygonLabels>
  <Choices name="quality" toName="image"><Choice value="sharp"/><Choice value="blurred"/></Choices>
  <TextArea name="caption" toName="image"/>
</View>"""
REAL_IMAGES = ("pillow_hopper.jpg", "imageio_chelsea.png", "pillow_flower.jpg")


def _client(server: Server, **kw: object) -> Client:
    root = server.document_root
    args: dict = dict(url=server.url, token=server.token, zone_root=root, files_root=root, document_root=root,
                      converter_python=server.python, timeout_s=60.0)
    args.update(kw)
    return Client(**args)


def _stage(root: Path, blobs: list[tuple[bytes, str]]) -> list[Task]:
    """Files laid out as `hoard stage` lays out a run: <run>/<layout>/input/by_sha256/ab/<sha>.<ext>."""
    run = f"ac5-{uuid.uuid4().hex[:8]}"
    tasks = []
    for data, ext in blobs:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{run}/by_sha256/input/by_sha256/{sha[:2]}/{sha}.{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        tasks.append(Task(sha256=sha, path=rel))
    return tasks


def _images() -> list[tuple[bytes, str]]:
    """Real photos when ../shared/realdata is there, else generated ones of different sizes."""
    if REALDATA.is_dir():
        return [((REALDATA / "images" / n).read_bytes(), n.rsplit(".", 1)[1]) for n in REAL_IMAGES]
    out = []
    for i, size in enumerate(((128, 128), (451, 300), (480, 360))):
        buf = io.BytesIO()
        Image.new("RGB", size, (40 * i, 90, 200 - 30 * i)).save(buf, "PNG")
        out.append((buf.getvalue(), "png"))
    return out


def _title() -> str:
    return f"hoard test {uuid.uuid4().hex[:10]}"


def _post(server: Server, task_id: int, result: list[dict], cancelled: bool = False) -> int:
    """What Label Studio's page posts when a labeller presses Submit (or Skip)."""
    r = httpx.post(f"{server.url}/api/tasks/{task_id}/annotations/", timeout=60,
                   headers={"Authorization": f"Token {server.token}"},
                   json={"result": result, "was_cancelled": cancelled, "lead_time": 12.5})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _drawn(w: int, h: int, n: int) -> list[dict]:
    """One labeller's work on an image w×h: a box, a polygon, a choice, a caption (awkward floats,
    a rotated box, a text with a newline, quotes and non-ASCII letters)."""
    common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
    return [
        {"id": f"box{n}", "from_name": "box", "type": "rectanglelabels", **common,
         "value": {"x": 10.123456789012345, "y": 20.25 + n, "width": 33.333333333333336, "height": 40.0,
                   "rotation": 12.5 if n == 1 else 0, "rectanglelabels": ["Cat" if n else "Dog"]}},
        {"id": f"out{n}", "from_name": "outline", "type": "polygonlabels", **common,
         "value": {"points": [[1.5, 2.5], [50.0, 60.000000000000014], [10.0, 90.125 - n]], "closed": True,
                   "polygonlabels": ["Cat"]}},
        {"id": f"q{n}", "from_name": "quality", "type": "choices", "to_name": "image",
         "value": {"choices": ["sharp"] if n % 2 else ["blurred"]}},
        {"id": f"c{n}", "from_name": "caption", "type": "textarea", "to_name": "image",
         "value": {"text": [f"a \"cat\" no {n}\nsur la chaise, été"]}},
    ]


def _one_line(e: pytest.ExceptionInfo[LabelStudioError]) -> str:
    text = str(e.value)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    return text


@pytest.mark.services
def test_round_trip_gives_back_every_shape_as_drawn(label_studio: Server, tmp_path: Path) -> None:
    """Import three staged images, draw on them through the API, export, convert: every region and
    answer comes back as one label whose value holds exactly what was drawn; cancelled work is
    not a label; a second export gives the same rows; the COCO file names the staged files with
    categories from 0 and Label Studio's percent coordinates in pixels."""
    ls = _client(label_studio)
    tasks = _stage(label_studio.document_root, _images())
    title = _title()
    project = lsc.ensure_project(ls, title, CONFIG)
    assert lsc.ensure_project(ls, title, CONFIG) == project
    rep = lsc.import_tasks(ls, project, tasks, CONFIG)
    assert (rep.imported, rep.present, rep.requests) == (3, 0, 1)
    again = lsc.import_tasks(ls, project, tasks, CONFIG)
    assert (again.imported, again.present, again.requests) == (0, 3, 0)

    by_sha = {t.sha256: t for t in tasks}
    expected: set[tuple[str, str, str]] = set()
    drawn_on: dict[str, list[dict]] = {}
    for n, task in enumerate(sorted(lsc.project_tasks(ls, project), key=lambda t: t["id"])):
        sha = task["data"][lsc.SHA_KEY]
        assert task["data"][lsc.PATH_KEY] == by_sha[sha].path
        # Label Studio serves the staged file itself at the task's URL (the document root is right)
        got = httpx.get(label_studio.url + task["data"]["image"], timeout=60,
                        headers={"Authorization": f"Token {label_studio.token}"})
        assert got.status_code == 200 and got.content == (label_studio.document_root / by_sha[sha].path).read_bytes()
        with Image.open(label_studio.document_root / by_sha[sha].path) as im:
            w, h = im.size
        drawn = drawn_on[sha] = _drawn(w, h, n)
        ann = _post(label_studio, task["id"], drawn)
        _post(label_studio, task["id"], [{**drawn[0], "id": "skipped"}], cancelled=True)
        expected |= expected_label_rows(sha, ann, drawn)

    exported = lsc.export(ls, project)
    rows = lsc.annotations_to_labels(exported)
    assert len(rows) == 12 == len(expected)
    # shape by shape: every value read back equals what was drawn, numbers to the last bit
    assert normalised(rows) == expected
    assert {s for s, _, _ in rows} == set(by_sha)
    assert lsc.annotations_to_labels(lsc.export(ls, project)) == rows

    coco = json.loads(lsc.to_coco(ls, exported, CONFIG, tmp_path / "coco").read_text())
    assert sorted(c["id"] for c in coco["categories"]) == list(range(len(coco["categories"])))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    assert {im["file_name"] for im in images.values()} == {t.path for t in tasks}
    assert all(by_sha[im[lsc.SHA_KEY]].path == im["file_name"] for im in images.values())
    boxes = [a for a in coco["annotations"] if not a["segmentation"]]
    polys = [a for a in coco["annotations"] if a["segmentation"]]
    assert len(boxes) == len(polys) == 3
    for a in boxes:
        im = images[a["image_id"]]
        box = drawn_on[im[lsc.SHA_KEY]][0]["value"]
        assert names[a["category_id"]] == box["rectanglelabels"][0]
        if not box["rotation"]:     # (a rotated box's bbox is the rectangle around it)
            assert a["bbox"] == pytest.approx([box["x"] * im["width"] / 100, box["y"] * im["height"] / 100,
                                               box["width"] * im["width"] / 100, box["height"] * im["height"] / 100])
    for a in polys:
        im = images[a["image_id"]]
        points = drawn_on[im[lsc.SHA_KEY]][1]["value"]["points"]
        assert a["segmentation"][0] == pytest.approx([c * (im["width"], im["height"])[i % 2] / 100
                                                      for i, c in enumerate(xy for p in points for xy in p)])
        assert names[a["category_id"]] == "Cat"


@pytest.mark.services
@needs_realdata
def test_a_real_exports_shapes_survive_the_round_trip(label_studio: Server) -> None:
    """The regions of a real Label Studio export (label-studio-sdk's converter test data: boxes,
    a polygon, key points) drawn again on a staged image through the API come back equal."""
    config = (REALDATA / "labelstudio" / "ls_export_rect_polygon_keypoint.label_config.xml").read_text()
    real = json.loads((REALDATA / "labelstudio" / "ls_export_rect_polygon_keypoint.json").read_text())
    results = [r for t in real for a in t["annotations"] for r in a["result"]]
    ls = _client(label_studio)
    tasks = _stage(label_studio.document_root, _images()[:1])
    project = lsc.ensure_project(ls, _title(), config)
    lsc.import_tasks(ls, project, tasks, config)
    [task] = lsc.project_tasks(ls, project)
    ann = _post(label_studio, task["id"], results)
    rows = lsc.annotations_to_labels(lsc.export(ls, project))
    assert len(rows) == len(results)
    for r in results:
        key, value = lsc.label_of(ann, r)
        assert (tasks[0].sha256, key, value) in rows
        assert json.loads(value)["value"] == r["value"]


@pytest.mark.services
def test_1001_tasks_go_in_two_requests(label_studio: Server) -> None:
    ls = _client(label_studio)
    tasks = _stage(label_studio.document_root, [(b"tiny image %d" % i, "jpg") for i in range(1001)])
    project = lsc.ensure_project(ls, _title(), CONFIG)
    rep = lsc.import_tasks(ls, project, tasks, CONFIG)
    assert (rep.imported, rep.requests) == (1001, 2)
    listed = lsc.project_tasks(ls, project)
    assert sorted(t["data"][lsc.SHA_KEY] for t in listed) == sorted(t.sha256 for t in tasks)
    assert (lsc.import_tasks(ls, project, tasks, CONFIG).requests) == 0


@pytest.mark.services
def test_a_file_missing_in_3c_is_named_and_nothing_is_imported(label_studio: Server) -> None:
    ls = _client(label_studio)
    tasks = _stage(label_studio.document_root, _images())
    (label_studio.document_root / tasks[1].path).unlink()
    project = lsc.ensure_project(ls, _title(), CONFIG)
    with pytest.raises(LabelStudioError) as e:
        lsc.import_tasks(ls, project, tasks, CONFIG)
    line = _one_line(e)
    assert tasks[1].path in line and "stage the run again" in line
    assert lsc.project_tasks(ls, project) == []


@pytest.mark.services
def test_server_down_is_one_line_naming_the_url(label_studio: Server) -> None:
    ls = _client(label_studio, url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(LabelStudioError) as e:
        lsc.ensure_project(ls, _title(), CONFIG)
    line = _one_line(e)
    assert ls.url in line and "start it" in line and "label_studio.url" in line


@pytest.mark.services
def test_a_bad_token_is_one_line(label_studio: Server) -> None:
    ls = _client(label_studio, token="0" * 40)
    with pytest.raises(LabelStudioError) as e:
        lsc.export(ls, 1)
    line = _one_line(e)
    assert "refused the token" in line and "label_studio.token_file" in line and label_studio.url in line


# --- no server ------------------------------------------------------------------------------

def test_token_file_is_read_and_refused_when_open_to_others(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("abc123\n")
    os.chmod(f, 0o600)
    assert lsc.read_token(f) == "abc123"
    os.chmod(f, 0o644)
    with pytest.raises(LabelStudioError, match="chmod 600"):
        lsc.read_token(f)
    with pytest.raises(LabelStudioError, match="no such file"):
        lsc.read_token(tmp_path / "none")


def test_a_polygon_of_many_points_is_one_label_row() -> None:
    """A polygon of 400 points at full precision (~16 KB as a label; over PostgreSQL's 2,704-byte
    b-tree entries, refused before migration 010 indexed md5(value)) is one row, whole."""
    points = [[i / 3, 100 - i / 7] for i in range(400)]
    export = [{"id": 7, "data": {lsc.SHA_KEY: "a" * 64}, "annotations": [{"id": 1, "result": [
        {"id": "big", "from_name": "outline", "type": "polygonlabels", "value": {"points": points}}]}]}]
    [(sha, key, value)] = lsc.annotations_to_labels(export)
    assert (sha, key) == ("a" * 64, "ls:outline") and len(value) > 10_000
    assert json.loads(value)["value"]["points"] == points


def test_a_polygon_too_big_for_a_label_row_is_refused_naming_it() -> None:
    """A label holds at most a megabyte: a polygon of 40,000 points at full precision is refused
    with its task and region named, never truncated."""
    points = [[i / 3, 100 - i / 7] for i in range(40_000)]
    export = [{"id": 7, "data": {lsc.SHA_KEY: "a" * 64}, "annotations": [{"id": 1, "result": [
        {"id": "big", "from_name": "outline", "type": "polygonlabels", "value": {"points": points}}]}]}]
    with pytest.raises(LabelStudioError) as e:
        lsc.annotations_to_labels(export)
    assert "task 7" in _one_line(e) and "big" in str(e.value)


def test_a_task_hoard_did_not_import_is_named() -> None:
    export = [{"id": 9, "data": {"image": "x"}, "annotations": [{"id": 1, "result": []}]}]
    with pytest.raises(LabelStudioError, match="task 9"):
        lsc.annotations_to_labels(export)


def test_local_url_is_relative_to_the_document_root() -> None:
    ls = Client(url="http://x", token="t", zone_root=Path("/srv/ssd/3C"), files_root=Path("/data/hoard/3C"),
                document_root=Path("/data"))
    assert lsc.local_url(ls, "run 1/a b/é.jpg") == "/data/local-files/?d=hoard/3C/run%201/a%20b/%C3%A9.jpg"


def _answer(ann_id: int, *results: dict) -> list[dict]:
    return [{"id": 3, "data": {lsc.SHA_KEY: "b" * 64}, "annotations": [{"id": ann_id, "result": list(results)}]}]


def test_answers_come_back_as_plain_key_value_labels() -> None:
    """Choices (one row per value), a rating (its number), text areas (each text) and a taxonomy
    (each path joined with "/") are `<from_name>=<value>` labels — `scene=outdoor`, not the raw
    JSON — while a box stays its raw `ls:` row."""
    box = {"id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 10,
           "original_height": 10, "value": {"x": 1, "y": 2, "width": 3, "height": 4, "rectanglelabels": ["cat"]}}
    rows = lsc.annotations_to_labels(_answer(
        5,
        {"id": "a", "from_name": "scene", "to_name": "image", "type": "choices",
         "value": {"choices": ["outdoor", "night"]}},
        {"id": "b", "from_name": "quality", "to_name": "image", "type": "rating", "value": {"rating": 4}},
        {"id": "c", "from_name": "caption", "to_name": "image", "type": "textarea",
         "value": {"text": ["a cat\non a mat", "été"]}},
        {"id": "d", "from_name": "kind", "to_name": "image", "type": "taxonomy",
         "value": {"taxonomy": [["Animal", "Cat"], ["Plant"]]}},
        box))
    sha = "b" * 64
    assert normalised(rows) == {(sha, "scene", "outdoor"), (sha, "scene", "night"), (sha, "quality", "4"),
                                (sha, "caption", "a cat\non a mat"), (sha, "caption", "été"),
                                (sha, "kind", "Animal/Cat"), (sha, "kind", "Plant")} | \
        expected_label_rows(sha, 5, [box])


def test_answers_that_are_not_plain_keep_their_raw_row() -> None:
    """A per-region answer (its value has the region's coordinates), a control name that is no
    plain key (`a=b` could not be selected as KEY=VALUE) and a choice that is not text keep the
    raw `ls:<from_name>` row: nothing is lost, nothing is made up."""
    region = {"id": "r", "from_name": "what", "to_name": "image", "type": "choices",
              "value": {"x": 1, "y": 2, "width": 3, "height": 4, "rotation": 0, "choices": ["cat"]}}
    odd = {"id": "o", "from_name": "a=b", "to_name": "image", "type": "choices", "value": {"choices": ["x"]}}
    num = {"id": "n", "from_name": "scene", "to_name": "image", "type": "choices", "value": {"choices": [7]}}
    rows = lsc.annotations_to_labels(_answer(6, region, odd, num))
    assert sorted(k for _s, k, _v in rows) == ["ls:a=b", "ls:scene", "ls:what"]


def test_a_label_holding_nul_is_refused_naming_its_task() -> None:
    """A labeller's text holding NUL cannot be a label (PostgreSQL's text): one line naming the
    task and the control, not a failed write-intent for the whole run."""
    with pytest.raises(LabelStudioError) as e:
        lsc.annotations_to_labels(_answer(7, {"id": "t", "from_name": "caption", "to_name": "image",
                                              "type": "textarea", "value": {"text": ["bad\x00text"]}}))
    line = _one_line(e)
    assert "task 3" in line and "caption" in line and "NUL" in line


def test_a_rating_past_a_floats_range_or_not_finite_is_one_line_not_a_traceback() -> None:
    """A rating Label Studio holds as an integer past a float's range (10**400, written by its
    API) keeps its raw `ls:` row; a value holding NaN or an infinity (Python's JSON reads
    `Infinity`) is refused in one line naming the task and the control."""
    huge = {"id": "h", "from_name": "quality", "to_name": "image", "type": "rating", "value": {"rating": 10**400}}
    rows = lsc.annotations_to_labels(_answer(8, huge))
    assert [k for _s, k, _v in rows] == ["ls:quality"] and str(10**400) in rows[0][2]
    for bad in ({"rating": float("inf")}, {"x": float("nan"), "y": 1, "width": 2, "height": 3}):
        kind = "rating" if "rating" in bad else "rectanglelabels"
        with pytest.raises(LabelStudioError) as e:
            lsc.annotations_to_labels(_answer(9, {"id": "z", "from_name": "quality", "to_name": "image",
                                                  "type": kind, "value": bad}))
        line = _one_line(e)
        assert "task 3" in line and "quality" in line and "not finite" in line
