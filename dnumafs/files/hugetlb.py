"""The hugepage pools' files (mm/hugetlb.c's hstate attributes), one directory per page size
the machine has (hugepages-2048kB, hugepages-1048576kB):

  nodeN/hugepages/hugepages-SIZEkB/          nr_hugepages (rw), free_hugepages, surplus_hugepages
  sys/kernel/mm/hugepages/hugepages-SIZEkB/  nr_hugepages (rw), nr_hugepages_mempolicy (rw),
                                             free_hugepages, resv_hugepages, surplus_hugepages,
                                             nr_overcommit_hugepages

Nothing maps the pools' pages (no reservation, no surplus), and the model has no overcommit:
those read 0 and nr_overcommit_hugepages takes no write.
"""
from __future__ import annotations

import errno
from collections.abc import Callable

from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.mm import Machine
from dnumafs.mm.hugetlb import order_size_kb
from dnumafs.vfs.tree import RO, RW, SYSFS, Dir, FileSet, StaticDir


def pool_dir_name(order: int) -> str:
    return f"hugepages-{order_size_kb(order)}kB"


def _resize(resize: Callable[[int], object], buf: bytes) -> None:
    """As Linux, a pool that cannot grow to the count asked for is not an error (read the
    file back to see what it got)."""
    count = kstrtoull(buf, 10)
    try:
        resize(count)
    except ValueError as e:
        raise OSError(errno.EINVAL, str(e)) from e


# --- nodeN/hugepages/hugepages-SIZEkB/ -----------------------------------------------------

def nr_hugepages_show(m: Machine, nid: int, order: int) -> str:
    return f"{m.hugepages(nid, order)[0]}\n"


def nr_hugepages_store(m: Machine, nid: int, order: int, buf: bytes) -> None:
    """Resize the node's pool from its own buddy allocator."""
    _resize(lambda count: m.set_nr_hugepages(nid, count, order), buf)


def free_hugepages_show(m: Machine, nid: int, order: int) -> str:
    return f"{m.hugepages(nid, order)[1]}\n"


def surplus_hugepages_show(m: Machine, nid: int, order: int) -> str:
    return f"{m.hugepages(nid, order)[2]}\n"


NODE_POOL_ATTRS = {
    "nr_hugepages": RW(nr_hugepages_show, nr_hugepages_store),
    "free_hugepages": RO(free_hugepages_show),
    "surplus_hugepages": RO(surplus_hugepages_show),
}


def node_hugepages_dir(m: Machine, nid: int) -> Dir:
    """nodeN/hugepages/."""
    files = FileSet(SYSFS, m.lock)
    return StaticDir({pool_dir_name(order): StaticDir(files.attrs(NODE_POOL_ATTRS, m, nid, order))
                      for order in m.hugepage_orders()})


# --- sys/kernel/mm/hugepages/hugepages-SIZEkB/ ---------------------------------------------

def global_show(index: int, m: Machine, order: int) -> str:
    """The sum over online nodes of one of hugepages()' figures."""
    return f"{sum(m.hugepages(nid, order)[index] for nid in m.online_nodes())}\n"


def global_nr_hugepages_store(m: Machine, order: int, buf: bytes) -> None:
    """Resize the pools, spread over the nodes with memory (no task policy: every node)."""
    _resize(lambda count: m.set_global_nr_hugepages(count, order), buf)


def zero_show(m: Machine, order: int) -> str:
    return "0\n"


def _global(index: int) -> Callable[[Machine, int], str]:
    def show(m: Machine, order: int) -> str:
        return global_show(index, m, order)
    return show


GLOBAL_POOL_ATTRS = {
    "nr_hugepages": RW(_global(0), global_nr_hugepages_store),
    "nr_hugepages_mempolicy": RW(_global(0), global_nr_hugepages_store),
    "free_hugepages": RO(_global(1)),
    "resv_hugepages": RO(zero_show),
    "surplus_hugepages": RO(_global(2)),
    "nr_overcommit_hugepages": RO(zero_show),
}


def hugepages_root(m: Machine) -> Dir:
    """sys/kernel/mm/hugepages/."""
    files = FileSet(SYSFS, m.lock)
    return StaticDir({pool_dir_name(order): StaticDir(files.attrs(GLOBAL_POOL_ATTRS, m, order))
                      for order in m.hugepage_orders()})
