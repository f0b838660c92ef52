"""The machine: page arrays, nodes, CPUs, layouts, and the one lock over them all."""
from __future__ import annotations

import errno
import random
import threading

import attrs
import numpy as np

from .check import check
from .constants import (
    HPAGE_ORDER,
    LOCAL_DISTANCE,
    MAX_ORDER,
    PAGE_SHIFT,
    PG_BUDDY,
    PG_HEAD,
    PG_HUGETLB,
    PG_LOOKUP_NODE,
    PG_PCP,
    PG_RESERVED,
    REMOTE_DISTANCE,
    ZONE_END_PFN,
    ZoneType,
    zone_type_bounds,
)
from .dnuma import commit, uniform_pieces
from .memlayout import Memlayout, MemlayoutError
from .stats import DnumaStats, SummedStats, sum_stats
from .zone import Pgdat, Watermarks, Zone, zone_watermarks

MIN_NODE_PAGES = (4 << 20) >> PAGE_SHIFT
MAX_CPUS = 256
MAX_POSSIBLE_NODES = 64
PCP_BATCH = 16          # pages moved between a per-CPU list and the buddy lists at once
PCP_HIGH = 64           # a per-CPU list longer than this gives a batch back
MEMMAP_BYTES_PER_PAGE = 64   # sizeof(struct page): the memmap each node reserves
KERNEL_IMAGE_PFN = (16 << 20) >> PAGE_SHIFT


@attrs.define
class MachineConfig:
    """What to boot. Sizes are bytes; node_mem, if given, sets each node's share."""

    nodes: int = 2
    mem: int = 1 << 30
    node_mem: list[int] | None = None
    cpus: int = 4
    possible_nodes: int = 8
    boot_alloc_percent: float = 5.0     # of each node's managed pages, allocated at boot
    seed: int = 0


