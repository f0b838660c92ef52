"""The workload's control file mounted for real: commands written with echo and open(), every
refusal's errno changing nothing, marked pages draining after a commit, numastat moving,
determinism across two mounts, the realtime clock's progress and its end at unmount."""
from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

import pytest
from files_helpers import ML, NODE, Mounted, key_values, node_meminfo

from dnumafs import daemon

CONTROL = "/sys/kernel/debug/dnumafs/workload"
CHECK = "/sys/kernel/debug/dnumafs/check"
MACHINE = ("--nodes", "2", "--mem", "64M", "--cpus", "4", "--possible-nodes", "4")
TASK = re.compile(r"(task .*) # held (\d+) allocated (\d+) freed (\d+) failed (\d+)")


@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    return Mounted(mount_dnumafs(*MACHINE))


def sh(fs: Mounted, script: str):
    """A bash script run in the control file's directory."""
    import subprocess
    return subprocess.run(["bash", "-c", script], cwd=fs.path("/sys/kernel/debug/dnumafs"),
                          capture_output=True, text=True, timeout=60)


def tasks(fs: Mounted) -> dict[str, tuple[str, int, int, int, int]]:
    """name -> (its task command, held, allocated, freed, failed), from the file."""
    out = {}
    for line in fs.read(CONTROL).splitlines()[1:]:
        m = TASK.fullmatch(line)
        assert m, line
        out[m[1].split()[1]] = (m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    return out


def head(fs: Mounted) -> str:
    return fs.read(CONTROL).splitlines()[0]


def numastat(fs: Mounted, nid: int) -> dict[str, int]:
    return key_values(fs.read(f"{NODE}/node{nid}/numastat"))


def machine_state(fs: Mounted) -> tuple[str, ...]:
    return tuple(fs.read(f"{NODE}/node{n}/{f}") for n in (0, 1)
                 for f in ("meminfo", "numastat", "vmstat"))


def test_commands_with_echo_and_read_back(fs):
    assert head(fs) == "# clock realtime running time 0.000000000 seed 0 behind 0.000"
    r = sh(fs, """set -e
        echo 'clock manual' > workload
        printf 'task a cpu 0 rate 1000 pages 100 mix anon=1,file=2 # a comment\\n\\n' > workload
        echo 'task b cpu 2 policy bind nodes 0 rate 500; seed 42;advance 0.25' > workload
        cat workload""")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "# clock manual running time 0.250000000 seed 42\n"
        "task a cpu 0 policy local rate 1000 pages 100 mix anon=1,file=2 order 0"
        " # held 100 allocated 250 freed 150 failed 0\n"
        "task b cpu 2 policy bind nodes 0 rate 500 pages 1024 mix anon=1 order 0"
        " # held 125 allocated 125 freed 0 failed 0\n")
    # each task line written back as it reads (its comment too) changes nothing
    before = fs.read(CONTROL)
    assert fs.write(CONTROL, "".join(line + "\n" for line in before.splitlines()[1:])) is None
    assert fs.read(CONTROL) == before
    assert fs.read(CHECK) == ""
    # pause, resume, stop
    assert fs.write(CONTROL, "pause") is None
    assert head(fs) == "# clock manual paused time 0.250000000 seed 42"
    assert fs.write(CONTROL, "resume\nstop a") is None
    assert list(tasks(fs)) == ["b"]
    assert fs.write(CONTROL, "stop all") is None
    assert tasks(fs) == {} and fs.read(CHECK) == ""


def test_mode_and_long_writes(fs):
    st = os.stat(fs.path(CONTROL))
    assert st.st_mode & 0o777 == 0o600
    # a write of many commands (over a debugfs attribute's 23 bytes) up to a page less one
    many = "clock manual\n" + "".join(f"task t{i} cpu {i % 4} rate 10\n" for i in range(100))
    assert len(many) < 4095
    assert fs.write(CONTROL, many) is None
    assert len(tasks(fs)) == 100
    # longer than dynamic_debug/control takes: E2BIG, as ddebug_proc_write() gives
    assert fs.write(CONTROL, "#" * 4096) == errno.E2BIG


