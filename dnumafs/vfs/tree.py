"""The file tree the FUSE adapter serves: plain data, no FUSE.

The file modules describe Linux's files as a tree of these nodes, each file a small show/store
pair over the model as in drivers/base/node.c, so that they can be built and tested without a
mount, and the adapter can serve any tree the same way.

Each directory declares its files as a table of `AttrDef`s (`RO`, `RW`, `WO`, as Linux's
DEVICE_ATTR_RO/RW/WO), and a `FileSet` binds the table to its arguments (functools.partial)
and to the lock that guards what the functions read: the lock is taken here, around every
show, store, symlink target and dynamic directory listing, and nowhere else.
"""
from __future__ import annotations

import abc
import errno
import stat
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from dnumafs.mm.changes import Device

PAGE_SIZE = 4096
# fs/libfs.c simple_attr_write() copies at most sizeof(set_buf) - 1 = 23 bytes of a write.
SIMPLE_ATTR_BUF = 23

Lock = AbstractContextManager[Any]
NO_LOCK: Lock = nullcontext()


@attrs.frozen
class FileSystem:
    """How one of the kernel's pseudo file systems treats its attribute files."""

    name: str
    # What stat reports as the size: sysfs 4096, procfs and debugfs 0.
    st_size: int
    # debugfs files give group and others nothing (0400, 0600, 0200).
    root_only: bool
    # sysfs (kernfs_fop_open) and sysctls (sysctl_perm) refuse, for root too, a read open of
    # a file without show and a write open of one without store, with EACCES. procfs and
    # debugfs let root open them and fail the read or write (no_show/no_store_errno).
    refuse_at_open: bool
    no_show_errno: int
    no_store_errno: int
    # The longest write taken as one value; a longer one is refused with too_long_errno.
    max_write: int
    # kernfs and simple_attr_write hand the store a C string: a NUL ends the value. A
    # sysctl's parser sees the whole buffer, so a NUL there is a stray character.
    cstring: bool
    too_long_errno: int = errno.EINVAL


# kernfs takes at most a page per write (the rest would come as a short write's retry).
SYSFS = FileSystem("sysfs", st_size=PAGE_SIZE, root_only=False, refuse_at_open=True,
                   no_show_errno=errno.EACCES, no_store_errno=errno.EACCES,
                   max_write=PAGE_SIZE, cstring=True)
# simple_attr_read/write return EACCES without get/set; the kernel parses the first 23 bytes.
DEBUGFS = FileSystem("debugfs", st_size=0, root_only=True, refuse_at_open=False,
                     no_show_errno=errno.EACCES, no_store_errno=errno.EACCES,
                     max_write=SIMPLE_ATTR_BUF, cstring=True)
# proc_reg_read/proc_reg_write return EIO for a file without read or write.
PROCFS = FileSystem("proc", st_size=0, root_only=False, refuse_at_open=False,
                    no_show_errno=errno.EIO, no_store_errno=errno.EIO,
                    max_write=PAGE_SIZE, cstring=False)
SYSCTL = FileSystem("sysctl", st_size=0, root_only=False, refuse_at_open=True,
                    no_show_errno=errno.EACCES, no_store_errno=errno.EACCES,
                    max_write=PAGE_SIZE, cstring=False)


# The topics of the model's changes a file's text depends on (dnumafs.mm.changes): None for
# every change (the default, so that a new file is never left stale), empty for a text that
# never changes.
Depends = frozenset[str] | None
STATIC: Depends = frozenset()


class ChangeSource(Protocol):
    """The model's change hook as the file layer sees it (dnumafs.mm.changes.ChangeHook)."""

    def subscribe(self, listener: Callable[[Depends, tuple[Device, ...]], None]) -> None: ...

    def take_announced(self) -> Depends: ...


@attrs.frozen
class Slices:
    """A binary file read in slices, as proc/kpageflags: pread(offset, size) makes only the
    bytes asked for (raising OSError(errno) for an offset or size the file refuses), size()
    is the file's length now. Such a file is never made whole: it may be hundreds of MiB."""

    pread: Callable[[int, int], bytes]
    size: Callable[[], int]


