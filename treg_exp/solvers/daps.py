"""DAPS: decoupled annealing posterior sampling (Zhang et al., CVPR 2025), and LatentDAPS on latent priors.

Read from the official code ``zhangbingliang2019/DAPS@098df6b`` (``sampler.py`` ``DAPS`` / ``LatentDAPS``,
``cores/mcmc.py`` ``MCMCSampler``, ``cores/scheduler.py`` ``EDMScheduler`` / ``DiffusionPFODE``, ``configs/``).
Notation (EDM): ``x_σ = x0 + σ·n``, the denoiser ``D(x; σ)``, the operator ``A`` with measurement ``y``. The
annealing grid is EDM's ``poly-ρ`` grid ``σ_i = (σ_max^{1/ρ} + i/N·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, i = 0 … N, with
its last point replaced by 0 (the code's ``discretize``). From ``x = σ_0·ξ``, for i = 0 … N−1::

    x̂0 = ODE(x; σ_i → σ_min')       Euler on the poly-ρ grid of ``ode_steps`` steps from σ_i to ``ode_sigma_min``:
                                     x ← x + (σ′ − σ)·(x − D(x; σ))/σ    (the probability-flow ODE, no gradient)
    x0 = x̂0; per MCMC step k:        s = −∇‖A(x0) − y‖²/τ² + (x̂0 − x0)/σ_i²      (the code's "gaussian" prior term:
                                     (x_t − x0)/σ² + (x̂0 − x_t)/σ²)
       langevin:  x0 ← x0 + η·s + √(2η)·ε
       hmc:       v ← m·v + √η·s + √(2(1−m))·ε;  x0 ← x0 + √η·v      (v ~ N(0, I) drawn per annealing step)
    x = x0 + σ_{i+1}·ε               (σ_N = 0: the output is the last MCMC sample)

with the step ``η = lr·(1 + i/(N+1)·(lr_min_ratio − 1))`` (the code's linear decay, ``ratio = step / (N+1)``).
The likelihood term is ``‖A(x) − y‖²/τ²`` (squared norm, no ½: τ acts as σ_y/√2); ``τ = 0.01`` in every official
config whatever the noise. ``tau: null`` uses ``√2·σ_y``, the exact likelihood (the Gaussian-prior calibration).

LatentDAPS (a latent prior: ``latent_factor > 1``; the code's ``LatentDAPS`` with ``sd_edm_daps``): the same loop on
the latent ``z``, the likelihood through the decoder ``‖A(D(z)) − y‖²`` with its gradient clamped to [−1, 1]
elementwise (``LatentWrapper.gradient``), the ODE's denoiser with CFG between ``c_∅`` and the prompt (the SD code's
``guidance_scale`` 7.5), and the output ``D(z)``. ``solver=latent_daps`` carries the code's Stable Diffusion values.

The denoiser of our VP (DDPM-table) priors at an EDM level σ: ``D(x; σ) = x − σ̄_t·ε̂(√ᾱ_t·x, t)`` at the table's
timestep t whose ``σ̄_t = √((1−ᾱ_t)/ᾱ_t)`` is nearest σ (:func:`treg_exp.solvers.core.edm_denoise`, as RED's
denoiser level). Departure: the official wrappers evaluate the network at the continuous time of a β-line between
table points (``VPPrecond``: ``c_noise = 999·t(σ)``); with 1000 levels the nearest σ̄_t is within 2.5 % of σ over
the annealing range [0.1, 100] on ADM's and SD's tables, 15–20 % off at the ODE's inner points below 0.1, and the
level σ̄_0 (0.01 ADM, 0.029 SD) for any σ below it (``tests/test_daps.py``). The Euler coefficients use the grid's
own σ. The SD code's wrapper also runs at 512 px and resizes the decoded image bilinearly to 256 before ``A`` (ours
decodes at the data size), uses one fixed prompt ('a natural looking image'; ours: the image's, as ``prompt=``) and
fp16. Other departures: noise is drawn per image from its generator (the code: the global RNG); a NaN sample is not
replaced by zeros (the code's early stop); pixel priors only run with an ε/v table (rectified-flow priors are refused
in one line), and σ_max may not exceed the table's noisiest level σ̄_T by more than 5 % (refused in one line: the
pixel default 100 on SD's table, σ̄_T = 14.6 — ``model=gaussian`` runs at 10, ``conf/solver_model/daps_gaussian.yaml``).

Budgets (the paper's NFE = annealing steps × ODE steps): DAPS-1K = 200 × 5 (the pixel default), DAPS-100 = 50 × 2
(the latent configs' grid): ``solver.annealing_steps`` and ``solver.ode_steps``, or the presets
``+solver/budget=daps_100`` / ``+solver/budget=daps_1k`` (``conf/solver/budget/``).

Cost per image: ``annealing_steps × ode_steps`` network calls (2 rows with CFG); MCMC steps need no network on pixel
priors and one decode with its backward pass each on latent priors (plus one decode of the output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers import core
from treg_exp.solvers.base import Callback, Solver

MCMC_ALGORITHMS = ("langevin", "hmc")
#: σ_max may exceed the table's top level σ̄_T by this factor (the nearest-level lookup's own error) before refusal
TABLE_TOP_TOLERANCE = 1.05


def edm_grid(num_steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """EDM's ``poly-ρ`` grid: ``num_steps + 1`` levels from ``sigma_max`` down to ``sigma_min`` (both included)."""
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return [(a + i / num_steps * (b - a)) ** rho for i in range(num_steps + 1)]


