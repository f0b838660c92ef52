"""MNT/sys/kernel/debug/dnumafs/: the model's own debug files (not Linux's).

`check` runs the model's invariant checker (Machine.check()) when read and prints one
violation per line, or nothing. A running daemon's model lives in another process, so this is
the only way a test or a user can ask the model itself whether any page was lost, duplicated
or misfiled after a load; sums read from the node files catch less (a page on two free lists
of one node keeps every sum right). It lives under debugfs, root-only (0400), as a kernel's
CONFIG_DEBUG_VM checks would.

`marked_pages` (files/marked.py) counts the pages still waiting to be transplanted, per node.
`workload` is the workload's control file (files/workload.py, the README's "The workload").
"""
from __future__ import annotations

from dnumafs.mm import Machine
from dnumafs.mm.changes import PAGES
from dnumafs.vfs.tree import DEBUGFS, RO, STATIC, Dir, FileSet, StaticDir

from .marked import marked_pages_show
from .workload import workload_files


def check_show(m: Machine) -> str:
    """Every invariant violation, one a line; empty when the model is sound."""
    return "".join(f"{err}\n" for err in m.check())


# The check walks every page: it runs when a reader asks (volatile), never again at each
# change of the model just because a reader once asked (STATIC). marked_pages must be right
# right after the change that moved it, which a volatile text is not (the kernel may serve the
# last one until it is dropped, just after the read): it is made again at each change of the
# pages while the kernel holds it, a pass over the page flags (about 6 ms for 64 GiB).
DEBUG_ATTRS = {
    "check": RO(check_show, depends=STATIC, volatile=True),
    "marked_pages": RO(marked_pages_show, depends=frozenset({PAGES})),
}


def debug_dir(m: Machine) -> Dir:
    """sys/kernel/debug/dnumafs/."""
    return StaticDir(FileSet(DEBUGFS, m.lock).attrs(DEBUG_ATTRS, m)
                     | workload_files(m))    # its own file system and locks
