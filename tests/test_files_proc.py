"""proc/ files and sys/devices/system/cpu, and every file agreeing with every other after
commits, transplants and hugepage changes (through the tree, no mount)."""
from __future__ import annotations

import errno
import re

import pytest
from files_helpers import (
    CPU,
    KEPT_BY_DROP_CACHES,
    ML,
    NODE,
    MiB,
    Tree,
    boot,
    buddyinfo,
    check_agreement,
    key_values,
    meminfo_keys,
    node_list,
    node_meminfo,
    proc_meminfo,
    vmstat_keys,
    zoneinfo,
    zoneinfo_sections,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnumafs.mm.constants import HPAGE_ORDER, MAX_ORDER, ZoneType
from dnumafs.mm.kinds import Kind
from dnumafs.mm.zone import lowmem_reserve


@pytest.fixture
def t():
    return Tree(boot())


def test_proc_meminfo_format(t):
    text = t.read("/proc/meminfo")
    lines = text.splitlines()
    keys = [line.split(":")[0] for line in lines]
    assert keys[:5] == ["MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached"]
    assert keys[-9:] == ["HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
                         "HugePages_Surp", "Hugepagesize", "Hugetlb", "DirectMap4k",
                         "DirectMap2M", "DirectMap1G"]
    for line in lines:
        if line.startswith("HugePages_"):
            assert re.fullmatch(r"HugePages_\w+: +\d+", line) and len(line) == 19 + 5, line
        elif line.startswith("HardwareCorrupted"):
            assert line == "HardwareCorrupted:     0 kB"
        else:
            assert re.fullmatch(r"[\w()]+: +\d+ kB", line), line
            assert len(line) == 16 + 8 + 3 or line.startswith("VmallocTotal"), line
    info = proc_meminfo(text)
    assert info["Hugepagesize"] == 2048
    assert info["MemTotal"] == t.m.total_managed_pages() * 4
    assert info["MemFree"] == t.m.total_free_pages() * 4
    # the model has no swap, zswap, CMA, vmalloc, poisoned pages or block devices
    for key in ("SwapTotal", "SwapFree", "Zswap", "Zswapped", "CmaTotal", "CmaFree",
                "HardwareCorrupted", "Buffers", "VmallocUsed", "Percpu", "Bounce"):
        assert info[key] == 0, key
    assert info["DirectMap4k"] + info["DirectMap2M"] + info["DirectMap1G"] == 64 * 1024
    assert info["CommitLimit"] == info["MemTotal"] // 2


def test_proc_keys_are_this_machines(t):
    """/proc/meminfo, /proc/vmstat and /proc/zoneinfo carry every key this machine's kernel
    prints, in its order and shape (files_helpers.CONFIG_KEYS lists the only keys that may
    differ, and why): per zone, the same lines for the first populated zone (with the
    per-node stats), any other populated one (counters, NUMA events, per-CPU lists), and the
    empty Movable and Device zones."""
    with open("/proc/meminfo") as f:
        assert meminfo_keys(t.read("/proc/meminfo")) == meminfo_keys(f.read())
    with open("/proc/vmstat") as f:
        assert vmstat_keys(t.read("/proc/vmstat")) == vmstat_keys(f.read())
    with open("/proc/zoneinfo") as f:
        host = zoneinfo_sections(f.read())
    mine = zoneinfo_sections(t.read("/proc/zoneinfo"))
    host_names = [name for name, _ in host]
    assert [name for name, _ in mine] == host_names[:len(ZONE_INDEX)] * 2

    def shape(sections, per_node: bool, populated: bool, name: str | None = None):
        return next(lines for n, lines in sections
                    if (name is None or n == name)
                    and ("  per-node stats" in lines) == per_node
                    and ("  start_pfn:" in lines) == populated)

    assert shape(mine, True, True) == shape(host, True, True)
    host_other = [lines for _, lines in host if "  start_pfn:" in lines
                  and "  per-node stats" not in lines]
    if host_other:
        assert shape(mine, False, True) == host_other[0]
    for name in ("Movable", "Device"):
        assert shape(mine, False, False, name) == shape(host, False, False, name)


def kind_kb(m, nid, kind):
    return m.kind_pages(nid)[kind] * 4


def test_meminfo_figures_are_the_kinds_counts(t):
    """Every LRU, slab, page-table and kernel-stack figure is the model's count of the pages
    allocated of that kind, on each node and in all; boot gives every node some of each."""
    total = proc_meminfo(t.read("/proc/meminfo"))
    assert total["Cached"] > 0 and total["SReclaimable"] > 0 and total["AnonPages"] > 0
    for nid in (0, 1):
        info = node_meminfo(t.read(f"{NODE}/node{nid}/meminfo"))
        m = t.m
        assert info["Active(file)"] == kind_kb(m, nid, Kind.ACTIVE_FILE)
        assert info["Inactive(file)"] == kind_kb(m, nid, Kind.INACTIVE_FILE)
        assert info["Active(anon)"] == kind_kb(m, nid, Kind.ACTIVE_ANON)
        assert info["Inactive(anon)"] == (kind_kb(m, nid, Kind.INACTIVE_ANON)
                                          + kind_kb(m, nid, Kind.SHMEM))
        assert info["AnonPages"] == (kind_kb(m, nid, Kind.ACTIVE_ANON)
                                     + kind_kb(m, nid, Kind.INACTIVE_ANON))
        assert info["Shmem"] == kind_kb(m, nid, Kind.SHMEM)
        assert info["FilePages"] == (info["Active(file)"] + info["Inactive(file)"]
                                     + info["Shmem"])
        assert info["SReclaimable"] == kind_kb(m, nid, Kind.SLAB_RECLAIMABLE)
        assert info["SUnreclaim"] == kind_kb(m, nid, Kind.SLAB_UNRECLAIMABLE)
        assert info["Slab"] == info["SReclaimable"] + info["SUnreclaim"]
        assert info["KReclaimable"] == info["SReclaimable"]
        assert info["PageTables"] == kind_kb(m, nid, Kind.PAGETABLE)
        assert info["KernelStack"] == kind_kb(m, nid, Kind.KERNEL_STACK)
        assert info["Active"] == info["Active(anon)"] + info["Active(file)"]
        assert info["Inactive"] == info["Inactive(anon)"] + info["Inactive(file)"]
        vm = key_values(t.read(f"{NODE}/node{nid}/vmstat"))
        assert vm["nr_kernel_stack"] == info["KernelStack"]        # kB in both
        assert vm["nr_file_pages"] * 4 == info["FilePages"]
        assert info["FilePages"] > 0
    check_agreement(t)
    assert t.m.check() == []


def mem_available_from_files(t) -> int:
    """si_mem_available() from zoneinfo and vmstat alone, in kB."""
    zones = zoneinfo(t.read("/proc/zoneinfo"))
    vm = key_values(t.read("/proc/vmstat"))
    reserve = sum(min(max(v for k, v in z.items() if k.startswith("protection:")
                          and int(k.split(":")[1]) >= ZONE_INDEX[name]) + z["high"],
                      z["managed"])
                  for (_, name), z in zones.items())
    wmark_low = sum(z["low"] for z in zones.values())
    available = vm["nr_free_pages"] - reserve
    cache = vm["nr_active_file"] + vm["nr_inactive_file"]
    slab = vm["nr_slab_reclaimable"] + vm["nr_kernel_misc_reclaimable"]
    available += cache - min(cache // 2, wmark_low) + slab - min(slab // 2, wmark_low)
    return max(0, available) * 4


ZONE_INDEX = {"DMA": 0, "DMA32": 1, "Normal": 2, "Movable": 3, "Device": 4}


def test_mem_available(t):
    """si_mem_available(): free pages above the zones' reserves (lowmem_reserve and high
    watermark), plus the page cache and reclaimable slab less what must stay."""
    info = proc_meminfo(t.read("/proc/meminfo"))
    assert info["MemAvailable"] == mem_available_from_files(t)
    assert 0 < info["MemAvailable"] < info["MemFree"] + info["Cached"] + info["SReclaimable"]
    zones = zoneinfo(t.read("/proc/zoneinfo"))
    assert zones[(0, "DMA")]["protection:1"] > 0, "DMA keeps a reserve from DMA32 users"
    # a machine whose memory is all in hugepages has little available, never less than 0
    t.write("/proc/sys/vm/drop_caches", "3")
    for nid in (0, 1):
        t.write(f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages", "100000")
    info = proc_meminfo(t.read("/proc/meminfo"))
    assert info["MemAvailable"] == mem_available_from_files(t) < info["MemFree"]
    assert info["Hugetlb"] == info["HugePages_Total"] * 2048 > 0
    assert info["HugePages_Free"] == info["HugePages_Total"]
    assert info["HugePages_Rsvd"] == info["HugePages_Surp"] == 0


def test_buddyinfo(t):
    text = t.read("/proc/buddyinfo")
    info = buddyinfo(text)
    # populated zones only: 64 MiB is DMA (16 MiB, node 0) and DMA32
    assert list(info) == [(0, "DMA"), (0, "DMA32"), (1, "DMA32")]
    assert text.splitlines()[0].startswith("Node 0, zone      DMA ")
    for (nid, name), counts in info.items():
        zone = next(z for z in t.m.pgdat[nid].zones.values() if z.name == name)
        assert counts == zone.nr_free
        assert len(counts) == MAX_ORDER


def test_zoneinfo(t):
    zones = zoneinfo(t.read("/proc/zoneinfo"))
    # every zone of every online node, populated or not, Movable and Device included
    assert list(zones) == [(n, z) for n in (0, 1) for z in ZONE_INDEX]
    for (nid, name), z in zones.items():
        assert [z[f"protection:{j}"] for j in range(5)] == (
            lowmem_reserve(t.m.pgdat[nid], ZONE_INDEX[name]))
        if ZONE_INDEX[name] >= len(ZoneType):
            mark = 32 if name == "Movable" else 0
            assert (z["free"], z["min"], z["low"], z["high"], z["promo"], z["managed"]) == (
                0, mark, mark, mark, mark, 0)
            assert "start_pfn" not in z and "nr_free_pages" not in z
            continue
        zone = next(zz for zz in t.m.pgdat[nid].zones.values() if zz.name == name)
        wm = t.m.watermarks(zone)
        assert (z["free"], z["min"], z["low"], z["high"], z["promo"]) == (
            zone.free_pages, wm.min, wm.low, wm.high, wm.promo)
        assert wm.high - wm.low == wm.promo - wm.high == wm.low - wm.min
        assert (z["spanned"], z["present"], z["managed"]) == (
            zone.spanned_pages, zone.present_pages, zone.managed_pages)
        if zone.populated:
            assert z["start_pfn"] == zone.zone_start_pfn
            assert z["nr_free_pages"] == zone.free_pages
            assert z["nr_zone_active_file"] == t.m.kind_pages(nid, zone.type)[Kind.ACTIVE_FILE]
            assert z["numa_hit"] == zone.numastat["numa_hit"]
        else:
            assert "start_pfn" not in z and z["present"] == 0
    assert zones[(1, "DMA32")]["start_pfn"] == 0x2000
    # DMA keeps 1/256 of DMA32's managed pages from allocations that could use DMA32
    dma32 = t.m.pgdat[0].zones[ZoneType.DMA32].managed_pages
    assert zones[(0, "DMA")]["protection:1"] == dma32 // 256
    check_agreement(t)


def test_zoneinfo_text(t):
    text = t.read("/proc/zoneinfo")
    head = text.split("\n  pages free")[0].splitlines()
    assert head[:3] == ["Node 0, zone      DMA", "  per-node stats", "      nr_inactive_anon "
                        f"{t.m.kind_pages(0)[Kind.INACTIVE_ANON] + t.m.kind_pages(0)[Kind.SHMEM]}"]
    assert "      nr_mapped    0" in head and "      nr_hugetlb   0" in head
    zone = t.m.pgdat[0].zones[0]
    w = t.m.watermarks(zone)
    body = text.split("\n  pagesets")[0].split("  pages free")[1].splitlines()
    assert body[:11] == [
        f"     {zone.free_pages}",
        "        boost    0",
        f"        min      {w.min}",
        f"        low      {w.low}",
        f"        high     {w.high}",
        f"        promo    {w.promo}",
        f"        spanned  {zone.spanned_pages}",
        f"        present  {zone.present_pages}",
        f"        managed  {zone.managed_pages}",
        "        cma      0",
        "        protection: (0, {0}, {0}, {0}, {0})".format(
            t.m.pgdat[0].zones[1].managed_pages // 256),
    ]
    assert body[11] == f"      nr_free_pages {zone.free_pages}"
    assert "    cpu: 3\n              count:    " in text
    assert "  vm stats threshold: " in text and "\n  node_unreclaimable:  0\n" in text
    assert "Node 1, zone   Device\n  pages free     0\n" in text
    assert text.endswith("        protection: (0, 0, 0, 0, 0)\n")


def test_proc_vmstat(t):
    stat = key_values(t.read("/proc/vmstat"))
    names = list(stat)
    assert names[:3] == ["nr_free_pages", "nr_free_pages_blocks", "nr_zone_inactive_anon"]
    assert names.index("numa_hit") < names.index("nr_inactive_anon") < names.index(
        "nr_dirty_threshold") < names.index("pgpgin") < names.index("pgfree")
    assert names[-1] == "nr_unstable"
    nodes = [key_values(t.read(f"{NODE}/node{n}/vmstat")) for n in (0, 1)]
    assert list(nodes[0]) == names[:names.index("nr_dirty_threshold")]
    for name in nodes[0]:
        assert stat[name] == nodes[0][name] + nodes[1][name], name
    assert stat["pgalloc_dma32"] == t.m.pgalloc(ZoneType.DMA32) > 0
    assert stat["pgalloc_movable"] == stat["pgalloc_device"] == stat["pswpin"] == 0
    assert 0 < stat["nr_dirty_background_threshold"] < stat["nr_dirty_threshold"]
    assert stat["nr_memmap_boot_pages"] == 64 * MiB // 4096 * 64 // 4096
    freed = t.m.free_boot_allocations(limit=100)
    assert key_values(t.read("/proc/vmstat"))["pgfree"] == stat["pgfree"] + freed
    got = t.m.set_nr_hugepages(0, 1 << 20)      # more than fits: the last try fails
    after = key_values(t.read("/proc/vmstat"))
    assert after["htlb_buddy_alloc_success"] == stat["htlb_buddy_alloc_success"] + got > 0
    assert after["htlb_buddy_alloc_fail"] == stat["htlb_buddy_alloc_fail"] + 1


def test_drop_caches_frees_page_cache_then_reclaimable_slab(t):
    """1 frees the file LRU, 2 the reclaimable slab; anonymous memory, shmem, unreclaimable
    slab, page tables and kernel stacks stay; MemFree grows by what was freed."""
    def meminfo():
        return {n: node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)}

    STAY = (*KEPT_BY_DROP_CACHES, "Active(anon)")
    t.m.drain_pcp()
    before = meminfo()
    free = proc_meminfo(t.read("/proc/meminfo"))["MemFree"]
    # proc_dointvec_minmax: no `+`, nothing but whitespace around, 1..4
    for bad in (b"0", b"5", b"x", b"", b"-1", b"+3", b"3 4", b"3x", b"0x10", b" \n",
                b"1" * 21, b"3\0"):
        assert t.write("/proc/sys/vm/drop_caches", bad) == errno.EINVAL, bad
    assert t.write("/proc/sys/vm/drop_caches", b"4") is None     # only silences the message
    assert meminfo() == before and t.read("/proc/vmstat").count("drop_pagecache 0\n") == 1
    assert t.write("/proc/sys/vm/drop_caches", b" \t0x1 \n") is None   # base 0, spaces around
    after = meminfo()
    for n in (0, 1):
        assert after[n]["Active(file)"] == after[n]["Inactive(file)"] == 0
        assert after[n]["FilePages"] == after[n]["Shmem"]
        assert after[n]["SReclaimable"] == before[n]["SReclaimable"]
        assert all(after[n][k] == before[n][k] for k in STAY)
    t.m.drain_pcp()
    dropped = sum(before[n]["Active(file)"] + before[n]["Inactive(file)"] for n in (0, 1))
    assert proc_meminfo(t.read("/proc/meminfo"))["MemFree"] == free + dropped > free
    assert t.write("/proc/sys/vm/drop_caches", b"02") is None            # octal 2: slab only
    after = meminfo()
    for n in (0, 1):
        assert after[n]["SReclaimable"] == after[n]["KReclaimable"] == 0
        assert all(after[n][k] == before[n][k] for k in STAY)
        assert after[n]["SUnreclaim"] > 0 or after[n]["PageTables"] > 0
    vmstat = key_values(t.read("/proc/vmstat"))
    assert (vmstat["drop_pagecache"], vmstat["drop_slab"]) == (1, 1)
    check_agreement(t)
    assert t.m.check() == []


def test_kinds_stay_on_their_node_until_freed_then_the_pages_move():
    """A commit moves node 0's memory to node 1: its allocated pages cannot change node, so
    their counts stay on node 0; drop_caches frees the page cache, which is transplanted to
    node 1 as free memory, while node 0 keeps counting what stays allocated."""
    t = Tree(boot())
    before = {n: node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)}
    t.add_range(0, 0x1fff, 1)
    assert t.write(f"{ML}/commit", "1") is None
    moved = {n: node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)}
    for key in ("Active(file)", "Inactive(file)", "AnonPages", "Slab", "KernelStack"):
        assert moved[0][key] == before[0][key], key
    assert moved[0]["MemFree"] == 0 < moved[1]["MemFree"]
    cache0 = before[0]["Active(file)"] + before[0]["Inactive(file)"]
    assert cache0 > 0
    assert t.write("/proc/sys/vm/drop_caches", "1") is None
    t.m.drain_pcp()
    after = {n: node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)}
    assert after[0]["Active(file)"] == after[0]["Inactive(file)"] == 0
    assert after[0]["AnonPages"] == before[0]["AnonPages"] > 0
    assert after[0]["MemTotal"] == moved[0]["MemTotal"] - cache0
    assert after[1]["MemFree"] - moved[1]["MemFree"] >= cache0
    assert int(t.read(f"{ML}/stats/transplant-on-free")) >= cache0 // 4
    check_agreement(t)
    assert t.m.check() == []


