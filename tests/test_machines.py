"""Machine descriptions: every shared snapshot, the synthetic machine, and bad input."""
from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import pytest
from machines_helpers import ARCHIVES, MACHINES_DIR, shared_snapshots

from dnumafs.machines import (
    MAX_CPUS,
    MODEL_BYTES_PER_PAGE,
    MachineDescription,
    MachineError,
    Snapshot,
    check_host_memory,
    describe,
    load,
    memory_needed,
    open_snapshot,
    synthetic,
)
from dnumafs.machines.reserve import reserved_count

NODE_DIR = "sys/devices/system/node"
CPU_DIR = "sys/devices/system/cpu"

pytestmark = pytest.mark.skipif(not ARCHIVES, reason=f"no snapshots in {MACHINES_DIR}")


@pytest.fixture(scope="module")
def snapshots() -> Iterator[dict[str, Snapshot]]:
    with shared_snapshots() as opened:
        yield opened


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Extractions go under tmp_path/t, so a test can see that none is left behind."""
    d = tmp_path / "t"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# --- the shared machines, checked against their own files ------------------------------------

def _node_dirs(root: Path) -> list[int]:
    return sorted(int(p.name[4:]) for p in (root / NODE_DIR).glob("node*")
                  if p.name[4:].isdigit())


def _mask_bits(text: str) -> set[int]:
    bits = set()
    for i, word in enumerate(reversed(text.strip().split(","))):
        value = int(word, 16)
        bits |= {32 * i + b for b in range(32) if value >> b & 1}
    return bits


@pytest.mark.parametrize("archive", [a.name for a in ARCHIVES])
def test_description_matches_snapshot_files(snapshots: dict[str, Snapshot], archive: str
                                            ) -> None:
    snap = snapshots[archive]
    d = describe(snap)
    root = snap.root
    assert d.online_nodes == tuple(_node_dirs(root))
    online_file = root / NODE_DIR / "online"
    if online_file.exists():
        text = online_file.read_text().strip()
        assert ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in _runs(d.online_nodes)) \
            == text
    for n in d.nodes:
        ndir = root / NODE_DIR / f"node{n.nid}"
        fields = {line.split()[2]: line.split()[3]
                  for line in (ndir / "meminfo").read_text().splitlines() if line.strip()}
        assert n.memory_kb == int(fields["MemTotal:"])
        assert set(n.cpus) == _mask_bits((ndir / "cpumap").read_text())
        links = {int(p.name[3:]) for p in ndir.glob("cpu*") if p.name[3:].isdigit()}
        assert set(n.cpus) <= links or not links or archive.startswith("offline-cpu0")
        if (ndir / "distance").exists():
            row = [int(v) for v in (ndir / "distance").read_text().split()]
            assert n.distances is not None
            if len(row) != len(d.nodes):        # a row over the possible nodes
                row = [row[d.possible_nodes.index(nid)] for nid in d.online_nodes]
            assert list(n.distances) == row
            assert n.distances[d.online_nodes.index(n.nid)] == 10
        else:
            assert n.distances is None
        pools = {int(p.name[10:-2]): int((p / "nr_hugepages").read_text())
                 for p in (ndir / "hugepages").glob("hugepages-*kB")}
        assert dict(n.hugepages) == pools
    cpu_dirs = sorted(int(p.name[3:]) for p in (root / CPU_DIR).glob("cpu*")
                      if p.name[3:].isdigit())
    assert set(cpu_dirs) <= set(d.possible_cpus)
    assert set(d.online_cpus) <= set(d.present_cpus) <= set(d.possible_cpus)
    for c in cpu_dirs:
        online = root / CPU_DIR / f"cpu{c}" / "online"
        if online.exists():
            assert (c in d.online_cpus) == (online.read_text().strip() == "1")


def _runs(ids: tuple[int, ...]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def test_shapes_the_readme_names(snapshots: dict[str, Snapshot]) -> None:
    """The shapes the machines are there for: sparse ids, CPU-less nodes, offline CPUs, an
    offline node, 1 GiB pools."""
    d = {name.split(".")[0]: describe(s) for name, s in snapshots.items()}
    assert d["48amd64-4pa2n6c-sparse"].online_nodes == (0, 1, 2, 33, 34, 45, 72, 73)
    assert d["48amd64-4pa2n6c-sparse"].distance(0, 73) == 22
    assert d["fakeheteromemtiers"].cpuless_nodes == (4, 6, 8, 9)
    assert d["fakeheteromemtiers"].possible_nodes == tuple(range(10))
    tiers = d["offline-cpu0-node0"]
    assert tiers.online_nodes == (1,) and tiers.possible_nodes == (0, 1)
    assert tiers.online_cpus == tuple(range(4, 21))
    assert tiers.offline_cpus == (*range(0, 4), *range(21, 192))
    assert d["16em64t-4s2c2t-offlines"].offline_cpus == (2, 5, 13, 14)
    assert dict(d["32intel64-2p8co2t+8ve"].node(1).hugepages) == {2048: 2048, 1048576: 0}
    assert d["64fake-4n2s2ca2c2t"].nodes[0].distances is None


def test_load_leaves_nothing_behind(private_tmp: Path) -> None:
    desc = load(ARCHIVES[0])
    assert isinstance(desc, MachineDescription)
    assert list(private_tmp.iterdir()) == []


def test_directory_and_host() -> None:
    with open_snapshot(ARCHIVES[0]) as snap:
        from_dir = load(snap.root)
        assert from_dir.source == str(snap.root)
        assert attrs.evolve(from_dir, source=snap.source) == describe(snap)
    if Path("/sys/devices/system/node/online").exists():
        host = load("/")
        assert host.online_nodes == tuple(_node_dirs(Path("/")))
        assert host.online_cpus == tuple(sorted(os.sched_getaffinity(0))) or \
            set(os.sched_getaffinity(0)) <= set(host.online_cpus)


# --- the synthetic machine -------------------------------------------------------------------

def test_synthetic_machine() -> None:
    d = synthetic(nodes=3, cpus=10, mem=3 << 30, possible_nodes=16)
    assert d.online_nodes == (0, 1, 2) and d.possible_nodes == tuple(range(16))
    assert sum(n.present_pages for n in d.nodes) * 4 == 3 << 20
    assert d.memory_kb == sum((1 << 18) - reserved_count(start, 1 << 18)
                              for start in (0, 1 << 18, 2 << 18)) * 4
    assert [n.cpus for n in d.nodes] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert d.cpu_node() == {c: c * 3 // 10 for c in range(10)}
    assert [d.distance(0, b) for b in range(3)] == [10, 20, 20]
    assert d.topology is not None
    assert [t.cpu for t in d.topology] == list(range(10))
    for t in d.topology:
        assert t.package == d.cpu_node()[t.cpu]
    cores = {(t.package, t.core): [u.cpu for u in d.topology
                                   if (u.package, u.core) == (t.package, t.core)]
             for t in d.topology}
    assert sorted(len(c) for c in cores.values()) == [1, 1, 1, 1, 1, 1, 2, 2]
    for cache in d.caches:
        assert cache.size_kb * 1024 == cache.line_size * cache.ways * cache.number_of_sets
        if cache.level < 3:
            assert list(cache.cpus) in cores.values()
        else:
            assert cache.cpus == d.node(d.cpu_node()[cache.cpus[0]]).cpus
    for cpu in range(10):
        kinds = sorted((c.level, c.type) for c in d.caches if cpu in c.cpus)
        assert kinds == [(1, "Data"), (1, "Instruction"), (2, "Unified"), (3, "Unified")]


def test_synthetic_node_sizes_and_cpuless_nodes() -> None:
    d = synthetic(nodes=3, cpus=2, node_mem=[1 << 30, 2 << 30, 64 << 20])
    assert [n.present_pages for n in d.nodes] == [1 << 18, 2 << 18, 16 << 10]
    assert [n.memory_kb for n in d.nodes] == [
        (pages - reserved_count(start, pages)) * 4
        for start, pages in ((0, 1 << 18), (1 << 18, 2 << 18), (3 << 18, 16 << 10))]
    assert d.cpuless_nodes == (2,)
    assert d.topology is not None and {t.package for t in d.topology} == {0, 1}


@pytest.mark.parametrize(("kwargs", "problem"), [
    (dict(nodes=0), "nodes"), (dict(nodes=9), "possible"),
    (dict(possible_nodes=1025), "1024"), (dict(cpus=MAX_CPUS + 1), "8192"),
    (dict(nodes=2, node_mem=[1 << 30]), "1 node sizes"),
])
def test_synthetic_refuses(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(MachineError, match=problem):
        synthetic(**kwargs)     # type: ignore[arg-type]


# --- bad snapshots ---------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
         mode: Literal["w", "w:gz", "w:bz2"] = "w:bz2") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _entry(name: str, kind: bytes, **attrs: object) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, None


def _good_machine(top: str = "m", nodes: str = "0", meminfo: str | None = None,
                  cpus: str = "0-1") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    n = f"{top}/{NODE_DIR}"
    out: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _file(f"{n}/online", f"{nodes}\n".encode()),
        _file(f"{top}/{CPU_DIR}/possible", f"{cpus}\n".encode()),
        _file(f"{top}/{CPU_DIR}/online", f"{cpus}\n".encode()),
        _file(f"{top}/proc/cpuinfo", b"processor\t: 0\n"),
    ]
    for part in nodes.split(","):
        lo, _, hi = part.partition("-")
        for nid in range(int(lo), int(hi or lo) + 1):
            text = meminfo if meminfo is not None else f"Node {nid} MemTotal: 1048576 kB\n"
            out.append(_file(f"{n}/node{nid}/meminfo", text.encode()))
            out.append(_file(f"{n}/node{nid}/cpumap", b"3\n" if nid == 0 else b"0\n"))
    return out


def test_a_good_small_archive(tmp_path: Path, private_tmp: Path) -> None:
    d = load(_tar(tmp_path / "m.tar.gz", _good_machine(nodes="0,5"), "w:gz"))
    assert d.name == "m" and d.online_nodes == (0, 5) and d.nodes[1].memory_kb == 1 << 20
    d = load(_tar(tmp_path / "m.tar", _good_machine(), "w"))
    assert d.online_cpus == (0, 1)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(("members", "problem"), [
    ([], "empty"),
    (_good_machine("a") + _good_machine("b"), "2 top directories"),
    ([_file("/abs/sys/x", b"1")], "unsafe member"),
    ([_file("m/../../escape", b"1")], "unsafe member"),
    ([_entry("m/sys/link", tarfile.SYMTYPE, linkname="../../../../etc/passwd")],
     "unsafe member"),
    ([_entry("m/sys/hard", tarfile.LNKTYPE, linkname="/etc/passwd")], "unsafe member"),
    ([_entry("m/sys/dev", tarfile.CHRTYPE, devmajor=1, devminor=3)], "unsafe member"),
    ([_file("m/proc/cpuinfo", b"x")], "no m/sys/ directory"),
    (_good_machine(nodes="1024"), "node 1024 is out of range"),
    (_good_machine(cpus="0-8192"), "over the 8192 CPUs"),
    (_good_machine(cpus="0-99999999999"), "99999999999 is out of range"),   # not expanded
    (_good_machine(meminfo="Node 0 MemTotal: lots\n"), "node0/meminfo: no `MemTotal"),
    ([*_good_machine()[:1], *_good_machine()[4:]], "possible: No such file|cpu"),
])
def test_bad_archives_are_refused(tmp_path: Path, private_tmp: Path,
                                  members: list[tuple[tarfile.TarInfo, bytes | None]],
                                  problem: str) -> None:
    archive = _tar(tmp_path / "bad.tar.bz2", members)
    with pytest.raises(MachineError, match=problem) as e:
        load(archive)
    assert str(archive) in str(e.value) or "m/sys" in str(e.value)
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_not_archives_and_not_snapshots(tmp_path: Path, private_tmp: Path) -> None:
    with pytest.raises(MachineError, match=re.escape(f"{tmp_path}/nope: No such file")):
        load(tmp_path / "nope")
    (tmp_path / "junk.tar.bz2").write_bytes(b"BZh91AY&SY not really")
    with pytest.raises(MachineError, match="junk.tar.bz2: not a readable .tar"):
        load(tmp_path / "junk.tar.bz2")
    good = _tar(tmp_path / "cut.tar.bz2", _good_machine())
    (tmp_path / "cut.tar.bz2").write_bytes(good.read_bytes()[:60])
    with pytest.raises(MachineError, match="cut.tar.bz2: not a readable"):
        load(tmp_path / "cut.tar.bz2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MachineError, match="empty: not a snapshot .no sys/"):
        load(tmp_path / "empty")
    assert list(private_tmp.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "m.tar", _good_machine(), "w")
    archive.chmod(0)
    with pytest.raises(MachineError, match="m.tar: Permission denied"):
        load(archive)
    with open_snapshot(_tar(tmp_path / "n.tar", _good_machine(), "w")) as snap:
        (snap.root / NODE_DIR / "node0" / "meminfo").chmod(0)
        with pytest.raises(MachineError, match="node0/meminfo: Permission denied"):
            describe(snap)


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with open_snapshot(_tar(tmp_path / "m.tar", _good_machine(), "w")) as snap:
        meminfo = snap.root / NODE_DIR / "node0" / "meminfo"
        meminfo.unlink()
        meminfo.mkdir()
        with pytest.raises(MachineError, match=re.escape(
                f"{tmp_path}/m.tar: m/{NODE_DIR}/node0/meminfo: Is a directory")):
            describe(snap)


def test_a_link_out_of_a_snapshot_directory_is_not_followed(tmp_path: Path) -> None:
    with open_snapshot(_tar(tmp_path / "m.tar", _good_machine(), "w")) as snap:
        meminfo = snap.root / NODE_DIR / "node0" / "meminfo"
        secret = tmp_path / "secret"
        secret.write_text("Node 0 MemTotal: 1 kB\n")
        meminfo.unlink()
        meminfo.symlink_to(secret)
        with pytest.raises(MachineError, match="node0/meminfo: a link out of the snapshot"):
            load(snap.root)


def test_too_big_for_this_host(snapshots: dict[str, Snapshot]) -> None:
    d = describe(next(iter(snapshots.values())))
    need = memory_needed(d)
    assert need > d.memory_kb * 1024 // 4096 * MODEL_BYTES_PER_PAGE     # pages, and more
    check_host_memory(d, available=need)
    with pytest.raises(MachineError, match=f"{re.escape(d.source)}: .* GiB of memory needs"):
        check_host_memory(d, available=need - 1)
    with pytest.raises(MachineError, match="synthetic: 65536 GiB"):
        check_host_memory(synthetic(mem=64 << 40))
