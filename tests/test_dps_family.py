"""The DPS family (``ldps``, ``gml_dps``, ``psld``, ``ldir``, ``dps``): the shared DDPM step and 1000-step grid,
batching and determinism on the tiny SD model, network passes per image, the gradient against finite differences
of the loss written from the papers' formulas, and the calibration against the exact posterior on the Gaussian
prior, with bounds that the typical wrong updates break.

Sizes are kept small for a 2-core CPU: the tiny model at 32 px (latents 4×4×4) with 2 steps; the Gaussian prior
at 32 px with 200 steps, 2 images and 3 seeds, all seeds of a solver in one batch (a batch of B is B runs of one,
tested here, so this is :func:`treg_exp.reporting.calibration.calibrate`'s number).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.models.schedule import NoiseSchedule
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.operators.blur import gaussian_deblur
from treg_exp.operators.inpaint import Inpainting
from treg_exp.operators.sr import super_resolution
from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, Problem, make_problem, score, solver_seed
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
        [
            torch.stack([0.7 * torch.sin(3 * lin[:, None] + b) * lin[None, :] + 0.1 * c for c in range(3)])
            for b in (0, 1)
        ]
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
    detached from the encoder) or an extra network pass; and the counter's ``<network>_grad_rows`` (what the cost
    estimate prices backward passes by) must be exactly the differentiated rows: a graph kept on a pass nobody
    differentiates (the final decode) would hold its activations and be priced as a backward pass."""
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
    assert {k: counts.get(f"{k}_grad_rows", 0) for k in backward} == {k: 2 * n for k, n in backward.items()}


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
        return lambda x0: (
            norm(y - operator(x0)) + 0.1 * norm(operator.adjoint(y) + x0 - operator.adjoint(operator(x0)) - x0)
        )
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
        ("dps", {"grid": "leading"}),  # a step at t = 500 (the respaced 2-step grid is 999, 0)
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
    """:func:`treg_exp.reporting.calibration.calibrate` with all K seeds in one batch of K·N (same streams)."""
    k, n = problem.seeds, len(problem.ids)
    params = problem.operator.params()
    operator = problem.operator.with_params({key: v.repeat(k, *[1] * (v.dim() - 1)) for key, v in params.items()})
    y = problem.y.repeat(k, *[1] * (problem.y.dim() - 1))
    gens = [g for s in range(k) for g in seeding.batch_generators(solver_seed(s), problem.ids, seeding.SOLVER)]
    out = solver.solve(y, operator, problem.prior, problem.prompts * k, gens, (k * n, *problem.x.shape[1:]))
    return score(out.double().view(k, n, *problem.x.shape[1:]), problem)


#: test-local settings at 32 px, 200 steps: the norm-gradient step sizes are half of conf/solver_model's 64 px ones
#: (∇‖y − Ax‖ has unit size spread over 4× fewer pixels); LDIR's Adam step is per element, resolution-free.
CAL_SOLVERS = {
    "ldps": lambda **kw: LDPS(step_size=2.0, **kw),
    "gml_dps": lambda **kw: GMLDPS(step_size=2.0, **kw),
    "psld": lambda **kw: PSLD(step_size=2.0, **kw),
    "ldir": lambda **kw: LDIR(step_size=0.05, **kw),
    "dps": lambda **kw: DPS(step_size=3.0, **kw),
}
CAL_COMMON = {"num_steps": CAL_STEPS, "alpha_index_shift": 0}


def assert_calibrated(numbers) -> None:
    """The bounds every solver of the family meets and each typical wrong update breaks (measured, 32 px):

    - ``mse_ratio < 1.5`` (measured 0.88–1.12; an exact sampler 1): a sign error (≈ 20), the squared norm (≈ 20),
      Adam without √v̂ (≈ 8);
    - ``bias2 < min(0.5, 0.5·Aᵀy's)`` (measured 0.02–0.30; Aᵀy 0.82 deblur, 1.48 inpainting): the same three
      (≥ 3.7), i.e. beating ``Aᵀy`` by a factor of two;
    - ``0.6 < spread_ratio < 1.5`` (measured 0.80–1.07): the squared norm in LDPS collapses every seed onto one
      answer (0.000), a missing √ on DDIM's ``ᾱ_prev`` does too (0.08), a sign error spreads them (≈ 5.5).

    The DDPM step's coefficients move these numbers by less than their noise (a missing √ on ``ᾱ_prev`` there reads
    0.168 vs 0.163): ``test_ddpm_step_matches_diffusers`` catches those.
    """
    assert numbers.mse_ratio < 1.5, numbers
    assert numbers.bias2 < min(0.5, 0.5 * numbers.adjoint_bias2), numbers
    assert 0.6 < numbers.spread_ratio < 1.5, numbers


