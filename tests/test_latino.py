"""LATINO (``treg_exp.solvers.latino``), LoRA loading (``StableDiffusionPrior.fuse_lora``) and the Gaussian prior's
consistency map.

The official loop is transcribed here from reading ``LATINO-PRO/LATINO-PRO@b0168a9`` (``main_LATINO.py``, model
``LATINO-1.5``; ``noise_schemes.noise_pred_cond_y_15``; ``utils._get_x_init``), not copied: float64, batch 1, with the
raw diffusers modules (UNet, VAE, CLIP text tower) and diffusers' own ``LCMScheduler`` (``set_timesteps``,
``add_noise``, ``step``), and four changes only: noise comes from the image's generator in the order the solver
draws it, the proximal step is the operator's (deepinv's ``prox_l2(x, y, γ)`` is ``(AᵀA + I/γ)⁻¹(Aᵀy + x/γ)``),
the residual ``df`` is ``‖A x̂ − y‖`` without the fresh measurement noise deepinv's ``physics(x)`` adds (a documented
departure of the module), and the CFG pair of scale 1 is its prompt branch.
"""

from __future__ import annotations

import pytest
import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models.gaussian import GaussianFlowPrior, GaussianPrior
from treg_exp.models.stable_diffusion import LORA_TARGETS, save_random_lora
from treg_exp.models.tiny import SD1_SCHEDULER, TinyStableDiffusionPrior, build_tiny_components
from treg_exp.operators import gaussian_deblur
from treg_exp.solvers.latino import LATINO, boundary_scalings, lcm_timesteps

RES = 64
SIGMA_Y = 0.05
PROMPT = "a photo"


@pytest.fixture(scope="module")
def tiny_lcm() -> TinyStableDiffusionPrior:
    """The tiny SD with its random LoRA fused, in float64."""
    return TinyStableDiffusionPrior(dtype="float64", lora="random", vae_slicing=False).load("cpu")


def problem(res: int = RES, batch: int = 1, seed: int = 0):
    """A circular 7×7 Gaussian blur (σ = 1.5, closed-form prox) of smooth images in [−1, 1], σ_y = 0.05: ``(A, y)``."""
    generators = [torch.Generator().manual_seed(seed + b) for b in range(batch)]
    x = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, res, res, generator=generators[0]) * 2 - 1, 5, 1, 2)
    operator = gaussian_deblur(kernel_size=7, kernel_sigma=1.5, padding="circular", sigma_y=SIGMA_Y)
    operator = operator.draw(generators, x.shape)
    return operator, operator.measure(x.double(), generators)


def generators(seed: int = 7, batch: int = 1) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


