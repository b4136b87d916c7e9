"""What the mount keeps fresh in the background, every piece of it off the trio thread.

    w = Watcher(store, reader, ns)
    nursery.start_soon(w.run)        # in the mount's trio nursery
    w.visible(sha) / w.health_text() / w.space()   # answered from memory, never blocking

Each refresh runs in a worker thread of its own (`trio.to_thread`, abandoned on unmount),
so a disk that hangs delays only its own refresh. The two that read the index skip a round
in which nothing was written to it (its last transaction id is the one they last saw), so
an idle store costs them nothing, whatever its size:

* **deletions** (`MARKS_S`): files that became deleted (hidden, or tombstoned and not a
  root) are invalidated in the kernel (every (parent, name) the kernel was told of). What is
  kept — to tell the new deletions from the old, and to answer `visible` — is 16 bytes of
  each deleted object (`DEAD_PREFIX`) in one sorted byte string, not a set (~120 B each);
* **names** (`NAMES_S`): batches and views; a view redefined or removed, or a batch
  removed, is invalidated in the kernel (`pyfuse3.invalidate_entry_async` on its entry
  under `views/`, `batches/`, `sources/<source>/`) — the kernel drops the directory and
  everything it cached below it, so the next lookup sees the new manifest;
* **disks** (`DISKS_S`): hoard.toml's `[[disks]]` and the index's disk records — a disk
  added, replaced or reactivated while mounted gets a read queue and serves reads; the
  reader's open shard files that gc removed or moved are closed;
* **health** (`HEALTH_S`): the `.hoard/health` document: the read queues' figures, and the
  store's (`store.status()`, which reads every shard's record) when the index changed or
  `STATUS_MAX_S` after the last time (its `generated:` line says when). With no-open the
  kernel keeps its pages as any file's: they are invalidated (`pyfuse3.invalidate_inode`,
  from this worker thread — it waits for a READ of the file in flight) whenever it changes;
* **space** (`SPACE_S`): statvfs per disk, each in its own thread (a dying disk's statvfs
  can hang), summed for `statfs`.
"""

from __future__ import annotations

import logging
import threading
import time

import pyfuse3
import trio

from hoardfs.base.units import fmt_bytes

__all__ = ["Watcher", "render_health"]

log = logging.getLogger(__name__)

MARKS_S = 2.0
NAMES_S = 1.0
DISKS_S = 2.0
HEALTH_S = 10.0
#: the store's part of `.hoard/health` is read again at least this often (disks' free space,
#: which changes without the index) — else only when something was written to the index
STATUS_MAX_S = 60.0
SPACE_S = 5.0
#: bytes of each deleted object's sha256 kept between rounds (as `dropped` keeps them): two
#: objects sharing 128 bits are no accident
DEAD_PREFIX = 16


