"""Apply 100,000 nodes with common metadata and 100,000 edges as one write-intent, vs a
per-row INSERT baseline in the same run; the no-op re-apply; a 3-level ancestor selector
over 1,000,000 nodes.

    python bench/db_apply.py [--nodes 100000] [--big 1000000]

Needs PostgreSQL: uses the test database of ./hoard.toml (`make test` starts it), each
part in a fresh schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import time
import uuid
from contextlib import contextmanager

import psycopg
from _common import REPO, report

from fsd.base import config
from sql.apply import apply_write_intent
from sql.intents import WriteIntent, virtual_sha256
from sql.migrate import migrate
from sql.selectors import query_nodes

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@contextmanager
def fresh_schema(url: str):
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            with psycopg.connect(url, options=f"-c search_path={schema}", autocommit=True) as conn:
                migrate(conn)
                yield conn
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def build_intent(n: int, key: str, fanout: int = 100) -> WriteIntent:
    """n physical nodes with metadata, n/fanout channels, a channel → node edge each."""
    chans = [virtual_sha256("channel", "src", str(c)) for c in range(max(1, n // fanout))]
    nodes, meta, edges = [], [], []
    for c, h in enumerate(chans):
        nodes.append({"sha256": h, "virtual": {"kind": "channel", "source": "src", "stable_id": str(c)}})
    for i in range(n):
        h = hashlib.sha256(f"{key}:{i}".encode()).hexdigest()
        nodes.append({"sha256": h, "physical": {"size": 1000 + i, "file_type": "jpg"}})
        meta.append({"node": h, "source": "src", "title": f"item {i}", "view_count": i,
                     "download_time": T0, "author": f"a{i % 50}"})
        edges.append({"parent": chans[i % len(chans)], "child": h, "relationship": "channel_of"})
    return WriteIntent.model_validate({"key": key, "sources": ["src"], "nodes": nodes, "metadata": meta,
                                       "edges": edges})


def per_row(conn: psycopg.Connection, it: WriteIntent) -> None:
    """The baseline: one INSERT per row, in one transaction (what a naive importer does)."""
    with conn.transaction():
        conn.execute("INSERT INTO source (name) VALUES ('src') ON CONFLICT DO NOTHING")
        sid = conn.execute("SELECT source_id FROM source WHERE name = 'src'").fetchone()[0]
        rel = conn.execute("SELECT rel_id FROM relationship_type WHERE name = 'channel_of'").fetchone()[0]
        for n in it.nodes:
            nid = conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, %s, %s) "
                               "ON CONFLICT (sha256) DO UPDATE SET sha256 = EXCLUDED.sha256 RETURNING node_id",
                               [bytes.fromhex(n.sha256), n.virtual is not None, n.physical is not None]).fetchone()[0]
            if n.physical:
                conn.execute("INSERT INTO physical_content (node_id, size, file_type) VALUES (%s, %s, %s) "
                             "ON CONFLICT DO NOTHING", [nid, n.physical.size, n.physical.file_type])
        for m in it.metadata:
            conn.execute("INSERT INTO common_metadata (node_id, source_id, title, view_count, download_time, author) "
                         "SELECT node_id, %s, %s, %s, %s, %s FROM node WHERE sha256 = %s ON CONFLICT DO NOTHING",
                         [sid, m.title, m.view_count, m.download_time, m.author, bytes.fromhex(m.node)])
        for e in it.edges:
            conn.execute("INSERT INTO edge SELECT p.node_id, c.node_id, %s FROM node p, node c "
                         "WHERE p.sha256 = %s AND c.sha256 = %s ON CONFLICT DO NOTHING",
                         [rel, bytes.fromhex(e.parent), bytes.fromhex(e.child)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--baseline-nodes", type=int, default=20_000, help="per-row baseline sample size")
    ap.add_argument("--big", type=int, default=1_000_000)
    args = ap.parse_args()
    url = config.load(os.environ.get("HOARD_CONFIG") or REPO / "hoard.toml").test_database_url
    t: dict[str, float] = {}
    it = build_intent(args.nodes, "bulk")
    with fresh_schema(url) as conn:
        t0 = time.monotonic()
        res = apply_write_intent(conn, it)
        t["apply"] = time.monotonic() - t0
        assert res.counts["edges_new"] == args.nodes
        t0 = time.monotonic()
        again = apply_write_intent(conn, it)
        t["reapply"] = time.monotonic() - t0
        assert again.noop
    base = build_intent(args.baseline_nodes, "base")
    with fresh_schema(url) as conn:
        t0 = time.monotonic()
        per_row(conn, base)
        t["per_row"] = time.monotonic() - t0
    apply_rate = args.nodes / t["apply"]
    row_rate = args.baseline_nodes / t["per_row"]
    # a 3-level tree over `big` nodes: channel → video → frame → crop, selected by channel
    with fresh_schema(url) as conn:
        t0 = time.monotonic()
        levels = build_tree(conn, args.big)
        t["build_big"] = time.monotonic() - t0
        sel = {"has_ancestor": [{"kind": "channel", "source": "src", "max_depth": 3}],
               "labels": [{"key": "split", "value": "train"}]}
        query_nodes(conn, sel)  # warm the cache once, as a running system would be
        t0 = time.monotonic()
        ns = query_nodes(conn, sel)
        t["selector"] = time.monotonic() - t0
    rows = [("nodes/s (write-intent)", f"{apply_rate:,.0f}  ({args.nodes:,} nodes + metadata + {args.nodes:,} edges "
                                       f"in {t['apply']:.2f} s)"),
            ("nodes/s (per-row INSERT)", f"{row_rate:,.0f}  ({args.baseline_nodes:,} nodes in {t['per_row']:.2f} s)"),
            ("write-intent vs per-row", f"{apply_rate / row_rate:.1f}x"),
            ("re-apply (no-op)", f"{t['reapply'] * 1000:.1f} ms (hashing + key lookup)"),
            (f"selector over {levels:,} nodes", f"{t['selector']:.2f} s for {len(ns):,} nodes "
                                                 f"(3-level has_ancestor + label)")]
    report("database bulk apply and selectors", rows,
           {"apply_nodes_per_s": round(apply_rate), "per_row_nodes_per_s": round(row_rate),
            **{k: round(v, 3) for k, v in t.items()}, "selected": len(ns), "big_nodes": levels})


def build_tree(conn: psycopg.Connection, total: int) -> int:
    """total nodes: 1 % channels, the rest split over video/frame/crop levels, with labels."""
    per = total // 3
    chans = max(1, total // 100)
    done = 0
    batch = 50_000
    for level, name in enumerate(("video", "frame", "crop")):
        for start in range(0, per, batch):
            nodes, edges, labels = [], [], []
            if level == 0 and start == 0:
                nodes += [{"sha256": virtual_sha256("channel", "src", str(c)),
                           "virtual": {"kind": "channel", "source": "src", "stable_id": str(c)}} for c in range(chans)]
            for i in range(start, min(per, start + batch)):
                h = hashlib.sha256(f"{name}:{i}".encode()).hexdigest()
                parent = (virtual_sha256("channel", "src", str(i % chans)) if level == 0 else
                          hashlib.sha256(f"{('video', 'frame')[level - 1]}:{i}".encode()).hexdigest())
                nodes.append({"sha256": h, "physical": {"size": 100, "file_type": "jpg"}})
                edges.append({"parent": parent, "child": h,
                              "relationship": ("channel_of", "frame_of", "crop_of")[level]})
                if level == 2 and i % 10 == 0:
                    labels.append({"node": h, "key": "split", "value": "train"})
            apply_write_intent(conn, {"key": f"{name}-{start}", "sources": ["src"],
                                      "relationships": [{"name": "frame_of"}, {"name": "crop_of"}],
                                      "nodes": nodes, "edges": edges, "labels": labels})
            done += len(nodes)
    conn.execute("ANALYZE")
    return done


if __name__ == "__main__":
    main()
