"""The DPS family (``ldps``, ``gml_dps``, ``psld``, ``ldir``, ``dps``): the shared DDPM step and 1000-step grid,
batching and determinism on the tiny SD model, network passes per image, the gradient against finite differences
of the loss written from the papers' formulas, and the calibration against the exact posterior on the Gaussian
prior, with bounds that the typical wrong updates break.

Sizes are kept small for a 2-core CPU: the tiny model at 32 px (latents 4×4×4) with 2 steps; the Gaussian prior
at 32 px with 200 steps, 2 images and 3 seeds, all seeds of a solver in one batch (a batch of B is B runs of one,
tested here, so this is :func:`treg_exp.calibration.calibrate`'s number).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp import seeding
from treg_exp.calibration import CALIBRATION_PIXEL_STD, Problem, make_problem, score, solver_seed
from treg_exp.errors import UserError
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.models.schedule import NoiseSchedule
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.operators.blur import gaussian_deblur
from treg_exp.operators.inpaint import Inpainting
from treg_exp.operators.sr import super_resolution
from treg_exp.solvers import core
from treg_exp.solvers.dps import DPS
from treg_exp.solvers.gml_dps import GMLDPS
from treg_exp.solvers.ldir import LDIR
from treg_exp.solvers.ldps import LDPS
from treg_exp.solvers.psld import PSLD, official_transpose

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = {"ldps": LDPS, "gml_dps": GMLDPS, "psld": PSLD, "ldir": LDIR, "dps": DPS}


def _gens(batch: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


# --- the shared pieces in core ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_step_matches_diffusers(variance: str) -> None:
    """``core.ddpm_step`` on a 50-step grid equals diffusers' ``DDPMScheduler.step`` (its ``fixed_small`` /
    ``fixed_large``), noise included: catches a wrong coefficient (e.g. α for √α) or variance."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        variance_type=f"fixed_{variance}",
    )  # fmt: skip
    scheduler.set_timesteps(50)
    schedule = NoiseSchedule.scaled_linear(steps_offset=0)
    g = torch.Generator().manual_seed(0)
    z_t, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in [int(v) for v in scheduler.timesteps][::12] + [0]:
        abar = float(schedule.alphas_cumprod[t])
        abar_prev = float(schedule.alphas_cumprod[t - 20]) if t >= 20 else 1.0
        expected = scheduler.step(eps, t, z_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(z_t.shape, generator=torch.Generator().manual_seed(t))
        ours = core.ddpm_step(z_t, core.tweedie(z_t, eps, abar), abar, abar_prev, noise, variance)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_ddpm_small_variance_is_ddim_eta_one() -> None:
    """DDPM with σ² = β̃ is DDIM with η = 1 (an identity of the two formulas, float64)."""
    g = torch.Generator().manual_seed(1)
    z_t, eps, xi = (torch.randn(3, 4, 4, dtype=torch.float64, generator=g) for _ in range(3))
    for abar, abar_prev in [(0.1, 0.12), (0.5, 0.6), (0.97, 0.999)]:
        z0 = core.tweedie(z_t, eps, abar)
        ddpm = core.ddpm_step(z_t, z0, abar, abar_prev, xi, "small")
        ddim = core.ddim_step(z0, eps, abar, abar_prev, eta=1.0, noise=xi)
        torch.testing.assert_close(ddpm, ddim, rtol=0, atol=1e-12)


def test_official_1000_step_grid() -> None:
    """SD's 1000-step grid is t = 1000 … 1 with ᾱ_999 … ᾱ_0 under the official ᾱ_{t−1} pairing (the PSLD code's
    ``make_ddim_sampling_parameters``); with the textbook pairing t = 1000 has no ᾱ and stays an error."""
    schedule = NoiseSchedule.scaled_linear()  # steps_offset 1
    plan = core.ddim_plan(schedule, 1000, alpha_index_shift=1)
    assert [s.t for s in plan[:2]] == [1000, 999] and plan[-1].t == 1
    assert plan[0].alpha_bar == float(schedule.alphas_cumprod[999])
    assert plan[-1].alpha_bar == plan[-1].alpha_bar_prev == float(schedule.alphas_cumprod[0])
    with pytest.raises(UserError, match="outside"):
        core.ddim_plan(schedule, 1000, alpha_index_shift=0)


# --- tiny SD model: batching, determinism, cost -----------------------------------------------------------------
TINY_SHAPE = (2, 3, 32, 32)
#: per-solver options for the tiny runs: LDPS with η > 0 so that DDIM's ξ is drawn too
TINY_OPTIONS = {"ldps": {"eta": 0.5}}


@pytest.fixture(scope="module")
def tiny() -> TinyStableDiffusionPrior:
    return TinyStableDiffusionPrior(dtype="float32").load("cpu")


def _task(name: str):
    return instantiate(OmegaConf.load(ROOT / f"conf/task/{name}.yaml"))


def _tiny_problem(task: str):
    """Two smooth images, the task's operator (parameters drawn per image) and its measurements."""
    lin = torch.linspace(-1.0, 1.0, TINY_SHAPE[-1])
    x = torch.stack(
        [torch.stack([0.7 * torch.sin(3 * lin[:, None] + b) * lin[None, :] + 0.1 * c for c in range(3)]) for b in (0, 1)]
    )
    gens = _gens(2, seed=7)
    operator = _task(task).draw(gens, x.shape)
    return x, operator, operator.measure(x, gens)


def _one(operator, b: int):
    params = operator.params()
    return operator.with_params({k: v[b : b + 1] for k, v in params.items()}) if params else operator


def _solver(name: str, **options):
    return SOLVERS[name](**{"num_steps": 2, **TINY_OPTIONS.get(name, {}), **options})


@pytest.mark.parametrize("task", ["gauss_deblur", "sr8", "inpaint_freeform"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_tiny_batch_of_two_is_two_runs(tiny, name: str, task: str) -> None:
    """Image b of a batch of 2 equals a run of image b alone (own prompt, generator, norm, Adam history, mask):
    catches a batch-wide norm (the official codes' ``torch.linalg.norm`` of the batch) or shared draws."""
    x, operator, y = _tiny_problem(task)
    solver = _solver(name)
    prompts = ["a photo", "the thing"]
    batched = solver.solve(y, operator, tiny, prompts, _gens(2, seed=3), x.shape)
    assert batched.shape == x.shape and torch.isfinite(batched).all()
    single = solver.solve(y[1:], _one(operator, 1), tiny, prompts[1:], _gens(1, seed=4), (1, *x.shape[1:]))
    assert (batched[1:] - single).abs().max().item() < 1e-5
    assert (batched[0] - batched[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", list(SOLVERS))
def test_tiny_same_seed_same_bits(tiny, name: str) -> None:
    x, operator, y = _tiny_problem("gauss_deblur")
    solver = _solver(name)
    shape = (1, *x.shape[1:])
    first, second, other = (
        solver.solve(y[:1], _one(operator, 0), tiny, ["a"], _gens(1, seed=s), shape) for s in (5, 5, 6)
    )
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def _count_backward(prior, monkeypatch) -> dict[str, int]:
    """Count the backward passes through the outputs of ``prior.eps``, ``decode`` and ``encode``."""
    backward = {"unet": 0, "decode": 0, "encode": 0}
    for method, key in (("eps", "unet"), ("decode", "decode"), ("encode", "encode")):
        original = getattr(prior, method)

        def wrapped(*args, _original=original, _key=key, **kwargs):
            out = _original(*args, **kwargs)
            if out.requires_grad:
                out.register_hook(lambda grad, _key=_key: backward.__setitem__(_key, backward[_key] + 1))
            return out

        monkeypatch.setattr(prior, method, wrapped)
    return backward


@pytest.mark.parametrize("name", list(SOLVERS))
def test_tiny_network_passes_per_image(tiny, name: str, monkeypatch) -> None:
    """Per image and step: one UNet row and one decode, each with a backward pass; GML-DPS and PSLD an encode with a
    backward pass too; plus one decode of the final latent. Catches a missing backward path (e.g. the gluing term
    detached from the encoder) or an extra network pass."""
    steps = 3
    x, operator, y = _tiny_problem("gauss_deblur")
    backward = _count_backward(tiny, monkeypatch)
    tiny.reset_counter()
    _solver(name, num_steps=steps).solve(y, operator, tiny, ["a", "b"], _gens(2), x.shape)
    counts, glues = tiny.counter, name in ("gml_dps", "psld")
    assert counts["unet_calls"] == steps and counts["unet_rows"] == 2 * steps
    assert counts["decode_calls"] == steps + 1 and counts["decode_rows"] == 2 * (steps + 1)
    assert counts["encode_rows"] == (2 * steps if glues else 0)
    assert backward == {"unet": steps, "decode": steps, "encode": steps if glues else 0}


def test_tiny_checkpointing_on_by_default(tiny) -> None:
    """The family's default switches the prior's UNet/VAE gradient checkpointing on (same numbers, less memory)."""
    x, operator, y = _tiny_problem("gauss_deblur")
    try:
        tiny.set_gradient_checkpointing(False)
        plain = LDPS(num_steps=2, gradient_checkpointing=None).solve(y, operator, tiny, ["a", "b"], _gens(2), x.shape)
        assert not tiny.unet.is_gradient_checkpointing
        checkpointed = LDPS(num_steps=2).solve(y, operator, tiny, ["a", "b"], _gens(2), x.shape)
        assert tiny.unet.is_gradient_checkpointing
    finally:
        tiny.set_gradient_checkpointing(False)
    assert (plain - checkpointed).abs().max().item() < 1e-5


# --- the gradient: finite differences of the papers' losses (Gaussian prior, float64) --------------------------
GRAD_SHAPE = (2, 3, 16, 16)


def _paper_loss(name: str, options: dict, operator, y: torch.Tensor):
    """The per-image loss of each method written from its formula (E = D = identity on this prior), ``x̂0 ↦ [B]``."""

    def norm(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).norm(dim=1)

    if name == "psld" and options.get("gluing_transpose") == "adjoint":
        return lambda x0: norm(y - operator(x0)) + 0.1 * norm(operator.adjoint(y) + x0 - operator.adjoint(operator(x0)) - x0)
    if name == "psld":  # the DPS code's transpose of a blur is the identity
        return lambda x0: norm(y - operator(x0)) + 0.1 * norm(y + x0 - operator(x0) - x0)
    if name == "dps":  # ζ = 0.3 on the clamped x̂0
        return lambda x0: 0.3 * norm(y - operator(x0.clamp(-1.0, 1.0)))
    if name == "ldir":  # the gradient before the Adam history
        return lambda x0: norm(y - operator(x0))
    return lambda x0: norm(y - operator(x0))  # LDPS; GML-DPS: ‖E(D(ẑ0)) − ẑ0‖ = 0


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ldps", {}),
        ("gml_dps", {"renoise_residual": False}),
        ("psld", {"renoise_residual": False, "gluing_transpose": "adjoint"}),
        ("psld", {"renoise_residual": False}),
        ("ldir", {}),
        ("dps", {}),
    ],
    ids=["ldps", "gml_dps", "psld_adjoint", "psld_official", "ldir", "dps"],
)
def test_gradient_is_finite_difference_of_the_loss(name: str, options: dict, monkeypatch) -> None:
    """The gradient a solver steps along at t = 500 is the derivative w.r.t. ``z_t`` of its loss through ε, Tweedie
    and the (clamped) x̂0, checked along random directions against central differences of the loss written here from
    the formula: catches a gradient w.r.t. ẑ0 instead of z_t, a detached term, or a wrong loss formula."""
    prior = GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    operator = gaussian_deblur(kernel_size=5, kernel_sigma=1.0)
    x = prior.sample(prior.embed_text(["", ""]), _gens(2, seed=1), 16, 16)
    y = operator.measure(x, _gens(2, seed=2))
    solver = SOLVERS[name](num_steps=2, alpha_index_shift=0, **options)
    grads: list[torch.Tensor] = []
    direction = solver.direction
    monkeypatch.setattr(solver, "direction", lambda grad, state: grads.append(grad) or direction(grad, state))
    solver.solve(y, operator, prior, ["", ""], _gens(2, seed=3), GRAD_SHAPE)

    step = core.ddim_plan(prior.schedule, 2)[0]
    assert step.t == 500
    z_t = prior.initial_noise(GRAD_SHAPE, _gens(2, seed=3), dtype=torch.float64, alpha_bar=step.alpha_bar)
    null = prior.null_embedding(2)
    loss = _paper_loss(name, options, operator, y)

    def total(z: torch.Tensor) -> float:
        eps = prior.eps(z, step.t, null)
        z0 = (z - (1 - step.alpha_bar) ** 0.5 * eps) / step.alpha_bar**0.5
        return float(loss(z0).sum())

    h = 1e-5
    for k in range(3):
        v = torch.randn(GRAD_SHAPE, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        finite_difference = (total(z_t + h * v) - total(z_t - h * v)) / (2 * h)
        assert float((grads[0] * v).sum()) == pytest.approx(finite_difference, rel=1e-6)


# --- calibration against the exact posterior (Gaussian prior) --------------------------------------------------
CAL_RES, CAL_IMAGES, CAL_SEEDS, CAL_STEPS = 32, 2, 3, 200


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    """``gauss_deblur`` (15×15, σ = 2, circular: the calibration benchmark's) and ``inpaint_random`` at 32 px."""
    prior = GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    operators = {
        "gauss_deblur": gaussian_deblur(kernel_size=15, kernel_sigma=2.0, padding="circular"),
        "inpaint_random": Inpainting(mask_type="random", drop_ratio=[0.3, 0.7]),
    }
    return {
        task: make_problem(op, num_images=CAL_IMAGES, resolution=CAL_RES, seeds=CAL_SEEDS, prior=prior)
        for task, op in operators.items()
    }


def calibrate_batched(solver, problem: Problem):
    """:func:`treg_exp.calibration.calibrate` with all K seeds in one batch of K·N (the same per-image streams)."""
    k, n = problem.seeds, len(problem.ids)
    params = problem.operator.params()
    operator = problem.operator.with_params({key: v.repeat(k, *[1] * (v.dim() - 1)) for key, v in params.items()})
    y = problem.y.repeat(k, *[1] * (problem.y.dim() - 1))
    gens = [g for s in range(k) for g in seeding.batch_generators(solver_seed(s), problem.ids, seeding.SOLVER)]
    out = solver.solve(y, operator, problem.prior, problem.prompts * k, gens, (k * n, *problem.x.shape[1:]))
    return score(out.double().view(k, n, *problem.x.shape[1:]), problem)
