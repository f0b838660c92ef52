"""The shell examples in examples/, run against a mount, their output checked against the
model's figures read through the mount's files."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from files_helpers import (
    KEPT_BY_DROP_CACHES,
    ML,
    NODE,
    Mounted,
    check_agreement,
    node_meminfo,
    proc_meminfo,
)

from dnumafs import client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HPAGE_KB = 2048


@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "64M", "--cpus", "4",
                                 "--possible-nodes", "4"))


def example(fs: Mounted, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """examples/NAME with the mount as its root."""
    return subprocess.run([str(EXAMPLES / name), *args],
                          env=dict(os.environ, DNUMA_ROOT=str(fs.mnt)), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def current_ranges(fs: Mounted) -> list[tuple[int, int, int]]:
    tree = client.MountedTree(fs.mnt)
    return tree.layout_ranges(tree.current_layout())


def test_dnuma_test_stripes_and_moves_all(fs):
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    max_pfn = client.MountedTree(fs.mnt).max_pfn()
    assert max_pfn == 64 << 8
    r = example(fs, "dnuma-test", "stripe", "0", "2", "1000")
    assert r.returncode == 0, r.stderr
    # the pfn advances, stripes do not overlap, and the last one ends at the highest pfn
    expected = list(client.stripe_ranges(max_pfn, 0, 2, 1000))
    assert current_ranges(fs) == expected
    assert expected[-1][1] == max_pfn - 1 and len(expected) == 17
    moved = fs.read(f"{ML}/moved-pages").strip()
    assert r.stdout == f"committed 17 range(s) over pfns 0-{max_pfn - 1}; moved-pages {moved}\n"
    info = check_agreement(fs, total)
    assert list(info) == [0, 1, 2] and info[2]["MemTotal"] > 0

    r = example(fs, "dnuma-test", "all-to", "3")
    assert r.returncode == 0, r.stderr
    assert current_ranges(fs) == [(0, max_pfn - 1, 3)]
    info = check_agreement(fs, total)
    assert list(info) == [0, 1, 2, 3]
    assert all(info[n]["MemFree"] == 0 for n in (0, 1, 2)) and info[3]["MemFree"] > 0


def test_dnuma_test_stops_at_a_refused_write(fs):
    before = fs.layouts()
    r = example(fs, "dnuma-test", "all-to", "4")      # 4 possible nodes: 0..3
    assert r.returncode == 1
    assert "echo: write error: Invalid argument" in r.stderr
    assert fs.layouts() == before and r.stdout == ""
    for args in ([], ["stripe", "2", "1", "5"], ["stripe", "0", "1", "0"], ["all-to", "x"]):
        r = example(fs, "dnuma-test", *args)
        assert r.returncode == 1 and r.stderr.startswith("usage:"), args
    assert fs.layouts() == before


def test_numa_report_prints_what_numactl_prints(fs, run_dnumafs):
    """Its figures are the node files' (the same as `dnumafs hardware`, which reads them in
    Python), through a stripe and an all-to that leaves a gap in the node ids."""
    for step in ([], ["stripe", fs.mnt, "0", "3", "700"], ["all-to", fs.mnt, "3"]):
        if step:
            assert run_dnumafs(*step).returncode == 0
        r = example(fs, "numa-report")
        assert r.returncode == 0, r.stderr
        assert r.stdout == run_dnumafs("hardware", fs.mnt).stdout
        for n in client.MountedTree(fs.mnt).node_ids():
            info = node_meminfo(fs.read(f"{NODE}/node{n}/meminfo"))
            assert f"\nnode {n} size: {info['MemTotal'] // 1024} MB\n" in r.stdout
            assert f"\nnode {n} free: {info['MemFree'] // 1024} MB\n" in r.stdout


def test_examples_under_dnumafs_run(fs):
    """Without DNUMA_ROOT the examples read the real paths: under `dnumafs run`, the model."""
    if os.geteuid() != 0 and subprocess.run(["unshare", "--user", "--mount", "true"],
                                            capture_output=True).returncode != 0:
        pytest.skip("no mount namespace: needs root or user namespaces")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dnumafs", "run", str(fs.mnt), "--", *argv],
                              capture_output=True, text=True, timeout=120)

    r = run(str(EXAMPLES / "dnuma-test"), "stripe", "1", "2", "4096")
    assert r.returncode == 0, r.stderr
    assert current_ranges(fs) == list(client.stripe_ranges(1 << 14, 1, 2, 4096))
    r = run(str(EXAMPLES / "numa-report"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == run("numactl", "--hardware").stdout


NODE_LINE = re.compile(r"^node (\d+): (\d+) kB total, (\d+) kB free, (\d+) hugepages$")
COUNTERS = re.compile(r"^online (\S+), has_memory (\S+), moved-pages (\d+), "
                      r"transplant-on-free (\d+)$")


def walkthrough_sections(text: str) -> list[tuple[str, dict[int, tuple[int, int, int]],
                                                   tuple[str, ...]]]:
    """[(title, {node: (total kB, free kB, hugepages)}, counters)] of each `== title` block."""
    sections = []
    for block in text.split("== ")[1:]:
        title, *lines = block.rstrip("\n").split("\n")
        nodes = {}
        counters: tuple[str, ...] = ()
        for line in lines:
            if m := NODE_LINE.fullmatch(line):
                nodes[int(m[1])] = (int(m[2]), int(m[3]), int(m[4]))
            elif m := COUNTERS.fullmatch(line):
                counters = m.groups()
        sections.append((title, nodes, counters))
    return sections


def test_vm_walkthrough(fs):
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    r = example(fs, "vm-hypervisor-move", "6")
    assert r.returncode == 0, r.stderr
    (_, boot, c0), (_, pooled, c1), (title, moved, c2), (_, freed, c3), (_, dropped, c4) = \
        walkthrough_sections(r.stdout)
    for nodes in (boot, pooled, moved, freed, dropped):
        assert sum(t for t, _, _ in nodes.values()) == total
    assert list(boot) == [0, 1] and c0 == ("0-1", "0-1", "0", "0")
    # the pool comes out of node 1's free memory
    assert pooled[1][2] == 6 and pooled[1][1] == boot[1][1] - 6 * HPAGE_KB
    # the move: node 2 comes up with node 1's free pages; what is allocated stays, marked
    assert title.startswith("hypervisor moved node 1's memory to node 2 (layout.1)")
    assert list(moved) == [0, 1, 2] and c2[:2] == ("0-2", "0-2")
    # (node 2 also gets the pages that sat on node 1's per-CPU lists, drained at the commit)
    assert moved[1][1] == 0 and moved[1][2] == 6
    assert moved[2][0] == moved[2][1] == pooled[1][0] - moved[1][0] >= pooled[1][1]
    assert moved[0][0] == boot[0][0]
    # freeing the pool transplants its pages to node 2
    assert freed[1][0] == moved[1][0] - 6 * HPAGE_KB
    assert freed[2][0] == moved[2][0] + 6 * HPAGE_KB
    assert int(c3[3]) - int(c2[3]) == 6 * HPAGE_KB // 4
    # dropping the caches frees node 1's page cache and reclaimable slab, which move; what
    # stays allocated (anonymous memory, shmem, unreclaimable slab, page tables, stacks) is
    # all node 1 still manages
    assert int(c4[3]) > int(c3[3])
    # the last figures are the files' now
    info = check_agreement(fs, total)
    kept = sum(info[1][k] for k in KEPT_BY_DROP_CACHES)
    assert info[1]["Active(file)"] == info[1]["Inactive(file)"] == info[1]["SReclaimable"] == 0
    assert dropped[1] == (kept, 0, 0) and dropped[2][0] == boot[1][0] - kept
    assert dropped == {n: (i["MemTotal"], i["MemFree"], i["HugePages_Total"])
                       for n, i in info.items()}
    assert c4[2:] == (fs.read(f"{ML}/moved-pages").strip(),
                      fs.read(f"{ML}/stats/transplant-on-free").strip())
    reserved = fs.read(f"{ML}/stats/transplant-bail-reserved").strip()
    assert r.stdout.endswith(f"\ntransplant-bail-reserved {reserved}\n") and int(reserved) > 0
