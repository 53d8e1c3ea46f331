"""LDPS: latent diffusion posterior sampling, and the one loop of the DPS family (GML-DPS, PSLD, LDIR, DPS).

LDPS is DPS (Chung et al., ICLR 2023) run on the latent of a latent diffusion model, the gradient taken through the
decoder (P2L, Chung et al. ICML 2024, appendix B.3 eq. 20; PSLD, Rout et al. NeurIPS 2023, its baseline; the
official PSLD code ``LituRout/PSLD``, ``stable-diffusion/ldm/models/diffusion/psld.py``, with γ = 0). Notation:
``ᾱ_t`` the schedule, ``D`` the decoder, ``A`` the operator with measurement ``y`` and noise level ``σ_y``,
``c_∅`` the null-text embedding. From ``z_T`` (the prior's ``initial_noise``), for each of ``num_steps`` steps::

    ε̂   = ε(z_t, c_∅)                      (CFG ε(c_∅) + ω_cfg(ε(c) − ε(c_∅)) when cfg_scale > 0)
    ẑ0  = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t        (Tweedie)
    L   = ‖y − A(D(ẑ0))‖₂                  (the norm, not its square)
    z′  = DDIM(ẑ0, ε̂; η)                   (or the DDPM ancestral step, ``sampler=ddpm``)
    z_{t−1} = z′ − ρ·∇_{z_t} L              (one backward pass through UNet, Tweedie and decoder)

and the output is ``D(z_0)``, the decoded final latent (``output=latent``, as the PSLD code), or ``D(ẑ0)`` of the
last step (``output=x0``), clamped to [−1, 1].

The family shares this loop (:class:`DPSFamily`) and differs in two hooks: :meth:`DPSFamily.loss`, the per-image
loss differentiated (``ρ·L`` plus a gluing term in GML-DPS and PSLD, which then step ``z′ − ∇(ρL + γR)`` as the PSLD
code does), and :meth:`DPSFamily.direction`, the step taken from its gradient (the gradient itself; LDIR's
bias-corrected Adam history). The gradient is :func:`treg_exp.solvers.core.denoiser_gradient` (the one TReg's DPS
branch uses): per-image losses summed, so image ``b`` gets the gradient of its own loss; the graph is freed every
step; with ``gradient_checkpointing`` (on by default) the UNet and VAE recompute activations in the backward pass.

Options shared by the family:

- ``sampler``: ``ddim`` (η = ``eta``; η = 0 deterministic) or ``ddpm`` (ancestral, :func:`core.ddpm_step`); with
  ``ddpm`` the last step goes to ᾱ = 1 (DDPM's ``ᾱ_{−1} = 1``), so it returns ẑ0.
- ``ddpm_variance`` (``sampler=ddpm``): ``learned`` = the prior's own variance
  (:meth:`DiffusionPrior.learned_log_variance`, guided-diffusion's ``learned_range``: ``log σ² = f·log β +
  (1 − f)·log β̃``, ``f = (v + 1)/2`` from the network's extra channels, read in the same network call as ε),
  ``small`` = β̃ (the posterior variance), ``large`` = β; ``auto`` = ``learned`` where the prior has a learned
  variance (the ADM checkpoints) and one network branch runs (``cfg_scale`` 0 or 1), else ``small``. ``learned``
  on a prior without one, or with two CFG branches, is a one-line error.
- ``grid``: ``leading`` (:func:`core.ddim_plan`: t = k·(T // N) + offset, the LDM/diffusers DDIM grid and
  guided-diffusion's ``ddimN``) or ``respaced`` (:func:`core.respaced_plan`: guided-diffusion's
  ``timestep_respacing: N``, ``space_timesteps``; 999, 979, 958, …, 20, 0 for 50 steps; textbook ᾱ pairing
  only). Both are N steps (same cost); each step's β is the grid's own ``1 − ᾱ_t/ᾱ_prev``.
- ``renoise_residual``: the official PSLD quirk, ``L = ‖y − (A(D(ẑ0)) + σ_y n)‖₂`` with a fresh ``n`` every step
  (``noiser(meas_pred)`` in ``psld.py``).
- ``clip_denoised``: clamp ẑ0 to [−1, 1] before the loss and the step (DPS's ``clip_denoised``), meaningful only where
  ẑ0 is an image: ``auto`` does it on pixel priors (``latent_factor == 1``) only; ``true`` on a latent prior is an
  error.
- ``alpha_index_shift``: 1 pairs the network's ``t`` with ``ᾱ_{t−1}`` as the official PSLD code does on its
  1000-step grid (the UNet gets t = 1000 … 1 and ᾱ_999 … ᾱ_0 are used) and the TReg repository at every step count;
  0 is the textbook pairing (DPS, the Gaussian prior); ``auto`` is the PSLD code's own rule at any step count
  (:func:`ldm_alpha_index_shift`): its LDM DDIM sampler (``make_ddim_sampling_parameters``) subtracts 1 from the
  ᾱ indices only when the grid's last timestep equals the number of steps, i.e. on the 1000-step grid, and pairs t
  with ᾱ_t otherwise (200 steps: t = 996 … 1 with ᾱ_996 … ᾱ_1, then ᾱ_0 after the last step).

Defaults of ``solver=ldps``: 1000 steps, DDIM η = 0, ρ = 1 (the PSLD code's ω = 1; P2L's "static step size widely
adopted in literature", whose value the text extraction lost [unverified]), CFG off (only ``c_∅``; the PSLD code
runs scale 7.5 on the empty prompt, i.e. two identical rows, the same ε), ``alpha_index_shift=1``, no renoising
(LDPS as P2L defines it; the PSLD code with γ = 0 would renoise: ``renoise_residual=true``), ``output=latent``.

Randomness, per image from its solver generator: ``z_T``, then per step ξ of the sampler (η > 0 or DDPM), then the
renoising draw, then (GML-DPS, PSLD) the encoder's posterior sample; so a batch of B computes what B runs of one do.

Departures from the official code, and why:

- The measurement norm is per image (the official ``torch.linalg.norm`` over the whole batch couples the images of
  a batch; for batch 1 they agree).
- CFG with the empty prompt runs one UNet row (ε(c_∅)) instead of the official two identical rows: the same ε.
- Precision: the official code runs under fp16 autocast; here the networks run in ``prior.dtype`` and the latent
  state, loss and gradient in float32 (float64 for a float64 prior).

Cost per image: ``num_steps`` UNet calls of 1 row (2 with CFG) and ``num_steps`` decodes, each with a backward pass
through it, plus one decode for the output with ``output=latent``; GML-DPS and PSLD add an encode (with backward) per
step. Diagnostics via ``callback(step_index, values)``: ``dps/residual`` (``‖y − A(D(ẑ0))‖`` without renoising) and
``dps/loss`` (the differentiated loss), each ``[B]``.

Rectified-flow priors (SD3, FLUX, ``gaussian_flow``): ``(ẑ0, ε̂)`` come from ``core.split_prediction``
(``ẑ0 = z − σ·v``), the grid from the prior's flow schedule and ``sampler=ddim`` is the flow step
(``core.sampler_step``; η is then the fraction of fresh noise); ``sampler=ddpm`` is not defined there (one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import FlowSchedule, NoiseSchedule
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers import core
from treg_exp.solvers.base import Callback, Solver

SAMPLERS = ("ddim", "ddpm")
OUTPUTS = ("latent", "x0")
CLIP_MODES = (True, False, "auto")
ALPHA_INDEX_SHIFTS = (0, 1, "auto")
DDPM_VARIANCE_MODES = ("auto", "learned", *core.DDPM_VARIANCES)


def ldm_alpha_index_shift(schedule: NoiseSchedule, num_steps: int) -> int:
    """The ᾱ index shift the PSLD code's LDM DDIM sampler applies on an ``num_steps`` grid: 1 when the largest
    timestep equals ``num_steps`` (SD's 1000-step grid t = 1000 … 1, where ᾱ_1000 does not exist), else 0."""
    return int(max(core.sampling_timesteps(schedule, num_steps, alpha_index_shift=1)) == num_steps)


@dataclass
class StepContext:
    """What a loss hook may use at one step (all tensors in the solver's dtype).

    Attributes:
        y: ``[B, ...]`` the measurements.
        operator: the forward model of this batch.
        prior: the diffusion prior.
        generators: one CPU generator per image (its solver stream).
        step: the grid step being taken.
        residual: set by :meth:`DPSFamily.measurement_norm`: ``[B]`` ``‖y − A(D(ẑ0))‖`` without renoising.
        extras: further ``[B]`` diagnostics a hook records (sent to the callback).
    """

    y: torch.Tensor
    operator: LinearOperator
    prior: DiffusionPrior
    generators: Sequence[torch.Generator]
    step: core.Step
    residual: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class DPSFamily(Solver):
    """The DPS-family loop (module docstring); subclasses change :meth:`loss` and :meth:`direction`.

    Args:
        num_steps: grid size N (1000 as the papers ran them).
        step_size: ρ, the weight of ``∇‖y − A(D(ẑ0))‖₂`` (LDPS ω, DPS ζ, LDIR η).
        sampler: ``ddim`` or ``ddpm`` (ancestral).
        eta: DDIM η (``sampler=ddim``).
        ddpm_variance: ``auto``, ``learned`` (the prior's), ``small`` (β̃) or ``large`` (β) (``sampler=ddpm``).
        grid: ``leading`` (``core.ddim_plan``) or ``respaced`` (guided-diffusion's ``space_timesteps``).
        cfg_scale: CFG scale; 0 runs only the null branch (the baselines use the null text).
        null_prompt: the text of ``c_∅``.
        alpha_index_shift: 1 = ᾱ_{t−1} pairing (TReg code; PSLD code at 1000 steps), 0 = textbook, ``auto`` = the
            PSLD code's rule (:func:`ldm_alpha_index_shift`).
        renoise_residual: add a fresh ``σ_y n`` to ``A(D(ẑ0))`` in the loss each step (official PSLD quirk).
        clip_denoised: clamp ẑ0 to [−1, 1] (``true``/``false``/``auto`` = on pixel priors only).
        output: ``latent`` (decode the final latent) or ``x0`` (decode the last ẑ0).
        gradient_checkpointing: set the prior's UNet/VAE checkpointing (``None`` leaves it as configured).
    """

    #: the name used in error messages
    name = "DPS family"

    def __init__(
        self,
        num_steps: int = 1000,
        step_size: float = 1.0,
        sampler: str = "ddim",
        eta: float = 0.0,
        ddpm_variance: str = "auto",
        grid: str = "leading",
        cfg_scale: float = 0.0,
        null_prompt: str = "",
        alpha_index_shift: int | str = 1,
        renoise_residual: bool = False,
        clip_denoised: bool | str = False,
        output: str = "latent",
        gradient_checkpointing: bool | None = True,
    ) -> None:
        if int(num_steps) < 1:
            raise UserError(f"solver.num_steps must be at least 1, got {num_steps}")
        if not step_size >= 0:
            raise UserError(f"solver.step_size must be >= 0, got {step_size}")
        if sampler not in SAMPLERS:
            raise UserError(f"solver.sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not eta >= 0:
            raise UserError(f"solver.eta must be >= 0, got {eta}")
        if ddpm_variance not in DDPM_VARIANCE_MODES:
            raise UserError(f"solver.ddpm_variance must be one of {DDPM_VARIANCE_MODES}, got {ddpm_variance!r}")
        if grid not in core.GRIDS:
            raise UserError(f"solver.grid must be one of {core.GRIDS}, got {grid!r}")
        if grid == "respaced" and alpha_index_shift != 0:
            raise UserError(
                f"solver.grid=respaced pairs t with ᾱ_t (guided-diffusion); set solver.alpha_index_shift=0, "
                f"got {alpha_index_shift!r}"
            )
        if not cfg_scale >= 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        if alpha_index_shift not in ALPHA_INDEX_SHIFTS:
            raise UserError(f"solver.alpha_index_shift must be 0, 1 or auto, got {alpha_index_shift!r}")
        if clip_denoised not in CLIP_MODES:
            raise UserError(f"solver.clip_denoised must be true, false or auto, got {clip_denoised!r}")
        if output not in OUTPUTS:
            raise UserError(f"solver.output must be one of {OUTPUTS}, got {output!r}")
        self.num_steps = int(num_steps)
        self.step_size = float(step_size)
        self.sampler = sampler
        self.eta = float(eta)
        self.ddpm_variance = ddpm_variance
        self.grid = grid
        self.cfg_scale = float(cfg_scale)
        self.null_prompt = str(null_prompt)
        self.alpha_index_shift = alpha_index_shift if alpha_index_shift == "auto" else int(alpha_index_shift)
        self.renoise_residual = bool(renoise_residual)
        self.clip_denoised = clip_denoised
        self.output = output
        self.gradient_checkpointing = gradient_checkpointing

    # --- hooks -------------------------------------------------------------------------------------------------
    def loss(self, z0: torch.Tensor, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The per-image loss ``[B]`` whose gradient w.r.t. ``z_t`` is the step: here ``ρ·‖y − A(D(ẑ0))‖₂``.

        Args:
            z0: ``[B, C, h, w]`` ẑ0 (differentiable in ``z_t``); x0: ``[B, 3, H, W]`` ``D(ẑ0)``.
        """
        return self.step_size * self.measurement_norm(x0, ctx)

    def direction(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        """The step subtracted from ``z′``, from ``grad = ∇_{z_t} Σ_b loss_b``: here the gradient itself.

        ``state`` is a dict that lives for one :meth:`solve` (LDIR keeps its Adam history there).
        """
        return grad

    def check(
        self, y: torch.Tensor, prior: DiffusionPrior, operator: LinearOperator, image_shape: Sequence[int]
    ) -> None:
        """One-line errors before any network pass (subclasses add theirs)."""
        self.check_prior(prior)

    def check_prior(self, prior: DiffusionPrior) -> None:
        """The options that depend on the prior (also called by the runner before anything is written).

        On rectified-flow priors only ``sampler=ddim`` is defined (the flow step of :func:`core.sampler_step`, η the
        fraction of fresh noise); the DDPM ancestral step is an ᾱ-schedule posterior."""
        if self.sampler == "ddpm":
            core.require_alpha_bar_prior(f"{self.name} with sampler=ddpm", prior, "set solver.sampler=ddim")
        if self.clip_denoised is True and prior.latent_factor != 1:
            raise UserError(
                f"{self.name}: clip_denoised clamps ẑ0 to [-1, 1], which is an image only on a pixel-space prior; "
                "set solver.clip_denoised=false (or auto)"
            )
        if self.ddpm_variance == "learned" and not prior.has_learned_variance:
            raise UserError(
                f"{self.name}: solver.ddpm_variance=learned needs a prior with a learned variance (ADM), "
                f"{type(prior).__name__} has none; use small or large"
            )
        if self.ddpm_variance == "learned" and self.cfg_scale not in (0.0, 1.0):
            raise UserError(
                f"{self.name}: the learned variance is read from one network branch, so it needs cfg_scale 0 or 1 "
                f"(got {self.cfg_scale}); set solver.ddpm_variance=small"
            )

    # --- shared pieces -----------------------------------------------------------------------------------------
    def uses_learned_variance(self, prior: DiffusionPrior) -> bool:
        """Whether the ancestral steps take the prior's learned variance: ``ddpm_variance=learned``, or ``auto`` on a
        prior that has one when one network branch runs (``cfg_scale`` 0 or 1; else ``auto`` takes β̃)."""
        single_branch = self.cfg_scale in (0.0, 1.0)
        wanted = self.ddpm_variance == "learned" or (
            self.ddpm_variance == "auto" and prior.has_learned_variance and single_branch
        )
        return self.sampler == "ddpm" and wanted

    def plan(self, schedule: NoiseSchedule | FlowSchedule, image_seq_len: int | None = None) -> list[core.Step]:
        """The sampling grid (``grid``, ``num_steps``, ``alpha_index_shift``; a flow prior's own grid, which may
        depend on the image's token count)."""
        if isinstance(schedule, FlowSchedule):
            return core.flow_plan(schedule, self.num_steps, image_seq_len)
        if self.grid == "respaced":
            return core.respaced_plan(schedule, self.num_steps)
        shift = self.alpha_index_shift
        if shift == "auto":
            shift = ldm_alpha_index_shift(schedule, self.num_steps)
        return core.ddim_plan(schedule, self.num_steps, shift)

    def measurement_norm(self, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``‖y − A(x̂0)‖₂`` per image ``[B]``; with ``renoise_residual`` ``‖y − (A(x̂0) + σ_y n)‖₂``, fresh ``n``."""
        x0 = x0.clamp(-1.0, 1.0) if self._clips(ctx.prior) else x0
        y = ctx.y.to(x0.dtype)
        predicted = ctx.operator(x0).to(x0.dtype)
        residual = batch_norm(y - predicted)
        ctx.residual = residual.detach()
        if not self.renoise_residual:
            return residual
        noise = seeding.randn(y.shape[1:], ctx.generators, device=y.device, dtype=y.dtype)
        return batch_norm(y - (predicted + ctx.operator.sigma_y * noise))

    def _clips(self, prior: DiffusionPrior) -> bool:
        return self.clip_denoised is True or (self.clip_denoised == "auto" and prior.latent_factor == 1)

    def _sampler_step(
        self,
        z: torch.Tensor,
        z0: torch.Tensor,
        eps: torch.Tensor,
        step: core.Step,
        noise: torch.Tensor | None,
        log_variance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z′`` from ``z_t`` and ẑ0 (DDIM with η, or DDPM ancestral, whose last step goes to ᾱ = 1; with the
        learned ``log_variance`` where given, else ``ddpm_variance``'s fixed one)."""
        if self.sampler == "ddpm":
            alpha_bar_prev = 1.0 if step.is_last else step.alpha_bar_prev
            fixed = self.ddpm_variance if self.ddpm_variance in core.DDPM_VARIANCES else "small"
            return core.ddpm_step(z, z0, step.alpha_bar, alpha_bar_prev, noise, fixed, log_variance)
        return core.sampler_step(z0, eps, step, self.eta, noise)

    def _needs_noise(self, step: core.Step) -> bool:
        if self.sampler == "ddpm":
            return not step.is_last
        return self.eta > 0.0

    # --- the loop ----------------------------------------------------------------------------------------------
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
        """Reconstruct a batch (see :meth:`Solver.solve`): ``y`` ``[B, ...]`` → ``x̂`` ``[B, 3, H, W]`` in [−1, 1]."""
        batch = core.check_batch(self.name, y, prompts, generators, image_shape)
        self.check(y, prior, operator, image_shape)
        dtype = prior.state_dtype
        device = y.device
        core.configure_checkpointing(prior, self.gradient_checkpointing)
        plan = self.plan(prior.schedule, prior.image_seq_len(image_shape))
        learned = self.uses_learned_variance(prior)
        alpha_bars = [step.alpha_bar for step in plan]
        with torch.no_grad():
            null = prior.null_embedding(batch, self.null_prompt).to(dtype)
            cond = prior.embed_text(list(prompts)).to(dtype) if self.cfg_scale > 0 else null
        shape = prior.latent_shape(image_shape)
        z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar).to(device)
        clips = self._clips(prior)
        state: dict = {}
        result = None
        for step in plan:
            noise = (
                seeding.randn(shape[1:], generators, device=device, dtype=dtype) if self._needs_noise(step) else None
            )
            ctx = StepContext(y=y, operator=operator, prior=prior, generators=generators, step=step)
            variance_channels: dict[str, torch.Tensor | None] = {}
            if learned:  # ε and v from one call of the one branch run (cfg_scale 0: c_∅, 1: c)

                def output_fn(z_in, t=step.t, out=variance_channels):
                    eps, out["v"] = prior.model_output(z_in, t, cond if self.cfg_scale == 1.0 else null)
                    return eps

            else:

                def output_fn(z_in, t=step.t):
                    return core.guided_prediction(prior, z_in, t, cond, null, self.cfg_scale)

            result = core.denoiser_gradient(
                prior, z, step, output_fn=output_fn, loss_fn=lambda z0, x0, ctx=ctx: self.loss(z0, x0, ctx)
            )
            with torch.no_grad():
                z0, eps = result.z0, result.eps
                if clips:
                    # DPS's clip_denoised: the step uses the clamped x̂0 and the ε consistent with it
                    z0 = z0.clamp(-1.0, 1.0)
                    eps = core.eps_for_z0(z, z0, step)
                log_variance = None
                if learned:
                    v = variance_channels["v"].detach().to(dtype)
                    log_variance = prior.learned_log_variance(v, alpha_bars, step.index)
                z_prime = self._sampler_step(z, z0, eps, step, noise, log_variance)
                z = (z_prime - self.direction(result.grad, state)).detach()
            if callback is not None:
                callback(step.index, {"dps/residual": ctx.residual, "dps/loss": result.loss, **ctx.extras})
        with torch.no_grad():
            x = prior.decode(z) if self.output == "latent" else result.x0
        return x.to(dtype).clamp(-1.0, 1.0).float()


class LDPS(DPSFamily):
    """LDPS (module docstring): ``z_{t−1} = z′ − ρ∇_{z_t}‖y − A(D(ẑ0))‖₂``; the family's loop with no extra term."""

    name = "LDPS"
