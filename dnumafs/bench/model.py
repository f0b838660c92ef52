"""The model's rows: Machine calls timed in this process."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import TypeVar

from dnumafs.client import stripe_ranges
from dnumafs.mm import Machine, MachineConfig

from .report import Row

T = TypeVar("T")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stage_stripes(m: Machine, first: int, last: int, pfns: int) -> int:
    """Stripe all memory over nodes first..last, pfns per stripe; returns ranges staged."""
    n = 0
    for start, end, nid in stripe_ranges(m.max_pfn, first, last, pfns):
        m.memlayout_add_range(start, end, nid)
        n += 1
    return n


def timed(fn: Callable[..., T], *args: object) -> tuple[float, T]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def bench_seed() -> list[Row]:
    """The seed's scenario: 128 MiB, 8 CPUs, 2 nodes, 256-pfn stripes over nodes 0..2."""
    m = Machine.boot(MachineConfig(nodes=2, mem=128 << 20, cpus=8))
    t_stage, n = timed(stage_stripes, m, 0, 2, 256)
    t_commit, _ = timed(m.memlayout_commit)
    assert m.check() == []
    return [
        Row(f"seed: stage {n} ranges (model)", f"{t_stage * 1e3:.1f} ms", "-"),
        Row("seed: commit (model)", f"{t_commit * 1e3:.1f} ms", "< 50 ms (seed: ~9 min)",
            t_commit < 0.050),
    ]


def bench_big(gib: int = 64) -> list[Row]:
    """64 GiB, 4 nodes: boot, then restripe over 8 nodes in 512-pfn stripes."""
    gc.collect()
    rss0 = rss_bytes()
    t_boot, m = timed(Machine.boot, MachineConfig(nodes=4, mem=gib << 30, cpus=16))
    per_page = (rss_bytes() - rss0) / m.max_pfn
    t_stage, n = timed(stage_stripes, m, 0, 7, 512)
    t_commit, _ = timed(m.memlayout_commit)
    moved = m.stats["moved-pages"]
    rows = [
        Row(f"{gib} GiB/4 nodes: boot", f"{t_boot:.2f} s", "< 3 s", t_boot < 3),
        Row(f"{gib} GiB/4 nodes: memory per page after boot", f"{per_page:.1f} B", "< 16 B",
            per_page < 16),
        Row(f"{gib} GiB: stage {n} ranges over 8 nodes", f"{t_stage:.2f} s", "-"),
        Row(f"{gib} GiB: commit restripe ({moved} pages moved)", f"{t_commit:.2f} s", "< 2 s",
            t_commit < 2),
    ]
    return rows


def transplant_rate(pages: int) -> float:
    m = Machine.boot(MachineConfig(nodes=2, mem=4 << 30, cpus=4, boot_alloc_percent=0))
    held = []
    for _ in range(pages):
        pfn = m.alloc_pages(0, nid=0)
        assert pfn is not None, "the machine ran out of pages"
        held.append(pfn)
    m.memlayout_add_range(0, m.max_pfn - 1, 2)
    m.memlayout_commit()
    t0 = time.perf_counter()
    for pfn in held:
        m.free_pages(pfn)
    dt = time.perf_counter() - t0
    assert m.stats["transplant-on-free"] == pages and m.check() == []
    return pages / dt


def bench_transplant(pages: int = 200_000, runs: int = 3) -> list[Row]:
    """Free marked order-0 pages one by one: each is looked up and transplanted."""
    rates = sorted(transplant_rate(pages) for _ in range(runs))
    rate = rates[len(rates) // 2]
    return [Row(f"free {pages} marked order-0 pages, median of {runs} "
                f"({rates[0]:,.0f}..{rates[-1]:,.0f})", f"{rate:,.0f} pages/s",
                "> 200,000 pages/s", rate > 200_000)]
