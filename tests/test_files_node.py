"""sys/devices/system/node: node lists and nodeN/ files, read through the tree (no mount)."""
from __future__ import annotations

import errno
import re

import pytest
from files_helpers import (
    HOST_NODE0,
    NODE,
    MiB,
    Tree,
    boot,
    key_values,
    meminfo_keys,
    node_list,
    node_meminfo,
    proc_meminfo,
    vmstat_keys,
)

from dnumafs.mm.constants import HPAGE_ORDER

needs_host_node = pytest.mark.skipif(not HOST_NODE0.is_dir(),
                                     reason="this machine has no node0 to compare with")


@pytest.fixture
def t():
    return Tree(boot())


def test_node_lists(t):
    assert t.read(f"{NODE}/possible") == "0-3\n"
    assert t.read(f"{NODE}/online") == "0-1\n"
    assert t.read(f"{NODE}/has_memory") == "0-1\n"
    assert t.read(f"{NODE}/has_normal_memory") == "0-1\n"
    assert t.read(f"{NODE}/has_cpu") == "0-1\n"


def test_node_dirs_only_for_online_nodes(t):
    assert t.ls(NODE) == ["possible", "online", "has_memory", "has_normal_memory", "has_cpu",
                          "node0", "node1"]
    for name in ("node2", "node3", "node01", "node", "nodes", "node-1", "node1x"):
        assert t.node(f"{NODE}/{name}") is None
    # libnuma probes the distance file one past the last node
    assert t.node(f"{NODE}/node2/distance") is None
    assert t.node(f"{NODE}/node1/nosuchfile") is None


def test_node_dir_contents(t):
    assert t.ls(f"{NODE}/node0") == ["meminfo", "numastat", "vmstat", "distance", "cpumap",
                                     "cpulist", "hugepages", "cpu0", "cpu1", "memory0"]
    assert t.readlink(f"{NODE}/node1/cpu3") == "../../cpu/cpu3"
    assert t.node(f"{NODE}/node1/cpu0") is None
    assert t.ls(f"{NODE}/node0/hugepages") == ["hugepages-2048kB"]
    assert t.ls(f"{NODE}/node0/hugepages/hugepages-2048kB") == [
        "nr_hugepages", "free_hugepages", "surplus_hugepages"]
    hp = f"{NODE}/node0/hugepages/hugepages-2048kB"
    assert t.node(f"{hp}/nr_hugepages").mode == 0o644
    assert t.node(f"{hp}/free_hugepages").store is None
    assert t.node(f"{NODE}/node0/meminfo").mode == 0o444
    assert t.node(f"{NODE}/node0/meminfo").store is None


def test_meminfo_format_is_linux(t):
    text = t.read(f"{NODE}/node0/meminfo")
    lines = text.splitlines()
    assert text.endswith("\n")
    # `Node %d %-16s%8lu kB`, as drivers/base/node.c: hwloc looks for "MemTotal: "
    assert re.fullmatch(r"Node 0 MemTotal: {7}[ \d]{8} kB", lines[0])
    assert re.fullmatch(r"Node 0 MemFree: {8}[ \d]{8} kB", lines[1])
    assert re.fullmatch(r"Node 0 MemUsed: {8}[ \d]{8} kB", lines[2])
    assert re.fullmatch(r"Node 0 Inactive\(file\): [ \d]{8} kB", lines[9])
    for line in lines[:-3]:
        assert re.fullmatch(r"Node 0 [\w()]+: +[ \d]{8} kB", line) and len(line) == 7 + 27, line
    assert re.fullmatch(r"Node 0 HugePages_Total: [ \d]{5}", lines[-3])
    assert re.fullmatch(r"Node 0 HugePages_Free:  [ \d]{5}", lines[-2])
    assert re.fullmatch(r"Node 0 HugePages_Surp:  [ \d]{5}", lines[-1])
    assert len(node_meminfo(text)) == len(lines)


@needs_host_node
def test_meminfo_and_vmstat_keys_are_this_machines(t):
    """nodeN/meminfo and nodeN/vmstat carry every key this machine's kernel prints, in its
    order (files_helpers.CONFIG_KEYS lists the only ones that may differ, and why)."""
    assert meminfo_keys(t.read(f"{NODE}/node1/meminfo")) == meminfo_keys(
        (HOST_NODE0 / "meminfo").read_text())
    assert vmstat_keys(t.read(f"{NODE}/node1/vmstat")) == vmstat_keys(
        (HOST_NODE0 / "vmstat").read_text())


