"""CPU moves, CPU hotplug and distance rows (SPEC section 8), in the model and in its files
read in-process, with a property test of random changes against an independent record of what
every file must show."""
from __future__ import annotations

import errno
import random
import re

import pytest
from files_helpers import Tree, boot, key_values, node_list

from dnumafs.lib.bitmap import bitmap_mask
from dnumafs.mm import Machine, MachineConfig
from dnumafs.mm.changes import NODES, ChangeHook
from dnumafs.mm.memory_hotplug import HotplugError

NODE = "/sys/devices/system/node"
CPU = "/sys/devices/system/cpu"
TOPO = "/sys/kernel/debug/numa_topology"


def all_to(m: Machine, nid: int) -> None:
    """Commit a layout that puts every page on nid (what `dnumafs all-to` writes)."""
    m.memlayout_add_range(0, m.max_pfn - 1, nid)
    m.memlayout_commit()


def fallback_nodes(m: Machine, nid: int) -> list[int]:
    """The nodes of nid's zonelist, in its order."""
    return list(dict.fromkeys(z.nid for z in m.zonelists[nid]))


def test_move_takes_siblings_and_onlines_a_cpu_only_node(monkeypatch):
    m = boot(nodes=2, cpus=4, possible_nodes=4)
    t = Tree(m)
    seen: list[tuple[object, tuple]] = []
    announce = ChangeHook.changed

    def changed(hook, topics=None, *, devices=()):
        seen.append((topics, tuple(devices)))
        announce(hook, topics, devices=devices)

    monkeypatch.setattr(ChangeHook, "changed", changed)
    assert "node3" not in t.ls(NODE)
    assert t.write(f"{TOPO}/cpu1/node", "3\n") is None
    siblings = [c for c in range(4) if m.topo.place[c].core == m.topo.place[1].core
                and m.topo.place[c].package == m.topo.place[1].package]
    assert siblings == [0, 1]      # the synthetic machine's cores have two threads
    assert node_list(t.read(f"{NODE}/online")) == [0, 1, 3]
    assert node_list(t.read(f"{NODE}/node3/cpulist")) == siblings
    assert t.read(f"{NODE}/node3/cpumap") == bitmap_mask(siblings, 4) + "\n"
    assert 3 in node_list(t.read(f"{NODE}/has_cpu"))
    assert t.read(f"{NODE}/node3/distance") == "20 20 10\n"
    for c in siblings:
        assert t.read(f"{TOPO}/cpu{c}/node") == "3\n"
        assert [n for n in t.ls(f"{CPU}/cpu{c}") if n.startswith("node")] == ["node3"]
        assert t.readlink(f"{CPU}/cpu{c}/node3") == "../../node/node3"
        assert f"cpu{c}" in t.ls(f"{NODE}/node3")
        assert f"cpu{c}" not in t.ls(f"{NODE}/node0")
    assert "node3" in t.ls("/sys/bus/node/devices")
    assert [z.nid for z in m.zonelists[3]][:1] == [0]      # node 3 has no memory
    (topics, devices), = seen
    assert topics == [NODES]
    assert devices[0] == ("online", "/devices/system/node/node3", {"NODE": "3"})
    assert devices[1:] == tuple(("change", f"/devices/system/cpu/cpu{c}",
                                 {"CPU": str(c), "NODE": "3"}) for c in siblings)
    assert m.check() == []


@pytest.mark.parametrize("value", ["4\n", "-1", "9", "x", "", "0 1", "99999999999999999999"])
def test_bad_node_ids_are_einval_and_change_nothing(value):
    m = boot(nodes=2, cpus=4, possible_nodes=4)
    t = Tree(m)
    before = m.cpu_node, m.online_nodes(), m.changes.generation
    assert t.write(f"{TOPO}/cpu2/node", value) == errno.EINVAL
    assert (m.cpu_node, m.online_nodes(), m.changes.generation) == before


