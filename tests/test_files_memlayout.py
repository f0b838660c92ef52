"""sys/kernel/debug/memlayout and the backlog_max parameter, through the tree (no mount)."""
from __future__ import annotations

import errno

import pytest
from files_helpers import BACKLOG_MAX, ML, NODE, Tree, boot, node_list, node_meminfo

from dnumafs.mm import STAT_NAMES


@pytest.fixture
def t():
    return Tree(boot())


def staged(t):
    return t.read(f"{ML}/start"), t.read(f"{ML}/end")


def layouts(t):
    return [n for n in t.ls(ML) if n.startswith("layout.")]


def test_top_directory(t):
    assert t.ls(ML) == ["start", "end", "node", "commit", "clear", "current", "moved-pages",
                        "stats", "node_stats", "layout.0"]
    modes = {name: t.node(f"{ML}/{name}").mode
             for name in ("start", "end", "node", "commit", "clear", "moved-pages")}
    assert modes == {"start": 0o600, "end": 0o600, "node": 0o200, "commit": 0o200,
                     "clear": 0o200, "moved-pages": 0o400}
    for name in ("node", "commit", "clear"):
        assert t.node(f"{ML}/{name}").show is None      # write-only: EACCES on read open
    assert t.node(f"{ML}/moved-pages").store is None
    assert t.readlink(f"{ML}/current") == "layout.0"
    assert t.node(BACKLOG_MAX).mode == 0o644


def test_boot_layout_ranges(t):
    # 64 MiB over 2 nodes: 0x2000 pages each
    assert t.ls(f"{ML}/layout.0") == ["00000-01fff", "02000-03fff", "stats", "node_stats"]
    assert t.read(f"{ML}/layout.0/00000-01fff") == "0\n"
    assert t.read(f"{ML}/layout.0/02000-03fff") == "1\n"
    assert t.node(f"{ML}/layout.0/00000-01fff").mode == 0o400
    assert t.node(f"{ML}/layout.0/00000-01fff").store is None
    for name in ("0000-01fff", "00000-01FFF", "00000", "00000-", "-01fff", "00000-01ffe",
                 "00001-01fff", "00000-01fff-", "0x0-0x1fff", "00000--1fff"):
        assert t.node(f"{ML}/layout.0/{name}") is None, name
    for name in ("layout.1", "layout.00", "layout.", "layout.-1", "layout"):
        assert t.node(f"{ML}/{name}") is None, name


def test_start_end(t):
    assert staged(t) == ("0x0000000000000000\n", "0x0000000000000000\n")
    assert t.write(f"{ML}/start", "0x1000\n") is None
    assert t.write(f"{ML}/end", "8191") is None
    assert staged(t) == ("0x0000000000001000\n", "0x0000000000001fff\n")
    assert t.write(f"{ML}/start", "010") is None               # octal, as kstrtoull(s, 0)
    assert t.write(f"{ML}/end", "+0xffffffffffffffff") is None
    assert staged(t) == ("0x0000000000000008\n", "0xffffffffffffffff\n")


@pytest.mark.parametrize("value, err", [
    (b"", errno.EINVAL),
    (b"\n", errno.EINVAL),
    (b"x", errno.EINVAL),
    (b"-1", errno.EINVAL),
    (b"12 ", errno.EINVAL),
    (b" 12", errno.EINVAL),
    (b"12\n\n", errno.EINVAL),
    (b"0x", errno.EINVAL),
    (b"08", errno.EINVAL),
    (b"1e3", errno.EINVAL),
    (b"++1", errno.EINVAL),
    (b"18446744073709551616", errno.ERANGE),
    (b"0x10000000000000000\n", errno.ERANGE),
])
@pytest.mark.parametrize("name", ["start", "end", "node"])
def test_bad_numbers_change_nothing(t, name, value, err):
    assert t.write(f"{ML}/start", "0x100") is None
    assert t.write(f"{ML}/end", "0x1ff") is None
    assert t.write(f"{ML}/{name}", value) == err
    assert staged(t) == ("0x0000000000000100\n", "0x00000000000001ff\n")
    assert layouts(t) == ["layout.0"]
    assert t.m.pending is None


