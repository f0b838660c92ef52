"""The file tree, kstrtoull, and the FUSE adapter: in process, and for real through the kernel
with the stand-in tree (tests/standin.py)."""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs
from standin import big_text

from dnumafs.lib.kstrtox import ULLONG_MAX, kstrtoull
from dnumafs.vfs import fuse_ops, session
from dnumafs.vfs.tree import Attr, Dir, DynamicDir, StaticDir, Symlink, resolve

# --- tree ------------------------------------------------------------------------------------


def test_resolve_walks_static_and_dynamic_dirs():
    leaf = Attr(show=lambda: "x\n")
    names = ["a", "b"]
    dyn = DynamicDir(names=lambda: names, lookup=lambda n: leaf if n in names else None)
    root = StaticDir({"sys": StaticDir({"dyn": dyn, "link": Symlink(lambda: "dyn/a")})})
    assert resolve(root, "/") is root
    assert resolve(root, "/sys/dyn/a") is leaf
    assert resolve(root, "sys//dyn/b/") is leaf
    assert isinstance(resolve(root, "/sys/link"), Symlink)
    assert resolve(root, "/sys/dyn/c") is None
    assert resolve(root, "/sys/dyn/a/deeper") is None      # through a file
    assert resolve(root, "/sys/link/a") is None            # symlinks are the kernel's job
    names.remove("a")
    assert resolve(root, "/sys/dyn/a") is None
    assert list(dyn.names()) == ["b"]
    assert list(root.names()) == ["sys"]
    assert isinstance(dyn, Dir)


# --- kstrtoull (SPEC section 2) -----------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    (b"0", 0), (b"5", 5), (b"5\n", 5), (b"+5", 5), (b"+5\n", 5),
    (b"0x1f", 31), (b"0X1F", 31), (b"0xAbC\n", 0xABC), (b"+0x10", 16),
    (b"010", 8), (b"0777\n", 511), (b"00", 0),
    (b"18446744073709551615", ULLONG_MAX), (b"0xffffffffffffffff", ULLONG_MAX),
    (b"01777777777777777777777", ULLONG_MAX), (b"0x0000000000000000001", 1),
])
def test_kstrtoull_accepts(text, value):
    assert kstrtoull(text) == value


@pytest.mark.parametrize("text, err", [
    (b"", errno.EINVAL), (b"\n", errno.EINVAL), (b"+", errno.EINVAL), (b"++1", errno.EINVAL),
    (b"-1", errno.EINVAL), (b"-0", errno.EINVAL), (b"abc", errno.EINVAL), (b" 1", errno.EINVAL),
    (b"1 ", errno.EINVAL), (b"1\n\n", errno.EINVAL), (b"\n1", errno.EINVAL),
    (b"1\r\n", errno.EINVAL), (b"12a", errno.EINVAL), (b"0x", errno.EINVAL),
    (b"0xg", errno.EINVAL), (b"08", errno.EINVAL), (b"0b101", errno.EINVAL),
    (b"1.0", errno.EINVAL), (b"1\x00", errno.EINVAL), (b"1,2", errno.EINVAL),
    (b"18446744073709551616", errno.ERANGE), (b"0x10000000000000000", errno.ERANGE),
    (b"02000000000000000000000", errno.ERANGE), (b"99999999999999999999999\n", errno.ERANGE),
    (b"99999999999999999999999 garbage", errno.ERANGE), (b"9" * 100000, errno.ERANGE),
])
def test_kstrtoull_rejects(text, err):
    with pytest.raises(OSError) as e:
        kstrtoull(text)
    assert e.value.errno == err


