"""proc/kpageflags and the debugfs page_nid file, read through real mounts: their bits against
the other files (meminfo, vmstat, zoneinfo, hugepages, memory blocks, memlayout ranges), the
read rules of fs/proc/page.c, and the page cache dropping them when the model changes."""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_DIR
from files_helpers import NODE, Mounted, node_meminfo, zoneinfo
from test_clients import cache_dir

KPF = "proc/kpageflags"
PAGE_NID = "sys/kernel/debug/dnumafs/page_nid"
MEM = "sys/devices/system/memory"
CURRENT = "sys/kernel/debug/memlayout/current"
SECTION = 1 << 15                   # pfns in a 128 MiB memory section
(LRU, ACTIVE, SLAB, BUDDY, ANON, HEAD, TAIL, HUGE, NOPAGE, PGTABLE,
 RESERVED) = 5, 6, 7, 10, 12, 15, 16, 17, 20, 26, 32


def pread_all(path: Path, dtype: str) -> np.ndarray:
    """A binary page file whole, read in 1 MiB preads until one returns nothing."""
    chunks, offset = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while data := os.pread(fd, 1 << 20, offset):
            chunks.append(data)
            offset += len(data)
    finally:
        os.close(fd)
    return np.frombuffer(b"".join(chunks), dtype=dtype)


def bit(flags: np.ndarray, b: int) -> np.ndarray:
    return (flags >> np.uint64(b)) & np.uint64(1) == 1


def count(flags: np.ndarray, b: int) -> int:
    return int(np.count_nonzero(bit(flags, b)))


def vmstat(fs: Mounted) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in fs.read("proc/vmstat").splitlines())}


def node_kb(fs: Mounted, key: str) -> dict[int, int]:
    """key of every online node's meminfo, in kB."""
    return {int(name[4:]): node_meminfo(fs.read(f"{NODE}/{name}/meminfo"))[key]
            for name in fs.ls(NODE) if name.startswith("node") and name[4:].isdigit()}


def max_pfn(fs: Mounted) -> int:
    return max(z["start_pfn"] + z["spanned"] for z in zoneinfo(fs.read("proc/zoneinfo")).values()
               if z.get("spanned"))


@pytest.fixture
def fs(mount_dnumafs: Callable[..., Path]) -> Mounted:
    return Mounted(mount_dnumafs("--nodes", "2", "--mem", "384M", "--block-size", "16M"))


