"""RED with a diffusion denoiser: regularization by denoising, by gradient descent or ADMM.

Sources: the seed abstract (Kravchuk & Kriukova, ``shared/papers/red-admm-diffusion-abstract.txt``) — RED (Romano,
Elad, Milanfar 2017) with a diffusion model as the denoiser, solved by gradient descent or by the ADMM splitting of
Boyd et al. — and Romano et al.'s RED algorithms for the ADMM v-step. There is no official code; every default below
is this module's choice and is marked so.

Problem: ``min_x ½‖Ax − y‖² + (α/2)·xᵀ(x − D_σ(x))``, whose gradient (for a denoiser with a symmetric Jacobian that
is locally homogeneous, as RED assumes) is ``Aᵀ(Ax − y) + α(x − D_σ(x))``. (The abstract prints the second term with
a minus sign; the plus sign is RED's and is what makes ``D_σ`` a regularizer.)

The denoiser is the prior's Tweedie estimate ``D_σ(x) = E[x0 | x_t]`` read at noise level σ: an image ``x`` seen as
``x0 + σ·n`` is, scaled by ``√ᾱ``, a sample ``x_t = √ᾱ·x`` of ``q(x_t | x0) = N(√ᾱ x0, (1−ᾱ) I)`` exactly when
``σ² = (1−ᾱ)/ᾱ``, i.e. ``ᾱ = 1/(1 + σ²)``. The network takes integer t, so σ is mapped to the t whose
``σ̄_t = √((1−ᾱ_t)/ᾱ_t)`` is nearest (``timestep_for_sigma``), and that t's own ᾱ_t is used for the scaling and for
Tweedie: ``D_σ(x) = D(ẑ0)``, ``ẑ0 = (√ᾱ_t·E(x) − √(1−ᾱ_t)·ε(√ᾱ_t·E(x), t))/√ᾱ_t``, so the effective noise level is
``σ̄_t`` (the prior's smallest is ``σ̄_0``: 0.029 for SD 1.x's schedule, 0.010 for ADM's). On a pixel prior
``E``/``D`` are identities; on a latent prior ``D_σ`` is decode ∘ (Tweedie in latent space) ∘ encode (the
encoder's ``mean`` by default, so ``D_σ`` is deterministic).

Weight: ``alpha: null`` (default, ours) sets ``α = σ_y²/σ̄_t²``. For a denoiser of Tweedie form
``x − D_σ(x) = −σ²∇log p_σ(x)``, so ``α(x − D_σ(x)) = −σ_y²∇log p_σ(x)`` and the fixed point is the MAP estimate
under the noise-smoothed prior ``p_σ`` with the likelihood's own weight; for a Gaussian prior ``N(μ, Σ)`` it is the
posterior mean under ``N(μ, Σ + σ²I)``, which tends to the exact posterior mean as σ → 0 (tested).

Methods (``method``), each ``num_steps`` iterations from ``x⁰ = Aᵀy`` (ours):

- ``gd``: ``x ← x − μ[Aᵀ(Ax − y) + α(x − D_σ(x))]``, one denoiser call per iteration. ``step_size: null`` (ours)
  takes ``μ = 1/(L + α)`` with ``L = ‖AᵀA‖`` from 20 power iterations per image (``x − D_σ(x)`` has Jacobian
  eigenvalues in [0, 1] for a Tweedie denoiser, so this μ is below 2/Lipschitz).
- ``admm`` (Romano et al.'s RED-ADMM on the split ``x = v``, penalty β = ``admm_beta``, ``null`` = α, ours):
  x-step ``x = argmin ½‖Ax − y‖² + (β/2)‖x − (v − u)‖²``, i.e. ``(AᵀA + βI)x = Aᵀy + β(v − u)``, by
  :meth:`LinearOperator.prox_l2` (exact where the operator has a closed form, else ``cg_iters`` CG iterations from
  ``v − u``); v-step ``argmin (α/2)vᵀ(v − D_σ(v)) + (β/2)‖v − (x + u)‖²`` by ``inner_iters`` fixed-point iterations
  ``v ← (β(x + u) + α·D_σ(v))/(α + β)`` from the previous v (Romano's RED-ADMM; 1 by default); dual update
  ``u ← u + x − v``. A fixed point has ``x = v`` and ``Aᵀ(Ax − y) + α(x − D_σ(x)) = 0``, the same as gd's.

Noise-level schedule (``sigma_schedule``): ``fixed`` σ = ``sigma`` every iteration, or ``annealed``: geometric from
``sigma_max`` down to ``sigma`` over the ``num_steps`` iterations (α and μ follow σ when they are ``null``).

Output: the last x, clamped to [−1, 1].

Cost per image: ``num_steps`` (gd) or ``num_steps·inner_iters`` (admm) network calls of 1 row (2 with CFG), each with
one encode and one decode (identities counted on a pixel prior); gd adds two operator applications per iteration
(and 20 ``AᵀA`` for μ), admm one data step per iteration; no backward pass.

Diagnostics via ``callback(step_index, values)``, each ``[B]``: ``sigma`` (σ̄_t used), ``red/change``
(``‖x_k − x_{k−1}‖/‖x_{k−1}‖``), ``red/residual`` (‖Ax − y‖, one operator application).

Rectified-flow priors: not defined (its denoiser level ``σ̄_t`` is an ᾱ-schedule one); ``PlugAndPlaySolver.check_prior``
says so in one line.
"""

