"""Uevents (SPEC 9): their format, what the model announces, their delivery through the daemon's
socket, `dnumafs monitor`, and `dnumafs run --uevents`."""
from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dnumafs import events
from dnumafs.events import Broadcaster, Gap, Sequencer, Uevent
from dnumafs.mm import Machine, MachineConfig
from dnumafs.mm.memory_hotplug import OnlineType

MEM = "sys/devices/system/memory"
OPTIONS = ("--nodes", "2", "--mem", "256M", "--cpus", "4", "--possible-nodes", "3",
           "--block-size", "4M")
TIMEOUT = 60


def block_with_free_pages(m: Machine) -> int:
    """A block of node 0 with nothing allocated in it: it offlines."""
    for bid in range(len(m.blocks.online)):
        try:
            m.memory_block_set_state(bid, OnlineType.OFFLINE)
        except Exception:
            continue
        m.memory_block_set_state(bid, OnlineType.ONLINE)
        return bid
    raise AssertionError("no block offlines")


# --- the format ----------------------------------------------------------------------------

def test_uevents_have_the_kernels_format():
    seq = Sequencer()
    evs = seq.events([("change", "/devices/system/cpu/cpu3", {"CPU": "3", "NODE": "2"}),
                      ("online", "/devices/system/node/node2", {"NODE": "2"}),
                      ("offline", "/devices/system/memory/memory7", {"PHYS_INDEX": "00000007"})])
    assert [(e.subsystem, e.seqnum) for e in evs] == [("cpu", 1), ("node", 2), ("memory", 3)]
    assert evs[0].netlink() == (b"change@/devices/system/cpu/cpu3\0ACTION=change\0"
                                b"DEVPATH=/devices/system/cpu/cpu3\0SUBSYSTEM=cpu\0CPU=3\0"
                                b"NODE=2\0SEQNUM=1\0")
    assert not evs[1].netlink(seqnum=False).count(b"SEQNUM")
    assert [Uevent.parse(e.netlink()) for e in evs] == evs
    assert evs[2].monitor_text(12.5) == (
        "KERNEL[12.500000] offline  /devices/system/memory/memory7 (memory)\n"
        "ACTION=offline\nDEVPATH=/devices/system/memory/memory7\nSUBSYSTEM=memory\n"
        "PHYS_INDEX=00000007\nSEQNUM=3\n\n")
    for bad in [("frob", "/devices/system/cpu/cpu1", {}),
                ("change", "/devices/virtual/net/lo", {}),
                ("change", "/devices/system/cpu/cpu1", {"SEQNUM": "9"})]:
        with pytest.raises(ValueError):
            seq.events([bad])


def test_a_slow_reader_loses_events_counted_and_never_stalls_the_publisher(tmp_path):
    hub = Broadcaster(tmp_path / "ev.sock")
    hub.start()
    try:
        with events.Watch.connect(hub.path) as w:
            n = 3 * events.QUEUE_MAX
            done = threading.Event()

            def publish() -> None:
                for i in range(n):
                    hub.publish([("change", f"/devices/system/node/node{i % 4}",
                                  {"NODE": str(i % 4)})])
                done.set()
            threading.Thread(target=publish, daemon=True).start()
            assert done.wait(30), "the publisher stalled on a reader that does not read"
            seen, lost, last = 0, 0, 0
            while seen + lost < n:
                ev = w.next(timeout=10)
                if isinstance(ev, Gap):
                    lost += ev.dropped
                else:
                    assert ev is not None and ev.seqnum > last
                    last = ev.seqnum
                    seen += 1
            assert lost > 0 and seen + lost == n
            hub.publish([("online", "/devices/system/node/node2", {"NODE": "2"})])
            ev = w.next(timeout=10)     # once read up, it gets everything again
            assert isinstance(ev, Uevent) and ev.seqnum == n + 1
    finally:
        hub.stop()


# --- what the model announces --------------------------------------------------------------

@pytest.fixture
def machine() -> tuple[Machine, list]:
    m = Machine.boot(MachineConfig(nodes=2, mem=256 << 20, cpus=4, possible_nodes=3,
                                   block_size=4 << 20))
    told: list = []
    m.changes.subscribe(lambda topics, devices: told.append(devices))
    return m, told


