"""Machine.boot: node shares, zones by pfn, reserved and allocated pages, layout 0, CPUs."""
from __future__ import annotations

import attrs
import numpy as np
import pytest
from model_helpers import ALLOCATED, RESERVED, GiB, MiB, assert_model_ok, boot, classify

from dnumafs.mm import MachineConfig, ZoneType
from dnumafs.mm.constants import GIGANTIC_ORDER, PAGE_SIZE, PG_HEAD, PG_RESERVED
from dnumafs.mm.stats import STAT_NAMES


def node_pfn_ranges(m):
    """{nid: (first, last)} of the pfns on each node (they must be contiguous at boot)."""
    out = {}
    node = np.asarray(m.page_node)
    for nid in m.pgdat:
        idx = np.nonzero(node == nid)[0]
        assert len(idx), f"node {nid} has no pages"
        assert idx[-1] - idx[0] + 1 == len(idx), f"node {nid} is not contiguous"
        out[nid] = (int(idx[0]), int(idx[-1]))
    return out


def test_equal_shares_64mib_two_nodes():
    m = boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=8)
    assert m.max_pfn == 64 * MiB // PAGE_SIZE == 16384
    assert m.possible_nodes == 8
    assert m.nr_cpus == 4
    assert m.online_nodes() == [0, 1]
    assert sorted(m.pgdat) == [0, 1]
    assert node_pfn_ranges(m) == {0: (0, 8191), 1: (8192, 16383)}
    assert sum(pg.present_pages for pg in m.pgdat.values()) == m.max_pfn
    assert m.pgdat[0].present_pages == m.pgdat[1].present_pages == 8192
    assert m.pgdat[0].node_start_pfn == 0 and m.pgdat[1].node_start_pfn == 8192
    assert m.pgdat[0].spanned_pages == m.pgdat[1].spanned_pages == 8192
    assert m.nodes_with_memory() == [0, 1]
    assert_model_ok(m, tracked={})


def test_remainder_goes_to_last_node():
    # 12290 pages over 3 nodes: 4096, 4096, 4098; a byte remainder is dropped.
    m = boot(nodes=3, mem=48 * MiB + 2 * PAGE_SIZE + 123, cpus=3, possible_nodes=4)
    assert m.max_pfn == 12290
    sizes = [m.pgdat[n].present_pages for n in range(3)]
    assert sizes == [4096, 4096, 4098]
    assert node_pfn_ranges(m) == {0: (0, 4095), 1: (4096, 8191), 2: (8192, 12289)}
    assert_model_ok(m, tracked={})


def test_node_mem_sizes_rounded_down_to_pages():
    node_mem = [16 * MiB + 100, 8 * MiB, 40 * MiB + PAGE_SIZE - 1]
    m = boot(nodes=3, mem=sum(node_mem), node_mem=node_mem, cpus=3, possible_nodes=4)
    assert [m.pgdat[n].present_pages for n in range(3)] == [4096, 2048, 10240]
    assert m.max_pfn == 4096 + 2048 + 10240
    assert node_pfn_ranges(m) == {0: (0, 4095), 1: (4096, 6143), 2: (6144, 16383)}
    assert_model_ok(m, tracked={})


def test_zones_by_pfn_small_machine():
    m = boot(nodes=2, mem=64 * MiB)
    z0, z1 = m.pgdat[0].zones, m.pgdat[1].zones
    # node 0: DMA [0, 16 MiB) and DMA32 [16 MiB, 32 MiB); node 1: DMA32 only
    assert (z0[ZoneType.DMA].zone_start_pfn, z0[ZoneType.DMA].spanned_pages) == (0, 4096)
    assert z0[ZoneType.DMA].present_pages == 4096
    assert (z0[ZoneType.DMA32].zone_start_pfn, z0[ZoneType.DMA32].spanned_pages) == (4096, 4096)
    assert z0[ZoneType.DMA32].present_pages == 4096
    assert not z0[ZoneType.NORMAL].populated and z0[ZoneType.NORMAL].present_pages == 0
    assert not z1[ZoneType.DMA].populated
    assert (z1[ZoneType.DMA32].zone_start_pfn, z1[ZoneType.DMA32].spanned_pages) == (8192, 8192)
    assert not z1[ZoneType.NORMAL].populated
    assert [z.type for z in m.pgdat[0].populated_zones()] == [ZoneType.DMA, ZoneType.DMA32]
    assert [z.type for z in m.pgdat[1].populated_zones()] == [ZoneType.DMA32]
    assert ZoneType.DMA.label == "DMA" and ZoneType.DMA32.label == "DMA32"
    assert ZoneType.NORMAL.label == "Normal"


