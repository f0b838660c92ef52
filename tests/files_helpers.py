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
    """{(nid, zone): {"free", "min", ..., "managed", "start_pfn", counters...}} of
    /proc/zoneinfo: the per-node stats under the first populated zone as "node:NAME", its
    protection as "protection:J" for each zone type J."""
    out: dict[tuple[int, str], dict[str, int]] = {}
    cur: dict[str, int] = {}
    prefix = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"Node (\d+), zone +(\S+)", line):
            cur = out[(int(m[1]), m[2])] = {}
        elif line == "  per-node stats":
            prefix = "node:"
        elif m := re.fullmatch(r"  pages free +(\d+)", line):
            cur["free"] = int(m[1])
            prefix = ""
        elif m := re.fullmatch(r" {8}(boost|min|low|high|promo|spanned|present|managed|cma)"
                               r" +(\d+)", line):
            cur[m[1]] = int(m[2])
        elif m := re.fullmatch(r" {8}protection: \((\d+(?:, \d+)*)\)", line):
            cur.update((f"protection:{j}", int(v)) for j, v in enumerate(m[1].split(", ")))
        elif m := re.fullmatch(r" {6}(\w+) +(\d+)", line):
            assert len(m[1]) >= 12 or len(line) == 6 + 12 + 1 + len(m[2]), line
            cur[prefix + m[1]] = int(m[2])
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
    check_sums(t, online, meminfo, proc, zones, vmstat)
    return meminfo


def check_sums(t, online: list[int], meminfo: dict[int, dict[str, int]], proc: dict[str, int],
               zones: dict[tuple[int, str], dict[str, int]], vmstat: dict[str, int]) -> None:
    """What Linux sums adds up: every key nodeN/meminfo and /proc/meminfo share (Cached is
    the file pages less swap cache and buffers), every nodeN/vmstat counter, and in zoneinfo
    each node's per-node stats and the zone counters and NUMA events over its zones."""
    shared = [k for k in meminfo[online[0]] if k in proc]
    assert len(shared) > 30, shared
    for key in shared:
        assert sum(i[key] for i in meminfo.values()) == proc[key], key
    assert proc["Cached"] == (sum(i["FilePages"] for i in meminfo.values())
                              - proc["SwapCached"] - proc["Buffers"])
    node_vmstat = {n: key_values(t.read(f"{NODE}/node{n}/vmstat")) for n in online}
    for key in node_vmstat[online[0]]:
        assert sum(v[key] for v in node_vmstat.values()) == vmstat[key], key
    for n in online:
        nz = [z for (nid, _), z in zones.items() if nid == n]
        per_node = [z for z in nz if any(k.startswith("node:") for k in z)]
        populated = [z for z in nz if z["present"]]
        assert len(per_node) == (1 if populated else 0) and per_node[:1] == populated[:1]
        for key, value in node_vmstat[n].items():
            in_zones = [z[key] for z in populated if key in z]
            if in_zones and key.startswith("numa_") and len(populated) < len(nz):
                # a zone emptied by a commit keeps its events, which zoneinfo no longer shows
                assert sum(in_zones) <= value, (n, key)
            elif in_zones:
                assert sum(in_zones) == value, (n, key)
            elif per_node:
                assert per_node[0][f"node:{key}"] == value, (n, key)


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


# The nodeN/meminfo keys of what drop_caches does not free, which add up to all that boot
# allocated and that drop_caches leaves.
KEPT_BY_DROP_CACHES = ("AnonPages", "Shmem", "SUnreclaim", "PageTables", "KernelStack")


# --- this machine's own files, the reference for keys and their order -------------------------

# Keys a kernel prints only with a configuration option; the model's kernel has these
# options (a distribution's x86-64 configuration), this machine's kernel may lack them: they
# alone may differ between the two.
CONFIG_KEYS = {
    "HardwareCorrupted": "CONFIG_MEMORY_FAILURE",
    "CmaTotal": "CONFIG_CMA", "CmaFree": "CONFIG_CMA",
    "cma_alloc_success": "CONFIG_CMA", "cma_alloc_fail": "CONFIG_CMA",
    "Unaccepted": "CONFIG_UNACCEPTED_MEMORY", "nr_unaccepted": "CONFIG_UNACCEPTED_MEMORY",
}
HOST_NODE0 = Path("/sys/devices/system/node/node0")


def meminfo_keys(text: str) -> list[str]:
    """The keys of a /proc/meminfo or nodeN/meminfo, in order, config-dependent ones left out."""
    keys = [re.sub(r"^Node \d+ ", "", line).split(":")[0] for line in text.splitlines()]
    return [k for k in keys if k not in CONFIG_KEYS]


def vmstat_keys(text: str) -> list[str]:
    return [k for k in (line.split()[0] for line in text.splitlines()) if k not in CONFIG_KEYS]


def zoneinfo_sections(text: str) -> list[tuple[str, list[str]]]:
    """(zone name, its lines' shapes) of each zone in zoneinfo: each line less its figures,
    indentation kept; the per-CPU blocks after the first left out, as CPU counts differ."""
    out: list[tuple[str, list[str]]] = []
    skipping = False
    for line in text.splitlines():
        if m := re.fullmatch(r"Node \d+, zone +(\S+)", line):
            out.append((m[1], []))
            skipping = False
            continue
        shape = re.sub(r"[\s\d,()]*$", "", line)
        if shape == "    cpu:" and "    cpu:" in out[-1][1]:
            skipping = True
        if shape == "  node_unreclaimable:":
            skipping = False
        if not skipping and shape.split()[0] not in CONFIG_KEYS:
            out[-1][1].append(shape + (f" {line.count(',') + 1}" if "protection" in line
                                       else ""))
    return out
