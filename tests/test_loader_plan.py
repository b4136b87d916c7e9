"""The epoch's plan kept in arrays gives what the plan of lists and tuples gave — the same
sequence, runs, records and run of each sample — so a state saved before resumes the same
sequence, and the plan of a large dataset keeps a few bytes a sample. The reference below is
that plan of lists, kept as the oracle."""

from __future__ import annotations

import json
import pickle
import random
from collections import deque
from typing import Any

import pytest

from hoardfs.datasets import card, loader
from hoardfs.datasets.loader import _rng, plan_shas
from hoardfs.fsd.core.entries import ObjectLoc
from hoardfs.fsd.outputs.runs import Rec, Run


def _reference(shas: list[bytes], locs: dict[bytes, Any], manifest_sha: str, split: str | None, seed: int,
               epoch: int, buffer: int, lanes: int, run_bytes: int, buffer_bytes: int = 0) -> tuple:
    # 1. each shard's records in offset order, cut into runs of at most `run_bytes` (a record
    # at least): every sample placed as (shard, offset, its number), sorted once
    placed = []
    get = locs.get
    for i, sha in enumerate(shas):
        loc = get(sha)
        if loc is not None:
            placed.append((loc.shard_id, loc.offset, i))
    placed.sort()
    runs: list[Run] = []
    run_samples: list[list[int]] = []
    per_shard: list[list[int]] = []  # the run numbers of each shard, offset order
    run_of = [-1] * len(shas)
    shard = b""  # (no shard id is empty)
    last = -1  # the offset of the run's last record
    size = 0
    recs: list[Rec] = []
    members: list[int] = []
    for shard_id, offset, i in placed:
        if shard_id == shard and offset == last:  # (the same record again: a duplicate sample)
            members.append(i)
            run_of[i] = len(runs)
            continue
        length = locs[shas[i]].length
        if shard_id != shard or size + length > run_bytes:
            if recs:
                runs.append(Run(shard, recs))
                run_samples.append(members)
            if shard_id != shard:
                per_shard.append([])
                shard = shard_id
            per_shard[-1].append(len(runs))
            recs, members, size = [], [], 0
        recs.append(Rec(shas[i], offset, length))
        members.append(i)
        run_of[i] = len(runs)
        size += length
        last = offset
    if recs:
        runs.append(Run(shard, recs))
        run_samples.append(members)
    # 2. a random merge of the shards' run sequences: each shard's runs stay in offset order
    tickets = [k for k, mine in enumerate(per_shard) for _ in mine]
    _rng(manifest_sha, split, seed, epoch, "runs").shuffle(tickets)
    nth = [0] * len(per_shard)
    order = []
    for k in tickets:
        order.append(per_shard[k][nth[k]])
        nth[k] += 1
    runs = [runs[r] for r in order]
    run_samples = [run_samples[r] for r in order]
    renumber = {old: new for new, old in enumerate(order)}
    run_of = [renumber[r] if r >= 0 else -1 for r in run_of]
    # 3. lanes: `lanes` runs open at once, one sample each in turn
    pre: list[int] = []
    slots: list[deque[int]] = []
    nxt = 0
    while nxt < len(run_samples) or slots:
        while len(slots) < max(1, lanes) and nxt < len(run_samples):
            slots.append(deque(run_samples[nxt]))
            nxt += 1
        for q in slots:
            pre.append(q.popleft())
        slots = [q for q in slots if q]
    # 4. the shuffle buffer: `buffer` samples, at most `buffer_bytes` of them (0: no bound)
    rng = _rng(manifest_sha, split, seed, epoch, "buffer")
    post: list[int] = []
    buf: list[int] = []
    size_b = max(1, buffer)
    for i in pre:
        if buffer_bytes and locs[shas[i]].length > buffer_bytes:  # (larger than the buffer: passes through)
            post.append(i)
            continue
        buf.append(i)
        while len(buf) >= size_b or (buffer_bytes and sum(locs[shas[k]].length for k in buf) > buffer_bytes):
            j = rng.randrange(len(buf))
            post.append(buf[j])
            buf[j] = buf[-1]
            buf.pop()
    rng.shuffle(buf)
    post.extend(buf)
    return runs, run_samples, run_of, post



