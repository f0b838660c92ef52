"""Memory blocks: offline and online (mm/memory_hotplug.c, drivers/base/memory.c's model).

Memory is onlined and offlined in blocks of block_pages pages. Offlining a block takes its free
pages off the buddy and per-CPU lists, migrates its movable allocated pages elsewhere, and
leaves its pages PG_OFFLINE: in no zone, counted in no node's present or managed pages.
Onlining frees them into the zone the caller asks for (ZONE_MOVABLE for online_movable).
Every function expects the caller to hold the machine lock; an error changes nothing.
"""
from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING

import attrs
import numpy as np

from . import kinds, page_alloc, topology
from .constants import (
    MAX_ORDER,
    PAGE_SHIFT,
    PG_BUDDY,
    PG_HEAD,
    PG_LOOKUP_NODE,
    PG_MOVABLE_ZONE,
    PG_OFFLINE,
    PG_PCP,
    PG_RESERVED,
    ZONE_END_PFN,
    ZoneType,
)
from .zone import Zone, zone_watermarks

if TYPE_CHECKING:
    from .machine import Machine

MIN_MEMORY_BLOCK_SIZE = 128 << 20           # one x86-64 memory section
MAX_BLOCK_SIZE = 2 << 30
MEM_SIZE_FOR_LARGE_BLOCK = 64 << 30
# The smallest block the model takes when asked (--block-size): the largest buddy block, so
# that no free or allocated block straddles two memory blocks. Linux's smallest is a section.
MIN_CHOSEN_BLOCK_SIZE = 1 << (MAX_ORDER - 1 + PAGE_SHIFT)


class OnlineType(enum.Enum):
    """What a block is onlined as (MMOP_*), by the word state and auto_online_blocks take."""

    OFFLINE = "offline"
    ONLINE = "online"
    ONLINE_KERNEL = "online_kernel"
    ONLINE_MOVABLE = "online_movable"


