"""``treg-exp score RUN_DIR``: recompute a finished run's metrics from its files (fast and, with stand-in weights,
the paper's full set offline)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.test_metrics import images, lowrank_frechet, save_pngs
from tests.test_weights import stage_standins
from treg_exp import cli
from treg_exp.common import seeding
from treg_exp.metrics import fid as fid_module
from treg_exp.metrics.image import psnr
from treg_exp.reporting import score as score_module

CONF = Path(__file__).resolve().parents[1] / "conf"
IDS = ["a", "b"]


def make_run(run_dir: Path, size: int = 32) -> dict[str, float]:
    """A run directory as the runner leaves it (random inpainting, metrics=fast); returns the expected values."""
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "task": OmegaConf.load(CONF / "task" / "inpaint_random.yaml"),
            "metrics": OmegaConf.load(CONF / "metrics" / "fast.yaml"),
            "paths": {"weights": None},
        }
    )
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    gt = images(1, n=2, size=size)
    recon = images(2, n=2, size=size)
    generators = seeding.batch_generators(3, IDS, seeding.MEASUREMENT)
    operator = instantiate(cfg.task).draw(generators, gt.shape)
    y = operator.measure(gt, generators)
    save_pngs(run_dir / "gt", gt, IDS)
    save_pngs(run_dir / "recon", recon, IDS)
    save_pngs(run_dir / "recon", images(7, n=1, size=size), ["a_1"])  # an extra sample: not scored
    save_pngs(run_dir / "measurement", operator.forward(gt), IDS)
    params = operator.params()
    for b, image_id in enumerate(IDS):
        saved = {"y": y[b], "params": {k: v[b] for k, v in params.items()}, "prompt": f"prompt {b}"}
        torch.save(saved, run_dir / "measurement" / f"{image_id}.pt")
    residual = (operator(recon) - y).flatten(1)
    return {
        "consistency": (residual.norm(dim=1) / y.flatten(1).norm(dim=1)).tolist(),
        "y_mse": residual.pow(2).mean(1).tolist(),
        "psnr": psnr(recon, gt).tolist(),
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_score_recomputes_fast_metrics_with_the_saved_operator(tmp_path, capsys):
    run_dir = tmp_path / "run"
    expected = make_run(run_dir)
    assert cli.main(["score", str(run_dir)]) == 0
    rows = read_rows(run_dir / "score" / "metrics.csv")
    assert [r["id"] for r in rows] == IDS and rows[1]["prompt"] == "prompt 1"
    for b, row in enumerate(rows):
        # the operator rebuilt from measurement/<id>.pt gives the same residual as the one that measured y
        assert float(row["consistency"]) == pytest.approx(expected["consistency"][b], rel=1e-5)
        assert float(row["psnr"]) == pytest.approx(expected["psnr"][b], rel=1e-6)
    summary = json.loads((run_dir / "score" / "summary.json").read_text())
    assert summary["counts"]["images"] == 2 and summary["protocol"] == "standard"
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(sum(expected["psnr"]) / 2, rel=1e-6)
    assert "dataset_metrics" not in summary and summary["protocol_departures"] == []
    assert (run_dir / "comparison.png").is_file()
    assert "psnr" in capsys.readouterr().out

    # the TReg protocol, by the module entry point, into another folder
    assert score_module.main([str(run_dir), "--protocol", "treg", "--out", str(tmp_path / "treg")]) == 0
    treg_rows = read_rows(tmp_path / "treg" / "metrics.csv")
    assert [float(r["y_mse"]) for r in treg_rows] == pytest.approx(expected["y_mse"], rel=1e-5)
    treg_summary = json.loads((tmp_path / "treg" / "summary.json").read_text())
    assert treg_summary["protocol"] == "treg" and treg_summary["protocol_departures"]


def test_score_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert cli.main(["score", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "not a finished run directory" in err
    run_dir = tmp_path / "run"
    make_run(run_dir)
    assert cli.main(["score", str(run_dir), "--metrics", "nonsense"]) == 2
    assert "is not one of" in capsys.readouterr().err


def test_paper_metrics_offline_with_stand_in_weights(tmp_path_factory, tmp_path, monkeypatch):
    staged = stage_standins(tmp_path_factory, tmp_path, monkeypatch)
    # 2048-d covariances of two images: the exact low-rank Fréchet formula (checked in test_metrics) not an 80 s sqrtm
    monkeypatch.setattr(fid_module, "frechet_distance", lowrank_frechet)
    run_dir = tmp_path / "run"
    make_run(run_dir)
    out = tmp_path / "paper"
    assert cli.main(["score", str(run_dir), "--metrics", "paper", "--weights", str(staged), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for column in ("psnr", "ssim", "consistency", "lpips", "clip_score"):
        assert summary["metrics"][column]["n"] == 2 and math.isfinite(summary["metrics"][column]["mean"])
    dataset = summary["dataset_metrics"]
    assert set(dataset) == {"fid", "kid", "fid_clean", "kid_clean", "fid_images"}
    assert dataset["fid_images"] == 2  # recon/a_1.png is an extra sample, not part of the set
    assert all(math.isfinite(v) for v in dataset.values()) and dataset["fid"] > 0 and dataset["fid_clean"] > 0


def test_a_run_with_paper_metrics_and_offline_wandb(tmp_path_factory, tmp_path, monkeypatch):
    """The runner with metrics=paper on stand-in weights and logger=wandb offline: every column in summary.json,
    the W&B run on disk, then the comparison grid from the run's files."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from treg_exp.experiment.app import build_runner
    from treg_exp.tracking.comparison import write_comparison

    staged = stage_standins(tmp_path_factory, tmp_path, monkeypatch)
    monkeypatch.setattr(fid_module, "frechet_distance", lowrank_frechet)
    for key in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_env" / key))
    monkeypatch.delenv("WANDB_DIR", raising=False)  # set, it would take the run's W&B files (honoured since issue 27)
    run_dir = tmp_path / "run"
    overrides = [
        "model=gaussian",
        "task=gauss_deblur",
        "task.kernel_size=9",
        "solver=ddim",
        "solver.num_steps=5",
        "data=samples",
        "data.resolution=32",
        "data.limit=2",
        "data.prompt=red",  # a prompt GaussianPrior knows; CLIP scores it against the reconstruction
        "metrics=paper",
        "logger=wandb",
        "logger.mode=offline",
        f"paths.weights={staged}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(run_dir)
    runner = build_runner(cfg, run_dir)
    runner.progress = False
    summary = runner.run()
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["counts"]["ok"] == 2 and summary["counts"]["ok"] == 2
    for column in ("psnr", "ssim", "consistency", "lpips", "clip_score"):
        assert on_disk["metrics"][column]["n"] == 2 and math.isfinite(on_disk["metrics"][column]["mean"])
    assert {"fid", "kid", "fid_clean", "kid_clean"} <= set(on_disk["dataset_metrics"])
    assert all(math.isfinite(on_disk["dataset_metrics"][k]) for k in ("fid", "kid", "fid_clean", "kid_clean"))
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list((offline / "files" / "media" / "table").glob("images_*.table.json"))
    assert write_comparison(run_dir) == run_dir / "comparison.png"


def test_cli_with_paper_metrics_and_no_weights_stops_before_solving(tmp_path):
    import os
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(empty / "torch"), "TQDM_DISABLE": "1"}
    command = [sys.executable, "run.py", "model=gaussian", "metrics=paper", "data.limit=1", "data.resolution=32"]
    command += [f"paths.weights={empty}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=CONF.parent, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "scripts/fetch_weights.py" in errors[0] and "vgg16-397923af.pth" in errors[0]
    assert not (run_dir / "recon").exists()
