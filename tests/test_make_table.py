"""scripts/make_table.py pools shards and sweeps into one table beside the papers' numbers."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_runner import make_runner

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("make_table", ROOT / "scripts" / "make_table.py")
make_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_table)


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
    table = make_table.merge(make_table.find_runs([tmp_path]))
    entry = table[("samples", "gauss_deblur", "gaussian", "posterior_mean", "solver.tol=1e-7")]
    assert entry["n"] == 3
    # the pooled mean is over images, not the mean of the two shards' means (2 images and 1)
    assert entry["psnr"] == pytest.approx(sum(float(r["psnr"]) for r in rows) / 3)
    shard_means = [
        json.loads((tmp_path / f"shard{i}" / "summary.json").read_text())["metrics"]["psnr"]["mean"] for i in range(2)
    ]
    assert entry["psnr"] != pytest.approx(sum(shard_means) / 2)


def test_a_sweep_over_a_hyperparameter_gives_one_row_per_value():
    def summary(*overrides):
        return {"choices": {"solver": "treg", "task": "sr16"}, "overrides": ["solver=treg", *overrides]}

    low, high = summary("solver.cfg_scale=0", "shard.index=0"), summary("solver.cfg_scale=5", "shard.index=0")
    assert make_table.run_key(low) != make_table.run_key(high)
    assert make_table.run_key(low) == make_table.run_key(summary("shard.index=1", "solver.cfg_scale=0", "device=cuda"))


def test_paper_rows_sit_under_matching_runs():
    table = {("ffhq", "sr8", "sd14", "psld", ""): {"n": 10, "psnr": 26.0, "lpips": 0.3}}
    reference = make_table.read_reference(ROOT / "reference" / "p2l_tables.csv", "ffhq512")
    markdown = make_table.to_markdown(table, reference).splitlines()
    assert markdown[2].startswith("| ffhq | sr8 | sd14 | psld |  | 10 |")
    assert "*paper*" in markdown[3] and "26.62" in markdown[3] and "0.335" in markdown[3]
    assert "36.93" not in markdown[3]  # FID is no column of this table: the paper's FID is not shown
    latex = make_table.to_latex(table, reference)
    assert "\\textit{paper}" in latex and "26.620" in latex
