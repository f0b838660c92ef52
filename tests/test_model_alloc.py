"""The buddy allocator: split, merge, fallback, numastat, per-CPU lists, hugepages, frees."""
from __future__ import annotations

import random

import numpy as np
import pytest
from model_helpers import (
    MiB,
    alloc,
    assert_model_ok,
    boot,
    free_sets,
    numastat_delta,
    pcp_pages,
    reserved_baseline,
    snapshot,
    zone_of,
)

from dnumafs.mm import ZoneType
from dnumafs.mm.constants import (
    HPAGE_ORDER,
    MAX_ORDER,
    PG_HEAD,
    PG_HUGETLB,
    PG_PCP,
    PG_RESERVED,
)
from dnumafs.mm.kinds import Kind

DMA, DMA32 = ZoneType.DMA, ZoneType.DMA32


def exhaust(m, nid, cpu=0, thisnode=True, held=None):
    """Allocate from nid (thisnode) until nothing is left at any order; returns [(pfn, order)]."""
    held = [] if held is None else held
    for order in range(MAX_ORDER - 1, -1, -1):
        while True:
            p = m.alloc_pages(order, nid=nid, cpu=cpu, thisnode=thisnode)
            if p is None:
                break
            held.append((p, order))
    return held


# ---------------------------------------------------------------- split and merge

def test_alloc_splits_the_smallest_sufficient_block():
    m = boot(nodes=2, mem=64 * MiB)
    zone = m.pgdat[1].zones[DMA32]           # node 1's only zone
    k = 3
    held = []
    while zone.free_area[k]:                 # use up order-k blocks so the next one splits
        p = m.alloc_pages(k, nid=1, thisnode=True)
        assert p is not None
        held.append(p)
    j = next(o for o in range(k + 1, MAX_ORDER) if zone.free_area[o])
    before_heads = set(zone.free_area[j])
    nr_before = zone.nr_free
    fp_before = zone.free_pages
    p = m.alloc_pages(k, nid=1, thisnode=True)
    assert p in before_heads, "the block must come from the smallest non-empty order >= k"
    assert p % (1 << k) == 0
    assert p not in zone.free_area[j]
    for i in range(k, j):
        assert p + (1 << i) in zone.free_area[i], f"upper half of order {i} not on its list"
    nr = zone.nr_free
    assert nr[j] == nr_before[j] - 1
    for i in range(k, j):
        assert nr[i] == nr_before[i] + 1
    for i in list(range(0, k)) + list(range(j + 1, MAX_ORDER)):
        assert nr[i] == nr_before[i]
    assert zone.free_pages == fp_before - (1 << k)
    assert m.page_flags[p] & PG_HEAD and m.page_order[p] == k
    assert m.page_node[p] == 1
    assert_model_ok(m, tracked={h: k for h in held + [p]})


def test_last_freed_block_is_allocated_first():
    m = boot(nodes=2, mem=64 * MiB)
    a = alloc(m, 2, nid=1, thisnode=True)
    b = alloc(m, 2, nid=1, thisnode=True)
    c = alloc(m, 2, nid=1, thisnode=True)
    m.free_pages(b)
    assert m.alloc_pages(2, nid=1, thisnode=True) == b
    assert_model_ok(m, tracked={a: 2, b: 2, c: 2})


