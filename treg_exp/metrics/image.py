"""Per-image fidelity metrics on 8-bit images.

PSNR: ``10·log10(255² / MSE)`` over all pixels and channels of the 8-bit images (the papers' convention).
SSIM: torchmetrics' ``structural_similarity_index_measure`` (Gaussian window 11, σ 1.5, K = (0.01, 0.03)) on
[0, 1] images, averaged over channels, as skimage's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=0, data_range=1)`` computes it.
Measurement consistency: ``‖A x̂ − y‖ / ‖y‖`` per image.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

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


class PSNR(ImageMetric):
    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        return {"psnr": psnr(recon, gt)}


class SSIM(ImageMetric):
    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        return {"ssim": ssim(recon, gt)}


class MeasurementConsistency(ImageMetric):
    """``‖A x̂ − y‖ / ‖y‖`` per image (on the saved reconstruction)."""

    def __call__(self, recon, gt, context: MetricContext) -> dict[str, torch.Tensor]:
        y = context.y.float()
        residual = (context.operator(recon.float().to(y.device)) - y).flatten(1).norm(dim=1)
        return {"consistency": (residual / y.flatten(1).norm(dim=1)).cpu()}
