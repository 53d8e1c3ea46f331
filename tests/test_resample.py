"""ReSample (``treg_exp.solvers.resample``): parity with a straight-line transcription of the official
``resample_sampling``, the schedule, stochastic resampling's law, the per-image AdamW fits and their stopping rules,
hard data consistency, batching, determinism, network-pass counts, and calibration on the exact Gaussian prior.

Tiny random-weight SD model at 32 px (latents 4×4×4) or the exact Gaussian prior; a few steps and small iteration
caps everywhere (the caps are config values).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.operators.blur import gaussian_deblur
from treg_exp.operators.inpaint import Inpainting
from treg_exp.reporting import calibration
from treg_exp.solvers import resample as resample_module
from treg_exp.solvers.core import ddim_plan, ddim_sigma
from treg_exp.solvers.resample import ReSample, adamw_fit, dc_stages, resample_variance, stochastic_resample

ROOT = Path(__file__).resolve().parents[1]
RES = 32
SHAPE = (1, 3, RES, RES)


@pytest.fixture(scope="module")
def tiny64() -> TinyStableDiffusionPrior:
    return TinyStableDiffusionPrior(dtype="float64").load("cpu")


def _truth(batch: int = 1, res: int = RES) -> torch.Tensor:
    """A smooth test image ``[B, 3, res, res]`` in [−1, 1], different per image."""
    lin = torch.linspace(-1.0, 1.0, res, dtype=torch.float64)
    rows = []
    for b in range(batch):
        r = 0.8 * torch.sin(3.0 * lin[:, None] + b) * torch.cos(2.0 * lin[None, :])
        g = 0.6 * lin[:, None] * lin[None, :] - 0.1 * b
        bl = 0.5 * torch.cos(4.0 * lin[None, :] - b).expand(res, res)
        rows.append(torch.stack([r, g, bl]))
    return torch.stack(rows)


def _gens(batch: int = 1, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def _task(name: str, batch: int, res: int = RES):
    """The operator of ``conf/task/<name>.yaml``, drawn for ``batch`` images, and a measurement of ``_truth``."""
    operator = instantiate(OmegaConf.load(ROOT / f"conf/task/{name}.yaml"))
    x = _truth(batch, res)
    gens = seeding.batch_generators(0, [f"img{b}" for b in range(batch)], seeding.MEASUREMENT)
    operator = operator.draw(gens, x.shape)
    return operator, operator.measure(x, gens)


# --- the straight-line reference --------------------------------------------------------------------------------
def official_resample(
    prior,
    operator,
    y: torch.Tensor,
    generator: torch.Generator,
    num_steps: int,
    time_travel: int,
    dc_every: int,
    pixel_iters: int,
    latent_iters: int,
    patience: int,
    one_minus_alpha_tweedie: bool = True,
    official_time_travel: bool = True,
) -> torch.Tensor:
    """``DDIMSampler.resample_sampling`` (soominkwon/resample, ldm/models/diffusion/ddim.py) written out for one
    image in float64 from the official code: its ᾱ tables (``make_ddim_timesteps``/``make_ddim_sampling_parameters``),
    ``p_sample_ddim``'s pseudo-x0, the DPS step with ``scale=a_t*.5``, the time-travel loop with its ``ts_``/``index_``
    pair, ``pixel_optimization``, ``latent_optimization`` with its loss window, ``stochastic_resample`` and the
    final latent optimisation; ``splits = 3``, ``eps = 1e-3``, γ = 40, AdamW's defaults.

    Changes: the networks are the prior's (unconditional = its null embedding, encoder mean), randomness comes
    from ``generator`` (``z_T`` as the prior draws it, then one draw per resampling), the number of time-travel
    steps, the DC period and the iteration caps are arguments, and ``official_time_travel=False`` pairs the time
    travel's coefficients with the network's timestep. Returns the image in [−1, 1].
    """
    dtype = torch.float64
    big_t = prior.schedule.num_train_timesteps
    stride = big_t // num_steps
    ddim_timesteps = np.asarray(list(range(0, big_t, stride))) + prior.schedule.steps_offset
    alphacums = prior.schedule.alphas_cumprod.double()
    alphas = alphacums[ddim_timesteps]
    alphas_prev = torch.tensor([float(alphacums[0])] + alphacums[ddim_timesteps[:-1]].tolist(), dtype=dtype)
    uncond = prior.null_embedding(1)
    mse = torch.nn.MSELoss()

    def p_sample_ddim(x, t, index):
        e_t = prior.eps(x, int(t), uncond)
        a_t, a_prev = alphas[index], alphas_prev[index]
        sqrt_one_minus_at = (1 - a_t).sqrt()
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        x_prev = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t
        coef = sqrt_one_minus_at**2 if one_minus_alpha_tweedie else sqrt_one_minus_at
        pseudo_x0 = (x - coef * e_t) / a_t.sqrt()
        return x_prev, pred_x0, pseudo_x0

    def pixel_optimization(x_prime, eps=1e-3):
        opt_var = x_prime.detach().clone().requires_grad_()
        optimizer = torch.optim.AdamW([opt_var], lr=1e-2)
        for _ in range(pixel_iters):
            optimizer.zero_grad()
            measurement_loss = mse(y, operator(opt_var))
            measurement_loss.backward()
            optimizer.step()
            if measurement_loss < eps**2:
                break
        return opt_var.detach()

    def latent_optimization(z_init, eps=1e-3):
        z_init = z_init.detach().clone().requires_grad_()
        optimizer = torch.optim.AdamW([z_init], lr=5e-3)
        losses = []
        for itr in range(latent_iters):
            optimizer.zero_grad()
            output = mse(y, operator(prior.decode(z_init)))
            output.backward()
            optimizer.step()
            cur_loss = output.detach().item()
            if itr < patience:
                losses.append(cur_loss)
            else:
                losses.append(cur_loss)
                if losses[0] < cur_loss:
                    break
                losses.pop(0)
            if cur_loss < eps**2:
                break
        return z_init.detach()

    def stochastic_resample(pseudo_x0, x_t, a_t, sigma):
        noise = torch.randn(pseudo_x0.shape[1:], generator=generator, dtype=torch.float32)[None].to(dtype)
        return (sigma * a_t.sqrt() * pseudo_x0 + (1 - a_t) * x_t) / (sigma + 1 - a_t) + noise * torch.sqrt(
            1 / (1 / sigma + 1 / (1 - a_t))
        )

    shape = prior.latent_shape(SHAPE)
    img = prior.initial_noise(shape, [generator], dtype=dtype, alpha_bar=float(alphas[-1]))
    total_steps = len(ddim_timesteps)
    reversed_timesteps = list(reversed(ddim_timesteps))
    for i, step in enumerate(np.flip(ddim_timesteps)):
        index = total_steps - i - 1
        a_t, a_prev = alphas[index], alphas_prev[index]
        with torch.enable_grad():
            img = img.detach().requires_grad_()
            out, _pred_x0, pseudo_x0 = p_sample_ddim(img, step, index)
            norm = torch.linalg.norm(y - operator(prior.decode(pseudo_x0)))
            norm_grad = torch.autograd.grad(norm, img)[0]
        img = (out - norm_grad * (a_t * 0.5)).detach()
        pseudo_x0 = pseudo_x0.detach()
        index_split = total_steps // 3
        if index <= (total_steps - index_split) and index > 0:
            x_t = img.clone()
            if index % dc_every == 0:
                with torch.no_grad():
                    for k in range(i, min(i + time_travel, total_steps - 1)):
                        step_ = reversed_timesteps[k + 1]
                        index_ = total_steps - k - 1 if official_time_travel else total_steps - k - 2
                        img, _pred_x0, pseudo_x0 = p_sample_ddim(img, step_, index_)
                sigma = 40 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
                if index >= index_split:
                    with torch.no_grad():
                        x_prime = prior.decode(pseudo_x0)
                    opt_var = pixel_optimization(x_prime)
                    with torch.no_grad():
                        opt_var = prior.encode(opt_var, mode="mean")
                else:
                    opt_var = latent_optimization(pseudo_x0)
                with torch.no_grad():
                    img = stochastic_resample(opt_var, x_t, a_prev, sigma)
    img = latent_optimization(img)
    with torch.no_grad():
        return prior.decode(img).clamp(-1.0, 1.0)


@pytest.mark.parametrize(
    ("prior_name", "variant", "indexing"),
    [("tiny", "one_minus_alpha_bar", "official"), ("gaussian", "standard", "aligned")],
    ids=["tiny-official", "gaussian-standard-aligned"],
)
def test_matches_official_transcription(tiny64, prior_name: str, variant: str, indexing: str) -> None:
    """The solver equals the straight-line official loop to 1e-6: 10 steps with DC every 2nd official index, so
    2 pixel-space DC steps, 1 latent-space one, time travel, resampling and the final optimisation all run (the
    latent window of 2 iterations stops some fits early). Catches any change of order, index, constant or formula;
    the Gaussian case checks the ``standard`` Tweedie and ``aligned`` time-travel flags against the same loop."""
    if prior_name == "tiny":
        prior = tiny64
        operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    else:
        prior = GaussianPrior(dtype="float64").load("cpu")
        operator = Inpainting(mask_type="random", drop_ratio=0.5).draw(_gens(), SHAPE)
    y = operator.measure(_truth(), _gens(seed=7))
    kwargs = dict(num_steps=10, time_travel=2, dc_every=2, pixel_iters=6, latent_iters=5, patience=2)
    assert dc_stages(10, 2, 3) == [None] * 3 + ["pixel", None] * 2 + ["latent"] + [None] * 2
    solver = ReSample(
        num_steps=10,
        dc_every=2,
        time_travel_steps=2,
        pixel_iters=6,
        latent_iters=5,
        latent_patience=2,
        tweedie_variant=variant,
        time_travel_indexing=indexing,
        gradient_checkpointing=False,
    )
    log: dict[str, list] = {}
    ours = solver.solve(y, operator, prior, [""], _gens(), SHAPE, callback=lambda i, v: _log(log, i, v))
    ref = official_resample(
        prior,
        operator,
        y,
        _gens()[0],
        one_minus_alpha_tweedie=variant == "one_minus_alpha_bar",
        official_time_travel=indexing == "official",
        **kwargs,
    )
    assert ours.dtype == torch.float32 and ours.shape == SHAPE
    diff = (ours.double() - ref).abs().max().item()
    assert diff < 1e-6, diff
    assert ref.std() > 1e-3
    # every stage ran
    assert len(log["dc/pixel"]) == 2 and len(log["dc/latent"]) == 1 and len(log["final/iterations"]) == 1


def _log(log: dict, step: int, values: dict) -> None:
    for key, value in values.items():
        log.setdefault(key, []).append((step, value.clone()))


# --- the schedule ---------------------------------------------------------------------------------------------
def test_dc_stages_official() -> None:
    """500 steps: DC at official indices j = 330, 320, …, 10 (j = 499 − i): pixel for j ≥ 166, latent below."""
    stages = dc_stages(500)
    pixel = [499 - i for i, s in enumerate(stages) if s == "pixel"]
    latent = [499 - i for i, s in enumerate(stages) if s == "latent"]
    assert pixel == list(range(330, 169, -10)) and len(pixel) == 17
    assert latent == list(range(160, 9, -10)) and len(latent) == 16
    assert ReSample().stages() == stages


# --- stochastic resampling --------------------------------------------------------------------------------------
def test_resample_variance_is_gamma_times_ddpm_posterior_variance() -> None:
    """σ² = γ·σ²_DDIM(η = 1), the DDPM posterior variance (an independent implementation: core.ddim_sigma)."""
    plan = ddim_plan(GaussianPrior().schedule, 500)
    for step in plan[::37]:
        expected = 40.0 * ddim_sigma(step.alpha_bar, step.alpha_bar_prev, 1.0) ** 2
        assert resample_variance(step.alpha_bar, step.alpha_bar_prev, 40.0) == pytest.approx(expected, rel=1e-12)
    assert resample_variance(0.5, 0.5, 40.0) == 0.0


def test_stochastic_resample_is_the_product_of_two_gaussians() -> None:
    """Monte Carlo mean and variance of the draws equal those of N(√ᾱ_prev·ẑ0(y), (1−ᾱ_prev)) · N(z′, σ²),
    computed by precision weighting (catches swapped weights, a standard deviation used as a variance, or the
    wrong ᾱ)."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    z0_y = torch.tensor([[0.7, -1.2, 0.1]], dtype=torch.float64)
    z_prime = torch.tensor([[-0.4, 0.3, 0.9]], dtype=torch.float64)
    for abar_prev, variance in [(0.3, 0.8), (0.9, 0.05)]:
        noise = torch.randn((n, 3), generator=gen, dtype=torch.float64)
        draws = stochastic_resample(z0_y.expand(n, 3), z_prime.expand(n, 3), abar_prev, variance, noise)
        precision = 1.0 / (1.0 - abar_prev) + 1.0 / variance
        mean = (abar_prev**0.5 * z0_y / (1.0 - abar_prev) + z_prime / variance) / precision
        var = 1.0 / precision
        stderr = (var / n) ** 0.5
        assert torch.allclose(draws.mean(0), mean[0], atol=5 * stderr, rtol=0)
        assert torch.allclose(draws.var(0), torch.full((3,), var, dtype=torch.float64), rtol=0.02, atol=0)
        # noise 0 gives the mean exactly
        assert torch.allclose(stochastic_resample(z0_y, z_prime, abar_prev, variance, 0 * z0_y), mean, atol=1e-15)


