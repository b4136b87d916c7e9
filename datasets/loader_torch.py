"""The loader as a `torch.utils.data.IterableDataset` (torch needed only for this module).

    ds = TorchDataset("cats@3", split="train", seed=7, epoch=0, block=64)
    for batch in DataLoader(ds, batch_size=64, num_workers=4, collate_fn=...):
        ...

The dataset reads the version's manifest and plans its epoch once, where it is made (and
again at `set_epoch`); each DataLoader worker reads its part of the sequence through a Loader of
its own (`Loader.part`: its own store and database connection) on that plan — not a manifest
read and a plan per worker, and every worker on the same plan. Positions are dealt in blocks
of `block` (the DataLoader's batch_size; 1 with batch_size=None), block b to worker
b % num_workers. The DataLoader takes one batch from each
worker in turn, so what it hands out is the sequence itself, whatever the number of workers.
`state_dict(consumed)` is the Loader state after the first `consumed` samples this dataset's
iteration handed out (`state_dict(last=sample)`: after that sample, exact even when samples
were withheld): `TorchDataset.from_state_dict(state, block=…)` goes on from there, with
any number of workers.

An iteration is one epoch; each copy of the dataset moves on by itself, one epoch per
iteration, from the epoch it was given (the first from `position`, the rest from their
start): the main process's (num_workers=0) and a persistent worker's (persistent_workers=True,
which iterates its one copy every epoch — a `set_epoch` in the main process never reaches it).
Workers that are not persistent get a fresh copy each epoch: `set_epoch(e)` before each.

`transform`: a callable each worker applies to every sample before handing it over, e.g. one
that returns `(tensor, sample["class_index"])` for the DataLoader's default collate — what
crosses the DataLoader's pipes is what it returns. `state_dict(last=…)` needs a sample's
`epoch` and `position`: with a transform that drops them, use `state_dict(consumed)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from hoardfs.datasets.loader import Loader, LoaderError, _state_args, refuse_given, state_format

__all__ = ["TorchDataset"]


class TorchDataset(IterableDataset):
    def __init__(self, ref: str, split: str | None = "train", seed: int = 0, epoch: int = 0, *, position: int = 0,
                 block: int = 1, transform: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.transform = transform
        # checked here, in the process that makes it: a bad name or split is one line now, not
        # a worker's traceback later
        probe = Loader(ref, split, seed, epoch, position=position, block=block, **kwargs)
        # the samples and the epoch's plan, made once here: each worker's loader is a part of this
        # one (`Loader.part`), not a manifest read and a plan of its own
        self.loader = probe.planned()
        self.ref, self.split, self.seed, self.epoch, self.position = probe.ref, split, seed, epoch, position
        self.manifest = probe.manifest_sha[:16]
        self.block = block
        self.kwargs = kwargs
        self.samples = len(probe)
        self.iterations = 0  # of this copy since its epoch was set

    def __len__(self) -> int:
        return max(0, self.samples - self._now()[1])

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch `epoch`, from its start."""
        self.epoch, self.position, self.iterations = epoch, 0, 0
        self.loader = self.loader.part(0, 1, epoch, 0).planned()

    def _now(self) -> tuple[int, int]:
        """The epoch this copy's current (or next, before any) iteration reads, and its start."""
        n = max(0, self.iterations - 1)
        return self.epoch + n, self.position if n == 0 else 0

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        self.iterations += 1
        epoch, position = self._now()
        ld = self.loader.part(worker, workers, epoch, position)
        try:
            yield from (ld if self.transform is None else map(self.transform, ld))
        finally:
            ld.close()

    def state_dict(self, consumed: int = 0, *, last: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Loader state after `consumed` samples of this iteration were handed out — or,
        exactly even when samples were withheld (deleted meanwhile: their positions passed
        over), after the sample `last` (the last one handed out: its `position`)."""
        epoch, start = self._now()
        position = start + consumed
        if last is not None:  # (the sample names its own epoch and position)
            try:
                epoch, position = int(last["epoch"]), int(last["position"]) + 1
            except (TypeError, KeyError, ValueError, IndexError):
                raise LoaderError("state_dict(last=…) takes a sample as the loader hands it out (its `epoch` and "
                                  "`position`); after a transform that drops them, pass state_dict(consumed) the "
                                  "number of samples handed out") from None
        if position >= self.samples:
            epoch, position = epoch + 1, 0
        return {"state": state_format(self.loader.buffer_bytes), "dataset": self.ref, "manifest": self.manifest,
                "split": self.split, "seed": self.seed,
                "epoch": epoch, "position": position, "buffer_bytes": self.loader.buffer_bytes,
                **{k: self.kwargs[k] for k in ("buffer", "lanes", "run_bytes") if k in self.kwargs}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], block: int = 1, **kwargs: Any) -> TorchDataset:
        """The dataset that goes on where `state` stood (this class's or a whole-sequence
        `Loader.state_dict()`), split over the DataLoader's workers; anything else is refused
        in one line."""
        args = _state_args(state)
        if "workers" in args:
            raise LoaderError(f"the loader state is worker {args['worker']}'s of {args['workers']}: a TorchDataset "
                              "resumes from the whole sequence's state (TorchDataset.state_dict or one Loader's)")
        for k in ("worker", "block", "origin"):  # (the DataLoader's split is this dataset's own)
            args.pop(k, None)
        refuse_given(kwargs, ("manifest", "withheld", "buffer_bytes"), "TorchDataset.from_state_dict")
        return cls(args.pop("ref"), args.pop("split"), args.pop("seed"), args.pop("epoch"), block=block, **args,
                   **kwargs)
