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

from treg_exp.reporting import report
from treg_exp.reporting.tables import ROOT, Table, build, find_runs, sweep_files, to_latex, to_markdown


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of ``make_table`` (added to ``parser`` when given: ``treg-exp table``'s sub-parser)."""
    parser = parser or argparse.ArgumentParser(prog="make_table", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep folders (with sweep.json) or folders of runs")
    parser.add_argument("--reference", type=Path, default=None, help="a reference CSV (default: the sweep's)")
    parser.add_argument("--dataset", default=None, help="the dataset in the reference CSV, e.g. ffhq512")
    parser.add_argument("--markdown", type=Path, default=None, help="default: <root>/table.md (or pooled_table.md)")
    parser.add_argument("--latex", type=Path, default=None, help="default: <first root>/table.tex")
    parser.add_argument("--html", type=Path, default=None, help="default: <first root>/report.html")
    parser.add_argument("--no-dataset-metrics", action="store_true", help="do not recompute FID over pooled shards")
    parser.add_argument("--sweep", default=None, help="of a folder holding several sweeps, the one to tabulate")
    parser.add_argument("--grid-images", type=int, default=3, help="images per task grid in the report")
    return parser


def outputs_of(root: Path, sweep: Path | None) -> tuple[Path, Path, Path]:
    """Default ``(markdown, latex, html)`` paths for ``root``: ``table.md``, ``table.tex``, ``report.html`` for a
    sweep's own ``sweep.json`` (``table-<time>.*`` for an earlier sweep's ``sweep-<time>.json``); in a folder of
    runs that already holds a table its runs wrote (the demo's ``table.md``), ``pooled_table.*`` beside it."""
    if sweep is not None:
        tag = sweep.stem.removeprefix("sweep")
        return root / f"table{tag}.md", root / f"table{tag}.tex", root / f"report{tag}.html"
    stem = "pooled_table" if (root / "table.md").is_file() else "table"
    return root / f"{stem}.md", root / f"{stem}.tex", root / "report.html"


def write_outputs(table: Table, paths: tuple[Path, Path, Path], grid_images: int) -> str:
    """Write the table's markdown, LaTeX and HTML report to ``paths``; its markdown."""
    markdown = to_markdown(table)
    paths[0].write_text(markdown + "\n")
    paths[1].write_text(to_latex(table) + "\n")
    report.write_report(table, paths[2], grid_images=grid_images)
    return markdown


def run_from_args(args: argparse.Namespace) -> int:
    """Build the table, print its markdown, write ``table.md``, ``table.tex`` and ``report.html``; the exit status.

    A single folder holding several sweeps (``sweep.json`` and earlier ``sweep-<time>.json``) gets one table per
    sweep, unless ``--sweep`` picks one. A run that cannot be read (:func:`treg_exp.reporting.tables.damage`) is one
    warning line and left out; the exit status is 2 only when no run is readable."""
    roots = [Path(r) for r in args.roots]
    if not find_runs(roots) and not any(sweep_files(r) for r in roots):
        print(f"error: no summary.json below {', '.join(map(str, roots))}", file=sys.stderr)
        return 2
    reference = args.reference
    if reference is None and args.dataset:
        reference = ROOT / "reference" / "p2l_tables.csv"
    if args.sweep is not None:
        picks: list[list[Path] | None] = [[r / args.sweep for r in roots]]
        if not all(p.is_file() for p in picks[0] or []):
            print(f"error: --sweep {args.sweep}: not in every folder given", file=sys.stderr)
            return 2
    elif len(roots) == 1 and len(sweep_files(roots[0])) > 1:
        picks = [[path] for path in sweep_files(roots[0])]
    else:
        picks = [None]
    tables = [
        (sweeps, build(roots, reference, args.dataset, dataset_metrics=not args.no_dataset_metrics, sweeps=sweeps))
        for sweeps in picks
    ]
    damaged = [problem for _, table in tables for problem in table.damaged]
    if damaged and not any(cell.runs for _, table in tables for cell in table.cells.values()):
        where = ", ".join(map(str, roots))
        print(f"error: no readable run below {where}: {len(damaged)} damaged ({damaged[0]}, ...)", file=sys.stderr)
        return 2
    for problem in damaged:
        print(f"warning: {problem}; left out of the table", file=sys.stderr)
    for sweeps, table in tables:
        own = sweeps[0] if sweeps else next(iter(sweep_files(roots[0])), None)
        defaults = outputs_of(roots[0], own)
        paths = (args.markdown or defaults[0], args.latex or defaults[1], args.html or defaults[2])
        if len(picks) > 1:
            print(f"\n{sweeps[0].name}:" if sweeps else "")
        print(write_outputs(table, paths, args.grid_images))
        print(f"\nwrote {', '.join(map(str, paths))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/make_table.py``: parse ``argv`` and run; the exit status (2: nothing to pool)."""
    return run_from_args(build_parser().parse_args(argv))
