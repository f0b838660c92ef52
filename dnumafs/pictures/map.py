"""`dnumafs map`: every pfn of a mounted machine by node and state, read from its files only.

What is read, as a tool on a dnuma kernel would: proc/kpageflags (each pfn's KPF_* flags),
sys/kernel/debug/dnumafs/page_nid (each pfn's node), /proc/zoneinfo (the zones' spans), the
memory blocks' state files (offline blocks) and the current layout's range files. A page's
state is:
  free       KPF_BUDDY (on a buddy list; the per-CPU lists' pages count as allocated, as
             MemFree leaves them out)
  allocated  any other online page
  marked     allocated on a node other than the one its range of the current layout names:
             it moves when freed (transplant-on-free)
  reserved   KPF_RESERVED
  offline    KPF_NOPAGE in an offline memory block
  absent     KPF_NOPAGE elsewhere (past the end of memory)
The raster has one cell per `pfns per cell` pfns, row after row; a cell shows the most common
(node, state) of its pfns. Colour is the node; shade the state (light free, full allocated,
dark marked); reserved, offline and absent are greys and white.
"""
from __future__ import annotations

import enum
import os
from pathlib import Path

import attrs
import numpy as np

from dnumafs.client import ClientError, MountedTree
from dnumafs.lib.page_flags import KPF_BUDDY, KPF_NOPAGE, KPF_RESERVED, NID_NONE

from . import png, svg

KPAGEFLAGS = "proc/kpageflags"
PAGE_NID = "sys/kernel/debug/dnumafs/page_nid"
MEMORY_DIR = "sys/devices/system/memory"
READ_CHUNK = 8 << 20
DEFAULT_WIDTH = 1024
MAX_WIDTH = 8192
MAX_CELLS = 1 << 20            # a 64 GiB machine: 16 pfns a cell at 1024 columns
MAX_BOUNDARY_MARKS = 4096      # range starts drawn; beyond, the legend says how many
MAP_SUFFIXES = (".svg", ".png")


class State(enum.IntEnum):
    FREE = 0
    ALLOCATED = 1
    MARKED = 2
    RESERVED = 3
    OFFLINE = 4
    ABSENT = 5


NODE_STATES = (State.FREE, State.ALLOCATED, State.MARKED)

# Colours of nodes (slots cycle past the end), then the shades of a node's states.
NODE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207),
                (188, 189, 34), (127, 127, 127)]
FIXED_COLOURS = {State.RESERVED: (48, 48, 48), State.OFFLINE: (190, 190, 190),
                 State.ABSENT: (255, 255, 255)}
MARK = (0, 0, 0)
# Palette: absent, offline, reserved, mark, then three shades per node slot.
FIXED_INDEX = {State.ABSENT: 0, State.OFFLINE: 1, State.RESERVED: 2}
MARK_INDEX = 3
FIRST_NODE_INDEX = 4
NODE_SLOTS = (256 - FIRST_NODE_INDEX) // len(NODE_STATES)


def _shade(rgb: tuple[int, int, int], state: State) -> tuple[int, int, int]:
    if state == State.FREE:         # a light tint
        return tuple(int(c + (255 - c) * 0.55) for c in rgb)  # type: ignore[return-value]
    if state == State.MARKED:       # darker
        return tuple(int(c * 0.45) for c in rgb)  # type: ignore[return-value]
    return rgb


