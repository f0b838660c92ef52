"""The machine of `--nodes/--cpus/--mem/--node-mem/--possible-nodes`, described as a snapshot
would describe it, with a plausible CPU topology.

Topology: one package per node with CPUs (physical_package_id = the node id, one die), its
CPUs numbered consecutively; cores of two hardware threads (adjacent CPU numbers) when the
package has an even number of CPUs, else of one. Caches as a recent x86 server core has them:
L1d and L1i of 32 KiB (8 ways) and L2 of 1 MiB (16 ways) per core, L3 of 1.375 MiB (11 ways)
per core shared by the package, all with 64-byte lines.
"""
from __future__ import annotations

from .description import (
    MAX_CPUS,
    MAX_NUMNODES,
    PAGE_KB,
    CacheDescription,
    CpuDescription,
    MachineDescription,
    MachineError,
    NodeDescription,
)
from .reserve import reserved_count

SOURCE = "synthetic"
LINE_SIZE = 64
# Linux's distances without a SLIT, as dnumafs.mm.constants has them: not imported from there,
# so that describing a machine (on the command line, before any mount) loads no numpy.
LOCAL_DISTANCE, REMOTE_DISTANCE = 10, 20
HUGEPAGE_SIZES_KB = (2048, 1048576)     # x86-64 with pdpe1gb: both pools, empty at boot
# (level, type, size in kB, ways) per core, then the package-wide L3 per core of the package.
CORE_CACHES = ((1, "Data", 32, 8), (1, "Instruction", 32, 8), (2, "Unified", 1024, 16))
L3_KB_PER_CORE, L3_WAYS = 1408, 11


def synthetic(nodes: int = 2, cpus: int = 4, mem: int = 1 << 30,
              node_mem: list[int] | None = None, possible_nodes: int = 8,
              distances: tuple[tuple[int, ...], ...] | None = None) -> MachineDescription:
    """Nodes 0..nodes-1 online of 0..possible_nodes-1, sizes in bytes: each node's RAM is
    node_mem's, or mem split evenly with the rest on the last node, in whole pages, laid out
    in node order from pfn 0; its MemTotal is what that leaves once boot's reservations
    (reserve.py) are taken, as on a real machine of that much RAM. CPUs spread
    over the nodes in order (CPU c on node c * nodes // cpus), distances the matrix given
    (one row per node, as ACPI's SLIT: 10 on the diagonal, 11-254 elsewhere) or 10 and 20."""
    if not 1 <= nodes <= possible_nodes <= MAX_NUMNODES:
        raise MachineError(f"{SOURCE}: need 1 <= nodes ({nodes}) <= possible nodes "
                           f"({possible_nodes}) <= {MAX_NUMNODES}")
    if not 1 <= cpus <= MAX_CPUS:
        raise MachineError(f"{SOURCE}: need 1 <= CPUs ({cpus}) <= {MAX_CPUS}")
    if node_mem is not None and len(node_mem) != nodes:
        raise MachineError(f"{SOURCE}: {len(node_mem)} node sizes given for {nodes} nodes")
    if node_mem is not None:
        pages = [size // (PAGE_KB * 1024) for size in node_mem]
    else:
        total = mem // (PAGE_KB * 1024)
        pages = [total // nodes] * nodes
        pages[-1] += total - sum(pages)
    memory_kb, start = [], 0
    for size in pages:
        memory_kb.append((size - reserved_count(start, size)) * PAGE_KB)
        start += size
    node_cpus: list[list[int]] = [[] for _ in range(nodes)]
    for c in range(cpus):
        node_cpus[c * nodes // cpus].append(c)
    rows = _check_distances(distances, nodes) if distances is not None else [
        tuple(LOCAL_DISTANCE if a == b else REMOTE_DISTANCE for b in range(nodes))
        for a in range(nodes)]
    node_descs = [
        NodeDescription(nid=nid, memory_kb=memory_kb[nid], present_pages=pages[nid],
                        cpus=node_cpus[nid], hugepages=[(size, 0) for size in HUGEPAGE_SIZES_KB],
                        distances=rows[nid])
        for nid in range(nodes)]
    topology, caches = _topology(node_descs)
    return MachineDescription(source=SOURCE, name=SOURCE, possible_nodes=range(possible_nodes),
                              nodes=node_descs, possible_cpus=range(cpus),
                              present_cpus=range(cpus), online_cpus=range(cpus),
                              topology=topology, caches=caches)


def parse_distances(text: str) -> tuple[tuple[int, ...], ...]:
    """A matrix written as rows separated by `;`, values by `,` (`10,20;20,10`)."""
    try:
        return tuple(tuple(int(v) for v in row.split(",")) for row in text.split(";"))
    except ValueError:
        raise MachineError(f"{SOURCE}: distances {text!r} are not rows of integers "
                           "(e.g. 10,20;20,10)") from None


def _check_distances(rows: tuple[tuple[int, ...], ...], nodes: int) -> list[tuple[int, ...]]:
    if len(rows) != nodes or any(len(r) != nodes for r in rows):
        raise MachineError(f"{SOURCE}: distances need {nodes} rows of {nodes} values")
    for a, row in enumerate(rows):
        for b, d in enumerate(row):
            if (a == b and d != LOCAL_DISTANCE) or (a != b and not 10 < d < 255):
                raise MachineError(f"{SOURCE}: distance {d} from node {a} to {b}: "
                                   f"{LOCAL_DISTANCE} to itself, 11-254 to another node")
    return list(rows)


def _topology(nodes: list[NodeDescription]
              ) -> tuple[tuple[CpuDescription, ...], tuple[CacheDescription, ...]]:
    topology: list[CpuDescription] = []
    caches: list[CacheDescription] = []
    ids = dict.fromkeys(range(1, 4), 0)     # cache id, counted per level as Linux's cacheinfo
    for node in nodes:
        if not node.cpus:
            continue
        threads = 2 if len(node.cpus) % 2 == 0 else 1
        cores = [node.cpus[i:i + threads] for i in range(0, len(node.cpus), threads)]
        for core_id, core in enumerate(cores):
            topology += [CpuDescription(cpu=c, package=node.nid, die=0, core=core_id)
                         for c in core]
            for level, kind, size_kb, ways in CORE_CACHES:
                caches.append(CacheDescription(id=ids[level], level=level, type=kind,
                                               size_kb=size_kb, line_size=LINE_SIZE,
                                               ways=ways, cpus=core))
                if kind != "Data":          # L1d and L1i of a core share an id
                    ids[level] += 1
        caches.append(CacheDescription(id=ids[3], level=3, type="Unified",
                                       size_kb=L3_KB_PER_CORE * len(cores),
                                       line_size=LINE_SIZE, ways=L3_WAYS, cpus=node.cpus))
        ids[3] += 1
    return tuple(topology), tuple(caches)
