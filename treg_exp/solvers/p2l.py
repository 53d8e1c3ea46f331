"""P2L: prompt-tuning projected latent diffusion (Chung, Ye, Milanfar, Delbracio; ICML 2024; arXiv 2310.01110).

No official code exists; this follows the paper (Algorithms 3–5, Sec. 3, App. B; REFERENCE.md's P2L section).
Notation: ``ᾱ_t`` the noise schedule, ``E``/``D`` the VAE encoder/decoder, ``A`` the forward operator with
measurement ``y``, ``C`` the text embedding, ``ε(z_t, t, C)`` the network conditioned on ``C``,
``ẑ0(z_t, C) = (z_t − √(1−ᾱ_t)·ε(z_t, t, C))/√ᾱ_t`` Tweedie's estimate, ``r(z_t, C) = ‖y − A(D(ẑ0(z_t, C)))‖₂``.

DDIM over ``num_steps`` (1000) steps from ``z_T`` (the prior's ``initial_noise``); ``C`` starts as the embedding of
the image's prompt (the dataset's: "A high quality photo of a face" for FFHQ, "A high quality photo" for
ImageNet; ``prompt`` overrides it for every image). At every step ``t``:

1. Prompt tuning (Alg. 3, Eq. 17): ``prompt_iters`` (K) Adam steps, learning rate ``prompt_lr``, on
   ``C ↦ r(z_t, C)`` with ``z_t`` held fixed, warm-started from the previous step's ``C`` (a fresh Adam each step,
   ``C`` and its statistics in float32). Each Adam step is one pass of UNet and decoder with a backward pass to
   ``C`` (:func:`core.denoiser_gradient` with ``wrt=C``).
2. With the tuned ``C*``: ``ε̂ = ε(z_t, t, C*)``, ``ẑ0 = ẑ0(z_t, C*)`` and ``g = ∇_{z_t} r(z_t, C*)`` in one pass
   with backward to ``z_t``.
3. Projection to the range of ``E`` (Sec. 3.2, Eq. 16) on every ``project_every``-th step (k; ``i % k == 0``):
   ``x̄ = argmin_x ½‖y − Ax‖² + (γ/2)‖x − D(ẑ0)‖²``, i.e. ``(AᵀA + γI)x = Aᵀy + γD(ẑ0)``, by the shared batched
   CG (:meth:`LinearOperator.solve_damped`, ``cg_iters`` from ``D(ẑ0)``), then ``ẑ0 ← E(x̄)``.
4. DDIM re-noise and the likelihood step (Alg. 4 / 5, Eq. 13–14):
   ``z′ = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·ξ`` (η = ``eta``), and
   ``z_prev = z′ − ρ·g`` (``gradient_type=gd``) or ``z_prev = z′ − ρ·m̂/(√v̂ + ε)`` with the bias-corrected Adam
   history of ``g`` over the steps (``gradient_type=adam``, β = 0.9, 0.999; :class:`core.AdamHistory`, as LDIR),
   ρ = ``step_size``.

The output is ``D(ẑ0)`` of the last step (after its projection when it has one), clamped to [−1, 1].

Two variants (``variant``), each a set of values of the keys below that are left ``None``; a key given explicitly
wins:

========================  ==========================================  ===========================================
key                       ``paper`` (default: the paper's Alg. 3–5)    ``treg_repo`` (TReg-inverse/TReg's ``p2l``)
========================  ==========================================  ===========================================
``prompt_tuning``         ``every_step``                              ``first_step``: C moves at step 0 only
``prompt_iters``          5                                           1
``prompt_loss``           ``residual`` (``r``, as the latent step)    ``mse``: mean of ``(y − A(D(ẑ0)))²``
``cfg_scale``             1 (``ε(C)`` alone)                          4.0: ``ε(c_∅) + ω(ε(C) − ε(c_∅))``
``project_every``         4                                           0 (no projection)
``alpha_index_shift``     0 (ᾱ_t)                                     1 (ᾱ_{t−1}, the prepended-1.0 table)
``timestep_spacing``      ``trailing``                                ``leading`` (SD's own grid, t = 996 … 1)
========================  ==========================================  ===========================================

``treg_repo`` is what the TReg repository (``solver/latent_diffusion.py``, ``P2LSolver.sample``, run by its
``solve.py``, ``configs/solver/p2l.yaml``: 200 steps) computes for the P2L rows of the TReg tables: one Adam on
``C`` (lr 1e-4) built once, but ``c = c.detach()`` after the first step cuts ``C`` from it, so with torch ≥ 2
(``zero_grad`` sets the gradient to ``None`` and Adam skips the parameter) ``C`` moves once, at step 0; sampling
uses CFG between the null text and ``C`` at the caller's scale (``solve.py``'s ``--cfg_guidance``, default 4.0);
no projection; the latent step ``z′ − ∇‖y − A(D(ẑ0))‖₂`` (η = 0, ρ = 1); ᾱ_{t−1} with the network's ``t``; the
output ``D(ẑ0)`` of the last step. Departures: at ω = 1 that code runs the null branch only (its
``predict_noise`` quirk); here ω = 1 is ``ε(C)``, as everywhere in this project. And precision: that code holds
``C`` in float16 (the pipeline's text encoder output), where a step of 1e-4 is below half the spacing of entries with
``|c| ≥ 0.25`` and rounds away, so its prompt moves less than this float32 ``C`` does.

What the paper says, and what is chosen here:

- Norm, not its square: Eq. 17 (App. B.1) is solved with "a static step size with the gradient of the norm, which
  was shown to be effective in (DPS)", and LDPS, the update P2L extends (footnote 4: Eq. 14 with ``C = ∅`` is
  LDPS), uses ``‖y − A(D(ẑ0))‖₂``. So both the prompt loss and ``g`` use the norm ``r``; ``squared_residual``
  switches both to ``r²`` (the Gaussian log-likelihood of the Bayesian derivation, Eq. 11–12). With Adam on
  ``C`` the choice barely matters: it rescales each gradient by ``2r``, and the first Adam step is ``lr·sign(g)``
  either way.
- No CFG, no null text (``cfg_scale=1``): P2L conditions the network on ``C`` alone ("we did not consider the
  usage of CFG", Sec. 5, Limitations; prior latent solvers "resort to the use of null text embedding", which P2L
  replaces). One UNet call of B rows per pass; the null embedding is never used.
- Table 6 (per-task values) lost its row labels in the text extraction this project has; the reading in
  ``conf/solver_task/p2l_*.yaml`` (step size ρ, k, γ, K by row; the learning-rate row lost entirely) is marked
  unverified there.

Departures from the paper, and why:

- Conditional posterior mean in the prompt loss: the paper reports that evaluating Eq. 17 at a "conditional
  posterior mean" (Tweedie's ẑ0 shifted by one gradient step of the measurement loss, Eq. 18–19) "slightly improved
  performance"; those equations did not survive the extraction, so the prompt loss uses Tweedie's ẑ0 itself, as
  the step of Eq. 11–12 does.
- Adam state: a fresh Adam for ``C`` at each diffusion step (Eq. 17 is a per-step problem, "for every t"); ``C``
  itself carries over. The paper does not say whether the Adam moments carry over too; ``carry_prompt_adam``
  keeps one Adam for the whole run. With a fresh Adam the first step of each diffusion step moves every entry of
  ``C`` by ``prompt_lr`` whatever the size of its gradient, so late in sampling, where ``ẑ0`` barely depends on
  ``C``, ``C`` keeps moving by up to ``K·prompt_lr`` per step (seen on the Gaussian prior: the mean first converges
  to the image's, then drifts, with little effect on the image since ``∂ẑ0/∂C → 0``).
- Encoder: ``encode_mode=mean`` (``E`` as a deterministic map onto its range; ``sample`` draws the VAE posterior
  sample from the image's generator). The paper writes only ``E(x̄)``.
- Timesteps: ``timestep_spacing=trailing`` (t = 999, 998, …, 0 at 1000 steps). SD 1.x's own "leading" grid with
  ``steps_offset=1`` would start at t = 1000, outside the schedule, at 1000 steps (``leading`` keeps the prior's
  ``steps_offset``: SD's own grid, as the ``treg_repo`` variant runs it at 200 steps).
- ᾱ pairing: textbook (ᾱ_t with the network's t; the paper has no code) unless ``alpha_index_shift=1``.
- Randomness: ``z_T``, then per step the encoder's sample (projection steps, ``encode_mode=sample``) and ξ
  (``eta > 0``), from the image's solver generator on the CPU, so results do not depend on batch size or device.

Batching: image ``b`` has its own ``C`` (Adam is elementwise, the losses are sums of per-image losses), its own CG
step sizes and its own generator, so a batch of B computes what B runs of one compute.

Cost per image, with ``N = num_steps``, ``K = prompt_iters``, ``P = ⌈N / project_every⌉`` projection steps, at the
paper's variant: ``N·(K+1)`` UNet calls of 1 row and ``N·(K+1)`` decodes, each with a backward pass (the K prompt
iterations and the likelihood gradient); ``P`` encodes; one more decode for the output when the last step projects
(otherwise the last step's ``D(ẑ0)`` is reused); one text-encoder pass per distinct prompt. CG costs ``cg_iters + 1``
operator normal-equation applications per projection (no network passes), the projection diagnostics two more
operator applications. With ``prompt_tuning=first_step`` only step 0 runs the K prompt passes (the TReg
repository's loop runs a forward and backward pass for the prompt at every step and discards it; skipped here), and
with ω ∉ {0, 1} the likelihood pass's UNet call has 2 rows. Gradient checkpointing of UNet and VAE
is on by default (``gradient_checkpointing``), trading a recomputed forward for activation memory.

Diagnostics via ``callback(step_index, values)``, each value ``[B]``: ``prompt/loss_before`` (``r`` at the
warm-start ``C``), ``prompt/loss`` (``r`` at the tuned ``C*``; the loss the K Adam steps lowered, ``r²`` with
``squared_residual``), ``prompt/shift`` (‖C* − C⁰‖ from the initial prompt's embedding); on projection steps
``project/residual_before`` (‖A D(ẑ0) − y‖), ``project/residual_after`` (‖A x̄ − y‖) and ``project/cg_residual``;
``image/x0`` (``[B, 3, H, W]``) every ``trajectory_every`` steps and at the last.

Rectified-flow priors: the same algorithm with ``(ẑ0, ε̂)`` from the velocity (``core.split_prediction``) and the
flow step for DDIM (``core.sampler_step``); the tuned ``c`` of SD3 / FLUX holds the token and pooled embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import NoiseSchedule
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback, Solver
from treg_exp.solvers.core import (
    AdamHistory,
    check_batch,
    configure_checkpointing,
    denoiser_gradient,
    guided_prediction,
    residual_norm,
    sampler_step,
    sampling_plan,
)

GRADIENT_TYPES = ("gd", "adam")
ENCODE_MODES = ("mean", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing")
PROMPT_TUNINGS = ("every_step", "first_step")
PROMPT_LOSSES = ("residual", "mse")
#: the values each variant gives the keys left ``None`` (module docstring)
VARIANTS: dict[str, dict[str, object]] = {
    "paper": dict(
        prompt_tuning="every_step",
        prompt_iters=5,
        prompt_loss="residual",
        cfg_scale=1.0,
        project_every=4,
        alpha_index_shift=0,
        timestep_spacing="trailing",
    ),
    "treg_repo": dict(
        prompt_tuning="first_step",
        prompt_iters=1,
        prompt_loss="mse",
        cfg_scale=4.0,
        project_every=0,
        alpha_index_shift=1,
        timestep_spacing="leading",
    ),
}


class P2L(Solver):
    """P2L (see the module docstring for the algorithm, the choices and the cost).

    Keys documented "(variant)" take the variant's value when ``None`` (:data:`VARIANTS`).

    Args:
        variant: ``paper`` (Alg. 3–5) or ``treg_repo`` (the TReg repository's ``p2l``).
        num_steps: DDIM steps N (paper: 1000 NFE DDIM; the TReg repository 200).
        eta: DDIM η (the paper's grid-searched value did not survive the extraction).
        timestep_spacing: (variant) ``trailing`` (t = 999 … 0 at 1000 steps) or ``leading`` (the prior's offset).
        alpha_index_shift: (variant) 0 pairs the network's ``t`` with ᾱ_t, 1 with ᾱ_{t−1}.
        cfg_scale: (variant) ω of ``ε(c_∅) + ω(ε(C) − ε(c_∅))`` in the sampling step; 1 = ``ε(C)`` alone.
        null_prompt: the text of ``c_∅`` (used when ``cfg_scale`` is not 1).
        prompt: a prompt for every image instead of each image's own (``None``: the runner's per-image prompts).
        prompt_tuning: (variant) ``every_step`` or ``first_step`` (step 0 only).
        prompt_iters: (variant) K, Adam steps on ``C`` per tuned diffusion step (0 = no prompt tuning).
        prompt_lr: Adam learning rate of the prompt tuning.
        prompt_loss: (variant) ``residual`` (the latent step's loss ``r``) or ``mse`` (mean of the squared residual).
        carry_prompt_adam: keep one Adam (its moments) for ``C`` over all steps instead of a fresh one per step.
        gradient_type: ``gd`` (Alg. 4) or ``adam`` (Alg. 5, the LDIR-like history update) for the latent step.
        step_size: ρ of the latent step.
        adam_betas, adam_eps: β₁, β₂ and ε of the ``adam`` latent step (paper: 0.9, 0.999, "the default").
        project_every: (variant) k, project on steps ``i % k == 0`` (0 = never).
        gamma: γ of the proximal projection.
        cg_iters, cg_tol: CG iterations and early-stop tolerance on ‖r‖ of the projection.
        encode_mode: ``mean`` or ``sample`` of the VAE posterior for ``E(x̄)``.
        squared_residual: use ``‖y − A(D(ẑ0))‖²`` instead of the norm in both the prompt loss and the latent step.
        gradient_checkpointing: set the prior's UNet/VAE gradient checkpointing; ``None`` leaves it as configured.
        trajectory_every: send ``image/x0`` through the callback every k steps (0 = off).
    """

    def __init__(
        self,
        variant: str = "paper",
        num_steps: int = 1000,
        eta: float = 0.0,
        timestep_spacing: str | None = None,
        alpha_index_shift: int | None = None,
        cfg_scale: float | None = None,
        null_prompt: str = "",
        prompt: str | None = None,
        prompt_tuning: str | None = None,
        prompt_iters: int | None = None,
        prompt_lr: float = 1e-4,
        prompt_loss: str | None = None,
        carry_prompt_adam: bool = False,
        gradient_type: str = "gd",
        step_size: float = 1.0,
        adam_betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        project_every: int | None = None,
        gamma: float = 1.0,
        cg_iters: int = 5,
        cg_tol: float = 0.0,
        encode_mode: str = "mean",
        squared_residual: bool = False,
        gradient_checkpointing: bool | None = True,
        trajectory_every: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise UserError(f"solver.variant must be one of {tuple(VARIANTS)}, got {variant!r}")
        chosen = VARIANTS[variant]
        timestep_spacing = chosen["timestep_spacing"] if timestep_spacing is None else timestep_spacing
        alpha_index_shift = chosen["alpha_index_shift"] if alpha_index_shift is None else alpha_index_shift
        cfg_scale = chosen["cfg_scale"] if cfg_scale is None else cfg_scale
        prompt_tuning = chosen["prompt_tuning"] if prompt_tuning is None else prompt_tuning
        prompt_iters = chosen["prompt_iters"] if prompt_iters is None else prompt_iters
        prompt_loss = chosen["prompt_loss"] if prompt_loss is None else prompt_loss
        project_every = chosen["project_every"] if project_every is None else project_every
        if int(num_steps) <= 0:
            raise UserError(f"solver.num_steps must be positive, got {num_steps}")
        if eta < 0:
            raise UserError(f"solver.eta must be >= 0, got {eta}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise UserError(
                f"solver.timestep_spacing must be one of {TIMESTEP_SPACINGS} or null, got {timestep_spacing!r}"
            )
        if alpha_index_shift not in (0, 1):
            raise UserError(f"solver.alpha_index_shift must be 0 or 1, got {alpha_index_shift}")
        if not cfg_scale >= 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        if prompt_tuning not in PROMPT_TUNINGS:
            raise UserError(f"solver.prompt_tuning must be one of {PROMPT_TUNINGS}, got {prompt_tuning!r}")
        if prompt_loss not in PROMPT_LOSSES:
            raise UserError(f"solver.prompt_loss must be one of {PROMPT_LOSSES}, got {prompt_loss!r}")
        if int(prompt_iters) < 0 or prompt_lr < 0:
            raise UserError("solver.prompt_iters and solver.prompt_lr must be >= 0")
        if gradient_type not in GRADIENT_TYPES:
            raise UserError(f"solver.gradient_type must be one of {GRADIENT_TYPES}, got {gradient_type!r}")
        if step_size < 0:
            raise UserError(f"solver.step_size must be >= 0, got {step_size}")
        if len(adam_betas) != 2:
            raise UserError(f"solver.adam_betas must be two numbers, got {list(adam_betas)}")
        if int(project_every) < 0 or gamma <= 0 or int(cg_iters) < 0 or cg_tol < 0:
            raise UserError("solver.project_every and solver.cg_iters must be >= 0, solver.gamma > 0, cg_tol >= 0")
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"solver.encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        if int(trajectory_every) < 0:
            raise UserError(f"solver.trajectory_every must be >= 0, got {trajectory_every}")
        self.variant = variant
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.timestep_spacing = timestep_spacing
        self.alpha_index_shift = int(alpha_index_shift)
        self.cfg_scale = float(cfg_scale)
        self.null_prompt = str(null_prompt)
        self.prompt = None if prompt is None else str(prompt)
        self.prompt_tuning = prompt_tuning
        self.prompt_iters = int(prompt_iters)
        self.prompt_lr = float(prompt_lr)
        self.prompt_loss = prompt_loss
        self.carry_prompt_adam = bool(carry_prompt_adam)
        self.gradient_type = gradient_type
        self.step_size = float(step_size)
        self.adam_betas = (float(adam_betas[0]), float(adam_betas[1]))
        self.adam_eps = float(adam_eps)
        AdamHistory(*self.adam_betas, self.adam_eps)  # bad betas / eps are a config error now, not mid-run
        self.project_every = int(project_every)
        self.gamma = float(gamma)
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.encode_mode = encode_mode
        self.squared_residual = bool(squared_residual)
        self.gradient_checkpointing = gradient_checkpointing
        self.trajectory_every = int(trajectory_every)

    def is_tuning_step(self, index: int) -> bool:
        """Whether C is tuned at step ``index`` (every step, or step 0 only with ``prompt_tuning=first_step``)."""
        return self.prompt_tuning == "every_step" or index == 0

    def is_projection_step(self, index: int) -> bool:
        """Whether step ``index`` (0 = noisiest) projects to the encoder's range: ``index % project_every == 0``."""
        return self.project_every > 0 and index % self.project_every == 0

    # --- pieces ------------------------------------------------------------------------------------------------
    def _residual(self, y: torch.Tensor, operator: LinearOperator, x0: torch.Tensor) -> torch.Tensor:
        """The measurement loss ``[B]``: ``‖y − A x0‖₂`` (or its square with ``squared_residual``)."""
        norm = residual_norm(y, operator, x0)
        return norm * norm if self.squared_residual else norm

    def _prompt_loss(self, y: torch.Tensor, operator: LinearOperator, x0: torch.Tensor) -> torch.Tensor:
        """The loss the prompt tuning lowers ``[B]``: ``r`` (:meth:`_residual`) or the mean of ``(y − A x0)²``."""
        if self.prompt_loss == "residual":
            return self._residual(y, operator, x0)
        norm = residual_norm(y, operator, x0)
        return norm * norm / y[0].numel()

    def _tune_prompt(
        self,
        prior: DiffusionPrior,
        z: torch.Tensor,
        step,
        y: torch.Tensor,
        operator: LinearOperator,
        cond: torch.Tensor,
        optimizer: torch.optim.Adam | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step 1: K Adam steps on ``C ↦ r(z_t, C)`` with ``z_t`` fixed, from ``cond``.

        Args:
            z: ``[B, C, h, w]`` the current latent z_t (held fixed).
            cond: ``[B, ...]`` the warm-start embedding (float32/float64); with ``optimizer`` given (the carried
                Adam), it must be the leaf that optimizer updates.
            optimizer: the carried Adam, or ``None`` for a fresh one on a copy of ``cond``.

        Returns:
            ``(C*, r at the warm start [B])``; the loss is ``None`` when K = 0.
        """
        if self.prompt_iters == 0 or not self.is_tuning_step(step.index):
            return cond, None
        if optimizer is None:
            param = cond.detach().clone().requires_grad_(True)
            optimizer = torch.optim.Adam([param], lr=self.prompt_lr)
        else:
            param = cond
        loss_before = None
        for _ in range(self.prompt_iters):
            result = denoiser_gradient(
                prior,
                z,
                step,
                output_fn=lambda z_in: prior.predict(z_in, step.t, param),
                loss_fn=lambda _z0, x0: self._prompt_loss(y, operator, x0),
                wrt=param,
            )
            if loss_before is None:
                loss_before = result.loss
            optimizer.zero_grad(set_to_none=True)
            param.grad = result.grad
            optimizer.step()
        return (param if self.carry_prompt_adam else param.detach()), loss_before

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
        batch = check_batch("P2L", y, prompts, generators, image_shape)
        dtype = prior.state_dtype
        device = y.device
        configure_checkpointing(prior, self.gradient_checkpointing)

        schedule = prior.schedule
        if isinstance(schedule, NoiseSchedule):  # a flow schedule has its own spacing
            schedule = dataclasses.replace(schedule, timestep_spacing=self.timestep_spacing)
        plan = sampling_plan(schedule, self.num_steps, self.alpha_index_shift, prior.image_seq_len(image_shape))
        texts = [self.prompt] * batch if self.prompt is not None else list(prompts)
        with torch.no_grad():
            cond = prior.embed_text(texts).to(dtype)  # C⁰, the warm start of the first step
            null = prior.null_embedding(batch, self.null_prompt).to(dtype) if self.cfg_scale != 1.0 else None
        cond_init = cond.clone()
        carried = None
        if self.carry_prompt_adam:
            cond = cond.clone().requires_grad_(True)  # the one leaf the carried Adam updates in place
            carried = torch.optim.Adam([cond], lr=self.prompt_lr)
        shape = prior.latent_shape(image_shape)
        z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar).to(device)
        history = AdamHistory(*self.adam_betas, self.adam_eps) if self.gradient_type == "adam" else None

        z0 = z
        x0: torch.Tensor | None = None
        for step in plan:
            values: dict[str, torch.Tensor] = {}
            # 1. prompt tuning with z_t fixed, warm-started from the previous step's C
            cond, loss_before = self._tune_prompt(prior, z, step, y, operator, cond, carried)
            # 2. ε̂ (ε(C*) alone, or CFG between c_∅ and C*), ẑ0, D(ẑ0) and ∇_{z_t} r, in one pass
            tuned, t = cond.detach(), step.t
            result = denoiser_gradient(
                prior,
                z,
                step,
                output_fn=lambda z_in: guided_prediction(prior, z_in, t, tuned, null, self.cfg_scale),  # noqa: B023
                loss_fn=lambda _z0, x: self._residual(y, operator, x),
            )
            z0, x0 = result.z0, result.x0
            values["prompt/loss_before"] = result.loss if loss_before is None else loss_before
            values["prompt/loss"] = result.loss
            values["prompt/shift"] = batch_norm(cond.detach() - cond_init)
            with torch.no_grad():
                # 3. every k steps: proximal projection and ẑ0 ← E(x̄)
                if self.is_projection_step(step.index):
                    x_bar, cg_res = operator.solve_damped(y, x0, self.gamma, self.cg_iters, self.cg_tol)
                    x_bar = x_bar.to(dtype)
                    values["project/residual_before"] = batch_norm(operator(x0).to(dtype) - y.to(dtype))
                    values["project/residual_after"] = batch_norm(operator(x_bar).to(dtype) - y.to(dtype))
                    values["project/cg_residual"] = cg_res
                    z0 = prior.encode(x_bar, generators, mode=self.encode_mode).to(dtype)
                    x0 = None  # D(ẑ0) is no longer the decode at hand
                # 4. DDIM re-noise, then the likelihood step (GD or the Adam-like history)
                noise = None
                if self.eta > 0.0:
                    noise = seeding.randn(z.shape[1:], generators, device=device, dtype=dtype)
                z_prime = sampler_step(z0, result.eps, step, self.eta, noise)
                direction = result.grad if history is None else history.direction(result.grad)
                z = z_prime - self.step_size * direction
            snapshot = self.trajectory_every > 0 and (
                step.index % self.trajectory_every == 0 or step.index == len(plan) - 1
            )
            if snapshot:
                with torch.no_grad():
                    x0 = x0 if x0 is not None else prior.decode(z0).to(dtype)
                values["image/x0"] = x0.clamp(-1.0, 1.0).float()
            if callback is not None:
                callback(step.index, values)

        with torch.no_grad():
            # D(ẑ0) of the last step, reusing that step's decode unless it projected
            x = x0 if x0 is not None else prior.decode(z0).to(dtype)
        return x.clamp(-1.0, 1.0).float()