def node(action: str, nid: int) -> tuple:
    return action, f"/devices/system/node/node{nid}", {"NODE": str(nid)}


def test_a_commit_announces_new_nodes_and_every_node_resized(machine):
    m, told = machine
    m.memlayout_add_range(0, m.max_pfn - 1, 2)
    told.clear()
    m.memlayout_commit()
    devices = told[-1]
    assert devices[:2] == (node("add", 2), node("online", 2))
    # node 0 and 1 gave their free pages to node 2; allocated ones move when freed
    assert sorted(d for d in devices[2:]) == sorted([node("change", n) for n in (0, 1, 2)])
    told.clear()
    m.memlayout_add_range(0, m.max_pfn - 1, 2)      # where everything is already
    m.memlayout_commit()
    assert told[-1] == ()


def test_transplants_announce_one_change_per_node_per_free(machine):
    m, told = machine
    pfns = [m.alloc_pages(order=2, nid=0) for _ in range(8)]
    m.memlayout_add_range(0, m.max_pfn - 1, 1)
    m.memlayout_commit()
    for pfn in pfns:
        told.clear()
        m.free_pages(pfn)
        assert told == [(node("change", 0), node("change", 1))]
    told.clear()
    m.free_boot_allocations()       # many pages at once: still one change per node
    assert told == [(node("change", 0), node("change", 1))]
    told.clear()
    m.free_boot_allocations()       # nothing left to move
    assert told == [()]


def test_memory_blocks_announce_their_state_and_their_node(machine):
    m, told = machine
    bid = block_with_free_pages(m)
    told.clear()
    m.memory_block_set_state(bid, OnlineType.OFFLINE)
    mem = ("offline", f"/devices/system/memory/memory{bid}", {"PHYS_INDEX": f"{bid:08x}"})
    assert told == [(mem, node("change", 0))]
    told.clear()
    m.memory_block_set_state(bid, OnlineType.OFFLINE)   # nothing to do: nothing told
    assert told == []
    end = m.max_pfn << 12
    told.clear()
    new = m.memory_probe(end)
    assert told[-1][0] == ("add", f"/devices/system/memory/memory{new}",
                           {"PHYS_INDEX": f"{new:08x}"})


# --- through the daemon --------------------------------------------------------------------

pytestmark_fuse = pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse")


