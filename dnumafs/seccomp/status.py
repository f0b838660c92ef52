"""/proc/<pid>/status as the model shows it: the real file with the model's Cpus_allowed and
Mems_allowed lines (proc_pid_status -> cpuset_task_status_allowed, task_cpus_allowed)."""
from __future__ import annotations

import re

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask, bitmap_parselist

# /proc/self/status, /proc/thread-self/status, /proc/<pid>/status,
# /proc/<pid>/task/<tid>/status (and self/task/<tid>)
STATUS_PATH = re.compile(rb"/proc/+(self|thread-self|\d+)(?:/+task/+(\d+))?/+status")
MAX_NUMNODES_BITS = 1024


def status_target(path: bytes, tgid: int, tid: int) -> int | None:
    """The task whose status path names (self and thread-self as the caller sees them), or
    None if path is not a status file."""
    m = STATUS_PATH.fullmatch(path)
    if not m:
        return None
    if m[2]:
        return int(m[2])
    if m[1] == b"self":
        return tgid
    if m[1] == b"thread-self":
        return tid
    return int(m[1])


def model_status(real: str, *, cpus: list[int], nr_cpu_ids: int, host_cpus: set[int],
                 mems: list[int]) -> str:
    """real with the allowed lines replaced: the model's memory nodes, and its CPUs unless the
    task was pinned to a subset of the host's (then the model's CPUs among those)."""
    allowed = re.search(r"^Cpus_allowed_list:\s*(\S*)$", real, re.M)
    own = set(bitmap_parselist(allowed[1])) if allowed else host_cpus
    shown = cpus if own >= host_cpus else sorted(own & set(cpus))
    values = {
        "Cpus_allowed": bitmap_mask(shown, nr_cpu_ids),
        "Cpus_allowed_list": bitmap_list(shown),
        "Mems_allowed": bitmap_mask(mems, MAX_NUMNODES_BITS),
        "Mems_allowed_list": bitmap_list(mems),
    }
    return re.sub(r"^(Cpus_allowed|Cpus_allowed_list|Mems_allowed|Mems_allowed_list):\t.*$",
                  lambda m: f"{m[1]}:\t{values[m[1]]}", real, flags=re.M)
