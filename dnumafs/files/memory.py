"""MNT/sys/devices/system/memory, the memory bus's devices, and nodeN/memoryM links
(drivers/base/memory.c): one memoryN/ per memory block, each a table of small show/store
functions over the model's blocks (dnumafs.mm.memory_hotplug)."""
from __future__ import annotations

import errno
from collections.abc import Iterable
from functools import partial

from attrs import evolve

from dnumafs.lib.kstrtox import kstrtobool, kstrtoull
from dnumafs.mm import Machine
from dnumafs.mm import memory_hotplug as mh
from dnumafs.mm.changes import NODES, PLACES, memory_block_topic
from dnumafs.mm.memory_hotplug import HotplugError, OnlineType
from dnumafs.vfs.tree import (
    RO,
    RW,
    STATIC,
    SYSFS,
    WO,
    Attr,
    Dir,
    FileSet,
    Node,
    NodeKind,
    StaticDir,
    Symlink,
)

from .format import parse_indexed_name


def online_type_from_str(buf: bytes) -> OnlineType:
    """mhp_online_type_from_str(): one of Linux's words, with sysfs_streq()'s trailing
    newline allowed."""
    word = buf[:-1] if buf.endswith(b"\n") else buf
    try:
        return OnlineType(word.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise OSError(errno.EINVAL, f"{buf!r} is not offline, online, online_kernel or "
                      "online_movable") from None


def _set_state(m: Machine, bid: int, how: OnlineType) -> bool:
    try:
        return m.memory_block_set_state(bid, how)
    except HotplugError as e:
        raise OSError(e.errno, str(e)) from e


# --- memoryN/ --------------------------------------------------------------------------------

def state_show(m: Machine, bid: int) -> str:
    return "online\n" if m.blocks.online[bid] else "offline\n"


def state_store(m: Machine, bid: int, buf: bytes) -> None:
    """state_store(): a block already in the state asked for is EINVAL."""
    if not _set_state(m, bid, online_type_from_str(buf)):
        raise OSError(errno.EINVAL, f"memory{bid} is already {state_show(m, bid).strip()}")


def online_show(m: Machine, bid: int) -> str:
    return f"{m.blocks.online[bid]}\n"


def online_store(m: Machine, bid: int, buf: bytes) -> None:
    """online_store() (drivers/base/core.c): a block already so is success; online is the
    default zone's online."""
    _set_state(m, bid, OnlineType.ONLINE if kstrtobool(buf) else OnlineType.OFFLINE)


def phys_index_show(m: Machine, bid: int) -> str:
    return f"{bid:08x}\n"


def phys_device_show(m: Machine, bid: int) -> str:
    return "0\n"        # arch_get_memory_phys_device() is 0 on x86


def removable_show(m: Machine, bid: int) -> str:
    return "1\n"        # always 1 since Linux 5.12


def valid_zones_show(m: Machine, bid: int) -> str:
    return " ".join(mh.valid_zones(m, bid)) + "\n"


# A block's state changes with its own onlining and offlining (its topic, memory_block_topic)
# and with the nodes (a commit announces anything); its zones with the zones' spans (NODES)
# and with where its pages lie. Read by lsmem for every block, these are many: none is made
# again for an allocation or a free, nor for another block's onlining.
BLOCK_ATTRS = {
    "state": RW(state_show, state_store, depends=frozenset({NODES})),
    "online": RW(online_show, online_store, depends=frozenset({NODES})),
    "phys_index": RO(phys_index_show, depends=STATIC),
    "phys_device": RO(phys_device_show, depends=STATIC),
    "removable": RO(removable_show, depends=STATIC),
    "valid_zones": RO(valid_zones_show, depends=frozenset({NODES, PLACES})),
}
BLOCK_STATE = ("state", "online", "valid_zones")


def node_link_target(nid: int) -> str:
    return f"../../node/node{nid}"


def block_entries(m: Machine, attrs: dict[str, Node], bid: int) -> list[tuple[str, NodeKind]]:
    names: list[tuple[str, NodeKind]] = [(name, type(node)) for name, node in attrs.items()]
    return names + [(f"node{nid}", Symlink) for nid in mh.block_nodes(m, bid)]


def block_lookup(m: Machine, attrs: dict[str, Node], bid: int, name: str) -> Node | None:
    """A fixed file, or nodeM while the block has pages on node M."""
    if name in attrs:
        return attrs[name]
    nid = parse_indexed_name(name, "node")
    if nid is None or nid not in mh.block_nodes(m, bid):
        return None
    return Symlink(partial(node_link_target, nid))


def block_dir(m: Machine, bid: int) -> Dir:
    files = FileSet(SYSFS, m.lock)
    attrs = files.attrs(BLOCK_ATTRS, m, bid)
    own = memory_block_topic(bid)   # its state, which onlining and offlining it announce
    for name in BLOCK_STATE:
        attr = attrs[name]
        assert isinstance(attr, Attr) and attr.depends is not None
        attrs[name] = evolve(attr, depends=attr.depends | {own})
    attrs["subsystem"] = Symlink(partial(str, "../../../../bus/memory"))
    return files.dynamic_dir(lambda: [name for name, _ in block_entries(m, attrs, bid)],
                             partial(block_lookup, m, attrs, bid),
                             partial(block_entries, m, attrs, bid))


# --- memory/ ---------------------------------------------------------------------------------

def block_size_bytes_show(m: Machine) -> str:
    return f"{m.blocks.block_size_bytes:x}\n"


def auto_online_blocks_show(m: Machine) -> str:
    return f"{m.blocks.auto_online.value}\n"


def auto_online_blocks_store(m: Machine, buf: bytes) -> None:
    m.blocks.auto_online = online_type_from_str(buf)


def probe_store(m: Machine, buf: bytes) -> None:
    """probe (x86's CONFIG_ARCH_MEMORY_PROBE): the physical address of a block to add."""
    try:
        m.memory_probe(kstrtoull(buf, 0))
    except HotplugError as e:
        raise OSError(e.errno, str(e)) from e


MEMORY_ATTRS = {
    "block_size_bytes": RO(block_size_bytes_show),
    "auto_online_blocks": RW(auto_online_blocks_show, auto_online_blocks_store),
    "probe": WO(probe_store),
}


def block_id(m: Machine, name: str) -> int | None:
    bid = parse_indexed_name(name, "memory")
    return bid if bid is not None and bid < m.blocks.count else None


def block_names(m: Machine) -> Iterable[str]:
    return (f"memory{bid}" for bid in range(m.blocks.count))


def memory_root(m: Machine) -> Dir:
    """sys/devices/system/memory/: the fixed files and memoryN/ for every block."""
    files = FileSet(SYSFS, m.lock)
    attrs = files.attrs(MEMORY_ATTRS, m)
    made: dict[int, Dir] = {}

    def lookup(name: str) -> Node | None:
        if name in attrs:
            return attrs[name]
        bid = block_id(m, name)
        if bid is None:
            return None
        d = made.get(bid)
        if d is None:
            d = made[bid] = block_dir(m, bid)
        return d

    def entries() -> list[tuple[str, NodeKind]]:
        return [*((name, Dir) for name in block_names(m)),
                *((name, type(node)) for name, node in attrs.items())]

    return files.dynamic_dir(lambda: [name for name, _ in entries()], lookup, entries)


# --- the memory bus and the node links -------------------------------------------------------

def bus_link_target(name: str) -> str:
    return f"../../../devices/system/memory/{name}"


def memory_bus_dir(m: Machine) -> Dir:
    """sys/bus/memory/devices/: one link per block, as bus_add_device() makes."""
    def lookup(name: str) -> Node | None:
        return Symlink(partial(bus_link_target, name)) if block_id(m, name) is not None else None

    devices = FileSet(SYSFS, m.lock).dynamic_dir(
        lambda: list(block_names(m)), lookup,
        lambda: [(name, Symlink) for name in block_names(m)])
    return StaticDir({"memory": StaticDir({"devices": devices})})


def memory_link_target(bid: int) -> str:
    return f"../../memory/memory{bid}"


def node_memory_links(m: Machine, nid: int) -> Dir:
    """nodeN/memoryM for each block with pages on node N (register_memory_block_under_node()
    for every node a block's pages are in)."""
    def names() -> list[str]:
        return [f"memory{bid}" for bid in mh.node_blocks(m, nid)]

    def lookup(name: str) -> Node | None:
        bid = block_id(m, name)
        if bid is None or nid not in mh.block_nodes(m, bid):
            return None
        return Symlink(partial(memory_link_target, bid))

    return FileSet(SYSFS, m.lock).dynamic_dir(names, lookup,
                                              lambda: [(n, Symlink) for n in names()])
