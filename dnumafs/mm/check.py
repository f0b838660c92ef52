"""The invariant checker: every rule the model must keep, as a list of violations."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .constants import (
    PG_BUDDY,
    PG_HEAD,
    PG_HUGETLB,
    PG_LOOKUP_NODE,
    PG_PCP,
    PG_RESERVED,
    ZoneType,
    zone_idx,
    zone_type_bounds,
)

if TYPE_CHECKING:
    from .machine import Machine

MAX_REPORTED = 20
NOT_FREE = PG_RESERVED | PG_LOOKUP_NODE | PG_HEAD | PG_PCP


def check(m: Machine) -> list[str]:
    """Check conservation and free-list consistency; the caller holds m.lock."""
    errs: list[str] = []
    node, flags, order = m.page_node, m.page_flags, m.page_order
    cover = np.zeros(m.max_pfn + 1, dtype=np.int32)   # difference array of owners per pfn

    def own(first: int, n: int) -> None:
        cover[first] += 1
        cover[first + n] -= 1

    nblocks = 0
    npcp = 0
    for nid, pgdat in m.pgdat.items():
        for zone in pgdat.zones.values():
            where = f"node {nid} zone {zone.type.label}"
            for o, fa in enumerate(zone.free_area):
                for pfn in fa:
                    nblocks += 1
                    n = 1 << o
                    if pfn % n or pfn + n > m.max_pfn:
                        errs.append(f"{where}: free block {pfn:#x} order {o} misaligned or "
                                    "past max_pfn")
                        continue
                    if not flags[pfn] & PG_BUDDY or order[pfn] != o:
                        errs.append(f"{where}: free block {pfn:#x} head lacks PG_buddy/order {o}")
                    if zone_idx(pfn) != zone.type or zone_idx(pfn + n - 1) != zone.type:
                        errs.append(f"{where}: free block {pfn:#x} order {o} leaves its zone")
                    if (node[pfn:pfn + n] != nid).any():
                        errs.append(f"{where}: free block {pfn:#x} order {o} has pages of "
                                    "another node")
                    if (flags[pfn:pfn + n] & NOT_FREE).any():
                        errs.append(f"{where}: free block {pfn:#x} holds reserved/marked/"
                                    "allocated pages")
                    own(pfn, n)
            for cpu, lst in zone.pcp.items():
                for pfn in lst:
                    npcp += 1
                    if not flags[pfn] & PG_PCP or node[pfn] != nid or zone_idx(pfn) != zone.type:
                        errs.append(f"{where}: cpu {cpu} pcp page {pfn:#x} not of this zone or "
                                    "unflagged")
                    own(pfn, 1)
    if int(np.count_nonzero(flags & PG_BUDDY)) != nblocks:
        errs.append("PG_buddy set on pages that head no free-list block")
    if int(np.count_nonzero(flags & PG_PCP)) != npcp:
        errs.append("PG_pcp set on pages on no per-CPU list")

    heads = np.flatnonzero(flags & PG_HEAD)
    sizes = np.left_shift(1, order[heads].astype(np.int64))
    allocated = _allocations_per_pfn(m, heads, sizes)
    owners = np.cumsum(cover[:-1]) + allocated + ((flags & PG_RESERVED) != 0)
    bad = np.flatnonzero(owners != 1)
    for bad_pfn in bad[:MAX_REPORTED]:
        errs.append(f"pfn {bad_pfn:#x} has {owners[bad_pfn]} owners (free block, pcp, allocation, "
                    "reserved)")
    if bad.size > MAX_REPORTED:
        errs.append(f"... {bad.size} pfns in all without exactly one owner")
    for head, size in zip(heads.tolist(), sizes.tolist()):
        if head % size or len(set(node[head:head + size].tolist())) != 1:
            errs.append(f"allocated block {head:#x} misaligned or split between nodes")
    reserved_marked = flags & PG_LOOKUP_NODE & ((flags & PG_RESERVED) != 0) * 0xFF
    if reserved_marked.any():
        errs.append("reserved pages marked PG_lookup_node")

    _check_zones(m, errs)
    _check_layout(m, errs, owners_alloc=allocated > 0)
    _check_hugepages(m, errs)
    total = m.total_managed_pages()
    if total != m.managed_at_boot:
        errs.append(f"managed pages {total} != {m.managed_at_boot} at boot")
    return errs


def _allocations_per_pfn(m: Machine, heads: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """How many allocated blocks cover each pfn (1 or 0 in a sound model)."""
    d = np.zeros(m.max_pfn + 1, dtype=np.int32)
    np.add.at(d, heads, 1)
    np.add.at(d, np.minimum(heads + sizes, m.max_pfn), -1)
    return np.cumsum(d[:-1])


def _check_zones(m: Machine, errs: list[str]) -> None:
    """present/managed agree with the page arrays; spans cover every page of the zone."""
    reserved = (m.page_flags & PG_RESERVED) != 0
    for ztype in ZoneType:
        lo, hi = zone_type_bounds(ztype, m.max_pfn)
        if lo >= hi:
            counts = np.zeros(m.possible_nodes, dtype=np.int64)
            rcounts = counts
        else:
            counts = np.bincount(m.page_node[lo:hi], minlength=m.possible_nodes)
            rcounts = np.bincount(m.page_node[lo:hi][reserved[lo:hi]], minlength=m.possible_nodes)
        for nid, pgdat in m.pgdat.items():
            zone = pgdat.zones[ztype]
            where = f"node {nid} zone {ztype.label}"
            if zone.present_pages != counts[nid]:
                errs.append(f"{where}: present {zone.present_pages} != {counts[nid]} pages")
            if zone.managed_pages != counts[nid] - rcounts[nid]:
                errs.append(f"{where}: managed {zone.managed_pages} != "
                            f"{counts[nid] - rcounts[nid]}")
            if counts[nid]:
                pfns = np.flatnonzero(m.page_node[lo:hi] == nid)
                first, last = lo + int(pfns[0]), lo + int(pfns[-1])
                if first < zone.zone_start_pfn or last >= zone.zone_end_pfn:
                    errs.append(f"{where}: pages {first:#x}..{last:#x} outside span")
        for on_node in np.flatnonzero(counts):
            if int(on_node) not in m.pgdat:
                errs.append(f"pages on node {on_node}, which is not online")


def _check_layout(m: Machine, errs: list[str], owners_alloc: np.ndarray) -> None:
    """A page off its range's node is reserved or an allocated page marked for lookup."""
    target = m.current.node_map(m.page_node)
    off = target != m.page_node
    marked = (m.page_flags & PG_LOOKUP_NODE) != 0
    ok = ((m.page_flags & PG_RESERVED) != 0) | (owners_alloc & marked)
    bad = np.flatnonzero(off & ~ok)
    for pfn in bad[:MAX_REPORTED]:
        errs.append(f"pfn {pfn:#x} on node {m.page_node[pfn]}, layout says {target[pfn]}, "
                    "and it is neither reserved nor marked")
    if (marked & ~owners_alloc).any():
        errs.append("PG_lookup_node set on pages that are not allocated")


def _check_hugepages(m: Machine, errs: list[str]) -> None:
    pooled = 0
    for nid, pgdat in m.pgdat.items():
        for order, pool in pgdat.hugepage_pools.items():
            for pfn in pool:
                pooled += 1
                if not m.page_flags[pfn] & PG_HUGETLB or not m.page_flags[pfn] & PG_HEAD \
                        or m.page_order[pfn] != order:
                    errs.append(f"node {nid} hugepage {pfn:#x} is not an allocated "
                                f"order-{order} block")
    if int(np.count_nonzero(m.page_flags & PG_HUGETLB)) != pooled:
        errs.append("PG_hugetlb set on pages in no pool")