class HotplugError(Exception):
    """An offline or online refused: errno and why, nothing changed."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def probe_memory_block_size(max_pfn: int) -> int:
    """x86-64's probe_memory_block_size(): a section below 64 GiB, else the largest power of
    two up to 2 GiB that the end of memory is aligned to."""
    boot_mem_end = max_pfn << PAGE_SHIFT
    if boot_mem_end < MEM_SIZE_FOR_LARGE_BLOCK:
        return MIN_MEMORY_BLOCK_SIZE
    bz = MAX_BLOCK_SIZE
    while bz > MIN_MEMORY_BLOCK_SIZE and boot_mem_end % bz:
        bz >>= 1
    return bz


def check_block_size(size: int) -> None:
    if size < MIN_CHOSEN_BLOCK_SIZE or size & (size - 1) or size > MAX_BLOCK_SIZE:
        raise ValueError(f"block size {size:#x} is not a power of two from "
                         f"{MIN_CHOSEN_BLOCK_SIZE >> 20} MiB to {MAX_BLOCK_SIZE >> 30} GiB")


@attrs.define(eq=False)
class MemoryBlocks:
    """The machine's memory blocks (struct memory_block): their size and which are online."""

    block_pages: int
    online: bytearray                   # 1 per online block, by block id
    auto_online: OnlineType = OnlineType.OFFLINE    # auto_online_blocks (for hot-added ones)
    hot_added_pages: int = 0            # pages added since boot, online or not

    @classmethod
    def create(cls, max_pfn: int, block_size: int | None) -> MemoryBlocks:
        size = probe_memory_block_size(max_pfn) if block_size is None else block_size
        check_block_size(size)
        pages = size >> PAGE_SHIFT
        return cls(pages, bytearray(b"\1") * -(-max_pfn // pages))

    @property
    def block_size_bytes(self) -> int:
        return self.block_pages << PAGE_SHIFT

    @property
    def count(self) -> int:
        return len(self.online)


def block_range(m: Machine, bid: int) -> tuple[int, int]:
    """[start, end) pfns of block bid that exist."""
    start = bid * m.blocks.block_pages
    return start, min(start + m.blocks.block_pages, m.max_pfn)


def page_zonenums(m: Machine, start: int, end: int) -> np.ndarray:
    """page_zonenum() of every pfn in [start, end), as an int8 array."""
    out = np.full(end - start, ZoneType.NORMAL, dtype=np.int8)
    for ztype in (ZoneType.DMA32, ZoneType.DMA):
        out[:max(0, min(ZONE_END_PFN[ztype], end) - start)] = ztype
    out[(m.page_flags[start:end] & PG_MOVABLE_ZONE) != 0] = ZoneType.MOVABLE
    return out


def page_is_movable(m: Machine, pfn: int) -> bool:
    """Whether the allocated block whose head is pfn can be migrated: pages on the LRU (page
    cache, anonymous memory, shmem) move, slab, page tables and kernel stacks do not. Only
    boot's allocations are known by the model itself; any other is held by its pfn (the
    caller frees it by that pfn), so it is pinned; hugepages are not migrated."""
    return pfn in m.boot_allocs and m.kinds.kind[pfn] in kinds.MOVABLE


def block_nodes(m: Machine, bid: int) -> list[int]:
    """The nodes block bid's pages lie on (Linux links a block under each of them)."""
    start, end = block_range(m, bid)
    return np.unique(m.page_node[start:end]).tolist()


def node_blocks(m: Machine, nid: int) -> list[int]:
    """The blocks with pages on node nid."""
    starts = np.arange(0, m.max_pfn, m.blocks.block_pages, dtype=np.int64)
    return np.flatnonzero(np.logical_or.reduceat(m.page_node == nid, starts)).tolist()


def block_zone(m: Machine, bid: int) -> Zone | None:
    """The one zone an online block's pages are in, None if they are in several (Linux's
    mem->zone, which valid_zones shows as "none")."""
    start, end = block_range(m, bid)
    nodes = np.unique(m.page_node[start:end])
    zones = np.unique(page_zonenums(m, start, end))
    if nodes.size != 1 or zones.size != 1:
        return None
    return m.pgdat[int(nodes[0])].zones[int(zones[0])]


def kernel_zone_type(m: Machine, bid: int) -> ZoneType:
    """The kernel zone a block onlines into: its pfns' type (the model's kernel zones are by
    address; a block that straddles two onlines into the higher, as Linux's default)."""
    start, end = block_range(m, bid)
    return ZoneType(int(page_zonenums(m, end - 1, end)[0]) if end > start else ZoneType.NORMAL)


def _spans(zone: Zone, start: int, end: int) -> bool:
    return zone.populated and zone.zone_start_pfn < end and start < zone.zone_end_pfn


def online_zone_type(m: Machine, bid: int, how: OnlineType) -> ZoneType:
    """zone_for_pfn_range(): online_movable is ZONE_MOVABLE, online_kernel the kernel zone, and
    online the one of them whose span already covers the block alone, else the kernel zone
    (default_zone_for_pfn(), without movable_node)."""
    kernel = kernel_zone_type(m, bid)
    if how == OnlineType.ONLINE_MOVABLE:
        return ZoneType.MOVABLE
    if how == OnlineType.ONLINE_KERNEL:
        return kernel
    start, end = block_range(m, bid)
    pgdat = m.pgdat[int(m.page_node[start])]
    in_kernel = _spans(pgdat.zones[kernel], start, end)
    in_movable = _spans(pgdat.zones[ZoneType.MOVABLE], start, end)
    return ZoneType.MOVABLE if in_movable and not in_kernel else kernel


def valid_zones(m: Machine, bid: int) -> list[str]:
    """valid_zones: an online block's zone ("none" if several); for an offline block the zone
    online would pick, then the other ones it may be onlined into."""
    if m.blocks.online[bid]:
        zone = block_zone(m, bid)
        return [zone.name if zone is not None else "none"]
    names = [online_zone_type(m, bid, OnlineType.ONLINE)]
    for how in (OnlineType.ONLINE_KERNEL, OnlineType.ONLINE_MOVABLE):
        zt = online_zone_type(m, bid, how)
        if zt not in names:
            names.append(zt)
    return [zt.label for zt in names]


# --- offline ---------------------------------------------------------------------------------

@attrs.define
class Isolation:
    """What offline_pages() took off the lists and allocated, to give back if it fails."""

    free: list[tuple[Zone, int, int]] = attrs.field(factory=list)      # zone, pfn, order
    pcp: list[tuple[list[int], int]] = attrs.field(factory=list)       # list, pfn
    targets: list[tuple[Zone, int, int]] = attrs.field(factory=list)   # zone, pfn, order

    def undo(self, m: Machine) -> None:
        mm = m.mem_map
        for zone, pfn, order in [*self.targets, *self.free]:
            page_alloc.free_one_page(mm, zone, pfn, order)
        for lst, pfn in self.pcp:
            mm.flags[pfn] |= PG_PCP
            lst.append(pfn)


def isolate_free_pages(m: Machine, start: int, end: int, iso: Isolation) -> None:
    """Take the range's free pages off the buddy and per-CPU lists (start_isolate_page_range()
    and the drain that follows), so that no migration target is taken from the block."""
    mm = m.mem_map
    flags = mm.page_flags[start:end]
    for pfn in (start + np.flatnonzero(flags & PG_BUDDY)).tolist():
        zone, order = page_alloc.page_zone(m, pfn), mm.order[pfn]
        page_alloc.del_page_from_free_list(mm, zone, pfn, order)
        iso.free.append((zone, pfn, order))
    if not (flags & PG_PCP).any():
        return
    for pgdat in m.pgdat.values():
        for zone in pgdat.zones.values():
            for lst in zone.pcp.values():
                keep = [pfn for pfn in lst if not start <= pfn < end]
                if len(keep) != len(lst):
                    for pfn in lst:
                        if start <= pfn < end:
                            mm.flags[pfn] &= ~PG_PCP & 0xFF
                            iso.pcp.append((lst, pfn))
                    lst[:] = keep


def alloc_migration_target(m: Machine, nid: int, order: int) -> tuple[Zone, int] | None:
    """A free block of order for a page of node nid: from nid's zonelist (its own zones first,
    then the other nodes'), above each zone's min watermark."""
    need = 1 << order
    for zone in m.zonelists.get(nid, ()):
        if zone.free_pages - need < zone_watermarks(zone, m.managed_at_boot).min:
            continue
        pfn = page_alloc.rmqueue_smallest(m.mem_map, zone, order)
        if pfn is not None:
            return zone, pfn
    return None


def offline_pages(m: Machine, bid: int) -> None:
    """Offline block bid (offline_pages()): EINVAL for a block with holes, EBUSY if a page
    cannot move (reserved, unmovable, or no room elsewhere); nothing changes on error."""
    start, end = block_range(m, bid)
    if end - start != m.blocks.block_pages:
        raise HotplugError(errno.EINVAL, f"memory{bid} has holes")
    mm = m.mem_map
    flags = mm.page_flags[start:end]
    if (flags & PG_RESERVED).any():
        raise HotplugError(errno.EBUSY, f"memory{bid} holds reserved pages")
    heads = (start + np.flatnonzero(flags & PG_HEAD)).tolist()
    for pfn in heads:
        if not page_is_movable(m, pfn):
            raise HotplugError(errno.EBUSY, f"memory{bid}: page {pfn:#x} is unmovable")
    iso = Isolation()
    isolate_free_pages(m, start, end, iso)
    for pfn in heads:
        order, nid = mm.order[pfn], mm.node[pfn]
        if mm.flags[pfn] & PG_LOOKUP_NODE:      # its layout's node is where it belongs
            nid = int(m.current.node_map(m.page_node[pfn:pfn + 1], pfn)[0])
        target = alloc_migration_target(m, nid, order)
        if target is None:
            iso.undo(m)
            raise HotplugError(errno.EBUSY, f"memory{bid}: no room to migrate page {pfn:#x}")
        iso.targets.append((*target, order))
    migrate_pages(m, heads, iso.targets)
    remove_pages(m, start, end)
    m.blocks.online[bid] = 0
    topology.rebuild_zonelists(m)


def migrate_pages(m: Machine, heads: list[int], targets: list[tuple[Zone, int, int]]) -> None:
    """Each allocated block moves to its target: the target is allocated, the old one is left
    for the block to take offline (a boot allocation keeps its place among them)."""
    mm = m.mem_map
    moved: dict[int, int] = {}
    for pfn, (zone, new, order) in zip(heads, targets):
        kind = kinds.Kind(m.kinds.kind[pfn])
        page_alloc.prep_new_page(mm, zone, new, order)
        kinds.uncharge(m, pfn, order)
        kinds.charge(m, new, order, kind)
        mm.flags[pfn] &= ~PG_HEAD & 0xFF
        moved[pfn] = new
    if moved and any(pfn in m.boot_allocs for pfn in moved):
        m.boot_allocs = {moved.get(pfn, pfn): order for pfn, order in m.boot_allocs.items()}


def remove_pages(m: Machine, start: int, end: int) -> None:
    """The range's pages, now owned by no one, leave their zones' present and managed pages
    and go PG_OFFLINE; those a layout meant for another node go there now (they are free)."""
    nodes = m.page_node[start:end]
    zones = page_zonenums(m, start, end)
    adjust_zone_pages(m, nodes, zones, -1)
    marked = (m.page_flags[start:end] & PG_LOOKUP_NODE) != 0
    if marked.any():
        nodes[:] = m.current.node_map(nodes, start)
    m.page_flags[start:end] = PG_OFFLINE


def adjust_zone_pages(m: Machine, nodes: np.ndarray, zones: np.ndarray, sign: int) -> None:
    """adjust_present_page_count() and adjust_managed_page_count() for the pages given by their
    nodes and zone types."""
    nz = len(ZoneType)
    counts = np.bincount(nodes.astype(np.int64) * nz + zones, minlength=nz)
    for key in np.flatnonzero(counts).tolist():
        zone = m.pgdat[key // nz].zones[key % nz]
        zone.present_pages += sign * int(counts[key])
        zone.managed_pages += sign * int(counts[key])


# --- online ----------------------------------------------------------------------------------

def online_pages(m: Machine, bid: int, how: OnlineType) -> None:
    """Online offline block bid into the zone how asks for (online_pages()): its pages join
    their nodes' zones, whose spans grow to cover them, and are freed to the buddy lists."""
    start, end = block_range(m, bid)
    nodes = m.page_node[start:end]
    for nid in np.unique(nodes).tolist():
        topology.online_node(m, nid)
    ztype = online_zone_type(m, bid, how)
    m.page_flags[start:end] = PG_MOVABLE_ZONE if ztype == ZoneType.MOVABLE else 0
    zones = page_zonenums(m, start, end)
    adjust_zone_pages(m, nodes, zones, 1)
    # Free run by run of one node and zone type, each run into its zone.
    key = nodes.astype(np.int16) * len(ZoneType) + zones
    edges = [0, *(np.flatnonzero(np.diff(key)) + 1).tolist(), end - start]
    for a, b in zip(edges, edges[1:]):
        zone = page_alloc.page_zone(m, start + a)
        zone.span_include(start + a, start + b)
        page_alloc.free_pages_core(m, zone, start + a, start + b)
    m.blocks.online[bid] = 1
    topology.rebuild_zonelists(m)


def move_offline_pages(m: Machine, target: np.ndarray) -> None:
    """A commit moves offline pages to their new nodes at once: they are in no zone, so only
    their node changes (and they stay offline)."""
    offline = (m.page_flags & PG_OFFLINE) != 0
    if offline.any():
        m.page_node[offline] = target[offline]


# --- hot-add -----------------------------------------------------------------------------------

def add_memory(m: Machine, phys_addr: int) -> int:
    """Add one block of memory at phys_addr (x86's probe_store() and __add_memory()); returns
    its block id. Its node is memory_add_physaddr_to_nid()'s: the current layout's node for the
    address if a range names it, else the node of the last page below it. It comes offline,
    then online if auto_online_blocks says so. The model's memory has no holes, so a block is
    added only where memory ends (EINVAL elsewhere, EEXIST over memory that exists)."""
    blocks = m.blocks
    size = blocks.block_size_bytes
    if phys_addr % size:
        raise HotplugError(errno.EINVAL, f"{phys_addr:#x} is not aligned to {size:#x}")
    pfn = phys_addr >> PAGE_SHIFT
    if pfn < m.max_pfn:
        raise HotplugError(errno.EEXIST, f"memory at {phys_addr:#x} exists")
    if pfn != m.max_pfn:
        raise HotplugError(errno.EINVAL, f"memory ends at {m.max_pfn << PAGE_SHIFT:#x}: "
                           "a block is added only there")
    nid = int(m.current.node_map(m.page_node[pfn - 1:pfn], pfn)[0])
    if nid >= m.possible_nodes:
        raise HotplugError(errno.EINVAL, f"node {nid} is not possible")
    mm = page_alloc.MemMap.alloc(pfn + blocks.block_pages)
    for old, new in ((m.mem_map.node, mm.node), (m.mem_map.flags, mm.flags),
                     (m.mem_map.order, mm.order)):
        new[:pfn] = old
    mm.page_node[pfn:] = nid
    mm.page_flags[pfn:] = PG_OFFLINE
    m.mem_map, m.max_pfn = mm, mm.max_pfn
    m.kinds = m.kinds.grown(mm.max_pfn)
    bid = len(blocks.online)
    blocks.online.append(0)
    blocks.hot_added_pages += blocks.block_pages
    topology.online_node(m, nid)
    if blocks.auto_online != OnlineType.OFFLINE:
        online_pages(m, bid, blocks.auto_online)
    else:
        topology.rebuild_zonelists(m)
    return bid


# --- the state and online files' semantics ---------------------------------------------------

def set_state(m: Machine, bid: int, how: OnlineType) -> bool:
    """device_online()/device_offline() of block bid; False if it is already in that state
    (state_store() makes that EINVAL, online_store() success)."""
    if not 0 <= bid < m.blocks.count:
        raise HotplugError(errno.ENODEV, f"no memory block {bid}")
    online = bool(m.blocks.online[bid])
    if (how == OnlineType.OFFLINE) != online:
        return False
    if how == OnlineType.OFFLINE:
        offline_pages(m, bid)
    else:
        online_pages(m, bid, how)
    return True
