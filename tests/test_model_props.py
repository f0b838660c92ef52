"""Property tests: random sequences of allocator and dnuma operations on small machines, with
every invariant checked after every step."""
from __future__ import annotations

import errno
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)
from model_helpers import (
    MiB,
    assert_model_ok,
    boot,
    commit_checked,
    expected_nodes,
    free_checked,
    pending,
    reserved_baseline,
)

from dnumafs.mm import MemlayoutError
from dnumafs.mm.constants import HPAGE_ORDER, MAX_ORDER, PG_HEAD, PG_LOOKUP_NODE, PG_RESERVED

CONFIGS = [
    dict(nodes=2, mem=16 * MiB),                                        # all DMA
    dict(nodes=2, mem=32 * MiB),                                        # DMA | DMA32
    dict(nodes=3, mem=48 * MiB),
    dict(nodes=2, mem=16 * MiB + 8192, node_mem=[4 * MiB + 8192, 12 * MiB]),  # odd boundary
    dict(nodes=3, mem=34 * MiB + 12288,
         node_mem=[8 * MiB, 20 * MiB + 12288, 6 * MiB]),                # zone edge inside node 1
]

NODE_STATS = ("moved-pages", "transplant-on-free", "transplant-from-freelist-add",
              "transplant-from-freelist-remove", "split-pages", "transplant-bail-reserved",
              "transplant-bail-page-not-buddy")

STEPS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


