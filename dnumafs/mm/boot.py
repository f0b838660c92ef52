"""Boot: lay the nodes out, reserve what the kernel keeps, free the rest into the buddy
allocator (memblock_free_all()), and allocate some of it for later (what a running machine
holds as page cache and slab). The caller holds the machine lock."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from . import kinds, page_alloc
from .constants import (
    FIRST_MIB_PAGES,
    KERNEL_IMAGE_PFN,
    MEMMAP_BYTES_PER_PAGE,
    PAGE_SIZE,
    PG_RESERVED,
    ZoneType,
    zone_type_bounds,
)

if TYPE_CHECKING:
    from .machine import Machine


def boot_node(m: Machine, nid: int, start: int, end: int) -> None:
    """Give node nid the pfns [start, end): its zones' sizes, its reserved pages (its memmap
    at the top; on the first node also the first MiB and the kernel image), and free the
    rest, run by run, in maximal aligned blocks."""
    pgdat = m.pgdat[nid]
    max_pfn = m.mem_map.max_pfn
    flags = m.mem_map.page_flags
    for ztype in ZoneType:
        lo, hi = zone_type_bounds(ztype, max_pfn)
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            zone = pgdat.zones[ztype]
            zone.span_include(lo, hi)
            zone.present_pages = zone.managed_pages = hi - lo
    size = end - start
    reserved = [(end - -(-size * MEMMAP_BYTES_PER_PAGE // PAGE_SIZE), end)]   # top-down
    if start == 0:
        reserved.append((0, min(FIRST_MIB_PAGES, size)))
        image = min(2048, size // 32)
        image_start = KERNEL_IMAGE_PFN if KERNEL_IMAGE_PFN + image < size // 2 else FIRST_MIB_PAGES
        reserved.append((image_start, image_start + image))
    for lo, hi in reserved:
        flags[lo:hi] |= PG_RESERVED
    for zone in pgdat.zones.values():
        if not zone.present_pages:
            continue
        lo, hi = zone.zone_start_pfn, zone.zone_end_pfn
        res = (flags[lo:hi] & PG_RESERVED) != 0
        zone.managed_pages -= int(res.sum())
        edges = np.flatnonzero(np.diff(np.concatenate(([True], res, [True])).astype(np.int8)))
        for a, b in zip(edges[0::2], edges[1::2]):
            page_alloc.free_pages_core(m, zone, lo + int(a), lo + int(b))


def boot_allocate(m: Machine, nid: int) -> None:
    """Allocate boot_alloc_percent of the node, in blocks of mixed order, each of a kind
    that a running machine holds in blocks of that order (kinds.boot_kind())."""
    target = int(m.pgdat[nid].managed_pages * m.config.boot_alloc_percent / 100)
    rng = random.Random(m.config.seed * 1000 + nid)
    kind_rng = random.Random(f"kinds {m.config.seed} {nid}")   # apart: orders stay as they were
    cpu = m.node_first_cpu(nid)
    done = 0
    while done < target:
        order = min(rng.randrange(0, 10), (target - done).bit_length() - 1)
        pfn = page_alloc.get_page_from_freelist(m, order, nid, cpu, interleave=False,
                                                thisnode=True)
        if pfn is None:
            break
        m.boot_allocs[pfn] = order
        kinds.charge(m, pfn, order, kinds.boot_kind(order, kind_rng))
        done += 1 << order

