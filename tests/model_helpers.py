"""Shared helpers for the model tests: small machines and invariants computed independently.

The invariant functions here look only at the model's public data (page arrays, zones, free
lists, per-CPU lists, hugepage pools, layouts) and recompute every figure themselves; they do not
call Machine.check(), so that a test can compare the two.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import numpy as np

from dnumafs.mm import Machine, MachineConfig, Memlayout
from dnumafs.mm.constants import (
    GIGANTIC_ORDER,
    MAX_ORDER,
    PG_BUDDY,
    PG_HEAD,
    PG_HUGETLB,
    PG_LOOKUP_NODE,
    PG_PCP,
    PG_RESERVED,
    ZoneType,
    zone_type_of,
)

MiB = 1 << 20
GiB = 1 << 30

# Page states as classified by classify().
FREE_BUDDY, FREE_PCP, ALLOCATED, RESERVED = 1, 2, 3, 4

SMALL_MACHINE: dict[str, Any] = dict(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4)


def boot(**config: Any) -> Machine:
    """The model tests' one way to boot a machine: a small one (2 nodes, 64 MiB, 4 CPUs,
    4 possible nodes), with any MachineConfig field given overriding."""
    return Machine.boot(MachineConfig(**{**SMALL_MACHINE, **config}))


def alloc(m: Machine, order: int = 0, **kw: Any) -> int:
    """alloc_pages() that must succeed."""
    pfn = m.alloc_pages(order, **kw)
    assert pfn is not None, f"order-{order} allocation {kw} failed"
    return pfn


def pending(m: Machine) -> Memlayout:
    """The pending layout, which must exist."""
    assert m.pending is not None, "no pending layout"
    return m.pending


def zone_types_array(max_pfn: int) -> np.ndarray:
    """zone type of every pfn, computed from the x86-64 boundaries (16 MiB, 4 GiB)."""
    pfns = np.arange(max_pfn, dtype=np.int64)
    out = np.full(max_pfn, int(ZoneType.NORMAL), dtype=np.int8)
    out[pfns < (4 * GiB) // 4096] = int(ZoneType.DMA32)
    out[pfns < (16 * MiB) // 4096] = int(ZoneType.DMA)
    return out


def free_blocks(m):
    """[(head, order, nid, ztype)] of every block on every buddy free list."""
    out = []
    for nid, pgdat in m.pgdat.items():
        for ztype, zone in pgdat.zones.items():
            for order, fa in enumerate(zone.free_area):
                for head in fa:
                    out.append((head, order, nid, ztype))
    return out


def free_sets(m):
    """{(nid, ztype, order): frozenset(heads)}: the buddy free lists, as sets."""
    out = {}
    for nid, pgdat in m.pgdat.items():
        for ztype, zone in pgdat.zones.items():
            for order, fa in enumerate(zone.free_area):
                if fa:
                    out[(nid, ztype, order)] = frozenset(fa)
    return out


def pcp_pages(m):
    """[(pfn, nid, ztype, cpu)] of every page on a per-CPU list."""
    out = []
    for nid, pgdat in m.pgdat.items():
        for ztype, zone in pgdat.zones.items():
            for cpu, lst in zone.pcp.items():
                for pfn in lst:
                    out.append((pfn, nid, ztype, cpu))
    return out


def allocated_blocks(m):
    """{head: order} of allocated blocks (PG_HEAD or PG_HUGETLB heads) from the page flags."""
    flags = m.page_flags
    heads = np.nonzero((flags & (PG_HEAD | PG_HUGETLB)) != 0)[0]
    return {int(h): int(m.page_order[h]) for h in heads}


def classify(m):
    """(state array, coverage count array, problems) from the free lists, pcp lists, page flags."""
    n = m.max_pfn
    cov = np.zeros(n, dtype=np.int32)
    state = np.zeros(n, dtype=np.int8)
    problems = []
    for head, order, _nid, _ztype in free_blocks(m):
        size = 1 << order
        if head < 0 or head + size > n:
            problems.append(f"free block {head:#x} order {order} outside 0..max_pfn")
            continue
        cov[head:head + size] += 1
        state[head:head + size] = FREE_BUDDY
    for pfn, _nid, _ztype, _cpu in pcp_pages(m):
        if not 0 <= pfn < n:
            problems.append(f"pcp page {pfn:#x} outside 0..max_pfn")
            continue
        cov[pfn] += 1
        state[pfn] = FREE_PCP
    for head, order in allocated_blocks(m).items():
        size = 1 << order
        gigantic = order == GIGANTIC_ORDER and m.page_flags[head] & PG_HUGETLB
        if order < 0 or (order >= MAX_ORDER and not gigantic) or head + size > n:
            problems.append(f"allocated block {head:#x} has bad order {order}")
            continue
        cov[head:head + size] += 1
        state[head:head + size] = ALLOCATED
    res = (m.page_flags & PG_RESERVED) != 0
    cov[res] += 1
    state[res] = RESERVED
    return state, cov, problems


def _first(idx, k=5):
    return ", ".join(f"{int(p):#x}" for p in idx[:k])


def expected_nodes(layout, node: np.ndarray, max_pfn: int) -> np.ndarray:
    """Each pfn's node under layout's ranges (clipped to max_pfn); pfns outside keep node."""
    out = np.array(node, dtype=np.int64, copy=True)
    for s, e, nid in layout.ranges():
        if s >= max_pfn:
            continue
        out[s:min(e, max_pfn - 1) + 1] = nid
    return out


def range_mask(layout, max_pfn: int) -> np.ndarray:
    out = np.zeros(max_pfn, dtype=bool)
    for s, e, _ in layout.ranges():
        if s < max_pfn:
            out[s:min(e, max_pfn - 1) + 1] = True
    return out


@attrs.frozen
class Seen:
    """What the checks look at, read from the model's public data once per check run."""

    m: Any
    n: int                  # max_pfn
    node: np.ndarray        # page_node, as int64
    flags: np.ndarray
    order: np.ndarray
    ztypes: np.ndarray      # zone type of every pfn, from the x86-64 boundaries
    state: np.ndarray       # FREE_BUDDY, FREE_PCP, ALLOCATED or RESERVED per pfn
    cover: np.ndarray       # how many of those states hold each pfn
    alloc: dict[int, int]   # allocated heads -> order
    problems: list[str]     # what classify() could not place

    @classmethod
    def read(cls, m) -> Seen:
        state, cover, problems = classify(m)
        return cls(m, m.max_pfn, np.asarray(m.page_node).astype(np.int64),
                   np.asarray(m.page_flags), np.asarray(m.page_order),
                   zone_types_array(m.max_pfn), state, cover, allocated_blocks(m), problems)


