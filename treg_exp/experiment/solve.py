"""One batch of images: draw the measurement, solve, save the images, score them, write one row per image.

The three steps are separate so that each reads on its own: :func:`solve_batch` is all the randomness and compute
(the measurement from each image's measurement stream, ``num_samples`` solves from its solver streams),
:func:`save_batch` writes the PNGs before anything is scored (a scoring failure must not lose a finished solve),
and :func:`score_batch` computes the per-image metrics on the saved 8-bit images and writes the rows.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from treg_exp.common import seeding
from treg_exp.data.base import Sample
from treg_exp.data.images import to_pil
from treg_exp.metrics.base import MetricContext, MetricSuite
from treg_exp.metrics.image import psnr, to_uint8_levels
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator, measure_images
from treg_exp.solvers.base import Solver
from treg_exp.tracking.run_store import RunStore

log = logging.getLogger(__name__)

#: a row and the images the logger shows for it (``{}`` for a failed image)
Result = tuple[dict, dict]
#: networks whose output a prior caches for the whole process (the text encoder: each distinct prompt once): their
#: passes are set-up, charged to whichever image a process happens to solve first, so they are kept out of the rows
#: (a row must not depend on where a restart or a shard boundary fell) and reported as the process's set-up
SETUP_NETWORKS = ("text",)


def split_setup(counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """``(per-image counts, set-up counts)`` of a counter difference (see :data:`SETUP_NETWORKS`)."""
    setup = {k: v for k, v in counts.items() if k.startswith(tuple(f"{n}_" for n in SETUP_NETWORKS))}
    return {k: v for k, v in counts.items() if k not in setup}, setup


def quantize(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of ``x`` holds, back in [−1, 1] (metrics are computed on what is saved)."""
    return to_uint8_levels(x.float()) / 127.5 - 1.0


