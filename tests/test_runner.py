"""The experiment loop: outputs, resume, failure isolation, batch and shard invariance, and the command line."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from treg_exp.common.errors import UserError
from treg_exp.experiment.app import build_runner

ROOT = Path(__file__).parents[1]
SMALL = [
    "model=gaussian",
    "task=gauss_deblur",
    "task.kernel_size=9",
    "task.kernel_sigma=1.5",
    "task.padding=circular",  # the exact posterior then solves in a few CG iterations
    "data=samples",
    "data.resolution=32",
    "data.prompt=''",
    "metrics=fast",
]


def make_runner(run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(run_dir)
    runner = build_runner(cfg, run_dir)
    runner.progress = False
    return runner


def read_rows(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "rows").glob("*.json")}


def test_run_writes_every_output(tmp_path):
    summary = make_runner(tmp_path, "solver=posterior_mean", "data.limit=2").run()
    ids = ["astronaut", "coffee"]
    for folder, suffix in [("gt", ".png"), ("recon", ".png"), ("measurement", ".png"), ("measurement", ".pt")]:
        assert sorted(p.stem for p in (tmp_path / folder).glob(f"*{suffix}")) == ids
    saved = torch.load(tmp_path / "measurement" / "astronaut.pt")
    assert saved["y"].shape == (3, 32, 32) and saved["prompt"] == ""
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("id,status,prompt,psnr,ssim") and len(lines) == 3
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"] == {"seen": 2, "images": 2, "ok": 2, "failed": 0, "pending": 0}
    # the oracle's final relative CG residual is recorded per image and summarised
    assert summary["metrics"]["last_relative_residual"]["n"] == 2
    assert summary["metrics"]["last_relative_residual"]["mean"] < 1e-6
    # the exact posterior mean is far better than the blurred measurement
    assert summary["metrics"]["psnr"]["mean"] > summary["metrics"]["psnr_measurement"]["mean"] + 2


def test_resume_skips_finished_images_and_retries_failed_ones(tmp_path):
    runner = make_runner(tmp_path, "solver=posterior_mean", "data.limit=3")
    solve = runner.solver.solve

    calls = []

    def flaky(y, operator, prior, prompts, generators, image_shape, callback=None):
        calls.append(len(calls))
        if len(calls) == 2:  # the second image (coffee) fails
            raise RuntimeError("CUDA out of memory (simulated)")
        return solve(y, operator, prior, prompts, generators, image_shape, callback)

    runner.solver.solve = flaky
    summary = runner.run()
    rows = read_rows(tmp_path)
    assert summary["counts"] == {"seen": 3, "images": 3, "ok": 2, "failed": 1, "pending": 0}
    assert rows["coffee"]["status"] == "failed" and "out of memory" in rows["coffee"]["error"]
    assert not (tmp_path / "recon" / "coffee.png").exists()
    finished = (tmp_path / "recon" / "astronaut.png").stat().st_mtime_ns

    again = make_runner(tmp_path, "solver=posterior_mean", "data.limit=3")
    solved = []
    original = again.solver.solve
    again.solver.solve = lambda y, op, prior, prompts, *a, **k: (
        solved.append(prompts) or original(y, op, prior, prompts, *a, **k)
    )
    summary = again.run()
    assert len(solved) == 1  # only the failed image is solved again
    assert summary["counts"] == {"seen": 3, "images": 3, "ok": 3, "failed": 0, "pending": 0}
    assert (tmp_path / "recon" / "astronaut.png").stat().st_mtime_ns == finished


def test_non_finite_output_is_a_recorded_failure(tmp_path):
    runner = make_runner(tmp_path, "solver=posterior_mean", "data.limit=1")
    runner.solver.solve = lambda y, *a, **k: torch.full((1, 3, 32, 32), float("nan"))
    summary = runner.run()
    assert summary["counts"]["failed"] == 1
    assert "non-finite" in read_rows(tmp_path)["astronaut"]["error"]


def test_fail_fast_reraises(tmp_path):
    runner = make_runner(tmp_path, "solver=posterior_mean", "data.limit=1", "fail_fast=true")
    runner.solver.solve = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        runner.run()


def test_batch_size_and_solver_do_not_change_the_measurement_or_the_result(tmp_path):
    one = make_runner(tmp_path / "one", "solver=posterior_sample", "data.limit=3", "batch_size=1")
    two = make_runner(tmp_path / "two", "solver=posterior_sample", "data.limit=3", "batch_size=2")
    other = make_runner(tmp_path / "other", "solver=posterior_mean", "data.limit=3")
    for runner in (one, two, other):
        runner.run()
    for image_id in ["astronaut", "coffee", "chelsea"]:
        y = [torch.load(tmp_path / d / "measurement" / f"{image_id}.pt")["y"] for d in ("one", "two", "other")]
        torch.testing.assert_close(y[0], y[1], rtol=0, atol=0)
        torch.testing.assert_close(y[0], y[2], rtol=0, atol=0)
        recon = [(tmp_path / d / "recon" / f"{image_id}.png").read_bytes() for d in ("one", "two")]
        assert recon[0] == recon[1]


def test_extra_samples_and_shards(tmp_path):
    make_runner(tmp_path / "s0", "solver=posterior_sample", "data.limit=3", "shard.count=2", "num_samples=2").run()
    make_runner(tmp_path / "s1", "solver=posterior_sample", "data.limit=3", "shard.count=2", "shard.index=1").run()
    assert sorted(read_rows(tmp_path / "s0")) == ["astronaut", "chelsea"]
    assert sorted(read_rows(tmp_path / "s1")) == ["coffee"]
    first, second = (tmp_path / "s0" / "recon" / f"astronaut{s}.png" for s in ("", "_1"))
    assert first.exists() and second.exists() and first.read_bytes() != second.read_bytes()


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_cli_tiny_ddim_writes_two_reconstructions(tmp_path):
    result = run_cli(
        "model=tiny",
        "solver=ddim",
        "solver.num_steps=5",
        "data.limit=2",
        "data.resolution=64",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "recon").glob("*.png"))) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["ok"] == 2
    assert "| ddim/gauss_deblur |" in result.stdout
    assert (tmp_path / "table.md").read_text().strip() in result.stdout


def test_cli_without_weights_fails_fast_with_one_line(tmp_path):
    started = time.monotonic()
    result = run_cli(f"hydra.run.dir={tmp_path / 'run'}", f"paths.weights={tmp_path / 'empty'}", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "stable-diffusion-v1-5" in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "recon").exists()
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_a_configuration_error_stops_the_run_with_its_line(tmp_path):
    runner = make_runner(tmp_path, "solver=posterior_mean", "data.limit=2", "data.prompt='a photo of a cat'")
    with pytest.raises(UserError, match="does not know the prompt"):
        runner.run()
    assert not (tmp_path / "rows").exists()


def test_a_solver_option_the_prior_cannot_take_stops_before_anything_is_written(tmp_path):
    """``solver.ddpm_variance=learned`` on the Gaussian prior (no learned variance) fails in the runner's checks, with
    one line, before the prior loads or the run directory is touched (``Solver.check_prior``)."""
    runner = make_runner(tmp_path / "run", "model=gaussian", "solver=dps", "solver.ddpm_variance=learned")
    with pytest.raises(UserError, match="learned variance") as error:
        runner.run()
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_resuming_with_other_settings_is_refused_and_loses_nothing(tmp_path):
    args = [
        "model=gaussian",
        "solver=posterior_mean",
        "task.kernel_size=9",
        "task.padding=circular",
        "data.limit=1",
        "data.resolution=32",
        f"hydra.run.dir={tmp_path}",
    ]
    assert run_cli(*args).returncode == 0
    # only Hydra's run.log records the refused start; results, config.yaml and .hydra/ must stay as they were
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert (tmp_path / ".hydra" / "overrides.yaml").is_file()
    result = run_cli(*args[:-2], "data.limit=2", "solver.tol=1e-3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "solver.tol" in error_lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".log"} == before
    # the same settings resume (a larger data.limit only adds images)
    args[4] = "data.limit=2"
    assert run_cli(*args).returncode == 0
    assert sorted(p.stem for p in (tmp_path / "recon").glob("*.png")) == ["astronaut", "coffee"]
