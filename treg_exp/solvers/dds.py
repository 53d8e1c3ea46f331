"""DDS: decomposed diffusion sampling (Chung, Lee, Ye; ICLR 2024; arXiv 2303.05754).

The method, as the official code (``HJ-harry/DDS``, ``solver_2d.py`` ``Diffusion.dds`` with ``utils.CG``; defaults from
``main.py``) computes it. Notation: ``ᾱ_t`` the prior's schedule, ``A`` the operator with measurement ``y`` and noise
``σ_y``, ``D``/``E`` the prior's decoder/encoder (identities on a pixel prior).

DDIM grid of ``num_steps`` (official 50) steps (``core.ddim_plan``, textbook ᾱ_t; t = 980, 960, …, 0 for a
pixel prior with ``steps_offset=0``, as the official ``range(0, 1000, skip)``), from ``z_T`` (the prior's
``initial_noise``). At every step:

1. ``ε̂ = ε(z_t, t)`` (one network pass, no gradient), Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``, ``x̂0 = D(ẑ0)``;
2. data consistency by ``cg_iters`` (5) conjugate-gradient iterations started at ``x̂0`` on
   ``(I + γAᵀA) x = x̂0 + γAᵀy`` (γ = ``gamma``, 1.0), stopping once ‖r‖ < ``cg_tol`` (1e-5). This is
   ``(AᵀA + λI) x = Aᵀy + λx̂0`` with λ = 1/γ, the system :meth:`LinearOperator.solve_damped` solves: CG's iterates
   do not change when a system is scaled, and the tolerance is passed as ``cg_tol/γ`` so the early stop is the
   official one. With ``σ_y = 0`` the official code drops the ``x̂0`` term and runs CG on ``AᵀA x = Aᵀy`` (λ = 0),
   and so does this module;
3. re-noise with DDS's η (0.85): ``z_prev = √ᾱ_prev·E(x̂) + √(1−ᾱ_prev)·(√(1−η²)·ε̂ + η·ξ)``
   (``core.renoise`` with ``σ = η√(1−ᾱ_prev)``; note this η is not DDIM's η: DDS sets the fresh-noise fraction of
   the ``1−ᾱ_prev`` variance directly), where ε̂ is the network's estimate of step 1;
4. where ``t_prev`` is 0 the official code returns ``x̂`` unnoised (its ``j != 0`` branch) and does so here; after the
   last step (t = 0 on the official grid, whose ``ᾱ_prev`` is 1) the output is that step's ``x̂``, clamped.

No network gradient is taken anywhere (the solve runs under ``torch.no_grad``).

Latent priors: the network runs on latents, the CG in pixel space, ``x̂0 = D(ẑ0)`` and the data-consistent latent is
``E(x̂)`` (``encode_mode``: the encoder posterior's ``mean`` by default, or a ``sample``). There is no official latent
DDS; this is the decode → CG → encode reading of the method.

Cost per image: ``num_steps`` network calls of 1 row (2 with ``cfg_scale`` ∉ {0, 1}), ``num_steps`` decodes,
``num_steps − 1`` encodes (identities counted as passes on a pixel prior), and per step ``cg_iters + 1`` applications
of ``AᵀA`` plus one ``Aᵀ``; no backward pass.

Diagnostics via ``callback(step_index, values)``, each ``[B]``: ``dc/residual_before`` (‖A x̂0 − y‖) and
``dc/residual_after`` (‖A x̂ − y‖), two extra operator applications per step.

Departures from the official code, and why:

- Randomness: the official code draws from the global torch RNG on the GPU; here ``z_T`` and every ξ come from the
  image's solver generator on the CPU (``seeding.randn``), so results do not depend on batch size or device.
- CG: the shared batched CG (per-image step sizes, per-image early stop) instead of the official single-image CG;
  its stopping test runs before each iteration instead of after it, which differs only for a start that already
  meets the tolerance.
- Text: the official model is unconditional. With a text prior the null prompt's embedding is used
  (``cfg_scale`` 0); ``cfg_scale`` > 0 applies classifier-free guidance with
  the image's prompt (``core.guided_prediction``).
- Precision: the state and the CG are float32 (float64 for a float64 prior), the network runs in ``prior.dtype``.

Rectified-flow priors: not defined (its grid, re-noising and CG on Tweedie's estimate are ᾱ-schedule steps);
``PlugAndPlaySolver.check_prior`` says so in one line.
"""

