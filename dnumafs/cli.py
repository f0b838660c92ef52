"""The dnumafs command: mount and unmount the model, and drive and read it through its files.

stripe, all-to, status and hardware use only the mounted files, as a script on a real dnuma
kernel would (the debugfs memlayout files, /proc/zoneinfo and the node sysfs), so they show
what any other reader of those files sees.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dnumafs import daemon
from dnumafs.lib.bitmap import bitmap_list, bitmap_parselist

log = logging.getLogger("dnumafs")

NODE_DIR = "sys/devices/system/node"
MEMLAYOUT_DIR = "sys/kernel/debug/memlayout"
ZONEINFO = "proc/zoneinfo"

MOUNT_TIMEOUT = 60.0  # seconds a background mount may take to answer (boot included)


class CliError(Exception):
    """A failure to report to the user as `dnumafs: message`, exit status 1."""


# --- argument types ---------------------------------------------------------------------------

_SIZE_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """A size in bytes: 1073741824, 64K, 512M, 1G, 128MiB, 2GB (units are binary, as the
    kernel's memparse)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 512M, 128MiB, bytes)")
    return int(m.group(1)) << _SIZE_UNITS[m.group(2).upper()]


def parse_size_list(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",")]


def _nonneg_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- mount / umount ---------------------------------------------------------------------------