@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
@pytest.mark.parametrize("name", list(CAL_SOLVERS))
def test_gaussian_prior_calibration(problems, name: str, task: str) -> None:
    """Each solver against the exact posterior: MSE near an exact sample's, spread near the posterior's, squared bias
    of the mean a fraction of Aᵀy's (bounds and what breaks them: :func:`assert_calibrated`)."""
    numbers = calibrate_batched(CAL_SOLVERS[name](**CAL_COMMON), problems[task])
    print(f"{name} {task}: {numbers}")
    assert_calibrated(numbers)


class _SignError(LDPS):
    def direction(self, grad, state):
        return -grad


class _SquaredNorm(LDPS):
    def loss(self, z0, x0, ctx):
        return self.step_size * self.measurement_norm(x0, ctx) ** 2


class _AdamWithoutSqrt(LDIR):
    def direction(self, grad, state):
        history = state.setdefault("adam", core.AdamHistory(self.beta1, self.beta2, self.adam_eps))
        history.direction(grad)
        m_hat = history.m / (1 - history.beta1**history.count)
        v_hat = history.v / (1 - history.beta2**history.count)
        return self.step_size * m_hat / (v_hat + history.eps)


def _ddim_without_sqrt(z0, eps, alpha_bar, alpha_bar_prev, eta=0.0, noise=None):
    return alpha_bar_prev * z0 + (1.0 - alpha_bar_prev) ** 0.5 * eps


@pytest.mark.parametrize("mutant", ["sign", "squared_norm", "adam_without_sqrt", "ddim_without_sqrt"])
def test_wrong_updates_break_the_bounds(problems, mutant: str, monkeypatch) -> None:
    """The bounds of :func:`assert_calibrated` fail for the wrong updates they are meant to catch (deblurring)."""
    make = {
        "sign": lambda: _SignError(step_size=2.0, **CAL_COMMON),
        "squared_norm": lambda: _SquaredNorm(step_size=2.0, **CAL_COMMON),
        "adam_without_sqrt": lambda: _AdamWithoutSqrt(step_size=0.05, **CAL_COMMON),
        "ddim_without_sqrt": lambda: LDPS(step_size=2.0, **CAL_COMMON),
    }[mutant]
    if mutant == "ddim_without_sqrt":
        monkeypatch.setattr(core, "ddim_step", _ddim_without_sqrt)
    numbers = calibrate_batched(make(), problems["gauss_deblur"])
    with pytest.raises(AssertionError):
        assert_calibrated(numbers)


# --- options, quirks and configs ----------------------------------------------------------------------------------
def test_official_transpose_is_the_dps_codes() -> None:
    """PSLD's official ``Aᵀ``: the identity on image-shaped measurements, nearest upsampling for SR, which for a
    box (average-pooling) SR is f²·Aᵀ, the true adjoint scaled (an independent relation)."""
    v = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sr = super_resolution(factor=4, kernel="box").draw([], (2, 3, 32, 32))
    torch.testing.assert_close(official_transpose(v, torch.Size((2, 3, 32, 32))), 16.0 * sr.adjoint(v))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert official_transpose(x, x.shape) is x


def test_renoised_residual_has_the_measurement_noise_level() -> None:
    """``renoise_residual``: the loss is ‖y − A x̂0 − σ_y n‖ with fresh n ~ N(0, I) every step, so late in the run (small
    residual) loss² − residual² averages σ_y²·M (M measurements); without it the two are equal."""
    prior = GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    operator = Inpainting(mask_type="random", drop_ratio=0.5, sigma_y=0.1).draw(_gens(1), (1, 3, 32, 32))
    x = prior.sample(prior.embed_text([""]), _gens(1, seed=1), 32, 32)
    y = operator.measure(x, _gens(1, seed=2))
    measured = 3 * 32 * 32  # the operator's output size (holes are zeros of y and of A x̂0, noise included)
    for renoise in (True, False):
        log: list[tuple[float, float]] = []
        LDPS(num_steps=200, step_size=2.0, alpha_index_shift=0, renoise_residual=renoise).solve(
            y, operator, prior, [""], _gens(1, seed=3), x.shape,
            callback=lambda i, v, log=log: log.append((float(v["dps/loss"][0]) / 2.0, float(v["dps/residual"][0]))),
        )  # fmt: skip
        late = torch.tensor(log[100:], dtype=torch.float64)
        excess = float((late[:, 0] ** 2 - late[:, 1] ** 2).mean()) / (0.1**2 * measured)
        assert excess == (pytest.approx(1.0, abs=0.1) if renoise else 0.0)


