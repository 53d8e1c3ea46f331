"""The experiment loop: shards, batches, per-image seeds, resume, failure isolation, per-image rows, summary.

Run directory layout::

    gt/<id>.png  measurement/<id>.png  measurement/<id>.pt  recon/<id>.png (recon/<id>_<k>.png for k ≥ 1)
    rows/<id>.json          one row per image, written atomically when the image is finished (or failed)
    metrics.csv             all rows, rebuilt atomically after every batch
    diagnostics/<id>.json   the solver's per-step diagnostics (and trajectory/<id>/ images when asked); the last
                            value of each is also a ``last_<name>`` column of the image's row
    summary.json            means, std and counts of every column, dataset metrics, the run's choices
    config.yaml             the resolved config

An image whose row says ``ok`` is skipped when the same run directory is run again (pre-emption, resubmission);
a failed image (exception, non-finite output) is recorded with its error and retried on the next run.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from treg_exp import seeding
from treg_exp.data.base import ImageDataset, Sample
from treg_exp.data.images import to_pil
from treg_exp.devices import resolve_device
from treg_exp.errors import UserError
from treg_exp.metrics.base import MetricContext, MetricSuite, summary_stats
from treg_exp.metrics.image import psnr, to_uint8_levels
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Solver
from treg_exp.tracking.base import NullLogger, RunLogger
from treg_exp.tracking.comparison import write_comparison
from treg_exp.tracking.files import write_csv, write_json

log = logging.getLogger(__name__)

ROW_FIRST_COLUMNS = ("id", "status", "prompt", "psnr", "ssim", "psnr_measurement", "seconds")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of ``x`` holds, back in [−1, 1] (metrics are computed on what is saved)."""
    return to_uint8_levels(x.float()) / 127.5 - 1.0


