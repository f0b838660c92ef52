"""memlayout: the pfn -> node map of one layout, as inclusive ranges."""
from __future__ import annotations

import bisect
import errno

import attrs
import numpy as np

from .stats import DnumaStats, SummedStats


class MemlayoutError(OSError):
    """A rejected memlayout operation; errno is what the debugfs write returns."""


@attrs.define(eq=False)
class Memlayout:
    """Non-overlapping [start_pfn, end_pfn] -> nid ranges, sorted by start.

    Lookups bisect the sorted starts (O(log n)) behind a last-hit cache, and count
    hits and misses in this layout's statistics.
    """

    id: int
    starts: list[int] = attrs.field(factory=list)
    ends: list[int] = attrs.field(factory=list)
    nids: list[int] = attrs.field(factory=list)
    # Counters by node; events that belong to no node are kept under None.
    counters: dict[int | None, DnumaStats] = attrs.field(factory=dict)
    _last: int = -1

    def __len__(self) -> int:
        return len(self.starts)

    def ranges(self) -> list[tuple[int, int, int]]:
        return list(zip(self.starts, self.ends, self.nids))

    def range_nid(self, start: int, end: int) -> int | None:
        """The node of the range that is exactly [start, end], found by bisection."""
        i = bisect.bisect_left(self.starts, start)
        if i < len(self.starts) and self.starts[i] == start and self.ends[i] == end:
            return self.nids[i]
        return None

    def node_ids(self) -> set[int]:
        return set(self.nids)

    def add_range(self, start: int, end: int, nid: int) -> None:
        """Insert [start, end] -> nid; EINVAL if start > end, EEXIST on overlap."""
        if start > end:
            raise MemlayoutError(errno.EINVAL, f"start {start:#x} > end {end:#x}")
        i = bisect.bisect_left(self.starts, start)
        if i > 0 and self.ends[i - 1] >= start:
            raise MemlayoutError(errno.EEXIST, "range overlaps a pending range")
        if i < len(self.starts) and self.starts[i] <= end:
            raise MemlayoutError(errno.EEXIST, "range overlaps a pending range")
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.nids.insert(i, nid)
        self._last = -1

    def lookup(self, pfn: int, at: int | None = None) -> int | None:
        """The node of pfn in this layout, or None; the cache hit or miss is counted in this
        layout's statistics, at node `at` (the page's present node) if given."""
        i = self._last
        if i >= 0 and self.starts[i] <= pfn <= self.ends[i]:
            self.counter(at).counts["cache-hit"] += 1
            return self.nids[i]
        self.counter(at).counts["cache-miss"] += 1
        i = bisect.bisect_right(self.starts, pfn) - 1
        if i >= 0 and pfn <= self.ends[i]:
            self._last = i
            return self.nids[i]
        return None

    def count(self, name: str, n: int, nid: int | None = None) -> None:
        self.counter(nid).counts[name] += n

    def counter(self, nid: int | None) -> DnumaStats:
        stats = self.counters.get(nid)
        if stats is None:
            stats = self.counters[nid] = DnumaStats()
        return stats

    @property
    def stats(self) -> SummedStats:
        return SummedStats(self.counters.values)

    @property
    def node_stats(self) -> dict[int, DnumaStats]:
        return {nid: self.counters[nid] for nid in sorted(n for n in self.counters if n is not None)}

    def node_map(self, node: np.ndarray, first: int = 0) -> np.ndarray:
        """The node of each pfn first..first+len(node)-1 under this layout.

        node holds those pfns' present nodes; pfns outside every range keep them.
        """
        out = node.copy()
        end = first + len(node)
        i = max(0, bisect.bisect_right(self.starts, first) - 1)
        for s, e, nid in zip(self.starts[i:], self.ends[i:], self.nids[i:]):
            if s >= end:
                break
            if e >= first:
                out[max(s, first) - first:min(e + 1, end) - first] = nid
        return out

    def covers(self, first: int, last: int) -> int | None:
        """The node of the one range holding all of [first, last], if there is one."""
        i = bisect.bisect_right(self.starts, first) - 1
        if i >= 0 and last <= self.ends[i]:
            return self.nids[i]
        return None