def test_node_adds_a_pending_range_and_resets(t):
    assert t.write(f"{ML}/start", "0x1000") is None
    assert t.write(f"{ML}/end", "0x1fff") is None
    assert t.write(f"{ML}/node", "2\n") is None
    assert staged(t) == ("0x0000000000000000\n", "0x0000000000000000\n")
    assert layouts(t) == ["layout.0", "layout.1"]
    assert t.ls(f"{ML}/layout.1") == ["01000-01fff", "stats", "node_stats"]
    assert t.read(f"{ML}/layout.1/01000-01fff") == "2\n"
    assert t.readlink(f"{ML}/current") == "layout.0"      # not committed yet
    assert t.read(f"{NODE}/online") == "0-1\n"
    # a second range joins the same pending layout, listed in pfn order
    t.add_range(0x100, 0x1ff, 0)
    assert t.ls(f"{ML}/layout.1") == ["00100-001ff", "01000-01fff", "stats", "node_stats"]
    # the staged bounds default to 0: [0, 0]
    assert t.write(f"{ML}/node", "1") is None
    assert t.read(f"{ML}/layout.1/00000-00000") == "1\n"


def test_range_names_wider_than_five_digits():
    t = Tree(boot(mem=1 << 30))
    t.add_range(0x3ffff, 0x123456, 1)
    assert t.read(f"{ML}/layout.1/3ffff-123456") == "1\n"
    assert t.node(f"{ML}/layout.1/03ffff-123456") is None


@pytest.mark.parametrize("start, end, nid, err", [
    (0x10, 0x20, 4, errno.EINVAL),       # >= possible nodes (4)
    (0x10, 0x20, 1 << 40, errno.EINVAL),
    (0x21, 0x20, 1, errno.EINVAL),       # start > end
    (0x150, 0x150, 1, errno.EEXIST),     # overlaps the pending [0x100, 0x1ff]
    (0x0, 0x100, 1, errno.EEXIST),
    (0x1ff, 0x300, 1, errno.EEXIST),
    (0x0, 0xfff, 1, errno.EEXIST),
])
def test_rejected_node_changes_nothing(t, start, end, nid, err):
    t.add_range(0x100, 0x1ff, 0)
    assert t.write(f"{ML}/start", f"{start:#x}") is None
    assert t.write(f"{ML}/end", f"{end:#x}") is None
    assert t.write(f"{ML}/node", f"{nid}") == err
    assert staged(t) == (f"0x{start:016x}\n", f"0x{end:016x}\n")
    assert t.ls(f"{ML}/layout.1") == ["00100-001ff", "stats", "node_stats"]
    assert t.m.pending.ranges() == [(0x100, 0x1ff, 0)]


def test_rejected_first_range_creates_no_layout(t):
    assert t.write(f"{ML}/start", "5") is None
    assert t.write(f"{ML}/end", "4") is None
    assert t.write(f"{ML}/node", "0") == errno.EINVAL
    assert layouts(t) == ["layout.0"]
    assert t.write(f"{ML}/node", "9") == errno.EINVAL
    assert layouts(t) == ["layout.0"]
    # the next layout is still numbered 1
    t.add_range(0, 0, 0)
    assert layouts(t) == ["layout.0", "layout.1"]


