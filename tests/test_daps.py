"""DAPS and LatentDAPS (``treg_exp.solvers.daps``).

The official loop is transcribed here from reading ``zhangbingliang2019/DAPS@098df6b`` (``sampler.py`` ``DAPS.sample``
and ``LatentDAPS.sample``, ``cores/mcmc.py`` ``MCMCSampler.sample`` / ``score_fn`` / ``mc_update`` / ``get_lr``,
``cores/scheduler.py`` ``EDMScheduler`` and the Euler ``DiffusionPFODE``, ``forward_operator`` ``LatentWrapper``),
not copied: float64, batch 1, and two changes only: noise comes from the image's generator in the order the solver
draws it (start, then per level the HMC velocity, one ε per MCMC step, the re-noising draw), and the denoiser is the
prior's at the nearest table level, ``D(x; σ) = x − σ̄_t·ε(√ᾱ_t·x, t)`` (written here from its definition), where the
official wrappers interpolate the network's time between table points.
"""

from __future__ import annotations

import pytest
import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianFlowPrior, GaussianPrior
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.operators import gaussian_deblur
from treg_exp.solvers.daps import DAPS, edm_grid
from treg_exp.solvers.ddim import DDIMSolver

SIGMA_Y = 0.05


def problem(res: int, seed: int = 0, batch: int = 1):
    """A circular 7×7 Gaussian blur (σ = 1.5) of smooth images in [−1, 1], σ_y = 0.05: ``(A, y)``."""
    generators = [torch.Generator().manual_seed(seed + b) for b in range(batch)]
    x = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, res, res, generator=generators[0]) * 2 - 1, 5, 1, 2)
    operator = gaussian_deblur(kernel_size=7, kernel_sigma=1.5, padding="circular", sigma_y=SIGMA_Y)
    operator = operator.draw(generators, x.shape)
    return operator, operator.measure(x.double(), generators)


