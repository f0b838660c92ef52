"""Fixtures that mount dnumafs for real, through the command line, and always clean up.

    def test_something(mount_dnumafs):
        mnt = mount_dnumafs()                                  # the model, default machine
        mnt = mount_dnumafs("--nodes", "3", "--mem", "256M")   # any `dnumafs mount` options
        mnt = mount_dnumafs(tree="standin:build_root")         # tests/standin.py's tree
        (mnt / "sys/devices/system/node/node0/meminfo").read_text()

Each mount is a background `dnumafs mount` in its own mount point under tmp_path, with its pid
file and log in tmp_path; at teardown it is unmounted and its daemon killed, whatever the test
did (killed the daemon, left a file open, timed out).

Every test that uses these fixtures (or runtime_dir, for tests that start daemons themselves)
is marked `mount`, so `pytest -m "not mount"` runs the in-process tests alone.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from dnumafs import daemon

# In CI (CI=true) the property tests replay the same examples every run, so that a landing
# is never decided by the draw; locally each run draws new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
CLI_TIMEOUT = 90  # seconds for one command (a mount boots a machine)

# The fixtures that start daemons and mount: a test using any of them, directly or through
# another fixture, is marked `mount` (registered in setup.cfg).
MOUNT_FIXTURES = frozenset({"mount_dnumafs", "run_dnumafs", "runtime_dir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MOUNT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mount)


def cli_env() -> dict[str, str]:
    """The environment for `python -m dnumafs`: this checkout first, and tests/ for --tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_DIR), str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


def run_cli(*args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m dnumafs ARGS`, capturing its output."""
    return subprocess.run([sys.executable, "-m", "dnumafs", *map(str, args)],
                          env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def force_unmount(mnt: Path) -> None:
    """Unmount mnt and kill its daemon by every means, leaving nothing behind."""
    mp = daemon.mountpoint_path(mnt)
    pid = daemon.daemon_pid(mp)
    try:
        run_cli("umount", "--lazy", mp, timeout=30)
    except subprocess.TimeoutExpired:
        pass
    if daemon.is_mounted(mp):
        for cmd in (["fusermount", "-uz", str(mp)], ["umount", "-l", str(mp)]):
            try:
                subprocess.run(cmd, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if not daemon.is_mounted(mp):
                break
    if pid is not None and daemon.process_alive(pid):
        os.kill(pid, signal.SIGKILL)
        daemon.wait_exit(pid, 10)


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pid files and default logs go to tmp_path, for the tests and the daemons they start."""
    d = tmp_path / "run"
    monkeypatch.setenv("DNUMAFS_RUNTIME_DIR", str(d))
    return d


@pytest.fixture
def run_dnumafs(runtime_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli, with pid files and logs in the test's runtime directory."""
    return run_cli


@pytest.fixture
def mount_dnumafs(tmp_path: Path, runtime_dir: Path
                  ) -> Iterator[Callable[..., Path]]:
    """A function mount(*args, tree=None, mnt=None) -> Path that mounts dnumafs in the
    background through the command line (args are `dnumafs mount` options; tree is a
    MODULE:FUNCTION tree to serve instead of the model; mnt an existing empty directory to
    mount on) and returns the mount point. Everything mounted is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(*args: str, tree: str | None = None, mnt: Path | None = None) -> Path:
        if mnt is None:
            mnt = tmp_path / f"mnt{len(mounted)}"
            mnt.mkdir()
        mounted.append(mnt)
        extra = ["--tree", tree] if tree else []
        r = run_cli("mount", mnt, *args, *extra, "--log", tmp_path / f"{mnt.name}.log")
        assert r.returncode == 0, f"mount failed:\n{r.stdout}{r.stderr}"
        return mnt

    yield mount
    for mnt in reversed(mounted):
        force_unmount(mnt)
        assert not daemon.is_mounted(daemon.mountpoint_path(mnt))


@pytest.fixture
def standin(mount_dnumafs: Callable[..., Path]) -> Callable[..., Path]:
    """mount_dnumafs serving tests/standin.py's tree (the toy machine takes the same options)."""
    def mount(*args: str, mnt: Path | None = None) -> Path:
        return mount_dnumafs(*args, tree="standin:build_root", mnt=mnt)
    return mount


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail loudly, after detaching it, if any test left a dnumafs mount under its tmp dirs."""
    base = os.path.join(tmp_path_factory.getbasetemp(), "")    # not another run's base-2
    yield
    left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f" - {daemon.FSTYPE} " in line and line.split()[4].startswith(base)]
    for mp in left:
        force_unmount(Path(mp))
    procs = daemons_under(base)
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"mounts left behind: {left}"
    assert not procs, f"daemons left behind: {procs}"


def daemons_under(base: str) -> dict[int, str]:
    """`dnumafs mount` processes this test run started (pid -> argv): their mount point or
    their runtime directory (every test's is under tmp_path) is under base. Daemons of other
    runs on the machine are left alone. A daemon runs `python -I -c CODE mount ...`, whose
    CODE imports dnumafs."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            env = (d / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "mount" not in argv or not any("dnumafs" in a for a in argv[:4]):
            continue
        if any(a.startswith(base) for a in argv) or any(
                e.startswith(f"DNUMAFS_RUNTIME_DIR={base}") for e in env):
            found[int(d.name)] = " ".join(argv)
    return found
