"""MNT/sys/devices/system/node: node state lists and one nodeN/ per online node.

As drivers/base/node.c: a table of attributes per directory, one show (or store) function per
attribute, each computing its figures from the model when the file is read (the tree takes the
machine lock around it), so every file agrees with the model and with the others at that
moment (the seed's "sysfs not updated" bug, fixed).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.mm import Machine
from dnumafs.mm.changes import MACHINE
from dnumafs.vfs.tree import RO, SYSFS, Dir, FileSet, Node, StaticDir, union

from .format import meminfo_kb, meminfo_line, parse_indexed_name
from .hugetlb import node_hugepages_dir
from .memory import node_memory_links
from .vmstat import meminfo_figures, node_vmstat_items

# --- node state lists (node_state_attr in Linux) -------------------------------------------

def node_state_show(state: Callable[[Machine], Iterable[int]], m: Machine) -> str:
    """One node state list (Linux's show_node_state()), whichever state it is."""
    return bitmap_list(state(m)) + "\n"


def possible_nodes(m: Machine) -> tuple[int, ...]:
    return m.possible_node_ids


# N_NORMAL_MEMORY is N_MEMORY on x86-64 (no highmem): every zone is normal memory. A node that
# gains memory by a commit appears in both.
STATE_ATTRS = {
    "possible": RO(partial(node_state_show, possible_nodes), depends=MACHINE),
    "online": RO(partial(node_state_show, Machine.online_nodes), depends=MACHINE),
    "has_memory": RO(partial(node_state_show, Machine.nodes_with_memory), depends=MACHINE),
    "has_normal_memory": RO(partial(node_state_show, Machine.nodes_with_memory), depends=MACHINE),
    "has_cpu": RO(partial(node_state_show, Machine.nodes_with_cpus), depends=MACHINE),
}


# --- nodeN/ attributes ---------------------------------------------------------------------

# nodeN/meminfo's keys after MemTotal, MemFree and MemUsed, in node_read_meminfo()'s order
# (x86-64: no highmem, no shadow call stack); their figures are vmstat.meminfo_figures()'.
NODE_MEMINFO_KEYS = (
    "SwapCached", "Active", "Inactive", "Active(anon)", "Inactive(anon)", "Active(file)",
    "Inactive(file)", "Unevictable", "Mlocked", "Dirty", "Writeback", "FilePages", "Mapped",
    "AnonPages", "Shmem", "KernelStack", "PageTables", "SecPageTables", "NFS_Unstable",
    "Bounce", "WritebackTmp", "KReclaimable", "Slab", "SReclaimable", "SUnreclaim",
    "AnonHugePages", "ShmemHugePages", "ShmemPmdMapped", "FileHugePages", "FilePmdMapped",
)


def node_read_meminfo(m: Machine, nid: int) -> str:
    """nodeN/meminfo: every key Linux prints, in its order, from the node's counters.

    MemTotal is the node's managed pages and MemFree its pages on the buddy free lists, as
    si_meminfo_node() and NR_FREE_PAGES (pages on per-CPU lists are not free there either).
    Hugepages are taken from the buddy allocator, so they are in MemUsed.
    """
    pgdat = m.pgdat[nid]
    items = node_vmstat_items(m, pgdat)
    total, free = pgdat.managed_pages, items["nr_free_pages"]
    figures = meminfo_figures(items)
    hp_total, hp_free, hp_surp = m.hugepages(nid)
    lines = [
        meminfo_kb("MemTotal", total),
        meminfo_kb("MemFree", free),
        meminfo_kb("MemUsed", total - free),
        *(meminfo_line(key, figures[key]) for key in NODE_MEMINFO_KEYS),
    ]
    lines = [f"Node {nid} {line}" for line in lines] + [
        f"Node {nid} HugePages_Total: {hp_total:5d}",
        f"Node {nid} HugePages_Free:  {hp_free:5d}",
        f"Node {nid} HugePages_Surp:  {hp_surp:5d}",
    ]
    return "\n".join(lines) + "\n"


def node_read_numastat(m: Machine, nid: int) -> str:
    """nodeN/numastat: the six allocator counters (allocations, not pages, as Linux counts
    them), under their numastat names."""
    counts = dict(m.pgdat[nid].numastat)
    return "".join(f"{name} {value}\n" for name, value in counts.items())


def node_read_vmstat(m: Machine, nid: int) -> str:
    """nodeN/vmstat: the zone counters over the node's zones, its NUMA events, its node
    counters, each line `name value`."""
    items = node_vmstat_items(m, m.pgdat[nid])
    return "".join(f"{name} {value}\n" for name, value in items.items())


def node_read_distance(m: Machine, nid: int) -> str:
    """nodeN/distance: to every online node, ascending, as libnuma parses it."""
    return " ".join(map(str, m.node_distances(nid, m.online_nodes()))) + "\n"


def node_read_cpumap(m: Machine, nid: int) -> str:
    return bitmap_mask(m.node_cpus(nid), m.nr_cpus) + "\n"


def node_read_cpulist(m: Machine, nid: int) -> str:
    return bitmap_list(m.node_cpus(nid)) + "\n"


# --- the directories -----------------------------------------------------------------------

NODE_ATTRS = {
    "meminfo": RO(node_read_meminfo, depends=MACHINE),
    "numastat": RO(node_read_numastat, depends=MACHINE),
    "vmstat": RO(node_read_vmstat, depends=MACHINE),
    "distance": RO(node_read_distance, depends=MACHINE),
    "cpumap": RO(node_read_cpumap, depends=MACHINE),
    "cpulist": RO(node_read_cpulist, depends=MACHINE),
}


def cpu_link_target(cpu: int) -> str:
    return f"../../cpu/cpu{cpu}"


def node_dir(m: Machine, nid: int) -> Dir:
    """nodeN/: fixed attributes, hugepages/, a cpuK link for each of the node's CPUs, and a
    memoryM link for each memory block with pages on the node (these change with layouts)."""
    files = FileSet(SYSFS, m.lock)
    children = files.attrs(NODE_ATTRS, m, nid)
    if not m.topo.has_distances:        # as its snapshot: a machine without a SLIT has none
        del children["distance"]
    children["hugepages"] = node_hugepages_dir(m, nid)
    return union(StaticDir(children), node_cpu_links(m, nid), node_memory_links(m, nid))


def node_cpu_link_names(m: Machine, nid: int) -> list[str]:
    return [f"cpu{cpu}" for cpu in m.node_cpus(nid)]


def node_cpu_link_lookup(m: Machine, nid: int, name: str) -> Node | None:
    cpu = parse_indexed_name(name, "cpu")
    if cpu is None or cpu not in m.node_cpus(nid):
        return None
    return FileSet(SYSFS, m.lock).symlink(cpu_link_target, cpu)


def node_cpu_links(m: Machine, nid: int) -> Dir:
    """A cpuK link for each of the node's CPUs now (they move, and go offline)."""
    return FileSet(SYSFS, m.lock).dynamic_dir(partial(node_cpu_link_names, m, nid),
                                              partial(node_cpu_link_lookup, m, nid))


def node_names(m: Machine, states: dict[str, Node]) -> list[str]:
    return [*states, *(f"node{nid}" for nid in m.online_nodes())]


def node_lookup(m: Machine, states: dict[str, Node], made: dict[int, Dir],
                name: str) -> Node | None:
    """A state list, or nodeN/ if node N is online (libnuma finds nodes by this lookup).

    Every open walks here, so a node's directory is built once and kept in made: a node, once
    online, stays online; what changes in it (its CPU and memory links) is looked up at each
    walk, and its files compute at each read.
    """
    if name in states:
        return states[name]
    nid = parse_indexed_name(name, "node")
    if nid is None or nid not in m.online_nodes():
        return None
    d = made.get(nid)
    if d is None:
        d = made[nid] = node_dir(m, nid)
    return d


def node_root(m: Machine) -> Dir:
    """sys/devices/system/node/: nodeN/ comes with online nodes, at every lookup."""
    files = FileSet(SYSFS, m.lock)
    states = files.attrs(STATE_ATTRS, m)
    made: dict[int, Dir] = {}
    return files.dynamic_dir(partial(node_names, m, states),
                             partial(node_lookup, m, states, made))