def test_a_cpu_that_does_not_exist():
    m = boot(nodes=2, cpus=4, possible_nodes=4)
    assert Tree(m).node(f"{TOPO}/cpu4/node") is None
    with pytest.raises(HotplugError) as e:
        m.move_cpu(4, 1)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("row", ["10 20 30", "10", "11 20", "10 10", "10 255", "10 0",
                                 "10 x", "", "10 -20"])
def test_bad_distance_rows_are_einval_and_change_nothing(row):
    m = boot(nodes=2, cpus=4, possible_nodes=4)
    t = Tree(m)
    before = t.read(f"{NODE}/node0/distance"), [z.nid for z in m.zonelists[0]]
    assert t.write(f"{TOPO}/node0/distance", row) == errno.EINVAL
    assert (t.read(f"{NODE}/node0/distance"), [z.nid for z in m.zonelists[0]]) == before


def test_distance_row_reorders_the_fallback_and_stays_asymmetric():
    m = boot(nodes=3, cpus=6, possible_nodes=4)
    t = Tree(m)
    assert t.write(f"{TOPO}/node0/distance", "10 40 12\n") is None
    assert t.read(f"{NODE}/node0/distance") == "10 40 12\n"
    assert t.read(f"{TOPO}/node0/distance") == "10 40 12\n"
    assert t.read(f"{NODE}/node1/distance").split()[0] == "20"     # row 1 as it was
    assert fallback_nodes(m, 0) == [0, 2, 1]
    assert t.write(f"{TOPO}/node0/distance", "10 12 40") is None
    assert fallback_nodes(m, 0) == [0, 1, 2]
    assert m.check() == []


def test_cpu_hotplug_drains_and_follows():
    m = boot(nodes=2, cpus=4, possible_nodes=4)
    t = Tree(m)
    pfns = [m.alloc_pages(0, cpu=3) for _ in range(3)]
    for pfn in pfns:
        m.free_pages(pfn, cpu=3)
    assert any(z.pcp.get(3) for p in m.pgdat.values() for z in p.zones.values())
    free = m.total_free_pages()
    assert t.write(f"{CPU}/cpu3/online", "0\n") is None
    assert not any(z.pcp.get(3) for p in m.pgdat.values() for z in p.zones.values())
    assert m.total_free_pages() > free
    assert t.read(f"{CPU}/cpu3/online") == "0\n"
    assert node_list(t.read(f"{CPU}/online")) == [0, 1, 2]
    assert node_list(t.read(f"{CPU}/offline")) == [3]
    assert node_list(t.read(f"{NODE}/node1/cpulist")) == [2]
    assert t.write(f"{CPU}/cpu2/online", "n") is None
    assert node_list(t.read(f"{NODE}/has_cpu")) == [0]
    assert "cpu2" not in t.ls(f"{NODE}/node1")
    assert "node1" in t.ls(f"{CPU}/cpu2")            # the device stays under its node
    assert t.write(f"{CPU}/cpu2/online", "0") is None   # already so: success
    assert t.write(f"{CPU}/cpu2/online", "2") == errno.EINVAL
    with pytest.raises(ValueError, match="offline"):
        m.alloc_pages(0, cpu=3)
    assert t.write(f"{CPU}/cpu3/online", "on") is None
    assert node_list(t.read(f"{NODE}/has_cpu")) == [0, 1]
    assert "online" not in t.ls(f"{CPU}/cpu0")
    assert m.check() == []


def test_last_online_cpu_stays():
    m = Machine.boot(MachineConfig(nodes=2, mem=64 << 20, cpus=2))
    with pytest.raises(HotplugError) as e:
        m.set_cpu_online(0, False)
    assert e.value.errno == errno.EPERM
    assert m.set_cpu_online(1, False)
    assert m.online_cpus() == (0,)


