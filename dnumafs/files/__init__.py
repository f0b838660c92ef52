"""The file tree over the model, laid out as the real /sys and /proc paths, so that a directory
of the mount can be bound over the real one and HWLOC_FSROOT=MNT works.

One module per area, each a set of small show/store functions over the model:
  memlayout  sys/kernel/debug/memlayout/, sys/module/memlayout_debugfs/parameters/
  node       sys/devices/system/node/
  cpu        sys/devices/system/cpu/
  cache      sys/devices/system/cpu/cpuK/cache/
  hugetlb    nodeN/hugepages/, sys/kernel/mm/hugepages/
  bus        sys/bus/
  memory     sys/devices/system/memory/, sys/bus/memory/, nodeN/memoryM
  proc       proc/
  proc_cpu   proc/cpuinfo, proc/stat, proc/interrupts, proc/softirqs
  debug      sys/kernel/debug/dnumafs/ (the model's invariant checker)
  process    sys/kernel/debug/process_view/ (the pages of `dnumafs run`'s programs)
  numa_topology  sys/kernel/debug/numa_topology/ (CPU moves, distance rows)
  kpageflags proc/kpageflags, sys/kernel/debug/dnumafs/page_nid (each pfn's flags and node)
"""
from __future__ import annotations

from typing import Any

import attrs

from dnumafs.mm import Machine
from dnumafs.vfs.tree import ChangeSource, Dir, StaticDir, union

from .bus import bus_dir
from .cache import cache_root
from .cpu import cpu_root
from .debug import debug_dir
from .hugetlb import hugepages_root
from .kpageflags import kpage_debug_dir, kpage_proc_dir
from .memlayout import memlayout_dir, module_dir
from .memory import memory_bus_dir, memory_root
from .node import node_root
from .numa_topology import numa_topology_dir
from .proc import proc_dir
from .proc_cpu import proc_cpu_dir
from .process import process_dir

# Directories made between the subtrees take 0755, but debugfs's root is root-only, as
# /sys/kernel/debug is (0700).
DIR_MODES = {"sys/kernel/debug": 0o700}


def build_root(machine: Machine) -> Dir:
    """The mount's root directory: each subtree at its path, one line each. A machine booted
    from a snapshot has no CPU topology, caches or cpuinfo of the model's (the snapshot's own
    are laid under this tree by files/snapshot.py's overlay)."""
    return mount_tree(changes=machine.changes, subtrees={
        "sys/kernel/debug/memlayout": memlayout_dir(machine),
        "sys/kernel/debug/dnumafs": union(debug_dir(machine), kpage_debug_dir(machine)),
        "sys/kernel/debug/numa_topology": numa_topology_dir(machine),
        "sys/kernel/mm/hugepages": hugepages_root(machine),
        "sys/kernel/debug/process_view": process_dir(machine),
        "sys/module/memlayout_debugfs": module_dir(machine),
        "sys/devices/system/node": node_root(machine),
        "sys/devices/system/cpu": union(cpu_root(machine), cache_root(machine)),
        "sys/devices/system/memory": memory_root(machine),
        "sys/bus": union(bus_dir(machine), memory_bus_dir(machine)),
        "proc": union(proc_dir(machine), proc_cpu_dir(machine), kpage_proc_dir(machine)),
    })


def mount_tree(subtrees: dict[str, Dir], changes: ChangeSource | None = None) -> Dir:
    """A root holding each subtree at its path, with the directories between made as needed
    (listed in the order first named, with their DIR_MODES mode or 0755)."""
    root: dict[str, Any] = {}
    for path, sub in subtrees.items():
        *parents, name = path.split("/")
        d = root
        for part in parents:
            d = d.setdefault(part, {})
        d[name] = sub
    return attrs.evolve(_static_dir(root, ""), changes=changes)


def _static_dir(children: dict[str, Any], path: str) -> StaticDir:
    return StaticDir({name: _static_dir(child, f"{path}/{name}".lstrip("/"))
                      if isinstance(child, dict) else child
                      for name, child in children.items()},
                     mode=DIR_MODES.get(path, 0o755))