def test_buddy_pair_merges_back_to_the_original_block():
    m = boot(nodes=2, mem=64 * MiB)
    zone = m.pgdat[1].zones[DMA32]
    k = 4
    while zone.free_area[k]:
        m.alloc_pages(k, nid=1, thisnode=True)
    before = free_sets(m)
    a = alloc(m, k, nid=1, thisnode=True)
    b = alloc(m, k, nid=1, thisnode=True)
    assert b == a ^ (1 << k), "second order-k block is the buddy split off the first"
    m.free_pages(a)
    assert a in zone.free_area[k]            # buddy b is allocated: no merge yet
    m.free_pages(b)
    assert a not in zone.free_area[k] and b not in zone.free_area[k]
    assert free_sets(m) == before


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_allocs_then_frees_restore_free_lists(seed):
    m = boot(nodes=2, mem=64 * MiB, seed=seed)
    rng = random.Random(seed)
    m.drain_pcp()
    before = free_sets(m)
    held = {}
    for _ in range(300):
        order = rng.choice([0, 0, 0, 1, 2, 3, 5, 8, 10])
        p = m.alloc_pages(order, nid=rng.choice([None, 0, 1]), cpu=rng.randrange(4),
                          thisnode=rng.random() < 0.3)
        if p is not None:
            assert p % (1 << order) == 0
            held[p] = order
    assert_model_ok(m, tracked=held)
    items = list(held.items())
    rng.shuffle(items)
    for p, _ in items:
        m.free_pages(p)
    m.drain_pcp()
    assert_model_ok(m, tracked={})
    assert free_sets(m) == before


def test_no_merge_across_a_node_boundary():
    # node 0 ends at pfn 1026 (not aligned): pfns 1024-1025 and 1026-1027 are order-1 buddies
    # on different nodes and must never merge.
    node_mem = [4 * MiB + 2 * 4096, 8 * MiB]
    m = boot(nodes=2, mem=sum(node_mem), node_mem=node_mem, boot_alloc_percent=0.0)
    m.drain_pcp()
    assert_model_ok(m, tracked={})
    for head, order, nid, _ in [(h, o, n, t) for (n, t, o), hs in free_sets(m).items()
                                 for h in hs]:
        assert nid == (0 if head < 1026 else 1)
        assert (head < 1026) == (head + (1 << order) - 1 < 1026)


# ---------------------------------------------------------------- fallback

def test_preferred_node_highest_zone_first():
    m = boot(nodes=2, mem=64 * MiB)
    for order in (0, 1, 5, 10):
        p = m.alloc_pages(order, nid=0)
        assert zone_of(m, p) == (0, DMA32), (order, p)
        p = m.alloc_pages(order, nid=1)
        assert zone_of(m, p) == (1, DMA32), (order, p)


def test_nid_defaults_to_the_cpus_node():
    m = boot(nodes=2, mem=64 * MiB, cpus=4)
    assert int(m.page_node[m.alloc_pages(0, cpu=3)]) == 1
    assert int(m.page_node[m.alloc_pages(2, cpu=1)]) == 0
    assert int(m.page_node[m.alloc_pages(2, cpu=2)]) == 1


def test_fallback_to_lower_zone_then_other_node():
    m = boot(nodes=2, mem=64 * MiB)
    seq = []
    for order in range(MAX_ORDER - 1, -1, -1):
        while (p := m.alloc_pages(order, nid=0, thisnode=True)) is not None:
            seq.append(zone_of(m, p))
    assert seq[0] == (0, DMA32)
    assert {s[0] for s in seq} == {0}, "thisnode must never leave node 0"
    zones = [s[1] for s in seq]
    assert DMA in zones and DMA32 in zones, "node 0 must fall back to its DMA zone"
    first_dma = zones.index(DMA)
    assert zones[:first_dma] == [DMA32] * first_dma
    before1 = snapshot(m)
    assert m.alloc_pages(0, nid=0, thisnode=True) is None
    assert m.alloc_pages(3, nid=0, thisnode=True) is None
    assert numastat_delta(before1, m) == {}, "a failed allocation counts nothing"
    p = m.alloc_pages(3, nid=0, cpu=0)
    assert p is not None and int(m.page_node[p]) == 1


def test_fallback_order_among_equal_distances_is_by_nid():
    m = boot(nodes=3, mem=96 * MiB, cpus=3, possible_nodes=4)
    exhaust(m, 1)
    p = m.alloc_pages(2, nid=1, cpu=1)
    assert int(m.page_node[p]) == 0, "contract: nid order among equal distances"
    exhaust(m, 0)
    p = m.alloc_pages(2, nid=1, cpu=1)
    assert int(m.page_node[p]) == 2
    exhaust(m, 2)
    assert m.alloc_pages(0, nid=1) is None
    assert m.alloc_pages(10, cpu=0) is None


