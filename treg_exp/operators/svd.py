"""``task.impl=svd``: the separable truncated-SVD operators of TReg's official code (DDRM's ``svd_operators``).

Each 1-D matrix ``M = U S Vᵀ`` (``[m, n]``) has its singular values below ``threshold`` (0.03) set to zero, giving
``M' = U S' Vᵀ``; DDRM's 2-D singular values are the products ``s'_i·s'_j``, i.e. the 2-D operator is exactly the
separable ``A = M'_h ⊗ M'_w``: ``A x = M'_h x M'_wᵀ``, ``Aᵀ y = M'_hᵀ y M'_w`` and the pseudo-inverse
``A⁺ y = M'_h⁺ y M'_w⁺ᵀ`` with ``M'⁺ = V S'⁺ Uᵀ`` (reciprocals of the kept singular values). All three are exact.

- Gaussian blur (``deblur_gauss``): ``M[i, j] = g[j − i + K/2]`` for ``j − i ∈ [−K/2, K/2)`` inside the image
  (zero boundary), ``g`` the 60 taps of :func:`~treg_exp.operators.kernels.svd_gaussian_taps` (σ = 5.0). At 512 px
  about 3 % of the 2-D singular values survive: it acts as a low-pass projection.
- Bicubic SR (``sr_bicubic``, ``SRConv``): the antialiased Keys matrix with half-sample symmetric ("reflective")
  boundary of :func:`~treg_exp.operators.kernels.downsample_matrix`, identical to DDRM's loop construction.

Matrices are built on the CPU in float64 when the image size is first seen (:meth:`draw` or the first call) and
cached per size, device and dtype. deepinv has no separable truncated-SVD operator (its ``DecomposablePhysics``
needs the full ``U, S, V`` as callables), so this is our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from treg_exp.errors import UserError
from treg_exp.operators.base import LinearOperator, compute_dtype
from treg_exp.operators.kernels import downsample_matrix, svd_gaussian_taps


def truncated(matrix: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(M', M'⁺, s)`` for a 1-D matrix ``M`` ``[m, n]``: singular values ``s < threshold`` set to zero (float64)."""
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    kept = torch.where(s >= threshold, s, torch.zeros_like(s))
    inv = torch.where(kept > 0, 1.0 / torch.where(kept > 0, kept, 1.0), torch.zeros_like(kept))
    return (u * kept) @ vh, (vh.T * inv) @ u.T, kept


def blur_matrix(n: int, taps: torch.Tensor) -> torch.Tensor:
    """DDRM's 1-D zero-boundary blur matrix ``[n, n]``.

    ``M[i, j] = taps[j − i + K//2]`` for ``j ∈ [i − K//2, i + K//2)`` inside the image, ``K`` = number of taps.
    """
    k = taps.shape[0]
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None] + k // 2  # j − i + K//2
    valid = (offsets >= 0) & (offsets < k)
    return torch.where(valid, taps.to(torch.float64)[offsets.clamp(0, k - 1)], torch.zeros((), dtype=torch.float64))


