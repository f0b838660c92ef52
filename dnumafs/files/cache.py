"""MNT/sys/devices/system/cpu/cpuK/cache/indexM/: the caches of a machine whose description
has them (the synthetic machine, dnumafs/machines/synthetic.py); a snapshot's are its own,
served from it. The model has no caches to measure: the files say what the description says.
Files and formats are those of drivers/base/cacheinfo.c on x86-64 (which sets no write or
allocation policy).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import attrs

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.machines import CacheDescription
from dnumafs.mm import Machine
from dnumafs.vfs.tree import Attr, Dir, StaticDir

from .cpu import core_cpus, package_cpus, per_cpu_dir


@attrs.frozen
class CpuPlace:
    """A CPU's place in the topology, as its topology/ files show it."""

    package: int
    core: int                      # within the package
    package_cpus: tuple[int, ...]
    core_cpus: tuple[int, ...]     # the core's threads

    @property
    def cores_in_package(self) -> int:
        return len(self.package_cpus) // len(self.core_cpus)


def cpu_place(m: Machine, cpu: int) -> CpuPlace:
    place = m.topo.place[cpu]
    return CpuPlace(package=place.package, core=place.core,
                    package_cpus=package_cpus(m, cpu), core_cpus=core_cpus(m, cpu))


def last_level_kb(m: Machine, cpu: int) -> int:
    """The size of a CPU's last-level cache (what x86's cpuinfo calls `cache size`)."""
    caches = m.topo.caches.get(cpu, ())
    return caches[-1].size_kb if caches else 0


INDEX_VALUES: dict[str, Callable[[Machine, CacheDescription], object]] = {
    "id": lambda m, c: c.id,
    "level": lambda m, c: c.level,
    "type": lambda m, c: c.type,
    "size": lambda m, c: f"{c.size_kb}K",
    "coherency_line_size": lambda m, c: c.line_size,
    "ways_of_associativity": lambda m, c: c.ways,
    "number_of_sets": lambda m, c: c.number_of_sets,
    "physical_line_partition": lambda m, c: 1,
    "shared_cpu_map": lambda m, c: bitmap_mask(c.cpus, m.nr_cpus),
    "shared_cpu_list": lambda m, c: bitmap_list(c.cpus),
}


def index_show(name: str, m: Machine, cache: CacheDescription) -> str:
    return f"{INDEX_VALUES[name](m, cache)}\n"


def index_dir(m: Machine, cache: CacheDescription) -> Dir:
    """indexM/: every value is fixed at boot, as the CPU-to-node map is."""
    return StaticDir({name: Attr(show=partial(index_show, name, m, cache))
                      for name in INDEX_VALUES})


def cpu_cache_dir(m: Machine, cpu: int) -> Dir:
    return StaticDir({"cache": StaticDir({f"index{i}": index_dir(m, cache)
                                          for i, cache in enumerate(m.topo.caches[cpu])})})


def cache_root(m: Machine) -> Dir:
    """cpuK/cache/ for every CPU with caches, laid out as sys/devices/system/cpu/ so that it
    joins the CPU tree of cpu.py."""
    return per_cpu_dir({}, m.topo.caches, partial(cpu_cache_dir, m))
