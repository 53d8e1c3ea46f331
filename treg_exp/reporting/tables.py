"""Paper tables from finished runs: the table model (:class:`Table` of :class:`Cell`) and its markdown and LaTeX.

The HTML report (``treg_exp.reporting.report``) renders the same model; this module knows nothing of HTML.
``treg_exp.reporting.make_table`` is the command line that writes all three.

Every folder below the given ones that holds a ``summary.json`` is a run. A sweep folder with ``sweep.json`` (written
by the table sweeper) gives the layout: its rows (methods as the paper names them) and columns (tasks), each cell the
runs of one job folder — the folder itself and its ``shard-<i>-of-<n>`` subfolders. Without one, runs are grouped by
(data, task, model, solver, settings), one row per (solver, settings) and one column per task.

Pooling: the per-image rows of a cell's runs are pooled by image id (an image in two folders counts once) before
means and standard deviations are taken. Dataset metrics (FID, KID) are never averaged over shards: a cell of one
unsharded run uses that run's own; a cell of several runs has them recomputed over the union of the runs' images
(``treg_exp.reporting.score``'s merged folders, the metrics of the runs' ``config.yaml``), or shows "—" with a note when
the metric's weights are not here.

Output: markdown and LaTeX with mean ± std per metric, the best value of each column in bold, the paper's numbers
(``reference/*.csv``) under each row with the difference, and footnotes with the FID protocol (extractor, resize,
reference set, image count) — FID numbers are not comparable across extractors or set sizes — and the scoring
protocol's departures; and a static HTML report (``treg_exp.reporting.report``).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treg_exp.experiment.sweep import SWEEP_FILE, settings

ROOT = Path(__file__).resolve().parents[2]
#: metric columns in the order tables show them (only those some cell has are shown)
METRICS = ("fid", "kid", "lpips", "psnr", "ssim", "y_mse", "clip_score", "fid_clean", "seconds")
LOWER_IS_BETTER = {"fid", "kid", "fid_clean", "kid_clean", "lpips", "y_mse", "seconds", "consistency"}
DATASET_METRICS = {"fid", "kid", "fid_clean", "kid_clean"}
LABELS = {
    "fid": "FID",
    "kid": "KID",
    "lpips": "LPIPS",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "y_mse": "y-MSE",
    "clip_score": "CLIP",
    "fid_clean": "FID (clean)",
    "seconds": "s/img",
}
#: reference CSVs name methods as the papers print them; runs without a sweep.json name them by solver config
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
    "ddim": "DDIM",
    "red": "RED",
    "resample": "ReSample",
    "latino": "LATINO",
    "flowdps": "FlowDPS",
    "daps": "DAPS",
    "latent_daps": "LatentDAPS",
}


@dataclass
class Cell:
    """One (row, column) of a table: the pooled rows of its runs and their statistics."""

    runs: list[Path] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # image id → metrics row
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # metric → {mean, std, n}
    dataset: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    task: str | None = None
    status: str = "run"
    reason: str = ""


@dataclass
class Table:
    title: str | None
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    reference: dict[tuple[str, str], dict[str, float]]
    reference_note: str | None
    metrics: list[str]
    footnotes: list[str] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    #: ``key=value`` settings every cell shares (rows and columns are labelled only by what varies)
    shared: list[str] = field(default_factory=list)
    #: the command line's settings by which a sweep of a preset departs from it (a smoke run: ``model=tiny`` ...)
    departures: list[str] = field(default_factory=list)
    #: ``<run dir>: <what is wrong>`` of each run left out because it cannot be read
    damaged: list[str] = field(default_factory=list)


#: the files that mark a run directory, and Hydra's folder of copies inside it (not a run)
RUN_FILES, HYDRA_FOLDER, SCORE_FOLDER = ("summary.json", "config.yaml"), ".hydra", "score"


# --- reading runs -----------------------------------------------------------------------------------------------
def find_runs(roots: Sequence[Path]) -> list[Path]:
    """Every folder below ``roots`` that holds a run's ``summary.json`` or ``config.yaml`` (readable or not: see
    :func:`damage`), so that a run whose summary is lost is reported, not silently left out. Not runs: Hydra's
    copies (``.hydra/``) and ``treg-exp score``'s output (``<run>/score/``)."""
    found = {p.parent for root in roots for name in RUN_FILES for p in Path(root).rglob(name)}
    return sorted(p for p in found if HYDRA_FOLDER not in p.parts and p.parent / SCORE_FOLDER != p)


