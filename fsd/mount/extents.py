"""The mount's memory of shard bytes: byte ranges of shards kept for the reader coming to
them (what read-ahead fetched, and a few records a read fetched alone), LRU by bytes; and
the page bitmaps the reader keeps of what the kernel's page cache holds of an open shard.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict


def set_bits(bits: bytearray, first: int, last: int) -> None:
    """Set bits first..last (growing `bits` as needed)."""
    if len(bits) <= last >> 3:
        bits.extend(bytes((last >> 3) + 1 - len(bits)))
    for i in range(first, last + 1):
        bits[i >> 3] |= 1 << (i & 7)


def all_set(bits: bytearray, first: int, last: int) -> bool:
    return len(bits) > last >> 3 and all(bits[i >> 3] >> (i & 7) & 1 for i in range(first, last + 1))


class Extents:
    """Byte ranges of shards kept in memory, LRU by bytes, in two parts: what read-ahead
    fetched (`budget`), and records a read that continued nothing fetched (`lone_budget`,
    small: see LONE_BYTES). Not thread-safe: the reader's lock."""

    def __init__(self, budget: int, lone_budget: int = 0) -> None:
        self.budget, self.used = budget, 0
        self.lone_budget, self.lone_used = lone_budget, 0
        self.lru: OrderedDict[tuple[bytes, int], tuple[int, bytes]] = OrderedDict()
        self.lone: OrderedDict[tuple[bytes, int], tuple[int, bytes]] = OrderedDict()
        self.starts: dict[bytes, list[int]] = {}

    def add(self, sid: bytes, start: int, data: bytes, lone: bool = False) -> None:
        key = (sid, start)
        old, was_lone = self.lru.pop(key, None), False
        if old is None:
            old = self.lone.pop(key, None)
            was_lone = old is not None
        if old is not None:
            if old[0] >= start + len(data):
                (self.lone if was_lone else self.lru)[key] = old
                return
            if was_lone:
                self.lone_used -= len(old[1])
            else:
                self.used -= len(old[1])
        else:
            bisect.insort(self.starts.setdefault(sid, []), start)
        if lone:
            self.lone[key] = (start + len(data), data)
            self.lone_used += len(data)
        else:
            self.lru[key] = (start + len(data), data)
            self.used += len(data)
        while self.used > self.budget and self.lru:
            (osid, ostart), (_end, odata) = self.lru.popitem(last=False)
            self.used -= len(odata)
            self._unindex(osid, ostart)
        while self.lone_used > self.lone_budget and self.lone:
            (osid, ostart), (_end, odata) = self.lone.popitem(last=False)
            self.lone_used -= len(odata)
            self._unindex(osid, ostart)

    def _touch(self, key: tuple[bytes, int]) -> None:
        (self.lru if key in self.lru else self.lone).move_to_end(key)

    def _get(self, key: tuple[bytes, int]) -> tuple[int, bytes]:
        got = self.lru.get(key)
        return self.lone[key] if got is None else got

    def _unindex(self, sid: bytes, start: int) -> None:
        starts = self.starts.get(sid)
        if starts:
            i = bisect.bisect_left(starts, start)
            if i < len(starts) and starts[i] == start:
                starts.pop(i)
            if not starts:
                del self.starts[sid]

    def _covering(self, sid: bytes, pos: int):
        starts = self.starts.get(sid)
        if not starts:
            return None
        i = bisect.bisect_right(starts, pos) - 1
        best = None
        for j in range(i, max(i - 4, -1), -1):  # overlapping extents are few: look a little back
            s = starts[j]
            end, data = self._get((sid, s))
            if end > pos and (best is None or end > best[1]):
                best = (s, end, data)
        return best

    def span(self, sid: bytes, lo: int, hi: int) -> bytes | None:
        parts, pos = [], lo
        while pos < hi:
            ext = self._covering(sid, pos)
            if ext is None:
                return None
            s, end, data = ext
            self._touch((sid, s))
            take = min(hi, end)
            parts.append(data[pos - s:take - s])
            pos = take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def covered(self, sid: bytes, lo: int, hi: int) -> int:
        """How far from `lo` (up to `hi`) the cache holds the bytes without a gap."""
        pos = lo
        while pos < hi and (ext := self._covering(sid, pos)) is not None:
            pos = ext[1]
        return min(pos, hi)

    def has(self, sid: bytes, pos: int) -> bool:
        return self._covering(sid, pos) is not None

    def evict(self, sid: bytes, lo: int, hi: int) -> None:
        for s in list(self.starts.get(sid, [])):
            end, data = self._get((sid, s))
            if s < hi and end > lo:
                if self.lru.pop((sid, s), None) is not None:
                    self.used -= len(data)
                else:
                    del self.lone[(sid, s)]
                    self.lone_used -= len(data)
                self._unindex(sid, s)