def test_meminfo_figures(t):
    m = t.m
    for nid in (0, 1):
        info = node_meminfo(t.read(f"{NODE}/node{nid}/meminfo"))
        pgdat = m.pgdat[nid]
        assert info["MemTotal"] == pgdat.managed_pages * 4
        assert info["MemFree"] == pgdat.free_pages * 4
        assert info["MemUsed"] == info["MemTotal"] - info["MemFree"]
        assert info["MemUsed"] > 0      # boot reserved and allocated some
    # the nodes add up to the machine
    nodes = [node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)]
    proc = proc_meminfo(t.read("/proc/meminfo"))
    assert sum(n["MemTotal"] for n in nodes) == proc["MemTotal"]
    assert sum(n["MemFree"] for n in nodes) == proc["MemFree"]


def test_numastat(t):
    text = t.read(f"{NODE}/node0/numastat")
    assert [line.split()[0] for line in text.splitlines()] == [
        "numa_hit", "numa_miss", "numa_foreign", "interleave_hit", "local_node", "other_node"]
    stat = key_values(text)
    assert stat == t.m.pgdat[0].numastat
    before = stat["numa_hit"]
    assert t.m.alloc_pages(0, nid=0, cpu=0) is not None
    assert key_values(t.read(f"{NODE}/node0/numastat"))["numa_hit"] == before + 1
    # an allocation preferring node 0 that is served by node 1 is a miss on 1, foreign on 0
    assert t.m.alloc_pages(3, nid=1, cpu=0) is not None
    assert key_values(t.read(f"{NODE}/node1/numastat"))["other_node"] >= 1


def test_vmstat(t):
    stat = key_values(t.read(f"{NODE}/node1/vmstat"))
    names = list(stat)
    assert names[:2] == ["nr_free_pages", "nr_free_pages_blocks"]
    assert names[names.index("numa_hit"):names.index("numa_other") + 1] == [
        "numa_hit", "numa_miss", "numa_foreign", "numa_interleave", "numa_local", "numa_other"]
    pgdat = t.m.pgdat[1]
    assert stat["nr_free_pages"] == pgdat.free_pages
    assert stat["numa_hit"] == pgdat.numastat["numa_hit"]
    assert stat["numa_local"] == pgdat.numastat["local_node"]
    assert stat["nr_hugetlb"] == 0
    assert stat["nr_zone_inactive_file"] == stat["nr_inactive_file"] > 0
    assert stat["nr_kernel_stack"] % 16 == 0, "kernel stacks are 16 kB each"
    assert stat["nr_swapcached"] == stat["nr_dirty"] == stat["workingset_nodes"] == 0


def test_distance_cpumap_cpulist(t):
    assert t.read(f"{NODE}/node0/distance") == "10 20\n"
    assert t.read(f"{NODE}/node1/distance") == "20 10\n"
    assert t.read(f"{NODE}/node0/cpumap") == "3\n"
    assert t.read(f"{NODE}/node1/cpumap") == "c\n"
    assert t.read(f"{NODE}/node0/cpulist") == "0-1\n"
    assert t.read(f"{NODE}/node1/cpulist") == "2-3\n"


def test_cpumap_words():
    t = Tree(boot(nodes=2, cpus=40, mem=64 * MiB))
    # 40 CPUs: a first word of 8 bits (2 digits), then one full word
    assert t.read(f"{NODE}/node0/cpumap") == "00,000fffff\n"
    assert t.read(f"{NODE}/node1/cpumap") == "ff,fff00000\n"
    assert t.read(f"{NODE}/node1/cpulist") == "20-39\n"


def test_node_without_cpus():
    t = Tree(boot(nodes=3, cpus=2, mem=96 * MiB))     # cpu c on node c * 3 // 2
    assert t.read(f"{NODE}/has_cpu") == "0-1\n"
    assert t.read(f"{NODE}/node2/cpumap") == "0\n"
    assert t.read(f"{NODE}/node2/cpulist") == "\n"
    assert t.read(f"{NODE}/node1/distance") == "20 10 20\n"
    assert not [n for n in t.ls(f"{NODE}/node2") if re.fullmatch(r"cpu\d+", n)]


HP = NODE + "/node{}/hugepages/hugepages-2048kB"