def test_commit_moves_memory_and_counts(t):
    before = [node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)]
    assert t.read(f"{ML}/moved-pages") == "0\n"
    # give node 1 the upper half of node 0
    t.add_range(0x1000, 0x1fff, 1)
    assert t.write(f"{ML}/commit", "1\n") is None
    assert t.readlink(f"{ML}/current") == "layout.1"
    assert layouts(t) == ["layout.0", "layout.1"]
    moved = int(t.read(f"{ML}/moved-pages"))
    assert moved > 0
    assert int(t.read(f"{ML}/stats/moved-pages")) == moved
    assert int(t.read(f"{ML}/layout.1/stats/moved-pages")) == moved
    assert t.read(f"{ML}/layout.0/stats/moved-pages") == "0\n"
    assert int(t.read(f"{ML}/node_stats/1/moved-pages")) == moved
    assert t.read(f"{ML}/node_stats/0/moved-pages") == "0\n"
    # every possible node, as the kernel creates them (nr_node_ids)
    assert t.ls(f"{ML}/layout.1/node_stats") == ["0", "1", "2", "3"]
    # free blocks moved at once, pages on per-CPU lists when the commit drained them
    removed = int(t.read(f"{ML}/layout.1/node_stats/0/transplant-from-freelist-remove"))
    on_free = int(t.read(f"{ML}/layout.1/node_stats/1/transplant-on-free"))
    assert removed > 0 and removed + on_free == moved
    after = [node_meminfo(t.read(f"{NODE}/node{n}/meminfo")) for n in (0, 1)]
    assert after[1]["MemTotal"] - before[1]["MemTotal"] == moved * 4
    assert before[0]["MemTotal"] - after[0]["MemTotal"] == moved * 4
    # free pages moved with their range (and the commit drained the per-CPU lists into the
    # free lists, so node 1 may have gained a few more)
    assert after[1]["MemFree"] - before[1]["MemFree"] >= moved * 4
    examined = int(t.read(f"{ML}/stats/transplant-examined-pfn"))
    assert examined == 0x1000
    assert t.m.check() == []


def test_commit_without_pending_is_a_noop(t):
    assert t.write(f"{ML}/commit", "1") is None
    assert t.readlink(f"{ML}/current") == "layout.0"
    assert layouts(t) == ["layout.0"]


@pytest.mark.parametrize("value", [b"1", b"0\n", b"0x10", b"+7"])
def test_commit_and_clear_take_any_number(t, value):
    t.add_range(0x100, 0x1ff, 1)
    assert t.write(f"{ML}/clear", value) is None
    assert layouts(t) == ["layout.0"]
    t.add_range(0x100, 0x1ff, 1)
    assert t.write(f"{ML}/commit", value) is None
    assert t.readlink(f"{ML}/current") == "layout.2"


@pytest.mark.parametrize("value", [b"", b"anything at all\n", b"-1", b"1 ", b"1\n\n"])
def test_commit_and_clear_refuse_what_is_no_number(t, value):
    """simple_attr_write parses them with kstrtoull, as every other debugfs file."""
    t.add_range(0x100, 0x1ff, 1)
    assert t.write(f"{ML}/clear", value) == errno.EINVAL
    assert t.write(f"{ML}/commit", value) == errno.EINVAL
    assert layouts(t) == ["layout.0", "layout.1"]
    assert t.readlink(f"{ML}/current") == "layout.0"


def test_clear_discards_the_pending_layout(t):
    t.add_range(0x100, 0x1ff, 1)
    assert t.write(f"{ML}/start", "7") is None
    assert t.write(f"{ML}/clear", "1") is None
    assert layouts(t) == ["layout.0"]
    assert t.node(f"{ML}/layout.1") is None
    assert t.read(f"{ML}/start") == "0x0000000000000007\n"     # staged bounds stay
    assert t.write(f"{ML}/clear", "1") is None                 # nothing pending: fine


def test_stats_files(t):
    assert t.ls(f"{ML}/stats") == list(STAT_NAMES)
    assert t.ls(f"{ML}/layout.0/stats") == list(STAT_NAMES)
    for name in STAT_NAMES:
        node = t.node(f"{ML}/stats/{name}")
        assert node.mode == 0o400 and node.store is None
        assert t.read(f"{ML}/stats/{name}") == f"{t.m.stats[name]}\n"
    assert t.ls(f"{ML}/node_stats") == ["0", "1", "2", "3"]     # every possible node
    assert t.ls(f"{ML}/node_stats/0") == list(STAT_NAMES)
    assert t.ls(f"{ML}/layout.0/node_stats") == ["0", "1", "2", "3"]
    for name in ("4", "00", "-1", "x"):
        assert t.node(f"{ML}/node_stats/{name}") is None


