"""Forward operators: configs, adjoints, CG, kernels, bicubic, masks, noise, FFT vs direct, svd vs dense."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image, ImageDraw, ImageFilter

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.operators import (
    Blur,
    Denoising,
    Inpainting,
    LinearOperator,
    MotionBlur,
    RandomGaussianBlur,
    SeparableDownsample,
    SeparableSVD,
    gaussian_deblur,
    super_resolution,
)
from treg_exp.operators.blur import AUTO_FFT_MIN_KERNEL, auto_impl
from treg_exp.operators.kernels import (
    downsample_matrix,
    gaussian_kernel,
    gaussian_kernel_1d,
    keys_cubic,
    motion_kernel,
    svd_gaussian_taps,
)
from treg_exp.operators.masks import box_mask, freeform_mask, random_mask
from treg_exp.operators.svd import blur_matrix, official_scales, svd_downsample, svd_gaussian_blur, truncated

CONF = Path(__file__).resolve().parents[1] / "conf"
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def compose_task(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(overrides=[f"+task={name}", *(f"task.{o}" for o in overrides)])
    return cfg.task


def rel_adjoint_error(op: LinearOperator, x: torch.Tensor, gen_seed: int = 5) -> float:
    """``|<Ax, y> − <x, Aᵀy>|`` over ``‖Ax‖‖y‖``, per image (max), for a random ``y``."""
    ax = op(x)
    y = torch.randn(ax.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=x.dtype)
    aty = op.adjoint(y)
    assert aty.shape == x.shape
    lhs = (ax * y).flatten(1).sum(1)
    rhs = (x * aty).flatten(1).sum(1)
    scale = ax.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1)
    return float(((lhs - rhs).abs() / scale).max())


def small_ops() -> dict[str, LinearOperator]:
    """Every operator family on small images (drawn for a batch of 2 with distinct per-image parameters)."""
    shape = (2, 3, 32, 32)
    g = gens(1, 2)
    ops: dict[str, LinearOperator] = {}
    for pad in ("reflect", "zeros", "circular"):
        for impl in ("fft", "direct"):
            ops[f"gauss_{pad}_{impl}"] = gaussian_deblur(kernel_size=9, kernel_sigma=2.0, padding=pad, impl=impl)
            ops[f"motion_{pad}_{impl}"] = MotionBlur(kernel_size=15, padding=pad, impl=impl).draw(g, shape)
    ops["sr4_reflect"] = SeparableDownsample(4)
    ops["sr4_pil"] = SeparableDownsample(4, boundary="renormalize")
    ops["sr8_box"] = SeparableDownsample(8, kernel="box")
    ops["svd_blur"] = svd_gaussian_blur(kernel_size=61, kernel_sigma=5.0)  # the official pairing (default)
    ops["svd_blur_consistent"] = svd_gaussian_blur(kernel_size=61, kernel_sigma=5.0, svd_pairing="consistent")
    ops["svd_sr4"] = svd_downsample(4)
    ops["inpaint_box"] = Inpainting("box").draw(gens(1, 2), shape)
    ops["inpaint_random"] = Inpainting("random", drop_ratio=0.5).draw(gens(1, 2), shape)
    ops["inpaint_freeform"] = Inpainting("freeform").draw(gens(1, 2), shape)
    ops["denoise"] = Denoising()
    return ops


OPS = small_ops()


# --- configs ----------------------------------------------------------------------------------------------------
EXPECTED_TASKS = {
    "gauss_deblur",
    "motion_deblur",
    "sr4",
    "sr8",
    "sr16",
    "inpaint_box",
    "inpaint_random",
    "inpaint_freeform",
    "denoise",
}


def test_all_tasks_present() -> None:
    assert EXPECTED_TASKS <= set(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_task_composes_and_instantiates(name: str) -> None:
    cfg = compose_task(name)
    assert cfg.name == name and cfg.sigma_y == 0.01
    op = instantiate(cfg)
    assert isinstance(op, LinearOperator) and op.sigma_y == 0.01
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    op = op.draw(gens(3, 4), x.shape)
    y = op.measure(x, gens(3, 4))
    assert torch.isfinite(y).all()
    view = op.measurement_image(y)
    assert view.shape[:2] == (2, 3) and view.min() >= -1 and view.max() <= 1


@pytest.mark.parametrize(
    ("name", "overrides", "cls"),
    [
        ("gauss_deblur", ["impl=svd"], SeparableSVD),
        ("gauss_deblur", ["impl=svd", "svd_pairing=consistent"], SeparableSVD),
        ("gauss_deblur", ["impl=direct", "padding=circular", "kernel_sigma=3.0"], Blur),
        ("gauss_deblur", ["padding=zeros"], Blur),
        ("gauss_deblur", ["impl=fft"], Blur),
        ("gauss_deblur", ["random_sigma=true", "kernel_sigma=3.0", "padding=circular"], RandomGaussianBlur),
        ("motion_deblur", ["impl=direct", "padding=zeros"], MotionBlur),
        ("motion_deblur", ["impl=fft"], MotionBlur),
        ("sr16", ["impl=svd"], SeparableSVD),
        ("sr4", ["boundary=renormalize"], SeparableDownsample),
        ("sr8", ["impl=svd"], SeparableSVD),
        ("inpaint_box", ["placement=center"], Inpainting),
    ],
)
def test_task_options_instantiate(name: str, overrides: list[str], cls: type) -> None:
    op = instantiate(compose_task(name, *overrides))
    assert isinstance(op, cls)


@pytest.mark.parametrize("name", ["gauss_deblur", "motion_deblur"])
def test_blur_tasks_default_to_auto(name: str) -> None:
    op = instantiate(compose_task(name)).draw(gens(0), (1, 3, 64, 64))
    assert op.impl == "auto" and op.effective_impl == "fft"  # the 61×61 paper kernels are past the crossover


def test_kernel_sigma_override_gives_dps_kernel() -> None:
    op = instantiate(compose_task("gauss_deblur", "kernel_sigma=3.0"))
    assert torch.allclose(op.kernel[0, 0].double(), gaussian_kernel(61, 3.0), atol=1e-7)


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="padding"):
        gaussian_deblur(padding="mirror")
    with pytest.raises(UserError, match="impl"):
        gaussian_deblur(impl="cuda")
    with pytest.raises(UserError, match="random_sigma"):
        gaussian_deblur(impl="svd", random_sigma=True)


def test_random_sigma_draws_diffpirs_kernel_per_image() -> None:
    """``task.random_sigma``: image ``b``'s kernel is DPS's Gaussian of σ = 3·|2U + 1| with U the first draw of its
    measurement generator (DiffPIR's ``kernel_std * np.abs(np.random.rand()*2+1)``), so σ ∈ [3, 9), images differ,
    and the saved kernels rebuild the same operator. Catches σ = 3·U, a shared σ, or a draw from the wrong stream."""
    op = instantiate(compose_task("gauss_deblur", "random_sigma=true", "kernel_sigma=3.0", "padding=circular"))
    drawn = op.draw(gens(3, 4), (2, 3, 64, 64))
    for b, g in enumerate(gens(3, 4)):
        sigma = 3.0 * abs(2.0 * float(torch.rand((), generator=g, dtype=torch.float64)) + 1.0)
        assert 3.0 <= sigma < 9.0
        assert torch.allclose(drawn.kernel[b, 0].double(), gaussian_kernel(61, sigma), atol=1e-7)
    assert not torch.equal(drawn.kernel[0], drawn.kernel[1])
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    assert torch.equal(op.with_params(drawn.params())(x), drawn(x))
    with pytest.raises(UserError, match="larger than 30"):
        gaussian_deblur()(torch.zeros(1, 3, 16, 16))
    with pytest.raises(UserError, match="divisible"):
        SeparableDownsample(16)(torch.zeros(1, 3, 40, 40))
    with pytest.raises(UserError, match="draw"):
        MotionBlur()(torch.zeros(1, 3, 64, 64))
    with pytest.raises(UserError, match="mask_type"):
        Inpainting("stripes")
    with pytest.raises(UserError, match="not found"):
        Inpainting("file", mask_file="/nonexistent/masks.npz")


# --- adjointness and batching -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPS))
def test_adjoint_float64(name: str) -> None:
    op = OPS[name]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_adjoint_error(op, x) < 1e-10


@pytest.mark.parametrize(
    "name", ["gauss_reflect_fft", "motion_reflect_direct", "sr4_reflect", "svd_sr4", "inpaint_box"]
)
def test_adjoint_equals_autograd_vjp(name: str) -> None:
    """deepinv's A_vjp check: the closed-form adjoint equals the vector–Jacobian product of forward."""
    op = OPS[name]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = torch.randn(op(x).shape, dtype=torch.float64)
    xr = torch.zeros_like(x, requires_grad=True)
    (vjp,) = torch.autograd.grad(op(xr), xr, grad_outputs=y)
    assert torch.allclose(op.adjoint(y), vjp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["motion_reflect_fft", "motion_circular_direct", "inpaint_freeform", "inpaint_random"])
def test_batch_of_two_equals_two_of_one(name: str) -> None:
    """Per-image parameters: drawing and applying for a batch equals doing it image by image."""
    if name.startswith("motion"):
        pad, impl = name.split("_")[1:]
        template_op: LinearOperator = MotionBlur(kernel_size=15, padding=pad, impl=impl)
    elif name == "inpaint_random":
        template_op = Inpainting("random", drop_ratio=0.5)
    else:
        template_op = Inpainting("freeform")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    both = template_op.draw(gens(7, 8), x.shape)
    y_both = both.measure(x, gens(7, 8))
    for b, seed in enumerate((7, 8)):
        one = template_op.draw(gens(seed), x[b : b + 1].shape)
        for key, value in one.params().items():
            assert torch.equal(value[0], both.params()[key][b])
        assert torch.allclose(one.measure(x[b : b + 1], gens(seed))[0], y_both[b], rtol=0, atol=1e-12)
        assert torch.allclose(one.adjoint(y_both[b : b + 1])[0], both.adjoint(y_both)[b], rtol=0, atol=1e-12)


def test_params_roundtrip() -> None:
    x = torch.randn(2, 3, 32, 32)
    for op in (OPS["motion_reflect_fft"], OPS["inpaint_freeform"]):
        params = op.params()
        assert params and all(v.shape[0] == 2 for v in params.values())
        rebuilt = type(op)().with_params({k: v.clone() for k, v in params.items()})
        assert torch.equal(rebuilt(x), op(x))


# --- conjugate gradient -----------------------------------------------------------------------------------------
def dense_matrix(op: LinearOperator, h: int = 16, w: int = 16) -> torch.Tensor:
    """``A`` of one single-channel image as a dense ``[m, h·w]`` float64 matrix (op with one image's params)."""
    basis = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    return op(basis).reshape(h * w, -1).T


@pytest.mark.parametrize("kind", ["blur_reflect", "motion_zeros", "inpaint_random", "sr2"])
def test_cg_matches_dense_solve(kind: str) -> None:
    shape = (2, 3, 16, 16)
    if kind == "blur_reflect":
        op: LinearOperator = gaussian_deblur(kernel_size=7, kernel_sigma=1.5, padding="reflect", impl="direct")
    elif kind == "motion_zeros":
        op = MotionBlur(kernel_size=9, padding="zeros").draw(gens(1, 2), shape)
    elif kind == "inpaint_random":
        op = Inpainting("random", drop_ratio=0.6).draw(gens(1, 2), shape)
    else:
        op = SeparableDownsample(2)
    x_true = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = op(x_true)
    lam = 0.05
    x_cg, res = op.solve_damped(y, x0, lam, iters=300, tol=1e-11)
    assert (res < 1e-10).all()
    for b in range(2):
        params = {k: v[b : b + 1] for k, v in op.params().items()}
        a = dense_matrix(op.with_params(params) if params else op)
        m = a.T @ a + lam * torch.eye(a.shape[1], dtype=torch.float64)
        for c in range(3):
            rhs = a.T @ y[b, c].reshape(-1) + lam * x0[b, c].reshape(-1)
            ref = torch.linalg.solve(m, rhs)
            assert torch.allclose(x_cg[b, c].reshape(-1), ref, rtol=0, atol=1e-8 * float(ref.abs().max()))
    # a batch of two equals two batches of one (per-image step sizes)
    for b in range(2):
        params = {k: v[b : b + 1] for k, v in op.params().items()}
        single = op.with_params(params) if params else op
        x1, _ = single.solve_damped(y[b : b + 1], x0[b : b + 1], lam, iters=7)
        x2, _ = op.solve_damped(y, x0, lam, iters=7)
        assert torch.allclose(x1[0], x2[b], rtol=0, atol=1e-12)


def test_solve_damped_bfloat16_runs_in_float32() -> None:
    op = gaussian_deblur(kernel_size=7, kernel_sigma=1.5)
    x0 = torch.randn(1, 3, 16, 16).bfloat16()
    x, _ = op.solve_damped(op(x0), x0, 1e-4, iters=5)
    assert x.dtype == torch.float32


# --- kernels ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [3.0, 5.0])
def test_gaussian_kernel(sigma: float) -> None:
    from scipy.ndimage import gaussian_filter

    k = gaussian_kernel(61, sigma)
    assert k.shape == (61, 61)
    assert abs(float(k.sum()) - 1.0) < 1e-12
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.flip(1)) and torch.equal(k, k.T)
    # DPS builds it as scipy's gaussian_filter of a centred delta
    delta = np.zeros((61, 61))
    delta[30, 30] = 1.0
    assert np.allclose(k.numpy(), gaussian_filter(delta, sigma), atol=1e-15)
    # the spread is σ (the 4σ truncation removes < 0.5 % of the variance)
    g = gaussian_kernel_1d(61, sigma)
    var = float((g * (torch.arange(61, dtype=torch.float64) - 30) ** 2).sum())
    assert abs(var**0.5 / sigma - 1) < 0.005


