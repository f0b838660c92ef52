"""The model under several threads: public methods take the lock, a commit is atomic."""
from __future__ import annotations

import random
import threading

import numpy as np
from model_helpers import MiB, alloc, assert_model_ok, boot, expected_nodes, model_invariants

from dnumafs.mm.constants import PG_LOOKUP_NODE, PG_RESERVED


def test_lock_is_reentrant():
    m = boot(nodes=2, mem=32 * MiB)
    with m.lock:
        with m.lock:
            assert m.check() == []
            p = alloc(m)
        m.free_pages(p)


def test_threads_allocating_freeing_committing_and_reading():
    m = boot(nodes=2, mem=64 * MiB, cpus=4, possible_nodes=4)
    managed = m.total_managed_pages()
    errors: list[BaseException] = []
    held: dict[int, dict[int, int]] = {}

    def worker(cpu):
        rng = random.Random(cpu)
        mine = held.setdefault(cpu, {})
        try:
            for _ in range(400):
                if mine and rng.random() < 0.45:
                    p = rng.choice(list(mine))
                    m.free_pages(p)
                    del mine[p]
                else:
                    o = rng.choice([0, 0, 0, 1, 3, 6, 9])
                    got = m.alloc_pages(o, cpu=cpu, nid=rng.choice([None, 0, 1]))
                    if got is not None:
                        mine[got] = o
                if rng.random() < 0.05:
                    m.drain_pcp()
        except BaseException as e:          # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def committer():
        rng = random.Random(99)
        try:
            for i in range(12):
                if i % 3 == 0:
                    m.memlayout_add_range(0, m.max_pfn - 1, rng.choice([1, 2, 3]))
                else:
                    step = rng.choice([64, 256, 1024])
                    for k, s in enumerate(range(0, m.max_pfn, step)):
                        m.memlayout_add_range(s, min(s + step, m.max_pfn) - 1, k % 3)
                m.memlayout_commit()
                if i == 6:
                    m.set_nr_hugepages(0, 2)
        except BaseException as e:          # noqa: BLE001
            errors.append(e)

    def reader():
        try:
            for _ in range(25):
                with m.lock:
                    assert sum(pg.managed_pages for pg in m.pgdat.values()) == managed
                    probs = model_invariants(m)
                    assert probs == [], probs
        except BaseException as e:          # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(4)]
    threads += [threading.Thread(target=committer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread hung"
    assert errors == [], errors
    tracked = {p: o for mine in held.values() for p, o in mine.items()}
    assert_model_ok(m, tracked=tracked, managed_total=managed)
    for p in tracked:
        m.free_pages(p)
    m.free_boot_allocations()
    m.set_nr_hugepages(0, 0)
    m.drain_pcp()
    assert_model_ok(m, tracked={}, managed_total=managed)
    flags = np.asarray(m.page_flags)
    unreserved = (flags & PG_RESERVED) == 0
    assert not (flags[unreserved] & PG_LOOKUP_NODE).any()
    node = np.asarray(m.page_node).astype(np.int64)
    assert (node[unreserved] == expected_nodes(m.current, node, m.max_pfn)[unreserved]).all()
