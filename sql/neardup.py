"""Near-duplicate groups: images whose perceptual hashes lie within a Hamming distance.

The hashes are rows of `result_image_hash` (migration 015), written by the `near-dup-hash`
action's write-intent. Two images are near-duplicates at threshold t when their pHashes differ
in at most t of 64 bits, or one's pHash and the other's mirrored pHash (`phash_flip`) do (a
left-right mirrored copy). A group is a connected set of such pairs (single linkage: a chain
of near pairs is one group, as imagededup and czkawka report them).

Finding the pairs is never a comparison of every image with every other. `groups` reads the
hashes once and runs multi-index hashing (Norouzi, Punjani, Fleet 2012) over the distinct pHash
values: the 64 bits are cut into m substrings; two hashes within t agree within r_j bits on at
least one substring j when Σ(r_j + 1) > t (pigeonhole), so each value is looked up, substring by
substring, at every key within r_j bits of its own (a sorted array and a binary search), and only
the values found are compared whole. m is chosen from the number of values and t to make the
fewest lookups and comparisons (`plan`). The figures (1 M and 10 M hashes): docs/near-dups.md.
`near_of` answers for one image in PostgreSQL with the four 16-bit quarters of `phash` and of
`phash_flip` the migrations index (015, 016).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg import sql

#: the threshold `hoard dups` uses when none is given (bits of 64): resized, re-encoded and
#: EXIF-rotated copies of a picture lie within it (docs/near-dups.md, bench/neardup.py)
DEFAULT_THRESHOLD = 6
#: the largest threshold accepted: past it unrelated pictures group (and the lookups grow fast)
MAX_THRESHOLD = 16
#: candidate pairs compared per slice of queries (bounds the memory: ~40 bytes a candidate)
_CHUNK = 8_000_000
#: the cost of one bucket lookup relative to comparing one candidate, for `plan` (measured)
_LOOKUP_COST = 1.0


class ThresholdError(ValueError):
    """A threshold outside 0…MAX_THRESHOLD."""


def check_threshold(t: int) -> int:
    if not 0 <= t <= MAX_THRESHOLD:
        raise ThresholdError(f"threshold {t} is not a Hamming distance from 0 to {MAX_THRESHOLD} (bits of 64); "
                             f"the default is {DEFAULT_THRESHOLD}")
    return t


def to_signed(h: int) -> int:
    """A 64-bit pattern (0 ≤ h < 2^64) as the bigint that holds it."""
    return h - (1 << 64) if h >= 1 << 63 else h


def to_hex(v: int) -> str:
    """A bigint hash as imagehash's 16 hex digits."""
    return f"{v & ((1 << 64) - 1):016x}"


# -- multi-index hashing ------------------------------------------------------------------------

def _binom_ball(width: int, r: int) -> int:
    """How many keys lie within r bits of one key of `width` bits."""
    return sum(math.comb(width, k) for k in range(r + 1)) if r >= 0 else 0


