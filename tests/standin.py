"""A small stand-in tree for testing the FUSE adapter and the command line without the model.

`dnumafs mount MNT --tree standin:build_root [--nodes N --mem SIZE ...]` serves it (tests put
this directory on PYTHONPATH). It has two parts:

- /test: files that exercise the adapter (snapshots, writes, errors, dynamic directories);
- /sys and /proc: a toy machine whose pages are only a pfn -> node map, with the memlayout
  debugfs files and the node files that `stripe`, `all-to`, `status` and `hardware` use.
  Nodes' sizes are their page counts; a tenth of each node is "used". It is no model of the
  allocator: just enough to tell whether the commands write and read the right files.
"""
from __future__ import annotations

import copy
import errno
import threading
from collections.abc import Iterable

import attrs
import numpy as np

from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.vfs.tree import DEBUGFS, Attr, Dir, DynamicDir, Node, StaticDir, Symlink

PAGE_SIZE = 4096


# --- /test ----------------------------------------------------------------------------------

@attrs.define
class AdapterState:
    """What the /test files show and remember."""

    value: int = 0
    opens: int = 0
    writes: list[bytes] = attrs.field(factory=list)
    entries: int = 3
    lock: threading.Lock = attrs.field(factory=threading.Lock)


def big_text(n: int = 20000) -> str:
    """The content of /test/big: numbered lines, far more than one read."""
    return "".join(f"line {i:06d}\n" for i in range(n))


def _test_dir(st: AdapterState) -> Dir:
    def show_counter() -> str:
        with st.lock:
            st.opens += 1
            n = st.opens
        return big_text(2000).replace("line", f"open {n:06d} line")

    def store_value(data: bytes) -> None:
        v = kstrtoull(data)
        with st.lock:
            st.value = v
            st.writes.append(bytes(data))

    def store_entries(data: bytes) -> None:
        v = kstrtoull(data)
        if v > 1000:
            raise OSError(errno.EINVAL, "too many")
        st.entries = v

    def store_log(data: bytes) -> None:
        with st.lock:
            st.writes.append(bytes(data))

    def raise_(exc: BaseException):
        def show() -> str:
            # a fresh one each time, as a bug raises it: one instance raised again and again
            # would carry every earlier raise's frames in its traceback
            raise copy.copy(exc).with_traceback(None)
        return show

    def entries() -> DynamicDir:
        names = lambda: [f"item{i}" for i in range(st.entries)]  # noqa: E731
        return DynamicDir(names=names,
                          lookup=lambda n: Attr(show=lambda: f"{n}\n")
                          if n in names() else None)

    return StaticDir({
        "big": Attr(show=big_text),
        "counter": Attr(show=show_counter),
        "value": Attr(show=lambda: f"{st.value}\n", store=store_value),
        "secret": Attr(show=lambda: f"{st.value}\n", store=store_value, fs=DEBUGFS),
        "readonly": Attr(show=lambda: "ro\n"),
        "writeonly": Attr(store=store_log),
        "writes": Attr(show=lambda: "".join(f"{w!r}\n" for w in st.writes)),
        "nr_entries": Attr(show=lambda: f"{st.entries}\n", store=store_entries),
        "entries": entries(),
        "link": Symlink(lambda: f"entries/item{st.entries - 1}"),
        "oserror_noerrno": Attr(show=raise_(OSError("no errno"))),
        "runtime_error": Attr(show=raise_(RuntimeError("bug"))),
        "system_exit": Attr(show=raise_(SystemExit(3))),
        "keyboard_interrupt": Attr(show=raise_(KeyboardInterrupt())),
        "enodev": Attr(show=raise_(OSError(errno.ENODEV, "gone"))),
    })


# --- /sys and /proc: the toy machine ----------------------------------------------------------

