"""sys/devices/system/memory through a mount, with the real lsmem and chmem.

The daemon boots the same machine as a model booted here (boot is deterministic), and every
change made through the mount is made to the local model too, so what the tools show is
compared with what the model says."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from files_helpers import Mounted, proc_meminfo

from dnumafs.client import stripe_ranges
from dnumafs.mm import Machine, MachineConfig
from dnumafs.mm import memory_hotplug as mh
from dnumafs.mm.constants import PAGE_SHIFT, PG_HEAD, PG_RESERVED
from dnumafs.mm.memory_hotplug import OnlineType

MEM = "/sys/devices/system/memory"
NODE = "/sys/devices/system/node"
CONFIG = dict(nodes=2, mem=1 << 30, cpus=4, possible_nodes=4, block_size=4 << 20)
OPTIONS = ("--nodes", "2", "--mem", "1G", "--cpus", "4", "--possible-nodes", "4",
           "--block-size", "4M")
COLUMNS = "RANGE,SIZE,STATE,BLOCK,NODE,ZONES"
TIMEOUT = 60

needs_lsmem = pytest.mark.skipif(not (shutil.which("lsmem") and shutil.which("chmem")),
                                 reason="util-linux lsmem/chmem not installed")
needs_run = pytest.mark.skipif(os.geteuid() != 0, reason="dnumafs run needs root here")


@pytest.fixture
def pair(mount_dnumafs) -> tuple[Mounted, Machine]:
    return Mounted(mount_dnumafs(*OPTIONS)), Machine.boot(MachineConfig(**CONFIG))


def run_in(fs: Mounted, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnumafs", "run", str(fs.mnt), "--", *argv],
                          capture_output=True, text=True, timeout=TIMEOUT)


def lsmem_rows(text: str) -> list[dict]:
    return json.loads(text)["memory"]


def lsmem_args() -> list[str]:
    return ["lsmem", "-J", "-a", "-b", "-o", COLUMNS]


def expected_rows(m: Machine) -> list[dict]:
    """lsmem's rows for the model: one per block, its first node (lsmem takes the first
    nodeN link), its valid zones joined with "/" ("none" is lsmem's "None")."""
    size = m.blocks.block_size_bytes
    rows = []
    for bid in range(m.blocks.count):
        zones = ["None" if z == "none" else z for z in mh.valid_zones(m, bid)]
        rows.append({"range": f"0x{bid * size:016x}-0x{(bid + 1) * size - 1:016x}",
                     "size": size, "state": "online" if m.blocks.online[bid] else "offline",
                     "block": str(bid), "node": mh.block_nodes(m, bid)[0],
                     "zones": "/".join(zones)})
    return rows


def check_lsmem(fs: Mounted, m: Machine) -> None:
    want = expected_rows(m)
    r = subprocess.run([*lsmem_args(), "--sysroot", str(fs.mnt)], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert lsmem_rows(r.stdout) == want
    if os.geteuid() == 0:
        r = run_in(fs, *lsmem_args())
        assert r.returncode == 0, r.stderr
        assert lsmem_rows(r.stdout) == want


def check_links(fs: Mounted, m: Machine) -> None:
    """memoryN/nodeM and nodeM/memoryN links, and the bus's, as the model places pages."""
    for bid in range(m.blocks.count):
        d = fs.path(f"{MEM}/memory{bid}")
        links = sorted(n for n in os.listdir(d) if n.startswith("node"))
        assert links == [f"node{nid}" for nid in mh.block_nodes(m, bid)]
        for name in links:
            assert os.readlink(d / name) == f"../../node/{name}"
    for nid in m.online_nodes():
        names = [n for n in fs.ls(f"{NODE}/node{nid}") if n.startswith("memory")]
        assert sorted(names) == sorted(f"memory{b}" for b in mh.node_blocks(m, nid))
        for name in names:
            assert Path(os.path.realpath(fs.path(f"{NODE}/node{nid}/{name}"))) \
                == fs.path(f"{MEM}/{name}")
    bus = fs.path("/sys/bus/memory/devices")
    assert sorted(os.listdir(bus)) == sorted(f"memory{b}" for b in range(m.blocks.count))
    assert Path(os.path.realpath(bus / "memory1")) == fs.path(f"{MEM}/memory1")


def mem_total_kb(fs: Mounted) -> int:
    return proc_meminfo(fs.read("/proc/meminfo"))["MemTotal"]


def clean_block(m: Machine) -> int:
    """A block with movable boot allocations and no reserved or pinned page."""
    for bid in range(m.blocks.count):
        start, end = mh.block_range(m, bid)
        flags = m.page_flags[start:end]
        heads = start + np.flatnonzero(flags & PG_HEAD)
        if not (flags & PG_RESERVED).any() and heads.size \
                and all(mh.page_is_movable(m, int(h)) for h in heads):
            return bid
    raise AssertionError("no block of free and movable pages")


def commit_both(fs: Mounted, m: Machine, run_dnumafs, *args: str) -> None:
    r = run_dnumafs(*args)
    assert r.returncode == 0, r.stderr


# --- the tree ----------------------------------------------------------------------------------

def test_memory_tree_files(pair):
    fs, m = pair
    assert fs.read(f"{MEM}/block_size_bytes") == "400000\n"
    assert fs.read(f"{MEM}/auto_online_blocks") == "offline\n"
    names = fs.ls(MEM)
    assert sorted(n for n in names if n.startswith("memory")) \
        == sorted(f"memory{b}" for b in range(256))
    d = f"{MEM}/memory9"
    assert sorted(fs.ls(d)) == ["node0", "online", "phys_device", "phys_index", "removable",
                                "state", "subsystem", "valid_zones"]
    assert (fs.read(f"{d}/state"), fs.read(f"{d}/online")) == ("online\n", "1\n")
    assert fs.read(f"{d}/phys_index") == "00000009\n"
    assert (fs.read(f"{d}/phys_device"), fs.read(f"{d}/removable")) == ("0\n", "1\n")
    assert fs.read(f"{d}/valid_zones") == "DMA32\n"
    assert fs.read(f"{MEM}/memory0/valid_zones") == "DMA\n"
    assert oct(os.stat(fs.path(f"{d}/state")).st_mode & 0o777) == "0o644"
    assert oct(os.stat(fs.path(f"{d}/valid_zones")).st_mode & 0o777) == "0o444"
    for bad in ("memory256", "memory01", "memory-1"):
        assert not fs.path(f"{MEM}/{bad}").exists()
    check_links(fs, m)


def test_bad_input_is_einval_and_changes_nothing(pair):
    fs, m = pair
    d = f"{MEM}/memory9"
    before = (fs.read("/proc/buddyinfo"), fs.read("/proc/zoneinfo"), fs.read(f"{d}/state"))
    for word in ("foo", "Online", "online ", "1", "offline\n\n", "online_movablex"):
        assert fs.write(f"{d}/state", word) == errno.EINVAL, word
    for word in ("2", "x", "-1", "o", "oX"):
        assert fs.write(f"{d}/online", word) == errno.EINVAL, word
    # onlining an online block through state is EINVAL, through online it is done already
    assert fs.write(f"{d}/state", "online") == errno.EINVAL
    assert fs.write(f"{d}/state", "online_movable\n") == errno.EINVAL
    assert fs.write(f"{d}/online", "1") is None
    assert fs.write(f"{MEM}/auto_online_blocks", "sometimes") == errno.EINVAL
    assert fs.write(f"{MEM}/block_size_bytes", "1000") == errno.EACCES
    after = (fs.read("/proc/buddyinfo"), fs.read("/proc/zoneinfo"), fs.read(f"{d}/state"))
    assert after == before
    r = subprocess.run(["sh", "-c", f"echo bogus > {fs.path(d + '/state')}"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and r.stderr


def test_offline_and_online_through_the_files(pair):
    fs, m = pair
    bid = clean_block(m)
    d = f"{MEM}/memory{bid}"
    total = mem_total_kb(fs)
    assert fs.write(f"{d}/state", "offline\n") is None
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert mem_total_kb(fs) == total - m.blocks.block_size_bytes // 1024
    assert (fs.read(f"{d}/state"), fs.read(f"{d}/online")) == ("offline\n", "0\n")
    assert fs.read(f"{d}/valid_zones") == " ".join(mh.valid_zones(m, bid)) + "\n"
    # offlining it again: EINVAL through state, nothing to do through online
    assert fs.write(f"{d}/state", "offline") == errno.EINVAL
    assert fs.write(f"{d}/online", "0") is None
    nid = mh.block_nodes(m, bid)[0]
    node_total = proc_meminfo(fs.read(f"{NODE}/node{nid}/meminfo").replace(f"Node {nid} ", ""))
    assert node_total["MemTotal"] == m.pgdat[nid].managed_pages << (PAGE_SHIFT - 10)
    assert fs.write(f"{d}/state", "online_movable") is None
    m.memory_block_set_state(bid, OnlineType.ONLINE_MOVABLE)
    assert mem_total_kb(fs) == total
    assert f"Node {nid}, zone  Movable" in fs.read("/proc/buddyinfo")
    zoneinfo = fs.read("/proc/zoneinfo")
    movable = zoneinfo.split(f"Node {nid}, zone  Movable")[1]
    assert f"present  {m.blocks.block_pages}\n" in movable.split("Node ")[0]
    assert fs.read(f"{d}/valid_zones") == "Movable\n"
    check_links(fs, m)


@needs_lsmem
def test_lsmem_matches_the_model_through_stripe_all_to_and_transplant(pair, run_dnumafs):
    fs, m = pair
    check_lsmem(fs, m)
    # a stripe of half blocks over nodes 0-1: most blocks lie on both
    half = m.blocks.block_pages // 2
    commit_both(fs, m, run_dnumafs, "stripe", fs.mnt, "0", "1", str(half))
    for start, end, nid in stripe_ranges(m.max_pfn, 0, 1, half):
        m.memlayout_add_range(start, end, nid)
    m.memlayout_commit()
    check_lsmem(fs, m)
    check_links(fs, m)
    # an offline block, then all to a new node: its pages move while it is offline
    bid = clean_block(m)
    assert fs.write(f"{MEM}/memory{bid}/state", "offline") is None
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    commit_both(fs, m, run_dnumafs, "all-to", fs.mnt, "3")
    m.memlayout_add_range(0, m.max_pfn - 1, 3)
    m.memlayout_commit()
    check_lsmem(fs, m)
    check_links(fs, m)
    # the transplant: freed page cache and slab move to node 3 as they are freed
    assert fs.write("/proc/sys/vm/drop_caches", "3") is None
    m.drop_caches(3)
    check_lsmem(fs, m)
    check_links(fs, m)
    assert fs.read("/sys/kernel/debug/dnumafs/check") == ""


@needs_lsmem
@needs_run
def test_chmem_offlines_and_onlines(pair):
    fs, m = pair
    bid = clean_block(m)
    size_kb = m.blocks.block_size_bytes // 1024
    total = mem_total_kb(fs)
    r = run_in(fs, "chmem", "-d", "-b", str(bid))
    assert r.returncode == 0, r.stderr
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    assert mem_total_kb(fs) == total - size_kb
    check_lsmem(fs, m)
    # block 0 holds reserved pages: EBUSY, and nothing changes
    before = (fs.read("/proc/buddyinfo"), fs.read("/proc/zoneinfo"), fs.read("/proc/meminfo"))
    r = run_in(fs, "chmem", "-d", "-b", "0")
    assert r.returncode != 0 and "Device or resource busy" in r.stderr
    assert (fs.read("/proc/buddyinfo"), fs.read("/proc/zoneinfo"),
            fs.read("/proc/meminfo")) == before
    check_lsmem(fs, m)
    # chmem -e onlines it into the first zone it finds in valid_zones that it prefers
    r = run_in(fs, "chmem", "-e", "-b", str(bid))
    assert r.returncode == 0, r.stderr
    assert mem_total_kb(fs) == total
    m.memory_block_set_state(bid, OnlineType(
        "online_movable" if fs.read(f"{MEM}/memory{bid}/valid_zones") == "Movable\n"
        else "online"))
    check_lsmem(fs, m)
    assert fs.read("/sys/kernel/debug/dnumafs/check") == ""


@needs_lsmem
def test_probe_hot_adds_a_block(pair, run_dnumafs):
    fs, m = pair
    size = m.blocks.block_size_bytes
    end = m.max_pfn << PAGE_SHIFT
    total = mem_total_kb(fs)
    assert oct(os.stat(fs.path(f"{MEM}/probe")).st_mode & 0o777) == "0o200"
    for bad, err in ((hex(end + 4096), errno.EINVAL), (hex(end + size), errno.EINVAL),
                     (hex(size), errno.EEXIST), ("x", errno.EINVAL)):
        assert fs.write(f"{MEM}/probe", bad) == err, bad
    assert fs.write(f"{MEM}/probe", hex(end)) is None
    bid = m.memory_probe(end)
    assert fs.read(f"{MEM}/memory{bid}/state") == "offline\n"
    assert mem_total_kb(fs) == total
    check_lsmem(fs, m)
    assert fs.write(f"{MEM}/memory{bid}/online", "1") is None
    m.memory_block_set_state(bid, OnlineType.ONLINE)
    assert mem_total_kb(fs) == total + size // 1024
    # on a new node the layout names, online at once as auto_online_blocks says
    end = m.max_pfn << PAGE_SHIFT
    r = run_dnumafs("all-to", fs.mnt, "2")
    assert r.returncode == 0, r.stderr
    m.memlayout_add_range(0, m.max_pfn - 1, 2)
    m.memlayout_commit()
    assert fs.write(f"{MEM}/auto_online_blocks", "online_movable\n") is None
    m.blocks.auto_online = OnlineType.ONLINE_MOVABLE
    assert fs.write(f"{MEM}/probe", f"{end:#x}\n") is None
    bid = m.memory_probe(end)
    assert fs.read(f"{MEM}/memory{bid}/valid_zones") == "Movable\n"
    assert mh.block_nodes(m, bid) == [2]
    check_lsmem(fs, m)
    check_links(fs, m)
    assert fs.read("/sys/kernel/debug/dnumafs/check") == ""
