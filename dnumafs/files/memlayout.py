"""MNT/sys/kernel/debug/memlayout (the dnuma debugfs interface) and
MNT/sys/module/memlayout/parameters/backlog_max.

A range is staged by writing `start` and `end`, and added to the pending layout by writing its
node to `node`; `commit` makes the pending layout current. Every write carries one whole value
parsed as kstrtoull(s, 0), and a rejected write changes nothing, not even the staged bounds.
Statistics files are debugfs u64 files (debugfs_create_u64), so they print `%llu\n`.
"""
from __future__ import annotations

import bisect
import errno
from collections.abc import Callable
from functools import partial

import attrs

from dnumafs.mm import STAT_NAMES, DnumaStats, Machine, Memlayout
from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.vfs.tree import Attr, Dir, DynamicDir, Node, StaticDir, Symlink

from .format import parse_indexed_name

UINT_MAX = (1 << 32) - 1


@attrs.define
class MemlayoutDebugfs:
    """The interface's own state: the bounds of the next range, staged by `start` and `end`
    and reset to 0 once `node` has added it. Guarded by the machine lock, like the layouts."""

    m: Machine
    start: int = 0
    end: int = 0


# --- the writable files ----------------------------------------------------------------------

def bound_show(d: MemlayoutDebugfs, which: str) -> str:
    """`start` or `end`: the staged pfn, as debugfs_create_x64() prints it."""
    with d.m.lock:
        return f"0x{getattr(d, which):016x}\n"


def bound_store(d: MemlayoutDebugfs, which: str, buf: bytes) -> None:
    pfn = kstrtoull(buf)
    with d.m.lock:
        setattr(d, which, pfn)


def node_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Add [start, end] -> node to the pending layout, then reset start and end.

    EINVAL for a node that is not possible or start > end, EEXIST for an overlap with a
    pending range (the original returned 1, a partial write that made echo retry).
    """
    nid = kstrtoull(buf)
    with d.m.lock:
        d.m.memlayout_add_range(d.start, d.end, nid)
        d.start = d.end = 0


def commit_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Any value commits the pending layout; with nothing pending it does nothing."""
    d.m.memlayout_commit()


def clear_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Any value discards the pending layout (the staged bounds stay)."""
    d.m.memlayout_clear()


def current_target(m: Machine) -> str:
    with m.lock:
        return f"layout.{m.current.id}"


def backlog_max_show(m: Machine) -> str:
    with m.lock:
        return f"{m.backlog_max}\n"


def backlog_max_store(m: Machine, buf: bytes) -> None:
    """A uint module parameter: ERANGE above UINT_MAX, as param_set_uint(). Shrinking the
    backlog destroys the oldest layouts at once."""
    n = kstrtoull(buf)
    if n > UINT_MAX:
        raise OSError(errno.ERANGE, "backlog_max above UINT_MAX")
    m.set_backlog_max(n)


# --- statistics ------------------------------------------------------------------------------

StatsGetter = Callable[[], "DnumaStats | None"]


def stat_show(m: Machine, stats: StatsGetter, name: str) -> str:
    """One u64 counter; a node the model has not counted anything for yet reads 0."""
    with m.lock:
        counts = stats()
        return f"{counts[name] if counts is not None else 0}\n"


def stats_dir(m: Machine, stats: StatsGetter) -> Dir:
    """stats/: one file per statistic the model counts."""
    return StaticDir({name: Attr(show=partial(stat_show, m, stats, name), mode=0o400)
                      for name in STAT_NAMES})


def node_stats_dir(m: Machine, nids: Callable[[], list[int]],
                   by_node: Callable[[], dict[int, DnumaStats]]) -> Dir:
    """node_stats/<nid>/: one stats/ for each node nids() names, at every lookup."""
    def names() -> list[str]:
        with m.lock:
            return [str(nid) for nid in nids()]

    def lookup(name: str) -> Node | None:
        nid = parse_indexed_name(name, "")
        with m.lock:
            if nid is None or nid not in nids():
                return None
        return stats_dir(m, lambda: by_node().get(nid))
    return DynamicDir(names=names, lookup=lookup)


def counted_nids(by_node: dict[int, DnumaStats]) -> set[int]:
    """Nodes with a count: the model keeps zeroed counters for every possible node once a
    commit has looked at them, which would list nodes that never took part."""
    return {nid for nid, stats in by_node.items() if any(stats.counts.values())}


def global_stat_nids(m: Machine) -> list[int]:
    """Every online node, and any other the model has counted something for."""
    return sorted(set(m.pgdat) | counted_nids(m.node_stats))


def layout_stat_nids(layout: Memlayout) -> list[int]:
    """The layout's own nodes, and any other the model has counted something for in it."""
    return sorted(layout.node_ids() | counted_nids(layout.node_stats))