from __future__ import annotations

import torch

from treg_exp.common.batch import batch_dot, batch_norm, per_image
from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback
from treg_exp.solvers.core import timestep_for_sigma
from treg_exp.solvers.plug_and_play import BatchDenoiser, PlugAndPlaySolver

METHODS = ("gd", "admm")
SIGMA_SCHEDULES = ("fixed", "annealed")
#: power iterations for ``L = ‖AᵀA‖`` when ``step_size`` is null
POWER_ITERATIONS = 20


def operator_norm_squared(operator: LinearOperator, like: torch.Tensor) -> torch.Tensor:
    """``‖AᵀA‖`` per image ``[B]`` by power iteration from a fixed start (the same for every image)."""
    start = torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = start.to(device=like.device, dtype=like.dtype).expand_as(like).clone()
    value = torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    for _ in range(POWER_ITERATIONS):
        v = v / per_image(batch_norm(v).clamp_min(1e-30), v)
        w = operator.normal(v).to(like.dtype)
        value = batch_dot(v, w)
        v = w
    return value


class RED(PlugAndPlaySolver):
    """RED with the prior's Tweedie denoiser, by gradient descent or ADMM (see the module docstring).

    Args:
        method: ``gd`` or ``admm``.
        num_steps: iterations.
        sigma: the denoiser's noise level σ (fixed, or the last of the annealed schedule); [−1, 1] image scale.
        sigma_schedule: ``fixed`` or ``annealed`` (geometric from ``sigma_max`` to ``sigma``).
        sigma_max: the first noise level of the annealed schedule.
        alpha: the regularization weight α (``null``: σ_y²/σ̄_t²).
        step_size: gd's μ (``null``: 1/(‖AᵀA‖ + α)).
        admm_beta: ADMM's penalty β (``null``: α).
        inner_iters: ADMM v-step fixed-point iterations (denoiser calls per iteration).
        cg_iters, cg_tol: the CG of the ADMM x-step for operators without a closed form.
        cfg_scale, null_prompt: classifier-free guidance with a text prior (0 = null prompt only).
        encode_mode: ``mean`` or ``sample`` of the encoder posterior inside ``D_σ`` (latent priors).
    """

    def __init__(
        self,
        method: str = "gd",
        num_steps: int = 100,
        sigma: float = 0.05,
        sigma_schedule: str = "fixed",
        sigma_max: float = 0.5,
        alpha: float | None = None,
        step_size: float | None = None,
        admm_beta: float | None = None,
        inner_iters: int = 1,
        cg_iters: int = 20,
        cg_tol: float = 1e-6,
        cfg_scale: float = 0.0,
        null_prompt: str = "",
        encode_mode: str = "mean",
    ) -> None:
        if method not in METHODS:
            raise UserError(f"solver.method must be one of {METHODS}, got {method!r}")
        if sigma_schedule not in SIGMA_SCHEDULES:
            raise UserError(f"solver.sigma_schedule must be one of {SIGMA_SCHEDULES}, got {sigma_schedule!r}")
        if int(num_steps) < 1:
            raise UserError(f"solver.num_steps must be at least 1, got {num_steps}")
        if not float(sigma) > 0 or (sigma_schedule == "annealed" and not float(sigma_max) >= float(sigma)):
            raise UserError(f"solver.sigma must be > 0 (and sigma_max >= sigma), got {sigma}, {sigma_max}")
        for name, value in (("alpha", alpha), ("step_size", step_size), ("admm_beta", admm_beta)):
            if value is not None and not float(value) > 0:
                raise UserError(f"solver.{name} must be positive or null, got {value}")
        if int(inner_iters) < 1:
            raise UserError(f"solver.inner_iters must be at least 1, got {inner_iters}")
        super().__init__(cg_iters, cg_tol, cfg_scale, null_prompt, encode_mode)
        self.method = method
        self.num_steps = int(num_steps)
        self.sigma = float(sigma)
        self.sigma_schedule = sigma_schedule
        self.sigma_max = float(sigma_max)
        self.alpha = None if alpha is None else float(alpha)
        self.step_size = None if step_size is None else float(step_size)
        self.admm_beta = None if admm_beta is None else float(admm_beta)
        self.inner_iters = int(inner_iters)

    def sigmas(self) -> list[float]:
        """The requested noise level of each iteration ``[num_steps]``."""
        if self.sigma_schedule == "fixed" or self.num_steps == 1:
            return [self.sigma] * self.num_steps
        ratio = self.sigma / self.sigma_max
        return [self.sigma_max * ratio ** (k / (self.num_steps - 1)) for k in range(self.num_steps)]

    def weight(self, sigma_y: float, sigma_eff: float) -> float:
        """α: the configured one, or ``σ_y²/σ̄_t²``."""
        if self.alpha is not None:
            return self.alpha
        if sigma_y <= 0:
            raise UserError("RED with solver.alpha=null needs σ_y > 0 (α = σ_y²/σ²); set solver.alpha")
        return float(sigma_y) ** 2 / sigma_eff**2

    def iterate(
        self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, callback: Callback | None
    ) -> torch.Tensor:
        """``num_steps`` RED iterations (gd or admm, module docstring) from ``Aᵀy``: ``y`` ``[B, ...]`` → the last x."""
        dtype = denoiser.dtype
        y = y.to(dtype)

        def denoise(x: torch.Tensor, t: int, alpha_bar: float) -> torch.Tensor:
            """``D_σ(x)``: Tweedie's estimate from ``z_t = √ᾱ_t·E(x)`` at the t of σ."""
            z_t = alpha_bar**0.5 * denoiser.encode(x)
            return denoiser.x0(z_t, denoiser.eps(z_t, t), alpha_bar)

        x = operator.adjoint(y).to(dtype)
        lipschitz = operator_norm_squared(operator, x) if self.method == "gd" and self.step_size is None else None
        v, u = x.clone(), torch.zeros_like(x)
        for k, sigma in enumerate(self.sigmas()):
            t, alpha_bar = timestep_for_sigma(denoiser.prior.schedule, sigma)
            sigma_eff = ((1.0 - alpha_bar) / alpha_bar) ** 0.5
            alpha = self.weight(operator.sigma_y, sigma_eff)
            previous = x
            if self.method == "gd":
                grad = operator.adjoint(operator(x).to(dtype) - y).to(dtype) + alpha * (x - denoise(x, t, alpha_bar))
                mu = self.step_size if self.step_size is not None else per_image(1.0 / (lipschitz + alpha), x)
                x = x - mu * grad
            else:
                beta = self.admm_beta if self.admm_beta is not None else alpha
                x = operator.prox_l2(y, v - u, beta, self.cg_iters, self.cg_tol).to(dtype)
                for _ in range(self.inner_iters):
                    v = (beta * (x + u) + alpha * denoise(v, t, alpha_bar)) / (alpha + beta)
                u = u + x - v
            if callback is not None:
                callback(
                    k,
                    {
                        "sigma": torch.full((denoiser.batch,), sigma_eff),
                        "red/change": batch_norm(x - previous) / batch_norm(previous).clamp_min(1e-30),
                        "red/residual": denoiser.residual(operator, x, y),
                    },
                )
        return x
