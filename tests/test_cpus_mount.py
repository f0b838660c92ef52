"""CPU moves, CPU hotplug and distance rows through a real mount: shell writes get Linux's
errnos, and numactl --hardware (under `dnumafs run`), lstopo (HWLOC_FSROOT) and lscpu
(--sysroot) agree with the files after every step of a random sequence."""
from __future__ import annotations

import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import attrs
import pytest
from files_helpers import Mounted, key_values, node_list
from test_tools import (
    TOOL_TIMEOUT,
    NodeFigures,
    check_lstopo_xml,
    check_numactl_hardware,
    hwloc_bitmap,
    hwloc_fsroot_env,
    model_figures,
    run_tool,
)

NODE = "/sys/devices/system/node"
CPU = "/sys/devices/system/cpu"
TOPO = "/sys/kernel/debug/numa_topology"
NR_CPUS = 4
HP2 = NODE + "/node2/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "128M", "--cpus", str(NR_CPUS),
                                 "--possible-nodes", "4"))


def sh(fs: Mounted, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=fs.mnt, capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT)


def lscpu(fs: Mounted, *args: str) -> str:
    r = subprocess.run(["lscpu", "--sysroot", str(fs.mnt), *args], capture_output=True,
                       text=True, timeout=TOOL_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_lscpu(fs: Mounted) -> None:
    """lscpu's online and offline lists, its nodes and each online CPU's node."""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":")
                                                   for line in lscpu(fs).splitlines())}
    online = node_list(fs.read(f"{CPU}/online"))
    assert node_list(fields["On-line CPU(s) list"] + "\n") == online
    offline = node_list(fs.read(f"{CPU}/offline"))
    assert node_list(fields.get("Off-line CPU(s) list", "") + "\n") == offline
    nodes = node_list(fs.read(f"{NODE}/online"))
    assert int(fields["NUMA node(s)"]) == len(nodes)
    for n in nodes:
        assert node_list(fields[f"NUMA node{n} CPU(s)"] + "\n") == node_list(
            fs.read(f"{NODE}/node{n}/cpulist"))
    rows = [line.split(",") for line in lscpu(fs, "-p=CPU,NODE").splitlines()
            if not line.startswith("#")]
    assert {int(c): int(n) for c, n in rows} == {
        c: int(fs.read(f"{TOPO}/cpu{c}/node")) for c in online}


def hwloc_locality(xml: str, model: dict[int, NodeFigures]) -> dict[int, NodeFigures]:
    """The model as hwloc must show it: hwloc gives a node without CPUs the CPUs of a
    nearest node with some, by the distance table (none when no node has CPUs); which of
    several equally near is hwloc's choice, so the one it chose is taken if it is among them."""
    nodes = list(model)
    shown = {int(o.get("os_index")): hwloc_bitmap(o.get("cpuset"))
             for o in ET.fromstring(xml).iter("object") if o.get("type") == "NUMANode"}
    out = dict(model)
    for n, fig in model.items():
        if fig.cpus:
            continue
        near = [b for b in nodes if model[b].cpus]
        nearest = {d for b in near for d in (fig.distance[nodes.index(b)],
                                             model[b].distance[nodes.index(n)])}
        allowed = [[]] + [model[b].cpus for b in near
                          if min(fig.distance[nodes.index(b)], model[b].distance[nodes.index(n)])
                          <= min(nearest)]
        if shown.get(n) in allowed:
            out[n] = attrs.evolve(fig, cpus=shown[n])
    return out


