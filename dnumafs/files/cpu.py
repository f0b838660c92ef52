"""MNT/sys/devices/system/cpu: the CPU lists, cpuK/nodeN links and cpuK/topology/.

The model's CPUs never go offline and never change node (dnuma moves memory, not CPUs: the
cover letter's first "current limitation"). The topology is the plainest one that hwloc 2.9
reads without guessing: one package (and die) per node, one core per CPU, one thread per core.
Files are as on an x86-64 kernel (drivers/base/topology.c), including its cluster_id of 65535
where the CPU reports no cluster.
"""
from __future__ import annotations

from functools import partial

from dnumafs.mm import Machine
from dnumafs.vfs.tree import Attr, Dir, Node, StaticDir, Symlink

from .format import bitmap_list, bitmap_mask

CLUSTER_ID_UNKNOWN = 65535      # x86's BAD_APICID as topology_cluster_id() prints it


def cpu_list_show(m: Machine) -> str:
    """online, possible, present: every modelled CPU is all three."""
    with m.lock:
        return bitmap_list(range(m.nr_cpus)) + "\n"


def offline_show(m: Machine) -> str:
    return "\n"


# --- cpuK/topology/ --------------------------------------------------------------------------

def package_cpus(m: Machine, cpu: int) -> list[int]:
    """A package per node: the CPUs of this CPU's node."""
    with m.lock:
        return m.node_cpus(m.cpu_node[cpu])


def physical_package_id_show(m: Machine, cpu: int) -> str:
    with m.lock:
        return f"{m.cpu_node[cpu]}\n"


def core_id_show(m: Machine, cpu: int) -> str:
    """The core's number within its package."""
    return f"{package_cpus(m, cpu).index(cpu)}\n"


def die_id_show(m: Machine, cpu: int) -> str:
    return "0\n"


def cluster_id_show(m: Machine, cpu: int) -> str:
    return f"{CLUSTER_ID_UNKNOWN}\n"


def mask_show(m: Machine, cpus: list[int]) -> str:
    with m.lock:
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


def topology_dir(m: Machine, cpu: int) -> Dir:
    """cpuK/topology/: the package-wide masks under all their names (package, die and
    core_siblings are one set here), the core-wide ones likewise (core, cluster, thread)."""
    package = (partial(package_cpus_show, m, cpu), partial(package_cpus_list_show, m, cpu))
    core = (partial(core_cpus_show, m, cpu), partial(core_cpus_list_show, m, cpu))
    children: dict[str, Node] = {
        "physical_package_id": Attr(show=partial(physical_package_id_show, m, cpu)),
        "die_id": Attr(show=partial(die_id_show, m, cpu)),
        "cluster_id": Attr(show=partial(cluster_id_show, m, cpu)),
        "core_id": Attr(show=partial(core_id_show, m, cpu)),
    }
    for name, (mask, cpulist) in {"package_cpus": package, "die_cpus": package,
                                  "core_siblings": package, "core_cpus": core,
                                  "cluster_cpus": core, "thread_siblings": core}.items():
        children[name] = Attr(show=mask)
        children[f"{name}_list"] = Attr(show=cpulist)
    return StaticDir(children)


def cpu_dir(m: Machine, cpu: int) -> Dir:
    """cpuK/: its node link (../../node/nodeN, as register_cpu_under_node() makes) and
    topology/."""
    with m.lock:
        nid = m.cpu_node[cpu]
    return StaticDir({
        f"node{nid}": Symlink(partial(str, f"../../node/node{nid}")),
        "topology": topology_dir(m, cpu),
    })


def cpu_root(m: Machine) -> Dir:
    """sys/devices/system/cpu/."""
    children: dict[str, Node] = {
        "online": Attr(show=partial(cpu_list_show, m)),
        "possible": Attr(show=partial(cpu_list_show, m)),
        "present": Attr(show=partial(cpu_list_show, m)),
        "offline": Attr(show=partial(offline_show, m)),
    }
    for cpu in range(m.nr_cpus):
        children[f"cpu{cpu}"] = cpu_dir(m, cpu)
    return StaticDir(children)
