"""The shared diffusion math against diffusers' DDIMScheduler, and the per-image random streams."""

import pytest
import torch
from diffusers import DDIMScheduler

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.base import NetworkCounter
from treg_exp.models.schedule import NoiseSchedule
from treg_exp.solvers import core

SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_diffusers_config(SD_SCHEDULER)


def test_alphas_cumprod_match_diffusers(schedule):
    reference = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod.double()
    torch.testing.assert_close(schedule.alphas_cumprod, reference, rtol=0, atol=0)
    assert schedule.final_alpha_cumprod == pytest.approx(float(reference[0]))


@pytest.mark.parametrize("num_steps", [10, 50, 200, 1000 - 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_timesteps_match_diffusers(schedule, num_steps, spacing):
    config = {**SD_SCHEDULER, "timestep_spacing": spacing}
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(num_steps)
    ours = core.sampling_timesteps(NoiseSchedule.from_diffusers_config(config), num_steps)
    assert ours == scheduler.timesteps.tolist()


def test_treg_grid_and_shifted_alphas(schedule):
    plan = core.ddim_plan(schedule, 200, alpha_index_shift=1)
    assert [s.t for s in plan[:3]] == [996, 991, 986] and plan[-1].t == 1
    abar = schedule.alphas_cumprod
    # official indexing: alphas_cumprod with 1.0 prepended, so t pairs with ᾱ_{t−1}
    assert plan[0].alpha_bar == float(abar[995]) and plan[0].alpha_bar_prev == float(abar[990])
    # last step: both equal ᾱ_0 (final_alpha_cumprod with set_alpha_to_one=False)
    assert plan[-1].alpha_bar == plan[-1].alpha_bar_prev == float(abar[0])
    textbook = core.ddim_plan(schedule, 200, alpha_index_shift=0)
    assert textbook[0].alpha_bar == float(abar[996]) and textbook[-1].alpha_bar == float(abar[1])
    assert textbook[-1].alpha_bar_prev == float(abar[0])


def test_gaussian_grid_reaches_zero():
    schedule = NoiseSchedule.scaled_linear(steps_offset=0)
    assert core.sampling_timesteps(schedule, 1000) == list(range(999, -1, -1))


def test_offset_past_the_table_is_an_error(schedule):
    with pytest.raises(UserError, match="outside"):
        core.sampling_timesteps(schedule, 1000)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(schedule, eta):
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    scheduler.set_timesteps(20)
    g = torch.Generator().manual_seed(0)
    z_t, eps, xi = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for step in core.ddim_plan(schedule, 20)[::7]:
        expected = scheduler.step(eps, step.t, z_t, eta=eta, variance_noise=xi).prev_sample
        z0 = core.tweedie(z_t, eps, step.alpha_bar)
        ours = core.ddim_step(z0, eps, step.alpha_bar, step.alpha_bar_prev, eta=eta, noise=xi)
        # diffusers keeps ᾱ in float32; ours are the same numbers in float64
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


class AffinePrior:
    """ε(z, t, c) = z·c[:, :1] + c[:, 1:2]: enough to check which branches CFG evaluates."""

    def __init__(self):
        self.counter = NetworkCounter()

    def predict(self, z_t, t, cond):
        self.counter.add("unet", z_t.shape[0])
        return z_t * cond[:, :1, None, None] + cond[:, 1:2, None, None]


@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0])
def test_guided_prediction_formula_and_calls(scale):
    prior = AffinePrior()
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    cond, uncond = torch.rand(3, 2, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64)
    eps = core.guided_prediction(prior, z, 10, cond, uncond, scale)
    e_c, e_u = AffinePrior().predict(z, 10, cond), AffinePrior().predict(z, 10, uncond)
    torch.testing.assert_close(eps, e_u + scale * (e_c - e_u))
    paired = scale not in (0.0, 1.0)
    assert prior.counter["unet_calls"] == 1
    assert prior.counter["unet_rows"] == (6 if paired else 3)


def test_streams_are_per_image_and_reproducible():
    ids = ["a", "b", "c"]
    batch = seeding.randn((2, 3), seeding.batch_generators(7, ids, seeding.MEASUREMENT))
    singles = [seeding.randn((2, 3), seeding.batch_generators(7, [i], seeding.MEASUREMENT)) for i in ids]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=0, atol=0)
    solver = seeding.randn((2, 3), seeding.batch_generators(7, ids, seeding.SOLVER))
    other_seed = seeding.randn((2, 3), seeding.batch_generators(8, ids, seeding.MEASUREMENT))
    assert not torch.allclose(batch, solver) and not torch.allclose(batch, other_seed)
    # float64 draws are the float32 numbers widened, so float64 tests see the same noise as float32 runs
    wide = seeding.randn((2, 3), seeding.batch_generators(7, ids, seeding.MEASUREMENT), dtype=torch.float64)
    torch.testing.assert_close(wide, batch.double(), rtol=0, atol=0)
