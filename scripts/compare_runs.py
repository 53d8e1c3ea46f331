"""Compare two run directories (or folders of runs): the same PNG bytes and the same metrics, wall-clock aside.

    python scripts/compare_runs.py outputs/before outputs/after

Prints each difference and exits 1, or "same results" and exits 0. See
treg_exp/reporting/compare.py for what is compared.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treg_exp.reporting.compare import differences  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    for root in (args.before, args.after):
        if not root.is_dir():
            print(f"error: {root} is not a directory", file=sys.stderr)
            return 2
    lines = differences(args.before, args.after)
    print("\n".join(lines) if lines else f"same results: {args.before} and {args.after}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
