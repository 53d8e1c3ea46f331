"""``task.impl=svd``: the separable truncated-SVD operators of TReg's official code (DDRM's ``svd_operators``).

Each 1-D matrix ``M = U S Vᵀ`` (``[m, n]``) has its singular values below ``threshold`` (0.03) set to zero, giving
``s'``. The 2-D operator acts on each channel's spectral coefficients ``T = V_hᵀ X V_w`` (mode ``(i, j)``) by a
diagonal scale and maps back with ``U``: ``A X = U_h (D ∘ T) U_wᵀ``, ``Aᵀ Y = V_h (D ∘ U_hᵀ Y U_w) V_wᵀ`` and the
pseudo-inverse ``A⁺ Y = V_h (D⁺ ∘ U_hᵀ Y U_w) V_wᵀ`` (``D⁺``: reciprocals of the nonzero entries). All three are
exact for either pairing (tests/test_operators.py compares them to a dense construction). ``svd_pairing`` says
which ``D``:

- ``consistent``: ``D[c, i, j] = s'_i·s'_j``, each mode scaled by its own singular value; then ``A`` is exactly the
  separable ``M'_h ⊗ M'_w`` (``A x = M'_h x M'_wᵀ`` with ``M' = U S' Vᵀ``), which is how it is computed. This is
  the truncated zero-boundary blur the official code means to apply.
- ``official``: what the official ``functions/svd_operators.py`` class ``Deblurring`` computes. It sorts the
  ``N = H·W`` products ``s'_i·s'_j`` in descending order (rank ``p`` ↔ mode ``perm[p]``), returns the
  coefficients of ``Vt``/``Ut`` pixel-major (flat index ``3p + c``) but repeats the sorted singular values
  channel-major (``singulars()`` = ``repeat(1, 3)``): the coefficient of mode ``perm[p]`` of channel ``c`` is
  scaled by the sorted value at index ``(3p + c) mod N``, not by its own (with ``C`` channels, ``(C·p + c) mod N``).
  ``A``, ``Aᵀ`` and ``A⁺`` (``A_pinv``) use the same pairing, so it is still a linear operator with an exact adjoint
  and pseudo-inverse — a different one. At 512 px (σ = 5) two thirds of the 3·87² kept coefficients get 0 and as
  many modes whose own singular value is 0 get values up to 0.999; on a draw of the Gaussian prior the noiseless
  measurement differs from ``consistent``'s by 25 %. TReg's published Gaussian-deblur numbers were computed with
  it. ``SRConv`` (SR) repeats with ``repeat_interleave(3)``, which is the consistent pairing: for SR both values
  give the same operator.

The official pairing, as reproduced here, and where it can differ from a run of the official code:

- Ties in the sort (``s'_i·s'_j = s'_j·s'_i``, and the block of exact zeros, which decides which zero-singular
  modes get nonzero scales) are broken by flat index ``i·W + j`` (a stable sort). The official code sorts on the
  GPU, where PyTorch (2.x, ``aten/native/cuda/Sort.cpp``) sorts more than 4096 values by a stable radix sort, so
  the orders agree at its 512 px; PyTorch's CPU sort breaks the ties otherwise (7 % different measurement at 512).
- The official SVD is float32 on the GPU, ours float64. The float32 ranks move the scale of 8 of the 3·512²
  coefficients at 512 px (near-ties). More importantly, the official pairing gives nonzero scales to modes of 1-D
  index 170–346 of 512, whose own singular values (1e-6 down to a plateau near 1e-9) are so close together that
  their singular vectors are fixed only up to rotations within the plateau, i.e. by the SVD routine: a float32
  SVD changes that operator's measurement of a prior draw by 5 % (the consistent operator's by 1e-6). No
  implementation reproduces the official measurement exactly on those modes; ours uses torch's float64 SVD.
  (These numbers: ``python benchmarks/svd_pairing.py``.)

- Gaussian blur (``deblur_gauss``): ``M[i, j] = g[j − i + K/2]`` for ``j − i ∈ [−K/2, K/2)`` inside the image
  (zero boundary), ``g`` the 60 taps of :func:`~treg_exp.operators.kernels.svd_gaussian_taps` (σ = 5.0). At 512 px
  87 of 512 1-D singular values survive ((87/512)² ≈ 3 % of the 2-D modes): it acts as a low-pass projection.
- Bicubic SR (``sr_bicubic``, ``SRConv``): the antialiased Keys matrix with half-sample symmetric ("reflective")
  boundary of :func:`~treg_exp.operators.kernels.downsample_matrix`, identical to DDRM's loop construction.

Matrices are built on the CPU in float64 when the image size is first seen (:meth:`draw` or the first call) and
cached per size, device and dtype. deepinv has no separable truncated-SVD operator (its ``DecomposablePhysics``
needs the full ``U, S, V`` as callables), so this is our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator, compute_dtype
from treg_exp.operators.kernels import downsample_matrix, svd_gaussian_taps
from treg_exp.operators.prox import SeparableNormalInverse

#: ``task.svd_pairing`` values (see the module docstring).
SVD_PAIRINGS = ("official", "consistent")


def check_pairing(pairing: str) -> str:
    """``pairing`` if it is one of :data:`SVD_PAIRINGS`, else a one-line :class:`UserError`."""
    if pairing not in SVD_PAIRINGS:
        raise UserError(f"task.svd_pairing must be one of {', '.join(SVD_PAIRINGS)}, got {pairing!r}")
    return pairing


def truncated_svd(matrix: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, s', Vᵀ)`` of a 1-D matrix ``[m, n]`` (float64, reduced SVD), singular values ``< threshold`` set to 0."""
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return u, torch.where(s >= threshold, s, torch.zeros_like(s)), vh


