"""The kernel's bitmap list and mask formats (lib/bitmap.c, `%*pbl` and `%*pb`).

Kept apart from the model and its arrays, so that the command line can read and print node
lists without loading numpy (whose threads would keep `dnumafs run` out of a user namespace).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

CHUNKSZ = 32    # bits per word of a `%*pb` mask
# The most bits a list names by default: the largest CONFIG_NR_CPUS (8192, MAXSMP), above the
# 1024 nodes of NODES_SHIFT 10, so that no list of ids builds more than that.
MAX_BITS = 8192
NUMBER = re.compile(r"[0-9]+")


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


def bitmap_parselist(text: str, nbits: int = MAX_BITS) -> list[int]:
    """The inverse of bitmap_list: "0-2,4" (as in node/online) -> [0, 1, 2, 4]; "" is empty.

    As the kernel's bitmap_parselist() into a bitmap of nbits, every range is checked before
    it is expanded: ValueError for a bit of nbits or more, a range that runs backwards, or a
    part that is not a number or range."""
    ranges: list[tuple[int, int]] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not NUMBER.fullmatch(lo) or not NUMBER.fullmatch(hi or lo):
            raise ValueError(f"{part!r} is not a number or range")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"{part!r} runs backwards")
        if last >= nbits:
            raise ValueError(f"{last} is out of range 0..{nbits - 1}")
        ranges.append((first, last))
    return [bit for first, last in ranges for bit in range(first, last + 1)]
