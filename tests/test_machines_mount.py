"""A snapshot's files through a real dnumafs mount: the passthrough alone, the overlay over an
empty model, and the overlay over the description's figures; lstopo compares each with the
snapshot itself."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from machines_helpers import ARCHIVES, MACHINES_DIR, NAMES, SNAPSHOT_ENV, shared_snapshots

from dnumafs.files.snapshot import MAX_FILE_BYTES, model_owns, overlay, snapshot_root
from dnumafs.machines import Snapshot
from dnumafs.machines.lstopo import LSTOPO, lstopo, lstopo_diff
from dnumafs.vfs.tree import Attr, Dir, DynamicDir, StaticDir, Symlink, resolve

pytestmark = [
    pytest.mark.skipif(not ARCHIVES, reason=f"no snapshots in {MACHINES_DIR}"),
    pytest.mark.skipif(shutil.which(LSTOPO) is None, reason=f"{LSTOPO} not installed"),
]


@pytest.fixture(scope="module")
def snapshots() -> Iterator[dict[str, Snapshot]]:
    with shared_snapshots() as opened:
        yield opened


@pytest.fixture
def mount_tree(mount_dnumafs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
               ) -> Callable[[str, Snapshot], Path]:
    """mount(tree, snapshot): serve machines_helpers.TREE over the snapshot."""
    def mount(tree: str, snap: Snapshot) -> Path:
        monkeypatch.setenv(SNAPSHOT_ENV, str(snap.root))
        return mount_dnumafs(tree=f"machines_helpers:{tree}")
    return mount


def _walk(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under root/sys and root/proc: path -> (kind, content or link target)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for top in ("sys", "proc"):
        for dirpath, dirnames, filenames in os.walk(root / top):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                rel = str(p.relative_to(root))
                if p.is_symlink():
                    out[rel] = ("link", os.readlink(p))
                elif p.is_dir():
                    out[rel] = ("dir", "")
                else:
                    try:
                        out[rel] = ("file", p.read_bytes())
                    except OSError as e:
                        out[rel] = ("error", errno.errorcode[e.errno or 0])
    return out


# --- the helper itself -----------------------------------------------------------------------

def test_lstopo_diff_sees_the_same_and_the_different(snapshots: dict[str, Snapshot]) -> None:
    a, b = (snapshots[n].root for n in NAMES[:2])
    assert lstopo_diff(a, a) == {}
    diff = lstopo_diff(a, b)
    assert set(diff) == {"verbose", "distances"} or set(diff) == {"verbose"}
    assert diff["verbose"].startswith(f"--- {a} (verbose)")
    assert "NUMANode" in lstopo(a, "-v", "--no-io")


# --- the passthrough alone ---------------------------------------------------------------------

@pytest.mark.parametrize("archive", NAMES)
def test_passthrough_serves_the_snapshot_as_it_was(snapshots: dict[str, Snapshot],
                                                    mount_tree: Callable[[str, Snapshot], Path],
                                                    archive: str) -> None:
    snap = snapshots[archive]
    mnt = mount_tree("passthrough_root", snap)
    assert lstopo_diff(snap.root, mnt) == {}
    served, original = _walk(mnt), _walk(snap.root)
    # Text files, links and directories as they were; a file that is not text (a PCI config
    # space) cannot be an attribute, and says so with EIO.
    for rel, (kind, content) in original.items():
        if kind == "file" and isinstance(content, bytes) and not _is_text(content):
            assert served[rel] == ("error", "EIO"), rel
        else:
            assert served[rel] == (kind, content), rel
    assert set(served) == set(original)


def _is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_passthrough_is_read_only(snapshots: dict[str, Snapshot],
                                  mount_tree: Callable[[str, Snapshot], Path]) -> None:
    snap = snapshots[NAMES[0]]
    mnt = mount_tree("passthrough_root", snap)
    cpuinfo = mnt / "proc/cpuinfo"
    before = (snap.root / "proc/cpuinfo").read_bytes()
    assert oct(cpuinfo.stat().st_mode & 0o777) == oct(0o444)
    r = subprocess.run(["sh", "-c", f"echo 1 > {cpuinfo}"], capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    with pytest.raises(PermissionError):     # at the open, or (page cache: no open) the write
        fd = os.open(cpuinfo, os.O_WRONLY)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
    with pytest.raises(PermissionError):
        (mnt / "proc/new").write_text("1")
    assert (snap.root / "proc/cpuinfo").read_bytes() == before == cpuinfo.read_bytes()


# --- the overlay -------------------------------------------------------------------------------

@pytest.mark.parametrize("archive", NAMES)
def test_overlay_without_a_model_serves_only_what_the_model_does_not_own(
        snapshots: dict[str, Snapshot], mount_tree: Callable[[str, Snapshot], Path],
        archive: str) -> None:
    snap = snapshots[archive]
    mnt = mount_tree("unowned_root", snap)
    served, original = _walk(mnt), _walk(snap.root)
    for rel, entry in original.items():
        parts = tuple(rel.split("/"))
        hidden = any(model_owns(parts[:i]) for i in range(1, len(parts) + 1))
        if hidden:
            assert rel not in served
        elif entry[0] != "file" or _is_text(entry[1]):  # type: ignore[arg-type]
            assert served[rel] == entry, rel
    assert set(served) <= set(original)


@pytest.mark.parametrize("archive", NAMES)
def test_overlay_over_the_description_looks_like_the_snapshot_to_lstopo(
        snapshots: dict[str, Snapshot], mount_tree: Callable[[str, Snapshot], Path],
        archive: str) -> None:
    """What the model must serve can be made from the MachineDescription alone: a tree of
    its figures under the snapshot's files shows lstopo the same machine."""
    snap = snapshots[archive]
    mnt = mount_tree("described_root", snap)
    assert lstopo_diff(snap.root, mnt) == {}
    # lscpu needs cpu/possible, which old snapshots lack (the model always has it).
    if shutil.which("lscpu") and (snap.root / "sys/devices/system/cpu/possible").exists():
        assert _lscpu(mnt) == _lscpu(snap.root)


