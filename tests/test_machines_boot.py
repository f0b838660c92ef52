"""`dnumafs mount MNT --machine PATH`: the model booted as each shared snapshot's machine, seen
by lstopo exactly as the snapshot itself, and every file still in agreement after its memory
is moved (all-to a new node, then a stripe); bad machines refused before anything is mounted.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from files_helpers import Mounted, node_list, node_meminfo, proc_meminfo
from machines_helpers import ARCHIVES, MACHINES_DIR, NAMES, shared_snapshots
from test_tools import needs_numactl, needs_run, run_tool

from dnumafs import daemon
from dnumafs.machines import MachineDescription, Snapshot, describe
from dnumafs.machines.lstopo import LSTOPO, lstopo, lstopo_diff

pytestmark = [
    pytest.mark.skipif(not ARCHIVES, reason=f"no snapshots in {MACHINES_DIR}"),
    pytest.mark.skipif(shutil.which(LSTOPO) is None, reason=f"{LSTOPO} not installed"),
]

NODE = "sys/devices/system/node"
CPU = "sys/devices/system/cpu"
STRIPES = 64        # a stripe's size: this fraction of the machine


@pytest.fixture(scope="module")
def snapshots() -> Iterator[dict[str, Snapshot]]:
    with shared_snapshots() as opened:
        yield opened


def online(fs: Mounted) -> list[int]:
    nids = node_list(fs.read(f"{NODE}/online"))
    assert sorted(int(n[4:]) for n in fs.ls(NODE) if re.fullmatch(r"node\d+", n)) == nids
    return nids


def check_agreement(fs: Mounted) -> dict[int, dict[str, int]]:
    """Every file agrees with the others and the model's invariant checker finds nothing;
    returns each online node's meminfo."""
    info = {n: node_meminfo(fs.read(f"{NODE}/node{n}/meminfo")) for n in online(fs)}
    assert node_list(fs.read(f"{NODE}/has_memory")) == [n for n, i in info.items()
                                                        if i["MemTotal"]]
    total = proc_meminfo(fs.read("proc/meminfo"))
    assert total["MemTotal"] == sum(i["MemTotal"] for i in info.values())
    for n, i in info.items():
        assert i["MemUsed"] == i["MemTotal"] - i["MemFree"]
        hp = fs.read(f"{NODE}/node{n}/hugepages/hugepages-2048kB/nr_hugepages") \
            if fs.path(f"{NODE}/node{n}/hugepages/hugepages-2048kB").exists() else "0\n"
        assert i["HugePages_Total"] == int(hp)
    # lstopo's sizes are the meminfo figures
    text = lstopo(fs.mnt, "-v", "--no-io")
    local = {int(n): int(kb) for n, kb in re.findall(r"NUMANode L#\d+ \(P#(\d+) local=(\d+)KB",
                                                      text)}
    assert all(local[n] == info[n]["MemTotal"] for n in local), (local, info)
    assert fs.read("sys/kernel/debug/dnumafs/check") == ""
    return info


def check_described(fs: Mounted, d: MachineDescription) -> None:
    """The freshly booted model is the description: node and CPU sets, sizes to the kB,
    hugepage pools of every size, distances (or none)."""
    assert node_list(fs.read(f"{NODE}/possible")) == list(d.possible_nodes)
    assert online(fs) == list(d.online_nodes)
    for name, cpus in (("possible", d.possible_cpus), ("present", d.present_cpus),
                       ("online", d.online_cpus), ("offline", d.offline_cpus)):
        assert node_list(fs.read(f"{CPU}/{name}")) == list(cpus), name
    for n in d.nodes:
        node = f"{NODE}/node{n.nid}"
        assert node_meminfo(fs.read(f"{node}/meminfo"))["MemTotal"] == n.memory_kb
        assert node_list(fs.read(f"{node}/cpulist")) == list(n.cpus)
        for size, count in n.hugepages:
            assert fs.read(f"{node}/hugepages/hugepages-{size}kB/nr_hugepages") == f"{count}\n"
        if n.distances is None:
            assert not fs.path(f"{node}/distance").exists()
        else:
            assert fs.read(f"{node}/distance") == " ".join(map(str, n.distances)) + "\n"
    for size in {size for n in d.nodes for size, _ in n.hugepages}:
        want = sum(c for n in d.nodes for s, c in n.hugepages if s == size)
        assert fs.read(f"sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages") == \
            f"{want}\n"
    for cpu in d.offline_cpus:
        if cpu in d.present_cpus:
            assert fs.read(f"{CPU}/cpu{cpu}/online") == "0\n"


def new_node(d: MachineDescription) -> int:
    """A possible node that is not online, or else the highest online one."""
    offline = [n for n in d.possible_nodes if n not in d.online_nodes]
    return offline[0] if offline else d.online_nodes[-1]


def stripe_nodes(d: MachineDescription) -> tuple[int, int]:
    """The first run of consecutive possible node ids, for `stripe FIRST LAST`."""
    first = last = d.possible_nodes[0]
    while last + 1 in d.possible_nodes:
        last += 1
    return first, last


