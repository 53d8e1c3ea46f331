"""The Hydra application: build the run's objects from the config, run them, print a table.

``python run.py solver=treg task=gauss_deblur`` runs one configuration into Hydra's run directory.
``compare: ["solver=a", "solver=b ..."]`` (as in ``experiment=demo``) runs each override set into a subfolder and
prints one table. A :class:`treg_exp.errors.UserError` (missing weights, bad input) is printed as one line and
the process exits with status 2, before any image is solved and without touching finished files.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from treg_exp import cost
from treg_exp.errors import UserError, find_user_error
from treg_exp.runner import Runner
from treg_exp.weights import stage_weights

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("psnr", "ssim", "psnr_measurement", "seconds")


def hydra_choices() -> dict[str, str]:
    """The config-group choices of the running Hydra job (``{}`` outside one)."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (``[]`` outside one)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def build_runner(
    cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None, overrides: list[str] | None = None
) -> Runner:
    """Instantiate data, task, model, solver, metrics and logger of ``cfg`` (no weights are loaded here)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    return Runner(
        dataset=instantiate(cfg.data),
        operator=instantiate(cfg.task),
        prior=instantiate(cfg.model),
        solver=instantiate(cfg.solver),
        metrics=instantiate(cfg.metrics),
        logger=instantiate(cfg.logger),
        run_dir=run_dir,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        num_samples=cfg.num_samples,
        device=cfg.device,
        shard_index=cfg.shard.index,
        shard_count=cfg.shard.count,
        fail_fast=cfg.fail_fast,
        info={"choices": choices or {}, "overrides": overrides or []},
        config=config,
    )


#: the parts of a config that decide what an image's result is; a run directory holds results of one such config
RESULT_KEYS = ("data", "task", "model", "solver", "seed", "num_samples")
#: ...except how many images are taken: a larger ``data.limit`` resumes a run and adds images
SUBSET_KEYS = ("data.limit",)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume into a run directory whose finished images were computed with other settings."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    new = OmegaConf.to_container(cfg, resolve=True)
    old_flat = _flatten({k: old.get(k) for k in RESULT_KEYS})
    new_flat = _flatten({k: new.get(k) for k in RESULT_KEYS})
    changed = sorted(
        k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k) and k not in SUBSET_KEYS
    )
    if changed:
        raise UserError(
            f"{run_dir} holds results computed with other settings ({', '.join(changed[:4])}"
            f"{', ...' if len(changed) > 4 else ''}); choose a new hydra.run.dir"
        )


def run_one(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    check_same_run(cfg, run_dir)
    runner = build_runner(cfg, run_dir, choices, overrides)  # bad options fail here, before anything is written
    cost.log_run_cost(cfg, runner.dataset, choices)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    summary = runner.run()
    log.info("wrote %s", run_dir)
    return summary


def format_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table of each run's mean PSNR, SSIM, measurement PSNR and seconds per image."""
    lines = ["| run | " + " | ".join(TABLE_COLUMNS) + " | images |", "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
    for name, summary in results:
        means = summary.get("metrics", {})
        cells = [f"{means[c]['mean']:.2f}" if c in means else "—" for c in TABLE_COLUMNS]
        counts = summary["counts"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {counts['ok']}/{counts['images']} |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def run(cfg: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    """Run ``cfg`` (or each of its ``compare`` entries) and return ``[(name, summary)]``."""
    stage_weights(cfg.paths.weights)
    run_dir = Path(cfg.paths.run_dir)
    choices = hydra_choices()
    if not cfg.compare:
        name = f"{choices.get('solver', 'solver')}/{choices.get('task', 'task')}"
        return [(name, run_one(cfg, run_dir, choices, hydra_overrides()))]
    overrides = hydra_overrides()
    results = []
    for entry in cfg.compare:
        sub = hydra.compose(config_name="config", overrides=[*overrides, *str(entry).split()], return_hydra_config=True)
        sub_choices = {k: v for k, v in sub.hydra.runtime.choices.items() if not k.startswith("hydra") and v}
        sub_dir = run_dir / _slug(str(entry))
        OmegaConf.set_struct(sub, False)
        del sub["hydra"]
        sub.compare = []
        sub.paths.run_dir = str(sub_dir)
        results.append((str(entry), run_one(sub, sub_dir, sub_choices, [*overrides, *str(entry).split()])))
    return results


def main(cfg: DictConfig) -> None:
    """Entry point called by ``run.py``; returns the run's ``objective`` metric mean (what an Optuna sweep optimises),
    or ``None`` when ``objective`` is not set."""
    try:
        from treg_exp.sweep import pin_gpu_of_job

        pin_gpu_of_job(bool(cfg.get("one_gpu_per_job", False)), hydra_job_num())
        results = run(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    table = format_table(results)
    (Path(cfg.paths.run_dir) / "table.md").write_text(table + "\n")
    print(table)
    return objective(cfg, results)


def hydra_job_num() -> int | None:
    """The job number in a multirun (``None`` in a single run or outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    num = HydraConfig.get().job.get("num")
    return None if num is None else int(num)


def objective(cfg: DictConfig, results: list[tuple[str, dict[str, Any]]]) -> float | None:
    """The mean of metric ``cfg.objective`` over the (first) run's images, for an optimising sweeper."""
    name = cfg.get("objective")
    if not name or not results:
        return None
    stats = results[0][1].get("metrics", {}).get(str(name)) or results[0][1].get("dataset_metrics", {}).get(str(name))
    if stats is None:
        raise UserError(f"objective={name} is not a metric of this run")
    value = stats["mean"] if isinstance(stats, dict) else stats
    return float(value)
