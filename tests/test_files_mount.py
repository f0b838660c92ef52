"""The files mounted for real: echo and cat through bash, Python's open, every error of the
debugfs interface as echo shows it, and all files agreeing through commits and transplants.
The real tools run against a mount are in test_tools.py."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from files_helpers import (
    BACKLOG_MAX,
    ML,
    NODE,
    Mounted,
    check_agreement,
    key_values,
    node_list,
    node_meminfo,
    proc_meminfo,
)

HP = NODE + "/node{}/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    # 2 nodes of 32 MiB, 4 possible nodes: small enough to boot fast
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "64M", "--cpus", "4",
                                 "--possible-nodes", "4"))


@pytest.fixture
def fs_per_open(mount_dnumafs) -> Mounted:
    """The same machine with a text per open, where opens reach the daemon as in Linux
    (tests/test_pagecache.py has the page cache's refusals and sizes)."""
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "64M", "--cpus", "4",
                                 "--possible-nodes", "4", "--per-open-snapshot"))


def test_echo_and_cat(fs):
    r = fs.sh("""
        set -e
        cat start end
        echo 0x1000 > start
        echo 4607 > end
        cat start end
        echo 1 > node
        cat start end
        ls layout.1
        cat layout.1/01000-011ff
        readlink current
        echo 1 > commit
        readlink current
        cat moved-pages stats/moved-pages layout.1/stats/moved-pages
    """)
    assert r.returncode == 0, r.stderr
    *lines, moved, moved_stat, moved_layout = r.stdout.splitlines()
    zero = "0x0000000000000000"
    assert lines == [zero, zero, "0x0000000000001000", "0x00000000000011ff", zero, zero,
                     "01000-011ff", "node_stats", "stats", "1", "layout.0", "layout.1"]
    assert moved == moved_stat == moved_layout and int(moved) > 0
    assert r.stderr == ""


def test_append_writes_the_whole_value(fs):
    """bash's >> writes at offset st_size (4096): the value is still taken whole."""
    r = fs.sh("echo 0x20 >> start && cat start && echo 7 >> end && cat end")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0x0000000000000020\n0x0000000000000007\n"


# (bounds to stage, what to echo, into which file, the errno), with [0x400, 0x4ff] -> 1
# pending.
ERROR_CASES = [
    ((0x100, 0x1ff), "-1", "start", errno.EINVAL),
    ((0x100, 0x1ff), "abc", "start", errno.EINVAL),
    ((0x100, 0x1ff), "", "start", errno.EINVAL),
    ((0x100, 0x1ff), "1 2", "start", errno.EINVAL),
    ((0x100, 0x1ff), "0x", "end", errno.EINVAL),
    ((0x100, 0x1ff), "12abc", "end", errno.EINVAL),
    ((0x100, 0x1ff), "18446744073709551616", "start", errno.ERANGE),
    ((0x100, 0x1ff), "0x10000000000000000", "end", errno.ERANGE),
    ((0x100, 0x1ff), "4", "node", errno.EINVAL),          # not a possible node
    ((0x100, 0x1ff), "-1", "node", errno.EINVAL),
    ((0x100, 0x1ff), "18446744073709551616", "node", errno.ERANGE),
    ((0x200, 0x1ff), "1", "node", errno.EINVAL),          # start > end
    # overlaps with the pending range: EEXIST (the original returned 1, a partial write that
    # made echo write the rest again and again)
    ((0x4ff, 0x500), "2", "node", errno.EEXIST),
    ((0x300, 0x400), "2", "node", errno.EEXIST),
    ((0x0, 0xffff), "2", "node", errno.EEXIST),
]


def staged_state(fs: Mounted) -> tuple:
    return (fs.read(f"{ML}/start"), fs.read(f"{ML}/end"), fs.layouts(),
            sorted(fs.ls(f"{ML}/layout.1")), fs.read(f"{NODE}/online"))


