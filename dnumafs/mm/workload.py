"""A workload in the model: tasks on CPUs that allocate and free pages at a rate under a memory
policy, so that pages flow as on a live machine (marked pages are freed and transplanted,
numastat and the kinds' counters move).

Model time is counted in nanoseconds (an int, so that the same commands give the same state).
In each model second a task makes `rate` allocations of 2^order pages from its CPU, under its
policy, each holding a kind drawn from its mix with the workload's seeded generator; once it
holds `pages` pages, each allocation first frees its oldest allocation (FIFO). A failed
allocation is counted. Time runs in ticks of TICK_NS (a scheduler's tick): in each tick the
tasks run one after another in name order, each for the allocations its rate owes by the
tick's end. The work is done in chunks of at most CHUNK allocations, each under the machine
lock and announced once (PAGES), so that readers are never held off for long.

Workload methods take the locks themselves: `mutex` (one advance or command at a time) and
then the machine lock, never the other way round. RealtimeClock runs model time with wall
time in a thread of its own.
"""
from __future__ import annotations

import collections
import errno
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from . import kinds as kinds_mod
from . import page_alloc
from .changes import PAGES, WORKLOAD
from .constants import MAX_ORDER, PG_HEAD, PG_HUGETLB
from .kinds import Kind
from .mempolicy import (
    MPOL_BIND,
    MPOL_INTERLEAVE,
    MPOL_LOCAL,
    MPOL_PREFERRED,
    Policy,
    Task,
)

if TYPE_CHECKING:
    from .machine import Machine

log = logging.getLogger(__name__)

NS = 1_000_000_000
TICK_NS = 10_000_000            # 10 ms of model time per tick
CHUNK = 1024                    # allocations per hold of the machine lock
MAX_ADVANCE_NS = 3600 * NS      # one `advance` runs at most an hour of model time
# and at most this many allocations, summed over the tasks' rates: about 2 s of the daemon's
# work (it makes some 120,000 a second), so that a write, its writer and an unmount never
# wait long for one.
MAX_ADVANCE_WORK = 250_000
MAX_RATE = 10_000_000           # allocations per model second, per task
MAX_PAGES = 1 << 40
MAX_SEED = (1 << 64) - 1
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_NAME = 32
RESERVED_NAMES = frozenset({"all"})    # `stop all` means every task
ORDER_BITS = 4                  # a held allocation is kept as pfn << ORDER_BITS | order
# Where an allocation goes: the node asked for, the zonelist with its watermarks, the zone
# numastat compares with.
Plan = tuple[int, page_alloc.ZoneMarks, page_alloc.Zone | None]

# The policies by the names the control file uses, as mempolicy's modes.
POLICIES = {"local": MPOL_LOCAL, "bind": MPOL_BIND, "preferred": MPOL_PREFERRED,
            "interleave": MPOL_INTERLEAVE}
POLICY_NAMES = {mode: name for name, mode in POLICIES.items()}
# The kinds a mix names. New anonymous and file pages start on the inactive lists, as
# folio_add_lru() puts them since Linux 5.9; `slab` is the reclaimable caches (dentries,
# inodes), which drop_caches 2 frees, `kmalloc` the unreclaimable slab.
KINDS = {"anon": Kind.INACTIVE_ANON, "active_anon": Kind.ACTIVE_ANON,
         "file": Kind.INACTIVE_FILE, "active_file": Kind.ACTIVE_FILE, "shmem": Kind.SHMEM,
         "slab": Kind.SLAB_RECLAIMABLE, "kmalloc": Kind.SLAB_UNRECLAIMABLE,
         "pagetable": Kind.PAGETABLE, "kernel_stack": Kind.KERNEL_STACK, "none": Kind.NONE}


