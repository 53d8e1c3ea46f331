"""FlowDPS (``treg_exp.solvers.flowdps``) and its FlowChef variant.

The official loop is transcribed here from reading ``FlowDPS-Inverse/FlowDPS@8361843`` (``sd3_sampler.py``:
``SD3FlowDPS.sample``, ``data_consistency``, ``SD3FlowChef.sample``), not copied: float64, batch 1, the grid from
diffusers' own ``FlowMatchEulerDiscreteScheduler`` with the shift set after construction (what
``scheduler.config.shift = 4.0`` did under the diffusers 0.30.1 the repository pins: ``set_shift`` here), the raw
velocity of the prior's network, and two changes only: noise comes from the image's generator in the order the solver
draws it (z_1, then one ε per step), and the SR pseudo-inverse is the SVD operator's ``pinv``. η = 0.5 on the tiny
model: at the official 15 a random network makes the loop chaotic (REFERENCE.md).
"""

from __future__ import annotations

import pytest
import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianFlowPrior, GaussianPrior
from treg_exp.models.sd3 import RandomSD3Prior
from treg_exp.operators import gaussian_deblur
from treg_exp.operators.sr import super_resolution
from treg_exp.solvers.ddim import DDIMSolver
from treg_exp.solvers.flowdps import FlowDPS

SIGMA_Y = 0.03


@pytest.fixture(scope="module")
def tiny_sd3() -> RandomSD3Prior:
    return RandomSD3Prior(architecture="tiny", seed=0, dtype="float64").load("cpu")


def problem(operator, res: int, seed: int = 0, batch: int = 1):
    """Smooth images in [−1, 1] measured by ``operator`` with σ_y = 0.03: ``(A, y)``."""
    generators = [torch.Generator().manual_seed(seed + b) for b in range(batch)]
    x = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, res, res, generator=generators[0]) * 2 - 1, 5, 1, 2)
    operator = operator.draw(generators, x.shape)
    return operator, operator.measure(x.double(), generators)


