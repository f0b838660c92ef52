"""What a machine is: its nodes, their sizes, CPUs and distances, which nodes are online, and
the zonelists built from them (mm/page_alloc.c's build_zonelists()). The boot process itself
is in boot.py."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from .constants import (
    LOCAL_DISTANCE,
    MAX_CPUS,
    MAX_POSSIBLE_NODES,
    MIN_NODE_PAGES,
    PAGE_SHIFT,
    REMOTE_DISTANCE,
    ZoneType,
)
from .zone import Pgdat

if TYPE_CHECKING:
    from .machine import Machine
    from .zone import Zone


def _sizes(value: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _check_nodes(config: MachineConfig, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= config.nodes <= config.possible_nodes <= MAX_POSSIBLE_NODES:
        raise ValueError(f"need 1 <= nodes ({config.nodes}) <= possible nodes "
                         f"({config.possible_nodes}) <= {MAX_POSSIBLE_NODES}")


def _check_cpus(config: MachineConfig, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_CPUS:
        raise ValueError(f"need 1 <= cpus ({value}) <= {MAX_CPUS}")


def _check_node_mem(config: MachineConfig, attribute: attrs.Attribute[tuple[int, ...] | None],
                    value: tuple[int, ...] | None) -> None:
    if value is not None and len(value) != config.nodes:
        raise ValueError(f"{len(value)} node sizes given for {config.nodes} nodes")
    if min(config.node_pages()) < MIN_NODE_PAGES:
        raise ValueError(f"every node needs at least {MIN_NODE_PAGES >> (20 - PAGE_SHIFT)} MiB")


@attrs.frozen
class MachineConfig:
    """What to boot. Sizes are bytes; node_mem, if given, sets each node's share."""

    nodes: int = attrs.field(default=2, validator=_check_nodes)
    mem: int = 1 << 30
    node_mem: tuple[int, ...] | None = attrs.field(default=None, converter=_sizes,
                                                   validator=_check_node_mem)
    cpus: int = attrs.field(default=4, validator=_check_cpus)
    possible_nodes: int = attrs.field(default=8, validator=_check_nodes)
    boot_alloc_percent: float = 5.0     # of each node's managed pages, allocated at boot
    seed: int = 0
    block_size: int | None = None       # memory block bytes; None: the kernel's rule

    def node_pages(self) -> list[int]:
        """Pages of each node at boot: node_mem's, or an equal share of mem (the last node
        takes the remainder)."""
        if self.node_mem is not None:
            return [b >> PAGE_SHIFT for b in self.node_mem]
        pages = self.mem >> PAGE_SHIFT
        sizes = [pages // self.nodes] * self.nodes
        sizes[-1] += pages - sum(sizes)
        return sizes

    def cpu_nodes(self) -> tuple[int, ...]:
        """The node of each CPU: the CPUs are spread over the nodes in contiguous blocks."""
        return tuple(c * self.nodes // self.cpus for c in range(self.cpus))


def node_distance(a: int, b: int) -> int:
    """node_distance(): the model has no distance table, so every remote node is as far."""
    return LOCAL_DISTANCE if a == b else REMOTE_DISTANCE


def build_zonelists(pgdat: dict[int, Pgdat]) -> dict[int, list[Zone]]:
    """Each node's fallback list of populated zones: nodes by distance (itself first), and
    within a node its zones from the highest type down, as build_zonelists() orders them."""
    nodes = sorted(pgdat)
    zonelists = {}
    for pref in nodes:
        order = sorted(nodes, key=lambda n: (node_distance(pref, n), n != pref, n))
        zonelists[pref] = [pgdat[n].zones[t] for n in order for t in reversed(ZoneType)
                           if pgdat[n].zones[t].populated]
    return zonelists


def populated_zones(pgdat: dict[int, Pgdat]) -> frozenset[tuple[int, ZoneType]]:
    """(node, zone type) of every populated zone: what the zonelists are built from."""
    return frozenset((z.nid, z.type) for p in pgdat.values() for z in p.populated_zones())


def online_node(m: Machine, nid: int) -> None:
    """Bring a node online, with its empty zones (a node, once online, stays)."""
    if nid not in m.pgdat:
        m.pgdat[nid] = Pgdat.empty(nid)


def rebuild_zonelists(m: Machine) -> bool:
    """Rebuild the zonelists (build_all_zonelists()) if the set of populated zones or of
    online nodes changed; say if it did."""
    populated = populated_zones(m.pgdat)
    if populated == m.populated and m.zonelists.keys() == m.pgdat.keys():
        return False
    m.populated = populated
    m.zonelists = build_zonelists(m.pgdat)
    return True
