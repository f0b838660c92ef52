"""MNT/sys/devices/system/node: node state lists and one nodeN/ per online node.

As drivers/base/node.c: one show (or store) function per attribute, each computing its figures
from the model under the machine lock when the file is opened, so every file agrees with the
model and with the others at that moment (the seed's "sysfs not updated" bug, fixed).
"""
from __future__ import annotations

import errno
from functools import partial

from dnumafs.mm import Machine, Pgdat
from dnumafs.mm.constants import HPAGE_ORDER, HPAGE_SIZE_KB
from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.vfs.tree import Attr, Dir, DynamicDir, Node, StaticDir, Symlink

from .format import bitmap_list, bitmap_mask, meminfo_kb, parse_indexed_name

# vmstat names (Linux's numa_stat_name()) of the model's per-node NUMA counters, which
# nodeN/numastat shows under their own names.
NUMA_EVENT_NAMES = {
    "numa_hit": "numa_hit",
    "numa_miss": "numa_miss",
    "numa_foreign": "numa_foreign",
    "interleave_hit": "numa_interleave",
    "local_node": "numa_local",
    "other_node": "numa_other",
}

HUGEPAGES_DIR = f"hugepages-{HPAGE_SIZE_KB}kB"


# --- node state lists (node_state_attr in Linux) -------------------------------------------

def possible_show(m: Machine) -> str:
    with m.lock:
        return bitmap_list(range(m.possible_nodes)) + "\n"


def online_show(m: Machine) -> str:
    with m.lock:
        return bitmap_list(m.online_nodes()) + "\n"


def has_memory_show(m: Machine) -> str:
    """N_MEMORY: nodes with present pages now; a node that gains memory by a commit appears.
    Also has_normal_memory: on x86-64 (no highmem) every zone is normal memory."""
    with m.lock:
        return bitmap_list(m.nodes_with_memory()) + "\n"


def has_cpu_show(m: Machine) -> str:
    with m.lock:
        return bitmap_list(m.nodes_with_cpus()) + "\n"


STATE_FILES = {
    "possible": possible_show,
    "online": online_show,
    "has_memory": has_memory_show,
    "has_normal_memory": has_memory_show,
    "has_cpu": has_cpu_show,
}


# --- nodeN/ attributes ---------------------------------------------------------------------

def node_read_meminfo(m: Machine, nid: int) -> str:
    """nodeN/meminfo: the keys Linux has that the model counts, in Linux's order.

    MemTotal is the node's managed pages and MemFree its pages on the buddy free lists, as
    si_meminfo_node() and NR_FREE_PAGES (pages on per-CPU lists are not free there either).
    Hugepages are taken from the buddy allocator, so they are in MemUsed.
    """
    with m.lock:
        pgdat = m.pgdat[nid]
        total, free = pgdat.managed_pages, pgdat.free_pages
        hp_total, hp_free, hp_surp = m.hugepages(nid)
    lines = [
        f"Node {nid} {meminfo_kb('MemTotal', total)}",
        f"Node {nid} {meminfo_kb('MemFree', free)}",
        f"Node {nid} {meminfo_kb('MemUsed', total - free)}",
        f"Node {nid} HugePages_Total: {hp_total:5d}",
        f"Node {nid} HugePages_Free:  {hp_free:5d}",
        f"Node {nid} HugePages_Surp:  {hp_surp:5d}",
    ]
    return "\n".join(lines) + "\n"


def node_read_numastat(m: Machine, nid: int) -> str:
    """nodeN/numastat: the six allocator counters (allocations, not pages, as Linux counts
    them), under their numastat names."""
    with m.lock:
        counts = dict(m.pgdat[nid].numastat)
    return "".join(f"{name} {value}\n" for name, value in counts.items())


def node_vmstat_items(pgdat: Pgdat) -> dict[str, int]:
    """The node's vmstat counters the model keeps, in Linux's order: zone items (free pages on
    the buddy lists), NUMA events (numa_stat_name()), node items (hugetlb pages, in pages)."""
    items = {"nr_free_pages": pgdat.free_pages}
    items.update((NUMA_EVENT_NAMES[name], value) for name, value in pgdat.numastat.items())
    items["nr_hugetlb"] = pgdat.nr_hugepages << HPAGE_ORDER
    return items


