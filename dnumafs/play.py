"""`dnumafs play MNT SCENARIO.toml`: a scenario of timed steps, played through the mounted
files only, as a hypervisor's agent on a dnuma kernel would drive them.

A scenario is a TOML file:

    title = "a VM migrated to a new node"     # optional
    seed = 1                                  # optional: the workload's seed (--seed wins)
    [machine]
    mount = ["--nodes", "2", "--mem", "512M"] # the `dnumafs mount` options it is written for
    [[step]]
    at = 0.0                                  # model seconds, never less than the step before
    do = "all-to"                             # the action (STEPS below), then its keys
    node = 2

The whole file is checked before the first step (syntax, actions, keys, types, times), so a
typo at step 9 never leaves a machine half-driven. A step the files refuse stops the play
with the file's errno; the steps before it stay done, and a step of several writes undoes
what it wrote (a layout staged but not committed is cleared), so the machine is as the last
good step left it.

Time: each step happens at its model time `at`. The workload's clock is driven by the player
(`clock manual`, `seed N`, and before each step `advance` by the model time since the step
before), so a run is the same whatever the wall clock; between steps the player sleeps
`at / speed` of wall time (speed 0 or inf: no sleeping; else at least SPEED_MIN), only so
that a person can watch. At the end the workload's clock is put back in the mode it was found
in, also when the play stops at an error, SIGINT, SIGTERM or SIGHUP. Its seed stays the
play's: the files cannot put the generator back in the state it was found in (`seed N`
restarts N's draws), and the seed shown is the one that drew the play's pages. A daemon
without the workload file plays every scenario without workload steps.

The trace (--trace FILE) is JSON lines, keys sorted, no wall-clock values: step 0 (`start`)
before the first step, then one line after each step with the figures of every online node
(MemTotal, MemFree, MemUsed, marked pages, CPUs) and the pages moved so far.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import re
import signal
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TextIO

import attrs

from dnumafs.client import (
    NODE_DIR,
    WORKLOAD,
    ClientError,
    MountedTree,
    WorkloadClock,
    all_to,
    commit_layout,
    stripe,
    workload_clock,
    workload_rates,
)
from dnumafs.lib.bitmap import bitmap_list, bitmap_parselist

NUMA_TOPOLOGY_DIR = "sys/kernel/debug/numa_topology"
CPU_DIR = "sys/devices/system/cpu"
MEMORY_DIR = "sys/devices/system/memory"
DROP_CACHES = "proc/sys/vm/drop_caches"
# The longest `advance` the workload takes (an hour): a longer wait between two steps is
# several; and its resolution, nanoseconds, which is the finest `at` a step may have.
ADVANCE_MAX = Decimal(3600)
AT_PLACES = 9
# A scenario's model time is at most a day: 24 advances, whose allocations the workload runs
# as it is written, so that a play with --speed 0 ends in minutes.
AT_MAX = 86400
# The slowest --speed but 0: a model second per 1000 wall seconds (a day's scenario then
# takes some three years, but sleeps stay finite numbers time.sleep takes).
SPEED_MIN = 0.001
SLEEP_MAX = 60.0        # seconds: a long wait is slept in pieces
DEFAULT_HUGEPAGE_KB = 2048
HUGEPAGES_DIR = "sys/kernel/mm/hugepages"
_HUGEPAGES_DIR = re.compile(r"hugepages-(\d+)kB")


@attrs.define(auto_exc=True)
class ScenarioError(Exception):
    """Why a scenario cannot be played, where: `SCENARIO:LINE: step N (do): message (ERRNO)`;
    line 0 for the file as a whole, step 0 for no step."""

    path: str
    line: int
    message: str
    step: int = 0
    do: str = ""
    errno: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        if self.step:
            where += f": step {self.step} ({self.do})"
        name = f" ({errno.errorcode.get(self.errno, self.errno)})" if self.errno else ""
        return f"{where}: {self.message}{name}"


@attrs.define(auto_exc=True)
class Signalled(BaseException):
    """SIGTERM or SIGHUP stopped the play: it unwinds as SIGINT's KeyboardInterrupt does, so
    that the workload's clock is put back."""

    signum: int


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Signalled once; a second one while unwinding is ignored, so
    that the clock's restoring is not itself cut short."""
    def stop(signum: int, frame: object) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Signalled(signum)
    old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# --- the values a step's keys take: each check returns what is wrong, or None -----------------

