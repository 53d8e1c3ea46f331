"""Rectified-flow pieces of the shared core: the shifted grids of SD3 and FLUX against diffusers'
FlowMatchEulerDiscreteScheduler, ``(ẑ0, ε̂)`` from a velocity, and the Euler / re-noising step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from treg_exp.common.errors import UserError
from treg_exp.models.schedule import FlowSchedule
from treg_exp.solvers import core

CONF = Path(__file__).parents[1] / "conf"


def compose(overrides: list[str]):
    """The run config for ``overrides``, as ``python run.py <overrides>`` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class VelocityPrior:
    """A stand-in flow prior: ``predict`` returns a fixed velocity field (what split_prediction must convert)."""

    prediction_type = "flow"

    def __init__(self, velocity: torch.Tensor) -> None:
        self.velocity = velocity

    def predict(self, z_t, t, cond):
        return self.velocity


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_sd3_shifted_grid_matches_diffusers(steps: int) -> None:
    """SD3's constant shift 3.0 on diffusers' default spacing (N points from 1 to the shifted smallest training σ,
    shifted again): a wrong shift formula, spacing or end point fails."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    plan = core.flow_plan(FlowSchedule(shift=3.0), steps)
    ours = torch.tensor([s.sigma for s in plan] + [plan[-1].sigma_prev], dtype=torch.float64)
    torch.testing.assert_close(ours, scheduler.sigmas.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor([s.t for s in plan]), scheduler.timesteps.double(), rtol=0, atol=1e-3, check_dtype=False
    )
    assert plan[0].sigma == 1.0 and plan[-1].t_prev == -1 and plan[-1].sigma_prev == 0.0


@pytest.mark.parametrize("seq_len", [256, 1024, 4096])
def test_flux_resolution_shift_matches_diffusers(seq_len: int) -> None:
    """FLUX's μ-shift: FluxPipeline passes ``linspace(1, 1/N, N)`` and μ = calculate_shift(token count); a wrong μ
    line or time-shift formula fails (and the shift grows with the resolution)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    steps = 8
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).tolist()
    scheduler.set_timesteps(sigmas=sigmas, mu=calculate_shift(seq_len))
    schedule = FlowSchedule(use_dynamic_shifting=True, spacing="uniform")
    plan = core.flow_plan(schedule, steps, image_seq_len=seq_len)
    torch.testing.assert_close(
        torch.tensor([s.sigma for s in plan], dtype=torch.float64), scheduler.sigmas[:-1].double(), rtol=0, atol=1e-6
    )
    assert schedule.mu(seq_len) == pytest.approx(calculate_shift(seq_len), abs=1e-12)


