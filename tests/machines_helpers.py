"""The shared snapshots for the machine tests, and trees over a snapshot to serve with
`dnumafs mount --tree machines_helpers:TREE`.

The snapshot's directory comes in DNUMAFS_TEST_SNAPSHOT (the command line hands a tree
function only the machine options). No model here:

- passthrough_root: the snapshot alone, through dnumafs/files/snapshot.py;
- unowned_root: the overlay over an empty model, i.e. only what the snapshot may serve once
  the model is booted from it (what lstopo then misses is the model's part);
- described_root: the overlay over a stand-in of the model's part made only of the
  MachineDescription's figures (static files, no allocator), so that lstopo shows whether the
  description holds all the model must serve.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from dnumafs.files.snapshot import overlay, snapshot_root
from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.machines import MachineDescription, Snapshot, describe, open_snapshot
from dnumafs.vfs.tree import Attr, Dir, Node, StaticDir, Symlink

SNAPSHOT_ENV = "DNUMAFS_TEST_SNAPSHOT"
MACHINES_DIR = Path(os.environ.get("DNUMAFS_MACHINES", "/work/shared/machines"))
ARCHIVES = sorted(MACHINES_DIR.glob("*.tar*"))
NAMES = [a.name for a in ARCHIVES]


@contextmanager
def shared_snapshots() -> Iterator[dict[str, Snapshot]]:
    """Every shared snapshot, by archive name, extracted until the end of the block."""
    opened: dict[str, Snapshot] = {}
    try:
        for archive in ARCHIVES:
            opened[archive.name] = open_snapshot(archive)
        yield opened
    finally:
        for snap in opened.values():
            snap.close()


def _snapshot_dir() -> str:
    return os.environ[SNAPSHOT_ENV]


def passthrough_root(**cfg: object) -> Dir:
    return snapshot_root(_snapshot_dir())


def unowned_root(**cfg: object) -> Dir:
    return overlay(StaticDir({}), _snapshot_dir())


def _text(value: str) -> Attr:
    return Attr(show=partial(str, value))


def _ids(ids: tuple[int, ...]) -> Attr:
    return _text(bitmap_list(ids) + "\n")


def description_tree(d: MachineDescription) -> Dir:
    """The files the model owns, as a freshly booted model would show them: from d alone."""
    nr_cpus = d.possible_cpus[-1] + 1

    def node_dir(nid: int) -> Dir:
        n = d.node(nid)
        hp_total = sum(nr for size, nr in n.hugepages if size == 2048)
        meminfo = "".join(f"Node {nid} {key + ':':<16}{value:8d} kB\n" for key, value in
                          (("MemTotal", n.memory_kb), ("MemFree", n.memory_kb),
                           ("MemUsed", 0)))
        meminfo += "".join(f"Node {nid} HugePages_{key}: {hp_total:5d}\n"
                           for key in ("Total", "Free")) + f"Node {nid} HugePages_Surp: 0\n"
        children: dict[str, Node] = {
            "meminfo": _text(meminfo),
            "cpumap": _text(bitmap_mask(n.cpus, nr_cpus) + "\n"),
            "cpulist": _ids(n.cpus),
            "hugepages": StaticDir({
                f"hugepages-{size}kB": StaticDir({
                    "nr_hugepages": _text(f"{nr}\n"), "free_hugepages": _text(f"{nr}\n"),
                    "surplus_hugepages": _text("0\n")})
                for size, nr in n.hugepages}),
        }
        if n.distances is not None:
            children["distance"] = _text(" ".join(map(str, n.distances)) + "\n")
        for cpu in n.cpus:
            children[f"cpu{cpu}"] = Symlink(partial(str, f"../../cpu/cpu{cpu}"))
        return StaticDir(children)

    with_memory = tuple(n.nid for n in d.nodes if n.memory_kb)
    with_cpus = tuple(n.nid for n in d.nodes if n.cpus)
    node: dict[str, Node] = {
        "possible": _ids(d.possible_nodes), "online": _ids(d.online_nodes),
        "has_memory": _ids(with_memory), "has_normal_memory": _ids(with_memory),
        "has_cpu": _ids(with_cpus),
        **{f"node{nid}": node_dir(nid) for nid in d.online_nodes}}
    cpu = {"possible": _ids(d.possible_cpus), "present": _ids(d.present_cpus),
           "online": _ids(d.online_cpus), "offline": _ids(d.offline_cpus)}
    sizes = sorted({size for n in d.nodes for size, _ in n.hugepages})
    global_pools = StaticDir({
        f"hugepages-{size}kB": StaticDir({"nr_hugepages": _text(
            f"{sum(nr for n in d.nodes for s, nr in n.hugepages if s == size)}\n")})
        for size in sizes})
    meminfo = f"MemTotal:       {d.memory_kb:8d} kB\nMemFree:        {d.memory_kb:8d} kB\n"
    return StaticDir({
        "sys": StaticDir({
            "devices": StaticDir({"system": StaticDir({
                "node": StaticDir(node),
                "cpu": StaticDir({k: v for k, v in cpu.items()})})}),
            "kernel": StaticDir({"mm": StaticDir({"hugepages": global_pools})}),
        }),
        "proc": StaticDir({"meminfo": _text(meminfo)}),
    })


def described_root(**cfg: object) -> Dir:
    with open_snapshot(_snapshot_dir()) as snap:
        desc = describe(snap)
    return overlay(description_tree(desc), _snapshot_dir())