class WorkloadError(Exception):
    """A command the workload refuses (the control file's EINVAL or ENOENT)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def _name(_inst: object, _attr: object, value: str) -> None:
    if not 1 <= len(value) <= MAX_NAME or not set(value) <= NAME_CHARS:
        raise ValueError(f"task name {value!r}: 1-{MAX_NAME} of [A-Za-z0-9_.-]")
    if value in RESERVED_NAMES:
        raise ValueError(f"task name {value!r} is reserved")


def _mix(_inst: object, _attr: object, value: tuple[tuple[str, int], ...]) -> None:
    names = [k for k, _ in value]
    if not value or len(set(names)) != len(names) or not set(names) <= KINDS.keys():
        raise ValueError(f"mix {value!r}: distinct kinds of {', '.join(KINDS)}")
    if any(w < 0 for _, w in value) or not any(w for _, w in value):
        raise ValueError("mix weights: not negative, not all 0")


def _nodes(inst: TaskSpec, _attr: object, value: frozenset[int]) -> None:
    if inst.policy == "local" and value:
        raise ValueError("policy local takes no nodes")
    if inst.policy != "local" and not value:
        raise ValueError(f"policy {inst.policy} needs nodes")
    if inst.policy == "preferred" and len(value) != 1:
        raise ValueError("policy preferred takes exactly one node")


@attrs.frozen
class TaskSpec:
    """What a `task` command says: the whole task (omitted fields take their defaults)."""

    name: str = attrs.field(validator=_name)
    cpu: int = attrs.field(validator=attrs.validators.ge(0))
    policy: str = attrs.field(default="local", validator=attrs.validators.in_(POLICIES))
    nodes: frozenset[int] = attrs.field(default=frozenset(), converter=frozenset,
                                        validator=_nodes)
    rate: int = attrs.field(default=1000, validator=[attrs.validators.ge(0),
                                                     attrs.validators.le(MAX_RATE)])
    pages: int = attrs.field(default=1024, validator=[attrs.validators.ge(0),
                                                      attrs.validators.le(MAX_PAGES)])
    mix: tuple[tuple[str, int], ...] = attrs.field(default=(("anon", 1),), validator=_mix)
    order: int = attrs.field(default=0, validator=[attrs.validators.ge(0),
                                                   attrs.validators.lt(MAX_ORDER)])

    @property
    def policy_mode(self) -> int:
        return POLICIES[self.policy]


def check_advance(rates: Iterable[int], ns: int, before: int = 0) -> int:
    """The allocations an advance of ns nanoseconds asks of tasks at these rates, plus before
    (those of the advances before it in one write), refused past the limits."""
    if not 0 < ns <= MAX_ADVANCE_NS:
        raise WorkloadError(errno.EINVAL,
                            f"advance of {ns} ns out of range 1..{MAX_ADVANCE_NS}")
    work = before + sum(rates) * ns // NS
    if work > MAX_ADVANCE_WORK:
        raise WorkloadError(errno.E2BIG,
                            f"advance of {ns / NS:g} s: {work} allocations asked, more than "
                            f"{MAX_ADVANCE_WORK} at a time: advance less at a time")
    return work


def check_spec(m: Machine, spec: TaskSpec) -> None:
    """The machine has the task's CPU (online or not: a task whose CPU is offline waits) and
    its nodes are possible ones (a node need not be online yet: a layout may bring it)."""
    if spec.cpu not in m.possible_cpus():
        raise WorkloadError(errno.EINVAL, f"cpu {spec.cpu} does not exist")
    bad = sorted(spec.nodes - set(m.possible_node_ids))
    if bad:
        raise WorkloadError(errno.EINVAL, f"node {bad[0]} is not possible")


@attrs.define(eq=False)
class WorkloadTask:
    """A running task: its spec, the allocations it holds (oldest first) and its counts."""

    spec: TaskSpec
    held: collections.deque[int] = attrs.field(factory=collections.deque)
    held_pages: int = 0
    allocated: int = 0
    freed: int = 0
    failed: int = 0
    # Allocations owed, in billionths: rate x nanoseconds run, less NS per allocation made.
    owed: int = 0
    mpol: Task = attrs.field(factory=Task)      # where its interleaving goes next (il_prev)


@attrs.define(eq=False)
class Workload:
    """The machine's workload: its tasks, the model clock and the random kind choices."""

    m: Machine
    tasks: dict[str, WorkloadTask] = attrs.field(factory=dict)
    now_ns: int = 0
    realtime: bool = True           # `clock realtime` (RealtimeClock runs it) or `manual`
    paused: bool = False
    seed: int = 0
    rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    # One advance or command at a time (taken before the machine lock).
    mutex: threading.RLock = attrs.field(factory=threading.RLock)
    # Told after every command, so that the realtime clock can wake or rest.
    on_command: list[Callable[[], None]] = attrs.field(factory=list)
    behind_ns: int = 0              # how far the realtime clock trails wall time
    clock: RealtimeClock | None = None
    # Set when the mount goes: a running advance stops at its next chunk.
    gone: threading.Event = attrs.field(factory=threading.Event)

    def __attrs_post_init__(self) -> None:
        _WORKLOADS.add(self)

    # --------------------------------------------------------------------- commands

    def set_task(self, spec: TaskSpec) -> None:
        """Create the task, or change it (it keeps the pages it holds)."""
        check_spec(self.m, spec)
        with self.mutex, self.m.lock:
            task = self.tasks.get(spec.name)
            if task is None:
                self.tasks[spec.name] = WorkloadTask(spec)
            else:
                task.spec = spec
        self._told()

    def stop(self, name: str | None) -> None:
        """Free every page of the task (None: of every task) and remove it."""
        with self.mutex:
            names = list(self.tasks) if name is None else [name]
            if any(n not in self.tasks for n in names):
                raise WorkloadError(errno.ENOENT, f"no task {name}")
            for n in names:
                task = self.tasks[n]
                while task.held:
                    with self.m.lock:
                        for _ in range(min(CHUNK, len(task.held))):
                            self._free_oldest(task)
                    time.sleep(0)
                with self.m.lock:
                    del self.tasks[n]
                    self.m._announce([PAGES, WORKLOAD])
        self._told()

    def set_clock(self, realtime: bool) -> None:
        with self.mutex:
            self.realtime = realtime
        self._told()

    def set_paused(self, paused: bool) -> None:
        with self.mutex:
            self.paused = paused
        self._told()

    def reseed(self, seed: int) -> None:
        if not 0 <= seed <= MAX_SEED:
            raise WorkloadError(errno.EINVAL, f"seed {seed} out of range 0..{MAX_SEED}")
        with self.mutex:
            self.seed = seed
            self.rng = random.Random(seed)
        self._told()

    def _told(self) -> None:
        with self.m.lock:
            self.m._announce([WORKLOAD])
        for hook in self.on_command:
            hook()

    # ------------------------------------------------------------------------ time

    def advance(self, ns: int, between: Callable[[], None] = lambda: time.sleep(0)) -> None:
        """Run the workload for ns nanoseconds of model time now, tick by tick; between()
        runs between chunks, with no lock held."""
        with self.mutex:        # the realtime clock waits: the advance is all its own
            check_advance((t.spec.rate for t in self.tasks.values()), ns)
            end = self.now_ns + ns
            while self.now_ns < end:
                if self.gone.is_set():
                    raise WorkloadError(errno.ESHUTDOWN, "the workload's mount is gone")
                self.tick(min(end, (self.now_ns // TICK_NS + 1) * TICK_NS), between)

    def tick(self, until: int, between: Callable[[], None]) -> None:
        """Run every task from now to until (within one tick), under the mutex, and announce
        the tick's changes once, at its end."""
        with self.m.lock:
            elapsed = until - self.now_ns
            owed = []
            for name in sorted(self.tasks):
                task = self.tasks[name]
                task.owed += task.spec.rate * elapsed
                n, task.owed = divmod(task.owed, NS)
                if n and task.spec.cpu not in self.m.cpus.online:
                    n = 0       # a task whose CPU is offline cannot run: it loses the time
                if n:
                    owed.append((task, n))
            self.now_ns = until
        for task, n in owed:
            while n > 0:
                k = min(n, CHUNK)
                with self.m.lock:
                    if task.spec.cpu in self.m.cpus.online:
                        self._run(task, k)
                n -= k
                if self.gone.is_set():
                    break
                between()
        if owed:    # a tick that allocates nothing moves only the clock, which no text
            with self.m.lock:   # is kept for (the control file is made at each read)
                self.m._announce([PAGES, WORKLOAD])

    # ------------------------------------------------------------------ allocation

    def _run(self, task: WorkloadTask, n: int) -> None:
        """n allocations of the task, each after freeing its oldest ones while the new one
        would take it over its pages (machine lock held)."""
        m, spec = self.m, task.spec
        order, cpu, limit = spec.order, spec.cpu, spec.pages
        size = 1 << order
        kinds = self._kinds(spec, n)
        plans = self._plans(task, n)
        held = task.held
        charge = kinds_mod.charge
        rmqueue = page_alloc.rmqueue_zonelist
        interleave = spec.policy == "interleave"
        for i in range(n):
            while held and task.held_pages + size > limit:
                self._free_oldest(task)
            plan = plans[i]
            if plan is None:
                task.failed += 1
                continue
            nid, marks, preferred = plan
            pfn = rmqueue(m, order, marks, preferred, nid, cpu, interleave)
            if pfn is None:
                task.failed += 1
                continue
            charge(m, pfn, order, kinds[i])
            held.append(pfn << ORDER_BITS | order)
            task.held_pages += size
            task.allocated += 1

    def _free_oldest(self, task: WorkloadTask) -> None:
        entry = task.held.popleft()
        order = entry & ((1 << ORDER_BITS) - 1)
        page_alloc.free_pages(self.m, entry >> ORDER_BITS, task.spec.cpu)
        task.held_pages -= 1 << order
        task.freed += 1

    def _kinds(self, spec: TaskSpec, n: int) -> list[Kind]:
        """The kind each of n allocations holds, drawn from the mix."""
        names = [k for k, w in spec.mix if w]
        if len(names) == 1:
            return [KINDS[names[0]]] * n
        cum, total = [], 0
        for _, w in spec.mix:
            total += w
            cum.append(total)
        return self.rng.choices([KINDS[k] for k, _ in spec.mix], cum_weights=cum, k=n)

    def _plans(self, task: WorkloadTask, n: int) -> list[Plan | None]:
        """Where each of n allocations goes under the task's policy (alloc_pages_mpol()):
        the node asked for, the zonelist with its watermarks and the zone numastat compares
        with; None when the policy allows no zone. A policy's nodes that hold no memory now
        are left out (as a cpuset's mems_allowed leaves out nodes without memory); preferred
        and interleave then fall back to the local node, bind has nowhere to go."""
        m, spec = self.m, task.spec
        local = m.cpu_node[spec.cpu]
        mode = spec.policy_mode
        usable = frozenset(n for n in spec.nodes
                           if n in m.pgdat and m.pgdat[n].present_pages > 0)

        def plan(nid: int, nodemask: frozenset[int] | None = None) -> Plan | None:
            zonelist, preferred = page_alloc.policy_zonelist(m, nid, nodemask=nodemask)
            if not zonelist:
                return None
            return nid, page_alloc.zonelist_marks(m, zonelist), preferred

        if mode == MPOL_BIND:
            # the local node's zonelist filtered by the nodemask (policy_nodemask())
            return [plan(local, usable) if usable else None] * n
        if mode == MPOL_LOCAL or not usable:
            return [plan(local)] * n
        if mode == MPOL_PREFERRED:
            (nid,) = usable
            return [plan(nid)] * n
        # interleave: round robin over the nodes from il_prev (interleave_nodes())
        task.mpol.policy = Policy(mode, 0, usable)
        plans = {nid: plan(nid) for nid in usable}
        out = []
        for _ in range(n):
            nid = task.mpol.next_interleave()
            task.mpol.il_prev = nid
            out.append(plans[nid])
        return out

    # ------------------------------------------------------------------- the others

    def forget(self, pfns: Iterable[int]) -> None:
        """Blocks freed by someone else (drop_caches frees the page cache and slab the tasks
        hold): the tasks no longer hold them (machine lock held)."""
        gone = set(pfns)
        for task in self.tasks.values():
            if any(e >> ORDER_BITS in gone for e in task.held):
                kept = [e for e in task.held if e >> ORDER_BITS not in gone]
                task.held_pages = sum(1 << (e & ((1 << ORDER_BITS) - 1)) for e in kept)
                task.held = collections.deque(kept)

    def check(self) -> list[str]:
        """The tasks hold allocated blocks, each once, of the order they asked for, and
        their held_pages are the sum (machine lock held)."""
        errs = []
        seen: set[int] = set()
        mm = self.m.mem_map
        for name, task in self.tasks.items():
            pages = 0
            for e in task.held:
                pfn, order = e >> ORDER_BITS, e & ((1 << ORDER_BITS) - 1)
                pages += 1 << order
                if pfn in seen:
                    errs.append(f"workload task {name}: pfn {pfn:#x} held twice")
                seen.add(pfn)
                if mm.flags[pfn] & (PG_HEAD | PG_HUGETLB) != PG_HEAD or mm.order[pfn] != order:
                    errs.append(f"workload task {name}: pfn {pfn:#x} is not its allocated "
                                f"block of order {order}")
            if pages != task.held_pages:
                errs.append(f"workload task {name}: holds {pages} pages, counts "
                            f"{task.held_pages}")
        return errs


# ------------------------------------------------------------------------ the realtime clock

MAX_LAG_NS = NS // 2        # past this the clock lets model time slip rather than catch up
REST_S = 0.0005             # the clock's pause between chunks, for readers to get in
IDLE_S = 0.1                # how often an idle clock looks again


@attrs.define(eq=False)
class RealtimeClock:
    """A thread that runs the workload's model time with wall time while the clock is
    realtime and not paused. When the rates ask for more than the machine can do, model time
    falls behind; it never runs more than MAX_LAG_NS behind, the rest is let go and counted
    in the workload's behind_ns."""

    w: Workload
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _wake: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None
    _wall0: int = 0         # wall time (monotonic ns) at which the clock last started
    _ran: int = 0           # model time it has run since (an `advance` adds to neither)
    _slipped: int = 0       # and the model time it let go

    def start(self) -> None:
        self.w.on_command.append(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="dnumafs-workload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _running(self) -> bool:
        return self.w.realtime and not self.w.paused

    def _run(self) -> None:
        w = self.w
        started = False
        while not self._stop.is_set():
            if not self._running():
                started = False
                self._wake.wait(IDLE_S)
                self._wake.clear()
                continue
            now = time.monotonic_ns()
            if not started:     # (re)started: model time runs on from here
                self._wall0, self._ran, self._slipped = now, 0, 0
                started = True
            lag = now - self._wall0 - self._slipped - self._ran
            if lag > MAX_LAG_NS:
                self._slipped += lag - MAX_LAG_NS
                lag = MAX_LAG_NS
            w.behind_ns = self._slipped + max(lag, 0)
            if lag < TICK_NS:
                self._wake.wait((TICK_NS - lag) / NS)
                self._wake.clear()
                continue
            with w.mutex:
                if self._running():
                    until = min(w.now_ns + lag, (w.now_ns // TICK_NS + 1) * TICK_NS)
                    self._ran += until - w.now_ns
                    w.tick(until, lambda: time.sleep(REST_S))


# The clocks started in this process (a daemon serves one machine), stopped when its mount goes,
# and the workloads made in it, whose advances stop then too.
_CLOCKS: list[RealtimeClock] = []
_WORKLOADS: weakref.WeakSet[Workload] = weakref.WeakSet()


def start_clock(w: Workload) -> None:
    """Start w's realtime clock unless it runs already."""
    with w.mutex:
        if w.clock is None:
            w.clock = RealtimeClock(w)
            w.clock.start()
            _CLOCKS.append(w.clock)


def stop_clocks(timeout: float = 5.0) -> None:
    """Stop every clock this process started, each within timeout seconds, and any advance
    still running."""
    for w in list(_WORKLOADS):
        w.gone.set()
    while _CLOCKS:
        clock = _CLOCKS.pop()
        clock.stop(timeout)
        if clock.alive:
            log.warning("workload clock still running %.0f s after its stop", timeout)
        else:
            log.info("workload clock stopped")
