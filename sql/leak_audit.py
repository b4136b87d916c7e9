"""SQL of a build's leak audit (hoardfs.datasets.audit, docs/datasets.md "The leak audit"): the
samples in a temp table, and the cross-split pairs of samples that share a key — a lineage (the
nodes joined by edges between physical nodes: an image, its crops, thumbnails, frames) or a
near-duplicate group — counted by GROUP BY (key, split), never by comparing samples pairwise;
the embeddings of the samples, for the cosine check.

The pairs of a key held by n samples, n_s of them in split s: (n² − Σ n_s²) / 2 — every pair
of its samples less those in one split. The temp tables (`la_*`) live on the caller's
connection until `drop`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import psycopg

from hoardfs.sql.datasets import group_table

#: the temp tables the audit makes
TABLES = ("la_s", "la_ln", "la_lin", "la_nd")


def fill_samples(conn: psycopg.Connection, rows: Iterable[tuple[int, str, str]]) -> None:
    """la_s(node_id, sha256 hex, split) of the build's samples (one row a node), analysed."""
    drop(conn)
    conn.execute("CREATE TEMP TABLE la_s (node_id bigint PRIMARY KEY, sha256 text NOT NULL, split text NOT NULL)")
    with conn.cursor().copy("COPY la_s (node_id, sha256, split) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)
    conn.execute("ANALYZE la_s")


def fill_from(conn: psycopg.Connection, table: str, splits: list[str]) -> None:
    """la_s from a dry run's temp table of samples (hoardfs.sql.datasets.dry_caps: node_id,
    sha256, split_idx), each split index named by `splits`."""
    if table not in ("ds_kept", "ds_final"):
        raise ValueError(f"fill_from: {table!r} is not a dry run's table of samples")
    drop(conn)
    conn.execute(f"CREATE TEMP TABLE la_s AS SELECT node_id, encode(sha256, 'hex') AS sha256, "
                 f"(%s::text[])[split_idx + 1] AS split FROM {table}", [splits])
    conn.execute("ANALYZE la_s")


def drop(conn: psycopg.Connection) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")


def lineage_keys(conn: psycopg.Connection) -> str:
    """la_lin(node_id, gkey): the lineage key (hoardfs.sql.datasets.group_table, kind lineage) of
    each sample that has a physical parent or child — the others are a lineage of their own,
    which no pair shares, and are not walked. Its name."""
    conn.execute(
        "CREATE TEMP TABLE la_ln AS SELECT s.node_id AS id FROM la_s s WHERE EXISTS ("
        "SELECT 1 FROM edge e JOIN node p ON p.node_id = e.parent_id AND p.is_physical WHERE e.child_id = s.node_id) "
        "OR EXISTS (SELECT 1 FROM edge e JOIN node k ON k.node_id = e.child_id AND k.is_physical "
        "WHERE e.parent_id = s.node_id)")
    conn.execute("ANALYZE la_ln")
    group_table(conn, "la_ln", "lineage", "la_lin")
    return "la_lin"


def sample_hashes(conn: psycopg.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node ids, pHashes, mirrored pHashes) of the samples that are hashed (result_image_hash,
    hoardfs.sql.neardup), as numpy arrays (uint64 hashes), by node id."""
    rows = conn.execute("SELECT r.node_id, r.phash, r.phash_flip FROM la_s s JOIN result_image_hash r "
                        "ON r.node_id = s.node_id ORDER BY 1").fetchall()
    arr = np.asarray(rows, np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1].view(np.uint64), arr[:, 2].view(np.uint64)


def near_dup_keys(conn: psycopg.Connection, groups: dict[int, str]) -> str:
    """la_nd(node_id, gkey): each sample's near-duplicate group (`groups`: node id → its
    group's key). Its name."""
    conn.execute("CREATE TEMP TABLE la_nd (node_id bigint PRIMARY KEY, gkey text NOT NULL)")
    with conn.cursor().copy("COPY la_nd (node_id, gkey) FROM STDIN") as cp:
        for nid, name in groups.items():
            cp.write_row((nid, name))
    conn.execute("DELETE FROM la_nd d WHERE NOT EXISTS (SELECT 1 FROM la_s s WHERE s.node_id = d.node_id)")
    conn.execute("ANALYZE la_nd")
    return "la_nd"


def cross_pairs(conn: psycopg.Connection, keys: str, examples: int) -> tuple[int, list[tuple[str, str, str, str]]]:
    """(pairs of samples in two splits that share a key of the temp table `keys` (node_id,
    gkey), up to `examples` of them: (sha256, split, sha256, split) — of each key the least
    sha256 of two of its splits, by key)."""
    if keys not in TABLES:
        raise ValueError(f"cross_pairs: {keys!r} is not one of the audit's tables")
    by = (f"WITH g AS (SELECT k.gkey, s.split, count(*)::numeric AS n, min(s.sha256) AS sha FROM {keys} k "
          "JOIN la_s s ON s.node_id = k.node_id GROUP BY 1, 2)")
    row = conn.execute(f"{by} SELECT coalesce(sum(p), 0)::bigint FROM (SELECT (sum(n) * sum(n) - sum(n * n)) / 2 "
                       "AS p FROM g GROUP BY gkey HAVING count(*) > 1) x").fetchone()
    assert row is not None
    found = conn.execute(f"{by} SELECT a.sha, a.split, b.sha, b.split FROM g a JOIN g b ON b.gkey = a.gkey "
                         "AND b.split > a.split ORDER BY a.gkey, a.split, b.split LIMIT %s", [examples]).fetchall()
    return int(row[0]), [tuple(r) for r in found]


def embedding_model(conn: psycopg.Connection) -> tuple[str, int, int] | None:
    """(model, length in bytes, samples) of the embeddings that cover the most samples (one
    model's are never compared with another's; of a model, the length most of its rows have),
    or None when no sample is embedded."""
    row = conn.execute("SELECT r.model, length(r.embedding), count(*) FROM result_image_embedding r "
                       "JOIN la_s s ON s.node_id = r.node_id GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 1").fetchone()
    return (str(row[0]), int(row[1]), int(row[2])) if row else None


def embeddings(conn: psycopg.Connection, model: str, length: int) -> list[tuple[int, str, str, bytes]]:
    """(node id, sha256 hex, split, embedding bytes) of the samples embedded by `model`, by sha256."""
    return [(int(nid), sha, split, bytes(blob)) for nid, sha, split, blob in conn.execute(
        "SELECT s.node_id, s.sha256, s.split, r.embedding FROM la_s s JOIN result_image_embedding r "
        "ON r.node_id = s.node_id AND r.model = %s AND length(r.embedding) = %s ORDER BY s.sha256",
        [model, length]).fetchall()]

