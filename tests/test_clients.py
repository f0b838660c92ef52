"""The whole machine as real clients see it (SPEC section 5): lscpu, irqbalance, psutil,
mpstat, numad, hwloc's caches and numactl's own test programs, against a 4-node 8-CPU mount
striped over its nodes. What each prints is compared with the mount's own files, read through
the kernel."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import force_unmount, run_cli
from files_helpers import CPU, NODE, Mounted, node_list, node_meminfo, proc_meminfo
from test_tools import (
    TOOL_TIMEOUT,
    hwloc_bitmap,
    hwloc_fsroot_env,
    needs_hwloc,
    needs_run,
    run_in,
)

from dnumafs import run as dnuma_run

NODES, CPUS = 4, 8
BUS = "/sys/bus"
USER_HZ = 100


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    """One striped mount for the module: booted with 4 nodes and 8 CPUs, then a stripe of
    512 pages over nodes 0-3, so every node's memory is spread over the whole machine."""
    base = tmp_path_factory.mktemp("clients")
    mnt = base / "mnt"
    mnt.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNUMAFS_RUNTIME_DIR", str(base / "run"))
        try:
            r = run_cli("mount", mnt, "--nodes", str(NODES), "--cpus", str(CPUS), "--mem",
                        "512M", "--log", base / "mount.log")
            assert r.returncode == 0, r.stderr
            r = run_cli("stripe", mnt, "0", str(NODES - 1), "512")
            assert r.returncode == 0, r.stderr
            yield Mounted(mnt)
        finally:
            force_unmount(mnt)


# --- the model's topology, from its files ----------------------------------------------------

@attrs.frozen
class CpuFigures:
    node: int
    package: int
    core: int
    package_cpus: list[int]
    core_cpus: list[int]
    caches: list[dict[str, str]]      # index0.. : {file: value}


def cpu_figures(fs: Mounted) -> dict[int, CpuFigures]:
    """Each online CPU's node (from the nodes' cpulists), topology and caches."""
    node_of = {cpu: n for n in node_list(fs.read(f"{NODE}/online"))
               for cpu in node_list(fs.read(f"{NODE}/node{n}/cpulist"))}
    out = {}
    for cpu in node_list(fs.read(f"{CPU}/online")):
        top, cache = f"{CPU}/cpu{cpu}/topology", f"{CPU}/cpu{cpu}/cache"
        indexes = sorted(fs.ls(cache), key=lambda name: int(name.removeprefix("index")))
        out[cpu] = CpuFigures(
            node=node_of[cpu],
            package=int(fs.read(f"{top}/physical_package_id")),
            core=int(fs.read(f"{top}/core_id")),
            package_cpus=node_list(fs.read(f"{top}/package_cpus_list")),
            core_cpus=node_list(fs.read(f"{top}/core_cpus_list")),
            caches=[{name: fs.read(f"{cache}/{i}/{name}").strip() for name in fs.ls(f"{cache}/{i}")}
                    for i in indexes])
    return out


def size_kb(text: str) -> int:
    assert text.endswith("K"), text
    return int(text[:-1])


