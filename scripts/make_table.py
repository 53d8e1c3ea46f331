"""Merge finished runs (sweeps, shards) into one table beside the papers' own numbers.

    python scripts/make_table.py outputs/multirun/2026-11-23_10-00-00 [more run dirs ...] \
        [--reference reference/p2l_tables.csv --dataset ffhq512] [--latex table.tex] [--markdown table.md]

Every folder below the given ones that holds a ``summary.json`` is a run. Runs with the same choices
(data, task, model, solver) and settings (hyperparameter overrides such as ``solver.cfg_scale=0``) but different
``shard.index`` are merged: their per-image rows are pooled before the
means are taken. Dataset metrics (FID, KID) are only reported for runs that cover the whole set in one folder
(``treg-exp score`` recomputes them for a merged set).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

COLUMNS = ("fid", "lpips", "psnr", "ssim", "seconds")
LOWER_IS_BETTER = {"fid", "lpips", "seconds", "kid"}
# reference/p2l_tables.csv names methods as the papers print them; runs name them by solver config
PAPER_NAMES = {
    "p2l": "P2L",
    "ldps": "LDPS",
    "gml_dps": "GML-DPS",
    "psld": "PSLD",
    "ldir": "LDIR",
    "dds": "DDS",
    "dps": "DPS",
    "diffpir": "DiffPIR",
    "treg": "TReg",
}


def find_runs(roots: list[Path]) -> list[Path]:
    return sorted({p.parent for root in roots for p in root.rglob("summary.json")})


#: overrides that do not change what is computed for an image (where it runs, which part of the set)
NEUTRAL_OVERRIDES = ("shard.", "hydra.", "hydra/", "paths.", "device=", "batch_size=", "logger", "fail_fast=")


def settings(summary: dict) -> str:
    """The run's hyperparameter overrides (``solver.cfg_scale=0 ...``) beside its config-group choices."""
    groups = set(summary.get("choices", {}))
    kept = [
        o.lstrip("+~")
        for o in summary.get("overrides", [])
        if not o.lstrip("+~").startswith(NEUTRAL_OVERRIDES) and o.lstrip("+~").split("=")[0] not in groups
    ]
    return " ".join(sorted(kept))


def run_key(summary: dict) -> tuple[str, str, str, str, str]:
    """Runs with the same key are one configuration (shards of it are pooled)."""
    choices = summary.get("choices", {})
    return (
        choices.get("data", "?"),
        choices.get("task", "?"),
        choices.get("model", "?"),
        choices.get("solver", "?"),
        settings(summary),
    )


def read_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("status") == "ok"]


def merge(runs: list[Path]) -> dict[tuple, dict[str, float]]:
    """``{(data, task, model, solver, settings): {column: mean, "n": images}}`` over all runs and shards."""
    rows: dict[tuple, list[dict]] = defaultdict(list)
    dataset_metrics: dict[tuple, dict] = {}
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        key = run_key(summary)
        rows[key] += read_rows(run_dir)
        if summary.get("shard", {}).get("count", 1) == 1:
            dataset_metrics[key] = summary.get("dataset_metrics", {})
    table = {}
    for key, key_rows in rows.items():
        entry: dict[str, float] = {"n": len(key_rows)}
        for column in COLUMNS:
            values = [float(r[column]) for r in key_rows if r.get(column) not in (None, "")]
            values = [v for v in values if math.isfinite(v)]
            if values:
                entry[column] = sum(values) / len(values)
        for name, value in dataset_metrics.get(key, {}).items():
            if isinstance(value, (int, float)):
                entry[name] = float(value)
        table[key] = entry
    return table


def read_reference(path: Path, dataset: str) -> dict[tuple[str, str], dict[str, float]]:
    with path.open(newline="") as handle:
        return {
            (r["method"], r["task"]): {c: float(r[c]) for c in ("fid", "lpips", "psnr")}
            for r in csv.DictReader(handle)
            if r["dataset"] == dataset
        }


def to_markdown(table: dict, reference: dict) -> str:
    columns = [c for c in (*COLUMNS, "fid_clean", "kid") if any(c in e for e in table.values())]
    lines = [
        "| data | task | model | solver | settings | n | " + " | ".join(columns) + " |",
        "|---" * (6 + len(columns)) + "|",
    ]
    for (data, task, model, solver, setting), entry in sorted(table.items()):
        cells = [f"{entry[c]:.4g}" if c in entry else "—" for c in columns]
        lines.append(f"| {data} | {task} | {model} | {solver} | {setting} | {entry['n']} | " + " | ".join(cells) + " |")
        paper = reference.get((PAPER_NAMES.get(solver, solver), task))
        if paper:
            cells = [f"{paper[c]:.4g}" if c in paper else "" for c in columns]
            lines.append("| | | | *paper* | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_latex(table: dict, reference: dict) -> str:
    columns = [c for c in COLUMNS if any(c in e for e in table.values())]
    arrows = [c.upper() + ("$\\downarrow$" if c in LOWER_IS_BETTER else "$\\uparrow$") for c in columns]
    lines = [
        "\\begin{tabular}{ll" + "r" * len(columns) + "}",
        "\\toprule",
        "Task & Method & " + " & ".join(arrows) + " \\\\",
        "\\midrule",
    ]
    for (_data, task, _model, solver, setting), entry in sorted(table.items()):
        cells = [f"{entry[c]:.3f}" if c in entry else "--" for c in columns]
        method = " ".join([solver, setting]).strip().replace("_", " ")
        lines.append(f"{task.replace('_', ' ')} & {method} & " + " & ".join(cells) + " \\\\")
        paper = reference.get((PAPER_NAMES.get(solver, solver), task))
        if paper:
            cells = [f"{paper[c]:.3f}" if c in paper else "" for c in columns]
            lines.append(" & \\textit{paper} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, default=Path(__file__).parents[1] / "reference/p2l_tables.csv")
    parser.add_argument("--dataset", default=None, help="dataset name in the reference CSV, e.g. ffhq512")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--latex", type=Path, default=None)
    args = parser.parse_args(argv)
    runs = find_runs(args.roots)
    if not runs:
        raise SystemExit(f"error: no summary.json below {', '.join(map(str, args.roots))}")
    table = merge(runs)
    reference = read_reference(args.reference, args.dataset) if args.dataset else {}
    markdown = to_markdown(table, reference)
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown + "\n")
    if args.latex:
        args.latex.write_text(to_latex(table, reference) + "\n")


if __name__ == "__main__":
    main()
