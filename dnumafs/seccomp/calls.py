"""The trapped calls, answered for the model: arguments read from the target's memory, the
rules of mm/mempolicy.c and mm/migrate.c (dnumafs.mm.mempolicy), results written back after
checking that the call still waits (so a write never lands in a task that reused the pid).

Each handler returns the call's value or raises PolicyError (its errno) or MemoryFault
(EFAULT); an open of anything but a status file goes on to the kernel untouched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import attrs

from dnumafs.lib.bitmap import bitmap_parselist
from dnumafs.mm import mempolicy as mp
from dnumafs.mm.mempolicy import AddressSpace, NodeFacts, PolicyError, Task

from . import abi, status

LONG_BITS = 64
CAP_SYS_NICE = 23
O_ACCMODE = 3
O_CLOEXEC = 0o2000000
PAGES_CHUNK = 1024      # pages a move_pages reads, checks and answers at a time
STATUS_PATH_MAX = 64   # longer than any status path


class Continue(Exception):
    """Not ours: the call goes on to the kernel as made."""


@attrs.define
class Answer:
    """What a call gets back: a value, or a descriptor to install and return."""

    value: int = 0
    fd: int | None = None
    fd_flags: int = 0


def model_facts(mnt: Path) -> NodeFacts:
    """The model's node states and CPUs, read from the mount's files."""
    node = mnt / "sys/devices/system/node"

    def nodes(name: str) -> list[int]:
        path = node / name
        return bitmap_parselist(path.read_text()) if path.exists() else []
    online = nodes("online")
    cpu_node = {cpu: n for n in online for cpu in nodes(f"node{n}/cpulist")}
    return NodeFacts(possible=nodes("possible") or online, online=online,
                     memory=nodes("has_memory") or online, cpu_node=cpu_node)


Handlers = dict[int, Callable[[abi.Notification], "Answer"]]


@attrs.frozen
class TaskStat:
    """What /proc/<tid>/stat says of a task that the view needs."""

    start: int              # starttime: with the tid, names the task across pid reuse
    cpu: int                # the CPU it last ran on
    mm: tuple[int, int]     # startcode, startstack: a new one after an exec


def task_stat(tid: int) -> TaskStat:
    text = Path(f"/proc/{tid}/stat").read_bytes()
    f = text[text.rindex(b")") + 2:].split()
    return TaskStat(start=int(f[19]), cpu=int(f[36]), mm=(int(f[23]), int(f[25])))


def status_fields(tid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{tid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@attrs.define
class TaskRecord:
    tid: int
    stat: TaskStat
    tgid: int
    task: Task
    cpus: frozenset[int] | None = None     # the model CPUs it may run on; None: all


@attrs.define
class View:
    """The supervisor's state: the model's facts, the tasks it has seen (by tid, checked
    against their start time each second, so a reused pid starts afresh) and their address
    spaces (by tgid, start time and exec)."""

    mnt: Path
    listener: abi.Listener
    facts: NodeFacts
    tasks: dict[int, TaskRecord] = attrs.field(factory=dict)
    spaces: dict[tuple[int, int, tuple[int, int]], AddressSpace] = attrs.field(factory=dict)
    host_cpus: set[int] = attrs.field(factory=lambda: set(os.sched_getaffinity(0)))
    charged: bool = True     # the model takes the programs' pages (see exit_group)

    # --- tasks ------------------------------------------------------------------------------

    def record(self, tid: int) -> TaskRecord:
        """The task's record, made on first sight: a new thread starts from its group
        leader's policy, a new process from its parent's (and its address space from the
        parent's, as a fork copies it). A record is trusted while its task lives, which a
        waiting notification proves; forget_exited drops those of dead and reused tids."""
        rec = self.tasks.get(tid)
        if rec is not None:
            return rec
        stat = task_stat(tid)
        fields = status_fields(tid)
        tgid = int(fields["Tgid"])
        origin = tgid if tgid != tid else int(fields.get("PPid", "0"))
        parent = self.tasks.get(origin)
        task = Task(parent.task.policy) if parent else Task()
        rec = self.tasks[tid] = TaskRecord(tid, stat, tgid, task, parent.cpus if parent else None)
        if parent and tgid == tid:
            parent_space = self.spaces.get(self.space_key(parent.tgid, parent))
            if parent_space is not None:
                self.spaces.setdefault(self.space_key(tgid, rec), parent_space.copy())
        return rec

    def space_key(self, tgid: int, rec: TaskRecord) -> tuple[int, int, tuple[int, int]]:
        leader = self.tasks.get(tgid)
        stat = leader.stat if leader else rec.stat
        return (tgid, stat.start, stat.mm)

    def space(self, tgid: int) -> AddressSpace:
        """tgid's address space; its code and stack are read again, so one an exec made is
        a new one (the task's own policy survives an exec, its ranges do not)."""
        rec = self.tasks.get(tgid) or self.record(tgid)
        with contextlib.suppress(OSError):
            rec.stat = task_stat(tgid)
        return self.spaces.setdefault(self.space_key(tgid, rec), AddressSpace())

    def forget_exited(self) -> None:
        """Drop the records of tasks that are gone, or whose tid now names another task
        (another start time), and of their address spaces; an exec'd process's address
        space gets a new key (its new code and stack)."""
        for tid, rec in list(self.tasks.items()):
            try:
                stat = task_stat(tid)
            except (OSError, ValueError, IndexError):
                stat = None
            if stat is None or stat.start != rec.stat.start:
                del self.tasks[tid]
            else:
                rec.stat = stat
        live = {self.space_key(r.tgid, r) for r in self.tasks.values()}
        for key in [k for k in self.spaces if k not in live]:
            del self.spaces[key]

    # --- the target's memory ----------------------------------------------------------------

    def read_nodes(self, pid: int, addr: int, maxnode: int) -> frozenset[int]:
        """get_nodes: the node mask at addr of maxnode bits (the kernel's off-by-one kept)."""
        maxnode = (maxnode - 1) & 0xFFFFFFFFFFFFFFFF
        if maxnode == 0 or not addr:
            return frozenset()
        if maxnode > mp.PAGE_SIZE * 8:
            raise PolicyError(errno.EINVAL, "maxnode beyond a page of bits")
        nlongs = -(-maxnode // LONG_BITS)
        words = struct.unpack(f"={nlongs}Q", abi.read_memory(pid, addr, nlongs * 8))
        value = int.from_bytes(struct.pack(f"={nlongs}Q", *words), "little")
        value &= (1 << maxnode) - 1
        if value >> mp.MAX_NUMNODES:
            raise PolicyError(errno.EINVAL, "a node beyond MAX_NUMNODES")
        return frozenset(i for i in range(min(maxnode, mp.MAX_NUMNODES)) if value >> i & 1)

    def write(self, nid: int, pid: int, addr: int, data: bytes) -> None:
        """Write to the target only while its call still waits."""
        if not self.listener.valid(nid):
            raise abi.MemoryFault(addr)
        abi.write_memory(pid, addr, data)

    def write_nodes(self, nid: int, pid: int, addr: int, maxnode: int,
                    nodes: frozenset[int]) -> None:
        """copy_nodes_to_user: the mask, zeros beyond nr_node_ids up to maxnode."""
        copy = ((maxnode - 1 + 63) // 64 * 64) // 8
        nbytes = -(-self.facts.nr_node_ids // LONG_BITS) * 8
        if copy > nbytes:
            if copy > mp.PAGE_SIZE:
                raise PolicyError(errno.EINVAL, "maxnode beyond a page")
            self.write(nid, pid, addr + nbytes, bytes(copy - nbytes))
            copy = nbytes
        value = sum(1 << n for n in nodes)
        self.write(nid, pid, addr, value.to_bytes(nbytes, "little")[:copy])

    def mapped(self, tgid: int, start: int, end: int) -> bool:
        """[start, end) is covered by mappings, no hole (find_vma over the range)."""
        at = start
        for line in Path(f"/proc/{tgid}/maps").read_text().splitlines():
            lo, _, hi = line.split(" ", 1)[0].partition("-")
            lo_i, hi_i = int(lo, 16), int(hi, 16)
            if lo_i > at:
                return False
            at = max(at, hi_i)
            if at >= end:
                return True
        return False

    def capable_nice(self, tid: int) -> bool:
        """CAP_SYS_NICE in the initial user namespace (run as root makes no other)."""
        if os.geteuid() != 0:
            return False
        return bool(int(status_fields(tid).get("CapEff", "0"), 16) >> CAP_SYS_NICE & 1)

    def target_tgid(self, caller: TaskRecord, pid: int) -> int:
        """find_mm_struct: pid 0 is the caller; another must exist (ESRCH)."""
        if pid == 0:
            return caller.tgid
        if pid < 0 or pid >= 1 << 22:
            raise PolicyError(errno.ESRCH)
        try:
            return int(status_fields(pid)["Tgid"])
        except (OSError, KeyError):
            raise PolicyError(errno.ESRCH) from None

    # --- the calls --------------------------------------------------------------------------

    def get_mempolicy(self, n: abi.Notification) -> Answer:
        policy_p, nmask, maxnode, addr, flags = n.args[:5]
        rec = self.record(n.pid)
        if nmask and maxnode < self.facts.nr_node_ids:
            raise PolicyError(errno.EINVAL, "maxnode below nr_node_ids")
        if flags & ~(mp.MPOL_F_NODE | mp.MPOL_F_ADDR | mp.MPOL_F_MEMS_ALLOWED):
            raise PolicyError(errno.EINVAL, "unknown flags")
        if flags & mp.MPOL_F_MEMS_ALLOWED:
            if flags & (mp.MPOL_F_NODE | mp.MPOL_F_ADDR):
                raise PolicyError(errno.EINVAL, "mems-allowed with node or addr")
            mode, nodes = 0, self.facts.memory
        else:
            pol = rec.task.policy
            space = None
            if flags & mp.MPOL_F_ADDR:
                if not self.mapped(rec.tgid, addr, addr + 1):
                    raise abi.MemoryFault(addr)
                space = self.space(rec.tgid)
                pol = space.policy_at(addr)
            elif addr:
                raise PolicyError(errno.EINVAL, "an address without MPOL_F_ADDR")
            if flags & mp.MPOL_F_NODE:
                if space is not None:
                    abi.read_memory(n.pid, addr, 1)     # lookup_node faults the page in
                    mode = space.node_of(addr, rec.task, self.local(rec))
                elif pol is not None and pol.mode == mp.MPOL_INTERLEAVE:
                    mode = rec.task.next_interleave()
                else:
                    raise PolicyError(errno.EINVAL, "MPOL_F_NODE without interleave")
            else:
                mode = 0 if pol is None else pol.mode | (pol.flags & mp.MPOL_MODE_FLAGS)
            nodes = pol.nodemask() if pol is not None else frozenset()
        if policy_p:
            self.write(n.id, n.pid, policy_p, struct.pack("=i", mode))
        if nmask:
            self.write_nodes(n.id, n.pid, nmask, maxnode, nodes)
        return Answer()

    def local(self, rec: TaskRecord) -> int:
        """The node of the model CPU the task last ran on (read now: it moves)."""
        with contextlib.suppress(OSError):
            rec.stat = task_stat(rec.tid)
        return self.facts.local_node(self.model_cpu(rec.stat.cpu, self.model_cpus(rec)))

    def set_mempolicy(self, n: abi.Notification) -> Answer:
        mode_arg, nmask, maxnode = n.args[:3]
        rec = self.record(n.pid)
        mode, flags = mp.split_mode(mode_arg & 0xFFFFFFFF)
        nodes = self.read_nodes(n.pid, nmask, maxnode)
        rec.task.policy = mp.new_policy(mode, flags, nodes, self.facts)
        rec.task.il_prev = None
        return Answer()

    def mbind(self, n: abi.Notification) -> Answer:
        start, length, mode_arg, nmask, maxnode, flags = n.args
        rec = self.record(n.pid)
        mode, mflags = mp.split_mode(mode_arg & 0xFFFFFFFF)
        nodes = self.read_nodes(n.pid, nmask, maxnode)
        if flags & ~mp.MPOL_MF_VALID:
            raise PolicyError(errno.EINVAL, "unknown flags")
        if flags & mp.MPOL_MF_MOVE_ALL and not self.capable_nice(n.pid):
            raise PolicyError(errno.EPERM)
        if start & ~mp.PAGE_MASK:
            raise PolicyError(errno.EINVAL, "start not page aligned")
        end = start + ((length + mp.PAGE_SIZE - 1) & mp.PAGE_MASK)
        if end < start or end >= 1 << 64:
            raise PolicyError(errno.EINVAL, "range wraps")
        if end == start:
            return Answer()
        pol = mp.new_policy(mode, mflags, nodes, self.facts)
        if not self.mapped(rec.tgid, start, end):
            raise abi.MemoryFault(start)
        space = self.space(rec.tgid)
        space.set_range(start, end, pol)
        misplaced = [p for p in space.pages if start <= p < end and pol is not None
                     and pol.mode in mp.MODES_WITH_NODES and space.pages[p] not in pol.nodes]
        if flags & (mp.MPOL_MF_MOVE | mp.MPOL_MF_MOVE_ALL):
            for page in misplaced:
                space.forget(page)
                space.node_of(page, rec.task, self.local(rec))
        elif flags & mp.MPOL_MF_STRICT and misplaced and mode != mp.MPOL_DEFAULT:
            raise PolicyError(errno.EIO, "pages on other nodes")
        return Answer()

    def set_mempolicy_home_node(self, n: abi.Notification) -> Answer:
        start, length, home, flags = n.args[:4]
        rec = self.record(n.pid)
        if start & ~mp.PAGE_MASK or flags:
            raise PolicyError(errno.EINVAL)
        if home >= mp.MAX_NUMNODES or home not in self.facts.online:
            raise PolicyError(errno.EINVAL, "home node not online")
        end = start + ((length + mp.PAGE_SIZE - 1) & mp.PAGE_MASK)
        if end < start or end >= 1 << 64:
            raise PolicyError(errno.EINVAL)
        self.space(rec.tgid).set_home_node(start, end, home)
        return Answer()

    def move_pages(self, n: abi.Notification) -> Answer:
        pid, count, pages_p, nodes_p, status_p, flags = n.args
        rec = self.record(n.pid)
        if flags & ~(mp.MPOL_MF_MOVE | mp.MPOL_MF_MOVE_ALL):
            raise PolicyError(errno.EINVAL, "unknown flags")
        if flags & mp.MPOL_MF_MOVE_ALL and not self.capable_nice(n.pid):
            raise PolicyError(errno.EPERM)
        tgid = self.target_tgid(rec, pid & 0xFFFFFFFF)
        space = self.space(tgid)
        owner = self.tasks.get(tgid) or rec
        for first in range(0, count, PAGES_CHUNK):
            k = min(PAGES_CHUNK, count - first)
            pages = list(struct.unpack(f"={k}Q",
                                       abi.read_memory(n.pid, pages_p + 8 * first, 8 * k)))
            targets = None
            if nodes_p:
                targets = list(struct.unpack(f"={k}i", abi.read_memory(
                    n.pid, nodes_p + 4 * first, 4 * k)))
                for node in targets:
                    if node < 0 or node >= mp.MAX_NUMNODES or node not in self.facts.memory:
                        raise PolicyError(errno.ENODEV, "no memory on that node")
            present = abi.real_move_pages(tgid, pages)
            out = []
            for i, page in enumerate(pages):
                if present[i] < 0:
                    out.append(present[i])
                elif targets is not None:
                    space.pages[page & mp.PAGE_MASK] = targets[i]
                    out.append(targets[i])
                else:
                    out.append(space.node_of(page, owner.task, self.local(owner)))
            self.write(n.id, n.pid, status_p + 4 * first, struct.pack(f"={k}i", *out))
        return Answer()

    def migrate_pages(self, n: abi.Notification) -> Answer:
        pid, maxnode, old_p, new_p = n.args[:4]
        rec = self.record(n.pid)
        old = self.read_nodes(n.pid, old_p, maxnode)
        new = self.read_nodes(n.pid, new_p, maxnode)
        tgid = self.target_tgid(rec, pid & 0xFFFFFFFF)
        if not new <= self.facts.memory and not self.capable_nice(n.pid):
            raise PolicyError(errno.EPERM)
        new &= self.facts.memory
        if new:
            self.space(tgid).migrate(old, new)
        return Answer()

    @staticmethod
    def read_path(pid: int, addr: int) -> bytes | None:
        """The first STATUS_PATH_MAX bytes of a path (two reads if it crosses a page), or
        None if it is longer or unreadable (the kernel then says what it is)."""
        raw = b""
        while len(raw) < STATUS_PATH_MAX:
            at = addr + len(raw)
            size = min(STATUS_PATH_MAX - len(raw), mp.PAGE_SIZE - at % mp.PAGE_SIZE)
            try:
                raw += abi.read_memory(pid, at, size)
            except abi.MemoryFault:
                return None
            if b"\0" in raw:
                return raw.split(b"\0", 1)[0]
        return None

    def model_cpus(self, rec: TaskRecord | None) -> list[int]:
        """The model CPUs a task may run on."""
        cpus = set(self.facts.cpu_node)
        return sorted(cpus & rec.cpus if rec is not None and rec.cpus is not None else cpus)

    def model_cpu(self, host_cpu: int, cpus: list[int]) -> int:
        """The model CPU a task on host_cpu is on: of those it may use, the first that folds
        onto host_cpu (as sched_setaffinity folds them), else the first."""
        host = sorted(self.host_cpus)
        folded = [c for c in cpus if host[c % len(host)] == host_cpu]
        return (folded or cpus or [host_cpu])[0]

    def cpumask_bytes(self) -> int:
        """cpumask_size(): the model's nr_cpu_ids in longs."""
        return -(-(max(self.facts.cpu_node, default=0) + 1) // LONG_BITS) * 8

    def sched_setaffinity(self, n: abi.Notification) -> Answer:
        """The model's CPUs are kept as the task's; the task runs on the host CPUs they fold
        onto (CPU c on host CPU c mod the host's count)."""
        pid, length, mask_p = n.args[:3]
        caller = self.record(n.pid)
        size = min(length, self.cpumask_bytes())
        value = int.from_bytes(abi.read_memory(n.pid, mask_p, size), "little")
        tid = pid & 0xFFFFFFFF or n.pid
        try:
            rec = caller if tid == n.pid else self.record(tid)
        except OSError:
            raise PolicyError(errno.ESRCH) from None
        wanted = frozenset(c for c in self.facts.cpu_node if value >> c & 1)
        if not wanted:
            raise PolicyError(errno.EINVAL, "no model CPU in the mask")
        host = sorted(self.host_cpus)
        os.sched_setaffinity(tid, {host[c % len(host)] for c in wanted})
        rec.cpus = wanted
        return Answer()

    def sched_getaffinity(self, n: abi.Notification) -> Answer:
        pid, length, mask_p = n.args[:3]
        size = self.cpumask_bytes()
        if length * 8 < max(self.facts.cpu_node, default=0) + 1 or length & 7:
            raise PolicyError(errno.EINVAL, "mask shorter than nr_cpu_ids")
        tid = pid & 0xFFFFFFFF or n.pid
        try:
            rec = self.record(tid)
        except OSError:
            raise PolicyError(errno.ESRCH) from None
        value = sum(1 << c for c in self.model_cpus(rec))
        size = min(length, size)
        self.write(n.id, n.pid, mask_p, value.to_bytes(size, "little"))
        return Answer(size)

    def open_status(self, n: abi.Notification) -> Answer:
        """open/openat of a status or stat file for reading: a memfd with the model's lines."""
        # Only absolute paths are ours, so openat's directory does not matter.
        path_p, flags = n.args[1:3] if n.nr == abi.NR_OPENAT else n.args[0:2]
        if flags & O_ACCMODE or not path_p:
            raise Continue
        path = self.read_path(n.pid, path_p)
        if path is None or not path.startswith(b"/proc/"):
            raise Continue
        rec = self.record(n.pid)
        found = status.status_target(path, rec.tgid, n.pid)
        if found is None:
            raise Continue
        target, name = found
        try:
            real = Path(f"/proc/{target}/{name}").read_text()
            known = self.tasks.get(target) or self.record(target)
        except OSError:
            raise Continue from None     # the kernel's ENOENT
        cpus = self.model_cpus(known)
        if name == "stat":
            text = status.model_stat(real, self.model_cpu(task_stat(target).cpu, cpus))
        else:
            text = status.model_status(real, cpus=cpus,
                                       nr_cpu_ids=max(self.facts.cpu_node, default=0) + 1,
                                       mems=sorted(self.facts.memory))
        fd = os.memfd_create("status", os.MFD_CLOEXEC)
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        return Answer(fd=fd, fd_flags=flags & O_CLOEXEC)

    def anonymous_pages(self, tgid: int) -> list[tuple[int, int, int]]:
        """(start, end, resident anonymous pages) of each of tgid's mappings."""
        out = []
        start = end = 0
        for line in Path(f"/proc/{tgid}/smaps").read_text().splitlines():
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, _, hi = head.partition("-")
                start, end = int(lo, 16), int(hi, 16)
            elif head == "Anonymous:":
                kb = int(line.split()[1])
                if kb:
                    out.append((start, end, kb * 1024 // mp.PAGE_SIZE))
        return out

    def exit_group(self, n: abi.Notification) -> Answer:
        """A process that set a policy or moved pages: its anonymous pages are allocated in
        the model, each mapping's on the nodes its policy (or a move) gives them, and freed
        again as the exit frees them, so the model's allocation counters move by what the
        program touched. Then the exit goes on."""
        rec = self.record(n.pid)
        space = self.space(rec.tgid)
        if not self.charged or (rec.task.policy is None and not space.ranges
                                and not space.pages):
            raise Continue      # no policy of its own: the model has no say where it went
        local = self.local(rec)
        lines: list[str] = []
        for start, end, count in self.anonymous_pages(rec.tgid):
            moved = [node for page, node in space.pages.items() if start <= page < end]
            pol = space.policy_at(start) or rec.task.policy
            counts = mp.spread(pol, max(count - len(moved), 0), local)
            for node in moved:
                counts[node] = counts.get(node, 0) + 1
            suffix = " interleave" if mp.interleaved(pol) else ""
            lines += [f"{rec.tgid} {node} {c}{suffix}" for node, c in counts.items()]
        control = self.mnt / "sys/kernel/debug/process_view"
        try:
            for line in lines:
                (control / "alloc").write_text(line)
            (control / "free").write_text(str(rec.tgid))
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
                self.charged = False    # this mount or user cannot: never again
            with contextlib.suppress(OSError):
                (control / "free").write_text(str(rec.tgid))
        raise Continue

    def handlers(self) -> Handlers:
        return {abi.NR_GET_MEMPOLICY: self.get_mempolicy,
                abi.NR_SET_MEMPOLICY: self.set_mempolicy,
                abi.NR_MBIND: self.mbind,
                abi.NR_MOVE_PAGES: self.move_pages,
                abi.NR_MIGRATE_PAGES: self.migrate_pages,
                abi.NR_SET_MEMPOLICY_HOME_NODE: self.set_mempolicy_home_node,
                abi.NR_SCHED_SETAFFINITY: self.sched_setaffinity,
                abi.NR_SCHED_GETAFFINITY: self.sched_getaffinity,
                abi.NR_EXIT_GROUP: self.exit_group,
                abi.NR_OPEN: self.open_status,
                abi.NR_OPENAT: self.open_status}