def test_separators_as_the_kernel_tokenizer(fs):
    """Words split at every isspace() character, a NUL ends the write's commands."""
    r = sh(fs, r"""set -e
        printf 'seed 1\r\n' > workload; head -1 workload
        printf '\tseed\v2\f\r;clock\tmanual\r\n' > workload; head -1 workload
        printf 'seed 3\0bogus' > workload; head -1 workload""")
    assert r.returncode == 0, r.stderr
    assert [line.split(" seed ")[1].split()[0] for line in r.stdout.splitlines()] == \
        ["1", "2", "3"]
    assert "clock manual" in r.stdout.splitlines()[1]


def test_advance_bounded_by_its_work(fs):
    """An advance asking for more allocations than a few seconds' work is refused up front
    (E2BIG, nothing runs), counted over the write's tasks and advances."""
    assert fs.write(CONTROL, "clock manual; task big cpu 0 rate 10000000 pages 100000 "
                             "mix anon=1,file=1") is None
    before = fs.read(CONTROL)
    assert fs.write(CONTROL, "advance 3600") == errno.E2BIG
    assert fs.write(CONTROL, "advance 0.02; advance 0.02") == errno.E2BIG
    assert fs.write(CONTROL, "stop big; task big cpu 0 rate 1000000; advance 1") == errno.E2BIG
    assert fs.read(CONTROL) == before
    # within the limit it runs, and a task stopped first asks for nothing
    assert fs.write(CONTROL, "advance 0.001") is None
    assert tasks(fs)["big"][2] == 10000
    assert fs.write(CONTROL, "stop big; task small cpu 0 rate 10; advance 3600") is None
    assert tasks(fs)["small"][2] == 36000
    assert fs.read(CHECK) == ""


# (what to write, the errno): each fails whole and changes nothing
ERRORS = [
    ("bogus", errno.EINVAL),
    ("task", errno.EINVAL),
    ("task a", errno.EINVAL),                               # cpu is required
    ("task a cpu", errno.EINVAL),
    ("task a cpu 4", errno.EINVAL),                         # no such CPU
    ("task a cpu -1", errno.EINVAL),
    ("task a cpu 0x1", errno.EINVAL),
    ("task a cpu 0 cpu 1", errno.EINVAL),
    ("task a/b cpu 0", errno.EINVAL),
    ("task " + "x" * 33 + " cpu 0", errno.EINVAL),
    ("task a cpu 0 policy nearest", errno.EINVAL),
    ("task a cpu 0 nodes 1", errno.EINVAL),                 # local takes no nodes
    ("task a cpu 0 policy bind", errno.EINVAL),             # bind needs nodes
    ("task a cpu 0 policy preferred nodes 0-1", errno.EINVAL),
    ("task a cpu 0 policy bind nodes 4", errno.EINVAL),     # not possible
    ("task a cpu 0 policy bind nodes 1-0", errno.EINVAL),
    ("task a cpu 0 policy bind nodes 0,,1", errno.EINVAL),
    ("task a cpu 0 policy bind nodes 0-99999999999", errno.EINVAL),    # not expanded
    ("task a cpu 0 policy interleave nodes 0-15000000", errno.EINVAL),
    ("task all cpu 0", errno.EINVAL),                       # `stop all` means every task
    ("task a cpu 0 rate 1.5", errno.EINVAL),
    ("task a cpu 0 rate 10000001", errno.EINVAL),
    ("task a cpu 0 pages x", errno.EINVAL),
    ("task a cpu 0 mix anon", errno.EINVAL),
    ("task a cpu 0 mix anon=0", errno.EINVAL),
    ("task a cpu 0 mix heap=1", errno.EINVAL),
    ("task a cpu 0 mix anon=1,anon=2", errno.EINVAL),
    ("task a cpu 0 order 11", errno.EINVAL),
    ("task a cpu 0 colour blue", errno.EINVAL),
    ("task a cpu 0 rate", errno.EINVAL),
    ("stop nobody", errno.ENOENT),
    ("stop", errno.EINVAL),
    ("stop a b", errno.EINVAL),
    ("clock slow", errno.EINVAL),
    ("advance 0", errno.EINVAL),
    ("advance -1", errno.EINVAL),
    ("advance 3600.000000001", errno.EINVAL),
    ("advance 1e3", errno.EINVAL),
    ("advance .5", errno.EINVAL),
    ("advance 0.0000000001", errno.EINVAL),
    ("seed -1", errno.EINVAL),
    ("seed 18446744073709551616", errno.EINVAL),
    ("pause now", errno.EINVAL),
    ("task \xe9 cpu 0", errno.EINVAL),
    # all or nothing: a good command before the bad one is not run either
    ("task z cpu 0 rate 10; advance 1; bogus", errno.EINVAL),
    ("task z cpu 0; stop z; stop z", errno.ENOENT),
    ("stop all; stop a", errno.ENOENT),
]