def _lscpu(root: Path) -> list[tuple[str, str]]:
    """lscpu's fields, without its Vulnerability lines: lscpu reads only the entries of
    cpu/vulnerabilities/ whose readdir type says regular file, and the FUSE adapter gives no
    type (nor do the columns' widths, which those lines set, count here)."""
    r = subprocess.run(["lscpu", "--sysroot", str(root)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    fields = [line.partition(":") for line in r.stdout.splitlines()]
    return [(key, value.strip()) for key, _, value in fields
            if not key.startswith("Vulnerability")]


def _attr(text: str) -> Attr:
    return Attr(show=lambda: text)


def test_overlay_union_and_ownership(tmp_path: Path) -> None:
    """Without a mount: the model wins, the snapshot fills in, owned names never come from
    the snapshot, and nodeN/ exists only while the model has it."""
    node = tmp_path / "sys/devices/system/node"
    for nid in (0, 1):
        (node / f"node{nid}/access0").mkdir(parents=True)
        (node / f"node{nid}/meminfo").write_text(f"snapshot {nid}\n")
        (node / f"node{nid}/distance").write_text("10\n")
        (node / f"node{nid}/access0/read_latency").write_text("5\n")
    (node / "possible").write_text("0-1\n")
    (node / "has_generic_initiator").write_text("\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("cpu\n")
    (tmp_path / "proc/meminfo").write_text("stale\n")
    (tmp_path / "sys/class").mkdir()
    (tmp_path / "sys/class/dmi").symlink_to("../devices/virtual/dmi")
    (tmp_path / "home").mkdir()

    online = {0}
    model_node = DynamicDir(
        names=lambda: [f"node{n}" for n in sorted(online)],
        lookup=lambda name: StaticDir({"meminfo": _attr(f"model {name}\n")})
        if name in {f"node{n}" for n in online} else None)
    model = StaticDir({"sys": StaticDir({"devices": StaticDir({"system": StaticDir({
        "node": model_node})})}),
        "proc": StaticDir({"zoneinfo": _attr("zones\n")})})
    root = overlay(model, tmp_path)

    def show(path: str) -> str:
        n = resolve(root, path)
        assert isinstance(n, Attr) and n.show is not None, path
        return n.show()

    assert sorted(root.names()) == ["proc", "sys"]            # nothing else of the directory
    nd = resolve(root, "/sys/devices/system/node")
    assert isinstance(nd, Dir)
    assert list(nd.names()) == ["node0", "has_generic_initiator"]
    assert show("/sys/devices/system/node/node0/meminfo") == "model node0\n"
    assert show("/sys/devices/system/node/node0/access0/read_latency") == "5\n"
    assert resolve(root, "/sys/devices/system/node/node0/distance") is None   # owned
    assert resolve(root, "/sys/devices/system/node/possible") is None          # owned
    assert resolve(root, "/sys/devices/system/node/node1") is None             # not online
    online.add(1)
    assert "node1" in list(nd.names())
    assert show("/sys/devices/system/node/node1/meminfo") == "model node1\n"
    n0 = resolve(root, "/sys/devices/system/node/node0")
    assert isinstance(n0, Dir) and sorted(n0.names()) == ["access0", "meminfo"]
    assert sorted(resolve(root, "/proc").names()) == ["cpuinfo", "zoneinfo"]  # type: ignore
    assert resolve(root, "/proc/meminfo") is None
    link = resolve(root, "/sys/class/dmi")
    assert isinstance(link, Symlink) and link.target() == "../devices/virtual/dmi"
    assert resolve(root, "/home") is None
    assert resolve(snapshot_root(tmp_path), "/sys/devices/system/node/possible") is not None


def test_passthrough_files_that_cannot_be_attributes(tmp_path: Path) -> None:
    """A file too big to be a sysfs or procfs file, one that is not text, and a fifo (which
    would block the daemon) are not served as they are."""
    (tmp_path / "proc").mkdir()
    with open(tmp_path / "proc/huge", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    (tmp_path / "proc/config").write_bytes(b"\x86\x80\x00")
    os.mkfifo(tmp_path / "proc/fifo")
    root = snapshot_root(tmp_path)
    for name, code in (("huge", errno.EFBIG), ("config", errno.EIO)):
        node = resolve(root, f"/proc/{name}")
        assert isinstance(node, Attr) and node.show is not None
        with pytest.raises(OSError) as e:
            node.show()
        assert e.value.errno == code
    assert resolve(root, "/proc/fifo") is None
    proc = resolve(root, "/proc")
    assert isinstance(proc, Dir) and list(proc.names()) == ["config", "huge"]
