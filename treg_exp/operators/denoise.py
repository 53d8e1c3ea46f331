"""Denoising ``y = x + σ_y n`` (``A = I``).

deepinv's ``Denoising`` physics couples ``A = I`` with its own noise model; here the noise must come from the
image's measurement generator (:meth:`LinearOperator.measure`), so ``A = I`` is written directly.
"""

from __future__ import annotations

import torch

from treg_exp.operators.base import LinearOperator, compute_dtype


class Denoising(LinearOperator):
    """``A = Aᵀ = I`` on ``[B, 3, H, W]``; ``sigma_y`` on the [−1, 1] scale."""

    def __init__(self, sigma_y: float = 0.01, name: str = "denoise") -> None:
        super().__init__(sigma_y=sigma_y, name=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float32 for half inputs)."""
        return compute_dtype(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (float32 for half inputs)."""
        return compute_dtype(y)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)

    def has_closed_form_prox(self) -> bool:
        return True

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``rhs / (1 + λ)`` (``AᵀA = I``)."""
        return compute_dtype(rhs) / (1.0 + lam)
