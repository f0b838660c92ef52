"""Directories made of several modules' directories, so that a module can add files to a
directory another module builds (proc/cpuinfo beside proc/meminfo, cpuK/cache/ beside
cpuK/topology/) without either knowing of the other."""
from __future__ import annotations

from collections.abc import Iterable

import attrs

from dnumafs.vfs.tree import Dir, Node


@attrs.define
class UnionDir(Dir):
    """The union of layers: names in the layers' order, each once. A name found in several
    layers is the first layer's file, or, where all are directories, their union in turn."""

    layers: tuple[Dir, ...] = attrs.field(validator=attrs.validators.min_len(1))

    def names(self) -> Iterable[str]:
        return list(dict.fromkeys(name for layer in self.layers for name in layer.names()))

    def lookup(self, name: str) -> Node | None:
        found = [node for layer in self.layers if (node := layer.lookup(name)) is not None]
        if not found:
            return None
        dirs = [node for node in found if isinstance(node, Dir)]
        if len(dirs) == len(found) > 1:
            return UnionDir(tuple(dirs))
        return found[0]


def union(*layers: Dir) -> Dir:
    return UnionDir(layers)
