"""The daemon's whole life: starting a background mount and waiting for it to answer, its pid
file, finding its mount, asking whether it answers, unmounting and stopping it.

The daemon is a process running the file system in its foreground (a fork would not keep its
threads). It holds a pid file in a private runtime directory, keyed by the mount point and
locked (flock) for as long as it lives, so that `dnumafs umount` finds it even after the mount
died, and two mounts of one path cannot both claim it.

A daemon that is stopped (SIGSTOP) or hung takes every request to its mount with it, and a
process that touches the mount waits for it. So nothing here touches a mount point before
knowing from /proc/self/mountinfo what is mounted there and, by a probe in a child process
bounded in time, that its daemon answers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

FSTYPE = "fuse.dnumafs"
PROBE_TIMEOUT = 5.0   # seconds a live daemon has to answer a readdir of its root (under load)
TERM_GRACE = 3.0      # seconds between SIGTERM and SIGKILL when a daemon is stopped
BUSY_WAIT = 5.0       # seconds an unmount of a busy mount is tried again


class DaemonError(Exception):
    """A mount or unmount that did not happen; the message says why, for the user."""


# --- the runtime directory and the pid file ---------------------------------------------------

def runtime_dir() -> Path:
    """Where pid files and default logs live: $DNUMAFS_RUNTIME_DIR, else /run/dnumafs for
    root, else $XDG_RUNTIME_DIR/dnumafs, else /tmp/dnumafs-UID. It must be a directory (not a
    symlink) of this user's, mode 0700: in a shared /tmp another user could have planted it."""
    env = os.environ.get("DNUMAFS_RUNTIME_DIR")
    if env:
        d = Path(env).absolute()
        with contextlib.suppress(OSError):
            d.parent.mkdir(parents=True, exist_ok=True)
    elif os.geteuid() == 0 and os.access("/run", os.W_OK):
        d = Path("/run/dnumafs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "dnumafs"
    else:
        d = Path(f"/tmp/dnumafs-{os.getuid()}")
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DaemonError(f"cannot create the runtime directory {d}: {e.strerror}") from None
    try:
        st = os.lstat(d)
    except OSError as e:
        raise DaemonError(f"the runtime directory {d}: {e.strerror}") from None
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
    elif st.st_mode & 0o077:
        why = f"has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700"
    if why:
        raise DaemonError(f"the runtime directory {d} {why}: remove it, or set "
                          f"DNUMAFS_RUNTIME_DIR to a directory of your own")
    return d


def _key(mp: Path) -> str:
    digest = hashlib.sha256(os.fsencode(mp)).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", mp.name) or "root"
    return f"{name}-{digest}"


def pidfile_path(mp: Path) -> Path:
    return runtime_dir() / f"{_key(mp)}.pid"


def events_path(mp: Path) -> Path:
    """The daemon's events socket (dnumafs.events); short, as a socket's path must be."""
    return runtime_dir() / f"{_key(mp).rsplit('-', 1)[1]}.uevents"


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


def process_stopped(pid: int) -> bool:
    """Whether pid is stopped by a signal (SIGSTOP, SIGTSTP) or a tracer."""
    try:
        return _task_state(Path(f"/proc/{pid}/stat").read_text()) in "Tt"
    except OSError:
        return False


@attrs.frozen
class PidRecord:
    pid: int
    start_time: int
    mountpoint: str


def _read_record(path: Path) -> PidRecord | None:
    try:
        head, mountpoint = path.read_text().split("\n")[:2]
        pid, start = head.split()
        return PidRecord(int(pid), int(start), mountpoint)
    except (OSError, ValueError):
        return None


def daemon_pid(mp: Path) -> int | None:
    """The pid of mp's daemon if it is still running, else None."""
    rec = _read_record(pidfile_path(mp))
    if rec is None or rec.mountpoint != str(mp):
        return None
    if _proc_start_time(rec.pid) != rec.start_time:
        return None
    return rec.pid


@attrs.define
class PidFile:
    """mp's pid file, open and locked. The lock (flock, on the open file, so a child that
    inherits the descriptor holds it too) lives as long as the daemon: whoever holds it owns
    the mount point, and a pid file whose lock is free is stale."""

    mp: Path
    path: Path
    fd: int

    @classmethod
    def claim(cls, mp: Path) -> PidFile:
        """Lock mp's pid file, or say which daemon holds it."""
        path = pidfile_path(mp)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise DaemonError(f"cannot open the pid file {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                rec = _read_record(path)
                who = f" (pid {rec.pid})" if rec is not None else ""
                raise DaemonError(f"{mp}: its daemon{who} is still running or mounting it; "
                                  f"`dnumafs umount {mp}` stops it") from None
            # The previous holder may have unlinked the file between our open and our lock:
            # then the lock is on a file nobody else will look at, so start again.
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(mp, path, fd)
            os.close(fd)

    def write(self, pid: int) -> None:
        """Record pid (and its start time) as mp's daemon."""
        data = f"{pid} {_proc_start_time(pid)}\n{self.mp}\n".encode()
        try:
            os.ftruncate(self.fd, 0)
            if os.pwrite(self.fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise DaemonError(f"cannot write the pid file {self.path}: {e.strerror}") from None

    def remove(self) -> None:
        """Unlink the file (it is ours: we hold its lock) and let go of it."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _remove_stale_pidfile(mp: Path) -> None:
    """Remove mp's pid file unless a daemon still holds it."""
    with contextlib.suppress(DaemonError):
        PidFile.claim(mp).remove()


# --- what is mounted where ----------------------------------------------------------------------

def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@attrs.frozen
class MountEntry:
    mount_id: int
    parent_id: int
    fstype: str


def _mounts_at(path: str) -> list[MountEntry]:
    """The mounts whose mount point is path, from /proc/self/mountinfo (which reads no file
    system, so a hung daemon cannot stall it)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and _unescape(fields[4]) == path:
            found.append(MountEntry(int(fields[0]), int(fields[1]), right.split()[0]))
    return found


def _topmost(entries: list[MountEntry]) -> MountEntry | None:
    """The mount that a path lookup reaches: the one no other mount there is mounted on."""
    parents = {e.parent_id for e in entries}
    top = [e for e in entries if e.mount_id not in parents]
    return top[-1] if top else None


def is_mounted(mp: Path) -> bool:
    """Whether a dnumafs file system is mounted at mp (alive or dead, covered or not)."""
    return any(e.fstype == FSTYPE for e in _mounts_at(str(mp)))


def covering_fstype(mp: Path) -> str | None:
    """The type of the file system mounted over a dnumafs mount at mp, if any."""
    top = _topmost(_mounts_at(str(mp)))
    if top is not None and top.fstype != FSTYPE and is_mounted(mp):
        return top.fstype
    return None


def _dnumafs_on_top(mp: Path) -> bool:
    top = _topmost(_mounts_at(str(mp)))
    return top is not None and top.fstype == FSTYPE


def not_dnumafs(mp: Path) -> str | None:
    """None if a dnumafs mount is the topmost one at mp, else why not, for the user: what
    writes through mp's files must never reach another file system's (the host's /sys)."""
    if _dnumafs_on_top(mp):
        return None
    top = _topmost(_mounts_at(str(mp)))
    what = f"the file system there is {top.fstype}" if top is not None else "not a mount point"
    return f"{mp}: not a mounted dnumafs file system ({what}); nothing written"


def mountpoint_path(mnt: str | os.PathLike[str]) -> Path:
    """The absolute, symlink-free path of a mount point, found without looking up the mount
    point itself when it is one (its lookup would wait on a stopped daemon): the parent is
    resolved, and the name kept if mountinfo has a mount there."""
    absolute = os.path.abspath(mnt)
    parent, name = os.path.split(absolute)
    if name:
        candidate = os.path.join(os.path.realpath(parent), name)
        if _mounts_at(candidate):
            return Path(candidate)
    return Path(os.path.realpath(absolute))


# --- does it answer -----------------------------------------------------------------------------

def answers(mp: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a dnumafs mount is the topmost one at mp and its daemon answers a readdir of the
    root within timeout seconds. The readdir is made by a forked child, which alone waits if
    the daemon does not answer; the caller stays single-threaded (see cli.py)."""
    if not _dnumafs_on_top(mp):
        return False
    child = os.fork()
    if child == 0:                          # the probe
        try:
            os.listdir(mp)
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    # A probe waiting on a request the daemon has not taken dies at SIGKILL; one whose request
    # the daemon took waits until it is answered or the mount is aborted, and is then reaped
    # by init if we have gone.
    os.kill(child, signal.SIGKILL)
    for _ in range(20):
        if os.waitpid(child, os.WNOHANG)[0]:
            break
        time.sleep(0.005)
    return False


def _answers(mp: Path, pid: int | None) -> bool:
    """answers(mp), known at once to be False for a stopped daemon."""
    return not (pid is not None and process_stopped(pid)) and answers(mp)


def not_answering(mp: Path) -> str | None:
    """None if mp's dnumafs mount answers (or there is none on top, for the caller to find
    out); else why not, for the user. Needs no runtime directory: a user reading another's
    mount (--allow-other) has none of the mounting user's."""
    if not _dnumafs_on_top(mp):
        return None
    try:
        pid = daemon_pid(mp)
    except DaemonError:
        pid = None
    if _answers(mp, pid):
        return None
    if pid is None:
        return (f"{mp}: its daemon does not answer (gone, stopped or hung); "
                f"`dnumafs umount {mp}` removes the mount")
    state = "stopped" if process_stopped(pid) else "hung"
    return (f"{mp}: its daemon (pid {pid}) does not answer ({state}); "
            f"`dnumafs umount {mp}` detaches the mount and stops it")


# --- starting -----------------------------------------------------------------------------------

@contextlib.contextmanager
def serving(mp: Path, pidfile_fd: int | None = None) -> Iterator[None]:
    """The daemon's side: own mp's pid file (claimed here, or inherited as pidfile_fd from
    the command that started it in the background, which wrote it), leave the caller's
    working directory, and remove the pid file when done."""
    if pidfile_fd is None:
        pidfile = PidFile.claim(mp)
        try:
            pidfile.write(os.getpid())
        except DaemonError:
            pidfile.remove()
            raise
    else:
        pidfile = PidFile(mp, pidfile_path(mp), pidfile_fd)
    os.chdir("/")
    try:
        yield
    finally:
        pidfile.remove()


def _import_path() -> list[str]:
    """The daemon's import path beyond its interpreter's own: this dnumafs, then the absolute
    entries of PYTHONPATH. Never the working directory (nor a relative entry, which would be
    found from it): code another user left there would run in the daemon, as root maybe."""
    here = str(Path(__file__).resolve().parent.parent)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    return list(dict.fromkeys([here, *extra]))


def daemon_argv(options: list[str]) -> list[str]:
    """The daemon's command line: `dnumafs OPTIONS` in an isolated interpreter (-I: no
    PYTHON* variables, no user site, no script or working directory on the path) with the
    path given explicitly."""
    code = (f"import sys; sys.path[:0] = {_import_path()!r}; "
            f"from dnumafs.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-I", "-c", code, *options]


def wait_answers(child: subprocess.Popen[bytes], mp: Path, timeout: float) -> str | None:
    """Wait until the mount served by child answers (None), or say why it did not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return f"the daemon exited with status {child.returncode}"
        if answers(mp, timeout=max(0.1, min(PROBE_TIMEOUT, deadline - time.monotonic()))):
            return None
        time.sleep(0.05)
    return f"it did not answer within {timeout:g} s"


def _daemon_says(text: str) -> str:
    """What a failed daemon's output says: its fuse and dnumafs messages, else its last
    line."""
    lines = [line for line in text.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("fuse:", "dnumafs:"))]
    return "\n".join(said or lines[-1:])


def _abandon(child: subprocess.Popen[bytes], mp: Path) -> None:
    """Stop a daemon of ours that did not mount in time, and detach what it mounted (the
    pid file is ours, so is any dnumafs mount at mp)."""
    if child.poll() is None:
        kill(child.pid)
    child.poll()
    if _dnumafs_on_top(mp):
        detach(mp)


def start(mp: Path, options: list[str], log_file: Path | None, timeout: float
          ) -> tuple[int, Path | None]:
    """Start a daemon serving mp in the background (`dnumafs mount MP --foreground OPTIONS`)
    and return (its pid, its log) once the mount answers. Its output goes to log_file, or to
    a log in the runtime directory, which is removed if the mount fails (the error says why)."""
    pidfile = PidFile.claim(mp)
    created_log = False
    try:
        if log_file is None:
            log_file = default_log_path(mp)
            created_log = not log_file.exists()
        try:
            out = open(log_file, "ab")
        except OSError as e:
            raise DaemonError(f"cannot open the log {log_file}: {e.strerror}") from None
        with out:
            log_start = out.tell()
            argv = daemon_argv(["mount", str(mp), "--foreground", "--log", str(log_file),
                                "--pidfile-fd", str(pidfile.fd), *options])
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     cwd="/", start_new_session=True, pass_fds=[pidfile.fd])
        try:
            pidfile.write(child.pid)
            reason = wait_answers(child, mp, timeout)
        except BaseException:         # interrupted, or no room: leave nothing half-mounted
            _abandon(child, mp)
            raise
        if reason is not None:
            _abandon(child, mp)
            with open(log_file, "rb") as f:
                f.seek(log_start)
                said = _daemon_says(f.read().decode(errors="replace"))
            where = "" if created_log else f" (log: {log_file})"
            raise DaemonError(f"{mp}: mount failed: {reason}{where}"
                              + (f":\n{said}" if said else ""))
    except BaseException:
        pidfile.remove()
        if created_log and log_file is not None:
            log_file.unlink(missing_ok=True)
        raise
    pidfile.close()                   # the daemon holds the lock from now on
    return child.pid, log_file


# --- stopping -----------------------------------------------------------------------------------

def _fuse_unmount_commands(mp: Path, lazy: bool) -> list[list[str]]:
    cmds = []
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            cmds.append([tool, "-uz" if lazy else "-u", str(mp)])
    if os.geteuid() == 0 and shutil.which("umount"):
        cmds.append(["umount", "-l", str(mp)] if lazy else ["umount", str(mp)])
    return cmds


def unmount(mp: Path, *, lazy: bool = False, timeout: float = 30) -> None:
    """Unmount mp, whose daemon answers, with fusermount (or umount as root). lazy detaches
    it even if busy. A busy mount is tried again for up to BUSY_WAIT seconds: the daemon
    itself holds a directory open for a moment while it completes the kernel's cache of
    listings read in part (for seconds after lsmem on thousands of blocks)."""
    cmds = _fuse_unmount_commands(mp, lazy)
    if not cmds:
        raise DaemonError("neither fusermount nor umount is installed")
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        errors = []
        for cmd in cmds:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout)
            if r.returncode == 0 and not _dnumafs_on_top(mp):
                return
            errors.append(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip() or 'failed'}")
        if lazy or time.monotonic() > deadline or not all("busy" in e for e in errors):
            raise DaemonError("; ".join(errors))
        time.sleep(0.05)


MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def detach(mp: Path) -> None:
    """Detach the mount at mp lazily without looking it up (its daemon may be dead or
    stopped): umount2 as root, else fusermount -uz, bounded in time."""
    if os.geteuid() == 0:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.umount2(os.fsencode(mp), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
            return
        err = ctypes.get_errno()
        raise DaemonError(f"{mp}: cannot detach it: {os.strerror(err)}")
    try:
        unmount(mp, lazy=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DaemonError(f"{mp}: fusermount -uz did not finish") from None


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
    """SIGTERM (the daemon then unmounts cleanly), and SIGKILL if still alive after grace. A
    stopped daemon is continued first, so that it can act on SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return


def stop(mp: Path, *, lazy: bool = False) -> str | None:
    """Unmount mp and see its daemon gone; returns a note for the user, if any.

    Only a dnumafs mount that is the topmost one at mp is touched: with another file system
    mounted over it, nothing is done. A daemon that answers is unmounted normally (EBUSY is
    reported, unless lazy) and exits by itself, or is killed if it does not. A mount whose
    daemon is dead, stopped or hung is detached lazily without being looked up, and the
    daemon killed. After a lazy unmount of a busy mount, the daemon goes on serving the
    processes that still use it, and exits when they are done.
    """
    over = covering_fstype(mp)
    if over is not None:
        raise DaemonError(f"{mp}: a {over} file system is mounted over the dnumafs mount; "
                          f"unmount it first (dnumafs leaves it alone)")
    pid = daemon_pid(mp)
    mounted = _dnumafs_on_top(mp)
    if not mounted and pid is None:
        if pidfile_path(mp).exists():       # a daemon killed after a lazy unmount
            _remove_stale_pidfile(mp)
            if not pidfile_path(mp).exists():
                return f"{mp}: not mounted; removed the pid file its dead daemon left"
        raise DaemonError(f"{mp}: not a mounted dnumafs file system")
    note = None
    live = mounted and pid is not None and _answers(mp, pid)
    if live:
        unmount(mp, lazy=lazy)             # on failure the daemon keeps serving
    elif mounted:
        detach(mp)
        if pid is not None:
            note = f"its daemon (pid {pid}) did not answer: {mp} detached, the daemon killed"
    if pid is not None:
        if live and lazy:
            if not wait_exit(pid, 2.0):
                note = (f"{mp} detached; its daemon (pid {pid}) serves the processes still "
                        f"using it and exits when they are done")
        elif not live:
            kill(pid, grace=TERM_GRACE)
        elif not wait_exit(pid, 5.0):
            kill(pid)
    _remove_stale_pidfile(mp)
    return note
