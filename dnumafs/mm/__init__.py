"""The NUMA page allocator model with dnuma: no FUSE here."""
from .constants import HPAGE_ORDER, MAX_ORDER, PAGE_SIZE, ZoneType
from .machine import Machine, MachineConfig
from .memlayout import Memlayout, MemlayoutError
from .stats import STAT_NAMES, DnumaStats, SummedStats
from .zone import NUMASTAT_NAMES, Pgdat, Watermarks, Zone

__all__ = [
    "HPAGE_ORDER", "MAX_ORDER", "PAGE_SIZE", "ZoneType", "Machine", "MachineConfig",
    "Memlayout", "MemlayoutError", "STAT_NAMES", "DnumaStats", "NUMASTAT_NAMES", "Pgdat",
    "Watermarks", "Zone", "SummedStats",
]
