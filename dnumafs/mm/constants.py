"""Fixed facts of the modelled x86-64 machine."""
from __future__ import annotations

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_ORDER = 11                  # free_area[0..10], as Linux before 6.4
HPAGE_ORDER = 9                 # 2 MiB hugepages
HPAGE_SIZE_KB = (PAGE_SIZE << HPAGE_ORDER) // 1024
LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20


class ZoneType(enum.IntEnum):
    """Zone types in Linux's order (lowest first). The kernel zones are a pfn's by its
    address; MOVABLE has no range of its own: it holds the blocks onlined into it."""

    DMA = 0
    DMA32 = 1
    NORMAL = 2
    MOVABLE = 3

    @property
    def label(self) -> str:
        return ("DMA", "DMA32", "Normal", "Movable")[self]


# First pfn past each zone type: DMA below 16 MiB, DMA32 below 4 GiB.
ZONE_END_PFN = {
    ZoneType.DMA: (16 << 20) >> PAGE_SHIFT,
    ZoneType.DMA32: (4 << 30) >> PAGE_SHIFT,
    ZoneType.NORMAL: 1 << 52,
}


_DMA_END = ZONE_END_PFN[ZoneType.DMA]
_DMA32_END = ZONE_END_PFN[ZoneType.DMA32]


def zone_idx(pfn: int) -> int:
    """The zone type of pfn as a plain int (page_zonenum()): the per-page paths index a
    node's zones with it, and an int compares and indexes faster than the enum."""
    return 0 if pfn < _DMA_END else 1 if pfn < _DMA32_END else 2


def page_zonenum(flags: int, pfn: int) -> int:
    """page_zonenum(): the zone type of a page of these flags at pfn, as an int."""
    return 3 if flags & PG_MOVABLE_ZONE else zone_idx(pfn)


def zone_type_of(pfn: int) -> ZoneType:
    return ZoneType(zone_idx(pfn))


def zone_type_bounds(ztype: ZoneType, max_pfn: int) -> tuple[int, int]:
    """[first, last+1) pfns of a kernel zone type on a machine of max_pfn pages; none for
    MOVABLE, which boot never populates."""
    if ztype == ZoneType.MOVABLE:
        return max_pfn, max_pfn
    lo = 0 if ztype == ZoneType.DMA else ZONE_END_PFN[ZoneType(ztype - 1)]
    return min(lo, max_pfn), min(ZONE_END_PFN[ztype], max_pfn)


# Page flags, one byte per pfn.
PG_BUDDY = 0x01        # head of a free block on a free_area list (order in page_order)
PG_RESERVED = 0x02     # reserved at boot, never freed
PG_LOOKUP_NODE = 0x04  # allocated page whose node differs from the layout: look up on free
PG_PCP = 0x08          # free order-0 page on a per-CPU list
PG_HEAD = 0x10         # head of an allocated block (order in page_order)
PG_HUGETLB = 0x20      # head of a block owned by a node's hugepage pool
PG_MOVABLE_ZONE = 0x40  # in ZONE_MOVABLE (its memory block was onlined movable)
PG_OFFLINE = 0x80      # in an offline memory block: in no zone, owned by no one

# Per-CPU page lists (struct per_cpu_pages): fixed for every zone, as the model has no
# zone_batchsize() to scale them by.
PCP_BATCH = 16          # pages moved between a per-CPU list and the buddy lists at once
PCP_HIGH = 64           # a per-CPU list longer than this gives a batch back

# Boot.
MIN_NODE_PAGES = (4 << 20) >> PAGE_SHIFT    # the smallest node the model boots
MAX_CPUS = 256          # nodeN/cpumap has no more words than a real kernel's CPU mask
MAX_POSSIBLE_NODES = 64
MEMMAP_BYTES_PER_PAGE = 64                  # sizeof(struct page): the memmap each node reserves
KERNEL_IMAGE_PFN = (16 << 20) >> PAGE_SHIFT
FIRST_MIB_PAGES = (1 << 20) >> PAGE_SHIFT   # reserved below the kernel, as on x86-64
PAGE_ALLOC_COSTLY_ORDER = 3                 # the largest order slab asks the buddy allocator for
