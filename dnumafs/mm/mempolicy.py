"""Memory policies of the tasks of a process view (mm/mempolicy.c), over the model's nodes.

A task has a policy (set_mempolicy), an address space has policies on ranges (mbind) and a
node for each of its pages the policies placed or move_pages/migrate_pages moved. The rules
and the errors are the kernel's; the node sets they are checked against are the model's
(NodeFacts). Nothing here knows how the calls arrived.
"""
from __future__ import annotations

import bisect
import errno
from collections.abc import Iterable

import attrs

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
MPOL_PREFERRED_MANY = 5
MPOL_WEIGHTED_INTERLEAVE = 6
MPOL_MAX = 7

MPOL_F_NUMA_BALANCING = 1 << 13
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_STATIC_NODES = 1 << 15
MPOL_MODE_FLAGS = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | MPOL_F_NUMA_BALANCING

# get_mempolicy flags
MPOL_F_NODE = 1
MPOL_F_ADDR = 2
MPOL_F_MEMS_ALLOWED = 4

# mbind and move_pages flags
MPOL_MF_STRICT = 1
MPOL_MF_MOVE = 2
MPOL_MF_MOVE_ALL = 4
MPOL_MF_VALID = MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL

# CONFIG_NODES_SHIFT=10 (Debian's x86_64 kernels): the width of a nodemask_t.
MAX_NUMNODES = 1 << 10
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

MODES_WITH_NODES = frozenset({MPOL_BIND, MPOL_INTERLEAVE, MPOL_PREFERRED,
                              MPOL_PREFERRED_MANY, MPOL_WEIGHTED_INTERLEAVE})


class PolicyError(Exception):
    """A call the kernel refuses, with the errno it gives."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(why or errno.errorcode.get(err, str(err)))
        self.errno = err


def _nodes(value: Iterable[int]) -> frozenset[int]:
    return frozenset(value)


@attrs.frozen
class NodeFacts:
    """The model's node states a policy is checked against."""

    possible: frozenset[int] = attrs.field(converter=_nodes)
    online: frozenset[int] = attrs.field(converter=_nodes)
    memory: frozenset[int] = attrs.field(converter=_nodes)    # N_MEMORY, the cpuset's mems
    cpu_node: dict[int, int] = attrs.field(factory=dict)       # CPU -> its node

    @property
    def nr_node_ids(self) -> int:
        return max(self.possible, default=0) + 1

    def local_node(self, cpu: int) -> int:
        """The node a CPU's allocations come from: its own, or the first with memory."""
        node = self.cpu_node.get(cpu)
        if node in self.memory:
            return node
        return min(self.memory, default=0)


@attrs.frozen
class Policy:
    """struct mempolicy: a mode, its flags, the nodes it uses, the nodes the user gave when
    they are kept (static or relative nodes), and the home node of set_mempolicy_home_node."""

    mode: int = attrs.field(validator=attrs.validators.in_(range(MPOL_MAX)))
    flags: int = 0
    nodes: frozenset[int] = attrs.field(converter=_nodes, factory=frozenset)
    user_nodes: frozenset[int] | None = None
    home_node: int | None = None

    def nodemask(self) -> frozenset[int]:
        """What get_mempolicy's nmask shows (get_policy_nodemask, or the user's nodes)."""
        if self.user_nodes is not None:
            return self.user_nodes
        return self.nodes if self.mode in MODES_WITH_NODES else frozenset()


def split_mode(mode: int) -> tuple[int, int]:
    """sanitize_mpol_flags: the mode and its flags, or EINVAL."""
    flags = mode & MPOL_MODE_FLAGS
    mode &= ~MPOL_MODE_FLAGS & 0xFFFFFFFF
    if mode >= MPOL_MAX:
        raise PolicyError(errno.EINVAL, "unknown mode")
    if flags & MPOL_F_STATIC_NODES and flags & MPOL_F_RELATIVE_NODES:
        raise PolicyError(errno.EINVAL, "static and relative nodes")
    if flags & MPOL_F_NUMA_BALANCING and mode not in (MPOL_BIND, MPOL_PREFERRED_MANY):
        raise PolicyError(errno.EINVAL, "NUMA balancing needs bind or preferred-many")
    return mode, flags


def relative_nodes(user: frozenset[int], allowed: frozenset[int]) -> frozenset[int]:
    """mpol_relative_nodemask: user's node n means the (n mod weight)-th allowed node."""
    order = sorted(allowed)
    if not order:
        return frozenset()
    return frozenset(order[n % len(order)] for n in user)


def new_policy(mode: int, flags: int, nodes: frozenset[int], facts: NodeFacts
               ) -> Policy | None:
    """mpol_new and mpol_set_nodemask: the policy, None for the default, or EINVAL."""
    if mode == MPOL_DEFAULT:
        if nodes:
            raise PolicyError(errno.EINVAL, "default takes no nodes")
        return None
    user_flags = flags & (MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES)
    if mode == MPOL_PREFERRED and not nodes:
        if user_flags:
            raise PolicyError(errno.EINVAL, "local preference with node flags")
        mode = MPOL_LOCAL
    elif mode == MPOL_LOCAL:
        if nodes or user_flags:
            raise PolicyError(errno.EINVAL, "local takes no nodes")
    elif not nodes:
        raise PolicyError(errno.EINVAL, "no nodes")
    if mode == MPOL_LOCAL:
        return Policy(mode, flags)
    allowed = facts.memory
    if flags & MPOL_F_RELATIVE_NODES:
        usable = relative_nodes(nodes, allowed)
    else:
        usable = nodes & allowed
    if not usable:
        raise PolicyError(errno.EINVAL, "no allowed node")
    if mode == MPOL_PREFERRED:
        usable = frozenset({min(usable)})
    return Policy(mode, flags, usable, nodes if user_flags else None)


