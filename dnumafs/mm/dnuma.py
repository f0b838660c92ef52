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
from .constants import PG_BUDDY, PG_LOOKUP_NODE, PG_RESERVED, ZoneType, page_zonenum
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
        count_examined(m, layout)
        if 0 in m.blocks.online:    # only offline blocks hold PG_OFFLINE pages (checked)
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


# Pages per slice of a commit's whole-array passes: the temporaries stay a few MiB.
CHUNK = 1 << 22


def count_examined(m: Machine, layout: Memlayout) -> None:
    """Every pfn a range covers is examined; those already on its node bail at once."""
    max_pfn = m.mem_map.max_pfn
    node = m.mem_map.page_node
    for start, end, nid in zip(layout.starts, layout.ends, layout.nids):
        # A range may name pfns up to 2^64-1: only those below max_pfn exist.
        start, end = min(start, max_pfn), min(end + 1, max_pfn)
        if start >= end:
            continue
        differ = sum(int(np.count_nonzero(node[lo:min(lo + CHUNK, end)] != nid))
                     for lo in range(start, end, CHUNK))
        stats = m.current.counter(nid)
        stats.transplant_examined_pfn += end - start
        stats.transplant_bail_nid_eq += end - start - differ


def free_list_blocks(m: Machine) -> tuple[np.ndarray, ...]:
    """Every block on a buddy free list, in pfn order: (heads, orders, nodes, zone types)."""
    parts = [(np.fromiter(fa, dtype=np.int64, count=len(fa)), order, nid, int(zt))
             for nid, pgdat in m.pgdat.items() for zt, zone in pgdat.zones.items()
             for order, fa in enumerate(zone.free_area) if fa]
    if not parts:
        return tuple(np.empty(0, dtype=np.int64) for _ in range(4))
    heads = np.concatenate([p[0] for p in parts])
    by_pfn = np.argsort(heads, kind="stable")
    out = [heads] + [np.repeat(np.array([p[i] for p in parts], dtype=np.int64),
                               [len(p[0]) for p in parts]) for i in (1, 2, 3)]
    return tuple(a[by_pfn] for a in out)


def target_edges(layout: Memlayout, target: np.ndarray) -> np.ndarray:
    """The pfns p at a range's edge where target[p] differs from target[p - 1]: the only
    places where the target can change inside a free block, whose pages share one node."""
    n = len(target)
    edges = np.array(sorted({s for s in layout.starts if 0 < s < n}
                            | {e + 1 for e in layout.ends if 0 < e + 1 < n}), dtype=np.int64)
    return edges[target[edges] != target[edges - 1]] if edges.size else edges


def dnuma_move_free_pages(m: Machine, target: np.ndarray) -> None:
    """Move every free block to the node target gives its pages, splitting a block whose
    pages are bound for several nodes.

    Blocks are taken in pfn order and their pieces freed in that order, so the free lists
    end as if moved one by one (their order is what the next allocations take); the counts,
    zone sizes and page nodes of the pieces that move are added up over whole arrays."""
    mm = m.mem_map
    heads, orders, nodes, ztypes = free_list_blocks(m)
    if not heads.size:
        return
    edges = target_edges(m.current, target)
    nxt = np.searchsorted(edges, heads, side="right")
    cut = nxt < edges.size
    cut[cut] = edges[nxt[cut]] < heads[cut] + (1 << orders[cut])
    tgts = target[heads].astype(np.int64)
    moving = cut | (tgts != nodes)
    heads, orders, nodes, ztypes, tgts, cut = (a[moving] for a in
                                               (heads, orders, nodes, ztypes, tgts, cut))
    # Take every affected block off its list first, so that no block put back below
    # merges with one still waiting to be moved.
    pgdat = m.pgdat
    for pfn, order, nid, zt in zip(heads.tolist(), orders.tolist(), nodes.tolist(),
                                   ztypes.tolist()):
        del pgdat[nid].zones[zt].free_area[order][pfn]
    mm.page_flags[heads] &= ~PG_BUDDY & 0xFF
    pieces = [a[~cut] for a in (heads, orders, nodes, ztypes, tgts)]
    if cut.any():
        split = [(p, o, old, zt, tgt)
                 for pfn, order, old, zt in zip(heads[cut].tolist(), orders[cut].tolist(),
                                                nodes[cut].tolist(), ztypes[cut].tolist())
                 for p, o, tgt in split_by_node(m, target[pfn:pfn + (1 << order)], pfn,
                                                order, old)]
        by_pfn = np.argsort(np.concatenate((pieces[0], [s[0] for s in split])), kind="stable")
        pieces = [np.concatenate((a, np.array([s[i] for s in split], dtype=np.int64)))[by_pfn]
                  for i, a in enumerate(pieces)]
    pfns, orders, olds, ztypes, tgts = pieces
    moved = tgts != olds
    dnuma_add_pages_to_new_zones(m, *(a[moved] for a in (pfns, orders, olds, tgts, ztypes)))
    for pfn, order, tgt, zt in zip(pfns.tolist(), orders.tolist(), tgts.tolist(),
                                   ztypes.tolist()):
        page_alloc.free_one_page(mm, pgdat[tgt].zones[zt], pfn, order)


