"""The machine: page arrays, nodes, CPUs, layouts, and the one lock over them all."""
from __future__ import annotations

import threading

import attrs
import numpy as np

from .constants import PAGE_SHIFT, ZoneType
from .memlayout import Memlayout
from .stats import DnumaStats
from .zone import Pgdat, Zone


@attrs.define
class MachineConfig:
    """What to boot. Sizes are bytes; node_mem, if given, sets each node's share."""

    nodes: int = 2
    mem: int = 1 << 30
    node_mem: list[int] | None = None
    cpus: int = 4
    possible_nodes: int = 8
    boot_alloc_percent: float = 5.0     # of each node's managed pages, allocated at boot
    seed: int = 0


class Machine:
    """A NUMA machine's page allocator with dnuma.

    Public methods take self.lock; readers that need several figures to agree take it
    themselves around their reads (it is re-entrant).

    Page metadata, one entry per pfn (numpy arrays):
      page_node[pfn]  int8   the node the page belongs to now
      page_flags[pfn] uint8  PG_* bits from constants
      page_order[pfn] int8   order of the free or allocated block whose head is pfn
    """

    lock: threading.RLock
    config: MachineConfig
    max_pfn: int
    possible_nodes: int
    nr_cpus: int
    page_node: np.ndarray
    page_flags: np.ndarray
    page_order: np.ndarray
    pgdat: dict[int, Pgdat]            # online nodes only, by nid
    cpu_node: list[int]                # cpu -> nid
    layouts: dict[int, Memlayout]      # pending, current and backlog layouts, by id
    current: Memlayout
    pending: Memlayout | None
    backlog: list[Memlayout]           # oldest first
    backlog_max: int
    stats: DnumaStats                  # global
    node_stats: dict[int, DnumaStats]  # global, per node
    vm_events: dict[str, int]          # pgfree, pgalloc_dma, ...: counted events
    boot_allocations: list[tuple[int, int]]  # (pfn, order) allocated at boot, still held