# --- LCM's grid and boundary condition against diffusers -----------------------------------------------------------
def test_lcm_grid_boundary_and_step_match_diffusers() -> None:
    """The grid equals ``LCMScheduler.set_timesteps(n)`` for every n ≤ 50, ``(c_skip, c_out)`` equal
    ``get_scalings_for_boundary_condition_discrete``, and the update ``√ᾱ'(c_out·ẑ0 + c_skip·z) + √(1−ᾱ')ξ`` equals
    ``LCMScheduler.step`` on the same noise. Catches a wrong grid index rule, swapped or mis-scaled boundary
    coefficients, and a wrong re-noising."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(SD1_SCHEDULER)
    for n in range(1, 51):
        scheduler.set_timesteps(n)
        assert lcm_timesteps(1000, n) == scheduler.timesteps.tolist(), n
    for t in (0, 1, 19, 139, 499, 999):
        assert boundary_scalings(t) == pytest.approx(scheduler.get_scalings_for_boundary_condition_discrete(t))
    assert boundary_scalings(0) == (1.0, 0.0)
    scheduler.set_timesteps(8)
    ts = scheduler.timesteps.tolist()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the same ᾱ, in float64 arithmetic
    z, eps = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise_gen = torch.Generator().manual_seed(3)
    out = scheduler.step(eps, ts[0], z, generator=torch.Generator().manual_seed(3))
    alpha, alpha_next = (float(scheduler.alphas_cumprod[t]) for t in ts[:2])
    z0 = (z - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    c_skip, c_out = boundary_scalings(ts[0])
    xi = torch.randn(z.shape, generator=noise_gen, dtype=torch.float64)
    expected = alpha_next**0.5 * (c_out * z0 + c_skip * z) + (1 - alpha_next) ** 0.5 * xi
    torch.testing.assert_close(out.prev_sample, expected, rtol=0, atol=1e-12)


# --- the LoRA ----------------------------------------------------------------------------------------------------
def test_lora_is_loaded_and_fused_through_diffusers(tmp_path) -> None:
    """A random LoRA saved by diffusers' ``save_lora_weights`` and loaded by ``model.lora=<folder>`` gives the UNet
    the output of the peft-adapted UNet (to 1e-5), which differs from the base UNet's; ``lora=random`` is that same
    LoRA. Catches a LoRA not loaded, loaded at the wrong scale, or lost when the adapter layers are dropped."""
    from peft import LoraConfig

    base = build_tiny_components(0)["unet"].double()
    save_random_lora(tmp_path, base, seed=0)
    adapted = build_tiny_components(0)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapted.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS), init_lora_weights=False))
    adapted = adapted.double()
    from_folder = TinyStableDiffusionPrior(dtype="float64", lora=str(tmp_path), vae_slicing=False).load("cpu")
    random = TinyStableDiffusionPrior(dtype="float64", lora="random", vae_slicing=False).load("cpu")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = from_folder.embed_text([PROMPT])
    with torch.no_grad():
        want = adapted(z, 500, encoder_hidden_states=cond).sample
        plain = base(z, 500, encoder_hidden_states=cond).sample
        got = from_folder.eps(z, 500, cond)
    assert not any("lora" in name for name, _ in from_folder.unet.named_modules())  # fused, adapters dropped
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2
    torch.testing.assert_close(random.eps(z, 500, cond), got, rtol=0, atol=1e-12)


def test_missing_lora_fails_in_one_line(tmp_path) -> None:
    """A LoRA folder without its file, and a Hub id with downloads off, fail with one line naming the LoRA and how to
    stage it (not a diffusers traceback)."""
    for source in (str(tmp_path), "latent-consistency/lcm-lora-sdv1-5"):
        with pytest.raises(WeightsNotFoundError) as error:
            TinyStableDiffusionPrior(lora=source, vae_slicing=False).load("cpu")
        assert "\n" not in str(error.value) and "LoRA" in str(error.value) and source in str(error.value)
    assert "fetch_weights.py --out DIR --models lcm_lora_sd15" in str(error.value)


# --- the Gaussian prior's consistency map --------------------------------------------------------------------------
def test_gaussian_consistency_map_is_the_probability_flow_end_point() -> None:
    """``GaussianPrior.consistency_x0`` equals an RK4 integration (400 steps, cubic in σ̄) of the probability-flow ODE
    ``dx̄/dσ̄ = (x̄ − E[x0 | x̄])/σ̄`` from σ̄_t to 0, with the prior's exact posterior mean. Catches a wrong power
    of the spectral gain (e.g. the Tweedie gain instead of the square root) or a wrong mean term."""
    prior = GaussianPrior(dtype="float64")
    cond = prior.embed_text(["red"])
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (999, 499, 139):
        alpha = float(prior.schedule.alphas_cumprod[t])

        def velocity(x_bar: torch.Tensor, sigma: float) -> torch.Tensor:
            a = 1.0 / (1.0 + sigma**2)
            return (x_bar - prior.posterior_x0(a**0.5 * x_bar, a, cond)) / sigma

        # cubic spacing: the solution √(P + σ̄²) bends where σ̄² ~ P, and the smallest P are small
        sigmas = (((1 - alpha) / alpha) ** 0.5 * torch.linspace(1.0, 0.0, 401, dtype=torch.float64) ** 3).tolist()
        x_bar = z / alpha**0.5
        for s0, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
            h, mid = s1 - s0, (s0 + s1) / 2
            k1 = velocity(x_bar, s0)
            k2 = velocity(x_bar + h / 2 * k1, mid)
            k3 = velocity(x_bar + h / 2 * k2, mid)
            k4 = velocity(x_bar + h * k3, max(s1, 1e-12))
            x_bar = x_bar + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        torch.testing.assert_close(prior.consistency_x0(z, t, cond), x_bar, rtol=0, atol=1e-6)


# --- the loop against the official one -----------------------------------------------------------------------------
def official_latino(prior, y, operator, generator, delta_fn, steps: int = 8, custom=None, conditioning=None):
    """The official loop (module docstring) in float64 on ``prior``'s networks: ``[1, 3, H, W]``.

    ``LATINO-1.5`` (SD 1.5, ``noise_pred_cond_y_15``) by default; ``custom`` timesteps override the scheduler's after
    ``set_timesteps(steps)`` and ``conditioning`` gives the UNet's keywords, as the SDXL ``LATINO`` model does
    (``noise_pred_cond_y``). ``delta_fn(t, df)`` is the code's δ for the problem; ``generator`` gives the start's
    noise and then one draw per re-noising (the solver's order)."""
    from diffusers import LCMScheduler

    unet, vae, s = prior.unet, prior.vae, prior.vae.config.scaling_factor
    scheduler = LCMScheduler.from_config(prior.scheduler_config)
    scheduler.set_timesteps(steps)
    if custom is not None:
        scheduler.timesteps = torch.tensor(custom, dtype=torch.long)
    # the same ᾱ values, used in float64: in float32 the step's (z − √(1−ᾱ)·ε)/√ᾱ at t = 999 loses ~1e-6
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    if conditioning is None:
        tokens = prior.tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        conditioning = {"encoder_hidden_states": prior.text_encoder(tokens.input_ids)[0]}
    shape = (1, 4, y.shape[-2] // 8, y.shape[-1] // 8)

    def noise() -> torch.Tensor:
        return torch.randn(shape[1:], generator=generator, dtype=torch.float32)[None].double()

    x_init = operator.adjoint(y).clip(-1, 1)  # _get_x_init: xinit = b.clip(-1, 1), b = Aᵀy
    mu_z = vae.encode(x_init.clip(-1, 1)).latent_dist.mean * s
    latents = scheduler.add_noise(mu_z, noise(), torch.tensor([999]))
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        noise_pred = unet(latents, t, **conditioning).sample
        alpha_t = scheduler.alphas_cumprod[t]
        z0_pred = torch.sqrt(1 / alpha_t) * (latents - torch.sqrt(1 - alpha_t) * noise_pred)
        x = vae.decode(z0_pred / s).sample.clip(-1, 1)
        df = torch.norm(operator(x) - y).item()
        gamma = delta_fn(t, df) * (1 - alpha_t) / SIGMA_Y**2
        prox_x = operator.prox_l2(y, x, float(1 / gamma))
        mu_z = vae.encode(prox_x.clip(-1, 1)).latent_dist.mean * s
        noise_pred = torch.sqrt(1 / (1 - alpha_t)) * latents - torch.sqrt(alpha_t / (1 - alpha_t)) * mu_z
        denoised = scheduler.step(noise_pred, t, latents).denoised
        if i + 1 < len(timesteps):  # LCMScheduler.step's re-noising, on the solver's noise stream
            alpha_prev = scheduler.alphas_cumprod[timesteps[i + 1]]
            latents = alpha_prev.sqrt() * denoised + (1 - alpha_prev).sqrt() * noise()
        else:
            latents = denoised
    return (vae.decode(latents / s).sample / 2 + 0.5).clamp(0, 1) * 2 - 1


def test_latino_equals_the_official_loop(tiny_lcm) -> None:
    """LATINO on tiny SD + random LoRA (float64) equals the float64 transcription of the official loop to 1e-6 at
    the default 8 LCM steps, with the official Gaussian-deblurring δ schedule (δ = 1e-3·df above t = 300,
    4e-4·df below) and with the fallback one (0.01 above t = 200, 1 below). Catches any departure in the grid, the
    start, the consistency estimate, the clipping, δ, γ, the prox, the encoding, the boundary condition, the
    re-noising or the final decode."""
    operator, y = problem()
    schedules = {
        "deblur": (dict(delta_high=1e-3, delta_low=4e-4, delta_switch=300, delta_residual=True), None),
        "fallback": ({}, None),
    }
    official_delta = {
        "deblur": lambda t, df: (1e-3 if t > 300 else 4e-4) * df,
        "fallback": lambda t, df: 0.01 if t > 200 else 1.0,
    }
    for name, (options, _) in schedules.items():
        with torch.no_grad():
            got = LATINO(**options).solve(y, operator, tiny_lcm, [PROMPT], generators(), (1, 3, RES, RES))
            want = official_latino(tiny_lcm, y, operator, generators()[0], official_delta[name])
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6, msg=name)


def test_latino_equals_the_official_loop_on_the_gaussian_prior() -> None:
    """On the Gaussian prior (pixel space, exact consistency map, no clipping) LATINO equals the official update
    written out: ``x̂ = f(z)``, the prox, ``c_out·x̃ + c_skip·z``, re-noise; 4 steps of LCM's grid. Catches a
    latent-only assumption (encode/decode) or a grid/ᾱ mismatch on a prior with ``steps_offset = 0``."""
    prior = GaussianPrior(dtype="float64")
    operator, y = problem(res=16)
    solver = LATINO(num_steps=4, clip=False)
    with torch.no_grad():
        got = solver.solve(y, operator, prior, ["gray"], generators(), (1, 3, 16, 16))
    gen = generators()[0]
    alphas = prior.schedule.alphas_cumprod
    cond = prior.embed_text(["gray"])

    def noise() -> torch.Tensor:
        return torch.randn((3, 16, 16), generator=gen, dtype=torch.float32)[None].double()

    grid = [999, 759, 499, 259]  # LCMScheduler.set_timesteps(4)
    z = alphas[999].sqrt() * operator.adjoint(y).clip(-1, 1) + (1 - alphas[999]).sqrt() * noise()
    for i, t in enumerate(grid):
        a = float(alphas[t])
        x = prior.consistency_x0(z, t, cond)
        gamma = (0.01 if t > 200 else 1.0) * (1 - a) / SIGMA_Y**2
        x = operator.prox_l2(y, x, 1 / gamma)
        c_skip, c_out = boundary_scalings(t)
        z = c_out * x + c_skip * z
        if i + 1 < len(grid):
            z = alphas[grid[i + 1]].sqrt() * z + (1 - alphas[grid[i + 1]]).sqrt() * noise()
    torch.testing.assert_close(got.double(), z.clamp(-1, 1), rtol=0, atol=1e-6)


# --- costs, batches, refusals ---------------------------------------------------------------------------------------
def test_network_passes_are_counted() -> None:
    """At the defaults one image costs 8 consistency passes, 9 decodes (one per step and the output) and 9 encodes
    (the start and one per step), and no backward pass. Catches an extra or a missing pass in the loop."""
    prior = GaussianPrior(dtype="float64")
    operator, y = problem(res=16)
    prior.reset_counter()
    with torch.no_grad():
        LATINO().solve(y, operator, prior, ["gray"], generators(), (1, 3, 16, 16))
    counts = dict(prior.counter)
    assert (counts["unet_rows"], counts["decode_rows"], counts["encode_rows"]) == (8, 9, 9)
    assert not any(key.endswith("grad_rows") for key in counts)


@pytest.mark.parametrize(
    "options",
    [{}, {"timesteps": [999, 499, 99], "init": "noise"}, {"num_steps": 2, "prompt_opt": True, "prompt_opt_iters": 2}],
)
def test_cost_formula_counts_what_the_solver_runs(tiny_lcm, options) -> None:
    """The cost estimate's formula (``experiment.cost.latino_passes``) equals the prior's counter on a real solve, with
    an explicit grid, the noise start and prompt optimisation. Catches a formula that drifts from the loop."""
    from treg_exp.experiment import cost

    operator, y = problem()
    tiny_lcm.reset_counter()
    tiny_lcm.embed_text([PROMPT, ""])  # cached: the solve's text passes are set-up, not counted per image
    tiny_lcm.reset_counter()
    LATINO(**options).solve(y, operator, tiny_lcm, [PROMPT], generators(), (1, 3, RES, RES))
    passes = cost.solver_passes({"_target_": "treg_exp.solvers.latino.LATINO", **options}, "latino", {})
    for name in cost.COUNT_NAMES:
        assert getattr(passes, name) == tiny_lcm.counter.get(name, 0), name


def test_batch_equals_single_images() -> None:
    """A batch of two with the residual-scaled δ (one λ per image in the proximal step) equals the two images solved
    alone. Catches λ or δ shared across the batch."""
    prior = GaussianPrior(dtype="float64")
    singles = [problem(res=16, seed=b) for b in range(2)]
    operator, y = singles[0][0], torch.cat([y for _, y in singles])  # one fixed kernel: the operator is shared
    solver = LATINO(num_steps=3, delta_residual=True, delta_high=0.3, delta_low=0.1)
    both = solver.solve(y, operator, prior, ["gray", "red"], [*generators(7), *generators(8)], (2, 3, 16, 16))
    for b, prompt in enumerate(["gray", "red"]):
        one = solver.solve(singles[b][1], operator, prior, [prompt], generators(7 + b), (1, 3, 16, 16))
        torch.testing.assert_close(both[b : b + 1], one, rtol=0, atol=1e-10)


def test_refuses_priors_without_a_consistency_map() -> None:
    """SD without a LoRA and rectified-flow priors are refused before any weight is loaded, in one line that says
    what to set; so are grids that are not descending or leave the schedule, when the solver is built."""
    for prior, words in ((TinyStableDiffusionPrior(), "model.lora"), (GaussianFlowPrior(), "rectified-flow")):
        with pytest.raises(UserError) as error:
            LATINO().check_prior(prior)
        assert words in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="descending"):
        LATINO(timesteps=[499, 999])
    with pytest.raises(UserError, match="0..999"):
        LATINO(prompt_opt_timesteps=[1000, 500])


