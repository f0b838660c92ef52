"""MNT/sys/kernel/debug/dnumafs/workload: the workload's control file (0600, root-only), a small
command grammar in one file, as the kernel's dynamic_debug/control.

A write holds commands separated by newlines or `;`, words by white space (isspace()), `#`
starting a comment to the end of its line, a NUL ending them:

  task NAME cpu N [policy local|bind|preferred|interleave] [nodes LIST] [rate R] [pages P]
       [mix KIND=W[,KIND=W...]] [order O]
  stop NAME | stop all
  clock realtime | clock manual
  advance SECONDS
  pause | resume
  seed N

Every command of a write is parsed and checked first (a `stop` against the tasks as the
commands before it leave them); any error fails the whole write with EINVAL (ENOENT for `stop`
of an unknown task, E2BIG for advances that ask for more allocations than MAX_ADVANCE_WORK)
and changes nothing. The read gives the clock's line, then each task as a
`task` command that can be written back, with its counts in a comment.
"""
from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable
from typing import TypeVar

import attrs

from dnumafs.lib.bitmap import bitmap_list, bitmap_parselist
from dnumafs.mm import Machine
from dnumafs.mm.workload import (
    KINDS,
    MAX_ADVANCE_NS,
    MAX_SEED,
    NS,
    TaskSpec,
    Workload,
    WorkloadError,
    check_advance,
    check_spec,
    start_clock,
)
from dnumafs.vfs.tree import DEBUGFS, NO_LOCK, PAGE_SIZE, RW, STATIC, FileSet, Node

# dynamic_debug/control takes a write of up to a page less its NUL (USER_BUF_PAGE - 1), E2BIG
# past it (ddebug_proc_write()), and its queries as a C string (a NUL ends them); the file
# takes the machine lock itself, a chunk at a time, so that an `advance` never holds readers
# off.
CONTROL_FS = attrs.evolve(DEBUGFS, max_write=PAGE_SIZE - 1, too_long_errno=errno.E2BIG)

NUMBER = re.compile(r"[0-9]+")
NODELIST = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")
SECONDS = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))?")
MIX_ITEM = re.compile(r"([a-z_]+)=([0-9]+)")
# Words are separated as the kernel's ddebug_tokenize() does, by isspace() characters.
SPACE = re.compile(r"[ \t\v\f\r]+")
TASK_OPTIONS = ("cpu", "policy", "nodes", "rate", "pages", "mix", "order")

Command = tuple[str, object]
T = TypeVar("T")

log = logging.getLogger(__name__)


def _invalid(why: str) -> OSError:
    return OSError(errno.EINVAL, why)


def _checked(check: Callable[..., T], *args: object) -> T:
    """check(*args), its WorkloadError as the write's errno."""
    try:
        return check(*args)
    except WorkloadError as e:
        raise OSError(e.errno, str(e)) from None


def _number(word: str, what: str, limit: int = MAX_SEED) -> int:
    if not NUMBER.fullmatch(word) or int(word) > limit:
        raise _invalid(f"{what} {word!r} is not a number in 0..{limit}")
    return int(word)


def _nodes(m: Machine, word: str) -> frozenset[int]:
    """A node list, each node a possible one, checked before it is expanded."""
    if not NODELIST.fullmatch(word):
        raise _invalid(f"nodes {word!r} is not a node list such as 0-2,4")
    try:
        nodes = frozenset(bitmap_parselist(word, max(m.possible_node_ids) + 1))
    except ValueError as e:
        raise _invalid(f"nodes {word!r}: {e}") from None
    return nodes


def _mix(word: str) -> tuple[tuple[str, int], ...]:
    items = []
    for part in word.split(","):
        match = MIX_ITEM.fullmatch(part)
        if not match or match[1] not in KINDS:
            raise _invalid(f"mix {part!r} is not KIND=WEIGHT, KIND one of {', '.join(KINDS)}")
        items.append((match[1], _number(match[2], "weight", 1_000_000)))
    return tuple(items)


def _seconds(word: str) -> int:
    """SECONDS as nanoseconds, exactly (a decimal with up to 9 places)."""
    match = SECONDS.fullmatch(word)
    if not match:
        raise _invalid(f"advance {word!r} is not a decimal number of seconds")
    ns = int(match[1]) * NS + int((match[2] or "").ljust(9, "0"))
    if not 0 < ns <= MAX_ADVANCE_NS:
        raise _invalid(f"advance {word}: more than 0, at most {MAX_ADVANCE_NS // NS} s")
    return ns


def parse_task(m: Machine, words: list[str]) -> TaskSpec:
    """`task NAME cpu N ...` (words after `task`) as a checked TaskSpec."""
    if not words:
        raise _invalid("task needs a name")
    name, opts = words[0], words[1:]
    if len(opts) % 2:
        raise _invalid(f"task {name}: {opts[-1]!r} has no value")
    given: dict[str, object] = {}
    for key, value in zip(opts[::2], opts[1::2]):
        if key not in TASK_OPTIONS:
            raise _invalid(f"task {name}: unknown option {key!r}")
        if key in given:
            raise _invalid(f"task {name}: {key} given twice")
        if key == "policy":
            given[key] = value
        elif key == "nodes":
            given[key] = _nodes(m, value)
        elif key == "mix":
            given[key] = _mix(value)
        else:
            given[key] = _number(value, key)
    if "cpu" not in given:
        raise _invalid(f"task {name}: cpu is required")
    try:
        spec = TaskSpec(name, **given)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise _invalid(f"task {name}: {e}") from None
    _checked(check_spec, m, spec)
    return spec


