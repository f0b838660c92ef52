"""Memory blocks in the model: offline and online of a block, ZONE_MOVABLE, blocks and dnuma
together, and a state machine mixing them with layouts, allocations and frees."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule
from model_helpers import MiB, alloc, boot

from dnumafs.mm import Machine, ZoneType
from dnumafs.mm import memory_hotplug as mh
from dnumafs.mm.constants import PAGE_SHIFT, PG_BUDDY, PG_HEAD, PG_OFFLINE, PG_PCP, PG_RESERVED
from dnumafs.mm.kinds import FILE_CACHE, RECLAIMABLE_SLAB
from dnumafs.mm.memory_hotplug import HotplugError, OnlineType

GiB = 1 << 30
BLOCK = 4 * MiB                     # small blocks, so a 64 MiB machine has sixteen
BLOCK_PAGES = BLOCK >> PAGE_SHIFT


def small(**kw) -> Machine:
    return boot(**{"block_size": BLOCK, **kw})


def state(m: Machine) -> tuple:
    """Everything an offline or online may change, to compare before and after."""
    zones = [(z.present_pages, z.managed_pages, z.zone_start_pfn, z.spanned_pages,
              [sorted(fa) for fa in z.free_area], {c: sorted(lst) for c, lst in z.pcp.items()},
              z.pgalloc)
             for nid in sorted(m.pgdat) for z in m.pgdat[nid].zones.values()]
    return (m.page_node.tobytes(), m.page_flags.tobytes(), m.page_order.tobytes(), zones,
            list(m.boot_allocs.items()), bytes(m.blocks.online), dict(m.vm_events),
            {nid: dict(p.numastat) for nid, p in m.pgdat.items()}, dict(m.stats.counts))


def block_flags(m: Machine, bid: int) -> np.ndarray:
    start, end = mh.block_range(m, bid)
    return m.page_flags[start:end]


def movable_boot_pages(m: Machine, bid: int) -> int:
    start, end = mh.block_range(m, bid)
    return sum(1 << o for p, o in m.boot_allocs.items() if start <= p < end and o > 3)


def is_clean(m: Machine, bid: int) -> bool:
    """No reserved page, and every allocation in it a movable boot allocation."""
    start, _ = mh.block_range(m, bid)
    flags = block_flags(m, bid)
    heads = start + np.flatnonzero(flags & PG_HEAD)
    return not (flags & PG_RESERVED).any() and all(mh.page_is_movable(m, int(h)) for h in heads)


def boot_pages(m: Machine) -> int:
    return sum(1 << o for o in m.boot_allocs.values())


# --- block size --------------------------------------------------------------------------------

@pytest.mark.parametrize("mem, size", [
    (1 * GiB, 128 * MiB), (63 * GiB, 128 * MiB),       # below 64 GiB: one section
    (64 * GiB, 2 * GiB), (96 * GiB, 2 * GiB),           # aligned to 2 GiB
    (65 * GiB, 1 * GiB), (64 * GiB + 128 * MiB, 128 * MiB), (66 * GiB + 512 * MiB, 512 * MiB),
])
def test_block_size_follows_the_kernels_rule(mem, size):
    assert mh.probe_memory_block_size(mem >> PAGE_SHIFT) == size


def test_chosen_block_size_is_a_power_of_two_within_bounds():
    for bad in (BLOCK // 2, 3 * BLOCK, 4 * GiB):
        with pytest.raises(ValueError):
            small(block_size=bad)
    m = boot()
    assert m.blocks.block_size_bytes == 128 * MiB and m.blocks.count == 1     # 64 MiB: a hole
    assert small().blocks.count == 64 * MiB // BLOCK


# --- offline and online ------------------------------------------------------------------------

def test_offline_free_and_movable_block_then_online():
    m = small(boot_alloc_percent=30)
    bid = next(b for b in range(m.blocks.count) if is_clean(m, b) and movable_boot_pages(m, b))
    managed, free_before, held = m.total_managed_pages(), m.total_free_pages(), boot_pages(m)
    moving = movable_boot_pages(m, bid)
    assert m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert m.check() == []
    assert m.total_managed_pages() == managed - BLOCK_PAGES
    assert (block_flags(m, bid) == PG_OFFLINE).all()
    assert boot_pages(m) == held        # the page cache moved, none of it was lost
    start, end = mh.block_range(m, bid)
    assert not any(start <= p < end for p in m.boot_allocs)
    # the block's free pages left, and the moved pages took free pages elsewhere
    assert m.total_free_pages() == free_before - (BLOCK_PAGES - moving) - moving
    assert not m.memory_block_set_state(bid, OnlineType.OFFLINE)     # already offline
    assert m.memory_block_set_state(bid, OnlineType.ONLINE)
    assert m.check() == []
    assert m.total_managed_pages() == managed
    assert m.total_free_pages() == free_before
    assert not (block_flags(m, bid) & ~np.uint8(PG_BUDDY)).any()
    assert not m.memory_block_set_state(bid, OnlineType.ONLINE_MOVABLE)   # already online


def test_offline_takes_per_cpu_pages_too():
    m = small(boot_alloc_percent=0)
    pfns = [alloc(m, 0, cpu=1) for _ in range(3 * BLOCK_PAGES // 2)]   # past the top block
    for p in pfns:
        m.free_pages(p, cpu=1)
    bid = next(b for b in range(m.blocks.count) if (block_flags(m, b) & PG_PCP).any()
               and is_clean(m, b))
    assert m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert m.check() == []
    start, end = mh.block_range(m, bid)
    for pg in m.pgdat.values():
        for z in pg.zones.values():
            assert not any(start <= p < end for lst in z.pcp.values() for p in lst)


@pytest.mark.parametrize("why", ["reserved", "pinned", "slab", "hugepage"])
def test_offline_refused_with_ebusy_changes_nothing(why):
    m = small(boot_alloc_percent=5)
    if why == "reserved":
        bid = 0
    elif why == "pinned":
        pfn = alloc(m, 5, nid=1)
        bid = pfn // BLOCK_PAGES
    elif why == "slab":
        pfn = next(p for p, o in m.boot_allocs.items() if o <= 3)
        bid = pfn // BLOCK_PAGES
    else:
        assert m.set_nr_hugepages(1, 1) == 1
        bid = m.pgdat[1].hugepage_pool[0] // BLOCK_PAGES
    before = state(m)
    with pytest.raises(HotplugError) as e:
        m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert e.value.errno == errno.EBUSY
    assert state(m) == before and m.check() == []


def test_offline_without_room_to_migrate_changes_nothing():
    m = small(nodes=1, boot_alloc_percent=20)
    bid = next(b for b in range(m.blocks.count) if is_clean(m, b) and movable_boot_pages(m, b))
    held = []
    while (p := m.alloc_pages(0)) is not None:
        held.append(p)
    start, end = mh.block_range(m, bid)
    for p in held:
        if start <= p < end:
            m.free_pages(p)
    m.drain_pcp()
    before = state(m)
    with pytest.raises(HotplugError) as e:
        m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert e.value.errno == errno.EBUSY and "no room" in str(e.value)
    assert state(m) == before and m.check() == []


def test_a_block_with_holes_is_einval():
    m = boot(mem=64 * MiB + BLOCK // 2, node_mem=[32 * MiB, 32 * MiB + BLOCK // 2],
             block_size=BLOCK, boot_alloc_percent=0)
    last = m.blocks.count - 1
    before = state(m)
    with pytest.raises(HotplugError) as e:
        m.memory_block_set_state(last, OnlineType.OFFLINE)
    assert e.value.errno == errno.EINVAL and state(m) == before


def test_online_movable_makes_zone_movable_and_online_kernel_the_pfns_zone():
    m = small(boot_alloc_percent=0)
    bid = m.blocks.count // 2 + 1                     # on node 1, DMA32
    assert mh.valid_zones(m, bid) == ["DMA32"]
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert mh.valid_zones(m, bid) == ["DMA32", "Movable"]
    movable = m.pgdat[1].zones[ZoneType.MOVABLE]
    assert not movable.populated
    m.memory_block_set_state(bid, OnlineType.ONLINE_MOVABLE)
    assert m.check() == []
    assert movable.present_pages == movable.managed_pages == movable.free_pages == BLOCK_PAGES
    assert m.zonelists[1][0] is movable               # the highest zone is tried first
    assert mh.valid_zones(m, bid) == ["Movable"]
    # an allocation from node 1 now comes from the movable zone
    p = alloc(m, 3, nid=1)
    assert mh.block_range(m, bid)[0] <= p < mh.block_range(m, bid)[1]
    m.free_pages(p)
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert not movable.populated and m.zonelists[1][0] is not movable
    # online alone goes where the span says: the block is inside node 1's DMA32 span
    m.memory_block_set_state(bid, OnlineType.ONLINE)
    assert mh.valid_zones(m, bid) == ["DMA32"] and m.check() == []


def test_checker_knows_the_offline_state():
    m = small(boot_alloc_percent=0)
    m.memory_block_set_state(5, OnlineType.OFFLINE)
    start, _ = mh.block_range(m, 5)
    m.blocks.online[5] = 1                      # the block says online, its pages offline
    assert any("memory5 is online" in e for e in m.check())
    m.blocks.online[5] = 0
    m.page_flags[start] |= PG_RESERVED          # an offline page with another owner
    errs = m.check()
    assert any("offline pages with other flags" in e for e in errs)
    assert any("2 owners" in e for e in errs)
    m.page_flags[start] = PG_OFFLINE
    zone = m.pgdat[0].zones[ZoneType.DMA32]
    zone.present_pages += 1                     # offline pages counted as present
    assert any("present" in e for e in m.check())
    zone.present_pages -= 1
    assert m.check() == []


# --- blocks and dnuma --------------------------------------------------------------------------

def test_a_striped_block_links_to_each_node():
    m = small(boot_alloc_percent=0)
    bid = 3
    start, _ = mh.block_range(m, bid)
    m.memlayout_add_range(start, start + BLOCK_PAGES // 2 - 1, 1)
    m.memlayout_commit()
    assert mh.block_nodes(m, bid) == [0, 1]
    assert bid in mh.node_blocks(m, 1) and bid in mh.node_blocks(m, 0)
    assert mh.valid_zones(m, bid) == ["none"]


def test_a_commit_moves_an_offline_blocks_pages_while_offline():
    m = small(boot_alloc_percent=0, possible_nodes=4)
    bid = 5
    start, end = mh.block_range(m, bid)
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    managed = m.total_managed_pages()
    m.memlayout_add_range(0, m.max_pfn - 1, 2)        # all to a new node
    m.memlayout_commit()
    assert m.check() == []
    assert (m.page_node[start:end] == 2).all() and (block_flags(m, bid) == PG_OFFLINE).all()
    assert m.total_managed_pages() == managed
    assert mh.block_nodes(m, bid) == [2]
    m.memory_block_set_state(bid, OnlineType.ONLINE)
    assert m.check() == []
    assert m.pgdat[2].zones[ZoneType.DMA].present_pages >= BLOCK_PAGES


# --- hot-add -----------------------------------------------------------------------------------

def test_hot_add_comes_offline_then_onlines():
    m = small(boot_alloc_percent=0)
    managed, end = m.total_managed_pages(), m.max_pfn
    bid = m.memory_probe(end << PAGE_SHIFT)
    assert bid == 64 * MiB // BLOCK and m.max_pfn == end + BLOCK_PAGES
    assert not m.blocks.online[bid] and m.total_managed_pages() == managed
    assert mh.block_nodes(m, bid) == [1] and m.check() == []       # the node below it
    assert m.memory_block_set_state(bid, OnlineType.ONLINE)
    assert m.total_managed_pages() == managed + BLOCK_PAGES and m.check() == []
    assert m.pgdat[1].zones[ZoneType.DMA32].zone_end_pfn == m.max_pfn


def test_hot_add_on_a_new_node_named_by_the_layout_and_auto_online():
    m = small(boot_alloc_percent=0)
    m.memlayout_add_range(m.max_pfn, 2 * m.max_pfn, 3)
    m.memlayout_commit()
    assert 3 in m.pgdat and m.pgdat[3].present_pages == 0
    m.blocks.auto_online = OnlineType.ONLINE_MOVABLE
    bid = m.memory_probe(m.max_pfn << PAGE_SHIFT)
    assert m.blocks.online[bid] and mh.block_nodes(m, bid) == [3]
    movable = m.pgdat[3].zones[ZoneType.MOVABLE]
    assert movable.free_pages == movable.managed_pages == BLOCK_PAGES
    assert m.zonelists[3][0] is movable and m.check() == []
    assert alloc(m, 0, nid=3, thisnode=True) >= bid * BLOCK_PAGES


@pytest.mark.parametrize("where, err", [
    (lambda m: m.max_pfn + BLOCK_PAGES, errno.EINVAL),      # past the end: a hole between
    (lambda m: m.max_pfn + 1, errno.EINVAL),                # not aligned
    (lambda m: BLOCK_PAGES, errno.EEXIST),                  # memory already there
])
def test_hot_add_refused_changes_nothing(where, err):
    m = small(boot_alloc_percent=0)
    before = state(m)
    with pytest.raises(HotplugError) as e:
        m.memory_probe(where(m) << PAGE_SHIFT)
    assert e.value.errno == err and state(m) == before


# --- the state machine -------------------------------------------------------------------------

class BlocksModel(RuleBasedStateMachine):
    """Offline and online mixed with layouts, allocations and frees; after each step the
    checker finds nothing, MemTotal is the online blocks', and each block's node links are
    its pages' nodes. A refused offline changes nothing."""

    held = Bundle("held")

    @initialize(nodes=st.integers(1, 3), pct=st.sampled_from([0.0, 5.0, 30.0]),
                seed=st.integers(0, 3))
    def boot_machine(self, nodes, pct, seed):
        self.m = small(nodes=nodes, boot_alloc_percent=pct, seed=seed)
        self.boot_managed = self.m.total_managed_pages()
        self.boot_pages = boot_pages(self.m)

    @rule(target=held, order=st.integers(0, 10), nid=st.integers(0, 3))
    def alloc(self, order, nid):
        m = self.m
        pfn = m.alloc_pages(order, nid=nid if nid in m.pgdat else None)
        return (pfn, order) if pfn is not None else (None, order)

    @rule(block=consumes(held))
    def free(self, block):
        pfn, order = block
        if pfn is not None:
            assert self.m.page_order[pfn] == order and self.m.page_flags[pfn] & PG_HEAD
            self.m.free_pages(pfn)

    @rule(limit=st.sampled_from([1, 64, None]))
    def free_boot(self, limit):
        before = boot_pages(self.m)
        freed = self.m.free_boot_allocations(limit)
        self.boot_pages -= freed
        assert boot_pages(self.m) == before - freed

    @rule(mode=st.sampled_from([1, 2, 3]))
    def drop_caches(self, mode):
        m = self.m
        m.drop_caches(mode)
        dropped = (FILE_CACHE if mode & 1 else frozenset()) | (
            RECLAIMABLE_SLAB if mode & 2 else frozenset())
        assert not any(m.kinds.kind[pfn] in dropped for pfn in m.boot_allocs)
        self.boot_pages = boot_pages(m)

    @rule(first=st.integers(0, 15), blocks=st.integers(1, 8), nid=st.integers(0, 3),
          half=st.booleans())
    def layout(self, first, blocks, nid, half):
        m = self.m
        start = first * BLOCK_PAGES + (BLOCK_PAGES // 2 if half else 0)
        end = min(start + blocks * BLOCK_PAGES, m.max_pfn) - 1
        m.memlayout_add_range(start, end, nid)
        m.memlayout_commit()

    @rule()
    def drain(self):
        self.m.drain_pcp()

    @rule(how=st.sampled_from(list(OnlineType)))
    def hot_add(self, how):
        m = self.m
        if m.blocks.count >= 20:
            return
        m.blocks.auto_online = how
        managed = m.total_managed_pages()
        bid = m.memory_probe(m.max_pfn << PAGE_SHIFT)
        self.boot_managed += BLOCK_PAGES
        assert bool(m.blocks.online[bid]) == (how != OnlineType.OFFLINE)
        assert m.total_managed_pages() == managed + (BLOCK_PAGES if m.blocks.online[bid] else 0)

    @rule(bid=st.integers(0, 19))
    def offline(self, bid):
        m = self.m
        if bid >= m.blocks.count:
            return
        was_online = m.blocks.online[bid]
        clean, moving = is_clean(m, bid), movable_boot_pages(m, bid)
        before = state(m)
        managed = m.total_managed_pages()
        try:
            changed = m.memory_block_set_state(bid, OnlineType.OFFLINE)
        except HotplugError as e:
            assert e.errno == errno.EBUSY and was_online
            assert not clean or moving, "a block of only free pages must go offline"
            assert state(m) == before
            event("offline refused")
            return
        event("offline done, pages migrated" if changed and moving else
              "offline done" if changed else "offline of an offline block")
        assert clean or not was_online
        assert changed == bool(was_online)
        assert m.total_managed_pages() == managed - (BLOCK_PAGES if changed else 0)

    @rule(bid=st.integers(0, 19), how=st.sampled_from(
        [OnlineType.ONLINE, OnlineType.ONLINE_KERNEL, OnlineType.ONLINE_MOVABLE]))
    def online(self, bid, how):
        m = self.m
        if bid >= m.blocks.count:
            return
        was_online = m.blocks.online[bid]
        managed = m.total_managed_pages()
        assert m.memory_block_set_state(bid, how) == (not was_online)
        assert m.total_managed_pages() == managed + (0 if was_online else BLOCK_PAGES)
        if not was_online:
            want = "Movable" if how == OnlineType.ONLINE_MOVABLE else None
            zones = mh.valid_zones(m, bid)
            assert want is None or zones in (["Movable"], ["none"])

    @invariant()
    def invariants_hold(self):
        m = self.m
        assert m.check() == []
        offline = int(np.count_nonzero(np.frombuffer(m.blocks.online, np.uint8) == 0))
        assert m.total_managed_pages() == self.boot_managed - offline * BLOCK_PAGES
        assert boot_pages(m) == self.boot_pages         # migration loses no page cache
        for bid in range(m.blocks.count):
            start, end = mh.block_range(m, bid)
            assert mh.block_nodes(m, bid) == sorted(set(m.page_node[start:end].tolist()))
        for nid in m.online_nodes():
            assert mh.node_blocks(m, nid) == [b for b in range(m.blocks.count)
                                              if nid in mh.block_nodes(m, b)]


BlocksModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestBlocksModel = BlocksModel.TestCase
