"""Memlayout: the pfn -> node map of one layout (no machine needed)."""
from __future__ import annotations

import errno

import numpy as np
import pytest

from dnumafs.mm.memlayout import Memlayout, MemlayoutError
from dnumafs.mm.stats import STAT_NAMES, DnumaStats


def ml(*ranges, id=1):
    lay = Memlayout(id)
    for s, e, nid in ranges:
        lay.add_range(s, e, nid)
    return lay


def test_empty_layout():
    lay = Memlayout(7)
    assert lay.id == 7
    assert len(lay) == 0
    assert lay.ranges() == []
    assert lay.lookup(0) is None


def test_add_range_keeps_ranges_sorted_by_start():
    lay = ml((500, 599, 2), (0, 99, 0), (200, 299, 1), (100, 199, 3))
    assert lay.ranges() == [(0, 99, 0), (100, 199, 3), (200, 299, 1), (500, 599, 2)]
    assert len(lay) == 4
    assert lay.node_ids() == {0, 1, 2, 3}


def test_single_pfn_range():
    lay = ml((5, 5, 1))
    assert lay.ranges() == [(5, 5, 1)]
    assert lay.lookup(5) == 1
    assert lay.lookup(4) is None
    assert lay.lookup(6) is None


def test_start_after_end_is_einval_and_changes_nothing():
    lay = ml((0, 9, 0))
    with pytest.raises(MemlayoutError) as ei:
        lay.add_range(20, 19, 1)
    assert ei.value.errno == errno.EINVAL
    assert isinstance(ei.value, OSError)
    assert lay.ranges() == [(0, 9, 0)]


@pytest.mark.parametrize("new", [
    (10, 20),    # identical
    (0, 10),     # ends on the first pfn (end is inclusive)
    (20, 30),    # starts on the last pfn
    (5, 25),     # covers it
    (12, 15),    # inside it
    (0, 15),     # overlaps the start
    (15, 100),   # overlaps the end
    (11, 11),    # one pfn inside
])
def test_overlap_is_eexist_and_changes_nothing(new):
    lay = ml((10, 20, 0), (40, 50, 1))
    before = lay.ranges()
    with pytest.raises(MemlayoutError) as ei:
        lay.add_range(new[0], new[1], 2)
    assert ei.value.errno == errno.EEXIST
    assert lay.ranges() == before


def test_overlap_with_a_later_range_is_eexist():
    lay = ml((100, 200, 0))
    with pytest.raises(MemlayoutError) as ei:
        lay.add_range(0, 100, 1)
    assert ei.value.errno == errno.EEXIST


def test_overlap_spanning_two_ranges_is_eexist():
    lay = ml((10, 20, 0), (30, 40, 1))
    with pytest.raises(MemlayoutError) as ei:
        lay.add_range(15, 35, 2)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(MemlayoutError):
        lay.add_range(0, 100, 2)
    assert lay.ranges() == [(10, 20, 0), (30, 40, 1)]


@pytest.mark.parametrize("new", [(21, 29), (0, 9), (21, 21), (9, 9), (51, 1 << 40)])
def test_touching_ranges_are_not_overlaps(new):
    lay = ml((10, 20, 0), (30, 50, 1))
    lay.add_range(new[0], new[1], 3)
    assert (new[0], new[1], 3) in lay.ranges()
    assert len(lay) == 3
    assert lay.lookup(new[0]) == 3 and lay.lookup(new[1]) == 3


def test_fill_gap_exactly():
    lay = ml((0, 9, 0), (20, 29, 1))
    lay.add_range(10, 19, 2)
    assert lay.ranges() == [(0, 9, 0), (10, 19, 2), (20, 29, 1)]
    assert [lay.lookup(p) for p in (9, 10, 19, 20)] == [0, 2, 2, 1]


def test_lookup_inside_and_outside_ranges():
    lay = ml((0x100, 0x1ff, 1), (0x300, 0x3ff, 2), (0x400, 0x400, 0))
    assert lay.lookup(0x100) == 1
    assert lay.lookup(0x1ff) == 1
    assert lay.lookup(0x150) == 1
    assert lay.lookup(0x3ff) == 2
    assert lay.lookup(0x400) == 0
    for pfn in (0, 0xff, 0x200, 0x2ff, 0x401, 1 << 30):
        assert lay.lookup(pfn) is None, hex(pfn)


