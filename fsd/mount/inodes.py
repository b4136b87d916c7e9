"""The files of the mount's inode table, in columns: about 64 bytes per name the kernel knows.

A file node is what a `find` over a view of a million objects leaves behind a million times
(by-hash/ files are numbered by their sha256 and need no row: namespace.py), so it is not a
Python object but a row of flat arrays:

    inode     8 B   array 'Q'   0 marks a free row
    sha256   32 B   bytearray   row r at [32 r, 32 r + 32)
    time      4 B   array 'I'   index into `times` (the few distinct mtimes: 0, each batch's
                                or view's time)
    lookups   4 B   array 'I'   the kernel's count (the part above 2^32, if ever, in `high`)
    parent    8 B   array 'Q'   the directory the kernel first learnt it in (0: none yet)

and an open-addressing index (array 'I', row + 1, 0 = empty; linear probing from the
inode's low bits — the inode is already a hash) kept between 1/3 and 2/3 full: 6–12 bytes
per row. Freed rows are reused. The size is not kept (the index has it); a file's names
are not kept either — only the directories it was named in (`parent`, and the rare others
in `more`), from which the names are derived when they must be invalidated.

Not thread-safe: the namespace's lock. Growing the index re-inserts every row (Python, in
the trio thread): about 0.5 µs a row, once per doubling.
"""

from __future__ import annotations

from array import array

__all__ = ["Files"]

SHA = 32
#: further directories kept per file for invalidation (a file named in more than this many
#: at once is rare; a name not invalidated still expires with the kernel's entry timeout)
MAX_LINKS = 64


class Files:
    def __init__(self) -> None:
        self.ino = array("Q")
        self.sha = bytearray()
        self.time = array("I")
        self.lookups = array("I")
        self.parent = array("Q")
        self.times: list[int] = []
        self._time_ix: dict[int, int] = {}
        self.free = array("I")  # rows to reuse
        self.more: dict[int, set[int]] = {}  # row → further parent inodes
        self.high: dict[int, int] = {}  # row → lookups >> 32 (never, in practice)
        self.count = 0
        self.slots = array("I", bytes(4 * 8))
        self.mask = 7

    def __len__(self) -> int:
        return self.count

    # -- the index ---------------------------------------------------------------------------------
    def row(self, ino: int) -> int:
        """The row holding `ino`, or -1."""
        slots, inos, mask = self.slots, self.ino, self.mask
        b = ino & mask
        while True:
            r = slots[b]
            if not r:
                return -1
            if inos[r - 1] == ino:
                return r - 1
            b = (b + 1) & mask

    def _place(self, ino: int, row: int) -> None:
        slots, mask = self.slots, self.mask
        b = ino & mask
        while slots[b]:
            b = (b + 1) & mask
        slots[b] = row + 1

    def _grow(self) -> None:
        size = (self.mask + 1) * 2
        self.slots, self.mask = array("I", bytes(4 * size)), size - 1
        for r, ino in enumerate(self.ino):
            if ino:
                self._place(ino, r)

    def _unplace(self, ino: int) -> None:
        """Take `ino` out of the index, moving back the entries after it that its slot would
        have held (backward-shift deletion: no tombstones, probes stay short)."""
        slots, inos, mask = self.slots, self.ino, self.mask
        i = ino & mask
        while inos[slots[i] - 1] != ino:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            r = slots[j]
            if not r:
                break
            home = inos[r - 1] & mask
            # the entry at j may fill the hole at i unless its home lies cyclically in (i, j]
            if (i < home <= j) if i <= j else (home > i or home <= j):
                continue
            slots[i] = r
            i = j
        slots[i] = 0

    # -- rows --------------------------------------------------------------------------------------
    def add(self, ino: int, sha: bytes, mtime_ns: int) -> int:
        """A new row for a file the kernel is told of (no lookups yet); its row."""
        if (self.count + 1) * 3 > (self.mask + 1) * 2:
            self._grow()
        t = self._time_ix.get(mtime_ns)
        if t is None:
            t = self._time_ix[mtime_ns] = len(self.times)
            self.times.append(mtime_ns)
        if self.free:
            r = self.free.pop()
            self.ino[r], self.time[r], self.lookups[r], self.parent[r] = ino, t, 0, 0
            self.sha[r * SHA:(r + 1) * SHA] = sha
        else:
            r = len(self.ino)
            self.ino.append(ino)
            self.time.append(t)
            self.lookups.append(0)
            self.parent.append(0)
            self.sha += sha
        self._place(ino, r)
        self.count += 1
        return r

    def remove(self, r: int) -> None:
        self._unplace(self.ino[r])
        self.ino[r] = self.parent[r] = self.lookups[r] = 0
        self.more.pop(r, None)
        self.high.pop(r, None)
        self.free.append(r)
        self.count -= 1

    def sha_of(self, r: int) -> bytes:
        return bytes(self.sha[r * SHA:(r + 1) * SHA])

    def mtime_of(self, r: int) -> int:
        return self.times[self.time[r]]

    def is_(self, r: int, sha: bytes, mtime_ns: int) -> bool:
        """Whether row r is the file (sha, mtime_ns)."""
        return self.times[self.time[r]] == mtime_ns and self.sha[r * SHA:(r + 1) * SHA] == sha

    def count_of(self, r: int) -> int:
        return self.lookups[r] + (self.high.get(r, 0) << 32)

    def looked_up(self, r: int, count: int) -> int:
        """Add `count` (negative: forgotten) to the kernel's count of row r; the new count."""
        if not self.high:  # (always, in practice)
            n = self.lookups[r] + count
            if 0 <= n <= 0xFFFFFFFF:
                self.lookups[r] = n
                return n
        n = max(self.count_of(r) + count, 0)
        self.lookups[r] = n & 0xFFFFFFFF
        if n >> 32:
            self.high[r] = n >> 32
        else:
            self.high.pop(r, None)
        return n

    def link(self, r: int, parent: int) -> None:
        """The kernel knows row r's file by a name in directory `parent`."""
        if not self.parent[r]:
            self.parent[r] = parent
        elif parent != self.parent[r]:
            more = self.more.get(r)
            if more is None:
                more = self.more[r] = set()
            if len(more) < MAX_LINKS - 1:
                more.add(parent)

    def parents(self, r: int) -> list[int]:
        return ([self.parent[r]] if self.parent[r] else []) + sorted(self.more.get(r, ()))

    def rows_with(self, dead: set[bytes] | frozenset[bytes], lo: int, hi: int) -> list[int]:
        """Rows in [lo, hi) whose sha256 is in `dead`."""
        if len(dead) <= 8:  # a few: memchr-speed searches of the column
            out, col, end = [], self.sha, hi * SHA
            for sha in dead:
                pos = col.find(sha, lo * SHA, end)
                while pos >= 0:
                    if pos % SHA == 0 and self.ino[pos // SHA]:
                        out.append(pos // SHA)
                    pos = col.find(sha, pos + 1, end)
            return sorted(out)
        col, inos = self.sha, self.ino
        return [r for r in range(lo, hi) if inos[r] and bytes(col[r * SHA:(r + 1) * SHA]) in dead]