def test_moving_cpus_onto_the_memory_makes_their_allocations_local():
    """After all of memory moves to node 2, allocations made for CPUs of node 0 come from
    node 2 as other_node; once those CPUs move to node 2 they are local_node. numa_hit stays:
    the preferred zone of a memoryless node is its nearest node's (zone_statistics())."""
    m = boot(nodes=2, mem=64 << 20, cpus=4, possible_nodes=4)
    t = Tree(m)
    all_to(m, 2)

    def stat() -> dict[str, int]:
        return key_values(t.read(f"{NODE}/node2/numastat"))

    before = stat()
    for _ in range(50):
        m.alloc_pages(0, cpu=0)
    mid = stat()
    assert mid["other_node"] - before["other_node"] == 50
    assert mid["local_node"] == before["local_node"]
    assert t.write(f"{TOPO}/cpu0/node", "2") is None
    for _ in range(50):
        m.alloc_pages(0, cpu=0)
    after = stat()
    assert after["local_node"] - mid["local_node"] == 50
    assert after["other_node"] == mid["other_node"]
    assert after["numa_hit"] - mid["numa_hit"] == 50 and after["numa_miss"] == mid["numa_miss"]


def test_moving_cpus_turns_misses_into_hits_on_a_node_with_memory():
    """A CPU of node 0 allocating while node 0 is below its watermarks misses onto node 1;
    moved to node 1, the same allocations are node 1's hits."""
    m = boot(nodes=2, mem=64 << 20, cpus=4, possible_nodes=4)
    t = Tree(m)
    while m.alloc_pages(0, nid=0, thisnode=True) is not None:
        pass
    s = key_values(t.read(f"{NODE}/node1/numastat"))
    for _ in range(20):
        m.alloc_pages(0, cpu=0)
    mid = key_values(t.read(f"{NODE}/node1/numastat"))
    assert mid["numa_miss"] - s["numa_miss"] == 20
    assert t.write(f"{TOPO}/cpu0/node", "1") is None
    for _ in range(20):
        m.alloc_pages(0, cpu=0)
    after = key_values(t.read(f"{NODE}/node1/numastat"))
    assert after["numa_miss"] == mid["numa_miss"]
    assert after["numa_hit"] - mid["numa_hit"] == 20
    assert after["local_node"] - mid["local_node"] == 20


# --- the property test ------------------------------------------------------------------------

def check_files(t: Tree, node_of: dict[int, int], online: set[int],
                rows: dict[int, list[int]], nr_cpus: int) -> None:
    """Every file against the record: cpu sets, node CPU masks and links, distances."""
    nodes = node_list(t.read(f"{NODE}/online"))
    assert nodes == sorted(rows)
    assert node_list(t.read(f"{CPU}/online")) == sorted(online)
    assert node_list(t.read(f"{CPU}/offline")) == sorted(set(range(nr_cpus)) - online)
    with_cpu = sorted({node_of[c] for c in online})
    assert node_list(t.read(f"{NODE}/has_cpu")) == with_cpu
    for n in nodes:
        cpus = sorted(c for c in online if node_of[c] == n)
        assert node_list(t.read(f"{NODE}/node{n}/cpulist")) == cpus
        assert t.read(f"{NODE}/node{n}/cpumap") == bitmap_mask(cpus, nr_cpus) + "\n"
        assert sorted(x for x in t.ls(f"{NODE}/node{n}") if re.fullmatch(r"cpu\d+", x)) == \
            sorted(f"cpu{c}" for c in cpus)
        assert [int(d) for d in t.read(f"{NODE}/node{n}/distance").split()] == rows[n]
        assert t.read(f"{TOPO}/node{n}/distance") == t.read(f"{NODE}/node{n}/distance")
    for c in range(nr_cpus):
        assert t.read(f"{TOPO}/cpu{c}/node") == f"{node_of[c]}\n"
        assert [x for x in t.ls(f"{CPU}/cpu{c}") if x.startswith("node")] == [f"node{node_of[c]}"]
        if c:
            assert t.read(f"{CPU}/cpu{c}/online") == f"{int(c in online)}\n"