def check_every_pfn_in_one_state(s: Seen) -> list[str]:
    """Pages are never lost or duplicated: each pfn is on one free list, one per-CPU list,
    in one allocated block, or reserved."""
    p = list(s.problems)
    bad = np.nonzero(s.cover != 1)[0]
    zero = bad[s.cover[bad] == 0]
    many = bad[s.cover[bad] > 1]
    if len(zero):
        p.append(f"{len(zero)} pfns in no state (lost), e.g. {_first(zero)}")
    if len(many):
        p.append(f"{len(many)} pfns in several states (duplicated), e.g. {_first(many)}")
    return p


def check_online_nodes(s: Seen) -> list[str]:
    p = []
    online = sorted(s.m.pgdat)
    if s.m.online_nodes() != online:
        p.append(f"online_nodes() {s.m.online_nodes()} != pgdat keys {online}")
    on_pages = set(np.unique(s.node).tolist())
    if not on_pages <= set(online):
        p.append(f"page_node has offline nodes: {on_pages - set(online)}")
    return p


def check_free_blocks(s: Seen) -> list[str]:
    """Every free block is aligned, in one zone of one node, inside its span, and flagged."""
    p = []
    node, flags = s.node, s.flags
    heads = set()
    for head, order, nid, ztype in free_blocks(s.m):
        size = 1 << order
        heads.add(head)
        if head % size:
            p.append(f"free block {head:#x} order {order} not aligned")
        if head + size > s.n:
            continue
        if not (node[head:head + size] == nid).all():
            p.append(f"free block {head:#x} order {order} on node {nid} list has pages of "
                     f"nodes {sorted(set(node[head:head + size].tolist()))}")
        if not (s.ztypes[head:head + size] == int(ztype)).all():
            p.append(f"free block {head:#x} order {order} on {ztype.label} list spans other "
                     f"zone types")
        if not flags[head] & PG_BUDDY:
            p.append(f"free block head {head:#x} lacks PG_BUDDY")
        if s.order[head] != order:
            p.append(f"free block head {head:#x} on order-{order} list has page_order "
                     f"{s.order[head]}")
        if (flags[head:head + size]
                & (PG_LOOKUP_NODE | PG_RESERVED | PG_HEAD | PG_PCP | PG_HUGETLB)).any():
            p.append(f"free block {head:#x} has pages flagged allocated/reserved/pcp/lookup")
        z = s.m.pgdat[nid].zones[ztype]
        if z.nid != nid or z.type != ztype:
            p.append(f"zone under pgdat[{nid}][{ztype.label}] says nid {z.nid} type {z.type}")
        if not (z.zone_start_pfn <= head and head + size <= z.zone_end_pfn):
            p.append(f"free block {head:#x} outside the span of node {nid} {ztype.label}")
    flagged = set(np.nonzero(flags & PG_BUDDY)[0].tolist())
    if flagged != heads:
        extra = sorted(flagged - heads)[:5]
        missing = sorted(heads - flagged)[:5]
        p.append(f"PG_BUDDY pages != free list heads (flag only: {extra}, list only: {missing})")
    return p