def likelihood_gradient(
    prior: DiffusionPrior,
    operator: LinearOperator,
    y: torch.Tensor,
    x0: torch.Tensor,
    latent: bool,
    gradient_clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MCMC step's data term: ``(∇_x Σ_b ‖A(x_b) − y_b‖², the norms² [B])`` at ``x0`` ``[B, C, h, w]`` (through
    the decoder ``A(D(z))`` on latent priors, the gradient clamped to ``[−c, c]`` there: the code's ``LatentWrapper``).
    ``y`` in ``x0``'s dtype."""
    with torch.enable_grad():
        x_in = x0.detach().requires_grad_(True)
        image = prior.decode(x_in).to(x0.dtype) if latent else x_in
        losses = (operator(image).to(x0.dtype) - y).flatten(1).pow(2).sum(1)
        (grad,) = torch.autograd.grad(losses.sum(), x_in)
    if latent and gradient_clip is not None:
        grad = grad.clamp(-gradient_clip, gradient_clip)
    return grad, losses.detach()


class DAPS(Solver):
    """DAPS / LatentDAPS (module docstring).

    Args:
        annealing_steps: N, annealing levels (200: DAPS-1K; 50: DAPS-100 and the latent configs).
        sigma_max, sigma_min: the annealing grid's ends (100, 0.1 pixel; 10, 0.1 latent).
        ode_steps: Euler steps of the PF-ODE per level (5: DAPS-1K; 2: DAPS-100 / latent).
        ode_sigma_min: where the ODE stops (0.01 pixel, 0.001 latent).
        rho: ρ of the poly-ρ grids (7).
        mcmc: ``langevin`` or ``hmc`` (damped Hamiltonian).
        mcmc_steps: MCMC steps per level.
        lr: η, the MCMC step at the first level; lr_min_ratio: its ratio at the last.
        tau: τ of the likelihood term ``‖A x − y‖²/τ²``; ``None``: ``√2·σ_y``.
        momentum: m of HMC.
        gradient_clip: latent priors: clamp the likelihood gradient to ``[−c, c]`` (1.0, the code's); ``None``: none.
        cfg_scale: CFG scale of the denoiser (0: ``c_∅`` only; the SD code's 7.5).
        null_prompt: the text of ``c_∅``.
    """

    def __init__(
        self,
        annealing_steps: int = 200,
        sigma_max: float = 100.0,
        sigma_min: float = 0.1,
        ode_steps: int = 5,
        ode_sigma_min: float = 0.01,
        rho: float = 7.0,
        mcmc: str = "langevin",
        mcmc_steps: int = 100,
        lr: float = 1e-4,
        lr_min_ratio: float = 0.01,
        tau: float | None = 0.01,
        momentum: float = 0.9,
        gradient_clip: float | None = 1.0,
        cfg_scale: float = 0.0,
        null_prompt: str = "",
    ) -> None:
        for key, value in (("annealing_steps", annealing_steps), ("ode_steps", ode_steps)):
            if int(value) < 1:
                raise UserError(f"solver.{key} must be at least 1, got {value}")
        if int(mcmc_steps) < 0:
            raise UserError(f"solver.mcmc_steps must be >= 0, got {mcmc_steps}")
        if not 0 < sigma_min < sigma_max or not 0 < ode_sigma_min < sigma_max:
            raise UserError(
                f"solver: need 0 < sigma_min < sigma_max and 0 < ode_sigma_min < sigma_max, got sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}, ode_sigma_min={ode_sigma_min}"
            )
        if mcmc not in MCMC_ALGORITHMS:
            raise UserError(f"solver.mcmc must be one of {MCMC_ALGORITHMS}, got {mcmc!r}")
        if not lr > 0 or not lr_min_ratio >= 0:
            raise UserError(f"solver.lr must be > 0 and solver.lr_min_ratio >= 0, got {lr} and {lr_min_ratio}")
        if tau is not None and not tau > 0:
            raise UserError(f"solver.tau must be > 0 (or null: √2·σ_y), got {tau}")
        if not 0 <= momentum < 1:
            raise UserError(f"solver.momentum must be in [0, 1), got {momentum}")
        if gradient_clip is not None and not gradient_clip > 0:
            raise UserError(f"solver.gradient_clip must be > 0 (or null), got {gradient_clip}")
        if not cfg_scale >= 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        self.annealing_steps = int(annealing_steps)
        self.sigma_max, self.sigma_min = float(sigma_max), float(sigma_min)
        self.ode_steps = int(ode_steps)
        self.ode_sigma_min = float(ode_sigma_min)
        self.rho = float(rho)
        self.mcmc = mcmc
        self.mcmc_steps = int(mcmc_steps)
        self.lr, self.lr_min_ratio = float(lr), float(lr_min_ratio)
        self.tau = None if tau is None else float(tau)
        self.momentum = float(momentum)
        self.gradient_clip = None if gradient_clip is None else float(gradient_clip)
        self.cfg_scale = float(cfg_scale)
        self.null_prompt = str(null_prompt)

    def check_prior(self, prior: DiffusionPrior) -> None:
        core.require_alpha_bar_prior("DAPS", prior, "its levels are VP noise levels σ = √((1−ᾱ)/ᾱ) of a DDPM table")
        alphas = prior.schedule.alphas_cumprod.to(torch.float64)
        top = float(((1.0 - alphas[-1]) / alphas[-1]).sqrt())
        if self.sigma_max > TABLE_TOP_TOLERANCE * top:
            raise UserError(
                f"solver.sigma_max={self.sigma_max:g} is above the prior's noisiest level σ̄_T = {top:.3g} "
                f"({type(prior).__name__}): its network has no level there; use sigma_max <= {top:.3g} "
                "(solver=latent_daps on latent priors: 10)"
            )

    def annealing_sigmas(self) -> list[float]:
        """σ_0 … σ_N of the annealing loop: the poly-ρ grid with its last point replaced by 0."""
        return [*edm_grid(self.annealing_steps, self.sigma_max, self.sigma_min, self.rho)[:-1], 0.0]

    def step_size(self, level: int) -> float:
        """η at annealing level ``level`` (the code's ``get_lr(step / (N + 1))``)."""
        ratio = level / (self.annealing_steps + 1)
        return self.lr * (1.0 + ratio * (self.lr_min_ratio - 1.0))

    def solve(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        prior: DiffusionPrior,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        image_shape: Sequence[int],
        callback: Callback | None = None,
    ) -> torch.Tensor:
        batch = core.check_batch("DAPS", y, prompts, generators, image_shape)
        self.check_prior(prior)
        latent = prior.latent_factor != 1
        dtype = prior.state_dtype
        shape = prior.latent_shape(image_shape)
        tau = self.tau if self.tau is not None else 2.0**0.5 * operator.sigma_y
        target = y.to(dtype)

        def randn() -> torch.Tensor:
            return seeding.randn(shape[1:], generators, device=prior.device, dtype=dtype)

        sigmas = self.annealing_sigmas()
        with torch.no_grad():
            cond = prior.embed_text(list(prompts)).to(dtype)
            uncond = prior.null_embedding(batch, self.null_prompt).to(dtype)
            x = randn() * sigmas[0]
            for level, sigma in enumerate(sigmas[:-1]):
                # 1. x̂0: the probability-flow ODE from σ_i, Euler on its own poly-ρ grid
                x0_hat = x
                ode = edm_grid(self.ode_steps, sigma, self.ode_sigma_min, self.rho)
                for s, s_next in zip(ode[:-1], ode[1:], strict=True):
                    denoised = core.edm_denoise(prior, x0_hat, s, cond, uncond, self.cfg_scale, dtype)
                    x0_hat = x0_hat + (s_next - s) * (x0_hat - denoised) / s
                # 2. MCMC on p(x0 | x_t, y) ∝ exp(−‖A x0 − y‖²/τ² − ‖x0 − x̂0‖²/(2σ_i²))
                eta = self.step_size(level)
                x0 = x0_hat
                velocity = randn() if self.mcmc == "hmc" else None
                losses = None
                for _ in range(self.mcmc_steps):
                    grad, losses = likelihood_gradient(prior, operator, target, x0, latent, self.gradient_clip)
                    score = -grad / tau**2 + (x0_hat - x0) / sigma**2
                    noise = randn()
                    if velocity is None:
                        x0 = x0 + eta * score + (2.0 * eta) ** 0.5 * noise
                    else:
                        velocity = self.momentum * velocity + eta**0.5 * score
                        velocity = velocity + (2.0 * (1.0 - self.momentum)) ** 0.5 * noise
                        x0 = x0 + eta**0.5 * velocity
                # 3. forward diffusion to the next level (σ_N = 0: the last sample)
                x = x0 + sigmas[level + 1] * randn()
                if callback is not None and losses is not None:
                    values = {"sigma": torch.full((batch,), sigma), "daps/residual": losses.sqrt().float().cpu()}
                    callback(level, values)
            image = prior.decode(x) if latent else x
        return image.clamp(-1.0, 1.0).float()