# --- the per-image AdamW fits ---------------------------------------------------------------------------------
def _official_fit(start, loss_fn, lr, max_iters, eps, patience=None):
    """The official optimisation loop for one image (pixel_optimization / latent_optimization)."""
    z = start.detach().clone().requires_grad_()
    optimizer = torch.optim.AdamW([z], lr=lr)
    losses = []
    for itr in range(max_iters):
        optimizer.zero_grad()
        out = loss_fn(z)
        out.backward()
        optimizer.step()
        cur = out.item()
        if patience is not None:
            losses.append(cur)
            if itr >= patience:
                if losses[0] < cur:
                    return z.detach(), itr + 1
                losses.pop(0)
        if cur < eps**2:
            return z.detach(), itr + 1
    return z.detach(), max_iters


@pytest.mark.parametrize("patience", [None, 10], ids=["tolerance", "window"])
def test_adamw_fit_is_the_official_loop_per_image(patience) -> None:
    """A batch of 2 with different stopping iterations equals the official loop run on each image alone: the
    tolerance rule (image 0, noiseless, stops at ``loss < tol²``), the loss window (image 1, noisy), or the cap.
    Catches a shared stop, a missing last update, a coupled optimizer or an off-by-one in the window."""
    operator = Inpainting(mask_type="random", drop_ratio=0.5).draw(_gens(2), (2, 3, 8, 8))
    x = _truth(2, 8)
    y = operator(x)
    y[1] = y[1] + 0.05 * torch.randn(y[1].shape, generator=_gens()[0], dtype=torch.float64)
    start = torch.zeros_like(x)
    tol = 0.02

    def batched(v, rows):
        op = resample_module._rows_operator(operator, rows, 2)
        return ((y[rows] - op(v)) ** 2).flatten(1).mean(1)

    fit = adamw_fit(start, batched, lr=0.05, max_iters=300, tol=tol, patience=patience)
    for b in range(2):
        op_b = Inpainting(mask_type="random").with_params({"mask": operator.mask[b : b + 1]})
        ref, its = _official_fit(
            start[b : b + 1],
            lambda v, b=b, op_b=op_b: torch.nn.MSELoss()(y[b : b + 1], op_b(v)),
            0.05,
            300,
            tol,
            patience,
        )
        assert int(fit.iterations[b]) == its
        assert torch.allclose(fit.value[b : b + 1], ref, atol=1e-12, rtol=0)
    # per-image stops: image 0 by the tolerance; image 1 by the cap (no window) or, earlier, by the window
    assert fit.loss_end[0] < tol**2 and fit.iterations[0] < 300
    if patience is None:
        assert fit.iterations[1] == 300
    else:
        assert fit.iterations[1] < fit.iterations[0] and fit.loss_end[1] > tol**2