def check_zonelists(m: Machine, rows: dict[int, list[int]]) -> None:
    """Each node's fallback: the nodes with memory by the record's distance, itself first."""
    nodes = sorted(rows)
    with_mem = [n for n in nodes if any(z.populated for z in m.pgdat[n].zones.values())]
    for n in nodes:
        dist = dict(zip(nodes, rows[n]))
        assert fallback_nodes(m, n) == sorted(with_mem, key=lambda b: (dist[b], b != n, b))


def random_step(rng: random.Random, t: Tree, node_of: dict[int, int], online: set[int],
                rows: dict[int, list[int]], possible: list[int], siblings: dict[int, list[int]],
                nr_cpus: int) -> None:
    """One random change through the files, good or bad, applied to the record if it must
    succeed."""
    what = rng.random()
    if what < 0.4:
        cpu = rng.randrange(nr_cpus)
        nid = rng.choice([*possible, *possible, -1, max(possible) + 1, 99])
        err = t.write(f"{TOPO}/cpu{cpu}/node", f"{nid}\n")
        if nid not in possible:
            assert err == errno.EINVAL
            return
        assert err is None
        for c in siblings[cpu]:
            node_of[c] = nid
        if nid not in rows:
            nodes = sorted({*rows, nid})
            for n in rows:
                rows[n] = [d if b != nid else 20 for b, d in
                           zip(nodes, [*rows[n][:nodes.index(nid)], 20,
                                       *rows[n][nodes.index(nid):]])]
            rows[nid] = [10 if b == nid else 20 for b in nodes]
    elif what < 0.75:
        cpu = rng.randrange(1, nr_cpus)
        up = rng.random() < 0.5
        err = t.write(f"{CPU}/cpu{cpu}/online", "1\n" if up else "0\n")
        if not up and online == {cpu}:
            assert err == errno.EBUSY
            return
        assert err is None
        (online.add if up else online.discard)(cpu)
    else:
        nodes = sorted(rows)
        nid = rng.choice(nodes)
        row = [10 if b == nid else rng.randrange(11, 255) for b in nodes]
        bad = rng.random() < 0.2
        if bad:
            kind = rng.randrange(4)
            if kind == 0:
                row.append(20)
            elif kind == 1:
                row[nodes.index(nid)] = 11
            elif kind == 2 and len(nodes) > 1:
                row[(nodes.index(nid) + 1) % len(nodes)] = rng.choice([255, 10, 5, 1000])
            else:
                row = row[:-1]
        err = t.write(f"{TOPO}/node{nid}/distance", " ".join(map(str, row)))
        if bad:
            assert err == errno.EINVAL
            return
        assert err is None
        rows[nid] = row


def test_random_changes_keep_every_file_in_agreement():
    """10,000 random moves, hotplugs and distance rows (good and bad): after each, every file
    shows what the record says, and the zonelists follow the distances."""
    m = boot(nodes=2, cpus=8, possible_nodes=4)
    t = Tree(m)
    nr_cpus = 8
    possible = list(m.possible_node_ids)
    node_of = {c: m.cpu_node[c] for c in range(nr_cpus)}
    online = set(range(nr_cpus))
    rows = {n: [int(d) for d in t.read(f"{NODE}/node{n}/distance").split()]
            for n in m.online_nodes()}
    siblings = {c: [s for s in range(nr_cpus)
                    if (m.topo.place[s].package, m.topo.place[s].core)
                    == (m.topo.place[c].package, m.topo.place[c].core)]
                for c in range(nr_cpus)}
    rng = random.Random(13)
    for step in range(10_000):
        random_step(rng, t, node_of, online, rows, possible, siblings, nr_cpus)
        check_files(t, node_of, online, rows, nr_cpus)
        check_zonelists(m, rows)
        if step % 500 == 0:
            assert m.check() == []
