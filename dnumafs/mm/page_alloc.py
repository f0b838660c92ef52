"""The buddy allocator and the per-CPU lists over the page arrays (mm/page_alloc.c).

Functions take the machine (whose lock the caller holds) or only the page arrays and a zone,
and are named after their kernel counterparts. Freeing a page marked PG_LOOKUP_NODE hands it to
dnuma, which transplants it into its new node's zone.
"""
from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

import attrs
import numpy as np

from . import dnuma, kinds
from .constants import (
    MAX_ORDER,
    PCP_BATCH,
    PCP_HIGH,
    PG_BUDDY,
    PG_HEAD,
    PG_LOOKUP_NODE,
    PG_PCP,
    ZoneType,
    page_zonenum,
)
from .zone import Zone, zone_watermarks

if TYPE_CHECKING:
    from .machine import Machine


@attrs.define(eq=False)
class MemMap:
    """Page metadata, one entry per pfn (the kernel's array of struct page).

      node[pfn]   the node the page belongs to now: a byte while every possible node id
                  fits in one (<= 255), else two (node ids up to MAX_NUMNODES - 1)
      flags[pfn]  PG_* bits from constants
      order[pfn]  order of the free or allocated block whose head is pfn

    Each is a bytearray (node a 16-bit array when wide), which the per-page paths index
    directly (an item costs a fraction of a numpy scalar access), with a numpy view of it
    (page_node, page_flags, page_order) for the whole-array work of a commit and of the
    checker.
    """

    node: bytearray | array[int]
    flags: bytearray
    order: bytearray
    page_node: np.ndarray = attrs.field(init=False)
    page_flags: np.ndarray = attrs.field(init=False)
    page_order: np.ndarray = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        wide = isinstance(self.node, array)
        self.page_node = np.frombuffer(self.node, dtype=np.uint16 if wide else np.uint8)
        self.page_flags = np.frombuffer(self.flags, dtype=np.uint8)
        self.page_order = np.frombuffer(self.order, dtype=np.uint8)

    @classmethod
    def alloc(cls, max_pfn: int, nr_node_ids: int = 256) -> MemMap:
        """Page metadata for max_pfn pages whose node ids are below nr_node_ids."""
        node = bytearray(max_pfn) if nr_node_ids <= 256 else array("H", [0]) * max_pfn
        return cls(node, bytearray(max_pfn), bytearray(max_pfn))

    @property
    def max_pfn(self) -> int:
        return len(self.flags)


def page_zone(m: Machine, pfn: int) -> Zone:
    """The zone the page belongs to now: its node's zone of its type."""
    mm = m.mem_map
    return m.pgdat[mm.node[pfn]].zones[page_zonenum(mm.flags[pfn], pfn)]


# --- the free lists --------------------------------------------------------------------------

def add_to_free_list(mm: MemMap, zone: Zone, pfn: int, order: int) -> None:
    zone.free_area[order][pfn] = None
    mm.flags[pfn] |= PG_BUDDY
    mm.order[pfn] = order


def del_page_from_free_list(mm: MemMap, zone: Zone, pfn: int, order: int) -> None:
    del zone.free_area[order][pfn]
    mm.flags[pfn] &= ~PG_BUDDY & 0xFF


def free_one_page(mm: MemMap, zone: Zone, pfn: int, order: int) -> None:
    """__free_one_page(): merge with the buddy while it is free, of the same order, in the
    same zone (a buddy on another node's list is in another zone), then list the block."""
    free_area = zone.free_area
    flags = mm.flags
    while order < MAX_ORDER - 1:
        buddy = pfn ^ (1 << order)
        fa = free_area[order]
        if buddy not in fa:
            break
        del fa[buddy]
        flags[buddy] &= ~PG_BUDDY & 0xFF
        pfn &= buddy
        order += 1
    free_area[order][pfn] = None
    flags[pfn] |= PG_BUDDY
    mm.order[pfn] = order


