"""A registered manifest that does not read: what it means, and the one step past it.

A batch's or view's manifest is an object (a view-2 or view-3 manifest: with its directory
objects and pages); reading what it names reads them. When that fails, why decides the step:

- an object of it has a replica on a disk out of service (missing, or failed and no longer
  attached): bring the disk back — nothing is lost, nothing is to be dropped;
- every replica that exists was read and none holds it whole (rot at the same record in each:
  nothing mends it, `hoard verify --repair` included), it is in no shard, or its bytes — which
  match their sha256 — are no manifest: the registration can only be dropped, and
  `hoard delete --batch` / `hoard view rm` do that after saying so, tombstoning nothing it
  named — what it named stays stored (a leak, never a loss), since what it named is not known.

`judge` tells the two apart for every reader of registered manifests: deletion, gc, the `held`
fill of an index migration or rebuild, `hoard check`.
"""

from __future__ import annotations

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.held import ManifestNotRead
from hoardfs.fsd.core.records import DataError, ObjectNotFound

__all__ = ["UNREADABLE", "ManifestUnreadable", "Reading", "judge", "unregister_step"]

#: what reading a registered manifest raises when it does not read (a newer format, an object
#: too large to read into memory and a database that does not answer are other errors)
UNREADABLE = (DataError, ObjectNotFound, ManifestNotRead, ValueError, KeyError, TypeError)


class ManifestUnreadable(HoardError):
    """A registered manifest no replica reads (see the module docstring): only dropping its
    registration gets past it."""

    exit_code = ExitCode.DATA

    def __init__(self, kind: str, name: str, manifest_hex: str, why: str, lost: bool = False) -> None:
        if lost:  # (the index lost it: a disk may still hold it, and a rebuild of the index finds it)
            step = f"`hoard index rebuild` finds it again if a disk holds it; else {unregister_step(kind, name)}"
            super().__init__(f"{kind} {name}: its manifest {manifest_hex} cannot be read ({why}): {step}")
        else:
            super().__init__(f"{kind} {name}: its manifest {manifest_hex} cannot be read from any replica ({why}); "
                             f"nothing mends it: {unregister_step(kind, name)}")
        self.kind, self.name, self.manifest, self.why = kind, name, manifest_hex, why


def unregister_step(kind: str, name: str) -> str:
    """The command that unregisters a batch or view whose manifest no replica reads, and what it does."""
    cmd = f"hoard delete --batch {name}" if kind == "batch" else f"hoard view rm {name}"
    return f"`{cmd}` unregisters it, tombstoning nothing it named (what it named stays stored)"


class Reading:
    """`get` for reading one manifest (`store.get`) that remembers the last object it asked for:
    the one that failed, when the reading fails."""

    def __init__(self, store) -> None:
        self.store = store
        self.last = ""

    def __call__(self, sha_hex: str) -> bytes:
        self.last = sha_hex
        data: bytes = self.store.get(sha_hex)
        return data


def judge(store, kind: str, name: str, manifest_hex: str, err: Exception, asked: str = "") -> HoardError:
    """What a failed reading of the registered manifest `manifest_hex` means (`err`, raised
    while reading object `asked`): ManifestUnreadable when nothing can read it, else a
    HoardError naming the disks to bring back."""
    if isinstance(err, ManifestNotRead):
        asked = err.asked or asked
        err = err.err
    why = err.message if isinstance(err, HoardError) else f"{type(err).__name__}: {err}"
    if not isinstance(err, UNREADABLE):  # (not a reading that failed: said as it is)
        return err if isinstance(err, HoardError) else HoardError(
            f"{kind} {name}: its manifest {manifest_hex} cannot be read ({why})", ExitCode.DATA)
    if isinstance(err, (ValueError, KeyError, TypeError)):
        return ManifestUnreadable(kind, name, manifest_hex, f"it does not decode as a manifest: {why}")
    sha = bytes.fromhex(asked or manifest_hex)
    loc = store.index.lookup(sha)
    meta = store.index.get_shard(loc.shard_id) if loc is not None else None
    if meta is None:
        return ManifestUnreadable(kind, name, manifest_hex, f"object {sha.hex()} of it is in no shard the index "
                                  "knows", lost=True)
    readable = {d.uuid for d in store.sources(meta)}
    away = [store.records[u].label if u in store.records else u for u in meta.replicas if u not in readable]
    if away:
        return HoardError(f"{kind} {name}: its manifest {manifest_hex} does not read ({why}), and disk "
                          f"{', '.join(away)}, which holds a replica of it, is not in service: bring it back "
                          "(`hoard health` says how), then run this again", ExitCode.UNAVAILABLE)
    return ManifestUnreadable(kind, name, manifest_hex, why)