def test_cpu_lists_and_links(t):
    assert t.read(f"{CPU}/online") == "0-3\n"
    assert t.read(f"{CPU}/possible") == "0-3\n"
    assert t.read(f"{CPU}/present") == "0-3\n"
    assert t.read(f"{CPU}/offline") == "\n"
    assert [n for n in t.ls(CPU) if n.startswith("cpu")] == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert sorted(t.ls(f"{CPU}/cpu2")) == ["cache", "node1", "online", "topology"]
    assert t.read(f"{CPU}/cpu2/online") == "1\n"
    assert "online" not in t.ls(f"{CPU}/cpu0")      # x86-64 cannot take CPU 0 offline
    assert t.readlink(f"{CPU}/cpu2/node1") == "../../node/node1"
    assert t.node(f"{CPU}/cpu4") is None


def test_cpu_topology(t):
    topo = f"{CPU}/cpu3/topology"
    files = {name: t.read(f"{topo}/{name}") for name in t.ls(topo)}
    assert files == {
        "physical_package_id": "1\n", "die_id": "0\n", "cluster_id": "65535\n",
        "core_id": "0\n",
        "package_cpus": "c\n", "package_cpus_list": "2-3\n",
        "die_cpus": "c\n", "die_cpus_list": "2-3\n",
        "core_siblings": "c\n", "core_siblings_list": "2-3\n",
        "core_cpus": "c\n", "core_cpus_list": "2-3\n",
        "cluster_cpus": "c\n", "cluster_cpus_list": "2-3\n",
        "thread_siblings": "c\n", "thread_siblings_list": "2-3\n",
    }
    assert t.read(f"{CPU}/cpu0/topology/core_id") == "0\n"
    assert t.read(f"{CPU}/cpu0/topology/package_cpus") == "3\n"