def test_per_node_and_per_layout_stats_agree(t):
    t.add_range(0x0, 0x3fff, 2)         # all memory to node 2
    assert t.write(f"{ML}/commit", "1") is None
    # every possible node, counted or not, as the kernel's 0..nr_node_ids-1
    nids = ["0", "1", "2", "3"]
    assert t.ls(f"{ML}/node_stats") == nids
    assert t.ls(f"{ML}/layout.1/node_stats") == nids
    assert t.read(f"{ML}/node_stats/3/moved-pages") == "0\n"
    assert t.node(f"{ML}/node_stats/4") is None
    for name in STAT_NAMES:
        total = int(t.read(f"{ML}/stats/{name}"))
        per_layout = sum(int(t.read(f"{ML}/layout.{n}/stats/{name}")) for n in (0, 1))
        assert per_layout == total, name
    # the pages each node gained add up to the global count
    moved = int(t.read(f"{ML}/moved-pages"))
    assert sum(int(t.read(f"{ML}/node_stats/{n}/moved-pages")) for n in nids) == moved
    assert moved == node_meminfo(t.read(f"{NODE}/node2/meminfo"))["MemTotal"] // 4
    assert t.read(f"{NODE}/online") == "0-2\n"
    assert 2 in node_list(t.read(f"{NODE}/has_memory"))


def test_backlog_max(t):
    assert t.read(BACKLOG_MAX) == "8\n"
    assert t.write(BACKLOG_MAX, "2\n") is None
    assert t.read(BACKLOG_MAX) == "2\n"
    for i in range(1, 6):
        t.add_range(0x100 * i, 0x100 * i + 0xff, i % 2)
        assert t.write(f"{ML}/commit", "1") is None
    # current (5) and two retired layouts; the older ones are destroyed
    assert layouts(t) == ["layout.3", "layout.4", "layout.5"]
    assert t.node(f"{ML}/layout.0") is None
    t.add_range(0x1000, 0x10ff, 0)
    assert layouts(t) == ["layout.3", "layout.4", "layout.5", "layout.6"]
    # shrinking the backlog destroys at once
    assert t.write(BACKLOG_MAX, "0") is None
    assert layouts(t) == ["layout.5", "layout.6"]
    assert t.readlink(f"{ML}/current") == "layout.5"


@pytest.mark.parametrize("value, err", [
    (b"-1", errno.EINVAL), (b"", errno.EINVAL), (b"two", errno.EINVAL),
    (b"18446744073709551616", errno.ERANGE),
])
def test_backlog_max_rejects(t, value, err):
    assert t.write(BACKLOG_MAX, value) == err
    assert t.read(BACKLOG_MAX) == "8\n"


def test_backlog_max_uint_max(t):
    assert t.write(BACKLOG_MAX, "4294967295") is None
    assert t.read(BACKLOG_MAX) == "4294967295\n"


def test_a_destroyed_layout_directory_disappears(t):
    t.add_range(0x100, 0x1ff, 1)
    layout_dir = t.node(f"{ML}/layout.1")
    assert t.write(f"{ML}/clear", "1") is None
    assert t.node(f"{ML}/layout.1") is None
    # a directory handle taken before lists no range any more, and a file of it fails to
    # read with EIO, as debugfs does for a file removed while open
    assert list(layout_dir.names()) == ["stats", "node_stats"]
    with pytest.raises(OSError) as e:
        layout_dir.lookup("stats").lookup("moved-pages").read()
    assert e.value.errno == errno.EIO


def test_striped_layout_lookup(t):
    """Many ranges: each one is found by name."""
    for i, pfn in enumerate(range(0, 0x4000, 0x80)):
        assert t.write(f"{ML}/start", str(pfn)) is None
        assert t.write(f"{ML}/end", str(pfn + 0x7f)) is None
        assert t.write(f"{ML}/node", str(i % 3)) is None
    names = t.ls(f"{ML}/layout.1")
    assert len(names) == 0x80 + 2
    assert t.read(f"{ML}/layout.1/03f80-03fff") == f"{0x7f % 3}\n"
    assert t.write(f"{ML}/commit", "1") is None
    assert t.read(f"{NODE}/online") == "0-2\n"
    assert t.m.check() == []