def _world(seed: int) -> tuple[list[bytes], dict[bytes, ObjectLoc]]:
    """Samples over a few shards: records of random sizes, some samples the same object (a
    record's duplicates, not next to each other), some placed nowhere."""
    rng = random.Random(seed)
    n = rng.randrange(1, 3000)
    objects = [rng.randbytes(32) for _ in range(max(1, n * 4 // 5))]
    shas = [rng.choice(objects) if rng.random() < 0.2 else rng.randbytes(32) for _ in range(n)]
    shards = [rng.randbytes(16) for _ in range(rng.randrange(1, 9))]
    locs, at = {}, {s: 0 for s in shards}
    for sha in shas:
        if sha in locs or rng.random() < 0.03:
            continue
        shard = rng.choice(shards)
        length = rng.randrange(1, 70_000)
        locs[sha] = ObjectLoc(shard, at[shard] + 64, length)
        at[shard] += 64 + length
    return shas, locs


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_in_arrays_is_the_plan_of_lists(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any samples, shards, duplicates, unplaced samples, run sizes, lanes and buffers, the places
    looked up in pieces of any size: the sequence, each run's shard, records and samples, and
    each sample's run are the reference's."""
    shas, locs = _world(seed)
    rng = random.Random(-seed)
    monkeypatch.setattr(loader, "LOCATE", rng.choice([1, 7, 1000, loader.LOCATE]))
    args = ("m" * 64, rng.choice(["train", None]), rng.randrange(100), rng.randrange(3), rng.choice([1, 7, 64, 4096]),
            rng.randrange(1, 10), rng.choice([1, 50_000, 300_000, 8 << 20]), rng.choice([0, 1, 100_000, 2 << 20]))
    runs, run_samples, run_of, post = _reference(shas, locs, *args)
    p = plan_shas(shas, lambda some: {s: locs[s] for s in some if s in locs}, *args)
    assert list(p.post) == post and list(p.run_of) == run_of
    assert [list(r) for r in p.run_samples] == run_samples
    assert [(r.shard_id, r.records) for r in p.runs] == [(r.shard_id, r.records) for r in runs]
    assert [p.size(r) for r in range(len(runs))] == [r.size for r in runs]


def test_a_buffer_bounded_in_bytes_holds_no_more_and_none_is_the_old_sequence() -> None:
    """A shuffle buffer bounded in bytes holds at most that many of its samples' bytes, a sample
    larger than the bound passing through alone (as it comes, the buffer left as it is);
    `buffer_bytes=0` bounds it by count alone — the sequence a state saved without
    `buffer_bytes` resumes (`_state_args`)."""
    shas, locs = _world(5)
    base = ("m" * 64, None, 3, 0, 4096, 3, 300_000)
    bounded = plan_shas(shas, locs, *base, 60_000)
    unbounded = plan_shas(shas, locs, *base, 0)
    assert sorted(bounded.post) == sorted(unbounded.post) and list(bounded.post) != list(unbounded.post)
    assert list(unbounded.post) == _reference(shas, locs, *base)[3]
    # the buffer's bytes replayed from the lanes' sequence: at most the bound after each step
    pre = _reference(shas, locs, *base[:4], 1, base[5], base[6])[3]  # (a buffer of one: the lanes' sequence)
    held, out, bytes_in = set(), iter(bounded.post), 0
    length = {i: locs[shas[i]].length for i in pre}
    assert any(n > 60_000 for n in length.values())
    for i in pre:
        if length[i] > 60_000:
            assert next(out) == i  # (through alone, as it comes)
            continue
        held.add(i)
        bytes_in += length[i]
        while len(held) >= 4096 or bytes_in > 60_000:
            k = next(out)
            held.remove(k)
            bytes_in -= length[k]
        assert bytes_in <= 60_000
    assert loader._state_args({"state": 1, "dataset": "d@1", "split": None, "seed": 0, "epoch": 0,
                               "position": 0})["buffer_bytes"] == 0


@pytest.mark.parametrize("seed", range(6))
def test_places_looked_up_early_for_the_whole_manifest_plan_a_split_as_its_own(seed: int) -> None:
    """The places of every manifest sample, looked up in another order (shards numbered
    otherwise) and cut to a split's samples (`_located_of`), give the plan the split's own
    lookups give."""
    shas, locs = _world(seed)
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(shas)), rng.randrange(len(shas) + 1)))
    backwards = shas[::-1]
    ids, shard, offset, length = loader._located(backwards, lambda some: {s: locs[s] for s in some if s in locs})
    every = (ids, shard[::-1], offset[::-1], length[::-1])  # (sample i's places, the shards numbered backwards)
    mine = [shas[k] for k in keep]
    args = ("m" * 64, "train", 3, 1, 64, 4, 300_000, 100_000)
    early = plan_shas(mine, {}, *args, loader._located_of(every, keep))
    own = plan_shas(mine, locs, *args)
    assert list(early.post) == list(own.post) and list(early.run_of) == list(own.run_of)
    assert [(r.shard_id, r.records) for r in early.runs] == [(r.shard_id, r.records) for r in own.runs]


def test_the_places_of_all_samples_in_one_mapping_plan_as_before() -> None:
    """`plan_shas` still takes the places of all the samples as one mapping (sha → ObjectLoc), as
    `plan` does: the same plan as the reference's, not a TypeError."""
    shas, locs = _world(3)
    args = ("m" * 64, "train", 7, 1, 64, 4, 300_000, loader.BUFFER_BYTES)
    runs, run_samples, run_of, post = _reference(shas, locs, *args)
    p = plan_shas(shas, locs, *args)
    assert list(p.post) == post and list(p.run_of) == run_of
    assert [(r.shard_id, r.records) for r in p.runs] == [(r.shard_id, r.records) for r in runs]


def test_the_sha256s_view_is_the_list_it_stands_for() -> None:
    """`Samples.sha256s` (a loader's `shas`) reads as the list `Samples.shas()` gives: each index
    (negative too), slice (any step), iteration, reversal, pickling — and it compares equal to
    that list and to a view of the same bytes, unequal to another order."""
    rng = random.Random(11)
    shas = [rng.randbytes(32) for _ in range(23)]
    view = card.Shas(b"".join(shas))
    assert len(view) == len(shas) and list(view) == shas and list(reversed(view)) == shas[::-1]
    for i in range(-len(shas), len(shas)):
        assert view[i] == shas[i]
    for i in (len(shas), -len(shas) - 1):
        with pytest.raises(IndexError):
            view[i]
    for a in (None, -30, -5, 0, 3, 22, 40):
        for b in (None, -30, -1, 0, 4, 23, 40):
            for step in (None, 1, 2, -1, -3):
                assert list(view[a:b:step]) == shas[a:b:step], (a, b, step)
    assert view == shas and shas == view and not view != shas
    assert view == card.Shas(b"".join(shas)) and hash(view) == hash(card.Shas(b"".join(shas)))
    assert view != shas[::-1] and view != shas[:-1] and view != tuple(shas)
    assert pickle.loads(pickle.dumps(view)) == shas
    samples = card.Samples.of_manifest(b"".join(
        json.dumps({"key": f"k{k}", "sha256": s.hex(), "split": "train", "path": f"p{k}", "node_id": k}).encode() + b"\n"
        for k, s in enumerate(shas)))
    assert samples.sha256s == samples.shas() == shas