def truncated(matrix: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(M', M'⁺, s')`` for a 1-D matrix ``M`` ``[m, n]``: singular values ``s < threshold`` set to zero (float64)."""
    u, kept, vh = truncated_svd(matrix, threshold)
    return (u * kept) @ vh, (vh.T * reciprocal(kept)) @ u.T, kept


def reciprocal(values: torch.Tensor) -> torch.Tensor:
    """``1/v`` where ``v ≠ 0``, 0 elsewhere (the pseudo-inverse of a diagonal)."""
    nonzero = values != 0
    return torch.where(nonzero, 1.0 / torch.where(nonzero, values, torch.ones_like(values)), torch.zeros_like(values))


def official_scales(s_h: torch.Tensor, s_w: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``D`` ``[C, H, W]`` of the official pairing: mode ``(i, j)`` of channel ``c`` gets ``sorted[(C·p + c) mod N]``.

    ``sorted`` are the ``N = H·W`` products ``s_h[i]·s_w[j]`` in descending order and ``p`` the rank of ``(i, j)``
    among them, ties broken by the flat index ``i·W + j`` (a stable sort, as PyTorch's GPU sort of the official
    code). ``channels == 1`` gives the consistent ``s_h[i]·s_w[j]``.
    """
    products = torch.outer(s_h, s_w).reshape(-1)
    count = products.shape[0]
    order = torch.sort(products, descending=True, stable=True).indices  # order[p] = flat index of rank p
    ranked = products[order]
    ranks = torch.arange(count)
    scales = torch.empty(channels, count, dtype=products.dtype)
    for c in range(channels):
        scales[c, order] = ranked[(channels * ranks + c) % count]
    return scales.reshape(channels, s_h.shape[0], s_w.shape[0])


def blur_matrix(n: int, taps: torch.Tensor) -> torch.Tensor:
    """DDRM's 1-D zero-boundary blur matrix ``[n, n]``.

    ``M[i, j] = taps[j − i + K//2]`` for ``j ∈ [i − K//2, i + K//2)`` inside the image, ``K`` = number of taps.
    """
    k = taps.shape[0]
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None] + k // 2  # j − i + K//2
    valid = (offsets >= 0) & (offsets < k)
    return torch.where(valid, taps.to(torch.float64)[offsets.clamp(0, k - 1)], torch.zeros((), dtype=torch.float64))


class SeparableSVD(SeparableNormalInverse, LinearOperator):
    """``y = A x + σ_y n`` from truncated 1-D matrices built by ``matrix_fn(n) -> [m, n]``, paired by ``pairing``.

    Args:
        matrix_fn: the untruncated 1-D matrix for an axis of length ``n``.
        threshold: 1-D singular values below it are dropped (DDRM/TReg: 0.03).
        factor: input length / output length of ``matrix_fn`` (1 for blur, the scale for SR).
        sigma_y: measurement noise on the [−1, 1] scale.
        pairing: ``consistent`` (``A = M'_h ⊗ M'_w``) or ``official`` (the official ``Deblurring``'s pairing of
            sorted singular values with coefficients; square matrices only, ``factor`` 1). See the module docstring.
    """

    def __init__(
        self,
        matrix_fn: Callable[[int], torch.Tensor],
        threshold: float = 0.03,
        factor: int = 1,
        sigma_y: float = 0.01,
        name: str = "svd",
        pairing: str = "consistent",
    ) -> None:
        super().__init__(sigma_y=sigma_y, name=name)
        if threshold < 0:
            raise UserError(f"task.svd_threshold must be ≥ 0, got {threshold}")
        self.pairing = check_pairing(pairing)
        if self.pairing == "official" and int(factor) != 1:
            raise UserError("task.svd_pairing=official is the official blur's pairing (square matrices, factor 1)")
        self.matrix_fn = matrix_fn
        self.threshold = float(threshold)
        self.factor = int(factor)
        self._svds: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._factors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[tuple, torch.Tensor] = {}

    def svd(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, s', Vᵀ)`` in float64 on the CPU for an axis of length ``n`` (cached)."""
        if n not in self._svds:
            self._svds[n] = truncated_svd(self.matrix_fn(n), self.threshold)
        return self._svds[n]

    def factors(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(M', M'⁺, s')`` in float64 on the CPU for an axis of length ``n`` (cached)."""
        if n not in self._factors:
            u, kept, vh = self.svd(n)
            self._factors[n] = ((u * kept) @ vh, (vh.T * reciprocal(kept)) @ u.T, kept)
        return self._factors[n]

    def scales(self, h: int, w: int, channels: int) -> torch.Tensor:
        """``D`` ``[C, h, w]`` (float64, CPU) for an ``h × w`` input: ``s'_i·s'_j``, or the official pairing."""
        _, s_h, _ = self.svd(h)
        _, s_w, _ = self.svd(w)
        if self.pairing == "official":
            return official_scales(s_h, s_w, channels)
        return torch.outer(s_h, s_w).expand(channels, -1, -1)

    def _mat(self, n: int, which: str, like: torch.Tensor) -> torch.Tensor:
        key = (n, str(like.device), like.dtype, which)
        if key not in self._cache:
            forward, pinv, _ = self.factors(n)
            u, _, vh = self.svd(n)
            matrix = {"A": forward, "pinv": pinv, "U": u, "Vt": vh}[which]
            self._cache[key] = matrix.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _scale(self, h: int, w: int, channels: int, inverse: bool, like: torch.Tensor) -> torch.Tensor:
        key = (h, w, channels, str(like.device), like.dtype, "pinv" if inverse else "scale")
        if key not in self._cache:
            scales = self.scales(h, w, channels)
            self._cache[key] = (reciprocal(scales) if inverse else scales).to(device=like.device, dtype=like.dtype)
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

    # The official pairing in the spectral form: T = V_hᵀ X V_w, scaled per (channel, mode), mapped back.
    def _spectral(self, v: torch.Tensor, h: int, w: int, inverse: bool, forward: bool) -> torch.Tensor:
        scale = self._scale(h, w, v.shape[-3], inverse, v)
        if forward:  # X ↦ U_h (D ∘ V_hᵀ X V_w) U_wᵀ
            coeffs = self._mat(h, "Vt", v) @ v @ self._mat(w, "Vt", v).T
            return self._mat(h, "U", v) @ (scale * coeffs) @ self._mat(w, "U", v).T
        # Y ↦ V_h (D ∘ U_hᵀ Y U_w) V_wᵀ (the adjoint, or the pseudo-inverse with D⁺)
        coeffs = self._mat(h, "U", v).T @ v @ self._mat(w, "U", v)
        return self._mat(h, "Vt", v).T @ (scale * coeffs) @ self._mat(w, "Vt", v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: ``[B, C, H, W]`` → ``[B, C, m_h, m_w]``."""
        x = compute_dtype(x)
        if self.pairing == "official":
            return self._spectral(x, x.shape[-2], x.shape[-1], inverse=False, forward=True)
        return self._mat(x.shape[-2], "A", x) @ x @ self._mat(x.shape[-1], "A", x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y``: ``[B, C, m_h, m_w]`` → ``[B, C, H, W]``."""
        y = compute_dtype(y)
        h, w = self.in_size(y.shape[-2]), self.in_size(y.shape[-1])
        if self.pairing == "official":
            return self._spectral(y, h, w, inverse=False, forward=False)
        return self._mat(h, "A", y).T @ y @ self._mat(w, "A", y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse ``A⁺ y``: ``[B, C, m_h, m_w]`` → ``[B, C, H, W]``."""
        y = compute_dtype(y)
        h, w = self.in_size(y.shape[-2]), self.in_size(y.shape[-1])
        if self.pairing == "official":
            return self._spectral(y, h, w, inverse=True, forward=False)
        return self._mat(h, "pinv", y) @ y @ self._mat(w, "pinv", y).T

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return (*y.shape[:-2], self.in_size(y.shape[-2]), self.in_size(y.shape[-1]))

    # --- closed-form (AᵀA + λI)⁻¹ (treg_exp.operators.prox) -------------------------------------------------
    def axis_matrix(self, n: int) -> torch.Tensor:
        """``M'`` (float64, CPU) of an axis of length ``n``: :class:`SeparableNormalInverse` diagonalises
        ``M'ᵀM'`` (consistent pairing); the official pairing has its own inverse below."""
        return self.factors(n)[0]

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``(AᵀA + λI)⁻¹ rhs``: ``[B, C, H, W]`` → same, exact. Consistent pairing: ``AᵀA = (M'_hᵀM'_h) ⊗
        (M'_wᵀM'_w)`` (:class:`SeparableNormalInverse`); official pairing: ``AᵀA = V diag(D²) Vᵀ`` with
        ``V = V_h ⊗ V_w`` square and orthogonal."""
        if self.pairing != "official":
            return super().normal_inverse(rhs, lam)
        rhs = compute_dtype(rhs)  # V (Vᵀ r / (D² + λ)); the official pairing has factor 1, so V is square
        h, w = rhs.shape[-2:]
        scale = self._scale(h, w, rhs.shape[-3], False, rhs)
        coeffs = self._mat(h, "Vt", rhs) @ rhs @ self._mat(w, "Vt", rhs).T
        return self._mat(h, "Vt", rhs).T @ (coeffs / (scale * scale + lam)) @ self._mat(w, "Vt", rhs)


def svd_gaussian_blur(
    kernel_size: int = 61,
    kernel_sigma: float = 5.0,
    svd_threshold: float = 0.03,
    sigma_y: float = 0.01,
    name: str = "gauss_deblur",
    svd_pairing: str = "official",
) -> SeparableSVD:
    """TReg's ``deblur_gauss``: zero-boundary separable Gaussian blur with truncated singular values, paired
    ``official`` (as the official code computes it; default) or ``consistent`` (the intended operator)."""
    taps = svd_gaussian_taps(kernel_size, kernel_sigma)
    return SeparableSVD(
        lambda n: blur_matrix(n, taps), svd_threshold, 1, sigma_y=sigma_y, name=name, pairing=svd_pairing
    )


def svd_downsample(
    factor: int = 16,
    kernel: str = "bicubic",
    boundary: str = "reflect",
    svd_threshold: float = 0.03,
    sigma_y: float = 0.01,
    name: str = "sr16",
    svd_pairing: str = "official",
) -> SeparableSVD:
    """TReg's ``sr_bicubic`` (DDRM's ``SRConv``): the 1-D antialiased bicubic matrix, truncated SVD.

    ``SRConv`` pairs singular values consistently, so ``svd_pairing`` ``official`` and ``consistent`` are the same
    operator here (the value is checked, then the consistent form is built)."""
    check_pairing(svd_pairing)
    factor = checks.integer("task.factor", factor, minimum=1)
    downsample_matrix(4 * factor, factor, kernel, boundary)  # validates kernel and boundary names early
    return SeparableSVD(
        lambda n: downsample_matrix(n, factor, kernel, boundary),
        svd_threshold,
        factor,
        sigma_y=sigma_y,
        name=name,
    )