def generators(seed: int = 7, batch: int = 1) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def diffusers_sigmas(prior_shift: float, steps: int, shift: float = 4.0) -> list[float]:
    """``timesteps / T`` of the code's scheduler after ``scheduler.config.shift = 4.0`` (diffusers 0.30.1), float32."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=prior_shift)
    scheduler.set_shift(shift)
    scheduler.set_timesteps(steps)
    return (scheduler.timesteps.double() / scheduler.config.num_train_timesteps).tolist()


def official_sigmas(prior_shift: float, steps: int, shift: float = 4.0) -> list[float]:
    """The same grid in float64 from its definition (diffusers computes it in float32): σ_min the smallest training
    σ under the training shift, N points from 1 to σ_min, then the outer shift."""

    def shifted(sigma, s):
        return s * sigma / (1 + (s - 1) * sigma)

    sigma_min = shifted(1 / 1000, prior_shift)
    return [shifted(1 + (sigma_min - 1) * i / (steps - 1), shift) for i in range(steps)]


def official_loop(
    prior, y, operator, data_map, generator, sigmas, w, eta, variant="flowdps", half=True
) -> torch.Tensor:
    """FlowDPS / FlowChef as ``sd3_sampler.py`` computes them (batch 1), float64 (``half``: the code's ``.half()`` of
    the gradient)."""
    cond, uncond = prior.embed_text(["a photo"]), prior.null_embedding(1, "")
    shape = prior.latent_shape((1, 3, *operator.input_shape(y)[-2:]))
    z = seeding.randn(shape[1:], [generator], dtype=torch.float64)
    n = len(sigmas)
    for i, sigma in enumerate(sigmas):
        t = sigma * 1000
        pred_v = prior.predict(z, t, cond)
        pred_null_v = prior.predict(z, t, uncond) if w != 1.0 else 0.0
        v = pred_null_v + w * (pred_v - pred_null_v)
        sigma_next = sigmas[i + 1] if i + 1 < n else 0.0
        z0t, z1t = z - sigma * v, z + (1 - sigma) * v
        delta = sigma - sigma_next

        def grad_at(z0):
            z0 = z0.detach().requires_grad_(True)
            x0 = prior.decode(z0)
            loss = torch.linalg.norm((data_map(y) - data_map(operator(x0))).reshape(1, -1))
            grad = torch.autograd.grad(loss, z0)[0]
            return grad.half().double() if half else grad

        with torch.enable_grad():
            if variant == "flowchef":
                z = z0t + (sigma - delta) * (z1t - z0t) - eta * grad_at(z0t)
                continue
            z0y = z0t
            for _ in range(3):
                z0y = z0y - eta * grad_at(z0y)
        z0y = (1 - sigma) * z0t + sigma * z0y
        fresh = seeding.randn(shape[1:], [generator], dtype=torch.float64)
        noise = sigma_next**0.5 * z1t + (1 - sigma_next) ** 0.5 * fresh
        z = z0y + (sigma - delta) * (noise - z0y)
    return prior.decode(z).clamp(-1, 1).float()


# --- the grid ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 28])
def test_grid_is_the_codes_shift_4_grid(steps: int) -> None:
    """With ``shift: 4.0`` on a prior trained at shift 3 the σ grid equals the scheduler's after ``set_shift(4.0)``
    (σ_min from the training shift 3, the outer shift 4) to float32 rounding; with ``shift: null`` it is the prior's
    own 3.0 grid. Catches applying 4.0 to σ_min too, or not at all."""
    prior = GaussianFlowPrior(shift=3.0)
    sigmas = [s.sigma for s in FlowDPS(num_steps=steps).plan(prior, (1, 3, 8, 8))]
    assert sigmas == pytest.approx(diffusers_sigmas(3.0, steps), abs=1e-6)
    assert sigmas == pytest.approx(official_sigmas(3.0, steps), abs=1e-12)
    own = [s.sigma for s in FlowDPS(num_steps=steps, shift=None).plan(prior, (1, 3, 8, 8))]
    assert own == pytest.approx(diffusers_sigmas(3.0, steps, shift=3.0), abs=1e-6)
    assert abs(sigmas[-1] - own[-1]) > 1e-3


# --- the official loop -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["flowdps", "flowchef"])
def test_equals_the_official_loop_on_tiny_sd3(tiny_sd3, variant: str) -> None:
    """Tiny SD3 (random weights, float64), 4 steps, CFG w = 2, η = 0.5, Gaussian deblurring (the Aᵀ data term):
    the module equals the transcription to 1e-6 (the fp16 rounding of the gradient off on both sides: the grid's float32
    timesteps move a gradient entry across a float16 rounding boundary; the rounding is checked on the flow twin).
    Catches a wrong mix weight, re-noising, sign, K, CFG order or grid."""
    operator, y = problem(gaussian_deblur(kernel_size=5, kernel_sigma=1.0, sigma_y=SIGMA_Y), 32)
    sigmas = official_sigmas(3.0, 4)
    expected = official_loop(
        tiny_sd3, y, operator, operator.adjoint, generators()[0], sigmas, 2.0, 0.5, variant, half=False
    )
    solver = FlowDPS(num_steps=4, step_size=0.5, variant=variant, round_gradient_fp16=False)
    out = solver.solve(y, operator, tiny_sd3, ["a photo"], generators(), (1, 3, 32, 32))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_equals_the_official_loop_on_the_gaussian_flow_twin_with_the_sr_pinv() -> None:
    """The exact flow twin (decoder = identity), SR ×4 by the SVD operator: ``data_term: auto`` takes ``A⁺`` for SR
    as the code does, CFG w = 1 (the prompt branch only, as the code's ``pred_null_v = 0``), η = 15 (the official
    value: this prior is smooth), 6 steps. Catches the Aᵀ form where the code uses A⁺, and a missing fp16 rounding."""
    prior = GaussianFlowPrior(dtype="float64", unknown_prompt="null_mean")
    operator, y = problem(super_resolution(factor=4, impl="svd", name="sr4", sigma_y=SIGMA_Y), 16)
    sigmas = official_sigmas(3.0, 6)
    expected = official_loop(prior, y, operator, operator.pinv, generators()[0], sigmas, 1.0, 15.0)
    out = FlowDPS(num_steps=6, cfg_scale=1.0).solve(y, operator, prior, ["a photo"], generators(), (1, 3, 16, 16))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    unrounded = FlowDPS(num_steps=6, cfg_scale=1.0, round_gradient_fp16=False)
    assert (unrounded.solve(y, operator, prior, ["a photo"], generators(), (1, 3, 16, 16)) - out).abs().max() > 1e-5
    adjoint = FlowDPS(num_steps=6, cfg_scale=1.0, data_term="adjoint")
    assert (adjoint.solve(y, operator, prior, ["a photo"], generators(), (1, 3, 16, 16)) - out).abs().max() > 1e-3


# --- costs, batches, refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"cfg_scale": 1.0, "num_dc_steps": 2}, {"variant": "flowchef"}])
def test_network_passes_are_counted_and_priced(tiny_sd3, options) -> None:
    """The cost formula (``experiment.cost.flowdps_passes``) equals the prior's counter on a real solve: per step one
    CFG call (2 rows; 1 at w = 1), K differentiated decodes (FlowChef 1), one decode for the output, no backward
    pass through the transformer. Catches a formula that drifts from the loop."""
    from treg_exp.experiment import cost

    operator, y = problem(gaussian_deblur(kernel_size=5, kernel_sigma=1.0, sigma_y=SIGMA_Y), 32)
    options = {"num_steps": 3, **options}
    tiny_sd3.embed_text(["a photo", ""])  # cached: text passes are set-up
    tiny_sd3.reset_counter()
    FlowDPS(**options).solve(y, operator, tiny_sd3, ["a photo"], generators(), (1, 3, 32, 32))
    passes = cost.solver_passes({"_target_": "treg_exp.solvers.flowdps.FlowDPS", **options}, "flowdps", {})
    for name in cost.COUNT_NAMES:
        assert getattr(passes, name) == tiny_sd3.counter.get(name, 0), name
    assert tiny_sd3.counter.get("unet_grad_rows", 0) == 0


def test_batch_equals_single_images() -> None:
    """A batch of two equals the two images solved alone (per-image norms and noise). Catches a norm over the batch
    (the code's, harmless at its batch 1) or noise drawn for the batch at once."""
    prior = GaussianFlowPrior(dtype="float64")
    op = gaussian_deblur(kernel_size=5, kernel_sigma=1.0, padding="circular", sigma_y=SIGMA_Y)
    singles = [problem(op, 16, seed=b) for b in range(2)]
    y = torch.cat([y for _, y in singles])
    solver = FlowDPS(num_steps=5, cfg_scale=1.0, round_gradient_fp16=False)
    both = solver.solve(y, singles[0][0], prior, ["gray", "red"], [*generators(7), *generators(8)], (2, 3, 16, 16))
    for b, prompt in enumerate(["gray", "red"]):
        one = solver.solve(singles[b][1], singles[0][0], prior, [prompt], generators(7 + b), (1, 3, 16, 16))
        torch.testing.assert_close(both[b : b + 1], one, rtol=0, atol=1e-10)


def test_refusals_are_one_line() -> None:
    """ε priors (before weights load), the constant 4.0 shift on FLUX's resolution-dependent grid and
    ``data_term: pinv`` on an operator without a pseudo-inverse are refused in one line that says what to set."""
    from treg_exp.models.flux import RandomFluxPrior

    cases = [
        (lambda: FlowDPS().check_prior(GaussianPrior()), "rectified-flow"),
        (lambda: FlowDPS().plan(RandomFluxPrior().load("cpu"), (1, 3, 32, 32)), "solver.shift=null"),
        (lambda: FlowDPS(data_term="pinv").data_map(gaussian_deblur()), "task.impl=svd"),
        (lambda: FlowDPS(variant="psld"), "solver.variant"),
    ]
    for call, words in cases:
        with pytest.raises(UserError) as error:
            call()
        assert words in str(error.value) and "\n" not in str(error.value)
    FlowDPS(shift=None).plan(RandomFluxPrior().load("cpu"), (1, 3, 32, 32))


# --- end to end ----------------------------------------------------------------------------------------------------
def residual(operator, y, x) -> float:
    return float((operator(x.double()) - y).norm())


def test_fits_the_measurement_better_than_the_flow_sampler() -> None:
    """On the exact flow twin at the official defaults (28 steps, η = 15, the 4.0 grid): ``‖A x̂ − y‖`` of FlowDPS is
    well below that of the prior's own Euler sample from the same z_1. Catches a data step of the wrong sign."""
    prior = GaussianFlowPrior(dtype="float64")
    operator, y = problem(gaussian_deblur(kernel_size=9, kernel_sigma=2.0, sigma_y=SIGMA_Y), 32)
    out = FlowDPS(cfg_scale=1.0).solve(y, operator, prior, ["gray"], generators(), (1, 3, 32, 32))
    sample = DDIMSolver(num_steps=28, guidance_scale=1.0).solve(None, None, prior, ["gray"], generators(), out.shape)
    assert residual(operator, y, out) < 0.5 * residual(operator, y, sample)


@pytest.mark.parametrize("build", ["tiny_sd3", "tiny_flux"])
def test_runs_on_the_tiny_sd3_and_flux_builds(build: str, tiny_sd3) -> None:
    """On the tiny SD3 and FLUX builds (FLUX with ``shift: null``), 4 steps at a small η: finite output in [−1, 1]
    that fits y better than the same solver with η = 0 (the plain stochastic flow sampler). Catches a solver that
    ignores the measurement on a real transformer prior."""
    from treg_exp.models.flux import RandomFluxPrior

    prior = tiny_sd3 if build == "tiny_sd3" else RandomFluxPrior(variant="schnell", dtype="float64").load("cpu")
    shift = 4.0 if build == "tiny_sd3" else None
    operator, y = problem(gaussian_deblur(kernel_size=5, kernel_sigma=1.0, sigma_y=SIGMA_Y), 32)
    fits = []
    for eta in (2.0, 0.0):
        out = FlowDPS(num_steps=4, step_size=eta, shift=shift).solve(
            y, operator, prior, ["a photo"], generators(), (1, 3, 32, 32)
        )
        assert torch.isfinite(out).all()
        fits.append(residual(operator, y, out))
    assert fits[0] < fits[1]


def test_calibration_against_the_exact_posterior() -> None:
    """FlowDPS with its flow-twin settings (``conf/solver_model/flowdps_gaussian_flow.yaml``) on 2 images × 3 seeds at
    32 px of circular Gaussian deblurring: MSE over an exact posterior sample's ≤ 2 (the issue's bound) and the
    reconstructions' mean nearer the posterior mean than ``Aᵀy`` is. Catches a data step of the wrong weight."""
    from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, calibrate, make_problem

    operator = gaussian_deblur(kernel_size=15, kernel_sigma=2.0, padding="circular")
    prior = GaussianFlowPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    solver = FlowDPS(cfg_scale=1.0, round_gradient_fp16=False, step_size=30.0)
    result = calibrate(solver, make_problem(operator, 2, 32, 3, prior))
    assert result.mse_ratio <= 2.0
    assert result.bias2 < result.adjoint_bias2
