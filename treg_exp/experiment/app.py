"""The Hydra application: build the run's objects from the config, run them, print a table.

``python run.py solver=treg task=gauss_deblur`` runs one configuration into Hydra's run directory.
``compare: ["solver=a", "solver=b ..."]`` (as in ``experiment=demo``) runs each override set into a subfolder and
prints one table.

Exit status (:data:`EXIT_OK`, :data:`EXIT_USER_ERROR`, :data:`EXIT_IMAGES_FAILED`):

- ``0``: every image of the run (of this shard) is done.
- ``2``: a :class:`treg_exp.common.errors.UserError` (a bad config value, bad input, missing weights, an unwritable
  location) printed as one ``error:`` line, before any image is solved; the run directory is left as it was (it
  is neither claimed for the new settings nor are ``config.yaml`` and ``.hydra/`` rewritten).
- ``3``: the run finished but some images failed; one ``error:`` line says how many, and ``failures.jsonl``
  which and why. Running the same command again retries them.

In a multirun (``-m``) each job is one of these; a job's failure does not stop the others unless ``fail_fast``
(see :mod:`treg_exp.experiment.multirun`, which prints the failed jobs at the end and sets the exit status).
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from treg_exp.common.errors import UserError, find_user_error
from treg_exp.experiment import cost
from treg_exp.experiment.config_types import check_types
from treg_exp.experiment.runner import Runner
from treg_exp.models.weights import stage_weights
from treg_exp.prompts.sources import GivenPrompt
from treg_exp.tracking.files import locked, read_json, write_text

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("psnr", "ssim", "psnr_measurement", "seconds")
EXIT_OK, EXIT_USER_ERROR, EXIT_IMAGES_FAILED = 0, 2, 3
#: where the app keeps Hydra's config files (Hydra's own writing is off: ``hydra.output_subdir: null``), written
#: only once a run has claimed its directory
HYDRA_FILES = ".hydra"


def hydra_choices() -> dict[str, str]:
    """The config-group choices of the running Hydra job (``{}`` outside one)."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: v for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (``[]`` outside one)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def build_runner(
    cfg: DictConfig,
    run_dir: Path,
    choices: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    on_claim: Any = None,
) -> Runner:
    """Instantiate data, task, model, solver, metrics and logger of ``cfg`` (no weights are loaded here).

    Every value is checked here, by the constructors, with one line per problem.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    return Runner(
        dataset=instantiate(cfg.data),
        operator=instantiate(cfg.task),
        prior=instantiate(cfg.model),
        solver=instantiate(cfg.solver),
        metrics=instantiate(cfg.metrics),
        logger=instantiate(cfg.logger),
        prompt_source=instantiate(cfg.prompt) if cfg.get("prompt") is not None else GivenPrompt(),
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
        on_claim=on_claim,
    )


#: the parts of a config that decide what an image's result is; a run directory holds results of one such config
RESULT_KEYS = ("data", "task", "model", "solver", "prompt", "seed", "num_samples")
#: ...except which images are taken and how unreadable ones are handled: a larger ``data.limit`` resumes a run
#: and adds images
SUBSET_KEYS = ("data.limit", "data.ids", "data.strict")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume into a run directory whose finished images were computed with other settings (a directory
    that holds no row, such as one a refused or killed start left, takes the new settings)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not any((run_dir / "rows").glob("*.json")):
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    except Exception as error:  # noqa: BLE001 - YAML, decoding or OS errors: the file cannot vouch for the results
        raise UserError(
            f"{saved} is unreadable ({type(error).__name__}), so the settings of the results there are unknown; "
            "restore it or choose a new hydra.run.dir"
        ) from error
    if not isinstance(old, dict):
        raise UserError(f"{saved} holds no config; restore it or choose a new hydra.run.dir")
    new = OmegaConf.to_container(cfg, resolve=True)
    if "prompt" not in old and (new.get("prompt") or {}).get("_target_", "").endswith(".GivenPrompt"):
        old["prompt"] = new["prompt"]  # written before the prompt group existed: the dataset's prompts, as given
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


@dataclass
class RunResult:
    """One configuration's outcome: its summary (``None`` when refused), this shard's counts, or the refusal."""

    name: str
    run_dir: Path
    summary: dict[str, Any] | None = None
    shard_counts: dict[str, int] | None = None
    error: UserError | None = None

    @property
    def failed_images(self) -> int:
        return (self.shard_counts or {}).get("failed", 0)


def _hydra_files_writer(cfg: DictConfig, run_dir: Path):
    """What writes ``run_dir/.hydra/`` (config, hydra, overrides) once the run claims its directory."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()

    def write() -> None:
        folder = run_dir / HYDRA_FILES
        write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
        write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))

    return write