def check_buddies_merged(s: Seen) -> list[str]:
    """No two free buddies of one order in one zone, as __free_one_page leaves the lists."""
    p = []
    index = {(head, order): (nid, ztype) for head, order, nid, ztype in free_blocks(s.m)}
    for (head, order), where in index.items():
        if order >= MAX_ORDER - 1:
            continue
        buddy = head ^ (1 << order)
        if buddy > head and index.get((buddy, order)) == where:
            p.append(f"free buddies {head:#x} and {buddy:#x} of order {order} on node "
                     f"{where[0]} {where[1].label} left unmerged")
    return p


def check_pcp_lists(s: Seen) -> list[str]:
    p = []
    pages = set()
    for pfn, nid, ztype, cpu in pcp_pages(s.m):
        pages.add(pfn)
        if not 0 <= cpu < s.m.nr_cpus:
            p.append(f"pcp list of cpu {cpu} (only {s.m.nr_cpus} cpus)")
        if not 0 <= pfn < s.n:
            continue
        if s.node[pfn] != nid or s.ztypes[pfn] != int(ztype):
            p.append(f"pcp page {pfn:#x} on node {nid} {ztype.label} list is node "
                     f"{s.node[pfn]} zone {ZoneType(int(s.ztypes[pfn])).label}")
        if not s.flags[pfn] & PG_PCP:
            p.append(f"pcp page {pfn:#x} lacks PG_PCP")
        if s.flags[pfn] & PG_LOOKUP_NODE:
            p.append(f"free pcp page {pfn:#x} still has PG_LOOKUP_NODE")
    flagged = set(np.nonzero(s.flags & PG_PCP)[0].tolist())
    if flagged != pages:
        p.append(f"PG_PCP pages != pcp list pages ({len(flagged)} vs {len(pages)})")
    return p


