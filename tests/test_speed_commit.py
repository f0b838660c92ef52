"""The commit's whole-array moves of free blocks against the block-by-block reference.

A commit moves every free block (split where its pages are bound for several nodes) and counts
what it examined, moved, split and left. The reference below is the commit's first form, one
free block at a time through split_by_node() and dnuma_add_page_to_new_zone(), the two the
transplant on free still uses. The same commits run on two machines booted alike, one through
the reference and one through the commit as it is, must leave everything the same: the page
arrays, each free list in its order (what the next allocation takes), the zones' spans and
sizes, every counter of every layout, the nodes resized, and an empty invariant check.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_helpers import MiB, boot

from dnumafs.mm import Machine, dnuma, page_alloc
from dnumafs.mm.constants import PG_BUDDY, PG_HEAD, PG_RESERVED
from dnumafs.mm.machine import ULONG_MAX
from dnumafs.mm.memory_hotplug import HotplugError, OnlineType

# ---------------------------------------------------------------- the reference

def ref_count_examined(m: Machine, layout: Any) -> None:
    max_pfn = m.mem_map.max_pfn
    target = layout.node_map(m.mem_map.page_node)
    starts = np.array([min(s, max_pfn) for s in layout.starts], dtype=np.int64)
    ends = np.array([min(e, max_pfn - 1) for e in layout.ends], dtype=np.int64)
    lengths = np.maximum(ends - starts + 1, 0)
    examined = np.bincount(np.asarray(layout.nids, dtype=np.int64), weights=lengths,
                           minlength=m.possible_nodes).astype(np.int64)
    bound = np.bincount(target[target != m.mem_map.page_node], minlength=m.possible_nodes)
    for nid in np.flatnonzero(examined):
        stats = m.current.counter(int(nid))
        stats.transplant_examined_pfn += int(examined[nid])
        stats.transplant_bail_nid_eq += int(examined[nid]) - int(bound[nid])


def ref_move_free_pages(m: Machine, target: np.ndarray) -> None:
    mm = m.mem_map
    heads = [int(h) for h in np.flatnonzero(mm.page_flags & PG_BUDDY)]
    blocks = [(h, int(mm.order[h])) for h in heads
              if (target[h:h + (1 << mm.order[h])] != mm.page_node[h]).any()]
    for pfn, order in blocks:
        page_alloc.del_page_from_free_list(mm, page_alloc.page_zone(m, pfn), pfn, order)
    for pfn, order in blocks:
        old = mm.node[pfn]
        for p, o, tgt in dnuma.split_by_node(m, target[pfn:pfn + (1 << order)], pfn, order,
                                             old):
            if tgt == old:
                page_alloc.free_one_page(mm, page_alloc.page_zone(m, p), p, o)
                continue
            m.current.counter(old).transplant_from_freelist_remove += 1 << o
            zone = dnuma.dnuma_add_page_to_new_zone(m, p, 1 << o, old, tgt)
            m.current.counter(tgt).transplant_from_freelist_add += 1 << o
            page_alloc.free_one_page(mm, zone, p, o)


def ref_mark_page_range(m: Machine, target: np.ndarray) -> None:
    mm = m.mem_map
    for pfn in np.flatnonzero(target != mm.page_node):
        pfn = int(pfn)
        stats = m.current.counter(mm.node[pfn])
        if mm.flags[pfn] & PG_RESERVED:
            stats.transplant_bail_reserved += 1
        else:
            stats.transplant_bail_page_not_buddy += 1
            mm.flags[pfn] |= dnuma.PG_LOOKUP_NODE


REFERENCE = {"count_examined": ref_count_examined,
             "dnuma_move_free_pages": ref_move_free_pages,
             "dnuma_mark_page_range": ref_mark_page_range}


# ---------------------------------------------------------------- what is compared

def state(m: Machine) -> dict[str, Any]:
    mm = m.mem_map
    zones = {}
    for nid, pgdat in m.pgdat.items():
        for zt, z in pgdat.zones.items():
            zones[(nid, int(zt))] = (z.zone_start_pfn, z.spanned_pages, z.present_pages,
                                     z.managed_pages, [list(fa) for fa in z.free_area],
                                     {c: list(lst) for c, lst in z.pcp.items()})
    layouts = {lid: {nid: attrs.asdict(s) for nid, s in lay.counters.items()}
               for lid, lay in m.layouts.items()}
    return {"node": mm.page_node.tobytes(), "flags": mm.page_flags.tobytes(),
            "order": mm.page_order.tobytes(), "zones": zones, "layouts": layouts,
            "retired": attrs.asdict(m.retired), "resized": sorted(m.resized),
            "zonelists": {n: [(z.nid, int(z.type)) for z in zl]
                          for n, zl in m.zonelists.items()},
            "events": attrs.asdict(m.vm_events)}


def assert_same(a: Machine, b: Machine) -> None:
    sa, sb = state(a), state(b)
    for key in sa:
        assert sa[key] == sb[key], f"{key} differs"
    assert a.check() == [] and b.check() == []


Step = Callable[[Machine], None]


def run_both(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any],
             steps: list[Step]) -> Machine:
    """Boot two alike machines, run steps on each (commits through the reference on the
    first), compare after every step; returns the second."""
    ref, new = boot(**config), boot(**config)
    assert_same(ref, new)
    for step in steps:
        with monkeypatch.context() as mp:
            for name, fn in REFERENCE.items():
                mp.setattr(dnuma, name, fn)
            step(ref)
        step(new)
        assert_same(ref, new)
    return new


# ---------------------------------------------------------------- steps

def ranges(rs: list[tuple[int, int, int]]) -> Step:
    def step(m: Machine) -> None:
        for s, e, nid in rs:
            m.memlayout_add_range(s, e, nid)
        m.memlayout_commit()
    return step


def stripe(first: int, last: int, pfns: int) -> Step:
    def step(m: Machine) -> None:
        for i, s in enumerate(range(0, m.max_pfn, pfns)):
            m.memlayout_add_range(s, min(s + pfns, m.max_pfn) - 1,
                                  first + i % (last - first + 1))
        m.memlayout_commit()
    return step


def all_to(nid: int) -> Step:
    return ranges([(0, ULONG_MAX, nid)])


def random_ranges(seed: int, count: int, nids: list[int]) -> Step:
    """Ranges of random lengths with gaps, cutting free blocks anywhere."""
    def step(m: Machine) -> None:
        rng = random.Random(seed)
        pfn = rng.randrange(0, 1000)
        for _ in range(count):
            if pfn > m.max_pfn + 100:
                break
            end = min(pfn + rng.randrange(1, m.max_pfn // count * 2), m.max_pfn + 100)
            m.memlayout_add_range(pfn, end, rng.choice(nids))
            pfn = end + 1 + rng.choice((0, 0, rng.randrange(1, 3000)))
        m.memlayout_commit()
    return step


def churn(seed: int, n: int = 400) -> Step:
    """Allocate blocks of mixed order and free half of them (marked ones transplant), and
    leave pages on the per-CPU lists for the next commit to drain."""
    def step(m: Machine) -> None:
        rng = random.Random(seed)
        held = []
        for _ in range(n):
            pfn = m.alloc_pages(rng.choice((0, 0, 0, 1, 3, 5)), cpu=rng.randrange(m.nr_cpus))
            if pfn is not None:
                held.append(pfn)
        for pfn in held[::2]:
            m.free_pages(pfn, cpu=rng.randrange(m.nr_cpus))
        m.free_boot_allocations(limit=len(m.boot_allocs) // 3)
    return step


def hugepages(nid: int, count: int, order: int = 9) -> Step:
    def step(m: Machine) -> None:
        m.set_nr_hugepages(nid, count, order)
    return step


def block_state(how: OnlineType, which: int) -> Step:
    """Offline (or online as asked) the which-th block that accepts it."""
    def step(m: Machine) -> None:
        done = 0
        for bid in range(m.blocks.count):
            try:
                changed = m.memory_block_set_state(bid, how)
            except HotplugError:
                continue
            if changed:
                if done == which:
                    return
                done += 1
    return step


# ---------------------------------------------------------------- the tests

def test_stripes_and_all_to(monkeypatch):
    run_both(monkeypatch, dict(nodes=2, mem=128 * MiB, cpus=4, possible_nodes=8),
             [stripe(0, 3, 300), churn(1), stripe(0, 7, 1 << 10), all_to(5), churn(2),
              stripe(1, 2, 4097), all_to(0)])


def test_ranges_cutting_free_blocks_with_gaps(monkeypatch):
    m = run_both(monkeypatch, dict(nodes=3, mem=96 * MiB, cpus=6, possible_nodes=6),
                 [random_ranges(s, c, [0, 1, 2, 4, 5]) for s, c in
                  ((1, 7), (2, 60), (3, 300), (4, 3))] + [churn(3), random_ranges(5, 40, [3])])
    assert m.stats["split-pages"] > 0 and m.stats["transplant-from-freelist-add"] > 0


def test_hugepages_offline_and_movable_blocks(monkeypatch):
    run_both(monkeypatch, dict(nodes=2, mem=256 * MiB, cpus=4, possible_nodes=4,
                               block_size=8 * MiB),
             [hugepages(0, 20), hugepages(1, 10), block_state(OnlineType.OFFLINE, 0),
              block_state(OnlineType.OFFLINE, 3), stripe(0, 3, 3000),
              block_state(OnlineType.ONLINE_MOVABLE, 0), churn(4), stripe(2, 3, 777),
              hugepages(0, 5), block_state(OnlineType.OFFLINE, 1), all_to(1),
              block_state(OnlineType.ONLINE_MOVABLE, 0), random_ranges(6, 30, [0, 1, 2, 3])])


def test_a_commit_that_empties_zones(monkeypatch):
    """A node's zones left empty (drain-zonestat) and filled again in one commit."""
    m = run_both(monkeypatch, dict(nodes=4, mem=64 * MiB, cpus=4, possible_nodes=4,
                                   boot_alloc_percent=0),
                 [all_to(3), ranges([(0, 2000, 0), (2001, 9000, 1), (9001, ULONG_MAX, 2)]),
                  stripe(0, 3, 5000)])
    assert m.stats["drain-zonestat"] > 0