def test_bad_options_fail_in_the_constructor_or_before_any_pass(tiny) -> None:
    for cls, kwargs in [
        (LDPS, {"sampler": "euler"}),
        (LDPS, {"step_size": -1.0}),
        (LDPS, {"clip_denoised": "sometimes"}),
        (DPS, {"ddpm_variance": "learned_range"}),
        (DPS, {"grid": "trailing"}),
        (DPS, {"alpha_index_shift": 1}),  # respaced grid: guided-diffusion's textbook pairing only
        (GMLDPS, {"encode_mode": "mode"}),
        (PSLD, {"gluing_transpose": "pinv"}),
        (LDIR, {"beta1": 1.0}),
    ]:
        with pytest.raises(UserError):
            cls(**kwargs)
    x, operator, y = _tiny_problem("gauss_deblur")
    tiny.reset_counter()
    with pytest.raises(UserError, match="pixel-space"):
        LDPS(num_steps=2, clip_denoised=True).solve(y, operator, tiny, ["a", "b"], _gens(2), x.shape)
    with pytest.raises(UserError, match="learned variance"):  # SD-shaped tiny prior: no variance channels
        DPS(num_steps=2, ddpm_variance="learned").solve(y, operator, tiny, ["a", "b"], _gens(2), x.shape)
    # the truncated-SVD SR has no counterpart in the DPS code, whose transpose PSLD's default uses
    svd = instantiate(OmegaConf.load(ROOT / "conf/task/sr8.yaml"), impl="svd").draw(_gens(2), x.shape)
    with pytest.raises(UserError, match="gluing_transpose=adjoint"):
        PSLD(num_steps=2).solve(svd.measure(x, _gens(2)), svd, tiny, ["a", "b"], _gens(2), x.shape)
    assert tiny.counter["unet_calls"] == 0


def test_configs_hold_the_paper_values() -> None:
    """conf/solver/<name>.yaml instantiates each class with the values its docstring cites (official code where it
    exists), and model=gaussian / the per-task files apply (test_configs composes every group)."""
    from tests.test_configs import compose_with

    solvers = {name: instantiate(compose_with(f"solver={name}").solver) for name in SOLVERS}
    for name, solver in solvers.items():
        assert type(solver) is SOLVERS[name] and solver.num_steps == 1000 and solver.gradient_checkpointing is True
        assert solver.cfg_scale == 0.0 and solver.output == "latent"
    assert (solvers["psld"].step_size, solvers["psld"].gluing_weight, solvers["psld"].renoise_residual) == (
        1,
        0.1,
        True,
    )
    assert solvers["psld"].gluing_transpose == "official" and solvers["psld"].alpha_index_shift == "auto"
    assert (solvers["gml_dps"].gluing_weight, solvers["gml_dps"].renoise_residual) == (0.1, True)
    assert (solvers["ldps"].step_size, solvers["ldps"].renoise_residual, solvers["ldps"].eta) == (1.0, False, 0.0)
    assert (solvers["ldir"].step_size, solvers["ldir"].beta1, solvers["ldir"].beta2) == (0.05, 0.9, 0.999)
    assert (solvers["dps"].step_size, solvers["dps"].sampler, solvers["dps"].alpha_index_shift) == (0.3, "ddpm", 0)
    box = instantiate(compose_with("solver=psld", "task=inpaint_box").solver)
    assert (box.step_size, box.gluing_weight) == (0.1, 0.01)
    assert instantiate(compose_with("solver=dps", "task=inpaint_random").solver).step_size == 0.5
    gaussian = instantiate(compose_with("solver=ldps", "model=gaussian").solver)
    assert (gaussian.num_steps, gaussian.alpha_index_shift, gaussian.step_size) == (200, 0, 4.0)