@dataclass
class Runner:
    """Runs one (data, task, prior, solver) configuration over a dataset or one shard of it.

    Attributes:
        dataset: the ground-truth images and prompts.
        operator: the task's forward model; per-image parameters are drawn with :meth:`LinearOperator.draw`.
        prior: the diffusion prior (loaded by :meth:`run` before any image is solved).
        solver: the reconstruction method.
        metrics: per-image and dataset metrics.
        run_dir: where everything is written.
        logger: W&B or nothing.
        seed: the experiment seed; image ``i``'s streams derive from ``(seed, id, stream)``.
        batch_size: images per solver call.
        num_samples: reconstructions per measurement.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        shard_index, shard_count: run the images ``k`` with ``k % shard_count == shard_index``.
        fail_fast: re-raise the first failure instead of recording it.
        info: extra fields for ``summary.json`` (config choices, protocol notes).
        config: the resolved config, written to ``config.yaml`` and sent to the logger.
    """

    dataset: ImageDataset
    operator: LinearOperator
    prior: DiffusionPrior
    solver: Solver
    metrics: MetricSuite
    run_dir: Path
    logger: RunLogger = field(default_factory=NullLogger)
    seed: int = 0
    batch_size: int = 1
    num_samples: int = 1
    device: str = "auto"
    shard_index: int = 0
    shard_count: int = 1
    fail_fast: bool = False
    progress: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    # --- set-up --------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.batch_size < 1 or self.num_samples < 1:
            raise UserError("batch_size and num_samples must be at least 1")
        if not 0 <= self.shard_index < self.shard_count:
            raise UserError(f"shard.index must be in 0..{self.shard_count - 1}, got {self.shard_index}")

    def shard_indices(self) -> list[int]:
        return [k for k in range(len(self.dataset)) if k % self.shard_count == self.shard_index]

    def _row_path(self, image_id: str) -> Path:
        return self.run_dir / "rows" / f"{image_id}.json"

    def finished_ids(self) -> set[str]:
        done = set()
        for path in (self.run_dir / "rows").glob("*.json"):
            if json.loads(path.read_text()).get("status") == "ok":
                done.add(path.stem)
        return done

    # --- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Solve every image of the shard not already done, then write ``metrics.csv`` and ``summary.json``."""
        self._check()
        device = resolve_device(self.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # missing weights stop the run here, before any image is solved (metric files first: they load fast)
        self.metrics.prepare(device)
        self.prior.load(device)
        indices = self.shard_indices()
        if not indices:
            raise UserError(f"shard {self.shard_index}/{self.shard_count} of the dataset holds no image")
        ids = [self.dataset.image_id(k) for k in indices]
        done = self.finished_ids()
        todo = [k for k, image_id in zip(indices, ids, strict=True) if image_id not in done]
        log.info("%d images in shard, %d already done, %d to solve", len(ids), len(ids) - len(todo), len(todo))
        self.logger.start({**self.config, "choices": self.info.get("choices", {})}, self.run_dir)
        summary = None
        try:
            bar = tqdm(total=len(todo), desc="images", unit="img", disable=not self.progress)
            for start in range(0, len(todo), self.batch_size):
                batch = [self.dataset[k] for k in todo[start : start + self.batch_size]]
                for row, images in self._process(batch, device):
                    self.logger.log_image(row, images)
                bar.update(len(batch))
                self._write_table(ids)
            bar.close()
            summary = self._summarise(ids)
            write_comparison(self.run_dir)
        finally:
            self.logger.finish(summary)
        return summary

    def _process(self, batch: Sequence[Sample], device: torch.device) -> list[tuple[dict, dict]]:
        ids = [s.id for s in batch]
        prompts = [s.prompt for s in batch]
        try:
            results = self._solve_batch(batch, device)
        except UserError:
            raise  # a configuration problem fails every image alike: stop with its one line
        except Exception as error:  # noqa: BLE001 - one bad batch must not end a long sweep
            if self.fail_fast:
                raise
            log.warning("failed on %s: %s: %s", ", ".join(ids), type(error).__name__, error)
            out = []
            for image_id, prompt in zip(ids, prompts, strict=True):
                row = {
                    "id": image_id,
                    "status": "failed",
                    "prompt": prompt,
                    "error": f"{type(error).__name__}: {error}",
                }
                write_json(self._row_path(image_id), row)
                out.append((row, {}))
            return out
        return results

    def _solve_batch(self, batch: Sequence[Sample], device: torch.device) -> list[tuple[dict, dict]]:
        ids = [s.id for s in batch]
        prompts = [s.prompt for s in batch]
        dtype = self.prior.state_dtype
        x = torch.stack([s.image for s in batch]).to(device=device, dtype=dtype)
        measurement_streams = seeding.batch_generators(self.seed, ids, seeding.MEASUREMENT)
        operator = self.operator.draw(measurement_streams, x.shape).to(device)
        y = operator.measure(x, measurement_streams)

        diagnostics: dict[str, dict[str, list]] = {i: defaultdict(list) for i in ids}
        trajectory: list[tuple[int, str, torch.Tensor]] = []

        def callback(step: int, values: dict[str, torch.Tensor]) -> None:
            for key, value in values.items():
                if key.startswith("image/"):
                    trajectory.append((step, key[len("image/") :], value.detach().float().cpu()))
                    continue
                for b, image_id in enumerate(ids):
                    diagnostics[image_id][key].append([step, float(value[b])])

        before = dict(self.prior.counter)
        started = time.perf_counter()
        recons = []
        for k in range(self.num_samples):
            stream = seeding.SOLVER if k == 0 else f"{seeding.SOLVER}/{k}"
            generators = seeding.batch_generators(self.seed, ids, stream)
            x_hat = self.solver.solve(
                y, operator, self.prior, prompts, generators, x.shape, callback if k == 0 else None
            )
            if not torch.isfinite(x_hat).all():
                raise FloatingPointError("the reconstruction has non-finite values")
            recons.append(x_hat.float().clamp(-1, 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - started) / len(batch)
        counts = {k: v - before.get(k, 0) for k, v in self.prior.counter.items()}

        gt = quantize(x)
        recon = quantize(recons[0])
        shown = operator.measurement_image(y).float().clamp(-1, 1)
        params = {name: tensor.detach().cpu() for name, tensor in operator.params().items()}
        for b, sample in enumerate(batch):  # the images first: a scoring failure must not lose a finished solve
            to_pil(x[b]).save(self._path("gt", sample.id))
            to_pil(shown[b]).save(self._path("measurement", sample.id))
            torch.save(
                {
                    "y": y[b].detach().cpu(),
                    "params": {n: t[b] for n, t in params.items()},
                    "prompt": sample.prompt,
                },
                self._path("measurement", sample.id, ".pt"),
            )
            for k, r in enumerate(recons):
                to_pil(r[b]).save(self._path("recon", sample.id if k == 0 else f"{sample.id}_{k}"))
            self._write_diagnostics(sample.id, diagnostics[sample.id], [(s, n, t[b]) for s, n, t in trajectory])

        errors: list[str] = []
        context = MetricContext(y=y, operator=operator, prompts=prompts)
        values = self.metrics.per_image(recon, gt, context, errors)
        for error in errors:
            log.warning("metric failed on %s: %s", ", ".join(ids), error)
        if shown.shape[-2:] != gt.shape[-2:]:
            shown = F.interpolate(shown, size=gt.shape[-2:], mode="bicubic")
        values["psnr_measurement"] = psnr(quantize(shown), gt)

        results = []
        for b, sample in enumerate(batch):
            row = {"id": sample.id, "status": "ok", "prompt": sample.prompt}
            row.update({name: float(v[b]) for name, v in values.items()})
            # each diagnostic's last value (the oracles' final CG residual, TReg's last DC residual) as a column
            for key, series in diagnostics[sample.id].items():
                row["last_" + key.replace("/", "_")] = series[-1][1]
            if errors:
                row["metric_errors"] = "; ".join(errors)
            row["seconds"] = seconds
            for key, count in sorted(counts.items()):
                row[key] = count / len(batch) if key.endswith("_rows") else count
            write_json(self._row_path(sample.id), row)
            results.append((row, {"measurement": shown[b], "reconstruction": recon[b], "ground_truth": gt[b]}))
        return results

    def _path(self, folder: str, name: str, suffix: str = ".png") -> Path:
        path = self.run_dir / folder / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write_diagnostics(self, image_id: str, values: dict[str, list], images: list) -> None:
        if values:
            write_json(self._path("diagnostics", image_id, ".json"), dict(values))
        for step, name, image in images:
            to_pil(image).save(self._path(f"trajectory/{image_id}", f"{name.replace('/', '_')}_{step:04d}"))

    # --- tables --------------------------------------------------------------------------------------------
    def _rows(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The shard's rows in dataset order."""
        rows = []
        for image_id in ids:
            path = self._row_path(image_id)
            if path.is_file():
                rows.append(json.loads(path.read_text()))
        return rows

    def _write_table(self, ids: Sequence[str]) -> None:
        write_csv(self.run_dir / "metrics.csv", self._rows(ids), ROW_FIRST_COLUMNS)

    def _summarise(self, ids: Sequence[str]) -> dict[str, Any]:
        rows = self._rows(ids)
        ok = [r for r in rows if r.get("status") == "ok"]
        numeric = sorted({k for r in ok for k, v in r.items() if isinstance(v, (int, float)) and k != "status"})
        summary: dict[str, Any] = {
            "counts": {
                "images": len(ids),
                "ok": len(ok),
                "failed": len([r for r in rows if r.get("status") == "failed"]),
            },
            "metrics": {k: summary_stats([float(r[k]) for r in ok if k in r]) for k in numeric},
            **self.metrics.describe(),
            "shard": {"index": self.shard_index, "count": self.shard_count},
            **self.info,
        }
        if self.metrics.dataset and ok:
            if self.shard_count > 1:
                summary["dataset_metrics_note"] = (
                    "dataset metrics need the whole set: run `treg-exp score` on the merged shards"
                )
            else:
                errors: list[str] = []
                summary["dataset_metrics"] = self.metrics.per_dataset(
                    self.run_dir / "recon", self.run_dir / "gt", errors
                )
                if errors:
                    log.warning("dataset metrics failed: %s", "; ".join(errors))
                    summary["dataset_metric_errors"] = errors
        write_json(self.run_dir / "summary.json", summary)
        return summary