def max_pfn(fs: Mounted) -> int:
    zones = re.findall(r"spanned\s+(\d+).*?start_pfn:\s+(\d+)", fs.read("proc/zoneinfo"), re.S)
    return max(int(s) + int(p) for s, p in zones)


@pytest.mark.parametrize("archive", NAMES)
def test_machine_boots_as_its_snapshot_and_stays_true(
        snapshots: dict[str, Snapshot], mount_dnumafs: Callable[..., Path],
        run_dnumafs: Callable[..., subprocess.CompletedProcess[str]], archive: str) -> None:
    snap = snapshots[archive]
    d = describe(snap)
    fs = Mounted(mount_dnumafs("--machine", str(MACHINES_DIR / archive)))
    assert lstopo_diff(snap.root, fs.mnt) == {}
    check_described(fs, d)
    total = check_agreement(fs)

    target = new_node(d)
    r = run_dnumafs("all-to", fs.mnt, str(target))
    assert r.returncode == 0, r.stderr
    after = check_agreement(fs)
    assert target in after
    assert sum(i["MemTotal"] for i in after.values()) == sum(i["MemTotal"] for i in total.values())
    assert after[target]["MemTotal"] > 0

    first, last = stripe_nodes(d)
    pfns = max(1024, max_pfn(fs) // STRIPES // 1024 * 1024)
    r = run_dnumafs("stripe", fs.mnt, str(first), str(last), str(pfns))
    assert r.returncode == 0, r.stderr
    striped = check_agreement(fs)
    assert all(striped[n]["MemTotal"] > 0 for n in range(first, last + 1))


@needs_run
@needs_numactl
@pytest.mark.parametrize("archive", ["48amd64-4pa2n6c-sparse.tar.bz2",
                                     "64fake-4n2s2ca2c2t.tar.bz2"])
def test_numactl_hardware_under_run(mount_dnumafs: Callable[..., Path],
                                    run_dnumafs: Callable[..., subprocess.CompletedProcess[str]],
                                    archive: str) -> None:
    """numactl sees the sparse node ids, sizes and CPUs of the machine, before and after its
    memory moves; a machine without distances has none to show."""
    fs = Mounted(mount_dnumafs("--machine", str(MACHINES_DIR / archive)))
    for step in ("boot", "all-to"):
        if step == "all-to":
            assert run_dnumafs("all-to", fs.mnt, str(online(fs)[-1])).returncode == 0
        info = check_agreement(fs)
        text = run_tool(fs, "numactl", "--hardware")
        avail = re.search(r"^available: (\d+) nodes \((.*)\)$", text, re.M)
        assert avail and node_list(avail[2] + "\n") == list(info), text
        for n, i in info.items():
            assert f"\nnode {n} size: {i['MemTotal'] // 1024} MB\n" in text, text
            cpus = re.search(rf"^node {n} cpus:(.*)$", text, re.M)
            assert cpus and [int(c) for c in cpus[1].split()] == \
                node_list(fs.read(f"{NODE}/node{n}/cpulist")), text
        if not fs.path(f"{NODE}/node{online(fs)[0]}/distance").exists():
            assert "No distance information available." in text


# --- the synthetic machine's distances --------------------------------------------------------

def test_synthetic_distances(mount_dnumafs: Callable[..., Path]) -> None:
    fs = Mounted(mount_dnumafs("--nodes", "3", "--mem", "96M",
                               "--distances", "10,12,30;12,10,21;30,21,10"))
    assert [fs.read(f"{NODE}/node{n}/distance") for n in range(3)] == \
        ["10 12 30\n", "12 10 21\n", "30 21 10\n"]
    assert "   2    30    21    10" in lstopo(fs.mnt, "--distances")


def test_hugepage_pools_of_both_sizes_through_the_files(mount_dnumafs: Callable[..., Path]
                                                        ) -> None:
    fs = Mounted(mount_dnumafs("--nodes", "2", "--mem", "8G", "--cpus", "2"))
    glob = "sys/kernel/mm/hugepages"
    assert sorted(fs.ls(glob)) == ["hugepages-1048576kB", "hugepages-2048kB"]
    assert sorted(fs.ls(f"{glob}/hugepages-2048kB")) == sorted([
        "nr_hugepages", "nr_hugepages_mempolicy", "free_hugepages", "resv_hugepages",
        "surplus_hugepages", "nr_overcommit_hugepages"])
    assert fs.write(f"{glob}/hugepages-2048kB/nr_hugepages", "5\n") is None
    per_node = [int(fs.read(f"{NODE}/node{n}/hugepages/hugepages-2048kB/nr_hugepages"))
                for n in (0, 1)]
    assert per_node == [3, 2]
    assert fs.read(f"{glob}/hugepages-2048kB/free_hugepages") == "5\n"
    gig = f"{NODE}/node1/hugepages/hugepages-1048576kB/nr_hugepages"
    free = node_meminfo(fs.read(f"{NODE}/node1/meminfo"))["MemFree"]
    assert fs.write(gig, "1") is None and fs.read(gig) == "1\n"
    assert node_meminfo(fs.read(f"{NODE}/node1/meminfo"))["MemFree"] == free - (1 << 20)
    assert fs.read(f"{glob}/hugepages-1048576kB/nr_hugepages") == "1\n"
    assert fs.write(gig, "x") == errno.EINVAL and fs.read(gig) == "1\n"
    assert fs.write(f"{glob}/hugepages-2048kB/resv_hugepages", "1") == errno.EACCES
    check_agreement(fs)


# --- bad machines ----------------------------------------------------------------------------

def _refused(tmp_path: Path, *args: str) -> str:
    """The message of a mount that must be refused; nothing may be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    r = run_cli("mount", mnt, *args, "--log", tmp_path / "log")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert not daemon.is_mounted(daemon.mountpoint_path(mnt))
    return r.stderr


def _snapshot_with(tmp_path: Path, snapshots: dict[str, Snapshot], archive: str,
                   change: Callable[[Path], None]) -> Path:
    root = tmp_path / "machine"
    shutil.copytree(snapshots[archive].root, root, symlinks=True)
    change(root)
    return root


@pytest.mark.usefixtures("runtime_dir")
def test_bad_machines_are_refused_before_anything_is_mounted(
        tmp_path: Path, snapshots: dict[str, Snapshot]) -> None:
    assert "no-such" in _refused(tmp_path, "--machine", str(tmp_path / "no-such"))
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(b"not a tar")
    assert "bad.tar.gz" in _refused(tmp_path, "--machine", str(bad_tar))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in _refused(tmp_path, "--machine", str(empty))

    def node_1024(root: Path) -> None:
        nodes = root / NODE
        (nodes / "node0").rename(nodes / "node1024")
        for name in ("possible", "online"):
            if (nodes / name).exists():
                (nodes / name).write_text("1024\n")
    root = _snapshot_with(tmp_path, snapshots, "16em64t-4s2c2t-offlines.tar.bz2", node_1024)
    assert "1024" in _refused(tmp_path, "--machine", str(root))
    shutil.rmtree(root)

    def cpus_8193(root: Path) -> None:
        (root / CPU / "possible").write_text("0-8192\n")
    root = _snapshot_with(tmp_path, snapshots, "16em64t-4s2c2t-offlines.tar.bz2", cpus_8193)
    assert "8192" in _refused(tmp_path, "--machine", str(root))
    shutil.rmtree(root)

    def huge(root: Path) -> None:
        meminfo = root / NODE / "node0" / "meminfo"
        meminfo.write_text(re.sub(r"MemTotal: +\d+", f"MemTotal:       {1 << 40}",
                                  meminfo.read_text()))
    root = _snapshot_with(tmp_path, snapshots, "16em64t-4s2c2t-offlines.tar.bz2", huge)
    assert "available" in _refused(tmp_path, "--machine", str(root))

    assert "--nodes" in _refused(tmp_path, "--machine", str(root), "--nodes", "2")
    assert "distances" in _refused(tmp_path, "--distances", "10,20;20")


@pytest.mark.usefixtures("runtime_dir")
def test_an_archive_is_extracted_while_served_and_removed_at_exit(
        tmp_path: Path, mount_dnumafs: Callable[..., Path]) -> None:
    archive = MACHINES_DIR / NAMES[0]
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
    before = set(Path("/dev/shm").glob("dnumafs-machine-*")) | set(
        Path("/tmp").glob("dnumafs-machine-*"))
    mnt = mount_dnumafs("--machine", str(archive))
    during = (set(Path("/dev/shm").glob("dnumafs-machine-*")) |
              set(Path("/tmp").glob("dnumafs-machine-*"))) - before
    assert any((d / top).is_dir() for d in during)
    assert run_cli("umount", mnt).returncode == 0
    assert not any(d.exists() for d in during)


# --- the examples ----------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """examples/NAME run with this tree's dnumafs (the runtime_dir fixture is in the env)."""
    env = dict(os.environ, DNUMAFS=f"{sys.executable} -m dnumafs")
    return subprocess.run([str(EXAMPLES / name), *args], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@needs_run
@needs_numactl
@pytest.mark.usefixtures("runtime_dir")
def test_example_machine_tools() -> None:
    archive = MACHINES_DIR / "48amd64-4pa2n6c-sparse.tar.bz2"
    r = _example("machine-tools", str(archive))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "available: 8 nodes (0-2,33-34,45,72-73)" in r.stdout
    assert "NUMA node73 CPU(s):" in r.stdout            # lscpu
    after = r.stdout.split("after all-to 73")[1]
    sizes = dict(re.findall(r"^node (\d+) size: (\d+) MB$", after, re.M))
    assert max(sizes, key=lambda n: int(sizes[n])) == "73"


@needs_run
@needs_numactl
@pytest.mark.skipif(shutil.which("hwloc-gather-topology") is None,
                    reason="hwloc-gather-topology not installed")
@pytest.mark.usefixtures("runtime_dir")
def test_example_machine_host() -> None:
    r = _example("machine-host")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== lstopo -v --no-io: the same machine" in r.stdout
    assert "== lstopo --distances: the same machine" in r.stdout
