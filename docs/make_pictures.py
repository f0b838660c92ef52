"""Make the README's pictures on real mounts: docs/map.svg and docs/plot.svg.

    .venv/bin/python docs/make_pictures.py

The map: an 8 GiB, 4-node machine striped over nodes 0-3 with the command line, a memory block
offlined and 64 hugepages on node 1 through the files, then `dnumafs map`. The plot: the
scenario examples/scenarios/vm-migrate.toml played on a mount of the machine it names, with
`dnumafs play --speed 0 --trace`, then `dnumafs plot` of that trace.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MEMORY = "sys/devices/system/memory"


def dnumafs(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "dnumafs", *map(str, args)], check=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dnumafs-docs-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        dnumafs("mount", mnt, "--nodes", "2", "--mem", "8G", "--possible-nodes", "4")
        try:
            dnumafs("stripe", mnt, 0, 3, 32768)
            (mnt / MEMORY / "memory40" / "state").write_text("offline")
            (mnt / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
             ).write_text("64")
            dnumafs("map", mnt, "-o", DOCS / "map.svg")
        finally:
            dnumafs("umount", mnt)
        scenario = DOCS.parent / "examples/scenarios/vm-migrate.toml"
        machine = tomllib.loads(scenario.read_text())["machine"]["mount"]
        trace = Path(tmp) / "vm-migrate.jsonl"
        dnumafs("mount", mnt, *machine)
        try:
            dnumafs("play", mnt, scenario, "--speed", "0", "--trace", trace)
        finally:
            dnumafs("umount", mnt)
        dnumafs("plot", trace, "-o", DOCS / "plot.svg")


if __name__ == "__main__":
    main()
