"""What a machine is: its nodes, their sizes, CPUs and distances, which nodes are online, and
the zonelists built from them (mm/page_alloc.c's build_zonelists()). The boot process itself
is in boot.py."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from dnumafs.machines import (
    CacheDescription,
    CpuDescription,
    MachineDescription,
    MachineError,
    synthetic,
)

from .constants import (
    HUGEPAGE_ORDERS,
    LOCAL_DISTANCE,
    MIN_NODE_PAGES,
    NUMA_NO_NODE,
    PAGE_SHIFT,
    PAGE_SIZE,
    REMOTE_DISTANCE,
    ZoneType,
)
from .zone import Pgdat

if TYPE_CHECKING:
    from .machine import Machine
    from .zone import Zone


def _sizes(value: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _check_node_mem(config: MachineConfig, attribute: attrs.Attribute[tuple[int, ...] | None],
                    value: tuple[int, ...] | None) -> None:
    if value is not None and len(value) != config.nodes:
        raise MachineError(f"{len(value)} node sizes given for {config.nodes} nodes")
    if config.nodes < 1:
        return          # synthetic() says what is wrong
    sizes = value if value is not None else (config.mem // config.nodes,)
    if min(sizes) >> PAGE_SHIFT < MIN_NODE_PAGES:
        raise MachineError(f"every node needs at least {MIN_NODE_PAGES >> (20 - PAGE_SHIFT)} MiB")


@attrs.frozen
class MachineConfig:
    """What to boot: a machine (a snapshot's description), or else the synthetic machine of
    the other fields (sizes in bytes: node_mem, if given, is each node's MemTotal), and how
    much of it boot allocates. Either way the model boots from description()."""

    nodes: int = 2
    mem: int = 1 << 30
    node_mem: tuple[int, ...] | None = attrs.field(default=None, converter=_sizes,
                                                   validator=_check_node_mem)
    cpus: int = 4
    possible_nodes: int = 8
    distances: tuple[tuple[int, ...], ...] | None = None
    boot_alloc_percent: float = 5.0     # of each node's managed pages, allocated at boot
    seed: int = 0
    machine: MachineDescription | None = None
    block_size: int | None = None       # memory block bytes; None: the kernel's rule

    def description(self) -> MachineDescription:
        if self.machine is not None:
            return self.machine
        return synthetic(nodes=self.nodes, cpus=self.cpus, mem=self.mem,
                         node_mem=None if self.node_mem is None else list(self.node_mem),
                         possible_nodes=self.possible_nodes, distances=self.distances)

    def __attrs_post_init__(self) -> None:
        self.description()      # a synthetic machine that cannot be is refused now


CACHE_TYPES = ("Data", "Instruction", "Unified")     # cacheinfo's order within a level


def size_order(size_kb: int) -> int:
    """The order of one of the machine's hugepage sizes in kB (2048: 9, 1048576: 18)."""
    for order in HUGEPAGE_ORDERS:
        if (PAGE_SIZE << order) // 1024 == size_kb:
            return order
    raise MachineError(f"hugepages of {size_kb} kB: the model has pools of "
                       f"{', '.join(str((PAGE_SIZE << o) // 1024) for o in HUGEPAGE_ORDERS)} kB")


@attrs.frozen
class Topology:
    """The fixed facts of the booted machine, from its description, in the forms the
    per-page paths and the files look them up in.

    nr_node_ids, nr_cpu_ids  one past the highest possible node and CPU id (Linux's)
    cpu_node                 the node of each CPU id (cpu_to_node(): the lowest of the nodes
                             that list it), NUMA_NO_NODE (-1) where none does
    node_cpus                the CPUs each node lists (nodeN/cpumap): a fake machine may list
                             a CPU under several nodes, and hwloc makes of that what it does
    distance_rows            each node's row of the distance table (nodeN/distance), over
                             the nodes online at boot in distance_index order; empty when
                             the machine has no table
    place                    each CPU's package, die and core, where the description gives
                             them (the synthetic machine; a snapshot serves its own files)
    package_cpus, core_cpus  the CPUs of each package, and of each (package, core)
    caches                   each CPU's caches in cacheinfo's index order (L1d, L1i, L2, L3)
    hugepage_orders          the orders of the machine's hugepage pools (any node's), ascending
    """

    desc: MachineDescription
    nr_node_ids: int
    nr_cpu_ids: int
    cpu_node: tuple[int, ...]
    node_cpus: dict[int, tuple[int, ...]]
    distance_rows: dict[int, tuple[int, ...]]
    distance_index: dict[int, int]
    place: dict[int, CpuDescription]
    package_cpus: dict[int, tuple[int, ...]]
    core_cpus: dict[tuple[int, int], tuple[int, ...]]
    caches: dict[int, tuple[CacheDescription, ...]]
    hugepage_orders: tuple[int, ...]

    @classmethod
    def of(cls, desc: MachineDescription) -> Topology:
        nr_cpu_ids = desc.possible_cpus[-1] + 1
        nodes = desc.cpu_node()
        rows = {n.nid: n.distances for n in desc.nodes if n.distances is not None}
        place = {t.cpu: t for t in desc.topology or ()}
        packages: dict[int, list[int]] = {}
        cores: dict[tuple[int, int], list[int]] = {}
        for t in sorted(place.values(), key=lambda t: t.cpu):
            packages.setdefault(t.package, []).append(t.cpu)
            cores.setdefault((t.package, t.core), []).append(t.cpu)
        caches: dict[int, list[CacheDescription]] = {}
        for cache in sorted(desc.caches, key=lambda c: (c.level, CACHE_TYPES.index(c.type))):
            for cpu in cache.cpus:
                caches.setdefault(cpu, []).append(cache)
        return cls(desc, desc.possible_nodes[-1] + 1, nr_cpu_ids,
                   tuple(nodes.get(c, NUMA_NO_NODE) for c in range(nr_cpu_ids)),
                   {n.nid: n.cpus for n in desc.nodes}, rows,
                   {nid: i for i, nid in enumerate(desc.online_nodes)}, place,
                   {k: tuple(v) for k, v in packages.items()},
                   {k: tuple(v) for k, v in cores.items()},
                   {k: tuple(v) for k, v in caches.items()},
                   tuple(sorted({size_order(size) for n in desc.nodes for size, _ in n.hugepages})))

    @property
    def has_distances(self) -> bool:
        return bool(self.distance_rows)


def distances_from(topo: Topology, a: int, nodes: list[int]) -> list[int]:
    """The boot distance from a to each b of nodes (Machine.node_distances() puts the rows
    written since over it): the machine's table between nodes online at boot; a node onlined
    later (or a machine without a table) has Linux's defaults, 10 to itself, 20 otherwise."""
    row = topo.distance_rows.get(a)
    index = topo.distance_index
    if row is None:
        return [LOCAL_DISTANCE if b == a else REMOTE_DISTANCE for b in nodes]
    return [row[index[b]] if b in index else LOCAL_DISTANCE if b == a else REMOTE_DISTANCE
            for b in nodes]


ZONE_TYPES_DOWN = tuple(reversed(ZoneType))


def build_zonelists(distances: Callable[[int, list[int]], list[int]],
                    pgdat: dict[int, Pgdat]) -> dict[int, list[Zone]]:
    """Each node's fallback list of populated zones: nodes by distance (itself first), and
    within a node its zones from the highest type down, as build_zonelists() orders them."""
    nodes = sorted(pgdat)
    zones = {n: [pgdat[n].zones[t] for t in ZONE_TYPES_DOWN if pgdat[n].zones[t].populated]
             for n in nodes}
    with_zones = [n for n in nodes if zones[n]]
    zonelists = {}
    for pref in nodes:
        order = sorted(zip(distances(pref, with_zones),
                           (n != pref for n in with_zones), with_zones))
        zonelists[pref] = [z for _, _, n in order for z in zones[n]]
    return zonelists


def populated_zones(pgdat: dict[int, Pgdat]) -> frozenset[tuple[int, ZoneType]]:
    """(node, zone type) of every populated zone: what the zonelists are built from."""
    return frozenset((z.nid, z.type) for p in pgdat.values() for z in p.populated_zones())


def online_node(m: Machine, nid: int) -> None:
    """Bring a node online, with its empty zones (a node, once online, stays)."""
    if nid not in m.pgdat:
        m.pgdat[nid] = Pgdat.empty(nid)


def rebuild_zonelists(m: Machine, force: bool = False) -> bool:
    """Rebuild the zonelists (build_all_zonelists()) if the set of populated zones or of
    online nodes changed, or if forced (the distances changed); say if it did."""
    populated = populated_zones(m.pgdat)
    if not force and populated == m.populated and m.zonelists.keys() == m.pgdat.keys():
        return False
    m.populated = populated
    m.zonelists = build_zonelists(m.node_distances, m.pgdat)
    return True