def plan(n: int, t: int) -> list[tuple[int, int, int]]:
    """The substrings for n distinct values at threshold t: [(shift, width, radius)], radius -1
    for a substring not looked up. Chosen over m = 3…16 substrings (at most 22 bits each: a
    substring's keys index a table of 2^width + 1 bucket starts) by the estimated work: lookups
    × (one table lookup + the values expected under each key, n / 2^width, if they spread evenly)."""
    best: tuple[float, list[tuple[int, int, int]]] | None = None
    for m in range(3, 17):
        widths = [64 // m + (1 if j < 64 % m else 0) for j in range(m)]
        need = t - m + 1  # Σ r_j must reach t - m + 1 (then Σ (r_j + 1) > t)
        radii = [(need + j) // m for j in range(m)]  # Hermite: they sum to `need`, as even as can be
        cost = sum(_binom_ball(w, r) * (_LOOKUP_COST + n / 2.0 ** w) for w, r in zip(widths, radii, strict=True))
        shifts = list(itertools.accumulate([0, *widths[:-1]]))
        subs = list(zip(shifts, widths, radii, strict=True))
        if best is None or cost < best[0]:
            best = (cost, subs)
    assert best is not None
    return best[1]


def _masks(width: int, r: int) -> Iterator[int]:
    for k in range(r + 1):
        for bits in itertools.combinations(range(width), k):
            yield sum(1 << b for b in bits)


def near_pairs(index: np.ndarray, queries: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (query position, index position) whose values differ in at most t bits (uint64
    arrays; `index` without repeats). A pair found through two substrings comes twice."""
    found_q: list[np.ndarray] = []
    found_i: list[np.ndarray] = []
    if not len(index) or not len(queries):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    for shift, width, r in plan(len(index), t):
        if r < 0:
            continue
        sel = np.uint64((1 << width) - 1)
        keys = ((index >> np.uint64(shift)) & sel).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        values = index[order]  # the index sorted by this substring: a bucket is a run of it
        starts = np.zeros((1 << width) + 1, np.int64)  # bucket k is values[starts[k]:starts[k + 1]]
        np.cumsum(np.bincount(keys, minlength=1 << width), out=starts[1:])
        # the queries sorted by their key too: a probe's keys (key ^ mask) then walk the bucket
        # table and the sorted index in runs, not at random (measured: several times faster at 1 M)
        qkeys = ((queries >> np.uint64(shift)) & sel).astype(np.int64)
        qorder = np.argsort(qkeys, kind="stable")
        qkeys = qkeys[qorder]
        qvalues = queries[qorder]
        for mask in _masks(width, r):
            probe = qkeys ^ mask
            lo = starts[probe]
            count = starts[probe + 1] - lo
            hit = np.flatnonzero(count)
            if not len(hit):
                continue
            # the candidates, a slice of queries at a time so that at most _CHUNK are held
            cum = np.cumsum(count[hit])
            start = 0
            while start < len(hit):
                base = cum[start - 1] if start else 0
                stop = int(np.searchsorted(cum, base + _CHUNK, "right"))
                stop = max(stop, start + 1)
                q = hit[start:stop]
                c = count[q]
                qpos = np.repeat(q, c)
                offsets = np.arange(len(qpos)) - np.repeat(np.cumsum(c) - c, c)
                spos = np.repeat(lo[q], c) + offsets
                close = np.bitwise_count(qvalues[qpos] ^ values[spos]) <= t
                found_q.append(qorder[qpos[close]])
                found_i.append(order[spos[close]])
                start = stop
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_q).astype(np.int64), np.concatenate(found_i).astype(np.int64)


@dataclass
class Grouping:
    """The groups of n images (positions into the arrays given to `group`), largest first, each
    sorted; `flipped`: the positions matched to another only through a mirrored pHash."""

    groups: list[list[int]]
    flipped: set[int] = field(default_factory=set)


def group(phash: np.ndarray, phash_flip: np.ndarray, t: int, *, flips: bool = True) -> Grouping:
    """Near-duplicate groups of images given their pHashes and mirrored pHashes (uint64 arrays
    of one length): positions whose pHashes are within t, or one's pHash within t of the
    other's mirrored pHash, are in one group (and those linked to them)."""
    # deferred: scipy (~0.3 s to load) only where groups are made, not in every importer of the thresholds
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    check_threshold(t)
    if not len(phash):
        return Grouping([])
    values, cls = np.unique(phash, return_inverse=True)  # identical pHashes are one value
    cls = cls.reshape(-1)
    a, b = near_pairs(values, values, t)
    keep = a != b
    src, dst = [a[keep]], [b[keep]]
    if flips:
        q, i = near_pairs(values, phash_flip, t)
        src.append(cls[q])
        dst.append(i)
    u = len(values)
    edges_a = np.concatenate(src) if src else np.zeros(0, np.int64)
    edges_b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges_a), np.int8), (edges_a, edges_b)), shape=(u, u))
    _, label = connected_components(graph, directed=False)
    node_label = label[cls]
    order = np.argsort(node_label, kind="stable")
    bounds = np.flatnonzero(np.diff(node_label[order])) + 1
    out = [sorted(g.tolist()) for g in np.split(order, bounds) if len(g) > 1]
    out.sort(key=lambda g: (-len(g), g[0]))
    # "flipped": in a group, but held to it only by mirrored pHashes (no other image's pHash is near its own)
    plain = np.zeros(u, bool)
    plain[a[keep]] = True
    plain[np.bincount(cls, minlength=u) > 1] = True
    flipped = {p for g in out for p in g if not plain[cls[p]]}
    return Grouping(out, flipped)


# -- the database ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    sha256: str
    node_id: int
    flipped: bool  # in its group through a mirrored pHash


#: one row of `_hashes`' binary COPY: its field count, then each bigint's length and value
_ROW = np.dtype([("fields", ">i2"), ("l1", ">i4"), ("node_id", ">i8"), ("l2", ">i4"), ("phash", ">i8"),
                 ("l3", ">i4"), ("phash_flip", ">i8")])
#: PostgreSQL's binary COPY header (signature, flags, extension length 0) and trailer (-1)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_TRAILER = b"\xff\xff"


