"""Pages the programs of a process view hold in the model.

`dnumafs run`'s supervisor sees a program's policies, not its page faults; when it learns how
many pages a program holds under a policy it allocates as many here, on the node the policy
picks, through the model's allocator (so numa_hit, interleave_hit and the node's free pages
move as the kernel's would), and frees them when the program is done with them. The pages
are then the model's like any other: dnuma moves them, and they keep their owner.
"""
from __future__ import annotations

from collections import Counter

import attrs

from .kinds import Kind
from .machine import Machine


class NoMemory(Exception):
    """The node has no page left for the program."""


@attrs.define
class ProcessPages:
    """The pfns each process holds (order-0 pages)."""

    m: Machine
    held: dict[int, list[int]] = attrs.field(factory=dict)

    def alloc(self, pid: int, nid: int, count: int, interleave: bool = False) -> None:
        """count anonymous pages for pid, preferring nid (an interleaved allocation asks for
        nid); NoMemory, with those it got kept, when the allocator finds none."""
        if nid not in self.m.online_nodes():
            raise ValueError(f"node {nid} is not online")
        cpu = self.m.node_first_cpu(nid)
        pfns = self.held.setdefault(pid, [])
        for _ in range(count):
            pfn = self.m.alloc_pages(0, nid, cpu, interleave=interleave, kind=Kind.ACTIVE_ANON)
            if pfn is None:
                raise NoMemory(f"no free page for process {pid} on node {nid}")
            pfns.append(pfn)

    def free(self, pid: int) -> int:
        """Free every page pid holds; how many."""
        pfns = self.held.pop(pid, [])
        for pfn in pfns:
            self.m.free_pages(pfn)
        return len(pfns)

    def node_pages(self) -> Counter[int]:
        """The pages held on each node, where they are now."""
        node = self.m.page_node
        return Counter(int(node[p]) for pfns in self.held.values() for p in pfns)
