"""The leak audit every build runs (docs/datasets.md "The leak audit"): pairs of samples in two
different splits that a model could learn one from the other — they share a lineage (an image
and its crop, thumbnail or frame), they are near-duplicates at the spec's `near_dup_threshold`
(hoardfs.sql.neardup's groups, made of the samples' own hashes), or their image embeddings lie
within `audit.cosine` (hoardfs.sql.embeddings' table). All three are zero for a good build. The counts go into dataset.json and the card
(`leak_audit`); a build with a pair is refused (`audit.on_leak = "refuse"`, the default) or
built with a warning (`"warn"`), naming a few pairs and how to keep them in one split.

Lineages and near-duplicate groups are counted in PostgreSQL by group id (hoardfs.sql.leak_audit:
(n² − Σ n_s²) / 2 pairs a key), never sample against sample. Embeddings are compared exactly,
in blocks of matrix products, up to COSINE_EXACT samples; above that, each sample's
COSINE_NEIGHBOURS nearest by an HNSW index of the samples (usearch, when installed: `exact`
false, a pair past the neighbours asked is missed), else the first COSINE_EXACT by sha256
(`compared` says how many).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hoardfs.base.errors import ExitCode
from hoardfs.datasets.model import Sample
from hoardfs.datasets.spec import DatasetError, DatasetSpec
from hoardfs.sql import leak_audit as sqll
from hoardfs.sql import neardup

if TYPE_CHECKING:
    import psycopg

#: the pairs of each kind the audit names at most
EXAMPLES = 3
#: up to this many embedded samples every pair is compared (20,000² products of 512 numbers: a
#: few seconds of BLAS); above it, by nearest neighbours
COSINE_EXACT = 20_000
#: the neighbours each sample is asked for above COSINE_EXACT
COSINE_NEIGHBOURS = 16
#: rows of one block of the exact comparison (a block × n float32 matrix: 40 MB at n = 20,000)
_BLOCK = 512
KINDS = ("lineage", "near_dup", "cosine")


def run(conn: psycopg.Connection, spec: DatasetSpec, samples: list[Sample]) -> dict[str, Any]:
    """The audit of `samples` (their node ids, sha256s and splits): dataset.json's `leak_audit`."""
    try:
        sqll.fill_samples(conn, ((s.node_id, s.sha256, s.split) for s in samples))
        return _audit(conn, spec)
    finally:
        sqll.drop(conn)


def run_dry(conn: psycopg.Connection, spec: DatasetSpec, table: str) -> dict[str, Any]:
    """The audit of a dry run's samples (hoardfs.datasets.plan.DryPlan.table): the build's."""
    try:
        sqll.fill_from(conn, table, list(spec.split.ratios))
        return _audit(conn, spec)
    finally:
        sqll.drop(conn)


def _audit(conn: psycopg.Connection, spec: DatasetSpec) -> dict[str, Any]:
    lineage, lin_ex = sqll.cross_pairs(conn, sqll.lineage_keys(conn), EXAMPLES)
    near: int | None = None
    near_ex: list[tuple[str, str, str, str]] = []
    ids, ph, pf = sqll.sample_hashes(conn)
    if len(ids):  # the near-duplicate groups of the samples' own hashes (`hoard dups`' rule)
        grouping = neardup.group(ph, pf, spec.near_dup_threshold)
        groups = {int(ids[p]): f"g{k}" for k, members in enumerate(grouping.groups) for p in members}
        near, near_ex = sqll.cross_pairs(conn, sqll.near_dup_keys(conn, groups), EXAMPLES)
    cos = _cosine(conn, spec.audit.cosine)
    examples = [{"kind": kind, "a": a, "a_split": sa, "b": b, "b_split": sb}
                for kind, found in (("lineage", lin_ex), ("near_dup", near_ex), ("cosine", cos.pop("examples")))
                for a, sa, b, sb in found]
    return {"lineage_pairs": lineage, "near_dup_pairs": near, "near_dup_threshold": spec.near_dup_threshold,
            **cos, "pairs": lineage + (near or 0) + (cos["cosine_pairs"] or 0), "examples": examples}


