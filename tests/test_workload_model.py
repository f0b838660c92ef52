"""The workload in the model (dnumafs.mm.workload), without a mount: rates, FIFO freeing,
policies as numastat counts them, kinds, transplant of marked pages, offline CPUs, the pages
drop_caches takes, determinism, and a property test over command sequences."""
from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnumafs.mm import Machine, MachineConfig, page_alloc
from dnumafs.mm.kinds import Kind
from dnumafs.mm.workload import NS, ORDER_BITS, TaskSpec, Workload, WorkloadError

MiB = 1 << 20


def boot(mem: int = 64 * MiB, nodes: int = 2) -> Machine:
    m = Machine.boot(MachineConfig(nodes=nodes, mem=mem, cpus=4, possible_nodes=4))
    m.workload.set_clock(False)
    return m


def numastat(m: Machine, nid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for zone in m.pgdat[nid].zones.values():
        for name in ("numa_hit", "numa_miss", "numa_foreign", "interleave_hit", "local_node",
                     "other_node"):
            out[name] = out.get(name, 0) + getattr(zone.numastat, name)
    return out


def totals(m: Machine) -> tuple[int, int]:
    """(free pages with the per-CPU lists, pages the workload holds)."""
    free = sum(p.free_pages for p in m.pgdat.values())
    pcp = sum(z.pcp_pages for p in m.pgdat.values() for z in p.zones.values())
    held = sum(t.held_pages for t in m.workload.tasks.values())
    return free + pcp, held


def test_rate_pages_and_fifo(monkeypatch):
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("a", 0, rate=1000, pages=100))
    w.advance(NS // 20)                     # 50 allocations: all kept
    t = w.tasks["a"]
    assert (t.allocated, t.freed, t.held_pages) == (50, 0, 50)
    first = [e >> ORDER_BITS for e in t.held]
    freed: list[int] = []
    free_pages = page_alloc.free_pages

    def recording(m: Machine, pfn: int, cpu: int) -> None:
        freed.append(pfn)
        free_pages(m, pfn, cpu)

    monkeypatch.setattr(page_alloc, "free_pages", recording)
    w.advance(NS // 10)                     # 100 more: the 50 oldest freed, oldest first
    assert (t.allocated, t.freed, t.held_pages, t.failed) == (150, 50, 100, 0)
    assert freed == first
    assert w.now_ns == NS * 3 // 20
    assert m.check() == []


def test_order_and_changed_task_keeps_its_pages():
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("a", 1, rate=100, pages=64, order=2))
    w.advance(NS)
    t = w.tasks["a"]
    assert t.held_pages == 64 and len(t.held) == 16 and t.allocated == 100
    w.set_task(TaskSpec("a", 1, rate=10, pages=8, order=0))     # changed: keeps its pages
    assert w.tasks["a"] is t and t.held_pages == 64
    w.advance(NS // 10)                     # one allocation: frees oldest to fit 8 pages
    assert t.held_pages == 5 and t.allocated == 101     # 1 order-2 block + 1 page
    assert m.check() == []


def test_pages_conserved_and_stop_frees_everything():
    m = boot()
    w = m.workload
    before, _ = totals(m)
    w.set_task(TaskSpec("a", 0, rate=5000, pages=3000, mix=(("anon", 1), ("file", 1))))
    w.set_task(TaskSpec("b", 3, policy="interleave", nodes=frozenset({0, 1}), rate=2000,
                        pages=500, order=1))
    w.advance(NS)
    free, held = totals(m)
    assert held == 3500 and free + held == before
    w.stop("a")
    assert "a" not in w.tasks and totals(m)[0] + 500 == before
    with pytest.raises(WorkloadError) as e:
        w.stop("a")
    assert e.value.errno == errno.ENOENT
    w.stop(None)
    assert w.tasks == {} and totals(m) == (before, 0)
    assert m.check() == []


def test_policies_as_numastat_counts_them():
    m = boot()
    w = m.workload
    start = {n: numastat(m, n) for n in (0, 1)}

    def moved(nid: int, key: str) -> int:
        return numastat(m, nid)[key] - start[nid][key]

    # bind to the remote node from CPU 0 (node 0): hits on node 1, counted as other_node
    w.set_task(TaskSpec("bind", 0, policy="bind", nodes=frozenset({1}), rate=100, pages=1000))
    w.advance(NS)
    assert moved(1, "numa_hit") == 100 and moved(1, "other_node") == 100
    assert moved(0, "numa_hit") == moved(0, "local_node") == 0
    w.stop(None)
    start = {n: numastat(m, n) for n in (0, 1)}
    # interleave over both nodes: every allocation lands where asked (interleave_hit)
    w.set_task(TaskSpec("il", 2, policy="interleave", nodes=frozenset({0, 1}), rate=100,
                        pages=1000))
    w.advance(NS)
    assert moved(0, "interleave_hit") == moved(1, "interleave_hit") == 50
    assert moved(0, "other_node") == 50 and moved(1, "local_node") == 50
    w.stop(None)
    start = {n: numastat(m, n) for n in (0, 1)}
    # preferred and local
    w.set_task(TaskSpec("pref", 2, policy="preferred", nodes=frozenset({0}), rate=10, pages=99))
    w.set_task(TaskSpec("local", 2, rate=10, pages=99))
    w.advance(NS)
    assert moved(0, "numa_hit") == 10 and moved(0, "other_node") == 10
    assert moved(1, "numa_hit") == 10 and moved(1, "local_node") == 10
    assert m.check() == []


def test_bind_to_a_full_node_misses_nothing_and_fails():
    """A bind to a node without memory has nowhere to go: every allocation fails, counted."""
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("x", 0, policy="bind", nodes=frozenset({3}), rate=100))
    w.advance(NS)
    assert (w.tasks["x"].allocated, w.tasks["x"].failed) == (0, 100)


def test_kinds_counted():
    m = boot()
    w = m.workload
    before = m.kind_pages(0)
    w.set_task(TaskSpec("a", 0, rate=1000, pages=10_000,
                        mix=(("anon", 1), ("file", 1), ("slab", 1), ("kmalloc", 0))))
    w.advance(NS * 3 // 10)
    grew = [a - b for a, b in zip(m.kind_pages(0), before)]
    assert sum(grew) == 300
    for kind in (Kind.INACTIVE_ANON, Kind.INACTIVE_FILE, Kind.SLAB_RECLAIMABLE):
        assert 50 < grew[kind] < 150, grew
    assert grew[Kind.SLAB_UNRECLAIMABLE] == 0
    assert m.check() == []


def test_marked_pages_drain_to_their_new_node():
    """After a commit moves node 1's upper half to node 2, a task on node 1 frees the pages it
    held there (marked) into node 2, and allocates its new ones on node 1."""
    m = boot()
    w = m.workload
    lo = min(p for p in range(m.max_pfn) if m.mem_map.node[p] == 1)
    w.set_task(TaskSpec("a", 2, rate=2000, pages=2000))
    w.advance(NS)
    t = w.tasks["a"]
    held = [e >> ORDER_BITS for e in t.held]
    mid = (lo + m.max_pfn) // 2
    in_range = [p for p in held if p >= mid]
    m.memlayout_add_range(mid, m.max_pfn - 1, 2)
    m.memlayout_commit()
    size2 = m.pgdat[2].present_pages
    moved, tof = m.stats.moved_pages, m.stats.transplant_on_free
    w.advance(NS)          # every page held before is freed (FIFO), the marked ones move
    assert m.stats.transplant_on_free - tof >= len(in_range) > 0
    assert m.pgdat[2].present_pages - size2 == m.stats.moved_pages - moved >= len(in_range)
    assert all(m.mem_map.node[p] == 2 for p in in_range)
    assert m.check() == []


def test_offline_cpu_waits_and_loses_the_time():
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("a", 1, rate=100, pages=1000))
    m.set_cpu_online(1, False)
    w.advance(NS)
    assert w.tasks["a"].allocated == 0
    m.set_cpu_online(1, True)
    w.advance(NS // 10)
    assert w.tasks["a"].allocated == 10


def test_drop_caches_takes_the_tasks_file_pages():
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("a", 0, rate=1000, pages=400, mix=(("file", 1), ("anon", 1))))
    w.advance(NS)
    t = w.tasks["a"]
    m.drop_caches(1)
    assert 100 < t.held_pages < 300 and m.check() == []
    assert all(m.kinds.kind[e >> ORDER_BITS] == Kind.INACTIVE_ANON for e in t.held)
    w.advance(NS)
    assert t.held_pages == 400 and m.check() == []


def test_bad_specs_refused():
    m = boot()
    w = m.workload
    for bad in (dict(name="", cpu=0), dict(name="a b", cpu=0), dict(name="x" * 33, cpu=0),
                dict(name="a", cpu=0, nodes={1}), dict(name="a", cpu=0, policy="bind"),
                dict(name="a", cpu=0, policy="preferred", nodes={0, 1}),
                dict(name="a", cpu=0, order=11), dict(name="a", cpu=0, rate=-1),
                dict(name="a", cpu=0, mix=(("anon", 0),)), dict(name="a", cpu=0, mix=()),
                dict(name="a", cpu=0, policy="nearest")):
        with pytest.raises(ValueError):
            TaskSpec(**bad)     # type: ignore[arg-type]
    for spec in (TaskSpec("a", 4), TaskSpec("a", 0, policy="bind", nodes=frozenset({4}))):
        with pytest.raises(WorkloadError) as e:
            w.set_task(spec)
        assert e.value.errno == errno.EINVAL
    for ns in (0, -1, 3601 * NS):
        with pytest.raises(WorkloadError):
            w.advance(ns)
    assert w.tasks == {} and w.now_ns == 0


def run_script(m: Machine) -> Workload:
    w = m.workload
    w.reseed(7)
    w.set_task(TaskSpec("a", 0, rate=3000, pages=700, mix=(("anon", 3), ("file", 2),
                                                           ("slab", 1))))
    w.set_task(TaskSpec("b", 3, policy="interleave", nodes=frozenset({0, 1}), rate=1500,
                        pages=300, order=1, mix=(("file", 1), ("shmem", 1))))
    w.advance(NS // 4)
    m.memlayout_add_range(0x2000, 0x3fff, 2)
    m.memlayout_commit()
    w.advance(NS * 3 // 4)
    w.stop("a")
    w.advance(NS // 3)
    return w


def test_deterministic():
    a, b = boot(), boot()
    run_script(a)
    run_script(b)
    assert bytes(a.mem_map.node) == bytes(b.mem_map.node)
    assert bytes(a.mem_map.flags) == bytes(b.mem_map.flags)
    assert bytes(a.kinds.kind) == bytes(b.kinds.kind)
    assert [numastat(a, n) for n in a.pgdat] == [numastat(b, n) for n in b.pgdat]
    assert list(a.workload.tasks["b"].held) == list(b.workload.tasks["b"].held)


# --- a property test over command sequences ----------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
specs = st.builds(
    lambda name, cpu, pol, rate, pages, order, mix: TaskSpec(
        name, cpu, policy=pol[0], nodes=frozenset(pol[1]), rate=rate, pages=pages,
        order=order, mix=mix),
    names, st.integers(0, 3),
    st.sampled_from([("local", ()), ("bind", (1,)), ("bind", (0, 1)), ("preferred", (0,)),
                     ("interleave", (0, 1)), ("interleave", (1, 2)), ("bind", (2,))]),
    st.integers(0, 20_000), st.integers(0, 3000), st.integers(0, 3),
    st.sampled_from([(("anon", 1),), (("file", 1), ("slab", 2)), (("kmalloc", 1),)]))
commands = st.lists(st.one_of(
    st.tuples(st.just("task"), specs),
    st.tuples(st.just("advance"), st.integers(1, NS // 5)),
    st.tuples(st.just("stop"), st.one_of(names, st.none())),
    st.tuples(st.just("seed"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("commit"), st.integers(0, 3)),
    st.tuples(st.just("drop"), st.integers(1, 3)),
    st.tuples(st.just("cpu"), st.tuples(st.integers(1, 3), st.booleans())),
), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmds=commands)
def test_commands_conserve_pages(cmds):
    m = boot(mem=32 * MiB)
    w = m.workload
    managed = m.total_managed_pages()

    def others() -> int:
        """Pages allocated by others than the workload (boot's)."""
        free, held = totals(m)
        return managed - free - held

    kept = others()
    for verb, arg in cmds:
        if verb == "task":
            w.set_task(arg)
        elif verb == "advance":
            w.advance(arg)
        elif verb == "stop":
            if arg is None or arg in w.tasks:
                w.stop(arg)
        elif verb == "seed":
            w.reseed(arg)
        elif verb == "commit":      # the upper half to node arg
            m.memlayout_add_range(m.max_pfn // 2, m.max_pfn - 1, arg)
            m.memlayout_commit()
        elif verb == "drop":
            m.drop_caches(arg)
        elif verb == "cpu":
            cpu, online = arg
            m.set_cpu_online(cpu, online)
        assert m.check() == []
        assert m.total_managed_pages() == managed
        if verb == "drop":      # boot's page cache and slab freed, and the tasks'
            assert others() <= kept
            kept = others()
        assert others() == kept     # every page the workload took is held, or free again
    w.stop(None)
    assert m.check() == [] and others() == kept


def test_advance_refuses_more_work_than_its_limit():
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("big", cpu=0, rate=10_000_000, pages=100_000))
    with pytest.raises(WorkloadError) as e:
        w.advance(3600 * NS)
    assert e.value.errno == errno.E2BIG
    assert w.now_ns == 0 and w.tasks["big"].allocated == 0


def test_advance_stops_when_the_mount_goes():
    """stop_clocks (the mount gone) stops an advance at its next chunk."""
    from dnumafs.mm import workload as workload_mod
    m = boot()
    w = m.workload
    w.set_task(TaskSpec("a", cpu=0, rate=100_000, pages=100))

    def between() -> None:
        if w.tasks["a"].allocated >= 3 * workload_mod.CHUNK:
            workload_mod.stop_clocks()
    with pytest.raises(WorkloadError) as e:
        w.advance(NS, between)
    assert e.value.errno == errno.ESHUTDOWN
    assert w.tasks["a"].allocated < 100_000
    with m.lock:
        assert m.check() == []
