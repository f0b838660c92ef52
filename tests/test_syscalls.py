"""The process view (SPEC section 11): under `dnumafs run` the memory-policy system calls and
/proc/<pid>/status answer for an 8-node model, whatever the host has. Real programs run
through the kernel: numactl, numactl's own `make check`, and tests/programs/policy.c built
against libnuma, dynamically and statically; their answers are checked against the mount's
files and, for bad arguments, against the real kernel's (`--no-syscalls`)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TESTS_DIR, force_unmount, run_cli
from files_helpers import NODE, Mounted, key_values, node_list
from test_clients import numactl_src  # noqa: F401 (a fixture)
from test_tools import (
    TOOL_TIMEOUT,
    needs_another_user,
    needs_numactl,
    needs_run,
    run_as_nobody,
    run_in,
)

from dnumafs.mm import mempolicy as mp

NODES, CPUS = 8, 8
PROGRAM = TESTS_DIR / "programs" / "policy.c"
HOST_NODE_DIR = Path("/sys/devices/system/node")
HOST_NODES = len([n for n in os.listdir(HOST_NODE_DIR) if re.fullmatch(r"node\d+", n)]
                 ) if HOST_NODE_DIR.is_dir() else 1
MAKE_CHECK_TIMEOUT = 1200


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A directory any user can reach (the test's own temp dirs are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="dnumafs-syscalls-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fs(public: Path) -> Iterator[Mounted]:
    """An 8-node, 8-CPU model, other users let in (for the unprivileged runs)."""
    base = public
    mnt = base / "mnt"
    mnt.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DNUMAFS_RUNTIME_DIR", str(base / "run"))
        try:
            r = run_cli("mount", mnt, "--nodes", str(NODES), "--cpus", str(CPUS), "--mem",
                        "1G", "--allow-other", "--log", base / "mount.log")
            assert r.returncode == 0, r.stderr
            yield Mounted(mnt)
        finally:
            force_unmount(mnt)


@pytest.fixture(scope="module")
def programs(public: Path) -> dict[str, Path]:
    """policy.c built against libnuma, dynamically and statically linked."""
    if not shutil.which("gcc") or not Path("/usr/include/numa.h").exists():
        pytest.skip("needs gcc and libnuma-dev (scripts/install-system-deps)")
    out = public / "programs"
    out.mkdir()
    built = {}
    for kind, extra in (("dynamic", []), ("static", ["-static"])):
        exe = out / f"policy-{kind}"
        r = subprocess.run(["gcc", "-O1", "-Wall", *extra, "-o", str(exe), str(PROGRAM),
                            "-lnuma", "-lpthread"], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            pytest.skip(f"building {exe.name}: {r.stderr[-1000:]}")
        built[kind] = exe
    return built


def answers(text: str) -> dict[str, list[int]]:
    """The program's "key value..." lines."""
    return {k: [int(v) for v in rest.split()] for k, _, rest in
            (line.partition(" ") for line in text.splitlines())}


def run_no_syscalls(fs: Mounted, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnumafs", "run", "--no-syscalls",
                           str(fs.mnt), "--", *argv], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)


def numastat(fs: Mounted, nid: int) -> dict[str, int]:
    return key_values(fs.read(f"{NODE}/node{nid}/numastat"))


def assert_no_pages_held(fs: Mounted) -> None:
    held = key_values(fs.read("sys/kernel/debug/process_view/pages"))
    assert held == {f"node{n}": 0 for n in node_list(fs.read(f"{NODE}/online"))}


# --- the model, by itself -------------------------------------------------------------------

FACTS = mp.NodeFacts(possible=range(8), online=range(8), memory=range(8),
                     cpu_node={c: c for c in range(8)})


