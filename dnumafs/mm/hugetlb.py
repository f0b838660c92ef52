"""Per-node pools of hugepages of each size (mm/hugetlb.c's hstates): 2 MiB pages (order 9)
taken from and given back to the buddy allocator as any allocation, and 1 GiB pages (order
18), which are above MAX_ORDER and so taken as alloc_contig_pages() takes them: a naturally
aligned range of 2^18 pfns in one zone of the node whose every page is free in max-order
blocks (MAX_ORDER - 1) on that zone's free lists is taken off the lists whole; freed, it goes
back as those blocks, each through the usual free path (so a page marked for a new node by a
commit is transplanted then). The caller holds the machine lock."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import page_alloc
from .constants import MAX_ORDER, PAGE_SIZE, PG_HEAD, PG_HUGETLB, ZoneType
from .zone import Zone, zone_watermarks

if TYPE_CHECKING:
    from .machine import Machine

MAX_BLOCK = MAX_ORDER - 1


def order_size_kb(order: int) -> int:
    return (PAGE_SIZE << order) // 1024


def set_max_huge_pages(m: Machine, nid: int, order: int, count: int) -> int:
    """Grow or shrink nid's pool of this order towards count through nid's own zones;
    returns its size. A pool that cannot grow as far is not an error, as in Linux."""
    pool = m.pgdat[nid].hugepage_pools[order]
    cpu = m.node_first_cpu(nid)
    flags = m.mem_map.flags
    while len(pool) < count:
        if order < MAX_ORDER:
            pfn = page_alloc.get_page_from_freelist(m, order, nid, cpu, interleave=False,
                                                    thisnode=True)
        else:
            pfn = alloc_contig_pages(m, nid, order)
        if pfn is None:
            m.vm_events.htlb_buddy_alloc_fail += 1
            break
        m.vm_events.htlb_buddy_alloc_success += 1
        flags[pfn] |= PG_HUGETLB
        pool.append(pfn)
    while len(pool) > count:
        pfn = pool.pop()
        flags[pfn] &= ~PG_HUGETLB & 0xFF
        if order < MAX_ORDER:
            page_alloc.free_pages(m, pfn, cpu)      # update_and_free_page()
        else:
            free_contig_range(m, pfn, order)
    return len(pool)


def set_global_huge_pages(m: Machine, order: int, count: int) -> int:
    """Grow the pools one page at a time over the nodes with memory in turn (as
    alloc_pool_huge_page() interleaves them) while any node can grow, or shrink them one page
    at a time from the node holding most (the highest id of those that tie, undoing the
    growth); returns the total reached."""
    nodes = m.nodes_with_memory()
    pools = {nid: m.pgdat[nid].hugepage_pools[order] for nid in m.online_nodes()}
    total = sum(map(len, pools.values()))
    while total > count:
        nid = max(pools, key=lambda n: (len(pools[n]), n))
        set_max_huge_pages(m, nid, order, len(pools[nid]) - 1)
        total -= 1
    growing = list(nodes)
    while total < count and growing:
        for nid in list(growing):
            if total >= count:
                break
            want = len(pools[nid]) + 1
            if set_max_huge_pages(m, nid, order, want) == want:
                total += 1
            else:
                growing.remove(nid)
    return total


def alloc_contig_pages(m: Machine, nid: int, order: int) -> int | None:
    """The lowest aligned range of 2^order pfns wholly free in max-order blocks of one of
    nid's zones (highest zone first, as the zonelist), taken off the free lists as one
    allocated block; None if no zone has one, or taking it would cross the zone's min
    watermark."""
    mm = m.mem_map
    n = 1 << order
    for ztype in reversed(ZoneType):
        zone = m.pgdat[nid].zones[ztype]
        if zone.free_pages - n < zone_watermarks(zone, m.managed_at_boot).min:
            continue
        lo = -(-zone.zone_start_pfn // n) * n
        for start in range(lo, zone.zone_end_pfn - n + 1, n):
            if _wholly_free(zone, start, n):
                for head in range(start, start + n, 1 << MAX_BLOCK):
                    page_alloc.del_page_from_free_list(mm, zone, head, MAX_BLOCK)
                page_alloc.prep_new_page(mm, zone, start, order)
                return start
    return None


def _wholly_free(zone: Zone, start: int, n: int) -> bool:
    """Whether [start, start + n) is all max-order blocks on zone's free lists."""
    free = zone.free_area[MAX_BLOCK]
    return all(head in free for head in range(start, start + n, 1 << MAX_BLOCK))


def free_contig_range(m: Machine, pfn: int, order: int) -> None:
    """Give a range of alloc_contig_pages() back, one max-order block at a time."""
    mm = m.mem_map
    mm.flags[pfn] &= ~PG_HEAD & 0xFF
    m.boot_allocs.pop(pfn, None)
    m.vm_events.pgfree += 1 << order
    for head in range(pfn, pfn + (1 << order), 1 << MAX_BLOCK):
        page_alloc.free_block(m, head, MAX_BLOCK, None)