# --- end to end and LATINO-PRO --------------------------------------------------------------------------------------
def test_fits_the_measurement_better_than_the_prior_sample(tiny_lcm) -> None:
    """On tiny SD + LoRA, 4 steps: ``‖A x̂ − y‖`` of LATINO's reconstruction is below that of the prior's own sample
    (LCM's sampler: the same consistency passes, boundary condition and re-noising, without the data step). The
    margin is small because the random VAE's ``D(E(x))`` is far from ``x``; on the Gaussian prior it is large.
    Catches a data step that does not pull towards y (a wrong sign, or λ and γ swapped)."""
    operator, y = problem()
    with torch.no_grad():
        x = LATINO(num_steps=4).solve(y, operator, tiny_lcm, [PROMPT], generators(), (1, 3, RES, RES))
        cond = tiny_lcm.embed_text([PROMPT])
        z = tiny_lcm.initial_noise((1, 4, 8, 8), generators(), dtype=torch.float64)
        grid = lcm_timesteps(1000, 4)
        for i, t in enumerate(grid):
            c_skip, c_out = boundary_scalings(t)
            z = c_out * tiny_lcm.consistency_x0(z, t, cond) + c_skip * z
            if i + 1 < len(grid):
                a = float(tiny_lcm.schedule.alphas_cumprod[grid[i + 1]])
                z = a**0.5 * z + (1 - a) ** 0.5 * seeding.randn((4, 8, 8), generators(9), dtype=torch.float64)
        prior_sample = tiny_lcm.decode(z).clamp(-1, 1)
    assert torch.norm(operator(x.double()) - y) < torch.norm(operator(prior_sample) - y)
    gaussian = GaussianPrior(dtype="float64")
    operator, y = problem(res=16)
    with torch.no_grad():
        x = LATINO(num_steps=4, clip=False).solve(y, operator, gaussian, ["gray"], generators(), (1, 3, 16, 16))
    prior_sample = gaussian.sample(gaussian.embed_text(["gray"]), generators(9), 16, 16)
    assert torch.norm(operator(x.double()) - y) < 0.6 * torch.norm(operator(prior_sample) - y)


