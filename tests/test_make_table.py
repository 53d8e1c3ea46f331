"""treg_exp.reporting.tables (scripts/make_table.py) pools shards and sweeps into one table beside the papers'
numbers."""

import csv
import json
from pathlib import Path

import pytest

from tests.test_runner import make_runner
from treg_exp.reporting import tables

ROOT = Path(__file__).parents[1]


def test_shards_are_pooled_per_image(tmp_path):
    for index in range(2):
        runner = make_runner(
            tmp_path / f"shard{index}", "solver=posterior_mean", "data.limit=3", "shard.count=2", f"shard.index={index}"
        )
        runner.info["choices"] = {
            "data": "samples",
            "task": "gauss_deblur",
            "model": "gaussian",
            "solver": "posterior_mean",
        }
        runner.info["overrides"] = ["solver=posterior_mean", "solver.tol=1e-7", f"shard.index={index}"]
        runner.run()
    rows = []
    for index in range(2):
        with (tmp_path / f"shard{index}" / "metrics.csv").open() as handle:
            rows += list(csv.DictReader(handle))
    table = tables.build([tmp_path], dataset_metrics=False)
    (cell,) = table.cells.values()
    assert len(cell.rows) == 3 and len(cell.runs) == 2
    # the pooled mean is over images, not the mean of the two shards' means (2 images and 1)
    assert cell.stats["psnr"]["mean"] == pytest.approx(sum(float(r["psnr"]) for r in rows) / 3)
    shard_means = [
        json.loads((tmp_path / f"shard{i}" / "summary.json").read_text())["metrics"]["psnr"]["mean"] for i in range(2)
    ]
    assert cell.stats["psnr"]["mean"] != pytest.approx(sum(shard_means) / 2)


def test_a_sweep_over_a_hyperparameter_gives_one_row_per_value():
    def summary(*overrides):
        return {"choices": {"solver": "treg", "task": "sr16"}, "overrides": ["solver=treg", *overrides]}

    low, high = summary("solver.cfg_scale=0", "shard.index=0"), summary("solver.cfg_scale=5", "shard.index=0")
    assert tables.run_key(low) != tables.run_key(high)
    assert tables.run_key(low) == tables.run_key(summary("shard.index=1", "solver.cfg_scale=0", "device=cuda"))


def test_paper_rows_sit_under_matching_runs():
    cell = tables.Cell(
        task="sr8", stats={"psnr": {"mean": 26.0, "std": 1.0, "n": 10}, "lpips": {"mean": 0.3, "std": 0.1, "n": 10}}
    )
    cell.rows = {str(i): {} for i in range(10)}
    reference = tables.read_reference(ROOT / "reference" / "p2l_tables.csv", "ffhq512")
    table = tables.Table(None, ["PSLD"], ["SR (×8)"], {("PSLD", "SR (×8)"): cell}, reference, None, [])
    table.metrics = tables.shown_metrics(table)
    markdown = tables.to_markdown(table).splitlines()
    assert markdown[0].startswith("| Method | SR (×8) FID | SR (×8) LPIPS | SR (×8) PSNR")
    assert markdown[2].startswith("| PSLD | — | 0.300 ± 0.100 | 26.00 ± 1.00")
    assert markdown[3].startswith("| *paper* | 36.93 | 0.335 | 26.62")  # P2L Table 2, PSLD, SR ×8
    assert markdown[4] == "| *Δ* |  | −0.035 | −0.620 |"
    latex = tables.to_latex(table)
    assert "\\textit{paper}" in latex and "26.62" in latex
