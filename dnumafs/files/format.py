"""Formats shared by several files: the kernel's bitmap printers and meminfo lines.

Kept in one place so that node lists, CPU lists, masks and sizes look the same in every file
that prints them, as they do in Linux where all go through `%*pbl`, `%*pb` and show_val_kb().
"""
from __future__ import annotations

from collections.abc import Iterable

from dnumafs.mm.constants import PAGE_SIZE

CHUNKSZ = 32    # bits per word of a `%*pb` mask


def bitmap_list(bits: Iterable[int]) -> str:
    """`%*pbl`: ascending bits as ranges, `0-2,4`; empty for no bits."""
    out: list[str] = []
    first = last = None
    for bit in sorted(set(bits)):
        if last is not None and bit == last + 1:
            last = bit
            continue
        if first is not None:
            out.append(f"{first}" if first == last else f"{first}-{last}")
        first = last = bit
    if first is not None:
        out.append(f"{first}" if first == last else f"{first}-{last}")
    return ",".join(out)


def bitmap_mask(bits: Iterable[int], nr_bits: int) -> str:
    """`%*pb`: 32-bit lowercase hex words, most significant first, comma-separated.

    As lib/vsprintf.c bitmap_string(): the first word is only as wide as the bits above the
    last whole word need (nr_bits 2 -> `3`, 8 -> `0f`), every other word is 8 digits wide.
    """
    value = 0
    for bit in bits:
        value |= 1 << bit
    chunksz = nr_bits % CHUNKSZ or CHUNKSZ
    words: list[str] = []
    i = -(-nr_bits // CHUNKSZ) * CHUNKSZ - CHUNKSZ
    while i >= 0:
        word = (value >> i) & ((1 << chunksz) - 1)
        words.append(f"{word:0{-(-chunksz // 4)}x}")
        chunksz = CHUNKSZ
        i -= CHUNKSZ
    return ",".join(words)


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