def test_prompt_optimisation_moves_the_embedding_and_lowers_its_loss(tiny_lcm) -> None:
    """One SAPG round on tiny SD + LoRA: the embedding moves (except its 4 frozen leading tokens, and within the
    radius), and the round's loss ``Σ_k ‖z_{k+1} − √ᾱ_{k+1}·ẑ0(z_k; c)‖²/(2(1−ᾱ_{k+1}))`` on the round's own
    trajectory is lower at the new embedding than at the prompt's. Catches an ascent on the loss (a sign error),
    a gradient taken with respect to the wrong tensor, or frozen tokens that move."""
    from treg_exp.solvers.plug_and_play import BatchDenoiser

    operator, y = problem()
    solver = LATINO(prompt_opt=True, prompt_opt_iters=1, prompt_opt_lr=0.02, prompt_opt_radius=0.5)
    pairs: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
    plain_step = solver.step

    def recording_step(y, operator, denoiser, z, z0, t, t_next, *rest):
        z_next = plain_step(y, operator, denoiser, z, z0, t, t_next, *rest)
        if t_next is not None:
            pairs.append((z.clone(), z_next.clone(), t, t_next))
        return z_next

    solver.step = recording_step
    with torch.no_grad():
        denoiser = BatchDenoiser("LATINO", y, tiny_lcm, [PROMPT], generators(), (1, 3, RES, RES), 1.0, "", "mean")
        start = solver.start(y, operator, denoiser, 999)
        cond, _ = solver.optimise_prompt(y, operator, denoiser, start)
    c0 = denoiser.cond
    rows = (cond - c0).norm(dim=-1)[0]
    assert torch.all(rows[:4] == 0) and rows[4:].min() > 0 and rows.max() <= 0.5 + 1e-9
    assert len(pairs) == 3

    def loss(c: torch.Tensor) -> float:
        total = 0.0
        for z, z_next, t, t_next in pairs:
            a = float(tiny_lcm.schedule.alphas_cumprod[t_next])
            gap = z_next - a**0.5 * tiny_lcm.consistency_x0(z, t, c)
            total += float(gap.pow(2).sum()) / (2 * (1 - a))
        return total

    with torch.no_grad():
        assert loss(cond) < loss(c0)


