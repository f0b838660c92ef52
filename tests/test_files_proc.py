"""proc/ files and sys/devices/system/cpu, and every file agreeing with every other after
commits, transplants and hugepage changes (through the tree, no mount)."""
from __future__ import annotations

import errno
import re

import pytest
from files_helpers import (
    CPU,
    ML,
    NODE,
    MiB,
    Tree,
    boot,
    buddyinfo,
    check_agreement,
    key_values,
    node_list,
    node_meminfo,
    proc_meminfo,
    zoneinfo,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnumafs.mm.constants import HPAGE_ORDER, MAX_ORDER, ZoneType


@pytest.fixture
def t():
    return Tree(boot())


def test_proc_meminfo_format(t):
    text = t.read("/proc/meminfo")
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "MemTotal", "MemFree", "MemAvailable", "HugePages_Total", "HugePages_Free",
        "HugePages_Rsvd", "HugePages_Surp", "Hugepagesize", "Hugetlb"]
    for line in lines[:3] + lines[7:]:
        assert re.fullmatch(r"[\w()]+: +\d+ kB", line) and len(line) == 16 + 8 + 3, line
    for line in lines[3:7]:
        assert re.fullmatch(r"HugePages_\w+: +\d+", line) and len(line) == 19 + 5, line
    info = proc_meminfo(text)
    assert info["Hugepagesize"] == 2048
    assert info["MemTotal"] == t.m.total_managed_pages() * 4
    assert info["MemFree"] == t.m.total_free_pages() * 4


