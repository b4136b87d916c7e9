"""`hoard gui`'s Datasets pages: `/datasets/new` writes a spec with a live dry
run (counts per split × class, bytes, 3D's quota, thumbnails per class) and launches the build
as an RQ job, which a real `hoard worker --burst` runs to a sealed dataset; `/datasets` lists the
versions, diffs each against the one before, removes and materializes behind a confirmation.
Class names are label values, which anyone who labels may write: shown as text, never markup.
On a real home: PostgreSQL, Redis, the store, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from nicegui import run, ui

from hoardfs.fsd.outputs import seal
from hoardfs.jobs import launch
from hoardfs.sql.apply import apply_write_intent
from tests.gui_fixtures import BATCH, gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(400)

WITH_BATCH = pytest.mark.parametrize("gui_home", [{"_batch": True}], indirect=True)

#: a class name (a label's value) holding HTML and Markdown: the page shows these characters
HOSTILE = "<img src=x onerror=alert(1)>**strong** [l](javascript:alert(2))"

SPEC = f"""name = "pets"
layout = "imagefolder"
class_label = "class"
[selector]
batches = ["{BATCH}"]
file_types = ["png"]
[split]
ratios = {{ train = 0.5, val = 0.5 }}
salt = "s1"
"""


def _work(cfg_path: Path) -> None:
    """`hoard worker --burst`: a real worker process runs what is queued, then quits."""
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "worker", "--burst"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr


def _label(cfg, key: str, rows: list[tuple[str, str]], unlabel: list[str] = ()) -> None:
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        apply_write_intent(conn, {"key": f"test:{key}", "labels": [{"node": h, "key": "class", "value": v}
                                                                   for h, v in rows],
                                  "unlabels": [{"node": h, "key": "class"} for h in unlabel]})


async def _labelled(gui_home: Path):
    """The fixture batch ingested by a real worker; its PNGs labelled class = cat | dog, one of
    them the hostile class. Returns (cfg, the PNGs' sha256s)."""
    from hoardfs.base import config

    cfg = config.load(gui_home)
    await run.io_bound(launch.launch_ingest, cfg, BATCH, None)
    await run.io_bound(_work, gui_home)
    with psycopg.connect(cfg.database_url) as conn:
        shas = [r[0] for r in conn.execute(
            "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
            "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    assert len(shas) >= 3, shas
    _label(cfg, "setup", [(h, HOSTILE if i == 0 else ("cat" if i % 2 else "dog")) for i, h in enumerate(shas)])
    return cfg, shas


def _editor(user) -> ui.codemirror:
    found = user.find(marker="dataset-spec").elements
    assert len(found) == 1
    return next(iter(found))


async def _write(user, text: str) -> None:
    """Replace the spec in the editor, then ask for the dry run at once (the live one follows
    the editor after a pause; the test does not wait for a pause)."""
    _editor(user).value = text
    user.find(marker="dataset-dry-now").click()


@WITH_BATCH
async def test_dry_run_launch_build_list_diff_remove_materialize(user, gui_home: Path) -> None:
    """The new page's dry run counts per split × class (the hostile class among them, as its
    characters), bytes, 3D's quota and thumbnails; Launch queues the build and opens its run
    page; a worker builds it, sealed; /datasets lists it; a relabel and a second launch make v2,
    whose diff against v1 names the relabelled sample; Remove (confirmed) empties v1's
    directory, and Materialize (confirmed) queues its rebuild, which a worker seals again."""
    cfg, shas = await _labelled(gui_home)
    await sign_in(user, "otto")
    await user.open("/datasets")
    await user.should_see("no dataset yet", retries=50)

    await user.open("/datasets/new")
    await user.should_see(marker="dataset-spec")
    await _write(user, SPEC)
    await user.should_see(marker="dataset-counts", retries=100)
    await user.should_see(f"{len(shas)} samples", retries=50)
    await user.should_see(HOSTILE)  # a column of the counts and a class of the thumbnails: text
    await user.should_not_see(kind=ui.html)
    await user.should_not_see(kind=ui.markdown)
    await user.should_see("zone 3D admits it")
    await user.should_see(marker="thumb")
    assert len(user.find(marker="dataset-thumb-class").elements) == 3  # cat, dog, the hostile one
    assert not (cfg.ssd.zone_path("3D") / "pets-v1").exists()  # a dry run writes nothing

    user.find(marker="dataset-launch").click()
    await user.should_see(marker="run-status", retries=50)
    await user.should_see("queued")
    assert not (cfg.ssd.zone_path("3D") / "pets-v1").exists()  # queued: no byte moved in the GUI
    await run.io_bound(_work, gui_home)
    root1 = cfg.ssd.zone_path("3D") / "pets-v1"
    await run.io_bound(seal.check_sealed, root1, True)
    await user.open("/runs/dataset/pets")
    await user.should_see("done", retries=50)
    await user.should_see(str(root1))  # the report names the directory it sealed
    await user.should_see("otto")  # who launched it
    runs = await run.io_bound(launch.runs, cfg)
    assert [(r.kind, r.id, r.status, r.by) for r in runs if r.kind == "dataset"] == [("dataset", "pets", "done", "otto")]

    await user.open("/datasets")
    await user.should_see(marker="dataset-versions", retries=50)
    await user.should_see("v1")
    await user.should_see(str(root1))

    # a label changes: the next build from the GUI is version 2, and its diff says how
    flipped = shas[1]
    _label(cfg, "unlabel", [], unlabel=[flipped])
    _label(cfg, "relabel", [(flipped, "dog")])
    await user.open("/datasets/new")
    await _write(user, SPEC)
    await user.should_see(marker="dataset-counts", retries=100)
    user.find(marker="dataset-launch").click()
    await user.should_see(marker="run-status", retries=50)
    await run.io_bound(_work, gui_home)
    await user.open("/datasets")
    await user.should_see("v2", retries=50)
    user.find(marker="dataset-diff-v2").click()
    await user.should_see(marker="dataset-diff-summary", retries=50)
    await user.should_see("pets@1 → pets@2: 0 added, 0 removed, 0 moved between splits, 1 relabelled")
    await user.should_see("cat → dog")

    # Remove v1, confirmed: its directory goes; Materialize v1, confirmed: queued, a worker seals it again
    user.find(marker="dataset-remove-v1").click()
    await user.should_see(marker="dataset-confirm", retries=20)
    user.find(marker="dataset-confirm").click()
    await user.should_see("removed from 3D", retries=50)
    assert not root1.exists()
    await user.should_see(marker="dataset-materialize-v1", retries=50)
    user.find(marker="dataset-materialize-v1").click()
    await user.should_see(marker="dataset-confirm", retries=20)
    user.find(marker="dataset-confirm").click()
    await user.should_see(marker="run-status", retries=50)
    await run.io_bound(_work, gui_home)
    await run.io_bound(seal.check_sealed, root1, True)


def _error_line(user) -> str:
    found = user.find(marker="dataset-error").elements
    assert len(found) == 1, found
    line = next(iter(found)).text
    assert "\n" not in line and line
    return line


@pytest.mark.parametrize(("spec", "says"), [
    ('name = "pets\n', "the dataset spec is not valid TOML: "),
    (SPEC.replace("train = 0.5", "train = 0.4"), "split.ratios: the ratios sum to 0.9, not 1"),
    ('colour = "red"\n' + SPEC, "colour: unknown key"),
    (SPEC.replace('layout = "imagefolder"', 'layout = "/etc/hoard/secret.toml"'),
     "a viewer may dry-run the built-in layouts only"),
])
async def test_a_bad_spec_is_its_one_line_and_a_viewer_cannot_launch(user, gui_home: Path, spec: str,
                                                                     says: str) -> None:
    """What the editor holds is checked as it changes (the live dry run, no button): a bad spec
    is one line naming the problem; a viewer dry-runs the built-in layouts only (a layout file is
    read from the server's disk) and has no Launch button."""
    await sign_in(user, "vera")
    await user.open("/datasets/new")
    await user.should_see(marker="dataset-spec")
    await user.should_see("you can dry-run but not launch")
    await user.should_not_see(marker="dataset-launch")
    _editor(user).value = spec
    await user.should_see(says, retries=100)
    assert says in _error_line(user)
