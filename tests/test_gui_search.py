"""The asset browser's text → image search box: `/assets?looks=TEXT` shows the
images nearest the text by their CLIP embeddings — the tiny open_clip model of
tests/test_clip_search.py, named by the environment as hoard.toml would name it — in the order
brute force over the stored rows gives; the query is shown as text, never as markup. Real test
PostgreSQL; the embeddings are result rows written by a write-intent, as the action writes them."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import psycopg
import pytest
from nicegui import ui

from hoardfs.base import config
from hoardfs.jobs import clip_model
from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import needs_search
from tests.test_clip_search import tiny  # noqa: F401 - fixture

pytestmark = needs_search


@pytest.fixture
def clip_env(tiny, monkeypatch) -> tuple[Path, Path]:
    """[search] of hoard.toml given by the environment (HOARD_SEARCH__…), before the app is built."""
    cfg, weights = tiny
    monkeypatch.setenv("HOARD_SEARCH__CLIP_MODEL", str(cfg))
    monkeypatch.setenv("HOARD_SEARCH__CLIP_WEIGHTS", str(weights))
    monkeypatch.setenv("HOARD_SEARCH__DEVICE", "cpu")
    return cfg, weights


def _embedded(cfg: config.Settings, model_id: str, n: int) -> dict[str, np.ndarray]:
    """n image nodes with random unit embeddings of `model_id`, written as the action writes them."""
    from hoardfs.sql.apply import apply_write_intent

    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    shas = [hashlib.sha256(f"gui-search image {i}".encode()).hexdigest() for i in range(n)]
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        apply_write_intent(conn, {
            "key": "gui-search", "nodes": [{"sha256": s, "physical": {"size": 10, "file_type": "png"}} for s in shas],
            "batches": [{"batch_id": "gui-search-run", "seal": True}],
            "results": [{"table": "result_image_embedding", "node": s, "batch_id": "gui-search-run",
                         "values": {"model": model_id, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}}
                        for s, v in zip(shas, vecs, strict=True)]})
    return dict(zip(shas, vecs, strict=True))


async def test_the_search_box_shows_the_nearest_images_in_brute_force_order(clip_env, user, gui_home: Path) -> None:
    """Nothing embedded: one line saying how. Then 12 embedded images: a search shows all 12 as
    cards, nearest first (brute force over the stored vectors); a query holding markup is shown
    as text."""
    cfg = config.load(gui_home)
    m = clip_model.load(str(clip_env[0]), clip_env[1])
    await sign_in(user, "vera")
    await user.open("/assets?looks=a+red+square")
    await user.should_see(marker="assets-looks-none", retries=100)
    rows = _embedded(cfg, m.model_id, 12)
    query = "<b>a red square</b>"
    await user.open("/assets?" + urlencode({"looks": query}))
    await user.should_see(marker="assets-looks-results", retries=100)
    await user.should_see(f"12 images nearest “{query}” ({m.model_id})")
    q = clip_model.encode_text(m, query)
    want = [s for s, _ in sorted(rows.items(), key=lambda kv: -float(kv[1] @ q))]
    grid = next(iter(user.find(marker="assets-looks-results").elements))  # (the search field is marked assets-looks)
    shown = [el.text for el in grid.descendants() if getattr(el, "text", None) in {s[:16] for s in rows}]
    assert shown == [s[:16] for s in want]
    await user.should_not_see(kind=ui.html)