def test_mem_available(t):
    """si_mem_available() without page cache: free pages above the zones' high watermarks."""
    info = proc_meminfo(t.read("/proc/meminfo"))
    zones = zoneinfo(t.read("/proc/zoneinfo"))
    reserve = sum(min(z["high"], z["managed"]) for z in zones.values())
    assert info["MemAvailable"] == info["MemFree"] - reserve * 4
    assert 0 < info["MemAvailable"] < info["MemFree"]
    # a machine whose memory is all in hugepages has nothing available, never less than 0
    for nid in (0, 1):
        t.write(f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages", "100000")
    info = proc_meminfo(t.read("/proc/meminfo"))
    assert info["MemAvailable"] == max(0, info["MemFree"] - reserve * 4)
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
    # every zone of every online node, populated or not
    assert list(zones) == [(n, z) for n in (0, 1) for z in ("DMA", "DMA32", "Normal")]
    for (nid, name), z in zones.items():
        zone = next(zz for zz in t.m.pgdat[nid].zones.values() if zz.name == name)
        wm = t.m.watermarks(zone)
        assert (z["free"], z["min"], z["low"], z["high"]) == (
            zone.free_pages, wm.min, wm.low, wm.high)
        assert (z["spanned"], z["present"], z["managed"]) == (
            zone.spanned_pages, zone.present_pages, zone.managed_pages)
        if zone.populated:
            assert z["start_pfn"] == zone.zone_start_pfn
        else:
            assert "start_pfn" not in z and z["present"] == 0
    assert zones[(1, "DMA32")]["start_pfn"] == 0x2000


def test_zoneinfo_text(t):
    text = t.read("/proc/zoneinfo")
    head = text.split("\n  pagesets")[0].splitlines()
    assert head == [
        "Node 0, zone      DMA",
        "  per-node stats",
        "      nr_hugetlb   0",
        f"  pages free     {t.m.pgdat[0].zones[0].free_pages}",
        *[f"        {k:<8} {v}" for k, v in zip(
            ("min", "low", "high"), (lambda w: (w.min, w.low, w.high))(
                t.m.watermarks(t.m.pgdat[0].zones[0])))],
        f"        spanned  {t.m.pgdat[0].zones[0].spanned_pages}",
        f"        present  {t.m.pgdat[0].zones[0].present_pages}",
        f"        managed  {t.m.pgdat[0].zones[0].managed_pages}",
        f"      nr_free_pages {t.m.pgdat[0].zones[0].free_pages}",
    ]
    assert "    cpu: 3\n              count:    " in text
    assert text.endswith("\n")


def test_proc_vmstat(t):
    stat = key_values(t.read("/proc/vmstat"))
    assert list(stat) == ["nr_free_pages", "numa_hit", "numa_miss", "numa_foreign",
                          "numa_interleave", "numa_local", "numa_other", "nr_hugetlb",
                          "pgalloc_dma", "pgalloc_dma32", "pgalloc_normal", "pgfree",
                          "drop_pagecache", "drop_slab",
                          "htlb_buddy_alloc_success", "htlb_buddy_alloc_fail"]
    nodes = [key_values(t.read(f"{NODE}/node{n}/vmstat")) for n in (0, 1)]
    for name in nodes[0]:
        assert stat[name] == nodes[0][name] + nodes[1][name], name
    assert stat["pgalloc_dma32"] == t.m.pgalloc(ZoneType.DMA32) > 0
    freed = t.m.free_boot_allocations(limit=100)
    assert key_values(t.read("/proc/vmstat"))["pgfree"] == stat["pgfree"] + freed
    got = t.m.set_nr_hugepages(0, 1 << 20)      # more than fits: the last try fails
    after = key_values(t.read("/proc/vmstat"))
    assert after["htlb_buddy_alloc_success"] == stat["htlb_buddy_alloc_success"] + got > 0
    assert after["htlb_buddy_alloc_fail"] == stat["htlb_buddy_alloc_fail"] + 1


def test_drop_caches_frees_the_boot_allocations(t):
    held = sum(1 << o for _, o in t.m.boot_allocations)
    free = t.m.total_free_pages()
    on_pcp = sum(z.pcp_pages for p in t.m.pgdat.values() for z in p.zones.values())
    # proc_dointvec_minmax: no `+`, nothing but whitespace around, 1..4
    for bad in (b"0", b"5", b"x", b"", b"-1", b"+3", b"3 4", b"3x", b"0x10", b" \n",
                b"1" * 21, b"3\0"):
        assert t.write("/proc/sys/vm/drop_caches", bad) == errno.EINVAL, bad
    assert t.m.boot_allocations and t.m.total_free_pages() == free
    assert t.write("/proc/sys/vm/drop_caches", b"4") is None     # only silences the message
    assert sum(1 << o for _, o in t.m.boot_allocations) == held
    assert t.read("/proc/vmstat").count("drop_pagecache 0\n") == 1
    assert t.write("/proc/sys/vm/drop_caches", b" \t0x3 \n") is None   # base 0, spaces around
    assert t.m.boot_allocations == []
    vmstat = key_values(t.read("/proc/vmstat"))
    assert (vmstat["drop_pagecache"], vmstat["drop_slab"]) == (1, 1)
    assert t.write("/proc/sys/vm/drop_caches", b"02") is None            # octal 2: slab only
    vmstat = key_values(t.read("/proc/vmstat"))
    assert (vmstat["drop_pagecache"], vmstat["drop_slab"]) == (1, 2)
    t.m.drain_pcp()
    assert t.m.total_free_pages() == free + on_pcp + held


def test_cpu_lists_and_links(t):
    assert t.read(f"{CPU}/online") == "0-3\n"
    assert t.read(f"{CPU}/possible") == "0-3\n"
    assert t.read(f"{CPU}/present") == "0-3\n"
    assert t.read(f"{CPU}/offline") == "\n"
    assert [n for n in t.ls(CPU) if n.startswith("cpu")] == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert t.ls(f"{CPU}/cpu2") == ["online", "node1", "topology", "cache"]
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
    st.tuples(st.just("alloc"), st.integers(0, 9), st.integers(0, 3)),
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
            t.m.alloc_pages(op[1], cpu=op[2])
        elif op[0] == "hugepages":
            _, nid, n = op
            path = f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages"
            if t.node(path) is not None:
                assert t.write(path, str(n)) is None
        check_agreement(t, total)
        assert t.m.check() == []
