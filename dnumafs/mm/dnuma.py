"""The dnuma commit: make a layout current and move every page it can move now."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .constants import PG_BUDDY, PG_LOOKUP_NODE, PG_RESERVED
from .memlayout import Memlayout

if TYPE_CHECKING:
    from .machine import Machine


def commit(m: Machine) -> Memlayout | None:
    """Commit the pending layout (the caller holds m.lock); None if nothing is pending.

    Free blocks move at once (split where they straddle a range boundary); allocated
    pages that must move are marked PG_LOOKUP_NODE and move when freed; reserved pages
    stay. The per-CPU lists are drained first, so that their pages, which are free, move
    with the free lists rather than being taken for allocated ones. Zonelists are rebuilt
    only if the set of populated zones changed, which is what made the original slow (a
    stop_machine() rebuild on every commit).
    """
    layout = m.pending
    if layout is None:
        return None
    m.pending = None
    for nid in sorted(layout.node_ids()):
        m._online_node(nid)
    m.backlog.append(m.current)
    m.current = layout
    m._trim_backlog()

    m._in_commit = True
    try:
        drained = m.drain_pcp()
        target = layout.node_map(m.page_node)
        _count_examined(m, layout, target)
        _move_free_blocks(m, target)
        _mark_allocated(m, target)
        del target
    finally:
        m._in_commit = False
    if drained:
        m.count("pcp-drain", drained)
    m.count("zonelist-rebuild" if m._rebuild_zonelists() else "no-zonelist-rebuild", 1)
    return layout


def _count_examined(m: Machine, layout: Memlayout, target: np.ndarray) -> None:
    """Every pfn a range covers is examined; those already on its node bail at once."""
    # Clip in Python first: a range may name pfns up to 2^64-1, past what int64 holds.
    starts = np.array([min(s, m.max_pfn) for s in layout.starts], dtype=np.int64)
    ends = np.array([min(e, m.max_pfn - 1) for e in layout.ends], dtype=np.int64)
    lengths = np.maximum(ends - starts + 1, 0)
    examined = np.bincount(np.asarray(layout.nids, dtype=np.int64), weights=lengths,
                           minlength=m.possible_nodes).astype(np.int64)
    bound = target[target != m.page_node]
    for nid in np.flatnonzero(examined):
        differ = int(np.count_nonzero(bound == nid))
        m.count("transplant-examined-pfn", int(examined[nid]), int(nid))
        m.count("transplant-bail-nid-eq", int(examined[nid]) - differ, int(nid))


def _move_free_blocks(m: Machine, target: np.ndarray) -> None:
    heads = np.flatnonzero(m.page_flags & PG_BUDDY)
    if not heads.size:
        return
    sizes = np.left_shift(1, m.page_order[heads].astype(np.int64))
    moving = target != m.page_node
    bounds = np.empty(2 * heads.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = heads, heads + sizes
    if bounds[-1] == m.max_pfn:
        bounds = bounds[:-1]
    any_moving = np.logical_or.reduceat(moving, bounds)[0::2]
    del moving
    blocks = [(int(h), int(m.page_order[h])) for h in heads[any_moving]]
    # Take every affected block off its list first, so that no block put back below
    # merges with one still waiting to be moved.
    for pfn, order in blocks:
        m._del_free_block(m._zone_of(pfn), pfn, order)
    for pfn, order in blocks:
        old = int(m.page_node[pfn])
        for p, o, tgt in uniform_pieces(target[pfn:pfn + (1 << order)], pfn, order, old, m):
            if tgt == old:
                m._free_one(m._zone_of(p), p, o)
                continue
            m.count("transplant-from-freelist-remove", 1 << o, old)
            zone = m._move_pages(p, 1 << o, old, tgt)
            m.count("transplant-from-freelist-add", 1 << o, tgt)
            m._free_one(zone, p, o)


def _mark_allocated(m: Machine, target: np.ndarray) -> None:
    """What still differs is allocated (mark it) or reserved (it stays; count it)."""
    differ = target != m.page_node
    reserved = differ & ((m.page_flags & PG_RESERVED) != 0)
    differ &= ~reserved
    for name, mask in (("transplant-bail-reserved", reserved),
                       ("transplant-bail-page-not-buddy", differ)):
        counts = np.bincount(m.page_node[mask], minlength=m.possible_nodes)
        for nid in np.flatnonzero(counts):
            m.count(name, int(counts[nid]), int(nid))
    m.page_flags |= differ.view(np.uint8) * np.uint8(PG_LOOKUP_NODE)


def uniform_pieces(targets: np.ndarray | None, pfn: int, order: int, nid: int,
                    m: Machine) -> list[tuple[int, int, int]]:
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
            m.count("split-pages", 1, m._node[pfn])
            half = 1 << (o - 1)
            stack.append((off + half, o - 1))
            stack.append((off, o - 1))
    return out
