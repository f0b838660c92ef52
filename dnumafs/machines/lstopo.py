"""What lstopo prints for a tree of /sys and /proc (a snapshot or a mount), and how two differ.

lstopo reads the tree through HWLOC_FSROOT with only the Linux backend, so the machine it
describes is the tree's, not the host's. The checks of SPEC section 6 compare its verbose
output (`-v --no-io`) and its distance matrices (`--distances`).
"""
from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

from .description import MachineError

LSTOPO = "lstopo-no-graphics"
MODES = {"verbose": ("-v", "--no-io"), "distances": ("--distances",)}
TIMEOUT = 60    # seconds; lstopo reads a few thousand files


def lstopo(root: str | os.PathLike[str], *args: str) -> str:
    """lstopo's output for the tree at root."""
    env = dict(os.environ, HWLOC_FSROOT=str(Path(root).resolve()),
               HWLOC_COMPONENTS="linux,stop", HWLOC_ALLOW="all")
    try:
        r = subprocess.run([LSTOPO, *args], env=env, capture_output=True, text=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MachineError(f"{LSTOPO}: {e}") from None
    if r.returncode != 0:
        raise MachineError(f"{LSTOPO} {' '.join(args)} on {root}: status {r.returncode}: "
                           f"{r.stderr.strip()}")
    return r.stdout + r.stderr


def lstopo_diff(expected: str | os.PathLike[str], actual: str | os.PathLike[str]
                ) -> dict[str, str]:
    """For each of MODES whose output differs between the two trees, a unified diff
    (expected first); empty when lstopo prints the same for both."""
    out = {}
    for mode, args in MODES.items():
        a, b = lstopo(expected, *args), lstopo(actual, *args)
        if a != b:
            out[mode] = "".join(difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True),
                fromfile=f"{expected} ({mode})", tofile=f"{actual} ({mode})"))
    return out