def damage(run_dir: Path) -> str | None:
    """What keeps ``run_dir`` out of a table — its ``summary.json`` or ``config.yaml`` missing, cut short or not a
    mapping, its ``metrics.csv`` missing, unparsable or with a line cut short — or ``None`` when it is readable.
    (``.hydra/`` and ``rows/`` are not read by reports: their damage leaves the run readable.)"""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return "summary.json is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"summary.json is unreadable (cut short or not JSON: {type(error).__name__}: {error})"
    if not isinstance(summary, dict) or not isinstance(summary.get("counts"), dict):
        return "summary.json holds no run summary (no counts)"
    from treg_exp.reporting.score import config_damage

    if (problem := config_damage(run_dir)) is not None:
        return problem
    try:
        read_ok_rows(run_dir, strict=True)
    except FileNotFoundError:
        return "metrics.csv is missing"
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
        return f"metrics.csv is unreadable ({error})"
    return None


def readable(run_dirs: Sequence[Path], damaged: list[str]) -> list[Path]:
    """The runs of ``run_dirs`` that :func:`damage` finds nothing wrong with; each other one is appended to
    ``damaged`` as ``<run dir>: <what is wrong>``."""
    kept = []
    for run_dir in run_dirs:
        problem = damage(run_dir)
        if problem is None:
            kept.append(run_dir)
        else:
            damaged.append(f"{run_dir}: {problem}")
    return kept


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def read_ok_rows(run_dir: Path, strict: bool = False) -> list[dict[str, Any]]:
    """The ``ok`` rows of ``metrics.csv`` (``[]`` without one; ``strict``: a missing file raises
    ``FileNotFoundError`` and a line whose field count is not the header's ``ValueError``)."""
    path = run_dir / "metrics.csv"
    if not path.is_file() and not strict:
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows, start=2):
        if strict and (None in row or None in row.values()):
            raise ValueError(f"line {number} does not have the header's columns (cut short?)")
    return [r for r in rows if r.get("status") == "ok"]


