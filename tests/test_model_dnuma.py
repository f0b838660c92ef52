"""dnuma on the machine: pending layouts, commit, transplant on free, backlog, statistics,
and the scenarios of the seed (striping, all memory to a new node)."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from model_helpers import (
    ALLOCATED,
    FREE_BUDDY,
    FREE_PCP,
    RESERVED,
    MiB,
    alloc,
    assert_model_ok,
    boot,
    classify,
    commit_checked,
    expected_nodes,
    free_blocks,
    free_checked,
    pcp_pages,
    pending,
    reserved_baseline,
)

from dnumafs.mm import MemlayoutError, ZoneType
from dnumafs.mm.constants import PG_LOOKUP_NODE, PG_RESERVED
from dnumafs.mm.machine import ULONG_MAX
from dnumafs.mm.stats import STAT_NAMES

DMA, DMA32 = ZoneType.DMA, ZoneType.DMA32


def ctx(m):
    return dict(managed_total=m.total_managed_pages(), reserved_baseline=reserved_baseline(m))


def stripe(m, first, last, pfns):
    for i, start in enumerate(range(0, m.max_pfn, pfns)):
        nid = first + i % (last - first + 1)
        m.memlayout_add_range(start, min(start + pfns, m.max_pfn) - 1, nid)


def assert_all_unreserved_on_layout(m):
    node = np.asarray(m.page_node).astype(np.int64)
    want = expected_nodes(m.current, node, m.max_pfn)
    unreserved = (np.asarray(m.page_flags) & PG_RESERVED) == 0
    bad = unreserved & (node != want)
    assert not bad.any(), f"{int(bad.sum())} unreserved pages not on their layout node"


# ---------------------------------------------------------------- pending layouts

def test_add_range_creates_pending_with_next_id():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.memlayout_add_range(0, 99, 1)
    assert m.pending is not None and pending(m).id == 1
    assert m.layouts[1] is m.pending and m.current.id == 0
    m.memlayout_add_range(200, 299, 3)
    m.memlayout_add_range(100, 199, 0)
    assert pending(m).ranges() == [(0, 99, 1), (100, 199, 0), (200, 299, 3)]
    assert sorted(m.layouts) == [0, 1]
    assert 3 not in m.pgdat, "adding a range onlines nothing; only a commit does"


@pytest.mark.parametrize("args,err", [
    ((10, 5, 0), errno.EINVAL),
    ((0, 5, 4), errno.EINVAL),        # nid == possible_nodes
    ((0, 5, 99), errno.EINVAL),
    ((0, 5, -1), errno.EINVAL),
])
def test_add_range_invalid_creates_nothing(args, err):
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    with pytest.raises(MemlayoutError) as ei:
        m.memlayout_add_range(*args)
    assert ei.value.errno == err
    assert m.pending is None and sorted(m.layouts) == [0]
    m.memlayout_add_range(0, 5, 3)
    assert pending(m).id == 1


def test_add_range_overlap_is_eexist_and_changes_nothing():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.memlayout_add_range(100, 199, 1)
    for s, e in [(100, 199), (199, 300), (0, 100), (150, 160), (0, 1000)]:
        with pytest.raises(MemlayoutError) as ei:
            m.memlayout_add_range(s, e, 2)
        assert ei.value.errno == errno.EEXIST
    m.memlayout_add_range(200, 200, 2)    # touching is fine
    m.memlayout_add_range(99, 99, 2)
    assert pending(m).ranges() == [(99, 99, 2), (100, 199, 1), (200, 200, 2)]


def test_overlap_with_current_layout_is_not_an_error():
    m = boot(nodes=2, mem=64 * MiB)
    m.memlayout_add_range(0, m.max_pfn - 1, 1)   # overlaps layout 0's ranges: fine
    assert pending(m).ranges() == [(0, m.max_pfn - 1, 1)]


def test_clear_discards_pending_and_ids_are_not_reused():
    m = boot(nodes=2, mem=64 * MiB)
    m.memlayout_add_range(0, 9, 1)
    assert pending(m).id == 1
    m.memlayout_clear()
    assert m.pending is None and sorted(m.layouts) == [0]
    m.memlayout_clear()                          # nothing pending: no-op
    m.memlayout_add_range(0, 9, 1)
    assert pending(m).id == 2
    lay = m.memlayout_commit()
    assert lay is not None and lay.id == 2 and m.current.id == 2


def test_commit_with_nothing_pending_is_a_noop():
    m = boot(nodes=2, mem=64 * MiB)
    s = dict(m.stats.counts)
    assert m.memlayout_commit() is None
    assert m.current.id == 0 and m.backlog == []
    assert dict(m.stats.counts) == s


# ---------------------------------------------------------------- backlog

def test_backlog_keeps_at_most_backlog_max():
    m = boot(nodes=2, mem=64 * MiB)
    assert m.backlog_max == 8
    for i in range(12):
        m.memlayout_add_range(i, i, i % 2)
        m.memlayout_commit()
    assert m.current.id == 12
    assert [b.id for b in m.backlog] == list(range(4, 12))
    assert sorted(m.layouts) == list(range(4, 13))
    assert_model_ok(m)


def test_set_backlog_max_trims_at_once_oldest_first():
    m = boot(nodes=2, mem=64 * MiB)
    for i in range(5):
        m.memlayout_add_range(i, i, 1)
        m.memlayout_commit()
    m.memlayout_add_range(100, 100, 1)           # a pending layout is not in the backlog
    assert [b.id for b in m.backlog] == [0, 1, 2, 3, 4]
    m.set_backlog_max(2)
    assert m.backlog_max == 2
    assert [b.id for b in m.backlog] == [3, 4]
    assert sorted(m.layouts) == [3, 4, 5, 6]
    m.set_backlog_max(0)
    assert m.backlog == [] and sorted(m.layouts) == [5, 6]
    m.memlayout_commit()
    assert m.backlog == [] and sorted(m.layouts) == [6]
    m.set_backlog_max(3)
    for i in range(2):
        m.memlayout_add_range(i, i, 0)
        m.memlayout_commit()
    assert [b.id for b in m.backlog] == [6, 7]
    for bad in (-1, -100):
        with pytest.raises(ValueError):
            m.set_backlog_max(bad)
    assert m.backlog_max == 3
    assert_model_ok(m)


# ---------------------------------------------------------------- commit

def test_all_memory_to_the_other_node():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    free0 = m.total_free_pages()
    m.memlayout_add_range(0, m.max_pfn - 1, 1)
    commit_checked(m, tracked={}, **c)
    assert m.pgdat[0].free_pages == 0
    assert m.pgdat[1].free_pages == m.total_free_pages() >= free0
    z = m.pgdat[1].zones[DMA]
    first_free = min(h for h, _, n, t in free_blocks(m) if t == DMA)
    assert z.populated and z.zone_start_pfn <= first_free and z.zone_end_pfn == 4096
    # node 0 keeps only its reserved and still-allocated pages
    state, _, _ = classify(m)
    on0 = np.asarray(m.page_node) == 0
    assert set(np.unique(state[on0]).tolist()) <= {ALLOCATED, RESERVED}
    assert m.pgdat[0].present_pages == int(on0.sum())
    # allocation honours the new layout
    assert m.alloc_pages(0, nid=0, thisnode=True) is None
    p = m.alloc_pages(3, nid=0)
    assert int(m.page_node[p]) == 1


def test_pages_outside_the_layout_keep_their_node():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    node0 = np.asarray(m.page_node).copy()
    m.memlayout_add_range(2048, 4095, 1)         # part of node 0's DMA zone
    commit_checked(m, tracked={}, **c)
    node = np.asarray(m.page_node)
    assert (node[:2048] == node0[:2048]).all()
    assert (node[4096:] == node0[4096:]).all()
    state, _, _ = classify(m)
    free = (state == FREE_BUDDY) | (state == FREE_PCP)
    assert (node[2048:4096][free[2048:4096]] == 1).all()
    assert m.pgdat[1].zones[DMA].populated
    assert m.pgdat[0].zones[DMA].present_pages < 4096
    # a later layout that covers nothing of those pfns leaves them on node 1
    m.memlayout_add_range(8192, 9000, 1)
    commit_checked(m, tracked={}, **c)
    assert (np.asarray(m.page_node)[2048:4096][free[2048:4096]] == 1).all()


def test_range_past_max_pfn_is_ignored_beyond():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    m.memlayout_add_range(8192, 1 << 40, 0)
    m.memlayout_add_range(1 << 41, 1 << 42, 1)
    commit_checked(m, tracked={}, **c)
    assert m.pgdat[1].free_pages == 0


def test_new_node_comes_online_and_stays():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    c = ctx(m)
    m.memlayout_add_range(0, 4095, 2)
    commit_checked(m, tracked={}, **c)
    assert m.online_nodes() == [0, 1, 2]
    assert 2 in m.nodes_with_memory()
    assert m.pgdat[2].free_pages > 0 and m.pgdat[2].zones[DMA].populated
    assert m.nodes_with_cpus() == [0, 1]
    assert m.node_distance(2, 0) == 20 and m.node_distance(2, 2) == 10
    p = m.alloc_pages(2, nid=2, thisnode=True)
    assert p is not None and int(m.page_node[p]) == 2 and p < 4096
    m.free_pages(p)
    # move everything off node 2 again: it stays online, without memory
    m.memlayout_add_range(0, 4095, 0)
    commit_checked(m, tracked={}, **c)
    assert m.online_nodes() == [0, 1, 2]
    assert m.pgdat[2].present_pages == 0
    assert 2 not in m.nodes_with_memory()


def test_straddling_order10_block_is_split_to_each_ranges_node():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    blocks = [(h, nid) for h, o, nid, _ in free_blocks(m) if o == 10]
    assert blocks, "a fresh machine has free order-10 blocks"
    h, nid = blocks[0]
    other = 1 - nid
    cut = h + 100
    m.memlayout_add_range(0, cut - 1, other)     # [h, cut) goes to the other node
    m.memlayout_add_range(cut, m.max_pfn - 1, nid)
    before = commit_checked(m, tracked={}, **c)
    node = np.asarray(m.page_node)
    assert (node[h:cut] == other).all() and (node[cut:h + 1024] == nid).all()
    split = m.stats["split-pages"] - before["stats"]["split-pages"]
    assert 0 < split
    # parts land in aligned, fully merged blocks: [h, h+100) = 64 + 32 + 4
    fb = {(hh, o): n for hh, o, n, _ in free_blocks(m)}
    assert fb.get((h, 6)) == other and fb.get((h + 64, 5)) == other
    assert fb.get((h + 96, 2)) == other
    assert fb.get((h + 100, 2)) == nid and fb.get((h + 104, 3)) == nid
    assert fb.get((h + 512, 9)) == nid


def test_commit_stats_per_layout_and_node():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.memlayout_add_range(0, m.max_pfn - 1, 3)
    before = commit_checked(m, tracked={}, **ctx(m))
    lay = m.current
    for name in ("transplant-from-freelist-add", "transplant-from-freelist-remove",
                 "moved-pages", "transplant-bail-reserved"):
        delta = m.stats[name] - before["stats"][name]
        assert lay.stats[name] == delta, name
    add = lay.stats["transplant-from-freelist-add"]
    assert add > 0
    assert lay.node_stats[3]["transplant-from-freelist-add"] == add
    assert m.node_stats[3]["transplant-from-freelist-add"] == add
    assert lay.stats["transplant-examined-pfn"] > 0


def test_commit_drains_per_cpu_lists_to_the_new_node():
    m = boot(nodes=2, mem=64 * MiB, cpus=4)
    c = ctx(m)
    held = {}
    for cpu in range(4):
        p = m.alloc_pages(0, cpu=cpu)
        held[p] = 0
    assert len(pcp_pages(m)) > 0
    pcp_pfns = [p for p, *_ in pcp_pages(m)]
    s = m.stats["pcp-drain"]
    m.memlayout_add_range(0, m.max_pfn - 1, 1)
    commit_checked(m, tracked=held, **c)
    assert m.stats["pcp-drain"] > s
    assert all(int(m.page_node[p]) == 1 for p in pcp_pfns)


def test_marked_pages_move_when_freed():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    held = {}
    for order in (0, 1, 4, 9):
        for nid in (0, 1):
            held[alloc(m, order, nid=nid, thisnode=True)] = order
    m.memlayout_add_range(0, 8191, 1)
    m.memlayout_add_range(8192, m.max_pfn - 1, 0)
    commit_checked(m, tracked=held, **c)
    for p, o in held.items():
        assert (m.page_flags[p:p + (1 << o)] & PG_LOOKUP_NODE).all(), "every page of it marked"
    s = dict(m.stats.counts)
    for p, o in list(held.items()):
        old = int(m.page_node[p])
        assert free_checked(m, p, o) == 1 << o
        assert int(m.page_node[p]) == 1 - old
        del held[p]
        assert_model_ok(m, tracked=held, **c)
    total = sum(1 << o for o in (0, 1, 4, 9)) * 2
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == total
    assert m.stats["moved-pages"] - s["moved-pages"] == total


def test_unmarked_pages_do_not_pay_a_lookup():
    m = boot(nodes=2, mem=64 * MiB)
    m.memlayout_add_range(0, 4095, 1)
    commit_checked(m, tracked={}, **ctx(m))
    p = alloc(m, 3, nid=1, thisnode=True)
    lay = m.current
    h, mi = lay.stats["cache-hit"], lay.stats["cache-miss"]
    m.free_pages(p)
    assert (lay.stats["cache-hit"], lay.stats["cache-miss"]) == (h, mi)


def test_straddling_allocated_block_is_split_on_free():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    p = alloc(m, 4, nid=1, thisnode=True)
    m.memlayout_add_range(p, p + 5, 0)           # first 6 pages go to node 0, the rest stay
    commit_checked(m, tracked={p: 4}, **c)
    assert (m.page_flags[p:p + 6] & PG_LOOKUP_NODE).all()
    assert free_checked(m, p, 4) == 6
    node = np.asarray(m.page_node)
    assert (node[p:p + 6] == 0).all() and (node[p + 6:p + 16] == 1).all()
    m.drain_pcp()
    assert_model_ok(m, tracked={}, **c)


def test_second_layout_remarks_and_unmarked_back():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    p = m.alloc_pages(2, nid=0, thisnode=True)
    m.memlayout_add_range(0, 8191, 1)
    commit_checked(m, tracked={p: 2}, **c)
    assert m.page_flags[p] & PG_LOOKUP_NODE
    m.memlayout_add_range(0, 8191, 0)            # back where it is
    commit_checked(m, tracked={p: 2}, **c)
    assert free_checked(m, p, 2) == 0
    assert int(m.page_node[p]) == 0
    assert_model_ok(m, tracked={}, **c)


def test_boot_layout_again_after_moves_restores_node_sizes():
    m = boot(nodes=2, mem=64 * MiB)
    c = ctx(m)
    sizes = {n: m.pgdat[n].present_pages for n in m.pgdat}
    boot_ranges = m.current.ranges()
    m.memlayout_add_range(0, m.max_pfn - 1, 0)
    commit_checked(m, tracked={}, **c)
    for s, e, nid in boot_ranges:
        m.memlayout_add_range(s, e, nid)
    commit_checked(m, tracked={}, **c)
    assert {n: m.pgdat[n].present_pages for n in m.pgdat} == sizes


# ---------------------------------------------------------------- seed scenarios

def test_seed_stripe_128mib_8cpus_over_three_nodes():
    m = boot(nodes=2, mem=128 * MiB, cpus=8, possible_nodes=4)
    c = ctx(m)
    assert m.max_pfn == 32768
    stripe(m, 0, 2, 256)
    assert len(pending(m)) == 128
    before = commit_checked(m, tracked={}, **c)
    assert m.online_nodes() == [0, 1, 2]
    assert m.nodes_with_memory() == [0, 1, 2]
    # every free page sits in its stripe's node; no free block crosses a stripe
    for h, o, nid, _ in free_blocks(m):
        assert o <= 8, f"free block {h:#x} of order {o} spans stripes"
        assert nid == (h // 256) % 3
    assert m.stats["split-pages"] - before["stats"]["split-pages"] > 0
    want_free = {n: 0 for n in range(3)}
    state = before["state"]
    free_before = (state == FREE_BUDDY) | (state == FREE_PCP)
    for nid in range(3):
        want_free[nid] = int((free_before & (before["want"] == nid)).sum())
    assert {n: m.pgdat[n].free_pages for n in range(3)} == want_free
    # free every boot allocation: each marked page is transplanted on free
    s = dict(m.stats.counts)
    node_before = np.asarray(m.page_node).copy()
    freed = m.free_boot_allocations()
    assert freed > 0 and m.boot_allocations == []
    moved = int((np.asarray(m.page_node) != node_before).sum())
    assert moved > 0
    assert m.stats["moved-pages"] - s["moved-pages"] == moved
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == moved
    assert_model_ok(m, tracked={}, **c)
    assert_all_unreserved_on_layout(m)
    # node sizes now follow the stripes, but for reserved pages
    node = np.asarray(m.page_node)
    res = (np.asarray(m.page_flags) & PG_RESERVED) != 0
    for nid in range(3):
        in_stripes = np.zeros(m.max_pfn, bool)
        for i in range(nid, 128, 3):
            in_stripes[i * 256:(i + 1) * 256] = True
        assert m.pgdat[nid].managed_pages == int((in_stripes & ~res).sum())
        assert m.pgdat[nid].present_pages == int(((node == nid)).sum())
    assert not (np.asarray(m.page_flags)[~res] & PG_LOOKUP_NODE).any()


def test_seed_all_memory_to_new_node_3():
    m = boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4)
    c = ctx(m)
    nres = int(((np.asarray(m.page_flags) & PG_RESERVED) != 0).sum())
    res_nodes = np.asarray(m.page_node)[(np.asarray(m.page_flags) & PG_RESERVED) != 0].copy()
    m.memlayout_add_range(0, m.max_pfn - 1, 3)
    before = commit_checked(m, tracked={}, **c)
    assert m.online_nodes() == [0, 1, 3]
    assert 2 not in m.pgdat
    assert m.pgdat[0].free_pages == m.pgdat[1].free_pages == 0
    assert m.pgdat[3].free_pages == m.total_free_pages()
    assert m.stats["transplant-bail-reserved"] - before["stats"]["transplant-bail-reserved"] == nres
    assert m.stats["transplant-bail-page-not-buddy"] > 0
    # marked pages move when freed
    total_boot = sum(1 << o for _, o in m.boot_allocations)
    s = dict(m.stats.counts)
    assert m.free_boot_allocations() == total_boot
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == total_boot
    assert m.stats["moved-pages"] - s["moved-pages"] == total_boot
    assert_model_ok(m, tracked={}, **c)
    assert_all_unreserved_on_layout(m)
    # reserved pages stayed; nodes 0 and 1 hold only them
    res = (np.asarray(m.page_flags) & PG_RESERVED) != 0
    assert (np.asarray(m.page_node)[res] == res_nodes).all()
    for nid in (0, 1):
        assert m.pgdat[nid].managed_pages == 0
        assert m.pgdat[nid].present_pages == int((res_nodes == nid).sum())
    assert m.pgdat[3].managed_pages == c["managed_total"]
    m.drain_pcp()
    assert m.pgdat[3].free_pages == c["managed_total"]
    assert m.alloc_pages(0, nid=0, thisnode=True) is None
    assert int(m.page_node[m.alloc_pages(10, nid=0)]) == 3


def test_seed_freeing_boot_allocations_after_commit_counts_transplants():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    c = ctx(m)
    stripe(m, 0, 1, 512)                         # nodes 0 and 1 alternate every 512 pfns
    commit_checked(m, tracked={}, **c)
    s = dict(m.stats.counts)
    changed = 0
    for pfn, order in list(m.boot_allocations):
        changed += free_checked(m, pfn, order)
    assert changed > 0
    assert m.stats["moved-pages"] - s["moved-pages"] == changed
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == changed
    assert_all_unreserved_on_layout(m)


def test_freeing_a_boot_allocation_removes_it_from_boot_allocations():
    """boot_allocations lists what boot allocated and is still held: free_pages() of one must
    take it off, or free_boot_allocations() later frees it a second time (or frees whoever
    was given that block since)."""
    m = boot(nodes=2, mem=64 * MiB)
    p, o = m.boot_allocations[0]
    rest = list(m.boot_allocations[1:])
    m.free_pages(p)
    assert (p, o) not in m.boot_allocations
    nid = int(m.page_node[p])
    q = None
    held = []
    while q != p:                                # someone else gets that block now
        q = m.alloc_pages(o, nid=nid, thisnode=True)
        assert q is not None
        held.append(q)
    assert m.free_boot_allocations() == sum(1 << oo for _, oo in rest)
    for h in held:
        m.free_pages(h)                          # the new owner can still free it
    assert_model_ok(m, tracked={})


def test_one_zonelist_decision_per_commit():
    """Each commit counts either zonelist-rebuild or no-zonelist-rebuild, once (the original
    decides once, in update_present_page_counts()). Here the only pages that move are ones
    waiting on a per-CPU list, so the rebuild happens while the commit drains them."""
    m = boot(nodes=2, mem=32 * MiB, cpus=2, possible_nodes=4, seed=0)
    p = alloc(m, 0, cpu=0)
    on0 = sorted(q for q, nid, *_ in pcp_pages(m) if nid == 0)
    assert on0
    m.memlayout_add_range(on0[0], on0[-1], 1)
    s = dict(m.stats.counts)
    m.memlayout_commit()
    d = {k: m.stats[k] - s[k] for k in ("zonelist-rebuild", "no-zonelist-rebuild")}
    assert sorted(d.values()) == [0, 1], d
    assert d["zonelist-rebuild"] == 1, "node 1 gained a DMA zone: its zonelists changed"
    m.free_pages(p)
    assert_model_ok(m, tracked={})


def test_global_stats_are_the_sum_of_the_layouts_and_survive_their_destruction():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    c = ctx(m)
    base = dict(m.stats.counts)
    held = {m.alloc_pages(o, nid=n): o for o in (0, 3, 5) for n in (0, 1)}
    for nid in (1, 2, 0):
        m.memlayout_add_range(0, m.max_pfn - 1, nid)
        commit_checked(m, tracked=held, **c)
        p = next(iter(held))
        free_checked(m, p, held.pop(p))
    lays = list(m.layouts.values())
    assert len(lays) == 4 and m.layouts[0].id == 0      # nothing destroyed yet
    for name in STAT_NAMES:
        assert m.stats[name] == sum(lay.stats[name] for lay in lays), name
    for name in ("moved-pages", "transplant-on-free", "transplant-from-freelist-add"):
        assert m.stats[name] - base[name] > 0, name
        assert m.current.stats[name] < m.stats[name], name
    before = dict(m.stats.counts)
    before_nodes = {n: dict(s.counts) for n, s in m.node_stats.items()}
    m.set_backlog_max(0)
    assert list(m.layouts) == [m.current.id]
    assert dict(m.stats.counts) == before
    assert {n: dict(s.counts) for n, s in m.node_stats.items()} == before_nodes
    # a transplant on free after the commit counts in the current layout
    p = next(iter(held))
    cur = m.current.stats["transplant-on-free"]
    moved = free_checked(m, p, held.pop(p))
    assert m.current.stats["transplant-on-free"] == cur + moved


def test_pcp_lists_are_bounded():
    """Freed order-0 pages do not pile up on a per-CPU list: past pcp->high they go back."""
    m = boot(nodes=2, mem=64 * MiB, cpus=2)
    ps = [alloc(m, 0, cpu=0, nid=0) for _ in range(3000)]
    for p in ps:
        m.free_pages(p)
    longest = max(len(lst) for pg in m.pgdat.values() for z in pg.zones.values()
                  for lst in z.pcp.values())
    assert longest < 1000
    assert_model_ok(m, tracked={})


def test_hugepages_follow_the_layout():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    c = ctx(m)
    assert m.set_nr_hugepages(0, 2) == 2
    pool = list(m.pgdat[0].hugepage_pool)
    m.memlayout_add_range(0, m.max_pfn - 1, 1)
    commit_checked(m, tracked={}, **c)
    # pool pages are allocated: they stay on node 0, marked, until the pool gives them back
    assert m.hugepages(0) == (2, 2, 0)
    for h in pool:
        assert int(m.page_node[h]) == 0 and (m.page_flags[h:h + 512] & PG_LOOKUP_NODE).all()
    s = dict(m.stats.counts)
    assert m.set_nr_hugepages(0, 0) == 0
    assert m.stats["moved-pages"] - s["moved-pages"] == 1024
    assert m.stats["transplant-on-free"] - s["transplant-on-free"] == 1024
    assert all((np.asarray(m.page_node)[h:h + 512] == 1).all() for h in pool)
    assert m.set_nr_hugepages(0, 1) == 0, "node 0 has no free memory left"
    assert m.set_nr_hugepages(1, 2) == 2
    assert_model_ok(m, tracked={}, **c)


def test_commit_onlines_a_named_node_even_without_pages():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.memlayout_add_range(m.max_pfn + 10, m.max_pfn + 20, 3)
    commit_checked(m, tracked={}, **ctx(m))
    assert m.online_nodes() == [0, 1, 3]
    assert m.pgdat[3].present_pages == 0 and 3 not in m.nodes_with_memory()
    assert m.set_nr_hugepages(3, 1) == 0
    assert m.alloc_pages(0, nid=3, thisnode=True) is None
    p = m.alloc_pages(0, nid=3)
    assert p is not None and int(m.page_node[p]) in (0, 1)


def test_numastat_after_all_memory_moved_to_a_cpuless_node():
    from model_helpers import numastat_delta, snapshot
    m = boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4)
    m.memlayout_add_range(0, m.max_pfn - 1, 3)
    commit_checked(m, tracked={}, **ctx(m))
    assert m.nodes_with_cpus() == [0, 1]
    assert m.nodes_with_memory() == [0, 1, 3]     # 0 and 1 keep their reserved pages
    for order in (0, 4):
        s = snapshot(m)
        p = m.alloc_pages(order, cpu=0)
        assert int(m.page_node[p]) == 3
        assert numastat_delta(s, m) == {3: {"numa_miss": 1, "other_node": 1},
                                        0: {"numa_foreign": 1}}
        s = snapshot(m)
        p = m.alloc_pages(order, nid=3, cpu=3)
        assert numastat_delta(s, m) == {3: {"numa_hit": 1, "other_node": 1}}


# ---------------------------------------------------------------- the API the files read

def test_layout_lookup_by_id_and_range_by_bounds():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    stripe(m, 0, 2, 256)
    pending_layout = pending(m)
    assert m.layout_ids() == [0, 1] and m.layout(1) is pending_layout and m.layout(0) is m.current
    assert m.layout(2) is None and m.layout(-1) is None
    for start, end, nid in pending_layout.ranges():
        assert pending_layout.range_nid(start, end) == nid
    bounds = {(s, e) for s, e, _ in pending_layout.ranges()}
    start, end, _ = pending_layout.ranges()[5]
    for s, e in ((start, end - 1), (start + 1, end), (start, end + 1), (end + 1, end + 256),
                 (start - 256, start - 1), (m.max_pfn, m.max_pfn + 10)):
        assert (pending_layout.range_nid(s, e) is not None) == ((s, e) in bounds), (s, e)
    m.memlayout_commit()
    assert m.layout_ids() == [0, 1] and m.layout(1) is m.current


def test_node_stats_list_every_possible_node():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=6)
    assert m.stat_nids() == [0, 1, 2, 3, 4, 5]
    assert sorted(m.node_stats) == m.stat_nids()
    assert all(v == 0 for v in m.node_stats[5].values())


# ---------------------------------------------------------------- statistics as running totals

def test_global_statistics_are_running_totals_of_every_layout():
    """Only the current layout counts: the global figures are the retired layouts' totals,
    folded in as each stops being current, plus the current one's, so they equal the sum
    over every layout ever made, whether the backlog keeps or destroys them."""
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.set_backlog_max(ULONG_MAX)
    kept = boot(nodes=2, mem=64 * MiB, possible_nodes=4)      # the same, keeping none
    kept.set_backlog_max(0)
    for i in range(40):
        for mach in (m, kept):
            p = alloc(mach, i % 4, nid=i % 2)
            mach.memlayout_add_range(0, mach.max_pfn // 2 - 1, (i + 1) % 3)
            mach.memlayout_commit()
            mach.free_pages(p)
    every = list(m.layouts.values())
    assert len(every) == 41 and len(kept.layouts) == 1
    total = {name: sum(lay.stats[name] for lay in every) for name in STAT_NAMES}
    assert dict(m.stats) == total and dict(kept.stats) == total
    assert total["moved-pages"] > 0 and total["transplant-on-free"] > 0
    for nid in m.stat_nids():
        want = {name: sum(lay.node_stat(nid)[name] for lay in every) for name in STAT_NAMES}
        assert dict(m.node_stats[nid]) == want == dict(kept.node_stats[nid]), nid


def test_backlog_max_takes_any_unsigned_long():
    m = boot(nodes=2, mem=64 * MiB)
    m.set_backlog_max(ULONG_MAX)
    assert m.backlog_max == ULONG_MAX
    for i in range(5):
        m.memlayout_add_range(i, i, 1)
        m.memlayout_commit()
    assert [b.id for b in m.backlog] == [0, 1, 2, 3, 4]
    for bad in (ULONG_MAX + 1, 1 << 70, -1):
        with pytest.raises(ValueError):
            m.set_backlog_max(bad)
    assert m.backlog_max == ULONG_MAX
    m.set_backlog_max(1)
    assert [b.id for b in m.backlog] == [4]


def test_a_commit_that_empties_a_zone_drains_its_zonestat():
    """drain-zonestat counts each zone that a commit's move of free pages leaves empty, at
    the node the pages went to."""
    m = boot(nodes=2, node_mem=[8 * MiB, 24 * MiB], mem=32 * MiB, possible_nodes=4,
             boot_alloc_percent=0.0)
    dma = m.pgdat[1].zones[DMA]
    assert dma.populated and dma.managed_pages == dma.present_pages      # nothing reserved
    m.memlayout_add_range(dma.zone_start_pfn, dma.zone_end_pfn - 1, 2)
    commit_checked(m, tracked={}, **ctx(m))
    assert not dma.populated
    assert m.stats["drain-zonestat"] == m.node_stats[2]["drain-zonestat"] == 1
    m.memlayout_add_range(0, 15, 3)             # node 0's DMA keeps its reserved pages
    commit_checked(m, tracked={}, **ctx(m))
    assert m.stats["drain-zonestat"] == 1
