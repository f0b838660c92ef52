"""The process view's system calls: a seccomp filter traps the memory-policy calls and the
opens of /proc/<pid>/status in a program run under `dnumafs run`, and the supervisor (run
itself) answers them for the model through seccomp user notification.

  abi         the kernel's interface: the filter, the listener's ioctls, the target's memory
  status      /proc/<pid>/status with the model's Cpus_allowed and Mems_allowed
  calls       each trapped call, decoded and answered by dnumafs.mm.mempolicy
  supervisor  the loop: notifications, the tasks it has seen, reaping, the exit status
"""
