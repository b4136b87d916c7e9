"""AC5 runs end to end with a real Label Studio (tests/labelstudio.py): the built-in `label-studio`
contract over stored images — plan → stage → tasks (the project, tasks by URL) → labels (waiting
without a worker until every task is labelled, or `hoard action release`) → apply (the labels, the
export stored as an asset, the event: one write-intent) → finish. Annotations are posted through
Label Studio's API as a labeller's page posts them; the labels in SQL equal what was drawn."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import httpx
import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import labelstudio as lsc
from hoardfs.jobs.actions.runner import run_step
from hoardfs.jobs.actions.state import all_states, load_state, save_state
from tests.helpers import write_contract
from tests.labelstudio import Server, _free_port, expected_label_rows, normalised, point_at
from tests.test_action_runs import action_home, counts, hoard

# tier: the module's tests start hoard processes and Label Studio, and need PostgreSQL and Redis
pytestmark = pytest.mark.services

ACTION = "label-studio"


def ls_home(home: Path, pg, redis_conn, server: Server, seed: int, url: str | None = None) -> config.Settings:
    """A home with ingested images whose zone 3C Label Studio serves (tests/labelstudio.point_at)."""
    cfg, _batch = action_home(home, pg, redis_conn, seed=seed, items=4)
    point_at(Path(cfg.source), home, server, cfg.ssd.zone_path("3C"), url)
    return config.load(cfg.source)


def set_ls_url(cfg: config.Settings, url: str) -> config.Settings:
    text = Path(cfg.source).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("url = "))
    Path(cfg.source).write_text(text.replace(line, f"url = {json.dumps(url)}"))
    return config.load(cfg.source)


def drawn(n: int) -> list[dict]:
    """One labeller's work on an image: a box, a polygon, a choice, a caption (the built-in's names)."""
    common = {"to_name": "image", "original_width": 640, "original_height": 480, "image_rotation": 0}
    return [
        {"id": f"box{n}", "from_name": "box", "type": "rectanglelabels", **common,
         "value": {"x": 10.123456789012345, "y": 20.25 + n, "width": 33.333333333333336, "height": 40.0,
                   "rotation": 0, "rectanglelabels": ["animal" if n else "person"]}},
        {"id": f"out{n}", "from_name": "outline", "type": "polygonlabels", **common,
         "value": {"points": [[1.5, 2.5], [50.0, 60.000000000000014], [10.0, 90.125 - n]], "closed": True,
                   "polygonlabels": ["vehicle"]}},
        {"id": f"q{n}", "from_name": "class", "type": "choices", "to_name": "image",
         "value": {"choices": ["keep"] if n % 2 else ["unsure"]}},
        {"id": f"c{n}", "from_name": "caption", "type": "textarea", "to_name": "image",
         "value": {"text": [f"a \"cat\" no {n}\nsur la chaise, été"]}},
    ]


def post(server: Server, task_id: int, result: list[dict], cancelled: bool = False) -> int:
    r = httpx.post(f"{server.url}/api/tasks/{task_id}/annotations/", timeout=60,
                   headers={"Authorization": f"Token {server.token}"},
                   json={"result": result, "was_cancelled": cancelled, "lead_time": 3.5})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def expected_rows(sha: str, ann: int, result: list[dict]) -> set[tuple[str, str, str]]:
    return expected_label_rows(sha, ann, result)


def labels_in_sql(cfg: config.Settings) -> set[tuple[str, str, str]]:
    """The labels the action wrote (its origin), raw `ls:` values normalised (tests/labelstudio.normalised)."""
    with psycopg.connect(cfg.database_url) as conn:
        rows = conn.execute("SELECT encode(n.sha256, 'hex'), l.key, l.value FROM label l JOIN node n USING (node_id) "
                            "WHERE l.origin = %s", [f"action:{ACTION}"]).fetchall()
    return normalised(rows)


def queued_run(cfg: config.Settings) -> str:
    res = hoard(cfg.source, "action", "run", ACTION, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)["run"]


def burst(cfg: config.Settings) -> None:
    w = hoard(cfg.source, "worker", "--burst")
    assert w.returncode == 0, w.stderr


def run_tasks(server: Server, cfg: config.Settings, rid: str) -> list[dict]:
    st = load_state(cfg, rid)
    ls = lsc.Client(url=server.url, token=server.token, zone_root=cfg.ssd.zone_path("3C"),
                    files_root=cfg.label_studio.files_root, document_root=server.document_root)
    # one project per title: other runs' tasks may be there too, and tasks hoard did not import
    return sorted((t for t in lsc.project_tasks(ls, st.report["label_studio"]["project"])
                   if str(t["data"].get(lsc.PATH_KEY, "")).startswith(f"{rid}/")), key=lambda t: t["id"])


def export_of(cfg: config.Settings, rid: str, name: str = "export.json") -> tuple[str, list[dict] | dict]:
    """The run's stored export `label-studio/NAME` (export.json, or coco.json): its sha256 and
    content; the run's located nodes are exactly those two."""
    with psycopg.connect(cfg.database_url) as conn:
        found = dict(conn.execute("SELECT p.locator, encode(n.sha256, 'hex') FROM physical_path p JOIN node n "
                                  "USING (node_id) WHERE p.locator LIKE %s", [f"action:{rid}/%"]).fetchall())
    assert sorted(found) == [f"action:{rid}/label-studio/coco.json", f"action:{rid}/label-studio/export.json"], found
    sha = found[f"action:{rid}/label-studio/{name}"]
    with Store.open(cfg, writable=False) as store:
        return sha, json.loads(store.get(sha))