def run_key(summary: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(data, task, model, solver, settings): runs with the same key are one configuration."""
    choices = summary.get("choices", {})
    groups = set(choices)
    # the prompt source is a setting unless it is the dataset's own (runs from before the group existed say nothing)
    prompt = [f"{g}={choices[g]}" for g in ("prompt", "prompt/captioner") if choices.get(g, "given") != "given"]
    return (
        choices.get("data", "?"),
        choices.get("task", "?"),
        choices.get("model", "?"),
        choices.get("solver", "?"),
        " ".join([*prompt, *settings(summary.get("overrides", []), exclude_keys=(*groups, *RUN_LIST_KEYS))]),
    )


#: keys that list other runs (the demo's ``compare``), not settings of the run that records them
RUN_LIST_KEYS = ("compare",)


# --- labels: rows are the settings that vary across methods, columns the task and its varying knobs -------------
def split_setting(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def is_task_key(key: str) -> bool:
    return key == "task" or key.startswith("task.")


def varying(items: Sequence[dict[str, str]]) -> list[str]:
    """The keys whose value (or presence) differs between ``items``, sorted."""
    keys = sorted({k for item in items for k in item})
    return [k for k in keys if len({item.get(k) for item in items}) > 1]


def label(item: dict[str, str], shown: Sequence[str], lead: str | None) -> str:
    """``lead`` then ``key=value`` for each of ``shown`` that ``item`` has (a missing key is the default)."""
    parts = [lead] if lead else []
    parts += [f"{k}={item[k]}" for k in shown if k in item and k not in ("solver", "task")]
    return " ".join(parts) or "default"


def pivot(items: Sequence[dict[str, str]]) -> tuple[list[str], list[str], list[str]]:
    """Row and column labels of ``items`` (one ``{key: value}`` of settings per run or job, ``solver`` and ``task``
    among them) and the settings they all share.

    A row is a method: the solver (as the papers name it) and the non-task settings that vary across ``items``; a
    column is a task and the task settings that vary. What every item shares labels nothing (it is returned for a
    footnote), so a sweep ``solver=ddim,dds,treg task=gauss_deblur,sr4`` gives 3 rows × 2 columns.
    """
    keys = varying(items)
    row_keys = [k for k in keys if not is_task_key(k)]
    column_keys = [k for k in keys if is_task_key(k)]
    rows = [label(i, row_keys, PAPER_NAMES.get(i.get("solver", ""), i.get("solver"))) for i in items]
    columns = [label(i, column_keys, i.get("task")) for i in items]
    common = sorted({k for i in items for k in i} - set(keys))
    shared = [f"{k}={items[0][k]}" for k in common if k not in ("solver", "task")] if items else []
    return rows, columns, shared


def run_settings(run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """A run's settings as ``{key: value}`` for :func:`pivot`: its data, task, model, solver and prompt choices and
    its result-changing overrides; a run that recorded no choices is known by its folder."""
    choices = summary.get("choices") or {}
    if not choices:
        return {"solver": run_dir.name, "task": "task"}
    data, task, model, solver, setting = run_key(summary)
    found = dict(split_setting(s) for s in setting.split())
    return {"data": data, "task": task, "model": model, "solver": solver, **found}


def job_settings(job: dict[str, Any]) -> dict[str, str]:
    """A sweep job's settings as ``{key: value}`` for :func:`pivot` (its solver, task and model as composed)."""
    found = dict(split_setting(s) for s in settings(job.get("overrides", []), exclude_keys=("experiment",)))
    found.update({k: str(job[k]) for k in ("solver", "task", "model") if job.get(k)})
    return found


def as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pool(cell: Cell, dataset_metrics: bool = True) -> None:
    """Fill ``cell.rows``/``stats``/``dataset`` from ``cell.runs`` (see the module docstring)."""
    from treg_exp.metrics.base import summary_stats

    for run_dir in cell.runs:
        for row in read_ok_rows(run_dir):
            cell.rows.setdefault(row["id"], row)
    columns = sorted({k for r in cell.rows.values() for k, v in r.items() if as_float(v) is not None})
    for column in columns:
        values = [as_float(r.get(column)) for r in cell.rows.values()]
        cell.stats[column] = summary_stats([v for v in values if v is not None])
    if len(cell.runs) == 1:
        summary = read_summary(cell.runs[0])
        if summary.get("shard", {}).get("count", 1) == 1:
            cell.dataset = {k: v for k, v in summary.get("dataset_metrics", {}).items() if as_float(v) is not None}
            return
    if dataset_metrics and cell.rows:
        cell.dataset, note = pooled_dataset_metrics(cell.runs)
        if note:
            cell.notes.append(note)


def pooled_dataset_metrics(run_dirs: Sequence[Path]) -> tuple[dict[str, float], str | None]:
    """The runs' dataset metrics (their ``config.yaml``'s) recomputed over the union of their images."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from treg_exp.common.devices import resolve_device
    from treg_exp.common.errors import UserError
    from treg_exp.reporting.score import _merged_folders

    cfg = OmegaConf.load(run_dirs[0] / "config.yaml")
    if not OmegaConf.select(cfg, "metrics.dataset"):
        return {}, None
    try:
        suite = instantiate(cfg.metrics)
        suite.prepare(resolve_device("auto"))
    except UserError as error:
        return {}, f"dataset metrics not recomputed over the pooled shards: {error}"
    with tempfile.TemporaryDirectory() as tmp:
        recon, gt = _merged_folders(list(run_dirs), Path(tmp))
        values = suite.per_dataset(recon, gt)
    return {k: float(v) for k, v in values.items() if as_float(v) is not None}, None


# --- reference numbers ------------------------------------------------------------------------------------------
def read_reference(path: Path, dataset: str) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, task): {metric: value}}`` of the rows of ``dataset`` in a reference CSV."""
    path = path if Path(path).is_absolute() or Path(path).is_file() else ROOT / path
    with Path(path).open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["dataset"] == dataset]
    return {
        (r["method"], r["task"]): {k: float(v) for k, v in r.items() if k not in ("dataset", "method", "task") and v}
        for r in rows
    }


