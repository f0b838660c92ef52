"""MNT/sys/kernel/debug/dnumafs/marked_pages: the allocated pages a commit marked for another
node (PG_LOOKUP_NODE), which move when they are freed, per node they are on now.

One line per node that has any, `NID PAGES`, ascending. Linux shows no such figure (its
transplant statistics count events, not pages still waiting); a hypervisor's agent that
watches a layout drain, and `dnumafs play`'s trace, read it here.
"""
from __future__ import annotations

from dnumafs.mm import Machine


def marked_pages_show(m: Machine) -> str:
    return "".join(f"{nid} {pages}\n" for nid, pages in sorted(m.marked_pages().items()))
