"""MNT/sys/kernel/debug/memlayout (the dnuma debugfs interface, mm/memlayout-debugfs.c) and
MNT/sys/module/memlayout_debugfs/parameters/backlog_max (its module parameter).

A range is staged by writing `start` and `end`, and added to the pending layout by writing its
node to `node`; `commit` makes the pending layout current, `clear` discards it. Every write is
one value that simple_attr_write() parses as kstrtoull(s, 0), `commit` and `clear` too, and a
rejected write changes nothing, not even the staged bounds. Statistics files are debugfs u64
files, so they print `%llu\n`; node_stats/ has a directory for every possible node, as
create_node_stats_under() makes 0..nr_node_ids-1.
"""
from __future__ import annotations

import errno
from functools import partial

import attrs

from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.mm import STAT_NAMES, DnumaStats, Machine, Memlayout
from dnumafs.vfs.tree import (
    DEBUGFS,
    RO,
    RW,
    STATIC,
    SYSFS,
    WO,
    Attr,
    Dir,
    FileSet,
    Node,
    NodeKind,
    StaticDir,
)

from .format import parse_indexed_name


@attrs.define
class MemlayoutDebugfs:
    """The interface's own state: the bounds of the next range, staged by `start` and `end`
    and reset to 0 once `node` has added it. Guarded by the machine lock, like the layouts."""

    m: Machine
    start: int = 0
    end: int = 0


# --- the writable files (debugfs_create_x64 and the patch set's watched attributes) ----------

def start_show(d: MemlayoutDebugfs) -> str:
    return f"0x{d.start:016x}\n"


def start_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    d.start = kstrtoull(buf)


def end_show(d: MemlayoutDebugfs) -> str:
    return f"0x{d.end:016x}\n"


def end_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    d.end = kstrtoull(buf)


def node_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Add [start, end] -> node to the pending layout, then reset start and end.

    EINVAL for a node that is not possible or start > end, EEXIST for an overlap with a
    pending range (the original returned 1, a partial write that made echo retry).
    """
    nid = kstrtoull(buf)
    d.m.memlayout_add_range(d.start, d.end, nid)
    d.start = d.end = 0


def commit_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Any number commits the pending layout; with nothing pending it does nothing."""
    kstrtoull(buf)
    d.m.memlayout_commit()


def clear_store(d: MemlayoutDebugfs, buf: bytes) -> None:
    """Any number discards the pending layout (the staged bounds stay)."""
    kstrtoull(buf)
    d.m.memlayout_clear()


def current_target(m: Machine) -> str:
    return f"layout.{m.current.id}"


def backlog_max_show(m: Machine) -> str:
    return f"{m.backlog_max}\n"


def backlog_max_store(m: Machine, buf: bytes) -> None:
    """module_param(backlog_max, ulong, 0644): param_set_ulong() takes kstrtoul(s, 0),
    ERANGE above 2**64-1."""
    m.set_backlog_max(kstrtoull(buf))


# --- statistics ------------------------------------------------------------------------------

def layout_of(m: Machine, lid: int) -> Memlayout:
    """The layout a file belongs to; EIO once it is destroyed, as debugfs_file_get() gives for
    a file removed while open."""
    layout = m.layout(lid)
    if layout is None:
        raise OSError(errno.EIO, f"layout.{lid} was destroyed")
    return layout


def counters(m: Machine, lid: int | None, nid: int | None
             ) -> DnumaStats | None:
    """What a stats/ directory counts: the machine's (lid None) or one layout's, over every
    node (nid None) or one."""
    if lid is None:
        return m.stats if nid is None else m.node_stats.get(nid)
    layout = layout_of(m, lid)
    return layout.stats if nid is None else layout.node_stats.get(nid)


def stat_show(name: str, m: Machine, lid: int | None, nid: int | None) -> str:
    """One u64 counter; a node the model has not counted anything for yet reads 0."""
    counts = counters(m, lid, nid)
    return f"{counts[name] if counts is not None else 0}\n"


STATS_ATTRS = {name: RO(partial(stat_show, name)) for name in STAT_NAMES}


def stats_dir(m: Machine, lid: int | None, nid: int | None) -> Dir:
    """stats/: one file per statistic the model counts."""
    return StaticDir(FileSet(DEBUGFS, m.lock).attrs(STATS_ATTRS, m, lid, nid))


def node_stats_names(m: Machine) -> list[str]:
    return [str(nid) for nid in m.stat_nids()]


def node_stats_lookup(m: Machine, lid: int | None, name: str) -> Node | None:
    nid = parse_indexed_name(name, "")
    if nid is None or nid not in m.stat_nids():
        return None
    return stats_dir(m, lid, nid)


