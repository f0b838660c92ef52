"""Formats shared by several files: the kernel's bitmap printers and meminfo lines.

Kept in one place so that node lists, CPU lists, masks and sizes look the same in every file
that prints them, as they do in Linux where all go through `%*pbl`, `%*pb` and show_val_kb().
"""
from __future__ import annotations

from dnumafs.lib.bitmap import bitmap_list, bitmap_mask
from dnumafs.mm.constants import PAGE_SIZE

__all__ = ["bitmap_list", "bitmap_mask", "meminfo_kb", "parse_indexed_name"]

def meminfo_kb(key: str, pages: int) -> str:
    """`%-16s%8lu kB` of a size in pages: a /proc/meminfo line, and a nodeN/meminfo line
    after its `Node %d `."""
    return f"{key + ':':<16}{pages * (PAGE_SIZE // 1024):8d} kB"


def parse_indexed_name(name: str, prefix: str) -> int | None:
    """The N of `nodeN`, `cpuN` or `layout.N`, or None: only the name the kernel would print
    (no sign, no leading zero) finds the entry, as a directory lookup does."""
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):]
    if not digits.isascii() or not digits.isdigit() or str(int(digits)) != digits:
        return None
    return int(digits)
