"""marks.settle — the replay of the disks' marks logs object by object from a spill on disk
(bounded memory) — decides exactly what `replay(agree(logs))` decides from the
logs held in memory: the same marks, the same disputed records, each log's own replay."""

from __future__ import annotations

import random
from pathlib import Path

from hoardfs.fsd.core import marks
from hoardfs.fsd.core.spill import Spill


def _random_logs(root: Path, rng: random.Random, disks: int, shas: list[str]) -> list[Path]:
    """Marks logs of `disks` disks over a few objects: shared and lone records, snapshots,
    stamps that tie, a damaged line."""
    shared = []
    stamp = 1000
    for _ in range(rng.randint(5, 60)):
        stamp += rng.choice((0, 1, 1, 5))
        shared.append((stamp, rng.choice(marks.OPS), rng.choice(shas)))
    folders = []
    for d in range(disks):
        folder = root / f"d{d}"
        folder.mkdir()
        lines = []
        if rng.random() < 0.3:  # a snapshot first
            snap = rng.randint(900, 1100)
            tables = {t: sorted({bytes.fromhex(rng.choice(shas)) for _ in range(rng.randint(0, 4))}) for t in marks.TABLES}
            lines.append(marks.snapshot(snap, tables).decode())
        for rec in shared:
            if rng.random() < 0.8:  # a disk misses some records (failed, unplugged)
                lines.append(marks.line(*rec))
        for _ in range(rng.randint(0, 6)):  # records on this disk alone
            lines.append(marks.line(rng.randint(900, stamp + 10), rng.choice(marks.OPS), rng.choice(shas)))
        if rng.random() < 0.2:
            lines.append(marks.line(stamp, "delete", shas[0]).replace(" delete ", " delete ", 1)[:-3] + "zz\n")
        rng.shuffle(lines) if rng.random() < 0.2 else None
        (folder / "marks.log").write_text("".join(lines))
        folders.append(folder)
    return folders


def test_settle_decides_what_agree_and_replay_decide(tmp_path: Path) -> None:
    rng = random.Random(37)
    for case in range(300):
        root = tmp_path / f"c{case}"
        root.mkdir()
        shas = [f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 6))]
        folders = _random_logs(root, rng, rng.randint(1, 3), shas)
        held = {t: sorted({bytes.fromhex(rng.choice(shas)) for _ in range(rng.randint(0, 3))}) for t in marks.TABLES}
        whole = [marks.read_log(f, label=f.name) for f in folders]
        agreed, disputed = marks.agree(whole)
        want = marks.replay(agreed)
        with Spill(tmp_path, marks.SPILLED) as spill:
            logs = [marks.read_log(f, label=f.name, spill=spill, src=i) for i, f in enumerate(folders)]
            for t, shas_held in held.items():
                for sha in shas_held:
                    marks.hold(spill, t, sha)
            assert [(lg.begin, lg.end, lg.resets) for lg in logs] == [(lg.begin, lg.end, lg.resets) for lg in whole]
            disputes = marks.Disputes()
            got = {t: [] for t in marks.TABLES}
            got_held = {t: [] for t in marks.TABLES}
            alone = {i: {t: [] for t in marks.TABLES} for i in range(len(logs))}
            for sha, final, in_index, own in marks.settle(logs, spill, range(len(logs)), disputes):
                for t, on, h in zip(marks.TABLES, final, in_index, strict=True):
                    if on:
                        got[t].append(sha)
                    if h:
                        got_held[t].append(sha)
                for i, m in own.items():
                    for t, on in zip(marks.TABLES, m, strict=True):
                        if on:
                            alone[i][t].append(sha)
        assert got == want, case
        assert got_held == held, case
        assert disputes.count == len(disputed) and disputes.first == disputed[:20], case
        for i, lg in enumerate(whole):
            assert alone[i] == marks.replay(lg.records | {(t, marks.RESET, "0" * 64) for t in lg.resets}), case


def test_a_spilled_log_cut_at_a_stamp_keeps_the_later_stamps_apart(tmp_path: Path) -> None:
    """A judge reads the logs up to the index's stamp: later records (a put committing now)
    are counted as `late`, never replayed."""
    folder = tmp_path / "d0"
    folder.mkdir()
    sha = "ab" * 32
    (folder / "marks.log").write_text(marks.line(10, "root", sha) + marks.line(20, "unroot", sha))
    with Spill(tmp_path, marks.SPILLED) as spill:
        lg = marks.read_log(folder, spill=spill, src=0, cutoff=15)
        assert (lg.first, lg.last, lg.late, lg.after(15), lg.after(20)) == (10, 10, [20], 1, 0)
        assert [(s.hex(), f) for s, f, _, _ in marks.settle([lg.upto(15)], spill)] == [(sha, (False, False, True))]
