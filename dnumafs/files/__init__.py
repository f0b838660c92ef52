"""The file tree over the model, laid out as the real /sys and /proc paths, so that a directory
of the mount can be bound over the real one and HWLOC_FSROOT=MNT works.

One module per area, each a set of small show/store functions over the model:
  memlayout  sys/kernel/debug/memlayout/, sys/module/memlayout_debugfs/parameters/
  node       sys/devices/system/node/
  cpu        sys/devices/system/cpu/
  proc       proc/
  debug      sys/kernel/debug/dnumafs/ (the model's invariant checker)
"""
from __future__ import annotations

from typing import Any

from dnumafs.mm import Machine
from dnumafs.vfs.tree import Dir, StaticDir

from .cpu import cpu_root
from .debug import debug_dir
from .memlayout import memlayout_dir, module_dir
from .node import node_root
from .proc import proc_dir


def build_root(machine: Machine) -> Dir:
    """The mount's root directory."""
    return tree({
        # debugfs's root is root-only (0700), as /sys/kernel/debug.
        "sys/kernel/debug": StaticDir(mode=0o700),
        "sys/kernel/debug/memlayout": memlayout_dir(machine),
        "sys/kernel/debug/dnumafs": debug_dir(machine),
        "sys/module/memlayout_debugfs": module_dir(machine),
        "sys/devices/system/node": node_root(machine),
        "sys/devices/system/cpu": cpu_root(machine),
        "proc": proc_dir(machine),
    })


def tree(subtrees: dict[str, Dir]) -> Dir:
    """A root holding each subtree at its path, with the directories between made as needed
    (0755); a path given itself as an empty StaticDir sets that directory's mode."""
    root: dict[str, Any] = {}
    modes: dict[tuple[str, ...], int] = {}
    for path, sub in subtrees.items():
        *parents, name = path.split("/")
        d = root
        for part in parents:
            d = d.setdefault(part, {})
        if isinstance(sub, StaticDir) and not sub.children:
            modes[(*parents, name)] = sub.mode
            d.setdefault(name, {})
        else:
            d[name] = sub

    def build(d: dict[str, Any], at: tuple[str, ...]) -> StaticDir:
        return StaticDir({k: build(v, (*at, k)) if isinstance(v, dict) else v
                          for k, v in d.items()}, mode=modes.get(at, 0o755))
    return build(root, ())