def test_errors_change_nothing(fs):
    assert fs.write(CONTROL, "clock manual; task a cpu 1 rate 100 pages 50; advance 1") is None
    before = (fs.read(CONTROL), machine_state(fs))
    for text, err in ERRORS:
        r = sh(fs, f"echo '{text}' > workload")
        assert r.returncode == 1, text
        assert f"echo: write error: {os.strerror(err)}" in r.stderr, (text, r.stderr)
        assert fs.write(CONTROL, text) == err, text
        assert (fs.read(CONTROL), machine_state(fs)) == before, text
    assert fs.read(CHECK) == ""


def test_stripe_commit_drains_marked_pages(fs):
    """The workload frees the pages it held in the moved ranges (marked at the commit) into
    their new node: moved-pages and transplant-on-free grow, node 2 grows."""
    assert fs.write(CONTROL, "clock manual\n"
                    "task a cpu 0 rate 4000 pages 3000 mix anon=1,file=1\n"
                    "task b cpu 2 rate 4000 pages 3000 mix anon=1,slab=1\n"
                    "task c cpu 3 policy interleave nodes 0-1 rate 2000 pages 1000 order 1\n"
                    "advance 1") is None
    r = sh(fs, f"cd {fs.path(ML)} && for s in $(seq 0 256 16383); do "
               "echo $s > start; echo $((s + 127)) > end; echo 2 > node; done; "
               "echo 1 > commit")
    assert r.returncode == 0, r.stderr
    moved0 = int(fs.read(f"{ML}/moved-pages"))
    tof0 = int(fs.read(f"{ML}/stats/transplant-on-free"))
    total2 = node_meminfo(fs.read(f"{NODE}/node2/meminfo"))["MemTotal"]
    assert fs.write(CONTROL, "advance 2") is None
    moved = int(fs.read(f"{ML}/moved-pages")) - moved0
    tof = int(fs.read(f"{ML}/stats/transplant-on-free")) - tof0
    grown = node_meminfo(fs.read(f"{NODE}/node2/meminfo"))["MemTotal"] - total2
    assert tof > 100 and moved >= tof
    assert grown == moved * 4       # kB: every page moved since is node 2's now
    assert fs.read(CHECK) == ""


def test_numastat_moves_under_bind(fs):
    fs.write(CONTROL, "clock manual")
    before = {n: numastat(fs, n) for n in (0, 1)}
    assert fs.write(CONTROL, "task r cpu 0 policy bind nodes 1 rate 1000 pages 200\n"
                    "task l cpu 0 rate 300 pages 200\n"
                    "task i cpu 1 policy interleave nodes 0-1 rate 200\nadvance 1") is None
    after = {n: numastat(fs, n) for n in (0, 1)}

    def grew(nid: int, key: str) -> int:
        return after[nid][key] - before[nid][key]

    # r: 1000 on node 1 from a node-0 CPU (its bind's first zone is node 1's: hits, other)
    # l: 300 local hits on node 0; i: 100 on each node, interleave hits
    assert grew(1, "numa_hit") == 1000 + 100 and grew(1, "other_node") == 1000 + 100
    assert grew(0, "numa_hit") == 300 + 100 and grew(0, "local_node") == 300 + 100
    assert grew(0, "interleave_hit") == grew(1, "interleave_hit") == 100
    assert grew(0, "other_node") == 0 and grew(0, "numa_miss") == grew(1, "numa_miss") == 0
    assert fs.read(CHECK) == ""


