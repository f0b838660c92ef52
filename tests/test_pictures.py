"""dnumafs map and dnumafs plot through the command line: the map's cells counted against the
page counts of the node files, the plot's series against a trace written here by hand in the
format of `dnumafs play --trace`, and bad input."""
from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from files_helpers import Mounted, zoneinfo
from test_pictures_pages import node_kb

Run = Callable[..., subprocess.CompletedProcess[str]]


def decode_png(data: bytes) -> tuple[list[list[int]], list[str]]:
    """The rows of palette indices and the palette (#rrggbb) of an indexed PNG without
    filters, as the map writes it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, palette, size = 8, b"", [], (0, 0)
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == \
            zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 3)
            size = (w, h)
        elif kind == b"PLTE":
            palette = ["#" + body[i:i + 3].hex() for i in range(0, n, 3)]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    w, h = size
    assert len(raw) == h * (w + 1)
    rows = [list(raw[r * (w + 1) + 1:(r + 1) * (w + 1)]) for r in range(h)]
    assert all(raw[r * (w + 1)] == 0 for r in range(h))
    return rows, palette


def svg_raster(svg: str) -> tuple[list[list[int]], list[str]]:
    uri = re.search(r'href="data:image/png;base64,([^"]+)"', svg)
    assert uri
    return decode_png(base64.b64decode(uri[1]))


def legend(svg: str) -> dict[str, tuple[str, int]]:
    """{label: (colour, pages)} of the map's legend."""
    pairs = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="14" height="14" fill="(#\w+)"'
                       r'[^>]*/>\s*<text[^>]*>([^<]+): (\d+) pages</text>', svg)
    return {label: (colour, int(n)) for colour, label, n in pairs}


def colour_counts(rows: list[list[int]], palette: list[str]) -> Counter[str]:
    return Counter(palette[i] for row in rows for i in row)


def node_meminfo_pages(fs: Mounted, key: str) -> dict[int, int]:
    return {nid: kb // 4 for nid, kb in node_kb(fs, key).items()}


def check_map_counts(fs: Mounted, svg: str, marked: bool) -> None:
    """Every cell is one pfn here: the cells of each colour are the pages the node files
    count in that state, and the legend says so."""
    rows, palette = svg_raster(svg)
    cells = colour_counts(rows, palette)
    items = legend(svg)
    free, total = node_meminfo_pages(fs, "MemFree"), node_meminfo_pages(fs, "MemTotal")
    for nid in total:
        (cf, nf), (ca, na), (cm, nm) = (items[f"node {nid} {s}"]
                                        for s in ("free", "allocated", "marked"))
        assert cells[cf] == nf == free[nid]
        assert cells[ca] + cells[cm] == na + nm == total[nid] - free[nid]
        assert cells[cm] == nm
        assert (nm > 0) if marked and nid < 2 else nm == 0
    zones = zoneinfo(fs.read("proc/zoneinfo")).values()
    reserved = sum(z["present"] - z["managed"] for z in zones if "present" in z)
    colour, n = items["reserved"]
    assert cells[colour] == n == reserved
    assert sum(cells.values()) == len(rows) * len(rows[0])


@pytest.fixture
def fs(mount_dnumafs: Callable[..., Path]) -> Mounted:
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "256M"))


