"""FlowDPS: flow-driven posterior sampling on rectified-flow priors (Kim, Kim & Ye, ICCV 2025).

Read from the official code ``FlowDPS-Inverse/FlowDPS@8361843`` (``sd3_sampler.py``: ``SD3FlowDPS.sample`` and
``data_consistency``; ``SD3FlowChef``; ``solve.py`` for the defaults). Notation: the path
``z_σ = (1−σ)·x0 + σ·x1`` (``x1`` the noise), the velocity ``v = x1 − x0``, ``D`` the decoder, ``A`` the operator,
``M`` the data-term map (below). From ``z_1 ~ N(0, I)``, for each σ of the grid (σ′ the next, 0 after the last)::

    v̂   = v(z, c_∅) + w·(v(z, c) − v(z, c_∅))          (CFG between the empty prompt and the prompt)
    x̂0  = z − σ·v̂,   x̂1 = z + (1−σ)·v̂               (core.split_prediction: the clean and the noise estimate)
    z⁰ = x̂0;  zᵏ⁺¹ = zᵏ − η·∇_z ‖M(y) − M(A(D(z)))‖₂ |_{zᵏ},   k < K = 3   (gradient in the latent, not through v)
    ẑ0  = (1−σ)·x̂0 + σ·z^K                           (mix: early steps lean on the data, late ones on the prior)
    z   = (1−σ′)·ẑ0 + σ′·(√σ′·x̂1 + √(1−σ′)·ε)          (stochastic re-noising, ε fresh)

and the output is ``D(z)`` of the final latent (σ′ = 0, so ``z = ẑ0``), clamped to [−1, 1]. The data term is the
plain norm, not its square; ``M`` is ``A⁺`` for super-resolution (``"sr" in task`` in the code, the DDRM SVD
operator's pseudo-inverse) and ``Aᵀ`` otherwise (``data_term: auto``; here ``A⁺`` needs an operator with ``pinv``,
i.e. ``task.impl=svd``, so ``auto`` takes ``Aᵀ`` on the direct SR operators; ``data_term: measurement`` is
``‖y − A(D(z))‖``). The gradient is rounded to float16 before the step (``.half()`` in the code, also in float32
runs: ``round_gradient_fp16``).

``variant: flowchef`` is the repository's FlowChef baseline: one gradient of the same norm at ``x̂0`` and the
deterministic Euler step ``z = (1−σ′)·x̂0 + σ′·x̂1 − η·∇`` (no fresh noise).
``variant: psld`` is the repository's SD3 PSLD baseline (``SD3PSLD.sample``): the gradient is taken with respect to
the state ``z`` through the transformer, the flow split and the decoder, of
``‖y − A(D(x̂0))‖ + γ·‖x̂0 − E(M(y) + D(x̂0) − M(A(D(x̂0))))‖`` (γ = 0.1, ``M`` as above, ``E`` the encoder's
posterior sample), then the deterministic Euler step ``z = (1−σ′)·x̂0 + σ′·x̂1 − η·∇`` (no float16 rounding there).
It differs from ``solver=psld`` (the LituRout/PSLD code on an ε grid): the code's grid, ``A⁺`` for SR, the true
adjoint in the gluing image, no re-noised residual.

Defaults (``solve.py``): 28 steps, CFG w = 2.0, η = 15 for every variant (``solve.py`` passes ``--step_size``, default
15, to each ``--method``; the 30 / 50 / 50 in the ``sample`` signatures apply only to calls without it), K = 3, the
empty null prompt, and the grid of diffusers' ``FlowMatchEulerDiscreteScheduler`` after ``scheduler.config.shift = 4.0``
— in the diffusers release the repository pins (0.30.1) that outer shift takes effect while σ_min keeps the model's 3.0
(``shift: 4.0``; ``null`` keeps the prior's own grid; FLUX's resolution-dependent shift has no constant to replace).
``efficient_memory`` in ``solve.py`` precomputes the text embeddings and frees the encoders: the loop is unchanged (here
the prior caches the conditioning; ``model.offload_text_encoders`` where the prior has it).

Departures, and why: the norm is per image (the code's norm spans the batch; equal for batch 1, which is all it
runs); the networks run in ``prior.dtype`` and the latent state, data term and gradient in float32 (float64 for a
float64 prior); noise is drawn per image from its generator (the code uses the global RNG). Protocol quirks of
``solve.py`` that belong to the task, not the solver (σ_y = 0.03 from the global RNG, min–max-normalised saving,
motion blur with ``Aᵀ = I``) are not reproduced.

Cost per image: ``num_steps`` transformer calls of 2 rows (1 with w ∈ {0, 1}), ``K·num_steps`` decoder passes each
differentiated (FlowChef: ``num_steps``), one decode for the output. No backward pass through the transformer
(PSLD: one per step, with one decode and one encode).
Diagnostics via ``callback(step_index, values)``: ``flowdps/residual`` ``[B]`` ``‖M(y) − M(A(D(x̂0)))‖`` at the
first data step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import FlowSchedule
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers import core
from treg_exp.solvers.base import Callback, Solver

VARIANTS = ("flowdps", "flowchef", "psld")
DATA_TERMS = ("auto", "adjoint", "pinv", "measurement")
#: γ of the repository's SD3 PSLD: the weight of the gluing term ``‖x̂0 − E(x̃)‖``
PSLD_GLUING_WEIGHT = 0.1


class FlowDPS(Solver):
    """FlowDPS (module docstring), and the repository's FlowChef and PSLD baselines (``variant=flowchef|psld``).

    Args:
        num_steps: N, the flow grid's size (NFE 28).
        cfg_scale: w of CFG between the null prompt and the prompt (2.0).
        step_size: η of the latent gradient steps (15, ``solve.py``'s for every variant).
        num_dc_steps: K, gradient steps per grid step (3; FlowChef takes one).
        data_term: ``auto`` (``A⁺`` for SR where the operator has ``pinv``, else ``Aᵀ``), ``adjoint``, ``pinv`` or
            ``measurement``.
        round_gradient_fp16: round each gradient to float16 before the step, as the code does.
        shift: the grid's outer constant shift (4.0, the code's); ``None``: the prior's own grid.
        null_prompt: the text of ``c_∅`` (the empty prompt).
        variant: ``flowdps``, ``flowchef`` or ``psld``.
    """

    def __init__(
        self,
        num_steps: int = 28,
        cfg_scale: float = 2.0,
        step_size: float = 15.0,
        num_dc_steps: int = 3,
        data_term: str = "auto",
        round_gradient_fp16: bool = True,
        shift: float | None = 4.0,
        null_prompt: str = "",
        variant: str = "flowdps",
    ) -> None:
        if int(num_steps) < 1:
            raise UserError(f"solver.num_steps must be at least 1, got {num_steps}")
        if not cfg_scale >= 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        if not step_size >= 0:
            raise UserError(f"solver.step_size must be >= 0, got {step_size}")
        if int(num_dc_steps) < 1:
            raise UserError(f"solver.num_dc_steps must be at least 1, got {num_dc_steps}")
        if data_term not in DATA_TERMS:
            raise UserError(f"solver.data_term must be one of {DATA_TERMS}, got {data_term!r}")
        if shift is not None and not shift > 0:
            raise UserError(f"solver.shift must be positive (or null: the prior's grid), got {shift}")
        if variant not in VARIANTS:
            raise UserError(f"solver.variant must be one of {VARIANTS}, got {variant!r}")
        if variant == "psld" and data_term == "measurement":
            raise UserError(
                "FlowDPS: solver.variant=psld glues with A⁺ or Aᵀ: set solver.data_term to auto, adjoint or pinv"
            )
        self.num_steps = int(num_steps)
        self.cfg_scale = float(cfg_scale)
        self.step_size = float(step_size)
        self.num_dc_steps = int(num_dc_steps) if variant == "flowdps" else 1
        self.data_term = data_term
        self.round_gradient_fp16 = bool(round_gradient_fp16)
        self.shift = None if shift is None else float(shift)
        self.null_prompt = str(null_prompt)
        self.variant = variant

    def check_prior(self, prior: DiffusionPrior) -> None:
        """FlowDPS is defined on rectified-flow priors only (the grid's shift is checked by :meth:`plan`: a prior
        reads its scheduler config when it loads)."""
        if prior.prediction_type != "flow":
            raise UserError(
                f"FlowDPS is defined for rectified-flow priors (model=sd35_medium, sd3_medium, flux_dev, "
                f"flux_schnell, gaussian_flow); {type(prior).__name__} predicts {prior.prediction_type}"
            )

    def plan(self, prior: DiffusionPrior, image_shape: Sequence[int]) -> list[core.Step]:
        """The flow grid: the prior's, with the outer shift replaced by ``shift`` when set (a constant-shift grid
        only; ``conf/solver_model/flowdps_flux_*.yaml`` set ``shift: null``)."""
        schedule: FlowSchedule = prior.schedule
        if self.shift is not None:
            if schedule.use_dynamic_shifting:
                raise UserError(
                    f"FlowDPS: solver.shift={self.shift} replaces SD3's constant grid shift; {type(prior).__name__} "
                    "uses FLUX's resolution-dependent shift: set solver.shift=null"
                )
            schedule = replace(schedule, sampling_shift=self.shift)
        return core.flow_plan(schedule, self.num_steps, prior.image_seq_len(image_shape))

    def data_map(self, operator: LinearOperator):
        """``M``: the map both sides of the data term go through (module docstring), or ``None`` for ``‖y − Ax‖``."""
        term = self.data_term
        if term == "auto":
            is_sr = str(getattr(operator, "name", "")).startswith("sr")
            term = "pinv" if is_sr and hasattr(operator, "pinv") else "adjoint"
        if term == "pinv":
            if not hasattr(operator, "pinv"):
                raise UserError(
                    f"FlowDPS: solver.data_term=pinv needs an operator with a pseudo-inverse (task.impl=svd); "
                    f"{type(operator).__name__} has none"
                )
            return operator.pinv
        return operator.adjoint if term == "adjoint" else None

    def data_gradient(
        self, z: torch.Tensor, y: torch.Tensor, operator: LinearOperator, prior: DiffusionPrior, data_map
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∇_z Σ_b ‖M(y_b) − M(A(D(z_b)))‖₂, the norms [B])`` through the decoder, rounded to float16 if set."""
        with torch.enable_grad():
            z_in = z.detach().requires_grad_(True)
            x = prior.decode(z_in).to(z.dtype)
            ax = operator(x).to(z.dtype)
            target = y.to(z.dtype)
            if data_map is not None:
                ax, target = data_map(ax).to(z.dtype), data_map(target).to(z.dtype)
            norms = batch_norm(target - ax)
            (grad,) = torch.autograd.grad(norms.sum(), z_in)
        if self.round_gradient_fp16:
            grad = grad.half().to(z.dtype)
        return grad, norms.detach()

    def psld_gradient(
        self,
        z: torch.Tensor,
        step: core.Step,
        guided_output,
        y: torch.Tensor,
        operator: LinearOperator,
        prior: DiffusionPrior,
        data_map,
        generators: Sequence[torch.Generator],
    ) -> core.DenoiserGradient:
        """The repository's SD3 PSLD: ``∇_z [‖y − A(x̂0)‖ + γ·‖ẑ0 − E(M(y) + x̂0 − M(A(x̂0)))‖]`` per image, through
        the transformer (``guided_output``: ``z ↦`` the CFG velocity), the flow split and the decoder."""
        target = y.to(z.dtype)

        def loss(z0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
            ax = operator(x0).to(z.dtype)
            glued = data_map(target).to(z.dtype) + x0 - data_map(ax).to(z.dtype)
            z_glued = prior.encode(glued, generators, mode="sample").to(z.dtype)
            return batch_norm(ax - target) + PSLD_GLUING_WEIGHT * batch_norm(z0 - z_glued)

        return core.denoiser_gradient(prior, z, step, guided_output, loss)

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
        batch = core.check_batch("FlowDPS", y, prompts, generators, image_shape)
        self.check_prior(prior)
        data_map = self.data_map(operator)
        dtype = prior.state_dtype
        shape = prior.latent_shape(image_shape)
        plan = self.plan(prior, image_shape)
        with torch.no_grad():
            z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar)
            cond = prior.embed_text(list(prompts)).to(dtype)
            uncond = prior.null_embedding(batch, self.null_prompt).to(dtype)
            for step in plan:
                sigma, sigma_next = step.sigma, step.sigma_prev
                if self.variant == "psld":

                    def guided(z_in: torch.Tensor, step=step) -> torch.Tensor:
                        return core.guided_prediction(prior, z_in, step.t, cond, uncond, self.cfg_scale)

                    result = self.psld_gradient(z, step, guided, y, operator, prior, data_map, generators)
                    z = core.flow_step(result.z0, result.eps, sigma_next) - self.step_size * result.grad
                    residual = result.loss  # the PSLD loss (residual + γ·gluing) at x̂0
                elif self.variant == "flowchef":
                    x0_hat, x1_hat = core.denoise(prior, z, step, cond, uncond, self.cfg_scale, dtype)
                    grad, residual = self.data_gradient(x0_hat, y, operator, prior, data_map)
                    z = core.flow_step(x0_hat, x1_hat, sigma_next) - self.step_size * grad
                else:
                    x0_hat, x1_hat = core.denoise(prior, z, step, cond, uncond, self.cfg_scale, dtype)
                    z_dc, residual = x0_hat, None
                    for _ in range(self.num_dc_steps):
                        grad, norms = self.data_gradient(z_dc, y, operator, prior, data_map)
                        residual = norms if residual is None else residual
                        z_dc = z_dc - self.step_size * grad
                    z0_mixed = (1.0 - sigma) * x0_hat + sigma * z_dc
                    # the code's √σ′·x̂1 + √(1−σ′)·ε is the flow step with a fresh-noise fraction f = √(1−σ′)
                    fresh = seeding.randn(shape[1:], generators, device=z.device, dtype=dtype)
                    z = core.flow_step(z0_mixed, x1_hat, sigma_next, (1.0 - sigma_next) ** 0.5, fresh)
                if callback is not None:
                    timestep = torch.full((batch,), float(step.t))
                    callback(step.index, {"timestep": timestep, "flowdps/residual": residual})
            x = prior.decode(z)
        return x.clamp(-1.0, 1.0).float()
