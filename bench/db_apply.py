"""Apply 100,000 nodes with common metadata and 100,000 edges as one write-intent, vs the
strongest hand-written loads of the same rows in the same run; the no-op re-apply; 3-level
ancestor selectors over 1,000,000 nodes, cold and warm.

    python bench/db_apply.py [--nodes 100000] [--big 1000000] [--where DIR]

Baselines (the same nodes, physical rows, metadata and edges; fewer tables than the
write-intent, which also records virtual assets and the intent itself):

- `COPY` into temporary tables + one set-based `INSERT … SELECT` per table, foreign-key
  triggers **on** (what a careful importer writes);
- the same with `session_replication_role = replica` (triggers off — as the write-intent
  apply runs, which checks every reference in its own statements);
- pipelined `executemany` of per-row statements (psycopg 3 sends them in one pipeline);
- one `INSERT` per row and round trip (the naive importer; a 20,000-node sample).

Runs on its own PostgreSQL 15 cluster (initdb'ed under /var/tmp with the embedded
default's settings, removed afterwards), so a cold selector really is cold: the server is
restarted and the page cache dropped before the first run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
from _common import drop_caches, private_cluster, report

from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.cluster import PrivateCluster
from hoardfs.sql.intents import WriteIntent, virtual_sha256
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import query_nodes

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@contextmanager
def fresh_schema(url: str):
    """A connection to a new schema, migrated (the cluster is the bench's own: nothing to drop)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    with psycopg.connect(url, options=f"-c search_path={schema}", autocommit=True) as conn:
        migrate(conn)
        yield conn


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


_NODE = ("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, %s, %s) "
         "ON CONFLICT (sha256) DO NOTHING")
_PHYS = ("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, %s, %s FROM node "
         "WHERE sha256 = %s ON CONFLICT DO NOTHING")
_META = ("INSERT INTO common_metadata (node_id, source_id, title, view_count, download_time, author) "
         "SELECT node_id, %s, %s, %s, %s, %s FROM node WHERE sha256 = %s ON CONFLICT DO NOTHING")
_EDGE = ("INSERT INTO edge SELECT p.node_id, c.node_id, %s FROM node p, node c "
         "WHERE p.sha256 = %s AND c.sha256 = %s ON CONFLICT DO NOTHING")


def _ids(conn: psycopg.Connection) -> tuple[int, int]:
    conn.execute("INSERT INTO source (name) VALUES ('src') ON CONFLICT DO NOTHING")
    sid = conn.execute("SELECT source_id FROM source WHERE name = 'src'").fetchone()[0]
    rel = conn.execute("SELECT rel_id FROM relationship_type WHERE name = 'channel_of'").fetchone()[0]
    return sid, rel


def pipelined(conn: psycopg.Connection, it: WriteIntent) -> None:
    """The per-row statements, sent with executemany (one pipeline per table), triggers on."""
    with conn.transaction(), conn.cursor() as cur:
        sid, rel = _ids(conn)
        cur.executemany(_NODE, [(bytes.fromhex(n.sha256), n.virtual is not None, n.physical is not None)
                                for n in it.nodes])
        cur.executemany(_PHYS, [(n.physical.size, n.physical.file_type, bytes.fromhex(n.sha256))
                                for n in it.nodes if n.physical])
        cur.executemany(_META, [(sid, m.title, m.view_count, m.download_time, m.author, bytes.fromhex(m.node))
                                for m in it.metadata])
        cur.executemany(_EDGE, [(rel, bytes.fromhex(e.parent), bytes.fromhex(e.child)) for e in it.edges])


def copy_set_based(conn: psycopg.Connection, it: WriteIntent, triggers: bool) -> None:
    """COPY into temporary tables, then one INSERT … SELECT per table (foreign-key triggers on
    unless `triggers` is False: then as the write-intent apply runs)."""
    with conn.transaction(), conn.cursor() as cur:
        if not triggers:
            cur.execute("SET LOCAL session_replication_role = replica")
        sid, rel = _ids(conn)
        cur.execute("CREATE TEMP TABLE t_node (sha256 bytea, is_virtual bool, is_physical bool, size bigint, "
                    "file_type text) ON COMMIT DROP")
        cur.execute("CREATE TEMP TABLE t_meta (sha256 bytea, title text, view_count bigint, download_time timestamptz, "
                    "author text) ON COMMIT DROP")
        cur.execute("CREATE TEMP TABLE t_edge (parent bytea, child bytea) ON COMMIT DROP")
        with cur.copy("COPY t_node FROM STDIN") as cp:
            for n in it.nodes:
                cp.write_row((bytes.fromhex(n.sha256), n.virtual is not None, n.physical is not None,
                              n.physical.size if n.physical else None, n.physical.file_type if n.physical else None))
        with cur.copy("COPY t_meta FROM STDIN") as cp:
            for m in it.metadata:
                cp.write_row((bytes.fromhex(m.node), m.title, m.view_count, m.download_time, m.author))
        with cur.copy("COPY t_edge FROM STDIN") as cp:
            for e in it.edges:
                cp.write_row((bytes.fromhex(e.parent), bytes.fromhex(e.child)))
        cur.execute("INSERT INTO node (sha256, is_virtual, is_physical) SELECT sha256, is_virtual, is_physical "
                    "FROM t_node ON CONFLICT (sha256) DO NOTHING")
        cur.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT n.node_id, t.size, t.file_type "
                    "FROM t_node t JOIN node n USING (sha256) WHERE t.is_physical ON CONFLICT DO NOTHING")
        cur.execute("INSERT INTO common_metadata (node_id, source_id, title, view_count, download_time, author) "
                    "SELECT n.node_id, %s, t.title, t.view_count, t.download_time, t.author FROM t_meta t "
                    "JOIN node n USING (sha256) ON CONFLICT DO NOTHING", [sid])
        cur.execute("INSERT INTO edge SELECT p.node_id, c.node_id, %s FROM t_edge t JOIN node p ON p.sha256 = t.parent "
                    "JOIN node c ON c.sha256 = t.child ON CONFLICT DO NOTHING", [rel])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--baseline-nodes", type=int, default=20_000, help="per-row baseline sample size")
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--where", type=Path, help="the cluster's parent folder (default /var/tmp; e.g. /dev/shm "
                    "to take the disk under PostgreSQL out of the figures)")
    args = ap.parse_args()
    with private_cluster(args.where) as (url, cluster):
        run(args, url, cluster)