class DnumaModel(RuleBasedStateMachine):
    """The test keeps its own record of held blocks and pending ranges and compares. The
    blocks it allocates form a bundle, from which frees draw (and take) them."""

    blocks = Bundle("blocks")           # (head pfn, order) of blocks the test holds

    @initialize(cfg=st.sampled_from(CONFIGS), cpus=st.integers(1, 4), seed=st.integers(0, 3),
                pct=st.sampled_from([0.0, 5.0, 20.0]))
    def boot_machine(self, cfg, cpus, seed, pct):
        self.m = boot(cpus=cpus, possible_nodes=4, seed=seed, boot_alloc_percent=pct, **cfg)
        self.held: dict[int, int] = {}
        self.pending: list[tuple[int, int, int]] = []
        self.managed = self.m.total_managed_pages()
        self.res = reserved_baseline(self.m)
        self.prev_node = np.asarray(self.m.page_node).astype(np.int64).copy()
        self.prev_moved = self.m.stats["moved-pages"]
        self.ids = 0                      # highest layout id handed out so far
        self.prev_stats = {}
        # the statistics of every layout as last seen, and of those destroyed since
        self.seen: dict[int, dict[int | None, Counter]] = {}
        self.gone: dict[int | None, Counter] = defaultdict(Counter)

    # ------------------------------------------------------------ allocator

    @rule(target=blocks, data=st.data(), order=st.integers(0, MAX_ORDER - 1),
          thisnode=st.booleans(), interleave=st.booleans(), use_cpu_node=st.booleans())
    def alloc(self, data, order, thisnode, interleave, use_cpu_node):
        m = self.m
        cpu = data.draw(st.integers(0, m.nr_cpus - 1), label="cpu")
        nid = None if use_cpu_node else data.draw(st.sampled_from(m.online_nodes()), label="nid")
        pref = m.cpu_node[cpu] if nid is None else nid
        ns = {n: dict(pg.numastat) for n, pg in m.pgdat.items()}
        pgalloc = sum(z.pgalloc for pg in m.pgdat.values() for z in pg.zones.values())
        p = m.alloc_pages(order, nid=nid, cpu=cpu, interleave=interleave, thisnode=thisnode)
        delta = {n: {k: v - ns[n][k] for k, v in pg.numastat.items() if v != ns[n][k]}
                 for n, pg in m.pgdat.items()}
        delta = {n: d for n, d in delta.items() if d}
        if p is None:
            assert delta == {}
            return multiple()
        assert p % (1 << order) == 0
        assert p not in self.held
        assert m.page_flags[p] & PG_HEAD and m.page_order[p] == order
        got = int(m.page_node[p])
        if thisnode:
            assert got == pref
        want: dict[int, dict[str, int]] = {}
        loc = "local_node" if got == m.cpu_node[cpu] else "other_node"
        # zone_statistics() compares with the first zone of the preferred node's zonelist:
        # that node if it has memory, else the nearest node that has.
        with_mem = [n for n in sorted(m.pgdat) if m.pgdat[n].present_pages]
        stat_pref = pref if pref in with_mem else \
            min(with_mem, key=lambda n: (m.node_distance(pref, n), n))
        if got == stat_pref:
            want[got] = {"numa_hit": 1, loc: 1}
        else:
            want[got] = {"numa_miss": 1, loc: 1}
            want[stat_pref] = {"numa_foreign": 1}
        if interleave and got == pref:
            want[got]["interleave_hit"] = 1
        assert delta == want
        assert sum(z.pgalloc for pg in m.pgdat.values() for z in pg.zones.values()) \
            == pgalloc + (1 << order)
        self.held[p] = order
        return p, order

    @rule(block=consumes(blocks))
    def free(self, block):
        p, order = block
        assert self.held.pop(p) == order
        pgfree = self.m.vm_events["pgfree"]
        free_checked(self.m, p, order)
        assert self.m.vm_events["pgfree"] == pgfree + (1 << order)

    @rule(data=st.data())
    def free_bad(self, data):
        m = self.m
        cands = [0, m.max_pfn, -1] + [p + 1 for p, o in self.held.items() if o > 0][:3]
        cands += [h for pg in m.pgdat.values() for h in pg.hugepage_pool][:2]
        p = data.draw(st.sampled_from(cands), label="bad pfn")
        flags = m.page_flags.copy()
        with pytest.raises(ValueError):
            m.free_pages(p)
        assert (m.page_flags == flags).all()

    @rule(limit=st.sampled_from([None, 0, 1, 16, 200]))
    def free_boot(self, limit):
        m = self.m
        allocs = list(m.boot_allocations)
        freed = m.free_boot_allocations(limit=limit)
        rest = list(m.boot_allocations)
        gone = allocs[:len(allocs) - len(rest)]
        assert rest == allocs[len(gone):]
        assert freed == sum(1 << o for _, o in gone)
        if limit is None:
            assert rest == []

    @rule()
    def drain(self):
        self.m.drain_pcp()
        assert all(not lst for pg in self.m.pgdat.values() for z in pg.zones.values()
                   for lst in z.pcp.values())

    @rule(data=st.data(), count=st.integers(0, 5))
    def hugepages(self, data, count):
        m = self.m
        nid = data.draw(st.sampled_from(m.online_nodes()), label="nid")
        old = m.pgdat[nid].nr_hugepages
        got = m.set_nr_hugepages(nid, count)
        assert got == m.pgdat[nid].nr_hugepages == m.hugepages(nid)[0]
        if count <= old:
            assert got == count
        else:
            assert old <= got <= count
        assert all(int(m.page_node[h]) == nid for h in m.pgdat[nid].hugepage_pool)

    # ------------------------------------------------------------ memlayout

    def _expect_add(self, start, end, nid):
        if start > end or not 0 <= nid < self.m.possible_nodes:
            return errno.EINVAL
        if any(s <= end and start <= e for s, e, _ in self.pending):
            return errno.EEXIST
        return None

    def _add(self, start, end, nid):
        m = self.m
        err = self._expect_add(start, end, nid)
        had_pending = m.pending is not None
        if err is None:
            m.memlayout_add_range(start, end, nid)
            if not had_pending:
                self.ids += 1
                assert pending(m).id == self.ids
            self.pending.append((start, end, nid))
        else:
            with pytest.raises(MemlayoutError) as ei:
                m.memlayout_add_range(start, end, nid)
            assert ei.value.errno == err
            assert (m.pending is not None) == had_pending
        if m.pending is not None:
            assert pending(m).ranges() == sorted(self.pending)

    @rule(data=st.data(), nid=st.integers(-1, 4))
    def add_range(self, data, nid):
        n = self.m.max_pfn
        start = data.draw(st.integers(0, n + 64), label="start")
        length = data.draw(st.one_of(st.integers(-3, 64), st.integers(0, n)), label="len")
        self._add(start, start + length - 1 if length > 0 else start + length, nid)

    @rule(first=st.integers(0, 3), span=st.integers(0, 3),
          pfns=st.sampled_from([37, 64, 256, 1000, 4096]))
    def stripe(self, first, span, pfns):
        """The seed's dnuma-test striping: consecutive stripes over nodes first..last."""
        self.clear()
        m = self.m
        last = min(first + span, 3)
        for i, s in enumerate(range(0, m.max_pfn, pfns)):
            r = (s, min(s + pfns, m.max_pfn) - 1, first + i % (last - first + 1))
            m.memlayout_add_range(*r)
            self.pending.append(r)
        self.ids += 1
        assert pending(m).id == self.ids
        assert pending(m).ranges() == self.pending

    @rule(nid=st.integers(0, 3))
    def all_to(self, nid):
        self.clear()
        self._add(0, self.m.max_pfn - 1, nid)

    @rule()
    def clear(self):
        self.m.memlayout_clear()
        self.pending = []
        assert self.m.pending is None

    @rule()
    def commit(self):
        m = self.m
        had = m.pending is not None
        commit_checked(m, tracked=self.held, managed_total=self.managed,
                       reserved_baseline=self.res)
        if had:
            assert m.current.id == self.ids
            assert m.current.ranges() == sorted(self.pending)
        self.pending = []

    @rule(n=st.integers(-1, 10))
    def backlog_max(self, n):
        m = self.m
        if n < 0:
            with pytest.raises(ValueError):
                m.set_backlog_max(n)
            return
        old = [b.id for b in m.backlog]
        m.set_backlog_max(n)
        assert m.backlog_max == n
        assert [b.id for b in m.backlog] == old[max(0, len(old) - n):]

    # ------------------------------------------------------------ invariants

    @invariant()
    def invariants_hold(self):
        m = self.m
        assert_model_ok(m, tracked=self.held, managed_total=self.managed,
                        reserved_baseline=self.res)
        node = np.asarray(m.page_node).astype(np.int64)
        changed = int((node != self.prev_node).sum())
        assert m.stats["moved-pages"] - self.prev_moved == changed
        self.prev_node = node.copy()
        self.prev_moved = m.stats["moved-pages"]
        # counters only grow, whatever layouts the backlog destroys
        now: dict[tuple[int | None, str], int] = {(None, k): v for k, v in m.stats.items()}
        for nid, st_ in m.node_stats.items():
            now.update({(nid, k): v for k, v in st_.items()})
        went_down = {k: (self.prev_stats[k], v) for k, v in now.items()
                     if v < self.prev_stats.get(k, 0)}
        assert not went_down, f"statistics decreased: {went_down}"
        # page events happen on a node: the per-node counts add up to the global one
        for name in NODE_STATS:
            per_node = sum(st_[name] for st_ in m.node_stats.values())
            assert per_node == m.stats[name], (name, per_node, m.stats[name])
        self.prev_stats = now
        self.check_totals_are_every_layouts_sum()

    def check_totals_are_every_layouts_sum(self):
        """Global statistics, per node and in all, are the sum over every layout ever made:
        those alive now, and those destroyed (as they were when last seen, since a layout
        counts nothing once it is no longer current)."""
        m = self.m
        for lid in set(self.seen) - set(m.layouts):
            for nid, counts in self.seen.pop(lid).items():
                self.gone[nid] += counts
        self.seen = {lid: {None: Counter(dict(lay.stats)),
                           **{nid: Counter(dict(st_)) for nid, st_ in lay.node_stats.items()}}
                     for lid, lay in m.layouts.items()}
        for nid in [None, *m.stat_nids()]:
            want = sum((c.get(nid, Counter()) for c in self.seen.values()), self.gone[nid])
            got = m.stats if nid is None else m.node_stats[nid]
            assert {k: v for k, v in got.items() if v} == dict(+want), nid

    def teardown(self):
        m = getattr(self, "m", None)
        if m is None:
            return
        # give everything back: then every page but the reserved ones is where the layout says
        for p in sorted(self.held):
            m.free_pages(p)
        self.held.clear()
        m.free_boot_allocations()
        for nid in m.online_nodes():
            assert m.set_nr_hugepages(nid, 0) == 0
        m.drain_pcp()
        assert_model_ok(m, tracked={}, managed_total=self.managed, reserved_baseline=self.res)
        flags = np.asarray(m.page_flags)
        unreserved = (flags & PG_RESERVED) == 0
        assert not (flags[unreserved] & PG_LOOKUP_NODE).any()
        node = np.asarray(m.page_node).astype(np.int64)
        want = expected_nodes(m.current, node, m.max_pfn)
        assert (node[unreserved] == want[unreserved]).all()
        assert m.total_free_pages() == m.total_managed_pages() == self.managed


