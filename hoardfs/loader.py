"""`from hoardfs.loader import Loader`: train from the store (hoardfs.datasets.loader; docs/datasets.md,
"Training from the store"). `TorchDataset`, the torch `IterableDataset` over it, is imported
from hoardfs.datasets.loader_torch when asked for: torch is needed only then."""

from typing import TYPE_CHECKING

from hoardfs.datasets.loader import Loader, LoaderError, Mix

if TYPE_CHECKING:
    from hoardfs.datasets.loader_torch import TorchDataset

__all__ = ["Loader", "LoaderError", "Mix", "TorchDataset"]


def __getattr__(name: str) -> object:
    if name == "TorchDataset":
        from hoardfs.datasets.loader_torch import TorchDataset  # deferred: imports torch

        return TorchDataset
    raise AttributeError(f"module 'hoardfs.loader' has no attribute {name!r}")