def check_all_tools(fs: Mounted) -> None:
    model = model_figures(fs)
    check_numactl_hardware(run_tool(fs, "numactl", "--hardware"), model)
    if shutil.which("lstopo-no-graphics"):
        r = subprocess.run(["lstopo-no-graphics", "--of", "xml", "-"], env=hwloc_fsroot_env(fs),
                           capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        assert r.returncode == 0, r.stderr
        check_lstopo_xml(r.stdout, hwloc_locality(r.stdout, model),
                         len(node_list(fs.read(f"{CPU}/online"))))
    if shutil.which("lscpu"):
        check_lscpu(fs)


def test_shell_writes_and_their_errors(fs):
    r = sh(fs, f"echo 3 > .{TOPO}/cpu2/node && cat .{TOPO}/cpu2/node .{NODE}/online")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "3\n0-1,3\n"
    moved = [c for c in range(NR_CPUS) if fs.read(f"{TOPO}/cpu{c}/node") == "3\n"]
    assert 2 in moved and node_list(fs.read(f"{NODE}/node3/cpulist")) == moved
    row = f"{TOPO}/node0/distance"
    for path, value in [(f"{TOPO}/cpu2/node", "4"), (f"{TOPO}/cpu2/node", "x"),
                        (row, "10 20"), (row, "10 20 255"), (row, "11 20 20"),
                        (f"{CPU}/cpu1/online", "2")]:
        before = fs.read(path)
        r = sh(fs, f"echo '{value}' > .{path}")
        assert r.returncode != 0 and "Invalid argument" in r.stderr, (path, value, r.stderr)
        assert fs.read(path) == before
    assert not (fs.mnt / TOPO.lstrip("/") / "cpu4").exists()
    assert fs.write(f"{TOPO}/node0/distance", "10 30 25\n") is None
    assert fs.read(f"{NODE}/node0/distance") == "10 30 25\n"
    assert oct((fs.mnt / TOPO.lstrip("/") / "cpu0/node").stat().st_mode & 0o777) == "0o600"
    assert oct((fs.mnt / CPU.lstrip("/") / "cpu1/online").stat().st_mode & 0o777) == "0o644"
    assert not (fs.mnt / CPU.lstrip("/") / "cpu0/online").exists()
    check_all_tools(fs)


def test_last_cpu_offline_is_ebusy(fs):
    for c in range(1, NR_CPUS - 1):
        assert fs.write(f"{CPU}/cpu{c}/online", "0") is None
    assert fs.write(f"{CPU}/cpu{NR_CPUS - 1}/online", "0") is None
    assert node_list(fs.read(f"{CPU}/online")) == [0]
    assert node_list(fs.read(f"{CPU}/offline")) == list(range(1, NR_CPUS))
    assert node_list(fs.read(f"{NODE}/has_cpu")) == [0]
    check_all_tools(fs)


def test_moves_onto_the_memory_make_allocations_local(fs, run_dnumafs):
    """After `dnumafs all-to MNT 2`, node 2's hugepages are allocated for its first CPU: CPU 0
    of node 0 (other_node) until CPUs move to node 2, then local_node."""
    r = run_dnumafs("all-to", str(fs.mnt), "2")
    assert r.returncode == 0, r.stderr
    s0 = key_values(fs.read(f"{NODE}/node2/numastat"))
    assert fs.write(HP2, "4") is None
    s1 = key_values(fs.read(f"{NODE}/node2/numastat"))
    assert s1["other_node"] - s0["other_node"] == 4 and s1["local_node"] == s0["local_node"]
    assert fs.write(f"{TOPO}/cpu0/node", "2") is None
    assert fs.write(HP2, "8") is None
    s2 = key_values(fs.read(f"{NODE}/node2/numastat"))
    assert s2["local_node"] - s1["local_node"] == 4 and s2["other_node"] == s1["other_node"]
    assert s2["numa_hit"] - s1["numa_hit"] == 4


def test_random_steps_every_tool_agrees(fs):
    rng = random.Random(5)
    for _ in range(40):
        what = rng.randrange(3)
        if what == 0:
            fs.write(f"{TOPO}/cpu{rng.randrange(NR_CPUS)}/node", str(rng.randrange(4)))
        elif what == 1:
            fs.write(f"{CPU}/cpu{rng.randrange(1, NR_CPUS)}/online", str(rng.randrange(2)))
        else:
            nodes = node_list(fs.read(f"{NODE}/online"))
            nid = rng.choice(nodes)
            row = [10 if b == nid else rng.randrange(11, 255) for b in nodes]
            assert fs.write(f"{TOPO}/node{nid}/distance", " ".join(map(str, row))) is None
            assert re.fullmatch(r"[\d ]+\n", fs.read(f"{NODE}/node{nid}/distance"))
        check_all_tools(fs)
    assert fs.read("/sys/kernel/debug/dnumafs/check") == ""
