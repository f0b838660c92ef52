"""The workload's rows of `make bench`: the allocations and frees the daemon's workload sustains
in real time, and what it costs a reader of the node files meanwhile.

One mount of the default machine. Rounds alternate: the daemon idle (no task), then running
tasks that ask for RATE allocations a second in all, each freeing its oldest once it holds its
pages. In each round a reader in this process opens, reads and closes node0/meminfo and
node0/numastat in turn, READS times; the workload's counts are read from its control file
before and after, over the same wall time. `python -m dnumafs.bench.workload` runs these rows
alone.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

from .fs import Mounts
from .report import Row

ROUNDS = 3
READS = 20_000
RATE = 120_000                  # asked for in all, over TASKS
TASKS = (("a", 0), ("b", 2))    # name, cpu (one on each node of the default machine)
PAGES = 4096
AIM_RATE = 100_000
AIM_RATIO = 2.0
CONTROL = "sys/kernel/debug/dnumafs/workload"
COUNTS = re.compile(r"allocated (\d+) freed (\d+) failed (\d+)")
HEAD = re.compile(r"time (\d+\.\d+) .* behind (\d+\.\d+)")


def write(mnt: Path, commands: str) -> None:
    fd = os.open(mnt / CONTROL, os.O_WRONLY)
    try:
        os.write(fd, commands.encode())
    finally:
        os.close(fd)


def counts(mnt: Path) -> tuple[int, int, int, float, float]:
    """(allocated, freed, failed) over the tasks, model time and behind, from the file."""
    text = (mnt / CONTROL).read_text()
    head = HEAD.search(text.splitlines()[0])
    assert head is not None, text
    got = [tuple(map(int, m.groups())) for m in COUNTS.finditer(text)]
    return (sum(g[0] for g in got), sum(g[1] for g in got), sum(g[2] for g in got),
            float(head[1]), float(head[2]))


def read_loop(mnt: Path, n: int) -> list[float]:
    """n open/read/close of two node files in turn; each one's seconds."""
    paths = [str(mnt / "sys/devices/system/node/node0" / f) for f in ("meminfo", "numastat")]
    out = []
    for i in range(n):
        t = time.perf_counter()
        fd = os.open(paths[i & 1], os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
        out.append(time.perf_counter() - t)
    return out


def us(values: list[float]) -> tuple[float, float, float]:
    """(median, mean, 99th percentile) in microseconds."""
    s = sorted(values)
    return (statistics.median(s) * 1e6, statistics.fmean(s) * 1e6,
            s[int(0.99 * len(s))] * 1e6)


def bench_workload(mounts: Mounts, notes: list[str]) -> list[Row]:
    mnt, _, _ = mounts.mount()
    idle: list[list[float]] = []
    busy: list[list[float]] = []
    rates: list[tuple[float, float, float]] = []
    behind = 0.0
    failed = 0
    each = RATE // len(TASKS)
    try:
        for _ in range(ROUNDS):
            idle.append(read_loop(mnt, READS))
            write(mnt, "\n".join(f"task {name} cpu {cpu} rate {each} pages {PAGES} "
                                 "mix anon=2,file=1,slab=1" for name, cpu in TASKS))
            time.sleep(1.0)     # past the first `pages`, where nothing is freed yet
            a0, f0, x0, m0, b0 = counts(mnt)
            t0 = time.perf_counter()
            busy.append(read_loop(mnt, READS))
            a1, f1, x1, m1, b1 = counts(mnt)
            dt = time.perf_counter() - t0
            rates.append(((a1 - a0) / dt, (f1 - f0) / dt, (m1 - m0) / dt))
            behind, failed = max(behind, b1), failed + x1 - x0
            check = (mnt / "sys/kernel/debug/dnumafs/check").read_text()
            if check:
                notes.append(f"workload bench: the invariant checker found {check!r}")
            write(mnt, "stop all")
        over = overload(mnt)
    finally:
        mounts.umount(mnt)
    alloc = statistics.median(r[0] for r in rates)
    freed = statistics.median(r[1] for r in rates)
    model = statistics.median(r[2] for r in rates)
    i_med, i_mean, i_p99 = (statistics.median(x) for x in zip(*map(us, idle)))
    b_med, b_mean, b_p99 = (statistics.median(x) for x in zip(*map(us, busy)))
    notes.append(f"workload bench: model seconds per wall second {model:.2f}, behind at most "
                 f"{behind:.3f} s, {failed} allocations failed")
    met = alloc >= AIM_RATE and freed >= AIM_RATE
    o_alloc, o_model, o_behind = over
    return [
        Row(f"workload in the daemon: {RATE:,} allocations/s asked of {len(TASKS)} tasks "
            f"(order 0, {PAGES} pages each), median of {ROUNDS}: allocations / frees per s",
            f"{alloc:,.0f} / {freed:,.0f}", f">= {AIM_RATE:,} each", met),
        Row(f"reader of node0/meminfo+numastat, daemon idle: median / mean / p99, "
            f"{ROUNDS}x{READS:,}", f"{i_med:.1f} / {i_mean:.1f} / {i_p99:.1f} us", "-"),
        Row("the same reader while the workload runs: median / mean / p99",
            f"{b_med:.1f} / {b_mean:.1f} / {b_p99:.1f} us = idle x {b_med / i_med:.2f} / "
            f"x {b_mean / i_mean:.2f} / x {b_p99 / i_p99:.2f}",
            f"mean <= idle x {AIM_RATIO:.0f}", b_mean <= AIM_RATIO * i_mean),
        Row(f"workload asked {OVER_RATE:,} allocations/s for {OVER_S:.0f} s (more than it "
            "can): allocations/s done, model s per wall s, `behind` at the end",
            f"{o_alloc:,.0f}/s, {o_model:.2f}, {o_behind:.1f} s", "-"),
    ]


OVER_RATE = 1_000_000
OVER_S = 3.0


def overload(mnt: Path) -> tuple[float, float, float]:
    """Ask for more than the machine can do, no reader: (allocations/s done, model seconds
    per wall second, behind at the end)."""
    each = OVER_RATE // len(TASKS)
    write(mnt, "\n".join(f"task {name} cpu {cpu} rate {each} pages {PAGES}"
                         for name, cpu in TASKS))
    time.sleep(1.0)
    a0, _, _, m0, _ = counts(mnt)
    t0 = time.perf_counter()
    time.sleep(OVER_S)
    a1, _, _, m1, behind = counts(mnt)
    dt = time.perf_counter() - t0
    write(mnt, "stop all")
    return (a1 - a0) / dt, (m1 - m0) / dt, behind


def run_all(notes: list[str]) -> list[Row]:
    mounts = Mounts()
    try:
        return bench_workload(mounts, notes)
    finally:
        mounts.close()


def main() -> int:
    from .report import table
    notes: list[str] = []
    print(table(run_all(notes)))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
