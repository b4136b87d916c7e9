"""Randomised faults with global invariants (tests/chaos/harness.py says what is checked).

Short form (in `make test`, so in CI): CHAOS_SEEDS seeds (default 1, seed 0: a power world) of
CHAOS_STEPS steps and the REGRESSION_SEEDS — CI has 90 minutes and each seed takes ~4-5 of them;
the breadth is the long form's (make chaos, 200 seeds).
Long form: `make chaos SEEDS=200` (seeds SEED0 … SEED0+SEEDS-1). One seed: CHAOS_SEED=N.
CHAOS_LOG=FILE appends each seed's commands and fault notes to FILE, passing or not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.chaos.harness import InvariantViolation, Step, World, lab_profiles, power_world

pytestmark = pytest.mark.chaos  # the tier; its worlds are built on the disk lab


#: seeds of the long form that once found a violation, run by the short form too (CI):
#: 139 — Redis stopped while `hoard worker --burst` ran a job: RQ printed a traceback
REGRESSION_SEEDS = (139,)


def _seeds() -> list[int]:
    if os.environ.get("CHAOS_SEED"):
        return [int(os.environ["CHAOS_SEED"])]
    first = int(os.environ.get("CHAOS_SEED0", "0"))
    seeds = list(range(first, first + int(os.environ.get("CHAOS_SEEDS", "1"))))
    if "CHAOS_SEED0" not in os.environ:  # the short form
        seeds += [s for s in REGRESSION_SEEDS if s not in seeds]
    return seeds


def _report(entry: dict) -> None:
    """One line of the long form's tally (make chaos: CHAOS_REPORT), a pass or a failure."""
    if os.environ.get("CHAOS_REPORT"):
        with open(os.environ["CHAOS_REPORT"], "a") as f:
            f.write(json.dumps(entry) + "\n")


def _failed(world: World, e: InvariantViolation, history: list[str]) -> None:
    text = (f"chaos seed {world.seed}: {e}\n\nsteps:\n" + "\n".join(history) + "\n\ncommands:\n"
            + "\n".join(world.log[-40:]) + f"\n\nreplay: {world.replay_hint()}")
    # written now: a long run stopped before pytest's summary keeps what failed
    _report({"seed": world.seed, "power": world.power, "failed": text})
    pytest.fail(text, pytrace=False)


@pytest.mark.timeout(1800)
# faults make the commands warn (disk errors, set-aside replicas, …) by design: the invariants,
# not the absence of warnings, are what a chaos run checks
@pytest.mark.expect_log(r".", optional=True)
@pytest.mark.parametrize("seed", _seeds())
def test_chaos(seed: int, lab_factory, tmp_path: Path) -> None:
    """One seed: a planned run of workloads with faults; every invariant holds after every step."""
    lab = lab_factory(lab_profiles(seed), throttle=False, direct_io=power_world(seed))
    steps = int(os.environ.get("CHAOS_STEPS", "6"))
    world = World(lab, tmp_path, seed)
    try:
        world.init()  # its own PostgreSQL and Redis: the faults stop them
        done = []
        for step in world.plan(steps):
            try:
                world.run(step)
                world.check_invariants(step)
            except InvariantViolation as e:
                _failed(world, e, done + [f"{step}  ← failed"])
            done.append(str(step))
        if world.replace_all_due():
            last = Step(steps + 1, "replace every disk, lose the index, rebuild", "none", None, 0.0, 0)
            try:
                world.replace_all_then_rebuild()
                world.check_invariants(last)
            except InvariantViolation as e:
                _failed(world, e, done + [f"{last}  ← failed"])
            world.faults["replace every disk, then index rebuild"] = 1
        try:  # (last: the deletions take the batches' files out of what must read back)
            world.delete_every_batch()
        except InvariantViolation as e:
            _failed(world, e, done + [f"{Step(steps + 2, 'delete every batch', 'none', None, 0.0, 0)}  ← failed"])
        assert world.acked, "the run acknowledged nothing: it tested nothing"
        _report({"seed": seed, "power": world.power, "steps": steps, "acked": len(world.acked), "faults": world.faults,
                 "alarms": world.alarms, "followed": world.followed})
    finally:
        if os.environ.get("CHAOS_LOG"):  # every command and what the faults did, for a reader of a passing run
            with open(os.environ["CHAOS_LOG"], "a") as f:
                f.write(f"== seed {seed}\n" + "\n".join(world.log) + "\n")
        world.close()
