"""The real tools, unmodified, against a mount: numactl, numastat and lstopo through `dnumafs run`
(and lstopo with HWLOC_FSROOT too), before and after a stripe, an all-to onto a new node and
the transplant of freed pages. Every figure they print is compared with the model's, read
through the mount's own files (cpulist rather than the cpumap the tools parse, so the two
CPU files are checked against each other too)."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from files_helpers import (
    KEPT_BY_DROP_CACHES,
    ML,
    NODE,
    Mounted,
    key_values,
    node_list,
    node_meminfo,
    proc_meminfo,
)

from dnumafs import run as dnuma_run

HP = NODE + "/node{}/hugepages/hugepages-2048kB/nr_hugepages"
HPAGE_MB = 2
TOOL_TIMEOUT = 60


def _can_make_namespaces() -> bool:
    """`dnumafs run` needs root, or a user namespace this user may create."""
    if os.geteuid() == 0:
        return True
    return subprocess.run(["unshare", "--user", "--mount", "true"],
                          capture_output=True).returncode == 0


needs_run = pytest.mark.skipif(not _can_make_namespaces(),
                               reason="no mount namespace: needs root or user namespaces")
needs_numactl = pytest.mark.skipif(not (shutil.which("numactl") and shutil.which("numastat")),
                                   reason="numactl not installed")
needs_hwloc = pytest.mark.skipif(not shutil.which("lstopo-no-graphics"),
                                 reason="hwloc not installed")


# --- the model's figures, from the mount's files ----------------------------------------------

@attrs.frozen
class NodeFigures:
    cpus: list[int]
    meminfo: dict[str, int]       # kB, or a count for HugePages_*
    numastat: dict[str, int]      # pages
    distance: list[int]           # one per node, in node order


def model_figures(fs: Mounted) -> dict[int, NodeFigures]:
    """Each online node's figures, as the files show them now."""
    nids = sorted(int(n[4:]) for n in fs.ls(NODE) if re.fullmatch(r"node\d+", n))
    assert nids == node_list(fs.read(f"{NODE}/online"))
    return {n: NodeFigures(cpus=node_list(fs.read(f"{NODE}/node{n}/cpulist")),
                           meminfo=node_meminfo(fs.read(f"{NODE}/node{n}/meminfo")),
                           numastat=key_values(fs.read(f"{NODE}/node{n}/numastat")),
                           distance=[int(d) for d in fs.read(f"{NODE}/node{n}/distance").split()])
            for n in nids}


# --- running and reading the tools -----------------------------------------------------------

