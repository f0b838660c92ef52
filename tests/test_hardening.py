"""Hardening over real mounts: load, bad input, access, faults and leaks.

- load: reader processes read every file while writer processes stage and commit layouts and
  change hugepages, for a bounded time; then the model's own checker (the debugfs `check`
  file) finds nothing, and every sum across the files holds;
- bad input: hypothesis writes arbitrary bytes at arbitrary offsets to every writable file;
  a rejected write fails with a clear errno and changes nothing, and the daemon stays up;
- access: other users read the node files and cannot touch debugfs with --allow-other, and
  cannot see the mount at all without it;
- faults: signals unmount cleanly, a kill -9'd daemon's mount is removed by umount and the
  same mount point mounts again;
- leaks: thousands of commits leave the daemon's memory flat and the backlog bounded.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from files_helpers import ML, NODE, Mounted, check_agreement, node_list, proc_meminfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vfs import _as_nobody, needs_setpriv, public_dir  # noqa: F401 (a fixture)

from dnumafs import daemon
from dnumafs.lib.kstrtox import kstrtoull

CHECK = "/sys/kernel/debug/dnumafs/check"
HP = NODE + "/node{}/hugepages/hugepages-2048kB/nr_hugepages"
BACKLOG_MAX = "/sys/module/memlayout_debugfs/parameters/backlog_max"
SMALL = ("--nodes", "2", "--mem", "64M", "--cpus", "4", "--possible-nodes", "4")


@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    return Mounted(mount_dnumafs(*SMALL))


def daemon_pid(fs: Mounted) -> int:
    pid = daemon.daemon_pid(daemon.mountpoint_path(fs.mnt))
    assert pid is not None
    return pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# --- load ----------------------------------------------------------------------------------

# A worker process: role reader|layout|hugepages, runs for SECONDS, prints a JSON summary.
WORKER = textwrap.dedent(r'''
    import errno, json, os, random, re, sys, time
    mnt, role, seconds, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(seed)
    ML = mnt + "/sys/kernel/debug/memlayout"
    NODE = mnt + "/sys/devices/system/node"
    done = {"reads": 0, "vanished": 0, "commits": 0, "hugepage_writes": 0, "errors": []}
    BINARY = {"kpageflags": 8, "page_nid": 2}     # an entry per pfn, of these sizes

    def write(path, text):
        fd = os.open(path, os.O_WRONLY)
        try:
            assert os.write(fd, text.encode()) == len(text)
        finally:
            os.close(fd)

    def read_all():
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    if not os.lstat(p).st_mode & 0o444:
                        continue
                    with open(p, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    done["vanished"] += 1      # a layout.N destroyed under the walk
                    continue
                except OSError as e:
                    # destroyed between the open and the read: EIO, as debugfs says; or a
                    # nodeN/memoryM link that a commit took away while the walk listed it,
                    # so it was taken for a file, and brought back before the open
                    vanished_link = e.errno == errno.EISDIR and os.path.islink(p)
                    if not vanished_link and (e.errno != errno.EIO or "/layout." not in p):
                        raise
                    done["vanished"] += 1
                    continue
                done["reads"] += 1
                if name in BINARY:
                    if not data or len(data) % BINARY[name]:
                        done["errors"].append(f"{p}: {len(data)} bytes")
                    continue
                text = data.decode()
                if name == "check" and text:
                    done["errors"].append("check: " + text[:500])
                if name == "meminfo" and "/node/node" in p:
                    v = dict((m[1], int(m[2])) for m in
                             re.finditer(r"Node \d+ (\w+): +(\d+)", text))
                    if v["MemUsed"] != v["MemTotal"] - v["MemFree"]:
                        done["errors"].append(p + ": MemUsed is not MemTotal - MemFree")
                if not text and name not in ("check", "marked_pages"):    # may print nothing
                    done["errors"].append(p + ": empty")

    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if role == "reader":
                read_all()
            elif role == "layout":
                # The staged start/end are one for all writers, as in the kernel: another
                # writer's values may land between ours (start > end: EINVAL) or its range
                # overlap ours (EEXIST). Those are the interface's answers, counted; any
                # other error fails the test.
                max_pfn = 64 << 8
                cuts = sorted(rnd.sample(range(1, max_pfn), rnd.randint(1, 12)))
                try:
                    write(ML + "/clear", "1")
                    for s, e in zip([0] + cuts, cuts + [max_pfn]):
                        write(ML + "/start", hex(s)); write(ML + "/end", hex(e - 1))
                        write(ML + "/node", str(rnd.randrange(4)))
                    write(ML + "/commit", "1")
                    done["commits"] += 1
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EEXIST):
                        raise
                    done["raced"] = done.get("raced", 0) + 1
            else:
                nids = [n for n in os.listdir(NODE) if re.fullmatch(r"node\d+", n)]
                nid = rnd.choice(nids)
                write(f"{NODE}/{nid}/hugepages/hugepages-2048kB/nr_hugepages",
                      str(rnd.randrange(6)))
                done["hugepage_writes"] += 1
    except Exception as e:
        done["errors"].append(f"{role}: {type(e).__name__}: {e}")
    print(json.dumps(done))
''')


def test_load_then_nothing_is_lost(fs):
    """4 readers of every file, 2 layout writers and 1 hugepage writer for 6 s."""
    total_kb = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    roles = ["reader"] * 4 + ["layout"] * 2 + ["hugepages"]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(fs.mnt), role, "6", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, role in enumerate(roles)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    errors = [e for r in results for e in r["errors"]]
    assert errors == []
    assert sum(r["commits"] for r in results) > 0
    assert sum(r["hugepage_writes"] for r in results) > 0
    assert all(r["reads"] > 0 for r, role in zip(results, roles) if role == "reader")
    assert fs.read(CHECK) == ""
    meminfo = check_agreement(fs, total_kb)
    # the backlog stays bounded: once a raced writer's pending layout is cleared, the
    # current one and at most backlog_max retired ones
    assert fs.write(f"{ML}/clear", "1") is None
    assert len(fs.layouts()) <= 1 + int(fs.read(BACKLOG_MAX))
    hp = {n: int(fs.read(HP.format(n))) for n in meminfo}
    assert {n: i["HugePages_Total"] for n, i in meminfo.items()} == hp


# --- bad input -----------------------------------------------------------------------------

def writable_files(mnt: Path) -> list[str]:
    out = []
    for dirpath, _, filenames in os.walk(mnt):
        for name in filenames:
            p = Path(dirpath, name)
            if os.lstat(p).st_mode & 0o222:
                out.append("/" + str(p.relative_to(mnt)))
    return sorted(out)


def state(fs: Mounted, hp_paths: list[str]) -> dict[str, object]:
    """Everything a write to a writable file could change."""
    return {
        "start": fs.read(f"{ML}/start"), "end": fs.read(f"{ML}/end"),
        "backlog_max": fs.read(BACKLOG_MAX),
        "hugepages": [fs.read(p) for p in hp_paths],
        "layouts": {n: sorted(fs.ls(f"{ML}/{n}")) for n in fs.layouts()},
        "current": os.readlink(fs.path(f"{ML}/current")),
        "meminfo": fs.read("/proc/meminfo"),
        "online": fs.read(f"{NODE}/online"),
    }


def numbers() -> st.SearchStrategy[bytes]:
    """Values kstrtoull may take or just miss: numbers in every base, signs, spaces."""
    value = st.one_of(st.integers(0, 16), st.integers(0, 1 << 16), st.integers(0, 1 << 66))
    form = st.sampled_from(["{}", "{:#x}", "0{:o}", "+{}", "-{}", " {}", "{} ", "{}\n",
                            "{}\n\n", "{:#X}", "0x", "{}abc"])
    return st.builds(lambda v, f: f.format(v).encode(), value, form)


def test_fuzz_every_writable_file(fs):
    files = writable_files(fs.mnt)
    assert {f"{ML}/start", f"{ML}/end", f"{ML}/node", f"{ML}/commit", f"{ML}/clear",
            BACKLOG_MAX, HP.format(0), "/proc/sys/vm/drop_caches"} <= set(files)
    pid = daemon_pid(fs)
    allowed = {errno.EINVAL, errno.ERANGE, errno.EEXIST}
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(files), data=st.one_of(st.binary(max_size=40), numbers()),
           offset=st.one_of(st.just(0), st.integers(0, 1 << 20)))
    def one_write(path: str, data: bytes, offset: int) -> None:
        hp_paths = [HP.format(n) for n in node_list(fs.read(f"{NODE}/online"))]
        before = state(fs, hp_paths)
        fd = os.open(fs.path(path), os.O_WRONLY)
        try:
            err = None
            assert os.pwrite(fd, data, offset) == len(data)
        except OSError as e:
            err = e.errno
        finally:
            os.close(fd)
        outcomes["accepted" if err is None else "rejected"] += 1
        if err is not None:
            assert err in allowed, (path, data, os.strerror(err))
            assert state(fs, hp_paths) == before, (path, data)
        if path in (f"{ML}/start", f"{ML}/end") and data:
            try:
                value = kstrtoull(data)
            except OSError as e:
                assert err == e.errno, (path, data)
            else:
                assert err is None and fs.read(path) == f"0x{value:016x}\n", (path, data)

    one_write()
    assert outcomes["accepted"] > 10 and outcomes["rejected"] > 10, outcomes
    assert daemon.process_alive(pid) and daemon_pid(fs) == pid
    assert fs.read(CHECK) == ""
    check_agreement(fs)


# --- access --------------------------------------------------------------------------------

@needs_setpriv
def test_other_users_read_node_files_and_cannot_write_debugfs(public_dir, mount_dnumafs):  # noqa: F811
    (public_dir / "mnt").mkdir()
    mnt = mount_dnumafs(*SMALL, "--allow-other", mnt=public_dir / "mnt")
    n, ml = mnt / NODE.lstrip("/"), mnt / ML.lstrip("/")
    r = _as_nobody(f"cat {n}/online {n}/node0/meminfo {mnt}/proc/meminfo")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0-1\nNode 0 MemTotal:")
    # debugfs is root's alone, as /sys/kernel/debug (0700): not even its names are listed
    for script in (f"ls {mnt}/sys/kernel/debug", f"ls {ml}", f"cat {ml}/moved-pages",
                   f"echo 0x10 > {ml}/start", f"echo 1 > {ml}/commit", f"cat {ml}/start",
                   f"cat {mnt}/sys/kernel/debug/dnumafs/check",
                   f"echo 4 > {n}/node0/hugepages/hugepages-2048kB/nr_hugepages",
                   f"echo 1 > {mnt}/sys/module/memlayout_debugfs/parameters/backlog_max"):
        r = _as_nobody(script)
        assert r.returncode != 0 and "Permission denied" in r.stderr, script
    # changing modes, owners or times of files one does not own: EPERM, as sysfs
    for script in (f"chmod 777 {n}/online", f"chown nobody {n}/online",
                   f"touch -c -d 2000-01-01 {n}/online", f"chmod 777 {mnt}/proc/meminfo"):
        r = _as_nobody(script)
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, (script, r.stderr)
    assert (ml / "start").read_text() == "0x0000000000000000\n"
    assert os.readlink(ml / "current") == "layout.0"
    assert stat.S_IMODE((n / "online").stat().st_mode) == 0o444


@needs_setpriv
def test_other_users_cannot_see_a_model_mount_without_allow_other(public_dir, mount_dnumafs):  # noqa: F811
    (public_dir / "mnt").mkdir()
    mnt = mount_dnumafs(*SMALL, mnt=public_dir / "mnt")
    r = _as_nobody(f"cat {mnt}/sys/devices/system/node/online; ls {mnt}")
    assert r.returncode != 0 and r.stdout == "" and "Permission denied" in r.stderr


# --- faults --------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_unmount_cleanly_and_the_mount_point_mounts_again(mount_dnumafs, tmp_path,
                                                                 sig):
    mnt = tmp_path / "m"
    mnt.mkdir()
    mount_dnumafs(*SMALL, mnt=mnt)
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    os.kill(pid, sig)
    assert daemon.wait_exit(pid, 20)
    assert not daemon.is_mounted(mp) and not daemon.pidfile_path(mp).exists()
    assert os.listdir(mnt) == []
    mount_dnumafs(*SMALL, mnt=mnt)
    assert node_list((mnt / NODE.lstrip("/") / "online").read_text()) == [0, 1]


def test_kill_9_then_umount_then_a_new_mount_works(mount_dnumafs, run_dnumafs, tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    fs = Mounted(mount_dnumafs(*SMALL, mnt=mnt))
    assert fs.write(f"{ML}/clear", "1") is None
    pid = daemon_pid(fs)
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_exit(pid, 20)
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    r = run_dnumafs("mount", mnt)                       # refused while the dead mount is there
    assert r.returncode == 1 and "already mounted" in r.stderr
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert not daemon.is_mounted(daemon.mountpoint_path(mnt)) and os.listdir(mnt) == []
    fs = Mounted(mount_dnumafs(*SMALL, mnt=mnt))
    assert fs.layouts() == ["layout.0"] and fs.read(CHECK) == ""
    assert daemon_pid(fs) != pid


# --- leaks ---------------------------------------------------------------------------------

def test_memory_stays_flat_over_thousands_of_commits(fs):
    """2,500 commits through the files: after a warm-up of 500, the daemon's RSS grows by
    less than 8 MiB over the next 2,000, and the backlog never holds more than backlog_max."""
    from dnumafs.client import MemlayoutWriter, MountedTree
    tree = MountedTree(fs.mnt)
    max_pfn = tree.max_pfn()
    pid = daemon_pid(fs)
    backlog_max = int(fs.read(BACKLOG_MAX))
    rss = {}
    with MemlayoutWriter(tree) as w:
        for i in range(2500):
            half = max_pfn // 2 + (i % 7) * 64
            w.add_range(0, half - 1, i % 3)
            w.add_range(half, max_pfn - 1, (i + 1) % 3)
            w.write("commit", 1)
            if i == 499:
                rss["warm"] = rss_kib(pid)
            if i % 250 == 0:
                assert len(fs.layouts()) <= 1 + backlog_max
    rss["end"] = rss_kib(pid)
    assert rss["end"] - rss["warm"] < 8 * 1024, rss
    layouts = fs.layouts()
    assert len(layouts) == 1 + backlog_max and layouts[-1] == "layout.2500"
    assert fs.read(CHECK) == ""
    check_agreement(fs)


def test_check_file_is_root_only_and_reads_empty(fs):
    st_ = os.stat(fs.path(CHECK))
    assert stat.S_IMODE(st_.st_mode) == 0o400
    assert fs.read(CHECK) == ""
    assert fs.write(CHECK, "1") == errno.EACCES     # at write, as simple_attr_write


# --- bounds --------------------------------------------------------------------------------

def test_many_opens_of_a_big_file_hold_one_text(mount_dnumafs):
    """Readers that each read a piece of /proc/zoneinfo and keep it open: the daemon keeps one
    shared text for them all (the model did not change between their reads), not one each,
    and every one of them still reads one whole consistent text."""
    mnt = Mounted(mount_dnumafs("--nodes", "32", "--cpus", "128", "--possible-nodes", "32",
                                "--mem", "2G"))
    path = mnt.path("/proc/zoneinfo")
    whole = path.read_bytes()
    assert len(whole) > 300_000
    pid = daemon_pid(mnt)
    before = rss_kib(pid)
    fds = []
    try:
        for _ in range(500):
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            assert os.read(fd, 4096) == whole[:4096]
        grown_mib = (rss_kib(pid) - before) / 1024
        # 500 copies would be 200 MiB; one shared copy and the open files' tables, a few
        assert grown_mib < 40, f"daemon grew {grown_mib:.0f} MiB for 500 open files"
        for fd in fds[::50]:
            rest = b""
            while chunk := os.read(fd, 65536):
                rest += chunk
            assert whole[:4096] + rest == whole
    finally:
        for fd in fds:
            os.close(fd)
    assert mnt.read(CHECK) == ""


# --- names and the log ---------------------------------------------------------------------

def test_names_that_are_not_utf8_are_not_found_and_leave_no_log(mount_dnumafs, tmp_path):
    mnt = mount_dnumafs(*SMALL)
    log = tmp_path / f"{mnt.name}.log"
    size = log.stat().st_size
    base = os.fsencode(mnt / "sys/devices/system/node")
    for name in (b"\xff", b"node\xc3", b"\xed\xa0\x80", b"node0\xff/meminfo"):
        with pytest.raises(FileNotFoundError):
            os.stat(base + b"/" + name)
    for i in range(2000):
        with pytest.raises(FileNotFoundError):
            os.stat(base + b"/\xff" + str(i).encode())
    assert os.path.isdir(base + b"/node0")
    assert log.stat().st_size - size < 2000, log.read_text()[-2000:]


def test_a_failing_request_cannot_flood_the_log(standin, tmp_path):
    """A show that fails unexpectedly (a bug) is logged with its traceback, but at most a few
    times every few seconds however often it is asked for."""
    mnt = standin()
    log = tmp_path / f"{mnt.name}.log"
    f = mnt / "test/runtime_error"
    for _ in range(1000):
        with pytest.raises(OSError) as e:
            f.read_bytes()
        assert e.value.errno == errno.EIO
    text = log.read_text()
    assert 1 <= text.count("RuntimeError: bug") <= 20, text[-3000:]
    assert len(text) < 50_000


# --- write lengths -------------------------------------------------------------------------

@pytest.mark.parametrize("path, value", [
    (f"{ML}/start", b"20"), (f"{ML}/node", b"1"), (f"{ML}/commit", b"1"), (BACKLOG_MAX, b"3"),
    (HP.format(0), b"2"), ("/proc/sys/vm/drop_caches", b"3"),
])
@pytest.mark.parametrize("length", [4097, 200_000, 1 << 20])
def test_a_write_longer_than_any_value_is_refused_whole(fs, path, value, length):
    """One write(2) of length bytes, a number behind leading zeros that kstrtoull would take
    whole (the kernel hands FUSE those over 128 KiB as several writes, each a number of its
    own): EINVAL, and nothing changes, not even by a piece of it."""
    before = {p: fs.read(p) for p in ("/proc/zoneinfo", f"{ML}/start", BACKLOG_MAX)}
    data = b"0" * (length - len(value) - 1) + value + b"\n"
    assert fs.write(path, data) == errno.EINVAL
    assert {p: fs.read(p) for p in before} == before
    assert fs.layouts() == ["layout.0"]
    assert fs.read(CHECK) == ""


def test_debugfs_takes_23_bytes_and_a_nul_ends_a_value(fs):
    """simple_attr_write copies at most 23 bytes and parses them as a C string: a longer
    write is refused here (the kernel would parse its first 23 bytes); a NUL ends the value,
    in debugfs and sysfs alike."""
    start = f"{ML}/start"
    assert fs.write(start, b"0x" + b"0" * 20 + b"1") is None              # 23 bytes
    assert fs.read(start) == "0x0000000000000001\n"
    assert fs.write(start, b"0x" + b"0" * 21 + b"2") == errno.EINVAL      # 24 bytes
    assert fs.read(start) == "0x0000000000000001\n"
    assert fs.write(start, b"0x20\0garbage") is None
    assert fs.read(start) == "0x0000000000000020\n"
    assert fs.write(BACKLOG_MAX, b"5\0x") is None
    assert fs.read(BACKLOG_MAX) == "5\n"
    # a sysctl sees the NUL as a stray character, as proc_dointvec does
    assert fs.write("/proc/sys/vm/drop_caches", b"3\0") == errno.EINVAL