# --- building the table -----------------------------------------------------------------------------------------
def job_runs(sweep_dir: Path, folder: str, damaged: list[str]) -> list[Path]:
    """The readable run folders of a job: ``folder`` and its ``shard-*`` subfolders, those that hold a summary
    (the damaged ones are appended to ``damaged``)."""
    base = sweep_dir / folder
    candidates = [base, *sorted(base.glob("shard-*-of-*"))] if base.is_dir() else []
    return readable([c for c in candidates if (c / "summary.json").is_file()], damaged)


def sweep_files(root: Path) -> list[Path]:
    """The sweep records of a folder: ``sweep.json`` (the latest sweep) first, then those of earlier, different
    sweeps into the same folder (``sweep-<time>.json``, kept by :func:`treg_exp.experiment.sweep.write_sweep_file`)."""
    root = Path(root)
    latest = [root / SWEEP_FILE] if (root / SWEEP_FILE).is_file() else []
    return latest + sorted(p for p in root.glob("sweep-*.json") if p.is_file())


def build(
    roots: Sequence[Path],
    reference: Path | None = None,
    dataset: str | None = None,
    dataset_metrics: bool = True,
    sweeps: Sequence[Path] | None = None,
) -> Table:
    """The table of ``roots`` (sweep folders with ``sweep.json``, or any folders of runs); ``sweeps``: the sweep
    records to read instead of each sweep folder's ``sweep.json``."""
    roots = [Path(r) for r in roots]
    damaged: list[str] = []
    paths = list(sweeps) if sweeps else [r / SWEEP_FILE for r in roots if (r / SWEEP_FILE).is_file()]
    records = [(p.parent, sweep) for p in paths if (sweep := read_sweep(p, damaged))]
    if records:
        table = _from_sweeps(records, dataset_metrics, damaged)
    else:
        table = _from_runs(readable(find_runs(roots), damaged), dataset_metrics)
    table.damaged = damaged
    if reference is not None and dataset is not None:
        table.reference = read_reference(reference, dataset)
    table.metrics = shown_metrics(table)
    table.footnotes = footnotes(table)
    return table


def read_sweep(path: Path, damaged: list[str]) -> dict[str, Any] | None:
    """The sweep record ``path`` (a folder's ``sweep.json``), or ``None`` (with a line in ``damaged``) when it is cut
    short or holds no job list: the folder's runs are then pooled as a folder of runs."""
    try:
        sweep = json.loads(path.read_text())
        if not isinstance(sweep, dict) or not isinstance(sweep.get("jobs"), list):
            raise ValueError("no list of jobs")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        damaged.append(f"{path}: unreadable ({error}); the runs below it are pooled as a folder of runs")
        return None
    return sweep