def test_wide_node_ids(monkeypatch):
    """Node ids above 255 (two bytes a page)."""
    run_both(monkeypatch, dict(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=300),
             [stripe(0, 299, 2048), churn(5), random_ranges(7, 50, [0, 1, 256, 299])])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 20000), st.integers(0, 5000), st.integers(0, 4)),
                min_size=1, max_size=12),
       st.integers(0, 3))
def test_any_ranges(monkeypatch, spans, seed):
    """Any ranges (lengths, gaps, nodes), after churn that leaves blocks of every order."""
    rs, pfn = [], 0
    for length, gap, nid in spans:
        rs.append((pfn + gap, pfn + gap + length - 1, nid))
        pfn += gap + length
    run_both(monkeypatch, dict(nodes=2, mem=32 * MiB, cpus=2, possible_nodes=5),
             [churn(seed, 100), ranges(rs), churn(seed + 1, 50)])


def test_reference_and_commit_differ_when_a_count_differs(monkeypatch):
    """The comparison sees a single page counted at another node."""
    ref, new = boot(), boot()
    for m in (ref, new):
        stripe(0, 1, 300)(m)
    new.current.counter(0).split_pages += 1
    with pytest.raises(AssertionError, match="layouts differ"):
        assert_same(ref, new)


def test_allocations_after_the_commit_take_the_same_blocks(monkeypatch):
    """The free lists' order is what the next allocations take: they agree block by block."""
    got = []

    def allocs(m: Machine) -> None:
        pfns = [m.alloc_pages(o, nid=n) for o in (0, 3, 9, 10) for n in (0, 1, 2)]
        got.append(pfns)
        assert all((m.page_flags[p] & PG_HEAD) for p in pfns if p is not None)

    run_both(monkeypatch, dict(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=3),
             [stripe(0, 2, 333), allocs])
    assert got[0] == got[1]
