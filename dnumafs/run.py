"""`dnumafs run`: a command that sees the model at the real /sys and /proc paths.

The command runs in a private mount namespace, where the mount's trees are bound over
the real ones, so unmodified tools (numactl, numastat, lstopo) read the model. Nothing
changes outside that namespace.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

from dnumafs.seccomp import abi

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# Directories of the mount bound whole over the real ones (the same path under MNT and /);
# one the mount or the host lacks is left out.
BIND_DIRS: tuple[str, ...] = (
    "sys/devices/system/node",
    "sys/devices/system/memory",
    "sys/bus/node/devices",
    "sys/bus/cpu/devices",
    "sys/bus/memory/devices",
    "sys/kernel/debug",
)
# Directories where the model's entries replace the host's, and the host's other entries,
# which the model has no opinion on (cpu/vulnerabilities, cpufreq, cpuidle, kernel_max...),
# stay visible: a read-only tmpfs over the real directory holds one bind per entry. Each
# comes with the pattern of the host's names that are never kept: the model's CPUs are all
# the CPUs there are, so a host's cpuN beyond them is not one.
MERGE_DIRS: dict[str, re.Pattern[str]] = {
    "sys/devices/system/cpu": re.compile(r"cpu\d+"),
}
# Under MNT/proc every file is bound over its real twin, one by one: the real /proc holds
# the processes (libnuma reads /proc/self/status), so it cannot be covered whole.
PROC_DIR = "proc"

# hwloc learns the CPUs and nodes a process may use from the cgroup cpuset, and the caches
# from CPUID: both the host's, which name other CPUs and nodes than the model's (the host's
# cpuset would hide the model's extra nodes). These keep lstopo's CPUs and nodes to the
# model's; a value already set in the environment wins.
TOOL_ENV: dict[str, str] = {
    "HWLOC_ALLOW": "all",
    "HWLOC_COMPONENTS": "linux,stop",
}

USERNS_HINT = ("run as root, or allow unprivileged user namespaces "
               "(sysctl user.max_user_namespaces > 0, and on Debian "
               "kernel.unprivileged_userns_clone=1)")


class RunError(Exception):
    """Why the command could not be run, in words a user can act on, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise RunError(f"{what}: {os.strerror(err)}")


def _write_id_map(name: str, text: str) -> None:
    try:
        Path(f"/proc/self/{name}").write_text(text)
    except OSError as e:
        raise RunError(f"cannot write /proc/self/{name} in the new user namespace "
                       f"({e.strerror}): {USERNS_HINT}") from None


