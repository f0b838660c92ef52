"""Machine.check() (and the tests' own invariants) must notice a model broken on purpose."""
from __future__ import annotations

import pytest
from model_helpers import MiB, boot, free_blocks, model_invariants

from dnumafs.mm import ZoneType
from dnumafs.mm.constants import PG_BUDDY, PG_HEAD, PG_LOOKUP_NODE, PG_PCP, PG_RESERVED

DMA, DMA32 = ZoneType.DMA, ZoneType.DMA32


def machine():
    m = boot(nodes=2, mem=64 * MiB, possible_nodes=4)
    m.drain_pcp()
    assert m.check() == [] and model_invariants(m, tracked={}) == []
    return m


def a_free_block(m, nid, ztype, min_order=0):
    for h, o, n, t in free_blocks(m):
        if n == nid and t == ztype and o >= min_order:
            return h, o
    raise AssertionError("no such free block")


def move_free_block_node(m):
    h, o = a_free_block(m, 1, DMA32)
    m.page_node[h:h + (1 << o)] = 0           # behind the allocator's back


def move_one_free_page_node(m):
    h, o = a_free_block(m, 1, DMA32, min_order=3)
    m.page_node[h + 5] = 0


def move_allocated_page_node(m):
    p, o = m.boot_allocations[0]
    m.page_node[p] = 1 - int(m.page_node[p])


def move_reserved_page_node(m):
    m.page_node[3] = 1                        # pfn 3 is in node 0's reserved first MiB


def drop_free_block(m):
    h, o = a_free_block(m, 1, DMA32)
    del m.pgdat[1].zones[DMA32].free_area[o][h]


def drop_free_block_and_flag(m):
    h, o = a_free_block(m, 1, DMA32)
    del m.pgdat[1].zones[DMA32].free_area[o][h]
    m.page_flags[h] &= ~PG_BUDDY & 0xFF


def duplicate_block_on_two_lists(m):
    h, o = a_free_block(m, 1, DMA32)
    m.pgdat[1].zones[DMA32].free_area[o][h] = None
    m.pgdat[0].zones[DMA32].free_area[o][h] = None


def free_page_also_on_pcp(m):
    h, o = a_free_block(m, 1, DMA32)
    m.pgdat[1].zones[DMA32].pcp.setdefault(0, []).append(h)
    m.page_flags[h] |= PG_PCP


def misalign_block(m):
    h, o = a_free_block(m, 1, DMA32, min_order=2)
    z = m.pgdat[1].zones[DMA32]
    del z.free_area[o][h]
    m.page_flags[h] &= ~PG_BUDDY & 0xFF
    z.free_area[o][h + 1] = None              # one page off: misaligned, loses page h
    m.page_flags[h + 1] |= PG_BUDDY
    m.page_order[h + 1] = o


def block_on_wrong_order_list(m):
    h, o = a_free_block(m, 1, DMA32, min_order=1)
    z = m.pgdat[1].zones[DMA32]
    del z.free_area[o][h]
    z.free_area[o - 1][h] = None              # half the block is lost
    m.page_order[h] = o - 1


def block_on_wrong_zone_list(m):
    h, o = a_free_block(m, 0, DMA32)
    del m.pgdat[0].zones[DMA32].free_area[o][h]
    m.pgdat[0].zones[DMA].free_area[o][h] = None


def managed_pages_off_by_one(m):
    m.pgdat[1].zones[DMA32].managed_pages += 1


def present_pages_off_by_one(m):
    m.pgdat[0].zones[DMA].present_pages -= 1


def reserved_flag_cleared(m):
    m.page_flags[5] &= ~PG_RESERVED & 0xFF    # the page is now nowhere


def allocated_head_flag_cleared(m):
    p, o = m.boot_allocations[-1]
    m.page_flags[p] &= ~PG_HEAD & 0xFF


def lookup_flag_on_free_page(m):
    h, o = a_free_block(m, 1, DMA32)
    m.page_flags[h] |= PG_LOOKUP_NODE


def free_block_on_wrong_layout_node(m):
    """A free block moved to another node with every counter kept right: only the layout rule
    (a free page in a range is on the range's node) is broken."""
    h, o = a_free_block(m, 1, DMA32)
    n = 1 << o
    src, dst = m.pgdat[1].zones[DMA32], m.pgdat[0].zones[DMA32]
    del src.free_area[o][h]
    m.page_node[h:h + n] = 0
    src.present_pages -= n
    src.managed_pages -= n
    dst.present_pages += n
    dst.managed_pages += n
    dst.span_include(h, h + n)
    dst.free_area[o][h] = None


CORRUPTIONS = [
    move_free_block_node, move_one_free_page_node, move_allocated_page_node,
    move_reserved_page_node, drop_free_block, drop_free_block_and_flag,
    duplicate_block_on_two_lists, free_page_also_on_pcp, misalign_block,
    block_on_wrong_order_list, block_on_wrong_zone_list, managed_pages_off_by_one,
    present_pages_off_by_one, reserved_flag_cleared, allocated_head_flag_cleared,
    lookup_flag_on_free_page, free_block_on_wrong_layout_node,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_check_reports_corruption(corrupt):
    m = machine()
    corrupt(m)
    found = m.check()
    assert found, f"Machine.check() missed: {corrupt.__doc__ or corrupt.__name__}"
    assert all(isinstance(s, str) and s for s in found)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_own_invariants_report_corruption(corrupt):
    m = machine()
    corrupt(m)
    assert model_invariants(m, tracked={}), "the tests' own invariants missed it"


def test_check_is_clean_and_read_only_on_a_sound_machine():
    m = machine()
    node = m.page_node.copy()
    flags = m.page_flags.copy()
    assert m.check() == []
    assert m.check() == []
    assert (m.page_node == node).all() and (m.page_flags == flags).all()
