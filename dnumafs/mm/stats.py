"""dnuma statistics: counters incremented where the event happens."""
from __future__ import annotations

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

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


def sum_stats(parts) -> DnumaStats:
    """Totals are sums of the per-node counters, never counted twice."""
    out = DnumaStats()
    for part in parts:
        for name, n in part.counts.items():
            out.counts[name] += n
    return out
