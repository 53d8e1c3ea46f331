"""The exact posterior oracles under the Gaussian prior: ``solver=posterior_mean`` and ``solver=posterior_sample``.

References: the closed-form Wiener filter for circular blur, and dense float64 solves of
``(Σ⁻¹ + AᵀA/σ_y²) x = Σ⁻¹μ + Aᵀy/σ_y²`` with Σ built from the DFT matrix and A from the operator's columns.
The small operators here are written for these tests (a circular blur by FFT, a reflect-padded blur whose adjoint
is the base class's autograd VJP, a per-image random mask); one test also runs the project's own operators.
"""

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.oracles import PosteriorMean, PosteriorSample

SIGMA_Y = 0.01


def small_kernel(size: int = 5, skew: bool = True) -> torch.Tensor:
    """A positive, non-symmetric (``skew``) kernel of sum 1, float64."""
    g = torch.Generator().manual_seed(3)
    kernel = torch.exp(-((torch.arange(size) - size // 2) ** 2) / 2.0).double()
    kernel = kernel[:, None] * kernel[None, :]
    if skew:
        kernel = kernel * (1 + torch.rand(size, size, generator=g, dtype=torch.float64))
    return kernel / kernel.sum()


class CircularBlur(LinearOperator):
    """``A x = ifft2(K̂ · fft2(x))``, the kernel's centre at the origin (periodic boundary)."""

    def __init__(self, kernel: torch.Tensor, sigma_y: float = SIGMA_Y) -> None:
        super().__init__(sigma_y)
        self.kernel = kernel

    def symbol(self, h: int, w: int) -> torch.Tensor:
        k = self.kernel.shape[-1]
        padded = torch.zeros(h, w, dtype=torch.float64)
        padded[:k, :k] = self.kernel
        return torch.fft.fft2(torch.roll(padded, (-(k // 2), -(k // 2)), dims=(0, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(self.symbol(*x.shape[-2:]) * torch.fft.fft2(x)).real.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(self.symbol(*y.shape[-2:]).conj() * torch.fft.fft2(y)).real.to(y.dtype)


class ReflectBlur(LinearOperator):
    """Correlation with reflect padding (DPS's convention); the adjoint is the base class's autograd VJP."""

    def __init__(self, kernel: torch.Tensor, sigma_y: float = SIGMA_Y) -> None:
        super().__init__(sigma_y)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel.shape[-1] // 2
        weight = self.kernel.to(x.dtype)[None, None].expand(3, 1, -1, -1)
        return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), weight, groups=3)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)


class RandomMask(LinearOperator):
    """Keep each pixel (all channels) with probability ``keep``; one mask per image, drawn from its generator."""

    def __init__(self, keep: float = 0.5, sigma_y: float = SIGMA_Y, mask: torch.Tensor | None = None) -> None:
        super().__init__(sigma_y)
        self.keep = keep
        self.mask = mask

    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> "RandomMask":
        mask = (seeding.rand((1, *image_shape[-2:]), generators) < self.keep).double()
        return RandomMask(self.keep, self.sigma_y, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.dtype) * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask.to(y.dtype) * y


def measure(operator: LinearOperator, prior: GaussianPrior, prompts: list[str], size: int, seed: int = 0):
    """Ground truth drawn from the prior and its noisy measurement."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    x = prior.sample(prior.embed_text(prompts), gens, size, size)
    return x, operator.measure(x, gens)


def dense_posterior_mean(operator: LinearOperator, prior: GaussianPrior, y: torch.Tensor, prompt: str, size: int):
    """The posterior mean of one image by a dense float64 solve; Σ⁻¹ = F^H diag(1/P) F from the DFT matrix."""
    n = size * size
    j = torch.arange(size, dtype=torch.float64)
    dft = torch.exp(-2j * torch.pi * j[:, None] * j[None, :] / size) / size**0.5
    f2 = torch.kron(dft, dft)
    ky = torch.fft.fftfreq(size, dtype=torch.float64) * size
    shape = 1 / (1 + ky[:, None] ** 2 + ky[None, :] ** 2)
    power = (shape * 0.25 / shape.mean()).flatten()
    precision = torch.kron(torch.eye(3, dtype=torch.float64), (f2.conj().T @ torch.diag(1 / power + 0j) @ f2).real)
    basis = torch.eye(3 * n, dtype=torch.float64).reshape(3 * n, 3, size, size)
    a = operator.forward(basis).reshape(3 * n, -1).T  # columns of A
    mu = prior.embed_text([prompt])[0].double().repeat_interleave(n)
    matrix = precision + a.T @ a / operator.sigma_y**2
    rhs = precision @ mu + a.T @ y.reshape(-1).double() / operator.sigma_y**2
    return torch.linalg.solve(matrix, rhs).reshape(3, size, size)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_posterior_mean_is_the_wiener_filter_for_circular_blur():
    prior = GaussianPrior(dtype="float64")
    size, prompts = 32, ["red", ""]
    operator = CircularBlur(small_kernel(7))
    x, y = measure(operator, prior, prompts, size)
    solver = PosteriorMean(tol=1e-10)
    seen = {}
    estimate = solver.posterior(y, operator, prior, prompts, x.shape, callback=lambda i, v: seen.update(v))
    # Wiener: X̂ = μ̂ + P·conj(K̂)/(P|K̂|² + σ²)·(Ŷ − K̂μ̂)
    mu = prior.embed_text(prompts)[:, :, None, None].expand_as(x)
    symbol = operator.symbol(size, size)
    power = prior.power_spectrum(size, size)
    gain = power * symbol.conj() / (power * symbol.abs() ** 2 + SIGMA_Y**2)
    wiener = mu + torch.fft.ifft2(gain * torch.fft.fft2(y - operator.forward(mu))).real
    assert relative_error(estimate, wiener) < 1e-5
    # the preconditioner is exact for a circular blur: CG needs at most a couple of iterations
    assert solver.last_iterations <= 2 and float(solver.last_relative_residual.max()) < 1e-6
    assert set(seen) == {"relative_residual", "cg_iterations"} and seen["relative_residual"].shape == (2,)
    # and the estimate is far better than the measurement (the blur's high frequencies are recovered in part)
    assert relative_error(estimate, x) < relative_error(y, x)


@pytest.mark.parametrize("kind", ["reflect_blur", "random_mask"])
def test_posterior_mean_equals_a_dense_solve(kind):
    prior = GaussianPrior(dtype="float64")
    size, prompts = 16, ["blue", "white"]
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    if kind == "reflect_blur":
        operator = ReflectBlur(small_kernel(5))
    else:
        operator = RandomMask(keep=0.4).draw(gens, (2, 3, size, size))
    x, y = measure(operator, prior, prompts, size)
    solver = PosteriorMean(tol=1e-10)
    estimate = solver.posterior(y, operator, prior, prompts, x.shape)
    assert float(solver.last_relative_residual.max()) < 1e-6
    for b in range(2):
        one = operator if kind == "reflect_blur" else RandomMask(0.4, SIGMA_Y, operator.mask[b : b + 1])
        reference = dense_posterior_mean(one, prior, y[b], prompts[b], size)
        assert relative_error(estimate[b], reference) < 1e-6, kind


def test_batch_equals_single_solves_and_solve_contract():
    prior = GaussianPrior(dtype="float64")
    size, prompts = 16, ["green", "black"]
    gens = [torch.Generator().manual_seed(20 + i) for i in range(2)]
    operator = RandomMask(keep=0.3).draw(gens, (2, 3, size, size))
    x, y = measure(operator, prior, prompts, size)
    solver = PosteriorMean(tol=1e-10)
    both = solver.posterior(y, operator, prior, prompts, x.shape)
    for b in range(2):
        one = RandomMask(0.3, SIGMA_Y, operator.mask[b : b + 1])
        alone = solver.posterior(y[b : b + 1], one, prior, prompts[b : b + 1], (1, 3, size, size))
        assert relative_error(both[b], alone[0]) < 1e-12
    out = solver.solve(y, operator, prior, prompts, gens, x.shape)
    assert out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out, both.float().clamp(-1, 1))


@pytest.mark.parametrize("kind", ["circular_blur", "reflect_blur", "random_mask"])
def test_every_preconditioner_converges_and_auto_picks_the_better(kind):
    """All preconditioners reach the same answer below 1e-6 relative residual; ``auto`` takes the circulant one
    where AᵀA is circulant (then the initial guess is the answer) and plain CG otherwise (with the paper's 61×61
    reflect-padded blurs the periodic approximation slows CG down; see the module docstring)."""
    prior = GaussianPrior(dtype="float64")
    size, prompts = 16, ["red"]
    operators = {
        "circular_blur": CircularBlur(small_kernel(9, skew=False)),
        "reflect_blur": ReflectBlur(small_kernel(9, skew=False)),
        "random_mask": RandomMask(0.5).draw([torch.Generator().manual_seed(4)], (1, 3, size, size)),
    }
    operator = operators[kind]
    x, y = measure(operator, prior, prompts, size)
    counts, answers = {}, {}
    for name in ("auto", "circulant", "flat", "none"):
        solver = PosteriorMean(tol=1e-9, preconditioner=name, max_iters=3000)
        answers[name] = solver.posterior(y, operator, prior, prompts, x.shape)
        assert float(solver.last_relative_residual.max()) < 1e-6
        counts[name] = solver.last_iterations
        if name == "auto":
            chosen = solver.last_preconditioner
    for name in ("circulant", "flat", "none"):
        assert relative_error(answers[name], answers["auto"]) < 1e-6
    assert chosen == ("circulant" if kind == "circular_blur" else "none")
    assert counts["auto"] == counts[chosen]
    if kind == "circular_blur":
        assert counts["auto"] <= 2 < counts["none"]


def test_posterior_sample_has_the_posterior_mean_and_covariance():
    """Circular blur, 16 px, 2000 samples of one measurement: whitened by the closed-form posterior covariance
    C(k) = 1/(1/P + |K̂|²/σ²) around the posterior mean, the samples' mean is 0 and covariance I within 5.5
    standard errors entry by entry (a wrong mean or a wrong covariance at any frequency fails this)."""
    prior = GaussianPrior(dtype="float64")
    size, n = 16, 2000
    operator = CircularBlur(small_kernel(5))
    x, y = measure(operator, prior, ["red"], size, seed=5)
    mean = PosteriorMean(tol=1e-10).posterior(y, operator, prior, ["red"], x.shape)
    sampler = PosteriorSample(tol=1e-10)
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    samples = sampler.posterior(y.expand(n, -1, -1, -1), operator, prior, ["red"] * n, (n, 3, size, size), gens)
    assert float(sampler.last_relative_residual.max()) < 1e-6
    variance = 1 / (1 / prior.power_spectrum(size, size) + operator.symbol(size, size).abs() ** 2 / SIGMA_Y**2)
    white = torch.fft.ifft2(torch.fft.fft2(samples - mean) / variance.sqrt()).real.reshape(3 * n, size * size)
    m = white.shape[0]  # channels are independent draws
    assert white.mean(0).abs().max() < 5.5 / m**0.5
    covariance = white.T @ white / m
    off = covariance - torch.diag(covariance.diagonal())
    assert off.abs().max() < 5.5 / m**0.5
    assert (covariance.diagonal() - 1).abs().max() < 5.5 * (2 / m) ** 0.5
    # the sample mean tends to the posterior mean: its distance is that of an average of n posterior draws
    excess = (samples.mean(0) - mean[0]).pow(2).sum() / (variance.sum() * 3 / n)
    assert 0.5 < float(excess) < 1.5
    # samples differ from the mean by the posterior spread, and a batch row depends only on its generator
    again = sampler.posterior(y, operator, prior, ["red"], x.shape, [torch.Generator().manual_seed(1003)])
    torch.testing.assert_close(again[0], samples[3], rtol=0, atol=1e-9)


def test_oracles_with_the_project_operators():
    """The project's blur (reflect, FFT) and random inpainting against the dense solve."""
    from treg_exp.operators.blur import gaussian_deblur
    from treg_exp.operators.inpaint import Inpainting

    prior = GaussianPrior(dtype="float64")
    size, prompts = 16, ["yellow"]
    gens = [torch.Generator().manual_seed(30)]
    for operator in (
        gaussian_deblur(kernel_size=7, kernel_sigma=1.5, padding="reflect"),
        Inpainting(mask_type="random", drop_ratio=0.6).draw(gens, (1, 3, size, size)),
    ):
        x, y = measure(operator, prior, prompts, size, seed=40)
        solver = PosteriorMean(tol=1e-10)
        estimate = solver.posterior(y, operator, prior, prompts, x.shape)
        reference = dense_posterior_mean(operator, prior, y[0], prompts[0], size)
        assert relative_error(estimate[0], reference) < 1e-6, type(operator).__name__


def test_oracles_need_the_gaussian_prior_and_noise():
    operator = CircularBlur(small_kernel(3))
    y = torch.zeros(1, 3, 8, 8)
    with pytest.raises(UserError, match="model=gaussian"):
        PosteriorMean().solve(y, operator, object(), [""], [torch.Generator()], (1, 3, 8, 8))
    with pytest.raises(UserError, match="sigma_y"):
        PosteriorMean().solve(y, CircularBlur(small_kernel(3), 0.0), GaussianPrior(), [""], [None], (1, 3, 8, 8))
    with pytest.raises(UserError, match="preconditioner"):
        PosteriorSample(preconditioner="jacobi")


def test_project_circular_blur_gives_the_wiener_filter():
    """The project's own ``padding=circular`` blur (what ``auto`` preconditions exactly) against the Wiener filter."""
    from treg_exp.operators.blur import gaussian_deblur

    prior = GaussianPrior(dtype="float64")
    size, prompts = 32, ["blue"]
    operator = gaussian_deblur(kernel_size=7, kernel_sigma=1.5, padding="circular")
    x, y = measure(operator, prior, prompts, size, seed=5)
    estimate = PosteriorMean(tol=1e-10).posterior(y, operator, prior, prompts, x.shape)
    # the blur's transfer function, read off the operator's response to a centred impulse
    impulse = torch.zeros(1, 3, size, size, dtype=torch.float64)
    impulse[..., 0, 0] = 1.0
    symbol = torch.fft.fft2(operator(impulse)[0, 0])
    mu = prior.embed_text(prompts)[:, :, None, None].expand_as(x)
    power = prior.power_spectrum(size, size)
    gain = power * symbol.conj() / (power * symbol.abs() ** 2 + SIGMA_Y**2)
    wiener = mu + torch.fft.ifft2(gain * torch.fft.fft2(y - operator(mu))).real
    assert relative_error(estimate, wiener) < 1e-5


def test_a_posterior_sample_has_twice_the_error_of_the_posterior_mean():
    """On images drawn from the prior, E‖x − x_s‖² = 2·tr(Cov) = 2·E‖x − E[x|y]‖² (3.01 dB lower PSNR)."""
    prior = GaussianPrior(dtype="float64")
    size, prompts = 32, [""] * 8
    operator = CircularBlur(small_kernel(7))
    x, y = measure(operator, prior, prompts, size, seed=11)
    gens = seeding.batch_generators(0, [str(k) for k in range(8)], seeding.SOLVER)
    mean = PosteriorMean(tol=1e-10).posterior(y, operator, prior, prompts, x.shape)
    sample = PosteriorSample(tol=1e-10).posterior(y, operator, prior, prompts, x.shape, generators=gens)
    ratio = float(((sample - x) ** 2).sum() / ((mean - x) ** 2).sum())
    assert 1.85 < ratio < 2.15, ratio