def test_flow_split_and_euler_step() -> None:
    """``ẑ0 = z − σv`` and ``ε̂ = z + (1−σ)v`` re-compose ``z = (1−σ)ẑ0 + σε̂`` with ``ε̂ − ẑ0 = v``; the
    deterministic step equals Euler's ``z + (σ′−σ)v`` and diffusers' scheduler step; η = 1 re-noises with fresh
    noise only (η > 1 is one line). A sign or (1−σ) slip fails."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    xi = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    plan = core.flow_plan(FlowSchedule(shift=3.0), 5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(5)
    for step in plan:
        z0, eps = core.split_prediction(VelocityPrior(v), z, v, step)
        torch.testing.assert_close((1 - step.sigma) * z0 + step.sigma * eps, z)
        torch.testing.assert_close(eps - z0, v)
        euler = z + (step.sigma_prev - step.sigma) * v
        torch.testing.assert_close(core.sampler_step(z0, eps, step), euler)
        scheduler._step_index = step.index
        reference = scheduler.step(v.float(), scheduler.timesteps[step.index], z.float()).prev_sample
        torch.testing.assert_close(core.sampler_step(z0, eps, step).float(), reference, rtol=0, atol=1e-5)
        with pytest.raises(UserError, match="fraction of fresh noise"):
            core.sampler_step(z0, eps, step, eta=1.5, noise=xi)
        fresh = core.sampler_step(z0, eps, step, eta=1.0, noise=xi)
        torch.testing.assert_close(fresh, (1 - step.sigma_prev) * z0 + step.sigma_prev * xi)
        # the ᾱ twin has the flow step's signal-to-noise ratio
        assert step.alpha_bar / (1 - step.alpha_bar) == pytest.approx(((1 - step.sigma) / step.sigma) ** 2)


# --- model=gaussian_flow: the exact Gaussian prior on the flow path ------------------------------------------------
@pytest.mark.parametrize("sigma", [1.0, 0.7, 0.2, 0.01])
def test_gaussian_flow_velocity_equals_dense_definition(sigma: float) -> None:
    """``v = E[ε − x0 | x_σ]`` by dense linear algebra on ``x_σ = (1−σ)x0 + σε``, x0 ~ N(μ, Σ):
    ``E[x0|x] = μ + (1−σ)Σ((1−σ)²Σ + σ²I)⁻¹(x − (1−σ)μ)`` and ``v = (x − E[x0|x])/σ``. A wrong filter, a sign, or
    a (1−σ) instead of (1−σ)² fails; ``eps`` is ``E[ε|x] = x + (1−σ)v``."""
    from tests.test_gaussian_prior import dense_covariance
    from treg_exp.models.gaussian import GaussianFlowPrior

    prior = GaussianFlowPrior(dtype="float64")
    h, w = 12, 9
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    cond = prior.embed_text(["blue", "white"])
    cov = dense_covariance(h, w)
    mu = cond[:, :, None] * torch.ones(h * w, dtype=torch.float64)
    a = 1.0 - sigma
    centred = (z.reshape(2, 3, h * w) - a * mu).reshape(-1, h * w).T
    gain = a * cov @ torch.linalg.solve(a**2 * cov + sigma**2 * torch.eye(h * w, dtype=torch.float64), centred)
    x0 = mu + gain.T.reshape(2, 3, h * w)
    velocity = ((z.reshape(2, 3, h * w) - x0) / sigma).reshape(2, 3, h, w)
    t = sigma * prior.schedule.num_train_timesteps
    torch.testing.assert_close(prior.predict(z, t, cond), velocity, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(prior.eps(z, t, cond), z + a * velocity, rtol=1e-9, atol=1e-9)
    assert prior.prediction_type == "flow" and prior.counter["unet_rows"] == 4


def test_gaussian_flow_euler_sampler_reproduces_the_prior_spectrum() -> None:
    """solver=ddim on the flow twin (Euler on the exact velocity, SD3's shift 3, 100 steps) from N(0, I) draws the
    prior: per radial bin the power is within 4 standard errors of what the sampler's per-frequency linear recursion
    predicts from the definition, which is within 15 % of P (Euler error at 100 steps). A wrong flow step or
    (ẑ0, ε̂) split (e.g. Tweedie applied to a velocity) gives the wrong spectrum."""
    from treg_exp.models.gaussian import GaussianFlowPrior
    from treg_exp.solvers.ddim import DDIMSolver

    class Unclamped(GaussianFlowPrior):
        def decode(self, z):
            return super().decode(z) / 4.0

    from tests.test_gaussian_prior import reference_spectrum

    n, size = 256, 16
    prior = Unclamped(dtype="float64")
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x = 4.0 * DDIMSolver(num_steps=100, guidance_scale=0.0).solve(None, None, prior, [""] * n, gens, (n, 3, size, size))
    power = torch.fft.fft2(x.double(), norm="ortho").abs().pow(2).mean(dim=(0, 1))
    spectrum = reference_spectrum(size, size)
    k = torch.fft.fftfreq(size, dtype=torch.float64) * size
    bins = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round().clamp_min(1)
    # Per frequency the sampler is linear: v = g·x with g = (σ − (1−σ)P)/((1−σ)²P + σ²), the Euler step multiplies
    # by 1 + (σ′−σ)·g and the output ẑ0 = (1 − σ·g)·x; this predicts the output's variance from the definition.
    variance, output = torch.ones_like(spectrum), None
    for step in core.flow_plan(prior.schedule, 100):
        s = step.sigma
        g = (s - (1 - s) * spectrum) / ((1 - s) ** 2 * spectrum + s**2)
        output = (1 - s * g) ** 2 * variance
        variance = (1 + (step.sigma_prev - s) * g) ** 2 * variance
    for b in bins.unique():
        inside = bins == b
        standard_error = (2 * spectrum[inside].pow(2).sum() / (3 * n)).sqrt() / spectrum[inside].sum()
        ratio = float(power[inside].mean() / spectrum[inside].mean())
        predicted = float(output[inside].mean() / spectrum[inside].mean())
        assert abs(predicted - 1) < 0.15, f"bin {int(b)}: predicted ratio {predicted:.3f}"
        assert abs(ratio / predicted - 1) < 4 * standard_error, f"bin {int(b)}: {ratio:.4f} vs {predicted:.4f}"


@pytest.mark.parametrize("name", ["resample", "dds", "diffpir", "red", "dps"])
def test_methods_not_defined_on_flow_priors_refuse_in_one_line(name: str) -> None:
    """ReSample, DDS, DiffPIR, RED and the DDPM-ancestral DPS (its default sampler) are written in ᾱ: on a flow prior
    each stops with one line naming the reason, before any network pass."""
    from hydra.utils import instantiate

    from treg_exp.models.gaussian import GaussianFlowPrior

    solver = instantiate(compose([f"solver={name}"]).solver)
    prior = GaussianFlowPrior()
    with pytest.raises(UserError, match="not defined for rectified-flow priors") as error:
        solver.check_prior(prior)
    assert "\n" not in str(error.value)
    assert prior.counter["unet_calls"] == 0


@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
@pytest.mark.parametrize("name", ["treg", "ldps", "gml_dps", "psld", "dps", "p2l"])
def test_flow_solvers_calibrate_on_the_flow_twin(name: str, task: str) -> None:
    """Each solver defined on flow priors, at its ``model=gaussian_flow`` settings, scored against the exact
    posterior (4 draws at 32 px, 3 seeds; 15×15 σ = 2 circular blur, or 30–70 % random inpainting): its mean is much
    nearer the exact posterior mean than ``Aᵀy`` (``bias2 < 0.5·bias2(Aᵀy)``: a measurement ignored, a data step
    of the wrong sign, or a flow step that does not sample the prior fails) and it keeps its noise
    (``spread_ratio > 0.3``)."""
    from hydra.utils import instantiate

    from treg_exp.reporting.calibration import calibrate, make_problem

    overrides = [f"task={task}"] + (
        ["task.kernel_size=15", "task.kernel_sigma=2.0", "task.padding=circular"] if task == "gauss_deblur" else []
    )
    cfg = compose(["model=gaussian_flow", f"solver={name}", *overrides])
    cfg.model.dtype, cfg.model.pixel_std = "float64", 0.3
    prior = instantiate(cfg.model).load("cpu")
    problem = make_problem(instantiate(cfg.task), num_images=4, resolution=32, seeds=3, prior=prior)
    result = calibrate(instantiate(cfg.solver), problem)
    print(f"{name} {task}: {result}")
    assert result.bias2 < 0.5 * result.adjoint_bias2, result
    assert result.spread_ratio > 0.3, result
