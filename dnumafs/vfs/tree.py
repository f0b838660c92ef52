"""The file tree the FUSE adapter serves: plain data, no FUSE.

The file modules describe Linux's files as a tree of these nodes, each file a small show/store
pair over the model as in drivers/base/node.c, so that they can be built and tested without a
mount, and the adapter can serve any tree the same way.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping

import attrs


@attrs.define
class Attr:
    """One sysfs/debugfs/procfs attribute file.

    show() makes the whole text at open, so one open file reads one consistent snapshot.
    store() receives each write(2) whole, as sysfs does; it rejects a value by raising
    OSError(errno), which the writer gets as the write's errno. A file without show cannot be
    opened for reading, one without store cannot be opened for writing, even by root.
    """

    show: Callable[[], str] | None = None
    store: Callable[[bytes], None] | None = None
    mode: int = 0o444


@attrs.define
class Symlink:
    """A symbolic link whose target is computed at readlink, e.g. `current` -> `layout.3`."""

    target: Callable[[], str]


class Dir(abc.ABC):
    """A directory (mode 0755). Children are asked for at every readdir and lookup."""

    @abc.abstractmethod
    def names(self) -> Iterable[str]:
        """The children's names, without . and .. (readdir)."""

    @abc.abstractmethod
    def lookup(self, name: str) -> Node | None:
        """One child, or None if there is no such name now."""


@attrs.define
class StaticDir(Dir):
    """A directory whose children never change; listed in the order given."""

    children: Mapping[str, Node] = attrs.field(factory=dict)

    def names(self) -> Iterable[str]:
        return list(self.children)

    def lookup(self, name: str) -> Node | None:
        return self.children.get(name)


@attrs.define
class DynamicDir(Dir):
    """A directory whose children are computed at every call, for the ones that come and go
    (nodeN as nodes come online, layout.N as layouts are made and destroyed)."""

    _names: Callable[[], Iterable[str]]
    _lookup: Callable[[str], Node | None]

    def names(self) -> Iterable[str]:
        return self._names()

    def lookup(self, name: str) -> Node | None:
        return self._lookup(name)


Node = Attr | Symlink | Dir


def resolve(root: Dir, path: str) -> Node | None:
    """The node at an absolute path such as "/sys/devices/system/node/node0/meminfo", or None.

    Symlinks are not followed: the kernel resolves them itself with readlink.
    """
    node: Node | None = root
    for name in path.split("/"):
        if not name:
            continue
        if not isinstance(node, Dir):
            return None
        node = node.lookup(name)
        if node is None:
            return None
    return node
