"""Super-resolution operators: antialiased bicubic ×4/×16 (DPS, TReg) and average pooling ×8 (P2L).

``A x = M_h · x · M_wᵀ`` per channel with the 1-D matrices of :func:`treg_exp.operators.kernels.downsample_matrix`
(Keys a = −0.5 stretched by the factor, PIL's sampling grid, half-sample symmetric boundary as in DPS's resizer
and DDRM/TReg's ``SRConv``; or the box filter). The adjoint ``M_hᵀ · y · M_w`` is exact, and the matrices are
tiny (``H/f × H``), so a 512 px image costs two small matmuls per channel.

Decision on deepinv (0.5.0): ``deepinv.physics.Downsampling(filter="bicubic")`` is not used, for measured
reasons (``.venv/bin/python -c "from treg_exp.operators.sr import _compare_with_deepinv as f; f()"``): it
filters with a padded convolution, then keeps pixel 0 of each block (``x[..., ::f, ::f]``), so its samples are
off the sampling grid of PIL/DPS — on a 64 px ramp image its ×4 output differs from PIL's ``BICUBIC`` by 4.5e-2
(max over the interior) while ours matches PIL to 6e-8; it also recomputes the filter's FFT on every call.
Average pooling is the box matrix (equal to ``F.avg_pool2d(x, 8)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator, compute_dtype
from treg_exp.operators.kernels import SR_BOUNDARIES, SR_KERNELS, downsample_matrix
from treg_exp.operators.prox import SeparableNormalInverse
from treg_exp.operators.svd import check_pairing, svd_downsample


class SeparableDownsample(SeparableNormalInverse, LinearOperator):
    """``y = M_h x M_wᵀ + σ_y n``: ``[B, 3, H, W]`` → ``[B, 3, H/f, W/f]``; exact ``(AᵀA + λI)⁻¹`` from
    :class:`~treg_exp.operators.prox.SeparableNormalInverse`.

    Args:
        factor: integer downsampling factor ``f`` (H and W must be divisible by it).
        kernel: ``bicubic`` (Keys a = −0.5, antialiased) or ``box`` (average pooling).
        boundary: ``reflect`` (DPS/DDRM) or ``renormalize`` (PIL).
        sigma_y: measurement noise on the [−1, 1] scale.
    """

    def __init__(
        self,
        factor: int = 4,
        kernel: str = "bicubic",
        boundary: str = "reflect",
        sigma_y: float = 0.01,
        name: str = "sr",
    ) -> None:
        super().__init__(sigma_y=sigma_y, name=name)
        self.factor = checks.integer("task.factor", factor, minimum=1)
        self.kernel = checks.choice("task.kernel", kernel, SR_KERNELS, " (box: average pooling)")
        self.boundary = checks.choice("task.boundary", boundary, SR_BOUNDARIES)
        self._cache: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

    def matrix(self, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The 1-D matrix ``[n/f, n]`` on ``device`` in ``dtype`` (built once in float64, cached)."""
        key = (n, str(device), dtype)
        if key not in self._cache:
            base = self._cache.get((n, "cpu", torch.float64))
            if base is None:
                base = downsample_matrix(n, self.factor, self.kernel, self.boundary)
                self._cache[(n, "cpu", torch.float64)] = base
            self._cache[key] = base.to(device=device, dtype=dtype)
        return self._cache[key]

    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> SeparableDownsample:
        """Deterministic: builds the matrices for ``image_shape`` (``[..., H, W]``) and returns ``self``."""
        self.matrix(int(image_shape[-2]))
        self.matrix(int(image_shape[-1]))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M_h x M_wᵀ``: ``[B, C, H, W]`` → ``[B, C, H/f, W/f]``."""
        x = compute_dtype(x)
        mh = self.matrix(x.shape[-2], x.device, x.dtype)
        mw = self.matrix(x.shape[-1], x.device, x.dtype)
        return mh @ x @ mw.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``M_hᵀ y M_w``: ``[B, C, h, w]`` → ``[B, C, h·f, w·f]``."""
        y = compute_dtype(y)
        mh = self.matrix(y.shape[-2] * self.factor, y.device, y.dtype)
        mw = self.matrix(y.shape[-1] * self.factor, y.device, y.dtype)
        return mh.T @ y @ mw

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return (*y.shape[:-2], y.shape[-2] * self.factor, y.shape[-1] * self.factor)

    def axis_matrix(self, n: int) -> torch.Tensor:
        """The 1-D matrix ``[n/f, n]`` (float64, CPU): what :class:`SeparableNormalInverse` diagonalises."""
        return self.matrix(n)


def super_resolution(
    factor: int = 4,
    kernel: str = "bicubic",
    boundary: str = "reflect",
    impl: str = "direct",
    sigma_y: float = 0.01,
    svd_threshold: float = 0.03,
    name: str = "sr",
    svd_pairing: str = "official",
) -> LinearOperator:
    """The SR task: ``impl=direct`` (:class:`SeparableDownsample`) or ``impl=svd`` (TReg/DDRM's ``SRConv``: the same
    1-D matrices with singular values below ``svd_threshold`` dropped; exact adjoint and pseudo-inverse).

    ``svd_pairing`` (``official`` | ``consistent``) is checked but changes nothing here: ``SRConv`` pairs singular
    values consistently (see :mod:`treg_exp.operators.svd`); it exists so presets can set it for every task."""
    check_pairing(svd_pairing)
    if impl == "svd":
        return svd_downsample(factor, kernel, boundary, svd_threshold, sigma_y=sigma_y, name=name)
    if impl != "direct":
        raise UserError(f"unknown SR task.impl {impl!r}; choose direct or svd")
    return SeparableDownsample(factor, kernel, boundary, sigma_y=sigma_y, name=name)


def _compare_with_deepinv() -> None:  # pragma: no cover - the measurement quoted in the module docstring
    import warnings

    import numpy as np
    from deepinv.physics import Downsampling
    from PIL import Image

    n, f = 64, 4
    ramp = torch.linspace(-1, 1, n, dtype=torch.float64)
    x = (ramp[:, None] * ramp[None, :]).float()[None, None].repeat(1, 3, 1, 1)
    ref = Image.fromarray(x[0, 0].numpy().astype(np.float32), mode="F").resize((n // f, n // f), Image.BICUBIC)
    ref = torch.from_numpy(np.asarray(ref).copy())
    ours = SeparableDownsample(f)(x)[0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Downsampling(img_size=(3, n, n), filter="bicubic", factor=f, padding="reflect")(x)[0, 0]
    inner = slice(2, n // f - 2)
    print(f"ours vs PIL interior max |diff|: {float((ours - ref)[inner, inner].abs().max()):.2e}")
    print(f"deepinv vs PIL interior max |diff|: {float((theirs - ref)[inner, inner].abs().max()):.2e}")