def test_deterministic_across_mounts(mount_dnumafs):
    script = ("clock manual; seed 5\n"
              "task a cpu 0 rate 3000 pages 900 mix anon=3,file=2,slab=1\n"
              "task b cpu 3 policy interleave nodes 0-1 rate 1000 pages 400 order 2\n"
              "advance 0.5\n")
    states = []
    for _ in range(2):
        fs = Mounted(mount_dnumafs(*MACHINE))
        assert fs.write(CONTROL, script) is None
        r = sh(fs, f"cd {fs.path(ML)} && echo 0x2000 > start && echo 0x2fff > end && "
                   "echo 2 > node && echo 1 > commit")
        assert r.returncode == 0, r.stderr
        assert fs.write(CONTROL, "advance 0.75; stop a; advance 0.1") is None
        states.append((fs.read(CONTROL), machine_state(fs), fs.read("/proc/zoneinfo"),
                       fs.read(f"{ML}/moved-pages")))
    assert states[0] == states[1]


def test_realtime_progress(fs):
    assert fs.write(CONTROL, "task a cpu 1 rate 2000 pages 100") is None
    deadline = time.monotonic() + 30
    while tasks(fs)["a"][2] < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, held, allocated, freed, _ = tasks(fs)["a"]
    assert allocated >= 200 and held == 100 and freed == allocated - 100
    assert re.fullmatch(r"# clock realtime running time \d+\.\d{9} seed 0 behind \d+\.\d{3}",
                        head(fs))
    assert fs.write(CONTROL, "pause") is None
    paused = fs.read(CONTROL)
    time.sleep(0.3)
    assert fs.read(CONTROL) == paused
    assert fs.read(CHECK) == ""


def test_clock_stops_with_the_mount(mount_dnumafs, run_dnumafs, tmp_path):
    mnt = mount_dnumafs(*MACHINE)
    fs = Mounted(mnt)
    assert fs.write(CONTROL, "task a cpu 0 rate 100000 pages 5000") is None
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    assert pid is not None
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    assert not daemon.process_alive(pid)
    log = Path(tmp_path / f"{mnt.name}.log").read_text()
    assert "workload clock stopped" in log and "unmounted" in log, log


def test_reads_and_writes_under_a_heavy_realtime_workload(mount_dnumafs, run_dnumafs,
                                                          tmp_path):
    """The file's text changes at every tick: each read gives a whole text (its size and its
    bytes from one text), a write's notices never wait for the page the write holds, and the
    unmount is clean."""
    mnt = mount_dnumafs("--nodes", "2", "--mem", "1G", "--cpus", "4")
    fs = Mounted(mnt)
    assert fs.write(CONTROL, "task a cpu 0 rate 10000000 pages 100000; "
                             "task b cpu 1 rate 10000000 pages 100000 mix anon=1,file=1") is None
    time.sleep(2)           # its first ticks: the page cache has its notices to catch up with
    for i in range(20):
        text = fs.read(CONTROL)
        lines = text.split("\n")
        assert lines[-1] == "" and len(lines) == 4, text
        assert re.fullmatch(r"# clock realtime running time \d+\.\d{9} seed \d+ "
                            r"behind \d+\.\d{3}", lines[0]), text
        assert sorted(tasks_in(lines[1:3])) == ["a", "b"], text
        if i % 5 == 0:
            assert fs.write(CONTROL, f"seed {i}") is None
    assert fs.write(CONTROL, "advance 1") == errno.E2BIG
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    log = Path(tmp_path / f"{mnt.name}.log").read_text()
    assert "workload: write refused (E2BIG): advance of 1 s: 20000000 allocations" in log, log
    assert "still pending" not in log and "failed to unmount" not in log, log
    assert "unmounted" in log, log


def tasks_in(lines: list[str]) -> list[str]:
    names = []
    for line in lines:
        m = TASK.fullmatch(line)
        assert m, line
        names.append(m[1].split()[1])
    return names
