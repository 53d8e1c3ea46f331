"""TReg: regularization by texts with adaptive negation (Kim, Park, Chung, Ye; arXiv 2311.15658).

The method, as the official code (``TReg-inverse/TReg``, ``solver/latent_diffusion.py``, class ``treg``) computes
it. Notation: ``ᾱ_t`` the noise schedule, ``E``/``D`` the VAE encoder/decoder, ``A`` the forward operator with
measurement ``y``, ``c`` the prompt embedding, ``c_∅`` the (adapted) null embedding, ``ω`` the CFG scale.

DDIM over ``num_steps`` (200) steps from ``z_T`` (the prior's ``initial_noise``). At every step
``ε̂ = ε(z_t, c_∅) + ω(ε(z_t, c) − ε(z_t, c_∅))`` and Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``. On the
data-consistency steps Γ (official: ``step % 3 == 0 and step < 170``, 57 of 200):

1. ``x̂ = D(ẑ0)``;
2. ``x̂(y) = argmin_x ‖y − Ax‖² + λ‖x − x̂‖²`` by conjugate gradient on ``(AᵀA + λI)x = Aᵀy + λx̂`` started at
   ``x̂`` (``cg_iters`` 5, ``λ = cg_lambda`` 1e-4, stop once ‖r‖ < ``cg_tol`` 1e-4);
3. ``ẑ0(y) = E(x̂(y))`` (the encoder posterior's sample, or its mean with ``encode_mode=mean``);
4. adaptive negation (AN): ``f̂ = CLIP_img(x̂(y)) / ‖·‖`` and ``null_iters`` (10) Adam steps, lr ``null_lr``, on
   ``L(c_∅) = mean_k ⟨f̂, c_∅[k]⟩`` (k over the 77 token rows) with a fresh Adam each DC step; ``c_∅`` carries over
   to all later steps, ``c`` never changes. ``L`` is linear in ``c_∅``, so every element moves by
   ``−null_lr·sign(f̂)`` per Adam step (up to Adam's ε);
5. mix and re-noise: ``z̄0 = ᾱ_prev·ẑ0(y) + (1−ᾱ_prev)·ẑ0`` and
   ``z_prev = √ᾱ_prev·z̄0 + (1−ᾱ_prev)·ε̂ + √(ᾱ_prev(1−ᾱ_prev))·ξ`` (note ``(1−ᾱ_prev)``, not its square root,
   multiplies ``ε̂``: this is what the official code computes).

The other steps are plain DDIM (η = 0) ``z_prev = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev)·ε̂``, or, with ``use_dps``, a DPS step
with the null branch only: ``z_prev = z′ − ρ·∇_{z_t}‖y − A(D(ẑ0))‖₂`` (the norm, not its square), ``ρ = dps_scale``
or ``√ᾱ_prev``. The output is ``D(ẑ0)`` of the last step, clamped to [−1, 1].

Timestep indexing: ``alpha_index_shift=1`` (default) reproduces the official code, which prepends 1.0 to
``alphas_cumprod`` and so pairs the network's ``t`` with ``ᾱ_{t−1}``; at the last step (t = 1) both ``ᾱ_t`` and
``ᾱ_prev`` are then ``ᾱ_0``. ``0`` is the textbook pairing. See :func:`treg_exp.solvers.core.ddim_plan`.

Data-consistency schedule: ``dc_every`` and ``dc_until`` are counted in steps of a ``dc_grid``-step grid (default
200, the official grid). Step ``i`` of ``num_steps`` sits at ``s_i = i·dc_grid/num_steps`` on that grid; it is a DC
step when ``s_i < dc_until`` and a multiple of ``dc_every`` lies in ``(s_{i−1}, s_i]`` (``i = 0`` always, when
``dc_until > 0``). So DC happens at the same noise levels whatever ``num_steps``: 57 DC steps at defaults for 200
steps, and still 57 for 100 or 1000 steps (fewer if ``num_steps`` is below ``dc_grid/dc_every``, when every step
before ``dc_until`` is one). ``dc_grid: null`` counts in this run's own steps (the official rule
``i % dc_every == 0 and i < dc_until`` for any ``num_steps``).

Batching: image ``b`` has its own prompt, null embedding, Adam statistics (Adam is elementwise and the AN loss is a
sum of per-image losses) and generator; all draws use ``seeding.randn`` / the prior's per-image generators, so a
batch of B computes what B runs of one compute.

Cost per image at defaults: ``num_steps`` UNet calls of 2 rows (1 row when ``cfg_scale`` is 0 or 1), 57 VAE encodes,
58 decodes (57 DC + the output), 57 CLIP image passes. ``use_dps`` adds a decode and a backward pass through UNet
and decoder on each non-DC step; ``trajectory_every`` adds a decode on each snapshot step that has none.

Diagnostics via ``callback(step_index, values)``, each value ``[B]``: on DC steps ``dc/residual_before``
(‖A x̂ − y‖), ``dc/residual_after`` (‖A x̂(y) − y‖), ``dc/cg_residual`` (the final CG residual norm) and, with AN,
``an/loss_before``, ``an/loss`` (the AN loss before and after the update) and ``an/null_shift`` (‖c_∅ − c_∅⁰‖);
on DPS steps ``dps/residual``; ``image/x0`` (``[B, 3, H, W]``) every ``trajectory_every`` steps and at the last.

Departures from the official code, and why:

- Precision: the official code runs everything (networks, operators, CG and the AN Adam) in fp16 under CUDA
  autocast. Here the networks run in ``prior.dtype`` while the solver state, the CG solve and ``c_∅`` with its Adam
  are float32 (float64 when the prior is float64, for tests): fp16 Adam statistics underflow (``g²`` of a
  ``|f̂|/77 ≈ 4e-4`` gradient is below fp16's smallest normal) and fp16 CG loses the small-λ solve.
- ``cfg_scale == 1.0``: the official ``predict_noise`` runs only the *null* branch when ω = 1 (so the prompt is
  ignored); here ω = 1 runs the conditional branch, which is what ``ε(c_∅) + 1·(ε(c) − ε(c_∅))`` means
  (``core.guided_prediction``).
- ``cfg_scale == 0`` (and the DPS steps, which use the null branch): the official code still evaluates the CFG pair
  (2 rows) and multiplies the conditional one by 0; here only the unconditional branch runs (1 row). Same values,
  half the UNet rows.
- Randomness: the official code draws from the global torch RNG; here ``z_T``, the encoder's posterior sample and
  the re-noising ``ξ`` come, in that order within each DC step (encoder first, as in the official code), from the
  image's solver generator on the CPU, so results do not depend on batch size or device.
- CG: the official CG works on one flattened image; here the shared batched CG
  (:meth:`LinearOperator.solve_damped`) has per-image step sizes and stops each image once its ‖r‖ < ``cg_tol``
  — per image the same iterates. The early stop differs in one case: our CG also checks the residual before the
  first iteration (an image whose ``x̂`` already has ‖r‖ < ``cg_tol`` is left as it is), while the official loop
  checks only after each update (and so always makes at least one).
- AN loss in a batch: the official ``img_feats @ uc.permute(0, 2, 1)`` is written for batch 1 (for B > 1 it would
  mix images); here the loss is the sum over images of each one's ``mean_k ⟨f̂_b, c_∅,b[k]⟩``, which for B = 1 is the
  official loss and for B > 1 gives each image its own update.
- CLIP image features: the official ``FrozenClipImageEmbedder`` preprocessing (bicubic resize of the uncropped
  image to 224, ``align_corners=True``, no antialiasing, then CLIP's mean/std) and the L2 normalisation are done by
  the prior's ``embed_image`` (transformers' ``CLIPVisionModelWithProjection``); a width mismatch between image
  features and text embedding (SD 2.x without an OpenCLIP ViT-H tower) is a clear error instead of a crash.
- ᾱ at the end of the table: with the official prepended 1.0, a step whose ``t`` or ``t_prev`` is exactly 0 would use
  ᾱ = 1.0; ``core.ddim_plan`` uses ``final_alpha_cumprod`` (ᾱ_0) there. SD's grids (``steps_offset=1``, so
  t = …, 1 and t_prev < 0 at the end) never reach 0, so the official setting is unaffected; only priors with
  ``steps_offset=0`` (the Gaussian test prior) see the difference.
- Diagnostics: the residuals ‖A x̂ − y‖ and ‖A x̂(y) − y‖ cost two extra operator applications per DC step (no
  network passes); ``trajectory_every`` costs decodes (see above). Neither changes the result.
- Defaults follow the official README presets (ω = 5.0, AN on, ``null_lr`` 1e-3, ``null_prompt`` "out of focus,
  depth of field"), not its command-line defaults (ω = 4.0, ``null_lr`` 8e-4, AN off, null prompt ""). The
  Gaussian-deblur preset's ``null_lr`` 5e-4 is in ``conf/solver_task/treg_gauss_deblur.yaml``; ``model=gaussian``
  sets ``null_prompt: ""`` and AN off (``conf/solver_model/treg_gaussian.yaml``: that prior knows only colour
  prompts and has no image encoder).

Rectified-flow priors (SD3, FLUX, ``gaussian_flow``; no official code): ``(ẑ0, ε̂)`` from the velocity
(``core.split_prediction``), plain steps are the flow Euler step, and the DC step's mix and re-noise take ``1−σ′`` for
ᾱ_prev (:func:`treg_renoise`, FlowDPS's re-noising); adaptive negation needs an image tower, which these priors lack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch

from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback, Solver
from treg_exp.solvers.core import (
    Step,
    check_batch,
    configure_checkpointing,
    denoise,
    denoiser_gradient,
    residual_norm,
    sampler_step,
    sampling_plan,
)

ENCODE_MODES = ("sample", "mean")


def _fraction(value: float | int, name: str) -> Fraction:
    """An exact rational from a config number (``3`` → 3, ``1.5`` → 3/2), so the DC grid has no rounding."""
    try:
        frac = Fraction(str(value))
    except (TypeError, ValueError) as exc:
        raise UserError(f"solver.{name} must be a number, got {value!r}") from exc
    return frac


def dc_steps(num_steps: int, dc_every: float, dc_until: float, dc_grid: int | None = 200) -> list[bool]:
    """Which of ``num_steps`` steps are data-consistency steps (Γ).

    ``dc_every`` and ``dc_until`` are in steps of a ``dc_grid``-step grid (``None``: this run's own steps). Step
    ``i`` sits at ``s_i = i·dc_grid/num_steps``; it is a DC step iff ``s_i < dc_until`` and a multiple of
    ``dc_every`` lies in ``(s_{i−1}, s_i]`` (``i = 0``: the multiple 0). With ``num_steps == dc_grid`` this is the
    official ``i % dc_every == 0 and i < dc_until`` (for integer ``dc_every``): 57 of 200 at 3 and 170.

    Returns:
        ``[num_steps]`` booleans.
    """
    every = _fraction(dc_every, "dc_every")
    until = _fraction(dc_until, "dc_until")
    if every <= 0:
        raise UserError(f"solver.dc_every must be > 0, got {dc_every}")
    grid = num_steps if dc_grid is None else int(dc_grid)
    if grid <= 0:
        raise UserError(f"solver.dc_grid must be a positive integer or null, got {dc_grid}")
    ratio = Fraction(grid, num_steps)
    flags = []
    for i in range(num_steps):
        s = i * ratio
        if s >= until:
            flags.append(False)
            continue
        # Index of the last multiple of dc_every at or before s; a new one since the previous step makes i a DC step.
        k = math.floor(s / every)
        flags.append(i == 0 or k > math.floor((s - ratio) / every))
    return flags


def treg_renoise(
    z0_data: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, step: Step, noise: torch.Tensor
) -> torch.Tensor:
    """TReg's DC step 5: mix ``ẑ0(y)`` with ``ẑ0`` and re-noise to ``t_prev`` with ε̂ and fresh ξ (official form).

    ᾱ grids: ``z̄0 = ᾱ_prev·ẑ0(y) + (1−ᾱ_prev)·ẑ0``, ``z_prev = √ᾱ_prev·z̄0 + (1−ᾱ_prev)·ε̂ + √(ᾱ_prev(1−ᾱ_prev))·ξ``,
    i.e. ``√ᾱ_prev·z̄0 + √(1−ᾱ_prev)·(√(1−ᾱ_prev)·ε̂ + √ᾱ_prev·ξ)``. Flow grids (no official code; the same form with
    ``1−σ′`` for ᾱ_prev, FlowDPS's re-noising): ``z̄0 = (1−σ′)·ẑ0(y) + σ′·ẑ0``,
    ``z_prev = (1−σ′)·z̄0 + σ′·(√σ′·ε̂ + √(1−σ′)·ξ)``. All tensors ``[B, C, h, w]``.
    """
    if step.sigma_prev is not None:
        s = step.sigma_prev
        return (1.0 - s) * ((1.0 - s) * z0_data + s * z0) + s * (s**0.5 * eps + (1.0 - s) ** 0.5 * noise)
    abp = step.alpha_bar_prev
    z0_mix = abp * z0_data + (1.0 - abp) * z0
    return abp**0.5 * z0_mix + (1.0 - abp) * eps + (abp * (1.0 - abp)) ** 0.5 * noise


class TReg(Solver):
    """TReg with adaptive negation (see the module docstring for the method and its departures from the code).

    Args:
        num_steps: DDIM steps N (official 200).
        cfg_scale: CFG scale ω (README 5.0; 0 = no text, only the unconditional branch runs).
        dc_every, dc_until: the DC schedule Γ, in steps of a ``dc_grid``-step grid (3 and 170 of 200: 57 steps).
        dc_grid: the grid ``dc_every``/``dc_until`` are counted on (200; ``None`` = this run's ``num_steps``).
        cg_iters, cg_lambda, cg_tol: CG iterations, damping λ and early-stop tolerance on ‖r‖ (5, 1e-4, 1e-4).
        encode_mode: ``sample`` (official) or ``mean`` of the VAE encoder posterior.
        adaptive_negation: update ``c_∅`` by AN at every DC step.
        null_lr, null_iters: Adam learning rate and iterations of AN (1e-3, 10).
        null_prompt: the text of ``c_∅⁰`` ("out of focus, depth of field", as every official README command).
        use_dps, dps_scale: DPS step (null branch) on the non-DC steps, step ρ (``None`` = √ᾱ_prev).
        alpha_index_shift: 1 = official ᾱ indexing, 0 = textbook.
        gradient_checkpointing: set the prior's gradient checkpointing (UNet and VAE decoder) for the DPS
            backward pass; ``None`` leaves the prior as configured.
        trajectory_every: send ``image/x0`` (decoded ẑ0) through the callback every k steps (0 = off).
    """

    def __init__(
        self,
        num_steps: int = 200,
        cfg_scale: float = 5.0,
        dc_every: float = 3,
        dc_until: float = 170,
        dc_grid: int | None = 200,
        cg_iters: int = 5,
        cg_lambda: float = 1e-4,
        cg_tol: float = 1e-4,
        encode_mode: str = "sample",
        adaptive_negation: bool = True,
        null_lr: float = 1e-3,
        null_iters: int = 10,
        null_prompt: str = "out of focus, depth of field",
        use_dps: bool = False,
        dps_scale: float | None = None,
        alpha_index_shift: int = 1,
        gradient_checkpointing: bool | None = None,
        trajectory_every: int = 0,
    ) -> None:
        if int(num_steps) <= 0:
            raise UserError(f"solver.num_steps must be positive, got {num_steps}")
        if cfg_scale < 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"solver.encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        if int(cg_iters) < 0 or cg_lambda < 0 or cg_tol < 0:
            raise UserError("solver.cg_iters, solver.cg_lambda and solver.cg_tol must be >= 0")
        if int(null_iters) < 0 or null_lr < 0:
            raise UserError("solver.null_iters and solver.null_lr must be >= 0")
        if alpha_index_shift not in (0, 1):
            raise UserError(f"solver.alpha_index_shift must be 0 or 1, got {alpha_index_shift}")
        if int(trajectory_every) < 0:
            raise UserError(f"solver.trajectory_every must be >= 0, got {trajectory_every}")
        if dps_scale is not None and dps_scale < 0:
            raise UserError(f"solver.dps_scale must be >= 0 or null, got {dps_scale}")
        self.num_steps = int(num_steps)
        self.cfg_scale = float(cfg_scale)
        self.dc_every = dc_every
        self.dc_until = dc_until
        self.dc_grid = None if dc_grid is None else int(dc_grid)
        self.cg_iters = int(cg_iters)
        self.cg_lambda = float(cg_lambda)
        self.cg_tol = float(cg_tol)
        self.encode_mode = encode_mode
        self.adaptive_negation = bool(adaptive_negation)
        self.null_lr = float(null_lr)
        self.null_iters = int(null_iters)
        self.null_prompt = str(null_prompt)
        self.use_dps = bool(use_dps)
        self.dps_scale = None if dps_scale is None else float(dps_scale)
        self.alpha_index_shift = int(alpha_index_shift)
        self.gradient_checkpointing = gradient_checkpointing
        self.trajectory_every = int(trajectory_every)
        # Validate the schedule now (a bad dc_every is a config error, not a mid-run one).
        self.dc_schedule()

    def dc_schedule(self) -> list[bool]:
        """``[num_steps]`` flags: which steps are data-consistency steps (see :func:`dc_steps`)."""
        return dc_steps(self.num_steps, self.dc_every, self.dc_until, self.dc_grid)

    # --- pieces ------------------------------------------------------------------------------------------------
    def _check(self, y: torch.Tensor, prior: DiffusionPrior, prompts: Sequence[str], generators: Sequence, image_shape):
        """One-line errors for bad inputs, before any network runs."""
        check_batch("TReg", y, prompts, generators, image_shape)
        if self.adaptive_negation:
            prior.check_image_encoder()  # a missing tower or a width mismatch (SD 2.x + ViT-L/14) fails here

    # The priors take solver-dtype inputs, run their networks in ``prior.dtype`` and return the input's dtype, so
    # the solver hands them float32/float64 tensors (the VAE's posterior sample and the CFG sum stay in float32).
    def _decode(self, prior: DiffusionPrior, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return prior.decode(z).to(dtype)

    def _adaptive_negation(
        self, prior: DiffusionPrior, x: torch.Tensor, null: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``null_iters`` Adam steps on ``L(c_∅) = mean_k ⟨f̂, c_∅[k]⟩`` per image, from a fresh Adam.

        Args:
            x: ``[B, 3, H, W]`` the data-consistent image ``x̂(y)`` in [−1, 1].
            null: ``[B, ..., D]`` the current ``c_∅`` (float32/float64).

        Returns:
            ``(c_∅ updated, loss before [B], loss after [B])``.
        """
        with torch.no_grad():
            feats = prior.embed_image(x).to(null.dtype)
        if feats.shape[-1] != null.shape[-1]:
            raise UserError(
                f"CLIP image features have width {feats.shape[-1]} but the text embedding has width "
                f"{null.shape[-1]} (SD 2.x needs an OpenCLIP ViT-H image tower); set solver.adaptive_negation=false"
            )
        # [B, D] → [B, 1, ..., 1, D] so the inner product runs over every token row of c_∅.
        feats = feats.reshape(feats.shape[0], *([1] * (null.dim() - 2)), feats.shape[-1])

        def per_image_loss(c: torch.Tensor) -> torch.Tensor:
            return (c * feats).sum(-1).flatten(1).mean(1)

        param = null.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([param], lr=self.null_lr)
        with torch.enable_grad():
            loss_before = per_image_loss(param).detach()
            for _ in range(self.null_iters):
                optimizer.zero_grad()
                # Sum over images: each image's gradient is its own (Adam is elementwise).
                per_image_loss(param).sum().backward()
                optimizer.step()
        updated = param.detach()
        return updated, loss_before, per_image_loss(updated)

    def _dps_step(
        self,
        z: torch.Tensor,
        step,
        y: torch.Tensor,
        operator: LinearOperator,
        prior: DiffusionPrior,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z_prev = z′ − ρ·∇_{z_t}‖y − A(D(ẑ0))‖₂`` with ε from the null branch. Returns (z_prev, ẑ0, x̂0, ‖·‖)."""
        result = denoiser_gradient(
            prior,
            z,
            step,
            output_fn=lambda z_in: prior.predict(z_in, step.t, null),
            loss_fn=lambda _z0, x0: residual_norm(y, operator, x0),
        )
        z_prime = sampler_step(result.z0, result.eps, step)
        rho = self.dps_scale if self.dps_scale is not None else step.alpha_bar_prev**0.5
        return (z_prime - rho * result.grad).detach(), result.z0, result.x0, result.loss

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
        self._check(y, prior, prompts, generators, image_shape)
        batch = int(image_shape[0])
        dtype = prior.state_dtype
        device = y.device
        configure_checkpointing(prior, self.gradient_checkpointing)

        plan = sampling_plan(prior.schedule, self.num_steps, self.alpha_index_shift, prior.image_seq_len(image_shape))
        is_dc = self.dc_schedule()
        with torch.no_grad():
            cond = prior.embed_text(list(prompts)).to(dtype)
            null = prior.null_embedding(batch, self.null_prompt).to(dtype)
        null_init = null.clone()
        shape = prior.latent_shape(image_shape)
        z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar).to(device)

        z0 = z
        x0: torch.Tensor | None = None
        for step in plan:
            values: dict[str, torch.Tensor] = {}
            x0 = None
            if is_dc[step.index]:
                with torch.no_grad():
                    z0, eps = denoise(prior, z, step, cond, null, self.cfg_scale, dtype)
                    x0 = self._decode(prior, z0, dtype)
                    x0y, cg_res = operator.solve_damped(y, x0, self.cg_lambda, self.cg_iters, self.cg_tol)
                    x0y = x0y.to(dtype)
                    values["dc/residual_before"] = batch_norm(operator(x0).to(dtype) - y.to(dtype))
                    values["dc/residual_after"] = batch_norm(operator(x0y).to(dtype) - y.to(dtype))
                    values["dc/cg_residual"] = cg_res
                    # Encoder sample first, then ξ: the official order of draws within a DC step.
                    z0y = prior.encode(x0y, generators, mode=self.encode_mode).to(dtype)
                if self.adaptive_negation:
                    null, loss_before, loss_after = self._adaptive_negation(prior, x0y, null)
                    values["an/loss_before"] = loss_before
                    values["an/loss"] = loss_after
                    values["an/null_shift"] = batch_norm(null - null_init)
                with torch.no_grad():
                    noise = seeding.randn(z.shape[1:], generators, device=device, dtype=dtype)
                    z = treg_renoise(z0y, z0, eps, step, noise)
            elif self.use_dps:
                z, z0, x0, residual = self._dps_step(z, step, y, operator, prior, null)
                values["dps/residual"] = residual
            else:
                with torch.no_grad():
                    z0, eps = denoise(prior, z, step, cond, null, self.cfg_scale, dtype)
                    z = sampler_step(z0, eps, step)
            snapshot = self.trajectory_every > 0 and (
                step.index % self.trajectory_every == 0 or step.index == len(plan) - 1
            )
            if snapshot:
                with torch.no_grad():
                    x0 = x0 if x0 is not None else self._decode(prior, z0, dtype)
                values["image/x0"] = x0.clamp(-1.0, 1.0).float()
            if callback is not None and values:
                callback(step.index, values)

        with torch.no_grad():
            # The output is D(ẑ0) of the last step (the official "for the last step, do not add noise"), reusing
            # that step's decode when it made one.
            x = x0 if x0 is not None else self._decode(prior, z0, dtype)
        return x.clamp(-1.0, 1.0).float()
