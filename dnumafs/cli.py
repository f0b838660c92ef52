"""The dnumafs command line: the arguments, and one cmd_* function per command.

stripe, all-to, status and hardware use only the mounted files (through dnumafs.client), as a
script on a real dnuma kernel would (the debugfs memlayout files, /proc/zoneinfo and the node
sysfs), so they show what any other reader of those files sees. Mounting and unmounting, the
daemon's life, are dnumafs.daemon's.

Importing this module must load neither numpy nor anything else that starts a thread: `dnumafs
run` as a non-root user enters a new user namespace, which the kernel refuses to a process with
more than one thread (unshare(CLONE_NEWUSER) gives EINVAL). So the model, the files and the
FUSE adapter are imported only inside the commands that serve a mount (tests/test_cli.py
checks this).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnumafs import daemon, events
from dnumafs.client import (
    ClientError,
    MountedTree,
    all_to,
    check_possible,
    hardware_text,
    status_text,
    stripe,
)
from dnumafs.machines import (
    MachineError,
    Snapshot,
    check_host_memory,
    describe,
    open_snapshot,
    parse_distances,
    synthetic,
)

log = logging.getLogger("dnumafs")

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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _distances(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        return parse_distances(text)
    except MachineError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- mount / umount ---------------------------------------------------------------------------

SYNTHETIC_OPTIONS = ("nodes", "mem", "node_mem", "cpus", "possible_nodes", "distances")


def _machine_config(args: argparse.Namespace) -> dict[str, Any]:
    """MachineConfig keyword arguments for the synthetic machine's options given (the model
    has the defaults); none with --machine, which describes the whole machine."""
    cfg: dict[str, Any] = {}
    if args.block_size is not None:
        cfg["block_size"] = args.block_size
    if args.machine is not None:
        given = [f"--{name.replace('_', '-')}" for name in SYNTHETIC_OPTIONS
                 if getattr(args, name) is not None]
        if given:
            raise CliError(f"--machine describes the whole machine: {', '.join(given)} "
                           "cannot be given with it")
        if args.tree is not None:
            raise CliError("--machine and --tree cannot be given together")
        return cfg
    if args.distances is not None:
        cfg["distances"] = args.distances
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
    if "block_size" in cfg:
        from dnumafs.mm.memory_hotplug import check_block_size
        try:
            check_block_size(cfg["block_size"])
        except ValueError as e:
            raise CliError(f"--block-size: {e}") from None
    if "mem" in cfg:    # refused up front, before anything is mounted
        try:
            check_host_memory(synthetic(**{k: v for k, v in cfg.items() if k != "block_size"}))
        except MachineError as e:
            raise CliError(str(e)) from None
    return cfg


def _machine_root(snapshot: Snapshot | None = None, **cfg: Any) -> Any:
    """Boot the model and build its file tree: for a snapshot, the model booted as its
    machine with the snapshot's own files laid under the model's."""
    from dnumafs.files import build_root
    from dnumafs.files.snapshot import overlay
    from dnumafs.mm import Machine, MachineConfig
    if snapshot is None:
        return build_root(Machine.boot(MachineConfig(**cfg)))
    root = build_root(Machine.boot(MachineConfig(machine=describe(snapshot), **cfg)))
    return overlay(root, snapshot.root)


def _open_machine(path: str) -> Snapshot:
    """The snapshot of --machine, described and checked against this host's memory now, so
    that a machine that cannot be is refused before anything is mounted."""
    try:
        snap = open_snapshot(path)
    except MachineError as e:
        raise CliError(str(e)) from None
    try:
        check_host_memory(describe(snap))
    except MachineError as e:
        snap.close()
        raise CliError(str(e)) from None
    return snap


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


def _setup_logging(log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as e:
            raise CliError(f"--log {log_file}: {e.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _check_free(mp: Path) -> None:
    """Refuse a mount point that holds a dnumafs mount, without looking it up (its daemon
    may be stopped), or that is not a directory."""
    if daemon.is_mounted(mp):
        raise CliError(f"{mp}: a dnumafs file system is already mounted there")
    if not mp.is_dir():
        raise CliError(f"{mp}: mount point is not a directory (create it first)")


def _log_path(args: argparse.Namespace) -> Path | None:
    return Path(args.log).absolute() if args.log else None


def _serve(args: argparse.Namespace, mp: Path) -> int:
    """Foreground mount: boot, mount, serve until unmounted or signalled."""
    _setup_logging(_log_path(args))
    _check_free(mp)
    cfg = _machine_config(args)
    factory = _root_factory(args.tree)
    with contextlib.ExitStack() as stack:
        if args.machine is not None:    # its extracted copy is kept while the daemon serves
            cfg["snapshot"] = stack.enter_context(_open_machine(args.machine))
        return _serve_root(args, mp, factory, cfg)


def _serve_root(args: argparse.Namespace, mp: Path, factory: Callable[..., Any],
                cfg: dict[str, Any]) -> int:
    from dnumafs.mm import workload
    from dnumafs.vfs import fuse_ops

    with daemon.serving(mp, args.pidfile_fd):   # first, so that umount can stop a boot
        try:
            root = factory(**cfg)
        except ValueError as e:
            raise CliError(f"cannot boot this machine: {e}") from None
        log.info("serving %s (pid %d)", mp, os.getpid())
        hub = events.Broadcaster(daemon.events_path(mp))
        hub.start()
        try:
            fuse_ops.serve(root, str(mp), allow_other=args.allow_other,
                           per_open=args.per_open_snapshot, shown=hub.publish)
        except fuse_ops.MountError as e:
            raise CliError(f"{mp}: cannot mount: {e}") from None
        finally:
            hub.stop()
            workload.stop_clocks()      # the workload's thread goes with the mount
        log.info("unmounted %s", mp)
    return 0


def _daemon_options(args: argparse.Namespace) -> list[str]:
    """The machine's `dnumafs mount` options, for the daemon."""
    argv = []
    for opt, value in (("--nodes", args.nodes), ("--mem", args.mem), ("--cpus", args.cpus),
                       ("--possible-nodes", args.possible_nodes), ("--tree", args.tree),
                       ("--machine", args.machine and os.path.abspath(args.machine)),
                       ("--block-size", args.block_size)):
        if value is not None:
            argv += [opt, str(value)]
    if args.node_mem is not None:
        argv += ["--node-mem", ",".join(map(str, args.node_mem))]
    if args.distances is not None:
        argv += ["--distances", ";".join(",".join(map(str, row)) for row in args.distances)]
    if args.allow_other:
        argv.append("--allow-other")
    if args.per_open_snapshot:
        argv.append("--per-open-snapshot")
    return argv


