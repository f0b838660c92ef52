"""`make bench`: the model's speed and memory, and the file system's through a real mount,
measured, with the aims beside them.

The model rows time Machine calls in this process. The file-system rows mount dnumafs with
`dnumafs mount` (a daemon in its own process, as a user runs it) and drive it only through its
files, as the seed's dnuma-test script drove the debugfs files; reads are compared with LXCFS's
/proc/meminfo (the established FUSE daemon for such files, mounted here in a temp dir) and the
real sysfs file in the same run, as ratios, since absolute times depend on the machine (a FUSE
request is a round trip between two processes). Figures are medians of several runs.
"""
from __future__ import annotations

import argparse
import gc
import os
import time

import attrs

from .cli import stripe_ranges
from .mm import Machine, MachineConfig

SEED_MINUTES = 9    # the original patch set's report for the seed scenario


@attrs.define
class Row:
    what: str
    value: str
    aim: str
    met: bool | None = None


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


def timed(fn, *args) -> tuple[float, object]:
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
    held = [m.alloc_pages(0, nid=0) for _ in range(pages)]
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


def table(rows: list[Row]) -> str:
    head = ("measure", "result", "aim", "met")
    cells = [head] + [(r.what, r.value, r.aim, "" if r.met is None else "yes" if r.met else "NO")
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(4)) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnumafs.bench", description=__doc__)
    parser.add_argument("--gib", type=int, default=64, help="size of the big machine")
    parser.add_argument("--model-only", action="store_true",
                        help="only the model rows (no mount, no LXCFS)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the daemon's read path with py-spy (bench extra)")
    args = parser.parse_args(argv)
    rows = bench_seed() + bench_big(args.gib) + bench_transplant()
    notes: list[str] = []
    if not args.model_only:
        from . import benchfs
        rows += benchfs.run_all(args.gib, notes, profile=args.profile)
    print(table(rows))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
