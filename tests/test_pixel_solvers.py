"""DDS, DiffPIR and RED (``treg_exp.solvers.{dds,diffpir,red}``) and the operators' closed-form data step.

Checks: the closed-form ``(AᵀA + λI)⁻¹`` equals CG; DiffPIR's quad grid is the official one (DDS and DiffPIR equal
float64 transcriptions of the official loops in ``tests/test_official_pixel_parity.py``); RED-GD equals a
transcription with the Gaussian prior's denoiser written from its definition; batching, determinism and per-image
costs; calibration against the exact posterior of the Gaussian prior; RED-ADMM's fixed point against an independent
solve of its linear system, and how close that is to the posterior mean; one run of each on the tiny latent model.

Everything runs at 32 px on the exact Gaussian prior (float64), or at 64 px on ``model=tiny``, with few steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianPrior, spectral_filter
from treg_exp.operators import MotionBlur, SeparableDownsample, gaussian_deblur, svd_downsample, svd_gaussian_blur
from treg_exp.operators.cg import conjugate_gradient
from treg_exp.operators.inpaint import Inpainting
from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, calibrate, make_problem
from treg_exp.solvers.dds import DDS
from treg_exp.solvers.diffpir import DiffPIR, diffpir_plan, quad_timesteps
from treg_exp.solvers.red import RED, timestep_for_sigma

ROOT = Path(__file__).resolve().parents[1]
RES = 32
SHAPE1 = (1, 3, RES, RES)


@pytest.fixture(scope="module")
def prior() -> GaussianPrior:
    return GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")


def _gens(batch: int = 1, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def _problem(prior: GaussianPrior, operator, batch: int = 1, seed: int = 3):
    """Prior draws ``x`` ``[B, 3, 32, 32]``, the operator drawn per image, and ``y``."""
    x = prior.sample(prior.embed_text([""] * batch), _gens(batch, seed), RES, RES)
    operator = operator.draw(_gens(batch, seed + 100), x.shape)
    return x, operator, operator.measure(x, _gens(batch, seed + 200))


def _config_solver(name: str, **overrides):
    """``conf/solver/<name>.yaml`` merged with ``conf/solver_model/<name>_gaussian.yaml`` (as Hydra merges them)."""
    cfg = OmegaConf.load(ROOT / f"conf/solver/{name}.yaml")
    model_cfg = ROOT / f"conf/solver_model/{name}_gaussian.yaml"
    if model_cfg.exists():
        cfg = OmegaConf.merge(cfg, OmegaConf.load(model_cfg))
    return instantiate(OmegaConf.merge(cfg, overrides))


# --- the closed-form data step --------------------------------------------------------------------------------
def _closed_form_cases():
    shape = (2, 3, RES, RES)
    return {
        "circular_gauss": gaussian_deblur(kernel_size=9, kernel_sigma=2.0, padding="circular", impl="fft"),
        "circular_motion": MotionBlur(kernel_size=15, padding="circular", impl="fft").draw(_gens(2, 1), shape),
        "inpaint_random": Inpainting(mask_type="random").draw(_gens(2, 1), shape),
        "sr4_bicubic": SeparableDownsample(4),
        "svd_blur": svd_gaussian_blur(kernel_size=15, kernel_sigma=2.0),
        "svd_blur_consistent": svd_gaussian_blur(kernel_size=15, kernel_sigma=2.0, svd_pairing="consistent"),
        "svd_sr4": svd_downsample(4),
    }


@pytest.mark.parametrize("name", sorted(_closed_form_cases()))
def test_closed_form_data_step_equals_cg(name: str) -> None:
    """``prox_l2``'s closed form (FFT for circular blur, ``(m·y + ρx̂0)/(m + ρ)`` for masks, Gram eigenvectors for
    separable SR/SVD) equals CG on ``(AᵀA + ρI)x = Aᵀy + ρx̂0`` run to convergence, to 1e-6 relative, at the ρ of
    DiffPIR's late steps (where CG converges quickly) — a wrong eigenvalue probe, flip or conjugation fails it."""
    operator = _closed_form_cases()[name]
    assert operator.has_closed_form_prox()
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 3, RES, RES, generator=gen, dtype=torch.float64)
    y = operator(torch.randn(2, 3, RES, RES, generator=gen, dtype=torch.float64))
    for rho in (1.0, 0.3):
        closed = operator.prox_l2(y, x0, rho)
        reference, residual = operator.solve_damped(y, x0, rho, iters=500, tol=1e-10)
        assert float(residual.max()) < 1e-10
        assert float((closed - reference).norm() / reference.norm()) < 1e-6


