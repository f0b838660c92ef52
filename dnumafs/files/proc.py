"""MNT/proc: meminfo, buddyinfo, zoneinfo, vmstat, over the whole machine.

Figures are the model's own counts, taken when the file is read (under the machine lock, which
the tree takes), in Linux's formats (fs/proc/meminfo.c, mm/vmstat.c) with only the lines the
model has figures for.
"""
from __future__ import annotations

from dnumafs.lib.sysctl import proc_dointvec_minmax
from dnumafs.mm import HPAGE_ORDER, Machine, ZoneType
from dnumafs.mm.constants import HPAGE_SIZE_KB, PCP_BATCH, PCP_HIGH
from dnumafs.vfs.tree import PROCFS, RO, SYSCTL, WO, Dir, FileSet, StaticDir

from .format import meminfo_kb
from .node import node_vmstat_items

# /proc/vmstat's event counters (vm_event_item.h) in Linux's order; the model counts these.
VM_EVENT_ORDER = ("pgfree", "drop_pagecache", "drop_slab", "htlb_buddy_alloc_success",
                  "htlb_buddy_alloc_fail")


def totalreserve_pages(m: Machine) -> int:
    """calculate_totalreserve_pages(): what each zone keeps back, its high watermark (capped
    at its managed pages; the model has no lowmem_reserve to add)."""
    return sum(min(m.watermarks(z).high, z.managed_pages)
               for pgdat in m.pgdat.values() for z in pgdat.zones.values())


def meminfo_show(m: Machine) -> str:
    """/proc/meminfo: MemTotal is managed pages, MemFree the buddy free lists (NR_FREE_PAGES).

    MemAvailable is si_mem_available() with no page cache or reclaimable slab to add: free
    pages above the zones' reserves, never below 0. Hugepages come out of MemFree; no process
    maps them, so none are reserved and all are free.
    """
    total, free = m.total_managed_pages(), m.total_free_pages()
    available = max(0, free - totalreserve_pages(m))
    pools = [m.hugepages(nid) for nid in m.online_nodes()]
    hp_total, hp_free, hp_surp = (sum(col) for col in zip(*pools))
    lines = [
        meminfo_kb("MemTotal", total),
        meminfo_kb("MemFree", free),
        meminfo_kb("MemAvailable", available),
        f"HugePages_Total:   {hp_total:5d}",
        f"HugePages_Free:    {hp_free:5d}",
        f"HugePages_Rsvd:    {0:5d}",
        f"HugePages_Surp:    {hp_surp:5d}",
        f"Hugepagesize:   {HPAGE_SIZE_KB:8d} kB",
        meminfo_kb("Hugetlb", hp_total << HPAGE_ORDER),
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


def zoneinfo_zone(m: Machine, nid: int, ztype: ZoneType) -> str:
    """One zone as zoneinfo_show_print(): sizes and watermarks for every zone, then for a
    populated one its free pages, per-CPU lists and start_pfn. The node's own counters go
    under the node's first populated zone ("per-node stats"), as Linux does."""
    pgdat = m.pgdat[nid]
    zone = pgdat.zones[ztype]
    wmark = m.watermarks(zone)
    out = [f"Node {nid}, zone {zone.name:>8s}"]
    populated = pgdat.populated_zones()
    if populated and populated[0] is zone:
        out.append("  per-node stats")
        out.append(f"      {'nr_hugetlb':<12s} {pgdat.nr_hugepages << HPAGE_ORDER}")
    out += [
        f"  pages free     {zone.free_pages}",
        f"        min      {wmark.min}",
        f"        low      {wmark.low}",
        f"        high     {wmark.high}",
        f"        spanned  {zone.spanned_pages}",
        f"        present  {zone.present_pages}",
        f"        managed  {zone.managed_pages}",
    ]
    if zone.populated:
        out.append(f"      {'nr_free_pages':<12s} {zone.free_pages}")
        out.append("  pagesets")
        for cpu in range(m.nr_cpus):
            out += [
                f"    cpu: {cpu}",
                f"              count:    {len(zone.pcp.get(cpu, ()))}",
                f"              high:     {PCP_HIGH}",
                f"              batch:    {PCP_BATCH}",
            ]
        out.append(f"  start_pfn:           {zone.zone_start_pfn}")
    return "\n".join(out) + "\n"


def zoneinfo_show(m: Machine) -> str:
    """/proc/zoneinfo: every zone of every online node, populated or not."""
    return "".join(zoneinfo_zone(m, nid, ztype)
                   for nid in m.online_nodes() for ztype in ZoneType)


def vmstat_show(m: Machine) -> str:
    """/proc/vmstat: the node counters summed over nodes (the same items as nodeN/vmstat, so
    they add up), then the allocator's events."""
    items: dict[str, int] = {}
    for pgdat in m.pgdat.values():
        for name, value in node_vmstat_items(pgdat).items():
            items[name] = items.get(name, 0) + value
    items.update((f"pgalloc_{ztype.label.lower()}", m.pgalloc(ztype)) for ztype in ZoneType)
    items.update((name, m.vm_events.get(name, 0)) for name in VM_EVENT_ORDER)
    return "".join(f"{name} {value}\n" for name, value in items.items())


def drop_caches_store(m: Machine, buf: bytes) -> None:
    """/proc/sys/vm/drop_caches, a sysctl taking 1 to 4 (drop_caches_sysctl_handler): 1 frees
    the page cache, 2 slab, 3 both, 4 only silences Linux's message. The pages boot allocated
    stand for the page cache and slab a running machine holds; dropping them frees them, so
    pages that a layout marked are transplanted as they are freed."""
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
