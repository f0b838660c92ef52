"""MNT/proc: meminfo, buddyinfo, zoneinfo, vmstat, over the whole machine.

Figures are the model's own counts, taken when the file is read (under the machine lock, which
the tree takes), in Linux's formats and order (fs/proc/meminfo.c, mm/vmstat.c), every key
Linux prints: what the model has none of reads 0.
"""
from __future__ import annotations

from dnumafs.lib.sysctl import proc_dointvec_minmax
from dnumafs.mm import HPAGE_ORDER, Machine, Watermarks, Zone, ZoneType
from dnumafs.mm.constants import HPAGE_SIZE_KB, PAGE_SHIFT, PAGE_SIZE, PCP_BATCH, PCP_HIGH
from dnumafs.mm.zone import MAX_NR_ZONES, lowmem_reserve
from dnumafs.vfs.tree import PROCFS, RO, SYSCTL, WO, Dir, FileSet, StaticDir

from .format import meminfo_kb, meminfo_line
from .vmstat import (
    EXTRA_ZONE_NAMES,
    global_vmstat_items,
    meminfo_figures,
    node_stat_items,
    si_mem_available,
    zone_numa_items,
    zone_stat_items,
)

OVERCOMMIT_RATIO = 50                   # vm.overcommit_ratio
VMALLOC_TOTAL_KB = ((32 << 40) - 1) >> 10   # x86-64, 4-level page tables: 32 TiB
PMD_SIZE, PUD_SIZE = 2 << 20, 1 << 30

# /proc/meminfo's keys between Mlocked and MemAvailable's others, in meminfo_proc_show()'s
# order; the ones it shares with nodeN/meminfo come from vmstat.meminfo_figures().
LRU_KEYS = ("SwapCached", "Active", "Inactive", "Active(anon)", "Inactive(anon)",
            "Active(file)", "Inactive(file)", "Unevictable", "Mlocked")
WRITEBACK_KEYS = ("Dirty", "Writeback", "AnonPages", "Mapped", "Shmem", "KReclaimable", "Slab",
                  "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "SecPageTables",
                  "NFS_Unstable", "Bounce", "WritebackTmp")
THP_KEYS = ("AnonHugePages", "ShmemHugePages", "ShmemPmdMapped", "FileHugePages",
            "FilePmdMapped")


def direct_map_kb(end: int) -> tuple[int, int, int]:
    """x86-64's direct map of [0, end) in 4 KiB, 2 MiB and 1 GiB pages (init_mem_mapping()
    and split_mem_range(), on memory without holes): the first 2 MiB and the tail in 4 KiB
    pages, up to 1 GiB and the rest in 2 MiB pages, aligned gigabytes in 1 GiB pages."""
    if end <= PMD_SIZE:
        return end >> 10, 0, 0
    pmd_end, pud_end = end // PMD_SIZE * PMD_SIZE, end // PUD_SIZE * PUD_SIZE
    gig = max(0, pud_end - PUD_SIZE)
    return (PMD_SIZE + end - pmd_end) >> 10, (pmd_end - PMD_SIZE - gig) >> 10, gig >> 10