def test_nr_hugepages_store(t):
    hp = HP.format(1)
    before = node_meminfo(t.read(f"{NODE}/node1/meminfo"))
    assert t.read(f"{hp}/nr_hugepages") == "0\n"
    assert t.write(f"{hp}/nr_hugepages", "4\n") is None
    assert t.read(f"{hp}/nr_hugepages") == "4\n"
    assert t.read(f"{hp}/free_hugepages") == "4\n"
    assert t.read(f"{hp}/surplus_hugepages") == "0\n"
    after = node_meminfo(t.read(f"{NODE}/node1/meminfo"))
    assert after["HugePages_Total"] == 4 and after["HugePages_Free"] == 4
    assert after["HugePages_Surp"] == 0
    # the pool comes out of the node's free memory
    assert before["MemFree"] - after["MemFree"] == 4 * 2048
    assert after["MemTotal"] == before["MemTotal"]
    assert key_values(t.read(f"{NODE}/node1/vmstat"))["nr_hugetlb"] == 4 << HPAGE_ORDER
    proc = proc_meminfo(t.read("/proc/meminfo"))
    assert proc["HugePages_Total"] == 4 and proc["Hugetlb"] == 4 * 2048
    # node 0 is untouched
    assert t.read(f"{HP.format(0)}/nr_hugepages") == "0\n"
    assert t.write(f"{hp}/nr_hugepages", "1") is None
    assert t.read(f"{hp}/nr_hugepages") == "1\n"
    assert node_meminfo(t.read(f"{NODE}/node1/meminfo"))["MemFree"] == before["MemFree"] - 2048
    assert t.m.check() == []


@pytest.mark.parametrize("value, err", [
    (b"", errno.EINVAL),
    (b"\n", errno.EINVAL),
    (b"-1\n", errno.EINVAL),
    (b"0x4\n", errno.EINVAL),    # kstrtoul(buf, 10): decimal only
    (b"4 \n", errno.EINVAL),
    (b" 4", errno.EINVAL),
    (b"4\n\n", errno.EINVAL),
    (b"four", errno.EINVAL),
    (b"18446744073709551616", errno.ERANGE),
])
def test_nr_hugepages_rejects(t, value, err):
    hp = HP.format(0)
    assert t.write(f"{hp}/nr_hugepages", "2") is None
    assert t.write(f"{hp}/nr_hugepages", value) == err
    assert t.read(f"{hp}/nr_hugepages") == "2\n"


def test_nr_hugepages_is_decimal(t):
    hp = HP.format(0)
    assert t.write(f"{hp}/nr_hugepages", "+010\n") is None
    assert t.read(f"{hp}/nr_hugepages") == "10\n"


def test_nr_hugepages_more_than_fits(t):
    """As Linux: the write succeeds, and the pool is as large as memory allowed."""
    hp = HP.format(0)
    assert t.write(f"{hp}/nr_hugepages", "100000") is None
    got = int(t.read(f"{hp}/nr_hugepages"))
    assert 0 < got < 100000
    info = node_meminfo(t.read(f"{NODE}/node0/meminfo"))
    assert info["HugePages_Total"] == got
    assert info["MemFree"] < info["MemTotal"] // 4
    assert t.m.alloc_pages(HPAGE_ORDER, nid=0, thisnode=True) is None    # nothing more fits
    assert t.write(f"{hp}/nr_hugepages", "0") is None
    assert t.m.check() == []


def test_new_node_appears(t):
    """A commit naming node 3 brings nodeN/ and every list up to date at once."""
    t.add_range(0x2000, 0x2fff, 3)
    assert t.node(f"{NODE}/node3") is None       # pending only
    assert t.write("/sys/kernel/debug/memlayout/commit", "1") is None
    assert t.read(f"{NODE}/online") == "0-1,3\n"
    assert 3 in node_list(t.read(f"{NODE}/has_memory"))
    assert t.read(f"{NODE}/has_cpu") == "0-1\n"
    assert "node3" in t.ls(NODE)
    info = node_meminfo(t.read(f"{NODE}/node3/meminfo"))
    assert info["MemTotal"] > 0 and info["MemFree"] > 0
    assert t.read(f"{NODE}/node3/distance") == "20 20 10\n"
    assert t.read(f"{NODE}/node0/distance") == "10 20 20\n"
    assert t.read(f"{NODE}/node3/cpulist") == "\n"
    # no cpuK links
    assert not [n for n in t.ls(f"{NODE}/node3") if re.fullmatch(r"cpu\d+", n)]
