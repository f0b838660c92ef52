"""proc/kpageflags (fs/proc/page.c) and sys/kernel/debug/dnumafs/page_nid: the pages themselves,
one binary entry per pfn, read in slices at any offset.

kpageflags is one little-endian u64 of KPF_* bits (include/uapi/linux/kernel-page-flags.h) per
pfn, from 0 to max_pfn rounded up to a memory section, as the kernel's kpageflags_read(): an
offset or a count that is not a multiple of 8 is refused with EINVAL, a read from the end or
beyond returns nothing, a read across the end is cut there. Each entry is stable_page_flags()
of the model's page:
- a pfn with no online page (an offline block, or past the end of memory up to the section's
  end: pfn_to_online_page() finds none) has KPF_NOPAGE alone;
- every page of a free block on a buddy list has KPF_BUDDY, the tail pages too, as Linux sets
  it for a tail page whose block is free (is_free_buddy_page()); pages on a per-CPU list have
  no bit, as in Linux;
- reserved pages have KPF_RESERVED;
- an allocated block has its kind's bits on each of its pages (its folio's flags: file cache
  LRU and UPTODATE, anonymous memory ANON, MMAP and SWAPBACKED besides, ACTIVE for the active
  lists, slab SLAB, page tables PGTABLE), and a compound block (every kind but memory no
  counter accounts for, kernel stacks and page tables, which are not compound) has
  COMPOUND_HEAD on its head and COMPOUND_TAIL on the rest; a large LRU block is a THP;
- a hugepage pool's block has HUGE and COMPOUND_HEAD/TAIL on its pages.

page_nid is the model's own: one little-endian u16 per pfn, the node of its page, 0xffff where
there is no online page; the same length in entries and the same read rules (a multiple of
2). Linux has no such file (a page's node is in its flags word, which kpageflags leaves out).

Both make only the entries asked for, from the page arrays (numpy), under the machine's lock:
a 64 GiB machine's kpageflags is 128 MiB, and is never built whole.
"""
from __future__ import annotations

import errno

import numpy as np

from dnumafs.lib.page_flags import (
    KPAGEFLAGS_ENTRY,
    KPF_ACTIVE,
    KPF_ANON,
    KPF_BUDDY,
    KPF_COMPOUND_HEAD,
    KPF_COMPOUND_TAIL,
    KPF_HUGE,
    KPF_LRU,
    KPF_MMAP,
    KPF_NOPAGE,
    KPF_PGTABLE,
    KPF_RESERVED,
    KPF_SLAB,
    KPF_SWAPBACKED,
    KPF_THP,
    KPF_UPTODATE,
    NID_NONE,
    PAGE_NID_ENTRY,
)
from dnumafs.mm import Machine
from dnumafs.mm.changes import MACHINE
from dnumafs.mm.constants import (
    GIGANTIC_ORDER,
    PG_BUDDY,
    PG_HEAD,
    PG_HUGETLB,
    PG_OFFLINE,
    PG_RESERVED,
)
from dnumafs.mm.kinds import NR_KINDS, Kind
from dnumafs.vfs.tree import DEBUGFS, PROCFS, Attr, Dir, Slices, StaticDir

# A memory section on x86-64 (128 MiB): the kernel dumps up to max_pfn rounded up to one
# (get_max_dump_pfn() with CONFIG_SPARSEMEM).
PAGES_PER_SECTION = 1 << 15


def _bits(*kpf: int) -> int:
    return sum(1 << b for b in kpf)


_LRU = _bits(KPF_LRU, KPF_UPTODATE)
_ANON = _LRU | _bits(KPF_ANON, KPF_MMAP, KPF_SWAPBACKED)
# The flags of an allocated block's pages by its kind (its folio's flags).
KIND_FLAGS = {
    Kind.NONE: 0,
    Kind.ACTIVE_FILE: _LRU | _bits(KPF_ACTIVE),
    Kind.INACTIVE_FILE: _LRU,
    Kind.ACTIVE_ANON: _ANON | _bits(KPF_ACTIVE),
    Kind.INACTIVE_ANON: _ANON,
    Kind.SHMEM: _LRU | _bits(KPF_SWAPBACKED),
    Kind.SLAB_RECLAIMABLE: _bits(KPF_SLAB),
    Kind.SLAB_UNRECLAIMABLE: _bits(KPF_SLAB),
    Kind.PAGETABLE: _bits(KPF_PGTABLE),
    Kind.KERNEL_STACK: 0,
}
# Kinds allocated as one compound page (a folio) when larger than a page: not a driver's
# plain alloc_pages(), nor the page-table or stack pages.
COMPOUND_KINDS = frozenset(Kind) - {Kind.NONE, Kind.PAGETABLE, Kind.KERNEL_STACK}
_KIND_TABLE = np.array([KIND_FLAGS[Kind(k)] for k in range(NR_KINDS)], dtype=np.uint64)
_COMPOUND = np.array([Kind(k) in COMPOUND_KINDS for k in range(NR_KINDS)])
_THP = np.array([KIND_FLAGS[Kind(k)] & (1 << KPF_LRU) != 0 for k in range(NR_KINDS)])
_OWNERS = PG_BUDDY | PG_HEAD