def test_zones_by_pfn_above_4gib():
    # 6 GiB over 2 nodes: node 0 [0, 3 GiB): DMA + DMA32; node 1 [3, 6 GiB): DMA32 + Normal
    m = boot(nodes=2, mem=6 * GiB, cpus=2, possible_nodes=2, boot_alloc_percent=1.0)
    pg = lambda b: b // PAGE_SIZE  # noqa: E731
    z0, z1 = m.pgdat[0].zones, m.pgdat[1].zones
    assert z0[ZoneType.DMA].present_pages == pg(16 * MiB)
    assert z0[ZoneType.DMA32].present_pages == pg(3 * GiB - 16 * MiB)
    assert z0[ZoneType.NORMAL].present_pages == 0
    assert z1[ZoneType.DMA].present_pages == 0
    assert z1[ZoneType.DMA32].present_pages == pg(1 * GiB)
    assert z1[ZoneType.DMA32].zone_start_pfn == pg(3 * GiB)
    assert z1[ZoneType.NORMAL].present_pages == pg(2 * GiB)
    assert z1[ZoneType.NORMAL].zone_start_pfn == pg(4 * GiB)
    for pgdat in m.pgdat.values():
        for z in pgdat.zones.values():
            for order, fa in enumerate(z.free_area):
                for head in fa:
                    last = head + (1 << order) - 1
                    if z.type == ZoneType.DMA:
                        assert last < pg(16 * MiB)
                    elif z.type == ZoneType.DMA32:
                        assert pg(16 * MiB) <= head and last < pg(4 * GiB)
                    else:
                        assert head >= pg(4 * GiB)
    assert_model_ok(m, tracked={})


def test_reserved_and_allocated_pages_on_every_node():
    m = boot(nodes=3, mem=96 * MiB, cpus=3, possible_nodes=4)
    state, _, _ = classify(m)
    node = np.asarray(m.page_node)
    for nid in range(3):
        assert ((state == RESERVED) & (node == nid)).sum() > 0, f"node {nid} has no reserved"
        assert ((state == ALLOCATED) & (node == nid)).sum() > 0, f"node {nid} has no allocated"
        pgdat = m.pgdat[nid]
        assert 0 < pgdat.managed_pages < pgdat.present_pages
        assert 0 < pgdat.free_pages < pgdat.managed_pages
    boot_nodes = {int(node[p]) for p, _ in m.boot_allocations}
    assert boot_nodes == {0, 1, 2}
    for pfn, order in m.boot_allocations:
        assert m.page_flags[pfn] & PG_HEAD
        assert m.page_order[pfn] == order
    # node 0: the first MiB is reserved, as on x86
    assert (np.asarray(m.page_flags[:256]) & PG_RESERVED).all()
    # the memmap: about 1/64 of each node is reserved
    for nid in range(3):
        r = m.pgdat[nid].present_pages - m.pgdat[nid].managed_pages
        assert r >= m.pgdat[nid].present_pages // 64 * 0.9
    assert m.total_free_pages() < m.total_managed_pages()
    assert_model_ok(m, tracked={})


def test_present_is_managed_plus_reserved():
    m = boot(nodes=2, mem=64 * MiB)
    flags = np.asarray(m.page_flags)
    node = np.asarray(m.page_node)
    for nid, pgdat in m.pgdat.items():
        reserved = int(((flags & PG_RESERVED) != 0)[node == nid].sum())
        assert pgdat.present_pages == pgdat.managed_pages + reserved
    assert m.total_managed_pages() == int(((flags & PG_RESERVED) == 0).sum())


