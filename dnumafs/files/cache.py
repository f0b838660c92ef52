"""MNT/sys/devices/system/cpu/cpuK/cache/indexM/: the synthetic machine's caches.

The model has no caches to measure, so the machine is given a plain, fixed description that
follows the CPU topology of cpu.py, read through its own show functions: a level 1 data and
instruction cache and a level 2 cache for each core (shared by its threads), and a level 3
cache shared by the package, sized per core as server parts are. Files and formats are those
of drivers/base/cacheinfo.c on x86-64 (which sets no write or allocation policy).
"""
from __future__ import annotations

from functools import partial

import attrs

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask, bitmap_parselist
from dnumafs.mm import Machine
from dnumafs.vfs.tree import Attr, Dir, Node, StaticDir

from .cpu import (
    core_cpus_list_show,
    core_id_show,
    package_cpus_list_show,
    physical_package_id_show,
)

LINE_SIZE = 64


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
    """Read through cpu.py's show functions, so that the caches and cpuinfo follow the
    topology whatever it is."""
    return CpuPlace(package=int(physical_package_id_show(m, cpu)),
                    core=int(core_id_show(m, cpu)),
                    package_cpus=tuple(bitmap_parselist(package_cpus_list_show(m, cpu))),
                    core_cpus=tuple(bitmap_parselist(core_cpus_list_show(m, cpu))))


@attrs.frozen
class CacheKind:
    """One level of the description: its size per core that shares it."""

    level: int
    type: str                      # Data, Instruction or Unified, as cacheinfo prints it
    kb_per_core: int
    ways: int
    per_package: bool              # shared by the package, else by the core's threads


CACHE_KINDS = (
    CacheKind(1, "Data", 32, 8, per_package=False),
    CacheKind(1, "Instruction", 32, 8, per_package=False),
    CacheKind(2, "Unified", 1024, 16, per_package=False),
    CacheKind(3, "Unified", 2048, 16, per_package=True),
)


@attrs.frozen
class Cache:
    """One cpuK/cache/indexM/ as cacheinfo has it."""

    kind: CacheKind
    id: int
    cpus: tuple[int, ...]          # the CPUs that share it
    cores: int                     # the cores that share it

    @property
    def size_kb(self) -> int:
        return self.kind.kb_per_core * self.cores

    @property
    def sets(self) -> int:
        return self.size_kb * 1024 // (LINE_SIZE * self.kind.ways)


def cpu_caches(place: CpuPlace) -> list[Cache]:
    """A CPU's caches, index 0 upwards. A core's cache is numbered by the core's first CPU
    (unique over the machine), a package's by the package."""
    return [Cache(kind, place.package, place.package_cpus, place.cores_in_package)
            if kind.per_package else Cache(kind, place.core_cpus[0], place.core_cpus, 1)
            for kind in CACHE_KINDS]


def last_level_kb(place: CpuPlace) -> int:
    """The size of a CPU's last-level cache (what x86's cpuinfo calls `cache size`)."""
    return cpu_caches(place)[-1].size_kb


def index_dir(m: Machine, cache: Cache) -> Dir:
    """indexM/: every value is fixed at boot, as the CPU-to-node map is."""
    values = {
        "id": cache.id,
        "level": cache.kind.level,
        "type": cache.kind.type,
        "size": f"{cache.size_kb}K",
        "coherency_line_size": LINE_SIZE,
        "ways_of_associativity": cache.kind.ways,
        "number_of_sets": cache.sets,
        "physical_line_partition": 1,
        "shared_cpu_map": bitmap_mask(cache.cpus, m.nr_cpus),
        "shared_cpu_list": bitmap_list(cache.cpus),
    }
    return StaticDir({name: Attr(show=partial(str, f"{value}\n"))
                      for name, value in values.items()})


def cache_root(m: Machine) -> Dir:
    """cpuK/cache/ for every CPU, laid out as sys/devices/system/cpu/ so that it joins the
    CPU tree of cpu.py."""
    children: dict[str, Node] = {}
    for cpu in range(m.nr_cpus):
        indexes: dict[str, Node] = {f"index{i}": index_dir(m, cache)
                                    for i, cache in enumerate(cpu_caches(cpu_place(m, cpu)))}
        children[f"cpu{cpu}"] = StaticDir({"cache": StaticDir(indexes)})
    return StaticDir(children)
