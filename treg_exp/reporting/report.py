"""A one-page static HTML report of a sweep: the table, a grid of images per task, metric-vs-value plots.

``scripts/make_table.py`` writes it beside the table (``<sweep>/report.html``). The page needs no server and no
other file: images are embedded as PNG data URIs, plots are inline SVG. Per task column the grid shows, for the
first images all of its runs finished, the measurement, each method's reconstruction and the ground truth. A plot is
drawn for every 1-D sweep: runs of one task and solver whose settings differ in one numeric override only (e.g.
``solver.cfg_scale=0,2.5,5``), one plot per metric of the table.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from treg_exp.experiment.sweep import override_key, settings
from treg_exp.reporting.tables import (
    LABELS,
    LOWER_IS_BETTER,
    Table,
    best_rows,
    fmt,
    fmt_delta,
    read_summary,
    reference_of,
    value_of,
)

log = logging.getLogger(__name__)

THUMB = 128
STYLE = """
body { font-family: DejaVu Sans, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table.results { border-collapse: collapse; font-size: 12px; }
table.results th, table.results td { border: 1px solid #bbb; padding: 3px 6px; text-align: right; }
table.results td:first-child, table.results th:first-child { text-align: left; }
tr.paper td { color: #666; font-style: italic; } tr.delta td { color: #888; font-size: 11px; }
tr.skipped td { color: #999; text-align: left; }
table.grid td { padding: 2px; text-align: center; font-size: 11px; vertical-align: top; }
table.grid img { display: block; image-rendering: pixelated; }
table.grid div.prompt { max-width: 128px; color: #555; font-style: italic; overflow-wrap: anywhere; }
ol.notes { font-size: 12px; color: #444; max-width: 1000px; }
div.plots svg { margin: 4px 12px 4px 0; border: 1px solid #ddd; }
"""


def thumbnail(path: Path, size: int = THUMB) -> str:
    """A PNG data URI of ``path`` fitted to ``size`` px (small images enlarged by nearest-neighbour)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / max(image.size)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new, Image.NEAREST if scale > 1 else Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_of(runs: list[Path], folder: str, image_id: str) -> Path | None:
    for run in runs:
        path = run / folder / f"{image_id}.png"
        if path.is_file():
            return path
    return None


def table_html(table: Table) -> str:
    metrics = table.metrics
    head1 = (
        "<tr><th></th>"
        + "".join(f'<th colspan="{len(metrics)}">{html.escape(c)}</th>' for c in table.columns)
        + "</tr>"
    )
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in metrics}
    head2 = (
        "<tr><th>Method</th>"
        + "".join(f"<th>{LABELS.get(m, m)} {arrows[m]}</th>" for _ in table.columns for m in metrics)
        + "</tr>"
    )
    best = {(c, m): best_rows(table, c, m) for c in table.columns for m in metrics}
    body = []
    for row in table.rows:
        cells = [table.cells.get((row, c)) for c in table.columns]
        if all(c is None or c.status == "skipped" for c in cells):
            reason = next((c.reason for c in cells if c is not None and c.reason), "not run")
            span = len(metrics) * len(table.columns)
            body.append(
                f'<tr class="skipped"><td>{html.escape(row)}</td><td colspan="{span}">not run: '
                f"{html.escape(reason)}</td></tr>"
            )
        else:
            body.append(_row_html(table, row, metrics, best))
        body += _paper_html(table, row, metrics)
    return f'<table class="results">{head1}{head2}{"".join(body)}</table>'


def _row_html(table: Table, row: str, metrics: list[str], best: dict) -> str:
    tds = []
    for column in table.columns:
        cell = table.cells.get((row, column))
        for metric in metrics:
            mean, std = value_of(cell, metric)
            text = fmt(mean, metric)
            if mean is not None and std is not None and cell is not None and len(cell.rows) > 1:
                text += f" ± {fmt(std, metric)}"
            if row in best[(column, metric)] and mean is not None:
                text = f"<b>{text}</b>"
            tds.append(f"<td>{text}</td>")
    return f"<tr><td>{html.escape(row)}</td>{''.join(tds)}</tr>"


def _paper_html(table: Table, row: str, metrics: list[str]) -> list[str]:
    """The paper's numbers under ``row`` and the difference, or nothing when the reference has none."""
    papers, deltas, found = [], [], False
    for column in table.columns:
        ref = reference_of(table, row, column) or {}
        found = found or bool(ref)
        for metric in metrics:
            value = ref.get(metric)
            mean, _ = value_of(table.cells.get((row, column)), metric)
            papers.append(f"<td>{fmt(value, metric) if value is not None else ''}</td>")
            delta = fmt_delta(mean - value, metric) if value is not None and mean is not None else ""
            deltas.append(f"<td>{delta}</td>")
    if not found:
        return []
    lines = [f'<tr class="paper"><td>paper</td>{"".join(papers)}</tr>']
    if any(d != "<td></td>" for d in deltas):
        lines.append(f'<tr class="delta"><td>Δ</td>{"".join(deltas)}</tr>')
    return lines


def tile(runs: list[Path], folder: str, image_id: str, prompt: str | None = None) -> str:
    """One image of a grid (``—`` when no run has it), with its prompt under it when given."""
    path = image_of(runs, folder, image_id)
    if path is None:
        return "<td>—</td>"
    caption = f'<div class="prompt">{html.escape(str(prompt))}</div>' if prompt is not None else ""
    try:
        source = thumbnail(path)
    except (OSError, ValueError) as error:  # a PNG cut short or not an image: the page goes on without it
        log.warning("%s: unreadable image (%s); left out of the report", path, error)
        return f"<td>unreadable: {html.escape(path.name)}</td>"
    return f'<td><img src="{source}" alt="{folder} {html.escape(image_id)}">{caption}</td>'


def grids_html(table: Table, grid_images: int) -> str:
    parts = []
    for column in table.columns:
        methods = [(r, table.cells.get((r, column))) for r in table.rows]
        methods = [(r, c) for r, c in methods if c is not None and c.runs and c.rows]
        if not methods:
            continue
        common = set.intersection(*(set(c.rows) for _, c in methods))
        ids = sorted(common)[:grid_images]
        if not ids:
            continue
        header = "<tr><td>measurement</td>" + "".join(f"<td>{html.escape(r)}</td>" for r, _ in methods)
        header += "<td>ground truth</td></tr>"
        rows = []
        for image_id in ids:
            first_runs = methods[0][1].runs
            tiles = [tile(first_runs, "measurement", image_id)]
            # each reconstruction with the prompt its solver was given (rows of prompt=caption differ per image)
            tiles += [tile(c.runs, "recon", image_id, c.rows[image_id].get("prompt")) for _, c in methods]
            tiles.append(tile(first_runs, "gt", image_id))
            rows.append("<tr>" + "".join(tiles) + "</tr>")
        parts.append(f'<h2>{html.escape(column)}</h2><table class="grid">{header}{"".join(rows)}</table>')
    return "".join(parts)


def numeric(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sweeps_1d(table: Table) -> list[tuple[str, str, list[tuple[float, Any]]]]:
    """``[(title, key, [(value, cell)])]``: groups of runs (one task and solver) differing in one numeric override."""
    entries = []
    for (row, column), cell in table.cells.items():
        if not cell.runs or not cell.rows:
            continue
        summary = read_summary(cell.runs[0])
        choices = summary.get("choices", {})
        values = dict(o.split("=", 1) for o in settings(summary.get("overrides", []), ()) if "=" in o)
        entries.append((choices.get("task", column), choices.get("solver", row), values, cell))
    groups: dict[tuple, list[tuple[float, Any]]] = defaultdict(list)
    for task, solver, values, cell in entries:
        for key, value in values.items():
            number = numeric(value)
            if number is None or key in ("task", "solver"):
                continue
            rest = tuple(sorted((k, v) for k, v in values.items() if k != key))
            groups[(task, solver, key, rest)].append((number, cell))
    plots = []
    for (task, solver, key, _rest), points in groups.items():
        if len({v for v, _ in points}) >= 2:
            plots.append((f"{solver}, {task}", key, sorted(points, key=lambda p: p[0])))
    return plots


def svg_plot(
    title: str, key: str, metric: str, points: list[tuple[float, float]], width: int = 340, height: int = 220
) -> str:
    """An inline SVG line plot of ``metric`` against ``key`` (log x when the values span 100× or more)."""
    left, right, top, bottom = 56, 14, 30, 40
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 100
    tx = [math.log10(x) for x in xs] if log_x else xs
    x0, x1 = min(tx), max(tx)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1

    def sx(v: float) -> float:
        return left + (v - x0) / ((x1 - x0) or 1) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)

    coords = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(tx, ys, strict=True))
    dots = "".join(
        f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="#1f5fa8"/>' for a, b in zip(tx, ys, strict=True)
    )
    ticks = "".join(
        f'<text x="{sx(t):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{x:g}</text>'
        for t, x in zip(tx, xs, strict=True)
    )
    label = LABELS.get(metric, metric)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f"<title>{html.escape(label)} vs {html.escape(key)} ({html.escape(title)})</title>"
        f'<text x="{width / 2}" y="16" font-size="12" text-anchor="middle">{html.escape(label)} vs '
        f"{html.escape(key)} — {html.escape(title)}</text>"
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>'
        f'<text x="{left - 4}" y="{sy(y1) + 4:.1f}" font-size="10" text-anchor="end">{fmt(y1, metric)}</text>'
        f'<text x="{left - 4}" y="{sy(y0) + 4:.1f}" font-size="10" text-anchor="end">{fmt(y0, metric)}</text>'
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{html.escape(key)}'
        f"{' (log)' if log_x else ''}</text>"
        f'<polyline fill="none" stroke="#1f5fa8" stroke-width="2" points="{coords}"/>{dots}{ticks}</svg>'
    )


def plots_html(table: Table) -> str:
    parts = []
    for title, key, points in sweeps_1d(table):
        svgs = []
        for metric in table.metrics:
            series = [(x, value_of(cell, metric)[0]) for x, cell in points]
            series = [(x, y) for x, y in series if y is not None]
            if len(series) >= 2:
                svgs.append(svg_plot(title, override_key(key), metric, series))
        if svgs:
            parts.append(
                f'<h2>{html.escape(key)} sweep: {html.escape(title)}</h2><div class="plots">' + "".join(svgs) + "</div>"
            )
    return "".join(parts)


def write_report(table: Table, path: Path, grid_images: int = 3) -> Path:
    """Write the one-page report of ``table`` to ``path``."""
    title = table.title or "treg-exp sweep"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.footnotes)
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1>{table_html(table)}<ol class="notes">{notes}</ol>'
        f"{plots_html(table)}{grids_html(table, grid_images)}</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
