"""Groups → splits that honour the ratios (docs/datasets.md "Splits").

Each group is a point u in [0, 1): the first 8 bytes of sha256(salt, group key), which depend
on the salt and the group key only. The splits are intervals of [0, 1) in the ratios' order,
cut at thresholds t_1 < … < t_{k-1}; a group lies in the interval holding its u, so every
sample of a group lies in one split and the assignment is monotone in u.

The thresholds start at the cumulative ratios (a pure hash draw, as `split_of`). A boundary i
stays there while the samples below it, S(t_i), are within half the tolerance of its target
C_i = N·(r_1 + … + r_i); otherwise it moves to the cut between two groups (in u order) nearest
its base whose S is within that half — such a cut always exists, since S jumps by one group at a
time — leaving split i non-empty where a cut allows. With each cumulative count within tol/2,
every split's count is within tol of N·r, tol = max(2 % of N, the largest group). With few
groups those bands can ask more than the ratios need — every cut in a band may leave a split
empty where another cut fits — so when the cuts of the bands do not put every split within tol
of N·r, any cuts that do are taken, each as near its base as the others allow (`_fitting`); a
refusal then means no cut of the groups in u order fits.

Stability: a group moves only when a threshold passes its u. Data added where every boundary
at its base is within the band moves nothing; in general a boundary moves from one cut within
the band to the nearest cut within the new band, so at most tol + 2·(samples added) of the old
samples lie between its old and new place (tests/test_dataset_splits.py proves both with
hypothesis).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

#: the tolerance's floor: a split's share may be off its ratio by this much (2 percentage points)
SHARE_TOLERANCE = 0.02


def unit(salt: str, key: str) -> float:
    """The group's place in [0, 1): its salt and key only, so adding data never moves it."""
    return int.from_bytes(hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8], "big") / 2 ** 64


@dataclass
class Balance:
    """The assignment of groups to splits, and what a report or refusal needs of it."""
    splits: list[str]
    ratios: list[float]
    assign: dict[str, int]               # group key → split index
    counts: list[int]                    # samples per split (as assigned)
    total: int
    tolerance: float                     # samples: max(2 % of the total, the largest group)
    thresholds: list[float] = field(default_factory=list)  # the cuts in [0, 1)
    moved: int = 0                       # samples the rebalancing took off their hash draw's split

    def shares(self) -> list[float]:
        return [c / self.total if self.total else 0.0 for c in self.counts]



def report(splits: list[str], ratios: list[float], counts: list[int]) -> dict[str, dict[str, float | int]]:
    """split → its samples, its share and the ratio asked for (the dry run, the build's
    report, --json, dataset.json and the card show it)."""
    total = sum(counts)
    return {s: {"samples": n, "share": round(n / total, 4) if total else 0.0, "ratio": r}
            for s, n, r in zip(splits, counts, ratios, strict=True)}


def tolerance(total: int, largest: int) -> float:
    """Samples a split's count may be off its ratio: 2 % of the total or one (the largest) group."""
    return max(SHARE_TOLERANCE * total, float(largest))


def balance(ratios: dict[str, float], salt: str, sizes: dict[str, int]) -> Balance:
    """Each group (key → its samples) to a split, as the module says: a pure function of the
    ratios, the salt and the groups — not of their order."""
    names, rs = list(ratios), list(ratios.values())
    points = sorted((unit(salt, k), k, n) for k, n in sizes.items() if n > 0)
    total = sum(n for _, _, n in points)
    largest = max((n for _, _, n in points), default=0)
    tol = tolerance(total, largest)
    us = [u for u, _, _ in points]
    cum = [0]  # cum[j]: samples of the first j groups in u order
    for _, _, n in points:
        cum.append(cum[-1] + n)
    cuts: list[int] = []  # boundary i: the first cuts[i] groups lie below it
    accs: list[float] = []  # the cumulative ratios, summed as split_of sums them
    acc = 0.0
    for i in range(len(names) - 1):
        acc += rs[i]
        accs.append(acc)
        base = bisect_left(us, acc)  # the groups with u < acc: split_of's draw
        cuts.append(_cut(cum, base, total * acc, tol / 2, cuts[-1] if cuts else 0, len(points)))
    if not _fits(cum, cuts, total, rs, tol):  # the bands ask more than the ratios need: any cuts that fit
        cuts = _fitting(cum, cuts, total, rs, tol) or cuts
    thresholds = [us[c] if c < len(us) else 1.0 for c in cuts]
    assign: dict[str, int] = {}
    counts = [0] * len(names)
    moved = 0
    bounds = [0, *cuts, len(points)]
    for i in range(len(names)):
        for j in range(bounds[i], bounds[i + 1]):
            u, k, n = points[j]
            assign[k] = i
            counts[i] += n
            if bisect_right(accs, u) != i:  # split_of's answer for this group
                moved += n
    return Balance(names, rs, assign, counts, total, tol, thresholds, moved)


