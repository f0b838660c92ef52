"""The model's tree with a way to change the model from inside the daemon, not by a write to
the files that change: `dnumafs mount MNT --tree pagecache_tree:churning_root` (tests put this
directory on PYTHONPATH).

/churn takes a number N: a thread of the daemon's then allocates N pages and frees every other
one, after the write has returned, as a workload would; /churned reads how many such jobs have
finished. Deterministic, so two daemons given the same writes hold the same model.
"""
from __future__ import annotations

import threading
from typing import Any

import attrs

from dnumafs.files import build_root
from dnumafs.lib.kstrtox import kstrtoull
from dnumafs.mm import Machine, MachineConfig
from dnumafs.vfs.tree import Attr, StaticDir


def churning_root(**cfg: Any) -> StaticDir:
    m = Machine.boot(MachineConfig(**cfg))
    root = build_root(m)
    assert isinstance(root, StaticDir)
    done = [0]
    jobs = threading.Lock()         # one job at a time

    def churn(n: int) -> None:
        with jobs:
            pfns = [m.alloc_pages(0, cpu=i % m.nr_cpus) for i in range(n)]
            for pfn in pfns[::2]:
                if pfn is not None:
                    m.free_pages(pfn)
            with m.lock:
                done[0] += 1
                m.changes.changed()     # /churned is state outside the model: "anything"

    def churn_store(buf: bytes) -> None:
        n = kstrtoull(buf, 0)
        threading.Thread(target=churn, args=(n,), daemon=True).start()

    def churned_show() -> str:
        with m.lock:
            return f"{done[0]}\n"

    return attrs.evolve(root, children={**root.children,
                                        "churn": Attr(store=churn_store),
                                        "churned": Attr(show=churned_show)})
