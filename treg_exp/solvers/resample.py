"""ReSample: latent diffusion with hard data consistency (Song, Kwon, Zhang, Hu, Qu, Shen; ICLR 2024; arXiv 2307.08123).

The method as the official code computes it: ``soominkwon/resample``, ``ldm/models/diffusion/ddim.py``
(``DDIMSampler.resample_sampling``, ``pixel_optimization``, ``latent_optimization``, ``stochastic_resample``,
``p_sample_ddim``; line numbers below are of commit 3e332b2) driven by ``sample_condition.py`` and
``ldm_inverse/condition_methods.py``. Notation: ``ᾱ_t`` the noise schedule, ``E``/``D`` the VAE encoder/decoder,
``A`` the forward operator with measurement ``y`` (``m`` entries per image), ``N`` the number of DDIM steps,
step ``i = 0 … N−1`` from the noisiest, and the official step index ``j = N−1−i``.

Algorithm (DDIM η = 0, from ``z_T`` = the prior's ``initial_noise``), for each step ``t → t_prev``:

1. ``ε̂ = ε(z_t, t)``; DDIM ``z′ = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev)·ε̂`` with Tweedie ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``
   (ddim.py 530–538).
2. Latent DPS step, every step: ``z′ ← z′ − ζ·ᾱ_t·∇_{z_t}‖y − A(D(ẑ0′(z_t)))‖₂`` with ``ζ = dps_scale`` = 0.5
   (ddim.py 255–261: ``scale=a_t*.5``, ``a_t`` the *current* ᾱ_t; condition_methods.py 31–33 and 62–63: the norm
   over the whole tensor, **not squared**, gradient w.r.t. ``z_t`` through the UNet, ẑ0′ and the decoder).
   ``ẑ0′`` is the official "pseudo x0" ``(z_t − (1−ᾱ_t)·ε̂)/√ᾱ_t`` (ddim.py 541: ``sqrt_one_minus_at**2``, i.e.
   ``1−ᾱ_t`` where Tweedie has ``√(1−ᾱ_t)``) with ``tweedie_variant=one_minus_alpha_bar`` (default: what the official
   code computes), or Tweedie's ``ẑ0`` with ``standard``. The DDIM step of 1. always uses Tweedie's ``ẑ0``.
3. Hard data consistency on the steps with ``0 < j ≤ N − ⌊N/3⌋`` and ``j % 10 == 0`` (ddim.py 264–272:
   ``splits = 3``, ``index % 10 == 0``; ``dc_every``, ``splits``): 33 of 500 steps at defaults.

   a. Time travel (ddim.py 206, 273–285): from ``z′`` run ``time_travel_steps`` (5; the argument
      ``inter_timesteps=10`` is overwritten by ``inter_timesteps = 5``) more DDIM steps without guidance and keep the
      last ``ẑ0′`` (the travelled latent itself is discarded). The official loop gives the network the timestep of
      step ``k+1`` but computes ẑ0′ and the DDIM update with the ᾱ pair of step ``k`` (``ts_`` from ``k+1``,
      ``index_ = total_steps − k − 1``), so its coefficients lag the network's timestep by one grid step:
      ``time_travel_indexing=official`` (default) reproduces that, ``aligned`` pairs them.
   b. Middle third, ``j ≥ ⌊N/3⌋`` (17 steps): pixel-space optimisation (ddim.py 292–304, 337–370):
      ``x* = argmin_x MSE(y, A x)`` from ``x = D(ẑ0′)`` by AdamW (lr ``pixel_lr`` 1e-2, torch's default
      ``weight_decay`` 0.01, betas (0.9, 0.999), ε 1e-8), at most ``pixel_iters`` 2000 iterations, stopping after
      the update of the first iteration whose loss (computed before that update) is below ``pixel_tol²`` = 1e-6;
      then ``ẑ0(y) = E(x*)``.
   c. Last third, ``j < ⌊N/3⌋`` (16 steps): latent-space optimisation (ddim.py 306–315, 373–432):
      ``ẑ0(y) = argmin_z MSE(y, A(D(z)))`` from ``ẑ0′`` by AdamW (lr ``latent_lr`` 5e-3, weight decay 0.01), at most
      ``latent_iters`` 500 iterations, stopping after the update of an iteration whose loss exceeds the loss
      ``latent_patience`` (200) iterations earlier, or is below ``latent_tol²`` = 1e-6.
   d. Stochastic resampling (ddim.py 288–289, 318–320, 435–441):
      ``z_prev ~ N((σ²√ᾱ_prev·ẑ0(y) + (1−ᾱ_prev)·z′)/(σ² + 1−ᾱ_prev), σ²(1−ᾱ_prev)/(σ² + 1−ᾱ_prev)·I)`` with
      ``σ² = γ·(1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)``, ``γ = resample_gamma`` = 40 (the official variable ``sigma``
      is this variance). It is the product of ``N(√ᾱ_prev·ẑ0(y), (1−ᾱ_prev)·I)`` and ``N(z′, σ²·I)``.

   Other steps: ``z_prev = z′``.
4. After the loop, a final latent optimisation (c.) from the last latent ``z`` itself (not its ẑ0; ddim.py
   329–332), and the output ``x = D(z*)`` (sample_condition.py: ``decode_first_stage``, then clipped to [−1, 1]).

MSE is the mean over a measurement's ``m`` entries (``torch.nn.MSELoss`` on a batch of one), so the tolerances
mean what they mean officially. For inpainting both here and officially ``A x = mask ⊙ x`` keeps the image shape.

Departures from the official code, and why:

- Batches: the official code runs one image (its norm and MSE run over the whole tensor). Here every image has
  its own DPS norm, its own AdamW (an optimizer per image on its own tensor) and its own early stop: an image that
  stops is frozen and dropped from the decodes, so a batch of B computes what B runs of one compute.
- Priors: the official model is the unconditional FFHQ LDM-VQ-4 (its decoder quantises ``z``; its encoder is
  deterministic). On a KL-VAE prior (Stable Diffusion) there is no quantisation and ``E`` is the encoder
  posterior's mean (``encode_mode=mean``, default; ``sample`` draws from it). Text: ``cfg_scale`` 0 (default) runs
  the unconditional (empty-prompt) branch only, as the official unconditional model; 1 the prompt; > 1 CFG.
- On a pixel prior (``model=gaussian``, ``adm_*``: ``E``/``D`` identities) the pixel and latent optimisations
  minimise the same loss; they still differ in learning rate, iteration cap and stopping rule, as officially.
  ``conf/solver_model/resample_gaussian.yaml`` stops both at the noise level (``pixel_tol = latent_tol = σ_y``):
  the official 1e-3 is never reached at σ_y = 0.01, so the fits run to their caps and fit the noise.
- Per-task values: the official task configs carry ``conditioning.params.scale`` (0.5 deblur/inpaint, 1.0 motion
  blur, 0.1 SR ×4), but ``PosteriorSampling.__init__`` drops it and the sampler passes ``scale=a_t*.5``
  explicitly, so every published task ran with ``0.5·ᾱ_t``; no per-task file is needed. ``γ = 40`` is commented
  "change the 40 value for each task" and ``latent_optimization`` "200 steps for inpainting", but neither is
  changed anywhere in the code: both stay at their defaults here for every task.
- Grid: ``core.ddim_plan`` (diffusers' "leading" spacing, ``t = k·⌊T/N⌋ + offset``, ᾱ_prev = ᾱ_0 after the last
  step) is ldm's ``make_ddim_timesteps``/``make_ddim_sampling_parameters`` grid whenever N divides T = 1000
  (500: t = 999, 997, …, 1); for other N ldm's grid has N + 1 steps (its length assert is commented out), here N.
- Randomness: the official code draws from the global torch RNG; here ``z_T``, any DDIM η noise, the encoder sample
  (``encode_mode=sample``) and the resampling noise come from each image's solver generator (in that order).
- Precision: the networks run in ``prior.dtype``; latents, optimisations and operators in float32 (float64 for a
  float64 prior).
- Cost: the official time travel and DPS run with autograd on (``img.requires_grad_()``); here only the DPS step
  builds a graph (freed at once), so results are the same with less memory. With ``gradient_checkpointing``
  (default true) the prior recomputes UNet/VAE activations in the backward passes.

Cost per image at defaults (N = 500, 33 DC steps: 17 pixel, 16 latent): 665 UNet rows (500 with a backward pass
for DPS, 165 for time travel; ×2 with CFG), 500 decodes with a backward pass (DPS) + 17 plain decodes (pixel DC)
+ up to 16·500 + 500 decodes with a backward pass (latent DC and the final optimisation; fewer when they stop
early) + 1 output decode, 17 encodes, up to 17·2000 operator forward/backward pairs.

Diagnostics via ``callback(step_index, values)``, each ``[B]``: ``dps/residual`` (``‖y − A D(ẑ0′)‖`` before the
step) every step; on DC steps ``dc/pixel`` or ``dc/latent`` (1.0), ``dc/mse_start`` (loss at the start point),
``dc/mse_end`` (the last loss evaluated, before the last update) and ``dc/iterations``; the final optimisation
reports the same keys under ``final/`` with ``step_index = N``.

Rectified-flow priors (SD3, FLUX, ``gaussian_flow``): not defined — the pseudo-x0 ``(z − (1−ᾱ)ε̂)/√ᾱ`` and the
stochastic resampling ``N(√ᾱ·ẑ0(y), σ²)`` are ᾱ-schedule formulas; :meth:`ReSample.check_prior` says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback, Solver
from treg_exp.solvers.core import (
    Step,
    check_batch,
    configure_checkpointing,
    ddim_plan,
    ddim_sigma,
    ddim_step,
    denoiser_gradient,
    guided_prediction,
    require_alpha_bar_prior,
    residual_norm,
    tweedie,
)

TWEEDIE_VARIANTS = ("one_minus_alpha_bar", "standard")
TIME_TRAVEL_INDEXINGS = ("official", "aligned")
ENCODE_MODES = ("mean", "sample")
PIXEL, LATENT = "pixel", "latent"


# --- the schedule ---------------------------------------------------------------------------------------------
def dc_stages(num_steps: int, dc_every: int = 10, splits: int = 3) -> list[str | None]:
    """Which hard data consistency each step does: ``"pixel"``, ``"latent"`` or ``None``.

    Official rule (ddim.py 264–272, 291, 306) with ``j = N−1−i`` the official index of step ``i``: DC iff
    ``0 < j ≤ N − ⌊N/splits⌋`` and ``j % dc_every == 0``; pixel-space iff ``j ≥ ⌊N/splits⌋``, else latent-space.
    500 steps: 17 pixel steps (j = 330 … 170) and 16 latent steps (j = 160 … 10).
    """
    split = num_steps // splits
    stages: list[str | None] = []
    for i in range(num_steps):
        j = num_steps - 1 - i
        if 0 < j <= num_steps - split and j % dc_every == 0:
            stages.append(PIXEL if j >= split else LATENT)
        else:
            stages.append(None)
    return stages


# --- stochastic resampling ------------------------------------------------------------------------------------
def resample_variance(alpha_bar: float, alpha_bar_prev: float, gamma: float) -> float:
    """``σ² = γ·(1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)`` (ddim.py 289 and 318; 0 when ᾱ_t = ᾱ_prev)."""
    return max(gamma * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev), 0.0)


def stochastic_resample(
    z0_y: torch.Tensor, z_prime: torch.Tensor, alpha_bar_prev: float, variance: float, noise: torch.Tensor
) -> torch.Tensor:
    """A draw of ``N((σ²√ᾱ_prev·ẑ0(y) + (1−ᾱ_prev)·z′)/(σ² + 1−ᾱ_prev), σ²(1−ᾱ_prev)/(σ² + 1−ᾱ_prev)·I)``.

    Args:
        z0_y: ``[B, C, h, w]`` the data-consistent ``ẑ0(y)``.
        z_prime: ``[B, C, h, w]`` the unconditional step's ``z′`` (after the DPS step).
        alpha_bar_prev: ᾱ_prev, the noise level of the result.
        variance: ``σ²`` (:func:`resample_variance`); 0 returns ``z′``.
        noise: ``[B, C, h, w]`` standard normal.
    """
    one_minus = 1.0 - alpha_bar_prev
    mean = (variance * alpha_bar_prev**0.5 * z0_y + one_minus * z_prime) / (variance + one_minus)
    return mean + (variance * one_minus / (variance + one_minus)) ** 0.5 * noise


# --- per-image AdamW fits -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fit:
    """The result of :func:`adamw_fit`; tensors detached.

    Attributes:
        value: ``[B, ...]`` the final iterates.
        iterations: ``[B]`` the number of AdamW updates each image took.
        loss_start: ``[B]`` the loss at the start point.
        loss_end: ``[B]`` the last loss evaluated (at the iterate before the last update).
    """

    value: torch.Tensor
    iterations: torch.Tensor
    loss_start: torch.Tensor
    loss_end: torch.Tensor


def adamw_fit(
    start: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, list[int]], torch.Tensor],
    lr: float,
    max_iters: int,
    tol: float,
    weight_decay: float = 0.01,
    patience: int | None = None,
) -> Fit:
    """Minimise each image's loss from ``start`` by its own ``torch.optim.AdamW``, as ReSample's optimisations do.

    Per iteration: evaluate the loss, update; then the image stops if that loss was ``< tol²`` or, with
    ``patience``, above its loss ``patience`` iterations earlier (the official order: the update that met the
    criterion is kept). A stopped image is frozen and no longer evaluated. The graph is freed every iteration.

    Args:
        start: ``[B, ...]`` the start points.
        loss_fn: ``(v [b, ...], rows) ↦ [b]`` the losses of the images ``rows`` (indices into the batch) at ``v``.
    """
    batch = start.shape[0]
    params = [start[b : b + 1].detach().clone().requires_grad_(True) for b in range(batch)]
    optimizers = [torch.optim.AdamW([p], lr=lr, weight_decay=weight_decay) for p in params]
    history: list[list[float]] = [[] for _ in range(batch)]
    iterations = torch.zeros(batch, dtype=torch.long)
    loss_start = torch.full((batch,), float("nan"), dtype=torch.float64)
    loss_end = torch.full((batch,), float("nan"), dtype=torch.float64)
    active = list(range(batch))
    for _ in range(max_iters):
        if not active:
            break
        for b in active:
            optimizers[b].zero_grad()
        with torch.enable_grad():
            losses = loss_fn(torch.cat([params[b] for b in active]), active)
            losses.sum().backward()  # a sum of per-image losses: each image gets its own gradient
        still_active = []
        for b, value in zip(active, losses.detach().double().tolist(), strict=True):
            optimizers[b].step()
            if iterations[b] == 0:
                loss_start[b] = value
            loss_end[b] = value
            iterations[b] += 1
            history[b].append(value)
            stop = value < tol**2
            if patience is not None and len(history[b]) > patience:
                stop = stop or history[b].pop(0) < value
            if not stop:
                still_active.append(b)
        active = still_active
    return Fit(torch.cat([p.detach() for p in params]), iterations, loss_start, loss_end)


def _rows_operator(operator: LinearOperator, rows: list[int], batch: int) -> LinearOperator:
    """The operator of images ``rows`` of a batch of ``batch`` (per-image parameters sliced, shared ones kept)."""
    params = operator.params()
    if not params or rows == list(range(batch)):
        return operator
    index = torch.tensor(rows, dtype=torch.long)
    return operator.with_params(
        {k: v[index.to(v.device)] if v.shape[0] == batch and batch > 1 else v for k, v in params.items()}
    )


class ReSample(Solver):
    """ReSample (see the module docstring for the method, the official sources of every constant, and departures).

    Args:
        num_steps: DDIM steps N (official 500).
        eta: DDIM η (official 0).
        cfg_scale: 0 = unconditional branch only (default; the official model is unconditional), 1 = the prompt,
            > 1 classifier-free guidance.
        dps_scale: ζ of the latent DPS step ``ζ·ᾱ_t·∇‖y − A D(ẑ0′)‖₂`` (official 0.5).
        tweedie_variant: ``one_minus_alpha_bar`` (official pseudo-x0 ``(z − (1−ᾱ)ε̂)/√ᾱ``) or ``standard``.
        dc_every, splits: DC every ``dc_every`` official indices outside the noisiest of ``splits`` parts
            (official 10 and 3; see :func:`dc_stages`).
        time_travel_steps: DDIM steps run ahead from ``z′`` before each DC (official 5; 0 = none).
        time_travel_indexing: ``official`` (coefficients lag the network's timestep by one step) or ``aligned``.
        pixel_lr, pixel_iters, pixel_tol: the pixel-space AdamW (1e-2, 2000, stop when MSE < 1e-3²).
        latent_lr, latent_iters, latent_tol, latent_patience: the latent-space AdamW (5e-3, 500, 1e-3, 200).
        weight_decay: AdamW's weight decay in both optimisations (torch's default 0.01, which the official uses).
        resample_gamma: γ of ``σ² = γ·(1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)`` (official 40).
        final_latent_optimization: the latent optimisation of the last latent before decoding (official on).
        encode_mode: ``mean`` (deterministic, like the official VQ encoder) or ``sample`` of the VAE posterior.
        gradient_checkpointing: set the prior's UNet/VAE checkpointing (default true); ``None`` leaves it.
    """

    def __init__(
        self,
        num_steps: int = 500,
        eta: float = 0.0,
        cfg_scale: float = 0.0,
        dps_scale: float = 0.5,
        tweedie_variant: str = "one_minus_alpha_bar",
        dc_every: int = 10,
        splits: int = 3,
        time_travel_steps: int = 5,
        time_travel_indexing: str = "official",
        pixel_lr: float = 1e-2,
        pixel_iters: int = 2000,
        pixel_tol: float = 1e-3,
        latent_lr: float = 5e-3,
        latent_iters: int = 500,
        latent_tol: float = 1e-3,
        latent_patience: int | None = 200,
        weight_decay: float = 0.01,
        resample_gamma: float = 40.0,
        final_latent_optimization: bool = True,
        encode_mode: str = "mean",
        gradient_checkpointing: bool | None = True,
    ) -> None:
        if int(num_steps) <= 0:
            raise UserError(f"solver.num_steps must be positive, got {num_steps}")
        if eta < 0 or cfg_scale < 0 or dps_scale < 0:
            raise UserError("solver.eta, solver.cfg_scale and solver.dps_scale must be >= 0")
        if tweedie_variant not in TWEEDIE_VARIANTS:
            raise UserError(f"solver.tweedie_variant must be one of {TWEEDIE_VARIANTS}, got {tweedie_variant!r}")
        if time_travel_indexing not in TIME_TRAVEL_INDEXINGS:
            raise UserError(
                f"solver.time_travel_indexing must be one of {TIME_TRAVEL_INDEXINGS}, got {time_travel_indexing!r}"
            )
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"solver.encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        if int(dc_every) < 1 or int(splits) < 1 or int(time_travel_steps) < 0:
            raise UserError("solver.dc_every and solver.splits must be >= 1 and solver.time_travel_steps >= 0")
        if pixel_lr <= 0 or latent_lr <= 0 or int(pixel_iters) < 0 or int(latent_iters) < 0:
            raise UserError("solver.pixel_lr/latent_lr must be > 0 and solver.pixel_iters/latent_iters >= 0")
        if pixel_tol < 0 or latent_tol < 0 or weight_decay < 0:
            raise UserError("solver.pixel_tol, solver.latent_tol and solver.weight_decay must be >= 0")
        if latent_patience is not None and int(latent_patience) < 1:
            raise UserError(f"solver.latent_patience must be >= 1 or null, got {latent_patience}")
        if resample_gamma <= 0:
            raise UserError(f"solver.resample_gamma must be > 0, got {resample_gamma}")
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.cfg_scale = float(cfg_scale)
        self.dps_scale = float(dps_scale)
        self.tweedie_variant = tweedie_variant
        self.dc_every = int(dc_every)
        self.splits = int(splits)
        self.time_travel_steps = int(time_travel_steps)
        self.time_travel_indexing = time_travel_indexing
        self.pixel_lr = float(pixel_lr)
        self.pixel_iters = int(pixel_iters)
        self.pixel_tol = float(pixel_tol)
        self.latent_lr = float(latent_lr)
        self.latent_iters = int(latent_iters)
        self.latent_tol = float(latent_tol)
        self.latent_patience = None if latent_patience is None else int(latent_patience)
        self.weight_decay = float(weight_decay)
        self.resample_gamma = float(resample_gamma)
        self.final_latent_optimization = bool(final_latent_optimization)
        self.encode_mode = encode_mode
        self.gradient_checkpointing = gradient_checkpointing

    def stages(self) -> list[str | None]:
        """``[num_steps]``: ``"pixel"``, ``"latent"`` or ``None`` per step (see :func:`dc_stages`)."""
        return dc_stages(self.num_steps, self.dc_every, self.splits)

    def check_prior(self, prior: DiffusionPrior) -> None:
        """Not defined for rectified-flow priors: its pseudo-x0 and stochastic resampling are ᾱ formulas."""
        require_alpha_bar_prior("ReSample", prior, "its pseudo-x0 and stochastic resampling are written in ᾱ")

    # --- pieces ------------------------------------------------------------------------------------------------
    def _noise_scale(self, alpha_bar: float) -> float:
        """ẑ0′ = Tweedie with ε̂ scaled by this: √(1−ᾱ) turns ``√(1−ᾱ)·ε̂`` into the official ``(1−ᾱ)·ε̂``."""
        return (1.0 - alpha_bar) ** 0.5 if self.tweedie_variant == "one_minus_alpha_bar" else 1.0

    def _pseudo_x0(self, z: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """ẑ0′: ``(z − (1−ᾱ)·ε̂)/√ᾱ`` (official) or Tweedie's ``(z − √(1−ᾱ)·ε̂)/√ᾱ`` (``standard``)."""
        return tweedie(z, self._noise_scale(alpha_bar) * eps, alpha_bar)

    def _ddim_noise(self, step: Step, z: torch.Tensor, generators) -> torch.Tensor | None:
        if ddim_sigma(step.alpha_bar, step.alpha_bar_prev, self.eta) == 0.0:
            return None
        return seeding.randn(z.shape[1:], generators, device=z.device, dtype=z.dtype)

    def _time_travel(self, z_prime, i, plan, eps_at, generators, fallback: torch.Tensor) -> torch.Tensor:
        """ẑ0′ after ``time_travel_steps`` DDIM steps from ``z′`` (the output of step ``i``); ``fallback`` if none.

        Iteration ``k = i … min(i + J, N−1) − 1`` runs the network at step ``k+1``'s timestep (the latent's) with the
        ᾱ pair of step ``k`` (``official``) or ``k+1`` (``aligned``). Only the last ẑ0′ is kept.
        """
        z, z0 = z_prime, fallback
        last = min(i + self.time_travel_steps, len(plan) - 1)
        for k in range(i, last):
            network = plan[k + 1]
            coef = plan[k] if self.time_travel_indexing == "official" else network
            eps = eps_at(z, network.t)
            z0 = self._pseudo_x0(z, eps, coef.alpha_bar)
            if k + 1 < last:  # the last travelled latent is discarded
                z = ddim_step(
                    tweedie(z, eps, coef.alpha_bar),
                    eps,
                    coef.alpha_bar,
                    coef.alpha_bar_prev,
                    self.eta,
                    self._ddim_noise(coef, z, generators),
                )
        return z0

    @staticmethod
    def _mse(y: torch.Tensor, operator: LinearOperator, x: torch.Tensor) -> torch.Tensor:
        """Per-image ``MSE(y, A x)`` ``[B]``: the mean over each measurement's entries (``nn.MSELoss`` for B = 1)."""
        residual = y.to(x.dtype) - operator(x).to(x.dtype)
        return (residual * residual).flatten(1).mean(1)

    def pixel_optimization(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> Fit:
        """``argmin_x MSE(y, A x)`` from ``x`` ``[B, 3, H, W]`` (official ``pixel_optimization``)."""
        cache: dict[tuple[int, ...], LinearOperator] = {}

        def loss(v: torch.Tensor, rows: list[int]) -> torch.Tensor:
            op = cache.setdefault(tuple(rows), _rows_operator(operator, rows, x.shape[0]))
            return self._mse(y[rows], op, v)

        return adamw_fit(x, loss, self.pixel_lr, self.pixel_iters, self.pixel_tol, self.weight_decay)

    def latent_optimization(
        self, z: torch.Tensor, y: torch.Tensor, operator: LinearOperator, prior: DiffusionPrior
    ) -> Fit:
        """``argmin_z MSE(y, A(D(z)))`` from ``z`` ``[B, C, h, w]`` (official ``latent_optimization``)."""
        cache: dict[tuple[int, ...], LinearOperator] = {}

        def loss(v: torch.Tensor, rows: list[int]) -> torch.Tensor:
            op = cache.setdefault(tuple(rows), _rows_operator(operator, rows, z.shape[0]))
            return self._mse(y[rows], op, prior.decode(v).to(v.dtype))

        return adamw_fit(
            z, loss, self.latent_lr, self.latent_iters, self.latent_tol, self.weight_decay, self.latent_patience
        )

    @staticmethod
    def _report(values: dict[str, torch.Tensor], prefix: str, fit: Fit) -> None:
        values[f"{prefix}/mse_start"] = fit.loss_start
        values[f"{prefix}/mse_end"] = fit.loss_end
        values[f"{prefix}/iterations"] = fit.iterations.double()

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
        batch = check_batch("ReSample", y, prompts, generators, image_shape)
        self.check_prior(prior)
        dtype = prior.state_dtype
        device = y.device
        configure_checkpointing(prior, self.gradient_checkpointing)
        plan = ddim_plan(prior.schedule, self.num_steps)
        stages = self.stages()
        with torch.no_grad():
            uncond = prior.null_embedding(batch).to(dtype)
            # cfg 0 runs only the unconditional branch: the prompts are not needed (nor embedded)
            cond = uncond if self.cfg_scale == 0.0 else prior.embed_text(list(prompts)).to(dtype)

        def eps_at(z_in: torch.Tensor, t: int) -> torch.Tensor:
            return guided_prediction(prior, z_in, t, cond, uncond, self.cfg_scale).to(dtype)

        shape = prior.latent_shape(image_shape)
        z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar).to(device)
        for step in plan:
            values: dict[str, torch.Tensor] = {}
            # 1–2. ε̂, z′ and the latent DPS step through ẑ0′ (ε̂ enters denoiser_gradient scaled, so its Tweedie is ẑ0′)
            scale = self._noise_scale(step.alpha_bar)
            dps = denoiser_gradient(
                prior,
                z,
                step,
                output_fn=lambda z_in, t=step.t, c=scale: c * eps_at(z_in, t),
                loss_fn=lambda _z0, x0: residual_norm(y, operator, x0),
            )
            with torch.no_grad():
                eps = dps.eps / scale
                z0 = tweedie(z, eps, step.alpha_bar)
                z_prime = ddim_step(
                    z0, eps, step.alpha_bar, step.alpha_bar_prev, self.eta, self._ddim_noise(step, z, generators)
                )
                z_prime = z_prime - self.dps_scale * step.alpha_bar * dps.grad
            values["dps/residual"] = dps.loss
            stage = stages[step.index]
            if stage is None:
                z = z_prime
            else:
                # 3a. time travel → the start point ẑ0′ of the hard data consistency
                with torch.no_grad():
                    anchor = self._time_travel(z_prime, step.index, plan, eps_at, generators, fallback=dps.z0)
                if stage == PIXEL:  # 3b. pixel space, then back through the encoder
                    with torch.no_grad():
                        x_start = prior.decode(anchor).to(dtype)
                    fit = self.pixel_optimization(x_start, y, operator)
                    with torch.no_grad():
                        z0_y = prior.encode(fit.value, generators, mode=self.encode_mode).to(dtype)
                else:  # 3c. latent space
                    fit = self.latent_optimization(anchor, y, operator, prior)
                    z0_y = fit.value
                values[f"dc/{stage}"] = torch.ones(batch, dtype=torch.float64)
                self._report(values, "dc", fit)
                # 3d. stochastic resampling
                with torch.no_grad():
                    variance = resample_variance(step.alpha_bar, step.alpha_bar_prev, self.resample_gamma)
                    noise = seeding.randn(z.shape[1:], generators, device=device, dtype=dtype)
                    z = stochastic_resample(z0_y, z_prime, step.alpha_bar_prev, variance, noise)
            if callback is not None:
                callback(step.index, values)

        # 4. the final latent optimisation of the last latent, then decode
        if self.final_latent_optimization:
            fit = self.latent_optimization(z, y, operator, prior)
            z = fit.value
            if callback is not None:
                values = {}
                self._report(values, "final", fit)
                callback(len(plan), values)
        with torch.no_grad():
            x = prior.decode(z).to(dtype)
        return x.clamp(-1.0, 1.0).float()
