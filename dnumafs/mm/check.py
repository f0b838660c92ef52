"""The invariant checker: every rule the model must keep, as a list of violations."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .constants import (
    HPAGE_ORDER,
    PG_BUDDY,
    PG_HEAD,
    PG_HUGETLB,
    PG_LOOKUP_NODE,
    PG_OFFLINE,
    PG_PCP,
    PG_RESERVED,
    ZoneType,
    page_zonenum,
)
from .kinds import check_kinds
from .memory_hotplug import page_zonenums

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
                    if page_zonenum(flags[pfn], pfn) != zone.type \
                            or page_zonenum(flags[pfn + n - 1], pfn + n - 1) != zone.type:
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
                    if not flags[pfn] & PG_PCP or node[pfn] != nid \
                            or page_zonenum(flags[pfn], pfn) != zone.type:
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
    offline = (flags & PG_OFFLINE) != 0
    owners = np.cumsum(cover[:-1]) + allocated + ((flags & PG_RESERVED) != 0) + offline
    bad = np.flatnonzero(owners != 1)
    for bad_pfn in bad[:MAX_REPORTED]:
        errs.append(f"pfn {bad_pfn:#x} has {owners[bad_pfn]} owners (free block, pcp, allocation, "
                    "reserved, offline)")
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
    _check_blocks(m, errs, offline)
    errs += check_kinds(m)
    total = m.total_managed_pages()
    nr_offline = int(np.count_nonzero(offline))
    if total != m.managed_at_boot + m.blocks.hot_added_pages - nr_offline:
        errs.append(f"managed pages {total} != {m.managed_at_boot} at boot and "
                    f"{m.blocks.hot_added_pages} added, less {nr_offline} offline")
    return errs


def _allocations_per_pfn(m: Machine, heads: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """How many allocated blocks cover each pfn (1 or 0 in a sound model)."""
    d = np.zeros(m.max_pfn + 1, dtype=np.int32)
    np.add.at(d, heads, 1)
    np.add.at(d, np.minimum(heads + sizes, m.max_pfn), -1)
    return np.cumsum(d[:-1])


def _check_zones(m: Machine, errs: list[str]) -> None:
    """present/managed agree with the page arrays (offline pages are in no zone); spans cover
    every page of the zone."""
    nz = len(ZoneType)
    key = m.page_node.astype(np.int16) * nz + page_zonenums(m, 0, m.max_pfn)
    key[(m.page_flags & PG_OFFLINE) != 0] = -1
    present = key >= 0
    reserved = (m.page_flags & PG_RESERVED) != 0
    counts = np.bincount(key[present], minlength=m.possible_nodes * nz)
    rcounts = np.bincount(key[reserved & present], minlength=m.possible_nodes * nz)
    keys, first = np.unique(key, return_index=True)
    rkeys, rlast = np.unique(key[::-1], return_index=True)
    firsts = dict(zip(keys.tolist(), first.tolist()))
    lasts = dict(zip(rkeys.tolist(), (m.max_pfn - 1 - rlast).tolist()))
    for k in np.flatnonzero(counts).tolist():
        if k // nz not in m.pgdat:
            errs.append(f"pages on node {k // nz}, which is not online")
    for nid, pgdat in m.pgdat.items():
        for ztype in ZoneType:
            zone = pgdat.zones[ztype]
            k = nid * nz + ztype
            where = f"node {nid} zone {ztype.label}"
            if zone.present_pages != counts[k]:
                errs.append(f"{where}: present {zone.present_pages} != {counts[k]} pages")
            if zone.managed_pages != counts[k] - rcounts[k]:
                errs.append(f"{where}: managed {zone.managed_pages} != {counts[k] - rcounts[k]}")
            if counts[k] and (firsts[k] < zone.zone_start_pfn or lasts[k] >= zone.zone_end_pfn):
                errs.append(f"{where}: pages {firsts[k]:#x}..{lasts[k]:#x} outside span")


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
        for pfn in pgdat.hugepage_pool:
            pooled += 1
            if not m.page_flags[pfn] & PG_HUGETLB or not m.page_flags[pfn] & PG_HEAD \
                    or m.page_order[pfn] != HPAGE_ORDER:
                errs.append(f"node {nid} hugepage {pfn:#x} is not an allocated order-9 block")
    if int(np.count_nonzero(m.page_flags & PG_HUGETLB)) != pooled:
        errs.append("PG_hugetlb set on pages in no pool")


def _check_blocks(m: Machine, errs: list[str], offline: np.ndarray) -> None:
    """An offline block's pages are all PG_OFFLINE and nothing else; an online one's none."""
    bp = m.blocks.block_pages
    per_block = np.add.reduceat(offline, np.arange(0, m.max_pfn, bp))
    sizes = np.diff(np.append(np.arange(0, m.max_pfn, bp), m.max_pfn))
    state = np.frombuffer(m.blocks.online, dtype=np.uint8)
    bad = np.flatnonzero(np.where(state != 0, per_block != 0, per_block != sizes))
    for bid in bad[:MAX_REPORTED].tolist():
        errs.append(f"memory{bid} is {'online' if state[bid] else 'offline'} but has "
                    f"{per_block[bid]} of {sizes[bid]} pages offline")
    if (m.page_flags[offline] != PG_OFFLINE).any():
        errs.append("offline pages with other flags")