Check = Callable[[Any], "str | None"]


def toml_value(v: object) -> str:
    """A value as TOML writes it, for messages: true, "0", 1970-01-01, [1, "a"]."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)    # a TOML basic string's escapes
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, datetime.date | datetime.time):   # datetime is a date
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(low: int = 0) -> Check:
    def check(v: object) -> str | None:
        if not _is_int(v):
            return "must be an integer"
        assert isinstance(v, int)
        return None if v >= low else f"must be at least {low}"
    return check


def one_of(*words: str) -> Check:
    def check(v: object) -> str | None:
        return None if v in words else "must be one of " + ", ".join(f'"{w}"' for w in words)
    return check


def integers(v: object) -> str | None:
    if not isinstance(v, list) or not v or not all(_is_int(x) and x >= 0 for x in v):
        return "must be a non-empty list of integers, none negative"
    return None


def ranges(v: object) -> str | None:
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of [start, end, node]"
    for r in v:
        if integers(r) or len(r) != 3:
            return f"{toml_value(r)} is not [start, end, node] (integers, none negative)"
        if r[0] > r[1]:
            return f"{toml_value(r)}: start is above end"
    return None


def advance_piece(rate: int) -> Decimal:
    """The longest `advance` one write may ask of tasks making rate allocations a second in
    all (the workload refuses more work than MAX_ADVANCE_WORK at a time, E2BIG): whole ticks
    where it can, at most ADVANCE_MAX."""
    from dnumafs.mm.workload import MAX_ADVANCE_WORK, NS, TICK_NS
    if rate == 0:
        return ADVANCE_MAX
    ns = MAX_ADVANCE_WORK * NS // rate
    ns = max(ns - ns % TICK_NS, min(ns, TICK_NS), 1)
    return min(ADVANCE_MAX, Decimal(ns) / NS)


def seed_max() -> int:
    from dnumafs.mm.workload import MAX_SEED  # the model's, loaded only when it is needed
    return MAX_SEED


def commands(v: object) -> str | None:
    if isinstance(v, str):
        if not v.strip():
            return "must not be empty"
    elif not (isinstance(v, list) and v and all(isinstance(c, str) and c.strip() for c in v)):
        return "must be a string or a non-empty list of strings, none empty"
    from dnumafs.files.workload import CONTROL_FS  # the control file's longest write
    size = len(workload_text({"commands": v}).encode())
    if size > CONTROL_FS.max_write:
        return (f"{size} bytes written at once: more than the control file takes in one "
                f"write ({CONTROL_FS.max_write})")
    return None


# --- the actions -------------------------------------------------------------------------------

Args = Mapping[str, Any]


def do_ranges(tree: MountedTree, a: Args) -> None:
    commit_layout(tree, [(s, e, nid) for s, e, nid in a["ranges"]])


def do_stripe(tree: MountedTree, a: Args) -> None:
    stripe(tree, a["first"], a["last"], a["pfns"])


def do_all_to(tree: MountedTree, a: Args) -> None:
    all_to(tree, a["node"])


def do_move_cpu(tree: MountedTree, a: Args) -> None:
    tree.write(f"{NUMA_TOPOLOGY_DIR}/cpu{a['cpu']}/node", f"{a['node']}\n")


def do_distance(tree: MountedTree, a: Args) -> None:
    tree.write(f"{NUMA_TOPOLOGY_DIR}/node{a['node']}/distance",
               " ".join(map(str, a["row"])) + "\n")


def do_cpu_online(tree: MountedTree, a: Args) -> None:
    tree.write(f"{CPU_DIR}/cpu{a['cpu']}/online", "1\n")


def do_cpu_offline(tree: MountedTree, a: Args) -> None:
    tree.write(f"{CPU_DIR}/cpu{a['cpu']}/online", "0\n")


def do_block(tree: MountedTree, a: Args) -> None:
    tree.write(f"{MEMORY_DIR}/memory{a['block']}/state", f"{a['state']}\n")


def do_probe(tree: MountedTree, a: Args) -> None:
    tree.write(f"{MEMORY_DIR}/probe", f"{a['address']:#x}\n")


def do_hugepages(tree: MountedTree, a: Args) -> None:
    pool = f"hugepages/hugepages-{a.get('size_kb', DEFAULT_HUGEPAGE_KB)}kB/nr_hugepages"
    where = f"{NODE_DIR}/node{a['node']}/{pool}" if "node" in a else f"sys/kernel/mm/{pool}"
    tree.write(where, f"{a['count']}\n")


def do_drop_caches(tree: MountedTree, a: Args) -> None:
    tree.write(DROP_CACHES, f"{a['mode']}\n")


def workload_text(a: Args) -> str:
    cmds = a["commands"]
    return (cmds if isinstance(cmds, str) else "\n".join(cmds)).rstrip("\n") + "\n"


def do_workload(tree: MountedTree, a: Args) -> None:
    # one write: the control file takes all its commands or none
    tree.write(WORKLOAD, workload_text(a))


def do_wait(tree: MountedTree, a: Args) -> None:
    """Nothing: the model time passes (the workload runs) and the figures are recorded."""


@attrs.frozen
class Action:
    run: Callable[[MountedTree, Args], None]
    required: Mapping[str, Check] = attrs.field(factory=dict)
    optional: Mapping[str, Check] = attrs.field(factory=dict)
    # A check over several keys, once each is right by itself.
    whole: Callable[[Args], str | None] | None = None
    uses_workload: bool = False


def _first_last(a: Args) -> str | None:
    return "first is above last" if a["first"] > a["last"] else None


NODE, CPU = integer(0), integer(0)
STEPS: dict[str, Action] = {
    "ranges": Action(do_ranges, {"ranges": ranges}),
    "stripe": Action(do_stripe, {"first": NODE, "last": NODE, "pfns": integer(1)},
                     whole=_first_last),
    "all-to": Action(do_all_to, {"node": NODE}),
    "move-cpu": Action(do_move_cpu, {"cpu": CPU, "node": NODE}),
    "distance": Action(do_distance, {"node": NODE, "row": integers}),
    "cpu-online": Action(do_cpu_online, {"cpu": CPU}),
    "cpu-offline": Action(do_cpu_offline, {"cpu": CPU}),
    "block": Action(do_block, {"block": integer(0), "state": one_of(
        "offline", "online", "online_kernel", "online_movable")}),
    "probe": Action(do_probe, {"address": integer(0)}),
    "hugepages": Action(do_hugepages, {"count": integer(0)},
                        {"node": NODE, "size_kb": integer(4)}),
    "drop-caches": Action(do_drop_caches, {"mode": integer(1)}),
    "workload": Action(do_workload, {"commands": commands}, uses_workload=True),
    "wait": Action(do_wait),
}


# --- the scenario file --------------------------------------------------------------------------

@attrs.frozen
class Step:
    number: int         # 1, 2, ...
    line: int           # of its [[step]] header
    at: Decimal         # model seconds, exact as written
    do: str
    args: Mapping[str, Any]     # its keys but `at` and `do`

    @property
    def action(self) -> Action:
        return STEPS[self.do]

    def error(self, path: str, message: str, err: int | None = None) -> ScenarioError:
        return ScenarioError(path, self.line, message, self.number, self.do, err)


@attrs.frozen
class Scenario:
    path: str
    title: str
    seed: int | None
    mount: tuple[str, ...]      # [machine] mount: the `dnumafs mount` options it is for
    steps: tuple[Step, ...]

    def workload_step(self) -> Step | None:
        return next((s for s in self.steps if s.action.uses_workload), None)


TOP_KEYS: dict[str, tuple[type, str]] = {
    "title": (str, "a string"), "seed": (int, "an integer"), "machine": (dict, "a table"),
    "step": (list, "an array of tables")}
_STEP_HEADER = re.compile(r"\s*\[\[\s*step\s*\]\]\s*(#.*)?")


def step_header_lines(text: str) -> list[int]:
    """The line numbers of the `[[step]]` headers (tomllib gives none), skipping text inside
    strings and comments."""
    found = []
    in_multi = ""       # the delimiter of the multi-line string the line starts in, if any
    for no, line in enumerate(text.splitlines(), 1):
        if not in_multi and _STEP_HEADER.fullmatch(line):
            found.append(no)
        i = 0
        while i < len(line):
            if in_multi:
                if in_multi == '"""' and line[i] == "\\":
                    i += 2
                    continue
                if line.startswith(in_multi, i):
                    i += 3
                    in_multi = ""
                    continue
                i += 1
            elif line[i] == "#":
                break
            elif line.startswith('"""', i) or line.startswith("'''", i):
                in_multi = line[i:i + 3]
                i += 3
            elif line[i] in "\"'":
                quote, i = line[i], i + 1
                while i < len(line) and line[i] != quote:
                    i += 2 if quote == '"' and line[i] == "\\" else 1
                i += 1
            else:
                i += 1
    return found