def cmd_mount(args: argparse.Namespace) -> int:
    mp = daemon.mountpoint_path(args.mnt)
    if args.foreground:
        return _serve(args, mp)
    _check_free(mp)
    _machine_config(args)        # option errors now, not in the daemon's log
    if args.machine is not None:
        _open_machine(args.machine).close()
    pid, log_file = daemon.start(mp, _daemon_options(args), _log_path(args), args.timeout)
    print(f"dnumafs: mounted {mp} (daemon pid {pid}, log {log_file})")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    note = daemon.stop(daemon.mountpoint_path(args.mnt), lazy=args.lazy)
    if note:
        print(f"dnumafs: {note}")
    return 0


# --- reading and writing the mounted files ----------------------------------------------------

def _require_answer(mnt: str) -> None:
    """Refuse a mount whose daemon does not answer: looking it up would hang us."""
    why = daemon.not_answering(daemon.mountpoint_path(mnt))
    if why is not None:
        raise CliError(why)


def _tree(mnt: str, *, writes: bool = False) -> MountedTree:
    """MNT's files; for a command that writes them, only those of a dnumafs mount at the top
    of MNT (a real kernel's files are for reading)."""
    if writes:
        why = daemon.not_dnumafs(daemon.mountpoint_path(mnt))
        if why is not None:
            raise CliError(why)
    _require_answer(mnt)
    return MountedTree(mnt)