def test_ac5_round_trip_labels_equal_what_was_drawn_then_done_already(hoard_home: Path, pg, redis_conn,
                                                                     label_studio: Server) -> None:
    """The run waits in waiting_labels holding no worker while tasks are unlabelled (a poll finds
    3 of 4); once the last is labelled the poll moves it on: every region and answer is a label
    row equal to what was drawn, skipped work is none, the export is in the store linked to the
    run's batch (locator + an edge per labelled input); the same run again is done already."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=141)
    rid = queued_run(cfg)
    burst(cfg)
    st = load_state(cfg, rid)
    assert (st.status, st.step, st.done) == ("waiting_labels", "labels", ["plan", "stage", "tasks"])
    tasks = run_tasks(label_studio, cfg, rid)
    assert len(tasks) == st.inputs == st.report["label_studio"]["tasks"] > 1
    # Label Studio serves each staged file at its task's URL, and each task names its input
    for t in tasks:
        got = httpx.get(label_studio.url + t["data"]["image"], timeout=60,
                        headers={"Authorization": f"Token {label_studio.token}"})
        assert got.status_code == 200 and got.content
        assert t["data"][lsc.PATH_KEY].startswith(f"{rid}/")
    expected: set[tuple[str, str, str]] = set()
    for n, t in enumerate(tasks[:-1]):
        result = drawn(n)
        expected |= expected_rows(t["data"][lsc.SHA_KEY], post(label_studio, t["id"], result), result)
    post(label_studio, tasks[-1]["id"], drawn(9)[:1], cancelled=True)   # skipped: not finished
    run_step(str(cfg.source), rid, "labels")     # what the scheduled poll job runs
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("waiting_labels", "labels") and st.report["label_studio"]["finished"] == len(tasks) - 1
    exports = st.report["label_studio"]["exports"]
    run_step(str(cfg.source), rid, "labels")     # nothing moved in the project: no export snapshot is built
    st = load_state(cfg, rid)
    assert st.status == "waiting_labels" and st.report["label_studio"]["exports"] == exports
    assert st.report["label_studio"]["quiet_polls"] == 1 and st.report["label_studio"]["finished"] == len(tasks) - 1
    last = drawn(len(tasks))
    expected |= expected_rows(tasks[-1]["data"][lsc.SHA_KEY], post(label_studio, tasks[-1]["id"], last), last)
    base = counts(cfg)
    run_step(str(cfg.source), rid, "labels")
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "done" and st.done == ["plan", "stage", "tasks", "labels", "apply", "finish"], st.error
    assert st.report["label_studio"]["exports"] == exports + 1  # the last annotation moved the counters
    assert labels_in_sql(cfg) == expected and len(expected) == 4 * len(tasks)
    sha, export = export_of(cfg, rid)
    assert sorted(t["id"] for t in export) == [t["id"] for t in tasks]
    assert lsc.annotations_to_labels(export) == sorted(lsc.annotations_to_labels(export))
    with psycopg.connect(cfg.database_url) as conn:
        edges = conn.execute("SELECT count(*) FROM edge e JOIN node c ON c.node_id = e.child_id JOIN "
                             "relationship_type r USING (rel_id) WHERE r.name = 'labelled_in' AND c.sha256 = %s",
                             [bytes.fromhex(sha)]).fetchone()[0]
        events = conn.execute("SELECT status FROM action_event WHERE batch_id = %s", [rid]).fetchall()
    assert edges == len(tasks) and events == [("done",)]
    # the COCO file made by label-studio-sdk's converter: stored, located and linked like the export
    coco_sha, coco = export_of(cfg, rid, "coco.json")
    assert isinstance(coco, dict) and coco_sha != sha
    assert {im["file_name"] for im in coco["images"]} <= {t["data"][lsc.PATH_KEY] for t in tasks}
    assert coco["images"] and {c["name"] for c in coco["categories"]} >= {"animal", "person"}
    # each task's rectangle (a bbox) and polygon (a segmentation), on the image of its task
    shapes = sorted(bool(a["segmentation"]) for a in coco["annotations"])
    assert shapes == [False] * len(tasks) + [True] * len(tasks), coco["annotations"]
    assert {a["image_id"] for a in coco["annotations"]} == {im["id"] for im in coco["images"]}
    with psycopg.connect(cfg.database_url) as conn:
        coco_edges = conn.execute("SELECT count(*) FROM edge e JOIN node c ON c.node_id = e.child_id JOIN "
                                  "relationship_type r USING (rel_id) WHERE r.name = 'labelled_in' AND c.sha256 = %s",
                                  [bytes.fromhex(coco_sha)]).fetchone()[0]
    assert coco_edges == len(tasks)
    after = counts(cfg)
    assert after["action_event"] - base["action_event"] == 1 and after["node"] - base["node"] == 2
    assert not (cfg.ssd.zone_path("3C") / rid).exists()
    again = hoard(cfg.source, "action", "run", ACTION, "--here")
    assert again.returncode == 0 and "done already" in again.stdout, again.stdout + again.stderr
    assert counts(cfg) == after


def test_ac5_counters_standing_still_never_fail_a_run_whose_tasks_are_labelled(hoard_home: Path, pg, redis_conn,
                                                                               label_studio: Server) -> None:
    """The project's counters can stand still while this run's tasks change: another run's task
    loses its annotation as the run's last task gets one (one project per title: tasks, finished
    tasks, annotations, skipped ones all as they were). A poll past run_spec.timeout_s must not
    decide from the counters: it looks at an export and the run goes on, every task being
    labelled — before, the quiet poll kept the stale count and the run failed ('3 of 4 tasks
    were labelled')."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=144)
    rid = queued_run(cfg)
    burst(cfg)
    tasks = run_tasks(label_studio, cfg, rid)
    project = load_state(cfg, rid).report["label_studio"]["project"]
    auth = {"Authorization": f"Token {label_studio.token}"}
    r = httpx.post(f"{label_studio.url}/api/projects/{project}/import", timeout=60, headers=auth,
                   json=[{"image": tasks[0]["data"]["image"], "note": "another run's task"}])
    assert r.status_code == 201, r.text
    ls = lsc.Client(url=label_studio.url, token=label_studio.token, zone_root=cfg.ssd.zone_path("3C"),
                    files_root=cfg.label_studio.files_root, document_root=label_studio.document_root)
    [foreign] = [t for t in lsc.project_tasks(ls, project) if lsc.SHA_KEY not in t["data"]]
    theirs = post(label_studio, foreign["id"], drawn(5))
    expected: set[tuple[str, str, str]] = set()
    for n, t in enumerate(tasks[:-1]):
        expected |= expected_rows(t["data"][lsc.SHA_KEY], post(label_studio, t["id"], drawn(n)), drawn(n))
    run_step(str(cfg.source), rid, "labels")
    st = load_state(cfg, rid)
    assert st.status == "waiting_labels" and st.report["label_studio"]["finished"] == len(tasks) - 1
    before = lsc.progress(ls, project)
    gone = httpx.delete(f"{label_studio.url}/api/annotations/{theirs}/", timeout=60, headers=auth)
    assert gone.status_code == 204, gone.text
    last = drawn(len(tasks))
    expected |= expected_rows(tasks[-1]["data"][lsc.SHA_KEY], post(label_studio, tasks[-1]["id"], last), last)
    assert lsc.progress(ls, project) == before  # nothing moved, as the counters tell it
    st.waiting_since = "2000-01-01T00:00:00+00:00"  # run_spec.timeout_s (7 days) has passed
    save_state(cfg, st)
    run_step(str(cfg.source), rid, "labels")
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "done", st.error
    assert labels_in_sql(cfg) == expected
    gone = httpx.delete(f"{label_studio.url}/api/tasks/{foreign['id']}/", timeout=60, headers=auth)
    assert gone.status_code == 204, gone.text  # the session's project as the other tests expect it


def test_ac5_label_studio_down_at_tasks_is_one_line_then_release_imports_what_is_finished(
        hoard_home: Path, pg, redis_conn, label_studio: Server) -> None:
    """Label Studio not answering at `tasks`: the run fails there with one line naming the URL and
    resumes once it answers; `hoard action release RUN` then imports the one labelled task's work
    and the run is done with nothing for the others."""
    down = f"http://127.0.0.1:{_free_port()}"
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=142, url=down)
    res = hoard(cfg.source, "action", "run", ACTION, "--here")
    text = (res.stdout + res.stderr).strip()
    assert res.returncode == 3, text
    assert down in text and "start it" in text and "Traceback" not in text
    [rid] = all_states(cfg)
    st = load_state(cfg, rid.run_id)
    assert (st.status, st.step) == ("failed", "tasks") and down in st.error and "\n" not in st.error
    cfg = set_ls_url(cfg, label_studio.url)
    assert queued_run(cfg) == rid.run_id
    burst(cfg)
    assert load_state(cfg, rid.run_id).status == "waiting_labels"
    tasks = run_tasks(label_studio, cfg, rid.run_id)
    result = drawn(3)
    expected = expected_rows(tasks[0]["data"][lsc.SHA_KEY], post(label_studio, tasks[0]["id"], result), result)
    rel = hoard(cfg.source, "action", "release", rid.run_id)
    assert rel.returncode == 0 and "finished now are imported" in rel.stdout, rel.stdout + rel.stderr
    burst(cfg)
    st = load_state(cfg, rid.run_id)
    assert st.status == "done", st.error
    assert st.report["label_studio"]["released"] is True and st.report["label_studio"]["finished"] == 1
    assert labels_in_sql(cfg) == expected
    _sha, export = export_of(cfg, rid.run_id)
    assert len(export) == len(tasks)


