"""Zones and nodes (pgdat): counters and free lists, no behaviour of their own."""
from __future__ import annotations

import math

import attrs

from .constants import MAX_ORDER, ZoneType
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
    numastat: NumaStat = attrs.field(factory=NumaStat)     # zone_statistics() counts here

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
    promo: int          # WMARK_PROMO: high and one step more (memory tiering's target)


@attrs.define(eq=False)
class Pgdat:
    """One node. Its sizes are derived from its zones, never stored twice."""

    nid: int
    zones: dict[int, Zone]              # by zone type (a ZoneType, or its int: zone_idx())
    hugepage_pool: list[int] = attrs.field(factory=list)   # head pfns, order HPAGE_ORDER

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
    def numastat(self) -> NumaStat:
        """The node's allocation statistics: its zones' (Linux's sum_zone_numa_event_state())."""
        out = NumaStat()
        for zone in self.zones.values():
            out.add(zone.numastat)
        return out

    @property
    def nr_hugepages(self) -> int:
        return len(self.hugepage_pool)


def zone_watermarks(zone: Zone, total_managed: int) -> Watermarks:
    """Linux's min_free_kbytes = sqrt(16 * lowmem kB), shared by managed pages."""
    if total_managed <= 0:
        return Watermarks(0, 0, 0, 0)
    min_free_kb = max(128, min(262144, int(math.isqrt(16 * total_managed * 4))))
    share = (min_free_kb // 4) * zone.managed_pages // total_managed
    # ZONE_MOVABLE keeps no reserve of its own (__setup_per_zone_wmarks): a small min,
    # clamped to SWAP_CLUSTER_MAX..128, which an empty Movable zone shows as 32.
    if zone.type == ZoneType.MOVABLE:
        pages_min = min(128, max(SWAP_CLUSTER_MAX, zone.managed_pages // 1024))
    elif zone.managed_pages <= 0:
        return Watermarks(0, 0, 0, 0)
    else:
        pages_min = share
    # watermark_scale_factor 10: 0.1% of the zone, or a quarter of its share, whichever is more.
    step = max(share // 4, zone.managed_pages * 10 // 10000)
    return Watermarks(pages_min, pages_min + step, pages_min + 2 * step, pages_min + 3 * step)


# Linux's zone type past the model's: ZONE_DEVICE, which it never populates but lists
# (zoneinfo, lowmem_reserve[]), so MAX_NR_ZONES counts it.
MAX_NR_ZONES = len(ZoneType) + 1
SWAP_CLUSTER_MAX = 32
LOWMEM_RESERVE_RATIO = (256, 256, 32, 0, 0)     # sysctl_lowmem_reserve_ratio, by zone type


def lowmem_reserve(pgdat: Pgdat, ztype: int) -> list[int]:
    """zone->lowmem_reserve[] of pgdat's zone of type ztype (setup_per_zone_lowmem_reserve()):
    what an allocation that could use a higher zone j must leave of this one, the managed
    pages of the zones above it up to j over the zone's ratio; nothing in an empty zone."""
    out = [0] * MAX_NR_ZONES
    ratio = LOWMEM_RESERVE_RATIO[ztype]
    if not ratio or not pgdat.zones[ztype].managed_pages:
        return out
    above = 0
    for j in range(ztype + 1, MAX_NR_ZONES):
        above += pgdat.zones[j].managed_pages if j in pgdat.zones else 0
        out[j] = above // ratio
    return out
