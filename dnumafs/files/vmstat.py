"""The vmstat counters, named and ordered as Linux 6.x prints them (mm/vmstat.c's vmstat_text),
with their values from the model, shared by nodeN/vmstat, /proc/vmstat, /proc/zoneinfo and the
meminfo files.

Every counter Linux has is listed; one the model has nothing of (swap, writeback, reclaim,
workingset, THP, CMA, page faults: the model runs no processes and does no I/O) reads 0, as on
a machine that has none of it. The kernel configuration shown is a distribution's x86-64 one:
NUMA, transparent hugepages, hugetlbfs, CMA, memory failure, compaction, migration, balloon.
"""
from __future__ import annotations

from dnumafs.mm import HPAGE_ORDER, Machine, Pgdat, Zone, ZoneType
from dnumafs.mm.constants import MAX_ORDER, MEMMAP_BYTES_PER_PAGE, PAGE_SIZE
from dnumafs.mm.kinds import NODE_ITEMS, ZONE_ITEMS, page_state
from dnumafs.mm.zone import MAX_NR_ZONES, lowmem_reserve

PAGEBLOCK_ORDER = HPAGE_ORDER           # x86-64: a pageblock is a 2 MiB hugepage
PAGE_KB = PAGE_SIZE // 1024
VM_DIRTY_RATIO, VM_DIRTY_BACKGROUND_RATIO = 20, 10      # vm.dirty_ratio, dirty_background_ratio

# Zone names past the model's zone types, which Linux lists though they are empty here.
EXTRA_ZONE_NAMES = ("Device",)
assert len(ZoneType) + len(EXTRA_ZONE_NAMES) == MAX_NR_ZONES

ZONE_STAT_NAMES = (
    "nr_free_pages", "nr_free_pages_blocks", "nr_zone_inactive_anon", "nr_zone_active_anon",
    "nr_zone_inactive_file", "nr_zone_active_file", "nr_zone_unevictable",
    "nr_zone_write_pending", "nr_mlock", "nr_zspages", "nr_free_cma",
)
# The model's NumaStat fields under their vmstat names (numa_stat_name()).
NUMA_EVENT_NAMES = {
    "numa_hit": "numa_hit",
    "numa_miss": "numa_miss",
    "numa_foreign": "numa_foreign",
    "interleave_hit": "numa_interleave",
    "local_node": "numa_local",
    "other_node": "numa_other",
}
NODE_STAT_NAMES = (
    "nr_inactive_anon", "nr_active_anon", "nr_inactive_file", "nr_active_file",
    "nr_unevictable", "nr_slab_reclaimable", "nr_slab_unreclaimable", "nr_isolated_anon",
    "nr_isolated_file", "workingset_nodes", "workingset_refault_anon", "workingset_refault_file",
    "workingset_activate_anon", "workingset_activate_file", "workingset_restore_anon",
    "workingset_restore_file", "workingset_nodereclaim", "nr_anon_pages", "nr_mapped",
    "nr_file_pages", "nr_dirty", "nr_writeback", "nr_shmem", "nr_shmem_hugepages",
    "nr_shmem_pmdmapped", "nr_file_hugepages", "nr_file_pmdmapped",
    "nr_anon_transparent_hugepages", "nr_vmscan_write", "nr_vmscan_immediate_reclaim",
    "nr_dirtied", "nr_written", "nr_throttled_written", "nr_kernel_misc_reclaimable",
    "nr_foll_pin_acquired", "nr_foll_pin_released", "nr_kernel_stack", "nr_page_table_pages",
    "nr_sec_page_table_pages", "nr_iommu_pages", "nr_swapcached", "pgpromote_success",
    "pgpromote_candidate", "pgpromote_candidate_nrl", "pgdemote_kswapd", "pgdemote_direct",
    "pgdemote_khugepaged", "pgdemote_proactive", "nr_hugetlb", "nr_balloon_pages",
    "nr_kernel_file_pages",
)
GLOBAL_STAT_NAMES = ("nr_dirty_threshold", "nr_dirty_background_threshold", "nr_memmap_pages",
                     "nr_memmap_boot_pages")