class Machine:
    """A NUMA machine's page allocator with dnuma.

    Public methods take self.lock; readers that need several figures to agree take it
    themselves around their reads (it is re-entrant).

    Page metadata, one entry per pfn (numpy arrays):
      page_node[pfn]  uint8  the node the page belongs to now
      page_flags[pfn] uint8  PG_* bits from constants
      page_order[pfn] uint8  order of the free or allocated block whose head is pfn
    Each array is a view of a bytearray (_node, _flags, _order) that the per-page paths
    index directly: a bytearray item costs a fraction of a numpy scalar access.
    """

    lock: threading.RLock
    config: MachineConfig
    max_pfn: int
    possible_nodes: int
    nr_cpus: int
    page_node: np.ndarray
    page_flags: np.ndarray
    page_order: np.ndarray
    pgdat: dict[int, Pgdat]            # online nodes only, by nid
    cpu_node: list[int]                # cpu -> nid
    layouts: dict[int, Memlayout]      # pending, current and backlog layouts, by id
    current: Memlayout
    pending: Memlayout | None
    backlog: list[Memlayout]           # oldest first
    backlog_max: int
    retired_stats: dict[int | None, DnumaStats]  # counters of destroyed layouts, by node
    vm_events: dict[str, int]          # pgfree, htlb_buddy_alloc_*: counted events
    _boot_allocs: dict[int, int]       # pfn -> order of boot allocations still held, oldest first

    # ------------------------------------------------------------------ boot

    @classmethod
    def boot(cls, config: MachineConfig | None = None) -> Machine:
        """Lay each node out contiguously, reserve and allocate some of it, free the rest."""
        config = config or MachineConfig()
        sizes = _node_sizes(config)
        m = cls.__new__(cls)
        m.lock = threading.RLock()
        m.config = config
        m.max_pfn = sum(sizes)
        m.possible_nodes = config.possible_nodes
        m.nr_cpus = config.cpus
        m.cpu_node = [c * config.nodes // config.cpus for c in range(config.cpus)]
        m._node, m._flags, m._order = (bytearray(m.max_pfn) for _ in range(3))
        m.page_node = np.frombuffer(m._node, dtype=np.uint8)
        m.page_flags = np.frombuffer(m._flags, dtype=np.uint8)
        m.page_order = np.frombuffer(m._order, dtype=np.uint8)
        m.page_node[:] = np.repeat(np.arange(config.nodes, dtype=np.uint8), sizes)
        m.pgdat = {}
        m.retired_stats = {}
        m.vm_events = {"pgfree": 0, "htlb_buddy_alloc_success": 0, "htlb_buddy_alloc_fail": 0}
        m._boot_allocs = {}
        m.layouts = {}
        m.pending = None
        m.backlog = []
        m.backlog_max = 8
        m._next_layout_id = 0
        m._zonelists = {}
        m._populated = frozenset()
        m._in_commit = False
        boot_layout = m._register_layout(Memlayout(m._next_layout_id))
        start = 0
        for nid, size in enumerate(sizes):
            m._online_node(nid)
            boot_layout.add_range(start, start + size - 1, nid)
            m._boot_node(nid, start, start + size)
            start += size
        m.current = boot_layout
        m._total_managed = m.total_managed_pages()
        m._rebuild_zonelists()
        for nid in range(config.nodes):
            m._boot_allocate(nid)
        return m

    def _boot_node(self, nid: int, start: int, end: int) -> None:
        pgdat = self.pgdat[nid]
        for ztype in ZoneType:
            lo, hi = zone_type_bounds(ztype, self.max_pfn)
            lo, hi = max(lo, start), min(hi, end)
            if lo < hi:
                zone = pgdat.zones[ztype]
                zone.span_include(lo, hi)
                zone.present_pages = zone.managed_pages = hi - lo
        size = end - start
        reserved = [(end - -(-size * MEMMAP_BYTES_PER_PAGE // 4096), end)]   # memmap, top-down
        if start == 0:
            reserved.append((0, min(256, size)))                            # first MiB
            image = min(2048, size // 32)
            image_start = KERNEL_IMAGE_PFN if KERNEL_IMAGE_PFN + image < size // 2 else 256
            reserved.append((image_start, image_start + image))
        for lo, hi in reserved:
            self.page_flags[lo:hi] |= PG_RESERVED
        for ztype in ZoneType:
            zone = pgdat.zones[ztype]
            if not zone.present_pages:
                continue
            lo, hi = zone.zone_start_pfn, zone.zone_end_pfn
            res = (self.page_flags[lo:hi] & PG_RESERVED) != 0
            zone.managed_pages -= int(res.sum())
            # Free every run of unreserved pages in maximal aligned blocks, as memblock does.
            edges = np.flatnonzero(np.diff(np.concatenate(([True], res, [True])).astype(np.int8)))
            for a, b in zip(edges[0::2], edges[1::2]):
                self._free_range_to_buddy(zone, lo + int(a), lo + int(b))

    def _free_range_to_buddy(self, zone: Zone, pfn: int, end: int) -> None:
        while pfn < end:
            order = min(MAX_ORDER - 1, (pfn & -pfn).bit_length() - 1 if pfn else MAX_ORDER - 1,
                        (end - pfn).bit_length() - 1)
            self._add_free_block(zone, pfn, order)
            pfn += 1 << order

    def _boot_allocate(self, nid: int) -> None:
        """Allocate boot_alloc_percent of the node, in blocks of mixed order, for use later."""
        target = int(self.pgdat[nid].managed_pages * self.config.boot_alloc_percent / 100)
        rng = random.Random(self.config.seed * 1000 + nid)
        cpus = self.node_cpus(nid)
        cpu = cpus[0] if cpus else 0
        done = 0
        while done < target:
            order = min(rng.randrange(0, 10), (target - done).bit_length() - 1)
            pfn = self.alloc_pages(order, nid=nid, cpu=cpu, thisnode=True)
            if pfn is None:
                break
            self._boot_allocs[pfn] = order
            done += 1 << order

    # ------------------------------------------------------------ topology

    def _online_node(self, nid: int) -> None:
        if nid not in self.pgdat:
            self.pgdat[nid] = Pgdat.empty(nid)

    def online_nodes(self) -> list[int]:
        with self.lock:
            return sorted(self.pgdat)

    def nodes_with_memory(self) -> list[int]:
        with self.lock:
            return [n for n in sorted(self.pgdat) if self.pgdat[n].present_pages > 0]

    def nodes_with_cpus(self) -> list[int]:
        return sorted(set(self.cpu_node))

    def node_cpus(self, nid: int) -> list[int]:
        return [c for c, n in enumerate(self.cpu_node) if n == nid]

    def node_distance(self, a: int, b: int) -> int:
        return LOCAL_DISTANCE if a == b else REMOTE_DISTANCE

    def total_managed_pages(self) -> int:
        with self.lock:
            return sum(p.managed_pages for p in self.pgdat.values())

    def total_free_pages(self) -> int:
        with self.lock:
            return sum(p.free_pages for p in self.pgdat.values())

    def watermarks(self, zone: Zone) -> Watermarks:
        return zone_watermarks(zone, self._total_managed)

    def pgalloc(self, ztype: ZoneType) -> int:
        """vmstat pgalloc_<zone>: pages allocated from zones of this type, on every node."""
        with self.lock:
            return sum(p.zones[ztype].pgalloc for p in self.pgdat.values())

    def hugepages(self, nid: int) -> tuple[int, int, int]:
        """(total, free, surplus): nothing maps the pool's pages, and there is no overcommit."""
        with self.lock:
            n = self.pgdat[nid].nr_hugepages
            return n, n, 0

    def _zone_of(self, pfn: int) -> Zone:
        zt = 0 if pfn < _DMA_END else 1 if pfn < _DMA32_END else 2      # ZoneType, as int: faster
        return self.pgdat[self._node[pfn]].zones[zt]

    # ------------------------------------------------------------- zonelists

    def _rebuild_zonelists(self) -> bool:
        """Rebuild each node's fallback list if the populated zones changed; say if it did."""
        populated = frozenset((z.nid, z.type) for p in self.pgdat.values() for z in p.populated_zones())
        if populated == self._populated and set(self._zonelists) == set(self.pgdat):
            return False
        self._populated = populated
        nodes = sorted(self.pgdat)
        self._zonelists = {}
        for pref in nodes:
            order = sorted(nodes, key=lambda n: (self.node_distance(pref, n), n != pref, n))
            self._zonelists[pref] = [
                self.pgdat[n].zones[t] for n in order for t in reversed(ZoneType)
                if (n, t) in populated
            ]
        return True

    # ------------------------------------------------------- buddy allocator

    def _add_free_block(self, zone: Zone, pfn: int, order: int) -> None:
        zone.free_area[order][pfn] = None
        self._flags[pfn] |= PG_BUDDY
        self._order[pfn] = order

    def _del_free_block(self, zone: Zone, pfn: int, order: int) -> None:
        del zone.free_area[order][pfn]
        self._flags[pfn] &= ~PG_BUDDY & 0xFF

    def _free_one(self, zone: Zone, pfn: int, order: int) -> None:
        """__free_one_page: merge with the buddy while it is free, same order, same zone."""
        free_area = zone.free_area
        flags = self._flags
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
        self._order[pfn] = order

    def _rmqueue(self, zone: Zone, order: int) -> int | None:
        """Take the smallest free block of at least order, splitting off the upper halves."""
        for high in range(order, MAX_ORDER):
            fa = zone.free_area[high]
            if fa:
                pfn, _ = fa.popitem()
                self._flags[pfn] &= ~PG_BUDDY & 0xFF
                while high > order:
                    high -= 1
                    self._add_free_block(zone, pfn + (1 << high), high)
                return pfn
        return None

    def _rmqueue_pcp(self, zone: Zone, cpu: int) -> int | None:
        lst = zone.pcp.setdefault(cpu, [])
        if not lst:
            for _ in range(PCP_BATCH):
                pfn = self._rmqueue(zone, 0)
                if pfn is None:
                    break
                self._flags[pfn] |= PG_PCP
                lst.append(pfn)
            if not lst:
                return None
        pfn = lst.pop()
        self._flags[pfn] &= ~PG_PCP & 0xFF
        return pfn

    def alloc_pages(self, order: int = 0, nid: int | None = None, cpu: int = 0,
                    interleave: bool = False, thisnode: bool = False) -> int | None:
        """Allocate 2^order pages, preferring nid (or cpu's node); None if nothing fits."""
        if not 0 <= order < MAX_ORDER:
            raise ValueError(f"order {order} out of range 0..{MAX_ORDER - 1}")
        if not 0 <= cpu < self.nr_cpus:
            raise ValueError(f"cpu {cpu} does not exist")
        with self.lock:
            pref = self.cpu_node[cpu] if nid is None else nid
            if pref not in self.pgdat:
                raise ValueError(f"node {pref} is not online")
            zonelist = self._zonelists[pref]
            # zone_statistics() compares with the zonelist's first zone, which for a node
            # without memory is on the nearest node that has some.
            stat_pref = zonelist[0].nid if zonelist else pref
            if thisnode:
                zonelist = [z for z in zonelist if z.nid == pref]
            need = 1 << order
            for mark in ("low", "min"):
                for zone in zonelist:
                    if zone.free_pages - need < getattr(self.watermarks(zone), mark):
                        continue
                    pfn = self._rmqueue_pcp(zone, cpu) if order == 0 else self._rmqueue(zone, order)
                    if pfn is not None:
                        self._account_alloc(zone, pfn, order, pref, stat_pref, cpu, interleave)
                        return pfn
            return None

    def _account_alloc(self, zone: Zone, pfn: int, order: int, nid: int, pref: int, cpu: int,
                       interleave: bool) -> None:
        """Mark the block allocated and count it as Linux's zone_statistics() does, against
        pref, the node of the preferred zone; interleave_hit when it came from nid, the
        node the interleave asked for."""
        self._flags[pfn] |= PG_HEAD
        self._order[pfn] = order
        zone.pgalloc += 1 << order
        stat = self.pgdat[zone.nid].numastat
        if zone.nid == pref:
            stat["numa_hit"] += 1
        else:
            stat["numa_miss"] += 1
            self.pgdat[pref].numastat["numa_foreign"] += 1
        stat["local_node" if zone.nid == self.cpu_node[cpu] else "other_node"] += 1
        if interleave and zone.nid == nid:
            stat["interleave_hit"] += 1

    def free_pages(self, pfn: int, cpu: int = 0) -> None:
        """Free the allocated block whose head is pfn (its order is the allocation's)."""
        with self.lock:
            if not 0 <= pfn < self.max_pfn:
                raise ValueError(f"pfn {pfn:#x} beyond max_pfn {self.max_pfn:#x}")
            flags = self._flags[pfn]
            if flags & (PG_HEAD | PG_HUGETLB) != PG_HEAD:
                raise ValueError(f"pfn {pfn:#x} is not the head of an allocated block"
                                 if not flags & PG_HEAD else f"pfn {pfn:#x} belongs to a "
                                 "hugepage pool")
            if not 0 <= cpu < self.nr_cpus:
                raise ValueError(f"cpu {cpu} does not exist")
            self._free_allocated(pfn, cpu)

    def _free_allocated(self, pfn: int, cpu: int) -> None:
        self._boot_allocs.pop(pfn, None)
        order = self._order[pfn]
        self._flags[pfn] &= ~PG_HEAD & 0xFF
        self.vm_events["pgfree"] += 1 << order
        self._free_block(pfn, order, cpu)

    def _free_block(self, pfn: int, order: int, cpu: int | None) -> None:
        """Free to the buddy lists, or to cpu's per-CPU list for order 0 (cpu None: buddy)."""
        if order == 0:
            if self._flags[pfn] & PG_LOOKUP_NODE:
                self._transplant_page(pfn)
                return
        elif (self.page_flags[pfn:pfn + (1 << order)] & PG_LOOKUP_NODE).any():
            self._transplant_on_free(pfn, order)
            return
        zone = self._zone_of(pfn)
        if order or cpu is None:
            self._free_one(zone, pfn, order)
            return
        lst = zone.pcp.setdefault(cpu, [])
        self._flags[pfn] |= PG_PCP
        lst.append(pfn)
        if len(lst) > PCP_HIGH:
            self._drain_pcp_list(zone, lst, PCP_BATCH)

    def _drain_pcp_list(self, zone: Zone, lst: list[int], count: int) -> None:
        """Give the oldest count pages of a per-CPU list back to the buddy lists."""
        batch, lst[:count] = lst[:count], []
        for pfn in batch:
            self._flags[pfn] &= ~PG_PCP & 0xFF
            self._free_block(pfn, 0, None)

    def drain_pcp(self) -> int:
        """Empty every per-CPU list; returns how many non-empty lists were drained."""
        with self.lock:
            drained = 0
            for pgdat in list(self.pgdat.values()):
                for zone in pgdat.zones.values():
                    for lst in zone.pcp.values():
                        if lst:
                            self._drain_pcp_list(zone, lst, len(lst))
                            drained += 1
            return drained

    @property
    def boot_allocations(self) -> list[tuple[int, int]]:
        """(pfn, order) of what boot allocated and is still held, oldest first."""
        with self.lock:
            return list(self._boot_allocs.items())

    def free_boot_allocations(self, limit: int | None = None) -> int:
        """Free boot allocations, oldest first, until limit pages are freed; returns pages."""
        with self.lock:
            freed = 0
            while self._boot_allocs and (limit is None or freed < limit):
                pfn = next(iter(self._boot_allocs))
                freed += 1 << self._boot_allocs[pfn]
                self._free_allocated(pfn, 0)
            return freed

    # ------------------------------------------------------------- hugepages

    def set_nr_hugepages(self, nid: int, count: int) -> int:
        """Grow or shrink nid's pool of 2 MiB pages through its own buddy allocator."""
        with self.lock:
            if nid not in self.pgdat:
                raise ValueError(f"node {nid} is not online")
            if count < 0:
                raise ValueError("negative hugepage count")
            pool = self.pgdat[nid].hugepage_pool
            cpus = self.node_cpus(nid)
            cpu = cpus[0] if cpus else 0
            while len(pool) < count:
                pfn = self.alloc_pages(HPAGE_ORDER, nid=nid, cpu=cpu, thisnode=True)
                if pfn is None:
                    self.vm_events["htlb_buddy_alloc_fail"] += 1
                    break
                self.vm_events["htlb_buddy_alloc_success"] += 1
                self._flags[pfn] |= PG_HUGETLB
                pool.append(pfn)
            while len(pool) > count:
                pfn = pool.pop()
                self._flags[pfn] &= ~PG_HUGETLB & 0xFF
                self._free_allocated(pfn, cpu)
            return len(pool)

    # ------------------------------------------------------------- memlayout

    def _register_layout(self, layout: Memlayout) -> Memlayout:
        """Give a layout its place among the layouts; ids are taken in order of creation."""
        assert layout.id == self._next_layout_id
        self._next_layout_id += 1
        self.layouts[layout.id] = layout
        return layout

    def memlayout_add_range(self, start: int, end: int, nid: int) -> None:
        """Add [start, end] -> nid to the pending layout; on error nothing changes."""
        with self.lock:
            if not 0 <= nid < self.possible_nodes:
                raise MemlayoutError(errno.EINVAL, f"node {nid} is not possible")
            layout = self.pending or Memlayout(self._next_layout_id)
            layout.add_range(start, end, nid)       # raises before it changes anything
            if self.pending is None:
                self.pending = self._register_layout(layout)

    def memlayout_clear(self) -> None:
        with self.lock:
            if self.pending is not None:
                self._retire(self.pending)
                self.pending = None

    def memlayout_commit(self) -> Memlayout | None:
        with self.lock:
            return commit(self)

    def layout(self, lid: int) -> Memlayout | None:
        """The pending, current or backlog layout numbered lid, or None."""
        with self.lock:
            return self.layouts.get(lid)

    def layout_ids(self) -> list[int]:
        """The ids of the pending, current and backlog layouts, ascending."""
        with self.lock:
            return sorted(self.layouts)

    def stat_nids(self) -> list[int]:
        """The nodes node_stats/ lists: every possible node, as the kernel creates them."""
        return list(range(self.possible_nodes))

    def drop_caches(self, mode: int) -> None:
        """vm.drop_caches: 1 frees the page cache, 2 slab, 3 both (the boot allocations
        stand for both), counted as drop_pagecache and drop_slab events."""
        with self.lock:
            if mode & 3:
                self.free_boot_allocations()
            if mode & 1:
                self.vm_events["drop_pagecache"] = self.vm_events.get("drop_pagecache", 0) + 1
            if mode & 2:
                self.vm_events["drop_slab"] = self.vm_events.get("drop_slab", 0) + 1

    def set_backlog_max(self, n: int) -> None:
        with self.lock:
            if n < 0:
                raise ValueError("backlog_max must be >= 0")
            self.backlog_max = n
            self._trim_backlog()

    def _trim_backlog(self) -> None:
        while len(self.backlog) > self.backlog_max:
            self._retire(self.backlog.pop(0))

    def count(self, name: str, n: int, nid: int | None = None) -> None:
        """Count a dnuma event of the current layout, at node nid (None: no node).

        Each event is counted once, by layout and node; global and per-layout totals
        are sums (see stats, node_stats), so nothing is counted twice.
        """
        self.current.count(name, n, nid)

    def _layout_counters(self) -> list[dict[int | None, DnumaStats]]:
        return [self.retired_stats] + [l.counters for l in self.layouts.values()]

    @property
    def stats(self) -> SummedStats:
        """Global counters: every layout's, destroyed ones included."""
        return SummedStats(lambda: [s for c in self._layout_counters() for s in c.values()])

    @property
    def node_stats(self) -> dict[int, SummedStats]:
        nids = sorted({n for c in self._layout_counters() for n in c if n is not None}
                      | set(self.pgdat))
        return {nid: SummedStats(lambda nid=nid: [c[nid] for c in self._layout_counters()
                                                  if nid in c])
                for nid in nids}

    def _retire(self, layout: Memlayout) -> None:
        """Destroy a layout, keeping its counts in the global totals."""
        del self.layouts[layout.id]
        for nid, stats in layout.counters.items():
            self.retired_stats[nid] = sum_stats([self.retired_stats.get(nid, DnumaStats()), stats])

    # -------------------------------------------------------------- transplant

    def _move_pages(self, pfn: int, n: int, old: int, new: int) -> Zone:
        """Give n managed pages of one zone type from node old to node new; new's zone.

        A commit rebuilds the zonelists once at its end; a transplant on free outside a
        commit rebuilds at once if it populated or emptied a zone.
        """
        zt = 0 if pfn < _DMA_END else 1 if pfn < _DMA32_END else 2      # ZoneType, as int: faster
        zold, znew = self.pgdat[old].zones[zt], self.pgdat[new].zones[zt]
        zold.present_pages -= n
        zold.managed_pages -= n
        znew.present_pages += n
        znew.managed_pages += n
        if not znew.zone_start_pfn <= pfn < pfn + n <= znew.zone_end_pfn:
            znew.span_include(pfn, pfn + n)
        if n == 1:
            self._node[pfn] = new
        else:
            self.page_node[pfn:pfn + n] = new
        self.current.counter(new).counts["moved-pages"] += n
        if not self._in_commit and (zold.present_pages == 0 or znew.present_pages == n):
            if self._rebuild_zonelists():
                self.count("zonelist-rebuild", 1)
        return znew

    def _transplant_page(self, pfn: int) -> None:
        """_transplant_on_free for one page, the common case, without the block logic."""
        self._flags[pfn] &= ~PG_LOOKUP_NODE & 0xFF
        old = self._node[pfn]
        nid = self.current.lookup(pfn, old)
        self._free_transplanted(pfn, 0, old, old if nid is None else nid)

    def _transplant_on_free(self, pfn: int, order: int) -> None:
        """A marked block is freed: look it up and free each part into its node's zone."""
        size = 1 << order
        self.page_flags[pfn:pfn + size] &= ~PG_LOOKUP_NODE & 0xFF
        old = self._node[pfn]
        layout = self.current
        nid = layout.lookup(pfn, old)
        targets = None
        if order and (nid is None or layout.covers(pfn, pfn + size - 1) is None):
            targets = layout.node_map(self.page_node[pfn:pfn + size], pfn)
        for p, o, tgt in uniform_pieces(targets, pfn, order, old if nid is None else nid, self):
            self._free_transplanted(p, o, old, tgt)

    def _free_transplanted(self, pfn: int, order: int, old: int, tgt: int) -> None:
        """Free one looked-up piece: into node tgt's zone, or where it is if tgt is old."""
        if tgt == old:
            self.current.counter(old).counts["transplant-bail-already-done"] += 1 << order
            self._free_one(self._zone_of(pfn), pfn, order)
            return
        zone = self._move_pages(pfn, 1 << order, old, tgt)
        self.current.counter(tgt).counts["transplant-on-free"] += 1 << order
        self._free_one(zone, pfn, order)

    # ---------------------------------------------------------------- check

    def check(self) -> list[str]:
        with self.lock:
            return check(self)


_DMA_END = ZONE_END_PFN[ZoneType.DMA]
_DMA32_END = ZONE_END_PFN[ZoneType.DMA32]


def _node_sizes(config: MachineConfig) -> list[int]:
    if not 1 <= config.nodes <= config.possible_nodes <= MAX_POSSIBLE_NODES:
        raise ValueError(f"need 1 <= nodes ({config.nodes}) <= possible nodes "
                         f"({config.possible_nodes}) <= {MAX_POSSIBLE_NODES}")
    if not 1 <= config.cpus <= MAX_CPUS:
        raise ValueError(f"need 1 <= cpus ({config.cpus}) <= {MAX_CPUS}")
    if config.node_mem is not None:
        if len(config.node_mem) != config.nodes:
            raise ValueError(f"{len(config.node_mem)} node sizes given for {config.nodes} nodes")
        sizes = [b >> PAGE_SHIFT for b in config.node_mem]
    else:
        pages = config.mem >> PAGE_SHIFT
        sizes = [pages // config.nodes] * config.nodes
        sizes[-1] += pages - sum(sizes)
    if min(sizes) < MIN_NODE_PAGES:
        raise ValueError(f"every node needs at least {MIN_NODE_PAGES >> 8} MiB")
    return sizes
