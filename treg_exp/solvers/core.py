"""The shared diffusion math every solver uses: timestep grid, Tweedie, DDIM step, classifier-free guidance.

A solver never assumes the prior's parameterisation: :func:`denoise` (or :func:`split_prediction` of a guided
network output) returns the pair ``(ẑ0, ε̂)`` for ε, v and rectified-flow priors alike, and :func:`sampler_step`
takes the pair to the next grid point (DDIM on ᾱ grids). ``DiffusionPrior.prediction_type`` says what
``prior.predict`` returns: ε (``epsilon``; ``v_prediction`` priors convert v to ε themselves, with the textbook ᾱ_t
of the network's timestep) or the flow velocity ``v = ε − x0`` (``flow``: ``ẑ0 = z_t − σ·v``,
``ε̂ = z_t + (1−σ)·v`` on the path ``z_σ = (1−σ)·x0 + σ·ε``).

Notation (REFERENCE.md): ``ᾱ_t = alphas_cumprod[t]``;
Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t``;
DDIM ``z′ = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·ξ`` with ``σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``;
CFG ``ε̂ = ε(c_∅) + ω(ε(c) − ε(c_∅))``.

Also here, once for every solver: the gradient of a loss of ``(ẑ0, D(ẑ0))`` with respect to ``z_t`` through the
network and the decoder (:func:`denoiser_gradient`, the DPS family), the Adam-like history of a gradient
(:class:`AdamHistory`, LDIR and P2L), the measurement residual norm, and the checks every solver runs first.

``alpha_index_shift`` selects which ᾱ goes with the timestep handed to the network: 0 is the textbook
(diffusers) ᾱ_t; 1 is the official TReg code, which prepends 1.0 to ``alphas_cumprod`` and so uses ᾱ_{t−1}.
Past the end of the table (t − shift < 0) the schedule's ``final_alpha_cumprod`` is used, which with SD's
``set_alpha_to_one=False`` is ᾱ_0: so with shift 1 the last step (t = 1) has ᾱ_t = ᾱ_prev = ᾱ_0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.schedule import FlowSchedule, NoiseSchedule


@dataclass(frozen=True)
class Step:
    """One step of a sampling grid.

    Attributes:
        index: position in the grid, 0 for the noisiest step.
        t: timestep handed to the network.
        t_prev: the next (less noisy) timestep, negative after the last step.
        alpha_bar: ᾱ paired with ``t`` (after the index shift).
        alpha_bar_prev: ᾱ paired with ``t_prev``.
        sigma, sigma_prev: on a rectified-flow grid, σ of ``z = (1−σ)·x0 + σ·ε`` at ``t`` and ``t_prev`` (``None`` on
            ᾱ grids). There ``alpha_bar`` is the ᾱ of the same signal-to-noise ratio,
            ``(1−σ)²/((1−σ)² + σ²)`` (the ᾱ of ``z/√((1−σ)² + σ²)``), so ᾱ-valued weights keep their meaning.
    """

    index: int
    t: int | float
    t_prev: int | float
    alpha_bar: float
    alpha_bar_prev: float
    sigma: float | None = None
    sigma_prev: float | None = None

    @property
    def is_last(self) -> bool:
        return self.t_prev < 0


def sampling_timesteps(schedule: NoiseSchedule, num_steps: int, alpha_index_shift: int = 0) -> list[int]:
    """Descending timesteps of an ``num_steps`` grid, as diffusers' DDIMScheduler spaces them.

    ``leading``: t = k·(T // N) + offset for k = N−1 … 0 (SD 1.5, 200 steps: 996, 991, …, 1).
    ``trailing``: t = round(T − k·T/N) − 1.

    The first timestep must have a ᾱ in the table: ``t − alpha_index_shift < T``. So SD's 1000-step grid
    (t = 1000, …, 1) is valid with the official ᾱ_{t−1} pairing (shift 1: what the official PSLD and TReg codes
    run at 1000 steps, the UNet getting t = 1000) and an error with the textbook pairing.
    """
    big_t = schedule.num_train_timesteps
    if not 0 < num_steps <= big_t:
        raise UserError(f"num_steps must be in 1..{big_t}, got {num_steps}")
    if schedule.timestep_spacing == "leading":
        ratio = big_t // num_steps
        grid = [k * ratio + schedule.steps_offset for k in range(num_steps)][::-1]
    elif schedule.timestep_spacing == "trailing":
        ratio = big_t / num_steps
        grid = [int(round(big_t - k * ratio)) - 1 for k in range(num_steps)]
    else:
        raise UserError(f"unsupported timestep_spacing {schedule.timestep_spacing!r}")
    if grid[0] - alpha_index_shift >= big_t:
        raise UserError(
            f"timestep {grid[0]} is outside the schedule's {big_t} steps "
            f"(num_steps={num_steps}, steps_offset={schedule.steps_offset}, alpha_index_shift={alpha_index_shift})"
        )
    return grid


def alpha_bar_at(schedule: NoiseSchedule, t: int, alpha_index_shift: int = 0) -> float:
    """ᾱ_{t − shift}, or the schedule's ``final_alpha_cumprod`` when ``t − shift < 0``."""
    k = t - alpha_index_shift
    return float(schedule.alphas_cumprod[k]) if k >= 0 else schedule.final_alpha_cumprod


def ddim_plan(schedule: NoiseSchedule, num_steps: int, alpha_index_shift: int = 0) -> list[Step]:
    """The grid of a DDIM sampler: each step's timestep and the ᾱ pair it uses (``t_prev = t − T // N``)."""
    stride = schedule.num_train_timesteps // num_steps
    return [
        Step(
            index=i,
            t=t,
            t_prev=t - stride,
            alpha_bar=alpha_bar_at(schedule, t, alpha_index_shift),
            alpha_bar_prev=alpha_bar_at(schedule, t - stride, alpha_index_shift),
        )
        for i, t in enumerate(sampling_timesteps(schedule, num_steps, alpha_index_shift))
    ]


def flow_alpha_bar(sigma: float) -> float:
    """The ᾱ with the signal-to-noise ratio of ``z_σ = (1−σ)·x0 + σ·ε``: ``(1−σ)²/((1−σ)² + σ²)`` (1 at σ = 0)."""
    return (1.0 - sigma) ** 2 / ((1.0 - sigma) ** 2 + sigma**2)


def flow_plan(schedule: FlowSchedule, num_steps: int, image_seq_len: int | None = None) -> list[Step]:
    """The grid of a rectified-flow sampler: σ from :meth:`FlowSchedule.sigmas`, the network's timestep ``σ·T``,
    σ′ = the next grid point (0 after the last step, where ``t_prev`` is −1); ᾱ fields from :func:`flow_alpha_bar`."""
    if not 0 < num_steps <= schedule.num_train_timesteps:
        raise UserError(f"num_steps must be in 1..{schedule.num_train_timesteps}, got {num_steps}")
    sigmas = [float(s) for s in schedule.sigmas(num_steps, image_seq_len)] + [0.0]
    big_t = schedule.num_train_timesteps
    return [
        Step(
            index=i,
            t=sigma * big_t,
            t_prev=sigma_prev * big_t if i + 1 < num_steps else -1,
            alpha_bar=flow_alpha_bar(sigma),
            alpha_bar_prev=flow_alpha_bar(sigma_prev),
            sigma=sigma,
            sigma_prev=sigma_prev,
        )
        for i, (sigma, sigma_prev) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True))
    ]


