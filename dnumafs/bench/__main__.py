"""`python -m dnumafs.bench`: run the bench and print its table (see dnumafs.bench)."""
from __future__ import annotations

import argparse

import dnumafs.bench

from .model import bench_big, bench_seed, bench_transplant
from .report import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnumafs.bench",
                                     description=dnumafs.bench.__doc__)
    parser.add_argument("--gib", type=int, default=64, help="size of the big machine")
    parser.add_argument("--model-only", action="store_true",
                        help="only the model rows (no mount, no LXCFS)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the daemon's read path with py-spy (bench extra)")
    args = parser.parse_args(argv)
    rows = bench_seed() + bench_big(args.gib) + bench_transplant()
    notes: list[str] = []
    if not args.model_only:
        from . import fs, machines, pictures, workload
        rows += fs.run_all(args.gib, notes, profile=args.profile)
        rows += machines.run_all(notes)
        rows += pictures.bench_map(args.gib)
        rows += workload.run_all(notes)
    print(table(rows))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