def _check_step(path: str, number: int, line: int, table: object, prev_at: Decimal) -> Step:
    def fail(message: str, do: str = "") -> ScenarioError:
        return ScenarioError(path, line, message, number, do or "?")
    if not isinstance(table, dict):
        raise fail("a step must be a table")
    do = table.get("do")
    if do is None:
        raise fail('missing key "do" (the action: ' + ", ".join(STEPS) + ")")
    if not isinstance(do, str) or do not in STEPS:
        raise fail(f"unknown step {toml_value(do)} (one of: {', '.join(STEPS)})",
                   do if isinstance(do, str) else toml_value(do))
    action = STEPS[do]
    if "at" not in table:
        raise fail('missing key "at" (the step\'s model time in seconds)', do)
    at = table["at"]
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) \
            or not 0 <= at <= AT_MAX:
        raise fail(f"at = {toml_value(at)}: must be a number of seconds from 0 to {AT_MAX} (a day: "
                   "a scenario's model time is at most that)", do)
    exact = Decimal(repr(at)) if isinstance(at, float) else Decimal(at)
    if exact != round(exact, AT_PLACES):
        raise fail(f"at = {toml_value(at)}: more than {AT_PLACES} decimal places (the workload's "
                   "clock counts nanoseconds)", do)
    if exact < prev_at:
        raise fail(f"at = {toml_value(at)} is before the step before ({prev_at})", do)
    args = {k: v for k, v in table.items() if k not in ("at", "do")}
    for key in args:
        if key not in action.required and key not in action.optional:
            keys = [*action.required, *action.optional]
            raise fail(f"unknown key {toml_value(key)} (a {do} step takes: "
                       f"{', '.join(keys) or 'no key'})", do)
    for key in action.required:
        if key not in args:
            raise fail(f"missing key {toml_value(key)}", do)
    for key, value in args.items():
        check = action.required.get(key) or action.optional[key]
        problem = check(value)
        if problem:
            raise fail(f"{key} = {toml_value(value)}: {problem}", do)
    if action.whole is not None:
        problem = action.whole(args)
        if problem:
            raise fail(problem, do)
    return Step(number, line, exact, do, args)