def _count(conn: psycopg.Connection) -> tuple[int, ...]:
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("node", "physical_content", "common_metadata", "edge"))


def run(args: argparse.Namespace, url: str, cluster: PrivateCluster) -> None:
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
    loads = {"copy_triggers_on": lambda c: copy_set_based(c, it, True),
             "copy_triggers_off": lambda c: copy_set_based(c, it, False),
             "pipelined_executemany": lambda c: pipelined(c, it)}
    rows_written = {}
    for name, load in loads.items():
        with fresh_schema(url) as conn:
            t0 = time.monotonic()
            load(conn)
            t[name] = time.monotonic() - t0
            rows_written[name] = _count(conn)
    assert len(set(rows_written.values())) == 1, rows_written  # every baseline wrote the same rows
    base = build_intent(args.baseline_nodes, "base")
    with fresh_schema(url) as conn:
        t0 = time.monotonic()
        per_row(conn, base)
        t["per_row"] = time.monotonic() - t0
    apply_rate = args.nodes / t["apply"]
    row_rate = args.baseline_nodes / t["per_row"]
    rate = {k: args.nodes / t[k] for k in loads}
    # a 3-level tree over `big` nodes: channel → video → frame → crop, selected by channel
    with fresh_schema(url) as conn:
        t0 = time.monotonic()
        levels = build_tree(conn, args.big)
        t["build_big"] = time.monotonic() - t0
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        one = virtual_sha256("channel", "src", "7")
        selectors = {  # broad: every crop has a channel ancestor, the label keeps 10 %; narrow: one channel's tree
            "broad": {"has_ancestor": [{"kind": "channel", "source": "src", "max_depth": 3}],
                      "labels": [{"key": "split", "value": "train"}]},
            "narrow": {"has_ancestor": [{"sha256": one, "max_depth": 3}]}}
        found = {}
        for name, sel in selectors.items():
            cluster.stop()  # cold: a fresh server and no file pages cached
            drop_caches()
            cluster.start()
            with psycopg.connect(url, options=f"-c search_path={schema}", autocommit=True) as cold:
                t0 = time.monotonic()
                found[name] = len(query_nodes(cold, sel))
                t[f"selector_{name}_cold"] = time.monotonic() - t0
                t0 = time.monotonic()
                assert len(query_nodes(cold, sel)) == found[name]
                t[f"selector_{name}_warm"] = time.monotonic() - t0
    rows = [("nodes/s (write-intent)", f"{apply_rate:,.0f}  ({args.nodes:,} nodes + metadata + {args.nodes:,} edges "
                                       f"in {t['apply']:.2f} s)")]
    for name in loads:
        rows.append((f"nodes/s ({name})", f"{rate[name]:,.0f}  ({t[name]:.2f} s; write-intent vs it "
                                          f"{apply_rate / rate[name]:.2f}x)"))
    rows += [("nodes/s (per-row INSERT)", f"{row_rate:,.0f}  ({args.baseline_nodes:,} nodes in {t['per_row']:.2f} s; "
                                          f"write-intent vs it {apply_rate / row_rate:.1f}x)"),
             ("re-apply (no-op)", f"{t['reapply'] * 1000:.1f} ms (hashing + key lookup)")]
    for name in selectors:
        rows.append((f"selector {name} over {levels:,} nodes",
                     f"cold {t[f'selector_{name}_cold']:.2f} s, warm {t[f'selector_{name}_warm']:.2f} s "
                     f"for {found[name]:,} nodes"))
    report("database bulk apply and selectors", rows,
           {"apply_nodes_per_s": round(apply_rate), "per_row_nodes_per_s": round(row_rate),
            **{f"{k}_nodes_per_s": round(v) for k, v in rate.items()},
            **{k: round(v, 3) for k, v in t.items()}, "selected": found, "big_nodes": levels})


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
