"""Action batches, seal rules, events and pipeline stages on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.batches import (
    BatchError,
    add_nodes,
    create_batch,
    current_stage,
    define_action,
    define_pipeline,
    get_batch,
    record_event,
    seal_batch,
    stage_done,
)
from hoardfs.sql.migrate import migrate


@pytest.fixture
def db(pg):
    migrate(pg)
    shas = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    apply_write_intent(pg, {"key": "n", "nodes": [{"sha256": s, "physical": {"size": 1}} for s in shas]})
    define_action(pg, 1, "ocr", "gpu")
    define_action(pg, 2, "canny", "cpu")
    return pg, shas


def test_batch_lifecycle(db) -> None:
    """Members join an open batch once; a sealed batch refuses more; sealing is idempotent."""
    conn, shas = db
    info = create_batch(conn, "gpu-1", action_id=1)
    assert info.sealed_at is None and create_batch(conn, "gpu-1", 1).created_at == info.created_at
    assert add_nodes(conn, "gpu-1", shas[:3]) == 3
    assert add_nodes(conn, "gpu-1", shas[:4]) == 1
    sealed = seal_batch(conn, "gpu-1")
    assert sealed >= info.created_at and seal_batch(conn, "gpu-1") == sealed
    with pytest.raises(BatchError, match="batch gpu-1 was sealed at .* takes no new members"):
        add_nodes(conn, "gpu-1", shas[4:])
    assert get_batch(conn, "gpu-1").members == 4
    with pytest.raises(BatchError, match="belongs to action 1, not 2"):
        create_batch(conn, "gpu-1", 2)
    create_batch(conn, "other", 2)
    with pytest.raises(BatchError, match="not in the database"):
        add_nodes(conn, "other", [hashlib.sha256(b"x").hexdigest()])
    with pytest.raises(BatchError, match="already 'ocr'"):
        define_action(conn, 1, "not-ocr", "gpu")


def test_events_and_pipeline_stages(db) -> None:
    """Events are recorded; stages complete in order, idempotently; the next stage is reported."""
    conn, shas = db
    create_batch(conn, "b", 0)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    eid = record_event(conn, "b", 1, "done", t, t + dt.timedelta(minutes=3), {"gpu": "none"})
    assert conn.execute("SELECT status, detail FROM action_event WHERE event_id = %s", [eid]).fetchone() == (
        "done", {"gpu": "none"})
    define_pipeline(conn, "clean", [0, 1, 2])
    define_pipeline(conn, "clean", [0, 1, 2])
    with pytest.raises(BatchError, match="already has stages"):
        define_pipeline(conn, "clean", [0, 2])
    assert current_stage(conn, "b", "clean") == 0
    with pytest.raises(BatchError, match="stage 1 cannot be done before stage 0"):
        stage_done(conn, "b", "clean", 1)
    stage_done(conn, "b", "clean", 0)
    stage_done(conn, "b", "clean", 0)
    stage_done(conn, "b", "clean", 1)
    assert current_stage(conn, "b", "clean") == 2
    stage_done(conn, "b", "clean", 2)
    assert current_stage(conn, "b", "clean") is None
    with pytest.raises(BatchError, match="has stages 0..2, not 7"):
        stage_done(conn, "b", "clean", 7)
    with pytest.raises(BatchError, match="no batch 'zz'"):
        record_event(conn, "zz", 0, "done", t)


def test_dropping_a_batch_recomputes_shared_metadata(pg) -> None:
    """After `delete --batch`, a node another batch also describes shows that batch's newest
    description (raw_object included), and a node only the deleted batch described has no
    common_metadata row left."""
    from hoardfs.sql.deletion import drop_batch

    migrate(pg)

    def sha(s: str) -> str:
        return hashlib.sha256(s.encode()).hexdigest()

    def ingest(batch: str, title: str, day: int, nodes: list[str]) -> None:
        doc = sha(f"doc-{batch}")
        apply_write_intent(pg, {
            "key": batch, "sources": ["src"],
            "nodes": [{"sha256": s, "physical": {"size": 1}} for s in nodes + [doc]],
            "metadata": [{"node": s, "source": "src", "title": title, "author": f"by {batch}",
                          "download_time": dt.datetime(2026, 1, day, tzinfo=dt.UTC), "raw_object": doc}
                         for s in nodes],
            "batches": [{"batch_id": batch, "source": "src", "members": nodes + [doc], "seal": True}]})

    shared, only_new = sha("shared"), sha("only-new")
    ingest("old", "old title", 1, [shared])
    ingest("mid", "mid title", 2, [shared])
    ingest("new", "new title", 3, [shared, only_new])

    def row(node: str):
        return pg.execute("SELECT cm.title, cm.author, cm.raw_object FROM common_metadata cm JOIN node n "
                          "USING (node_id) WHERE n.sha256 = %s", [bytes.fromhex(node)]).fetchone()

    assert row(shared)[0] == "new title"
    counts = drop_batch(pg, "new")
    assert counts["metadata_recomputed"] == 2
    assert row(shared) == ("mid title", "by mid", bytes.fromhex(sha("doc-mid")))
    assert row(only_new) is None
    assert drop_batch(pg, "new")["metadata_recomputed"] == 0  # idempotent


def test_register_action_is_idempotent_by_name(pg) -> None:
    """A contract's action gets the number after the largest; the same name again the same number."""
    from hoardfs.sql.batches import register_action
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    pg.execute("INSERT INTO action VALUES (7, 'older', 'cpu', '')")
    a = register_action(pg, "thumbnail", "cpu", "thumbs")
    b = register_action(pg, "canny", "gpu")
    assert (a, b) == (8, 9)
    assert register_action(pg, "thumbnail", "gpu", "moved to the GPU") == 8
    assert pg.execute("SELECT kind, description FROM action WHERE action_id = 8").fetchone() == ("gpu", "moved to the GPU")
    assert pg.execute("SELECT count(*) FROM action").fetchone() == (4,)
