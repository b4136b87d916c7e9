"""Train from the store: a dataset version's samples read straight from the shards, in a
disk-friendly and well-mixed order that is a function of (the version's manifest, split, seed,
epoch) alone — so a run resumes by recomputing the order and skipping to its position.

    from hoardfs.loader import Loader
    ld = Loader("cats@3", split="train", seed=7, epoch=0)
    for sample in ld:              # {key, sha256, bytes, labels, split, class, …}
        ...
    state = ld.state_dict()        # JSON, < 1 KB: Loader.from_state_dict(state) goes on from there

The order of an epoch, computed before a byte is read (`plan`):

1. The split's samples are looked up in the index (for the first epoch, as the manifest was
   read: `Places`) and grouped by shard; each shard's records,
   in offset order, are cut into *runs* of at most `run_bytes` — the long sequential reads.
2. The runs of all shards are interleaved by a seeded shuffle that keeps each shard's runs in
   offset order (a random merge of the shards' sequences).
3. `lanes` runs are open at once and give one sample each in turn: neighbouring samples come
   from `lanes` different runs (shards, and disks: each run is read from the replica the
   batch planner's balance picks, hoardfs.fsd.outputs.runs).
4. A seeded shuffle buffer of `buffer` samples, and at most `buffer_bytes` of their bytes
   (0: no bound in bytes), mixes them further.

Disks and bandwidths decide only where a run is read from, never the order, so the same
version, split, seed and epoch give the same sequence on any machine. What does change it:
the samples' records moving (a gc compacting their shards, a sample freed) between a
`state_dict` and the resume. The rng is seeded from the manifest's sha256, not the version's
number: a dataset built twice from the same data yields the same order.

Worker split (`worker`, `workers`, `block`): the epoch's samples live when it starts (not
withheld, below), counted from `origin` (the position the split starts at: where the
iteration starts, kept in a worker's state), are dealt in blocks of `block`, block b to worker
`b % workers`; each worker yields only its own samples. Reading the store, a worker reads
every run holding one of them whole, as one process reads it (`_reads`): the workers' reads
of a local disk meet in the page cache, which has the disk read each byte once. A torch DataLoader taking
`block`-sized batches from its workers in turn puts them back in the sequence's order — the
same keys in the same order for any number of workers, samples deleted before the epoch
included (a block of a worker never has a hole its batch would fill from its next block).

Liveness and safety: a sample whose node the database marks deleted or black-listed when the
epoch starts, or that the store no longer holds or shows when its run is read or when its
position comes up (hoardfs.fsd.outputs.runs.live), is not read or not yielded (its position is
passed over). The store is opened read-only, sharing the `readers` lock (ingest, gc's swap and replication go on meanwhile; a record gc moved is
looked up again); nothing is written to the store or the SSD.

Memory: the shuffle buffer (at most `buffer_bytes`), the `lanes` runs being interleaved (at most `run_bytes` each), and
per disk the run being read plus `ahead` read ones (range buffers of `runs.Buffers`, each
sample copied out of them by the thread that hands it out; a run the page cache holds whole is
read by that thread itself, record by record, `runs.Later`) — whatever the dataset's size. Per sample:
the plan (a few integers and its record's place) and what `card.Samples` keeps — no manifest:
it is read at the start in verified pieces, and each sample's line read back from the store
as the sample is handed out (`_ManifestLines`), checked against the xxh3-64 taken then.

Where it reads (`source`, else hoard.toml's `[loader] source`): "store", the store's index and
disks as above; "s3" or "mount", on a host with neither the index nor the database, a version's
published locator and the S3 disks' sealed shards or a hoard mount (hoardfs.datasets.loader_remote):
the locator holds the places the index gave at publish time, so the plan — and the sequence, and
a state's resume — is the same.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import itertools
import logging
import os
import random
import sys
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Container, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from hoardfs.base import config, threads
from hoardfs.base.collect import give_back_freed, heap_frozen
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.datasets import api, card
from hoardfs.datasets import loader_remote as remote
from hoardfs.datasets.model import Sample
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import LocalDisk
from hoardfs.fsd.core.records import ITER_READ, checked_header, verify_record
from hoardfs.fsd.core.shardfmt import PayloadChecksumMismatch
from hoardfs.fsd.outputs import runs as runs_mod
from hoardfs.fsd.outputs.runs import Rec, Run
from hoardfs.fsd.store import Store
from hoardfs.sql import datasets as sqld

__all__ = ["Loader", "LoaderError", "Mix"]

log = logging.getLogger(__name__)

#: samples the shuffle buffer holds
BUFFER = 4096
#: the most bytes of samples the shuffle buffer holds (0: `buffer` samples, whatever their size —
#: the held bytes' peak then grows with the epoch: the more samples, the likelier a run of large
#: ones meets in the buffer)
BUFFER_BYTES = 128 << 20
#: runs open at once, taking turns
LANES = 8
#: the longest run of one shard read at once (a sequential read of up to this many bytes)
RUN_BYTES = 8 << 20
#: the window the mix is measured over (`stats()["mix"]`)
WINDOW = 1000
#: the free pages the C allocator kept are handed back (`give_back_freed`) each time this many
#: bytes of samples were handed out: the samples, freed by the training script in shuffled
#: order, leave pages between the ones the buffer holds, which would otherwise add up over a
#: long epoch (about a millisecond each time: twice a second at page-cache speed)
TRIM_BYTES = 256 << 20
#: the state's format: 2 for a loader whose buffer is bounded in bytes (`buffer_bytes`, which a
#: reader of format 1 would drop, resuming another sequence), else 1
STATE = 2
STATES = (1, 2)
#: where a loader reads (`[loader] source`; the constructor's `source`)
SOURCES = ("store", "s3", "mount")


class LoaderError(HoardError):
    exit_code = ExitCode.USAGE


def state_format(buffer_bytes: int) -> int:
    """The format of a state saved by a loader with this `buffer_bytes` (`STATE`)."""
    return STATE if buffer_bytes > 0 else 1


def refuse_given(kwargs: Mapping[str, Any], keys: Sequence[str], call: str) -> None:
    """LoaderError (one line) for the first of `keys` passed to `call` beside a state that gives it."""
    for k in keys:
        if k in kwargs:
            raise LoaderError(f"{call}({k}=…): the state gives it; pass the state alone")


def _state_args(state: Any) -> dict[str, Any]:
    """The constructor's arguments a state (`Loader.state_dict`) gives, or LoaderError (one
    line) for what is not one: the wrong format, a key missing, a name or split not a string."""
    if not isinstance(state, dict) or state.get("state") not in STATES:
        raise LoaderError(f"not a loader state (format {' or '.join(map(str, STATES))}): {str(state)[:80]!r}; pass what "
                          "Loader.state_dict() returned")
    missing = [k for k in ("dataset", "split", "seed", "epoch", "position") if k not in state]
    if missing:
        raise LoaderError(f"the loader state lacks {missing[0]!r}; pass what Loader.state_dict() returned")
    if not isinstance(state["dataset"], str) or not (state["split"] is None or isinstance(state["split"], str)):
        raise LoaderError(f"the loader state's dataset {state['dataset']!r} or split {state['split']!r} is not a "
                          "name; pass what Loader.state_dict() returned")
    if "manifest" in state and not isinstance(state["manifest"], str):
        raise LoaderError(f"the loader state's manifest {state['manifest']!r} is not a digest; pass what "
                          "Loader.state_dict() returned")
    out = {"ref": state["dataset"], "split": state["split"], "seed": state["seed"], "epoch": state["epoch"],
           "position": state["position"], "manifest": state.get("manifest")}
    # (a state without `buffer_bytes` was saved by a loader whose buffer had no bound in bytes)
    out["buffer_bytes"] = state.get("buffer_bytes", 0)
    out |= {k: state[k] for k in ("buffer", "lanes", "run_bytes", "worker", "workers", "block", "origin", "withheld")
            if k in state}
    return out


@dataclass
class Plan:
    """One epoch's order, in arrays — a few bytes a sample, no object a sample (as lists of
    tuples and ints a plan held ~0.2 KB a sample, and its making as much again).

    `post[k]`: the sample (an index into the split's samples) at position k. Run r (the plan's
    reading order) is the built run `order[r]` = b: of shard `shard_ids[run_shard[b]]`, its
    records `rec_at[b]`..`rec_at[b + 1]` (each: `rec_sample`, the first sample it holds — its
    sha256 the record's —, `rec_offset`, `rec_length`; offset order) and the samples it hands
    out `members[mem_at[b]:mem_at[b + 1]]` (record order, a sample per record and its
    duplicates), `run_size[b]` the bytes it reads (records and headers); `run_of[s]`: the run
    sample s is read in (-1: not in the store). `runs` and
    `run_samples` give each run as a Run and its samples, made as asked for."""
    shas: Sequence[bytes]
    shard_ids: list[bytes]
    order: array[int]
    run_shard: array[int]
    rec_at: array[int]
    rec_sample: array[int]
    rec_offset: array[int]
    rec_length: array[int]
    mem_at: array[int]
    members: array[int]
    run_of: array[int]
    run_size: array[int]
    #: makes `post` when it is first asked for (`_deal`: a whole epoch's reads start before it)
    deal: Callable[[], array[int]] | None = None
    _post: array[int] | None = None

    @property
    def post(self) -> array[int]:
        post, deal = self._post, self.deal
        if post is None:
            if deal is None:  # (dealt by another thread meanwhile: `_post` is set before `deal` is let go)
                assert self._post is not None
                return self._post
            post = deal()  # (two threads at once both deal: the same positions)
            self._post, self.deal = post, None
        return post

    def shard(self, r: int) -> bytes:
        return self.shard_ids[self.run_shard[self.order[r]]]

    def samples_of(self, r: int) -> array[int]:
        b = self.order[r]
        return self.members[self.mem_at[b]:self.mem_at[b + 1]]

    def records(self, r: int, only: Container[bytes] | None = None) -> list[Rec]:
        """Run r's records (those of sha256s in `only`)."""
        b, shas, sample, offset, length = self.order[r], self.shas, self.rec_sample, self.rec_offset, self.rec_length
        blob = getattr(shas, "blob", None)  # (`card.Shas`: sliced here, no call a record)
        recs = [Rec(shas[sample[k]] if blob is None else blob[32 * sample[k]:32 * sample[k] + 32], offset[k], length[k])
                for k in range(self.rec_at[b], self.rec_at[b + 1])]
        return recs if only is None else [rec for rec in recs if rec.sha in only]

    def size(self, r: int, only: Container[bytes] | None = None) -> int:
        """The bytes run r reads (of the records of sha256s in `only`): `Run.size` with no Run made."""
        b, shas = self.order[r], self.shas
        if only is None:
            return self.run_size[b]
        return sum(self.rec_length[k] + fmt.RECORD_HEADER_SIZE for k in range(self.rec_at[b], self.rec_at[b + 1])
                   if only is None or shas[self.rec_sample[k]] in only)

    @property
    def runs(self) -> Sequence[Run]:
        return _Runs(self, range(len(self.order)))

    @property
    def run_samples(self) -> Sequence[array[int]]:
        return _RunSamples(self)


class _RunSamples(Sequence["array[int]"]):
    def __init__(self, p: Plan) -> None:
        self.p = p

    def __len__(self) -> int:
        return len(self.p.order)

    def __getitem__(self, r: Any) -> Any:
        if isinstance(r, slice):
            return [self.p.samples_of(k) for k in range(*r.indices(len(self)))]
        return self.p.samples_of(range(len(self))[r])


class _Runs(Sequence[Run]):
    """Runs of a plan (`numbers`), each made as it is asked for: of run r the records of the
    sha256s `only(r)` gives (None: all), `keep(r)` its Run's `keep` — an epoch's reads hold no
    Rec a sample for the epoch. `shapes` gives each one's shard and size, no Run made
    (`hoardfs.fsd.outputs.runs.assign`)."""

    def __init__(self, p: Plan, numbers: Sequence[int], only: Callable[[int], set[bytes]] | None = None,
                 keep: Callable[[int], frozenset[bytes] | None] | None = None) -> None:
        self.p, self.numbers, self.only, self.keep = p, numbers, only, keep

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        r = self.numbers[j]
        only = self.only(r) if self.only is not None else None
        return Run(self.p.shard(r), self.p.records(r, only), self.keep(r) if self.keep is not None else None)

    def shapes(self) -> Iterator[tuple[bytes, int]]:
        for r in self.numbers:
            yield self.p.shard(r), self.p.size(r, self.only(r) if self.only is not None else None)

    def span(self, j: int) -> tuple[int, int]:
        """(offset, length) of the range run j's records lie in, headers included, no Rec made
        (`hoardfs.fsd.outputs.runs.extent`; of all its records: those it keeps lie within)."""
        p = self.p
        b = p.order[self.numbers[j]]
        first, last = p.rec_at[b], p.rec_at[b + 1] - 1
        a = p.rec_offset[first] - fmt.RECORD_HEADER_SIZE
        return a, p.rec_offset[last] + p.rec_length[last] - a


def _rng(manifest_sha: str, split: str | None, seed: int, epoch: int, what: str) -> random.Random:
    return random.Random(f"hoardfs.loader/{manifest_sha}/{split or '*'}/{seed}/{epoch}/{what}")


#: samples looked up at once in the index as a plan is made, and in the database as an epoch
#: starts (the places of all of them at once held ~0.3 KB a sample, freed again at once)
LOCATE = 1 << 13


def plan(samples: Sequence[Sample], locs: Mapping[bytes, Any], manifest_sha: str, split: str | None, seed: int,
         epoch: int, buffer: int = BUFFER, lanes: int = LANES, run_bytes: int = RUN_BYTES,
         buffer_bytes: int = BUFFER_BYTES) -> Plan:
    """The epoch's order (the module's steps 1–4) from the samples and their records'
    locations (sha → ObjectLoc); a sample without one is placed nowhere (never read)."""
    return plan_shas([bytes.fromhex(s.sha256) for s in samples], locs, manifest_sha, split, seed, epoch, buffer,
                     lanes, run_bytes, buffer_bytes)


def plan_shas(shas: Sequence[bytes],
              locate: Callable[[Sequence[bytes]], Mapping[bytes, Any]] | Mapping[bytes, Any], manifest_sha: str,
              split: str | None, seed: int, epoch: int, buffer: int = BUFFER, lanes: int = LANES,
              run_bytes: int = RUN_BYTES, buffer_bytes: int = BUFFER_BYTES, located: Located | None = None) -> Plan:
    """`plan` from the samples' sha256s (sample i's is `shas[i]`), `locate(some)` giving the
    places of `some` of them (LOCATE at a time) — or `locate` the places of all of them (sha →
    ObjectLoc), as `plan` takes them; `located`: the places already looked up (`Places`), which
    `locate` is then not asked. Built with the process's other objects out of the cyclic
    collector's walks (`heap_frozen`): the manifest's samples would otherwise be walked by every
    collection its objects set off."""
    if isinstance(locate, Mapping):
        locs = locate
        locate = lambda _some: locs  # noqa: E731
    with heap_frozen():
        return _plan(shas, located if located is not None else _located(shas, locate), manifest_sha, split, seed,
                     epoch, buffer, lanes, run_bytes, buffer_bytes)


#: each sample's record (`_located`): the shard ids, and a sample's shard (a number in them;
#: -1: not in the store), offset and length
Located = tuple[list[bytes], "array[int]", "array[int]", "array[int]"]


def _located(shas: Sequence[bytes], locate: Callable[[Sequence[bytes]], Mapping[bytes, Any]]) -> Located:
    """Each sample's record: its shard's number in the first list (-1: not in the store), its
    offset, its length."""
    out: Located = ([], array("i"), array("q"), array("q"))
    number: dict[bytes, int] = {}
    for a in range(0, len(shas), LOCATE):
        part = shas[a:a + LOCATE]
        locs = locate(part)
        _place(out, number, [locs.get(sha) for sha in part])
    return out


def _place(located: Located, number: dict[bytes, int], places: Iterable[Any]) -> None:
    """Append `places` (one for each sample in turn: its shard id, offset and length first — an
    ObjectLoc, a tuple of its fields (`Index.places_many`), a locator's place; None: not in the
    store) to `located`, numbering the shards in `number`
    (shard id → its place in `located`'s ids) as they come."""
    ids, shard, offset, length = located
    for loc in places:
        if loc is None:
            shard.append(-1)
            offset.append(0)
            length.append(0)
            continue
        sid, at, n = loc[0], loc[1], loc[2]
        k = number.get(sid)
        if k is None:
            k = number[sid] = len(ids)
            ids.append(sid)
        shard.append(k)
        offset.append(at)
        length.append(n)


def _place_all(store: Store, located: Located, number: dict[bytes, int], shas: bytes) -> None:
    """`_place` the samples of `shas` (32 bytes each, end to end), looked up in the index
    LOCATE at a time (`Index.places_many`)."""
    every = [shas[k:k + 32] for k in range(0, len(shas), 32)]
    for a in range(0, len(every), LOCATE):
        _place(located, number, store.index.places_many(every[a:a + LOCATE]))


class Places:
    """The places of a manifest's samples looked up in the index as its pieces are read
    (`card.Samples.of_pieces`'s `found`), on a thread of its own: the index is asked while the
    disks read the manifest, not after — the plan of the loader's first epoch then waits for no
    lookup (on lab4, the places of 100,000 samples took 0.3 s of a cold start's 1.5). A
    manifest read again from its start (another replica) starts them again."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="loader-places")
        self.todo: list[Any] = []
        self.got: Located = ([], array("i"), array("q"), array("q"))
        self.number: dict[bytes, int] = {}

    def found(self, first: int, shas: bytes) -> None:
        self.todo.append(self.pool.submit(self._look, first, shas))

    def _look(self, first: int, shas: bytes) -> None:
        if first == 0:  # (read again from the start)
            self.got, self.number = ([], array("i"), array("q"), array("q")), {}
        if first != len(self.got[1]):
            raise ValueError(f"manifest samples {first}… found after {len(self.got[1])}")
        _place_all(self.store, self.got, self.number, shas)

    def located(self, n: int) -> Located | None:
        """The places of the manifest's `n` samples, once looked up — None when a lookup failed
        or they are not `n` (the plan then looks them up itself)."""
        try:
            for f in self.todo:
                f.result()
        except Exception as e:  # (looked up again by the plan, which meets the same error)
            log.debug("loader: the early places were not used: %s", e)
            return None
        finally:
            self.pool.shutdown()
            self.todo = []
        return self.got if len(self.got[1]) == n else None

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _located_of(located: Located, keep: Sequence[int]) -> Located:
    """The places of the samples `keep` (their numbers in `located`'s samples)."""
    ids, shard, offset, length = located
    return (ids, array("i", (shard[k] for k in keep)), array("q", (offset[k] for k in keep)),
            array("q", (length[k] for k in keep)))


def _plan(shas: Sequence[bytes], located: Located, manifest_sha: str, split: str | None, seed: int, epoch: int,
          buffer: int, lanes: int, run_bytes: int, buffer_bytes: int) -> Plan:
    # 1. each shard's records (shards in id order) in offset order — a record's duplicate
    # samples in sample order (a stable sort of samples gathered in order) — cut into runs of at
    # most `run_bytes` (a record at least)
    n = len(shas)
    ids, shard_of, offset, length = located
    by_shard: list[array[int] | None] = [array("i") for _ in ids]
    for i in range(n):
        s = shard_of[i]
        if s >= 0:
            by_shard[s].append(i)  # type: ignore[union-attr]
    del shard_of
    run_shard, rec_at, mem_at = array("i"), array("q", [0]), array("q", [0])
    rec_sample, rec_offset, rec_length, members = array("i"), array("q"), array("q"), array("i")
    run_size = array("q")
    run_of = array("i", [-1]) * n
    per_shard: list[list[int]] = []  # the run numbers of each shard, offset order
    for s in sorted(range(len(ids)), key=ids.__getitem__):
        mine = sorted(by_shard[s], key=offset.__getitem__)  # type: ignore[arg-type]
        by_shard[s] = None
        runs_here: list[int] = []
        size, last = 0, -1  # the run's bytes, the offset of its last record
        for i in mine:
            at = offset[i]
            if runs_here and at == last:  # (the same record again: a duplicate sample)
                members.append(i)
                run_of[i] = len(run_shard) - 1
                continue
            n_bytes = length[i]
            if not runs_here or size + n_bytes > run_bytes:
                if runs_here:
                    rec_at.append(len(rec_sample))
                    mem_at.append(len(members))
                runs_here.append(len(run_shard))
                run_shard.append(s)
                run_size.append(0)
                size = 0
            rec_sample.append(i)
            rec_offset.append(at)
            rec_length.append(n_bytes)
            members.append(i)
            run_of[i] = len(run_shard) - 1
            size += n_bytes
            run_size[-1] += n_bytes + fmt.RECORD_HEADER_SIZE
            last = at
        if runs_here:
            rec_at.append(len(rec_sample))
            mem_at.append(len(members))
            per_shard.append(runs_here)
    del offset
    # 2. a random merge of the shards' run sequences: each shard's runs stay in offset order
    tickets = [k for k, mine_runs in enumerate(per_shard) for _ in mine_runs]
    _rng(manifest_sha, split, seed, epoch, "runs").shuffle(tickets)
    nth = [0] * len(per_shard)
    order = array("i")
    for k in tickets:
        order.append(per_shard[k][nth[k]])
        nth[k] += 1
    renumber = array("i", [0]) * len(order)
    for new, old in enumerate(order):
        renumber[old] = new
    for i in range(n):
        if run_of[i] >= 0:
            run_of[i] = renumber[run_of[i]]
    return Plan(shas, ids, order, run_shard, rec_at, rec_sample, rec_offset, rec_length, mem_at, members, run_of,
                run_size, lambda: _deal(order, mem_at, members, length, manifest_sha, split, seed, epoch, buffer, lanes,
                                        buffer_bytes))


def _deal(order: array[int], mem_at: array[int], members: array[int], length: array[int], manifest_sha: str,
          split: str | None, seed: int, epoch: int, buffer: int, lanes: int, buffer_bytes: int) -> array[int]:
    """The plan's positions (`Plan.post`): its runs' samples through the lanes and the shuffle buffer."""
    # 3. lanes: `lanes` runs open at once, one sample each in turn
    pre = array("i")
    slots: list[list[int]] = []  # [next, end] in `members` of each open run
    nxt = 0
    while nxt < len(order) or slots:
        while len(slots) < max(1, lanes) and nxt < len(order):
            b = order[nxt]
            slots.append([mem_at[b], mem_at[b + 1]])
            nxt += 1
        for q in slots:
            pre.append(members[q[0]])
            q[0] += 1
        slots = [q for q in slots if q[0] < q[1]]
    # 4. the shuffle buffer: a sample out (at random) for each one in once it holds `buffer`
    # samples, or as many as leave it holding at most `buffer_bytes` (a record's duplicates
    # counted as many times: each is held apart, `_epoch`); a sample larger than
    # `buffer_bytes` passes through alone
    rng = _rng(manifest_sha, split, seed, epoch, "buffer")
    post = array("i")
    buf: list[int] = []
    size_b = max(1, buffer)
    cap = buffer_bytes if buffer_bytes > 0 else -1
    held = 0
    for i in pre:
        if length[i] > cap >= 0:  # (more than the buffer holds: out as it comes, the buffer left as it is)
            post.append(i)
            continue
        buf.append(i)
        held += length[i]
        while len(buf) >= size_b or held > cap >= 0:
            j = rng.randrange(len(buf))
            out = buf[j]
            post.append(out)
            held -= length[out]
            buf[j] = buf[-1]
            buf.pop()
    del pre
    rng.shuffle(buf)
    post.extend(buf)
    return post


class Mix:
    """The mix of what was yielded, over every window of WINDOW consecutive samples: the fewest
    and the mean number of distinct shards, and the largest share of one shard. `add` notes a
    sample's shard (a few hundred nanoseconds: a loader adds every sample it hands out); the
    samples noted are counted FOLD at a time, in arrays (`_fold`), with the last window's worth
    before them — so memory stays bounded (under a MiB) whatever the epoch's length, and every
    window is counted once, whichever fold it ends in."""

    #: samples noted before they are counted (a fold's arrays: ~10 of this many 8-byte numbers)
    FOLD = 1 << 13

    def __init__(self, window: int = WINDOW, fold: int = FOLD) -> None:
        self.window, self.fold = window, fold
        self._number: dict[Any, int] = {}  # shard → its number in the folds
        self._noted = array("q")  # the shard numbers of the samples not counted yet
        self._tail = np.empty(0, np.int64)  # the last window - 1 samples counted
        self.windows = 0
        self.distinct_min: int | None = None
        self.distinct_sum = 0
        self.top_max = 0

    def add(self, shard: Any) -> None:
        number = self._number
        noted = self._noted
        noted.append(number.setdefault(shard, len(number)))
        if len(noted) >= self.fold:
            self._fold()

    def _fold(self) -> None:
        """Count the windows that end among the samples noted: with the samples before them
        that such windows reach back to (`_tail`), the distinct shards of the first window,
        then each next one's from the last's (a window moving on by one loses its first sample
        — and gains the next occurrence of that shard within it as a first occurrence — and
        gains its new last sample when its shard is not already in); the largest count of one
        shard in any of them, as the most occurrences of a shard within a window's length from
        any of its occurrences."""
        if not self._noted:
            return
        w = self.window
        seq = np.concatenate([self._tail, np.frombuffer(self._noted, np.int64)])
        self._noted = array("q")
        n = len(seq)
        first = max(w - 1, len(self._tail))  # the last sample of the first window not counted yet
        self._tail = seq[max(0, n - (w - 1)):].copy() if w > 1 else seq[:0].copy()
        if first >= n:
            return
        by_shard = np.argsort(seq, kind="stable")  # (each shard's samples in order)
        same = seq[by_shard[1:]] == seq[by_shard[:-1]]
        prev = np.full(n, -1, np.int64)  # the shard's sample before (-1: none)
        nxt = np.full(n, n, np.int64)  # the shard's sample after (n: none)
        prev[by_shard[1:][same]] = by_shard[:-1][same]
        nxt[by_shard[:-1][same]] = by_shard[1:][same]
        start = first - w + 1
        d0 = int(np.count_nonzero(prev[start:first + 1] < start))
        t = np.arange(first + 1, n)
        step = (nxt[t - w] <= t - 1).astype(np.int64) + (prev[t] <= t - w) - 1
        distinct = np.concatenate([[d0], d0 + np.cumsum(step)])
        self.windows += len(distinct)
        low = int(distinct.min())
        self.distinct_min = low if self.distinct_min is None else min(self.distinct_min, low)
        self.distinct_sum += int(distinct.sum())
        # each shard's samples, ordered by (shard, position): the occurrences within a window's
        # length from each one (from the first window's start on) are those before the first
        # key at or past its own plus the window
        keys = np.sort(seq * (n + w) + np.arange(n))
        at = np.flatnonzero(keys % (n + w) >= start)
        top = np.searchsorted(keys, keys[at] + w) - at
        self.top_max = max(self.top_max, int(top.max()))

    def report(self) -> dict[str, Any]:
        self._fold()
        if not self.windows:
            return {"window": self.window, "windows": 0}
        return {"window": self.window, "windows": self.windows, "distinct_shards_min": self.distinct_min,
                "distinct_shards_mean": round(self.distinct_sum / self.windows, 1),
                "largest_shard_share": round(self.top_max / self.window, 4)}


#: the store each process's loaders share, by index path: [store, users] (LMDB opens an index
#: once per process — a train and a val loader iterating at once share it; a forked DataLoader
#: worker opens its own: `_forked`)
_OPEN: dict[str, list[Any]] = {}
_OPEN_LOCK = threading.Lock()


def _forked() -> None:
    """In a child just forked: none of the parent's open stores (its copies are left unclosed:
    closing one would free the parent's LMDB reader slots) and a lock no thread holds (one the
    parent's threads held at the fork would stay held here for good)."""
    global _OPEN_LOCK
    _OPEN.clear()
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forked)

#: the descriptors of the readers of every manifest being read into the page cache
#: (`_ManifestLines.warm`; -1: closed), whatever became of their loaders, and the lock they are
#: opened and closed under — held across a fork: the child closes those its copies of the
#: readers (which do not run there) still held (`_warm_forked`)
_WARM_OWN: dict[int, list[int]] = {}
_WARM_FDS = threading.Lock()


def _warm_forked() -> None:
    _WARM_FDS.release()
    for own in _WARM_OWN.values():
        _close_warm(own)
    _WARM_OWN.clear()


def _close_warm(own: list[int], only: int | None = None) -> None:
    """Close the warm readers' descriptors still open (-1: closed), or reader `only`'s."""
    for k, fd in enumerate(own):
        if fd >= 0 and only in (None, k):
            own[k] = -1
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(before=_WARM_FDS.acquire, after_in_parent=_WARM_FDS.release, after_in_child=_warm_forked)


@contextlib.contextmanager
def _shared_store(cfg: config.Settings) -> Iterator[Store]:
    """The store opened read-only under the `readers` lock, shared by the process's loaders
    while any uses it, closed after the last."""
    key = str(cfg.index_dir)
    with _OPEN_LOCK:
        got = _OPEN.get(key)
        if got is None:
            try:
                got = [Store.open(cfg, writable=False, lock="readers", what="a training loader"), 0]
            except PermissionError as e:  # a user who may only read: the lock files are written
                raise LoaderError(f"this user cannot open the store for a training loader ({e.strerror}: "
                                  f"{e.filename or e}): it shares the `readers` lock and LMDB's reader table, "
                                  "both written — run it as the store's user or a member of its group "
                                  "(docs/security.md)", ExitCode.UNAVAILABLE) from None
            _OPEN[key] = got
        got[1] += 1
    try:
        yield got[0]
    finally:
        with _OPEN_LOCK:
            got[1] -= 1
            if got[1] == 0 and _OPEN.get(key) is got:
                del _OPEN[key]
                # (not in the interpreter's teardown: its readers may be frozen mid-read,
                # `join_all`; a store of the process this one was forked from is not in `_OPEN`)
                if not sys.is_finalizing():
                    got[0].close()


class _StoreSource:
    """The store's answers to what a loader asks of where it reads (hoardfs.datasets.loader_remote
    answers the same from a published locator)."""

    def __init__(self, ld: Loader, store: Store) -> None:
        self.ld, self.store = ld, store
        self._since: int | None = None  # the index's last write the reads' start saw (Index.snapshot)
        self._generation = store.index.generation  # (asked once a sample handed out)

    def locs(self, shas: Sequence[bytes]) -> dict[bytes, Any]:
        return self.store.index.lookup_many(shas)

    def withheld(self, shas: Sequence[bytes]) -> set[bytes]:
        """The samples' objects the database marks deleted or black-listed, or the store does
        not show (hidden, tombstoned) or no longer holds."""
        assert self.ld.cfg is not None
        out: set[bytes] = set()
        with api._connect(self.ld.cfg, f"read dataset {self.ld.ref}") as conn, \
                api._db_errors(f"{self.ld.ref} was read"):
            marked = api.withheld_marked(conn, len(shas))
            for a in range(0, len(shas), LOCATE):  # (a set of all of them at once: ~0.1 KB a sample)
                out |= api.withheld(conn, self.store, shas[a:a + LOCATE], marked)
        return out

    def read_runs(self, runs: Sequence[Run], ahead: int) -> Generator[runs_mod.RunRead, None, None]:
        self._since = self.store.index.snapshot()  # (before any of them is read)
        # (a worker but the first of several takes each local range from the page cache as the
        # first reads it off the disk: the disk sees one process's reads)
        ld = self.ld
        follow = runs_mod.Follow() if ld.workers > 1 and ld.worker != 0 else None
        return runs_mod.read_runs(self.store, runs, ahead, follow, lead=ld.workers > 1 and ld.worker == 0, later=True)

    def since(self) -> tuple[Callable[[], int], int | None]:
        """The index's last write (`Index.generation`) and the one the reads began from (the
        snapshot `read_runs` took; None before): while the two are equal, every sample read is
        still held and shown — each run's records were asked in that snapshot or a later one,
        as it was read (`runs.read_run`) — one look a sample, not three lookups."""
        return self._generation, self._since

    def live(self, sha: bytes) -> bool:
        """Whether a sample read by `read_runs` is still held and shown, asked of the index (the
        loader asks only once `since` no longer says so: an ingest, a delete, a gc wrote)."""
        return runs_mod.live(self.store, sha)


#: a manifest line reader looks whether the replica file it reads off is still linked once in
#: this many lines (an fstat costs a line's read again)
LOOK_LINKS = 1024


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _bad_manifest_replica(sha: bytes, what: str = "manifest") -> Callable[[Any, Any, Exception], None]:
    """`Store.from_replicas`'s report of a manifest (or loader index) replica that fails or does
    not check: logged only — a reader queues no repair and marks no disk, as for a record."""
    def bad(disk: Any, meta: Any, e: Exception) -> None:
        log.warning("loader: %s %s… unreadable on shard %s on %s: %s; trying another replica",
                    what, sha.hex()[:12], meta.hex, disk.label, e)
    return bad


def _local_replicas(store: Store, sha: bytes) -> tuple[Any, Any, list[LocalDisk]] | None:
    """The object's record (its index entry), its shard, and the shard's local replicas in the
    store's order of choice — None when the index does not hold it (the caller's read says so)."""
    loc = store.index.lookup(sha)
    meta = store.index.get_shard(loc.shard_id) if loc is not None else None
    if loc is None or meta is None:
        return None
    return loc, meta, [d for d in store.replica_order(meta) if isinstance(d, LocalDisk)]


def _read_object(store: Store, sha: bytes, what: str) -> bytes:
    """An object read whole — a piece off each local replica at once (`_striped_object`), else
    off the first replica whose record checks out (its header and xxh3-128); one that fails or
    does not check is logged and the next one read — nothing written
    (`_bad_manifest_replica`). ObjectNotFound or DataError when none reads."""
    got = _striped_object(store, sha, what)
    if got is not None:
        return got

    def read(disk: Any, meta: Any, loc: Any) -> bytes:
        where = f" ({what} {sha.hex()[:12]}…, shard {meta.hex} on {disk.label})"
        buf = disk.read_exact(meta.hex, loc.offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE + loc.length)
        if len(buf) != fmt.RECORD_HEADER_SIZE + loc.length:
            raise fmt.TruncatedShard(f"short read{where}")
        return verify_record(memoryview(buf), 0, sha, loc.length, where)

    return store.from_replicas(sha, read, on_bad=_bad_manifest_replica(sha, what))


def _striped_object(store: Store, sha: bytes, what: str) -> bytes | None:
    """The object's record read in pieces off every local replica at once into one buffer
    (`_stripes`: each disk a share in proportion to its bandwidth), its header and xxh3-128
    checked; None — the caller reads it off one replica after another — with fewer than two
    local replicas or a read or check that fails (logged)."""
    placed = _local_replicas(store, sha)
    if placed is None or len(placed[2]) < 2:
        return None
    loc, meta, disks = placed
    size = fmt.RECORD_HEADER_SIZE + loc.length
    plan = _stripes(store, disks, size)
    buf = memoryview(bytearray(size))
    base = loc.offset - fmt.RECORD_HEADER_SIZE
    where = f" ({what} {sha.hex()[:12]}…, shard {meta.hex}, striped)"

    def read(k: int) -> None:
        for d, start, n in plan:
            if d == k and disks[k].read_exact_into(meta.hex, base + start, buf[start:start + n]) != n:
                raise fmt.TruncatedShard(f"short read{where}")

    try:
        with ThreadPoolExecutor(len(disks), thread_name_prefix="loader-index") as pool:
            for _ in pool.map(read, range(len(disks))):
                pass
        return verify_record(buf, 0, sha, loc.length, where)
    except (OSError, fmt.ShardFormatError) as e:
        log.warning("loader: %s %s… not read striped (%s); reading it off one replica after another",
                    what, sha.hex()[:12], str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def _indexed_samples(store: Store, ref: str, manifest_sha: str, index_sha: str,
                     lines: _ManifestLines) -> card.Samples | None:
    """The version's samples from its loader index (`card.loader_index`), none of the manifest
    read; None — logged, the caller scans the manifest — for an index that does not read or
    is not this manifest's."""
    try:
        loc = store.index.lookup(bytes.fromhex(manifest_sha))
        if loc is None:  # (the scan says so)
            return None
        data = _read_object(store, bytes.fromhex(index_sha), "loader index")
        return card.Samples.of_index(data, manifest_sha, loc.length, lines)
    except (HoardError, ValueError) as e:
        log.warning("loader: the loader index of %s (%s…) is not used (%s); reading its manifest whole instead",
                    ref, index_sha[:12], str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


class _ManifestLines:
    """A version's manifest lines read back from the store as a loader hands its samples out
    (`card.Samples.of_pieces`: no manifest kept in memory), each checked against the xxh3-64
    taken when the manifest was read whole and verified. A line is read off the replica the
    last one came from (a descriptor of its shard's file kept open while the file is there: one
    pread a line; a file gc retired is let go, not kept from freeing its disk space); a read
    that fails or does not check goes through `Store.from_replicas` — the bad replica logged
    (nothing written: no repair queued, no disk marked, as for a record), the next one read, the
    manifest looked up again had gc moved it."""

    def __init__(self, cfg: config.Settings, manifest_sha: str) -> None:
        self.cfg, self.sha = cfg, bytes.fromhex(manifest_sha)
        # where lines are read: (the replicas' descriptors, the record's offset, the descriptor
        # of each piece (None: the first's), the pieces' size) — a forked process (a DataLoader's
        # worker) reads on through the descriptors it inherited: the replicas whose page cache
        # holds each piece (opened anew, it would read every line off one of them)
        self._at: tuple[tuple[int, ...], int, bytes | None, int] | None = None
        self._closer: weakref.finalize | None = None
        self._reads = 0
        # the manifest being read into the page cache (`warm`): the process, its readers
        self._warming: tuple[int, list[threads.Thread]] | None = None
        self._stop = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "sha": self.sha}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"], state["sha"].hex())  # type: ignore[misc]

    def warm(self, store: Store) -> None:
        """Have the page cache hold the manifest before its lines are read (a line read cold is
        a page read off its disk, queued behind the samples' runs): its pieces read off every
        local replica at once (`_stripes`), on threads of their own while the loader plans; the
        lines read from then on off the replica that read their piece, the first line asked
        for waiting for the reads. Nothing happens for a manifest with no local replica (its
        lines are read as `read` reads any)."""
        placed = _local_replicas(store, self.sha)
        if placed is None or not placed[2]:
            return
        loc, meta, disks = placed
        plan = _stripes(store, disks, loc.length)
        used = sorted({k for k, _a, _n in plan})  # (a manifest of one piece: one replica's file held)
        disks = [disks[k] for k in used]
        plan = [(used.index(k), a, n) for k, a, n in plan]
        fds: list[int] = []
        own: list[int] = []
        try:
            for d in disks:
                fds.append(d.open_reader(meta.hex))
            with _WARM_FDS:  # (the readers' own: `keep`'s may be let go meanwhile)
                own += [os.dup(fd) for fd in fds]
                _WARM_OWN[id(own)] = own
        except OSError:
            _close_all(tuple(fds))
            with _WARM_FDS:
                _close_warm(own)
                _WARM_OWN.pop(id(own), None)
            return
        self.keep(tuple(fds), loc.offset, bytes(k for k, _a, _n in plan), STRIPE_PIECE)
        stop = threading.Event()
        # (a lines reader let go of — a loader dropped, or refused after its start — stops its
        # readers at their next piece; daemons: the interpreter's exit does not wait for them)
        weakref.finalize(self, stop.set)

        def read(k: int) -> None:
            try:  # (exactly its pieces, a read each: the kernel's read-ahead, in smaller reads, is slower)
                os.posix_fadvise(own[k], 0, 0, os.POSIX_FADV_RANDOM)
                buf = memoryview(bytearray(STRIPE_PIECE))
                for d, start, n in plan:
                    if d == k and not stop.is_set():
                        os.preadv(own[k], [buf[:n]], loc.offset + start)
            except OSError:  # (its lines read off the disk as they are asked for)
                pass
            finally:
                with _WARM_FDS:
                    _close_warm(own, k)
                    if max(own) < 0:
                        _WARM_OWN.pop(id(own), None)

        readers = [threads.Thread(read, k, name="loader-manifest") for k in range(len(disks))]
        self._warming, self._stop = (os.getpid(), readers), stop
        for t in readers:
            t.start()

    def _warmed(self) -> None:
        """Wait for `warm`'s reads (in the process that started them: a forked worker reads on).
        A Ctrl-C meanwhile stops them and is raised at once: nothing waits on a hung disk's read
        (the readers touch only their own buffers and descriptors, which they close)."""
        warming, self._warming = self._warming, None
        if warming is not None and warming[0] == os.getpid():
            try:
                for t in warming[1]:
                    t.join()
            except BaseException:
                self._stop.set()
                raise

    def keep(self, fds: tuple[int, ...], offset: int, piece_of: bytes | None = None, piece: int = 1) -> None:
        """Read the lines off these replica files (descriptors it now owns): the first, or each
        line off the one its piece of the manifest was read from (`piece_of`: a manifest read
        striped, `_striped_manifest` — that file's pages hold it in the page cache, the others' not)."""
        self._let_go()
        self._at = (fds, offset, piece_of, piece)
        self._closer = weakref.finalize(self, _close_all, fds)

    def _let_go(self) -> None:
        if self._closer is not None:
            self._closer()
        self._at = self._closer = None

    def close(self) -> None:
        if self._warming is not None:
            self._stop.set()
            self._warming = None
        self._let_go()

    def read(self, at: int, n: int, digest: int) -> bytes:
        if self._warming is not None:
            self._warmed()
        last = self._at
        if last is not None:
            self._reads += 1
            fds, base, piece_of, piece = last
            fd = fds[0] if piece_of is None else fds[piece_of[min(at // piece, len(piece_of) - 1)]]
            try:  # (try, not contextlib.suppress: a line read for every sample handed out)
                # (a shard file gc retired, looked for every LOOK_LINKS lines: let go, its space freed)
                if self._reads % LOOK_LINKS or os.fstat(fd).st_nlink:
                    got = os.pread(fd, n, base + at)
                    if len(got) == n and xxhash.xxh3_64_intdigest(got) == digest:
                        return got
                else:
                    self._let_go()
            except OSError:
                pass
        with _shared_store(self.cfg) as store:
            def read(disk: Any, meta: Any, loc: Any) -> bytes:
                got = disk.read_at(meta.hex, loc.offset + at, n)
                if len(got) != n or xxhash.xxh3_64_intdigest(got) != digest:
                    raise PayloadChecksumMismatch(f"bytes {at}+{n} of manifest {self.sha.hex()[:12]}… do not match "
                                                  f"what was read of it (shard {meta.hex} on {disk.label})")
                if isinstance(disk, LocalDisk):  # (the next lines read off this replica's file directly)
                    with contextlib.suppress(OSError):
                        self.keep((disk.open_reader(meta.hex),), loc.offset)
                return got

            return store.from_replicas(self.sha, read, on_bad=_bad_manifest_replica(self.sha))


def _checked_samples(pieces: Iterator[bytes], lines: _ManifestLines, xx: Any, digest: bytes,
                     where: str, found: Callable[[int, bytes], None] | None = None) -> card.Samples:
    """The samples of a manifest read in `pieces` (each added to `xx`, an xxh3-128, as it is
    read), once `digest` checks out: bytes that do not are a rotten replica's (PayloadChecksum-
    Mismatch), bytes that do and are no manifest the parser's error."""
    refused: Exception | None = None
    try:
        samples = card.Samples.of_pieces(pieces, lines, found)
    except fmt.ShardFormatError:  # (a short read: the replica's)
        raise
    except (ValueError, KeyError, TypeError) as e:  # (rotten bytes, or no manifest: the digest says)
        refused = e
        for _ in pieces:
            pass
    if xx.digest() != digest:
        raise fmt.PayloadChecksumMismatch(f"payload checksum mismatch{where}")
    if refused is not None:
        raise refused
    return samples


def _manifest_samples(store: Store, manifest_sha: str, lines: _ManifestLines,
                      found: Callable[[int, bytes], None] | None = None) -> card.Samples:
    """The manifest's samples (`card.Samples.of_pieces`), its record read off one replica in
    pieces of ITER_READ, none kept: its header and xxh3-128 checked before they are used. A
    replica that fails or does not check is logged and the next one read (`Store.from_replicas`:
    the manifest looked up again had gc moved it) — nothing written: no repair queued, no disk
    marked, no chunk map recorded (a reader's rule, as for a record)."""
    sha = bytes.fromhex(manifest_sha)

    def read(disk: Any, meta: Any, loc: Any) -> card.Samples:
        where = f" (manifest {manifest_sha[:12]}…, shard {meta.hex} on {disk.label})"
        head = disk.read_at(meta.hex, loc.offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE)
        digest = checked_header(head, 0, sha, loc.length, where)
        xx = xxhash.xxh3_128()

        def pieces() -> Iterator[bytes]:
            for start in range(0, loc.length, ITER_READ):
                n = min(ITER_READ, loc.length - start)
                buf = disk.read_at(meta.hex, loc.offset + start, n)
                if len(buf) != n:
                    raise fmt.TruncatedShard(f"short read{where}")
                xx.update(buf)
                yield buf

        return _checked_samples(pieces(), lines, xx, digest, where, found)

    striped = _striped_manifest(store, sha, lines, found)
    return striped if striped is not None else store.from_replicas(sha, read, on_bad=_bad_manifest_replica(sha))


#: a manifest at least this long is read a piece off each local replica at once (`_striped_manifest`)
STRIPE_MIN = 16 << 20
#: the pieces it is read in
STRIPE_PIECE = ITER_READ


def _stripes(store: Store, disks: Sequence[LocalDisk], length: int) -> list[tuple[int, int, int]]:
    """A record `length` long cut in pieces of STRIPE_PIECE, each given to one of `disks` (the
    record's replicas) in proportion to their bandwidth: (disk, start, length), in order."""
    speed = runs_mod.speeds(store, disks)
    given = [0] * len(disks)
    plan: list[tuple[int, int, int]] = []
    for start in range(0, length, STRIPE_PIECE):
        n = min(STRIPE_PIECE, length - start)
        k = min(range(len(disks)), key=lambda d: (given[d] + n) / speed[d])
        given[k] += n
        plan.append((k, start, n))
    return plan


def _striped_manifest(store: Store, sha: bytes, lines: _ManifestLines,
                      found: Callable[[int, bytes], None] | None = None) -> card.Samples | None:
    """The manifest's samples read in pieces off every local replica at once, each disk a share
    of the pieces in proportion to its bandwidth (the start's wait: the disks have nothing else
    to read yet), at most two pieces a disk ahead; its header and xxh3-128 checked before the
    samples are used. None — the caller reads it off one replica after another — for a manifest
    under STRIPE_MIN or with one local replica, and for a read or check that fails (logged;
    nothing written). Bytes that check out and are no manifest: the parser's error."""
    placed = _local_replicas(store, sha)
    if placed is None or len(placed[2]) < 2 or placed[0].length < STRIPE_MIN:
        return None
    loc, meta, disks = placed
    plan = _stripes(store, disks, loc.length)
    where = f" (manifest {sha.hex()[:12]}…, shard {meta.hex}, striped)"
    pools = [ThreadPoolExecutor(1, thread_name_prefix="loader-manifest") for _ in disks]

    def submit(k: int, at: int, n: int) -> Any:
        return pools[k].submit(disks[k].read_exact, meta.hex, at, n)

    try:
        head = submit(0, loc.offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE)
        todo = deque(submit(k, loc.offset + a, n) for k, a, n in plan[:2 * len(disks)])
        later = iter(plan[2 * len(disks):])
        xx = xxhash.xxh3_128()

        def pieces() -> Iterator[bytes]:
            for _k, _a, n in plan:
                buf = todo.popleft().result()
                if len(buf) != n:
                    raise fmt.TruncatedShard(f"short read{where}")
                nxt = next(later, None)
                if nxt is not None:
                    todo.append(submit(nxt[0], loc.offset + nxt[1], nxt[2]))
                xx.update(buf)
                yield buf

        samples = _checked_samples(pieces(), lines, xx, checked_header(head.result(), 0, sha, loc.length, where),
                                   where, found)
        fds: list[int] = []
        try:
            for d in disks:
                fds.append(d.open_reader(meta.hex))
        except OSError:  # (the lines are read as any line is: `_ManifestLines.read`)
            _close_all(tuple(fds))
        else:
            lines.keep(tuple(fds), loc.offset, bytes(k for k, _a, _n in plan), STRIPE_PIECE)
        return samples
    except (OSError, fmt.ShardFormatError) as e:
        log.warning("loader: manifest %s… not read striped (%s); reading it off one replica after another",
                    sha.hex()[:12], str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _not_a_manifest(ref: str, manifest_sha: str, e: Exception) -> str:
    return (f"the manifest of {ref} ({manifest_sha[:16]}…) is not a dataset manifest "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else '?'}): build the version again "
            "(`hoard dataset build SPEC --force`) or, on another host, publish it again")


def _fresh_stats() -> dict[str, Any]:
    return {"samples": 0, "bytes": 0, "read_bytes": 0, "per_disk_bytes": {}, "fallbacks": 0, "withheld": 0,
            "held_max": 0, "held_bytes_max": 0}


class Loader:
    """The samples of a dataset version's split, read from the store (the module's docstring).

    `ref`: `NAME@N` (or `NAME`: the newest finished version, recorded as `NAME@N`); `split`:
    a split's name, or None for every sample; `decode(bytes)`: its result is yielded as
    `data` in place of `bytes`; `config_path`: a hoard.toml (default: found as the CLI finds
    it — `HOARD_CONFIG`, ./hoard.toml, /etc/hoard/hoard.toml); `source`: "store", "s3" or
    "mount" (default: that file's `[loader] source`; hoardfs.datasets.loader_remote). Iterating
    yields one epoch from `position`, then moves on to the next epoch (position 0): iterate
    again for it."""

    def __init__(self, ref: str, split: str | None = "train", seed: int = 0, epoch: int = 0, *,
                 position: int = 0, buffer: int = BUFFER, lanes: int = LANES, run_bytes: int = RUN_BYTES,
                 decode: Callable[[bytes], Any] | None = None, worker: int = 0, workers: int = 1, block: int = 1,
                 ahead: int = runs_mod.AHEAD, config_path: str | Path | None = None, origin: int | None = None,
                 manifest: str | None = None, source: str | None = None, withheld: str | None = None,
                 buffer_bytes: int = BUFFER_BYTES) -> None:
        if origin is None:
            origin = position
        for what, v, least in (("seed", seed, 0), ("epoch", epoch, 0), ("position", position, 0),
                               ("buffer", buffer, 1), ("lanes", lanes, 1), ("run_bytes", run_bytes, 1),
                               ("workers", workers, 1), ("block", block, 1), ("ahead", ahead, 1),
                               ("worker", worker, 0), ("origin", origin, 0), ("buffer_bytes", buffer_bytes, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise LoaderError(f"Loader {what}={v!r}: a whole number of at least {least}")
        if not worker < workers:
            raise LoaderError(f"Loader worker={worker!r}: one of 0..{workers - 1} (workers={workers})")
        if origin > position:
            raise LoaderError(f"Loader origin={origin}: at most position={position} (the worker split starts "
                              "at or before where the iteration does); pass what Loader.state_dict() returned")
        if decode is not None and not callable(decode):
            raise LoaderError(f"Loader decode={decode!r}: a function of a sample's bytes (or None: `bytes` yielded)")
        if not isinstance(ref, str) or not (split is None or isinstance(split, str)):
            raise LoaderError(f"Loader({ref!r}, split={split!r}): a dataset version NAME@N and a split's name "
                              "(or None); `hoard dataset list` names them")
        if source is not None and source not in SOURCES:
            raise LoaderError(f"Loader source={source!r}: one of {', '.join(SOURCES)} (or None: hoard.toml's "
                              "[loader] source)")
        self.config_path = str(config_path) if config_path is not None else None
        self.seed, self.epoch, self.position, self.origin = seed, epoch, position, origin
        self.buffer, self.lanes, self.run_bytes, self.ahead = buffer, lanes, run_bytes, ahead
        self.buffer_bytes = buffer_bytes
        self.decode = decode
        self.worker, self.workers, self.block = worker, workers, block
        # a worker's share of the positions from `origin` rests on which samples are withheld
        # there (`_owners`): the digest of those positions when the share was dealt (`_dealt`),
        # and the one a worker's state expects its epoch to find again
        self._expect_dealt = withheld if workers > 1 else None
        self._dealt: str | None = None
        name, number = api.parse_ref(ref, need_version=False)
        host = config.load_loader_host(config_path) if source != "store" else None
        self.source: str = source or (host.loader.source if host is not None else "store")
        self._located: remote.Located | None = None
        # the places of the manifest's samples looked up as it was read (`Places`): the first
        # plan's, not looked up again
        self._early: Located | None = None
        #: whether the samples came from the version's loader index (else its manifest was read whole)
        self.from_index = False
        if self.source == "store":
            self.cfg: config.Settings | None = config.load(config_path)
            every = self._from_store(ref, name, number, manifest)
        else:
            assert host is not None
            self.cfg = None
            self._located = remote.open_located(host, ref, self.source)
            try:
                self.ref, self.manifest_sha = self._located.ref, self._located.manifest_sha
                self._check_manifest(manifest)
                every = self._located.manifest()
            finally:  # (opened again by the first read: a loader made and not read holds nothing open)
                self._located.close()
        if not isinstance(every, card.Samples):
            every = card.Samples.of(every)
        splits = sorted(every.split_names())
        if split is not None and split not in splits:
            raise LoaderError(f"dataset {self.ref} has no split {split!r} (its splits: {', '.join(splits) or 'none'})")
        self.split = split
        self.samples = every if split is None else every.of_split(split)
        if self._early is not None and split is not None:
            self._early = _located_of(self._early, every.indices_of(split))
        if position > len(self.samples):
            raise LoaderError(f"Loader position={position}: past the end of {self.ref}'s "
                              f"{split if split is not None else 'every'} split ({len(self.samples)} samples); "
                              "pass what Loader.state_dict() returned")
        self.shas = self.samples.sha256s  # (read out of the one bytes kept: no object a sample)
        self._plan: Plan | None = None
        self._plan_epoch = -1
        self._stats: dict[str, Any] = _fresh_stats()
        self._mix = Mix()
        #: this loader's iterations not yet collected (`close` ends those still going)
        self._live: weakref.WeakSet[Generator[dict[str, Any], None, None]] = weakref.WeakSet()
        self._closes = 0  # `close` calls: an iteration running through one ends at its next sample
        give_back_freed()  # (the manifest was read in pieces of 8 MiB: their pages not kept for the epoch)

    def _check_manifest(self, manifest: str | None) -> None:
        if manifest is not None and not self.manifest_sha.startswith(manifest or "-"):
            raise LoaderError(f"the loader state is of another {self.ref} (manifest {manifest[:16]}…, this "
                              f"{'store' if self.source == 'store' else 'locator'}'s is {self.manifest_sha[:16]}…): "
                              "a state resumes only the dataset it was saved from")

    def _from_store(self, ref: str, name: str, number: int | None, manifest: str | None) -> Sequence[Sample]:
        """The version's samples, its name and manifest looked up in the database and the store."""
        assert self.cfg is not None
        with api._connect(self.cfg, f"read dataset {ref}") as conn:
            if number is not None:  # (a version that is not there: named as such, whatever the others' state)
                with api._db_errors(f"dataset {name} was read"):
                    there = [r["version"] for r in sqld.versions(conn, name)]
                if number not in there:
                    raise LoaderError(f"no dataset {ref} (its versions: {', '.join(map(str, there)) or 'none'}); "
                                      "`hoard dataset list`")
            row = api._version(conn, ref)
        if not row["manifest_sha256"] or row["status"] == "building":
            raise LoaderError(f"dataset {row['name']}@{row['version']} is building (or its build was killed): "
                              "read a finished version, or run the same `hoard dataset build SPEC` again to finish it")
        self.ref = f"{row['name']}@{row['version']}"
        self.manifest_sha = row["manifest_sha256"]
        self._check_manifest(manifest)
        with self._store() as store:  # (read in verified pieces, none of it kept: its lines are read back)
            lines = _ManifestLines(self.cfg, self.manifest_sha)
            index = row.get("loader_index_sha256")
            got = _indexed_samples(store, self.ref, self.manifest_sha, index, lines) if index else None
            self.from_index = got is not None
            if got is not None:  # (the manifest read into the page cache meanwhile, the places looked up now)
                lines.warm(store)
                self._early = ([], array("i"), array("q"), array("q"))
                _place_all(store, self._early, {}, got.sha256s.blob)
                return got
            places = Places(store)  # (the samples' places looked up as the manifest is read)
            try:
                samples = _manifest_samples(store, self.manifest_sha, lines, places.found)
                self._early = places.located(len(samples))
                return samples
            except (ValueError, KeyError, TypeError) as e:  # (a line that is not a sample's; UnicodeDecodeError)
                raise LoaderError(_not_a_manifest(self.ref, self.manifest_sha, e), ExitCode.DATA) from None
            finally:
                places.close()

    def _store(self) -> contextlib.AbstractContextManager[Store]:
        assert self.cfg is not None, "a loader reading through s3 or the mount opens no store"
        return _shared_store(self.cfg)

    @contextlib.contextmanager
    def _source(self) -> Iterator[_StoreSource | remote.Located]:
        """Where the samples are read: the store (shared, `_shared_store`) or the located version."""
        if self._located is not None:
            try:
                yield self._located
            finally:  # (an epoch read, or its iteration abandoned: its S3 connections closed now)
                self._located.close()
            return
        with self._store() as store:
            yield _StoreSource(self, store)

    def close(self) -> None:
        """End the loader's iterations still going and let go of what it holds open (an S3
        source's connections). An iteration ended or abandoned (its generator closed) lets go of
        what it opened by itself; iterating again after `close` opens what it reads anew. An
        iteration making its next sample as `close` is called (from a signal handler, another
        thread) hands that sample out and ends then, letting go of what it opened."""
        self._closes += 1
        running = False
        for it in list(self._live):  # (an iteration still going: ended first, its readers stopped)
            try:
                it.close()
            except ValueError:
                if inspect.getgeneratorstate(it) != inspect.GEN_RUNNING:
                    raise
                running = True  # (it ends at its next sample, `_iterate`: what it reads stays open till then)
        if self._located is not None and not running:
            self._located.close()
        if not running:
            self.samples.close()

    def planned(self) -> Loader:
        """This loader, its current epoch planned now (the index's places as they stand) and its
        positions dealt (a DataLoader's workers each read a part of it: none deals them again)."""
        with self._source() as src:
            self.plan(src).post  # noqa: B018
        return self

    def part(self, worker: int, workers: int, epoch: int, position: int) -> Loader:
        """A new loader of this one's samples from `position` of `epoch`, as worker `worker` of
        `workers` (blocks of `block`): what `Loader(…, worker=, workers=)` gives, without reading
        the manifest again, and with this loader's plan when it is of `epoch` — a DataLoader's
        workers share the plan their dataset made (hoardfs.datasets.loader_torch)."""
        if not 0 <= worker < workers or not 0 <= position <= len(self.samples) or epoch < 0:
            raise LoaderError(f"Loader.part({worker}, {workers}, {epoch}, {position}): a worker of 0..{workers - 1}, "
                              f"an epoch and a position of 0..{len(self.samples)}")
        ld = copy.copy(self)
        ld.worker, ld.workers, ld.epoch, ld.position, ld.origin = worker, workers, epoch, position, position
        ld._expect_dealt = ld._dealt = None
        ld._stats, ld._mix = _fresh_stats(), Mix()
        return ld

    def __getstate__(self) -> dict[str, Any]:
        """The loader as pickled (a DataLoader's workers, a process of its own): its iterations stay here."""
        return {k: v for k, v in self.__dict__.items() if k != "_live"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._live = weakref.WeakSet()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.samples)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the sequence stands: seed, epoch, position and what else fixes the order (JSON,
        well under 1 KB). At the end of an epoch: the next epoch at position 0."""
        epoch, position, origin = self.epoch, self.position, self.origin
        if position >= len(self.samples):
            epoch, position, origin = epoch + 1, 0, 0
        state = {"state": state_format(self.buffer_bytes), "dataset": self.ref, "manifest": self.manifest_sha[:16], "split": self.split,
                 "seed": self.seed, "epoch": epoch, "position": position, "buffer": self.buffer, "lanes": self.lanes,
                 "run_bytes": self.run_bytes, "buffer_bytes": self.buffer_bytes}
        if self.workers > 1:  # a worker's own state: the split it is a part of, and where that starts
            state |= {"worker": self.worker, "workers": self.workers, "block": self.block, "origin": origin}
            dealt = (self._dealt or self._expect_dealt) if epoch == self.epoch else None
            if dealt is not None:  # (the positions withheld when the share was dealt)
                state["withheld"] = dealt
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], **kwargs: Any) -> Loader:
        """The loader that goes on exactly where `state` (`state_dict`) stood; `kwargs` (decode,
        config_path, ahead) as for the constructor. The whole sequence's state resumes split over
        any `worker`, `workers`, `block` given; a worker's own state (one with `workers`) resumes
        that worker of that split only — refused in one line with another split."""
        args = _state_args(state)
        split_kw: dict[str, Any] = {k: kwargs.pop(k) for k in ("worker", "workers", "block") if k in kwargs}
        if "workers" in args:
            if any(args[k] != v for k, v in split_kw.items()):
                raise LoaderError(f"the loader state is worker {args['worker']}'s of {args['workers']} (blocks of "
                                  f"{args['block']}): it resumes that worker only; to split over other workers, resume "
                                  "from the whole sequence's state (what one Loader or TorchDataset.state_dict gives)")
        else:
            args |= split_kw
        refuse_given(kwargs, ("manifest", "origin", "withheld", "buffer_bytes"), "from_state_dict")
        return cls(args.pop("ref"), args.pop("split"), args.pop("seed"), args.pop("epoch"), **args, **kwargs)

    def stats(self) -> dict[str, Any]:
        """Samples and bytes yielded, bytes read per disk, replicas fallen back to, samples
        withheld (deleted or hidden), the most samples held read and not yet yielded at once
        (`held_max`: at most `buffer` + `lanes` × a run's samples) and the most bytes
        (`held_bytes_max`: with `buffer_bytes`, at most that + `lanes` × `run_bytes` — a record
        larger counted whole, and once for each of its duplicate samples), and the mix (`Mix`)."""
        return {**self._stats, "per_disk_bytes": dict(self._stats["per_disk_bytes"]), "mix": self._mix.report()}

    # -- the sequence -----------------------------------------------------------------------
    def plan(self, store: Store | _StoreSource | remote.Located) -> Plan:
        """The epoch's plan from the records' places: the index's (a Store), or the published
        locator's (which are the index's at publish time)."""
        if self._plan is None or self._plan_epoch != self.epoch:
            locate = store.index.lookup_many if isinstance(store, Store) else store.locs
            early, self._early = self._early, None  # (the places as the manifest was read: the first plan's)
            self._plan = None  # (the last epoch's let go before this one is made)
            self._plan = plan_shas(self.shas, locate, self.manifest_sha, self.split, self.seed, self.epoch,
                                   self.buffer, self.lanes, self.run_bytes, self.buffer_bytes, early)
            self._plan_epoch = self.epoch
        return self._plan

    def order(self) -> list[str]:
        """The keys of the epoch's whole sequence (no byte read): what iterating it from its
        start yields, the samples withheld now left out."""
        with self._source() as src:  # (the lines read while the store is open)
            p, withheld = self._plan_and_withheld(src)
            return [self.samples.fields(i)["key"] for i in p.post if self.shas[i] not in withheld]

    def _plan_and_withheld(self, src: _StoreSource | remote.Located) -> tuple[Plan, set[bytes]]:
        """The epoch's plan and the samples withheld now, the two made at once: the database
        and index are asked (`withheld`, waiting on PostgreSQL) while the plan is made (the
        disks wait for both)."""
        with ThreadPoolExecutor(1, thread_name_prefix="loader-withheld") as pool:
            asked = pool.submit(src.withheld, self.shas)
            try:
                p = self.plan(src)
            finally:
                withheld = asked.result()
        return p, withheld

    def _deal_check(self, p: Plan, withheld: set[bytes]) -> None:
        """Keep the digest of the positions from `origin` withheld as this worker's share is
        dealt; LoaderError (one line) when a worker's state expects another: samples deleted,
        hidden or shown again since it was saved (or a locator published again) deal the shares
        otherwise, and the workers would hand out some samples twice and others never."""
        withheld_at = ",".join(str(k) for k in range(self.origin, len(p.post)) if self.shas[p.post[k]] in withheld)
        self._dealt = hashlib.sha256(withheld_at.encode()).hexdigest()[:16]
        expect, self._expect_dealt = self._expect_dealt, None
        if expect is not None and expect != self._dealt:
            raise LoaderError(f"the loader state is worker {self.worker}'s of {self.workers} of {self.ref}, saved "
                              "while other samples were withheld (deleted, hidden or shown again since): the workers' "
                              "shares moved — resume from the whole sequence's state (TorchDataset.state_dict, or "
                              "one Loader's) split over the workers again", ExitCode.DATA)

    def _owners(self, p: Plan, origin: int, withheld: set[bytes]) -> bytearray:
        """Whether this worker owns each position of the epoch: the positions from `origin` of
        samples not withheld, dealt in blocks (the module's worker split)."""
        mine = bytearray(len(p.post))
        rank = 0
        for k in range(origin, len(p.post)):
            if self.shas[p.post[k]] not in withheld:
                mine[k] = (rank // self.block) % self.workers == self.worker
                rank += 1
        return mine

    def _reads(self, p: Plan, start: int, withheld: set[bytes], need: bytearray) -> tuple[list[int], Sequence[Run]]:
        """The runs read from position `start` (`need`: the samples this worker yields): the
        plan's run numbers and each run as read (made as the readers ask for it). One worker of
        one: a run's needed records. One of several reading the store: every run any worker
        needs, whole (what one process reads of it), keeping its own records — every worker
        gives each run the same disk and reads it in the same ranges, so the page cache has the
        disk read its bytes once for all."""
        shas = self.shas
        if start == 0 and self.workers == 1 and not withheld:  # (the whole epoch: every run, each whole)
            return list(range(len(p.order))), _Runs(p, range(len(p.order)))
        read = need
        if self.workers > 1 and self.source == "store":
            read = bytearray(len(self.samples))
            for k in range(start, len(p.post)):
                i = p.post[k]
                read[i] = shas[i] not in withheld

        def of(flags: bytearray) -> Callable[[int], set[bytes]]:
            return lambda r: {shas[i] for i in p.samples_of(r) if flags[i]}

        todo = [r for r in range(len(p.order)) if any(read[i] for i in p.samples_of(r))]
        if read is need:
            return todo, _Runs(p, todo, of(need))
        return todo, _Runs(p, todo, of(read), lambda r: frozenset(of(need)(r)))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self._iterate()
        self._live.add(it)
        return it

    def _iterate(self) -> Generator[dict[str, Any], None, None]:
        closes = self._closes
        with self._source() as src, contextlib.closing(self._epoch(src)) as samples:
            for s in samples:
                yield s
                if self._closes != closes:  # (`close` while it made this sample: it ends, the sample handed out)
                    return

    def _epoch(self, src: _StoreSource | remote.Located) -> Generator[dict[str, Any], None, None]:
        p, withheld = self._plan_and_withheld(src)
        start = self.position
        # what this worker reads from here: its own positions' samples (live ones: owned)
        owned = self._owners(p, self.origin, withheld) if self.workers > 1 else None
        if self.workers > 1:
            self._deal_check(p, withheld)
        if start == 0 and owned is None and not withheld:  # (the whole epoch: every sample; none unplaced comes up)
            need = bytearray(b"\x01") * len(self.samples)
        else:
            need = bytearray(len(self.samples))
            for k in range(start, len(p.post)):
                i = p.post[k]
                if (owned[k] if owned is not None else self.shas[i] not in withheld):
                    need[i] = True
        # a sample the plan places nowhere has no position: one neither withheld is lost (the
        # store's, or the locator's), asked again of the store (deleted and freed by a gc while
        # the epoch was planned: withheld now)
        gone = [i for i in range(len(self.samples)) if p.run_of[i] < 0 and self.shas[i] not in withheld]
        if gone and self.source == "store":
            again = src.withheld([self.shas[i] for i in gone])
            gone = [i for i in gone if self.shas[i] not in again]
        lost = [self.samples[i] for i in gone]
        if lost and self.source != "store":
            raise LoaderError(f"{len(lost)} samples of {self.ref}, e.g. {lost[0].key} ({lost[0].sha256}), are placed "
                              f"nowhere by its locator and not withheld: publish it again on the store's server "
                              f"(`hoard dataset publish {self.ref}`)", ExitCode.DATA)
        if lost:
            raise LoaderError(f"{len(lost)} samples of {self.ref} are not in the store, e.g. {lost[0].key} "
                              f"({lost[0].sha256}), and their nodes are not deleted: the store lost them — "
                              "`hoard health` names what to do", ExitCode.DATA)
        todo, parts = self._reads(p, start, withheld, need)
        give_back_freed()  # (what making the plan and asking the withheld freed: not kept for the epoch)
        reads = src.read_runs(parts, self.ahead)
        runs_in: Iterator[runs_mod.RunRead] = reads
        held: dict[int, bytes] = {}
        held_bytes = 0
        blob, live = self.shas.blob, src.live  # (sample j's sha256: blob[32 j : 32 j + 32])
        # (while the index's last write is the one the reads began from, every sample read is
        # live: one look a sample — `live` asked otherwise, and of a source with no index)
        generation, since = src.since()
        trim_in = TRIM_BYTES
        done = -1  # the last plan run read
        try:
            if p.deal is not None:  # (a whole epoch: the disks start reading while its positions are dealt)
                with ThreadPoolExecutor(1, thread_name_prefix="loader-deal") as pool:
                    dealt = pool.submit(lambda: p.post)
                    try:
                        runs_in = itertools.chain((next(reads),), reads)
                    except StopIteration:
                        pass
                    finally:
                        dealt.result()
            # (the loop hands out every sample of an epoch: what it asks of the plan, the stats,
            # the lines and the mix, looked up once — at page-cache speed each lookup a sample
            # costs a share of a per cent)
            post, run_of, run_shard, order, shard_ids = p.post, p.run_of, p.run_shard, p.order, p.shard_ids
            stats, mix, fields, decode = self._stats, self._mix.add, self.samples.fields, self.decode
            for k in range(start, len(post)):
                i = post[k]
                if not need[i]:
                    if owned is None:
                        stats["withheld"] += 1
                    self.position = k + 1
                    continue
                r = run_of[i]
                while done < r:
                    got = next(runs_in)
                    done = todo[got.number]
                    # (bytes of this thread's own: copied out of a reader's buffer, or read now)
                    js = [j for j in p.samples_of(done) if need[j]]
                    for j, data in zip(js, got.take_many([blob[32 * j:32 * j + 32] for j in js]) if js else (),
                                       strict=True):
                        if data is not None:
                            held[j] = data
                            held_bytes += len(data)
                    self._took(got)
                    got.release()
                    stats["held_max"] = max(stats["held_max"], len(held))
                    stats["held_bytes_max"] = max(stats["held_bytes_max"], held_bytes)
                data = held.pop(i, None)
                if data is not None:
                    held_bytes -= len(data)
                self.position = k + 1
                # hidden or deleted since the epoch began: not read — or read before, and not
                # handed out now that the store no longer shows it
                if data is None or ((since is None or generation() != since) and not live(blob[32 * i:32 * i + 32])):
                    stats["withheld"] += 1
                    continue
                size = len(data)
                stats["samples"] += 1
                stats["bytes"] += size
                trim_in -= size
                if trim_in <= 0:
                    trim_in = TRIM_BYTES
                    give_back_freed()
                # (the shard's id: its number in the plan is another in the next epoch's, and the
                # mix's windows run on across epochs)
                mix(shard_ids[run_shard[order[r]]])
                try:
                    out = fields(i)
                except (ValueError, KeyError, TypeError) as e:  # (its line checked at the start by its sha256 and split alone)
                    raise LoaderError(_not_a_manifest(self.ref, self.manifest_sha, e), ExitCode.DATA) from None
                out["epoch"], out["position"] = self.epoch, k
                if decode is None:
                    out["bytes"] = data
                else:
                    out["data"] = decode(data)
                yield out
            if self.workers > 1 and self.worker == 0 and self.source == "store":
                for got in reads:  # (the others' leader, `runs.Follow`: the runs after its own last one read too)
                    self._took(got)
                    got.release()
        finally:
            reads.close()
        self.epoch += 1
        self.position = self.origin = 0
        self._dealt = None

    def _took(self, got: runs_mod.RunRead) -> None:
        """A run read, counted in `stats()`."""
        self._stats["read_bytes"] += got.nbytes
        self._stats["fallbacks"] += got.fallbacks
        if got.disk:
            per_disk = self._stats["per_disk_bytes"]
            per_disk[got.disk] = per_disk.get(got.disk, 0) + got.nbytes
