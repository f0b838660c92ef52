"""The process view's rows: trapped calls per second under `dnumafs run`, and what the filter
costs a call it does not trap, against the same program under `--no-syscalls`."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING

from .report import Row, median_range

if TYPE_CHECKING:
    from .fs import Mounts

# N calls of get_mempolicy (trapped) or getppid (not), timed by the program itself.
RATE_C = r"""
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	long n = atol(argv[2]);
	int mode;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		if (!strcmp(argv[1], "trapped"))
			syscall(__NR_get_mempolicy, &mode, NULL, 0, NULL, 0);
		else
			syscall(__NR_getppid);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", n / (b.tv_sec - a.tv_sec + (b.tv_nsec - a.tv_nsec) * 1e-9));
	return 0;
}
"""
TRAPPED_CALLS = 20_000
UNTRAPPED_CALLS = 2_000_000
RUNS = 3


def bench_syscalls(mounts: Mounts, notes: list[str]) -> list[Row]:
    from .fs import cli
    if shutil.which("gcc") is None:
        notes.append("process view: no gcc, so its rows are missing")
        return []
    src, exe = mounts.base / "rate.c", mounts.base / "rate"
    src.write_text(RATE_C)
    r = subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        notes.append(f"process view: building the rate program failed: {r.stderr[-500:]}")
        return []
    mnt, _, _ = mounts.mount("--nodes", "8", "--cpus", "8")

    def rate(*args: str) -> float:
        r = cli("run", *args, timeout=120)
        if r.returncode != 0 or not re.fullmatch(r"[\d.]+\n", r.stdout):
            raise RuntimeError(f"dnumafs run {' '.join(args)}: {r.stderr.strip()}")
        return float(r.stdout)
    try:
        trapped = [rate(str(mnt), "--", str(exe), "trapped", str(TRAPPED_CALLS))
                   for _ in range(RUNS)]
        filtered = [rate(str(mnt), "--", str(exe), "untrapped", str(UNTRAPPED_CALLS))
                    for _ in range(RUNS)]
        bare = [rate("--no-syscalls", str(mnt), "--", str(exe), "untrapped",
                     str(UNTRAPPED_CALLS)) for _ in range(RUNS)]
    except RuntimeError as e:
        notes.append(f"process view: {e}")
        return []
    finally:
        mounts.umount(mnt)
    med, lo, hi = median_range(trapped)
    f_med, _, _ = median_range(filtered)
    b_med, _, _ = median_range(bare)
    slowdown = (b_med / f_med - 1) * 100
    return [Row(f"trapped calls (get_mempolicy) per second under `dnumafs run`, median of "
                f"{RUNS}", f"{med:,.0f}/s ({lo:,.0f}..{hi:,.0f})", "> 40,000/s on Linux 6.6+",
                med > 40_000),
            Row("an untrapped call (getppid) under the filter, against `--no-syscalls`",
                f"{1e9 / f_med:.0f} ns against {1e9 / b_med:.0f} ns ({slowdown:+.0f}%)",
                "none measurable", abs(slowdown) < 5)]
