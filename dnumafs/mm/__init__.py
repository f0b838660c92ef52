"""The NUMA page allocator model with dnuma: no FUSE here."""
from .constants import HPAGE_ORDER, MAX_ORDER, PAGE_SIZE, ZoneType
from .machine import Machine
from .memlayout import Memlayout, MemlayoutError
from .stats import NUMASTAT_NAMES, STAT_NAMES, DnumaStats, NumaStat, VmEvents
from .topology import MachineConfig
from .zone import Pgdat, Watermarks, Zone

__all__ = [
    "HPAGE_ORDER", "MAX_ORDER", "PAGE_SIZE", "ZoneType", "Machine", "MachineConfig",
    "Memlayout", "MemlayoutError", "STAT_NAMES", "DnumaStats", "NUMASTAT_NAMES", "NumaStat",
    "Pgdat", "VmEvents", "Watermarks", "Zone",
]