def parse(text: str, path: str) -> Scenario:
    """The scenario of a file's text, checked whole; ScenarioError on the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.fullmatch(r"(.*) \(at line (\d+), column \d+\)", str(e))
        if m:
            raise ScenarioError(path, int(m.group(2)), m.group(1)) from None
        raise ScenarioError(path, 0, str(e)) from None
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise ScenarioError(path, 0, f"unknown key {toml_value(key)} (a scenario has: "
                                f"{', '.join(TOP_KEYS)})")
        want, what = TOP_KEYS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ScenarioError(path, 0, f"{key} must be {what}")
    seed = data.get("seed")
    if seed is not None and not 0 <= seed <= seed_max():
        raise ScenarioError(path, 0, f"seed must be from 0 to {seed_max()}")
    machine = data.get("machine", {})
    for key in machine:
        if key != "mount":
            raise ScenarioError(path, 0, f"unknown key machine.{key} (machine has: mount)")
    mount = machine.get("mount", [])
    if not isinstance(mount, list) or not all(isinstance(a, str) for a in mount):
        raise ScenarioError(path, 0, "machine.mount must be a list of strings (the "
                            "`dnumafs mount` options)")
    tables = data.get("step", [])
    lines = step_header_lines(text)
    if len(lines) != len(tables):
        raise ScenarioError(path, 0, "write each step as a [[step]] table")
    if not tables:
        raise ScenarioError(path, 0, "no [[step]]: nothing to play")
    steps: list[Step] = []
    prev = Decimal(0)
    for number, (line, table) in enumerate(zip(lines, tables, strict=True), 1):
        steps.append(_check_step(path, number, line, table, prev))
        prev = steps[-1].at
    return Scenario(path, data.get("title", ""), seed, tuple(mount), tuple(steps))


def load(path: str) -> Scenario:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError(path, 0, e.strerror or str(e), errno=e.errno) from None
    except UnicodeDecodeError as e:
        raise ScenarioError(path, 0, f"not UTF-8 text ({e.reason})") from None
    return parse(text, path)


# --- playing ----------------------------------------------------------------------------------

def node_figures(tree: MountedTree) -> dict[str, Any]:
    """The trace's figures: every online node's memory, marked pages and CPUs, and the pages
    moved so far."""
    marked = tree.marked_pages()
    nodes = {}
    for nid in tree.node_ids():
        info = tree.node_meminfo(nid)
        try:
            kb = {"total_kb": info["MemTotal"], "free_kb": info["MemFree"],
                  "used_kb": info["MemUsed"]}
        except KeyError as e:
            raise ClientError(f"{tree.path(NODE_DIR)}/node{nid}/meminfo: no {e}") from None
        nodes[str(nid)] = {**kb, "marked_pages": marked.get(nid, 0),
                           "cpus": tree.node_cpulist(nid)}
    return {"nodes": nodes, "moved_pages": tree.moved_pages()}


def trace_line(number: int, line: int, at: Decimal, do: str, args: Args,
               figures: Mapping[str, Any]) -> str:
    return json.dumps({"step": number, "line": line, "at": float(at), "do": do,
                       "args": dict(args), **figures}, sort_keys=True) + "\n"


def describe(step: Step) -> str:
    return " ".join([step.do, *(f"{k}={json.dumps(v)}" for k, v in step.args.items())])


@attrs.define
class Player:
    """Plays one scenario on one mount."""

    tree: MountedTree
    scenario: Scenario
    seed: int
    speed: float                # wall seconds per model second is 1/speed; 0 or inf: none
    trace: TextIO | None = None
    out: TextIO | None = None   # a line per step, for a person
    clock: WorkloadClock | None = None  # as found, when the daemon has a workload
    now: Decimal = Decimal(0)

    def play(self) -> None:
        sc = self.scenario
        self.clock = workload_clock(self.tree)
        needs = sc.workload_step()
        if self.clock is None and needs is not None:
            raise needs.error(sc.path, f"{self.tree.path(WORKLOAD)} does not exist (a "
                              "daemon without a workload)", errno.ENOENT)
        self._check_mount()
        try:
            if self.clock is not None:
                self._write_workload(None, f"clock manual\nseed {self.seed}\n")
            self._record(None)
            started = time.monotonic()
            for step in sc.steps:
                self._sleep_until(started, step.at)
                self._advance(step)
                self._say(f"[{float(step.at):9.3f} s] step {step.number}: {describe(step)}")
                try:
                    step.action.run(self.tree, step.args)
                except ClientError as e:
                    raise self._error(step, e) from None
                self._record(step)
        except BaseException:
            self._restore_clock(quiet=True)     # the error that stopped the play is the one
            raise                               # to tell
        self._restore_clock()
        n = len(sc.steps)
        self._say(f"played {n} step{'s' if n != 1 else ''} to model time {sc.steps[-1].at} s")

    def _check_mount(self) -> None:
        """What the scenario names that the mount must have (its possible CPUs, its hugepage
        sizes), checked before the first write."""
        cpus: list[int] | None = None
        sizes: list[int] | None = None
        for step in self.scenario.steps:
            try:
                if "cpu" in step.args:
                    if cpus is None:
                        cpus = bitmap_parselist(self.tree.read(f"{CPU_DIR}/possible"))
                    if step.args["cpu"] not in cpus:
                        raise step.error(self.scenario.path, f"cpu {step.args['cpu']} is not a "
                                         f"possible CPU (possible: {bitmap_list(cpus)})",
                                         errno.ENOENT)
                if step.do == "hugepages":
                    if sizes is None:
                        sizes = sorted(int(m.group(1)) for m in map(
                            _HUGEPAGES_DIR.fullmatch, self.tree.listdir(HUGEPAGES_DIR)) if m)
                    size = step.args.get("size_kb", DEFAULT_HUGEPAGE_KB)
                    if size not in sizes:
                        raise step.error(self.scenario.path, f"no {size} kB hugepages (sizes: "
                                         f"{', '.join(map(str, sizes)) or 'none'})",
                                         errno.ENOENT)
            except ClientError as e:
                raise self._error(step, e) from None

    def _error(self, step: Step | None, e: ClientError, doing: str = "") -> ScenarioError:
        if step is None:
            return ScenarioError(self.scenario.path, 0, doing + e.message, errno=e.errno)
        return step.error(self.scenario.path, doing + e.message, e.errno)

    def _restore_clock(self, quiet: bool = False) -> None:
        """The workload's clock back in the mode it was found in."""
        if self.clock is None:
            return
        try:
            self.tree.write(WORKLOAD, self.clock.restore_commands() + "\n")
        except ClientError as e:
            if not quiet:
                raise self._error(None, e, "restoring the workload's clock: ") from None

    def _say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def _write_workload(self, step: Step | None, text: str) -> None:
        try:
            self.tree.write(WORKLOAD, text)
        except ClientError as e:
            raise self._error(step, e) from None

    def _sleep_until(self, started: float, at: Decimal) -> None:
        if self.speed == 0 or math.isinf(self.speed):
            return
        until = started + float(at) / self.speed
        while (delay := until - time.monotonic()) > 0:
            time.sleep(min(delay, SLEEP_MAX))

    def _advance(self, step: Step) -> None:
        """Run the workload from the step before to this one's model time, in advances each
        within what one write may ask of the tasks at their rates."""
        if self.clock is not None and self.now < step.at:
            try:
                piece = advance_piece(sum(workload_rates(self.tree)))
            except ClientError as e:
                raise self._error(step, e, "reading the workload's tasks: ") from None
            while self.now < step.at:
                dt = min(step.at - self.now, piece)
                self._write_workload(step, f"advance {dt:f}\n")
                self.now += dt
        self.now = step.at

    def _record(self, step: Step | None) -> None:
        """The trace's line after step (None: before the first step)."""
        if self.trace is None:
            return
        try:
            figures = node_figures(self.tree)
        except ClientError as e:
            raise self._error(step, e, "reading the figures: ") from None
        if step is None:
            line = trace_line(0, 0, Decimal(0), "start", {}, figures)
        else:
            line = trace_line(step.number, step.line, step.at, step.do, step.args, figures)
        try:
            self.trace.write(line)
            self.trace.flush()
        except OSError as e:
            when = "before the first step" if step is None else f"after step {step.number}"
            raise ScenarioError(self.trace.name, 0, f"writing the trace {when}: "
                                f"{e.strerror}", errno=e.errno) from None


def play(tree: MountedTree, scenario: Scenario, *, speed: float = 1.0, seed: int | None = None,
         trace_path: str | None = None, out: TextIO | None = None) -> None:
    """Play scenario on tree, telling out of each step; the seed is --seed's, else the
    scenario's, else 0."""
    seed = seed if seed is not None else scenario.seed or 0
    with stopped_by_signals():
        trace = None if trace_path is None else open(trace_path, "w", encoding="utf-8")
        try:
            Player(tree, scenario, seed, speed, trace, out).play()
        except BaseException:
            if trace is not None:   # its close would write again what a full disk refused
                with contextlib.suppress(OSError):
                    trace.close()
            raise
        if trace is not None:
            trace.close()