def generators(seed: int = 7, batch: int = 1) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def poly_grid(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """``EDMScheduler``'s time steps: ``(σ_max^{1/ρ} + r(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` at r = linspace(0, 1, n+1)."""
    return [
        (sigma_max ** (1 / rho) + (i / n) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(n + 1)
    ]


def nearest_denoiser(prior, x, sigma, cond, uncond, w):
    """``D(x; σ)`` at the table level nearest σ, with CFG ``ε(c_∅) + w(ε(c) − ε(c_∅))`` (w = 0: ``c_∅`` only)."""
    alphas = prior.schedule.alphas_cumprod.double()
    t = int(((1 - alphas) / alphas).sqrt().sub(sigma).abs().argmin())
    a = float(alphas[t])
    eps = prior.predict(a**0.5 * x, t, uncond)
    if w != 0:
        eps = eps + w * (prior.predict(a**0.5 * x, t, cond) - eps)
    return x - ((1 - a) / a) ** 0.5 * eps


def official_daps(prior, y, operator, generator, cfg: dict, latent: bool, prompt: str = "gray") -> torch.Tensor:
    """``DAPS.sample`` / ``LatentDAPS.sample`` with ``MCMCSampler`` (prior_solver ``gaussian``), batch 1, float64."""
    gens = [generator]
    cond, uncond = prior.embed_text([prompt]), prior.null_embedding(1, "")
    shape = prior.latent_shape((1, 3, *operator.input_shape(y)[-2:]))
    n = cfg["annealing_steps"]
    sigma_steps = poly_grid(n, cfg["sigma_max"], cfg["sigma_min"])[:-1] + [0.0]
    xt = seeding.randn(shape[1:], gens, dtype=torch.float64) * sigma_steps[0]
    for step in range(n):
        sigma = sigma_steps[step]
        times = poly_grid(cfg["ode_steps"], sigma, cfg["ode_sigma_min"])
        x = xt
        for t, t_next in zip(times[:-1], times[1:], strict=True):
            x = x + (t_next - t) * (x - nearest_denoiser(prior, x, t, cond, uncond, cfg["cfg_scale"])) / t
        x0hat = x
        lr = cfg["lr"] * (1 + step / (n + 1) * (cfg["lr_min_ratio"] - 1))
        velocity = seeding.randn(shape[1:], gens, dtype=torch.float64) if cfg["mcmc"] == "hmc" else None
        prior_score = (x0hat - xt) / sigma**2
        x = x0hat.clone()
        for _ in range(cfg["mcmc_steps"]):
            with torch.enable_grad():
                x_tmp = x.clone().requires_grad_(True)
                image = prior.decode(x_tmp) if latent else x_tmp
                loss = ((operator(image) - y) ** 2).flatten(1).sum(-1).sum()
                grad = torch.autograd.grad(loss, x_tmp)[0]
            if latent:
                grad = grad.clamp(-1, 1)
            score = -grad / cfg["tau"] ** 2 + (xt - x) / sigma**2 + prior_score
            eps = seeding.randn(shape[1:], gens, dtype=torch.float64)
            if velocity is None:
                x = x + lr * score + (2 * lr) ** 0.5 * eps
            else:
                velocity = cfg["momentum"] * velocity + lr**0.5 * score + (2 * (1 - cfg["momentum"])) ** 0.5 * eps
                x = x + velocity * lr**0.5
        xt = x + seeding.randn(shape[1:], gens, dtype=torch.float64) * sigma_steps[step + 1]
    out = prior.decode(xt) if latent else xt
    return out.clamp(-1, 1).float()


SMALL = {
    "annealing_steps": 4,
    "sigma_max": 10.0,
    "sigma_min": 0.1,
    "ode_steps": 2,
    "ode_sigma_min": 0.01,
    "mcmc": "langevin",
    "mcmc_steps": 3,
    "lr": 1e-4,
    "lr_min_ratio": 0.01,
    "tau": 0.01,
    "momentum": 0.9,
    "cfg_scale": 0.0,
}


# --- grids ---------------------------------------------------------------------------------------------------------
def test_grids_are_edms_poly_7() -> None:
    """The annealing levels are EDM's poly-7 grid from σ_max to σ_min with the last point replaced by 0 (the code's
    ``discretize``), and η decays linearly with ``step / (N + 1)``. Catches a grid that keeps σ_min, a ρ applied to
    the wrong side, or a decay over N instead of N + 1."""
    solver = DAPS(annealing_steps=200)
    levels = solver.annealing_sigmas()
    assert len(levels) == 201 and levels[-1] == 0.0
    assert levels[:-1] == pytest.approx(poly_grid(200, 100.0, 0.1)[:-1], rel=1e-12)
    assert levels[0] == pytest.approx(100.0, rel=1e-12) and levels[-2] > 0.1
    assert edm_grid(5, 3.0, 0.01) == pytest.approx(poly_grid(5, 3.0, 0.01), rel=1e-12)
    assert solver.step_size(0) == 1e-4
    assert solver.step_size(100) == pytest.approx(1e-4 * (1 + 100 / 201 * (0.01 - 1)), rel=1e-12)


# --- the official loop ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mcmc", ["langevin", "hmc"])
def test_equals_the_official_loop_on_the_gaussian_prior(mcmc: str) -> None:
    """Pixel DAPS on the exact Gaussian prior (float64), 4 levels × 2 ODE steps × 3 MCMC steps, Langevin and HMC:
    the module equals the transcription to 1e-6. Catches a wrong ODE step, score term, η schedule, HMC update or
    re-noising."""
    prior = GaussianPrior(dtype="float64")
    operator, y = problem(16)
    cfg = {**SMALL, "mcmc": mcmc, "lr": 2e-5}
    expected = official_daps(prior, y, operator, generators()[0], cfg, latent=False)
    out = DAPS(**cfg).solve(y, operator, prior, ["gray"], generators(), (1, 3, 16, 16))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_latent_daps_equals_the_official_loop_on_tiny_sd() -> None:
    """LatentDAPS on the tiny SD build (float64), HMC, CFG 7.5, the gradient through the decoder clamped to [−1, 1]:
    the module equals the transcription to 1e-6. Catches a missing clamp, a likelihood in pixel space, or CFG on
    the wrong branch."""
    prior = TinyStableDiffusionPrior(dtype="float64", vae_slicing=False).load("cpu")
    operator, y = problem(32)
    cfg = {
        **SMALL,
        "sigma_max": 10.0,
        "ode_sigma_min": 0.001,
        "mcmc": "hmc",
        "lr": 1e-5,
        "lr_min_ratio": 1.0,
        "cfg_scale": 7.5,
    }
    expected = official_daps(prior, y, operator, generators()[0], cfg, latent=True, prompt="a photo")
    out = DAPS(**cfg).solve(y, operator, prior, ["a photo"], generators(), (1, 3, 32, 32))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# --- costs, batches, refusals --------------------------------------------------------------------------------------
def test_network_passes_are_counted_and_priced() -> None:
    """On the tiny SD: N·ODE network calls (2 rows with CFG), N·K differentiated decodes and one for the output, and
    the cost formula (``experiment.cost.daps_passes``) equals the counter. Catches a formula that drifts from the
    loop, or a network pass inside the MCMC loop."""
    from treg_exp.experiment import cost

    prior = TinyStableDiffusionPrior(vae_slicing=False).load("cpu")
    operator, y = problem(32)
    options = {
        "annealing_steps": 3,
        "sigma_max": 10.0,
        "ode_steps": 2,
        "mcmc_steps": 4,
        "mcmc": "hmc",
        "cfg_scale": 7.5,
    }
    prior.embed_text(["a photo", ""])
    prior.reset_counter()
    DAPS(**options).solve(y.float(), operator, prior, ["a photo"], generators(), (1, 3, 32, 32))
    counts = dict(prior.counter)
    assert (counts["unet_calls"], counts["unet_rows"], counts["decode_rows"], counts["decode_grad_rows"]) == (
        6,
        12,
        13,
        12,
    )
    passes = cost.solver_passes({"_target_": "treg_exp.solvers.daps.DAPS", **options}, "daps", {})
    for name in cost.COUNT_NAMES:
        assert getattr(passes, name) == counts.get(name, 0), name


def test_batch_equals_single_images() -> None:
    """A batch of two equals the two images solved alone (per-image losses and noise). Catches a likelihood or a
    noise draw shared across the batch."""
    prior = GaussianPrior(dtype="float64")
    singles = [problem(16, seed=b) for b in range(2)]
    operator, y = singles[0][0], torch.cat([y for _, y in singles])
    solver = DAPS(**{**SMALL, "lr": 2e-5})
    both = solver.solve(y, operator, prior, ["gray", "red"], [*generators(7), *generators(8)], (2, 3, 16, 16))
    for b, prompt in enumerate(["gray", "red"]):
        one = solver.solve(singles[b][1], operator, prior, [prompt], generators(7 + b), (1, 3, 16, 16))
        torch.testing.assert_close(both[b : b + 1], one, rtol=0, atol=1e-10)


def test_refusals_are_one_line() -> None:
    """Rectified-flow priors, a σ_max above the prior's noisiest table level (the pixel default 100 on SD's table,
    where the nearest-level lookup would silently use t = 999), and impossible grids are refused in one line before
    any network pass."""
    cases = [
        (lambda: DAPS().check_prior(GaussianFlowPrior()), "rectified-flow"),
        (lambda: DAPS(sigma_max=100.0).check_prior(GaussianPrior()), "σ̄_T = 14.6"),
        (lambda: DAPS(mcmc="mh"), "solver.mcmc"),
        (lambda: DAPS(sigma_min=200.0), "sigma_min"),
        (lambda: DAPS(tau=0.0), "solver.tau"),
    ]
    for call, words in cases:
        with pytest.raises(UserError) as error:
            call()
        assert words in str(error.value) and "\n" not in str(error.value)


# --- end to end ----------------------------------------------------------------------------------------------------
def test_fits_the_measurement_better_than_ddim() -> None:
    """On the exact Gaussian prior with its calibration settings (exact likelihood, DAPS-100 grid):
    ``‖A x̂ − y‖`` of DAPS is well below that of a DDIM sample that ignores y. Catches a likelihood of the wrong
    sign or scale."""
    prior = GaussianPrior(dtype="float64")
    operator, y = problem(32)
    out = DAPS(annealing_steps=50, ode_steps=2, tau=None, sigma_max=10.0).solve(
        y, operator, prior, ["gray"], generators(), (1, 3, 32, 32)
    )
    sample = DDIMSolver(num_steps=20, guidance_scale=1.0).solve(None, None, prior, ["gray"], generators(), out.shape)
    fit = float((operator(out.double()) - y).norm())
    assert fit < 0.5 * float((operator(sample.double()) - y).norm())
    assert fit < 2.0 * SIGMA_Y * y.numel() ** 0.5  # within twice the noise's own norm


def test_calibration_against_the_exact_posterior() -> None:
    """DAPS at ``conf/solver_model/daps_gaussian.yaml`` (exact likelihood, DAPS-100 grid) on 2 draws × 3 seeds at
    32 px of circular Gaussian deblurring: MSE over an exact posterior sample's ≤ 2 (the issue's bound), its mean
    nearer the posterior mean than ``Aᵀy`` is, and a spread that neither collapses nor blows up
    (``benchmarks/CALIBRATION_DAPS.md`` shows spread → 1 and bias → 0 as the budget grows)."""
    from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, calibrate, make_problem

    prior = GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    operator = gaussian_deblur(kernel_size=15, kernel_sigma=2.0, padding="circular")
    result = calibrate(
        DAPS(annealing_steps=50, ode_steps=2, tau=None, sigma_max=10.0), make_problem(operator, 2, 32, 3, prior)
    )
    assert result.mse_ratio <= 2.0 and 0.5 <= result.spread_ratio <= 1.5
    assert result.bias2 < result.adjoint_bias2


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl", "tiny_v"])
def test_latent_daps_fits_y_on_the_latent_priors(model: str) -> None:
    """LatentDAPS at ``solver=latent_daps`` (3 levels, 4 HMC steps) on the tiny SD 1.5, SDXL and SD 2.1-v builds: a
    finite image that fits y better than the same loop with a vanishing MCMC step (the prior alone). Catches a latent
    likelihood that ignores y on SD 1.5, the two-encoder or the v-prediction priors."""
    from hydra.utils import instantiate

    from tests.test_configs import compose_with

    cfg = compose_with(f"model={model}", "solver=latent_daps", "task=gauss_deblur")
    prior = instantiate(cfg.model).load("cpu")
    operator, y = problem(64)
    fits = []
    for lr in (1e-4, 1e-12):
        solver = instantiate(cfg.solver, annealing_steps=3, mcmc_steps=4, lr=lr)
        out = solver.solve(y.float(), operator, prior, ["a photo"], generators(), (1, 3, 64, 64))
        assert torch.isfinite(out).all()
        fits.append(float((operator(out.double()) - y).norm()))
    assert fits[0] < fits[1]


# --- presets -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "grid"),
    [
        (["solver=daps"], (200, 5, 100)),
        (["solver=daps", "+solver/budget=daps_100", "task=motion_deblur"], (50, 2, 100)),
        (["solver=latent_daps", "model=tiny"], (50, 2, 40)),
        (["solver=latent_daps", "model=tiny", "+solver/budget=daps_1k", "task=inpaint_box"], (200, 5, 58)),
    ],
)
def test_budget_presets_compose(overrides: list[str], grid: tuple[int, int, int]) -> None:
    """``+solver/budget=daps_100|daps_1k`` set the paper's grids (annealing levels × ODE steps = 50 × 2 and 200 × 5)
    on top of the solver's and the task's values, and keep the task's MCMC steps (box inpainting's 58 on SD). Catches
    a preset that lands outside ``solver`` or is overridden by the per-task file."""
    from tests.test_configs import compose_with

    solver = compose_with(*overrides).solver
    assert (solver.annealing_steps, solver.ode_steps, solver.mcmc_steps) == grid


@pytest.mark.parametrize("table", ["linear", "scaled_linear"])
def test_nearest_table_level_is_within_2_5_percent_over_the_annealing_range(table: str) -> None:
    """The module docstring's departure bound: on ADM's linear and SD's scaled-linear DDPM tables the nearest table
    level σ̄_t of every σ in the annealing range [0.1, 100] (capped at σ̄_999) is within 2.5 % of σ, while below it (the
    ODE's last inner points) the error grows past 15 %. Catches a level lookup in ᾱ instead of σ̄, or a docstring
    whose bound is wrong."""
    from treg_exp.models.schedule import NoiseSchedule
    from treg_exp.solvers.core import timestep_for_sigma

    schedule = getattr(NoiseSchedule, table)()
    alphas = schedule.alphas_cumprod.double()
    levels = ((1 - alphas) / alphas).sqrt()

    def worst(low: float, high: float) -> float:
        sigmas = torch.logspace(torch.tensor(low).log10(), torch.tensor(high).log10(), 400, dtype=torch.float64)
        return max(abs(float(levels[timestep_for_sigma(schedule, float(s))[0]]) / float(s) - 1) for s in sigmas)

    assert worst(0.1, min(100.0, float(levels[-1]))) < 0.025
    assert worst(float(levels[0]), 0.1) > 0.15