def _from_sweeps(records: list[tuple[Path, dict[str, Any]]], dataset_metrics: bool, damaged: list[str]) -> Table:
    """The table of sweep records ``(sweep folder, sweep.json's content)``: pivoted on the jobs' settings."""
    first = records[0][1]
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], Cell] = {}
    jobs = [(root, job) for root, sweep in records for job in sweep["jobs"]]
    row_labels, column_labels, shared = pivot([job_settings(job) for _, job in jobs])
    for (root, job), row_label, column_label in zip(jobs, row_labels, column_labels, strict=True):
        row = job.get("row") or row_label
        column = job.get("column") or column_label
        if row not in rows:
            rows.append(row)
        if column not in columns:
            columns.append(column)
        cell = cells.setdefault((row, column), Cell())
        if job["status"] == "skipped":
            cell.status, cell.reason, cell.task = "skipped", job.get("reason", ""), job.get("task")
            continue
        cell.status, cell.task = "run", job.get("task")
        cell.runs += job_runs(root, job["folder"], damaged)
    for cell in cells.values():
        if cell.runs:
            pool(cell, dataset_metrics)
    reference, note = {}, None
    spec = first.get("reference")
    departures = first.get("departures") or []
    if isinstance(spec, dict) and spec.get("file") and spec.get("dataset") and not departures:
        reference = read_reference(Path(spec["file"]), spec["dataset"])
    elif isinstance(spec, dict):
        note = spec.get("note")
    title = first.get("title")
    if departures:  # a smoke or modified run of a preset: its table must not pass for the preset's
        title = f"{title or first.get('experiment')} — NOT the preset's settings: {' '.join(departures)}"
    table = Table(title, rows, columns, cells, reference, note, [], sweep=first, shared=shared)
    table.departures = list(departures)
    return table


def _from_runs(runs: list[Path], dataset_metrics: bool) -> Table:
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], Cell] = {}
    items = [run_settings(run_dir, read_summary(run_dir)) for run_dir in runs]
    row_labels, column_labels, shared = pivot(items)
    for run_dir, item, row, column in zip(runs, items, row_labels, column_labels, strict=True):
        if row not in rows:
            rows.append(row)
        if column not in columns:
            columns.append(column)
        cell = cells.setdefault((row, column), Cell(task=item.get("task")))
        cell.runs.append(run_dir)
    for cell in cells.values():
        pool(cell, dataset_metrics)
    return Table(None, rows, columns, cells, {}, None, [], shared=shared)


def paper_name(row: str) -> str:
    """The name a row has in the reference CSV: the row's own (sweep rows are named as the paper prints them), or
    the first word mapped through :data:`PAPER_NAMES` for rows named by solver."""
    first = row.split(" ")[0]
    return first if first in PAPER_NAMES.values() else PAPER_NAMES.get(first, row)


#: priors that stand in for a paper's (no weights, random weights): their numbers are never set beside a paper's
TOY_PRIORS = ("tiny", "gaussian")


def is_paper_prior(model: str) -> bool:
    return model not in TOY_PRIORS and not model.endswith("_random")


def cell_model(cell: Cell) -> str | None:
    """The prior (``model`` choice) of a cell's runs (``None``: no run recorded one)."""
    for run in cell.runs:
        model = read_summary(run).get("choices", {}).get("model")
        if model:
            return str(model)
    return None


def reference_of(table: Table, row: str, column: str) -> dict[str, float] | None:
    """The paper's numbers for a cell, or ``None`` (none, or the cell's runs do not use a paper's prior)."""
    cell = table.cells.get((row, column))
    if cell is None or not table.reference or not is_paper_prior(cell_model(cell) or ""):
        return None
    return table.reference.get((row, cell.task or column)) or table.reference.get((paper_name(row), cell.task or ""))


def value_of(cell: Cell | None, metric: str) -> tuple[float | None, float | None]:
    """``(mean, std)`` of ``metric`` in ``cell`` (std ``None`` for dataset metrics)."""
    if cell is None:
        return None, None
    if metric in cell.dataset:
        return float(cell.dataset[metric]), None
    stats = cell.stats.get(metric)
    if not stats or not stats.get("n"):
        return None, None
    return float(stats["mean"]), float(stats["std"])


