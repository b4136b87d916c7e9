"""A manifest unregistered with its `held` entries (hoardfs.fsd.core.held; Store.register_batch and
register_view hold what a manifest names before registering it), and what a killed process left
of either finished. Every function here is called under `naming_lock`.

    store.register_batch(b, None)                    # its pending `remove` record with it
    unhold(store, manifest)                          # then its entries
    finish(store)                                    # pending records of killed processes (gc, delete)
    referencer(store)(among)                         # which of `among` a registered manifest names
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from hoardfs.base.errors import HoardError
from hoardfs.fsd.core.held import iter_named
from hoardfs.fsd.outputs.manifest import References

__all__ = ["finish", "referencer", "unhold"]

log = logging.getLogger(__name__)

#: what reading a manifest may raise besides HoardError (a manifest that does not decode)
_UNREADABLE = (HoardError, ValueError, KeyError, TypeError)


def unhold(store, manifest_hex: str, shas: Iterable[bytes] | None = None) -> int:
    """Remove the entries of a manifest no longer registered (its pending `remove` record):
    `shas`, what it names, when the caller has them; else it is read — one that cannot be read
    (freed by a gc, its disk gone) by a pass over the whole table (`_unread`)."""
    if store.index.held is None:
        return 0
    try:
        return store.index.unhold(manifest_hex, iter_named(store.get, manifest_hex) if shas is None else shas,
                                  get=store.get)
    except _UNREADABLE as e:
        return _unread(store, manifest_hex, "remove", e)


def _unread(store, manifest_hex: str, op: str, e: Exception) -> int:
    """What reading the manifest was for, done without it: its entries are found by a pass over
    the table (a gc that freed the manifest beside a deletion killed after the unregistration
    left them, and a pending record whose next step, `hoard gc`, never worked)."""
    log.info("manifest %s cannot be read (%s): its held entries are found by a pass over the table", manifest_hex, e)
    return store.index.unhold_unread(manifest_hex, op, get=store.get)


def finish(store) -> int:
    """Remove the `held` entries a killed process left (its pending records): of a batch deleted
    or a view removed or replaced after they were unregistered, of a manifest never registered.
    Returns how many were finished."""
    done = 0
    for manifest, doc in store.index.pending_held():
        op = str(doc.get("op"))
        try:
            store.index.unhold(manifest, iter_named(store.get, manifest), op, get=store.get)
        except _UNREADABLE as e:
            _unread(store, manifest, op, e)
        done += 1
    return done


def referencer(store, departing: str | None = None) -> Callable[[set[bytes]], set[bytes]]:
    """`refs(among)`: which of `among` a registered manifest names — from `held` (a positioning
    per digest), or, for an index not migrated yet, by reading every manifest (References).
    `departing`: a manifest unregistered whose entries are not removed yet (a view that went,
    before `unhold`): its prefix holds only what the registered manifests sharing it name."""
    if store.index.held_ready():
        if departing is None:
            return store.index.held_among
        skip = bytes.fromhex(departing)
        return lambda among: store.index.held_among(among, skip=skip, get=store.get)
    return References(store)
