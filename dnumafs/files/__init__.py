"""The file tree over the model, laid out as the real /sys and /proc paths, so that a directory
of the mount can be bound over the real one and HWLOC_FSROOT=MNT works.

One module per area, each a set of small show/store functions over the model:
  memlayout  sys/kernel/debug/memlayout/, sys/module/memlayout/parameters/
  node       sys/devices/system/node/
  cpu        sys/devices/system/cpu/
  cache      sys/devices/system/cpu/cpuK/cache/
  bus        sys/bus/
  proc       proc/
  proc_cpu   proc/cpuinfo, proc/stat, proc/interrupts, proc/softirqs
  debug      sys/kernel/debug/dnumafs/ (the model's invariant checker)
"""
from __future__ import annotations

from dnumafs.mm import Machine
from dnumafs.vfs.tree import Dir, StaticDir

from .bus import bus_dir
from .cache import cache_root
from .cpu import cpu_root
from .debug import debug_dir
from .memlayout import memlayout_dir, module_dir
from .node import node_root
from .overlay import union
from .proc import proc_dir
from .proc_cpu import proc_cpu_dir


def build_root(machine: Machine) -> Dir:
    """The mount's root directory."""
    return StaticDir({
        "sys": StaticDir({
            "kernel": StaticDir({"debug": StaticDir({
                "memlayout": memlayout_dir(machine),
                "dnumafs": debug_dir(machine),
            })}),
            "module": StaticDir({"memlayout": module_dir(machine)}),
            "devices": StaticDir({"system": StaticDir({
                "node": node_root(machine),
                "cpu": union(cpu_root(machine), cache_root(machine)),
            })}),
            "bus": bus_dir(machine),
        }),
        "proc": union(proc_dir(machine), proc_cpu_dir(machine)),
    })
