"""MNT/sys/devices/system/cpu: the CPU lists, cpuK/nodeN links and cpuK/topology/.

The model's CPUs never go offline and never change node (dnuma moves memory, not CPUs: the
cover letter's first "current limitation"). The topology is the plainest one that hwloc 2.9
reads without guessing: one package (and die) per node, one core per CPU, one thread per core.
Files are as on an x86-64 kernel (drivers/base/topology.c), including its cluster_id of 65535
where the CPU reports no cluster.
"""
from __future__ import annotations

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.mm import Machine
from dnumafs.vfs.tree import RO, SYSFS, Dir, FileSet, StaticDir

CLUSTER_ID_UNKNOWN = 65535      # x86's BAD_APICID as topology_cluster_id() prints it


def cpu_list_show(m: Machine) -> str:
    """online, possible, present: every modelled CPU is all three."""
    return bitmap_list(range(m.nr_cpus)) + "\n"


def offline_show(m: Machine) -> str:
    return "\n"


# --- cpuK/topology/ --------------------------------------------------------------------------

def package_cpus(m: Machine, cpu: int) -> list[int]:
    """A package per node: the CPUs of this CPU's node."""
    return m.node_cpus(m.cpu_node[cpu])


def physical_package_id_show(m: Machine, cpu: int) -> str:
    return f"{m.cpu_node[cpu]}\n"


def core_id_show(m: Machine, cpu: int) -> str:
    """The core's number within its package."""
    return f"{package_cpus(m, cpu).index(cpu)}\n"


def die_id_show(m: Machine, cpu: int) -> str:
    return "0\n"


def cluster_id_show(m: Machine, cpu: int) -> str:
    return f"{CLUSTER_ID_UNKNOWN}\n"


def mask_show(m: Machine, cpus: list[int]) -> str:
    return bitmap_mask(cpus, m.nr_cpus) + "\n"


def package_cpus_show(m: Machine, cpu: int) -> str:
    return mask_show(m, package_cpus(m, cpu))


def package_cpus_list_show(m: Machine, cpu: int) -> str:
    return bitmap_list(package_cpus(m, cpu)) + "\n"


def core_cpus_show(m: Machine, cpu: int) -> str:
    """One thread per core: the core's CPUs are this CPU alone."""
    return mask_show(m, [cpu])


def core_cpus_list_show(m: Machine, cpu: int) -> str:
    return f"{cpu}\n"


# The package-wide masks under all their names (package, die and core_siblings are one set
# here), the core-wide ones likewise (core, cluster, thread).
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
    "online": RO(cpu_list_show),
    "possible": RO(cpu_list_show),
    "present": RO(cpu_list_show),
    "offline": RO(offline_show),
}


def node_link_target(nid: int) -> str:
    return f"../../node/node{nid}"


def cpu_dir(m: Machine, cpu: int) -> Dir:
    """cpuK/: its node link (../../node/nodeN, as register_cpu_under_node() makes) and
    topology/."""
    files = FileSet(SYSFS, m.lock)
    nid = m.cpu_node[cpu]
    return StaticDir({
        f"node{nid}": files.symlink(node_link_target, nid),
        "topology": StaticDir(files.attrs(TOPOLOGY_ATTRS, m, cpu)),
    })


def cpu_root(m: Machine) -> Dir:
    """sys/devices/system/cpu/."""
    children = FileSet(SYSFS, m.lock).attrs(CPU_LIST_ATTRS, m)
    for cpu in range(m.nr_cpus):
        children[f"cpu{cpu}"] = cpu_dir(m, cpu)
    return StaticDir(children)
