"""What allocated pages hold: page cache, anonymous memory, slab, page tables, kernel stacks.

Each allocated block has one kind, kept at its head pfn; the pages of each kind are counted per
node and zone type as blocks are allocated and freed (the kernel's LRU, slab, page-table and
kernel-stack counters: node_stat_item and the zone's NR_ZONE_* LRU items). An allocated page
never changes node (the patch set cannot change page_node() while a page is allocated): its
count stays with its node until it is freed, and the freed page is then transplanted like any
other. The caller holds the machine lock.
"""
from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING

import attrs
import numpy as np

from .constants import PG_HEAD, ZoneType, page_zonenum

if TYPE_CHECKING:
    from .machine import Machine


class Kind(enum.IntEnum):
    """An allocation's kind. NONE is memory no counter accounts for (a driver's alloc_pages()):
    it is in MemUsed only, as in Linux."""

    NONE = 0
    ACTIVE_FILE = 1
    INACTIVE_FILE = 2
    ACTIVE_ANON = 3
    INACTIVE_ANON = 4
    SHMEM = 5               # page cache on the anonymous LRU (swap-backed), inactive
    SLAB_RECLAIMABLE = 6
    SLAB_UNRECLAIMABLE = 7
    PAGETABLE = 8
    KERNEL_STACK = 9


NR_KINDS = len(Kind)
FILE_CACHE = frozenset({Kind.ACTIVE_FILE, Kind.INACTIVE_FILE})      # what drop_caches 1 frees
RECLAIMABLE_SLAB = frozenset({Kind.SLAB_RECLAIMABLE})               # what drop_caches 2 frees
# What lives on the LRU lists, which offlining a memory block can migrate.
MOVABLE = frozenset({Kind.ACTIVE_FILE, Kind.INACTIVE_FILE, Kind.ACTIVE_ANON, Kind.INACTIVE_ANON,
                     Kind.SHMEM})

# Boot's kinds by order: slab asks the buddy allocator for orders up to 3, kernel stacks are
# order 2 (THREAD_SIZE 16 KiB), page tables order 0, the page cache and anonymous memory come
# in large folios. Weights give a running machine's mix: mostly page cache, then anonymous
# memory, a little slab, a few page tables and stacks.
BOOT_KINDS: dict[int, tuple[tuple[Kind, int], ...]] = {
    0: ((Kind.PAGETABLE, 3), (Kind.SLAB_RECLAIMABLE, 3), (Kind.SLAB_UNRECLAIMABLE, 2),
        (Kind.INACTIVE_ANON, 2)),
    1: ((Kind.SLAB_RECLAIMABLE, 1), (Kind.SLAB_UNRECLAIMABLE, 1)),
    2: ((Kind.KERNEL_STACK, 2), (Kind.SLAB_RECLAIMABLE, 1), (Kind.SLAB_UNRECLAIMABLE, 1)),
    3: ((Kind.SLAB_RECLAIMABLE, 3), (Kind.SLAB_UNRECLAIMABLE, 2)),
}
BOOT_KINDS_LARGE = ((Kind.ACTIVE_FILE, 6), (Kind.INACTIVE_FILE, 8), (Kind.ACTIVE_ANON, 1),
                    (Kind.INACTIVE_ANON, 3), (Kind.SHMEM, 2))


def boot_kind(order: int, rng: random.Random) -> Kind:
    """A plausible kind for a block of this order that boot allocates."""
    choices = BOOT_KINDS.get(order, BOOT_KINDS_LARGE)
    kinds, weights = zip(*choices)
    kind: Kind = rng.choices(kinds, weights)[0]
    return kind


@attrs.define(eq=False)
class PageKinds:
    """kind[pfn]: the Kind of the allocated block whose head is pfn (0 elsewhere), with a
    numpy view for whole-array work; counts[nid][zone type][kind]: pages."""

    kind: bytearray
    counts: list[list[list[int]]]
    page_kind: np.ndarray = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.page_kind = np.frombuffer(self.kind, dtype=np.uint8)

    @classmethod
    def alloc(cls, max_pfn: int, possible_nodes: int) -> PageKinds:
        return cls(bytearray(max_pfn), [[[0] * NR_KINDS for _ in ZoneType]
                                        for _ in range(possible_nodes)])

    def grown(self, max_pfn: int) -> PageKinds:
        """The same kinds over more pfns (memory hot-added past the end holds none)."""
        kind = bytearray(max_pfn)
        kind[:len(self.kind)] = self.kind
        return PageKinds(kind, self.counts)

    def node(self, nid: int) -> list[int]:
        """Pages of each kind on node nid, over its zones."""
        return [sum(col) for col in zip(*self.counts[nid])]

    def zone(self, nid: int, ztype: int) -> list[int]:
        return self.counts[nid][ztype]


