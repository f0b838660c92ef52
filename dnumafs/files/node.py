"""MNT/sys/devices/system/node: node state lists and one nodeN/ per online node.

As drivers/base/node.c: a table of attributes per directory, one show (or store) function per
attribute, each computing its figures from the model when the file is read (the tree takes the
machine lock around it), so every file agrees with the model and with the others at that
moment (the seed's "sysfs not updated" bug, fixed).
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from functools import partial

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.mm import Machine
from dnumafs.mm.constants import HPAGE_SIZE_KB
from dnumafs.vfs.tree import RO, RW, SYSFS, Dir, FileSet, Node, StaticDir, union

from .format import meminfo_kb, meminfo_line, parse_indexed_name
from .memory import node_memory_links
from .vmstat import meminfo_figures, node_vmstat_items

HUGEPAGES_DIR = f"hugepages-{HPAGE_SIZE_KB}kB"


# --- node state lists (node_state_attr in Linux) -------------------------------------------

def node_state_show(state: Callable[[Machine], Iterable[int]], m: Machine) -> str:
    """One node state list (Linux's show_node_state()), whichever state it is."""
    return bitmap_list(state(m)) + "\n"


def possible_nodes(m: Machine) -> range:
    return range(m.possible_nodes)


# N_NORMAL_MEMORY is N_MEMORY on x86-64 (no highmem): every zone is normal memory. A node that
# gains memory by a commit appears in both.
STATE_ATTRS = {
    "possible": RO(partial(node_state_show, possible_nodes)),
    "online": RO(partial(node_state_show, Machine.online_nodes)),
    "has_memory": RO(partial(node_state_show, Machine.nodes_with_memory)),
    "has_normal_memory": RO(partial(node_state_show, Machine.nodes_with_memory)),
    "has_cpu": RO(partial(node_state_show, Machine.nodes_with_cpus)),
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
    return " ".join(str(m.node_distance(nid, other)) for other in m.online_nodes()) + "\n"


def node_read_cpumap(m: Machine, nid: int) -> str:
    return bitmap_mask(m.node_cpus(nid), m.nr_cpus) + "\n"


def node_read_cpulist(m: Machine, nid: int) -> str:
    return bitmap_list(m.node_cpus(nid)) + "\n"


# --- nodeN/hugepages/hugepages-2048kB/ (mm/hugetlb.c's per-node hstate attributes) ----------

def nr_hugepages_show(m: Machine, nid: int) -> str:
    return f"{m.hugepages(nid)[0]}\n"


def nr_hugepages_store(m: Machine, nid: int, buf: bytes) -> None:
    """Resize the node's pool from the buddy allocator; as Linux, a pool that cannot grow to
    the count asked for is not an error (read the file back to see what it got)."""
    count = kstrtoull(buf, 10)
    try:
        m.set_nr_hugepages(nid, count)
    except ValueError as e:
        raise OSError(errno.EINVAL, str(e)) from e


def free_hugepages_show(m: Machine, nid: int) -> str:
    return f"{m.hugepages(nid)[1]}\n"


def surplus_hugepages_show(m: Machine, nid: int) -> str:
    return f"{m.hugepages(nid)[2]}\n"


# --- the directories -----------------------------------------------------------------------

HUGEPAGES_ATTRS = {
    "nr_hugepages": RW(nr_hugepages_show, nr_hugepages_store),
    "free_hugepages": RO(free_hugepages_show),
    "surplus_hugepages": RO(surplus_hugepages_show),
}

NODE_ATTRS = {
    "meminfo": RO(node_read_meminfo),
    "numastat": RO(node_read_numastat),
    "vmstat": RO(node_read_vmstat),
    "distance": RO(node_read_distance),
    "cpumap": RO(node_read_cpumap),
    "cpulist": RO(node_read_cpulist),
}


def cpu_link_target(cpu: int) -> str:
    return f"../../cpu/cpu{cpu}"


def node_dir(m: Machine, nid: int) -> Dir:
    """nodeN/: fixed attributes, hugepages/, a cpuK link for each of the node's CPUs, and a
    memoryM link for each memory block with pages on the node (these change with layouts)."""
    files = FileSet(SYSFS, m.lock)
    children = files.attrs(NODE_ATTRS, m, nid)
    children["hugepages"] = StaticDir({HUGEPAGES_DIR: StaticDir(
        files.attrs(HUGEPAGES_ATTRS, m, nid))})
    for cpu in m.node_cpus(nid):
        children[f"cpu{cpu}"] = files.symlink(cpu_link_target, cpu)
    return union(StaticDir(children), node_memory_links(m, nid))


def node_names(m: Machine, states: dict[str, Node]) -> list[str]:
    return [*states, *(f"node{nid}" for nid in m.online_nodes())]


def node_lookup(m: Machine, states: dict[str, Node], made: dict[int, Dir],
                name: str) -> Node | None:
    """A state list, or nodeN/ if node N is online (libnuma finds nodes by this lookup).

    Every open walks here, so a node's directory is built once and kept in made: a node, once
    online, stays online, and its CPUs never move (the cpu->node map is fixed at boot, as the
    patch set leaves it), so the directory never changes; its files compute at each read.
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