@attrs.frozen
class Attr:
    """One sysfs/debugfs/procfs attribute file.

    show() makes the whole text; store() receives each write(2) whole, as sysfs does, and
    rejects a value by raising OSError(errno), which the writer gets as the write's errno.
    Its mode follows from show and store, as DEVICE_ATTR_RO/RW/WO's do. A binary file has
    slices instead of show, and is read with read_at().
    """

    show: Callable[[], str] | None = None
    store: Callable[[bytes], None] | None = None
    fs: FileSystem = SYSFS
    lock: Lock = NO_LOCK
    # Bits a file keeps of the mode its show and store give it: a file served from elsewhere
    # (a snapshot) keeps its own readers, so a root-only file stays root-only.
    mode_mask: int = 0o777
    depends: Depends = None
    # A text that changes with the clock, not with the model (/proc/stat's idle time): the
    # kernel may keep it only from one read to the next.
    volatile: bool = False
    slices: Slices | None = None

    @property
    def mode(self) -> int:
        mode = (0o444 if self.show or self.slices else 0) | (0o200 if self.store else 0)
        return mode & self.mode_mask & (0o600 if self.fs.root_only else 0o777)

    def read_at(self, offset: int, size: int) -> bytes:
        """size bytes of a binary file from offset, made now (fewer at its end)."""
        if self.slices is None:
            raise OSError(self.fs.no_show_errno, "file is not read in slices")
        with self.lock:
            return self.slices.pread(offset, size)

    def read(self) -> bytes:
        """The whole text, made now."""
        if self.show is None:
            raise OSError(self.fs.no_show_errno, "file has no read")
        with self.lock:
            return self.show().encode()

    def write(self, data: bytes) -> None:
        """One write(2): a value no longer than the file system takes; nothing changes on
        error."""
        if self.store is None:
            raise OSError(self.fs.no_store_errno, "file has no write")
        if len(data) > self.fs.max_write:
            raise OSError(self.fs.too_long_errno, f"write longer than {self.fs.max_write} bytes")
        if self.fs.cstring:
            data = data.split(b"\0", 1)[0]
        with self.lock:
            self.store(data)


@attrs.frozen
class Symlink:
    """A symbolic link whose target is computed at readlink, e.g. `current` -> `layout.3`."""

    _target: Callable[[], str]
    lock: Lock = NO_LOCK

    def target(self) -> str:
        with self.lock:
            return self._target()


class Dir(abc.ABC):
    """A directory. Children are asked for at every readdir and lookup."""

    mode: int = 0o755

    @property
    def volatile(self) -> bool:
        """Whether its entries change with the clock (a live host's), not with the model."""
        return False

    @abc.abstractmethod
    def names(self) -> Iterable[str]:
        """The children's names, without . and .. (readdir)."""

    @abc.abstractmethod
    def lookup(self, name: str) -> Node | None:
        """One child, or None if there is no such name now."""

    def entries(self) -> Iterable[tuple[str, NodeKind]]:
        """The children's names and kinds (Attr, Symlink or Dir), for readdir's d_type."""
        for name in self.names():
            child = self.lookup(name)
            if child is not None:
                yield name, kind_of(child)


@attrs.frozen
class StaticDir(Dir):
    """A directory whose children never change; listed in the order given."""

    children: Mapping[str, Node] = attrs.field(factory=dict)
    mode: int = 0o755       # 0o700 for debugfs's root, as /sys/kernel/debug
    # On a mount's root: the hook that announces the model's changes, for the page cache.
    changes: ChangeSource | None = None

    def names(self) -> Iterable[str]:
        return list(self.children)

    def lookup(self, name: str) -> Node | None:
        return self.children.get(name)


