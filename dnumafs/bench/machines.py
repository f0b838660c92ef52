"""The rows of scale (SPEC section 6): the largest machines Linux describes, mounted for real,
and a restripe of a 1 TiB model.

- 1024 nodes and 8192 CPUs (MAX_NUMNODES and x86's MAXSMP NR_CPUS): `dnumafs mount` until it
  answers, and `dnumafs run`'s namespace on it; numactl --hardware under run on 1024 nodes,
  as many of them with memory as libnuma takes;
- the largest snapshot in hwloc's test data, about 1.9 TB over 11 nodes, as a synthetic
  machine of that size: mount time and the daemon's RSS;
- a restripe commit of 1 TiB over 8 nodes, in the model (no files).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from dnumafs.client import MountedTree, commit_layout
from dnumafs.mm import Machine, MachineConfig

from .fs import Mounts, cli, daemon_rss_mib
from .model import stage_stripes, timed
from .report import Row, median_range

MAX_NODES, MAX_CPUS = 1024, 8192
# libnuma keeps a v1 nodemask_t, numa_all_nodes, of NUMA_NUM_NODES bits (128 on x86-64), and
# its constructor numa_init() sets one bit in it for every node 2.0.16 counts (those with
# memory), unchecked: from 129 memory nodes on it writes past it into libnuma's other
# globals (from 449 on, over the pointer to its node-to-CPUs cache, which numa_node_to_cpus()
# then follows). Seen with 2.0.16 on a copy of a real kernel's node files, no dnumafs: 256
# memory nodes ran, 399 ran away with memory, 447 and 512 crashed. Memoryless nodes count not.
NUMACTL_NODES = 128
RUNS = 3
# hwloc's largest snapshot: 11 nodes, 1.9 TB of memory (MemTotal 1,855,386,236 kB).
BIG_SNAPSHOT_NODES, BIG_SNAPSHOT_KB = 11, 1_855_386_236


def numactl_runs(mnt: Path, opts: tuple[str, ...]) -> list[float]:
    """Seconds of each of RUNS `dnumafs run [opts] MNT -- numactl --hardware`."""
    runs = []
    for _ in range(RUNS):
        t = time.perf_counter()
        r = cli("run", *opts, mnt, "--", "numactl", "--hardware", timeout=120)
        runs.append(time.perf_counter() - t)
        if r.returncode != 0 or f"available: {MAX_NODES} nodes" not in r.stdout:
            raise RuntimeError(f"numactl --hardware on {MAX_NODES} nodes failed "
                               f"({r.returncode}): {r.stderr.strip()}")
    return runs


def bench_max_machine(mounts: Mounts, notes: list[str]) -> list[Row]:
    """1024 nodes of 8 MiB and 8192 CPUs: mount until it answers, and `run`'s namespace.
    Then numactl --hardware under run on 1024 online nodes, of which only as many have
    memory as libnuma takes (NUMACTL_NODES); it also sizes its CPU masks by the host kernel's
    NR_CPUS (a wider cpumap is "Cannot parse cpumap"), so that machine has a CPU a memory
    node."""
    mnt, dt, _ = mounts.mount("--nodes", str(MAX_NODES), "--possible-nodes", str(MAX_NODES),
                              "--cpus", str(MAX_CPUS), "--mem", f"{MAX_NODES * 8}M")
    try:
        t = time.perf_counter()
        setup = cli("run", mnt, "--", "true", timeout=300)
        dt_setup = time.perf_counter() - t
    finally:
        mounts.umount(mnt)
    if setup.returncode:
        raise RuntimeError(f"dnumafs run on {MAX_NODES} nodes failed: {setup.stderr.strip()}")
    rows = [Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs mount` until it answers",
                f"{dt:.2f} s", "< 10 s", dt < 10),
            Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs run MNT -- true` (its "
                "namespace: a bind mount per CPU directory)", f"{dt_setup:.2f} s", "-")]
    if shutil.which("numactl") is None:
        notes.append("numactl: not installed, so the numactl row is missing")
        return rows
    mnt, _, _ = mounts.mount("--nodes", str(NUMACTL_NODES), "--possible-nodes",
                             str(MAX_NODES), "--cpus", str(NUMACTL_NODES),
                             "--mem", f"{NUMACTL_NODES * 8}M")
    try:
        # The other nodes come online without memory: a layout names each with a range
        # far past the end of memory (4 PiB), which moves nothing.
        commit_layout(MountedTree(mnt), [((1 << 40) + nid, (1 << 40) + nid, nid)
                                         for nid in range(NUMACTL_NODES, MAX_NODES)])
        times = {opts: numactl_runs(mnt, opts) for opts in ((), ("--no-syscalls",))}
    finally:
        mounts.umount(mnt)
    for opts, runs in times.items():
        med, lo, hi = median_range(runs)
        rows.append(Row(f"`dnumafs run {' '.join(opts + ('MNT',))} -- numactl --hardware`, "
                        f"{MAX_NODES} nodes online, {NUMACTL_NODES} with memory and CPUs "
                        f"(process start included), median of {RUNS}",
                        f"{med:.2f} s ({lo:.2f}..{hi:.2f})", "< 2 s", med < 2))
    notes.append(f"numactl --hardware: on {MAX_NODES} nodes of which {NUMACTL_NODES} have "
                 "memory; libnuma's numa_init() overruns its 128-bit nodemask_t with more "
                 "memory nodes (here 399 ran away with memory, 447 crashed)")
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