class Watcher:
    def __init__(self, store, reader, ns, mode: str = "", no_open: bool = False) -> None:
        self.store, self.reader, self.ns = store, reader, ns
        #: how files are opened (a line of `.hoard/health`), and whether the kernel keeps its pages
        self.mode, self.no_open = mode, no_open
        #: the deleted objects at the last deletions round: their first DEAD_PREFIX bytes, sorted
        self.dead = b""
        self.unnamed: frozenset[bytes] = frozenset()  # dead objects whose names are still to invalidate
        #: the index's last transaction id each index refresh saw (-1: none yet)
        self.seen: dict[str, int] = {"marks": -1, "names": -1, "health": -1}
        self._status, self._status_at = b"", 0.0  # the store's part of .hoard/health, and when (monotonic)
        self.health = b"starting\n"
        self.names: tuple[dict, dict] | None = None
        self.free: dict[str, tuple[int, int]] = {}
        self._statting: dict[str, threading.Thread] = {}
        self.refreshed: dict[str, float] = {}

    # -- answers (the trio thread) -----------------------------------------------------------------
    def visible(self, sha: bytes) -> bool:
        """Not deleted: type A (hidden) and type B (tombstoned) objects are not shown. From the
        last deletions round (a binary search of `dead`: no index read for the objects shown,
        nothing at all while none is deleted); one it named is asked of the index (shown again
        since, or an object sharing 128 bits with a deleted one: no accident)."""
        dead, k = self.dead, DEAD_PREFIX
        if not dead:
            return True
        p, lo, hi = sha[:k], 0, len(dead) // k
        while lo < hi:
            mid = (lo + hi) // 2
            if dead[mid * k:mid * k + k] < p:
                lo = mid + 1
            else:
                hi = mid
        return dead[lo * k:lo * k + k] != p or self.store.index.shown(sha)

    def health_text(self) -> bytes:
        return self.health

    def space(self) -> tuple[int, int]:
        """(total, free) bytes over the disks, as last measured."""
        vals = list(self.free.values())
        return sum(v[0] for v in vals), sum(v[1] for v in vals)

    # -- one refresh each (worker threads) -------------------------------------------------------
    def _last_txn(self) -> int:
        """The index's last transaction id (a round reads it first and notes it in `seen` when
        done: a write during the round, or a round that failed, brings another round)."""
        return self.store.index.env.info()["last_txnid"]

    def refresh_marks(self) -> list[tuple[int, bytes]]:
        txn = self._last_txn()
        if txn == self.seen["marks"] and not self.unnamed:
            return []
        first = self.seen["marks"] < 0
        self.dead, found = _new_among(self.dead, self.store.index.iter_unshown())
        self.seen["marks"] = txn
        if first:  # (before the mount serves: the kernel knows no name yet)
            return []
        # a round whose search fails hands its objects to the next one
        self.unnamed = newly = frozenset(found) | self.unnamed
        out = self.ns.with_object(newly) if newly else []
        self.unnamed = frozenset()
        return out

    def refresh_names(self) -> list[tuple[int, bytes]]:
        txn = self._last_txn()
        if txn == self.seen["names"]:
            return []
        idx = self.store.index
        views = {n: info["manifest"] for n, info in idx.iter_views()}
        batches = {b: (info["manifest"], info.get("source", "unknown")) for b, info in idx.iter_batches()}
        old, self.names = self.names, (views, batches)
        self.seen["names"] = txn
        if old is None:
            return []
        out = []
        ino = self.ns.known_inode
        for name, manifest in old[0].items():
            if views.get(name) != manifest and (p := ino(("dir", "views"))):
                out.append((p, name.encode()))
        for b, (manifest, source) in old[1].items():
            if batches.get(b, (None,))[0] != manifest:
                for key in (("dir", "batches"), ("dir", "source", source)):
                    if p := ino(key):
                        out.append((p, b.encode()))
        return out

    def refresh_disks(self) -> bool:
        self.reader.close_shards()  # the shard files gc removed are not kept open
        changed = self.store.refresh_disks()
        if changed:
            self.reader.sync_disks()
            log.info("mount: disks now %s", ", ".join(f"{r.label} ({r.state.value})"
                                                       for r in self.store.records.values()))
        return changed

    def refresh_health(self) -> None:
        txn = self._last_txn()
        if txn != self.seen["health"] or time.monotonic() - self._status_at >= STATUS_MAX_S:
            self._status, self._status_at = render_health(self.store), time.monotonic()
            self.seen["health"] = txn
        lines = [f"read queue {label}: {q['pending']} waiting, {q['pending_ahead']} ahead, "
                 f"{q['seconds_per_read'] * 1000:.1f} ms/read, {q['served']} served"
                 for label, q in sorted(self.reader.statistics().items())]
        if self.mode:
            lines.append(f"mount: {self.mode}")
        health, self.health = self.health, self._status + "".join(f"{line}\n" for line in lines).encode()
        if self.no_open and self.health != health and (ino := self.ns.known_inode(("health",))):
            try:
                pyfuse3.invalidate_inode(ino)
            except OSError:  # (ENOENT: the kernel forgot it meanwhile)
                pass

    def refresh_space(self) -> None:
        for uuid, disk in list(self.store.disks.items()):
            t = self._statting.get(uuid)
            if t is not None and t.is_alive():
                continue  # still stuck in the last statvfs: its old figure stays
            t = threading.Thread(target=self._statvfs, args=(uuid, disk), name=f"statvfs-{disk.label}", daemon=True)
            self._statting[uuid] = t
            t.start()

    def _statvfs(self, uuid: str, disk) -> None:
        try:
            self.free[uuid] = (disk.total_bytes(), disk.free_bytes(0))
        except OSError:
            self.free.pop(uuid, None)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for name, every, fn in (("marks", MARKS_S, self.refresh_marks), ("names", NAMES_S, self.refresh_names),
                                    ("disks", DISKS_S, self.refresh_disks), ("health", HEALTH_S, self.refresh_health),
                                    ("space", SPACE_S, self.refresh_space)):
                nursery.start_soon(self._every, name, every, fn)

    async def _every(self, name: str, every: float, fn) -> None:
        while True:
            try:
                out = await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except Exception:  # a refresh that fails is logged and retried
                log.exception("mount: refreshing %s failed", name)
                out = None
            self.refreshed[name] = time.monotonic()
            if isinstance(out, list):
                for parent, child in out:
                    pyfuse3.invalidate_entry_async(parent, child, ignore_enoent=True)
                if out:
                    log.info("mount: %s changed: %d kernel entries invalidated", name, len(out))
            await trio.sleep(every)


def _new_among(old: bytes, dead) -> tuple[bytes, list[bytes]]:
    """(the DEAD_PREFIX-byte prefixes of `dead` — sha256s in order — as one sorted byte string,
    the objects of `dead` whose prefix `old`, such a string from the last round, lacks)."""
    kept, newly, i, n, k = bytearray(), [], 0, len(old), DEAD_PREFIX
    for sha in dead:
        p = sha[:k]
        while i < n and old[i:i + k] < p:
            i += k
        if i >= n or old[i:i + k] != p:
            newly.append(sha)
        kept += p
    return bytes(kept), newly


def render_health(store) -> bytes:
    """`.hoard/health`: a few lines about the store."""
    try:
        st = store.status()
    except Exception as e:  # the health file must always answer
        return f"status unavailable: {e}\n".encode()
    lines = [f"objects: {st['objects']}"]
    for d in st["disks"]:
        lines.append(f"disk {d['label']}: {d['state']}" + (f" ({d['reason']})" if d["reason"] else "")
                     + (f", {fmt_bytes(d['free_bytes'])} free" if "free_bytes" in d else ""))
    lag = st["replication"]
    lines.append(f"shards below replica target: {lag['shards_below_target']}; at risk: {len(lag['at_risk'])}")
    lines.append(f"batches: {len(store.index.iter_batches())}; views: {len(store.index.iter_views())}")
    lines.append(f"generated: {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return ("\n".join(lines) + "\n").encode()
