"""Machines to boot the model as: snapshots of real machines and the synthetic one.

    with open_snapshot(PATH) as snap:       # a directory, a .tar[.gz|.bz2], or "/"
        desc = describe(snap)               # MachineDescription; snap.root has sys/, proc/
        check_host_memory(desc)
    desc = synthetic(nodes=4, cpus=16, mem=8 << 30)

Every problem is a MachineError whose message names the file and why.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .description import (
    MAX_CPUS,
    MAX_NUMNODES,
    PAGE_KB,
    CacheDescription,
    CpuDescription,
    MachineDescription,
    MachineError,
    NodeDescription,
)
from .snapshot import Snapshot, describe, open_snapshot
from .synthetic import parse_distances, synthetic

__all__ = [
    "MAX_CPUS", "MAX_NUMNODES", "MODEL_BYTES_PER_PAGE", "CacheDescription", "CpuDescription",
    "MachineDescription", "MachineError", "NodeDescription", "Snapshot", "check_host_memory",
    "describe", "load", "memory_needed", "open_snapshot", "parse_distances", "synthetic",
]

# What a daemon takes: its page arrays and the lists over them, at most 5 bytes per 4 KiB page
# (the bench's row "memory per page after boot"); a node's zones, lists and files some KiB;
# the interpreter, numpy and the file tree some tens of MiB. The bound a machine is checked
# against before booting.
MODEL_BYTES_PER_PAGE = 5
MODEL_BYTES_PER_NODE = 64 << 10
DAEMON_BASE_BYTES = 64 << 20


def model_pages(desc: MachineDescription) -> int:
    """The pages the model holds: every present page, where the description gives them, else
    about MemTotal (the reserved pages boot adds are a sixtieth of it, inside the bound)."""
    return sum(n.present_pages or n.memory_kb // PAGE_KB for n in desc.nodes)


def memory_needed(desc: MachineDescription) -> int:
    """About how many bytes a daemon modelling desc takes."""
    return DAEMON_BASE_BYTES + model_pages(desc) * MODEL_BYTES_PER_PAGE + \
        len(desc.possible_nodes) * MODEL_BYTES_PER_NODE


def host_available_bytes(meminfo: str | os.PathLike[str] = "/proc/meminfo") -> int:
    """MemAvailable of the machine dnumafs runs on."""
    text = Path(meminfo).read_text()
    m = re.search(r"^MemAvailable:\s+(\d+) kB$", text, re.MULTILINE)
    if m is None:
        raise MachineError(f"{meminfo}: no MemAvailable line")
    return int(m.group(1)) * 1024


def check_host_memory(desc: MachineDescription, available: int | None = None) -> None:
    """Refuse a machine whose model would not fit this host's available memory."""
    need = memory_needed(desc)
    have = host_available_bytes() if available is None else available
    if need > have:
        gib = model_pages(desc) * PAGE_KB >> 20
        raise MachineError(f"{desc.source}: {gib} GiB of memory needs about "
                           f"{need >> 20} MiB in the daemon, and this host has "
                           f"{have >> 20} MiB available")


def load(path: str | os.PathLike[str]) -> MachineDescription:
    """The description of the snapshot at path, checked against this host's memory; nothing
    of an extracted archive is left behind."""
    with open_snapshot(path) as snap:
        desc = describe(snap)
    check_host_memory(desc)
    return desc
