"""seccomp(2) user notification from Python: the BPF program, the listener's ioctls and the
target's memory (process_vm_readv/writev). x86_64 only, as the filter checks.

Imports nothing of the model (numpy's threads must not exist when run forks the child that
installs the filter).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from collections.abc import Iterable

import attrs

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
NR_OPEN = 2
NR_SCHED_SETAFFINITY = 203
NR_SCHED_GETAFFINITY = 204
NR_MBIND = 237
NR_SET_MEMPOLICY = 238
NR_GET_MEMPOLICY = 239
NR_EXIT_GROUP = 231
NR_MIGRATE_PAGES = 256
NR_OPENAT = 257
NR_MOVE_PAGES = 279
NR_SECCOMP = 317
NR_SET_MEMPOLICY_HOME_NODE = 450
NR_MEMPOLICY = (NR_MBIND, NR_SET_MEMPOLICY, NR_GET_MEMPOLICY, NR_MIGRATE_PAGES,
                NR_MOVE_PAGES, NR_SET_MEMPOLICY_HOME_NODE)
NR_OPENS = (NR_OPEN, NR_OPENAT)
NR_AFFINITY = (NR_SCHED_SETAFFINITY, NR_SCHED_GETAFFINITY)
# What the filter sends to the supervisor (dnumafs.seccomp.calls answers each).
TRAPPED = NR_MEMPOLICY + NR_AFFINITY + NR_OPENS + (NR_EXIT_GROUP,)
X32_SYSCALL_BIT = 0x40000000

AUDIT_ARCH_X86_64 = 0xC000003E

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

# struct seccomp_data's offsets, for the filter's loads
DATA_NR = 0
DATA_ARCH = 4

# classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06

NOTIF = struct.Struct("=QII iI Q 6Q")          # struct seccomp_notif
NOTIF_RESP = struct.Struct("=QqiI")            # struct seccomp_notif_resp
NOTIF_ADDFD = struct.Struct("=QIIII")          # struct seccomp_notif_addfd


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | ord("!") << 8 | nr


_IOW, _IOWR = 1, 3
IOCTL_NOTIF_RECV = _ioc(_IOWR, 0, NOTIF.size)
IOCTL_NOTIF_SEND = _ioc(_IOWR, 1, NOTIF_RESP.size)
IOCTL_NOTIF_ID_VALID = _ioc(_IOW, 2, 8)
IOCTL_NOTIF_ADDFD = _ioc(_IOW, 3, NOTIF_ADDFD.size)
IOCTL_NOTIF_SET_FLAGS = _ioc(_IOW, 4, 8)


class SeccompError(Exception):
    """The filter could not be installed: why, in words."""


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_LIBC = libc()
_LIBC.syscall.restype = ctypes.c_long
_LIBC.process_vm_readv.restype = ctypes.c_ssize_t
_LIBC.process_vm_writev.restype = ctypes.c_ssize_t


def _stmt(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program(trapped: Iterable[int]) -> bytes:
    """The BPF program: a call of another architecture, or an x32 one, is let through
    untouched (the policy calls of a 32-bit program reach the real kernel); each trapped
    x86_64 call goes to the listener; the rest are allowed."""
    nrs = sorted(set(trapped))
    prog = [_stmt(BPF_LD_W_ABS, DATA_ARCH),
            _stmt(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            _stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
            _stmt(BPF_LD_W_ABS, DATA_NR),
            _stmt(BPF_JGE_K, X32_SYSCALL_BIT, len(nrs), 0)]
    # one compare per call, each jumping to the USER_NOTIF return after the ALLOW one
    prog += [_stmt(BPF_JEQ_K, nr, len(nrs) - i, 0) for i, nr in enumerate(nrs)]
    prog += [_stmt(BPF_RET_K, SECCOMP_RET_ALLOW), _stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(trapped: Iterable[int]) -> int:
    """Install the filter in this process; the listener's descriptor. Without CAP_SYS_ADMIN
    (in its user namespace) the kernel wants no_new_privs first."""
    code = filter_program(trapped)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    for flags in (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                  SECCOMP_FILTER_FLAG_NEW_LISTENER):
        fd = _LIBC.syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog))
        err = ctypes.get_errno()
        if fd < 0 and err == errno.EACCES:
            _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            fd = _LIBC.syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags,
                               ctypes.byref(prog))
            err = ctypes.get_errno()
        if fd >= 0:
            return int(fd)
        # Before Linux 5.19 there is no WAIT_KILLABLE_RECV: without it a signal during a
        # notification is seen by the program (EINTR, or a restart), but it still works.
        if err != errno.EINVAL:
            break
    if err == errno.EBUSY:
        raise SeccompError("this process already has a seccomp listener")
    raise SeccompError(f"cannot install the seccomp filter: {os.strerror(err)}")


def prctl(option: int, arg: int) -> None:
    if _LIBC.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@attrs.frozen
class Notification:
    """struct seccomp_notif: the call's id, the task (thread id) and the call's arguments."""

    id: int
    pid: int
    nr: int
    args: tuple[int, ...]


@attrs.define
class Listener:
    """The supervisor's end of the filter."""

    fd: int
    sync_wakeup: bool = False

    def __attrs_post_init__(self) -> None:
        # Linux 6.6+: the woken task runs on the supervisor's CPU, cutting a trapped call's
        # round trip; the flag is passed by value. Older kernels: quietly without.
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            self.sync_wakeup = True
        except OSError:
            self.sync_wakeup = False

    def recv(self) -> Notification | None:
        """The next notification; None if its task went away before it was read."""
        buf = bytearray(NOTIF.size)
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return None
            raise
        nid, pid, _flags, nr, _arch, _ip, *args = NOTIF.unpack(buf)
        return Notification(nid, pid, nr, tuple(args))

    def send(self, nid: int, val: int = 0, error: int = 0, flags: int = 0) -> None:
        """Answer a call: val, or -error (error > 0); a task gone meanwhile is no fault."""
        buf = bytearray(NOTIF_RESP.pack(nid, val, -error if error else 0, flags))
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_SEND, buf, True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def allow(self, nid: int) -> None:
        """Let the call go on to the kernel as made."""
        self.send(nid, flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def valid(self, nid: int) -> bool:
        """The call still waits: its task is alive and the memory read was the task's."""
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
        except OSError:
            return False
        return True

    def send_fd(self, nid: int, fd: int, newfd_flags: int) -> None:
        """Install fd in the task and answer the call with its number, in one step."""
        buf = bytearray(NOTIF_ADDFD.pack(nid, SECCOMP_ADDFD_FLAG_SEND, fd, 0, newfd_flags))
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_ADDFD, buf, True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MemoryFault(Exception):
    """The target's memory could not be read or written there: the call's EFAULT."""


def read_memory(pid: int, addr: int, size: int) -> bytes:
    """size bytes of pid's memory at addr, all of them or MemoryFault."""
    if size == 0:
        return b""
    if addr < 0 or addr + size > 1 << 64:
        raise MemoryFault(addr)
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.addressof(buf), size)
    remote = _Iovec(addr, size)
    got = _LIBC.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got != size:
        raise MemoryFault(addr)
    return buf.raw


def write_memory(pid: int, addr: int, data: bytes) -> None:
    if not data:
        return
    if addr < 0 or addr + len(data) > 1 << 64:
        raise MemoryFault(addr)
    buf = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.addressof(buf), len(data))
    remote = _Iovec(addr, len(data))
    put = _LIBC.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if put != len(data):
        raise MemoryFault(addr)


def real_move_pages(pid: int, pages: list[int]) -> list[int]:
    """The real kernel's move_pages(pid, pages, NULL): each page's host node, or -ENOENT
    (not present) or -EFAULT (not mapped); used for presence only."""
    n = len(pages)
    arr = (ctypes.c_void_p * n)(*pages)
    status = (ctypes.c_int * n)()
    rc = _LIBC.syscall(NR_MOVE_PAGES, pid, n, arr, None, status, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return list(status)