def _report_commit(tree: MountedTree, count: int) -> None:
    print(f"committed {count} range{'s' if count != 1 else ''}: "
          f"current is {tree.current_layout()}, {tree.moved_pages()} pages moved in all")


def cmd_stripe(args: argparse.Namespace) -> int:
    if args.first > args.last:
        raise CliError(f"FIRST ({args.first}) is above LAST ({args.last})")
    tree = _tree(args.mnt, writes=True)
    check_possible(tree, args.first)
    check_possible(tree, args.last)
    _report_commit(tree, stripe(tree, args.first, args.last, args.pfns))
    return 0


def cmd_all_to(args: argparse.Namespace) -> int:
    tree = _tree(args.mnt, writes=True)
    check_possible(tree, args.node)
    _report_commit(tree, all_to(tree, args.node))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    sys.stdout.write(status_text(_tree(args.mnt)))
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    sys.stdout.write(hardware_text(_tree(args.mnt)))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    _require_answer(args.mnt)
    with events.watch(args.mnt) as w:
        print("monitor will print the received events for:\nKERNEL - the kernel uevent\n",
              flush=True)
        for ev in w:
            if isinstance(ev, events.Gap):
                print(f"dnumafs: {ev.dropped} events lost (the monitor fell behind)",
                      file=sys.stderr, flush=True)
            else:
                sys.stdout.write(ev.monitor_text(time.monotonic()))
                sys.stdout.flush()
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from dnumafs import play
    try:
        scenario = play.load(args.scenario)     # checked whole before the mount is touched
        play.play(_tree(args.mnt, writes=True), scenario, speed=args.speed, seed=args.seed,
                  trace_path=args.trace, out=sys.stdout)
    except play.ScenarioError as e:
        print(e, file=sys.stderr)
        return 1
    except play.Signalled as e:
        print(f"dnumafs: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    return 0


def _speed(text: str) -> float:
    from dnumafs.play import SPEED_MIN
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value == 0 or value >= SPEED_MIN):      # nan too
        raise argparse.ArgumentTypeError(
            f"{text}: must be 0 or inf (no waiting) or at least {SPEED_MIN:g}")
    return value


def _seed(text: str) -> int:
    from dnumafs.play import seed_max
    value = _nonneg_int(text)
    if value > seed_max():
        raise argparse.ArgumentTypeError(f"{text}: must be from 0 to {seed_max()}")
    return value