def node_read_vmstat(m: Machine, nid: int) -> str:
    with m.lock:
        items = node_vmstat_items(m.pgdat[nid])
    return "".join(f"{name} {value}\n" for name, value in items.items())


def node_read_distance(m: Machine, nid: int) -> str:
    """nodeN/distance: to every online node, ascending, as libnuma parses it."""
    with m.lock:
        return " ".join(str(m.node_distance(nid, other)) for other in m.online_nodes()) + "\n"


def node_read_cpumap(m: Machine, nid: int) -> str:
    with m.lock:
        return bitmap_mask(m.node_cpus(nid), m.nr_cpus) + "\n"


def node_read_cpulist(m: Machine, nid: int) -> str:
    with m.lock:
        return bitmap_list(m.node_cpus(nid)) + "\n"


# --- nodeN/hugepages/hugepages-2048kB/ (mm/hugetlb.c's per-node hstate attributes) ----------

def nr_hugepages_show(m: Machine, nid: int) -> str:
    with m.lock:
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
    with m.lock:
        return f"{m.hugepages(nid)[1]}\n"


def surplus_hugepages_show(m: Machine, nid: int) -> str:
    with m.lock:
        return f"{m.hugepages(nid)[2]}\n"


# --- the directories -----------------------------------------------------------------------

def hugepages_dir(m: Machine, nid: int) -> Dir:
    return StaticDir({HUGEPAGES_DIR: StaticDir({
        "nr_hugepages": Attr(show=partial(nr_hugepages_show, m, nid),
                             store=partial(nr_hugepages_store, m, nid), mode=0o644),
        "free_hugepages": Attr(show=partial(free_hugepages_show, m, nid)),
        "surplus_hugepages": Attr(show=partial(surplus_hugepages_show, m, nid)),
    })})


def node_dir(m: Machine, nid: int) -> Dir:
    """nodeN/: fixed attributes, and a cpuK link for each of the node's CPUs."""
    children: dict[str, Node] = {
        "meminfo": Attr(show=partial(node_read_meminfo, m, nid)),
        "numastat": Attr(show=partial(node_read_numastat, m, nid)),
        "vmstat": Attr(show=partial(node_read_vmstat, m, nid)),
        "distance": Attr(show=partial(node_read_distance, m, nid)),
        "cpumap": Attr(show=partial(node_read_cpumap, m, nid)),
        "cpulist": Attr(show=partial(node_read_cpulist, m, nid)),
        "hugepages": hugepages_dir(m, nid),
    }
    with m.lock:
        cpus = m.node_cpus(nid)
    for cpu in cpus:
        children[f"cpu{cpu}"] = Symlink(partial(str, f"../../cpu/cpu{cpu}"))
    return StaticDir(children)


def node_names(m: Machine) -> list[str]:
    with m.lock:
        nids = m.online_nodes()
    return [*STATE_FILES, *(f"node{nid}" for nid in nids)]


def node_lookup(m: Machine, made: dict[int, Dir], name: str) -> Node | None:
    """A state list, or nodeN/ if node N is online (libnuma finds nodes by this lookup).

    Every open walks here, so a node's directory is built once and kept in made: a node, once
    online, stays online, and its CPUs never move (the cpu->node map is fixed at boot, as the
    patch set leaves it), so the directory never changes; its files compute at open.
    """
    if name in STATE_FILES:
        return Attr(show=partial(STATE_FILES[name], m))
    nid = parse_indexed_name(name, "node")
    with m.lock:
        if nid is None or nid not in m.pgdat:
            return None
        d = made.get(nid)
        if d is None:
            d = made[nid] = node_dir(m, nid)
        return d


def node_root(m: Machine) -> Dir:
    """sys/devices/system/node/: nodeN/ comes with online nodes, at every lookup."""
    made: dict[int, Dir] = {}
    return DynamicDir(names=partial(node_names, m), lookup=partial(node_lookup, m, made))
