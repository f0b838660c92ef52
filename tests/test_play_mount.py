"""dnumafs play against real mounts: every example scenario played on the machine its
[machine] table names, with its outcome checked through the files; two runs give one trace;
a step the files refuse stops the play and changes nothing."""
from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env

from dnumafs import client, play

SCENARIOS = Path(__file__).resolve().parent.parent / "examples" / "scenarios"
NODE = "sys/devices/system/node"
CPU = "sys/devices/system/cpu"
MEMORY = "sys/devices/system/memory"
TOPO = "sys/kernel/debug/numa_topology"
MiB_KB = 1024


def play_cli(run_dnumafs, mnt: Path, scenario: Path, *args: str
             ) -> subprocess.CompletedProcess[str]:
    r = run_dnumafs("play", mnt, scenario, *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def mount_for(mount_dnumafs, scenario: Path) -> Path:
    return mount_dnumafs(*play.load(str(scenario)).mount)


def read_trace(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clock_line(mnt: Path) -> str:
    return read(mnt, client.WORKLOAD).partition("\n")[0]


def played(mount_dnumafs, run_dnumafs, tmp_path: Path, name: str
           ) -> tuple[Path, list[dict[str, Any]]]:
    """Play examples/scenarios/NAME.toml on a fresh mount of its machine: the mount and the
    trace, after checking the trace's form, that it ends with what the files show, and the
    model's invariants. The workload's clock is made manual first: the player leaves it so,
    and the tasks the scenario leaves stand still for the checks."""
    scenario = SCENARIOS / f"{name}.toml"
    sc = play.load(str(scenario))
    mnt = mount_for(mount_dnumafs, scenario)
    (mnt / client.WORKLOAD).write_text("clock manual\n")
    trace = tmp_path / f"{name}.jsonl"
    r = play_cli(run_dnumafs, mnt, scenario, "--speed", "0", "--trace", trace)
    assert r.returncode == 0, r.stderr
    assert clock_line(mnt) == \
        f"# clock manual running time {sc.steps[-1].at:.9f} seed {sc.seed or 0}"
    lines = read_trace(trace)
    assert [(t["step"], t["line"], t["do"]) for t in lines] == \
        [(0, 0, "start")] + [(s.number, s.line, s.do) for s in sc.steps]
    assert [t["at"] for t in lines[1:]] == [float(s.at) for s in sc.steps]
    assert [t["args"] for t in lines[1:]] == [dict(s.args) for s in sc.steps]
    tree = client.MountedTree(mnt)
    last = lines[-1]
    assert sorted(last["nodes"], key=int) == [str(n) for n in tree.node_ids()]
    for nid, fig in last["nodes"].items():   # the last figures are what the files say now
        info = tree.node_meminfo(int(nid))
        assert (fig["total_kb"], fig["free_kb"], fig["used_kb"]) == \
            (info["MemTotal"], info["MemFree"], info["MemUsed"])
        assert fig["cpus"] == tree.node_cpulist(int(nid))
        assert fig["marked_pages"] == tree.marked_pages().get(int(nid), 0)
    assert last["moved_pages"] == tree.moved_pages()
    assert (mnt / "sys/kernel/debug/dnumafs/check").read_text() == ""
    return mnt, lines


def total(t: dict[str, Any]) -> int:
    return sum(n["total_kb"] for n in t["nodes"].values())


def read(mnt: Path, rel: str) -> str:
    return (mnt / rel).read_text()


def test_seed_stripe(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "seed-stripe")
    tree = client.MountedTree(mnt)
    assert tree.layout_ranges(tree.current_layout()) == \
        list(client.stripe_ranges(tree.max_pfn(), 0, 2, 256))
    start, stripe, drop = trace
    assert list(start["nodes"]) == ["0", "1"] and list(stripe["nodes"]) == ["0", "1", "2"]
    assert total(start) == total(stripe) == total(drop)
    # a third of memory moved to node 2 at the commit; the pages in use were marked, and
    # dropping the caches freed most of them, each moving as it was freed
    assert stripe["nodes"]["2"]["total_kb"] > total(start) // 4
    marked = sum(n["marked_pages"] for n in stripe["nodes"].values())
    assert marked > 0 and stripe["nodes"]["2"]["marked_pages"] == 0
    assert sum(n["marked_pages"] for n in drop["nodes"].values()) < marked // 2
    assert 0 < stripe["moved_pages"] < drop["moved_pages"]


def test_vm_migrated_to_a_new_node(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "vm-migrate")
    start, task, ranges, cpus, wait1, wait3, drop, stop = trace
    assert ranges["nodes"]["1"]["cpus"] == "2-3" and cpus["nodes"]["1"]["cpus"] == ""
    assert cpus["nodes"]["2"]["cpus"] == "2-3"
    assert read(mnt, f"{TOPO}/cpu3/node") == "2\n"
    # the free pages went at the commit; the task's and boot's pages in use were marked
    n1 = [t["nodes"]["1"] for t in trace]
    assert n1[0]["total_kb"] > 400 * MiB_KB
    assert n1[2]["total_kb"] < n1[0]["total_kb"] // 5
    # the task, now on node 2, frees its oldest pages (node 1's, marked, which move as they
    # go) as it allocates: 3 s at 4000 a second replace all 8192 it holds, on node 2
    assert n1[3]["marked_pages"] > n1[4]["marked_pages"] > n1[5]["marked_pages"] > 0
    assert [t["nodes"]["2"]["used_kb"] for t in (cpus, wait3)] == [0, 8192 * 4]
    assert n1[6]["marked_pages"] < n1[5]["marked_pages"] // 4     # the caches dropped
    assert stop["nodes"]["1"]["total_kb"] < 16 * MiB_KB
    assert stop["nodes"]["2"]["total_kb"] > 400 * MiB_KB
    assert total(start) == total(stop)
    assert stop["moved_pages"] > wait3["moved_pages"] > ranges["moved_pages"] > 0
    tree = client.MountedTree(mnt)
    assert tree.layout_ranges(tree.current_layout()) == [(0x20000, 0x3ffff, 2)]
    numastat = dict(line.split() for line in read(mnt, f"{NODE}/node2/numastat").splitlines())
    assert int(numastat["local_node"]) > 8192 and numastat["other_node"] == "0"
    assert read(mnt, client.WORKLOAD).count("\n") == 1       # the task is gone


def test_vm_compacted_onto_fewer_nodes(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "vm-compact")
    # the tasks on the moved CPUs free the pages they held on nodes 2 and 3 as they go on
    for nid in "23":
        marked = [t["nodes"][nid]["marked_pages"] for t in trace]
        assert marked[4] > marked[5] > marked[7] > 0 and marked[1] == 0
    assert "# held 4096 allocated " in read(mnt, client.WORKLOAD)
    last = trace[-1]["nodes"]
    assert [last[n]["cpus"] for n in "0123"] == ["0-1,4-5", "2-3,6-7", "", ""]
    assert read(mnt, f"{NODE}/node2/distance") == "11 20 10 20\n"
    assert read(mnt, f"{NODE}/node3/distance") == "20 11 20 10\n"
    assert read(mnt, f"{NODE}/node0/distance") == "10 20 20 20\n"   # rows as written
    for nid in (0, 1):
        assert read(mnt, f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages") == "16\n"
    for nid in "23":      # what is left is the memmap and what is still in use, marked
        assert last[nid]["total_kb"] < 16 * MiB_KB
        assert last[nid]["free_kb"] == 0
    assert total(trace[0]) == total(trace[-1])


def test_prrn_core_moves(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "prrn-cores")
    cpus = [{nid: n["cpus"] for nid, n in t["nodes"].items()} for t in trace]
    assert cpus == [
        {"0": "0-3", "1": "4-7"},
        {"0": "0-3", "1": "4-7"},
        {"0": "0-3,6-7", "1": "4-5"},
        {"0": "0-1,6-7", "1": "4-5", "2": "2-3"},
        {"0": "0-1,6-7", "1": "4-5", "2": "2-3"},
        {"0": "0-1", "1": "4-7", "2": "2-3"},
        {"0": "0-1,6-7", "1": "4-5", "2": "2-3"},
        {"0": "0-3,6-7", "1": "4-5", "2": ""},
        {"0": "0-3", "1": "4-7", "2": ""},
        {"0": "0-3", "1": "4-7", "2": ""},
    ]
    assert read(mnt, f"{NODE}/node2/distance") == "15 15 10\n"
    # CPU moves move no memory
    assert {t["moved_pages"] for t in trace} == {0}
    assert trace[-1]["nodes"]["2"]["total_kb"] == 0
    # the wandering task allocated on its CPU's node of the moment, the other interleaved
    tasks = read(mnt, client.WORKLOAD)
    assert "task wanderer cpu 6 policy local " in tasks and " failed 0" in tasks
    numastat = [dict(line.split() for line in read(mnt, f"{NODE}/node{nid}/numastat")
                     .splitlines()) for nid in (0, 1)]
    assert all(int(n["interleave_hit"]) > 0 for n in numastat)


def test_board_swap_reuses_a_node_id(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "board-swap")
    n1 = [t["nodes"]["1"] for t in trace]
    assert n1[0]["cpus"] == "2-3" and n1[2]["cpus"] == ""
    out = trace[4]["nodes"]          # the board is out, its marked pages drained
    assert out["1"]["total_kb"] < n1[0]["total_kb"] // 20
    assert out["0"]["total_kb"] > trace[0]["nodes"]["0"]["total_kb"] + 300 * MiB_KB
    # two 128 MiB blocks offline leave node 0; back under node 1 when online again
    assert trace[6]["nodes"]["0"]["total_kb"] == out["0"]["total_kb"] - 256 * MiB_KB
    assert n1[12]["total_kb"] == n1[11]["total_kb"] + 128 * MiB_KB
    last = trace[-1]["nodes"]
    assert (last["1"]["cpus"], last["2"]["cpus"]) == ("4-5", "")
    assert last["1"]["total_kb"] == n1[0]["total_kb"]
    assert last["0"]["total_kb"] == trace[0]["nodes"]["0"]["total_kb"]
    assert read(mnt, f"{CPU}/offline") == "2-3\n"
    assert read(mnt, f"{NODE}/node1/distance") == "30 10 20\n"
    assert read(mnt, f"{NODE}/node0/distance") == "10 30 20\n"
    for block in (3, 4):
        assert read(mnt, f"{MEMORY}/memory{block}/state") == "online\n"
        assert sorted(p.name for p in (mnt / f"{MEMORY}/memory{block}").glob("node*")) == \
            ["node1"]
    assert total(trace[0]) == total(trace[-1])


def test_memory_hot_added_as_a_new_node(mount_dnumafs, run_dnumafs, tmp_path):
    mnt, trace = played(mount_dnumafs, run_dnumafs, tmp_path, "hot-add-node")
    assert "2" not in trace[2]["nodes"] or trace[2]["nodes"]["2"]["total_kb"] == 0
    assert trace[3]["nodes"]["2"]["total_kb"] == 128 * MiB_KB
    last = trace[-1]["nodes"]["2"]
    assert last["total_kb"] == 256 * MiB_KB
    assert last["free_kb"] == last["total_kb"] - 32 * 2 * MiB_KB      # 32 hugepages of 2 MiB
    assert total(trace[-1]) == total(trace[0]) + 256 * MiB_KB
    assert read(mnt, f"{MEMORY}/memory8/state") == "online\n"
    assert read(mnt, f"{MEMORY}/memory8/valid_zones") == "Movable\n"
    assert read(mnt, f"{MEMORY}/memory9/state") == "online\n"
    assert (mnt / f"{NODE}/node2/memory9").is_symlink()


@pytest.mark.parametrize("name", ["vm-migrate", "prrn-cores"])
def test_two_runs_give_one_trace_whatever_the_speed(mount_dnumafs, run_dnumafs, tmp_path,
                                                    name):
    """Fresh mounts of one machine, the workload's clock left realtime: the player drives it."""
    scenario = SCENARIOS / f"{name}.toml"
    traces = []
    for speed in ("0", "8"):
        mnt = mount_for(mount_dnumafs, scenario)
        traces.append(tmp_path / f"trace-{speed}")
        r = play_cli(run_dnumafs, mnt, scenario, "--speed", speed, "--trace", traces[-1])
        assert r.returncode == 0, r.stderr
    first, second = (t.read_bytes() for t in traces)
    assert first == second
    assert len(first.splitlines()) == len(play.load(str(scenario)).steps) + 1


def test_the_seed_draws_the_page_kinds(mount_dnumafs, run_dnumafs, tmp_path):
    """The same seed gives the same kinds, another seed others (the scenario's seed, else
    --seed's)."""
    path = write(tmp_path, "kinds.toml", 'seed = 4\n[[step]]\nat = 0\ndo = "workload"\n'
                 'commands = "task t cpu 0 rate 1000 pages 4096 mix anon=1,file=1"\n'
                 '[[step]]\nat = 5\ndo = "wait"\n')
    meminfo = []
    for args in [(), ("--seed", "4"), ("--seed", "5")]:
        mnt = mount_dnumafs()
        (mnt / client.WORKLOAD).write_text("clock manual\n")
        r = play_cli(run_dnumafs, mnt, path, "--speed", "0", *args)
        assert r.returncode == 0, r.stderr
        meminfo.append(client.MountedTree(mnt).node_meminfo(0))
    assert meminfo[0] == meminfo[1] != meminfo[2]
    assert meminfo[0]["AnonPages"] != meminfo[2]["AnonPages"]


def test_the_workload_clock_is_left_as_it_was_found(mount_dnumafs, run_dnumafs, tmp_path):
    mnt = mount_dnumafs()
    path = write(tmp_path, "wait.toml", '[[step]]\nat = 2.5\ndo = "wait"\n')
    times = []
    for before, after in [("", "realtime running"), ("pause", "realtime paused"),
                          ("clock manual", "manual paused"), ("resume", "manual running")]:
        if before:
            (mnt / client.WORKLOAD).write_text(before + "\n")
        r = play_cli(run_dnumafs, mnt, path, "--speed", "0", "--seed", "5")
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith("\nplayed 1 step to model time 2.5 s\n"), r.stdout
        clock = client.workload_clock(client.MountedTree(mnt))
        assert clock is not None
        assert clock_line(mnt).startswith(f"# clock {after} time ")
        assert clock.seed == 5
        times.append(clock.time)
    # each play ran 2.5 s of model time; a running realtime clock adds a little wall time
    # (compared in nanoseconds, as the clock counts: 7.53 + 2.5 is not 10.03 in floats)
    ns = [round(t * 10**9) for t in times]
    assert ns[1] >= ns[0] + 2_500_000_000 and ns[3] == ns[2] + 2_500_000_000
    # and so after a step the files refuse, here at 1 s of model time
    (mnt / client.WORKLOAD).write_text("clock realtime\npause\n")
    bad = write(tmp_path, "bad.toml", '[[step]]\nat = 1\ndo = "drop-caches"\nmode = 5\n')
    r = play_cli(run_dnumafs, mnt, bad, "--speed", "0")
    assert r.returncode == 1 and r.stderr.endswith("(EINVAL)\n")
    assert clock_line(mnt) == f"# clock realtime paused time {times[3] + 1:.9f} seed 0"


# --- a step the files refuse ------------------------------------------------------------------

def snapshot(mnt: Path) -> dict[str, str]:
    """The texts of the files a play can change: node, CPU, memory block, layout and
    hugepage files, the allocator's proc files, the workload's if there is one."""
    tree = client.MountedTree(mnt)
    files = ["proc/buddyinfo", "proc/zoneinfo", "proc/vmstat", "proc/meminfo",
             f"{NODE}/online", f"{NODE}/has_cpu", f"{CPU}/online", f"{CPU}/offline",
             "sys/kernel/debug/dnumafs/marked_pages", "sys/kernel/debug/dnumafs/check",
             f"{client.MEMLAYOUT_DIR}/moved-pages", "sys/kernel/mm/hugepages/"
             "hugepages-2048kB/nr_hugepages"]
    for nid in tree.node_ids():
        files += [f"{NODE}/node{nid}/{f}" for f in ("meminfo", "cpulist", "distance",
                                                    "numastat", "vmstat")]
        files.append(f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages")
    files += [f"{TOPO}/{cpu}/node" for cpu in tree.listdir(CPU) if re.fullmatch(r"cpu\d+", cpu)]
    files += [f"{MEMORY}/{block}/state" for block in tree.listdir(MEMORY)
              if re.fullmatch(r"memory\d+", block)]
    if (mnt / client.WORKLOAD).exists():
        files.append(client.WORKLOAD)
    texts = {f: read(mnt, f) for f in files}
    texts["memlayout/"] = " ".join(sorted(tree.listdir(client.MEMLAYOUT_DIR)))
    texts["current"] = repr(tree.layout_ranges(tree.current_layout()))
    return texts


PREFIX = """\
[[step]]
at = 0
do = "stripe"
first = 0
last = 1
pfns = 4096

[[step]]
at = 0.5
do = "move-cpu"
cpu = 2
node = 2

[[step]]
at = 1
do = "hugepages"
node = 0
count = 4

[[step]]
at = 1
do = "hugepages"
count = 6

[[step]]
at = 1
do = "cpu-offline"
cpu = 1

[[step]]
at = 1
do = "cpu-offline"
cpu = 3

[[step]]
at = 1
do = "cpu-online"
cpu = 3
"""

# Steps the files refuse on the default machine after PREFIX, with the errno they give.
REFUSED = [
    ('do = "ranges"\nranges = [[0, 0xfff, 0], [0x1000, 0x1fff, 9]]', errno.EINVAL),
    ('do = "all-to"\nnode = 9', errno.EINVAL),
    ('do = "move-cpu"\ncpu = 2\nnode = 8', errno.EINVAL),
    ('do = "move-cpu"\ncpu = 99\nnode = 1', errno.ENOENT),
    ('do = "cpu-offline"\ncpu = 0', errno.ENOENT),       # CPU 0 has no online file
    ('do = "distance"\nnode = 0\nrow = [10]', errno.EINVAL),
    ('do = "block"\nblock = 0\nstate = "offline"', errno.EBUSY),     # reserved pages
    ('do = "drop-caches"\nmode = 5', errno.EINVAL),
    ('do = "hugepages"\nnode = 3\ncount = 1', errno.ENOENT),
    ('do = "probe"\naddress = 0x1000', errno.EINVAL),
    ('do = "probe"\naddress = 0', errno.EEXIST),
    ('do = "hugepages"\ncount = 1\nsize_kb = 4', errno.ENOENT),
    ('do = "workload"\ncommands = "stop nosuch"', errno.ENOENT),
    # all or nothing: task a is not made either
    ('do = "workload"\ncommands = ["task a cpu 0", "task b cpu 99"]', errno.EINVAL),
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_refused_step_stops_the_play_and_changes_nothing(mount_dnumafs, run_dnumafs,
                                                           tmp_path):
    mnt = mount_dnumafs("--possible-nodes", "4")
    (mnt / client.WORKLOAD).write_text("clock manual\n")      # model time as played
    r = play_cli(run_dnumafs, mnt, write(tmp_path, "prefix.toml", PREFIX), "--speed", "0")
    assert r.returncode == 0, r.stderr
    before = snapshot(mnt)
    assert before["sys/kernel/debug/dnumafs/check"] == ""
    # what the prefix wrote
    assert before[f"{CPU}/online"] == "0,2-3\n" and before[f"{CPU}/offline"] == "1\n"
    assert before["sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"] == "6\n"
    assert sum(int(before[f"{NODE}/node{nid}/hugepages/hugepages-2048kB/nr_hugepages"])
               for nid in (0, 1)) == 6
    for i, (step, err) in enumerate(REFUSED):
        path = write(tmp_path, f"bad{i}.toml", f"[[step]]\nat = 0\n{step}\n")
        do = play.load(str(path)).steps[0].do
        r = play_cli(run_dnumafs, mnt, path, "--speed", "0")
        assert r.returncode == 1, step
        assert r.stderr.startswith(f"{path}:1: step 1 ({do}): "), r.stderr
        assert r.stderr.endswith(f" ({errno.errorcode[err]})\n"), r.stderr
        assert snapshot(mnt) == before, step


def test_the_machine_after_a_refused_step_is_as_the_step_before_left_it(
        mount_dnumafs, run_dnumafs, tmp_path):
    """PREFIX then a refused step, on one mount, against PREFIX alone on another: one trace,
    the same files."""
    good = write(tmp_path, "good.toml", PREFIX)
    bad = write(tmp_path, "bad.toml", PREFIX + "\n[[step]]\nat = 1\n" + REFUSED[0][0] + "\n")
    mounts = []
    for path in (good, bad):
        mnt = mount_dnumafs("--possible-nodes", "4")
        (mnt / client.WORKLOAD).write_text("clock manual\n")
        r = play_cli(run_dnumafs, mnt, path, "--speed", "0", "--trace", f"{path}.jsonl")
        mounts.append(mnt)
    assert r.returncode == 1
    last = play.load(str(bad)).steps[-1]
    assert r.stderr == (f"{bad}:{last.line}: step {last.number} (ranges): "
                        f"{mnt}/{client.MEMLAYOUT_DIR}/node: writing 9: Invalid argument "
                        "(EINVAL)\n")
    assert Path(f"{good}.jsonl").read_text() == Path(f"{bad}.jsonl").read_text()
    assert snapshot(mounts[0]) == snapshot(mounts[1])


def test_a_scenario_is_checked_before_the_mount_is_touched(mount_dnumafs, run_dnumafs,
                                                           tmp_path):
    mnt = mount_dnumafs()
    (mnt / client.WORKLOAD).write_text("clock manual\n")
    before = snapshot(mnt)
    path = write(tmp_path, "typo.toml", PREFIX + '\n[[step]]\nat = 2\ndo = "drop-caches"\n'
                 'mode = "3"\n')
    r = play_cli(run_dnumafs, mnt, path, "--speed", "0", "--trace", tmp_path / "t")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"{path}:{PREFIX.count(chr(10)) + 2}: step {PREFIX.count('[[step]]') + 1}"
                        ' (drop-caches): mode = "3": must be an integer\n')
    assert snapshot(mnt) == before
    assert not (tmp_path / "t").exists()



def test_a_daemon_without_workload_plays_scenarios_without_workload_steps(
        mount_dnumafs, run_dnumafs, tmp_path):
    mnt = mount_dnumafs(tree="play_tree:without_workload")
    assert not (mnt / client.WORKLOAD).exists()
    r = play_cli(run_dnumafs, mnt, SCENARIOS / "seed-stripe.toml", "--speed", "0")
    assert r.returncode == 0, r.stderr
    moved = client.MountedTree(mnt).moved_pages()
    assert moved > 0
    # one with a workload step is refused before its first step
    scenario = SCENARIOS / "vm-migrate.toml"
    r = play_cli(run_dnumafs, mnt, scenario, "--speed", "0")
    assert r.returncode == 1
    assert r.stderr == (f"{scenario}:13: step 1 (workload): {mnt}/{client.WORKLOAD} does not "
                        "exist (a daemon without a workload) (ENOENT)\n")
    assert client.MountedTree(mnt).moved_pages() == moved


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_play_puts_the_clock_back(mount_dnumafs, tmp_path, signum):
    mnt = mount_dnumafs()
    (mnt / client.WORKLOAD).write_text("pause\n")
    path = write(tmp_path, "long.toml", '[[step]]\nat = 0\ndo = "wait"\n\n'
                 '[[step]]\nat = 600\ndo = "wait"\n')
    # SIGINT as a terminal sends it: a run of the tests in the background of a script would
    # otherwise hand the play an ignored SIGINT, as a shell does to its background jobs.
    child = subprocess.Popen([sys.executable, "-m", "dnumafs", "play", str(mnt), str(path)],
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                         signal.SIG_DFL))
    try:
        assert child.stdout is not None
        assert "step 1:" in child.stdout.readline()     # the clock is manual by now
        assert clock_line(mnt).startswith("# clock manual ")
        child.send_signal(signum)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "Traceback" not in err, err
    assert child.returncode == 128 + signum, err
    assert clock_line(mnt).startswith("# clock realtime paused ")


def test_what_the_mount_has_not_is_refused_before_the_first_write(mount_dnumafs, run_dnumafs,
                                                                  tmp_path):
    """A CPU the mount cannot have, a hugepage size it has not, commands longer than the
    control file takes, a seed out of the workload's range: refused before the clock, the
    seed or the good step before are written."""
    mnt = mount_dnumafs()
    (mnt / client.WORKLOAD).write_text("pause\n")
    before = snapshot(mnt)
    good = '[[step]]\nat = 0\ndo = "hugepages"\ncount = 2\n\n[[step]]\nat = 1\n'
    long = " ".join(["task a cpu 0 rate 1 pages 1"] * 200)
    for i, (step, message) in enumerate([
            ('do = "move-cpu"\ncpu = 99999999999999999999\nnode = 0',
             "cpu 99999999999999999999 is not a possible CPU (possible: 0-3) (ENOENT)"),
            ('do = "cpu-offline"\ncpu = 4', "cpu 4 is not a possible CPU"),
            ('do = "hugepages"\ncount = 1\nsize_kb = 4', "no 4 kB hugepages (sizes: "),
            (f'do = "workload"\ncommands = "{long}"', "more than the control file takes")]):
        path = write(tmp_path, f"bad{i}.toml", good + step + "\n")
        r = play_cli(run_dnumafs, mnt, path, "--speed", "0")
        assert r.returncode == 1, step
        assert r.stderr.startswith(f"{path}:6: step 2 ("), r.stderr
        assert message in r.stderr, r.stderr
        assert snapshot(mnt) == before, step
    r = play_cli(run_dnumafs, mnt, write(tmp_path, "s.toml", good + 'do = "wait"\n'),
                 "--speed", "0", "--seed", str(1 << 64))
    assert r.returncode == 2 and "argument --seed" in r.stderr, r.stderr
    assert snapshot(mnt) == before


def test_a_full_trace_disk_names_the_file_and_the_step(mount_dnumafs, run_dnumafs, tmp_path):
    mnt = mount_dnumafs()
    path = write(tmp_path, "s.toml", '[[step]]\nat = 0\ndo = "wait"\n')
    r = play_cli(run_dnumafs, mnt, path, "--speed", "0", "--trace", "/dev/full")
    assert r.returncode == 1
    assert r.stderr == ("/dev/full: writing the trace before the first step: No space left on "
                        "device (ENOSPC)\n")
    assert clock_line(mnt).startswith("# clock realtime running ")


def test_a_busy_workload_is_advanced_in_pieces_one_write_may_ask(mount_dnumafs, run_dnumafs,
                                                                 tmp_path):
    """300,000 allocations between two steps are more than one `advance` may ask (E2BIG):
    the player advances in pieces, and the task makes them all."""
    from dnumafs.mm.workload import MAX_ADVANCE_WORK
    rate = 300_000
    assert rate > MAX_ADVANCE_WORK
    mnt = mount_dnumafs()
    path = write(tmp_path, "busy.toml",
                 f'[[step]]\nat = 0\ndo = "workload"\ncommands = "task t cpu 0 rate {rate}"\n'
                 '[[step]]\nat = 1\ndo = "wait"\n')
    (mnt / client.WORKLOAD).write_text("clock manual\n")    # as the player will leave it
    r = play_cli(run_dnumafs, mnt, path, "--speed", "0")
    assert r.returncode == 0, r.stderr
    task = next(line for line in read(mnt, client.WORKLOAD).splitlines()
                if line.startswith("task t "))
    assert f" allocated {rate} " in task, task
    assert read(mnt, "sys/kernel/debug/dnumafs/check") == ""