DnumaModel.TestCase.settings = STEPS
TestDnumaModel = DnumaModel.TestCase


# ---------------------------------------------------------------- @given sequences

layouts = st.lists(
    st.tuples(st.integers(0, 8191), st.integers(1, 3000), st.integers(0, 3)),
    min_size=1, max_size=8)


@settings(max_examples=25, deadline=None)
@given(seq=st.lists(layouts, min_size=1, max_size=4), orders=st.lists(st.integers(0, 10),
       max_size=20), seed=st.integers(0, 5))
def test_commit_sequences_then_free_everything(seq, orders, seed):
    """Layouts committed one after another, with allocations held across them: every commit
    moves exactly the free pages; freeing everything afterwards lands every unreserved page
    on the last layout's node, and the free lists are one canonical buddy decomposition."""
    m = boot(nodes=2, mem=32 * MiB, cpus=2, possible_nodes=4, seed=seed)
    managed = m.total_managed_pages()
    res = reserved_baseline(m)
    held = {}
    rng = np.random.default_rng(seed)
    for ranges in seq:
        for o in orders:
            choices = [None] + m.online_nodes()
            nid = choices[int(rng.integers(0, len(choices)))]
            p = m.alloc_pages(o, nid=nid, cpu=int(rng.integers(0, 2)))
            if p is not None:
                held[p] = o
        taken: list[tuple[int, int]] = []
        for s, ln, nid in ranges:
            e = min(s + ln - 1, m.max_pfn - 1)
            if any(a <= e and s <= b for a, b in taken):
                continue
            m.memlayout_add_range(s, e, nid)
            taken.append((s, e))
        commit_checked(m, tracked=held, managed_total=managed, reserved_baseline=res)
        # free half of what is held after each commit
        for p in sorted(held)[::2]:
            free_checked(m, p, held.pop(p))
        assert_model_ok(m, tracked=held, managed_total=managed, reserved_baseline=res)
    for p in sorted(held):
        free_checked(m, p, held.pop(p))
    m.free_boot_allocations()
    m.drain_pcp()
    assert_model_ok(m, tracked={}, managed_total=managed, reserved_baseline=res)
    flags = np.asarray(m.page_flags)
    unreserved = (flags & PG_RESERVED) == 0
    node = np.asarray(m.page_node).astype(np.int64)
    want = expected_nodes(m.current, node, m.max_pfn)
    assert (node[unreserved] == want[unreserved]).all()
    assert m.total_free_pages() == managed
    # canonical: rebuilding the same free pages from scratch gives the same blocks
    assert canonical_blocks(m) == {(h, o) for pg in m.pgdat.values()
                                   for z in pg.zones.values()
                                   for o, fa in enumerate(z.free_area) for h in fa}