def run_in(fs: Mounted, *argv: str, env: dict[str, str] | None = None, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """argv through `dnumafs run`, its exit status checked to be 0 unless check is False."""
    r = subprocess.run([sys.executable, "-m", "dnumafs", "run", str(fs.mnt), "--", *argv],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env,
                       stdin=subprocess.DEVNULL)
    assert not check or r.returncode == 0, f"{argv}: status {r.returncode}\n{r.stdout}{r.stderr}"
    return r


def run_tool(fs: Mounted, *argv: str, env: dict[str, str] | None = None) -> str:
    """argv through `dnumafs run`; its output, once it has exited 0."""
    return run_in(fs, *argv, env=env).stdout


def check_numactl_hardware(text: str, model: dict[int, NodeFigures]) -> None:
    """numactl --hardware: node list, CPUs, size and free in MB, the distance table."""
    m = re.search(r"^available: (\d+) nodes \((.*)\)$", text, re.M)
    assert m, text
    assert int(m[1]) == len(model) and node_list(m[2] + "\n") == list(model), text
    for n, fig in model.items():
        cpus = re.search(rf"^node {n} cpus:(.*)$", text, re.M)
        assert cpus and [int(c) for c in cpus[1].split()] == fig.cpus, text
        assert f"\nnode {n} size: {fig.meminfo['MemTotal'] // 1024} MB\n" in text, text
        assert f"\nnode {n} free: {fig.meminfo['MemFree'] // 1024} MB\n" in text, text
    header = re.search(r"^node((?: +\d+)+) *$", text, re.M)
    assert header and [int(c) for c in header[1].split()] == list(model), text
    rows = {int(n): [int(d) for d in values.split()]
            for n, values in re.findall(r"^ *(\d+):((?: +\d+)+) *$", text, re.M)}
    assert rows == {n: fig.distance for n, fig in model.items()}, text


def numastat_table(text: str) -> dict[str, dict[str, float]]:
    """A numastat table (default, -n or -m) as {row: {column: value}}; columns are `node0`...
    or `Node 0`... and `Total`."""
    lines = [line for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):  # noqa: B007 (i is used after the loop)
        columns = re.findall(r"[Nn]ode ?\d+|Total", line)
        if columns and line.split()[0] in ("node0", "Node") and not line.startswith("Per-"):
            break
    else:
        raise AssertionError(f"no numastat header in:\n{text}")
    table = {}
    for line in lines[i + 1:]:
        name, *values = line.split()
        if set(name) == {"-"}:
            continue
        assert len(values) == len(columns), line
        table[name] = dict(zip(columns, map(float, values)))
    return table


def check_numastat(text: str, model: dict[int, NodeFigures]) -> None:
    """numastat: each node's nodeN/numastat counters, in pages."""
    table = numastat_table(text)
    for n, fig in model.items():
        assert {name: int(row[f"node{n}"]) for name, row in table.items()} == fig.numastat, text


def pages_mb(pages: int) -> float:
    return pages * 4096 / (1 << 20)


def check_numastat_mb(table: dict[str, dict[str, float]], expected: dict[int, dict[str, float]]
                      ) -> None:
    """Each node's column and the Total column, to numastat's two decimals."""
    for name in next(iter(expected.values())):
        row = table[name]
        for n, values in expected.items():
            assert row[f"Node {n}"] == pytest.approx(values[name], abs=0.006), (name, n, row)
        assert row["Total"] == pytest.approx(sum(v[name] for v in expected.values()),
                                              abs=0.006 * len(expected)), (name, row)


NUMASTAT_N_ROWS = {"Numa_Hit": "numa_hit", "Numa_Miss": "numa_miss",
                   "Numa_Foreign": "numa_foreign", "Interleave_Hit": "interleave_hit",
                   "Local_Node": "local_node", "Other_Node": "other_node"}


def check_numastat_n(text: str, model: dict[int, NodeFigures]) -> None:
    """numastat -n: the same counters in MB."""
    table = numastat_table(text)
    assert list(table) == list(NUMASTAT_N_ROWS), text
    check_numastat_mb(table, {n: {row: pages_mb(fig.numastat[key])
                                  for row, key in NUMASTAT_N_ROWS.items()}
                              for n, fig in model.items()})


def check_numastat_m(text: str, model: dict[int, NodeFigures]) -> None:
    """numastat -m: every nodeN/meminfo key, in MB (hugepages counted at 2 MB each)."""
    table = numastat_table(text)
    keys = list(next(iter(model.values())).meminfo)
    # numastat prints noise for keys Linux lacks, and leaves out, saying so, the keys of newer
    # kernels it does not know (numactl 2.0.16: SwapCached, SecPageTables, FileHugePages...)
    unknown = re.findall(r"^Token (\S+) not in hash table\.$", text, re.M)
    assert set(unknown) <= set(keys) and sorted(table) == sorted(set(keys) - set(unknown)), text
    check_numastat_mb(table, {
        n: {k: v * HPAGE_MB if k.startswith("HugePages_") else v / 1024
            for k, v in fig.meminfo.items() if k in table}
        for n, fig in model.items()})


def hwloc_bitmap(text: str) -> list[int]:
    """An hwloc bitmap, `0x0000000c` or `0x00000001,0x00000000`, as its bits."""
    value = int("".join(word.removeprefix("0x") for word in text.split(",")), 16)
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def check_lstopo_xml(text: str, model: dict[int, NodeFigures], nr_cpus: int) -> None:
    """lstopo's XML: the NUMA nodes, their memory in bytes, hugepages, CPUs and distances."""
    root = ET.fromstring(text)
    numa = {int(o.get("os_index")): o for o in root.iter("object")
            if o.get("type") == "NUMANode"}
    assert sorted(numa) == list(model)
    assert len([o for o in root.iter("object") if o.get("type") == "PU"]) == nr_cpus
    for n, fig in model.items():
        obj = numa[n]
        assert int(obj.get("local_memory", 0)) == fig.meminfo["MemTotal"] * 1024, n
        assert hwloc_bitmap(obj.get("cpuset")) == fig.cpus, n
        huge = {int(p.get("size")): int(p.get("count")) for p in obj.iter("page_type")}
        assert huge.get(HPAGE_MB << 20, 0) == fig.meminfo["HugePages_Total"], n
    dist = next(d for d in root.iter("distances2") if d.get("type") == "NUMANode")
    # hwloc writes long lists in several elements
    indexes = [int(i) for e in dist.iter("indexes") for i in e.text.split()]
    values = [int(v) for e in dist.iter("u64values") for v in e.text.split()]
    assert indexes == list(model)
    assert values == [d for fig in model.values() for d in fig.distance]


def hwloc_fsroot_env(fs: Mounted) -> dict[str, str]:
    return dict(os.environ, HWLOC_FSROOT=str(fs.mnt), HWLOC_COMPONENTS="linux,stop")


def check_tools(fs: Mounted, nr_cpus: int) -> dict[int, NodeFigures]:
    """Every tool against the model as it is now; returns the model's figures."""
    model = model_figures(fs)
    check_numactl_hardware(run_tool(fs, "numactl", "--hardware"), model)
    check_numastat(run_tool(fs, "numastat"), model)
    check_numastat_n(run_tool(fs, "numastat", "-n"), model)
    check_numastat_m(run_tool(fs, "numastat", "-m"), model)
    # --show: the process's own policy and binding; under the process view it may run on
    # every model CPU, so it is bound to every node with CPUs (the seed's numactl segfaulted)
    show = run_tool(fs, "numactl", "--show")
    m = re.search(r"^nodebind:(.*)$", show, re.M)
    assert m, show
    assert {int(n) for n in m[1].split()} == {n for n, f in model.items() if f.cpus}
    if shutil.which("lstopo-no-graphics"):
        fsroot = subprocess.run(["lstopo-no-graphics", "--of", "xml", "-"],
                                env=hwloc_fsroot_env(fs), capture_output=True, text=True,
                                timeout=TOOL_TIMEOUT)
        assert fsroot.returncode == 0, fsroot.stderr
        check_lstopo_xml(fsroot.stdout, model, nr_cpus)
        check_lstopo_xml(run_tool(fs, "lstopo-no-graphics", "--of", "xml", "-"), model,
                         nr_cpus)
    assert model_figures(fs) == model        # reading changed nothing
    return model


# --- the tests -------------------------------------------------------------------------------

@pytest.fixture
def fs(mount_dnumafs) -> Mounted:
    # 2 nodes of 64 MiB, 4 CPUs, 4 possible nodes
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "128M", "--cpus", "4",
                                 "--possible-nodes", "4"))