# --- layout.N/ -------------------------------------------------------------------------------

def range_name(start: int, end: int) -> str:
    return f"{start:05x}-{end:05x}"


def range_show(nid: int) -> str:
    """layout.N/SSSSS-EEEEE: the range's node (a range never changes once added)."""
    return f"{nid}\n"


def layout_range(layout: Memlayout, name: str) -> int | None:
    """The node of the range named name, found by bisection (a striped layout has many)."""
    first, sep, last = name.partition("-")
    try:
        start, end = int(first, 16), int(last, 16)
    except ValueError:
        return None
    if not sep or range_name(start, end) != name:
        return None
    i = bisect.bisect_left(layout.starts, start)
    if i < len(layout) and layout.starts[i] == start and layout.ends[i] == end:
        return layout.nids[i]
    return None


def layout_dir(m: Machine, layout: Memlayout) -> Dir:
    """layout.N/: its ranges (a pending layout grows as ranges are added), stats, node_stats."""
    stats = stats_dir(m, lambda: layout.stats)
    node_stats = node_stats_dir(m, partial(layout_stat_nids, layout), lambda: layout.node_stats)

    def names() -> list[str]:
        with m.lock:
            return [range_name(s, e) for s, e, _ in layout.ranges()] + ["stats", "node_stats"]

    def lookup(name: str) -> Node | None:
        if name == "stats":
            return stats
        if name == "node_stats":
            return node_stats
        with m.lock:
            nid = layout_range(layout, name)
        return None if nid is None else Attr(show=partial(range_show, nid), mode=0o400)
    return DynamicDir(names=names, lookup=lookup)


# --- the directories -------------------------------------------------------------------------

def memlayout_dir(m: Machine) -> Dir:
    """sys/kernel/debug/memlayout/: layout.N/ for the pending, current and backlog layouts,
    appearing and disappearing with them."""
    d = MemlayoutDebugfs(m)
    fixed: dict[str, Node] = {
        "start": Attr(show=partial(bound_show, d, "start"), store=partial(bound_store, d, "start"),
                      mode=0o600),
        "end": Attr(show=partial(bound_show, d, "end"), store=partial(bound_store, d, "end"),
                    mode=0o600),
        "node": Attr(store=partial(node_store, d), mode=0o200),
        "commit": Attr(store=partial(commit_store, d), mode=0o200),
        "clear": Attr(store=partial(clear_store, d), mode=0o200),
        "current": Symlink(partial(current_target, m)),
        "moved-pages": Attr(show=partial(stat_show, m, lambda: m.stats, "moved-pages"),
                            mode=0o400),
        "stats": stats_dir(m, lambda: m.stats),
        "node_stats": node_stats_dir(m, partial(global_stat_nids, m), lambda: m.node_stats),
    }

    def names() -> list[str]:
        with m.lock:
            return [*fixed, *(f"layout.{lid}" for lid in sorted(m.layouts))]

    def lookup(name: str) -> Node | None:
        if name in fixed:
            return fixed[name]
        lid = parse_indexed_name(name, "layout.")
        with m.lock:
            if lid is None or lid not in m.layouts:
                return None
            return layout_dir(m, m.layouts[lid])
    return DynamicDir(names=names, lookup=lookup)


def module_dir(m: Machine) -> Dir:
    """sys/module/memlayout/."""
    return StaticDir({"parameters": StaticDir({
        "backlog_max": Attr(show=partial(backlog_max_show, m),
                            store=partial(backlog_max_store, m), mode=0o644),
    })})
