"""Where a new shard's replicas go: distinct disks, weighted by free space and queue.

Like mergerfs' `pfrd` (and CRUSH weights), a disk is picked with probability
proportional to its free space, so a 4 TB disk takes about twice the new data of a 2 TB
one and no disk fills first; the weight is divided by the disk's current queue (shards
this process is writing there) so one batch spreads over the disks instead of landing on
one. Disks that cannot hold a whole shard are not eligible — besides what the shards this
process has open there may still append until full (`Candidate.promised`), so shards open at
once never outgrow a disk's free space between them.

A writer keeping several shards open at once (hoardfs.fsd.io.spread) passes its open sets as
`spread`: each pick is then among the eligible disks with the fewest open shards and, of
those, the fewest open sets shared with the disks already picked — so the sets cover every
disk and differ from each other — still weighted by free space among equals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence, Set
from dataclasses import dataclass

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes


@dataclass(frozen=True)
class Candidate:
    uuid: str
    label: str
    free_bytes: int
    queue: int = 0  # shards being written there now
    usable: bool = True
    why_not: str = ""
    copies: int = 1  # what one replica here counts as toward a target (an S3 disk's `copies`)
    #: of `free_bytes`, what the shards this process has open there may still append until
    #: full (hoardfs.fsd.store.Store.open_bytes): a new shard is placed only beside that
    promised: int = 0

    @property
    def room(self) -> int:
        """What a new shard may take here: the free space the open shards leave."""
        return self.free_bytes - self.promised


class NoSpace(HoardError):
    exit_code = ExitCode.NO_SPACE


def choose(cands: list[Candidate], n: int, need_bytes: int, rng: random.Random | None = None,
           exclude: Set[str] = frozenset(), why_excluded: str = "excluded after an error",
           spread: Sequence[Set[str]] | None = None) -> list[Candidate]:
    """Pick `n` distinct disks that can each take `need_bytes`; NoSpace names them all otherwise.
    `why_excluded` says why the `exclude` disks are out (an error, or holding a copy already);
    `spread`: the disk sets of the caller's other open shards (see the module's docstring)."""
    rng = rng or random.Random()
    eligible = [c for c in cands if c.usable and c.uuid not in exclude and c.room >= need_bytes]
    if len(eligible) < n:
        raise NoSpace(
            f"need {n} disks with {fmt_bytes(need_bytes)} free for a new shard, only {len(eligible)} can take it: "
            + ", ".join(_describe(c, need_bytes, exclude, why_excluded) for c in cands)
            + "; add a disk (`hoard disks add`), free space (`hoard gc`) or lower store.write_ack"
        )
    chosen: list[Candidate] = []
    pool = list(eligible)
    for _ in range(n):
        among = pool if spread is None else _least_shared(pool, chosen, spread)
        weights = [c.room / (1 + c.queue) for c in among]
        pick = among[rng.choices(range(len(among)), weights=weights)[0]]
        pool.remove(pick)
        chosen.append(pick)
    return chosen


def _least_shared(pool: list[Candidate], chosen: list[Candidate], sets: Sequence[Set[str]]) -> list[Candidate]:
    """The candidates with the fewest open shards, and of those the fewest open sets that hold
    every disk already chosen as well."""
    picked = {c.uuid for c in chosen}

    def rank(c: Candidate) -> tuple[int, int]:
        return c.queue, sum(1 for s in sets if c.uuid in s and picked <= s) if picked else 0

    best = min(map(rank, pool))
    return [c for c in pool if rank(c) == best]


def _describe(c: Candidate, need: int, exclude: Set[str], why_excluded: str) -> str:
    if not c.usable:
        return f"{c.label} {c.why_not or 'unusable'}"
    if c.uuid in exclude:
        return f"{c.label} {why_excluded}"
    held = f", {fmt_bytes(c.promised)} of it kept for the shards open there" if c.promised else ""
    return f"{c.label} {fmt_bytes(c.free_bytes)} free{held}" + (" (too little)" if c.room < need else "")


@dataclass(frozen=True)
class Need:
    """`copies` more copies of `size` bytes, on distinct disks other than `holding` (a disk
    whose replica counts as several — an S3 disk's `copies` — gives that many)."""

    size: int
    copies: int
    holding: frozenset[str] = frozenset()
    what: str = ""


def simulate(cands: list[Candidate], needs: list[Need], slack: int = 0) -> tuple[dict[str, int], list[Need]]:
    """Place every need on paper before anything is written: biggest first, each copy on the
    distinct eligible disks with the most room left (`slack` bytes per disk stay free).
    Returns the bytes each disk would take, and the needs that would not fit — so a job can
    refuse (or report) up front instead of failing half way with disks full."""
    room = {c.uuid: c.free_bytes - slack for c in cands if c.usable}
    weight = {c.uuid: c.copies for c in cands}
    taken: dict[str, int] = {}
    unplaced = []
    for need in sorted(needs, key=lambda n: -n.size):
        pool = sorted((u for u in room if u not in need.holding and room[u] >= need.size), key=lambda u: -room[u])
        chosen, got = [], 0
        for u in pool:
            if got >= need.copies:
                break
            chosen.append(u)
            got += weight[u]
        if got < need.copies:
            unplaced.append(need)
            continue
        for u in chosen:
            room[u] -= need.size
            taken[u] = taken.get(u, 0) + need.size
    return taken, unplaced


def space_report(cands: list[Candidate], unplaced: list[Need], slack: int = 0) -> str:
    """One line: what does not fit, and every disk's room."""
    first = unplaced[0]
    disks = ", ".join(f"{c.label} {fmt_bytes(max(0, c.free_bytes - slack))}" if c.usable else f"{c.label} {c.why_not}"
                      for c in cands)
    return (f"{len(unplaced)} shards cannot get their copies on distinct disks (e.g. {first.what or 'a shard'}: "
            f"{first.copies} × {fmt_bytes(first.size)}); room per disk{f' after {fmt_bytes(slack)} slack' if slack else ''}: "
            f"{disks}")
