"""What a node reserves at boot (never freed, never managed): the one rule both sides use.

Boot (dnumafs.mm.boot) marks these pages reserved; the synthetic machine (synthetic.py)
gives each node the MemTotal its RAM leaves once they are taken, as a real machine of that
much RAM shows less MemTotal. Plain integers only: describing a machine loads no numpy.
"""
from __future__ import annotations

PAGE_SIZE = 4096
MEMMAP_BYTES_PER_PAGE = 64                  # sizeof(struct page): the memmap each node reserves
KERNEL_IMAGE_PFN = (16 << 20) // PAGE_SIZE
FIRST_MIB_PAGES = (1 << 20) // PAGE_SIZE    # reserved below the kernel, as on x86-64


def reserved_ranges(start: int, end: int) -> list[tuple[int, int]]:
    """The pfns [lo, hi) a node of [start, end) reserves: its memmap at the top (top-down,
    as memblock allocates); on the node at pfn 0 also the first MiB and the kernel image."""
    size = end - start
    reserved = [(end - -(-size * MEMMAP_BYTES_PER_PAGE // PAGE_SIZE), end)]
    if start == 0:
        reserved.append((0, min(FIRST_MIB_PAGES, size)))
        image = min(2048, size // 32)
        image_start = KERNEL_IMAGE_PFN if KERNEL_IMAGE_PFN + image < size // 2 else FIRST_MIB_PAGES
        reserved.append((image_start, image_start + image))
    return reserved


def reserved_count(start: int, size: int) -> int:
    """How many pages reserved_ranges() covers (its ranges may overlap on a small node)."""
    count, reach = 0, start
    for lo, hi in sorted(reserved_ranges(start, start + size)):
        lo = max(lo, reach)
        if hi > lo:
            count += hi - lo
            reach = hi
    return count