@dataclass
class SolvedBatch:
    """What :func:`solve_batch` computed for a batch of ``B`` images ``C×H×W`` in [−1, 1].

    Attributes:
        x: the ground truth ``[B, C, H, W]`` in the prior's state dtype.
        y: the measurement ``[B, ...]`` (the operator's output shape).
        operator: the operator with this batch's drawn parameters.
        recons: ``num_samples`` reconstructions ``[B, C, H, W]`` float32, non-finite values zeroed, clamped.
        non_finite: image ``b`` → why it failed (its reconstruction had non-finite values).
        diagnostics: image id → ``{name: [[step, value], ...]}`` from the solver's callback (first sample).
        trajectory: ``(step, name, [B, C, H, W])`` images the solver sent as ``image/<name>``.
        seconds: solver wall-clock seconds per image.
        counts: the prior's network-evaluation counters spent on the batch's images.
        setup_counts: the set-up passes the batch happened to trigger (:data:`SETUP_NETWORKS`), not in its rows.
    """

    x: torch.Tensor
    y: torch.Tensor
    operator: LinearOperator
    recons: list[torch.Tensor]
    non_finite: dict[int, str]
    diagnostics: dict[str, dict[str, list]]
    trajectory: list[tuple[int, str, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    setup_counts: dict[str, int] = field(default_factory=dict)


def solve_batch(
    batch: Sequence[Sample],
    operator: LinearOperator,
    prior: DiffusionPrior,
    solver: Solver,
    seed: int,
    num_samples: int,
    device: torch.device,
) -> SolvedBatch:
    """Draw each image's measurement from its measurement stream and solve ``num_samples`` times (sample ``k`` from
    stream ``solver`` for ``k = 0``, ``solver/<k>`` after), so a result depends on neither batch size nor order."""
    ids = [s.id for s in batch]
    prompts = [s.prompt for s in batch]
    x = torch.stack([s.image for s in batch]).to(device=device, dtype=prior.state_dtype)
    operator, y = measure_images(operator, x, ids, seed)

    diagnostics: dict[str, dict[str, list]] = {i: defaultdict(list) for i in ids}
    trajectory: list[tuple[int, str, torch.Tensor]] = []

    def callback(step: int, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            if key.startswith("image/"):
                trajectory.append((step, key[len("image/") :], value.detach().float().cpu()))
                continue
            for b, image_id in enumerate(ids):
                diagnostics[image_id][key].append([step, float(value[b])])

    before = dict(prior.counter)
    started = time.perf_counter()
    recons = []
    non_finite: dict[int, str] = {}  # image b → why it failed; the batch's other images go on
    for k in range(num_samples):
        stream = seeding.SOLVER if k == 0 else f"{seeding.SOLVER}/{k}"
        generators = seeding.batch_generators(seed, ids, stream)
        x_hat = solver.solve(y, operator, prior, prompts, generators, x.shape, callback if k == 0 else None).float()
        finite = torch.isfinite(x_hat).flatten(1).all(1).tolist()
        for b in (b for b, ok in enumerate(finite) if not ok):
            sample = f" (sample {k})" if num_samples > 1 else ""
            non_finite.setdefault(b, "the reconstruction has non-finite values" + sample)
        recons.append(torch.nan_to_num(x_hat, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1, 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / len(batch)
    counts, setup = split_setup({k: v - before.get(k, 0) for k, v in prior.counter.items()})
    return SolvedBatch(x, y, operator, recons, non_finite, diagnostics, trajectory, seconds, counts, setup)


def save_batch(solved: SolvedBatch, batch: Sequence[Sample], store: RunStore) -> None:
    """Every finite image's ground truth, measurement (PNG and ``.pt``), reconstructions and diagnostics."""
    shown = solved.operator.measurement_image(solved.y).float().clamp(-1, 1)
    params = {name: tensor.detach().cpu() for name, tensor in solved.operator.params().items()}
    for b, sample in enumerate(batch):
        if b in solved.non_finite:
            continue
        store.save_png("gt", sample.id, to_pil(solved.x[b]))
        store.save_png("measurement", sample.id, to_pil(shown[b]))
        measurement = {"y": solved.y[b].detach().cpu(), "params": {n: t[b] for n, t in params.items()}}
        store.save_measurement(sample.id, {**measurement, "prompt": sample.prompt})
        for k, recon in enumerate(solved.recons):
            store.save_png("recon", sample.id if k == 0 else f"{sample.id}_{k}", to_pil(recon[b]))
        images = [(step, name, to_pil(t[b])) for step, name, t in solved.trajectory]
        store.write_diagnostics(sample.id, solved.diagnostics[sample.id], images)


def score_batch(solved: SolvedBatch, batch: Sequence[Sample], metrics: MetricSuite, store: RunStore) -> list[Result]:
    """Per-image metrics of the first reconstruction against the ground truth, both as saved (8-bit), and each
    image's row: ``ok`` with its metrics, the last value of each diagnostic, seconds and network counts; or
    ``failed`` for a non-finite reconstruction."""
    ids = [s.id for s in batch]
    gt = quantize(solved.x)
    recon = quantize(solved.recons[0])
    shown = solved.operator.measurement_image(solved.y).float().clamp(-1, 1)
    errors: list[str] = []
    context = MetricContext(y=solved.y, operator=solved.operator, prompts=[s.prompt for s in batch])
    values = metrics.per_image(recon, gt, context, errors)
    for error in errors:
        log.warning("metric failed on %s: %s", ", ".join(ids), error)
    if shown.shape[-2:] != gt.shape[-2:]:
        shown = F.interpolate(shown, size=gt.shape[-2:], mode="bicubic")
    values["psnr_measurement"] = psnr(quantize(shown), gt)

    results = []
    for b, sample in enumerate(batch):
        if b in solved.non_finite:
            log.warning("failed on %s: %s", sample.id, solved.non_finite[b])
            error = FloatingPointError(solved.non_finite[b])
            results.append((store.write_failure(sample.id, sample.prompt, "solve", error), {}))
            continue
        row = {"id": sample.id, "status": "ok", "prompt": sample.prompt}
        row.update({name: float(v[b]) for name, v in values.items()})
        # each diagnostic's last value (the oracles' final CG residual, TReg's last DC residual) as a column
        for key, series in solved.diagnostics[sample.id].items():
            row["last_" + key.replace("/", "_")] = series[-1][1]
        if errors:
            row["metric_errors"] = "; ".join(errors)
        row["seconds"] = solved.seconds
        for key, count in sorted(solved.counts.items()):
            row[key] = count / len(batch) if key.endswith("_rows") else count
        store.write_row(row)
        results.append((row, {"measurement": shown[b], "reconstruction": recon[b], "ground_truth": gt[b]}))
    return results