# --- calibration against the exact posterior -----------------------------------------------------------------------
def test_calibration_against_the_exact_posterior() -> None:
    """LATINO with its Gaussian-prior settings (``conf/solver_model/latino_gaussian.yaml``: no clipping) on the exact
    consistency map, 2 images × 3 seeds at 32 px of circular Gaussian deblurring and random inpainting: MSE over an
    exact posterior sample's ≤ 2 (the issue's bound), the reconstructions' mean nearer the posterior mean than
    ``Aᵀy`` is, and a spread that is neither collapsed nor blown up (``benchmarks/CALIBRATION.md``, 4 × 4 at 64 px:
    1.309/1.406/0.231 with the per-task δ of conf/solver_task/latino_gauss_deblur.yaml, and
    1.509/1.686/0.373). Catches a data step of the wrong weight or sign and a re-noising that
    is missing or doubled."""
    from treg_exp.operators.inpaint import Inpainting
    from treg_exp.reporting.calibration import calibrate, make_problem

    problems = {
        "gauss_deblur": gaussian_deblur(kernel_size=15, kernel_sigma=2.0, padding="circular"),
        "inpaint_random": Inpainting(mask_type="random", drop_ratio=(0.3, 0.7)),
    }
    for task, operator in problems.items():
        result = calibrate(LATINO(clip=False), make_problem(operator, 2, 32, 3))
        print(task, result.as_dict())
        assert result.mse_ratio <= 2.0 and 0.5 <= result.spread_ratio <= 2.0, task
        assert result.bias2 < result.adjoint_bias2, task


