"""MNT/sys/kernel/debug/process_view/: how `dnumafs run` puts its programs' pages in the model
(the model lives in the daemon; the supervisor reaches it only through these files).

  alloc  write "PID NODE PAGES [interleave]": PAGES order-0 pages for PID, preferring NODE
         (ENOMEM, the pages got kept, when the model has no more)
  free   write "PID": free every page PID holds
  pages  "nodeN PAGES" for each online node: the pages programs hold there now
"""
from __future__ import annotations

import errno

from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.mm import Machine
from dnumafs.mm.process import NoMemory, ProcessPages
from dnumafs.vfs.tree import DEBUGFS, RO, WO, Dir, FileSet, StaticDir


def _words(buf: bytes, low: int, high: int) -> list[bytes]:
    words = buf.split()
    if not low <= len(words) <= high:
        raise OSError(errno.EINVAL, "wrong number of fields")
    return words


def alloc_store(p: ProcessPages, buf: bytes) -> None:
    words = _words(buf, 3, 4)
    if len(words) == 4 and words[3] != b"interleave":
        raise OSError(errno.EINVAL, "the fourth field can only be interleave")
    pid, nid, count = (kstrtoull(w) for w in words[:3])
    try:
        p.alloc(pid, nid, count, interleave=len(words) == 4)
    except ValueError as e:
        raise OSError(errno.EINVAL, str(e)) from None
    except NoMemory as e:
        raise OSError(errno.ENOMEM, str(e)) from None


def free_store(p: ProcessPages, buf: bytes) -> None:
    p.free(kstrtoull(_words(buf, 1, 1)[0]))


def pages_show(p: ProcessPages) -> str:
    held = p.node_pages()
    return "".join(f"node{nid} {held[nid]}\n" for nid in p.m.online_nodes())


PROCESS_ATTRS = {"alloc": WO(alloc_store), "free": WO(free_store), "pages": RO(pages_show)}


def process_dir(m: Machine) -> Dir:
    """sys/kernel/debug/process_view/."""
    return StaticDir(FileSet(DEBUGFS, m.lock).attrs(PROCESS_ATTRS, ProcessPages(m)))