def test_reflect_blur_has_no_closed_form_and_runs_cg() -> None:
    """Reflect padding is not circulant: ``prox_l2`` falls back to ``cg_iters`` CG iterations (the same iterates as
    ``solve_damped``)."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0, padding="reflect", impl="fft")
    assert not operator.has_closed_form_prox()
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 3, RES, RES, generator=gen, dtype=torch.float64)
    y = operator(torch.randn(1, 3, RES, RES, generator=gen, dtype=torch.float64))
    assert torch.equal(operator.prox_l2(y, x0, 0.1, cg_iters=7), operator.solve_damped(y, x0, 0.1, 7)[0])


# --- the official grid (the official loops: tests/test_official_pixel_parity.py) ----------------------------------
def test_quad_grid_is_the_official_one() -> None:
    """``skip_type=quad``: 999, 899 (= 999 − ⌊√(10⁶/99)⌋), 857 (⌊√(2·10⁶/99)⌋ = 142) … 0, distinct, as the official
    ``np.sqrt(np.linspace(0, T², N))`` with the last one lowered by 1."""
    grid = quad_timesteps(1000, 100)
    assert grid[:3] == [999, 899, 857] and grid[-1] == 0 and len(set(grid)) == 100
    assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    plan = diffpir_plan(GaussianPrior().schedule, 100)
    assert [s.t for s in plan] == grid and plan[-1].is_last


def test_red_gd_matches_transcription(prior) -> None:
    """RED-GD equals ``x ← x − μ[Aᵀ(Ax − y) + α(x − D_σ(x))]`` from ``x = Aᵀy`` with ``α = σ_y²/σ²`` and the Gaussian
    prior's denoiser written from its definition, ``D_σ(x) = μ + P/(P + σ²)·(x − μ)`` per frequency, to 1e-6
    (float32 output): catches a sign error (the abstract prints −α), a wrong σ ↔ t scaling (x_t = √ᾱ·x) or a
    wrong α."""
    _, operator, y = _problem(prior, gaussian_deblur(kernel_size=9, kernel_sigma=2.0, impl="svd"))
    t = 40
    alpha_bar = float(prior.schedule.alphas_cumprod[t])
    sigma2 = (1 - alpha_bar) / alpha_bar
    assert timestep_for_sigma(prior.schedule, sigma2**0.5)[0] == t
    ours = RED(num_steps=15, sigma=sigma2**0.5, step_size=0.8).solve(y, operator, prior, [""], _gens(), SHAPE1)
    power = prior.power_spectrum(RES, RES, dtype=torch.float64)
    alpha = operator.sigma_y**2 / sigma2
    x = operator.adjoint(y)
    for _ in range(15):
        denoised = spectral_filter(x, power / (power + sigma2))  # μ = 0 for the null prompt
        x = x - 0.8 * (operator.adjoint(operator(x) - y) + alpha * (x - denoised))
    assert float((ours.double() - x.clamp(-1, 1)).abs().max()) < 1e-6


# --- batching, determinism, costs -------------------------------------------------------------------------------
SOLVERS = {
    "dds": lambda: DDS(num_steps=6),
    "diffpir": lambda: DiffPIR(num_steps=6),
    "diffpir_sub": lambda: DiffPIR(num_steps=6, sub_iters=2, output="x0"),
    "red_gd": lambda: RED(num_steps=5),
    "red_admm": lambda: RED(method="admm", num_steps=5, inner_iters=2, sigma_schedule="annealed"),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_of_two_equals_two_runs_and_seeds(prior, name: str) -> None:
    """Per-image masks and generators: a batch of 2 computes what two runs of 1 compute (1e-6: float32 outputs of
    float64 runs), the same seed gives
    the same bits, and for the stochastic samplers another seed gives another result."""
    x, operator, y = _problem(prior, Inpainting(mask_type="random"), batch=2)
    solver = SOLVERS[name]()
    batched = solver.solve(y, operator, prior, ["", ""], _gens(2, 5), x.shape)
    singles = [
        solver.solve(
            y[b : b + 1], operator.with_params({"mask": operator.mask[b : b + 1]}), prior, [""], _gens(1, 5 + b), SHAPE1
        )
        for b in range(2)
    ]
    assert float((batched.double() - torch.cat(singles).double()).abs().max()) < 1e-6
    again = solver.solve(y, operator, prior, ["", ""], _gens(2, 5), x.shape)
    assert torch.equal(batched, again)
    if not name.startswith("red"):
        assert not torch.equal(batched, solver.solve(y, operator, prior, ["", ""], _gens(2, 6), x.shape))


@pytest.mark.parametrize(
    ("name", "unet", "decode", "encode"),
    [
        ("dds", 6, 6, 5),  # N passes, N decodes, N − 1 encodes (none after the last step)
        ("diffpir", 5, 6, 6),  # output=state: no pass at t = 0; N − 1 decodes of x̂0 + the output's decode; the
        # encodes: N − 1 of x̂0(y) + 1 of the start (init=measurement)
        ("diffpir_sub", 11, 11, 11),  # U = 2 on the N − 1 data steps, + the final x̂0
        ("red_gd", 5, 5, 5),  # one D_σ (encode, pass, decode) per iteration
        ("red_admm", 10, 10, 10),  # inner_iters = 2 per iteration
    ],
)
def test_costs_per_image_and_no_backward(prior, monkeypatch, name: str, unet: int, decode: int, encode: int) -> None:
    """Network, decoder and encoder passes per image match each method's definition (module docstrings), for a
    batch of 2 (rows = 2 × calls); no pass runs with gradients enabled or on a tensor that needs a gradient (DDS and
    DiffPIR take no network gradient; RED's update is the denoiser residual, not a backward pass)."""
    x, operator, y = _problem(prior, Inpainting(mask_type="random"), batch=2)
    grad_seen: list[bool] = []
    original = prior.eps

    def watched(z_t, t, cond):
        grad_seen.append(torch.is_grad_enabled() or z_t.requires_grad)
        return original(z_t, t, cond)

    monkeypatch.setattr(prior, "eps", watched)
    prior.reset_counter()
    out = SOLVERS[name]().solve(y, operator, prior, ["", ""], _gens(2), x.shape)
    counts = prior.counter
    assert (counts["unet_calls"], counts["decode_calls"], counts["encode_calls"]) == (unet, decode, encode)
    assert counts["unet_rows"] == 2 * unet
    assert not any(grad_seen) and not out.requires_grad


def test_bad_options_are_one_line_user_errors() -> None:
    for build in (
        lambda: DDS(eta=1.5),
        lambda: DDS(gamma=0),
        lambda: DiffPIR(zeta=2.0),
        lambda: DiffPIR(skip_type="cosine"),
        lambda: DiffPIR(output="mean"),
        lambda: DiffPIR(init="y"),
        lambda: RED(method="pgd"),
        lambda: RED(sigma_schedule="annealed", sigma=0.5, sigma_max=0.1),
        lambda: RED(step_size=-1.0),
    ):
        with pytest.raises(UserError) as error:
            build()
        assert "\n" not in str(error.value)


# --- calibration against the exact posterior ------------------------------------------------------------------
@pytest.fixture(scope="module")
def problems():
    """gauss_deblur (TReg's SVD blur, 15×15 σ = 2, consistent pairing) and inpaint_random at 32 px: 2 prior draws,
    3 exact samples."""
    return {
        "gauss_deblur": make_problem(
            gaussian_deblur(kernel_size=15, kernel_sigma=2.0, impl="svd", svd_pairing="consistent"), 2, RES, 3
        ),
        "inpaint_random": make_problem(Inpainting(mask_type="random", drop_ratio=(0.3, 0.7)), 2, RES, 3),
    }


#: ``(mse_ratio, spread_ratio, bias2)`` bounds per solver and problem, with the settings of conf/solver/<name>.yaml
#: + conf/solver_model/<name>_gaussian.yaml. Measured (same problems): DDS 0.790/0.539/0.060 and 0.787/0.605/0.046;
#: DiffPIR 0.927/0.843/0.008 and 1.088/1.109/0.094; RED-ADMM 0.492/0/0.000 and 0.482/0/0.006.
BOUNDS = {
    "dds": {"mse": (0.6, 1.0), "spread": (0.35, 0.8), "bias2": 0.15},
    "diffpir": {"mse": (0.75, 1.25), "spread": (0.6, 1.4), "bias2": 0.2},
    "red": {"mse": (0.4, 0.6), "spread": (0.0, 1e-9), "bias2": 0.05},
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
def test_calibration_against_exact_posterior(problems, name: str, task: str) -> None:
    """Each solver against the exact posterior (``treg_exp.reporting.calibration``), with bounds a wrong update breaks:

    - ``bias2`` (squared distance of the reconstructions' mean from the posterior mean, in posterior variances)
      below ``Aᵀy``'s and below the bound: a data step with the wrong sign or weight, an ε̂ taken from the network
      where it must be recomputed (DiffPIR), or a wrong σ ↔ t scaling (RED) moves the mean by many variances;
    - ``spread`` (the reconstructions' variance over the posterior's) in range: DDS's re-noise written with DDIM's
      σ(η) instead of ``η√(1−ᾱ_prev)`` or DiffPIR's ζ applied to ε̂ instead of ξ collapse or inflate it; RED is
      deterministic, so anything above 0 is randomness that leaked in;
    - ``mse`` (over an exact sample's) in range: ≈ 0.5 is the posterior mean (RED's fixed point), ≈ 1 an exact sampler.
    """
    problem = problems[task]
    result = calibrate(_config_solver(name), problem)
    bounds = BOUNDS[name]
    print(f"{name} {task}: {result.as_dict()}")
    assert bounds["mse"][0] <= result.mse_ratio <= bounds["mse"][1]
    assert bounds["spread"][0] <= result.spread_ratio <= bounds["spread"][1]
    assert result.bias2 <= bounds["bias2"] and result.bias2 < result.adjoint_bias2


# --- RED's fixed point ------------------------------------------------------------------------------------------
def red_fixed_point(problem, sigma: float) -> tuple[torch.Tensor, float]:
    """The RED fixed point on the Gaussian prior by an independent solve, and the σ̄_t it is computed at.

    ``D_σ(x) = μ + W(x − μ)``, ``W = P/(P + σ̄²)`` per frequency, is linear, so ``Aᵀ(Ax − y) + α(x − D_σ(x)) = 0`` with
    ``α = σ_y²/σ̄²`` is ``(AᵀA + α(I − W)) x = Aᵀy + α(I − W)μ``: solved here by plain CG (float64, to 1e-11
    relative), with ``I − W`` applied by FFT from the prior's power spectrum — not through ε, Tweedie or ADMM.
    """
    prior, operator = problem.prior, problem.operator
    _, alpha_bar = timestep_for_sigma(prior.schedule, sigma)
    sigma2 = (1.0 - alpha_bar) / alpha_bar
    alpha = operator.sigma_y**2 / sigma2
    power = prior.power_spectrum(RES, RES, dtype=torch.float64)
    residual_gain = sigma2 / (power + sigma2)
    mu = prior.mean_image(prior.embed_text(problem.prompts), RES, RES)
    rhs = operator.adjoint(problem.y) + alpha * spectral_filter(mu, residual_gain)
    b_norm = float(rhs.norm())
    x, res = conjugate_gradient(
        lambda v: operator.normal(v) + alpha * spectral_filter(v, residual_gain),
        rhs,
        torch.zeros_like(rhs),
        3000,
        1e-11 * b_norm,
    )
    assert float(res.max()) <= 1e-11 * b_norm
    return x, sigma2**0.5


def test_red_admm_converges_to_its_fixed_point(problems) -> None:
    """RED-ADMM (σ = 0.3, 100 iterations, closed-form x-step): the successive change ‖x_k − x_{k−1}‖/‖x_{k−1}‖ falls
    below 1e-8 and the last iterate equals the independently solved fixed point of ``Aᵀ(Ax − y) + α(x − D_σ(x)) = 0``
    to 1e-6 relative — a wrong dual update, v-step or x-step converges elsewhere or not at all. (Smaller σ converges
    more slowly: at σ = 0.1 the change is 1e-6 after 150 iterations; at 0.03, 2e-4 after 300.)"""
    problem = problems["gauss_deblur"]
    changes: list[float] = []
    out = RED(method="admm", sigma=0.3, num_steps=100).solve(
        problem.y,
        problem.operator,
        problem.prior,
        problem.prompts,
        seeding.batch_generators(0, problem.ids, seeding.SOLVER),
        problem.x.shape,
        callback=lambda k, values: changes.append(float(values["red/change"].max())),
    )
    reference, _ = red_fixed_point(problem, 0.3)
    assert changes[-1] < 1e-8 and changes[-1] < 1e-4 * changes[0]
    reference = reference.clamp(-1, 1)
    assert float((out.double() - reference).norm() / reference.norm()) < 1e-6


@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
def test_red_fixed_point_tends_to_the_posterior_mean(problems, task: str) -> None:
    """On the Gaussian prior RED's fixed point (``α = σ_y²/σ̄²``) is the posterior mean under ``N(μ, Σ + σ̄²I)``, so
    as σ → 0 it tends to the exact posterior mean ``m``. Measured distance ``‖x* − m‖²`` in posterior variances
    (the calibration's bias2 scale) and ``‖x* − m‖/‖m − μ‖`` at 32 px (this test's problems):

    - gauss_deblur: σ̄ 0.029 (t = 0, the smallest): 2.1e-6 and 0.11 %; σ̄ 0.098: 2.5e-4 and 1.2 %; σ̄ 0.30: 1.3e-2
      and 8.3 %;
    - inpaint_random: σ̄ 0.029: 1.2e-4 and 0.54 %; σ̄ 0.098: 9.9e-3 and 4.9 %; σ̄ 0.30: 0.15 and 19 %.

    Asserted: at the smallest σ̄ within 1e-3 posterior variances and 1 % of ``‖m − μ‖``, and the distance grows with σ̄
    (a fixed point that did not depend on σ, or an α with the wrong power of σ, fails).
    """
    problem = problems[task]
    m = problem.posterior_mean
    mu = problem.prior.mean_image(problem.prior.embed_text(problem.prompts), RES, RES)
    tau = float(((problem.posterior_samples - m) ** 2).flatten(2).sum(-1).mean(0).sum())
    distances = []
    for sigma in (0.03, 0.1, 0.3):
        x, sigma_eff = red_fixed_point(problem, sigma)
        bias2 = float(((x - m) ** 2).sum()) / tau
        relative = float((x - m).flatten(1).norm(dim=1).max() / (m - mu).flatten(1).norm(dim=1).min())
        print(f"{task} σ̄ {sigma_eff:.3f}: bias2 {bias2:.2e}, relative {relative:.2e}")
        distances.append((bias2, relative))
    assert distances[0][0] < 1e-3 and distances[0][1] < 1e-2
    assert distances[0][0] < distances[1][0] < distances[2][0]


# --- the latent path and the configs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "solver",
    [DDS(num_steps=3), DiffPIR(num_steps=3), RED(num_steps=2), RED(method="admm", num_steps=2)],
    ids=["dds", "diffpir", "red_gd", "red_admm"],
)
def test_latent_prior_runs_through_decode_step_encode(solver) -> None:
    """On ``model=tiny`` (SD-shaped, random weights, 64 px images, 4×8×8 latents) each solver acts through the
    decoder and encoder around its pixel-space step: finite ``[1, 3, 64, 64]`` output, and decodes and encodes ran."""
    from treg_exp.models.tiny import TinyStableDiffusionPrior

    tiny = TinyStableDiffusionPrior(dtype="float32").load("cpu")
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0, impl="svd")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = operator.measure(x, _gens())
    tiny.reset_counter()
    out = solver.solve(y, operator, tiny, ["a photo"], _gens(), (1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert tiny.counter["decode_calls"] > 0 and tiny.counter["encode_calls"] > 0 and tiny.counter["unet_calls"] > 0


@pytest.mark.parametrize("name", ["dds", "diffpir", "red"])
def test_configs_instantiate_with_paper_defaults(name: str) -> None:
    """conf/solver/<name>.yaml builds the solver with the official defaults; every solver_task/solver_model file of
    it is a ``# @package solver`` fragment that merges into a valid solver."""
    solver = instantiate(OmegaConf.load(ROOT / f"conf/solver/{name}.yaml"))
    if name == "dds":
        assert (solver.num_steps, solver.eta, solver.gamma, solver.cg_iters, solver.cg_tol) == (50, 0.85, 1.0, 5, 1e-5)
    elif name == "diffpir":
        assert (solver.num_steps, solver.rho_lambda, solver.zeta, solver.skip_type) == (100, 7.0, 0.3, "quad")
        assert (solver.sigma_n_scale, solver.sigma_n_min, solver.clip_x0, solver.output) == (0.5, 0.001, True, "state")
    else:
        assert solver.method == "gd" and solver.alpha is None
    fragments = [
        *(ROOT / "conf/solver_task").glob(f"{name}_*.yaml"),
        *(ROOT / "conf/solver_model").glob(f"{name}_*.yaml"),
    ]
    assert fragments
    for path in fragments:
        assert path.read_text().startswith("# @package solver")
        merged = OmegaConf.merge(OmegaConf.load(ROOT / f"conf/solver/{name}.yaml"), OmegaConf.load(path))
        assert type(instantiate(merged)) is type(solver)
