"""`python -m tests.sim`: run or replay seeded schedules (see tests/sim/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys

from .runner import Pool, Result, run_seed, run_seeds
from .world import Lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seed", type=int, help="run (replay) exactly this seed")
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed of --seeds")
    parser.add_argument("-j", "--jobs", type=int, default=min(os.cpu_count() or 1, 4),
                        help="processes running --seeds (a --seed always runs in this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print a step trace")
    args = parser.parse_args(argv)
    with Lab.start() as lab:
        if args.seed is not None:
            result = run_seed(lab, args.seed, print if args.verbose else None)
            print(result.report() if not result.ok else f"seed {args.seed}: ok "
                  f"({result.steps} steps, faults {dict(result.faults)})")
            return 0 if result.ok else 1

        def progress(r: Result) -> None:
            if not r.ok:
                print(r.report(), flush=True)
            elif args.verbose:
                print(f"seed {r.seed}: ok", flush=True)

        pool = Pool(lab, args.jobs) if args.jobs > 1 else None
        try:
            summary = run_seeds(lab, range(args.start, args.start + args.seeds), progress, pool)
        finally:
            if pool is not None:
                pool.close()
        print(summary.report())
        return 0 if not summary.failed else 1


if __name__ == "__main__":
    sys.exit(main())