def test_boot_allocation_percent_is_respected():
    m = boot(nodes=2, mem=64 * MiB, boot_alloc_percent=10.0)
    for nid, pgdat in m.pgdat.items():
        held = sum(1 << o for p, o in m.boot_allocations if m.page_node[p] == nid)
        want = pgdat.managed_pages * 10 // 100
        assert abs(held - want) <= max(16, want // 10), (nid, held, want)


def test_layout_zero_is_current_with_one_range_per_node():
    m = boot(nodes=3, mem=48 * MiB, cpus=3)
    assert m.current.id == 0
    assert m.current.ranges() == [(0, 4095, 0), (4096, 8191, 1), (8192, 12287, 2)]
    assert m.pending is None
    assert m.backlog == []
    assert m.backlog_max == 8
    assert list(m.layouts) == [0] and m.layouts[0] is m.current
    for pfn in (0, 4095, 4096, 12287):
        assert m.current.lookup(pfn) == m.page_node[pfn]


@pytest.mark.parametrize("cpus,nodes,want", [
    (4, 2, [0, 0, 1, 1]),
    (8, 3, [0, 0, 0, 1, 1, 1, 2, 2]),
    (8, 2, [0, 0, 0, 0, 1, 1, 1, 1]),
    (3, 2, [0, 0, 1]),
    (1, 2, [0]),
    (2, 4, [0, 2]),
])
def test_cpus_spread_in_contiguous_blocks(cpus, nodes, want):
    m = boot(nodes=nodes, mem=nodes * 8 * MiB, cpus=cpus, possible_nodes=4)
    assert list(m.cpu_node) == want
    for nid in m.online_nodes():
        assert m.node_cpus(nid) == [c for c in range(cpus) if want[c] == nid]
    assert m.nodes_with_cpus() == sorted(set(want))


def test_distances():
    m = boot(nodes=3, mem=48 * MiB, cpus=3)
    for a in range(3):
        for b in range(3):
            assert m.node_distance(a, b) == (10 if a == b else 20)


def test_boot_is_deterministic_for_a_seed():
    a = boot(nodes=2, mem=64 * MiB, seed=5)
    b = boot(nodes=2, mem=64 * MiB, seed=5)
    assert (np.asarray(a.page_node) == np.asarray(b.page_node)).all()
    assert (np.asarray(a.page_flags) == np.asarray(b.page_flags)).all()
    assert a.boot_allocations == b.boot_allocations


def test_fresh_machine_statistics_are_zero():
    m = boot(nodes=2, mem=64 * MiB)
    for name in STAT_NAMES:
        if name.startswith("cache-"):
            continue
        assert m.stats[name] == 0, name
    assert m.stats["moved-pages"] == 0
    for pg in m.pgdat.values():
        assert pg.numastat["numa_miss"] == pg.numastat["numa_foreign"] == 0
        assert pg.numastat["other_node"] == 0


def test_watermarks_are_ordered():
    m = boot(nodes=2, mem=64 * MiB)
    for pg in m.pgdat.values():
        for z in pg.populated_zones():
            w = m.watermarks(z)
            assert 0 < w.min <= w.low <= w.high < z.managed_pages


@pytest.mark.parametrize("kw", [
    dict(nodes=5, possible_nodes=4),
    dict(nodes=0),
    dict(cpus=0),
    dict(cpus=8193),
    dict(nodes=2, mem=6 * MiB),          # 3 MiB per node
    dict(possible_nodes=1025, nodes=2),
    dict(nodes=2, node_mem=[16 * MiB, 2 * MiB], mem=18 * MiB),
])
def test_impossible_configs_raise_value_error(kw):
    with pytest.raises(ValueError):
        boot(**{"possible_nodes": 8, **kw})


def test_largest_cpu_count_and_node_count_accepted():
    m = boot(nodes=4, mem=64 * MiB, cpus=8192, possible_nodes=1024)
    assert m.nr_cpus == 8192 and m.possible_nodes == 1024
    assert len(m.cpu_node) == 8192 and m.cpu_node[8191] == 3
    assert m.page_node.dtype == np.uint16       # node ids above 255 need two bytes


def test_memtotal_is_what_the_ram_leaves_after_the_reservations():
    """The synthetic machine's RAM is laid out as given; each node's MemTotal (managed pages)
    is its present pages less its reserved ones, as the description says it is."""
    m = boot(nodes=3, mem=96 * MiB, cpus=3, possible_nodes=4)
    flags = np.asarray(m.page_flags)
    start = 0
    for n in m.desc.nodes:
        pgdat = m.pgdat[n.nid]
        assert pgdat.present_pages == n.present_pages == 8192
        reserved = int((flags[start:start + 8192] & PG_RESERVED != 0).sum())
        assert n.memory_kb == pgdat.managed_pages * 4 == (8192 - reserved) * 4
        start += 8192


def test_node_mem_decides_the_size_and_must_match_nodes():
    m = boot(nodes=2, mem=1 << 30, node_mem=[16 * MiB, 32 * MiB])
    assert m.max_pfn == 12288
    assert [m.pgdat[n].present_pages for n in (0, 1)] == [4096, 8192]
    for bad in ([16 * MiB], [16 * MiB] * 3):
        with pytest.raises(ValueError):
            boot(nodes=2, node_mem=bad)


def test_machine_config_is_a_checked_value():
    """Bad configurations are refused when the config is made, before anything boots; a
    config is frozen, and equal configs compare equal."""
    cfg = MachineConfig(nodes=2, node_mem=[16 * MiB, 32 * MiB])
    assert cfg.node_mem == (16 * MiB, 32 * MiB)
    assert cfg == MachineConfig(nodes=2, node_mem=(16 * MiB, 32 * MiB))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.nodes = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        MachineConfig(nodes=3, node_mem=[16 * MiB, 32 * MiB])
    with pytest.raises(ValueError):
        attrs.evolve(cfg, cpus=0)


def test_gigantic_pages_are_taken_as_whole_free_max_order_blocks():
    """1 GiB pages (order 18, above MAX_ORDER) come from naturally aligned ranges all free in
    max-order blocks of one zone; the pool gives them back as those blocks, and a page a
    commit moved to another node while in the pool is transplanted there when freed."""
    m = boot(nodes=2, mem=8 * GiB, cpus=2, possible_nodes=4, boot_alloc_percent=0.0)
    gig = GIGANTIC_ORDER
    free0 = m.pgdat[0].free_pages
    assert m.set_nr_hugepages(0, 2, order=gig) == 2
    pool = m.pgdat[0].hugepage_pools[gig]
    assert [p % (1 << gig) for p in pool] == [0, 0]
    assert m.pgdat[0].free_pages == free0 - 2 * (1 << gig)
    assert m.hugepages(0, gig) == (2, 2, 0) and m.hugepages(0) == (0, 0, 0)
    assert_model_ok(m, tracked={})
    # node 0 has 4 GiB: its first GiB holds the reserved low pages, its last the memmap,
    # so no third aligned GiB is wholly free; the pool stops short, as Linux's does
    assert m.set_nr_hugepages(0, 3, order=gig) == 2
    # move one of them to node 1, then shrink the pool: its pages land on node 1
    moved = pool[1]
    m.memlayout_add_range(moved, moved + (1 << gig) - 1, 1)
    m.memlayout_commit()
    free1 = m.pgdat[1].free_pages
    assert m.set_nr_hugepages(0, 1, order=gig) == 1 and pool == [pool[0]]
    assert m.pgdat[1].free_pages == free1 + (1 << gig)
    assert (np.asarray(m.page_node[moved:moved + (1 << gig)]) == 1).all()
    assert m.set_nr_hugepages(0, 0, order=gig) == 0
    assert m.pgdat[0].free_pages == free0 - (1 << gig)
    assert_model_ok(m, tracked={})


def test_global_hugepages_spread_over_the_nodes_with_memory():
    m = boot(nodes=3, mem=96 * MiB, cpus=3, possible_nodes=4)
    assert m.set_global_nr_hugepages(7) == 7
    assert [m.hugepages(n)[0] for n in range(3)] == [3, 2, 2]
    assert m.set_global_nr_hugepages(4) == 4
    assert [m.hugepages(n)[0] for n in range(3)] == [2, 1, 1]
    assert m.set_global_nr_hugepages(10_000) < 10_000       # as far as the nodes can grow
    assert_model_ok(m, tracked={})