def test_cpu_topology_many_cpus():
    t = Tree(boot(cpus=64))
    assert t.read(f"{CPU}/cpu40/topology/package_cpus") == "ffffffff,00000000\n"
    assert t.read(f"{CPU}/cpu40/topology/thread_siblings") == "00000300,00000000\n"
    assert t.read(f"{CPU}/cpu40/topology/core_id") == "4\n"
    assert t.read(f"{NODE}/node1/cpumap") == "ffffffff,00000000\n"


def test_all_files_agree_across_commits_and_transplants():
    t = Tree(boot(nodes=2, mem=64 * MiB, possible_nodes=4))
    total = proc_meminfo(t.read("/proc/meminfo"))["MemTotal"]
    check_agreement(t)
    assert t.m.check() == []
    # stripe over nodes 0..2 in 0x400-page stripes (node 2 gets 0x1c00-0x1fff, where node 0
    # made its boot allocations)
    for i, pfn in enumerate(range(0, 0x4000, 0x400)):
        t.add_range(pfn, pfn + 0x3ff, (i + 1) % 3)
    assert t.write(f"{ML}/commit", "1") is None
    check_agreement(t)
    assert t.m.check() == []
    assert node_list(t.read(f"{NODE}/online")) == [0, 1, 2]
    assert 2 in node_list(t.read(f"{NODE}/has_memory"))
    # freeing marked pages transplants them: node 2 grows, the sums stay
    before = node_meminfo(t.read(f"{NODE}/node2/meminfo"))["MemTotal"]
    t.m.free_boot_allocations()
    check_agreement(t)
    assert t.m.check() == []
    assert node_meminfo(t.read(f"{NODE}/node2/meminfo"))["MemTotal"] > before
    assert int(t.read(f"{ML}/stats/transplant-on-free")) > 0
    # everything to node 3
    t.add_range(0, 0x3fff, 3)
    assert t.write(f"{ML}/commit", "1") is None
    check_agreement(t)
    assert t.m.check() == []
    assert proc_meminfo(t.read("/proc/meminfo"))["MemTotal"] == total
    info3 = node_meminfo(t.read(f"{NODE}/node3/meminfo"))
    # every managed page is node 3's now (nothing is allocated any more); the reserved ones
    # stay where they were, present but not managed
    assert info3["MemTotal"] == total
    assert int(t.read(f"{ML}/layout.2/stats/transplant-bail-reserved")) > 0
    assert node_list(t.read(f"{NODE}/has_memory")) == [0, 1, 3]
    for n in (0, 1, 2):
        assert node_meminfo(t.read(f"{NODE}/node{n}/meminfo"))["MemTotal"] == 0
    # nodes stay online; the old ones' zones hold only reserved pages, no free blocks
    assert node_list(t.read(f"{NODE}/online")) == [0, 1, 2, 3]
    for (nid, _), counts in buddyinfo(t.read("/proc/buddyinfo")).items():
        assert (sum(counts) > 0) == (nid == 3)


