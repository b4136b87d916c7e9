"""The store's side of the two kinds of deletion (the database's side is sql.deletion).

* Type A — `hide`: the objects get a `hidden` mark; the mount stops showing them, selectors
  (through the database flag) stop returning them; the bytes stay.
* Type B — `drop_batch`: the batch is unregistered and every object only it referenced
  (its manifest's files that no other batch or view names, and the manifest itself) gets a
  tombstone; `hoard gc` then frees their bytes. Storing a tombstoned object again clears
  its tombstone.
"""

from __future__ import annotations

from fsd.base.errors import ExitCode, HoardError
from fsd.manifest import iter_files, references


def hide(store, shas: list[bytes], reason: str) -> int:
    return store.index.mark(store.index.hidden, shas, reason)


def referenced_elsewhere(store, skip_batch: str) -> set[bytes]:
    """sha256s named by every batch and view manifest except `skip_batch`'s (files and the
    manifests' own objects)."""
    return references(store, skip=("batch", skip_batch))


def drop_batch(store, batch_id: str) -> tuple[int, int]:
    """Tombstone what only this batch references; returns (tombstoned, kept because shared)."""
    info = store.index.get_batch(batch_id)
    if info is None:
        raise HoardError(f"no ingested batch {batch_id!r} in the store; `ls <mount>/batches` lists them",
                         ExitCode.USAGE)

    mine = {sha for _path, sha, _size in iter_files(store.get, info["manifest"])}
    shared = mine & referenced_elsewhere(store, batch_id)
    doomed = (mine - shared) | {bytes.fromhex(info["manifest"])}
    n = store.index.mark(store.index.deleted, doomed, f"batch {batch_id} deleted")
    store.register_batch(batch_id, None)
    return n, len(shared)
