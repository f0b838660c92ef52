"""Reads from the kernel's page cache: after any change of the model, every file read through
the mount is what a fresh rendering gives; writes, refusals and modes still hold.

The oracle is a second daemon given the same machine and the same writes, mounted with
--per-open-snapshot (every read made fresh, no page cache): the model is deterministic, so
the two must agree file by file, listing by listing, link by link.
"""
from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_vfs import _as_nobody, needs_setpriv, public_dir  # noqa: F401 (a fixture)

MACHINE = ("--nodes", "2", "--mem", "256M", "--cpus", "4", "--possible-nodes", "4")
TREE = "pagecache_tree:churning_root"
ML = "sys/kernel/debug/memlayout"
BACKLOG = "sys/module/memlayout_debugfs/parameters/backlog_max"
HUGE = "sys/devices/system/node/node{}/hugepages/hugepages-2048kB/nr_hugepages"
DROP = "proc/sys/vm/drop_caches"
VOLATILE = {"proc/stat"}            # its idle time grows with the clock
PAGES = 65536                       # 256 MiB


def snapshot(mnt: Path) -> dict[str, tuple[str, bytes | str | list[str]]]:
    """Every file's text (one read), every link's target, every directory's names."""
    out: dict[str, tuple[str, bytes | str | list[str]]] = {}
    for d, dirs, files in os.walk(mnt):
        rel = os.path.relpath(d, mnt)
        out[rel] = ("dir", sorted(dirs + files))
        for name in files + dirs:
            p = os.path.join(d, name)
            key = os.path.normpath(os.path.join(rel, name))
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            elif name in files and key not in VOLATILE and os.stat(p).st_mode & 0o444:
                fd = os.open(p, os.O_RDONLY)
                try:
                    out[key] = ("file", os.read(fd, 1 << 22))
                except OSError as e:
                    out[key] = ("error", errno.errorcode[e.errno or 0])
                finally:
                    os.close(fd)
    return out


def write(mnt: Path, path: str, value: str) -> int:
    """One write(2) of value to path: 0 or the errno."""
    try:
        fd = os.open(mnt / path, os.O_WRONLY)
    except OSError as e:
        return e.errno or -1
    try:
        os.write(fd, value.encode())
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)


def operations(rng: random.Random) -> list[tuple[str, str]]:
    """Every kind of change, in a random order, each at least once."""
    def stage() -> list[tuple[str, str]]:
        start = rng.randrange(0, PAGES, 0x800)
        end = min(PAGES - 1, start + rng.choice([0x7ff, 0xfff, 0x3fff]))
        return [(f"{ML}/start", hex(start)), (f"{ML}/end", hex(end)),
                (f"{ML}/node", str(rng.randrange(4)))]
    kinds: list[Callable[[], list[tuple[str, str]]]] = [
        stage,
        lambda: stage() + [(f"{ML}/commit", "1")],
        lambda: [(f"{ML}/commit", "1")],
        lambda: [(f"{ML}/clear", "1")],
        lambda: [(BACKLOG, str(rng.randrange(0, 4)))],
        lambda: [(BACKLOG, "zero")],                        # refused: nothing changes
        lambda: [(HUGE.format(rng.randrange(2)), str(rng.randrange(0, 12)))],
        lambda: [(DROP, str(rng.randrange(1, 4)))],
        lambda: [("churn", str(rng.randrange(1, 200)))],    # in the daemon, after the write
    ]
    order = kinds + [rng.choice(kinds) for _ in range(16)]
    rng.shuffle(order)
    return [op for kind in order for op in kind()]


def settle(cached: Path, oracle: Path, churns: int) -> None:
    """Wait for the daemons' in-process jobs (not for the page cache: that is the test)."""
    for mnt in (cached, oracle):
        deadline = time.monotonic() + 30
        while (mnt / "churned").read_text() != f"{churns}\n":
            assert time.monotonic() < deadline, "churn did not finish"
            time.sleep(0.01)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_file_read_after_any_change_is_fresh(mount_dnumafs, seed):
    cached = mount_dnumafs(*MACHINE, tree=TREE)
    oracle = mount_dnumafs(*MACHINE, "--per-open-snapshot", tree=TREE)
    rng = random.Random(seed)
    churns = 0
    assert snapshot(cached) == snapshot(oracle)     # and now the kernel holds every file
    for path, value in operations(rng):
        assert write(cached, path, value) == write(oracle, path, value), (path, value)
        if path == "churn":
            churns += 1
            settle(cached, oracle, churns)
            # Changes made in the daemon, not by a write, are dropped just after: give
            # them a bounded while, then every file must be fresh.
            deadline = time.monotonic() + 5
            while snapshot(cached) != snapshot(oracle) and time.monotonic() < deadline:
                time.sleep(0.02)
        want, got = snapshot(oracle), snapshot(cached)
        stale = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        assert not stale, f"after {path} <- {value!r}: stale {stale[:10]}"