def shown_metrics(table: Table) -> list[str]:
    present = {m for c in table.cells.values() for m in [*c.stats, *c.dataset]}
    wanted = [m for m in METRICS if m in present and m != "seconds"]
    for ref in table.reference.values():
        wanted += [m for m in ref if m not in wanted]
    return [m for m in METRICS if m in wanted] + [m for m in wanted if m not in METRICS]


def best_rows(table: Table, column: str, metric: str) -> set[str]:
    """The rows holding the best value of ``metric`` in ``column`` (lower or higher is better)."""
    values = {r: value_of(table.cells.get((r, column)), metric)[0] for r in table.rows}
    values = {r: v for r, v in values.items() if v is not None}
    if len(values) < 2:
        return set()
    best = (min if metric in LOWER_IS_BETTER else max)(values.values())
    return {r for r, v in values.items() if v == best}


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    if metric in ("lpips", "ssim", "kid", "kid_clean", "clip_score") or abs(value) < 1:
        return f"{value:.3f}"
    if metric == "y_mse":
        return f"{value:.2e}"
    return f"{value:.2f}"


def fmt_delta(delta: float, metric: str) -> str:
    """A signed difference with the metric's precision."""
    text = fmt(abs(delta), metric)
    return ("−" if delta < 0 else "+") + text


def footnotes(table: Table) -> list[str]:
    """The FID protocol and the scoring departures of the runs (from their summaries and configs)."""
    notes: list[str] = []
    runs = [run for cell in table.cells.values() for run in cell.runs]
    if table.departures:
        experiment = (table.sweep or {}).get("experiment")
        notes.append(
            f"These runs depart from experiment={experiment} by {', '.join(table.departures)}: they are not the "
            "preset's results, and the paper's numbers are not shown beside them."
        )
    if table.shared:
        notes.append("Shared by every cell: " + ", ".join(table.shared) + ".")
    toy = sorted({m for c in table.cells.values() if (m := cell_model(c)) and not is_paper_prior(m)})
    if table.reference and toy:
        notes.append(f"No paper numbers beside cells run with {', '.join(toy)} (not the paper's prior).")
    counts = sorted({len(c.rows) for c in table.cells.values() if c.runs})
    if counts:
        notes.append(f"Images per cell: {', '.join(map(str, counts))} (mean ± sample std over images).")
    if any("fid" in c.dataset for c in table.cells.values()):
        fid_counts = sorted({int(c.dataset.get("fid_images", len(c.rows))) for c in table.cells.values() if c.dataset})
        reference = "the ground truth of the same images (each run's gt/)"
        for run in runs:
            cfg_path = run / "config.yaml"
            if cfg_path.is_file():
                from omegaconf import OmegaConf

                ref = OmegaConf.select(OmegaConf.load(cfg_path), "metrics.fid_reference")
                if ref:
                    reference = f"{ref}"
                break
        notes.append(
            "FID/KID: clean-fid legacy_pytorch mode = pytorch-fid's Inception-v3 pool3 features (2048-d) with its "
            f"bilinear resize to 299; reference set: {reference}; images: {', '.join(map(str, fid_counts))}. "
            "FID is not comparable across extractors or set sizes: compare with the paper only at its set size."
        )
    else:
        notes.append("FID not computed (metrics without dataset metrics, or their Inception weights were missing).")
    departures = sorted({d for run in runs for d in read_summary(run).get("protocol_departures", [])})
    if departures:
        notes.append("Scoring departures from the standard protocol: " + "; ".join(departures) + ".")
    if table.reference:
        notes.append("paper: the paper's own numbers (reference CSV); Δ = ours − paper.")
    if table.reference_note:  # e.g. which code each row follows
        notes.append(table.reference_note)
    cell_notes = sorted({n for c in table.cells.values() for n in c.notes})
    notes += cell_notes
    return notes