def _cut(cum: list[int], base: int, target: float, half: float, lo: int, n: int) -> int:
    """The cut (a number of groups in u order, ≥ lo: the boundary before stays below) for a
    boundary whose hash draw puts `base` groups below it. `base` when its count is within
    `half` of `target` and it leaves groups on both sides; else the cut nearest `base` that is
    both; else (no such cut within the band) the two-sided cut nearest the target; else the
    in-band cut nearest `base` (a split stays empty: the caller refuses it)."""
    base = max(base, lo)

    def in_band(j: int) -> bool:
        return abs(cum[j] - target) <= half

    def two_sided(j: int) -> bool:
        return lo < j < n

    if in_band(base) and two_sided(base):
        return base
    good = [j for j in range(lo + 1, n) if in_band(j)]
    if good:
        return min(good, key=lambda j: (abs(j - base), j))
    sided = list(range(lo + 1, n))
    if sided:
        return min(sided, key=lambda j: (abs(cum[j] - target), abs(j - base), j))
    banded = [j for j in range(lo, n + 1) if in_band(j)]
    return min(banded, key=lambda j: (abs(j - base), j)) if banded else base


def _counts(cum: list[int], cuts: list[int]) -> list[int]:
    bounds = [0, *cuts, len(cum) - 1]
    return [cum[bounds[i + 1]] - cum[bounds[i]] for i in range(len(bounds) - 1)]


def _fits(cum: list[int], cuts: list[int], total: int, rs: list[float], tol: float) -> bool:
    """Whether every split of these cuts is non-empty and within `tol` of its ratio (what
    hoardfs.datasets.plan.check_splits accepts)."""
    return all(n > 0 and abs(n - total * r) <= tol for n, r in zip(_counts(cum, cuts), rs, strict=True))


def _fitting(cum: list[int], near: list[int], total: int, rs: list[float], tol: float) -> list[int] | None:
    """Cuts (in u order) whose every split is non-empty and within `tol` of its ratio, each as
    near its place in `near` as the later ones allow — or None when no cuts fit. Asked only when
    the cuts within the bands do not fit: with few groups each cumulative count within tol/2
    of its target is more than the ratios need (a split may take a larger part of the tolerance
    when its neighbours take less). Forward, the cuts each boundary can reach with every split
    before it fitting; backward, from the last, the reachable cut nearest its place that the
    one after it can follow. O(splits × groups)."""
    n, k = len(cum) - 1, len(rs)
    if k < 2:
        return None

    def span(prev: int, r: float) -> tuple[int, int]:
        """The cuts c after `prev` whose split (prev, c] fits ratio r: c in [lo, hi)."""
        lo = bisect_left(cum, cum[prev] + max(1.0, total * r - tol), prev + 1)
        hi = bisect_right(cum, cum[prev] + total * r + tol, prev + 1)
        return lo, hi

    reach: list[list[bool]] = [[j == 0 for j in range(n + 1)]]
    for i in range(k - 1):
        diff = [0] * (n + 2)
        for prev in range(n + 1):
            if reach[i][prev]:
                lo, hi = span(prev, rs[i])
                if lo < hi:
                    diff[lo] += 1
                    diff[hi] -= 1
        row, run = [], 0
        for j in range(n + 1):
            run += diff[j]
            row.append(run > 0 and j < n)  # a split after this one needs a group
        reach.append(row)
    last = [j for j in range(n + 1) if reach[k - 1][j] and span(j, rs[k - 1])[0] <= n < span(j, rs[k - 1])[1]]
    if not last:
        return None
    cuts = [min(last, key=lambda j: (abs(j - near[k - 2]), j))]
    for i in range(k - 2, 0, -1):
        after = cuts[0]
        able = [j for j in range(n + 1) if reach[i][j] and span(j, rs[i])[0] <= after < span(j, rs[i])[1]]
        cuts.insert(0, min(able, key=lambda j: (abs(j - near[i - 1]), j)))
    return cuts if _fits(cum, cuts, total, rs, tol) else None