def test_policies_as_mpol_new_makes_them():
    assert mp.new_policy(mp.MPOL_DEFAULT, 0, frozenset(), FACTS) is None
    pref = mp.new_policy(mp.MPOL_PREFERRED, 0, frozenset({6, 3}), FACTS)
    assert pref is not None and pref.nodes == {3}
    local = mp.new_policy(mp.MPOL_PREFERRED, 0, frozenset(), FACTS)
    assert local is not None and local.mode == mp.MPOL_LOCAL
    rel = mp.new_policy(mp.MPOL_BIND, mp.MPOL_F_RELATIVE_NODES, frozenset({9}), FACTS)
    assert rel is not None and rel.nodes == {1} and rel.nodemask() == {9}
    for mode, flags, nodes in ((mp.MPOL_BIND, 0, frozenset({8, 100})),
                               (mp.MPOL_DEFAULT, 0, frozenset({1})),
                               (mp.MPOL_LOCAL, 0, frozenset({1})),
                               (mp.MPOL_INTERLEAVE, 0, frozenset())):
        with pytest.raises(mp.PolicyError) as e:
            mp.new_policy(mode, flags, nodes, FACTS)
        assert e.value.errno == 22
    with pytest.raises(mp.PolicyError):
        mp.split_mode(mp.MPOL_BIND | mp.MPOL_F_STATIC_NODES | mp.MPOL_F_RELATIVE_NODES)


def test_ranges_split_and_merge_as_mbind_range():
    space = mp.AddressSpace()
    bind = mp.Policy(mp.MPOL_BIND, nodes={5})
    inter = mp.Policy(mp.MPOL_INTERLEAVE, nodes={1, 2})
    space.set_range(0x1000, 0x9000, bind)
    space.set_range(0x3000, 0x5000, inter)
    assert [(s, e) for s, e, _ in space.ranges] == [(0x1000, 0x3000), (0x3000, 0x5000),
                                                    (0x5000, 0x9000)]
    assert space.policy_at(0x4000) is inter and space.policy_at(0x8fff) is bind
    assert space.policy_at(0x9000) is None
    space.set_range(0x2000, 0x8000, None)
    assert [(s, e) for s, e, _ in space.ranges] == [(0x1000, 0x2000), (0x8000, 0x9000)]
    assert mp.spread(inter, 5, 0) == {1: 3, 2: 2}
    assert mp.spread(bind, 4, 0) == {5: 4}
    with pytest.raises(mp.PolicyError):
        space.set_range(0x1000, 0x2000, mp.Policy(mp.MPOL_PREFERRED, nodes={1}))
        space.set_home_node(0x1000, 0x2000, 1)


# --- numactl and /proc/self/status ----------------------------------------------------------

@needs_run
@needs_numactl
def test_numactl_membind_to_a_node_the_host_lacks(fs):
    out = run_in(fs, "numactl", "--membind=5", "numactl", "--show").stdout
    assert re.search(r"^policy: bind$", out, re.M), out
    assert re.search(r"^membind: 5 $", out, re.M), out
    # a forked child inherits its parent's policy
    out = run_in(fs, "numactl", "--interleave=2,3", "sh", "-c", "numactl --show").stdout
    assert re.search(r"^interleavemask: 2 3 $", out, re.M), out
    if HOST_NODES <= 5:
        r = run_no_syscalls(fs, "numactl", "--membind=5", "true")
        assert r.returncode != 0 and "out of range" in r.stderr


@needs_run
def test_status_shows_the_models_cpus_and_nodes(fs):
    out = run_in(fs, "sh", "-c", "grep _allowed /proc/self/status; "
                 "cat /proc/thread-self/status | grep Mems_allowed_list").stdout
    fields = dict(re.findall(r"^(\w+):\t(.*)$", out, re.M))
    assert node_list(fields["Mems_allowed_list"] + "\n") == node_list(
        fs.read(f"{NODE}/has_memory"))
    assert node_list(fields["Cpus_allowed_list"] + "\n") == list(range(CPUS))
    words = fields["Mems_allowed"].split(",")
    assert len(words) == mp.MAX_NUMNODES // 32 and int(words[-1], 16) == (1 << NODES) - 1
    assert int(fields["Cpus_allowed"], 16) == (1 << CPUS) - 1
    # pinned by taskset to model CPU 6, which the host may not have
    out = run_in(fs, "taskset", "-c", "6", "bash", "-c",
                 "grep Cpus_allowed_list /proc/self/status; "
                 "a=( $(< /proc/self/stat) ); echo ${a[38]}").stdout
    assert out.split("\n")[:2] == ["Cpus_allowed_list:\t6", "6"]


