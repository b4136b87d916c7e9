"""Selectors over multi-level trees on a real PostgreSQL; injection strings in every field."""

from __future__ import annotations

import datetime as dt
import hashlib

import psycopg
import pytest

from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.intents import virtual_sha256
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import SelectorError, compile_selector, parse_selector, query_nodes

HOSTILE = "x'); DROP TABLE node; --"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def tree(pg: psycopg.Connection) -> dict[str, str]:
    """channel (virtual) → 2 videos → frames → crops; a gallery image; labels; one black-listed."""
    migrate(pg)
    chan = virtual_sha256("channel", "ytdlp", "ada")
    names = {"chan": chan}
    nodes = [{"sha256": chan, "virtual": {"kind": "channel", "source": "ytdlp", "stable_id": "ada"}}]
    meta, edges, labels = [], [], []

    def phys(name: str, size: int, ext: str, source: str | None = None, views: int = 0, title: str = "") -> str:
        h = sha(name)
        names[name] = h
        nodes.append({"sha256": h, "physical": {"size": size, "file_type": ext}})
        if source:
            meta.append({"node": h, "source": source, "view_count": views, "title": title or name,
                         "download_time": T0.isoformat(), "is_root": name == "img"})
        return h

    for v in (1, 2):
        video = phys(f"video{v}", 1000 * v, "mp4", "ytdlp", views=10 * v, title=f"Funny Cats {v}")
        edges.append({"parent": chan, "child": video, "relationship": "channel_of"})
        frame = phys(f"frame{v}", 100, "png")
        edges.append({"parent": video, "child": frame, "relationship": "frame_of"})
        crop = phys(f"crop{v}", 10, "png")
        edges.append({"parent": frame, "child": crop, "relationship": "crop_of"})
    labels.append({"node": names["crop1"], "key": "class", "value": "cat"})
    labels.append({"node": names["crop2"], "key": "class", "value": "dog"})
    phys("img", 50, "jpg", "gallery", views=5)
    phys("banned", 7, "jpg", "gallery")
    apply_write_intent(pg, {"key": "tree", "sources": ["ytdlp", "gallery"],
                            "relationships": [{"name": "frame_of", "action": 0}, {"name": "crop_of"}],
                            "nodes": nodes, "metadata": meta, "edges": edges, "labels": labels,
                            "batches": [{"batch_id": "b1", "members": [names["video1"], names["img"]]}]})
    pg.execute("UPDATE physical_content SET in_black_list = true WHERE node_id = "
               "(SELECT node_id FROM node WHERE sha256 = %s)", [bytes.fromhex(names["banned"])])
    return names


def picked(pg, tree, **sel) -> set[str]:
    by_sha = {v: k for k, v in tree.items()}
    return {by_sha[s] for s in query_nodes(pg, sel).sha256}


def test_basic_filters(pg, tree) -> None:
    assert picked(pg, tree) == {"video1", "video2", "frame1", "frame2", "crop1", "crop2", "img"}
    assert picked(pg, tree, sources=["ytdlp"]) == {"video1", "video2"}
    assert picked(pg, tree, batches=["b1"]) == {"video1", "img"}
    assert picked(pg, tree, file_types=["png"]) == {"frame1", "frame2", "crop1", "crop2"}
    assert picked(pg, tree, kinds=["image"], sources=["gallery"]) == {"img"}
    assert picked(pg, tree, include_black_listed=True, sources=["gallery"]) == {"img", "banned"}
    assert picked(pg, tree, is_root=True) == {"img"}


def test_metadata_and_labels(pg, tree) -> None:
    assert picked(pg, tree, metadata=[{"field": "view_count", "op": "gt", "value": 10}]) == {"video2"}
    assert picked(pg, tree, metadata=[{"field": "title", "op": "contains", "value": "cats"}]) == {"video1", "video2"}
    assert picked(pg, tree, metadata=[{"field": "view_count", "op": "in", "value": [5, 20]}]) == {"img", "video2"}
    assert picked(pg, tree, labels=[{"key": "class", "value": "cat"}]) == {"crop1"}
    assert picked(pg, tree, labels=[{"key": "class"}]) == {"crop1", "crop2"}
    assert picked(pg, tree, file_types=["png"], labels=[{"key": "class", "present": False}]) == {"frame1", "frame2"}