# --- SDXL ----------------------------------------------------------------------------------------------------------
def test_sdxl_lora_and_latino_on_the_official_sdxl_grid() -> None:
    """On the tiny SDXL build: ``model.lora=random`` is loaded through ``StableDiffusionXLPipeline``'s LoRA loader
    and changes the UNet; LATINO runs the SDXL code's 8 custom timesteps (999, 874, …, 124) at one pass, decode and
    encode per step; LATINO-PRO never moves the pooled row SDXL packs as ``c``'s last row, nor the 4 leading tokens.
    Catches a LoRA loader that ignores SDXL's pipeline layout and a prompt update that reaches the pooled
    embedding (the official optimises the token embeddings only)."""
    from treg_exp.models.sdxl import RandomSDXLPrior
    from treg_exp.solvers.plug_and_play import BatchDenoiser

    prior, base = RandomSDXLPrior(lora="random").load("cpu"), RandomSDXLPrior().load("cpu")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = prior.embed_text([PROMPT])
    with torch.no_grad():
        assert (prior.eps(z, 500, cond) - base.eps(z, 500, cond)).abs().max() > 1e-2
    operator, y = problem()
    y = y.float()
    prior.reset_counter()
    grid = [999, 874, 749, 624, 499, 374, 249, 124]
    LATINO(timesteps=grid).solve(y, operator, prior, [PROMPT], generators(), (1, 3, RES, RES))
    assert (prior.counter["unet_rows"], prior.counter["decode_rows"], prior.counter["encode_rows"]) == (8, 9, 9)
    solver = LATINO(prompt_opt=True, prompt_opt_iters=1, prompt_opt_lr=0.02)
    with torch.no_grad():
        denoiser = BatchDenoiser("LATINO", y, prior, [PROMPT], generators(), (1, 3, RES, RES), 1.0, "", "mean")
        tuned, _ = solver.optimise_prompt(y, operator, denoiser, solver.start(y, operator, denoiser, 999))
    moved = (tuned - denoiser.cond).norm(dim=-1)[0]
    assert moved[-1] == 0 and torch.all(moved[:4] == 0) and moved[4:-1].min() > 0


def test_lora_staged_in_the_weights_folder_loads_offline(tmp_path) -> None:
    """A Hub LoRA staged as ``fetch_weights.py --out DIR`` stages it (``DIR/huggingface/hub``, the Hub cache layout)
    loads with downloads off from ``cache_dir=DIR``, and is the LoRA that was staged. Catches a loader that looks
    only online or only in local folders (the offline-cluster path)."""
    from treg_exp.models.stable_diffusion import StableDiffusionPrior

    repo, revision = "latent-consistency/lcm-lora-sdv1-5", "0" * 40
    cache = tmp_path / "huggingface" / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(revision)
    parts = build_tiny_components(0)
    save_random_lora(cache / "snapshots" / revision, parts["unet"], seed=3)
    staged = StableDiffusionPrior(model_id="unused", cache_dir=str(tmp_path), local_files_only=True, lora=repo)
    staged.fuse_lora(parts)
    reference = build_tiny_components(0)
    folder = tmp_path / "plain"
    save_random_lora(folder, reference["unet"], seed=3)
    StableDiffusionPrior(model_id="unused", lora=str(folder)).fuse_lora(reference)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = parts["unet"](z, 500, encoder_hidden_states=cond).sample
        want = reference["unet"](z, 500, encoder_hidden_states=cond).sample
        plain = build_tiny_components(0)["unet"](z, 500, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - plain).abs().max() > 1e-2