def meminfo_show(m: Machine) -> str:
    """/proc/meminfo: every key Linux 6.x prints, in its order (x86-64 with transparent
    hugepages, CMA and memory failure configured), from the machine's counters.

    MemTotal is managed pages, MemFree the buddy free lists (NR_FREE_PAGES), MemAvailable
    si_mem_available(). The model has no block devices (Buffers 0), swap, zswap, CMA area,
    vmalloc or per-CPU allocator, and no poisoned pages: those read 0. Its anonymous memory
    and shmem are what its processes committed (Committed_AS). Hugepages come out of MemFree;
    no process maps them, so none are reserved and all are free.
    """
    items = global_vmstat_items(m)
    total, free = m.total_managed_pages(), items["nr_free_pages"]
    figures = meminfo_figures(items)
    pools = [m.hugepages(nid) for nid in m.online_nodes()]
    hp_total, hp_free, hp_surp = (sum(col) for col in zip(*pools))
    buffers = 0
    cached = max(0, items["nr_file_pages"] - items["nr_swapcached"] - buffers)
    commit_limit = (total - (hp_total << HPAGE_ORDER)) * OVERCOMMIT_RATIO // 100
    dm4k, dm2m, dm1g = direct_map_kb(m.max_pfn * PAGE_SIZE)
    lines = [
        meminfo_kb("MemTotal", total),
        meminfo_kb("MemFree", free),
        meminfo_kb("MemAvailable", si_mem_available(m, items)),
        meminfo_kb("Buffers", buffers),
        meminfo_kb("Cached", cached),
        *(meminfo_line(key, figures[key]) for key in LRU_KEYS),
        meminfo_kb("SwapTotal", 0),
        meminfo_kb("SwapFree", 0),
        meminfo_kb("Zswap", 0),
        meminfo_kb("Zswapped", 0),
        *(meminfo_line(key, figures[key]) for key in WRITEBACK_KEYS),
        meminfo_kb("CommitLimit", commit_limit),
        meminfo_kb("Committed_AS", items["nr_anon_pages"] + items["nr_shmem"]),
        meminfo_line("VmallocTotal", VMALLOC_TOTAL_KB),
        meminfo_kb("VmallocUsed", 0),
        meminfo_kb("VmallocChunk", 0),
        meminfo_kb("Percpu", 0),
        f"HardwareCorrupted: {0:5d} kB",
        *(meminfo_line(key, figures[key]) for key in THP_KEYS),
        meminfo_kb("CmaTotal", 0),
        meminfo_kb("CmaFree", items["nr_free_cma"]),
        meminfo_line("Balloon", figures["Balloon"]),
        f"HugePages_Total:   {hp_total:5d}",
        f"HugePages_Free:    {hp_free:5d}",
        f"HugePages_Rsvd:    {0:5d}",
        f"HugePages_Surp:    {hp_surp:5d}",
        f"Hugepagesize:   {HPAGE_SIZE_KB:8d} kB",
        meminfo_kb("Hugetlb", hp_total << HPAGE_ORDER),
        meminfo_line("DirectMap4k", dm4k),
        meminfo_line("DirectMap2M", dm2m),
        meminfo_line("DirectMap1G", dm1g),
    ]
    return "\n".join(lines) + "\n"


def buddyinfo_show(m: Machine) -> str:
    """/proc/buddyinfo: free blocks per order, populated zones only (frag_show_print())."""
    out = []
    for nid in m.online_nodes():
        for zone in m.pgdat[nid].populated_zones():
            counts = "".join(f"{n:6d} " for n in zone.nr_free)
            out.append(f"Node {nid}, zone {zone.name:>8s} {counts}\n")
    return "".join(out)


def zoneinfo_numbers(out: list[str], items: dict[str, int]) -> None:
    out.extend(f"      {name:<12s} {value}" for name, value in items.items())


def zoneinfo_head(out: list[str], free: int, wmark: Watermarks, sizes: tuple[int, int, int],
                  protection: list[int]) -> None:
    """The lines every zone has, populated or not: free pages, watermarks, sizes, and its
    lowmem_reserve[] as protection."""
    spanned, present, managed = sizes
    out += [
        f"  pages free     {free}",
        "        boost    0",
        f"        min      {wmark.min}",
        f"        low      {wmark.low}",
        f"        high     {wmark.high}",
        f"        promo    {wmark.promo}",
        f"        spanned  {spanned}",
        f"        present  {present}",
        f"        managed  {managed}",
        "        cma      0",
        f"        protection: ({', '.join(map(str, protection))})",
    ]


def vm_stat_threshold(m: Machine, zone: Zone) -> int:
    """calculate_normal_threshold(): how far a CPU's counter may drift before it is folded."""
    mem = zone.managed_pages >> (27 - PAGE_SHIFT)          # in 128 MiB units
    return min(125, 2 * m.nr_cpus.bit_length() * (1 + mem.bit_length()))