def node_sums(nids: np.ndarray, pages: np.ndarray) -> list[tuple[int, int]]:
    """(nid, pages summed) for each nid that occurs."""
    sums = np.bincount(nids, weights=pages).astype(np.int64)
    return [(int(n), int(sums[n])) for n in np.unique(nids)]


def dnuma_add_pages_to_new_zones(m: Machine, pfns: np.ndarray, orders: np.ndarray,
                                 olds: np.ndarray, news: np.ndarray,
                                 ztypes: np.ndarray) -> None:
    """dnuma_add_page_to_new_zone() of a commit's free pieces in pfn order, over arrays:
    each piece 2^orders[i] pages at pfns[i] of zone type ztypes[i] goes from node olds[i]
    to news[i], counted as moved from the free lists."""
    if not pfns.size:
        return
    mm = m.mem_map
    sizes = np.left_shift(1, orders)
    for order in np.unique(orders).tolist():
        # Blocks are aligned to their size: as rows of 2^order pages, a piece is one row.
        rows = mm.page_node[:mm.max_pfn >> order << order].reshape(-1, 1 << order)
        sel = orders == order
        rows[pfns[sel] >> order] = news[sel, None]
    counter = m.current.counter
    for nid, n in node_sums(olds, sizes):
        counter(nid).transplant_from_freelist_remove += n
    for nid, n in node_sums(news, sizes):
        counter(nid).transplant_from_freelist_add += n
        counter(nid).moved_pages += n
    m.resized.update(np.unique(olds).tolist(), np.unique(news).tolist())
    # Zones are (node, type) pairs; key them as one number to group the pieces.
    ntypes = len(ZoneType)
    out_keys, in_keys = olds * ntypes + ztypes, news * ntypes + ztypes
    for key in np.unique(out_keys).tolist():
        sel = np.flatnonzero(out_keys == key)
        zone = m.pgdat[key // ntypes].zones[key % ntypes]
        n = int(sizes[sel].sum())
        zone.present_pages -= n
        zone.managed_pages -= n
        # One by one, the zone went empty as its last piece left if none came in before
        # that; it cannot empty twice, as only the pages it had leave it.
        came_in = np.flatnonzero(in_keys == key)
        if zone.present_pages == 0 and (not came_in.size or came_in[0] > sel[-1]):
            counter(int(news[sel[-1]])).drain_zonestat += 1
    for key in np.unique(in_keys).tolist():
        sel = np.flatnonzero(in_keys == key)
        zone = m.pgdat[key // ntypes].zones[key % ntypes]
        n = int(sizes[sel].sum())
        zone.present_pages += n
        zone.managed_pages += n
        zone.span_include(int(pfns[sel[0]]), int(pfns[sel[-1]] + sizes[sel[-1]]))


def dnuma_mark_page_range(m: Machine, target: np.ndarray) -> None:
    """What still differs is allocated (mark it PG_LOOKUP_NODE) or reserved (it stays;
    count it)."""
    mm = m.mem_map
    reserved = np.zeros(m.possible_nodes, dtype=np.int64)
    marked = np.zeros(m.possible_nodes, dtype=np.int64)
    for lo in range(0, mm.max_pfn, CHUNK):
        hi = min(lo + CHUNK, mm.max_pfn)
        pfns = np.flatnonzero(target[lo:hi] != mm.page_node[lo:hi])
        if not pfns.size:
            continue
        pfns += lo
        res = (mm.page_flags[pfns] & PG_RESERVED) != 0
        nodes = mm.page_node[pfns]
        reserved += np.bincount(nodes[res], minlength=m.possible_nodes)
        marked += np.bincount(nodes[~res], minlength=m.possible_nodes)
        mm.page_flags[pfns[~res]] |= PG_LOOKUP_NODE
    for nid in np.flatnonzero(reserved).tolist():
        m.current.counter(nid).transplant_bail_reserved += int(reserved[nid])
    for nid in np.flatnonzero(marked).tolist():
        m.current.counter(nid).transplant_bail_page_not_buddy += int(marked[nid])


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
