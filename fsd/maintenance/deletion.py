"""The store's side of the two kinds of deletion (the database's side is hoardfs.sql.deletion).

* Type A — `hide`: the objects get a `hidden` mark; the mount stops showing them, selectors
  (through the database flag) stop returning them; the bytes stay.
* Type B — `drop_batch`: the batch is unregistered and every object only it referenced
  (its manifest's files that no other batch or view names, and the manifest itself) gets a
  tombstone; `hoard gc` then frees their bytes. Storing a tombstoned object again clears
  its tombstone. An object `hoard put` acknowledged is a root and gets none.
* Type B for a root — `release`: `hoard delete --object` takes the root away and tombstones
  the object; gc frees it unless a batch, view, pin or database row still needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.held import named, named_by
from hoardfs.fsd.core.txnlog import chunked
from hoardfs.fsd.outputs import holders
from hoardfs.fsd.outputs.manifest import iter_files, naming_lock, references
from hoardfs.fsd.outputs.unreadable import UNREADABLE, ManifestUnreadable, Reading, judge

log = logging.getLogger(__name__)


def hide(store, shas: list[bytes], reason: str) -> int:
    return store.index.mark(store.index.hidden, shas, reason)


def referenced_elsewhere(store, skip_batch: str, among: set[bytes],
                         unreadable: list[HoardError] | None = None) -> set[bytes]:
    """Which of `among` (the batch's files) every other batch and view manifest names (files
    and the manifests' own objects). Memory for `among`, not for every object the manifests
    name (the set of all of them would make `delete --batch` grow ~110 B per object of the
    store); each manifest is still read — which ones name a file is known only from them.
    `unreadable`: a manifest that does not read is put there and names nothing (References)."""
    return references(store, among, skip=("batch", skip_batch), unreadable=unreadable)


def drop_batch(store, batch_id: str, unreadable_ok: bool = False,
               before: Callable[[], object] | None = None) -> tuple[int, int]:
    """Tombstone what only this batch references; returns (tombstoned, kept because shared).

    Which of its objects another registered manifest names is asked of the `held` table (a
    lookup per object: the batch's work, not the store's; hoardfs.fsd.core.held) — of every other
    manifest, read, on an index not migrated to it yet. The tombstones are set while the batch
    is still registered (a process killed meanwhile: gc clears them, the batch naming them;
    a re-run sets them again), then it is unregistered with a pending record of its manifest,
    whose `held` entries go last (killed before: a re-run or the next gc removes them).

    A batch whose manifest no replica reads raises ManifestUnreadable (nothing changed) unless
    `unreadable_ok`: then it is unregistered and nothing tombstoned (`_unreadable`). Another
    manifest that does not read never stops this deletion (its sharing is not known: see
    `_shares_unknown`). `before()` runs once what is dropped is known, before the store
    changes — the caller's side that goes first (the CLI's database rows)."""
    idx = store.index
    with naming_lock(store):  # a view defined meanwhile is a reference seen here, or clears the mark after
        info = idx.get_batch(batch_id)
        if info is None:
            if before is not None:
                before()
            if not _finish(store, batch_id):
                raise HoardError(f"no ingested batch {batch_id!r} in the store; `ls <mount>/batches` lists them",
                                 ExitCode.USAGE)
            return 0, 0
        manifest = info["manifest"]
        if idx.lookup(bytes.fromhex(manifest)) is None:
            if before is not None:
                before()
            return _lost(store, batch_id, manifest)
        reading = Reading(store)
        others: list[HoardError] = []
        try:
            if idx.held_ready():
                names = named_by(reading, manifest)
                mine = set(names)
                shared = idx.held_among(mine, skip=bytes.fromhex(manifest), get=store.get)
            else:
                names = None
                mine = {sha for _path, sha, _size in iter_files(reading, manifest)}
                shared = referenced_elsewhere(store, batch_id, mine, others)
        except UNREADABLE as e:
            bad = judge(store, "batch", batch_id, manifest, e, reading.last)
            if not (isinstance(bad, ManifestUnreadable) and unreadable_ok):
                raise bad from None
            if before is not None:
                before()
            return _unreadable(store, batch_id, manifest, bad)
        _shares_unknown(batch_id, others)
        # gc checks the roots again when it swaps (a `hoard put` may root one after this line)
        shared |= idx.marked_among(idx.rooted, mine)
        doomed = (mine - shared) | {bytes.fromhex(manifest)}
        if before is not None:
            before()
        n = idx.mark(idx.deleted, doomed, f"batch {batch_id} deleted")
        store.register_batch(batch_id, None)
        holders.unhold(store, manifest, names)
    return n, len(shared)


def _shares_unknown(batch_id: str, others: list[HoardError]) -> None:
    """Say which other manifests did not read while a batch was deleted on an index not migrated
    to `held`: what they share with it is not known, so its tombstones may fall on their files —
    a request only: gc reads every registered manifest again before it frees anything, and
    frees nothing while one does not read (it names the step), so nothing they name is lost."""
    for e in others:
        log.warning("%s — what it shares with batch %s is not known; gc frees nothing while it stays registered "
                    "unread", e.message, batch_id)


def _lost(store, batch_id: str, manifest: str) -> tuple[int, int]:
    """A batch whose manifest is in no shard (lost with a disk, or never stored): what it named
    is not known, so nothing is tombstoned — its files stay (a leak, never a loss) — and it is
    unregistered, its `held` entries found by a pass over the table. Without this it could not
    be deleted at all, and kept the index below format 3 (the migration reads every manifest)."""
    log.warning("batch %s: its manifest %s is not in the store: the batch is unregistered and nothing is "
                "tombstoned (what it named is not known; its files stay)", batch_id, manifest)
    store.register_batch(batch_id, None)
    holders.unhold(store, manifest)
    return 0, 0


def _unreadable(store, batch_id: str, manifest: str, bad: ManifestUnreadable) -> tuple[int, int]:
    """A batch whose manifest no replica reads (every replica rotted at it; it does not decode),
    unregistered as a lost one is (`_lost`: nothing it named is tombstoned, its files stay),
    once the user agreed (`hoard delete --batch` says so and asks). Without this it could not
    be deleted at all, nor could any other batch on an index not migrated, and the index stayed
    below format 3. The manifest object itself is tombstoned, as every deleted batch's is (no
    other registration names it): gc then frees the rotted record, and its shard is whole again.
    Returns (tombstoned, 0)."""
    log.warning("batch %s: its manifest %s cannot be read from any replica (%s): the batch is unregistered and "
                "nothing it named is tombstoned (what it named is not known; its files stay)", batch_id, manifest,
                bad.why)
    others = {info["manifest"] for kind, name, info in named(store.index) if (kind, name) != ("batch", batch_id)}
    n = 0 if manifest in others else store.index.mark(store.index.deleted, [bytes.fromhex(manifest)],
                                                      f"batch {batch_id} deleted (its manifest does not read)")
    store.register_batch(batch_id, None)
    if store.index.held is not None:  # (its entries by a pass over the table: the manifest is not read again)
        store.index.unhold_unread(manifest, "remove", get=store.get)
    return n, 0


def finish_batch(store, batch_id: str) -> bool:
    """The last step of a deletion of `batch_id` a killed process left (its `held` entries, see
    drop_batch); whether there was one."""
    with naming_lock(store):
        return _finish(store, batch_id)


def _finish(store, batch_id: str) -> bool:
    left = [m for m, doc in store.index.pending_held()
            if doc.get("op") == "remove" and doc.get("kind") == "batch" and doc.get("name") == batch_id]
    for manifest in left:
        holders.unhold(store, manifest)
    return bool(left)


def release(store, shas: list[bytes], reason: str) -> tuple[int, int]:
    """Take `hoard put`'s root off objects and tombstone them (`hoard delete --object`);
    returns (released, tombstoned). The tombstone is a request: gc frees an object only if
    no manifest, pin or database row references it when it swaps."""
    shas = list(dict.fromkeys(shas))
    unknown = [s.hex() for s in shas if store.index.lookup(s) is None]
    if unknown:  # checked before anything changes: a typo must not half-apply a deletion
        raise HoardError(f"no object {', '.join(unknown)} in the store; nothing was released (check the sha256: "
                         "`hoard info PREFIX`)", ExitCode.DATA)
    released = marked = 0
    # chunk by chunk (each its own transactions, txnlog.chunked): a release stopped between two
    # leaves objects unrooted and not yet tombstoned — kept by gc — and a re-run finishes it
    for part in chunked(shas, 2):
        released += store.index.unmark(store.index.rooted, part)
        marked += store.index.mark(store.index.deleted, part, reason)
    return released, marked
