"""The pictures' row: `dnumafs map` of a 64 GiB machine (16M pfns) after a restripe, process
start included, timed from the command line as a user runs it. The map reads all of
proc/kpageflags (128 MiB) and page_nid (32 MiB) through the mount, the zones, the memory
blocks and every range file of the current layout."""
from __future__ import annotations

import statistics
import time

from .fs import Mounts, cli
from .report import Row

STRIPE_PFNS = 65536         # 256 MiB stripes: 256 ranges on 64 GiB
RUNS = 3


def bench_map(gib: int) -> list[Row]:
    mounts = Mounts()
    try:
        mnt, _, _ = mounts.mount("--nodes", "4", "--mem", f"{gib}G")
        r = cli("stripe", mnt, "0", "3", str(STRIPE_PFNS))
        if r.returncode != 0:
            raise RuntimeError(f"dnumafs stripe failed: {r.stderr.strip()}")
        times = {}
        for suffix in ("svg", "png"):
            out = mounts.base / f"map.{suffix}"
            runs = []
            for _ in range(RUNS):
                t = time.perf_counter()
                r = cli("map", mnt, "-o", out)
                runs.append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise RuntimeError(f"dnumafs map failed: {r.stderr.strip()}")
            times[suffix] = runs
    finally:
        mounts.close()
    return [Row(f"{gib} GiB/4 nodes, {(gib << 18) // STRIPE_PFNS} ranges: "
                f"`dnumafs map MNT -o FILE.{suffix}` (process start included), median of "
                f"{RUNS}", f"{statistics.median(runs):.2f} s ({min(runs):.2f}..{max(runs):.2f})",
                "< 5 s", statistics.median(runs) < 5)
            for suffix, runs in times.items()]