def test_kpageflags_agrees_with_meminfo_vmstat_and_zoneinfo(fs: Mounted) -> None:
    flags = pread_all(fs.path(KPF), "<u8")
    top = max_pfn(fs)
    # one u64 per pfn up to the end of memory's last section; past max_pfn no page
    assert len(flags) == -(-top // SECTION) * SECTION
    assert not bit(flags[:top], NOPAGE).any() and bit(flags[top:], NOPAGE).all()
    # every page of a free block is BUDDY (Linux marks the tails too): MemFree, which leaves
    # out the per-CPU lists
    assert count(flags, BUDDY) * 4 == sum(node_kb(fs, "MemFree").values())
    vm = vmstat(fs)
    lru = ("nr_active_anon", "nr_inactive_anon", "nr_active_file", "nr_inactive_file")
    assert count(flags, LRU) == sum(vm[k] for k in lru)
    assert int(np.count_nonzero(bit(flags, LRU) & bit(flags, ACTIVE))) == \
        vm["nr_active_anon"] + vm["nr_active_file"]
    assert count(flags, ANON) == vm["nr_anon_pages"]
    assert count(flags, SLAB) == vm["nr_slab_reclaimable"] + vm["nr_slab_unreclaimable"]
    assert count(flags, PGTABLE) == vm["nr_page_table_pages"]
    zones = zoneinfo(fs.read("proc/zoneinfo")).values()
    assert count(flags, RESERVED) == sum(z["present"] - z["managed"] for z in zones
                                         if "present" in z)
    # a free page is nothing else; a compound block is a head and its tails
    assert not (bit(flags, BUDDY) & (bit(flags, LRU) | bit(flags, SLAB)
                                     | bit(flags, RESERVED))).any()
    heads = np.flatnonzero(bit(flags, HEAD))
    assert len(heads) and not bit(flags[heads - 1], TAIL).all()
    assert all(bit(flags[h + 1:h + 2], TAIL).all() or not bit(flags[h + 1:h + 2], TAIL).any()
               for h in heads[:50])


def test_read_rules_through_the_page_cache(fs: Mounted) -> None:
    """The kernel asks for whole pages; any 8-aligned read of the user is served, the end
    is where the file ends, and the file has the length of its entries."""
    path = fs.path(KPF)
    whole = pread_all(path, "<u8")
    size = len(whole) * 8
    assert os.stat(path).st_size == size
    assert oct(os.stat(path).st_mode & 0o777) == "0o400"
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in ((0, 8), (8 * 12345, 8 * 777), (size - 24, 4096), (size - 8, 8)):
            data = os.pread(fd, n, off)
            assert len(data) == min(n, size - off)
            assert (np.frombuffer(data, "<u8") == whole[off // 8:off // 8 + len(data) // 8]).all()
        assert os.pread(fd, 4096, size) == b""
        assert os.pread(fd, 4096, size + 8 * 1000) == b""
    finally:
        os.close(fd)
    nids = pread_all(fs.path(PAGE_NID), "<u2")
    assert len(nids) == len(whole)
    assert oct(os.stat(fs.path(PAGE_NID)).st_mode & 0o777) == "0o400"


def test_read_rules_of_linux_with_a_read_per_request(mount_dnumafs: Callable[..., Path]
                                                     ) -> None:
    """With a text per open (direct I/O) each read reaches the file as the user made it:
    kpageflags_read()'s EINVAL for an offset or a count that is not a multiple of 8, nothing
    from the end on, a read across the end cut there."""
    fs = Mounted(mount_dnumafs("--mem", "256M", "--per-open-snapshot"))
    path = fs.path(KPF)
    size = -(-max_pfn(fs) // SECTION) * SECTION * 8
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in ((3, 8), (0, 7), (8, 12), (size + 4, 8)):
            with pytest.raises(OSError) as e:
                os.pread(fd, n, off)
            assert e.value.errno == errno.EINVAL, (off, n)
        assert len(os.pread(fd, 4096, size - 16)) == 16
        assert os.pread(fd, 8, size) == b"" and os.pread(fd, 8, size * 2) == b""
        assert len(os.pread(fd, 64, 8)) == 64
    finally:
        os.close(fd)
    nfd = os.open(fs.path(PAGE_NID), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pread(nfd, 2, 1)
        assert e.value.errno == errno.EINVAL
        assert len(os.pread(nfd, 6, 2)) == 6
    finally:
        os.close(nfd)


def test_hugepages_and_an_offline_block_change_the_flags(fs: Mounted) -> None:
    path = fs.path(KPF)
    fd = os.open(path, os.O_RDONLY)       # kept open: the kernel's pages must be dropped
    try:
        before = np.frombuffer(os.pread(fd, 64 << 20, 0), "<u8")
        assert count(before, HUGE) == 0
        assert fs.write(f"{NODE}/node1/hugepages/hugepages-2048kB/nr_hugepages", "3") is None
        after = np.frombuffer(os.pread(fd, 64 << 20, 0), "<u8")
    finally:
        os.close(fd)
    total = int(fs.read(f"{NODE}/node1/hugepages/hugepages-2048kB/nr_hugepages"))
    assert total == 3
    huge = bit(after, HUGE)
    assert int(np.count_nonzero(huge)) == total * 512
    assert int(np.count_nonzero(huge & bit(after, HEAD))) == total
    assert int(np.count_nonzero(huge & bit(after, TAIL))) == total * 511
    nids = pread_all(fs.path(PAGE_NID), "<u2")
    assert set(nids[huge].tolist()) == {1}
    assert count(after, BUDDY) * 4 == sum(node_kb(fs, "MemFree").values())

    # offline the first block that can go: its pfns are no page, and no node's
    block_pages = int(fs.read(f"{MEM}/block_size_bytes"), 16) // 4096
    blocks = sorted(int(n[6:]) for n in fs.ls(MEM) if n.startswith("memory"))
    bid = next(b for b in blocks[1:] if fs.write(f"{MEM}/memory{b}/state", "offline") is None)
    flags = pread_all(path, "<u8")
    nids = pread_all(fs.path(PAGE_NID), "<u2")
    lo, hi = bid * block_pages, (bid + 1) * block_pages
    assert (flags[lo:hi] == 1 << NOPAGE).all() and (nids[lo:hi] == 0xFFFF).all()
    assert count(flags[:max_pfn(fs)], NOPAGE) == block_pages
    assert count(flags, BUDDY) * 4 == sum(node_kb(fs, "MemFree").values())
    assert fs.write(f"{MEM}/memory{bid}/state", "online") is None
    assert count(pread_all(path, "<u8")[:max_pfn(fs)], NOPAGE) == 0


def ranges(fs: Mounted) -> list[tuple[int, int, int]]:
    layout = os.readlink(fs.path(CURRENT))
    d = f"sys/kernel/debug/memlayout/{layout}"
    out = []
    for name in fs.ls(d):
        if "-" in name:
            s, e = name.split("-")
            out.append((int(s, 16), int(e, 16), int(fs.read(f"{d}/{name}"))))
    return sorted(out)


def test_page_nid_follows_the_layout_after_a_stripe_and_a_commit(
        fs: Mounted, run_dnumafs: Callable[..., object]) -> None:
    def per_node_present() -> dict[int, int]:
        out: dict[int, int] = {}
        for (nid, _), z in zoneinfo(fs.read("proc/zoneinfo")).items():
            out[nid] = out.get(nid, 0) + z.get("present", 0)
        return {n: p for n, p in out.items() if p}

    nids = pread_all(fs.path(PAGE_NID), "<u2")
    top = max_pfn(fs)
    assert {n: int(np.count_nonzero(nids == n)) for n in per_node_present()} == \
        per_node_present()
    r = run_dnumafs("stripe", fs.mnt, "0", "2", "4096")
    assert r.returncode == 0, r.stderr
    flags = pread_all(fs.path(KPF), "<u8")
    nids = pread_all(fs.path(PAGE_NID), "<u2")
    assert {n: int(np.count_nonzero(nids == n)) for n in per_node_present()} == \
        per_node_present()
    wanted = np.full(top, 0xFFFF, dtype=np.uint16)
    layout = ranges(fs)
    assert len(layout) == -(-top // 4096)
    for s, e, nid in layout:
        wanted[s:e + 1] = nid
    # a commit moves every free page to its range's node at once; an allocated page stays
    # where it is until freed (and is then marked)
    free = bit(flags[:top], BUDDY)
    assert (nids[:top][free] == wanted[free]).all()
    assert set(np.unique(nids[:top]).tolist()) == {0, 1, 2}
    assert (nids[:top] != wanted).any()          # boot's allocations, marked


# --- the kernel's page-types tool --------------------------------------------------------------

@pytest.fixture(scope="session")
def page_types() -> str:
    """The kernel's tools/vm/page-types: on the path, in the venv, or built once per machine
    from Debian's linux-source package by scripts/build-page-types (a lock keeps two test
    runs from building at once)."""
    found = shutil.which("page-types") or shutil.which("page-types", path=str(
        REPO_DIR / ".venv" / "bin"))
    if found:
        return found
    where = cache_dir() / "page-types"
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / "page-types").exists():
            if not (shutil.which("apt-get") and shutil.which("gcc") and shutil.which("make")):
                pytest.skip("page-types is built from Debian's linux-source package: needs "
                            "apt-get, gcc and make")
            r = subprocess.run([REPO_DIR / "scripts" / "build-page-types", where],
                               capture_output=True, text=True, timeout=110,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                pytest.skip(f"scripts/build-page-types failed:\n{r.stderr[-2000:]}")
    return str(where / "page-types")


def page_types_summary(tool: str, kpageflags: Path, *args: str) -> dict[int, int]:
    """page-types' summary of kpageflags (raw flags): {flags: pages}."""
    r = subprocess.run([tool, "-F", str(kpageflags), "-r", *args], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines()[1:]:
        f = line.split()
        if f[0].startswith("0x"):
            out[int(f[0], 16)] = int(f[1])
        else:
            assert f[0] == "total" and int(f[1]) == sum(out.values())
    return out


def test_page_types_reads_the_model(fs: Mounted, page_types: str,
                                    run_dnumafs: Callable[..., subprocess.CompletedProcess[str]]
                                    ) -> None:
    """The kernel's own tool walks MNT/proc/kpageflags to its end and counts what the other
    files count: free pages, reserved pages, hugepages, slab and LRU pages; and at
    /proc/kpageflags itself under `dnumafs run`."""
    assert fs.write(f"{NODE}/node0/hugepages/hugepages-2048kB/nr_hugepages", "2") is None
    summary = page_types_summary(page_types, fs.path(KPF))
    flags = pread_all(fs.path(KPF), "<u8")
    assert sum(summary.values()) == len(flags)

    def pages(b: int) -> int:
        return sum(n for f, n in summary.items() if f >> b & 1)

    assert pages(BUDDY) * 4 == sum(node_kb(fs, "MemFree").values())
    zones = zoneinfo(fs.read("proc/zoneinfo")).values()
    assert pages(RESERVED) == sum(z["present"] - z["managed"] for z in zones if "present" in z)
    assert pages(HUGE) == 2 * 512
    vm = vmstat(fs)
    assert pages(SLAB) == vm["nr_slab_reclaimable"] + vm["nr_slab_unreclaimable"]
    assert pages(LRU) == sum(vm[k] for k in ("nr_active_anon", "nr_inactive_anon",
                                             "nr_active_file", "nr_inactive_file"))
    assert pages(NOPAGE) == len(flags) - max_pfn(fs)
    # its own selection by bits: the free pages alone
    assert page_types_summary(page_types, fs.path(KPF), "-b", "buddy") == {
        1 << BUDDY: pages(BUDDY)}
    r = run_dnumafs("run", fs.mnt, "--", page_types, "-b", "buddy", "-r")
    assert r.returncode == 0, r.stderr
    assert f"0x{1 << BUDDY:016x}\t{pages(BUDDY):10d}" in r.stdout, r.stdout