def test_sizes_are_exact_and_the_kernel_asks_nothing_for_a_warm_read(mount_dnumafs):
    mnt = mount_dnumafs(*MACHINE)
    meminfo = mnt / "sys/devices/system/node/node0/meminfo"
    text = meminfo.read_bytes()
    assert os.stat(meminfo).st_size == len(text)
    assert (mnt / "proc/zoneinfo").stat().st_size == len((mnt / "proc/zoneinfo").read_bytes())
    # A daemon that is stopped answers nothing: a warm read is the kernel's alone.
    pid = int(subprocess.run(["pgrep", "-f", f"dnumafs.*mount {mnt}"], capture_output=True,
                             text=True).stdout.split()[0])
    os.kill(pid, 19)        # SIGSTOP
    try:
        r = subprocess.run(["cat", str(meminfo)], capture_output=True, timeout=10)
        assert r.stdout == text
    finally:
        os.kill(pid, 18)    # SIGCONT


def test_a_reader_after_the_write_sees_the_new_state(mount_dnumafs):
    mnt = mount_dnumafs(*MACHINE)
    online = mnt / "sys/devices/system/node/online"
    meminfo = mnt / "sys/devices/system/node/node1/meminfo"
    backlog = mnt / BACKLOG
    before = (online.read_text(), meminfo.read_text(), backlog.read_text())
    r = subprocess.run(["bash", "-c", f"cd {mnt}/{ML} && echo 0x8000 > start && "
                        f"echo 0xffff > end && echo 2 > node && echo 1 > commit && "
                        f"cat {online} {meminfo}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0-2\n") and r.stdout != before[0] + before[1]
    assert (mnt / "sys/devices/system/node/node2/meminfo").read_text().startswith("Node 2")
    # The written file itself: the kernel put the written bytes in its cached page.
    assert subprocess.run(["bash", "-c", f"echo 0x3 > {backlog}; cat {backlog}"],
                          capture_output=True, text=True, timeout=30).stdout == "3\n"
    fd = os.open(backlog, os.O_WRONLY)          # no O_TRUNC: written over the cached page
    try:
        os.write(fd, b"0x1")
    finally:
        os.close(fd)
    assert backlog.read_text() == "1\n" and before[2] != "1\n"
    # A layout trimmed away vanishes at once, for stat too (its entry is dropped).
    retired = mnt / ML / "layout.0"
    assert retired.is_dir() and (retired / "stats").is_dir()
    assert write(mnt, BACKLOG, "0") == 0
    assert not retired.exists() and not (retired / "stats").exists()


def test_refusals_without_open_as_root(mount_dnumafs):
    """No open reaches the daemon, so a file refuses at the request that does come: the
    truncate of `echo 1 > f`, the write, the read (a write-only file's size is a page)."""
    mnt = mount_dnumafs(*MACHINE)
    meminfo = mnt / "sys/devices/system/node/node0/meminfo"
    r = subprocess.run(["bash", "-c", f"echo 1 > {meminfo}; cat {mnt}/{DROP}; "
                        f"echo 1 > {mnt}/{ML}/nosuch"],
                       capture_output=True, text=True, timeout=30)
    assert r.stderr.count("Permission denied") == 3, r.stderr
    fd = os.open(meminfo, os.O_WRONLY)          # no truncate: refused at the write
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"1")
    finally:
        os.close(fd)
    r = subprocess.run(["bash", "-c", f"echo 1 > {mnt}/proc/meminfo"],
                       capture_output=True, text=True, timeout=30)
    assert "Input/output error" in r.stderr      # procfs: EIO at the write, as Linux
    assert meminfo.read_text().startswith("Node 0 MemTotal:")
    assert write(mnt, DROP, "3") == 0