def dnumafs(run_dnumafs, *args: str | os.PathLike[str]) -> None:
    r = run_dnumafs(*args)
    assert r.returncode == 0, r.stderr


@needs_run
@needs_numactl
def test_tools_through_stripe_all_to_and_transplant(fs, run_dnumafs):
    boot = check_tools(fs, 4)
    assert list(boot) == [0, 1]
    assert boot[1].cpus == [2, 3]

    dnumafs(run_dnumafs, "stripe", fs.mnt, "0", "2", "512")
    striped = check_tools(fs, 4)
    assert list(striped) == [0, 1, 2] and striped[2].cpus == []
    assert striped[2].meminfo["MemTotal"] > 0

    assert fs.write(HP.format(1), "4") is None
    pooled = check_tools(fs, 4)
    assert pooled[1].meminfo["HugePages_Total"] == 4

    dnumafs(run_dnumafs, "all-to", fs.mnt, "3")
    moved = check_tools(fs, 4)
    assert list(moved) == [0, 1, 2, 3]
    # free pages all moved; the hugepages and boot allocations wait, marked, on their nodes
    assert all(moved[n].meminfo["MemFree"] == 0 for n in (0, 1, 2))
    assert moved[1].meminfo["MemTotal"] >= 4 * HPAGE_MB * 1024

    # the pool is freed and the caches dropped: every page but the reserved ones and what
    # drop_caches does not free (anonymous memory, unreclaimable slab...) lands on 3
    assert fs.write(HP.format(1), "0") is None
    assert fs.write("/proc/sys/vm/drop_caches", "3") is None
    freed = check_tools(fs, 4)
    total = proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]
    kept = {n: sum(freed[n].meminfo[k] for k in KEPT_BY_DROP_CACHES) for n in (0, 1, 2)}
    assert all(freed[n].meminfo["MemTotal"] == kept[n] for n in kept)
    assert freed[3].meminfo["MemTotal"] == total - sum(kept.values()) > moved[3].meminfo["MemTotal"]
    assert int(fs.read(f"{ML}/stats/transplant-on-free")) > 0


