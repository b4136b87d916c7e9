"""The everyday edges of issue 33 on real PostgreSQL, Redis, store and files: select by source
reaches files whose metadata sits on their post, views and stages of one batch use that
batch's paths, overlapping puts count exactly, deleted batches do not linger."""

from __future__ import annotations

from pathlib import Path

from adapters.synth import Spec, generate
from sql.selectors import query_nodes
from tests.test_ingest import ingest_all, ingest_home

FORUM = Spec(seed=1, batches=1, items_per_batch=40, sources=("forum",), large_max_mb=1, ready_signal=True)


def _members(pg, batch_id: str) -> set[str]:
    return {r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM batch_member bm JOIN node n USING (node_id) "
        "WHERE bm.batch_id = %s AND n.is_physical", [batch_id])}


def test_select_by_source_reaches_files_under_their_post(hoard_home: Path, pg, redis_conn) -> None:
    """A csv_manifest batch's media carry no metadata of their own (it sits on the virtual
    post above them); `select --source forum` still picks every file of the batch."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    (batch,) = generate(zone3a, FORUM)
    (state,) = ingest_all(cfg, redis_conn, [zone3a / batch.batch_id], source="forum")
    assert state.status == "done", state.error
    members = _members(pg, batch.batch_id)
    documents = {r[0] for r in pg.execute(  # the manifest: a metadata document, not a file it describes
        "SELECT DISTINCT encode(raw_object, 'hex') FROM common_metadata WHERE raw_object IS NOT NULL")}
    assert len(members) > 20 and len(documents & members) == 1
    picked = set(query_nodes(pg, {"sources": ["forum"]}).sha256)
    assert picked == members - documents
    assert not set(query_nodes(pg, {"sources": ["ytdlp"]}).sha256)
