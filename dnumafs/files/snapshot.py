"""A snapshot's files, served as they were, read-only, and laid under the model's own.

snapshot_root(DIR) serves DIR/sys and DIR/proc as a tree: directories as directories,
symbolic links as the same links (the reader's kernel resolves them inside the mount, as in
the snapshot), regular files as read-only attributes whose text is read from DIR at each open.
Nothing else of DIR (no device, no fifo, no other top directory) is served.

overlay(model, snapshot) is the mount's root for a machine booted from a snapshot: the union
of both trees, where the model's files win and the snapshot fills in what the model has no say
in (CPU topology and caches, /proc/cpuinfo, DMI, memory tiers, nodeN/access*, memory side
caches). Where the model owns a file or directory (MODEL_FILES), the snapshot's is never
served, even when the model has none: a figure the model changes must not be served stale.
Directories the model makes and removes (MODEL_DIRS, the nodeN of online nodes) are shown
only when the model has them, with the snapshot's other files merged in.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path

import attrs

from dnumafs.vfs.tree import STATIC, Attr, Dir, Node, StaticDir, Symlink

TOP_DIRECTORIES = ("sys", "proc")
LIVE_PROC = ("cpuinfo",)
# The largest file served: /proc/cpuinfo of 8192 CPUs is about 12 MiB.
MAX_FILE_BYTES = 64 << 20

# Paths (from the mount's root, one pattern per component) that only the model serves.
MODEL_FILES = tuple(tuple(p.split("/")) for p in (
    "sys/devices/system/node/possible",
    "sys/devices/system/node/online",
    "sys/devices/system/node/has_cpu",
    "sys/devices/system/node/has_memory",
    "sys/devices/system/node/has_normal_memory",
    "sys/devices/system/node/has_high_memory",
    "sys/devices/system/node/node[0-9]*/meminfo",
    "sys/devices/system/node/node[0-9]*/numastat",
    "sys/devices/system/node/node[0-9]*/vmstat",
    "sys/devices/system/node/node[0-9]*/distance",
    "sys/devices/system/node/node[0-9]*/cpumap",
    "sys/devices/system/node/node[0-9]*/cpulist",
    "sys/devices/system/node/node[0-9]*/hugepages",
    "sys/devices/system/node/node[0-9]*/memory[0-9]*",
    "sys/devices/system/node/node[0-9]*/cpu[0-9]*",
    "sys/devices/system/memory",
    "sys/devices/system/cpu/online",
    "sys/devices/system/cpu/offline",
    "sys/devices/system/cpu/possible",
    "sys/devices/system/cpu/present",
    "sys/kernel/mm/hugepages",
    "sys/kernel/debug",
    "sys/module/memlayout",
    "proc/meminfo",
    "proc/zoneinfo",
    "proc/buddyinfo",
    "proc/pagetypeinfo",
    "proc/vmstat",
    "proc/sys/vm",
))
MODEL_DIRS = tuple(tuple(p.split("/")) for p in (
    "sys/devices/system/node/node[0-9]*",
))


def _matches(path: tuple[str, ...], patterns: Iterable[tuple[str, ...]]) -> bool:
    return any(len(p) == len(path) and all(map(fnmatchcase, path, p)) for p in patterns)


def model_owns(path: tuple[str, ...]) -> bool:
    """Whether only the model may serve this path (components from the mount's root)."""
    return _matches(path, MODEL_FILES) or _matches(path, MODEL_DIRS)


# --- the snapshot as it was ----------------------------------------------------------------

def read_file(path: Path) -> str:
    """A snapshot file's text, read at open without following a link. sysfs and procfs
    files are text; one that is not (a PCI config space) cannot be served as an attribute.

    Served from the live host (`--machine /`), a file may never end (/proc/kcore) or wait for
    data (/proc/kmsg): one over MAX_FILE_BYTES is refused, and nothing waits (O_NONBLOCK),
    since the daemon serves one request at a time.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, f"{path}: over {MAX_FILE_BYTES} bytes")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise OSError(errno.EIO, f"{path}: not text") from None


def snapshot_node(path: Path, live: bool = False) -> Node | None:
    """The node for one entry of the snapshot, or None for what is not served. A snapshot's
    files never change; the live host's (`/`) may, and are read again when asked."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return SnapshotDir(path, live=live)
    if stat.S_ISLNK(st.st_mode):
        return Symlink(partial(os.readlink, path))
    if stat.S_ISREG(st.st_mode):
        # Read-only, with the snapshot's read bits (a root-only file stays so).
        return Attr(show=partial(read_file, path), mode_mask=st.st_mode & 0o444,
                    depends=STATIC, volatile=live)
    return None


@attrs.define
class SnapshotDir(Dir):
    """A directory of the snapshot, listed and looked up in it at every call."""

    path: Path
    only: tuple[str, ...] | None = None     # the names served, if not all
    live: bool = False                      # the running host's files, not a snapshot's

    @property
    def volatile(self) -> bool:
        return self.live

    def names(self) -> list[str]:
        """The entries lookup serves: directories, links and regular files."""
        try:
            with os.scandir(self.path) as entries:
                found = sorted(e.name for e in entries
                               if e.is_symlink() or e.is_dir(follow_symlinks=False)
                               or e.is_file(follow_symlinks=False))
        except OSError:
            return []
        return [n for n in found if self.only is None or n in self.only]

    def lookup(self, name: str) -> Node | None:
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            return None
        if self.only is not None and name not in self.only:
            return None
        return snapshot_node(self.path / name, self.live)


def snapshot_root(root: str | os.PathLike[str]) -> Dir:
    """The snapshot at root (holding sys/ and proc/) as a tree, read-only. Of the live
    host's /proc (root `/`) only what hwloc-gather-topology would keep of it and the model
    does not make is served (LIVE_PROC): not the host's processes, nor its sysctl tree."""
    path = Path(root)
    if path.resolve() == Path("/"):
        return StaticDir({"sys": SnapshotDir(path / "sys", live=True),
                          "proc": SnapshotDir(path / "proc", only=LIVE_PROC, live=True)})
    return SnapshotDir(path, only=TOP_DIRECTORIES)


# --- the overlay -----------------------------------------------------------------------------

@attrs.define
class OverlayDir(Dir):
    """One directory of the union: the model's entries, then the snapshot's others that the
    model does not own. The model is asked at every call, so its directories that come and go
    (nodeN) do so here too; what the snapshot has for a name never changes, and is kept."""

    model: Dir | None
    snapshot: Dir | None
    path: tuple[str, ...] = ()
    # name -> (the snapshot's node or None, whether only the model may make it appear);
    # only for names one side has, so lookups of names found nowhere keep nothing.
    _theirs: dict[str, tuple[Node | None, bool]] = attrs.field(factory=dict, init=False)
    _merged: dict[str, OverlayDir] = attrs.field(factory=dict, init=False)

    @property
    def volatile(self) -> bool:
        return self.snapshot is not None and self.snapshot.volatile

    def names(self) -> list[str]:
        names = list(self.model.names()) if self.model is not None else []
        if self.snapshot is not None:
            have = set(names)
            names += [n for n in self.snapshot.names()
                      if n not in have and not model_owns((*self.path, n))]
        return names

    def _snapshot_entry(self, name: str, keep: bool) -> tuple[Node | None, bool]:
        kept = self._theirs.get(name)
        if kept is not None:
            return kept
        path = (*self.path, name)
        theirs = None
        if self.snapshot is not None and not _matches(path, MODEL_FILES):
            theirs = self.snapshot.lookup(name)
        entry = (theirs, _matches(path, MODEL_DIRS))
        if keep or theirs is not None:
            self._theirs[name] = entry
        return entry

    def lookup(self, name: str) -> Node | None:
        mine = self.model.lookup(name) if self.model is not None else None
        theirs, model_dir = self._snapshot_entry(name, keep=mine is not None)
        if theirs is None or (model_dir and mine is None):
            return mine
        if not isinstance(theirs, Dir) or not (mine is None or isinstance(mine, Dir)):
            return mine if mine is not None else theirs
        merged = self._merged.get(name)
        if merged is None or merged.model is not mine:
            merged = self._merged[name] = OverlayDir(mine, theirs, (*self.path, name))
        return merged


def overlay(model: Dir, snapshot: str | os.PathLike[str] | Dir) -> Dir:
    """The model's tree with the snapshot's files filling in the rest (see the module's
    docstring); snapshot is the snapshot's directory or a tree of it."""
    snap = snapshot if isinstance(snapshot, Dir) else snapshot_root(snapshot)
    return OverlayDir(model, snap)
