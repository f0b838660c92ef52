"""Per-node pools of 2 MiB hugepages taken from and given back to the buddy allocator
(mm/hugetlb.c). The caller holds the machine lock."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import page_alloc
from .constants import HPAGE_ORDER, PG_HUGETLB

if TYPE_CHECKING:
    from .machine import Machine


def set_max_huge_pages(m: Machine, nid: int, count: int) -> int:
    """Grow or shrink nid's pool towards count through nid's own zones; returns its size.
    A pool that cannot grow as far is not an error, as in Linux."""
    pool = m.pgdat[nid].hugepage_pool
    cpu = m.node_first_cpu(nid)
    flags = m.mem_map.flags
    while len(pool) < count:
        pfn = page_alloc.get_page_from_freelist(m, HPAGE_ORDER, nid, cpu, interleave=False,
                                                thisnode=True)
        if pfn is None:
            m.vm_events.htlb_buddy_alloc_fail += 1
            break
        m.vm_events.htlb_buddy_alloc_success += 1
        flags[pfn] |= PG_HUGETLB
        pool.append(pfn)
    while len(pool) > count:
        pfn = pool.pop()
        flags[pfn] &= ~PG_HUGETLB & 0xFF
        page_alloc.free_pages(m, pfn, cpu)      # update_and_free_page()
    return len(pool)