def test_hugepages_move_with_their_layout_and_land_on_the_new_node():
    t = Tree(boot())
    hp = NODE + "/node{}/hugepages/hugepages-2048kB/nr_hugepages"
    assert t.write(hp.format(0), "3") is None
    total0 = node_meminfo(t.read(f"{NODE}/node0/meminfo"))["MemTotal"]
    # move all of node 0's memory to node 1: the pool's pages are allocated, so they are marked
    t.add_range(0, 0x1fff, 1)
    assert t.write(f"{ML}/commit", "1") is None
    check_agreement(t)
    assert t.m.check() == []
    assert t.read(hp.format(0)) == "3\n"          # the pool is still node 0's
    info0 = node_meminfo(t.read(f"{NODE}/node0/meminfo"))
    assert info0["MemTotal"] >= 3 * 2048
    # freeing the pool transplants its pages to node 1
    before1 = node_meminfo(t.read(f"{NODE}/node1/meminfo"))
    assert t.write(hp.format(0), "0") is None
    check_agreement(t)
    assert t.m.check() == []
    after1 = node_meminfo(t.read(f"{NODE}/node1/meminfo"))
    assert after1["MemTotal"] - before1["MemTotal"] == 3 * 2048
    assert after1["MemFree"] - before1["MemFree"] >= 3 * 2048
    assert node_meminfo(t.read(f"{NODE}/node0/meminfo"))["MemTotal"] == info0["MemTotal"] - 3 * 2048
    assert int(t.read(f"{ML}/layout.1/stats/transplant-on-free")) >= 3 << HPAGE_ORDER
    assert total0 > 0