def check_allocated_blocks(s: Seen) -> list[str]:
    """Allocated blocks are aligned, within one node and one zone type, flagged only so."""
    p = []
    for head, order in s.alloc.items():
        size = 1 << order
        if head % size:
            p.append(f"allocated block {head:#x} order {order} not aligned")
        if head + size > s.n:
            continue
        if len(set(s.node[head:head + size].tolist())) != 1:
            p.append(f"allocated block {head:#x} order {order} spans several nodes")
        if len(set(s.ztypes[head:head + size].tolist())) != 1:
            p.append(f"allocated block {head:#x} order {order} spans several zone types")
        if s.flags[head] & (PG_BUDDY | PG_PCP | PG_RESERVED):
            p.append(f"allocated block head {head:#x} also flagged free or reserved")
    return p


def hugepage_pools(m) -> dict[int, tuple[int, int]]:
    """{head: (nid, order)} of every page in a node's hugepage pools (2 MiB and 1 GiB)."""
    return {h: (nid, order) for nid, pgdat in m.pgdat.items()
            for order, pool in pgdat.hugepage_pools.items() for h in pool}


def check_hugepage_pools(s: Seen) -> list[str]:
    p = []
    for h, (nid, order) in hugepage_pools(s.m).items():
        if h % (1 << order):
            p.append(f"hugepage {h:#x} of node {nid} not aligned to order {order}")
        if not s.flags[h] & PG_HUGETLB:
            p.append(f"hugepage {h:#x} of node {nid} lacks PG_HUGETLB")
        if s.alloc.get(h) != order:
            p.append(f"hugepage {h:#x} of node {nid} is not an allocated order-{order} block")
        if s.node[h] != nid:
            p.append(f"hugepage {h:#x} in node {nid}'s pool is on node {s.node[h]}")
    for nid, pgdat in s.m.pgdat.items():
        pool = len(pgdat.hugepage_pool)
        if s.m.hugepages(nid) != (pool, pool, 0):
            p.append(f"hugepages({nid}) = {s.m.hugepages(nid)} but pool has {pool}")
        if pgdat.nr_hugepages != pool:
            p.append(f"node {nid} nr_hugepages != pool length")
    return p


def check_boot_allocations(s: Seen) -> list[str]:
    p = []
    pools = hugepage_pools(s.m)
    for h, o in s.m.boot_allocations:
        if s.alloc.get(h) != o:
            p.append(f"boot allocation {h:#x} order {o} is not an allocated block of that order")
        if h in pools:
            p.append(f"boot allocation {h:#x} is also a hugepage")
    return p


def check_tracked(s: Seen, tracked: dict[int, int]) -> list[str]:
    """The allocated heads are exactly the test's own + boot allocations + hugepage pools."""
    p = []
    expect = dict(s.m.boot_allocations)
    expect.update({h: order for h, (_, order) in hugepage_pools(s.m).items()})
    for h, o in tracked.items():
        if h in expect:
            p.append(f"tracked allocation {h:#x} is also a boot allocation or hugepage")
        expect[h] = o
    if expect != s.alloc:
        only_model = sorted(set(s.alloc) - set(expect))[:5]
        only_test = sorted(set(expect) - set(s.alloc))[:5]
        diff_order = sorted(h for h in set(s.alloc) & set(expect) if s.alloc[h] != expect[h])[:5]
        p.append(f"allocated blocks differ from the test's record: model only {only_model}, "
                 f"test only {only_test}, order differs {diff_order}")
    return p