def test_svd_gaussian_taps_follow_treg() -> None:
    taps = svd_gaussian_taps(61, 5.0)
    assert taps.shape == (60,) and abs(float(taps.sum()) - 1) < 1e-12
    ref = torch.tensor([np.exp(-0.5 * (k / 5.0) ** 2) for k in range(-30, 30)], dtype=torch.float64)
    assert torch.allclose(taps, ref / ref.sum(), atol=1e-15)


def test_motion_kernel_properties() -> None:
    k1 = motion_kernel(61, 0.5, torch.Generator().manual_seed(0))
    k1b = motion_kernel(61, 0.5, torch.Generator().manual_seed(0))
    k2 = motion_kernel(61, 0.5, torch.Generator().manual_seed(1))
    assert k1.shape == (61, 61) and (k1 >= 0).all()
    assert abs(float(k1.sum()) - 1) < 1e-5
    assert torch.equal(k1, k1b) and not torch.equal(k1, k2)
    assert int((k1 > 0).sum()) > 10  # a trajectory, not a point


def borodenko_kernel(
    size: int, intensity: float, unit: Iterator[float], eps: float = 0.1, min_width: int = 0
) -> np.ndarray:
    """A literal transcription of Borodenko's ``motionblur.Kernel((size, size), intensity).kernelMatrix``
    (``_createPath`` + ``_createKernel``), its NumPy draws taken from ``unit`` (U[0, 1) numbers): ``uniform`` as
    NumPy's ``low + (high − low)·U``, ``beta``/``triangular`` as treg_exp documents building them from uniforms.
    ``eps`` and ``min_width`` (0: none) exist only to show what the departures would change."""

    def uniform(low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * next(unit)

    def beta(a: int, b: int) -> float:
        if a == 1:  # inverse CDF of Beta(1, b): 1 − (1 − x)^b
            return 1.0 - next(unit) ** (1.0 / b)
        return sorted(next(unit) for _ in range(a + b - 1))[a - 1]  # a-th order statistic of a + b − 1 uniforms

    def triangular(left: float, mode: float, right: float) -> float:  # NumPy's inverse CDF
        u = next(unit)
        base, left_base, right_base = right - left, mode - left, right - mode
        if u <= left_base / base:
            return left + np.sqrt(u * base * left_base)
        return right - np.sqrt((1.0 - u) * base * right_base)

    x, y = 2 * size, 2 * size
    diagonal = (x**2 + y**2) ** 0.5
    # getSteps
    max_path_len = 0.75 * diagonal * (uniform() + uniform(0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_path_len:
        step = beta(1, 30) * (1 - intensity + eps) * diagonal
        if step < max_path_len:
            steps.append(step)
    num_steps = len(steps)
    # getAngles
    max_angle = uniform(0, intensity * np.pi)
    jitter = beta(2, 20)
    angles = [uniform(low=-max_angle, high=max_angle)]
    while len(angles) < num_steps:
        angle = triangular(0, intensity * max_angle, max_angle + eps)
        if uniform() < jitter:
            angle *= -np.sign(angles[-1])
        else:
            angle *= np.sign(angles[-1])
        angles.append(angle)
    path_complex = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    com_complex = sum(path_complex) / num_steps
    path_complex -= com_complex
    path_complex *= np.exp(1j * uniform(0, np.pi))
    path_complex += (x + 1j * y) / 2
    path = [(i.real, i.imag) for i in path_complex]
    # _createKernel + kernelMatrix
    image = Image.new("RGB", (x, y))
    ImageDraw.Draw(image).line(xy=path, width=max(min_width, int(diagonal / 150)))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.LANCZOS).convert("L")
    kernel = np.asarray(image, dtype=np.float32).copy()
    with np.errstate(invalid="ignore"):  # his 0/0 when nothing was drawn (sizes below 54)
        kernel /= np.sum(kernel)
    return kernel


@pytest.mark.parametrize(
    ("size", "intensity", "seed"), [(61, 0.5, 0), (61, 0.5, 1), (61, 0.5, 2), (61, 0.0, 3), (61, 1.0, 4), (15, 0.3, 5)]
)
def test_motion_kernel_is_borodenkos(monkeypatch: pytest.MonkeyPatch, size: int, intensity: float, seed: int) -> None:
    """Our kernel equals the transcription of Borodenko's when both see the same uniform draws: the draws made
    through ``seeding.uniform`` are logged (unchanged) and replayed, and the transcription must use all of them."""
    plain = motion_kernel(size, intensity, torch.Generator().manual_seed(seed))
    draws: list[float] = []
    real_uniform = seeding.uniform

    def logged(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
        u = real_uniform(generator)
        draws.append(u)
        return low + (high - low) * u

    monkeypatch.setattr(seeding, "uniform", logged)
    ours = motion_kernel(size, intensity, torch.Generator().manual_seed(seed))
    assert torch.equal(ours, plain)  # logging changed nothing
    replay = iter(draws)
    ref = borodenko_kernel(size, intensity, replay)
    assert next(replay, None) is None, "the transcription consumed fewer draws than our implementation"
    if size < 54:  # Borodenko's line is 0 px wide there: nothing drawn, kernel 0/0; ours draws it 1 px wide
        assert np.isnan(ref).all()
        ref = borodenko_kernel(size, intensity, iter(draws), min_width=1)
    assert ours.shape == (size, size) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-7)
    if intensity == 0.5:  # the comparison has power: machine-epsilon ``eps`` (an old bug here) gives another kernel
        wrong = borodenko_kernel(size, intensity, iter([*draws, *[0.5] * 1000]), eps=float(np.finfo(float).eps))
        assert np.abs(wrong - ref).max() > 1e-3


# --- bicubic --------------------------------------------------------------------------------------------------------
def pil_resize(x: torch.Tensor, factor: int) -> torch.Tensor:
    img = Image.fromarray(x.numpy().astype(np.float32), mode="F")
    out = img.resize((x.shape[1] // factor, x.shape[0] // factor), Image.BICUBIC)
    return torch.from_numpy(np.asarray(out).copy())


def ddrm_srconv_matrix(n: int, factor: int) -> torch.Tensor:
    """DDRM/TReg's ``SRConv`` 1-D matrix, translated literally (bicubic kernel of degradation.py, reflect boundary)."""
    k = np.zeros(factor * 4)
    for i in range(factor * 4):
        k[i] = float(keys_cubic(torch.tensor((1 / factor) * (i - np.floor(factor * 4 / 2) + 0.5))))
    k = k / k.sum()
    small = n // factor
    mat = torch.zeros(small, n, dtype=torch.float64)
    for i in range(factor // 2, n + factor // 2, factor):
        for j in range(i - len(k) // 2, i + len(k) // 2):
            je = j
            if je < 0:
                je = -je - 1
            if je >= n:
                je = (n - 1) - (je - n)
            mat[i // factor, je] += k[j - i + len(k) // 2]
    return mat


@pytest.mark.parametrize("factor", [4, 16])
def test_bicubic_against_pil_and_ddrm(factor: int) -> None:
    n = 8 * factor
    x = torch.rand(n, n, generator=torch.Generator().manual_seed(factor), dtype=torch.float64) * 2 - 1
    ref = pil_resize(x, factor).double()
    pil_op = SeparableDownsample(factor, boundary="renormalize")
    ours_pil = pil_op(x[None, None])[0, 0]
    assert torch.allclose(ours_pil, ref, atol=2e-6)
    ours = SeparableDownsample(factor)(x[None, None])[0, 0]
    assert torch.allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=2e-6)  # boundaries differ only at the border
    assert not torch.allclose(ours, ref, atol=1e-3)
    assert torch.allclose(downsample_matrix(n, factor), ddrm_srconv_matrix(n, factor), atol=1e-15)


def test_keys_cubic_values() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, -0.5], dtype=torch.float64)
    # a = −0.5: 1, 0.5625, 0, −0.0625, 0, symmetric
    assert torch.allclose(keys_cubic(x), torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.5625], dtype=torch.float64))


def test_average_pooling_matches_avg_pool2d() -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    op = instantiate(compose_task("sr8"))
    assert torch.allclose(op(x), F.avg_pool2d(x, 8), atol=1e-14)


# --- masks --------------------------------------------------------------------------------------------------------
def test_box_mask() -> None:
    for placement in ("random", "center"):
        m = box_mask(256, 256, torch.Generator().manual_seed(0), 0.5, placement)
        holes = (m == 0).nonzero()
        assert int((m == 0).sum()) == 128 * 128
        top, left = int(holes[:, 1].min()), int(holes[:, 2].min())
        assert int(holes[:, 1].max()) - top == 127 and int(holes[:, 2].max()) - left == 127
        if placement == "center":
            assert (top, left) == (64, 64)
        else:
            assert 16 <= top <= 112 and 16 <= left <= 112
    positions = {tuple((box_mask(256, 256, g) == 0).nonzero()[0].tolist()) for g in gens(0, 1, 2, 3)}
    assert len(positions) > 1  # placed from the image's generator


def test_random_mask_ratio() -> None:
    m = random_mask(64, 48, torch.Generator().manual_seed(0), 0.7)
    assert int((m == 0).sum()) == round(0.7 * 64 * 48)


@pytest.mark.parametrize(
    "options", [dict(mask_type="freeform", hole_range=[0.3]), dict(mask_type="random", drop_ratio=[0.1, 0.2, 0.3])]
)
def test_malformed_ranges_are_one_line_errors(options) -> None:
    with pytest.raises(UserError, match="low, high"):
        Inpainting(**options)


def test_random_mask_ratio_range_is_drawn_per_image() -> None:
    """``drop_ratio: [0.3, 0.7]`` (DPS's mask_prob_range): each image its own ratio, inside the range."""
    ratios = [float((random_mask(32, 32, g, (0.3, 0.7)) == 0).float().mean()) for g in gens(*range(12))]
    assert all(0.3 - 1 / 1024 <= r <= 0.7 + 1 / 1024 for r in ratios)
    assert max(ratios) - min(ratios) > 0.1
    again = [float((random_mask(32, 32, g, (0.3, 0.7)) == 0).float().mean()) for g in gens(*range(12))]
    assert ratios == again


@pytest.mark.parametrize("size", [64, 256])
def test_freeform_mask_ratio(size: int) -> None:
    ratios = []
    for seed in range(6):
        m = freeform_mask(size, size, torch.Generator().manual_seed(seed))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        ratios.append(float((m == 0).float().mean()))
    assert all(0.1 <= r <= 0.2 for r in ratios)
    assert len(set(ratios)) > 1


def test_mask_file(tmp_path: Path) -> None:
    holes = np.zeros((3, 32, 32), dtype=np.uint8)
    for i in range(3):
        holes[i, i * 8 : i * 8 + 8, :] = 255  # Palette-style: nonzero = hole
    path = tmp_path / "masks.npz"
    np.savez(path, mask=holes)
    op = instantiate(compose_task("inpaint_freeform", f"mask_file={path}")).draw(gens(0, 1, 2, 3), (4, 3, 32, 32))
    m = op.params()["mask"]
    assert m.shape == (4, 1, 32, 32)
    for b in range(4):
        assert any(torch.equal(m[b, 0], torch.from_numpy((h == 0).astype(np.float32))) for h in holes)
    zero_holes = Inpainting("file", mask_file=str(path), mask_holes="zero").draw(gens(0), (1, 3, 32, 32))
    assert float(zero_holes.mask.mean()) == 0.25


# --- noise, dtype, device ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gauss_reflect_fft", "sr4_reflect", "denoise", "inpaint_box"])
def test_measure_noise_level(name: str) -> None:
    op = OPS[name]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    if isinstance(op, Inpainting):
        op = Inpainting("box").draw(gens(1, 2), x.shape)
    y = op.measure(x, gens(11, 12))
    noise = y - op(x)
    if isinstance(op, Inpainting):
        assert torch.all(y[op.mask.expand_as(y) == 0] == 0)
        noise = noise[op.mask.expand_as(noise) == 1]
    assert abs(float(noise.std()) / op.sigma_y - 1) < 0.05
    # the same generators give the same y; the noise is the image's stream after its parameters
    assert torch.equal(op.measure(x, gens(11, 12)), y)
    expected = op(x) + op.sigma_y * seeding.randn(op(x).shape[1:], gens(11, 12))
    if not isinstance(op, Inpainting):
        assert torch.allclose(y, expected, atol=1e-7)


@pytest.mark.parametrize("name", ["gauss_reflect_fft", "motion_zeros_direct", "sr4_reflect", "svd_blur", "inpaint_box"])
def test_bfloat16_inputs_compute_in_float32(name: str) -> None:
    op = OPS[name]
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).bfloat16()
    y = op(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, op(x.float()), atol=1e-6)
    assert op.adjoint(y.bfloat16()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_matches_cpu(name: str) -> None:
    op = OPS[name]
    x = torch.randn(2, 3, 32, 32)
    y = op(x)
    assert torch.allclose(op(x.cuda()).cpu(), y, atol=1e-5)
    assert torch.allclose(op.adjoint(y.cuda()).cpu(), op.adjoint(y), atol=1e-5)


# --- FFT vs direct, svd vs dense ------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["reflect", "zeros", "circular"])
def test_fft_equals_direct(padding: str) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    kernels = torch.stack([motion_kernel(61, 0.5, g) for g in gens(0, 1)])[:, None]
    fft = Blur(kernels, padding=padding, impl="fft")
    direct = Blur(kernels, padding=padding, impl="direct")
    for a, b in ((fft(x), direct(x)), (fft.adjoint(x), direct.adjoint(x))):
        assert float((a - b).norm() / b.norm()) < 1e-12
    xf = x.float()
    assert float((fft(xf) - direct(xf)).norm() / direct(xf).norm()) < 1e-5


def test_auto_impl_rule() -> None:
    """``auto`` is direct below 15×15 and FFT from 15×15 on, as the blur module documents."""
    assert AUTO_FFT_MIN_KERNEL == 15
    assert [auto_impl(k) for k in (3, 5, 9, 13)] == ["direct"] * 4
    assert [auto_impl(k) for k in (15, 17, 31, 61)] == ["fft"] * 4
    assert MotionBlur(kernel_size=13).draw(gens(0), (1, 3, 32, 32)).effective_impl == "direct"
    assert MotionBlur(kernel_size=15).draw(gens(0), (1, 3, 32, 32)).effective_impl == "fft"
    assert gaussian_deblur(kernel_size=13, kernel_sigma=2.0, impl="fft").effective_impl == "fft"
    assert gaussian_deblur(kernel_size=61, impl="direct").effective_impl == "direct"
    with pytest.raises(UserError, match="draw"):
        _ = MotionBlur().effective_impl


@pytest.mark.parametrize(("kernel_size", "picked"), [(9, "direct"), (21, "fft")])
@pytest.mark.parametrize("padding", ["reflect", "circular"])
def test_auto_equals_fft_and_direct(kernel_size: int, picked: str, padding: str) -> None:
    """``auto`` runs exactly the path it picks, and agrees with both paths (float64, per-image kernels)."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    kernels = torch.stack([motion_kernel(kernel_size, 0.5, g) for g in gens(0, 1)])[:, None].double()
    ops = {impl: Blur(kernels, padding=padding, impl=impl) for impl in ("auto", "fft", "direct")}
    for apply in ("forward", "adjoint"):
        out = {impl: getattr(op, apply)(x) for impl, op in ops.items()}
        assert torch.equal(out["auto"], out[picked])
        for impl in ("fft", "direct"):
            assert float((out["auto"] - out[impl]).norm() / out[impl].norm()) < 1e-10


def test_blur_is_dps_correlation() -> None:
    """The kernel acts as ``nn.Conv2d`` weights after ``ReflectionPad2d`` (DPS's Blurkernel)."""
    k = motion_kernel(15, 0.5, torch.Generator().manual_seed(3))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ref = F.conv2d(F.pad(x, (7, 7, 7, 7), mode="reflect"), k.double()[None, None].repeat(3, 1, 1, 1), groups=3)
    assert torch.allclose(Blur(k, impl="direct")(x), ref, atol=1e-13)
    assert torch.allclose(Blur(k, impl="fft")(x), ref, atol=1e-13)


def test_svd_blur_matches_dense_and_ddrm() -> None:
    n = 24
    taps = svd_gaussian_taps(61, 3.0)
    m = blur_matrix(n, taps)
    # DDRM's Deblurring loop, literally
    ref = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i - 30, i + 30):
            if 0 <= j < n:
                ref[i, j] = taps[j - i + 30]
    assert torch.equal(m, ref)
    op = svd_gaussian_blur(61, 3.0, svd_pairing="consistent")
    x = torch.randn(2, 3, n, n, dtype=torch.float64)
    mt, _, kept = truncated(m, 0.03)
    assert 0 < int((kept > 0).sum()) < n  # some singular values are dropped
    dense = torch.kron(mt, mt)
    ref_y = (dense @ x.reshape(2, 3, -1, 1)).reshape(2, 3, n, n)
    assert torch.allclose(op(x), ref_y, atol=1e-13)
    assert torch.allclose(op.adjoint(x), (dense.T @ x.reshape(2, 3, -1, 1)).reshape(2, 3, n, n), atol=1e-13)
    # threshold 0: the untruncated zero-boundary blur
    full = SeparableSVD(lambda k: blur_matrix(k, taps), threshold=0.0)
    assert torch.allclose(full(x), (torch.kron(m, m) @ x.reshape(2, 3, -1, 1)).reshape(2, 3, n, n), atol=1e-12)


@pytest.mark.parametrize("which", ["blur_official", "blur_consistent", "sr4"])
def test_svd_pseudo_inverse(which: str) -> None:
    op = svd_gaussian_blur(61, 5.0, svd_pairing=which[5:]) if which.startswith("blur") else svd_downsample(4)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ax = op(x)
    # Moore–Penrose: A A⁺ A = A and A⁺ A A⁺ = A⁺
    assert torch.allclose(op(op.pinv(ax)), ax, atol=1e-10)
    p = op.pinv(ax)
    assert torch.allclose(op.pinv(op(p)), p, atol=1e-8)
    # A⁺ A is an orthogonal projection: symmetric
    z = torch.randn_like(x)
    assert abs(float((op.pinv(op(x)) * z).sum() - (x * op.pinv(op(z))).sum())) < 1e-9 * float(x.norm() * z.norm())


def official_deblurring_dense(n: int, taps: torch.Tensor, channels: int = 3) -> dict[str, torch.Tensor]:
    """The official ``Deblurring`` (TReg-inverse/TReg ``functions/svd_operators.py``) as dense matrices on images
    flattened channel-major (``[C·n²]``), built from its definition and not from treg_exp's module:

    - the 1-D zero-boundary matrix by the official loop, its SVD, singular values < 0.03 set to 0;
    - the 2-D singular values ``s_i·s_j`` at flat index ``i·n + j``, sorted descending (Python's stable sort:
      ties in index order), ``order[p]`` the mode of rank ``p``;
    - ``Vt``: row ``3p + c`` (pixel-major) is the basis image ``v_i ⊗ v_j`` of mode ``order[p]`` in channel ``c``;
      ``Ut`` likewise with ``u``;
    - ``singulars()``: the sorted values repeated channel-major (``repeat(1, 3)``): entry ``k`` is ``sorted[k mod N]``;
    - ``A = Utᵀ diag(singulars) Vt``, ``Aᵀ``, ``A⁺ = Vtᵀ diag(1/singulars, 0 where 0) Ut``.

    The SVD is torch's, as in the module: for the modes that the official pairing revives, singular vectors sit on a
    plateau of tiny singular values and are fixed by the SVD routine (see treg_exp/operators/svd.py), so this checks
    the pairing and the algebra around one SVD, not the SVD.
    """
    k = taps.shape[0]
    small = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i - k // 2, i + k // 2):
            if 0 <= j < n:
                small[i, j] = taps[j - i + k // 2]
    u, s, vh = torch.linalg.svd(small)
    s = torch.where(s < 0.03, torch.zeros_like(s), s)
    count = n * n
    products = [float(s[i] * s[j]) for i in range(n) for j in range(n)]
    order = sorted(range(count), key=lambda q: -products[q])
    ranked = torch.tensor([products[q] for q in order], dtype=torch.float64)
    modes_v = torch.kron(vh, vh)  # row i·n + j: (v_i ⊗ v_j)ᵀ on the row-major n×n grid
    modes_u = torch.kron(u.T, u.T)
    vt = torch.zeros(channels * count, channels * count, dtype=torch.float64)
    ut = torch.zeros_like(vt)
    for p, q in enumerate(order):
        for c in range(channels):
            vt[channels * p + c, c * count : (c + 1) * count] = modes_v[q]
            ut[channels * p + c, c * count : (c + 1) * count] = modes_u[q]
    singulars = ranked.repeat(channels)  # repeat(1, 3).reshape(-1): entry k is ranked[k mod N]
    inverse = torch.where(singulars > 0, 1.0 / torch.where(singulars > 0, singulars, 1.0), 0.0)
    a = (ut.T * singulars) @ vt
    return {"A": a, "At": a.T, "pinv": (vt.T * inverse) @ ut, "order": torch.tensor(order)}


def test_svd_official_pairing_matches_dense_definition() -> None:
    """svd_pairing=official equals the official Deblurring built densely from its definition (forward, adjoint and
    pseudo-inverse), at 16 px where the pairing already zeroes kept modes and revives zero ones.

    Catches: the sorted values repeated pixel-major (that is the consistent operator), the rank read off the wrong
    axis, a pseudo-inverse or adjoint that pairs differently from the forward, and ties broken out of index order."""
    n = 16
    taps = svd_gaussian_taps(61, 5.0)
    dense = official_deblurring_dense(n, taps)
    op = svd_gaussian_blur(61, 5.0, svd_pairing="official")
    x = torch.randn(2, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def apply(matrix: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(2, -1) @ matrix.T).reshape(v.shape)

    assert torch.allclose(op(x), apply(dense["A"], x), rtol=0, atol=1e-12)
    assert torch.allclose(op.adjoint(y), apply(dense["At"], y), rtol=0, atol=1e-12)
    assert torch.allclose(op.pinv(y), apply(dense["pinv"], y), rtol=0, atol=1e-9)
    # the dense pseudo-inverse meets the four Moore–Penrose conditions, which define A⁺ uniquely
    a, p = dense["A"], dense["pinv"]
    ap, pa = a @ p, p @ a
    assert torch.allclose(ap @ a, a, atol=1e-10) and torch.allclose(pa @ p, p, atol=1e-6)
    assert torch.allclose(ap, ap.T, atol=1e-10) and torch.allclose(pa, pa.T, atol=1e-10)
    # the ties matter here: symmetric pairs (i, j)/(j, i) and the zero block are both present
    assert len(set(dense["order"].tolist())) == n * n


def test_svd_pairings_differ() -> None:
    """The two pairings are different operators (so neither can silently become the other); ``consistent`` is the
    separable ``M' ⊗ M'``; with one channel the official pairing reduces to the consistent one."""
    n = 24
    x = torch.randn(1, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    official = svd_gaussian_blur(61, 5.0, svd_pairing="official")
    consistent = svd_gaussian_blur(61, 5.0, svd_pairing="consistent")
    diff = float((official(x) - consistent(x)).norm() / consistent(x).norm())
    assert diff > 0.1, diff
    mt, _, kept = truncated(blur_matrix(n, svd_gaussian_taps(61, 5.0)), 0.03)
    assert torch.allclose(consistent(x), mt @ x @ mt.T, atol=1e-13)
    assert torch.equal(official_scales(kept, kept, 1)[0], torch.outer(kept, kept))
    # SR: SRConv pairs consistently, so both values build the same operator
    sr = [super_resolution(4, impl="svd", svd_pairing=p) for p in ("official", "consistent")]
    assert torch.equal(sr[0](x), sr[1](x))
    with pytest.raises(UserError, match="svd_pairing"):
        gaussian_deblur(impl="svd", svd_pairing="ddrm")


def test_svd_blur_at_512() -> None:
    """At 512 px (σ = 5) about 3 % of the 2-D modes are kept; the official pairing zeroes two thirds of the kept
    coefficients and gives modes whose singular value is 0 scales near 1 (the module docstring's numbers)."""
    _, _, kept = truncated(blur_matrix(512, svd_gaussian_taps(61, 5.0)), 0.03)
    frac = (int((kept > 0).sum()) / 512) ** 2
    assert 0.02 < frac < 0.04
    scales = official_scales(kept, kept, 3)
    own = torch.outer(kept, kept).expand_as(scales)
    zeroed = int(((own > 0) & (scales == 0)).sum()) / int((own > 0).sum())
    assert abs(zeroed - 2 / 3) < 0.01
    assert float(scales[own == 0].max()) > 0.99
    # 3 and N = 512² are coprime, so (3p + c) mod N runs over every rank: each channel's scales are a permutation
    # of the true singular values (a reordering, not a rescaling)
    for c in range(3):
        assert torch.equal(scales[c].flatten().sort().values, own[0].flatten().sort().values)


def test_svd_sr16_equals_direct() -> None:
    """The bicubic ×16 matrix's singular values (≈ 0.17–0.25) all exceed 0.03: the SVD form is the same operator."""
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    direct = super_resolution(16)
    svd = super_resolution(16, impl="svd")
    _, _, kept = svd.factors(128)
    assert bool((kept > 0.15).all())
    assert svd(x).shape == (1, 3, 8, 8)
    assert torch.allclose(svd(x), direct(x), atol=1e-12)
    assert torch.allclose(svd.adjoint(svd(x)), direct.adjoint(direct(x)), atol=1e-12)


def test_measurement_images() -> None:
    x = torch.rand(2, 3, 32, 32) * 4 - 2
    for name in ("gauss_reflect_fft", "sr4_reflect", "inpaint_box"):
        op = OPS[name]
        y = op.measure(x, gens(1, 2))
        view = op.measurement_image(y)
        assert view.shape == y.shape and view.min() >= -1 and view.max() <= 1
    op = OPS["inpaint_box"]
    view = op.measurement_image(op.measure(x, gens(1, 2)))
    assert torch.all(view[op.mask.expand_as(view) == 0] == 0)