class ToyMachine:
    """A pfn -> node map with layouts, committed as dnuma would, minus the allocator."""

    def __init__(self, nodes: int = 2, mem: int = 64 << 20, node_mem: list[int] | None = None,
                 cpus: int = 4, possible_nodes: int = 8) -> None:
        if not 1 <= nodes <= possible_nodes or not 1 <= cpus <= 256:
            raise ValueError(f"impossible machine: {nodes} nodes of {possible_nodes}, {cpus} cpus")
        share = mem // PAGE_SIZE // nodes
        sizes = [m // PAGE_SIZE for m in node_mem] if node_mem else \
            [share] * (nodes - 1) + [mem // PAGE_SIZE - share * (nodes - 1)]
        self.lock = threading.Lock()
        self.max_pfn = sum(sizes)
        self.possible = possible_nodes
        self.page_node = np.repeat(np.arange(nodes, dtype=np.int8), sizes)
        self.cpu_node = [c * nodes // cpus for c in range(cpus)]
        self.online = set(range(nodes))
        starts = np.cumsum([0] + sizes[:-1])
        self.layouts: dict[int, list[tuple[int, int, int]]] = {
            0: [(int(s), int(s) + n - 1, i) for i, (s, n) in enumerate(zip(starts, sizes))]}
        self.current = 0
        self.pending: int | None = None
        self.next_id = 1
        self.start = self.end = 0
        self.moved = 0

    # debugfs
    def add_range(self, nid: int) -> None:
        with self.lock:
            if nid >= self.possible or self.start > self.end:
                raise OSError(errno.EINVAL, "bad range")
            pending = self.layouts.get(self.pending, []) if self.pending is not None else []
            for s, e, _ in pending:
                if s <= self.end and self.start <= e:
                    raise OSError(errno.EEXIST, "overlap")
            if self.pending is None:
                self.pending, self.next_id = self.next_id, self.next_id + 1
                self.layouts[self.pending] = []
            self.layouts[self.pending].append((self.start, self.end, nid))
            self.start = self.end = 0

    def commit(self) -> None:
        with self.lock:
            if self.pending is None:
                return
            new = self.page_node.copy()
            for s, e, nid in self.layouts[self.pending]:
                new[s:min(e, self.max_pfn - 1) + 1] = nid
                self.online.add(nid)
            self.moved += int(np.count_nonzero(new != self.page_node))
            self.page_node = new
            self.current, self.pending = self.pending, None
            for old in sorted(self.layouts)[:-9]:
                del self.layouts[old]

    def clear(self) -> None:
        with self.lock:
            if self.pending is not None:
                del self.layouts[self.pending]
                self.pending = None

    # node figures
    def node_pages(self, nid: int) -> int:
        return int(np.count_nonzero(self.page_node == nid))

    def node_span(self, nid: int) -> tuple[int, int] | None:
        pfns = np.flatnonzero(self.page_node == nid)
        return (int(pfns[0]), int(pfns[-1]) + 1) if len(pfns) else None


def _node_list(ids: Iterable[int]) -> str:
    from dnumafs.lib.bitmap import bitmap_list
    return bitmap_list(list(ids)) + "\n"


def _cpumap(cpus: list[int], nr_cpus: int) -> str:
    mask = sum(1 << c for c in cpus)
    words = [(mask >> (32 * i)) & 0xFFFFFFFF for i in reversed(range((nr_cpus + 31) // 32))]
    hexdigits = (nr_cpus % 32 + 3) // 4 or 8
    return ",".join([f"{words[0]:0{hexdigits}x}"] + [f"{w:08x}" for w in words[1:]]) + "\n"


def _machine_tree(m: ToyMachine) -> dict[str, Node]:
    def set_pfn(which: str):
        def store(data: bytes) -> None:
            setattr(m, which, kstrtoull(data))
        return store

    def store_node(data: bytes) -> None:
        m.add_range(kstrtoull(data))

    def layout_dir(lid: int) -> Dir:
        ranges = {f"{s:05x}-{e:05x}": Attr(show=lambda nid=nid: f"{nid}\n", fs=DEBUGFS)
                  for s, e, nid in m.layouts.get(lid, [])}
        return StaticDir(ranges)

    def memlayout_names() -> list[str]:
        return [*static, *(f"layout.{i}" for i in sorted(m.layouts))]

    def memlayout_lookup(name: str) -> Node | None:
        if name in static:
            return static[name]
        if name.startswith("layout.") and name[7:].isdigit() and int(name[7:]) in m.layouts:
            return layout_dir(int(name[7:]))
        return None

    static: dict[str, Node] = {
        "start": Attr(show=lambda: f"0x{m.start:016x}\n", store=set_pfn("start"), fs=DEBUGFS),
        "end": Attr(show=lambda: f"0x{m.end:016x}\n", store=set_pfn("end"), fs=DEBUGFS),
        "node": Attr(store=store_node, fs=DEBUGFS),
        "commit": Attr(store=lambda data: m.commit(), fs=DEBUGFS),
        "clear": Attr(store=lambda data: m.clear(), fs=DEBUGFS),
        "current": Symlink(lambda: f"layout.{m.current}"),
        "moved-pages": Attr(show=lambda: f"{m.moved}\n", fs=DEBUGFS),
    }

    def meminfo(nid: int) -> str:
        total = m.node_pages(nid) * 4
        free = total - total // 10
        lines = [("MemTotal:", total), ("MemFree:", free), ("MemUsed:", total - free)]
        text = "".join(f"Node {nid} {k:<16}{v:8d} kB\n" for k, v in lines)
        return text + "".join(f"Node {nid} {k} {0:5d}\n" for k in
                              ("HugePages_Total:", "HugePages_Free:", "HugePages_Surp:"))

    def node_dir(nid: int) -> Dir:
        cpus = [c for c, n in enumerate(m.cpu_node) if n == nid]
        return StaticDir({
            "meminfo": Attr(show=lambda: meminfo(nid)),
            "cpumap": Attr(show=lambda: _cpumap(cpus, len(m.cpu_node))),
            "cpulist": Attr(show=lambda: _node_list(cpus)),
            "distance": Attr(show=lambda: " ".join("10" if n == nid else "20"
                                                   for n in sorted(m.online)) + "\n"),
        })

    node_static: dict[str, Node] = {
        "possible": Attr(show=lambda: _node_list(range(m.possible))),
        "online": Attr(show=lambda: _node_list(m.online)),
        "has_memory": Attr(show=lambda: _node_list(n for n in sorted(m.online)
                                                   if m.node_pages(n))),
        "has_cpu": Attr(show=lambda: _node_list(sorted(set(m.cpu_node)))),
    }

    def node_lookup(name: str) -> Node | None:
        if name in node_static:
            return node_static[name]
        if name.startswith("node") and name[4:].isdigit() and int(name[4:]) in m.online:
            return node_dir(int(name[4:]))
        return None

    def zoneinfo() -> str:
        out = []
        for nid in sorted(m.online):
            span = m.node_span(nid)
            free = m.node_pages(nid) * 9 // 10
            out.append(f"Node {nid}, zone   Normal\n  pages free     {free}\n")
            out.append(f"        spanned  {span[1] - span[0] if span else 0}\n"
                       f"        present  {m.node_pages(nid)}\n")
            if span:
                out.append(f"  start_pfn:           {span[0]}\n")
        return "".join(out)

    cpu_names = [f"cpu{c}" for c in range(len(m.cpu_node))]
    return {
        "sys": StaticDir({
            "kernel": StaticDir({"debug": StaticDir({
                "memlayout": DynamicDir(names=memlayout_names, lookup=memlayout_lookup)})}),
            "devices": StaticDir({"system": StaticDir({
                "node": DynamicDir(
                    names=lambda: [*node_static, *(f"node{n}" for n in sorted(m.online))],
                    lookup=node_lookup),
                "cpu": StaticDir({
                    "online": Attr(show=lambda: _node_list(range(len(m.cpu_node)))),
                    "possible": Attr(show=lambda: _node_list(range(len(m.cpu_node)))),
                    "present": Attr(show=lambda: _node_list(range(len(m.cpu_node)))),
                    **{name: StaticDir({}) for name in cpu_names},
                }),
            })}),
        }),
        "proc": StaticDir({"zoneinfo": Attr(show=zoneinfo)}),
    }


def build_root(**cfg) -> Dir:
    """The stand-in tree; takes the MachineConfig keywords the command line passes."""
    return StaticDir({"test": _test_dir(AdapterState()), **_machine_tree(ToyMachine(**cfg))})


def slow_root(**cfg) -> Dir:
    """A tree that takes too long to build, for mount's time limit."""
    import time
    time.sleep(60)
    return build_root(**cfg)
