"""LATINO: Langevin-within-plug-and-play with a latent consistency model (Spagnoletti, Prost, Almansa, Papadakis,
Pereyra; ICCV 2025, arXiv 2503.12615) and LATINO-PRO's prompt optimisation by empirical Bayes.

The method as the official code computes it: ``LATINO-PRO/LATINO-PRO@b0168a9`` — ``main_LATINO.py`` (models
``LATINO-1.5``: SD 1.5 + LCM-LoRA, 8 steps of ``LCMScheduler.set_timesteps(8)``, and ``LATINO``: SDXL + DMD2 on the
custom timesteps 999, 874, …, 124), ``noise_schemes.noise_pred_cond_y`` / ``noise_pred_cond_y_15`` (the step),
``utils._get_x_init`` (the start) and ``main_LATINO_PRO.py`` with ``noise_pred_cond_y_PRO`` (the prompt). Notation:
``ᾱ_t`` the prior's schedule; ``A``, ``y``, ``σ_y`` the operator, measurement and its noise on [−1, 1]; ``D``/``E``
the decoder/encoder (the encoder posterior's mean; identities on a pixel prior); ``f_θ`` the consistency model with
text embedding ``c``; LCM's boundary condition ``c_skip(t) = σ_d²/((s·t)² + σ_d²)``, ``c_out(t) = s·t/√((s·t)² +
σ_d²)`` with ``s = 10`` (``timestep_scaling``) and ``σ_d = 0.5`` (diffusers' ``LCMScheduler``).

Start (``init: measurement``, the official ``y_noise``): ``x_init = clip(Aᵀy)`` (the official computes a CG solution
of ``AᵀA u = Aᵀy`` and then uses ``Aᵀy`` itself), ``z = √ᾱ_{t_0}·E(x_init) + √(1−ᾱ_{t_0})·ξ`` at the grid's first
timestep ``t_0`` (999 on the official grids, where the code's ``add_noise`` is at 999 whatever the grid).
``init: noise``: ``z`` from the prior's ``initial_noise``.

Each of the ``K`` steps ``t_k`` (default: LCM's 8-step grid 999, 879, 759, 639, 499, 379, 259, 139 of 50 original
steps, :func:`lcm_timesteps`; ``timesteps`` sets a list, e.g. the SDXL code's):

1. one consistency pass: ``ẑ0 = (z − √(1−ᾱ_t)·ε_θ(z, t, c))/√ᾱ_t`` (``DiffusionPrior.consistency_x0``: LCM's
   ``predicted_original_sample``; the Gaussian prior's exact probability-flow end point);
2. decode: ``x̂ = clip(D(ẑ0))`` (``clip``: to [−1, 1], as the official);
3. the proximal data step in pixel space, ``x̃ = prox_{γ f}(x̂) = argmin_x ‖y − A x‖²/2 + ‖x − x̂‖²/(2γ)`` with
   ``γ = δ_t·(1−ᾱ_t)/σ_y²`` — deepinv's ``prox_l2(x̂, y, γ)``, here :meth:`LinearOperator.prox_l2` with
   ``λ = 1/γ`` (exact where the operator has a closed form, else CG; ``σ_y = 0``: the hard projection by CG). The
   step ``δ_t`` is the code's per-problem schedule: ``delta_high`` for ``t > delta_switch``, else ``delta_low``,
   times the residual ``‖A x̂ − y‖`` when ``delta_residual`` (the official's ``df``); the defaults are the code's
   branch for problems it has no values for (0.01 above t = 200, 1 below), per-task values in
   ``conf/solver_task/latino_<task>.yaml``;
4. encode and apply the boundary condition: ``z̃0 = c_out(t)·E(clip(x̃)) + c_skip(t)·z`` (the official hands
   ``(z − √ᾱ_t·E(x̃))/√(1−ᾱ_t)`` to ``LCMScheduler.step``, which recovers ``E(x̃)`` as its prediction);
5. re-noise to the next grid point, ``z = √ᾱ_{t_{k+1}}·z̃0 + √(1−ᾱ_{t_{k+1}})·ξ``; after the last step ``z = z̃0``.

Output: ``clip(D(z))``.

Prompt optimisation (``prompt_opt``; LATINO-PRO's SAPG, ``main_LATINO_PRO.py``): starting from the text embedding
``c_0``, ``prompt_opt_iters`` rounds of the LATINO loop on ``prompt_opt_timesteps`` (the code's 4 DMD2 steps
999, 749, 499, 249). In each round, at every step but the last, the marginal log-likelihood surrogate
``ℓ(c) = −‖z_{k+1} − √ᾱ_{t_{k+1}}·ẑ0(z_k, t_k; c)‖²/(2(1−ᾱ_{t_{k+1}}))`` (``z_{k+1}`` the next latent of the loop,
held fixed; ``ẑ0`` the consistency estimate with gradients to ``c``) gives ``∇_c ℓ``; each token row of it is
normalised and added to an accumulated ``G`` (never reset, as the code) whose first ``prompt_opt_frozen_tokens`` rows
are zero, as is SDXL's pooled row (``c`` packs it as its last row; the code moves the token embeddings only). At the
round's last step ``c ← Π(c + η_j·G)`` with ``η_j = lr·max(decay^max(0, j − decay_start), min_scale)`` and ``Π`` the
projection of each token row onto the ball of radius ``prompt_opt_radius`` around ``c_0``'s row. Between rounds the
final latent is re-noised to t = 999 and the next round starts from it; after the last round the plain LATINO loop
(``timesteps``) runs from that re-noised latent with the optimised ``c``.

Cost per image at the defaults: 8 network calls of 1 row, 9 decodes, 9 encodes (one for the start), no backward pass;
``prompt_opt`` adds per round ``len(prompt_opt_timesteps)`` network calls with a backward pass through the network
(not the VAE), as many decodes and encodes.

Departures from the official code, and why:

- Randomness: the official draws from the global torch RNG on the GPU; here every ξ comes from the image's solver
  generator on the CPU (``seeding.randn``): the start's ξ first, then one per re-noising.
- Precision: the official runs the networks in float16 and the proximal step in float32; here the state is float32
  (float64 on a float64 prior) and the networks run in ``prior.dtype``.
- The residual ``df``: the official computes it by calling the deepinv physics, whose ``forward`` adds a fresh draw
  of the measurement noise to ``A x̂`` (the problem's σ_y on [0, 1], half of it on [−1, 1]); here ``df = ‖A x̂ − y‖``
  without it, the residual the schedule scales with (the draw adds about ``√m·σ_y/2`` to it in quadrature, for
  ``m`` measurements).
- Text: the official SD 1.5 path runs classifier-free guidance with scale 1 (a null and a prompt branch, the null
  one unused); here the prompt branch alone (half the rows, the same result).
- Start: inpainting's moving-average fill of the official ``_get_x_init`` is not reproduced; every operator starts
  from ``clip(Aᵀy)`` (the code's rule for its other problems).
- The official δ schedules exist for SR ×16/×32, Gaussian and motion deblurring and box inpainting only (SR ×4/×8
  fall through to an undefined δ); the other tasks here run the code's fallback schedule.
- LATINO-PRO: the prior samples the code draws between rounds for its logs are not drawn; δ is this module's one
  schedule in the rounds and in the final loop (the code has 4-step and 8-step variants per problem).

Priors: a consistency model (``DiffusionPrior.consistency_model``: SD 1.x or SDXL with a consistency LoRA in
``model.lora`` (LCM-LoRA); SDXL with DMD2's distilled UNet in ``model.unet_weights``, the official ``LATINO`` model;
the Gaussian prior's exact map). Other priors, and rectified-flow ones, are refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback, Solver
from treg_exp.solvers.core import alpha_bar_at, require_alpha_bar_prior
from treg_exp.solvers.plug_and_play import BatchDenoiser

#: LCM's boundary-condition constants (diffusers ``LCMScheduler``: ``timestep_scaling`` and ``sigma_data``)
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5
INITS = ("measurement", "noise")


def lcm_timesteps(num_train_timesteps: int, num_steps: int, original_steps: int = 50) -> list[int]:
    """LCM's inference grid (diffusers ``LCMScheduler.set_timesteps(num_steps)``), descending.

    The distillation grid is ``t_i = i·(T // original_steps) − 1`` for i = 1 … ``original_steps``; reversed, the
    entries at indices ``floor(linspace(0, original_steps, num_steps, endpoint=False))`` are taken. SD 1.5, 8 of 50:
    999, 879, 759, 639, 499, 379, 259, 139.
    """
    if not 0 < original_steps <= num_train_timesteps:
        raise UserError(f"solver.original_steps must be in 1..{num_train_timesteps}, got {original_steps}")
    if not 0 < num_steps <= original_steps:
        raise UserError(f"solver.num_steps must be in 1..{original_steps} (solver.original_steps), got {num_steps}")
    stride = num_train_timesteps // original_steps
    origin = [i * stride - 1 for i in range(original_steps, 0, -1)]
    return [origin[int(k * original_steps / num_steps)] for k in range(num_steps)]


def boundary_scalings(t: int) -> tuple[float, float]:
    """LCM's ``(c_skip(t), c_out(t)) = (σ_d²/((s·t)² + σ_d²), s·t/√((s·t)² + σ_d²))`` (s = 10, σ_d = 0.5): the
    consistency function ``c_skip·z_t + c_out·ẑ0`` is the identity at t = 0."""
    scaled = float(t) * TIMESTEP_SCALING
    return SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2), scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5


def check_timesteps(name: str, timesteps: Sequence[int], num_train_timesteps: int) -> list[int]:
    """``timesteps`` as a strictly descending list inside ``0 … T−1``, else a one-line :class:`UserError`."""
    grid = [int(t) for t in timesteps]
    if not grid or any(b >= a for a, b in zip(grid, grid[1:], strict=False)):
        raise UserError(f"solver.{name} must be a non-empty, strictly descending list of timesteps, got {grid}")
    if grid[0] >= num_train_timesteps or grid[-1] < 0:
        raise UserError(f"solver.{name} must lie in 0..{num_train_timesteps - 1}, got {grid}")
    return grid


class LATINO(Solver):
    """LATINO and LATINO-PRO (see the module docstring for the method and its departures).

    Args:
        num_steps: steps of LCM's grid (official 8), when ``timesteps`` is null.
        original_steps: LCM's distillation grid the steps are taken from (diffusers' default 50).
        timesteps: an explicit descending grid instead (the SDXL code's 999, 874, …, 124); null: LCM's grid.
        delta_high, delta_low: the step δ for ``t > delta_switch`` and below (the official fallback 0.01, 1).
        delta_switch: the timestep where δ switches (official fallback 200).
        delta_residual: multiply δ by ``‖A x̂ − y‖`` (the official ``df``; its per-problem schedules do).
        clip: clip the decoded estimate and the proximal point to [−1, 1] (official true).
        init: ``measurement`` (official: ``Aᵀy`` encoded and noised) or ``noise`` (the prior's ``z_T``).
        cg_iters, cg_tol: CG of the proximal step where the operator has no closed form (and for σ_y = 0).
        prompt_opt: LATINO-PRO's prompt optimisation (false: plain LATINO).
        prompt_opt_iters: SAPG rounds (official 15).
        prompt_opt_timesteps: the rounds' grid (official 999, 749, 499, 249).
        prompt_opt_lr, prompt_opt_decay, prompt_opt_decay_start, prompt_opt_min_scale: the step
            ``lr·max(decay^max(0, j − decay_start), min_scale)`` (official 0.08, 0.9, 10, 0.001).
        prompt_opt_radius: the radius of each token row's ball around the initial embedding (official 15).
        prompt_opt_frozen_tokens: leading token rows never moved (official 4; token-sequence embeddings only).
    """

    def __init__(
        self,
        num_steps: int = 8,
        original_steps: int = 50,
        timesteps: list[int] | None = None,
        delta_high: float = 0.01,
        delta_low: float = 1.0,
        delta_switch: int = 200,
        delta_residual: bool = False,
        clip: bool = True,
        init: str = "measurement",
        cg_iters: int = 50,
        cg_tol: float = 0.0,
        prompt_opt: bool = False,
        prompt_opt_iters: int = 15,
        prompt_opt_timesteps: list[int] | None = None,
        prompt_opt_lr: float = 0.08,
        prompt_opt_decay: float = 0.9,
        prompt_opt_decay_start: int = 10,
        prompt_opt_min_scale: float = 0.001,
        prompt_opt_radius: float = 15.0,
        prompt_opt_frozen_tokens: int = 4,
    ) -> None:
        if not (float(delta_high) > 0 and float(delta_low) > 0):
            raise UserError(f"solver.delta_high and solver.delta_low must be positive, got {delta_high}, {delta_low}")
        if init not in INITS:
            raise UserError(f"solver.init must be one of {INITS}, got {init!r}")
        if int(cg_iters) < 0 or float(cg_tol) < 0:
            raise UserError("solver.cg_iters and solver.cg_tol must be >= 0")
        if int(prompt_opt_iters) < 1 or float(prompt_opt_lr) <= 0 or float(prompt_opt_radius) <= 0:
            raise UserError("solver.prompt_opt_iters, prompt_opt_lr and prompt_opt_radius must be positive")
        if int(prompt_opt_frozen_tokens) < 0:
            raise UserError(f"solver.prompt_opt_frozen_tokens must be >= 0, got {prompt_opt_frozen_tokens}")
        self.num_steps = int(num_steps)
        self.original_steps = int(original_steps)
        self.timesteps = None if timesteps is None else [int(t) for t in timesteps]
        # the grids' arguments, checked before any weight loads (every ᾱ prior here has T = 1000; the solve checks
        # against the prior's own T)
        lcm_timesteps(1000, self.num_steps, self.original_steps)
        if self.timesteps is not None:
            check_timesteps("timesteps", self.timesteps, 1000)
        self.delta_high = float(delta_high)
        self.delta_low = float(delta_low)
        self.delta_switch = int(delta_switch)
        self.delta_residual = bool(delta_residual)
        self.clip = bool(clip)
        self.init = init
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.prompt_opt = bool(prompt_opt)
        self.prompt_opt_iters = int(prompt_opt_iters)
        self.prompt_opt_timesteps = [999, 749, 499, 249] if prompt_opt_timesteps is None else list(prompt_opt_timesteps)
        check_timesteps("prompt_opt_timesteps", self.prompt_opt_timesteps, 1000)
        self.prompt_opt_lr = float(prompt_opt_lr)
        self.prompt_opt_decay = float(prompt_opt_decay)
        self.prompt_opt_decay_start = int(prompt_opt_decay_start)
        self.prompt_opt_min_scale = float(prompt_opt_min_scale)
        self.prompt_opt_radius = float(prompt_opt_radius)
        self.prompt_opt_frozen_tokens = int(prompt_opt_frozen_tokens)

    def check_prior(self, prior: DiffusionPrior) -> None:
        """Refuse rectified-flow priors and priors that are no consistency model, in one line each."""
        require_alpha_bar_prior("LATINO", prior, "its re-noising and LCM boundary condition are ᾱ-schedule steps")
        if not prior.consistency_model:
            raise UserError(
                f"LATINO needs a consistency model and {type(prior).__name__} is none: set model.lora to a "
                "consistency LoRA (latent-consistency/lcm-lora-sdv1-5 on model=sd15; random on model=tiny), "
                "model.unet_weights to DMD2's UNet on model=sdxl, or use model=gaussian"
            )

    def grid(self, prior: DiffusionPrior) -> list[int]:
        """The sampling grid: ``timesteps`` when set, else :func:`lcm_timesteps` of the prior's schedule."""
        big_t = prior.schedule.num_train_timesteps
        if self.timesteps is not None:
            return check_timesteps("timesteps", self.timesteps, big_t)
        return lcm_timesteps(big_t, self.num_steps, self.original_steps)

    # --- the algorithm box ---------------------------------------------------------------------------------------
    def delta(self, t: int, residual: torch.Tensor) -> torch.Tensor:
        """δ_t per image ``[B]``: ``delta_high`` above ``delta_switch``, else ``delta_low``; times ``‖A x̂ − y‖``
        (``residual``) when ``delta_residual``."""
        level = self.delta_high if t > self.delta_switch else self.delta_low
        return level * residual if self.delta_residual else torch.full_like(residual, level)

    def data_step(
        self, y: torch.Tensor, operator: LinearOperator, x: torch.Tensor, delta: torch.Tensor, alpha_bar: float
    ) -> torch.Tensor:
        """``prox_{γ f}(x̂)`` with ``γ = δ(1−ᾱ_t)/σ_y²`` per image: :meth:`LinearOperator.prox_l2` with ``λ = 1/γ``
        (``[B, 1, 1, 1]``; 0 when σ_y = 0: the hard projection). ``x`` ``[B, 3, H, W]`` → same."""
        gamma = delta.to(x.dtype) * (1.0 - alpha_bar)
        # δ may be 0 where the residual is: the step then leaves x̂ unchanged (λ = ∞), kept finite here
        lam = operator.sigma_y**2 / gamma.clamp_min(torch.finfo(x.dtype).tiny)
        return operator.prox_l2(y, x, lam.view(-1, 1, 1, 1), self.cg_iters, self.cg_tol).to(x.dtype)

    def step(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        denoiser: BatchDenoiser,
        z: torch.Tensor,
        z0: torch.Tensor,
        t: int,
        t_next: int | None,
        callback: Callback | None = None,
        index: int = 0,
    ) -> torch.Tensor:
        """Steps 2–5 at ``t`` (module docstring) from ``z`` ``[B, C, h, w]`` and its consistency estimate ``z0``
        (step 1, the caller's): the next latent, re-noised to ``t_next``, or the boundary-conditioned ``z̃0`` when
        ``t_next`` is None."""
        schedule = denoiser.prior.schedule
        alpha_bar = alpha_bar_at(schedule, t)
        x = denoiser.decode(z0)
        if self.clip:
            x = x.clamp(-1.0, 1.0)
        residual = denoiser.residual(operator, x, y)
        delta = self.delta(t, residual)
        x = self.data_step(y, operator, x, delta, alpha_bar)
        if self.clip:
            x = x.clamp(-1.0, 1.0)
        c_skip, c_out = boundary_scalings(t)
        z0 = c_out * denoiser.encode(x) + c_skip * z
        if callback is not None:
            callback(index, {"dc/residual_before": residual, "latino/delta": delta})
        if t_next is None:
            return z0
        alpha_bar_next = alpha_bar_at(schedule, t_next)
        return alpha_bar_next**0.5 * z0 + (1.0 - alpha_bar_next) ** 0.5 * denoiser.noise()

    def run_loop(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        denoiser: BatchDenoiser,
        z: torch.Tensor,
        cond: torch.Tensor,
        grid: Sequence[int],
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """The LATINO loop over ``grid`` from ``z``: the last step's ``z̃0`` ``[B, C, h, w]``."""
        nexts = [*grid[1:], None]
        for index, (t, t_next) in enumerate(zip(grid, nexts, strict=True)):
            z0 = denoiser.prior.consistency_x0(z, t, cond).to(denoiser.dtype)
            z = self.step(y, operator, denoiser, z, z0, t, t_next, callback, index)
        return z

    def start(self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, t: int) -> torch.Tensor:
        """The first latent at ``t``: ``√ᾱ_t·E(clip(Aᵀy)) + √(1−ᾱ_t)·ξ`` (``init: measurement``) or the prior's
        ``z_T`` (``noise``), ``[B, C, h, w]``."""
        alpha_bar = alpha_bar_at(denoiser.prior.schedule, t)
        if self.init == "noise":
            return denoiser.initial_noise(alpha_bar)
        x_init = operator.adjoint(y.to(denoiser.dtype)).to(denoiser.dtype).clamp(-1.0, 1.0)
        return alpha_bar**0.5 * denoiser.encode(x_init) + (1.0 - alpha_bar) ** 0.5 * denoiser.noise()

    def optimise_prompt(
        self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LATINO-PRO's SAPG rounds (module docstring) from the latent ``z`` at t = 999: ``(c, z)`` — the optimised
        embedding (``c``'s shape) and the re-noised latent the final loop starts from."""
        prior = denoiser.prior
        grid = check_timesteps("prompt_opt_timesteps", self.prompt_opt_timesteps, prior.schedule.num_train_timesteps)
        big_t = prior.schedule.num_train_timesteps - 1
        c0 = denoiser.cond
        cond = c0.clone()
        accumulated = torch.zeros_like(c0)
        frozen = torch.zeros_like(c0, dtype=torch.bool)
        if c0.dim() == 3:  # token rows: the leading ones (BOS and the first words) stay
            frozen[:, : self.prompt_opt_frozen_tokens] = True
            if hasattr(prior, "split_conditioning"):  # SDXL's pooled row: the official moves the token rows only
                frozen[:, -1] = True
        nexts = [*grid[1:], None]
        for round_index in range(self.prompt_opt_iters):
            for t, t_next in zip(grid, nexts, strict=True):
                is_last = t_next is None
                with torch.enable_grad():
                    leaf = cond.detach().requires_grad_(True)
                    z0_c = prior.consistency_x0(z, t, leaf).to(denoiser.dtype)
                    with torch.no_grad():
                        z_next = self.step(y, operator, denoiser, z, z0_c.detach(), t, t_next)
                    if not is_last:
                        alpha_bar_next = alpha_bar_at(prior.schedule, t_next)
                        gap = z_next - alpha_bar_next**0.5 * z0_c
                        log_lik = -0.5 / (1.0 - alpha_bar_next) * gap.flatten(1).pow(2).sum(1)
                        (grad,) = torch.autograd.grad(log_lik.sum(), leaf)
                if not is_last:
                    accumulated = (accumulated + grad / grad.norm(dim=-1, keepdim=True)).masked_fill(frozen, 0.0)
                else:
                    scale = max(
                        self.prompt_opt_decay ** max(0, round_index - self.prompt_opt_decay_start),
                        self.prompt_opt_min_scale,
                    )
                    cond = project_rows(cond + self.prompt_opt_lr * scale * accumulated, c0, self.prompt_opt_radius)
                z = z_next
            alpha_bar = alpha_bar_at(prior.schedule, big_t)
            z = alpha_bar**0.5 * z + (1.0 - alpha_bar) ** 0.5 * denoiser.noise()
        return cond.detach(), z

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
        """Reconstruct a batch (see :meth:`Solver.solve`): ``y`` ``[B, ...]`` → ``clip(D(z))`` ``[B, 3, H, W]``."""
        self.check_prior(prior)
        grid = self.grid(prior)
        with torch.no_grad():
            denoiser = BatchDenoiser("LATINO", y, prior, prompts, generators, image_shape, 1.0, "", "mean")
            cond = denoiser.cond
            z = self.start(y, operator, denoiser, grid[0])
            if self.prompt_opt:
                cond, z = self.optimise_prompt(y, operator, denoiser, z)
            z = self.run_loop(y, operator, denoiser, z, cond, grid, callback)
            x = denoiser.decode(z)
        return x.clamp(-1.0, 1.0).float()


def project_rows(theta: torch.Tensor, theta0: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row (last axis) of ``theta`` projected onto the ball of ``radius`` around ``theta0``'s row (the official
    ``project_onto_ball``, its 1e-8 in the denominator kept), ``theta``'s shape."""
    offset = theta - theta0
    scale = (radius / (offset.norm(dim=-1, keepdim=True) + 1e-8)).clamp(max=1.0)
    return theta0 + scale * offset
