"""A client of the mounted files: what a script on a dnuma kernel reads and writes, as code.

MountedTree reads the node sysfs, /proc/zoneinfo and the debugfs memlayout directory of one
mount (or of a real kernel's /); MemlayoutWriter stages and commits layouts through the
debugfs files. The command line, the bench and the tests use them; they know nothing of how
the mount was made.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from dnumafs.lib.bitmap import bitmap_list, bitmap_parselist

NODE_DIR = "sys/devices/system/node"
MEMLAYOUT_DIR = "sys/kernel/debug/memlayout"
ZONEINFO = "proc/zoneinfo"
DNUMAFS_DEBUG_DIR = "sys/kernel/debug/dnumafs"
MARKED_PAGES = f"{DNUMAFS_DEBUG_DIR}/marked_pages"
WORKLOAD = f"{DNUMAFS_DEBUG_DIR}/workload"

_RANGE_NAME = re.compile(r"([0-9a-f]+)-([0-9a-f]+)")


@attrs.define(auto_exc=True)
class ClientError(Exception):
    """A file that could not be read or written, or did not hold what it should; the message
    names the file and says why. errno is the error the file gave, if it gave one."""

    message: str
    errno: int | None = None

    def __str__(self) -> str:
        return self.message


def _os_error(path: object, e: OSError, doing: str = "") -> ClientError:
    return ClientError(f"{path}: {doing}{e.strerror}", e.errno)


class MountedTree:
    """The files of one mounted dnumafs (or of a real kernel's /, for the readers)."""

    def __init__(self, mnt: str | os.PathLike[str]) -> None:
        self.root = Path(mnt)
        try:
            (self.root / NODE_DIR).stat()
        except OSError as e:
            raise ClientError(f"{mnt}: not a mounted dnumafs file system "
                              f"({NODE_DIR}: {e.strerror})") from None

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        try:
            return self.path(rel).read_text()
        except OSError as e:
            raise _os_error(self.path(rel), e) from None

    def write(self, rel: str, text: str) -> None:
        """One value in one write(2) at offset 0 (see MemlayoutWriter), as `echo TEXT > rel`
        but without the truncate; the file's errno if it refuses."""
        path = self.path(rel)
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            raise _os_error(path, e) from None
        try:
            os.pwrite(fd, text.encode(), 0)
        except OSError as e:
            raise _os_error(path, e, f"writing {text.strip()!r}: ") from None
        finally:
            os.close(fd)

    def read_int(self, rel: str) -> int:
        text = self.read(rel)
        try:
            return int(text)
        except ValueError:
            raise ClientError(f"{self.path(rel)}: not a number: {text.strip()!r}") from None

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except OSError as e:
            raise _os_error(self.path(rel), e) from None

    def _numbered(self, rel: str, pattern: str) -> list[int]:
        """The numbers of the entries of rel named by pattern (one group), ascending."""
        return sorted(int(m.group(1)) for n in self.listdir(rel)
                      if (m := re.fullmatch(pattern, n)))

    def node_ids(self) -> list[int]:
        """Nodes with a nodeN directory, as libnuma finds them (the online ones)."""
        return self._numbered(NODE_DIR, r"node(\d+)")

    def node_meminfo(self, nid: int) -> dict[str, int]:
        """nodeN/meminfo as key -> value (kB, or a count for HugePages_*)."""
        info = {}
        for line in self.read(f"{NODE_DIR}/node{nid}/meminfo").splitlines():
            fields = line.split()    # Node 0 MemTotal: 1048576 kB
            if len(fields) >= 4 and fields[2].endswith(":"):
                info[fields[2][:-1]] = int(fields[3])
        return info

    def node_cpulist(self, nid: int) -> str:
        """nodeN/cpulist as it reads (`0-1,4`), without its newline."""
        return self.read(f"{NODE_DIR}/node{nid}/cpulist").strip()

    def node_cpus(self, nid: int) -> list[int]:
        """The cpus in nodeN/cpumap (comma-separated 32-bit hex words), as libnuma reads."""
        words = self.read(f"{NODE_DIR}/node{nid}/cpumap").strip().replace(",", "")
        mask = int(words or "0", 16)
        return [cpu for cpu in range(mask.bit_length()) if mask >> cpu & 1]

    def node_distances(self, nid: int) -> list[int]:
        return [int(v) for v in self.read(f"{NODE_DIR}/node{nid}/distance").split()]

    def possible_nodes(self) -> list[int]:
        return bitmap_parselist(self.read(f"{NODE_DIR}/possible"))

    def max_pfn(self) -> int:
        """One past the highest pfn: the highest end (start_pfn + spanned) of a populated zone
        in /proc/zoneinfo. Every page lies in the span of its node's zone, so this covers all
        memory whatever the layout, and it is what a real kernel shows too."""
        spans = self.zone_spans()
        if not spans:
            raise ClientError(f"{self.path(ZONEINFO)}: no populated zone, cannot tell the "
                              f"highest pfn")
        return max(end for _, _, _, end in spans)

    def zone_spans(self) -> list[tuple[int, str, int, int]]:
        """(nid, zone name, start_pfn, start_pfn + spanned) of each populated zone of
        /proc/zoneinfo, in its order."""
        spans = []
        head: tuple[int, str] | None = None
        start = spanned = None
        # A zone's lines run from its "Node N, zone Z" line to the next (or a last sentinel).
        for line in self.read(ZONEINFO).splitlines() + ["Node"]:
            fields = line.replace(",", " ").split()
            if fields[:1] == ["Node"]:
                if head is not None and start is not None and spanned:
                    spans.append((*head, start, start + spanned))
                head = (int(fields[1]), fields[3]) if len(fields) >= 4 else None
                start = spanned = None
            elif fields[:1] == ["spanned"] and len(fields) == 2:
                spanned = int(fields[1])
            elif fields[:1] == ["start_pfn:"] and len(fields) == 2:
                start = int(fields[1])
        return spans

    def current_layout(self) -> str:
        try:
            return os.readlink(self.path(f"{MEMLAYOUT_DIR}/current"))
        except OSError as e:
            raise _os_error(f"{self.path(MEMLAYOUT_DIR)}/current", e) from None

    def layout_ids(self) -> list[int]:
        return self._numbered(MEMLAYOUT_DIR, r"layout\.(\d+)")

    def moved_pages(self) -> int:
        return self.read_int(f"{MEMLAYOUT_DIR}/moved-pages")

    def marked_pages(self) -> dict[int, int]:
        """The pages marked for transplant on each node (debugfs dnumafs/marked_pages, which
        lists only the nodes that have any)."""
        out = {}
        for line in self.read(MARKED_PAGES).splitlines():
            try:
                nid, pages = map(int, line.split())
            except ValueError:
                raise ClientError(f"{self.path(MARKED_PAGES)}: not `NID PAGES`: "
                                  f"{line!r}") from None
            out[nid] = pages
        return out

    def layout_range_files(self, name: str) -> list[tuple[int, int, str]]:
        """(start, end, file name) of each range of layout `name`, ascending, from the names
        of its SSSSS-EEEEE files alone: one readdir, whatever the number of ranges."""
        return sorted((int(m.group(1), 16), int(m.group(2), 16), n)
                      for n in self.listdir(f"{MEMLAYOUT_DIR}/{name}")
                      if (m := _RANGE_NAME.fullmatch(n)))

    def range_node(self, name: str, file: str) -> int:
        """The node of one range of layout `name`: its file's value."""
        return self.read_int(f"{MEMLAYOUT_DIR}/{name}/{file}")

    def layout_ranges(self, name: str) -> list[tuple[int, int, int]]:
        """(start, end, nid) of each range of layout `name` (one read per range)."""
        return [(s, e, self.range_node(name, f)) for s, e, f in self.layout_range_files(name)]


class MemlayoutWriter:
    """The debugfs memlayout files, opened once: each write(2) is one whole value, as debugfs
    attributes take them, so one open file serves any number of values."""

    FILES = ("start", "end", "node", "commit", "clear")

    def __init__(self, tree: MountedTree) -> None:
        self.fds: dict[str, int] = {}
        try:
            for name in self.FILES:
                path = tree.path(f"{MEMLAYOUT_DIR}/{name}")
                self.fds[name] = os.open(path, os.O_WRONLY)
        except OSError as e:
            self.close()
            raise _os_error(e.filename, e) from None
        self.tree = tree

    def write(self, name: str, value: int) -> None:
        text = f"{value:#x}\n" if name in ("start", "end") else f"{value}\n"
        try:        # at offset 0: a value never crosses a page of the kernel's cache
            os.pwrite(self.fds[name], text.encode(), 0)
        except OSError as e:
            raise _os_error(f"{self.tree.path(MEMLAYOUT_DIR)}/{name}", e,
                            f"writing {text.strip()}: ") from None

    def add_range(self, start: int, end: int, nid: int) -> None:
        self.write("start", start)
        self.write("end", end)
        self.write("node", nid)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> MemlayoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stripe_ranges(max_pfn: int, first: int, last: int, pfns: int
                  ) -> Iterator[tuple[int, int, int]]:
    """(start, end, nid): pfns 0..max_pfn-1 in stripes of `pfns` pages, nodes first..last in
    turn. (The seed's dnuma-test never advanced its pfn; this does.)"""
    nid = first
    for start in range(0, max_pfn, pfns):
        yield start, min(start + pfns, max_pfn) - 1, nid
        nid = first if nid == last else nid + 1


def commit_layout(tree: MountedTree, ranges: Iterable[tuple[int, int, int]]) -> int:
    """Replace any pending layout by `ranges` and commit it; returns the number of ranges.
    A range or commit the files refuse leaves no pending layout behind: the one staged so far
    is cleared, and the current layout is as it was."""
    with MemlayoutWriter(tree) as w:
        w.write("clear", 1)
        count = 0
        try:
            for start, end, nid in ranges:
                w.add_range(start, end, nid)
                count += 1
            w.write("commit", 1)
        except ClientError:
            with contextlib.suppress(ClientError):     # the first error is the one to tell
                w.write("clear", 1)
            raise
    return count


def stripe(tree: MountedTree, first: int, last: int, pfns: int) -> int:
    """Stripe all of tree's memory over nodes first..last, pfns a stripe; the ranges."""
    return commit_layout(tree, stripe_ranges(tree.max_pfn(), first, last, pfns))


def all_to(tree: MountedTree, nid: int) -> int:
    """Move all of tree's memory to node nid: one range over every pfn."""
    return commit_layout(tree, [(0, tree.max_pfn() - 1, nid)])


# what follows the seed (a running clock's lag) is not the clock's mode
_CLOCK_LINE = re.compile(r"# clock (manual|realtime) (running|paused) time (\S+) seed (\d+)\b.*")


@attrs.frozen
class WorkloadClock:
    """The first line of the workload control file: how the workload's model time moves."""

    manual: bool        # moved by `advance` only, else with wall time
    paused: bool        # a realtime clock stopped by `pause`
    time: float         # model seconds run so far
    seed: int

    def restore_commands(self) -> str:
        """The commands that bring a clock back to this one's mode (time and seed aside)."""
        if self.manual:
            return "clock manual"
        return "clock realtime\n" + ("pause" if self.paused else "resume")


def workload_clock(tree: MountedTree) -> WorkloadClock | None:
    """The workload's clock, or None when the daemon has no workload file."""
    try:
        first = tree.read(WORKLOAD).partition("\n")[0]
    except ClientError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    m = _CLOCK_LINE.fullmatch(first.rstrip())
    if m is None:
        raise ClientError(f"{tree.path(WORKLOAD)}: first line is not `# clock MODE STATE time "
                          f"SECONDS seed N`: {first!r}")
    try:
        time = float(m.group(3))
    except ValueError:
        raise ClientError(f"{tree.path(WORKLOAD)}: not a time: {m.group(3)!r}") from None
    return WorkloadClock(m.group(1) == "manual", m.group(2) == "paused", time, int(m.group(4)))


_TASK_RATE = re.compile(r"task \S+ .*?\brate (\d+)\b", re.MULTILINE)


def workload_rates(tree: MountedTree) -> list[int]:
    """The allocations per second of each of the workload's tasks (their `task` lines)."""
    return [int(rate) for rate in _TASK_RATE.findall(tree.read(WORKLOAD))]


def check_possible(tree: MountedTree, nid: int) -> None:
    possible = tree.possible_nodes()
    if nid not in possible:
        raise ClientError(f"node {nid} is not possible (possible nodes: "
                          f"{bitmap_list(possible)})")


STATUS_MAX_RANGES = 16


def status_text(tree: MountedTree) -> str:
    """Nodes, sizes, free memory, the current layout (its first ranges), pages moved. Only the
    ranges printed are read, so a layout of any size costs one readdir and a few reads."""
    max_pfn = tree.max_pfn()
    out = [f"possible nodes: {bitmap_list(tree.possible_nodes())}",
           f"online nodes:   {bitmap_list(tree.node_ids())}",
           f"pages:          {max_pfn} (pfn 0-{max_pfn - 1:#x})"]
    for nid in tree.node_ids():
        info = tree.node_meminfo(nid)
        cpus = bitmap_list(tree.node_cpus(nid)) or "none"
        out.append(f"node {nid}: {info.get('MemTotal', 0) // 1024} MB, "
                   f"{info.get('MemFree', 0) // 1024} MB free, cpus {cpus}")
    current = tree.current_layout()
    files = tree.layout_range_files(current)
    out.append(f"current layout: {current} "
               f"({len(files)} range{'s' if len(files) != 1 else ''})")
    for start, end, file in files[:STATUS_MAX_RANGES]:
        out.append(f"  {start:#07x}-{end:#07x} -> node {tree.range_node(current, file)}")
    if len(files) > STATUS_MAX_RANGES:
        out.append(f"  ... {len(files) - STATUS_MAX_RANGES} more")
    current_id = int(current.rpartition(".")[2])
    pending = [i for i in tree.layout_ids() if i > current_id]
    out.append("pending layout: " + (", ".join(f"layout.{i}" for i in pending) or "none"))
    out.append(f"moved pages:    {tree.moved_pages()}")
    return "\n".join(out) + "\n"


def hardware_text(tree: MountedTree) -> str:
    """What `numactl --hardware` prints, from the node files libnuma reads (node directories,
    nodeN/cpumap, nodeN/meminfo, nodeN/distance)."""
    nodes = tree.node_ids()
    out = [f"available: {len(nodes)} nodes ({bitmap_list(nodes)})"]
    for nid in nodes:
        out.append(f"node {nid} cpus:" + "".join(f" {c}" for c in tree.node_cpus(nid)))
        info = tree.node_meminfo(nid)
        out.append(f"node {nid} size: {info.get('MemTotal', 0) * 1024 >> 20} MB")
        out.append(f"node {nid} free: {info.get('MemFree', 0) * 1024 >> 20} MB")
    # nodeN/distance lists one value per online node, ascending. libnuma indexes it by node id,
    # which is only right for nodes 0..n-1; this pairs the values with the online nodes.
    # numactl prints each number with printf's "% 3d": a space for the sign, so 100 is " 100".
    out.append("node distances:")
    out.append("node " + "".join(f"{nid: 3d} " for nid in nodes))
    for nid in nodes:
        dist = tree.node_distances(nid)
        out.append(f"{nid: 3d}: " + "".join(f"{d: 3d} " for d in dist[:len(nodes)]))
    return "\n".join(out) + "\n"
