"""Rectified-flow pieces of the shared core: the shifted grids of SD3 and FLUX against diffusers'
FlowMatchEulerDiscreteScheduler, ``(ẑ0, ε̂)`` from a velocity, and the Euler / re-noising step."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from treg_exp.models.schedule import FlowSchedule
from treg_exp.solvers import core


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
    noise only. A sign or (1−σ) slip fails."""
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
        fresh = core.sampler_step(z0, eps, step, eta=1.0, noise=xi)
        torch.testing.assert_close(fresh, (1 - step.sigma_prev) * z0 + step.sigma_prev * xi)
        # the ᾱ twin has the flow step's signal-to-noise ratio
        assert step.alpha_bar / (1 - step.alpha_bar) == pytest.approx(((1 - step.sigma) / step.sigma) ** 2)
