"""The formats of the binary page files: the KPF_* bits of proc/kpageflags
(include/uapi/linux/kernel-page-flags.h; RESERVED from include/linux/kernel-page-flags.h), and
the entry of the page_nid debugfs file for a pfn without a page. files/kpageflags.py writes
them, the map (pictures/map.py) reads them."""
from __future__ import annotations

KPF_UPTODATE = 3
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_BUDDY = 10
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_NOPAGE = 20
KPF_THP = 22
KPF_PGTABLE = 26
KPF_RESERVED = 32

KPAGEFLAGS_ENTRY = 8        # bytes: a u64 per pfn
PAGE_NID_ENTRY = 2          # bytes: a u16 per pfn
NID_NONE = 0xFFFF
