"""Blur operators ``A x = k ⋆ x`` (same size, per-image kernels), built on ``deepinv.physics.functional``.

The kernel is applied as DPS applies it (``nn.Conv2d`` weights: a cross-correlation, the same for every channel),
with the image extended by ``padding`` (``reflect``: DPS's ``ReflectionPad2d``, the default that PSLD, ReSample and
P2L's baselines inherit; ``zeros``; ``circular``). Batches carry one kernel per image (``[B, 1, k, k]``) or one
shared kernel (``[1, 1, k, k]``).

Decision on deepinv (0.5.0): its functional ``conv2d`` / ``conv2d_fft`` and their transposes do exactly this —
per-image kernels by grouped convolution, reflect/zeros/circular padding, and an adjoint that folds the padding
back — so they are wrapped here. ``deepinv.physics.Blur``/``BlurFFT`` themselves are not used: ``Blur`` has no FFT
path and ``BlurFFT`` is circular-only, and both keep the filter as module state updated per call, whereas our
operators are rebuilt per batch by :meth:`draw`. Measured adjointness of the wrapped functions in float64
(``tests/test_operators.py``): relative error ≤ 1.1e-16 for all three paddings, both paths.

Speed (61×61 kernel, one 3×512×512 image, float32, this shared 2-core CPU, 2 threads, best of 3; command:
``.venv/bin/python -c "from treg_exp.operators.blur import _benchmark; _benchmark()"``): FFT 0.0096 s vs direct
0.169 s per forward when the machine was quiet, 0.13 s vs 1.00 s under load (load average 5). FFT and direct agree
to 8e-7 relative in float32 (1e-12 in float64, tested).

``impl: auto`` (the default) picks per kernel size (:func:`auto_impl`): **FFT for k ≥ 15, direct below**. Measured
crossover — direct time / FFT time of one forward + adjoint, per-image kernels, float32, reflect padding, 2 threads,
load average < 1.5 (command: ``.venv/bin/python -c "from treg_exp.operators.blur import _benchmark_crossover;
_benchmark_crossover()"``; > 1 means FFT is faster)::

    B=1   32px: k5 1.00, k7 0.56, k9 1.06, k11 1.09, k13 1.23, k15 0.60, k17 1.58, k21 1.70, k31 0.96, k61 3.30
    B=1   64px: k5 0.62, k7 1.06, k9 1.24, k11 0.37, k13 0.85, k15 1.80, k17 1.92, k21 2.58, k31 1.03, k61 7.38
    B=1  128px: k5 0.96, k7 0.71, k9 0.82, k11 0.87, k13 1.84, k15 1.40, k17 2.79, k21 1.45, k31 4.78, k61 9.32
    B=1  256px: k5 1.02, k7 0.76, k9 1.70, k11 1.39, k13 0.81, k15 3.29, k17 2.14, k21 3.20, k31 13.3, k61 11.9
    B=1  512px: k5 0.42, k7 0.78, k9 1.85, k11 1.28, k13 0.54, k15 1.85, k17 4.99, k21 4.23, k31 6.57, k61 47.9
    B=4   32px: k5 0.82, k7 0.44, k9 0.85, k11 0.84, k13 0.88, k15 0.49, k17 1.16, k21 1.11, k31 0.70, k61 1.90
    B=4   64px: k5 0.43, k7 0.69, k9 0.84, k11 0.28, k13 0.53, k15 1.12, k17 1.33, k21 1.61, k31 0.66, k61 3.72
    B=4  128px: k5 0.62, k7 0.37, k9 0.44, k11 0.54, k13 1.10, k15 0.65, k17 1.72, k21 0.82, k31 1.89, k61 4.58
    B=4  256px: k5 0.44, k7 0.32, k9 0.66, k11 0.60, k13 0.35, k15 1.29, k17 0.74, k21 1.20, k31 4.52, k61 4.45
    B=4  512px: k5 0.16, k7 0.34, k9 0.48, k11 0.45, k13 0.19, k15 0.52, k17 1.25, k21 1.13, k31 1.71, k61 10.0

The crossover does not move with the image size (both costs scale with ``H·W``), so the rule is in ``k`` only. It
is set for ``batch_size: 1`` (the default), where FFT wins from k = 15 on (up to 48× at 61×61, 512 px) and direct
mostly wins below; for 4 images with their own kernels direct stays ahead up to k ≈ 15–21. The ratio is ragged
because deepinv's FFT grid is ``(H + k − 1)²`` unpadded: sizes with a large prime factor (``n + 12`` or ``n + 14`` at
512: 524 = 4·131, 526 = 2·263) are slow. The worst mis-picks are ≤ 2× (k = 9–11 at 256–512 px: FFT 1.3–1.85×
faster; k = 15 for 4 images at 512 px: direct 2× faster). Measured on the CPU only (no GPU was available); ``fft`` /
``direct`` stay selectable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator, compute_dtype
from treg_exp.operators.kernels import gaussian_kernel, motion_kernel
from treg_exp.operators.svd import check_pairing, svd_gaussian_blur

PADDINGS = ("reflect", "zeros", "circular")
IMPLS = ("auto", "fft", "direct")
#: ``impl=auto`` convolves by FFT for kernels at least this wide (``k × k``), directly below (see the module docstring).
AUTO_FFT_MIN_KERNEL = 15


def auto_impl(kernel_size: int) -> str:
    """What ``impl=auto`` runs for a ``kernel_size × kernel_size`` kernel: ``fft`` from 15 on, ``direct`` below.

    Measured on this CPU for 32–512 px images; the crossover did not move with the image size (both costs grow
    with ``H·W``), so the rule depends on the kernel size only.
    """
    return "fft" if kernel_size >= AUTO_FFT_MIN_KERNEL else "direct"


class Blur(LinearOperator):
    """``y = k ⋆ x + σ_y n`` for images ``[B, 3, H, W]``, output ``[B, 3, H, W]``.

    Args:
        kernel: ``[k, k]``, ``[B, k, k]`` or ``[B, 1, k, k]`` correlation weights (``None`` until :meth:`draw`).
        padding: ``reflect`` | ``zeros`` | ``circular`` boundary extension.
        impl: ``auto`` (:func:`auto_impl`: FFT for kernels ≥ 15×15, direct below), ``fft`` or ``direct`` (same
            result to float tolerance; FFT is faster for the 61×61 paper kernels).
        sigma_y: measurement noise on the [−1, 1] scale.
    """

    def __init__(
        self,
        kernel: torch.Tensor | None = None,
        padding: str = "reflect",
        impl: str = "auto",
        sigma_y: float = 0.01,
        name: str = "blur",
    ) -> None:
        super().__init__(sigma_y=sigma_y, name=name)
        self.padding = checks.choice("task.padding", padding, PADDINGS)
        self.impl = checks.choice("task.impl", impl, IMPLS, " (or svd for gauss_deblur)")
        if kernel is not None:
            kernel = _as_batched_kernel(kernel)
        self.register_buffer("kernel", kernel)

    # --- parameters ------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, object]:
        """The constructor's arguments but ``kernel``: what :meth:`_with_kernel` rebuilds the operator from."""
        return {"padding": self.padding, "impl": self.impl, "sigma_y": self.sigma_y, "name": self.name}

    def _with_kernel(self, kernel: torch.Tensor) -> Blur:
        """The same operator (same class and settings) with ``kernel``."""
        return type(self)(kernel=kernel, **self.settings())

    def with_params(self, params: dict[str, torch.Tensor]) -> Blur:
        """The operator with saved per-image kernels ``params["kernel"]`` ``[B, 1, k, k]``."""
        if "kernel" not in params:
            return self
        return self._with_kernel(params["kernel"])

    # --- the model -------------------------------------------------------------------------------------------
    def _drawn_kernel(self) -> torch.Tensor:
        """The kernels ``[B or 1, 1, k, k]``; one line if they are still to be drawn."""
        if self.kernel is None:
            raise UserError(f"{self.name}: the blur kernel is drawn per image; call draw(generators, shape) first")
        return self.kernel

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._drawn_kernel()
        batch = x.shape[0]
        if kernel.shape[0] not in (1, batch):
            raise UserError(f"{self.name}: {kernel.shape[0]} kernels for a batch of {batch} images")
        k = kernel.shape[-1]
        h, w = x.shape[-2:]
        if self.padding == "reflect" and (k // 2 >= h or k // 2 >= w):
            raise UserError(f"{self.name}: reflect padding of a {k}×{k} kernel needs images larger than {k // 2} px")
        # deepinv convolves (flips the filter); flipping here makes the net operation DPS's cross-correlation.
        return kernel.to(device=x.device, dtype=x.dtype).flip(-1, -2)

    @property
    def effective_impl(self) -> str:
        """``fft`` or ``direct``: :attr:`impl` with ``auto`` resolved for the current kernel size."""
        return self.impl if self.impl != "auto" else auto_impl(self._drawn_kernel().shape[-1])

    def _convolve(self, x: torch.Tensor, direct: Callable, fft: Callable) -> torch.Tensor:
        """``x`` (float32 for half inputs) through deepinv's ``direct`` or ``fft`` function (by
        :attr:`effective_impl`) with the kernel and the padding."""
        x = compute_dtype(x)
        convolve = fft if self.effective_impl == "fft" else direct
        return convolve(x, self._filter(x), padding="constant" if self.padding == "zeros" else self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``k ⋆ x``: ``[B, 3, H, W]`` → ``[B, 3, H, W]`` (float32 for half inputs)."""
        from deepinv.physics.functional import conv2d, conv2d_fft

        return self._convolve(x, conv2d, conv2d_fft)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y`` (transposed correlation, padding folded back): ``[B, 3, H, W]`` → ``[B, 3, H, W]``."""
        from deepinv.physics.functional import conv_transpose2d, conv_transpose2d_fft

        return self._convolve(y, conv_transpose2d, conv_transpose2d_fft)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)

    # --- closed-form (AᵀA + λI)⁻¹ for the circular boundary (treg_exp.operators.prox) -------------------------
    def has_closed_form_prox(self) -> bool:
        """True for ``padding=circular``: ``AᵀA`` is then circulant (diagonal in the 2-D DFT)."""
        return self.padding == "circular"

    def normal_spectrum(self, like: torch.Tensor) -> torch.Tensor:
        """DFT eigenvalues ``[B, 3, H, W]`` of the circulant ``AᵀA`` (circular padding): the DFT of ``AᵀA δ₀``.

        Probed with one :meth:`normal` application on an impulse at pixel (0, 0) (the circulant's first column),
        so the kernel's flip and centring are the operator's own; cached per shape, dtype and device.
        """
        if not self.has_closed_form_prox():
            raise UserError(f"{self.name}: only padding=circular has a diagonal (Fourier) AᵀA, got {self.padding}")
        key = (tuple(like.shape), like.dtype, str(like.device))
        cache = self.__dict__.setdefault("_spectrum_cache", {})
        if key not in cache:
            impulse = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
            impulse[..., 0, 0] = 1.0
            cache[key] = torch.fft.fft2(self.normal(impulse)).real
        return cache[key]

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``(AᵀA + λI)⁻¹ rhs`` by FFT (circular padding only): ``rhs`` ``[B, 3, H, W]`` → same."""
        from treg_exp.operators.prox import circulant_normal_inverse

        rhs = compute_dtype(rhs)
        return circulant_normal_inverse(rhs, self.normal_spectrum(rhs), lam)


class DrawnKernelBlur(Blur):
    """A blur whose kernel is drawn per image (:meth:`draw_kernel`, from the image's measurement generator);
    :meth:`params` returns the kernels (``{"kernel": [B, 1, k, k]}``) to be saved beside the measurement.

    Args:
        kernel_size: ``k`` of the ``k × k`` kernels (odd, ≥ 3).
        padding, impl, sigma_y, name: as :class:`Blur`'s; kernel: already drawn kernels (``None`` until :meth:`draw`).
    """

    def __init__(
        self,
        kernel_size: int,
        *,
        padding: str = "reflect",
        impl: str = "auto",
        sigma_y: float = 0.01,
        name: str = "blur",
        kernel: torch.Tensor | None = None,
    ) -> None:
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise UserError(f"task.kernel_size must be an odd number ≥ 3, got {kernel_size}")
        super().__init__(kernel, padding=padding, impl=impl, sigma_y=sigma_y, name=name)
        self.kernel_size = int(kernel_size)

    def settings(self) -> dict[str, object]:
        return {"kernel_size": self.kernel_size, **super().settings()}

    def draw_kernel(self, generator: torch.Generator) -> torch.Tensor:
        """One ``[kernel_size, kernel_size]`` kernel from ``generator``."""
        raise NotImplementedError

    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> Blur:
        """One kernel per image, kernel ``b`` from ``generators[b]``."""
        kernels = torch.stack([self.draw_kernel(g) for g in generators])
        return self._with_kernel(kernels.unsqueeze(1))

    def params(self) -> dict[str, torch.Tensor]:
        return {} if self.kernel is None else {"kernel": self.kernel}


class MotionBlur(DrawnKernelBlur):
    """DPS's motion deblurring: one Borodenko trajectory kernel (61×61, intensity 0.5) per image.

    :meth:`draw` takes each kernel from the image's measurement generator (:class:`DrawnKernelBlur`).
    """

    def __init__(self, kernel_size: int = 61, intensity: float = 0.5, **blur: Any) -> None:
        """``blur``: :class:`DrawnKernelBlur`'s keywords ``padding``, ``impl``, ``sigma_y``, ``kernel`` and ``name``
        (here ``motion_deblur`` by default)."""
        if not 0.0 <= intensity <= 1.0:
            raise UserError(f"task.intensity must be in [0, 1], got {intensity}")
        super().__init__(kernel_size, **{"name": "motion_deblur", **blur})
        self.intensity = float(intensity)

    def settings(self) -> dict[str, object]:
        return {"intensity": self.intensity, **super().settings()}

    def draw_kernel(self, generator: torch.Generator) -> torch.Tensor:
        """A Borodenko trajectory kernel (:func:`motion_kernel`)."""
        return motion_kernel(self.kernel_size, self.intensity, generator)


class RandomGaussianBlur(DrawnKernelBlur):
    """DiffPIR's benchmark Gaussian deblurring: a Gaussian kernel whose σ is drawn per image.

    ``σ_b = kernel_sigma·|2U_b + 1|``, ``U_b ~ U[0, 1)`` from image ``b``'s measurement generator (the official
    ``main_ddpir_deblur.py``: ``kernel_std * np.abs(np.random.rand()*2+1)`` with ``kernel_std = 3.0`` and numpy seeded
    with ``10·index`` per image), so σ ∈ [kernel_sigma, 3·kernel_sigma).
    """

    def __init__(self, kernel_size: int = 61, kernel_sigma: float = 3.0, **blur: Any) -> None:
        """``blur``: :class:`DrawnKernelBlur`'s keywords ``padding``, ``impl``, ``sigma_y``, ``kernel`` and ``name``
        (here ``gauss_deblur`` by default)."""
        if not kernel_sigma > 0:
            raise UserError(f"task.kernel_sigma must be positive, got {kernel_sigma}")
        super().__init__(kernel_size, **{"name": "gauss_deblur", **blur})
        self.kernel_sigma = float(kernel_sigma)

    def settings(self) -> dict[str, object]:
        return {"kernel_sigma": self.kernel_sigma, **super().settings()}

    def draw_kernel(self, generator: torch.Generator) -> torch.Tensor:
        """DPS's Gaussian kernel of ``σ = kernel_sigma·|2U + 1|``, U the generator's next uniform draw."""
        sigma = self.kernel_sigma * abs(2.0 * float(torch.rand((), generator=generator, dtype=torch.float64)) + 1.0)
        return gaussian_kernel(self.kernel_size, sigma)


def _as_batched_kernel(kernel: torch.Tensor) -> torch.Tensor:
    kernel = torch.as_tensor(kernel)
    if kernel.dim() == 2:
        kernel = kernel[None, None]
    elif kernel.dim() == 3:
        kernel = kernel[:, None]
    if kernel.dim() != 4 or kernel.shape[1] != 1 or kernel.shape[-1] != kernel.shape[-2]:
        raise UserError(f"blur kernels must be [k, k], [B, k, k] or [B, 1, k, k]; got {tuple(kernel.shape)}")
    if kernel.dtype != torch.float64:
        kernel = kernel.float()
    return kernel


def gaussian_deblur(
    kernel_size: int = 61,
    kernel_sigma: float = 5.0,
    padding: str = "reflect",
    impl: str = "auto",
    sigma_y: float = 0.01,
    svd_threshold: float = 0.03,
    name: str = "gauss_deblur",
    svd_pairing: str = "official",
    random_sigma: bool = False,
) -> LinearOperator:
    """The Gaussian deblurring task: DPS's 61×61 kernel (σ = 5.0 TReg, 3.0 DPS/P2L) by ``auto``/``fft``/``direct``
    convolution with ``padding``, or ``impl=svd``: TReg's separable truncated-SVD blur (zero boundary, 1-D
    singular values below ``svd_threshold`` dropped, paired with the coefficients by ``svd_pairing``: ``official``
    as the official code computes it, ``consistent`` the intended operator; see :mod:`treg_exp.operators.svd`).
    ``padding`` does not apply to ``svd``, ``svd_threshold`` and ``svd_pairing`` only to it (the pairing is still
    checked). ``random_sigma``: DiffPIR's benchmark, σ drawn per image as ``kernel_sigma·|2U + 1|``
    (:class:`RandomGaussianBlur`; not with ``impl=svd``)."""
    check_pairing(svd_pairing)
    if random_sigma:
        if impl == "svd":
            raise UserError("task.random_sigma draws a kernel per image, which impl=svd (one fixed SVD) cannot take")
        return RandomGaussianBlur(kernel_size, kernel_sigma, padding=padding, impl=impl, sigma_y=sigma_y, name=name)
    if impl == "svd":
        return svd_gaussian_blur(
            kernel_size, kernel_sigma, svd_threshold, sigma_y=sigma_y, name=name, svd_pairing=svd_pairing
        )
    kernel = gaussian_kernel(kernel_size, kernel_sigma)
    return Blur(kernel, padding=padding, impl=impl, sigma_y=sigma_y, name=name)


def motion_deblur(
    kernel_size: int = 61,
    intensity: float = 0.5,
    padding: str = "reflect",
    impl: str = "auto",
    sigma_y: float = 0.01,
    name: str = "motion_deblur",
) -> MotionBlur:
    """The motion deblurring task (one random trajectory kernel per image, drawn in :meth:`MotionBlur.draw`)."""
    return MotionBlur(kernel_size, intensity, padding=padding, impl=impl, sigma_y=sigma_y, name=name)


def _time(fn: Callable[[], object], budget: float = 0.5) -> float:  # pragma: no cover
    """Best wall time of ``fn`` over at least 5 and at most 100 calls (about ``budget`` seconds), after a warm-up."""
    import time

    fn()
    best, calls, start = float("inf"), 0, time.perf_counter()
    while calls < 5 or (time.perf_counter() - start < budget and calls < 100):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def _benchmark_crossover(
    batches: Sequence[int] = (1, 4),
    sizes: Sequence[int] = (32, 64, 128, 256, 512),
    kernel_sizes: Sequence[int] = (5, 7, 9, 11, 13, 15, 17, 21, 31, 61),
) -> None:  # pragma: no cover - the measurement behind AUTO_FFT_MIN_KERNEL (module docstring)
    """Prints direct/FFT time ratios of one forward + adjoint (per-image kernels, float32, reflect padding)."""
    print(f"threads={torch.get_num_threads()}; direct time / fft time for forward+adjoint, float32, reflect")
    for batch in batches:
        for n in sizes:
            x = torch.rand(batch, 3, n, n) * 2 - 1
            row = []
            for k in kernel_sizes:
                if k // 2 >= n:
                    continue
                kernel = gaussian_kernel(k, max(k / 6, 0.5)).float().repeat(batch, 1, 1, 1)
                times = {}
                for impl in ("direct", "fft"):
                    op = Blur(kernel, impl=impl)
                    times[impl] = _time(lambda op=op, x=x: op.adjoint(op(x)))
                row.append(f"k{k} {times['direct'] / times['fft']:.2f}")
            print(f"B={batch} {n}px: " + ", ".join(row), flush=True)


def _benchmark() -> None:  # pragma: no cover - the measurement quoted in the module docstring
    import time

    x = torch.rand(1, 3, 512, 512) * 2 - 1
    times = {}
    outs = {}
    for impl in ("fft", "direct"):
        op = gaussian_deblur(impl=impl)
        op(x)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            outs[impl] = op(x)
            best = min(best, time.perf_counter() - t0)
        times[impl] = best
    rel = float((outs["fft"] - outs["direct"]).norm() / outs["direct"].norm())
    print(f"61x61 at 512, threads={torch.get_num_threads()}: " + ", ".join(f"{k} {v:.4f} s" for k, v in times.items()))
    print(f"fft vs direct relative difference (float32): {rel:.2e}")
