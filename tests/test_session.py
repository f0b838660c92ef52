"""The FUSE session: the kernel's protocol as session.py speaks it, request by request on a
pipe, and the node table; then, through a real mount, the kernel keeping directory listings
that a reader read only in part."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import struct
import subprocess
import time

import pytest

from dnumafs import daemon
from dnumafs.vfs import session as fs
from dnumafs.vfs.fuse_ops import TreeOperations
from dnumafs.vfs.tree import Attr, StaticDir, Symlink

# --- the node table ----------------------------------------------------------------------------

def test_node_ids_are_counted_and_never_reused():
    t = fs.NodeTable()
    a = t.lookup("/a")
    assert t.lookup("/a") == a and t.find("/a") == a and t.path(a) == "/a"
    t.forget(a, 1)
    assert t.find("/a") == a                 # one lookup still counted
    t.forget(a, 1)
    assert t.find("/a") is None
    with pytest.raises(OSError) as e:
        t.path(a)
    assert e.value.errno == errno.ENOENT
    assert t.lookup("/a") > a                # a new id, never the old one
    t.forget(fs.FUSE_ROOT_ID, 5)
    assert t.path(fs.FUSE_ROOT_ID) == "/" and t.find("/") == fs.FUSE_ROOT_ID


def test_dirents_are_aligned_and_typed():
    for name in (b"a", b"abcdefgh", b"x" * 13):
        d = fs.pack_dirent(7, 42, name, stat.S_IFLNK)
        assert len(d) % 8 == 0
        ino, off, namelen, kind = fs.DIRENT.unpack_from(d)
        assert (ino, off, namelen, kind) == (7, 42, len(name), 10)      # DT_LNK
        assert d[fs.DIRENT.size:fs.DIRENT.size + namelen] == name


# --- requests on a pipe --------------------------------------------------------------------------

@pytest.fixture
def wire():
    """A session over a small tree, whose replies go to a pipe: ask(opcode, nodeid, arg)
    returns (errno, body), or None when the request has no reply."""
    stored: list[bytes] = []
    root = StaticDir({"f": Attr(show=lambda: "hello\n", store=stored.append),
                      "d": StaticDir({}), "l": Symlink(lambda: "f")})
    r, w = os.pipe()
    os.set_blocking(r, False)
    s = fs.Session(TreeOperations(root), w, entry_timeout=1.0, attr_timeout=2.5)
    unique = iter(range(2, 10**6, 2))

    def ask(opcode: int, nodeid: int, arg: bytes = b""):
        u = next(unique)
        req = fs.IN_HEADER.pack(fs.IN_HEADER.size + len(arg), opcode, u, nodeid, 0, 0, 1, 0,
                                0) + arg
        s.handle(memoryview(req))
        try:
            out = os.read(r, 1 << 20)
        except BlockingIOError:
            return None
        length, error, got = fs.OUT_HEADER.unpack_from(out)
        assert length == len(out) and got == u
        return -error, out[fs.OUT_HEADER.size:]

    ask.session = s
    ask.stored = stored
    yield ask
    os.close(r)
    os.close(w)


def test_init_speaks_the_kernels_minor_or_ours(wire):
    err, body = wire(fs.INIT, 0, fs.INIT_IN.pack(7, 45, 1 << 17, 0xFFFFFFFF))
    major, minor, readahead, flags = struct.unpack_from("<IIII", body)
    assert err == 0 and (major, minor) == (7, fs.FUSE_KERNEL_MINOR_VERSION)
    assert len(body) == fs.INIT_OUT.size and readahead == 1 << 17
    assert flags == fs.FUSE_ASYNC_READ | fs.FUSE_BIG_WRITES | fs.FUSE_PARALLEL_DIROPS
    err, body = wire(fs.INIT, 0, fs.INIT_IN.pack(7, 19, 1 << 17, 0))
    assert err == 0 and struct.unpack_from("<II", body) == (7, 19)
    assert len(body) == fs.INIT_OUT_COMPAT.size
    assert wire(fs.INIT, 0, fs.INIT_IN.pack(8, 0, 0, 0))[0] == errno.EPROTO


def test_lookup_getattr_readlink_and_forget(wire):
    err, body = wire(fs.LOOKUP, fs.FUSE_ROOT_ID, b"f\0")
    assert err == 0
    nodeid, gen, entry_valid, attr_valid, _, attr_ns = fs.ENTRY_OUT.unpack_from(body)
    assert gen == 0 and entry_valid == 1 and (attr_valid, attr_ns) == (2, 500_000_000)
    attr = fs.ATTR.unpack_from(body, fs.ENTRY_OUT.size)
    assert attr[0] == nodeid and attr[1] == 4096 and attr[9] == stat.S_IFREG | 0o644
    assert wire(fs.LOOKUP, fs.FUSE_ROOT_ID, b"missing\0") == (errno.ENOENT, b"")
    assert wire(fs.LOOKUP, fs.FUSE_ROOT_ID, b"\xff\xfe\0") == (errno.ENOENT, b"")
    err, body = wire(fs.GETATTR, nodeid, fs.GETATTR_IN.pack(0, 0, 0))
    assert err == 0 and fs.ATTR.unpack_from(body, fs.ATTR_OUT.size)[0] == nodeid
    err, body = wire(fs.LOOKUP, fs.FUSE_ROOT_ID, b"l\0")
    link = fs.ENTRY_OUT.unpack_from(body)[0]
    assert wire(fs.READLINK, link) == (0, b"f")
    assert wire(fs.READLINK, nodeid) == (errno.EINVAL, b"")
    assert wire(fs.FORGET, nodeid, fs.FORGET_IN.pack(1)) is None      # no reply
    assert wire(fs.GETATTR, nodeid, fs.GETATTR_IN.pack(0, 0, 0))[0] == errno.ENOENT
    assert wire(fs.BATCH_FORGET, 0, fs.BATCH_FORGET_IN.pack(1, 0)
                + fs.FORGET_ONE.pack(link, 1)) is None
    assert wire.session.nodes.find("/l") is None


def test_open_read_write_release_and_setattr(wire):
    nodeid = fs.ENTRY_OUT.unpack_from(wire(fs.LOOKUP, fs.FUSE_ROOT_ID, b"f\0")[1])[0]
    err, body = wire(fs.OPEN, nodeid, fs.OPEN_IN.pack(os.O_RDWR, 0))
    fh, flags, _ = fs.OPEN_OUT.unpack(body)
    assert err == 0 and fh > 0 and flags & fs.FOPEN_DIRECT_IO
    assert wire(fs.READ, nodeid, fs.READ_IN.pack(fh, 0, 3, 0, 0, 0, 0)) == (0, b"hel")
    assert wire(fs.READ, nodeid, fs.READ_IN.pack(fh, 3, 100, 0, 0, 0, 0)) == (0, b"lo\n")
    err, body = wire(fs.WRITE, nodeid, fs.WRITE_IN.pack(fh, 0, 3, 0, 0, 0, 0) + b"12\n")
    assert err == 0 and fs.WRITE_OUT.unpack(body)[0] == 3 and wire.stored == [b"12\n"]
    # a truncate (O_TRUNC; truncate(2), with its own mtime; ftruncate) is taken, a chmod, a
    # chown or a touch not
    for valid in (fs.FATTR_SIZE | fs.FATTR_LOCKOWNER,
                  fs.FATTR_SIZE | fs.FATTR_MTIME | fs.FATTR_LOCKOWNER,
                  fs.FATTR_SIZE | fs.FATTR_FH | fs.FATTR_LOCKOWNER):
        assert wire(fs.SETATTR, nodeid, fs.SETATTR_IN.pack(valid, 0, fh, *([0] * 13)))[0] == 0
    for valid in (fs.FATTR_MODE, fs.FATTR_UID, fs.FATTR_ATIME | fs.FATTR_MTIME,
                  fs.FATTR_MTIME, fs.FATTR_ATIME):
        assert wire(fs.SETATTR, nodeid, fs.SETATTR_IN.pack(valid, 0, *([0] * 14))) == (
            errno.EPERM, b"")
    assert wire(fs.RELEASE, nodeid, fs.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")
    assert wire(fs.READ, nodeid, fs.READ_IN.pack(fh, 0, 3, 0, 0, 0, 0))[0] == errno.EBADF


def test_readdir_fills_the_buffer_and_goes_on_from_the_offset(wire):
    err, body = wire(fs.OPENDIR, fs.FUSE_ROOT_ID, fs.OPEN_IN.pack(0, 0))
    fh = fs.OPEN_OUT.unpack(body)[0]
    names, offset = [], 0
    while True:      # a buffer of 40 bytes takes one short entry at a time
        err, body = wire(fs.READDIR, fs.FUSE_ROOT_ID, fs.READ_IN.pack(fh, offset, 40, 0, 0,
                                                                      0, 0))
        assert err == 0
        if not body:
            break
        _, offset, namelen, kind = fs.DIRENT.unpack_from(body)
        assert len(body) == len(fs.pack_dirent(0, 0, b"x" * namelen, 0))
        names.append((body[fs.DIRENT.size:fs.DIRENT.size + namelen], kind))
    assert names == [(b".", 4), (b"..", 4), (b"f", 8), (b"d", 4), (b"l", 10)]
    assert wire(fs.RELEASEDIR, fs.FUSE_ROOT_ID, fs.RELEASE_IN.pack(fh, 0, 0, 0)) == (0, b"")


def test_readdir_from_anywhere_goes_on_at_the_next_entry(wire):
    """An offset that is not where an entry starts (a seek, or a listing made again since)
    goes on at the next entry, never with a piece of a name."""
    ends = []
    for offset in range(0, 40):
        err, body = wire(fs.READDIR, fs.FUSE_ROOT_ID, fs.READ_IN.pack(0, offset, 4096, 0, 0,
                                                                      0, 0))
        assert err == 0
        names = []
        while body:
            _, _, namelen, _ = fs.DIRENT.unpack_from(body)
            names.append(body[fs.DIRENT.size:fs.DIRENT.size + namelen])
            body = body[len(fs.pack_dirent(0, 0, b"x" * namelen, 0)):]
        assert names == [b".", b"..", b"f", b"d", b"l"][-len(names):] if names else True
        ends.append(len(names))
    assert ends[0] == 5 and ends[-1] == 0 and ends == sorted(ends, reverse=True)


def test_a_name_gone_and_back_is_a_new_node(wire):
    t = wire.session.nodes
    a = t.lookup("/d")
    t.lookup("/d/x")
    t.unlink("/d")
    assert t.find("/d") is None and t.find("/d/x") is None
    b = t.lookup("/d")
    assert b != a and t.path(a) == "/d"         # the old id answers until forgotten
    t.forget(a, 1)
    assert t.find("/d") == b                    # forgetting the old keeps the new


def test_what_sysfs_refuses_and_what_is_not_spoken(wire):
    for op, arg in ((fs.MKDIR, b"\0" * 8 + b"x\0"), (fs.UNLINK, b"f\0"), (fs.RMDIR, b"d\0"),
                    (fs.SYMLINK, b"x\0f\0"), (fs.RENAME, b"\0" * 8 + b"f\0g\0")):
        assert wire(op, fs.FUSE_ROOT_ID, arg) == (errno.EPERM, b"")
    assert wire(fs.CREATE, fs.FUSE_ROOT_ID, fs.CREATE_IN.pack(os.O_WRONLY, 0o644, 0, 0)
                + b"new\0") == (errno.EACCES, b"")
    for op in (fs.GETXATTR, fs.FLUSH, fs.FSYNC, 34, 39, 99):      # 34 ACCESS, 39 IOCTL
        assert wire(op, fs.FUSE_ROOT_ID, b"\0" * 16) == (errno.ENOSYS, b"")
    assert wire(fs.INTERRUPT, 0, b"\0" * 8) is None
    err, body = wire(fs.STATFS, fs.FUSE_ROOT_ID)
    assert err == 0 and len(body) == fs.KSTATFS.size and fs.KSTATFS.unpack(body)[6] == 255


def test_a_failing_operation_is_eio_and_the_session_goes_on(wire):
    def boom(*args):
        raise RuntimeError("bug")
    wire.session.ops = boom
    assert wire(fs.GETATTR, fs.FUSE_ROOT_ID, fs.GETATTR_IN.pack(0, 0, 0)) == (errno.EIO, b"")


# --- through the kernel ---------------------------------------------------------------------

MEM = "sys/devices/system/memory"


def _first_node(block_dir) -> str | None:
    """What lsmem reads of a block's directory: its entries up to the first nodeN."""
    with os.scandir(block_dir) as it:
        for e in it:
            if e.name.startswith("node"):
                return e.name
    return None


