"""MNT/sys/devices/system/cpu/cpuK/cache/indexM/: the synthetic machine's caches.

The model has no caches to measure, so the machine is given a plain, fixed description that
agrees with the CPU topology of cpu.py (one core per CPU, one package per node): a level 1 data
and instruction cache and a level 2 cache private to each core, and a level 3 cache shared by
the package, sized per core as server parts are. Files and formats are those of
drivers/base/cacheinfo.c on x86-64 (which sets no write or allocation policy).
"""
from __future__ import annotations

from functools import partial

import attrs

from dnumafs.mm import Machine
from dnumafs.vfs.tree import Attr, Dir, Node, StaticDir

from .cpu import package_cpus
from .format import bitmap_list, bitmap_mask

LINE_SIZE = 64


@attrs.frozen
class CacheKind:
    """One level of the description: its size per core that shares it."""

    level: int
    type: str                      # Data, Instruction or Unified, as cacheinfo prints it
    kb_per_core: int
    ways: int
    per_package: bool              # shared by the package, else private to the core


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

    @property
    def size_kb(self) -> int:
        return self.kind.kb_per_core * len(self.cpus)

    @property
    def sets(self) -> int:
        return self.size_kb * 1024 // (LINE_SIZE * self.kind.ways)


def cpu_caches(m: Machine, cpu: int) -> list[Cache]:
    """cpu's caches, index 0 upwards. A core's cache has the core's number as its id (one
    core per CPU here), a package's the package's (its node's) number."""
    with m.lock:
        nid = m.cpu_node[cpu]
        package = tuple(package_cpus(m, cpu))
    return [Cache(kind, nid, package) if kind.per_package else Cache(kind, cpu, (cpu,))
            for kind in CACHE_KINDS]


def last_level_kb(m: Machine, cpu: int) -> int:
    """The size of cpu's last-level cache (what x86's cpuinfo calls `cache size`)."""
    return cpu_caches(m, cpu)[-1].size_kb


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
                                    for i, cache in enumerate(cpu_caches(m, cpu))}
        children[f"cpu{cpu}"] = StaticDir({"cache": StaticDir(indexes)})
    return StaticDir(children)
