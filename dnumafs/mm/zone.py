"""Zones and nodes (pgdat): counters and free lists, no behaviour of their own."""
from __future__ import annotations

import math

import attrs

from .constants import HPAGE_ORDER, HUGEPAGE_ORDERS, MAX_ORDER, ZoneType
from .stats import NumaStat


@attrs.define(eq=False)
class Zone:
    """One zone of one node.

    free_area[order] is an insertion-ordered dict used as the free list of that order:
    keys are head pfns, popitem() takes the block freed last, as the kernel's list head.
    pcp[cpu] is that CPU's list of free order-0 pages of this zone.
    """

    nid: int
    type: ZoneType
    zone_start_pfn: int = 0
    spanned_pages: int = 0
    present_pages: int = 0
    managed_pages: int = 0
    free_area: list[dict[int, None]] = attrs.field(factory=lambda: [{} for _ in range(MAX_ORDER)])
    pcp: dict[int, list[int]] = attrs.field(factory=dict)
    pgalloc: int = 0            # pages allocated from this zone (vmstat pgalloc_*)

    @property
    def name(self) -> str:
        return self.type.label

    @property
    def populated(self) -> bool:
        return self.present_pages > 0

    @property
    def reserved_pages(self) -> int:
        return self.present_pages - self.managed_pages

    @property
    def nr_free(self) -> list[int]:
        """Free blocks per order, as /proc/buddyinfo."""
        return [len(fa) for fa in self.free_area]

    @property
    def free_pages(self) -> int:
        """NR_FREE_PAGES: pages in the buddy free lists (not the per-CPU lists)."""
        return sum(len(fa) << order for order, fa in enumerate(self.free_area))

    @property
    def pcp_pages(self) -> int:
        return sum(len(lst) for lst in self.pcp.values())

    def span_include(self, start: int, end: int) -> None:
        """Grow the span to cover [start, end): zones only grow, as on memory online."""
        if self.zone_start_pfn <= start and end <= self.zone_start_pfn + self.spanned_pages:
            return
        if self.spanned_pages == 0:
            self.zone_start_pfn, self.spanned_pages = start, end - start
            return
        lo = min(self.zone_start_pfn, start)
        hi = max(self.zone_start_pfn + self.spanned_pages, end)
        self.zone_start_pfn, self.spanned_pages = lo, hi - lo

    @property
    def zone_end_pfn(self) -> int:
        return self.zone_start_pfn + self.spanned_pages


@attrs.define(frozen=True)
class Watermarks:
    min: int
    low: int
    high: int


@attrs.define(eq=False)
class Pgdat:
    """One node. Its sizes are derived from its zones, never stored twice."""

    nid: int
    zones: dict[int, Zone]              # by zone type (a ZoneType, or its int: zone_idx())
    numastat: NumaStat = attrs.field(factory=NumaStat)
    # Head pfns of each hugepage pool, by order (2 MiB and 1 GiB pages).
    hugepage_pools: dict[int, list[int]] = attrs.field(
        factory=lambda: {order: [] for order in HUGEPAGE_ORDERS})

    @classmethod
    def empty(cls, nid: int) -> Pgdat:
        return cls(nid, {t: Zone(nid, t) for t in ZoneType})

    def populated_zones(self) -> list[Zone]:
        return [z for z in self.zones.values() if z.populated]

    @property
    def present_pages(self) -> int:
        return sum(z.present_pages for z in self.zones.values())

    @property
    def managed_pages(self) -> int:
        return sum(z.managed_pages for z in self.zones.values())

    @property
    def spanned_pages(self) -> int:
        spans = [z for z in self.zones.values() if z.spanned_pages]
        if not spans:
            return 0
        return max(z.zone_end_pfn for z in spans) - min(z.zone_start_pfn for z in spans)

    @property
    def node_start_pfn(self) -> int:
        spans = [z.zone_start_pfn for z in self.zones.values() if z.spanned_pages]
        return min(spans) if spans else 0

    @property
    def free_pages(self) -> int:
        return sum(z.free_pages for z in self.zones.values())

    @property
    def hugepage_pool(self) -> list[int]:
        """The pool of the default hstate (2 MiB), whose size meminfo's HugePages_* show."""
        return self.hugepage_pools[HPAGE_ORDER]

    @property
    def nr_hugepages(self) -> int:
        return len(self.hugepage_pool)

    @property
    def hugetlb_pages(self) -> int:
        """Pages held by every pool, of every size."""
        return sum(len(pool) << order for order, pool in self.hugepage_pools.items())


def zone_watermarks(zone: Zone, total_managed: int) -> Watermarks:
    """Linux's min_free_kbytes = sqrt(16 * lowmem kB), shared by managed pages."""
    if total_managed <= 0 or zone.managed_pages <= 0:
        return Watermarks(0, 0, 0)
    min_free_kb = max(128, min(262144, int(math.isqrt(16 * total_managed * 4))))
    pages_min = (min_free_kb // 4) * zone.managed_pages // total_managed
    # watermark_scale_factor 10: 0.1% of the zone, or a quarter of min, whichever is more.
    step = max(pages_min // 4, zone.managed_pages * 10 // 10000)
    return Watermarks(pages_min, pages_min + step, pages_min + 2 * step)
