"""The events row of `make bench`: how long after a change its uevent reaches a reader."""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dnumafs import events

from .report import Row

if TYPE_CHECKING:
    from .fs import Mounts

CHANGES = 1000
AIM_MS = 10.0
MEMORY = "sys/devices/system/memory"


def _offlinable_block(mnt: Path) -> Path:
    """The online file of a block that offlines (one with nothing allocated in it), online."""
    blocks = sorted((mnt / MEMORY).glob("memory*/online"),
                    key=lambda p: int(p.parent.name.removeprefix("memory")), reverse=True)
    for online in blocks:
        with contextlib.suppress(OSError):
            online.write_text("0")
            online.write_text("1")
            return online
    raise RuntimeError("no memory block offlines")


def bench_event_delay(mounts: Mounts) -> list[Row]:
    """1,000 changes (a memory block offline, online, ...), one after another: each one's
    delay from the start of its write to the arrival of its uevent at a reader of the daemon's
    socket (the reader in another thread of this process)."""
    mnt, _, _ = mounts.mount("--nodes", "2", "--mem", "256M", "--block-size", "4M")
    online = _offlinable_block(mnt)
    devpath = "/devices/system/memory/" + online.parent.name
    arrived: list[float] = []
    with events.watch(mnt) as w:
        def read() -> None:
            for ev in w:
                if isinstance(ev, events.Uevent) and ev.devpath == devpath:
                    arrived.append(time.monotonic())
        threading.Thread(target=read, daemon=True).start()
        started = []
        fd = os.open(online, os.O_WRONLY)
        try:
            for i in range(CHANGES):
                started.append(time.monotonic())
                os.write(fd, b"0" if i % 2 == 0 else b"1")
        finally:
            os.close(fd)
        deadline = time.monotonic() + 30
        while len(arrived) < CHANGES and time.monotonic() < deadline:
            time.sleep(0.01)
    mounts.umount(mnt)
    if len(arrived) < CHANGES:
        return [Row(f"uevent delay after its change, {CHANGES:,} changes",
                    f"{len(arrived)} of {CHANGES} arrived", f"< {AIM_MS:.0f} ms", False)]
    delays = sorted((a - s) * 1e3 for a, s in zip(arrived, started, strict=True))
    worst = delays[-1]
    return [Row(f"uevent delay after its change (write start to arrival), {CHANGES:,} "
                "changes: median, 99th percentile, max",
                f"{statistics.median(delays):.2f} / {delays[int(0.99 * CHANGES)]:.2f} / "
                f"{worst:.2f} ms", f"each < {AIM_MS:.0f} ms", worst < AIM_MS)]