def _machine_config(args: argparse.Namespace) -> dict[str, Any]:
    """MachineConfig keyword arguments for the options given (the model has the defaults)."""
    cfg: dict[str, Any] = {}
    for name in ("nodes", "mem", "cpus", "possible_nodes"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if args.node_mem is not None:
        if args.nodes is not None and args.nodes != len(args.node_mem):
            raise CliError(f"--nodes {args.nodes} but --node-mem gives "
                           f"{len(args.node_mem)} sizes")
        if args.mem is not None and args.mem != sum(args.node_mem):
            raise CliError(f"--mem {args.mem} is not the sum of --node-mem "
                           f"({sum(args.node_mem)} bytes)")
        cfg.update(node_mem=args.node_mem, nodes=len(args.node_mem), mem=sum(args.node_mem))
    return cfg


def _machine_root(**cfg: Any) -> Any:
    """Boot the model and build its file tree."""
    from dnumafs.files import build_root
    from dnumafs.mm import Machine, MachineConfig
    return build_root(Machine.boot(MachineConfig(**cfg)))


def _root_factory(spec: str | None) -> Callable[..., Any]:
    """The function that builds the tree: the model's, or MODULE:FUNCTION given by --tree
    (a development aid: serve any tree through the same daemon machinery)."""
    if spec is None:
        return _machine_root
    module, _, func = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise CliError(f"--tree {spec}: {e}") from None


def _setup_logging(log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _check_free(mp: Path) -> None:
    if not mp.is_dir():
        raise CliError(f"{mp}: mount point is not a directory (create it first)")
    if daemon.is_mounted(mp):
        raise CliError(f"{mp}: a dnumafs file system is already mounted there")
    pid = daemon.daemon_pid(mp)
    if pid is not None:
        raise CliError(f"{mp}: its daemon (pid {pid}) is still running; "
                       f"`dnumafs umount {mp}` stops it")


def _serve(args: argparse.Namespace, mp: Path) -> int:
    """Foreground mount: boot, mount, serve until unmounted or signalled."""
    from dnumafs.vfs import fuse_ops  # needs libfuse; the other commands do not

    _setup_logging(args.log)
    _check_free(mp)
    cfg = _machine_config(args)
    factory = _root_factory(args.tree)
    daemon.write_pidfile(mp)     # first, so that umount can stop a daemon still booting
    try:
        try:
            root = factory(**cfg)
        except ValueError as e:
            raise CliError(f"cannot boot this machine: {e}") from None
        allow_other = args.allow_other
        log.info("serving %s (pid %d)", mp, os.getpid())
        try:
            fuse_ops.serve(root, str(mp), allow_other=allow_other)
        except RuntimeError as e:
            raise CliError(f"{mp}: libfuse could not mount it (status {e})") from None
        log.info("unmounted %s", mp)
    finally:
        daemon.remove_pidfile(mp)
    return 0


def _child_argv(args: argparse.Namespace, mp: Path, log_file: Path) -> list[str]:
    argv = [sys.executable, "-m", "dnumafs", "mount", str(mp), "--foreground",
            "--log", str(log_file)]
    for opt, value in (("--nodes", args.nodes), ("--mem", args.mem), ("--cpus", args.cpus),
                       ("--possible-nodes", args.possible_nodes), ("--tree", args.tree)):
        if value is not None:
            argv += [opt, str(value)]
    if args.node_mem is not None:
        argv += ["--node-mem", ",".join(map(str, args.node_mem))]
    if args.allow_other:
        argv.append("--allow-other")
    return argv


def _abandon(child: subprocess.Popen[bytes], mp: Path) -> None:
    """Stop a daemon that did not mount in time, and detach whatever it mounted."""
    if child.poll() is None:
        daemon.kill(child.pid)
    child.poll()
    if daemon.is_mounted(mp):
        daemon.unmount(mp, lazy=True)


def _mount_background(args: argparse.Namespace, mp: Path) -> int:
    """Run the foreground mount in a child process and return once the mount answers."""
    _check_free(mp)
    _machine_config(args)        # option errors now, not in the child's log
    log_file = Path(args.log).resolve() if args.log else daemon.default_log_path(mp)
    env = dict(os.environ)
    # The child must import this same dnumafs, installed or not.
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    with open(log_file, "ab") as out:
        log_start = out.tell()
        child = subprocess.Popen(_child_argv(args, mp, log_file), stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        reason = daemon.wait_answers(child, mp, args.timeout)
    except BaseException:         # interrupted: leave nothing half-mounted behind
        _abandon(child, mp)
        raise
    if reason is None:
        print(f"dnumafs: mounted {mp} (daemon pid {child.pid}, log {log_file})")
        return 0
    _abandon(child, mp)
    with open(log_file, "rb") as f:
        f.seek(log_start)
        text = f.read().decode(errors="replace").strip()
    raise CliError(f"{mp}: mount failed: {reason}" + (f"; its log ({log_file}):\n{text}"
                                                        if text else ""))


def cmd_mount(args: argparse.Namespace) -> int:
    mp = daemon.mountpoint_path(args.mnt)
    if args.foreground:
        return _serve(args, mp)
    return _mount_background(args, mp)


def cmd_umount(args: argparse.Namespace) -> int:
    note = daemon.stop(daemon.mountpoint_path(args.mnt), lazy=args.lazy)
    if note:
        print(f"dnumafs: {note}")
    return 0


# --- reading and writing the mounted files ----------------------------------------------------

class MountedTree:
    """The files of one mounted dnumafs (or of a real kernel's /, for the readers)."""

    def __init__(self, mnt: str | os.PathLike[str]) -> None:
        self.root = Path(mnt)
        try:
            (self.root / NODE_DIR).stat()
        except OSError as e:
            raise CliError(f"{mnt}: not a mounted dnumafs file system "
                           f"({NODE_DIR}: {e.strerror})") from None

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        try:
            return self.path(rel).read_text()
        except OSError as e:
            raise CliError(f"{self.path(rel)}: {e.strerror}") from None

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except OSError as e:
            raise CliError(f"{self.path(rel)}: {e.strerror}") from None

    def _numbered(self, rel: str, pattern: str) -> list[int]:
        """The numbers of the entries of rel named by pattern (one group), ascending."""
        return sorted(int(m.group(1)) for n in self.listdir(rel)
                      if (m := re.fullmatch(pattern, n)))

    def node_ids(self) -> list[int]:
        """Nodes with a nodeN directory, as libnuma finds them (the online ones)."""
        return self._numbered(NODE_DIR, r"node(\d+)")

    def node_meminfo(self, nid: int) -> dict[str, int]:
        """nodeN/meminfo as key -> value (kB, or a count for HugePages_*)."""
        info = {}
        for line in self.read(f"{NODE_DIR}/node{nid}/meminfo").splitlines():
            fields = line.split()    # Node 0 MemTotal: 1048576 kB
            if len(fields) >= 4 and fields[2].endswith(":"):
                info[fields[2][:-1]] = int(fields[3])
        return info

    def node_cpus(self, nid: int) -> list[int]:
        """The cpus in nodeN/cpumap (comma-separated 32-bit hex words), as libnuma reads."""
        words = self.read(f"{NODE_DIR}/node{nid}/cpumap").strip().replace(",", "")
        mask = int(words or "0", 16)
        return [cpu for cpu in range(mask.bit_length()) if mask >> cpu & 1]

    def node_distances(self, nid: int) -> list[int]:
        return [int(v) for v in self.read(f"{NODE_DIR}/node{nid}/distance").split()]

    def possible_nodes(self) -> list[int]:
        return bitmap_parselist(self.read(f"{NODE_DIR}/possible"))

    def max_pfn(self) -> int:
        """One past the highest pfn: the highest end (start_pfn + spanned) of a populated zone
        in /proc/zoneinfo. Every page lies in the span of its node's zone, so this covers all
        memory whatever the layout, and it is what a real kernel shows too."""
        top = 0
        start = spanned = None
        # A zone's lines run from its "Node N, zone Z" line to the next (or a last sentinel).
        for line in self.read(ZONEINFO).splitlines() + ["Node"]:
            fields = line.split()
            if fields[:1] == ["Node"]:
                if start is not None and spanned is not None:
                    top = max(top, start + spanned)
                start = spanned = None
            elif fields[:1] == ["spanned"] and len(fields) == 2:
                spanned = int(fields[1])
            elif fields[:1] == ["start_pfn:"] and len(fields) == 2:
                start = int(fields[1])
        if top == 0:
            raise CliError(f"{self.path(ZONEINFO)}: no populated zone, cannot tell the "
                           f"highest pfn")
        return top

    def current_layout(self) -> str:
        try:
            return os.readlink(self.path(f"{MEMLAYOUT_DIR}/current"))
        except OSError as e:
            raise CliError(f"{self.path(MEMLAYOUT_DIR)}/current: {e.strerror}") from None

    def layout_ids(self) -> list[int]:
        return self._numbered(MEMLAYOUT_DIR, r"layout\.(\d+)")

    def layout_ranges(self, name: str) -> list[tuple[int, int, int]]:
        """(start, end, nid) of each range of layout `name`, from its SSSSS-EEEEE files."""
        d = f"{MEMLAYOUT_DIR}/{name}"
        ranges = []
        for n in self.listdir(d):
            if m := re.fullmatch(r"([0-9a-f]+)-([0-9a-f]+)", n):
                nid = int(self.read(f"{d}/{n}"))
                ranges.append((int(m.group(1), 16), int(m.group(2), 16), nid))
        return sorted(ranges)


class MemlayoutWriter:
    """The debugfs memlayout files, opened once: each write(2) is one whole value, as debugfs
    attributes take them, so one open file serves any number of values."""

    FILES = ("start", "end", "node", "commit", "clear")

    def __init__(self, tree: MountedTree) -> None:
        self.fds: dict[str, int] = {}
        try:
            for name in self.FILES:
                path = tree.path(f"{MEMLAYOUT_DIR}/{name}")
                self.fds[name] = os.open(path, os.O_WRONLY)
        except OSError as e:
            self.close()
            raise CliError(f"{e.filename}: {e.strerror}") from None
        self.tree = tree

    def write(self, name: str, value: int) -> None:
        text = f"{value:#x}\n" if name in ("start", "end") else f"{value}\n"
        try:
            os.write(self.fds[name], text.encode())
        except OSError as e:
            raise CliError(f"{self.tree.path(MEMLAYOUT_DIR)}/{name}: writing "
                           f"{text.strip()}: {e.strerror}") from None

    def add_range(self, start: int, end: int, nid: int) -> None:
        self.write("start", start)
        self.write("end", end)
        self.write("node", nid)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> MemlayoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stripe_ranges(max_pfn: int, first: int, last: int, pfns: int
                  ) -> Iterator[tuple[int, int, int]]:
    """(start, end, nid): pfns 0..max_pfn-1 in stripes of `pfns` pages, nodes first..last in
    turn. (The seed's dnuma-test never advanced its pfn; this does.)"""
    nid = first
    for start in range(0, max_pfn, pfns):
        yield start, min(start + pfns, max_pfn) - 1, nid
        nid = first if nid == last else nid + 1


def _commit_layout(tree: MountedTree, ranges: Iterator[tuple[int, int, int]]) -> None:
    """Replace any pending layout by `ranges`, commit it, and say what became current."""
    with MemlayoutWriter(tree) as w:
        w.write("clear", 1)
        count = 0
        for start, end, nid in ranges:
            w.add_range(start, end, nid)
            count += 1
        w.write("commit", 1)
    print(f"committed {count} range{'s' if count != 1 else ''}: "
          f"current is {tree.current_layout()}, "
          f"{int(tree.read(f'{MEMLAYOUT_DIR}/moved-pages'))} pages moved in all")


def _check_node(tree: MountedTree, nid: int) -> None:
    possible = tree.possible_nodes()
    if nid not in possible:
        raise CliError(f"node {nid} is not possible (possible nodes: "
                       f"{bitmap_list(possible)})")


def cmd_stripe(args: argparse.Namespace) -> int:
    if args.first > args.last:
        raise CliError(f"FIRST ({args.first}) is above LAST ({args.last})")
    tree = MountedTree(args.mnt)
    _check_node(tree, args.first)
    _check_node(tree, args.last)
    _commit_layout(tree, stripe_ranges(tree.max_pfn(), args.first, args.last, args.pfns))
    return 0


def cmd_all_to(args: argparse.Namespace) -> int:
    tree = MountedTree(args.mnt)
    _check_node(tree, args.node)
    _commit_layout(tree, iter([(0, tree.max_pfn() - 1, args.node)]))
    return 0


STATUS_MAX_RANGES = 16


def cmd_status(args: argparse.Namespace) -> int:
    tree = MountedTree(args.mnt)
    max_pfn = tree.max_pfn()
    out = [f"possible nodes: {bitmap_list(tree.possible_nodes())}",
           f"online nodes:   {bitmap_list(tree.node_ids())}",
           f"pages:          {max_pfn} (pfn 0-{max_pfn - 1:#x})"]
    for nid in tree.node_ids():
        info = tree.node_meminfo(nid)
        cpus = bitmap_list(tree.node_cpus(nid)) or "none"
        out.append(f"node {nid}: {info.get('MemTotal', 0) // 1024} MB, "
                   f"{info.get('MemFree', 0) // 1024} MB free, cpus {cpus}")
    current = tree.current_layout()
    ranges = tree.layout_ranges(current)
    out.append(f"current layout: {current} ({len(ranges)} range{'s' if len(ranges) != 1 else ''})")
    for start, end, nid in ranges[:STATUS_MAX_RANGES]:
        out.append(f"  {start:#07x}-{end:#07x} -> node {nid}")
    if len(ranges) > STATUS_MAX_RANGES:
        out.append(f"  ... {len(ranges) - STATUS_MAX_RANGES} more")
    current_id = int(current.rpartition(".")[2])
    pending = [i for i in tree.layout_ids() if i > current_id]
    out.append("pending layout: " + (", ".join(f"layout.{i}" for i in pending) or "none"))
    out.append(f"moved pages:    {int(tree.read(f'{MEMLAYOUT_DIR}/moved-pages'))}")
    print("\n".join(out))
    return 0


def hardware_text(tree: MountedTree) -> str:
    """What `numactl --hardware` prints, from the node files libnuma reads (node directories,
    nodeN/cpumap, nodeN/meminfo, nodeN/distance)."""
    nodes = tree.node_ids()
    out = [f"available: {len(nodes)} nodes ({bitmap_list(nodes)})"]
    for nid in nodes:
        out.append(f"node {nid} cpus:" + "".join(f" {c}" for c in tree.node_cpus(nid)))
        info = tree.node_meminfo(nid)
        out.append(f"node {nid} size: {info.get('MemTotal', 0) * 1024 >> 20} MB")
        out.append(f"node {nid} free: {info.get('MemFree', 0) * 1024 >> 20} MB")
    # nodeN/distance lists one value per online node, ascending. libnuma indexes it by node id,
    # which is only right for nodes 0..n-1; this pairs the values with the online nodes.
    out.append("node distances:")
    out.append("node " + "".join(f"{nid:3d} " for nid in nodes))
    for nid in nodes:
        dist = tree.node_distances(nid)
        out.append(f"{nid:3d}: " + "".join(f"{d:3d} " for d in dist[:len(nodes)]))
    return "\n".join(out) + "\n"


def cmd_hardware(args: argparse.Namespace) -> int:
    sys.stdout.write(hardware_text(MountedTree(args.mnt)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dnumafs import run
    argv = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
    try:
        return run.run(Path(args.mnt), argv)
    except run.RunError as e:
        print(f"dnumafs: {e}", file=sys.stderr)
        return e.status


# --- the parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnumafs",
        description="A model of Linux's NUMA page allocator with dynamic NUMA (dnuma), "
                    "mounted as Linux's own /sys and /proc files.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="boot a machine and mount its files at MNT",
                       description="Boot a model machine and mount its files at MNT. Without "
                                   "--foreground, return once the file system answers and "
                                   "leave the daemon running.")
    m.add_argument("mnt", metavar="MNT")
    m.add_argument("--nodes", type=_positive_int, help="nodes at boot (default 2)")
    m.add_argument("--mem", type=parse_size, help="memory, e.g. 1G, 512M (default 1G)")
    m.add_argument("--node-mem", type=parse_size_list, metavar="SIZE,SIZE,...",
                   help="memory of each boot node (sets --nodes and --mem)")
    m.add_argument("--cpus", type=_positive_int, help="CPUs, spread over the nodes (default 4)")
    m.add_argument("--possible-nodes", type=_positive_int,
                   help="nodes that may come online (default 8)")
    m.add_argument("--foreground", "-f", action="store_true",
                   help="serve in this process until unmounted or interrupted")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users in (mode bits are then checked by the kernel, "
                        "as on sysfs); without it only the mounting user sees the files")
    m.add_argument("--log", metavar="FILE", help="log file (default: stderr in the "
                   "foreground, a file in the runtime directory in the background)")
    m.add_argument("--timeout", type=float, default=MOUNT_TIMEOUT, metavar="SECONDS",
                   help=f"how long a background mount may take (default {MOUNT_TIMEOUT:g})")
    m.add_argument("--tree", metavar="MODULE:FUNCTION", help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount MNT and stop its daemon",
                       description="Unmount MNT and stop its daemon. A mount whose daemon "
                                   "died is detached lazily.")
    u.add_argument("mnt", metavar="MNT")
    u.add_argument("--lazy", "-l", action="store_true",
                   help="detach even if busy (processes using it keep their open files, "
                        "and the daemon serves them until they are done)")
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="nodes, sizes, free memory, current layout, pages moved")
    s.add_argument("mnt", metavar="MNT")
    s.set_defaults(func=cmd_status)

    st = sub.add_parser("stripe", help="stripe all memory over nodes FIRST..LAST",
                        description="Commit a layout that gives pfns 0..max in stripes of PFNS "
                                    "pages to nodes FIRST..LAST in turn.")
    st.add_argument("mnt", metavar="MNT")
    st.add_argument("first", metavar="FIRST", type=_nonneg_int)
    st.add_argument("last", metavar="LAST", type=_nonneg_int)
    st.add_argument("pfns", metavar="PFNS", type=_positive_int)
    st.set_defaults(func=cmd_stripe)

    a = sub.add_parser("all-to", help="move all memory to NODE (possibly a new one)")
    a.add_argument("mnt", metavar="MNT")
    a.add_argument("node", metavar="NODE", type=_nonneg_int)
    a.set_defaults(func=cmd_all_to)

    h = sub.add_parser("hardware", help="what `numactl --hardware` prints, read from MNT")
    h.add_argument("mnt", metavar="MNT")
    h.set_defaults(func=cmd_hardware)

    r = sub.add_parser("run", help="run CMD with MNT's trees bound over /sys/... and /proc/...",
                       description="Run CMD in a private mount namespace where MNT's node, "
                                   "cpu and debugfs trees and proc files are bound over the "
                                   "real ones, so unmodified tools read the model. Needs "
                                   "root or unprivileged user namespaces.")
    r.add_argument("mnt", metavar="MNT")
    r.add_argument("command_argv", metavar="-- CMD [ARG...]", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, daemon.DaemonError) as e:
        print(f"dnumafs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
