"""`hoard gui` slice 5: batches and the asset browser — a real ingest (worker process, store,
PostgreSQL), then the batch list, search, thumbnails from the store, a node page with its
metadata, relations and mount paths, and the low-quality flag (operators only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from nicegui import ui

from tests.gui_fixtures import BATCH, gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.parametrize("gui_home", [{"_batch": True}], indirect=True)]


def _ingest(cfg_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "ingest", "--ready", "--here"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode in (0, 5), res.stderr  # 5: done with rejects (the fixture has one)


def _an_image(cfg_path: Path) -> str:
    from hoardfs.base import config

    with psycopg.connect(config.load(cfg_path).database_url) as conn:
        return conn.execute("SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
                            "WHERE pc.file_type = 'png' ORDER BY n.node_id LIMIT 1").fetchone()[0]


async def test_a_deleted_batch_is_shown_deleted(user, gui_home: Path) -> None:
    """After `hoard delete --batch`, the Batches page says the batch was deleted (not its old
    "done with rejects" beside 0 members)."""
    _ingest(gui_home)
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(gui_home), "delete", "--batch", BATCH, "--yes"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    await sign_in(user, "vera")
    await user.open("/batches")
    await user.should_see(BATCH)
    await user.should_see("deleted")
    await user.should_not_see("done with rejects")


async def test_batches_assets_node_and_thumbnail(user, gui_home: Path) -> None:
    _ingest(gui_home)
    await sign_in(user, "vera")
    await user.open("/batches")
    await user.should_see(BATCH)
    await user.should_see("done with rejects")
    await user.open(f"/assets?batch={BATCH}&kind=image")
    await user.should_see("assets on page 1")
    sha = _an_image(gui_home)
    assert user.find(marker="thumb").elements  # image cards show thumbnails
    r = await user.http_client.get(f"/thumb/{sha}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.gui.context import ctx

    assert thumbs.path(ctx().cfg, sha).exists()  # cached
    assert (await user.http_client.get(f"/thumb/{'0' * 64}")).status_code == 404
    await user.open(f"/node/{sha}")
    for text in ("png (image)", f"batches: {BATCH}", "/by-hash/", f"/batches/{BATCH}/", "Metadata", "source gallery",
                 "parents (", "not flagged"):
        await user.should_see(text)
    await user.should_not_see(marker="node-flag")  # a viewer cannot flag
    await user.open("/assets?source=gallery&since=2000-01-01")
    await user.should_see("assets on page 1")
    await user.open("/assets?source=gallery&until=2000-01-01")
    await user.should_see("nothing matches")
    await user.open(f"/node/{'f' * 64}")
    await user.should_see("no node")


async def test_operator_flags_and_unflags_low_quality(user, gui_home: Path) -> None:
    _ingest(gui_home)
    sha = _an_image(gui_home)
    await sign_in(user, "otto")
    await user.open(f"/node/{sha}")
    await user.should_see(marker="node-flag", retries=30)
    user.find(marker="node-flag").click()
    await user.should_see("flagged low quality", retries=50)
    from hoardfs.base import config

    with psycopg.connect(config.load(gui_home).database_url) as conn:
        assert conn.execute("SELECT in_black_list FROM physical_content JOIN node USING (node_id) "
                            "WHERE sha256 = %s", [bytes.fromhex(sha)]).fetchone()[0] is True
    await user.should_see("Unflag", retries=30)
    user.find(marker="node-flag").click()
    await user.should_see("not flagged", retries=50)


async def test_export_from_the_form_and_the_pipelines_page(user, gui_home: Path) -> None:
    """An operator exports the ingested images to 3D from the Launch form; a worker runs it;
    /pipelines shows the sealed output with its run, and a pipeline defined in the database
    with its stages; the charts on /storage and /batches render."""
    from hoardfs.base import config
    from hoardfs.sql.batches import define_action, define_pipeline

    _ingest(gui_home)
    with psycopg.connect(config.load(gui_home).database_url, autocommit=True) as conn:
        define_action(conn, 3, "ocr", "cpu")
        define_pipeline(conn, "ocr-then-review", [3])
    await sign_in(user, "otto")
    await user.open("/launch")
    user.find(marker="output-id").type("imgs-v1")
    user.find(marker="output-selector").clear().type('{"sources": ["gallery"], "kinds": ["image"]}')
    user.find(marker="launch-output").click()
    await user.should_see("export imgs-v1", retries=50)
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(gui_home), "worker", "--burst"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    from nicegui import run as nrun

    from hoardfs.gui.context import ctx

    await nrun.io_bound(ctx().cache.refresh)
    await user.open("/runs/export/imgs-v1")
    await user.should_see("done", retries=30)
    await user.open("/pipelines")
    for text in ("ocr-then-review", "0. ocr: 0 batches done", "Dataset exports (zone 3D)", "imgs-v1", "sealed"):
        await user.should_see(text)
    await user.open("/storage")
    await user.should_see(kind=ui.echart)
    assert len(user.find(kind=ui.echart).elements) == 2
    await user.open("/batches")
    await user.should_see(BATCH, retries=30)
    assert len(user.find(kind=ui.echart).elements) == 1  # files ingested per day and source


def test_an_image_bomb_gets_no_thumbnail(gui_home: Path, tmp_path: Path) -> None:
    """A tiny PNG that declares 20,000 × 20,000 pixels is not decoded: no thumbnail, no error
    (it would take gigabytes to decode), while a normal image gets one."""
    from PIL import Image

    from hoardfs.base import config
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.fsd.store import Store

    cfg = config.load(gui_home)
    bomb, fine = tmp_path / "bomb.png", tmp_path / "fine.png"
    Image.new("1", (20000, 20000)).save(bomb)
    Image.new("RGB", (640, 480), (200, 40, 40)).save(fine)
    assert bomb.stat().st_size < 200_000
    with Store.open(cfg) as store:
        shas = [r.sha256 for r in store.put_many([bomb, fine])]
    assert thumbs.thumbnail(cfg, shas[0]) is None
    made = thumbs.thumbnail(cfg, shas[1])
    assert made is not None and made.read_bytes()[:2] == b"\xff\xd8"
    assert thumbs.path(cfg, shas[0]).stat().st_size == 0  # remembered: not read again per view


def test_files_pillow_chokes_on_get_no_thumbnail_and_no_error(gui_home: Path, tmp_path: Path) -> None:
    """Untrusted bytes: a DDS with an unknown pixel format (NotImplementedError in Pillow, found
    by a fuzzer) and an EPS (Ghostscript is never run on stored files) get no thumbnail and
    raise nothing; a sha256 with a trailing newline is not one."""
    import io

    from PIL import Image

    from hoardfs.base import config
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.fsd.store import Store

    cfg = config.load(gui_home)
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(buf, "DDS")
    dds = bytearray(buf.getvalue())
    dds[80:84] = (146).to_bytes(4, "little")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with Store.open(cfg) as store:
        shas = [r.sha256 for r in store.put_bytes_many([bytes(dds), eps])]
    assert [thumbs.thumbnail(cfg, s) for s in shas] == [None, None]
    assert thumbs.thumbnail(cfg, shas[0] + "\n") is None and not list(thumbs.path(cfg, shas[0]).parent.glob("*\n*"))


async def test_hand_typed_pages_and_dates(user, gui_home: Path) -> None:
    """Negative or huge page numbers are clamped (no database error); a date that does not
    parse is named instead of giving an unfiltered listing."""
    _ingest(gui_home)
    await sign_in(user, "vera")
    for path, loaded in (("/batches?page=-5", "batches"), ("/assets?page=-3", "assets on page 1"),
                         ("/assets?page=99999999999999999999", "nothing matches"), ("/runs?page=-1", "runs")):
        await user.open(path)
        await user.should_see(loaded)  # the page has finished loading (its queries ran) …
        await user.should_not_see("does not answer")  # … without a database error
    await user.should_not_see("page -1")
    await user.open("/assets?since=9999-99-99")
    await user.should_see("from: not a date; write it as YYYY-MM-DD")
    await user.should_not_see("assets on page")


async def test_node_page_draws_its_lineage(user, gui_home: Path) -> None:
    """A node's parents and children as a graph (one column per depth, edges parent → child with
    their relationship); a stable id full of HTML is drawn as text, never a tooltip."""
    from hoardfs.base import config
    from hoardfs.gui import charts
    from hoardfs.sql import browse

    with psycopg.connect(config.load(gui_home).database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO source (name) VALUES ('forum') ON CONFLICT DO NOTHING")
        ids = [conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (sha256(%s::bytea), %s, %s) "
                            "RETURNING node_id", [f"lineage-{i}".encode(), virtual, not virtual]).fetchone()[0]
               for i, virtual in enumerate((True, True, False, False))]
        author, post, image, crop = ids
        for node_id, stable in ((author, "<img src=x onerror=alert(1)>"), (post, "post-1")):
            conn.execute("INSERT INTO virtual_asset (node_id, kind, source_id, stable_id, description) "
                         "SELECT %s, 'post', source_id, %s, %s FROM source WHERE name = 'forum'",
                         [node_id, stable, f"forum post {stable}"])
        for node_id in (image, crop):
            conn.execute("INSERT INTO physical_content (node_id, size, file_type) VALUES (%s, 10, 'png')", [node_id])
        for parent, child, rel in ((author, post, "author_of"), (post, image, "media_of"), (image, crop, "media_of")):
            conn.execute("INSERT INTO edge (parent_id, child_id, rel_id) SELECT %s, %s, rel_id FROM relationship_type "
                         "WHERE name = %s", [parent, child, rel])
        sha = conn.execute("SELECT encode(sha256, 'hex') FROM node WHERE node_id = %s", [image]).fetchone()[0]
        n = browse.node(conn, sha, depth=2)
    graph = charts.lineage(n)
    series = graph["series"][0]
    assert graph["tooltip"] == {"show": False}
    names = {d["id"]: d["name"] for d in series["data"]}
    assert names["root"] == "this node" and len(names) == 4
    assert {(lk["source"], lk["target"], lk["label"]["formatter"]) for lk in series["links"]} == {
        (f"parents:{author}", f"parents:{post}", "author_of"), (f"parents:{post}", "root", "media_of"),
        ("root", f"children:{crop}", "media_of")}
    assert names[f"parents:{author}"].startswith("post <img")  # canvas text
    await sign_in(user, "vera")
    await user.open(f"/node/{sha}?depth=2")
    await user.should_see(marker="lineage")
    await user.should_see("parents (2)")
    [listed] = user.find(marker="node-parents").elements  # one HTML list, the stable id escaped
    assert "post &lt;img src=x onerror=alert(1)&gt;" in listed.content and "<img src=x" not in listed.content
    assert f'<a href="/node/{sha}"' not in listed.content and listed.content.count("<li") == 2


async def test_a_video_shows_the_poster_its_source_shipped(user, gui_home: Path) -> None:
    """yt-dlp's thumbnail next to a video is ingested as its `thumbnail_of` child; the video's
    asset card and node page show that image's thumbnail (no frame is decoded from the video)."""
    import io

    from PIL import Image

    from hoardfs.adapters.synth import Spec, generate
    from hoardfs.base import config

    with open(gui_home, "a") as fh:  # drop_batch's [sources] table is the file's last
        fh.write('ytdlp = "ytdlp"\n')
    zone3a = config.load(gui_home).ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=5, batches=1, items_per_batch=2, sources=("ytdlp",), large_max_mb=1,
                                  ready_signal=True))[0]
    video = next(p for p in (zone3a / batch.batch_id).iterdir() if p.suffix == ".mp4")
    buf = io.BytesIO()
    Image.new("RGB", (160, 90), (200, 30, 30)).save(buf, "JPEG")
    video.with_suffix(".jpg").write_bytes(buf.getvalue())
    _ingest(gui_home)
    with psycopg.connect(config.load(gui_home).database_url) as conn:
        vsha, psha = conn.execute("""
            SELECT encode(v.sha256, 'hex'), encode(t.sha256, 'hex') FROM edge e
            JOIN relationship_type r ON r.rel_id = e.rel_id AND r.name = 'thumbnail_of'
            JOIN node v ON v.node_id = e.parent_id JOIN node t ON t.node_id = e.child_id""").fetchone()
    await sign_in(user, "vera")
    await user.open(f"/assets?batch={batch.batch_id}&kind=video")
    await user.should_see("1 assets on page 1")
    assert [img.props["src"] for img in user.find(marker="thumb").elements] == [f"/thumb/{psha}"]
    r = await user.http_client.get(f"/thumb/{psha}")
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    await user.open(f"/node/{vsha}")
    await user.should_see("mp4 (video)")
    assert [img.props["src"] for img in user.find(marker="thumb").elements] == [f"/thumb/{psha}"]