def _enter_namespace(libc: ctypes.CDLL) -> None:
    """A new mount namespace; as a non-root user, inside a new user namespace that maps the
    user to itself, so the command keeps its uid and can still reach a mount it made."""
    if os.geteuid() == 0:
        if libc.unshare(CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise RunError(f"cannot create a mount namespace ({os.strerror(err)}): root "
                           "without CAP_SYS_ADMIN (a container?) cannot bind over /sys")
        return
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        threads = len(os.listdir("/proc/self/task"))
        if err == errno.EINVAL and threads > 1:
            # The kernel refuses CLONE_NEWUSER to a multi-threaded process.
            raise RunError(f"cannot create a user namespace: dnumafs run has {threads} "
                           "threads (a module it imported started one)")
        raise RunError(f"cannot create a user namespace ({os.strerror(err)}): {USERNS_HINT}")
    _write_id_map("setgroups", "deny")
    _write_id_map("uid_map", f"{uid} {uid} 1\n")
    _write_id_map("gid_map", f"{gid} {gid} 1\n")


def _bind(libc: ctypes.CDLL, src: str | Path, dst: Path) -> None:
    _check(libc.mount(os.fsencode(src), bytes(dst), None, MS_BIND, None),
           f"binding {src} on {dst}")


def merge_dir(libc: ctypes.CDLL, mnt: Path, rel: str, model_only: re.Pattern[str]) -> None:
    """Cover /rel with a read-only tmpfs holding the model's entries of mnt/rel and the
    host's others but those named like model_only, each bound from its own source (symlinks
    copied). The host's directory is reached through a descriptor opened before it is
    covered."""
    src, dst = mnt / rel, Path("/") / rel
    model = sorted(os.listdir(src))
    host = sorted(name for name in set(os.listdir(dst)) - set(model)
                  if not model_only.fullmatch(name))
    fd = os.open(dst, os.O_PATH | os.O_DIRECTORY)
    try:
        _check(libc.mount(b"tmpfs", bytes(dst), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                             b"mode=0755"), f"mounting a tmpfs on {dst}")
        sources = [src / name for name in model] + [Path(f"/proc/self/fd/{fd}/{name}")
                                                    for name in host]
        for source in sources:
            entry = dst / source.name
            if source.is_symlink():
                entry.symlink_to(os.readlink(source))
                continue
            if source.is_dir():
                entry.mkdir()
            else:
                entry.touch()
            _bind(libc, source, entry)
        _check(libc.mount(None, bytes(dst), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
               f"making {dst} read-only")
    finally:
        os.close(fd)


def bind_targets(mnt: Path) -> list[str]:
    """The paths, relative to MNT and to /, to bind whole: the trees, then each file under
    MNT/proc (whatever the model provides there, so a new proc file needs no change here)."""
    targets = list(BIND_DIRS)
    for dirpath, _dirs, files in sorted(os.walk(mnt / PROC_DIR)):
        rel = Path(dirpath).relative_to(mnt)
        targets += [str(rel / name) for name in sorted(files)]
    return targets


def bind_model(mnt: Path) -> list[str]:
    """In a fresh mount namespace, bind mnt's trees over the real paths, merge MERGE_DIRS;
    returns the paths covered. A path the real system lacks (no /proc/sys/vm here) is left
    out."""
    targets = bind_targets(mnt)    # before the binds, which might cover mnt's own parents
    libc = _libc()
    _enter_namespace(libc)
    # Keep our binds from propagating back to the parent namespace.
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    bound = []
    for rel, model_only in MERGE_DIRS.items():
        if (mnt / rel).is_dir() and (Path("/") / rel).is_dir():
            merge_dir(libc, mnt, rel, model_only)
            bound.append(f"/{rel}")
    for rel in targets:
        src, dst = mnt / rel, Path("/") / rel
        if not os.path.lexists(src) or not dst.exists():
            continue
        _bind(libc, src, dst)
        bound.append(str(dst))
    return bound


def _uevents(libc: ctypes.CDLL, mnt: Path) -> int:
    """Enter a network namespace of our own, and leave a child there that injects mnt's
    events as kernel uevents until the command (this process, once it execs) exits."""
    from dnumafs import events

    _check(libc.unshare(CLONE_NEWNET), "cannot create a network namespace")
    try:
        w = events.watch(mnt)       # subscribed now: the command misses nothing
        sock = events.netlink_socket()
    except (events.EventsError, OSError) as e:
        raise RunError(f"cannot forward the events of {mnt}: {e}") from None
    forwarder = os.fork()
    if forwarder == 0:
        try:
            abi.prctl(abi.PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() == 1:       # the command already exited
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):           # the command's pipes close when it exits
                os.dup2(devnull, fd)
            events.forward(w, sock)
        finally:
            os._exit(0)
    w.sock.close()      # not w.close(): its shutdown would end the child's connection too
    sock.close()
    return forwarder


def _become(argv: list[str]) -> None:
    """exec argv; RunError with the shell's status if it cannot be run."""
    for name, value in TOOL_ENV.items():
        os.environ.setdefault(name, value)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise RunError(f"{argv[0]}: command not found", 127) from None
    except PermissionError:
        raise RunError(f"{argv[0]}: permission denied", 126) from None


def _supervised_child(argv: list[str], sock: socket.socket, supervisor: int) -> NoReturn:
    """The forked command: dies with the supervisor, installs the filter, hands the listener
    over, becomes argv. Never returns into the command line's code."""
    status = 1
    try:
        abi.prctl(abi.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:      # it died before the line above
            os._exit(status)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # Python's ignore would be inherited
        fd = abi.install_filter(abi.TRAPPED)
        socket.send_fds(sock, [b"L"], [fd])
        os.close(fd)
        sock.close()
        _become(argv)
    except RunError as e:
        print(f"dnumafs: {e}", file=sys.stderr)
        status = e.status
    except (abi.SeccompError, OSError) as e:
        print(f"dnumafs: {e} (--no-syscalls runs without the process view)", file=sys.stderr)
    finally:
        os._exit(status)


def run(mnt: Path, argv: list[str], *, syscalls: bool = True, uevents: bool = False) -> int:
    """Bind the model, then run argv (its exit status is ours; 127 if not found): under the
    supervisor that answers its memory-policy calls for the model, or, without syscalls,
    by becoming it. With uevents, argv gets a network namespace of its own that the model's
    events reach as kernel uevents."""
    if not argv:
        raise RunError("no command given (dnumafs run MNT -- CMD [ARG...])")
    mnt = mnt.resolve()
    if not (mnt / "sys/devices/system/node").is_dir():
        raise RunError(f"{mnt} is not a dnumafs mount (no sys/devices/system/node)")
    bind_model(mnt)
    helpers = (_uevents(_libc(), mnt),) if uevents else ()
    if not syscalls:
        _become(argv)
        return 127
    abi.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    supervisor = os.getpid()
    child = os.fork()
    if child == 0:
        ours.close()
        _supervised_child(argv, theirs, supervisor)
    theirs.close()
    _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
    ours.close()
    if not fds:
        # The child said why and exited before it could be supervised.
        _pid, wstatus = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(wstatus)
    # Imported here, after the fork: the model's modules load numpy, whose threads the
    # child must not inherit.
    from dnumafs.seccomp.supervisor import supervise
    return supervise(mnt, fds[0], child, helpers)