@needs_setpriv
def test_refusals_without_open_for_another_user(public_dir, mount_dnumafs):  # noqa: F811
    mnt = public_dir / "mnt"
    mnt.mkdir()
    mount_dnumafs(*MACHINE, "--allow-other", mnt=mnt)
    node = f"{mnt}/sys/devices/system/node"
    r = _as_nobody(f"cat {node}/node0/meminfo | head -1; echo 5 > {mnt}/{HUGE.format(0)}; "
                   f"echo 1 > {mnt}/{DROP}; ls {mnt}/sys/kernel/debug")
    assert r.stdout.startswith("Node 0 MemTotal:")
    assert r.stderr.count("Permission denied") == 3, r.stderr
    assert (Path(node) / "node0/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "0\n"


def test_sizes_are_the_texts_and_modes_as_linux(mount_dnumafs):
    """st_size is each text's length (the page cache reads up to it); a file without show has
    a page, so that its read asks and is refused; modes as with a text per open."""
    mnt = mount_dnumafs(*MACHINE)
    for path in ("sys/devices/system/node/online", "proc/meminfo", f"{ML}/moved-pages",
                 BACKLOG, f"{ML}/layout.0/00000-07fff"):
        assert os.stat(mnt / path).st_size == len((mnt / path).read_bytes()), path
    for path in (DROP, f"{ML}/commit"):
        assert os.stat(mnt / path).st_size == 4096, path
        with pytest.raises(PermissionError):
            (mnt / path).read_bytes()
    assert os.stat(mnt / "sys/kernel/debug").st_mode & 0o777 == 0o700
    assert os.stat(mnt / DROP).st_mode & 0o777 == 0o200


def test_kernels_before_4_19_get_a_text_per_open():
    from dnumafs.vfs.pagecache import kernel_has_no_open
    assert not kernel_has_no_open("4.18.20-generic") and not kernel_has_no_open("3.10.0")
    assert kernel_has_no_open("4.19.0") and kernel_has_no_open("6.18.44-fc-v657")
    assert not kernel_has_no_open("unknown")


def test_one_read_is_never_torn_while_the_file_changes(mount_dnumafs):
    """A reader reading node0/meminfo with one read(2) while a writer changes it: every text
    is whole and one state's (its sums agree). The states alternate at equal lengths, so
    this is not the narrow case the README tells of (a text growing during the read)."""
    mnt = mount_dnumafs(*MACHINE)
    meminfo = str(mnt / "sys/devices/system/node/node0/meminfo")
    huge = str(mnt / HUGE.format(0))
    stop = threading.Event()
    texts: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            fd = os.open(meminfo, os.O_RDONLY)
            try:
                texts.append(os.read(fd, 1 << 16))
            finally:
                os.close(fd)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            assert write(mnt, huge.removeprefix(str(mnt) + "/"), str(1 + 2 * (i % 2))) == 0
    finally:
        stop.set()
        t.join(30)
    assert len(texts) > 10 and len(set(texts)) >= 2     # it saw the file change
    for text in texts:
        fields = dict(re.findall(r"Node 0 (\S+):\s+(\d+)", text.decode()))
        assert fields["MemTotal"] and int(fields["MemTotal"]) == (
            int(fields["MemFree"]) + int(fields["MemUsed"])), text
        assert fields["HugePages_Total"] == fields["HugePages_Free"] in ("0", "1", "3"), text
        assert text.endswith(b"\n") and "HugePages_Surp" in fields, text


def test_a_volatile_read_gets_the_text_its_size_was_given_of():
    """getattr gives the size of a text made then; the read that follows gets that text, not
    a longer one made since (the kernel would cut it at the size), even if a drop of the
    file was worked through in between."""
    from dnumafs.vfs.pagecache import PageCache
    from dnumafs.vfs.tree import STATIC, Attr, StaticDir

    ticks = iter(range(1, 1000))
    attr = Attr(show=lambda: "x" * next(ticks), depends=STATIC, volatile=True)
    cache = PageCache(StaticDir({"f": attr}), "/nonexistent")
    sized = cache.known("/f", attr).text            # getattr
    assert sized == b"x"
    cache.remake(frozenset(), {"/f"})               # its drop, queued at the read before
    cache.changed(None)                             # and a change of the model meanwhile
    assert cache.known("/f", attr, sized=True).text == sized     # the read
    assert cache.known("/f", attr).text == b"xx"    # a new getattr makes it again