def check_zone_accounting(s: Seen) -> list[str]:
    """Each zone's present, managed, span and free figures, recomputed from the page arrays;
    each node's sizes are its zones' sums."""
    p = []
    res = (s.flags & PG_RESERVED) != 0
    for nid, pgdat in s.m.pgdat.items():
        if pgdat.nid != nid:
            p.append(f"pgdat[{nid}].nid == {pgdat.nid}")
        if set(pgdat.zones) != set(ZoneType):
            p.append(f"node {nid} lacks some zone types: {sorted(pgdat.zones)}")
        for ztype, z in pgdat.zones.items():
            where = f"node {nid} {ZoneType(ztype).label}"
            mine = (s.node == nid) & (s.ztypes == int(ztype))
            present = int(mine.sum())
            reserved = int((mine & res).sum())
            if z.present_pages != present:
                p.append(f"{where} present_pages {z.present_pages} but {present} pages are on it")
            if z.managed_pages != present - reserved:
                p.append(f"{where} managed_pages {z.managed_pages} != present {present} - "
                         f"reserved {reserved}")
            if z.present_pages != z.managed_pages + z.reserved_pages:
                p.append(f"{where} present != managed + reserved")
            if present:
                idx = np.nonzero(mine)[0]
                if z.zone_start_pfn > idx[0] or z.zone_end_pfn <= idx[-1]:
                    p.append(f"{where} span [{z.zone_start_pfn:#x}, {z.zone_end_pfn:#x}) does "
                             f"not cover its pages [{idx[0]:#x}, {idx[-1]:#x}]")
            fp = sum(len(fa) << o for o, fa in enumerate(z.free_area))
            if z.free_pages != fp or z.nr_free != [len(fa) for fa in z.free_area]:
                p.append(f"{where} free figures disagree with free lists")
            if z.populated != (present > 0):
                p.append(f"{where} populated={z.populated} with {present} pages")
        zs = list(pgdat.zones.values())
        for attr in ("present_pages", "managed_pages", "free_pages"):
            if getattr(pgdat, attr) != sum(getattr(z, attr) for z in zs):
                p.append(f"node {nid} {attr} != sum over its zones")
    return p


def check_machine_totals(s: Seen) -> list[str]:
    """The machine's totals are its nodes' sums; managed pages are the unreserved ones."""
    p = []
    pgdats = s.m.pgdat.values()
    managed = sum(pg.managed_pages for pg in pgdats)
    buddy = sum(len(fa) << o for pg in pgdats for z in pg.zones.values()
                for o, fa in enumerate(z.free_area))
    pcp = sum(len(v) for pg in pgdats for z in pg.zones.values() for v in z.pcp.values())
    if s.m.total_managed_pages() != managed:
        p.append(f"total_managed_pages() {s.m.total_managed_pages()} != sum {managed}")
    if s.m.total_free_pages() not in (buddy, buddy + pcp):
        p.append(f"total_free_pages() {s.m.total_free_pages()} is neither buddy {buddy} "
                 f"nor buddy+pcp {buddy + pcp}")
    unreserved = int(((s.flags & PG_RESERVED) == 0).sum())
    if managed != unreserved:
        p.append(f"sum of managed {managed} != non-reserved pages {unreserved}")
    for t in ZoneType:
        zsum = sum(pg.zones[t].pgalloc for pg in pgdats)
        if s.m.pgalloc(t) != zsum:
            p.append(f"pgalloc({t.label}) {s.m.pgalloc(t)} != sum of zone pgalloc {zsum}")
    return p


def check_managed_unchanged(s: Seen, managed_total: int) -> list[str]:
    """Pages only move between nodes: the sum of managed pages never changes."""
    managed = sum(pg.managed_pages for pg in s.m.pgdat.values())
    if managed != managed_total:
        return [f"sum of managed pages changed: {managed_total} -> {managed}"]
    return []


def check_numastat(s: Seen) -> list[str]:
    """The identities zone_statistics() keeps."""
    p = []
    for nid, pgdat in s.m.pgdat.items():
        ns = pgdat.numastat
        if ns["numa_hit"] + ns["numa_miss"] != ns["local_node"] + ns["other_node"]:
            p.append(f"node {nid} numa_hit+numa_miss != local_node+other_node: {dict(ns)}")
        if ns["interleave_hit"] > ns["numa_hit"]:
            p.append(f"node {nid} interleave_hit > numa_hit: {dict(ns)}")
    stats = [pg.numastat for pg in s.m.pgdat.values()]
    if sum(ns["numa_miss"] for ns in stats) != sum(ns["numa_foreign"] for ns in stats):
        p.append("total numa_miss != total numa_foreign")
    return p