def place(policy: Policy | None, page: int, local: int) -> int:
    """The node a policy allocates a page at address page on, local being the node of the
    CPU that faults it in (offset interleaving as for a mapping, interleave_nid)."""
    if policy is None or policy.mode == MPOL_LOCAL:
        return local
    order = sorted(policy.nodes)
    if interleaved(policy):
        return order[(page >> PAGE_SHIFT) % len(order)]
    if policy.mode == MPOL_BIND and local in policy.nodes:
        return local
    if policy.home_node is not None and policy.home_node in policy.nodes:
        return policy.home_node
    return order[0]


def spread(policy: Policy | None, count: int, local: int) -> dict[int, int]:
    """How count pages faulted in under policy fall on the nodes: interleaved evenly, or all
    on the node place() picks."""
    if policy is not None and interleaved(policy):
        order = sorted(policy.nodes)
        share, extra = divmod(count, len(order))
        return {n: share + (i < extra) for i, n in enumerate(order) if share + (i < extra)}
    return {place(policy, 0, local): count} if count else {}


def interleaved(policy: Policy | None) -> bool:
    return policy is not None and policy.mode in (MPOL_INTERLEAVE, MPOL_WEIGHTED_INTERLEAVE)


@attrs.define
class Task:
    """A task's own policy and where interleaving goes next (il_prev)."""

    policy: Policy | None = None
    il_prev: int | None = None

    def next_interleave(self) -> int:
        """get_mempolicy(MPOL_F_NODE) under interleave: the node after il_prev."""
        assert self.policy is not None
        order = sorted(self.policy.nodes)
        after = [n for n in order if self.il_prev is not None and n > self.il_prev]
        return (after or order)[0]


@attrs.define
class AddressSpace:
    """An mm's range policies (sorted, disjoint [start, end) ranges) and the model node of
    each page a policy placed or a move put somewhere."""

    starts: list[int] = attrs.field(factory=list)
    ranges: list[tuple[int, int, Policy]] = attrs.field(factory=list)
    pages: dict[int, int] = attrs.field(factory=dict)

    def copy(self) -> AddressSpace:
        """What a fork gets: the same ranges and pages."""
        return AddressSpace(list(self.starts), list(self.ranges), dict(self.pages))

    def policy_at(self, addr: int) -> Policy | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.ranges[i][1]:
            return self.ranges[i][2]
        return None

    def set_range(self, start: int, end: int, policy: Policy | None) -> None:
        """mbind_range: [start, end) gets policy (None: back to the task's)."""
        kept: list[tuple[int, int, Policy]] = []
        for s, e, p in self.ranges:
            if e <= start or s >= end:
                kept.append((s, e, p))
                continue
            if s < start:
                kept.append((s, start, p))
            if e > end:
                kept.append((end, e, p))
        if policy is not None:
            kept.append((start, end, policy))
        kept.sort(key=lambda r: r[0])
        self.ranges = kept
        self.starts = [r[0] for r in kept]

    def ranges_in(self, start: int, end: int) -> list[tuple[int, int, Policy]]:
        return [(max(s, start), min(e, end), p) for s, e, p in self.ranges
                if s < end and e > start]

    def set_home_node(self, start: int, end: int, node: int) -> None:
        """set_mempolicy_home_node over the ranges that have a policy: bind and preferred-many
        take it, any other mode is EOPNOTSUPP (and the ranges before it keep theirs)."""
        for s, e, p in self.ranges_in(start, end):
            if p.mode not in (MPOL_BIND, MPOL_PREFERRED_MANY):
                raise PolicyError(errno.EOPNOTSUPP, "home node needs bind or preferred-many")
            self.set_range(s, e, attrs.evolve(p, home_node=node))

    def node_of(self, page: int, task: Task, local: int) -> int:
        """The page's node, placing it by the policy in force the first time it is seen."""
        page &= PAGE_MASK
        node = self.pages.get(page)
        if node is None:
            node = self.pages[page] = place(self.policy_at(page) or task.policy, page, local)
        return node

    def forget(self, page: int) -> None:
        self.pages.pop(page & PAGE_MASK, None)

    def migrate(self, old: frozenset[int], new: frozenset[int]) -> int:
        """migrate_pages: pages on the i-th node of old go to the i-th of new (wrapping, as
        do_migrate_pages pairs them); the number moved."""
        src, dst = sorted(old - new), sorted(new)
        if not src or not dst:
            return 0
        to = {s: dst[i % len(dst)] for i, s in enumerate(src)}
        moved = 0
        for page, node in self.pages.items():
            if node in to:
                self.pages[page] = to[node]
                moved += 1
        return moved
