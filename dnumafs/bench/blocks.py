"""The memory blocks' rows of `make bench`: lsmem over many blocks, and offlining a free block,
both through a real mount."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

from .report import Row, median_range

if TYPE_CHECKING:
    from .fs import Mounts

BLOCKS_GIB = 64         # with 4 MiB blocks: 16,384 of them
BLOCK_SIZE = "4M"
RUNS = 3
OFFLINES = 20
LSMEM_COLUMNS = "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"


def write_state(path: str, word: bytes) -> tuple[float, int]:
    """One write of word to a block's state file: (seconds, errno or 0)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        t = time.perf_counter()
        try:
            os.write(fd, word)
        except OSError as e:
            return time.perf_counter() - t, e.errno or errno.EIO
        return time.perf_counter() - t, 0
    finally:
        os.close(fd)


def bench_blocks(mounts: Mounts, notes: list[str]) -> list[Row]:
    """lsmem --sysroot over 16,384 blocks, and offlining (then onlining) free blocks through
    memoryN/state; a block that holds slab or reserved pages refuses and is not timed."""
    mnt, _, _ = mounts.mount("--mem", f"{BLOCKS_GIB}G", "--nodes", "4",
                             "--block-size", BLOCK_SIZE)
    rows: list[Row] = []
    memory = mnt / "sys/devices/system/memory"
    nblocks = sum(1 for n in os.listdir(memory) if n.startswith("memory"))
    if shutil.which("lsmem"):
        # The first run asks the daemon for everything, the second for the attributes of what
        # the first read (see "Reads from the page cache"); from the third on the kernel
        # answers alone. Each is reported.
        runs = []
        for _ in range(2 + RUNS):
            t = time.perf_counter()
            subprocess.run(["lsmem", "--sysroot", str(mnt), "-o", LSMEM_COLUMNS],
                           check=True, capture_output=True, timeout=300)
            runs.append(time.perf_counter() - t)
            time.sleep(1)       # the daemon completes the listings lsmem read in part
        med, lo, hi = median_range(runs[2:])
        what = f"lsmem over {nblocks:,} blocks ({BLOCKS_GIB} GiB, {BLOCK_SIZE} blocks)"
        rows.append(Row(f"{what}: first run, then second", f"{runs[0]:.2f} s, {runs[1]:.2f} s",
                        "-"))
        rows.append(Row(f"{what}: later runs, median of {RUNS}",
                        f"{med:.2f} s ({lo:.2f}..{hi:.2f})", "< 1 s", med < 1))
    else:
        notes.append("lsmem: not installed, so its row is missing")
    offline, online, refused = [], [], 0
    for bid in range(nblocks // 8, nblocks, nblocks // 64):
        state = str(memory / f"memory{bid}/state")
        dt, err = write_state(state, b"offline")
        if err:
            refused += 1
            continue
        offline.append(dt)
        dt, err = write_state(state, b"online")
        assert not err, f"memory{bid} did not come back online: {os.strerror(err)}"
        online.append(dt)
        if len(offline) == OFFLINES:
            break
    assert (mnt / "sys/kernel/debug/dnumafs/check").read_text() == ""
    mounts.umount(mnt)
    for what, times in (("offline", offline), ("online", online)):
        med, lo, hi = median_range(times)
        rows.append(Row(f"{BLOCKS_GIB} GiB: {what} a free {BLOCK_SIZE} block through "
                        f"memoryN/state, median of {len(times)}",
                        f"{med * 1e3:.1f} ms ({lo * 1e3:.1f}..{hi * 1e3:.1f})", "< 10 ms",
                        med < 0.01))
    if refused:
        notes.append(f"blocks: {refused} blocks refused to go offline (slab or reserved pages) "
                     "and were not timed")
    return rows