def test_thisnode_leaves_other_nodes_untouched():
    m = boot(nodes=2, mem=64 * MiB)
    before = {k: v for k, v in free_sets(m).items() if k[0] == 0}
    held = exhaust(m, 1)
    assert held and all(int(m.page_node[p]) == 1 for p, _ in held)
    assert {k: v for k, v in free_sets(m).items() if k[0] == 0} == before
    assert m.alloc_pages(0, nid=1, thisnode=True) is None
    assert_model_ok(m, tracked=dict(held))


# ---------------------------------------------------------------- numastat and vmstat

@pytest.mark.parametrize("order", [0, 3])
def test_numastat_follows_zone_statistics(order):
    m = boot(nodes=2, mem=64 * MiB, cpus=4)     # cpus 0,1 -> node 0; 2,3 -> node 1

    def d(**kw):
        s = snapshot(m)
        p = m.alloc_pages(order, **kw)
        assert p is not None
        return numastat_delta(s, m), p

    assert d(cpu=0)[0] == {0: {"numa_hit": 1, "local_node": 1}}
    assert d(cpu=3)[0] == {1: {"numa_hit": 1, "local_node": 1}}
    assert d(nid=1, cpu=0)[0] == {1: {"numa_hit": 1, "other_node": 1}}
    assert d(nid=0, cpu=2)[0] == {0: {"numa_hit": 1, "other_node": 1}}
    assert d(nid=0, cpu=1, interleave=True)[0] == \
        {0: {"numa_hit": 1, "local_node": 1, "interleave_hit": 1}}
    assert d(nid=1, cpu=1, interleave=True)[0] == \
        {1: {"numa_hit": 1, "other_node": 1, "interleave_hit": 1}}
    exhaust(m, 1, cpu=2)
    assert d(nid=1, cpu=2)[0] == {0: {"numa_miss": 1, "other_node": 1},
                                  1: {"numa_foreign": 1}}
    assert d(cpu=3)[0] == {0: {"numa_miss": 1, "other_node": 1}, 1: {"numa_foreign": 1}}
    assert d(nid=1, cpu=0)[0] == {0: {"numa_miss": 1, "local_node": 1},
                                  1: {"numa_foreign": 1}}
    # an interleaved allocation that misses is no interleave hit
    assert d(nid=1, cpu=0, interleave=True)[0] == {0: {"numa_miss": 1, "local_node": 1},
                                                   1: {"numa_foreign": 1}}


def test_pgalloc_and_pgfree_count_pages():
    m = boot(nodes=2, mem=64 * MiB)
    for order in (0, 2, 9):
        s = snapshot(m)
        p = alloc(m, order, nid=0)
        z = m.pgdat[0].zones[DMA32]
        assert z.pgalloc - s["pgalloc"][(0, DMA32)] == 1 << order
        assert m.pgalloc(DMA32) - sum(v for (_, t), v in s["pgalloc"].items() if t == DMA32) \
            == 1 << order
        assert m.pgalloc(DMA) == sum(v for (_, t), v in s["pgalloc"].items() if t == DMA)
        s = snapshot(m)
        m.free_pages(p)
        assert m.vm_events["pgfree"] - s["vm_events"]["pgfree"] == 1 << order
    s = snapshot(m)
    m.drain_pcp()
    assert m.vm_events["pgfree"] == s["vm_events"]["pgfree"], "a drain frees nothing new"


# ---------------------------------------------------------------- per-CPU lists

