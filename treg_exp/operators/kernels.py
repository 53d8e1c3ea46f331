"""Blur and resampling kernels of the papers, pinned to the constructions of their code.

- :func:`gaussian_kernel`: DPS's 61×61 Gaussian (``scipy.ndimage.gaussian_filter`` of a centred delta: a separable,
  normalised 1-D Gaussian truncated at ``4σ``), σ = 5.0 (TReg) or 3.0 (DPS/P2L). Sum 1, symmetric.
- :func:`svd_gaussian_taps`: the 1-D kernel of TReg's truncated-SVD deblurring (``functions/degradation.py``:
  ``exp(−k²/2σ²)`` for ``k = −30 … 29``, normalised — its +30 tap is absent, ≈1e-8 of the centre at σ = 5).
- :func:`motion_kernel`: Borodenko's ``motionblur`` random-trajectory kernel (``Kernel(size, intensity)
  .kernelMatrix``, the generator DPS calls with size 61, intensity 0.5), with every random draw taken from a
  per-image ``torch.Generator`` instead of NumPy's global state. Given the same uniform draws it equals a literal
  transcription of Borodenko's ``_createPath``/``_createKernel`` to float32 rounding (``tests/test_operators.py``).
  Its ``eps`` is Borodenko's 0.1 and the path gets his random ``U(0, π)`` rotation (an earlier version here used
  machine epsilon and no rotation: shorter steps, narrower angles, paths all oriented around the horizontal). The only
  departure is the random source: NumPy's ``beta``/``triangular`` samplers are replaced by constructions from
  uniforms (same laws, different numbers), so a seed here does not reproduce a NumPy seed there; and below size 54
  the line is drawn 1 px wide where Borodenko's ``int(D/150)`` is 0 px wide (PIL draws nothing, his kernel is NaN).
- :func:`keys_cubic` and :func:`downsample_matrix`: Keys' cubic convolution (a = −0.5) stretched by the factor
  (antialiased, ``4·factor`` taps) on PIL's sampling grid — output pixel ``m`` is centred on input coordinate
  ``(m + ½)·factor`` — which is what DPS's resizer, PIL's ``BICUBIC`` and DDRM/TReg's ``SRConv`` compute; they
  differ only in the boundary (``reflect``: half-sample symmetric, DPS/DDRM; ``renormalize``: PIL's clipped and
  renormalised window). ``kernel="box"`` gives average pooling (P2L's SR ×8).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from treg_exp.common import checks, seeding
from treg_exp.common.errors import UserError


def gaussian_kernel_1d(size: int, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[size]`` (float64) centred at ``size // 2``, zero beyond ``int(truncate·σ + ½)``.

    This is the row of ``scipy.ndimage.gaussian_filter(delta, σ)`` that DPS uses to build its kernel.
    """
    if size < 1 or size % 2 == 0:
        raise UserError(f"kernel_size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise UserError(f"kernel_sigma must be positive, got {sigma}")
    radius = min(int(truncate * sigma + 0.5), size // 2)
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = torch.where(offsets.abs() <= radius, g, torch.zeros_like(g))
    return g / g.sum()


def gaussian_kernel(size: int = 61, sigma: float = 5.0) -> torch.Tensor:
    """DPS's Gaussian blur kernel ``[size, size]`` (float64, sum 1): outer product of :func:`gaussian_kernel_1d`."""
    g = gaussian_kernel_1d(size, sigma)
    return torch.outer(g, g)


def svd_gaussian_taps(size: int = 61, sigma: float = 5.0) -> torch.Tensor:
    """TReg's 1-D truncated-SVD blur taps ``[2·(size//2)]`` for offsets ``−size//2 … size//2 − 1`` (float64, sum 1)."""
    if sigma <= 0:
        raise UserError(f"kernel_sigma must be positive, got {sigma}")
    half = size // 2
    offsets = torch.arange(-half, half, dtype=torch.float64)
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return g / g.sum()


# --- Borodenko's motion-blur trajectory ------------------------------------------------------------------------
# Borodenko's ``eps`` ("tiny error used for numerical stability"): 0.1, not machine epsilon. It is not tiny — it
# sets the step scale ``(1 − I + 0.1)·D`` (a tenth of the diagonal at I = 1) and widens the angle distribution.
_BORODENKO_EPS = 0.1

#: ``draw(low, high)``: one U(low, high) number; every random quantity of the trajectory is built from these.
UniformDraw = Callable[[float, float], float]


def _beta(draw: UniformDraw, a: int, b: int) -> float:
    """Beta(a, b) for integer shapes from uniforms: ``1 − U^(1/b)`` (inverse CDF) when ``a = 1``, else the
    ``a``-th smallest of ``a + b − 1`` uniforms (the order-statistic law of Beta(a, b))."""
    if a == 1:
        return 1.0 - draw(0.0, 1.0) ** (1.0 / b)
    return sorted(draw(0.0, 1.0) for _ in range(a + b - 1))[a - 1]


def _triangular(draw: UniformDraw, left: float, mode: float, right: float) -> float:
    """Triangular(left, mode, right) by its inverse CDF (NumPy's formula), from one uniform."""
    u = draw(0.0, 1.0)
    c = (mode - left) / (right - left)
    if u <= c:
        return left + math.sqrt(u * (right - left) * (mode - left))
    return right - math.sqrt((1.0 - u) * (right - left) * (right - mode))


def motion_kernel(size: int = 61, intensity: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random motion-blur kernel ``[size, size]`` (float32, sum 1), Borodenko's ``Kernel(...).kernelMatrix``.

    The path is drawn on a canvas twice the size: a total length ``0.75·D·(U + U(0, I²))`` (``D`` the canvas
    diagonal, ``I`` the intensity) made of ``Beta(1, 30)·(1 − I + 0.1)·D`` steps, with angles bounded by
    ``U(0, I·π)`` (first angle ``U(−max, max)``, then ``Triangular(0, I·max, max + 0.1)`` in absolute value) whose
    sign flips with a Beta(2, 20) jitter probability; the path is centred on its centre of mass, rotated by
    ``U(0, π)``, moved to the canvas centre, drawn as a white line of width ``max(1, int(D/150))``, blurred by a
    Gaussian of radius ``int(0.01·D)``, resized with Lanczos, converted to 8-bit grey and normalised — as in the
    original, in the original's draw order. Only the random source differs (every draw is
    ``seeding.uniform(generator, …)``, Beta and triangular variates built from those: :func:`_beta`,
    :func:`_triangular`), and the 1 px minimum width (the original draws nothing below size 54).
    """
    if size < 3:
        raise UserError(f"motion kernel_size must be at least 3, got {size}")
    if not 0.0 <= intensity <= 1.0:
        raise UserError(f"motion blur intensity must be in [0, 1], got {intensity}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return _motion_kernel(size, intensity, lambda low, high: seeding.uniform(g, low, high))


def _motion_kernel(size: int, intensity: float, draw: UniformDraw) -> torch.Tensor:
    canvas = 2 * size
    diagonal = (canvas**2 + canvas**2) ** 0.5  # Borodenko's expression, for the same last bit
    # steps (Borodenko's getSteps): a step longer than the whole path is redrawn
    max_len = 0.75 * diagonal * (draw(0.0, 1.0) + draw(0.0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_len:
        step = _beta(draw, 1, 30) * (1.0 - intensity + _BORODENKO_EPS) * diagonal
        if step < max_len:
            steps.append(step)
    # angles (getAngles)
    max_angle = draw(0.0, intensity * math.pi)
    jitter = _beta(draw, 2, 20)
    angles = [draw(-max_angle, max_angle)]
    while len(angles) < len(steps):
        angle = _triangular(draw, 0.0, intensity * max_angle, max_angle + _BORODENKO_EPS)
        sign = float(np.sign(angles[-1]))
        angles.append(-angle * sign if draw(0.0, 1.0) < jitter else angle * sign)
    if not steps:  # total length 0.75·D·(U + U(0, I²)) = 0 exactly (Borodenko: 0/0): a delta, never NaN
        kernel = torch.zeros(size, size)
        kernel[size // 2, size // 2] = 1.0
        return kernel
    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = path - path.sum() / len(steps)
    path = path * np.exp(1j * draw(0.0, math.pi))  # the random rotation of the whole path
    path = path + (canvas + 1j * canvas) / 2
    image = Image.new("RGB", (canvas, canvas))
    # Borodenko's width int(D/150) is 0 below size 54, and PIL draws nothing at width 0 (his kernel is then 0/0):
    # at least one pixel, so that small kernels (tests) stay trajectories; sizes ≥ 54 (the paper's 61) are unchanged.
    width = max(1, int(diagonal / 150))
    ImageDraw.Draw(image).line(xy=list(zip(path.real, path.imag, strict=True)), width=width)
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.Resampling.LANCZOS).convert("L")
    kernel = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    total = kernel.sum()
    if total <= 0:  # a path entirely off the canvas (not seen, but Borodenko would give 0/0): a delta, never NaN
        kernel = torch.zeros(size, size)
        kernel[size // 2, size // 2] = 1.0
        return kernel
    return kernel / total


# --- Keys bicubic / box downsampling matrices -------------------------------------------------------------------
def keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (support |x| < 2); a = −0.5 is PIL's, DPS's and DDRM's choice."""
    ax = x.abs()
    near = (a + 2) * ax**3 - (a + 3) * ax**2 + 1
    far = a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


#: the 1-D filters of :func:`downsample_matrix` and its boundary rules
SR_KERNELS = ("bicubic", "box")
SR_BOUNDARIES = ("reflect", "renormalize")


def downsample_matrix(n: int, factor: int, kernel: str = "bicubic", boundary: str = "reflect") -> torch.Tensor:
    """1-D antialiased downsampling matrix ``[n // factor, n]`` (float64, rows sum to 1).

    Args:
        n: input length (divisible by ``factor``).
        factor: integer scale factor.
        kernel: ``bicubic`` (Keys a = −0.5 stretched by ``factor``: ``4·factor`` taps) or ``box`` (average pooling).
        boundary: ``reflect`` (half-sample symmetric extension, index ``−j−1``: DPS's resizer, DDRM/TReg's
            ``SRConv``) or ``renormalize`` (taps outside the image dropped and the row renormalised: PIL).
    """
    if factor < 1 or n % factor != 0:
        raise UserError(f"image size {n} is not divisible by the SR factor {factor}")
    checks.choice("task.kernel", kernel, SR_KERNELS)
    checks.choice("task.boundary", boundary, SR_BOUNDARIES)
    m = n // factor
    if kernel == "box":
        mat = torch.zeros(m, n, dtype=torch.float64)
        for i in range(m):
            mat[i, i * factor : (i + 1) * factor] = 1.0 / factor
        return mat
    mat = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        centre = (i + 0.5) * factor
        lo = math.floor(centre - 2 * factor)
        hi = math.ceil(centre + 2 * factor)
        js = torch.arange(lo, hi + 1)
        w = keys_cubic((js.to(torch.float64) + 0.5 - centre) / factor)
        keep = w != 0
        js, w = js[keep], w[keep]
        if boundary == "renormalize":
            inside = (js >= 0) & (js < n)
            js, w = js[inside], w[inside]
        else:
            w = w / w.sum()  # normalised over the full kernel, then folded back (DDRM's ``+=``)
            js = torch.where(js < 0, -js - 1, js)
            js = torch.where(js >= n, 2 * n - 1 - js, js)
            if bool(((js < 0) | (js >= n)).any()):
                raise UserError(f"image size {n} is too small for a bicubic ×{factor} kernel")
        mat[i].index_add_(0, js, w)
        mat[i] /= mat[i].sum()
    return mat