def test_a_label_longer_than_a_btree_entry_is_stored_found_and_taken_off(pg) -> None:
    """A polygon of 300 points as a label value (~11 KB): before migration 010 the label's primary
    key and index held the value itself and PostgreSQL refused it ("index row size exceeds btree
    maximum"; the intent's 2,000-character cap before that). Now it is stored once (the same
    intent again adds nothing), found by a selector naming the value, and taken off by value."""
    from hoardfs.sql.apply import apply_write_intent
    from hoardfs.sql.labels import change_labels
    from hoardfs.sql.migrate import migrate
    from hoardfs.sql.selectors import parse_selector, query_nodes

    migrate(pg)
    sha = os.urandom(32).hex()
    pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)", [bytes.fromhex(sha)])
    pg.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, 10, 'png' FROM node "
               "WHERE sha256 = %s", [bytes.fromhex(sha)])
    rnd = random.Random(10)   # drawn by hand: digits that do not compress (PostgreSQL compresses index entries)
    points = [[rnd.random() * 100, rnd.random() * 100] for _ in range(300)]
    value = lsc.canonical({"type": "polygonlabels", "value": {"points": points, "polygonlabels": ["animal"]}})
    assert len(value) > 10_000
    intent = {"key": f"test:big:{sha}", "labels": [{"node": sha, "key": "ls:outline", "value": value, "origin": "t"},
                                                   {"node": sha, "key": "ls:outline", "value": value.replace("animal", "person")}]}
    assert apply_write_intent(pg, intent).counts["labels_new"] == 2
    again = change_labels(pg, [sha], "ls:outline", value, remove=False, origin="t")
    assert (again.changed, again.already) == (0, 1)
    stored = pg.execute("SELECT value FROM label l JOIN node n USING (node_id) WHERE n.sha256 = %s ORDER BY 1",
                        [bytes.fromhex(sha)]).fetchall()
    assert sorted(v for (v,) in stored) == sorted([value, value.replace("animal", "person")])
    found = query_nodes(pg, parse_selector({"labels": [{"key": "ls:outline", "value": value}]})).sha256
    assert sha in found
    gone = change_labels(pg, [sha], "ls:outline", value, remove=True, origin="t")
    assert gone.changed == 1
    [(left,)] = pg.execute("SELECT value FROM label l JOIN node n USING (node_id) WHERE n.sha256 = %s",
                           [bytes.fromhex(sha)]).fetchall()
    assert left == value.replace("animal", "person")


