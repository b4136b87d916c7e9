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
