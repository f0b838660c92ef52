"""MNT/sys/bus/node/devices/ and MNT/sys/bus/cpu/devices/: one link per device into
devices/system, as the driver core makes for every device on a bus (bus_add_device())."""
from __future__ import annotations

from functools import partial

from dnumafs.mm import Machine
from dnumafs.vfs.tree import Dir, DynamicDir, Node, StaticDir, Symlink

from .format import parse_indexed_name


def device_link(kind: str, index: int) -> Symlink:
    return Symlink(partial(str, f"../../../devices/system/{kind}/{kind}{index}"))


def node_device_names(m: Machine) -> list[str]:
    with m.lock:
        return [f"node{nid}" for nid in m.online_nodes()]


def node_device_lookup(m: Machine, name: str) -> Node | None:
    """nodeN, while node N is online (its device exists from then on, as nodeN/ does)."""
    nid = parse_indexed_name(name, "node")
    if nid is None:
        return None
    with m.lock:
        online = nid in m.online_nodes()
    return device_link("node", nid) if online else None


def bus_dir(m: Machine) -> Dir:
    """sys/bus/: the node and cpu buses' devices."""
    cpus: dict[str, Node] = {f"cpu{cpu}": device_link("cpu", cpu) for cpu in range(m.nr_cpus)}
    return StaticDir({
        "node": StaticDir({"devices": DynamicDir(names=partial(node_device_names, m),
                                                 lookup=partial(node_device_lookup, m))}),
        "cpu": StaticDir({"devices": StaticDir(cpus)}),
    })
