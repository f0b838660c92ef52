"""What the model needs to boot as a machine: plain, frozen data, no files and no model.

A description comes from a snapshot of a real machine's /sys and /proc (snapshot.py) or from
the command line's synthetic options (synthetic.py); the model boots from either the same way.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

# Linux's limits on x86-64 with MAXSMP: MAX_NUMNODES (NODES_SHIFT 10) and NR_CPUS.
MAX_NUMNODES = 1024
MAX_CPUS = 8192

# The model's 4 KiB page (dnumafs.mm.constants.PAGE_SIZE) in kB; not imported, so that
# describing a machine loads no numpy.
PAGE_KB = 4


class MachineError(ValueError):
    """A machine that cannot be described or booted; the message names the file and why, and
    the command line prints it as is."""


def _sorted_ids(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(value)))


def _ids_below(limit: int, what: str) -> Any:
    def check(inst: Any, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
        bad = [i for i in value if not 0 <= i < limit]
        if bad:
            raise MachineError(f"{inst.source}: {what} {bad[0]} is out of range "
                               f"(0-{limit - 1})")
    return check


@attrs.frozen
class NodeDescription:
    """One online node.

    memory_kb  its MemTotal (nodeN/meminfo), in kB; 0 for a memoryless node
    cpus       the CPUs of nodeN/cpumap, ascending; empty for a CPU-less node. A fake machine
               may list a CPU under several nodes; Linux's cpu_to_node() would give it one
               (MachineDescription.cpu_node).
    hugepages  (page size in kB, nr_hugepages) of each pool in nodeN/hugepages/, by size
    distances  nodeN/distance: to each online node in MachineDescription.online_nodes order,
               or None when the snapshot has no distance file (then no node has one)
    present_pages  the node's RAM in pages where the description knows it (the synthetic
               machine's); None for a snapshot, whose boot chooses it to match MemTotal
    """

    nid: int
    memory_kb: int = attrs.field(validator=attrs.validators.ge(0))
    cpus: tuple[int, ...] = attrs.field(converter=_sorted_ids, default=())
    hugepages: tuple[tuple[int, int], ...] = attrs.field(
        converter=lambda pools: tuple(sorted(pools)), default=())
    distances: tuple[int, ...] | None = None
    present_pages: int | None = None


@attrs.frozen
class CpuDescription:
    """One CPU's place in the topology (cpuK/topology/): ids as Linux prints them. The CPUs of
    a core are those with its package and core_id; of a package, those with its package."""

    cpu: int
    package: int
    die: int
    core: int


@attrs.frozen
class CacheDescription:
    """One cache (cpuK/cache/indexN/ of each CPU in cpus, which share it).

    type is Linux's: "Data", "Instruction" or "Unified". size_kb * 1024 = line_size * ways *
    number_of_sets.
    """

    id: int
    level: int
    type: str = attrs.field(validator=attrs.validators.in_(("Data", "Instruction", "Unified")))
    size_kb: int
    line_size: int
    ways: int
    cpus: tuple[int, ...] = attrs.field(converter=_sorted_ids)

    @property
    def number_of_sets(self) -> int:
        return self.size_kb * 1024 // (self.line_size * self.ways)


@attrs.frozen
class MachineDescription:
    """Everything the model needs to boot as a machine.

    source         where it came from (the PATH given, `/`, or "synthetic"), for messages
    name           the machine's name (the snapshot's top directory, the host name)
    possible_nodes node/possible, ascending (node ids 0..MAX_NUMNODES-1, sparse)
    nodes          each online node by id (node/online), ascending ids
    possible_cpus, present_cpus, online_cpus
                   cpu/possible, cpu/present, cpu/online, ascending (ids below MAX_CPUS)
    topology       each present CPU's package, die and core, for a machine whose CPU files the
                   model must make (synthetic); None for a snapshot, whose own files are served
    caches         the caches of a synthetic machine; empty for a snapshot (served from it)
    """

    source: str
    name: str
    possible_nodes: tuple[int, ...] = attrs.field(
        converter=_sorted_ids, validator=_ids_below(MAX_NUMNODES, "node"))
    nodes: tuple[NodeDescription, ...] = attrs.field(
        converter=lambda nodes: tuple(sorted(nodes, key=lambda n: n.nid)))
    possible_cpus: tuple[int, ...] = attrs.field(
        converter=_sorted_ids, validator=_ids_below(MAX_CPUS, "CPU"))
    present_cpus: tuple[int, ...] = attrs.field(converter=_sorted_ids)
    online_cpus: tuple[int, ...] = attrs.field(converter=_sorted_ids)
    topology: tuple[CpuDescription, ...] | None = None
    caches: tuple[CacheDescription, ...] = ()

    @nodes.validator
    def _check_nodes(self, attribute: attrs.Attribute[Any],
                     nodes: tuple[NodeDescription, ...]) -> None:
        if not nodes:
            raise MachineError(f"{self.source}: no online node")
        ids = [n.nid for n in nodes]
        if len(set(ids)) != len(ids):
            raise MachineError(f"{self.source}: node ids repeat: {ids}")
        extra = sorted(set(ids) - set(self.possible_nodes))
        if extra:
            raise MachineError(f"{self.source}: node {extra[0]} is online but not possible")
        with_distances = [n.distances is not None for n in nodes]
        if any(with_distances) and not all(with_distances):
            raise MachineError(f"{self.source}: some nodes have distances, some not")
        possible_cpus = set(self.possible_cpus)
        for n in nodes:
            if n.distances is not None and len(n.distances) != len(nodes):
                raise MachineError(f"{self.source}: node {n.nid} has {len(n.distances)} "
                                   f"distances for {len(nodes)} online nodes")
            unknown = sorted(set(n.cpus) - possible_cpus)
            if unknown:
                raise MachineError(f"{self.source}: node {n.nid} has CPU {unknown[0]}, "
                                   f"which is not possible")

    @present_cpus.validator
    def _check_present(self, attribute: attrs.Attribute[Any], cpus: tuple[int, ...]) -> None:
        if not set(cpus) <= set(self.possible_cpus):
            raise MachineError(f"{self.source}: present CPUs are not all possible")

    @online_cpus.validator
    def _check_online(self, attribute: attrs.Attribute[Any], cpus: tuple[int, ...]) -> None:
        if not cpus:
            raise MachineError(f"{self.source}: no online CPU")
        if not set(cpus) <= set(self.present_cpus):
            raise MachineError(f"{self.source}: online CPUs are not all present")

    # --- derived sets, as Linux derives them ------------------------------------------------

    @property
    def online_nodes(self) -> tuple[int, ...]:
        return tuple(n.nid for n in self.nodes)

    def node(self, nid: int) -> NodeDescription:
        for n in self.nodes:
            if n.nid == nid:
                return n
        raise KeyError(nid)

    @property
    def offline_cpus(self) -> tuple[int, ...]:
        """cpu/offline: possible but not online (cpu_possible_mask & ~cpu_online_mask)."""
        online = set(self.online_cpus)
        return tuple(c for c in self.possible_cpus if c not in online)

    @property
    def memoryless_nodes(self) -> tuple[int, ...]:
        return tuple(n.nid for n in self.nodes if n.memory_kb == 0)

    @property
    def cpuless_nodes(self) -> tuple[int, ...]:
        return tuple(n.nid for n in self.nodes if not n.cpus)

    @property
    def memory_kb(self) -> int:
        """MemTotal of the whole machine: the nodes' sum."""
        return sum(n.memory_kb for n in self.nodes)

    def cpu_node(self) -> dict[int, int]:
        """cpu -> node, for the CPUs some node lists: the lowest such node when several do."""
        out: dict[int, int] = {}
        for n in self.nodes:
            for cpu in n.cpus:
                out.setdefault(cpu, n.nid)
        return out

    def distance(self, a: int, b: int) -> int | None:
        """node_distance(a, b) between online nodes, or None without distances."""
        row = self.node(a).distances
        return None if row is None else row[self.online_nodes.index(b)]