# --- hard data consistency -------------------------------------------------------------------------------------
def test_hard_data_consistency_lowers_the_residual(tiny64) -> None:
    """Both optimisations lower ‖y − A D(·)‖ (pixel space: ‖y − A x*‖ from x = D(z); latent space: from z)."""
    operator, y = _task("sr8", 2)
    z = 0.5 * torch.randn((2, 4, RES // 8, RES // 8), generator=_gens()[0], dtype=torch.float64)
    solver = ReSample(pixel_iters=30, latent_iters=8, gradient_checkpointing=False)
    with torch.no_grad():
        before = (y - operator(tiny64.decode(z))).flatten(1).norm(dim=1)
    pixel = solver.pixel_optimization(tiny64.decode(z).detach(), y, operator)
    latent = solver.latent_optimization(z, y, operator, tiny64)
    with torch.no_grad():
        after_pixel = (y - operator(pixel.value)).flatten(1).norm(dim=1)
        after_latent = (y - operator(tiny64.decode(latent.value))).flatten(1).norm(dim=1)
    assert (after_pixel < 0.7 * before).all(), (after_pixel / before).tolist()
    assert (after_latent < before).all(), (after_latent / before).tolist()
    assert torch.allclose(pixel.loss_start, before.double() ** 2 / y[0].numel(), rtol=1e-10)


# --- batching, determinism, cost -------------------------------------------------------------------------------
SMALL = dict(num_steps=9, dc_every=2, time_travel_steps=2, pixel_iters=4, latent_iters=3, latent_tol=0.0)


@pytest.mark.parametrize("task", ["gauss_deblur", "sr8", "inpaint_freeform"])
def test_batch_of_two_equals_two_runs_and_counts(tiny64, task: str) -> None:
    """Tiny SD: finite; image b of a batch (gradient checkpointing on) equals a run of b alone (off); network
    passes per image follow the schedule: 9 steps with DC at official indices j = 6, 4 (pixel) and 2 (latent)."""
    operator, y = _task(task, 2)
    solver = ReSample(**SMALL, latent_patience=None)
    assert solver.stages() == [None, None, "pixel", None, "pixel", None, "latent", None, None]
    tiny64.reset_counter()
    batched = solver.solve(y, operator, tiny64, ["a", "b"], _gens(2, seed=5), (2, 3, RES, RES))
    counts = dict(tiny64.counter)
    tiny64.set_gradient_checkpointing(False)
    single = ReSample(**SMALL, latent_patience=None, gradient_checkpointing=False)
    singles = []
    for b in range(2):
        op_b = resample_module._rows_operator(operator, [b], 2)
        singles.append(single.solve(y[b : b + 1], op_b, tiny64, ["ab"[b]], _gens(1, seed=5 + b), SHAPE))
    assert torch.isfinite(batched).all()
    assert (batched.double() - torch.cat(singles).double()).abs().max().item() < 1e-8
    assert not torch.allclose(batched[0], batched[1])
    # per image: 9 UNet rows (DPS) + 3·2 time travel; decodes: 9 (DPS) + 2 (pixel DC) + 3 (latent DC) + 3 (final)
    # + 1 (output); 2 encodes (pixel DC); no CLIP
    assert counts["unet_rows"] == 2 * 15 and counts["unet_calls"] == 15
    assert counts["decode_rows"] == 2 * 18 and counts["encode_rows"] == 2 * 2
    assert counts.get("clip_image_calls", 0) == 0


def test_same_seed_same_bits(tiny64) -> None:
    """Same generators → identical bits; other generators → a different result."""
    prior = tiny64
    operator, y = _task("gauss_deblur", 1)
    solver = ReSample(**SMALL, gradient_checkpointing=False)
    first = solver.solve(y, operator, prior, [""], _gens(seed=3), SHAPE)
    second = solver.solve(y, operator, prior, [""], _gens(seed=3), SHAPE)
    other = solver.solve(y, operator, prior, [""], _gens(seed=4), SHAPE)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# --- the exact Gaussian prior ---------------------------------------------------------------------------------
#: a 50-step ReSample with the Gaussian-prior tolerances (conf/solver_model/resample_gaussian.yaml) and small caps
CALIBRATION = dict(
    num_steps=50, dc_every=2, time_travel_steps=2, pixel_iters=50, latent_iters=30, pixel_tol=0.01, latent_tol=0.01
)


def _problem(task: str):
    operator = (
        gaussian_deblur(15, 2.0, padding="circular")
        if task == "gauss_deblur"
        else Inpainting(mask_type="random", drop_ratio=[0.3, 0.7])
    )
    return calibration.make_problem(operator, num_images=2, resolution=RES, seeds=2)


def _within_bounds(numbers: calibration.Calibration) -> bool:
    return numbers.bias2 < 0.5 * numbers.adjoint_bias2 and numbers.mse_ratio < 2.0 and 0.5 < numbers.spread_ratio < 2.5


@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
def test_calibration_on_the_gaussian_prior(task: str) -> None:
    """Against the exact posterior (2 prior draws × 2 seeds, 32 px): the reconstructions' mean is much closer to
    the posterior mean than ``Aᵀy`` (bias2 < ½ of Aᵀy's), MSE < 2× an exact sample's, spread within 0.5–2.5× the
    posterior's (measured: deblur 0.12 / 1.12 / 1.12, inpainting 0.34 / 1.59 / 1.79).

    The bounds catch, measured on these problems: the resampling weights swapped (ẑ0(y) and z′ trade places: MSE
    3.7–6.7×, spread 5.7–10×) and no data consistency (DPS alone: bias2 0.95 / 2.7, above Aᵀy's); the inpainting
    case runs both. They do not reliably catch a DPS step of the wrong sign (bias2 0.21 / 0.61): the hard DC
    dominates."""
    problem = _problem(task)
    numbers = calibration.calibrate(ReSample(**CALIBRATION), problem)
    assert _within_bounds(numbers), numbers
    if task != "inpaint_random":
        return
    no_dc = calibration.calibrate(
        ReSample(**{**CALIBRATION, "dc_every": 10**6, "final_latent_optimization": False}), problem
    )
    assert not _within_bounds(no_dc) and no_dc.bias2 > no_dc.adjoint_bias2, no_dc
    original = resample_module.stochastic_resample
    try:
        resample_module.stochastic_resample = lambda z0_y, z_prime, abar, var, noise: original(
            z_prime / abar**0.5, z0_y * abar**0.5, abar, var, noise
        )
        swapped = calibration.calibrate(ReSample(**CALIBRATION), problem)
    finally:
        resample_module.stochastic_resample = original
    assert not _within_bounds(swapped) and swapped.mse_ratio > 3.0, swapped


# --- options and configs ---------------------------------------------------------------------------------------
def test_bad_options() -> None:
    for kwargs in (
        dict(num_steps=0),
        dict(tweedie_variant="sqrt"),
        dict(time_travel_indexing="late"),
        dict(encode_mode="mode"),
        dict(dc_every=0),
        dict(pixel_lr=0.0),
        dict(latent_patience=0),
        dict(resample_gamma=-1.0),
    ):
        with pytest.raises(UserError):
            ReSample(**kwargs)
    y = torch.zeros(1, 3, RES, RES)
    with pytest.raises(UserError):
        ReSample(num_steps=2).solve(y, gaussian_deblur(9, 2.0), GaussianPrior(), ["a", "b"], _gens(), SHAPE)


def test_config_is_the_official_defaults() -> None:
    solver = instantiate(OmegaConf.load(ROOT / "conf/solver/resample.yaml"))
    assert isinstance(solver, ReSample)
    default = ReSample()
    assert vars(solver) == vars(default)
    assert (solver.num_steps, solver.dps_scale, solver.dc_every, solver.splits, solver.time_travel_steps) == (
        500,
        0.5,
        10,
        3,
        5,
    )
    assert (solver.pixel_lr, solver.pixel_iters, solver.latent_lr, solver.latent_iters) == (1e-2, 2000, 5e-3, 500)
    assert (solver.resample_gamma, solver.weight_decay, solver.latent_patience) == (40.0, 0.01, 200)
    assert solver.tweedie_variant == "one_minus_alpha_bar" and solver.time_travel_indexing == "official"
    assert solver.gradient_checkpointing is True and solver.final_latent_optimization
    merged = OmegaConf.merge(
        OmegaConf.load(ROOT / "conf/solver/resample.yaml"),
        OmegaConf.load(ROOT / "conf/solver_model/resample_gaussian.yaml"),
    )
    assert isinstance(instantiate(merged), ReSample)
    assert math.isfinite(solver.pixel_tol)
