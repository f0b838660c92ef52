"""MNT/proc/cpuinfo, MNT/proc/stat, MNT/proc/interrupts and MNT/proc/softirqs for the model's
CPUs.

The model runs no task and has no device: its CPUs have been idle since the mount, so their
idle time grows with the clock and every other counter reads 0. Formats are Linux's
(arch/x86/kernel/cpu/proc.c, fs/proc/stat.c, kernel/irq/proc.c, fs/proc/softirqs.c).

cpuinfo gives each CPU its place in the model's topology (cpu.py) and its cache (cache.py); the
CPU's identity and features (vendor, model, flags, bugs...) are those of the host, whose CPUs
run every process: the model has no opinion on the instruction set, and a program that reads
the flags to choose its code must find the host's.
"""
from __future__ import annotations

import time
from pathlib import Path

import attrs

from dnumafs.mm import Machine
from dnumafs.vfs.tree import PROCFS, RO, Dir, FileSet, StaticDir

from .cache import cpu_place, last_level_kb

USER_HZ = 100                  # the unit of /proc/stat's times (clock_t)
CPU_TIME_FIELDS = 10           # user nice system idle iowait irq softirq steal guest guest_nice
IDLE_FIELD = 3
SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
                 "HRTIMER", "RCU")                   # softirq_to_name[], NR_SOFTIRQS of them

# x86's /proc/cpuinfo keys in show_cpuinfo()'s order. The topology keys and `cache size` are
# the model's; the rest are copied from the host where it prints them.
CPUINFO_KEYS = (
    "processor", "vendor_id", "cpu family", "model", "model name", "stepping", "microcode",
    "cpu MHz", "cache size", "physical id", "siblings", "core id", "cpu cores", "apicid",
    "initial apicid", "fpu", "fpu_exception", "cpuid level", "wp", "flags", "vmx flags",
    "bugs", "bogomips", "TLB size", "clflush size", "cache_alignment", "address sizes",
    "power management",
)
HOST_CPUINFO = Path("/proc/cpuinfo")


@attrs.frozen
class Clock:
    """When the model's CPUs started idling: the mount."""

    started: float = attrs.field(factory=time.monotonic)
    started_wall: float = attrs.field(factory=time.time)

    def ticks(self) -> int:
        """clock_t ticks since the mount."""
        return int((time.monotonic() - self.started) * USER_HZ)


def online_cpus(m: Machine) -> range:
    """The model's CPUs never go offline (cpu.py's online list)."""
    return range(m.nr_cpus)


# --- /proc/cpuinfo -----------------------------------------------------------------------

def host_cpu_identity(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of a cpuinfo text."""
    identity = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            identity[key.rstrip("\t ")] = value.strip()
    return identity


def cpuinfo_line(key: str, value: object) -> str:
    """`key<tabs>: value`, the tabs reaching column 16 as proc.c's literal formats do."""
    tabs = "\t" * max(0, 2 - len(key) // 8)
    return f"{key}{tabs}: {value}".rstrip(" ")


def cpu_topology_info(m: Machine, cpu: int) -> dict[str, object]:
    """The cpuinfo keys the model decides, from the CPU's topology/ files."""
    place = cpu_place(m, cpu)
    return {
        "processor": cpu,
        "cache size": f"{last_level_kb(place)} KB",
        "physical id": place.package,
        "siblings": len(place.package_cpus),
        "core id": place.core,
        "cpu cores": place.cores_in_package,
        "apicid": cpu,
        "initial apicid": cpu,
    }


def cpuinfo_show(m: Machine, host: dict[str, str]) -> str:
    blocks = []
    for cpu in online_cpus(m):
        values = {**host, **cpu_topology_info(m, cpu)}
        blocks.append("".join(cpuinfo_line(k, values[k]) + "\n"
                              for k in CPUINFO_KEYS if k in values))
    return "\n".join(blocks) + "\n"


# --- /proc/stat ----------------------------------------------------------------------------

def cpu_times(ticks: int) -> list[int]:
    times = [0] * CPU_TIME_FIELDS
    times[IDLE_FIELD] = ticks
    return times


def stat_show(m: Machine, clock: Clock) -> str:
    """Idle time only; no interrupt, context switch or process since the mount."""
    ticks = clock.ticks()
    cpus = online_cpus(m)
    lines = ["cpu  " + " ".join(map(str, cpu_times(ticks * len(cpus))))]
    lines += [f"cpu{cpu} " + " ".join(map(str, cpu_times(ticks))) for cpu in cpus]
    lines += [
        "intr 0",
        "ctxt 0",
        f"btime {int(clock.started_wall)}",
        "processes 0",
        "procs_running 0",
        "procs_blocked 0",
        "softirq 0" + " 0" * len(SOFTIRQ_NAMES),
    ]
    return "\n".join(lines) + "\n"


# --- /proc/interrupts ----------------------------------------------------------------------

def interrupts_show(m: Machine) -> str:
    """The header of one column per online CPU, and no interrupt line: no device, and none of
    an architecture's own interrupts, is modelled."""
    return " " * 11 + "".join(f"CPU{cpu:<8d}" for cpu in online_cpus(m)) + "\n"


def softirqs_show(m: Machine) -> str:
    """A column per possible CPU (every modelled CPU), a line per softirq, all 0."""
    cpus = online_cpus(m)
    header = " " * 20 + "".join(f"CPU{cpu:<8d}" for cpu in cpus) + "\n"
    return header + "".join(f"{name:>12s}:" + f" {0:10d}" * len(cpus) + "\n"
                            for name in SOFTIRQ_NAMES)


def proc_cpu_dir(m: Machine) -> Dir:
    """proc/cpuinfo, stat, interrupts and softirqs; the clock starts now, at the mount."""
    clock = Clock()
    host = host_cpu_identity(HOST_CPUINFO.read_text())
    files = FileSet(PROCFS, m.lock)
    return StaticDir({
        "cpuinfo": files.attr(RO(cpuinfo_show), m, host),
        "stat": files.attr(RO(stat_show, volatile=True), m, clock),
        "interrupts": files.attr(RO(interrupts_show), m),
        "softirqs": files.attr(RO(softirqs_show), m),
    })
