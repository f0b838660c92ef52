"""Boot's free runs and its listing of long runs at once against the page-by-page reference.

The reference is boot's first form: reserved pages found by scanning the flags, each run freed
block by block through free_one_page(). Machines booted through it and through boot as it is
must be the same in every page, free list (in its order), zone and count.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from machines_helpers import ARCHIVES
from model_helpers import MiB
from test_speed_commit import assert_same, block_state

from dnumafs.machines import load
from dnumafs.machines.reserve import reserved_ranges
from dnumafs.mm import Machine, MachineConfig, boot, page_alloc
from dnumafs.mm.constants import MAX_ORDER, PG_RESERVED, ZoneType, zone_type_bounds
from dnumafs.mm.memory_hotplug import OnlineType

SNAPSHOT_LIMIT = 16 << 30       # bigger snapshots are booted by the bench, not here


def ref_free_pages_core(m: Machine, zone: Any, pfn: int, end: int) -> None:
    while pfn < end:
        order = min(MAX_ORDER - 1, (pfn & -pfn).bit_length() - 1 if pfn else MAX_ORDER - 1,
                    (end - pfn).bit_length() - 1)
        page_alloc.free_one_page(m.mem_map, zone, pfn, order)
        m.vm_events.pgfree += 1 << order
        pfn += 1 << order


def ref_boot_node(m: Machine, nid: int, start: int, end: int) -> None:
    pgdat = m.pgdat[nid]
    flags = m.mem_map.page_flags
    for ztype in ZoneType:
        lo, hi = zone_type_bounds(ztype, m.mem_map.max_pfn)
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            zone = pgdat.zones[ztype]
            zone.span_include(lo, hi)
            zone.present_pages = zone.managed_pages = hi - lo
    for lo, hi in reserved_ranges(start, end):
        flags[lo:hi] |= PG_RESERVED
    for zone in pgdat.zones.values():
        if not zone.present_pages:
            continue
        lo, hi = zone.zone_start_pfn, zone.zone_end_pfn
        res = (flags[lo:hi] & PG_RESERVED) != 0
        zone.managed_pages -= int(res.sum())
        edges = np.flatnonzero(np.diff(np.concatenate(([True], res, [True])).astype(np.int8)))
        for a, b in zip(edges[0::2], edges[1::2]):
            ref_free_pages_core(m, zone, lo + int(a), lo + int(b))


def boot_both(monkeypatch: pytest.MonkeyPatch, config: MachineConfig) -> tuple[Machine, Machine]:
    with monkeypatch.context() as mp:
        mp.setattr(boot, "boot_node", ref_boot_node)
        mp.setattr(page_alloc, "free_pages_core", ref_free_pages_core)
        ref = Machine.boot(config)
    new = Machine.boot(config)
    assert_same(ref, new)
    return ref, new


@pytest.mark.parametrize("config", [
    dict(nodes=1, mem=4 * MiB, cpus=1, possible_nodes=1),
    dict(nodes=2, mem=64 * MiB, cpus=4),
    dict(nodes=3, mem=(5 << 30) + 3 * 4096 * 333, cpus=6),
    dict(nodes=4, node_mem=(5 * MiB, 17 * MiB + 4096, 4 << 30, 9 * MiB), cpus=8),
    dict(nodes=2, mem=1 << 30, cpus=2, boot_alloc_percent=0),
    dict(nodes=3, mem=256 * MiB, cpus=3, possible_nodes=300),
])
def test_synthetic_machines_boot_the_same(monkeypatch, config):
    boot_both(monkeypatch, MachineConfig(**config))


@pytest.mark.parametrize("archive", ARCHIVES, ids=[a.name for a in ARCHIVES])
def test_snapshots_boot_the_same(monkeypatch, archive):
    desc = load(archive)
    if sum(n.memory_kb for n in desc.nodes) << 10 > SNAPSHOT_LIMIT:
        pytest.skip(f"{archive.name}: more than {SNAPSHOT_LIMIT >> 30} GiB")
    boot_both(monkeypatch, MachineConfig(machine=desc))


def test_onlined_blocks_free_the_same(monkeypatch):
    """Onlining frees a block's runs next to free neighbours, which merge."""
    ref, new = boot_both(monkeypatch, MachineConfig(nodes=2, mem=256 * MiB, cpus=2,
                                                    block_size=8 * MiB))
    steps = [block_state(OnlineType.OFFLINE, 2), block_state(OnlineType.ONLINE, 0),
             block_state(OnlineType.ONLINE_MOVABLE, 0)]
    for step in steps:
        with monkeypatch.context() as mp:
            mp.setattr(page_alloc, "free_pages_core", ref_free_pages_core)
            step(ref)
        step(new)
        assert_same(ref, new)
