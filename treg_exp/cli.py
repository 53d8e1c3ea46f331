"""The ``treg-exp`` console script: ``treg-exp score RUN_DIR [...]``, ``treg-exp table SWEEP_DIR [...]``,
``treg-exp status SWEEP_DIR`` and ``treg-exp plan OVERRIDES...`` (what a run or sweep would cost, running nothing;
runs themselves start with ``python run.py``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``treg-exp <command>``; returns the exit status (2 for a user error)."""
    from treg_exp.reporting import make_table, score, status

    parser = argparse.ArgumentParser(prog="treg-exp")
    commands = parser.add_subparsers(dest="command", required=True)
    score.build_parser(commands.add_parser("score", help="recompute the metrics of finished runs from their files"))
    make_table.build_parser(commands.add_parser("table", help="pool runs into the paper's table and an HTML report"))
    plan = commands.add_parser("plan", help="jobs, images, network evaluations and hours of run.py -m OVERRIDES")
    plan.add_argument("overrides", nargs="*", help="what run.py would get, e.g. experiment=p2l_table2_ffhq")
    status.build_parser(commands.add_parser("status", help="each job of a sweep: state, images done, ETA"))
    args = parser.parse_args(argv)
    if args.command == "plan":
        from treg_exp.experiment.plan import main as plan_main

        return plan_main(args.overrides)
    if args.command == "score":
        return score.run_from_args(args)
    if args.command == "table":
        return make_table.run_from_args(args)
    if args.command == "status":
        return status.run_from_args(args)
    return 2  # argparse rejects unknown commands before this line


if __name__ == "__main__":
    sys.exit(main())
