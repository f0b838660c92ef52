"""dnuma statistics: counters incremented where the event happens."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

# Names as the files show them, in the order the files list them.
STAT_NAMES: tuple[str, ...] = (
    "cache-hit",
    "cache-miss",
    "transplant-on-free",
    "transplant-from-freelist-add",
    "transplant-from-freelist-remove",
    "split-pages",
    "transplant-examined-pfn",
    "transplant-bail-nid-eq",
    "transplant-bail-reserved",
    "transplant-bail-page-not-buddy",
    "transplant-bail-already-done",
    "pcp-drain",
    "zonelist-rebuild",
    "no-zonelist-rebuild",
    "moved-pages",
)


@attrs.define
class DnumaStats:
    """One set of counters (global, per node, per layout, per layout and node)."""

    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(STAT_NAMES, 0))

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


class SummedStats:
    """A live total of other counters: totals are sums, never counted twice."""

    def __init__(self, parts: Callable[[], Iterable[DnumaStats]]) -> None:
        self._parts = parts

    def __getitem__(self, name: str) -> int:
        return sum(p.counts[name] for p in self._parts())

    @property
    def counts(self) -> dict[str, int]:
        return sum_stats(self._parts()).counts


def sum_stats(parts: Iterable[DnumaStats]) -> DnumaStats:
    out = DnumaStats()
    for part in parts:
        for name, n in part.counts.items():
            out.counts[name] += n
    return out