def test_map_cells_are_the_pages_of_the_node_files(fs: Mounted, run_dnumafs: Run,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "boot.svg"
    r = run_dnumafs("map", fs.mnt, "-o", out)
    assert r.returncode == 0, r.stderr
    svg = out.read_text()
    assert "layout.0 (2 ranges)" in svg
    check_map_counts(fs, svg, marked=False)

    r = run_dnumafs("stripe", fs.mnt, "0", "2", "2048")
    assert r.returncode == 0, r.stderr
    r = run_dnumafs("map", fs.mnt, "-o", tmp_path / "striped.svg")
    assert r.returncode == 0, r.stderr
    svg = (tmp_path / "striped.svg").read_text()
    check_map_counts(fs, svg, marked=True)
    assert "layout.1 (32 ranges)" in svg
    # a range boundary at each range's start but the first: a tick left of the raster and
    # a line through it (the legend has one of each too)
    assert len(re.findall(r'<polyline [^>]*stroke="#e6007e"', svg)) == 31
    assert len(re.findall(r'<line [^>]*stroke="#e6007e"', svg)) == 31 + 1

    # the PNG: the same cells between its gutters, the legend's colours below
    r = run_dnumafs("map", fs.mnt, "-o", tmp_path / "striped.png")
    assert r.returncode == 0, r.stderr
    png_rows, png_palette = decode_png((tmp_path / "striped.png").read_bytes())
    svg_rows, svg_palette = svg_raster(svg)
    assert [row[5:5 + len(svg_rows[0])] for row in png_rows[:len(svg_rows)]] == svg_rows
    assert png_palette == svg_palette


def test_map_of_a_larger_machine_takes_the_most_common_state_of_each_cell(
        mount_dnumafs: Callable[..., Path], run_dnumafs: Run, tmp_path: Path) -> None:
    fs = Mounted(mount_dnumafs("--nodes", "2", "--mem", "1G"))
    r = run_dnumafs("map", fs.mnt, "-o", tmp_path / "m.svg", "--width", "256")
    assert r.returncode == 0, r.stderr
    svg = (tmp_path / "m.svg").read_text()
    assert "each cell: 4 pfns" in svg
    rows, palette = svg_raster(svg)
    assert (len(rows), len(rows[0])) == (256, 256)
    cells = colour_counts(rows, palette)
    items = legend(svg)
    # free memory dominates each node; cells of it come within a cell per zone of its pages
    for nid, free in node_meminfo_pages(fs, "MemFree").items():
        colour, n = items[f"node {nid} free"]
        assert n == free and abs(cells[colour] * 4 - free) < free * 0.02


def write_trace(path: Path) -> list[dict[str, object]]:
    """A trace as `dnumafs play --trace` writes it: node 2 comes online at step 1."""
    def node(total: int, free: int, marked: int, cpus: str) -> dict[str, object]:
        return {"cpus": cpus, "free_kb": free, "marked_pages": marked, "total_kb": total,
                "used_kb": total - free}

    steps: list[dict[str, object]] = [
        {"args": {}, "at": 0.0, "do": "start", "line": 0, "moved_pages": 0, "step": 0,
         "nodes": {"0": node(131072, 120000, 0, "0-1"), "1": node(131072, 118000, 0, "2-3")}},
        {"args": {"first": 0, "last": 2, "pfns": 2048}, "at": 0.5, "do": "stripe",
         "line": 3, "moved_pages": 40000, "step": 1,
         "nodes": {"0": node(90000, 80000, 1500, "0-1"), "1": node(88000, 76000, 1700, "2-3"),
                   "2": node(84144, 84144, 0, "")}},
        {"args": {"seconds": 2}, "at": 2.5, "do": "advance", "line": 7, "moved_pages": 41000,
         "step": 2,
         "nodes": {"0": node(89500, 80500, 600, "0-1"), "1": node(87800, 76200, 900, "2-3"),
                   "2": node(84844, 84000, 0, "")}},
        {"args": {"seconds": 2}, "at": 4.5, "do": "advance", "line": 9, "moved_pages": 43200,
         "step": 3,
         "nodes": {"0": node(89000, 81000, 0, "0-1"), "1": node(87000, 77000, 0, "2-3"),
                   "2": node(86144, 85000, 0, "")}},
    ]
    path.write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in steps))
    return steps