@attrs.frozen
class DynamicDir(Dir):
    """A directory whose children are computed at every call, for the ones that come and go
    (nodeN as nodes come online, layout.N as layouts are made and destroyed)."""

    _names: Callable[[], Iterable[str]]
    _lookup: Callable[[str], Node | None]
    lock: Lock = NO_LOCK
    # Names and kinds without a lookup per child, for directories with very many of them.
    _entries: Callable[[], Iterable[tuple[str, NodeKind]]] | None = None

    def names(self) -> Iterable[str]:
        with self.lock:
            return list(self._names())

    def entries(self) -> Iterable[tuple[str, NodeKind]]:
        if self._entries is None:
            return list(super().entries())
        with self.lock:
            return list(self._entries())

    def lookup(self, name: str) -> Node | None:
        with self.lock:
            return self._lookup(name)


@attrs.frozen
class UnionDir(Dir):
    """The union of layers: names in the layers' order, each once. A name found in several
    layers is the first layer's file, or, where all are directories, their union in turn."""

    layers: tuple[Dir, ...] = attrs.field(validator=attrs.validators.min_len(1))

    @property
    def mode(self) -> int:          # type: ignore[override]
        return self.layers[0].mode

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


Node = Attr | Symlink | Dir
NodeKind = type[Attr] | type[Symlink] | type[Dir]


def kind_of(node: Node) -> NodeKind:
    return Dir if isinstance(node, Dir) else type(node)


@attrs.frozen
class AttrDef:
    """One row of a directory's attribute table: unbound show and store functions, which a
    FileSet binds to the directory's object (show(*args) -> str, store(*args, buf))."""

    show: Callable[..., str] | None = None
    store: Callable[..., None] | None = None
    depends: Depends = None
    volatile: bool = False


def RO(show: Callable[..., str], *, depends: Depends = None,  # noqa: N802 (the kernel's names)
       volatile: bool = False) -> AttrDef:
    return AttrDef(show=show, depends=depends, volatile=volatile)


def RW(show: Callable[..., str], store: Callable[..., None], *,  # noqa: N802
       depends: Depends = None, volatile: bool = False) -> AttrDef:
    return AttrDef(show=show, store=store, depends=depends, volatile=volatile)


def WO(store: Callable[..., None]) -> AttrDef:     # noqa: N802
    return AttrDef(store=store, depends=STATIC)


@attrs.frozen
class FileSet:
    """The files of one file system over one object: binds attribute tables, symlinks and
    dynamic directories to their arguments and to the object's lock."""

    fs: FileSystem
    lock: Lock = NO_LOCK

    def attr(self, d: AttrDef, *args: Any) -> Attr:
        return Attr(show=partial(d.show, *args) if d.show else None,
                    store=partial(d.store, *args) if d.store else None,
                    fs=self.fs, lock=self.lock, depends=d.depends, volatile=d.volatile)

    def attrs(self, table: Mapping[str, AttrDef], *args: Any) -> dict[str, Node]:
        """A directory's attribute table, each function bound to args."""
        return {name: self.attr(d, *args) for name, d in table.items()}

    def symlink(self, target: Callable[..., str], *args: Any) -> Symlink:
        return Symlink(partial(target, *args), lock=self.lock)

    def dynamic_dir(self, names: Callable[[], Iterable[str]],
                    lookup: Callable[[str], Node | None],
                    entries: Callable[[], Iterable[tuple[str, NodeKind]]] | None = None
                    ) -> DynamicDir:
        return DynamicDir(names, lookup, lock=self.lock, entries=entries)


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


# A directory listing as one bytes object, one entry a line: its kind's letter, then its name.
# A listing is held, like a file's text, while readdir serves it in pieces; each entry's
# readdir offset is where the next line starts, so a listing of any length is served in
# requests of a page each, and other requests go on between them.
KIND_LETTERS: dict[NodeKind, str] = {Dir: "d", Symlink: "l", Attr: "f"}
LETTER_MODES = {ord("d"): stat.S_IFDIR, ord("l"): stat.S_IFLNK, ord("f"): stat.S_IFREG}


def listing(node: Dir) -> bytes:
    entries = [(".", Dir), ("..", Dir), *node.entries()]
    return "".join([f"{KIND_LETTERS[kind]}{name}\n" for name, kind in entries]
                   ).encode("utf-8", "surrogateescape")