def canonical_blocks(m):
    """The maximal aligned buddy blocks covering the free pages of each (node, zone type)."""
    from model_helpers import FREE_BUDDY, classify, zone_types_array
    state, _, _ = classify(m)
    node = np.asarray(m.page_node).astype(np.int64)
    zt = zone_types_array(m.max_pfn)
    key = node * 4 + zt
    free = state == FREE_BUDDY
    out = set()
    p = 0
    n = m.max_pfn
    while p < n:
        if not free[p]:
            p += 1
            continue
        o = MAX_ORDER - 1
        while o > 0:
            size = 1 << o
            if p % size == 0 and p + size <= n and free[p:p + size].all() \
                    and (key[p:p + size] == key[p]).all():
                break
            o -= 1
        out.add((p, o))
        p += 1 << o
    return out


@settings(max_examples=20, deadline=None)
@given(order=st.integers(0, HPAGE_ORDER + 1), n=st.integers(1, 40), seed=st.integers(0, 3))
def test_alloc_free_roundtrip_restores_free_lists(order, n, seed):
    """n allocations of one order and their frees leave the free lists as they were."""
    from model_helpers import free_sets
    m = boot(nodes=2, mem=32 * MiB, cpus=2, seed=seed)
    m.drain_pcp()
    before = free_sets(m)
    got = [m.alloc_pages(order, cpu=i % 2) for i in range(n)]
    held = [p for p in got if p is not None]
    assert len(set(held)) == len(held)
    for p in reversed(held):
        m.free_pages(p)
    m.drain_pcp()
    assert free_sets(m) == before