def charge(m: Machine, pfn: int, order: int, kind: Kind) -> None:
    """The block at pfn, just allocated, holds kind."""
    if kind:
        m.kinds.kind[pfn] = kind
        mm = m.mem_map
        m.kinds.counts[mm.node[pfn]][page_zonenum(mm.flags[pfn], pfn)][kind] += 1 << order


def uncharge(m: Machine, pfn: int, order: int) -> None:
    """The block at pfn is being freed, on the node it was allocated on."""
    kinds, mm = m.kinds, m.mem_map
    kind = kinds.kind[pfn]
    if kind:
        kinds.kind[pfn] = 0
        kinds.counts[mm.node[pfn]][page_zonenum(mm.flags[pfn], pfn)][kind] -= 1 << order


def allocations_of(m: Machine, wanted: frozenset[Kind]) -> list[tuple[int, int]]:
    """(pfn, order) of every allocated block holding one of the wanted kinds, by pfn."""
    heads = np.flatnonzero(np.isin(m.kinds.page_kind, np.array(sorted(wanted), np.uint8)))
    return [(p, m.mem_map.order[p]) for p in heads.tolist()]


def check_kinds(m: Machine) -> list[str]:
    """Kinds are only on heads of allocated blocks, and the counts are their pages, per node,
    zone type and kind."""
    errs = []
    pk = m.kinds.page_kind
    heads = np.flatnonzero(pk)
    if (m.page_flags[heads] & PG_HEAD == 0).any():
        errs.append("a page kind is set on a pfn that heads no allocated block")
    sizes = np.left_shift(1, m.page_order[heads].astype(np.int64))
    zt = np.array([page_zonenum(f, p) for f, p in zip(m.page_flags[heads].tolist(),
                                                        heads.tolist())], dtype=np.int64)
    key = (m.page_node[heads].astype(np.int64) * len(ZoneType) + zt) * NR_KINDS + pk[heads]
    want = np.bincount(key, weights=sizes,
                       minlength=m.possible_nodes * len(ZoneType) * NR_KINDS).astype(np.int64)
    have = np.array(m.kinds.counts, dtype=np.int64).reshape(-1)
    for i in np.flatnonzero(want != have)[:20]:
        nid, rest = divmod(int(i), len(ZoneType) * NR_KINDS)
        ztype, kind = divmod(rest, NR_KINDS)
        errs.append(f"node {nid} zone {ZoneType(ztype).label}: {Kind(kind).name} counts "
                    f"{have[i]} pages, its blocks hold {int(want[i])}")
    return errs


# The kernel's counters each kind adds its pages to (node_stat_item; a zone keeps only the LRU
# lists, as NR_ZONE_*). Shmem is page cache (file pages) that lives on the anonymous LRU.
NODE_ITEMS: dict[str, tuple[Kind, ...]] = {
    "nr_inactive_anon": (Kind.INACTIVE_ANON, Kind.SHMEM),
    "nr_active_anon": (Kind.ACTIVE_ANON,),
    "nr_inactive_file": (Kind.INACTIVE_FILE,),
    "nr_active_file": (Kind.ACTIVE_FILE,),
    "nr_slab_reclaimable": (Kind.SLAB_RECLAIMABLE,),
    "nr_slab_unreclaimable": (Kind.SLAB_UNRECLAIMABLE,),
    "nr_anon_pages": (Kind.ACTIVE_ANON, Kind.INACTIVE_ANON),
    "nr_file_pages": (Kind.ACTIVE_FILE, Kind.INACTIVE_FILE, Kind.SHMEM),
    "nr_shmem": (Kind.SHMEM,),
    "nr_kernel_stack": (Kind.KERNEL_STACK,),        # pages here; Linux prints it in kB
    "nr_page_table_pages": (Kind.PAGETABLE,),
}
ZONE_ITEMS: dict[str, tuple[Kind, ...]] = {
    f"nr_zone_{lru}": NODE_ITEMS[f"nr_{lru}"]
    for lru in ("inactive_anon", "active_anon", "inactive_file", "active_file")
}


def page_state(items: dict[str, tuple[Kind, ...]], counts: list[int]) -> dict[str, int]:
    """Each counter of items, in pages, from the pages of each kind."""
    return {name: sum(counts[k] for k in kinds) for name, kinds in items.items()}