def _hashes(conn: psycopg.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node ids, pHashes, mirrored pHashes) of every hashed image not deleted, by node id.
    Read as one binary COPY whose rows are all 38 bytes (three NOT NULL bigints) and taken as
    a numpy record array: no Python object per row (10 M rows are 380 MB, not gigabytes of ints)."""
    with conn.cursor() as cur, cur.copy(
            "COPY (SELECT r.node_id, r.phash, r.phash_flip FROM result_image_hash r JOIN physical_content pc "
            "USING (node_id) WHERE NOT pc.is_deleted ORDER BY r.node_id) TO STDOUT (FORMAT binary)") as copy:
        data = b"".join(bytes(block) for block in copy)
    if not data.startswith(_HEADER) or not data.endswith(_TRAILER) or (len(data) - 21) % _ROW.itemsize:
        raise ValueError("PostgreSQL's binary COPY of result_image_hash is not in the form read here")
    rows = np.frombuffer(data, _ROW, offset=len(_HEADER), count=(len(data) - 21) // _ROW.itemsize)
    if len(rows) and not ((rows["fields"] == 3).all() and (rows["l1"] == 8).all() and (rows["l2"] == 8).all()
                          and (rows["l3"] == 8).all()):
        raise ValueError("PostgreSQL's binary COPY of result_image_hash is not in the form read here")
    return (rows["node_id"].astype(np.int64), rows["phash"].astype(np.int64).view(np.uint64),
            rows["phash_flip"].astype(np.int64).view(np.uint64))


def hashed_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM result_image_hash r JOIN physical_content pc USING (node_id) "
                       "WHERE NOT pc.is_deleted").fetchone()
    return int(row[0]) if row else 0


def groups(conn: psycopg.Connection, threshold: int = DEFAULT_THRESHOLD, *, flips: bool = True,
           limit: int | None = None) -> list[list[Member]]:
    """The near-duplicate groups of the hashed images (deleted ones left out), largest first;
    each group's members by sha256. `limit`: at most that many groups."""
    ids, ph, pf = _hashes(conn)
    found = group(ph, pf, threshold, flips=flips)
    chosen = found.groups if limit is None else found.groups[:limit]
    wanted = [int(ids[p]) for g in chosen for p in g]
    shas = {nid: bytes(s).hex() for nid, s in conn.execute(
        "SELECT node_id, sha256 FROM node WHERE node_id = ANY(%s)", [wanted]).fetchall()}
    out = []
    for g in chosen:
        members = [Member(shas[int(ids[p])], int(ids[p]), p in found.flipped) for p in g]
        out.append(sorted(members, key=lambda m: m.sha256))
    return out


def group_of_nodes(conn: psycopg.Connection, threshold: int) -> dict[int, str]:
    """node id → its group's name, the least sha256 (hex) of its members, for every hashed image
    in a group (datasets: a name from the content, the same in any database)."""
    out: dict[int, str] = {}
    for g in groups(conn, threshold):
        name = min(m.sha256 for m in g)
        out.update((m.node_id, name) for m in g)
    return out


def near_of(conn: psycopg.Connection, sha256_hex: str, threshold: int = DEFAULT_THRESHOLD,
            limit: int | None = None) -> list[tuple[str, int, bool]]:
    """The images within `threshold` of one (not itself, none deleted), nearest first: (sha256,
    distance, through its mirror); `limit`: the nearest so many. Looked up in PostgreSQL by the
    indexed 16-bit quarters of pHash and of the mirror's pHash (migrations 015, 016) — each
    quarter's keys within floor(t/4) bits of the image's: others' pHash near its pHash and its
    mirror's, others' mirror near its pHash."""
    check_threshold(threshold)
    row = conn.execute("SELECT r.node_id, r.phash, r.phash_flip FROM result_image_hash r JOIN node n USING (node_id) "
                       "WHERE n.sha256 = %s", [bytes.fromhex(sha256_hex)]).fetchone()
    if row is None:
        return []
    node_id, p, f = row
    r = threshold // 4
    best: dict[str, tuple[int, bool]] = {}
    # others' pHash near this one's pHash, near its mirror's, and others' mirrors near this pHash:
    # mirroring is not exactly symmetric for pHash, and `groups` compares all three ways
    for col, value, mirrored in (("phash", p, False), ("phash", f, True), ("phash_flip", p, True)):
        u = value & ((1 << 64) - 1)
        quarters = [[(((u >> shift) & 0xFFFF) ^ m) for m in _masks(16, r)] for shift in (48, 32, 16, 0)]
        c = sql.Identifier(col)
        rows = conn.execute(sql.SQL(
            "SELECT encode(n.sha256, 'hex'), bit_count((r.{c} # %(v)s)::bit(64)) AS d FROM result_image_hash r "
            "JOIN node n USING (node_id) JOIN physical_content pc USING (node_id) "
            "WHERE NOT pc.is_deleted AND r.node_id <> %(me)s AND (((r.{c} >> 48) & 65535) = ANY(%(q0)s) "
            "OR ((r.{c} >> 32) & 65535) = ANY(%(q1)s) OR ((r.{c} >> 16) & 65535) = ANY(%(q2)s) "
            "OR (r.{c} & 65535) = ANY(%(q3)s)) AND bit_count((r.{c} # %(v)s)::bit(64)) <= %(t)s "
            "ORDER BY 2, 1 LIMIT %(limit)s").format(c=c),
            {"v": value, "me": node_id, "t": threshold, "limit": limit,
             **{f"q{i}": q for i, q in enumerate(quarters)}}).fetchall()
        for sha, d in rows:
            if sha not in best or (d, mirrored) < best[sha]:
                best[sha] = (int(d), mirrored)
    return sorted(((s, d, m) for s, (d, m) in best.items()), key=lambda x: (x[1], x[0]))[:limit]
