"""The model's change hook: every change to the model is announced here, after it is made.

Whoever shows the model (the files' page cache, events) subscribes. A change names the kinds
of state it touched (TOPICS), or None for "anything may have changed": a subscriber must treat
None as every topic, so a change that forgets to be precise is only slower, never missed.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

import attrs

# What a change may touch. Files that declare the topics they depend on are looked at again
# only when one of them changes; a file that declares nothing depends on every topic.
PAGES = "pages"          # pages allocated, freed, moved between lists or pools; their counts
LAYOUTS = "layouts"      # the pending, current and kept layouts, their ranges and statistics
NODES = "nodes"          # which nodes are online, their zones, zonelists, CPUs and distances
# The node of some pages (a transplant on free), always with PAGES: what shows where pages
# lie (a memory block's zones) need not be looked at again for every allocation and free.
PLACES = "places"
MODEL_TOPICS = frozenset({PAGES, LAYOUTS, NODES, PLACES})
# What the node and proc files show: pages and nodes, not the layouts staged or kept (a
# commit, which changes pages, announces anything).
MACHINE = frozenset({PAGES, NODES})
# The memlayout interface's staged bounds, which only its `start` and `end` files show: a file
# that declares no topics depends on every model topic, but not on this one.
STAGED = "staged"
# The workload's tasks and counts, which only its control file shows, made at each read: a
# command announces this, so that its write is not taken for a change of everything.
WORKLOAD = "workload"
TOPICS = MODEL_TOPICS | {STAGED, WORKLOAD}
# One memory block's state, which only that block's files show: onlining or offlining a block
# announces it with PAGES, so that the other blocks' files (lsmem reads 3 a block) are not
# made again; a change of the zones' spans that comes with it announces NODES as well.
MEMORY_BLOCK = "memory"


def memory_block_topic(bid: int) -> str:
    return f"{MEMORY_BLOCK}{bid}"


def is_topic(topic: str) -> bool:
    return topic in TOPICS or (topic.startswith(MEMORY_BLOCK)
                               and topic[len(MEMORY_BLOCK):].isdecimal())

Topics = frozenset[str] | None       # None: anything may have changed
# A device a change touched: (action, devpath, properties), e.g.
# ("change", "/devices/system/cpu/cpu3", {"CPU": "3", "NODE": "2"}).
Device = tuple[str, str, Mapping[str, str]]
Listener = Callable[[Topics, tuple[Device, ...]], None]


def node_device(action: str, nid: int) -> Device:
    return action, f"/devices/system/node/node{nid}", {"NODE": str(nid)}


def memory_block_device(action: str, bid: int) -> Device:
    # PHYS_INDEX as the block's phys_index file shows it
    return action, f"/devices/system/memory/memory{bid}", {"PHYS_INDEX": f"{bid:08x}"}


@attrs.define(eq=False)
class ChangeHook:
    """Announces the model's changes to its listeners, in the changing thread (with the
    machine's lock held, so a listener only records what changed and acts later)."""

    generation: int = 0
    _listeners: list[Listener] = attrs.field(factory=list)
    _local: threading.local = attrs.field(factory=threading.local)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def changed(self, topics: Iterable[str] | None = None, *,
                devices: Iterable[Device] = ()) -> None:
        """Announce a change that touched topics (None: anything) and devices, named as
        uevents name them, in the order their events are to be sent."""
        self.generation += 1
        if not self._listeners:         # the model alone (a bench, a test): nothing to tell
            return
        what = None if topics is None else frozenset(topics)
        if what is not None and not all(is_topic(t) for t in what):
            raise ValueError(f"unknown topics {sorted(t for t in what if not is_topic(t))}")
        self._local.announced = union(getattr(self._local, "announced", frozenset()), what)
        devs = tuple(devices)
        for listener in self._listeners:
            listener(what, devs)

    def take_announced(self) -> Topics:
        """What this thread announced since it last asked (empty: nothing), so that a
        caller that ran some code can tell whether, and how, it changed the model."""
        what: Topics = getattr(self._local, "announced", frozenset())
        self._local.announced = frozenset()
        return what


def union(a: Topics, b: Topics) -> Topics:
    """Two changes' topics together (None absorbs everything)."""
    return None if a is None or b is None else a | b