def parse(m: Machine, w: Workload, text: str) -> list[Command]:
    """Every command of a write, checked in order against the tasks the ones before leave
    (caller holds the workload's mutex)."""
    commands: list[Command] = []
    rates = {name: t.spec.rate for name, t in w.tasks.items()}
    work = 0    # the allocations the write's advances ask for, bounded together
    for line in text.split("\n"):
        for piece in line.split("#", 1)[0].split(";"):
            words = [word for word in SPACE.split(piece) if word]
            if not words:
                continue
            verb, args = words[0], words[1:]
            if verb == "task":
                spec = parse_task(m, args)
                rates[spec.name] = spec.rate
                commands.append((verb, spec))
                continue
            if verb in ("pause", "resume"):
                if args:
                    raise _invalid(f"{verb} takes no argument")
                commands.append((verb, None))
                continue
            if len(args) != 1:
                raise _invalid(f"{verb!r}: unknown command, or not one argument")
            arg = args[0]
            if verb == "stop":
                if arg == "all":
                    rates.clear()
                    commands.append((verb, None))
                    continue
                if arg not in rates:
                    raise OSError(errno.ENOENT, f"stop {arg}: no such task")
                del rates[arg]
                commands.append((verb, arg))
            elif verb == "clock":
                if arg not in ("realtime", "manual"):
                    raise _invalid(f"clock {arg!r}: realtime or manual")
                commands.append((verb, arg == "realtime"))
            elif verb == "advance":
                ns = _seconds(arg)
                work = _checked(check_advance, rates.values(), ns, work)
                commands.append((verb, ns))
            elif verb == "seed":
                commands.append((verb, _number(arg, "seed")))
            else:
                raise _invalid(f"{verb!r}: unknown command")
    return commands


def apply(w: Workload, commands: list[Command]) -> None:
    for verb, arg in commands:
        if verb == "task":
            assert isinstance(arg, TaskSpec)
            w.set_task(arg)
        elif verb == "stop":
            w.stop(arg if isinstance(arg, str) else None)
        elif verb == "clock":
            w.set_clock(bool(arg))
        elif verb in ("pause", "resume"):
            w.set_paused(verb == "pause")
        elif verb == "advance":
            assert isinstance(arg, int)
            w.advance(arg)
        elif verb == "seed":
            assert isinstance(arg, int)
            w.reseed(arg)


def workload_store(m: Machine, buf: bytes) -> None:
    try:
        text = buf.decode("ascii")
    except UnicodeDecodeError:
        raise _invalid("commands are ASCII") from None
    w = m.workload
    with w.mutex:
        try:
            commands = parse(m, w, text)
        except OSError as e:    # the errno is all the writer sees: the log says why
            log.info("workload: write refused (%s): %s", errno.errorcode.get(e.errno or 0),
                     e.strerror)
            raise
        _checked(apply, w, commands)
        if w.realtime:
            start_clock(w)      # the daemon's thread that runs model time with wall time


def format_seconds(ns: int) -> str:
    return f"{ns // NS}.{ns % NS:09d}"


def task_line(spec: TaskSpec) -> str:
    """The task as the command that makes it, every field given."""
    nodes = f" nodes {bitmap_list(spec.nodes)}" if spec.nodes else ""
    mix = ",".join(f"{k}={w}" for k, w in spec.mix)
    return (f"task {spec.name} cpu {spec.cpu} policy {spec.policy}{nodes} rate {spec.rate} "
            f"pages {spec.pages} mix {mix} order {spec.order}")


def workload_show(m: Machine) -> str:
    w = m.workload
    with m.lock:
        state = "paused" if w.paused else "running"
        head = (f"# clock {'realtime' if w.realtime else 'manual'} {state} "
                f"time {format_seconds(w.now_ns)} seed {w.seed}")
        if w.realtime and not w.paused:
            head += f" behind {w.behind_ns / NS:.3f}"
        lines = [head]
        for name in sorted(w.tasks):
            t = w.tasks[name]
            lines.append(f"{task_line(t.spec)} # held {t.held_pages} allocated {t.allocated} "
                         f"freed {t.freed} failed {t.failed}")
    return "".join(f"{line}\n" for line in lines)


# Its text moves with the clock, at every tick: made when a reader asks (volatile), never again
# at each tick just because a reader once asked (STATIC), which would drop its page while a
# write holds it locked.
WORKLOAD_ATTRS = {"workload": RW(workload_show, workload_store, depends=STATIC, volatile=True)}


def workload_files(m: Machine) -> dict[str, Node]:
    """The control file, bound to m, taking its own locks."""
    return FileSet(CONTROL_FS, NO_LOCK).attrs(WORKLOAD_ATTRS, m)
