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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, force_unmount

from dnumafs import cli, client, daemon
from dnumafs.lib.bitmap import bitmap_list, bitmap_parselist
from dnumafs.machines import MODEL_BYTES_PER_PAGE, host_available_bytes, memory_needed, synthetic

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


@pytest.mark.parametrize("text, nbits", [
    ("0-99999999999", 8192), ("0-15000000", 8192), ("4", 4), ("0-2,3-4", 4), ("2-1", 8),
    ("1,,x", 8), ("\u00b2", 8),
])
def test_node_lists_bounded_before_expanding(text, nbits):
    with pytest.raises(ValueError):
        bitmap_parselist(text, nbits)


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
    for args in (["mount", "x", "--mem", "lots"], ["mount", "x", "--timeout", "-1"],
                 ["mount", "x", "--timeout", "nan"], ["stripe", "x", "0", "1", "0"],
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


@contextlib.contextmanager
def busy_mount(standin: Any) -> Iterator[tuple[Path, Path, int, subprocess.Popen[bytes]]]:
    """A standin mount (its path, mount point and daemon's pid) with a process inside it,
    killed at the end."""
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    busy = subprocess.Popen(["sleep", "60"], cwd=mnt / "test")
    try:
        yield mnt, mp, daemon.daemon_pid(mp), busy
    finally:
        busy.kill()
        busy.wait(10)


def test_umount_of_a_busy_live_mount_fails_unless_lazy(standin, run_dnumafs):
    with busy_mount(standin) as (mnt, mp, pid, busy):
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
    assert daemon.wait_exit(pid, 10)                     # gone with its last user


def test_umount_clears_what_a_daemon_killed_after_a_lazy_unmount_left(standin, run_dnumafs):
    with busy_mount(standin) as (mnt, mp, pid, _):
        assert run_dnumafs("umount", "--lazy", mnt).returncode == 0
        os.kill(pid, signal.SIGKILL)
        assert daemon.wait_exit(pid, 10)
    assert daemon.pidfile_path(mp).exists()             # the killed daemon's
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0 and "removed the pid file" in r.stdout, r.stderr
    assert not daemon.pidfile_path(mp).exists()
    r = run_dnumafs("umount", mnt)                      # and now there is nothing at all
    assert r.returncode == 1 and "not a mounted dnumafs" in r.stderr


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


@needs_numactl
def test_model_hardware_matches_numactl_for_node_ids_above_99(mount_dnumafs, run_dnumafs):
    """numactl prints numbers with "% 3d": node 100's row starts " 100:", not "100:"."""
    mnt = mount_dnumafs("--nodes", "101", "--possible-nodes", "101", "--mem", "512M",
                        "--cpus", "4")
    out = run_dnumafs("hardware", mnt).stdout
    assert "\n 100:  20 " in out and out == _numactl_hardware(mnt)


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


# --- hostile and careless use -----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
DNUMAFS_SCRIPT = Path(sys.executable).with_name("dnumafs")   # the installed console script


def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stderr


def test_the_daemon_never_imports_from_the_callers_directory(tmp_path, runtime_dir):
    """Modules planted in the caller's working directory are not imported by the daemon,
    and it leaves that directory for /."""
    planted = tmp_path / "planted"
    planted.mkdir()
    for name in ("attrs", "numpy", "dnumafs", "fuse"):
        (planted / f"{name}.py").write_text(
            f"open({str(planted / ('imported-' + name))!r}, 'w').close()\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run([DNUMAFS_SCRIPT, "mount", mnt, "--mem", "64M"], cwd=planted,
                           env=cli_env(), capture_output=True, text=True, timeout=90,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pid = daemon.daemon_pid(daemon.mountpoint_path(mnt))
        assert pid is not None and os.readlink(f"/proc/{pid}/cwd") == "/"
        assert "MemTotal" in (mnt / "sys/devices/system/node/node0/meminfo").read_text()
        assert sorted(p.name for p in planted.iterdir() if p.name.startswith("imported")) == []
    finally:
        force_unmount(mnt)


@needs_root
def test_umount_leaves_a_file_system_mounted_over_a_dnumafs_mount(standin, run_dnumafs):
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True,
                   timeout=30)
    try:
        (mnt / "data").write_text("kept\n")
        r = run_dnumafs("umount", mnt)
        assert r.returncode == 1 and "tmpfs file system is mounted over" in r.stderr, r.stderr
        r = run_dnumafs("umount", "--lazy", mnt)
        assert r.returncode == 1 and "tmpfs" in r.stderr
        assert (mnt / "data").read_text() == "kept\n"
        assert daemon.process_alive(pid) and daemon.daemon_pid(mp) == pid
    finally:
        subprocess.run(["umount", mnt], check=True, timeout=30)
    assert (mnt / "test/readonly").read_text() == "ro\n"          # served all along
    r = run_dnumafs("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert not daemon.is_mounted(mp) and daemon.wait_exit(pid, 10)


@pytest.mark.parametrize("plant", ["symlink", "loose mode", "other owner", "file"])
def test_an_unsafe_runtime_directory_is_refused(plant, tmp_path, monkeypatch, run_dnumafs):
    d = tmp_path / "rundir"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if plant == "symlink":
        d.symlink_to(elsewhere)
    elif plant == "loose mode":
        d.mkdir()
        d.chmod(0o755)
    elif plant == "other owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory away")
        d.mkdir(mode=0o700)
        os.chown(d, 65534, 65534)
    else:
        d.write_text("")
    monkeypatch.setenv("DNUMAFS_RUNTIME_DIR", str(d))
    with pytest.raises(daemon.DaemonError, match="runtime directory"):
        daemon.runtime_dir()
    (tmp_path / "mnt").mkdir()
    r = run_dnumafs("mount", tmp_path / "mnt", "--tree", "standin:build_root")
    assert r.returncode == 1 and "the runtime directory" in r.stderr, r.stderr
    _no_traceback(r)
    assert list(elsewhere.iterdir()) == []
    assert not daemon.is_mounted(daemon.mountpoint_path(tmp_path / "mnt"))


def test_the_runtime_directory_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("DNUMAFS_RUNTIME_DIR", str(tmp_path / "new"))
    d = daemon.runtime_dir()
    st = os.lstat(d)
    assert d == tmp_path / "new" and st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()


def _stop(pid: int) -> None:
    """SIGSTOP pid, and wait past the kernel's attribute cache so a lookup would reach it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not daemon.process_stopped(pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(1.5)                     # ATTR_TIMEOUT and ENTRY_TIMEOUT are 1 s


@pytest.mark.parametrize("lazy", [False, True])
def test_a_stopped_daemon_hangs_no_command(lazy, standin, run_dnumafs):
    """Every command answers (each is bounded by a subprocess timeout); umount detaches the
    mount and stops the daemon."""
    mnt = standin()
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    _stop(pid)
    try:
        for cmd in ("status", "hardware", "stripe", "all-to"):
            args = {"stripe": ["0", "1", "64"], "all-to": ["1"]}.get(cmd, [])
            r = run_dnumafs(cmd, mnt, *args, timeout=20)
            assert r.returncode == 1, r.stdout
            assert f"its daemon (pid {pid}) does not answer (stopped)" in r.stderr, r.stderr
        r = run_dnumafs("mount", mnt, "--tree", "standin:build_root", timeout=20)
        assert r.returncode == 1 and "already mounted" in r.stderr, r.stderr
        r = run_dnumafs("umount", *(["--lazy"] if lazy else []), mnt, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "did not answer" in r.stdout
        assert not daemon.is_mounted(mp) and daemon.wait_exit(pid, 10)
        assert not daemon.pidfile_path(mp).exists()
        assert os.listdir(mnt) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_two_mounts_raced_on_one_path_leave_the_winner_alone(tmp_path, runtime_dir):
    for attempt in range(3):
        mnt = tmp_path / f"mnt{attempt}"
        mnt.mkdir()
        argv = [sys.executable, "-m", "dnumafs", "mount", mnt, "--tree", "standin:build_root"]
        procs = [subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
                 for _ in range(2)]
        try:
            outs = [p.communicate(timeout=90) for p in procs]
            codes = sorted(p.returncode for p in procs)
            assert codes == [0, 1], outs
            out, err = next(o for o, p in zip(outs, procs) if p.returncode == 0)
            loser = next(o for o, p in zip(outs, procs) if p.returncode == 1)[1]
            _no_traceback(subprocess.CompletedProcess([], 1, "", loser))
            assert "already mounted" in loser or "still running or mounting" in loser, loser
            winner = int(out.split("daemon pid ")[1].split(",")[0])
            mp = daemon.mountpoint_path(mnt)
            assert daemon.daemon_pid(mp) == winner and daemon.answers(mp)
            assert (mnt / "test/readonly").read_text() == "ro\n"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            force_unmount(mnt)


@needs_root
def test_a_full_runtime_directory_is_reported(tmp_path, monkeypatch, run_dnumafs):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", full], check=True,
                   timeout=30)
    try:
        (full / "run").mkdir(mode=0o700)
        with contextlib.suppress(OSError), open(full / "filler", "wb") as f:
            f.write(b"x" * 65536)
        monkeypatch.setenv("DNUMAFS_RUNTIME_DIR", str(full / "run"))
        (tmp_path / "mnt").mkdir()
        r = run_dnumafs("mount", tmp_path / "mnt", "--tree", "standin:build_root")
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
        _no_traceback(r)
        assert os.listdir(full / "run") == []                        # nothing left behind
        assert not daemon.is_mounted(daemon.mountpoint_path(tmp_path / "mnt"))
    finally:
        subprocess.run(["umount", "-l", full], timeout=30)


@pytest.mark.parametrize("foreground", [False, True])
def test_a_log_in_a_missing_directory_is_reported(foreground, tmp_path, run_dnumafs):
    (tmp_path / "mnt").mkdir()
    r = run_dnumafs("mount", tmp_path / "mnt", "--tree", "standin:build_root",
                    "--log", tmp_path / "missing/log", *(["-f"] if foreground else []))
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
    assert str(tmp_path / "missing/log") in r.stderr
    _no_traceback(r)
    assert not daemon.is_mounted(daemon.mountpoint_path(tmp_path / "mnt"))


def test_a_machine_beyond_the_hosts_memory_is_refused_up_front(tmp_path, run_dnumafs,
                                                                runtime_dir):
    (tmp_path / "mnt").mkdir()
    avail = host_available_bytes()
    mem = avail // MODEL_BYTES_PER_PAGE * 4096 * 2      # twice what fits
    r = run_dnumafs("mount", tmp_path / "mnt", "--mem", str(mem), "--nodes", "2", timeout=30)
    assert r.returncode == 1, r.stderr
    need = memory_needed(synthetic(nodes=2, mem=mem)) >> 20
    assert f"needs about {need} MiB in the daemon" in r.stderr, r.stderr
    said = int(r.stderr.split("this host has ")[1].split(" MiB available")[0])
    assert abs(said - (avail >> 20)) < (avail >> 20) // 10      # MemAvailable moves a little
    _no_traceback(r)
    assert not daemon.is_mounted(daemon.mountpoint_path(tmp_path / "mnt"))
    assert not runtime_dir.exists() or os.listdir(runtime_dir) == []


def test_a_failed_background_mount_says_why_and_leaves_no_file(tmp_path, run_dnumafs,
                                                                runtime_dir):
    (tmp_path / "mnt").mkdir()
    r = run_dnumafs("mount", tmp_path / "mnt", "--tree", "standin:build_root", "--nodes", "9")
    assert r.returncode == 1, r.stderr
    assert "mount failed: the daemon exited with status 1" in r.stderr
    assert "impossible machine" in r.stderr.splitlines()[-1]          # the daemon's own word
    _no_traceback(r)
    assert os.listdir(runtime_dir) == []


def test_status_reads_only_the_ranges_it_prints(standin, run_dnumafs):
    mnt = standin("--mem", "64M")
    assert run_dnumafs("stripe", mnt, "0", "2", "64").returncode == 0     # 256 ranges
    reads: list[str] = []

    class Counting(client.MountedTree):
        def read(self, rel: str) -> str:
            reads.append(rel)
            return super().read(rel)

    text = client.status_text(Counting(mnt))
    assert "current layout: layout.1 (256 ranges)" in text and "... 240 more" in text
    ranges = [r for r in reads if r.startswith(f"{client.MEMLAYOUT_DIR}/layout.")]
    assert len(ranges) == client.STATUS_MAX_RANGES
    printed = [line for line in text.splitlines() if " -> node " in line]
    first = list(client.stripe_ranges(16384, 0, 2, 64))[:client.STATUS_MAX_RANGES]
    assert printed == [f"  {s:#07x}-{e:#07x} -> node {n}" for s, e, n in first]
