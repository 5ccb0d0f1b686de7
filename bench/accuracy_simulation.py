"""The statistics table: how often each figure the pages and metrics show holds the truth, on
simulated nights whose truth is known, regime by regime. Run by hand (never in CI), from the
repository root:

    python bench/accuracy_simulation.py [--windows 1000] [--seed 1] [--quick]

It drives the real functions (``review.accuracy.figures``, ``review.threshold.suggest``)
through the simulator in ``tests/simulation.py``, which ``tests/test_statistics.py`` runs in
a reduced form; the sections are its ``SECTIONS`` (add one there to add it here). Each row:
the regime, the simulated windows, the mean labels the figures rest on, each cell's share,
and its bounds; a row outside its bounds (allowing three standard errors of the simulation)
is marked ``OUT``. The output is recorded in ``docs/operating.md``.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from simulation import SECTIONS, within  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=1000, help="simulated windows a regime")
    parser.add_argument("--seed", type=int, default=1, help="seeds every regime's draws")
    parser.add_argument("--quick", action="store_true", help="the corner regimes alone")
    args = parser.parse_args()
    started, out = time.monotonic(), 0
    for title, rows in SECTIONS:
        print(f"\n## {title}\n")
        for row in rows(args.seed, args.windows, quick=args.quick):
            cells = "  ".join(
                f"{name} {'-' if share is None else f'{share:.3f}'}"
                for name, share in row.cells.items()
            )
            low, high = row.bounds
            bad = within(row)
            out += bool(bad)
            print(
                f"{row.regime:<52} windows {row.windows:>5}  labels {row.labels:>7.0f}  "
                f"{cells}  [{low}, {high or '-'}]{'  OUT' if bad else ''}",
                flush=True,
            )
    print(f"\n{out} rows out of bounds; {time.monotonic() - started:.0f} s")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