def series(svg: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for pts, label in re.findall(r'<polyline points="([^"]+)"[^>]*data-series="([^"]+)"', svg):
        out[label] = [(float(x), float(y)) for x, y in (p.split(",") for p in pts.split())]
    return out


def same_order(values: list[float], ys: list[float]) -> bool:
    """Higher values are drawn higher (smaller y), equal ones level."""
    return all((a > b) == (ya < yb) and (a == b) == (abs(ya - yb) < 0.02)
               for a, ya in zip(values, ys) for b, yb in zip(values, ys))


def test_plot_draws_a_series_per_node_with_the_trace_values(run_dnumafs: Run,
                                                            tmp_path: Path) -> None:
    steps = write_trace(tmp_path / "trace.jsonl")
    r = run_dnumafs("plot", tmp_path / "trace.jsonl", "-o", tmp_path / "plot.svg")
    assert r.returncode == 0, r.stderr
    drawn = series((tmp_path / "plot.svg").read_text())
    assert sorted(drawn) == sorted([f"node {n} {k}" for n in range(3) for k in ("total", "free")]
                                   + [f"node {n}" for n in range(3)] + ["moved pages"])
    nodes = [s["nodes"] for s in steps]
    for nid in ("0", "1", "2"):
        present = [n[nid] for n in nodes if nid in n]     # type: ignore[operator,index]
        for label, key in ((f"node {nid} total", "total_kb"), (f"node {nid} free", "free_kb"),
                           (f"node {nid}", "marked_pages")):
            pts = drawn[label]
            assert len(pts) == len(present)
            assert same_order([p[key] for p in present], [y for _, y in pts]), label
    # the x axis is model time: the same scale for every series
    times = [float(s["at"]) for s in steps]                # type: ignore[arg-type]
    xs = [x for x, _ in drawn["moved pages"]]
    assert xs == sorted(xs) and len(xs) == len(times)
    scale = (xs[-1] - xs[0]) / (times[-1] - times[0])
    assert all(abs(x - xs[0] - (t - times[0]) * scale) < 0.02 for x, t in zip(xs, times))
    assert [x for x, _ in drawn["node 2"]] == xs[1:]
    assert same_order([float(s["moved_pages"]) for s in steps],  # type: ignore[arg-type]
                      [y for _, y in drawn["moved pages"]])


def test_bad_input_gets_a_clear_message(fs: Mounted, run_dnumafs: Run, tmp_path: Path
                                        ) -> None:
    def fails(*args: object, says: str) -> None:
        r = run_dnumafs(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("dnumafs:") or r.stderr.startswith("usage:"), r.stderr
        assert says in r.stderr, r.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    fails("map", empty, "-o", tmp_path / "x.svg", says="not")
    fails("map", tmp_path / "nowhere", "-o", tmp_path / "x.svg", says="nowhere")
    fails("map", fs.mnt, "-o", tmp_path / "x.jpg", says=".jpg")
    fails("map", fs.mnt, "-o", tmp_path / "x", says="without a suffix")
    fails("map", fs.mnt, "-o", tmp_path / "no" / "x.svg", says="No such file")
    for width in ("0", "-1", "8193", "100000", "-99999999999999999999"):
        fails("map", fs.mnt, "-o", tmp_path / "x.svg", "--width", width,
              says=f"argument --width: width {int(width)}: a row holds 1 to 8192 cells")
    assert not list(tmp_path.glob("x*"))

    trace = tmp_path / "trace.jsonl"
    write_trace(trace)
    fails("plot", tmp_path / "missing.jsonl", "-o", tmp_path / "p.svg", says="missing.jsonl")
    fails("plot", trace, "-o", tmp_path / "p.png", says=".png")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    fails("plot", bad, "-o", tmp_path / "p.svg", says="not")
    lines = trace.read_text().splitlines()
    bad.write_text("\n".join([lines[0], "{not json"]) + "\n")
    fails("plot", bad, "-o", tmp_path / "p.svg", says="bad.jsonl:2")
    step = json.loads(lines[1])
    del step["nodes"]["1"]["free_kb"]
    bad.write_text("\n".join([lines[0], json.dumps(step)]) + "\n")
    fails("plot", bad, "-o", tmp_path / "p.svg", says="free_kb")
    bad.write_text("")
    fails("plot", bad, "-o", tmp_path / "p.svg", says="empty")
    fails("plot", empty, "-o", tmp_path / "p.svg", says="Is a directory")
    assert not (tmp_path / "p.svg").exists() and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("change, says", [
    (lambda s: s[2].update(at=0.25), "t.jsonl:3: at = 0.25 is before the line before's (0.5)"),
    (lambda s: s[1].update(at=1e308), "t.jsonl:2: at = 1e+308 is out of range (0 to 86400)"),
    (lambda s: s[1].update(moved_pages=-1), "t.jsonl:2: moved_pages = -1 is out of range"),
    (lambda s: s[1]["nodes"]["0"].update(total_kb=-5), "t.jsonl:2: node 0 total_kb = -5 is "),
    (lambda s: s[3]["nodes"]["2"].update(free_kb=-1), "t.jsonl:4: node 2 free_kb = -1 is "),
    (lambda s: s[0].update(step=-1), "t.jsonl:1: step = -1 is out of range"),
])
def test_plot_refuses_a_nonsense_trace_by_its_line(tmp_path: Path, run_dnumafs: Run,
                                                   change: Callable[[list[dict]], None],
                                                   says: str) -> None:
    trace = tmp_path / "t.jsonl"
    steps = write_trace(trace)
    change(steps)  # type: ignore[arg-type]
    trace.write_text("".join(json.dumps(s) + "\n" for s in steps))
    r = run_dnumafs("plot", trace, "-o", tmp_path / "p.svg")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"dnumafs: {tmp_path}/{says}"), r.stderr
    assert not (tmp_path / "p.svg").exists()


def test_plot_reads_a_line_at_a_time_with_bounds(tmp_path: Path, run_dnumafs: Run) -> None:
    """A line longer than MAX_LINE_BYTES, or more lines than MAX_LINES, is refused by its
    line number without reading the rest: /dev/zero is one endless line."""
    from dnumafs.pictures import plot
    trace = tmp_path / "t.jsonl"
    write_trace(trace)
    first = trace.read_text().splitlines()[0]
    long = tmp_path / "long.jsonl"
    long.write_text(first + "\n" + " " * (plot.MAX_LINE_BYTES + 1) + first + "\n")
    many = tmp_path / "many.jsonl"
    many.write_text((first + "\n") * (plot.MAX_LINES + 1))
    for path, says in ((long, f"long.jsonl:2: a line longer than {plot.MAX_LINE_BYTES} bytes"),
                       (many, f"many.jsonl:{plot.MAX_LINES + 1}: more than {plot.MAX_LINES}"),
                       (Path("/dev/zero"), "/dev/zero:1: a line longer than")):
        r = run_dnumafs("plot", path, "-o", tmp_path / "p.svg")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert says in r.stderr, r.stderr
    assert not (tmp_path / "p.svg").exists()


def test_map_of_width_1_is_one_cell_of_all_memory(fs: Mounted, run_dnumafs: Run,
                                                  tmp_path: Path) -> None:
    """As the README says: a cell holds as few pfns (a power of two) as keep the raster no
    taller than it is wide, so one cell a row is one cell in all."""
    r = run_dnumafs("map", fs.mnt, "-o", tmp_path / "m.svg", "--width", "1")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "m.svg").read_text()
    m = re.search(r"each cell: (\d+) pfns \(\d+ KiB\), 1 a row", text)
    assert m, text[:2000]
    per = int(m.group(1))
    pfns = int(re.search(r": (\d+) pfns \(", text).group(1))  # type: ignore[union-attr]
    assert per >= pfns > per // 2 and per & (per - 1) == 0
