"""Pool finished runs (sweeps, shards) into the paper's table and a one-page report: ``scripts/make_table.py`` and
``treg-exp table``.

    python scripts/make_table.py outputs/p2l_table2_ffhq [more dirs] [--markdown t.md] [--latex t.tex] [--html r.html]

The table model and its markdown/LaTeX come from :mod:`treg_exp.reporting.tables`, the HTML page from
:mod:`treg_exp.reporting.report`; this module only reads the arguments and writes the three files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from treg_exp.experiment.sweep import SWEEP_FILE
from treg_exp.reporting import report
from treg_exp.reporting.tables import ROOT, build, find_runs, to_latex, to_markdown


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of ``make_table`` (added to ``parser`` when given: ``treg-exp table``'s sub-parser)."""
    parser = parser or argparse.ArgumentParser(prog="make_table", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep folders (with sweep.json) or folders of runs")
    parser.add_argument("--reference", type=Path, default=None, help="a reference CSV (default: the sweep's)")
    parser.add_argument("--dataset", default=None, help="the dataset in the reference CSV, e.g. ffhq512")
    parser.add_argument("--markdown", type=Path, default=None, help="default: <first root>/table.md")
    parser.add_argument("--latex", type=Path, default=None, help="default: <first root>/table.tex")
    parser.add_argument("--html", type=Path, default=None, help="default: <first root>/report.html")
    parser.add_argument("--no-dataset-metrics", action="store_true", help="do not recompute FID over pooled shards")
    parser.add_argument("--grid-images", type=int, default=3, help="images per task grid in the report")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Build the table, print its markdown, write ``table.md``, ``table.tex`` and ``report.html``; the exit status.

    A run that cannot be read (:func:`treg_exp.reporting.tables.damage`) is one warning line and left out; the
    exit status is 2 only when no run is readable."""
    roots = [Path(r) for r in args.roots]
    if not find_runs(roots) and not any((r / SWEEP_FILE).is_file() for r in roots):
        print(f"error: no summary.json below {', '.join(map(str, roots))}", file=sys.stderr)
        return 2
    reference = args.reference
    if reference is None and args.dataset:
        reference = ROOT / "reference" / "p2l_tables.csv"
    table = build(roots, reference, args.dataset, dataset_metrics=not args.no_dataset_metrics)
    if table.damaged and not any(cell.runs for cell in table.cells.values()):
        where = ", ".join(map(str, roots))
        print(
            f"error: no readable run below {where}: {len(table.damaged)} damaged ({table.damaged[0]}, ...)",
            file=sys.stderr,
        )
        return 2
    for problem in table.damaged:
        print(f"warning: {problem}; left out of the table", file=sys.stderr)
    markdown = to_markdown(table)
    print(markdown)
    out = roots[0]
    (args.markdown or out / "table.md").write_text(markdown + "\n")
    (args.latex or out / "table.tex").write_text(to_latex(table) + "\n")
    html = args.html or out / "report.html"
    report.write_report(table, html, grid_images=args.grid_images)
    print(f"\nwrote {args.markdown or out / 'table.md'}, {args.latex or out / 'table.tex'}, {html}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/make_table.py``: parse ``argv`` and run; the exit status (2: nothing to pool)."""
    return run_from_args(build_parser().parse_args(argv))