@pytestmark_fuse
def test_a_thousand_changes_arrive_complete_in_order_and_the_files_show_them(mount_dnumafs):
    mnt = mount_dnumafs(*OPTIONS)
    m = Machine.boot(MachineConfig(nodes=2, mem=256 << 20, cpus=4, possible_nodes=3,
                                   block_size=4 << 20))
    bid = block_with_free_pages(m)
    online = mnt / MEM / f"memory{bid}/online"
    devpath = f"/devices/system/memory/memory{bid}"
    meminfo = mnt / "sys/devices/system/node/node0/meminfo"
    total = meminfo.read_text().splitlines()[0]
    (mnt / MEM / f"memory{bid}/state").read_text()      # the kernel holds both files' pages
    seen: queue.Queue = queue.Queue()
    with events.watch(mnt) as w:
        def listen() -> None:
            # reads other files the moment each event arrives, as a udev rule would (the
            # writer's write may not have returned yet)
            for ev in w:
                state = None
                if getattr(ev, "devpath", "") == devpath:
                    state = ((mnt / MEM / f"memory{bid}/state").read_text(),
                             meminfo.read_text().splitlines()[0] == total)
                seen.put((ev, state))
        threading.Thread(target=listen, daemon=True).start()
        n = 1000
        got: list = []
        for i in range(n):
            # one change at a time, so the state the listener reads is this change's
            online.write_text("0" if i % 2 == 0 else "1")
            while len([state for _, state in got if state is not None]) <= i:
                got.append(seen.get(timeout=TIMEOUT))
        got.append(seen.get(timeout=TIMEOUT))   # the last node change
    evs = [e for e, _ in got]
    assert not [e for e in evs if isinstance(e, Gap)]
    seqs = [e.seqnum for e in evs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    block = [(e.action, state) for e, state in got if e.devpath == devpath]
    assert block == [("offline", ("offline\n", False)) if i % 2 == 0
                     else ("online", ("online\n", True)) for i in range(n)]
    # each one also changed node 0's size, announced right after it
    assert [(e.action, e.devpath, e.subsystem, dict(e.properties)) for e in evs[1::2]] == \
        [("change", "/devices/system/node/node0", "node", {"NODE": "0"})] * n
    assert all(dict(e.properties) == {"PHYS_INDEX": f"{bid:08x}"} for e in evs[::2])


@pytestmark_fuse
def test_monitor_prints_like_udevadm(mount_dnumafs, run_dnumafs, runtime_dir):
    mnt = mount_dnumafs(*OPTIONS)
    env = {**os.environ, "DNUMAFS_RUNTIME_DIR": str(runtime_dir)}
    p = subprocess.Popen([sys.executable, "-m", "dnumafs", "monitor", str(mnt)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        head = [p.stdout.readline() for _ in range(3)]
        assert head == ["monitor will print the received events for:\n",
                        "KERNEL - the kernel uevent\n", "\n"]
        r = run_dnumafs("all-to", mnt, "2")
        assert r.returncode == 0, r.stderr
        blocks: list[list[str]] = []
        block: list[str] = []
        while len(blocks) < 2:
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            if line == "\n":
                blocks.append(block)
                block = []
            else:
                block.append(line.rstrip("\n"))
        first = blocks[0]
        assert re.fullmatch(r"KERNEL\[\d+\.\d{6}\] add      /devices/system/node/node2 \(node\)",
                            first[0]), first
        assert first[1:5] == ["ACTION=add", "DEVPATH=/devices/system/node/node2",
                              "SUBSYSTEM=node", "NODE=2"]
        assert re.fullmatch(r"SEQNUM=\d+", first[5]) and len(first) == 6
        assert blocks[1][1] == "ACTION=online"
        assert int(blocks[1][5].split("=")[1]) == int(first[5].split("=")[1]) + 1
    finally:
        p.terminate()
        p.wait(TIMEOUT)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def test_monitor_of_no_mount_says_so(run_dnumafs, tmp_path):
    r = run_dnumafs("monitor", tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("dnumafs: ") and "Traceback" not in r.stderr


LISTENER = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)   # NETLINK_KOBJECT_UEVENT
    s.bind((0, 1))
    s.settimeout(30)
    with open(sys.argv[1], "w") as f:
        f.write(sys.argv[2])
    out = []
    while len(out) < int(sys.argv[3]):
        data, (pid, groups) = s.recvfrom(8192)
        head, *env = data.rstrip(b"\\0").decode().split("\\0")
        if "@/devices/system/" in head:     # as root the host's own events come too
            out.append({"head": head, "env": env, "pid": pid})
    print(json.dumps(out))
""")


@pytestmark_fuse
def test_run_uevents_sends_kernel_uevents_into_the_commands_namespace(mount_dnumafs,
                                                                     runtime_dir, tmp_path):
    mnt = mount_dnumafs(*OPTIONS)
    m = Machine.boot(MachineConfig(nodes=2, mem=256 << 20, cpus=4, possible_nodes=3,
                                   block_size=4 << 20))
    bid = block_with_free_pages(m)
    script = tmp_path / "listen.py"
    script.write_text(LISTENER)
    online = mnt / MEM / f"memory{bid}/online"
    env = {**os.environ, "DNUMAFS_RUNTIME_DIR": str(runtime_dir)}
    p = subprocess.Popen([sys.executable, "-m", "dnumafs", "run", "--uevents", str(mnt), "--",
                          sys.executable, str(script), str(online), "0", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0, err
    got = json.loads(out)
    devpath = f"/devices/system/memory/memory{bid}"
    assert [g["head"] for g in got] == [f"offline@{devpath}", "change@/devices/system/node/node0"]
    assert got[0]["env"][:4] == ["ACTION=offline", f"DEVPATH={devpath}", "SUBSYSTEM=memory",
                                 f"PHYS_INDEX={bid:08x}"]
    assert re.fullmatch(r"SEQNUM=\d+", got[0]["env"][-1]) and all(g["pid"] == 0 for g in got)
    assert online.read_text() == "0\n"
