"""The experiment loop: shards, batches, per-image seeds, resume, failure isolation, per-image rows, summary.

The run directory (its layout, atomic rows, shard records, tables under a lock) is a
:class:`~treg_exp.tracking.run_store.RunStore`; one batch's solve, saving and scoring is
:mod:`treg_exp.experiment.solve`; ``summary.json`` is :func:`treg_exp.experiment.summary.summarise`.

Every file is written atomically (:mod:`treg_exp.tracking.files`): a job killed at any moment resumes exactly. An
image whose row says ``ok`` (and whose PNGs exist) is skipped when the same run directory is run again
(pre-emption, resubmission); a failed image — unreadable input, an exception, non-finite output — is recorded
with its error and retried on the next run. Several processes may share one run directory (shards pointed at one
folder, or the same job started twice): rows are per image, and the tables are rebuilt from every row on disk
under a lock, so the last process to finish leaves complete tables.

Nothing is written before the data and the image geometry are checked and the weights are loaded: a refused start
(bad subset, a size the prior or task cannot take, missing weights, unwritable location) leaves the run directory
as it was.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from treg_exp.common import checks
from treg_exp.common.devices import resolve_device
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample
from treg_exp.experiment import cost
from treg_exp.experiment.progress import StepProgress
from treg_exp.experiment.solve import Result, save_batch, score_batch, solve_batch
from treg_exp.experiment.summary import summarise
from treg_exp.metrics.base import MetricSuite
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator, measure_images
from treg_exp.prompts.sources import GivenPrompt, PromptContext, PromptSource
from treg_exp.solvers.base import Solver
from treg_exp.tracking.base import NullLogger, RunLogger
from treg_exp.tracking.comparison import write_comparison
from treg_exp.tracking.run_store import RunStore

log = logging.getLogger(__name__)


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
        prompt_source: where each image's prompt comes from (default: the dataset's own, unchanged).
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

    :attr:`store` is the run directory (:class:`RunStore`, with the dataset's order once :meth:`check_inputs` has
    run). After :meth:`run`, :attr:`shard_counts` holds ``{"images", "ok", "failed"}`` of this shard's images (the
    app's exit status), and :attr:`setup_counts` the set-up passes of this process that no row is charged
    (:data:`treg_exp.experiment.solve.SETUP_NETWORKS`: the cached text encodings).
    """

    dataset: ImageDataset
    operator: LinearOperator
    prior: DiffusionPrior
    solver: Solver
    metrics: MetricSuite
    run_dir: Path
    logger: RunLogger = field(default_factory=NullLogger)
    prompt_source: PromptSource = field(default_factory=GivenPrompt)
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
        self.setup_counts: Counter[str] = Counter()
        self.store = RunStore(self.run_dir, num_samples=self.num_samples)

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

    def check_inputs(self) -> list[int]:
        """Check everything that needs no weights, writing nothing; returns the shard's dataset indices.

        The options, then the data (a folder is scanned, its subset rules and captions checked), then the output
        location. :meth:`run` calls it first; the app calls it before comparing settings with a finished run.
        """
        self._check()
        self.solver.check_prior(self.prior)
        self.check_geometry()
        indices = self.shard_indices()
        if not indices:
            raise UserError(f"shard {self.shard_index}/{self.shard_count} of the dataset holds no image")
        order = [self.dataset.image_id(k) for k in range(len(self.dataset))]
        self.store = RunStore(self.run_dir, order, self.num_samples)
        self.store.check()
        return indices

    def check_geometry(self) -> None:
        """The image size against the prior (latent factor, size multiples) and the task (SR divisibility), from the
        config alone: a zero image of the dataset's ``resolution`` goes through ``latent_shape`` and a measurement,
        before any weights load or anything is written."""
        side = getattr(self.dataset, "resolution", None)
        if side is None:
            return
        shape = (1, 3, int(side), int(side))
        self.prior.latent_shape(shape)
        measure_images(self.operator, torch.zeros(shape), ["geometry-check"], self.seed)

    # --- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Solve every image of the shard not already done, then write ``metrics.csv`` and ``summary.json``."""
        indices = self.check_inputs()
        ids = [self.store.order[k] for k in indices]
        device = resolve_device(self.device)
        # missing weights stop the run here, before any image is solved (metric and captioner files first: they are
        # checked fast)
        self.metrics.prepare(device)
        self.prompt_source.check()  # a captioner's files: seconds; its model loads only if something is uncaptioned
        self.prior.load(device)
        self.store.claim(self.config, self.shard_index, self.shard_count, len(ids))
        if self.on_claim is not None:
            self.on_claim()
        done = self.store.finished_ids()
        todo = [k for k, image_id in zip(indices, ids, strict=True) if image_id not in done]
        log.info("%d images in shard, %d already done, %d to solve", len(ids), len(ids) - len(todo), len(todo))
        context = PromptContext(
            self.operator,
            self.seed,
            device,
            self.prior.state_dtype,
            getattr(self.prior, "tokenizer", None),
            {k: self.config.get(k) for k in ("data", "task")},
            self.progress,
        )
        self.prompt_source.prepare(self.dataset, todo, context)  # captioning: every image before any solve
        self.logger.start({**self.config, "choices": self.info.get("choices", {})}, self.run_dir)
        summary = None
        try:
            # closed also on an error, so that the error's line starts on a line of its own
            steps = StepProgress(self.prior.counter, self.expected_unet_calls(), self.progress)
            with tqdm(total=len(todo), desc="images", unit="img", disable=not self.progress) as bar:
                for start in range(0, len(todo), self.batch_size):
                    chunk = todo[start : start + self.batch_size]
                    batch, failed = self._load(chunk)
                    with steps.batch([s.id for s in batch]):
                        results = self._process(batch, device) if batch else []
                    for row, images in [*failed, *results]:
                        self.logger.log_image(row, images)
                    bar.update(len(chunk))
                    self.store.write_tables()
            summary = self.store.write_summary(
                lambda rows: summarise(
                    rows,
                    self.store,
                    self.metrics,
                    self.shard_index,
                    self.shard_count,
                    self.info,
                    getattr(self.dataset, "seen", None),
                )
            )
            try:
                write_comparison(self.run_dir)
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001 - a picture must not fail a finished run
                log.warning("comparison.png not drawn: %s: %s", type(error).__name__, error)
        finally:
            self.logger.finish(summary)
        self.shard_counts = self.store.status_counts(ids)
        if self.setup_counts:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(self.setup_counts.items()))
            log.info("set-up of this process, not charged to any image: %s", shown)
        return summary

    def expected_unet_calls(self) -> float | None:
        """UNet calls of one batch (the solver's per image, times ``num_samples``; ``None``: unknown)."""
        solver_cfg = self.config.get("solver") or {}
        name = str(self.info.get("choices", {}).get("solver", ""))
        passes = cost.solver_passes(solver_cfg, name, cost.load_results()) if solver_cfg else None
        return passes.unet_calls * self.num_samples if passes is not None and passes.unet_calls else None

    def _load(self, chunk: Sequence[int]) -> tuple[list[Sample], list[Result]]:
        """The chunk's samples with their prompts from the prompt source; an image that cannot be read is that
        image's failure (a UserError stops the run)."""
        batch, failed = [], []
        for k in chunk:
            self.store.sources[self.dataset.image_id(k)] = self.dataset.source(k)
            try:
                batch.append(self.dataset[k])
            except UserError:
                raise
            except Exception as error:  # noqa: BLE001 - one bad file must not sink a dataset
                if self.fail_fast:
                    raise
                image_id = self.dataset.image_id(k)
                log.warning("could not load %s: %s", image_id, error)
                failed.append((self.store.write_failure(image_id, None, "load", error), {}))
        prompts = self.prompt_source.prompts(batch) if batch else []
        return [replace(s, prompt=p) for s, p in zip(batch, prompts, strict=True)], failed

    def _process(self, batch: Sequence[Sample], device: torch.device) -> list[Result]:
        """Solve, save and score one batch; an exception fails the batch's images, not the run."""
        try:
            solved = solve_batch(batch, self.operator, self.prior, self.solver, self.seed, self.num_samples, device)
            self.setup_counts.update(solved.setup_counts)
            save_batch(solved, batch, self.store)  # the images first: a scoring failure must not lose a solve
            return score_batch(solved, batch, self.metrics, self.store)
        except UserError:
            raise  # a configuration or environment problem fails every image alike: stop with its one line
        except Exception as error:  # noqa: BLE001 - one bad batch must not end a long sweep
            if self.fail_fast:
                raise
            log.warning("failed on %s: %s: %s", ", ".join(s.id for s in batch), type(error).__name__, error)
            return [(self.store.write_failure(s.id, s.prompt, "solve", error), {}) for s in batch]
