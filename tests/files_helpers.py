"""Helpers for the file-tree tests: a small booted machine, and read/write through the tree as
the FUSE adapter does (Attr.read, each write whole to Attr.write), without a mount."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from dnumafs.files import build_root
from dnumafs.mm import Machine, MachineConfig
from dnumafs.vfs.tree import Attr, Dir, Symlink, resolve

MiB = 1 << 20

ML = "/sys/kernel/debug/memlayout"
NODE = "/sys/devices/system/node"
CPU = "/sys/devices/system/cpu"
BACKLOG_MAX = "/sys/module/memlayout_debugfs/parameters/backlog_max"


def boot(nodes: int = 2, mem: int = 64 * MiB, cpus: int = 4, possible_nodes: int = 4,
         **kw) -> Machine:
    return Machine.boot(MachineConfig(nodes=nodes, mem=mem, cpus=cpus,
                                      possible_nodes=possible_nodes, **kw))


class Tree:
    """A machine and its file tree, read and written by path."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.root = build_root(m)

    def node(self, path: str):
        return resolve(self.root, path)

    def read(self, path: str) -> str:
        node = self.node(path)
        assert isinstance(node, Attr), f"{path} is not a file"
        assert node.show is not None, f"{path} has no show"
        return node.read().decode()

    def write(self, path: str, data: str | bytes) -> int | None:
        """None on success, else the errno the write would fail with."""
        node = self.node(path)
        assert isinstance(node, Attr), f"{path} is not a file"
        assert node.store is not None, f"{path} has no store"
        try:
            node.write(data.encode() if isinstance(data, str) else data)
        except OSError as e:
            return e.errno
        return None

    def ls(self, path: str) -> list[str]:
        node = self.node(path)
        assert isinstance(node, Dir), f"{path} is not a directory"
        return list(node.names())

    def readlink(self, path: str) -> str:
        node = self.node(path)
        assert isinstance(node, Symlink), f"{path} is not a symlink"
        return node.target()

    def add_range(self, start: int, end: int, nid: int) -> None:
        assert self.write(f"{ML}/start", f"{start:#x}\n") is None
        assert self.write(f"{ML}/end", f"{end:#x}\n") is None
        assert self.write(f"{ML}/node", f"{nid}\n") is None


def node_meminfo(text: str) -> dict[str, int]:
    """{key: value} of a nodeN/meminfo, checking every line's Linux format on the way."""
    out = {}
    for line in text.splitlines():
        m = (re.fullmatch(r"Node \d+ (\S+):( +)(\d+) kB", line)
             or re.fullmatch(r"Node \d+ (HugePages_\w+):( +)(\d+)", line))
        assert m, f"bad meminfo line {line!r}"
        out[m[1]] = int(m[3])
    return out


def proc_meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+):( +)(\d+)( kB)?", line)
        assert m, f"bad meminfo line {line!r}"
        out[m[1]] = int(m[3])
    return out


def key_values(text: str) -> dict[str, int]:
    """{name: value} of `name value` lines (numastat, vmstat)."""
    out = {}
    for line in text.splitlines():
        name, value = line.split(" ")
        out[name] = int(value)
    return out


def buddyinfo(text: str) -> dict[tuple[int, str], list[int]]:
    out = {}
    for line in text.splitlines(keepends=True):
        m = re.fullmatch(r"Node (\d+), zone +(\S+) ((?: +\d+ ){11})\n", line)
        assert m, f"bad buddyinfo line {line!r}"
        out[(int(m[1]), m[2])] = [int(x) for x in m[3].split()]
    return out