def test_a_forged_task_naming_a_staged_path_with_another_node_labels_nothing(hoard_home: Path, pg, redis_conn,
                                                                            label_studio: Server) -> None:
    """Any member of the project may add or edit tasks. A task naming one of the run's staged
    paths but another node's sha256 was taken as the run's (tasks were picked by path alone) and
    that other node — outside the run — got the labels drawn on it; now a task is the run's only
    when both its path and its node are one of the run's staged inputs."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=143)
    rid = queued_run(cfg)
    burst(cfg)
    tasks = run_tasks(label_studio, cfg, rid)
    mine = {t["data"][lsc.SHA_KEY] for t in tasks}
    with psycopg.connect(cfg.database_url) as conn:
        [(victim,)] = conn.execute("SELECT encode(sha256, 'hex') FROM node WHERE NOT (encode(sha256, 'hex') = ANY(%s)) "
                                   "ORDER BY node_id LIMIT 1", [sorted(mine)]).fetchall()
    project = load_state(cfg, rid).report["label_studio"]["project"]
    forged = dict(tasks[0]["data"], **{lsc.SHA_KEY: victim})
    r = httpx.post(f"{label_studio.url}/api/projects/{project}/import", timeout=60, json=[forged],
                   headers={"Authorization": f"Token {label_studio.token}"})
    assert r.status_code == 201, r.text
    [fake] = [t for t in run_tasks(label_studio, cfg, rid) if t["data"][lsc.SHA_KEY] == victim]
    post(label_studio, fake["id"], drawn(7))
    expected: set[tuple[str, str, str]] = set()
    for n, t in enumerate(tasks):
        result = drawn(n)
        expected |= expected_rows(t["data"][lsc.SHA_KEY], post(label_studio, t["id"], result), result)
    run_step(str(cfg.source), rid, "labels")
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "done", st.error
    assert labels_in_sql(cfg) == expected
    assert not any(sha == victim for sha, _k, _v in labels_in_sql(cfg))


SCENES = '''action_type = "AC5"
version = 1
description = "Scenes: a choice, a rating, a caption and a taxonomy per image."

[input_selector]
kinds = ["image"]

[stage_layout]
layout = "flat"

[run_spec]
kind = "label_studio"
project_title = "hoard scenes {seed}"
label_config = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="scene" toName="image" choice="multiple"><Choice value="outdoor"/><Choice value="indoor"/><Choice value="night"/></Choices>
  <Rating name="quality" toName="image" maxRating="5"/>
  <TextArea name="caption" toName="image"/>
  <Taxonomy name="kind" toName="image"><Choice value="Animal"><Choice value="Cat"/></Choice><Choice value="Plant"/></Taxonomy>
  <RectangleLabels name="box" toName="image"><Label value="cat"/></RectangleLabels>
</View>
"""
'''


def answers(n: int) -> list[dict]:
    """Answers for the whole image (and one box): `scene` outdoor (+ night on even n), a rating,
    a caption, a taxonomy path."""
    return [
        {"id": f"s{n}", "from_name": "scene", "to_name": "image", "type": "choices",
         "value": {"choices": ["outdoor", "night"] if n % 2 == 0 else ["outdoor"]}},
        {"id": f"r{n}", "from_name": "quality", "to_name": "image", "type": "rating", "value": {"rating": 1 + n % 5}},
        {"id": f"t{n}", "from_name": "caption", "to_name": "image", "type": "textarea",
         "value": {"text": [f"a cat on a mat, no {n}"]}},
        {"id": f"k{n}", "from_name": "kind", "to_name": "image", "type": "taxonomy",
         "value": {"taxonomy": [["Animal", "Cat"]]}},
        {"id": f"b{n}", "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 640,
         "original_height": 480, "image_rotation": 0,
         "value": {"x": 5.5, "y": 6.25, "width": 20.0, "height": 30.0, "rotation": 0, "rectanglelabels": ["cat"]}},
    ]


def selected(cfg: config.Settings, *args: str) -> set[str]:
    res = hoard(cfg.source, "select", *args, "--json")
    assert res.returncode == 0, res.stderr
    return {json.loads(line)["sha256"] for line in res.stdout.splitlines() if line.strip()}


def test_ac5_answers_come_back_as_key_value_labels_a_selector_finds(hoard_home: Path, pg, redis_conn,
                                                                   label_studio: Server) -> None:
    """Choices, a rating, a caption and a taxonomy drawn in Label Studio come back as plain
    `scene=outdoor`, `quality=3`, `caption=…`, `kind=Animal/Cat` labels (one row per choice), the
    box as its raw `ls:box` row; `hoard select --label scene=outdoor` finds exactly the labelled
    images, `--label scene=night` the even ones — the raw JSON (`ls:scene={…}`) matched neither."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=145)
    write_contract(cfg, "scenes", SCENES.format(seed=145))
    res = hoard(cfg.source, "action", "run", "scenes", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["run"]
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "waiting_labels", st.error
    ls = lsc.Client(url=label_studio.url, token=label_studio.token, zone_root=cfg.ssd.zone_path("3C"),
                    files_root=cfg.label_studio.files_root, document_root=label_studio.document_root)
    tasks = sorted((t for t in lsc.project_tasks(ls, st.report["label_studio"]["project"])
                    if str(t["data"].get(lsc.PATH_KEY, "")).startswith(f"{rid}/")), key=lambda t: t["id"])
    assert len(tasks) > 1
    expected: set[tuple[str, str, str]] = set()
    for n, t in enumerate(tasks):
        expected |= expected_label_rows(t["data"][lsc.SHA_KEY], post(label_studio, t["id"], answers(n)), answers(n))
    run_step(str(cfg.source), rid, "labels")
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "done", st.error
    with psycopg.connect(cfg.database_url) as conn:
        rows = conn.execute("SELECT encode(n.sha256, 'hex'), l.key, l.value FROM label l JOIN node n USING (node_id) "
                            "WHERE l.origin = 'action:scenes'").fetchall()
    assert normalised(rows) == expected
    shas = [t["data"][lsc.SHA_KEY] for t in tasks]
    assert {(s, k, v) for s, k, v in rows if k == "scene"} == \
        {(s, "scene", "outdoor") for s in shas} | {(s, "scene", "night") for s in shas[::2]}
    assert (shas[0], "kind", "Animal/Cat") in rows and (shas[1], "quality", "2") in rows
    assert selected(cfg, "--label", "scene=outdoor") == set(shas)
    assert selected(cfg, "--label", "scene=night") == set(shas[::2])
    assert selected(cfg, "--label", "kind=Animal/Cat", "--label", "quality=1") == {shas[0]}


def _image(server: Server, task: dict) -> int:
    return httpx.get(server.url + task["data"]["image"], timeout=60,
                     headers={"Authorization": f"Token {server.token}"}).status_code


def _by_node(server: Server, cfg: config.Settings, project: int) -> dict[str, list[dict]]:
    ls = lsc.Client(url=server.url, token=server.token, zone_root=cfg.ssd.zone_path("3C"),
                    files_root=cfg.label_studio.files_root, document_root=server.document_root)
    out: dict[str, list[dict]] = {}
    for t in lsc.project_tasks(ls, project):
        out.setdefault(t["data"].get(lsc.SHA_KEY, ""), []).append(t)
    return out


def _released_with_one_labelled(cfg: config.Settings, server: Server) -> tuple[str, list[dict], int]:
    """A run of the built-in whose first task is labelled, released: (run, its tasks, project)."""
    rid = queued_run(cfg)
    burst(cfg)
    tasks = run_tasks(server, cfg, rid)
    assert len(tasks) >= 3
    post(server, tasks[0]["id"], drawn(1)[2:3])  # class=keep
    rel = hoard(cfg.source, "action", "release", rid)
    assert rel.returncode == 0, rel.stdout + rel.stderr
    burst(cfg)
    st = load_state(cfg, rid)
    assert st.status == "done", st.error
    assert st.report["label_studio"]["kept"] == len(tasks) - 1
    return rid, tasks, st.report["label_studio"]["project"]


def test_ac5_partial_release_keeps_unlabelled_tasks_working_and_a_rerun_takes_them_over(
        hoard_home: Path, pg, redis_conn, label_studio: Server) -> None:
    """Released with 1 of N labelled: the 1 is imported, the N-1 unlabelled tasks stay in Label
    Studio and their images still load (the stage was trashed: 404). A run over those nodes
    imports none again (it had N-1 duplicates, their images broken): it takes the same tasks
    over, waits for them (`collect` takes a taken-over task's labels meanwhile), imports their
    labels, and the first run's stage then goes."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=146)
    rid, tasks, project = _released_with_one_labelled(cfg, label_studio)
    assert labels_in_sql(cfg) == {(tasks[0]["data"][lsc.SHA_KEY], "class", "keep")}
    rest = tasks[1:]
    assert [_image(label_studio, t) for t in rest] == [200] * len(rest)
    assert (cfg.ssd.zone_path("3C") / rid).is_dir()
    nodes = hoard_home / "rest.txt"
    nodes.write_text("".join(t["data"][lsc.SHA_KEY] + "\n" for t in rest))
    res = hoard(cfg.source, "action", "run", ACTION, "--nodes", str(nodes), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    again = json.loads(res.stdout)["run"]
    assert again != rid
    burst(cfg)
    st = load_state(cfg, again)
    assert st.status == "waiting_labels", st.error
    assert (st.report["label_studio"]["imported"], st.report["label_studio"]["taken_over"]) == (0, len(rest))
    by_node = _by_node(label_studio, cfg, project)
    assert all(len(by_node[t["data"][lsc.SHA_KEY]]) == 1 for t in tasks), "a node's task imported twice"
    expected = {(tasks[0]["data"][lsc.SHA_KEY], "class", "keep")}
    for n, t in enumerate(rest, 1):
        expected |= expected_rows(t["data"][lsc.SHA_KEY], post(label_studio, t["id"], drawn(n)), drawn(n))
        if n == 1:  # collect takes a task the run took over, as one it imported
            res = hoard(cfg.source, "action", "collect", again, "--json")
            assert res.returncode == 0, res.stdout + res.stderr
            assert labels_in_sql(cfg) == expected
    run_step(str(cfg.source), again, "labels")
    burst(cfg)
    st = load_state(cfg, again)
    assert st.status == "done", st.error
    assert labels_in_sql(cfg) == expected
    assert st.report["label_studio"]["kept"] == 0 and not (cfg.ssd.zone_path("3C") / again).exists()
    first = load_state(cfg, rid)
    assert first.report["label_studio"]["kept"] == 0 and not (cfg.ssd.zone_path("3C") / rid).exists()


def test_ac5_cancel_removes_unlabelled_tasks_of_a_waiting_and_of_a_released_run(
        hoard_home: Path, pg, redis_conn, label_studio: Server) -> None:
    """`hoard action cancel` of a run released with tasks unlabelled removes those tasks from
    the project and deletes its kept stage, its labels standing (before: "done; nothing to
    cancel", the tasks left with broken images); cancelling a waiting run removes its
    unlabelled tasks too (before: left behind, their images deleted with 3C) but never a
    labelled one (people's work)."""
    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=147)
    rid, tasks, project = _released_with_one_labelled(cfg, label_studio)
    res = hoard(cfg.source, "action", "cancel", rid)
    assert res.returncode == 0 and "removed from Label Studio" in res.stdout, res.stdout + res.stderr
    st = load_state(cfg, rid)
    assert st.status == "done" and st.report["label_studio"]["withdrawn"] == len(tasks) - 1
    assert not (cfg.ssd.zone_path("3C") / rid).exists()
    by_node = _by_node(label_studio, cfg, project)
    assert [t["id"] for t in by_node[tasks[0]["data"][lsc.SHA_KEY]]] == [tasks[0]["id"]]  # labelled: kept
    assert not any(t["id"] in {x["id"] for x in by_node.get(t["data"][lsc.SHA_KEY], [])} for t in tasks[1:])
    assert labels_in_sql(cfg) == {(tasks[0]["data"][lsc.SHA_KEY], "class", "keep")}
    # a waiting run over the same nodes: new tasks for the removed ones; cancelled, they go too
    res = hoard(cfg.source, "action", "run", ACTION, "--rerun", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    waiting = json.loads(res.stdout)["run"]
    burst(cfg)
    mine = run_tasks(label_studio, cfg, waiting)
    assert load_state(cfg, waiting).status == "waiting_labels" and len(mine) == len(tasks)
    post(label_studio, mine[1]["id"], drawn(1)[2:3])
    res = hoard(cfg.source, "action", "cancel", waiting)
    assert res.returncode == 0, res.stdout + res.stderr
    st = load_state(cfg, waiting)
    assert st.status == "cancelled" and st.report["label_studio"]["withdrawn"] == len(tasks) - 1
    assert [t["id"] for t in run_tasks(label_studio, cfg, waiting)] == [mine[1]["id"]]


def test_ac5_a_kept_task_whose_stage_was_deleted_by_hand_is_not_taken_over(
        hoard_home: Path, pg, redis_conn, label_studio: Server) -> None:
    """Released with 1 of N labelled, then the run's kept stage deleted from 3C by hand (its
    unlabelled tasks' images answer 404): a run over those nodes does not take the broken tasks
    over — it imports its own, whose images load, and the broken ones leave the project (each
    node has one task)."""
    import shutil

    cfg = ls_home(hoard_home, pg, redis_conn, label_studio, seed=148)
    rid, tasks, project = _released_with_one_labelled(cfg, label_studio)
    rest = tasks[1:]
    shutil.rmtree(cfg.ssd.zone_path("3C") / rid)
    assert [_image(label_studio, t) for t in rest] == [404] * len(rest)
    nodes = hoard_home / "rest.txt"
    nodes.write_text("".join(t["data"][lsc.SHA_KEY] + "\n" for t in rest))
    res = hoard(cfg.source, "action", "run", ACTION, "--nodes", str(nodes), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    again = json.loads(res.stdout)["run"]
    burst(cfg)
    st = load_state(cfg, again)
    assert st.status == "waiting_labels", st.error
    assert (st.report["label_studio"]["imported"], st.report["label_studio"]["taken_over"]) == (len(rest), 0)
    mine = run_tasks(label_studio, cfg, again)
    assert [_image(label_studio, t) for t in mine] == [200] * len(rest)
    by_node = _by_node(label_studio, cfg, project)
    assert all(len(by_node[t["data"][lsc.SHA_KEY]]) == 1 for t in tasks), by_node
    assert load_state(cfg, rid).report["label_studio"]["kept"] == 0