def _cosine(conn: psycopg.Connection, threshold: float) -> dict[str, Any]:
    """cosine_pairs (None: no sample embedded), cosine_threshold, cosine_model, cosine_compared
    (the embedded samples compared), cosine_exact, and the examples."""
    out: dict[str, Any] = {"cosine_pairs": None, "cosine_threshold": threshold, "cosine_model": None,
                           "cosine_compared": 0, "cosine_exact": True, "examples": []}
    got = sqll.embedding_model(conn)
    if got is None or got[1] % 4 or not got[1]:
        return out
    model, length, _n = got
    rows = sqll.embeddings(conn, model, length)
    splits = sorted({r[2] for r in rows})
    split_idx = np.asarray([splits.index(r[2]) for r in rows], np.int32)
    mat = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(len(rows), length // 4)
    mat = mat.astype(np.float32)
    # the rows are said to be L2-normalised, and nothing enforces it (a team's own worker writes
    # them too): made so here, or a product is no cosine (a false alarm on long vectors, a leak
    # missed on short ones); a zero or non-finite row is like no embedding
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(mat, axis=1)
    usable = np.isfinite(norms) & (norms > 0) & np.isfinite(mat).all(axis=1)
    if not usable.all():
        rows = [r for r, ok in zip(rows, usable, strict=True) if ok]
        mat, split_idx, norms = mat[usable], split_idx[usable], norms[usable]
    mat = mat / norms[:, None]
    pairs: list[tuple[int, int]]
    exact = True
    if len(rows) <= COSINE_EXACT:
        count, pairs = _exact(mat, split_idx, threshold)
    else:
        try:
            count, pairs = _neighbours(mat, split_idx, threshold)
            exact = False
        except ImportError:  # the search extra (usearch) is not installed: the first COSINE_EXACT
            rows, mat, split_idx = rows[:COSINE_EXACT], mat[:COSINE_EXACT], split_idx[:COSINE_EXACT]
            count, pairs = _exact(mat, split_idx, threshold)
            exact = False
    out.update(cosine_pairs=count, cosine_model=model, cosine_compared=len(rows), cosine_exact=exact,
               examples=[(rows[i][1], rows[i][2], rows[j][1], rows[j][2]) for i, j in pairs[:EXAMPLES]])
    return out


def _exact(mat: np.ndarray, split: np.ndarray, threshold: float) -> tuple[int, list[tuple[int, int]]]:
    """(pairs i < j in two splits with mat[i]·mat[j] ≥ threshold, the first EXAMPLES of them)."""
    count = 0
    found: list[tuple[int, int]] = []
    n = len(mat)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        sims = mat[start:stop] @ mat[start:].T  # row i against columns start…n
        hit = sims >= threshold
        hit &= split[start:stop, None] != split[None, start:]
        hit &= np.arange(start, stop)[:, None] < np.arange(start, n)[None, :]
        count += int(hit.sum())
        if len(found) < EXAMPLES:
            ii, jj = np.nonzero(hit)
            found += [(int(i) + start, int(j) + start) for i, j in zip(ii[:EXAMPLES], jj[:EXAMPLES], strict=True)]
    return count, found[:EXAMPLES]


def _neighbours(mat: np.ndarray, split: np.ndarray, threshold: float) -> tuple[int, list[tuple[int, int]]]:
    """As `_exact`, over each sample's COSINE_NEIGHBOURS nearest by an HNSW index of them."""
    from usearch.index import Index  # deferred: the search extra; ImportError when it is not installed

    idx = Index(ndim=mat.shape[1], metric="cos", dtype="f32")
    idx.add(np.arange(len(mat), dtype=np.uint64), mat)
    found = idx.search(mat, COSINE_NEIGHBOURS + 1)
    keys = np.asarray(found.keys, np.int64).reshape(len(mat), -1)
    sims = 1.0 - np.asarray(found.distances, np.float64).reshape(len(mat), -1)
    pairs: set[tuple[int, int]] = set()
    for i in range(len(mat)):
        for j, sim in zip(keys[i], sims[i], strict=True):
            if 0 <= j < len(mat) and j != i and sim >= threshold and split[i] != split[j]:
                pairs.add((min(i, int(j)), max(i, int(j))))
    ordered = sorted(pairs)
    return len(ordered), ordered[:EXAMPLES]


def leak_line(a: dict[str, Any]) -> str:
    """The audit in one line: each kind's pairs, or why it was not checked."""
    near = (f"{a['near_dup_pairs']} near-duplicate (threshold {a['near_dup_threshold']})"
            if a.get("near_dup_pairs") is not None else "near-duplicates not checked (no sample hashed)")
    if a.get("cosine_pairs") is None:
        cos = "embeddings not checked (no sample embedded)"
    else:
        cos = (f"{a['cosine_pairs']} within cosine {a['cosine_threshold']:g} ({a['cosine_compared']} embedded samples"
               + ("" if a.get("cosine_exact", True) else ", approximate") + ")")
    return f"{a['pairs']} cross-split pairs: {a['lineage_pairs']} sharing a lineage, {near}, {cos}"


def _example(e: dict[str, Any]) -> str:
    return f"{e['a'][:16]} ({e['a_split']}) ~ {e['b'][:16]} ({e['b_split']}) [{e['kind']}]"


#: how each kind of leak is kept in one split
_NEXT = {"lineage": 'split.group = "lineage" (or "post")',
         "near_dup": 'split.group = "near_dup" or dedup = "by_near_dup"',
         "cosine": 'dedup = "by_near_dup", a narrower selection, or a higher audit.cosine'}


def check(spec: DatasetSpec, a: dict[str, Any]) -> str | None:
    """None for a clean audit; the warning line when `audit.on_leak = "warn"`; else DatasetError
    (exit 5, nothing written) naming the counts, a few pairs and the next step."""
    if not a["pairs"]:
        return None
    kinds = [k for k in KINDS if a.get(f"{k}_pairs")]
    first = [next(e for e in a["examples"] if e["kind"] == k) for k in kinds]  # one pair of each kind
    line = (f"dataset {spec.name}: the leak audit found {leak_line(a)}; e.g. "
            + "; ".join(_example(e) for e in first)
            + " — keep them in one split: " + "; ".join(_NEXT[k] for k in kinds))
    if spec.audit.on_leak == "warn":
        return line + " (audit.on_leak = \"warn\": built anyway)"
    raise DatasetError(line + ", or set audit.on_leak = \"warn\" to build anyway (nothing was written)",
                       ExitCode.DATA)