def zoneinfo(text: str) -> dict[tuple[int, str], dict[str, int]]:
    """{(nid, zone): {"free", "min", ..., "managed", "start_pfn"}} of /proc/zoneinfo."""
    out: dict[tuple[int, str], dict[str, int]] = {}
    cur: dict[str, int] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"Node (\d+), zone +(\S+)", line):
            cur = out[(int(m[1]), m[2])] = {}
        elif m := re.fullmatch(r"  pages free +(\d+)", line):
            cur["free"] = int(m[1])
        elif m := re.fullmatch(r" {8}(min|low|high|spanned|present|managed) +(\d+)", line):
            cur[m[1]] = int(m[2])
        elif m := re.fullmatch(r"  start_pfn: +(\d+)", line):
            cur["start_pfn"] = int(m[1])
    return out


def node_list(text: str) -> list[int]:
    """Parse a `0-2,4\\n` node or cpu list."""
    assert text.endswith("\n")
    out = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def check_agreement(t, total_kb: int | None = None) -> dict[int, dict[str, int]]:
    """Every file tells the same story, and the sums are conserved (MemTotal stays total_kb).

    t is anything with read(path) and ls(path): a Tree, or a mounted file system. Reads only
    files, so it works on both. Returns the nodes' meminfo."""
    online = node_list(t.read(f"{NODE}/online"))
    assert [n for n in t.ls(NODE) if n.startswith("node")] == [f"node{n}" for n in online]
    meminfo = {n: node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in online}
    proc = proc_meminfo(t.read("/proc/meminfo"))
    buddy = buddyinfo(t.read("/proc/buddyinfo"))
    zones = zoneinfo(t.read("/proc/zoneinfo"))
    vmstat = key_values(t.read("/proc/vmstat"))
    has_memory = node_list(t.read(f"{NODE}/has_memory"))
    assert sum(i["MemTotal"] for i in meminfo.values()) == proc["MemTotal"]
    assert sum(i["MemFree"] for i in meminfo.values()) == proc["MemFree"]
    assert total_kb is None or proc["MemTotal"] == total_kb
    assert proc["MemFree"] == vmstat["nr_free_pages"] * 4
    assert sum(i["HugePages_Total"] for i in meminfo.values()) == proc["HugePages_Total"]
    assert {nid for nid, _ in zones} == set(online)
    for n in online:
        nz = {name: z for (nid, name), z in zones.items() if nid == n}
        assert sum(z["managed"] for z in nz.values()) * 4 == meminfo[n]["MemTotal"]
        assert sum(z["free"] for z in nz.values()) * 4 == meminfo[n]["MemFree"]
        assert meminfo[n]["MemUsed"] == meminfo[n]["MemTotal"] - meminfo[n]["MemFree"]
        assert (sum(z["present"] for z in nz.values()) > 0) == (n in has_memory)
        for name, z in nz.items():
            if z["present"]:
                counts = buddy[(n, name)]
                assert sum(c << o for o, c in enumerate(counts)) == z["free"]
            else:
                assert (n, name) not in buddy
    assert t.read(f"{NODE}/has_normal_memory") == t.read(f"{NODE}/has_memory")
    return meminfo


class Mounted:
    """A mount point read and written by path, through the kernel like any user."""

    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt

    def path(self, path: str) -> Path:
        return self.mnt / path.lstrip("/")

    def read(self, path: str) -> str:
        with open(self.path(path)) as f:
            return f.read()

    def ls(self, path: str) -> list[str]:
        return os.listdir(self.path(path))

    def write(self, path: str, data: str | bytes) -> int | None:
        """One write(2), as echo does; None on success, else its errno."""
        try:
            fd = os.open(self.path(path), os.O_WRONLY)
        except OSError as e:
            return e.errno
        try:
            n = os.write(fd, data.encode() if isinstance(data, str) else data)
            assert n == len(data), "a store must take the whole write"
        except OSError as e:
            return e.errno
        finally:
            os.close(fd)
        return None

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run a bash script in MNT/sys/kernel/debug/memlayout."""
        return subprocess.run(["bash", "-c", script], cwd=self.path(ML), capture_output=True,
                              text=True, timeout=60)

    def layouts(self) -> list[str]:
        return sorted((n for n in self.ls(ML) if n.startswith("layout.")),
                      key=lambda n: int(n.split(".")[1]))