def test_sdxl_unet_weights_replace_the_unet(tmp_path) -> None:
    """``model.unet_weights`` (DMD2's distilled UNet in the official LATINO) loads a full UNet state dict into SDXL's
    UNet: the prior then computes the other weights' ε and counts as a consistency model; a missing Hub file with
    downloads off and a missing local file fail in one line. Catches weights that are read but not installed."""
    from treg_exp.models.sdxl import RandomSDXLPrior

    other = RandomSDXLPrior(seed=1).load("cpu")
    torch.save(other.unet.state_dict(), tmp_path / "unet.bin")
    prior = RandomSDXLPrior(unet_weights=str(tmp_path / "unet.bin")).load("cpu")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = prior.embed_text([PROMPT])
    with torch.no_grad():
        torch.testing.assert_close(prior.eps(z, 500, cond), other.eps(z, 500, cond), rtol=0, atol=0)
    assert prior.consistency_model and not other.consistency_model
    with pytest.raises(WeightsNotFoundError) as error:
        RandomSDXLPrior(unet_weights="tianweiy/DMD2/dmd2_sdxl_4step_unet_fp16.bin").load("cpu")
    assert "\n" not in str(error.value) and "--models dmd2_sdxl_unet" in str(error.value)
    with pytest.raises(UserError, match="file not found"):
        RandomSDXLPrior(unet_weights=str(tmp_path / "missing.bin")).load("cpu")


