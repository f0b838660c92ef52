"""The command line: mount and unmount for real (alive, killed, busy, signalled), and the
commands that drive and read the files, on the stand-in tree and on the model."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env

from dnumafs import cli, client, daemon
from dnumafs.bitmap import bitmap_list, bitmap_parselist

# --- argument parsing and pure functions --------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("64K", 64 << 10), ("512M", 512 << 20), ("1G", 1 << 30), ("1g", 1 << 30),
    ("128MiB", 128 << 20), ("2GB", 2 << 30), ("1T", 1 << 40), ("100B", 100),
])
def test_parse_size(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1G", "1X", "1 G B", "0x10"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


@pytest.mark.parametrize("text, ids", [
    ("0\n", [0]), ("0-2,4\n", [0, 1, 2, 4]), ("\n", []), ("1,3-4,7", [1, 3, 4, 7]),
])
def test_node_lists_round_trip(text, ids):
    assert bitmap_parselist(text) == ids
    assert bitmap_list(ids) == text.strip()


def test_stripe_ranges_cover_every_pfn_once_in_turn():
    ranges = list(client.stripe_ranges(1000, 1, 3, 256))
    assert ranges == [(0, 255, 1), (256, 511, 2), (512, 767, 3), (768, 999, 1)]
    ranges = list(client.stripe_ranges(10, 2, 2, 1))
    assert [s for s, _, _ in ranges] == list(range(10)) and {n for _, _, n in ranges} == {2}


def test_machine_config_from_options():
    parse = cli.build_parser().parse_args
    assert cli._machine_config(parse(["mount", "m"])) == {}
    assert cli._machine_config(parse(["mount", "m", "--nodes", "3", "--mem", "96M"])) == \
        {"nodes": 3, "mem": 96 << 20}
    assert cli._machine_config(parse(["mount", "m", "--node-mem", "32M,64M"])) == \
        {"nodes": 2, "mem": 96 << 20, "node_mem": [32 << 20, 64 << 20]}
    with pytest.raises(cli.CliError):
        cli._machine_config(parse(["mount", "m", "--nodes", "3", "--node-mem", "32M,64M"]))
    with pytest.raises(cli.CliError):
        cli._machine_config(parse(["mount", "m", "--mem", "1G", "--node-mem", "32M,64M"]))


def test_usage_errors_exit_2(run_dnumafs):
    for args in (["mount", "x", "--mem", "lots"], ["stripe", "x", "0", "1", "0"],
                 ["all-to", "x", "-1"], ["frobnicate"], []):
        r = run_dnumafs(*args)
        assert r.returncode == 2, args


# --- mount and umount -------------------------------------------------------------------------

def _dead(mnt: Path) -> bool:
    """Whether mnt is a mount nobody serves any more (readdir is never cached)."""
    try:
        os.listdir(mnt)
    except OSError as e:
        return e.strerror == "Transport endpoint is not connected"
    return False


def test_mount_then_umount_leaves_nothing(standin, run_dnumafs):
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    assert pid is not None and daemon.is_mounted(mp) and os.path.ismount(mnt)
    assert (mnt / "test/readonly").read_text() == "ro\n"
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert not daemon.is_mounted(mp) and not os.path.ismount(mnt)
    assert not daemon.process_alive(pid)
    assert daemon.daemon_pid(mp) is None and not daemon.pidfile_path(mp).exists()
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 1 and "not a mounted dnumafs" in r.stderr


def test_umount_after_kill_9_removes_the_dead_mount(standin, run_dnumafs):
    mnt = standin()
    pid = daemon.daemon_pid(daemon.mountpoint_path(mnt))
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_exit(pid, 10)
    assert _dead(mnt)
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert not daemon.is_mounted(daemon.mountpoint_path(mnt)) and os.listdir(mnt) == []


def test_umount_after_kill_9_while_busy(standin, run_dnumafs):
    mnt = standin()
    pid = daemon.daemon_pid(daemon.mountpoint_path(mnt))
    fd = os.open(mnt / "test/readonly", os.O_RDONLY)      # keeps the mount busy
    try:
        os.kill(pid, signal.SIGKILL)
        assert daemon.wait_exit(pid, 10)
        r = run_dnumafs("umount", mnt)                               # dead: detached lazily
        assert r.returncode == 0, r.stderr
        assert not daemon.is_mounted(daemon.mountpoint_path(mnt))
    finally:
        with contextlib.suppress(OSError):   # closed, but its flush finds nobody: ENOTCONN
            os.close(fd)


def test_umount_of_a_busy_live_mount_fails_unless_lazy(standin, run_dnumafs):
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    busy = subprocess.Popen(["sleep", "60"], cwd=mnt / "test")
    try:
        r = run_dnumafs("umount", mnt)
        assert r.returncode == 1 and "busy" in r.stderr.lower(), r.stderr
        assert daemon.is_mounted(mp) and daemon.process_alive(pid)   # still served
        assert (mnt / "test/readonly").read_text() == "ro\n"
        r = run_dnumafs("umount", "--lazy", mnt)
        assert r.returncode == 0, r.stderr
        assert not daemon.is_mounted(mp) and not os.path.ismount(mnt)
        assert "serves the processes still using it" in r.stdout
        assert daemon.process_alive(pid)                 # for the process inside
        assert Path(f"/proc/{busy.pid}/cwd", "readonly").read_text() == "ro\n"
    finally:
        busy.kill()
        busy.wait(10)
    assert daemon.wait_exit(pid, 10)                     # gone with its last user


def test_sigterm_unmounts_cleanly(standin):
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    os.kill(pid, signal.SIGTERM)
    assert daemon.wait_exit(pid, 10)
    assert not daemon.is_mounted(mp) and not daemon.pidfile_path(mp).exists()


def test_foreground_mount_stops_on_sigint(tmp_path, runtime_dir):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "dnumafs", "mount", mnt, "--foreground",
                             "--tree", "standin:build_root"], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not daemon.answers(mnt, 5):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert (mnt / "test/readonly").read_text() == "ro\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "serving" in out and "unmounted" in out
        assert not daemon.is_mounted(daemon.mountpoint_path(mnt))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if daemon.is_mounted(daemon.mountpoint_path(mnt)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def test_mount_errors_are_clear(standin, run_dnumafs, tmp_path):
    r = run_dnumafs("mount", tmp_path / "missing")
    assert r.returncode == 1 and "not a directory" in r.stderr
    mnt = standin()
    r = run_dnumafs("mount", mnt, "--tree", "standin:build_root")
    assert r.returncode == 1 and "already mounted" in r.stderr
    (tmp_path / "other").mkdir()
    r = run_dnumafs("mount", tmp_path / "other", "--tree", "standin:build_root", "--nodes", "9")
    assert r.returncode == 1
    assert "mount failed" in r.stderr and "impossible machine" in r.stderr
    assert not daemon.is_mounted(daemon.mountpoint_path(tmp_path / "other"))
    r = run_dnumafs("mount", tmp_path / "other", "--tree", "nowhere:build_root")
    assert r.returncode == 1 and "nowhere" in r.stderr


def test_mount_that_does_not_answer_in_time_is_abandoned(run_dnumafs, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run_dnumafs("mount", mnt, "--tree", "standin:slow_root", "--timeout", "1")
    assert r.returncode == 1 and "did not answer within 1 s" in r.stderr, r.stderr
    mp = daemon.mountpoint_path(mnt)
    assert daemon.daemon_pid(mp) is None and not daemon.is_mounted(mp)


def test_mount_on_a_non_empty_directory_reports_libfuse(run_dnumafs, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full/file").write_text("x")
    r = run_dnumafs("mount", tmp_path / "full", "--tree", "standin:build_root")
    assert r.returncode == 1 and "not empty" in r.stderr, r.stderr


# --- commands over the files ------------------------------------------------------------------

def test_commands_refuse_what_is_not_a_mount(run_dnumafs, tmp_path):
    for args in (["status"], ["hardware"], ["all-to", "1"], ["stripe", "0", "1", "64"]):
        r = run_dnumafs(args[0], tmp_path, *args[1:])
        assert r.returncode == 1 and "not a mounted dnumafs" in r.stderr


def _layout(mnt: Path, name: str | None = None) -> list[tuple[int, int, int]]:
    tree = client.MountedTree(mnt)
    return tree.layout_ranges(name or tree.current_layout())


def test_stripe_writes_one_advancing_range_per_stripe(standin, run_dnumafs):
    mnt = standin("--mem", "64M")            # 16384 pages
    r = run_dnumafs("stripe", mnt, "0", "2", "1000")
    assert r.returncode == 0, r.stderr
    assert "committed 17 ranges" in r.stdout and "layout.1" in r.stdout
    ranges = _layout(mnt)
    assert ranges == list(client.stripe_ranges(16384, 0, 2, 1000))
    assert ranges[-1] == (16000, 16383, 1)
    assert client.MountedTree(mnt).node_ids() == [0, 1, 2]       # node 2 came online
    r = run_dnumafs("status", mnt)
    assert "current layout: layout.1 (17 ranges)" in r.stdout and "... 1 more" in r.stdout
    assert "online nodes:   0-2" in r.stdout


def test_stripe_replaces_a_pending_layout(standin, run_dnumafs):
    mnt = standin()
    ml = mnt / "sys/kernel/debug/memlayout"
    subprocess.run(["bash", "-c", f"cd {ml} && echo 0 > start && echo 5 > end && echo 1 > node"],
                   check=True, timeout=30)
    assert "pending layout: layout.1" in run_dnumafs("status", mnt).stdout
    r = run_dnumafs("stripe", mnt, "1", "1", "4096")
    assert r.returncode == 0, r.stderr
    assert "layout.2" in r.stdout and {n for _, _, n in _layout(mnt)} == {1}


def test_all_to_a_new_node(standin, run_dnumafs):
    mnt = standin("--mem", "64M")
    r = run_dnumafs("all-to", mnt, "3")
    assert r.returncode == 0, r.stderr
    assert _layout(mnt) == [(0, 16383, 3)]
    r = run_dnumafs("hardware", mnt)
    assert "available: 3 nodes (0-1,3)" in r.stdout
    assert "node 3 size: 64 MB" in r.stdout and "node 0 size: 0 MB" in r.stdout
    r = run_dnumafs("status", mnt)
    assert "moved pages:    16384" in r.stdout and "node 3: 64 MB" in r.stdout


def test_all_to_an_impossible_node(standin, run_dnumafs):
    mnt = standin("--possible-nodes", "4")
    r = run_dnumafs("all-to", mnt, "4")
    assert r.returncode == 1 and "node 4 is not possible (possible nodes: 0-3)" in r.stderr
    r = run_dnumafs("stripe", mnt, "2", "1", "64")
    assert r.returncode == 1 and "FIRST" in r.stderr
    assert _layout(mnt) == _layout(mnt, "layout.0")


def test_a_rejected_write_is_reported(standin, run_dnumafs):
    mnt = standin()
    ml = mnt / "sys/kernel/debug/memlayout"
    with client.MemlayoutWriter(client.MountedTree(mnt)) as w:
        w.add_range(0, 9, 1)
        with pytest.raises(client.ClientError, match="node: writing 1: File exists"):
            w.add_range(5, 20, 1)
        w.write("clear", 1)
    assert sorted(os.listdir(ml)).count("layout.1") == 0


def _numactl_hardware(mnt: Path) -> str:
    """numactl --hardware with mnt's node and cpu trees bound over the real ones, in a
    private mount namespace."""
    script = ("set -e; for d in node cpu; do mount --bind \"$1/sys/devices/system/$d\" "
              "/sys/devices/system/$d; done; numactl --hardware")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script,
                        "-", mnt], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


needs_numactl = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("numactl") or not shutil.which("unshare"),
    reason="needs root, numactl and unshare")


@needs_numactl
def test_hardware_prints_what_numactl_prints(standin, run_dnumafs):
    mnt = standin("--nodes", "3", "--cpus", "5", "--mem", "96M")
    assert run_dnumafs("hardware", mnt).stdout == _numactl_hardware(mnt)
    assert run_dnumafs("stripe", mnt, "0", "3", "100").returncode == 0
    assert run_dnumafs("hardware", mnt).stdout == _numactl_hardware(mnt)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_run_shows_the_mount_at_the_real_paths(standin, run_dnumafs):
    mnt = standin("--nodes", "3", "--cpus", "3")
    host_online = Path("/sys/devices/system/node/online").read_text()
    r = run_dnumafs("run", mnt, "--", "cat", "/sys/devices/system/node/online")
    assert r.returncode == 0 and r.stdout == "0-2\n", r.stderr
    assert run_dnumafs("run", mnt, "sh", "-c", "exit 7").returncode == 7
    r = run_dnumafs("run", mnt, "--")
    assert r.returncode == 1 and "no command" in r.stderr
    assert Path("/sys/devices/system/node/online").read_text() == host_online  # no leak


# --- on the model -----------------------------------------------------------------------------

@pytest.fixture
def model_mount(mount_dnumafs):
    pytest.importorskip("dnumafs.files")
    return mount_dnumafs("--mem", "256M", "--cpus", "4")


@needs_numactl
def test_model_hardware_matches_numactl_through_commits(model_mount, run_dnumafs):
    mnt = model_mount
    assert run_dnumafs("hardware", mnt).stdout == _numactl_hardware(mnt)
    for args in (["stripe", mnt, "0", "2", "512"], ["all-to", mnt, "1"]):
        assert run_dnumafs(*args).returncode == 0
        assert run_dnumafs("hardware", mnt).stdout == _numactl_hardware(mnt)


def test_model_stripe_all_to_and_status(model_mount, run_dnumafs):
    mnt = model_mount
    tree = client.MountedTree(mnt)
    max_pfn = tree.max_pfn()
    assert max_pfn == (256 << 20) // 4096
    r = run_dnumafs("stripe", mnt, "0", "3", "1024")
    assert r.returncode == 0, r.stderr
    assert _layout(mnt) == list(client.stripe_ranges(max_pfn, 0, 3, 1024))
    assert tree.node_ids() == [0, 1, 2, 3]
    r = run_dnumafs("all-to", mnt, "2")
    assert r.returncode == 0, r.stderr
    assert _layout(mnt) == [(0, max_pfn - 1, 2)]
    assert tree.max_pfn() == max_pfn          # the highest pfn whatever the layout
    r = run_dnumafs("status", mnt)
    assert r.returncode == 0 and "current layout: layout.2 (1 range)" in r.stdout
    moved = int(r.stdout.split("moved pages:")[1])
    assert moved > 0


def test_the_command_line_starts_no_thread():
    """`dnumafs run` must stay single-threaded to enter a user namespace: importing the
    command line must not load numpy, whose thread pool starts at import."""
    r = subprocess.run([sys.executable, "-c", "import os, sys, dnumafs.cli; "
                        "print(len(os.listdir('/proc/self/task')), 'numpy' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["1", "False"], r.stdout + r.stderr