def test_order0_goes_through_the_per_cpu_list():
    m = boot(nodes=2, mem=64 * MiB, cpus=4)
    m.drain_pcp()
    zone = m.pgdat[0].zones[DMA32]
    total = zone.free_pages + zone.pcp_pages
    p = m.alloc_pages(0, cpu=1)
    assert zone_of(m, p) == (0, DMA32)
    assert zone.free_pages + zone.pcp_pages == total - 1
    assert not m.page_flags[p] & PG_PCP and m.page_flags[p] & PG_HEAD
    assert p not in {q for q, *_ in pcp_pages(m)}
    lst = list(zone.pcp.get(1, []))
    assert lst, "an order-0 allocation refills the CPU's list in a batch, as rmqueue_bulk"
    other = list(zone.pcp.get(0, []))
    q = m.alloc_pages(0, cpu=1)
    assert q in lst, "the next order-0 allocation on that CPU comes from its list"
    assert list(zone.pcp.get(0, [])) == other, "other CPUs' lists are untouched"
    assert all(m.page_flags[r] & PG_PCP for r in zone.pcp.get(1, []))
    assert_model_ok(m, tracked={p: 0, q: 0})


def test_freed_order0_page_goes_to_a_pcp_list_and_drain_empties_them():
    m = boot(nodes=2, mem=64 * MiB, cpus=4)
    m.drain_pcp()
    before = free_sets(m)
    ps = [alloc(m, 0, cpu=c) for c in range(4) for _ in range(5)]
    for p in ps:
        m.free_pages(p)
        nid, zt = zone_of(m, p)
        zone = m.pgdat[nid].zones[zt]
        on_pcp = any(p in lst for lst in zone.pcp.values())
        in_buddy = any(p in fa or any(h <= p < h + (1 << o) for h in fa)
                       for o, fa in enumerate(zone.free_area))
        assert on_pcp != in_buddy
    assert sum(len(x) for x in pcp_pages(m)) > 0
    assert_model_ok(m, tracked={})
    m.drain_pcp()
    assert pcp_pages(m) == []
    for pg in m.pgdat.values():
        for z in pg.zones.values():
            assert z.pcp_pages == 0
    assert free_sets(m) == before
    assert_model_ok(m, tracked={})


def test_pcp_pages_are_not_counted_as_buddy_free():
    m = boot(nodes=2, mem=64 * MiB)
    m.drain_pcp()
    z = m.pgdat[1].zones[DMA32]
    fp = z.free_pages
    m.alloc_pages(0, nid=1)
    assert z.pcp_pages > 0
    assert z.free_pages == fp - 1 - z.pcp_pages


# ---------------------------------------------------------------- frees

def test_free_errors_change_nothing():
    m = boot(nodes=2, mem=64 * MiB)
    p = alloc(m, 2, nid=1)
    m.set_nr_hugepages(1, 1)
    h = m.pgdat[1].hugepage_pool[0]
    free_block = next(iter(m.pgdat[1].zones[DMA32].free_area[5]), None)
    before = free_sets(m)
    bad = [p + 1, p + 3, 0, h, h + 1, m.max_pfn, -1]
    if free_block is not None:
        bad.append(free_block)
    for pfn in bad:
        with pytest.raises(ValueError):
            m.free_pages(pfn)
        assert free_sets(m) == before
    m.free_pages(p)
    with pytest.raises(ValueError):
        m.free_pages(p)                      # double free
    assert_model_ok(m, tracked={})


def test_free_boot_allocations_oldest_first():
    m = boot(nodes=2, mem=64 * MiB)
    allocs = list(m.boot_allocations)
    assert len(allocs) >= 4
    assert m.free_boot_allocations(limit=0) == 0
    assert m.boot_allocations == allocs
    freed = m.free_boot_allocations(limit=3)
    rest = list(m.boot_allocations)
    gone = allocs[:len(allocs) - len(rest)]
    assert rest == allocs[len(gone):], "boot allocations are freed oldest first"
    assert gone and freed == sum(1 << o for _, o in gone)
    for p, _ in gone:
        assert not m.page_flags[p] & PG_HEAD
    assert_model_ok(m, tracked={})
    total = m.free_boot_allocations()
    assert total == sum(1 << o for _, o in rest)
    assert m.boot_allocations == []
    m.drain_pcp()
    assert m.total_free_pages() == m.total_managed_pages()
    assert_model_ok(m, tracked={})


# ---------------------------------------------------------------- hugepages