@pytest.mark.skipif(not shutil.which("lsmem"), reason="util-linux lsmem not installed")
def test_listings_read_in_part_are_kept_and_dropped_when_they_change(mount_dnumafs,
                                                                      run_dnumafs):
    machine = ("--nodes", "2", "--mem", "256M", "--block-size", "4M")
    mnt = mount_dnumafs(*machine)
    oracle = mount_dnumafs(*machine, "--per-open-snapshot")     # every listing made fresh
    blocks = sorted((mnt / MEM).glob("memory[0-9]*"), key=lambda p: int(p.name[6:]))
    lsmem = ["lsmem", "--sysroot", str(mnt), "-a", "-n", "--summary=never", "-o", "BLOCK,NODE"]
    first = subprocess.run(lsmem, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    before = [f"node{line.split()[1]}" for line in first.stdout.splitlines()]
    assert len(blocks) == 64 and before == [_first_node(b) for b in blocks]
    assert set(before) == {"node0", "node1"}
    time.sleep(10 * fs.COMPLETE_AFTER)      # the daemon reads the listings to their end
    # The second asks only for the attributes of what the first read (each read of the
    # daemon's invalidates the atime, which lsmem's stat then asks for).
    assert subprocess.run(lsmem, capture_output=True, text=True, timeout=60).stdout == (
        first.stdout)
    # A daemon that is stopped answers nothing: lsmem is answered by the kernel alone.
    pid = daemon.daemon_pid(daemon.mountpoint_path(mnt))
    os.kill(pid, signal.SIGSTOP)
    try:
        r = subprocess.run(lsmem, capture_output=True, text=True, timeout=20)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.returncode == 0 and r.stdout == first.stdout, r.stderr
    # A change of where pages lie drops the listings it changed, whole or read in part.
    for m in (mnt, oracle):
        assert run_dnumafs("all-to", m, "1").returncode == 0

    def listings(m):
        return ([_first_node(m / MEM / b.name) for b in blocks],
                [sorted(os.listdir(m / MEM / b.name)) for b in blocks],
                [sorted(os.listdir(m / f"sys/devices/system/node/node{n}")) for n in (0, 1)])
    after = listings(oracle)
    assert after[0] != before and listings(mnt) == after


@pytest.mark.skipif(not shutil.which("lsmem"), reason="util-linux lsmem not installed")
def test_umount_right_after_lsmem_waits_for_the_daemons_own_listing(mount_dnumafs):
    """The daemon reads in its own time the listings lsmem left unread to their end, and
    holds each directory open meanwhile: `dnumafs umount` tries a busy mount again for a
    while, so that it is not refused for that."""
    mnt = mount_dnumafs("--nodes", "2", "--mem", "8G", "--block-size", "4M")   # 2,048 blocks
    assert subprocess.run(["lsmem", "--sysroot", str(mnt)], capture_output=True,
                          timeout=60).returncode == 0
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    daemon.unmount(mp)                  # what `dnumafs umount` does, at once
    assert not daemon.is_mounted(mp)
    assert pid is not None and daemon.wait_exit(pid, 10)     # the daemon goes with it