def run_one(
    cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: list[str], on_claim: Any = None
) -> RunResult:
    """Check, build and run one configuration (a :class:`UserError` propagates; nothing is written before the
    runner claims the directory)."""
    check_types(cfg)  # every value of its key's type (the constructors' type hints), before anything is built
    runner = build_runner(cfg, run_dir, choices, overrides, on_claim)  # bad values: one line, nothing written
    runner.check_inputs()  # the data, subset rules and output location, before the finished results' settings
    check_same_run(cfg, run_dir)
    cost.log_run_cost(cfg, runner.dataset, choices)
    summary = runner.run()
    log.info("wrote %s", run_dir)
    return RunResult("", run_dir, summary, runner.shard_counts)


def format_table(results: list[tuple[str, dict[str, Any] | None]]) -> str:
    """A markdown table of each run's mean PSNR, SSIM, measurement PSNR and seconds per image.

    A mean over no finite value shows its non-finite values (``+inf ×2``); a refused run shows ``refused``.
    """
    lines = ["| run | " + " | ".join(TABLE_COLUMNS) + " | images |", "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
    for name, summary in results:
        if summary is None:
            lines.append(f"| {name} | " + " | ".join("—" for _ in TABLE_COLUMNS) + " | refused |")
            continue
        stats = summary.get("metrics", {})
        cells = []
        for column in TABLE_COLUMNS:
            entry = stats.get(column, {})
            mean, odd = entry.get("mean"), entry.get("non_finite", {})
            cell = f"{mean:.2f}" if isinstance(mean, (int, float)) and mean == mean else "—"
            if odd:
                cell += " (" + ", ".join(f"{kind} ×{n}" for kind, n in odd.items()) + ")"
            cells.append(cell)
        counts = summary["counts"]
        done = f"{counts['ok']}/{counts['images']}"
        if counts.get("failed"):
            done += f", {counts['failed']} failed"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {done} |")
    return "\n".join(lines)


def count_lines(results: list[RunResult]) -> list[str]:
    """One line per run: the images it saw, solved, skipped (failures.jsonl) and has pending, from its summary."""
    lines = []
    for result in results:
        counts = (result.summary or {}).get("counts")
        if counts:
            where = f" ({result.run_dir / 'failures.jsonl'})" if counts.get("failed") else ""
            lines.append(
                f"{result.name}: seen {counts.get('seen', counts['images'])} images, {counts['images']} in the run: "
                f"solved {counts['ok']}, skipped {counts['failed']}{where}, pending {counts['pending']}"
            )
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def run(cfg: DictConfig) -> list[RunResult]:
    """Run ``cfg`` (or each of its ``compare`` entries) and return their results.

    A single run's :class:`UserError` propagates. With ``compare``, a refused entry is recorded and the others
    go on (unless ``fail_fast``).
    """
    stage_weights(cfg.paths.weights)
    run_dir = Path(cfg.paths.run_dir)
    choices = hydra_choices()
    on_claim = _hydra_files_writer(cfg, run_dir)
    if not cfg.compare:
        name = f"{choices.get('solver', 'solver')}/{choices.get('task', 'task')}"
        result = run_one(cfg, run_dir, choices, hydra_overrides(), on_claim)
        result.name = name
        return [result]
    overrides = hydra_overrides()
    results = []
    for entry in cfg.compare:
        entry_overrides = [*overrides, *str(entry).split()]
        sub_dir = run_dir / _slug(str(entry))
        try:
            sub = hydra.compose(config_name="config", overrides=entry_overrides, return_hydra_config=True)
            sub_choices = {k: v for k, v in sub.hydra.runtime.choices.items() if not k.startswith("hydra") and v}
            OmegaConf.set_struct(sub, False)
            del sub["hydra"]
            sub.compare = []
            sub.paths.run_dir = str(sub_dir)
            result = run_one(sub, sub_dir, sub_choices, entry_overrides, on_claim)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None or cfg.fail_fast:
                raise
            print(f"error: {entry}: {user_error}", file=sys.stderr)
            result = RunResult(str(entry), sub_dir, error=user_error)
        result.name = str(entry)
        results.append(result)
    return results


def write_table(cfg: DictConfig, results: list[RunResult]) -> str:
    """``table.md`` from the summaries on disk (the newest, whichever process of a shared directory wrote them)."""
    run_dir = Path(cfg.paths.run_dir)
    with locked(run_dir):
        rows = []
        for result in results:
            summary = read_json(result.run_dir / "summary.json") if result.error is None else None
            rows.append((result.name, summary if summary is not None else result.summary))
        table = format_table(rows)
        write_text(run_dir / "table.md", table + "\n")
    return table


def outcome(results: list[RunResult]) -> tuple[int, str | None]:
    """The exit status of ``results`` and the one line that explains a non-zero one."""
    refused = [r for r in results if r.error is not None]
    if refused:
        return EXIT_USER_ERROR, f"{len(refused)} of {len(results)} runs refused: {refused[0].error}"
    failed = sum(r.failed_images for r in results)
    if failed:
        images = sum((r.shard_counts or {}).get("images", 0) for r in results)
        where = ", ".join(str(r.run_dir / "failures.jsonl") for r in results if r.failed_images)
        return EXIT_IMAGES_FAILED, f"{failed} of {images} images failed (why: {where}); run again to retry them"
    return EXIT_OK, None


def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """Entry point called by ``run.py``; exits with the status described in the module docstring.

    In a multirun it returns the job's outcome instead of exiting (so the other jobs go on), for
    :class:`treg_exp.experiment.multirun.JobReport` to collect; with ``fail_fast`` a user error still exits at once. A
    run with ``objective`` set returns, when every image is done, that metric's mean instead (what an Optuna sweep
    optimises; a failed job then returns its outcome, which the sweeper records as a failed trial).
    """
    multirun, fail_fast = in_multirun(), bool(cfg.get("fail_fast", False))
    try:
        from treg_exp.experiment.sweep import pin_gpu_of_job

        pin_gpu_of_job(bool(cfg.get("one_gpu_per_job", False)), hydra_job_num())
        set_threads(cfg.get("threads", "auto"))
        results = run(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            if multirun and not fail_fast:
                log.exception("job crashed")
                return {"status": "crashed", "message": f"{type(error).__name__}: {error}"}
            raise
        print(f"error: {user_error}", file=sys.stderr)
        if multirun and not fail_fast:
            return {"status": "refused", "message": str(user_error)}
        sys.exit(EXIT_USER_ERROR)
    table = write_table(cfg, results)
    print(table)
    for line in count_lines(results):
        print(line)
    code, message = outcome(results)
    if message:
        print(f"error: {message}", file=sys.stderr)
    if code == EXIT_OK and cfg.get("objective"):
        return objective(cfg, results)
    if multirun and not fail_fast:
        status = {EXIT_OK: "ok", EXIT_USER_ERROR: "refused", EXIT_IMAGES_FAILED: "images_failed"}[code]
        return {"status": status, "message": message}
    if code:
        sys.exit(code)
    return None


def set_threads(setting: int | str) -> None:
    """Set torch's CPU threads for this job (:func:`treg_exp.common.devices.thread_count`)."""
    import os

    import torch

    from treg_exp.common.devices import thread_count

    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    count = thread_count(setting, dict(os.environ), launcher.get("cpus_per_task") if in_multirun() else None)
    if count is not None:
        torch.set_num_threads(count)
        log.info("%d CPU threads (threads=%s)", count, setting)


def hydra_job_num() -> int | None:
    """The job number in a multirun (``None`` in a single run or outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    num = HydraConfig.get().job.get("num")
    return None if num is None else int(num)


def objective(cfg: DictConfig, results: list[RunResult]) -> float | None:
    """The mean of metric ``cfg.objective`` over the (first) run's images, for an optimising sweeper."""
    name = cfg.get("objective")
    if not name or not results:
        return None
    summary = results[0].summary or {}
    stats = summary.get("metrics", {}).get(str(name)) or summary.get("dataset_metrics", {}).get(str(name))
    if stats is None:
        raise UserError(f"objective={name} is not a metric of this run")
    value = stats["mean"] if isinstance(stats, dict) else stats
    return float(value)