ALL_ZONE_NAMES = ("dma", "dma32", "normal", "movable", "device")
VM_EVENT_NAMES = (
    "pgpgin", "pgpgout", "pswpin", "pswpout",
    *(f"pgalloc_{z}" for z in ALL_ZONE_NAMES),
    *(f"allocstall_{z}" for z in ALL_ZONE_NAMES),
    *(f"pgskip_{z}" for z in ALL_ZONE_NAMES),
    "pgfree", "pgactivate", "pgdeactivate", "pglazyfree", "pgfault", "pgmajfault",
    "pglazyfreed", "pgrefill", "pgreuse", "pgsteal_kswapd", "pgsteal_direct",
    "pgsteal_khugepaged", "pgsteal_proactive", "pgscan_kswapd", "pgscan_direct",
    "pgscan_khugepaged", "pgscan_proactive", "pgscan_direct_throttle", "pgscan_anon",
    "pgscan_file", "pgsteal_anon", "pgsteal_file", "zone_reclaim_success",
    "zone_reclaim_failed", "pginodesteal", "slabs_scanned", "kswapd_inodesteal",
    "kswapd_low_wmark_hit_quickly", "kswapd_high_wmark_hit_quickly", "pageoutrun",
    "pgrotated", "drop_pagecache", "drop_slab", "oom_kill", "numa_pte_updates",
    "numa_huge_pte_updates", "numa_hint_faults", "numa_hint_faults_local",
    "numa_pages_migrated", "pgmigrate_success", "pgmigrate_fail", "thp_migration_success",
    "thp_migration_fail", "thp_migration_split", "compact_migrate_scanned",
    "compact_free_scanned", "compact_isolated", "compact_stall", "compact_fail",
    "compact_success", "compact_daemon_wake", "compact_daemon_migrate_scanned",
    "compact_daemon_free_scanned", "htlb_buddy_alloc_success", "htlb_buddy_alloc_fail",
    "cma_alloc_success", "cma_alloc_fail", "unevictable_pgs_culled",
    "unevictable_pgs_scanned", "unevictable_pgs_rescued", "unevictable_pgs_mlocked",
    "unevictable_pgs_munlocked", "unevictable_pgs_cleared", "unevictable_pgs_stranded",
    "thp_fault_alloc", "thp_fault_fallback", "thp_fault_fallback_charge",
    "thp_collapse_alloc", "thp_collapse_alloc_failed", "thp_file_alloc",
    "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped", "thp_split_page",
    "thp_split_page_failed", "thp_deferred_split_page", "thp_underused_split_page",
    "thp_split_pmd", "thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte",
    "thp_scan_exceed_share_pte", "thp_split_pud", "thp_zero_page_alloc",
    "thp_zero_page_alloc_failed", "thp_swpout", "thp_swpout_fallback", "balloon_inflate",
    "balloon_deflate", "balloon_migrate", "swap_ra", "swap_ra_hit", "swpin_zero",
    "swpout_zero", "ksm_swpin_copy", "cow_ksm", "zswpin", "zswpout", "zswpwb",
    "direct_map_level2_splits", "direct_map_level3_splits", "direct_map_level2_collapses",
    "direct_map_level3_collapses", "nr_unstable",
)
# The vm events the model counts (VmEvents fields are their vmstat names).
COUNTED_EVENTS = ("pgfree", "drop_pagecache", "drop_slab", "htlb_buddy_alloc_success",
                  "htlb_buddy_alloc_fail")


def zone_free_pages_blocks(zone: Zone) -> int:
    """NR_FREE_PAGES_BLOCKS: free pages in whole free pageblocks."""
    return sum(len(zone.free_area[o]) << o for o in range(PAGEBLOCK_ORDER, MAX_ORDER))


def zone_stat_items(m: Machine, zone: Zone) -> dict[str, int]:
    """A zone's zone_stat_item counters, in Linux's order."""
    items = dict.fromkeys(ZONE_STAT_NAMES, 0)
    items["nr_free_pages"] = zone.free_pages
    items["nr_free_pages_blocks"] = zone_free_pages_blocks(zone)
    items.update(page_state(ZONE_ITEMS, m.kind_pages(zone.nid, zone.type)))
    return items


