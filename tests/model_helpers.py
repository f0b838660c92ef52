"""Shared helpers for the model tests: small machines and invariants computed independently.

The invariant functions here look only at the model's public data (page arrays, zones, free
lists, per-CPU lists, hugepage pools, layouts) and recompute every figure themselves; they do not
call Machine.check(), so that a test can compare the two.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from dnumafs.mm.constants import (
    HPAGE_ORDER,
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


def boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4, node_mem=None, seed=0,
         boot_alloc_percent=5.0):
    from dnumafs.mm import Machine, MachineConfig

    return Machine.boot(MachineConfig(nodes=nodes, mem=mem, node_mem=node_mem, cpus=cpus,
                                      possible_nodes=possible_nodes,
                                      boot_alloc_percent=boot_alloc_percent, seed=seed))


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
    for head, order, nid, ztype in free_blocks(m):
        size = 1 << order
        if head < 0 or head + size > n:
            problems.append(f"free block {head:#x} order {order} outside 0..max_pfn")
            continue
        cov[head:head + size] += 1
        state[head:head + size] = FREE_BUDDY
    for pfn, nid, ztype, cpu in pcp_pages(m):
        if not 0 <= pfn < n:
            problems.append(f"pcp page {pfn:#x} outside 0..max_pfn")
            continue
        cov[pfn] += 1
        state[pfn] = FREE_PCP
    for head, order in allocated_blocks(m).items():
        size = 1 << order
        if order < 0 or order >= MAX_ORDER or head + size > n:
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


def model_invariants(m, *, tracked=None, managed_total=None, reserved_baseline=None,
                     merged=True) -> list[str]:
    """Every violated invariant, computed from the model's public data.

    tracked: {head: order} of the blocks the test allocated and still holds; when given, the
      allocated heads must be exactly tracked + boot allocations + hugepage pools.
    managed_total: the machine's total managed pages at boot (must never change).
    reserved_baseline: (reserved pfns, their nodes) at boot (reserved pages never move).
    merged: also require the buddy lists to be fully merged (no two free buddies of one order
      in one zone), as Linux's __free_one_page leaves them.
    """
    p: list[str] = []
    n = m.max_pfn
    node = np.asarray(m.page_node).astype(np.int64)
    flags = np.asarray(m.page_flags)
    order_arr = np.asarray(m.page_order)
    ztypes = zone_types_array(n)
    if len(node) != n or len(flags) != n or len(order_arr) != n:
        return [f"page arrays are not max_pfn={n} long"]

    # --- every pfn in exactly one state
    state, cov, cp = classify(m)
    p += cp
    bad = np.nonzero(cov != 1)[0]
    if len(bad):
        zero = bad[cov[bad] == 0]
        many = bad[cov[bad] > 1]
        if len(zero):
            p.append(f"{len(zero)} pfns in no state (lost), e.g. {_first(zero)}")
        if len(many):
            p.append(f"{len(many)} pfns in several states (duplicated), e.g. {_first(many)}")

    online = sorted(m.pgdat)
    if m.online_nodes() != online:
        p.append(f"online_nodes() {m.online_nodes()} != pgdat keys {online}")
    if not set(np.unique(node).tolist()) <= set(online):
        p.append(f"page_node has offline nodes: {set(np.unique(node).tolist()) - set(online)}")

    # --- free blocks: aligned, one zone of one node, flags
    buddy_heads = set()
    for head, order, nid, ztype in free_blocks(m):
        size = 1 << order
        buddy_heads.add(head)
        if head % size:
            p.append(f"free block {head:#x} order {order} not aligned")
        if head + size > n:
            continue
        if not (node[head:head + size] == nid).all():
            p.append(f"free block {head:#x} order {order} on node {nid} list has pages of "
                     f"nodes {sorted(set(node[head:head + size].tolist()))}")
        if not (ztypes[head:head + size] == int(ztype)).all():
            p.append(f"free block {head:#x} order {order} on {ztype.label} list spans other "
                     f"zone types")
        if not flags[head] & PG_BUDDY:
            p.append(f"free block head {head:#x} lacks PG_BUDDY")
        if order_arr[head] != order:
            p.append(f"free block head {head:#x} on order-{order} list has page_order "
                     f"{order_arr[head]}")
        if (flags[head:head + size]
                & (PG_LOOKUP_NODE | PG_RESERVED | PG_HEAD | PG_PCP | PG_HUGETLB)).any():
            p.append(f"free block {head:#x} has pages flagged allocated/reserved/pcp/lookup")
        z = m.pgdat[nid].zones[ztype]
        if z.nid != nid or z.type != ztype:
            p.append(f"zone under pgdat[{nid}][{ztype.label}] says nid {z.nid} type {z.type}")
        if not (z.zone_start_pfn <= head and head + size <= z.zone_end_pfn):
            p.append(f"free block {head:#x} outside the span of node {nid} {ztype.label}")
    flagged_buddy = set(np.nonzero(flags & PG_BUDDY)[0].tolist())
    if flagged_buddy != buddy_heads:
        extra = sorted(flagged_buddy - buddy_heads)[:5]
        missing = sorted(buddy_heads - flagged_buddy)[:5]
        p.append(f"PG_BUDDY pages != free list heads (flag only: {extra}, list only: {missing})")

    # --- fully merged buddy lists
    if merged:
        index = {(head, order): (nid, ztype) for head, order, nid, ztype in free_blocks(m)}
        for (head, order), where in index.items():
            if order >= MAX_ORDER - 1:
                continue
            buddy = head ^ (1 << order)
            if buddy > head and index.get((buddy, order)) == where:
                p.append(f"free buddies {head:#x} and {buddy:#x} of order {order} on node "
                         f"{where[0]} {where[1].label} left unmerged")

    # --- per-CPU lists
    pcp_set = set()
    for pfn, nid, ztype, cpu in pcp_pages(m):
        pcp_set.add(pfn)
        if not 0 <= cpu < m.nr_cpus:
            p.append(f"pcp list of cpu {cpu} (only {m.nr_cpus} cpus)")
        if 0 <= pfn < n:
            if node[pfn] != nid or ztypes[pfn] != int(ztype):
                p.append(f"pcp page {pfn:#x} on node {nid} {ztype.label} list is node "
                         f"{node[pfn]} zone {ZoneType(int(ztypes[pfn])).label}")
            if not flags[pfn] & PG_PCP:
                p.append(f"pcp page {pfn:#x} lacks PG_PCP")
            if flags[pfn] & PG_LOOKUP_NODE:
                p.append(f"free pcp page {pfn:#x} still has PG_LOOKUP_NODE")
    flagged_pcp = set(np.nonzero(flags & PG_PCP)[0].tolist())
    if flagged_pcp != pcp_set:
        p.append(f"PG_PCP pages != pcp list pages ({len(flagged_pcp)} vs {len(pcp_set)})")

    # --- allocated blocks: aligned, within one node and zone type
    alloc = allocated_blocks(m)
    for head, order in alloc.items():
        size = 1 << order
        if head % size:
            p.append(f"allocated block {head:#x} order {order} not aligned")
        if head + size > n:
            continue
        if len(set(node[head:head + size].tolist())) != 1:
            p.append(f"allocated block {head:#x} order {order} spans several nodes")
        if len(set(ztypes[head:head + size].tolist())) != 1:
            p.append(f"allocated block {head:#x} order {order} spans several zone types")
        if flags[head] & (PG_BUDDY | PG_PCP | PG_RESERVED):
            p.append(f"allocated block head {head:#x} also flagged free or reserved")
    boot_allocs = dict(m.boot_allocations)
    pools = {}
    for nid, pgdat in m.pgdat.items():
        for h in pgdat.hugepage_pool:
            pools[h] = nid
            if h % (1 << HPAGE_ORDER):
                p.append(f"hugepage {h:#x} of node {nid} not aligned to order {HPAGE_ORDER}")
            if not flags[h] & PG_HUGETLB:
                p.append(f"hugepage {h:#x} of node {nid} lacks PG_HUGETLB")
            if alloc.get(h) != HPAGE_ORDER:
                p.append(f"hugepage {h:#x} of node {nid} is not an allocated order-9 block")
            if node[h] != nid:
                p.append(f"hugepage {h:#x} in node {nid}'s pool is on node {node[h]}")
        total, free, surplus = m.hugepages(nid)
        if (total, free, surplus) != (len(pgdat.hugepage_pool), len(pgdat.hugepage_pool), 0):
            p.append(f"hugepages({nid}) = {(total, free, surplus)} but pool has "
                     f"{len(pgdat.hugepage_pool)}")
        if pgdat.nr_hugepages != len(pgdat.hugepage_pool):
            p.append(f"node {nid} nr_hugepages != pool length")
    for h, o in boot_allocs.items():
        if alloc.get(h) != o:
            p.append(f"boot allocation {h:#x} order {o} is not an allocated block of that order")
        if h in pools:
            p.append(f"boot allocation {h:#x} is also a hugepage")
    if tracked is not None:
        expect = dict(boot_allocs)
        expect.update({h: HPAGE_ORDER for h in pools})
        for h, o in tracked.items():
            if h in expect:
                p.append(f"tracked allocation {h:#x} is also a boot allocation or hugepage")
            expect[h] = o
        if expect != alloc:
            only_model = sorted(set(alloc) - set(expect))[:5]
            only_test = sorted(set(expect) - set(alloc))[:5]
            diff_order = sorted(h for h in set(alloc) & set(expect) if alloc[h] != expect[h])[:5]
            p.append(f"allocated blocks differ from the test's record: model only {only_model}, "
                     f"test only {only_test}, order differs {diff_order}")

    # --- zone and node accounting, recomputed from the page arrays
    res = (flags & PG_RESERVED) != 0
    sum_managed = 0
    buddy_total = 0
    pcp_total = 0
    for nid, pgdat in m.pgdat.items():
        if pgdat.nid != nid:
            p.append(f"pgdat[{nid}].nid == {pgdat.nid}")
        if set(pgdat.zones) != set(ZoneType):
            p.append(f"node {nid} lacks some zone types: {sorted(pgdat.zones)}")
        for ztype, z in pgdat.zones.items():
            mine = (node == nid) & (ztypes == int(ztype))
            present = int(mine.sum())
            reserved = int((mine & res).sum())
            if z.present_pages != present:
                p.append(f"node {nid} {ztype.label} present_pages {z.present_pages} but "
                         f"{present} pages are on it")
            if z.managed_pages != present - reserved:
                p.append(f"node {nid} {ztype.label} managed_pages {z.managed_pages} != present "
                         f"{present} - reserved {reserved}")
            if z.present_pages != z.managed_pages + z.reserved_pages:
                p.append(f"node {nid} {ztype.label} present != managed + reserved")
            if present:
                idx = np.nonzero(mine)[0]
                if z.zone_start_pfn > idx[0] or z.zone_end_pfn <= idx[-1]:
                    p.append(f"node {nid} {ztype.label} span [{z.zone_start_pfn:#x}, "
                             f"{z.zone_end_pfn:#x}) does not cover its pages "
                             f"[{idx[0]:#x}, {idx[-1]:#x}]")
            fp = sum(len(fa) << o for o, fa in enumerate(z.free_area))
            if z.free_pages != fp or z.nr_free != [len(fa) for fa in z.free_area]:
                p.append(f"node {nid} {ztype.label} free figures disagree with free lists")
            buddy_total += fp
            pcp_total += sum(len(v) for v in z.pcp.values())
            if z.populated != (present > 0):
                p.append(f"node {nid} {ztype.label} populated={z.populated} with {present} pages")
        zs = list(pgdat.zones.values())
        for attr in ("present_pages", "managed_pages", "free_pages"):
            if getattr(pgdat, attr) != sum(getattr(z, attr) for z in zs):
                p.append(f"node {nid} {attr} != sum over its zones")
        sum_managed += pgdat.managed_pages
        # numastat identities of zone_statistics()
        ns = pgdat.numastat
        if ns["numa_hit"] + ns["numa_miss"] != ns["local_node"] + ns["other_node"]:
            p.append(f"node {nid} numa_hit+numa_miss != local_node+other_node: {ns}")
        if ns["interleave_hit"] > ns["numa_hit"]:
            p.append(f"node {nid} interleave_hit > numa_hit: {ns}")
    if sum(pg.numastat["numa_miss"] for pg in m.pgdat.values()) != \
            sum(pg.numastat["numa_foreign"] for pg in m.pgdat.values()):
        p.append("total numa_miss != total numa_foreign")
    if m.total_managed_pages() != sum_managed:
        p.append(f"total_managed_pages() {m.total_managed_pages()} != sum {sum_managed}")
    if managed_total is not None and sum_managed != managed_total:
        p.append(f"sum of managed pages changed: {managed_total} -> {sum_managed}")
    if m.total_free_pages() not in (buddy_total, buddy_total + pcp_total):
        p.append(f"total_free_pages() {m.total_free_pages()} is neither buddy {buddy_total} "
                 f"nor buddy+pcp {buddy_total + pcp_total}")
    if sum_managed != int((~res).sum()):
        p.append(f"sum of managed {sum_managed} != non-reserved pages {int((~res).sum())}")
    for t in ZoneType:
        zsum = sum(pg.zones[t].pgalloc for pg in m.pgdat.values())
        if m.pgalloc(t) != zsum:
            p.append(f"pgalloc({t.label}) {m.pgalloc(t)} != sum of zone pgalloc {zsum}")

    if reserved_baseline is not None:
        rpfns, rnodes = reserved_baseline
        now = np.nonzero(res)[0]
        if len(now) != len(rpfns) or (now != rpfns).any():
            p.append("the set of reserved pages changed")
        elif (node[rpfns] != rnodes).any():
            moved = rpfns[node[rpfns] != rnodes]
            p.append(f"{len(moved)} reserved pages moved, e.g. {_first(moved)}")

    # --- layout: free pages and unmarked allocated pages in a range are on its node
    cur = m.current
    want = expected_nodes(cur, node, n)
    inr = range_mask(cur, n)
    wrong = inr & (node != want)
    free_wrong = wrong & ((state == FREE_BUDDY) | (state == FREE_PCP))
    if free_wrong.any():
        idx = np.nonzero(free_wrong)[0]
        p.append(f"{len(idx)} free pages in a range of layout {cur.id} are not on its node, "
                 f"e.g. {_first(idx)}")
    marked = (flags & PG_LOOKUP_NODE) != 0
    if (marked & ((state == FREE_BUDDY) | (state == FREE_PCP))).any():
        p.append("free pages carry PG_LOOKUP_NODE")
    for head, order in alloc.items():
        size = 1 << order
        blk = slice(head, head + size)
        if wrong[blk].any() and not marked[blk].any():
            p.append(f"allocated block {head:#x} order {order} is on node {node[head]} but "
                     f"layout {cur.id} puts it on {sorted(set(want[blk].tolist()))} and it is "
                     f"not marked PG_LOOKUP_NODE")

    # --- layouts, backlog
    ids = [cur.id] + [b.id for b in m.backlog] + ([m.pending.id] if m.pending else [])
    if len(set(ids)) != len(ids) or set(ids) != set(m.layouts):
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
    assert not bad.any(), f"{int(bad.sum())} free pages not moved, e.g. {_first(np.nonzero(bad)[0])}"
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
    assert changed == int((node[pfn:pfn + (1 << order)] != before_node[pfn:pfn + (1 << order)]).sum()), \
        "a free moved pages outside the freed block"
    if marked:
        assert (node[pfn:pfn + (1 << order)] == want).all(), "marked block not transplanted"
    else:
        assert changed == 0, "an unmarked block moved on free"
    assert not (np.asarray(m.page_flags)[pfn:pfn + (1 << order)] & PG_LOOKUP_NODE).any()
    assert m.stats["moved-pages"] - s["moved-pages"] == changed
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == changed
    return changed
