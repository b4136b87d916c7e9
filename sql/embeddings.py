"""Image embeddings (migration 017, table `result_image_embedding`) and the nearest-neighbour
index `hoard search` queries (docs/search.md).

PostgreSQL is the truth: the rows the `clip-embed` action's write-intent stored. The index is
an HNSW graph (usearch, cosine) kept beside the database on the SSD,
`<ssd>/state/search/<model>.usearch`, with a small JSON stamp of the rows it was built from
(`<model>.json`: their count, the sum and the largest of their node ids). It is a cache: before a
search the stamp is compared with the table's; a missing, unreadable or behind index is rebuilt
from the rows (one line says which and why) and written beside the old by a rename. PostgreSQL
here has no pgvector (Debian 12 does not package it), which is why the graph lives in a file.

Deleted images are dropped from the answers (their rows stay until their node is purged:
`ON DELETE CASCADE`); the index is asked for a few more than wanted to make up for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

#: rows read from PostgreSQL per fetch while rebuilding
_FETCH = 10_000
#: HNSW's graph degree and its search breadth: usearch's defaults are 16 and 64; a wider search
#: costs little at the sizes searched here and keeps recall ≈ 1
CONNECTIVITY = 16
EXPANSION_SEARCH = 128
#: up to this many embeddings a search compares the text with every one (usearch's exact
#: search over the index's vectors: ~30 ms per 20,000 of 512 numbers here) — HNSW's graph is
#: approximate, and over many near-equal embeddings (blank scans, black frames) it missed the
#: nearest outright; above it, the graph
EXACT_UP_TO = 200_000


@dataclass(frozen=True)
class Hit:
    sha256: str
    score: float     # cosine similarity, -1..1 (higher: nearer)
    locator: str     # where it came from, e.g. batch:<batch>/<path> (scraped text: shown as text, never markup)


def models(conn: psycopg.Connection) -> dict[str, int]:
    """model id → the images embedded with it."""
    return {m: int(n) for m, n in conn.execute(
        "SELECT model, count(*) FROM result_image_embedding GROUP BY model ORDER BY model").fetchall()}


def stamp(conn: psycopg.Connection, model: str, dim: int) -> dict[str, int]:
    """What identifies the rows of `model` of `dim` numbers: count, sum and largest node id (a
    summary for the stamp's line; the index's keys are compared with the rows' node ids
    themselves — other sets of ids have the same count, sum and largest)."""
    row = conn.execute("SELECT count(*), coalesce(sum(node_id), 0), coalesce(max(node_id), 0) "
                       "FROM result_image_embedding WHERE model = %s AND length(embedding) = %s",
                       [model, 4 * dim]).fetchone()
    assert row is not None
    return {"count": int(row[0]), "sum": int(row[1]), "max": int(row[2])}


def node_ids(conn: psycopg.Connection, model: str, dim: int) -> np.ndarray:
    """The node ids of the rows of `model` of `dim` numbers, ascending."""
    return np.asarray([r[0] for r in conn.execute(
        "SELECT node_id FROM result_image_embedding WHERE model = %s AND length(embedding) = %s ORDER BY node_id",
        [model, 4 * dim]).fetchall()], np.int64)


def other_lengths(conn: psycopg.Connection, model: str, dim: int) -> int:
    """The rows of `model` that are not of `dim` numbers (any action may write this table)."""
    row = conn.execute("SELECT count(*) FROM result_image_embedding WHERE model = %s AND length(embedding) <> %s",
                       [model, 4 * dim]).fetchone()
    return int(row[0]) if row else 0


def vectors(conn: psycopg.Connection, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(node ids, float32 matrix one row each) of every row of `model` of `dim` numbers, by node id."""
    ids: list[int] = []
    blobs: list[bytes] = []
    with conn.transaction(), conn.cursor(name="embeddings") as cur:  # a server-side cursor lives in a transaction
        cur.itersize = _FETCH
        cur.execute("SELECT node_id, embedding FROM result_image_embedding WHERE model = %s "
                    "AND length(embedding) = %s ORDER BY node_id", [model, 4 * dim])
        for node_id, blob in cur:
            ids.append(int(node_id))
            blobs.append(bytes(blob))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    mat = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), dim)
    return np.asarray(ids, np.int64), mat.astype(np.float32)


def index_dir(ssd_root: Path) -> Path:
    return ssd_root / "state" / "search"


