"""CPUs that move between nodes, CPUs that go offline and online, and distance rows that
change: the state the seed fixed at boot, made to change as SPEC section 8 says.

A move is what PowerPC's PRRN/VPHN did: a CPU and its thread siblings change node, the node is
brought online if it was not (a CPU-only node), and from then on the allocator prefers the new
node for allocations made for the CPU (Machine.cpu_node). CPU hotplug is x86's: an offline CPU
leaves its node's cpumap (numa_remove_cpu()), its per-CPU lists are drained
(page_alloc_cpu_dead()), and the last online CPU, or CPU 0, cannot go offline. A distance row
replaces one node's row only: ACPI's SLIT need not be symmetric, and Linux takes it as given, so
the matrix is left as written (a writer who wants symmetry writes both rows).
"""
from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from .changes import NODES, PAGES, Device, node_device
from .constants import LOCAL_DISTANCE
from .memory_hotplug import HotplugError
from .page_alloc import free_pcppages_bulk
from .topology import Topology, online_node, rebuild_zonelists

if TYPE_CHECKING:
    from .machine import Machine

MAX_DISTANCE = 254      # ACPI SLIT: 255 means unreachable, which Linux does not accept
NODE_CHANGE = "change"


@attrs.define
class CpuState:
    """What changes of the boot topology: each node's listed CPUs (a CPU moved is listed by
    its new node only), the online CPUs, and the distance rows written since boot (each a row
    over the nodes online when it was written)."""

    listed: dict[int, list[int]]
    online: set[int]
    rows: dict[int, dict[int, int]] = attrs.field(factory=dict)
    # CPUs taken offline since boot: x86 takes them out of their node's mask. A machine's
    # snapshot lists its node's CPUs as it had them, offline ones included where it did.
    offlined: set[int] = attrs.field(factory=set)

    @classmethod
    def of(cls, topo: Topology) -> CpuState:
        return cls({nid: sorted(cpus) for nid, cpus in topo.node_cpus.items()},
                   set(topo.desc.online_cpus))


def cpu_device(cpu: int, **props: str) -> tuple[str, dict[str, str]]:
    return f"/devices/system/cpu/cpu{cpu}", {"CPU": str(cpu), **props}


def siblings(m: Machine, cpu: int) -> tuple[int, ...]:
    """The CPU's thread siblings (its core's CPUs, itself among them), where the machine's
    description places CPUs in cores; otherwise the CPU alone."""
    place = m.topo.place.get(cpu)
    if place is None:
        return (cpu,)
    return m.topo.core_cpus[(place.package, place.core)]


def check_cpu(m: Machine, cpu: int) -> None:
    if cpu not in m.present_cpus():
        raise HotplugError(errno.EINVAL, f"cpu {cpu} does not exist")


def move_cpu(m: Machine, cpu: int, nid: int) -> list[int]:
    """Move cpu and its thread siblings to node nid (onlining it with its empty zones if it
    was offline); returns the CPUs that changed node, announced as PRRN did, one `change` each."""
    check_cpu(m, cpu)
    if nid not in m.possible_node_ids:
        raise HotplugError(errno.EINVAL, f"node {nid} is not possible")
    moved = [c for c in siblings(m, cpu) if m.cpu_node[c] != nid]
    devices: list[Device] = []
    if nid not in m.pgdat:
        online_node(m, nid)
        rebuild_zonelists(m)
        devices.append(node_device("online", nid))
    if moved:
        node_of = list(m.cpu_node)
        for c in moved:
            for cpus in m.cpus.listed.values():
                if c in cpus:
                    cpus.remove(c)
            node_of[c] = nid
        m.cpus.listed[nid] = sorted({*m.cpus.listed.get(nid, ()), *moved})
        m.cpu_node = tuple(node_of)
        devices += [(NODE_CHANGE, *cpu_device(c, NODE=str(nid))) for c in moved]
    if devices:
        m.changes.changed([NODES], devices=devices)
    return moved


def set_cpu_online(m: Machine, cpu: int, online: bool) -> bool:
    """cpu_up()/cpu_down(): False if the CPU already was so (nothing done). Offlining drains
    the CPU's per-CPU lists; CPU 0 (x86 without its hotplug) and the last online CPU stay."""
    check_cpu(m, cpu)
    if (cpu in m.cpus.online) == online:
        return False
    if not online:
        if cpu == 0:
            raise HotplugError(errno.EPERM, "cpu 0 cannot be taken offline")
        if m.cpus.online == {cpu}:
            raise HotplugError(errno.EBUSY, f"cpu {cpu} is the last online CPU")
        m.cpus.online.discard(cpu)
        m.cpus.offlined.add(cpu)
        drain_cpu_pages(m, cpu)
    else:
        m.cpus.online.add(cpu)
        m.cpus.offlined.discard(cpu)
    m.changes.changed([NODES, PAGES], devices=[
        ("online" if online else "offline", *cpu_device(cpu))])
    return True


def drain_cpu_pages(m: Machine, cpu: int) -> int:
    """Give every page on cpu's per-CPU lists back to the buddy lists (drain_pages());
    returns how many non-empty lists were drained."""
    drained = 0
    for pgdat in m.pgdat.values():
        for zone in pgdat.zones.values():
            lst = zone.pcp.get(cpu)
            if lst:
                free_pcppages_bulk(m, zone, lst, len(lst))
                drained += 1
    return drained


def check_distance_row(nodes: Sequence[int], nid: int, row: Sequence[int]) -> None:
    """A SLIT row over nodes: one value for each, LOCAL_DISTANCE for nid itself, 11-254 for
    the others."""
    if len(row) != len(nodes):
        raise HotplugError(errno.EINVAL, f"{len(row)} distances given for {len(nodes)} "
                           "online nodes")
    for other, d in zip(nodes, row):
        if other == nid and d != LOCAL_DISTANCE:
            raise HotplugError(errno.EINVAL, f"node {nid}'s distance to itself must be "
                               f"{LOCAL_DISTANCE}, not {d}")
        if other != nid and not LOCAL_DISTANCE < d <= MAX_DISTANCE:
            raise HotplugError(errno.EINVAL, f"distance {d} from node {nid} to node {other} "
                               f"is not in {LOCAL_DISTANCE + 1}..{MAX_DISTANCE}")


def set_distance_row(m: Machine, nid: int, row: Iterable[int]) -> None:
    """Replace nid's distances to the online nodes (ascending) and rebuild the zonelists."""
    if nid not in m.pgdat:
        raise HotplugError(errno.EINVAL, f"node {nid} is not online")
    nodes = sorted(m.pgdat)
    values = list(row)
    check_distance_row(nodes, nid, values)
    m.cpus.rows[nid] = dict(zip(nodes, values))
    rebuild_zonelists(m, force=True)
    m.changes.changed([NODES], devices=[node_device(NODE_CHANGE, nid)])
