"""The machine: the owner of the model's state and of the one lock over it, and its public API.

The work is done along the kernel's files: boot.py (boot), topology.py (nodes, CPUs,
distances, zonelists), page_alloc.py (buddy allocator, per-CPU lists), hugetlb.py (hugepage
pools), dnuma.py (layouts, commit, transplant), check.py (the invariant checker). Their
functions take the machine with its lock held; the methods here take the lock (it is
re-entrant, so readers that need several figures to agree take it around their reads).
"""
from __future__ import annotations

import errno
import threading
from collections.abc import Iterable

import attrs
import numpy as np

from dnumafs.machines import MachineDescription

from . import boot, cpu_hotplug, dnuma, hugetlb, kinds, memory_hotplug, page_alloc, topology
from . import workload as workload_mod
from .changes import (
    LAYOUTS,
    NODES,
    PAGES,
    PLACES,
    ChangeHook,
    Device,
    memory_block_device,
    memory_block_topic,
    node_device,
)
from .check import check
from .constants import (
    HPAGE_ORDER,
    MAX_ORDER,
    PG_HEAD,
    PG_HUGETLB,
    PG_LOOKUP_NODE,
    ZoneType,
)
from .kinds import FILE_CACHE, RECLAIMABLE_SLAB, Kind, PageKinds
from .memlayout import Memlayout, MemlayoutError
from .page_alloc import MemMap
from .stats import DnumaStats, NodeStats, RetiredStats, VmEvents
from .topology import MachineConfig, Topology, size_order
from .zone import Pgdat, Watermarks, Zone, zone_watermarks

BOOT_LAYOUT_ID = 0
DEFAULT_BACKLOG_MAX = 8         # CONFIG_DNUMA_BACKLOG
ULONG_MAX = (1 << 64) - 1       # backlog_max is an unsigned long module parameter
DROP_PAGECACHE, DROP_SLAB = 1, 2       # vm.drop_caches bits


