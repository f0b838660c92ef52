"""MNT/sys/kernel/debug/numa_topology/: the topology changes SPEC section 8 adds, in dnuma's
debugfs style (root-only, 0600).

  cpuN/node       the CPU's node; writing a node id moves the CPU and its thread siblings
  nodeN/distance  the node's row, as sysfs prints it; writing a whole row replaces it

Both take their values as the kernel's kstrto* do (a trailing newline allowed) and refuse a bad
one with EINVAL, changing nothing (dnumafs.mm.cpu_hotplug checks before it changes).
"""
from __future__ import annotations

import errno
from functools import partial

from dnumafs.mm import Machine
from dnumafs.mm.memory_hotplug import HotplugError
from dnumafs.vfs.tree import DEBUGFS, RW, Dir, FileSet, Node, StaticDir, union

from .cpu import per_cpu_dir
from .format import parse_indexed_name
from .node import node_read_distance


def parse_ints(buf: bytes) -> list[int]:
    """Decimal integers separated by blanks (a row as sysfs prints it)."""
    try:
        return [int(word, 10) for word in buf.decode("ascii").split()]
    except (UnicodeDecodeError, ValueError):
        raise OSError(errno.EINVAL, f"{buf!r} is not a list of integers") from None


def cpu_node_show(m: Machine, cpu: int) -> str:
    return f"{m.cpu_node[cpu]}\n"


def cpu_node_store(m: Machine, cpu: int, buf: bytes) -> None:
    values = parse_ints(buf)
    if len(values) != 1:
        raise OSError(errno.EINVAL, f"{buf!r} is not one node id")
    try:
        m.move_cpu(cpu, values[0])
    except HotplugError as e:
        raise OSError(e.errno, str(e)) from e


def distance_store(m: Machine, nid: int, buf: bytes) -> None:
    try:
        m.set_distance_row(nid, parse_ints(buf))
    except HotplugError as e:
        raise OSError(e.errno, str(e)) from e


CPU_ATTRS = {"node": RW(cpu_node_show, cpu_node_store)}
NODE_ATTRS = {"distance": RW(node_read_distance, distance_store)}


def node_names(m: Machine) -> list[str]:
    return [f"node{nid}" for nid in m.online_nodes()]


def node_lookup(m: Machine, made: dict[int, Dir], name: str) -> Node | None:
    """nodeN/ while node N is online (a node, once online, stays: its directory is kept)."""
    nid = parse_indexed_name(name, "node")
    if nid is None or nid not in m.online_nodes():
        return None
    d = made.get(nid)
    if d is None:
        d = made[nid] = StaticDir(FileSet(DEBUGFS, m.lock).attrs(NODE_ATTRS, m, nid))
    return d


def numa_topology_dir(m: Machine) -> Dir:
    """sys/kernel/debug/numa_topology/: a cpuN/ per present CPU, a nodeN/ per online node."""
    files = FileSet(DEBUGFS, m.lock)
    made: dict[int, Dir] = {}
    nodes = files.dynamic_dir(partial(node_names, m), partial(node_lookup, m, made))
    cpus = per_cpu_dir({}, m.present_cpus(),
                       lambda cpu: StaticDir(files.attrs(CPU_ATTRS, m, cpu)))
    return union(cpus, nodes)