def free_pages_core(m: Machine, zone: Zone, pfn: int, end: int) -> None:
    """memblock_free_pages() of [pfn, end) at boot, in maximal aligned blocks; each goes
    through __free_pages_core(), which counts it as freed (pgfree). Blocks of the top order
    never merge (no order is above), so those of a long run are listed at once."""
    top = MAX_ORDER - 1
    mid, mid_end = -(-pfn >> top) << top, end >> top << top
    if mid_end - mid > 1 << top:
        free_pages_core(m, zone, pfn, mid)
        zone.free_area[top].update(dict.fromkeys(range(mid, mid_end, 1 << top)))
        m.mem_map.page_flags[mid:mid_end:1 << top] |= PG_BUDDY
        m.mem_map.page_order[mid:mid_end:1 << top] = top
        m.vm_events.pgfree += mid_end - mid
        pfn = mid_end
    while pfn < end:
        order = min(top, (pfn & -pfn).bit_length() - 1 if pfn else top,
                    (end - pfn).bit_length() - 1)
        free_one_page(m.mem_map, zone, pfn, order)
        m.vm_events.pgfree += 1 << order
        pfn += 1 << order


def rmqueue_smallest(mm: MemMap, zone: Zone, order: int) -> int | None:
    """__rmqueue_smallest(): take the smallest free block of at least order, and expand()
    it, listing the upper halves it splits off."""
    for high in range(order, MAX_ORDER):
        fa = zone.free_area[high]
        if fa:
            pfn, _ = fa.popitem()
            mm.flags[pfn] &= ~PG_BUDDY & 0xFF
            while high > order:
                high -= 1
                add_to_free_list(mm, zone, pfn + (1 << high), high)
            return pfn
    return None


# --- per-CPU lists ---------------------------------------------------------------------------

def rmqueue_pcplist(mm: MemMap, zone: Zone, cpu: int) -> int | None:
    """An order-0 page from cpu's list, refilled by a batch from the buddy lists when empty
    (rmqueue_bulk())."""
    lst = zone.pcp.setdefault(cpu, [])
    if not lst:
        for _ in range(PCP_BATCH):
            pfn = rmqueue_smallest(mm, zone, 0)
            if pfn is None:
                break
            mm.flags[pfn] |= PG_PCP
            lst.append(pfn)
        if not lst:
            return None
    pfn = lst.pop()
    mm.flags[pfn] &= ~PG_PCP & 0xFF
    return pfn


def free_pcppages_bulk(m: Machine, zone: Zone, lst: list[int], count: int) -> None:
    """Give the oldest count pages of a per-CPU list back to the buddy lists."""
    batch, lst[:count] = lst[:count], []
    flags = m.mem_map.flags
    for pfn in batch:
        flags[pfn] &= ~PG_PCP & 0xFF
        free_block(m, pfn, 0, None)


def drain_all_pages(m: Machine) -> int:
    """Empty every per-CPU list; returns how many non-empty lists were drained."""
    drained = 0
    for pgdat in list(m.pgdat.values()):
        for zone in pgdat.zones.values():
            for lst in zone.pcp.values():
                if lst:
                    free_pcppages_bulk(m, zone, lst, len(lst))
                    drained += 1
    return drained


# --- allocation ------------------------------------------------------------------------------

def get_page_from_freelist(m: Machine, order: int, nid: int, cpu: int, interleave: bool,
                           thisnode: bool, nodemask: frozenset[int] | None = None
                           ) -> int | None:
    """Allocate 2^order pages from the first zone of nid's zonelist above its low watermark,
    then above its min one; thisnode keeps to nid's own zones (__GFP_THISNODE), nodemask to
    the zones of its nodes (a bind policy's, ac->nodemask)."""
    zonelist, preferred = policy_zonelist(m, nid, thisnode, nodemask)
    return rmqueue_zonelist(m, order, zonelist_marks(m, zonelist), preferred, nid, cpu,
                            interleave)


def policy_zonelist(m: Machine, nid: int, thisnode: bool = False,
                    nodemask: frozenset[int] | None = None) -> tuple[list[Zone], Zone | None]:
    """The zones an allocation for nid may come from, in order, and the one zone_statistics()
    compares with: the first of nid's zonelist in the nodemask, which for a node without
    memory is on the nearest node that has some."""
    zonelist = m.zonelists[nid]
    if nodemask is not None:
        zonelist = [z for z in zonelist if z.nid in nodemask]
    preferred = zonelist[0] if zonelist else None
    if thisnode:        # nid's own populated zones, highest first, as its zonelist has them
        zones = m.pgdat[nid].zones
        zonelist = [zones[t] for t in reversed(ZoneType) if zones[t].populated]
    return zonelist, preferred


