"""MNT/sys/devices/system/cpu: the CPU sets, cpuK/online, cpuK/nodeN links and, for a machine
whose description gives its topology (the synthetic one), cpuK/topology/.

The sets are the machine's: possible, present and online CPUs, and offline = possible but not
online (cpu_possible_mask & ~cpu_online_mask). A cpuK/ directory exists for each present CPU,
as register_cpu() makes them; its online file (0644: CPU hotplug, dnumafs.mm.cpu_hotplug) for
every one but an online CPU 0, which x86-64 cannot take offline. A snapshot's topology and
caches are its own and served from it (files/snapshot.py), so the model makes no topology/ for
it. CPUs move between nodes through debugfs (files/numa_topology.py), so cpuK's node link is
looked up at each walk. Files are as on an x86-64 kernel (drivers/base/topology.c), including
its cluster_id of 65535 where the CPU reports no cluster.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.lib.kstrtox import kstrtobool
from dnumafs.mm import Machine
from dnumafs.mm.memory_hotplug import HotplugError
from dnumafs.vfs.tree import (
    RO,
    RW,
    SYSFS,
    Dir,
    DynamicDir,
    FileSet,
    Node,
    NodeKind,
    StaticDir,
    kind_of,
    union,
)

from .format import parse_indexed_name

CLUSTER_ID_UNKNOWN = 65535      # x86's BAD_APICID as topology_cluster_id() prints it


def cpu_set_show(cpus: Callable[[Machine], Iterable[int]], m: Machine) -> str:
    """One CPU set as a list (drivers/base/cpu.c's show_cpus_attr())."""
    return bitmap_list(cpus(m)) + "\n"


def offline_cpus(m: Machine) -> list[int]:
    online = set(m.online_cpus())
    return [c for c in m.possible_cpus() if c not in online]


def cpu_online_show(m: Machine, cpu: int) -> str:
    return f"{int(cpu in m.online_cpus())}\n"


def cpu_online_store(m: Machine, cpu: int, buf: bytes) -> None:
    """online_store() (drivers/base/core.c): kstrtobool, and a CPU already so is success."""
    try:
        m.set_cpu_online(cpu, kstrtobool(buf))
    except HotplugError as e:
        raise OSError(e.errno, str(e)) from e


# --- cpuK/topology/ --------------------------------------------------------------------------

def package_cpus(m: Machine, cpu: int) -> tuple[int, ...]:
    return m.topo.package_cpus[m.topo.place[cpu].package]


def core_cpus(m: Machine, cpu: int) -> tuple[int, ...]:
    place = m.topo.place[cpu]
    return m.topo.core_cpus[(place.package, place.core)]


def physical_package_id_show(m: Machine, cpu: int) -> str:
    return f"{m.topo.place[cpu].package}\n"


def core_id_show(m: Machine, cpu: int) -> str:
    return f"{m.topo.place[cpu].core}\n"


def die_id_show(m: Machine, cpu: int) -> str:
    return f"{m.topo.place[cpu].die}\n"


def cluster_id_show(m: Machine, cpu: int) -> str:
    return f"{CLUSTER_ID_UNKNOWN}\n"


def mask_show(m: Machine, cpus: Iterable[int]) -> str:
    """A CPU mask as wide as nr_cpu_ids, as the kernel's cpumask files print it."""
    return bitmap_mask(cpus, m.nr_cpus) + "\n"


def package_cpus_show(m: Machine, cpu: int) -> str:
    return mask_show(m, package_cpus(m, cpu))


def package_cpus_list_show(m: Machine, cpu: int) -> str:
    return bitmap_list(package_cpus(m, cpu)) + "\n"


def core_cpus_show(m: Machine, cpu: int) -> str:
    return mask_show(m, core_cpus(m, cpu))


def core_cpus_list_show(m: Machine, cpu: int) -> str:
    return bitmap_list(core_cpus(m, cpu)) + "\n"


# The package-wide masks under all their names (package, die and core_siblings are one set
# here: one die per package), the core-wide ones likewise (core, cluster, thread).
TOPOLOGY_MASKS = {
    "package_cpus": (package_cpus_show, package_cpus_list_show),
    "die_cpus": (package_cpus_show, package_cpus_list_show),
    "core_siblings": (package_cpus_show, package_cpus_list_show),
    "core_cpus": (core_cpus_show, core_cpus_list_show),
    "cluster_cpus": (core_cpus_show, core_cpus_list_show),
    "thread_siblings": (core_cpus_show, core_cpus_list_show),
}

TOPOLOGY_ATTRS = {
    "physical_package_id": RO(physical_package_id_show),
    "die_id": RO(die_id_show),
    "cluster_id": RO(cluster_id_show),
    "core_id": RO(core_id_show),
    **{name + suffix: RO(show) for name, shows in TOPOLOGY_MASKS.items()
       for suffix, show in zip(("", "_list"), shows)},
}

CPU_LIST_ATTRS = {
    "online": RO(partial(cpu_set_show, Machine.online_cpus)),
    "possible": RO(partial(cpu_set_show, Machine.possible_cpus)),
    "present": RO(partial(cpu_set_show, Machine.present_cpus)),
    "offline": RO(partial(cpu_set_show, offline_cpus)),
}


def node_link_target(nid: int) -> str:
    return f"../../node/node{nid}"


def cpu_dir(m: Machine, cpu: int) -> Dir:
    """cpuK/: online (not for CPU 0), its node link (../../node/nodeN, as
    register_cpu_under_node() makes, for a CPU some node lists) and topology/ where the
    model has it."""
    files = FileSet(SYSFS, m.lock)
    children: dict[str, Node] = {}
    if cpu != 0 or cpu not in m.online_cpus():
        children["online"] = files.attr(RW(cpu_online_show, cpu_online_store), m, cpu)
    if cpu in m.topo.place:
        children["topology"] = StaticDir(files.attrs(TOPOLOGY_ATTRS, m, cpu))
    return union(StaticDir(children), files.dynamic_dir(partial(cpu_node_names, m, cpu),
                                                        partial(cpu_node_lookup, m, cpu)))


def cpu_node_names(m: Machine, cpu: int) -> list[str]:
    nid = m.cpu_node[cpu]
    return [f"node{nid}"] if nid >= 0 else []


def cpu_node_lookup(m: Machine, cpu: int, name: str) -> Node | None:
    """nodeN, the link to the CPU's node now."""
    if name not in cpu_node_names(m, cpu):
        return None
    return FileSet(SYSFS, m.lock).symlink(node_link_target, m.cpu_node[cpu])


def per_cpu_dir(fixed: dict[str, Node], cpus: Iterable[int],
                make: Callable[[int], Dir]) -> Dir:
    """A directory of fixed entries and a cpuK/ for each of cpus, each made by make(K) at its
    first lookup and kept (it never changes): a machine of 8192 CPUs mounts without making
    the hundreds of thousands of files of CPUs nobody reads."""
    cpu_set = frozenset(cpus)
    names = [*fixed, *(f"cpu{cpu}" for cpu in sorted(cpu_set))]
    made: dict[int, Dir] = {}

    def lookup(name: str) -> Node | None:
        if name in fixed:
            return fixed[name]
        cpu = parse_indexed_name(name, "cpu")
        if cpu is None or cpu not in cpu_set:
            return None
        d = made.get(cpu)
        if d is None:
            d = made[cpu] = make(cpu)
        return d

    def entries() -> list[tuple[str, NodeKind]]:
        return [*((name, kind_of(node)) for name, node in fixed.items()),
                *((name, Dir) for name in names[len(fixed):])]

    return DynamicDir(lambda: names, lookup, entries=entries)


def cpu_root(m: Machine) -> Dir:
    """sys/devices/system/cpu/."""
    return per_cpu_dir(FileSet(SYSFS, m.lock).attrs(CPU_LIST_ATTRS, m), m.present_cpus(),
                       partial(cpu_dir, m))
