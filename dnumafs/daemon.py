"""The life of a mount: pid files, finding our mounts, unmounting, stopping the daemon.

The daemon is a process running the file system in its foreground (fusepy cannot daemonize
safely). It records itself in a pid file in a runtime directory, keyed by the mount point, so
that `dnumafs umount` can find it even after the mount died.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import attrs

FSTYPE = "fuse.dnumafs"


class DaemonError(Exception):
    """A mount or unmount that did not happen; the message says why, for the user."""


def runtime_dir() -> Path:
    """Where pid files and default logs live: $DNUMAFS_RUNTIME_DIR, else /run/dnumafs for
    root, else $XDG_RUNTIME_DIR/dnumafs, else /tmp/dnumafs-UID."""
    env = os.environ.get("DNUMAFS_RUNTIME_DIR")
    if env:
        d = Path(env)
    elif os.geteuid() == 0 and os.access("/run", os.W_OK):
        d = Path("/run/dnumafs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "dnumafs"
    else:
        d = Path(f"/tmp/dnumafs-{os.getuid()}")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_uid != os.getuid():
        raise DaemonError(f"{d} belongs to another user; set DNUMAFS_RUNTIME_DIR")
    return d


def mountpoint_path(mnt: str | os.PathLike[str]) -> Path:
    """The absolute, symlink-free path of a mount point. Works on a dead mount too (realpath
    tolerates the ENOTCONN its stat gives)."""
    return Path(os.path.realpath(mnt))


def _key(mp: Path) -> str:
    digest = hashlib.sha256(os.fsencode(mp)).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", mp.name) or "root"
    return f"{name}-{digest}"


def pidfile_path(mp: Path) -> Path:
    return runtime_dir() / f"{_key(mp)}.pid"


def default_log_path(mp: Path) -> Path:
    return runtime_dir() / f"{_key(mp)}.log"


def _task_state(stat_text: str) -> str:
    return stat_text[stat_text.rindex(")") + 2]


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (guards against a recycled pid), or None if it
    is gone or a zombie. A killed process whose main thread is a zombie still holds its files
    (its /dev/fuse among them) until its last thread exits, so every thread is looked at."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    states = [_task_state(text)]
    for task in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(_task_state(task.read_text()))
        except OSError:
            pass             # a thread that just exited
    if all(state in "ZX" for state in states):
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def process_alive(pid: int) -> bool:
    return _proc_start_time(pid) is not None


@attrs.frozen
class PidRecord:
    pid: int
    start_time: int
    mountpoint: str


def write_pidfile(mp: Path) -> Path:
    """Record this process as the daemon of mp."""
    pid = os.getpid()
    path = pidfile_path(mp)
    tmp = path.with_suffix(f".tmp{pid}")
    tmp.write_text(f"{pid} {_proc_start_time(pid)}\n{mp}\n")
    tmp.replace(path)
    return path


def remove_pidfile(mp: Path) -> None:
    """Remove mp's pid file if it is this process's."""
    rec = _read_pidfile(mp)
    if rec is not None and rec.pid == os.getpid():
        pidfile_path(mp).unlink(missing_ok=True)


def _read_pidfile(mp: Path) -> PidRecord | None:
    try:
        head, mountpoint = pidfile_path(mp).read_text().split("\n")[:2]
        pid, start = head.split()
        return PidRecord(int(pid), int(start), mountpoint)
    except (OSError, ValueError):
        return None


def daemon_pid(mp: Path) -> int | None:
    """The pid of mp's daemon if it is still running, else None."""
    rec = _read_pidfile(mp)
    if rec is None or rec.mountpoint != str(mp):
        return None
    if _proc_start_time(rec.pid) != rec.start_time:
        return None
    return rec.pid


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mounted(mp: Path) -> bool:
    """Whether a dnumafs file system is mounted at mp (alive or dead)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and _unescape(fields[4]) == str(mp) and right.split()[:1] == [FSTYPE]:
            return True
    return False


def answers(mp: Path, timeout: float) -> bool:
    """Whether the file system at mp is mounted and its daemon answers a readdir within
    timeout seconds. Probed in a thread, as a hung daemon would block the caller."""
    result: list[bool] = []

    def probe() -> None:
        try:
            result.append(os.path.ismount(mp) and os.listdir(mp) is not None)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def wait_answers(child: subprocess.Popen[bytes], mp: Path, timeout: float) -> str | None:
    """Wait until the mount served by child answers (None), or say why it did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return f"the daemon exited with status {child.returncode}"
        if answers(mp, timeout=max(0.1, deadline - time.monotonic())):
            return None
        time.sleep(0.05)
    return f"it did not answer within {timeout:g} s"


def _fuse_unmount_commands(mp: Path, lazy: bool) -> list[list[str]]:
    cmds = []
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            cmds.append([tool, "-uz" if lazy else "-u", str(mp)])
    if os.geteuid() == 0 and shutil.which("umount"):
        cmds.append(["umount", "-l", str(mp)] if lazy else ["umount", str(mp)])
    return cmds


def unmount(mp: Path, *, lazy: bool = False) -> None:
    """Unmount mp with fusermount (or umount as root). lazy detaches it even if busy, which is
    what a mount whose daemon died needs."""
    errors = []
    cmds = _fuse_unmount_commands(mp, lazy)
    if not cmds:
        raise DaemonError("neither fusermount nor umount is installed")
    for cmd in cmds:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=30)
        if r.returncode == 0 and not is_mounted(mp):
            return
        errors.append(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip() or 'failed'}")
    raise DaemonError("; ".join(errors))


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until pid is gone; True if it went within timeout."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return True


def kill(pid: int, *, grace: float = 5.0) -> None:
    """SIGTERM (libfuse then unmounts cleanly), and SIGKILL if still alive after grace."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return


def stop(mp: Path, *, lazy: bool = False) -> str | None:
    """Unmount mp and see its daemon gone; returns a note for the user, if any.

    A live daemon is unmounted normally (EBUSY is reported, unless lazy) and exits by itself,
    or is killed if it does not. A dead one's mount is detached lazily, as nothing can be
    served from it any more. After a lazy unmount of a busy mount, the daemon goes on serving
    the processes that still use it, and exits when they are done.
    """
    pid = daemon_pid(mp)
    mounted = is_mounted(mp)
    if not mounted and pid is None:
        raise DaemonError(f"{mp}: not a mounted dnumafs file system")
    note = None
    if mounted:
        unmount(mp, lazy=lazy or pid is None)  # on failure the daemon keeps serving
    if pid is not None:
        if mounted and lazy:
            if not wait_exit(pid, 2.0):
                note = (f"{mp} detached; its daemon (pid {pid}) serves the processes still "
                        f"using it and exits when they are done")
        elif not wait_exit(pid, 5.0 if mounted else 0.0):
            kill(pid)
    pidfile_path(mp).unlink(missing_ok=True)
    return note
