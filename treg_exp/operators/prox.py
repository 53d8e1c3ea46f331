"""Closed forms of ``(AᵀA + λI)⁻¹`` for the operators that have one (the data step of DiffPIR and RED-ADMM).

``argmin_x ‖y − A x‖² + λ‖x − x₀‖²`` solves ``(AᵀA + λI) x = Aᵀy + λx₀``. Where ``AᵀA`` is diagonal in a known
basis the inverse is exact and cheap (deepinv's ``physics.prox_l2`` does the same for its decomposable physics):

- a binary mask (inpainting) or the identity (denoising): ``AᵀA`` is diagonal in pixels;
- a blur with circular boundary: ``AᵀA`` is circulant, diagonal in the 2-D DFT, with eigenvalues the DFT of
  ``AᵀA δ₀`` (its first column; probed with one operator application, so flip and centring conventions cannot
  disagree with the operator);
- separable operators ``A x = M_h x M_wᵀ`` (SR by matrices, the truncated-SVD blur and SR): ``AᵀA = G_h ⊗ G_w`` with
  ``G = MᵀM = V Λ Vᵀ`` (eigendecomposed once per size, float64), so ``(AᵀA + λI)⁻¹ = (V_h ⊗ V_w)(Λ_h ⊗ Λ_w + λ)⁻¹(…)ᵀ``.

Blurs with reflect or zero boundary have no such form; :meth:`LinearOperator.prox_l2` runs CG for them.
"""

from __future__ import annotations

import torch

from treg_exp.operators.base import compute_dtype


def gram_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, Λ)`` with ``MᵀM = V diag(Λ) Vᵀ`` for a 1-D matrix ``M`` ``[m, n]`` (float64; Λ clipped at 0)."""
    m64 = matrix.to(torch.float64)
    values, vectors = torch.linalg.eigh(m64.T @ m64)
    return vectors, values.clamp_min(0.0)


def separable_normal_inverse(
    rhs: torch.Tensor,
    eig_h: tuple[torch.Tensor, torch.Tensor],
    eig_w: tuple[torch.Tensor, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """``(G_h ⊗ G_w + λI)⁻¹ rhs`` on ``[..., H, W]`` from the eigendecompositions of the two 1-D Gram matrices."""
    vh, lh = (t.to(device=rhs.device, dtype=rhs.dtype) for t in eig_h)
    vw, lw = (t.to(device=rhs.device, dtype=rhs.dtype) for t in eig_w)
    coeffs = vh.T @ rhs @ vw
    coeffs = coeffs / (lh[:, None] * lw[None, :] + lam)
    return vh @ coeffs @ vw.T


class SeparableNormalInverse:
    """The exact ``(AᵀA + λI)⁻¹`` of a separable operator ``A x = M_h x M_wᵀ``, for a :class:`LinearOperator`
    subclass that names its 1-D matrix with :meth:`axis_matrix` (SR by matrices, the truncated-SVD blur and SR).

    ``AᵀA = G_h ⊗ G_w`` with ``G = MᵀM``, so one eigendecomposition per axis length (cached) gives the inverse."""

    def axis_matrix(self, n: int) -> torch.Tensor:
        """The 1-D matrix ``M`` ``[m, n]`` of an axis of length ``n`` (float64, CPU)."""
        raise NotImplementedError

    def has_closed_form_prox(self) -> bool:
        """True: ``AᵀA = (M_hᵀM_h) ⊗ (M_wᵀM_w)`` is diagonalised by the eigenvectors of the 1-D Gram matrices."""
        return True

    def gram_eig(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, Λ)`` of ``MᵀM`` for an axis of length ``n`` (float64, CPU, cached)."""
        cache = self.__dict__.setdefault("_gram_cache", {})
        if n not in cache:
            cache[n] = gram_eigh(self.axis_matrix(n))
        return cache[n]

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``(AᵀA + λI)⁻¹ rhs``: ``[B, C, H, W]`` → same, exact."""
        rhs = compute_dtype(rhs)
        return separable_normal_inverse(rhs, self.gram_eig(rhs.shape[-2]), self.gram_eig(rhs.shape[-1]), lam)


def circulant_normal_inverse(rhs: torch.Tensor, spectrum: torch.Tensor, lam: float) -> torch.Tensor:
    """``(C + λI)⁻¹ rhs`` for a circulant ``C`` with DFT eigenvalues ``spectrum`` (broadcastable to ``rhs``)."""
    solved = torch.fft.fft2(rhs) / (spectrum + lam)
    return torch.fft.ifft2(solved).real.to(rhs.dtype)
