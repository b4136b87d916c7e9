"""Where a write-intent's time goes as the database grows (a 100,000-node intent 3.2×
slower per node at 10 M nodes than at 1 M), this checkout's `apply_write_intent` against an
older checkout's, on one private PostgreSQL cluster.

    python bench/intent_scale.py --old CHECKOUT [--points 90000:10000:old,100000:10000:new,...]
                                 [--label NAME] [--explain]

Rows are grown through write-intents of 10,000 nodes shaped as bench/scale.py's (a node, a
`split` label and two edges each, the nodes of a sealed batch; random sha256s, no store). Each
point `SIZE:NODES:old|new` grows the database to SIZE - NODES nodes, then applies an intent of
NODES new ones with that checkout's code after a CHECKPOINT (each page an intent touches first
then writes a full-page image: the worst case of a checkpoint cycle): its seconds, each SQL
statement's seconds, and PostgreSQL's counters around it — WAL bytes and full-page images,
buffers hit and read. `--explain` adds EXPLAIN (ANALYZE, BUFFERS) of three of its joins after
it. Raw JSON in bench/results/intent-scale-<label>.json, written after each point.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import scale
from _common import REPO, RESULTS, _commit, _machine, private_cluster

from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.migrate import migrate

#: the intents that grow the database between points
GROW = 10_000
COUNTERS = ("SELECT (SELECT wal_fpi FROM pg_stat_wal), (SELECT wal_bytes FROM pg_stat_wal), "
            "(SELECT blks_read FROM pg_stat_database WHERE datname = current_database()), "
            "(SELECT blks_hit FROM pg_stat_database WHERE datname = current_database()), "
            "(SELECT sum(pg_relation_size(oid)) FROM pg_class WHERE relname IN ('node', 'edge', 'label', "
            "'batch_member'))")
#: the joins `--explain` shows, as the intent left its temporary tables
EXPLAINED = {
    "edge parent check": "SELECT t.idx FROM tmp_edge t LEFT JOIN node n ON n.sha256 = t.parent WHERE n.node_id IS NULL "
                         "ORDER BY t.idx LIMIT 1",
    "label check": "SELECT t.idx FROM tmp_label t LEFT JOIN node n ON n.sha256 = t.sha WHERE n.node_id IS NULL "
                   "ORDER BY t.idx LIMIT 1",
    "edge insert's select": "SELECT p.node_id, c.node_id FROM tmp_edge t JOIN node p ON p.sha256 = t.parent "
                            "JOIN node c ON c.sha256 = t.child",
}


def older_apply(checkout: Path):
    """`apply_write_intent` of another checkout's sql/apply.py (the rest of `sql` is this one's)."""
    spec = importlib.util.spec_from_file_location("older_apply", checkout / "sql" / "apply.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["older_apply"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.apply_write_intent


class Statements:
    """Seconds and calls of each statement `psycopg.Connection.execute` runs while `on`."""

    def __init__(self) -> None:
        self.seen: dict[str, list] = defaultdict(lambda: [0.0, 0])
        self.plain = psycopg.Connection.execute

    def on(self) -> None:
        self.seen.clear()
        plain, seen = self.plain, self.seen

        def timed(conn, query, params=None, **kw):
            t = time.monotonic()
            try:
                return plain(conn, query, params, **kw)
            finally:
                key = " ".join(str(query).split())[:120]
                seen[key][0] += time.monotonic() - t
                seen[key][1] += 1

        psycopg.Connection.execute = timed  # type: ignore[method-assign]

    def off(self) -> list:
        psycopg.Connection.execute = self.plain  # type: ignore[method-assign]
        return sorted(([round(s, 3), n, q] for q, (s, n) in self.seen.items()), reverse=True)[:15]


def counters(conn: psycopg.Connection) -> list[float]:
    return [float(x or 0) for x in conn.execute(COUNTERS).fetchone() or ()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the checkout to compare with (`git archive` of it)")
    ap.add_argument("--points", default="90000:10000:old,100000:10000:new,990000:10000:old,1000000:10000:new,"
                                        "1100000:100000:old,1200000:100000:new")
    ap.add_argument("--label", default="default")
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    points = [(int(a), int(b), code) for a, b, code in (p.split(":") for p in args.points.split(","))]
    apply = {"new": apply_write_intent, "old": older_apply(args.old.resolve())}
    work = args.work or Path(f"/var/tmp/intent-scale-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    doc: dict = {"commit": _commit(), "machine": _machine(), "old": str(args.old), "load_before": os.getloadavg(),
                 "points": []}
    path = RESULTS / f"intent-scale-{args.label}.json"
    built = scale.Built(work, GROW)
    rng = random.Random(1)
    statements = Statements()

    def add(n: int) -> None:
        built.batches.append((f"b{len(built.batches):05d}", built.count, n))
        built.append([rng.randbytes(32) for _ in range(n)])

    with private_cluster(work) as (url, _cluster), psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        for size, n, code in points:
            t = time.monotonic()
            while built.db_upto + GROW <= size - n:
                add(GROW)
                apply_write_intent(conn, scale.intent_for(built, built.db_upto, GROW, f"grow-{built.db_upto}"))
                built.db_upto += GROW
            grown = time.monotonic() - t
            add(n)
            intent = scale.intent_for(built, built.db_upto, n, f"measured-{built.db_upto}")
            conn.execute("CHECKPOINT")
            before = counters(conn)
            statements.on()
            t = time.monotonic()
            try:
                apply[code](conn, intent)
            finally:
                secs = time.monotonic() - t
                top = statements.off()
            after = counters(conn)
            built.db_upto += n
            point = {"nodes_before": size - n, "intent_nodes": n, "code": code, "seconds": round(secs, 2),
                     "wal_fpi": after[0] - before[0], "wal_mb": round((after[1] - before[1]) / 2**20, 1),
                     "blks_read": after[2] - before[2], "blks_hit": after[3] - before[3],
                     "tables_mb": round(after[4] / 2**20), "grow_s": round(grown, 1), "load": os.getloadavg(),
                     "statements": top}
            if args.explain:
                point["plans"] = {name: [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q).fetchall()]
                                  for name, q in EXPLAINED.items()}
            doc["points"].append(point)
            doc["load_after"] = os.getloadavg()
            path.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"{size - n:,} nodes + {n:,} ({code}): {secs:.2f} s; " + "; ".join(
                f"{s} s {q[:60]}" for s, _n, q in top[:4]), flush=True)
    print(f"{path.relative_to(REPO)} written", flush=True)


if __name__ == "__main__":
    main()
