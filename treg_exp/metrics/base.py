"""Metric interfaces: per-image metrics computed as images are solved, dataset metrics at the end of a run."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator

# "standard": the papers' protocol as this project computes it; "treg": as the official TReg script scored its
# images (see treg_exp.metrics.treg). A metric learns the protocol through ``use_protocol``.
PROTOCOLS = ("standard", "treg")


def summary_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and count ``n`` of the finite values (NaN mean and std when there are none).

    Non-finite values are left out of mean and std and counted instead: ``non_finite: {"+inf": a, "-inf": b,
    "nan": c}`` (only the kinds present; the key is absent when every value is finite).
    """
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    kinds = {"+inf": sum(v == math.inf for v in values), "-inf": sum(v == -math.inf for v in values)}
    kinds["nan"] = sum(math.isnan(v) for v in values)
    non_finite = {k: n for k, n in kinds.items() if n}
    if not finite:
        stats: dict[str, Any] = {"mean": float("nan"), "std": float("nan"), "n": 0}
    else:
        mean = sum(finite) / len(finite)
        std = (sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) ** 0.5 if len(finite) > 1 else 0.0
        stats = {"mean": mean, "std": std, "n": len(finite)}
    if non_finite:
        stats["non_finite"] = non_finite
    return stats


@dataclass
class MetricContext:
    """What a per-image metric may need besides the two images.

    Attributes:
        y: ``[B, ...]`` the noisy measurement.
        operator: the forward model with the batch's parameters.
        prompts: the text prompt of each image.
    """

    y: torch.Tensor
    operator: LinearOperator
    prompts: Sequence[str]


class _ProtocolAware:
    protocol: str = "standard"

    def use_protocol(self, protocol: str) -> list[str]:
        """Score the way ``protocol`` does; returns the departures from ``standard`` that this introduces."""
        self.protocol = protocol
        return []


class ImageMetric(_ProtocolAware, ABC):
    """A metric with one value per image. Inputs are what was saved: 8-bit PNG values mapped to [−1, 1]."""

    def prepare(self, device: torch.device | str) -> None:  # noqa: B027 - optional hook
        """Load weights (raise :class:`treg_exp.common.errors.WeightsNotFoundError` with one line if missing)."""

    @abstractmethod
    def __call__(self, recon: torch.Tensor, gt: torch.Tensor, context: MetricContext) -> dict[str, torch.Tensor]:
        """``recon``, ``gt``: ``[B, 3, H, W]`` in [−1, 1] (quantised to 8 bits). Returns ``{column: [B]}``."""


class DatasetMetric(_ProtocolAware, ABC):
    """A metric of the whole set of reconstructions (FID, KID), computed from the run's folders."""

    def prepare(self, device: torch.device | str) -> None:  # noqa: B027 - optional hook
        """Load or stage weights; raise :class:`treg_exp.common.errors.WeightsNotFoundError` if missing."""

    @abstractmethod
    def __call__(self, recon_dir: Path, gt_dir: Path) -> dict[str, float]:
        """Columns for ``summary.json`` from the PNGs in ``recon_dir`` and ``gt_dir``."""


@dataclass
class MetricSuite:
    """The metrics of a run (``conf/metrics/*``); ``protocol`` names how images are scored (``standard``).

    ``protocol: treg`` makes every metric score as the official TReg script did; :meth:`departures` lists each
    difference from the standard protocol (for ``summary.json``). ``fid_reference`` (a folder of images or a
    ``.npz`` of statistics) replaces the run's ``gt/`` as the FID/KID reference set.
    """

    image: list[ImageMetric] = field(default_factory=list)
    dataset: list[DatasetMetric] = field(default_factory=list)
    protocol: str = "standard"
    fid_reference: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"metrics.protocol={self.protocol} is not one of {', '.join(PROTOCOLS)}")
        self.image = list(self.image)
        self.dataset = list(self.dataset)
        if self.fid_reference not in (None, ""):
            # metrics.fid_reference: the reference set of every FID/KID metric instead of the run's gt/
            for metric in self.dataset:
                if hasattr(metric, "set_reference"):
                    metric.set_reference(str(self.fid_reference))
        self._departures: list[str] = []
        for metric in [*self.image, *self.dataset]:
            for note in metric.use_protocol(self.protocol):
                if note not in self._departures:
                    self._departures.append(note)

    def departures(self) -> list[str]:
        """The ways this suite departs from the standard protocol (empty for ``standard``)."""
        return list(self._departures)

    def describe(self) -> dict[str, Any]:
        """``{"protocol", "protocol_departures"}`` for ``summary.json``."""
        return {"protocol": self.protocol, "protocol_departures": self.departures()}

    def prepare(self, device: torch.device | str) -> None:
        for metric in [*self.image, *self.dataset]:
            metric.prepare(device)

    def per_image(
        self, recon: torch.Tensor, gt: torch.Tensor, context: MetricContext, errors: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every image metric's columns ``{column: [B]}``.

        With an ``errors`` list, a metric that raises is skipped and its error appended there (a scoring failure
        must not throw away a finished reconstruction); without one, it raises.
        """
        values: dict[str, torch.Tensor] = {}
        for metric in self.image:
            try:
                values.update(metric(recon, gt, context))
            except Exception as error:
                if errors is None:
                    raise
                errors.append(f"{type(metric).__name__}: {type(error).__name__}: {error}")
        return values

    def per_dataset(self, recon_dir: Path, gt_dir: Path, errors: list[str] | None = None) -> dict[str, float]:
        """Every dataset metric's columns; ``errors`` as in :meth:`per_image`."""
        values: dict[str, float] = {}
        for metric in self.dataset:
            try:
                values.update(metric(recon_dir, gt_dir))
            except Exception as error:
                if errors is None:
                    raise
                errors.append(f"{type(metric).__name__}: {type(error).__name__}: {error}")
        return values
