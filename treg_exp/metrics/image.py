"""Per-image fidelity metrics on 8-bit images.

PSNR: ``10·log10(255² / MSE)`` over all pixels and channels of the 8-bit images (the papers' convention).
SSIM: torchmetrics' ``structural_similarity_index_measure`` (Gaussian window 11, σ 1.5, K = (0.01, 0.03)) on
[0, 1] images, averaged over channels, as skimage's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=0, data_range=1)`` computes it.
Measurement consistency: ``‖A x̂ − y‖ / ‖y‖`` per image.

Under ``metrics.protocol=treg`` PSNR and SSIM score the min–max stretched images and the consistency metric adds
the official script's ``y_mse = ‖A x̂ − y‖² / m`` (see :mod:`treg_exp.metrics.treg`).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from treg_exp.metrics import treg
from treg_exp.metrics.base import ImageMetric, MetricContext


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """``[−1, 1]`` → the float values ``0 … 255`` an 8-bit PNG stores (round half to even, clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def psnr(recon: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image on 8-bit levels; ``[B, 3, H, W]`` in [−1, 1] → ``[B]`` (inf for identical images)."""
    mse = (to_uint8_levels(recon.double()) - to_uint8_levels(gt.double())).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0**2 / mse)).float()


def ssim(recon: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """SSIM per image on 8-bit levels scaled to [0, 1]; ``[B, 3, H, W]`` → ``[B]``."""
    a = to_uint8_levels(recon.double()) / 255.0
    b = to_uint8_levels(gt.double()) / 255.0
    values = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return values.float()


class StretchingMetric(ImageMetric):
    """An image metric that, under the ``treg`` protocol, scores min–max stretched images."""

    def use_protocol(self, protocol: str) -> list[str]:
        super().use_protocol(protocol)
        return [treg.STRETCH] if protocol == "treg" else []

    def _inputs(self, recon: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.protocol == "treg":
            return treg.minmax_stretch(recon.float()), treg.minmax_stretch(gt.float())
        return recon, gt


class PSNR(StretchingMetric):
    """Column ``psnr`` (dB, peak 255 on the 8-bit images)."""

    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        return {"psnr": psnr(*self._inputs(recon, gt)).cpu()}


class SSIM(StretchingMetric):
    """Column ``ssim``."""

    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        return {"ssim": ssim(*self._inputs(recon, gt)).cpu()}


class MeasurementConsistency(ImageMetric):
    """``consistency = ‖A x̂ − y‖ / ‖y‖`` per image (on the saved reconstruction); ``treg`` adds ``y_mse``."""

    def use_protocol(self, protocol: str) -> list[str]:
        super().use_protocol(protocol)
        return [treg.Y_MSE] if protocol == "treg" else []

    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        y = context.y.float()
        residual = (context.operator(recon.float().to(y.device)) - y).flatten(1)
        values = {"consistency": (residual.norm(dim=1) / y.flatten(1).norm(dim=1)).cpu()}
        if self.protocol == "treg":
            values["y_mse"] = residual.pow(2).mean(dim=1).cpu()
        return values