def zoneinfo_zone(m: Machine, nid: int, ztype: ZoneType) -> str:
    """One zone as zoneinfo_show_print(): the node's counters under its first populated zone
    ("per-node stats"); sizes, watermarks and protection for every zone; for a populated one
    its counters, NUMA events, per-CPU lists, node_unreclaimable and start_pfn."""
    pgdat = m.pgdat[nid]
    zone = pgdat.zones[ztype]
    out = [f"Node {nid}, zone {zone.name:>8s}"]
    populated = pgdat.populated_zones()
    if populated and populated[0] is zone:
        out.append("  per-node stats")
        zoneinfo_numbers(out, node_stat_items(m, pgdat))
    zoneinfo_head(out, zone.free_pages, m.watermarks(zone),
                  (zone.spanned_pages, zone.present_pages, zone.managed_pages),
                  lowmem_reserve(pgdat, ztype))
    if zone.populated:
        zoneinfo_numbers(out, zone_stat_items(m, zone))
        zoneinfo_numbers(out, zone_numa_items(zone))
        out.append("  pagesets")
        threshold = vm_stat_threshold(m, zone)
        for cpu in range(m.nr_cpus):
            out += [
                f"    cpu: {cpu}",
                f"              count:    {len(zone.pcp.get(cpu, ()))}",
                f"              high:     {PCP_HIGH}",
                f"              batch:    {PCP_BATCH}",
                f"              high_min: {PCP_HIGH}",
                f"              high_max: {PCP_HIGH}",
                f"  vm stats threshold: {threshold}",
            ]
        # The model never reclaims, so kswapd never fails on a node.
        out.append("  node_unreclaimable:  0")
        out.append(f"  start_pfn:           {zone.zone_start_pfn}")
    return "\n".join(out) + "\n"


def zoneinfo_empty_zone(nid: int, name: str) -> str:
    """ZONE_DEVICE, which the model never populates: no pages, no watermarks."""
    out = [f"Node {nid}, zone {name:>8s}"]
    zoneinfo_head(out, 0, Watermarks(0, 0, 0, 0), (0, 0, 0), [0] * MAX_NR_ZONES)
    return "\n".join(out) + "\n"


def zoneinfo_show(m: Machine) -> str:
    """/proc/zoneinfo: every zone of every online node, populated or not, Device included."""
    return "".join(
        "".join(zoneinfo_zone(m, nid, ztype) for ztype in ZoneType)
        + "".join(zoneinfo_empty_zone(nid, name) for name in EXTRA_ZONE_NAMES)
        for nid in m.online_nodes())


def vmstat_show(m: Machine) -> str:
    """/proc/vmstat: the node files' counters summed over nodes (so they add up), the global
    ones (dirty thresholds, the memmap), then every vm event."""
    return "".join(f"{name} {value}\n" for name, value in global_vmstat_items(m).items())


def drop_caches_store(m: Machine, buf: bytes) -> None:
    """/proc/sys/vm/drop_caches, a sysctl taking 1 to 4 (drop_caches_sysctl_handler): 1 frees
    the page cache, 2 the reclaimable slab, 3 both, 4 only silences Linux's message (see
    Machine.drop_caches()). Pages that a layout marked are transplanted as they are freed."""
    m.drop_caches(proc_dointvec_minmax(buf, 1, 4))


PROC_ATTRS = {
    "meminfo": RO(meminfo_show),
    "buddyinfo": RO(buddyinfo_show),
    "zoneinfo": RO(zoneinfo_show),
    "vmstat": RO(vmstat_show),
}

SYSCTL_VM_ATTRS = {
    "drop_caches": WO(drop_caches_store),
}


def proc_dir(m: Machine) -> Dir:
    """proc/."""
    children = FileSet(PROCFS, m.lock).attrs(PROC_ATTRS, m)
    children["sys"] = StaticDir({"vm": StaticDir(
        FileSet(SYSCTL, m.lock).attrs(SYSCTL_VM_ATTRS, m))})
    return StaticDir(children)
