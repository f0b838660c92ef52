"""Event counters: dnuma statistics, NUMA allocation statistics, vm events.

Each set is an attrs class with one int field per counter, so that the model counts with
attribute access (`stats.moved_pages += n`): a misspelt counter fails type checking, and at
run time on the slotted class. The files read them by the names Linux prints (`names()`,
`stats["moved-pages"]`), which are the field names with `_` shown as the class's separator.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

import attrs


@functools.cache
def _attr_names(cls: type[Counters]) -> dict[str, str]:
    """{printed name: field name}, in field order."""
    return {f.name.replace("_", cls.SEPARATOR): f.name for f in attrs.fields(cls)}


@attrs.define(eq=False)
class Counters(Mapping[str, int]):
    """A set of counters, also a read-only mapping of the printed names to the counts (so it
    compares equal to a dict of them)."""

    SEPARATOR: ClassVar[str] = "_"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The printed names, in the order the files list them."""
        return tuple(_attr_names(cls))

    def __getitem__(self, name: str) -> int:
        try:
            attr = _attr_names(type(self))[name]
        except KeyError:
            raise KeyError(name) from None
        value: int = getattr(self, attr)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(_attr_names(type(self)))

    def __len__(self) -> int:
        return len(_attr_names(type(self)))

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.items())

    def add(self, other: Counters) -> None:
        """Add other's counts (of the same class) to these."""
        for a in _attr_names(type(self)).values():
            setattr(self, a, getattr(self, a) + getattr(other, a))


@attrs.define(eq=False)
class DnumaStats(Counters):
    """One set of dnuma counters (mm/memlayout-debugfs.c's ml_stat_names), in pages for page
    events and in events for the others. The patch set's pcp-setup, pcp-update and
    future-zone-fixup are not here: the model's per-CPU lists have a fixed batch and high
    that no commit sets up or recomputes, and it moves managed pages with the pages rather
    than ahead of them at allocation (CONFIG_DNUMA_MANAGED_PAGE_UPDATE_DELAY)."""

    SEPARATOR: ClassVar[str] = "-"

    cache_hit: int = 0
    cache_miss: int = 0
    transplant_on_free: int = 0
    transplant_from_freelist_add: int = 0
    transplant_from_freelist_remove: int = 0
    split_pages: int = 0
    transplant_examined_pfn: int = 0
    transplant_bail_nid_eq: int = 0
    transplant_bail_reserved: int = 0
    transplant_bail_page_not_buddy: int = 0
    transplant_bail_already_done: int = 0
    pcp_drain: int = 0
    zonelist_rebuild: int = 0
    no_zonelist_rebuild: int = 0
    drain_zonestat: int = 0
    moved_pages: int = 0


STAT_NAMES: tuple[str, ...] = DnumaStats.names()



def sum_stats(parts: Iterable[DnumaStats]) -> DnumaStats:
    out = DnumaStats()
    for part in parts:
        out.add(part)
    return out


@attrs.define(eq=False)
class NumaStat(Counters):
    """A node's allocation statistics as zone_statistics() counts them (allocations, not
    pages), under the names nodeN/numastat prints."""

    numa_hit: int = 0
    numa_miss: int = 0
    numa_foreign: int = 0
    interleave_hit: int = 0
    local_node: int = 0
    other_node: int = 0


NUMASTAT_NAMES: tuple[str, ...] = NumaStat.names()


@attrs.define(eq=False)
class VmEvents(Counters):
    """The vm events (vm_event_item.h) the model counts, in /proc/vmstat's order."""

    pgfree: int = 0
    drop_pagecache: int = 0
    drop_slab: int = 0
    htlb_buddy_alloc_success: int = 0
    htlb_buddy_alloc_fail: int = 0


@attrs.define
class RetiredStats:
    """The counts of every layout that is no longer current, folded in as it stops being
    current (only the current layout counts events, as ml_stat_add() is only called with
    it), so that a global figure is this plus the current layout's, whatever the number of
    layouts kept or destroyed."""

    total: DnumaStats = attrs.field(factory=DnumaStats)
    nodes: dict[int, DnumaStats] = attrs.field(factory=dict)

    def fold(self, counters: dict[int | None, DnumaStats]) -> None:
        for nid, stats in counters.items():
            self.total.add(stats)
            if nid is not None:
                self.nodes.setdefault(nid, DnumaStats()).add(stats)


@attrs.frozen
class NodeStats(Mapping[int, DnumaStats]):
    """Per-node counters read on demand: looking one node up costs one node's reading,
    however many nodes there are."""

    nids: Sequence[int]         # a range, so that a lookup tests membership at once
    read: Callable[[int], DnumaStats]

    def __getitem__(self, nid: int) -> DnumaStats:
        if nid not in self.nids:
            raise KeyError(nid)
        return self.read(nid)

    def __iter__(self) -> Iterator[int]:
        return iter(self.nids)

    def __len__(self) -> int:
        return len(self.nids)
