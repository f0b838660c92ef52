"""`dnumafs plot`: a trace of `dnumafs play --trace` drawn over model time, as an SVG.

The trace is JSON lines, one object per step: "step", "line", "at" (model seconds), "do",
"args", "nodes" ({nid: {"total_kb", "free_kb", "used_kb", "marked_pages", "cpus"}} for every
online node) and "moved_pages". Three panels share the time axis: each node's size
(total_kb, solid) and free memory (free_kb, dashed) in MiB; each node's marked pages; and
the pages moved in all. A node that is not online at a step has no point there.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import attrs

from dnumafs.client import ClientError
from dnumafs.play import AT_MAX

from . import svg
from .map import check_output, hex_colour, node_colour

NODE_KEYS = ("total_kb", "free_kb", "used_kb", "marked_pages")
# A trace's bounds: a line of 1024 nodes' figures is some 100 kB; a line per step, and no
# scenario of the player's has near this many steps.
MAX_LINE_BYTES = 1 << 20
MAX_LINES = 100_000
MAX_STEP_LABELS = 60        # more steps than this are drawn without their actions


@attrs.frozen
class Step:
    step: int
    at: float
    do: str
    nodes: dict[int, dict[str, int]]
    moved_pages: int


def _number(v: object, what: str, where: str, kind: type = int, high: float = math.inf
            ) -> float:
    """A figure of the trace: a number (an integer for kind int) from 0 to high."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            kind is int and not isinstance(v, int)) or not math.isfinite(v):
        raise ClientError(f"{where}: {what} is not a number: {json.dumps(v)}")
    if not 0 <= v <= high:
        raise ClientError(f"{where}: {what} = {json.dumps(v)} is out of range (0 to {high:g})")
    return v


