"""The file-system rows of `make bench`: dnumafs mounted for real and driven through its files.

Each mount is a `dnumafs mount` daemon in its own process, with its pid file and log in a
temp dir, unmounted at the end whatever happens. Reads are timed as open, read, close of one
file, the way a monitoring agent or libnuma reads sysfs, against LXCFS and the real files in
the same run.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dnumafs import daemon
from dnumafs.client import MEMLAYOUT_DIR, MemlayoutWriter, MountedTree, stripe_ranges
from dnumafs.machines.description import MAX_NUMNODES
from dnumafs.vfs.fuse_ops import ENTRY_TIMEOUT

from .blocks import bench_blocks
from .report import SEED_MINUTES, Row, median_range
from .syscalls import bench_syscalls
from .uevents import bench_event_delay

RUNS = 5            # runs of each measure; the median is reported, the range beside it
READS = 1000        # open/read/close cycles per run of a read measure
SEED_SECONDS = SEED_MINUTES * 60
MEMINFO = "sys/devices/system/node/node0/meminfo"
HUGEPAGES = "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"


def checkout_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH, for the processes started."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


def cli(*args: str | int | os.PathLike[str], timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    """`python -m dnumafs ARGS` with this checkout first on the path."""
    return subprocess.run([sys.executable, "-m", "dnumafs", *map(str, args)],
                          env=checkout_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def daemon_rss_mib(pid: int) -> float:
    """The daemon's resident set (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Mounts:
    """The bench's mounts, all in one temp dir, all torn down by close()."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="dnumafs-bench-"))
        os.environ["DNUMAFS_RUNTIME_DIR"] = str(self.base / "run")
        self.live: list[Path] = []
        self.count = 0

    def mount(self, *opts: str) -> tuple[Path, float, int]:
        """Mount a machine (`dnumafs mount` options); returns (mnt, wall seconds, pid)."""
        self.count += 1
        mnt = self.base / f"mnt{self.count}"
        mnt.mkdir()
        self.live.append(mnt)
        t = time.perf_counter()
        r = cli("mount", mnt, *opts)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"dnumafs mount {' '.join(opts)} failed: {r.stderr.strip()}")
        pid = daemon.daemon_pid(daemon.mountpoint_path(mnt))
        assert pid is not None
        return mnt, dt, pid

    def umount(self, mnt: Path) -> None:
        mp = daemon.mountpoint_path(mnt)
        pid = daemon.daemon_pid(mp)
        with contextlib.suppress(daemon.DaemonError, subprocess.TimeoutExpired):
            if daemon.is_mounted(mp) or pid is not None:
                daemon.stop(mp, lazy=True)
        if pid is not None and daemon.process_alive(pid):
            daemon.kill(pid)
        if mnt in self.live:
            self.live.remove(mnt)

    def close(self) -> None:
        for mnt in list(reversed(self.live)):
            self.umount(mnt)
        shutil.rmtree(self.base, ignore_errors=True)


# --- layouts through the debugfs files --------------------------------------------------------

def rotated_stripes(max_pfn: int, first: int, last: int, pfns: int, shift: int
                    ) -> list[tuple[int, int, int]]:
    """stripe_ranges with the nodes turned by shift, so that every run moves pages."""
    n = last - first + 1
    return [(s, e, first + (nid - first + shift) % n)
            for s, e, nid in stripe_ranges(max_pfn, first, last, pfns)]


def stage_and_commit(tree: MountedTree, ranges: list[tuple[int, int, int]]
                     ) -> tuple[float, float]:
    """Write every range to start/end/node, then 1 to commit: (stage s, commit s)."""
    with MemlayoutWriter(tree) as w:
        w.write("clear", 1)
        t0 = time.perf_counter()
        for start, end, nid in ranges:
            w.add_range(start, end, nid)
        t1 = time.perf_counter()
        w.write("commit", 1)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def stat_file(tree: MountedTree, name: str) -> int:
    return int(tree.read(f"{MEMLAYOUT_DIR}/stats/{name}"))


def bench_seed_files(mounts: Mounts) -> list[Row]:
    """The seed's scenario end to end through the files: 128 MiB, 8 CPUs, 2 nodes, 256-pfn
    stripes over nodes 0..2 (the seed took about 9 minutes)."""
    mnt, _, _ = mounts.mount("--mem", "128M", "--cpus", "8", "--nodes", "2")
    tree = MountedTree(mnt)
    max_pfn = tree.max_pfn()
    stages, commits, wholes, clis = [], [], [], []
    for run in range(RUNS):
        ranges = rotated_stripes(max_pfn, 0, 2, 256, run)
        t_stage, t_commit = stage_and_commit(tree, ranges)
        stages.append(t_stage)
        commits.append(t_commit)
        wholes.append(t_stage + t_commit)
    for run in range(3):
        stage_and_commit(tree, [(0, max_pfn - 1, run % 2)])     # away from the stripes
        t = time.perf_counter()
        r = cli("stripe", mnt, 0, 2, 256)
        clis.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    assert tree.read("sys/kernel/debug/dnumafs/check") == ""
    mounts.umount(mnt)
    stage, commit, whole, command = (median_range(v) for v in (stages, commits, wholes, clis))
    n = len(ranges)
    return [
        Row(f"seed via files: stage {n} ranges (3 writes each), median of {RUNS}",
            f"{stage[0] * 1e3:.1f} ms ({stage[1] * 1e3:.0f}..{stage[2] * 1e3:.0f})", "-"),
        Row("seed via files: commit (write to `commit`)",
            f"{commit[0] * 1e3:.1f} ms ({commit[1] * 1e3:.0f}..{commit[2] * 1e3:.0f})",
            "< 50 ms", commit[0] < 0.050),
        Row("seed via files: whole (stage + commit)",
            f"{whole[0] * 1e3:.0f} ms = seed / {SEED_SECONDS / whole[0]:,.0f}",
            "< 2 s (seed: ~540 s)", whole[0] < 2),
        Row("seed via files: `dnumafs stripe MNT 0 2 256` (process start included), median of 3",
            f"{command[0] * 1e3:.0f} ms", "< 2 s", command[0] < 2),
    ]


def bench_big_files(mounts: Mounts, gib: int) -> list[Row]:
    """A big machine mounted: mount time, daemon memory, restripe commits over 8 nodes."""
    opts = ("--mem", f"{gib}G", "--nodes", "4", "--cpus", "16")
    times = []
    for _ in range(2):
        mnt, dt, _ = mounts.mount(*opts)
        times.append(dt)
        mounts.umount(mnt)
    mnt, dt, pid = mounts.mount(*opts)
    times.append(dt)
    rss_mount = daemon_rss_mib(pid)
    tree = MountedTree(mnt)
    max_pfn = tree.max_pfn()
    mount_t = median_range(times)
    rows = [
        Row(f"{gib} GiB/4 nodes: `dnumafs mount` until it answers, median of 3",
            f"{mount_t[0]:.2f} s ({mount_t[1]:.2f}..{mount_t[2]:.2f})", "< 3 s",
            mount_t[0] < 3),
    ]
    rss_peak = rss_mount
    for nranges, runs in ((1024, 3), (32768, 3)):
        pfns = max_pfn // nranges
        stages, commits, moved = [], [], []
        for run in range(runs):
            ranges = rotated_stripes(max_pfn, 0, 7, pfns, run + 1)
            before = int(tree.read(f"{MEMLAYOUT_DIR}/moved-pages"))
            t_stage, t_commit = stage_and_commit(tree, ranges)
            moved.append(int(tree.read(f"{MEMLAYOUT_DIR}/moved-pages")) - before)
            stages.append(t_stage)
            commits.append(t_commit)
            rss_peak = max(rss_peak, daemon_rss_mib(pid))
        stage, commit = median_range(stages), median_range(commits)
        n = len(ranges)
        rows += [
            Row(f"{gib} GiB: stage {n:,} ranges over 8 nodes via files, median of {runs}",
                f"{stage[0]:.2f} s", "-"),
            Row(f"{gib} GiB: commit restripe of {n:,} ranges (~{statistics.median(moved):,.0f}"
                f" pages moved)", f"{commit[0]:.2f} s ({commit[1]:.2f}..{commit[2]:.2f})",
                "< 2 s", commit[0] < 2),
        ]
    problems = tree.read("sys/kernel/debug/dnumafs/check")
    assert problems == "", problems
    rows += [
        Row(f"{gib} GiB: daemon RSS after mount", f"{rss_mount:.0f} MiB", "< 300 MiB",
            rss_mount < 300),
        Row(f"{gib} GiB: daemon RSS, highest after the commits", f"{rss_peak:.0f} MiB",
            "< 300 MiB", rss_peak < 300),
    ]
    mounts.umount(mnt)
    return rows


# --- reads ------------------------------------------------------------------------------------

def read_cycle(path: str, n: int) -> float:
    """Seconds per open, read, close of path, over n cycles."""
    t = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 65536)
        finally:
            os.close(fd)
    return (time.perf_counter() - t) / n


@contextlib.contextmanager
def lxcfs_mount(notes: list[str]) -> Iterator[Path | None]:
    """LXCFS mounted in a temp dir, or None (with a note saying why) if it cannot be."""
    exe = shutil.which("lxcfs")
    if exe is None:
        notes.append("LXCFS: not installed, so its rows are missing (as root, `make bench` "
                     "installs the Debian package lxcfs; or apt-get install lxcfs)")
        yield None
        return
    if os.geteuid() != 0:
        notes.append("LXCFS: needs root to mount, so its rows are missing")
        yield None
        return
    d = Path(tempfile.mkdtemp(prefix="dnumafs-bench-lxcfs-"))
    mnt = d / "mnt"
    mnt.mkdir()
    log = open(d / "log", "wb")
    proc = subprocess.Popen([exe, "-f", "-p", str(d / "pid"), str(mnt)], stdout=log,
                            stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                if (mnt / "proc/meminfo").read_text().startswith("MemTotal:"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                why = (d / "log").read_text(errors="replace").strip().splitlines()[-3:]
                notes.append("LXCFS: could not be mounted, so its rows are missing: "
                             + " / ".join(why))
                yield None
                return
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True, timeout=30)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def bench_reads(mounts: Mounts, notes: list[str]) -> list[Row]:
    """open/read/close of one generated file: dnumafs from the page cache and with a text per
    open, LXCFS and the real files, interleaved in one run; then right after a change."""
    cached, _, _ = mounts.mount()
    per_open, _, _ = mounts.mount("--per-open-snapshot")
    sources: dict[str, str] = {
        "dnumafs node0/meminfo": str(cached / MEMINFO),
        "dnumafs /proc/meminfo": str(cached / "proc/meminfo"),
        "dnumafs --per-open-snapshot node0/meminfo": str(per_open / MEMINFO),
        "dnumafs --per-open-snapshot /proc/meminfo": str(per_open / "proc/meminfo"),
    }
    rows: list[Row] = []
    with lxcfs_mount(notes) as lx:
        if lx is not None:
            sources["LXCFS /proc/meminfo"] = str(lx / "proc/meminfo")
        if Path("/" + MEMINFO).exists():
            sources["real sysfs node0/meminfo"] = "/" + MEMINFO
        sources["real /proc/meminfo"] = "/proc/meminfo"
        warm: dict[str, list[float]] = collections.defaultdict(list)
        for path in sources.values():
            read_cycle(path, 50)                           # warm every cache first
        for _ in range(RUNS):                              # interleaved: fair under noise
            for name, path in sources.items():
                warm[name].append(read_cycle(path, READS))
        cold: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(3):                                 # after the kernel's caches expire
            time.sleep(ENTRY_TIMEOUT + 0.1)
            for name, path in sources.items():
                if name.startswith(("dnumafs --per-open", "LXCFS")):
                    cold[name].append(read_cycle(path, 1))
    lx_warm = statistics.median(warm["LXCFS /proc/meminfo"]) if lx is not None else None
    lx_cold = statistics.median(cold["LXCFS /proc/meminfo"]) if lx is not None else None
    for name in sources:
        med, lo, hi = median_range(warm[name])
        aim, met = "-", None
        value = f"{med * 1e6:.1f} us ({lo * 1e6:.1f}..{hi * 1e6:.1f})"
        real = next((r for file in ("node0/meminfo", "/proc/meminfo") if name.endswith(file)
                     for r in [f"real sysfs {file}" if "node0" in file else f"real {file}"]
                     if r in sources), None)
        if name.startswith("dnumafs") and real is not None:
            ratio = med / statistics.median(warm[real])
            value += f" = real x {ratio:.2f}"
            if "per-open" not in name:
                aim, met = "<= 1.0x real", ratio <= 1.0
        if lx_warm is not None and name != "LXCFS /proc/meminfo":
            value += f" = LXCFS x {med / lx_warm:.2f}"
        rows.append(Row(f"read {name} (open, read, close), median of {RUNS}x{READS}",
                        value, aim, met))
    for name, times in cold.items():
        med = statistics.median(times)
        aim, met = "-", None
        value = f"{med * 1e6:.0f} us"
        if name.startswith("dnumafs") and lx_cold is not None:
            value += f" = LXCFS x {med / lx_cold:.2f}"
            aim, met = "<= LXCFS", med <= lx_cold
        rows.append(Row(f"read {name}, kernel caches expired, median of 3", value, aim, met))
    for mode, mnt in (("", cached), (" --per-open-snapshot", per_open)):
        after = read_after_change(mnt)
        rows.append(Row(f"read dnumafs{mode} node0/meminfo right after a change of it "
                        f"(nr_hugepages written), median of {len(after)}",
                        f"{statistics.median(after) * 1e6:.0f} us", "-"))
    mounts.umount(per_open)
    mounts.umount(cached)
    return rows


def read_after_change(mnt: Path, n: int = 200) -> list[float]:
    """Seconds of one open, read, close of node0/meminfo, each right after a write that
    changed it (the write not timed)."""
    path, times = str(mnt / MEMINFO), []
    fd = os.open(mnt / HUGEPAGES, os.O_WRONLY)
    try:
        for i in range(n):
            os.write(fd, b"%d\n" % (i % 2))
            times.append(read_cycle(path, 1))
    finally:
        os.write(fd, b"0\n")
        os.close(fd)
    return times


def bench_commit_invalidation(mounts: Mounts) -> list[Row]:
    """A commit's cost, through the files, on a machine of the most nodes Linux has
    (MAX_NUMNODES, 1024), with the kernel holding every node file and proc file: from the page
    cache (the commit returns once the changed files are dropped) and with a text per open."""
    nodes = MAX_NUMNODES
    opts = ("--nodes", str(nodes), "--possible-nodes", str(nodes), "--cpus", str(2 * nodes),
            "--mem", f"{16 * nodes}M")
    rows: list[Row] = []
    for mode in ((), ("--per-open-snapshot",)):
        mnt, _, _ = mounts.mount(*opts, *mode)
        tree = MountedTree(mnt)
        files = [os.path.join(d, f) for top in ("sys/devices/system/node", "proc")
                 for d, _, names in os.walk(mnt / top) for f in names]
        times = []
        for shift in range(1, 4):       # each commit moves memory of every node
            for f in files:             # the kernel holds every one of them
                with contextlib.suppress(OSError):
                    Path(f).read_bytes()
            ranges = rotated_stripes(tree.max_pfn(), 0, nodes - 1, 4096, shift)
            times.append(stage_and_commit(tree, ranges)[1])
        mounts.umount(mnt)
        label = " --per-open-snapshot" if mode else ""
        rows.append(Row(f"{nodes} nodes{label}: commit of a restripe (write to `commit`), "
                        f"{len(files)} node and proc files read before, median of 3",
                        f"{statistics.median(times) * 1e3:.0f} ms", "-"))
    return rows


def fuse_requests_per_read(notes: list[str]) -> list[Row]:
    """Count the FUSE requests one read costs, from libfuse's debug log of a daemon serving the
    default machine from the page cache: warm, and right after a change of the file."""
    d = Path(tempfile.mkdtemp(prefix="dnumafs-bench-ops-"))
    mnt = d / "mnt"
    mnt.mkdir()
    log_path = d / "log"
    code = ("import sys\nfrom dnumafs.files import build_root\n"
            "from dnumafs.mm import Machine, MachineConfig\nfrom dnumafs.vfs import fuse_ops\n"
            "fuse_ops.serve(build_root(Machine.boot(MachineConfig())), sys.argv[1], debug=True)\n")
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-c", code, str(mnt)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, env=checkout_env(),
                            start_new_session=True)
    path = str(mnt / MEMINFO)

    def marker(tag: str) -> None:
        with contextlib.suppress(OSError):
            os.stat(mnt / f"bench-marker-{tag}")

    try:
        if daemon.wait_answers(proc, mnt, 30) is not None:
            notes.append("FUSE requests per read: the debug daemon did not answer")
            return []
        marker("warm0")
        read_cycle(path, 1)
        marker("warm1")
        read_cycle(path, 10)
        marker("warm2")
        Path(mnt / HUGEPAGES).write_text("1\n")
        marker("cold1")
        read_cycle(path, 1)
        marker("cold2")
        subprocess.run(["cat", path], capture_output=True, timeout=10)
        marker("cat")
        time.sleep(0.2)
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True, timeout=30)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    text = log_path.read_text(errors="replace")
    shutil.rmtree(d, ignore_errors=True)
    counts = requests_between_markers(text)
    warm = counts.get(("warm1", "warm2"), collections.Counter())
    cold = counts.get(("cold1", "cold2"), collections.Counter())
    cat = counts.get(("cold2", "cat"), collections.Counter())

    def show(c: collections.Counter[str], per: int) -> str:
        total = sum(c.values()) / per
        kinds = ", ".join(f"{k.lower()} {v / per:g}" for k, v in sorted(c.items()))
        return f"{total:g} ({kinds})"

    return [
        Row("FUSE requests per open/read/close, warm kernel caches", show(warm, 10),
            "0 (the page cache)", sum(warm.values()) == 0),
        Row("FUSE requests per open/read/close right after a change of the file",
            show(cold, 1), "-"),
        Row("FUSE requests per `cat` (reads to EOF), warm", show(cat, 1), "-"),
    ]


def requests_between_markers(text: str) -> dict[tuple[str, str], collections.Counter[str]]:
    """Requests by opcode between consecutive markers (a marker is a LOOKUP of
    /bench-marker-TAG), leaving out the marker lookups themselves."""
    out: dict[tuple[str, str], collections.Counter[str]] = {}
    tag: str | None = None
    current: collections.Counter[str] = collections.Counter()
    pending_op: str | None = None
    for line in text.splitlines():
        m = re.match(r"unique: \d+, opcode: (\w+)", line)
        if m:
            if pending_op is not None:
                current[pending_op] += 1
            pending_op = m.group(1)
            continue
        m = re.match(r"LOOKUP /bench-marker-(\w+)", line)
        if m:
            pending_op = None                  # the marker's own lookup
            if tag is not None:
                out[(tag, m.group(1))] = current
            tag, current = m.group(1), collections.Counter()
    return out


# --- tools and transplants --------------------------------------------------------------------

def bench_numactl(mounts: Mounts, notes: list[str]) -> list[Row]:
    """`numactl --hardware` on an 8-node model through `dnumafs run`, against the real one."""
    if shutil.which("numactl") is None:
        notes.append("numactl: not installed, so its row is missing")
        return []
    mnt, _, _ = mounts.mount("--nodes", "8", "--cpus", "8")
    runs, real = [], []
    try:
        for _ in range(3):
            t = time.perf_counter()
            r = cli("run", mnt, "--", "numactl", "--hardware", timeout=60)
            runs.append(time.perf_counter() - t)
            if r.returncode != 0 or "available: 8 nodes (0-7)" not in r.stdout:
                notes.append(f"dnumafs run numactl --hardware failed: {r.stderr.strip()}")
                return []
            t = time.perf_counter()
            subprocess.run(["numactl", "--hardware"], capture_output=True, timeout=60)
            real.append(time.perf_counter() - t)
    finally:
        mounts.umount(mnt)
    med, lo, hi = median_range(runs)
    return [Row("`dnumafs run MNT -- numactl --hardware`, 8 nodes (process start included), "
                "median of 3", f"{med * 1e3:.0f} ms ({lo * 1e3:.0f}..{hi * 1e3:.0f}); "
                f"real numactl alone {statistics.median(real) * 1e3:.0f} ms", "< 1 s",
                med < 1)]


def bench_transplant_files(mounts: Mounts) -> list[Row]:
    """Pages marked by a commit, freed through the files: all memory to a new node, then
    `echo 1 > /proc/sys/vm/drop_caches` frees the boot allocations, each transplanted."""
    rates, pages = [], []
    for _ in range(3):
        mnt, _, _ = mounts.mount("--mem", "4G", "--nodes", "2")
        tree = MountedTree(mnt)
        stage_and_commit(tree, [(0, tree.max_pfn() - 1, 2)])
        before = stat_file(tree, "transplant-on-free")
        fd = os.open(mnt / "proc/sys/vm/drop_caches", os.O_WRONLY)
        try:
            t = time.perf_counter()
            os.write(fd, b"1\n")
            dt = time.perf_counter() - t
        finally:
            os.close(fd)
        n = stat_file(tree, "transplant-on-free") - before
        assert tree.read("sys/kernel/debug/dnumafs/check") == ""
        mounts.umount(mnt)
        rates.append(n / dt)
        pages.append(n)
    med, lo, hi = median_range(rates)
    return [Row(f"4 GiB via files: drop_caches frees {statistics.median(pages):,.0f} marked "
                f"pages, transplanted, median of 3", f"{med:,.0f} pages/s "
                f"({lo:,.0f}..{hi:,.0f})", "> 200,000 pages/s", med > 200_000)]


# --- profile ----------------------------------------------------------------------------------

def profile_reads(mounts: Mounts, notes: list[str], seconds: float = 4.0) -> None:
    """py-spy's view of the daemon while a reader loops over node0/meminfo: the functions
    with the most samples, as notes under the table."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(exe, os.X_OK):
        notes.append("profile: py-spy is not installed (pip install -e '.[bench]')")
        return
    mnt, _, pid = mounts.mount()
    out = mounts.base / "profile.txt"
    path = str(mnt / MEMINFO)
    spy = subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "500",
                            "-f", "raw", "-o", str(out), "--threads"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    reads = 0
    t = time.perf_counter()
    while spy.poll() is None and time.perf_counter() - t < seconds + 5:
        read_cycle(path, 50)
        reads += 50
    _, err = spy.communicate(timeout=30)
    mounts.umount(mnt)
    if spy.returncode != 0 or not out.exists():
        notes.append(f"profile: py-spy failed: {err.strip().splitlines()[-1:] or '?'}")
        return
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \(.*/", " (", f) for f in stack.split(";")]
        if not any(f.startswith("FUSE._wrapper") for f in frames):
            continue                  # the main thread, waiting in fuse_main()
        frames = frames[next(i for i, f in enumerate(frames)
                             if f.startswith("FUSE._wrapper")):]
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    slots = int(seconds * 500)
    notes.append(f"profile of the daemon's request handlers (py-spy at 500 Hz, {seconds:g} s, "
                 f"{reads} reads of node0/meminfo): Python ran in {total} of {slots} samples "
                 f"({total * 100 / slots:.1f}%), the rest is waiting on the kernel's round "
                 f"trips; % of those samples in the function or below / in it alone:")
    for f, count in incl.most_common(14):
        notes.append(f"  {count * 100 / total:5.1f}% / {own[f] * 100 / total:5.1f}%  {f}")


def run_all(gib: int, notes: list[str], *, profile: bool = False) -> list[Row]:
    mounts = Mounts()
    rows: list[Row] = []
    try:
        steps: list[Callable[[], list[Row]]] = [
            lambda: bench_seed_files(mounts),
            lambda: bench_big_files(mounts, gib),
            lambda: bench_reads(mounts, notes),
            lambda: bench_commit_invalidation(mounts),
            lambda: fuse_requests_per_read(notes),
            lambda: bench_numactl(mounts, notes),
            lambda: bench_syscalls(mounts, notes),
            lambda: bench_transplant_files(mounts),
            lambda: bench_blocks(mounts, notes),
            lambda: bench_event_delay(mounts),
        ]
        for step in steps:
            rows += step()
        if profile:
            profile_reads(mounts, notes)
    finally:
        mounts.close()
    return rows
