"""The experiment loop: shards, batches, per-image seeds, resume, failure isolation, per-image rows, summary.

Run directory layout::

    gt/<id>.png  measurement/<id>.png  measurement/<id>.pt  recon/<id>.png (recon/<id>_<k>.png for k ≥ 1)
    rows/<id>.json          one row per image, written atomically when the image is finished (or failed)
    metrics.csv             every row on disk, rebuilt after every batch
    failures.jsonl          ``{id, path, stage, error}`` of every image whose row says ``failed`` (empty when none)
    diagnostics/<id>.json   the solver's per-step diagnostics (and trajectory/<id>/ images when asked); the last
                            value of each is also a ``last_<name>`` column of the image's row
    summary.json            counts, means, std and non-finite counts of every column over every row on disk,
                            dataset metrics, the run's choices (strict JSON: non-finite numbers are ``null``)
    shards/<i>-of-<n>.json  the shards that have run in this directory (which images it is expected to hold)
    config.yaml             the resolved config

Every file is written atomically (:mod:`treg_exp.tracking.files`): a job killed at any moment resumes exactly. An
image whose row says ``ok`` (and whose PNGs exist) is skipped when the same run directory is run again
(pre-emption, resubmission); a failed image — unreadable input, an exception, non-finite output — is recorded
with its error and retried on the next run. Several processes may share one run directory (shards pointed at one
folder, or the same job started twice): rows are per image, and the tables are rebuilt from every row on disk
under a lock, so the last process to finish leaves complete tables.

Nothing is written before the data are checked and the weights are loaded: a refused start (bad subset, missing
weights, unwritable location) leaves the run directory as it was.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from treg_exp.common import checks, seeding
from treg_exp.common.devices import resolve_device
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample
from treg_exp.data.images import to_pil
from treg_exp.metrics.base import MetricContext, MetricSuite, summary_stats
from treg_exp.metrics.image import psnr, to_uint8_levels
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Solver
from treg_exp.tracking.base import NullLogger, RunLogger
from treg_exp.tracking.comparison import write_comparison
from treg_exp.tracking.files import (
    check_output_dir,
    ensure_dir,
    locked,
    read_json,
    remove_stale_temps,
    save_image,
    save_torch,
    strict_json,
    write_csv,
    write_json,
    write_jsonl,
    write_text,
)

log = logging.getLogger(__name__)

ROW_FIRST_COLUMNS = ("id", "status", "prompt", "psnr", "ssim", "psnr_measurement", "seconds")
FAILURE_FIELDS = ("id", "path", "stage", "error")
RUN_FOLDERS = ("gt", "measurement", "recon", "rows", "diagnostics", "shards")
#: why a column can hold a non-finite value (said in summary.json beside the count)
NON_FINITE_REASONS = {
    "+inf": "unbounded: for PSNR, the saved 8-bit images are identical (zero error)",
    "-inf": "unbounded below",
    "nan": "undefined for these images (e.g. 0/0, or a metric that failed numerically)",
}


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
        config: the resolved config, written to ``config.yaml`` (when the directory is claimed) and sent to the
            logger.
        on_claim: called once the run directory is claimed (data checked, weights loaded, ``config.yaml`` written);
            the app writes Hydra's ``.hydra/`` files there.

    After :meth:`run`, :attr:`shard_counts` holds ``{"images", "ok", "failed"}`` of this shard's images (the
    app's exit status).
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
    on_claim: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._check()
        self.shard_counts: dict[str, int] = {}
        self._order: list[str] | None = None
        self._sources: dict[str, str | None] = {}  # id → where the image comes from, for failure records

    # --- set-up --------------------------------------------------------------------------------------------
    def _check(self) -> None:
        """Every run option as the type it must be, or one line naming it (before anything loads)."""
        self.run_dir = Path(self.run_dir)
        self.seed = checks.integer("seed", self.seed)
        self.batch_size = checks.integer("batch_size", self.batch_size, minimum=1)
        self.num_samples = checks.integer("num_samples", self.num_samples, minimum=1)
        self.shard_count = checks.integer("shard.count", self.shard_count, minimum=1)
        self.shard_index = checks.integer("shard.index", self.shard_index)
        if not 0 <= self.shard_index < self.shard_count:
            raise UserError(f"shard.index must be in 0..{self.shard_count - 1}, got {self.shard_index}")
        self.device = checks.text("device", self.device)
        self.fail_fast = checks.boolean("fail_fast", self.fail_fast)

    def shard_indices(self, index: int | None = None, count: int | None = None) -> list[int]:
        """Dataset indices of shard ``index`` of ``count`` (default: this runner's shard)."""
        index = self.shard_index if index is None else index
        count = self.shard_count if count is None else count
        return [k for k in range(len(self.dataset)) if k % count == index]

    def _row_path(self, image_id: str) -> Path:
        return self.run_dir / "rows" / f"{image_id}.json"

    def finished_ids(self) -> set[str]:
        """Ids whose row says ``ok`` and whose PNGs exist (an unreadable row or a missing PNG: solved again)."""
        done = set()
        rows = self.run_dir / "rows"
        for path in sorted(rows.glob("*.json")) if rows.is_dir() else []:
            row = read_json(path)
            if not isinstance(row, dict) or row.get("status") != "ok":
                continue
            needed = [f"gt/{path.stem}.png", f"recon/{path.stem}.png"]
            needed += [f"recon/{path.stem}_{k}.png" for k in range(1, self.num_samples)]
            missing = [name for name in needed if not (self.run_dir / name).is_file()]
            if missing:
                log.warning("%s says ok but %s is missing: the image is solved again", path, missing[0])
                continue
            done.add(path.stem)
        return done

    def check_inputs(self) -> list[int]:
        """Check everything that needs no weights, writing nothing; returns the shard's dataset indices.

        The options, then the data (a folder is scanned, its subset rules and captions checked), then the output
        location. :meth:`run` calls it first; the app calls it before comparing settings with a finished run.
        """
        self._check()
        indices = self.shard_indices()
        if not indices:
            raise UserError(f"shard {self.shard_index}/{self.shard_count} of the dataset holds no image")
        self._order = [self.dataset.image_id(k) for k in range(len(self.dataset))]
        check_output_dir(self.run_dir, RUN_FOLDERS)
        return indices

    def _claim(self, shard_size: int) -> None:
        """Mark the run directory as this run's: ``config.yaml``, this shard's record, then :attr:`on_claim`."""
        ensure_dir(self.run_dir)
        if removed := remove_stale_temps(self.run_dir):
            log.info("removed %d temporary files of killed processes", removed)
        if self.config:
            write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.config)))
        record = {"index": self.shard_index, "count": self.shard_count, "images": shard_size}
        write_json(self.run_dir / "shards" / f"{self.shard_index}-of-{self.shard_count}.json", record)
        if self.on_claim is not None:
            self.on_claim()

    # --- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Solve every image of the shard not already done, then write ``metrics.csv`` and ``summary.json``."""
        indices = self.check_inputs()
        ids = [self._order[k] for k in indices]
        device = resolve_device(self.device)
        # missing weights stop the run here, before any image is solved (metric files first: they load fast)
        self.metrics.prepare(device)
        self.prior.load(device)
        self._claim(len(ids))
        done = self.finished_ids()
        todo = [k for k, image_id in zip(indices, ids, strict=True) if image_id not in done]
        log.info("%d images in shard, %d already done, %d to solve", len(ids), len(ids) - len(todo), len(todo))
        self.logger.start({**self.config, "choices": self.info.get("choices", {})}, self.run_dir)
        summary = None
        try:
            # closed also on an error, so that the error's line starts on a line of its own
            with tqdm(total=len(todo), desc="images", unit="img", disable=not self.progress) as bar:
                for start in range(0, len(todo), self.batch_size):
                    chunk = todo[start : start + self.batch_size]
                    batch, failed = self._load(chunk)
                    results = self._process(batch, device) if batch else []
                    for row, images in [*failed, *results]:
                        self.logger.log_image(row, images)
                    bar.update(len(chunk))
                    self._write_tables()
            summary = self._summarise()
            try:
                write_comparison(self.run_dir)
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001 - a picture must not fail a finished run
                log.warning("comparison.png not drawn: %s: %s", type(error).__name__, error)
        finally:
            self.logger.finish(summary)
        self.shard_counts = self._shard_counts(ids)
        return summary

    def _failed_row(self, image_id: str, prompt: str | None, stage: str, error: BaseException) -> dict:
        row: dict[str, Any] = {"id": image_id, "status": "failed", "prompt": prompt, "stage": stage}
        if (path := self._sources.get(image_id)) is not None:
            row["path"] = path
        row["error"] = f"{type(error).__name__}: {error}"
        write_json(self._row_path(image_id), row)
        return row

    def _load(self, chunk: Sequence[int]) -> tuple[list[Sample], list[tuple[dict, dict]]]:
        """The chunk's samples; an image that cannot be read is that image's failure (a UserError stops the run)."""
        batch, failed = [], []
        for k in chunk:
            self._sources[self.dataset.image_id(k)] = self.dataset.source(k)
            try:
                batch.append(self.dataset[k])
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001 - one bad file must not sink a dataset
                if self.fail_fast:
                    raise
                image_id = self.dataset.image_id(k)
                log.warning("could not load %s: %s", image_id, error)
                failed.append((self._failed_row(image_id, None, "load", error), {}))
        return batch, failed

    def _process(self, batch: Sequence[Sample], device: torch.device) -> list[tuple[dict, dict]]:
        ids = [s.id for s in batch]
        try:
            return self._solve_batch(batch, device)
        except UserError:
            raise  # a configuration or environment problem fails every image alike: stop with its one line
        except Exception as error:  # noqa: BLE001 - one bad batch must not end a long sweep
            if self.fail_fast:
                raise
            log.warning("failed on %s: %s: %s", ", ".join(ids), type(error).__name__, error)
            return [(self._failed_row(s.id, s.prompt, "solve", error), {}) for s in batch]

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
        non_finite: dict[int, str] = {}  # image b → why it failed; the batch's other images go on
        for k in range(num := self.num_samples):
            stream = seeding.SOLVER if k == 0 else f"{seeding.SOLVER}/{k}"
            generators = seeding.batch_generators(self.seed, ids, stream)
            x_hat = self.solver.solve(
                y, operator, self.prior, prompts, generators, x.shape, callback if k == 0 else None
            )
            x_hat = x_hat.float()
            finite = torch.isfinite(x_hat).flatten(1).all(1).tolist()
            for b in (b for b, ok in enumerate(finite) if not ok):
                non_finite.setdefault(
                    b, "the reconstruction has non-finite values" + (f" (sample {k})" if num > 1 else "")
                )
            recons.append(torch.nan_to_num(x_hat, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1, 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - started) / len(batch)
        counts = {k: v - before.get(k, 0) for k, v in self.prior.counter.items()}

        gt = quantize(x)
        recon = quantize(recons[0])
        shown = operator.measurement_image(y).float().clamp(-1, 1)
        params = {name: tensor.detach().cpu() for name, tensor in operator.params().items()}
        for b, sample in enumerate(batch):  # the images first: a scoring failure must not lose a finished solve
            if b in non_finite:
                continue
            save_image(self._path("gt", sample.id), to_pil(x[b]))
            save_image(self._path("measurement", sample.id), to_pil(shown[b]))
            measurement = {"y": y[b].detach().cpu(), "params": {n: t[b] for n, t in params.items()}}
            save_torch(self._path("measurement", sample.id, ".pt"), {**measurement, "prompt": sample.prompt})
            for k, r in enumerate(recons):
                save_image(self._path("recon", sample.id if k == 0 else f"{sample.id}_{k}"), to_pil(r[b]))
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
            if b in non_finite:
                log.warning("failed on %s: %s", sample.id, non_finite[b])
                row = self._failed_row(sample.id, sample.prompt, "solve", FloatingPointError(non_finite[b]))
                results.append((row, {}))
                continue
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
        return self.run_dir / folder / f"{name}{suffix}"

    def _write_diagnostics(self, image_id: str, values: dict[str, list], images: list) -> None:
        if values:
            write_json(self._path("diagnostics", image_id, ".json"), dict(values))
        for step, name, image in images:
            save_image(self._path(f"trajectory/{image_id}", f"{name.replace('/', '_')}_{step:04d}"), to_pil(image))

    # --- tables: always from every row on disk ---------------------------------------------------------------
    def _all_rows(self) -> list[dict[str, Any]]:
        """Every readable row in the run directory: dataset order first, then rows of other ids (sorted)."""
        found: dict[str, dict[str, Any]] = {}
        rows_dir = self.run_dir / "rows"
        for path in sorted(rows_dir.glob("*.json")) if rows_dir.is_dir() else []:
            row = read_json(path)
            if isinstance(row, dict) and row.get("id") == path.stem:
                found[path.stem] = row
        order = self._order or []
        ordered = [found.pop(i) for i in order if i in found]
        return ordered + [found[i] for i in sorted(found)]

    def _write_tables(self) -> None:
        with locked(self.run_dir):
            self._write_tables_unlocked()

    def _write_tables_unlocked(self) -> list[dict[str, Any]]:
        """``metrics.csv`` and ``failures.jsonl`` from every row on disk (call under :func:`locked`)."""
        rows = self._all_rows()
        write_csv(self.run_dir / "metrics.csv", rows, ROW_FIRST_COLUMNS)
        failures = [{k: r.get(k) for k in FAILURE_FIELDS} for r in rows if r.get("status") == "failed"]
        write_jsonl(self.run_dir / "failures.jsonl", failures)
        return rows

    def _expected_ids(self) -> tuple[list[str], bool]:
        """The ids of every shard recorded in ``shards/`` (dataset order), and whether they cover the dataset."""
        order = self._order or []
        members: set[int] = set()
        shards_dir = self.run_dir / "shards"
        for path in sorted(shards_dir.glob("*.json")) if shards_dir.is_dir() else []:
            record = read_json(path)
            try:
                index, count = int(record["index"]), int(record["count"])
            except (TypeError, KeyError, ValueError):
                continue
            members.update(k for k in range(len(order)) if k % count == index)
        return [order[k] for k in sorted(members)], len(members) == len(order)

    def _shard_counts(self, ids: Sequence[str]) -> dict[str, int]:
        statuses = [(read_json(self._row_path(i)) or {}).get("status") for i in ids]
        return {"images": len(ids), "ok": statuses.count("ok"), "failed": statuses.count("failed")}

    def _summarise(self) -> dict[str, Any]:
        with locked(self.run_dir):
            rows = self._write_tables_unlocked()
            summary = strict_json(self._summary(rows))  # what is returned is what the file says
            write_json(self.run_dir / "summary.json", summary, strict=True)
        return summary

    def _summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        expected, covers = self._expected_ids()
        have = {r["id"] for r in rows}
        ok = [r for r in rows if r.get("status") == "ok"]
        failed = [r for r in rows if r.get("status") == "failed"]
        numeric = sorted(
            {k for r in ok for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        stats = {k: summary_stats([float(r[k]) for r in ok if isinstance(r.get(k), (int, float))]) for k in numeric}
        non_finite = {}
        for column, entry in stats.items():
            if "non_finite" in entry:
                kinds = entry["non_finite"]
                non_finite[column] = {
                    "count": sum(kinds.values()),
                    **kinds,
                    "why": "; ".join(f"{kind}: {NON_FINITE_REASONS[kind]}" for kind in kinds),
                    "left_out_of": "mean and std",
                }
        summary: dict[str, Any] = {
            "counts": {
                "images": len(have | set(expected)),
                "ok": len(ok),
                "failed": len(failed),
                "pending": len([i for i in expected if i not in have]),
            },
            "metrics": stats,
            **({"non_finite": non_finite} if non_finite else {}),
            **({"failures": "failures.jsonl"} if failed else {}),
            **self.metrics.describe(),
            "shard": {"index": self.shard_index, "count": self.shard_count},
            "shards_in_directory": sorted(p.stem for p in (self.run_dir / "shards").glob("*.json")),
            "covers_dataset": covers,
            **self.info,
        }
        if self.metrics.dataset and ok:
            if not covers:
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
        return summary
