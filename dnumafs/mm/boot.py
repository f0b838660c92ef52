"""Boot: lay the nodes out, reserve what the kernel keeps, free the rest into the buddy
allocator (memblock_free_all()), and allocate some of it for later (what a running machine
holds as page cache and slab). The caller holds the machine lock.

The nodes with memory are laid out in node id order from pfn 0, each in one piece. A node's
present pages are chosen so that what remains managed after its reservations is exactly its
MemTotal (nodeN/meminfo is managed pages), to the page, as the machine's description says.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from dnumafs.machines import MachineDescription, MachineError
from dnumafs.machines.reserve import reserved_count, reserved_ranges

from . import kinds, page_alloc
from .constants import (
    MIN_NODE_PAGES,
    PAGE_SIZE,
    PG_RESERVED,
    ZoneType,
    zone_type_bounds,
)

if TYPE_CHECKING:
    from .machine import Machine


def node_present_pages(desc: MachineDescription) -> dict[int, int]:
    """Present pages of each node with memory, laid out in id order from pfn 0: those the
    description gives (the synthetic machine's RAM), else the least size whose pages less
    its reservations are its MemTotal (the least fixed point of present = managed +
    reserved(present), reached from below as reserved() only grows). Either way MemTotal is
    the node's managed pages, to the page."""
    out = {}
    start = 0
    for n in desc.nodes:
        if not n.memory_kb:
            continue
        managed, rest = divmod(n.memory_kb * 1024, PAGE_SIZE)
        if rest or (n.present_pages is None and managed < MIN_NODE_PAGES):
            raise MachineError(f"{desc.source}: node {n.nid} MemTotal {n.memory_kb} kB is not "
                               f"whole {PAGE_SIZE >> 10} kB pages of at least "
                               f"{MIN_NODE_PAGES * PAGE_SIZE >> 20} MiB")
        present = n.present_pages or managed
        while (want := managed + reserved_count(start, present)) != present:
            present = want
        out[n.nid] = present
        start += present
    return out


def free_runs(lo: int, hi: int, reserved: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs [a, b) of [lo, hi) that no reserved range [rlo, rhi) covers (reserved
    sorted by start; its ranges may overlap)."""
    runs = []
    for rlo, rhi in reserved:
        if rlo > lo:
            runs.append((lo, min(rlo, hi)))
        lo = max(lo, rhi)
        if lo >= hi:
            break
    if lo < hi:
        runs.append((lo, hi))
    return [(a, b) for a, b in runs if a < b]


def boot_node(m: Machine, nid: int, start: int, end: int) -> None:
    """Give node nid the pfns [start, end): its zones' sizes, its reserved pages (its memmap
    at the top; on the first node also the first MiB and the kernel image), and free the
    rest, run by run, in maximal aligned blocks."""
    pgdat = m.pgdat[nid]
    max_pfn = m.mem_map.max_pfn
    flags = m.mem_map.page_flags
    reserved = sorted(reserved_ranges(start, end))
    for lo, hi in reserved:
        flags[lo:hi] |= PG_RESERVED
    for ztype in ZoneType:
        lo, hi = zone_type_bounds(ztype, max_pfn)
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            zone = pgdat.zones[ztype]
            zone.span_include(lo, hi)
            runs = free_runs(lo, hi, reserved)
            zone.present_pages = hi - lo
            zone.managed_pages = sum(b - a for a, b in runs)
            for a, b in runs:
                page_alloc.free_pages_core(m, zone, a, b)


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