def test_tree_walks(pg, tree) -> None:
    """has_ancestor / has_descendant by relationship and depth, over three levels."""
    chan = {"kind": "channel", "source": "ytdlp"}
    assert picked(pg, tree, has_ancestor=[{**chan, "max_depth": 1}]) == {"video1", "video2"}
    assert picked(pg, tree, has_ancestor=[{**chan, "max_depth": 3}]) == {
        "video1", "video2", "frame1", "frame2", "crop1", "crop2"}
    assert picked(pg, tree, has_ancestor=[{"sha256": tree["video1"], "max_depth": 5}]) == {"frame1", "crop1"}
    assert picked(pg, tree, has_ancestor=[{"relationship": "crop_of"}]) == {"crop1", "crop2"}
    assert picked(pg, tree, has_descendant=[{"label": {"key": "class", "value": "cat"}, "max_depth": 2}]) == {
        "frame1", "video1"}
    assert picked(pg, tree, has_descendant=[{"label": {"key": "class", "value": "cat"}, "max_depth": 1}]) == {"frame1"}
    assert picked(pg, tree, has_ancestor=[{**chan, "max_depth": 3}], labels=[{"key": "class", "value": "dog"}]) == {
        "crop2"}


def test_order_limit_and_total_bytes(pg, tree) -> None:
    ns = query_nodes(pg, {"order": "size", "limit": 3})
    assert ns.sizes == [2000, 1000, 100] and ns.total_bytes == 3100 and len(ns) == 3


def test_injection_strings_are_only_values(pg, tree) -> None:
    """Hostile strings in every string field select nothing and change nothing."""
    for sel in ({"batches": [HOSTILE]},
                {"metadata": [{"field": "title", "op": "eq", "value": HOSTILE}]},
                {"metadata": [{"field": "author", "op": "contains", "value": HOSTILE}]},
                {"labels": [{"key": HOSTILE, "value": HOSTILE}]},
                {"has_ancestor": [{"label": {"key": HOSTILE}}]},
                {"metadata": [{"field": "title", "op": "in", "value": [HOSTILE, "%"]}]}):
        assert query_nodes(pg, sel).node_ids == []
    for bad in ({"sources": [HOSTILE]}, {"file_types": [HOSTILE]}, {"has_ancestor": [{"kind": HOSTILE}]},
                {"has_ancestor": [{"relationship": HOSTILE}]}, {"metadata": [{"field": HOSTILE, "op": "eq", "value": 1}]},
                {"metadata": [{"field": "title", "op": HOSTILE, "value": 1}]}, {"order": HOSTILE}):
        with pytest.raises(SelectorError, match="selector rejected"):
            query_nodes(pg, bad)
    assert pg.execute("SELECT count(*) FROM node").fetchone()[0] == len(tree)
    query, params = compile_selector(parse_selector({"labels": [{"key": HOSTILE}]}))
    assert HOSTILE not in query.as_string(pg) and HOSTILE in params.values()


def test_bad_selector_names_the_field() -> None:
    with pytest.raises(SelectorError, match=r"metadata\[0\]\.field: Input should be 'title'"):
        parse_selector({"metadata": [{"field": "colour", "op": "eq", "value": 1}]})
    with pytest.raises(SelectorError, match=r"has_ancestor\[0\]\.max_depth: Input should be less than or equal to 32"):
        parse_selector({"has_ancestor": [{"max_depth": 99}]})
    with pytest.raises(SelectorError, match=r"colour: unknown key; allowed here: sources, batches"):
        parse_selector({"colour": 1})
