"""Snapshots of a real machine's /sys and /proc, as hwloc-gather-topology writes them.

open_snapshot() takes a directory holding sys/ (and usually proc/), a .tar, .tar.gz or
.tar.bz2 with one top directory holding them, or `/` for this host; an archive is extracted
with tarfile's "data" filter into a private temporary directory, removed by close().
describe() reads the files the model has a say in into a MachineDescription.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import attrs

from dnumafs.lib.bitmap import MAX_BITS, bitmap_parselist

from .description import MAX_CPUS, MachineDescription, MachineError, NodeDescription

NODE_DIR = "sys/devices/system/node"
CPU_DIR = "sys/devices/system/cpu"
# An archive may not unpack to more than this (hwloc's snapshots are a few MB): a guard
# against archives that expand without bound.
MAX_EXTRACTED_BYTES = 1 << 30
MAX_MEMBERS = 1_000_000
SHM = "/dev/shm"


@attrs.define
class Snapshot:
    """A snapshot ready to read: root holds sys/ and proc/. Close it (or use `with`) to remove
    the private copy an archive was extracted to."""

    source: str
    root: Path
    name: str
    tmpdir: Path | None = None

    def where(self, rel: str) -> str:
        """A file of the snapshot as the user knows it: in the directory given, or in the
        archive (not in the private copy)."""
        if self.tmpdir is None:
            return str(self.root / rel)
        return f"{self.source}: {self.name}/{rel}"

    def close(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """The snapshot at path, extracted if it is an archive; MachineError if it cannot be used."""
    p = Path(path)
    source = os.fspath(path)
    if p.resolve() == Path("/"):
        return Snapshot(source, Path("/"), socket.gethostname())
    try:
        p.stat()
    except OSError as e:
        raise MachineError(f"{source}: {e.strerror}") from None
    if p.is_dir():
        if not (p / "sys").is_dir():
            raise MachineError(f"{source}: not a snapshot (no sys/ directory in it)")
        return Snapshot(source, p, p.resolve().name)
    if not p.is_file():
        raise MachineError(f"{source}: neither a directory nor an archive")
    if not os.access(p, os.R_OK):
        raise MachineError(f"{source}: Permission denied")
    return _extract(source, p)


def _extract_parent() -> str | None:
    """Where to make the private directory: TMPDIR (or tempfile's own choice) if set, else
    /dev/shm when there is one, a tmpfs where the thousands of small files of a snapshot are
    made several times faster than on a disk; else the system's temporary directory."""
    chosen = tempfile.tempdir or os.environ.get("TMPDIR")
    if chosen is None and os.access(SHM, os.W_OK | os.X_OK) and Path(SHM).is_dir():
        return SHM
    return chosen


def _extract(source: str, p: Path) -> Snapshot:
    tmp = Path(tempfile.mkdtemp(prefix="dnumafs-machine-", dir=_extract_parent()))
    try:
        try:
            with tarfile.open(p, "r:*") as tf:
                members = tf.getmembers()
                top = _top_directory(source, members)
                size = sum(m.size for m in members)
                if len(members) > MAX_MEMBERS or size > MAX_EXTRACTED_BYTES:
                    raise MachineError(f"{source}: too large ({len(members)} members, "
                                       f"{size} bytes unpacked)")
                tf.extractall(tmp, filter="data")
        except tarfile.FilterError as e:
            raise MachineError(f"{source}: unsafe member {e.tarinfo.name!r} ({e}), "
                               f"nothing kept") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise MachineError(f"{source}: not a readable .tar, .tar.gz or .tar.bz2 "
                               f"({e})") from None
        root = tmp / top
        if not (root / "sys").is_dir():
            raise MachineError(f"{source}: not a snapshot (no {top}/sys/ directory in it)")
        return Snapshot(source, root, top, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _top_directory(source: str, members: list[tarfile.TarInfo]) -> str:
    tops = set()
    for m in members:
        parts = [part for part in m.name.split("/") if part not in ("", ".")]
        if m.name.startswith("/") or ".." in parts:
            raise MachineError(f"{source}: unsafe member {m.name!r} (outside its directory), "
                               f"nothing kept")
        if parts:
            tops.add(parts[0])
    if not tops:
        raise MachineError(f"{source}: the archive is empty")
    if len(tops) > 1:
        shown = ", ".join(sorted(tops)[:5])
        raise MachineError(f"{source}: {len(tops)} top directories ({shown}); a snapshot "
                           f"archive has one")
    return tops.pop()


# --- reading -----------------------------------------------------------------------------------

@attrs.frozen
class _Reader:
    """Reads a snapshot's files, never outside it (a link out of a snapshot directory is not
    followed), and names the file in every error."""

    snap: Snapshot

    def path(self, rel: str) -> Path:
        return self.snap.root / rel

    def where(self, rel: str) -> str:
        return self.snap.where(rel)

    def _inside(self, p: Path) -> bool:
        root = self.snap.root.resolve()
        return root == Path("/") or p.resolve().is_relative_to(root)

    def exists(self, rel: str) -> bool:
        p = self.path(rel)
        return p.exists() and self._inside(p)

    def text(self, rel: str) -> str:
        p = self.path(rel)
        if p.exists() and not self._inside(p):
            raise MachineError(f"{self.where(rel)}: a link out of the snapshot")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise MachineError(f"{self.where(rel)}: {e.strerror}") from None
        try:
            return data.decode().replace("\0", "")
        except UnicodeDecodeError:
            raise MachineError(f"{self.where(rel)}: not text") from None

    def listdir(self, rel: str) -> list[str]:
        p = self.path(rel)
        if not self._inside(p):
            raise MachineError(f"{self.where(rel)}: a link out of the snapshot")
        try:
            return sorted(os.listdir(p))
        except OSError as e:
            raise MachineError(f"{self.where(rel)}: {e.strerror}") from None

    def ids(self, rel: str) -> tuple[int, ...]:
        """A `%*pbl` list file: "0-2,4"."""
        text = self.text(rel).strip()
        if not re.fullmatch(r"(\d+(-\d+)?(,\d+(-\d+)?)*)?", text):
            raise MachineError(f"{self.where(rel)}: not a list of ids: {text[:40]!r}")
        try:
            # one id past the most a list may name, so that the callers' checks say what
            # is over (a CPU past the 8192 Linux supports)
            return tuple(bitmap_parselist(text, MAX_BITS + 1))
        except ValueError as e:
            raise MachineError(f"{self.where(rel)}: {e}") from None

    def mask(self, rel: str) -> tuple[int, ...]:
        """A `%*pb` mask file: 32-bit hex words, most significant first."""
        text = self.text(rel).strip()
        if not re.fullmatch(r"[0-9a-fA-F]+(,[0-9a-fA-F]+)*", text):
            raise MachineError(f"{self.where(rel)}: not a CPU mask: {text[:40]!r}")
        value = int(text.replace(",", ""), 16)
        return tuple(b for b in range(value.bit_length()) if value >> b & 1)

    def number(self, rel: str) -> int:
        text = self.text(rel).strip()
        if not text.isdigit():
            raise MachineError(f"{self.where(rel)}: not a number: {text[:40]!r}")
        return int(text)

    def numbered(self, rel: str, prefix: str) -> list[int]:
        """The N of each `prefixN` entry of a directory, ascending."""
        found = [int(m.group(1)) for n in self.listdir(rel)
                 if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", n))]
        return sorted(found)


def describe(snap: Snapshot) -> MachineDescription:
    """The machine the snapshot shows; MachineError naming the file if it is not usable."""
    r = _Reader(snap)
    if not r.exists(NODE_DIR):
        raise MachineError(f"{r.where(NODE_DIR)}: missing (a machine without NUMA support)")
    dirs = tuple(r.numbered(NODE_DIR, "node"))
    online = r.ids(f"{NODE_DIR}/online") if r.exists(f"{NODE_DIR}/online") else dirs
    if set(online) != set(dirs):
        raise MachineError(f"{r.where(NODE_DIR)}: online nodes {list(online)} but directories "
                           f"for {list(dirs)}")
    possible = r.ids(f"{NODE_DIR}/possible") if r.exists(f"{NODE_DIR}/possible") else online
    cpus = _cpu_sets(r)
    nodes = [_node(r, nid, online, possible) for nid in online]
    return MachineDescription(source=snap.source, name=snap.name, possible_nodes=possible,
                              nodes=nodes, possible_cpus=cpus[0], present_cpus=cpus[1],
                              online_cpus=cpus[2])


def _cpu_sets(r: _Reader) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """cpu/possible, present and online; an old kernel without them shows only cpuK/, with a
    cpuK/online holding 0 for the offline ones."""
    if r.exists(f"{CPU_DIR}/possible") and r.ids(f"{CPU_DIR}/possible"):
        possible = r.ids(f"{CPU_DIR}/possible")
    else:
        possible = tuple(r.numbered(CPU_DIR, "cpu"))
    if possible and possible[-1] >= MAX_CPUS:
        raise MachineError(f"{r.where(CPU_DIR)}: CPU {possible[-1]}, over the "
                           f"{MAX_CPUS} CPUs Linux supports")
    present = r.ids(f"{CPU_DIR}/present") if r.exists(f"{CPU_DIR}/present") else possible
    if r.exists(f"{CPU_DIR}/online"):
        online = r.ids(f"{CPU_DIR}/online")
    else:
        online = tuple(c for c in present if not r.exists(f"{CPU_DIR}/cpu{c}/online")
                       or r.number(f"{CPU_DIR}/cpu{c}/online") == 1)
    return possible, present, online


def _node(r: _Reader, nid: int, online: tuple[int, ...],
          possible: tuple[int, ...]) -> NodeDescription:
    d = f"{NODE_DIR}/node{nid}"
    return NodeDescription(nid=nid, memory_kb=_memtotal_kb(r, f"{d}/meminfo"),
                           cpus=_node_cpus(r, d), hugepages=_hugepages(r, d),
                           distances=_distances(r, f"{d}/distance", online, possible))


def _memtotal_kb(r: _Reader, rel: str) -> int:
    m = re.search(r"^Node \d+ MemTotal:\s+(\d+) kB$", r.text(rel), re.MULTILINE)
    if m is None:
        raise MachineError(f"{r.where(rel)}: no `MemTotal: N kB` line")
    return int(m.group(1))


def _node_cpus(r: _Reader, d: str) -> tuple[int, ...]:
    """nodeN/cpumap, which hwloc and libnuma read (a snapshot may disagree with its cpulist),
    else cpulist, else the cpuK links."""
    if r.exists(f"{d}/cpumap"):
        return r.mask(f"{d}/cpumap")
    if r.exists(f"{d}/cpulist"):
        return r.ids(f"{d}/cpulist")
    return tuple(r.numbered(d, "cpu"))


def _hugepages(r: _Reader, d: str) -> tuple[tuple[int, int], ...]:
    if not r.exists(f"{d}/hugepages"):
        return ()
    pools = []
    for name in r.listdir(f"{d}/hugepages"):
        m = re.fullmatch(r"hugepages-(\d+)kB", name)
        if m is None:
            raise MachineError(f"{r.where(d)}/hugepages/{name}: not a hugepage pool")
        pools.append((int(m.group(1)), r.number(f"{d}/hugepages/{name}/nr_hugepages")))
    return tuple(pools)


def _distances(r: _Reader, rel: str, online: tuple[int, ...],
               possible: tuple[int, ...]) -> tuple[int, ...] | None:
    """The row over the online nodes. Linux prints one per online node; a hand-edited
    snapshot may keep a row over the possible nodes, whose online columns are taken."""
    if not r.exists(rel):
        return None
    text = r.text(rel).split()
    if not all(v.isdigit() for v in text):
        raise MachineError(f"{r.where(rel)}: not a row of distances: {' '.join(text)[:40]!r}")
    row = [int(v) for v in text]
    if len(row) == len(online):
        return tuple(row)
    if len(row) == len(possible):
        return tuple(row[possible.index(nid)] for nid in online)
    raise MachineError(f"{r.where(rel)}: {len(row)} distances for {len(online)} online nodes")