def _map_width(text: str) -> int:
    """--width: one message for every width out of range, whatever its sign or size."""
    from dnumafs.pictures import map as page_map  # numpy: only when drawing
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        page_map.check_width(value)
    except ClientError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def cmd_map(args: argparse.Namespace) -> int:
    from dnumafs.pictures import map as page_map  # numpy: only when drawing
    page_map.check_output(Path(args.output), page_map.MAP_SUFFIXES)
    _require_answer(args.mnt)
    page_map.write_map(args.mnt, Path(args.output), args.width)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from dnumafs.pictures import plot
    plot.write_plot(Path(args.trace), Path(args.output))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dnumafs import run
    _require_answer(args.mnt)
    argv = args.command_argv[1:] if args.command_argv[:1] == ["--"] else args.command_argv
    try:
        return run.run(Path(args.mnt), argv, syscalls=args.syscalls, uevents=args.uevents)
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
    m.add_argument("--distances", type=_distances, metavar="MATRIX",
                   help="the synthetic machine's node distances, rows separated by ';' "
                        "(e.g. 10,20;20,10; default 10 to itself, 20 to others)")
    m.add_argument("--machine", metavar="PATH",
                   help="boot as the machine of a snapshot of /sys and /proc: a directory, "
                        "a .tar, .tar.gz or .tar.bz2 as hwloc-gather-topology writes, or / "
                        "for this host")
    m.add_argument("--block-size", type=parse_size, metavar="SIZE",
                   help="memory block size, a power of two from 4M to 2G (default: the "
                   "kernel's rule, 128M below 64G of memory)")
    m.add_argument("--foreground", "-f", action="store_true",
                   help="serve in this process until unmounted or interrupted")
    m.add_argument("--per-open-snapshot", action="store_true",
                   help="make each file's text at each open's first read and serve that open "
                        "from it, as direct I/O, instead of from the kernel's page cache")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users in (mode bits are then checked by the kernel, "
                        "as on sysfs); without it only the mounting user sees the files")
    m.add_argument("--log", metavar="FILE", help="log file (default: stderr in the "
                   "foreground, a file in the runtime directory in the background)")
    m.add_argument("--timeout", type=_seconds, default=MOUNT_TIMEOUT, metavar="SECONDS",
                   help=f"how long a background mount may take (default {MOUNT_TIMEOUT:g})")
    m.add_argument("--tree", metavar="MODULE:FUNCTION", help=argparse.SUPPRESS)
    # The locked pid file a background mount hands its daemon (dnumafs.daemon.start).
    m.add_argument("--pidfile-fd", type=int, help=argparse.SUPPRESS)
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
    r.add_argument("--uevents", action="store_true",
                   help="give CMD a network namespace of its own in which MNT's events "
                        "arrive as kernel uevents (udevadm monitor --kernel, pyudev)")
    r.add_argument("mnt", metavar="MNT")
    r.add_argument("--no-syscalls", dest="syscalls", action="store_false",
                   help="let the memory-policy system calls and /proc/PID/status reach the "
                        "real kernel (no seccomp supervisor: the host's nodes)")
    r.add_argument("command_argv", metavar="-- CMD [ARG...]", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("play", help="play a scenario of timed steps on MNT, through its files",
                        description="Play SCENARIO.toml's timed steps (layouts, CPU moves, "
                                    "memory blocks, hugepages, drop_caches, workload "
                                    "commands) on MNT through its files, as a hypervisor's "
                                    "agent would. The workload's clock follows the steps' "
                                    "model times, whatever the speed.")
    pl.add_argument("mnt", metavar="MNT")
    pl.add_argument("scenario", metavar="SCENARIO.toml")
    pl.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                    help="model seconds per wall second between steps (default 1, at least "
                         "0.001; 0 or inf: no waiting)")
    pl.add_argument("--seed", type=_seed, metavar="N",
                    help="the workload's seed (default: the scenario's seed, else 0)")
    pl.add_argument("--trace", metavar="FILE",
                    help="write each step and every node's figures after it, as JSON lines")
    pl.set_defaults(func=cmd_play)

    mo = sub.add_parser("monitor", help="print MNT's uevents as they happen",
                        description="Print each uevent of MNT as `udevadm monitor --kernel "
                                    "--property` does, from when it starts until interrupted "
                                    "or MNT is unmounted.")
    mo.add_argument("mnt", metavar="MNT")
    mo.set_defaults(func=cmd_monitor)

    mp = sub.add_parser("map", help="draw every pfn of MNT by node and state",
                        description="Draw every pfn of MNT by node and state (free, allocated, "
                                    "marked for transplant, reserved, offline), with the zone "
                                    "and current layout's range boundaries, from its files.")
    mp.add_argument("mnt", metavar="MNT")
    mp.add_argument("-o", "--output", required=True, metavar="FILE.svg|FILE.png")
    mp.add_argument("--width", type=_map_width, default=1024, metavar="CELLS",
                    help="cells in a row, 1 to 8192 (default 1024); the raster is at most "
                         "CELLS rows tall")
    mp.set_defaults(func=cmd_map)

    pl = sub.add_parser("plot", help="draw a trace of `dnumafs play --trace` over model time",
                        description="Draw node sizes, free memory, marked pages and moved "
                                    "pages over model time from a trace (JSON lines).")
    pl.add_argument("trace", metavar="TRACE")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.svg")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ClientError, daemon.DaemonError, events.EventsError) as e:
        print(f"dnumafs: {e}", file=sys.stderr)
        return 1
    except OSError as e:        # a file the command needed, e.g. on a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"dnumafs: {where}{e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