def test_errors_seen_by_echo_change_nothing(fs):
    r = fs.sh("echo 0x400 > start; echo 0x4ff > end; echo 1 > node")
    assert r.returncode == 0, r.stderr
    for (start, end), value, name, err in ERROR_CASES:
        assert fs.sh(f"echo {start:#x} > start; echo {end:#x} > end").returncode == 0
        before = staged_state(fs)
        r = fs.sh(f"echo {value} > {name}")
        assert r.returncode == 1, (value, name)
        assert f"echo: write error: {os.strerror(err)}" in r.stderr, (value, name, r.stderr)
        assert staged_state(fs) == before, (value, name)
    # the pending layout still holds just its one range, and commits as it is
    assert sorted(fs.ls(f"{ML}/layout.1")) == ["00400-004ff", "node_stats", "stats"]
    assert fs.sh("echo 1 > commit").returncode == 0
    assert os.readlink(fs.path(f"{ML}/current")) == "layout.1"


def test_errnos_through_python(fs):
    assert fs.write(f"{ML}/start", b"0x10\n") is None
    assert fs.write(f"{ML}/start", b"0x10\n\n") == errno.EINVAL
    assert fs.write(f"{ML}/start", b"99999999999999999999") == errno.ERANGE
    assert fs.read(f"{ML}/start") == "0x0000000000000010\n"
    assert fs.write(BACKLOG_MAX, "-1") == errno.EINVAL
    assert fs.write(BACKLOG_MAX, "18446744073709551616") == errno.ERANGE
    assert fs.read(BACKLOG_MAX) == "8\n"
    assert fs.write(HP.format(0), "0x2") == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        fs.read(f"{NODE}/node2/distance")        # libnuma's probe one past the last node
    with pytest.raises(FileNotFoundError):
        fs.read(f"{ML}/layout.7/stats/moved-pages")


def refused(path: Path, writing: bool) -> tuple[str, int] | None:
    """Where a read (or a write) of path is refused, as root: ("open" or "read" or "write",
    errno), or None."""
    try:
        fd = os.open(path, os.O_WRONLY if writing else os.O_RDONLY)
    except OSError as e:
        return "open", e.errno
    try:
        if writing:
            os.write(fd, b"1\n")
        else:
            os.read(fd, 4096)
    except OSError as e:
        return ("write" if writing else "read"), e.errno
    finally:
        os.close(fd)
    return None


