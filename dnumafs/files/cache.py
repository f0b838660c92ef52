"""MNT/sys/devices/system/cpu/cpuK/cache/indexM/: the caches of a machine whose description
has them (the synthetic machine, dnumafs/machines/synthetic.py); a snapshot's are its own,
served from it. The model has no caches to measure: the files say what the description says.
Files and formats are those of drivers/base/cacheinfo.c on x86-64 (which sets no write or
allocation policy).
"""
from __future__ import annotations

from functools import partial

import attrs

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.machines import CacheDescription
from dnumafs.mm import Machine
from dnumafs.vfs.tree import Attr, Dir, Node, StaticDir

from .cpu import core_cpus, package_cpus


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


def index_dir(m: Machine, cache: CacheDescription) -> Dir:
    """indexM/: every value is fixed at boot, as the CPU-to-node map is."""
    values = {
        "id": cache.id,
        "level": cache.level,
        "type": cache.type,
        "size": f"{cache.size_kb}K",
        "coherency_line_size": cache.line_size,
        "ways_of_associativity": cache.ways,
        "number_of_sets": cache.number_of_sets,
        "physical_line_partition": 1,
        "shared_cpu_map": bitmap_mask(cache.cpus, m.nr_cpus),
        "shared_cpu_list": bitmap_list(cache.cpus),
    }
    return StaticDir({name: Attr(show=partial(str, f"{value}\n"))
                      for name, value in values.items()})


def cache_root(m: Machine) -> Dir:
    """cpuK/cache/ for every CPU with caches, laid out as sys/devices/system/cpu/ so that it
    joins the CPU tree of cpu.py."""
    children: dict[str, Node] = {}
    for cpu, caches in m.topo.caches.items():
        indexes: dict[str, Node] = {f"index{i}": index_dir(m, cache)
                                    for i, cache in enumerate(caches)}
        children[f"cpu{cpu}"] = StaticDir({"cache": StaticDir(indexes)})
    return StaticDir(children)