@attrs.define(eq=False)
class Machine:
    """A NUMA machine's page allocator with dnuma. Build one with Machine.boot()."""

    config: MachineConfig
    topo: Topology
    mem_map: MemMap
    lock: threading.RLock = attrs.field(factory=threading.RLock)
    # Fixed at boot; kept as plain attributes because the per-page paths check them.
    max_pfn: int = attrs.field(init=False)
    nr_cpus: int = attrs.field(init=False)                      # nr_cpu_ids
    kinds: PageKinds = attrs.field(init=False)      # what each allocation holds, counted
    cpu_node: tuple[int, ...] = attrs.field(init=False)         # cpu -> nid (or -1)
    cpus: cpu_hotplug.CpuState = attrs.field(init=False)    # node CPUs, online, distances
    pgdat: dict[int, Pgdat] = attrs.field(factory=dict)           # online nodes, by nid
    zonelists: dict[int, list[Zone]] = attrs.field(factory=dict)  # fallback order, by nid
    populated: frozenset[tuple[int, ZoneType]] = frozenset()      # what they were built from
    managed_at_boot: int = 0        # never changes: pages only move between nodes
    vm_events: VmEvents = attrs.field(factory=VmEvents)
    boot_allocs: dict[int, int] = attrs.field(factory=dict)   # pfn -> order held, oldest first
    # dnuma: the current layout, the pending one, the retired ones kept (oldest first),
    # all of them by id, and the retired layouts' counts.
    current: Memlayout = attrs.field(factory=lambda: Memlayout(BOOT_LAYOUT_ID))
    pending: Memlayout | None = None
    backlog: list[Memlayout] = attrs.field(factory=list)
    backlog_max: int = DEFAULT_BACKLOG_MAX
    layouts: dict[int, Memlayout] = attrs.field(init=False)
    next_layout_id: int = attrs.field(init=False)
    retired: RetiredStats = attrs.field(factory=RetiredStats)
    in_commit: bool = False         # a commit rebuilds the zonelists once, at its end
    blocks: memory_hotplug.MemoryBlocks = attrs.field(init=False)
    changes: ChangeHook = attrs.field(factory=ChangeHook)    # told of every change below
    # Nodes whose size a transplant moved since the last announcement (its `change` events).
    resized: set[int] = attrs.field(factory=set)
    workload: workload_mod.Workload = attrs.field(init=False)   # tasks that allocate and free

    def __attrs_post_init__(self) -> None:
        self.max_pfn = self.mem_map.max_pfn
        self.nr_cpus = self.topo.nr_cpu_ids
        self.kinds = PageKinds.alloc(self.max_pfn, self.topo.nr_node_ids)
        self.cpu_node = self.topo.cpu_node
        self.cpus = cpu_hotplug.CpuState.of(self.topo)
        self.layouts = {self.current.id: self.current}
        self.next_layout_id = self.current.id + 1
        self.blocks = memory_hotplug.MemoryBlocks.create(self.max_pfn, self.config.block_size)
        self.workload = workload_mod.Workload(self)

    @classmethod
    def boot(cls, config: MachineConfig | None = None) -> Machine:
        """Boot as config's machine (boot.py): its nodes laid out one after another in pfn
        order, each of its MemTotal, with its hugepage pools; then allocate some of each."""
        config = config or MachineConfig()
        desc = config.description()
        topo = Topology.of(desc)
        sizes = boot.node_present_pages(desc)
        m = cls(config, topo, MemMap.alloc(sum(sizes.values()), topo.nr_node_ids))
        with m.lock:
            start = 0
            for nid in desc.online_nodes:
                topology.online_node(m, nid)
                size = sizes.get(nid, 0)
                if size:
                    m.page_node[start:start + size] = nid
                    m.current.add_range(start, start + size - 1, nid)
                    boot.boot_node(m, nid, start, start + size)
                start += size
            m.managed_at_boot = m.total_managed_pages()
            topology.rebuild_zonelists(m)
            for n in desc.nodes:
                for size_kb, count in n.hugepages:
                    hugetlb.set_max_huge_pages(m, n.nid, size_order(size_kb), count)
            for nid in desc.online_nodes:
                boot.boot_allocate(m, nid)
        return m

    # ------------------------------------------------------------- the page arrays

    @property
    def page_node(self) -> np.ndarray:
        return self.mem_map.page_node

    @property
    def page_flags(self) -> np.ndarray:
        return self.mem_map.page_flags

    @property
    def page_order(self) -> np.ndarray:
        return self.mem_map.page_order

    # ---------------------------------------------------------------- topology

    @property
    def desc(self) -> MachineDescription:
        return self.topo.desc

    @property
    def possible_nodes(self) -> int:
        """nr_node_ids: one past the highest possible node id (the ids below it that are not
        possible are in no set; possible_node_ids lists those that are)."""
        return self.topo.nr_node_ids

    @property
    def possible_node_ids(self) -> tuple[int, ...]:
        return self.desc.possible_nodes

    def online_nodes(self) -> list[int]:
        with self.lock:
            return sorted(self.pgdat)

    def nodes_with_memory(self) -> list[int]:
        with self.lock:
            return [n for n in sorted(self.pgdat) if self.pgdat[n].present_pages > 0]

    def nodes_with_cpus(self) -> list[int]:
        """N_CPU: the nodes with an online CPU."""
        with self.lock:
            return [nid for nid in sorted(self.cpus.listed) if self.node_cpus(nid)]

    def possible_cpus(self) -> tuple[int, ...]:
        return self.desc.possible_cpus

    def present_cpus(self) -> tuple[int, ...]:
        return self.desc.present_cpus

    def online_cpus(self) -> tuple[int, ...]:
        with self.lock:
            return tuple(sorted(self.cpus.online))

    def node_cpus(self, nid: int) -> list[int]:
        """The CPUs listed under nid but those taken offline since boot (nodeN/cpumap: x86
        takes a CPU it offlines out of its node's mask), ascending."""
        with self.lock:
            offlined = self.cpus.offlined
            return [c for c in self.cpus.listed.get(nid, ()) if c not in offlined]

    def node_first_cpu(self, nid: int) -> int:
        """The CPU that boot and the hugepage pools allocate from for nid (0 if it has none)."""
        cpus = self.node_cpus(nid)
        return cpus[0] if cpus else 0

    def node_distance(self, a: int, b: int) -> int:
        return self.node_distances(a, [b])[0]

    def node_distances(self, a: int, nodes: list[int]) -> list[int]:
        """node_distance(a, b) for each b of nodes: a row written since boot where it names
        b, else the boot table's (topology.distances_from())."""
        with self.lock:
            written = self.cpus.rows.get(a, {})
            boot = topology.distances_from(self.topo, a, nodes)
            return [written.get(b, d) for b, d in zip(nodes, boot)]

    def move_cpu(self, cpu: int, nid: int) -> list[int]:
        """Move cpu and its thread siblings to node nid; returns the CPUs moved. Raises
        memory_hotplug.HotplugError, changing nothing."""
        with self.lock:
            return cpu_hotplug.move_cpu(self, cpu, nid)

    def set_cpu_online(self, cpu: int, online: bool) -> bool:
        """Online or offline cpu; False if it already was. Raises
        memory_hotplug.HotplugError, changing nothing."""
        with self.lock:
            return cpu_hotplug.set_cpu_online(self, cpu, online)

    def set_distance_row(self, nid: int, row: list[int]) -> None:
        """Replace nid's distances to the online nodes. Raises memory_hotplug.HotplugError,
        changing nothing."""
        with self.lock:
            cpu_hotplug.set_distance_row(self, nid, row)

    # -------------------------------------------------------------- page counts

    def total_managed_pages(self) -> int:
        with self.lock:
            return sum(p.managed_pages for p in self.pgdat.values())

    def total_free_pages(self) -> int:
        with self.lock:
            return sum(p.free_pages for p in self.pgdat.values())

    def watermarks(self, zone: Zone) -> Watermarks:
        return zone_watermarks(zone, self.managed_at_boot)

    def pgalloc(self, ztype: ZoneType) -> int:
        """vmstat pgalloc_<zone>: pages allocated from zones of this type, on every node."""
        with self.lock:
            return sum(p.zones[ztype].pgalloc for p in self.pgdat.values())

    def hugepages(self, nid: int, order: int = HPAGE_ORDER) -> tuple[int, int, int]:
        """(total, free, surplus) of nid's pool of pages of this order: nothing maps the
        pool's pages, and there is no overcommit."""
        with self.lock:
            n = len(self.pgdat[nid].hugepage_pools[order])
            return n, n, 0

    # ---------------------------------------------------------------- allocator

    def alloc_pages(self, order: int = 0, nid: int | None = None, cpu: int = 0,
                    interleave: bool = False, thisnode: bool = False,
                    kind: Kind = Kind.NONE) -> int | None:
        """Allocate 2^order pages, preferring nid (or cpu's node), to hold kind; None if
        nothing fits."""
        if not 0 <= order < MAX_ORDER:
            raise ValueError(f"order {order} out of range 0..{MAX_ORDER - 1}")
        if not 0 <= cpu < self.nr_cpus:
            raise ValueError(f"cpu {cpu} does not exist")
        with self.lock:
            self._check_online(cpu)
            pref = self.cpu_node[cpu] if nid is None else nid
            if pref not in self.pgdat:
                raise ValueError(f"node {pref} is not online")
            pfn = page_alloc.get_page_from_freelist(self, order, pref, cpu, interleave,
                                                    thisnode)
            if pfn is not None:
                kinds.charge(self, pfn, order, kind)
            self._announce([PAGES])
            return pfn

    def free_pages(self, pfn: int, cpu: int = 0) -> None:
        """Free the allocated block whose head is pfn (its order is the allocation's)."""
        with self.lock:
            if not 0 <= pfn < self.max_pfn:
                raise ValueError(f"pfn {pfn:#x} beyond max_pfn {self.max_pfn:#x}")
            flags = self.mem_map.flags[pfn]
            if flags & (PG_HEAD | PG_HUGETLB) != PG_HEAD:
                raise ValueError(f"pfn {pfn:#x} is not the head of an allocated block"
                                 if not flags & PG_HEAD else f"pfn {pfn:#x} belongs to a "
                                 "hugepage pool")
            if not 0 <= cpu < self.nr_cpus:
                raise ValueError(f"cpu {cpu} does not exist")
            self._check_online(cpu)
            page_alloc.free_pages(self, pfn, cpu)
            self._announce([PAGES])

    def _check_online(self, cpu: int) -> None:
        """An offline CPU runs nothing, so nothing allocates or frees for it: its drained
        per-CPU lists stay empty."""
        if cpu not in self.cpus.online:
            raise ValueError(f"cpu {cpu} is offline")

    def drain_pcp(self) -> int:
        """Empty every per-CPU list; returns how many non-empty lists were drained."""
        with self.lock:
            drained = page_alloc.drain_all_pages(self)
            self._announce([PAGES])
            return drained

    @property
    def boot_allocations(self) -> list[tuple[int, int]]:
        """(pfn, order) of what boot allocated and is still held, oldest first."""
        with self.lock:
            return list(self.boot_allocs.items())

    def free_boot_allocations(self, limit: int | None = None) -> int:
        """Free boot allocations, oldest first, until limit pages are freed (None: all).
        Returns the pages freed."""
        with self.lock:
            freed = 0
            for pfn, order in list(self.boot_allocs.items()):
                if limit is not None and freed >= limit:
                    break
                freed += 1 << order
                page_alloc.free_pages(self, pfn, 0)
            self._announce([PAGES])
            return freed

    def kind_pages(self, nid: int, ztype: int | None = None) -> list[int]:
        """Pages of each Kind allocated on node nid (in one zone type, or in all)."""
        with self.lock:
            return self.kinds.node(nid) if ztype is None else list(self.kinds.zone(nid, ztype))

    def drop_caches(self, mode: int) -> None:
        """vm.drop_caches: 1 frees the page cache (the file LRU: not shmem, which is
        swap-backed), 2 the reclaimable slab, 3 both, 4 nothing (in Linux it only silences
        the message); anonymous memory, unreclaimable slab, page tables and kernel stacks
        stay. Each counts its vm event, as Linux does."""
        if not 1 <= mode <= 4:
            raise ValueError(f"drop_caches mode {mode} is not in 1..4")
        with self.lock:
            if mode & DROP_PAGECACHE:
                self._free_kinds(FILE_CACHE)
                self.vm_events.drop_pagecache += 1
            if mode & DROP_SLAB:
                self._free_kinds(RECLAIMABLE_SLAB)
                self.vm_events.drop_slab += 1
            self._announce([PAGES])

    def _free_kinds(self, wanted: frozenset[Kind]) -> None:
        freed = kinds.allocations_of(self, wanted)
        for pfn, _ in freed:
            page_alloc.free_pages(self, pfn, 0)
        self.workload.forget(pfn for pfn, _ in freed)    # its tasks held some of them

    def hugepage_orders(self) -> tuple[int, ...]:
        """The orders of the hugepage pools the machine has (its hstates), ascending."""
        return self.topo.hugepage_orders

    def set_global_nr_hugepages(self, count: int, order: int = HPAGE_ORDER) -> int:
        """Resize the pools of this order to count pages in all, over the nodes with memory
        (set_max_huge_pages() without a node); returns the total they reach."""
        with self.lock:
            if count < 0:
                raise ValueError("negative hugepage count")
            if order not in self.hugepage_orders():
                raise ValueError(f"no hugepages of order {order}")
            try:
                return hugetlb.set_global_huge_pages(self, order, count)
            finally:
                self._announce([PAGES])

    def set_nr_hugepages(self, nid: int, count: int, order: int = HPAGE_ORDER) -> int:
        """Grow or shrink nid's pool of pages of this order (2 MiB or 1 GiB) through its own
        buddy allocator."""
        with self.lock:
            if nid not in self.pgdat:
                raise ValueError(f"node {nid} is not online")
            if count < 0:
                raise ValueError("negative hugepage count")
            if order not in self.hugepage_orders():
                raise ValueError(f"no hugepages of order {order}")
            try:
                return hugetlb.set_max_huge_pages(self, nid, order, count)
            finally:
                self._announce([PAGES])

    # ------------------------------------------------------------------ memlayout

    def memlayout_add_range(self, start: int, end: int, nid: int) -> None:
        """Add [start, end] -> nid to the pending layout; on error nothing changes."""
        with self.lock:
            if nid not in self.possible_node_ids:
                raise MemlayoutError(errno.EINVAL, f"node {nid} is not possible")
            if self.pending is not None:
                self.pending.add_range(start, end, nid)
            else:
                layout = Memlayout(self.next_layout_id)
                layout.add_range(start, end, nid)       # raises before it changes anything
                self.pending = dnuma.memlayout_register(self, layout)
            self._announce([LAYOUTS])

    def memlayout_clear(self) -> None:
        with self.lock:
            if self.pending is not None:
                dnuma.memlayout_destroy(self, self.pending)
                self.pending = None
                self._announce([LAYOUTS])

    def memlayout_commit(self) -> Memlayout | None:
        with self.lock:
            sizes = self._node_sizes()
            try:
                return dnuma.memlayout_commit(self)
            finally:
                self._announce_nodes(sizes)     # pages, nodes, layouts and their statistics

    def layout(self, lid: int) -> Memlayout | None:
        """The pending, current or backlog layout numbered lid, or None."""
        with self.lock:
            return self.layouts.get(lid)

    def layout_ids(self) -> list[int]:
        """The ids of the pending, current and backlog layouts, ascending."""
        with self.lock:
            return sorted(self.layouts)

    def set_backlog_max(self, n: int) -> None:
        """How many retired layouts to keep (an unsigned long); fewer destroys the oldest."""
        if not 0 <= n <= ULONG_MAX:
            raise ValueError(f"backlog_max must be in 0..{ULONG_MAX}")
        with self.lock:
            self.backlog_max = n
            dnuma.ml_backlog_trim(self)
            self._announce([LAYOUTS])

    # ------------------------------------------------------------------ statistics

    def stat_nids(self) -> list[int]:
        """The nodes node_stats/ lists, globally and in each layout: every possible node,
        0..nr_node_ids-1, as the kernel creates them."""
        return list(self.node_stats)

    @property
    def stats(self) -> DnumaStats:
        """Global counters, destroyed layouts' included: the retired layouts' running totals
        and the current layout's counts (a read never sums over layouts)."""
        with self.lock:
            out = DnumaStats()
            out.add(self.retired.total)
            for stats in self.current.counters.values():
                out.add(stats)
            return out

    def node_stat(self, nid: int) -> DnumaStats:
        """Global counters at node nid."""
        with self.lock:
            out = DnumaStats()
            retired = self.retired.nodes.get(nid)
            if retired is not None:
                out.add(retired)
            current = self.current.counters.get(nid)
            if current is not None:
                out.add(current)
            return out

    @property
    def node_stats(self) -> NodeStats:
        """node_stat() of every node stat_nids() names, each read when looked up."""
        return NodeStats(range(self.possible_nodes), self.node_stat)

    def marked_pages(self) -> dict[int, int]:
        """Allocated pages marked PG_LOOKUP_NODE (to be transplanted when freed), per node they
        are on now, for the nodes that have any: counted from the page flags at each call."""
        with self.lock:
            marked = (self.page_flags & PG_LOOKUP_NODE) != 0
            counts = np.bincount(self.page_node[marked], minlength=self.possible_nodes)
            return {int(nid): int(counts[nid]) for nid in np.flatnonzero(counts)}

    # ------------------------------------------------------------ memory blocks

    def memory_block_set_state(self, bid: int, how: memory_hotplug.OnlineType) -> bool:
        """Online or offline memory block bid; False if it already was (nothing done).
        Raises memory_hotplug.HotplugError, changing nothing."""
        with self.lock:
            sizes, spans = self._node_sizes(), self._zone_spans()
            changed = memory_hotplug.set_state(self, bid, how)
            if changed:                     # pages, the block, node sizes, perhaps zones
                state = "online" if self.blocks.online[bid] else "offline"
                topics = [PAGES, memory_block_topic(bid)]
                if self._zone_spans() != spans:
                    topics.append(NODES)
                self._announce_nodes(sizes, [memory_block_device(state, bid)], topics)
            return changed

    def memory_probe(self, phys_addr: int) -> int:
        """Hot-add a memory block at phys_addr (x86's probe file); returns its block id.
        Raises memory_hotplug.HotplugError, changing nothing."""
        with self.lock:
            sizes = self._node_sizes()
            bid = memory_hotplug.add_memory(self, phys_addr)
            added = [memory_block_device("add", bid)]
            if self.blocks.online[bid]:
                added.append(memory_block_device("online", bid))
            self._announce_nodes(sizes, added)      # a new block, perhaps a new node
            return bid

    # ---------------------------------------------------------------- announcements

    def _announce(self, topics: list[str] | None = None, devices: list[Device] | None = None,
                  sized: Iterable[int] = ()) -> None:
        """Tell the change hook of a change (topics None: anything) and the devices it
        touched, followed by a `change` on every node resized: by a transplant meanwhile
        (which adds PLACES) or by this change itself (sized: no PLACES for those)."""
        devs = devices or []
        if self.resized and topics is not None:
            topics = [*topics, PLACES]
        devs += [node_device("change", n) for n in sorted(self.resized | set(sized))]
        self.resized.clear()
        self.changes.changed(topics, devices=devs)

    def _node_sizes(self) -> dict[int, int]:
        return {n: p.present_pages for n, p in self.pgdat.items()}

    def _zone_spans(self) -> list[tuple[int, int, int, int]]:
        return [(n, int(t), z.zone_start_pfn, z.spanned_pages)
                for n, p in sorted(self.pgdat.items()) for t, z in sorted(p.zones.items())]

    def _announce_nodes(self, before: dict[int, int], devices: list[Device] | None = None,
                        topics: list[str] | None = None) -> None:
        """Announce a change of topics (None: anything): devices, then `add` and `online`
        for each node that came online since before (the node sizes then), then a `change`
        on every node whose size differs. A size changed here is no transplant: PLACES comes
        only with the ones a transplant made before."""
        after = self._node_sizes()
        devs = devices or []
        devs += [node_device(a, n) for n in sorted(after.keys() - before.keys())
                 for a in ("add", "online")]
        resized = {n for n, size in after.items() if before.get(n, 0) != size}
        self._announce(topics, devs, resized)

    # ---------------------------------------------------------------------- check

    def check(self) -> list[str]:
        with self.lock:
            return check(self) + self.workload.check()