def _file_name(model: str) -> str:
    """The model id as a file name: itself when it is one (`ViT-B-32@5fb2c5b1d2a3e4f6`), else
    its safe characters and a digest of the whole (two ids never share a file)."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", model)
    if safe == model and len(model) <= 200 and not model.startswith("."):
        return model
    return f"{safe[:180]}-{hashlib.sha256(model.encode()).hexdigest()[:16]}"


class SearchIndex:
    """The on-disk HNSW index of one model's embeddings under `directory`."""

    def __init__(self, directory: Path, model: str, dim: int) -> None:
        self.directory = directory
        self.model = model
        self.dim = dim  # the model's embeddings' length: rows of another are left out
        self.path = directory / f"{_file_name(model)}.usearch"
        self.stamp_path = directory / f"{_file_name(model)}.json"

    def _read_stamp(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.stamp_path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("model") == self.model else None

    def _build(self, conn: psycopg.Connection, want: dict[str, int]) -> Any:
        from usearch.index import Index  # deferred: only a search needs usearch

        ids, mat = vectors(conn, self.model, self.dim)
        idx = Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
                    expansion_search=EXPANSION_SEARCH)
        if len(ids):
            idx.add(ids.astype(np.uint64), mat)
        self.directory.mkdir(parents=True, exist_ok=True)
        # temporary names of this rebuild alone: the GUI's searches are threads of one process
        # and rebuild at once too (a name of the process id only was written by two, and one's
        # rename then found it gone)
        unique = f"{os.getpid()}.{secrets.token_hex(6)}.tmp"
        tmp = self.path.with_name(f".{self.path.name}.{unique}")
        tmp_stamp = self.stamp_path.with_name(f".{self.stamp_path.name}.{unique}")
        try:
            idx.save(str(tmp))
            os.replace(tmp, self.path)
            tmp_stamp.write_text(json.dumps({"model": self.model, **want, "dim": self.dim}))
            os.replace(tmp_stamp, self.stamp_path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_stamp.unlink(missing_ok=True)
        return idx

    def open(self, conn: psycopg.Connection, note: Callable[[str], None]) -> Any:
        """The index, rebuilt first when missing, unreadable or not of the rows PostgreSQL
        holds now (`note` gets one line saying so)."""
        from usearch.index import Index  # deferred: only a search needs usearch

        want = stamp(conn, self.model, self.dim)
        have = self._read_stamp()
        why = ""
        if not self.path.exists():
            why = "missing"
        elif have is None:
            why = "its stamp is missing or unreadable"
        elif {k: have.get(k) for k in want} != want or have.get("dim") != self.dim:
            why = f"out of date ({have.get('count')} images in it, {want['count']} in PostgreSQL)"
        else:
            idx = Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
                        expansion_search=EXPANSION_SEARCH)
            try:
                idx.load(str(self.path))
            except (RuntimeError, ValueError, OSError) as e:
                why = f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            if not why and (len(idx) != want["count"] or (want["count"] and idx.ndim != self.dim)):
                why = f"unreadable (it holds {len(idx)} vectors of {idx.ndim}, its stamp says {want['count']})"
            # the stamp is a summary and is renamed into place after the index: two rebuilds at
            # once can leave one's index beside the other's stamp. The keys themselves decide.
            if not why and not np.array_equal(np.sort(np.asarray(idx.keys, np.int64)),
                                              node_ids(conn, self.model, self.dim)):
                why = "not of the rows its stamp says (another rebuild's, or the same summary of other rows)"
            if not why:
                return idx
        note(f"search index {self.path}: {why}; rebuilt from the {want['count']} embeddings in PostgreSQL")
        return self._build(conn, want)


def nearest(conn: psycopg.Connection, ssd_root: Path, model: str, query: np.ndarray, limit: int,
            note: Callable[[str], None]) -> list[Hit]:
    """The `limit` images nearest `query` (an L2-normalised vector of the model's dimension) among
    those embedded with `model`, nearest first; deleted ones left out."""
    dim = len(query)
    if others := other_lengths(conn, model, dim):
        note(f"{others} embeddings of {model} are not of its {dim} numbers (written by another action?): left out")
    idx = SearchIndex(index_dir(ssd_root), model, dim).open(conn, note)
    n = len(idx)
    if not n or limit <= 0:
        return []
    exact = n <= EXACT_UP_TO
    ask = min(n, limit * 2 + 16)
    while True:
        found = idx.search(np.asarray(query, np.float32), ask, exact=exact)
        keys = [int(k) for k in found.keys]
        dist = [float(d) for d in found.distances]
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT n.node_id, encode(n.sha256, 'hex'), coalesce((SELECT min(pp.locator) FROM physical_path pp "
            "WHERE pp.node_id = n.node_id), '') FROM node n JOIN physical_content pc USING (node_id) "
            "WHERE n.node_id = ANY(%s) AND NOT pc.is_deleted",
            [keys]).fetchall()}
        hits = [Hit(rows[k][0], 1.0 - d, rows[k][1]) for k, d in zip(keys, dist, strict=True)
                if k in rows]
        if len(hits) >= limit or ask >= n:
            return hits[:limit]
        ask = min(n, ask * 4)
