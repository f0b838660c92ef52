"""The rows of scale (SPEC section 6): the largest machines Linux describes, mounted for real,
and a restripe of a 1 TiB model.

- 1024 nodes and 8192 CPUs (MAX_NUMNODES and x86's MAXSMP NR_CPUS): `dnumafs mount` until it
  answers; the files `numactl --hardware` reads, read under `dnumafs run`; numactl --hardware
  itself under run on as many nodes as libnuma takes;
- the largest snapshot in hwloc's test data, about 1.9 TB over 11 nodes, as a synthetic
  machine of that size: mount time and the daemon's RSS;
- a restripe commit of 1 TiB over 8 nodes, in the model (no files).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from dnumafs.mm import Machine, MachineConfig

from .fs import Mounts, cli, daemon_rss_mib
from .model import stage_stripes, timed
from .report import Row

MAX_NODES, MAX_CPUS = 1024, 8192
# libnuma (2.0.16 and upstream alike) keeps a v1 nodemask_t, numa_all_nodes, of NUMA_NUM_NODES
# bits (128 on x86-64), and its constructor numa_init() sets one bit in it for every node
# with memory, unchecked: from 129 memory nodes on it writes past it into libnuma's other
# globals (from 449, the pointer to its node-to-CPUs cache, so numa_node_to_cpus() faults).
# Linux's own files bring that about as well as the model's: more nodes cannot be measured.
NUMACTL_NODES = 128
# What numactl --hardware reads of each node: meminfo (sizes, free), cpumap, distance.
NUMACTL_FILES = ("meminfo", "cpumap", "distance")
# hwloc's largest snapshot: 11 nodes, 1.9 TB of memory (MemTotal 1,855,386,236 kB).
BIG_SNAPSHOT_NODES, BIG_SNAPSHOT_KB = 11, 1_855_386_236


def read_node_files(mnt: Path) -> subprocess.CompletedProcess[str]:
    """Under `dnumafs run`, cat every file numactl --hardware reads of every node."""
    paths = " ".join(f"/sys/devices/system/node/node*/{f}" for f in NUMACTL_FILES)
    return cli("run", mnt, "--", "sh", "-c", f"cat /proc/self/status {paths} | wc -l",
               timeout=120)


def bench_max_machine(mounts: Mounts, notes: list[str]) -> list[Row]:
    """1024 nodes of 8 MiB and 8192 CPUs: mount until it answers, and the files numactl
    --hardware reads, read under run. Then numactl --hardware itself under run on the most
    nodes libnuma takes (NUMACTL_NODES); it also sizes its CPU masks by the host kernel's
    NR_CPUS (a wider cpumap is "Cannot parse cpumap"), so that machine has a CPU a node."""
    mnt, dt, _ = mounts.mount("--nodes", str(MAX_NODES), "--possible-nodes", str(MAX_NODES),
                              "--cpus", str(MAX_CPUS), "--mem", f"{MAX_NODES * 8}M")
    try:
        t = time.perf_counter()
        setup = cli("run", mnt, "--", "true", timeout=300)
        dt_setup = time.perf_counter() - t
        t = time.perf_counter()
        r = read_node_files(mnt)
        dt_read = time.perf_counter() - t
    finally:
        mounts.umount(mnt)
    lines = MAX_NODES * len(NUMACTL_FILES)        # at least a line a file
    if setup.returncode or r.returncode != 0 or int(r.stdout.split()[0]) < lines:
        raise RuntimeError(f"reading the node files under run failed: {r.stderr.strip()}")
    rows = [Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs mount` until it answers",
                f"{dt:.2f} s", "< 10 s", dt < 10),
            Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs run MNT -- true` (its "
                "namespace: a bind mount per CPU directory)", f"{dt_setup:.2f} s", "-"),
            Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs run MNT -- cat` of every "
                f"node's {', '.join(NUMACTL_FILES)} (what numactl --hardware reads; process "
                "start included)", f"{dt_read:.2f} s", "< 2 s", dt_read < 2)]
    if shutil.which("numactl") is None:
        notes.append("numactl: not installed, so the numactl row is missing")
        return rows
    nodes = NUMACTL_NODES
    mnt, _, _ = mounts.mount("--nodes", str(nodes), "--possible-nodes", str(MAX_NODES),
                             "--cpus", str(nodes), "--mem", f"{nodes * 8}M")
    try:
        t = time.perf_counter()
        r = cli("run", mnt, "--", "numactl", "--hardware", timeout=120)
        dt = time.perf_counter() - t
        if r.returncode != 0 or f"available: {nodes} nodes" not in r.stdout:
            notes.append(f"numactl --hardware on {nodes} nodes failed: {r.stderr.strip()}")
            return rows
        rows.append(Row(f"`dnumafs run MNT -- numactl --hardware`, {nodes} nodes of "
                        f"{MAX_NODES} possible (process start included)", f"{dt:.2f} s",
                        "< 2 s", dt < 2))
    finally:
        mounts.umount(mnt)
    notes.append(f"numactl --hardware: measured on {nodes} nodes, the most libnuma takes: "
                 "its numa_init() overruns a 128-bit nodemask_t past 128 memory nodes")
    return rows


def bench_big_snapshot(mounts: Mounts) -> list[Row]:
    """A machine the size of hwloc's largest snapshot: mount time and daemon RSS."""
    mem_mib = BIG_SNAPSHOT_KB // 1024
    mnt, dt, pid = mounts.mount("--nodes", str(BIG_SNAPSHOT_NODES), "--possible-nodes",
                                str(BIG_SNAPSHOT_NODES), "--cpus", "88",
                                "--mem", f"{mem_mib}M")
    try:
        rss = daemon_rss_mib(pid)
    finally:
        mounts.umount(mnt)
    return [
        Row(f"{mem_mib / 2**20:.2f} TiB/{BIG_SNAPSHOT_NODES} nodes (hwloc's largest snapshot): "
            "`dnumafs mount` until it answers", f"{dt:.2f} s", "< 10 s", dt < 10),
        Row(f"{mem_mib / 2**20:.2f} TiB/{BIG_SNAPSHOT_NODES} nodes: daemon RSS after mount",
            f"{rss / 1024:.2f} GiB", "< 2.5 GiB", rss < 2.5 * 1024),
    ]


def bench_restripe_tib() -> list[Row]:
    """1 TiB over 4 nodes, restriped over 8 in 1 GiB stripes: the commit alone."""
    t_boot, m = timed(Machine.boot, MachineConfig(nodes=4, mem=1 << 40, cpus=16))
    n = stage_stripes(m, 0, 7, (1 << 30) >> 12)
    t_commit, _ = timed(m.memlayout_commit)
    moved = m.stats["moved-pages"]
    return [
        Row("1 TiB/4 nodes: boot (model)", f"{t_boot:.2f} s", "-"),
        Row(f"1 TiB: commit restripe of {n:,} ranges over 8 nodes ({moved:,} pages moved, "
            "model)", f"{t_commit:.2f} s", "< 5 s", t_commit < 5),
    ]


def run_all(notes: list[str]) -> list[Row]:
    rows = bench_restripe_tib()
    mounts = Mounts()
    try:
        rows += bench_max_machine(mounts, notes)
        rows += bench_big_snapshot(mounts)
    finally:
        mounts.close()
    return rows
