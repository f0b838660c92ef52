"""Formats shared by several files: meminfo lines and indexed names.

Kept in one place so that sizes look the same in every file that prints them, as they do in
Linux where all go through show_val_kb(); node and CPU lists and masks are the kernel's bitmap
formats, in dnumafs.lib.bitmap.
"""
from __future__ import annotations

from dnumafs.mm.constants import PAGE_SIZE


def meminfo_kb(key: str, pages: int) -> str:
    """`%-16s%8lu kB` of a size in pages: a /proc/meminfo line, and a nodeN/meminfo line
    after its `Node %d `."""
    return meminfo_line(key, pages * (PAGE_SIZE // 1024))


def meminfo_line(key: str, kb: int) -> str:
    """show_val_kb() of a size in kB."""
    return f"{key + ':':<16}{kb:8d} kB"


def parse_indexed_name(name: str, prefix: str) -> int | None:
    """The N of `nodeN`, `cpuN` or `layout.N`, or None: only the name the kernel would print
    (no sign, no leading zero) finds the entry, as a directory lookup does."""
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):]
    if not digits.isascii() or not digits.isdigit() or str(int(digits)) != digits:
        return None
    return int(digits)