def test_files_without_show_or_store_fail_where_linux_fails(fs_per_open):
    """Root too: sysfs and sysctls refuse the open (kernfs_fop_open, sysctl_perm); procfs
    fails the write with EIO (proc_reg_write); debugfs fails the read or write with EACCES
    (simple_attr_read/write), and nothing changes."""
    fs = fs_per_open
    before = fs.read("/proc/zoneinfo")
    assert refused(fs.path(f"{NODE}/node0/meminfo"), writing=True) == ("open", errno.EACCES)
    assert refused(fs.path(f"{NODE}/online"), writing=True) == ("open", errno.EACCES)
    assert refused(fs.path("/proc/sys/vm/drop_caches"), writing=False) == ("open", errno.EACCES)
    for name in ("zoneinfo", "meminfo", "vmstat", "buddyinfo"):
        assert refused(fs.path(f"/proc/{name}"), writing=True) == ("write", errno.EIO)
    for path in (f"{ML}/moved-pages", f"{ML}/layout.0/00000-01fff", f"{ML}/stats/split-pages"):
        assert refused(fs.path(path), writing=True) == ("write", errno.EACCES)
    for name in ("node", "commit", "clear"):
        assert refused(fs.path(f"{ML}/{name}"), writing=False) == ("read", errno.EACCES)
    # and as echo says it (bash opens with O_TRUNC: the truncate is no error of its own)
    for path, error in (("/proc/meminfo", "write error: Input/output error"),
                        (f"{ML}/moved-pages", "write error: Permission denied"),
                        (f"{NODE}/online", "Permission denied")):
        r = subprocess.run(["bash", "-c", f"echo 1 > {fs.path(path)}"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1 and error in r.stderr, (path, r.stderr)
    assert fs.read("/proc/zoneinfo") == before
    assert fs.layouts() == ["layout.0"]


def test_sizes_and_modes_as_linux(fs_per_open):
    """st_size 4096 for sysfs, 0 for procfs and debugfs; debugfs's root is 0700."""
    fs = fs_per_open
    for path in (f"{NODE}/online", f"{NODE}/node0/meminfo", BACKLOG_MAX):
        assert os.stat(fs.path(path)).st_size == 4096, path
    for path in ("/proc/meminfo", "/proc/sys/vm/drop_caches", f"{ML}/start",
                 f"{ML}/moved-pages", f"{ML}/layout.0/00000-01fff"):
        assert os.stat(fs.path(path)).st_size == 0, path
    assert stat.S_IMODE(os.stat(fs.path("/sys/kernel/debug")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(fs.path("/sys/kernel")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(fs.path(ML)).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(fs.path("/proc/sys/vm/drop_caches")).st_mode) == 0o200
    assert stat.S_IMODE(os.stat(fs.path(BACKLOG_MAX)).st_mode) == 0o644


def test_chmod_chown_utime_are_not_permitted(fs):
    """EPERM, and the mode stays: what sysfs answers a user who does not own the file (root
    may change them in Linux; see the README)."""
    for path in (f"{NODE}/node0/meminfo", f"{ML}/start", "/proc/meminfo", f"{NODE}/node0"):
        p = fs.path(path)
        mode = os.stat(p).st_mode
        for change, args in ((os.chmod, (0o777,)), (os.chown, (1, 1)), (os.utime, ((0, 0),)),
                             (os.utime, ())):
            with pytest.raises(PermissionError) as e:
                change(p, *args)
            assert e.value.errno == errno.EPERM, path
        assert os.stat(p).st_mode == mode


def test_echo_errors_for_the_other_files(fs):
    r = fs.sh(f"echo -1 > {fs.path(BACKLOG_MAX)}")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = fs.sh(f"echo 0x2 > {fs.path(HP.format(1))}")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = fs.sh("cat node")
    assert r.returncode == 1 and "Permission denied" in r.stderr
    r = fs.sh(f"echo 1 > {fs.path(NODE + '/node0/meminfo')}")
    assert r.returncode == 1 and "Permission denied" in r.stderr


def test_commit_seen_by_every_file(fs):
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    before = check_agreement(fs, total)
    # stripe the whole machine over nodes 0..2 in 0x400-page stripes, by echo
    script = "".join(
        f"echo {pfn:#x} > start; echo {pfn + 0x3ff:#x} > end; echo {(i + 1) % 3} > node\n"
        for i, pfn in enumerate(range(0, 0x4000, 0x400)))
    r = fs.sh("set -e\n" + script + "echo 1 > commit")
    assert r.returncode == 0, r.stderr
    after = check_agreement(fs, total)
    assert node_list(fs.read(f"{NODE}/online")) == [0, 1, 2]
    assert "node2" in fs.ls(NODE)
    assert 2 in node_list(fs.read(f"{NODE}/has_memory"))
    assert after[2]["MemTotal"] > 0
    moved = int(fs.read(f"{ML}/moved-pages"))
    assert moved > 0
    # what nodes 0 and 1 lost, node 2 gained: pages counted as moved to it
    assert sum(before[n]["MemTotal"] - after[n]["MemTotal"] for n in (0, 1)) == \
        after[2]["MemTotal"] == int(fs.read(f"{ML}/node_stats/2/moved-pages")) * 4
    # zoneinfo and buddyinfo show node 2's zones
    assert "Node 2, zone    DMA32" in fs.read("/proc/buddyinfo")
    assert "Node 2, zone    DMA32" in fs.read("/proc/zoneinfo")
    # cat twice around a commit shows the change (no stale page cache)
    first = fs.read(f"{NODE}/node2/meminfo")
    assert fs.sh("echo 0 > start; echo 0x3fff > end; echo 2 > node; echo 1 > commit"
                 ).returncode == 0
    assert fs.read(f"{NODE}/node2/meminfo") != first
    check_agreement(fs, total)


def test_layout_dirs_come_and_go(fs):
    assert fs.write(BACKLOG_MAX, "2") is None
    assert fs.read(BACKLOG_MAX) == "2\n"
    assert fs.layouts() == ["layout.0"]
    assert fs.sh("echo 0x10 > start; echo 0x1f > end; echo 1 > node").returncode == 0
    assert fs.layouts() == ["layout.0", "layout.1"]           # pending
    assert fs.read(f"{ML}/layout.1/00010-0001f") == "1\n"
    assert fs.write(f"{ML}/clear", "1") is None
    assert fs.layouts() == ["layout.0"]
    with pytest.raises(FileNotFoundError):
        fs.read(f"{ML}/layout.1/00010-0001f")
    for i in range(2, 6):
        r = fs.sh(f"echo {i * 0x100} > start; echo {i * 0x100 + 0xff} > end; "
                  f"echo {i % 2} > node; echo 1 > commit")
        assert r.returncode == 0, r.stderr
    # current (5) and two retired layouts; 0, 2 and 3 are destroyed
    assert fs.layouts() == ["layout.3", "layout.4", "layout.5"]
    assert os.readlink(fs.path(f"{ML}/current")) == "layout.5"
    assert fs.read(f"{ML}/layout.5/00500-005ff") == "1\n"
    with pytest.raises(FileNotFoundError):
        fs.read(f"{ML}/layout.0/00000-01fff")
    with pytest.raises(FileNotFoundError):
        os.listdir(fs.path(f"{ML}/layout.2"))
    assert fs.write(BACKLOG_MAX, "0") is None
    assert fs.layouts() == ["layout.5"]


def test_hugepages_move_with_the_layout_and_land_on_the_new_node(fs):
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    r = fs.sh(f"echo 3 > {fs.path(HP.format(0))}; cat {fs.path(HP.format(0))}")
    assert r.stdout == "3\n", r.stderr
    info = check_agreement(fs, total)
    assert info[0]["HugePages_Total"] == info[0]["HugePages_Free"] == 3
    assert proc_meminfo(fs.read("/proc/meminfo"))["HugePages_Total"] == 3
    # all of node 0's pages to node 1: the pool's pages are allocated, so they wait marked
    r = fs.sh("echo 0 > start; echo 0x1fff > end; echo 1 > node; echo 1 > commit")
    assert r.returncode == 0, r.stderr
    moved = check_agreement(fs, total)
    assert moved[0]["HugePages_Total"] == 3
    assert moved[0]["MemTotal"] >= 3 * 2048
    # freeing the pool transplants its pages: they land on node 1
    assert fs.sh(f"echo 0 > {fs.path(HP.format(0))}").returncode == 0
    freed = check_agreement(fs, total)
    assert freed[0]["HugePages_Total"] == 0
    assert freed[1]["MemTotal"] - moved[1]["MemTotal"] == 3 * 2048
    assert freed[0]["MemTotal"] == moved[0]["MemTotal"] - 3 * 2048
    assert freed[1]["MemFree"] - moved[1]["MemFree"] >= 3 * 2048
    assert int(fs.read(f"{ML}/stats/transplant-on-free")) >= 3 * 512
    assert key_values(fs.read("/proc/vmstat"))["nr_hugetlb"] == 0


def test_readers_see_consistent_snapshots_during_commits(fs):
    """Readers in threads never see a half-done commit: every file adds up on its own, and the
    machine's total never changes."""
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def read_once() -> None:
        proc = proc_meminfo(fs.read("/proc/meminfo"))
        if proc["MemTotal"] != total:
            problems.append(f"MemTotal {proc['MemTotal']} != {total}")
        zones = fs.read("/proc/zoneinfo")
        managed = sum(int(x) for x in re.findall(r"managed +(\d+)", zones))
        if managed * 4 != total:
            problems.append(f"zoneinfo managed {managed * 4} kB != {total}")
        for name in fs.ls(NODE):
            if name.startswith("node"):
                info = node_meminfo(fs.read(f"{NODE}/{name}/meminfo"))
                if info["MemUsed"] != info["MemTotal"] - info["MemFree"]:
                    problems.append(f"{name}: {info}")

    def reader() -> None:
        while not stop.is_set():
            try:
                read_once()
            except Exception as e:      # a thread's exception would not fail the test
                problems.append(repr(e))
                return
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(6):
            script = "".join(
                f"echo {pfn:#x} > start; echo {pfn + 0x7ff:#x} > end; "
                f"echo {(i + k) % 4} > node\n"
                for i, pfn in enumerate(range(0, 0x4000, 0x800)))
            r = fs.sh("set -e\n" + script + "echo 1 > commit")
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert problems == []
    assert reads[0] > 0
    check_agreement(fs, total)


class Dirent64(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


DT_DIR, DT_REG, DT_LNK = 4, 8, 10


def dirent_types(path: Path) -> dict[str, int]:
    """Each entry's d_type as readdir(3) returns it (Python's scandir would stat an entry
    whose type is DT_UNKNOWN, hiding what readdir gave)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir64.argtypes = [ctypes.c_void_p]
    libc.readdir64.restype = ctypes.POINTER(Dirent64)
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(os.fsencode(path))
    assert d, os.strerror(ctypes.get_errno())
    types = {}
    try:
        while ent := libc.readdir64(d):
            types[ent.contents.d_name.decode()] = ent.contents.d_type
    finally:
        libc.closedir(d)
    return types


def test_readdir_gives_each_entry_its_type(fs):
    """d_type as sysfs gives it: irqbalance counts nodeN only when it is DT_DIR."""
    node = dirent_types(fs.path(NODE))
    assert node["node0"] == node["node1"] == node["."] == DT_DIR
    assert node["online"] == DT_REG
    node0 = dirent_types(fs.path(f"{NODE}/node0"))
    assert (node0["cpu0"], node0["hugepages"], node0["meminfo"]) == (DT_LNK, DT_DIR, DT_REG)
    ml = dirent_types(fs.path(ML))
    assert (ml["current"], ml["layout.0"], ml["start"]) == (DT_LNK, DT_DIR, DT_REG)
    layout = dirent_types(fs.path(f"{ML}/layout.0"))
    assert (layout["stats"], layout["00000-01fff"]) == (DT_DIR, DT_REG)
    # and Python's scandir agrees
    entry = {e.name: e for e in os.scandir(fs.path(NODE))}["node0"]
    assert entry.is_dir(follow_symlinks=False)


def test_a_layout_of_thousands_of_ranges_lists_whole(fs):
    """A listing longer than many readdir requests comes whole and once each, whatever the
    buffer the reader lists with, and its ranges are found and read by name."""
    ranges = [(pfn, pfn + 1, (pfn // 2) % 3) for pfn in range(0, 0x4000, 4)]    # 4096
    ml = fs.path(ML)
    fds = {name: os.open(ml / name, os.O_WRONLY) for name in ("start", "end", "node")}
    try:
        for start, end, nid in ranges:
            for name, value in (("start", start), ("end", end), ("node", nid)):
                os.pwrite(fds[name], f"{value:#x}\n".encode(), 0)   # see README
    finally:
        for fd in fds.values():
            os.close(fd)
    names = [f"{s:05x}-{e:05x}" for s, e, _ in ranges]
    listed = os.listdir(ml / "layout.1")
    assert sorted(listed) == sorted([*names, "stats", "node_stats"])
    assert len(listed) == len(set(listed))
    types = dirent_types(ml / "layout.1")
    assert types[names[-1]] == DT_REG and types["stats"] == DT_DIR
    r = subprocess.run(["ls", "-l", ml / "layout.1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.count("\n-r-------- ") == len(names)
    for (_, _, nid), name in list(zip(ranges, names))[::500]:
        assert fs.read(f"{ML}/layout.1/{name}") == f"{nid}\n"