OPS = st.one_of(
    st.tuples(st.just("range"), st.integers(0, 0x3fff), st.integers(0, 0x800),
              st.integers(0, 3)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("free"), st.integers(1, 512)),
    st.tuples(st.just("alloc"), st.integers(0, 9), st.integers(0, 3), st.sampled_from(Kind)),
    st.tuples(st.just("drop_caches"), st.integers(1, 3)),
    st.tuples(st.just("hugepages"), st.integers(0, 3), st.integers(0, 4)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=12))
def test_files_agree_after_any_operations(ops):
    t = Tree(boot(mem=64 * MiB))
    total = proc_meminfo(t.read("/proc/meminfo"))["MemTotal"]
    for op in ops:
        if op[0] == "range":
            _, start, length, nid = op
            t.write(f"{ML}/start", str(start))
            t.write(f"{ML}/end", str(start + length))
            t.write(f"{ML}/node", str(nid))
        elif op[0] in ("commit", "clear"):
            assert t.write(f"{ML}/{op[0]}", "1") is None
        elif op[0] == "free":
            t.m.free_boot_allocations(limit=op[1])
        elif op[0] == "alloc":
            t.m.alloc_pages(op[1], cpu=op[2], kind=op[3])
        elif op[0] == "drop_caches":
            assert t.write("/proc/sys/vm/drop_caches", str(op[1])) is None
        elif op[0] == "hugepages":
            _, nid, n = op
            path = f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages"
            if t.node(path) is not None:
                assert t.write(path, str(n)) is None
        check_agreement(t, total)
        assert t.m.check() == []
