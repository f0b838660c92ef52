"""The commands that write through MNT's files refuse anything but a dnumafs mount at the top
of MNT, before their first write: the host's / (its real /sys and /proc), a plain directory
that looks like one, a tmpfs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import run_cli

NODE = "sys/devices/system/node"


def fake_tree(root: Path) -> Path:
    """A plain directory with the files a writer reads and writes, as a dnumafs mount has."""
    for rel, text in ((f"{NODE}/possible", "0-1\n"), (f"{NODE}/online", "0-1\n"),
                      ("sys/kernel/debug/memlayout/max_pfn", "1000\n"),
                      ("sys/kernel/debug/memlayout/commit", "0\n"),
                      ("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0\n")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def commands(tmp_path: Path, mnt: Path) -> list[list[str]]:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[step]]\nat = 0\ndo = "wait"\n\n'
                        '[[step]]\nat = 0\ndo = "all-to"\nnode = 1\n')
    return [["play", str(mnt), str(scenario), "--speed", "0"],
            ["stripe", str(mnt), "0", "1", "16"], ["all-to", str(mnt), "1"]]


@pytest.mark.parametrize("where", ["/", "plain", "/dev/shm"])
def test_writers_refuse_what_is_not_a_dnumafs_mount(tmp_path, where):
    if where == "plain":
        mnt = fake_tree(tmp_path / "plain")
    else:
        mnt = Path(where)
    if where == "/dev/shm" and not Path("/dev/shm").is_mount():
        pytest.skip("no tmpfs at /dev/shm")
    before = digest(mnt) if where == "plain" else None
    for argv in commands(tmp_path, mnt):
        r = run_cli(*argv)
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert "not a mounted dnumafs file system (" in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stdout == "", (argv, r.stdout)
    if before is not None:
        assert digest(mnt) == before