def check_reserved_unmoved(s: Seen, baseline: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """Reserved pages are never freed and never move."""
    rpfns, rnodes = baseline
    now = np.nonzero((s.flags & PG_RESERVED) != 0)[0]
    if len(now) != len(rpfns) or (now != rpfns).any():
        return ["the set of reserved pages changed"]
    if (s.node[rpfns] != rnodes).any():
        moved = rpfns[s.node[rpfns] != rnodes]
        return [f"{len(moved)} reserved pages moved, e.g. {_first(moved)}"]
    return []


def check_layout_placement(s: Seen) -> list[str]:
    """Free pages in a range of the current layout are on its node; allocated ones that are
    not are marked PG_LOOKUP_NODE; free pages never are."""
    p = []
    cur = s.m.current
    want = expected_nodes(cur, s.node, s.n)
    wrong = range_mask(cur, s.n) & (s.node != want)
    free = (s.state == FREE_BUDDY) | (s.state == FREE_PCP)
    if (wrong & free).any():
        idx = np.nonzero(wrong & free)[0]
        p.append(f"{len(idx)} free pages in a range of layout {cur.id} are not on its node, "
                 f"e.g. {_first(idx)}")
    marked = (s.flags & PG_LOOKUP_NODE) != 0
    if (marked & free).any():
        p.append("free pages carry PG_LOOKUP_NODE")
    for head, order in s.alloc.items():
        blk = slice(head, head + (1 << order))
        if wrong[blk].any() and not marked[blk].any():
            p.append(f"allocated block {head:#x} order {order} is on node {s.node[head]} but "
                     f"layout {cur.id} puts it on {sorted(set(want[blk].tolist()))} and it is "
                     f"not marked PG_LOOKUP_NODE")
    return p


def check_layouts_and_backlog(s: Seen) -> list[str]:
    """The layouts are the current, the backlog (oldest first, at most backlog_max) and the
    pending one, each with sorted, disjoint ranges."""
    p = []
    m = s.m
    cur = m.current
    ids = [cur.id] + [b.id for b in m.backlog] + ([m.pending.id] if m.pending else [])
    if len(set(ids)) != len(ids) or set(ids) != set(m.layouts) or m.layout_ids() != sorted(ids):
        p.append(f"layouts {sorted(m.layouts)} != current+backlog+pending {ids}")
    if len(m.backlog) > m.backlog_max:
        p.append(f"backlog of {len(m.backlog)} > backlog_max {m.backlog_max}")
    bids = [b.id for b in m.backlog]
    if bids != sorted(bids) or (bids and bids[-1] >= cur.id):
        p.append(f"backlog not oldest first / older than current: {bids}, current {cur.id}")
    for lay in m.layouts.values():
        rs = lay.ranges()
        for (s1, e1, _), (s2, e2, _) in zip(rs, rs[1:]):
            if not (s1 <= e1 < s2 <= e2):
                p.append(f"layout {lay.id} ranges overlap or unsorted: {rs[:4]}")
                break
    return p


CHECKS = (check_every_pfn_in_one_state, check_online_nodes, check_free_blocks, check_pcp_lists,
          check_allocated_blocks, check_hugepage_pools, check_boot_allocations,
          check_zone_accounting, check_machine_totals, check_numastat, check_layout_placement,
          check_layouts_and_backlog)


def model_invariants(m, *, tracked=None, managed_total=None, reserved_baseline=None,
                     merged=True) -> list[str]:
    """Every violated invariant, computed from the model's public data.

    tracked: {head: order} of the blocks the test allocated and still holds; when given, the
      allocated heads must be exactly tracked + boot allocations + hugepage pools.
    managed_total: the machine's total managed pages at boot (must never change).
    reserved_baseline: (reserved pfns, their nodes) at boot (reserved pages never move).
    merged: also require the buddy lists to be fully merged (check_buddies_merged).
    """
    n = m.max_pfn
    if not len(m.page_node) == len(m.page_flags) == len(m.page_order) == n:
        return [f"page arrays are not max_pfn={n} long"]
    s = Seen.read(m)
    p: list[str] = []
    for check in CHECKS:
        p += check(s)
    if merged:
        p += check_buddies_merged(s)
    if tracked is not None:
        p += check_tracked(s, tracked)
    if managed_total is not None:
        p += check_managed_unchanged(s, managed_total)
    if reserved_baseline is not None:
        p += check_reserved_unmoved(s, reserved_baseline)
    return p


def reserved_baseline(m):
    res = np.nonzero(np.asarray(m.page_flags) & PG_RESERVED)[0]
    return res, np.asarray(m.page_node)[res].astype(np.int64)


def assert_model_ok(m, **kw):
    """m.check() finds nothing and neither do the independent invariants."""
    mine = model_invariants(m, **kw)
    theirs = m.check()
    assert mine == [], "independent invariants violated:\n" + "\n".join(mine)
    assert theirs == [], "Machine.check() reports:\n" + "\n".join(theirs)


def node_census(m):
    """Counter of (node, state) over all pfns."""
    state, _, _ = classify(m)
    return Counter(zip(np.asarray(m.page_node).tolist(), state.tolist()))


def snapshot(m):
    """A copy of the figures a test compares before and after an operation."""
    return {
        "node": np.asarray(m.page_node).astype(np.int64).copy(),
        "flags": np.asarray(m.page_flags).copy(),
        "free": free_sets(m),
        "numastat": {nid: dict(pg.numastat) for nid, pg in m.pgdat.items()},
        "stats": dict(m.stats.counts),
        "node_stats": {nid: dict(s.counts) for nid, s in m.node_stats.items()},
        "vm_events": dict(m.vm_events),
        "pgalloc": {(nid, t): z.pgalloc for nid, pg in m.pgdat.items()
                    for t, z in pg.zones.items()},
        "populated": {(nid, t) for nid, pg in m.pgdat.items() for t, z in pg.zones.items()
                      if z.populated},
    }


def numastat_delta(before, m):
    out = {}
    for nid, pg in m.pgdat.items():
        old = before["numastat"].get(nid, {})
        d = {k: v - old.get(k, 0) for k, v in pg.numastat.items() if v != old.get(k, 0)}
        if d:
            out[nid] = d
    return out


def stat_delta(before, m, name):
    return m.stats[name] - before["stats"][name]


def zone_of(m, pfn):
    """(nid, ztype) the page belongs to now."""
    return int(m.page_node[pfn]), zone_type_of(pfn)


def commit_checked(m, tracked=None, managed_total=None, reserved_baseline=None) -> dict:
    """Commit the pending layout and verify what the commit did, page by page.

    Returns the snapshot taken before the commit (with "want", the layout's node map, and
    "state", the page states before).
    """
    n = m.max_pfn
    pending = m.pending
    before = snapshot(m)
    state, _, _ = classify(m)
    online_before = set(m.pgdat)
    if pending is None:
        assert m.memlayout_commit() is None
        assert (np.asarray(m.page_node) == before["node"]).all()
        return before
    old_current = m.current
    want = expected_nodes(pending, before["node"], n)
    lay = m.memlayout_commit()
    assert lay is pending and m.current is lay and m.pending is None
    assert not m.backlog or m.backlog[-1] is old_current or m.backlog_max == 0
    node = np.asarray(m.page_node).astype(np.int64)
    flags = np.asarray(m.page_flags)
    # every node the layout names is online now, and nodes never go offline
    assert {nid for _, _, nid in pending.ranges()} | online_before <= set(m.pgdat)
    free_before = (state == FREE_BUDDY) | (state == FREE_PCP)
    # free pages: on the layout's node now (pfns outside keep theirs)
    bad = free_before & (node != want)
    assert not bad.any(), \
        f"{int(bad.sum())} free pages not moved, e.g. {_first(np.nonzero(bad)[0])}"
    # allocated and reserved pages: never moved by a commit
    stay = ~free_before
    moved_stay = stay & (node != before["node"])
    assert not moved_stay.any(), (f"{int(moved_stay.sum())} allocated/reserved pages moved by "
                                  f"the commit, e.g. {_first(np.nonzero(moved_stay)[0])}")
    # allocated pages whose node differs are marked
    alloc_wrong = (state == ALLOCATED) & (node != want)
    unmarked = alloc_wrong & ((flags & PG_LOOKUP_NODE) == 0)
    assert not unmarked.any(), (f"{int(unmarked.sum())} allocated pages on the wrong node not "
                                f"marked, e.g. {_first(np.nonzero(unmarked)[0])}")
    # the per-CPU lists are drained
    assert pcp_pages(m) == []
    changed = int((node != before["node"]).sum())
    assert m.stats["moved-pages"] - before["stats"]["moved-pages"] == changed
    add = m.stats["transplant-from-freelist-add"] - before["stats"]["transplant-from-freelist-add"]
    rem = (m.stats["transplant-from-freelist-remove"]
           - before["stats"]["transplant-from-freelist-remove"])
    assert add == rem, f"pages added to new free lists {add} != removed from old {rem}"
    # free pages move off the free lists; pages waiting on per-CPU lists are marked like any
    # non-buddy page and move when the drain frees them (transplant on free), as in the kernel
    on_free = m.stats["transplant-on-free"] - before["stats"]["transplant-on-free"]
    assert add + on_free >= changed
    rebuilds = sum(m.stats[k] - before["stats"][k]
                   for k in ("zonelist-rebuild", "no-zonelist-rebuild"))
    assert rebuilds >= 1, "every commit decides whether to rebuild the zonelists"
    populated_after = {(nid, t) for nid, pg in m.pgdat.items() for t, z in pg.zones.items()
                       if z.populated}
    if set(m.pgdat) != online_before or populated_after != before["populated"]:
        assert m.stats["zonelist-rebuild"] > before["stats"]["zonelist-rebuild"]
    assert_model_ok(m, tracked=tracked, managed_total=managed_total,
                    reserved_baseline=reserved_baseline)
    before["want"] = want
    before["state"] = state
    return before


def free_checked(m, pfn, order, managed_total=None):
    """free_pages(pfn) and verify the transplant on free: returns pages that changed node."""
    before_node = np.asarray(m.page_node).astype(np.int64).copy()
    marked = bool((np.asarray(m.page_flags)[pfn:pfn + (1 << order)] & PG_LOOKUP_NODE).any())
    s = dict(m.stats.counts)
    want = expected_nodes(m.current, before_node, m.max_pfn)[pfn:pfn + (1 << order)]
    m.free_pages(pfn)
    node = np.asarray(m.page_node).astype(np.int64)
    changed = int((node != before_node).sum())
    block = slice(pfn, pfn + (1 << order))
    assert changed == int((node[block] != before_node[block]).sum()), \
        "a free moved pages outside the freed block"
    if marked:
        assert (node[pfn:pfn + (1 << order)] == want).all(), "marked block not transplanted"
    else:
        assert changed == 0, "an unmarked block moved on free"
    assert not (np.asarray(m.page_flags)[pfn:pfn + (1 << order)] & PG_LOOKUP_NODE).any()
    assert m.stats["moved-pages"] - s["moved-pages"] == changed
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == changed
    return changed