def zone_numa_items(zone: Zone) -> dict[str, int]:
    """A zone's NUMA events (allocations, not pages), under their vmstat names."""
    return {NUMA_EVENT_NAMES[name]: value for name, value in zone.numastat.items()}


def node_stat_items(m: Machine, pgdat: Pgdat) -> dict[str, int]:
    """A node's node_stat_item counters, in Linux's order, in pages (kernel stacks in kB)."""
    items = dict.fromkeys(NODE_STAT_NAMES, 0)
    items.update(page_state(NODE_ITEMS, m.kind_pages(pgdat.nid)))
    items["nr_kernel_stack"] *= PAGE_KB         # Linux counts kernel stacks in kB
    items["nr_hugetlb"] = pgdat.nr_hugepages << HPAGE_ORDER
    return items


def node_vmstat_items(m: Machine, pgdat: Pgdat) -> dict[str, int]:
    """nodeN/vmstat: the zone counters over the node's zones (the same figures as
    zone_stat_items(), summed), its NUMA events, its node counters (node_read_vmstat())."""
    items = dict.fromkeys(ZONE_STAT_NAMES, 0)
    items["nr_free_pages"] = pgdat.free_pages
    items["nr_free_pages_blocks"] = sum(zone_free_pages_blocks(z) for z in pgdat.zones.values())
    items.update(page_state(ZONE_ITEMS, m.kind_pages(pgdat.nid)))
    items.update((NUMA_EVENT_NAMES[name], value) for name, value in pgdat.numastat.items())
    items.update(node_stat_items(m, pgdat))
    return items


def zone_reserves(m: Machine) -> tuple[int, int]:
    """(totalreserve_pages, the low watermarks of every zone) over the online nodes.

    calculate_totalreserve_pages(): each zone keeps back its largest lowmem_reserve and its
    high watermark, at most its managed pages. si_mem_available() sums the low watermarks of
    every zone, an empty ZONE_MOVABLE's too."""
    reserve = low = 0
    for pgdat in m.pgdat.values():
        for zone in pgdat.zones.values():
            wmark = m.watermarks(zone)
            reserve += min(max(lowmem_reserve(pgdat, zone.type)) + wmark.high,
                           zone.managed_pages)
            low += wmark.low
    return reserve, low