def sampling_plan(
    schedule: NoiseSchedule | FlowSchedule,
    num_steps: int,
    alpha_index_shift: int = 0,
    image_seq_len: int | None = None,
) -> list[Step]:
    """The prior's deterministic-sampler grid: :func:`ddim_plan` for an ᾱ schedule, :func:`flow_plan` for a flow one
    (where ``alpha_index_shift``, an ᾱ-table convention, does not apply)."""
    if isinstance(schedule, FlowSchedule):
        return flow_plan(schedule, num_steps, image_seq_len)
    return ddim_plan(schedule, num_steps, alpha_index_shift)


#: the grids of the DDPM-ancestral (DPS-family) solvers: ``leading`` = :func:`ddim_plan`, ``respaced`` =
#: :func:`respaced_plan` (guided-diffusion's ``timestep_respacing: N``)
GRIDS = ("leading", "respaced")


def respaced_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(T, [N])`` (``timestep_respacing: N``), descending.

    One section of T steps strided by ``(T − 1)/(N − 1)``: ``t_k = round(Σ_{j<k} (T − 1)/(N − 1))`` for
    k = 0 … N−1 (1 for N = 1), the stride accumulated in float64 and rounded half to even, as the official loop does,
    so the ties fall the same way (a closed form ``round(k·(T − 1)/(N − 1))`` differs for 283 of the 1000 N).
    50 of 1000: 999, 979, 958, …, 41, 20, 0 (both ends always in the grid; ``ddim_plan``'s has 980, …, 0).
    """
    big_t = int(num_train_timesteps)
    if not 0 < num_steps <= big_t:
        raise UserError(f"num_steps must be in 1..{big_t}, got {num_steps}")
    stride = 1.0 if num_steps <= 1 else (big_t - 1) / (num_steps - 1)
    grid, position = [], 0.0
    for _ in range(num_steps):
        grid.append(round(position))
        position += stride
    return grid[::-1]


def plan_from_timesteps(schedule: NoiseSchedule, timesteps: Sequence[int], alpha_index_shift: int = 0) -> list[Step]:
    """The :class:`Step` s of a descending grid whose ``t_prev`` is the next grid point (−1 after the last, where the
    schedule's ``final_alpha_cumprod`` is used): the grid's own β between neighbours, as guided-diffusion respaces."""
    nexts = [*timesteps[1:], -1]
    return [
        Step(
            index=i,
            t=int(t),
            t_prev=int(tp),
            alpha_bar=alpha_bar_at(schedule, int(t), alpha_index_shift),
            alpha_bar_prev=alpha_bar_at(schedule, int(tp), alpha_index_shift),
        )
        for i, (t, tp) in enumerate(zip(timesteps, nexts, strict=True))
    ]


def respaced_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """The ``respaced`` grid (:func:`respaced_timesteps`) as steps, textbook ᾱ_t (guided-diffusion's pairing)."""
    return plan_from_timesteps(schedule, respaced_timesteps(schedule.num_train_timesteps, num_steps))


def tweedie(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Tweedie estimate ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t``."""
    return (z_t - (1.0 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def ddim_sigma(alpha_bar: float, alpha_bar_prev: float, eta: float) -> float:
    """``σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)`` (0 when η = 0)."""
    if eta == 0.0:
        return 0.0
    variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)
    return eta * max(variance, 0.0) ** 0.5


def ddim_step(
    z0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM update ``z′ = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·ξ``.

    Args:
        z0: ``[B, C, h, w]`` the clean estimate ẑ0.
        eps: ``[B, C, h, w]`` the noise estimate ε̂ paired with ``z0``.
        noise: ξ, required when ``eta > 0``.
    """
    return renoise(z0, eps, alpha_bar_prev, ddim_sigma(alpha_bar, alpha_bar_prev, eta), noise)


def guided_prediction(
    prior,
    z_t: torch.Tensor,
    t: int | float,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance ``ε̂ = ε(c_∅) + ω(ε(c) − ε(c_∅))`` of ``prior.predict`` with the pair in one call.

    On a flow prior the same combination of velocities, ``v̂ = v(c_∅) + ω(v(c) − v(c_∅))``: ẑ0 and ε̂ are affine in
    the network output with coefficients summing to one, so guiding the output guides both.
    ω = 0 runs only the unconditional branch and ω = 1 only the conditional one (each one call of B rows);
    otherwise one call of 2B rows ``[c_∅; c]`` (diffusers' order). This fixes the official TReg quirk in which
    ω = 1.0 ran the null branch only.

    Args:
        z_t: ``[B, C, h, w]``; cond, uncond: ``[B, ...]`` embeddings (``c`` and ``c_∅``).
    """
    if guidance_scale == 0.0:
        return prior.predict(z_t, t, uncond)
    if guidance_scale == 1.0:
        return prior.predict(z_t, t, cond)
    out_uncond, out_cond = prior.predict(torch.cat([z_t, z_t]), t, torch.cat([uncond, cond])).chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def split_prediction(prior, z_t: torch.Tensor, output: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ẑ0, ε̂)`` from a (guided) ``prior.predict`` output at ``step``: the one place the parameterisation enters.

    ε (and v, converted to ε by the prior): Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` with the step's ᾱ.
    Rectified flow (``z_σ = (1−σ)·x0 + σ·ε``, velocity ``v = ε − x0``): ``ẑ0 = z_t − σ·v``, ``ε̂ = z_t + (1−σ)·v``
    (defined at σ = 1, where Tweedie from ε̂ is not).

    Args:
        z_t: ``[B, C, h, w]``; output: ``[B, C, h, w]`` what ``prior.predict`` (or :func:`guided_prediction`) gave.
    """
    if prior.prediction_type == "flow":
        if step.sigma is None:
            raise UserError(f"{type(prior).__name__} is a rectified-flow prior but the grid has no σ")
        return z_t - step.sigma * output, z_t + (1.0 - step.sigma) * output
    return tweedie(z_t, output, step.alpha_bar), output


def denoise(
    prior,
    z_t: torch.Tensor,
    step: Step,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ẑ0, ε̂)`` ``[B, C, h, w]`` each at ``step`` with CFG: :func:`guided_prediction` then
    :func:`split_prediction` (in ``dtype`` when given: the solver's, whatever the network's)."""
    output = guided_prediction(prior, z_t, step.t, cond, uncond, guidance_scale)
    if dtype is not None:
        output = output.to(dtype)
    return split_prediction(prior, z_t, output, step)


def eps_for_z0(z_t: torch.Tensor, z0: torch.Tensor, step: Step) -> torch.Tensor:
    """The ε̂ that pairs with a given ẑ0 at ``step`` (e.g. after clamping ẑ0): ``(z_t − √ᾱ_t·ẑ0)/√(1−ᾱ_t)``, or
    ``(z_t − (1−σ)·ẑ0)/σ`` on a flow grid."""
    if step.sigma is not None:
        return (z_t - (1.0 - step.sigma) * z0) / step.sigma
    return (z_t - step.alpha_bar**0.5 * z0) / (1.0 - step.alpha_bar) ** 0.5


def sampler_step(
    z0: torch.Tensor, eps: torch.Tensor, step: Step, eta: float = 0.0, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """The deterministic/stochastic step to ``step``'s ``t_prev`` from ``(ẑ0, ε̂)``: :func:`ddim_step` with η on ᾱ
    grids; on flow grids :func:`flow_step` with ``η`` the fraction of fresh noise (0: the Euler step)."""
    if step.sigma_prev is not None:
        return flow_step(z0, eps, step.sigma_prev, eta, noise)
    return ddim_step(z0, eps, step.alpha_bar, step.alpha_bar_prev, eta, noise)


def flow_step(
    z0: torch.Tensor,
    eps: torch.Tensor,
    sigma_prev: float,
    fresh: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Re-noise to σ′ on the rectified-flow path: ``z′ = (1−σ′)·ẑ0 + σ′·(√(1−f²)·ε̂ + f·ξ)``.

    ``f = 0`` (``fresh``) is the deterministic Euler step ``z′ = z + (σ′ − σ)·v`` (same value when ẑ0, ε̂ come from
    ``v`` at ``z``: ``z = (1−σ)ẑ0 + σε̂`` and ``v = ε̂ − ẑ0``); ``f = 1`` re-noises with fresh noise only.

    Args:
        z0, eps: ``[B, C, h, w]`` the pair from :func:`split_prediction`; sigma_prev: σ′ in [0, 1];
        fresh: f in [0, 1]; noise: ξ ``[B, C, h, w]``, required when ``f > 0``.
    """
    if fresh == 0.0:
        return (1.0 - sigma_prev) * z0 + sigma_prev * eps
    if not 0.0 < fresh <= 1.0:
        raise UserError(f"on a flow prior eta is the fraction of fresh noise, in [0, 1]; got {fresh}")
    if noise is None:
        raise ValueError("flow_step with fresh noise needs noise")
    return (1.0 - sigma_prev) * z0 + sigma_prev * ((1.0 - fresh**2) ** 0.5 * eps + fresh * noise)


# --- checks every solver runs before any network pass -------------------------------------------------------------
def check_batch(
    name: str, y: torch.Tensor, prompts: Sequence[str], generators: Sequence, image_shape: Sequence[int]
) -> int:
    """One-line :class:`UserError` unless measurements, prompts and generators all have the batch size; returns it."""
    batch = int(image_shape[0])
    if len(prompts) != batch or len(generators) != batch or y.shape[0] != batch:
        raise UserError(
            f"{name} got {y.shape[0]} measurements, {len(prompts)} prompts and {len(generators)} generators "
            f"for a batch of {batch} images"
        )
    return batch


def require_alpha_bar_prior(name: str, prior, why: str) -> None:
    """One-line :class:`UserError` when ``prior`` is a rectified-flow prior and ``name`` is defined only on ᾱ
    schedules (``why``: what of the method needs ᾱ)."""
    if prior.prediction_type == "flow":
        raise UserError(f"{name} is not defined for rectified-flow priors ({type(prior).__name__}): {why}")


def configure_checkpointing(prior, enabled: bool | None) -> None:
    """Set the prior's gradient checkpointing (UNet and VAE) when ``enabled`` is a bool; ``None`` leaves it."""
    if enabled is not None:
        prior.set_gradient_checkpointing(bool(enabled))


# --- the gradient through the denoiser (DPS family) ---------------------------------------------------------------
def residual_norm(y: torch.Tensor, operator, x: torch.Tensor) -> torch.Tensor:
    """``‖y − A x‖₂`` per image ``[B]`` (the norm, not its square: DPS, LDPS, PSLD), in the dtype of ``x``."""
    return batch_norm(y.to(x.dtype) - operator(x).to(x.dtype))


@dataclass(frozen=True)
class DenoiserGradient:
    """What :func:`denoiser_gradient` returns; every tensor is detached (the graph is already freed).

    Attributes:
        grad: ``∇ Σ_b L_b`` with respect to ``z_t`` (or the tensor given as ``wrt``), its shape.
        eps: ``[B, C, h, w]`` the ε̂ used.
        z0: ``[B, C, h, w]`` Tweedie's ẑ0.
        x0: ``[B, 3, H, W]`` ``D(ẑ0)`` (not clamped).
        loss: ``[B]`` each image's loss ``L_b``.
    """

    grad: torch.Tensor
    eps: torch.Tensor
    z0: torch.Tensor
    x0: torch.Tensor
    loss: torch.Tensor


def denoiser_gradient(
    prior,
    z_t: torch.Tensor,
    step: Step,
    output_fn: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    wrt: torch.Tensor | None = None,
) -> DenoiserGradient:
    """``∇_{z_t} Σ_b L_b(ẑ0(z_t), D(ẑ0(z_t)))`` through the network, Tweedie and the decoder, in one backward pass.

    ``(ẑ0, ε̂)`` from :func:`split_prediction` (Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂(z_t))/√ᾱ_t``; ``z_t − σ·v`` on a
    flow prior). The loss is a sum of per-image losses, so image ``b`` gets the gradient
    of its own ``L_b`` and a batch computes what B runs of one compute. The graph is freed when this returns; the
    prior's gradient checkpointing (UNet, VAE) applies to it.

    Args:
        z_t: ``[B, C, h, w]`` the current latent, in the solver's dtype.
        step: the grid step (its ᾱ_t, or σ on a flow grid).
        output_fn: ``z ↦ prior.predict`` output ``[B, C, h, w]`` (e.g. the CFG estimate, or one branch).
        loss_fn: ``(ẑ0, x̂0) ↦ [B]`` per-image losses, differentiable (may run the encoder: GML-DPS, PSLD).
        wrt: differentiate with respect to this leaf instead of ``z_t`` (which is then held fixed), e.g. the text
            embedding that ``output_fn`` closes over (P2L's prompt tuning); it must have ``requires_grad``.
    """
    dtype = z_t.dtype
    with torch.enable_grad():
        z_in = z_t.detach().requires_grad_(wrt is None)
        z0, eps = split_prediction(prior, z_in, output_fn(z_in).to(dtype), step)
        x0 = prior.decode(z0).to(dtype)
        loss = loss_fn(z0, x0)
        (grad,) = torch.autograd.grad(loss.sum(), z_in if wrt is None else wrt)
    return DenoiserGradient(grad=grad, eps=eps.detach(), z0=z0.detach(), x0=x0.detach(), loss=loss.detach())


# --- the Adam-like history of a gradient (LDIR, P2L) --------------------------------------------------------------
class AdamHistory:
    """The bias-corrected Adam direction of a sequence of gradients, one per sampling step (LDIR; P2L's "Adam").

    ``m_k = β₁ m_{k−1} + (1−β₁) g_k``, ``v_k = β₂ v_{k−1} + (1−β₂) g_k²``, ``m̂ = m_k/(1−β₁ᵏ)``, ``v̂ = v_k/(1−β₂ᵏ)``;
    :meth:`direction` returns ``m̂/(√v̂ + ε)``, which the solver scales by its step size. Elementwise, so every image
    of a batch has its own history.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0) or eps <= 0:
            raise UserError(f"Adam history needs 0 <= betas < 1 and eps > 0, got {beta1}, {beta2}, {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.count = 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Add ``grad`` to the history and return ``m̂/(√v̂ + ε)`` (same shape)."""
        self.count += 1
        if self.m is None:
            self.m, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * grad * grad
        m_hat = self.m / (1.0 - self.beta1**self.count)
        v_hat = self.v / (1.0 - self.beta2**self.count)
        return m_hat / (v_hat.sqrt() + self.eps)


# --- the DDPM ancestral step (DPS family: latent helper) ------------------------------------------------------------
DDPM_VARIANCES = ("small", "large")


def ddpm_step(
    z_t: torch.Tensor,
    z0: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    noise: torch.Tensor | None = None,
    variance: str = "small",
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM ancestral step: a draw from ``q(z_prev | z_t, ẑ0)`` (Ho et al. 2020, eq. 6–7), on any grid.

    With the grid's own ``β = 1 − ᾱ_t/ᾱ_prev`` (guided-diffusion's respaced betas) and ``α = 1 − β``:
    ``z_prev = √ᾱ_prev·β/(1−ᾱ_t)·ẑ0 + √α·(1−ᾱ_prev)/(1−ᾱ_t)·z_t + σ·ξ``, with ``σ² = β̃ = β·(1−ᾱ_prev)/(1−ᾱ_t)``
    (``variance="small"``, the posterior variance) or ``σ² = β`` (``"large"``); no noise on a step to ``ᾱ_prev = 1``.
    With ``"small"`` and ẑ0, z_t tied by Tweedie this is DDIM with η = 1.

    Args:
        z_t: ``[B, C, h, w]`` the current state; z0: ``[B, C, h, w]`` its clean estimate ẑ0.
        noise: ξ ``[B, C, h, w]``, required unless σ = 0 (``ᾱ_prev = 1``, or ``ᾱ_prev = ᾱ_t``).
        log_variance: a per-element log σ² (a learned variance, ``DiffusionPrior.learned_log_variance``) used
            instead of ``variance``'s σ²; still no noise on the step to ``ᾱ_prev = 1``.
    """
    if variance not in DDPM_VARIANCES:
        raise UserError(f"DDPM variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    beta = 1.0 - alpha_bar / alpha_bar_prev
    coef_z0 = alpha_bar_prev**0.5 * beta / (1.0 - alpha_bar)
    coef_zt = (1.0 - beta) ** 0.5 * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    z_prev = coef_z0 * z0 + coef_zt * z_t
    sigma2 = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) if variance == "small" else beta
    if alpha_bar_prev >= 1.0:
        sigma2 = (
            0.0  # the last step, to the clean image, adds no noise (Ho et al.'s z = 0 at t = 1) for either variance
        )
    if sigma2 > 0.0:
        if noise is None:
            raise ValueError("ddpm_step with a positive variance needs noise")
        sigma = sigma2**0.5 if log_variance is None else (0.5 * log_variance).exp()
        z_prev = z_prev + sigma * noise
    return z_prev


# --- pixel-space solvers: DDS, DiffPIR (helper "pixel", issue 10) -------------------------------------------------
def renoise(
    z0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_prev: float,
    sigma: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DDIM form with an explicit noise level: ``z_prev = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·ξ``.

    DDS writes its step as ``σ = η·√(1−ᾱ_prev)`` (so ``√(1−ᾱ_prev)·√(1−η²)`` multiplies ε̂), DiffPIR as
    ``σ = √ζ·√(1−ᾱ_prev)``; :func:`ddim_step` is the same form with DDIM's own σ(η).

    Args:
        z0: ``[B, C, h, w]`` the clean estimate; eps: ``[B, C, h, w]`` the noise estimate paired with it.
        sigma: σ ≥ 0, at most ``√(1−ᾱ_prev)``; noise: ξ, required when ``sigma > 0``.
    """
    z_prev = alpha_bar_prev**0.5 * z0 + max(1.0 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("renoise with sigma > 0 needs noise")
        z_prev = z_prev + sigma * noise
    return z_prev


def edm_denoise(
    prior,
    x: torch.Tensor,
    sigma: float,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """EDM's denoiser ``D(x; σ)`` of a VP prior for ``x = x0 + σ·n``: Tweedie at the table's timestep t whose
    ``σ̄_t = √((1−ᾱ_t)/ᾱ_t)`` is nearest σ (:func:`timestep_for_sigma`), on the VP input ``√ᾱ_t·x``:
    ``D = x − σ̄_t·ε̂(√ᾱ_t·x, t)`` with CFG (DAPS's ODE). ``x``: ``[B, C, h, w]``; returns the same shape."""
    t, alpha_bar = timestep_for_sigma(prior.schedule, sigma)
    step = Step(index=0, t=t, t_prev=-1, alpha_bar=alpha_bar, alpha_bar_prev=1.0)
    z0, _ = denoise(prior, alpha_bar**0.5 * x, step, cond, uncond, guidance_scale, dtype)
    return z0


def timestep_for_sigma(schedule: NoiseSchedule, sigma: float) -> tuple[int, float]:
    """``(t, ᾱ_t)`` with ``σ̄_t = √((1−ᾱ_t)/ᾱ_t)`` nearest to σ (ties to the smaller t): RED's denoiser level, DiffPIR's
    ``t_y`` (the official ``find_nearest(reduced_alpha_cumprod, σ)``)."""
    alphas = schedule.alphas_cumprod.to(torch.float64)
    levels = ((1.0 - alphas) / alphas).sqrt()
    t = int(torch.argmin((levels - float(sigma)).abs()))
    return t, alpha_bar_at(schedule, t)