class SeparableSVD(LinearOperator):
    """``y = M'_h x M'_wᵀ + σ_y n`` with truncated 1-D matrices built by ``matrix_fn(n) -> [m, n]``.

    Args:
        matrix_fn: the untruncated 1-D matrix for an axis of length ``n``.
        threshold: 1-D singular values below it are dropped (DDRM/TReg: 0.03).
        factor: input length / output length of ``matrix_fn`` (1 for blur, the scale for SR).
        sigma_y: measurement noise on the [−1, 1] scale.
    """

    def __init__(
        self,
        matrix_fn: Callable[[int], torch.Tensor],
        threshold: float = 0.03,
        factor: int = 1,
        sigma_y: float = 0.01,
        name: str = "svd",
    ) -> None:
        super().__init__(sigma_y=sigma_y)
        if threshold < 0:
            raise UserError(f"task.svd_threshold must be ≥ 0, got {threshold}")
        self.matrix_fn = matrix_fn
        self.threshold = float(threshold)
        self.factor = int(factor)
        self.name = name
        self._factors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[tuple[int, str, torch.dtype, str], torch.Tensor] = {}

    def factors(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M', M'⁺, s')`` in float64 on the CPU for an axis of length ``n`` (cached)."""
        if n not in self._factors:
            self._factors[n] = truncated(self.matrix_fn(n), self.threshold)
        return self._factors[n]

    def _mat(self, n: int, which: str, like: torch.Tensor) -> torch.Tensor:
        key = (n, str(like.device), like.dtype, which)
        if key not in self._cache:
            forward, pinv, _ = self.factors(n)
            self._cache[key] = (forward if which == "A" else pinv).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def out_size(self, n: int) -> int:
        return self.factors(n)[0].shape[0]

    def in_size(self, m: int) -> int:
        """The input length whose matrix has ``m`` rows (``m · factor``)."""
        return m * self.factor

    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> SeparableSVD:
        """Deterministic: builds the SVDs for ``image_shape`` (``[..., H, W]``) and returns ``self``."""
        self.factors(int(image_shape[-2]))
        self.factors(int(image_shape[-1]))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M'_h x M'_wᵀ``: ``[B, C, H, W]`` → ``[B, C, m_h, m_w]``."""
        x = compute_dtype(x)
        return self._mat(x.shape[-2], "A", x) @ x @ self._mat(x.shape[-1], "A", x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``M'_hᵀ y M'_w``: ``[B, C, m_h, m_w]`` → ``[B, C, H, W]``."""
        y = compute_dtype(y)
        h, w = self.in_size(y.shape[-2]), self.in_size(y.shape[-1])
        return self._mat(h, "A", y).T @ y @ self._mat(w, "A", y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse ``A⁺ y = M'_h⁺ y M'_w⁺ᵀ``: ``[B, C, m_h, m_w]`` → ``[B, C, H, W]``."""
        y = compute_dtype(y)
        h, w = self.in_size(y.shape[-2]), self.in_size(y.shape[-1])
        return self._mat(h, "pinv", y) @ y @ self._mat(w, "pinv", y).T

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return (*y.shape[:-2], self.in_size(y.shape[-2]), self.in_size(y.shape[-1]))

    # --- closed-form (AᵀA + λI)⁻¹ (treg_exp.operators.prox) -------------------------------------------------
    def has_closed_form_prox(self) -> bool:
        """True: ``AᵀA = (M'_hᵀM'_h) ⊗ (M'_wᵀM'_w)`` is diagonalised by the 1-D Gram eigenvectors."""
        return True

    def gram_eig(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, Λ)`` of ``M'ᵀM'`` for an axis of length ``n`` (float64, CPU, cached)."""
        from treg_exp.operators.prox import gram_eigh

        cache = self.__dict__.setdefault("_gram_cache", {})
        if n not in cache:
            cache[n] = gram_eigh(self.factors(n)[0])
        return cache[n]

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``(AᵀA + λI)⁻¹ rhs``: ``[B, C, H, W]`` → same, exact."""
        from treg_exp.operators.prox import separable_normal_inverse

        rhs = compute_dtype(rhs)
        return separable_normal_inverse(rhs, self.gram_eig(rhs.shape[-2]), self.gram_eig(rhs.shape[-1]), lam)


def svd_gaussian_blur(
    kernel_size: int = 61,
    kernel_sigma: float = 5.0,
    svd_threshold: float = 0.03,
    sigma_y: float = 0.01,
    name: str = "gauss_deblur",
) -> SeparableSVD:
    """TReg's ``deblur_gauss``: zero-boundary separable Gaussian blur with truncated singular values."""
    taps = svd_gaussian_taps(kernel_size, kernel_sigma)
    return SeparableSVD(lambda n: blur_matrix(n, taps), svd_threshold, 1, sigma_y=sigma_y, name=name)


def svd_downsample(
    factor: int = 16,
    kernel: str = "bicubic",
    boundary: str = "reflect",
    svd_threshold: float = 0.03,
    sigma_y: float = 0.01,
    name: str = "sr16",
) -> SeparableSVD:
    """TReg's ``sr_bicubic`` (DDRM's ``SRConv``): the 1-D antialiased bicubic matrix, truncated SVD."""
    if int(factor) != factor or factor < 1:
        raise UserError(f"task.factor must be a positive integer, got {factor}")
    downsample_matrix(4 * int(factor), int(factor), kernel, boundary)  # validates kernel and boundary names early
    return SeparableSVD(
        lambda n: downsample_matrix(n, int(factor), kernel, boundary),
        svd_threshold,
        int(factor),
        sigma_y=sigma_y,
        name=name,
    )