# --- writers ----------------------------------------------------------------------------------------------------
def _cell_text(table: Table, row: str, column: str, metric: str, bold: set[str], latex: bool) -> str:
    cell = table.cells.get((row, column))
    mean, std = value_of(cell, metric)
    text = fmt(mean, metric)
    if mean is not None and std is not None and cell is not None and len(cell.rows) > 1:
        text += (" $\\pm$ " if latex else " ± ") + fmt(std, metric)
    if row in bold and mean is not None:
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def _paper_lines(table: Table, row: str, latex: bool) -> tuple[list[str], list[str]] | None:
    papers, deltas = [], []
    found = False
    for column in table.columns:
        ref = reference_of(table, row, column) or {}
        found = found or bool(ref)
        for metric in table.metrics:
            value = ref.get(metric)
            papers.append(fmt(value, metric) if value is not None else "")
            mean, _ = value_of(table.cells.get((row, column)), metric)
            deltas.append(fmt_delta(mean - value, metric) if value is not None and mean is not None else "")
    return (papers, deltas) if found else None


def to_markdown(table: Table) -> str:
    header = ["Method", *[f"{c} {LABELS.get(m, m)}" for c in table.columns for m in table.metrics]]
    lines = []
    if table.title:
        lines += [f"**{table.title}**", ""]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    best = {(c, m): best_rows(table, c, m) for c in table.columns for m in table.metrics}
    for row in table.rows:
        status = [table.cells.get((row, c)) for c in table.columns]
        if all(s is None or s.status == "skipped" for s in status):
            reason = next((s.reason for s in status if s is not None and s.reason), "not run")
            lines.append(f"| {row} | not run: {reason} |" + " |" * (len(header) - 2))
        else:
            cells = [_cell_text(table, row, c, m, best[(c, m)], False) for c in table.columns for m in table.metrics]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        paper = _paper_lines(table, row, False)
        if paper:
            lines.append("| *paper* | " + " | ".join(paper[0]) + " |")
            if any(paper[1]):
                lines.append("| *Δ* | " + " | ".join(paper[1]) + " |")
    lines.append("")
    lines += [f"{i}. {note}" for i, note in enumerate(table.footnotes, 1)]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return text.replace("_", "\\_").replace("&", "\\&").replace("%", "\\%").replace("#", "\\#")


def to_latex(table: Table) -> str:
    arrows = {m: "$\\downarrow$" if m in LOWER_IS_BETTER else "$\\uparrow$" for m in table.metrics}
    k = len(table.metrics)
    lines = [
        "\\begin{tabular}{l" + ("|" + "r" * k) * len(table.columns) + "}",
        "\\toprule",
        " & " + " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{_latex_escape(c)}}}" for c in table.columns) + " \\\\",
        "Method & "
        + " & ".join(f"{LABELS.get(m, m)}{arrows[m]}" for _ in table.columns for m in table.metrics)
        + " \\\\",
        "\\midrule",
    ]
    best = {(c, m): best_rows(table, c, m) for c in table.columns for m in table.metrics}
    for row in table.rows:
        status = [table.cells.get((row, c)) for c in table.columns]
        if all(s is None or s.status == "skipped" for s in status):
            lines.append(f"{_latex_escape(row)} & \\multicolumn{{{k * len(table.columns)}}}{{c}}{{not run}} \\\\")
        else:
            cells = [_cell_text(table, row, c, m, best[(c, m)], True) for c in table.columns for m in table.metrics]
            lines.append(f"{_latex_escape(row)} & " + " & ".join(cells) + " \\\\")
        paper = _paper_lines(table, row, True)
        if paper:
            lines.append("\\quad\\textit{paper} & " + " & ".join(paper[0]) + " \\\\")
            if any(paper[1]):
                lines.append("\\quad$\\Delta$ & " + " & ".join(paper[1]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    lines += [f"% {i}. {note}" for i, note in enumerate(table.footnotes, 1)]
    return "\n".join(lines)
