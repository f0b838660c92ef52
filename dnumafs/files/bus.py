"""MNT/sys/bus/node/devices/ and MNT/sys/bus/cpu/devices/: one link per device into
devices/system, as the driver core makes for every device on a bus (bus_add_device())."""
from __future__ import annotations

from functools import partial

from dnumafs.mm import Machine
from dnumafs.vfs.tree import SYSFS, Dir, FileSet, Node, StaticDir, Symlink

from .format import parse_indexed_name


def device_link_target(kind: str, index: int) -> str:
    return f"../../../devices/system/{kind}/{kind}{index}"


def device_link(kind: str, index: int) -> Symlink:
    return Symlink(partial(device_link_target, kind, index))


def node_device_names(m: Machine) -> list[str]:
    return [f"node{nid}" for nid in m.online_nodes()]


def node_device_lookup(m: Machine, name: str) -> Node | None:
    """nodeN, while node N is online (its device exists from then on, as nodeN/ does)."""
    nid = parse_indexed_name(name, "node")
    if nid is None:
        return None
    return device_link("node", nid) if nid in m.online_nodes() else None


def bus_dir(m: Machine) -> Dir:
    """sys/bus/: the node and cpu buses' devices."""
    cpus: dict[str, Node] = {f"cpu{cpu}": device_link("cpu", cpu) for cpu in m.present_cpus()}
    return StaticDir({
        "node": StaticDir({"devices": FileSet(SYSFS, m.lock).dynamic_dir(
            partial(node_device_names, m), partial(node_device_lookup, m))}),
        "cpu": StaticDir({"devices": StaticDir(cpus)}),
    })