def parse_step(text: str, where: str) -> Step:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ClientError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(obj, dict):
        raise ClientError(f"{where}: not a JSON object")
    missing = [k for k in ("step", "at", "do", "nodes", "moved_pages") if k not in obj]
    if missing:
        raise ClientError(f"{where}: no {', '.join(repr(k) for k in missing)}")
    nodes_obj = obj["nodes"]
    if not isinstance(nodes_obj, dict):
        raise ClientError(f"{where}: \"nodes\" is not an object")
    nodes: dict[int, dict[str, int]] = {}
    for nid, fig in nodes_obj.items():
        if not nid.isdigit() or not isinstance(fig, dict):
            raise ClientError(f"{where}: node {nid!r} is not a node id with its figures")
        for k in NODE_KEYS:
            if k not in fig:
                raise ClientError(f"{where}: node {nid} has no {k!r}")
        nodes[int(nid)] = {k: int(_number(fig[k], f"node {nid} {k}", where))
                           for k in NODE_KEYS}
    return Step(step=int(_number(obj["step"], "step", where)),
                at=float(_number(obj["at"], "at", where, float, AT_MAX)), do=str(obj["do"]),
                nodes=nodes, moved_pages=int(_number(obj["moved_pages"], "moved_pages",
                                                      where)))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The trace's lines, numbered, read one at a time: a line longer than MAX_LINE_BYTES or
    more than MAX_LINES lines (/dev/zero, a wrong file) is refused, never read whole."""
    try:
        with path.open("rb") as f:
            for n in itertools.count(1):
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                if len(raw) > MAX_LINE_BYTES:
                    raise ClientError(f"{path}:{n}: a line longer than {MAX_LINE_BYTES} bytes "
                                      "(not a trace)")
                if n > MAX_LINES:
                    raise ClientError(f"{path}:{n}: more than {MAX_LINES} lines (not a trace)")
                try:
                    yield n, raw.decode()
                except UnicodeDecodeError:
                    raise ClientError(f"{path}:{n}: not a trace (not text)") from None
    except OSError as e:
        raise ClientError(f"{path}: {e.strerror}") from None


def read_trace(path: Path) -> list[Step]:
    steps: list[Step] = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        step = parse_step(line, f"{path}:{n}")
        if steps and step.at < steps[-1].at:
            raise ClientError(f"{path}:{n}: at = {step.at:g} is before the line before's "
                              f"({steps[-1].at:g})")
        steps.append(step)
    if not steps:
        raise ClientError(f"{path}: an empty trace")
    return steps


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [math.floor(lo / step) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


# (label, colour, dashed, [(at, value)])
Series = tuple[str, str, bool, list[tuple[float, float]]]


@attrs.frozen
class Panel:
    title: str
    unit: str
    series: list[Series]


def panels(steps: list[Step]) -> list[Panel]:
    nids = sorted({n for s in steps for n in s.nodes})
    colours = {nid: hex_colour(node_colour(i)) for i, nid in enumerate(nids)}
    size: list[Series] = []
    marked: list[Series] = []
    for nid in nids:
        pts = [(s.at, s.nodes[nid]) for s in steps if nid in s.nodes]
        size.append((f"node {nid} total", colours[nid], False,
                     [(t, f["total_kb"] / 1024) for t, f in pts]))
        size.append((f"node {nid} free", colours[nid], True,
                     [(t, f["free_kb"] / 1024) for t, f in pts]))
        marked.append((f"node {nid}", colours[nid], False,
                       [(t, float(f["marked_pages"])) for t, f in pts]))
    moved: list[Series] = [("moved pages", "#333333", False,
                            [(s.at, float(s.moved_pages)) for s in steps])]
    return [Panel("node size (solid) and free memory (dashed)", "MiB", size),
            Panel("pages marked for transplant, per node", "pages", marked),
            Panel("pages moved (memlayout moved-pages)", "pages", moved)]


def plot_svg(steps: list[Step], source: str) -> str:
    left, right, top = 80, 200, 110
    pw, ph, gap = 720, 200, 70
    times = [s.at for s in steps]
    xt = nice_ticks(min(times), max(times))
    x0, x1 = xt[0], xt[-1]

    def sx(t: float) -> float:
        return left + (t - x0) / ((x1 - x0) or 1) * pw

    body = [svg.text(left, 24, f"{source}: {len(steps)} steps, model time "
                     f"{min(times):g} to {max(times):g} s", 15, font_weight="bold")]
    # Each step's action above the panels, and a dotted line down through them.
    marked = steps if len(steps) <= MAX_STEP_LABELS else []
    for s in marked:
        body.append(svg.text(sx(s.at) + 3, top - 4, f"{s.step} {s.do}", 10,
                             transform=f"rotate(-40 {sx(s.at) + 3:.1f} {top - 4})"))
    for i, panel in enumerate(panels(steps)):
        y0 = top + 20 + i * (ph + gap)
        values = [v for _, _, _, pts in panel.series for _, v in pts]
        yt = nice_ticks(min([0.0, *values]), max([1.0, *values]))
        lo, hi = yt[0], yt[-1]

        def sy(v: float, y0: int = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + ph - (v - lo) / ((hi - lo) or 1) * ph

        body.append(svg.text(left, y0 - 8, f"{panel.title} ({panel.unit})", 13,
                             font_weight="bold"))
        body.append(svg.rect(left, y0, pw, ph, "none", stroke="#888"))
        for v in yt:
            body.append(svg.line(left, sy(v), left + pw, sy(v), "#ddd", 0.8))
            body.append(svg.text(left - 6, sy(v) + 4, _label(v), 10, text_anchor="end"))
        for s in marked:
            body.append(svg.line(sx(s.at), y0, sx(s.at), y0 + ph, "#bbb", 0.8,
                                 stroke_dasharray="1,3"))
        for t in xt:
            body.append(svg.line(sx(t), y0 + ph, sx(t), y0 + ph + 4, "#888"))
            body.append(svg.text(sx(t), y0 + ph + 16, _label(t), 10, text_anchor="middle"))
        for j, (label, colour, dashed, pts) in enumerate(panel.series):
            body.append(svg.polyline([(sx(t), sy(v)) for t, v in pts], colour,
                                     stroke_dasharray="6,4" if dashed else None,
                                     data_series=label))
            if marked:      # the steps' points, so that a lone one shows too
                body += [svg.element("circle", cx=sx(t), cy=sy(v), r=2, fill=colour)
                         for t, v in pts]
            ly = y0 + 10 + j * 15
            body.append(svg.line(left + pw + 14, ly - 4, left + pw + 38, ly - 4, colour, 2,
                                 stroke_dasharray="6,4" if dashed else None))
            body.append(svg.text(left + pw + 44, ly, label, 11))
    bottom = top + 20 + 3 * (ph + gap) - gap + 34
    body.append(svg.text(left + pw / 2, bottom, "model time (s)", 12, text_anchor="middle"))
    return svg.document(left + pw + right, bottom + 16, body, f"dnumafs plot of {source}")


def write_plot(trace: Path, out: Path) -> None:
    check_output(out, (".svg",))
    steps = read_trace(trace)
    out.write_text(plot_svg(steps, trace.name))