def max_dump_pfn(m: Machine) -> int:
    """One past the last pfn the files have an entry for."""
    return -(-m.max_pfn // PAGES_PER_SECTION) * PAGES_PER_SECTION


def _pfns(m: Machine, offset: int, size: int, entry: int) -> range:
    """The pfns a read of size bytes at offset covers, by kpageflags_read()'s rules."""
    if offset < 0 or offset % entry or size % entry:
        raise OSError(errno.EINVAL, f"offset and count must be multiples of {entry}")
    first = offset // entry
    return range(first, max(first, min(max_dump_pfn(m), first + size // entry)))


def _block_start(m: Machine, pfn: int) -> int:
    """The head of the free or allocated block that holds pfn, or pfn if none does. Blocks
    are aligned to their size, so the head is pfn rounded down to one of the orders."""
    flags, order = m.mem_map.flags, m.mem_map.order
    for o in range(GIGANTIC_ORDER + 1):
        head = pfn & -(1 << o)
        if flags[head] & _OWNERS and pfn < head + (1 << order[head]):
            return head
    return pfn


def kpageflags(m: Machine, first: int, end: int) -> np.ndarray:
    """stable_page_flags() of pfns [first, end) as u64 (pfns past max_pfn: NOPAGE)."""
    out = np.full(end - first, 1 << KPF_NOPAGE, dtype=np.uint64)
    stop = min(end, m.max_pfn)
    if first >= stop:
        return out
    # Each pfn's block: the last head at or before it (from the head of the block that
    # holds `first`), and whether the pfn lies within that block.
    lo = _block_start(m, first)
    flags = m.page_flags[lo:stop]
    pfns = np.arange(lo, stop)
    owner = np.where(flags & _OWNERS, pfns, -1)
    np.maximum.accumulate(owner, out=owner)
    orders = m.page_order[np.maximum(owner, 0)].astype(np.int64)
    inside = (owner >= 0) & (pfns < owner + np.left_shift(1, orders))
    head_flags = np.where(inside, m.page_flags[np.maximum(owner, 0)], 0)
    kind = np.where(inside, m.kinds.page_kind[np.maximum(owner, 0)], 0)
    is_head = pfns == owner
    u = np.zeros(stop - lo, dtype=np.uint64)
    u[head_flags & PG_BUDDY != 0] = 1 << KPF_BUDDY
    allocated = head_flags & PG_HEAD != 0
    huge = allocated & (head_flags & PG_HUGETLB != 0)
    u |= np.where(allocated & ~huge, _KIND_TABLE[kind], np.uint64(0))
    compound = allocated & (huge | (_COMPOUND[kind] & (orders > 0)))
    u[compound & is_head] |= np.uint64(1 << KPF_COMPOUND_HEAD)
    u[compound & ~is_head] |= np.uint64(1 << KPF_COMPOUND_TAIL)
    u[huge] |= np.uint64(1 << KPF_HUGE)
    u[compound & ~huge & _THP[kind]] |= np.uint64(1 << KPF_THP)
    u[flags & PG_RESERVED != 0] |= np.uint64(1 << KPF_RESERVED)
    u[flags & PG_OFFLINE != 0] = 1 << KPF_NOPAGE
    out[:stop - first] = u[first - lo:]
    return out


def page_nid(m: Machine, first: int, end: int) -> np.ndarray:
    """The node of each pfn of [first, end) as u16, NID_NONE where no page is online."""
    out = np.full(end - first, NID_NONE, dtype=np.uint16)
    stop = min(end, m.max_pfn)
    if first < stop:
        part = m.page_node[first:stop].astype(np.uint16)
        part[m.page_flags[first:stop] & PG_OFFLINE != 0] = NID_NONE
        out[:stop - first] = part
    return out


def kpageflags_read(m: Machine, offset: int, size: int) -> bytes:
    pfns = _pfns(m, offset, size, KPAGEFLAGS_ENTRY)
    return kpageflags(m, pfns.start, pfns.stop).astype("<u8").tobytes()


def page_nid_read(m: Machine, offset: int, size: int) -> bytes:
    pfns = _pfns(m, offset, size, PAGE_NID_ENTRY)
    return page_nid(m, pfns.start, pfns.stop).astype("<u2").tobytes()


def kpageflags_attr(m: Machine) -> Attr:
    """proc/kpageflags, 0400 as Linux creates it (S_IRUSR)."""
    return Attr(slices=Slices(lambda off, n: kpageflags_read(m, off, n),
                              lambda: max_dump_pfn(m) * KPAGEFLAGS_ENTRY),
                fs=PROCFS, lock=m.lock, mode_mask=0o400, depends=MACHINE)


def page_nid_attr(m: Machine) -> Attr:
    """sys/kernel/debug/dnumafs/page_nid (debugfs: 0400)."""
    return Attr(slices=Slices(lambda off, n: page_nid_read(m, off, n),
                              lambda: max_dump_pfn(m) * PAGE_NID_ENTRY),
                fs=DEBUGFS, lock=m.lock, depends=MACHINE)


def kpage_proc_dir(m: Machine) -> Dir:
    """proc/'s binary page file, a layer of proc/."""
    return StaticDir({"kpageflags": kpageflags_attr(m)})


def kpage_debug_dir(m: Machine) -> Dir:
    """sys/kernel/debug/dnumafs/'s page file, a layer of that directory."""
    return StaticDir({"page_nid": page_nid_attr(m)})