def test_new_files_are_read_only(fs):
    """Every new file refuses a write, even from root: sysfs with EACCES at open, procfs with
    EIO at the write (proc_reg_write without a write method)."""
    proc = ["/proc/cpuinfo", "/proc/stat", "/proc/interrupts", "/proc/softirqs"]
    sysfs = [f"{CPU}/cpu0/cache/index0/{name}" for name in fs.ls(f"{CPU}/cpu0/cache/index0")]
    for path in proc + sysfs:
        assert fs.write(path, "1\n") == (errno.EIO if path in proc else errno.EACCES), path
        assert os.stat(fs.path(path)).st_mode & 0o777 == 0o444, path
    r = subprocess.run(["sh", "-c", f"echo 1 > {fs.path(sysfs[0])}"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_bus_devices_link_into_devices_system(fs):
    """sys/bus/{node,cpu}/devices: a link per online node and CPU, to its directory."""
    nodes = node_list(fs.read(f"{NODE}/online"))
    cpus = node_list(fs.read(f"{CPU}/online"))
    assert sorted(fs.ls(f"{BUS}/node/devices")) == sorted(f"node{n}" for n in nodes)
    assert sorted(fs.ls(f"{BUS}/cpu/devices")) == sorted(f"cpu{c}" for c in cpus)
    for kind, ids in (("node", nodes), ("cpu", cpus)):
        for i in ids:
            link = fs.path(f"{BUS}/{kind}/devices/{kind}{i}")
            assert os.readlink(link) == f"../../../devices/system/{kind}/{kind}{i}"
            assert link.resolve() == fs.path(f"/sys/devices/system/{kind}/{kind}{i}")
    assert fs.read(f"{BUS}/cpu/devices/cpu3/topology/core_id") == \
        fs.read(f"{CPU}/cpu3/topology/core_id")


def test_a_node_brought_online_gets_its_bus_device(mount_dnumafs, run_dnumafs):
    """nodeN appears in sys/bus/node/devices when a commit brings node N online."""
    small = Mounted(mount_dnumafs("--nodes", "2", "--mem", "128M", "--possible-nodes", "4"))
    assert sorted(small.ls(f"{BUS}/node/devices")) == ["node0", "node1"]
    assert not small.path(f"{BUS}/node/devices/node3").exists()
    r = run_dnumafs("all-to", small.mnt, "3")
    assert r.returncode == 0, r.stderr
    assert sorted(small.ls(f"{BUS}/node/devices")) == ["node0", "node1", "node3"]
    assert small.path(f"{BUS}/node/devices/node3").resolve() == small.path(f"{NODE}/node3")


def test_caches_agree_with_the_topology(fs):
    """Levels 1 and 2 are the core's, level 3 the package's; size is line x ways x sets."""
    cpus = cpu_figures(fs)
    for cpu, fig in cpus.items():
        assert [(c["level"], c["type"]) for c in fig.caches] == [
            ("1", "Data"), ("1", "Instruction"), ("2", "Unified"), ("3", "Unified")]
        for c in fig.caches:
            shared = node_list(c["shared_cpu_list"] + "\n")
            assert shared == (fig.package_cpus if c["level"] == "3" else fig.core_cpus), cpu
            assert int(c["shared_cpu_map"], 16) == sum(1 << s for s in shared)
            assert size_kb(c["size"]) * 1024 == (int(c["coherency_line_size"])
                                                 * int(c["ways_of_associativity"])
                                                 * int(c["number_of_sets"])
                                                 * int(c["physical_line_partition"]))
            # CPUs that share a cache see the same one
            for other in shared:
                twin = next(o for o in cpus[other].caches
                            if (o["level"], o["type"]) == (c["level"], c["type"]))
                assert twin == c, (cpu, other)


def test_added_files_join_the_existing_directories(fs):
    """proc/ and cpuK/ list the files of every module that fills them, each once."""
    for path, expected in (("/proc", {"meminfo", "cpuinfo", "stat", "softirqs", "sys"}),
                           (f"{CPU}/cpu0", {"node0", "topology", "cache"})):
        names = fs.ls(path)
        assert len(names) == len(set(names)) and expected <= set(names), (path, names)


HWLOC_CACHES = {"L1Cache": ("1", "Data"), "L1iCache": ("1", "Instruction"),
                "L2Cache": ("2", "Unified"), "L3Cache": ("3", "Unified")}


def check_lstopo_caches(xml: str, fs: Mounted) -> None:
    """Each cache hwloc finds is one of the files' caches: its CPUs, size, ways and line."""
    expected = {(c["level"], c["type"], tuple(node_list(c["shared_cpu_list"] + "\n"))): c
                for fig in cpu_figures(fs).values() for c in fig.caches}
    found = {}
    for obj in ET.fromstring(xml).iter("object"):
        kind = HWLOC_CACHES.get(obj.get("type", ""))
        if kind:
            key = (*kind, tuple(hwloc_bitmap(obj.get("cpuset", ""))))
            found[key] = (int(obj.get("cache_size", 0)), obj.get("cache_associativity"),
                          obj.get("cache_linesize"))
    assert found == {key: (size_kb(c["size"]) * 1024, c["ways_of_associativity"],
                           c["coherency_line_size"]) for key, c in expected.items()}


@needs_hwloc
def test_lstopo_finds_the_caches(fs):
    r = subprocess.run(["lstopo-no-graphics", "--of", "xml", "-"], env=hwloc_fsroot_env(fs),
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert r.returncode == 0, r.stderr
    check_lstopo_caches(r.stdout, fs)


@needs_hwloc
@needs_run
def test_lstopo_finds_the_caches_under_run(fs):
    check_lstopo_caches(run_in(fs, "lstopo-no-graphics", "--of", "xml", "-").stdout, fs)


@needs_hwloc
@needs_run
def test_hwloc_gather_topology_under_run(fs, tmp_path):
    """hwloc-gather-topology saves the model's files (bus devices and caches included), and
    lstopo reading the saved copy finds the model's nodes, CPUs and caches."""
    run_in(fs, "hwloc-gather-topology", str(tmp_path / "saved"))
    with tarfile.open(tmp_path / "saved.tar.bz2") as tar:
        tar.extractall(tmp_path / "x", filter="tar")
    root = tmp_path / "x" / "saved"
    for kind in ("node", "cpu"):
        assert sorted(os.listdir(root / f"sys/bus/{kind}/devices")) == sorted(
            fs.ls(f"{BUS}/{kind}/devices"))
    env = dict(os.environ, HWLOC_FSROOT=str(root), **dnuma_run.TOOL_ENV)
    r = subprocess.run(["lstopo-no-graphics", "--of", "xml", "-"], env=env,
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert r.returncode == 0, r.stderr
    nodes = {int(o.get("os_index", -1)): hwloc_bitmap(o.get("cpuset", ""))
             for o in ET.fromstring(r.stdout).iter("object") if o.get("type") == "NUMANode"}
    assert nodes == {n: node_list(fs.read(f"{NODE}/node{n}/cpulist"))
                     for n in node_list(fs.read(f"{NODE}/online"))}
    check_lstopo_caches(r.stdout, fs)


def cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    assert text.endswith("\n\n")
    blocks = []
    for block in text.strip("\n").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            m = re.fullmatch(r"([^\t:]+)\t*: ?(.*)", line)
            assert m, repr(line)
            assert len(line.partition(":")[0].expandtabs(8)) in (16, len(m[1])), repr(line)
            fields[m[1]] = m[2]
        blocks.append(fields)
    return blocks


def test_cpuinfo_is_the_models_topology(fs):
    """One block per online CPU; its package, core and sibling counts are the topology
    files', its `cache size` the last level's; the CPU's identity is the host's."""
    cpus = cpu_figures(fs)
    blocks = cpuinfo_blocks(fs.read("/proc/cpuinfo"))
    host = cpuinfo_blocks(Path("/proc/cpuinfo").read_text())[0]
    assert [int(b["processor"]) for b in blocks] == list(cpus)
    for block, fig in zip(blocks, cpus.values()):
        assert int(block["physical id"]) == fig.package
        assert int(block["core id"]) == fig.core
        assert int(block["siblings"]) == len(fig.package_cpus)
        assert int(block["cpu cores"]) == len(fig.package_cpus) // len(fig.core_cpus)
        assert block["cache size"] == f"{size_kb(fig.caches[-1]['size'])} KB"
        for key in ("vendor_id", "model name", "flags"):
            if key in host:
                assert block[key] == host[key]


def proc_stat(text: str) -> dict[str, list[int]]:
    return {name: [int(v) for v in values] for name, *values in map(str.split,
                                                                     text.splitlines())}


def test_stat_and_interrupts_are_idle_cpus(fs):
    """A line (column) per online CPU; only idle time grows, with the clock since the mount;
    the cpu line is the sum; no interrupt, context switch or process."""
    cpus = node_list(fs.read(f"{CPU}/online"))
    before = proc_stat(fs.read("/proc/stat"))
    time.sleep(0.3)
    after = proc_stat(fs.read("/proc/stat"))
    for stat in (before, after):
        assert [k for k in stat if k.startswith("cpu")] == ["cpu", *(f"cpu{c}" for c in cpus)]
        for name in ("cpu", *(f"cpu{c}" for c in cpus)):
            assert len(stat[name]) == 10 and stat[name][:3] + stat[name][4:] == [0] * 9
        assert stat["cpu"][3] == sum(stat[f"cpu{c}"][3] for c in cpus)
        assert stat["intr"] == [0] and stat["ctxt"] == [0] and stat["processes"] == [0]
        assert stat["softirq"] == [0] * 11
        assert abs(stat["btime"][0] - time.time()) < 3600
    grown = after["cpu0"][3] - before["cpu0"][3]
    assert 0.3 * USER_HZ - 2 <= grown <= 30 * USER_HZ
    header = fs.read("/proc/interrupts").splitlines()[0]
    assert header.split() == [f"CPU{c}" for c in cpus]
    assert fs.read("/proc/interrupts").count("\n") == 1
    header, *lines = fs.read("/proc/softirqs").splitlines()
    assert header.split() == [f"CPU{c}" for c in cpus]
    assert len(lines) == len(after["softirq"]) - 1
    for line in lines:
        name, _, counts = line.partition(":")
        assert name.strip().isupper() and counts.split() == ["0"] * len(cpus), line


# --- lscpu ---------------------------------------------------------------------------------------

needs_lscpu = pytest.mark.skipif(not shutil.which("lscpu"), reason="util-linux lscpu missing")


def lscpu_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":")
                                                 for line in text.splitlines())}


def check_lscpu(summary: str, parsable: str, caches: str, fs: Mounted) -> None:
    """lscpu's summary, `-p` table and `-C` cache table against the model's files."""
    cpus = cpu_figures(fs)
    nodes = node_list(fs.read(f"{NODE}/online"))
    f = lscpu_fields(summary)
    assert int(f["CPU(s)"]) == len(cpus)
    assert node_list(f["On-line CPU(s) list"] + "\n") == list(cpus)
    assert int(f["Socket(s)"]) == len({c.package for c in cpus.values()})
    assert int(f["Core(s) per socket"]) == len(cpus[0].package_cpus) // len(cpus[0].core_cpus)
    assert int(f["Thread(s) per core"]) == len(cpus[0].core_cpus)
    assert int(f["NUMA node(s)"]) == len(nodes)
    for n in nodes:
        assert node_list(f[f"NUMA node{n} CPU(s)"] + "\n") == node_list(
            fs.read(f"{NODE}/node{n}/cpulist"))
    # -p=CPU,CORE,SOCKET,NODE,CACHE: one line per CPU, an empty column, then the cache ids
    rows = [line.split(",") for line in parsable.splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == list(cpus)
    for _cpu, _core, socket, node, empty, *cache in rows:
        fig = cpus[int(_cpu)]
        assert (int(socket), int(node), empty) == (fig.package, fig.node, "")
        assert cache == [c["id"] for c in fig.caches]
    # -C: each cache's size, ways, sets and instance count
    table = {r[0]: r[1:] for r in (line.split() for line in caches.splitlines()[1:])}
    for c in cpus[0].caches:
        name = f"L{c['level']}" + {"Data": "d", "Instruction": "i"}.get(c["type"], "")
        one, total, ways, level, sets = table[name]
        instances = len({o["id"] for fig in cpus.values() for o in fig.caches
                         if (o["level"], o["type"]) == (c["level"], c["type"])})
        assert int(one) == size_kb(c["size"]) * 1024
        assert int(total) == int(one) * instances
        assert (ways, level, sets) == (c["ways_of_associativity"], c["level"],
                                       c["number_of_sets"])


LSCPU_P = "-p=CPU,CORE,SOCKET,NODE,CACHE"
LSCPU_C = "-C=NAME,ONE-SIZE,ALL-SIZE,WAYS,LEVEL,SETS"


@needs_lscpu
def test_lscpu_sysroot(fs):
    def lscpu(*args: str) -> str:
        r = subprocess.run(["lscpu", "--sysroot", str(fs.mnt), *args], capture_output=True,
                           text=True, timeout=TOOL_TIMEOUT)
        assert r.returncode == 0, r.stderr
        return r.stdout
    check_lscpu(lscpu(), lscpu(LSCPU_P), lscpu(LSCPU_C, "--bytes"), fs)


@needs_lscpu
@needs_run
def test_lscpu_under_run_keeps_the_hosts_other_cpu_files(fs):
    """Under `dnumafs run` lscpu sees the model's CPUs, nodes and caches, and still the host's
    vulnerabilities; the cpu directory holds the host's entries the model lacks."""
    check_lscpu(run_in(fs, "lscpu").stdout, run_in(fs, "lscpu", LSCPU_P).stdout,
                run_in(fs, "lscpu", LSCPU_C, "--bytes").stdout, fs)
    host = Path("/sys/devices/system/cpu/vulnerabilities")
    if host.is_dir():
        lines = [line for line in run_in(fs, "lscpu").stdout.splitlines()
                 if line.startswith("Vulnerability ")]
        assert len(lines) == len(os.listdir(host))
    listed = ls_in(fs, "/sys/devices/system/cpu", "/sys/bus/cpu/devices", "/sys/bus/node/devices")
    assert listed["/sys/devices/system/cpu"] == merged_cpu_names(fs)
    assert listed["/sys/bus/cpu/devices"] == set(fs.ls(f"{BUS}/cpu/devices"))
    assert listed["/sys/bus/node/devices"] == set(fs.ls(f"{BUS}/node/devices"))
    # what the model has an opinion on is the model's, the rest the host's
    r = run_in(fs, "sh", "-c", "cat /sys/devices/system/cpu/online "
               "/sys/devices/system/cpu/kernel_max; touch /sys/devices/system/cpu/new",
               check=False)
    online, kernel_max = r.stdout.splitlines()
    assert online + "\n" == fs.read(f"{CPU}/online")
    assert kernel_max == Path("/sys/devices/system/cpu/kernel_max").read_text().strip()
    assert r.returncode != 0 and "Read-only" in r.stderr


def ls_in(fs: Mounted, *dirs: str) -> dict[str, set[str]]:
    """Each directory's names as `ls` lists them under `dnumafs run`."""
    out = run_in(fs, "ls", *dirs).stdout
    return {d: set(names.split()) for d, names in re.findall(r"^(\S+):\n((?:.+\n)*)", out, re.M)}


def merged_cpu_names(fs: Mounted) -> set[str]:
    """What `dnumafs run` shows in /sys/devices/system/cpu: the model's entries and the host's
    others, but no host cpuN the model lacks."""
    host = {n for n in os.listdir("/sys/devices/system/cpu") if not re.fullmatch(r"cpu\d+", n)}
    return set(fs.ls(CPU)) | host


@needs_run
def test_run_shows_no_host_cpu_beyond_the_models(mount_dnumafs):
    """A 1-CPU model on a bigger host: the host's other cpuN stay hidden, its other files not."""
    small = Mounted(mount_dnumafs("--nodes", "1", "--cpus", "1", "--mem", "64M"))
    listed = ls_in(small, "/sys/devices/system/cpu", "/sys/bus/cpu/devices")
    assert listed["/sys/devices/system/cpu"] == merged_cpu_names(small)
    assert listed["/sys/bus/cpu/devices"] == {"cpu0"}
    assert run_in(small, "getconf", "_NPROCESSORS_ONLN").stdout == "1\n"


# --- irqbalance, mpstat, psutil ---------------------------------------------------------------

needs_irqbalance = pytest.mark.skipif(not shutil.which("irqbalance"),
                                      reason="irqbalance missing")


@pytest.fixture(scope="module")
def irqbalance_tree(fs) -> str:
    """irqbalance --debug --oneshot's last topology dump (it finished: oneshot)."""
    out = run_in(fs, "irqbalance", "--debug", "--oneshot").stdout
    dumps = out.split("-" * 77)
    return dumps[-1] if len(dumps) > 1 else out


def irq_cpus(tree: str) -> dict[int, str]:
    """{cpu: the nodes irqbalance gives it} from its `CPU number N  numa_node is ...`."""
    return {int(m[1]): m[2].strip() for m in re.finditer(
        r"^\s+CPU number (\d+)\s+numa_node is ([\d ]*)\(load", tree, re.M)}


@needs_irqbalance
@needs_run
def test_irqbalance_oneshot_sees_the_models_cpus(fs, irqbalance_tree):
    """It finishes, and finds each package (the node's CPUs) and each CPU of the model."""
    cpus = cpu_figures(fs)
    assert sorted(irq_cpus(irqbalance_tree)) == list(cpus)
    packages = {int(m[1]): int(m[2], 16) for m in re.finditer(
        r"^Package (\d+):.*cpu mask is ([0-9a-f,]+)", irqbalance_tree.replace(",", ""), re.M)}
    assert packages == {fig.package: sum(1 << c for c in fig.package_cpus)
                        for fig in cpus.values()}


@needs_irqbalance
@needs_run
def test_irqbalance_finds_each_cpus_node(fs, irqbalance_tree):
    cpus = cpu_figures(fs)
    assert irq_cpus(irqbalance_tree) == {cpu: str(fig.node) for cpu, fig in cpus.items()}


@pytest.mark.skipif(not shutil.which("mpstat"), reason="sysstat's mpstat missing")
@needs_run
def test_mpstat_per_node_and_per_cpu(fs):
    """mpstat -N ALL: a row per node with CPUs, all idle; -P ALL: a row per CPU; -I SCPU: a
    column per softirq of /proc/softirqs, none counted."""
    cpus = cpu_figures(fs)
    with_cpus = sorted({fig.node for fig in cpus.values()})

    def rows(text: str, what: str) -> dict[str, list[float]]:
        header = next(line for line in text.splitlines() if f" {what} " in line)
        assert header.split()[-1] == "%idle"
        return {r[1]: [float(v) for v in r[2:]] for r in map(str.split, text.splitlines())
                if len(r) == len(header.split()) and r[0] == "Average:" and r[1] != what}
    nodes = rows(run_in(fs, "mpstat", "-N", "ALL", "1", "1").stdout, "NODE")
    assert list(nodes) == ["all", *map(str, with_cpus)]
    per_cpu = rows(run_in(fs, "mpstat", "-P", "ALL", "1", "1").stdout, "CPU")
    assert list(per_cpu) == ["all", *map(str, cpus)]
    for values in [*nodes.values(), *per_cpu.values()]:
        assert values[-1] == 100.0 and values[:-1] == [0.0] * (len(values) - 1)
    out = run_in(fs, "mpstat", "-I", "SCPU", "-P", "ALL", "1", "1").stdout
    header = next(line for line in out.splitlines() if line.startswith("Average:"))
    names = [line.partition(":")[0].strip() for line in fs.read("/proc/softirqs").splitlines()[1:]]
    assert header.split()[2:] == [f"{name}/s" for name in names]
    softirqs = {r[1]: r[2:] for r in map(str.split, out.splitlines())
                if r and r[0] == "Average:" and r[1] != "CPU"}
    assert list(softirqs) == list(map(str, cpus))
    assert all(v == ["0.00"] * len(names) for v in softirqs.values())


PSUTIL_SCRIPT = """
import json, warnings, psutil
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    vm = psutil.virtual_memory()
print(json.dumps({"logical": psutil.cpu_count(), "cores": psutil.cpu_count(logical=False),
                  "total": vm.total, "free": vm.free, "available": vm.available,
                  "buffers": vm.buffers, "cached": vm.cached, "shared": vm.shared,
                  "active": vm.active, "inactive": vm.inactive, "slab": vm.slab,
                  "warnings": [str(w.message) for w in caught]}))
"""


@needs_run
def test_psutil(fs):
    """cpu_count() (from cpu/online) and cpu_count(logical=False) (the cores of the topology),
    virtual_memory() from /proc/meminfo, under `dnumafs run`."""
    pytest.importorskip("psutil")
    got = json.loads(run_in(fs, sys.executable, "-c", PSUTIL_SCRIPT).stdout)
    cpus = cpu_figures(fs)
    meminfo = proc_meminfo(fs.read("/proc/meminfo"))
    assert got["logical"] == len(cpus)
    assert got["cores"] == len({(f.package, f.core) for f in cpus.values()})
    assert got["total"] == meminfo["MemTotal"] * 1024
    assert got["free"] == meminfo["MemFree"] * 1024
    assert got["available"] == meminfo["MemAvailable"] * 1024
    assert got["warnings"] == []
    # psutil's cache is the page cache and the reclaimable slab, as free's
    assert got["cached"] == (meminfo["Cached"] + meminfo["SReclaimable"]) * 1024 > 0
    for key, name in (("buffers", "Buffers"), ("shared", "Shmem"), ("active", "Active"),
                      ("inactive", "Inactive"), ("slab", "Slab")):
        assert got[key] == meminfo[name] * 1024, key
    assert got["active"] > 0 and got["inactive"] > 0 and got["slab"] > 0


@needs_run
@pytest.mark.skipif(not (shutil.which("free") and shutil.which("top")),
                    reason="procps free and top missing")
def test_free_and_top_show_the_models_buff_cache(fs):
    """procps `free` and `top -bn1` under `dnumafs run`: the model's memory, buff/cache
    (buffers, page cache and reclaimable slab) not 0."""
    meminfo = proc_meminfo(fs.read("/proc/meminfo"))
    buff_cache = meminfo["Buffers"] + meminfo["Cached"] + meminfo["SReclaimable"]
    assert buff_cache > 0
    out = run_in(fs, "free", "-k").stdout
    row = next(line.split() for line in out.splitlines() if line.startswith("Mem:"))
    total, used, free, shared, cache, available = map(int, row[1:7])
    assert (total, free, shared, cache, available) == (
        meminfo["MemTotal"], meminfo["MemFree"], meminfo["Shmem"], buff_cache,
        meminfo["MemAvailable"])
    # procps-ng 4 counts used as total - available, earlier ones total - free - buff/cache
    assert used in (total - available, total - free - cache)
    out = run_in(fs, "top", "-bn1", "-E", "k").stdout
    mem = next(line for line in out.splitlines() if line.startswith("KiB Mem"))
    figures = {name: float(v) for v, name in re.findall(r"([\d.]+) ([\w/]+)", mem)}
    assert figures["total"] == meminfo["MemTotal"] and figures["free"] == meminfo["MemFree"]
    assert figures["buff/cache"] == buff_cache


@pytest.mark.skipif(not shutil.which("numad"), reason="numad missing")
@needs_run
def test_numad_recommends_model_nodes(fs):
    """numad -w 2:512: the nodes it advises for 2 CPUs and 512 MB are the model's nodes with
    CPUs. numad needs each node's Inactive(file)."""
    assert "Inactive(file)" in node_meminfo(fs.read(f"{NODE}/node0/meminfo"))
    out = run_in(fs, "numad", "-w", "2:512").stdout
    advised = node_list(out.strip().split()[-1] + "\n")
    cpus = cpu_figures(fs)
    assert advised and set(advised) <= {fig.node for fig in cpus.values()}


# --- numactl's own test programs -----------------------------------------------------------

NUMACTL_TESTS = ("distance", "nodemap", "tbitmap", "mynode")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dnumafs"


def build_numactl_tests(where: Path) -> Path:
    """numactl's source tree, from `apt-get source numactl`, with its test programs built;
    kept in where across sessions."""
    trees = sorted(where.glob("numactl-*/test"))
    if trees and all((trees[-1] / t).exists() for t in NUMACTL_TESTS):
        return trees[-1].parent
    if not shutil.which("apt-get") or not shutil.which("gcc"):
        pytest.skip("numactl's tests need apt-get source, gcc and libnuma-dev "
                    "(scripts/install-system-deps)")
    where.mkdir(parents=True, exist_ok=True)

    def step(*argv: str, cwd: Path) -> None:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            pytest.skip(f"building numactl's tests: {' '.join(argv)} failed (scripts/"
                        f"install-system-deps adds the deb-src entry):\n{r.stderr[-2000:]}")
    step("apt-get", "source", "numactl", cwd=where)
    src = sorted(where.glob("numactl-*/test"))[-1].parent
    step("./autogen.sh", cwd=src)
    step("./configure", cwd=src)
    step("make", *(f"test/{t}" for t in NUMACTL_TESTS), cwd=src)
    return src


@pytest.fixture(scope="session")
def numactl_src() -> Path:
    """Built once per machine; a lock keeps two test runs from building at the same time."""
    where = cache_dir() / "numactl-tests"
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where.parent / "numactl-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_numactl_tests(where)


@needs_run
def test_numactl_own_tests(fs, numactl_src):
    """distance, nodemap, tbitmap, mynode and checkaffinity, under `dnumafs run`: each passes,
    and what it prints is the model's distances, node CPUs and the node of a CPU we run on."""
    def test(name: str) -> str:
        return run_in(fs, str(numactl_src / "test" / name)).stdout
    nodes = node_list(fs.read(f"{NODE}/online"))
    distances = {int(m[1]): [int(d) for d in m[2].split()]
                 for m in re.finditer(r"^(\d+): ((?:\d+ ?)+)$", test("distance"), re.M)}
    assert distances == {n: [int(d) for d in fs.read(f"{NODE}/node{n}/distance").split()]
                         for n in nodes}
    nodemap = {int(m[1]): [int(c) for c in m[2].split()]
               for m in re.finditer(r"^(\d+): ([\d ]*)$", test("nodemap"), re.M)}
    assert nodemap == {n: node_list(fs.read(f"{NODE}/node{n}/cpulist")) for n in nodes}
    assert "Passed" in test("tbitmap")
    mine = re.fullmatch(r"my node (\d+)\n", test("mynode"))
    assert mine, "mynode"
    cpus = cpu_figures(fs)
    assert int(mine[1]) in {cpus[c].node for c in os.sched_getaffinity(0) if c in cpus}
    with contextlib.suppress(FileNotFoundError):
        (numactl_src / "test" / "printcpu").chmod(0o755)
    test("checkaffinity")