def test_hugepages_grow_and_shrink_from_the_nodes_buddy():
    m = boot(nodes=2, mem=64 * MiB)
    base = reserved_baseline(m)
    managed = m.total_managed_pages()
    before = free_sets(m)
    f0, f1 = m.pgdat[0].free_pages, m.pgdat[1].free_pages
    assert m.set_nr_hugepages(1, 3) == 3
    pool = list(m.pgdat[1].hugepage_pool)
    assert len(pool) == 3 and m.hugepages(1) == (3, 3, 0) and m.pgdat[1].nr_hugepages == 3
    for h in pool:
        assert h % 512 == 0 and int(m.page_node[h]) == 1
        assert m.page_flags[h] & PG_HUGETLB and m.page_order[h] == HPAGE_ORDER
    assert m.pgdat[1].free_pages == f1 - 3 * 512
    assert m.pgdat[0].free_pages == f0
    assert m.hugepages(0) == (0, 0, 0)
    assert_model_ok(m, tracked={}, managed_total=managed, reserved_baseline=base)
    assert m.set_nr_hugepages(1, 1) == 1
    assert m.hugepages(1) == (1, 1, 0)
    assert m.pgdat[1].free_pages == f1 - 512
    assert_model_ok(m, tracked={}, managed_total=managed, reserved_baseline=base)
    assert m.set_nr_hugepages(1, 0) == 0
    assert m.pgdat[1].hugepage_pool == []
    assert free_sets(m) == before
    assert_model_ok(m, tracked={}, managed_total=managed, reserved_baseline=base)


def test_hugepages_limited_by_the_nodes_memory():
    m = boot(nodes=2, mem=64 * MiB)
    f0 = m.pgdat[0].free_pages
    got = m.set_nr_hugepages(1, 10 ** 6)
    assert 0 < got < 16 and got == m.pgdat[1].nr_hugepages == m.hugepages(1)[0]
    assert m.pgdat[0].free_pages == f0, "node 1's pool never takes node 0's memory"
    assert all(int(m.page_node[h]) == 1 for h in m.pgdat[1].hugepage_pool)
    assert m.set_nr_hugepages(1, got + 1) == got
    assert_model_ok(m, tracked={})


def test_hugepage_errors():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=8)
    with pytest.raises(ValueError):
        m.set_nr_hugepages(5, 1)            # possible but offline
    with pytest.raises(ValueError):
        m.set_nr_hugepages(0, -1)
    assert m.hugepages(0) == (0, 0, 0)


@pytest.mark.parametrize("kw", [
    dict(order=MAX_ORDER), dict(order=-1), dict(order=0, nid=3), dict(order=0, nid=-1),
    dict(order=2, cpu=4), dict(order=0, cpu=-1),
])
def test_bad_alloc_arguments_raise_and_change_nothing(kw):
    m = boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4)   # node 3 possible, offline
    before = free_sets(m)
    s = snapshot(m)
    with pytest.raises(ValueError):
        m.alloc_pages(**kw)
    assert free_sets(m) == before
    assert numastat_delta(s, m) == {}
    assert_model_ok(m, tracked={})


def test_pgfree_counts_the_pages_boot_frees_into_the_buddy_allocator():
    """__free_pages_core(): every page boot gives the buddy allocator is counted as freed,
    reserved ones never; boot's own allocations are not frees."""
    m = boot(nodes=2, mem=64 * MiB, boot_alloc_percent=10.0)
    reserved = int(np.count_nonzero(m.page_flags & PG_RESERVED))
    assert m.vm_events.pgfree == m.total_managed_pages() == m.max_pfn - reserved
    assert m.boot_allocations, "boot allocated something, which pgfree does not undo"


# ---------------------------------------------------------------- drop_caches

