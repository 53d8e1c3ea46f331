"""DPS, DiffPIR and DDS at their defaults against float64 transcriptions of the official loops, on a tiny ADM.

The transcriptions are written from reading the official code (not copied): ``DPS2022/diffusion-posterior-sampling``
@effbde7 (``sample_condition.py``, ``guided_diffusion/gaussian_diffusion.py``: ``space_timesteps``,
``SpacedDiffusion``, ``DDPM.p_sample``; ``posterior_mean_variance.py``: ``epsilon`` mean, ``learned_range``
variance; ``condition_methods.py``: ``ps``), ``yuanzhi-zhu/DiffPIR`` @111d26e (``main_ddpir_deblur.py``,
``utils/utils_model.py``) and ``HJ-harry/DDS`` @509b140 (``solver_2d.py``, ``utils.CG``). Each runs batch 1 in
float64 with three changes only: the network is the prior's (``model_output``: ε and the variance channels), noise
comes from the image's generator in the order the solver draws it, and the data step of DiffPIR (the official FFT
formula of USRNet for a circular blur) is a dense solve of the same normal equations.

The prior: an ADM with learned σ (6 output channels) and random weights, saved in guided-diffusion's checkpoint key
layout and loaded back from that file, so the checkpoint conversion of ``treg_exp/models/adm.py`` is pinned too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.adm import AdmPrior, diffusers_to_official
from treg_exp.operators import gaussian_deblur
from treg_exp.operators.inpaint import Inpainting
from treg_exp.solvers import core
from treg_exp.solvers.dds import DDS
from treg_exp.solvers.diffpir import DiffPIR
from treg_exp.solvers.dps import DPS

RES = 16
SHAPE = (1, 3, RES, RES)
STEPS = 20
SIGMA_Y = 0.05
#: two levels (16 and 8 px), attention on the second, 1x1 skip convolution where the width changes, learn_sigma
ARCH = {
    "image_size": RES,
    "model_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": (1, 2),
    "attention_resolutions": (8,),
    "num_head_channels": 32,
}


@pytest.fixture(scope="module")
def adm(tmp_path_factory) -> AdmPrior:
    """The tiny ADM loaded from an official-layout ``.pt`` (float64)."""
    source = AdmPrior(name="adm_tiny", weights="random", seed=5, dtype="float64", **ARCH).load("cpu")
    path = tmp_path_factory.mktemp("adm") / "tiny_learned_sigma.pt"
    torch.save(diffusers_to_official(source.unet.state_dict(), source.architecture), path)
    prior = AdmPrior(name="adm_tiny", checkpoint=str(path), dtype="float64", **ARCH).load("cpu")
    prior.source = source  # for the layout test
    return prior


def make_problem(task: str = "blur"):
    """``blur``: a circular 5×5 Gaussian blur (σ = 1); ``inpaint``: a random mask; of a smooth image in [−1, 1],
    σ_y = 0.05."""
    if task == "blur":
        operator = gaussian_deblur(kernel_size=5, kernel_sigma=1.0, padding="circular", impl="fft", sigma_y=SIGMA_Y)
    else:
        operator = Inpainting(mask_type="random", sigma_y=SIGMA_Y).draw([_gen(13)], SHAPE)
    coarse = torch.rand(1, 3, 4, 4, generator=_gen(11), dtype=torch.float64) * 1.6 - 0.8
    x = torch.nn.functional.interpolate(coarse, size=(RES, RES), mode="bilinear", align_corners=False)
    return operator, operator.measure(x, [_gen(12)])


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(generator: torch.Generator) -> torch.Tensor:
    return seeding.randn(SHAPE[1:], [generator], dtype=torch.float64)


def _official_alphas_cumprod() -> np.ndarray:
    """guided-diffusion's ``get_named_beta_schedule("linear", 1000)``, cumprod of 1 − β (float64)."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """guided-diffusion's ``space_timesteps``, from its definition: ``"ddimN"`` = the integer stride giving N steps;
    else per equal section, ``count`` steps at a fractional stride ``(size − 1)/(count − 1)``, accumulated and
    rounded."""
    if isinstance(section_counts, str):
        count = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == count:
                return set(range(0, num_timesteps, stride))
        raise ValueError(count)
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return set(steps)


# --- the prior and the grids ------------------------------------------------------------------------------------
def test_official_layout_file_loads_to_the_same_network(adm) -> None:
    """The saved file has guided-diffusion's keys (``input_blocks``, ``qkv``, a 6-channel ``out.2``) and the prior
    loaded from it computes the same ``(ε, v)`` bit for bit as the network it was written from: a wrong split of the
    legacy ``qkv`` order or a swapped resblock name changes the output."""
    state = diffusers_to_official(adm.source.unet.state_dict(), adm.architecture)
    assert state["out.2.weight"].shape[0] == 6 and "middle_block.1.qkv.weight" in state
    z = torch.randn(SHAPE, generator=_gen(1), dtype=torch.float64)
    cond = adm.embed_text([""])
    eps, v = adm.model_output(z, 400, cond)
    eps_src, v_src = adm.source.model_output(z, 400, cond)
    assert adm.has_learned_variance and torch.equal(eps, eps_src) and torch.equal(v, v_src)
    assert float((eps - v).abs().max()) > 1e-3


def test_respaced_grid_is_space_timesteps() -> None:
    """``grid=respaced`` is ``space_timesteps(1000, [N])`` for every N (a closed-form ``round(k·999/(N − 1))`` differs
    at ties for 283 of them), e.g. 999, 979, 958, …, 20, 0 at 50; and ``grid=leading`` on the ADM schedule is its
    ``"ddimN"`` wherever that exists."""
    for n in range(1, 1001):
        assert core.respaced_timesteps(1000, n) == sorted(space_timesteps(1000, [n]), reverse=True)
    assert core.respaced_timesteps(1000, 50)[:3] == [999, 979, 958]
    schedule = AdmPrior(name="adm_tiny", weights="random", **ARCH).schedule
    for n in (10, 20, 25, 50, 100, 250, 1000):
        assert core.sampling_timesteps(schedule, n) == sorted(space_timesteps(1000, f"ddim{n}"), reverse=True)


# --- DPS --------------------------------------------------------------------------------------------------------
def official_dps(prior, operator, y, generator, num_steps=STEPS, scale=0.3, variance="learned_range"):
    """The official DPS run (``ddpm`` sampler, ``timestep_respacing: num_steps``, ``model_var_type: variance``,
    ``clip_denoised: True``, ``ps`` with ``scale``), float64."""
    base = _official_alphas_cumprod()
    use = space_timesteps(1000, [num_steps])
    betas, timestep_map, last = [], [], 1.0
    for i, alpha_cumprod in enumerate(base):  # SpacedDiffusion
        if i in use:
            betas.append(1.0 - alpha_cumprod / last)
            last = alpha_cumprod
            timestep_map.append(i)
    betas = np.array(betas)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    log_var_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
    coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
    cond = prior.embed_text([""])
    x = _noise(generator)
    for idx in reversed(range(len(betas))):
        noise = _noise(generator) if idx != 0 else None
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            eps, v = prior.model_output(x, timestep_map[idx], cond)
            pred_xstart = (np.sqrt(1.0 / ac[idx]) * x - np.sqrt(1.0 / ac[idx] - 1.0) * eps).clamp(-1.0, 1.0)
            norm = torch.linalg.norm(y - operator(pred_xstart))
            (grad,) = torch.autograd.grad(norm, x)
        sample = coef1[idx] * pred_xstart.detach() + coef2[idx] * x.detach()  # the mean
        if idx != 0:  # no noise at the last step (where fixed_small's log β̃ is −∞)
            if variance == "learned_range":
                frac = (v.detach() + 1.0) / 2.0
                log_variance = frac * np.log(betas[idx]) + (1.0 - frac) * log_var_clipped[idx]
            else:  # fixed_small
                log_variance = torch.full_like(sample, float(np.log(posterior_variance[idx])))
            sample = sample + torch.exp(0.5 * log_variance) * noise
        x = (sample - scale * grad).detach()
    return x


@pytest.mark.parametrize("variance", ["auto", "small"])
def test_dps_equals_the_official_loop(adm, variance: str) -> None:
    """DPS at its defaults (``ddpm_variance=auto`` → the learned range on this prior, ``grid=respaced``, ζ = 0.3,
    clamped x̂0) equals the official loop over 20 steps to 1e-6, and ``ddpm_variance=small`` equals it with
    ``fixed_small``. Catches β̃ where the learned variance belongs (they differ by far more here), the ``ddimN``
    grid, the variance of the wrong step, or the un-respaced β_t."""
    operator, y = make_problem()
    ours = DPS(num_steps=STEPS, ddpm_variance=variance).solve(y, operator, adm, [""], [_gen()], SHAPE)
    official = "learned_range" if variance == "auto" else "fixed_small"
    theirs = official_dps(adm, operator, y, _gen(), variance=official).clamp(-1.0, 1.0)
    assert float((ours.double() - theirs).abs().max()) < 1e-6
    other = official_dps(adm, operator, y, _gen(), variance="fixed_small" if variance == "auto" else "learned_range")
    assert float((ours.double() - other.clamp(-1.0, 1.0)).abs().max()) > 1e-3


def test_variance_choice_follows_the_prior_and_the_branches(adm) -> None:
    """``auto`` takes the learned variance on this ADM with one network branch and β̃ with two CFG branches (whose
    variance channels would disagree); ``learned`` with two branches is a one-line error before any pass."""
    assert DPS().uses_learned_variance(adm) and not DPS(cfg_scale=2.0).uses_learned_variance(adm)
    assert not DPS(sampler="ddim").uses_learned_variance(adm)
    adm.reset_counter()
    with pytest.raises(UserError, match="one network branch") as error:
        DPS(ddpm_variance="learned", cfg_scale=2.0).check_prior(adm)
    assert "\n" not in str(error.value) and adm.counter["unet_calls"] == 0


# --- DiffPIR ----------------------------------------------------------------------------------------------------
def dense_matrix(operator) -> torch.Tensor:
    """``A`` as a ``[n_out, n_in]`` float64 matrix (one column per pixel basis vector)."""
    n = int(np.prod(SHAPE[1:]))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *SHAPE[1:])
    return torch.cat([operator(column[None]).reshape(-1, 1) for column in basis], dim=1)


def official_diffpir(prior, operator, y, generator, num_steps=STEPS, lambda_=7.0, zeta=0.3, start="measurement"):
    """``main_ddpir_deblur.py`` (DiffPIR mode, ``pred_xstart``, quad grid, η = 0, U = 1, ``noise_level_img`` = σ_y/2
    on the [0, 1] scale) from its start ``x = √(ᾱ_999/ᾱ_{t_y})·y + √((1−ᾱ_999) − (ᾱ_999/ᾱ_{t_y})(1−ᾱ_{t_y}))·ξ``
    (``start="noise"``: its commented-out ``x = torch.randn_like(y)``), float64; the data step
    ``argmin ‖y − Ax‖² + ρ‖x − x̂0‖²`` (the deblurring script's FFT formula, the inpainting script's
    ``(m·y + ρx̂0)/(m + ρ)``) by a dense solve."""
    alphas_cumprod = torch.from_numpy(_official_alphas_cumprod())
    sqrt_a, sqrt_1m = alphas_cumprod.sqrt(), (1.0 - alphas_cumprod).sqrt()
    reduced = sqrt_1m / sqrt_a
    noise_level_img = SIGMA_Y / 2
    sigma = max(0.001, noise_level_img)
    rhos = lambda_ * sigma**2 / reduced**2
    matrix = dense_matrix(operator)
    gram, rhs_y = matrix.T @ matrix, matrix.T @ y.reshape(-1)
    t_start = 999
    t_y = int((reduced - 2 * noise_level_img).abs().argmin())
    sqrt_alpha_effective = sqrt_a[t_start] / sqrt_a[t_y]
    if start == "measurement":
        x = sqrt_alpha_effective * y + torch.sqrt(
            sqrt_1m[t_start] ** 2 - sqrt_alpha_effective**2 * sqrt_1m[t_y] ** 2
        ) * _noise(generator)
    else:
        x = _noise(generator)
    seq = [int(s) for s in np.sqrt(np.linspace(0, 1000**2, num_steps))]
    seq[-1] = seq[-1] - 1
    sigmas = [float(reduced[999 - s]) for s in seq]
    cond = prior.embed_text([""])
    for i in range(len(seq)):
        t_i = int((reduced - sigmas[i]).abs().argmin())
        eps_net = prior.model_output(x, t_i, cond)[0]
        x0 = ((x - sqrt_1m[t_i] * eps_net) / sqrt_a[t_i]).clamp(-1.0, 1.0)
        if seq[i] != seq[-1]:
            rho = float(rhos[t_i])
            system = gram + rho * torch.eye(gram.shape[0], dtype=torch.float64)
            x0 = torch.linalg.solve(system, rhs_y + rho * x0.reshape(-1)).reshape(SHAPE)
            t_im1 = int((reduced - sigmas[i + 1]).abs().argmin())
            eps = (x - sqrt_a[t_i] * x0) / sqrt_1m[t_i]
            x = (
                sqrt_a[t_im1] * x0
                + np.sqrt(1 - zeta) * sqrt_1m[t_im1] * eps
                + np.sqrt(zeta) * sqrt_1m[t_im1] * _noise(generator)
            )
    return x


@pytest.mark.parametrize(("task", "init"), [("blur", "measurement"), ("inpaint", "noise")])
def test_diffpir_equals_the_official_loop(adm, task: str, init: str) -> None:
    """DiffPIR (quad grid, λ = 7, ζ = 0.3, σ_n = σ_y/2, closed-form data step — FFT for the circular blur, the mask
    formula for inpainting —, the final state) equals the official loop over 20 steps to 1e-6, from the official
    start (the default, ``init=measurement``) and from noise. Catches the wrong start (checked to matter), a wrong
    ``t_y`` or noise variance of the start, a wrong ρ_t, ε̂ from the network instead of the data-consistent x̂0, or a
    missing clamp."""
    operator, y = make_problem(task)
    ours = DiffPIR(num_steps=STEPS, init=init).solve(y, operator, adm, [""], [_gen()], SHAPE)
    theirs = official_diffpir(adm, operator, y, _gen(), start=init).clamp(-1.0, 1.0)
    assert float((ours.double() - theirs).abs().max()) < 1e-6
    other = official_diffpir(adm, operator, y, _gen(), start="noise" if init == "measurement" else "measurement")
    assert float((ours.double() - other.clamp(-1.0, 1.0)).abs().max()) > 1e-4  # the start matters (0.0064·y)


# --- DDS --------------------------------------------------------------------------------------------------------
def official_dds(prior, operator, y, generator, num_steps=STEPS, eta=0.85, gamma=1.0, cg_iters=5, cg_eps=1e-5):
    """``solver_2d.py`` ``dds`` (σ_y > 0: CG on ``x + γAᵀAx = x̂0 + γAᵀy`` from x̂0, ``utils.CG``), float64."""
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    table = (1 - torch.cat([torch.zeros(1, dtype=torch.float64), betas])).cumprod(dim=0)  # compute_alpha: ᾱ_{t+1}

    def cg(a_fn, b, x):
        r = b - a_fn(x)
        p = r.clone()
        rsold = (r * r).sum()
        for _ in range(cg_iters):
            ap = a_fn(p)
            a = rsold / (p * ap).sum()
            x = x + a * p
            r = r - a * ap
            rsnew = (r * r).sum()
            if rsnew.sqrt().abs() < cg_eps:
                break
            p = r + (rsnew / rsold) * p
            rsold = rsnew
        return x

    skip = 1000 // num_steps
    times = range(0, 1000, skip)
    times_next = [-1, *times[:-1]]
    cond = prior.embed_text([""])
    x = _noise(generator)
    for i, j in zip(reversed(times), reversed(times_next), strict=True):
        at, at_next = table[i + 1], table[j + 1]
        et = prior.model_output(x, i, cond)[0]
        x0_t = (x - et * (1 - at).sqrt()) / at.sqrt()
        x0_t_hat = cg(lambda v: v + gamma * operator.adjoint(operator(v)), x0_t + gamma * operator.adjoint(y), x0_t)
        c1 = (1 - at_next).sqrt() * eta
        c2 = (1 - at_next).sqrt() * ((1 - eta**2) ** 0.5)
        if j not in (0, -1):  # at j = −1 the official draw is multiplied by c1 = 0
            x = at_next.sqrt() * x0_t_hat + c1 * _noise(generator) + c2 * et
        else:
            x = x0_t_hat
    return x


@pytest.mark.parametrize(("task", "gamma"), [("blur", 1.0), ("inpaint", 2.0)])
def test_dds_equals_the_official_loop(adm, task: str, gamma: float) -> None:
    """DDS (η = 0.85, 5 CG iterations, the ``ddimN`` grid 950 … 0; γ = 1 as the defaults, and γ = 2, which exercises
    the λ = 1/γ rescaling of the system and of the tolerance) equals the official loop over 20 steps to 1e-6: catches
    DDIM's η in place of DDS's noise split, a wrong CG system or start, or noise added on the step to t = 0."""
    operator, y = make_problem(task)
    ours = DDS(num_steps=STEPS, gamma=gamma).solve(y, operator, adm, [""], [_gen()], SHAPE)
    theirs = official_dds(adm, operator, y, _gen(), gamma=gamma).clamp(-1.0, 1.0)
    assert float((ours.double() - theirs).abs().max()) < 1e-6