def test_lookup_cache_hits_and_misses_are_counted():
    lay = ml((0, 99, 0), (100, 199, 1))

    def hits_misses():
        s = lay.stats                   # a reading of the counts, taken now
        return s["cache-hit"], s["cache-miss"]
    assert hits_misses() == (0, 0)
    assert lay.lookup(10) == 0          # cold cache: miss
    assert hits_misses() == (0, 1)
    assert lay.lookup(50) == 0          # same range: hit
    assert lay.lookup(99) == 0          # same range: hit
    assert hits_misses() == (2, 1)
    assert lay.lookup(150) == 1         # other range: miss
    assert hits_misses() == (2, 2)
    assert lay.lookup(100) == 1         # hit
    assert hits_misses() == (3, 2)
    assert lay.lookup(500) is None      # outside every range: a miss
    assert hits_misses() == (3, 3)


def test_every_lookup_is_a_hit_or_a_miss():
    rng = np.random.default_rng(1)
    lay = ml(*[(i * 64, i * 64 + 47, i % 3) for i in range(50)])
    pfns = rng.integers(0, 50 * 64 + 100, size=2000)
    for pfn in pfns:
        got = lay.lookup(int(pfn))
        i, off = divmod(int(pfn), 64)
        want = (i % 3) if (i < 50 and off < 48) else None
        assert got == want, pfn
    assert lay.stats["cache-hit"] + lay.stats["cache-miss"] == len(pfns)
    # runs of the same range hit the cache
    before = lay.stats["cache-hit"]
    for pfn in range(64, 64 + 48):
        lay.lookup(pfn)
    assert lay.stats["cache-hit"] - before >= 47


def test_add_range_invalidates_cache_and_lookup_stays_correct():
    lay = ml((0, 99, 0), (200, 299, 1))
    assert lay.lookup(250) == 1
    lay.add_range(100, 199, 2)
    assert lay.lookup(250) == 1
    assert lay.lookup(150) == 2
    assert lay.lookup(50) == 0


def test_lookup_on_many_ranges():
    """Lookups in a 100k-range layout find the right range, in and between ranges (their
    speed is measured by make bench, not here)."""
    n = 100_000
    lay = Memlayout(1)
    lay.starts = list(range(0, 4 * n, 4))
    lay.ends = [s + 1 for s in lay.starts]
    lay.nids = [i % 4 for i in range(n)]
    for k in range(0, 4 * n, 397):
        assert lay.lookup(k) == (((k // 4) % 4) if k % 4 < 2 else None)


def test_node_map_applies_ranges_and_keeps_outside_pfns():
    node = np.array([0] * 8 + [1] * 8, dtype=np.int8)
    lay = ml((2, 5, 3), (10, 11, 0), (14, 100, 2))
    out = lay.node_map(node)
    assert out.tolist() == [0, 0, 3, 3, 3, 3, 0, 0, 1, 1, 0, 0, 1, 1, 2, 2]
    assert node.tolist() == [0] * 8 + [1] * 8     # input untouched


def test_count_goes_to_layout_and_node_stats():
    lay = Memlayout(3)
    lay.counter(2).split_pages += 4
    lay.counter(None).split_pages += 1
    lay.counter(0).moved_pages += 7
    assert lay.stats["split-pages"] == 5
    assert lay.stats["moved-pages"] == 7
    assert lay.node_stats[2]["split-pages"] == 4
    assert lay.node_stats[0]["moved-pages"] == 7
    assert set(lay.node_stats) == {0, 2}


def test_stats_names_and_order():
    s = DnumaStats()
    assert list(s.counts) == list(STAT_NAMES)
    assert all(v == 0 for v in s.counts.values())
    assert "moved-pages" in STAT_NAMES and "cache-hit" in STAT_NAMES
    assert len(set(STAT_NAMES)) == len(STAT_NAMES)
    s.pcp_drain += 1
    s.transplant_on_free += 8
    assert s["pcp-drain"] == 1 and s["transplant-on-free"] == 8
    assert dict(s)["transplant-on-free"] == 8
    with pytest.raises(KeyError):
        s["no-such-stat"]
    with pytest.raises(AttributeError):     # a misspelt counter is no new attribute
        s.pcp_drian = 1  # type: ignore[attr-defined]
