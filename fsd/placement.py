"""Where a new shard's replicas go: distinct disks, weighted by free space and queue.

Like mergerfs' `pfrd` (and CRUSH weights), a disk is picked with probability
proportional to its free space, so a 4 TB disk takes about twice the new data of a 2 TB
one and no disk fills first; the weight is divided by the disk's current queue (shards
this process is writing there) so one batch spreads over the disks instead of landing on
one. Disks that cannot hold a whole shard are not eligible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fsd.errors import ExitCode, HoardError


@dataclass(frozen=True)
class Candidate:
    uuid: str
    label: str
    free_bytes: int
    queue: int = 0  # shards being written there now
    usable: bool = True
    why_not: str = ""


class NoSpace(HoardError):
    exit_code = ExitCode.NO_SPACE


def choose(cands: list[Candidate], n: int, need_bytes: int, rng: random.Random | None = None,
           exclude: set[str] = frozenset()) -> list[Candidate]:
    """Pick `n` distinct disks that can each take `need_bytes`; NoSpace names them all otherwise."""
    rng = rng or random.Random()
    eligible = [c for c in cands if c.usable and c.uuid not in exclude and c.free_bytes >= need_bytes]
    if len(eligible) < n:
        raise NoSpace(
            f"need {n} disks with {_mb(need_bytes)} free for a new shard, only {len(eligible)} can take it: "
            + ", ".join(_describe(c, need_bytes, exclude) for c in cands)
            + "; add a disk (`hoard disks add`), free space (`hoard gc`) or lower store.write_ack"
        )
    chosen: list[Candidate] = []
    pool = list(eligible)
    for _ in range(n):
        weights = [c.free_bytes / (1 + c.queue) for c in pool]
        pick = rng.choices(range(len(pool)), weights=weights)[0]
        chosen.append(pool.pop(pick))
    return chosen


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _describe(c: Candidate, need: int, exclude: set[str]) -> str:
    if not c.usable:
        return f"{c.label} {c.why_not or 'unusable'}"
    if c.uuid in exclude:
        return f"{c.label} excluded after an error"
    return f"{c.label} {_mb(c.free_bytes)} free" + (" (too little)" if c.free_bytes < need else "")