def node_colour(slot: int) -> tuple[int, int, int]:
    base = NODE_COLOURS[slot % len(NODE_COLOURS)]
    if slot < len(NODE_COLOURS):
        return base
    k = 0.55 + 0.15 * ((slot // len(NODE_COLOURS)) % 3)      # another brightness per lap
    return tuple(min(255, int(c * k + 40)) for c in base)  # type: ignore[return-value]


def palette() -> list[tuple[int, int, int]]:
    colours = [FIXED_COLOURS[State.ABSENT], FIXED_COLOURS[State.OFFLINE],
               FIXED_COLOURS[State.RESERVED], MARK]
    for slot in range(NODE_SLOTS):
        colours += [_shade(node_colour(slot), s) for s in NODE_STATES]
    return colours


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@attrs.frozen
class ZoneSpan:
    nid: int
    name: str
    start: int
    end: int            # one past the last pfn


def kpf_bit(flags: np.ndarray, b: int) -> np.ndarray:
    """KPF bit b of each little-endian u64 entry, read from its byte: a pass over bytes costs
    a fraction of shifting 64-bit words."""
    return flags.view(np.uint8)[b // 8::8] & (1 << b % 8) != 0


def present_nodes(nids: np.ndarray) -> list[int]:
    """The nodes page_nid names, ascending."""
    return np.flatnonzero(np.bincount(nids, minlength=NID_NONE + 1)[:NID_NONE]).tolist()


@attrs.frozen
class PageMap:
    """What the files say of every pfn, and the boundaries to mark."""

    flags: np.ndarray                       # u64 KPF_* per pfn
    nids: np.ndarray                        # u16 node per pfn, NID_NONE for none
    zones: list[ZoneSpan]
    ranges: list[tuple[int, int, int]]      # (start, end inclusive, nid) of the current layout
    layout: str
    offline: list[tuple[int, int]]          # [start, end) of each offline memory block
    source: str
    nodes: list[int] = attrs.field()        # the nodes of nids

    @nodes.default
    def _nodes(self) -> list[int]:
        return present_nodes(self.nids)

    @property
    def pfns(self) -> int:
        return len(self.flags)

    def states(self) -> np.ndarray:
        """Each pfn's State (uint8)."""
        f = self.flags
        st = np.full(self.pfns, State.ALLOCATED, dtype=np.uint8)
        st[kpf_bit(f, KPF_BUDDY)] = State.FREE
        st[kpf_bit(f, KPF_RESERVED)] = State.RESERVED
        nopage = kpf_bit(f, KPF_NOPAGE)
        st[nopage] = State.ABSENT
        for start, end in self.offline:
            part = st[start:end]
            part[nopage[start:end]] = State.OFFLINE
        wanted = self.range_nodes()
        marked = (st == State.ALLOCATED) & (wanted != NID_NONE) & (wanted != self.nids)
        st[marked] = State.MARKED
        return st

    def range_nodes(self) -> np.ndarray:
        """The node the current layout names for each pfn (NID_NONE outside its ranges)."""
        out = np.full(self.pfns, NID_NONE, dtype=np.uint16)
        for start, end, nid in self.ranges:
            out[start:end + 1] = nid
        return out

    def keys(self, states: np.ndarray) -> np.ndarray:
        """node * 8 + state of each pfn."""
        return self.nids.astype(np.int32) * 8 + states

    def counts(self, keys: np.ndarray) -> dict[tuple[int | None, State], int]:
        """Pages by (node, state); reserved, offline and absent pages by (None, state)."""
        per = np.bincount(keys, minlength=(NID_NONE + 1) * 8).reshape(-1, 8)
        out: dict[tuple[int | None, State], int] = {
            (nid, s): int(per[nid, s]) for nid in self.nodes for s in NODE_STATES}
        for s in FIXED_INDEX:
            out[None, s] = int(per[:, s].sum())
        return out


# --- reading the files ---------------------------------------------------------------------

def _read_binary(tree: MountedTree, rel: str, dtype: str) -> np.ndarray:
    """A binary page file whole, read in large pieces until its end (procfs and debugfs
    report no size)."""
    path = tree.path(rel)
    chunks = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ClientError(f"{path}: {e.strerror}") from None
    try:
        offset = 0
        while True:
            data = os.pread(fd, READ_CHUNK, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
    except OSError as e:
        raise ClientError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return np.frombuffer(b"".join(chunks), dtype=dtype)


def offline_blocks(tree: MountedTree) -> list[tuple[int, int]]:
    """[start, end) pfns of each memory block whose state is offline."""
    size = int(tree.read(f"{MEMORY_DIR}/block_size_bytes").strip(), 16) >> 12
    out = []
    for name in tree.listdir(MEMORY_DIR):
        if name.startswith("memory") and name[6:].isdigit():
            if tree.read(f"{MEMORY_DIR}/{name}/state").strip() == "offline":
                bid = int(name[6:])
                out.append((bid * size, (bid + 1) * size))
    return sorted(out)


def read_map(mnt: str | os.PathLike[str]) -> PageMap:
    tree = MountedTree(mnt)
    flags = _read_binary(tree, KPAGEFLAGS, "<u8")
    nids = _read_binary(tree, PAGE_NID, "<u2")
    if len(flags) != len(nids):
        raise ClientError(f"{mnt}: {KPAGEFLAGS} has {len(flags)} pfns, {PAGE_NID} "
                          f"{len(nids)}: the machine changed while read")
    layout = tree.current_layout()
    return PageMap(flags=flags, nids=nids, zones=[ZoneSpan(*z) for z in tree.zone_spans()],
                   ranges=tree.layout_ranges(layout), layout=layout,
                   offline=offline_blocks(tree), source=str(mnt))


# --- the raster ------------------------------------------------------------------------------

@attrs.frozen
class Raster:
    """Cells of pfns_per_cell pfns, `width` to a row, as palette indices."""

    pixels: np.ndarray              # rows x width, uint8
    pfns_per_cell: int
    width: int

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    def cell_of(self, pfn: int) -> tuple[int, int]:
        """(column, row) of the cell that holds pfn."""
        cell = pfn // self.pfns_per_cell
        return cell % self.width, cell // self.width


def pfns_per_cell(pfns: int, width: int) -> int:
    """The fewest pfns a cell (a power of two) that keeps the raster within MAX_CELLS and
    no taller than it is wide."""
    per = 1
    while -(-pfns // per) > max(MAX_CELLS, width) or -(-pfns // (per * width)) > width:
        per *= 2
    return per


def pixel_codes(pm: PageMap, keys: np.ndarray) -> np.ndarray:
    """Each pfn's palette index, from its node * 8 + state."""
    table = np.zeros((NID_NONE + 1, 8), dtype=np.uint8)
    for s, index in FIXED_INDEX.items():
        table[:, s] = index
    for i, nid in enumerate(pm.nodes):
        for s in NODE_STATES:
            table[nid, s] = FIRST_NODE_INDEX + (i % NODE_SLOTS) * len(NODE_STATES) + s
    return table.reshape(-1)[keys]


def raster(pm: PageMap, keys: np.ndarray, width: int = DEFAULT_WIDTH) -> Raster:
    per = pfns_per_cell(pm.pfns, width)
    codes = pixel_codes(pm, keys)
    cells = -(-pm.pfns // per)
    rows = -(-cells // width)
    padded = np.full(rows * width * per, FIXED_INDEX[State.ABSENT], dtype=np.uint8)
    padded[:pm.pfns] = codes
    if per == 1:
        return Raster(padded.reshape(rows, width), 1, width)
    # The pfns of a code in each cell: its matches (bytes of 0 or 1) summed a word at a time.
    word = np.dtype(f"<u{min(per, 8)}")
    best = np.zeros(rows * width, dtype=np.uint8)
    most = np.zeros(rows * width, dtype=np.int64)
    for code in np.flatnonzero(np.bincount(padded, minlength=256)).tolist():
        hits = (padded == code).view(word).reshape(rows * width, -1)
        n = np.bitwise_count(hits).sum(axis=1, dtype=np.int64)
        better = n > most
        best[better], most[better] = code, n[better]
    return Raster(best.reshape(rows, width), per, width)


# --- the pictures ----------------------------------------------------------------------------

def _gib(pages: int) -> str:
    return f"{pages * 4096 / (1 << 30):.3g} GiB"


def legend_items(pm: PageMap, counts: dict[tuple[int | None, State], int]
                 ) -> list[tuple[int, str]]:
    """(palette index, label) of every colour the map uses."""
    items = []
    for i, nid in enumerate(pm.nodes):
        for s in NODE_STATES:
            items.append((FIRST_NODE_INDEX + (i % NODE_SLOTS) * len(NODE_STATES) + s,
                          f"node {nid} {s.name.lower()}: {counts[nid, s]} pages"))
    for s, index in FIXED_INDEX.items():
        if counts[None, s]:
            items.append((index, f"{s.name.lower()}: {counts[None, s]} pages"))
    return items


def boundaries(pm: PageMap) -> tuple[list[tuple[int, str]], list[int]]:
    """Zone boundaries (pfn, label) and range starts of the current layout."""
    zones = sorted((z.start, f"node {z.nid} {z.name} {z.start:#x}-{z.end - 1:#x}")
                   for z in pm.zones)
    zones += [(max(z.end for z in pm.zones), "end of zones")] if pm.zones else []
    starts = sorted({s for s, _, _ in pm.ranges} | {e + 1 for _, e, _ in pm.ranges})
    return zones, [s for s in starts if 0 < s < pm.pfns]


def map_png(pm: PageMap, width: int = DEFAULT_WIDTH) -> bytes:
    """The raster, a gutter each side (left: rows where a zone starts, right: rows where a
    range starts) and a strip of the legend's colours below it (the labels are the SVG's)."""
    keys = pm.keys(pm.states())
    r = raster(pm, keys, width)
    gutter = 4
    img = np.full((r.rows, r.width + 2 * (gutter + 1)), FIXED_INDEX[State.ABSENT],
                  dtype=np.uint8)
    img[:, gutter + 1:gutter + 1 + r.width] = r.pixels
    zones, starts = boundaries(pm)
    for pfn, _ in zones:
        img[min(r.cell_of(pfn)[1], r.rows - 1), :gutter] = MARK_INDEX
    for pfn in starts:
        img[r.cell_of(pfn)[1], -gutter:] = MARK_INDEX
    items = legend_items(pm, pm.counts(keys))
    swatch = 12
    strip = np.full((swatch + 8, img.shape[1]), FIXED_INDEX[State.ABSENT], dtype=np.uint8)
    for i, (index, _) in enumerate(items):
        x = 4 + i * (swatch + 4)
        if x + swatch <= strip.shape[1]:
            strip[4:4 + swatch, x:x + swatch] = MARK_INDEX
            strip[5:3 + swatch, x + 1:x + swatch - 1] = index
    return png.encode_indexed(np.vstack([img, strip]), palette())


def map_svg(pm: PageMap, width: int = DEFAULT_WIDTH) -> str:
    keys = pm.keys(pm.states())
    r = raster(pm, keys, width)
    counts = pm.counts(keys)
    cw = max(1.0, 1024 / r.width)                   # drawn cell size
    ch = max(1.0, min(8.0, 640 / r.rows))
    left, top = 96, 56
    w, h = r.width * cw, r.rows * ch
    pal = palette()
    body = [svg.text(left, 22, f"{pm.source}: {pm.pfns} pfns ({_gib(pm.pfns)}), "
                     f"current layout {pm.layout} ({len(pm.ranges)} ranges)", 15,
                     font_weight="bold"),
            svg.text(left, 42, f"each cell: {r.pfns_per_cell} pfn"
                     f"{'s' if r.pfns_per_cell > 1 else ''} ({r.pfns_per_cell * 4} KiB), "
                     f"{r.width} a row, its most common node and state", 12),
            svg.png_image(left, top, w, h, png.encode_indexed(r.pixels, pal))]
    label_every = max(1, -(-r.rows // 32))
    for row in range(0, r.rows, label_every):
        pfn = row * r.width * r.pfns_per_cell
        body.append(svg.text(left - 6, top + row * ch + ch / 2 + 4, f"{pfn:#x}", 10,
                             text_anchor="end"))
    zones, starts = boundaries(pm)
    drawn = starts[:MAX_BOUNDARY_MARKS]

    def row_top(pfn: int) -> float:
        return top + r.cell_of(pfn)[1] * ch

    def edge(pfn: int, colour: str, width: float) -> str:
        """The line between pfn - 1 and pfn: along the top of pfn's row from its cell on,
        down its cell's left side, along the bottom of the row before its cell."""
        px, py = left + r.cell_of(pfn)[0] * cw, row_top(pfn)
        pts = [(left + w, py), (px, py), (px, py + ch), (left, py + ch)] if px > left else \
            [(left + w, py), (left, py)]
        return svg.polyline(pts, colour, width)

    # Every range boundary gets a tick left of the raster; the lines through the raster are
    # drawn only where they leave the cells between them visible.
    through = len(drawn) * 8 <= h
    for pfn in drawn:
        body.append(svg.line(left - 5, row_top(pfn), left - 1, row_top(pfn), "#e6007e", 1))
        if through:
            body.append(edge(pfn, "#e6007e", 1.2))
    label_y = 0.0
    for pfn, label in zones:
        py = row_top(pfn)
        body.append(edge(pfn, "#000", 2))
        label_y = max(py + 4, label_y + 13)
        body.append(svg.line(left + w, py, left + w + 6, label_y - 4, "#000", 0.6))
        body.append(svg.text(left + w + 8, label_y, label, 11))
    y = max(top + h, label_y) + 28
    body.append(svg.text(left, y, "Legend", 13, font_weight="bold"))
    items = legend_items(pm, counts)
    columns = 3
    for i, (index, label) in enumerate(items):
        cx, cy = left + (i % columns) * 330, y + 12 + (i // columns) * 18
        body.append(svg.rect(cx, cy, 14, 14, hex_colour(pal[index]), stroke="#000",
                             stroke_width=0.5))
        body.append(svg.text(cx + 20, cy + 12, label, 12))
    y += 12 + (-(-len(items) // columns)) * 18 + 14
    body.append(svg.line(left, y - 4, left + 24, y - 4, "#000", 2.5))
    body.append(svg.text(left + 30, y, "zone boundary (node, zone, pfns: labels at right)", 12))
    body.append(svg.line(left + 380, y - 4, left + 404, y - 4, "#e6007e", 1.2))
    note = f"range boundary of {pm.layout}" + ("" if through else " (ticks at left)")
    if len(drawn) < len(starts):
        note += f" (first {len(drawn)} of {len(starts)} drawn)"
    body.append(svg.text(left + 408, y, note, 12))
    total_w = left + w + 260
    return svg.document(total_w, y + 20, body, f"dnumafs map of {pm.source}")


def check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise ClientError(f"width {width}: a row holds 1 to {MAX_WIDTH} cells")


def check_output(out: Path, suffixes: tuple[str, ...]) -> str:
    """out's suffix, lower case, if it is one of suffixes."""
    suffix = out.suffix.lower()
    if suffix not in suffixes:
        raise ClientError(f"{out}: written as {' or '.join(suffixes)}, not "
                          f"{suffix or 'a name without a suffix'}")
    return suffix


def write_map(mnt: str, out: Path, width: int = DEFAULT_WIDTH) -> None:
    """Draw mnt's pages into out (.svg or .png)."""
    suffix = check_output(out, MAP_SUFFIXES)
    check_width(width)
    pm = read_map(mnt)
    data = map_svg(pm, width).encode() if suffix == ".svg" else map_png(pm, width)
    out.write_bytes(data)
