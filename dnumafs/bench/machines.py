"""The rows of scale (SPEC section 6): the largest machines Linux describes, mounted for real,
and a restripe of a 1 TiB model.

- 1024 nodes and 8192 CPUs (MAX_NUMNODES and x86's MAXSMP NR_CPUS): `dnumafs mount` until it
  answers; `numactl --hardware` under `dnumafs run` on as many nodes as libnuma reads;
- the largest snapshot in hwloc's test data, about 1.9 TB over 11 nodes, as a synthetic
  machine of that size: mount time and the daemon's RSS;
- a restripe commit of 1 TiB over 8 nodes, in the model (no files).
"""
from __future__ import annotations

import shutil
import time

from dnumafs.mm import Machine, MachineConfig

from .fs import Mounts, cli, daemon_rss_mib
from .model import stage_stripes, timed
from .report import Row

MAX_NODES, MAX_CPUS = 1024, 8192
NUMACTL_NODES = 256
# hwloc's largest snapshot: 11 nodes, 1.9 TB of memory (MemTotal 1,855,386,236 kB).
BIG_SNAPSHOT_NODES, BIG_SNAPSHOT_KB = 11, 1_855_386_236


def bench_max_machine(mounts: Mounts, notes: list[str]) -> list[Row]:
    """1024 nodes of 8 MiB and 8192 CPUs: mount until it answers. Then numactl --hardware
    under run on the most nodes this host's libnuma reads: it sizes its CPU masks by the
    host kernel's NR_CPUS (a cpumap wider than that is "Cannot parse cpumap"), and libnuma
    2.0.16 was seen to crash on a model of 512 nodes or more (256 work)."""
    mnt, dt, _ = mounts.mount("--nodes", str(MAX_NODES), "--possible-nodes", str(MAX_NODES),
                              "--cpus", str(MAX_CPUS), "--mem", f"{MAX_NODES * 8}M")
    mounts.umount(mnt)
    rows = [Row(f"{MAX_NODES} nodes, {MAX_CPUS} CPUs: `dnumafs mount` until it answers",
                f"{dt:.2f} s", "< 10 s", dt < 10)]
    if shutil.which("numactl") is None:
        notes.append("numactl: not installed, so the many-node numactl row is missing")
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
    notes.append(f"numactl --hardware: measured on {nodes} nodes, the most this host's "
                 "libnuma 2.0.16 reads (it crashes at 512 nodes, and cannot parse cpumaps "
                 "wider than the host kernel's NR_CPUS)")
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
