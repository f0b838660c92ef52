"""A daemon older than the workload, for `dnumafs mount --tree play_tree:without_workload`:
the model's tree without sys/kernel/debug/dnumafs/workload."""
from __future__ import annotations

from typing import Any

from dnumafs.files import build_root
from dnumafs.mm import Machine, MachineConfig
from dnumafs.vfs.tree import Dir, StaticDir, resolve


def without_workload(**cfg: Any) -> Dir:
    root = build_root(Machine.boot(MachineConfig(**cfg)))
    debug = resolve(root, "/sys/kernel/debug/dnumafs")
    assert isinstance(debug, StaticDir)
    del debug.children["workload"]      # type: ignore[attr-defined]
    return root
