"""`dnumafs run`: a command that sees the model at the real /sys and /proc paths.

The command runs in a private mount namespace, where the mount's trees are bound over
the real ones, so unmodified tools (numactl, numastat, lstopo) read the model. Nothing
changes outside that namespace.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# (path inside the mount, real path): directories and single files bound over the real ones.
BINDS: tuple[str, ...] = (
    "sys/devices/system/node",
    "sys/devices/system/cpu",
    "sys/kernel/debug",
    "proc/meminfo",
    "proc/buddyinfo",
    "proc/zoneinfo",
    "proc/vmstat",
)


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


def _enter_namespace(libc: ctypes.CDLL) -> None:
    """A new mount namespace; as a non-root user, inside a new user namespace."""
    if os.geteuid() == 0:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        return
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise RunError(
            f"cannot create a user namespace ({os.strerror(err)}): run as root, or allow "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")


def bind_model(mnt: Path) -> list[str]:
    """In a fresh mount namespace, bind mnt's trees over the real paths; returns them."""
    libc = _libc()
    _enter_namespace(libc)
    # Keep our binds from propagating back to the parent namespace.
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    bound = []
    for rel in BINDS:
        src, dst = mnt / rel, Path("/") / rel
        if not src.exists() or not dst.exists():
            continue
        _check(libc.mount(bytes(src), bytes(dst), None, MS_BIND, None), f"binding {src} on {dst}")
        bound.append(str(dst))
    return bound


def run(mnt: Path, argv: list[str]) -> int:
    """Bind the model, then become argv (so its exit status is ours); 127 if not found."""
    if not argv:
        raise RunError("no command given")
    mnt = mnt.resolve()
    if not (mnt / "sys/devices/system/node").is_dir():
        raise RunError(f"{mnt} is not a dnumafs mount (no sys/devices/system/node)")
    bind_model(mnt)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise RunError(f"{argv[0]}: command not found", 127) from None
    except PermissionError:
        raise RunError(f"{argv[0]}: permission denied", 126) from None
    return 127