def test_latino_equals_the_official_sdxl_loop() -> None:
    """LATINO on the tiny SDXL build (float64, random LoRA standing for DMD2) on the SDXL code's 8 custom timesteps
    equals the transcription of the official ``LATINO`` model's loop to 1e-6, with the UNet conditioned as the code
    conditions it (hidden states, pooled ``text_embeds``, size/crop ``time_ids``) and the δ of the code's SR ×16
    branch (0.3·df above t = 300, 0.2·df below). Catches a grid, conditioning or boundary-condition departure on
    SDXL."""
    from treg_exp.models.sdxl import RandomSDXLPrior

    prior = RandomSDXLPrior(dtype="float64", lora="random").load("cpu")
    operator, y = problem()
    grid = [999, 874, 749, 624, 499, 374, 249, 124]
    solver = LATINO(timesteps=grid, delta_high=0.3, delta_low=0.2, delta_switch=300, delta_residual=True)
    with torch.no_grad():
        got = solver.solve(y, operator, prior, [PROMPT], generators(), (1, 3, RES, RES))
        hidden, pooled = prior.split_conditioning(prior.embed_text([PROMPT]))
        ids = torch.tensor([[RES, RES, 0, 0, RES, RES]], dtype=torch.float64)  # _get_add_time_ids at the image size
        keywords = {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        delta = lambda t, df: (0.3 if t > 300 else 0.2) * df  # noqa: E731 - the code's branch, one line
        want = official_latino(prior, y, operator, generators()[0], delta, custom=grid, conditioning=keywords)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def official_latino_pro(prior, y, operator, generator, rounds: int) -> torch.Tensor:
    """``main_LATINO_PRO.py`` in float64 on the tiny SDXL build: ``rounds`` SAPG rounds on the DMD2 grid 999, 749,
    499, 249, then the 8-step loop on 999, 874, …, 124 with the tuned token embeddings; δ of the code's fallback
    branch (0.01 above t = 200, 1 below). The prior samples the code draws between rounds for its logs are left out
    (they change nothing but the global RNG); noise from ``generator`` in the solver's order."""
    from diffusers import LCMScheduler

    unet, vae, s = prior.unet, prior.vae, prior.vae.config.scaling_factor
    scheduler = LCMScheduler.from_config(prior.scheduler_config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    hidden, pooled = prior.split_conditioning(prior.embed_text([PROMPT]))
    ids = torch.tensor([[RES, RES, 0, 0, RES, RES]], dtype=torch.float64)
    added = {"text_embeds": pooled, "time_ids": ids}

    def noise() -> torch.Tensor:
        return torch.randn((4, RES // 8, RES // 8), generator=generator, dtype=torch.float32)[None].double()

    def set_grid(grid: list[int]) -> None:
        scheduler.set_timesteps(len(grid))
        scheduler.timesteps = torch.tensor(grid, dtype=torch.long)

    def latino_step(latents, noise_uncond, t, next_t):  # noise_pred_cond_y_PRO, then scheduler.step
        alpha_t = scheduler.alphas_cumprod[t]
        z0_pred = torch.sqrt(1 / alpha_t) * (latents - torch.sqrt(1 - alpha_t) * noise_uncond)
        x = vae.decode(z0_pred / s).sample.clip(-1, 1)
        gamma = (0.01 if t > 200 else 1.0) * (1 - alpha_t) / SIGMA_Y**2
        mu_z = vae.encode(operator.prox_l2(y, x, float(1 / gamma)).clip(-1, 1)).latent_dist.mean * s
        noise_pred = torch.sqrt(1 / (1 - alpha_t)) * latents - torch.sqrt(alpha_t / (1 - alpha_t)) * mu_z
        denoised = scheduler.step(noise_pred, t, latents).denoised
        if next_t is None:
            return denoised
        alpha_prev = scheduler.alphas_cumprod[next_t]
        return alpha_prev.sqrt() * denoised + (1 - alpha_prev).sqrt() * noise()

    def project_onto_ball(theta, theta_0, radius):
        delta = theta - theta_0
        scaling_factor = torch.clamp(radius / (torch.norm(delta, p=2, dim=-1, keepdim=True) + 1e-8), max=1.0)
        return theta_0 + scaling_factor * delta

    mu_z = vae.encode(operator.adjoint(y).clip(-1, 1)).latent_dist.mean * s
    latents = scheduler.add_noise(mu_z, noise(), torch.tensor([999]))
    text_embeddings_0 = text_embeddings = hidden
    accumulated_grad = torch.zeros_like(text_embeddings)
    dmd2 = [999, 749, 499, 249]
    for j in range(rounds):
        set_grid(dmd2)
        for i, timestep in enumerate(dmd2):
            text_embeddings = text_embeddings.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                noise_uncond = unet(latents, timestep, encoder_hidden_states=text_embeddings, added_cond_kwargs=added)
                noise_uncond = noise_uncond.sample
            next_t = dmd2[i + 1] if i + 1 < len(dmd2) else None
            if i < len(dmd2) - 1:
                alpha_t = scheduler.alphas_cumprod[timestep]
                with torch.enable_grad():
                    z0_pred_c = torch.sqrt(1 / alpha_t) * (latents - torch.sqrt(1 - alpha_t) * noise_uncond)
                latents = latino_step(latents, noise_uncond.detach(), timestep, next_t)
                with torch.enable_grad():
                    alpha_t = scheduler.alphas_cumprod[next_t]
                    loss = -0.5 / (1 - alpha_t) * torch.norm(latents - torch.sqrt(alpha_t) * z0_pred_c) ** 2
                    gradients = torch.autograd.grad(loss, inputs=text_embeddings)[0]
                accumulated_grad += gradients / torch.norm(gradients, dim=-1, keepdim=True)
                accumulated_grad[0, :4] = 0
            else:
                step = 0.08 * max(0.9 ** max(0, j - 10), 0.001)
                text_embeddings = project_onto_ball(text_embeddings + step * accumulated_grad, text_embeddings_0, 15)
                latents = latino_step(latents, noise_uncond.detach(), timestep, None)
        latents = scheduler.add_noise(latents.detach(), noise(), torch.tensor([999]))
    grid = [999, 874, 749, 624, 499, 374, 249, 124]
    set_grid(grid)
    for i, timestep in enumerate(grid):
        noise_uncond = unet(latents, timestep, encoder_hidden_states=text_embeddings, added_cond_kwargs=added).sample
        latents = latino_step(latents, noise_uncond, timestep, grid[i + 1] if i + 1 < len(grid) else None)
    return (vae.decode(latents / s).sample / 2 + 0.5).clamp(0, 1) * 2 - 1


def test_latino_pro_equals_the_official_loop() -> None:
    """``prompt_opt`` on the tiny SDXL build (float64, random LoRA) equals the transcription of ``main_LATINO_PRO.py``
    over 2 SAPG rounds and the final 8-step loop to 1e-6: the surrogate's gradient, its row normalisation, the
    accumulated (never reset) direction with 4 frozen tokens, the step and its decay, the projection onto the ball,
    the re-noising between rounds and the final loop with the tuned embedding. Catches any of them changed."""
    from treg_exp.models.sdxl import RandomSDXLPrior

    prior = RandomSDXLPrior(dtype="float64", lora="random").load("cpu")
    operator, y = problem()
    grid = [999, 874, 749, 624, 499, 374, 249, 124]
    solver = LATINO(timesteps=grid, prompt_opt=True, prompt_opt_iters=2)
    with torch.no_grad():
        got = solver.solve(y, operator, prior, [PROMPT], generators(), (1, 3, RES, RES))
        want = official_latino_pro(prior, y, operator, generators()[0], rounds=2)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