# A zonelist with each zone's low and min watermarks, worked out once for a run of allocations
# (they move only with the managed pages).
ZoneMarks = list[tuple[Zone, int, int]]


def zonelist_marks(m: Machine, zonelist: list[Zone]) -> ZoneMarks:
    marks = [zone_watermarks(zone, m.managed_at_boot) for zone in zonelist]
    return [(zone, w.low, w.min) for zone, w in zip(zonelist, marks)]


def rmqueue_zonelist(m: Machine, order: int, marks: ZoneMarks, preferred: Zone | None,
                     nid: int, cpu: int, interleave: bool) -> int | None:
    """get_page_from_freelist() over a zonelist already chosen (policy_zonelist())."""
    need = 1 << order
    mm = m.mem_map
    top = MAX_ORDER - 1
    for min_mark in (False, True):
        for zone, low, min_ in marks:
            mark = min_ if min_mark else low
            # the largest blocks alone usually clear the mark: the sum is taken only if not
            if ((len(zone.free_area[top]) << top) - need < mark
                    and zone.free_pages - need < mark):
                continue
            if order == 0:
                pfn = rmqueue_pcplist(mm, zone, cpu)
            else:
                pfn = rmqueue_smallest(mm, zone, order)
            if pfn is not None:
                prep_new_page(mm, zone, pfn, order)
                zone_statistics(m, preferred, zone, nid, cpu, interleave)
                return pfn
    return None


def prep_new_page(mm: MemMap, zone: Zone, pfn: int, order: int) -> None:
    mm.flags[pfn] |= PG_HEAD
    mm.order[pfn] = order
    zone.pgalloc += 1 << order


def zone_statistics(m: Machine, preferred: Zone | None, zone: Zone, nid: int, cpu: int,
                    interleave: bool) -> None:
    """Count an allocation in the zone it came from, against preferred, the zonelist's
    first zone (numa_foreign is counted there); interleave_hit when it came from nid, the
    node the interleave asked for."""
    stat = zone.numastat
    if preferred is None or zone.nid == preferred.nid:
        stat.numa_hit += 1
    else:
        stat.numa_miss += 1
        preferred.numastat.numa_foreign += 1
    if zone.nid == m.cpu_node[cpu]:
        stat.local_node += 1
    else:
        stat.other_node += 1
    if interleave and zone.nid == nid:
        stat.interleave_hit += 1


# --- freeing ---------------------------------------------------------------------------------

def free_pages(m: Machine, pfn: int, cpu: int) -> None:
    """__free_pages() of the allocated block whose head is pfn (checked by the caller)."""
    mm = m.mem_map
    m.boot_allocs.pop(pfn, None)
    order = mm.order[pfn]
    kinds.uncharge(m, pfn, order)
    mm.flags[pfn] &= ~PG_HEAD & 0xFF
    m.vm_events.pgfree += 1 << order
    free_block(m, pfn, order, cpu)


def free_block(m: Machine, pfn: int, order: int, cpu: int | None) -> None:
    """Free to the buddy lists, or to cpu's per-CPU list for order 0 (cpu None: buddy);
    a marked page goes to dnuma, to be freed into its new node's zone."""
    mm = m.mem_map
    if order == 0:
        if mm.flags[pfn] & PG_LOOKUP_NODE:
            dnuma.dnuma_move_free_page_zone(m, pfn)
            return
    elif (mm.page_flags[pfn:pfn + (1 << order)] & PG_LOOKUP_NODE).any():
        dnuma.dnuma_move_free_block(m, pfn, order)
        return
    zone = page_zone(m, pfn)
    if order or cpu is None:
        free_one_page(mm, zone, pfn, order)
        return
    lst = zone.pcp.setdefault(cpu, [])
    mm.flags[pfn] |= PG_PCP
    lst.append(pfn)
    if len(lst) > PCP_HIGH:
        free_pcppages_bulk(m, zone, lst, PCP_BATCH)