from __future__ import annotations

import torch

from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback
from treg_exp.solvers.core import ddim_plan, renoise
from treg_exp.solvers.plug_and_play import BatchDenoiser, PlugAndPlaySolver


class DDS(PlugAndPlaySolver):
    """Decomposed diffusion sampling (see the module docstring for the method and its departures).

    Args:
        num_steps: DDIM steps (official 50).
        eta: DDS's η, the fresh-noise fraction of the re-noising (official 0.85).
        gamma: γ of ``(I + γAᵀA)x = x̂0 + γAᵀy`` (official 1.0).
        cg_iters, cg_tol: CG iterations and early stop on the residual norm of that system (official 5, 1e-5).
        cfg_scale: classifier-free guidance with a text prior (0 = the null prompt only).
        null_prompt: the prompt of the unconditional branch.
        encode_mode: ``mean`` or ``sample`` of the encoder posterior (latent priors).
    """

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 0.85,
        gamma: float = 1.0,
        cg_iters: int = 5,
        cg_tol: float = 1e-5,
        cfg_scale: float = 0.0,
        null_prompt: str = "",
        encode_mode: str = "mean",
    ) -> None:
        if int(num_steps) < 1:
            raise UserError(f"solver.num_steps must be at least 1, got {num_steps}")
        if not 0.0 <= float(eta) <= 1.0:
            raise UserError(f"solver.eta (DDS's noise fraction) must be in [0, 1], got {eta}")
        if not float(gamma) > 0.0:
            raise UserError(f"solver.gamma must be positive, got {gamma}")
        super().__init__(cg_iters, cg_tol, cfg_scale, null_prompt, encode_mode)
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.gamma = float(gamma)

    def data_consistency(self, y: torch.Tensor, operator: LinearOperator, x0: torch.Tensor) -> torch.Tensor:
        """``cg_iters`` CG iterations on ``(I + γAᵀA)x = x̂0 + γAᵀy`` from ``x̂0`` (``AᵀAx = Aᵀy`` when σ_y = 0)."""
        lam = 1.0 / self.gamma if operator.sigma_y > 0 else 0.0
        tol = self.cg_tol / self.gamma if operator.sigma_y > 0 else self.cg_tol
        return operator.solve_damped(y, x0, lam, self.cg_iters, tol)[0]

    def iterate(
        self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, callback: Callback | None
    ) -> torch.Tensor:
        """The DDS loop (module docstring, steps 1–4): ``y`` ``[B, ...]`` → the last step's ``x̂`` ``[B, 3, H, W]``."""
        plan = ddim_plan(denoiser.prior.schedule, self.num_steps)
        z = denoiser.initial_noise(plan[0].alpha_bar)
        x = None
        for step in plan:
            eps = denoiser.eps(z, step.t)
            x0 = denoiser.x0(z, eps, step.alpha_bar)
            x = self.data_consistency(y, operator, x0).to(denoiser.dtype)
            if callback is not None:
                before, after = denoiser.residual(operator, x0, y), denoiser.residual(operator, x, y)
                callback(step.index, {"dc/residual_before": before, "dc/residual_after": after})
            if step.is_last:
                break
            z0 = denoiser.encode(x)
            if step.t_prev == 0:  # the official `j != 0` branch: the step to t = 0 adds nothing
                z = z0
                continue
            sigma = self.eta * (1.0 - step.alpha_bar_prev) ** 0.5
            z = renoise(z0, eps, step.alpha_bar_prev, sigma, denoiser.noise())
        return x