_KSTRTOULL_RE = re.compile(rb"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _reference_kstrtoull(data: bytes) -> int:
    """The kernel's rules restated: a number, then nothing or one newline; -errno if not."""
    m = _KSTRTOULL_RE.match(data)
    if not m:
        return -errno.EINVAL
    value = int(m.group(1), 16 if m.group(1)[:2].lower() == b"0x" else
                8 if m.group(1).startswith(b"0") else 10)
    if value > ULLONG_MAX:
        return -errno.ERANGE
    return value if data[m.end():] in (b"", b"\n") else -errno.EINVAL


@given(hs.binary(max_size=24) | hs.from_regex(rb"\A\+?(0[xX]?)?[0-9a-fA-Fx]{0,22}\n?\Z"))
def test_kstrtoull_matches_the_rules(data):
    try:
        got = kstrtoull(data)
    except OSError as e:
        got = -e.errno
    assert got == _reference_kstrtoull(data)


@given(hs.integers(0, ULLONG_MAX), hs.sampled_from(["{}", "{:#x}", "{:#X}", "0{:o}"]),
       hs.booleans(), hs.booleans())
def test_kstrtoull_round_trip(value, fmt, plus, newline):
    text = ("+" if plus else "") + fmt.format(value).replace("0X", "0x", 1) + \
        ("\n" if newline else "")
    assert kstrtoull(text.encode()) == value


# --- the adapter, in process --------------------------------------------------------------------


def _fi(flags: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(flags=flags, fh=0, direct_io=0, keep_cache=0)


def _ops() -> tuple[fuse_ops.TreeOperations, list[bytes]]:
    stored: list[bytes] = []
    root = StaticDir({
        "ro": Attr(show=lambda: "hello\n"),
        "rw": Attr(show=lambda: "rw\n", store=stored.append),
        "wo": Attr(store=stored.append),
        "dir": StaticDir({}),
        "link": Symlink(lambda: "ro"),
        "bug": Attr(show=lambda: 1 / 0),
    })
    return fuse_ops.TreeOperations(root), stored


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_ops_open_refuses_what_the_file_cannot_do():
    ops, _ = _ops()
    assert _errno(ops, "open", "/wo", _fi(os.O_RDONLY)) == errno.EACCES
    assert _errno(ops, "open", "/ro", _fi(os.O_WRONLY)) == errno.EACCES
    assert _errno(ops, "open", "/ro", _fi(os.O_RDWR)) == errno.EACCES
    assert _errno(ops, "open", "/wo", _fi(os.O_RDWR)) == errno.EACCES
    assert _errno(ops, "open", "/missing", _fi(os.O_RDONLY)) == errno.ENOENT
    assert _errno(ops, "open", "/dir", _fi(os.O_RDONLY)) == errno.EISDIR


def test_ops_read_serves_the_snapshot_and_write_stores_whole():
    ops, stored = _ops()
    fi = _fi(os.O_RDWR)
    ops("open", "/rw", fi)
    assert fi.direct_io == 1 and fi.fh > 0
    assert ops("read", "/rw", 2, 0, fi) == b"rw"
    assert ops("read", "/rw", 100, 2, fi) == b"\n"
    assert ops("read", "/rw", 100, 3, fi) == b""
    assert ops("write", "/rw", b"12\n", 4096, fi) == 3
    assert stored == [b"12\n"]
    assert ops("truncate", "/rw", 0, fi) == 0
    ops("release", "/rw", fi)
    assert _errno(ops, "read", "/rw", 2, 0, fi) == errno.EBADF
    assert ops._files == {}


def test_ops_truncate_getattr_readdir_readlink():
    ops, _ = _ops()
    assert ops("truncate", "/wo", 0) == 0
    assert _errno(ops, "truncate", "/ro", 0) == errno.EACCES
    assert _errno(ops, "truncate", "/missing", 0) == errno.ENOENT
    st = ops("getattr", "/wo")
    assert st["st_mode"] == stat.S_IFREG | 0o200 and st["st_size"] == 4096
    assert ops("getattr", "/dir")["st_mode"] == stat.S_IFDIR | 0o755
    assert ops("getattr", "/dir")["st_nlink"] == 2
    assert ops("getattr", "/link")["st_mode"] == stat.S_IFLNK | 0o777
    entries = list(ops("readdir", "/", None))
    assert [name for name, _, _ in entries] == [".", "..", "ro", "rw", "wo", "dir", "link", "bug"]
    # each entry's type, for d_type: DT_DIR, DT_REG, DT_LNK
    assert [mode for _, mode, _ in entries] == [
        stat.S_IFDIR, stat.S_IFDIR, stat.S_IFREG, stat.S_IFREG, stat.S_IFREG, stat.S_IFDIR,
        stat.S_IFLNK, stat.S_IFREG]
    assert _errno(ops, "readdir", "/ro", None) == errno.ENOTDIR
    assert ops("readlink", "/link") == "ro"
    assert _errno(ops, "readlink", "/ro") == errno.EINVAL
    assert _errno(ops, "create", "/new", 0o644, _fi(os.O_WRONLY)) == errno.EACCES


@pytest.mark.parametrize("exc", [RuntimeError("bug"), SystemExit(1), KeyboardInterrupt(),
                                 OSError("no errno"), OSError(-5, "negative")])
def test_ops_let_only_errnos_out(exc):
    def show():
        raise exc
    ops = fuse_ops.TreeOperations(StaticDir({"f": Attr(show=show)}))
    fi = _fi(os.O_RDONLY)
    ops("open", "/f", fi)
    assert _errno(ops, "read", "/f", 4096, 0, fi) == errno.EIO


def test_held_texts_are_shared_and_bounded():
    held = fuse_ops.HeldTexts(limit=10)
    a = held.hold(b"x" * 6)
    assert held.hold(bytes(b"x" * 6)) is a and held.total == 6      # identical: one copy
    with pytest.raises(OSError) as e:
        held.hold(b"y" * 6)
    assert e.value.errno == errno.ENOMEM
    held.release(a)
    assert held.total == 6
    held.release(a)
    assert held.total == 0
    assert held.hold(b"y" * 6) == b"y" * 6


def test_ops_keep_a_text_only_while_a_reader_needs_it():
    ops = fuse_ops.TreeOperations(StaticDir({"f": Attr(show=lambda: "0123456789")}))
    fi = _fi(os.O_RDONLY)
    ops("open", "/f", fi)
    assert ops("read", "/f", 4, 0, fi) == b"0123"
    assert ops._held.total == 10                  # kept for the rest
    assert ops("read", "/f", 100, 4, fi) == b"456789"
    assert ops._held.total == 0                   # the reader reached the end
    assert ops("read", "/f", 100, 10, fi) == b""
    ops("release", "/f", fi)


def test_ops_readdir_serves_a_listing_in_pieces():
    names = [f"f{i:03d}" for i in range(300)]
    ops = fuse_ops.TreeOperations(StaticDir({n: Attr(show=str) for n in names}))
    fh = ops("opendir", "/")
    first = []
    for entry in ops("readdir", "/", fh, 0):    # a request whose buffer takes 10 entries
        first.append(entry)
        if len(first) == 10:
            break
    assert ops._held.total > 0                   # the listing is kept for the next request
    rest = list(ops("readdir", "/", fh, first[-1][2]))
    listed = [name for name, _, _ in first + rest]
    assert listed == [".", "..", *names]
    assert ops._held.total == 0                  # served whole
    assert list(ops("readdir", "/", fh, first[-1][2])) == rest   # listed anew, same place
    assert ops("releasedir", "/", fh) == 0
    assert _errno(ops, "opendir", "/f000") == errno.ENOTDIR


def test_ops_unneeded_operations_are_unregistered():
    ops, _ = _ops()
    for name in ("access", "flush", "getxattr", "statfs"):    # the session answers those
        assert not hasattr(ops, name)
    # as sysfs: changing modes, owners or times is not permitted
    assert _errno(ops, "chmod", "/rw", 0o600) == errno.EPERM
    assert _errno(ops, "chown", "/rw", 0, 0) == errno.EPERM
    assert _errno(ops, "utimens", "/rw", None) == errno.EPERM
    assert session.mount_options(allow_other=False) == "default_permissions"
    assert session.mount_options(allow_other=True, fd=5).split(",")[:2] == ["fd=5",
                                                                           "rootmode=40000"]


# --- the adapter, through the kernel ----------------------------------------------------------

def _bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_read_whole_in_pieces_and_at_offsets(standin):
    f = standin() / "test/big"
    text = big_text().encode()
    assert len(text) > 128 * 1024            # more than one FUSE read
    assert f.read_bytes() == text
    assert os.stat(f).st_size == len(text)   # exact, for the kernel's page cache
    fd = os.open(f, os.O_RDONLY)
    try:
        for off in (0, 1, 4095, 4096, 100000, len(text) - 1, len(text), len(text) + 10):
            assert os.pread(fd, 4096, off) == text[off:off + 4096]
        pieces = []
        while chunk := os.read(fd, 777):
            pieces.append(chunk)
        assert b"".join(pieces) == text
    finally:
        os.close(fd)
    assert subprocess.run(["cat", f], capture_output=True, timeout=30).stdout == text


def test_each_open_reads_one_snapshot(standin):
    f = standin("--per-open-snapshot") / "test/counter"
    assert os.stat(f).st_size == 4096        # as sysfs, whatever the content
    fd1 = os.open(f, os.O_RDONLY)
    fd2 = os.open(f, os.O_RDONLY)
    try:
        first = os.read(fd1, 100)
        both = os.read(fd2, 1 << 20)                 # another open: another snapshot
        rest = b""
        while chunk := os.read(fd1, 1000):
            rest += chunk
        whole1 = first + rest
        assert whole1.count(b"open 000001") == 2000   # one open's text, all of it
        assert both.count(b"open 000002") == 2000 and b"open 000001" not in both
    finally:
        os.close(fd1)
        os.close(fd2)
    # No stale page cache: cat twice sees two generations.
    a, b = f.read_bytes(), f.read_bytes()
    assert b"open 000003" in a and b"open 000004" in b


def test_echo_writes_and_errnos(standin):
    t = standin() / "test"
    r = _bash(f"echo 12 > {t}/value && cat {t}/value")
    assert r.returncode == 0 and r.stdout == "12\n"
    r = _bash(f"echo abc > {t}/value")
    assert r.returncode == 1 and "write error: Invalid argument" in r.stderr
    r = _bash(f"echo 18446744073709551616 > {t}/value")
    assert "write error: Numerical result out of range" in r.stderr
    r = _bash(f"echo -n '' > {t}/value; echo ' 5' > {t}/value")
    assert "Invalid argument" in r.stderr
    assert (t / "value").read_text() == "12\n"      # errors changed nothing
    assert (t / "writes").read_text() == "b'12\\n'\n"


def test_append_and_offsets_carry_whole_values(standin):
    t = standin() / "test"
    r = _bash(f"echo 7 >> {t}/value")                # written at offset 4096
    assert r.returncode == 0, r.stderr
    assert (t / "value").read_text() == "7\n"
    fd = os.open(t / "value", os.O_WRONLY)
    try:
        assert os.write(fd, b"1") == 1               # two write(2)s: two values,
        assert os.write(fd, b"23\n") == 3            # never assembled
        assert os.pwrite(fd, b"0x10", 123456) == 4
    finally:
        os.close(fd)
    assert (t / "value").read_text() == "16\n"
    assert (t / "writes").read_text().splitlines() == ["b'7\\n'", "b'1'", "b'23\\n'", "b'0x10'"]


def test_open_refuses_what_the_file_cannot_do_even_for_root(standin):
    """With a text per open; tests/test_pagecache.py has the page cache's refusals."""
    t = standin("--per-open-snapshot") / "test"
    for path, flags in ((t / "readonly", os.O_WRONLY), (t / "readonly", os.O_RDWR),
                        (t / "writeonly", os.O_RDONLY), (t / "writes", os.O_WRONLY)):
        with pytest.raises(PermissionError):
            os.open(path, flags)
    r = _bash(f"echo 1 > {t}/readonly; cat {t}/writeonly; echo 1 > {t}/new")
    assert r.stderr.count("Permission denied") == 3
    assert not (t / "new").exists()
    os.close(os.open(t / "writeonly", os.O_WRONLY))  # what it can do, it does


@pytest.fixture
def public_dir():
    """A directory other users can reach (tmp_path is private to root); removed after the
    mounts in it are gone."""
    d = Path(tempfile.mkdtemp(prefix="dnumafs-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                   reason="needs root and setpriv to become another user")


def _as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "bash", "-c", script], capture_output=True, text=True, timeout=30)


@needs_setpriv
def test_other_users_cannot_see_a_mount_without_allow_other(public_dir, standin):
    (public_dir / "mnt").mkdir()
    t = standin(mnt=public_dir / "mnt") / "test"
    r = _as_nobody(f"cat {t}/readonly")
    assert r.returncode != 0 and "Permission denied" in r.stderr, (r.stdout, r.stderr)


@needs_setpriv
def test_mode_bits_for_other_users(public_dir, standin):
    (public_dir / "mnt").mkdir()
    t = standin("--allow-other", mnt=public_dir / "mnt") / "test"
    as_nobody = _as_nobody

    r = as_nobody(f"cat {t}/value {t}/readonly")
    assert r.returncode == 0 and r.stdout == "0\nro\n", r.stderr
    r = as_nobody(f"cat {t}/secret; echo 1 > {t}/value; echo 1 > {t}/writeonly")
    assert r.stderr.count("Permission denied") == 3
    assert (t / "value").read_text() == "0\n"


def test_missing_paths_are_enoent(standin):
    mnt = standin()
    for p in ("nope", "test/nope", "sys/devices/system/node/node9/distance",
              "sys/devices/system/node/node2"):
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / p)
        with pytest.raises(FileNotFoundError):
            os.open(mnt / p, os.O_RDONLY)
    with pytest.raises(NotADirectoryError):
        os.stat(mnt / "test/big/x")


def test_truncate_is_a_no_op_where_writable(standin):
    t = standin() / "test"
    _bash(f"echo 5 > {t}/value")
    os.truncate(t / "value", 0)
    os.truncate(t / "writeonly", 0)
    assert (t / "value").read_text() == "5\n"
    with pytest.raises(PermissionError):
        os.truncate(t / "readonly", 0)
    fd = os.open(t / "value", os.O_WRONLY | os.O_TRUNC)
    os.ftruncate(fd, 0)
    os.close(fd)
    assert (t / "value").read_text() == "5\n"


def test_dynamic_directories_and_symlinks_change_at_once(standin):
    t = standin() / "test"
    assert sorted(os.listdir(t / "entries")) == ["item0", "item1", "item2"]
    assert os.readlink(t / "link") == "entries/item2"
    assert (t / "link").read_text() == "item2\n"
    _bash(f"echo 5 > {t}/nr_entries")
    assert sorted(os.listdir(t / "entries")) == [f"item{i}" for i in range(5)]
    assert (t / "entries/item4").read_text() == "item4\n"   # no cached "no such file"
    assert os.readlink(t / "link") == "entries/item4"
    _bash(f"echo 1 > {t}/nr_entries")
    assert os.listdir(t / "entries") == ["item0"]
    with pytest.raises(FileNotFoundError):              # open reaches the daemon
        os.open(t / "entries/item3", os.O_RDONLY)
    assert os.readlink(t / "link") == "entries/item0"


def test_stat_shows_sysfs_like_modes(standin):
    t = standin() / "test"
    assert stat.S_IMODE(os.stat(t / "secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(t / "writeonly").st_mode) == 0o200
    assert os.stat(t / "value").st_size == len((t / "value").read_bytes())
    assert os.stat(t / "writeonly").st_size == 4096     # so that a read asks, and fails
    st = os.stat(t / "entries")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 and st.st_nlink == 2
    st = os.lstat(t / "link")
    assert stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777


def test_exceptions_in_show_are_eio_and_the_daemon_lives_on(standin):
    t = standin() / "test"
    for name in ("runtime_error", "system_exit", "keyboard_interrupt", "oserror_noerrno"):
        with pytest.raises(OSError) as e:
            (t / name).read_text()
        assert e.value.errno == errno.EIO, name
    with pytest.raises(OSError) as e:
        (t / "enodev").read_text()
    assert e.value.errno == errno.ENODEV
    assert (t / "readonly").read_text() == "ro\n"


def test_many_threads_read_and_write_at_once(standin):
    t = standin() / "test"
    text = big_text().encode()
    errors: list[str] = []

    def reader() -> None:
        for _ in range(10):
            if (t / "big").read_bytes() != text:
                errors.append("bad read")
            if not (t / "counter").read_bytes().startswith(b"open "):
                errors.append("bad counter")

    def writer(k: int) -> None:
        for i in range(30):
            fd = os.open(t / "value", os.O_WRONLY)
            try:
                if os.write(fd, f"{k * 1000 + i}\n".encode()) != len(f"{k * 1000 + i}\n"):
                    errors.append("short write")
            finally:
                os.close(fd)

    threads = [threading.Thread(target=reader) for _ in range(8)] + \
        [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert len((t / "writes").read_text().splitlines()) == 8 * 30


def test_the_tree_cannot_be_reshaped(standin):
    """As on sysfs: making, removing, linking or renaming gives EPERM, creating EACCES."""
    t = standin() / "test"
    before = sorted(os.listdir(t))
    r = _bash(f"cd {t} && {{ mkdir x; ln -s value l; ln value h; rm value; mv value v; "
              f"rmdir {t}; mknod p p; touch new; }}")
    lines = r.stderr.splitlines()
    assert len(lines) == 8, r.stderr
    assert all("Operation not permitted" in line for line in lines[:7]), r.stderr
    assert "Permission denied" in lines[7], r.stderr
    assert (t / "value").read_text() == "0\n"
    assert sorted(os.listdir(t)) == before
