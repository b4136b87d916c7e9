"""The lineage groups (split.group = "lineage", and the leak audit's lineage pairs) as
components of the edges between physical nodes: one key for a chain longer than any walk
depth and through a cycle, and time in the lineage's size — not samples × lineage — over the
frames of one video."""

from __future__ import annotations

import time

import psycopg

from hoardfs.sql import datasets as sqld
from hoardfs.sql import leak_audit as sqll
from tests.helpers import filled_schema

#: frames of one video (each an edge from the video); a chain of crops longer than GROUP_DEPTH
FRAMES, CHAIN = 400, 3 * sqld.GROUP_DEPTH


def _fill(conn: psycopg.Connection) -> None:
    """Node 1 a video with FRAMES frames (2…); then a chain of CHAIN crops, each of the one
    before, closed into a cycle by an edge from its last back to its second; then a lone image."""
    last = 1 + FRAMES + CHAIN + 1
    conn.execute("INSERT INTO relationship_type (name) VALUES ('frame_of'), ('crop_of')")
    conn.execute("INSERT INTO node (node_id, sha256, is_virtual, is_physical) "
                 "SELECT g, sha256(int8send(g)), false, true FROM generate_series(1, %s) g", [last])
    conn.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, 10, 'png' FROM node")
    rel = "(SELECT rel_id FROM relationship_type WHERE name = %s)"
    conn.execute(f"INSERT INTO edge (parent_id, child_id, rel_id) SELECT 1, g, {rel} "
                 "FROM generate_series(2, %s::int) g", ["frame_of", 1 + FRAMES])
    first = 2 + FRAMES
    conn.execute(f"INSERT INTO edge (parent_id, child_id, rel_id) SELECT g - 1, g, {rel} "
                 "FROM generate_series(%s::int, %s::int) g", ["crop_of", first + 1, first + CHAIN - 1])
    conn.execute(f"INSERT INTO edge (parent_id, child_id, rel_id) VALUES (%s, %s, {rel})",
                 [first + CHAIN - 1, first + 1, "crop_of"])
    conn.execute("ANALYZE")


def test_lineage_keys_are_components_found_in_linear_time(servers) -> None:
    """Every frame of a video is keyed by the video and the audit counts its cross-split pairs
    in well under a few seconds (the walk per sample took 13 s over 250 frames, a minute over
    500); every crop of a chain three times GROUP_DEPTH long, closed by a cycle, has one key
    (the walk cut at GROUP_DEPTH gave its far ends other keys: one lineage in two splits)."""
    with filled_schema(servers["database_url"], _fill) as conn:
        frames = list(range(2, 2 + FRAMES))
        chain = list(range(2 + FRAMES, 2 + FRAMES + CHAIN))
        lone = 2 + FRAMES + CHAIN
        t0 = time.monotonic()
        keys = sqld.group_keys(conn, [*frames, *chain, lone], "lineage")
        assert time.monotonic() - t0 < 5
        assert {keys[f] for f in frames} == {"lineage:1"}
        assert {keys[c] for c in chain} == {f"lineage:{chain[0]}"}  # the old walk: several keys
        assert keys[lone] == f"lineage:{lone}"
        t0 = time.monotonic()
        sqll.fill_samples(conn, [(n, f"{n:064x}", "train" if n % 2 else "val") for n in [*frames, *chain, lone]])
        pairs, examples = sqll.cross_pairs(conn, sqll.lineage_keys(conn), 3)
        assert time.monotonic() - t0 < 5
        half = FRAMES // 2
        assert pairs == half * half + (CHAIN // 2) * (CHAIN - CHAIN // 2) and len(examples) == 2


def _fill_embedded(conn: psycopg.Connection) -> None:
    """Nodes 1-5 and a run's batch: their embeddings are written by test_cosine_… itself."""
    conn.execute("INSERT INTO node (node_id, sha256, is_virtual, is_physical) "
                 "SELECT g, sha256(int8send(g)), false, true FROM generate_series(1, 5) g")
    conn.execute("INSERT INTO action_batch (batch_id, action_id) VALUES ('embed-1', 0)")


def test_cosine_pairs_are_cosines_of_embeddings_not_normalised(servers) -> None:
    """Embeddings a worker wrote without L2-normalising them: two long vectors far apart in
    angle (cosine 0.2) are no leak, two short ones pointing the same way (cosine 1) are one,
    and a zero vector is left out — the old audit took the raw products for cosines (a false
    alarm on the long pair, the short pair missed)."""
    import numpy as np

    from hoardfs.datasets.audit import _cosine

    vectors = {1: [10.0, 1.0], 2: [1.0, 10.0], 3: [0.3, 0.4], 4: [0.6, 0.8], 5: [0.0, 0.0]}
    with filled_schema(servers["database_url"], _fill_embedded) as conn:
        for nid, v in vectors.items():
            conn.execute("INSERT INTO result_image_embedding (node_id, model, batch_id, embedding) "
                         "VALUES (%s, 'm@0', 'embed-1', %s)", [nid, np.asarray(v, "<f4").tobytes()])
        sqll.fill_samples(conn, [(n, f"{n:064x}", "train" if n % 2 else "val") for n in vectors])
        got = _cosine(conn, 0.95)
        assert got["cosine_pairs"] == 1 and got["cosine_compared"] == 4
        assert [(a[-1], b[-1]) for a, _, b, _ in got["examples"]] == [("3", "4")]
