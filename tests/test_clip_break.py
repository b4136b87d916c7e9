"""Text → image search under attack: what a hostile or unlucky setup
does to hoardfs.jobs.clip_model, the clip-embed worker and hoardfs.sql.embeddings' index — a model that would
fetch from the hub, a weights path that reads as one of open_clip's download tags, an image
whose shape makes the model's resize huge, an index that is not of the rows its stamp says,
rows of another length under the model's id, many equal embeddings (HNSW's recall)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hoardfs.jobs import clip_model
from tests.helpers import needs_search
from tests.test_clip_search import TINY, tiny  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every attempt to resolve a host or open a connection is recorded and refused."""
    tried: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    return tried


@needs_search
@pytest.mark.services  # (importing PyPI's torch starts a process)
def test_a_shipped_model_that_needs_the_hub_is_refused_before_anything_is_fetched(
        tmp_path: Path, no_network: list[Any]) -> None:
    """49 of open_clip's 144 shipped configs name a Hugging Face tokenizer or text model (all
    the SigLIP ones): such a name is refused as a config JSON saying so is — before a model is
    built or a tokenizer fetched."""
    junk = tmp_path / "w.bin"
    junk.write_bytes(b"x" * 64)
    for name in ("ViT-B-16-SigLIP", "roberta-ViT-B-32"):
        with pytest.raises(clip_model.ClipError, match="would be downloaded"):
            clip_model.load(name, junk)
    assert no_network == []


@needs_search
@pytest.mark.services  # (importing PyPI's torch starts a process)
def test_a_weights_path_that_reads_as_a_download_tag_is_read_as_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    """`clip_weights = "openai"` (a relative path: a file named openai in the working
    directory) is open_clip's tag of OpenAI's ViT-B-32 weights, which it downloads from a URL
    (HF_HUB_OFFLINE does not cover that): the file is what is loaded, nothing is fetched.
    (ViT-B-32's config is the tiny one here, so that building it costs nothing.)"""
    open_clip = clip_model.open_clip_module()
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-B-32", json.loads(json.dumps(TINY)))
    monkeypatch.chdir(tmp_path)
    Path("openai").write_bytes(b"not weights" * 8)
    with pytest.raises(clip_model.ClipError, match="does not load into ViT-B-32"):
        clip_model.load("ViT-B-32", "openai")
    assert no_network == []


