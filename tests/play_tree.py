"""A daemon older than the workload, for `dnumafs mount --tree play_tree:without_workload`:
the model's tree without sys/kernel/debug/dnumafs/workload."""
from __future__ import annotations

from typing import Any

from dnumafs.files import build_root
from dnumafs.mm import Machine, MachineConfig
from dnumafs.vfs.tree import Dir, StaticDir, UnionDir, resolve


def without_workload(**cfg: Any) -> Dir:
    root = build_root(Machine.boot(MachineConfig(**cfg)))
    debug = resolve(root, "/sys/kernel/debug/dnumafs")
    layers = debug.layers if isinstance(debug, UnionDir) else (debug,)
    owner = [d for d in layers if isinstance(d, StaticDir) and "workload" in d.children]
    assert len(owner) == 1, layers
    del owner[0].children["workload"]      # type: ignore[attr-defined]
    return root
