"""/proc/<pid>/status and /proc/<pid>/stat as the model shows them: the real files with the
model's Cpus_allowed and Mems_allowed lines (proc_pid_status -> cpuset_task_status_allowed,
task_cpus_allowed), and the model CPU the task runs on (stat's processor field)."""
from __future__ import annotations

import re

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask

# /proc/self/status, /proc/thread-self/status, /proc/<pid>/status,
# /proc/<pid>/task/<tid>/status (and self/task/<tid>), and the same of stat
STATUS_PATH = re.compile(rb"/proc/+(self|thread-self|\d+)(?:/+task/+(\d+))?/+(status|stat)")
PROCESSOR_FIELD = 39
MAX_NUMNODES_BITS = 1024


def status_target(path: bytes, tgid: int, tid: int) -> tuple[int, str] | None:
    """The task path names (self and thread-self as the caller sees them) and the file
    (status or stat), or None if path is neither."""
    m = STATUS_PATH.fullmatch(path)
    if not m:
        return None
    name = m[3].decode()
    if m[2]:
        return int(m[2]), name
    if m[1] == b"self":
        return tgid, name
    if m[1] == b"thread-self":
        return tid, name
    return int(m[1]), name


def model_status(real: str, *, cpus: list[int], nr_cpu_ids: int, mems: list[int]) -> str:
    """real with the allowed lines replaced by the task's model CPUs and memory nodes."""
    shown = cpus
    values = {
        "Cpus_allowed": bitmap_mask(shown, nr_cpu_ids),
        "Cpus_allowed_list": bitmap_list(shown),
        "Mems_allowed": bitmap_mask(mems, MAX_NUMNODES_BITS),
        "Mems_allowed_list": bitmap_list(mems),
    }
    return re.sub(r"^(Cpus_allowed|Cpus_allowed_list|Mems_allowed|Mems_allowed_list):\t.*$",
                  lambda m: f"{m[1]}:\t{values[m[1]]}", real, flags=re.M)


def model_stat(real: str, cpu: int) -> str:
    """real with the processor field (the 39th) set to cpu."""
    head, paren, tail = real.rpartition(")")
    fields = tail.split(" ")
    # fields[0] is the space after ")", fields[1] the 3rd field (state)
    fields[PROCESSOR_FIELD - 2] = str(cpu)
    return head + paren + " ".join(fields)
