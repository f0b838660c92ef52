"""The bench's report: a row per measure with its aim, medians, and the table they print as."""
from __future__ import annotations

import statistics

import attrs

SEED_MINUTES = 9    # the original patch set's report for the seed scenario


@attrs.define
class Row:
    what: str
    value: str
    aim: str
    met: bool | None = None


def median_range(values: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of several runs."""
    return statistics.median(values), min(values), max(values)


def table(rows: list[Row]) -> str:
    head = ("measure", "result", "aim", "met")
    cells = [head] + [(r.what, r.value, r.aim, "" if r.met is None else "yes" if r.met else "NO")
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["| " + " | ".join(c[i].ljust(widths[i]) for i in range(4)) + " |" for c in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