@needs_search
@pytest.mark.services
def test_an_image_of_extreme_shape_is_embedded_by_its_middle(tiny, tmp_path: Path) -> None:
    """A 1 × 2,000,000 PNG (2 megapixels: under the pixel cap, a few KB) resized by the model's
    transform to 32 pixels on its short side was 64 M × 32 pixels: the worker died of
    MemoryError in the middle of the batch, every image's embedding lost. Its middle is
    embedded (what the transform keeps of it anyway), and so are the others."""
    cfg, weights = tiny
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(inp / "a.png")
    Image.new("L", (1, 2_000_000), 7).save(inp / "b.png")
    Image.new("RGB", (30, 40), (10, 10, 200)).save(inp / "c.png")
    shas = {n: hashlib.sha256((inp / n).read_bytes()).hexdigest() for n in ("a.png", "b.png", "c.png")}
    done = subprocess.run([sys.executable, "-m", "hoardfs.jobs.actions.builtin", "clip-embed", str(inp), str(out),
                           "--model", str(cfg), "--weights", str(weights)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in out.iterdir()] == ["embeddings.jsonl"]  # (torch's cache directory is gone)
    recs = [json.loads(ln) for ln in (out / "embeddings.jsonl").read_text().splitlines()]
    assert sorted(r["sha256"] for r in recs) == sorted(shas.values())
    assert all(len(base64.b64decode(r["embedding"])) == 4 * 32 for r in recs)
    # the image is shown by its shape's centre: the same as the model's own transform gives for an ordinary one
    m = clip_model.load(str(cfg), weights)
    mine = clip_model.encode_images(m, [Image.open(inp / "a.png").convert("RGB")])[0]
    got = np.frombuffer(base64.b64decode(next(r for r in recs if r["sha256"] == shas["a.png"])["embedding"]), "<f4")
    np.testing.assert_allclose(got, mine, atol=1e-5)


# -- the index ------------------------------------------------------------------------------

def _fill(conn, n: int, key: str) -> list[str]:
    """n image nodes, no embeddings: their sha256s in the order of their node ids."""
    from hoardfs.sql.apply import apply_write_intent

    shas = [hashlib.sha256(f"{key} {i}".encode()).hexdigest() for i in range(n)]
    apply_write_intent(conn, {"key": f"{key}-nodes", "nodes": [
        {"sha256": s, "physical": {"size": 10, "file_type": "png"}} for s in shas]})
    return [bytes(r[0]).hex() for r in conn.execute(
        "SELECT sha256 FROM node WHERE sha256 = ANY(%s) ORDER BY node_id", [[bytes.fromhex(s) for s in shas]])]


def _embed(conn, run: str, model: str, rows: dict[str, np.ndarray]) -> None:
    """Embedding rows of `model`, stored by a write-intent as the action's run stores them."""
    from hoardfs.sql.apply import apply_write_intent

    apply_write_intent(conn, {
        "key": run, "batches": [{"batch_id": run, "seal": True}],
        "results": [{"table": "result_image_embedding", "node": s, "batch_id": run,
                     "values": {"model": model, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}}
                    for s, v in rows.items()]})


def _unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _drop(conn, shas: list[str]) -> None:
    """Their rows gone (a purge of their nodes cascades to them)."""
    conn.execute("DELETE FROM result_image_embedding WHERE node_id IN (SELECT node_id FROM node "
                 "WHERE sha256 = ANY(%s))", [[bytes.fromhex(s) for s in shas]])


@pytest.fixture
def db(pg):
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    return pg


MODEL = "tiny@0123456789abcdef"


@needs_search
def test_an_index_of_other_rows_with_the_same_stamp_is_rebuilt(db, tmp_path: Path) -> None:
    """The stamp (count, sum and largest node id) is the same for the rows of nodes {0, 3, 5}
    and {1, 2, 5}: a later run embedding 1 and 2 after 0 and 3 were purged left the index of
    {0, 3, 5} in use — node 1, the nearest, never found."""
    from hoardfs.sql import embeddings

    rng = np.random.default_rng(1)
    shas = _fill(db, 6, "stamp")
    vecs = dict(zip(shas, _unit(rng, 6), strict=True))
    _embed(db, "run-a", MODEL, {shas[i]: vecs[shas[i]] for i in (0, 3, 5)})
    said: list[str] = []
    assert [h.sha256 for h in embeddings.nearest(db, tmp_path, MODEL, vecs[shas[0]], 1, said.append)] == [shas[0]]
    _drop(db, [shas[0], shas[3]])
    _embed(db, "run-b", MODEL, {shas[i]: vecs[shas[i]] for i in (1, 2)})
    got = embeddings.nearest(db, tmp_path, MODEL, vecs[shas[1]], 3, said.append)
    assert got[0].sha256 == shas[1] and {h.sha256 for h in got} == {shas[1], shas[2], shas[5]}


@needs_search
def test_an_index_file_renamed_in_by_a_slower_rebuild_is_not_trusted(db, tmp_path: Path) -> None:
    """Two `hoard search` rebuilding at once each rename their index, then their stamp: the
    index of the older rows and the stamp of the newer can end up side by side. Such an index
    is rebuilt, never searched."""
    from hoardfs.sql import embeddings

    rng = np.random.default_rng(2)
    shas = _fill(db, 5, "race")
    vecs = dict(zip(shas, _unit(rng, 5), strict=True))
    _embed(db, "run-a", MODEL, {s: vecs[s] for s in shas[:3]})
    embeddings.nearest(db, tmp_path, MODEL, vecs[shas[0]], 1, lambda _: None)
    index = embeddings.SearchIndex(embeddings.index_dir(tmp_path), MODEL, 32).path
    older = index.read_bytes()
    _drop(db, [shas[2]])
    _embed(db, "run-b", MODEL, {shas[3]: vecs[shas[3]]})  # 3 rows again, another set
    embeddings.nearest(db, tmp_path, MODEL, vecs[shas[0]], 1, lambda _: None)  # rebuilt, its stamp written
    index.write_bytes(older)  # the slower process's rename lands last
    got = embeddings.nearest(db, tmp_path, MODEL, vecs[shas[3]], 3, lambda _: None)
    assert got[0].sha256 == shas[3] and {h.sha256 for h in got} == {shas[0], shas[1], shas[3]}


@needs_search
def test_rows_of_another_length_under_the_model_s_id_do_not_break_search(db, tmp_path: Path) -> None:
    """Any action may write result_image_embedding rows (the column takes 1 to 4096 numbers):
    rows of another length under the configured model's id made every search a ValueError
    traceback. They are left out, with one line saying so."""
    from hoardfs.sql import embeddings

    rng = np.random.default_rng(3)
    shas = _fill(db, 6, "dims")
    vecs = dict(zip(shas[:4], _unit(rng, 4), strict=True))
    _embed(db, "run-a", MODEL, vecs)
    _embed(db, "run-odd", MODEL, dict(zip(shas[4:], _unit(rng, 2, 3), strict=True)))
    said: list[str] = []
    got = embeddings.nearest(db, tmp_path, MODEL, vecs[shas[1]], 10, said.append)
    q = vecs[shas[1]]
    assert [h.sha256 for h in got] == sorted(vecs, key=lambda s: -float(vecs[s] @ q))
    assert any("2 embeddings" in line and "left out" in line for line in said), said


@needs_search
def test_many_equal_embeddings_answer_as_brute_force_does(db, tmp_path: Path) -> None:
    """500 images, 400 of them (near-)copies of one picture — blank scans, black video frames:
    HNSW's graph over them misses the true nearest (its scores were 0.09 below brute force's);
    the answer is brute force's, scores and order (ties in any order among themselves)."""
    from hoardfs.sql import embeddings

    rng = np.random.default_rng(4)
    n = 500
    shas = _fill(db, n, "dups")
    v = _unit(rng, n)
    v[:400] = v[0] + rng.normal(size=(400, 32)).astype(np.float32) * 1e-4
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = dict(zip(shas, v, strict=True))
    _embed(db, "run-a", MODEL, rows)
    for seed in range(3):
        q = _unit(np.random.default_rng(100 + seed), 1)[0]
        got = embeddings.nearest(db, tmp_path, MODEL, q, 20, lambda _: None)
        want = sorted(((s, float(x @ q)) for s, x in rows.items()), key=lambda kv: -kv[1])[:20]
        np.testing.assert_allclose([h.score for h in got], [sc for _, sc in want], atol=1e-5)
        for h in got:  # each hit's score is its own vector's
            assert abs(h.score - float(rows[h.sha256] @ q)) < 1e-5
    got = embeddings.nearest(db, tmp_path, MODEL, v[450], 1000, lambda _: None)
    assert len(got) == n and got[0].sha256 == shas[450]


def test_index_file_name_is_the_model_s_own(tmp_path: Path) -> None:
    """Two model ids that differ only where the file name writes `_` do not share a file."""
    from hoardfs.sql import embeddings

    a = embeddings.SearchIndex(tmp_path, "m/x@0123456789abcdef", 32).path
    b = embeddings.SearchIndex(tmp_path, "m_x@0123456789abcdef", 32).path
    assert a != b and a.parent == b.parent == tmp_path and os.sep not in a.name


@pytest.mark.services
def test_without_torch_installed_loading_is_one_line() -> None:
    """A production install (`make install`) leaves the search extra out: `hoard search` and the
    worker then raised ModuleNotFoundError with a traceback. (A process of its own: this one has
    torch imported already.)"""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from hoardfs.jobs import clip_model\n"
            "try:\n    clip_model.load('ViT-B-32', '/etc/hostname')\n"
            "except clip_model.ClipError as e:\n    print(e.message)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and "hoardfs[search]" in done.stdout, done.stdout


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@needs_search
def test_weights_that_run_code_or_are_no_file_are_refused(tiny, tmp_path: Path) -> None:
    """A weights file that is a pickle running a command is refused without running it
    (torch.load with weights_only); a FIFO, a link to one and a device are no weights file (a
    FIFO would block the search forever)."""
    import pickle

    cfg, _ = tiny
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(clip_model.ClipError, match="does not load into tiny-clip"):
        clip_model.load(str(cfg), evil)
    assert not marker.exists()
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    (tmp_path / "link.bin").symlink_to(fifo)
    for path in (fifo, tmp_path / "link.bin", Path("/dev/zero")):
        with pytest.raises(clip_model.ClipError, match="is not a file"):
            clip_model.load(str(cfg), path)


@needs_search
def test_searches_rebuilding_at_once_in_one_process_do_not_fail(db, servers, tmp_path: Path) -> None:
    """The GUI searches in threads of one process: rebuilding the index at once they wrote the
    same temporary file (named by the process id only), and one's rename found it gone."""
    import threading

    import psycopg

    from hoardfs.sql import embeddings

    rng = np.random.default_rng(6)
    shas = _fill(db, 300, "threads")
    vecs = dict(zip(shas, _unit(rng, 300), strict=True))
    _embed(db, "run-a", MODEL, vecs)
    schema = db.execute("SELECT current_schema()").fetchone()[0]
    errors: list[BaseException] = []
    index = embeddings.SearchIndex(embeddings.index_dir(tmp_path), MODEL, 32)

    def one(gate: threading.Barrier) -> None:
        try:
            with psycopg.connect(servers["database_url"], options=f"-c search_path={schema}", autocommit=True) as c:
                gate.wait()
                got = embeddings.nearest(c, tmp_path, MODEL, vecs[shas[7]], 1, lambda _: None)
                assert got[0].sha256 == shas[7]
        except BaseException as e:  # reported below
            errors.append(e)

    for _ in range(5):
        index.path.unlink(missing_ok=True)
        gate = threading.Barrier(6)
        threads = [threading.Thread(target=one, args=(gate,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


@needs_search
def test_weights_replaced_at_the_same_path_are_loaded_anew(tiny, tmp_path: Path) -> None:
    """The GUI keeps the model loaded: new weights copied over the configured file were never
    seen — its searches went on with the old model and its old id until a restart."""
    import torch

    cfg, weights = tiny
    mine = tmp_path / "w.bin"
    mine.write_bytes(weights.read_bytes())
    first = clip_model.load(str(cfg), mine)
    state = torch.load(mine, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, mine)
    second = clip_model.load(str(cfg), mine)
    assert second.model_id != first.model_id
    assert second.model_id.endswith(hashlib.sha256(mine.read_bytes()).hexdigest()[:16])


@pytest.mark.services
def test_search_with_nothing_configured_says_so_before_asking_the_database(tmp_path: Path) -> None:
    """No [search] in hoard.toml and no database reachable: the one line is about the weights
    (what to do first), not the database."""
    (tmp_path / "hoard.toml").write_text(
        f'database_url = "postgresql:///nothing?host={tmp_path}/no-pg"\nredis_url = "unix://{tmp_path}/no-redis"\n'
        '[store]\nallow_directory_disks = true\n'
        + "".join(f'[[disks]]\nlabel = "hdd{i}"\npath = "d{i}"\ncapacity_gb = 1\n' for i in (1, 2))
        + '[ssd]\nroot = "ssd"\n' + "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D")))
    done = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(tmp_path / "hoard.toml"), "search", "a dog"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "search.clip_weights is not set" in done.stderr, done.stderr
