"""The FUSE session: the kernel's protocol (include/uapi/linux/fuse.h) spoken on /dev/fuse,
the mount and unmount, and the table of node ids, serving path-based operations (fuse_ops).

Spoken here rather than through libfuse 2 so that the daemon can say what libfuse 2's
high-level API cannot: that directory listings may be cached by the kernel (no opendir, so
FOPEN_CACHE_DIR, Linux 5.1+), which turns `lsmem` over thousands of memory blocks from four
requests a block into none once warm; and so that the page cache's notices know each path's
node id from the table itself, without a stat that would send a lookup.

Workers are threads each reading one request at a time from the device and writing its
reply; the main thread only waits for the end: a signal (SIGINT, SIGTERM, SIGHUP unmount,
as libfuse does) or the device's ENODEV once the mount is gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

from dnumafs import daemon

log = logging.getLogger(__name__)

FUSE_KERNEL_VERSION = 7
# The protocol minor spoken: 7.31 (Linux 5.4) has everything used here; a newer kernel
# speaks it, an older one is answered in its own (the structures used are those of 7.9).
FUSE_KERNEL_MINOR_VERSION = 31
FUSE_ROOT_ID = 1
# A request is at most max_write bytes of data and a page of header and arguments.
MAX_WRITE = 128 << 10
BUFFER_SIZE = MAX_WRITE + 4096
# readdir's d_ino when the entry's node id is not known (libfuse's FUSE_UNKNOWN_INO).
UNKNOWN_INO = 0xFFFFFFFF

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS = range(8, 18)
RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH = 18, 20, 21, 22, 23, 24, 25
INIT, OPENDIR, READDIR, RELEASEDIR = 26, 27, 28, 29
CREATE, INTERRUPT, DESTROY, BATCH_FORGET, RENAME2 = 35, 36, 38, 42, 45
OPCODE_NAMES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK",
    8: "MKNOD", 9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN",
    15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR",
    22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT",
    27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR", 31: "GETLK", 32: "SETLK",
    33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT", 37: "BMAP", 38: "DESTROY",
    39: "IOCTL", 40: "POLL", 41: "NOTIFY_REPLY", 42: "BATCH_FORGET", 43: "FALLOCATE",
    44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK", 47: "COPY_FILE_RANGE"}
# Requests the kernel expects no answer to.
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT})

# INIT flags.
FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_NO_OPENDIR_SUPPORT = 1 << 24     # the kernel takes ENOSYS from opendir (Linux 5.1)
# open_flags of fuse_open_out.
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
# fuse_setattr_in.valid
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_LOCKOWNER = 1 << 4, 1 << 5, 1 << 6, 1 << 9
FATTR_OWNER = FATTR_MODE | FATTR_UID | FATTR_GID
FATTR_TIMES = FATTR_ATIME | FATTR_MTIME

IN_HEADER = struct.Struct("<IIQQIIIHH")      # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")           # len error unique
INIT_IN = struct.Struct("<IIII")             # major minor max_readahead flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")   # ... max_pages map_alignment flags2 unused[7]
INIT_OUT_COMPAT = struct.Struct("<IIIIHHI")  # before 7.23
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")     # struct fuse_attr
ENTRY_OUT = struct.Struct("<QQQQII")          # nodeid generation entry/attr valid (+nsec)
ATTR_OUT = struct.Struct("<QII")              # attr_valid attr_valid_nsec dummy
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
GETATTR_IN = struct.Struct("<IIQ")            # getattr_flags dummy fh
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")           # fh offset size read_flags lock_owner flags pad
WRITE_IN = READ_IN                            # fh offset size write_flags lock_owner flags pad
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
CREATE_IN = struct.Struct("<IIII")
DIRENT = struct.Struct("<QQII")
KSTATFS = struct.Struct("<QQQQQIIII6I")
FUSE_GETATTR_FH = 1 << 0


@attrs.define
class FileInfo:
    """What an operation learns and says of one open: the open's flags and handle, and whether
    the kernel is to bypass its page cache or keep it."""

    flags: int = 0
    fh: int = 0
    direct_io: bool = False
    keep_cache: bool = False


class Operations(Protocol):
    """The operations on paths served (fuse_ops.TreeOperations), called by name with their
    arguments: getattr(path, fi), readlink(path), opendir(path),
    readdir(path, fh, offset) (an iterable of (name, S_IF* mode, next offset)),
    releasedir(path, fh), open(path, fi), read(path, size, offset, fi),
    write(path, data, offset, fi), truncate(path, length, fi), release(path, fi),
    create(path, mode, fi), chmod(path). Each answers or raises an OSError with an errno."""

    def __call__(self, op: str, *args: Any) -> Any: ...


class MountError(Exception):
    """The mount did not happen; the message says why, for the user."""


def decode(name: bytes) -> str:
    """A name from the kernel as a str: bytes that are not UTF-8 kept as surrogates, so such
    a name is simply not found."""
    return name.decode("utf-8", "surrogateescape")


def child_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


@attrs.define
class NodeTable:
    """The node ids the kernel knows, each a path and the count of lookups the kernel has not
    yet forgotten (the kernel's nlookup). Ids are never reused, so generation is always 0."""

    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _paths: dict[int, str] = attrs.field(factory=lambda: {FUSE_ROOT_ID: "/"})
    _ids: dict[str, int] = attrs.field(factory=lambda: {"/": FUSE_ROOT_ID})
    _counts: dict[int, int] = attrs.field(factory=dict)
    _next: int = FUSE_ROOT_ID + 1

    def path(self, nodeid: int) -> str:
        path = self._paths.get(nodeid)
        if path is None:
            raise OSError(errno.ENOENT, "unknown node id")
        return path

    def find(self, path: str) -> int | None:
        """The id the kernel knows path by, if it knows it."""
        return self._ids.get(path)

    def lookup(self, path: str) -> int:
        """path's id, counted once more (before the answer reaches the kernel)."""
        with self._lock:
            nodeid = self._ids.get(path)
            if nodeid is None:
                nodeid = self._ids[path] = self._next
                self._paths[nodeid] = path
                self._next += 1
            if nodeid != FUSE_ROOT_ID:
                self._counts[nodeid] = self._counts.get(nodeid, 0) + 1
            return nodeid

    def forget(self, nodeid: int, nlookup: int) -> None:
        with self._lock:
            left = self._counts.get(nodeid, 0) - nlookup
            if left > 0:
                self._counts[nodeid] = left
            elif nodeid in self._counts:
                del self._counts[nodeid]
                path = self._paths.pop(nodeid)
                if self._ids.get(path) == nodeid:
                    del self._ids[path]

    def unlink(self, path: str) -> None:
        """path and what was under it are gone: a name that comes back is looked up as a new
        node, not as the inode the kernel may still hold (with its cached pages) for the old
        one. The old ids stay counted until the kernel forgets them."""
        with self._lock:
            for p in [p for p in self._ids if p == path or p.startswith(path + "/")]:
                if p != "/":
                    del self._ids[p]

    def __len__(self) -> int:
        return len(self._paths)


def _split_ns(t: int) -> tuple[int, int]:
    return t // 1_000_000_000, t % 1_000_000_000


def _split_s(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def pack_attr(nodeid: int, st: dict[str, int]) -> bytes:
    size = st.get("st_size", 0)
    atime, atime_ns = _split_ns(st.get("st_atime", 0))
    mtime, mtime_ns = _split_ns(st.get("st_mtime", 0))
    ctime, ctime_ns = _split_ns(st.get("st_ctime", 0))
    return ATTR.pack(nodeid, size, (size + 511) // 512, atime, mtime, ctime,
                     atime_ns, mtime_ns, ctime_ns, st["st_mode"], st.get("st_nlink", 1),
                     st.get("st_uid", 0), st.get("st_gid", 0), 0, st.get("st_blksize", 0), 0)


def pack_dirent(ino: int, off: int, name: bytes, mode: int) -> bytes:
    entry = DIRENT.pack(ino, off, len(name), stat.S_IFMT(mode) >> 12) + name
    return entry + b"\0" * (-len(entry) % 8)


# --- mounting -----------------------------------------------------------------------------

MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount_options(*, allow_other: bool, fd: int | None = None) -> str:
    """The options of the fuse mount: sysfs-like permission checks (the kernel checks mode
    bits for everyone but root), and the descriptor when mounted by this process."""
    opts = ["default_permissions"] + (["allow_other"] if allow_other else [])
    if fd is not None:
        opts[:0] = [f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}",
                    f"group_id={os.getgid()}"]
    return ",".join(opts)


def _check_mountpoint(mountpoint: str) -> None:
    """Refuse what fusermount refuses, as clearly, for root too: a mount point that is not a
    directory, or that is not empty (a mount would hide what is there)."""
    try:
        st = os.stat(mountpoint)
    except OSError as e:
        raise MountError(f"bad mount point {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"bad mount point {mountpoint}: Not a directory")
    try:
        with os.scandir(mountpoint) as entries:
            if next(entries, None) is not None:
                raise MountError(f"mountpoint {mountpoint} is not empty")
    except OSError as e:
        raise MountError(f"bad mount point {mountpoint}: {e.strerror}") from None


def mount(mountpoint: str, *, allow_other: bool) -> int:
    """Mount a fuse file system at mountpoint; the /dev/fuse descriptor that serves it. As
    root with mount(2), as anyone else through fusermount (which hands the descriptor back
    over a socket, as libfuse has it)."""
    _check_mountpoint(mountpoint)
    if os.geteuid() == 0:
        try:
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise MountError(f"cannot open /dev/fuse: {e.strerror}") from None
        opts = mount_options(allow_other=allow_other, fd=fd).encode()
        if _libc.mount(b"dnumafs", os.fsencode(mountpoint), b"fuse.dnumafs",
                       MS_NOSUID | MS_NODEV, opts) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise MountError(f"mount of {mountpoint} failed: {os.strerror(err)}")
        return fd
    return _mount_fusermount(mountpoint, allow_other)


def _mount_fusermount(mountpoint: str, allow_other: bool) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        opts = f"fsname=dnumafs,subtype=dnumafs,{mount_options(allow_other=allow_other)}"
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        for tool in ("fusermount", "fusermount3"):
            try:
                r = subprocess.run([tool, "-o", opts, "--", mountpoint], env=env,
                                   pass_fds=[theirs.fileno()], capture_output=True,
                                   text=True, timeout=30)
            except FileNotFoundError:
                continue
            except subprocess.TimeoutExpired:
                raise MountError(f"{tool} did not finish") from None
            if r.returncode != 0:
                said = r.stderr.strip().splitlines()
                raise MountError(said[-1] if said else f"{tool} failed ({r.returncode})")
            ours.settimeout(5)
            try:
                _, fds, _, _ = socket.recv_fds(ours, 1, 1)
            except OSError as e:
                raise MountError(f"{tool} gave no descriptor: {e}") from None
            if not fds:
                raise MountError(f"{tool} gave no descriptor")
            os.set_inheritable(fds[0], False)
            return fds[0]
    raise MountError("neither fusermount nor fusermount3 is installed")


# --- the session ----------------------------------------------------------------------------

# How long after a listing was served to its last entry the daemon waits for its reader's own
# read past the end, before reading past it itself (DirCompleter).
COMPLETE_AFTER = 0.05


@attrs.define(eq=False)
class DirCompleter:
    """Completes the kernel's cache of directory listings (FOPEN_CACHE_DIR).

    The kernel keeps a listing only once a reader has read it from its start past its last
    entry (the empty answer is the end: the protocol has no other). A reader that stops at
    the entry it wanted, as lsmem stops at memoryN's nodeM, leaves it unkept, and every later
    reader asks again (and stats the directory, whose atime the uncached read invalidated).
    So a listing served to its last entry with no read past its end soon after is read to its
    end by the daemon itself, through the mount; the kernel then answers later readers alone.
    """

    mountpoint: str
    stopped: threading.Event
    _pending: dict[str, float] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _wake: threading.Event = attrs.field(factory=threading.Event)

    def served(self, path: str, last: bool, empty: bool) -> None:
        """A READDIR of path was answered: with the listing's last entry, or empty (a read
        past the end: the kernel keeps what it read from the start)."""
        if not (last or empty):
            return
        with self._lock:
            if empty:
                self._pending.pop(path, None)
                return
            self._pending[path] = time.monotonic()
        self._wake.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self.stopped.is_set():
                time.sleep(COMPLETE_AFTER)
                due = time.monotonic() - COMPLETE_AFTER
                with self._lock:
                    paths = [p for p, t in self._pending.items() if t <= due]
                    for p in paths:
                        del self._pending[p]
                    more = bool(self._pending)
                for path in paths:
                    if self.stopped.is_set():
                        return
                    self.read_to_end(path)
                if not more:
                    break

    def read_to_end(self, path: str) -> None:
        try:
            fd = os.open(self.mountpoint + path,
                         os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return                  # gone meanwhile, or not ours to read
        try:
            os.listdir(fd)
            # The reads invalidated the directory's atime: fetch its attributes now, or the
            # next reader's opendir (glibc stats it) would ask for them.
            os.fstat(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

Handler = Callable[[int, int, memoryview], bytes | None]


@attrs.define(eq=False)
class Session:
    """One mount served: requests read from fd, answered by ops."""

    ops: Operations
    fd: int
    # Entry and attribute lifetimes handed to the kernel, in seconds.
    entry_timeout: float
    attr_timeout: float
    # Whether directories may be listed from the kernel's cache (opendir answers ENOSYS).
    cache_dirs: bool = False
    debug: bool = False
    nodes: NodeTable = attrs.field(factory=NodeTable)
    # Called once the kernel has spoken INIT, with the session (notices may then go out).
    on_init: Callable[[Session], None] | None = None
    stopped: threading.Event = attrs.field(factory=threading.Event)
    # The mount went away by itself (unmounted from outside): nothing left to unmount.
    gone: bool = False
    minor: int = FUSE_KERNEL_MINOR_VERSION
    completer: DirCompleter | None = None
    # The threads serving requests: as many as are busy and one more, at most max_threads.
    max_threads: int = 1
    threads: list[threading.Thread] = attrs.field(factory=list)
    _idle: int = 0
    _pool_lock: threading.Lock = attrs.field(factory=threading.Lock)
    _handlers: dict[int, Handler] = attrs.field(factory=dict)
    _entry_valid: tuple[int, int] = (0, 0)      # the timeouts as (seconds, nanoseconds)
    _attr_valid: tuple[int, int] = (0, 0)

    def __attrs_post_init__(self) -> None:
        self._handlers.update({
            INIT: self.do_init, LOOKUP: self.do_lookup, FORGET: self.do_forget,
            BATCH_FORGET: self.do_batch_forget, GETATTR: self.do_getattr,
            SETATTR: self.do_setattr, READLINK: self.do_readlink, OPEN: self.do_open,
            READ: self.do_read, WRITE: self.do_write, RELEASE: self.do_release,
            OPENDIR: self.do_opendir, READDIR: self.do_readdir,
            RELEASEDIR: self.do_releasedir, CREATE: self.do_create, STATFS: self.do_statfs,
            INTERRUPT: lambda *_: None, DESTROY: self.do_destroy})
        for op in (SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, RENAME2):
            self._handlers[op] = self.do_eperm
        self._entry_valid = _split_s(self.entry_timeout)
        self._attr_valid = _split_s(self.attr_timeout)

    # --- the loop -------------------------------------------------------------------------

    def start_worker(self) -> None:
        with self._pool_lock:
            if len(self.threads) >= self.max_threads:
                return
            t = threading.Thread(target=self.worker, name=f"dnumafs-fuse-{len(self.threads)}",
                                 daemon=True)
            self.threads.append(t)
        t.start()

    def worker(self) -> None:
        """Serve requests until the device says the mount is gone. The last idle worker to
        take a request starts another (up to max_threads), as libfuse's loop does: a request
        may wait for another (a write for its notices, a notice for a page being read)."""
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        while not self.stopped.is_set():
            with self._pool_lock:
                self._idle += 1
            try:
                n = os.readv(self.fd, [buf])
            except OSError as e:
                with self._pool_lock:
                    self._idle -= 1
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue        # a request interrupted before it was read
                if e.errno != errno.ENODEV:
                    log.error("reading /dev/fuse: %s", e.strerror)
                self.gone = True
                self.stopped.set()
                return
            with self._pool_lock:
                self._idle -= 1
                more = self._idle == 0
            if more:
                self.start_worker()
            if n == 0:
                self.gone = True
                self.stopped.set()
                return
            self.handle(view[:n])

    def handle(self, req: memoryview) -> None:
        _, opcode, unique, nodeid, _, _, pid, _, _ = IN_HEADER.unpack_from(req)
        arg = req[IN_HEADER.size:]
        if self.debug:
            print(f"unique: {unique}, opcode: {OPCODE_NAMES.get(opcode, '?')} ({opcode}), "
                  f"nodeid: {nodeid}, insize: {len(req)}, pid: {pid}", file=sys.stderr,
                  flush=True)
        handler = self._handlers.get(opcode)
        error = 0
        body: bytes | None = b""
        if handler is None:
            error = errno.ENOSYS
        else:
            try:
                body = handler(nodeid, unique, arg)
            except OSError as e:        # the operations' own (they let nothing else out)
                error = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO
            except Exception:
                log.error("%s failed", OPCODE_NAMES.get(opcode, opcode), exc_info=True)
                error = errno.EIO
        if opcode in NO_REPLY:
            return
        self.reply(unique, error, body or b"")

    def reply(self, unique: int, error: int, body: bytes) -> None:
        header = OUT_HEADER.pack(OUT_HEADER.size + (0 if error else len(body)), -error,
                                 unique)
        try:
            os.writev(self.fd, [header] if error else [header, body])
        except OSError as e:
            # ENOENT: the request was interrupted and is no more; ENODEV: the mount is gone
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("answering request %d: %s", unique, e.strerror)

    # --- what each request does --------------------------------------------------------

    def do_init(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        major, minor, max_readahead, flags = INIT_IN.unpack_from(arg)
        if major != FUSE_KERNEL_VERSION:
            raise OSError(errno.EPROTO, f"the kernel speaks FUSE {major}")
        self.minor = min(minor, FUSE_KERNEL_MINOR_VERSION)
        if not flags & FUSE_NO_OPENDIR_SUPPORT:     # before 5.1: opendir is answered
            self.cache_dirs = False
            self.completer = None
        want = flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS)
        if self.on_init is not None:
            self.on_init(self)
        if self.minor < 23:
            return INIT_OUT_COMPAT.pack(FUSE_KERNEL_VERSION, self.minor, max_readahead, want,
                                        0, 0, MAX_WRITE)
        return INIT_OUT.pack(FUSE_KERNEL_VERSION, self.minor, max_readahead, want, 0, 0,
                             MAX_WRITE, 1, 0, 0, 0, *([0] * 7))

    def do_destroy(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        self.stopped.set()
        return b""

    def _entry(self, path: str) -> bytes:
        """path's entry, counted as a lookup: its id is taken before its attributes are made,
        so that a change told meanwhile finds the id the answer will give."""
        nodeid = self.nodes.lookup(path)
        try:
            st = self.ops("getattr", path)
        except BaseException:
            self.nodes.forget(nodeid, 1)
            raise
        return ENTRY_OUT.pack(nodeid, 0, self._entry_valid[0], self._attr_valid[0],
                              self._entry_valid[1], self._attr_valid[1]) + pack_attr(nodeid, st)

    def _attr_out(self, nodeid: int, st: dict[str, int]) -> bytes:
        return ATTR_OUT.pack(self._attr_valid[0], self._attr_valid[1], 0) + pack_attr(nodeid, st)

    def do_lookup(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        name = decode(bytes(arg).split(b"\0", 1)[0])
        path = child_path(self.nodes.path(nodeid), name)
        if self.debug:
            print(f"LOOKUP {path}", file=sys.stderr, flush=True)
        return self._entry(path)

    def do_forget(self, nodeid: int, unique: int, arg: memoryview) -> None:
        self.nodes.forget(nodeid, FORGET_IN.unpack_from(arg)[0])

    def do_batch_forget(self, nodeid: int, unique: int, arg: memoryview) -> None:
        count = BATCH_FORGET_IN.unpack_from(arg)[0]
        for i in range(count):
            one, nlookup = FORGET_ONE.unpack_from(arg, BATCH_FORGET_IN.size + i * FORGET_ONE.size)
            self.nodes.forget(one, nlookup)

    def do_getattr(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        flags, _, fh = GETATTR_IN.unpack_from(arg)
        fi = FileInfo(fh=fh) if flags & FUSE_GETATTR_FH else None
        return self._attr_out(nodeid, self.ops("getattr", self.nodes.path(nodeid), fi))

    def do_setattr(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        """Only a size can be set (a truncate, a no-op, for `echo 5 > f`); a mode, an owner
        or times (touch) are refused as sysfs refuses them (EPERM). truncate(2) sends its own
        mtime with the size: that one is taken with it."""
        valid, _, fh, size = SETATTR_IN.unpack_from(arg)[:4]
        path = self.nodes.path(nodeid)
        if valid & FATTR_OWNER or (valid & FATTR_TIMES and not valid & FATTR_SIZE):
            self.ops("chmod", path)
        if valid & FATTR_SIZE:
            self.ops("truncate", path, size, FileInfo(fh=fh) if valid & FATTR_FH else None)
        return self._attr_out(nodeid, self.ops("getattr", path))

    def do_readlink(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        return self.ops("readlink", self.nodes.path(nodeid)).encode("utf-8", "surrogateescape")

    def do_open(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fi = FileInfo(flags=OPEN_IN.unpack_from(arg)[0])
        self.ops("open", self.nodes.path(nodeid), fi)
        return OPEN_OUT.pack(fi.fh, (FOPEN_DIRECT_IO if fi.direct_io else 0)
                             | (FOPEN_KEEP_CACHE if fi.keep_cache else 0), 0)

    def do_read(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fh, offset, size, _, _, flags, _ = READ_IN.unpack_from(arg)
        return self.ops("read", self.nodes.path(nodeid), size, offset, FileInfo(flags=flags, fh=fh))

    def do_write(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fh, offset, size, _, _, flags, _ = WRITE_IN.unpack_from(arg)
        data = bytes(arg[WRITE_IN.size:WRITE_IN.size + size])
        written = self.ops("write", self.nodes.path(nodeid), data, offset,
                                 FileInfo(flags=flags, fh=fh))
        return WRITE_OUT.pack(written, 0)

    def do_release(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fh, flags, _, _ = RELEASE_IN.unpack_from(arg)
        self.ops("release", self.nodes.path(nodeid), FileInfo(flags=flags, fh=fh))
        return b""

    def do_opendir(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        if self.cache_dirs:
            # The kernel then sends no opendir or releasedir again, and lists each directory
            # from its own cache (FOPEN_CACHE_DIR) until told the listing changed.
            raise OSError(errno.ENOSYS, "no opendir")
        return OPEN_OUT.pack(self.ops("opendir", self.nodes.path(nodeid)), 0, 0)

    def do_readdir(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fh, offset, size = READ_IN.unpack_from(arg)[:3]
        path = self.nodes.path(nodeid)
        out: list[bytes] = []
        used = 0
        last = True
        for name, mode, off in self.ops("readdir", path, fh or None, offset):
            entry = pack_dirent(UNKNOWN_INO, off, name.encode("utf-8", "surrogateescape"), mode)
            if used + len(entry) > size:
                last = False
                break
            out.append(entry)
            used += len(entry)
        if self.completer is not None:
            self.completer.served(path, last and bool(out), not out)
        return b"".join(out)

    def do_releasedir(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        fh = RELEASE_IN.unpack_from(arg)[0]
        self.ops("releasedir", self.nodes.path(nodeid), fh)
        return b""

    def do_create(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        flags, mode = CREATE_IN.unpack_from(arg)[:2]
        name = decode(bytes(arg[CREATE_IN.size:]).split(b"\0", 1)[0])
        self.ops("create", child_path(self.nodes.path(nodeid), name), mode, FileInfo(flags=flags))
        raise OSError(errno.EACCES, "create")   # never reached: create always refuses

    def do_statfs(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        # What libfuse answers for a file system without statfs: nothing used, names of 255.
        return KSTATFS.pack(0, 0, 0, 0, 0, 512, 255, 0, 0, *([0] * 6))

    def do_eperm(self, nodeid: int, unique: int, arg: memoryview) -> bytes:
        """sysfs refuses to make, remove, link or rename anything."""
        raise OSError(errno.EPERM, "not permitted")


def serve_session(session: Session, mountpoint: str) -> None:
    """Serve session until a signal or the end of the mount, then unmount. SIGINT, SIGTERM
    and SIGHUP end it, as with libfuse; SIGPIPE is ignored."""
    def stop(signum: int, frame: Any) -> None:
        session.stopped.set()

    previous: dict[signal.Signals, Any] = {}
    helpers = []
    if session.cache_dirs:
        session.completer = DirCompleter(os.path.abspath(mountpoint), session.stopped)
        helpers.append(threading.Thread(target=session.completer.run, name="dnumafs-readdir",
                                        daemon=True))
    try:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[number] = signal.signal(number, stop)
        previous[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for h in helpers:
            h.start()
        session.start_worker()
        while not session.stopped.wait(3600):   # interruptible: the signal handler runs
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if not session.gone:            # detached lazily, as libfuse does
            with contextlib.suppress(daemon.DaemonError, subprocess.TimeoutExpired):
                daemon.detach(Path(mountpoint))
        deadline = time.monotonic() + 0.5
        workers = helpers + session.threads
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        # A worker still reading would read whatever took the descriptor's number next: it
        # is closed only once none is (else at exit).
        if not any(w.is_alive() for w in workers):
            os.close(session.fd)