def node_stats_dir(m: Machine, lid: int | None) -> Dir:
    """node_stats/<nid>/: a stats/ for every possible node."""
    return FileSet(DEBUGFS, m.lock).dynamic_dir(partial(node_stats_names, m),
                                                partial(node_stats_lookup, m, lid))


# --- layout.N/ -------------------------------------------------------------------------------

LAYOUT_SUBDIRS = ("stats", "node_stats")


def range_name(start: int, end: int) -> str:
    return f"{start:05x}-{end:05x}"


def parse_range_name(name: str) -> tuple[int, int] | None:
    """The (start, end) of a range file's name, if it is one the kernel would print."""
    first, sep, last = name.partition("-")
    try:
        start, end = int(first, 16), int(last, 16)
    except ValueError:
        return None
    if not sep or range_name(start, end) != name:
        return None
    return start, end


def range_show(m: Machine, lid: int, start: int, end: int) -> str:
    """layout.N/SSSSS-EEEEE: the range's node, as range_fops prints it (`%lld\n`)."""
    nid = layout_of(m, lid).range_nid(start, end)
    if nid is None:
        raise OSError(errno.EIO, "range was destroyed")
    return f"{nid}\n"


RANGE_ATTR = RO(range_show, depends=STATIC)     # a range keeps its node while it exists


def layout_entries(m: Machine, lid: int) -> list[tuple[str, NodeKind]]:
    layout = m.layout(lid)
    ranges = layout.ranges() if layout is not None else []
    return [*((range_name(s, e), Attr) for s, e, _ in ranges),
            *((name, Dir) for name in LAYOUT_SUBDIRS)]


def layout_names(m: Machine, lid: int) -> list[str]:
    return [name for name, _ in layout_entries(m, lid)]


def layout_lookup(m: Machine, lid: int, name: str) -> Node | None:
    """A range file, found by bisection (a striped layout has many: the cost of a lookup does
    not grow with their number), stats/ or node_stats/."""
    if name == "stats":
        return stats_dir(m, lid, None)
    if name == "node_stats":
        return node_stats_dir(m, lid)
    bounds = parse_range_name(name)
    layout = m.layout(lid)
    if bounds is None or layout is None or layout.range_nid(*bounds) is None:
        return None
    return FileSet(DEBUGFS, m.lock).attr(RANGE_ATTR, m, lid, *bounds)


def layout_dir(m: Machine, lid: int) -> Dir:
    """layout.N/: its ranges (a pending layout grows as ranges are added), stats, node_stats."""
    return FileSet(DEBUGFS, m.lock).dynamic_dir(
        partial(layout_names, m, lid), partial(layout_lookup, m, lid),
        partial(layout_entries, m, lid))


# --- the directories -------------------------------------------------------------------------

MEMLAYOUT_ATTRS = {
    "start": RW(start_show, start_store),
    "end": RW(end_show, end_store),
    "node": WO(node_store),
    "commit": WO(commit_store),
    "clear": WO(clear_store),
}

GLOBAL_ATTRS = {"moved-pages": RO(partial(stat_show, "moved-pages"))}


def memlayout_names(m: Machine, fixed: dict[str, Node]) -> list[str]:
    return [*fixed, *(f"layout.{lid}" for lid in m.layout_ids())]


def memlayout_lookup(m: Machine, fixed: dict[str, Node], name: str) -> Node | None:
    if name in fixed:
        return fixed[name]
    lid = parse_indexed_name(name, "layout.")
    if lid is None or m.layout(lid) is None:
        return None
    return layout_dir(m, lid)


def memlayout_dir(m: Machine) -> Dir:
    """sys/kernel/debug/memlayout/: layout.N/ for the pending, current and backlog layouts,
    appearing and disappearing with them."""
    files = FileSet(DEBUGFS, m.lock)
    fixed = files.attrs(MEMLAYOUT_ATTRS, MemlayoutDebugfs(m))
    fixed["current"] = files.symlink(current_target, m)
    fixed.update(files.attrs(GLOBAL_ATTRS, m, None, None))
    fixed["stats"] = stats_dir(m, None, None)
    fixed["node_stats"] = node_stats_dir(m, None)
    return files.dynamic_dir(partial(memlayout_names, m, fixed),
                             partial(memlayout_lookup, m, fixed))


MODULE_PARAMS = {"backlog_max": RW(backlog_max_show, backlog_max_store)}


def module_dir(m: Machine) -> Dir:
    """sys/module/memlayout_debugfs/: the module of mm/memlayout-debugfs.c, as Linux names a
    built-in file's module parameters."""
    return StaticDir({"parameters": StaticDir(FileSet(SYSFS, m.lock).attrs(MODULE_PARAMS, m))})