def si_mem_available(m: Machine, totals: dict[str, int]) -> int:
    """si_mem_available(): free pages above the reserves, plus the page cache and the
    reclaimable slab, each less the part that must stay (half of it, or the low watermarks,
    whichever is less). totals are the global vmstat counters."""
    reserve, wmark_low = zone_reserves(m)
    available = totals["nr_free_pages"] - reserve
    pagecache = totals["nr_active_file"] + totals["nr_inactive_file"]
    available += pagecache - min(pagecache // 2, wmark_low)
    reclaimable = totals["nr_slab_reclaimable"] + totals["nr_kernel_misc_reclaimable"]
    available += reclaimable - min(reclaimable // 2, wmark_low)
    return max(0, available)


def dirty_thresholds(m: Machine, totals: dict[str, int]) -> tuple[int, int]:
    """global_dirty_limits(): vm.dirty_ratio and dirty_background_ratio of the dirtyable
    memory (free pages above the reserves, and the file LRU), with the kernel's rounding."""
    free = totals["nr_free_pages"]
    dirtyable = free - min(free, zone_reserves(m)[0])
    dirtyable += totals["nr_active_file"] + totals["nr_inactive_file"]
    thresh = VM_DIRTY_RATIO * PAGE_SIZE // 100 * dirtyable // PAGE_SIZE
    bg = VM_DIRTY_BACKGROUND_RATIO * PAGE_SIZE // 100 * dirtyable // PAGE_SIZE
    return thresh, bg if bg < thresh else thresh // 2


def memmap_boot_pages(m: Machine) -> int:
    """The struct pages boot reserved for each node's memmap (a page per 64 pages)."""
    return sum(-(-size * MEMMAP_BYTES_PER_PAGE // PAGE_SIZE) for size in m.config.node_pages())


def global_vmstat_items(m: Machine) -> dict[str, int]:
    """/proc/vmstat: the node files' counters summed over nodes, the global ones, then the
    events."""
    # every node's items have the same names, in the same order
    nodes = [node_vmstat_items(m, m.pgdat[nid]) for nid in m.online_nodes()]
    items = dict(zip(nodes[0], map(sum, zip(*(node.values() for node in nodes)))))
    thresh, bg = dirty_thresholds(m, items)
    items.update(nr_dirty_threshold=thresh, nr_dirty_background_threshold=bg,
                 nr_memmap_pages=0, nr_memmap_boot_pages=memmap_boot_pages(m))
    events = dict.fromkeys(VM_EVENT_NAMES, 0)
    events.update((f"pgalloc_{ztype.label.lower()}", m.pgalloc(ztype)) for ztype in ZoneType)
    events.update((name, m.vm_events[name]) for name in COUNTED_EVENTS)
    items.update(events)
    return items


# The meminfo keys nodeN/meminfo and /proc/meminfo share, each the sum of vmstat counters.
# NFS_Unstable (no longer counted since Linux 5.9), Bounce (x86-64 bounces nothing) and
# WritebackTmp (the model has no FUSE writeback) have none, and read 0.
MEMINFO_ITEMS: dict[str, tuple[str, ...]] = {
    "SwapCached": ("nr_swapcached",),
    "Active": ("nr_active_anon", "nr_active_file"),
    "Inactive": ("nr_inactive_anon", "nr_inactive_file"),
    "Active(anon)": ("nr_active_anon",),
    "Inactive(anon)": ("nr_inactive_anon",),
    "Active(file)": ("nr_active_file",),
    "Inactive(file)": ("nr_inactive_file",),
    "Unevictable": ("nr_unevictable",),
    "Mlocked": ("nr_mlock",),
    "Dirty": ("nr_dirty",),
    "Writeback": ("nr_writeback",),
    "FilePages": ("nr_file_pages",),
    "Mapped": ("nr_mapped",),
    "AnonPages": ("nr_anon_pages",),
    "Shmem": ("nr_shmem",),
    "KernelStack": ("nr_kernel_stack",),
    "PageTables": ("nr_page_table_pages",),
    "SecPageTables": ("nr_sec_page_table_pages",),
    "NFS_Unstable": (),
    "Bounce": (),
    "WritebackTmp": (),
    "KReclaimable": ("nr_slab_reclaimable", "nr_kernel_misc_reclaimable"),
    "Slab": ("nr_slab_reclaimable", "nr_slab_unreclaimable"),
    "SReclaimable": ("nr_slab_reclaimable",),
    "SUnreclaim": ("nr_slab_unreclaimable",),
    "AnonHugePages": ("nr_anon_transparent_hugepages",),
    "ShmemHugePages": ("nr_shmem_hugepages",),
    "ShmemPmdMapped": ("nr_shmem_pmdmapped",),
    "FileHugePages": ("nr_file_hugepages",),
    "FilePmdMapped": ("nr_file_pmdmapped",),
    "Balloon": ("nr_balloon_pages",),
}
# kB per unit of a counter: pages, but kernel stacks are counted in kB and the THP counters
# in hugepages.
KB_PER_UNIT = {"KernelStack": 1, **dict.fromkeys(
    ("AnonHugePages", "ShmemHugePages", "ShmemPmdMapped", "FileHugePages", "FilePmdMapped"),
    PAGE_KB << HPAGE_ORDER)}


def meminfo_figures(items: dict[str, int]) -> dict[str, int]:
    """The meminfo keys, in kB, that nodeN/meminfo and /proc/meminfo both derive from the
    vmstat counters (of a node or of the machine); each file takes them in its own order."""
    return {key: sum(items[name] for name in names) * KB_PER_UNIT.get(key, PAGE_KB)
            for key, names in MEMINFO_ITEMS.items()}
