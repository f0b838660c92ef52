"""dnuma: layouts, the commit that makes one current, and the transplant of pages to their new
node, at once for free pages and on free for the others (the patch set's mm/dnuma.c and
mm/memlayout.c). Every function expects the caller to hold the machine lock.

Only the current layout counts events (ml_stat_add() is only called with it): each count goes
to m.current.counter(nid), nid the node the event happened at (None: no node).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import memory_hotplug, page_alloc, topology
from .constants import PG_BUDDY, PG_LOOKUP_NODE, PG_RESERVED, page_zonenum
from .memlayout import Memlayout
from .zone import Zone

if TYPE_CHECKING:
    from .machine import Machine


# --- layouts ---------------------------------------------------------------------------------

def memlayout_register(m: Machine, layout: Memlayout) -> Memlayout:
    """Give a new layout its place among the layouts; ids are taken in order of creation."""
    assert layout.id == m.next_layout_id
    m.next_layout_id += 1
    m.layouts[layout.id] = layout
    return layout


def memlayout_destroy(m: Machine, layout: Memlayout) -> None:
    del m.layouts[layout.id]


def ml_backlog_feed(m: Machine, layout: Memlayout) -> None:
    """A layout stops being current: its counts join the retired totals, and it joins the
    backlog, whose oldest layouts beyond backlog_max are destroyed.

    The backlog keeps the newest backlog_max retired layouts, as the patch set's first
    (kfifo) backlog did. Its later ml_backlog_feed() keeps the oldest backlog_max - 1 and
    destroys each newly retired layout once full (an off-by-one), and with backlog_max 0
    leaks the retired layout; and it trims only here, while ml_backlog_trim() also runs when
    backlog_max is set, so that the backlog is never longer than the parameter says.
    """
    m.retired.fold(layout.counters)
    m.backlog.append(layout)
    ml_backlog_trim(m)


def ml_backlog_trim(m: Machine) -> None:
    excess = len(m.backlog) - m.backlog_max
    if excess > 0:
        for layout in m.backlog[:excess]:
            memlayout_destroy(m, layout)
        del m.backlog[:excess]


# --- commit ----------------------------------------------------------------------------------

def memlayout_commit(m: Machine) -> Memlayout | None:
    """Commit the pending layout; None if nothing is pending.

    Free blocks move at once (split where they straddle a range boundary); allocated pages
    that must move are marked PG_LOOKUP_NODE and move when freed; reserved pages stay. The
    per-CPU lists are drained first, so that their pages, which are free, move with the free
    lists rather than being taken for allocated ones. Zonelists are rebuilt only if the set
    of populated zones changed, which is what made the original slow (a stop_machine()
    rebuild on every commit).
    """
    layout = m.pending
    if layout is None:
        return None
    m.pending = None
    dnuma_online_required_nodes_and_zones(m, layout)
    old, m.current = m.current, layout
    ml_backlog_feed(m, old)

    m.in_commit = True
    try:
        drained = page_alloc.drain_all_pages(m)
        target = layout.node_map(m.mem_map.page_node)
        count_examined(m, layout, target)
        memory_hotplug.move_offline_pages(m, target)
        dnuma_move_free_pages(m, target)
        dnuma_mark_page_range(m, target)
        del target
    finally:
        m.in_commit = False
    if drained:
        m.current.counter(None).pcp_drain += drained
    if topology.rebuild_zonelists(m):
        m.current.counter(None).zonelist_rebuild += 1
    else:
        m.current.counter(None).no_zonelist_rebuild += 1
    return layout


def dnuma_online_required_nodes_and_zones(m: Machine, layout: Memlayout) -> None:
    """Online every node the layout names (a node, once online, stays)."""
    for nid in sorted(layout.node_ids()):
        topology.online_node(m, nid)


def count_examined(m: Machine, layout: Memlayout, target: np.ndarray) -> None:
    """Every pfn a range covers is examined; those already on its node bail at once."""
    max_pfn = m.mem_map.max_pfn
    # Clip in Python first: a range may name pfns up to 2^64-1, past what int64 holds.
    starts = np.array([min(s, max_pfn) for s in layout.starts], dtype=np.int64)
    ends = np.array([min(e, max_pfn - 1) for e in layout.ends], dtype=np.int64)
    lengths = np.maximum(ends - starts + 1, 0)
    examined = np.bincount(np.asarray(layout.nids, dtype=np.int64), weights=lengths,
                           minlength=m.possible_nodes).astype(np.int64)
    bound = np.bincount(target[target != m.mem_map.page_node], minlength=m.possible_nodes)
    for nid in np.flatnonzero(examined):
        differ = int(bound[nid])
        stats = m.current.counter(int(nid))
        stats.transplant_examined_pfn += int(examined[nid])
        stats.transplant_bail_nid_eq += int(examined[nid]) - differ


def dnuma_move_free_pages(m: Machine, target: np.ndarray) -> None:
    """Move every free block to the node target gives its pages, splitting a block whose
    pages are bound for several nodes."""
    mm = m.mem_map
    heads = np.flatnonzero(mm.page_flags & PG_BUDDY)
    if not heads.size:
        return
    sizes = np.left_shift(1, mm.page_order[heads].astype(np.int64))
    moving = target != mm.page_node
    bounds = np.empty(2 * heads.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = heads, heads + sizes
    if bounds[-1] == mm.max_pfn:
        bounds = bounds[:-1]
    any_moving = np.logical_or.reduceat(moving, bounds)[0::2]
    del moving
    blocks = [(int(h), int(mm.page_order[h])) for h in heads[any_moving]]
    # Take every affected block off its list first, so that no block put back below
    # merges with one still waiting to be moved.
    for pfn, order in blocks:
        page_alloc.del_page_from_free_list(mm, page_alloc.page_zone(m, pfn), pfn, order)
    for pfn, order in blocks:
        old = mm.node[pfn]
        for p, o, tgt in split_by_node(m, target[pfn:pfn + (1 << order)], pfn, order, old):
            if tgt == old:
                page_alloc.free_one_page(mm, page_alloc.page_zone(m, p), p, o)
                continue
            m.current.counter(old).transplant_from_freelist_remove += 1 << o
            zone = dnuma_add_page_to_new_zone(m, p, 1 << o, old, tgt)
            m.current.counter(tgt).transplant_from_freelist_add += 1 << o
            page_alloc.free_one_page(mm, zone, p, o)


def dnuma_mark_page_range(m: Machine, target: np.ndarray) -> None:
    """What still differs is allocated (mark it PG_LOOKUP_NODE) or reserved (it stays;
    count it)."""
    mm = m.mem_map
    differ = target != mm.page_node
    reserved = differ & ((mm.page_flags & PG_RESERVED) != 0)
    differ &= ~reserved
    for mask, bail_reserved in ((reserved, True), (differ, False)):
        counts = np.bincount(mm.page_node[mask], minlength=m.possible_nodes)
        for nid in np.flatnonzero(counts):
            stats = m.current.counter(int(nid))
            if bail_reserved:
                stats.transplant_bail_reserved += int(counts[nid])
            else:
                stats.transplant_bail_page_not_buddy += int(counts[nid])
    mm.page_flags |= differ.view(np.uint8) * np.uint8(PG_LOOKUP_NODE)


def split_by_node(m: Machine, targets: np.ndarray | None, pfn: int, order: int,
                  nid: int) -> list[tuple[int, int, int]]:
    """Split [pfn, pfn + 2^order) into aligned blocks each bound for one node.

    targets is the node of each page of the block, or None when all go to nid.
    Each split is counted as split-pages.
    """
    if targets is None:
        return [(pfn, order, nid)]
    out: list[tuple[int, int, int]] = []
    stack = [(0, order)]
    while stack:
        off, o = stack.pop()
        sl = targets[off:off + (1 << o)]
        first = int(sl[0])
        if o == 0 or (sl == first).all():
            out.append((pfn + off, o, first))
        else:
            m.current.counter(m.mem_map.node[pfn]).split_pages += 1
            half = 1 << (o - 1)
            stack.append((off + half, o - 1))
            stack.append((off, o - 1))
    return out


# --- transplant ------------------------------------------------------------------------------

def dnuma_add_page_to_new_zone(m: Machine, pfn: int, n: int, old: int, new: int) -> Zone:
    """Give n managed pages of one zone type from node old to node new; new's zone.

    The new zone's span grows to cover them (grow_pgdat_and_zone()). A commit rebuilds the
    zonelists once at its end; a transplant on free outside a commit rebuilds at once if it
    populated or emptied a zone. A zone that a commit's move of free pages leaves without
    pages has its statistics drained (drain-zonestat, counted at the node it went to).
    """
    zt = page_zonenum(m.mem_map.flags[pfn], pfn)
    zold, znew = m.pgdat[old].zones[zt], m.pgdat[new].zones[zt]
    zold.present_pages -= n
    zold.managed_pages -= n
    znew.present_pages += n
    znew.managed_pages += n
    if not znew.zone_start_pfn <= pfn < pfn + n <= znew.zone_end_pfn:
        znew.span_include(pfn, pfn + n)
    if n == 1:
        m.mem_map.node[pfn] = new
    else:
        m.mem_map.page_node[pfn:pfn + n] = new
    m.resized.add(old)
    m.resized.add(new)
    stats = m.current.counter(new)
    stats.moved_pages += n
    if m.in_commit:
        if zold.present_pages == 0:
            stats.drain_zonestat += 1
    elif zold.present_pages == 0 or znew.present_pages == n:
        if topology.rebuild_zonelists(m):
            m.current.counter(None).zonelist_rebuild += 1
    return znew


def dnuma_move_free_page_zone(m: Machine, pfn: int) -> None:
    """A marked order-0 page is freed: look it up and free it into its node's zone (the
    common case of dnuma_move_free_block(), without the block logic)."""
    mm = m.mem_map
    mm.flags[pfn] &= ~PG_LOOKUP_NODE & 0xFF
    old = mm.node[pfn]
    nid = m.current.lookup(pfn, old)
    free_transplanted(m, pfn, 0, old, old if nid is None else nid)


def dnuma_move_free_block(m: Machine, pfn: int, order: int) -> None:
    """A marked block is freed: look it up and free each part into its node's zone."""
    mm = m.mem_map
    size = 1 << order
    mm.page_flags[pfn:pfn + size] &= ~PG_LOOKUP_NODE & 0xFF
    old = mm.node[pfn]
    layout = m.current
    nid = layout.lookup(pfn, old)
    targets = None
    if nid is None or layout.covers(pfn, pfn + size - 1) is None:
        targets = layout.node_map(mm.page_node[pfn:pfn + size], pfn)
    for p, o, tgt in split_by_node(m, targets, pfn, order, old if nid is None else nid):
        free_transplanted(m, p, o, old, tgt)


def free_transplanted(m: Machine, pfn: int, order: int, old: int, tgt: int) -> None:
    """Free one looked-up piece: into node tgt's zone, or where it is if tgt is old."""
    if tgt == old:
        m.current.counter(old).transplant_bail_already_done += 1 << order
        page_alloc.free_one_page(m.mem_map, page_alloc.page_zone(m, pfn), pfn, order)
        return
    zone = dnuma_add_page_to_new_zone(m, pfn, 1 << order, old, tgt)
    m.current.counter(tgt).transplant_on_free += 1 << order
    page_alloc.free_one_page(m.mem_map, zone, pfn, order)