@needs_run
@needs_numactl
def test_a_new_node_after_a_gap_in_node_ids(fs, run_dnumafs):
    """Nodes 0, 1 and 3: libnuma finds node 3 by its directory, probes node 2's distance file
    (ENOENT) and reads each distance file by position, which the files' order makes right."""
    dnumafs(run_dnumafs, "all-to", fs.mnt, "3")
    model = check_tools(fs, 4)
    assert list(model) == [0, 1, 3]
    text = run_tool(fs, "numactl", "--hardware")
    assert "available: 3 nodes (0-1,3)" in text
    assert re.search(r"^node 3 cpus: *$", text, re.M), text
    assert re.search(r"^  3: +20 +20 +10 *$", text, re.M), text


@needs_hwloc
def test_lstopo_console_with_fsroot(fs):
    """The console view a user reads: packages per node with their CPUs, a new cpuless node
    in a group of its own, sizes as MemTotal."""
    def lstopo() -> str:
        r = subprocess.run(["lstopo-no-graphics", "--of", "console"], env=hwloc_fsroot_env(fs),
                           capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = lstopo()
    assert re.findall(r"NUMANode L#\d+ \(P#(\d+)", out) == ["0", "1"]
    assert len(re.findall(r"\bPU L#\d+", out)) == 4
    assert len(re.findall(r"Package L#\d+", out)) == 2
    assert fs.sh("echo 0x1000 > start; echo 0x1fff > end; echo 3 > node; echo 1 > commit"
                 ).returncode == 0
    out = lstopo()
    assert re.findall(r"NUMANode L#\d+ \(P#(\d+)", out) == ["0", "1", "3"]
    size = node_meminfo(fs.read(f"{NODE}/node3/meminfo"))["MemTotal"]
    m = re.search(r"NUMANode L#\d+ \(P#3 (\d+)(KB|MB)\)", out)
    assert m, out
    assert int(m[1]) * (1024 if m[2] == "MB" else 1) == pytest.approx(size, rel=0.01)


@needs_run
def test_run_binds_every_model_file_and_nothing_leaks(fs):
    """proc files come one by one (the real /proc keeps its processes), drop_caches included,
    so `echo 3 > /proc/sys/vm/drop_caches` inside drops the model's caches, not the host's."""
    host_meminfo = Path("/proc/meminfo").read_text()
    free_before = node_meminfo(fs.read(f"{NODE}/node0/meminfo"))["MemFree"]
    out = run_tool(fs, "sh", "-c",
                   "cat /proc/meminfo; echo 3 > /proc/sys/vm/drop_caches; "
                   "cat /sys/kernel/debug/memlayout/moved-pages; test -r /proc/self/status; "
                   "echo HWLOC_ALLOW=$HWLOC_ALLOW")
    assert out.startswith(fs.read("/proc/meminfo").split("\n")[0] + "\n")
    assert out.endswith(f"{fs.read(f'{ML}/moved-pages')}HWLOC_ALLOW=all\n")
    assert node_meminfo(fs.read(f"{NODE}/node0/meminfo"))["MemFree"] > free_before
    targets = dnuma_run.bind_targets(fs.mnt)
    assert [t for t in targets if t.startswith("proc/")] == [
        f"proc/{name}" for name in sorted(n for n in fs.ls("/proc") if n != "sys")] + [
        "proc/sys/vm/drop_caches"]
    assert Path("/proc/meminfo").read_text().split("\n")[0] == host_meminfo.split("\n")[0]
    # a value the user set wins over run's own
    env = dict(os.environ, HWLOC_ALLOW="none")
    assert run_tool(fs, "sh", "-c", "echo $HWLOC_ALLOW", env=env) == "none\n"


def test_run_says_why_without_a_user_namespace(monkeypatch):
    """A user who may not create user namespaces is told so, and what would help."""
    class NoNamespaces:
        def unshare(self, flags: int) -> int:
            ctypes.set_errno(errno.ENOSPC)
            return -1

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(dnuma_run.RunError) as e:
        dnuma_run._enter_namespace(NoNamespaces())
    assert "cannot create a user namespace (No space left on device)" in str(e.value)
    assert "user.max_user_namespaces" in str(e.value) and e.value.status == 1


# --- as a user other than root, through a user namespace --------------------------------------

def _python_for(uid: int, pythonpath: str) -> str | None:
    """A Python that user uid can run dnumafs with (the venv's may live under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            python, "-c", "import attrs, dnumafs.run"],
                           env=dict(os.environ, PYTHONPATH=pythonpath), capture_output=True)
        if r.returncode == 0:
            return python
    return None


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """An empty directory any user can reach (tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="dnumafs-public-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


NOBODY = 65534
needs_another_user = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                        reason="needs root to act as another user")


def run_as_nobody(mnt: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`dnumafs run MNT -- ARGV` as uid 65534, exited 0; skips if the system refuses that
    user a user namespace (not just dnumafs run) or no Python can run dnumafs for it."""
    site = str(Path(attrs.__file__).resolve().parent.parent)
    repo = str(Path(dnuma_run.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join([repo, site])
    python = _python_for(NOBODY, pythonpath)
    if python is None:
        pytest.skip("no Python that another user can run dnumafs with")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    r = subprocess.run([*as_nobody, python, "-m", "dnumafs", "run", str(mnt), "--", *argv],
                       env=dict(os.environ, PYTHONPATH=pythonpath), capture_output=True,
                       text=True, timeout=TOOL_TIMEOUT, cwd="/")
    if "cannot create a user namespace" in r.stderr:
        probe = subprocess.run([*as_nobody, "unshare", "--user", "--mount", "true"],
                               capture_output=True, timeout=TOOL_TIMEOUT)
        assert probe.returncode != 0, f"unshare works for uid {NOBODY}, dnumafs run not: {r.stderr}"
        assert r.returncode == 1 and "max_user_namespaces" in r.stderr
        pytest.skip("unprivileged user namespaces are not allowed here")
    assert r.returncode == 0, r.stderr
    return r


@needs_another_user
@needs_numactl
def test_run_as_another_user_through_a_user_namespace(public_dir, mount_dnumafs):
    mnt = mount_dnumafs("--mem", "64M", "--allow-other", mnt=public_dir)
    uid, text = run_as_nobody(mnt, "sh", "-c", "id -u; numactl --hardware").stdout.split("\n", 1)
    assert uid == str(NOBODY)
    check_numactl_hardware(text, model_figures(Mounted(mnt)))