# --- libnuma from C -------------------------------------------------------------------------

@needs_run
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_libnuma_sees_the_model(fs, programs, kind):
    a = answers(run_in(fs, str(programs[kind]), "show").stdout)
    top = NODES - 1
    assert a["available"] == [0] and a["max_node"] == [top] and a["configured"] == [NODES]
    assert a["start_policy"] == [mp.MPOL_DEFAULT]
    assert a["onnode"] == [top] * 4
    assert a["tonode"] == [top - 1] * 4
    assert a["move"] == [0] and a["moved"] == [top, 1, top, 1]
    assert a["addr_node"] == [1]
    assert a["absent"] == [-2, -14]     # ENOENT: never touched; EFAULT: unmapped
    assert a["membind"] == [mp.MPOL_BIND, 5]
    assert a["range_mode"] == [mp.MPOL_BIND]
    assert a["thread_policy"] == [mp.MPOL_INTERLEAVE, 1, 2]
    assert a["main_policy"] == [mp.MPOL_BIND, 5]
    assert a["local"] == [mp.MPOL_LOCAL]


@needs_run
def test_bad_arguments_get_the_kernels_errno(fs, programs):
    """Each bad call gets the errno the real kernel gives it; the one that depends on the
    node count (maxnode below nr_node_ids) gets the model's."""
    ours = answers(run_in(fs, str(programs["dynamic"]), "errors").stdout)
    kernels = answers(run_no_syscalls(fs, str(programs["dynamic"]), "errors").stdout)
    assert ours.pop("get_short_maxnode") == [22]
    kernels.pop("get_short_maxnode")
    assert ours == kernels


@needs_run
def test_garbage_never_crashes_the_supervisor_nor_changes_the_model(fs, programs):
    for seed in ("4000", "4001"):
        out = run_in(fs, str(programs["static"]), "fuzz", seed).stdout
        assert answers(out)["after_fuzz"] == [mp.MPOL_DEFAULT]
    assert fs.read("sys/kernel/debug/dnumafs/check") == ""
    assert_no_pages_held(fs)


@needs_run
@needs_numactl
def test_a_programs_pages_land_on_its_nodes_and_are_freed(fs, programs):
    mb, pages = 8, 8 * 256
    before = {n: numastat(fs, n) for n in range(NODES)}
    run_in(fs, "numactl", "--interleave=2,3", str(programs["dynamic"]), "touch", str(mb))
    mid = {n: numastat(fs, n) for n in range(NODES)}
    for n in (2, 3):
        assert mid[n]["interleave_hit"] - before[n]["interleave_hit"] >= pages // 2
    run_in(fs, "numactl", "--membind=6", str(programs["dynamic"]), "touch", str(mb))
    after = {n: numastat(fs, n) for n in range(NODES)}
    assert after[6]["numa_hit"] - mid[6]["numa_hit"] >= pages
    assert_no_pages_held(fs)
    # a program without a policy of its own is not the model's to place
    run_in(fs, str(programs["dynamic"]), "touch", str(mb))
    assert {n: numastat(fs, n) for n in range(NODES)} == after
    assert fs.read("sys/kernel/debug/dnumafs/check") == ""


# --- numactl's own tests --------------------------------------------------------------------