def test_drop_caches_frees_page_cache_and_slab_apart():
    """1 frees the file LRU's page cache, 2 the reclaimable slab, each counting its event
    once; anonymous memory, shmem, unreclaimable slab, page tables and kernel stacks stay."""
    m = boot(nodes=2, mem=64 * MiB, boot_alloc_percent=20.0)
    kind_of = {p: Kind(m.kinds.kind[p]) for p, _ in m.boot_allocations}
    held = dict(m.boot_allocations)
    assert {Kind.INACTIVE_FILE, Kind.SLAB_RECLAIMABLE, Kind.SLAB_UNRECLAIMABLE,
            Kind.INACTIVE_ANON} <= set(kind_of.values()) and Kind.NONE not in kind_of.values()
    free = m.total_free_pages() + sum(len(lst) for pg in m.pgdat.values()
                                      for z in pg.zones.values() for lst in z.pcp.values())

    def left(dropped):
        return {p: o for p, o in held.items() if kind_of[p] not in dropped}

    m.drop_caches(1)
    dropped = {Kind.ACTIVE_FILE, Kind.INACTIVE_FILE}
    assert dict(m.boot_allocations) == left(dropped)
    assert (m.vm_events["drop_pagecache"], m.vm_events["drop_slab"]) == (1, 0)
    assert all(m.kind_pages(n)[k] == 0 for n in (0, 1) for k in dropped)
    m.drop_caches(2)
    dropped.add(Kind.SLAB_RECLAIMABLE)
    assert dict(m.boot_allocations) == left(dropped)
    assert (m.vm_events["drop_pagecache"], m.vm_events["drop_slab"]) == (1, 1)
    kept = {k: sum(m.kind_pages(n)[k] for n in (0, 1)) for k in set(Kind) - dropped}
    assert kept == {k: sum(1 << held[p] for p in held if kind_of[p] == k) for k in kept}
    assert kept[Kind.SLAB_UNRECLAIMABLE] and kept[Kind.INACTIVE_ANON]
    m.drain_pcp()
    assert m.total_free_pages() == free + sum(o for p, o in
                                              ((p, 1 << o) for p, o in held.items())
                                              if kind_of[p] in dropped)
    m.drop_caches(3)                        # nothing left to free: still two events
    m.drop_caches(4)                        # only silences Linux's message
    assert (m.vm_events["drop_pagecache"], m.vm_events["drop_slab"]) == (2, 2)
    assert dict(m.boot_allocations) == left(dropped)
    assert_model_ok(m, tracked={})


def test_kinds_are_counted_where_allocated_and_uncounted_when_freed():
    """An allocation of a kind counts on its node and zone until freed; a marked page keeps
    counting on its old node (an allocated page never changes node) until its free
    transplants it; the checker finds a count that disagrees with the blocks."""
    m = boot(nodes=2, mem=64 * MiB, boot_alloc_percent=0.0)
    assert all(m.kind_pages(n) == [0] * len(Kind) for n in (0, 1))
    pfn = m.alloc_pages(3, nid=1, kind=Kind.SHMEM)
    assert pfn is not None and m.page_node[pfn] == 1
    assert m.kind_pages(1)[Kind.SHMEM] == 8 == m.kind_pages(1, int(ZoneType.DMA32))[Kind.SHMEM]
    m.memlayout_add_range(0, m.max_pfn - 1, 0)
    m.memlayout_commit()
    assert m.kind_pages(1)[Kind.SHMEM] == 8 and m.check() == []
    m.free_pages(pfn)
    assert m.page_node[pfn] == 0 and m.kind_pages(1)[Kind.SHMEM] == 0
    assert m.kind_pages(0)[Kind.SHMEM] == 0
    assert m.check() == []
    pfn = m.alloc_pages(0, nid=0, kind=Kind.PAGETABLE)
    m.kinds.counts[0][ZoneType.DMA32][Kind.PAGETABLE] += 1
    assert any("PAGETABLE" in e for e in m.check())


@pytest.mark.parametrize("mode", [0, 5, -1, 8])
def test_drop_caches_refuses_other_modes_and_changes_nothing(mode):
    m = boot(nodes=2, mem=64 * MiB)
    held, events = m.boot_allocations, dict(m.vm_events)
    with pytest.raises(ValueError):
        m.drop_caches(mode)
    assert m.boot_allocations == held and dict(m.vm_events) == events
