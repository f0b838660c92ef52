"""Make the README's pictures on a real mount: docs/map.svg and docs/plot.svg.

    .venv/bin/python docs/make_pictures.py

Mounts an 8 GiB, 4-node machine, takes it through a few steps with the command line and the
files (a stripe over nodes 0-3, a memory block offlined, hugepages, drop_caches, a move of all
memory to node 1), writes a trace of the figures after each step in the format of
`dnumafs play --trace` (the nodes' meminfo, their pages marked for transplant counted from
proc/kpageflags and page_nid as the map counts them, memlayout's moved-pages; `at` is the
step's place in this script's schedule, a second apart), then draws the map after the stripe
and the plot of the trace.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from dnumafs.client import MountedTree
from dnumafs.pictures import map as page_map

DOCS = Path(__file__).resolve().parent
MEMORY = "sys/devices/system/memory"


def dnumafs(*args: object, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "dnumafs", *map(str, args)], check=True, cwd=cwd)


def figures(mnt: Path, step: int, do: str, args: dict[str, object]) -> dict[str, object]:
    tree = MountedTree(mnt)
    pm = page_map.read_map(mnt)
    counts = pm.counts(pm.keys(pm.states()))
    nodes = {}
    for nid in tree.node_ids():
        info = tree.node_meminfo(nid)
        nodes[str(nid)] = {"cpus": tree.read(f"sys/devices/system/node/node{nid}/cpulist"
                                             ).strip(),
                           "free_kb": info["MemFree"], "marked_pages":
                           counts.get((nid, page_map.State.MARKED), 0),
                           "total_kb": info["MemTotal"], "used_kb": info["MemUsed"]}
    return {"args": args, "at": float(step), "do": do, "line": 0, "moved_pages":
            tree.moved_pages(), "nodes": nodes, "step": step}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dnumafs-docs-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        dnumafs("mount", mnt, "--nodes", "2", "--mem", "8G", "--possible-nodes", "4")
        try:
            trace = [figures(mnt, 0, "start", {})]

            def step(do: str, args: dict[str, object]) -> None:
                trace.append(figures(mnt, len(trace), do, args))

            dnumafs("stripe", mnt, 0, 3, 32768)
            step("stripe", {"first": 0, "last": 3, "pfns": 32768})
            (mnt / MEMORY / "memory40" / "state").write_text("offline")
            step("offline", {"block": 40})
            (mnt / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
             ).write_text("64")
            step("hugepages", {"node": 1, "count": 64})
            dnumafs("map", "mnt", "-o", DOCS / "map.svg", cwd=Path(tmp))
            for mode in (1, 2):
                (mnt / "proc/sys/vm/drop_caches").write_text(str(mode))
                step("drop_caches", {"value": mode})
            dnumafs("all-to", mnt, 1)
            step("all-to", {"node": 1})
            (mnt / "proc/sys/vm/drop_caches").write_text("3")
            step("drop_caches", {"value": 3})
        finally:
            dnumafs("umount", mnt)
        path = Path(tmp) / "example-trace.jsonl"
        path.write_text("".join(json.dumps(t, sort_keys=True) + "\n" for t in trace))
        dnumafs("plot", path, "-o", DOCS / "plot.svg")


if __name__ == "__main__":
    main()