@needs_run
@needs_numactl
@pytest.mark.timeout(MAKE_CHECK_TIMEOUT)
def test_numactl_make_check_passes_in_full(fs, numactl_src, tmp_path):  # noqa: F811
    """All of numactl's `make check`, built outside, run inside `dnumafs run`."""
    tree = tmp_path / "numactl"
    shutil.copytree(numactl_src, tree, symlinks=True)
    r = subprocess.run(["make", "-j2", "check", "TESTS="], cwd=tree, capture_output=True,
                       text=True, timeout=MAKE_CHECK_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "dnumafs", "run", str(fs.mnt), "--", "make",
                        "check"], cwd=tree, capture_output=True, text=True,
                       timeout=MAKE_CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
    summary = dict(re.findall(r"^# (\w+): +(\d+)$", r.stdout, re.M))
    assert summary.get("TOTAL") == "9" and summary.get("PASS") == "9", r.stdout[-3000:]


# --- as another user ------------------------------------------------------------------------

@needs_another_user
def test_an_unprivileged_user_gets_the_process_view(fs, programs):
    a = answers(run_as_nobody(fs.mnt, str(programs["static"]), "show").stdout)
    assert a["max_node"] == [NODES - 1] and a["membind"] == [mp.MPOL_BIND, 5]
    assert a["moved"] == [NODES - 1, 1, NODES - 1, 1]


# --- what is known to bite ------------------------------------------------------------------

@needs_run
def test_signals_during_trapped_calls_are_not_seen(fs, programs):
    """A timer signal every 50 us with SA_RESTART: no trapped call fails or livelocks
    (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)."""
    a = answers(run_in(fs, str(programs["dynamic"]), "signals", "20000").stdout)
    assert a["failed"] == [0] and a["ticks"][0] > 0


@needs_run
def test_a_programs_own_listener_gets_ebusy(fs, programs):
    assert answers(run_in(fs, str(programs["dynamic"]), "listener").stdout)["listener"] == [16]
    assert answers(run_no_syscalls(fs, str(programs["dynamic"]), "listener").stdout
                   )["listener"] == [0]


def children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@needs_run
def test_the_command_dies_with_the_supervisor(fs):
    sup = subprocess.Popen([sys.executable, "-m", "dnumafs", "run", str(fs.mnt), "--",
                            "sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TOOL_TIMEOUT
        while not children(sup.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = children(sup.pid)
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(timeout=TOOL_TIMEOUT)
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists()
    finally:
        sup.kill()
        sup.wait()


@needs_run
def test_orphans_are_waited_for_and_reaped(fs, public):
    """run is the orphans' subreaper: it returns the command's status once the command's
    orphans are done too, and leaves no zombie."""
    done = public / "orphan-done"
    r = run_in(fs, "sh", "-c", f"(sleep 1; echo done > {done}) & exit 3", check=False)
    assert r.returncode == 3, r.stderr
    assert done.read_text() == "done\n"


# --- the file the supervisor reaches the model through --------------------------------------

def test_process_view_files_allocate_and_free_in_the_model(fs):
    ctl = fs.mnt / "sys/kernel/debug/process_view"
    before = numastat(fs, 2)
    (ctl / "alloc").write_text("4242 2 10")
    (ctl / "alloc").write_text("4242 3 6 interleave")
    held = key_values(fs.read("sys/kernel/debug/process_view/pages"))
    assert held["node2"] == 10 and held["node3"] == 6
    assert numastat(fs, 2)["numa_hit"] - before["numa_hit"] == 10
    for bad in ("4242 9 1", "4242 2", "4242 2 1 spread", "x 2 1", "4242 -1 1"):
        r = subprocess.run(["bash", "-c", f"echo '{bad}' > {ctl / 'alloc'}"],
                           capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        assert r.returncode != 0 and "Invalid argument" in r.stderr, bad
    assert key_values(fs.read("sys/kernel/debug/process_view/pages")) == held
    (ctl / "free").write_text("4242")
    assert_no_pages_held(fs)
    assert fs.read("sys/kernel/debug/dnumafs/check") == ""
